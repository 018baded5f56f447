#!/usr/bin/env python3
"""podlet benchmarks, each against the reference in the same run.

1. Container create+start+delete of /bin/true from one OCI bundle: `podlet oci run` (libcontainer)
   vs `crun run` vs `runc run`. Every runtime runs under the same wrapper, because crun refuses
   this machine's hybrid cgroup layout unless the empty cgroup2 mount is unmounted first:
   `unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec RUNTIME ...'`.
2. Static pod start latency: manifest written -> every container running (as the node API
   reports it), one pod at a time, over N pods, with the agent in its own network and mount
   namespaces.
3. Memory per pod: RSS and PSS of the shim and the pause process while N pods run.
"""
import argparse, contextlib, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CG = "podlet-bench"


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def busybox_rootfs(work):
    archive = os.path.join(work, "bb.tar")
    subprocess.run(["bash", os.path.join(ROOT, "hack/busybox-image.sh"), archive], check=True, stdout=subprocess.DEVNULL)
    layout = os.path.join(work, "layout")
    os.makedirs(layout)
    subprocess.run(["tar", "-xf", archive, "-C", layout], check=True)
    index = json.load(open(os.path.join(layout, "index.json")))
    blob = lambda d: os.path.join(layout, "blobs/sha256", d.split(":")[1])
    manifest = json.load(open(blob(index["manifests"][0]["digest"])))
    rootfs = os.path.join(work, "bundle/rootfs")
    os.makedirs(rootfs)
    subprocess.run(["tar", "-xzf", blob(manifest["layers"][0]["digest"]), "-C", rootfs], check=True)
    return os.path.dirname(rootfs)


def container_bench(podlet, runs, work):
    bundle = busybox_rootfs(work)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.load(open(os.path.join(bundle, "config.json")))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["linux"]["cgroupsPath"] = f"/{CG}/ctr"
    json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
    state = os.path.join(work, "state")
    cmds = {
        "podlet": lambda i: [podlet, "oci", "run", "--root", state + "/podlet", "--bundle", bundle, f"b{i}"],
        "crun": lambda i: ["crun", "--root", state + "/crun", "run", "--bundle", bundle, f"b{i}"],
        "runc": lambda i: ["runc", "--root", state + "/runc", "run", "--bundle", bundle, f"b{i}"],
    }
    times = {k: [] for k in cmds}
    for i in range(runs + 3):
        for name, cmd in cmds.items():  # interleaved, so drift hits all alike
            argv = ["unshare", "-m", "sh", "-c", 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "sh"] + cmd(i)
            t0 = time.perf_counter()
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                sys.exit(f"{name} failed: {r.stderr.decode()}")
            if i >= 3:  # warm-up
                times[name].append(dt)
    base = subprocess.run(["unshare", "-m", "sh", "-c", "umount /sys/fs/cgroup/unified 2>/dev/null; exec true"])
    wrap = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["unshare", "-m", "sh", "-c", "umount /sys/fs/cgroup/unified 2>/dev/null; exec true"])
        wrap.append((time.perf_counter() - t0) * 1000)
    w = statistics.median(wrap)
    print(f"\n== container create+start+delete of /bin/true ({runs} runs each, interleaved; wrapper {w:.1f} ms subtracted)")
    med = {k: statistics.median(v) - w for k, v in times.items()}
    for k in cmds:
        print(f"  {k:7s} median {med[k]:6.1f} ms   p90 {pct(times[k], 90) - w:6.1f} ms")
    for ref in ("crun", "runc"):
        print(f"  {ref}/podlet = {med[ref] / med['podlet']:.2f}x  (>1 means podlet is faster)")


