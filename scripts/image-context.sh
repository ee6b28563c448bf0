#!/usr/bin/env bash
# Stage the build context of a DeviceGrid image: the Dockerfile and a root file system with
# one release binary and the shared libraries it links (glibc, libgcc), nothing else.
#   scripts/image-context.sh node|operator OUTDIR
# The images start FROM scratch, so they need no base image from a registry: the same
# Dockerfile builds with `docker build OUTDIR` (make images) and with buildah
# (e2e/cluster/image.sh), and the libraries come from the machine that built the binary, so
# they always match it. The binary must exist (cargo build --release first).
set -euo pipefail

die() { echo "image-context.sh: $*" >&2; exit 1; }
[[ $# -eq 2 ]] || die "usage: $0 node|operator OUTDIR"
repo=$(cd "$(dirname "$0")/.." && pwd)
case $1 in
  node) bin=devicegrid ;;
  operator) bin=devicegrid-operator ;;
  *) die "unknown image '$1' (node or operator)" ;;
esac
src=${CARGO_TARGET_DIR:-$repo/target}/release/$bin
[[ -x $src ]] || die "$src not found: run 'cargo build --release -p devicegrid-$1' first"
command -v ldd >/dev/null || die "ldd not found"

out=$2
rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/tmp"
chmod 1777 "$out/rootfs/tmp"
cp -p "$repo/$1/Dockerfile" "$out/Dockerfile"
cp -p "$src" "$out/rootfs/usr/local/bin/$bin"
# Every library the dynamic loader resolves, and the loader itself, at the same paths.
ldd "$src" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$out/rootfs$(dirname "$lib")"
  cp -pL "$lib" "$out/rootfs$lib"
done
# A passwd entry for the unprivileged user the images run as (tools that look up the uid).
mkdir -p "$out/rootfs/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$out/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/rootfs/etc/group"
# Files keep their sources' times; folders and written files get a fixed one, so the same
# binary gives the same context (image builds are skipped when the context is unchanged).
touch -d @0 "$out/rootfs/etc/passwd" "$out/rootfs/etc/group"
find "$out" -type d -exec touch -d @0 {} +
