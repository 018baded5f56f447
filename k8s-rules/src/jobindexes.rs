//! Sets of Job completion indexes in their string form (`status.completedIndexes`,
//! `status.failedIndexes`, a success policy's `succeededIndexes`): ascending intervals
//! `0-2,4,6-7` (`pkg/controller/job/indexed_job_utils.go`, and the API validation's
//! `validateIndexesFormat`).

use std::collections::BTreeSet;

/// Ascending, non-overlapping, non-adjacent intervals (inclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(i64, i64)>);

impl Intervals {
    /// Validation's parse: strictly increasing, every index below `completions`; the error
    /// as the apiserver words it.
    pub fn parse(s: &str, completions: i64) -> Result<Intervals, String> {
        let mut out = Vec::new();
        if s.is_empty() {
            return Ok(Intervals(out));
        }
        let mut last: Option<i64> = None;
        for part in s.split(',') {
            let limits: Vec<&str> = part.split('-').collect();
            if limits.len() > 2 {
                return Err(format!("the fragment {part:?} violates the requirement that an index interval can have at most two parts separated by '-'"));
            }
            let num = |t: &str| -> Result<i64, String> {
                let x: i64 = t
                    .parse()
                    .map_err(|_| format!("cannot convert string to integer for index: {t:?}"))?;
                if x >= completions {
                    return Err(format!("too large index: {t:?}"));
                }
                Ok(x)
            };
            let x = num(limits[0])?;
            if let Some(l) = last.filter(|l| *l >= x) {
                return Err(format!("non-increasing order, previous: {l}, current: {x}"));
            }
            let mut y = x;
            if limits.len() == 2 {
                y = num(limits[1])?;
                if x >= y {
                    return Err(format!("non-increasing order, previous: {x}, current: {y}"));
                }
            }
            last = Some(y);
            out.push((x, y));
        }
        Ok(Intervals(out))
    }

    /// The controller's parse of its own status: what cannot be read (or is not below
    /// `completions`) is left out.
    pub fn lenient(s: &str, completions: i64) -> Intervals {
        let mut set = BTreeSet::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
                continue;
            };
            for i in a.max(0)..=b.min(completions - 1) {
                set.insert(i);
            }
        }
        Intervals::from_set(&set)
    }

    pub fn from_set(set: &BTreeSet<i64>) -> Intervals {
        let mut out: Vec<(i64, i64)> = Vec::new();
        for &i in set {
            match out.last_mut() {
                Some((_, end)) if *end + 1 == i => *end = i,
                _ => out.push((i, i)),
            }
        }
        Intervals(out)
    }

    pub fn to_set(&self) -> BTreeSet<i64> {
        self.0.iter().flat_map(|(a, b)| *a..=*b).collect()
    }

    pub fn total(&self) -> usize {
        self.0.iter().map(|(a, b)| (b - a + 1) as usize).sum()
    }

    pub fn contains(&self, i: i64) -> bool {
        self.0.iter().any(|(a, b)| *a <= i && i <= *b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Intervals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_round_trip_and_merge() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into();
        let iv = Intervals::from_set(&set);
        assert_eq!(iv.to_string(), "0-2,4,6-7");
        assert_eq!(iv.total(), 6);
        assert_eq!(Intervals::lenient("0-2,4,6-7", 10), iv);
        assert_eq!(Intervals::lenient("0-2,x,9", 5).to_string(), "0-2");
        assert_eq!(Intervals::parse("0-2,4,6-7", 8).unwrap(), iv);
        assert!(iv.contains(4) && !iv.contains(5));
    }

    #[test]
    fn validation_messages() {
        for (s, msg) in [
            ("1-2-3", "the fragment \"1-2-3\" violates the requirement that an index interval can have at most two parts separated by '-'"),
            ("a", "cannot convert string to integer for index: \"a\""),
            ("5", "too large index: \"5\""),
            ("3,1", "non-increasing order, previous: 3, current: 1"),
            ("2-1", "non-increasing order, previous: 2, current: 1"),
        ] {
            assert_eq!(Intervals::parse(s, 5).unwrap_err(), msg, "{s}");
        }
    }
}
