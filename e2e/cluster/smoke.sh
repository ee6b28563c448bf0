#!/usr/bin/env bash
# Smoke test of a cluster started by `e2e/cluster/cluster.sh up`: proves that it can run
# what the end-to-end tests need, then removes what it created.
#   e2e/cluster/smoke.sh
# Checks: the node is Ready; a pod runs with a pod IP; cluster DNS resolves a Service name
# from inside a pod (FQDN with nslookup, short name through the pod's search path with
# wget); a pod reaches another pod through a ClusterIP Service (by name and by IP); a
# StatefulSet pod writes a file to its PVC (default StorageClass), is deleted, and the
# recreated pod reads the file back (the data is also checked on the node, in the
# directory the provisioner made); deleting the namespace releases the volume.
# Every wait has a deadline (DEVICEGRID_SMOKE_TIMEOUT seconds each, default 120). Ends with
# "N passed, M failed"; exit status 0 only if all passed. The namespace is removed on exit
# (DEVICEGRID_SMOKE_KEEP=1 keeps it for a look).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TIMEOUT=${DEVICEGRID_SMOKE_TIMEOUT:-120}
NS=devicegrid-smoke
passed=0 failed=0
t0=$SECONDS

"$here/cluster.sh" status >/dev/null 2>&1 || die "the cluster is not up (run e2e/cluster/cluster.sh up; status: e2e/cluster/cluster.sh status)"
KUBECTL=$(kubectl_bin) || die "no kubectl"
k() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
kn() { k -n "$NS" "$@"; }

pass() { echo "PASS  [$((SECONDS - t0)) s] $*"; passed=$((passed + 1)); }
failed_check() { echo "FAIL  [$((SECONDS - t0)) s] $*"; failed=$((failed + 1)); }

# What the namespace looks like, for a failed check.
diagnose() {
  {
    echo "--- pods:"
    kn get pods -o wide
    echo "--- pvc/pv:"
    kn get pvc -o wide
    k get pv
    echo "--- events:"
    kn get events --sort-by=.lastTimestamp | tail -n 25
  } 2>&1 | sed 's/^/    /' || true
}

