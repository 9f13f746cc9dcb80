#!/usr/bin/env bash
# strict_switch.sh - a strict switch that stops halfway, and every write into a
# strict profile's files. Hermes holds a profile's auth.lock while `profile
# strict NAME on` runs (the switch cannot reach the file), then refreshes the
# grant itself at the real portal, as the file it still holds tells it to; then
# `refresh --force`, keep-fresh and serve's own round run: the portal must see
# no reuse (the ledger decides by what the file holds, not by the flag), status
# and doctor name the unfinished switch, and the next sync finishes it. The
# same for `strict off`, and for a login into a strict profile: no real refresh
# token in any of the profile's files after any command.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_HERMES:?}"
start_portal
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
unset HERMES_SHARED_AUTH_DIR
. "$(dirname "$0")/hermes_root.sh"
DB="$WORK/ledger.db"; D="--db $DB"; PF="$DB-serve"
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
current() { q "SELECT secret FROM refresh_token WHERE state = 'current' AND credential_id = 1"; }
rt_of() { jq -r '.providers.nous.refresh_token // .refresh_token' "$1"; }
hermes() { set +e; "$TL_HERMES" "$@" > "$WORK/h.out" 2>&1; HRC=$?; set -e; cat "$WORK/h.out" >> "$ALL"; }
SERVE_PID=""
HOLD_PID=""
stop_serve() { if [ -n "$SERVE_PID" ]; then kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi; SERVE_PID=""; }
release() { if [ -n "$HOLD_PID" ]; then kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; fi; HOLD_PID=""; }
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; release; stop_serve; cleanup' EXIT
start_serve() { # no keep-fresh rounds of its own unless asked ($1 = interval)
  if [ -n "${1:-}" ]; then set -- --interval "$1" --ahead 86400; else set -- --interval 3600; fi
  "$TL_BIN" --db "$DB" serve "$@" >> "$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 200); do [ "$(jq -r .pid "$PF" 2>/dev/null)" = "$SERVE_PID" ] && break; sleep 0.05; done
  SURL=$(jq -r .url "$PF")
}
# hold FILE: holds Hermes' lock beside FILE (flock on <stem>.lock) until release.
hold() {
  local lock="${1%.json}.lock"
  rm -f "$WORK/held"
  ( exec 9> "$lock"; flock -x 9; touch "$WORK/held"; exec sleep 60 ) &
  HOLD_PID=$!
  for _ in $(seq 100); do [ -e "$WORK/held" ] && break; sleep 0.05; done
}
# no_real_rt FILE...: no real refresh token of the ledger in any of the files.
no_real_rt() {
  local t
  for t in $(q "SELECT secret FROM refresh_token WHERE secret IS NOT NULL"); do
    for f in "$@"; do [ -e "$f" ] && grep -qF "$t" "$f" && return 1; done
  done
  return 0
}

# fresh_root N PROFILE...: root N with its own ledger (DB, D, PF set) and serve on it.
fresh_root() {
  local n=$1; shift
  R_N="$WORK/root$n"; make_root "$R_N" "$@"
  DB="$WORK/ledger$n.db"; D="--db $DB"; PF="$DB-serve"
  stop_serve
  tl $D init; tl $D import "$R_N" --all-profiles; expect 0 "root $n imported"
  start_serve
}

R="$WORK/root"
make_root "$R" default alpha
A=$(auth "$R" alpha); S="$R/shared/nous_auth.json"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import the root"
start_serve

# --- 1. `strict on` while Hermes holds alpha's auth.lock: the switch stops halfway
hold "$A"
TOKENLEDGER_LOCK_TIMEOUT_MS=300 tl $D profile strict alpha on
check '[ "$RC" != 0 ]' "the switch could not reach alpha's file (exit $RC)"
contains "sync" "the message says the next sync finishes it"
release
check '[ "$(jq -r .providers.nous.portal_base_url "$A")" = "$URL" ] && [ "${A}" ] && ! rt_of "$A" | grep -q "^tlsurr1\."' "alpha's file still holds the real token and the real portal"
tl $D status --json
check 'jq -e "[.[] | select(.profile == \"alpha\") | .strict_unfinished] | all(. == 1 or . == true)" "$OUT" > /dev/null && jq -e "[.[] | select(.profile == \"default\") | .strict_unfinished] | all(. == 0 or . == false)" "$OUT" > /dev/null' "status --json names the unfinished switch (alpha only)"
tl $D status
contains "strict switch is unfinished" "status says it under the table"
tl $D doctor
check '[ "$RC" != 0 ] && grep -q "strict" "$OUT" "$ERR"' "doctor fails on the unfinished switch and says so"
contains "tokenledger sync" "with the command that finishes it"

