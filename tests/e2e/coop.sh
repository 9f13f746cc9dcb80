#!/usr/bin/env bash
# coop.sh - tokenledger beside a real Hermes discipline (tl-hermes: Hermes' own
# lock order, shared-store merge and write-back) against the loopback portal:
# it must never be the cause of reuse. One section per problem of the
# cooperative-refresh issue, each failing on the code before it, then the
# Hermes-faithful race and the lock-order run.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}" "${TL_HERMES:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
export TOKENLEDGER_LOCK_TIMEOUT_MS=15000
unset HERMES_SHARED_AUTH_DIR

. "$(dirname "$0")/hermes_root.sh"
current() { q "SELECT secret FROM refresh_token WHERE state = 'current' AND credential_id = ${1:-1}"; }
hermes() { set +e; "$TL_HERMES" "$@" > "$WORK/h.out" 2>&1; HRC=$?; set -e; cat "$WORK/h.out" >> "$ALL"; }
provider_at_portal() { tl $D provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"; }

# --- 1. export never writes over a refresh token Hermes rotated: it adopts it
R="$WORK/r1"; make_root "$R" alpha; DB="$WORK/r1.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import a root"
x=$(rt_of "$(auth "$R" alpha)")
hermes refresh "$R" alpha "$URL" --force
check '[ "$HRC" = 0 ] && [ "$(rt_of "$(auth "$R" alpha)")" != "$x" ]' "Hermes refreshed by itself"
y=$(rt_of "$(auth "$R" alpha)")
tl $D export --profile alpha --json; expect 0 "export after Hermes rotated"
check 'jq -e "any(.[]; .action == \"external_rotation\")" "$OUT" >/dev/null' "export adopted Hermes' rotation"
check '[ "$(rt_of "$(auth "$R" alpha)")" = "$y" ]' "the file still holds Hermes' new token, not the ledger's older one"
check '[ "$(current)" = "$y" ]' "the ledger's current token is Hermes' new one"
tl $D refresh nous --profile alpha --force; expect 0 "tokenledger refreshes from the adopted token"
hermes refresh "$R" alpha "$URL" --force
check '[ "$HRC" = 0 ]' "and Hermes after it"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse at the portal"
printf '%s' "$x" > "$WORK/rt-x"; printf '%s' "$y" > "$WORK/rt-y"
# forensics survive compact: who presented a token comes from the audit log once the attempts are gone
tl $D compact --keep-days 0; expect 0 "compact removes settled attempts"
check '[ "$(q "SELECT count(*) FROM refresh_attempt a JOIN refresh_token t ON t.id = a.rt_id WHERE t.fingerprint = '"'"'$(printf %s "$y" | sha256sum | cut -c1-64)'"'"'")" = 0 ]' "the attempt that presented Y is gone"
tlin "$WORK/rt-y" $D check-rt --json; expect 4 "check-rt on Y"
check 'jq -e ".presented_by != null and (.presented_command // \"\" | test(\"refresh\"))" "$OUT" >/dev/null' "still says tokenledger's refresh presented it"
jq --arg rt "$y" '.providers.nous.refresh_token = $rt | .credential_pool.nous[0].refresh_token = $rt' "$(auth "$R" alpha)" > "$WORK/stale-y.json"
tl $D import "$WORK/stale-y.json" --profile alpha; expect 4 "a stale copy holding Y"
contains "last presented by" "names the presenter, not 'never presented'"

# a copy elsewhere holding a token the ledger does not know is refused, never overwritten
cp "$(auth "$R" alpha)" "$WORK/copy.json"
jq '.providers.nous.refresh_token = "rt-never-seen-by-the-ledger"' "$WORK/copy.json" > "$WORK/copy2.json"
before=$(bytes "$WORK/copy2.json")
tl $D export --profile alpha --output "$WORK/copy2.json"; expect 2 "export over an unknown token elsewhere is refused"
contains "does not know" "says why"; contains "sync" "names sync"
check '[ "$(bytes "$WORK/copy2.json")" = "$before" ]' "the copy is left exactly as it was"

# --- 2. keep-fresh adopts before it refreshes
hermes refresh "$R" alpha "$URL" --force
tl $D keep-fresh --once --ahead 86400 --json; expect 0 "keep-fresh after Hermes rotated"
check 'jq -e "any(.[]; .action == \"refreshed\")" "$OUT" >/dev/null' "keep-fresh refreshed"
check '[ "$(counter reuse_detections)" = 0 ]' "from the token Hermes left, not a spent one"
check '[ "$(rt_of "$(auth "$R" alpha)")" = "$(current)" ]' "and wrote the result back"

# --- 3. the shared store is kept current, in Hermes' format, and the files are as Hermes writes them
tl $D refresh nous --profile alpha --force; expect 0 "a refresh by tokenledger"
S="$R/shared/nous_auth.json"
check '[ "$(rt_of "$S")" = "$(current)" ]' "the shared store holds the new token"
check '[ "$(stat -c %a "$S")" = 600 ] && ! jq -e "has(\"agent_key\")" "$S" >/dev/null && jq -e "._schema == 1" "$S" >/dev/null' "0600, _schema, no agent_key"
check '[ "$(jq -S . "$S")" = "$(cat "$S")" ] || [ "$(jq --sort-keys --indent 2 . "$S")" = "$(cat "$S")" ]' "sorted keys"
check '! ls -a "$R/shared" | grep -q "^\.nous_auth_.*\.tmp$"' "no temporary file left"
hermes check "$R" alpha
check '[ "$HRC" = 0 ]' "Hermes would not rewrite the profile for format reasons ($(cat "$WORK/h.out"))"
A=$(auth "$R" alpha)
jwt_exp=$(jq -r '.providers.nous.access_token | split(".")[1] | gsub("-"; "+") | gsub("_"; "/") | . + "==" | @base64d | fromjson | .exp | todate | sub("Z$"; "+00:00")' "$A")
check '[ "$(jq -r .providers.nous.expires_at "$A")" = "$jwt_exp" ] && [ "$(jq -r .providers.nous.agent_key_expires_at "$A")" = "$jwt_exp" ]' "expires_at from the JWT exp, as Hermes' agent-key step writes it"
check 'jq -e ".providers.nous | .agent_key == .access_token and .agent_key_id == null and .agent_key_reused == false and (.scope | test(\"inference:invoke\"))" "$A" >/dev/null' "agent_key fields and scope as Hermes writes them"
check 'jq -e ".providers.nous.obtained_at | test(\"^[0-9-]{10}T[0-9:]{8}\\\\.[0-9]{6}\\\\+00:00$\")" "$A" >/dev/null' "obtained_at in Hermes' format"
check 'jq -e ".version == 1" "$A" >/dev/null' "version stamped"
hermes refresh "$R" alpha "$URL"
check '[ "$HRC" = 0 ] && grep -q "not needed" "$WORK/h.out"' "Hermes finds the token usable and does not refresh"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse"

# --- 4. re-import after Hermes rotated: the same grant rotated; the older copy is stale
cp "$A" "$WORK/older.json"
hermes refresh "$R" alpha "$URL" --force
cp "$A" "$WORK/newer.json"
creds=$(q "SELECT count(*) FROM credential")
tl $D import "$WORK/newer.json" --profile alpha --json; expect 0 "re-import a copy of the rotated file"
check 'jq -e "any(.[]; .action == \"external_rotation\")" "$OUT" >/dev/null' "recorded as an external rotation"
check '[ "$(q "SELECT count(*) FROM credential")" = "$creds" ]' "no second credential"
check '[ "$(current)" = "$(rt_of "$WORK/newer.json")" ]' "the rotated token is current"
snap() { sqlite3 "$DB" "SELECT * FROM refresh_token; SELECT * FROM credential; SELECT * FROM pool_entry; SELECT * FROM grant_place; SELECT * FROM hermes_file;" | sha256sum; }
before=$(snap); audits=$(q "SELECT count(*) FROM audit_event WHERE event = 'reuse_blocked'")
tl $D import "$WORK/older.json" --profile alpha; expect 4 "the older copy, read after the newer one, is stale"
check '[ "$(snap)" = "$before" ]' "and leaves the ledger unchanged"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = '"'"'reuse_blocked'"'"'")" = $((audits + 1)) ]' "with a reuse_blocked audit row"
tl $D sync --profile alpha; expect 0 "sync"

