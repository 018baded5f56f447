#!/usr/bin/env python3
"""Cross-node pod networking on the namespace lab (hack/lab.sh): latency (ping RTT, 50 at
20/s) pod -> pod across two nodes, beside node -> node over the same veth links, for host-gw (one subnet) and VXLAN (two subnets behind the lab's router
namespace); TCP throughput the same ways (a Python sender and receiver run in the pods' and the
nodes' network namespaces, entered from the host: this busybox's `nc` ends a piped transfer at
once, and there is no iperf3 here); and route convergence: a Node added through the API -> its
route on node 1.
"""
import argparse, json, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "hack/lab.sh")


def lab(env, *args, check=True, input=None):
    return subprocess.run(["bash", LAB, *args], env=env, check=check, input=input,
                          capture_output=True, text=True)


def wait(what, f, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def kget(env, *args):
    r = lab(env, "kubectl", "get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def pod(env, node, name, script, host=False):
    spec = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "hostNetwork": host, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", script]}]}}
    lab(env, "kubectl", "apply", "-f", "-", input=json.dumps(spec))
    p = wait(f"pod {name}", lambda: (lambda p: p if p and p["status"].get("podIP") and p["status"].get("phase") == "Running" else None)(kget(env, "pod", name)))
    return p["status"]["podIP"]


SERVER = "while true; do nc -l -p 5001 > /dev/null; done"

# Receiver and sender of THROUGHPUT_BYTES over one TCP connection; the receiver prints MB/s.
THROUGHPUT_BYTES = 1 << 30
RECEIVER = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); n = 0; t0 = time.time()
while True:
    k = c.recv_into(buf)
    if not k: break
    n += k
print(n / (time.time() - t0) / 1e6 if n == {THROUGHPUT_BYTES} else -1, flush=True)
"""
SENDER = f"""
import socket, sys
c = socket.create_connection((sys.argv[1], 5201)); b = bytes(1 << 20)
for _ in range({THROUGHPUT_BYTES >> 20}): c.sendall(b)
c.close()
"""


def pid_of_marker(marker):
    """The host PID of a process whose command line holds `marker` (a pod's sleep)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    if not out:
        sys.exit(f"no process runs {marker!r}")
    return out[0]


def throughput(src_pid, dst_pid, dst_ip, runs=3):
    """Median MB/s of 1 GiB sent from src's network namespace to dst's, over TCP."""
    rates = []
    for _ in range(runs):
        rx = subprocess.Popen(["nsenter", "-t", dst_pid, "-n", "python3", "-c", RECEIVER],
                              stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "ready"
        subprocess.run(["nsenter", "-t", src_pid, "-n", "python3", "-c", SENDER, dst_ip], check=True)
        rate = float(rx.stdout.readline())
        rx.wait()
        if rate < 0:
            sys.exit("a throughput run lost bytes")
        rates.append(rate)
    return statistics.median(rates)


def latency(run, ip):
    out = run(f"ping -c 50 -i 0.05 -q {ip}")
    m = re.search(r"= [0-9.]+/([0-9.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def case(name, subnets, results):
    env = dict(os.environ, LAB_DIR=f"/tmp/podlet-bench-overlay-{name}", SUBNETS=subnets)
    lab(env, "down", check=False)
    lab(env, "up", "2")
    try:
        wait("nodes", lambda: kget(env, "node", "n2"))
        # nodeipam gives each Node its podCIDR; n1 routes to n2's.
        cidr = wait("n2's podCIDR", lambda: (kget(env, "node", "n2") or {}).get("spec", {}).get("podCIDR"))
        wait("routes", lambda: cidr in lab(env, "sh", "1", "ip", "route", "show", "proto", "158").stdout)
        sip = pod(env, "n2", "server", SERVER + " & sleep 100002")
        pod(env, "n1", "client", "sleep 100001")
        hip = open(f"{env['LAB_DIR']}/n2.ip").read().strip()

        def in_pod(cmd):
            r = lab(env, "podlet", "1", "exec", "client", "--", "sh", "-c", cmd, check=False)
            return r.stdout + r.stderr

        # Its own process group: the server (nsenter's child) goes with the wrapper.
        srv = subprocess.Popen(["bash", LAB, "sh", "2", "busybox", "sh", "-c", SERVER],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)

        def on_node(cmd):
            r = lab(env, "sh", "1", "busybox", "sh", "-c", cmd, check=False)
            return r.stdout + r.stderr
        try:
            time.sleep(0.5)
            n1, n2 = (open(f"{env['LAB_DIR']}/n{i}.pid").read().strip() for i in (1, 2))
            c, sv = pid_of_marker("sleep 100001"), pid_of_marker("sleep 100002")
            results[name] = {
                "pod_to_pod_rtt_ms": latency(in_pod, sip),
                "node_to_node_rtt_ms": latency(on_node, hip),
                "pod_to_pod_tcp_MBps": throughput(c, sv, sip),
                "node_to_node_tcp_MBps": throughput(n1, n2, hip),
            }
        finally:
            os.killpg(srv.pid, 9)
            srv.wait()
        # Route convergence: a Node created through the API -> its route on n1.
        times = []
        for k in range(5):
            ghost = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"},
                     "spec": {"podCIDR": f"10.244.{100 + k}.0/24", "podCIDRs": [f"10.244.{100 + k}.0/24"]},
                     "status": {"addresses": [{"type": "InternalIP", "address": "10.200.1.99"}]}}
            t0 = time.time()
            lab(env, "kubectl", "create", "-f", "-", input=json.dumps(ghost))
            wait("the ghost route", lambda: f"10.244.{100 + k}.0/24" in lab(env, "sh", "1", "ip", "route", "show", "proto", "158").stdout, 30)
            times.append(time.time() - t0)
            lab(env, "kubectl", "delete", "node", "ghost")
        results[name]["node_added_to_route_s_median"] = statistics.median(times)
    finally:
        lab(env, "down", check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", default=os.path.join(ROOT, "target/debug/podlet"))
    args = ap.parse_args()
    os.environ["PODLET"] = os.path.abspath(args.podlet)
    results = {}
    case("host-gw", "1 1", results)
    case("vxlan", "1 2", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
