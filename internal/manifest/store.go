package manifest

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kproxy/kproxy/internal/allocator"
	"github.com/kproxy/kproxy/internal/validation"
)

// fileStamp detects a changed file without reading it.
type fileStamp struct {
	size  int64
	mtime time.Time
	ino   uint64
	ctime int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	s := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
		s.ctime = st.Ctim.Nano()
	}
	return s
}

// fileResult is what one file decoded to; it is kept until the file changes, so
// that an unchanged file costs a stat per sync and its objects keep their identity.
type fileResult struct {
	stamp    fileStamp
	objects  []*object
	problems []Problem
	// broken is set when some document could not be turned into identifiable
	// objects: the objects the file held before then stay in force.
	broken bool
}

// entry is an object in force.
type entry struct {
	src *object // the decoded object it came from
	out any     // the processed object: an allocated *v1.Service, a defaulted *v1.Pod, ...
}

// store turns the manifest directory into the objects in force: it decodes
// changed files, validates and allocates changed objects, keeps the last good
// version of an object whose new version is invalid, and computes endpoints.
type store struct {
	dir   string
	alloc *allocator.Allocator
	vopts validation.Options

	files    map[string]*fileResult
	byKey    map[objKey][]*object // every decoded object, by key, in file order
	inForce  map[objKey]*entry
	keyProbs map[objKey][]Problem // problems of each key when it was last resolved
	retry    map[objKey]bool      // resolved again on every sync: failed allocations, objects kept for a broken file
	problems []Problem            // of the last sync
	// svcSel indexes selector services by each of their selector pairs, per
	// namespace, so that a pod change recomputes only the services it may match.
	svcSel map[string]map[string]map[types.NamespacedName]struct{}

	pods      map[string]*podIndex // namespace → index of in-force pods
	nodeZones map[string]string
	selSlices map[types.NamespacedName][]*discovery.EndpointSlice // computed from pods or mirrored from Endpoints
	dirs      []string                                            // directories seen by the last scan
	// scanProblems are the entries of the directory the last scan could not
	// read: unreadable directories (what was read from under them stays).
	scanProblems []Problem
	initialled   bool
}

func newStore(dir string, alloc *allocator.Allocator) *store {
	return &store{
		dir:       dir,
		alloc:     alloc,
		files:     map[string]*fileResult{},
		byKey:     map[objKey][]*object{},
		inForce:   map[objKey]*entry{},
		keyProbs:  map[objKey][]Problem{},
		retry:     map[objKey]bool{},
		svcSel:    map[string]map[string]map[types.NamespacedName]struct{}{},
		pods:      map[string]*podIndex{},
		nodeZones: map[string]string{},
		selSlices: map[types.NamespacedName][]*discovery.EndpointSlice{},
	}
}

