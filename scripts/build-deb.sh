#!/usr/bin/env bash
# build-deb.sh (make deb): builds the Debian packages into target/debian with dpkg-deb over a
# staged tree.
#
#   clusterware       the head: clusterware-head, the admin commands, scyld-mkinitramfs,
#                     scyld-modimg under /opt/scyld/clusterware/bin (linked into /usr/bin and
#                     /usr/sbin), the static agent at /opt/scyld/clusterware/libexec/clusterware-node
#                     for the image tools, clusterware.service, man pages, bash/zsh/fish
#                     completions, README and an annotated base.ini in /usr/share/doc/clusterware.
#   clusterware-node  the static agent as /usr/sbin/clusterware-node and clusterware-node.service,
#                     for node images built by hand.
#
# Man pages and completions come from the commands' clap definitions (cw-docgen), so they say
# what --help says. The static agent must have been built first (make agent; make deb does).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
CARGO=${CARGO:-cargo}
out="$top/target/debian"
# Cargo's target directory (CARGO_TARGET_DIR, if set, as cargo reads it: relative to here).
tdir=${CARGO_TARGET_DIR:-target}
agent=$tdir/x86_64-unknown-linux-gnu/agent/clusterware-node
[ -x "$agent" ] || { echo "build-deb: $agent is missing: run make agent (make deb does)" >&2; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
debver="$version-1"
arch=$(dpkg --print-architecture)
maintainer="ClusterWare multi-head developers <clusterware@localhost>"
prefix=/opt/scyld/clusterware
# Section 8: what runs as root on a head (the daemon, database membership, installation).
admin_cmds="clusterware-head managedb scyld-install"
user_cmds="scyld-nodectl scyld-clusterctl scyld-imgctl scyld-bootctl scyld-mkinitramfs scyld-modimg"

echo "build-deb: building release binaries"
$CARGO build --release -p clusterware-head -p clusterware-cli -p clusterware-initramfs \
  -p clusterware-image-tools -p clusterware-docgen
rm -rf "$out"
mkdir -p "$out"
"$tdir/release/cw-docgen" --out "$out/docs"

# Man pages (gzip -9n: reproducible) and completions of the commands `$1` names, into stage `$2`.
docs() {
  local stage=$1; shift
  local cmd f
  for cmd in "$@"; do
    for f in "$out"/docs/man/man[18]/"$cmd".[18] "$out"/docs/man/man[18]/"$cmd"-*.[18]; do
      [ -f "$f" ] || continue
      local sect=${f##*.}
      install -D -m 644 "$f" "$stage/usr/share/man/man$sect/${f##*/}"
      gzip -9n "$stage/usr/share/man/man$sect/${f##*/}"
    done
    install -D -m 644 "$out/docs/completions/bash/$cmd" "$stage/usr/share/bash-completion/completions/$cmd"
    install -D -m 644 "$out/docs/completions/zsh/_$cmd" "$stage/usr/share/zsh/vendor-completions/_$cmd"
    install -D -m 644 "$out/docs/completions/fish/$cmd.fish" "$stage/usr/share/fish/vendor_completions.d/$cmd.fish"
  done
}

# /usr/share/doc/PKG: copyright and changelog, as Debian policy asks.
doc_base() {
  local stage=$1 pkg=$2
  local d="$stage/usr/share/doc/$pkg"
  install -d "$d"
  cat >"$d/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: clusterware
Comment: ClusterWare multi-head, an open implementation of multi-head cluster management.

Files: *
Copyright: ClusterWare multi-head developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
  {
    echo "$pkg ($debver) unstable; urgency=medium"
    echo
    echo "  * Built from $(git -C "$top" describe --always --dirty 2>/dev/null || echo "a source tree")."
    echo
    echo " -- $maintainer  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}")"
  } | gzip -9n >"$d/changelog.Debian.gz"
}

# DEBIAN/control of stage `$1` for package `$2`, with the library dependencies of its ELF files.
control() {
  local stage=$1 pkg=$2 depends=$3 recommends=$4 description=$5 suggests=${6:-}
  local shlibs tmp elfs=()
  tmp=$(mktemp -d)
  mkdir "$tmp/debian"
  printf 'Source: clusterware\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$tmp/debian/control"
  while IFS= read -r f; do
    if file_is_dynamic "$f"; then elfs+=("-e$f"); fi
  done < <(find "$stage" -type f -perm -u+x)
  shlibs=""
  if [ ${#elfs[@]} -gt 0 ]; then
    shlibs=$(cd "$tmp" && dpkg-shlibdeps -O "${elfs[@]}" | sed -n 's/^shlibs:Depends=//p')
  fi
  rm -rf "$tmp"
  [ -n "$shlibs" ] && depends="$shlibs${depends:+, $depends}"
  install -d "$stage/DEBIAN"
  {
    echo "Package: $pkg"
    echo "Version: $debver"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    [ -n "$depends" ] && echo "Depends: $depends"
    [ -n "$recommends" ] && echo "Recommends: $recommends"
    [ -n "$suggests" ] && echo "Suggests: $suggests"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Homepage: file:///usr/share/doc/clusterware/README.md"
    echo "Description: $description"
  } >"$stage/DEBIAN/control"
}

# True for a dynamically linked ELF file (the static agent needs no libraries).
file_is_dynamic() {
  [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
  ! ldd "$1" 2>&1 | grep -qE 'not a dynamic executable|statically linked'
}

build() {
  local stage=$1 pkg=$2
  find "$stage" -type d -exec chmod 755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/${pkg}_${debver}_$arch.deb" >/dev/null
  echo "build-deb: $out/${pkg}_${debver}_$arch.deb ($(du -h "$out/${pkg}_${debver}_$arch.deb" | cut -f1))"
}

# --- clusterware ---
s="$out/stage/clusterware"
for cmd in $admin_cmds $user_cmds; do
  install -D -m 755 "$tdir/release/$cmd" "$s$prefix/bin/$cmd"
done
for cmd in $admin_cmds; do install -d "$s/usr/sbin"; ln -s "$prefix/bin/$cmd" "$s/usr/sbin/$cmd"; done
for cmd in $user_cmds; do install -d "$s/usr/bin"; ln -s "$prefix/bin/$cmd" "$s/usr/bin/$cmd"; done
install -D -m 755 "$agent" "$s$prefix/libexec/clusterware-node"
install -D -m 644 head/systemd/clusterware.service "$s/lib/systemd/system/clusterware.service"
docs "$s" $admin_cmds $user_cmds
doc_base "$s" clusterware
install -m 644 README.md ARCHITECTURE.md "$s/usr/share/doc/clusterware/"
install -D -m 644 head/base.ini.example "$s/usr/share/doc/clusterware/examples/base.ini"
install -d "$s/DEBIAN"
install -m 755 scripts/deb/clusterware.postinst "$s/DEBIAN/postinst"
install -m 755 scripts/deb/clusterware.prerm "$s/DEBIAN/prerm"
install -m 755 scripts/deb/clusterware.postrm "$s/DEBIAN/postrm"
control "$s" clusterware "etcd-server, etcd-client, ipxe, ipmitool" "kmod" \
"ClusterWare multi-head: head node daemon and administrator commands
 Cooperating head nodes share one replicated etcd database; any head answers
 DHCP/PXE for any compute node, serves its boot files (verified by SHA-256 and
 fetched from peer heads when missing), parents its agent, rebalances nodes and
 survives the loss of a head. This package holds the head daemon
 (clusterware.service), scyld-install, managedb, scyld-nodectl, scyld-clusterctl,
 scyld-imgctl, scyld-bootctl, scyld-mkinitramfs and scyld-modimg under
 /opt/scyld/clusterware, and the static node agent the image tools put into
 initramfs and root images. Run scyld-install to set up a head." \
"shim-signed, grub-efi-amd64-signed, shim-helpers-amd64-signed"
build "$s" clusterware

# --- clusterware-node ---
s="$out/stage/clusterware-node"
install -D -m 755 "$agent" "$s/usr/sbin/clusterware-node"
install -D -m 644 agent/systemd/clusterware-node.service "$s/lib/systemd/system/clusterware-node.service"
docs "$s" clusterware-node
doc_base "$s" clusterware-node
install -d "$s/DEBIAN"
install -m 755 scripts/deb/clusterware-node.postinst "$s/DEBIAN/postinst"
install -m 755 scripts/deb/clusterware-node.prerm "$s/DEBIAN/prerm"
install -m 755 scripts/deb/clusterware-node.postrm "$s/DEBIAN/postrm"
control "$s" clusterware-node "" "" \
"ClusterWare multi-head: compute-node agent
 The static clusterware-node agent and its systemd service, for node root
 images built by hand: it keeps the node's head list, pushes status to its
 parent head, fails over to the next head when the parent dies, and runs the
 heads' fetch_hosts and update_keys scripts. No runtime dependencies."
build "$s" clusterware-node
rm -rf "$out/stage"
