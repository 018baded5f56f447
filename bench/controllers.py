#!/usr/bin/env python3
"""The workload controllers, end to end through the API:

(a) a Deployment of N replicas (default 1000) on hollow nodes (Node objects with no agent behind
    them) -> N pods created by the ReplicaSet controller and bound by the scheduler. With
    kube-controller-manager's default client limits (20 QPS, burst 30) creating 1000 pods takes
    ~50 s upstream; the aim here is <= 5 s.
(b) a rolling update (`kubectl set env`) of a 100-replica Deployment on one real all-in-one node,
    images present -> all replicas updated and Available (aim <= 15 s).
(c) leader failover: two control planes on one etcd (Debian's etcd-server); the leading one is
    killed with SIGKILL; the time until the other holds the kube-controller-manager Lease and
    until its controllers act (a Deployment created right after the kill gets its ReplicaSet).

No kube-controller-manager is installed on this machine, so there is no peer run side by side;
the upstream figure in (a) is computed from its documented client limits. Everything on loopback,
in temp dirs this script removes."""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apiserver  # start_etcd, start_apiserver
import bench  # the cgroup clean-up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"


def kubectl(kubeconfig, home, *args, stdin=None, netns=None):
    cmd = (netns or []) + [KUBECTL, "--kubeconfig", kubeconfig, "--cache-dir", home + "/kc"] + list(args)
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=dict(os.environ, HOME=home))


def must(out):
    if out.returncode != 0:
        sys.exit(out.stderr)
    return out.stdout


def wait(what, check, timeout, step=0.05):
    t0 = time.perf_counter()
    while True:
        v = check()
        if v:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            sys.exit(f"{what}: not after {timeout} s")
        time.sleep(step)


def deployment(name, replicas, command):
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                                       "containers": [{"name": "c", "image": "busybox:1.36", "command": command,
                                                       "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}}}})


def hollow_nodes(count):
    nodes = [{"apiVersion": "v1", "kind": "Node",
              "metadata": {"name": f"hollow-{i}", "labels": {"kubernetes.io/hostname": f"hollow-{i}"}},
              "status": {"capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                         "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                         "conditions": [{"type": "Ready", "status": "True"}]}} for i in range(count)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})


def watch_pods(kc, home, selector):
    """One `kubectl get -w` stream (polling LISTs of 1000 pods would cost the 2-core machine more
    than the controllers do): yields {name: node or ""} after every event, with its time."""
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", kc, "--cache-dir", home + "/kc", "get", "pods", "-l", selector,
                             "-w", "--no-headers", "-o", "custom-columns=N:.metadata.name,NODE:.spec.nodeName"],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, HOME=home))
    return proc


def until_bound(proc, replicas, t0, timeout):
    """Reads the watch until `replicas` pods are bound: (all created, all bound) seconds after t0."""
    seen, created = {}, None
    while True:
        line = proc.stdout.readline()
        now = time.perf_counter() - t0
        if not line or now > timeout:
            sys.exit(f"{replicas} pods bound: not after {timeout} s ({sum(1 for n in seen.values() if n)} bound)")
        parts = line.split()
        if len(parts) != 2:
            continue
        seen[parts[0]] = "" if parts[1] == "<none>" else parts[1]
        if created is None and len(seen) >= replicas:
            created = now
        if sum(1 for n in seen.values() if n) >= replicas:
            return created, now


