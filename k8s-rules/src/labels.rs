//! Label selectors: the string form of `?labelSelector=` and kubectl's `-l` (`a=b`, `a!=b`,
//! `a in (x,y)`, `a notin (x)`, `a`, `!a`), and `metav1.LabelSelector` (`matchLabels`,
//! `matchExpressions`) as workload objects carry it (`LabelSelectorAsSelector`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches<'a>(&self, get: &impl Fn(&str) -> Option<&'a str>) -> bool {
        let has = |k: &str, vs: &[String]| get(k).is_some_and(|x| vs.iter().any(|v| v == x));
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => has(k, vs),
            Requirement::NotIn(k, vs) => !has(k, vs),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// Requirements that must all hold; `nothing` selects no object at all (a nil
/// `metav1.LabelSelector`), while no requirements select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn value_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set, found {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// The string form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let r = if let Some(k) = p.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), value_set(v)?)
            } else if let Some((k, v)) = p.split_once(" in ") {
                Requirement::In(k.trim().into(), value_set(v)?)
            } else {
                if p.contains(' ') || p.contains('(') {
                    return Err(format!("unable to parse requirement: {p:?}"));
                }
                Requirement::Exists(p.to_string())
            };
            requirements.push(r);
        }
        Ok(Selector {
            requirements,
            nothing: false,
        })
    }

    /// `LabelSelectorAsSelector`: None selects nothing, an empty selector everything.
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Result<Self, String> {
        let Some(sel) = sel else {
            return Ok(Self::nothing());
        };
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let r = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err("for 'in', 'notin' operators, values set can't be empty".into())
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err("values set must be empty for exists and does not exist".into())
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                op => return Err(format!("{op:?} is not a valid label selector operator")),
            };
            requirements.push(r);
        }
        Ok(Selector {
            requirements,
            nothing: false,
        })
    }

    /// This selector with `r` required too (`Selector.Add`), as matchLabelKeys and the
    /// scheduler's default spreading selector extend one.
    pub fn and(mut self, r: Requirement) -> Self {
        self.requirements.push(r);
        self
    }

    /// Both selectors' requirements; nothing when either selects nothing.
    pub fn and_all(mut self, other: &Selector) -> Self {
        self.nothing |= other.nothing;
        self.requirements.extend(other.requirements.iter().cloned());
        self
    }

    pub fn selects_nothing(&self) -> bool {
        self.nothing
    }

    pub fn selects_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches labels looked up by `get` (labels kept in other shapes, e.g. JSON objects).
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(&get))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "front".to_string()),
        ])
    }

    #[test]
    fn string_selectors() {
        let l = labels();
        for (s, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("missing", false),
            ("!missing", true),
            ("missing!=x", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("a in b").is_err());
        assert!(Selector::parse("a b").is_err());
        assert!(Selector::parse("").unwrap().selects_everything());
    }

    #[test]
    fn object_selectors() {
        let l = labels();
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        let m = |s: &LabelSelector| Selector::from_label_selector(Some(s)).unwrap().matches(&l);
        assert!(m(&sel(&[("app", "web")], vec![])));
        assert!(!m(&sel(&[("app", "db")], vec![])));
        assert!(m(&sel(&[], vec![expr("tier", "In", &["front", "back"])])));
        assert!(!m(&sel(
            &[("app", "web")],
            vec![expr("tier", "NotIn", &["front"])]
        )));
        assert!(m(&sel(&[], vec![expr("app", "Exists", &[])])));
        assert!(m(&sel(&[], vec![expr("gpu", "DoesNotExist", &[])])));
        assert!(m(&sel(&[], vec![])), "an empty selector selects everything");
        assert!(
            !Selector::from_label_selector(None).unwrap().matches(&l),
            "no selector selects nothing"
        );
        for (bad, msg) in [
            (expr("a", "In", &[]), "values set can't be empty"),
            (expr("a", "Exists", &["x"]), "values set must be empty"),
            (
                expr("a", "Like", &["x"]),
                "\"Like\" is not a valid label selector operator",
            ),
        ] {
            let err = Selector::from_label_selector(Some(&sel(&[], vec![bad]))).unwrap_err();
            assert!(err.contains(msg), "{err}");
        }
    }
}
