// Package e2e holds the end-to-end tests of the wsplice binary. TestMain
// builds cmd/wsplice and cmd/wsplice-echo from the work tree; the tests run
// them in network namespaces (package topology) and check what a client
// sees, each data-path test once per data path.
//
// They need root:
//
//	sudo go test -timeout 30m ./tests/...          # the sizes
//	sudo go test -short ./tests/...                # a few seconds per test
//
// Without root they skip; with WSPLICE_REQUIRE_PRIV=1 (CI) a missing
// privilege, node or tests/node/node_modules (npm ci in tests/node) is a
// failure instead.
//
// Environment:
//
//	WSPLICE_DATAPLANES               data paths, comma-separated (userspace,sockmap)
//	WSPLICE_ECHO_BIG                 largest message of TestEcho (64 MiB)
//	WSPLICE_HANDSHAKE_RUNS           repetitions of the handshake races (50)
//	WSPLICE_BULK_BYTES               bytes of the byte-stream tests (64 MiB)
//	WSPLICE_PINGPONG_ROUNDS          4 KiB round trips of TestStatsCountBytes (1000)
//	WSPLICE_STRESS_MESSAGES          messages of TestStress (100000)
//	WSPLICE_STRESS_CONNS             its connections (32)
//	WSPLICE_STRESS_MAX_SIZE          its largest message (1 MiB)
//	WSPLICE_STRESS_TIMEOUT_SECONDS   its time limit (300)
//	WSPLICE_CHURN_CONNS              connections of TestChurn (10000)
//	WSPLICE_PUSH_BYTES               bytes pushed at TestSlowReader's client (100 MiB)
//	WSPLICE_STALL_SECONDS            how long that client reads nothing (10)
//	WSPLICE_NODE_MESSAGES            messages of TestNodeClient and TestTLSNodeClient (2000)
//	WSPLICE_TLS_MESSAGES             messages of TestTLSEcho per listener (400)
//	WSPLICE_POOL_CONNS               connections of TestPoolLeastConn and TestPoolDrainRemove (1000)
package e2e
