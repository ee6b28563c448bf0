#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for the end-to-end tests: no Docker,
# no registry, no network traffic leaving the machine.
#   e2e/cluster/cluster.sh up      # start (no-op if already up); waits until usable
#   e2e/cluster/cluster.sh down    # stop everything it started and undo its host changes
#   e2e/cluster/cluster.sh status  # what runs; exit 0 only if the whole cluster is up
#   e2e/cluster/cluster.sh env     # KUBECONFIG=... (plus CONTAINERD_ADDRESS, CONTAINER_RUNTIME_ENDPOINT)
#   e2e/cluster/cluster.sh logs [COMPONENT]   # log tails (all, or one component's)
#   e2e/cluster/cluster.sh build   # only build/find the binaries and images (done by `up` too)
# Components (binaries built from Go modules and cached by scripts/k8s-bin.sh,
# scripts/etcd-bin.sh, e2e/cluster/tool-bin.sh; Debian packages by e2e/cluster/deps.sh):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (own config,
# socket and root), kubelet, kube-proxy (iptables), CNI bridge/host-local/portmap/loopback,
# and in-cluster CoreDNS (kube-dns Service) and local-path-provisioner (default
# StorageClass `local-path`). Certificates: a local CA and per-component client
# certificates made with openssl; RBAC and the Node authorizer are on.
# Everything lives in one folder, DIR (lib.sh; default ${DEVICEGRID_CACHE:-<repo>/.cache}/cluster),
# each component logging to DIR/logs/COMPONENT.log. Every cluster starts empty: `up` wipes
# the per-run state (DIR/run) left by an earlier cluster; certificates, image archives and
# binaries are kept. Settings (env): see lib.sh and README.md. Needs root.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Seconds each wait may take (one per component or step, not for the whole `up`).
TIMEOUT=${DEVICEGRID_CLUSTER_TIMEOUT:-120}
# klog verbosity of the Kubernetes components.
V=${DEVICEGRID_CLUSTER_V:-1}
# In start order.
COMPONENTS=(etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet kube-proxy)
SA_ISSUER=https://kubernetes.default.svc.$CLUSTER_DOMAIN
# Host settings the cluster changes (the kubelet sets the vm/kernel ones itself); `up` saves
# their values once in DIR/sysctl.saved and `down` puts them back.
SYSCTLS=(net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables
  net/ipv4/conf/all/route_localnet vm/overcommit_memory vm/panic_on_oom kernel/panic
  kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# iptables chains this cluster's kube-proxy, kubelet, portmap plugin and guard create.
CHAINS='KUBE-|CNI-HOSTPORT-|CNI-DN-|DEVICEGRID-E2E'
GUARD=DEVICEGRID-E2E-FWD
# The bridge, the iptables chains, the kubepods cgroups and the sysctls are host-wide: one
# cluster per machine has them. This file (in /run, so a reboot clears it) names the DIR
# of that cluster, so that a second checkout's `up` or `down` leaves them alone.
OWNER_FILE=/run/devicegrid-e2e-cluster.owner
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

declare -A BIN
t0=$SECONDS
phase() { # WHAT: progress, with the seconds since `up` began
  say "$1 (t=$((SECONDS - t0)) s)"
}

# ---------------------------------------------------------------------------------------
# Binaries and images

find_binaries() {
  local b
  BIN[etcd]=$(nice -n 15 "$repo/scripts/etcd-bin.sh") || die "no etcd binary (scripts/etcd-bin.sh failed)"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    BIN[$b]=$(nice -n 15 "$repo/scripts/k8s-bin.sh" "$b") || die "no $b binary (scripts/k8s-bin.sh $b failed)"
  done
  for b in pause coredns local-path-provisioner crictl; do
    BIN[$b]=$(nice -n 15 "$here/tool-bin.sh" "$b") || die "no $b binary (e2e/cluster/tool-bin.sh $b failed)"
  done
  BIN[containerd]=$(command -v containerd) || die "containerd not found (deps.sh should have installed it)"
}

# The cluster's own images, built by image.sh from the Dockerfiles in images/ (cached:
# rebuilt only when a binary or Dockerfile changes). Contexts are assembled in
# DIR/images/ctx with the binaries' mtimes kept, so an unchanged input hashes the same.
build_images() {
  local ctx=$IMAGES/ctx n
  mkdir -p "$ctx"
  for n in pause coredns local-path-provisioner; do
    mkdir -p "$ctx/$n"
    cp -p "${BIN[$n]}" "$ctx/$n/$n"
  done
  # busybox: the static binary plus one symlink per applet, at the paths busybox lists.
  if [[ ! -f $ctx/busybox/rootfs/bin/busybox || /bin/busybox -nt $ctx/busybox/rootfs/bin/busybox ]]; then
    rm -rf "$ctx/busybox"
    mkdir -p "$ctx/busybox/rootfs/bin" "$ctx/busybox/rootfs/tmp" "$ctx/busybox/rootfs/etc"
    cp -p /bin/busybox "$ctx/busybox/rootfs/bin/busybox"
    chmod 1777 "$ctx/busybox/rootfs/tmp"
    local applet
    while read -r applet; do
      [[ $applet == bin/busybox ]] && continue
      mkdir -p "$ctx/busybox/rootfs/${applet%/*}"
      ln -sf /bin/busybox "$ctx/busybox/rootfs/$applet"
    done < <(/bin/busybox --list-full)
    echo "root:x:0:0:root:/root:/bin/sh" >"$ctx/busybox/rootfs/etc/passwd"
    echo "root:x:0:" >"$ctx/busybox/rootfs/etc/group"
    # Fixed times for what was just created, so the next run's context hashes the same.
    find "$ctx/busybox" ! -path '*/bin/busybox' -exec touch -h -d @1 {} +
    touch -d @1 "$ctx/busybox/rootfs/etc/passwd" "$ctx/busybox/rootfs/etc/group"
  fi
  # Imported once containerd runs (start_containerd), not by each build.
  export DEVICEGRID_IMAGE_NO_IMPORT=1
  "$here/image.sh" build "$here/images/pause/Dockerfile" "$ctx/pause" "$PAUSE_IMAGE"
  "$here/image.sh" build "$here/images/busybox/Dockerfile" "$ctx/busybox" "$BUSYBOX_IMAGE"
  "$here/image.sh" build "$here/images/coredns/Dockerfile" "$ctx/coredns" "$COREDNS_IMAGE"
  "$here/image.sh" build "$here/images/local-path-provisioner/Dockerfile" "$ctx/local-path-provisioner" "$LPP_IMAGE"
  unset DEVICEGRID_IMAGE_NO_IMPORT
}

# ---------------------------------------------------------------------------------------
# Certificates and kubeconfigs

# A CA, serving certificates (kube-apiserver, kubelet), client certificates for each
# component (the identities the default RBAC roles and the Node authorizer expect), the
# admin (system:masters) and the service-account key pair. Made once; remade when the
# addresses they name change.
make_pki() {
  local sans="IP:127.0.0.1,IP:$NODE_IP,IP:$API_SERVICE_IP,DNS:localhost,DNS:$NODE_NAME,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  local id="v2 $sans node=$NODE_NAME"
  [[ -f $PKI/done && "$(cat "$PKI/done")" == "$id" ]] && return 0
  say "making certificates in $PKI"
  rm -rf "$PKI"
  mkdir -p "$PKI"
  (
    cd "$PKI"
    local days=3650
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days $days \
      -subj "/CN=devicegrid-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    sign() { # NAME SUBJECT USAGE [SANS]
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ -z ${4:-} ]] || echo "subjectAltName=$4"
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
        -sha256 -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" serverAuth "$sans"
    sign kubelet-server "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    sign admin "/O=system:masters/CN=devicegrid-e2e-admin" clientAuth
    sign kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    sign kube-scheduler "/CN=system:kube-scheduler" clientAuth
    sign kube-proxy "/CN=system:kube-proxy" clientAuth
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    # The API server's identity towards aggregated API servers (front proxy).
    sign front-proxy-client "/CN=front-proxy-client" clientAuth
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
  ) >"$LOGS/pki.log" 2>&1 || { log_tail pki; die "certificate generation failed"; }
  echo "$id" >"$PKI/done"
}

