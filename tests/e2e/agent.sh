#!/usr/bin/env bash
# agent.sh - serve's local agent (issue 21) end to end, with real processes:
# tokenledger serve listening on <ledger>-agent, `tokenledger token` and
# `refresh` answered through it, in front of the real loopback portal.
# Covered: the socket (0600, ours, beside the ledger); answers through the
# agent proven by its answer counter (serve --status --json and GET /metrics),
# and TOKENLEDGER_AGENT=off not using it; 16 concurrent `refresh --force`
# sharing flights (fewer portal refreshes than requests, zero reuse); kill -9 of
# serve, at rest (a stale socket: clients fall back and answer; the next serve
# removes it) and while its agent presents (the client finishes, zero reuse); a
# SIGSTOPped serve (clients fall back after the 2 s bound); library callers
# (tl_token_get and tl_refresh) over one reused connection per store; a
# regular file, a FIFO and a symlink at the socket's path (never trusted, never
# written to, serve refuses to start its agent there); as root,
# a socket owned by another user and a server whose SO_PEERCRED uid is another
# user's (never sent a request), and another user connecting to the real agent
# (closed unread, counted, logged); a ledger path too long for a socket.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}"
start_portal --at-lifetime 3600 --latency-ms 1500
export TOKENLEDGER_HTTP_TIMEOUT_MS=10000
DB="$WORK/ledger.db"
D="--db $DB"
SOCK="$DB-agent"
PF="$DB-serve"
SERVE_PID=""
SLOG="$WORK/serve.log"
: > "$SLOG"
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
stop_serve() {
  if [ -n "$SERVE_PID" ]; then
    kill -CONT "$SERVE_PID" 2>/dev/null || true # a stopped serve (the silent-agent check) would never exit
    kill "${1:--TERM}" "$SERVE_PID" 2>/dev/null || true
    set +e; wait "$SERVE_PID" 2>/dev/null; set -e
  fi
  SERVE_PID=""
}
LISTEN_PID=""
stop_listener() { if [ -n "$LISTEN_PID" ]; then kill "$LISTEN_PID" 2>/dev/null || true; wait "$LISTEN_PID" 2>/dev/null || true; fi; LISTEN_PID=""; }
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; stop_serve; stop_listener; cleanup' EXIT
start_serve() {
  "$TL_BIN" --db "$DB" serve --interval 3600 >> "$SLOG" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 200); do
    [ "$(jq -r .pid "$PF" 2>/dev/null)" = "$SERVE_PID" ] && break
    sleep 0.05
  done
  SURL=$(jq -r .url "$PF")
}
# stat_of FIELD : one of the agent's counters from serve --status --json ("null" without an agent).
stat_of() { "$TL_BIN" $D serve --status --json 2>/dev/null | jq -r ".$1"; }
portal_refreshes() { counter refreshes; }

# A listener that logs every byte it receives (a planted "agent"): python3, as given user (or us).
cat > "$WORK/listen.py" << 'EOF'
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
uid = int(sys.argv[3]) if len(sys.argv) > 3 else -1
out = open(log, "ab", buffering=0)  # opened before setuid: the log stays ours
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o600)
if uid >= 0:
    os.setuid(uid)  # SO_PEERCRED reports the credentials of listen(): another user's
s.listen(16)
out.write(b"ready\n")
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        data = c.recv(65536)
    except Exception:
        data = b""
    out.write(b"connection, received %d bytes\n" % len(data))
    c.close()
EOF
# listen PATH [UID] : the planted listener on PATH; its log in $WORK/planted.log.
listen() {
  rm -f "$WORK/planted.log"
  python3 "$WORK/listen.py" "$1" "$WORK/planted.log" ${2:-} &
  LISTEN_PID=$!
  for _ in $(seq 100); do grep -q ready "$WORK/planted.log" 2>/dev/null && break; sleep 0.05; done
}
received() { cat "$WORK/planted.log" 2>/dev/null | grep -c "received [1-9]" || true; }

tl $D init
tl $D provider set nous --token-url "$URL/api/oauth/token"
tl $D profile add alice
seed_rt "$WORK/rt-a"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt-a"; expect 0 "alice's grant"
tl $D token nous --profile alice; expect 0 "a token without serve (the local path)"
AT1=$(cat "$OUT")

