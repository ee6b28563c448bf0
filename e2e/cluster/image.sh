#!/usr/bin/env bash
# Images for the local e2e cluster, without Docker and without a registry.
#   e2e/cluster/image.sh build DOCKERFILE CONTEXT NAME:TAG
#       Build with buildah (daemonless, from Debian) into a docker-archive under
#       <cluster dir>/images/, then import it into the cluster's containerd (namespace
#       k8s.io, where the kubelet's CRI looks) if the cluster is up. If it is down, the
#       archive is imported by the next `cluster.sh up`, which imports every archive there.
#       The build is skipped when the Dockerfile, the context (file names, sizes, modes,
#       mtimes, link targets), NAME:TAG and the buildah version are unchanged.
#   e2e/cluster/image.sh import [ARCHIVE...]   # (re)import archives (default: all)
#   e2e/cluster/image.sh list                  # archives, and the images the CRI sees
# Use NAME:TAG with a non-latest tag and `imagePullPolicy: Never` (or IfNotPresent) in pod
# specs: there is no registry. Prefer names under localhost/ (as the cluster's own images):
# a pull attempted by mistake then goes to loopback and fails at once.
# Dockerfiles can start FROM scratch, or FROM an image built here before (buildah keeps
# them in <cluster dir>/buildah): `--pull=never` makes a missing base image an error
# instead of a registry download.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BUILDAH_ROOT=$DIR/buildah/storage
BUILDAH_RUNROOT=$DIR/buildah/run
buildah_() { buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay "$@"; }

archive_of() { # NAME:TAG -> archive path
  local n=${1//\//_}
  echo "$IMAGES/${n//:/_}.tar"
}

# Fingerprint of a build's inputs. Metadata, not content, for the context: cheap even for
# a large context (a repository with target/), and any edit changes size or mtime.
inputs_hash() { # DOCKERFILE CONTEXT NAME
  {
    echo "$3"
    buildah --version
    cat "$1"
    (cd "$2" && find . \( -type f -o -type l -o -type d \) -printf '%p %s %m %T@ %l\n' | LC_ALL=C sort)
  } | sha256sum | cut -d' ' -f1
}

build() { # DOCKERFILE CONTEXT NAME:TAG
  local dockerfile=$1 context=$2 name=$3 archive stamp hash
  [[ -f $dockerfile ]] || die "no Dockerfile at $dockerfile"
  [[ -d $context ]] || die "no context directory at $context"
  # An explicit tag is required: the part after the last ':' that is also after the last '/'.
  local tag=${name##*:}
  [[ $name == *:* && $tag != */* && $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ && ${name%:*} =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] \
    || die "image name must be NAME:TAG (lowercase name, explicit tag), got '$name'"
  [[ $tag == latest ]] && die "use a tag other than 'latest' (the kubelet would try to pull :latest)"
  "$here/deps.sh"
  command -v buildah >/dev/null || die "buildah not found (deps.sh should have installed it)"
  mkdir -p "$IMAGES" "$BUILDAH_ROOT" "$BUILDAH_RUNROOT"
  archive=$(archive_of "$name")
  stamp=$archive.stamp
  hash=$(inputs_hash "$dockerfile" "$context" "$name")
  if [[ -f $archive && "$(cat "$stamp" 2>/dev/null)" == "$hash $name" ]]; then
    say "$name: up to date ($archive)"
  else
    say "$name: building from $dockerfile"
    local log=$LOGS/image-build.log
    mkdir -p "$LOGS"
    # --pull=never: no registry exists; a FROM that is not local must fail here, loudly.
    # --network=none: RUN steps (if any) get no network; builds use only their context.
    if ! buildah_ bud --pull=never --network=none --layers=false -f "$dockerfile" -t "$name" "$context" \
      >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      die "buildah bud of $name failed (log: $log)"
    fi
    rm -f "$archive.tmp"
    # docker-archive keeps the full NAME:TAG in its manifest (RepoTags), which `ctr images
    # import` uses as the image name, so the name pods use is exactly this one.
    buildah_ push --quiet "$name" "docker-archive:$archive.tmp:$name" >>"$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "buildah push of $name to $archive failed (log: $log)"; }
    mv -f "$archive.tmp" "$archive"
    echo "$hash $name" >"$stamp"
    say "$name: built $archive ($(du -h "$archive" | cut -f1))"
  fi
  if [[ ${DEVICEGRID_IMAGE_NO_IMPORT:-0} == 1 ]]; then
    : # cluster.sh imports all archives itself once containerd runs
  elif containerd_up; then
    import_archives "$archive"
  else
    say "$name: the cluster is not up; \`cluster.sh up\` imports it"
  fi
}

containerd_up() { alive containerd >/dev/null && [[ -S $CONTAINERD_SOCK ]]; }

import_archives() { # ARCHIVE...
  containerd_up || die "the cluster's containerd is not running (run e2e/cluster/cluster.sh up)"
  local a name
  for a in "$@"; do
    [[ -f $a ]] || die "no archive $a"
    name=$(cut -d' ' -f2 "$a.stamp" 2>/dev/null || echo "?")
    # Unpacked into the overlayfs snapshotter (the CRI's), so containers start without delay.
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --snapshotter overlayfs "$a" >/dev/null \
      || die "ctr images import $a ($name) failed"
    say "imported $name"
  done
}

cmd=${1:-}
case $cmd in
  build)
    [[ $# -eq 4 ]] || die "usage: $0 build DOCKERFILE CONTEXT NAME:TAG"
    build "$2" "$3" "$4"
    ;;
  import)
    shift
    if (($# == 0)); then
      shopt -s nullglob
      set -- "$IMAGES"/*.tar
      (($#)) || { say "no archives in $IMAGES"; exit 0; }
    fi
    import_archives "$@"
    ;;
  list)
    for a in "$IMAGES"/*.tar; do
      [[ -f $a ]] && echo "$(cut -d' ' -f2 "$a.stamp" 2>/dev/null || echo '?')  $a"
    done
    if containerd_up; then
      echo "--- images in the cluster's containerd (k8s.io):"
      ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -v '^sha256:' || true
    fi
    ;;
  *) die "usage: $0 build DOCKERFILE CONTEXT NAME:TAG | import [ARCHIVE...] | list" ;;
esac
