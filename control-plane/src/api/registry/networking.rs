//! networking.k8s.io/v1 NetworkPolicies: upstream's defaults (`pkg/apis/networking/v1/
//! defaults.go`: a port's protocol TCP, `policyTypes` from the rules), validation
//! (`pkg/apis/networking/validation`, with its messages), the generation and kubectl's columns.
//! The policies are enforced by every agent (`agent/src/netpol/`).

use serde_json::{json, Value};

use super::policy::validate_selector;
use super::strategy::Strategy;
use crate::api::objects;
use crate::api::status::{ApiError, Cause};
use crate::api::table;

pub struct NetworkPolicies;
pub static NETWORKPOLICY: NetworkPolicies = NetworkPolicies;

impl Strategy for NetworkPolicies {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"podSelector": {"matchLabels": {"app": name}},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::NETWORKPOLICIES
    }

    fn prepare_for_create(&self, _: &super::Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
    }

    fn prepare_for_update(&self, _: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        // Compared defaulted: a client that leaves out what defaulting filled in (a port's
        // protocol) changes nothing.
        let mut spec = obj.clone();
        self.defaults(&mut spec);
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
        obj["metadata"]["generation"] = json!(if spec["spec"] != old["spec"] {
            generation + 1
        } else {
            generation
        });
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = objects::child(obj, "spec");
        // A Go struct, not a pointer: always there, `{}` selecting every pod.
        if !spec["podSelector"].is_object() {
            spec["podSelector"] = json!({});
        }
        for dir in ["ingress", "egress"] {
            // (`get_mut`: indexing a missing key mutably would add it as null.)
            let rules = spec.get_mut(dir).and_then(Value::as_array_mut);
            for rule in rules.into_iter().flatten() {
                let ports = rule.get_mut("ports").and_then(Value::as_array_mut);
                for port in ports.into_iter().flatten() {
                    if port.is_object() && port["protocol"].is_null() {
                        port["protocol"] = json!("TCP");
                    }
                }
            }
        }
        if spec["policyTypes"].as_array().is_none_or(|t| t.is_empty()) {
            let egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
            spec["policyTypes"] = json!(k8s_rules::netpol::default_policy_types(egress));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        validate_selector(&spec["podSelector"], "spec.podSelector", &mut causes);
        for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
            for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
                let at = format!("spec.{dir}[{i}]");
                for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                    validate_port(port, &format!("{at}.ports[{j}]"), &mut causes);
                }
                for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                    validate_peer(peer, &format!("{at}.{peers}[{j}]"), &mut causes);
                }
            }
        }
        let types = spec["policyTypes"].as_array().cloned().unwrap_or_default();
        if types.len() > 2 {
            let list: Vec<String> = types.iter().map(|t| format!("{:?}", str_of(t))).collect();
            causes.push((
                "FieldValueInvalid",
                "spec.policyTypes".into(),
                format!(
                    "Invalid value: []networking.PolicyType{{{}}}: may not specify more than two policyTypes",
                    list.join(", ")
                ),
            ));
            return causes;
        }
        for (i, t) in types.iter().enumerate() {
            if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
                causes.push(objects::not_supported(
                    &format!("spec.policyTypes[{i}]"),
                    t,
                    &["Ingress", "Egress"],
                ));
            }
        }
        causes
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn invalid_int(field: &str, n: i64, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.into(),
        format!("Invalid value: {n}: {why}"),
    )
}

