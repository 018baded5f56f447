//! PATCH bodies: JSON patch (RFC 6902), merge patch (RFC 7386), strategic merge patch (lists
//! merged by Kubernetes' patch merge keys, `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList`
//! directives) and server-side apply (the applied configuration merged in, fields the manager
//! applied before and no longer does removed, `managedFields` kept per manager).

use serde_json::{json, Map, Value};

/// The merge key of a list field, by its name (the same in every Kubernetes type that has it).
fn merge_key(field: &str, parent: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" | "podIPs" | "hostIPs" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        "addresses" if parent == "status" => "type",
        "ports" if parent == "spec" => "port",
        "ports" => "containerPort",
        _ => return None,
    })
}

/// Primitive lists Kubernetes merges as sets.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

pub fn strategic_merge(target: &mut Value, patch: &Value) {
    smp_object(target, patch, "");
}

fn smp_object(target: &mut Value, patch: &Value, parent: &str) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut v = patch.clone();
        v.as_object_mut().unwrap().remove("$patch");
        *target = v;
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, pv) in p {
        if k == "$patch" || k.starts_with("$retainKeys") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                t.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => smp_object(tv, pv, k),
            (Some(Value::Array(list)), Value::Array(items)) => {
                if let Some(key) = merge_key(k, parent) {
                    if items.iter().all(Value::is_object) {
                        merge_list(list, items, key);
                        if let Some(order) = p.get(&format!("$setElementOrder/{k}")) {
                            reorder(list, order, key);
                        }
                        continue;
                    }
                }
                if merges_primitives(k) {
                    for i in items {
                        if !list.contains(i) {
                            list.push(i.clone());
                        }
                    }
                    continue;
                }
                t.insert(k.clone(), strip_directives(pv));
            }
            _ => {
                t.insert(k.clone(), strip_directives(pv));
            }
        }
    }
}

fn merge_list(list: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = list.iter().position(|x| x.get(key) == item.get(key));
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => smp_object(&mut list[i], item, key),
            (_, None) => list.push(strip_directives(item)),
        }
    }
}

fn reorder(list: &mut Vec<Value>, order: &Value, key: &str) {
    let Some(order) = order.as_array() else {
        return;
    };
    let mut ordered: Vec<Value> = Vec::with_capacity(list.len());
    for o in order {
        if let Some(i) = list.iter().position(|x| x.get(key) == o.get(key)) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// The `fieldsV1` set of the fields `v` sets (lists with merge keys by key, others whole).
pub fn fields_v1(v: &Value) -> Value {
    fields_of(v, "")
}

fn fields_of(v: &Value, parent: &str) -> Value {
    let mut out = Map::new();
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if parent.is_empty() && ["apiVersion", "kind", "status"].contains(&k.as_str()) {
                continue;
            }
            if parent == "metadata"
                && [
                    "name",
                    "namespace",
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                    "generation",
                    "managedFields",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ]
                .contains(&k.as_str())
            {
                continue;
            }
            let child = match val {
                Value::Object(_) => fields_of(val, k),
                Value::Array(items) => match merge_key(k, parent) {
                    Some(key) if items.iter().all(Value::is_object) => {
                        let mut m = Map::new();
                        for it in items {
                            let mut inner = fields_of(it, k);
                            inner.as_object_mut().unwrap().insert(".".into(), json!({}));
                            m.insert(format!("k:{}", json!({key: it.get(key)})), inner);
                        }
                        Value::Object(m)
                    }
                    _ if merges_primitives(k) => Value::Object(
                        items
                            .iter()
                            .map(|i| (format!("v:{i}"), json!({})))
                            .collect(),
                    ),
                    _ => json!({}),
                },
                _ => json!({}),
            };
            out.insert(format!("f:{k}"), child);
        }
    }
    Value::Object(out)
}

