#!/usr/bin/env bash
# serve.sh - strict mode's server end to end, with real processes: tokenledger
# serve on loopback in front of the real loopback portal (tl-portal), Hermes'
# calls made with curl (and a bash /dev/tcp client for the peer check).
# Covered: startup, the port file and its refusals (a second serve, a port owned
# by another program, a non-loopback --listen); a fresh token answered without
# an upstream call; forged, truncated, re-targeted, foreign and removed-profile
# surrogates refused with nothing else happening; 16 concurrent POSTs on an
# expired token making exactly one refresh; a JSON answer on every failure path
# (429, 500, lost answer, dead grant, bad requests); restarts mid-run (SIGTERM
# and kill -9) without a lost rotation; the device-code login through serve;
# the incident replayed in its strict form (the surrogate taken from a file and
# presented to the real portal); the audit with the caller's profile and peer.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
DB="$WORK/ledger.db"
D="--db $DB"
PF="$DB-serve"
SERVE_PID=""
SLOG="$WORK/serve.log"
# serve writes (audit rows) while the test reads and pokes the ledger: wait for its lock.
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
: > "$SLOG"

SERVE_RC=""
stop_serve() {
  SERVE_RC=""
  if [ -n "$SERVE_PID" ]; then
    kill "${1:--TERM}" "$SERVE_PID" 2>/dev/null || true
    set +e; wait "$SERVE_PID" 2>/dev/null; SERVE_RC=$?; set -e
  fi
  SERVE_PID=""
}
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; stop_serve; cleanup' EXIT
# start_serve ARGS... : tokenledger serve in the background; SURL once its port file names it.
start_serve() {
  "$TL_BIN" --db "$DB" serve --interval 3600 "$@" >> "$SLOG" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 200); do
    [ "$(jq -r .pid "$PF" 2>/dev/null)" = "$SERVE_PID" ] && break
    sleep 0.05
  done
  SURL=$(jq -r .url "$PF")
}
# sur PROFILE [CRED] FILE : a surrogate, as phase 2 will write it into the profile's auth.json.
sur() {
  local file=${!#}
  "$TL_DRIVER" surrogate "$DB" "${@:1:$#-1}" > "$file" 2>> "$SLOG"
}
# post FILE [header|body] [TAG] : Hermes' refresh POST with the token of FILE (never on argv).
# Sets CODE; the answer is in $WORK/body$TAG, its headers in $WORK/head$TAG.
post() {
  local tag=${3:-}
  if [ "${2:-header}" = header ]; then
    printf 'x-nous-refresh-token: %s\n' "$(cat "$1")" > "$WORK/hdr$tag"
    printf 'grant_type=refresh_token&client_id=hermes-cli' > "$WORK/form$tag"
  else
    printf 'Accept: application/json\n' > "$WORK/hdr$tag"
    printf 'grant_type=refresh_token&client_id=hermes-cli&refresh_token=%s' "$(jq -rn --rawfile v "$1" '$v|rtrimstr("\n")|@uri')" > "$WORK/form$tag"
  fi
  CODE=$(curl -s -o "$WORK/body$tag" -D "$WORK/head$tag" -w '%{http_code}' -X POST "$SURL/api/oauth/token" \
    -H @"$WORK/hdr$tag" --data-binary @"$WORK/form$tag")
  cat "$WORK/body$tag" >> "$ALL"
}
is_json() { grep -qi '^content-type: application/json' "$WORK/head${1:-}" && jq -e 'type == "object"' "$WORK/body${1:-}" > /dev/null; }
err_is() { is_json && jq -e --arg e "$1" '.error == $e' "$WORK/body" > /dev/null; }
audits() { q "SELECT count(*) FROM audit_event WHERE event = 'serve_request'"; }
wait_audits() { for _ in $(seq 100); do [ "$(audits)" -ge "$1" ] && return 0; sleep 0.05; done; return 1; }
lineage() { q "SELECT id, state, generation FROM refresh_token ORDER BY id" | sha256sum; }
expire() { q "UPDATE credential SET expires_at = 1000, refresh_not_before = NULL WHERE id = $1"; }

tl $D init
tl $D provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"
for p in alice bob carol dave; do tl $D profile add $p; done
seed_rt "$WORK/rt-a"; seed_rt "$WORK/rt-b"; seed_rt "$WORK/rt-d"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt-a"; expect 0 "alice's grant"
tl $D credential add nous --profile carol --refresh-token-file "$WORK/rt-a"; expect 0 "carol shares alice's grant"
tl $D credential add nous --profile bob --refresh-token-file "$WORK/rt-b"; expect 0 "bob's grant"
tl $D credential add nous --profile dave --refresh-token-file "$WORK/rt-d"; expect 0 "dave's grant"
tl $D token nous --profile alice; expect 0 "alice has an access token"
tl $D token nous --profile bob; expect 0 "bob has an access token"
tl $D token nous --profile dave; expect 0 "dave has an access token"
A=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'alice'")
B=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'bob'")
Dv=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'dave'")
sur alice "$WORK/s-alice"; sur bob "$WORK/s-bob"; sur carol "$WORK/s-carol"; sur dave "$WORK/s-dave"
check 'grep -q "^tlsurr1\.$A\." "$WORK/s-alice"' "a surrogate names its credential"

# --- 1. not running yet; then up, with its port file
tl $D profile strict alice on; expect 0 "alice is strict"
tl $D serve --status; expect 3 "serve --status: not running"
tl $D doctor; expect 1 "doctor: a strict profile and no serve"; contains "strict_serve" "names the check"
tl $D status; contains "NOT RUNNING" "status says serve is down"
start_serve
check '[ -n "$SURL" ] && [ "${SURL#http://127.0.0.1:}" != "$SURL" ]' "serve listens on 127.0.0.1"
check '[ "$(stat -c %a "$PF")" = 600 ]' "the port file is 0600"
tl $D serve --status --json; expect 0 "serve --status: up"
check 'jq -e ".running == true and .strict == \"alice\"" "$OUT" > /dev/null' "status JSON: running, alice strict"
tl $D status; contains "serve: up at $SURL" "status shows serve up"
tl $D status --json; check 'jq -e "[.[] | select(.profile == \"alice\")][0].strict == true" "$OUT" > /dev/null' "status JSON marks alice strict"
tl $D doctor; expect 0 "doctor: serve answers for the strict profile"

# --- 2. one serve per ledger, loopback only, a port of its own
before=$(bytes "$PF")
tl $D serve; expect 12 "a second serve is refused"; contains "pid $SERVE_PID" "names the running serve"
for l in 0.0.0.0:9 192.168.1.10:8080 example.com:80 "[::]:9" 127.0.0.1:0 127.0.0.1:65536 "localhost"; do
  tl $D serve --listen "$l"; expect 2 "--listen $l is refused"
done
check '[ "$(bytes "$PF")" = "$before" ]' "refusals left the port file alone"
stop_serve
check '[ "$SERVE_RC" = 0 ]' "SIGTERM stops serve cleanly (exit 0)"
check '[ ! -e "$PF" ]' "a clean stop removes the port file"
"$TL_PORTAL" --port-file "$WORK/port2" > /dev/null 2>&1 &
OTHER=$!
for _ in $(seq 100); do [ -s "$WORK/port2" ] && break; sleep 0.05; done
tl $D serve --listen "127.0.0.1:$(cat "$WORK/port2")"; expect 8 "a port another program owns is refused"
check '[ ! -e "$PF" ]' "no port file left behind"
kill "$OTHER"; wait "$OTHER" 2>/dev/null || true
start_serve
check '[ "$(jq -r .url "$PF")" = "$SURL" ]' "a restart without --listen binds the same address"

# --- 3. a fresh token: answered at once, no upstream call
for p in bob carol dave; do tl $D profile strict $p on; expect 0 "$p is strict (serve answers strict profiles only)"; done
r0=$(counter requests)
post "$WORK/s-alice"; check '[ "$CODE" = 200 ] && is_json' "a valid surrogate gets 200 JSON"
check 'jq -e ".token_type == \"Bearer\" and .expires_in > 3000 and .scope == \"inference:invoke\" and (.inference_base_url | startswith(\"https://\"))" "$WORK/body" > /dev/null' "Nous Portal's answer shape"
tl $D token nous --profile alice
check '[ "$(jq -r .access_token "$WORK/body")" = "$(cat "$OUT")" ]' "the answer carries the ledger's access token"
jq -r .refresh_token "$WORK/body" > "$WORK/s-alice2"
check 'grep -q "^tlsurr1\.$A\." "$WORK/s-alice2"' "a surrogate of the current generation comes back"
post "$WORK/s-alice2" body; check '[ "$CODE" = 200 ]' "the new surrogate works, in the body too"
post "$WORK/s-carol"; check '[ "$CODE" = 200 ]' "carol (same grant) is answered too"
check '[ "$(counter requests)" = "$r0" ]' "no upstream call for a fresh token"
check 'grep -qi "^cache-control: no-store" "$WORK/head"' "answers are not cacheable"

# --- 4. surrogates that are not: 400 invalid_grant and nothing else
n0=$(audits); L0=$(lineage); r0=$(counter requests)
s=$(cat "$WORK/s-alice")
last=${s: -1}; [ "$last" = A ] && repl=B || repl=A
printf '%s%s\n' "${s%?}" "$repl" > "$WORK/f-forged"
printf '%s\n' "${s:0:40}" > "$WORK/f-truncated"
printf '%s\n' "$(printf '%s' "$s" | sed "s/^tlsurr1\.$A\./tlsurr1.$B./")" > "$WORK/f-othercred"
printf 'tlsurr1.%s.1.0.AAAAAAAAAAAAAAAA.%s\n' "$A" "$(head -c 43 /dev/zero | tr '\0' A)" > "$WORK/f-foreign"
q "SELECT secret FROM refresh_token WHERE credential_id = $A AND state = 'current'" > "$WORK/f-real-rt"
cp "$WORK/rt-a" "$WORK/f-spent-rt"
k=0
for f in forged truncated othercred foreign real-rt spent-rt; do
  post "$WORK/f-$f"; check '[ "$CODE" = 400 ] && err_is invalid_grant' "$f: 400 invalid_grant, JSON"
  k=$((k + 1))
done
check '[ "$(counter requests)" = "$r0" ]' "nothing forged reached the portal"
check '[ "$(lineage)" = "$L0" ]' "the lineage did not change"
check 'wait_audits $((n0 + k))' "every refusal is audited"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"serve_request\" AND json_extract(detail, \"$.outcome\") = \"refused\" AND credential_id IS NULL")" -ge $k ]' "refusals name no credential"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE json_extract(detail, \"$.why\") LIKE \"%never forwarded%\"")" = 2 ]' "a real RT presented to serve is called out, never forwarded"
# Another user of the machine (any local user can reach a loopback port): refused before a byte is
# read, with a valid surrogate too (one captured while holding serve's port, say), nothing audited,
# nothing sent upstream, and the connection slots stay free for the owner.
if [ "$(id -u)" = 0 ] && command -v setpriv > /dev/null; then
  n0=$(audits); r0=$(counter requests)
  as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
  code=$(as_nobody curl -s -o /dev/null -w '%{http_code}' -X POST "$SURL/api/oauth/token" \
    -H "x-nous-refresh-token: $(cat "$WORK/s-alice")" -d grant_type=refresh_token) || true
  check '[ "$code" = 000 ]' "another user's valid surrogate: the connection is closed unanswered (HTTP $code)"
  hogs=""
  for _ in $(seq 80); do as_nobody curl -s -m 20 -o /dev/null "$SURL/api/oauth/token" -d grant_type=x & hogs="$hogs $!"; done
  post "$WORK/s-alice"; check '[ "$CODE" = 200 ]' "80 connections of another user take no slot from the owner"
  wait $hogs 2> /dev/null || true
  sleep 0.3
  check 'wait_audits $((n0 + 1)) && [ "$(audits)" = "$((n0 + 1))" ] && [ "$(counter requests)" = "$r0" ]' "only the owner's call is on record; nothing of theirs, nothing upstream"
  check '[ "$(grep -c "refused a connection from uid 65534" "$SLOG")" = 1 ]' "serve says so, once a minute at most"
