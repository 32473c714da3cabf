#!/usr/bin/env bash
# test-packages.sh (make test-packages): installs the packages of make deb with apt-get, uses them
# as an administrator would (commands on PATH, man pages, completions, scyld-install with the
# packaged paths, managedb --heads, scyld-nodectl), then removes them (configuration and data
# stay) and purges them (nothing stays). It changes the system, so it runs only in the clean root
# of scripts/clean-root.sh (make test-clean).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ ! -f /etc/clusterware-clean-root ]; then
  echo "test-packages: this installs and purges packages and /opt/scyld/clusterware: it runs only inside the clean root (make test-clean)" >&2
  exit 2
fi
prefix=/opt/scyld/clusterware
port=8099
tls_port=8499
admin_cmds="clusterware-head managedb scyld-install"
user_cmds="scyld-nodectl scyld-clusterctl scyld-imgctl scyld-bootctl scyld-mkinitramfs scyld-modimg"
passed=0 failed=0
export DEBIAN_FRONTEND=noninteractive

# check WHAT COMMAND...: one numbered result; a failure shows the command's output.
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok $((passed + failed)) - $what"
  else
    failed=$((failed + 1))
    echo "not ok $((passed + failed)) - $what"
    printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
  fi
}
# Shell snippets for check.
sh() { bash -c "$1"; }
head_pid() { cat "$prefix/conf/clusterware-head.pid" 2>/dev/null; }
stop_head() {
  local pid
  pid=$(head_pid) || return 0
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  return 0
}
trap stop_head EXIT

debs=(target/debian/clusterware_*.deb target/debian/clusterware-node_*.deb)
check "the packages exist (make deb)" ls "${debs[@]}"
check "apt-get installs both packages with their dependencies" apt-get install -y -q "${debs[@]/#/./}"
check "the head's dependencies are installed" dpkg -s etcd-server etcd-client ipxe ipmitool

