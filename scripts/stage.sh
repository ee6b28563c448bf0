#!/usr/bin/env bash
# Run one stage of `make test` and print how long it took (CI reads these lines).
#   scripts/stage.sh NAME COMMAND [ARGS...]
set -uo pipefail
name=$1; shift
start=$SECONDS
echo "::: $name"
"$@"
rc=$?
echo "::: $name took $((SECONDS - start)) s$( ((rc)) && echo " (failed, exit $rc)")"
exit $rc
