#!/usr/bin/env bash
# Fetches Debian's signed Secure Boot boot loaders with `apt-get download` and unpacks them with
# `dpkg -x` into target/secureboot (never installed into this machine: shim-signed's postinst
# runs grub-install). The Secure Boot network-boot tests serve them: secure_boot.shim,
# secure_boot.grub and secure_boot.mokmanager point at the files. Prints the directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest="$top/target/secureboot"
pkgs=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed)
stamp=""
for p in "${pkgs[@]}"; do
  v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2; exit}')
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    echo "fetch-secureboot: apt-cache knows no $p; run apt-get update" >&2
    exit 1
  fi
  stamp="$stamp$p=$v;"
done
done_file="$dest/$(printf '%s' "$stamp" | sha256sum | cut -c1-16).done"
files=(usr/lib/shim/shimx64.efi.signed usr/lib/shim/mmx64.efi.signed
  usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed)
ok=1
for f in "${files[@]}"; do [ -f "$dest/root/$f" ] || ok=0; done
if [ -f "$done_file" ] && [ "$ok" = 1 ]; then
  echo "$dest/root"
  exit 0
fi
rm -rf "$dest"
mkdir -p "$dest/root"
chmod 777 "$dest"   # apt-get download runs as _apt where it can
(cd "$dest" && apt-get download "${pkgs[@]}" >/dev/null 2>&1)
for p in "${pkgs[@]}"; do
  dpkg -x "$dest"/"$p"_*.deb "$dest/root"
  rm -f "$dest"/"$p"_*.deb
done
for f in "${files[@]}"; do
  [ -f "$dest/root/$f" ] || { echo "fetch-secureboot: $f is not in the packages" >&2; exit 1; }
done
touch "$done_file"
echo "$dest/root"
