#!/usr/bin/env bash
# strict.sh - strict mode in Hermes' files: a whole root switched to strict in
# one command, the files holding only surrogates and serve's loopback URL, a
# Hermes-faithful writer (tl-hermes, refreshing at the file's portal_base_url
# as Hermes does) in four profiles sharing one grant while serve and a sync
# loop run, the incident replayed (the token an outside script finds in a
# strict file means nothing to the real portal), serve restarted, its port held
# by another program while it was down (what Hermes stored from there is never
# adopted), and strict switched off again (the real token and portal written
# back), and a captured surrogate's life: the current generation and the one
# before (for a grace after the rotation) only, only while the profile is strict.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}" "${TL_HERMES:?}"
start_portal --at-lifetime 125
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
unset HERMES_SHARED_AUTH_DIR
. "$(dirname "$0")/hermes_root.sh"
DB="$WORK/ledger.db"; D="--db $DB"; PF="$DB-serve"
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
current() { q "SELECT secret FROM refresh_token WHERE state IN ('current', 'presented') AND credential_id = 1"; } # presented: a refresh in flight
hermes() { set +e; "$TL_HERMES" "$@" > "$WORK/h.out" 2>&1; HRC=$?; set -e; cat "$WORK/h.out" >> "$ALL"; }
# serve's keep-fresh rotates about every second here (ahead 124 s of a 125 s
# token), so the portal's count and the ledger's are compared when they agree
# between two reads of the ledger, not at one arbitrary instant.
rotations() { q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'"; }
portal_is_ledger() {
  for _ in $(seq 100); do
    r1=$(rotations); c=$(counter refreshes); r2=$(rotations)
    [ "$r1" = "$r2" ] && [ "$c" = "$r1" ] && return 0
    sleep 0.05
  done
  return 1
}
SERVE_PID=""
stop_serve() { if [ -n "$SERVE_PID" ]; then kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi; SERVE_PID=""; }
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; stop_serve; cleanup' EXIT
start_serve() {
  "$TL_BIN" --db "$DB" serve --interval 1 --ahead 124 >> "$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 200); do [ "$(jq -r .pid "$PF" 2>/dev/null)" = "$SERVE_PID" ] && break; sleep 0.05; done
  SURL=$(jq -r .url "$PF")
}
R="$WORK/root"; P="default alpha beta gamma"
make_root "$R" $P
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import the root"

# --- 1. a whole root in one command
tl $D profile strict --all on; expect 3 "strict needs serve to have run (its address goes into the files)"
contains "serve" "says to start serve"
start_serve
check '[ -n "$SURL" ] && [ "${SURL#http://127.0.0.1:}" != "$SURL" ]' "serve is up on loopback ($SURL)"
tl $D profile strict --all on; expect 0 "every profile strict in one command"
real=$(current); printf '%s' "$real" > "$WORK/rt-real"
for p in $P; do
  f=$(auth "$R" $p)
  check 'jq -e ".providers.nous.refresh_token | startswith(\"tlsurr1.\")" "$f" >/dev/null' "$p: a surrogate in the singleton"
  check 'jq -e "all(.credential_pool.nous[]; .refresh_token | startswith(\"tlsurr1.\"))" "$f" >/dev/null' "$p: and in the device_code row"
  check '[ "$(jq -r .providers.nous.portal_base_url "$f")" = "$SURL" ]' "$p: portal_base_url names serve"
  # serve rotates about every second; its keep-fresh round brings every strict file to the new
  # generation's surrogate, so a profile and the shared store may differ for a moment.
  for _ in $(seq 50); do hermes check "$R" $p; [ "$HRC" = 0 ] && break; sleep 0.1; done
  check '[ "$HRC" = 0 ]' "$p: a file Hermes would not rewrite ($(cat "$WORK/h.out"))"
done
S="$R/shared/nous_auth.json"
check 'jq -e ".refresh_token | startswith(\"tlsurr1.\")" "$S" >/dev/null && [ "$(jq -r .portal_base_url "$S")" = "$SURL" ]' "the shared store too (Hermes merges it into every profile)"
check '! grep -rqF "$real" "$R"' "the real refresh token is in no file of the root"
tl $D sync --all --json; expect 0 "a sync of a strict root"
check 'jq -e "all(.[]; .action == \"unchanged\" or .action == \"strict\")" "$OUT" >/dev/null' "changes nothing: the surrogates are recognised, not adopted as tokens"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE secret LIKE '"'tlsurr1.%'"'")" = 0 ] && [ "${real#tlsurr1.}" = "$real" ]' "no surrogate ever entered the ledger as a refresh token"

