#!/usr/bin/env bash
# recovery.sh - the tool after something went wrong, through the real CLI in a temporary HOME with a
# Hermes root against the real loopback portal: a shared grant the portal revoked is replaced in every
# profile and the shared store by one login that keeps its label, and doctor (whose exit status
# monitoring relies on) turns green again once no profile uses a dead grant, with a hint after every
# failed check; one truncated auth.json never stops sync --all, export or keep-fresh for the other
# homes, is reported with its own exit code (14, not transient) and a hint that works, and doctor reads
# every home's files; a profile Hermes created after the import is reported by sync, keep-fresh and
# doctor with the exact import command, and named by the "does not exist" hint.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/hermes_root.sh"
set -e
: "${TL_PORTAL:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
ROOT="$HOME/.hermes"
DB="$ROOT/tokenledger.db"
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
nous_cred() { q "SELECT e.credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = '$1' AND e.provider = 'nous' ORDER BY e.priority LIMIT 1"; }
# the row of a doctor check in the last JSON output: ok (1/0) and detail
check_ok() { jq -r --arg c "$1" '.[] | select(.check == $c) | if .ok == true then 1 elif .ok == false then 0 else .ok end' "$OUT"; }
check_detail() { jq -r --arg c "$1" '.[] | select(.check == $c) | .detail' "$OUT"; }

# --- a Hermes root: default, work and research share the portal's grant (as Hermes does after one login)
make_root "$ROOT" default work research
tl init; expect 0 "init"
tl provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"; expect 0 "nous at the portal"
tl import "$ROOT" --all-profiles; expect 0 "import the root"
tl doctor; expect 0 "a healthy ledger: doctor is green"

# ====== item 2: one bad file never stops the rest ======
RA="$ROOT/profiles/research/auth.json"
cp "$RA" "$WORK/research.good"
head -c 120 "$WORK/research.good" > "$RA"; chmod 600 "$RA"
bad_bytes=$(bytes "$RA")
tl refresh nous --profile default --force; expect 0 "the shared grant still refreshes: a file that cannot be read holds nothing to adopt"
NEW_RT=$(q "SELECT secret FROM refresh_token WHERE state = 'current' AND credential_id = $(nous_cred default)")
check '[ "$(rt_of "$ROOT/auth.json")" = "$NEW_RT" ] && [ "$(rt_of "$ROOT/profiles/work/auth.json")" = "$NEW_RT" ]' \
  "the rotation reached every readable file"
check '[ "$(bytes "$RA")" = "$bad_bytes" ]' "the truncated file is left exactly as it was"
tl sync --all; expect 14 "sync --all with one truncated auth.json: its own exit code, not 2 or 7"
contains "research" "names the bad profile"; contains "premature end of input" "says what is wrong with it"
contains "unreadable" "its row says unreadable"
contains "hint: .*mv ~/.hermes/profiles/research/auth.json ~/.hermes/profiles/research/auth.json.bad && tokenledger sync --profile research" \
  "the hint says how to get a good file back"
check '[ "$(bytes "$RA")" = "$bad_bytes" ]' "still left exactly as it was"
tl sync --all --json; expect 14 "sync --all --json"
check 'jq -e "[.[] | select(.action == \"unreadable\")] | length == 1" "$OUT" > /dev/null' "one unreadable row in the JSON"
check 'jq -e "[.[] | select(.profile == \"work\")] | length >= 1" "$OUT" > /dev/null' "the other homes were synced (work's row is there)"
tl export --profile default; expect 14 "export of a sibling profile reports the bad file too"
check '[ "$(rt_of "$ROOT/auth.json")" = "$NEW_RT" ]' "and still writes the profile's own file"
tl keep-fresh --once; expect 14 "keep-fresh --once: an unreadable file is not transient (not 7)"
contains "unreadable" "keep-fresh names it"; contains "hint: move it aside" "with the way out"
tl doctor; expect 1 "doctor is not green with an unreadable Hermes file"
contains "hermes_files" "it has a check for Hermes' files"; contains "hint: hermes_files" "with a hint"
# the hint works: move it aside, sync rewrites it from the ledger
mv "$RA" "$RA.bad"
tl sync --profile research; expect 0 "sync rewrites the moved-aside file from the ledger"
check '[ "$(rt_of "$RA")" = "$NEW_RT" ]' "with the ledger's current grant"
check 'jq -e ".credential_pool.nous | length == 1" "$RA" > /dev/null' "and Hermes' shape"
tl sync --all; expect 0 "sync --all is clean again"
tl doctor; expect 0 "doctor is green again"
# a file Hermes would still read (a duplicate key: Python's json keeps the last) may hold a token Hermes
# rotated: sync goes on without it, but nothing is presented while it holds the grant (adopt before present)
cp "$RA" "$WORK/research.now"
{ printf '{"version": 1,\n'; tail -c +2 "$WORK/research.now"; } > "$RA"; chmod 600 "$RA"
r=$(counter refreshes)
tl refresh nous --profile default --force
check '[ "$RC" != 0 ] && [ "$(counter refreshes)" = "$r" ]' "a file Hermes would read but the ledger cannot: nothing presented"
contains "duplicate" "and says why"
tl sync --all; expect 14 "sync --all still does the other files"
cp "$WORK/research.now" "$RA"
tl sync --all; expect 0 "the file back: all clean"

