#!/usr/bin/env bash
# Checks inside a running lab's guest (from the host, in vagrant/, with KUBECONFIG set):
#   guest-checks.sh [NODE]   (default worker1)
# cgroup v2: a Burstable pod's pod and container cgroups hold the values the kubelet writes;
# AppArmor: the agent loaded podlet-default, RuntimeDefault containers run confined by it and
# are refused what it denies, and a Localhost profile loaded on the node confines its pod.
set -euo pipefail
node=${1:-worker1}
log() { echo "guest-checks: $*"; }
# `on NODE <<SCRIPT`: a root shell on the node runs SCRIPT; its output is ours.
on() { vagrant ssh "$1" -c 'sudo bash -s' -- -q 2>/dev/null; }
kubectl() { "${KUBECTL:-kubectl}" "$@"; }
k() { kubectl -n podlet-lab "$@"; }
fail() { log "FAIL: $*"; exit 1; }
kubectl delete namespace podlet-lab --ignore-not-found --wait=false >/dev/null
for _ in $(seq 180); do kubectl get namespace podlet-lab >/dev/null 2>&1 || break; sleep 1; done
kubectl create namespace podlet-lab >/dev/null

# `pod NAME CONTAINER-FIELDS`: a sleeping busybox pod on the node, as YAML.
pod() {
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $node
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: [sleep, "3600"]
$2
---
YAML
}

# cgroup v2: a Burstable pod's pod and container cgroups hold the kubelet's values.
pod cg '    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: 500m, memory: 128Mi}' | k apply -f - >/dev/null
k wait --for=condition=Ready pod/cg --timeout=120s >/dev/null || fail "pod cg: $(k get pod cg -o wide)"
uid=$(k get pod cg -o jsonpath='{.metadata.uid}')
cg=$(on "$node" <<SH
stat -fc %T /sys/fs/cgroup
d=\$(find /sys/fs/cgroup -type d -name "*pod$uid" | head -1)
echo "pod=\$d"
for f in cpu.max cpu.weight memory.max pids.max; do echo "pod.\$f=\$(cat \$d/\$f)"; done
c=\$(find \$d -mindepth 1 -maxdepth 1 -type d ! -name pause | head -1)
for f in cpu.max cpu.weight memory.max; do echo "ctr.\$f=\$(cat \$c/\$f)"; done
SH
)
echo "$cg" | sed 's/^/  /'
want() { echo "$cg" | grep -qx "$1" || fail "cgroup v2: want $1"; }
want cgroup2fs
# 500m → quota 50000 per 100000 µs; 250m → shares 256 → weight ⌈10^((8² + 125·8)/612 − 7/34)⌉ = 35
# (the conversion of the kubelet and runc since 2025: shares 1024, the v1 default, → 100).
want 'pod.cpu.max=50000 100000'
want 'pod.cpu.weight=35'
want 'pod.memory.max=134217728'
want 'pod.pids.max=max'
want 'ctr.cpu.max=50000 100000'
want 'ctr.cpu.weight=35'
want 'ctr.memory.max=134217728'
log "cgroup v2: pod and container cgroups as the kubelet's"

# AppArmor: the agent loaded podlet-default; RuntimeDefault containers run confined by it and
# are refused what it denies (a mount, with CAP_SYS_ADMIN and no seccomp filter, so AppArmor
# is all that stands in the way); a Localhost profile loaded on the node confines its pod.
on "$node" <<'SH'
cat > /etc/apparmor.d/podlet-lab-test <<EOF
#include <tunables/global>
profile podlet-lab-test flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>
  file,
  deny /tmp/** w,
}
EOF
apparmor_parser -r /etc/apparmor.d/podlet-lab-test
SH
profiles=$(on "$node" <<<'cat /sys/kernel/security/apparmor/profiles')
# (ssh may end lines with CR.)
echo "$profiles" | tr -d '\r' | grep -qx 'podlet-default (enforce)' || fail "podlet-default not loaded on $node: $profiles"
aa() { # aa NAME APPARMOR-PROFILE: CAP_SYS_ADMIN and no seccomp, so AppArmor alone refuses
  pod "$1" "    securityContext:
      appArmorProfile: $2
      seccompProfile: {type: Unconfined}
      capabilities: {add: [SYS_ADMIN]}"
}
{ aa aa-default '{type: RuntimeDefault}'; aa aa-unconfined '{type: Unconfined}'
  aa aa-local '{type: Localhost, localhostProfile: podlet-lab-test}'; } | k apply -f - >/dev/null
k wait --for=condition=Ready pod/aa-default pod/aa-unconfined pod/aa-local --timeout=120s >/dev/null \
  || fail "apparmor pods: $(k get pods -o wide)"
attr() { k exec "$1" -- cat /proc/self/attr/current | tr -d '\0'; }
[ "$(attr aa-default)" = 'podlet-default (enforce)' ] || fail "aa-default runs as '$(attr aa-default)'"
[ "$(attr aa-unconfined)" = unconfined ] || fail "aa-unconfined runs as '$(attr aa-unconfined)'"
[ "$(attr aa-local)" = 'podlet-lab-test (enforce)' ] || fail "aa-local runs as '$(attr aa-local)'"
mnt='mkdir -p /tmp/m && mount -t tmpfs none /tmp/m'
k exec aa-unconfined -- sh -c "$mnt" || fail "unconfined: mount with CAP_SYS_ADMIN refused"
out=$(k exec aa-default -- sh -c "$mnt" 2>&1) && fail "podlet-default let a container mount"
echo "$out" | grep -q 'Permission denied' || fail "podlet-default: mount failed otherwise: $out"
k exec aa-default -- touch /tmp/ok || fail "podlet-default refused a write to /tmp"
out=$(k exec aa-local -- touch /tmp/no 2>&1) && fail "podlet-lab-test let a container write /tmp"
echo "$out" | grep -q 'Permission denied' || fail "podlet-lab-test: write failed otherwise: $out"
log "AppArmor: podlet-default and a Localhost profile confine their containers"

kubectl delete namespace podlet-lab --wait=false >/dev/null