else
  echo "skipped: another user's connections (needs root and setpriv to act as uid 65534)"
fi
# A removed profile, and a profile that no longer uses the credential.
tl $D profile rm carol; expect 0 "carol removed"
post "$WORK/s-carol"; check '[ "$CODE" = 400 ] && err_is invalid_grant' "a removed profile's surrogate is refused"
post "$WORK/s-alice"; check '[ "$CODE" = 200 ]' "alice (same grant) is still answered"
q "DELETE FROM pool_entry WHERE credential_id = $Dv"
post "$WORK/s-dave"; check '[ "$CODE" = 400 ] && err_is invalid_grant' "a profile that no longer uses the credential is refused"
check '[ "$(counter requests)" = "$r0" ]' "still no upstream call"

# --- 4b. the caller is the exact socket, never a line that merely looks like it. Another user leaves
# a TIME_WAIT entry (uid 0, inode 0 in /proc/net/tcp) from 127.0.0.1:X to 127.a.b.c:P, where it
# listens itself (serve holds only 127.0.0.1:P), then connects from the same 127.0.0.1:X to serve with
# a captured surrogate. Then it floods serve with connections while the owner keeps refreshing.
PY=/usr/bin/python3
if [ "$(id -u)" = 0 ] && command -v runuser > /dev/null && [ -x "$PY" ] && { id tlother > /dev/null 2>&1 || useradd -m tlother > /dev/null 2>&1; }; then
  tn0=$(audits); tr0=$(counter requests); SPORT=${SURL##*:}
  cat > "$WORK/tw.py" <<'PYEOF'
import random, socket, sys, time
port, tries, sur = int(sys.argv[1]), int(sys.argv[2]), sys.stdin.read().strip()
def tw_listed(x):  # a TIME_WAIT line (state 06) with local 127.0.0.1:x
    want = "0100007F:%04X" % x
    with open("/proc/net/tcp") as f:
        return any(l.split()[1] == want and l.split()[3] == "06" for l in list(f)[1:])
body = "grant_type=refresh_token&client_id=hermes-cli"
req = ("POST /api/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nx-nous-refresh-token: %s\r\n"
       "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
       % (sur, len(body), body)).encode()
for i in range(tries):
    # where the kernel lists the TIME_WAIT line relative to the live one depends on the addresses'
    # hash: a different far address each try (its own listener there, on serve's port number)
    far = "127.%d.%d.%d" % (random.randrange(1, 255), random.randrange(256), random.randrange(1, 255))
    lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((far, port)); lst.listen(1)
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", 0)); x = c.getsockname()[1]
    c.connect((far, port)); a, _ = lst.accept(); lst.close()
    c.close(); a.recv(16); a.close()  # we close first: our side of 127.0.0.1:x -> 127.0.0.2:port waits in TIME_WAIT
    for _ in range(100):
        if tw_listed(x): break
        time.sleep(0.01)
    tw = tw_listed(x)
    d = socket.socket(); d.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    d.bind(("127.0.0.1", x)); d.connect(("127.0.0.1", port)); d.settimeout(5)
    got = b""
    try:
        d.sendall(req)
        while True:
            k = d.recv(65536)
            if not k: break
            got += k
    except OSError:
        pass
    d.close()
    status = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "closed"
    print("tw=%d status=%s token=%d" % (tw, status, b'"access_token"' in got))
PYEOF
  runuser -u tlother -- "$PY" -c "$(cat "$WORK/tw.py")" "$SPORT" 32 < "$WORK/s-alice" > "$WORK/tw.out" 2>&1 || true
  cat "$WORK/tw.out" >> "$ALL"
  echo "  the TIME_WAIT trick, 32 tries: $(sort "$WORK/tw.out" | uniq -c | tr -s ' \n' ' ')"
  check '[ "$(grep -c "^tw=1 " "$WORK/tw.out")" = 32 ]' "the other user left a TIME_WAIT entry on the same local port each time ($(tr '\n' ' ' < "$WORK/tw.out"))"
  check '[ "$(grep -c " status=closed token=0$" "$WORK/tw.out")" = 32 ]' "taken for nobody: every connection closed unanswered, no token ($(tr '\n' ' ' < "$WORK/tw.out"))"
  sleep 0.3
  check '[ "$(audits)" = "$tn0" ] && [ "$(counter requests)" = "$tr0" ]' "nothing of theirs audited (no peer_uid 0), nothing upstream"
  # The flood: two processes of the other user connect as fast as they can for 8 s; meanwhile the
  # owner's refreshes (bob's a real one, upstream) are answered, each well within Hermes' 15 s.
  cat > "$WORK/flood.py" <<'PYEOF'
import socket, sys, time
port, end, n = int(sys.argv[1]), time.time() + float(sys.argv[2]), 0
while time.time() < end:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); s.send(b"POST /api/oauth/token HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        pass
    s.close(); n += 1
print(n)
PYEOF
  fn0=$(audits); ff0=$(counter refreshes)
  floods=""
  for i in 1 2; do runuser -u tlother -- "$PY" -c "$(cat "$WORK/flood.py")" "$SPORT" 8 > "$WORK/flood$i.out" 2>&1 & floods="$floods $!"; done
  sleep 1
  slow=""; codes=""; times=""
  for i in $(seq 6); do
    who=s-alice; [ "$i" = 3 ] && { who=s-bob; expire "$B"; }
    t0=$(date +%s%N)
    printf 'x-nous-refresh-token: %s\n' "$(cat "$WORK/$who")" > "$WORK/hdrf"
    c=$(curl -s -m 30 -o "$WORK/bodyf" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -H @"$WORK/hdrf" -d grant_type=refresh_token) || true
    ms=$((($(date +%s%N) - t0) / 1000000))
    codes="$codes $c"; times="$times ${ms}ms"; [ "$ms" -le 5000 ] || slow="$slow ${ms}ms"
    sleep 0.5
  done
  wait $floods || true
  echo "  during the flood ($(cat "$WORK/flood1.out") + $(cat "$WORK/flood2.out") connections of another uid), the owner's answers took:$times"
  check '[ "$(cat "$WORK/flood1.out")" -gt 100 ] && [ "$(cat "$WORK/flood2.out")" -gt 100 ]' "the other user flooded serve ($(cat "$WORK/flood1.out") + $(cat "$WORK/flood2.out") connections)"
  check '[ "$codes" = " 200 200 200 200 200 200" ]' "the owner was answered during the flood (HTTP$codes)"
  check '[ -z "$slow" ]' "each answer within 5 s during the flood (slow:${slow:- none})"
  check '[ "$(counter refreshes)" = $((ff0 + 1)) ]' "one of them a real refresh at the portal"
  sleep 0.3
  check '[ "$(audits)" = $((fn0 + 6)) ]' "only the owner's six calls are on record"
else
  echo "skipped: the TIME_WAIT trick and the flood (need root, runuser, /usr/bin/python3 and useradd)"
fi
# --- 5. an expired token: 16 concurrent POSTs, exactly one refresh
admin config "latency_ms=300" > /dev/null
expire "$A"
f0=$(counter refreshes)
pids=""
for i in $(seq 16); do cp "$WORK/s-alice" "$WORK/c$i"; post "$WORK/c$i" header "c$i" & pids="$pids $!"; done
for p in $pids; do wait "$p"; done
admin config "latency_ms=0" > /dev/null
check '[ "$(counter refreshes)" = $((f0 + 1)) ]' "16 concurrent POSTs, one refresh at the portal"
ok16=0; for i in $(seq 16); do [ "$(jq -r .access_token "$WORK/bodyc$i")" = "$(jq -r .access_token "$WORK/bodyc1")" ] && ok16=$((ok16 + 1)); done
check '[ $ok16 = 16 ]' "all 16 got the same new access token"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE credential_id = $A AND owner_command = \"serve\" AND owner_profile = \"alice\"")" = 1 ]' "the refresh is on record as serve's, for alice"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse"

