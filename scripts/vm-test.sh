#!/usr/bin/env bash
# vm-test.sh runs wsplice's privileged tests on a second kernel: Debian's 6.1
# cloud kernel (which has kernel TLS as a module; the CI host's kernel may
# not), booted under QEMU with software emulation (TCG: no KVM needed) from a
# small initramfs that holds busybox, the kernel modules the tests need and
# statically linked test binaries. The VM's console is streamed to stdout;
# the exit status is the tests' result.
#
# Usage: scripts/vm-test.sh [--kernel-version VER] [--timeout SECONDS] [--list-kernels]
#   --kernel-version VER  a Debian kernel: a release (6.1.0-54-cloud-amd64),
#                         its ABI (6.1.0-54, the cloud-amd64 flavour then) or
#                         a package name (linux-image-...-unsigned). Default:
#                         $VM_KERNEL_VERSION, else the newest 6.1 cloud kernel apt knows.
#   --timeout SECONDS     kill the VM after this long (default $VM_TIMEOUT or 900)
#   --list-kernels        list the kernel packages apt can download, and exit
#
# Environment:
#   VM_TEST_PKGS  packages to compile into test binaries, space-separated,
#                 each PKG[:RUN[:SKIP]] with optional -test.run and -test.skip
#                 regexps. Default: ./loader/, ./tests/topology/,
#                 ./tests/e2e/ (but TestNodeClient) and every package with a
#                 test file built under the 'vmtest' tag (//go:build vmtest);
#                 all are compiled with -tags vmtest.
#   VM_TEST_ARGS  flags for every test binary (default below: verbose, short)
#   VM_MODULES    kernel modules to pack and load (default below: tls, veth,
#                 the kTLS ciphers)
#   VM_MEM, VM_SMP  memory (MiB) and vCPUs (default 2048, 2)
#   VM_CACHE      downloads and build output (default tmp/vm in the repository)
#
# Needs qemu-system-x86 (installed here with apt when run as root, and by
# scripts/provision.sh), apt-get and dpkg for the downloads, and Go. Kernels
# and busybox are downloaded once as .deb files with `apt-get download` and
# kept unpacked under VM_CACHE; nothing is installed on the host from them.
set -euo pipefail

PROG=vm-test
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${VM_CACHE:-$repo/tmp/vm}
kernel_version=${VM_KERNEL_VERSION:-}
timeout=${VM_TIMEOUT:-900}
mem=${VM_MEM:-2048}
smp=${VM_SMP:-2}
# -test.short keeps the churn and stress tests small: under TCG everything
# runs 10-30 times slower than on the host. -test.timeout bounds each binary
# well below the VM's own timeout, so that a hang ends with a goroutine dump
# and leaves time for the other binaries.
test_args=${VM_TEST_ARGS:--test.v -test.short -test.count=1 -test.timeout=5m}
# tls and its ciphers (crypto templates are found at run time, not through
# module dependencies, so they are listed here); veth for network namespaces;
# xfrm_user and nfnetlink because vishvananda/netlink opens a socket of each of
# their netlink families in every handle (tests/topology), and fails without.
modules=${VM_MODULES:-tls gcm ctr ghash-generic ghash-clmulni-intel aesni-intel ccm chacha20poly1305 chacha-x86_64 poly1305-x86_64 veth xfrm_user nfnetlink}
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

