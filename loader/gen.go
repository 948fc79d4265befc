package loader

// The generated wsplice_bpfel.go and .o are committed so that `go build`
// needs no clang. `make generate` reruns this with the pinned clang-16.
//go:generate go tool bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type conn_ctl -type conn_stats wsplice ../bpf/wsplice.c -- -I../bpf
//go:generate go tool bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel floor ../bpf/floor.c -- -I../bpf
