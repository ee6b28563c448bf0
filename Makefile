# DeviceGrid entry points. `make run` and `make test` are all a new machine needs.

CARGO ?= cargo
DATA_DIR ?= .devicegrid
BASE_PORT ?= 7001
NODES ?= 3

.PHONY: run test lint fmt toolchain build release bench bench-compare bench-rebalance clean lincheck crds charts k8s-tools go-cache-trim images e2e e2e-kind cluster-build cluster-up cluster-down

## run: build and start a local 3-member grid on 127.0.0.1:7001-7003 (data in ./.devicegrid)
run: release
	./target/release/devicegrid dev --nodes $(NODES) --data-dir $(DATA_DIR) --base-port $(BASE_PORT)

## test: formatting, lints and every test: unit, storage suite, multi-process cluster tests,
## operator tests against a real API server, and the end-to-end suite on a local Kubernetes
## (each stage prints its duration)
test: toolchain
	@scripts/stage.sh lint $(MAKE) --no-print-directory lint
	@scripts/stage.sh tools $(MAKE) --no-print-directory lincheck k8s-tools cluster-build go-cache-trim
	@scripts/stage.sh "cargo tests" $(CARGO) test --workspace --all-targets --exclude devicegrid-e2e
	@scripts/stage.sh "doc tests" $(CARGO) test --workspace --doc
	@scripts/stage.sh e2e e2e/run.sh local

## lincheck: build the linearizability checker (Go, porcupine) once into .cache and test it
lincheck:
	scripts/lincheck-bin.sh >/dev/null
	cd tools/lincheck && c=$${DEVICEGRID_CACHE:-$(CURDIR)/.cache} && GOMODCACHE=$$c/go/mod GOCACHE=$$c/go/build GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go test ./...

## k8s-tools: etcd, kube-apiserver and helm for the operator tests, built once from their Go
## modules into .cache (cold: about 7 minutes on 2 cores)
k8s-tools:
	scripts/etcd-bin.sh >/dev/null
	scripts/k8s-bin.sh kube-apiserver >/dev/null
	scripts/helm-bin.sh >/dev/null

## go-cache-trim: drop Go's build cache once the Go tools are built: the binaries are cached
## by themselves (rebuilt only when their go.mod, go.sum or flags change), and the cache holds
## about 5 GB that only such a rebuild would use
go-cache-trim:
	c=$${DEVICEGRID_CACHE:-$(CURDIR)/.cache} && GOCACHE=$$c/go/build go clean -cache

## e2e: the end-to-end suite (e2e/tests) on a local single-node Kubernetes started from
## binaries built here (containerd, no Docker; needs root), images built with buildah; the
## cluster goes down afterwards (E2E_KEEP_CLUSTER=1 keeps it)
e2e:
	e2e/run.sh local

## e2e-kind: the same suite on a kind cluster, images built with docker (needs Docker, kind)
e2e-kind:
	e2e/run.sh kind

## cluster-up, cluster-down: the local cluster alone (KUBECONFIG: e2e/cluster/cluster.sh env);
## cluster-build: its Debian packages, binaries and images only (cached; cold: 10-20 minutes)
cluster-build:
	e2e/cluster/cluster.sh build

cluster-up:
	e2e/cluster/cluster.sh up

cluster-down:
	e2e/cluster/cluster.sh down

## images: devicegrid/node and devicegrid/operator from their Dockerfiles, with Docker
VERSION := $(shell awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version/{print $$2; exit}' Cargo.toml)
images:
	$(CARGO) build --release -p devicegrid-node -p devicegrid-operator
	scripts/image-context.sh node target/images/node
	scripts/image-context.sh operator target/images/operator
	docker build -t devicegrid/node:$(VERSION) target/images/node
	docker build -t devicegrid/operator:$(VERSION) target/images/operator

## crds: regenerate crds/ and the chart's copy from the operator's Rust types (a test fails
## when either is stale)
crds:
	$(CARGO) run -q -p devicegrid-operator -- crd > crds/devicegrid.io_devicegrids.yaml
	cp crds/devicegrid.io_devicegrids.yaml charts/devicegrid-operator/crds/

## charts: lint the operator chart and re-render charts/rendered (a test fails when stale)
charts:
	scripts/render-charts.sh charts/rendered

## lint: formatting, clippy, the layer rule of node/src (scripts/check-layers.py) and file sizes
lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/check-layers.py
	scripts/check-file-size.sh

fmt:
	$(CARGO) fmt --all

# The Rust toolchain comes with the machine; rustfmt and clippy are checked, not assumed.
toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p devicegrid-node

## bench: both benchmarks below
bench: bench-compare bench-rebalance

## bench-compare: DeviceGrid vs etcd and Hazelcast 5.x (3 members each, loopback); etcd and the
## Hazelcast members and load generator (bench/hazelcast, Maven) are built once into .cache
bench-compare:
	$(CARGO) build --release -p devicegrid-node -p devicegrid-bench
	scripts/etcd-bin.sh >/dev/null
	./target/release/dgbench --out bench-out

## bench-rebalance: 1M devices of 1 KiB on 3 members, grown to 5 under load (DEVICES=... to change)
DEVICES ?= 1000000
bench-rebalance:
	$(CARGO) build --release -p devicegrid-node -p devicegrid-bench
	./target/release/dgbench --scenario rebalance --devices $(DEVICES) --value-size 1024 --out bench-out/rebalance

clean:
	$(CARGO) clean
	rm -rf bench-out