# --- 6. JSON on every failure path (bob's grant)
expire "$B"
admin fault "kind=429&count=1&retry_after=40" > /dev/null
post "$WORK/s-bob"; check '[ "$CODE" = 503 ] && err_is temporarily_unavailable' "upstream 429: 503 temporarily_unavailable"
check 'ra=$(grep -i "^retry-after:" "$WORK/head" | tr -dc 0-9); [ -n "$ra" ] && [ "$ra" -ge 30 ]' "with the portal's Retry-After"
r0=$(counter requests)
post "$WORK/s-bob"; check '[ "$CODE" = 503 ] && err_is temporarily_unavailable' "backing off: 503 again"
check '[ "$(counter requests)" = "$r0" ]' "no upstream call while backing off"
q "UPDATE credential SET refresh_not_before = NULL WHERE id = $B"
admin fault "kind=500&count=1" > /dev/null
post "$WORK/s-bob"; check '[ "$CODE" = 503 ] && err_is temporarily_unavailable && grep -qi "^retry-after:" "$WORK/head"' "upstream 500: 503 with Retry-After"
q "UPDATE credential SET refresh_not_before = NULL WHERE id = $B"
admin fault "kind=lose&count=1" > /dev/null
post "$WORK/s-bob"; check '[ "$CODE" = 503 ] && err_is temporarily_unavailable && grep -qi "^retry-after:" "$WORK/head"' "unknown outcome: 503 with Retry-After"
check '[ "$(q "SELECT status FROM credential WHERE id = $B")" = uncertain ]' "the credential is uncertain"
r0=$(counter requests)
post "$WORK/s-bob"; check '[ "$CODE" = 503 ]' "still 503"; check '[ "$(counter requests)" = "$r0" ]' "the unknown RT is never re-presented"
tl $D recover --credential "$B" --mark-dead; expect 0 "operator gives bob's grant up"
post "$WORK/s-bob"; check '[ "$CODE" = 400 ] && err_is invalid_grant' "a dead grant: 400 invalid_grant"
# Bad requests: JSON too.
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' "$SURL/api/oauth/token")
check '[ "$CODE" = 405 ] && is_json' "GET: 405 JSON"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/agent-key" -d x=1)
check '[ "$CODE" = 404 ] && err_is not_found' "another path: 404 JSON"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -d grant_type=password)
check '[ "$CODE" = 400 ] && err_is unsupported_grant_type' "another grant: 400 JSON"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -d grant_type=refresh_token)
check '[ "$CODE" = 400 ] && err_is invalid_request' "no token: 400 invalid_request"
printf 'x-nous-refresh-token: %s\n' "$(cat "$WORK/s-alice")" > "$WORK/hdr"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -H @"$WORK/hdr" -d grant_type=refresh_token -d refresh_token=other)
check '[ "$CODE" = 400 ] && err_is invalid_request' "header and body disagree: 400"
head -c 20000 /dev/zero | tr '\0' a > "$WORK/big"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" --data-binary @"$WORK/big")
check '[ "$CODE" = 413 ] && is_json' "a huge body: 413 JSON"
# A 100 kB header: libmicrohttpd answered its own HTML 431 before; now serve's JSON.
{ printf 'X-Big: '; head -c 102400 /dev/zero | tr '\0' a; printf '\n'; } > "$WORK/bighdr"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -H @"$WORK/bighdr" -d grant_type=refresh_token)
check '[ "$CODE" = 431 ] && err_is invalid_request' "a 100 kB header: 431 JSON (HTTP $CODE, $(head -c 120 "$WORK/body"))"

