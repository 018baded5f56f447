#!/usr/bin/env bash
# The Vagrant lab, tested for real (run as root; tests/tests/vagrant_lab.rs calls it): brings the
# lab up (one control plane and PODLET_WORKERS workers, default 1 here), runs smoke.sh from the
# host, checks a pod's cgroup v2 files against the kubelet's values and AppArmor confinement in
# the guests, and destroys it.
#
# libvirt, its networks and the VMs live in network and mount namespaces of this script, with
# private copies of libvirt's state and a private /dev/kvm node (group kvm, 0660, so libvirt does
# not re-probe QEMU on every call): the machine's own network namespace, libvirt configuration
# and /dev/kvm are left as they were, and everything goes when the namespaces do.
#   PODLET_BIN_DIR  the podlet and CNI plugin binaries (default target/debug)
#   KEEP=1      leave the lab up at the end (for debugging; `vagrant destroy` then is yours)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "vagrant/test.sh: run as root" >&2; exit 1; }

if [ -z "${PODLET_LAB_INNER:-}" ]; then
  bash "$root/hack/lab-deps.sh"
  bash "$here/box.sh"
  work=$(mktemp -d /tmp/podlet-vagrant-XXXXXX)
  chmod 0711 "$work"
  rc=0
  PODLET_LAB_INNER=$work unshare --net --mount --propagation private bash "$0" "$@" || rc=$?
  # Whatever the inner run left running (it should be nothing): the processes in its network
  # namespace, which only it used.
  if [ -s "$work/netns" ]; then
    for d in /proc/[0-9]*; do
      [ "$(readlink "$d/ns/net" 2>/dev/null)" = "$(cat "$work/netns")" ] && kill -9 "${d#/proc/}" 2>/dev/null || true
    done
  fi
  rm -rf "$work"
  exit $rc
fi

work=$PODLET_LAB_INNER
mkdir -p "$work/pids"
readlink /proc/self/ns/net >"$work/netns"
log() { echo "vagrant/test.sh: $*"; }
ip link set lo up
# Private copies of libvirt's configuration and state, and a runtime dir of our own.
for d in /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "$work/fs$d"
  [ -d "$d" ] && cp -a "$d/." "$work/fs$d/"
  mount --bind "$work/fs$d" "$d"
done
mount -t tmpfs tmpfs /run
mkdir -p "$work/dev"
mount -t tmpfs -o mode=0755 tmpfs "$work/dev"
mknod "$work/dev/kvm" c 10 232
chgrp kvm "$work/dev/kvm"
chmod 0660 "$work/dev/kvm"
[ -e /dev/kvm ] && mount --bind "$work/dev/kvm" /dev/kvm

export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_DOTFILE_PATH=$work/dot PODLET_LAB_STATE=$work/state KUBECONFIG=$work/admin.kubeconfig
export PODLET_KUBECONFIG=$KUBECONFIG PODLET_WORKERS=${PODLET_WORKERS:-1}
export PODLET_BIN_DIR=${PODLET_BIN_DIR:-$root/target/debug}
kubectl=/usr/lib/google-cloud-sdk/bin/kubectl.1.33
[ -x "$kubectl" ] || kubectl=$(command -v kubectl)
export KUBECTL=$kubectl
cd "$here"

cleanup() {
  local rc=$?
  set +e
  if [ "${KEEP:-}" = 1 ]; then
    log "KEEP=1: the lab stays up; PODLET_LAB_INNER=$work, libvirtd pid $(cat "$work/pids/libvirtd")"
    sleep infinity
  fi
  timeout 120 vagrant destroy -f >"$work/destroy.log" 2>&1 || { log "vagrant destroy failed:"; tail -5 "$work/destroy.log"; }
  local f
  for f in /run/libvirt/qemu/*.pid /run/libvirt/network/*.pid "$work"/pids/*; do
    [ -s "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  exit $rc
}
trap cleanup EXIT

virtlogd -d -p "$work/pids/virtlogd"
libvirtd -d -p "$work/pids/libvirtd"
for _ in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
virsh -q pool-info default >/dev/null 2>&1 || {
  virsh -q pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
  virsh -q pool-start default >/dev/null
}

t0=$(date +%s.%N)
if ! vagrant up >"$work/up.log" 2>&1; then
  log "vagrant up failed:"
  tail -40 "$work/up.log"
  exit 1
fi
t_up=$(date +%s.%N)
log "lab up: $(vagrant status --machine-readable | grep -c ',state,running') VMs in $(echo "$t_up - $t0" | bc) s"

bash "$here/smoke.sh"

bash "$here/guest-checks.sh" worker1
t_end=$(date +%s.%N)
log "ok: up $(echo "$t_up - $t0" | bc) s, checks $(echo "$t_end - $t_up" | bc) s"
