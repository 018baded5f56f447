#!/usr/bin/env python3
"""The scheduler's throughput and latency on hollow nodes, after kube-scheduler's scheduler_perf
(test/integration/scheduler_perf): each workload runs in a fresh all-in-one control plane
(`podlet control-plane`, embedded store, every controller on) in a temp dir on loopback.

Hollow nodes are Node objects with no agent behind them (capacity and allocatable pods 110,
cpu 4, memory 32Gi; Ready=True; kubernetes.io/hostname=<name> and the workload's labels). The
node lifecycle controller counts a node's Lease in kube-node-lease (its renewTime) as a
heartbeat, so the bench creates a Lease per node and renews each one from background threads
every --lease-renew seconds (spread evenly; the grace period is 50 s): no node goes Unknown or is
tainted during a run, and the end of each workload says so (a LIST of the nodes).

Per workload: nodes and their Leases, init pods (waited for until bound), then the measured pods
created as fast as possible by one `curl --parallel` (--creator curl, the default: C and
keep-alive, so the harness takes little of the two CPUs it shares with the control plane; or
--creator python: --clients threads). A pod watch, started with the control plane and read in a
thread, timestamps each pod's first event and its first spec.nodeName. pods/s = measured pods /
(first measured pod seen -> last measured bind seen); latency per pod = pod seen -> bind seen.
Every wait has a deadline
(--timeout) and gives up early when nothing is bound for --stall seconds; a workload that gives up
says "timed out: X of M scheduled".

Workloads (scheduler_perf's templates; automountServiceAccountToken false stands for
scheduler_perf's apiserver, which runs without the ServiceAccount admission plugin):
  SchedulingBasic            init min(N/5, 1000) + M default pods (pause, port 80, 100m/500Mi).
  SchedulingPodAntiAffinity  color=green pods, required anti-affinity on kubernetes.io/hostname
                             over namespaces sched-0 and sched-1; init pods in sched-0, measured
                             in sched-1; one pod per node, so init + measured <= N.
  SchedulingNodeAffinity     nodes zone1; pods require topology.kubernetes.io/zone In
                             [zone1, zone2] (init and measured).
  TopologySpreading          nodes in zones moon-1..3 round-robin; init default pods; measured
                             color=blue pods, maxSkew 5 on topology.kubernetes.io/zone,
                             DoNotSchedule.
  PreemptionAsync            init 4 low-priority pods per node (900m, grace 0); while measuring,
                             a pod of spec.priority 10 asking 3000m every 200 ms (it must preempt
                             3 low pods); measured pods are default pods (they always fit).
Placements are checked afterwards (anti-affinity, skew, node affinity, over-committed nodes).

Victims: a DELETE of a bound pod with grace > 0 only marks it (deletionTimestamp) for its
kubelet; hollow nodes have none, so the bench plays it: pods marked for deletion on hollow nodes
are deleted with gracePeriodSeconds=0 (the low pods' own grace is 0 already, so a preemptor that
deletes without options removes them at once).

Usage: bench/scheduler.py --podlet target/release/podlet [--nodes 5000] [--pods 1000]
                          [--workloads SchedulingBasic,PreemptionAsync,...]"""
import argparse, http.client, json, os, queue, shutil, subprocess, sys, tempfile, threading, time
from datetime import datetime, timezone

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apiserver  # start_apiserver, conn, HDRS, pct
from apiserver import HDRS, pct

# scheduler_perf's CI floors (pods/s) at 5,000 nodes on large machines.
ANCHORS = {
    "SchedulingBasic": 680,
    "SchedulingPodAntiAffinity": 60,
    "SchedulingNodeAffinity": 220,
    "TopologySpreading": 460,
    "PreemptionAsync": 570,
}
WORKLOADS = list(ANCHORS)
LEASE_NS = "kube-node-lease"
ZONE = "topology.kubernetes.io/zone"
HOSTNAME = "kubernetes.io/hostname"
CAPACITY = {"cpu": 4000, "memory": 32 * 1024 ** 3, "pods": 110}


# ---------------------------------------------------------------- objects

def hollow_node(name, labels):
    cap = {"cpu": "4", "memory": "32Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {HOSTNAME: name, **labels}},
            "status": {"capacity": cap, "allocatable": dict(cap), "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "hollow node (bench/scheduler.py)"}]}}


def micro_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(name):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NS},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}}