def http_get(sock_path, path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: b\r\n\r\n".encode())
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    return buf.split(b"\r\n\r\n", 1)[1]


def rss_pss(pid):
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def pod_bench(podlet, pods, work):
    d = os.path.join(work, "node")
    for sub in ("root", "run", "logs", "manifests"):
        os.makedirs(os.path.join(d, sub))
    base = [podlet, "--config", "/dev/null", "--root-dir", d + "/root", "--run-dir", d + "/run", "--log-dir", d + "/logs"]
    archive = os.path.join(work, "bb.tar")
    subprocess.run(base + ["image", "import", archive], check=True, stdout=subprocess.DEVNULL)
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity"])
    time.sleep(0.2)
    agent = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-n", "-m", "--"] + base +
                             ["run", "--standalone", "--manifest-dir", d + "/manifests", "--node-name", "bench", "--cgroup-root", CG, "--port", "0",
                              "--cni-conf-dir", d + "/cni/net.d", "--cni-bin-dir", d + "/cni/bin", "--cni-cache-dir", d + "/cni/cache"],
                             stdout=open(d + "/agent.log", "w"), stderr=subprocess.STDOUT, env=dict(os.environ, PODLET_LOG="warn"))
    sock = d + "/run/podlet.sock"
    while not os.path.exists(sock):
        time.sleep(0.01)
    lat = []
    try:
        for i in range(pods):
            name = f"p{i}"
            manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                        "spec": {"terminationGracePeriodSeconds": 0,
                                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]}}
            t0 = time.perf_counter()
            tmp = f"{d}/manifests/.{name}.json"
            json.dump(manifest, open(tmp, "w"))
            os.rename(tmp, f"{d}/manifests/{name}.json")
            while True:
                items = json.loads(http_get(sock, "/pods"))["items"]
                p = next((x for x in items if x["metadata"]["name"] == f"{name}-bench"), None)
                cs = (p or {}).get("status", {}).get("containerStatuses") or []
                if cs and all("running" in (c.get("state") or {}) for c in cs):
                    break
                time.sleep(0.001)
            lat.append((time.perf_counter() - t0) * 1000)
        print(f"\n== static pod start: manifest written -> container running, CNI bridge network included ({pods} pods, one at a time)")
        print(f"  p50 {pct(lat, 50):6.1f} ms   p90 {pct(lat, 90):6.1f} ms   p99 {pct(lat, 99):6.1f} ms   max {max(lat):6.1f} ms")
        shims, pauses = [], []
        for uid in os.listdir(d + "/run/pods"):
            st = json.load(open(f"{d}/run/pods/{uid}/state.json"))
            shims.append(rss_pss(st["shimPid"]))
            pauses.append(rss_pss(st["pausePid"]))
        mean = lambda xs, k: statistics.mean(x[k] for x in xs) / 1024
        print(f"\n== memory per pod ({len(shims)} pods running)")
        print(f"  shim   RSS {mean(shims, 0):5.2f} MiB   PSS {mean(shims, 1):5.2f} MiB")
        print(f"  pause  RSS {mean(pauses, 0):5.2f} MiB   PSS {mean(pauses, 1):5.2f} MiB")
        print(f"  total  RSS {mean(shims, 0) + mean(pauses, 0):5.2f} MiB   PSS {mean(shims, 1) + mean(pauses, 1):5.2f} MiB per pod")
    finally:
        for f in os.listdir(d + "/manifests"):
            os.remove(os.path.join(d, "manifests", f))
        deadline = time.time() + 60
        while time.time() < deadline and os.path.exists(d + "/run/pods") and os.listdir(d + "/run/pods"):
            time.sleep(0.05)
        agent.kill()
        agent.wait()
        holder.kill()
        holder.wait()


KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"


