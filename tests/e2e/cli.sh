#!/usr/bin/env bash
# cli.sh - the command line end to end: defaults, help, usage errors, exit
# codes, refusals that leave every file as it was, JSON, and no secret in any
# output. Runs under valgrind when TL_WRAP says so.
. "$(dirname "$0")/lib.sh"
set -e

# --- default location and modes
tl init
expect 0 "init with the default database"
check '[ "$(stat -c %a "$HOME/.hermes")" = 700 ]' "default directory is 0700"
check '[ "$(stat -c %a "$HOME/.hermes/tokenledger.db")" = 600 ]' "default database is 0600"
DB="$WORK/env/ledger.db"
TOKENLEDGER_DB="$DB" tl init
expect 0 "init at \$TOKENLEDGER_DB"
check '[ -f "$DB" ]' "TOKENLEDGER_DB is honoured"
D="--db $DB"

# --- help everywhere
for c in init profile provider credential login import export sync keep-fresh compact status lineage audit history check-rt doctor token refresh recover report pool; do
  tl $D $c --help
  expect 0 "$c --help"
  contains "usage: tokenledger" "$c --help prints usage"
done
tl --help; expect 0 "--help"; contains "Exit codes" "--help documents exit codes"
tl --version; expect 0 "--version"; contains "schema [0-9][0-9]*)" "--version names the schema"

# --- usage errors: exit 2, nothing changes
before=$(snapshot "$DB")
tl $D frobnicate; expect 2 "unknown command"; contains "unknown command 'frobnicate'" "names the command"
tl $D status --frob; expect 2 "unknown option"; contains "unknown option '--frob'" "names the option"
tl $D profile add; expect 2 "missing profile name"
tl $D profile add 'Bad Name'; expect 2 "invalid profile name"; contains "invalid" "explains the name rule"
tl $D lineage --credential abc; expect 2 "non-numeric credential"
tl $D report nous --profile x --entry y --status 999; expect 2 "bad HTTP status"
echo "rt-on-argv-123" > "$WORK/rt-argv"
tl $D credential add nous --profile a --refresh-token rt-on-argv-123; expect 2 "RT on argv refused"
contains "never taken from the command line" "explains why"
tl $D credential add nous --profile a --refresh-token=rt-on-argv-123; expect 2 "RT on argv (=) refused"
tl $D token nous --profile a --access-token x; expect 2 "AT on argv refused"
check '[ "$before" = "$(snapshot "$DB")" ]' "usage errors leave the ledger untouched"

# --- profiles, providers, credentials
tl $D profile add alice; expect 0 "profile add"
tl $D profile add alice; expect 12 "duplicate profile"
tl $D profile add bob --home "$WORK"; expect 0 "profile add with home"
tl $D profile add carol --home "$WORK/nowhere"; expect 3 "missing home"
tl $D profile list --json; expect 0 "profile list --json"
check 'jq -e "length == 2 and .[0].name == \"alice\"" "$OUT" >/dev/null' "profile list JSON"
tl $D provider set acme --token-url http://example.com/t --client-id c; expect 2 "http to a non-loopback host"
contains "https" "explains the https rule"
tl $D provider set acme --token-url https://auth.example.com/token; expect 2 "new provider without client id"
tl $D provider set acme --token-url https://auth.example.com/token --client-id c --rt-in-body --grace 30; expect 0 "provider set"
tl $D provider list --json; expect 0 "provider list"
check 'jq -e ".[] | select(.name == \"acme\") | .rt_in == \"body:refresh_token\" and .grace_s == 30" "$OUT" >/dev/null' "provider saved"

printf 'rt-alice-0001\n' > "$WORK/rt1"
printf 'at-alice-0001\n' > "$WORK/at1"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt1" --access-token-file "$WORK/at1" \
  --expires-at 2099-01-01T00:00:00Z --label alice@example.com
expect 0 "credential add"
tlin "$WORK/rt1" $D credential add nous --profile bob --refresh-token-file -
expect 0 "same RT from stdin attaches bob"
check '[ "$(q "SELECT count(*) FROM credential")" = 1 ]' "one grant, one credential"
check '[ "$(q "SELECT count(*) FROM pool_entry")" = 2 ]' "two pool entries"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/missing"; expect 3 "missing token file"
printf '' > "$WORK/empty"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/empty"; expect 2 "empty token file"
tl $D credential add nous --profile ghost --refresh-token-file "$WORK/rt1"; expect 3 "unknown profile"
tl $D credential add nope --profile alice --refresh-token-file "$WORK/rt1"; expect 3 "unknown provider"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt1" --expires-at someday; expect 2 "bad time"