func isManifest(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// fileChange is a file that appeared, changed or went away (old or new is nil).
type fileChange struct {
	old, new *fileResult
}

// scan walks the directory and decodes the files that are new or changed. It
// returns them, and the directories seen (for the watcher).
func (s *store) scan() (changes []fileChange, dirs []string, err error) {
	type job struct {
		rel   string
		path  string
		stamp fileStamp
		res   *fileResult
	}
	var jobs []*job
	seen := map[string]bool{}
	s.scanProblems = nil
	err = filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, werr error) error {
		rel := s.relPath(path)
		if werr != nil {
			if path == s.dir {
				return werr
			}
			if errors.Is(werr, fs.ErrNotExist) {
				return nil // removed during the walk
			}
			// An unreadable directory: say so, and keep what was read from
			// under it before, so that its services do not vanish.
			s.scanProblems = append(s.scanProblems, Problem{File: rel + "/", Message: "read directory: " + errText(werr)})
			for f := range s.files {
				if strings.HasPrefix(f, rel+"/") {
					seen[f] = true
				}
			}
			return nil
		}
		name := d.Name()
		if path != s.dir && strings.HasPrefix(name, ".") {
			// Hidden files: editor swap files, and ConfigMap volumes' ..data trees
			// (their files are reached through the top-level symlinks).
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		if !isManifest(name) {
			return nil
		}
		fi, err := os.Stat(path) // follows symlinks
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && d.Type()&fs.ModeSymlink == 0 {
				return nil // removed during the walk
			}
			// A dangling symlink or a symlink loop: a file that cannot be read.
			// The objects it held before stay in force, as for any broken file.
			seen[rel] = true
			if old, ok := s.files[rel]; !ok || old.stamp != (fileStamp{}) {
				jobs = append(jobs, &job{rel: rel, path: path, res: unreadable(rel, err)})
			}
			return nil
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		seen[rel] = true
		st := stampOf(fi)
		if old, ok := s.files[rel]; ok && old.stamp == st {
			return nil
		}
		jobs = append(jobs, &job{rel: rel, path: path, stamp: st})
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read manifest directory: %w", err)
	}
	for rel, old := range s.files {
		if !seen[rel] {
			delete(s.files, rel)
			changes = append(changes, fileChange{old: old})
		}
	}
	if len(jobs) == 0 {
		return changes, dirs, nil
	}
	// Decode in parallel: YAML decoding dominates a large load.
	var wg sync.WaitGroup
	ch := make(chan *job)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				if j.res == nil {
					j.res = decodeFile(j.rel, j.path, s.vopts)
				}
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	for _, j := range jobs {
		j.res.stamp = j.stamp
		changes = append(changes, fileChange{old: s.files[j.rel], new: j.res})
		s.files[j.rel] = j.res
	}
	return changes, dirs, nil
}

// relPath is path relative to the manifest directory, with forward slashes.
func (s *store) relPath(path string) string {
	rel, _ := filepath.Rel(s.dir, path)
	return filepath.ToSlash(rel)
}

// unreadable is the result of a file that could not be read: broken, so that
// the objects it held before stay in force.
func unreadable(rel string, err error) *fileResult {
	msg := errText(err)
	switch {
	case errors.Is(err, syscall.ELOOP):
		msg = "symlink loop: " + msg
	case errors.Is(err, fs.ErrNotExist):
		msg = "dangling symlink: " + msg
	}
	return &fileResult{broken: true, problems: []Problem{{File: rel, Message: "read: " + msg}}}
}

// errText is an I/O error's text without the path, which the problem names.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func decodeFile(rel, path string, vopts validation.Options) *fileResult {
	data, err := os.ReadFile(path)
	if err != nil {
		return unreadable(rel, err)
	}
	res := &fileResult{}
	for _, d := range splitFile(rel, data) {
		if d.problem != nil {
			res.problems = append(res.problems, *d.problem)
			res.broken = true
			continue
		}
		objs, probs, fatal := decodeDocument(d.document)
		for _, o := range objs {
			prepare(o, d.data, vopts)
		}
		res.objects = append(res.objects, objs...)
		res.problems = append(res.problems, probs...)
		res.broken = res.broken || fatal
	}
	return res
}

type splitDoc struct {
	document
	problem *Problem
}

func splitFile(rel string, data []byte) []splitDoc {
	var out []splitDoc
	if strings.EqualFold(filepath.Ext(rel), ".json") {
		docs, p := splitJSON(rel, data)
		for _, d := range docs {
			out = append(out, splitDoc{document: d})
		}
		if p != nil {
			out = append(out, splitDoc{problem: p})
		}
		return out
	}
	for _, d := range splitYAML(rel, data) {
		out = append(out, splitDoc{document: d})
	}
	return out
}

// docBytes re-reads the document an object came from, to locate a field's line
// in it; this only happens for objects with errors.
func (s *store) docBytes(r ref) []byte {
	data, err := os.ReadFile(filepath.Join(s.dir, filepath.FromSlash(r.File)))
	if err != nil {
		return nil
	}
	for _, d := range splitFile(r.File, data) {
		if d.problem == nil && d.Doc == r.Doc {
			return d.data
		}
	}
	return nil
}

