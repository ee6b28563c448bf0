#!/usr/bin/env bash
# Install the Debian packages the local e2e cluster needs, and only those missing.
#   e2e/cluster/deps.sh          # idempotent; called by `cluster.sh up` and `image.sh`
# Needs root and apt (Debian 12 "bookworm" versions are what was tested):
#   containerd 1.6.20 + runc 1.1.5   container runtime (its CRI plugin is what kubelet talks to)
#   containernetworking-plugins      bridge, host-local, portmap, loopback CNI plugins (/usr/lib/cni)
#   iptables                         kube-proxy (iptables mode), kubelet and the portmap plugin
#   buildah                          builds images from Dockerfiles / from scratch, no daemon
#   busybox-static                   the one static binary behind the busybox image
#   openssl, curl                    certificates; health checks
# Kernel features it checks (and enables at run time in cluster.sh, not here): br_netfilter,
# ip_forward, overlayfs, veth. Fails loudly when something cannot be had.
set -euo pipefail

die() { echo "deps.sh: $*" >&2; exit 1; }
((EUID == 0)) || die "must run as root (installs packages; the cluster needs root anyway)"

pkgs=(containerd runc containernetworking-plugins iptables buildah busybox-static openssl curl)
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }
missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
  echo "deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp /tmp/devicegrid-deps.XXXXXX.log)
  # The package lists may be absent on a fresh machine; refresh once, then install.
  apt-get update -qq >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "apt-get install ${missing[*]} failed (log: $log)"; }
  rm -f "$log"
  for p in "${missing[@]}"; do
    installed "$p" || die "$p is still not installed after apt-get install"
  done
fi

for f in loopback bridge host-local portmap; do
  [[ -x /usr/lib/cni/$f ]] || die "CNI plugin /usr/lib/cni/$f missing (package containernetworking-plugins)"
done
for f in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /usr/bin/ctr \
  /usr/sbin/iptables /usr/bin/buildah /bin/busybox /usr/bin/openssl /usr/bin/curl; do
  [[ -x $f ]] || die "$f missing although its package is installed"
done
grep -qw overlay /proc/filesystems || die "the kernel has no overlayfs (needed by containerd's overlayfs snapshotter)"
