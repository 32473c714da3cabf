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

check "apt-get remove stops the head and removes the programs" sh "
  pid=\$(cat $prefix/conf/clusterware-head.pid) && apt-get remove -y -q clusterware clusterware-node &&
  ! kill -0 \$pid 2>/dev/null && [ ! -e /usr/bin/scyld-nodectl ] && [ ! -e $prefix/bin ] && [ ! -e /usr/sbin/clusterware-node ]"
check "configuration, database and logs stay after remove" sh "
  [ -s $prefix/conf/base.ini ] && [ -d $prefix/db ] && [ -d /var/log/clusterware ] &&
  dpkg -s clusterware | grep -q '^Status: deinstall ok config-files'"
check "apt-get purge removes them" sh "
  apt-get purge -y -q clusterware clusterware-node && [ ! -e $prefix ] && [ ! -e /var/log/clusterware ] &&
  ! dpkg -s clusterware 2>/dev/null | grep -q '^Status: .* installed'"

echo "packages: $passed passed, $failed failed"
[ "$failed" = 0 ]
