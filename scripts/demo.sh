#!/usr/bin/env bash
# demo.sh starts the chat room demo on this machine and keeps it in the
# foreground until Ctrl-C, then stops everything it started:
#
#   redis      redis-server on 127.0.0.1:6380 (own config, no persistence)
#   chat-1     bin/wsplice-chat on 127.0.0.1:5001
#   chat-2     bin/wsplice-chat on 127.0.0.1:5002
#   wsplice    bin/wsplice on :8080 (--dataplane auto), admin on 127.0.0.1:9090,
#              and on :8443 with TLS when this wsplice has --listen-tls
#
# Open http://localhost:8080/ in two windows (or on two computers), set a
# username in each and chat: each page shows which backend its WebSocket is
# on, and the two backends share the messages through Redis.
#
# As root (sudo make demo) wsplice can use the in-kernel sockmap data path;
# as another user it falls back to the userspace one. The ports can be
# changed with WSPLICE_DEMO_PORT, WSPLICE_DEMO_TLS_PORT,
# WSPLICE_DEMO_BACKEND1_PORT, WSPLICE_DEMO_BACKEND2_PORT,
# WSPLICE_DEMO_REDIS_PORT and WSPLICE_DEMO_ADMIN_PORT. For wss the demo
# makes a self-signed certificate for localhost unless WSPLICE_DEMO_TLS_CERT
# and WSPLICE_DEMO_TLS_KEY name one.
set -euo pipefail

PROG=demo
say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

port=${WSPLICE_DEMO_PORT:-8080}
tls_port=${WSPLICE_DEMO_TLS_PORT:-8443}
b1_port=${WSPLICE_DEMO_BACKEND1_PORT:-5001}
b2_port=${WSPLICE_DEMO_BACKEND2_PORT:-5002}
# Not 6379: a redis-server installed from Debian runs there already.
redis_port=${WSPLICE_DEMO_REDIS_PORT:-6380}
admin_port=${WSPLICE_DEMO_ADMIN_PORT:-9090}
tls_cert=${WSPLICE_DEMO_TLS_CERT:-}
tls_key=${WSPLICE_DEMO_TLS_KEY:-}
if [[ -n $tls_cert || -n $tls_key ]]; then
	[[ -r $tls_cert && -r $tls_key ]] || die "WSPLICE_DEMO_TLS_CERT and WSPLICE_DEMO_TLS_KEY must both name readable files"
fi

find_go() { command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; }; }
node_ws="$repo/tests/node/node_modules/ws"

# Provision only what the demo needs, and only when something is missing.
need=()
find_go >/dev/null || need+=(go)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
if [[ -f tests/node/package-lock.json && ! -d $node_ws ]]; then
	need+=("tests/node modules")
