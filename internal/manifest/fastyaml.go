package manifest

import (
	"bytes"
	"strconv"
	"sync"
)

// fastYAMLToJSON converts the plain block-style YAML that manifests are almost
// always written in (nested "key: value" mappings, "- " sequences, plain and
// simply quoted scalars, comments) straight to JSON. It is an optimisation only:
// for anything outside that subset — flow collections, block scalars, anchors,
// tags, multi-line scalars, tabs, duplicate keys, scalars whose YAML 1.1 type is
// not obvious (yes/no, octal, floats, timestamps) — it returns false and the
// caller uses the full decoder (sigs.k8s.io/yaml), which also reports errors.
// Where it answers, it answers exactly what the full decoder would: the tests
// compare the two on every example and test manifest.
//
// Loading 100,000 pods spends most of its time in YAML decoding; this path is
// about ten times faster than converting through generic maps.
func fastYAMLToJSON(doc []byte) ([]byte, bool) {
	j, _, ok := fastYAMLToJSONType(doc, &fastParser{})
	return j, ok
}

// fastPool recycles the parser's line table and output buffer between
// documents: at 100,000 documents they are a large share of the garbage.
var fastPool = sync.Pool{New: func() any { return &fastParser{} }}

// fastYAMLToJSONType is fastYAMLToJSON that also returns the top-level
// apiVersion and kind when they are plain strings, sparing a JSON pass. The
// JSON lives in p's buffer: it is valid until p is reused.
func fastYAMLToJSONType(doc []byte, p *fastParser) ([]byte, [2]string, bool) {
	var tm [2]string
	p.ls = p.ls[:0]
	if !p.lines(doc) {
		return nil, tm, false
	}
	if len(p.ls) == 0 {
		return []byte("null"), tm, true
	}
	for _, l := range p.ls {
		if l.indent != p.ls[0].indent {
			continue
		}
		if k, v, ok := splitKey(l.text); ok && len(v) > 0 && plainString(v) {
			switch string(k) {
			case "apiVersion":
				tm[0] = string(v)
			case "kind":
				tm[1] = string(v)
			}
		}
	}
	i, out, ok := p.node(0, p.ls[0].indent, p.out[:0])
	p.out = out
	if !ok || i != len(p.ls) {
		return nil, tm, false
	}
	return out, tm, true
}

type fastLine struct {
	indent int
	text   []byte // content without indentation and comment, right-trimmed
}

type fastParser struct {
	ls  []fastLine
	out []byte
}

func (p *fastParser) lines(doc []byte) bool {
	// Tabs and CRs have subtle YAML rules, and some non-ASCII characters are line
	// breaks in YAML 1.1: leave all of those to the full decoder.
	for _, c := range doc {
		if c == '\t' || c == '\r' || c >= 0x80 {
			return false
		}
	}
	for len(doc) > 0 {
		var l []byte
		if i := bytes.IndexByte(doc, '\n'); i >= 0 {
			l, doc = doc[:i], doc[i+1:]
		} else {
			l, doc = doc, nil
		}
		ind := 0
		for ind < len(l) && l[ind] == ' ' {
			ind++
		}
		t := l[ind:]
		if len(t) == 0 || t[0] == '#' {
			continue
		}
		if t[0] == '%' || bytes.HasPrefix(t, []byte("---")) || bytes.HasPrefix(t, []byte("...")) {
			return false
		}
		t, ok := stripComment(t)
		if !ok {
			return false
		}
		p.ls = append(p.ls, fastLine{indent: ind, text: t})
	}
	return true
}

// stripComment removes a " #" comment outside quotes and trailing spaces.
func stripComment(t []byte) ([]byte, bool) {
	var q byte
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			// Quotes only open a scalar at its start: after "key: ", "- " or at line start.
			if i == 0 || (i >= 2 && t[i-1] == ' ' && (t[i-2] == ':' || t[i-2] == '-')) {
				q = c
			}
		case c == '#' && i > 0 && t[i-1] == ' ':
			t = t[:i]
		}
	}
	if q != 0 {
		return nil, false // a quoted scalar spanning lines
	}
	return bytes.TrimRight(t, " "), true
}

func isSeqItem(t []byte) bool { return len(t) > 0 && t[0] == '-' && (len(t) == 1 || t[1] == ' ') }

// node converts the block starting at line i with the given indentation.
func (p *fastParser) node(i, indent int, out []byte) (int, []byte, bool) {
	if isSeqItem(p.ls[i].text) {
		return p.seq(i, indent, out)
	}
	return p.mapping(i, indent, out)
}

func (p *fastParser) seq(i, indent int, out []byte) (int, []byte, bool) {
	out = append(out, '[')
	first := true
	for i < len(p.ls) && p.ls[i].indent == indent && isSeqItem(p.ls[i].text) {
		if !first {
			out = append(out, ',')
		}
		first = false
		t := p.ls[i].text
		rest := bytes.TrimLeft(t[1:], " ")
		if len(rest) == 0 {
			// "-" alone: the item is the block below, or null.
			i++
			if i < len(p.ls) && p.ls[i].indent > indent {
				var ok bool
				if i, out, ok = p.node(i, p.ls[i].indent, out); !ok {
					return i, out, false
				}
			} else {
				out = append(out, "null"...)
			}
			continue
		}
		col := indent + (len(t) - len(rest))
		if isSeqItem(rest) {
			return i, out, false // "- - x": nested compact sequences
		}
		if _, _, isKey := splitKey(rest); isKey {
			// "- key: value": a mapping whose other keys are aligned with "key".
			p.ls[i] = fastLine{indent: col, text: rest}
			var ok bool
			if i, out, ok = p.mapping(i, col, out); !ok {
				return i, out, false
			}
			continue
		}
		var ok bool
		if out, ok = scalar(rest, out); !ok {
			return i, out, false
		}
		i++
		if i < len(p.ls) && p.ls[i].indent > indent {
			return i, out, false // a multi-line scalar
		}
	}
	if i < len(p.ls) && p.ls[i].indent > indent {
		return i, out, false
	}
	return i, append(out, ']'), true
}

