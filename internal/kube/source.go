// Package kube is kproxy's Kubernetes API source: client-go informers for Services,
// EndpointSlices and this node's Node object, feeding a model.Handler exactly like
// the manifest source does. It is how kproxy runs as a drop-in kube-proxy replacement.
//
// Behaviour that matters for a node proxy, and why:
//   - Nothing is announced as synced until each informer's handler has received
//     every object of the initial list, so the data plane never programs a partial
//     view (a half-listed cluster would drop traffic to the missing services).
//   - An unreachable API server never removes state: client-go's reflector keeps its
//     store, retries with backoff and, once it is back, relists; only then do the
//     differences (including deletions made meanwhile) reach the handler.
//   - Services and slices that carry service.kubernetes.io/service-proxy-name for
//     another proxy are skipped, as kube-proxy does. Headless and ExternalName
//     services are NOT filtered here: kproxy's DNS needs them, and the model leaves
//     them out of the proxied ports itself.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kproxy/kproxy/internal/model"
)

// LabelServiceProxyName is the label that hands a service to a specific proxy;
// kube-proxy (and kproxy by default) ignore services that carry it.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Content types for Config.ContentType.
const (
	ContentTypeProtobuf = "application/vnd.kubernetes.protobuf"
	ContentTypeJSON     = "application/json"
)

// Config configures the Kubernetes source. Field meanings follow kube-proxy's
// KubeProxyConfiguration (clientConnection, hostnameOverride, configSyncPeriod).
type Config struct {
	// Kubeconfig is the path of a kubeconfig file; empty with an empty Master means
	// the in-cluster configuration (service account token of the pod).
	Kubeconfig string
	// Master overrides the API server address in the kubeconfig.
	Master string
	// NodeName is the name of this node's Node object (kube-proxy's
	// --hostname-override); Defaults sets the lowercased host name.
	NodeName string
	// ServiceProxyName, when set, makes kproxy also take services labelled
	// service.kubernetes.io/service-proxy-name=ServiceProxyName. Services without
	// the label are always taken; services labelled for another proxy never.
	ServiceProxyName string
	// ResyncPeriod is the informers' resync period (kube-proxy's configSyncPeriod);
	// 0 disables resyncs.
	ResyncPeriod time.Duration
	// QPS and Burst limit the client's request rate (kube-proxy defaults: 5 and 10).
	QPS   float32
	Burst int
	// ContentType is the wire format: ContentTypeProtobuf (default) or ContentTypeJSON.
	ContentType string
	// Compression asks the API server to gzip responses (off by default; see
	// RESTConfig); a kubeconfig's disable-compression: true wins over it.
	Compression bool
	// ProbeInterval is how often the API server's /readyz is polled to report
	// Connected; 0 means the default (10 s), a negative value turns probing off.
	ProbeInterval time.Duration
	// Logger receives the source's logs; nil means slog.Default() with source=kube.
	Logger *slog.Logger
}

// Defaults fills unset fields with kube-proxy's defaults.
func (c *Config) Defaults() {
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeName = strings.ToLower(strings.TrimSpace(h))
		}
	}
	if c.QPS == 0 {
		c.QPS = 5
	}
	if c.Burst == 0 {
		c.Burst = 10
	}
	if c.ContentType == "" {
		c.ContentType = ContentTypeProtobuf
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default().With("source", "kube")
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty (set the hostname override)"))
	}
	if c.QPS < 0 || c.Burst < 0 {
		errs = append(errs, fmt.Errorf("qps %v and burst %d must not be negative", c.QPS, c.Burst))
	}
	if c.ResyncPeriod < 0 {
		errs = append(errs, fmt.Errorf("resync period %v must not be negative", c.ResyncPeriod))
	}
	switch c.ContentType {
	case "", ContentTypeProtobuf, ContentTypeJSON:
	default:
		errs = append(errs, fmt.Errorf("content type %q: want %s or %s", c.ContentType, ContentTypeProtobuf, ContentTypeJSON))
	}
	return errors.Join(errs...)
}