# --- 2. Hermes refreshes at serve
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ] && grep -q refreshed "$WORK/h.out"' "Hermes refreshed through serve ($(cat "$WORK/h.out"))"
check 'portal_is_ledger' "every refresh the real portal saw is one of tokenledger's own"
check 'jq -e ".providers.nous.refresh_token | startswith(\"tlsurr1.\")" "$(auth "$R" alpha)" >/dev/null' "Hermes wrote the new surrogate serve gave it"
check '! grep -rqF "$(current)" "$R"' "still no real refresh token in any file"

# --- 3. the Hermes-faithful race, all strict, some refreshes forced as after a 401
rm -f "$WORK/stop"
syncer() { while [ ! -e "$WORK/stop" ]; do "$TL_BIN" $D sync --all > /dev/null 2>> "$WORK/sync.err" || echo "sync exit $?" >> "$WORK/sync.err"; sleep 0.1; done; }
syncer & sy=$!
"$TL_HERMES" run "$R" file "${TL_RACE_SECONDS:-10}" 20 $P > "$WORK/race.out" 2>&1; HRC=$?
touch "$WORK/stop"; wait $sy
cat "$WORK/race.out" >> "$ALL"; echo "  $(tail -1 "$WORK/race.out")"
check '[ "$HRC" = 0 ]' "Hermes never refused, never a torn file ($(tail -2 "$WORK/race.out" | tr '\n' ' '))"
check '! grep -q " 0 refreshes" "$WORK/race.out"' "Hermes refreshed (through serve)"
check '[ ! -s "$WORK/sync.err" ]' "every sync --all succeeded ($(head -c 300 "$WORK/sync.err" 2>/dev/null))"
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "zero reuse at the portal"
check 'portal_is_ledger' "every refresh the real portal saw is one of tokenledger's own ($(counter refreshes) ~ $(rotations))"
check '! grep -rqF "$(current)" "$R"' "no real refresh token in any file after the race"

# --- 4. the incident: an outside script presents what it finds in a strict profile's auth.json
jq -r .providers.nous.refresh_token "$(auth "$R" beta)" > "$WORK/found"
code=$(curl -s -o "$WORK/outside.json" -w '%{http_code}' -X POST "$URL/api/oauth/token" \
  -H "x-nous-refresh-token: $(cat "$WORK/found")" -d grant_type=refresh_token -d client_id=hermes-cli)
check '[ "$code" = 400 ] && [ "$(counter families_revoked)" = 0 ]' "the real portal refuses it, and revokes nothing (HTTP $code)"
tl $D refresh nous --profile beta --force; expect 0 "the grant is alive and refreshes afterwards"
hermes refresh "$R" beta file --force-current
check '[ "$HRC" = 0 ]' "and Hermes keeps working through serve"

# --- 5. serve restarted: the same address, the files still work
stop_serve; old=$SURL; start_serve
check '[ "$SURL" = "$old" ]' "a restart binds the address the files name"
hermes refresh "$R" gamma file --force-current
check '[ "$HRC" = 0 ]' "Hermes refreshes through the restarted serve"

