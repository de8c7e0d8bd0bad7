#!/usr/bin/env bash
# Builds the real Kubernetes components that kproxy's tests run against, all from the
# Go module proxy, into the tools directory ($KPROXY_TOOLS_DIR, default
# ~/.cache/kproxy-tools), and the container images of the real-cluster tests into
# its images/ subdirectory. See README.md in this directory for the exact contract.
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl,
#     kube-proxy and agnhost, Kubernetes v1.37.2 (hack/k8s/kubernetes), in one go build;
#   - e2e.test, the upstream e2e suite v1.37.2 (go test -c of k8s.io/kubernetes/test/e2e);
#   - etcd v3.7.3 (hack/k8s/etcd);
#   - coredns v1.15.0 with the cluster DNS plugins only (hack/k8s/coredns);
#   - pause (hack/k8s/images/pause);
#   - images/pause.tar, images/agnhost.tar, images/coredns.tar (hack/k8s/images).
# Idempotent: a binary that already reports the right version is not rebuilt, an
# image whose inputs did not change is not rewritten. Prints the tools directory on
# the last line of stdout.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
COREDNS_VERSION=1.15.0
AGNHOST_VERSION=2.66.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${KPROXY_TOOLS_DIR:-$HOME/.cache/kproxy-tools}"
mkdir -p "$tools"

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

# has_version WANT BINARY ARGS... : true when BINARY exists and its version output
# mentions the wanted version.
has_version() {
	local want="$1" bin="$2"
	shift 2
	[[ -x "$tools/$bin" ]] && "$tools/$bin" "$@" 2>/dev/null | grep -qF -- "$want"
}

# step NAME COMMAND...: runs a build step and reports its time on stderr.
step() {
	local name="$1" start=$SECONDS
	shift
	echo "build: $name ..." >&2
	"$@"
	echo "build: $name done in $((SECONDS - start)) s" >&2
}

minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
# Without these the binaries report v0.0.0-master, and the API server's discovery,
# kubectl's skew check and e2e.test's version check would say so too. main.Version
# is agnhost's own version (its upstream Makefile sets it the same way); the other
# commands have no such variable and the linker ignores it for them.
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X main.Version=$AGNHOST_VERSION"

k8s_missing=()
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
	has_version "$K8S_VERSION" "$c" --version || k8s_missing+=("k8s.io/kubernetes/cmd/$c")
done
has_version "$K8S_VERSION" kubectl version --client || k8s_missing+=(k8s.io/kubernetes/cmd/kubectl)
has_version "$AGNHOST_VERSION" agnhost --version || k8s_missing+=(k8s.io/kubernetes/test/images/agnhost)
if ((${#k8s_missing[@]} > 0)); then
	# One go build: the packages the commands share compile once.
	step "${k8s_missing[*]##*/} $K8S_VERSION" \
		bash -c 'cd "$1/kubernetes" && shift && go build -trimpath -ldflags "$1" -o "$2/" "${@:3}"' \
		_ "$here" "$ldflags" "$tools" "${k8s_missing[@]}"
fi

if ! has_version "$K8S_VERSION" e2e.test --version; then
	step "e2e.test $K8S_VERSION" \
		bash -c 'cd "$1/kubernetes" && go test -c -trimpath -ldflags "$2" -o "$3/e2e.test" k8s.io/kubernetes/test/e2e' \
		_ "$here" "$ldflags" "$tools"
fi

if ! has_version "${ETCD_VERSION#v}" etcd --version; then
	step "etcd $ETCD_VERSION" \
		bash -c 'cd "$1/etcd" && go build -trimpath -ldflags "-s -w" -o "$2/etcd" go.etcd.io/etcd/server/v3' \
		_ "$here" "$tools"
fi

if ! has_version "CoreDNS-$COREDNS_VERSION" coredns -version; then
	step "coredns $COREDNS_VERSION" \
		bash -c 'cd "$1/coredns" && go build -trimpath -ldflags "-s -w" -o "$2/coredns" .' \
		_ "$here" "$tools"
fi

# pause is tiny and the build is reproducible: always rebuilt (a link, when cached),
# so a change to its source reaches the image.
(cd "$repo" && go build -trimpath -ldflags "-s -w" -o "$tools/pause" ./hack/k8s/images/pause)

agnhost_src="$(cd "$here/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost"
(cd "$repo" && go run ./hack/k8s/images -tools "$tools" -agnhost-src "$agnhost_src")

for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl agnhost e2e.test etcd coredns pause; do
	[[ -x "$tools/$b" ]] || { echo "missing $tools/$b after build" >&2; exit 1; }
done
for i in pause agnhost coredns; do
	[[ -f "$tools/images/$i.tar" ]] || { echo "missing $tools/images/$i.tar after build" >&2; exit 1; }
done
echo "$tools"