def pod(name, ns="default", labels=None, cpu="100m", memory="500Mi", limits=True, **spec):
    res = {"requests": {"cpu": cpu, "memory": memory}}
    if limits:
        res["limits"] = {"cpu": cpu, "memory": memory}
    meta = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"automountServiceAccountToken": False, **spec,
                     "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                                     "ports": [{"containerPort": 80}], "resources": res}]}}


def anti_affinity_pod(name, ns):
    return pod(name, ns, {"color": "green", "name": "test"}, limits=False, affinity={"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"color": "green"}},
            "topologyKey": HOSTNAME, "namespaces": ["sched-1", "sched-0"]}]}})


def node_affinity_pod(name):
    return pod(name, limits=False, affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["zone1", "zone2"]}]}]}}})


def spread_pod(name):
    return pod(name, labels={"color": "blue"}, limits=False, topologySpreadConstraints=[{
        "maxSkew": 5, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"color": "blue"}}}])


def low_pod(name):
    return pod(name, cpu="900m", limits=False, terminationGracePeriodSeconds=0)


def high_pod(name):
    return pod(name, cpu="3000m", limits=False, priority=10)


def quantity(q, cpu):
    """Millicores for cpu, bytes for memory: the few forms the templates use."""
    q = str(q)
    if cpu:
        return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)
    for suffix, mult in (("Ki", 1024), ("Mi", 1024 ** 2), ("Gi", 1024 ** 3)):
        if q.endswith(suffix):
            return int(q[:-2]) * mult
    return int(q)


# ---------------------------------------------------------------- HTTP