write_kubeconfig() { # FILE CERT-NAME
  local b64='base64 -w0'
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devicegrid-e2e
  cluster:
    server: https://$NODE_IP:$PORT
    certificate-authority-data: $($b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 "$PKI/$2.crt")
    client-key-data: $($b64 "$PKI/$2.key")
contexts:
- name: devicegrid-e2e
  context:
    cluster: devicegrid-e2e
    user: $2
    namespace: default
current-context: devicegrid-e2e
EOF
  mv -f "$1.tmp" "$1"
}

# ---------------------------------------------------------------------------------------
# Processes

# Start NAME detached (own session: a Ctrl-C or the end of the calling shell does not stop
# it); the pid file records pid and executable, so a reused pid is never mistaken for it.
start_daemon() { # NAME [ENV=VALUE...] -- BINARY ARGS...
  local name=$1 envs=()
  shift
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  mkdir -p "$PIDS" "$LOGS"
  rm -f "$PIDS/$name.pid"
  # The child writes its own pid, then execs the binary (same pid), so the file is right
  # whether or not setsid had to fork. It does not inherit the lock (fd 9).
  env "${envs[@]}" setsid bash -c 'echo "$$ $1" >"$0"; shift; exec "$@"' \
    "$PIDS/$name.pid" "$(realpath "$1")" "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  # Until the exec has happened (the pid file names the binary, not yet bash's image).
  local deadline=$((SECONDS + 10)) pid
  until alive "$name" >/dev/null; do
    read -r pid _ 2>/dev/null <"$PIDS/$name.pid" || pid=
    if [[ -n $pid && ! -e /proc/$pid ]] || ((SECONDS >= deadline)); then
      log_tail "$name"
      fail "$name did not start (log: $LOGS/$name.log)"
    fi
    sleep 0.02
  done
}

