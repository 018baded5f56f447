#!/usr/bin/env bash
# Checks a running lab from the host: every node Ready, pod traffic across nodes with the
# client's own address seen by the server, pod → node across nodes, and a Deployment spread
# over the nodes.  KUBECONFIG (default vagrant/admin.kubeconfig), KUBECTL (default kubectl),
# PODLET_NODES (nodes to wait for; default PODLET_WORKERS + 1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export KUBECONFIG=${KUBECONFIG:-$here/admin.kubeconfig}
k() { "${KUBECTL:-kubectl}" "$@"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ns=podlet-smoke

# Workers register once they have joined: wait for all of them.
want=${PODLET_NODES:-$((${PODLET_WORKERS:-2} + 1))}
for _ in $(seq 300); do
  mapfile -t nodes < <(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' 2>/dev/null)
  [ ${#nodes[@]} -ge "$want" ] && break
  sleep 1
done
[ ${#nodes[@]} -ge "$want" ] || fail "want $want nodes, have: ${nodes[*]:-none}"
k wait --for=condition=Ready node --all --timeout=300s >/dev/null || fail "nodes not Ready: $(k get nodes)"
echo "smoke: ${#nodes[@]} nodes Ready: ${nodes[*]}"

k delete namespace "$ns" --ignore-not-found --wait=false >/dev/null
for _ in $(seq 180); do k get namespace "$ns" >/dev/null 2>&1 || break; sleep 1; done
k create namespace "$ns" >/dev/null
trap 'k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

# A server on the first node that answers with its peer's address (busybox httpd CGI, which
# listens on IPv6 and names IPv4 peers as [::ffff:a.b.c.d]), a
# client on the last node.
server=${nodes[0]} client=${nodes[-1]}
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: echo-peer}
spec:
  nodeName: $server
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: [sh, -c]
    args:
    - |
      mkdir -p /www/cgi-bin
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho \$REMOTE_ADDR\n' > /www/cgi-bin/peer
      chmod +x /www/cgi-bin/peer
      exec httpd -f -p 8080 -h /www
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: $client
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: docker.io/library/busybox:1.36, imagePullPolicy: Never, command: [sleep, "3600"]}
YAML
k -n "$ns" wait --for=condition=Ready pod/echo-peer pod/client --timeout=180s >/dev/null \
  || fail "pods not Ready: $(k -n "$ns" get pods -o wide)"
server_ip=$(k -n "$ns" get pod echo-peer -o jsonpath='{.status.podIP}')
client_ip=$(k -n "$ns" get pod client -o jsonpath='{.status.podIP}')
seen=""
for _ in $(seq 30); do
  seen=$(k -n "$ns" exec client -- sh -c \
    "printf 'GET /cgi-bin/peer HTTP/1.0\r\n\r\n' | nc -w 3 $server_ip 8080 | tail -1" 2>/dev/null | tr -d '\r' | sed 's/^\[::ffff:\(.*\)\]$/\1/') || true
  [ -n "$seen" ] && break
  sleep 1
done
[ "$seen" = "$client_ip" ] || fail "client $client_ip on $client reached $server_ip on $server as '$seen'"
echo "smoke: pod $client_ip ($client) -> pod $server_ip ($server): the server saw $seen"

# Pod -> node across nodes.
server_node_ip=$(k get node "$server" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
k -n "$ns" exec client -- ping -c 1 -W 3 "$server_node_ip" >/dev/null \
  || fail "pod on $client cannot reach node $server at $server_node_ip"
echo "smoke: pod ($client) -> node $server ($server_node_ip) ok"

# Cluster DNS from the client's node (its agent answers on kube-dns' address), short name
# through the pod's search path.
dns=$(k -n "$ns" exec client -- nslookup kubernetes.default.svc.cluster.local 2>&1) || true
case "$dns" in
  *"Address: 10.96.0.1"*) ;;
  *) fail "cluster DNS on $client: $dns" ;;
esac
ping=$(k -n "$ns" exec client -- ping -c 1 -W 1 kubernetes.default 2>&1) || true
case "$ping" in
  *"(10.96.0.1)"*) ;;
  *) fail "kubernetes.default through the search path on $client: $ping" ;;
esac
echo "smoke: cluster DNS on $client answers kubernetes.default (10.96.0.1)"

# A Deployment with two replicas per node lands on every node.
replicas=$((2 * ${#nodes[@]}))
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: docker.io/library/busybox:1.36
        imagePullPolicy: Never
        command: [sleep, "3600"]
        resources: {requests: {cpu: 50m, memory: 16Mi}}
YAML
k -n "$ns" rollout status deployment/spread --timeout=300s >/dev/null \
  || fail "deployment not available: $(k -n "$ns" get pods -o wide)"
mapfile -t used < <(k -n "$ns" get pods -l app=spread --field-selector=status.phase=Running \
  -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
[ ${#used[@]} = ${#nodes[@]} ] || fail "deployment spread over ${used[*]} only, not ${nodes[*]}"
echo "smoke: deployment of $replicas replicas runs on every node: ${used[*]}"
echo "smoke: ok"
