#!/usr/bin/env python3
"""The apiserver's throughput and latency on the embedded store and on a real etcd (Debian's
etcd-server, unpacked by hack/deps.sh), side by side in one run: pod creates and gets (p50/p99
per call, several clients at once), a paginated list of every pod (limit=500 like kubectl), and
watch fan-out (events delivered per second to many watchers). Everything on loopback, in temp
dirs this script removes. Prints a table and the etcd/embedded ratios.

Kubernetes' SLO for mutating calls is p99 <= 1 s; podlet aims at <= 10 ms on a small machine."""
import argparse, http.client, json, os, shutil, socket, ssl, statistics, subprocess, tempfile, threading, time

TOKEN = "bench-admin-token"
CTX = {}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def conn(port, timeout=None):
    """An HTTPS connection to the apiserver on `port` (verifying its CA), or plain HTTP."""
    if port in CTX:
        return http.client.HTTPSConnection("127.0.0.1", port, context=CTX[port], timeout=timeout)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


HDRS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}


def wait_http(port, path="/healthz", timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = conn(port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing serving on {port}{path}")


def start_etcd(etcd, tmp):
    port, peer = free_port(), free_port()
    p = subprocess.Popen([etcd, "--data-dir", os.path.join(tmp, "etcd"), "--name", "bench",
                          "--listen-client-urls", f"http://127.0.0.1:{port}",
                          "--advertise-client-urls", f"http://127.0.0.1:{port}",
                          "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--log-level", "error"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, "/health")
    return p, f"http://127.0.0.1:{port}"


def start_apiserver(podlet, tmp, name, extra):
    port = free_port()
    tokens = os.path.join(tmp, "tokens.csv")
    with open(tokens, "w") as f:
        f.write(f'{TOKEN},bench,bench,"system:masters"\n')
    p = subprocess.Popen([podlet, "control-plane", "--data-dir", os.path.join(tmp, name),
                          "--token-auth-file", tokens,
                          "--listen", f"127.0.0.1:{port}",
                          "--admin-kubeconfig", os.path.join(tmp, f"{name}.kubeconfig")] + extra,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ca = os.path.join(tmp, name, "pki", "ca.crt")
    for _ in range(200):
        if os.path.exists(ca):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    CTX[port] = ssl.create_default_context(cafile=ca)
    wait_http(port)
    return p, port


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "", "labels": {"app": "bench"}},
       "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


def timed_calls(port, n, clients, make):
    """Runs n calls spread over `clients` keep-alive connections; returns per-call ms and the
    wall time."""
    lat = []
    lock = threading.Lock()

    def worker(idx):
        c = conn(port)
        mine = []
        for i in range(idx, n, clients):
            method, path, body = make(i)
            t0 = time.perf_counter()
            c.request(method, path, body=body, headers=HDRS)
            r = c.getresponse()
            r.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if r.status >= 300:
                raise SystemExit(f"{method} {path}: {r.status}")
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat, time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def watchers(port, count, expect):
    """Starts `count` watches on pods; returns a function that waits until each has seen
    `expect` events and returns the time the last one got its last event."""
    done = []
    lock = threading.Lock()
    rv_c = conn(port)
    rv_c.request("GET", "/api/v1/namespaces/default/pods?limit=1", headers=HDRS)
    rv = json.loads(rv_c.getresponse().read())["metadata"]["resourceVersion"]

    def one():
        c = conn(port)
        c.request("GET", f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120", headers=HDRS)
        r = c.getresponse()
        seen = 0
        while seen < expect:
            line = r.fp.readline()
            if not line:
                break
            if b'"ADDED"' in line:
                seen += 1
        with lock:
            done.append(time.perf_counter())
        c.close()

    ts = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in ts:
        t.start()
    time.sleep(0.5)

    def wait():
        for t in ts:
            t.join(timeout=120)
        return max(done) if len(done) == count else None

    return wait


def bench(name, port, args):
    out = {}
    lat, wall = timed_calls(port, args.pods, args.clients, lambda i: (
        "POST", "/api/v1/namespaces/default/pods",
        json.dumps({**POD, "metadata": {**POD["metadata"], "name": f"p-{i}"}})))
    out["create p50"], out["create p99"], out["creates/s"] = pct(lat, .5), pct(lat, .99), args.pods / wall
    lat, wall = timed_calls(port, args.pods, args.clients, lambda i: ("GET", f"/api/v1/namespaces/default/pods/p-{i}", None))
    out["get p50"], out["get p99"], out["gets/s"] = pct(lat, .5), pct(lat, .99), args.pods / wall
    # A full paginated list, as kubectl get pods does it.
    lists = []
    for _ in range(3):
        t0 = time.perf_counter()
        c = conn(port)
        cont, items = "", 0
        while True:
            c.request("GET", f"/api/v1/pods?limit=500&continue={cont}", headers=HDRS)
            body = json.loads(c.getresponse().read())
            items += len(body["items"])
            cont = body["metadata"].get("continue")
            if not cont:
                break
            cont = cont.replace("=", "%3D").replace("+", "%2B").replace("/", "%2F")
        lists.append((time.perf_counter() - t0) * 1000)
        assert items >= args.pods, items
    out["list all ms"] = statistics.median(lists)
    # Watch fan-out: every watcher gets every event.
    wait = watchers(port, args.watchers, args.events)
    t0 = time.perf_counter()
    timed_calls(port, args.events, 4, lambda i: (
        "POST", "/api/v1/namespaces/default/configmaps", json.dumps({"metadata": {"name": f"w-{i}"}, "data": {"i": str(i)}})))
    last = wait()
    out["watch events/s"] = (args.watchers * args.events / (last - t0)) if last else float("nan")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", default="target/release/podlet")
    ap.add_argument("--etcd", default="target/tools/usr/bin/etcd")
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--events", type=int, default=500)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="podlet-bench-api-")
    procs = []
    try:
        results = {}
        p, port = start_apiserver(args.podlet, tmp, "embedded", [])
        procs.append(p)
        results["embedded"] = bench("embedded", port, args)
        e, url = start_etcd(args.etcd, tmp)
        procs.append(e)
        p, port = start_apiserver(args.podlet, tmp, "etcd", ["--etcd-servers", url])
        procs.append(p)
        results["etcd"] = bench("etcd", port, args)
        print(f"apiserver, {args.pods} pods, {args.clients} clients, {args.watchers} watchers x {args.events} events")
        print(f"{'':16}{'embedded':>12}{'etcd':>12}{'etcd/embedded':>15}")
        for k in results["embedded"]:
            a, b = results["embedded"][k], results["etcd"][k]
            unit = "ms" if "p5" in k or "p9" in k or "ms" in k else ""
            print(f"{k:16}{a:>10.2f}{unit:2}{b:>10.2f}{unit:2}{b / a:>13.2f}x")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
