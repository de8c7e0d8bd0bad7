// Package manifest is kproxy's standalone source: it reads Services, Pods,
// EndpointSlices, Endpoints, Nodes and Namespaces from a directory of YAML and
// JSON manifests, validates them as the API server would, allocates cluster IPs
// and node ports (package allocator), computes endpoints from pod selectors, and
// feeds the model's handlers exactly like the cluster source does. It watches the
// directory and applies changes within a second.
//
// An object whose new version is invalid is rejected alone: its last good version
// stays in force (and so do all objects of a file that no longer parses), and the
// error names the file, line, document, object and field.
package manifest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/metrics"
	"github.com/kproxy/kproxy/internal/model"
)

// Config configures the manifest source.
type Config struct {
	// Dir is the manifest directory (--manifests). Every *.yaml, *.yml and *.json
	// under it is read; hidden files and directories are skipped.
	Dir string
	// NodeName is the name of the node kproxy runs as; the Node object of that
	// name, if any, gives its labels and addresses.
	NodeName string
	// Allocator holds --service-cluster-ip-range, --service-node-port-range and
	// --state-dir. An empty StateDir means allocator.DefaultStateDir(Dir), unless
	// Ephemeral is set.
	Allocator allocator.Config
	// Ephemeral keeps allocations in memory only.
	Ephemeral bool
	// Debounce is how long the directory must be quiet before a change is applied;
	// MaxDelay bounds the wait under a stream of changes.
	Debounce, MaxDelay time.Duration
	// ResyncPeriod rescans the directory even without events, in case a
	// filesystem notification was lost.
	ResyncPeriod time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() error {
	c.Allocator.Defaults()
	if c.Allocator.StateDir == "" && !c.Ephemeral && c.Dir != "" {
		dir, err := allocator.DefaultStateDir(c.Dir)
		if err != nil {
			return err
		}
		c.Allocator.StateDir = dir
	}
	if c.Ephemeral {
		c.Allocator.StateDir = ""
	}
	if c.Debounce == 0 {
		c.Debounce = 100 * time.Millisecond
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = 500 * time.Millisecond
	}
	if c.ResyncPeriod == 0 {
		c.ResyncPeriod = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Dir == "" {
		return errors.New("manifests: no directory given")
	}
	if c.Debounce < 0 || c.MaxDelay < c.Debounce {
		return fmt.Errorf("manifests: debounce %s must be >= 0 and <= max delay %s", c.Debounce, c.MaxDelay)
	}
	return c.Allocator.Validate()
}

// Source feeds a model.Handler from a manifest directory.
type Source struct {
	cfg     Config
	h       model.Handler
	m       *metrics.Metrics
	log     *slog.Logger
	alloc   *allocator.Allocator
	st      *store
	persist bool

	mu       sync.Mutex
	problems []Problem
	logged   map[string]bool
	loads    uint64

	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	node     *v1.Node
}

// New returns a Source. It reads the saved allocations (a corrupt state file is
// an error here) but touches neither the directory nor the handler until Run.
func New(cfg Config, h model.Handler, m *metrics.Metrics) (*Source, error) {
	s, err := newSource(cfg, h, m)
	if err != nil {
		return nil, err
	}
	s.persist = true
	return s, nil
}

func newSource(cfg Config, h model.Handler, m *metrics.Metrics) (*Source, error) {
	if err := cfg.Defaults(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	alloc, err := allocator.New(cfg.Allocator)
	if err != nil {
		return nil, err
	}
	return &Source{
		cfg: cfg, h: h, m: m, log: cfg.Logger, alloc: alloc,
		st:       newStore(cfg.Dir, alloc),
		logged:   map[string]bool{},
		services: map[types.NamespacedName]*v1.Service{},
		slices:   map[types.NamespacedName]*discovery.EndpointSlice{},
	}, nil
}

// Allocator gives access to the allocations (for metrics and debugging).
func (s *Source) Allocator() *allocator.Allocator { return s.alloc }

func (s *Source) loadCount() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// Problems returns the errors and warnings of the last load, in file order.
func (s *Source) Problems() []Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.problems)
}

// Run loads the directory, hands every object to the handler, reports the
// handler synced, then applies changes to the directory until ctx ends. It
// returns an error only when it cannot start (the directory cannot be read, the
// state directory is locked by another kproxy, a watch cannot be set up).
func (s *Source) Run(ctx context.Context) error {
	unlock, err := s.alloc.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch manifests: %w", err)
	}
	defer w.Close()
	// Watch before the first scan, so that a change made during it is not lost.
	if err := w.Add(s.cfg.Dir); err != nil {
		return fmt.Errorf("watch manifests %s: %w", s.cfg.Dir, err)
	}
	if err := s.syncOnce(w); err != nil {
		return err
	}
	s.h.OnServicesSynced()
	s.h.OnEndpointSlicesSynced()
	s.h.OnNodeSynced()

	resync := time.NewTicker(s.cfg.ResyncPeriod)
	defer resync.Stop()
	var timer *time.Timer
	var timerC <-chan time.Time
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch manifests: watcher closed")
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			now := time.Now()
			if timer == nil {
				first = now
				timer = time.NewTimer(s.cfg.Debounce)
				timerC = timer.C
				continue
			}
			// Wait for quiet, but never longer than MaxDelay after the first event.
			wait := min(s.cfg.Debounce, s.cfg.MaxDelay-now.Sub(first))
			timer.Reset(max(wait, 0))
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watch manifests: watcher closed")
			}
			// An overflow loses events: rescan everything.
			s.log.Warn("manifest watch error; rescanning", "err", err)
			s.syncAndLog(w)
		case <-timerC:
			timer, timerC = nil, nil
			s.syncAndLog(w)
		case <-resync.C:
			s.syncAndLog(w)
		}
	}
}

