package manifest

// Decoding: every malformed input is an error naming the file, the line, the
// document, the object and the field path, as far as the input lets us know them.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kproxy/kproxy/internal/validation"
)

func writeFile(t testing.TB, dir, name, content string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadDir(t testing.TB, dir string) *Result {
	t.Helper()
	r, err := Load(Config{Dir: dir, Ephemeral: true})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return r
}

const okService = `apiVersion: v1
kind: Service
metadata:
  name: ok
spec:
  ports:
  - port: 80
`

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, file, content string
		want                []string // substrings of the one problem
		warning             bool
	}{
		{name: "tab indentation", file: "tab.yaml",
			content: "apiVersion: v1\nkind: Service\nmetadata:\n\tname: x\n",
			want:    []string{"tab.yaml:4: document 1: Service: invalid YAML: yaml: line 4: found character that cannot start any token"}},
		{name: "malformed YAML in the second document", file: "bad.yaml",
			content: okService + "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: [x\n",
			want:    []string{"bad.yaml:", "document 2: Service default/web: invalid YAML"}},
		{name: "unknown field", file: "unknown.yaml",
			content: "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    prot: TCP\n",
			want:    []string{"unknown.yaml:8: document 1: Service default/web: spec.ports[0].prot: unknown field"}},
		{name: "wrong type", file: "type.yaml",
			content: "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n  - port: http\n",
			want:    []string{"type.yaml:8: document 1: Service default/web: spec.ports[1].port: Invalid value: cannot decode string into int32"}},
		{name: "label value is a number", file: "label.yaml",
			content: "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: apps\n  labels:\n    version: 1\n",
			want:    []string{"label.yaml:7: document 1: Pod apps/p: metadata.labels[version]: Invalid value: cannot decode number into string"}},
		{name: "duplicate key", file: "dup.yaml",
			content: "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  name: web2\n",
			want:    []string{"dup.yaml:5: document 1: Service default/web: invalid YAML: yaml: line 5: key \"name\" already set in map"}},
		{name: "missing kind", file: "nokind.yaml",
			content: "apiVersion: v1\nmetadata:\n  name: web\n",
			want:    []string{"nokind.yaml:1: document 1: kind: Required value: Object 'Kind' is missing"}},
		{name: "missing apiVersion", file: "noapi.yaml",
			content: "kind: Service\nmetadata:\n  name: web\n",
			want:    []string{"noapi.yaml:1: document 1: Service default/web: apiVersion: Required value"}},
		{name: "wrong apiVersion for a kind", file: "api.yaml",
			content: "apiVersion: v1\nkind: EndpointSlice\nmetadata:\n  name: e\n",
			want:    []string{"api.yaml:1: document 1: EndpointSlice default/e: apiVersion: Unsupported value: \"v1\""}},
		{name: "missing name", file: "noname.yaml",
			content: "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\n",
			want:    []string{"noname.yaml:1: document 1: Service: metadata.name: Required value"}},
		{name: "other kinds are a warning", file: "deploy.yaml",
			content: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
			want:    []string{"deploy.yaml:1: document 1: Deployment d: kind Deployment (apps/v1) is not used by kproxy; ignored"}, warning: true},
		{name: "invalid JSON", file: "bad.json",
			content: "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\",}}\n",
			want:    []string{"bad.json:3: document 1: invalid JSON"}},
		{name: "JSON unknown field in the second value", file: "two.json",
			content: "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"a\"},\"spec\":{\"ports\":[{\"port\":80}]}}\n{\"apiVersion\":\"v1\",\n\"kind\":\"Service\",\n\"metadata\":{\"name\":\"b\",\n\"nmae\":\"x\"}}\n",
			want:    []string{"two.json:5: document 2: Service default/b: metadata.nmae: unknown field"}},
		{name: "List item", file: "list.yaml",
			content: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: p\n  spec:\n    containers:\n    - name: c\n      ports:\n      - containerPort: \"80\"\n",
			want:    []string{"list.yaml:12: document 1 item 1: Pod default/p: spec.containers[0].ports[0].containerPort: Invalid value: cannot decode string into int32"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, tc.file, tc.content)
			r := loadDir(t, dir)
			var got []string
			for _, p := range r.Problems {
				if p.Warning == tc.warning {
					got = append(got, p.String())
				}
			}
			if len(got) != 1 {
				t.Fatalf("problems %q, want one", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("problem %q does not contain %q", got[0], w)
				}
			}
		})
	}
}

func TestDecodeAccepts(t *testing.T) {
	dir := t.TempDir()
	// Multi-document YAML with comments and an empty document, a .yml file, a JSON
	// stream, a List, a file in a subdirectory; hidden files and other extensions
	// are not read.
	writeFile(t, dir, "multi.yaml", "# leading comment\n---\n"+okService+"---\n---\n# only a comment\n---\n"+
		strings.Replace(okService, "name: ok", "name: ok2\n  namespace: team-a", 1))
	writeFile(t, dir, "other.yml", strings.Replace(okService, "name: ok", "name: yml", 1))
	writeFile(t, dir, "stream.json", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"j1"},"spec":{"ports":[{"port":80}]}}
{"apiVersion":"v1","kind":"Service","metadata":{"name":"j2"},"spec":{"ports":[{"port":81}]}}`)
	writeFile(t, dir, "list.yaml", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: team-a\n")
	writeFile(t, dir, "sub/deeper.yaml", strings.Replace(okService, "name: ok", "name: deep", 1))
	writeFile(t, dir, ".hidden.yaml", "not: [valid")
	writeFile(t, dir, "notes.txt", "not: [valid")
	writeFile(t, dir, ".git/x.yaml", "not: [valid")
	r := loadDir(t, dir)
	if len(r.Problems) != 0 {
		t.Fatalf("problems: %v", r.Problems)
	}
	var names []string
	for _, s := range r.Services {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	want := "default/deep default/j1 default/j2 default/ok default/yml team-a/ok2"
	if strings.Join(names, " ") != want {
		t.Fatalf("services %q, want %q", strings.Join(names, " "), want)
	}
	if len(r.Namespaces) != 1 || r.Namespaces[0].Name != "team-a" {
		t.Fatalf("namespaces %v", r.Namespaces)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(okService))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- {}\n"))
	f.Add([]byte("a:\n- b: [1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range splitYAML("f.yaml", data) {
			objs, _, _ := decodeDocument(d)
			for _, o := range objs {
				prepare(o, d.data, validation.Options{})
			}
		}
		// Differential: where the fast path answers, the full decoder agrees.
		for _, d := range splitYAML("f.yaml", data) {
			fast, ok := fastYAMLToJSON(d.data)
			if !ok {
				continue
			}
			slow, err := yaml.YAMLToJSONStrict(d.data)
			if err != nil {
				t.Fatalf("fast path accepted what the decoder rejects (%v): %q", err, d.data)
			}
			var a, b any
			if json.Unmarshal(fast, &a) != nil {
				t.Fatalf("fast path gave invalid JSON %q for %q", fast, d.data)
			}
			json.Unmarshal(slow, &b)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				t.Fatalf("fast %s != decoder %s for %q", ja, jb, d.data)
			}
		}
	})
}