// fieldProblems turns field errors on an object into located problems.
func fieldProblems(o *object, doc []byte, errs field.ErrorList) []Problem {
	var out []Problem
	for _, e := range errs {
		p := Problem{File: o.File, Doc: o.Doc, Item: o.Item, Line: o.Line, Kind: o.key.Kind,
			Namespace: o.key.Namespace, Name: o.key.Name, Field: e.Field, Message: e.ErrorBody()}
		prefix := ""
		if o.Item > 0 {
			prefix = fmt.Sprintf("items[%d].", o.Item-1)
		}
		// The field may be absent (a required value): fall back to its parent. The
		// API server names spec.clusterIPs[0] for what is often written as clusterIP.
		paths := []string{prefix + e.Field}
		if strings.Contains(e.Field, "clusterIPs[0]") {
			paths = append([]string{prefix + strings.Replace(e.Field, "clusterIPs[0]", "clusterIP", 1)}, paths...)
		}
	find:
		for _, path := range paths {
			for ; path != "" && path != strings.TrimSuffix(prefix, "."); path = parentPath(path) {
				if line, _ := locate(doc, path, nil); line > 0 {
					p.Line = o.Line + line - 1
					break find
				}
			}
		}
		out = append(out, p)
	}
	return out
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// change lists what a sync changed, for the handlers.
type change struct {
	services map[types.NamespacedName][2]*v1.Service              // old, new (nil = absent)
	slices   map[types.NamespacedName][2]*discovery.EndpointSlice // keyed by slice namespace/name
	node     [2]*v1.Node
}

// sync brings the objects in force up to date with the directory. Only the keys
// of objects in changed files are looked at again (and services whose
// allocation failed, since what they wanted may have been freed), so that one
// edited pod costs the same with 100,000 others. Each step is a method below:
// scan the files, relink the changed files' objects, order the touched keys,
// free the allocations of services deleted while kproxy was down, take deleted
// objects out of force, put new and changed ones in, refresh the nodes, and
// recompute the endpoints of the services that need it.
func (s *store) sync(nodeName string) (*change, error) {
	changes, dirs, err := s.scan()
	if err != nil {
		return nil, err
	}
	s.dirs = dirs
	touched := s.relink(changes)
	broken := s.brokenFiles()
	keys := orderKeys(touched)
	if !s.initialled {
		s.pruneAllocations(broken)
		s.initialled = true
	}
	ch := &change{services: map[types.NamespacedName][2]*v1.Service{}, slices: map[types.NamespacedName][2]*discovery.EndpointSlice{}}
	d := &delta{ch: ch, dirtySvc: map[types.NamespacedName]bool{}}
	// Deletions first, so that what they free can be taken by this sync's additions.
	s.applyDeletions(keys, broken, d)
	s.applyCandidates(keys, d)
	ch.node = [2]*v1.Node{nil, s.refreshNodes(nodeName, d)}
	s.recomputeSlices(ch, d.dirtySvc)
	s.problems = s.collectProblems()
	return ch, nil
}

// relink moves the objects of changed files in and out of byKey, and returns the
// keys to look at again: theirs and those to retry.
func (s *store) relink(changes []fileChange) map[objKey]bool {
	touched := map[objKey]bool{}
	for _, c := range changes {
		if c.old != nil {
			for _, o := range c.old.objects {
				s.unlink(o)
				touched[o.key] = true
			}
		}
		if c.new != nil {
			for _, o := range c.new.objects {
				s.link(o)
				touched[o.key] = true
			}
		}
	}
	for k := range s.retry {
		touched[k] = true
	}
	return touched
}

// brokenFiles are the files some document of which could not be decoded: the
// objects they held keep their place.
func (s *store) brokenFiles() map[string]bool {
	broken := map[string]bool{}
	for f, fr := range s.files {
		if fr.broken {
			broken[f] = true
		}
	}
	return broken
}

// orderKeys puts the services last, sorted: allocation is first come, first
// served, and "first" must be reproducible. Only services need an order; sorting
// 100,000 pods would be wasted time.
func orderKeys(touched map[objKey]bool) []objKey {
	keys := make([]objKey, 0, len(touched))
	var svcKeys []objKey
	for k := range touched {
		if k.Kind == KindService {
			svcKeys = append(svcKeys, k)
		} else {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(svcKeys, func(a, b objKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return append(keys, svcKeys...)
}

// pruneAllocations frees, on the first sync, the values of services deleted
// while kproxy was down; those of a file that fails to load keep them.
func (s *store) pruneAllocations(broken map[string]bool) {
	s.alloc.Prune(func(k types.NamespacedName, file string) bool {
		return len(s.byKey[objKey{Kind: KindService, Namespace: k.Namespace, Name: k.Name}]) > 0 || broken[file]
	})
}

// applyDeletions takes out of force the objects no file defines any more,
// except those of a file that is broken now: they stay until it is fixed.
func (s *store) applyDeletions(keys []objKey, broken map[string]bool, d *delta) {
	for _, k := range keys {
		if len(s.byKey[k]) > 0 {
			continue
		}
		delete(s.retry, k)
		cur, ok := s.inForce[k]
		if !ok {
			// An object that never made it in force is gone, and its problems with it.
			delete(s.keyProbs, k)
			continue
		}
		if _, stillThere := s.files[cur.src.File]; stillThere && broken[cur.src.File] {
			s.keyProbs[k] = []Problem{retainedProblem(cur.src)}
			// Looked at again every sync: once the file is fixed without it, it goes.
			s.retry[k] = true
			continue
		}
		delete(s.keyProbs, k)
		s.remove(k, cur, d)
	}
}

// candidate is the object that defines k (the first in file order) and a
// problem for each duplicate.
func (s *store) candidate(k objKey) (*object, []Problem) {
	objs := s.byKey[k]
	if len(objs) == 0 {
		return nil, nil
	}
	var probs []Problem
	for _, o := range objs[1:] {
		probs = append(probs, Problem{File: o.File, Doc: o.Doc, Item: o.Item, Line: o.Line,
			Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Field: "metadata.name",
			Message: fmt.Sprintf("Duplicate value: %q: already defined in %s (document %d)", k.Name, objs[0].File, objs[0].Doc)})
	}
	return objs[0], probs
}

// applyCandidates puts each key's candidate in force when it is new or changed
// and valid; an invalid one leaves the last good version in force.
func (s *store) applyCandidates(keys []objKey, d *delta) {
	for _, k := range keys {
		cand, probs := s.candidate(k)
		if cand == nil {
			continue
		}
		delete(s.retry, k)
		if cur := s.inForce[k]; cur == nil || cur.src != cand {
			probs = append(probs, s.admit(k, cand, cur, d)...)
		}
		if len(probs) > 0 {
			s.keyProbs[k] = probs
		} else {
			delete(s.keyProbs, k)
		}
	}
}

// admit processes cand (allocating a service) and, if it is valid, puts it in
// force in place of cur. It returns the problems that kept it out.
func (s *store) admit(k objKey, cand *object, cur *entry, d *delta) []Problem {
	out, errs := s.process(cand)
	if len(errs) == 0 {
		if cur != nil {
			s.unindex(k, cur, d)
		}
		e := &entry{src: cand, out: out}
		s.inForce[k] = e
		s.index(k, e, cur, d)
		return nil
	}
	if cur != nil {
		errs = append(errs, retainedProblem(cur.src))
	}
	if k.Kind == KindService && cand.problems == nil {
		// An allocation conflict may be resolved by another service's change.
		s.retry[k] = true
	}
	return errs
}

// refreshNodes recomputes the other nodes' zones when a Node changed (zones
// feed every endpoint, so every selector service is recomputed then), and
// returns this node's object.
func (s *store) refreshNodes(nodeName string, d *delta) *v1.Node {
	if d.nodes {
		s.nodeZones = map[string]string{}
		for k, e := range s.inForce {
			switch {
			case k.Kind == KindNode:
				n := e.out.(*v1.Node)
				if z := n.Labels[v1.LabelTopologyZone]; z != "" {
					s.nodeZones[n.Name] = z
				}
			case k.Kind == KindService && len(e.out.(*v1.Service).Spec.Selector) > 0:
				d.dirtySvc[types.NamespacedName{Namespace: k.Namespace, Name: k.Name}] = true
			}
		}
	}
	if e := s.inForce[objKey{Kind: KindNode, Name: nodeName}]; e != nil {
		return e.out.(*v1.Node)
	}
	return nil
}

// collectProblems gathers the problems of the directory, the files and the
// objects, in file order.
func (s *store) collectProblems() []Problem {
	problems := slices.Clone(s.scanProblems)
	for _, fr := range s.files {
		problems = append(problems, fr.problems...)
	}
	for _, ps := range s.keyProbs {
		problems = append(problems, ps...)
	}
	sortProblems(problems)
	return problems
}

// link records a decoded object under its key, in file order: the first one is
// the candidate, the others are duplicates.
func (s *store) link(o *object) {
	objs := append(s.byKey[o.key], o)
	slices.SortStableFunc(objs, func(a, b *object) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Doc, b.Doc), cmp.Compare(a.Item, b.Item))
	})
	s.byKey[o.key] = objs
}

func (s *store) unlink(o *object) {
	objs := slices.DeleteFunc(s.byKey[o.key], func(x *object) bool { return x == o })
	if len(objs) == 0 {
		delete(s.byKey, o.key)
	} else {
		s.byKey[o.key] = objs
	}
}

func retainedProblem(o *object) Problem {
	return Problem{File: o.File, Doc: o.Doc, Item: o.Item, Line: o.Line, Kind: o.key.Kind,
		Namespace: o.key.Namespace, Name: o.key.Name, Warning: true,
		Message: "the last good version stays in force until the errors are fixed"}
}

func sortProblems(ps []Problem) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Doc, b.Doc), cmp.Compare(a.Item, b.Item), cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Field, b.Field), cmp.Compare(a.Message, b.Message))
	})
}

