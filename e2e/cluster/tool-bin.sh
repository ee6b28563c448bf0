#!/usr/bin/env bash
# Print the path of a Go binary built from one of the small wrapper modules under tools/,
# building it first if needed (the same scheme as scripts/k8s-bin.sh and scripts/etcd-bin.sh).
#   e2e/cluster/tool-bin.sh NAME     # NAME: coredns, crictl, local-path-provisioner, pause
# tools/NAME/go.mod pins the version. The package built is the module's single `tool` line
# (a wrapper around a published module), or the module itself when it has its own .go files
# (tools/pause). Binaries and Go caches live under ${DEVICEGRID_CACHE:-<repo>/.cache}; a binary
# is rebuilt when go.mod, go.sum, the module's .go files, the flags or the Go version change.
# Build output goes to stderr; stdout is the path only. Builds run under `nice -n 15`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${DEVICEGRID_CACHE:-$repo/.cache}

die() { echo "tool-bin.sh: $*" >&2; exit 1; }
[[ $# -eq 1 && $1 =~ ^[a-z0-9-]+$ ]] || die "usage: $0 NAME (coredns, crictl, local-path-provisioner, pause)"
name=$1
mod=$repo/tools/$name
[[ -f $mod/go.mod ]] || die "no wrapper module $mod/go.mod"
command -v go >/dev/null || die "go not found in PATH (needed to build $name)"
bin=$cache/bin/$name

tools=$(awk '/^tool \(/{b=1; next} b && /^\)/{b=0} b{print $1} /^tool [^(]/{print $2}' "$mod/go.mod")
if compgen -G "$mod/*.go" >/dev/null; then
  pkg=. version=local
else
  [[ $(wc -w <<<"$tools") -eq 1 ]] || die "$mod/go.mod must have exactly one tool line (has: ${tools:-none})"
  pkg=$tools
  # The pinned version of the module that provides the tool (longest module path prefix).
  version=$(awk -v p="$pkg" '$1 != "module" && $1 != "go" && $2 ~ /^v[0-9]/ && index(p, $1) == 1 {print $2; exit}' \
    <(sed -n '/^require/,/^)/p; /^require [^(]/p' "$mod/go.mod" | sed 's/^require //'))
  [[ -n $version ]] || die "cannot find the version of $pkg in $mod/go.mod"
fi

ldflags="-s -w"
# CoreDNS prints coremain.GitCommit in its banner and -version output (its wrapper has its own
# main.go, with only the plugins our Corefile uses; the version is the pinned module's).
if [[ $name == coredns ]]; then
  version=$(awk '$1 == "github.com/coredns/coredns" {print $2}' <(sed 's/^require //' "$mod/go.mod"))
  [[ -n $version ]] || die "cannot find the version of github.com/coredns/coredns in $mod/go.mod"
  ldflags+=" -X github.com/coredns/coredns/coremain.GitCommit=$version"
fi
# local-path-provisioner's Makefile sets main.VERSION (printed at start).
[[ $name == local-path-provisioner ]] && ldflags+=" -X main.VERSION=$version"
# crictl's Makefile sets pkg/version.Version (`crictl --version`).
[[ $name == crictl ]] && ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
flags=(-trimpath -ldflags "$ldflags")

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

stamp=$( { cat "$mod/go.mod" "$mod/go.sum" "$mod"/*.go 2>/dev/null; echo "${flags[*]}"; go env GOVERSION; } \
  | sha256sum | cut -d' ' -f1)
if [[ -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$stamp" ]]; then
  echo "$bin"; exit 0
fi

echo "tool-bin.sh: building $name ($pkg $version) into $bin..." >&2
mkdir -p "$cache/bin"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$mod" && nice -n 15 go build "${flags[@]}" -o "$tmp" "$pkg") >&2 || die "go build of $name failed (see above)"
mv -f "$tmp" "$bin"
echo "$stamp" >"$bin.stamp"
echo "$bin"
