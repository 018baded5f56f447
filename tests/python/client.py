"""Drives the apiserver with the official Python client (Debian's python3-kubernetes): typed
reads and writes, a watch from a resourceVersion, and an API error. Exits non-zero on failure."""
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()

names = [n.metadata.name for n in v1.list_namespace().items]
assert "kube-system" in names, names

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
created = v1.create_namespaced_config_map("default", cm)
assert created.metadata.uid and created.metadata.resource_version, created
v1.patch_namespaced_config_map("py", "default", {"data": {"a": "2"}})
events = []
for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                               resource_version=created.metadata.resource_version,
                               label_selector="from=python", timeout_seconds=2):
    events.append((ev["type"], ev["object"].metadata.name, ev["object"].data))
assert ("MODIFIED", "py", {"a": "2"}) in events, events

try:
    v1.read_namespaced_config_map("nope", "default")
    raise AssertionError("read of a missing config map succeeded")
except client.exceptions.ApiException as e:
    assert e.status == 404 and e.reason == "Not Found", (e.status, e.reason)

dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
apps.create_namespaced_deployment("default", dep)
got = apps.read_namespaced_deployment("web", "default")
assert got.spec.replicas == 2 and got.metadata.generation == 1, got.metadata
# Kubernetes' defaults come back typed.
assert got.spec.strategy.rolling_update.max_surge == "25%" and got.spec.revision_history_limit == 10, got.spec


def eventually(what, f, timeout=30):
    import time
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# The controllers: a ReplicaSet for the Deployment, scaled through the scale subresource.
rs = eventually("the deployment's replica set", lambda: apps.list_namespaced_replica_set("default", label_selector="app=web").items)
assert rs[0].metadata.owner_references[0].name == "web", rs[0].metadata
apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment_scale("web", "default").spec.replicas == 3
eventually("the replica set scaled", lambda: apps.read_namespaced_replica_set(rs[0].metadata.name, "default").spec.replicas == 3)
eventually("three pods", lambda: len(v1.list_namespaced_pod("default", label_selector="app=web").items) == 3)

batch = client.BatchV1Api()
job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pyjob"},
       "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
made = batch.create_namespaced_job("default", job)
assert made.spec.backoff_limit == 6 and made.spec.completion_mode == "NonIndexed", made.spec
assert made.spec.selector.match_labels["batch.kubernetes.io/controller-uid"] == made.metadata.uid
eventually("the job's pod", lambda: v1.list_namespaced_pod("default", label_selector="job-name=pyjob").items)
cj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "pycron"},
      "spec": {"schedule": "@hourly", "jobTemplate": {"spec": job["spec"]}}}
made = batch.create_namespaced_cron_job("default", cj)
assert made.spec.concurrency_policy == "Allow" and made.spec.successful_jobs_history_limit == 3, made.spec
assert [j.metadata.name for j in batch.list_namespaced_cron_job("default").items] == ["pycron"]

sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "pysts"},
       "spec": {"serviceName": "pysts", "replicas": 1, "selector": {"matchLabels": {"app": "pysts"}},
                "template": {"metadata": {"labels": {"app": "pysts"}},
                             "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
apps.create_namespaced_stateful_set("default", sts)
eventually("pysts-0", lambda: [p for p in v1.list_namespaced_pod("default", label_selector="app=pysts").items
                               if p.metadata.name == "pysts-0"])

policy = client.PolicyV1Api()
pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pypdb"},
       "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}
policy.create_namespaced_pod_disruption_budget("default", pdb)
got = eventually("the budget's status", lambda: (lambda b: b if b.status and b.status.expected_pods == 3 else None)(
    policy.read_namespaced_pod_disruption_budget("pypdb", "default")))
assert got.status.current_healthy == 0 and got.status.disruptions_allowed == 0, got.status
print("ok")