# --- 5. a new login reaches Hermes' files
curl -sf -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $(cat "$WORK/rt-x")" -d grant_type=refresh_token -d client_id=hermes-cli > /dev/null || true
tl $D refresh nous --profile alpha --force; expect 5 "the grant was revoked (a spent token presented outside)"
check 'jq -e ".providers.nous | has(\"refresh_token\") | not" "$A" >/dev/null && jq -e ".providers.nous.last_auth_error.relogin_required" "$A" >/dev/null' "the profile is quarantined as Hermes does"
check 'jq -e "[.credential_pool.nous[]? | select(.source == \"device_code\")] | length == 0" "$A" >/dev/null' "its device_code row removed, as Hermes does"
check '[ ! -e "$S" ]' "the shared store removed, as Hermes does"
provider_at_portal
tl $D login nous --profile alpha; expect 0 "log in again"
check '[ "$(rt_of "$A")" = "$(q "SELECT t.secret FROM refresh_token t JOIN credential c ON c.id = t.credential_id WHERE t.state = '"'"'current'"'"' AND t.origin = '"'"'login'"'"'")" ]' "the new grant is in the profile's auth.json"
check '! jq -e ".providers.nous | has(\"last_auth_error\")" "$A" >/dev/null' "the quarantine marker is gone"
check 'jq -e "[.credential_pool.nous[] | select(.source == \"device_code\")] | length == 1" "$A" >/dev/null' "one device_code row for the new grant"
check '[ "$(q "SELECT count(*) FROM pool_entry e JOIN credential c ON c.id = e.credential_id WHERE c.status = '"'"'needs_reauth'"'"'")" = 0 ]' "the dead entry was retired, not kept beside it"
check '[ -e "$S" ] && [ "$(rt_of "$S")" = "$(rt_of "$A")" ]' "the shared store follows the new grant"
hermes check "$R" alpha
check '[ "$HRC" = 0 ]' "a file Hermes would not rewrite ($(cat "$WORK/h.out"))"
hermes refresh "$R" alpha "$URL" --force
check '[ "$HRC" = 0 ]' "Hermes refreshes the new grant itself"
tl $D sync --profile alpha; expect 0 "and tokenledger adopts it"
families=$(counter families_revoked)

