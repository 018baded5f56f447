#!/usr/bin/env bash
# A podlet cluster of N nodes on this machine, each node a network + mount namespace with its
# own agent, state dirs and cgroup root (the layout of tests/src/cluster.rs):
#   hack/lab.sh up [N]            N nodes (default 2) on one subnet, 10.200.1.11, .12, ...
#                                 (SUBNETS="1 2 1" puts node i on 10.200.<s>.0/24; the switch
#                                 namespace routes between subnets, so those peers use VXLAN)
#   hack/lab.sh kubectl ARGS...   kubectl as the administrator, from node 1's namespace
#   hack/lab.sh sh I [CMD...]     a shell (or CMD) in node I's namespaces
#   hack/lab.sh podlet I ARGS...  the podlet CLI of node I (ps, logs, exec POD -- CMD...)
#   hack/lab.sh restart I         restarts node I's agent with the same arguments
#   hack/lab.sh down              stops everything and removes every trace
# Node 1 runs the all-in-one control plane on its own address; the others join it with a
# bootstrap token. Nothing touches the machine's own network namespace.
#   LAB_DIR (default /tmp/podlet-lab), PODLET (default target/debug/podlet),
#   KUBECTL (default kubectl, else the google-cloud-sdk kubectl 1.33), BACKEND (--network-backend).
#   LAB_DUAL_STACK=1 (at `up`): dual-stack pods, --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 and
#   --service-cluster-ip-range 10.96.0.0/12,fd00:10:96::/112; the nodes and the switch also get
#   fd00:200:<s>::<10+i>/64 (the switch ::1), so pods' IPv6 traffic can leave the cluster.
# The nodes' --resolv-conf names 10.200.1.1 (the switch), so the cluster DNS forwards there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
lab=${LAB_DIR:-/tmp/podlet-lab}
podlet=${PODLET:-$here/target/debug/podlet}
kubectl=${KUBECTL:-$(command -v kubectl || echo /usr/lib/google-cloud-sdk/bin/kubectl.1.33)}
token=abcdef.0123456789abcdef

pid_of() { cat "$lab/$1.pid"; }
# A hierarchy where the agents' cgroups go (any one will do: it only groups their processes).
cg_base=/sys/fs/cgroup/pids
[ -d "$cg_base" ] || cg_base=/sys/fs/cgroup
in_node() { local i=$1; shift; nsenter -t "$(pid_of "n$i")" -n -m -- "$@"; }
in_switch() { nsenter -t "$(pid_of switch)" -n -- "$@"; }

hold() { # hold NAME UNSHARE-ARGS...: a sleeping process that keeps namespaces alive
  local name=$1; shift
  unshare "$@" sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! > "$lab/$name.pid"
  local own; own=$(readlink /proc/self/ns/net)
  while [ "$(readlink "/proc/$!/ns/net" 2>/dev/null)" = "$own" ]; do sleep 0.01; done
}

# start_agent I: node I's agent, its arguments kept in the lab dir (so `restart` repeats them).
start_agent() {
  local i=$1 d=$lab/n$1 ip
  ip=$(cat "$lab/n$i.ip")
  local base=(--root-dir "$d/root" --run-dir "$d/run" --log-dir "$d/logs")
  local args=(run --node-name "n$i" --node-ip "$ip" --cgroup-root "podlet-lab-n$i"
    --manifest-dir "$d/manifests" --cni-conf-dir "$d/cni/net.d" --cni-bin-dir "$d/cni/bin"
    --cni-cache-dir "$d/cni/cache" --eviction-hard= --resolv-conf "$lab/resolv.conf")
  [ -z "${BACKEND:-}" ] || args+=(--network-backend "$BACKEND")
  # Kept in the lab dir, so that `restart` repeats it without the variable.
  [ ! -e "$lab/dual-stack" ] || args+=(--cluster-cidr 10.244.0.0/16,fd00:10:244::/56
    --service-cluster-ip-range 10.96.0.0/12,fd00:10:96::/112)
  if [ "$i" = 1 ]; then
    args+=(--apiserver-listen "$ip:6443" --admin-kubeconfig "$lab/admin.kubeconfig")
  else
    args+=(--server "https://$(cat "$lab/n1.ip"):6443" --token "$token"
      --certificate-authority "$lab/n1/root/control-plane/pki/ca.crt")
  fi
  # nsenter execs podlet: $! is the agent. It runs in a cgroup of its own, where the pods'
  # shims stay (they outlive the agent), so `down` finds them all.
  local agent_cg=$cg_base/podlet-lab-n$i.agent
  mkdir -p "$agent_cg"
  (echo "$BASHPID" >"$agent_cg/cgroup.procs"
    exec nsenter -t "$(pid_of "n$i")" -n -m -- "$podlet" "${base[@]}" "${args[@]}") \
    >>"$d/agent.log" 2>&1 </dev/null &
  echo $! > "$lab/n$i.agent.pid"
}

