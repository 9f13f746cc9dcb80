#!/usr/bin/env bash
# hostile.sh - a hostile token endpoint (tl-portal's hostile_* answers) driven
# through the real CLI. For every mode: the exact outcome (exit code, ledger
# state, what the portal saw), nothing unescaped on the terminal (no ESC, BEL,
# C1 control, DEL or bidi override in any output), and no secret printed.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
start_portal --at-lifetime 3600
DB="$WORK/ledger.db"
D="--db $DB"
tl $D init
tl $D provider set nous --token-url "$URL/api/oauth/token"; expect 0 "point nous at the portal"
n=0
# fresh NAME: a profile with a new grant from the portal (a mode that kills a grant does not spoil the next)
fresh() {
  n=$((n + 1))
  tl $D profile add "$1"
  seed_rt "$WORK/rt-$1"
  tl $D credential add nous --profile "$1" --refresh-token-file "$WORK/rt-$1"; expect 0 "grant for $1"
  CRED=$(q "SELECT e.credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = '$1'")
}
hostile() { admin fault "kind=$1&count=1" > /dev/null; }
current_rt() { q "SELECT secret FROM refresh_token WHERE credential_id = $1 AND state IN ('current','unknown')"; }
calm() { q "UPDATE credential SET refresh_not_before = NULL"; }

# --- escape sequences in error and error_description: shown escaped, everywhere
fresh esc
hostile hostile_escape_error
tl $D refresh nous --profile esc --force; expect 1 "a 400 invalid_request is a configuration error"
contains 'invalid_request\\u001b\[31m' "the error code is shown, escaped"
contains 'u202eevil' "a bidi override is shown escaped"
check '[ "$(q "SELECT state FROM refresh_token WHERE credential_id = $CRED")" = current ]' "the RT was not spent"
tl $D history --credential $CRED; expect 0 "history with hostile text"
contains 'u001b\]52;c;' "history shows the OSC 52 sequence escaped"
tl $D history --credential $CRED --json; expect 0 "history --json"
check 'jq -e ".[0].oauth_error | test(\"u001b\")" "$OUT" >/dev/null' "JSON carries the escape as text"
tl $D audit --credential $CRED; expect 0 "audit with hostile text"
tl $D status; expect 0 "status with hostile text"
calm