/// `validation.IsValidPortNum`.
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// `ValidateNetworkPolicyPort`.
fn validate_port(port: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Some(p) = port.get("protocol").filter(|p| !p.is_null()) {
        if !matches!(p.as_str(), Some("TCP" | "UDP" | "SCTP")) {
            causes.push(objects::not_supported(
                &format!("{at}.protocol"),
                p,
                &["TCP", "UDP", "SCTP"],
            ));
        }
    }
    let end = port["endPort"].as_i64();
    match &port["port"] {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                causes.push(invalid_int(&format!("{at}.port"), n, PORT_RANGE));
            }
            if let Some(e) = end {
                if e < n {
                    causes.push(invalid_int(
                        &format!("{at}.endPort"),
                        e,
                        "must be greater than or equal to `port`",
                    ));
                }
                if !(1..=65535).contains(&e) {
                    causes.push(invalid_int(&format!("{at}.endPort"), e, PORT_RANGE));
                }
            }
        }
        Value::String(name) => {
            if let Some(e) = end {
                causes.push(invalid_int(
                    &format!("{at}.endPort"),
                    e,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for why in port_name_errors(name) {
                causes.push(objects::invalid(&format!("{at}.port"), name, why));
            }
        }
        _ => {
            if let Some(e) = end {
                causes.push(invalid_int(
                    &format!("{at}.endPort"),
                    e,
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
}

/// `validation.IsValidPortName`: an IANA service name.
pub fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters");
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen");
    }
    errs
}

/// `ValidateNetworkPolicyPeer`: one kind of peer, or a pod and a namespace selector together.
fn validate_peer(peer: &Value, at: &str, causes: &mut Vec<Cause>) {
    let mut kinds = 0;
    for sel in ["podSelector", "namespaceSelector"] {
        if peer[sel].is_object() {
            kinds += 1;
            validate_selector(&peer[sel], &format!("{at}.{sel}"), causes);
        }
    }
    let block = &peer["ipBlock"];
    if block.is_object() {
        kinds += 1;
        validate_ip_block(block, &format!("{at}.ipBlock"), causes);
    }
    if kinds == 0 {
        causes.push((
            "FieldValueRequired",
            at.into(),
            "Required value: must specify a peer".into(),
        ));
    } else if kinds > 1 && block.is_object() {
        causes.push((
            "FieldValueForbidden",
            at.into(),
            "Forbidden: may not specify both ipBlock and another peer".into(),
        ));
    }
}

const CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// `ValidateIPBlock`.
fn validate_ip_block(block: &Value, at: &str, causes: &mut Vec<Cause>) {
    let cidr = block["cidr"].as_str().unwrap_or_default();
    if cidr.is_empty() {
        causes.push(objects::required(&format!("{at}.cidr")));
        return;
    }
    let Some(net) = k8s_rules::netpol::parse_cidr(cidr) else {
        causes.push(objects::invalid(&format!("{at}.cidr"), cidr, CIDR));
        return;
    };
    for (i, e) in block["except"].as_array().into_iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        let e = e.as_str().unwrap_or_default();
        match k8s_rules::netpol::parse_cidr(e) {
            None => causes.push(objects::invalid(&field, e, CIDR)),
            Some(x) if !k8s_rules::netpol::strict_subset(x, net) => causes.push(objects::invalid(
                &field,
                e,
                "must be a strict subset of `cidr`",
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(spec: Value) -> Value {
        let mut o = json!({"metadata": {"name": "p"}, "spec": spec});
        NETWORKPOLICY.defaults(&mut o);
        o
    }

    fn causes(spec: Value) -> Vec<(String, String)> {
        NETWORKPOLICY
            .validate(&defaulted(spec))
            .into_iter()
            .map(|(_, f, m)| (f, m))
            .collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let o = defaulted(json!({}));
        assert_eq!(o["spec"]["podSelector"], json!({}));
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress"]));
        let o = defaulted(json!({"egress": [{"ports": [{"port": 53}]}]}));
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(o["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let o = defaulted(json!({"egress": [], "policyTypes": []}));
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress"]));
        let o = defaulted(
            json!({"policyTypes": ["Egress"], "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
        );
        assert_eq!(o["spec"]["policyTypes"], json!(["Egress"]));
        assert_eq!(o["spec"]["ingress"][0]["ports"][0]["protocol"], "UDP");
    }

    #[test]
    fn valid_policies_pass() {
        let spec = json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"role": "client"}}, "namespaceSelector": {}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": "http"}, {"port": 8000, "endPort": 9000}, {"protocol": "UDP"}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}],
            "policyTypes": ["Ingress", "Egress"]});
        assert_eq!(causes(spec), vec![]);
    }

    #[test]
    fn ports_validate_with_upstreams_messages() {
        let at = "spec.ingress[0].ports[0]";
        let one = |port: Value| causes(json!({"ingress": [{"ports": [port]}]}));
        assert_eq!(
            one(json!({"port": 0})),
            [(
                format!("{at}.port"),
                "Invalid value: 0: must be between 1 and 65535, inclusive".into()
            )]
        );
        assert_eq!(
            one(json!({"port": 90, "endPort": 80})),
            [(
                format!("{at}.endPort"),
                "Invalid value: 80: must be greater than or equal to `port`".into()
            )]
        );
        assert_eq!(
            one(json!({"port": "http", "endPort": 80}))[0].1,
            "Invalid value: 80: may not be specified when `port` is non-numeric"
        );
        assert_eq!(
            one(json!({"endPort": 80}))[0].1,
            "Invalid value: 80: may not be specified when `port` is not specified"
        );
        assert_eq!(
            one(json!({"port": 80, "protocol": "ICMP"})),
            [(
                format!("{at}.protocol"),
                "Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"".into()
            )]
        );
        let bad: Vec<String> = one(json!({"port": "-Web--server-too-long"}))
            .into_iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(
            bad,
            [
                "Invalid value: \"-Web--server-too-long\": must be no more than 15 characters",
                "Invalid value: \"-Web--server-too-long\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "Invalid value: \"-Web--server-too-long\": must not contain consecutive hyphens",
                "Invalid value: \"-Web--server-too-long\": must not begin or end with a hyphen",
            ]
        );
        assert_eq!(
            one(json!({"port": "8080"}))[0].1,
            "Invalid value: \"8080\": must contain at least one letter (a-z)"
        );
    }

    #[test]
    fn peers_and_ip_blocks_validate_with_upstreams_messages() {
        let from = |peer: Value| causes(json!({"ingress": [{"from": [peer]}]}));
        assert_eq!(
            from(json!({})),
            [(
                "spec.ingress[0].from[0]".into(),
                "Required value: must specify a peer".into()
            )]
        );
        assert_eq!(
            from(json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}))[0].1,
            "Forbidden: may not specify both ipBlock and another peer"
        );
        assert_eq!(
            from(json!({"ipBlock": {"cidr": "10.0.0.0/33"}})),
            [(
                "spec.ingress[0].from[0].ipBlock.cidr".into(),
                "Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)".into()
            )]
        );
        assert_eq!(
            from(json!({"ipBlock": {"cidr": ""}}))[0],
            (
                "spec.ingress[0].from[0].ipBlock.cidr".into(),
                "Required value".into()
            )
        );
        let out = causes(
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16", "10.2.0.0/24", "10.0.1.0/24"]}}]}]}),
        );
        assert_eq!(
            out,
            [
                (
                    "spec.egress[0].to[0].ipBlock.except[0]".into(),
                    "Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`".into()
                ),
                (
                    "spec.egress[0].to[0].ipBlock.except[1]".into(),
                    "Invalid value: \"10.2.0.0/24\": must be a strict subset of `cidr`".into()
                ),
            ]
        );
        let sel = from(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        );
        assert_eq!(
            sel[0].0,
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"
        );
    }

    #[test]
    fn policy_types_validate_with_upstreams_messages() {
        assert_eq!(
            causes(json!({"policyTypes": ["Ingress", "Sideways"]})),
            [(
                "spec.policyTypes[1]".into(),
                "Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"".into()
            )]
        );
        assert_eq!(
            causes(json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}))[0].1,
            "Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"
        );
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        let old = json!({"metadata": {"name": "p", "generation": 3, "labels": {"a": "b"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}});
        let mut same = json!({"metadata": {"name": "p", "labels": {"a": "c"}},
            "spec": {"ingress": [{"ports": [{"port": 80}]}]}});
        NETWORKPOLICY
            .prepare_for_update("p", &mut same, &old)
            .unwrap();
        assert_eq!(same["metadata"]["generation"], 3);
        let mut changed = json!({"metadata": {"name": "p"},
            "spec": {"ingress": [{"ports": [{"port": 81}]}]}});
        NETWORKPOLICY
            .prepare_for_update("p", &mut changed, &old)
            .unwrap();
        assert_eq!(changed["metadata"]["generation"], 4);
    }
}

#[cfg(test)]
#[path = "networking_tests.rs"]
mod api_tests;