@contextlib.contextmanager
def all_in_one_node(podlet, prefix, cg):
    """An all-in-one node (control plane in-process, embedded store) in network and mount
    namespaces of its own, busybox:1.36 imported, Ready. Yields (work dir, node dir, kubectl
    runner `k(*args, input=...)`); afterwards nothing of it is left: agent, shims, containers,
    cgroups, files."""
    work = tempfile.mkdtemp(prefix=prefix)
    d = os.path.join(work, "node")
    for sub in ("root", "run", "logs", "manifests"):
        os.makedirs(os.path.join(d, sub))
    base = [podlet, "--config", "/dev/null", "--root-dir", d + "/root", "--run-dir", d + "/run", "--log-dir", d + "/logs"]
    holder = agent = None
    try:
        archive = os.path.join(work, "bb.tar")
        subprocess.run(["bash", os.path.join(ROOT, "hack/busybox-image.sh"), archive], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(base + ["image", "import", archive], check=True, stdout=subprocess.DEVNULL)
        holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "infinity"])
        time.sleep(0.2)
        ns = ["nsenter", "-t", str(holder.pid), "-n", "--"]
        subprocess.run(ns + ["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(ns + ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"], check=True)
        subprocess.run(ns + ["ip", "addr", "add", "10.98.0.2/24", "dev", "eth0"], check=True)
        for link in ("eth0", "eth0-peer"):
            subprocess.run(ns + ["ip", "link", "set", link, "up"], check=True)
        kubeconfig = d + "/admin.kubeconfig"
        agent = subprocess.Popen(["nsenter", "-t", str(holder.pid), "-n", "-m", "--"] + base +
                                 ["run", "--manifest-dir", d + "/manifests", "--node-name", "bench", "--cgroup-root", cg,
                                  "--eviction-hard=", "--admin-kubeconfig", kubeconfig,
                                  "--cni-conf-dir", d + "/cni/net.d", "--cni-bin-dir", d + "/cni/bin",
                                  "--cni-cache-dir", d + "/cni/cache"],
                                 stdout=open(d + "/agent.log", "w"), stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PODLET_LOG="warn"))

        def k(*args, **kw):
            return subprocess.run(ns + [KUBECTL, "--kubeconfig", kubeconfig, "--cache-dir", work + "/kc"] + list(args),
                                  capture_output=True, text=True, env=dict(os.environ, HOME=work), **kw)

        deadline = time.time() + 60
        while True:
            out = k("get", "node", "bench", "-o", "json")
            if (out.returncode == 0 and k("get", "sa", "default").returncode == 0
                    and any(c["type"] == "Ready" and c["status"] == "True"
                            for c in json.loads(out.stdout)["status"]["conditions"])):
                break
            if time.time() > deadline:
                sys.exit("the node did not become Ready:\n" + open(d + "/agent.log").read())
            time.sleep(0.2)
        yield work, d, k
    finally:
        for p in (agent, holder):
            if p is not None:
                p.kill()
                p.wait()
        kill_started(work, cg)
        cleanup_cgroups(cg)
        subprocess.run(["chmod", "-R", "u+rwx", work])
        shutil.rmtree(work, ignore_errors=True)


def kill_started(work, cg=CG):
    """Kills what a run started and an agent leaves behind by design (shims outlive it): the
    processes whose command line names the run's `work` dir and those in its cgroup tree `cg`."""
    # Only a temp dir of ours names what to kill: never an empty or shared path.
    if not os.path.basename(work.rstrip("/")).startswith("podlet-bench") or not os.path.isabs(work):
        raise ValueError(f"kill_started: {work!r} is not a bench work dir")
    mine = work.rstrip("/").encode()
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(a == mine or a.startswith(mine + b"/") for a in args):
            pids.add(int(pid))
    if not cg:
        raise ValueError("kill_started: no cgroup tree named")
    root = "/sys/fs/cgroup/pids/" + cg
    for dirpath, _, files in os.walk(root):
        if "cgroup.procs" in files:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids.update(int(p) for p in f.read().split())
    for pid in pids - {os.getpid()}:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def cleanup_cgroups(cg=CG):
    """Removes the cgroup tree `cg` in every hierarchy, waiting a moment for killed processes
    to leave it."""
    for _ in range(50):
        left = False
        for h in ("/sys/fs/cgroup/" + c for c in os.listdir("/sys/fs/cgroup")):
            root = os.path.join(h, cg)
            if os.path.isdir(root):
                for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -t[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        left = True
        if not left:
            return
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", required=True)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--pods", type=int, default=50)
    a = ap.parse_args()
    podlet = os.path.abspath(a.podlet)
    work = tempfile.mkdtemp(prefix="podlet-bench-")
    try:
        print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}")
        container_bench(podlet, a.runs, work)
        pod_bench(podlet, a.pods, work)
    finally:
        kill_started(work)
        cleanup_cgroups()
        subprocess.run(["chmod", "-R", "u+rwx", work])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