# --- 5b. serve's port held by another program while serve is down (any local user can bind it):
# Hermes refreshes there and stores the tokens it is given. They are not Hermes rotating the grant:
# never adopted (the ledger holds the only real refresh token), and the strict form is put back.
real=$(current); L0=$(q "SELECT id, state, generation FROM refresh_token ORDER BY id" | sha256sum)
stop_serve; SPORT=${SURL##*:}
"$TL_PORTAL" --port "$SPORT" > "$WORK/squat.log" 2>&1 & SQ=$!
for _ in $(seq 100); do curl -sf -o /dev/null "$SURL/admin/counters" && break; sleep 0.05; done
curl -sf -o /dev/null -X POST "$SURL/admin/fault" -d kind=hostile_squat -d count=100
hermes refresh "$R" alpha file --force-current
kill "$SQ"; wait "$SQ" 2> /dev/null || true
A="$(auth "$R" alpha)"; foreign=$(jq -r .providers.nous.refresh_token "$A")
check '[ "$HRC" = 0 ] && [ "${foreign#tlsurr1.}" = "$foreign" ] && [ "$(rt_of "$S")" = "$foreign" ]' "Hermes stored the squatter's token in alpha and the shared store ($(cat "$WORK/h.out"))"
cp "$A" "$WORK/squatted.json"
tl $D import "$WORK/squatted.json" --profile alpha; expect 9 "import refuses a strict file holding a foreign token"
contains "not this ledger's surrogate" "and says why"
check '[ "$(current)" = "$real" ]' "the ledger's real refresh token is still current"
tl $D sync --all --json; expect 0 "sync"
check 'jq -e "any(.[]; .action == \"foreign_refused\")" "$OUT" > /dev/null' "reports the foreign token as refused, not adopted"
check '[ "$(current)" = "$real" ] && [ "$(q "SELECT id, state, generation FROM refresh_token ORDER BY id" | sha256sum)" = "$L0" ]' "the lineage is as it was: the real refresh token current"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = '"'strict_foreign_token'"'")" -ge 2 ]' "strict_foreign_token on record for the profile file and the shared store"
check 'jq -e ".providers.nous.refresh_token | startswith(\"tlsurr1.\")" "$A" > /dev/null && jq -e ".refresh_token | startswith(\"tlsurr1.\")" "$S" > /dev/null' "the strict form is back in alpha and the shared store"
check '! grep -rqF "$foreign" "$R"' "the squatter's token is in no file of the root"
start_serve
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ]' "Hermes refreshes through serve again"
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "and the real grant was never touched"

# --- 6. strict off: the real token and portal written back
tl $D profile strict --all off; expect 0 "strict off for the whole root"
# serve's keep-fresh rotates about every second: between its record and its write-back the files
# hold the previous token for a moment, so each file is compared once it settles (a few tries).
settled() { for _ in $(seq 50); do eval "$1" && return 0; sleep 0.1; done; return 1; }
for p in $P; do
  f=$(auth "$R" $p)
  check 'settled "[ \"\$(jq -r .providers.nous.refresh_token \"$f\")\" = \"\$(current)\" ]" && [ "$(jq -r .providers.nous.portal_base_url "$f")" = "$URL" ]' "$p: the real token and portal are back"
done
check 'settled "[ \"\$(rt_of \"$S\")\" = \"\$(current)\" ]" && [ "$(jq -r .portal_base_url "$S")" = "$URL" ]' "and in the shared store"
stop_serve
hermes refresh "$R" alpha file --force-current
check '[ "$HRC" = 0 ]' "Hermes refreshes at the real portal again"
tl $D sync --all; expect 0 "tokenledger adopts it"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse, before, during and after strict mode"

