#!/usr/bin/env bash
# bench.sh benchmarks wsplice against HAProxy, nginx and a direct connection
# to the echo backend, in one run, on loopback, and writes a report.
#
# Usage: scripts/bench.sh            (make bench; as root)
#        WSPLICE_BENCH_SMOKE=1 scripts/bench.sh   (make bench-smoke: ~2 s per
#                                    scenario, 1 repetition; CI)
#
# Targets: direct, sockmap (wsplice kernel path), userspace (wsplice Go
# relay), haproxy, nginx. Scenarios: open-loop, closed-loop, bulk, handshake,
# idle (cmd/wsplice-load documents each).
#
# gofloor (bench/gofloor) is a reference, not a competitor: the least a
# proxy built on Go's net package can do per connection (no parsing, no
# limits, io.Copy). evfloor (bench/evfloor) is the same least work in an
# epoll loop per core on raw non-blocking sockets, outside Go's net
# package, as nginx and HAProxy are built. Both run only the scenarios in
# GOFLOOR_SCENARIOS, to show where Go itself stands against nginx in the
# handshake rate, with and without its net package.
#
# smfloor (bench/evfloor -sockmap) is the kernel path's reference: the
# event-loop floor, splicing each pair after the backend's answer head with
# the least sk_skb verdict there is (bpf/floor.c: look the peer up,
# redirect; no counters, no backpressure, no FIN hand-over checks). It runs
# the scenarios in SMFLOOR_SCENARIOS, those of the kernel path's targets
# (issue 5), to show in the same run what the kernel mechanism costs
# without anything wsplice adds to it.
#
# WSS: the targets wsplice-tls (--listen-tls), haproxy-tls (bind ... ssl crt)
# and nginx-tls (listen ... ssl) terminate TLS with the same generated
# self-signed ECDSA P-256 certificate in front of the same plaintext echo
# backend; the generator connects with --tls (TLS 1.3, a full handshake per
# connection, no resumption, certificate not verified). They run only the
# scenarios in WSS_SCENARIOS. TARGETS=wss is short for "direct wsplice-tls
# haproxy-tls nginx-tls" (direct: plaintext, for reference). On a kernel
# without TLS (no "tls" in /proc/sys/net/ipv4/tcp_available_ulp) wsplice
# carries TLS records in Go's crypto/tls: the userspace TLS path; the
# report's WSS table says which path the run used.
#
# Every scenario runs REPS times;
# repetitions are interleaved (rep 1 of every target, then rep 2...) so that
# the noise of a shared machine spreads over all targets, and each target is
# started fresh for each repetition.
#
# Environment (defaults in brackets):
#   REPS [3]  DURATION [10s]  WARMUP [2s]  RATE [5000 msgs/s, open-loop]
#   OPEN_CONNS [100]  CLOSED_CONNS [64]  BULK_CONNS [2]  HS_WORKERS [16]
#   IDLE_CONNS [fd limit / 2 - 100]
#   TARGETS [direct sockmap userspace gofloor evfloor smfloor haproxy nginx wsplice-tls haproxy-tls nginx-tls]
#   GOFLOOR_SCENARIOS [closed-loop handshake: the scenarios gofloor and evfloor run]
#   SMFLOOR_SCENARIOS [open-loop closed-loop handshake: the scenarios smfloor runs]
#   WSS_SCENARIOS [closed-loop handshake: the scenarios the -tls targets run]
#   SCENARIOS [open-loop closed-loop bulk handshake idle]
#   PERF [1: perf profile of the closed-loop run on the kernel and userspace paths]
#   OUT [bench/results/<UTC date-time>]  LATEST [1: copy the report to
#   bench/results/latest.md and its charts, for the README; 0 in smoke runs]
#   NO_PROVISION [0]  PORT_BASE [19000: ports PORT_BASE+100..+394]
#   TOPOLOGY [loopback | netns]
#
# TOPOLOGY=netns puts the generator, the balancer and the echo backend in
# three network namespaces of their own (wsb-cli-, wsb-lb- and wsb-be-
# PORT_BASE), joined by two veth pairs in the benchmarking range:
#   client 198.18.0.1 <-> 198.18.0.2 balancer 198.18.1.1 <-> 198.18.1.2 backend
# The balancer's namespace forwards, so "direct" crosses the same two veth
# links, routed by the kernel, with no proxy. The namespaces go on exit.
# Nothing is pinned to a CPU: with two vCPUs, pinning the generator, the
# proxy and the backend apart would leave one of them a shared core anyway;
# all targets get the same unpinned placement. Every process this script
# starts is killed on exit.
set -euo pipefail

