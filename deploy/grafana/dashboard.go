// Package grafana ships kproxy's Grafana dashboard. The JSON file is the
// artifact operators import; it is embedded here so that a test can check every
// query against the metrics kproxy really exports, and so that the binary can
// serve it if it wants to.
package grafana

import _ "embed"

// Dashboard is kproxy-dashboard.json.
//
//go:embed kproxy-dashboard.json
var Dashboard []byte
