package manifest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// The fast path must agree with sigs.k8s.io/yaml wherever it answers.
func TestFastYAMLAgreesWithDecoder(t *testing.T) {
	docs := []string{
		"a: 1\nb: x\nc:\n  d: true\n  e: null\n  f: []\n  g: {}\n",
		"ports:\n- name: http\n  port: 80\n  targetPort: http\n- name: dns\n  port: 53\n",
		"list:\n  - a\n  - 'b c'\n  - \"d\"\n  -\n    x: 1\n",
		"ip: 10.244.0.1\ncidr: 10.0.0.0/8\nv6: fd00:10:96::1\nimage: registry.k8s.io/pause:3.10 # comment\n",
		"labels:\n  app.kubernetes.io/name: web\n  tier: \"1\"\n",
		"status:\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
		"neg: -5\nzero: 0\nempty:\n",
		// Outside the subset: the fast path must decline.
		"a: yes\n", "a: 0777\n", "a: 1.5\n", "a: [1, 2]\n", "a: |\n  x\n", "a: &x 1\nb: *x\n",
		"a: 1\na: 2\n", "a: b\n  c\n", "a:\tb\n", "- - a\n", "a: 2001-12-14\n", "a: .inf\n", "a: \"x\\ny\"\n",
		"a: 'it''s'\n", "a: b: c\n", "? a\n: b\n",
	}
	matches, _ := filepath.Glob("../../examples/*.yaml")
	for _, f := range matches {
		data, _ := os.ReadFile(f)
		for _, d := range splitYAML(f, data) {
			docs = append(docs, string(d.data))
			// Ordinary manifests must take the fast path, or it is worth nothing.
			if _, ok := fastYAMLToJSON(d.data); !ok {
				t.Errorf("%s document %d: fast path declined an ordinary manifest", f, d.Doc)
			}
		}
	}
	for _, doc := range docs {
		fast, ok := fastYAMLToJSON([]byte(doc))
		if !ok {
			continue
		}
		slow, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Errorf("fast path accepted what the decoder rejects (%v):\n%s", err, doc)
			continue
		}
		var a, b any
		if err := json.Unmarshal(fast, &a); err != nil {
			t.Errorf("fast path produced invalid JSON %s for:\n%s", fast, doc)
			continue
		}
		_ = json.Unmarshal(slow, &b)
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Errorf("fast %s != decoder %s for:\n%s", ja, jb, doc)
		}
	}
	for _, doc := range []string{"a: yes\n", "a: 0777\n", "a: 1.5\n", "a: 1\na: 2\n", "a: b\n  c\n", "a: b: c\n"} {
		if out, ok := fastYAMLToJSON([]byte(doc)); ok {
			t.Errorf("fast path should decline %q, gave %s", doc, out)
		}
	}
}
