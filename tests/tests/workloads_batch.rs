//! End-to-end: Jobs (NonIndexed, Indexed, back-off to failure) and CronJobs on the
//! all-in-one node, with the real kubectl.

use podlet_e2e::apiserver::ok;
use podlet_e2e::kube::{apply, condition, items, json, node, wait};
use podlet_e2e::TestNode;

/// `kubectl wait --for=condition=<c>`, with the job and its pods shown when it times out.
fn wait_job(node: &TestNode, job: &str, c: &str, secs: u32) {
    let out = node.kubectl(
        33,
        &[
            "wait",
            &format!("--for=condition={c}"),
            &format!("job/{job}"),
            &format!("--timeout={secs}s"),
        ],
    );
    if out.code != 0 {
        panic!(
            "job {job} not {c}: {}\njob: {}\npods: {}\nevents: {}",
            out.stderr,
            json(node, &["job", job]),
            node.kubectl(33, &["get", "pods", "-o", "wide", "--show-labels"])
                .stdout,
            node.kubectl(33, &["get", "events", "--sort-by=.lastTimestamp"])
                .stdout
        );
    }
}

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox:1.36, command: [sh, -c, 'echo index $JOB_COMPLETION_INDEX']}
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox:1.36, command: ["false"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          terminationGracePeriodSeconds: 0
          containers:
          - {name: c, image: busybox:1.36, command: [sh, -c, 'echo tick']}
"#;

#[test]
fn jobs_complete_fail_and_cronjobs_fire() {
    let Some(node) = node() else { return };
    ok(
        &node.kubectl(
            27,
            &[
                "create",
                "job",
                "hello",
                "--image=busybox:1.36",
                "--",
                "sh",
                "-c",
                "echo hello from a job",
            ],
        ),
        "create job",
    );
    apply(&node, JOBS);
    wait_job(&node, "hello", "complete", 90);
    let logs = ok(&node.kubectl(33, &["logs", "job/hello"]), "logs job/hello");
    assert_eq!(logs.trim(), "hello from a job");
    let j = json(&node, &["job", "hello"]);
    assert_eq!(j["status"]["succeeded"], 1, "{j}");
    assert!(!j["status"]["completionTime"].is_null());

    wait_job(&node, "indexed", "complete", 90);
    let j = json(&node, &["job", "indexed"]);
    assert_eq!(j["status"]["completedIndexes"], "0-2", "{j}");
    let mut said: Vec<String> = items(&json(&node, &["pods", "-l", "job-name=indexed"]))
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap();
            ok(&node.kubectl(33, &["logs", name]), "logs")
                .trim()
                .to_string()
        })
        .collect();
    said.sort();
    assert_eq!(said, ["index 0", "index 1", "index 2"]);

    // backoffLimit 1: the first failure is retried after 10 s, the second fails the Job.
    wait_job(&node, "failing", "failed", 120);
    let j = json(&node, &["job", "failing"]);
    assert_eq!(
        condition(&j, "Failed")["reason"],
        "BackoffLimitExceeded",
        "{j}"
    );
    assert_eq!(j["status"]["failed"], 2, "{j}");

    // The CronJob makes a Job within a minute, which completes.
    let cj = wait(&node, "the cronjob's first job to complete", 100, || {
        let jobs = items(&json(&node, &["jobs"]));
        jobs.into_iter().find(|j| {
            j["metadata"]["ownerReferences"][0]["name"] == "tick"
                && condition(j, "Complete")["status"] == "True"
        })
    });
    assert!(
        cj["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("tick-"),
        "{cj}"
    );
    wait(&node, "lastSuccessfulTime", 30, || {
        (!json(&node, &["cronjob", "tick"])["status"]["lastSuccessfulTime"].is_null()).then_some(())
    });
    ok(
        &node.kubectl(33, &["delete", "cronjob", "tick"]),
        "delete cronjob",
    );
    ok(
        &node.kubectl(33, &["delete", "jobs", "--all"]),
        "delete jobs",
    );
}
