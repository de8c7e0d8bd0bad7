#!/usr/bin/env bash
# Installs what kproxy's tests need on a fresh Debian machine: the packages in
# hack/apt-packages.txt, the Go modules, and the real Kubernetes components built
# from the Go module proxy (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubectl, kube-proxy, agnhost, e2e.test, etcd, CoreDNS) with the container
# images of the real-cluster tests (hack/k8s/README.md). Without root it only
# downloads the Go modules: the tests that need the rest then skip (and fail under CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

go mod download
if [[ $(id -u) -ne 0 ]]; then
	echo "setup: not root; skipping package installation and the Kubernetes tools (kernel and API-server tests will skip)" >&2
	exit 0
fi
mapfile -t pkgs < <(grep -v '^\s*#' hack/apt-packages.txt | awk 'NF{print $1}' | sort -u)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
hack/k8s/build.sh >/dev/null