def hollow(podlet, replicas):
    tmp = tempfile.mkdtemp(prefix="podlet-bench-ctl-")
    p = None
    try:
        # Hollow nodes post no heartbeats: node lifecycle would mark them Unknown and evict.
        p, port = apiserver.start_apiserver(podlet, tmp, "cp", ["--controllers", "*,-nodelifecycle,-taint-eviction-controller"])
        kc = os.path.join(tmp, "cp.kubeconfig")
        must(kubectl(kc, tmp, "create", "-f", "-", stdin=hollow_nodes((replicas + 99) // 100)))
        wait("the default service account", lambda: kubectl(kc, tmp, "get", "sa", "default").returncode == 0, 30)
        watch = watch_pods(kc, tmp, "app=big")
        t0 = time.perf_counter()
        must(kubectl(kc, tmp, "create", "-f", "-", stdin=deployment("big", replicas, ["sleep", "3600"])))
        try:
            created, total = until_bound(watch, replicas, t0, 300)
        finally:
            watch.kill()
            watch.wait()
        upstream = (replicas - 30) / 20 + 1
        print(f"\n== (a) Deployment of {replicas} replicas on {(replicas + 99) // 100} hollow nodes -> all pods created and bound")
        print(f"  podlet {total:5.2f} s (all created after {created:5.2f} s)   kube-controller-manager at its default"
              f" 20 QPS / burst 30: >= {upstream:4.1f} s   ratio {upstream / total:4.1f}x (aim <= 5 s)")
    finally:
        # Also when a wait gives up (sys.exit): the control plane must not outlive the run.
        if p is not None:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def rolling(podlet, replicas):
    with bench.all_in_one_node(podlet, "podlet-bench-roll-", "podlet-bench-ctl") as (work, d, k):
        rolling_on(k, replicas, d)


def rolling_on(k, replicas, d):
    def complete():
        out = k("get", "deploy", "web", "-o", "json")
        if out.returncode != 0:
            return False
        d = json.loads(out.stdout)
        s = d.get("status", {})
        return (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas") == replicas
                and s.get("availableReplicas") == replicas and s.get("replicas") == replicas)

    must(k("create", "-f", "-", input=deployment("web", replicas, ["sleep", "100000"])))
    first = wait("the first rollout", complete, 300, step=0.1)
    t0 = time.perf_counter()
    must(k("set", "env", "deploy/web", "ROLL=1"))
    try:
        wait("the rolling update", complete, 300, step=0.1)
    except SystemExit:
        # What it was waiting for, for whoever reads the failure.
        print(k("get", "deploy,rs", "-o", "wide").stdout, k("get", "pods", "--no-headers").stdout[-3000:],
              k("describe", "deploy", "web").stdout[-2000:], file=sys.stderr)
        raise
    total = time.perf_counter() - t0
    print(f"\n== (b) rolling update of a {replicas}-replica Deployment on one all-in-one node (maxSurge/maxUnavailable 25%)")
    print(f"  created -> all Available {first:5.2f} s; set env -> all updated and Available {total:5.2f} s (aim <= 15 s)")
    k("delete", "deploy", "web", "--wait=false")
    deadline = time.time() + 120
    while time.time() < deadline and os.path.isdir(d + "/run/pods") and os.listdir(d + "/run/pods"):
        time.sleep(0.1)


def holder_of(kc, home):
    out = kubectl(kc, home, "-n", "kube-system", "get", "lease", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}")
    return out.stdout.strip() if out.returncode == 0 else ""


def failover(podlet, etcd_bin):
    tmp = tempfile.mkdtemp(prefix="podlet-bench-failover-")
    procs = []
    try:
        e, url = apiserver.start_etcd(etcd_bin, tmp)
        procs.append(e)
        a, _ = apiserver.start_apiserver(podlet, tmp, "a", ["--etcd-servers", url])
        procs.append(a)
        kca = os.path.join(tmp, "a.kubeconfig")
        wait("a to lead", lambda: holder_of(kca, tmp) != "", 60)
        b, _ = apiserver.start_apiserver(podlet, tmp, "b", ["--etcd-servers", url])
        procs.append(b)
        kcb = os.path.join(tmp, "b.kubeconfig")
        leader = holder_of(kcb, tmp)
        a.kill()
        t0 = time.perf_counter()
        must(kubectl(kcb, tmp, "create", "-f", "-", stdin=deployment("after", 1, ["sleep", "3600"])))
        took = wait("b to lead", lambda: holder_of(kcb, tmp) not in ("", leader), 60)
        wait("b's controllers to act", lambda: kubectl(kcb, tmp, "get", "rs", "-l", "app=after", "--no-headers").stdout.strip() != "", 60)
        acted = time.perf_counter() - t0
        print("\n== (c) leader failover, two control planes on one etcd, the leader killed (SIGKILL)")
        print(f"  lease taken over after {took:5.2f} s; a Deployment created after the kill got its ReplicaSet after {acted:5.2f} s"
              " (lease 15 s, renew deadline 10 s, retry 2 s, as kube-controller-manager)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", required=True)
    ap.add_argument("--etcd", default=os.path.join(ROOT, "target/tools/usr/bin/etcd"))
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--rolling-replicas", type=int, default=100)
    ap.add_argument("--only", choices=["hollow", "rolling", "failover"])
    args = ap.parse_args()
    podlet = os.path.abspath(args.podlet)
    if args.only in (None, "hollow"):
        hollow(podlet, args.replicas)
    if args.only in (None, "rolling"):
        rolling(podlet, args.rolling_replicas)
    if args.only in (None, "failover"):
        failover(podlet, args.etcd)


if __name__ == "__main__":
    main()