# --- 7. the peer process is on record (a client that outlives its request)
n0=$(audits)
SPORT=${SURL##*:}
s=$(cat "$WORK/s-alice")
(
  exec 3<> "/dev/tcp/127.0.0.1/$SPORT"
  body="grant_type=refresh_token&client_id=hermes-cli"
  printf 'POST /api/oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nx-nous-refresh-token: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "$s" "${#body}" "$body" >&3
  while IFS= read -r -u 3 line; do :; done
  echo "$BASHPID" > "$WORK/peerpid"
  sleep 1
)
check 'wait_audits $((n0 + 1))' "the call is audited"
check '[ "$(q "SELECT json_extract(detail, \"$.peer_pid\") FROM audit_event WHERE event = \"serve_request\" ORDER BY id DESC LIMIT 1")" = "$(cat "$WORK/peerpid")" ]' "with the calling process"
check '[ "$(q "SELECT actor_profile FROM audit_event WHERE event = \"serve_request\" ORDER BY id DESC LIMIT 1")" = alice ]' "and the caller's profile"

# --- 8. the incident, strict form: the file's "refresh token" is useless at the real portal
mkdir -p "$WORK/hermes/profiles/alice"
jq -n --rawfile rt "$WORK/s-alice" --arg url "$SURL" '{version: 1, providers: {nous: {portal_base_url: $url, refresh_token: ($rt | rtrimstr("\n"))}}}' > "$WORK/hermes/profiles/alice/auth.json"
jq -r .providers.nous.refresh_token "$WORK/hermes/profiles/alice/auth.json" > "$WORK/stolen"
u0=$(counter unknown_rt); f0=$(counter refreshes)
printf 'x-nous-refresh-token: %s\n' "$(cat "$WORK/stolen")" > "$WORK/hdr"
CODE=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "$URL/api/oauth/token" -H @"$WORK/hdr" -d grant_type=refresh_token -d client_id=hermes-cli)
check '[ "$CODE" = 400 ] && [ "$(counter unknown_rt)" = $((u0 + 1)) ]' "the real portal refuses the surrogate: unknown RT"
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "nothing was revoked"
expire "$A"
post "$WORK/stolen"; check '[ "$CODE" = 200 ]' "the grant is alive and refreshes through serve"
check '[ "$(counter refreshes)" = $((f0 + 1)) ]' "with one rotation at the portal"
tlin "$WORK/stolen" $D check-rt; expect 3 "check-rt: a surrogate is no RT of the ledger"

