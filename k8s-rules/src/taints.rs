//! Tolerations against taints (`k8s.io/api/core/v1.Toleration.ToleratesTaint` and
//! component-helpers' `FindMatchingUntoleratedTaint`), for the scheduler's filter and the
//! kubelet's admission of NoExecute taints.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Whether `toleration` tolerates `taint`: an empty effect or key matches any, `Exists` any
/// value, `Equal` (or no operator) the same value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    fn set(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.is_empty())
    }
    if set(&toleration.effect).is_some_and(|e| e != taint.effect) {
        return false;
    }
    if set(&toleration.key).is_some_and(|k| k != taint.key) {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => set(&toleration.value) == set(&taint.value),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first of `taints` that `include` selects and no toleration tolerates.
pub fn find_untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    include: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .find(|t| include(t) && !tolerated(tolerations, t))
}

/// Taints the scheduler must respect (PreferNoSchedule only weighs in scoring).
pub fn blocks_scheduling(t: &Taint) -> bool {
    matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn tolerations_match_taints() {
        let t = taint("dedicated", Some("db"), "NoExecute");
        for (what, toleration, want) in [
            (
                "equal value",
                tol(Some("dedicated"), None, Some("db"), None),
                true,
            ),
            (
                "explicit Equal",
                tol(
                    Some("dedicated"),
                    Some("Equal"),
                    Some("db"),
                    Some("NoExecute"),
                ),
                true,
            ),
            (
                "other value",
                tol(Some("dedicated"), None, Some("web"), None),
                false,
            ),
            (
                "exists",
                tol(Some("dedicated"), Some("Exists"), None, Some("NoExecute")),
                true,
            ),
            (
                "other effect",
                tol(Some("dedicated"), Some("Exists"), None, Some("NoSchedule")),
                false,
            ),
            (
                "other key",
                tol(Some("gpu"), Some("Exists"), None, None),
                false,
            ),
            (
                "empty key with Exists tolerates everything",
                tol(None, Some("Exists"), None, None),
                true,
            ),
            (
                "empty effect string means any",
                tol(Some("dedicated"), Some("Exists"), None, Some("")),
                true,
            ),
            (
                "unknown operator",
                tol(Some("dedicated"), Some("Gt"), Some("db"), None),
                false,
            ),
        ] {
            assert_eq!(tolerates(&toleration, &t), want, "{what}");
        }
        let no_value = taint("maintenance", None, "NoSchedule");
        assert!(tolerates(
            &tol(Some("maintenance"), None, None, None),
            &no_value
        ));
        assert!(tolerates(
            &tol(Some("maintenance"), None, Some(""), None),
            &no_value
        ));
    }

    #[test]
    fn the_first_untolerated_taint_is_found() {
        let taints = [
            taint("soft", None, "PreferNoSchedule"),
            taint("a", Some("1"), "NoSchedule"),
            taint("b", Some("2"), "NoExecute"),
        ];
        let tolerations = [tol(Some("a"), Some("Exists"), None, None)];
        let found = find_untolerated(&taints, &tolerations, blocks_scheduling).unwrap();
        assert_eq!(found.key, "b");
        assert!(find_untolerated(&taints, &tolerations, |t| t.effect == "NoSchedule").is_none());
        let all = [tol(None, Some("Exists"), None, None)];
        assert!(find_untolerated(&taints, &all, |_| true).is_none());
    }
}
