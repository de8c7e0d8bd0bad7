#!/usr/bin/env bash
# Smoke check of the test images (root; run by hand after hack/k8s/build.sh): starts a
# private containerd from containerd-config.toml (own root, state and socket under a
# temporary directory, pulls failing at once through a closed proxy port), imports
# pause.tar, agnhost.tar and coredns.tar with ctr, and runs programs in them:
# agnhost's netexec on a loopback port, reached from inside the image with curl, GNU
# wget and netcat-openbsd under dash; nslookup, ss, seq; pause -v; coredns -plugins.
# Everything it started is stopped by PID, and its directory is removed, on any exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${KPROXY_TOOLS_DIR:-$HOME/.cache/kproxy-tools}"
images="$tools/images"
[[ $(id -u) -eq 0 ]] || { echo "smoke-images: needs root" >&2; exit 1; }
for f in pause agnhost coredns; do
	[[ -f "$images/$f.tar" ]] || { echo "smoke-images: no $images/$f.tar (run hack/k8s/build.sh)" >&2; exit 1; }
done

dir="$(mktemp -d /tmp/kproxy-smoke.XXXXXX)"
addr="$dir/containerd.sock"
ctrd_pid=""
cg="kproxy-smoke-${dir##*.}" # each container's cgroup is $cg/ID in every hierarchy
cleanup() {
	set +e
	if [[ -n "$ctrd_pid" ]]; then
		for t in $(ctr --address "$addr" -n k8s.io tasks ls -q 2>/dev/null); do
			ctr --address "$addr" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1
		done
		sleep 1
		for c in $(ctr --address "$addr" -n k8s.io containers ls -q 2>/dev/null); do
			ctr --address "$addr" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1
			ctr --address "$addr" -n k8s.io containers delete "$c" >/dev/null 2>&1
		done
		kill "$ctrd_pid" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$ctrd_pid" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$ctrd_pid" 2>/dev/null
	fi
	# Shims this containerd started (they name its socket) and their containers, if
	# the tasks could not be deleted through containerd.
	for p in $(pgrep -f -- "-address $addr\$" 2>/dev/null); do
		for c in $(pgrep -P "$p"); do kill -9 "$c"; done
		kill -9 "$p"
	done
	# Snapshot and rootfs mounts, deepest first.
	grep -F " $dir/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
	for h in /sys/fs/cgroup/*/; do
		[[ -d "$h$cg" ]] || continue
		for d in "$h$cg"/*/; do [[ -d "$d" ]] && rmdir "$d"; done
		rmdir "$h$cg"
	done
	rm -rf "$dir"
}
trap cleanup EXIT

sed -e "s|@ROOT@|$dir/root|g" -e "s|@STATE@|$dir/state|g" -e "s|@ADDRESS@|$addr|g" \
	-e "s|@CNI_BIN_DIR@|/usr/lib/cni|g" -e "s|@CNI_CONF_DIR@|$dir/cni|g" \
	-e "s|@SANDBOX_IMAGE@|registry.k8s.io/pause:3.10.2|g" \
	"$here/containerd-config.toml" >"$dir/config.toml"
mkdir -p "$dir/cni"
# Its own session, so a Ctrl-C or a timeout reaches this script (which cleans up),
# not containerd.
HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
	setsid containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 100); do
	ctr --address "$addr" version >/dev/null 2>&1 && break
	kill -0 "$ctrd_pid" 2>/dev/null || { cat "$dir/containerd.log" >&2; exit 1; }
	sleep 0.2
done
ctr() { command ctr --address "$addr" -n k8s.io "$@"; }

for f in pause agnhost coredns; do
	ctr images import "$images/$f.tar"
done
ctr images ls -q | sort

echo "--- a pull fails at once"
# The kubelet's pulls are made by containerd itself (CRI), with the proxy of its
# environment; ctr pulls client-side, so it gets the same environment here.
tr '\0' '\n' <"/proc/$ctrd_pid/environ" | grep -qx 'HTTPS_PROXY=http://127.0.0.1:9' ||
	{ echo "smoke-images: containerd runs without the closed proxy" >&2; exit 1; }
start=$SECONDS
if HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
	timeout 60 ctr --address "$addr" -n k8s.io images pull registry.k8s.io/e2e-test-images/busybox:1.37.0-2 >"$dir/pull.log" 2>&1; then
	echo "smoke-images: a pull succeeded; it must fail" >&2
	exit 1
fi
grep -q "127.0.0.1:9" "$dir/pull.log" || { echo "smoke-images: the pull did not fail at the proxy:" >&2; cat "$dir/pull.log" >&2; exit 1; }
echo "failed in $((SECONDS - start)) s: $(tail -n 1 "$dir/pull.log")"

port=$((20000 + RANDOM % 20000))
echo "--- agnhost netexec on 127.0.0.1:$port, reached with curl, wget and nc from the image"
ctr run -d --cgroup "/$cg/netexec" --net-host registry.k8s.io/e2e-test-images/agnhost:2.66.1 "smoke-netexec-$$" \
	/agnhost netexec --http-port="$port" --udp-port=-1 >/dev/null
ctr run --rm --cgroup "/$cg/tools" --net-host registry.k8s.io/e2e-test-images/agnhost:2.66.1 "smoke-tools-$$" /bin/sh -c "
set -e
ls -l /bin/sh
for i in \$(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.2; done
echo curl: \$(curl -g -q -s --connect-timeout 3 http://127.0.0.1:$port/hostname)
echo wget: \$(wget -T 5 -qO- http://127.0.0.1:$port/echo?msg=hello)
echo nc: \$(printf 'GET /echo?msg=nc HTTP/1.0\r\n\r\n' | nc -w 2 127.0.0.1 $port | tail -n 1)
nc -h 2>&1 | head -n 1
curl --version | head -n 1
wget --version | head -n 1
nslookup -version 2>&1 | head -n 1
ss -ant46 | head -n 2
test \"\$(seq 0 3 | wc -l)\" -eq 4
/agnhost --version
/agnhost-2 --help >/dev/null && echo agnhost-2: ok
id user-defined-in-image 2>/dev/null || grep user-defined-in-image /etc/passwd
"
echo "--- pause and coredns"
ctr run --rm --cgroup "/$cg/pause" registry.k8s.io/pause:3.10.2 "smoke-pause-$$" /pause -v
ctr run --rm --cgroup "/$cg/coredns" kproxy.test/coredns:v1.15.0 "smoke-coredns-$$" /coredns -plugins | tr '\n' ' '
echo
echo "smoke-images: ok"
