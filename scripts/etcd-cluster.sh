#!/usr/bin/env bash
# Run a 3-member etcd cluster on 127.0.0.1 for benchmarks.
#   scripts/etcd-cluster.sh start DIR BASEPORT   # waits until all 3 are healthy
#   scripts/etcd-cluster.sh stop  DIR BASEPORT
# Client ports BASEPORT..BASEPORT+2, peer ports BASEPORT+10..BASEPORT+12.
# Data in DIR/mN, logs in DIR/mN.log, pids in DIR/mN.pid. Use an empty DIR for
# a fresh cluster. ETCD_BIN overrides the binary (default: scripts/etcd-bin.sh).
set -euo pipefail

die() { echo "etcd-cluster.sh: $*" >&2; exit 1; }
[[ $# -eq 3 ]] || die "usage: $0 start|stop DIR BASEPORT"
cmd=$1 dir=$2 base=$3
[[ $base =~ ^[0-9]+$ ]] || die "BASEPORT must be a number"
members=(0 1 2)

alive() { # pid file -> pid of a running (non-zombie) etcd, or fail
  local pid st
  pid=$(cat "$1" 2>/dev/null) && st=$(cat "/proc/$pid/status" 2>/dev/null) || return 1
  grep -q '^Name:[[:space:]]*etcd$' <<<"$st" && ! grep -q '^State:[[:space:]]*Z' <<<"$st" && echo "$pid"
}

# One member at a time: stopping all at once makes the leader wait ~5 s for a
# leadership transfer to a dying peer; in turn it takes ~1 s per member.
stop() {
  local i pid deadline
  for i in "${members[@]}"; do
    pid=$(alive "$dir/m$i.pid") && kill "$pid" || true
    deadline=$((SECONDS + 30))
    while pid=$(alive "$dir/m$i.pid"); do
      if ((SECONDS >= deadline)); then kill -9 "$pid"; fi
      sleep 0.1
    done
    rm -f "$dir/m$i.pid"
  done
}

healthy() { curl -s -m 2 "http://127.0.0.1:$1/health" | grep -q '"health":"true"'; }

start() {
  local etcd i cluster="" url
  etcd=${ETCD_BIN:-$("$(dirname "$0")/etcd-bin.sh")}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  for i in "${members[@]}"; do
    alive "$dir/m$i.pid" >/dev/null && die "member m$i already running (pid file $dir/m$i.pid)"
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 + i))"
  done
  for i in "${members[@]}"; do
    url=http://127.0.0.1:$((base + i))
    nohup "$etcd" --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "$url" --advertise-client-urls "$url" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token devicegrid-bench \
      --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --log-level warn \
      </dev/null >"$dir/m$i.log" 2>&1 &
    echo $! >"$dir/m$i.pid"
  done
  local deadline=$((SECONDS + 60)) ok
  while :; do
    ok=0
    for i in "${members[@]}"; do
      if ! alive "$dir/m$i.pid" >/dev/null; then
        tail -n 20 "$dir/m$i.log" >&2; stop; die "member m$i exited; log: $dir/m$i.log"
      fi
      healthy $((base + i)) && ok=$((ok + 1))
    done
    ((ok == ${#members[@]})) && break
    if ((SECONDS >= deadline)); then
      stop; die "cluster not healthy after 60 s; logs in $dir/m*.log"
    fi
    sleep 0.2
  done
  echo "etcd cluster healthy: http://127.0.0.1:$base,$((base + 1)),$((base + 2))" >&2
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop DIR BASEPORT" ;;
esac