PROG=bench
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$PATH:/usr/local/go/bin"
if [[ $EUID -ne 0 ]]; then
	# The kernel path loads BPF and the namespaces need CAP_NET_ADMIN:
	# go through sudo (passwordless in a Vagrant box), keeping the knobs.
	command -v sudo >/dev/null || die "run as root: the kernel path loads BPF (sudo make bench)"
	say "not root: running again under sudo"
	# HOME=/root: Go's build and module caches go to root's, not into
	# the user's home as root-owned files; what the run writes in the
	# tree (bin/, bench/results/) is handed back to the user at exit.
	exec sudo -E env HOME=/root bash "$repo/scripts/bench.sh" "$@"
fi

smoke=${WSPLICE_BENCH_SMOKE:-0}
if [[ $smoke == 1 ]]; then
	REPS=${REPS:-1} DURATION=${DURATION:-2s} WARMUP=${WARMUP:-0.5s}
	IDLE_CONNS=${IDLE_CONNS:-1000} PERF=${PERF:-0} LATEST=${LATEST:-0}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
RATE=${RATE:-5000}
OPEN_CONNS=${OPEN_CONNS:-100}
CLOSED_CONNS=${CLOSED_CONNS:-64}
BULK_CONNS=${BULK_CONNS:-2}
HS_WORKERS=${HS_WORKERS:-16}
TARGETS=${TARGETS:-direct sockmap userspace gofloor evfloor smfloor haproxy nginx wsplice-tls haproxy-tls nginx-tls}
[[ $TARGETS != wss ]] || TARGETS="direct wsplice-tls haproxy-tls nginx-tls"
WSS_SCENARIOS=${WSS_SCENARIOS:-closed-loop handshake}
GOFLOOR_SCENARIOS=${GOFLOOR_SCENARIOS:-closed-loop handshake}
SMFLOOR_SCENARIOS=${SMFLOOR_SCENARIOS:-open-loop closed-loop handshake}
SCENARIOS=${SCENARIOS:-open-loop closed-loop bulk handshake idle}
PERF=${PERF:-1}
LATEST=${LATEST:-1}
nofile=$(ulimit -Hn)
ulimit -n "$nofile"
# The balancer holds two fds per proxied connection; keep 100 spare.
IDLE_CONNS=${IDLE_CONNS:-$((nofile / 2 - 100))}
TOPOLOGY=${TOPOLOGY:-loopback}
[[ $TOPOLOGY == loopback || $TOPOLOGY == netns ]] || die "TOPOLOGY must be loopback or netns, not $TOPOLOGY"
nproc=$(nproc)
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
OUT=${OUT:-bench/results/$stamp}

if [[ ${NO_PROVISION:-0} != 1 ]]; then
	bash scripts/provision.sh --bench >&2
fi
command -v haproxy >/dev/null || die "haproxy not installed (scripts/provision.sh --bench)"
command -v nginx >/dev/null || die "nginx not installed (scripts/provision.sh --bench)"

say "building"
make --no-print-directory build >&2
go build -o bin/wsplice-load ./cmd/wsplice-load
(cd bench && go build -o ../bin/gofloor ./gofloor && go build -o ../bin/evfloor ./evfloor)

mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
run=$(mktemp -d /tmp/wsplice-bench.XXXXXX)
pids=()
namespaces=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for p in "${namespaces[@]}"; do ip netns del "$p" 2>/dev/null || true; done
	rm -rf "$run"
	# Started by a user through sudo: the files this run wrote are theirs.
	if [[ -n ${SUDO_UID:-} && -n ${SUDO_GID:-} ]]; then
		chown -R "$SUDO_UID:$SUDO_GID" bin "$OUT" bench/results/latest* 2>/dev/null || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PORT_BASE moves every port (so two runs can share a host).