stop_daemon() { # NAME [GRACE-SECONDS]
  local pid deadline=$((SECONDS + ${2:-30}))
  pid=$(alive "$1") || { rm -f "$PIDS/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$1" >/dev/null; do
    if ((SECONDS >= deadline)); then
      say "$1 (pid $pid) did not stop in ${2:-30} s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$PIDS/$1.pid"
}

# Retry CHECK until it succeeds. Fails (with the log tail of COMPONENT) as soon as
# COMPONENT's process has exited, or after TIMEOUT seconds.
wait_for() { # DESCRIPTION COMPONENT CHECK...
  local what=$1 comp=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ -n $comp ]] && ! alive "$comp" >/dev/null; then
      log_tail "$comp" 40
      fail "$comp exited while waiting for $what (log: $LOGS/$comp.log)"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n $comp ]] && log_tail "$comp" 40
      fail "timed out after ${TIMEOUT} s waiting for $what${comp:+ (log: $LOGS/$comp.log)}"
    fi
    sleep 0.25
  done
}

# A failed `up` tears down what it started (unless DEVICEGRID_CLUSTER_KEEP=1, to look at
# it), so the next `up` starts clean; the logs stay.
fail() {
  echo "cluster.sh: error: $*" >&2
  if [[ ${DEVICEGRID_CLUSTER_KEEP:-0} == 1 ]]; then
    echo "cluster.sh: DEVICEGRID_CLUSTER_KEEP=1: leaving the cluster as it is; run \`$0 down\` later" >&2
  else
    echo "cluster.sh: stopping what was started (logs stay in $LOGS)" >&2
    down >/dev/null 2>&1 || echo "cluster.sh: down after the failure failed too; run \`$0 down\`" >&2
  fi
  exit 1
}

