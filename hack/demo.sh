#!/usr/bin/env bash
# kproxy's first demo, as a normal user, with no cluster: build kproxy and
# kproxy-echo, start three echo backends on 127.0.1.1-3:8080 (the pods of
# examples/demo), run `kproxy run --manifests examples/demo --proxy-mode=userspace`,
# send requests to the service's cluster IP and show which backend answered
# each, then show ClientIP affinity sticking to one backend. Everything it
# starts is stopped on exit, by PID.
#
# Environment: REQUESTS (default 30), DEMO_ADMIN and DEMO_HEALTHZ (the
# addresses of kproxy's admin and health servers, default 127.0.0.1:10349 and
# 127.0.0.1:10356, away from the defaults so a running kproxy is not disturbed).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-30}
ADMIN=${DEMO_ADMIN:-127.0.0.1:10349}
HEALTHZ=${DEMO_HEALTHZ:-127.0.0.1:10356}

echo "building bin/kproxy and bin/kproxy-echo..."
mkdir -p bin
go build -ldflags "-X github.com/kproxy/kproxy/internal/app.Version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)" -o bin/ ./cmd/kproxy ./cmd/kproxy-echo

work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

for i in 1 2 3; do
	bin/kproxy-echo --listen "127.0.1.$i:8080" --name "backend-$i" 2>>"$work/echo.log" &
	pids+=($!)
done

# The loopback service range binds without root; --state-dir keeps the demo's
# allocations out of the user's state directory; no DNS server is needed here.
bin/kproxy run --manifests examples/demo --proxy-mode=userspace \
	--service-cluster-ip-range 127.10.0.0/16 --state-dir "$work/state" \
	--metrics-bind-address "$ADMIN" --healthz-bind-address "$HEALTHZ" --dns-bind-address "" \
	2>"$work/kproxy.log" &
kproxy_pid=$!
pids+=("$kproxy_pid")

# http_get URL: the body, with curl when there is one, else bash's /dev/tcp.
http_get() {
	if command -v curl >/dev/null; then
		curl -sf --max-time 2 "http://$1:$2/"
	else
		exec 3<>"/dev/tcp/$1/$2" || return 1
		printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
		sed '1,/^\r$/d' <&3
		exec 3<&-
	fi
}

cluster_ip() {
	bin/kproxy get services "$1" --admin-address "$ADMIN" 2>/dev/null | awk -v n="$1" '$1 == n { print $3 }'
}

echo "waiting for kproxy..."
for _ in $(seq 100); do
	if ! kill -0 "$kproxy_pid" 2>/dev/null; then
		echo "kproxy exited:" >&2
		cat "$work/kproxy.log" >&2
		exit 1
	fi
	ip=$(cluster_ip echo || true)
	sticky_ip=$(cluster_ip echo-sticky || true)
	if [[ -n "$ip" && -n "$sticky_ip" ]] && http_get "$ip" 8080 >/dev/null 2>&1 &&
		http_get "$sticky_ip" 8080 >/dev/null 2>&1; then
		break
	fi
	sleep 0.1
done
if [[ -z "${ip:-}" || -z "${sticky_ip:-}" ]]; then
	echo "kproxy did not become ready; its log:" >&2
	cat "$work/kproxy.log" >&2
	exit 1
fi
bin/kproxy get services --admin-address "$ADMIN"
echo

# ask NAME IP N: N requests, the backend of each, then a count per backend.
ask() {
	local name=$1 ip=$2 n=$3 i answer
	echo "$n requests to service $name at http://$ip:8080/"
	: >"$work/answers"
	for i in $(seq "$n"); do
		answer=$(http_get "$ip" 8080 | awk '{ print $1 }')
		printf '  request %2d: %s\n' "$i" "${answer:-no answer}"
		echo "${answer:-no-answer}" >>"$work/answers"
	done
	echo "  answers per backend:"
	sort "$work/answers" | uniq -c | sed 's/^/  /'
	echo "$name: $(sort -u "$work/answers" | grep -vc no-answer) backend(s) answered $(grep -vc no-answer "$work/answers") of $n requests"
	echo
}

ask echo "$ip" "$REQUESTS"
ask echo-sticky "$sticky_ip" 10
echo "kproxy's per-endpoint counters were at http://$ADMIN/debug/kproxy/stats (and /metrics) while it ran."
