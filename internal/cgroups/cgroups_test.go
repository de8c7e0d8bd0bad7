package cgroups

import (
	"strings"
	"testing"
)

func TestV2Root(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo, want string
	}{
		{"pure cgroup v2", `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate`, "/sys/fs/cgroup"},
		{"hybrid", `35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd`, "/sys/fs/cgroup/unified"},
		{"a bind mount of a sub-cgroup is not the root", `40 25 0:30 /kubepods /host/cg rw shared:9 - cgroup2 cgroup2 rw
41 25 0:30 / /mnt/cgroup\040v2 rw shared:9 - cgroup2 cgroup2 rw`, "/mnt/cgroup v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v2Root(strings.NewReader(tc.mountinfo))
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := v2Root(strings.NewReader("25 30 0:23 / /sys rw - sysfs sysfs rw\n")); err == nil {
		t.Error("no cgroup2 line: want an error")
	}
}
