// Package chat tests the reference deployment end to end in a real browser:
// Redis (a real redis-server), two cmd/wsplice-chat backends and wsplice in
// front of them on loopback, and two users in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core from this directory's
// node_modules) who set a username and talk to each other, each page's
// WebSocket on a different backend. TestChatBackendFailure kills one
// backend mid-conversation and checks the page reconnects through wsplice
// and nothing typed is lost.
//
// Each test runs once per data path (sockmap, userspace) and scheme (ws,
// and wss when wsplice has --listen-tls):
//
//	sudo go test -v ./tests/chat/        # as CI does; sockmap needs root
//	go test -v ./tests/chat/             # userspace only
//
// It needs redis-server, chromium, node and npm ci in tests/chat
// (scripts/provision.sh installs them all). Without them, or without root
// for the sockmap data path, a test skips; with WSPLICE_REQUIRE_PRIV=1 (CI)
// it fails instead.
//
// Environment:
//
//	WSPLICE_ARTIFACTS   where screenshots, the browsers' network logs and
//	                    every process's log go (default: a new temporary
//	                    directory, named in the test log)
//	WSPLICE_DATAPLANES  data paths, comma-separated (sockmap,userspace)
//	WSPLICE_CHROMIUM    the browser (/usr/bin/chromium)
package chat
