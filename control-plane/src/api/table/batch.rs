//! The columns of Jobs and CronJobs (`printJob`, `printCronJob`).

use serde_json::{json, Value};

use super::*;

/// How kubectl describes the selector of both batch kinds.
const SELECTOR: &str = "Query over pods that should match the number of replicas.";

pub static JOBS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The completion status of the job",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            age_col(),
        ]
        .into_iter()
        .chain(template_cols(Some(SELECTOR)))
        .collect()
    },
    cells: job_cells,
};

pub static CRONJOBS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            col("Timezone", "string", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            col("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions."),
            col("Active", "integer", 0, "A list of pointers to currently running jobs."),
            col("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
            age_col(),
        ]
        .into_iter()
        .chain(template_cols(Some(SELECTOR)))
        .collect()
    },
    cells: cronjob_cells,
};

/// A condition of this type is True.
fn has_condition(o: &Value, ty: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

fn job_cells(o: &Value) -> Vec<Value> {
    let (spec, st) = (&o["spec"], &o["status"]);
    let succeeded = st["succeeded"].as_i64().unwrap_or(0);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match spec["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |k: &str| {
        st[k]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    let duration = match (time("startTime"), time("completionTime")) {
        (None, _) => String::new(),
        (Some(s), None) => human((jiff::Timestamp::now().as_second() - s.as_second()).max(0)),
        (Some(s), Some(c)) => human((c.as_second() - s.as_second()).max(0)),
    };
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let mut cells = vec![
        name_cell(o),
        json!(status),
        json!(completions),
        json!(duration),
        age_cell(o),
    ];
    cells.extend(template_cells(spec));
    cells
}

fn cronjob_cells(o: &Value) -> Vec<Value> {
    let spec = &o["spec"];
    let suspend = match spec["suspend"].as_bool() {
        None => "<unset>",
        Some(true) => "True",
        Some(false) => "False",
    };
    let last = o["status"]["lastScheduleTime"]
        .as_str()
        .map_or_else(|| "<none>".to_string(), age);
    let mut cells = vec![
        name_cell(o),
        json!(s(&spec["schedule"])),
        json!(s(&spec["timeZone"])),
        json!(suspend),
        json!(o["status"]["active"].as_array().map_or(0, Vec::len)),
        json!(last),
        age_cell(o),
    ];
    cells.extend(template_cells(&spec["jobTemplate"]["spec"]));
    cells
}
