#!/usr/bin/env python3
"""Image pull from a local registry: `podlet image pull` against `skopeo copy` to an OCI layout,
in the same run, same image, same registry (Debian's docker-registry on 127.0.0.1).

The image: busybox plus 7 gzip layers of mixed content (about 60 MB compressed). podlet also
unpacks every layer into its store (what a node needs before a container starts); skopeo
only stores the blobs, so the ratio flatters skopeo. Each run starts from an empty store.
"""
import argparse, gzip, hashlib, io, json, os, random, shutil, socket, subprocess, tarfile, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY = os.path.join(ROOT, "target/tools/usr/bin/docker-registry")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d


def layer_tar(i, rnd):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for j in range(8):
            # Half random (does not compress), half text (compresses well).
            data = rnd.randbytes(512 * 1024) + (f"layer {i} file {j} " * 40000).encode()[:512 * 1024]
            ti = tarfile.TarInfo(f"data/l{i}/f{j}")
            ti.size = len(data)
            ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build_layout(work):
    """An OCI layout: the busybox archive's layer and config, plus 7 generated layers."""
    bb = os.path.join(work, "bb")
    os.makedirs(bb)
    subprocess.run(["bash", os.path.join(ROOT, "hack/busybox-image.sh"), work + "/bb.tar"], check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(work + "/bb.tar") as t:
        t.extractall(bb)
    idx = json.load(open(bb + "/index.json"))
    read = lambda d: open(os.path.join(bb, "blobs/sha256", d.split(":")[1]), "rb").read()
    m = json.loads(read(idx["manifests"][0]["digest"]))
    config = json.loads(read(m["config"]["digest"]))
    layout = os.path.join(work, "layout")
    os.makedirs(layout + "/blobs/sha256")
    rnd = random.Random(42)
    layers = [(read(m["layers"][0]["digest"]), None)]
    for i in range(7):
        layers.append((layer_tar(i, rnd), None))
    descs, diff_ids = [], []
    for raw, _ in layers:
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(layout, gz), "size": len(gz)})
    config["rootfs"]["diff_ids"] = diff_ids
    cfg = json.dumps(config).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(layout, cfg), "size": len(cfg)},
                           "layers": descs}).encode()
    md = blob(layout, manifest)
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
               "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}, open(layout + "/index.json", "w"))
    open(layout + "/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
    return layout, sum(d["size"] for d in descs)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--podlet", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    podlet = os.path.abspath(args.podlet)
    work = tempfile.mkdtemp(prefix="podlet-bench-pull-")
    port = free_port()
    addr = f"127.0.0.1:{port}"
    open(work + "/registry.yml", "w").write(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\nhttp:\n  addr: {addr}\n")
    reg = subprocess.Popen([REGISTRY, "serve", work + "/registry.yml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        layout, size = build_layout(work)
        image = f"{addr}/bench/multi:1"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{image}"], check=True)
        open(work + "/podlet.yaml", "w").write(f"registries:\n  insecure: [\"{addr}\"]\n")
        ours, theirs = [], []
        for i in range(args.runs):
            for name, cmd, out in (
                ("podlet", lambda d: [podlet, "--config", work + "/podlet.yaml", "--root-dir", d + "/root", "--run-dir", d + "/run",
                                      "image", "pull", image], ours),
                ("skopeo", lambda d: ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{image}", f"oci:{d}/layout:1"], theirs),
            ):
                d = os.path.join(work, f"{name}-{i}")
                os.makedirs(d)
                t = time.monotonic()
                subprocess.run(cmd(d), check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PODLET_LOG="warn"))
                out.append(time.monotonic() - t)
                shutil.rmtree(d)
        print(f"pull of an 8-layer image ({size / 1e6:.1f} MB compressed) from a local registry, median of {args.runs}:")
        print(f"  podlet image pull (download + verify + unpack): {median(ours) * 1000:7.0f} ms")
        print(f"  skopeo copy to an OCI layout (download only):   {median(theirs) * 1000:7.0f} ms")
        print(f"  ratio podlet/skopeo: {median(ours) / median(theirs):.2f}")
    finally:
        reg.kill()
        reg.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
