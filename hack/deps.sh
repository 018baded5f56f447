#!/usr/bin/env bash
# Installs what building and testing podlet needs on Debian 12 (run as root). Idempotent.
set -euo pipefail
pkgs=(busybox-static libseccomp-dev pkg-config util-linux gcc make tar gzip file libnftnl-dev libmnl-dev nftables containernetworking-plugins iproute2 apparmor python3-kubernetes python3-cryptography curl bsdutils skopeo)
mapfile -t missing < <(bash "$(dirname "$0")/missing-packages.sh" "${pkgs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# etcd for the etcd-backend tests: Debian's etcd-server binary, unpacked into the build tree
# rather than installed (the package would start a machine-wide etcd service).
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$root/target/tools/usr/bin/etcd" ]; then
  mkdir -p "$root/target/tools/debs"
  (cd "$root/target/tools/debs" && apt-get download -qq -o APT::Sandbox::User=root etcd-server)
  dpkg-deb -x "$root"/target/tools/debs/etcd-server_*.deb "$root/target/tools"
fi
# A registry for the pull tests: Debian's docker-registry binary, unpacked the same way (the
# package would start a machine-wide registry on :5000).
if [ ! -x "$root/target/tools/usr/bin/docker-registry" ]; then
  mkdir -p "$root/target/tools/debs"
  (cd "$root/target/tools/debs" && apt-get download -qq -o APT::Sandbox::User=root docker-registry)
  dpkg-deb -x "$root"/target/tools/debs/docker-registry_*.deb "$root/target/tools"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain >= 1.89 (rustup), then run this again" >&2
  exit 1
fi
v=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -1)" != 1.89.0 ]; then
  echo "rustc $v is too old: podlet needs >= 1.89" >&2
  exit 1
fi
