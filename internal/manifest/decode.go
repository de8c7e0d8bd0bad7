package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"

	yamlv3 "go.yaml.in/yaml/v3"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Kinds kproxy reads; every other kind is a warning and is ignored.
const (
	KindService       = "Service"
	KindPod           = "Pod"
	KindEndpointSlice = "EndpointSlice"
	KindEndpoints     = "Endpoints"
	KindNode          = "Node"
	KindNamespace     = "Namespace"
	kindList          = "List"
)

type kindInfo struct {
	apiVersion string
	namespaced bool
	new        func() metav1.Object
}

var kinds = map[string]kindInfo{
	KindService:       {"v1", true, func() metav1.Object { return &v1.Service{} }},
	KindPod:           {"v1", true, func() metav1.Object { return &v1.Pod{} }},
	KindEndpoints:     {"v1", true, func() metav1.Object { return &v1.Endpoints{} }},
	KindEndpointSlice: {"discovery.k8s.io/v1", true, func() metav1.Object { return &discovery.EndpointSlice{} }},
	KindNode:          {"v1", false, func() metav1.Object { return &v1.Node{} }},
	KindNamespace:     {"v1", false, func() metav1.Object { return &v1.Namespace{} }},
}

var podPool = sync.Pool{New: func() any { return new(v1.Pod) }}

// objKey identifies an object across files.
type objKey struct {
	Kind, Namespace, Name string
}

func (k objKey) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// ref says where an object was written.
type ref struct {
	File string
	Doc  int // 1-based
	Item int // 1-based item of a List, or 0
	Line int // first line of the document
}

// object is one decoded manifest object.
type object struct {
	ref
	key objKey
	obj metav1.Object // as decoded; dropped once prepared
	// out is the defaulted, validated form (a *podInfo for pods); problems are
	// the validation errors when it is not valid.
	out      any
	problems []Problem
}

// document is one YAML document or JSON value of a file.
type document struct {
	ref
	data []byte
	json bool
}

// splitYAML cuts a YAML stream into documents at "---" lines, as the API
// machinery's YAML reader does, keeping each document's first line so that
// errors can be located in the file. Documents holding only comments and blank
// lines are dropped.
func splitYAML(file string, data []byte) []document {
	var docs []document
	start, startLine, line := 0, 1, 1
	n := 0
	flush := func(end int) {
		chunk := data[start:end]
		if !onlyComments(chunk) {
			n++
			docs = append(docs, document{ref: ref{File: file, Doc: n, Line: startLine}, data: chunk})
		} else {
			n++ // documents keep their position number even when empty
		}
	}
	for i := 0; i < len(data); {
		j := bytes.IndexByte(data[i:], '\n')
		end := len(data)
		if j >= 0 {
			end = i + j + 1
		}
		l := data[i:end]
		if isSeparator(l) {
			if i > start || line > 1 {
				flush(i)
			}
			start, startLine = end, line+1
		}
		i = end
		line++
	}
	if start < len(data) {
		flush(len(data))
	}
	// Renumber so that document numbers count only documents with content, as
	// editors and kubectl show them.
	for i := range docs {
		docs[i].Doc = i + 1
	}
	return docs
}

func isSeparator(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(l[3:])
	return len(rest) == 0 || rest[0] == '#'
}

func onlyComments(chunk []byte) bool {
	for len(chunk) > 0 {
		l := chunk
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			l, chunk = chunk[:i], chunk[i+1:]
		} else {
			chunk = nil
		}
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' && !bytes.Equal(l, []byte("...")) {
			return false
		}
	}
	return true
}

