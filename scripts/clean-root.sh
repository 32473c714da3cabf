#!/usr/bin/env bash
# clean-root.sh: runs a command in a fresh clone of this repository inside a pristine Debian root,
# so that a step that only works because something was installed by hand fails here as it fails on
# a new machine. `make test-clean` and CI (.ci/run) use it.
#
#   scripts/clean-root.sh [--keep] [--refresh] [--rev REV] [--] [COMMAND ...]   (default: make test)
#
# - The root is this machine's own Debian release, made with `debootstrap --variant=minbase` from
#   the mirror this machine's apt sources name (read at run time, never written into the
#   repository), plus `make`, which the README's commands need to exist at all. It is cached in
#   $CLEAN_ROOT_CACHE (default /var/tmp/clusterware-clean-root) and copied afresh for every run;
#   --refresh builds it again. The root gets this machine's apt sources, resolv.conf and hosts,
#   and the local CA certificates it trusts (/usr/local/share/ca-certificates: a site's proxy to
#   the package registries may need them; Debian's ca-certificates adds them to the bundle when
#   `make` installs it).
# - The Rust toolchain is bound in read-only at the same paths (rustup's and cargo's bin
#   directories); cargo's registry cache and apt's package cache are shared between runs (they
#   hold downloads, not installed state).
# - The clone is of REV (default HEAD: what is committed, not the work tree) and the command runs
#   in it as root, in its own mount and PID namespaces: when it ends, every process it left is
#   killed and every mount is gone. Processes still running when the command ends, and network
#   namespaces it left, are listed and fail the run: tests must leave nothing behind.
# - --keep keeps the run's directory (printed at the end) for a look; otherwise it is deleted.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLEAN_ROOT_CACHE:-/var/tmp/clusterware-clean-root}
keep=0 refresh=0 rev=HEAD
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --refresh) refresh=1 ;;
    --rev) rev=${2:?--rev needs a revision}; shift ;;
    --help|-h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "clean-root: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || set -- make test

say() { echo "clean-root: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
for tool in debootstrap unshare git; do
  if ! command -v "$tool" >/dev/null; then
    case "$tool" in
      debootstrap) pkg=debootstrap ;; unshare) pkg=util-linux ;; git) pkg=git ;;
    esac
    say "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2
  fi
done
commit=$(git -C "$top" rev-parse --verify "$rev^{commit}") || die "no commit $rev in $top"

# This machine's release and the mirror its apt sources name for it.
. /etc/os-release
codename=${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}
arch=$(dpkg --print-architecture)
sources=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
mirror=""
for f in "${sources[@]}"; do
  [ -f "$f" ] || continue
  case "$f" in
    *.sources) # deb822: the first enabled "deb" stanza whose suites include the release
      m=$(awk -v s="$codename" 'BEGIN { RS = ""; FS = "\n" }
        { uris = ""; suites = ""; types = ""; enabled = "yes"
          for (i = 1; i <= NF; i++) {
            line = $i; key = tolower(line); sub(/:.*/, "", key); sub(/^[^:]*:[ \t]*/, "", line)
            if (key == "uris") uris = line; else if (key == "suites") suites = line
            else if (key == "types") types = line; else if (key == "enabled") enabled = tolower(line)
          }
          if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " s " ") && enabled != "no") {
            split(uris, u, /[ \t]+/); print u[1]; exit
          } }' "$f") ;;
    *) # one-line: deb [options] URI SUITE COMPONENTS
      m=$(awk -v s="$codename" '$1 == "deb" { i = 2
          if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) == s) { print $i; exit } }' "$f") ;;
  esac
  if [ -n "$m" ]; then mirror=$m; break; fi
done
[ -n "$mirror" ] || die "no apt source for $codename in ${sources[*]}: cannot tell which mirror to debootstrap from"

