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
print("ok")
