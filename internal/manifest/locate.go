package manifest

import (
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// pathToken is one step of a field path: a field name or a [subscript].
type pathToken struct {
	name  string
	index bool // written as [name]
}

// splitPath cuts "spec.ports[0].targetPort" or "metadata.labels[a.b/c]" into tokens.
func splitPath(path string) []pathToken {
	var toks []pathToken
	for i := 0; i < len(path); {
		switch path[i] {
		case '.':
			i++
		case '[':
			j := strings.IndexByte(path[i:], ']')
			if j < 0 {
				return append(toks, pathToken{name: path[i+1:], index: true})
			}
			toks = append(toks, pathToken{name: path[i+1 : i+j], index: true})
			i += j + 1
		default:
			j := strings.IndexAny(path[i:], ".[")
			if j < 0 {
				j = len(path) - i
			}
			toks = append(toks, pathToken{name: path[i : i+j]})
			i += j
		}
	}
	return toks
}

// locate finds the line of the field at path in a YAML (or JSON) document,
// relative to the document, and the path with any list index the decoder left
// out filled in. want, if set, picks among list items when an index is missing:
// the first item whose value is of the wrong kind. It returns 0 when the path
// cannot be found.
func locate(doc []byte, path string, want func(*yamlv3.Node) bool) (int, string) {
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(doc, &root); err != nil || len(root.Content) == 0 {
		return 0, path
	}
	line, full, ok := walk(root.Content[0], splitPath(path), "", want)
	if !ok {
		return 0, path
	}
	return line, full
}

func walk(n *yamlv3.Node, toks []pathToken, built string, want func(*yamlv3.Node) bool) (int, string, bool) {
	for n.Kind == yamlv3.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if len(toks) == 0 {
		if want == nil || want(n) {
			return n.Line, built, true
		}
		// The decoder names a map (metadata.labels) when one of its values has the
		// wrong type: point at that value.
		if n.Kind == yamlv3.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if want(n.Content[i+1]) {
					return n.Content[i].Line, built + "[" + n.Content[i].Value + "]", true
				}
			}
		}
		return 0, "", false
	}
	t := toks[0]
	switch n.Kind {
	case yamlv3.SequenceNode:
		if t.index {
			i, err := strconv.Atoi(t.name)
			if err != nil || i < 0 || i >= len(n.Content) {
				return 0, "", false
			}
			return walk(n.Content[i], toks[1:], built+"["+t.name+"]", want)
		}
		// The decoder's type errors leave list indexes out: try each item.
		for i, c := range n.Content {
			if line, full, ok := walk(c, toks, built+"["+strconv.Itoa(i)+"]", want); ok {
				return line, full, true
			}
		}
	case yamlv3.MappingNode:
		// A map key may itself contain dots (label keys); try longer and longer names.
		name := t.name
		for k := 1; k <= len(toks); k++ {
			if k > 1 {
				if toks[k-1].index {
					break
				}
				name += "." + toks[k-1].name
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				// Case-insensitively: kube-apiserver names spec.LoadBalancerSourceRanges.
				if !strings.EqualFold(n.Content[i].Value, name) {
					continue
				}
				name := n.Content[i].Value
				next := built
				if t.index {
					next += "[" + name + "]"
				} else {
					if next != "" {
						next += "."
					}
					next += name
				}
				if len(toks) == k && (want == nil || want(n.Content[i+1])) {
					// Point at the key: an unknown field's value may be a block below it.
					return n.Content[i].Line, next, true
				}
				if line, full, ok := walk(n.Content[i+1], toks[k:], next, want); ok {
					return line, full, true
				}
			}
		}
	}
	return 0, "", false
}

// kindOfJSONValue returns a test for YAML nodes that decode to the JSON value
// kind a type error names ("string", "number", "bool", "array", "object").
func kindOfJSONValue(v string) func(*yamlv3.Node) bool {
	v, _, _ = strings.Cut(v, " ")
	return func(n *yamlv3.Node) bool {
		switch v {
		case "array":
			return n.Kind == yamlv3.SequenceNode
		case "object":
			return n.Kind == yamlv3.MappingNode
		case "string":
			return n.Kind == yamlv3.ScalarNode && n.ShortTag() == "!!str"
		case "number":
			return n.Kind == yamlv3.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float")
		case "bool":
			return n.Kind == yamlv3.ScalarNode && n.ShortTag() == "!!bool"
		}
		return true
	}
}