class Client:
    """One keep-alive connection, reopened when the server drops it."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def call(self, method, path, body=None, ctype="application/json"):
        for attempt in range(3):
            if self.c is None:
                self.c = apiserver.conn(self.port, timeout=60)
            try:
                self.c.request(method, path, body=body, headers={**HDRS, "Content-Type": ctype})
                r = self.c.getresponse()
                data = r.read()
                if (r.status == 429 or r.status >= 500) and attempt < 2:
                    time.sleep(0.05)
                    continue
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = None
                if attempt == 2:
                    raise
        return r.status, data

    def close(self):
        if self.c is not None:
            self.c.close()


def create_all(port, items, clients):
    """POSTs every (path, body bytes) of `items` over `clients` keep-alive connections as fast
    as they go. Returns (send time per item, end time, [errors])."""
    sent = [None] * len(items)
    errors = []
    lock = threading.Lock()

    def worker(idx):
        c = Client(port)
        try:
            for i in range(idx, len(items), clients):
                path, body = items[i]
                sent[i] = time.perf_counter()
                try:
                    status, data = c.call("POST", path, body)
                except (http.client.HTTPException, OSError) as e:
                    status, data = 0, str(e).encode()
                if status >= 300 or status == 0:
                    with lock:
                        errors.append(f"POST {path}: {status} {data[:200].decode(errors='replace')}")
        finally:
            c.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(min(clients, max(1, len(items))))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sent, time.perf_counter(), errors


def create_curl(port, items, clients, tmp):
    """POSTs every (path, body bytes) of `items` with one `curl --parallel` (C, keep-alive, at
    most `clients` at once): the harness's own CPU per create is a fraction of Python's, which
    on two cores competes with the control plane it measures. Returns (start, end, [errors])."""
    d = tempfile.mkdtemp(dir=tmp)
    cfg = os.path.join(d, "curl.cfg")
    ca = os.path.join(tmp, "cp", "pki", "ca.crt")
    with open(cfg, "w") as f:
        for i, (path, body) in enumerate(items):
            b = os.path.join(d, f"{i}.json")
            with open(b, "wb") as bf:
                bf.write(body)
            f.write(f'url = "https://127.0.0.1:{port}{path}"\ndata-binary = "@{b}"\noutput = "/dev/null"\n'
                    f'header = "Content-Type: application/json"\nheader = "Authorization: Bearer {apiserver.TOKEN}"\n'
                    f'cacert = "{ca}"\nwrite-out = "%{{http_code}}\\n"\nsilent\n')
            if i + 1 < len(items):
                f.write("next\n")
    start = time.perf_counter()
    r = subprocess.run(["curl", "--parallel", "--parallel-max", str(clients), "-K", cfg],
                       capture_output=True, text=True)
    end = time.perf_counter()
    shutil.rmtree(d, ignore_errors=True)
    codes = r.stdout.split()
    errors = [f"POST: {c}" for c in codes if not c.startswith("2")]
    if len(codes) != len(items):
        errors.append(f"curl answered {len(codes)} of {len(items)}: {r.stderr[-300:]}")
    return start, end, errors


def pod_items(pods):
    return [(f"/api/v1/namespaces/{p['metadata']['namespace']}/pods", json.dumps(p).encode()) for p in pods]


# ---------------------------------------------------------------- background threads

class PodWatch:
    """A watch on every pod, read in a thread: when each pod was first seen bound, where the
    live pods are, and what was deleted. Pods marked for deletion on a node go to `victims`."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.bound = {}  # (ns, name) -> perf_counter of the first event showing spec.nodeName
        self.seen = {}  # (ns, name) -> perf_counter of the first event about the pod
        self.bound_order = []  # the keys of `bound` in the order they were bound
        self.live = {}  # (ns, name) -> {node, color, cpu, memory, priority, uid}
        self.deleted = []  # (ns, name, node, time) of DELETED events
        self.nominated = set()
        self.unschedulable = {}  # (ns, name) -> last PodScheduled=False message
        self.victims = queue.Queue()
        self.marked = set()
        self.events = 0
        self.rv = "0"
        self.closed = False
        self.error = None
        self.resp = self._open()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self):
        self.c = apiserver.conn(self.port)
        self.c.request("GET", f"/api/v1/pods?watch=true&resourceVersion={self.rv}&timeoutSeconds=3600", headers=HDRS)
        r = self.c.getresponse()
        if r.status != 200:
            raise SystemExit(f"pod watch: {r.status} {r.read()[:200]}")
        return r

    def _run(self):
        while not self.closed:
            try:
                line = self.resp.readline()
            except Exception as e:  # also what http.client raises when close() races the read
                line, self.error = b"", e
            if not line:
                if self.closed:
                    return
                try:  # the stream ended (timeout): carry on from the last revision seen
                    self.resp = self._open()
                    continue
                except Exception as e:  # the control plane is gone
                    self.error = e
                    return
            now = time.perf_counter()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self._handle(ev, now)

    def _handle(self, ev, now):
        ty, obj = ev.get("type"), ev.get("object") or {}
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        if ty == "ERROR":
            self.error = obj.get("message")
            return
        self.rv = meta.get("resourceVersion", self.rv)
        if ty == "BOOKMARK":
            return
        key = (meta.get("namespace"), meta.get("name"))
        node = spec.get("nodeName") or ""
        with self.lock:
            self.events += 1
            self.seen.setdefault(key, now)
            if ty == "DELETED":
                self.live.pop(key, None)
                self.deleted.append((key[0], key[1], node, now))
                return
            if node and key not in self.bound:
                self.bound[key] = now
                self.bound_order.append(key)
            if key not in self.live:
                cpu = mem = 0
                for c in spec.get("containers") or []:
                    req = (c.get("resources") or {}).get("requests") or {}
                    cpu += quantity(req.get("cpu", "0"), True)
                    mem += quantity(req.get("memory", "0"), False)
                self.live[key] = {"color": (meta.get("labels") or {}).get("color"), "cpu": cpu, "memory": mem,
                                  "priority": spec.get("priority") or 0, "uid": meta.get("uid")}
            self.live[key]["node"] = node
            if status.get("nominatedNodeName"):
                self.nominated.add(key)
            for c in status.get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    self.unschedulable[key] = c.get("message") or c.get("reason") or ""
            if node and meta.get("deletionTimestamp") and key not in self.marked:
                self.marked.add(key)
                self.victims.put((key[0], key[1], meta.get("uid")))

    def wait_bound(self, keys, timeout, stall):
        """Waits until every pod of `keys` is bound, at most `timeout` s and at most `stall` s
        without one more bound: (bound count, timed out?)."""
        with self.lock:
            missing = set(keys) - self.bound.keys()
            seen = len(self.bound_order)
        total = len(set(keys))
        deadline = time.perf_counter() + timeout
        last_t = time.perf_counter()
        while True:
            with self.lock:
                new = self.bound_order[seen:]
                seen += len(new)
            before = len(missing)
            missing.difference_update(new)
            now = time.perf_counter()
            if not missing:
                return total, False
            if len(missing) != before:
                last_t = now
            if now > deadline or now - last_t > stall or (self.error is not None and not self.thread.is_alive()):
                return total - len(missing), True
            time.sleep(0.05)

    def close(self):
        """Ends the stream; the reading thread sees it end and returns."""
        self.closed = True
        try:
            if self.c.sock is not None:
                self.c.sock.shutdown(2)
        except OSError:
            pass
        self.thread.join(timeout=5)
        self.c.close()


