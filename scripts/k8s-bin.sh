#!/usr/bin/env bash
# Print the path of a Kubernetes binary, building it first if needed.
#   scripts/k8s-bin.sh NAME      # NAME: kube-apiserver, kubectl, ...
# NAME must have a `tool k8s.io/kubernetes/cmd/NAME` line in tools/k8s/go.mod, which pins the
# release (kube-apiserver and kubectl are the ones used and tested so far). The binary and Go
# caches live under ${DEVICEGRID_CACHE:-<repo>/.cache}. One binary per call; each is rebuilt
# when go.mod, go.sum, the build flags or the Go version change. Build output goes to stderr;
# stdout is the path only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod="$repo/tools/k8s"
cache=${DEVICEGRID_CACHE:-$repo/.cache}

die() { echo "k8s-bin.sh: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 NAME (one of: $(awk '/^\tk8s.io\/kubernetes\/cmd\//{sub(/.*\//,""); printf "%s ", $0}' "$mod/go.mod"))"
name=$1
[[ $name =~ ^[a-z0-9-]+$ ]] && grep -q "^[[:space:]]*k8s.io/kubernetes/cmd/$name\$" "$mod/go.mod" \
  || die "unknown binary '$name': add it with 'go get -tool k8s.io/kubernetes/cmd/$name' in tools/k8s"
command -v go >/dev/null || die "go not found in PATH (needed to build $name)"
bin="$cache/bin/$name"

# The release comes from go.mod; the version variables are those set by Kubernetes' own
# hack/lib/version.sh (servers report them on /version, which helm and kubectl read).
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ {print $2; exit}' "$mod/go.mod")
[[ $version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "cannot read the k8s.io/kubernetes version from $mod/go.mod"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=${BASH_REMATCH[1]}"
  ldflags+=" -X $pkg.gitMinor=${BASH_REMATCH[2]} -X $pkg.gitTreeState=archive -X $pkg.gitCommit="
done
# Tags as in Kubernetes' release builds (hack/lib/golang.sh).
flags=(-trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags")

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

stamp=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "${flags[*]}"; go env GOVERSION; } \
  | sha256sum | cut -d' ' -f1)
if [[ -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$stamp" ]]; then
  echo "$bin"; exit 0
fi

echo "k8s-bin.sh: building $name $version into $bin (cold cache: 2-5 min on 2 cores)..." >&2
mkdir -p "$cache/bin"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$mod" && go build "${flags[@]}" -o "$tmp" "k8s.io/kubernetes/cmd/$name") >&2 \
  || die "go build of $name failed (see above)"
if [[ $name == kubectl ]]; then
  "$tmp" version --client >&2 || die "built $name does not run"
else
  "$tmp" --version >&2 || die "built $name does not run"
fi
mv -f "$tmp" "$bin"
echo "$stamp" > "$bin.stamp"
echo "$bin"