# ====== items 1 and 8: a shared grant dies; doctor says what to run; one login replaces it everywhere ======
admin config "approve_after=1" > /dev/null
C=$(nous_cred default)
check '[ "$(nous_cred work)" = "$C" ] && [ "$(nous_cred research)" = "$C" ]' "the three profiles share one grant"
creds0=$(q "SELECT count(*) FROM credential")
admin fault "kind=lose&count=1" > /dev/null
tl refresh nous --profile work --force; expect 6 "a lost answer: unknown outcome"
tl doctor --json; expect 1 "doctor fails while a credential in use waits for a decision"
check '[ "$(check_ok unknown_outcomes)" = 0 ]' "the unknown_outcomes check fails"
tl doctor; contains "hint: credential $C (used by default, research, work): give the login up with 'tokenledger recover --credential $C --mark-dead'" \
  "with the decision to make as its hint (the safe one first)"
tl recover --credential "$C" --mark-dead; expect 0 "give the grant up"
contains "used by default, research, work: one login replaces it in all of them: 'tokenledger login nous --credential $C'" \
  "recover says one login replaces the shared grant"
tl doctor --json; expect 1 "doctor fails while a credential in use needs a login"
check '[ "$(check_ok needs_reauth)" = 0 ] && [ "$(check_ok unknown_outcomes)" = 1 ]' "needs_reauth fails, unknown_outcomes no longer"
tl doctor
contains "hint: credential $C (nous, used by default, research, work): one login replaces it in all of them: 'tokenledger login nous --credential $C'" \
  "doctor's hint: one login for the shared grant"
tl token nous --profile research; expect 5 "the grant is dead"
contains "one login replaces it in all of them: 'tokenledger login nous --credential $C'" "token's hint says the same"
tl status; contains "credential $C needs a new login: used by default, research, work: one login replaces" "and status"
entries_of() { q "SELECT group_concat(x, ' ') FROM (SELECT p.name || ':' || e.entry_id || ':' || e.priority AS x FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE e.credential_id = $1 ORDER BY 1)"; }
entries0=$(entries_of "$C")
tl login nous --credential "$C"; expect 0 "one login in place of the dead shared grant"
N=$(nous_cred default)
check '[ "$N" != "$C" ] && [ "$(nous_cred work)" = "$N" ] && [ "$(nous_cred research)" = "$N" ]' "every profile now uses the one new grant"
check '[ "$(q "SELECT count(*) FROM credential")" = $((creds0 + 1)) ]' "exactly one new grant (not one per profile)"
check '[ "$(counter device_grants)" = 1 ]' "after exactly one device login"
check '[ "$(q "SELECT label FROM credential WHERE id = $N")" = alice@example.com ]' "the new grant keeps the label"
check '[ "$(entries_of "$N")" = "$entries0" ]' \
  "each profile's pool entry keeps its id and priority"
check '[ "$(q "SELECT count(*) FROM pool_entry WHERE credential_id = $C") $(q "SELECT count(*) FROM grant_place WHERE credential_id = $C")" = "0 0" ]' \
  "no profile or shared store uses the dead grant any more"
LIVE=$(q "SELECT secret FROM refresh_token WHERE state = 'current' AND credential_id = $N")
check '[ "$(rt_of "$ROOT/auth.json")" = "$LIVE" ] && [ "$(rt_of "$ROOT/profiles/work/auth.json")" = "$LIVE" ] && [ "$(rt_of "$RA")" = "$LIVE" ]' \
  "every profile's auth.json holds the new grant"
check '[ -e "$ROOT/shared/nous_auth.json" ] && [ "$(rt_of "$ROOT/shared/nous_auth.json")" = "$LIVE" ]' "so does the shared store"
tl token nous --profile research; expect 0 "research works again"
tl doctor --json; expect 0 "doctor is green again once no profile uses a dead grant"
check 'check_detail unused_credentials | grep -q "^1 dead or undecided credential"' "the replaced grant is an informational line"
tl login nous --credential "$N"; expect 2 "a live grant is not replaced"; contains "is live" "says why"
tl login nous --credential "$C"; expect 2 "nor one no profile uses any more"; contains "used by no profile" "says why"