func (s *Source) syncAndLog(w *fsnotify.Watcher) {
	if err := s.syncOnce(w); err != nil {
		s.log.Error("manifest sync failed; the objects in force are kept", "err", err)
	}
}

// syncOnce loads the directory's changes and calls the handler for them.
func (s *Source) syncOnce(w *fsnotify.Watcher) error {
	start := time.Now()
	ch, dirs, err := s.st.syncDirs(s.cfg.NodeName)
	if err != nil {
		s.countLoad("error")
		return err
	}
	if w != nil {
		watched := map[string]bool{}
		for _, d := range w.WatchList() {
			watched[d] = true
		}
		for _, d := range dirs {
			if !watched[d] {
				if err := w.Add(d); err != nil {
					s.log.Warn("cannot watch manifest subdirectory", "dir", d, "err", err)
				}
			}
		}
	}
	if s.persist {
		if err := s.alloc.Save(); err != nil {
			// The allocations in memory stay valid; the next sync retries the save.
			s.log.Error("saving allocations failed", "err", err)
		}
	}
	s.emit(ch)
	s.report(time.Since(start), ch)
	return nil
}

func (s *store) syncDirs(nodeName string) (*change, []string, error) {
	ch, err := s.sync(nodeName)
	if err != nil {
		return nil, nil, err
	}
	return ch, s.dirs, nil
}

// emit calls the handler for every change, in a stable order.
func (s *Source) emit(ch *change) {
	for _, name := range sortedNames(ch.services) {
		c := ch.services[name]
		switch {
		case c[0] == nil && c[1] != nil:
			s.h.OnServiceAdd(c[1])
			s.services[name] = c[1]
		case c[1] == nil && c[0] != nil:
			s.h.OnServiceDelete(c[0])
			delete(s.services, name)
		case c[0] != nil:
			s.h.OnServiceUpdate(c[0], c[1])
			s.services[name] = c[1]
		}
	}
	for _, name := range sortedNames(ch.slices) {
		c := ch.slices[name]
		old := s.slices[name]
		switch {
		case c[1] == nil:
			if old != nil {
				s.h.OnEndpointSliceDelete(old)
				delete(s.slices, name)
			}
		case old == nil:
			s.h.OnEndpointSliceAdd(c[1])
			s.slices[name] = c[1]
		case old.Labels[discovery.LabelServiceName] != c[1].Labels[discovery.LabelServiceName]:
			// The slice moved to another service: handlers key slices by service.
			s.h.OnEndpointSliceDelete(old)
			s.h.OnEndpointSliceAdd(c[1])
			s.slices[name] = c[1]
		default:
			s.h.OnEndpointSliceUpdate(old, c[1])
			s.slices[name] = c[1]
		}
	}
	node := ch.node[1]
	switch {
	case node == s.node:
	case s.node == nil:
		s.h.OnNodeAdd(node)
	case node == nil:
		s.h.OnNodeDelete(s.node)
	default:
		s.h.OnNodeUpdate(s.node, node)
	}
	s.node = node
}