/// Removes from `target` the fields in `gone` (a fieldsV1 set) — the fields a manager applied
/// before and no longer applies.
fn remove_fields(target: &mut Value, gone: &Value, parent: &str) {
    let (Some(t), Some(g)) = (target.as_object_mut(), gone.as_object()) else {
        return;
    };
    for (fk, sub) in g {
        let Some(k) = fk.strip_prefix("f:") else {
            continue;
        };
        let whole = sub.as_object().is_none_or(|m| m.is_empty());
        if whole {
            t.remove(k);
            continue;
        }
        match t.get_mut(k) {
            Some(Value::Array(list)) => {
                if let Some(key) = merge_key(k, parent) {
                    for (ek, esub) in sub.as_object().unwrap() {
                        let Some(kv) = ek.strip_prefix("k:") else {
                            continue;
                        };
                        let Ok(kv) = serde_json::from_str::<Value>(kv) else {
                            continue;
                        };
                        if let Some(i) = list.iter().position(|x| x.get(key) == kv.get(key)) {
                            if esub.get(".").is_some() {
                                list.remove(i);
                            } else {
                                remove_fields(&mut list[i], esub, k);
                            }
                        }
                    }
                } else if merges_primitives(k) {
                    for ek in sub.as_object().unwrap().keys() {
                        if let Some(Ok(v)) =
                            ek.strip_prefix("v:").map(serde_json::from_str::<Value>)
                        {
                            list.retain(|x| *x != v);
                        }
                    }
                }
            }
            Some(child @ Value::Object(_)) => remove_fields(child, sub, k),
            _ => {}
        }
    }
}

/// Set difference of two fieldsV1 trees: what is in `a` and not in `b`.
fn fields_minus(a: &Value, b: &Value) -> Value {
    let mut out = Map::new();
    for (k, av) in a.as_object().into_iter().flatten() {
        match b.get(k) {
            None => {
                out.insert(k.clone(), av.clone());
            }
            Some(bv) => {
                let d = fields_minus(av, bv);
                if d.as_object().is_some_and(|m| !m.is_empty()) {
                    out.insert(k.clone(), d);
                }
            }
        }
    }
    Value::Object(out)
}

/// Server-side apply of `applied` by `manager` onto `live` (None: the object is created).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
) -> Value {
    let applied_fields = fields_v1(applied);
    let mut out = live.cloned().unwrap_or_else(|| json!({}));
    let mut managed: Vec<Value> = out["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let prev = managed
        .iter()
        .position(|m| m["manager"] == manager && m["operation"] == "Apply");
    if let Some(i) = prev {
        let before = managed[i]["fieldsV1"].clone();
        let gone = fields_minus(&before, &applied_fields);
        remove_fields(&mut out, &gone, "");
        managed.remove(i);
    }
    strategic_merge(&mut out, applied);
    managed.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": applied_fields,
    }));
    out["metadata"]["managedFields"] = json!(managed);
    out
}

/// Records an Update by `manager` in `managedFields` (replacing its previous Update entry).
pub fn record_update(
    obj: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: Option<&str>,
) {
    let fields = if subresource == Some("status") {
        json!({"f:status": fields_of(&obj["status"], "status")})
    } else {
        fields_v1(obj)
    };
    let mut managed: Vec<Value> = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    managed.retain(|m| {
        !(m["manager"] == manager
            && m["operation"] == "Update"
            && m.get("subresource").and_then(Value::as_str) == subresource)
    });
    let mut entry = json!({"manager": manager, "operation": "Update", "apiVersion": api_version, "time": now, "fieldsType": "FieldsV1", "fieldsV1": fields});
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    managed.push(entry);
    obj["metadata"]["managedFields"] = json!(managed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_uses_merge_keys_and_directives() {
        let mut pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "busybox"}]}});
        strategic_merge(
            &mut pod,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]}, "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "busybox:1", "env": [{"name": "Y", "value": "2"}]}, {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(pod["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(pod["metadata"]["finalizers"], json!(["x", "y"]));
        let cs = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["image"], "busybox:1");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn apply_removes_what_the_manager_stopped_applying() {
        let first = json!({"metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let live = apply(None, &first, "kubectl", "v1", "t");
        assert_eq!(live["data"], json!({"x": "1", "y": "2"}));
        // Someone else's field stays.
        let mut live = live;
        live["data"]["z"] = json!("3");
        let second = json!({"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"x": "9"}});
        let out = apply(Some(&live), &second, "kubectl", "v1", "t");
        assert_eq!(out["data"], json!({"x": "9", "z": "3"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        let managed = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0]["fieldsV1"]["f:data"], json!({"f:x": {}}));
        // Applying the same thing again changes nothing.
        let again = apply(Some(&out), &second, "kubectl", "v1", "t");
        assert_eq!(again, out);
    }
}