// splitJSON cuts a stream of JSON values into documents.
func splitJSON(file string, data []byte) ([]document, *Problem) {
	var docs []document
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var raw json.RawMessage
		off := int(dec.InputOffset())
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			p := &Problem{File: file, Doc: len(docs) + 1, Message: "invalid JSON: " + err.Error()}
			var se *json.SyntaxError
			if errors.As(err, &se) {
				p.Line = lineAt(data, int(se.Offset))
				p.Message = "invalid JSON: " + se.Error()
			}
			return docs, p
		}
		for off < len(data) && isSpace(data[off]) {
			off++
		}
		docs = append(docs, document{ref: ref{File: file, Doc: len(docs) + 1, Line: lineAt(data, off)}, data: raw, json: true})
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func lineAt(data []byte, off int) int {
	if off > len(data) {
		off = len(data)
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// yamlLine finds "line N" in a YAML decoder message (the decoders report lines
// only in their message text), so that it can be made relative to the file.
var yamlLine = regexp.MustCompile(`line (\d+)`)

// decodeDocument decodes one document into objects, or problems. fatal is true
// when the document could not be turned into identifiable objects: the objects
// the file held before then stay in force.
func decodeDocument(d document) (objs []*object, probs []Problem, fatal bool) {
	j := d.data
	var tm metav1.TypeMeta
	peeked := false
	if !d.json {
		var err error
		var fast bool
		var ft [2]string
		fp := fastPool.Get().(*fastParser)
		// The decoders copy what they keep, so the buffer is free again on return.
		defer fastPool.Put(fp)
		if j, ft, fast = fastYAMLToJSONType(d.data, fp); !fast {
			j, err = yaml.YAMLToJSONStrict(d.data)
		} else if ft[0] != "" && ft[1] != "" {
			tm.APIVersion, tm.Kind, peeked = ft[0], ft[1], true
		}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
			msg = strings.Join(strings.Fields(strings.Replace(msg, "unmarshal errors:\n", "", 1)), " ")
			p := Problem{File: d.File, Doc: d.Doc, Line: d.Line, Message: "invalid YAML: " + msg}
			p.Kind, p.Namespace, p.Name = guessIdentity(d.data)
			if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
				n, _ := strconv.Atoi(msg[m[2]:m[3]])
				p.Line = d.Line + n - 1
				// Rewrite the line in the message too, so that it matches the file.
				p.Message = "invalid YAML: " + msg[:m[2]] + strconv.Itoa(p.Line) + msg[m[3]:]
			}
			return nil, []Problem{p}, true
		}
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			return nil, nil, false
		}
	}
	if !peeked {
		if err := json.Unmarshal(j, &tm); err != nil {
			return nil, []Problem{{File: d.File, Doc: d.Doc, Line: d.Line,
				Message: "not a Kubernetes object: want a mapping with apiVersion and kind"}}, true
		}
		peeked = true
	}
	if tm.Kind == kindList && (tm.APIVersion == "v1" || tm.APIVersion == "") {
		var list struct {
			metav1.TypeMeta `json:",inline"`
			metav1.ListMeta `json:"metadata,omitempty"`
			Items           []json.RawMessage `json:"items"`
		}
		if strict, err := kjson.UnmarshalStrict(j, &list); err != nil || len(strict) > 0 {
			p := decodeProblem(d, j, "", err, strict, func() any { return &list })
			return nil, []Problem{p}, true
		}
		for i, item := range list.Items {
			r := d.ref
			r.Item = i + 1
			o, p, f := decodeObject(r, d, item, fmt.Sprintf("items[%d].", i), nil)
			objs = append(objs, o...)
			probs = append(probs, p...)
			fatal = fatal || f
		}
		return objs, probs, fatal
	}
	return decodeObject(d.ref, d, j, "", &tm)
}

