// Package healthcheck serves kproxy's health endpoints, modeled on kube-proxy's
// pkg/proxy/healthcheck so that probes, load balancers and dashboards written for
// kube-proxy keep working:
//
//   - ProxyHealthServer answers /healthz and /livez on --healthz-bind-address
//     (default 0.0.0.0:10256). kproxy is unhealthy when a change was queued but
//     not applied within the health timeout (2 × sync period); /healthz also
//     fails while the node is being deleted or is tainted for removal by the
//     cluster autoscaler, so that load balancers drain it first.
//   - ServiceHealthServer opens one HTTP server per LoadBalancer service with
//     externalTrafficPolicy Local on its healthCheckNodePort. A cloud load
//     balancer probes it to learn whether this node has local endpoints: 200
//     with the count when it does, 503 when it does not.
//
// Listening and the clock are injected so tests can bind to loopback and move
// time by hand.
package healthcheck