# the portal revokes the new grant's family (a spent token presented outside); then one login per profile, as
# the old hints led people to do: doctor turns green too, and a removed dead grant needs nobody either
OLD_RT=$LIVE
tl refresh nous --profile default --force; expect 0 "a rotation"
curl -s -o /dev/null -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $OLD_RT" -d grant_type=refresh_token -d client_id=hermes-cli
tl refresh nous --profile default --force; expect 5 "the portal revoked the family: the grant is dead"
tl doctor; expect 1 "doctor fails"
for p in default work research; do tl login nous --profile "$p"; expect 0 "login for $p"; done
tl doctor; expect 0 "every profile logged in again: doctor is green (it stayed red for good before)"
check '[ "$(q "SELECT count(DISTINCT label) FROM credential WHERE status = '"'"'active'"'"'")" = 1 ] && [ "$(q "SELECT label FROM credential WHERE id = $(nous_cred work)")" = alice@example.com ]' \
  "a profile's own login keeps the label too"
W=$(nous_cred work)
admin fault "kind=lose&count=1" > /dev/null
tl refresh nous --profile work --force; expect 6 "an unknown outcome"
tl recover --credential "$W" --mark-dead; expect 0 "marked dead"
contains "log in again with 'tokenledger login nous --profile work'" "a profile's own grant: a profile's own login"
tl credential rm "$W"; expect 0 "the dead grant removed"
tl doctor --json; expect 0 "a removed dead grant needs nobody: doctor is green"

# ====== item 3: a profile Hermes created after the import ======
seed=$(admin seed)
mkdir -p "$ROOT/profiles/newbie"
hermes_doc "$seed" newbie@example.com 0e0e0e > "$ROOT/profiles/newbie/auth.json"; chmod 600 "$ROOT/profiles/newbie/auth.json"
IMPORT="tokenledger import ~/.hermes/profiles/newbie --profile newbie"
tl sync --all; expect 0 "sync --all does not adopt a new home"
contains "note: ~/.hermes/profiles/newbie holds 1 grant(s) no profile of the ledger keeps" "but names it"
contains "'$IMPORT'" "with the exact import command"
check '[ "$(q "SELECT count(*) FROM profile WHERE name = '"'"'newbie'"'"'")" = 0 ]' "and adopts nothing"
tl keep-fresh --once; contains "'$IMPORT'" "keep-fresh names it too"
tl keep-fresh --count 1 --interval 1; contains "note: ~/.hermes/profiles/newbie holds 1 grant" "also as a service"
tl doctor --json; expect 1 "doctor fails while Hermes refreshes a grant alone"
check '[ "$(check_ok new_profiles)" = 0 ]' "the new_profiles check fails"
tl doctor; contains "hint: new_profiles: ~/.hermes/profiles/newbie holds 1 grant" "with its hint"; contains "'$IMPORT'" "naming the import"
tl sync --profile newbie; expect 3 "the ledger does not know the profile"
contains "hint: Hermes has a profile newbie the ledger does not keep yet: import it with '$IMPORT'" "the does-not-exist hint names the import"
tl import "$ROOT/profiles/newbie" --profile newbie; expect 0 "the import command works"
tl doctor; expect 0 "doctor is green again"
tl sync --all; expect 0 "sync --all"; lacks "note:" "and says nothing more about it"

# ====== every failed check ends with its next step ======
# damage the ledger (a reference to a credential that does not exist), give Hermes a truncated file and a
# new home at once
q "INSERT INTO grant_place (profile_id, place, credential_id, updated_at) VALUES (NULL, 'shared:/nonexistent/nous_auth.json', 99999, 0)"
mkdir -p "$ROOT/profiles/late"; hermes_doc "$(admin seed)" late@example.com 1a1a1a > "$ROOT/profiles/late/auth.json"
cp "$RA" "$WORK/research.keep"; head -c 50 "$WORK/research.keep" > "$RA"
tl doctor --json; expect 1 "doctor with three problems"
jq -r '.[] | select(.ok == false) | .check' "$OUT" > "$WORK/failed"
check '[ "$(sort "$WORK/failed" | tr "\n" " ")" = "foreign_keys hermes_files new_profiles " ]' "the three checks fail ($(tr "\n" " " < "$WORK/failed"))"
tl doctor
for c in $(cat "$WORK/failed"); do contains "^hint: $c: " "the failed check $c ends with a hint"; done
contains "hint: foreign_keys: the ledger itself is damaged" "damage is called damage"
q "DELETE FROM grant_place WHERE credential_id = 99999"
cp "$WORK/research.keep" "$RA"; rm -r "$ROOT/profiles/late"
tl doctor; expect 0 "and green once each is dealt with"
rt_of "$WORK/research.good" > "$WORK/rt0"; echo "$LIVE" > "$WORK/rt1"
no_secret_leak "$WORK/rt0" "$WORK/rt1"

finish