class Kubelet:
    """Plays the kubelet of the hollow nodes for pods marked for deletion: deletes them with
    gracePeriodSeconds=0 (uid precondition), as a kubelet does once it stopped their
    containers."""

    def __init__(self, port, watch):
        self.c = Client(port)
        self.watch = watch
        self.finished = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                ns, name, uid = self.watch.victims.get(timeout=0.2)
            except queue.Empty:
                continue
            body = json.dumps({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}).encode()
            try:
                status, _ = self.c.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)
            except (http.client.HTTPException, OSError):
                continue
            if status < 300:
                self.finished += 1

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.c.close()


class LeaseRenewer:
    """Renews every hollow node's Lease every `period` seconds, the renewals spread evenly
    over the period, from `threads` threads (a merge patch of spec.renewTime, as a kubelet's
    lease controller renews it)."""

    def __init__(self, port, names, period, threads=2):
        self.port, self.period = port, period
        self.stop = threading.Event()
        self.renewals = 0
        self.failures = 0
        self.max_gap = 0.0
        self.lock = threading.Lock()
        start = time.perf_counter()
        self.ts = [threading.Thread(target=self._run, args=(names[i::threads], start), daemon=True)
                   for i in range(threads) if names[i::threads]]
        for t in self.ts:
            t.start()

    def _run(self, names, start):
        c = Client(self.port)
        last = {n: start for n in names}
        step = self.period / len(names)
        cycle = start
        try:
            while not self.stop.is_set():
                for i, name in enumerate(names):
                    due = cycle + (i + 1) * step
                    if self.stop.wait(max(0.0, due - time.perf_counter())):
                        return
                    body = json.dumps({"spec": {"renewTime": micro_now()}}).encode()
                    try:
                        status, _ = c.call("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{name}",
                                           body, "application/merge-patch+json")
                    except (http.client.HTTPException, OSError):
                        status = 0
                    now = time.perf_counter()
                    with self.lock:
                        if status < 300 and status != 0:
                            self.renewals += 1
                            self.max_gap = max(self.max_gap, now - last[name])
                            last[name] = now
                        else:
                            self.failures += 1
                cycle += self.period
        finally:
            c.close()

    def close(self):
        self.stop.set()
        for t in self.ts:
            t.join(timeout=5)


# ---------------------------------------------------------------- workloads

