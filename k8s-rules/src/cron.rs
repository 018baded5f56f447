//! CronJob schedules as Kubernetes parses them (`github.com/robfig/cron/v3`'s `ParseStandard`):
//! five fields (minute, hour, day of month, month, day of week) with `*`, `?`, lists, ranges,
//! steps and month/day names, or a descriptor (`@yearly`, `@annually`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly`, `@every <duration>`), and the next time a schedule
//! fires in a time zone. The parser is upstream's own rules (with its error messages, which
//! the apiserver returns), so a schedule is accepted or refused exactly as by kube-apiserver.
//!
//! Written here rather than taken from a cron crate: the crates at hand differ from robfig's
//! in ways a CronJob shows (day-of-month/day-of-week "or" unless one is `*`, `N/step`
//! meaning `N-max/step`, the 0–6 day-of-week range, `@every`, the messages).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Set in a field parsed from `*` or `?` (without a step above 1): a day-of-month or
/// day-of-week given as `*` does not widen the other one.
const STAR: u64 = 1 << 63;

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Bit sets of the minutes, hours, days of month, months and days of week it fires on.
    Spec {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
    },
    /// `@every <duration>`: whole seconds, at least one.
    Every(u64),
}

fn parse_int(s: &str) -> Result<u32, String> {
    let n: i64 = s.parse().map_err(|_| {
        format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax")
    })?;
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {s}"));
    }
    u32::try_from(n).map_err(|_| {
        format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: value out of range")
    })
}

fn int_or_name(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    parse_int(s)
}

/// One range expression (`*`, `a`, `a-b`, each optionally `/step`).
fn range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_high.len() == 1;
    let (mut start, mut end, mut extra);
    if low_high[0] == "*" || low_high[0] == "?" {
        (start, end, extra) = (b.min, b.max, STAR);
    } else {
        start = int_or_name(low_high[0], b)?;
        end = match low_high.len() {
            1 => start,
            2 => int_or_name(low_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        extra = 0;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_int(range_and_step[1])?;
            // `N/step` is `N-max/step`.
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    let mut bits = extra;
    while start <= end {
        bits |= 1 << start;
        start += step;
    }
    Ok(bits)
}

fn field(f: &str, b: &Bounds) -> Result<u64, String> {
    f.split(',').try_fold(0, |bits, r| Ok(bits | range(r, b)?))
}

fn descriptor(d: &str) -> Result<Schedule, String> {
    let spec = match d {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            let Some(every) = d.strip_prefix("@every ") else {
                return Err(format!("unrecognized descriptor: {d}"));
            };
            let dur = crate::duration::parse(every)
                .map_err(|e| format!("failed to parse duration {d}: {e}"))?;
            return Ok(Schedule::Every(dur.as_secs().max(1)));
        }
    };
    parse(spec)
}

/// Parses a schedule as `cron.ParseStandard`. A `TZ=`/`CRON_TZ=` prefix is parsed (as robfig
/// does) and dropped: the CronJob validation refuses it and the `timeZone` field takes its
/// place.
pub fn parse(spec: &str) -> Result<Schedule, String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    let mut spec = spec;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let (prefix, rest) = spec.split_once(' ').unwrap_or((spec, ""));
        let name = prefix.split_once('=').map_or("", |(_, n)| n);
        zone(name).map_err(|e| format!("provided bad location {name}: {e}"))?;
        spec = rest.trim();
    }
    if spec.starts_with('@') {
        return descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    Ok(Schedule::Spec {
        minute: field(fields[0], &MINUTES)?,
        hour: field(fields[1], &HOURS)?,
        dom: field(fields[2], &DOM)?,
        month: field(fields[3], &MONTHS)?,
        dow: field(fields[4], &DOW)?,
    })
}

/// An IANA time zone as Go's `time.LoadLocation` finds it (`""` and `UTC` are UTC).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

fn has(bits: u64, n: i8) -> bool {
    bits & (1 << n) != 0
}