# --- read commands, text and JSON
tl $D status; expect 0 "status"; contains "alice" "status lists alice"
tl $D status --json; expect 0 "status --json"
check 'jq -e "length == 2 and .[0].access_token_state == \"valid\" and .[0].rt_generation == 0" "$OUT" >/dev/null' "status JSON"
tl $D status --profile ghost; expect 3 "status of an unknown profile"
tl $D lineage --json; expect 0 "lineage --json"
check 'jq -e ".[0].state == \"current\" and .[0].origin == \"import\"" "$OUT" >/dev/null' "lineage JSON"
tl $D lineage --credential 99; expect 3 "lineage of an unknown credential"
tl $D audit --json --limit 2; expect 0 "audit --json"
check 'jq -e "length == 2 and (.[1].detail | type) == \"object\"" "$OUT" >/dev/null' "audit JSON embeds details"
tl $D token nous --profile alice; expect 0 "token with a fresh access token"
check '[ "$(cat "$OUT")" = at-alice-0001 ]' "token prints the access token"
tl $D token nous --profile alice --json; expect 0 "token --json"
check 'jq -e ".access_token == \"at-alice-0001\" and .expires_at == \"2099-01-01T00:00:00Z\" and (.entry_id | length) == 6" "$OUT" >/dev/null' "token JSON"
: > "$ALL.keep"; cp "$ALL" "$ALL.keep"  # token output legitimately holds the AT; scan the rest below

# --- check-rt and spent tokens
tlin "$WORK/rt1" $D check-rt; expect 0 "check-rt of the current RT"; contains "current: generation 0" "says current"
printf 'never-seen\n' > "$WORK/rt-new"
tlin "$WORK/rt-new" $D check-rt --json; expect 3 "check-rt of an unknown RT"
check 'jq -e ".verdict == \"unknown_to_ledger\"" "$OUT" >/dev/null' "check-rt JSON verdict"
sqlite3 "$DB" "UPDATE refresh_token SET state='rotated', secret=NULL, retired_at=1000"
tlin "$WORK/rt1" $D check-rt; expect 4 "check-rt of a spent RT"; contains "spent: generation 0" "explains the spent RT"
before=$(snapshot "$DB")
n=$(q "SELECT count(*) FROM audit_event WHERE event='reuse_blocked'")
tl $D profile add dave
tl $D credential add nous --profile dave --refresh-token-file "$WORK/rt1"; expect 4 "re-adding a spent RT"
contains "already spent" "names the reuse"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event=\"reuse_blocked\"")" = $((n + 1)) ]' "reuse_blocked audited"
check '[ "$(q "SELECT count(*) FROM pool_entry p JOIN profile f ON f.id=p.profile_id WHERE f.name=\"dave\"")" = 0 ]' "nothing stored for dave"

# --- more usage errors, each a specific message and exit code
tl $D pool strategy nous bogus --profile alice; expect 2 "unknown strategy"; contains "fill_first" "lists the strategies"
tl $D pool strategy nous round_robin --profile ghost; expect 3 "strategy for an unknown profile"
tl $D report nous --profile alice --entry nope --status 429; expect 3 "report on an unknown entry"
tl $D recover --credential 1; expect 2 "recover without a decision"; contains "exactly one of --assume-not-sent, --mark-dead or --rescue" "names the choices"
tl $D recover --credential 1 --mark-dead; expect 2 "recover with no unknown outcome"
tl $D keep-fresh --once --ahead soon; expect 2 "keep-fresh with a bad --ahead"
tl $D import; expect 2 "import without a path"
tl $D check-rt rt-typed-on-the-command-line-0123456789; expect 2 "a token as an argument"
lacks "rt-typed-on-the-command-line" "the error does not echo it"
# a token typed or pasted anywhere on the command line is never echoed, in any form
T=tokAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
tl $D check-rt -$T; expect 2 "a token as a single-dash option"
tl $T; expect 2 "a token as the command"
tl $D status --$T; expect 2 "a token as a long option"
tl $D status --$T=x; expect 2 "a token as a long option with a value"
tl -$T; expect 2 "a token as a global option"
tl $D profile $T; expect 2 "a token as a subcommand"
tl $D lineage --credential $T; expect 2 "a token as a number"
tl $D credential add nous --profile alice --refresh-token-file $T; expect 3 "a token as a file name"
tl $D check-rt --refresh-token-file $T; expect 3 "a token as check-rt's file name"
tl $D import $T; expect 3 "a token as an import path"
tl $D profile add zed --home $T; expect 3 "a token as a home"
check '! grep -q "AAAAAAAAAAAAAAAAAAAAAAAA" "$ALL"' "no message echoed any part of it"
ESC=$(printf '\033')
tl $D status "--a${ESC}[2Jb"; expect 2 "an option with an escape sequence"
check '! grep -q "$ESC" "$ERR" && grep -q "u001b" "$ERR"' "is shown escaped"
tl $D sync --profile alice --all; expect 2 "sync with both --profile and --all"

# --- compact keeps fingerprints and audit
fps=$(q "SELECT count(*) FROM refresh_token"); au=$(q "SELECT count(*) FROM audit_event")
tl $D compact --keep-days 0 --json; expect 0 "compact"
check 'jq -e ".attempts_deleted >= 0 and .bytes_after > 0" "$OUT" >/dev/null' "compact reports what it did"
check '[ "$(q "SELECT count(*) FROM refresh_token")" = "$fps" ] && [ "$(q "SELECT count(*) FROM audit_event")" -gt "$au" ]' "fingerprints and audit rows kept"
tl $D compact --keep-days x; expect 2 "compact with a bad --keep-days"

