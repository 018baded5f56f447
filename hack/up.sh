#!/usr/bin/env bash
# Brings up a single-node cluster on this machine (run as root): builds and installs podlet,
# imports a busybox image, and starts `podlet run` (control plane in-process, embedded store,
# and the node agent; as a systemd service where systemd runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
bash hack/deps.sh
cargo build --locked --release -p podlet -p podlet-cni
install -m 0755 target/release/podlet /usr/local/bin/podlet
# podlet installs these into --cni-bin-dir (/opt/cni/bin) where that directory lacks them.
install -d /usr/local/lib/podlet/cni
install -m 0755 target/release/{bridge,host-local,loopback,portmap} /usr/local/lib/podlet/cni/
mkdir -p /etc/podlet/manifests /var/lib/podlet /var/log/pods
img=$(mktemp --suffix=.tar)
bash hack/busybox-image.sh "$img" >/dev/null
podlet image import "$img"
rm -f "$img"
if [ -d /run/systemd/system ]; then
  install -m 0644 vagrant/podlet.service /etc/systemd/system/podlet.service
  systemctl daemon-reload
  systemctl enable --now podlet.service
  echo "podlet is running: systemctl status podlet; podlet ps"
else
  nohup podlet run >>/var/log/podlet.log 2>&1 </dev/null &
  echo "podlet is running (pid $!, log /var/log/podlet.log): podlet ps"
fi
for _ in $(seq 100); do
  [ -s /etc/podlet/admin.kubeconfig ] && curl -sfk https://127.0.0.1:6443/readyz >/dev/null && break
  sleep 0.3
done
curl -sfk https://127.0.0.1:6443/readyz >/dev/null || { echo "the apiserver did not come up; see the log" >&2; exit 1; }
echo "the cluster is up: export KUBECONFIG=/etc/podlet/admin.kubeconfig; kubectl get nodes"
echo "static pods: drop a Pod manifest into /etc/podlet/manifests"