func sortedNames[V any](m map[types.NamespacedName]V) []types.NamespacedName {
	out := make([]types.NamespacedName, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// report logs new problems once, one line per sync, and updates the metrics.
func (s *Source) report(d time.Duration, ch *change) {
	probs := s.st.problems
	seen := map[string]bool{}
	errs := 0
	for i := range probs {
		p := &probs[i]
		msg := p.String()
		seen[msg] = true
		if !p.Warning {
			errs++
		}
		if s.logged[msg] {
			continue
		}
		if p.Warning {
			s.log.Warn("manifest: " + msg)
		} else {
			s.log.Error("manifest: " + msg)
		}
	}
	s.mu.Lock()
	s.problems = probs
	s.logged = seen
	s.loads++
	s.mu.Unlock()
	if len(ch.services)+len(ch.slices) > 0 || errs > 0 {
		s.log.Info("manifests loaded", "dir", s.cfg.Dir, "services", len(s.services), "endpointSlices", len(s.slices),
			"changedServices", len(ch.services), "changedSlices", len(ch.slices), "errors", errs, "took", d.Round(time.Millisecond))
	}
	result := "ok"
	if errs > 0 {
		result = "error"
	}
	s.countLoad(result)
	if s.m == nil {
		return
	}
	if s.m.ManifestErrors != nil {
		s.m.ManifestErrors.Set(float64(errs))
	}
	for res, u := range s.alloc.Usage() {
		if s.m.AllocatorUsed != nil {
			s.m.AllocatorUsed.WithLabelValues(res).Set(float64(u[0]))
		}
		if s.m.AllocatorSize != nil {
			s.m.AllocatorSize.WithLabelValues(res).Set(float64(u[1]))
		}
	}
}

func (s *Source) countLoad(result string) {
	if s.m != nil && s.m.ManifestLoadsTotal != nil {
		s.m.ManifestLoadsTotal.WithLabelValues(result).Inc()
	}
}

// Result is a one-shot load of a manifest directory, for validate, get and describe.
type Result struct {
	// Services are the valid services, with their allocations, sorted by namespace/name.
	Services []*v1.Service
	// EndpointSlices are the slices from files, from v1 Endpoints and from pod
	// selectors, sorted by namespace/name.
	EndpointSlices []*discovery.EndpointSlice
	Pods           []*v1.Pod
	Nodes          []*v1.Node
	Namespaces     []*v1.Namespace
	// Node is this node's Node object, if the manifests have one.
	Node *v1.Node
	// Problems are the errors and warnings, in file order.
	Problems []Problem
}

// Errors returns the problems that reject something.
func (r *Result) Errors() []Problem {
	var out []Problem
	for _, p := range r.Problems {
		if !p.Warning {
			out = append(out, p)
		}
	}
	return out
}

// Load reads the directory once, with the saved allocations, and allocates what
// is missing exactly as Run would, without saving anything.
func Load(cfg Config) (*Result, error) {
	s, err := newSource(cfg, nil, nil)
	if err != nil {
		return nil, err
	}
	ch, err := s.st.sync(s.cfg.NodeName)
	if err != nil {
		return nil, err
	}
	r := &Result{Node: ch.node[1], Problems: s.st.problems}
	for k, e := range s.st.inForce {
		switch k.Kind {
		case KindService:
			r.Services = append(r.Services, e.out.(*v1.Service))
		case KindEndpointSlice:
			r.EndpointSlices = append(r.EndpointSlices, e.out.(*discovery.EndpointSlice))
		case KindPod:
			r.Pods = append(r.Pods, e.out.(*podInfo).pod())
		case KindNode:
			r.Nodes = append(r.Nodes, e.out.(*v1.Node))
		case KindNamespace:
			r.Namespaces = append(r.Namespaces, e.out.(*v1.Namespace))
		}
	}
	for _, sl := range s.st.selSlices {
		r.EndpointSlices = append(r.EndpointSlices, sl...)
	}
	byName := func(ns1, n1, ns2, n2 string) int { return cmp.Or(cmp.Compare(ns1, ns2), cmp.Compare(n1, n2)) }
	slices.SortFunc(r.Services, func(a, b *v1.Service) int { return byName(a.Namespace, a.Name, b.Namespace, b.Name) })
	slices.SortFunc(r.EndpointSlices, func(a, b *discovery.EndpointSlice) int {
		return byName(a.Namespace, a.Name, b.Namespace, b.Name)
	})
	slices.SortFunc(r.Pods, func(a, b *v1.Pod) int { return byName(a.Namespace, a.Name, b.Namespace, b.Name) })
	slices.SortFunc(r.Nodes, func(a, b *v1.Node) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Namespaces, func(a, b *v1.Namespace) int { return cmp.Compare(a.Name, b.Name) })
	return r, nil
}
