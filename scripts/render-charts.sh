#!/usr/bin/env bash
# Lint the operator chart and render it into OUTDIR (charts/rendered is the checked-in copy;
# operator/tests/chart.rs renders into a temporary folder and compares).
#   scripts/render-charts.sh OUTDIR
# Two renderings cover both RBAC shapes: every namespace (ClusterRoleBinding) and a list of
# watched namespaces (a RoleBinding in each).
set -euo pipefail

die() { echo "render-charts.sh: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$1
chart=$repo/charts/devicegrid-operator
helm=$("$repo/scripts/helm-bin.sh")

cmp -s "$repo/crds/devicegrid.io_devicegrids.yaml" "$chart/crds/devicegrid.io_devicegrids.yaml" \
  || die "the chart's CRD differs from crds/: run 'make crds'"
mkdir -p "$out"
render() { # NAME ARGS...: lint and render with the given --set flags
  local name=$1; shift
  "$helm" lint --strict --quiet "$chart" "$@" >/dev/null \
    || { "$helm" lint --strict "$chart" "$@" >&2; die "helm lint failed for $name"; }
  "$helm" template devicegrid-operator "$chart" --namespace devicegrid-system "$@" \
    >"$out/$name.yaml"
}
render devicegrid-operator
render devicegrid-operator-namespaced --set 'watchNamespaces={iot,fleet}' --set replicaCount=2
