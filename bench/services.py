#!/usr/bin/env python3
"""Service proxy programming: podlet's agent (nftables over netlink, one batch) against what
kube-proxy runs for the same services, side by side in one run, at 100, 1,000 and 10,000
ClusterIP services of two endpoints each, on node 2 of the namespace lab (hack/lab.sh, two
nodes: node 1 holds the control plane, node 2 only proxies).

- full sync: podlet's first sync after an agent restart (its own
  `kubeproxy_sync_proxy_rules_duration_seconds`, which times the netlink batch) against
  kube-proxy's iptables mode (`iptables-restore` of its KUBE-SERVICES/KUBE-SVC/KUBE-SEP
  layout, Debian's iptables-nft) and nftables mode (`nft -f` of its `kube-proxy` table), each
  into a fresh network namespace;
- one endpoint change: podlet's incremental sync (the histogram's mean over the changes)
  against kube-proxy's partial `iptables-restore --noflush` (KUBE-SERVICES rewritten, the
  service's chains replaced) and its `nft -f` transaction, each on top of the full rule set;
- end to end: from the PATCH of an EndpointSlice sent to the apiserver to the new endpoint's
  chain in node 2's kernel (nftables' change notifications there), p50/p99;
- first packet: TCP connects (2,000) to the first and the last service's ClusterIP through
  podlet's rules (read back from node 2's kernel) and through kube-proxy's iptables rules
  (KUBE-SERVICES is a list: the last service is its worst case), each loaded into a fresh
  namespace whose veth holds the endpoints' addresses.

Services have no selector; their slices are written directly (no pods: no packet is sent).
"""
import argparse, base64, json, os, queue, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "hack/lab.sh")
CLUSTER_CIDR = "10.244.0.0/16"
SYNC = "kubeproxy_sync_proxy_rules_duration_seconds"


def lab(env, *args, check=True, input=None):
    r = subprocess.run(["bash", LAB, *args], env=env, input=input, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"hack/lab.sh {' '.join(args[:3])}: {r.stderr[-2000:]}")
    return r


def pid(env, name):
    with open(os.path.join(env["LAB_DIR"], f"{name}.pid")) as f:
        return f.read().strip()


def in_n2(env, *cmd, **kw):
    return subprocess.run(["nsenter", "-t", pid(env, "n2"), "-n", "--", *cmd],
                          capture_output=True, text=True, **kw)


def hash8(s):
    """The agent's chain-name hash (agent/src/proxy/rules.rs): FNV-1a 64, base32."""
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    a = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "".join(a[(h >> (i * 5)) & 31] for i in range(8))


def ep_ip(i, k):
    """Endpoint k of service i (addresses nobody holds: only rules are made)."""
    n = i * 4 + k
    return f"10.250.{n // 250}.{n % 250 + 1}"


