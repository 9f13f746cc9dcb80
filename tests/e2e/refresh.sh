#!/usr/bin/env bash
# refresh.sh - the refresh protocol end to end against the real loopback
# portal: rotation, 429/500 cooldowns, lost answers and recover, a hanging
# server, an unreachable endpoint, and the incident behind this project (an
# outside script spends a profile's RT and throws the answer away).
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=1500
DB="$WORK/ledger.db"
D="--db $DB"
tl $D init
tl $D provider set nous --token-url "$URL/api/oauth/token"; expect 0 "point nous at the loopback portal"
for p in alice bob; do tl $D profile add $p; done

# --- rotation
seed_rt "$WORK/rt-a"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt-a"; expect 0 "store alice's grant"
tl $D token nous --profile alice; expect 0 "token refreshes a credential without an access token"
check '[ "$(counter refreshes)" = 1 ]' "exactly one refresh reached the portal"
tl $D token nous --profile alice; expect 0 "second token"
check '[ "$(counter refreshes)" = 1 ]' "a fresh token needs no refresh"
# libcurl, libmicrohttpd and libcrypto load only when they are used (src/lib/lazy.c): not for a fresh token
check '! LD_DEBUG=libs "$TL_BIN" $D token nous --profile alice 2>&1 >/dev/null | grep -q "libcurl\|libmicrohttpd\|libgnutls\|libcrypto"' \
  "a fresh token loads none of libcurl, libmicrohttpd, libcrypto"
check 'LD_DEBUG=libs "$TL_BIN" $D refresh nous --profile alice --force 2>&1 >/dev/null | grep -q "calling init:.*libcurl"' \
  "a refresh loads libcurl"
check '[ "$(counter refreshes)" = 2 ]' "that refresh reached the portal"
tl $D refresh nous --profile alice; expect 0 "refresh when not due"; contains "already fresh" "says nothing was due"
tl $D refresh nous --profile alice --force; expect 0 "forced refresh"; contains "refreshed" "says it refreshed"
check '[ "$(counter refreshes)" = 3 ]' "forced refresh reached the portal"
check '[ "$(q "SELECT max(generation) FROM refresh_token")" = 3 ]' "lineage has generation 3"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome=\"rotated\"")" = "$(counter refreshes)" ]' "ledger rotations equal the portal's"
tlin "$WORK/rt-a" $D check-rt; expect 4 "the seed RT is spent now"
tl $D refresh nous --profile alice --json; expect 0 "refresh --json"; lacks "access_token" "refresh prints no token"

# --- 429 with Retry-After, then 500
admin fault "kind=429&count=1&retry_after=40" >/dev/null
tl $D refresh nous --profile alice --force; expect 7 "429 is transient"; contains "429" "names the status"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE state=\"current\"")" = 1 ]' "RT still current after 429"
tl $D status --json
check 'jq -e ".[0].last_status == \"exhausted\"" "$OUT" >/dev/null' "entry shows the 429"
check '[ "$(q "SELECT refresh_not_before > strftime(\"%s\",\"now\")*1000 + 30000 FROM credential WHERE id=1")" = 1 ]' "refresh backs off for Retry-After"
tl $D token nous --profile alice; expect 0 "the access token is still served during the backoff"
r=$(counter requests)
tl $D refresh nous --profile alice --force; expect 7 "no presentation while backing off"
check '[ "$(counter requests)" = "$r" ]' "the backoff kept the request off the wire"
sqlite3 "$DB" "UPDATE credential SET refresh_not_before=NULL"
admin fault "kind=500&count=1" >/dev/null
tl $D refresh nous --profile alice --force; expect 7 "500 is transient"
tl $D refresh nous --profile alice --force; expect 7 "500 still cooling"
sqlite3 "$DB" "UPDATE credential SET refresh_not_before=NULL"
tl $D refresh nous --profile alice --force; expect 0 "after the cooldown the same RT rotates"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse after transient failures"

# --- a lost answer: unknown, never replayed, recover
admin fault "kind=lose&count=1" >/dev/null
tl $D refresh nous --profile alice --force; expect 6 "lost answer is an unknown outcome"
contains "recover" "points at recover"
r=$(counter requests)
tl $D refresh nous --profile alice --force; expect 6 "unknown is not replayed"
tl $D token nous --profile alice; expect 0 "a still-valid access token is served"
check '[ "$(counter requests)" = "$r" ]' "nothing was presented after the loss"
tl $D doctor; expect 1 "doctor reports the unknown outcome"
tl $D recover --credential 1 --mark-dead; expect 0 "recover --mark-dead"
tl $D refresh nous --profile alice --force; expect 5 "a dead credential needs a login"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse after a lost answer"