// prepare defaults and validates one object where it was decoded (in parallel,
// and with the document at hand to locate errors). Services are allocated later,
// in order, by process.
func prepare(o *object, doc []byte, vopts validation.Options) {
	var errs field.ErrorList
	switch obj := o.obj.(type) {
	case *v1.Service:
		svc := defaultService(obj)
		if errs = validation.Service(svc, vopts); len(errs) == 0 {
			o.out = svc
		}
	case *v1.Pod:
		pod := defaultPod(obj)
		if errs = validation.Pod(pod, vopts); len(errs) == 0 {
			o.out = podInfoOf(pod)
		}
	case *discovery.EndpointSlice:
		if errs = validation.EndpointSlice(obj, vopts); len(errs) == 0 {
			if _, ok := obj.Labels[discovery.LabelServiceName]; !ok {
				errs = field.ErrorList{field.Required(field.NewPath("metadata", "labels").Key(discovery.LabelServiceName),
					"names the service the slice belongs to")}
			} else {
				o.out = obj
			}
		}
	case *v1.Endpoints:
		if errs = validateEndpoints(obj); len(errs) == 0 {
			o.out = obj
		}
	case *v1.Node:
		if errs = validation.Node(obj, vopts); len(errs) == 0 {
			o.out = obj
		}
	case *v1.Namespace:
		errs = apivalidation.ValidateObjectMeta(&obj.ObjectMeta, false, apivalidation.ValidateNamespaceName, field.NewPath("metadata"))
		if len(errs) == 0 {
			o.out = obj
		}
	}
	// Only what is in force is kept: the decoded object is garbage from here on.
	// podInfo copies what it keeps out of the Pod (strings are immutable), so the
	// struct can be reused.
	if pod, ok := o.obj.(*v1.Pod); ok {
		podPool.Put(pod)
	}
	o.obj = nil
	if len(errs) > 0 {
		o.out = nil
		o.problems = fieldProblems(o, doc, errs)
	}
}

