# kproxy: the two commands are `make demo` (standalone kproxy on the example
# manifests, real traffic spread over three backends; no root, no cluster) and
# `make test` (the whole suite; as root it installs what it needs first and runs
# the kernel and API-server tests too).
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/kproxy/kproxy/internal/app.Version=$(VERSION)

.PHONY: all build image demo test test-unit setup e2e-services bench bench-nftables bench-socketlb bench-userspace bench-dns lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

# image writes bin/kproxy-image.tar, kproxy's container image, with no container
# engine: the static binary (the flags deploy/Dockerfile uses) in one layer on no
# base image, named $(IMAGE). `ctr -n k8s.io images import bin/kproxy-image.tar`
# or `docker load -i bin/kproxy-image.tar` takes it. The same binary always gives
# the same digest (fixed time stamps). cmd/kproxy-image builds it with
# go-containerregistry, not ko: ko would build the binary its own way, put it at
# /ko-app/kproxy and want a base image from a registry (internal/image says more).
IMAGE ?= ghcr.io/kproxy/kproxy:latest
image:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(BIN)/image/kproxy ./cmd/kproxy
	$(GO) run ./cmd/kproxy-image --binary $(BIN)/image/kproxy --image $(IMAGE) --output $(BIN)/kproxy-image.tar

# demo.sh builds only what it runs (kproxy and kproxy-echo), not the benchmark tools.
demo:
	hack/demo.sh

# setup installs the Debian packages and builds the Kubernetes test tools (root only;
# a normal user gets the tests that need neither).
setup:
	hack/setup.sh

test: setup build
	hack/test.sh

# e2e-services runs every upstream [sig-network] Services spec that is not Serial,
# Disruptive, Slow, a Feature or about load balancers, on upstream kube-proxy and
# on kproxy (two real two-node clusters side by side, about half an hour), and
# writes the spec-by-spec table to $(E2E_SERVICES_TABLE). Root only.
E2E_SERVICES_TABLE ?= $(CURDIR)/bin/e2e-services.md
e2e-services: setup
	mkdir -p $(dir $(E2E_SERVICES_TABLE))
	KPROXY_E2E_SERVICES=$(E2E_SERVICES_TABLE) $(GO) test -count=1 -v -timeout 150m -run 'TestServicesTable' ./test/e2e/realcluster/

test-unit:
	$(GO) test -count=1 ./...

lint:
	gofmt -l $$(git ls-files '*.go') | tee /dev/stderr | (! read)
	$(GO) vet ./...

bench: bench-nftables bench-socketlb bench-userspace bench-dns

# Sync time, memory and connect latency at 1k/10k/30k services (root: it programs
# the kernel in throwaway network namespaces); writes a PNG plot.
bench-nftables: build
	$(BIN)/kproxy-bench-nft

# Pod → ClusterIP by the socket LB vs nftables DNAT vs pod → pod direct (bulk,
# connect and request/response latency, new conn/s), and the BPF maps at 10k
# services (root: namespaces, a test cgroup, a private bpffs).
bench-socketlb: build
	$(BIN)/kproxy-bench-socketlb

# Throughput, request rate, latency and new connections: direct vs kproxy vs HAProxy.
bench-userspace: build
	$(BIN)/kproxy-bench

# Queries per second and latency of the service DNS server.
bench-dns: build
	$(BIN)/kproxy-bench-dns -duration 10s

clean:
	rm -rf $(BIN)