# Retry CHECK until it succeeds or TIMEOUT seconds have passed.
eventually() { # CHECK...
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

cleanup() {
  if [[ ${DEVICEGRID_SMOKE_KEEP:-0} == 1 ]]; then
    echo "DEVICEGRID_SMOKE_KEEP=1: namespace $NS kept"
    return
  fi
  k delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A namespace left by an interrupted run goes first.
if k get namespace "$NS" >/dev/null 2>&1; then
  k delete namespace "$NS" --timeout="${TIMEOUT}s" >/dev/null || die "could not delete the old namespace $NS"
fi

# --- 1. node Ready
if [[ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; then
  pass "node $NODE_NAME is Ready"
else
  failed_check "node $NODE_NAME is not Ready"
  k describe node "$NODE_NAME" | tail -n 30
fi

# --- workloads: an HTTP server behind a Service, a client, a StatefulSet with a PVC
k create namespace "$NS" >/dev/null
token="smoke-$(date +%s)-$RANDOM"
kn apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: $BUSYBOX_IMAGE
          imagePullPolicy: Never
          # Answers with its own pod name, so the client can tell who served it.
          command: ["sh", "-c", "mkdir -p /www && echo \"served-by \$(hostname)\" >/www/index.html && exec httpd -f -p 8080 -h /www"]
          ports:
            - containerPort: 8080
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: ["sleep", "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: data
spec:
  clusterIP: None
  selector: {app: data}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: data
spec:
  serviceName: data
  replicas: 1
  selector:
    matchLabels: {app: data}
  template:
    metadata:
      labels: {app: data}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: data
          image: $BUSYBOX_IMAGE
          imagePullPolicy: Never
          command: ["sleep", "3600"]
          volumeMounts:
            - name: data
              mountPath: /data
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: 16Mi
EOF

# --- 2. a pod runs with a pod IP
if kn wait --for=condition=Ready pod/client --timeout="${TIMEOUT}s" >/dev/null; then
  ip=$(kn get pod client -o jsonpath='{.status.podIP}')
  if [[ $ip == "${POD_CIDR%.0/24}".* ]]; then
    pass "pod client runs with pod IP $ip (in $POD_CIDR)"
  else
    failed_check "pod client has IP '$ip', not in $POD_CIDR"
  fi
else
  failed_check "pod client not Ready after ${TIMEOUT} s"
  diagnose
fi

kn wait --for=condition=Available deployment/web --timeout="${TIMEOUT}s" >/dev/null \
  || { failed_check "deployment web not available after ${TIMEOUT} s"; diagnose; }
svc_ip=$(kn get service web -o jsonpath='{.spec.clusterIP}')
web_pod=$(kn get pods -l app=web -o jsonpath='{.items[0].metadata.name}')

# --- 3. cluster DNS from inside a pod
fqdn=web.$NS.svc.$CLUSTER_DOMAIN
# (busybox nslookup also asks for AAAA and may exit non-zero for that: judge the output.)
dns_fqdn() {
  local out
  out=$(kn exec client -- nslookup "$fqdn" 2>&1 || true)
  tail -n +3 <<<"$out" | grep -q "^Address:[[:space:]]*$svc_ip\$"
}
if eventually dns_fqdn; then
  pass "DNS: nslookup $fqdn in pod client gives the ClusterIP $svc_ip"
else
  failed_check "DNS: nslookup $fqdn did not give $svc_ip"
  kn exec client -- nslookup "$fqdn" 2>&1 | sed 's/^/    /' || true
  kn exec client -- cat /etc/resolv.conf 2>&1 | sed 's/^/    /' || true
fi

# --- 4. pod -> ClusterIP Service -> another pod, by short name (DNS search path) and by IP
fetch() { # URL: what pod client gets from it
  # `timeout`, not `wget -T`: Debian's busybox 1.35 wget crashes (SIGSEGV) with -T.
  kn exec client -- timeout 5 wget -q -O - "$1" 2>&1 || true
}
by_name() { [[ "$(fetch http://web/)" == "served-by $web_pod" ]]; }
by_ip() { [[ "$(fetch "http://$svc_ip/")" == "served-by $web_pod" ]]; }
if eventually by_name; then
  pass "Service: wget http://web/ from pod client answered by pod $web_pod"
else
  failed_check "Service: wget http://web/ from pod client did not reach pod $web_pod"
  fetch http://web/ | sed 's/^/    /'
fi
if eventually by_ip; then
  pass "Service: wget http://$svc_ip/ (ClusterIP) answered by pod $web_pod"
else
  failed_check "Service: wget http://$svc_ip/ did not reach pod $web_pod"
fi

# --- 5. StatefulSet + PVC: data survives the pod
pod_uid() { kn get pod data-0 -o jsonpath='{.metadata.uid}' 2>/dev/null; }
# (kubectl wait fails at once while the StatefulSet controller has not made the pod yet.)
if eventually kn wait --for=condition=Ready pod/data-0 --timeout=5s; then
  pv=$(kn get pvc data-data-0 -o jsonpath='{.spec.volumeName}')
  sc=$(kn get pvc data-data-0 -o jsonpath='{.spec.storageClassName}')
  kn exec data-0 -- sh -c "echo $token >/data/marker && sync" \
    || failed_check "PVC: writing /data/marker in data-0 failed"
  old_uid=$(pod_uid)
  kn delete pod data-0 --wait=false >/dev/null
  recreated() { local u; u=$(pod_uid) && [[ -n $u && $u != "$old_uid" ]] \
    && kn wait --for=condition=Ready pod/data-0 --timeout=2s; }
  if eventually recreated; then
    got=$(kn exec data-0 -- cat /data/marker 2>&1 || true)
    if [[ $got == "$token" ]]; then
      pass "PVC: StatefulSet pod data-0 wrote /data/marker; the recreated pod read it back (PV $pv, class $sc)"
    else
      failed_check "PVC: the recreated data-0 read '$got' instead of '$token'"
      diagnose
    fi
  else
    failed_check "PVC: data-0 was not recreated and Ready within ${TIMEOUT} s"
    diagnose
  fi
  # The data is a directory of its own on the node (the provisioner's path).
  path=$(k get pv "$pv" -o jsonpath='{.spec.hostPath.path}{.spec.local.path}')
  if [[ $path == "$PV_DIR"/* && "$(cat "$path/marker" 2>/dev/null)" == "$token" ]]; then
    pass "PVC: the volume is the node directory $path"
  else
    failed_check "PVC: the volume path '$path' does not hold the marker (expected under $PV_DIR)"
  fi
else
  failed_check "PVC: StatefulSet pod data-0 not Ready after ${TIMEOUT} s"
  diagnose
  pv='' path=''
fi

# --- 6. image.sh: an image built here from a Dockerfile (FROM scratch + COPY of a static
# binary) runs in the cluster. A second build with the same inputs is a cache hit.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; cleanup' EXIT
ctx=$tmp/context
mkdir "$ctx"
cp -p /bin/busybox "$ctx/busybox"
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /busybox
ENTRYPOINT ["/busybox", "echo"]
CMD ["hello from a Dockerfile built by image.sh"]
EOF
hello_image=$IMAGE_PREFIX/smoke-hello:1
if "$here/image.sh" build "$ctx/Dockerfile" "$ctx" "$hello_image" >"$tmp/build.log" 2>&1; then
  kn apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  restartPolicy: Never
  containers:
    - name: hello
      image: $hello_image
      imagePullPolicy: Never
EOF
  hello_done() { [[ "$(kn get pod hello -o jsonpath='{.status.phase}')" == Succeeded ]]; }
  if eventually hello_done && [[ "$(kn logs hello)" == "hello from a Dockerfile built by image.sh" ]]; then
    pass "image.sh: $hello_image built with buildah, imported, and ran in pod hello"
  else
    failed_check "image.sh: pod hello with $hello_image did not succeed with the expected output"
    kn describe pod hello | tail -n 15 | sed 's/^/    /'
  fi
  out=$("$here/image.sh" build "$ctx/Dockerfile" "$ctx" "$hello_image" 2>&1 || true)
  if grep -q 'up to date' <<<"$out"; then
    pass "image.sh: rebuilding unchanged inputs is a cache hit"
  else
    failed_check "image.sh: an unchanged rebuild was not a cache hit"
  fi
else
  failed_check "image.sh build of $hello_image failed"
  sed 's/^/    /' "$tmp/build.log"
fi

# --- 7. cleanup: the namespace goes, and with it the PV and its directory (reclaim Delete)
if k delete namespace "$NS" --timeout="${TIMEOUT}s" >/dev/null; then
  pv_gone() { [[ -z $pv ]] || ! k get pv "$pv" >/dev/null 2>&1; }
  dir_gone() { [[ -z $path || ! -e $path ]]; }
  if eventually pv_gone && eventually dir_gone; then
    pass "cleanup: namespace $NS deleted; PV ${pv:-?} and its directory removed"
  else
    failed_check "cleanup: PV $pv or directory $path still there after ${TIMEOUT} s"
    k get pv 2>&1 | sed 's/^/    /'
  fi
else
  failed_check "cleanup: namespace $NS not deleted within ${TIMEOUT} s"
fi

echo "smoke.sh: $((SECONDS - t0)) s"
echo "$passed passed, $failed failed"
((failed == 0))
