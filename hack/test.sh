#!/usr/bin/env bash
# Runs kproxy's whole test suite. As root (and in CI) this includes the real-kernel
# tests in network namespaces and the tests against a real API server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export KPROXY_TOOLS_DIR="${KPROXY_TOOLS_DIR:-$HOME/.cache/kproxy-tools}"
hack/check-bpf.sh
# -p 1: the kernel tests share the machine's conntrack and sysctls with nothing but
# their own namespaces, but two cores cannot run several API servers at once well.
go test -race -count=1 -p 1 -timeout 45m ./... "$@"
