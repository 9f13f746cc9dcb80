#!/usr/bin/env bash
# ux.sh - the tool as people meet it, through the real CLI in a temporary HOME with a Hermes
# root against the real loopback portal: tables that fit a terminal (in a pseudo-terminal made by
# script(1)) and stay whole and plain in a pipe; --wide, --columns, one JSON line per document with
# null for a missing value; status that never calls a dead grant valid and says what API-key rows
# are; lineage as a tree and as Graphviz (checked by dot(1) when it is installed); credential rm;
# --db anywhere; token's default profile; pool strategy read back; report's cooldown; check-rt
# asking for the token with echo off; progress lines on a terminal only; hints naming the real
# profile; keep-fresh as a service (one line per round, details on change, attention is not
# failure, SIGTERM exits 0); help generated from one table per command.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/hermes_root.sh"
set -e
: "${TL_PORTAL:?}" "${TL_SRC:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=3000
CORPUS="$TL_SRC/tests/data/hermes"
ROOT="$HOME/.hermes"
DB="$ROOT/tokenledger.db"
q() { sqlite3 -cmd ".timeout 10000" "$DB" "$1"; }
ESC=$(printf '\033')

# pty COLS ARGS... : the CLI in a pseudo-terminal COLS wide (TERM=xterm, UTF-8 unless LC_ALL says otherwise);
# what the terminal showed, colours and carriage returns removed, is in $OUT ($RAW keeps the escapes).
RAW="$WORK/raw"
pty() {
  local cols=$1 cmd
  shift
  printf -v cmd '%q ' "$TL_BIN" "$@"
  set +e
  TERM=xterm LC_ALL=C.UTF-8 script -q -e -c "stty cols $cols rows 50; $cmd" /dev/null > "$RAW" 2>&1 < /dev/null
  RC=$?
  set -e
  sed 's/\x1b\[[0-9;]*[A-Za-z]//g; s/\r$//' "$RAW" | tr -d '\r' > "$OUT"
  : > "$ERR"
  cat "$RAW" >> "$ALL"
}
# widest OUT-line in characters (not bytes)
widest() { LC_ALL=C.UTF-8 wc -L < "$OUT"; }
# one_json: stdout is exactly one line of JSON, with no "" anywhere
one_json() {
  [ "$(wc -l < "$OUT")" = 1 ] && jq -e '[.. | select(. == "")] | length == 0' "$OUT" > /dev/null
}

# --- a Hermes root: default and work share the portal's grant, codex has a grant without an endpoint
# (qwen-oauth: the one Hermes provider with a refresh token and no built-in endpoint),
# keys holds API keys and a borrowed Claude login
make_root "$ROOT" default work
mkdir -p "$ROOT/profiles/codex" "$ROOT/profiles/keys"
jq '.providers = {"qwen-oauth": .providers."openai-codex".tokens} | .active_provider = "qwen-oauth"' \
  "$CORPUS/03_codex_tokens.json" > "$ROOT/profiles/codex/auth.json"