# --- 9. restarts mid-run: SIGTERM and kill -9, no rotation lost
admin config "at_lifetime=1" > /dev/null # every POST now needs a refresh
jq -r .refresh_token "$WORK/body" > "$WORK/s-loop"
rot0=$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'")
expire "$A"
(
  for i in $(seq 30); do
    SURL=$(jq -r .url "$PF" 2>/dev/null || echo "$SURL")
    post "$WORK/s-loop" header loop || true
    [ "$CODE" = 200 ] && jq -r .refresh_token "$WORK/bodyloop" > "$WORK/s-loop" # as Hermes writes it back
    sleep 0.05
  done
) &
LOOP=$!
sleep 0.5; stop_serve; start_serve
sleep 0.5; stop_serve -KILL
check '[ -e "$PF" ]' "kill -9 leaves the port file"
tl $D serve --status; expect 3 "a dead serve's port file is not 'up'"
start_serve; contains_log=$(grep -c "took over the port file" "$SLOG" || true)
check '[ "$contains_log" -ge 1 ]' "the next serve takes the stale port file over"
wait "$LOOP" || true
admin config "at_lifetime=3600" > /dev/null
set +e; "$TL_DRIVER" verify "$DB" "$URL" > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "every RT the portal issued is in the ledger or answers an attempt recorded unknown; no reuse"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" -ge $((rot0 + 3)) ]' "rotations happened across the restarts"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" = "$(counter refreshes)" ] || [ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"unknown\"")" -ge 1 ]' "every portal rotation is a ledger rotation (unless one is on record as unknown)"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse across restarts"
if [ "$(q "SELECT status FROM credential WHERE id = $A")" = uncertain ]; then
  tl $D recover --credential "$A" --mark-dead; expect 0 "a refresh cut by kill -9 is an unknown outcome, resolved by an operator"
