#!/usr/bin/env bash
# hermes.sh - Hermes interoperability end to end: the round-trip law over the
# corpus, a whole Hermes root with forked grants and the shared store, every
# bad input left without a trace, a stale file refused, export under
# auth.lock with Hermes' file conventions, and sync adopting what Hermes
# changed (external rotations, spent tokens overwritten) against the real
# loopback portal, plus a Hermes-like writer racing concurrent syncs.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}" "${TL_SRC:?}"
CORPUS="$TL_SRC/tests/data/hermes"
norm() { jq -S 'del(.updated_at)' "$1"; }

# --- 1. the round-trip law over the corpus
n=0
for f in "$CORPUS"/*.json; do
  db="$WORK/rt-$(basename "$f").db"
  tl --db "$db" init
  tl --db "$db" import "$f" --profile p; expect 0 "import $(basename "$f")"
  tl --db "$db" export --profile p --output "$WORK/out.json"; expect 0 "export $(basename "$f")"
  check '[ "$(norm "$f")" = "$(norm "$WORK/out.json")" ]' "round trip of $(basename "$f")"
  check '[ "$(stat -c %a "$WORK/out.json")" = 600 ]' "exported file is 0600"
  rm -f "$WORK/out.json"
  n=$((n + 1))
done
check '[ $n -ge 12 ]' "the corpus has at least 12 files"

# --- 2. a whole Hermes root
ROOT="$WORK/hermes"
mkdir -p "$ROOT/profiles/work" "$ROOT/profiles/research" "$ROOT/profiles/.deleted/old" "$ROOT/shared"
cp "$CORPUS/02_reference_example.json" "$ROOT/auth.json"
cp "$CORPUS/02_reference_example.json" "$ROOT/profiles/work/auth.json"      # a forked grant
cp "$CORPUS/13_multi_account_nous.json" "$ROOT/profiles/research/auth.json"
jq '{_schema: 1, access_token: .providers.nous.access_token, refresh_token: .providers.nous.refresh_token,
     token_type: "Bearer", scope: "inference:invoke", client_id: "hermes-cli",
     portal_base_url: .providers.nous.portal_base_url, updated_at: "2026-09-20T10:00:00+00:00"}' \
  "$ROOT/auth.json" > "$ROOT/shared/nous_auth.json"
mkdir -p "$WORK/rootdb"; DB="$WORK/rootdb/root.db"
D="--db $DB"
tl $D init
tl $D import "$ROOT" --all-profiles --dry-run; expect 0 "dry run of a whole root"
check '[ "$(q "SELECT count(*) FROM credential") $(q "SELECT count(*) FROM profile")" = "0 0" ]' "dry run writes nothing"
tl $D import "$ROOT" --all-profiles --json; expect 0 "import a whole root in one command"
check 'jq -e "[.[].profile] | unique == [\"(shared)\", \"default\", \"research\", \"work\"]" "$OUT" >/dev/null' "root, profiles and the shared store"
check 'jq -e "any(.[]; .profile == \"work\" and (.note // \"\" | test(\"same grant as profile\\\\(s\\\\) default\")))" "$OUT" >/dev/null' "the fork is reported"
check '[ "$(q "SELECT count(*) FROM credential WHERE provider = \"nous\"")" = 5 ]' "one credential per grant (2 + 3 nous grants)"
check '[ "$(q "SELECT count(DISTINCT credential_id) FROM pool_entry p JOIN profile f ON f.id = p.profile_id WHERE f.name IN (\"default\",\"work\") AND credential_id IS NOT NULL")" = 3 ]' "forked profiles share credentials"
check '[ "$(q "SELECT home FROM profile WHERE name = \"work\"")" = "$(realpath "$ROOT/profiles/work")" ]' "profile home recorded"
tl $D import "$ROOT" --all-profiles; expect 0 "importing again is harmless"
check '[ "$(q "SELECT count(*) FROM credential")" = 6 ]' "no duplicate credentials on re-import (3 + 3 grants)"

# --- 3. bad inputs: a specific error, and the ledger exactly as before
BAD="$WORK/bad"; mkdir -p "$BAD"
printf '{"version": 1, "providers": {' > "$BAD/truncated.json"
printf '{"version": 1} trailing' > "$BAD/garbage.json"
printf '[1, 2, 3]' > "$BAD/array.json"
printf '{"providers": []}' > "$BAD/providers-array.json"
printf '{"providers": {"nous": {"refresh_token": 42}}}' > "$BAD/rt-number.json"
printf '{"credential_pool": {"nous": [{"id": "a1", "priority": "high"}]}}' > "$BAD/priority-string.json"
printf '{"credential_pool": {"nous": [{"label": "no id"}]}}' > "$BAD/no-id.json"
printf '{"providers": {"nous": {"label": "\xff\xfe"}}}' > "$BAD/utf8.json"
printf '{"providers": {"nous": {"refresh_token": "a\\u0000b"}}}' > "$BAD/nul-escape.json"
printf '{"version": 1,\0 "providers": {}}' > "$BAD/nul-byte.json"
printf '{"version": 1, "version": 2}' > "$BAD/duplicate.json"
python3 -c 'import sys; sys.stdout.write("[" * 100000 + "]" * 100000)' > "$BAD/deep.json" 2>/dev/null ||
  { head -c 100000 /dev/zero | tr '\0' '[' > "$BAD/deep.json"; head -c 100000 /dev/zero | tr '\0' ']' >> "$BAD/deep.json"; }
{ printf '{"providers": {"nous": {"label": "'; head -c 52428800 /dev/zero | tr '\0' 'x'; printf '"}}}'; } > "$BAD/huge.json"
: > "$BAD/empty.json"
printf '{"providers": {"nous": {"refresh_token": "rt-x", "portal_base_url": "http://evil.example.com"}}}' > "$BAD/http-portal.json"
ln -s "$BAD/loop-b.json" "$BAD/loop-a.json"; ln -s "$BAD/loop-a.json" "$BAD/loop-b.json"
mkdir -p "$BAD/dirhome/auth.json" "$BAD/nohome"
before=$(snapshot "$DB")
audit_before=$(q "SELECT count(*) FROM audit_event")
for case in truncated:2:"line 1" garbage:2:"end of file expected" array:2:"expected a JSON object" \
            providers-array:2:'$.providers: expected an object' rt-number:2:'$.providers.nous.refresh_token' \
            priority-string:2:'$.credential_pool.nous\[0\].priority' no-id:2:'$.credential_pool.nous\[0\].id' \
            utf8:2:"unable to decode byte" nul-escape:2:"NUL" nul-byte:2:"line 1" duplicate:2:"duplicate" deep:2:"depth" \
            huge:2:"at most 16 MiB" empty:2:"empty file" http-portal:2:"portal_base_url" loop-a:2:"loop" \
            dirhome:2:"not a regular file" nohome:3:"no auth.json"; do
  name=${case%%:*}; rest=${case#*:}; code=${rest%%:*}; msg=${rest#*:}
  file="$BAD/$name.json"; [ -d "$BAD/$name" ] && file="$BAD/$name"
  tl $D import "$file" --profile bad; expect "$code" "bad input '$name' is refused"
  contains "$msg" "bad input '$name' names the reason"
  check 'grep -q "$(basename "$file")\|loop" "$ERR"' "bad input '$name' names the file"
done
printf '{"providers": {"nous": {"refresh_token" "SECRET-IN-BROKEN-JSON-42"}}}' > "$BAD/leak.json"
printf '{"providers": {"bad \\"id": {"refresh_token": "x"}}}' > "$BAD/provider-id.json"
tl $D import "$BAD/provider-id.json" --profile bad; expect 2 "a provider id with a quote"
contains "not a provider id" "names the bad provider id"
tl $D import "$BAD/leak.json" --profile bad; expect 2 "a malformed file around a token"
lacks "SECRET-IN-BROKEN" "the parse error does not quote the token"
if [ "$(id -u)" != 0 ]; then
  printf '{}' > "$BAD/unreadable.json"; chmod 000 "$BAD/unreadable.json"
  tl $D import "$BAD/unreadable.json" --profile bad; expect 13 "an unreadable file is an I/O error, never an empty store"
fi
check '[ "$before" = "$(snapshot "$DB")" ] && [ "$audit_before" = "$(q "SELECT count(*) FROM audit_event")" ]' "bad inputs left the ledger exactly as it was"
check '[ "$(q "SELECT count(*) FROM profile WHERE name = \"bad\"")" = 0 ]' "no profile created by a failed import"

# --- 4. the portal, a refresh, and a stale file
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=2000
H="$WORK/home-a"; mkdir -p "$H"
seed=$(admin seed)
jq -n --arg rt "$(jq -r .refresh_token <<< "$seed")" --arg at "$(jq -r .access_token <<< "$seed")" --arg url "$URL" '
  {version: 1, providers: {nous: {portal_base_url: $url, inference_base_url: "https://inference-api.nousresearch.com/v1",
   client_id: "hermes-cli", scope: "inference:invoke", token_type: "Bearer", access_token: $at, refresh_token: $rt,
   obtained_at: "2026-09-20T10:00:00.123456+00:00", expires_at: "2026-09-20T11:00:00.123456+00:00", expires_in: 3600,
   agent_key: $at, agent_key_id: null, agent_key_expires_at: "2026-09-20T11:00:00+00:00", agent_key_expires_in: 3599,
   agent_key_reused: false, agent_key_obtained_at: "2026-09-20T10:00:00.234567+00:00", hermes_future_key: [1, 2]}},
   active_provider: "nous", credential_pool: {}, updated_at: "2026-09-20T10:00:01+00:00"}' > "$H/auth.json"
chmod 600 "$H/auth.json"
cp "$H/auth.json" "$WORK/stale-backup.json"
jq -r .providers.nous.refresh_token "$H/auth.json" > "$WORK/rt-a0"
DB="$WORK/sync.db"; D="--db $DB"
tl $D init
tl $D import "$H" --profile alpha; expect 0 "import a Hermes home"
check '[ "$(q "SELECT token_url FROM credential")" = "$URL/api/oauth/token" ]' "the credential refreshes at its own portal_base_url"
tl $D refresh nous --profile alpha --force; expect 0 "refresh through the portal"
# a pool row without its own portal_base_url refreshes at the singleton's portal, as in Hermes
seed2=$(admin seed)
jq -n --arg rt "$(jq -r .refresh_token <<< "$seed2")" --arg url "$URL" '{version: 1,
  providers: {nous: {portal_base_url: $url, refresh_token: $rt}},
  credential_pool: {nous: [{id: "p00001", source: "device_code", refresh_token: $rt}]}}' > "$WORK/pool-first.json"
tl $D import "$WORK/pool-first.json" --profile delta; expect 0 "import a pool row and its singleton"
check '[ "$(q "SELECT c.token_url FROM credential c JOIN pool_entry e ON e.credential_id = c.id JOIN profile p ON p.id = e.profile_id WHERE p.name = \"delta\"")" = "$URL/api/oauth/token" ]' "the pool row uses the singleton's portal"
tl $D export --profile alpha; expect 0 "export to the profile's auth.json"
check '[ "$(jq -r .providers.nous.refresh_token "$H/auth.json")" != "$(cat "$WORK/rt-a0")" ]' "export wrote the rotated RT"
check '[ "$(jq -r .providers.nous.agent_key "$H/auth.json")" = "$(jq -r .providers.nous.access_token "$H/auth.json")" ]' "agent_key equals the access token"
check 'jq -e ".providers.nous.hermes_future_key == [1, 2] and .active_provider == \"nous\"" "$H/auth.json" >/dev/null' "unknown keys kept"
check 'jq -r .providers.nous.obtained_at "$H/auth.json" | grep -Eq "^[0-9-]{10}T[0-9:]{8}\.[0-9]{6}\+00:00$"' "obtained_at in Hermes' format"
check '[ "$(stat -c %a "$H/auth.json")" = 600 ] && [ -e "$H/auth.lock" ]' "0600 and the sibling auth.lock"
check '! ls "$H"/.auth_*.tmp >/dev/null 2>&1' "no temporary file left behind"
tl $D export --profile alpha --json; expect 0 "export again"
check 'jq -e ".[0].action == \"unchanged\"" "$OUT" >/dev/null' "nothing changed: the file is not rewritten"

# stale copy: a spent RT cannot come back
tl $D profile add beta
before=$(q "SELECT count(*) FROM credential")
tl $D import "$WORK/stale-backup.json" --profile beta --dry-run; expect 4 "dry run of a stale file reports the reuse"
tl $D import "$WORK/stale-backup.json" --profile beta; expect 4 "a stale auth.json is refused"
contains "already spent" "says the token is spent"; contains "sync" "says how to repair the file"
check '[ "$(q "SELECT count(*) FROM credential")" = "$before" ]' "nothing imported from the stale file"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"reuse_blocked\"")" = 1 ]' "one reuse_blocked event (none for the dry run)"

# a symlinked auth.json stays a symlink
H2="$WORK/home-link"; mkdir -p "$H2" "$WORK/real"
cp "$H/auth.json" "$WORK/real/auth.json"; ln -s "$WORK/real/auth.json" "$H2/auth.json"
tl $D profile add gamma --home "$H2"
tl $D refresh nous --profile alpha --force; expect 0 "another rotation"
tl $D export --profile alpha --output "$H2/auth.json"; expect 0 "export through a symlink"
check '[ -L "$H2/auth.json" ] && [ "$(jq -r .providers.nous.refresh_token "$WORK/real/auth.json")" = "$(q "SELECT secret FROM refresh_token WHERE state = \"current\" AND credential_id = 1")" ]' "symlink kept, target updated"

# the lock is Hermes' lock
exec 9> "$H/auth.lock"
flock 9  # this shell holds Hermes' lock, as Hermes would during its own refresh
TOKENLEDGER_LOCK_TIMEOUT_MS=300 tl $D export --profile alpha; expect 8 "export waits for auth.lock, then says busy"
contains "auth.lock" "names the lock"
flock -u 9
exec 9>&-

# --- 5. sync: Hermes rotated by itself, then a spent token appears
rt=$(jq -r .providers.nous.refresh_token "$H/auth.json")
tl $D sync --profile alpha; expect 0 "sync when in step"
stamp=$(q "SELECT synced_at FROM hermes_file WHERE path = '$(realpath "$H/auth.json")'")
tl $D sync --profile alpha --json; expect 0 "sync again, nothing changed"
check 'jq -e ".[0].action == \"unchanged\"" "$OUT" >/dev/null' "reported unchanged"
check '[ "$(q "SELECT synced_at FROM hermes_file WHERE path = '"'"'$(realpath "$H/auth.json")'"'"'")" = "$stamp" ]' "a file in step costs no write"
ans=$(curl -sf -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $(jq -r .providers.nous.refresh_token "$H/auth.json")" -d grant_type=refresh_token -d client_id=hermes-cli)
jq --arg rt "$(jq -r .refresh_token <<< "$ans")" --arg at "$(jq -r .access_token <<< "$ans")" \
  '.providers.nous.refresh_token = $rt | .providers.nous.access_token = $at | .providers.nous.label = "set by hermes"' \
  "$H/auth.json" > "$H/auth.json.new" && mv "$H/auth.json.new" "$H/auth.json"
jq -r .providers.nous.refresh_token "$H/auth.json" > "$WORK/rt-ext"
tl $D sync --profile alpha --json; expect 0 "sync adopts Hermes' own rotation"
check 'jq -e "any(.[]; .action == \"external_rotation\")" "$OUT" >/dev/null' "reported as an external rotation"
check '[ "$(q "SELECT origin || \":\" || state FROM refresh_token ORDER BY id DESC LIMIT 1")" = "external:current" ]' "lineage has the external child"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE state = \"retired\"")" = 1 ]' "the replaced RT is retired"
check '[ "$(jq -r .providers.nous.label "$H/auth.json")" = "set by hermes" ]' "Hermes' own change kept"
tl $D refresh nous --profile alpha --force; expect 0 "refresh continues from the adopted RT"
check '[ "$(counter reuse_detections)" = 0 ]' "no reuse after adopting"
tl $D sync --profile alpha; expect 0 "sync exports the new rotation"
jq --arg rt "$(cat "$WORK/rt-a0")" '.providers.nous.refresh_token = $rt' "$H/auth.json" > "$H/auth.json.new" && mv "$H/auth.json.new" "$H/auth.json"
tl $D sync --profile alpha --json; expect 0 "sync with a spent RT in the file"
check 'jq -e "any(.[]; .action == \"spent_overwritten\")" "$OUT" >/dev/null' "the spent RT is reported"
check '[ "$(jq -r .providers.nous.refresh_token "$H/auth.json")" = "$(q "SELECT secret FROM refresh_token WHERE state = \"current\" AND credential_id = 1")" ]' "and overwritten with the current one"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"reuse_blocked\"")" = 2 ]' "audited as reuse_blocked"
tl $D sync --all; expect 0 "sync --all"
tl $D sync; expect 2 "sync needs --profile or --all"
tl $D export --profile nobody; expect 3 "export of an unknown profile"
tl $D profile add nohome
tl $D export --profile nohome; expect 2 "export without a home says so"

# --- 6. a Hermes-like writer rewrites auth.json under auth.lock while syncs race
H3="$WORK/home-race"; mkdir -p "$H3"
seed=$(admin seed)
jq -n --arg rt "$(jq -r .refresh_token <<< "$seed")" --arg at "$(jq -r .access_token <<< "$seed")" --arg url "$URL" \
  '{version: 1, providers: {nous: {portal_base_url: $url, client_id: "hermes-cli", access_token: $at, refresh_token: $rt,
    expires_at: "2026-09-20T11:00:00+00:00"}}, writer_seq: -1}' > "$H3/auth.json"
chmod 600 "$H3/auth.json"
tl $D import "$H3" --profile race; expect 0 "import the raced profile"
ROTATIONS=${TL_WRITER_ROUNDS:-30}
syncer() { while [ ! -e "$WORK/stop" ]; do "$TL_BIN" $D sync --profile race > /dev/null 2>> "$WORK/race-errors" || echo "sync failed" >> "$WORK/race-errors"; done; }
syncer & s1=$!
syncer & s2=$!
set +e; "$TL_DRIVER" hermes-writer "$H3/auth.json" "$URL" "$DB" "$ROTATIONS" > "$OUT" 2> "$ERR"; RC=$?; set -e
touch "$WORK/stop"
wait $s1 $s2
expect 0 "the Hermes-like writer finished"
cat "$OUT"
check '[ ! -s "$WORK/race-errors" ]' "every concurrent sync succeeded"
check 'jq -e ".writer_seq == $((ROTATIONS * 2 - 1))" "$H3/auth.json" >/dev/null' "no lost update: the writer's last write is there"
tl $D sync --profile race; expect 0 "a final sync"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE origin = \"external\"")" -ge "$ROTATIONS" ]' "every rotation by the writer is in the lineage"
check '[ "$(counter reuse_detections)" = 0 ]' "the portal saw no reuse"

# --- 7. keep-fresh: refresh what is due, skip what must not be presented, sync the files
tl $D keep-fresh --once --ahead 86400 --json; expect 0 "keep-fresh refreshing everything due within a day"
check 'jq -e "any(.[]; .action == \"refreshed\")" "$OUT" >/dev/null' "due credentials refreshed"
check '[ "$(jq -r .providers.nous.refresh_token "$H/auth.json")" = "$(q "SELECT secret FROM refresh_token WHERE state = \"current\" AND credential_id = 1")" ]' "and the profile's auth.json synced"
check '[ "$(counter reuse_detections)" = 0 ]' "keep-fresh presented no spent token"
before=$(counter refreshes)
tl $D keep-fresh --once --ahead 600 --json; expect 0 "a second round right after"
check 'jq -e "all(.[]; .action != \"refreshed\")" "$OUT" >/dev/null' "nothing refreshed when nothing is due"
check '[ "$(counter refreshes)" = "$before" ]' "and nothing was presented"
sqlite3 "$DB" "UPDATE credential SET status = 'uncertain' WHERE id = 1"
tl $D keep-fresh --once --ahead 86400 --json --no-sync
check 'jq -e "any(.[]; .credential == 1 and .action == \"attention\")" "$OUT" >/dev/null' "an unknown outcome is reported for attention, not presented"
sqlite3 "$DB" "UPDATE credential SET status = 'active' WHERE id = 1"
"$TL_BIN" $D keep-fresh --interval 1 > "$WORK/kf.out" 2>&1 & kf=$!
for _ in $(seq 200); do [ -s "$WORK/kf.out" ] && break; sleep 0.05; done  # its first round has run
kill -TERM $kf
set +e; wait $kf; RC=$?; set -e
expect 0 "keep-fresh stops cleanly on SIGTERM"
tl $D keep-fresh --interval 0; expect 2 "keep-fresh with a bad interval"

no_secret_leak "$WORK/rt-a0" "$WORK/rt-ext"
finish