pb=${PORT_BASE:-19000}
backend_port=$((pb + 100))
declare -A port=([direct]=$((pb + 100)) [sockmap]=$((pb + 201)) [userspace]=$((pb + 202)) [haproxy]=$((pb + 203))
	[nginx]=$((pb + 204)) [gofloor]=$((pb + 205)) [evfloor]=$((pb + 206)) [smfloor]=$((pb + 207)) [wsplice-tls]=$((pb + 301)) [haproxy-tls]=$((pb + 303)) [nginx-tls]=$((pb + 304)))
for t in $TARGETS; do
	[[ -v "port[$t]" ]] || die "unknown target '$t' in TARGETS (known: ${!port[*]})"
done
for s in $SCENARIOS; do
	case $s in open-loop | closed-loop | bulk | handshake | idle) ;;
	*) die "unknown scenario '$s' in SCENARIOS (known: open-loop closed-loop bulk handshake idle)" ;;
	esac
done

# Where each party runs: cli (the generator), lb (the balancer), be (the
# echo backend). On loopback all three share the host's 127.0.0.1; with
# TOPOLOGY=netns each has a namespace, and *_x is the command prefix that
# runs a program in it (an array, so that `"${lb_x[@]}" prog &` leaves $!
# the program's own pid: ip netns exec execs it).
cli_x=() lb_x=() be_x=()
lb_host=127.0.0.1 be_host=127.0.0.1
netns_up() {
	local c=wsb-cli-$pb l=wsb-lb-$pb b=wsb-be-$pb n
	for n in "$c" "$l" "$b"; do
		ip netns del "$n" 2>/dev/null || true
		ip netns add "$n" || die "ip netns add $n failed"
		namespaces+=("$n")
		ip -n "$n" link set lo up
	done
	# veth names: at most 15 characters.
	ip link add "wsbc$pb" netns "$c" type veth peer name "wsbl$pb" netns "$l"
	ip link add "wsbm$pb" netns "$l" type veth peer name "wsbb$pb" netns "$b"
	ip -n "$c" addr add 198.18.0.1/24 dev "wsbc$pb"
	ip -n "$l" addr add 198.18.0.2/24 dev "wsbl$pb"
	ip -n "$l" addr add 198.18.1.1/24 dev "wsbm$pb"
	ip -n "$b" addr add 198.18.1.2/24 dev "wsbb$pb"
	ip -n "$c" link set "wsbc$pb" up
	ip -n "$l" link set "wsbl$pb" up
	ip -n "$l" link set "wsbm$pb" up
	ip -n "$b" link set "wsbb$pb" up
	ip -n "$c" route add 198.18.1.0/24 via 198.18.0.2
	ip -n "$b" route add 198.18.0.0/24 via 198.18.1.1
	ip netns exec "$l" sysctl -qw net.ipv4.ip_forward=1
	# New namespaces reuse TIME_WAIT ports for loopback only
	# (tcp_tw_reuse=2): over veth, the handshake scenario's tens of
	# thousands of connections would use up the ports of the generator
	# and of the balancer's backend side for a minute, and the next
	# scenario's connects fail. Same setting for every target.
	for n in "$c" "$l"; do
		ip netns exec "$n" sysctl -qw net.ipv4.tcp_tw_reuse=1
	done
	cli_x=(ip netns exec "$c") lb_x=(ip netns exec "$l") be_x=(ip netns exec "$b")
	lb_host=198.18.0.2 be_host=198.18.1.2
	say "topology: client 198.18.0.1 ($c) -> balancer 198.18.0.2 / 198.18.1.1 ($l) -> backend 198.18.1.2 ($b)"
}
[[ $TOPOLOGY != netns ]] || netns_up
backend=$be_host:$backend_port
# The address the generator dials for target $1.
target_addr() {
	if [[ $1 == direct ]]; then echo "$backend"; else echo "$lb_host:${port[$1]}"; fi
}

port_open() { # whether the generator's side can connect to host $1 port $2
	"${cli_x[@]}" bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}
wait_port() { # wait until port_open
	local i
	for i in $(seq 100); do
		port_open "$1" "$2" && return 0
		sleep 0.05
	done
	return 1
}