# --- 7. Hermes rotating at the grant's own loopback portal, its host spelled another way, just before
# strict goes on: a genuine rotation, adopted (never refused as foreign), so nothing spent is presented
A="$(auth "$R" alpha)"; f0=$(q "SELECT count(*) FROM audit_event WHERE event = 'strict_foreign_token'")
jq --arg u "http://localhost:${URL##*:}" '.providers.nous.portal_base_url = $u' "$A" > "$WORK/a.json"
cat "$WORK/a.json" > "$A"
hermes refresh "$R" alpha file --force-current
new=$(rt_of "$A")
check '[ "$HRC" = 0 ] && [ "$new" != "$(current)" ]' "Hermes rotated at http://localhost:PORT ($(cat "$WORK/h.out"))"
tl $D profile strict alpha on; expect 0 "strict on right after"
check '[ "$(current)" = "$new" ] && [ "$(q "SELECT count(*) FROM audit_event WHERE event = '"'strict_foreign_token'"'")" = "$f0" ]' "Hermes' rotation is adopted, not refused as foreign"
tl $D refresh nous --profile alpha --force; expect 0 "the grant refreshes from it"
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "no reuse"
# --- 8. a surrogate is good only while its profile is strict, for the credential's current generation,
# and for the one before during a grace of 120 s after the rotation (a Hermes that died between serve's
# answer and its write); older: refused as the portal refuses, and on record as a surrogate replayed.
"$TL_BIN" --db "$DB" serve --no-keep-fresh >> "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 200); do [ "$(jq -r .pid "$PF" 2>/dev/null)" = "$SERVE_PID" ] && break; sleep 0.05; done
SURL=$(jq -r .url "$PF")
# spost FILE : Hermes' refresh POST to serve with the surrogate in FILE; CODE, the answer in $WORK/sp.json.
spost() {
  printf 'x-nous-refresh-token: %s\n' "$(cat "$1")" > "$WORK/sp.hdr"
  CODE=$(curl -s -m 30 -o "$WORK/sp.json" -w '%{http_code}' -X POST "$SURL/api/oauth/token" -H @"$WORK/sp.hdr" \
    -d grant_type=refresh_token -d client_id=hermes-cli)
  cat "$WORK/sp.json" >> "$ALL"
}
replays() { q "SELECT count(*) FROM audit_event WHERE event = 'surrogate_replayed'"; }
tl $D sync --profile alpha; expect 0 "alpha's files in step"
A="$(auth "$R" alpha)"
jq -r .providers.nous.refresh_token "$A" > "$WORK/cap"
gN=$(cut -d. -f4 "$WORK/cap")
check 'grep -q "^tlsurr1\." "$WORK/cap"' "a surrogate captured from alpha's auth.json (generation $gN)"
spost "$WORK/cap"; check '[ "$CODE" = 200 ]' "generation N: accepted"
tl $D refresh nous --profile alpha --force; expect 0 "one rotation"
x0=$(replays)
spost "$WORK/cap"; check '[ "$CODE" = 200 ] && jq -e ".access_token and (.refresh_token | startswith(\"tlsurr1.\"))" "$WORK/sp.json" > /dev/null' "generation N-1 within the grace after the rotation: accepted (HTTP $CODE)"
jq -r .refresh_token "$WORK/sp.json" > "$WORK/cur"
check '[ "$(cut -d. -f4 "$WORK/cur")" = $((gN + 1)) ] && [ "$(replays)" = "$x0" ]' "answered with the current generation's surrogate; no replay on record"
tl $D refresh nous --profile alpha --force; expect 0 "a second rotation"
r0=$(counter requests); L0=$(q "SELECT id, state, generation FROM refresh_token ORDER BY id" | sha256sum)
spost "$WORK/cap"
check '[ "$CODE" = 400 ] && jq -e "keys == [\"error\", \"error_description\"] and .error == \"invalid_grant\"" "$WORK/sp.json" > /dev/null' "generation N after two rotations: refused, the portal's invalid_grant shape (HTTP $CODE, $(jq -c "{error}" "$WORK/sp.json" 2> /dev/null))"
check '[ "$(counter requests)" = "$r0" ] && [ "$(q "SELECT id, state, generation FROM refresh_token ORDER BY id" | sha256sum)" = "$L0" ]' "nothing upstream, the lineage unchanged"
for _ in $(seq 100); do [ "$(replays)" -gt "$x0" ] && break; sleep 0.05; done
check '[ "$(q "SELECT json_extract(detail, \"$.reason\") || \" \" || json_extract(detail, \"$.surrogate_generation\") || \" \" || json_extract(detail, \"$.current_generation\") || \" \" || json_extract(detail, \"$.profile\") FROM audit_event WHERE event = \"surrogate_replayed\" ORDER BY id DESC LIMIT 1")" = "old_generation $gN $((gN + 2)) alpha" ]' "on record as surrogate_replayed (old_generation, generation $gN of $((gN + 2)), profile alpha)"
check '! q "SELECT detail FROM audit_event WHERE event = \"surrogate_replayed\"" | grep -q "tlsurr1\."' "the record holds no surrogate"
tl $D sync --profile alpha; expect 0 "a sync writes the current surrogate"
jq -r .providers.nous.refresh_token "$A" > "$WORK/cur"
spost "$WORK/cur"; check '[ "$CODE" = 200 ]' "the current surrogate (from the file) is accepted"
jq -r .refresh_token "$WORK/sp.json" > "$WORK/cur"
tl $D profile strict alpha off; expect 0 "alpha strict off"
x0=$(replays)
spost "$WORK/cur"; check '[ "$CODE" = 400 ] && jq -e ".error == \"invalid_grant\"" "$WORK/sp.json" > /dev/null' "after strict off even the current generation's surrogate is refused (HTTP $CODE)"
for _ in $(seq 100); do [ "$(replays)" -gt "$x0" ] && break; sleep 0.05; done
check '[ "$(q "SELECT json_extract(detail, \"$.reason\") FROM audit_event WHERE event = \"surrogate_replayed\" ORDER BY id DESC LIMIT 1")" = profile_not_strict ]' "on record as surrogate_replayed (profile_not_strict)"
stop_serve
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "no reuse at the portal"
no_secret_leak "$WORK/rt-real"
finish