impl Schedule {
    /// The first time after `t` the schedule fires, in zone `tz`; `None` if it never does
    /// within five years (e.g. `0 0 30 2 *`), as robfig's zero time.
    pub fn next(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let (minute, hour, dom, month, dow) = match *self {
            Schedule::Every(secs) => {
                let whole = Timestamp::from_second(t.as_second()).ok()?;
                return whole.checked_add((secs as i64).seconds()).ok();
            }
            Schedule::Spec {
                minute,
                hour,
                dom,
                month,
                dow,
            } => (minute, hour, dom, month, dow),
        };
        let day_matches = |d: DateTime| {
            let dom_ok = has(dom, d.day());
            let dow_ok = has(dow, d.weekday().to_sunday_zero_offset());
            if dom & STAR != 0 || dow & STAR != 0 {
                dom_ok && dow_ok
            } else {
                dom_ok || dow_ok
            }
        };
        let start = t.to_zoned(tz.clone()).datetime();
        // The next whole minute after `t`, in civil time of the zone.
        let mut c = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while c.year() <= limit {
            if !has(month, c.month()) {
                c = c
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !day_matches(c) {
                c = c.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if !has(hour, c.hour()) {
                c = c
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !has(minute, c.minute()) {
                c = c.checked_add(1.minute()).ok()?;
                continue;
            }
            // A civil time in a DST gap is taken as the instant after the gap; one in a fold
            // as its first instant. Either must still be after `t`.
            let at = tz.to_ambiguous_timestamp(c).compatible().ok()?;
            if at > t {
                return Some(at);
            }
            c = c.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, from: &str, tz: &str) -> String {
        parse(spec)
            .unwrap()
            .next(ts(from), &zone(tz).unwrap())
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn macros_are_their_five_fields() {
        for (m, f) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ] {
            assert_eq!(parse(m).unwrap(), parse(f).unwrap(), "{m}");
        }
        assert_eq!(parse("@every 1m30s").unwrap(), Schedule::Every(90));
        assert_eq!(parse("@every 10ms").unwrap(), Schedule::Every(1));
    }

    #[test]
    fn ranges_steps_lists_and_names() {
        let Schedule::Spec {
            minute,
            hour,
            dom,
            month,
            dow,
        } = parse("*/15 9-17/4 1,15 jan-MAR mon-fri").unwrap()
        else {
            panic!()
        };
        assert_eq!(minute, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(hour, 1 << 9 | 1 << 13 | 1 << 17);
        assert_eq!(dom, 1 << 1 | 1 << 15);
        assert_eq!(month, 0b1110);
        assert_eq!(dow, 0b111110);
        // `N/step` runs to the maximum; `*` carries the star bit, `*/2` does not.
        let Schedule::Spec { minute, hour, .. } = parse("50/5 */2 * * ?").unwrap() else {
            panic!()
        };
        assert_eq!(minute, 1 << 50 | 1 << 55);
        assert_eq!(hour & STAR, 0);
    }

    #[test]
    fn invalid_schedules_have_upstreams_messages() {
        for (spec, msg) in [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            (
                "* * * * * *",
                "expected exactly 5 fields, found 6: [* * * * * *]",
            ),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("1/2/3 * * * *", "too many slashes: 1/2/3"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            (
                "* * * foo *",
                "failed to parse int from foo: strconv.Atoi: parsing \"foo\": invalid syntax",
            ),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            (
                "@every x",
                "failed to parse duration @every x: time: invalid duration \"x\"",
            ),
        ] {
            assert_eq!(parse(spec).unwrap_err(), msg, "{spec:?}");
        }
        assert!(parse("CRON_TZ=Nowhere/Atall 0 * * * *")
            .unwrap_err()
            .starts_with("provided bad location Nowhere/Atall"));
        assert!(parse("TZ=Europe/Paris 0 * * * *").is_ok());
    }

    #[test]
    fn next_times() {
        let utc = "UTC";
        assert_eq!(
            next("*/5 * * * *", "2024-01-01T10:02:30Z", utc),
            "2024-01-01T10:05:00Z"
        );
        assert_eq!(
            next("*/5 * * * *", "2024-01-01T10:05:00Z", utc),
            "2024-01-01T10:10:00Z"
        );
        assert_eq!(
            next("@hourly", "2024-01-01T23:59:00Z", utc),
            "2024-01-02T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2024-03-01T00:00:00Z", utc),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(next("0 0 30 2 *", "2024-03-01T00:00:00Z", utc), "");
        // Day of month or day of week when both are restricted; and when one is `*`.
        assert_eq!(
            next("0 0 13 * fri", "2024-09-01T00:00:00Z", utc),
            "2024-09-06T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * *", "2024-09-01T00:00:00Z", utc),
            "2024-09-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * sun", "2024-09-01T00:00:00Z", utc),
            "2024-09-08T00:00:00Z"
        );
        assert_eq!(
            next("@every 90s", "2024-01-01T00:00:00.5Z", utc),
            "2024-01-01T00:01:30Z"
        );
        // In a time zone: 09:00 in New York is 14:00 UTC in winter, 13:00 in summer.
        assert_eq!(
            next("0 9 * * *", "2024-01-10T00:00:00Z", "America/New_York"),
            "2024-01-10T14:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2024-07-10T00:00:00Z", "America/New_York"),
            "2024-07-10T13:00:00Z"
        );
        // 02:30 does not exist on 2024-03-10 there: the instant after the gap.
        assert_eq!(
            next("30 2 * * *", "2024-03-10T05:00:00Z", "America/New_York"),
            "2024-03-10T07:30:00Z"
        );
        assert!(zone("Mars/Olympus").is_err());
    }
}