# --- 1. the socket
check '[ ! -e "$SOCK" ]' "no agent socket before serve"
start_serve
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
check '[ -S "$SOCK" ]' "serve listens on <ledger>-agent"
check '[ "$(stat -c "%a %u" "$SOCK")" = "600 $(id -u)" ]' "the socket is 0600 and ours"
check 'grep -q "agent: listening on $SOCK" "$SLOG"' "serve's log names the socket"
tl $D serve --status --json; expect 0 "serve --status"
check '[ "$(jq -r .agent "$OUT")" = "$SOCK" ]' "serve --status names the agent's socket"
check '[ "$(stat_of agent_answers)" = 0 ]' "no answer yet"

# --- 2. clients ask it
tl $D token nous --profile alice; expect 0 "token through the agent"
check '[ "$(cat "$OUT")" = "$AT1" ]' "the same fresh access token (from the agent's memory)"
check '[ "$(stat_of agent_answers)" = 1 ]' "the agent answered it (its counter grew)"
TOKENLEDGER_AGENT=off tl $D token nous --profile alice; expect 0 "TOKENLEDGER_AGENT=off: the local path"
check '[ "$(stat_of agent_answers)" = 1 ]' "TOKENLEDGER_AGENT=off never asks the agent"
tl $D refresh nous --profile alice --force; expect 0 "refresh --force through the agent"
check '[ "$(stat_of agent_refreshes)" = 1 ]' "the agent made the refresh"
check '[ "$(q "SELECT owner_command FROM refresh_attempt ORDER BY id DESC LIMIT 1")" = "agent:refresh" ]' "on record as the agent's, for the refresh command"
tl $D token nous --profile nobody; expect 3 "an error through the agent: the same exit code"
contains "profile 'nobody'" "and the same message"
curl -sf "$SURL/metrics" > "$WORK/metrics"
check 'grep -q "^tokenledger_agent_answers_total 2$" "$WORK/metrics"' "GET /metrics: Prometheus text with the answers"
check 'grep -q "^tokenledger_agent_refreshes_total 1$" "$WORK/metrics"' "and the refreshes"
check 'grep -q "^# TYPE tokenledger_agent_refused_peers_total counter$" "$WORK/metrics"' "typed counters"
check '[ "$(grep -c "^tokenledger_agent_[a-z_]* [0-9]*$" "$WORK/metrics")" = 9 ] && [ "$(grep -c "^# HELP" "$WORK/metrics")" = 9 ]' "nine metrics, each with its help"

# --- 3. 16 concurrent refresh --force: flights shared, no reuse
before=$(portal_refreshes); answers=$(stat_of agent_answers)
for i in $(seq 16); do
  ( r=0; "$TL_BIN" $D refresh nous --profile alice --force > "$WORK/c$i.out" 2>&1 || r=$?; echo $r > "$WORK/c$i.rc" ) &
done
wait_ok=0
for _ in $(seq 600); do [ "$(cat "$WORK"/c*.rc 2>/dev/null | wc -l)" = 16 ] && { wait_ok=1; break; }; sleep 0.1; done
check '[ $wait_ok = 1 ] && [ "$(cat "$WORK"/c*.rc | sort -u)" = 0 ]' "16 concurrent refresh --force all succeed"
made=$(( $(portal_refreshes) - before ))
check '[ "$(( $(stat_of agent_answers) - answers ))" = 16 ]' "all 16 answered by the agent"
check '[ "$made" -ge 1 ] && [ "$made" -lt 16 ]' "fewer portal refreshes ($made) than requests: one flight served many"
check '[ "$(stat_of agent_shared)" -ge 1 ]' "answers shared from a flight"
check '[ "$(( $(stat_of agent_refreshes) - 1 ))" = "$made" ]' "every portal refresh was the agent's (no client refreshed on its own)"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse at the portal"

# --- 3b. library callers: tl_token_get and tl_refresh mixed, one connection per store, reused
for p in p0 p1 p2 p3; do
  tl $D profile add $p; seed_rt "$WORK/rt-$p"
  tl $D credential add nous --profile $p --refresh-token-file "$WORK/rt-$p"; expect 0 "$p's grant"