list_kernels=0
while (($#)); do
	case "$1" in
	--kernel-version) (($# >= 2)) || die "--kernel-version needs a value"; kernel_version=$2; shift 2 ;;
	--kernel-version=*) kernel_version=${1#*=}; shift ;;
	--timeout) (($# >= 2)) || die "--timeout needs a value"; timeout=$2; shift 2 ;;
	--timeout=*) timeout=${1#*=}; shift ;;
	--list-kernels) list_kernels=1; shift ;;
	-h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
	*) die "unknown argument '$1' (try --help)" ;;
	esac
done
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout wants seconds, got '$timeout'"

# Tools -----------------------------------------------------------------------

apt_updated=0
apt_update_once() {
	((apt_updated)) && return
	[[ $EUID -eq 0 ]] || return 1
	say "apt-get update"
	apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list*"
	apt_updated=1
}

command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
	die "apt-get and dpkg are needed to download Debian's kernel (Debian or Ubuntu host)"
[[ -x $go ]] || die "go not found: run 'sudo scripts/provision.sh'"
if ! command -v qemu-system-x86_64 >/dev/null; then
	[[ $EUID -eq 0 ]] || die "qemu-system-x86_64 not found: run 'sudo apt-get install qemu-system-x86' (or scripts/provision.sh)"
	say "qemu-system-x86_64 not found: installing qemu-system-x86"
	apt_update_once
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 ||
		die "apt-get install qemu-system-x86 failed"
fi

# candidate PKG prints the version apt would download, or fails.
candidate() {
	local v
	v=$(apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
	[[ -n $v && $v != "(none)" ]] && echo "$v"
}

# fetch_deb PKG DIR downloads PKG's .deb and unpacks it into DIR, once: an
# existing DIR (moved into place only when complete) is reused. It uses only
# the local cache when PKG is already there, so later runs work offline.
fetch_deb() {
	local pkg=$1 dir=$2 tmp
	[[ -d $dir ]] && return 0
	tmp=$(mktemp -d "$cache/.download.XXXXXX")
	say "downloading $pkg"
	# As root, apt drops to _apt for downloads, which cannot write here.
	if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >"$tmp/log" 2>&1); then
		cat "$tmp/log" >&2
		rm -rf "$tmp"
		die "apt-get download $pkg failed (network? run 'apt-get update'?)"
	fi
	mkdir "$tmp/root"
	dpkg -x "$tmp"/*.deb "$tmp/root" || { rm -rf "$tmp"; die "dpkg -x of $pkg failed"; }
	rm -f "$tmp"/*.deb "$tmp/log"
	mv "$tmp/root" "$dir"
	rmdir "$tmp"
}

# kernel_package turns what --kernel-version names into a package name.
kernel_package() {
	local v=$1
	case "$v" in
	linux-image-*) echo "$v" ;;
	*-*-*) echo "linux-image-$v-unsigned" ;;
	?*) echo "linux-image-$v-cloud-amd64-unsigned" ;;
	esac
}

newest_61_cloud() {
	apt-cache pkgnames linux-image-6.1 2>/dev/null |
		grep -E '^linux-image-6\.1\.[0-9]+-[0-9]+-cloud-amd64-unsigned$' | sort -V |
		while read -r p; do candidate "$p" >/dev/null && echo "$p"; done | tail -n 1 || true
}

mkdir -p "$cache/kernels" "$cache/busybox"
# One run at a time per cache: they share the build directory.
exec 9>"$cache/.lock"
if ! flock -n 9; then
	say "another vm-test is using $cache: waiting for it"
	flock 9
fi

if ((list_kernels)); then
	[[ -n $(newest_61_cloud) ]] || apt_update_once || true
	apt-cache pkgnames linux-image- | grep -E -- '-unsigned$' | sort -V
	exit 0
fi

if [[ -n $kernel_version ]]; then
	kpkg=$(kernel_package "$kernel_version")
else
	kpkg=$(newest_61_cloud)
	if [[ -z $kpkg ]]; then
		apt_update_once || true
		kpkg=$(newest_61_cloud)
	fi
	if [[ -z $kpkg ]]; then
		# Offline, or no apt lists: the newest kernel already cached.
		kpkg=$(ls "$cache/kernels" 2>/dev/null | sort -V | tail -n 1 || true)
		[[ -n $kpkg ]] || die "no linux-image-6.1.*-cloud-amd64-unsigned package known to apt and none cached: run 'apt-get update' (Debian 12 sources needed)"
		say "apt knows no 6.1 cloud kernel: using the cached $kpkg"
	fi
fi
kdir=$cache/kernels/$kpkg
if [[ ! -d $kdir ]]; then
	candidate "$kpkg" >/dev/null || apt_update_once || true
	candidate "$kpkg" >/dev/null ||
		die "apt has no package $kpkg: try --list-kernels (and 'apt-get update')"
	fetch_deb "$kpkg" "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
[[ -n $vmlinuz ]] || die "$kpkg has no /boot/vmlinuz-*: not a kernel image package?"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver

# The static busybox, from Debian's busybox-static package: unpacked into the
# cache rather than installed, since it would replace the host's busybox.
bbdir=$(ls -d "$cache"/busybox/*/ 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z $bbdir ]]; then
	bbver=$(candidate busybox-static) || { apt_update_once || true; bbver=$(candidate busybox-static); } ||
		die "apt has no busybox-static package: run 'apt-get update'"
	fetch_deb busybox-static "$cache/busybox/$bbver"
	bbdir=$cache/busybox/$bbver/
fi
busybox=${bbdir}bin/busybox
[[ -x $busybox ]] || die "$busybox missing: remove $bbdir and retry"

# Test binaries -------------------------------------------------------------------

build=$cache/build
rm -rf "$build"
mkdir -p "$build/root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,proc,sys,dev,etc,lib/modules,wsplice/bin,wsplice/tests}
root=$build/root
cd "$repo"

if [[ -n ${VM_TEST_PKGS:-} ]]; then
	read -r -a pkgs <<<"$VM_TEST_PKGS"
else
	# The kernel-path tests and the end-to-end tests of the binaries (they
	# need network namespaces and veth, which the VM has, and `go build`,
	# which scripts/vm/go stands in for). Left out: TestNodeClient (needs
	# node and its modules: a dynamically linked runtime with a tree of
	# libraries, too much for the initramfs) and tests/chat (needs
	# redis-server).
	pkgs=(./loader/ ./tests/topology/ ./tests/e2e/::NodeClient)
	# Packages that keep tests for the VM behind the vmtest build tag.
	while read -r d; do
		listed=0
		for spec in "${pkgs[@]}"; do [[ ${spec%%:*} == "./$d/" ]] && listed=1; done
		((listed)) || pkgs+=("./$d/")
	done < <(grep -rlE --include='*_test.go' --exclude-dir=tmp --exclude-dir=node_modules \
		'^//go:build .*\bvmtest\b' . 2>/dev/null | xargs -r -n1 dirname | sed 's|^\./||' | sort -u)
fi

: >"$root/wsplice/tests.list"
for spec in "${pkgs[@]}"; do
	IFS=: read -r pkg run skip <<<"$spec"
	rel=${pkg#./}
	rel=${rel%/}
	name=${rel//\//_}
	[[ -n $name ]] || die "VM_TEST_PKGS entry '$spec' names no package"
	say "building test binary for $pkg"
	CGO_ENABLED=0 "$go" test -c -tags vmtest -o "$root/wsplice/tests/$name.test" "$pkg" ||
		die "go test -c $pkg failed"
	if [[ ! -f $root/wsplice/tests/$name.test ]]; then
		say "warning: $pkg has no test files: skipped"
		continue
	fi
	# Tests run in their package's directory, as under go test.
	mkdir -p "$root/wsplice/src/$rel"
	[[ -d $rel/testdata ]] && cp -a "$rel/testdata" "$root/wsplice/src/$rel/"
	# Fields separated by US (\037): regexps often hold '|'.
	printf '%s\037%s\037%s\037%s\037%s\n' "$name" "/wsplice/tests/$name.test" "/wsplice/src/$rel" "$run" "$skip" >>"$root/wsplice/tests.list"
done
# The commands, for tests that run them: the end-to-end tests build them with
# `go build`, which scripts/vm/go answers from these prebuilt copies.
for d in cmd/*/; do
	[[ -f ${d}main.go ]] || continue
	CGO_ENABLED=0 "$go" build -o "$root/wsplice/bin/$(basename "$d")" "./$d" || die "go build ./$d failed"
done
install -m 0755 "$repo/scripts/vm/go" "$root/usr/local/bin/go"
[[ -s $root/wsplice/tests.list ]] || die "no test binary to run (VM_TEST_PKGS='${VM_TEST_PKGS:-}')"

# Kernel modules: each listed one with its dependencies (depends= in the
# module's .modinfo section), at their paths in the tree so that depmod and
# modprobe inside the VM find them.
declare -A packed=()
modpath() {
	local n=$1 alt=${1//-/_} f
	[[ $alt == "$n" ]] && alt=${1//_/-}
	f=$(find "$moddir/kernel" \( -name "$n.ko*" -o -name "$alt.ko*" \) -print -quit 2>/dev/null)
	echo "$f"
}
pack_module() {
	local n=$1 f rel deps d
	[[ -n ${packed[$n]:-} ]] && return 0
	packed[$n]=1
	f=$(modpath "$n")
	if [[ -z $f ]]; then
		grep -qE "/${n//-/[-_]}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && return 0
		say "warning: module $n not found in $kver"
		return 0
	fi
	rel=${f#"$moddir/"}
	mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
	case "$f" in
	*.ko) cp "$f" "$root/lib/modules/$kver/$rel" ;;
	*.ko.xz) xz -dc "$f" >"$root/lib/modules/$kver/${rel%.xz}" || die "xz -d $f failed" ;;
	*.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$kver/${rel%.zst}" || die "zstd -d $f failed" ;;
	*) die "unknown module format: $f" ;;
	esac
	deps=$(tr '\0' '\n' <"$root/lib/modules/$kver/${rel%.ko*}.ko" | sed -n 's/^depends=//p' | tr ',' ' ')
	for d in $deps; do pack_module "$d"; done
}
if [[ -d $moddir ]]; then
	for m in $modules; do pack_module "$m"; done
	cp "$moddir"/modules.order "$moddir"/modules.builtin "$root/lib/modules/$kver/" 2>/dev/null || true
fi

# Initramfs --------------------------------------------------------------------------

cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh" # for /init's #!; it installs the other applets
install -m 0755 "$repo/scripts/vm/init" "$root/init"
{
	printf 'VM_MODULES=%q\n' "$modules"
	printf 'VM_TEST_ARGS=%q\n' "$test_args"
} >"$root/wsplice/vm.env"
# Not compressed: QEMU loads it straight into memory, and unpacking gzip
# under emulation costs more boot time than the copy.
(cd "$root" && find . -print0 | LC_ALL=C sort -z | "$busybox" cpio -o -H newc -0 -R 0:0 --ignore-devno --renumber-inodes 2>/dev/null) >"$build/initramfs.cpio" ||
	die "packing the initramfs failed"
say "initramfs: $(du -m "$build/initramfs.cpio" | cut -f1) MiB, kernel $kver, tests: $(cut -d $'\037' -f1 "$root/wsplice/tests.list" | tr '\n' ' ')"

# Boot ------------------------------------------------------------------------------

console=$build/console.log
results=$build/results.txt
: >"$results"
# TCG: KVM is not usable on the CI machines. loglevel=5 keeps the boot
# quiet but still shows kernel warnings (a WARN in the sockmap code).
accel=(-accel tcg -cpu max)
# -smp 2 under TCG runs one host thread per vCPU (MTTCG). No network card:
# the tests use loopback and namespaces only.
qemu=(qemu-system-x86_64 "${accel[@]}" -smp "$smp" -m "$mem" -machine q35
	-kernel "$vmlinuz" -initrd "$build/initramfs.cpio"
	-append "console=ttyS0 panic=-1 loglevel=5 rdinit=/init"
	-display none -monitor none -nic none -no-reboot
	-chardev stdio,id=console,signal=on -serial chardev:console
	-serial "file:$results")
say "booting $kver: qemu ${accel[*]} -smp $smp -m $mem (timeout ${timeout}s)"
t0=$SECONDS
set +e
# stdin from /dev/null: QEMU would otherwise put a terminal in raw mode.
timeout --kill-after=10 "$timeout" "${qemu[@]}" </dev/null 2>&1 | tee "$console"
qrc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - t0))

# Report ---------------------------------------------------------------------------

tr -d '\r' <"$results" >"$results.tmp" && mv "$results.tmp" "$results"
field() { sed -n "s/^$1 //p" "$results" | tail -n 1; }
boot=$(field uptime_at_init)
echo
say "----- summary ($kpkg) -----"
say "kernel: $(field kernel)"
say "boot: /init ran ${boot:-?}s after kernel start; VM total ${elapsed}s (host wall clock)"
say "btf: $(field btf); kernel TLS: $(field ktls) (tcp_available_ulp: $(field tcp_available_ulp))"
grep -E '^module ' "$results" | sed "s/^/$PROG: /" || true
say "kernel warnings/BUGs in dmesg: $(field kernel_warnings)"
grep -E '^(test|package) ' "$results" | sed "s/^/$PROG: /" || true
marker=$(sed -n 's/^WSPLICE-VM-RESULT: //p' "$results" | tail -n 1)
if [[ -z $marker ]]; then
	# The result port is a file QEMU writes; the console is the fallback.
	marker=$(tr -d '\r' <"$console" | sed -n 's/^wsplice-vm: WSPLICE-VM-RESULT: //p' | tail -n 1)
fi
if ((qrc == 124 || qrc == 137)); then
	say "FAIL: the VM did not finish within ${timeout}s and was killed (console: $console)"
	exit 1
fi
case "$marker" in
PASS) say "PASS (console: $console)"; exit 0 ;;
FAIL) say "FAIL (console: $console)"; exit 1 ;;
*)
	say "FAIL: no result from the VM (qemu exit $qrc): it crashed or could not boot; see $console"
	exit 1
	;;
esac
