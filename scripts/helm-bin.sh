#!/usr/bin/env bash
# Print the path of a helm client binary, building it first if needed.
# The version is pinned by tools/helm/go.mod; the binary and Go caches live under
# ${DEVICEGRID_CACHE:-<repo>/.cache}. Rebuilt when go.mod, go.sum, the build flags or the
# Go version change. Build output goes to stderr; stdout is the path only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod="$repo/tools/helm"
cache=${DEVICEGRID_CACHE:-$repo/.cache}
bin="$cache/bin/helm"

die() { echo "helm-bin.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go not found in PATH (needed to build helm)"

# Version variables as set by helm's own Makefile for a release build: `helm version` prints
# them, and the Kubernetes version helm assumes offline (lint, template) follows client-go.
version=$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v[0-9]/ {print $2; exit}' "$mod/go.mod")
[[ $version =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "cannot read the helm.sh/helm/v3 version from $mod/go.mod"
clientgo=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$mod/go.mod")
[[ $clientgo =~ ^v0\.([0-9]+)\. ]] || die "cannot read the k8s.io/client-go version from $mod/go.mod"
k8sminor=${BASH_REMATCH[1]}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8sminor"
done
flags=(-trimpath -ldflags "$ldflags")

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

stamp=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "${flags[*]}"; go env GOVERSION; } \
  | sha256sum | cut -d' ' -f1)
if [[ -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$stamp" ]]; then
  echo "$bin"; exit 0
fi

echo "helm-bin.sh: building helm $version into $bin (cold cache: ~2 min on 2 cores)..." >&2
mkdir -p "$cache/bin"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$mod" && go build "${flags[@]}" -o "$tmp" helm.sh/helm/v3/cmd/helm) >&2 \
  || die "go build failed (see above)"
"$tmp" version >&2 || die "built binary does not run"
mv -f "$tmp" "$bin"
echo "$stamp" > "$bin.stamp"
echo "$bin"