// process returns an object's in-force form: a service with its allocations,
// or what prepare made.
func (s *store) process(o *object) (any, []Problem) {
	if o.problems != nil {
		return nil, o.problems
	}
	svc, ok := o.out.(*v1.Service)
	if !ok {
		return o.out, nil
	}
	out, errs := s.alloc.Allocate(svc, o.File)
	if len(errs) > 0 {
		return nil, fieldProblems(o, s.docBytes(o.ref), errs)
	}
	return out, nil
}

// delta collects what one sync changed.
type delta struct {
	ch       *change
	dirtySvc map[types.NamespacedName]bool // services whose derived slices must be recomputed
	nodes    bool                          // some Node changed
}

// remove takes an object out of force.
func (s *store) remove(k objKey, cur *entry, d *delta) {
	ch := d.ch
	s.unindex(k, cur, d)
	delete(s.inForce, k)
	switch k.Kind {
	case KindService:
		name := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
		s.alloc.Release(name)
		old := cur.out.(*v1.Service)
		ch.services[name] = [2]*v1.Service{old, nil}
	case KindEndpointSlice:
		name := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
		ch.slices[name] = [2]*discovery.EndpointSlice{cur.out.(*discovery.EndpointSlice), nil}
	}
}

// unindex drops an in-force object from the derived indexes before it is replaced or removed.
func (s *store) unindex(k objKey, cur *entry, d *delta) {
	switch k.Kind {
	case KindPod:
		if ix := s.pods[k.Namespace]; ix != nil {
			ix.remove(cur.out.(*podInfo))
		}
		s.podServicesDirty(cur.out.(*podInfo), d)
	case KindService:
		s.selIndex(cur.out.(*v1.Service), false)
		d.dirtySvc[types.NamespacedName{Namespace: k.Namespace, Name: k.Name}] = true
	case KindEndpoints:
		d.dirtySvc[types.NamespacedName{Namespace: k.Namespace, Name: k.Name}] = true
	case KindNode:
		d.nodes = true
	}
}

