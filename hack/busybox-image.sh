#!/usr/bin/env bash
# Builds an OCI image archive of Debian's static busybox, with no registry and no Docker.
#   hack/busybox-image.sh OUT.tar [NAME]     (NAME defaults to docker.io/library/busybox:1.36)
#   FORMAT=docker hack/busybox-image.sh OUT.tar   writes a docker-archive instead.
set -euo pipefail
out=$1
name=${2:-docker.io/library/busybox:1.36}
format=${FORMAT:-oci}
bb=${BUSYBOX:-/bin/busybox}
[ -x "$bb" ] || { echo "busybox not found at $bb (apt-get install busybox-static)" >&2; exit 1; }
file "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
  || { echo "$bb is not statically linked" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,var/tmp}
chmod 1777 "$root/tmp" "$root/var/tmp"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
config=$(printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$arch" "$diff_id")
config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
img=$work/image
mkdir -p "$img"

if [ "$format" = docker ]; then
  printf '%s' "$config" > "$img/$config_digest.json"
  mkdir -p "$img/$diff_id"
  mv "$work/layer.tar" "$img/$diff_id/layer.tar"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config_digest" "$name" "$diff_id" > "$img/manifest.json"
else
  blobs=$img/blobs/sha256
  mkdir -p "$blobs"
  gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
  layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$work/layer.tar.gz")
  mv "$work/layer.tar.gz" "$blobs/$layer_digest"
  printf '%s' "$config" > "$blobs/$config_digest"
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config_digest" "${#config}" "$layer_digest" "$layer_size")
  manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" > "$blobs/$manifest_digest"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$img/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "${#manifest}" "$name" "${name##*:}" > "$img/index.json"
fi
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$img" -cf "$out" .
echo "$out"
