//! Node selectors and required node affinity (component-helpers'
//! `scheduling/corev1/nodeaffinity`), as the scheduler filters nodes and the kubelet re-checks
//! at admission.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
};

/// What node affinity looks at on a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Whether `node` matches the pod's `nodeSelector` and its required node affinity
/// (`GetRequiredNodeAffinity(pod).Match(node)`).
pub fn required_node_affinity_matches(spec: &PodSpec, node: NodeFacts<'_>) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok && required.is_none_or(|s| node_selector_matches(s, node))
}

/// A NodeSelector matches when any of its terms does (no term: nothing matches).
pub fn node_selector_matches(selector: &NodeSelector, node: NodeFacts<'_>) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// A term matches when all its expressions (on labels) and fields (only `metadata.name`) do;
/// an empty term, or one with an invalid requirement, matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: NodeFacts<'_>) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|e| requirement_matches(e, node.labels.get(&e.key).map(String::as_str)))
        && fields.iter().all(|f| {
            f.key == "metadata.name"
                && matches!(f.operator.as_str(), "In" | "NotIn")
                && f.values.as_ref().is_some_and(|v| v.len() == 1)
                && requirement_matches(f, Some(node.name))
        })
}

/// One requirement against a label's value (None: the node lacks the label).
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let contains = |v: &str| values.iter().any(|x| x == v);
    let number = |s: &str| s.parse::<i64>().ok();
    let compare = |ord: std::cmp::Ordering| match (values, value.and_then(number)) {
        ([bound], Some(v)) => number(bound).is_some_and(|b| v.cmp(&b) == ord),
        _ => false,
    };
    match r.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(contains),
        "NotIn" => !values.is_empty() && !value.is_some_and(contains),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity};

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        }
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("zone".to_string(), "a".to_string()),
            ("cores".to_string(), "8".to_string()),
        ])
    }

    #[test]
    fn terms_match_as_upstream() {
        let l = labels();
        let n = NodeFacts {
            name: "n1",
            labels: &l,
        };
        for (what, t, want) in [
            ("In", term(vec![req("zone", "In", &["a", "b"])]), true),
            (
                "In, other values",
                term(vec![req("zone", "In", &["b"])]),
                false,
            ),
            (
                "In without values is invalid",
                term(vec![req("zone", "In", &[])]),
                false,
            ),
            ("NotIn", term(vec![req("zone", "NotIn", &["a"])]), false),
            (
                "NotIn on a missing label",
                term(vec![req("gpu", "NotIn", &["x"])]),
                true,
            ),
            ("Exists", term(vec![req("zone", "Exists", &[])]), true),
            (
                "Exists with values is invalid",
                term(vec![req("zone", "Exists", &["a"])]),
                false,
            ),
            (
                "DoesNotExist",
                term(vec![req("gpu", "DoesNotExist", &[])]),
                true,
            ),
            ("Gt", term(vec![req("cores", "Gt", &["4"])]), true),
            ("Gt, equal", term(vec![req("cores", "Gt", &["8"])]), false),
            ("Lt", term(vec![req("cores", "Lt", &["4"])]), false),
            (
                "Gt on a non-number",
                term(vec![req("zone", "Gt", &["1"])]),
                false,
            ),
            (
                "Gt with two values is invalid",
                term(vec![req("cores", "Gt", &["1", "2"])]),
                false,
            ),
            (
                "all expressions must hold",
                term(vec![req("zone", "In", &["a"]), req("cores", "Lt", &["4"])]),
                false,
            ),
            ("an empty term matches nothing", term(vec![]), false),
            (
                "unknown operator",
                term(vec![req("zone", "Like", &["a"])]),
                false,
            ),
        ] {
            assert_eq!(term_matches(&t, n), want, "{what}");
        }
        let by_name = |op: &str, names: &[&str]| NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", op, names)]),
        };
        assert!(term_matches(&by_name("In", &["n1"]), n));
        assert!(!term_matches(&by_name("In", &["n2"]), n));
        assert!(term_matches(&by_name("NotIn", &["n2"]), n));
        assert!(
            !term_matches(&by_name("Exists", &[]), n),
            "fields take In/NotIn only"
        );
        let other_field = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.uid", "In", &["n1"])]),
        };
        assert!(!term_matches(&other_field, n));
    }

    #[test]
    fn pods_need_their_selector_and_any_required_term() {
        let l = labels();
        let n = NodeFacts {
            name: "n1",
            labels: &l,
        };
        let with = |selector: &[(&str, &str)], terms: Option<Vec<NodeSelectorTerm>>| PodSpec {
            node_selector: (!selector.is_empty()).then(|| {
                selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            affinity: terms.map(|t| Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: t,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(required_node_affinity_matches(&with(&[], None), n));
        assert!(required_node_affinity_matches(
            &with(&[("zone", "a")], None),
            n
        ));
        assert!(!required_node_affinity_matches(
            &with(&[("zone", "b")], None),
            n
        ));
        let terms = vec![
            term(vec![req("zone", "In", &["b"])]),
            term(vec![req("cores", "Gt", &["2"])]),
        ];
        assert!(
            required_node_affinity_matches(&with(&[], Some(terms.clone())), n),
            "terms are ORed"
        );
        assert!(!required_node_affinity_matches(
            &with(&[("zone", "b")], Some(terms)),
            n
        ));
        assert!(
            !required_node_affinity_matches(&with(&[], Some(vec![])), n),
            "no terms: nothing"
        );
    }
}
