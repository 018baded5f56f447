//! The columns of NetworkPolicies (`printNetworkPolicy`): name, pod selector, age.

use super::*;

pub static NETWORKPOLICIES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col(
                "Pod-Selector",
                "string",
                0,
                "Selects the pods to which this NetworkPolicy object applies. The array of ingress rules is applied to any pods selected by this field. Multiple network policies can select the same set of pods. In this case, the ingress rules for each are combined additively. This field is NOT optional and follows standard label selector semantics. An empty podSelector matches all pods in this namespace.",
            ),
            age_col(),
        ]
    },
    cells: |o| {
        vec![
            name_cell(o),
            selector_cell(&o["spec"]["podSelector"]),
            age_cell(o),
        ]
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_name_the_pod_selector() {
        let p = json!({"metadata": {"name": "deny", "creationTimestamp": "2020-01-01T00:00:00Z"},
                       "spec": {"podSelector": {}}});
        let cells = (NETWORKPOLICIES.cells)(&p);
        assert_eq!(cells[0], "deny");
        assert_eq!(cells[1], "<none>");
        let p = json!({"metadata": {"name": "web"},
                       "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
        assert_eq!((NETWORKPOLICIES.cells)(&p)[1], "app=web");
        let names: Vec<_> = (NETWORKPOLICIES.columns)()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["Name", "Pod-Selector", "Age"]);
    }
}
