#!/usr/bin/env bash
# Fails when a Rust source file is over 600 lines: split it by job instead (STYLE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=600
over=$(git ls-files '*.rs' | xargs wc -l | awk -v l=$limit '$2 != "total" && $1 > l {print "  " $2 ": " $1 " lines"}')
if [ -n "$over" ]; then
  echo "source files over $limit lines:" >&2
  echo "$over" >&2
  exit 1
fi
echo "file sizes: ok"
