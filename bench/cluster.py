#!/usr/bin/env python3
"""Cluster pod start: `kubectl create` of N pods (one file) -> all Running as the apiserver
reports them, on the all-in-one node (control plane in-process, embedded store), image present.

Kubernetes' pod startup SLO is p99 <= 5 s per pod (excluding image pulls); the aim here is all
100 pods within 5 s on a 2-core machine. Each pod's start is also measured on its own, from its
creationTimestamp to its Ready condition's lastTransitionTime (one-second resolution, as the API
gives them). The node runs in its own network and mount namespaces.
"""
import argparse, json, os, sys, time

import bench  # bench/bench.py: the all-in-one node

CG = "podlet-bench-cluster"


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ts(s):
    import datetime
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", required=True)
    ap.add_argument("--pods", type=int, default=100)
    args = ap.parse_args()
    podlet = os.path.abspath(args.podlet)
    with bench.all_in_one_node(podlet, "podlet-bench-cluster-", CG) as (work, d, k):
        pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"},
                 "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                          "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]}}
                for i in range(args.pods)]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": pods})
        t0 = time.perf_counter()
        out = k("create", "-f", "-", input=body)
        if out.returncode != 0:
            sys.exit(out.stderr)
        created = time.perf_counter() - t0
        while True:
            items = json.loads(k("get", "pods", "-o", "json").stdout)["items"]
            running = [p for p in items if p.get("status", {}).get("phase") == "Running"]
            if len(running) == args.pods:
                break
            if time.perf_counter() - t0 > 300:
                sys.exit(f"only {len(running)} of {args.pods} Running after 300 s")
            time.sleep(0.05)
        total = time.perf_counter() - t0
        per_pod = []
        for p in items:
            ready = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")
            per_pod.append(ts(ready["lastTransitionTime"]) - ts(p["metadata"]["creationTimestamp"]))
        print(f"\n== cluster pod start: kubectl create of {args.pods} pods -> all Running (all-in-one node, image present)")
        print(f"  kubectl create returned after {created:5.2f} s; all Running after {total:5.2f} s (aim <= 5 s)")
        print(f"  per pod, creation -> Ready (1 s resolution): p50 {pct(per_pod, 50):.0f} s   p99 {pct(per_pod, 99):.0f} s   max {max(per_pod):.0f} s")
        k("delete", "pods", "--all", "--wait=false")
        deadline = time.time() + 120
        while time.time() < deadline and os.listdir(d + "/run/pods"):
            time.sleep(0.1)


if __name__ == "__main__":
    main()