// index records a new in-force object and the change it makes.
func (s *store) index(k objKey, e *entry, prev *entry, d *delta) {
	ch := d.ch
	name := types.NamespacedName{Namespace: k.Namespace, Name: k.Name}
	switch k.Kind {
	case KindPod:
		ix := s.pods[k.Namespace]
		if ix == nil {
			ix = newPodIndex()
			s.pods[k.Namespace] = ix
		}
		ix.add(e.out.(*podInfo))
		s.podServicesDirty(e.out.(*podInfo), d)
	case KindService:
		s.selIndex(e.out.(*v1.Service), true)
		var old *v1.Service
		if prev != nil {
			old = prev.out.(*v1.Service)
		}
		if c, ok := ch.services[name]; ok {
			old = c[0]
		}
		ch.services[name] = [2]*v1.Service{old, e.out.(*v1.Service)}
		d.dirtySvc[name] = true
	case KindEndpointSlice:
		var old *discovery.EndpointSlice
		if prev != nil {
			old = prev.out.(*discovery.EndpointSlice)
		}
		ch.slices[name] = [2]*discovery.EndpointSlice{old, e.out.(*discovery.EndpointSlice)}
	case KindEndpoints:
		// Mirrored or not depending on the service: see recomputeSlices.
		d.dirtySvc[name] = true
	case KindNode:
		d.nodes = true
	}
}

// selIndex adds a selector service to (or removes it from) svcSel.
func (s *store) selIndex(svc *v1.Service, add bool) {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	byPair := s.svcSel[svc.Namespace]
	if byPair == nil {
		if !add {
			return
		}
		byPair = map[string]map[types.NamespacedName]struct{}{}
		s.svcSel[svc.Namespace] = byPair
	}
	for k, v := range svc.Spec.Selector {
		pair := labelKey(k, v)
		set := byPair[pair]
		switch {
		case add && set == nil:
			byPair[pair] = map[types.NamespacedName]struct{}{name: {}}
		case add:
			set[name] = struct{}{}
		case set != nil:
			delete(set, name)
			if len(set) == 0 {
				delete(byPair, pair)
			}
		}
	}
}

