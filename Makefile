# wsplice. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Targets like `test` are ordered steps, not independent jobs.
.NOTPARALLEL:

# go from PATH, else where scripts/provision.sh installs it. Recursive (=) so
# that a Go installed by `provision` earlier in the same run is found.
GO = $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
export PATH := $(PATH):/usr/local/go/bin

# BPF objects are built with one pinned compiler so that regenerating them
# gives byte-identical output (see check-generated). Override only on the
# command line (make generate BPF_CLANG=clang-19), not from the environment.
BPF_CLANG := clang-16
BPF_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
export BPF_CLANG BPF_CFLAGS
# The same values under the names bpf2go reads itself; bpf2go picks
# llvm-strip-16 for clang-16.
export BPF2GO_CC := $(BPF_CLANG)
export BPF2GO_CFLAGS := $(BPF_CFLAGS)

FUZZTIME_SHORT ?= 10s
FUZZTIME ?= 2m
E2E_TIMEOUT ?= 60m

# Unit tests: every package but the end-to-end ones under tests/.
UNIT_PKGS = $$($(GO) list ./... | { grep -v -e '/tests$$' -e '/tests/' || true; })
# As root, privileged tests must run, not skip (override with WSPLICE_REQUIRE_PRIV=0).
PRIV_ENV = $(if $(filter 0,$(shell id -u)),WSPLICE_REQUIRE_PRIV=$${WSPLICE_REQUIRE_PRIV:-1})

.PHONY: help
help: ## list the targets
	@echo "usage: make TARGET"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: provision
provision: ## install build and test dependencies (apt, Go if missing, npm ci); needs root or sudo
	bash scripts/provision.sh

.PHONY: build
build: ## build bin/wsplice and bin/wsplice-echo
	$(GO) build -o bin/wsplice ./cmd/wsplice
	$(GO) build -o bin/wsplice-echo ./cmd/wsplice-echo

.PHONY: generate
generate: ## regenerate the BPF objects and Go bindings in loader/ (needs clang-16)
	@command -v $(BPF_CLANG) >/dev/null || { echo "$(BPF_CLANG) not found: run 'sudo scripts/provision.sh'" >&2; exit 1; }
	$(GO) generate ./loader/...

.PHONY: check-generated
check-generated: generate ## fail if the committed BPF objects differ from a fresh `make generate`
	@if [[ -n "$$(git status --porcelain -- loader/)" ]]; then \
		echo "loader/ differs from the committed files after 'make generate':" >&2; \
		git status --porcelain -- loader/ >&2; \
		git --no-pager diff --stat -- loader/ >&2; \
		echo "run 'make generate' with $(BPF_CLANG) and commit the result" >&2; \
		exit 1; \
	fi
	@echo "check-generated: loader/ matches a fresh 'make generate'"

.PHONY: vet
vet: ## go vet ./...
	$(GO) vet ./...

.PHONY: test-unit
test-unit: ## unit tests (no root needed; privileged ones skip unless WSPLICE_REQUIRE_PRIV=1)
	$(GO) test $(UNIT_PKGS)
	cd bench && $(GO) test ./...

.PHONY: test-e2e
test-e2e: build ## end-to-end tests under tests/ (root: kernel path, network namespaces)
	$(PRIV_ENV) $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./tests/...

.PHONY: test-chat
test-chat: ## the chat room in headless Chromium through wsplice (tests/chat; root for the kernel path)
	$(PRIV_ENV) $(GO) test -count=1 -v -timeout 10m ./tests/chat/

.PHONY: test
test: provision check-generated vet ## everything CI runs: provision, check-generated, vet, unit (race detector), short fuzz, e2e
	$(PRIV_ENV) $(GO) test -race $(UNIT_PKGS)
	cd bench && $(GO) test -race ./...
	GO=$(GO) bash scripts/fuzz.sh $(FUZZTIME_SHORT)
	$(MAKE) --no-print-directory test-e2e
	-$(MAKE) --no-print-directory vm-test # not gating yet: sockmap tests fail intermittently on 6.1 under TCG

.PHONY: fuzz
fuzz: ## fuzz every Fuzz* target under userspace/ for FUZZTIME each (default 2m)
	GO=$(GO) bash scripts/fuzz.sh $(FUZZTIME)

.PHONY: demo
demo: ## run the demo: a chat room, wsplice on :8080 in front of two chat backends and Redis (Ctrl-C stops it)
	bash scripts/demo.sh

.PHONY: bench
bench: ## benchmark direct, wsplice (sockmap, userspace), HAProxy, nginx; report in bench/results/<date>/ (root)
	bash scripts/bench.sh

.PHONY: bench-smoke
bench-smoke: ## the same benchmark, ~2 s per scenario and 1 repetition (CI; numbers not asserted)
	WSPLICE_BENCH_SMOKE=1 bash scripts/bench.sh

.PHONY: vm-test
vm-test: ## run the loader, e2e and vmtest-tagged tests on Debian's 6.1 kernel (has kTLS) under QEMU
	GO=$(GO) bash scripts/vm-test.sh

.PHONY: clean
clean: ## remove built binaries and temporary files
	rm -rf bin/ tmp/
