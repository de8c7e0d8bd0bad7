#!/bin/sh
# Replaces kube-proxy with kproxy in a running cluster, and back, with kubectl
# only (README.md, "Migrating from kube-proxy to kproxy, and back"):
#
#   deploy/migrate.sh to-kproxy       # kube-proxy off, kproxy on, kube-proxy's rules removed
#   deploy/migrate.sh to-kube-proxy   # kproxy off, kube-proxy on, kproxy's rules removed
#
# Environment: KUBECTL (default kubectl), SERVER (the API server's address for
# kproxy's kubeconfig; default: the server of kube-proxy's own kubeconfig in its
# ConfigMap, as kubeadm writes it, else the current kubectl context's), MANIFEST
# (default: deploy/kproxy.yaml next to this script), KPROXY_IMAGE (default: the
# manifest's), TIMEOUT (in seconds, default 300s). It expects kubeadm's names
# for kube-proxy: DaemonSet and ConfigMap kube-proxy, pods k8s-app=kube-proxy.
#
# Neither proxy removes its rules when it stops (so that a restart carries
# traffic without a gap): the old proxy's rules keep serving until the new one
# runs, then a one-shot pod on every node removes them (`kube-proxy --cleanup`,
# `kproxy cleanup`). The two proxies never run at once: both serve health
# checks on port 10256.
set -eu

KUBECTL=${KUBECTL:-kubectl}
MANIFEST=${MANIFEST:-$(dirname "$0")/kproxy.yaml}
TIMEOUT=${TIMEOUT:-300s}
PLACEHOLDER=https://kube-apiserver.invalid:6443
# A node label no node has: a DaemonSet selecting it runs nowhere.
OFF_LABEL=kproxy.io/kube-proxy-disabled

k() { "$KUBECTL" "$@"; }
log() { echo "migrate: $*" >&2; }

# wait_gone SELECTOR: waits until no pod in kube-system matches.
wait_gone() {
	end=$(($(date +%s) + ${TIMEOUT%s}))
	while [ -n "$(k -n kube-system get pods -l "$1" -o name)" ]; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "pods $1 still there after $TIMEOUT"
			exit 1
		fi
		sleep 2
	done
}

server() {
	if [ -n "${SERVER:-}" ]; then echo "$SERVER"; return; fi
	s=$(k -n kube-system get configmap kube-proxy -o jsonpath='{.data.kubeconfig\.conf}' 2>/dev/null |
		sed -n 's/^ *server: *//p' | head -n 1)
	[ -n "$s" ] || s=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')
	case "$s" in
	"" | *.invalid | *.invalid:* | */kubernetes.default* | https://10.96.0.1*)
		echo "migrate: cannot tell the API server's address (got '$s'); set SERVER=https://HOST:PORT" >&2
		exit 1 ;;
	esac
	echo "$s"
}

# on_every_node NAME IMAGE ARGS...: runs IMAGE with ARGS once on every node
# (host network, privileged, whatever the taints) and waits for each to finish.
on_every_node() {
	job=$1 img=$2
	shift 2
	args=""
	for a in "$@"; do args="$args\"$a\", "; done
	for node in $(k get nodes -o jsonpath='{.items[*].metadata.name}'); do
		log "$job on $node"
		k -n kube-system delete pod "$job-$node" --ignore-not-found >/dev/null
		k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $job-$node
  namespace: kube-system
  labels: {app.kubernetes.io/name: $job}
spec:
  nodeName: $node
  hostNetwork: true
  restartPolicy: Never
  priorityClassName: system-node-critical
  tolerations: [{operator: Exists}]
  containers:
  - name: cleanup
    image: $img
    imagePullPolicy: IfNotPresent
    command: [${args%, }]
    securityContext: {privileged: true}
EOF
	done
	for node in $(k get nodes -o jsonpath='{.items[*].metadata.name}'); do
		k -n kube-system wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$job-$node" --timeout="$TIMEOUT" >/dev/null || {
			k -n kube-system logs "$job-$node" >&2 || true
			log "$job on $node did not succeed"
			exit 1
		}
		k -n kube-system logs "$job-$node" >&2 || true
		k -n kube-system delete pod "$job-$node" --wait=false >/dev/null
	done
}

to_kproxy() {
	srv=$(server)
	kp_image=$(k -n kube-system get daemonset kube-proxy -o jsonpath='{.spec.template.spec.containers[0].image}')
	log "API server for kproxy: $srv; kube-proxy's image (for its cleanup): $kp_image"
	log "stopping kube-proxy (its DaemonSet selects no node; its rules stay until kproxy runs)"
	k -n kube-system patch daemonset kube-proxy --type=strategic \
		-p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"$OFF_LABEL\":\"true\"}}}}}"
	wait_gone k8s-app=kube-proxy
	log "starting kproxy"
	sed -e "s#$PLACEHOLDER#$srv#" -e "s#image: ghcr.io/kproxy/kproxy:latest#image: ${KPROXY_IMAGE:-ghcr.io/kproxy/kproxy:latest}#" \
		"$MANIFEST" | k apply -f -
	k -n kube-system rollout status daemonset/kproxy --timeout="$TIMEOUT"
	log "removing kube-proxy's rules on every node"
	on_every_node kube-proxy-cleanup "$kp_image" kube-proxy --cleanup
	log "done: kproxy serves every node; kube-proxy's DaemonSet and ConfigMap are kept for the way back"
}

to_kube_proxy() {
	img=${KPROXY_IMAGE:-$(k -n kube-system get daemonset kproxy -o jsonpath='{.spec.template.spec.containers[0].image}')}
	log "stopping kproxy (its rules stay until kube-proxy runs)"
	k -n kube-system delete daemonset kproxy --wait=true
	wait_gone app.kubernetes.io/name=kproxy
	log "starting kube-proxy"
	k -n kube-system patch daemonset kube-proxy --type=json \
		-p "[{\"op\":\"remove\",\"path\":\"/spec/template/spec/nodeSelector/$(echo "$OFF_LABEL" | sed 's#/#~1#')\"}]"
	k -n kube-system rollout status daemonset/kube-proxy --timeout="$TIMEOUT"
	log "removing kproxy's rules on every node"
	on_every_node kproxy-cleanup "$img" /usr/local/bin/kproxy cleanup
	k delete -f "$MANIFEST" --ignore-not-found
	log "done: kube-proxy serves every node"
}

case "${1:-}" in
to-kproxy) to_kproxy ;;
to-kube-proxy) to_kube_proxy ;;
*)
	echo "usage: $0 to-kproxy | to-kube-proxy" >&2
	exit 2 ;;
esac