kubectl_() { "${BIN[kubectl]}" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
crictl_() { "${BIN[crictl]}" --config "$DIR/crictl.yaml" "$@"; }
curl_() { curl -sf -m 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"; }

# ---------------------------------------------------------------------------------------
# Host network: a bridge for the pods, kernel switches, and a guard that keeps pod traffic
# on the bridge.

# The DIR of another cluster that holds the host-wide state, if there is one.
other_owner() {
  local o
  o=$(cat "$OWNER_FILE" 2>/dev/null) || return 1
  [[ -n $o && $o != "$DIR" ]] && echo "$o"
}

# Whether any component of the cluster in DIR runs.
dir_alive() { # DIR
  local f pid exe cur
  for f in "$1"/pids/*.pid; do
    read -r pid exe 2>/dev/null <"$f" || continue
    cur=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    [[ ${cur% (deleted)} == "$exe" ]] && return 0
  done
  return 1
}

save_sysctls() {
  [[ -f $DIR/sysctl.saved ]] && return 0 # saved by an earlier `up` not yet undone: keep those
  local k
  for k in "${SYSCTLS[@]}"; do
    [[ -e /proc/sys/$k ]] && echo "$k $(cat "/proc/sys/$k")"
  done >"$DIR/sysctl.saved.tmp"
  mv -f "$DIR/sysctl.saved.tmp" "$DIR/sysctl.saved"
}

restore_sysctls() {
  [[ -f $DIR/sysctl.saved ]] || return 0
  local k v
  while read -r k v; do
    if [[ -e /proc/sys/$k && "$(cat "/proc/sys/$k")" != "$v" ]]; then
      echo "$v" 2>/dev/null >"/proc/sys/$k" || say "warning: could not restore $k to $v"
    fi
  done <"$DIR/sysctl.saved"
  rm -f "$DIR/sysctl.saved"
}

net_up() {
  echo "$DIR" >"$OWNER_FILE"
  save_sysctls
  # br_netfilter: packets between pods on the bridge must pass iptables, or a reply from a
  # Service's backend to a client on the same bridge skips kube-proxy's un-DNAT.
  if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    modprobe br_netfilter 2>/dev/null || fail "br_netfilter is missing and \`modprobe br_netfilter\` failed"
  fi
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  [[ -e /proc/sys/net/bridge/bridge-nf-call-ip6tables ]] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables
  # Routing between a pod and a Service's DNATed backend needs forwarding.
  echo 1 >/proc/sys/net/ipv4/ip_forward

  # The bridge exists before any pod so that the API server can listen on its address.
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr show dev "$BRIDGE" | grep -q " $NODE_IP/24 " || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service addresses route to the bridge too: a packet to a ClusterIP that kube-proxy did
  # not (yet) DNAT goes nowhere instead of out of the machine's default route.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"

  # Guard: nothing is forwarded between the bridge and any other interface (pods have no
  # default route either; this holds whatever a pod does).
  iptables -w -N "$GUARD" 2>/dev/null || iptables -w -F "$GUARD"
  iptables -w -A "$GUARD" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -w -A "$GUARD" -i "$BRIDGE" -j DROP
  iptables -w -A "$GUARD" -o "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$GUARD" 2>/dev/null || iptables -w -I FORWARD 1 -j "$GUARD"
}

# Remove the chains this cluster made (and every jump to them) from each table, keeping
# all other rules: save, filter, restore the table.
iptables_clean() { # iptables|ip6tables
  local t saved
  command -v "$1-save" >/dev/null || return 0
  for t in filter nat mangle; do
    saved=$("$1-save" -t "$t" 2>/dev/null) || continue
    grep -qE "^:($CHAINS)" <<<"$saved" || continue
    grep -vE "^:($CHAINS)|^-A ($CHAINS)|-[jg] ($CHAINS)" <<<"$saved" | "$1-restore" -w -T "$t" \
      || say "warning: could not remove the cluster's chains from $1 table $t"
  done
}

net_down() {
  local l
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    # veths whose pod namespace is gone have gone with it; any still on the bridge go now.
    for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "$BRIDGE" # takes its address and routes with it
  fi
  iptables_clean iptables
  iptables_clean ip6tables
  restore_sysctls
}

# ---------------------------------------------------------------------------------------
# Configuration files (in DIR/run, made fresh by every `up`)

write_configs() {
  mkdir -p "$RUN/containerd" "$RUN/cni/net.d" "$RUN/cni/ipam" "$RUN/kubelet" "$PV_DIR" "$LOGS/pods"
  for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    write_kubeconfig "$DIR/$c.kubeconfig" "$c"
  done
  write_kubeconfig "$ADMIN_KUBECONFIG" admin

  # containerd: everything (root, state, socket, runc state, netns mounts) under RUN, so it
  # neither sees nor disturbs a system containerd. Plugins that cannot work here are off.
  cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$RUN/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    netns_mounts_under_state_dir = true
    disable_apparmor = true
    enable_selinux = false
    # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its
    # oom_score_adj: the kubelet asks -998 for sandboxes (and -997 for Guaranteed pods),
    # which runc then fails to set ("can't get final child's PID from pipe: EOF").
    # Restricted, containerd raises such values to its own (0) instead.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$RUN/containerd/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$RUN/cni/net.d"
      max_conf_num = 1
EOF

  # CNI: pods on $BRIDGE with addresses from POD_CIDR; their only routes are the pod subnet
  # and the Service range (through the node), no default route. No masquerading.
  cat >"$RUN/cni/net.d/10-devicegrid-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "devicegrid-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$DIR/crictl.yaml" <<EOF
runtime-endpoint: unix://$CONTAINERD_SOCK
image-endpoint: unix://$CONTAINERD_SOCK
timeout: 60
EOF

  # kubelet: cgroupfs on cgroup v1 (containerd 1.6 cannot tell it the driver), no swap
  # check, listening on the node address only. resolvConf "" gives pods no host resolver
  # (cluster DNS only). Eviction and image GC thresholds are set so that a full-ish
  # development disk neither evicts the test pods nor garbage-collects the imported
  # images (which no registry could bring back).
  cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: ""
podLogsDir: $LOGS/pods
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
registerNode: true
# Its own oom_score_adj: 0 rather than -999, which needs CAP_SYS_RESOURCE (absent here).
oomScoreAdj: 0
EOF

  # kube-proxy: iptables mode; NodePorts on the node address only (none on 127.0.0.1, so it
  # need not set route_localnet); conntrack sysctls left as they are (0 = do not set).
  cat >"$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $DIR/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# ---------------------------------------------------------------------------------------
# up

start_etcd() {
  # Data is throwaway test state: skip fsync.
  start_daemon etcd -- "${BIN[etcd]}" --name devicegrid-e2e --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "devicegrid-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for "etcd health on 127.0.0.1:$ETCD_PORT" etcd \
    bash -c "curl -s -m 2 http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
}

# Node,RBAC authorization with NodeRestriction; service-account tokens signed with
# pki/sa.key; kubelet connections verified against the CA. The requestheader/proxy-client
# flags set up the front proxy (aggregation layer) and complete the
# extension-apiserver-authentication ConfigMap, without which controller-manager and
# scheduler log an error every few seconds.
start_apiserver() {
  start_daemon kube-apiserver -- "${BIN[kube-apiserver]}" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --profiling=false \
    --requestheader-client-ca-file="$PKI/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --v="$V"
  wait_for "kube-apiserver /readyz on https://$NODE_IP:$PORT" kube-apiserver curl_ "https://$NODE_IP:$PORT/readyz"
}

start_containerd() {
  # A pull must never reach a registry (there is none, and no traffic may leave the
  # machine): images are imported, and any pull attempt is sent to a closed loopback proxy.
  start_daemon containerd HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= -- \
    "${BIN[containerd]}" --config "$RUN/containerd/config.toml" --log-level info
  wait_for "containerd on $CONTAINERD_SOCK" containerd ctr --address "$CONTAINERD_SOCK" version
  "$here/image.sh" import || fail "importing the images into containerd failed"
  crictl_ inspecti "$PAUSE_IMAGE" >/dev/null || fail "the CRI does not see the pause image $PAUSE_IMAGE"
}

start_controllers() {
  # Default controllers (statefulset, garbage collector, namespace, serviceaccount and
  # token, root-ca-cert-publisher, endpointslice, PV binder and protection, ...), each
  # with its own service account; csrsigning has no CA key and so issues nothing.
  start_daemon kube-controller-manager -- "${BIN[kube-controller-manager]}" \
    --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --controllers='*,-csrsigning,-csrapproving,-csrcleaner' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-name=devicegrid-e2e \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false --profiling=false --v="$V"
  start_daemon kube-scheduler -- "${BIN[kube-scheduler]}" \
    --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false --profiling=false --v="$V"
  wait_for "kube-controller-manager /healthz" kube-controller-manager \
    curl -skf -m 2 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for "kube-scheduler /healthz" kube-scheduler curl -skf -m 2 "https://127.0.0.1:$SCHED_PORT/healthz"
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

start_node() {
  start_daemon kubelet -- "${BIN[kubelet]}" \
    --config="$RUN/kubelet/config.yaml" \
    --kubeconfig="$DIR/kubelet.kubeconfig" \
    --root-dir="$RUN/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --v="$V"
  start_daemon kube-proxy -- "${BIN[kube-proxy]}" --config="$RUN/kube-proxy.yaml" --v="$V"
  wait_for "kubelet /healthz" kubelet curl -sf -m 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for "node $NODE_NAME Ready" kubelet node_ready
  wait_for "kube-proxy /healthz" kube-proxy curl -sf -m 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
}

render() { # FILE: the manifest with its @NAME@ placeholders filled in
  sed -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" \
    -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@LPP_IMAGE@|$LPP_IMAGE|g" \
    -e "s|@BUSYBOX_IMAGE@|$BUSYBOX_IMAGE|g" -e "s|@PV_DIR@|$PV_DIR|g" "$1"
}

# Why a deployment is not available: its pods, their events, the container logs.
explain_deployment() { # NAMESPACE NAME
  {
    echo "--- pods in $1:"
    kubectl_ -n "$1" get pods -o wide
    echo "--- events in $1:"
    kubectl_ -n "$1" get events --sort-by=.lastTimestamp | tail -n 20
    echo "--- logs of deployment/$2:"
    kubectl_ -n "$1" logs "deployment/$2" --all-containers --tail=30
  } >&2 2>&1 || true
  log_tail kubelet 20
}

wait_deployment() { # NAMESPACE NAME
  if ! kubectl_ -n "$1" wait --for=condition=Available "deployment/$2" --timeout="${TIMEOUT}s" >/dev/null; then
    explain_deployment "$1" "$2"
    fail "deployment $1/$2 not available after ${TIMEOUT} s"
  fi
}

start_addons() {
  render "$here/manifests/coredns.yaml" | kubectl_ apply -f - >"$LOGS/addons.log" 2>&1 \
    || { cat "$LOGS/addons.log" >&2; fail "applying CoreDNS failed"; }
  render "$here/manifests/local-path.yaml" | kubectl_ apply -f - >>"$LOGS/addons.log" 2>&1 \
    || { cat "$LOGS/addons.log" >&2; fail "applying local-path-provisioner failed"; }
  wait_deployment kube-system coredns
  wait_deployment local-path-storage local-path-provisioner
  # Pods in `default` need its ServiceAccount (made by the serviceaccount controller).
  wait_for "serviceaccount default/default" "" kubectl_ -n default get serviceaccount default
}

# A completed `up`, every component is running and the API server answers.
all_up() {
  local c
  [[ "$(cat "$DIR/state" 2>/dev/null)" == up ]] || return 1
  for c in "${COMPONENTS[@]}"; do alive "$c" >/dev/null || return 1; done
  curl_ "https://$NODE_IP:$PORT/readyz" >/dev/null
}

any_up() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "$c" >/dev/null && return 0; done
  return 1
}

up() {
  need_root
  t0=$SECONDS
  if all_up; then
    say "already up (KUBECONFIG=$ADMIN_KUBECONFIG); nothing to do"
    return 0
  fi
  if any_up; then
    local c
    for c in "${COMPONENTS[@]}"; do
      alive "$c" >/dev/null || { echo "cluster.sh: $c is not running" >&2; log_tail "$c" 15; }
    done
    die "the cluster in $DIR is partly running (see above); run \`$0 down\` first, then \`$0 up\`"
  fi
  "$here/deps.sh"
  command -v curl >/dev/null || die "curl not found (deps.sh should have installed it)"
  command -v openssl >/dev/null || die "openssl not found (deps.sh should have installed it)"
  for c in cpu cpuacct cpuset memory pids; do
    grep -qw "$c" /proc/cgroups || die "the kernel lacks the $c cgroup controller (the kubelet needs it)"
  done

  local o
  if o=$(other_owner); then
    dir_alive "$o" && die "another e2e cluster runs on this machine (DIR $o); stop it first: DEVICEGRID_CLUSTER_DIR=$o $0 down"
    rm -f "$OWNER_FILE" # a dead one: its leftovers are cleaned up below
  fi
  # Leftovers of an earlier cluster that was not taken down (crash, reboot): undo them.
  down_quiet
  # A port taken by something else would only show up later as a crash in some log.
  local p users
  for p in "$PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$KUBELET_PORT" \
    "$KUBELET_HEALTHZ_PORT" "$PROXY_HEALTHZ_PORT" "$PROXY_METRICS_PORT"; do
    users=$(ss -Hltnp "sport = :$p" 2>/dev/null || true)
    [[ -z $users ]] || die "port $p is in use (set DEVICEGRID_CLUSTER_PORT to move the cluster's ports $PORT..$((PORT + 8))): $users"
  done
  mkdir -p "$DIR" "$LOGS" "$PIDS"
  rm -rf "$LOGS.prev" && mv "$LOGS" "$LOGS.prev" && mkdir -p "$LOGS"
  phase "building or finding binaries"
  find_binaries
  phase "building or finding images"
  build_images
  make_pki
  write_configs
  net_up
  phase "starting etcd and kube-apiserver"
  start_etcd
  start_apiserver
  phase "starting containerd"
  start_containerd
  phase "starting kube-controller-manager and kube-scheduler"
  start_controllers
  phase "starting kubelet and kube-proxy"
  start_node
  phase "starting CoreDNS and local-path-provisioner"
  start_addons
  echo "up" >"$DIR/state"
  say "up in $((SECONDS - t0)) s: node $NODE_NAME Ready, API https://$NODE_IP:$PORT"
  say "use: export KUBECONFIG=$ADMIN_KUBECONFIG   (or: eval \"\$($0 env)\")"
}

# ---------------------------------------------------------------------------------------
# down

# Everything mounted under RUN (kubelet volumes and its rshared bind mount, container
# root filesystems, sandbox /dev/shm, pod network namespaces), deepest first.
unmount_all() {
  local m left
  for _ in 1 2 3 4 5; do
    mapfile -t left < <(findmnt -rn -o TARGET | awk -v d="$RUN" 'index($0, d "/") == 1 || $0 == d' | sort -r)
    ((${#left[@]})) || return 0
    for m in "${left[@]}"; do
      m=$(printf '%b' "$m") # findmnt -r escapes blanks as \x20
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  done
  say "warning: still mounted under $RUN:"
  printf '  %s\n' "${left[@]}" >&2
  return 1
}

# Processes of pods: all in the kubepods cgroups the kubelet made (cgroupfs driver). Also
# /k8s.io, where containerd puts containers of its k8s.io namespace that have no cgroup
# parent (started with ctr or crictl by hand, for debugging).
CGROUPS=(/sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io)
kill_pod_processes() {
  local f pid n=0
  for f in "${CGROUPS[@]}"; do
    [[ -d $f ]] || continue
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
    done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  done
  ((n == 0)) || say "killed $n leftover pod processes"
  # SIGKILL is asynchronous: wait (bounded) until the cgroups are empty.
  local deadline=$((SECONDS + 10))
  while [[ -n $(find "${CGROUPS[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null) ]]; do
    ((SECONDS < deadline)) || { say "warning: processes left in the pod cgroups"; return 0; }
    sleep 0.1
  done
}

remove_pod_cgroups() {
  local f
  for f in "${CGROUPS[@]}"; do
    [[ -d $f ]] || continue
    find "$f" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $f ]] && say "warning: cgroup $f could not be removed (processes left in it?)"
  done
  return 0
}

# containerd shims started for this cluster (their command line names our socket).
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" == *containerd-shim*"$CONTAINERD_SOCK"* ]] && echo "${p#/proc/}"
  done
  return 0
}

down() {
  need_root
  local c pid owner
  # Host-wide state held by another running cluster is not ours to remove.
  if owner=$(other_owner) && dir_alive "$owner"; then
    say "warning: the host-wide state (bridge, iptables, pod cgroups, sysctls) belongs to the cluster in $owner; leaving it"
  else
    owner=
  fi
  # The kubelet first, so that it does not restart what is being stopped.
  for c in kube-proxy kube-scheduler kube-controller-manager kubelet; do
    stop_daemon "$c" 30
  done
  if alive containerd >/dev/null; then
    # Stop and remove every pod through the CRI: containerd stops the containers and
    # runs CNI DEL (veth, IP address, hostport rules, network namespace).
    if [[ -x ${BIN[crictl]:-} ]] || BIN[crictl]=$(crictl_bin 2>/dev/null); then
      crictl_ rmp --all --force >/dev/null 2>&1 || say "warning: crictl rmp --all failed; killing what is left"
    fi
    # Containers outside pods (none expected): kill their tasks.
    for c in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
      ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_daemon containerd 30
  [[ -n $owner ]] || kill_pod_processes
  # Shims exit by themselves once their task is deleted; give them a moment, then kill.
  local deadline=$((SECONDS + 10))
  while [[ -n $(shim_pids) ]]; do
    if ((SECONDS >= deadline)); then
      for pid in $(shim_pids); do
        say "killing leftover containerd shim $pid"
        kill -KILL "$pid" 2>/dev/null || true
      done
      deadline=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  stop_daemon kube-apiserver 30
  stop_daemon etcd 30
  rm -f "$DIR/state"
  unmount_all || die "could not unmount everything under $RUN (see above); nothing deleted"
  if [[ -z $owner ]]; then
    remove_pod_cgroups
    net_down
    rm -f "$OWNER_FILE"
  fi
  # Per-run state goes (certificates, images, logs stay). --one-file-system: never delete
  # through a mount, should one have appeared since.
  rm -rf --one-file-system "$RUN"
  return 0
}

down_quiet() { down >/dev/null; }

# ---------------------------------------------------------------------------------------
# status, env, logs

status() {
  local c pid ok=0
  for c in "${COMPONENTS[@]}"; do
    if pid=$(alive "$c"); then
      printf '%-24s running (pid %s)\n' "$c" "$pid"
    else
      printf '%-24s not running\n' "$c"
      ok=1
    fi
  done
  if ((ok == 0)); then
    BIN[kubectl]=$(kubectl_bin)
    kubectl_ get nodes -o wide || ok=1
    kubectl_ get pods -A -o wide || ok=1
    node_ready || { echo "node $NODE_NAME is not Ready"; ok=1; }
  fi
  echo "dir: $DIR   api: https://$NODE_IP:$PORT   KUBECONFIG=$ADMIN_KUBECONFIG"
  return $ok
}

logs() { # [COMPONENT]
  if (($#)); then
    [[ -f $LOGS/$1.log ]] || die "no log $LOGS/$1.log (components: ${COMPONENTS[*]}; also addons, image-build, pki; pod logs in $LOGS/pods)"
    log_tail "$1" 200
  else
    for c in "${COMPONENTS[@]}"; do log_tail "$c" 15; done
    echo "--- pod logs: $LOGS/pods" >&2
  fi
}

# Binaries and images only (for a build step ahead of the tests; `up` does this too).
build() {
  need_root
  "$here/deps.sh"
  find_binaries
  build_images
  say "binaries and images ready"
}

# One `up`/`down`/`build` at a time per DIR: a second caller waits for the first (then
# finds the cluster up, or down) instead of racing it.
lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/lock"
  flock -w 900 9 || die "another cluster.sh up/down/build holds $DIR/lock for more than 900 s"
}

case ${1:-} in
  up) lock; up ;;
  down) lock; down; say "down" ;;
  build) lock; build ;;
  status) status ;;
  env)
    printf 'KUBECONFIG=%q\nCONTAINERD_ADDRESS=%q\nCONTAINER_RUNTIME_ENDPOINT=%q\n' \
      "$ADMIN_KUBECONFIG" "$CONTAINERD_SOCK" "unix://$CONTAINERD_SOCK"
    ;;
  logs) shift; logs "$@" ;;
  *) die "usage: $0 up|down|build|status|env|logs [COMPONENT]" ;;
esac