# --- 6. several unknown tokens of one grant, in the order Hermes obtained them
R="$WORK/r6"; make_root "$R" alpha zulu; DB="$WORK/r6.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import a root with two profiles"
hermes refresh "$R" zulu "$URL" --force     # X -> Y in zulu and the shared store
sleep 0.01
hermes refresh "$R" alpha "$URL" --force-current    # alpha merges Y from the shared store, Y -> Z
z=$(rt_of "$(auth "$R" alpha)"); yy=$(rt_of "$(auth "$R" zulu)")
check '[ "$z" != "$yy" ] && [ "$(rt_of "$R/shared/nous_auth.json")" = "$z" ]' "zulu holds Y, alpha and the shared store Z"
tl $D sync --all --json; expect 0 "one sync --all"
check '[ "$(current)" = "$z" ]' "the newest (Z) is current"
check '[ "$(q "SELECT state FROM refresh_token WHERE generation = 1")" = retired ] && [ "$(q "SELECT generation FROM refresh_token WHERE state = '"'"'current'"'"'")" = 2 ]' "Y is a spent generation before it, in order"
check '[ "$(rt_of "$(auth "$R" zulu)")" = "$z" ]' "zulu's file gets Z"
hermes refresh "$R" zulu "$URL" --force
check '[ "$HRC" = 0 ]' "Hermes in zulu refreshes without reuse"
check '[ "$(counter families_revoked)" = "$families" ]' "no grant revoked"