# The WSS targets' certificate: self-signed, for 127.0.0.1 and localhost;
# HAProxy wants the chain and the key in one file.
tls_cert() {
	[[ -s $run/tls.pem ]] && return 0
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
		-keyout "$run/tls.key" -out "$run/tls.crt" 2>/dev/null || die "openssl could not make the benchmark certificate"
	cat "$run/tls.crt" "$run/tls.key" >"$run/tls.pem"
}
is_tls() { [[ $1 == *-tls ]]; }
# runs_scenario TARGET SCENARIO: the TLS targets and the floors run a subset.
runs_scenario() {
	local only=
	if is_tls "$1"; then
		only=$WSS_SCENARIOS
	elif [[ $1 == gofloor || $1 == evfloor ]]; then
		only=$GOFLOOR_SCENARIOS
	elif [[ $1 == smfloor ]]; then
		only=$SMFLOOR_SCENARIOS
	fi
	[[ -z $only || " $only " == *" $2 "* ]]
}

# Fill a template's @VARS@; a -tls target's template turns TLS on
# (@HAPROXY_SSL@, @NGINX_SSL@, @NGINX_SSL_CONF@), others leave it off.
render() {
	local hs="" ns="" nc=""
	if [[ ${3:-} == tls ]]; then
		hs=" ssl crt $run/tls.pem alpn http/1.1"
		ns=" ssl"
		nc="ssl_certificate $run/tls.crt; ssl_certificate_key $run/tls.key; ssl_protocols TLSv1.2 TLSv1.3;"
	fi
	sed -e "s|@HAPROXY_SSL@|$hs|g" -e "s|@NGINX_SSL@|$ns|g" -e "s|@NGINX_SSL_CONF@|$nc|g" -e "s|@NPROC@|$nproc|g" -e "s|@NOFILE@|$nofile|g" -e "s|@MAXCONN@|$((nofile / 2 - 50))|g" \
		-e "s|@RUNDIR@|$run|g" -e "s|@BACKEND@|$backend|g" -e "s|@LISTEN@|$lb_host:$2|g" "$1"
}