fi
if ((${#need[@]})); then
	say "missing: ${need[*]}: running scripts/provision.sh --demo"
	bash scripts/provision.sh --demo
fi
GO=$(find_go) || die "no Go after provisioning"
command -v redis-server >/dev/null || die "no redis-server after provisioning"

for c in wsplice wsplice-chat; do
	[[ -d cmd/$c ]] || die "cmd/$c does not exist yet in this checkout: nothing to demo"
done
say "building bin/wsplice and bin/wsplice-chat"
"$GO" build -o bin/wsplice ./cmd/wsplice
"$GO" build -o bin/wsplice-chat ./cmd/wsplice-chat

# wss, once wsplice can terminate TLS.
tls=0
bin/wsplice --help 2>&1 | grep -q -- '-listen-tls' && tls=1

ports=("$port" "$b1_port" "$b2_port" "$redis_port" "$admin_port")
((tls)) && ports+=("$tls_port")
port_busy() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
for p in "${ports[@]}"; do
	port_busy "$p" && die "port $p is already in use (set WSPLICE_DEMO_PORT, WSPLICE_DEMO_TLS_PORT, WSPLICE_DEMO_BACKEND1_PORT, WSPLICE_DEMO_BACKEND2_PORT, WSPLICE_DEMO_REDIS_PORT or WSPLICE_DEMO_ADMIN_PORT)"
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
		# SIGTERM: the Go programs and Redis shut down cleanly on it, and
		# unlike SIGINT it is not ignored by background jobs of a script.
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

# pid_of NAME is the PID start gave NAME.
pid_of() {
	local i
	for i in "${!names[@]}"; do
		[[ ${names[$i]} == "$1" ]] && echo "${pids[$i]}" && return
	done
}

# wait_until NAME WHAT CMD... waits up to 10 s for CMD to succeed.
wait_until() {
	local name=$1 what=$2 pid
	shift 2
	pid=$(pid_of "$name")
	for _ in $(seq 100); do
		"$@" >/dev/null 2>&1 && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			cat "$logs/$name.log" >&2
			die "$name exited during start-up (log above)"
		fi
		sleep 0.1
	done
	cat "$logs/$name.log" >&2
	die "$name did not answer $what within 10 s (log above)"
}
http_ok() { curl -fsS -o /dev/null --max-time 1 "$@"; }

# Redis with a config of its own: loopback, this port, nothing on disk.
mkdir -p "$logs/redis"
cat >"$logs/redis.conf" <<EOF
bind 127.0.0.1
port $redis_port
protected-mode yes
daemonize no
save ""
appendonly no
dir $logs/redis
EOF
start redis redis-server "$logs/redis.conf"
wait_until redis "PING on 127.0.0.1:$redis_port" redis-cli -h 127.0.0.1 -p "$redis_port" ping

for i in 1 2; do
	p=$b1_port
	((i == 2)) && p=$b2_port
	start "chat-$i" bin/wsplice-chat --listen "127.0.0.1:$p" --name "chat-$i" \
		--redis "127.0.0.1:$redis_port" --log-format console
done
wait_until chat-1 "http://127.0.0.1:$b1_port/healthz" http_ok "http://127.0.0.1:$b1_port/healthz"
wait_until chat-2 "http://127.0.0.1:$b2_port/healthz" http_ok "http://127.0.0.1:$b2_port/healthz"

wsplice_args=(--listen ":$port" --backend "127.0.0.1:$b1_port" --backend "127.0.0.1:$b2_port"
	--admin "127.0.0.1:$admin_port" --dataplane auto --log-format console
	--drain-timeout 3s) # Ctrl-C waits 5 s at most; open pages would hold the 30 s default
tls_note=""
if ((tls)); then
	if [[ -z $tls_cert ]]; then
		# A self-signed certificate for this machine's loopback names,
		# valid for a month, deleted with the logs.
		tls_cert=$logs/tls-cert.pem
		tls_key=$logs/tls-key.pem
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
			-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
			-keyout "$tls_key" -out "$tls_cert" 2>"$logs/openssl.log" ||
			die "openssl could not make a certificate: $(cat "$logs/openssl.log")"
		tls_note="self-signed certificate for localhost: your browser will ask before it opens the page"
	else
		tls_note="certificate $tls_cert"
	fi
	wsplice_args+=(--listen-tls ":$tls_port" --tls-cert "$tls_cert" --tls-key "$tls_key")
fi
start wsplice bin/wsplice "${wsplice_args[@]}"
wsplice_pid=$(pid_of wsplice)
wait_until wsplice "http://127.0.0.1:$admin_port/debug/stats" http_ok "http://127.0.0.1:$admin_port/debug/stats"

# Which data path did --dataplane auto pick? The admin endpoint says.
stats=$(curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/debug/stats" || true)
dataplane=$(sed -n 's/.*"dataplane"[[:space:]]*:[[:space:]]*"\([a-z]*\)".*/\1/p' <<<"$stats" | head -n1)
if [[ -z $dataplane ]]; then
	dataplane=$(grep -o -m1 -E 'sockmap|userspace' "$logs/wsplice.log" || echo unknown)
fi
lan_ip=$(hostname -I 2>/dev/null | awk '{ print $1 }' || true)

echo
echo "==================================================================="
echo " The chat room is at  http://localhost:$port/"
((tls)) && echo "               and at  https://localhost:$tls_port/  ($tls_note)"
if [[ -n $lan_ip ]]; then
	echo " From another computer: http://$lan_ip:$port/"
	((tls)) && echo "                    and  https://$lan_ip:$tls_port/"
fi
echo
echo " wsplice data path: $dataplane"
if [[ $dataplane != sockmap ]]; then
	if [[ $EUID -ne 0 ]]; then
		echo " (not root: run 'sudo make demo' for the in-kernel sockmap data path)"
	else
		echo " (the kernel data path is unavailable here; the wsplice log says why)"
	fi
fi
echo
echo " Open it in two windows, set a username in each and chat. Each page"
echo " shows the backend its WebSocket is on (chat-1 or chat-2, round-robin)."
echo " Stop one backend and watch its page reconnect to the other:"
echo "   kill $(pid_of chat-1)    # chat-1"
echo "   kill $(pid_of chat-2)    # chat-2"
echo
echo " Counters:  curl http://127.0.0.1:$admin_port/debug/stats"
echo " Stop:      Ctrl-C"
echo "==================================================================="
echo

for i in 1 2; do
	served=$(curl -fsS --max-time 2 -o /dev/null -D - "http://localhost:$port/" 2>/dev/null |
		tr -d '\r' | sed -n 's/^[Xx]-[Bb]ackend-[Nn]ame: //p')
	say "try $i: curl http://localhost:$port/ -> ${served:+page served by }${served:-<no answer>}"
done
if ((tls)); then
	# The smoke test checks the listener, not the certificate.
	served=$(curl -kfsS --max-time 2 -o /dev/null -D - "https://localhost:$tls_port/" 2>/dev/null |
		tr -d '\r' | sed -n 's/^[Xx]-[Bb]ackend-[Nn]ame: //p')
	say "try 3: curl -k https://localhost:$tls_port/ -> ${served:+page served by }${served:-<no answer>}"
fi
if [[ -d $node_ws ]] && command -v node >/dev/null; then
	oneliner="const WebSocket = require('$node_ws'); const ws = new WebSocket('ws://localhost:$port/ws', { origin: 'http://localhost:$port' }); ws.on('message', m => { const f = JSON.parse(m); if (f.type === 'hello') { console.log('WebSocket to ' + f.backend); ws.close(); } }); ws.on('error', e => { console.log(e.message); process.exit(1); });"
	reply=$(timeout 5 node -e "$oneliner" 2>&1 || true)
	say "try 4: ws://localhost:$port/ws -> ${reply:-<no answer>}"
fi
echo
say "logs follow (wsplice and both backends; all logs in $logs)"
tail -n +1 -f "$logs/wsplice.log" "$logs/chat-1.log" "$logs/chat-2.log" &
pids+=($!)
names+=(log-tail)

rc=0
wait "$wsplice_pid" || rc=$?
# Ctrl-C reaches wsplice too (a Go program takes SIGINT even when bash
# starts it with SIGINT ignored), and it can be gone before bash runs the
# INT trap; it exits 0 only when told to stop.
((rc == 0)) && exit 0
die "wsplice exited on its own (status $rc)"