# --- 7. importing a plain file never makes its directory a sync target
mkdir -p "$WORK/backups"; cp "$(auth "$R" alpha)" "$WORK/backups/alpha-2026-11-01.json"
DB="$WORK/r7.db"; D="--db $DB"; tl $D init
tl $D import "$WORK/backups/alpha-2026-11-01.json" --profile restored; expect 0 "import a backup copy"
check '[ -z "$(q "SELECT home FROM profile WHERE name = '"'"'restored'"'"'")" ]' "the profile has no home"
check '[ ! -e "$WORK/backups/auth.lock" ] && [ ! -e "$WORK/backups/alpha-2026-11-01.lock" ]' "no lock file beside the copy"
tl $D sync --profile restored; expect 2 "nothing to sync"; contains "set-home" "says how to set a home"
contains "^hint: .*'tokenledger profile set-home restored DIR'" "the hint names the real profile"
mkdir -p "$WORK/newhome"
tl $D profile set-home restored "$WORK/newhome"; expect 0 "set a home explicitly"
tl $D profile add fresh --home "$WORK/not-yet"; expect 3 "a missing home is an error"; contains "create" "mentions --create"
tl $D profile add fresh --home "$WORK/not-yet" --create; expect 0 "--create makes the home"
check '[ "$(stat -c %a "$WORK/not-yet")" = 700 ]' "0700"
# One Hermes home is one profile's (two writing one auth.json would swap its grant back and forth).
ln -s "$WORK/newhome" "$WORK/alias"; p0=$(q "SELECT name, home FROM profile ORDER BY id" | sha256sum)
tl $D profile set-home fresh "$WORK/alias"; expect 12 "another profile's home, through a symlink"
contains "already the home of profile 'restored'" "names the profile"
tl $D profile set-home fresh "$WORK/newhome/"; expect 12 "and with a trailing slash"
tl $D profile add third --home "$WORK/newhome"; expect 12 "profile add --home too"
# The same directory under a name the ledger never saw (a root moved, a symlink keeping the old name).
mkdir -p "$WORK/data/h"; tl $D profile add moved --home "$WORK/data/h"; expect 0 "a home"
mv "$WORK/data" "$WORK/data2"; ln -s "$WORK/data2" "$WORK/data"
tl $D profile set-home fresh "$WORK/data2/h"; expect 12 "the same directory by its new real path"
p0=$(q "SELECT name, home FROM profile ORDER BY id" | sha256sum)
tl $D profile set-home fresh /dev; expect "$([ "$(id -u)" = 0 ] && echo 2 || echo 9)" "a system directory is not a Hermes home (for root too)"
check '[ "$(q "SELECT name, home FROM profile ORDER BY id" | sha256sum)" = "$p0" ]' "the profiles are as they were"

