package nftables

import (
	"fmt"
	"slices"
	"testing"
)

func el(k, v string) Element { return Element{Key: []byte(k), Val: []byte(v)} }

func summary(dels, adds map[string][]Element) string {
	var out []string
	for set, els := range dels {
		for _, e := range els {
			out = append(out, fmt.Sprintf("-%s:%s=%s", set, e.Key, e.Val))
		}
	}
	for set, els := range adds {
		for _, e := range els {
			out = append(out, fmt.Sprintf("+%s:%s=%s", set, e.Key, e.Val))
		}
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}

func TestStore(t *testing.T) {
	s := newStore()
	step := func(name, want string) {
		t.Helper()
		if got := summary(s.diff()); got != want {
			t.Errorf("%s: diff %s, want %s", name, got, want)
		}
		s.commit()
	}
	s.add("a", el("k1", "v1"))
	s.add("a", el("k1", "v1")) // a second port needs the same element
	s.add("a", el("k2", "v2"))
	step("initial", "[+a:k1=v1 +a:k2=v2]")
	s.remove("a", el("k1", "v1"))
	step("one of two references gone", "[]")
	s.remove("a", el("k1", "v1"))
	step("last reference gone", "[-a:k1=v1]")
	s.remove("a", el("k2", "v2"))
	s.add("a", el("k2", "v3"))
	step("value changed", "[+a:k2=v3 -a:k2=v2]")
	s.remove("a", el("k2", "v3"))
	s.add("a", el("k2", "v3"))
	step("removed and re-added in one sync", "[]")
	s.add("a", el("k3", "x"))
	s.remove("a", el("k3", "x"))
	step("added and removed in one sync", "[]")

	// A resync in place: only differences.
	s.resetWants(map[string]bool{"a": true})
	s.add("a", el("k2", "v3"))
	s.add("a", el("k4", "v4"))
	step("resync in place", "[+a:k4=v4]")
	s.resetWants(map[string]bool{"a": true})
	s.add("a", el("k4", "v5"))
	step("resync in place with changes", "[+a:k4=v5 -a:k2=v3 -a:k4=v4]")
	// The set is gone from the kernel: everything is added again.
	s.resetWants(nil)
	s.add("a", el("k4", "v5"))
	step("set gone", "[+a:k4=v5]")
}
