//! Go durations (`time.ParseDuration`), the form Kubernetes flags and configuration files use:
//! `300ms`, `1.5h`, `2h45m`, `0`. Kubernetes has no negative durations where podlet takes
//! them, so a negative one is refused.

use std::time::Duration;

/// Nanoseconds per unit.
fn unit(u: &str) -> Option<u128> {
    Some(match u {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Go's largest duration, about 292 years.
const MAX_NANOS: u128 = i64::MAX as u128;

pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int, rest) = s.split_at(int_end);
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                r.split_at(end)
            }
            None => ("", rest),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (u, rest) = rest.split_at(unit_end);
        if u.is_empty() {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let per =
            unit(u).ok_or_else(|| format!("time: unknown unit {u:?} in duration {text:?}"))?;
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        // Fractions beyond nanoseconds are dropped, as Go drops them.
        let mut frac_nanos: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac.bytes().take(30) {
            frac_nanos = frac_nanos * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total = whole
            .checked_mul(per)
            .and_then(|w| w.checked_add(frac_nanos * per / scale))
            .and_then(|n| total.checked_add(n))
            .filter(|n| *n <= MAX_NANOS)
            .ok_or_else(invalid)?;
        s = rest;
    }
    if negative && total > 0 {
        return Err(format!("{text:?}: a duration may not be negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        for (s, want) in [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("2m", Duration::from_secs(120)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("300ms", Duration::from_millis(300)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h1m1s1ms", Duration::from_millis(3_661_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000001s", Duration::ZERO),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_durations_say_why_as_go_does() {
        assert_eq!(
            parse("10").unwrap_err(),
            "time: missing unit in duration \"10\""
        );
        assert_eq!(
            parse("5d").unwrap_err(),
            "time: unknown unit \"d\" in duration \"5d\""
        );
        assert_eq!(parse("").unwrap_err(), "time: invalid duration \"\"");
        assert_eq!(parse(".s").unwrap_err(), "time: invalid duration \".s\"");
        assert_eq!(parse("s").unwrap_err(), "time: invalid duration \"s\"");
        assert!(parse("3000000h").is_err(), "beyond Go's range");
        assert!(parse("-1s").unwrap_err().contains("negative"));
    }
}
