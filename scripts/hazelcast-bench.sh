#!/usr/bin/env bash
# Print the Java classpath of dgbench's Hazelcast peer (bench/hazelcast), building it first if
# needed. Versions are pinned by bench/hazelcast/pom.xml; the jar, its runtime dependencies and
# Maven's repository live under ${DEVICEGRID_CACHE:-<repo>/.cache}. Rebuilt when the pom, a
# source or the Java version change. Build output goes to stderr; stdout is the classpath only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
proj="$repo/bench/hazelcast"
cache=${DEVICEGRID_CACHE:-$repo/.cache}
out="$cache/hazelcast-bench"
classpath="$out/hazelcast-bench.jar:$out/lib/*"

die() { echo "hazelcast-bench.sh: $*" >&2; exit 1; }
command -v java >/dev/null || die "java not found in PATH (needed to build and run the Hazelcast peer)"
command -v mvn >/dev/null || die "mvn not found in PATH (needed to build the Hazelcast peer)"

stamp=$( { cd "$proj" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum; java -version 2>&1; } \
  | sha256sum | cut -d' ' -f1)
if [[ -f "$out/hazelcast-bench.jar" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "$classpath"; exit 0
fi

echo "hazelcast-bench.sh: building the Hazelcast peer into $out (~15 s on a cold cache)..." >&2
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp"
# -DbuildDir keeps Maven's target/ out of the repository.
nice -n 15 mvn -B -q -Dmaven.repo.local="$cache/m2" -DbuildDir="$tmp/build" \
  -f "$proj/pom.xml" package -DskipTests >&2 || die "mvn package failed (see above)"
mv "$tmp/build/hazelcast-bench.jar" "$tmp/build/lib" "$tmp/"
rm -rf "$tmp/build"
rc=0; java -cp "$tmp/hazelcast-bench.jar:$tmp/lib/*" io.devicegrid.bench.Load --op none >/dev/null 2>&1 || rc=$?
[[ $rc -eq 2 ]] || die "the built jar does not run (Load exited $rc, expected its usage error 2)"
rm -rf "$out"
mv "$tmp" "$out"
echo "$stamp" > "$out/stamp"
echo "$classpath"
