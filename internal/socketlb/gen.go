package socketlb

// The programs are compiled by bpf2go into socketlb_bpfel.o and the Go bindings
// beside it, both committed so that building kproxy needs no clang. The flags
// are fixed (bpf2go already maps the source directory out of the debug info and
// strips DWARF), so the output is byte-for-byte reproducible; hack/test.sh
// regenerates and fails on any difference.
//
//go:generate go tool bpf2go -cc clang -strip llvm-strip -cflags "-O2 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type frontend_key -type frontend -type slot_key -type backend -type nodeaddr_key -type affinity_key -type affinity_val -type revnat_key -type revnat_val socketlb bpf/socketlb.c
