#!/usr/bin/env bash
# test-run.sh (make test-run): runs `make run` as a new user would, checks that the solo head
# serves and its four simulated nodes come up, then presses Ctrl-C (SIGINT to the whole process
# group, as a terminal does) and checks that everything it started has ended. In the clean root
# (make test-clean) this proves that make run installs all it needs.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
dir=$(mktemp -d)
port=${PORT:-8080}
log="$dir/make-run.log"
# The processes (not zombies) of process group $1 (procps is not in a minimal Debian).
group() {
  local p st
  for p in /proc/[0-9]*; do
    { read -r st <"$p/stat"; } 2>/dev/null || continue
    st=${st##*) }
    read -r state _ pgrp _ <<<"$st"
    [ "$pgrp" = "$1" ] && [ "$state" != Z ] && echo "${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
  done
}
fail() {
  echo "test-run: $*" >&2
  echo "--- make run printed:" >&2
  tail -n 40 "$log" >&2
  [ -n "${pid:-}" ] && kill -KILL -- "-$pid" 2>/dev/null
  exit 1
}

# Its own process group, like a shell's job: Ctrl-C goes to all of it.
setsid make run RUN_DIR="$dir/run" PORT="$port" >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 1800); do
  grep -q "Press Ctrl-C to stop the head" "$log" && break
  kill -0 "$pid" 2>/dev/null || fail "make run ended before the head was up"
  sleep 0.5
done
grep -q "Press Ctrl-C to stop the head" "$log" || fail "the head did not come up within 15 minutes"
export CLUSTERWARE_CONFIG="$dir/run/base.ini" PATH="$top/target/debug:$PATH"
scyld-nodectl ls | grep -qx n3 || fail "the demo nodes n0..n3 are not there"
up=0
for _ in $(seq 1 120); do
  up=$(scyld-nodectl status --json | grep -o '"state": *"up"' | wc -l)
  [ "$up" -ge 4 ] && break
  sleep 0.5
done
[ "$up" -ge 4 ] || fail "the four simulated nodes did not come up: $(scyld-nodectl status 2>&1)"
echo "test-run: make run serves on port $port; 4 demo nodes up"

kill -INT -- "-$pid"
for _ in $(seq 1 600); do
  [ -z "$(group "$pid")" ] && break
  sleep 0.1
done
left=$(group "$pid")
[ -z "$left" ] || fail "still running 60 s after Ctrl-C: $left"
wait "$pid"
rm -rf "$dir"
echo "test-run: Ctrl-C stopped the head and the simulated nodes"
