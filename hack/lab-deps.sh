#!/usr/bin/env bash
# Installs what the Vagrant lab needs on Debian 12 (run as root; idempotent): vagrant with the
# libvirt provider, libvirt, QEMU (from bookworm-backports: it must match qemu-utils 10.0, which
# bookworm's QEMU 7.2 conflicts with), debootstrap for the box, kubectl for the host side.
set -euo pipefail
src=/etc/apt/sources.list.d/podlet-lab-backports.sources
if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
  cat >"$src" <<'EOF'
# Added by podlet's hack/lab-deps.sh: QEMU 10 for the Vagrant lab.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
fi
pkgs=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base debootstrap
  e2fsprogs qemu-system-x86 openssh-client rsync)
mapfile -t missing < <(bash "$(dirname "$0")/missing-packages.sh" "${pkgs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Services are not started by the package scripts: the lab starts libvirtd itself, by PID.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-system-data >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
