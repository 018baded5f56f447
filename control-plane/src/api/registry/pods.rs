//! Pods: defaults and validation, the QoS class, the Priority, ServiceAccount and LimitRanger
//! admission plugins, NodeRestriction's mirror-pod rule, graceful deletion, and the
//! subresources binding, eviction, log, exec, attach and portforward.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::{Strategy, Subresource};
use super::{decode_kv, store_error, Request};
use crate::api::objects::{self, child, set_default};
use crate::api::resources;
use crate::api::status::{ApiError, Cause};
use crate::api::{quota, table};

mod subresources;
use subresources::{Binding, Eviction, Log, Stream};

pub struct Pods;
pub static POD: Pods = Pods;

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[async_trait]
impl Strategy for Pods {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn printer(&self) -> &'static table::Printer {
        &table::PODS
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[
            &Binding,
            &Eviction,
            &Log,
            &Stream("exec"),
            &Stream("attach"),
            &Stream("portforward"),
        ]
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = child(obj, "spec");
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                cs.iter_mut().for_each(default_container);
            }
        }
        let s = spec.as_object_mut().unwrap();
        set_default(s, "restartPolicy", json!("Always"));
        set_default(s, "terminationGracePeriodSeconds", json!(30));
        set_default(s, "dnsPolicy", json!("ClusterFirst"));
        set_default(s, "securityContext", json!({}));
        set_default(s, "schedulerName", json!("default-scheduler"));
        set_default(s, "enableServiceLinks", json!(true));
        set_default(s, "preemptionPolicy", json!("PreemptLowerPriority"));
        set_default(s, "priority", json!(0));
        set_default(s, "serviceAccountName", json!("default"));
        let sa = s["serviceAccountName"].clone();
        set_default(s, "serviceAccount", sa);
        // DefaultTolerationSeconds admission.
        let tolerations = s
            .entry("tolerations")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !tolerations.iter().any(|t| t["key"] == key) {
                tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
        let status = child(obj, "status");
        if status["phase"].is_null() {
            status["phase"] = json!("Pending");
        }
        set_qos(obj);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_spec(&obj["spec"], &mut causes);
        if !gates(&obj["spec"]).is_empty() && obj["spec"]["nodeName"].is_string() {
            causes.push(objects::forbidden(
                "spec.nodeName",
                "cannot be set until all schedulingGates have been cleared",
            ));
        }
        causes
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        scheduling_gated(obj);
    }

    /// Scheduling gates may only be removed (upstream's `validateOnlyDeletedSchedulingGates`).
    fn prepare_for_update(&self, name: &str, new: &mut Value, old: &Value) -> Result<(), ApiError> {
        let before = gates(&old["spec"]);
        let causes: Vec<Cause> = gates(&new["spec"])
            .iter()
            .enumerate()
            .filter(|(_, g)| !before.contains(g))
            .map(|(i, g)| {
                objects::forbidden(
                    &format!("spec.schedulingGates[{i}].name"),
                    &format!("only deletion is allowed, but found new scheduling gate '{g}'"),
                )
            })
            .collect();
        match causes.is_empty() {
            true => Ok(()),
            false => Err(ApiError::invalid(&resources::PODS, name, causes)),
        }
    }

    async fn admit(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        admit_priority(req, pod).await?;
        if let Some(ns) = ns {
            admit_service_account(req, ns, pod).await?;
            quota::limit_ranger(req.store(), ns, pod).await?;
            set_qos(pod);
        }
        Ok(())
    }

    fn admit_node(&self, node: &str, obj: &Value) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
            return Err(ApiError::forbidden(format!("pods \"{name}\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods")));
        }
        if obj["spec"]["nodeName"] != node {
            return Err(ApiError::forbidden(format!("pods \"{name}\" is forbidden: node \"{node}\" can only create pods with spec.nodeName set to itself")));
        }
        Ok(())
    }

    /// The request's grace period, else the pod's; none for a pod that never ran (unbound) or
    /// has finished.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let bound = obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let done = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if !bound || done {
            return 0;
        }
        requested
            .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0)
    }
}

/// The QoS class, set wherever requests and limits may have changed.
/// The names of `spec.schedulingGates`.
pub(crate) fn gates(spec: &Value) -> Vec<String> {
    spec["schedulingGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(str::to_owned))
        .collect()
}

/// A new pod with scheduling gates says why it waits, as the apiserver writes it (the
/// scheduler leaves gated pods alone and writes nothing).
fn scheduling_gated(pod: &mut Value) {
    if gates(&pod["spec"]).is_empty() {
        return;
    }
    let conditions = &mut child(pod, "status")["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("made an array above");
    if list.iter().any(|c| c["type"] == "PodScheduled") {
        return;
    }
    list.push(json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "SchedulingGated",
        "message": "Scheduling is blocked due to non-empty scheduling gates",
        "lastProbeTime": null,
        "lastTransitionTime": objects::now(),
    }));
}

