#!/usr/bin/env bash
# demo.sh starts wsplice in front of two echo backends on this machine and
# keeps it in the foreground until Ctrl-C, then stops everything it started.
#
#   backend-1  bin/wsplice-echo on 127.0.0.1:5001
#   backend-2  bin/wsplice-echo on 127.0.0.1:5002
#   wsplice    bin/wsplice on :8080 (--dataplane auto), admin on 127.0.0.1:9090
#
# As root (sudo make demo) wsplice can use the in-kernel sockmap data path;
# as another user it falls back to the userspace one. The ports can be
# changed with WSPLICE_DEMO_PORT, WSPLICE_DEMO_BACKEND1_PORT,
# WSPLICE_DEMO_BACKEND2_PORT and WSPLICE_DEMO_ADMIN_PORT.
set -euo pipefail

PROG=demo
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

port=${WSPLICE_DEMO_PORT:-8080}
b1_port=${WSPLICE_DEMO_BACKEND1_PORT:-5001}
b2_port=${WSPLICE_DEMO_BACKEND2_PORT:-5002}
admin_port=${WSPLICE_DEMO_ADMIN_PORT:-9090}

find_go() { command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; }; }
node_ws="$repo/tests/node/node_modules/ws"

# Provision only what the demo needs, and only when something is missing.
need=()
find_go >/dev/null || need+=(go)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
if [[ -f tests/node/package-lock.json && ! -d $node_ws ]]; then
	need+=("tests/node modules")
fi
if ((${#need[@]})); then
	say "missing: ${need[*]}: running scripts/provision.sh --demo"
	bash scripts/provision.sh --demo
fi
GO=$(find_go) || die "no Go after provisioning"

for c in wsplice wsplice-echo; do
	[[ -d cmd/$c ]] || die "cmd/$c does not exist yet in this checkout: nothing to demo"
done
say "building bin/wsplice and bin/wsplice-echo"
"$GO" build -o bin/wsplice ./cmd/wsplice
"$GO" build -o bin/wsplice-echo ./cmd/wsplice-echo

port_busy() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
for p in "$port" "$b1_port" "$b2_port" "$admin_port"; do
	port_busy "$p" && die "port $p is already in use (set WSPLICE_DEMO_PORT, WSPLICE_DEMO_BACKEND1_PORT, WSPLICE_DEMO_BACKEND2_PORT or WSPLICE_DEMO_ADMIN_PORT)"
done

logs=$(mktemp -d "${TMPDIR:-/tmp}/wsplice-demo.XXXXXX")
pids=()
names=()
cleaned=0
cleanup() {
	local rc=$?
	((cleaned)) && return
	cleaned=1
	trap - INT TERM
	if ((${#pids[@]})); then
		echo
		say "stopping ${names[*]} (pids ${pids[*]})"
		# SIGTERM: the Go programs shut down cleanly on it, and unlike
		# SIGINT it is not ignored by background jobs of a script.
		kill -TERM "${pids[@]}" 2>/dev/null || true
		for _ in $(seq 50); do
			local alive=0 p
			for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
			((alive)) || break
			sleep 0.1
		done
		kill -KILL "${pids[@]}" 2>/dev/null || true
		wait "${pids[@]}" 2>/dev/null || true
	fi
	if ((rc != 0 && rc != 143)); then
		say "logs kept in $logs"
	else
		rm -rf "$logs"
	fi
	say "stopped"
}
trap cleanup EXIT
# Ctrl-C is how the demo is meant to end: not an error.
trap 'exit 0' INT
trap 'exit 143' TERM

# start NAME CMD... runs CMD in the background with its output in $logs/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$logs/$name.log" 2>&1 &
	pids+=($!)
	names+=("$name")
	say "started $name (pid $!): $*"
}

# wait_http NAME PID URL waits up to 10 s for URL to answer.
wait_http() {
	local name=$1 pid=$2 url=$3
	for _ in $(seq 100); do
		curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$logs/$name.log" >&2
			die "$name exited during start-up (log above)"
		fi
		sleep 0.1
	done
	cat "$logs/$name.log" >&2
	die "$name did not answer $url within 10 s (log above)"
}

start backend-1 bin/wsplice-echo --listen "127.0.0.1:$b1_port" --name backend-1 --log-format console
start backend-2 bin/wsplice-echo --listen "127.0.0.1:$b2_port" --name backend-2 --log-format console
wait_http backend-1 "${pids[0]}" "http://127.0.0.1:$b1_port/healthz"
wait_http backend-2 "${pids[1]}" "http://127.0.0.1:$b2_port/healthz"

start wsplice bin/wsplice --listen ":$port" \
	--backend "127.0.0.1:$b1_port" --backend "127.0.0.1:$b2_port" \
	--admin "127.0.0.1:$admin_port" --dataplane auto --log-format console
wsplice_pid=${pids[2]}
wait_http wsplice "$wsplice_pid" "http://127.0.0.1:$admin_port/debug/stats"

# Which data path did --dataplane auto pick? The admin endpoint says.
stats=$(curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/debug/stats" || true)
dataplane=$(sed -n 's/.*"dataplane"[[:space:]]*:[[:space:]]*"\([a-z]*\)".*/\1/p' <<<"$stats" | head -n1)
if [[ -z $dataplane ]]; then
	dataplane=$(grep -o -m1 -E 'sockmap|userspace' "$logs/wsplice.log" || echo unknown)
fi

echo
echo "==================================================================="
echo " wsplice is listening on ws://localhost:$port/ (data path: $dataplane)"
if [[ $dataplane != sockmap ]]; then
	if [[ $EUID -ne 0 ]]; then
		echo " (not root: run 'sudo make demo' for the in-kernel sockmap data path)"
	else
		echo " (the kernel data path is unavailable here; the wsplice log says why)"
	fi
fi
echo
echo " Plain HTTP is proxied too; the echo backend answers with its name:"
echo "   curl http://localhost:$port/"
if [[ -d $node_ws ]]; then
	oneliner="const WebSocket = require('$node_ws'); const ws = new WebSocket('ws://localhost:$port/'); ws.on('open', () => ws.send('hello')); ws.on('message', m => { console.log('echoed: ' + m); ws.close(); });"
	echo " A WebSocket round trip (Node, ws from tests/node):"
	echo "   node -e \"$oneliner\""
fi
echo
echo " Counters:  curl http://127.0.0.1:$admin_port/debug/stats"
echo " Stop:      Ctrl-C"
echo "==================================================================="
echo

for i in 1 2; do
	reply=$(curl -fsS --max-time 2 "http://localhost:$port/" 2>&1 || true)
	say "try $i: curl http://localhost:$port/ -> ${reply:-<no answer>}"
done
if [[ -d $node_ws ]] && command -v node >/dev/null; then
	reply=$(timeout 5 node -e "$oneliner" 2>&1 || true)
	say "WebSocket: ${reply:-<no answer>}"
fi
echo
say "wsplice log follows (backend logs in $logs)"
tail -n +1 -f "$logs/wsplice.log" &
pids+=($!)
names+=(log-tail)

rc=0
wait "$wsplice_pid" || rc=$?
# Reached only if wsplice stopped by itself: Ctrl-C runs the INT trap.
die "wsplice exited on its own (status $rc)"
