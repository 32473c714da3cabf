#!/usr/bin/env bash
# `make run`: starts a solo head on the embedded database on 127.0.0.1, registers a few demo
# nodes the first time, prints commands to try, and keeps the head in the foreground
# (Ctrl-C stops it). State lives in ./run (RUN_DIR) and survives restarts.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/target/debug"
dir=${RUN_DIR:-$top/run}
port=${PORT:-8080}
tls_port=${TLS_PORT:-8443}
mkdir -p "$dir"
cfg="$dir/base.ini"
if [ ! -f "$cfg" ]; then
  pass=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  umask 077
  cat > "$cfg" <<INI
# Demo head created by make run. Same format as /opt/scyld/clusterware/conf/base.ini.
database.type = embedded
database.admin_pass = $pass
database.path = $dir/db/cluster.redb
head.name = demo-head
head.ip = 127.0.0.1
head.bind = 127.0.0.1
head.port = $port
head.tls_port = $tls_port
logging.dir = $dir/log
local_files.path = $dir/storage
INI
fi
chmod 600 "$cfg"
# A run dir from before HTTPS: give it its HTTPS port.
grep -q '^head.tls_port' "$cfg" || echo "head.tls_port = $tls_port" >>"$cfg"
port=$(sed -n 's/^head.port *= *//p' "$cfg")
tls_port=$(sed -n 's/^head.tls_port *= *//p' "$cfg")
export CLUSTERWARE_CONFIG="$cfg"

"$bin/clusterware-head" --config "$cfg" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' INT TERM
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/api/v1/health" 2>/dev/null | grep -q '"state":"serving"'; then break; fi
  if ! kill -0 $pid 2>/dev/null; then
    echo "the head did not start (see above); if port $port or $tls_port is busy, try: PORT=8081 TLS_PORT=8444 RUN_DIR=\$PWD/run2 make run" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$("$bin/scyld-nodectl" ls)" ]; then
  # Demo nodes on loopback addresses, so that simulated agents can report for them.
  "$bin/scyld-nodectl" create --count 4 mac=52:54:00:00:00:01 ip=127.54.0.1 _status_secs=5 >/dev/null
  "$bin/scyld-nodectl" -i 'n[2-3]' set rack=2 >/dev/null
fi
# Four simulated compute nodes (the real agent code, one per node) report to the head.
sim=""
if "$bin/scyld-nodectl" -i n0 ls -l 2>/dev/null | grep -q ' 127\.54\.0\.1 '; then
  # Each trades a one-time token for its certificate, as a network-booted node does with its
  # boot script's.
  (umask 077; "$bin/scyld-nodectl" -i 'n[0-3]' enroll --json >"$dir/sim-tokens.json")
  "$bin/clusterware-node" sim --nodes 4 --heads "https://127.0.0.1:$tls_port" --ca-file "$dir/tls/ca.pem" \
    --enroll-file "$dir/sim-tokens.json" --ip-start 127.54.0.1 \
    --mac-start 52:54:00:00:00:01 --dir "$dir/sim" --status-secs 5 >"$dir/log/sim.log" 2>&1 &
  sim=$!
fi
trap 'kill -TERM $pid ${sim} 2>/dev/null; wait $pid 2>/dev/null' INT TERM
# A named admin token for the web console, made afresh at each start (a token is shown only
# once): it goes to this terminal only, never to a file or another process's command line.
"$bin/scyld-clusterctl" tokens revoke console >/dev/null 2>&1 || true
console_token=$("$bin/scyld-clusterctl" tokens create console 2>/dev/null)
cat <<TXT

A solo ClusterWare head is running: its API on https://127.0.0.1:$tls_port (certificate from the
cluster CA in $dir/tls/ca.pem), boot files on http://127.0.0.1:$port (embedded database in $dir).
Its log: $dir/log/head_demo-head.log. In another shell, try:

  export CLUSTERWARE_CONFIG=$cfg PATH=$bin:\$PATH
  scyld-nodectl ls -l
  scyld-nodectl status
  scyld-nodectl -a script fetch_hosts
  scyld-nodectl -i 'n[0-1]' set _preferred_head=demo-head
  scyld-clusterctl heads ls -l
  managedb --heads

README.md's quick tour goes on from here (from $top).

The web console: https://127.0.0.1:$tls_port/console/ (the certificate is from the cluster CA in
$dir/tls/ca.pem: import it into the browser, or accept it once). Log in with this token
(named "console"; scyld-clusterctl tokens revoke console takes it back):

  $console_token

Press Ctrl-C to stop the head.
TXT
wait $pid