# --- 8. hostile files while Hermes' lock is in play
R="$WORK/r8"; make_root "$R" alpha; DB="$WORK/r8.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import"
A=$(auth "$R" alpha); mv "$A" "$A.real"; mkfifo "$A"
tl $D sync --profile alpha; expect 14 "a FIFO as auth.json is refused at once (a file that cannot be read: exit 14)"; contains "FIFO" "names it"
check 'flock -n "$R/profiles/alpha/auth.lock" true' "and auth.lock was released (Hermes is not kept waiting)"
rm "$A"; mv "$A.real" "$A"
jq '.credential_pool.nous[0].refresh_token = {"$tl": "rt", "credential": 1}' "$A" > "$WORK/ref.json"
tl $D import "$WORK/ref.json" --profile alpha; expect 2 "a file naming the ledger's objects is refused"; contains '\$tl' "says why"
jq '.providers.nous.refresh_token = (.providers.nous.refresh_token + " ")' "$A" > "$WORK/space.json"
tl $D import "$WORK/space.json" --profile alpha; expect 2 "a token with a trailing space is refused"; contains "not a token" "says why"
jq '.credential_pool.nous[0].last_status_at = 1e300' "$A" > "$WORK/huge.json"
tl $D import "$WORK/huge.json" --profile alpha; expect 2 "a float epoch out of range is refused"; contains "out of range" "says why"
q "SELECT template FROM hermes_file; SELECT original_json FROM pool_entry" > "$WORK/templates"
check '! grep -qF "$(rt_of "$A")" "$WORK/templates"' "no token in the stored templates or original_json"
mkdir -p "$WORK/other"; chown 65534 "$WORK/other" 2>/dev/null && {
  ln -s "$WORK/other/auth.json" "$WORK/link.json"
  tl $D export --profile alpha --output "$WORK/link.json"; expect 9 "export into another user's directory is refused"
  check '[ ! -e "$WORK/other/auth.json" ]' "nothing written there"
}
for i in $(seq 30); do  # SIGTERM during an export never leaves the temporary file with the tokens
  "$TL_BIN" $D export --profile alpha --output "$WORK/sig.json" > /dev/null 2>&1 & pid=$!
  sleep "0.00$((RANDOM % 9))"; kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
done
check '! ls -a "$WORK" | grep -q "^\.sig_.*\.tmp$"' "no temporary file left by SIGTERM"
# recover --mark-dead reaches the files: quarantined as Hermes would, the shared store removed
sqlite3 "$DB" "UPDATE refresh_token SET state = 'unknown', retired_at = 1 WHERE state = 'current'; UPDATE credential SET status = 'uncertain'"
tl $D recover --credential 1 --mark-dead; expect 0 "an unknown outcome given up"
check 'jq -e ".providers.nous | (has(\"refresh_token\") | not) and .last_auth_error.relogin_required" "$(auth "$R" alpha)" >/dev/null' "the profile's file is quarantined at once"
check '[ ! -e "$R/shared/nous_auth.json" ]' "and the shared store removed"

# --- 9. the Hermes-faithful race: four profiles sharing one grant, Hermes refreshing, keep-fresh --watch and sync --all running
kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; rm -f "$WORK/port"
start_portal --at-lifetime 125   # a fresh portal (its counters are this run's); Hermes refreshes under 120 s left: every ~5 s
R="$WORK/r9"; make_root "$R" default alpha beta gamma; DB="$WORK/r9.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import the root"
reuse0=$(counter reuse_detections); revoked0=$(counter families_revoked)
rm -f "$WORK/stop"
"$TL_BIN" $D keep-fresh --watch --interval 1 --ahead 124 > "$WORK/kf.out" 2> "$WORK/kf.err" & kf=$!
syncer() { while [ ! -e "$WORK/stop" ]; do "$TL_BIN" $D sync --all > /dev/null 2>> "$WORK/sync.err" || echo "sync exit $?" >> "$WORK/sync.err"; sleep 0.05; done; }
syncer & sy=$!
"$TL_HERMES" run "$R" "$URL" "${TL_RACE_SECONDS:-15}" "${TL_RACE_FORCE_PERMILLE:-5}" default alpha beta gamma > "$WORK/race.out" 2>&1; HRC=$?
touch "$WORK/stop"; wait $sy; kill -TERM $kf; wait $kf || true
cat "$WORK/race.out" "$WORK/kf.err" "$WORK/kf.out" >> "$ALL"
[ -n "${TL_DEBUG:-}" ] && { echo "--- keep-fresh:"; tail -20 "$WORK/kf.out"; cat "$WORK/kf.err"; }
echo "  $(cat "$WORK/race.out" | tail -1)"
check '[ "$HRC" = 0 ]' "Hermes was never refused, never read a torn file ($(tail -2 "$WORK/race.out" | tr '\n' ' '))"
check '[ "$(counter reuse_detections)" = "$reuse0" ] && [ "$(counter families_revoked)" = "$revoked0" ]' "zero reuse at the portal"
check '[ ! -s "$WORK/sync.err" ]' "every sync --all succeeded ($(head -c 300 "$WORK/sync.err"))"
check 'grep -q "refreshes" "$WORK/race.out" && ! grep -q " 0 refreshes" "$WORK/race.out"' "Hermes made progress"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = '"'"'rotated'"'"'")" -gt 0 ]' "tokenledger made progress"
tl $D sync --all; expect 0 "a final sync"
set +e; "$TL_DRIVER" verify "$DB" "$URL" > "$WORK/verify.out" 2>&1; VRC=$?; set -e
cat "$WORK/verify.out"
check '[ "$VRC" = 0 ]' "every token the portal issued is in the lineage ($(tail -1 "$WORK/verify.out"))"
for p in default alpha beta gamma; do
  hermes check "$R" $p
  check '[ "$HRC" = 0 ]' "$p: a file Hermes would not rewrite ($(cat "$WORK/h.out"))"
