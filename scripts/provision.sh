#!/usr/bin/env bash
# provision.sh installs what wsplice needs to build, regenerate its BPF
# objects, run its tests, the demo and the benchmarks on Debian 12 or
# Ubuntu 24.04. It is idempotent: when everything is there it installs
# nothing and does not touch the network. The Vagrantfile, `make test` and
# `make demo` call it, and `make bench` with --bench.
#
# Usage: scripts/provision.sh [--demo | --bench]
#   --demo   only what `make demo` needs (Go, curl, ss, Redis, openssl, the
#            Node test client)
#   --bench  only what `make bench` needs (Go, HAProxy, nginx, perf)
#
# Runs as root, or re-runs itself through sudo.
set -euo pipefail

PROG=provision
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
trap 'rc=$?; printf "%s: error: line %s: \"%s\" failed (exit %s)\n" "$PROG" "$LINENO" "$BASH_COMMAND" "$rc" >&2; exit "$rc"' ERR

profile=full
for arg in "$@"; do
	case "$arg" in
	--demo) profile=demo ;;
	--bench) profile=bench ;;
	-h | --help)
		sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument '$arg' (try --help)" ;;
	esac
done

repo=${WSPLICE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
[[ -f "$repo/go.mod" ]] || die "$repo does not look like the wsplice repository (no go.mod); set WSPLICE_ROOT"

if [[ $EUID -ne 0 ]]; then
	command -v sudo >/dev/null || die "must run as root (and sudo is not installed)"
	say "not root: re-running through sudo"
	exec sudo bash "$repo/scripts/provision.sh" "$@"
fi

[[ -r /etc/os-release ]] && . /etc/os-release
case "${ID:-}" in
debian | ubuntu) ;;
*) say "warning: tested on Debian 12 and Ubuntu 24.04 only; this is '${PRETTY_NAME:-unknown}'" ;;
esac
command -v apt-get >/dev/null || die "apt-get not found: only Debian and Ubuntu are supported"

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update_once() {
	if [[ $apt_updated -eq 0 ]]; then
		say "apt-get update"
		apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list*"
		apt_updated=1
	fi
}
installed() { [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]; }
has_candidate() { apt-cache show "$1" >/dev/null 2>&1; }

# Packages by purpose. clang-16 is the clang `make generate` is pinned to;
# llvm-16 gives llvm-strip-16, which bpf2go picks for clang-16.
pkgs=(ca-certificates curl procps iproute2 git make)
# The chat room of the demo and of tests/chat: Redis, and openssl for the
# demo's self-signed certificate.
pkgs+=(redis-server openssl)
if [[ $profile == full ]]; then
	pkgs+=(gcc clang-16 llvm-16 libbpf-dev ruby bpftool)
	pkgs+=(qemu-system-x86) # make vm-test boots Debian's 6.1 kernel under it
fi
# make bench (and bench-smoke, which CI runs) compares wsplice with HAProxy
# and nginx, and profiles with perf (linux-perf on Debian, linux-tools on
# Ubuntu).
if [[ $profile == full || $profile == bench ]]; then
	pkgs+=(haproxy nginx linux-perf)
fi
# tests/chat drives Debian's Chromium with playwright-core (no browser download).
if [[ $profile == full ]]; then
	pkgs+=(chromium)
fi
if [[ -f "$repo/tests/node/package-lock.json" || ($profile == full && -f "$repo/tests/chat/package-lock.json") ]] &&
	! command -v npm >/dev/null; then
	pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
	apt_update_once
	# Ubuntu ships bpftool inside linux-tools, not as its own package.
	resolved=()
	for p in "${missing[@]}"; do
		if [[ $p == bpftool ]] && ! has_candidate bpftool; then
			if has_candidate "linux-tools-$(uname -r)"; then
				resolved+=(linux-tools-common "linux-tools-$(uname -r)")
			else
				resolved+=(linux-tools-common linux-tools-generic)
			fi
			continue
		fi
		if [[ $p == linux-perf ]] && ! has_candidate linux-perf; then
			if has_candidate "linux-tools-$(uname -r)"; then
				resolved+=(linux-tools-common "linux-tools-$(uname -r)")
			else
				say "warning: no perf package found: make bench runs without a profile"
			fi
			continue
		fi
		# Ubuntu has Chromium only as a snap, which tests/chat cannot use.
		if [[ $p == chromium ]] && ! has_candidate chromium; then
			say "warning: no chromium package on ${PRETTY_NAME:-this system}: tests/chat will skip (fail under WSPLICE_REQUIRE_PRIV=1)"
			continue
		fi
		has_candidate "$p" || die "package '$p' is not available from apt on ${PRETTY_NAME:-this system}"
		resolved+=("$p")
	done
	say "installing: ${resolved[*]}"
	apt-get install -y -qq --no-install-recommends "${resolved[@]}" ||
		die "apt-get install ${resolved[*]} failed"
else
	say "packages: all present (${pkgs[*]})"
fi