# --- dropped before processing, operator retries once
seed_rt "$WORK/rt-b"
tl $D credential add nous --profile bob --refresh-token-file "$WORK/rt-b"
admin fault "kind=drop_before&count=1" >/dev/null
tl $D token nous --profile bob; expect 6 "dropped connection is unknown"
tl $D recover --credential 2 --assume-not-sent; expect 0 "assume-not-sent retries once and rotates"
check '[ "$(counter reuse_detections)" = 0 ]' "the retry was safe because the server never saw the RT"

# --- a hanging server: timeout -> unknown. The request reached the server, which may have rotated the RT:
# every hint leads with --mark-dead and says why --assume-not-sent would be reuse (it made the portal revoke
# the login once), never offers --assume-not-sent first.
# first_recover : the first 'recover' decision the last command's output names.
first_recover() { grep -o -- "recover --credential [0-9]* --[a-z-]*" "$OUT" "$ERR" | head -n 1 | sed 's/.* --/--/'; }
admin fault "kind=hang&count=1" >/dev/null
tl $D refresh nous --profile bob --force; expect 6 "hang times out as unknown"
check '[ "$(q "SELECT outcome FROM refresh_attempt ORDER BY id DESC LIMIT 1")" = unknown ]' "attempt recorded unknown"
check '[ "$(first_recover)" = --mark-dead ]' "the hint leads with --mark-dead ($(first_recover))"
contains "do not use --assume-not-sent" "says not to assume it was not sent"
contains "may have reached the server" "and why"
tl $D refresh nous --profile bob --force; expect 6 "a later refresh: still unknown"
check '[ "$(first_recover)" = --mark-dead ]' "its hint leads with --mark-dead too"
tl $D status
check '[ "$(first_recover)" = --mark-dead ]' "status leads with --mark-dead"; contains "do not use --assume-not-sent" "status says why"
tl $D doctor
check '[ "$(first_recover)" = --mark-dead ]' "doctor leads with --mark-dead"
tl $D keep-fresh --once --no-sync
check '[ "$(first_recover)" = --mark-dead ]' "keep-fresh leads with --mark-dead"
tl $D recover --credential 2 --mark-dead; expect 0 "give the hung RT up"
check '[ "$(counter reuse_detections)" = 0 ]' "following the hint made no reuse"

# --- Ctrl-C while the RT is at the server: the process says at once that it waits for the answer (up to the
# HTTP timeout) so the new token is not lost, records the outcome, then stops
tl $D profile add erin
seed_rt "$WORK/rt-e"
tl $D credential add nous --profile erin --refresh-token-file "$WORK/rt-e"
E=$(q "SELECT e.credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'erin'")
admin fault "kind=hang&count=1" >/dev/null
r=$(counter refreshes)
set +e
# as at a terminal: SIGINT's default action (a background job of a script inherits it ignored)
TOKENLEDGER_HTTP_TIMEOUT_MS=8000 env --default-signal=INT "$TL_BIN" $D refresh nous --profile erin --force \
  > "$WORK/int.out" 2> "$WORK/int.err" &
pid=$!
set -e
for _ in $(seq 200); do [ "$(counter refreshes)" -gt "$r" ] && break; sleep 0.05; done
check '[ "$(counter refreshes)" -gt "$r" ]' "the RT reached the portal, which hangs"
kill -INT $pid
said=0
for _ in $(seq 50); do grep -q "waiting up to" "$WORK/int.err" && { kill -0 $pid 2>/dev/null && said=1; break; }; sleep 0.1; done
check '[ $said = 1 ]' "on Ctrl-C it says at once (while it still waits) that it waits for the answer"
set +e; wait $pid; RC=$?; set -e
cat "$WORK/int.out" "$WORK/int.err" >> "$ALL"
expect 130 "then the interrupt ends the process"
check 'grep -q "interrupt (SIGINT) received while a refresh token is at the server: waiting up to [1-8] s for the answer so that the new token is not lost" "$WORK/int.err"' \
  "the message names the signal and the wait ($(head -c 300 "$WORK/int.err"))"
check '[ "$(q "SELECT outcome FROM refresh_attempt WHERE credential_id = $E ORDER BY id DESC LIMIT 1")" = unknown ]' \
  "the outcome was recorded before the process stopped"
tl $D refresh nous --profile erin; expect 6 "then: an unknown outcome"
check '[ "$(first_recover)" = --mark-dead ]' "whose hint leads with --mark-dead"
tl $D recover --credential "$E" --mark-dead; expect 0 "following it"
check '[ "$(counter reuse_detections)" = 0 ]' "revokes nothing at the portal"

