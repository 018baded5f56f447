#!/usr/bin/env python3
"""Node death -> replacement pod Ready, on the namespace lab (hack/lab.sh, two nodes, the
control plane's default node-monitor period 5 s and grace period 50 s): a one-replica Deployment
whose pod tolerates `node.kubernetes.io/unreachable` and `not-ready` for 10 s runs on n2; n2's
agent is SIGKILLed; timed until n2 is Unknown, until the old pod is marked for deletion, and
until a replacement is Ready on n1. Expected: grace (50 s) + up to one monitor period (5 s) +
tolerationSeconds (10 s) + a pod start.
"""
import argparse, json, os, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "hack/lab.sh")

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "tolerations": [{"key": f"node.kubernetes.io/{k}", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 10}
                                 for k in ("unreachable", "not-ready")],
                 "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Never",
                                 "command": ["sleep", "100000"]}]}}}}


def lab(env, *args, check=True, input=None):
    return subprocess.run(["bash", LAB, *args], env=env, check=check, input=input,
                          capture_output=True, text=True)


def kget(env, *args):
    r = lab(env, "kubectl", "get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait(what, f, timeout=180, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(step)
    sys.exit(f"timed out waiting for {what}")


def cond(obj, kind):
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return c["status"]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", default=os.path.join(ROOT, "target/debug/podlet"))
    args = ap.parse_args()
    env = dict(os.environ, PODLET=os.path.abspath(args.podlet), LAB_DIR="/tmp/podlet-bench-nodedeath")
    lab(env, "down", check=False)
    lab(env, "up", "2")
    try:
        def nodes_ready():
            items = (kget(env, "nodes") or {}).get("items", [])
            return len(items) == 2 and all(cond(n, "Ready") == "True" for n in items)
        wait("both nodes Ready", nodes_ready)
        # The pod must start on n2: n1 cordoned while it is placed.
        lab(env, "kubectl", "cordon", "n1")
        lab(env, "kubectl", "apply", "-f", "-", input=json.dumps(DEPLOYMENT))

        def ready_pods():
            pods = (kget(env, "pods", "-l", "app=web") or {"items": []})["items"]
            return [p for p in pods if cond(p, "Ready") == "True"
                    and not p["metadata"].get("deletionTimestamp")]
        first = wait("the pod on n2", ready_pods)[0]
        assert first["spec"]["nodeName"] == "n2", first["spec"]["nodeName"]
        lab(env, "kubectl", "uncordon", "n1")
        agent = open(f"{env['LAB_DIR']}/n2.agent.pid").read().strip()
        t0 = time.time()
        os.kill(int(agent), 9)
        marks = {}
        while "replacement_ready_s" not in marks and time.time() - t0 < 240:
            now = time.time() - t0
            n2 = kget(env, "node", "n2") or {}
            if "node_unknown_s" not in marks and cond(n2, "Ready") == "Unknown":
                marks["node_unknown_s"] = now
            old = kget(env, "pod", first["metadata"]["name"])
            if "old_pod_deleted_s" not in marks and (old is None or old["metadata"].get("deletionTimestamp")):
                marks["old_pod_deleted_s"] = now
            if any(p["spec"]["nodeName"] == "n1" for p in ready_pods()):
                marks["replacement_ready_s"] = now
            time.sleep(0.2)
        print(json.dumps({k: round(v, 1) for k, v in marks.items()}, indent=2))
        if "replacement_ready_s" not in marks:
            sys.exit("no replacement became Ready within 240 s")
    finally:
        lab(env, "down", check=False)


if __name__ == "__main__":
    main()