# Go: the version go.mod asks for, into /usr/local/go, only when no Go is
# installed at all. The distribution's Go is only a bootstrap: it downloads
# the golang.org/toolchain module (the same module `go` itself uses to switch
# toolchains) through the configured Go module proxy, and is removed again.
find_go() {
	if command -v go >/dev/null; then
		command -v go
	elif [[ -x /usr/local/go/bin/go ]]; then
		echo /usr/local/go/bin/go
	else
		return 1
	fi
}

install_go() {
	local want arch bootstrap_pkgs=() tmp dir
	want=$(awk '$1 == "toolchain" { sub(/^go/, "", $2); print $2; exit }' "$repo/go.mod")
	[[ -n $want ]] || want=$(awk '$1 == "go" { print $2; exit }' "$repo/go.mod")
	[[ -n $want ]] || die "cannot read the Go version from $repo/go.mod"
	# A "go 1.26" line names a language version, not a release.
	[[ $want =~ ^[0-9]+\.[0-9]+$ ]] && want="$want.0"
	arch=$(dpkg --print-architecture)
	say "Go not found: installing Go $want ($arch) into /usr/local/go"

	if ! command -v go >/dev/null; then
		apt_update_once
		say "installing the distribution's golang-go to bootstrap"
		apt-get install -y -qq --no-install-recommends golang-go || die "apt-get install golang-go failed"
		bootstrap_pkgs=(golang-go)
	fi
	tmp=$(mktemp -d)
	# Outside the repository: an older bootstrap Go cannot parse go.mod.
	dir=$(cd "$tmp" && HOME="$tmp" GOPATH="$tmp/gopath" GOMODCACHE="$tmp/mod" GOFLAGS=-modcacherw GOTOOLCHAIN=local \
		go mod download -json "golang.org/toolchain@v0.0.1-go$want.linux-$arch" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') ||
		die "downloading Go $want through the Go module proxy failed"
	[[ -n $dir && -f "$dir/bin/go" ]] || die "Go $want download has no bin/go"
	rm -rf /usr/local/go.provision
	cp -a "$dir" /usr/local/go.provision
	# Module zips do not record file modes.
	chmod 0755 /usr/local/go.provision/bin/* /usr/local/go.provision/pkg/tool/*/*
	rm -rf /usr/local/go
	mv /usr/local/go.provision /usr/local/go
	rm -rf "$tmp"
	if ((${#bootstrap_pkgs[@]})); then
		say "removing the bootstrap Go"
		apt-get purge -y -qq --auto-remove "${bootstrap_pkgs[@]}" >/dev/null
	fi
	# On PATH for login shells and for sudo (secure_path has /usr/local/bin).
	ln -sf /usr/local/go/bin/go /usr/local/bin/go
	ln -sf /usr/local/go/bin/gofmt /usr/local/bin/gofmt
	/usr/local/go/bin/go version >/dev/null || die "the installed Go does not run"
}

if go_bin=$(find_go); then
	say "go: $("$go_bin" version 2>/dev/null || echo "$go_bin (version unknown)")"
else
	install_go
	say "go: $(/usr/local/go/bin/go version)"
fi

# Node dependencies, for each directory with a lockfile: the test client
# (ws) in tests/node, and for the full profile playwright-core in
# tests/chat. npm ci wipes node_modules, so it runs only when the lockfile
# changed since the last run.
node_dirs=()
[[ $profile == bench ]] || node_dirs+=("$repo/tests/node")
if [[ $profile == full ]]; then
	node_dirs+=("$repo/tests/chat")
fi
for node_dir in ${node_dirs[@]+"${node_dirs[@]}"}; do
	[[ -f "$node_dir/package-lock.json" ]] || continue
	rel=${node_dir#"$repo/"}
	command -v npm >/dev/null || die "npm not found after installing it"
	stamp="$node_dir/node_modules/.wsplice-provisioned"
	sum=$(sha256sum "$node_dir/package-lock.json" "$node_dir/package.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
	if [[ -f $stamp && "$(cat "$stamp")" == "$sum" ]]; then
		say "$rel: node_modules up to date"
	else
		# Install as whoever owns the checkout, so that a provision run
		# through sudo leaves no root-owned files in a user's tree.
		owner=$(stat -c %U "$node_dir")
		run_as=()
		[[ $owner != root && $owner != UNKNOWN ]] && run_as=(runuser -u "$owner" --)
		say "$rel: npm ci${run_as:+ (as $owner)}"
		(cd "$node_dir" && "${run_as[@]}" npm ci --no-audit --no-fund --no-progress --loglevel=error) ||
			die "npm ci in $rel failed"
		echo "$sum" | "${run_as[@]}" tee "$stamp" >/dev/null
	fi
done

# What the kernel path needs at run time: say so now rather than at start-up.
if [[ $profile == full ]]; then
	[[ -r /sys/kernel/btf/vmlinux ]] ||
		say "warning: /sys/kernel/btf/vmlinux missing: the sockmap data path will be unavailable"
fi

say "done"