target_pid=
target_pids= # the balancer's processes, for RSS
start_target() {
	local t=$1 p=${port[$1]}
	target_pid= target_pids=
	! is_tls "$t" || tls_cert
	case $t in
	direct) return 0 ;;
	esac
	# Something else on the port (a leftover of an earlier run) would be
	# measured in the target's place.
	! port_open "$lb_host" "$p" || die "port $p is already in use: $t cannot be started there (PORT_BASE moves every port)"
	case $t in
	sockmap | userspace)
		"${lb_x[@]}" bin/wsplice --listen "$lb_host:$p" --backend "$backend" --dataplane "$t" \
			--admin "127.0.0.1:$((p + 90))" --log-level warn --drain-timeout 1s --idle-timeout 1h >"$run/$t.log" 2>&1 &
		target_pid=$!
		target_pids=$target_pid
		;;
	wsplice-tls)
		# TLS pairs are relayed by Go whatever the data path (the
		# README's TLS section): --dataplane only names the plain one.
		"${lb_x[@]}" bin/wsplice --listen-tls "$lb_host:$p" --tls-cert "$run/tls.crt" --tls-key "$run/tls.key" \
			--backend "$backend" --admin "127.0.0.1:$((p + 90))" --log-level warn --drain-timeout 1s --idle-timeout 1h >"$run/$t.log" 2>&1 &
		target_pid=$!
		target_pids=$target_pid
		;;
	gofloor | evfloor)
		"${lb_x[@]}" bin/$t "$lb_host:$p" "$backend" >"$run/$t.log" 2>&1 &
		target_pid=$!
		target_pids=$target_pid
		;;
	smfloor)
		"${lb_x[@]}" bin/evfloor -sockmap "$lb_host:$p" "$backend" >"$run/$t.log" 2>&1 &
		target_pid=$!
		target_pids=$target_pid
		;;
	haproxy | haproxy-tls)
		render bench/conf/haproxy.cfg.tmpl "$p" "$(is_tls "$t" && echo tls)" >"$run/$t.cfg"
		"${lb_x[@]}" haproxy -db -f "$run/$t.cfg" >"$run/$t.log" 2>&1 &
		target_pid=$!
		target_pids=$target_pid
		;;
	nginx | nginx-tls)
		mkdir -p "$run/body" "$run/proxy" "$run/fastcgi" "$run/uwsgi" "$run/scgi"
		render bench/conf/nginx.conf.tmpl "$p" "$(is_tls "$t" && echo tls)" >"$run/$t.conf"
		"${lb_x[@]}" nginx -e "$run/nginx-error.log" -p "$run" -c "$run/$t.conf" >"$run/$t.log" 2>&1 &
		target_pid=$!
		;;
	esac
	pids+=("$target_pid")
	wait_port "$lb_host" "$p" || { cat "$run/$t.log" "$run"/*.log >&2 || true; die "$t did not start listening on $p"; }
	kill -0 "$target_pid" 2>/dev/null || { cat "$run/$t.log" >&2 || true; die "$t exited after starting"; }
	if [[ $t == nginx* ]]; then # master and its workers, once all are up
		local i workers=
		for i in $(seq 100); do
			workers=$(pgrep -P "$target_pid" | tr '\n' ' ')
			[[ $(wc -w <<<"$workers") -lt $nproc ]] || break
			sleep 0.05
		done
		[[ $(wc -w <<<"$workers") -ge $nproc ]] || die "nginx started $(wc -w <<<"$workers") workers, not $nproc"
		target_pids=$(echo "$target_pid" $workers | tr ' ' ,)
	fi
}
stop_target() {
	[[ -n $target_pid ]] || return 0
	if [[ ${1:-} == wsplice-tls ]]; then # which path carried the TLS records
		"${lb_x[@]}" curl -fsS "http://127.0.0.1:$((port[$1] + 90))/debug/stats" >"$OUT/wsplice-tls-stats.$2.json" 2>/dev/null || true
	fi
	kill "$target_pid" 2>/dev/null || true
	wait "$target_pid" 2>/dev/null || true
	target_pid=
}

start_backend() {
	! port_open "$be_host" "$backend_port" || die "port $backend_port is already in use: the echo backend cannot be started there (PORT_BASE moves every port)"
	"${be_x[@]}" bin/wsplice-echo --listen "$backend" --name echo1 --log-level warn >"$run/echo.log" 2>&1 &
	backend_pid=$!
	pids+=("$backend_pid")
	wait_port "$be_host" "$backend_port" || die "the echo backend did not start"
	kill -0 "$backend_pid" 2>/dev/null || die "the echo backend exited after starting: $(tail -1 "$run/echo.log")"
}

load() { # scenario target rep: one run of the generator, JSON into raw/
	local s=$1 t=$2 r=$3 args=() f="$OUT/raw/$2.$1.$3.json"
	! is_tls "$t" || args+=(--tls)
	case $s in
	open-loop) args+=(--conns "$OPEN_CONNS" --rate "$RATE") ;;
	closed-loop) args+=(--conns "$CLOSED_CONNS") ;;
	bulk) args+=(--conns "$BULK_CONNS") ;;
	handshake) args+=(--conns "$HS_WORKERS") ;;
	idle) args+=(--conns "$IDLE_CONNS" --pids "${target_pids:-$backend_pid}") ;;
	esac
	say "rep $r/$REPS: $t $s"
	local cpu_pids=$backend_pid
	[[ -z $target_pids ]] || cpu_pids+=,$target_pids
	# In the background, so that a signal to this script is handled at
	# once (bash runs traps only between foreground commands); the result
	# goes into raw/ only if the run succeeded: the report reads every
	# file there. A failed run's result is kept in raw/failed/.
	"${cli_x[@]}" bin/wsplice-load --mode "$s" --addr "$(target_addr "$t")" --duration "$DURATION" --warmup "$WARMUP" \
		--label "$t" --cpu-pids "$cpu_pids" "${args[@]}" >"$run/load.json" 2>"$run/load.err" &
	local lp=$! rc=0
	pids+=("$lp")
	wait "$lp" || rc=$?
	if [[ $rc == 0 ]]; then
		mv "$run/load.json" "$f"
	else
		cat "$run/load.err" >&2
		echo "$t $s rep $r: $(tail -1 "$run/load.err")" >>"$OUT/failures.txt"
		mkdir -p "$OUT/raw/failed"
		mv "$run/load.json" "$OUT/raw/failed/${f##*/}"
		if grep -q 'integrity error' "$run/load.err"; then
			integrity_failed=1
		fi
	fi
}

