package trace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/kproxy/kproxy/internal/model"
)

// Path is where the admin server mounts Handler.
const Path = "/debug/kproxy/trace"

// Handler serves GET Path?from=SRC&to=DST:PORT[/PROTO][&proto=PROTO][&format=text]
// with the Result as JSON (or as text with format=text). getSnap returns the
// snapshot the data plane last applied; nil (or a snapshot of generation 0)
// means not synced yet (503).
func Handler(getSnap func() *model.Snapshot, opts Options) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			httpError(w, http.StatusMethodNotAllowed, errors.New("use GET"))
			return
		}
		q := req.URL.Query()
		pkt, err := ParsePacket(q.Get("from"), q.Get("to"), q.Get("proto"))
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		var snap *model.Snapshot
		if getSnap != nil {
			snap = getSnap()
		}
		// Generation 0 is the tracker's placeholder before its first snapshot.
		if snap == nil || snap.Generation == 0 {
			httpError(w, http.StatusServiceUnavailable, errors.New("kproxy has not synced yet"))
			return
		}
		r := Trace(req.Context(), snap, opts, pkt)
		if q.Get("format") == "text" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_ = WriteText(w, &r) // the client went away; nothing to do
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(&r) // the client went away; nothing to do
	})
}

type errorBody struct {
	Error string `json:"error"`
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
}

// Query asks a running kproxy's admin server (base is like
// "http://127.0.0.1:10249") to trace a packet; `kproxy trace` uses it. The
// arguments are passed through unparsed so that the server's errors are the
// ones the user sees.
func Query(ctx context.Context, client *http.Client, base, from, to, proto string) (*Result, error) {
	if client == nil {
		client = http.DefaultClient
	}
	v := url.Values{"from": {from}, "to": {to}}
	if proto != "" {
		v.Set("proto", proto)
	}
	u := strings.TrimSuffix(base, "/") + Path + "?" + v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("trace request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query kproxy at %s: %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read trace from %s: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb errorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			return nil, fmt.Errorf("kproxy at %s: %s", base, eb.Error)
		}
		return nil, fmt.Errorf("kproxy at %s: %s", base, resp.Status)
	}
	var r Result
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("decode trace from %s: %w", base, err)
	}
	return &r, nil
}
