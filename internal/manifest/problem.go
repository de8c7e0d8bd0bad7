package manifest

import (
	"fmt"
	"strings"
)

// Problem is one error or warning about the manifests, located as precisely as
// the decoder allows: file, line, document, object and field.
type Problem struct {
	// File is the path relative to the manifest directory.
	File string `json:"file"`
	// Line is the 1-based line in File, 0 when unknown.
	Line int `json:"line,omitempty"`
	// Doc is the 1-based YAML document (or JSON value) in File, 0 for the whole file.
	Doc int `json:"doc,omitempty"`
	// Item is the 1-based item of a List, 0 when the document is not a List.
	Item int `json:"item,omitempty"`
	// Kind, Namespace and Name identify the object, when known.
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Field is the field path, as the API server prints it ("spec.ports[0].port").
	Field string `json:"field,omitempty"`
	// Message says what is wrong.
	Message string `json:"message"`
	// Warning marks problems that do not reject anything (an ignored kind).
	Warning bool `json:"warning,omitempty"`
}

// Object names the object "Kind namespace/name" (or "Kind name" when cluster-scoped).
func (p *Problem) Object() string {
	switch {
	case p.Kind == "":
		return ""
	case p.Name == "":
		return p.Kind
	case p.Namespace == "":
		return p.Kind + " " + p.Name
	}
	return p.Kind + " " + p.Namespace + "/" + p.Name
}

// String gives "file:line: document N: Kind ns/name: field: message".
func (p *Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Doc > 0 {
		fmt.Fprintf(&b, "document %d", p.Doc)
		if p.Item > 0 {
			fmt.Fprintf(&b, " item %d", p.Item)
		}
		b.WriteString(": ")
	}
	if o := p.Object(); o != "" {
		b.WriteString(o)
		b.WriteString(": ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

func (p *Problem) Error() string { return p.String() }
