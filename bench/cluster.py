#!/usr/bin/env python3
"""Cluster pod start: `kubectl create` of N pods (one file) -> all Running as the apiserver
reports them, on the all-in-one node (control plane in-process, embedded store), image present.

Kubernetes' pod startup SLO is p99 <= 5 s per pod (excluding image pulls); the aim here is all
100 pods within 5 s on a 2-core machine. Each pod's start is also measured on its own, from its
creationTimestamp to its Ready condition's lastTransitionTime (one-second resolution, as the API
gives them). The node runs in its own network and mount namespaces.
"""
import argparse, json, os, subprocess, sys, tempfile, time

import bench  # bench/bench.py: the cgroup clean-up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CG = "podlet-bench-cluster"
KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"


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
    work = tempfile.mkdtemp(prefix="podlet-bench-cluster-")
    d = os.path.join(work, "node")
    for sub in ("root", "run", "logs", "manifests"):
        os.makedirs(os.path.join(d, sub))
    base = [podlet, "--config", "/dev/null", "--root-dir", d + "/root", "--run-dir", d + "/run", "--log-dir", d + "/logs"]
    archive = os.path.join(work, "bb.tar")
    subprocess.run(["bash", os.path.join(ROOT, "hack/busybox-image.sh"), archive], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(base + ["image", "import", archive], check=True, stdout=subprocess.DEVNULL)
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity"])
    time.sleep(0.2)
    ns = ["nsenter", "-t", str(holder.pid), "-n", "--"]
    subprocess.run(ns + ["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(ns + ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"], check=True)
    subprocess.run(ns + ["ip", "addr", "add", "10.98.0.2/24", "dev", "eth0"], check=True)
    for l in ("eth0", "eth0-peer"):
        subprocess.run(ns + ["ip", "link", "set", l, "up"], check=True)
    kubeconfig = d + "/admin.kubeconfig"
    agent = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-n", "-m", "--"] + base +
                             ["run", "--manifest-dir", d + "/manifests", "--node-name", "bench", "--cgroup-root", CG,
                              "--eviction-hard=", "--admin-kubeconfig", kubeconfig,
                              "--cni-conf-dir", d + "/cni/net.d", "--cni-bin-dir", d + "/cni/bin", "--cni-cache-dir", d + "/cni/cache"],
                             stdout=open(d + "/agent.log", "w"), stderr=subprocess.STDOUT, env=dict(os.environ, PODLET_LOG="warn"))
    k = lambda *a, **kw: subprocess.run(ns + [KUBECTL, "--kubeconfig", kubeconfig, "--cache-dir", work + "/kc"] + list(a),
                                        capture_output=True, text=True, env=dict(os.environ, HOME=work), **kw)
    try:
        deadline = time.time() + 60
        while True:
            out = k("get", "node", "bench", "-o", "json")
            if out.returncode == 0 and any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in json.loads(out.stdout)["status"]["conditions"]):
                break
            if time.time() > deadline:
                sys.exit("the node did not become Ready:\n" + open(d + "/agent.log").read())
            time.sleep(0.2)
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
    finally:
        agent.kill()
        agent.wait()
        holder.kill()
        holder.wait()
        bench.kill_started(work, CG)
        bench.cleanup_cgroups(CG)
        subprocess.run(["chmod", "-R", "u+rwx", work])
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