# --- unreachable endpoint: not sent
tl $D profile add carol
seed_rt "$WORK/rt-c"
tl $D credential add nous --profile carol --refresh-token-file "$WORK/rt-c" --token-url http://127.0.0.1:9/api/oauth/token
tl $D token nous --profile carol; expect 7 "connection refused is transient"; contains "not sent" "says the RT was not sent"
lacks "mark-dead" "nothing was sent: the login is not to be given up"
check '[ "$(q "SELECT outcome FROM refresh_attempt ORDER BY id DESC LIMIT 1")" = not_sent ]' "attempt not_sent"
check '[ "$(q "SELECT status FROM credential WHERE id = (SELECT max(id) FROM credential)")" = active ]' \
  "no unknown outcome to decide: the RT stays current"
tlin "$WORK/rt-c" $D check-rt; expect 0 "the RT is still live"

# --- the incident: an outside script spends the RT and drops the answer
tl $D profile add dora
seed_rt "$WORK/rt-d"
tl $D credential add nous --profile dora --refresh-token-file "$WORK/rt-d"
tl $D token nous --profile dora; expect 0 "dora's first refresh"
sqlite3 "$DB" "SELECT secret FROM refresh_token WHERE state='current' AND credential_id=(SELECT credential_id FROM pool_entry e JOIN profile p ON p.id=e.profile_id WHERE p.name='dora')" > "$WORK/rt-d1"
curl -sf -o /dev/null -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $(cat "$WORK/rt-d1")" -d grant_type=refresh_token -d client_id=hermes-cli
check '[ "$(counter reuse_detections)" = 0 ]' "the outside refresh itself is no reuse"
tl $D refresh nous --profile dora --force; expect 5 "the portal answers reuse: needs re-auth"
contains "Refresh token reuse detected" "quotes the server"
contains "outside tokenledger" "points at an outside process"
contains "tokenledger login" "says how to log in again"
check '[ "$(q "SELECT count(*) FROM v_reuse_events WHERE event=\"reuse_detected_by_server\"")" = 1 ]' "audit shows the server-side reuse"
check '[ "$(counter reuse_detections)" = 1 ]' "the only reuse the portal saw is the outside script's fault"
tl $D token nous --profile dora; expect 5 "later calls fail fast"
tl $D history --json --limit 1; check 'jq -e ".[0].outcome == \"rejected\"" "$OUT" >/dev/null' "history shows the rejection"

# --- log in again with the device flow, as the message says
tl $D provider set nous --device-url "$URL/api/oauth/device/code"
tl $D login nous --profile dora; expect 0 "device-flow login"
contains "enter the code" "shows the user code"
check '[ "$(counter device_grants)" = 1 ]' "the portal issued one device grant"
tl $D token nous --profile dora; expect 0 "the profile works again after login"
check '[ "$(q "SELECT origin FROM refresh_token ORDER BY id DESC LIMIT 1")" = login ]' "the new lineage starts with origin login"
admin config "approve_after=0" >/dev/null
tl $D provider set nous --device-url "http://127.0.0.1:9/device"
tl $D login nous --profile dora; expect 7 "an unreachable device endpoint is transient"
tl $D login nous --profile ghost; expect 3 "login for an unknown profile"

# --- a file named like a rescue file that is not one: it blocks presenting (it might hold an answer),
# and everything that refuses names it and says the way out
A=$(q "SELECT e.credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id JOIN credential c ON c.id = e.credential_id WHERE p.name = 'dora' AND c.status = 'active'")
tl $D recover --credential "$A" --rescue; expect 3 "recover --rescue with nothing to take back"
contains "hint: nothing waits to be taken back" "does not send the user to itself"
printf 'junk\n' > "$DB-rescue-$A-77"; chmod 600 "$DB-rescue-$A-77"
r=$(counter refreshes)
tl $D refresh nous --profile dora --force; expect 6 "a junk file named as a rescue file blocks presenting"
contains "rescue-$A-77" "names the file"; contains "cannot be read as a rescue file" "says what is wrong with it"
contains "move it out of the ledger" "and the way out"
check '[ "$(counter refreshes)" = "$r" ]' "nothing was sent"
tl $D doctor; expect 1 "doctor sees it"; contains "cannot be read as one" "and says so"
tl $D credential rm "$A" --force; expect 4 "nothing gives the login up meanwhile"
rm "$DB-rescue-$A-77"
tl $D refresh nous --profile dora --force; expect 0 "moved away, the grant refreshes again"

no_secret_leak "$WORK/rt-a" "$WORK/rt-b" "$WORK/rt-c" "$WORK/rt-e" "$WORK/rt-d" "$WORK/rt-d1"
finish