mkdir -p "$cache"
base="$cache/base-$codename-$arch"
exec 9>"$cache/lock"
flock 9
if [ "$refresh" = 1 ]; then rm -rf --one-file-system "$base"; fi
if [ ! -f "$base/.clean-root-done" ]; then
  say "creating the base root for $codename/$arch from $mirror in $base (once; cached)"
  rm -rf --one-file-system "$base.tmp"
  debootstrap --variant=minbase --arch="$arch" --include=make "$codename" "$base.tmp" "$mirror" >&2 \
    || die "debootstrap failed (its log: $base.tmp/debootstrap/debootstrap.log)"
  # apt in the root reads what this machine's apt reads: its sources (with the keyrings they
  # name) and its settings for fetching (proxies, validity checks), but none of its hooks.
  rm -f "$base.tmp/etc/apt/sources.list"
  for f in "${sources[@]}"; do
    [ -f "$f" ] || continue
    cp "$f" "$base.tmp$f"
    for key in $(sed -n 's/.*[Ss]igned-[Bb]y[:=][ \t]*\([^] \t]*\).*/\1/p' "$f"); do
      if [ -f "$key" ] && [ ! -e "$base.tmp$key" ]; then mkdir -p "$(dirname "$base.tmp$key")"; cp "$key" "$base.tmp$key"; fi
    done
  done
  for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && [ ! -e "$base.tmp$f" ] || continue
    if grep -q 'Acquire::' "$f" && ! grep -qi 'invoke' "$f"; then cp "$f" "$base.tmp$f"; fi
  done
  touch "$base.tmp/.clean-root-done"
  mv "$base.tmp" "$base"
fi
flock -u 9

run=$(mktemp -d "$cache/run.XXXXXX")
root="$run/root"
cleanup() {
  # The namespaces are gone when unshare returns, and their mounts with them; delete nothing
  # through a mount that is somehow still there.
  if awk -v r="$run" 'index($5, r) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    say "mounts are still there under $run; not deleting it"
  elif [ "$keep" = 1 ]; then
    say "kept $run"
  else
    rm -rf --one-file-system "$run"
  fi
}
trap cleanup EXIT
say "copying the base root to $root"
cp -a "$base" "$root"
# As in Debian's container images: packages do not start their services (prometheus would,
# and outlive the run); the tests start what they need themselves.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cat /etc/resolv.conf >"$root/etc/resolv.conf"
cat /etc/hosts >"$root/etc/hosts"
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
echo "$commit" >"$root/etc/clusterware-clean-root"
git clone -q --no-checkout "$top" "$root/src/clusterware"
git -C "$root/src/clusterware" checkout -q --detach "$commit"
say "$(git -C "$top" log -1 --format='%h %s' "$commit")"

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -x "$cargo_home/bin/cargo" ] || die "no cargo in $cargo_home/bin: install Rust with rustup first"
[ -d "$rustup_home/toolchains" ] || die "no rustup toolchains in $rustup_home"
mkdir -p "$cargo_home/registry" "$cache/apt-archives/partial"
for d in "$rustup_home" "$cargo_home/bin" "$cargo_home/registry"; do mkdir -p "$root$d"; done

say "running in the clean root: $*"
# Runs as process 1 of the new PID namespace: when it exits, the kernel kills whatever is left.
inner=$(cat <<'INNER'
set -u
root=$1 rustup_home=$2 cargo_home=$3 apt_cache=$4
shift 4
# The root is a mount point (ip netns exec makes / a slave mount and needs one), with its own
# /proc (this PID namespace's), the machine's /sys and /dev, and a fresh /run.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
ro() { mount --bind "$1" "$root$1" && mount -o remount,bind,ro "$root$1"; }
ro "$rustup_home"
ro "$cargo_home/bin"
mount --bind "$cargo_home/registry" "$root$cargo_home/registry"
mount --bind "$apt_cache" "$root/var/cache/apt/archives"
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
  RUSTUP_HOME="$rustup_home" CARGO_HOME="$cargo_home" \
  PATH="$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  /bin/bash -c 'cd /src/clusterware && exec "$@"' command "$@"
rc=$?
# What the command left: processes of this namespace (but this shell), and network namespaces.
left=0
for p in "$root"/proc/[0-9]*; do
  pid=${p##*/}
  [ "$pid" = 1 ] && continue
  read -r stat <"$p/stat" 2>/dev/null || continue
  state=${stat##*) }; state=${state%% *}
  [ "$state" = Z ] && continue
  cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)
  [ -n "$cmd" ] || continue
  echo "clean-root: still running after the command: pid $pid: ${cmd:0:200}" >&2
  left=1
done
if [ -d "$root/run/netns" ] && [ -n "$(ls -A "$root/run/netns")" ]; then
  echo "clean-root: network namespaces left behind: $(ls "$root/run/netns" | tr '\n' ' ')" >&2
  left=1
fi
if [ "$left" = 1 ] && [ "$rc" = 0 ]; then
  echo "clean-root: the command succeeded but left the above behind: that fails the run" >&2
  rc=1
fi
exit $rc
INNER
)
set +e
unshare --mount --pid --fork --propagation private -- bash -c "$inner" inner "$root" "$rustup_home" \
  "$cargo_home" "$cache/apt-archives" "$@" </dev/null
rc=$?
set -e
say "the command exited with $rc"
exit $rc
