package nftables

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables/expr"
)

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// formatRule renders a rule's expressions, one "[name field=value ...]" per expression,
// like "nft --debug=netlink" does.
func formatRule(exprs []expr.Any) string {
	parts := make([]string, 0, len(exprs))
	for _, e := range exprs {
		v := reflect.Indirect(reflect.ValueOf(e))
		var fs []string
		for i := 0; i < v.NumField(); i++ {
			fv := v.Field(i)
			if !v.Type().Field(i).IsExported() || fv.IsZero() {
				continue
			}
			fs = append(fs, fmt.Sprintf("%s=%v", v.Type().Field(i).Name, fv.Interface()))
		}
		parts = append(parts, "["+strings.ToLower(v.Type().Name())+" "+strings.Join(fs, " ")+"]")
	}
	return strings.Join(parts, " ")
}

// writeTable renders a table: chains with their rules, and every set with its
// elements decoded into addresses, protocols and ports.
func writeTable(b *strings.Builder, name string, t *Table, rules map[string][]string) {
	f := familyOf(t.Family)
	fmt.Fprintf(b, "table %s %s {\n", f, name)
	for _, cn := range sortedKeys(t.Chains) {
		ci := t.Chains[cn]
		fmt.Fprintf(b, "\tchain %s {\n", cn)
		if ci.Hook != "" {
			fmt.Fprintf(b, "\t\ttype %s hook %s priority %d; policy accept;\n", ci.Type, ci.Hook, ci.Priority)
		}
		for _, r := range rules[cn] {
			fmt.Fprintf(b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	for _, sn := range sortedKeys(t.Sets) {
		sd := t.Sets[sn]
		fmt.Fprintf(b, "\tset %s { # %d elements, key %d bytes, data %d bytes, %s\n", sn, len(sd.Elements), sd.KeyLen, sd.DataLen, sd.Flags)
		lines := make([]string, 0, len(sd.Elements))
		spec, known := specFor(sn)
		for _, e := range sd.Elements {
			if known {
				lines = append(lines, formatElement(f, spec, e))
			} else {
				lines = append(lines, fmt.Sprintf("%x : %x %s", e.Key, e.Val, e.Verdict))
			}
		}
		slices.Sort(lines)
		for _, l := range lines {
			fmt.Fprintf(b, "\t\t%s\n", l)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}

func formatFields(f family, fields []field, b []byte) string {
	d := &dec{f: f, b: b}
	parts := make([]string, 0, len(fields))
	for _, fl := range fields {
		switch fl {
		case fAddr:
			parts = append(parts, d.addr().String())
		case fProto:
			parts = append(parts, protoName(d.proto()))
		case fPort:
			parts = append(parts, fmt.Sprint(d.port()))
		case fSlot:
			parts = append(parts, fmt.Sprint(d.slot()))
		}
	}
	if d.err != nil {
		return fmt.Sprintf("%x", b)
	}
	return strings.Join(parts, " . ")
}

func formatElement(f family, spec setSpec, e Element) string {
	s := formatFields(f, spec.key, e.Key)
	if e.KeyEnd != nil {
		s += " - " + formatFields(f, spec.key, e.KeyEnd)
	}
	switch {
	case e.Verdict == verdictDrop:
		s += " : drop"
	case e.Verdict != "":
		s += " : goto " + e.Verdict
	case e.Val != nil:
		s += " : " + formatFields(f, spec.data, e.Val)
	}
	return s
}
