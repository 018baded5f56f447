#!/usr/bin/env python3
"""Cluster DNS throughput and latency: dnsperf (Debian's) against podlet's in-agent server on
kube-dns' address and against dnsmasq serving the same names, side by side in one run, from
a node of the namespace lab (hack/lab.sh, one node).

- cluster names: A queries for N Services (`svc-<i>.default.svc.cluster.local`), which
  dnsmasq holds as host records (authoritative for cluster.local, as podlet is);
- forwarded names: A queries for 1,000 names under bench.test, which both forward to the
  same upstream (a second dnsmasq in the lab's switch namespace, 10.200.1.1) and cache.

Each server gets the same dnsperf run (20 clients, 200 outstanding, fixed duration), twice,
alternating; QPS is dnsperf's, p99 from its per-query latencies (-v). Anchor: CoreDNS'
published 33,669 QPS for internal names on 2 vCPUs.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "hack/lab.sh")
DNSMASQ_ADDR = "127.0.0.1"
UPSTREAM = "10.200.1.1"


def lab(env, *args, check=True, input=None):
    return subprocess.run(["bash", LAB, *args], env=env, check=check, input=input,
                          capture_output=True, text=True)


def pid(env, name):
    with open(os.path.join(env["LAB_DIR"], f"{name}.pid")) as f:
        return f.read().strip()


def in_ns(env, name, *cmd, **kw):
    return subprocess.Popen(["nsenter", "-t", pid(env, name), "-n", "--", *cmd], **kw)


def run_in(env, name, *cmd):
    return subprocess.run(["nsenter", "-t", pid(env, name), "-n", "--", *cmd],
                          capture_output=True, text=True)


def services(env, n):
    items = [{"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": f"svc-{i}", "namespace": "default"},
              "spec": {"ports": [{"port": 80}]}} for i in range(n)]
    for start in range(0, n, 500):
        lab(env, "kubectl", "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items[start:start + 500]}))
    end = time.time() + 120
    while time.time() < end:
        r = lab(env, "kubectl", "get", "svc", "-n", "default", "-o", "json", check=False)
        ips = {s["metadata"]["name"]: s["spec"].get("clusterIP")
               for s in json.loads(r.stdout)["items"]} if r.returncode == 0 else {}
        if all(ips.get(f"svc-{i}") for i in range(n)):
            return ips
        time.sleep(0.5)
    sys.exit("services not created")


ASK = """
import socket, struct, sys
q = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0)
for l in sys.argv[2].split("."):
    q += bytes([len(l)]) + l.encode()
q += b"\\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(q, (sys.argv[1], 53))
a = s.recv(4096)
print(socket.inet_ntoa(a[-4:]) if struct.unpack(">H", a[6:8])[0] else "none")
"""


def answers(env, server, name):
    """The last A record of the answer to `name` from `server` (from node 1's namespace)."""
    return run_in(env, "n1", "python3", "-c", ASK, server, name).stdout.strip()


def dnsperf(env, server, datafile, seconds):
    r = run_in(env, "n1", "dnsperf", "-s", server, "-d", datafile, "-l", str(seconds),
               "-c", "20", "-q", "200", "-v")
    qps = re.search(r"Queries per second:\s+([\d.]+)", r.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", r.stdout)
    lat = sorted(float(l.split()[-1]) for l in r.stdout.splitlines()
                 if l.startswith("> ") and l.split()[1] == "NOERROR")
    if not qps or not lat:
        sys.exit(f"dnsperf against {server} gave nothing:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return float(qps.group(1)), lat[int(len(lat) * 0.99)] * 1000, int(lost.group(1)) if lost else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", default=os.path.join(ROOT, "target/release/podlet"))
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            subprocess.run(["apt-get", "install", "-y", "-qq", "dnsperf", "dnsmasq-base"], check=True)
    env = dict(os.environ, LAB_DIR="/tmp/podlet-bench-dns", PODLET=os.path.abspath(a.podlet))
    lab(env, "down", check=False)
    procs = []
    tmp = tempfile.mkdtemp(prefix="podlet-bench-dns-")
    try:
        lab(env, "up", "1")
        ips = services(env, a.services)
        cluster = os.path.join(tmp, "cluster.txt")
        with open(cluster, "w") as f:
            f.writelines(f"svc-{i}.default.svc.cluster.local A\n" for i in range(a.services))
        forwarded = os.path.join(tmp, "forwarded.txt")
        with open(forwarded, "w") as f:
            f.writelines(f"name-{i}.bench.test A\n" for i in range(1000))
        hosts = os.path.join(tmp, "hosts")
        with open(hosts, "w") as f:
            f.writelines(f"{ip} {name}.default.svc.cluster.local\n" for name, ip in ips.items())
        # The upstream both forward to: bench.test names, TTL 60.
        procs.append(in_ns(env, "switch", "dnsmasq", "--keep-in-foreground", "--no-resolv",
                           "--no-hosts", "--bind-interfaces", f"--listen-address={UPSTREAM}",
                           "--address=/bench.test/192.0.2.1", "--local-ttl=60", "--user=root",
                           stderr=subprocess.DEVNULL))
        # The peer: same cluster names (authoritative, TTL 5 as podlet's), same upstream, a cache.
        procs.append(in_ns(env, "n1", "dnsmasq", "--keep-in-foreground", "--no-resolv",
                           "--no-hosts", f"--addn-hosts={hosts}", "--local=/cluster.local/",
                           "--bind-interfaces", f"--listen-address={DNSMASQ_ADDR}",
                           f"--server={UPSTREAM}", "--cache-size=10000", "--local-ttl=5",
                           "--dns-forward-max=1000", "--user=root", stderr=subprocess.DEVNULL))
        # Both answer before anything is measured (podlet once its watch has every Service).
        last = f"svc-{a.services - 1}.default.svc.cluster.local"
        for server in ("10.96.0.10", DNSMASQ_ADDR):
            end = time.time() + 60
            while time.time() < end:
                if answers(env, server, last) == ips[f"svc-{a.services - 1}"]:
                    break
                time.sleep(0.5)
            else:
                sys.exit(f"{server} does not answer {last}")
        results = {}
        for kind, data in (("cluster names", cluster), ("forwarded names", forwarded)):
            for _ in range(a.rounds):
                for name, server in (("podlet", "10.96.0.10"), ("dnsmasq", DNSMASQ_ADDR)):
                    results.setdefault((kind, name), []).append(dnsperf(env, server, data, a.seconds))
        print(f"cluster DNS, {a.services} services, dnsperf 20 clients / 200 outstanding, "
              f"{a.seconds} s x {a.rounds} rounds (2 cores, dnsperf on the same machine)")
        print(f"{'':16} {'podlet QPS':>11} {'p99 ms':>7} {'dnsmasq QPS':>12} {'p99 ms':>7} {'ratio':>6}")
        for kind in ("cluster names", "forwarded names"):
            p, d = results[(kind, "podlet")], results[(kind, "dnsmasq")]
            pq, dq = statistics.median(r[0] for r in p), statistics.median(r[0] for r in d)
            p99p, p99d = statistics.median(r[1] for r in p), statistics.median(r[1] for r in d)
            print(f"{kind:16} {pq:11.0f} {p99p:7.2f} {dq:12.0f} {p99d:7.2f} {pq / dq:6.2f}")
        print("anchor: CoreDNS 33,669 QPS for internal names on 2 vCPUs (its published figure)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        lab(env, "down", check=False)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