// podServicesDirty marks the services whose selector may match pod: those
// with a selector pair among its labels (recomputing checks the whole selector).
func (s *store) podServicesDirty(pod *podInfo, d *delta) {
	byPair := s.svcSel[pod.Namespace]
	if len(byPair) == 0 {
		return
	}
	for i := 0; i+1 < len(pod.Labels); i += 2 {
		for name := range byPair[labelKey(pod.Labels[i], pod.Labels[i+1])] {
			d.dirtySvc[name] = true
		}
	}
}

// recomputeSlices recomputes the derived slices (from pods, or mirrored from v1
// Endpoints) of the given services.
func (s *store) recomputeSlices(ch *change, todo map[types.NamespacedName]bool) {
	zoneOf := func(node string) string { return s.nodeZones[node] }
	names := make([]types.NamespacedName, 0, len(todo))
	for name := range todo {
		names = append(names, name)
	}
	// Computing slices only reads the indexes: spread it over the CPUs.
	freshOf := make([][]*discovery.EndpointSlice, len(names))
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(names); i += workers {
				name := names[i]
				var svc *v1.Service
				if e := s.inForce[objKey{Kind: KindService, Namespace: name.Namespace, Name: name.Name}]; e != nil {
					svc = e.out.(*v1.Service)
				}
				switch {
				case svc != nil && len(svc.Spec.Selector) > 0:
					if svc.Spec.Type == v1.ServiceTypeExternalName {
						continue
					}
					var pods []*podInfo
					if ix := s.pods[name.Namespace]; ix != nil {
						pods = ix.match(svc.Spec.Selector)
					}
					freshOf[i] = selectorSlices(svc, pods, zoneOf)
				default:
					// v1 Endpoints are mirrored only for services without a selector,
					// as the EndpointSlice mirroring controller does: for the others
					// the endpoints controller would overwrite them.
					if e := s.inForce[objKey{Kind: KindEndpoints, Namespace: name.Namespace, Name: name.Name}]; e != nil {
						freshOf[i] = endpointsSlices(e.out.(*v1.Endpoints))
					}
				}
			}
		}()
	}
	wg.Wait()
	for i, name := range names {
		fresh := freshOf[i]
		old := s.selSlices[name]
		byName := map[string]*discovery.EndpointSlice{}
		for _, sl := range old {
			byName[sl.Name] = sl
		}
		for _, sl := range fresh {
			n := types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}
			prev := byName[sl.Name]
			delete(byName, sl.Name)
			if prev != nil && equality.Semantic.DeepEqual(prev, sl) {
				continue
			}
			ch.slices[n] = [2]*discovery.EndpointSlice{prev, sl}
		}
		for _, sl := range byName {
			ch.slices[types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}] = [2]*discovery.EndpointSlice{sl, nil}
		}
		if len(fresh) == 0 {
			delete(s.selSlices, name)
		} else {
			s.selSlices[name] = fresh
		}
	}
}

// defaultService applies the API server's defaults for the fields kproxy reads,
// in place: the object is the decoder's own.
func defaultService(svc *v1.Service) *v1.Service {
	validation.SetServiceDefaults(svc)
	return svc
}

// defaultPod applies the defaults kproxy depends on, in place: container port
// protocols (a named targetPort matches on protocol) and podIPs from podIP.
func defaultPod(pod *v1.Pod) *v1.Pod {
	for _, cs := range [][]v1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range cs {
			for j := range cs[i].Ports {
				if cs[i].Ports[j].Protocol == "" {
					cs[i].Ports[j].Protocol = v1.ProtocolTCP
				}
			}
		}
	}
	if pod.Status.PodIP != "" && (len(pod.Status.PodIPs) == 0 || pod.Status.PodIPs[0].IP != pod.Status.PodIP) {
		pod.Status.PodIPs = []v1.PodIP{{IP: pod.Status.PodIP}}
	} else if pod.Status.PodIP == "" && len(pod.Status.PodIPs) > 0 {
		pod.Status.PodIP = pod.Status.PodIPs[0].IP
	}
	return pod
}