machine_info() {
	local model steal
	model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	cat <<JSON
{
  "date": "$stamp",
  "cpu_model": "$model",
  "vcpus": $nproc,
  "kernel": "$(uname -r)",
  "os": "$(. /etc/os-release && echo "$PRETTY_NAME")",
  "go": "$(go version | awk '{ print $3 }')",
  "haproxy": "$(haproxy -v | awk 'NR == 1 { print $3 }')",
  "nginx": "$(nginx -v 2>&1 | sed 's|.*nginx/||')",
  "wsplice": "$(git describe --always --dirty 2>/dev/null || echo unknown)",
  "fd_limit": $nofile,
  "mem_total_kb": $(awk '/^MemTotal/ { print $2 }' /proc/meminfo),
  "loadavg_start": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "reps": $REPS, "duration": "$DURATION", "warmup": "$WARMUP", "rate": $RATE,
  "open_conns": $OPEN_CONNS, "closed_conns": $CLOSED_CONNS, "bulk_conns": $BULK_CONNS,
  "handshake_workers": $HS_WORKERS, "idle_conns": $IDLE_CONNS, "smoke": $smoke,
  "openssl": "$(openssl version | awk '{ print $2 }')",
  "wss_scenarios": "$WSS_SCENARIOS",
  "gofloor_scenarios": "$GOFLOOR_SCENARIOS",
  "smfloor_scenarios": "$SMFLOOR_SCENARIOS",
  "topology": "$TOPOLOGY",
  "tls_path": "$(grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null && echo ktls || echo userspace)"
}
JSON
}

machine_info >"$OUT/machine.json"
integrity_failed=0
start_backend
for r in $(seq "$REPS"); do
	for t in $TARGETS; do
		start_target "$t"
		for s in $SCENARIOS; do
			runs_scenario "$t" "$s" || continue
			load "$s" "$t" "$r"
		done
		stop_target "$t" "$r"
	done
done

# Where the time goes on each wsplice data path: a system-wide profile
# (softirq and kworkers included) of a closed-loop run.
if [[ $PERF == 1 ]] && command -v perf >/dev/null; then
	for t in sockmap userspace; do
		[[ " $TARGETS " == *" $t "* ]] || continue
		say "perf profile: $t closed-loop"
		start_target "$t"
		"${cli_x[@]}" bin/wsplice-load --mode closed-loop --addr "$(target_addr "$t")" --conns "$CLOSED_CONNS" \
			--duration 8s --warmup 1s --baseline 0 >"$run/perf-load.json" 2>>"$run/load.err" &
		lp=$!
		pids+=("$lp")
		sleep 1.5
		if perf record -e cpu-clock -F 999 -a -g -o "$run/perf.$t.data" -- sleep 5 >/dev/null 2>"$run/perf.err"; then
			{
				echo "# perf record -e cpu-clock -F 999 -a -g, 5 s of a $CLOSED_CONNS-connection closed-loop run through $t"
				echo "## by command (share of all samples)"
				perf report -i "$run/perf.$t.data" --stdio --no-children --sort comm -g none --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
				echo "## top symbols"
				perf report -i "$run/perf.$t.data" --stdio --no-children --sort comm,dso,sym -g none --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
			} >"$OUT/perf-$t.txt"
		else
			say "perf record failed: $(tail -1 "$run/perf.err")"
		fi
		wait "$lp" || true
		stop_target
	done
fi
cp "$run"/*.cfg "$run"/*.conf "$OUT/" 2>/dev/null || true

say "writing the report"
(cd bench && go run ./report -in "$OUT") >&2
say "report: $OUT/report.md"
if [[ $LATEST == 1 && ! -s $OUT/failures.txt && $integrity_failed == 0 ]]; then
	cp "$OUT/report.md" bench/results/latest.md
	for f in "$OUT"/*.png; do
		[[ -e $f ]] || continue # a run of scenarios that draw no chart
		cp "$f" "bench/results/latest-$(basename "$f")"
	done
	# Charts are referenced from latest.md by their latest-* names.
	sed -i 's|(\([a-z-]*\.png\))|(latest-\1)|g' bench/results/latest.md
	say "copied to bench/results/latest.md"
elif [[ $LATEST == 1 ]]; then
	say "bench/results/latest.md left as it was: this run had failures"
fi
if [[ -s $OUT/failures.txt ]]; then
	say "some runs failed:"
	cat "$OUT/failures.txt" >&2
fi
[[ $integrity_failed == 0 ]] || die "integrity errors: an echo differed from what was sent"
[[ ! -s $OUT/failures.txt ]] || die "some runs failed (listed above and in $OUT/failures.txt)"
