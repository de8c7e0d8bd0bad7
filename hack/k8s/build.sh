#!/usr/bin/env bash
# Builds the real Kubernetes components that kproxy's tests run against:
# kube-apiserver, kube-controller-manager, kubectl and kube-proxy v1.37.2 (from the
# wrapper module in hack/k8s/kubernetes) and etcd v3.7.3 (hack/k8s/etcd), all from the
# Go module proxy, into the tools directory ($KPROXY_TOOLS_DIR, default
# ~/.cache/kproxy-tools). Idempotent: a binary that already reports the right version
# is not rebuilt. Prints the tools directory on the last line of stdout.
#
# Cold build on 2 cores: about 11-13 minutes (Go build cache ~4 GB); warm: ~30 s;
# everything present: under a second.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${KPROXY_TOOLS_DIR:-$HOME/.cache/kproxy-tools}"
mkdir -p "$tools"

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

# has_version BINARY ARGS... : true when BINARY exists and its version output
# mentions the wanted version.
has_version() {
	local want="$1" bin="$2"
	shift 2
	[[ -x "$tools/$bin" ]] && "$tools/$bin" "$@" 2>/dev/null | grep -q -- "$want"
}

k8s_missing=()
has_version "$K8S_VERSION" kube-apiserver --version || k8s_missing+=(kube-apiserver)
has_version "$K8S_VERSION" kube-controller-manager --version || k8s_missing+=(kube-controller-manager)
has_version "$K8S_VERSION" kube-proxy --version || k8s_missing+=(kube-proxy)
has_version "$K8S_VERSION" kubectl version --client || k8s_missing+=(kubectl)

if ((${#k8s_missing[@]} > 0)); then
	echo "building ${k8s_missing[*]} $K8S_VERSION into $tools" >&2
	minor="${K8S_VERSION#v1.}"
	minor="${minor%%.*}"
	# Without these the binaries report v0.0.0-master, and the API server's
	# discovery (and kubectl's skew check) would say so too.
	ldflags="-s -w"
	ldflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
	ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
	pkgs=()
	for c in "${k8s_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	(cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$tools/" "${pkgs[@]}")
fi

if ! has_version "${ETCD_VERSION#v}" etcd --version; then
	echo "building etcd $ETCD_VERSION into $tools" >&2
	(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tools/etcd" go.etcd.io/etcd/server/v3)
fi

for b in kube-apiserver kube-controller-manager kube-proxy kubectl etcd; do
	[[ -x "$tools/$b" ]] || { echo "missing $tools/$b after build" >&2; exit 1; }
done
echo "$tools"
