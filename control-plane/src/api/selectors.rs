//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and field selectors
//! (`f=v`, `f==v`, `f!=v` on the fields each resource supports).

use k8s_rules::labels::Selector;
use serde_json::Value;

/// A label selector over JSON objects' `metadata.labels`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Selector);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        Selector::parse(s).map(LabelSelector)
    }

    /// Selects every object.
    pub fn is_everything(&self) -> bool {
        self.0.selects_everything()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0
            .matches_with(|k| labels.get(k).and_then(Value::as_str))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// `supported`: the fields the resource may be selected on beyond `metadata.name` and
    /// `metadata.namespace` (its strategy's).
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{p}'"));
            };
            let field = field.trim();
            if !["metadata.name", "metadata.namespace"].contains(&field)
                && !supported.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            out.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// Selects every object.
    pub fn is_everything(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let v = field_value(obj, field);
            (v == *want) == *eq
        })
    }
}

/// A field's value as a selector compares it (absent: empty string; booleans as text).
fn field_value(obj: &Value, field: &str) -> String {
    if field == "source" {
        return obj["source"]["component"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let mut cur = obj;
    for part in field.split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if field == "spec.hostNetwork" || field == "spec.unschedulable" => {
            "false".into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_read_the_objects_labels() {
        // The grammar itself is k8s-rules' (tested there); this is the object wrapper.
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        assert!(LabelSelector::parse("app in (db, web),tier")
            .unwrap()
            .matches(&o));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("!missing")
            .unwrap()
            .matches(&json!({})));
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let pods = crate::api::resources::PODS.strategy.selectable_fields();
        let f = |s: &str| FieldSelector::parse(s, pods).unwrap().matches(&p);
        assert!(f("spec.nodeName=n1"));
        assert!(f("metadata.name==a,status.phase!=Failed"));
        assert!(!f("spec.nodeName="));
        assert!(f("spec.hostNetwork=false"));
        assert_eq!(
            FieldSelector::parse("spec.bogus=1", pods).unwrap_err(),
            "field label not supported: spec.bogus"
        );
    }
}
