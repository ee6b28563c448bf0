#!/usr/bin/env bash
# Run the end-to-end suite (e2e/tests) against a cluster this script brings up, and take the
# cluster down afterwards, pass or fail.
#   e2e/run.sh local   # the local single-node cluster of e2e/cluster (root; no Docker)
#   e2e/run.sh kind    # a kind cluster (needs Docker and kind in PATH)
# The images are built from node/Dockerfile and operator/Dockerfile, whose contexts
# scripts/image-context.sh stages from the release binaries (built here first): with
# buildah into the local cluster's containerd, or with docker and `kind load` for kind.
# E2E_KEEP_CLUSTER=1 leaves the cluster up for a look after a failure. The suite talks to the
# grid's ClusterIP and pod IPs: on the local cluster this machine is the node; for kind,
# routes through the kind node are added.
set -euo pipefail

die() { echo "e2e/run.sh: $*" >&2; exit 1; }
[[ $# -eq 1 && $1 =~ ^(local|kind)$ ]] || die "usage: $0 local|kind"
mode=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo=${CARGO:-cargo}
version=$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version/{print $2; exit}' Cargo.toml)
[[ -n $version ]] || die "cannot read the workspace version from Cargo.toml"
t0=$SECONDS
stage() { echo "::: e2e: $1 (t=$((SECONDS - t0)) s)"; }

stage "release binaries and image contexts"
$cargo build --release -p devicegrid-node -p devicegrid-operator
for image in node operator; do
  scripts/image-context.sh "$image" "target/images/$image"
done
$cargo build -p devicegrid-e2e --tests
export E2E_KUBECTL E2E_HELM
E2E_HELM=$(scripts/helm-bin.sh)

case $mode in
local)
  E2E_KUBECTL=$(scripts/k8s-bin.sh kubectl)
  export E2E_NODE_IMAGE=localhost/devicegrid/node:$version
  export E2E_NODE_IMAGE_NEXT=$E2E_NODE_IMAGE-next
  export E2E_OPERATOR_IMAGE=localhost/devicegrid/operator:$version
  down() {
    if [[ ${E2E_KEEP_CLUSTER:-} == 1 ]]; then
      echo "e2e/run.sh: the cluster stays up (E2E_KEEP_CLUSTER=1); stop it with e2e/cluster/cluster.sh down"
    else
      stage "cluster down"
      e2e/cluster/cluster.sh down
    fi
  }
  trap down EXIT
  stage "cluster up"
  e2e/cluster/cluster.sh up
  # DNS, Services and volumes first: a broken cluster fails here with a clear message.
  stage "cluster smoke test"
  e2e/cluster/smoke.sh
  stage "images"
  e2e/cluster/image.sh build target/images/node/Dockerfile target/images/node "$E2E_NODE_IMAGE"
  # The rolling update goes to the same content under a second tag.
  e2e/cluster/image.sh build target/images/node/Dockerfile target/images/node "$E2E_NODE_IMAGE_NEXT"
  e2e/cluster/image.sh build target/images/operator/Dockerfile target/images/operator "$E2E_OPERATOR_IMAGE"
  eval "$(e2e/cluster/cluster.sh env)"
  export KUBECONFIG
  # The node is this machine: commands for it run here, crictl on the cluster's containerd.
  export E2E_NODE_EXEC=
  export E2E_CRICTL="$(e2e/cluster/tool-bin.sh crictl) --runtime-endpoint $CONTAINER_RUNTIME_ENDPOINT"
  ;;
kind)
  for tool in docker kind; do
    command -v $tool >/dev/null || die "$tool not found in PATH (make e2e-kind needs Docker and kind)"
  done
  E2E_KUBECTL=$(command -v kubectl || scripts/k8s-bin.sh kubectl)
  export E2E_NODE_IMAGE=devicegrid/node:$version
  export E2E_NODE_IMAGE_NEXT=$E2E_NODE_IMAGE-next
  export E2E_OPERATOR_IMAGE=devicegrid/operator:$version
  cluster=devicegrid-e2e
  export KUBECONFIG=$repo/target/kind-$cluster.kubeconfig
  down() {
    if [[ ${E2E_KEEP_CLUSTER:-} == 1 ]]; then
      echo "e2e/run.sh: kind cluster $cluster stays up (E2E_KEEP_CLUSTER=1)"
    else
      stage "kind cluster down"
      kind delete cluster --name "$cluster"
    fi
  }
  trap down EXIT
  stage "kind cluster up"
  kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 5m
  kind export kubeconfig --name "$cluster" --kubeconfig "$KUBECONFIG"
  stage "images"
  docker build -t "$E2E_NODE_IMAGE" -t "$E2E_NODE_IMAGE_NEXT" target/images/node
  docker build -t "$E2E_OPERATOR_IMAGE" target/images/operator
  kind load docker-image --name "$cluster" "$E2E_NODE_IMAGE" "$E2E_NODE_IMAGE_NEXT" "$E2E_OPERATOR_IMAGE"
  # Nodes are containers: commands for a node run in it; kind nodes have crictl.
  export E2E_NODE_EXEC="docker exec {node}"
  export E2E_CRICTL=crictl
  # The suite reaches the grid's ClusterIP and pod IPs (kind's default CIDRs) through the
  # node container, whose kube-proxy routes them (needs root for `ip route`).
  node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")
  [[ -n $node_ip ]] || die "cannot find the IP of kind node $cluster-control-plane"
  for cidr in 10.96.0.0/16 10.244.0.0/16; do
    ip route replace "$cidr" via "$node_ip" || die "ip route replace $cidr via $node_ip failed (root needed)"
  done
  ;;
esac

stage "suite"
$cargo test -p devicegrid-e2e --tests -- --nocapture
stage "passed"