fi

# --- 10. the device-code login through serve
mkdir -p "$WORK/hermes/profiles/erin"
tl $D profile add erin --home "$WORK/hermes/profiles/erin"
admin config "approve_after=1" > /dev/null
CODE=$(HOME=$WORK/nohome curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/device/code" -d client_id=hermes-cli -d scope=inference:invoke)
check '[ "$CODE" = 400 ] && err_is invalid_request' "a login whose profile cannot be told is refused"
CODE=$(HERMES_HOME="$WORK/hermes/profiles/erin" curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/device/code" -d client_id=hermes-cli -d scope=inference:invoke)
check '[ "$CODE" = 400 ] && err_is invalid_request && jq -e ".error_description | test(\"not in strict mode\")" "$WORK/body" > /dev/null' "a login for a profile that is not strict is refused (its surrogate would be)"
tl $D profile strict erin on; expect 0 "erin is strict"
g0=$(counter device_grants)
CODE=$(HERMES_HOME="$WORK/hermes/profiles/erin" curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/device/code" -d client_id=hermes-cli -d scope=inference:invoke)
check '[ "$CODE" = 200 ] && jq -e ".device_code and .user_code and .verification_uri" "$WORK/body" > /dev/null' "device code forwarded from the real portal"
printf 'grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Adevice_code&client_id=hermes-cli&device_code=%s' "$(jq -r .device_code "$WORK/body")" > "$WORK/poll"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" --data-binary @"$WORK/poll")
check '[ "$CODE" = 200 ] && jq -e "(.refresh_token | startswith(\"tlsurr1.\")) and (.access_token | length > 20)" "$WORK/body" > /dev/null' "the login answer carries a surrogate, not the RT"
check '[ "$(counter device_grants)" = $((g0 + 1)) ]' "the portal issued one grant"
check '[ "$(q "SELECT t.origin FROM refresh_token t JOIN pool_entry e ON e.credential_id = t.credential_id JOIN profile p ON p.id = e.profile_id WHERE p.name = \"erin\"")" = login ]' "the grant is in the ledger for erin (origin login)"
jq -r .refresh_token "$WORK/body" > "$WORK/s-erin"
post "$WORK/s-erin"; check '[ "$CODE" = 200 ]' "erin's surrogate refreshes through serve"
CODE=$(curl -s -o "$WORK/body" -D "$WORK/head" -w '%{http_code}' -X POST "$SURL/api/oauth/token" --data-binary @"$WORK/poll")
check '[ "$CODE" = 400 ] && err_is invalid_grant' "a used or unknown device code: 400 invalid_grant"

# --- 11. nothing secret anywhere
stop_serve
check '[ "$SERVE_RC" = 0 ]' "the last serve stops cleanly too"
cat "$SLOG" >> "$ALL"
check '[ ! -e "$PF" ]' "the port file is gone after the last stop"
check '! q "SELECT detail FROM audit_event" | grep -q "tlsurr1\."' "no surrogate in any audit row"
check '! grep -q "tlsurr1\." "$SLOG"' "no surrogate in serve's log"
q "SELECT secret FROM refresh_token WHERE secret IS NOT NULL" > "$WORK/live-rts"
check '! grep -qF -f "$WORK/live-rts" "$SLOG"' "no live RT in serve's log"
for f in s-alice s-alice2 s-bob s-carol s-dave s-erin stolen; do
  if grep -qF -- "$(cat "$WORK/$f")" "$SLOG"; then RC=-; bad "$f appeared in serve's log"; else ok; fi
done
no_secret_leak "$WORK/rt-a" "$WORK/rt-b" "$WORK/rt-d" "$WORK/f-real-rt"
finish
