#!/usr/bin/env python3
"""Cross-node pod networking on the namespace lab (hack/lab.sh): latency (ping RTT, 50 at
20/s) pod -> pod across two nodes, beside node -> node over the same veth links, for host-gw (one subnet) and VXLAN (two subnets behind the lab's router
namespace); and route convergence: a Node added through the API -> its route on node 1.
Throughput is not measured yet: this busybox's `nc` ends a piped transfer at once (512 MiB
"sent" in 12 ms) and there is no iperf3 here.
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
        for i in (1, 2):
            n = kget(env, "node", f"n{i}")
            if not n["spec"].get("podCIDR"):
                c = f"10.244.{i}.0/24"
                lab(env, "kubectl", "patch", "node", f"n{i}", "--type", "merge", "-p",
                    json.dumps({"spec": {"podCIDR": c, "podCIDRs": [c]}}))
        wait("routes", lambda: "10.244.2.0/24" in lab(env, "sh", "1", "ip", "route", "show", "proto", "158").stdout)
        sip = pod(env, "n2", "server", SERVER)
        pod(env, "n1", "client", "sleep 100000")
        hip = open(f"{env['LAB_DIR']}/n2.ip").read().strip()

        def in_pod(cmd):
            r = lab(env, "podlet", "1", "exec", "client", "--", "sh", "-c", cmd, check=False)
            return r.stdout + r.stderr

        srv = subprocess.Popen(["bash", LAB, "sh", "2", "busybox", "sh", "-c", SERVER],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def on_node(cmd):
            r = lab(env, "sh", "1", "busybox", "sh", "-c", cmd, check=False)
            return r.stdout + r.stderr
        try:
            time.sleep(0.5)
            results[name] = {
                "pod_to_pod_rtt_ms": latency(in_pod, sip),
                "node_to_node_rtt_ms": latency(on_node, hip),
            }
        finally:
            srv.kill()
            srv.wait()
        # Route convergence: a Node created through the API -> its route on n1.
        times = []
        for k in range(5):
            ghost = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"},
                     "spec": {"podCIDR": f"10.244.{100 + k}.0/24", "podCIDRs": [f"10.244.{100 + k}.0/24"]},
                     "status": {"addresses": [{"type": "InternalIP", "address": "10.100.1.99"}]}}
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
