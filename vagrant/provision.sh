#!/usr/bin/env bash
# Provisions one lab node (vagrant runs it as root in the guest):
#   provision.sh control-plane|worker NODE_IP CONTROL_PLANE_IP
# from /tmp/podlet-payload (the Vagrantfile's staged files): installs podlet and its CNI
# plugins, imports the busybox image, and starts podlet as a systemd unit. The control plane
# uses the lab's CA (so workers and the host trust it from the start) and publishes the
# lab's bootstrap token; workers join with that token.
set -euo pipefail
role=$1 ip=$2 cp=$3
p=/tmp/podlet-payload
need=()
for pkg in libseccomp2 libnftnl11 libmnl0 apparmor curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then # boxes other than podlet/bookworm
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
install -m 0755 "$p/podlet" /usr/local/bin/podlet
install -d /usr/local/lib/podlet/cni /etc/podlet/manifests
install -m 0755 "$p"/{bridge,host-local,loopback,portmap} /usr/local/lib/podlet/cni/
install -m 0644 "$p/ca.crt" /etc/podlet/ca.crt
podlet image import "$p/busybox.tar" >/dev/null
args="--node-ip $ip"
if [ "$role" = control-plane ]; then
  pki=/var/lib/podlet/control-plane/pki
  install -d -m 0700 "$pki"
  install -m 0644 "$p/ca.crt" "$pki/ca.crt"
  install -m 0600 /tmp/podlet-ca.key "$pki/ca.key"
  rm -f /tmp/podlet-ca.key
  args+=" --apiserver-listen $ip:6443"
else
  args+=" --server https://$cp:6443 --token $(cat "$p/token") --certificate-authority /etc/podlet/ca.crt"
fi
echo "PODLET_ARGS=$args" >/etc/default/podlet
install -m 0644 "$p/podlet.service" /etc/systemd/system/podlet.service
systemctl daemon-reload
systemctl enable --quiet podlet.service
systemctl restart podlet.service
if [ "$role" = control-plane ]; then
  api=(curl -sS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
  for _ in $(seq 300); do
    "${api[@]}" -f "https://$ip:6443/readyz" >/dev/null 2>&1 && break
    sleep 1
  done
  "${api[@]}" -f "https://$ip:6443/readyz" >/dev/null
  IFS=. read -r id secret <"$p/token"
  code=$("${api[@]}" -o /tmp/podlet-token.out -w '%{http_code}' -H 'Content-Type: application/json' \
    -X POST "https://$ip:6443/api/v1/namespaces/kube-system/secrets" -d @- <<JSON
{"apiVersion":"v1","kind":"Secret","type":"bootstrap.kubernetes.io/token",
 "metadata":{"name":"bootstrap-token-$id","namespace":"kube-system"},
 "stringData":{"token-id":"$id","token-secret":"$secret","usage-bootstrap-authentication":"true"}}
JSON
  )
  case $code in
    201 | 409) ;;
    *) echo "creating the bootstrap token: HTTP $code: $(cat /tmp/podlet-token.out)" >&2; exit 1 ;;
  esac
  rm -f /tmp/podlet-token.out
fi
rm -rf "$p"
echo "$(hostname): podlet running ($role, $ip)"
