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
check_ok() { jq -r --arg c "$1" '.[] | select(.check == $c) | .ok' "$OUT"; }
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

finish
