#!/usr/bin/env bash
# Fails when a module of node/src imports a layer above it (docs/architecture.md has the
# map). Each layer may use itself and the layers listed after it; comments are ignored.
set -euo pipefail
cd "$(dirname "$0")/../node/src"
# layer: the crate modules it may use
declare -A may=(
  [api]="api cluster raft transport structures storage runtime metrics config error"
  [cluster]="cluster raft transport structures storage runtime metrics config error"
  [raft]="raft transport structures storage runtime config error"
  [transport]="transport storage runtime error"
  [structures]="structures storage error"
  [storage]="storage runtime error"
  [runtime]="runtime"
  [metrics]="metrics"
  [config]="config"
  [error]="error config"
)
status=0
for layer in "${!may[@]}"; do
  files=$( { ls -d "$layer" "$layer.rs" 2>/dev/null || true; } )
  [ -n "$files" ] || { echo "check-layers: no module $layer" >&2; exit 1; }
  # every `crate::<module>` outside comments
  # (comments stripped; `crate::{a, b}` counts as both)
  used=$(grep -rh 'crate::' $files | sed 's#//.*##' \
    | grep -oE 'crate::(\{[^}]*\}|[A-Za-z_]+)' | sed 's/crate:://; s/[{}]//g' \
    | tr ',' '\n' | sed 's/::.*//; s/ //g' | grep -v '^$' | sort -u || true)
  for m in $used; do
    case " ${may[$layer]} " in
      *" $m "*) ;;
      *) # `crate::Error`/`crate::Result` are the error module's re-exports
         [[ "$m" == "Error" || "$m" == "Result" ]] && continue
         echo "layer violation: $layer uses crate::$m:" >&2
         grep -rnE "^[^/]*crate::$m\b" $files >&2 || true
         status=1 ;;
    esac
  done
done
[ $status -eq 0 ] && echo "layers: ok"
exit $status