cp "$CORPUS/06_api_keys_custom.json" "$ROOT/profiles/keys/auth.json"
chmod 600 "$ROOT"/profiles/*/auth.json
tl init; expect 0 "init"
tl provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"; expect 0 "nous at the portal"
tl import "$ROOT" --all-profiles; expect 0 "import the root"
contains "note: qwen-oauth grants are kept and written back, but not refreshed until 'tokenledger provider set qwen-oauth" \
  "import names the provider that cannot refresh yet"
check '! grep -q "$HOME" "$OUT" && grep -q "~/.hermes/profiles/work/auth.json" "$OUT"' "paths under HOME shown as ~"
tl provider list --json
check 'jq -e "(map({(.name): .refreshes}) | add) as \$r | \$r.nous == \"configured\" and \$r[\"qwen-oauth\"] == \"not_configured\" and \$r.openrouter == \"api_keys_only\"" "$OUT" > /dev/null' \
  "provider list says which providers are refreshed, and that API-key providers never are"

# --- status: what each entry can give
tl status --json; expect 0 "status --json"; check one_json "status --json is one line, no empty strings"
check 'jq -e "map(select(.kind == \"api_key\")) | length >= 2 and all(.access_token_state == \"api_key\")" "$OUT" > /dev/null' \
  "API-key rows say they are API keys"
check 'jq -e "map(select(.kind == \"borrowed\")) | length == 1 and all(.access_token_state == \"borrowed\")" "$OUT" > /dev/null' \
  "a borrowed login says so"
W=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'work' AND provider = 'nous' LIMIT 1")
q "UPDATE credential SET status = 'needs_reauth', status_reason = 'test' WHERE id = $W"
tl status --json
check 'jq -e --argjson w "$W" "map(select(.credential == \$w)) | length >= 2 and all(.access_token_state == \"needs_login\")" "$OUT" > /dev/null' \
  "a grant that needs a login is never called valid"
tl status
contains "credential $W needs a new login: used by default, work: one login replaces both: 'tokenledger login nous --credential $W'" \
  "status says what to run: one login for the grant the profiles share"
q "UPDATE credential SET status = 'uncertain' WHERE id = $W"
tl status --json
check 'jq -e --argjson w "$W" "map(select(.credential == \$w)) | all(.access_token_state == \"unknown_outcome\")" "$OUT" > /dev/null' \
  "an unknown outcome is not called valid either"
q "UPDATE credential SET status = 'active', status_reason = NULL WHERE id = $W"

# --- tables: fitted on a terminal, whole and plain in a pipe
tl status
check '! grep -q "$ESC" "$OUT" && ! grep -q "\.\.\.\|…" "$OUT"' "piped: no colour, nothing shortened"
check 'head -1 "$OUT" | grep -q "^profile  *provider  *entry  *label  *cred  *access"' "default columns"
check '! head -1 "$OUT" | grep -qw "source\|rt_fingerprint\|request_count"' "without the columns that do not matter"
for cols in 80 100 120; do
  pty "$cols" status
  expect 0 "status on a $cols-column terminal"
  check 'grep -q "$ESC\[3[0-9]m" "$RAW"' "a terminal gets colours"
  check '[ "$(widest)" -le "$cols" ]' "status fits $cols columns (widest line $(widest))"
  pty "$cols" audit
  check '[ "$(widest)" -le "$cols" ]' "audit fits $cols columns (widest line $(widest))"
  pty "$cols" import "$ROOT" --all-profiles --dry-run
  check '[ "$(widest)" -le "$cols" ]' "import fits $cols columns (widest line $(widest))"
done
NO_COLOR=1 pty 100 status
check '! grep -q "$ESC\[3[0-9]m" "$RAW"' "NO_COLOR turns them off"
tl status --wide
check 'head -1 "$OUT" | grep -q "rt_fingerprint" && head -1 "$OUT" | grep -q "strategy"' "--wide shows every column"
tl status --columns profile,access
expect 0 "--columns by header name"
check '[ "$(head -1 "$OUT" | tr -s " ")" = "profile access" ]' "--columns shows exactly those"
tl status --columns profile,bogus; expect 2 "an unknown column"; contains "the columns are: profile, provider" "lists the columns"
tl status --json --wide; expect 2 "--json and --wide exclude each other"
tl audit
check '! grep -q "{\"" "$OUT"' "audit shows the detail in words, not JSON"
check 'grep -q "file=~/.hermes/" "$OUT" && ! grep -q "$HOME" "$OUT"' "audit paths under HOME as ~"
tl audit --wide; check 'grep -q "{\"" "$OUT"' "audit --wide keeps the JSON"
tl audit --json --limit 3; check one_json "audit --json is one line"
check 'jq -e "length == 3 and all(.detail | type == \"object\")" "$OUT" > /dev/null' "audit JSON embeds details"
tl sync --all
check '! head -1 "$OUT" | grep -qw "cred\|note"' "sync leaves out columns that are empty in every row"
tl sync --all --json; check one_json "sync --json: one line, null not empty strings"

# --- every command takes --json, or says when it does not
tl --help
awk '/^commands:/ { on = 1; next } on && /^$/ { exit } on && /^  [a-z]/ { print $1 }' "$OUT" > "$WORK/commands"
for c in $(cat "$WORK/commands"); do
  tl "$c" --help
  check 'grep -q -- "--json" "$OUT"' "$c takes --json"
  check '[ -z "$(grep -E "^  --[a-z-]+( [A-Z:|]+)? *$" "$OUT")" ]' "$c: every option is described"
done
tl --help
check '[ "$(awk "/^commands:/ { on = 1; next } on && /^\$/ { exit } on && NF >= 4" "$OUT" | wc -l)" = "$(wc -l < "$WORK/commands")" ]' \
  "the top-level list says what each command does"
tl profile add --help; expect 0 "profile add --help"
contains "usage: tokenledger \[--db PATH\] profile add NAME \[--home DIR\] \[--create\] \[--json\]" "shows its own usage"
lacks "set-home" "and not the other subcommands'"
tl serve --json; expect 2 "serve refuses --json without --status"; contains "goes with --status" "and says why"
tl init --json; expect 0 "init --json"; check one_json "init --json is one line"
tl pool strategy nous --profile default --json; check 'jq -e ".strategy == \"fill_first\"" "$OUT" > /dev/null' "strategy JSON"

# --- --db anywhere on the line
OTHER="$WORK/other.db"
tl init --db "$OTHER"; expect 0 "--db after the command"
check '[ -f "$OTHER" ]' "--db after the command is honoured"
tl profile add solo --db "$OTHER"; expect 0 "--db after a subcommand"
tl --db "$OTHER" status --db "$DB"; expect 2 "two different ledgers"; contains "given twice" "says so"

# --- token: the default profile when there is one
tl token nous; expect 0 "token without --profile uses 'default'"
check '[ -n "$(cat "$OUT")" ]' "prints the token"
tl --db "$OTHER" token nous; expect 2 "no default profile"; contains "no 'default' profile" "says why --profile is needed"

# --- pool strategy read back
tl pool strategy nous --profile work; expect 0 "read the strategy"; contains "profile work uses fill_first for nous" "default strategy"
tl pool strategy nous round_robin --profile work; expect 0 "set it"
tl pool strategy nous --profile work; contains "uses round_robin" "reads back what was set"
tl status --profile work --wide; contains "round_robin" "status --wide shows it"

# --- report: until when the entry cools down
E=$(q "SELECT entry_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'default' AND provider = 'nous' LIMIT 1")
tl report nous --profile default --entry "$E" --status 429; expect 0 "report"
contains "cools down until 20[0-9][0-9]-" "says until when"
tl report nous --profile default --entry "$E" --status 401 --json; check one_json "report --json"
check 'jq -e "(.cooldown_until | fromdateiso8601) > now" "$OUT" > /dev/null' "the cooldown ends in the future"
tl status; contains "cooldown" "status shows the cooldown while it lasts"
q "UPDATE pool_entry SET cooldown_until = NULL, last_status = NULL"

# --- lineage as a tree and as Graphviz
for _ in 1 2 3; do tl refresh nous --profile work --force; done
expect 0 "three refreshes"
C=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'work' AND provider = 'nous' LIMIT 1")
tl lineage --credential "$C" --tree; expect 0 "lineage --tree"
check 'grep -q "^credential $C: nous, alice@example.com (active)" "$OUT"' "the tree names its credential"
check '[ "$(grep -cE "^  \* g[0-9]+ +(rotated|current) " "$OUT")" = 4 ]' "one line per generation, a chain at one indentation"
check 'grep -qE "^  \* g3 +current " "$OUT" && grep -qE "^  \* g0 +rotated +import " "$OUT"' "generation, state and origin"
check 'grep -q "presented by .*refresh" "$OUT"' "who presented it"
check '[ "$(grep -o "g[0-9]" "$OUT" | tr -d "\n")" = g0g1g2g3 ]' "oldest first"
pty 120 lineage --credential "$C" --tree
check 'grep -q "●" "$OUT"' "on a UTF-8 terminal the nodes are drawn"
# a branch: a second child of generation 1 (as an external rotation adopted beside ours would be)
P=$(q "SELECT id FROM refresh_token WHERE credential_id = $C AND generation = 1")
FAM=$(q "SELECT coalesce(family_id, id) FROM refresh_token WHERE id = $P")
q "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, issued_at, retired_at)
   VALUES ($C, $P, $FAM, 2, printf('%064x', 7), 'rejected', 'external', 1000, 2000)"
tl lineage --credential "$C" --tree
check 'grep -qE "^  \+-\* g2 +rejected +external" "$OUT"' "a second child branches off"
check 'grep -qE "^  \* g2 +rotated" "$OUT" && grep -qE "^  \* g3 +current" "$OUT"' "the main line continues below"
q "UPDATE credential SET label = 'a\"quote\\\\back{brace}' WHERE id = $C"
tl lineage --dot; expect 0 "lineage --dot"
check 'head -1 "$OUT" | grep -q "^digraph lineage {$" && tail -1 "$OUT" | grep -q "^}$"' "a digraph"
check '[ "$(grep -c -- "->" "$OUT")" = "$(q "SELECT count(*) FROM refresh_token WHERE parent_id IS NOT NULL")" ]' "one edge per parent"
check '[ "$(grep -c "subgraph \"cluster_credential_" "$OUT")" = "$(q "SELECT count(DISTINCT credential_id) FROM refresh_token")" ]' \
  "one cluster per credential"
pat='a\"quote\\\\back{brace} (active)"'
check 'grep -qF -- "$pat" "$OUT"' "quotes and backslashes of a label are escaped"
if command -v dot > /dev/null; then
  set +e; dot -Tsvg "$OUT" > "$WORK/lineage.svg" 2> "$WORK/dot.err"; DRC=$?; set -e
  check '[ "$DRC" = 0 ] && [ ! -s "$WORK/dot.err" ] && grep -q "<svg" "$WORK/lineage.svg"' "dot(1) reads it: $(head -c 300 "$WORK/dot.err")"
else
  echo "note: dot(1) is not installed (Debian: graphviz); the graph was checked by structure only"
fi
tl lineage --tree --json; expect 2 "--tree and --json exclude each other"

# --- hints name the real profile
seed=$(admin seed)
hermes_doc "$seed" bob@example.com b0b0b0 > "$WORK/bob.json"
tl profile add bob
tl import "$WORK/bob.json" --profile bob; expect 0 "bob's grant"
B=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'bob' AND provider = 'nous' LIMIT 1")
# the incident: an outside script spends bob's refresh token; the portal then revokes the family
printf 'x-nous-refresh-token: %s\n' "$(rt_of "$WORK/bob.json")" > "$WORK/hdr"
curl -s -o /dev/null -X POST "$URL/api/oauth/token" -H @"$WORK/hdr" --data-binary 'grant_type=refresh_token&client_id=hermes-cli'
tl refresh nous --profile bob --force; expect 5 "the portal rejects a spent grant"
contains "hint: log in again with 'tokenledger login nous --profile bob'" "the hint names the real profile"
tl token nous --profile bob; expect 5 "the dead grant stays dead"
contains "tokenledger login nous --profile bob" "so does the next failure"
seed=$(admin seed)
hermes_doc "$seed" carl@example.com c4c4c4 > "$WORK/carl.json"
tl profile add carl
tl import "$WORK/carl.json" --profile carl; expect 0 "carl's grant"
K=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'carl' AND provider = 'nous' LIMIT 1")
admin fault "kind=lose&count=1" > /dev/null
tl refresh nous --profile carl --force; expect 6 "a lost answer"
contains "recover --credential $K" "the failure says how to decide"
tl recover --credential "$K" --mark-dead; expect 0 "recover --mark-dead"
contains "log in again with 'tokenledger login nous --profile carl'" "recover names the login command"
tl profile add fresh --home "$WORK/nothere"; expect 3 "a missing home"; contains "add --create" "says how to create it"
tl profile add fresh --home nope; expect 3 "a missing home (short)"; contains "hint: add --create" "says how to create it"
tl status --profile ghost; expect 3 "an unknown profile"; contains "hint: add it with 'tokenledger profile add ghost'" "says how to add it"

# --- credential rm: out of every pool, its lineage stays
tl credential rm "$C" --force; expect 2 "a grant Hermes' files hold is kept, even with --force"
contains "live in Hermes files" "says why"; contains "hint: stop using it in Hermes first" "and what to do"
check '[ "$(q "SELECT count(*) FROM pool_entry WHERE credential_id = $C")" -gt 0 ]' "still in its pools"
tl profile add hand
seed_rt "$WORK/rt-hand"
tl credential add nous --profile hand --refresh-token-file "$WORK/rt-hand"; expect 0 "a grant added by hand"
H=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'hand'")
tl credential rm "$H"; expect 2 "a live credential is kept"; contains "hint: add --force" "says how to give it up"
tl credential rm "$H" --force; expect 0 "credential rm --force"
contains "removed: 1 pool entry gone, refresh token [0-9a-f]*\.\.\. retired" "says what it removed"
contains "lineage --credential $H" "points at its lineage"
check '[ "$(q "SELECT count(*) FROM pool_entry WHERE credential_id = $H")" = 0 ]' "out of every pool"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE credential_id = $H AND state = \"retired\" AND secret IS NULL")" = 1 ]' \
  "its token retired, no plaintext left"
tl lineage --credential "$H" --tree; contains "retired" "its lineage stays"
tlin "$WORK/rt-hand" check-rt; expect 4 "its refresh token is spent for the ledger"
tl credential add nous --profile hand --refresh-token-file "$WORK/rt-hand"; expect 4 "and refused if it comes back"
tl credential list --json
check 'jq -e --argjson c "$H" "map(select(.credential == \$c)) | .[0].status == \"needs_reauth\" and .[0].profiles == null and (.[0].reason | test(\"removed\"))" "$OUT" > /dev/null' \
  "credential list shows it removed"
tl credential rm "$B"; expect 0 "a dead grant goes without --force"
check '[ "$(q "SELECT count(*) FROM pool_entry WHERE credential_id = $B")" = 0 ]' "out of bob's pool"
tl audit --credential "$B" --json
check 'jq -e "any(.[]; .event == \"credential_removed\")" "$OUT" > /dev/null' "audited"
tl credential rm 99999; expect 3 "an unknown credential"
# An attempt whose owner died (its lease long gone) is not "being presented right now": it is settled unknown first.
tl profile add gone
seed_rt "$WORK/rt-gone"
tl credential add nous --profile gone --refresh-token-file "$WORK/rt-gone"; expect 0 "another grant by hand"
G=$(q "SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = 'gone'")
q "UPDATE refresh_token SET state = 'presented' WHERE credential_id = $G; INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, started_at, lease_until) SELECT $G, id, 'elsewhere', 'boot', 1, 1, 1000, 2000 FROM refresh_token WHERE credential_id = $G"
tl credential rm "$G" --force; expect 0 "a dead owner's attempt does not block the removal"
check '[ "$(q "SELECT outcome FROM refresh_attempt WHERE credential_id = $G")" = unknown ]' "its attempt is on record as unknown"

# --- check-rt asks on a terminal, without echo
seed_rt "$WORK/rt-typed"
mkfifo "$WORK/tty-in"
printf -v cmd '%q ' "$TL_BIN" check-rt
TERM=xterm script -q -f -e -c "$cmd" "$WORK/typescript" < "$WORK/tty-in" > /dev/null 2>&1 &
sp=$!
exec 3> "$WORK/tty-in"
for _ in $(seq 200); do grep -q "Paste the refresh token" "$WORK/typescript" 2> /dev/null && break; sleep 0.05; done
check 'grep -q "Paste the refresh token (it is not shown)" "$WORK/typescript"' "check-rt asks for the token on a terminal"
sleep 0.2
cat "$WORK/rt-typed" >&3
exec 3>&-
set +e; wait $sp; RC=$?; set -e
cat "$WORK/typescript" >> "$ALL"
expect 3 "the typed token is checked (unknown to the ledger)"
check 'grep -q "unknown to the ledger" "$WORK/typescript"' "and answered"
check '! grep -qF "$(cat "$WORK/rt-typed")" "$WORK/typescript"' "the typed token was not echoed"

# --- progress: on a terminal only
admin config "approve_after=3" > /dev/null
pty 100 login nous --profile bob; expect 0 "login on a terminal"
check 'grep -q "waiting for approval.*left)" "$OUT"' "login shows the time left"
admin config "approve_after=3" > /dev/null
tl login nous --profile bob; expect 0 "login piped"
check '! grep -q "$ESC\|left)" "$ERR"' "no progress line when stderr is not a terminal"
contains "Waiting for approval" "a plain line instead"
admin config "approve_after=0" > /dev/null
pty 100 keep-fresh --interval 2 --count 2 --watch; expect 0 "keep-fresh --watch on a terminal"
check 'grep -q "next round (watching Hermes.*left)" "$OUT"' "keep-fresh shows when the next round is due"
check 'grep -qF "$ESC[K" "$RAW"' "and erases its line"

# --- keep-fresh as a service
tl keep-fresh --once --ahead 86400 --json; expect 0 "a provider without an endpoint is not a failure"
check one_json "one JSON line"
check 'jq -e "all(.[]; .provider != null)" "$OUT" > /dev/null' "every row names its provider"
check 'jq -e "any(.[]; .provider == \"qwen-oauth\" and .action == \"attention\" and (.detail | test(\"endpoint\")))" "$OUT" > /dev/null' \
  "the grant without an endpoint needs attention"
tl keep-fresh --once --ahead 0; expect 0 "--once"; contains "hint: 'tokenledger provider set qwen-oauth --token-url URL --client-id ID'\|tokenledger provider set qwen-oauth" "says what to run"
"$TL_BIN" keep-fresh --interval 1 --ahead 0 > "$WORK/kf.out" 2> "$WORK/kf.err" &
kf=$!
for _ in $(seq 200); do [ "$(grep -c " round [0-9]*:" "$WORK/kf.out")" -ge 3 ] && break; sleep 0.05; done
kill -TERM $kf; set +e; wait $kf; RC=$?; set -e
cat "$WORK/kf.out" "$WORK/kf.err" >> "$ALL"
expect 0 "SIGTERM stops keep-fresh with exit 0"
check '[ "$(grep -c " round [0-9]*:" "$WORK/kf.out")" -ge 3 ]' "at least three rounds"
check '! grep -v "^  " "$WORK/kf.out" | grep -vqE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z round [0-9]+: "' \
  "one line per round, each with its time and number ($(head -3 "$WORK/kf.out" | tr '\n' '|'))"
first=$(awk '/ round 1:/ { on = 1; next } / round 2:/ { on = 0 } on && /: attention/' "$WORK/kf.out" | wc -l)
check '[ "$first" -ge 1 ] && [ "$(grep -c ": attention" "$WORK/kf.out")" = "$first" ]' \
  "what needs attention is listed after the first round and not repeated ($first lines)"
check 'grep -q "(qwen-oauth): attention: .*endpoint" "$WORK/kf.out"' "with the reason"
check 'grep -qE "round 1: .*needs? attention \(credential " "$WORK/kf.out"' "the round line counts it"
check '! grep -q "failed" "$WORK/kf.out"' "nothing failed"
# a failing round, then SIGTERM: still exit 0
q "UPDATE credential SET expires_at = 1000, refresh_not_before = NULL WHERE status = 'active' AND provider = 'nous'"
admin fault "kind=500&count=1000" > /dev/null
"$TL_BIN" keep-fresh --interval 1 --ahead 0 > "$WORK/kf2.out" 2>&1 &
kf=$!
for _ in $(seq 200); do grep -q " round 2:" "$WORK/kf2.out" && break; sleep 0.05; done
kill -TERM $kf; set +e; wait $kf; RC=$?; set -e
cat "$WORK/kf2.out" >> "$ALL"
expect 0 "SIGTERM after a failed round exits 0 (stopping the unit does not mark it failed)"
check 'grep -qE "round 1: .*[0-9]+ failed \(credential " "$WORK/kf2.out"' "the failure is on the round line"
check 'grep -q "): failed: nous answered HTTP 500" "$WORK/kf2.out"' "with what the server said"
check 'grep -qE "round 2: .*waiting" "$WORK/kf2.out"' "the next round waits for the backoff"
q "UPDATE credential SET refresh_not_before = NULL WHERE status = 'active' AND provider = 'nous'"
tl keep-fresh --once --ahead 0; expect 7 "a round with a failure exits 7"
admin fault "kind=500&count=0" > /dev/null
"$TL_BIN" keep-fresh --interval 1 --count 2 --json > "$WORK/kf3.out" 2>&1 || true
check '[ "$(wc -l < "$WORK/kf3.out")" = 2 ] && jq -e "type == \"array\"" "$WORK/kf3.out" > /dev/null' "--json: one report per round, one line each"

# --- 80 columns, with Hermes' longest profile names: every table, the tree, serve --status and --help fit an
# 80-column terminal and COLUMNS=80 on a pipe; columns with one value go first (and are said below), then
# the extra ones, before any label is cut; the audit's summary wraps rather than being cut
L1=research-assistant-for-the-customer-support-team
L2=$(printf 'x%.0s' $(seq 64)); L2="zz-long-${L2:8}" # 64 characters, Hermes' longest
WROOT="$HOME/wide-root"
WDB="$WORK/wide.db"
make_root "$WROOT" default "$L1" "$L2"
mkdir -p "$WROOT/profiles/codex-$L1" "$WROOT/profiles/keys-$L1"
jq '.providers = {"qwen-oauth": .providers."openai-codex".tokens} | .active_provider = "qwen-oauth"' \
  "$CORPUS/03_codex_tokens.json" > "$WROOT/profiles/codex-$L1/auth.json" # no endpoint: never refreshed here
cp "$CORPUS/06_api_keys_custom.json" "$WROOT/profiles/keys-$L1/auth.json"
chmod 600 "$WROOT"/profiles/*/auth.json
tl --db "$WDB" init; expect 0 "a second ledger"
tl --db "$WDB" status; expect 0 "status of an empty ledger"
contains "no credential yet" "status with no credential says so"
contains "tokenledger import ~/.hermes --all-profiles" "and what to run"
tl --db "$WDB" provider set nous --token-url "$URL/api/oauth/token"; expect 0 "nous for the wide ledger"
tl --db "$WDB" profile add empty; tl --db "$WDB" status --profile empty; expect 0 "status of a profile without credentials"
contains "tokenledger login nous -p empty" "says how to log one in"
tl --db "$WDB" import "$WROOT" --all-profiles; expect 0 "import a root with long profile names"
tl --db "$WDB" refresh nous --profile "$L2" --force; expect 0 "a refresh for the longest profile name"
tl --db "$WDB" refresh nous -p "$L2" --force; expect 0 "-p is --profile"
# Hermes rotates by itself in one profile: the audit's summary gets a time
ans=$(curl -sf -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $(rt_of "$(auth "$WROOT" "$L1")")" -d grant_type=refresh_token -d client_id=hermes-cli)
jq --arg rt "$(jq -r .refresh_token <<< "$ans")" --arg at "$(jq -r .access_token <<< "$ans")" --arg now "$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)" \
  '.providers.nous.refresh_token = $rt | .providers.nous.access_token = $at | .providers.nous.obtained_at = $now
   | .credential_pool.nous[0].refresh_token = $rt | .credential_pool.nous[0].access_token = $at' \
  "$(auth "$WROOT" "$L1")" > "$WORK/ext.json" && cat "$WORK/ext.json" > "$(auth "$WROOT" "$L1")"
tl --db "$WDB" sync --all; expect 0 "sync adopts Hermes' rotation"
tl --db "$WDB" audit --json
check 'jq -e "[.[] | select(.event == \"profile_added\")] | length >= 5 and all(.profile == .detail.profile)" "$OUT" > /dev/null' \
  "the audit's profile column names the profile an event is about"
tl --db "$WDB" audit
check 'grep -qE "obtained_at=20[0-9]{2}-[0-9]{2}-[0-9]{2}T" "$OUT" && ! grep -qE "obtained_at=[0-9]{12}" "$OUT"' \
  "times in the audit's summary are readable"
wide_cmds=("status" "lineage" "lineage --tree" "provider list" "serve --status" "audit" "history" "credential list"
  "profile list" "doctor" "import $WROOT --all-profiles --dry-run" "sync --all" "keep-fresh --once --ahead 0")
for c in "${wide_cmds[@]}"; do
  want=0; [ "$c" = "serve --status" ] && want=3
  # shellcheck disable=SC2086
  COLUMNS=80 tl --db "$WDB" $c
  expect "$want" "$c"
  check '[ "$(LC_ALL=C.UTF-8 wc -L < "$OUT")" -le 80 ]' "COLUMNS=80 on a pipe: $c fits ($(LC_ALL=C.UTF-8 wc -L < "$OUT") columns)"
  # shellcheck disable=SC2086
  pty 80 --db "$WDB" $c
  expect "$want" "$c on a terminal"
  check '[ "$(widest)" -le 80 ]' "an 80-column terminal: $c fits ($(widest) columns)"
  # shellcheck disable=SC2086
  tl --db "$WDB" $c
  cp "$OUT" "$WORK/piped"
  check '[ "$(LC_ALL=C.UTF-8 wc -L < "$WORK/piped")" -gt 80 ] || [ "$c" = doctor ] || [ "$c" = "serve --status" ]' \
    "without COLUMNS a pipe gets $c whole ($(LC_ALL=C.UTF-8 wc -L < "$WORK/piped") columns)"
done
pty 80 --db "$WDB" status
check 'head -1 "$OUT" | grep -q "^profile  *provider  *label  *cred  *access"' "status at 80: profile, provider, label, cred, access"
check '! head -1 "$OUT" | grep -qw "entry\|gen"' "the entry id and the generation go before any label is cut"
check 'grep -q "^research-as" "$OUT"' "a long profile name keeps its head ($(sed -n 2p "$OUT"))"
pty 80 --db "$WDB" lineage --credential 1
check 'grep -q "^every row: .*cred 1" "$OUT" && ! head -1 "$OUT" | grep -qw cred' "a column with one value is said once, below the table"
pty 80 --db "$WDB" audit
check 'grep -q "Hermes rotated\|obtained_at=20" "$OUT"' "the audit's summary is not cut: it wraps"
check '! grep -q "…" <(grep "external_rotation" -A3 "$OUT")' "no ellipsis in the summary"
pty 80 --db "$WDB" lineage --tree
check 'grep -q "by .*…" "$OUT"' "the tree cuts who presented a token, keeping the rest"
COLUMNS=80 tl --db "$WDB" status --columns profile,entry,provider,label,cred,access,expires,gen,rt
check 'head -1 "$OUT" | grep -qw entry && head -1 "$OUT" | grep -qw gen' "--columns keeps every column asked for"
pty 200 status
check 'head -1 "$OUT" | grep -qw entry' "a wide terminal shows the entry id"
# --help: min(terminal, 80)
for cols in 80 60; do
  for c in "" status import "profile add" keep-fresh serve; do
    # shellcheck disable=SC2086
    pty "$cols" $c --help
    check '[ "$(widest)" -le "$cols" ]' "'${c:-tokenledger} --help' wraps at $cols ($(widest))"
  done
done
tl --help; check '[ "$(wc -L < "$OUT")" -le 80 ]' "piped --help wraps at 80 ($(wc -L < "$OUT"))"
COLUMNS=200 tl serve --help; check '[ "$(wc -L < "$OUT")" -le 80 ] && [ "$(wc -L < "$OUT")" -ge 70 ]' "a wide terminal's help still wraps at 80"

# --- JSON that scripts can trust: flags are booleans
tl --db "$WDB" serve --status --json; expect 3 "serve is down"
check 'jq -e ".running == false" "$OUT" > /dev/null' "serve --status --json: running is false"
set +e; jq -e .running "$OUT" > /dev/null; JRC=$?; set -e
check '[ "$JRC" = 1 ]' "jq -e .running fails while serve is down (jq exit $JRC)"
tl --db "$WDB" status --json
check 'jq -e "all(.[]; (.strict | type) == \"boolean\") and all(.[]; has(\"access_token_state\") and (has(\"access_token\") | not))" "$OUT" > /dev/null' \
  "status: strict is a boolean; access_token_state, no access_token key"
tl --db "$WDB" profile list --json; check 'jq -e "all(.[]; .strict == false)" "$OUT" > /dev/null' "profile list: strict is false"
tl --db "$WDB" doctor --json; check 'jq -e "all(.[]; (.ok | type) == \"boolean\")" "$OUT" > /dev/null' "doctor: ok is a boolean"
tl --db "$WDB" refresh nous --profile "$L1" --json; check 'jq -e ".refreshed | type == \"boolean\"" "$OUT" > /dev/null' "refresh: refreshed is a boolean"

# --- paths are shown, tokens are not
tl --db "$WDB" profile add zed --home "$HOME/no/such/directory/for/this/profile"; expect 3 "a missing home"
contains "'~/no/such/directory/for/this/profile'" "a path option is shown, as ~/..."
lacks "shell history" "without the token warning"
tl --db "$WDB" credential add nous --profile zed --refresh-token-file "$HOME/no/such/directory/refresh-token.txt"; expect 3 "a missing token file"
contains "'~/no/such/directory/refresh-token.txt'" "--refresh-token-file is shown"
tl --db "$WORK/no/such/directory/for/the/ledger.db" status; expect 3 "a missing ledger"
lacks "$WORK/home" "the path is not printed with \$HOME spelled out"
tl --db "$WDB" import "$WORK/eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9x"; expect 3 "a token-like path"
lacks "eyJhbGciOiJIUzI1Ni" "a value that looks like a token is not echoed"; contains "shell history" "and says why"

# --- did you mean: commands, options, subcommands, profiles, providers; no hint creates a misspelled name
tl stauts; expect 2 "a misspelled command"; contains "did you mean 'tokenledger status'" "suggests the command"
tl --db "$WDB" status --profil "$L1"; expect 2 "a misspelled option"; contains "did you mean --profile" "suggests the option"
tl --db "$WDB" profile ad zed; expect 2 "a misspelled subcommand"; contains "did you mean 'tokenledger profile add'" "suggests it"
tl --db "$WDB" token nous --profile defualt; expect 3 "a misspelled profile"; contains "did you mean profile 'default'" "suggests the profile"
lacks "profile add defualt" "and does not suggest creating the misspelled one"
tl --db "$WDB" token nuos --profile default; expect 3 "a misspelled provider"; contains "did you mean provider 'nous'" "suggests the provider"
lacks "credential add nuos\|provider set nuos" "and does not suggest creating it"
tl --db "$WDB" pool strategy nuos --profile default; expect 3 "a misspelled provider (pool)"; contains "did you mean provider 'nous'" "suggests it"
tl --db "$WDB" provider set nuos --skew 60; expect 2 "provider set of a misspelled provider"; contains "did you mean provider 'nous'" "suggests it"
tl --db "$WDB" status --columns profile,acess; expect 2 "a misspelled column"; contains "did you mean access?" "suggests the column"
tl --db "$WDB" status --profile ghost; expect 3 "a profile with no near name"; contains "profile add ghost" "the add hint stays"
tl status --version; expect 0 "--version after a command"; contains "^tokenledger [0-9]" "prints the version"
tl version; expect 0 "tokenledger version"
tl --db "$WDB" status -p "$L1" --json; check 'jq -e "length >= 1 and all(.[]; .profile == \"'"$L1"'\")" "$OUT" > /dev/null' "-p selects the profile"

# --- refresh --force when another process just refreshed (a grant without Hermes files: the claim waits for it)
tl --db "$WDB" profile add solo; tl --db "$WDB" profile add duo
seed_rt "$WORK/rt-solo"
tl --db "$WDB" credential add nous --profile solo --refresh-token-file "$WORK/rt-solo"; expect 0 "a grant by hand"
tl --db "$WDB" credential add nous --profile duo --refresh-token-file "$WORK/rt-solo"; expect 0 "shared by a second profile"
tl --db "$WDB" refresh nous --profile solo; expect 0 "its first refresh"
admin fault "kind=slow&ms=2000&count=1" > /dev/null
"$TL_BIN" --db "$WDB" refresh nous --profile solo --force > "$WORK/first.out" 2>&1 &
fp=$!
for _ in $(seq 200); do [ "$(sqlite3 "$WDB" "SELECT count(*) FROM refresh_attempt WHERE outcome = 'in_flight'" 2> /dev/null)" = 1 ] && break; sleep 0.05; done
tl --db "$WDB" refresh nous --profile duo --force; expect 0 "a forced refresh while another process refreshes the same grant"
set +e; wait $fp; FRC=$?; set -e
cat "$WORK/first.out" >> "$ALL"
contains "refreshed by another process just now" "says another process refreshed it, not 'already fresh (use --force)'"
lacks "use --force" "and does not tell to use the --force it was given"
check '[ "$FRC" = 0 ] && grep -q "refreshed;" "$WORK/first.out"' "the first one refreshed"

# --- token falls back to the next usable pool entry (as Hermes' pool does)
tl --db "$WDB" profile add pool2
seed_rt "$WORK/rt-p1"; seed_rt "$WORK/rt-p2"
tl --db "$WDB" credential add nous --profile pool2 --refresh-token-file "$WORK/rt-p1" --label first; expect 0 "first entry"
tl --db "$WDB" credential add nous --profile pool2 --refresh-token-file "$WORK/rt-p2" --label second; expect 0 "second entry"
P1=$(sqlite3 "$WDB" "SELECT credential_id FROM pool_entry e JOIN credential c ON c.id = e.credential_id WHERE c.label = 'first'")
printf 'x-nous-refresh-token: %s\n' "$(cat "$WORK/rt-p1")" > "$WORK/hdr1"
curl -s -o /dev/null -X POST "$URL/api/oauth/token" -H @"$WORK/hdr1" --data-binary 'grant_type=refresh_token&client_id=hermes-cli'
tl --db "$WDB" token nous --profile pool2; expect 0 "the first grant is dead: token falls back to the second"
check '[ -n "$(cat "$OUT")" ]' "and prints a token"
check '[ "$(sqlite3 "$WDB" "SELECT status FROM credential WHERE id = $P1")" = needs_reauth ]' "the first grant is on record as needing a login"
tl --db "$WDB" token nous --profile pool2 --json
check 'jq -e ".credential != '"$P1"'" "$OUT" > /dev/null' "the next call goes to the live entry"
tl --db "$WDB" status --profile pool2; contains "needs a new login" "status says the first one needs a login"

no_secret_leak "$WORK/rt-w" "$WORK/rt-typed" "$WORK/rt-p1" "$WORK/rt-p2" "$WORK/rt-solo"
finish
