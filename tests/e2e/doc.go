// Package e2e holds the end-to-end tests of the wsplice binary: they build
// cmd/wsplice and cmd/wsplice-echo, run them in network namespaces (package
// topology) and check what a client sees, for every data path.
//
// They need root:
//
//	sudo go test -timeout 30m ./tests/...
//
// -short keeps every test to a few seconds. WSPLICE_DATAPLANES=userspace
// (comma-separated) limits the data paths; the WSPLICE_* variables in
// sizes_test.go override sizes and counts; WSPLICE_REQUIRE_PRIV=1 turns
// every skip for a missing privilege or tool into a failure.
package e2e
