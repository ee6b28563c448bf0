#!/usr/bin/env bash
# Run a local Kubernetes API server (etcd + kube-apiserver, no controllers, no nodes) for
# the operator's integration tests.
#   scripts/apiserver.sh start DIR PORT   # waits for /readyz; no-op if already running on PORT
#   scripts/apiserver.sh stop  DIR PORT   # stops both and waits; no-op if not running
#   scripts/apiserver.sh env   DIR PORT   # prints KUBECONFIG=DIR/admin.kubeconfig
# Everything binds 127.0.0.1 only: kube-apiserver's secure port is PORT, etcd's client port
# PORT+1 and its peer port PORT+2 (plain http, loopback only).
# DIR holds: etcd/ (data), pki/ (CA, serving and admin certificates, service-account key
# pair; made once with openssl and kept across restarts), admin.kubeconfig (client
# certificate in group system:masters, certificates embedded), etcd.log, kube-apiserver.log,
# etcd.pid, kube-apiserver.pid. Use an empty DIR for an empty cluster.
# RBAC authorization; ServiceAccount tokens (TokenRequest, `kubectl create token`) are signed
# with pki/sa.key and issued by SA_ISSUER below. Service IPs come from 10.0.0.0/24.
# Binaries: ETCD_BIN and KUBE_APISERVER_BIN override scripts/etcd-bin.sh and
# `scripts/k8s-bin.sh kube-apiserver` (which build on first use). APISERVER_START_TIMEOUT
# (seconds, default 90) bounds the wait for /readyz.
set -euo pipefail

die() { echo "apiserver.sh: $*" >&2; exit 1; }
[[ $# -eq 3 ]] || die "usage: $0 start|stop|env DIR PORT"
cmd=$1 dir=$2 port=$3
[[ $port =~ ^[0-9]+$ ]] && ((port >= 1024 && port <= 65533)) || die "PORT must be a number in 1024..65533"
etcd_port=$((port + 1)) peer_port=$((port + 2))
scripts=$(cd "$(dirname "$0")" && pwd)
dir=$(realpath -m "$dir")
pki=$dir/pki
kubeconfig=$dir/admin.kubeconfig
SA_ISSUER=https://kubernetes.default.svc.cluster.local

alive() { # NAME -> pid of the running (non-zombie) process from DIR/NAME.pid, or fail
  local pid st
  pid=$(cat "$dir/$1.pid" 2>/dev/null) && st=$(cat "/proc/$pid/status" 2>/dev/null) || return 1
  grep -q "^Name:[[:space:]]*$1\$" <<<"$st" && ! grep -q '^State:[[:space:]]*Z' <<<"$st" && echo "$pid"
}

stop_one() {
  local pid deadline=$((SECONDS + 30))
  pid=$(alive "$1") && kill "$pid" || true
  while pid=$(alive "$1"); do
    if ((SECONDS >= deadline)); then kill -9 "$pid"; fi
    sleep 0.1
  done
  rm -f "$dir/$1.pid"
}

stop() { stop_one kube-apiserver; stop_one etcd; }

readyz() {
  curl -sf -m 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$port/readyz" >/dev/null
}

# A small CA, a serving certificate for 127.0.0.1/localhost and the in-cluster names, an
# admin client certificate (O=system:masters) and the service-account signing key pair.
make_pki() {
  [[ -f $pki/done ]] && return 0
  command -v openssl >/dev/null || die "openssl not found in PATH (needed for certificates)"
  rm -rf "$pki"; mkdir -p "$pki"
  (
    cd "$pki"
    local days=3650
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days $days \
      -subj "/CN=devicegrid-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    sign() { # NAME SUBJECT EXTENSIONS
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
        -sha256 -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign admin "/O=system:masters/CN=devicegrid-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
  ) >"$dir/pki.log" 2>&1 || { cat "$dir/pki.log" >&2; die "certificate generation failed"; }
  touch "$pki/done"
}

write_kubeconfig() {
  local b64='base64 -w0'
  cat >"$kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devicegrid-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $($b64 "$pki/ca.crt")
users:
- name: devicegrid-admin
  user:
    client-certificate-data: $($b64 "$pki/admin.crt")
    client-key-data: $($b64 "$pki/admin.key")
contexts:
- name: devicegrid-test
  context:
    cluster: devicegrid-test
    user: devicegrid-admin
    namespace: default
current-context: devicegrid-test
EOF
  mv -f "$kubeconfig.tmp" "$kubeconfig"
}

fail_start() {
  local f
  for f in etcd kube-apiserver; do
    echo "--- last lines of $dir/$f.log:" >&2
    tail -n 25 "$dir/$f.log" >&2 || true
  done
  stop
  die "$*"
}

start() {
  local etcd apiserver e a
  e=$(alive etcd) || true
  a=$(alive kube-apiserver) || true
  if [[ -n $e || -n $a ]]; then
    if [[ -n $e && -n $a && "$(cat "$dir/port" 2>/dev/null)" == "$port" ]] && readyz; then
      echo "apiserver.sh: already running and ready on https://127.0.0.1:$port (pids $e, $a); nothing to do" >&2
      return 0
    fi
    die "a previous etcd/kube-apiserver from $dir is still running (etcd pid ${e:-none}, kube-apiserver pid ${a:-none}, port $(cat "$dir/port" 2>/dev/null || echo '?')) and not ready on port $port; run: $0 stop $dir $(cat "$dir/port" 2>/dev/null || echo PORT)"
  fi
  etcd=${ETCD_BIN:-$("$scripts/etcd-bin.sh")} || die "no etcd binary"
  apiserver=${KUBE_APISERVER_BIN:-$("$scripts/k8s-bin.sh" kube-apiserver)} || die "no kube-apiserver binary"
  command -v curl >/dev/null || die "curl not found in PATH (needed to wait for /readyz)"
  mkdir -p "$dir"
  make_pki
  echo "$port" >"$dir/port"

  # Data is throwaway test state: skip fsync.
  nohup env -u ETCD_BIN "$etcd" --name devicegrid-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "devicegrid-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level warn \
    </dev/null >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  local deadline=$((SECONDS + ${APISERVER_START_TIMEOUT:-90}))
  until curl -s -m 2 "http://127.0.0.1:$etcd_port/health" | grep -q '"health":"true"'; do
    alive etcd >/dev/null || fail_start "etcd exited; log: $dir/etcd.log"
    ((SECONDS < deadline)) || fail_start "etcd not healthy after ${APISERVER_START_TIMEOUT:-90} s"
    sleep 0.1
  done

  # No endpoints for the `kubernetes` Service: its only address would be 127.0.0.1, which
  # Endpoints validation rejects (and nothing runs in pods here to use it).
  nohup "$apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=RBAC \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"

  write_kubeconfig
  until readyz; do
    alive etcd >/dev/null || fail_start "etcd exited; log: $dir/etcd.log"
    alive kube-apiserver >/dev/null || fail_start "kube-apiserver exited; log: $dir/kube-apiserver.log"
    ((SECONDS < deadline)) || fail_start "kube-apiserver not ready after ${APISERVER_START_TIMEOUT:-90} s"
    sleep 0.25
  done
  echo "apiserver.sh: ready on https://127.0.0.1:$port (etcd http://127.0.0.1:$etcd_port); KUBECONFIG=$kubeconfig" >&2
}

case $cmd in
  start) start ;;
  stop) stop ;;
  env) echo "KUBECONFIG=$kubeconfig" ;;
  *) die "usage: $0 start|stop|env DIR PORT" ;;
esac