// decodeObject decodes one object's JSON strictly into its typed form.
func decodeObject(r ref, d document, j []byte, prefix string, peek *metav1.TypeMeta) ([]*object, []Problem, bool) {
	var tm metav1.TypeMeta
	if peek != nil {
		tm = *peek
	} else if err := json.Unmarshal(j, &tm); err != nil {
		return nil, []Problem{{File: r.File, Doc: r.Doc, Item: r.Item, Line: r.Line,
			Message: "not a Kubernetes object: want a mapping with apiVersion and kind"}}, true
	}
	// problem starts a Problem naming the object; it reads the name only when needed.
	problem := func() Problem {
		var meta struct {
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(j, &meta)
		if info, ok := kinds[tm.Kind]; ok && info.namespaced && meta.Metadata.Namespace == "" {
			meta.Metadata.Namespace = metav1.NamespaceDefault
		}
		return Problem{File: r.File, Doc: r.Doc, Item: r.Item, Line: r.Line, Kind: tm.Kind,
			Namespace: meta.Metadata.Namespace, Name: meta.Metadata.Name}
	}
	switch {
	case tm.Kind == "":
		p := problem()
		p.Field, p.Message = "kind", "Required value: Object 'Kind' is missing"
		return nil, []Problem{p}, true
	case tm.APIVersion == "":
		p := problem()
		p.Field, p.Message = "apiVersion", "Required value: Object 'apiVersion' is missing"
		return nil, []Problem{p}, true
	}
	info, known := kinds[tm.Kind]
	if !known {
		p := problem()
		p.Warning = true
		p.Message = fmt.Sprintf("kind %s (%s) is not used by kproxy; ignored", tm.Kind, tm.APIVersion)
		return nil, []Problem{p}, false
	}
	if tm.APIVersion != info.apiVersion {
		p := problem()
		p.Field = "apiVersion"
		p.Message = fmt.Sprintf("Unsupported value: %q: kproxy reads %s as %s", tm.APIVersion, tm.Kind, info.apiVersion)
		return nil, []Problem{p}, true
	}
	var obj metav1.Object
	if tm.Kind == KindPod {
		// Pods are reduced to a podInfo right after validation: recycle the big
		// v1.Pod struct (a large share of the garbage at 100,000 pods).
		pod := podPool.Get().(*v1.Pod)
		*pod = v1.Pod{}
		obj = pod
	} else {
		obj = info.new()
	}
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil || len(strict) > 0 {
		p := decodeProblem(d, j, prefix, err, strict, func() any { return info.new() })
		base := problem()
		p.Item, p.Kind, p.Namespace, p.Name = r.Item, base.Kind, base.Namespace, base.Name
		return nil, []Problem{p}, true
	}
	if !info.namespaced {
		obj.SetNamespace("")
	} else if obj.GetNamespace() == "" {
		obj.SetNamespace(metav1.NamespaceDefault)
	}
	if obj.GetName() == "" {
		p := problem()
		p.Namespace = obj.GetNamespace()
		p.Field, p.Message = "metadata.name", "Required value: name or generateName is required"
		if obj.GetGenerateName() != "" {
			p.Message = "Invalid value: generateName is not supported in manifests; set metadata.name"
		}
		return nil, []Problem{p}, true
	}
	return []*object{{ref: r, key: objKey{Kind: tm.Kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}, obj: obj}}, nil, false
}

// decodeProblem turns a strict-decoding failure into a Problem with the field
// path and, found in the document's YAML, its line.
func decodeProblem(d document, j []byte, prefix string, err error, strict []error, fresh func() any) Problem {
	p := Problem{File: d.File, Doc: d.Doc, Line: d.Line}
	var fieldPath, msg string
	var want func(*yamlv3.Node) bool
	if len(strict) > 0 {
		// sigs.k8s.io/json reports unknown and duplicate fields with their full path.
		var msgs []string
		for i, e := range strict {
			fp, ok := e.(interface{ FieldPath() string })
			if !ok {
				msgs = append(msgs, e.Error())
				continue
			}
			if i == 0 {
				fieldPath = fp.FieldPath()
			}
			m := strings.TrimSuffix(e.Error(), " "+strconv.Quote(fp.FieldPath()))
			if i == 0 {
				msgs = append(msgs, m)
			} else {
				msgs = append(msgs, m+" "+strconv.Quote(fp.FieldPath()))
			}
		}
		msg = strings.Join(msgs, "; ")
	} else {
		// sigs.k8s.io/json's type error is internal; the standard library's carries
		// the same path and can be inspected.
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(json.Unmarshal(j, new(any)), &se):
			msg = "invalid JSON: " + se.Error()
		case errors.As(json.Unmarshal(j, fresh()), &te):
			fieldPath = te.Field
			msg = fmt.Sprintf("Invalid value: cannot decode %s into %s", te.Value, te.Type)
			want = kindOfJSONValue(te.Value)
		default:
			msg = err.Error()
		}
	}
	p.Field, p.Message = fieldPath, msg
	if fieldPath != "" {
		if line, full := locate(d.data, prefix+fieldPath, want); line > 0 {
			p.Line = d.Line + line - 1
			p.Field = strings.TrimPrefix(full, prefix)
		}
	}
	return p
}

// guessIdentity reads kind, metadata.namespace and metadata.name from the text of
// a document the YAML decoder rejected, so that its error can still name the
// object when those lines are intact.
func guessIdentity(doc []byte) (kind, namespace, name string) {
	inMeta := false
	metaIndent := -1
	for _, l := range strings.Split(string(doc), "\n") {
		trimmed := strings.TrimLeft(l, " ")
		indent := len(l) - len(trimmed)
		value := func(key string) (string, bool) {
			v, ok := strings.CutPrefix(trimmed, key+":")
			if !ok {
				return "", false
			}
			v, _, _ = strings.Cut(v, " #")
			return strings.Trim(strings.TrimSpace(v), `"'`), true
		}
		switch {
		case indent == 0 && trimmed != "" && trimmed[0] != '#':
			inMeta = strings.HasPrefix(trimmed, "metadata:")
			metaIndent = -1
			if v, ok := value("kind"); ok && kind == "" {
				kind = v
			}
		case inMeta && trimmed != "" && trimmed[0] != '#':
			if metaIndent < 0 {
				metaIndent = indent
			}
			if indent != metaIndent {
				continue
			}
			if v, ok := value("name"); ok && name == "" {
				name = v
			}
			if v, ok := value("namespace"); ok && namespace == "" {
				namespace = v
			}
		}
	}
	if info, ok := kinds[kind]; ok && info.namespaced && namespace == "" && name != "" {
		namespace = metav1.NamespaceDefault
	}
	return kind, namespace, name
}
