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
            // Metadata with only system fields (name, uid…) is nothing a manager owns.
            if parent.is_empty()
                && k == "metadata"
                && child.as_object().is_some_and(|m| m.is_empty())
            {
                continue;
            }
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

/// Union of two fieldsV1 trees.
fn fields_union(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    for (k, bv) in b.as_object().into_iter().flatten() {
        let merged = match out.get(k) {
            Some(av) => fields_union(av, bv),
            None => bv.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

/// The fields `new` sets that `old` did not set to the same value (all of them when there is
/// no `old`), as a fieldsV1 tree: what an Update takes ownership of.
fn changed_fields(old: Option<&Value>, new: &Value, parent: &str) -> Value {
    let Some(old) = old else {
        return fields_of(new, parent);
    };
    let all = fields_of(new, parent);
    let mut out = Map::new();
    for (fk, sub) in all.as_object().into_iter().flatten() {
        let k = &fk[2..];
        let (nv, ov) = (&new[k], old.get(k));
        if ov == Some(nv) {
            continue;
        }
        let child = match (nv, ov) {
            (Value::Object(_), Some(ov @ Value::Object(_))) => changed_fields(Some(ov), nv, k),
            (Value::Array(items), Some(Value::Array(olds))) => match merge_key(k, parent) {
                Some(key) if items.iter().all(Value::is_object) => {
                    let mut m = Map::new();
                    for it in items {
                        let before = olds.iter().find(|o| o.get(key) == it.get(key));
                        if before == Some(it) {
                            continue;
                        }
                        let mut inner = changed_fields(before, it, k);
                        if before.is_none() {
                            inner.as_object_mut().unwrap().insert(".".into(), json!({}));
                        }
                        m.insert(format!("k:{}", json!({key: it.get(key)})), inner);
                    }
                    Value::Object(m)
                }
                _ if merges_primitives(k) => Value::Object(
                    items
                        .iter()
                        .filter(|i| !olds.contains(i))
                        .map(|i| (format!("v:{i}"), json!({})))
                        .collect(),
                ),
                _ => json!({}),
            },
            _ => sub.clone(),
        };
        // An object or list whose changes were all removals owns nothing new.
        let empty_change =
            child.as_object().is_some_and(|m| m.is_empty()) && nv.is_object() && ov.is_some();
        if !empty_change {
            out.insert(fk.clone(), child);
        }
    }
    Value::Object(out)
}

/// A field path of a fieldsV1 tree: its `f:`, `k:` and `v:` steps.
type FieldPath = Vec<String>;

/// The leaves (owned fields) of a fieldsV1 tree.
fn leaves(f: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
    let Some(m) = f.as_object() else { return };
    let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

fn contains_path(f: &Value, path: &[String]) -> bool {
    match path.split_first() {
        None => true,
        Some((step, rest)) => f.get(step).is_some_and(|sub| contains_path(sub, rest)),
    }
}

/// The value at a field path in an object (None where it is not set).
fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((step, rest)) = path.split_first() else {
        return Some(v);
    };
    if let Some(k) = step.strip_prefix("f:") {
        return value_at(v.get(k)?, rest);
    }
    if let Some(kv) = step.strip_prefix("k:") {
        let kv: Value = serde_json::from_str(kv).ok()?;
        let item = v.as_array()?.iter().find(|it| {
            kv.as_object()
                .is_some_and(|m| m.iter().all(|(k, x)| it.get(k) == Some(x)))
        })?;
        return value_at(item, rest);
    }
    if let Some(x) = step.strip_prefix("v:") {
        let x: Value = serde_json::from_str(x).ok()?;
        return v.as_array()?.iter().find(|it| **it == x);
    }
    None
}

/// Removes one leaf path from a fieldsV1 tree (and the parents it leaves empty).
fn remove_path(f: &mut Value, path: &[String]) {
    let Some((step, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = f.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(step);
        return;
    }
    if let Some(sub) = m.get_mut(step) {
        remove_path(sub, rest);
        if sub.as_object().is_some_and(|s| s.keys().all(|k| k == ".")) {
            m.remove(step);
        }
    }
}

/// How a path reads in conflict messages: `.spec.replicas`, `.spec.containers[name="c"].image`.
fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(k) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(k);
        } else if let Some(kv) = step.strip_prefix("k:") {
            let kv: Value = serde_json::from_str(kv).unwrap_or_default();
            let parts: Vec<String> = kv
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = step.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

/// Fields an apply would change that other managers own: (manager, apiVersion, path).
pub type Conflicts = Vec<(String, String, String)>;

/// Server-side apply of `applied` by `manager` onto `live` (None: the object is created).
/// A field another manager owns with a different value is a conflict unless `force`, which
/// takes it over.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
    force: bool,
) -> Result<Value, Conflicts> {
    let applied_fields = fields_v1(applied);
    let mut out = live.cloned().unwrap_or_else(|| json!({}));
    let mut managed: Vec<Value> = out["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut wanted = Vec::new();
    leaves(&applied_fields, &mut Vec::new(), &mut wanted);
    let mut conflicts = Conflicts::new();
    for entry in managed.iter_mut() {
        if entry["manager"] == manager && entry["operation"] == "Apply" {
            continue;
        }
        let mut lost = Vec::new();
        for path in &wanted {
            if contains_path(&entry["fieldsV1"], path)
                && value_at(&out, path) != value_at(applied, path)
            {
                lost.push(path.clone());
            }
        }
        for path in lost {
            if force {
                remove_path(&mut entry["fieldsV1"], &path);
            } else {
                conflicts.push((
                    entry["manager"].as_str().unwrap_or_default().to_string(),
                    entry["apiVersion"].as_str().unwrap_or_default().to_string(),
                    path_text(&path),
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    managed.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
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
    Ok(out)
}

/// The message and causes of a failed apply, as the kube-apiserver words them.
pub fn conflict_message(conflicts: &Conflicts) -> (String, Vec<Value>) {
    let causes = conflicts
        .iter()
        .map(|(m, v, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": p})
        })
        .collect();
    let msg = if conflicts.len() == 1 {
        let (m, v, p) = &conflicts[0];
        format!("Apply failed with 1 conflict: conflict with \"{m}\" using {v}: {p}")
    } else {
        let mut by_manager: Vec<(String, String, Vec<String>)> = Vec::new();
        for (m, v, p) in conflicts {
            match by_manager.iter_mut().find(|(bm, bv, _)| bm == m && bv == v) {
                Some(e) => e.2.push(p.clone()),
                None => by_manager.push((m.clone(), v.clone(), vec![p.clone()])),
            }
        }
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(m, v, ps)| format!("conflicts with \"{m}\" using {v}:\n- {}", ps.join("\n- ")))
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            parts.join("\n")
        )
    };
    (msg, causes)
}

/// Records an Update by `manager` in `managedFields`: it comes to own the fields it changed
/// (added to what it owned before), which no other manager owns any more.
pub fn record_update(
    obj: &mut Value,
    old: Option<&Value>,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: Option<&str>,
) {
    let changed = if subresource == Some("status") {
        let st = changed_fields(old.map(|o| &o["status"]), &obj["status"], "status");
        if st.as_object().is_some_and(|m| m.is_empty()) {
            json!({})
        } else {
            json!({"f:status": st})
        }
    } else {
        changed_fields(old, obj, "")
    };
    let mut managed: Vec<Value> = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine = |m: &Value| {
        m["manager"] == manager
            && m["operation"] == "Update"
            && m.get("subresource").and_then(Value::as_str) == subresource
    };
    let before = managed
        .iter()
        .find(|m| mine(m))
        .map(|m| m["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    let fields = fields_union(&before, &changed);
    for m in managed.iter_mut().filter(|m| !mine(m)) {
        let rest = fields_minus(&m["fieldsV1"], &changed);
        m["fieldsV1"] = rest;
    }
    managed.retain(|m| !mine(m) && m["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
    if fields.as_object().is_some_and(|f| f.is_empty()) {
        obj["metadata"]["managedFields"] = json!(managed);
        return;
    }
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
        let live = apply(None, &first, "kubectl", "v1", "t", false).unwrap();
        assert_eq!(live["data"], json!({"x": "1", "y": "2"}));
        // Someone else's field stays.
        let mut live = live;
        live["data"]["z"] = json!("3");
        let second = json!({"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"x": "9"}});
        let out = apply(Some(&live), &second, "kubectl", "v1", "t", false).unwrap();
        assert_eq!(out["data"], json!({"x": "9", "z": "3"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        let managed = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managed.len(), 1);
        assert_eq!(managed[0]["fieldsV1"]["f:data"], json!({"f:x": {}}));
        // Applying the same thing again changes nothing.
        let again = apply(Some(&out), &second, "kubectl", "v1", "t", false).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn updates_own_what_they_change_and_applies_conflict_over_it() {
        let created = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "paused": false}});
        let mut live = created.clone();
        record_update(&mut live, None, "kubectl-create", "apps/v1", "t", None);
        let m = &live["metadata"]["managedFields"][0];
        assert_eq!(
            m["fieldsV1"]["f:spec"],
            json!({"f:replicas": {}, "f:paused": {}})
        );
        // An edit owns only what it changed, and takes it from the creator.
        let old = live.clone();
        live["spec"]["replicas"] = json!(3);
        record_update(&mut live, Some(&old), "kubectl-edit", "apps/v1", "t", None);
        let managed = live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .clone();
        let by = |n: &str| managed.iter().find(|m| m["manager"] == n).unwrap()["fieldsV1"].clone();
        assert_eq!(by("kubectl-edit"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(by("kubectl-create"), json!({"f:spec": {"f:paused": {}}}));
        // Applying the same value shares the field; a different one conflicts...
        let same = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3}});
        assert!(apply(Some(&live), &same, "kubectl", "apps/v1", "t", false).is_ok());
        let other = json!({"metadata": {"name": "d"}, "spec": {"replicas": 5, "paused": false}});
        let c = apply(Some(&live), &other, "kubectl", "apps/v1", "t", false).unwrap_err();
        assert_eq!(
            c,
            vec![(
                "kubectl-edit".to_string(),
                "apps/v1".to_string(),
                ".spec.replicas".to_string()
            )]
        );
        assert_eq!(
            conflict_message(&c).0,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
        );
        // ...unless forced, which takes the field over.
        let forced = apply(Some(&live), &other, "kubectl", "apps/v1", "t", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let managed = forced["metadata"]["managedFields"].as_array().unwrap();
        assert!(
            managed.iter().all(|m| m["manager"] != "kubectl-edit"),
            "{managed:?}"
        );
        // Keyed list elements are their own fields.
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        let mut live = pod.clone();
        record_update(&mut live, None, "creator", "v1", "t", None);
        let applied = json!({"spec": {"containers": [{"name": "a", "image": "y"}]}});
        let c = apply(Some(&live), &applied, "kubectl", "v1", "t", false).unwrap_err();
        assert_eq!(c[0].2, ".spec.containers[name=\"a\"].image");
    }
}