// splitKey splits "key: value" or "key:"; isKey is false for other text.
func splitKey(t []byte) (key, value []byte, isKey bool) {
	if t[0] == '"' || t[0] == '\'' || t[0] == '?' || t[0] == '{' || t[0] == '[' {
		return nil, nil, false
	}
	for i := 0; i < len(t); i++ {
		if t[i] == ':' && (i+1 == len(t) || t[i+1] == ' ') {
			return bytes.TrimRight(t[:i], " "), bytes.TrimLeft(t[i+1:], " "), true
		}
	}
	return nil, nil, false
}

func (p *fastParser) mapping(i, indent int, out []byte) (int, []byte, bool) {
	out = append(out, '{')
	var keysBuf [24][]byte // mappings are small: keep the duplicate check off the heap
	keys := keysBuf[:0]
	for i < len(p.ls) && p.ls[i].indent == indent && !isSeqItem(p.ls[i].text) {
		key, value, isKey := splitKey(p.ls[i].text)
		if !isKey || len(key) == 0 || !plainString(key) || bytes.Equal(key, []byte("<<")) {
			return i, out, false
		}
		for _, k := range keys {
			if bytes.Equal(k, key) {
				return i, out, false // duplicate: the full decoder reports it
			}
		}
		keys = append(keys, key)
		if len(keys) > 1 {
			out = append(out, ',')
		}
		out = appendJSONString(out, key)
		out = append(out, ':')
		i++
		if len(value) > 0 {
			var ok bool
			if out, ok = scalar(value, out); !ok {
				return i, out, false
			}
			if i < len(p.ls) && p.ls[i].indent > indent {
				return i, out, false // a multi-line scalar
			}
			continue
		}
		switch {
		case i < len(p.ls) && p.ls[i].indent > indent:
			var ok bool
			if i, out, ok = p.node(i, p.ls[i].indent, out); !ok {
				return i, out, false
			}
		case i < len(p.ls) && p.ls[i].indent == indent && isSeqItem(p.ls[i].text):
			// A sequence at the key's own indentation ("ports:\n- port: 80").
			var ok bool
			if i, out, ok = p.seq(i, indent, out); !ok {
				return i, out, false
			}
		default:
			out = append(out, "null"...)
		}
	}
	if i < len(p.ls) && p.ls[i].indent > indent {
		return i, out, false
	}
	return i, append(out, '}'), true
}

// scalar appends a value's JSON, or reports that its YAML meaning is not obvious.
func scalar(v []byte, out []byte) ([]byte, bool) {
	switch v[0] {
	case '"':
		if len(v) < 2 || v[len(v)-1] != '"' || bytes.IndexByte(v[1:len(v)-1], '"') >= 0 || bytes.IndexByte(v, '\\') >= 0 {
			return out, false
		}
		return appendJSONString(out, v[1:len(v)-1]), true
	case '\'':
		if len(v) < 2 || v[len(v)-1] != '\'' || bytes.IndexByte(v[1:len(v)-1], '\'') >= 0 {
			return out, false
		}
		return appendJSONString(out, v[1:len(v)-1]), true
	case '[', '{':
		if len(v) == 2 && (v[1] == ']' || v[1] == '}') && v[1]-v[0] == 2 {
			return append(out, v...), true
		}
		return out, false
	}
	switch string(v) {
	case "true", "True", "TRUE":
		return append(out, "true"...), true
	case "false", "False", "FALSE":
		return append(out, "false"...), true
	case "null", "Null", "NULL", "~":
		return append(out, "null"...), true
	}
	if isDecimalInt(v) {
		return append(out, v...), true
	}
	if !plainString(v) {
		return out, false
	}
	return appendJSONString(out, v), true
}

func isDecimalInt(v []byte) bool {
	s := v
	if s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 18 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// plainString reports whether a plain scalar is certainly a string under YAML
// 1.1 (yaml.v2) resolution, and safe to copy as is.
func plainString(v []byte) bool {
	switch v[0] {
	case '&', '*', '!', '|', '>', '%', '@', '`', '"', '\'', '[', ']', '{', '}', ',', '?', '#', '.', '+', '-', '=', '<':
		return false
	}
	switch string(v) {
	case "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF":
		return false
	}
	if v[len(v)-1] == ':' || bytes.Contains(v, []byte(": ")) || bytes.Contains(v, []byte(" #")) {
		return false
	}
	if '0' <= v[0] && v[0] <= '9' {
		// Numbers, floats, octals, hex, timestamps and sexagesimals start with a
		// digit; of those only dotted quads and CIDRs are taken as certainly strings.
		return isDottedQuad(v)
	}
	for _, c := range v {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func isDottedQuad(v []byte) bool {
	s := string(v)
	if i := bytes.IndexByte(v, '/'); i >= 0 {
		if _, err := strconv.Atoi(s[i+1:]); err != nil {
			return false
		}
		s = s[:i]
	}
	parts := 0
	for _, part := range bytes.Split([]byte(s), []byte(".")) {
		if len(part) == 0 || len(part) > 3 {
			return false
		}
		for _, c := range part {
			if c < '0' || c > '9' {
				return false
			}
		}
		parts++
	}
	return parts == 4
}

func appendJSONString(out, s []byte) []byte {
	out = append(out, '"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c < 0x20:
			out = append(out, `\u00`...)
			out = append(out, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}