done
"$TL_BIN" $D serve --status --json > "$WORK/st0" # one connection of its own
tl_hammer_rc=0; "$TL_DRIVER" hammer "$DB" 4 4 12 > "$WORK/hammer.out" 2>&1 || tl_hammer_rc=$?
"$TL_BIN" $D serve --status --json > "$WORK/st1" # and this one
check '[ $tl_hammer_rc = 0 ]' "4 library processes x 12 calls (tl_token_get and tl_refresh --force) succeed ($(tail -1 "$WORK/hammer.out"))"
check '[ "$(( $(jq .agent_answers "$WORK/st1") - $(jq .agent_answers "$WORK/st0") ))" = 48 ]' "every call answered by the agent (tl_refresh too)"
nc=$(( $(jq .agent_connections "$WORK/st1") - $(jq .agent_connections "$WORK/st0") - 1 ))
check '[ "$nc" -le 4 ]' "over one connection per store ($nc connections for 4 stores and 48 calls)"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse"

# --- 4. kill -9 of serve: a stale socket; clients fall back
stop_serve -KILL
check '[ -S "$SOCK" ]' "kill -9 leaves the socket behind"
start=$(date +%s)
tl $D token nous --profile alice; expect 0 "a stale socket: token falls back and answers"
tl $D refresh nous --profile alice --force; expect 0 "refresh --force falls back and refreshes"
check '[ $(( $(date +%s) - start )) -lt 30 ]' "without waiting long"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse"
start_serve
for _ in $(seq 100); do grep -q "agent: listening" <(tail -n 3 "$SLOG") && break; sleep 0.05; done
check 'grep -q "removed the stale socket" "$SLOG"' "the next serve removes the stale socket"
tl $D token nous --profile alice; expect 0 "and answers through its agent"
check '[ "$(stat_of agent_answers)" = 1 ]' "(its counter)"
# kill -9 of serve while its agent presents p0's refresh token: the client neither hangs nor replays
( r=0; "$TL_BIN" $D refresh nous --profile p0 --force > "$WORK/mid.out" 2>&1 || r=$?; echo $r > "$WORK/mid.rc" ) &
MID=$!
for _ in $(seq 100); do [ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'in_flight'")" -ge 1 ] && break; sleep 0.02; done
check '[ "$(q "SELECT owner_command FROM refresh_attempt WHERE outcome = '"'in_flight'"'")" = agent:refresh ]' "the agent is presenting"
stop_serve -KILL
wait $MID || true
check '[ "$(cat "$WORK/mid.rc")" = 0 ] || [ "$(cat "$WORK/mid.rc")" = 6 ]' "the client finishes: a token or the unknown outcome (exit $(cat "$WORK/mid.rc"))"
check '[ "$(counter reuse_detections)" = 0 ]' "and nothing is presented twice (zero reuse)"
tl $D token nous --profile alice; expect 0 "other profiles still answer (locally)"
start_serve
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
# a silent agent (serve stopped with SIGSTOP: the socket accepts, nobody answers): the bound, then the local path
kill -STOP "$SERVE_PID"
start=$(date +%s)
set +e; timeout 120 "$TL_BIN" $D token nous --profile alice > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "a silent agent: token falls back and answers"
check '[ $(( $(date +%s) - start )) -lt 60 ]' "after the short bound, not the 120 s answer bound"
kill -CONT "$SERVE_PID"

# --- 5. another user connecting to the real agent is refused unread (root: runuser)
if [ "$(id -u)" = 0 ] && command -v runuser > /dev/null && { id tlother > /dev/null 2>&1 || useradd -m tlother 2>/dev/null; }; then
  chmod 0711 "$WORK"; chmod 0666 "$SOCK" # let tlother reach the socket at all
  cat > "$WORK/connect.py" << 'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    s.sendall(b'{"op":"stats"}\n')
    print("answer bytes", len(s.recv(65536)))
except Exception as e:
    print("error", type(e).__name__)