// RESTConfig builds the client configuration: the kubeconfig file and/or master
// URL, or the in-cluster configuration when both are empty, with kproxy's user
// agent, rate limits and content type.
func RESTConfig(c Config) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if c.Kubeconfig == "" && c.Master == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (no kubeconfig given): %w", err)
		}
	} else {
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: c.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: c.Master}},
		)
		// The address first: a placeholder is the one thing an operator must
		// set, so it is named before anything else (such as a CA file that
		// exists only in a pod) can fail.
		server := c.Master
		if raw, err := cc.RawConfig(); server == "" && err == nil {
			if ctx := raw.Contexts[raw.CurrentContext]; ctx != nil && raw.Clusters[ctx.Cluster] != nil {
				server = raw.Clusters[ctx.Cluster].Server
			}
		}
		if err := checkPlaceholder(server, c); err != nil {
			return nil, err
		}
		rc, err = cc.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %q: %w", c.Kubeconfig, err)
		}
	}
	rc = rest.CopyConfig(rc)
	// Compression is the client's choice (it sends Accept-Encoding: gzip or
	// not). Off by default, as kube-controller-manager and kube-scheduler have it:
	// protobuf is compact already, and gzip costs the API server (which serves
	// every node) and kproxy CPU on every list and watch event; on a cluster
	// network that is slower than sending the bytes.
	rc.DisableCompression = rc.DisableCompression || !c.Compression
	rc.UserAgent = "kproxy/" + rest.DefaultKubernetesUserAgent()
	if c.QPS != 0 {
		rc.QPS = c.QPS
	}
	if c.Burst != 0 {
		rc.Burst = c.Burst
	}
	switch c.ContentType {
	case ContentTypeProtobuf:
		rc.ContentType = ContentTypeProtobuf
		rc.AcceptContentTypes = ContentTypeProtobuf + "," + ContentTypeJSON
	case ContentTypeJSON:
		rc.ContentType = ContentTypeJSON
		rc.AcceptContentTypes = ContentTypeJSON
	}
	return rc, nil
}

// PlaceholderServer is the API server address that deploy/kproxy.yaml's
// kubeconfig ships with, for the operator to replace: a pod on a node whose
// service proxy is not running yet cannot reach the API server through the
// kubernetes Service's cluster IP, so kproxy must be told the real address. The
// .invalid top-level domain never resolves (RFC 2606).
const PlaceholderServer = "https://kube-apiserver.invalid:6443"

// checkPlaceholder turns an API server address that cannot work (a host in the
// .invalid domain, such as PlaceholderServer) into an error that says what to set.
func checkPlaceholder(host string, c Config) error {
	u, err := url.Parse(host)
	if err != nil || !strings.HasSuffix(strings.TrimSuffix(u.Hostname(), "."), ".invalid") {
		return nil
	}
	where := "--master"
	if c.Master == "" {
		where = fmt.Sprintf("the kubeconfig %s (deploy/kproxy.yaml: ConfigMap kube-system/kproxy, key kubeconfig.conf, field clusters[0].cluster.server), or give --master", c.Kubeconfig)
	}
	return fmt.Errorf("the API server address %s is a placeholder: put the API server's real address "+
		"(`kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}'` prints it) in %s. "+
		"kproxy cannot reach the API server through the kubernetes Service's cluster IP: only a running service proxy makes that reachable", host, where)
}

// Source watches the API server and feeds a model.Handler.
type Source struct {
	cfg    Config
	h      model.Handler
	client kubernetes.Interface
	log    *slog.Logger

	factory     informers.SharedInformerFactory // Services and EndpointSlices
	nodeFactory informers.SharedInformerFactory // this node only (field selector)
	svcReg      cache.ResourceEventHandlerRegistration
	sliceReg    cache.ResourceEventHandlerRegistration
	nodeReg     cache.ResourceEventHandlerRegistration

	synced    atomic.Bool
	connected atomic.Bool
	mu        sync.Mutex
	lastErr   error
	lastOK    time.Time
	running   atomic.Bool
}

// New builds a Source from cfg (Defaults is applied to a copy) that will feed h.
func New(cfg Config, h model.Handler) (*Source, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kube source config: %w", err)
	}
	rc, err := RESTConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return NewWithClient(cfg, client, h)
}