# --- the RT echoed back, plainly, percent-encoded and in part: never in a record or on screen
fresh echo
RT=$(current_rt $CRED)
hostile hostile_echo_rt
tl $D refresh nous --profile echo --force; expect 1 "an echoing 400"
contains "bad token" "the rest of the server's text is kept"
tl $D history --credential $CRED --json
for piece in "$RT" "${RT:0:10}" "${RT: -10}"; do
  check '! grep -qF -- "$piece" "$ALL"' "no echo of the RT ($((${#piece})) characters) on screen"
  check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE instr(coalesce(error_description, \"\"), \"$piece\")")" = 0 ]' "no echo in the ledger's attempts"
  check '[ "$(q "SELECT count(*) FROM audit_event WHERE instr(detail, \"$piece\")")" = 0 ]' "no echo in the audit log"
done
calm

# --- Retry-After: 99999999999999999999 is a day at most
fresh wait
hostile hostile_retry_after
tl $D refresh nous --profile wait --force; expect 7 "429 is transient"
contains "waits for 86400 s" "the wait is capped at a day"
check '[ "$(q "SELECT refresh_not_before - strftime(\"%s\",\"now\") * 1000 BETWEEN 86000000 AND 86401000 FROM credential WHERE id = $CRED")" = 1 ]' "the backoff is a day, not an overflow"
calm

# --- absurd expires_in: the rotation is kept, the expiry assumed (15 min), never refreshed on every call
for mode in huge negative string bigint; do
  fresh "exp-$mode"
  r=$(counter refreshes)
  hostile "hostile_expires_$mode"
  tl $D token nous --profile "exp-$mode" --json; expect 0 "expires_in $mode: the token is served"
  exp=$(jq -r .expires_at_ms "$OUT")
  now=$(($(date +%s) * 1000))
  check '[ "$exp" -gt $((now + 840000)) ] && [ "$exp" -lt $((now + 960000)) ]' "expires_in $mode: expiry assumed 15 minutes ahead"
  tl $D token nous --profile "exp-$mode"; expect 0 "expires_in $mode: again"
  check '[ $(( $(counter refreshes) - r )) = 1 ]' "expires_in $mode: served from the ledger, not refreshed again"
  check '[ "$(q "SELECT count(*) FROM audit_event WHERE credential_id = $CRED AND json_extract(detail, \"$.expiry_assumed_s\") = 900")" = 1 ]' "expires_in $mode: the assumption is audited"
done

# --- an access token with escape codes: never stored, never printed; the new RT is kept
fresh ctl
hostile hostile_ctl_at
tl $D token nous --profile ctl; expect 7 "a 200 without a usable access token"
contains "without a usable access token" "says why"
check '[ "$(q "SELECT max(generation) FROM refresh_token WHERE credential_id = $CRED AND state = \"current\"")" = 1 ]' "the rotation is recorded"
check '[ "$(q "SELECT access_token IS NULL FROM credential WHERE id = $CRED")" = 1 ]' "the access token is not stored"
tl $D token nous --profile ctl; expect 0 "the next call refreshes with the new RT"
check '[ "$(tr -d "\n" < "$OUT" | tr -cd "\000-\037\177" | wc -c)" = 0 ]' "and prints a clean token"

# --- duplicate keys in a 200: unreadable, so unknown; the raw answer kept; never presented again
fresh dup
r=$(counter requests)
hostile hostile_duplicate_keys
tl $D refresh nous --profile dup --force; expect 6 "duplicate keys: the outcome is unknown"
contains "kept in" "the raw answer is kept"
rescue=$(ls "$DB"-rescue-$CRED-* 2>/dev/null | head -n 1)
check '[ -n "$rescue" ] && [ "$(stat -c %a "$rescue")" = 600 ]' "in a 0600 rescue file"
tl $D refresh nous --profile dup --force; expect 6 "not presented again"
check '[ $(( $(counter requests) - r )) = 1 ]' "one request only"
tl $D recover --credential $CRED --rescue; expect 5 "the rescued answer holds no usable token"
tl $D recover --credential $CRED --mark-dead; expect 0 "the operator gives the grant up"

# --- CR LF in the new RT: never stored, never sent as a header
fresh crlf
r=$(counter requests)
hostile hostile_crlf_rt
tl $D refresh nous --profile crlf --force; expect 6 "an unusable new RT: unknown"
contains "not usable" "says why"
check '[ "$(sqlite3 "$DB" .dump | grep -c X-Injected)" = 0 ]' "the injected header line is nowhere in the ledger"
tl $D token nous --profile crlf; expect 6 "not presented again"
check '[ $(( $(counter requests) - r )) = 1 ]' "one request only: nothing smuggled"

# --- terminal controls in names the file system gives: a profile directory, the ledger's path
. "$(dirname "$0")/hermes_root.sh"
make_root "$WORK/root" alpha
evil="$(printf 'x\033]2;OWNED\007\033[2J')"
mkdir -p "$WORK/root/profiles/$evil" && cp "$WORK/root/profiles/alpha/auth.json" "$WORK/root/profiles/$evil/"
tl --db "$WORK/h.db" init; expect 0 "a second ledger"
tl --db "$WORK/h.db" import "$WORK/root" --all-profiles; expect 0 "import skips the oddly named directory"
contains 'u001b]2;OWNED\\u0007' "and names it escaped"
tl --db "$WORK/h.db" import "$WORK/root" --all-profiles --json; expect 0 "the same as JSON"
evildir="$WORK/d$(printf '\033[31mRED\nfake-line')"
mkdir -m 0700 "$evildir"
tl --db "$evildir/t.db" init; expect 0 "init where the path holds ESC and a newline"
contains 'u001b\[31mRED\\u000afake-line' "the path is shown escaped"
tl --db "$evildir/t.db" doctor; expect 0 "doctor on it"

# --- nothing unescaped reached the terminal, and no token was printed but by 'token'
check '! LC_ALL=C grep -q "$(printf "[\033\007\177]")" "$ALL"' "no ESC, BEL or DEL in any output"
check '! LC_ALL=C grep -qP "\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]" "$ALL"' "no C1 control or bidi override in any output"
check '[ "$(counter reuse_detections)" = 0 ]' "the portal never saw a reused RT"
no_secret_leak "$WORK"/rt-*
finish
