#!/usr/bin/env python3
"""ADD and DEL latency of podlet's bridge + host-local beside the reference plugins
(Debian's containernetworking-plugins) with the same configuration, interleaved in one run,
inside network namespaces this script creates. Prints medians and ratios."""
import argparse, json, os, shutil, statistics, subprocess, tempfile, time


def holder(args):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    own = os.readlink("/proc/self/ns/net")
    for _ in range(500):
        try:
            if os.readlink(f"/proc/{p.pid}/ns/net") != own and os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
                return p
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit("namespace holder did not start")


def run(host, binary, cmd, cid, netns, path, conf):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": path}
    t0 = time.perf_counter()
    r = subprocess.run(["nsenter", "-t", str(host.pid), "-n", "--", binary], input=json.dumps(conf).encode(),
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{binary} {cmd} failed: {r.stdout.decode()} {r.stderr.decode()}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="directory with podlet's plugin binaries")
    ap.add_argument("--reference", default="/usr/lib/cni")
    ap.add_argument("--runs", type=int, default=40)
    a = ap.parse_args()
    ours, ref = os.path.abspath(a.ours), a.reference
    work = tempfile.mkdtemp(prefix="podlet-cni-bench-")
    # nsenter itself is timed for both sides alike; measured alone below and subtracted.
    host = holder(["unshare", "--net", "sleep", "infinity"])
    holders = [host]
    try:
        print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}")
        for masq in (False, True):
            times = {k: [] for k in ("ours ADD", "ours DEL", "ref ADD", "ref DEL")}
            for i in range(a.runs + 2):
                for side, binary, path, subnet in (("ours", f"{ours}/bridge", ours, "10.61"), ("ref", f"{ref}/bridge", ref, "10.62")):
                    c = holder(["nsenter", "-t", str(host.pid), "-n", "unshare", "--net", "sleep", "infinity"])
                    holders.append(c)
                    conf = {"cniVersion": "1.0.0", "name": f"bench-{side}-{int(masq)}", "type": "bridge",
                            "bridge": f"br-{side}{int(masq)}", "isGateway": True, "ipMasq": masq,
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{subnet}.{int(masq)}.0/24"}]],
                                     "dataDir": f"{work}/data"}}
                    netns = f"/proc/{c.pid}/ns/net"
                    add = run(host, binary, "ADD", f"c{i}", netns, path, conf)
                    dele = run(host, binary, "DEL", f"c{i}", netns, path, conf)
                    c.kill(); c.wait(); holders.remove(c)
                    if i >= 2:  # the first ADD creates the bridge
                        times[f"{side} ADD"].append(add)
                        times[f"{side} DEL"].append(dele)
            base = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                subprocess.run(["nsenter", "-t", str(host.pid), "-n", "--", "/bin/true"])
                base.append((time.perf_counter() - t0) * 1000)
            b = statistics.median(base)
            med = {k: statistics.median(v) - b for k, v in times.items()}
            print(f"\n== bridge + host-local, ipMasq={masq} ({a.runs} runs each, interleaved; nsenter {b:.1f} ms subtracted)")
            for op in ("ADD", "DEL"):
                print(f"  {op}: podlet {med['ours ' + op]:6.2f} ms   reference {med['ref ' + op]:6.2f} ms   "
                      f"ratio {med['ref ' + op] / med['ours ' + op]:.1f}x")
    finally:
        for h in holders:
            h.kill()
            h.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
