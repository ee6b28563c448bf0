#!/usr/bin/env bash
# Print the path of the lincheck linearizability checker, building it first if needed.
# The source is tools/lincheck (porcupine pinned by its go.mod); the binary and Go caches
# live under ${DEVICEGRID_CACHE:-<repo>/.cache}. Rebuilt when go.mod, go.sum, main.go or
# the Go version change. Build output goes to stderr; stdout is the path only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod="$repo/tools/lincheck"
cache=${DEVICEGRID_CACHE:-$repo/.cache}
bin="$cache/bin/lincheck"

die() { echo "lincheck-bin.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go not found in PATH (needed to build lincheck)"

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"

stamp=$( { cat "$mod/go.mod" "$mod/go.sum" "$mod/main.go"; go env GOVERSION; } \
  | sha256sum | cut -d' ' -f1)
if [[ -x "$bin" && -f "$bin.stamp" && "$(cat "$bin.stamp")" == "$stamp" ]]; then
  echo "$bin"; exit 0
fi

echo "lincheck-bin.sh: building lincheck into $bin..." >&2
mkdir -p "$cache/bin"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$mod" && go build -trimpath -o "$tmp" .) >&2 || die "go build failed (see above)"
"$tmp" /dev/null >&2 || die "built binary does not run"
mv -f "$tmp" "$bin"
echo "$stamp" > "$bin.stamp"
echo "$bin"