EOF
  set +e; runuser -u tlother -- python3 "$WORK/connect.py" "$SOCK" > "$WORK/other.out" 2>&1; set -e
  chmod 0600 "$SOCK"; chmod 0700 "$WORK"
  check 'grep -Eq "answer bytes 0|error" "$WORK/other.out"' "another user's connection is closed without an answer ($(cat "$WORK/other.out"))"
  check '[ "$(stat_of agent_refused_peers)" = 1 ]' "counted as a refused peer"
  check 'grep -q "agent: refused a connection from uid $(id -u tlother)" "$SLOG"' "and said in serve's log"
else
  echo "skip: another user's connection (needs root and runuser)"
fi
stop_serve
check '[ ! -e "$SOCK" ]' "serve stopping removes its socket"

# --- 6. planted at the socket's path: never trusted, never followed, never written to
tl $D token nous --profile alice; expect 0 "no socket: the local path"
echo "planted" > "$SOCK"; chmod 0600 "$SOCK"
tl $D token nous --profile alice; expect 0 "a regular file at the path: falls back"
check '[ "$(cat "$SOCK")" = planted ]' "the file is left as it was"
start_serve
check 'grep -q "agent: not started: $SOCK exists and is not a socket of yours (a regular file" "$SLOG"' "serve does not start its agent over a planted file, and says so"
check '[ "$(cat "$SOCK")" = planted ]' "nor removes it"
tl $D token nous --profile alice; expect 0 "serve without agent: clients still answer"
stop_serve
rm -f "$SOCK"; mkfifo -m 0600 "$SOCK"
timeout 60 "$TL_BIN" $D token nous --profile alice > "$OUT" 2> "$ERR"; RC=$?
expect 0 "a FIFO at the path: falls back, never blocks"
rm -f "$SOCK"
listen "$WORK/elsewhere.sock"
ln -s "$WORK/elsewhere.sock" "$SOCK"
tl $D token nous --profile alice; expect 0 "a symlink to a listening socket: falls back"
check '[ "$(received)" = 0 ] && ! grep -q connection "$WORK/planted.log" 2>/dev/null' "the symlink is never followed (no connection at its target)"
stop_listener; rm -f "$SOCK" "$WORK/elsewhere.sock"
if [ "$(id -u)" = 0 ] && id tlother > /dev/null 2>&1; then
  listen "$SOCK"
  chown -h tlother "$SOCK"
  tl $D token nous --profile alice; expect 0 "a socket owned by another user: falls back"
  check '! grep -q connection "$WORK/planted.log"' "and is never connected to"
  stop_listener; rm -f "$SOCK"
  listen "$SOCK" "$(id -u tlother)" # our 0600 socket file, but the listening process is tlother's
  tl $D token nous --profile alice; expect 0 "a server whose SO_PEERCRED uid is another user's: falls back"
  for _ in $(seq 20); do grep -q connection "$WORK/planted.log" && break; sleep 0.05; done
  check '[ "$(received)" = 0 ]' "that server never receives a request ($(cat "$WORK/planted.log" 2>/dev/null | head -1))"
  stop_listener; rm -f "$SOCK"
else
  echo "skip: sockets of another user (needs root and tlother)"
fi
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse at the portal, all along"

# --- 7. a ledger path too long for a Unix socket: no agent, said so; clients do as before
LONG="$WORK/$(printf 'd%.0s' $(seq 90))"
mkdir -p "$LONG"; chmod 0700 "$LONG"
DB2="$LONG/ledger.db"
"$TL_BIN" --db "$DB2" init > /dev/null
"$TL_BIN" --db "$DB2" serve --interval 3600 > "$WORK/serve2.log" 2>&1 &
S2=$!
for _ in $(seq 200); do [ -s "$DB2-serve" ] && break; sleep 0.05; done
sleep 0.2
check 'grep -q "longer than a Unix socket path may be" "$WORK/serve2.log"' "serve says it runs without an agent"
check '[ ! -e "$DB2-agent" ]' "and makes no socket"
kill "$S2"; wait "$S2" 2>/dev/null || true

check '! grep -qF "$AT1" "$SLOG"' "no access token in serve's log"
check '! grep -Eq "runtime error|Sanitizer" "$SLOG" "$WORK/serve2.log"' "serve's log has no sanitizer report (ASan/UBSan builds)"
no_secret_leak "$WORK/rt-a"
finish