fn set_qos(pod: &mut Value) {
    let qos = objects::qos_class(&pod["spec"]);
    child(pod, "status")["qosClass"] = json!(qos);
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

pub(super) fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let c = c.as_object_mut().unwrap();
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p.as_object_mut().unwrap(), "protocol", json!("TCP"));
        }
    }
}

pub(super) fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if containers.is_empty() {
        causes.push(objects::required("spec.containers"));
    }
    let mut seen = std::collections::HashSet::new();
    for (field, list) in [
        (
            "spec.initContainers",
            spec["initContainers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ),
        ("spec.containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                causes.push(objects::required(&format!("{field}[{i}].name")));
            } else if !objects::is_dns_label(name) {
                causes.push(objects::invalid(
                    &format!("{field}[{i}].name"),
                    name,
                    objects::DNS1123_LABEL,
                ));
            } else if !seen.insert(name.to_string()) {
                causes.push((
                    "FieldValueDuplicate",
                    format!("{field}[{i}].name"),
                    format!("Duplicate value: {name:?}"),
                ));
            }
            if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                causes.push(objects::required(&format!("{field}[{i}].image")));
            }
        }
    }
    if let Some(p) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            causes.push((
                "FieldValueNotSupported",
                "spec.restartPolicy".into(),
                format!("Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
}

/// The Priority admission plugin: `priorityClassName` resolves to `spec.priority`.
async fn admit_priority(req: &Request<'_>, pod: &mut Value) -> Result<(), ApiError> {
    let Some(pc) = pod["spec"]["priorityClassName"].as_str().map(str::to_owned) else {
        return Ok(());
    };
    match req
        .store()
        .get(&resources::PRIORITYCLASSES.key(None, &pc))
        .await
    {
        Ok(Some(kv)) => {
            let class = decode_kv(&kv);
            pod["spec"]["priority"] = class["value"].clone();
            if let Some(p) = class["preemptionPolicy"].as_str() {
                pod["spec"]["preemptionPolicy"] = json!(p);
            }
            Ok(())
        }
        _ => Err(ApiError::forbidden(format!(
            "pods \"{}\" is forbidden: no PriorityClass with name {pc} was found",
            pod["metadata"]["name"].as_str().unwrap_or_default()
        ))),
    }
}

/// The ServiceAccount admission plugin: the pod runs as `default` unless it names a
/// service account, which must exist; unless automounting is off (pod, then service
/// account), a projected `kube-api-access-*` volume (token, cluster CA, namespace) is
/// mounted read-only into every container. Mirror pods are left alone.
async fn admit_service_account(
    req: &Request<'_>,
    ns: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
        return Ok(());
    }
    let name = pod["spec"]["serviceAccountName"]
        .as_str()
        .or(pod["spec"]["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    pod["spec"]["serviceAccountName"] = json!(name);
    pod["spec"]["serviceAccount"] = json!(name);
    let sar = &resources::SERVICEACCOUNTS;
    // `default` is made by the service account controller soon after its namespace: it is
    // looked for up to ten times, 100-200 ms apart, as upstream's admission does.
    let attempts = if name == "default" { 10 } else { 1 };
    let interval = std::time::Duration::from_millis(100 + rand::random_range(0..100));
    let mut got = None;
    for i in 0..attempts {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        got = req
            .store()
            .get(&sar.key(Some(ns), &name))
            .await
            .map_err(|e| store_error(sar, &name, e))?;
        if got.is_some() {
            break;
        }
    }
    let sa = match got {
        Some(kv) => decode_kv(&kv),
        None => {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::forbidden(format!(
                "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
            )));
        }
    };
    let automount = pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or(sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let vol = crate::api::objects::generated_name("kube-api-access-");
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
            if mounts.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH) {
                continue;
            }
            let mut mounts = mounts;
            mounts.push(json!({"name": vol, "readOnly": true, "mountPath": SA_MOUNT_PATH}));
            c["volumeMounts"] = json!(mounts);
            mounted = true;
        }
    }
    if mounted {
        let mut vols = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        vols.push(json!({"name": vol, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}));
        pod["spec"]["volumes"] = json!(vols);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::PODS;

    #[test]
    fn grace_periods_follow_the_pod() {
        let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}, "status": {"phase": "Running"}});
        assert_eq!(POD.grace_period(&bound, None), 10);
        assert_eq!(POD.grace_period(&bound, Some(3)), 3);
        assert_eq!(POD.grace_period(&bound, Some(-5)), 0);
        let unbound = json!({"spec": {"terminationGracePeriodSeconds": 10}});
        assert_eq!(POD.grace_period(&unbound, None), 0);
        let done = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(POD.grace_period(&done, None), 0);
        assert_eq!(
            PODS.subresource("log").map(|s| s.verbs()),
            Some(&["get"][..])
        );
    }
}