// NewWithClient builds a Source on an existing clientset.
func NewWithClient(cfg Config, client kubernetes.Interface, h model.Handler) (*Source, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kube source config: %w", err)
	}
	if h == nil {
		return nil, errors.New("kube source: nil handler")
	}
	s := &Source{cfg: cfg, h: h, client: client, log: cfg.Logger}

	// With no proxy name, kube-proxy's own server-side selector keeps other
	// proxies' objects out of memory entirely. With one, "label absent OR equal"
	// cannot be a single label selector, so filtering happens in the handlers.
	sel := labels.Everything()
	if cfg.ServiceProxyName == "" {
		req, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
		if err != nil {
			return nil, fmt.Errorf("proxy name selector: %w", err)
		}
		sel = labels.NewSelector().Add(*req)
	}
	s.factory = informers.NewSharedInformerFactoryWithOptions(client, cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }),
		informers.WithTransform(slim))
	s.nodeFactory = informers.NewSharedInformerFactoryWithOptions(client, cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
		}),
		informers.WithTransform(slim))

	svcInf := s.factory.Core().V1().Services().Informer()
	sliceInf := s.factory.Discovery().V1().EndpointSlices().Informer()
	nodeInf := s.nodeFactory.Core().V1().Nodes().Informer()
	for _, inf := range []cache.SharedIndexInformer{svcInf, sliceInf, nodeInf} {
		if err := inf.SetWatchErrorHandlerWithContext(s.watchError); err != nil {
			return nil, fmt.Errorf("set watch error handler: %w", err)
		}
	}
	var err error
	if s.svcReg, err = svcInf.AddEventHandler(s.serviceHandler()); err != nil {
		return nil, fmt.Errorf("service handler: %w", err)
	}
	if s.sliceReg, err = sliceInf.AddEventHandler(s.sliceHandler()); err != nil {
		return nil, fmt.Errorf("endpointslice handler: %w", err)
	}
	if s.nodeReg, err = nodeInf.AddEventHandler(s.nodeHandler()); err != nil {
		return nil, fmt.Errorf("node handler: %w", err)
	}
	return s, nil
}

// Client returns the clientset the source uses (for events, describe, health).
func (s *Source) Client() kubernetes.Interface { return s.client }

// Run starts the informers, announces each kind as synced once its handler has
// seen the initial list, and blocks until ctx is done. It returns ctx's error if
// ctx ends before the caches synced, nil after a normal shutdown.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kube source: already running")
	}
	s.log.Info("starting", "node", s.cfg.NodeName, "serviceProxyName", s.cfg.ServiceProxyName,
		"resync", s.cfg.ResyncPeriod, "contentType", s.cfg.ContentType)
	s.factory.Start(ctx.Done())
	s.nodeFactory.Start(ctx.Done())
	defer func() {
		// Shutdown waits for the informer goroutines, so no handler runs after Run returns.
		s.factory.Shutdown()
		s.nodeFactory.Shutdown()
	}()
	if s.cfg.ProbeInterval > 0 {
		go s.probe(ctx)
	}

	steps := []struct {
		kind   string
		reg    cache.ResourceEventHandlerRegistration
		synced func()
	}{
		{"services", s.svcReg, s.h.OnServicesSynced},
		{"endpointslices", s.sliceReg, s.h.OnEndpointSlicesSynced},
		{"node", s.nodeReg, s.h.OnNodeSynced},
	}
	start := time.Now()
	for _, st := range steps {
		// The registration's checker closes a channel the moment the initial
		// list reached the handler; cache.WaitForCacheSync would poll every
		// 100 ms, and at start-up every millisecond counts.
		select {
		case <-st.reg.HasSyncedChecker().Done():
		case <-ctx.Done():
			return fmt.Errorf("wait for %s cache: %w", st.kind, context.Cause(ctx))
		}
		st.synced()
		s.log.Info("cache synced", "kind", st.kind, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	s.synced.Store(true)
	s.markContact(nil)
	<-ctx.Done()
	return nil
}

// Synced reports whether every cache has synced and the handler was told so.
func (s *Source) Synced() bool { return s.synced.Load() }

// Status is the source's view of its API server connection.
type Status struct {
	// Synced is true once the initial lists reached the handler.
	Synced bool
	// Connected is false after a list/watch or probe failure, until the next success.
	Connected bool
	// LastContact is the last time the API server answered.
	LastContact time.Time
	// LastError is the most recent list/watch/probe error, nil when connected.
	LastError error
}

// Status returns the connection state, for health endpoints and logs.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Synced: s.synced.Load(), Connected: s.connected.Load(), LastContact: s.lastOK, LastError: s.lastErr}
}

// Connected reports whether the API server answered the last probe and no
// watch has failed since. A disconnected source keeps its state; it is a
// signal for health and metrics, not a reason to change rules.
func (s *Source) Connected() bool { return s.connected.Load() }

