#!/usr/bin/env bash
# Fetches Debian's current amd64 kernel package with `apt-get download` and unpacks it with
# `dpkg -x` into target/netboot/kernel (never installed into this machine). The network-boot
# tests boot it in QEMU. Prints the kernel's path.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest="$top/target/netboot"
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "fetch-kernel: apt-cache knows no linux-image-amd64 dependency; run apt-get update" >&2
  exit 1
fi
if [ -f "$dest/$pkg.done" ] && ls "$dest"/kernel/lib/modules/*/modules.dep >/dev/null 2>&1; then
  ls "$dest"/kernel/boot/vmlinuz-*
  exit 0
fi
rm -rf "$dest"
mkdir -p "$dest/kernel"
chmod 777 "$dest"   # apt-get download runs as _apt where it can
(cd "$dest" && apt-get download "$pkg" >/dev/null 2>&1)
dpkg -x "$dest"/"$pkg"_*.deb "$dest/kernel"
rm -f "$dest"/"$pkg"_*.deb
# modules.dep, as the kernel's own install would create it (scyld-mkinitramfs reads it).
ver=$(basename "$(ls -d "$dest"/kernel/lib/modules/*)")
depmod -b "$dest/kernel" "$ver"
touch "$dest/$pkg.done"
ls "$dest"/kernel/boot/vmlinuz-*