# Hermes rotates by itself at the real portal, as its file tells it to; then each of tokenledger's
# refreshers runs: each must adopt Hermes' token before it presents (and finishes the switch).
before=$(counter reuse_detections)
# half_done: alpha plain, then `strict on` while Hermes holds its lock, then Hermes' own rotation.
half_done() {
  tl $D profile strict alpha off
  hold "$A"; TOKENLEDGER_LOCK_TIMEOUT_MS=300 tl $D profile strict alpha on; release
  check '[ "$RC" != 0 ] && ! rt_of "$A" | grep -q "^tlsurr1\."' "$1: the switch stopped halfway again"
  hermes refresh "$R" alpha file --force-current
  check '[ "$HRC" = 0 ] && grep -q refreshed "$WORK/h.out"' "$1: Hermes refreshed the grant itself ($(cat "$WORK/h.out"))"
}
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ] && grep -q refreshed "$WORK/h.out"' "Hermes refreshed the grant itself ($(cat "$WORK/h.out"))"
tl $D refresh nous --profile default --force; expect 0 "refresh --force after Hermes' own rotation"
check '[ "$(counter reuse_detections)" = "$before" ]' "refresh: the portal saw no reuse (the ledger adopted Hermes' token first)"
half_done keep-fresh
tl $D keep-fresh --once --ahead 86400; expect 0 "keep-fresh after Hermes' own rotation"
check '[ "$(counter reuse_detections)" = "$before" ]' "keep-fresh: the portal saw no reuse"
half_done serve
rot=$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'")
stop_serve; start_serve 1
for _ in $(seq 100); do [ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'")" -gt "$rot" ] && break; sleep 0.1; done
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = '"'rotated'"'")" -gt "$rot" ]' "serve's own round refreshed"
round_line() { grep -qE "keep-fresh round [0-9]+: [1-9][0-9]* refreshed, [0-9]+ fresh, [0-9]+ file\(s\) written, 0 failure\(s\)" "$WORK/serve.log"; }
for _ in $(seq 100); do round_line && break; sleep 0.1; done # the line comes when the round ends
check 'round_line' "serve's log has a line for the round"
stop_serve; start_serve
check '[ "$(counter reuse_detections)" = "$before" ] && [ "$(counter families_revoked)" = 0 ]' "serve's round: the portal saw no reuse, no family revoked"
half_done sync
tl $D sync --all; expect 0 "the next sync"
check 'rt_of "$A" | grep -q "^tlsurr1\." && [ "$(jq -r .providers.nous.portal_base_url "$A")" = "$SURL" ]' "finishes the switch: alpha's file in strict form"
check 'no_real_rt "$A"' "no real refresh token left in alpha's file"
tl $D doctor; expect 0 "doctor is green again"

# --- 2. `strict off` while Hermes holds the lock: nothing half-done
hold "$A"
TOKENLEDGER_LOCK_TIMEOUT_MS=300 tl $D profile strict alpha off
check '[ "$RC" != 0 ]' "strict off could not reach alpha's file (exit $RC)"
release
check '[ "$(q "SELECT count(*) FROM strict_profile sp JOIN profile p ON p.id = sp.profile_id WHERE p.name = '"'alpha'"'")" = 1 ]' "alpha stays strict: the flag goes only when the files are plain"
check 'rt_of "$A" | grep -q "^tlsurr1\."' "alpha's file still holds its surrogate (which serve still honours)"
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ]' "Hermes still refreshes through serve ($(cat "$WORK/h.out"))"
tl $D profile strict alpha off; expect 0 "strict off without the lock held"
check '! rt_of "$A" | grep -q "^tlsurr1\." && [ "$(rt_of "$A")" = "$(current)" ] && [ "$(jq -r .providers.nous.portal_base_url "$A")" = "$URL" ]' "alpha's file holds the real token and portal again"
check '[ "$(counter reuse_detections)" = "$before" ]' "no reuse through all of it"

# --- 3. a login into a strict profile writes the strict form
tl $D profile strict alpha on; expect 0 "alpha strict again"
tl $D provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"
admin config "approve_after=1" > /dev/null
tl $D login nous --profile alpha; expect 0 "a new login into the strict profile"
check 'rt_of "$A" | grep -q "^tlsurr1\." && [ "$(jq -r .providers.nous.portal_base_url "$A")" = "$SURL" ]' "login wrote alpha's file in strict form"
check 'no_real_rt "$A" "$R/profiles/alpha/"*.json' "no real refresh token in any of alpha's files after login"
check 'jq -e "all(.credential_pool.nous[]?; .refresh_token | startswith(\"tlsurr1.\"))" "$A" > /dev/null' "the pool rows too"
tl $D sync --all; tl $D export --profile alpha; tl $D keep-fresh --once --ahead 86400
check 'no_real_rt "$A" "$R/profiles/alpha/"*.json' "nor after sync, export and keep-fresh"
check '[ "$(counter reuse_detections)" = "$before" ]' "and the portal saw no reuse"