# restart I: stops node I's agent (SIGTERM, as systemd would; its pods keep running) and
# starts it again with the same arguments.
restart() {
  local i=$1 pid
  pid=$(cat "$lab/n$i.agent.pid")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  start_agent "$i"
}

up() {
  local n=${1:-2}
  [ ! -e "$lab" ] || { echo "$lab exists: hack/lab.sh down first" >&2; exit 1; }
  [ -x "$podlet" ] || { echo "no podlet at $podlet (cargo build -p podlet -p podlet-cni)" >&2; exit 1; }
  read -r -a subnets <<< "${SUBNETS:-}"
  mkdir -p "$lab"
  local dual=
  [ "${LAB_DUAL_STACK:-0}" = 0 ] || { dual=1; touch "$lab/dual-stack"; }
  bash "$here/hack/busybox-image.sh" "$lab/busybox.tar" >/dev/null
  # The nodes' upstream resolver is the switch (where a bench may run one), never the machine's.
  echo "nameserver 10.200.1.1" > "$lab/resolv.conf"
  hold switch --net
  in_switch ip link set lo up
  in_switch sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  [ -z "$dual" ] || in_switch sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/forwarding'
  local i s ip
  for i in $(seq 1 "$n"); do
    s=${subnets[$((i - 1))]:-1}
    if ! in_switch ip link show "br$s" >/dev/null 2>&1; then
      in_switch ip link add "br$s" type bridge
      in_switch ip addr add "10.200.$s.1/24" dev "br$s"
      [ -z "$dual" ] || in_switch ip addr add "fd00:200:$s::1/64" dev "br$s" nodad
      in_switch ip link set "br$s" up
    fi
    ip=10.200.$s.$((10 + i))
    echo "$ip" > "$lab/n$i.ip"
    hold "n$i" --net --mount --propagation private
    local d=$lab/n$i
    mkdir -p "$d"/{root,run,logs,manifests}
    chmod 711 "$lab" "$d"
    in_switch ip link add "s$i" type veth peer name eth0 netns "$(pid_of "n$i")"
    in_switch ip link set "s$i" master "br$s" up
    in_node "$i" ip link set lo up
    in_node "$i" ip addr add "$ip/24" dev eth0
    in_node "$i" ip link set eth0 up
    in_node "$i" ip route add default via "10.200.$s.1"
    if [ -n "$dual" ]; then
      in_node "$i" ip addr add "fd00:200:$s::$((10 + i))/64" dev eth0 nodad
      in_node "$i" ip -6 route add default via "fd00:200:$s::1"
    fi
    in_node "$i" "$podlet" --root-dir "$d/root" --run-dir "$d/run" --log-dir "$d/logs" \
      image import "$lab/busybox.tar" >/dev/null
    start_agent "$i"
    if [ "$i" = 1 ]; then
      for _ in $(seq 1 300); do
        [ -s "$lab/admin.kubeconfig" ] && kube apply -f - >/dev/null 2>&1 <<EOF && break
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-abcdef, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData: {token-id: abcdef, token-secret: 0123456789abcdef, usage-bootstrap-authentication: "true"}
EOF
        sleep 0.2
      done
    fi
  done
  echo "lab up: $n nodes in $lab (logs: $lab/n*/agent.log); hack/lab.sh kubectl get nodes -o wide"
}

kube() { nsenter -t "$(pid_of n1)" -n -- "$kubectl" --kubeconfig "$lab/admin.kubeconfig" "$@"; }

down() {
  [ -d "$lab" ] || return 0
  if [ -e "$lab/n1.pid" ] && [ -s "$lab/admin.kubeconfig" ]; then
    kube delete pods --all -A --wait=false --request-timeout=5s >/dev/null 2>&1 || true
    sleep 3
  fi
  local f pid
  for f in "$lab"/n*.agent.pid; do
    [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  # Whatever still runs in a node's cgroups (pods outlive their agent), then the cgroups.
  local cg
  for cg in /sys/fs/cgroup/*/podlet-lab-n* /sys/fs/cgroup/podlet-lab-n*; do
    [ -d "$cg" ] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  sleep 0.5
  for cg in /sys/fs/cgroup/*/podlet-lab-n* /sys/fs/cgroup/podlet-lab-n*; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  for f in "$lab"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -9 "$pid" 2>/dev/null || true
  done
  sleep 0.2
  chmod -R u+rwx "$lab" 2>/dev/null || true
  # Overlay mounts of pods lived in the nodes' mount namespaces, gone with them.
  rm -rf "$lab"
  echo "lab down"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  kubectl) shift; kube "$@" ;;
  sh) shift; i=$1; shift; if [ $# -gt 0 ]; then in_node "$i" "$@"; else in_node "$i" sh; fi ;;
  podlet) shift; i=$1; shift
    in_node "$i" "$podlet" --root-dir "$lab/n$i/root" --run-dir "$lab/n$i/run" --log-dir "$lab/n$i/logs" "$@" ;;
  restart) shift; restart "$1" ;;
  down) down ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