# --- doctor
tl $D doctor; expect 0 "doctor on a healthy ledger"
tl $D doctor --json; check 'jq -e "all(.[]; .ok == true)" "$OUT" >/dev/null' "doctor JSON all ok"

# --- refusals of bad files, each leaving bytes untouched
cp "$DB" "$WORK/copy.db"; chmod 644 "$WORK/copy.db"; rm -f "$WORK/copy.db-wal" "$WORK/copy.db-shm"
sqlite3 "$DB" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
cp "$DB" "$WORK/open.db"; chmod 644 "$WORK/open.db"
b=$(bytes "$WORK/open.db")
tl --db "$WORK/open.db" status; expect 9 "world-readable ledger"; contains "chmod 600" "says how to fix"
contains "hint: 'tokenledger doctor --fix'" "the tool adds its own repair"
tl --db "$WORK/none/x.db" status; expect 3 "no ledger"; contains "no ledger here" "says what is missing"
contains "hint: create one with 'tokenledger init'" "the hint says how to make one"
check '[ "$b" = "$(bytes "$WORK/open.db")" ] && [ "$(stat -c %a "$WORK/open.db")" = 644 ]' "insecure file untouched"
tl --db "$WORK/open.db" doctor --fix; expect 0 "doctor --fix repairs the mode"
check '[ "$(stat -c %a "$WORK/open.db")" = 600 ]' "mode is 0600 after doctor --fix"
# A directory others share (like /tmp): never taken from them; nothing changes for a missing ledger.
mkdir "$WORK/pub"; chmod 1777 "$WORK/pub"
tl --db "$WORK/pub/t.db" init; expect 9 "no ledger in a directory others share"
contains "keep the ledger in a directory of your own" "says where to put it"; lacks "doctor --fix" "and offers no repair"
tl --db "$WORK/pub/t.db" doctor --fix; expect 3 "doctor --fix without a ledger"
cp "$WORK/copy.db" "$WORK/pub/t.db"; chmod 600 "$WORK/pub/t.db"
tl --db "$WORK/pub/t.db" doctor --fix; expect 9 "doctor --fix with a ledger there"
check '[ "$(stat -c %a "$WORK/pub")" = 1777 ]' "the shared directory keeps its mode"
printf 'hello, not a database at all\n' > "$WORK/text.db"; chmod 600 "$WORK/text.db"
b=$(bytes "$WORK/text.db")
tl --db "$WORK/text.db" status; expect 11 "not a database"
check '[ "$b" = "$(bytes "$WORK/text.db")" ]' "text file untouched"
head -c 3000 "$WORK/open.db" > "$WORK/trunc.db"; chmod 600 "$WORK/trunc.db"
b=$(bytes "$WORK/trunc.db")
tl --db "$WORK/trunc.db" status; check '[ "$RC" = 11 ] || [ "$RC" = 1 ]' "truncated ledger refused"
check '[ "$b" = "$(bytes "$WORK/trunc.db")" ]' "truncated file untouched"
cp "$WORK/open.db" "$WORK/future.db"; chmod 600 "$WORK/future.db"
sqlite3 "$WORK/future.db" "PRAGMA user_version=99"
b=$(bytes "$WORK/future.db")
tl --db "$WORK/future.db" status; expect 10 "ledger from the future"; contains "newer than this tokenledger" "says why"
check '[ "$b" = "$(bytes "$WORK/future.db")" ]' "future ledger untouched"
ln -s "$WORK/open.db" "$WORK/link.db"
tl --db "$WORK/link.db" status; expect 9 "symlinked ledger"
tl --db "$WORK/absent.db" status; expect 3 "missing ledger"
check '[ ! -e "$WORK/absent.db" ]' "missing ledger not created by a read"
tl --db "$WORK/plain/x.db" init
printf 'x' > "$WORK/plainfile"
tl --db "$WORK/plainfile/x.db" init; expect 13 "parent is a file"

# --- hardening: no core dumps of a process holding secrets
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  mkfifo "$WORK/hold"
  setpriv --reuid=65534 --regid=65534 --clear-groups "$TL_BIN" check-rt < "$WORK/hold" > /dev/null 2>&1 &
  held=$!
  exec 3> "$WORK/hold"
  for _ in $(seq 100); do [ "$(readlink /proc/$held/exe 2>/dev/null)" = "$(readlink -f "$TL_BIN")" ] && break; sleep 0.02; done
  sleep 0.1
  check '[ "$(stat -c %u /proc/$held/environ)" = 0 ]' "the CLI is not dumpable (its /proc files belong to root, not to uid 65534)"
  exec 3>&-
  wait $held || true
fi

# --- no secret anywhere but token's own output
cp "$ALL.keep" "$WORK/with-token"; grep -v '^at-alice-0001$' "$ALL" | grep -v '"access_token":"at-alice-0001"' > "$WORK/scan" || true
ALL="$WORK/scan" no_secret_leak "$WORK/rt1" "$WORK/rt-argv"
ALL="$WORK/scan" no_secret_leak "$WORK/at1"
finish