# --- 4. rotations by tokenledger itself keep the strict files current (serve admits only the
# current generation's surrogate, and the one before for a short grace)
tl $D refresh nous --profile alpha --force; expect 0 "a forced refresh"
tl $D refresh nous --profile alpha --force; expect 0 "and another at once"
gen=$(q "SELECT max(generation) FROM refresh_token WHERE credential_id = (SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'alpha' ORDER BY e.priority LIMIT 1)")
check 'rt_of "$A" | grep -q "^tlsurr1\.[0-9]*\.[0-9]*\.$gen\."' "alpha's file holds the surrogate of the current generation ($gen) right after"
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ]' "so Hermes still refreshes through serve ($(cat "$WORK/h.out"))"
check '[ "$(counter reuse_detections)" = "$before" ]' "and the portal saw no reuse"

# --- 5. `strict off` while a refresh waits for another file's lock (found by the third review):
# the refresh chose its files when alpha's held only a surrogate; strict off then writes the real
# token into alpha's file. The claim sees the switch and chooses the files again, with alpha's:
# the token leaves once.
fresh_root 2 default alpha; R2=$R_N; A2=$(auth "$R2" alpha)
tl $D profile strict alpha on; expect 0 "alpha strict"
before=$(counter reuse_detections); fam=$(counter families_revoked)
hold "$R2/auth.json"
admin config "latency_ms=2000" > /dev/null
TOKENLEDGER_AGENT=off "$TL_BIN" $D refresh nous --profile default --force > "$WORK/r5.out" 2>&1 & # itself, not serve's agent
RP=$!
sleep 0.5
kill -STOP $RP # it chose its files and waits for default's lock: let strict off take that lock first
release
tl $D profile strict alpha off; expect 0 "strict off while the refresh waits"
kill -CONT $RP
sleep 1 # the refresh claims (again) and presents; the portal takes 2 s to answer
hermes refresh "$R2" alpha file --force
RRC=0; wait $RP || RRC=$?
cat "$WORK/r5.out" >> "$ALL"
admin config "latency_ms=0" > /dev/null
check '[ "$RRC" = 0 ]' "the refresh finished ($(head -c 300 "$WORK/r5.out"))"
check '[ "$(counter reuse_detections)" = "$before" ] && [ "$(counter families_revoked)" = "$fam" ]' "no token left twice: the portal saw no reuse, revoked nothing"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = '"'reuse_blocked'"'")" -ge 0 ]' "(the ledger is readable)"

# --- 6. `strict off` while a refresh that holds no file lock (every file of the grant strict) is in
# flight: refused, nothing switched (its token reaches the files only once it is recorded), never
# surrogates in a profile that is no longer strict
tl $D profile strict --all on; expect 0 "both strict: a refresh of the grant locks no file"
admin config "latency_ms=2500" > /dev/null
TOKENLEDGER_AGENT=off "$TL_BIN" $D refresh nous --profile alpha --force > "$WORK/r6.out" 2>&1 &
RP=$!
for _ in $(seq 100); do [ "$(q "SELECT count(*) FROM refresh_token WHERE state = 'presented'")" = 1 ] && break; sleep 0.05; done
tl $D profile strict alpha off
check '[ "$RC" = 8 ]' "strict off during a refresh in flight is busy (exit $RC)"
contains "in flight" "and says why"
wait $RP || true
admin config "latency_ms=0" > /dev/null
check '[ "$(q "SELECT count(*) FROM strict_profile sp JOIN profile p ON p.id = sp.profile_id WHERE p.name = '"'alpha'"' AND sp.leaving_since IS NULL")" = 1 ]' "alpha stays strict, its mark cleared"
hermes refresh "$R2" alpha file --force-current
check '[ "$HRC" = 0 ]' "Hermes still refreshes through serve ($(cat "$WORK/h.out"))"
tl $D profile strict alpha off; expect 0 "strict off once nothing is in flight"
check '! rt_of "$A2" | grep -q "^tlsurr1\."' "and alpha's file is plain"