def plan(workload, n, m):
    """Node labels, namespaces, init pods, measured pods, and notes, for `workload` on n nodes
    with m measured pods."""
    init_n = min(1000, max(1, n // 5))
    notes = []
    labels = lambda i: {}
    namespaces = []
    if workload == "SchedulingBasic":
        init = [pod(f"init-{i}") for i in range(init_n)]
        measured = [pod(f"pod-{i}") for i in range(m)]
    elif workload == "SchedulingPodAntiAffinity":
        namespaces = ["sched-0", "sched-1"]
        init_n = min(init_n, max(0, n - 1))
        mm = min(m, n - init_n)
        if mm < m:
            notes.append(f"measured pods capped at {mm}: one pod per node, {init_n} init pods on {n} nodes")
        init = [anti_affinity_pod(f"init-{i}", "sched-0") for i in range(init_n)]
        measured = [anti_affinity_pod(f"pod-{i}", "sched-1") for i in range(mm)]
    elif workload == "SchedulingNodeAffinity":
        labels = lambda i: {ZONE: "zone1"}
        init = [node_affinity_pod(f"init-{i}") for i in range(init_n)]
        measured = [node_affinity_pod(f"pod-{i}") for i in range(m)]
    elif workload == "TopologySpreading":
        labels = lambda i: {ZONE: f"moon-{i % 3 + 1}"}
        init = [pod(f"init-{i}") for i in range(init_n)]
        measured = [spread_pod(f"pod-{i}") for i in range(m)]
    elif workload == "PreemptionAsync":
        init = [low_pod(f"low-{i}") for i in range(4 * n)]
        # 400m is left on each node: 4 default pods, fewer where a preemptor landed (3000m + a
        # 900m survivor leave 100m).
        mm = min(m, 2 * n)
        if mm < m:
            notes.append(f"measured pods capped at {mm} (2 per node: 400m free per node, less after a preemption)")
        measured = [pod(f"pod-{i}") for i in range(mm)]
    else:
        raise ValueError(workload)
    return labels, namespaces, init, measured, notes


def wait_for(what, check, timeout):
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not after {timeout} s")
        time.sleep(0.1)


def keys_of(pods):
    return [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods]


def check_placements(workload, watch, node_labels, measured_keys):
    """What the placements say about the workload's constraints: a list of lines."""
    out = []
    with watch.lock:
        live = {k: dict(v) for k, v in watch.live.items()}
    per_node = {}
    for k, v in live.items():
        if v.get("node"):
            per_node.setdefault(v["node"], []).append((k, v))
    over = [nd for nd, ps in per_node.items()
            if sum(v["cpu"] for _, v in ps) > CAPACITY["cpu"] or sum(v["memory"] for _, v in ps) > CAPACITY["memory"]
            or len(ps) > CAPACITY["pods"]]
    out.append(f"over-committed nodes (cpu, memory or pods beyond allocatable): {len(over)}")
    if workload == "SchedulingPodAntiAffinity":
        shared = {nd: ps for nd, ps in per_node.items()
                  if sum(1 for k, v in ps if v["color"] == "green" and k[0] in ("sched-0", "sched-1")) > 1}
        pods_sharing = sum(sum(1 for _, v in ps if v["color"] == "green") for ps in shared.values())
        out.append(f"anti-affinity: {len(shared)} nodes hold more than one color=green pod ({pods_sharing} pods)"
                   + ("  VIOLATED" if shared else "  ok"))
    if workload == "SchedulingNodeAffinity":
        wrong = sum(1 for k in measured_keys if live.get(k, {}).get("node")
                    and node_labels.get(live[k]["node"], {}).get(ZONE) not in ("zone1", "zone2"))
        out.append(f"node affinity: {wrong} measured pods outside zone1/zone2" + ("  VIOLATED" if wrong else "  ok"))
    if workload == "TopologySpreading":
        zones = {f"moon-{z}": 0 for z in (1, 2, 3)}
        for k, v in live.items():
            if v["color"] == "blue" and v.get("node"):
                zones[node_labels[v["node"]][ZONE]] += 1
        skew = max(zones.values()) - min(zones.values())
        out.append("color=blue pods per zone: " + ", ".join(f"{z} {c}" for z, c in zones.items())
                   + f"; skew {skew} (maxSkew 5)" + ("  VIOLATED" if skew > 5 else "  ok"))
    return out


def nodes_health(client):
    status, data = client.call("GET", "/api/v1/nodes")
    if status != 200:
        return f"nodes: LIST failed ({status})"
    items = json.loads(data)["items"]
    not_ready = sum(1 for nd in items if not any(c.get("type") == "Ready" and c.get("status") == "True"
                                                 for c in (nd.get("status") or {}).get("conditions") or []))
    tainted = sum(1 for nd in items if (nd.get("spec") or {}).get("taints"))
    return f"nodes at the end: {len(items) - not_ready} Ready, {not_ready} not Ready, {tainted} tainted"


def run_workload(podlet, workload, args):
    n, m = args.nodes, args.pods
    labels, namespaces, init, measured, notes = plan(workload, n, m)
    res = {"workload": workload, "nodes": n, "measured": len(measured), "bound": 0, "rate": None,
           "timed_out": False, "lines": list(notes)}
    tmp = tempfile.mkdtemp(prefix="podlet-bench-sched-")
    proc = watch = kubelet = renewer = client = None
    try:
        # A /8 has room for 65,536 node /24s (the default /16 only 256): node IPAM gives every
        # hollow node its podCIDR as it would a real one.
        proc, port = apiserver.start_apiserver(podlet, tmp, "cp", ["--cluster-cidr", "10.0.0.0/8",
                                                                   "--controllers", args.controllers])
        client = Client(port)
        watch = PodWatch(port)
        kubelet = Kubelet(port, watch)
        t0 = time.perf_counter()
        for ns in namespaces:
            status, data = client.call("POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": ns}}).encode())
            if status >= 300:
                raise RuntimeError(f"namespace {ns}: {status} {data[:200]}")
        for ns in ["default"] + namespaces:
            wait_for(f"the default service account of {ns}",
                     lambda: client.call("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] == 200, 60)
        names = [f"hollow-{i}" for i in range(n)]
        node_labels = {nm: {HOSTNAME: nm, **labels(i)} for i, nm in enumerate(names)}
        _, _, errs = create_all(port, [("/api/v1/nodes", json.dumps(hollow_node(nm, labels(i))).encode())
                                       for i, nm in enumerate(names)], args.clients)
        if errs:
            raise RuntimeError(f"creating nodes: {len(errs)} errors, e.g. {errs[0]}")
        _, _, errs = create_all(port, [(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases",
                                        json.dumps(lease(nm)).encode()) for nm in names], args.clients)
        if errs:
            raise RuntimeError(f"creating leases: {len(errs)} errors, e.g. {errs[0]}")
        renewer = LeaseRenewer(port, names, args.lease_renew)
        t_nodes = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, _, errs = create_all(port, pod_items(init), args.clients)
        if errs:
            raise RuntimeError(f"creating init pods: {len(errs)} errors, e.g. {errs[0]}")
        got, timed_out = watch.wait_bound(keys_of(init), args.timeout, args.stall)
        t_init = time.perf_counter() - t1
        res["lines"].append(f"setup: {n} nodes + leases {t_nodes:.1f} s; {len(init)} init pods bound after {t_init:.1f} s"
                            f" ({len(init) / t_init if t_init > 0 else 0:.1f} pods/s)")
        if timed_out:
            res["timed_out"] = True
            res["lines"].append(f"setup timed out: {got} of {len(init)} init pods scheduled; nothing measured")
            return res

        churn_stop = threading.Event()
        churn = {"created": []}
        churn_thread = None
        if workload == "PreemptionAsync":
            deleted_before = len(watch.deleted)

            def churner():
                c = Client(port)
                i = 0
                nxt = time.perf_counter()
                try:
                    while not churn_stop.is_set():
                        p = high_pod(f"high-{i}")
                        status, data = c.call("POST", "/api/v1/namespaces/default/pods", json.dumps(p).encode())
                        if status < 300:
                            churn["created"].append(("default", f"high-{i}"))
                        i += 1
                        nxt += 0.2
                        churn_stop.wait(max(0.0, nxt - time.perf_counter()))
                finally:
                    c.close()

            churn_thread = threading.Thread(target=churner, daemon=True)

        items = pod_items(measured)
        keys = keys_of(measured)
        if churn_thread:
            churn_thread.start()
        if args.creator == "curl":
            first, created_at, errs = create_curl(port, items, args.clients, tmp)
        else:
            sent, created_at, errs = create_all(port, items, args.clients)
            first = min(s for s in sent if s is not None)
        if errs:
            res["lines"].append(f"create errors: {len(errs)}, e.g. {errs[0]}")
        create_s = created_at - first
        got, timed_out = watch.wait_bound(keys, args.timeout, args.stall)
        churn_stop.set()
        if churn_thread:
            churn_thread.join()
        with watch.lock:
            binds = {k: watch.bound[k] for k in keys if k in watch.bound}
            seen = {k: watch.seen[k] for k in keys if k in watch.seen}
        # Latency: from the pod's creation seen on the watch to its binding seen there.
        lat = [(binds[k] - seen[k]) * 1000 for k in keys if k in binds and k in seen]
        res["bound"] = got
        res["timed_out"] = timed_out
        if binds:
            span = max(binds.values()) - min(seen.values())
            res["rate"] = got / span if span > 0 else float("inf")
        state = f"timed out: {got} of {len(keys)} scheduled" if timed_out else f"{got} of {len(keys)} scheduled"
        rate = f"{res['rate']:.1f} pods/s" if res["rate"] else "- pods/s"
        res["lines"].append(f"{state}: {rate}" + (f"   latency p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms" if lat else ""))
        create_rate = len(items) / create_s if create_s > 0 else float("inf")
        res["lines"].append(f"measured creates: {len(items)} in {create_s:.2f} s ({create_rate:.0f}/s, {args.clients} clients)"
                            + ("  <- binds kept pace with creates: the apiserver's creates (sharing the CPUs with the"
                               " scheduler) may bound this figure" if res["rate"] and res["rate"] > 0.8 * create_rate else ""))
        if workload == "PreemptionAsync":
            high = list(churn["created"])
            watch.wait_bound(high, args.preempt_wait, args.preempt_wait)
            with watch.lock:
                hb = sum(1 for k in high if k in watch.bound)
                nominated = sum(1 for k in high if k in watch.nominated)
                msgs = [watch.unschedulable[k] for k in high if k not in watch.bound and k in watch.unschedulable]
                victims = sum(1 for ns, nm, _, t in watch.deleted[deleted_before:] if nm.startswith("low-"))
            res["lines"].append(f"high-priority pods (one per 200 ms while measuring): {len(high)} created, {hb} bound,"
                                f" {len(high) - hb} pending after {args.preempt_wait:.0f} s more; {nominated} nominated;"
                                f" {victims} low pods deleted (preempted), {kubelet.finished} finished by the bench's kubelet")
            if msgs:
                res["lines"].append(f"  a pending one says: {msgs[-1]}")
        res["lines"].extend(check_placements(workload, watch, node_labels, keys))
        res["lines"].append(nodes_health(client) + f"; lease renewals {renewer.renewals} (every {args.lease_renew:.0f} s,"
                            f" longest gap {renewer.max_gap:.1f} s, {renewer.failures} failed)")
        return res
    except RuntimeError as e:
        res["timed_out"] = True
        res["lines"].append(f"failed: {e}")
        return res
    finally:
        for x in (renewer, kubelet):
            if x is not None:
                x.close()
        if watch is not None:
            watch.close()
        if client is not None:
            client.close()
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description="podlet's scheduler on hollow nodes, scheduler_perf's workloads")
    ap.add_argument("--podlet", required=True)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=1000, help="measured pods per workload")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--clients", type=int, default=64, help="creates under way at once, one keep-alive connection each")
    ap.add_argument("--controllers", default="*",
                    help="the control plane's --controllers: '*' (default) runs every controller beside the"
                         " scheduler, each watching pods; scheduler_perf runs an apiserver and the scheduler only,"
                         " which 'serviceaccount' mirrors")
    ap.add_argument("--creator", choices=["curl", "python"], default="curl",
                    help="who creates the measured pods: one `curl --parallel` (default; C, light) or Python threads")
    ap.add_argument("--timeout", type=float, default=600, help="seconds any wait for pods to be bound may take")
    ap.add_argument("--stall", type=float, default=30, help="give up a wait after this long without a new bind")
    ap.add_argument("--preempt-wait", type=float, default=10, help="PreemptionAsync: seconds to wait for the pending high-priority pods")
    ap.add_argument("--lease-renew", type=float, default=20, help="seconds between renewals of each node Lease (a kubelet renews every 10 s;"
                    " the node lifecycle controller's grace is 50 s and it looks every 5 s)")
    args = ap.parse_args()
    podlet = os.path.abspath(args.podlet)
    wanted = []
    for w in filter(None, (x.strip() for x in args.workloads.split(","))):
        match = [x for x in WORKLOADS if x.lower() == w.lower()]
        if not match:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
        wanted.append(match[0])
    if args.nodes < 1 or args.pods < 1:
        ap.error("--nodes and --pods must be at least 1")
    print(f"podlet scheduler on {args.nodes} hollow nodes, {args.pods} measured pods per workload ({args.clients} creating"
          f" clients; node Leases renewed every {args.lease_renew:g} s); machine {os.cpu_count()} CPUs")
    results = []
    for w in wanted:
        r = run_workload(podlet, w, args)
        results.append(r)
        print(f"\n== {w}: {r['nodes']} nodes, {r['measured']} measured pods")
        for line in r["lines"]:
            print("  " + line)
        sys.stdout.flush()
    print(f"\n== scheduler_perf anchors (CI floors at 5,000 nodes on large machines; this run: {args.nodes} nodes, {os.cpu_count()} CPUs)")
    print(f"  {'workload':28}{'pods/s':>10}{'anchor':>9}{'ratio':>9}")
    for r in results:
        rate = f"{r['rate']:.1f}" if r["rate"] else "-"
        ratio = f"{r['rate'] / ANCHORS[r['workload']]:.2f}x" if r["rate"] else "-"
        flag = "  (timed out)" if r["timed_out"] else ""
        print(f"  {r['workload']:28}{rate:>10}{ANCHORS[r['workload']]:>9}{ratio:>9}{flag}")
    basic = next((r for r in results if r["workload"] == "SchedulingBasic"), None)
    if basic is not None:
        print(f"scheduled {basic['bound']} pods on {basic['nodes']} nodes: {basic['rate'] or 0:.1f} pods/s")


if __name__ == "__main__":
    main()