def objects(lo, hi):
    for i in range(lo, hi):
        yield {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": f"svc-{i}", "namespace": "default"},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
        yield slice_of(i, [ep_ip(i, 0), ep_ip(i, 1)])


def slice_of(i, ips):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def create(env, lo, hi):
    items = list(objects(lo, hi))
    for start in range(0, len(items), 1000):
        lab(env, "kubectl", "create", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": items[start:start + 1000]}))


def cluster_ips(env, n):
    out = lab(env, "kubectl", "get", "services", "-o",
              "jsonpath={range .items[*]}{.metadata.name} {.spec.clusterIP}{\"\\n\"}{end}").stdout
    ips = dict(l.split() for l in out.splitlines() if l.startswith("svc-"))
    return [ips[f"svc-{i}"] for i in range(n)]


def programmed(env):
    r = in_n2(env, "nft", "list", "map", "ip", "podlet-proxy", "service-ips")
    return r.stdout.count("goto service-")


def wait_programmed(env, n, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if programmed(env) >= n:
            return
        time.sleep(0.5)
    sys.exit(f"node 2 did not program {n} services in {timeout} s")


def metric(env, name):
    out = lab(env, "kubectl", "get", "--raw", "/api/v1/nodes/n2/proxy/metrics", check=False).stdout
    vals = {}
    for l in out.splitlines():
        for suffix in ("_sum", "_count"):
            if l.startswith(name + suffix + " "):
                vals[suffix] = float(l.split()[1])
    return vals.get("_sum"), vals.get("_count")


def podlet_full(env, n):
    """The first sync after a restart: the whole table, in one batch."""
    lab(env, "restart", "2")
    end = time.time() + 300
    while time.time() < end:
        s, c = metric(env, SYNC)
        if c:
            if c != 1:
                sys.exit(f"{c} syncs seen before the first could be read")
            wait_programmed(env, n)
            return s
        time.sleep(0.2)
    sys.exit("node 2's agent did not sync after its restart")


# kube-proxy's iptables layout (pkg/proxy/iptables/proxier.go), one port per service.
def sep_chain(i, e):
    return f"KUBE-SEP-{hash8(f'svc{i}/{e}')}{hash8(e)}"


def ipt_service(i, ip, eps):
    svc = f"KUBE-SVC-{hash8(f'svc{i}')}{hash8(str(i))}"
    c = f'-m comment --comment "default/svc-{i}:http'
    chains = [svc]
    rules = [f"-A {svc} ! -s {CLUSTER_CIDR} -d {ip}/32 -p tcp {c} cluster IP\" "
             f"-m tcp --dport 80 -j KUBE-MARK-MASQ"]
    for k, e in enumerate(eps):
        sep = sep_chain(i, e)
        chains.append(sep)
        left = len(eps) - k
        stat = f"-m statistic --mode random --probability {1 / left:.11f} " if left > 1 else ""
        rules.append(f'-A {svc} {c} -> {e}:8080" {stat}-j {sep}')
        rules.append(f'-A {sep} -s {e}/32 {c}" -j KUBE-MARK-MASQ')
        rules.append(f'-A {sep} -p tcp {c}" -m tcp -j DNAT --to-destination {e}:8080')
    top = f'-A KUBE-SERVICES {c} cluster IP" -m tcp -p tcp -d {ip}/32 --dport 80 -j {svc}'
    return chains, rules, top


def ipt_ruleset(ips, eps_of, only=None, stale=()):
    """The whole nat table, or (`only`: kube-proxy's partial sync) the top-level chains
    rewritten, the changed services' chains replaced and the `stale` ones deleted."""
    chains, rules, tops = [], [], []
    for i, ip in enumerate(ips):
        c, r, t = ipt_service(i, ip, eps_of(i))
        tops.append(t)
        if only is None or i in only:
            chains += c
            rules += r
    nat = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]",
           ":KUBE-MARK-MASQ - [0:0]", ":KUBE-NODEPORTS - [0:0]"]
    nat += [f":{c} - [0:0]" for c in [*chains, *stale]]
    if only is None:
        nat += ["-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES",
                "-A POSTROUTING -j KUBE-POSTROUTING"]
    nat += ["-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    nat += tops + rules
    nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    nat += [f"-X {c}" for c in stale]
    return "\n".join(nat + ["COMMIT", ""])


# kube-proxy's nftables layout (pkg/proxy/nftables/proxier.go), table ip kube-proxy.
NFT_BASE = """add table ip kube-proxy
flush table ip kube-proxy
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade meta mark set meta mark | 0x4000
add chain ip kube-proxy masquerading
add rule ip kube-proxy masquerading meta mark & 0x4000 == 0 return
add rule ip kube-proxy masquerading meta mark set meta mark ^ 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add chain ip kube-proxy services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }
add rule ip kube-proxy nat-prerouting jump services
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add rule ip kube-proxy nat-output jump services
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }
add rule ip kube-proxy nat-postrouting jump masquerading
"""


def nft_names(i, e=None):
    port = f"default/svc-{i}/tcp/http"
    if e is None:
        return f"service-{hash8(port)}-{port}"
    tail = f"{port}__{e}/8080"
    return f"endpoint-{hash8(tail)}-{tail}"


def nft_service(i, ip, eps, new_eps=None, stale=()):
    """A service's chains: all of them, or (a change) its service chain rewritten, the
    chains of `new_eps` made and the `stale` ones deleted, as kube-proxy's transaction."""
    t, svc, out = "ip kube-proxy", nft_names(i), []
    for e in eps if new_eps is None else new_eps:
        ep = nft_names(i, e)
        out += [f"add chain {t} {ep}", f"add rule {t} {ep} ip saddr {e} jump mark-for-masquerade",
                f"add rule {t} {ep} meta l4proto tcp dnat to {e}:8080"]
    out.append(f"add chain {t} {svc}")
    if new_eps is not None:
        out.append(f"flush chain {t} {svc}")
    vmap = " , ".join(f"{k} : goto {nft_names(i, e)}" for k, e in enumerate(eps))
    out += [f"add rule {t} {svc} ip daddr {ip} tcp dport 80 ip saddr != {CLUSTER_CIDR} "
            f"jump mark-for-masquerade",
            f"add rule {t} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}"]
    if new_eps is None:
        out.append(f"add element {t} service-ips {{ {ip} . tcp . 80 : goto {svc} }}")
    for e in stale:
        out += [f"flush chain {t} {nft_names(i, e)}", f"delete chain {t} {nft_names(i, e)}"]
    return out


def nft_ruleset(ips, eps_of):
    out = [NFT_BASE]
    for i, ip in enumerate(ips):
        out += nft_service(i, ip, eps_of(i))
    return "\n".join(out) + "\n"


def timed(cmd, text, netns):
    """Seconds `cmd` takes to read `text` in network namespace `netns` (a holder's pid)."""
    with tempfile.NamedTemporaryFile("w", suffix=".rules") as f:
        f.write(text)
        f.flush()
        t = time.perf_counter()
        r = subprocess.run(["nsenter", "-t", netns, "-n", "--", *cmd, f.name],
                           capture_output=True, text=True)
        took = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"{' '.join(cmd)}: {r.stderr[-3000:]}")
    return took


class Netns:
    """A scratch network namespace held by a sleeping process (ours, killed by pid)."""

    def __enter__(self):
        self.p = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        own = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{self.p.pid}/ns/net") == own:
            time.sleep(0.01)
        return str(self.p.pid)

    def __exit__(self, *a):
        self.p.kill()
        self.p.wait()


def changed_ep(i, k):
    """The second endpoint of service i after change k (alternating between two addresses)."""
    return ep_ip(i, 2 + k % 2)


def peers(ips, changes):
    """kube-proxy's full and per-change programming, median seconds: {(mode, kind): s}."""
    res = {}
    for _ in range(3):
        for mode in ("iptables", "nftables"):
            cur = {}
            eps_of = lambda j: cur.get(j, [ep_ip(j, 0), ep_ip(j, 1)])
            with Netns() as ns:
                text = ipt_ruleset(ips, eps_of) if mode == "iptables" else nft_ruleset(ips, eps_of)
                tool = ["iptables-restore"] if mode == "iptables" else ["nft", "-f"]
                res.setdefault((mode, "full"), []).append(timed(tool, text, ns))
                for k, i in enumerate(changes):
                    old = eps_of(i)[1]
                    cur[i] = [ep_ip(i, 0), changed_ep(i, k)]
                    if mode == "iptables":
                        text = ipt_ruleset(ips, eps_of, only={i}, stale=[sep_chain(i, old)])
                        tool = ["iptables-restore", "--noflush"]
                    else:
                        lines = nft_service(i, ips[i], cur[i], new_eps=[cur[i][1]], stale=[old])
                        text = "\n".join(lines) + "\n"
                    res.setdefault((mode, "change"), []).append(timed(tool, text, ns))
    return {k: statistics.median(v) for k, v in res.items()}


CONNECT = """
import socket, sys, time, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
srv.listen(1024)
def accept():
    while True:
        c, _ = srv.accept()
        c.close()
threading.Thread(target=accept, daemon=True).start()
took = []
for _ in range(int(sys.argv[2])):
    c = socket.socket()
    c.settimeout(2)
    t = time.perf_counter()
    try:
        c.connect((sys.argv[1], 80))
    except OSError as e:
        sys.exit(f"connect to {sys.argv[1]}:80 after {len(took)} connects: {e}")
    took.append(time.perf_counter() - t)
    c.close()
took.sort()
print(took[len(took) // 2], took[int(len(took) * 0.99)])
"""


def connect_latency(tool, text, target, eps, count=2000):
    """p50 and p99 seconds of a TCP connect to ClusterIP `target` (DNATed by the rules
    `tool` loads from `text`) from a fresh namespace whose veth holds the endpoints."""
    with Netns() as ns:
        sh = lambda *c: subprocess.run(["nsenter", "-t", ns, "-n", "--", *c], check=True,
                                       capture_output=True, text=True)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        sh("ip", "link", "set", "d1", "up")
        for e in eps:
            sh("ip", "addr", "add", f"{e}/32", "dev", "d0")
        sh("ip", "link", "set", "d0", "up")
        sh("ip", "route", "add", "10.96.0.0/12", "dev", "d0")
        timed(tool, text, ns)
        r = subprocess.run(["nsenter", "-t", ns, "-n", "--", "python3", "-c", CONNECT, target,
                            str(count)], capture_output=True, text=True, timeout=120)
        if r.returncode:
            sys.exit(f"through the rules of {tool[0]}: {r.stderr[-1000:]}")
        out = r.stdout.split()
        return float(out[0]), float(out[1])


def first_packet(env, ips):
    """Connect latency to the last service (the end of iptables' KUBE-SERVICES) and the first,
    through podlet's rules (read back from node 2's kernel) and kube-proxy's iptables ones."""
    # The endpoint maps carry no type for nft to print (the kernel needs none): given one
    # that reads back as the same 32-bit key.
    ours = in_n2(env, "nft", "list", "table", "ip", "podlet-proxy").stdout.replace(
        "type 0 : verdict", "typeof numgen random mod 2 : verdict")
    base = lambda i: [ep_ip(i, 0), ep_ip(i, 1)]
    res = {}
    for i in (0, len(ips) - 1):
        res[("podlet", i)] = connect_latency(["nft", "-f"], ours, ips[i], base(i))
        res[("iptables", i)] = connect_latency(["iptables-restore"], ipt_ruleset(ips, base),
                                               ips[i], base(i))
    return res


# Listens to nftables' change notifications in node 2 (NFNLGRP_NFTABLES) and prints the
# wall-clock time and name of every chain made. `nft monitor` would do, but it first reads the
# whole ruleset (minutes at 10,000 services); this only listens.
LISTENER = r"""
import socket, struct, sys, time
NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
NFT_MSG_NEWCHAIN, NFTA_CHAIN_NAME = 3, 3
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: bursts of a full sync
s.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
print("ready", flush=True)
while True:
    data = s.recv(1 << 20)
    t = time.time()
    off = 0
    while off + 16 <= len(data):
        ln, ty = struct.unpack_from("=IH", data, off)
        if ln < 16:
            break
        if ty == (10 << 8) | NFT_MSG_NEWCHAIN:
            a = off + 20
            while a + 4 <= off + ln:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7fff == NFTA_CHAIN_NAME:
                    name = data[a + 4:a + alen].split(b"\0")[0].decode()
                    print(f"{t} {name}", flush=True)
                a += (alen + 3) & ~3
        off += (ln + 3) & ~3
"""


class Monitor:
    """Node 2's nftables notifications: when each new endpoint chain appears (wall clock)."""

    def __init__(self, env):
        self.p = subprocess.Popen(["nsenter", "-t", pid(env, "n2"), "-n", "--", "python3", "-c",
                                   LISTENER], stdout=subprocess.PIPE, text=True)
        if self.p.stdout.readline().strip() != "ready":
            sys.exit("the nftables listener in node 2 did not start")
        self.q = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.p.stdout:
            t, name = line.split(" ", 1)
            self.q.put((float(t), name))

    def wait_for(self, needle, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            try:
                t, name = self.q.get(timeout=1)
            except queue.Empty:
                continue
            if needle in name:
                return t
        sys.exit(f"no chain {needle} in node 2's kernel after {timeout} s")

    def close(self):
        self.p.kill()
        self.p.wait()


PATCHER = """
import base64, http.client, json, os, ssl, sys, tempfile, time
cfg = json.load(open(sys.argv[1]))
user, cluster = cfg["users"][0]["user"], cfg["clusters"][0]["cluster"]
d = tempfile.mkdtemp()
for k, f in (("client-certificate-data", "crt"), ("client-key-data", "key"),):
    open(os.path.join(d, f), "wb").write(base64.b64decode(user[k]))
ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
ctx.load_cert_chain(os.path.join(d, "crt"), os.path.join(d, "key"))
host = cluster["server"].split("//")[1]
c = http.client.HTTPSConnection(host.split(":")[0], int(host.split(":")[1]), context=ctx)
for line in sys.stdin:
    name, body = line.split(" ", 1)
    t = time.time()
    c.request("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}",
              body, {"Content-Type": "application/merge-patch+json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"PATCH {name}: {r.status}")
    print(t, flush=True)
"""


def end_to_end(env, changes):
    """Seconds from each PATCH sent to its new endpoint's chain in node 2's kernel."""
    kubeconfig = os.path.join(env["LAB_DIR"], "admin.kubeconfig")
    cfg = subprocess.run(["nsenter", "-t", pid(env, "n1"), "-n", "--", "python3", "-c",
                          "import sys,json,yaml;print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                          kubeconfig], capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(cfg)
        f.flush()
        p = subprocess.Popen(["nsenter", "-t", pid(env, "n1"), "-n", "--", "python3", "-c", PATCHER,
                              f.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        mon = Monitor(env)
        lat = []
        try:
            for k, i in enumerate(changes):
                new = changed_ep(i, k)
                body = json.dumps({"endpoints": slice_of(i, [ep_ip(i, 0), new])["endpoints"]})
                p.stdin.write(f"svc-{i}-1 {body}\n")
                p.stdin.flush()
                sent = float(p.stdout.readline())
                got = mon.wait_for(f"__{new}/8080")
                lat.append(got - sent)
                time.sleep(0.1)
        finally:
            mon.close()
            p.stdin.close()
            p.wait()
    return lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", default=os.path.join(ROOT, "target/release/podlet"))
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--changes", type=int, default=20)
    a = ap.parse_args()
    env = dict(os.environ, LAB_DIR="/tmp/podlet-bench-services", PODLET=os.path.abspath(a.podlet))
    lab(env, "down", check=False)
    print("service proxy programming, ClusterIP services of 2 endpoints (2 cores; medians; "
          "kube-proxy's rule sets written by its tools into fresh namespaces)")
    print(f"{'services':>8} | {'full sync: podlet':>17} {'iptables':>9} {'nft -f':>8} {'ratio':>6} |"
          f" {'1 change: podlet':>16} {'iptables':>9} {'nft -f':>8} {'ratio':>6} |"
          f" {'PATCH→kernel p50':>16} {'p99':>7}", flush=True)
    try:
        lab(env, "up", "2")
        have = 0
        for n in sorted(int(s) for s in a.sizes.split(",")):
            t = time.time()
            create(env, have, n)
            have = n
            wait_programmed(env, n)
            print(f"  ({n} services created and programmed in {time.time() - t:.0f} s)",
                  file=sys.stderr, flush=True)
            ips = cluster_ips(env, n)
            full = statistics.median(podlet_full(env, n) for _ in range(3))
            # Before any change: every service on its first two endpoints.
            fp = first_packet(env, ips)
            changes = [(n * k) // a.changes for k in range(a.changes)]
            s0, c0 = metric(env, SYNC)
            lat = sorted(end_to_end(env, changes))
            s1, c1 = metric(env, SYNC)
            inc = (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
            p = peers(ips, changes)
            row(n, full, inc, lat, p)
            us = lambda who, i, k: f"{fp[(who, i)][k] * 1e6:.1f}"
            print(f"{'':8}   TCP connect to the first / last service, p50 (p99) µs: podlet "
                  f"{us('podlet', 0, 0)} ({us('podlet', 0, 1)}) / {us('podlet', n - 1, 0)} "
                  f"({us('podlet', n - 1, 1)}), kube-proxy's iptables {us('iptables', 0, 0)} "
                  f"({us('iptables', 0, 1)}) / {us('iptables', n - 1, 0)} "
                  f"({us('iptables', n - 1, 1)})", flush=True)
            # The slices as they were, for the next size's first sync.
            for i in changes:
                lab(env, "kubectl", "apply", "-f", "-", input=json.dumps(
                    slice_of(i, [ep_ip(i, 0), ep_ip(i, 1)])))
    finally:
        lab(env, "down", check=False)
    print("ratio: the faster of kube-proxy's two modes over podlet (higher: podlet faster)")


def row(n, full, inc, lat, p):
    best_full = min(p[("iptables", "full")], p[("nftables", "full")])
    best_inc = min(p[("iptables", "change")], p[("nftables", "change")])
    nan = float("nan")
    p50, p99 = (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]) if lat else (nan, nan)
    print(f"{n:8} | {full * 1000:14.1f} ms {p[('iptables', 'full')] * 1000:6.0f} ms "
          f"{p[('nftables', 'full')] * 1000:5.0f} ms {best_full / full:6.1f} |"
          f" {inc * 1000:13.2f} ms {p[('iptables', 'change')] * 1000:6.0f} ms "
          f"{p[('nftables', 'change')] * 1000:5.0f} ms {best_inc / inc:6.1f} |"
          f" {p50 * 1000:13.1f} ms {p99 * 1000:4.0f} ms", flush=True)


if __name__ == "__main__":
    main()
