#!/usr/bin/env bash
# Builds the lab's libvirt box `podlet/bookworm` where no box can be downloaded (run as root):
# a debootstrap'd Debian 12 minbase with systemd, sshd, AppArmor and the libraries podlet links,
# in an ext4 image made without loop devices (`mkfs.ext4 -d`), booted by direct kernel boot.
# The box and its kernel are cached in $PODLET_LAB_CACHE (default /var/cache/podlet-lab) and the
# box is added to vagrant once; later runs take a second. Machines that can download boxes may
# use PODLET_BOX=debian/bookworm64 instead.
set -euo pipefail
cache=${PODLET_LAB_CACHE:-/var/cache/podlet-lab}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
name=podlet/bookworm
box=$cache/podlet-bookworm.box

build() {
  local rootfs tmp
  tmp=$(mktemp -d /tmp/podlet-box-XXXXXX)
  trap 'rm -rf "$tmp"' RETURN
  rootfs=$tmp/rootfs
  echo "box: debootstrap bookworm (about 2 minutes)"
  debootstrap --variant=minbase \
    --include=systemd-sysv,udev,kmod,openssh-server,sudo,ifupdown,isc-dhcp-client,netbase,iproute2,procps,linux-image-amd64,apparmor,curl,ca-certificates,libseccomp2,libnftnl11,libmnl0,rsync \
    bookworm "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  echo podlet-lab >"$rootfs/etc/hostname"
  echo '/dev/vda / ext4 rw,relatime 0 1' >"$rootfs/etc/fstab"
  printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' >"$rootfs/etc/network/interfaces"
  chroot "$rootfs" useradd -m -s /bin/bash vagrant
  chroot "$rootfs" passwd -d vagrant >/dev/null
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/vagrant"
  chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
  install -d -m 0700 "$rootfs/home/vagrant/.ssh"
  # Vagrant's well-known insecure key: vagrant replaces it with a key of its own at first boot.
  install -m 0600 "$(gem contents vagrant 2>/dev/null | grep '/keys/vagrant.pub$')" "$rootfs/home/vagrant/.ssh/authorized_keys"
  chroot "$rootfs" chown -R vagrant:vagrant /home/vagrant/.ssh
  echo 'UseDNS no' >"$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
  # No package cache or logs in the image; journald in memory keeps the guests' disks quiet.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  mkdir -p "$rootfs/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' >"$rootfs/etc/systemd/journald.conf.d/volatile.conf"
  install -d -m 0755 "$cache"
  cp "$(readlink -f "$rootfs/vmlinuz")" "$cache/vmlinuz"
  cp "$(readlink -f "$rootfs/initrd.img")" "$cache/initrd.img"
  chmod 0644 "$cache/vmlinuz" "$cache/initrd.img"
  echo "box: ext4 image"
  truncate -s 8G "$tmp/root.raw"
  mkfs.ext4 -q -F -L root -d "$rootfs" "$tmp/root.raw"
  qemu-img convert -O qcow2 "$tmp/root.raw" "$tmp/box.img"
  echo '{"provider":"libvirt","format":"qcow2","virtual_size":8}' >"$tmp/metadata.json"
  cat >"$tmp/Vagrantfile" <<EOF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = "$cache/vmlinuz"
    lv.initrd = "$cache/initrd.img"
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 apparmor=1 security=apparmor"
  end
end
EOF
  tar -C "$tmp" -cf "$box.tmp" metadata.json Vagrantfile box.img
  mv "$box.tmp" "$box"
}

install -d -m 0755 "$cache"
# One build at a time: hack/test.sh starts one early, vagrant/test.sh waits for it here.
exec 9>"$cache/.lock"
flock 9
[ -s "$box" ] || build
if ! vagrant box list 2>/dev/null | grep -q "^$name "; then
  vagrant box add --force --name "$name" "$box" >/dev/null
fi
echo "box $name ready ($box)"
