# Shared settings and helpers of e2e/cluster/*.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034 # (the settings are used by the scripts that source it)
# Every setting below can be overridden from the environment; the defaults are what
# e2e/cluster/README.md documents. Changing an address or CIDR regenerates the certificates.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/e2e/cluster
cache=${DEVICEGRID_CACHE:-$repo/.cache}
# The one folder holding everything of the cluster: pki/, *.kubeconfig, logs/, pids/,
# images/ and buildah/ (image archives and build storage, kept), run/ (per-run state:
# etcd data, containerd root/state, kubelet root, CNI state, PV data; wiped by `down`).
DIR=$(realpath -m "${DEVICEGRID_CLUSTER_DIR:-$cache/cluster}")

# Ports: a fixed run outside the ephemeral range (32768-60999) that the operator tests'
# scripts/apiserver.sh picks its ports from, and away from `make dev` (7001+).
#   PORT   kube-apiserver     PORT+1 etcd client   PORT+2 etcd peer
#   PORT+3 controller-manager PORT+4 scheduler     PORT+5 kubelet   PORT+6 kubelet healthz
#   PORT+7 kube-proxy healthz PORT+8 kube-proxy metrics
PORT=${DEVICEGRID_CLUSTER_PORT:-16443}
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT >= 1024 && PORT <= 65527)) \
  || { echo "DEVICEGRID_CLUSTER_PORT must be a number in 1024..65527" >&2; exit 1; }
ETCD_PORT=$((PORT + 1)) ETCD_PEER_PORT=$((PORT + 2))
KCM_PORT=$((PORT + 3)) SCHED_PORT=$((PORT + 4))
KUBELET_PORT=$((PORT + 5)) KUBELET_HEALTHZ_PORT=$((PORT + 6))
PROXY_HEALTHZ_PORT=$((PORT + 7)) PROXY_METRICS_PORT=$((PORT + 8))

NODE_NAME=${DEVICEGRID_CLUSTER_NODE:-devicegrid-e2e}
# Pods live on a bridge this cluster creates. Its gateway address (the first address of
# POD_CIDR) is also the node's IP and the kube-apiserver's address: pods reach the API
# server there, and host-side clients reach it too (a local address of this machine), so
# no traffic leaves the machine. POD_CIDR must be a /24 (one node, host-local IPAM).
BRIDGE=${DEVICEGRID_CLUSTER_BRIDGE:-dge2e0}
POD_CIDR=${DEVICEGRID_CLUSTER_POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${DEVICEGRID_CLUSTER_SERVICE_CIDR:-10.96.0.0/24}
[[ $POD_CIDR =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] \
  || { echo "DEVICEGRID_CLUSTER_POD_CIDR must be a /24 like 10.244.0.0/24" >&2; exit 1; }
NODE_IP=${BASH_REMATCH[1]}.1
[[ $SERVICE_CIDR =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/(2[0-4]|1[6-9])$ ]] \
  || { echo "DEVICEGRID_CLUSTER_SERVICE_CIDR must be a /16../24 ending in .0, like 10.96.0.0/24" >&2; exit 1; }
API_SERVICE_IP=${BASH_REMATCH[1]}.1   # the `kubernetes` Service
DNS_SERVICE_IP=${BASH_REMATCH[1]}.10  # the `kube-dns` Service
CLUSTER_DOMAIN=cluster.local

# Images live under localhost/: should anything ever try to pull one, the pull goes to
# https://localhost (loopback) and fails, instead of to a public registry.
IMAGE_PREFIX=localhost/devicegrid-e2e
PAUSE_IMAGE=$IMAGE_PREFIX/pause:v1
BUSYBOX_IMAGE=$IMAGE_PREFIX/busybox:1.35.0
COREDNS_IMAGE=$IMAGE_PREFIX/coredns:v1.14.7
LPP_IMAGE=$IMAGE_PREFIX/local-path-provisioner:v0.0.30

PKI=$DIR/pki
RUN=$DIR/run
LOGS=$DIR/logs
PIDS=$DIR/pids
IMAGES=$DIR/images
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
ADMIN_KUBECONFIG=$DIR/admin.kubeconfig
# Volumes of the local-path StorageClass (one directory per PVC).
PV_DIR=$RUN/local-path

# Colour-free, prefixed messages; `die` exits 1.
say() { echo "${0##*/}: $*" >&2; }
die() { echo "${0##*/}: error: $*" >&2; exit 1; }

need_root() { ((EUID == 0)) || die "must run as root (containers, mounts, network namespaces, iptables)"; }

# The tail of a component's log, for failure messages.
log_tail() { # NAME [LINES]
  local f=$LOGS/$1.log
  if [[ -s $f ]]; then
    echo "--- last ${2:-30} lines of $f:" >&2
    tail -n "${2:-30}" "$f" >&2
  else
    echo "--- $f is empty or missing" >&2
  fi
}

# pid of a component started by cluster.sh if it is still running, else fail. The pid file
# holds "PID EXE"; a pid that was reused by another program does not count.
alive() { # NAME
  local pid exe cur
  read -r pid exe 2>/dev/null <"$PIDS/$1.pid" || return 1
  [[ -n $pid && -n $exe ]] || return 1
  cur=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ ${cur% (deleted)} == "$exe" ]] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  echo "$pid"
}

# Builds (first use only) run under nice so they yield to the other work on the machine.
kubectl_bin() { nice -n 15 "$repo/scripts/k8s-bin.sh" kubectl; }
crictl_bin() { nice -n 15 "$here/tool-bin.sh" crictl; }