for cmd in $admin_cmds $user_cmds; do
  check "$cmd is on PATH, links to $prefix/bin and prints its version" sh "
    p=\$(command -v $cmd) && [ \"\$(readlink -f \"\$p\")\" = $prefix/bin/$cmd ] && $cmd --version | grep -qx '$cmd [0-9].*'"
done
check "the static agent for the image tools is installed" sh "
  [ -x $prefix/libexec/clusterware-node ] && ldd $prefix/libexec/clusterware-node 2>&1 | grep -qE 'not a dynamic|statically linked'"
check "clusterware-node (package clusterware-node) is static and runs" sh "
  ldd /usr/sbin/clusterware-node 2>&1 | grep -qE 'not a dynamic|statically linked' && clusterware-node --version"

for cmd in $admin_cmds $user_cmds clusterware-node; do
  check "man page and bash, zsh, fish completions of $cmd" sh "
    page=\$(ls /usr/share/man/man[18]/$cmd.[18].gz) && zcat \"\$page\" | grep -q '^\\.TH' &&
    [ -s /usr/share/bash-completion/completions/$cmd ] && [ -s /usr/share/zsh/vendor-completions/_$cmd ] &&
    [ -s /usr/share/fish/vendor_completions.d/$cmd.fish ]"
done
check "subcommands have man pages (scyld-nodectl-ls, scyld-clusterctl-files-upload, managedb-failover-enable)" sh "
  ls /usr/share/man/man1/scyld-nodectl-ls.1.gz /usr/share/man/man1/scyld-clusterctl-files-upload.1.gz \
     /usr/share/man/man8/managedb-failover-enable.8.gz"
check "the bash completion loads and completes scyld-nodectl's subcommands" sh "
  . /usr/share/bash-completion/completions/scyld-nodectl && complete -p scyld-nodectl &&
  COMP_WORDS=(scyld-nodectl l) COMP_CWORD=1 COMP_LINE='scyld-nodectl l' COMP_POINT=15 &&
  \$(complete -p scyld-nodectl | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p') scyld-nodectl l scyld-nodectl &&
  printf '%s\n' \"\${COMPREPLY[@]}\" | grep -qx ls"
check "scyld-nodectl completion bash prints the packaged script" sh "
  scyld-nodectl completion bash | cmp - /usr/share/bash-completion/completions/scyld-nodectl"
check "the units run packaged binaries and their documentation is installed" sh '
  for u in /lib/systemd/system/clusterware.service /lib/systemd/system/clusterware-node.service; do
    exe=$(sed -n "s/^ExecStart=\([^ ]*\).*/\1/p" "$u"); [ -x "$exe" ] || { echo "$u: $exe is missing"; exit 1; }
    for d in $(sed -n "s/^Documentation=//p" "$u"); do
      case "$d" in
        man:*) n=${d#man:}; page=${n%(*}; s=${n#*(}; s=${s%)}; f=/usr/share/man/man$s/$page.$s.gz ;;
        file://*) f=${d#file://} ;;
        *) f=$d ;;
      esac
      [ -e "$f" ] || { echo "$u: Documentation=$d: $f is missing"; exit 1; }
    done
  done'
check "the annotated base.ini is in the documentation" test -s /usr/share/doc/clusterware/examples/base.ini

# A refused installation leaves nothing behind.
check "scyld-install refuses a bad head name and creates nothing" sh "
  ! scyld-install --no-systemd --name 'bad name' --ip 127.0.0.1 --port $port --tls-port $tls_port && [ -z \"\$(ls -d $prefix/conf $prefix/db $prefix/storage /var/log/clusterware 2>/dev/null)\" ]"
check "scyld-install refuses a bad setting and creates nothing" sh "
  ! scyld-install --no-systemd --name pkghead --ip 127.0.0.1 --port $port --tls-port $tls_port --set rebalance.interval=0 &&
  [ -z \"\$(ls -d $prefix/conf $prefix/db $prefix/storage /var/log/clusterware 2>/dev/null)\" ]"
check "scyld-install whose head cannot start removes what it created" sh "
  ! scyld-install --no-systemd --name pkghead --ip 127.0.0.1 --port $port --tls-port $tls_port --database etcd \
      --set database.etcd_binary=/nonexistent/etcd &&
  [ -z \"\$(ls -d $prefix/conf $prefix/db $prefix/storage /var/log/clusterware 2>/dev/null)\" ]"

# A real installation with the packaged paths.
check "scyld-install --no-systemd installs and starts a head" \
  scyld-install --no-systemd --name pkghead --ip 127.0.0.1 --port $port --tls-port $tls_port
check "the running head is the packaged daemon" sh "
  [ \"\$(readlink /proc/\$(cat $prefix/conf/clusterware-head.pid)/exe)\" = $prefix/bin/clusterware-head ]"
check "$prefix/bin/managedb --heads lists the head" sh "$prefix/bin/managedb --heads | grep -q pkghead"
check "scyld-nodectl creates and lists a node" sh "
  scyld-nodectl create mac=52:54:00:00:00:01 ip=10.54.0.1 && scyld-nodectl ls | grep -qx n0"
check "scyld-modimg build bakes in the packaged agent without --agent" sh "
  d=\$(mktemp -d) && mkdir -p \$d/root/sbin && install -m 755 /dev/null \$d/root/sbin/init &&
  scyld-modimg build --from \$d/root -o \$d/img && gzip -dc \$d/img | grep -aq usr/sbin/clusterware-node"

# An update from a file: the same build as the package's next revision (what a repository
# would bring), made here by changing the version in its control file.
upd=$(mktemp -d)
check "the next revision of the clusterware package is made for the update" sh "
  dpkg-deb -R target/debian/clusterware_*.deb $upd/pkg &&
  sed -i 's/^Version: \\(.*\\)-1\$/Version: \\1-2/' $upd/pkg/DEBIAN/control && grep -q '^Version: .*-2\$' $upd/pkg/DEBIAN/control &&
  dpkg-deb --root-owner-group -Zxz --build $upd/pkg $upd/clusterware_next.deb >/dev/null"
check "scyld-install --update refuses a file that is not a ClusterWare package and changes nothing" sh "
  v=\$(dpkg-query -W -f='\${Version}' clusterware) &&
  ! scyld-install --update --deb /etc/hostname 2>$upd/err && grep -q 'not a package of ClusterWare' $upd/err &&
  [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = \"\$v\" ]"
check "scyld-install --update installs it, restarts the head in place and waits until it serves" sh "
  v=\$(dpkg-query -W -f='\${Version}' clusterware) && pid=\$(cat $prefix/conf/clusterware-head.pid) &&
  scyld-install --update --deb $upd/clusterware_next.deb --json >$upd/out &&
  grep -q '\"restarted\": true' $upd/out && grep -q \"\\\"to\\\": \\\"\${v%-1}-2\\\"\" $upd/out &&
  [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = \"\${v%-1}-2\" ] &&
  [ \"\$(cat $prefix/conf/clusterware-head.pid)\" = \"\$pid\" ] && kill -0 \$pid && scyld-nodectl ls | grep -qx n0"
check "scyld-install --update with nothing newer keeps the head running" sh "
  pid=\$(cat $prefix/conf/clusterware-head.pid) && scyld-install --update --deb $upd/clusterware_next.deb | grep -q 'is up to date' &&
  [ \"\$(cat $prefix/conf/clusterware-head.pid)\" = \"\$pid\" ]"
rm -rf "$upd"
# An update from a package repository: a local one (file:) holding the revision after that.
repo=$(mktemp -d)
chmod 755 "$repo"
check "a package repository with the next revision is set up" sh "
  dpkg-deb -R target/debian/clusterware_*.deb $repo/pkg &&
  sed -i 's/^Version: \\(.*\\)-1\$/Version: \\1-3/' $repo/pkg/DEBIAN/control &&
  dpkg-deb --root-owner-group -Zxz --build $repo/pkg $repo/clusterware_next.deb >/dev/null && rm -rf $repo/pkg &&
  (cd $repo && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null) &&
  echo 'deb [trusted=yes] file:$repo ./' >/etc/apt/sources.list.d/clusterware-test.list"
check "scyld-install -u updates from the repository, restarts the head in place and waits until it serves" sh "
  v=\$(dpkg-query -W -f='\${Version}' clusterware) && pid=\$(cat $prefix/conf/clusterware-head.pid) &&
  scyld-install -u --json >$repo/out && grep -q '\"restarted\": true' $repo/out &&
  [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = \"\${v%-*}-3\" ] &&
  [ \"\$(cat $prefix/conf/clusterware-head.pid)\" = \"\$pid\" ] && kill -0 \$pid && scyld-nodectl ls | grep -qx n0"
rm -f /etc/apt/sources.list.d/clusterware-test.list
rm -rf "$repo"

check "apt-get remove stops the head and removes the programs" sh "
  pid=\$(cat $prefix/conf/clusterware-head.pid) && apt-get remove -y -q clusterware clusterware-node &&
  ! kill -0 \$pid 2>/dev/null && [ ! -e /usr/bin/scyld-nodectl ] && [ ! -e $prefix/bin ] && [ ! -e /usr/sbin/clusterware-node ]"
check "configuration, database and logs stay after remove" sh "
  [ -s $prefix/conf/base.ini ] && [ -d $prefix/db ] && [ -d /var/log/clusterware ] &&
  dpkg -s clusterware | grep -q '^Status: deinstall ok config-files'"
check "apt-get purge removes them" sh "
  apt-get purge -y -q clusterware clusterware-node && [ ! -e $prefix ] && [ ! -e /var/log/clusterware ] &&
  ! dpkg -s clusterware 2>/dev/null | grep -q '^Status: .* installed'"

# A join across releases: this tree built once more as the next release (its version raised in
# a copy of the tree; cargo's target directory shared, so that only the workspace's own crates build again),
# a head of that release started from the build, and a fresh machine with the packages of this
# release that joins it: refused without --update, with the command that does it; updated to
# the cluster's release first and joined with it.
x=$(mktemp -d)
chmod 755 "$x"
cur=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
next=$(echo "$cur" | awk -F. '{ print $1 "." $2 + 1 ".0" }')
cur_deb=$(ls target/debian/clusterware_*.deb)
stop_at() { # stop_at PREFIX...: the heads installed there, together (a cluster of two loses its
  # quorum when one stops), and wait up to 30 s until they are gone
  local p pid pids="" alive
  for p in "$@"; do
    pid=$(cat "$p/conf/clusterware-head.pid" 2>/dev/null) && kill -TERM "$pid" 2>/dev/null && pids="$pids $pid"
  done
  for _ in $(seq 300); do
    alive=0
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  echo "still running after 30 s:$pids"
  return 1
}
export -f stop_at
trap 'stop_at $prefix $x/cluster; rm -rf $x' EXIT
check "this tree builds as release $next in a copy (make deb)" sh "
  mkdir $x/src && tar -C $top --exclude=./target --exclude=./run --exclude=./.git -cf - . | tar -x -C $x/src &&
  sed -i '/^\[workspace.package\]/,/^\[/ s/^version *= *\"$cur\"/version = \"$next\"/' $x/src/Cargo.toml &&
  grep -qx 'version = \"$next\"' $x/src/Cargo.toml &&
  CARGO_TARGET_DIR=$top/target make -C $x/src deb >$x/build.log 2>&1 && ls $x/src/target/debian/clusterware_$next-1_*.deb ||
  { tail -n 30 $x/build.log; exit 1; }"
check "a head of release $next runs from that build" sh "
  $top/target/release/scyld-install --version | grep -qx 'scyld-install $next' &&
  $top/target/release/scyld-install --prefix $x/cluster --no-systemd --name nexthead --ip 127.0.0.2 --port 8199 \
    --tls-port 8599 --peer-port 12380 --set head.bind=127.0.0.2 >/dev/null &&
  sed -n 's/^database.admin_pass = //p' $x/cluster/conf/base.ini >$x/pass && [ -s $x/pass ] &&
  kill -0 \$(cat $x/cluster/conf/clusterware-head.pid)"
check "a fresh machine gets the clusterware package of release $cur" sh "
  apt-get install -y -q $top/$cur_deb >/dev/null && [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = $cur-1 ] &&
  [ ! -e $prefix/conf ]"
join="--no-systemd --name pkghead --ip 127.0.0.1 --port $port --tls-port $tls_port --peer-port 12381 --set head.bind=127.0.0.1 \
  --join 127.0.0.2:8199 --database-passwd-file $x/pass"
check "its join to the cluster of release $next is refused with the command to run, and nothing is installed" sh "
  ! scyld-install $join 2>$x/err && grep -q 'runs ClusterWare $next and this head $cur' $x/err &&
  grep -q 'scyld-install --update --join 127.0.0.2:8199 --database-passwd-file FILE' $x/err &&
  [ ! -e $prefix/conf ] && [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = $cur-1 ] || { cat $x/err; exit 1; }"
check "scyld-install --update --join brings it to release $next first, then joins with the updated program" sh "
  scyld-install --update --deb \$(ls $x/src/target/debian/clusterware_$next-1_*.deb) $join >$x/out 2>$x/err &&
  grep -q 'runs ClusterWare $next and this head $cur: updating before the join' $x/err &&
  grep -q 'joining with the updated scyld-install' $x/err && grep -q '(2 members now)' $x/out &&
  [ \"\$(dpkg-query -W -f='\${Version}' clusterware)\" = $next-1 ] && clusterware-head --version | grep -qx 'clusterware-head $next' &&
  managedb --heads | grep -q nexthead && scyld-nodectl ls >/dev/null || { cat $x/out $x/err; exit 1; }"
check "both heads stop" sh "stop_at $prefix $x/cluster"
check "apt-get purge removes the updated packages" sh "
  apt-get purge -y -q clusterware >/dev/null && [ ! -e $prefix ] && ! dpkg -s clusterware 2>/dev/null | grep -q '^Status: .* installed'"

echo "packages: $passed passed, $failed failed"
[ "$failed" = 0 ]