func (s *Source) markContact(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.connected.Load()
	if err == nil {
		s.lastOK = time.Now()
		s.lastErr = nil
		s.connected.Store(true)
		if !was && s.synced.Load() {
			s.log.Info("API server reachable")
		}
		return
	}
	s.lastErr = err
	s.connected.Store(false)
	if was {
		s.log.Warn("API server unreachable; keeping current state and retrying", "err", err)
	}
}

// watchError is called by the reflectors each time a list or watch fails,
// before they back off and retry.
func (s *Source) watchError(ctx context.Context, r *cache.Reflector, err error) {
	// A watch closed by the server, or one whose resource version expired, is
	// routine: the reflector re-watches or relists at once.
	if !errors.Is(err, io.EOF) && !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		s.markContact(fmt.Errorf("list/watch: %w", err))
	}
	cache.DefaultWatchErrorHandler(ctx, r, err)
}

func (s *Source) probe(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, min(s.cfg.ProbeInterval, 5*time.Second))
		err := s.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.markContact(fmt.Errorf("probe /readyz: %w", err))
		} else {
			s.markContact(nil)
		}
	}
}

// serves reports whether an object with these labels is for this proxy.
func (s *Source) serves(l map[string]string) bool {
	v, ok := l[LabelServiceProxyName]
	return !ok || (s.cfg.ServiceProxyName != "" && v == s.cfg.ServiceProxyName)
}

// filtered turns label transitions into adds and deletes: a service relabelled
// for another proxy is gone from kproxy's point of view.
func filtered[T metav1.Object](s *Source, add func(T), update func(T, T), del func(T)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			o, ok := obj.(T)
			if !ok {
				s.log.Error("unexpected object in add", "type", fmt.Sprintf("%T", obj))
				return
			}
			if s.serves(o.GetLabels()) {
				add(o)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(T)
			n, ok2 := newObj.(T)
			if !ok1 || !ok2 {
				s.log.Error("unexpected object in update", "old", fmt.Sprintf("%T", oldObj), "new", fmt.Sprintf("%T", newObj))
				return
			}
			was, is := s.serves(o.GetLabels()), s.serves(n.GetLabels())
			switch {
			case was && is:
				update(o, n)
			case is:
				add(n)
			case was:
				del(o)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			o, ok := obj.(T)
			if !ok {
				s.log.Error("unexpected object in delete", "type", fmt.Sprintf("%T", obj))
				return
			}
			if s.serves(o.GetLabels()) {
				del(o)
			}
		},
	}
}

func (s *Source) serviceHandler() cache.ResourceEventHandler {
	return filtered(s, s.h.OnServiceAdd, s.h.OnServiceUpdate, s.h.OnServiceDelete)
}

func (s *Source) sliceHandler() cache.ResourceEventHandler {
	return filtered(s, s.h.OnEndpointSliceAdd, s.h.OnEndpointSliceUpdate, s.h.OnEndpointSliceDelete)
}

func (s *Source) nodeHandler() cache.ResourceEventHandler {
	// Node labels never carry the proxy-name label; the filter is a no-op here.
	return filtered(s, s.h.OnNodeAdd, s.h.OnNodeUpdate, s.h.OnNodeDelete)
}

// slim drops what kproxy never reads before objects enter the caches: managed
// fields (often the largest part of an object), owner references, kubectl's
// last-applied annotation (kubectl describe hides it too), an endpoint's
// reference to its pod (a third of an EndpointSlice's memory) and deprecated
// topology, and a node's image and volume lists.
func slim(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetOwnerReferences(nil)
		if a := m.GetAnnotations(); a != nil {
			if _, ok := a[v1.LastAppliedConfigAnnotation]; ok {
				delete(a, v1.LastAppliedConfigAnnotation)
				m.SetAnnotations(a)
			}
		}
	}
	if es, ok := obj.(*discovery.EndpointSlice); ok {
		for i := range es.Endpoints {
			es.Endpoints[i].TargetRef = nil
			es.Endpoints[i].DeprecatedTopology = nil
		}
	}
	if n, ok := obj.(*v1.Node); ok {
		n.Status.Images = nil
		n.Status.VolumesInUse = nil
		n.Status.VolumesAttached = nil
	}
	return obj, nil
}

var _ cache.TransformFunc = slim