# --- 7. two strict profiles share a grant; one goes off: the other's file and the shared store
# take a surrogate that names a profile still strict (serve would refuse one naming the leaver)
fresh_root 3 alpha beta; R3=$R_N; B3=$(auth "$R3" beta)
tl $D profile strict --all on; expect 0 "alpha and beta strict"
tl $D profile strict alpha off; expect 0 "alpha off"
bid=$(q "SELECT id FROM profile WHERE name = 'beta'")
check 'rt_of "$B3" | grep -q "^tlsurr1\.[0-9]*\.$bid\."' "beta's file holds a surrogate naming beta"
check 'jq -r .refresh_token "$R3/shared/nous_auth.json" | grep -q "^tlsurr1\.[0-9]*\.$bid\."' "so does the shared store"
hermes refresh "$R3" beta file --force-current
check '[ "$HRC" = 0 ]' "beta's Hermes still refreshes through serve ($(cat "$WORK/h.out"))"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = '"'surrogate_replayed'"'")" = 0 ]' "no false alarm of a copied file"

# --- 8. off, then on again, while a refresh that chose its files before both waits (the claim compares
# the profile's strict epoch, not just "strict now": the real token was in alpha's file in between)
fresh_root 4 default alpha; R4=$R_N; A4=$(auth "$R4" alpha)
tl $D profile strict alpha on; expect 0 "alpha strict"
before=$(counter reuse_detections); fam=$(counter families_revoked)
hold "$R4/auth.json"
admin config "latency_ms=2000" > /dev/null
TOKENLEDGER_AGENT=off "$TL_BIN" $D refresh nous --profile default --force > "$WORK/r8.out" 2>&1 &
RP=$!
sleep 0.5
kill -STOP $RP
release
tl $D profile strict alpha off; expect 0 "strict off while the refresh waits"
hold "$A4" # alpha's Hermes holds its lock: `strict on` sets the flag but cannot rewrite the file
TOKENLEDGER_LOCK_TIMEOUT_MS=300 tl $D profile strict alpha on
release
kill -CONT $RP
sleep 1
hermes refresh "$R4" alpha file --force-current
wait $RP || true
cat "$WORK/r8.out" >> "$ALL"
admin config "latency_ms=0" > /dev/null
check '[ "$(counter reuse_detections)" = "$before" ] && [ "$(counter families_revoked)" = "$fam" ]' "off then on during a refresh: no token left twice"

# --- 9. two switches off at once: the one that gives up never clears the other's mark, and no
# switch removes the flag over surrogates
tl $D sync --all > /dev/null 2>&1 || true
tl $D profile strict alpha on
hold "$R4/auth.json"
TOKENLEDGER_LOCK_TIMEOUT_MS=5000 "$TL_BIN" $D profile strict alpha off > "$WORK/off2.out" 2>&1 &
P2=$!
sleep 0.3
R1=0; R2=0
TOKENLEDGER_LOCK_TIMEOUT_MS=300 "$TL_BIN" $D profile strict alpha off > "$WORK/off1.out" 2>&1 || R1=$?
release
wait $P2 || R2=$?
cat "$WORK/off1.out" "$WORK/off2.out" >> "$ALL"
check '[ "$R1" != 0 ]' "the switch that could not have the lock failed (exit $R1)"
strict_now=$(q "SELECT count(*) FROM strict_profile sp JOIN profile p ON p.id = sp.profile_id WHERE p.name = 'alpha'")
check '{ [ "$strict_now" = 0 ] && ! rt_of "$A4" | grep -q "^tlsurr1\."; } || { [ "$strict_now" = 1 ] && [ "$R2" != 0 ]; }' "never surrogates without strict mode (strict: $strict_now, second switch exit $R2)"
hermes refresh "$R4" alpha file --force-current
check '[ "$HRC" = 0 ]' "alpha's Hermes keeps refreshing ($(cat "$WORK/h.out"))"

# --- 10. a switch off killed after its mark: status and doctor say so, and running it again finishes
tl $D profile strict alpha on
aid=$(q "SELECT id FROM profile WHERE name = 'alpha'")
q "UPDATE strict_profile SET leaving_since = 1 WHERE profile_id = $aid" # what a kill -9 after the mark leaves
tl $D doctor
check '[ "$RC" = 1 ] && grep -q "interrupted" "$OUT"' "doctor names the interrupted switch"
tl $D status --json
check 'jq -e "[.[] | select(.profile == \"alpha\") | .strict_unfinished] | all(. == true)" "$OUT" > /dev/null' "status marks it unfinished"
tl $D profile strict alpha off; expect 0 "running the switch again finishes it"
tl $D doctor; expect 0 "doctor is green again"

finish