done
admin config "at_lifetime=3600" > /dev/null

# --- 9b. keep-fresh --watch alone carries a rotation Hermes makes in one profile to its siblings and the shared store
R="$WORK/r9b"; make_root "$R" default alpha beta; DB="$WORK/r9b.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import"
"$TL_BIN" $D keep-fresh --watch --interval 3600 --ahead 1 > "$WORK/w.out" 2>&1 & kw=$!
for _ in $(seq 100); do [ -s "$WORK/w.out" ] && break; sleep 0.05; done   # its first round is done; it watches now
hermes refresh "$R" alpha "$URL" --force-current
new=$(rt_of "$(auth "$R" alpha)")
for _ in $(seq 200); do
  [ "$(rt_of "$(auth "$R" beta)")" = "$new" ] && [ "$(rt_of "$(auth "$R" default)")" = "$new" ] && break; sleep 0.05
done
kill -TERM $kw; wait $kw || true
check '[ "$(rt_of "$(auth "$R" beta)")" = "$new" ] && [ "$(rt_of "$(auth "$R" default)")" = "$new" ] && [ "$(rt_of "$R/shared/nous_auth.json")" = "$new" ]' "the siblings and the shared store got Hermes' rotation from the watch alone"
check '[ "$(current)" = "$new" ]' "and the ledger adopted it"

# --- 10. lock order: tokenledger refreshing in a loop while Hermes is forced to refresh in every profile
R="$WORK/r10"; make_root "$R" default alpha beta; DB="$WORK/r10.db"; D="--db $DB"
tl $D init; tl $D import "$R" --all-profiles; expect 0 "import"
rm -f "$WORK/stop"
refresher() { n=0; while [ ! -e "$WORK/stop" ]; do "$TL_BIN" $D refresh nous --profile beta --force > /dev/null 2>> "$WORK/ref.err" && n=$((n + 1)); done; echo $n > "$WORK/ref.count"; }
refresher & rf=$!
"$TL_HERMES" run "$R" "$URL" 6 1000 default alpha beta > "$WORK/order.out" 2>&1; HRC=$?
touch "$WORK/stop"; wait $rf
cat "$WORK/order.out"
check '[ "$HRC" = 0 ] && ! grep -q " 0 refreshes" "$WORK/order.out" && grep -q " 0 lock timeouts" "$WORK/order.out"' "Hermes progressed and never timed out on a lock"
check '[ "$(cat "$WORK/ref.count")" -gt 0 ]' "tokenledger progressed ($(cat "$WORK/ref.count") refreshes; $(sort "$WORK/ref.err" | uniq -c | head -3))"
check '[ "$(counter reuse_detections)" = "$reuse0" ]' "and no reuse"

no_secret_leak "$WORK/rt-x" "$WORK/rt-y"
if [ -n "${TL_DEBUG:-}" ]; then rm -rf /tmp/coop-debug; cp -r "$WORK" /tmp/coop-debug; fi
finish
