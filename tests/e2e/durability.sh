#!/usr/bin/env bash
# durability.sh - a rotation the server made is never lost, in a private mount
# namespace with a real, small tmpfs and a read-only bind mount:
#   1. a full disk: 'token' with a valid access token still answers;
#   2. the disk fills while the RT is at the server: the refresh keeps the
#      answer in its rescue file (space reserved before sending), and
#      'recover --rescue' takes it back once there is room again; nothing gives
#      the login up while the answer waits; a ledger restored from an earlier
#      copy never presents the token the file answered, and recover puts the
#      lost attempt back; a reservation another process holds is never swept;
#   3. a read-only filesystem: 'token' answers, a refresh sends nothing;
#   4. SIGTERM and SIGINT between send and record: the process records the
#      rotation first, then stops;
#   5. Hermes' files beside a full disk (the files on it, or the ledger): the
#      token the server rotated is defused in place in every file, so what
#      Hermes presents is an unknown token, never a reuse; sync restores.
if [ -z "${TL_MOUNTNS:-}" ]; then
  if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
    exec unshare -m env TL_MOUNTNS=1 bash "$0" "$@"
  elif unshare -rm true 2>/dev/null; then
    exec unshare -rm env TL_MOUNTNS=1 bash "$0" "$@"
  fi
  echo "SKIP: a private mount namespace (unshare -m) is not available here"
  exit 77
fi
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
start_portal --at-lifetime 3600
export TOKENLEDGER_HTTP_TIMEOUT_MS=8000
mkdir -m 700 "$WORK/small"
mount -t tmpfs -o size=2m,mode=0700 tmpfs "$WORK/small"
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; umount "$WORK/ro" 2>/dev/null || true; umount "$WORK/small" 2>/dev/null || true; cleanup' EXIT
DB="$WORK/small/ledger.db"
D="--db $DB"
fill() { dd if=/dev/zero of="$WORK/small/fill" bs=16k 2>/dev/null || true; }
unfill() { rm -f "$WORK/small/fill"; }
rotated_above() { for _ in $(seq 400); do [ "$(counter refreshes)" -gt "$1" ] && return 0; sleep 0.025; done; return 1; }

tl $D init; expect 0 "init on the small filesystem"
tl $D provider set nous --token-url "$URL/api/oauth/token"
tl $D profile add alice
seed_rt "$WORK/rt-a"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt-a"; expect 0 "store a grant"
tl $D token nous --profile alice; expect 0 "first token refreshes"
cp "$OUT" "$WORK/at1"

# --- 1. a full disk: a valid access token is still served
fill
check '! dd if=/dev/zero of="$WORK/small/more" bs=4k count=1 2>/dev/null' "the filesystem is full"
rm -f "$WORK/small/more"
tl $D token nous --profile alice; expect 0 "token on a full disk"
check 'cmp -s "$OUT" "$WORK/at1"' "the same access token"
tl $D refresh nous --profile alice --force; expect 13 "a refresh on a full disk cannot even claim"
contains "full" "says the disk is full"
check '[ "$(counter refreshes)" = 1 ]' "so nothing was sent"
unfill

# --- 2. the disk fills while the RT is at the server
admin fault "kind=slow&ms=1500&count=1" >/dev/null
r=$(counter refreshes)
set +e
"$TL_BIN" $D refresh nous --profile alice --force > "$WORK/bg.out" 2> "$WORK/bg.err" &
bg=$!
set -e
check 'rotated_above $r' "the refresh reached the portal"
fill
set +e; wait $bg; RC=$?; set -e
cat "$WORK/bg.out" "$WORK/bg.err" >> "$ALL"; cp "$WORK/bg.out" "$OUT"; cp "$WORK/bg.err" "$ERR"
expect 13 "the record cannot commit: I/O error"
contains "Nothing is lost" "says nothing is lost"
contains "recover --credential 1 --rescue" "says how to take the answer back"
check '[ "$(counter refreshes)" = 2 ]' "the portal rotated"
rescue=$(ls "$WORK"/small/ledger.db-rescue-1-* 2>/dev/null | head -n 1)
check '[ -n "$rescue" ] && [ "$(stat -c %a "$rescue")" = 600 ]' "a 0600 rescue file beside the ledger"
tl $D token nous --profile alice; expect 0 "the old access token is still served"
unfill
tl $D refresh nous --profile alice --force; expect 6 "the RT is not presented again while its answer waits"
contains "rescue" "points at the rescue file"
check '[ "$(counter refreshes)" = 2 ]' "no second presentation"
tl $D doctor; expect 1 "doctor sees the waiting answer"; contains "rescue_files" "names it"
tl $D recover --credential 1 --assume-not-sent; expect 4 "presenting the same RT again is refused"
tl $D recover --credential 1 --mark-dead; expect 4 "giving the login up is refused: the answer may hold a live grant"
contains "rescue file" "says why"
tl $D credential rm 1 --force; expect 4 "so is removing the credential"
check '[ -e "$rescue" ] && [ "$(q "SELECT status FROM credential WHERE id = 1")" = uncertain ]' "the file and the credential are as they were"
# The file is input too: what it carries besides the tokens passes the server's rule.
jq '.extra.inference_base_url = "https://evil\u001b[2J.example/v1" | .extra.planted = "x"' "$rescue" > "$WORK/r.json"
cat "$WORK/r.json" > "$rescue"; rm -f "$WORK/r.json"
tl $D recover --credential 1 --rescue; expect 0 "recover takes the answer back"
check '[ "$(q "SELECT json_extract(extra, \"$.planted\") IS NULL AND coalesce(json_extract(extra, \"$.inference_base_url\"), \"\") NOT LIKE \"%evil%\" FROM credential WHERE id = 1")" = 1 ]' "a rescue file's other fields are filtered as a server's answer is"
check '[ ! -e "$rescue" ]' "and removes the file"
check '[ "$(q "SELECT max(generation) FROM refresh_token WHERE state = \"current\"")" = 2 ]' "generation 2 is current"
tl $D refresh nous --profile alice --force; expect 0 "the next refresh presents the rescued RT"
check '[ "$(counter reuse_detections)" = 0 ]' "the portal never saw a spent RT"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" = "$(counter refreshes)" ]' "every rotation is on record"

# --- 2b. the ledger restored from an earlier copy beside a rescue file: the file is the later truth
sqlite3 "$DB" ".backup '$WORK/backup.db'"
admin fault "kind=slow&ms=1500&count=1" >/dev/null
r=$(counter refreshes)
"$TL_BIN" $D refresh nous --profile alice --force > /dev/null 2>&1 & bg=$!
check 'rotated_above $r' "the refresh reached the portal"
fill; wait $bg || true; unfill
rescue=$(ls "$WORK"/small/ledger.db-rescue-1-* 2>/dev/null | head -n 1)
check '[ -n "$rescue" ]' "its answer is in a rescue file"
rm -f "$DB" "$DB-wal" "$DB-shm"; cp "$WORK/backup.db" "$DB"; chmod 600 "$DB"
n=$(counter refreshes)
tl $D refresh nous --profile alice --force; expect 6 "the restored ledger's current RT is not presented: the server answered it already"
contains "restored from an earlier copy" "says why"
check '[ "$(counter refreshes)" = "$n" ] && [ "$(counter reuse_detections)" = 0 ]' "nothing was sent"
tl $D recover --credential 1 --rescue; expect 0 "recover puts the lost attempt back and records the answer on it"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"attempt_restored\"")" = 1 ] && [ ! -e "$rescue" ]' "attempt_restored on record, the file removed"
tl $D refresh nous --profile alice --force; expect 0 "the next refresh presents the rescued RT"
check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "the portal never saw a spent RT"
# No room to keep an answer (under 96 KiB free): nothing is presented, so no rotation can be lost.
dd if=/dev/zero of="$WORK/small/pad" bs=88k count=1 2>/dev/null || true
fill; rm -f "$WORK/small/pad"
n=$(counter refreshes); before=$(q "SELECT fingerprint FROM refresh_token WHERE state = 'current'")
tl $D refresh nous --profile alice --force; expect 7 "no room for a rescue file: not presented (transient)"
contains "not sent" "says the token was not sent"; contains "96 KiB" "and why"
check '[ "$(counter refreshes)" = "$n" ] && [ "$(q "SELECT fingerprint FROM refresh_token WHERE state = '"'current'"'")" = "$before" ]' "the portal saw nothing; the token is still current"
unfill
tl $D refresh nous --profile alice --force; expect 0 "with room again, the refresh goes through"
# Reservations: one another process holds (in another PID namespace its pid means nothing) is never swept;
# an old one nobody holds is.
held="$DB-rescue-reserve-999999-aaaaaaaaaaaa"; stale="$DB-rescue-reserve-999998-bbbbbbbbbbbb"
: > "$held"; : > "$stale"; chmod 600 "$held" "$stale"; touch -d '-2 minutes' "$held" "$stale"
( exec 9< "$held"; flock -x 9; exec sleep 30 ) & holder=$!   # one process holds the lock: killing it ends it
for _ in $(seq 100); do ! flock -n "$held" true && break; sleep 0.02; done
tl $D refresh nous --profile alice --force; expect 0 "a refresh (it makes its reservation and sweeps)"
check '[ -e "$held" ] && [ ! -e "$stale" ]' "the held reservation stays, the stale one is gone"
kill "$holder" 2> /dev/null || true; wait "$holder" 2> /dev/null || true; rm -f "$held"

# --- 3. a read-only filesystem
mkdir -m 700 "$WORK/ro"
RODB="$WORK/ro/ledger.db"
seed_rt "$WORK/rt-b"
printf 'at-readonly-0001\n' > "$WORK/at-b"
tl --db "$RODB" init
tl --db "$RODB" profile add bob
tl --db "$RODB" provider set nous --token-url "$URL/api/oauth/token"
tl --db "$RODB" credential add nous --profile bob --refresh-token-file "$WORK/rt-b" --access-token-file "$WORK/at-b" --expires-at 2099-01-01T00:00:00Z
mount --bind "$WORK/ro" "$WORK/ro"
mount -o remount,bind,ro "$WORK/ro"
check '! touch "$WORK/ro/x" 2>/dev/null' "the filesystem is read-only"
tl --db "$RODB" token nous --profile bob; expect 0 "token on a read-only filesystem"
check '[ "$(cat "$OUT")" = at-readonly-0001 ]' "the stored access token"
r=$(counter requests)
tl --db "$RODB" refresh nous --profile bob --force; expect 13 "a refresh on a read-only ledger"
contains "read-only" "says why"
check '[ "$(counter requests)" = "$r" ]' "nothing was sent"
umount "$WORK/ro"

# --- 4. a stop signal between send and record
for sig in TERM INT; do
  admin fault "kind=slow&ms=1200&count=1" >/dev/null
  r=$(counter refreshes)
  rotated=$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'")
  set +e
  # a background job of a script starts with SIGINT ignored: give it the default a terminal's job has
  env --default-signal=INT,TERM "$TL_BIN" $D refresh nous --profile alice --force > /dev/null 2>> "$ALL" &
  bg=$!
  set -e
  check 'rotated_above $r' "SIG$sig: the refresh reached the portal"
  kill -s $sig $bg
  set +e; wait $bg; RC=$?; set -e
  check '[ "$RC" -ge 128 ]' "SIG$sig: the process stopped by the signal (exit $RC)"
  check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" = $((rotated + 1)) ]' "SIG$sig: but only after recording the rotation"
  check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome IN (\"in_flight\", \"unknown\")")" = 0 ]' "SIG$sig: nothing in flight or unknown"
done
tl $D refresh nous --profile alice --force; expect 0 "the ledger carries on"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse at the portal"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" = "$(counter refreshes)" ]' "portal rotations equal ledger rotations"

# --- 5. Hermes' files beside a full disk: a token the server rotated is never left for Hermes
. "$(dirname "$0")/hermes_root.sh"
unset HERMES_SHARED_AUTH_DIR
present() { curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/api/oauth/token" -H "x-nous-refresh-token: $1" \
  -d grant_type=refresh_token -d client_id=hermes-cli; }
# 5a. the files are on the full disk, the ledger is not: the rotation is recorded, the files cannot be rewritten
HR="$WORK/small/root"; HDB="$WORK/hermes-a.db"; H="--db $HDB"
make_root "$HR" alpha beta
tl $H init; tl $H import "$HR" --all-profiles; expect 0 "import a root that lives on the small filesystem"
old=$(rt_of "$(auth "$HR" alpha)"); printf '%s' "$old" > "$WORK/rt-h1"
fill
tl $H refresh nous --profile alpha --force; expect 13 "the rotation is recorded, the files cannot be rewritten"
contains "space" "says the disk is full"
new=$(sqlite3 "$HDB" "SELECT secret FROM refresh_token WHERE state = 'current'")
check '[ -n "$new" ] && [ "$new" != "$old" ]' "the ledger holds the new token"
check '! grep -rqF "$old" "$HR"' "no file of the root holds the spent token any more"
check 'grep -q "tl-spent-x" "$(auth "$HR" alpha)" && jq -e .providers.nous "$(auth "$HR" alpha)" >/dev/null && jq -e .refresh_token "$HR/shared/nous_auth.json" >/dev/null' "it was overwritten in place: same size, still JSON"
check '[ "$(present "$(rt_of "$(auth "$HR" beta)")")" = 400 ] && [ "$(counter reuse_detections)" = 0 ] && [ "$(counter families_revoked)" = 0 ]' "what Hermes would present now is an unknown token: refused, nothing revoked"
tl $H sync --all; expect 13 "sync on the full disk fails too"
check '[ "$(rt_of "$(auth "$HR" alpha)")" != "$new" ]' "and leaves the defused file as it was"
unfill
tl $H sync --all --json; expect 0 "with room again, sync"
check '[ "$(rt_of "$(auth "$HR" alpha)")" = "$new" ] && [ "$(rt_of "$(auth "$HR" beta)")" = "$new" ] && [ "$(rt_of "$HR/shared/nous_auth.json")" = "$new" ]' "every file holds the current token again"
check '[ "$(sqlite3 "$HDB" "SELECT count(*) FROM credential")" = 1 ]' "the defused token was never adopted as a grant"
tl $H refresh nous --profile beta --force; expect 0 "the grant lives on"
# 5b. the ledger is on the full disk: the answer goes to the rescue file, Hermes' copies are defused
HR2="$WORK/root2"; RDB="$WORK/small/hermes-b.db"; H2="--db $RDB"
make_root "$HR2" gamma
tl $H2 init; tl $H2 import "$HR2" --all-profiles; expect 0 "import a root beside a ledger on the small filesystem"
old=$(rt_of "$(auth "$HR2" gamma)"); printf '%s' "$old" > "$WORK/rt-h2"
admin fault "kind=slow&ms=1500&count=1" >/dev/null
r=$(counter refreshes)
set +e
"$TL_BIN" $H2 refresh nous --profile gamma --force > "$WORK/bg.out" 2> "$WORK/bg.err" &
bg=$!
set -e
check 'rotated_above $r' "the refresh reached the portal"
fill
set +e; wait $bg; RC=$?; set -e
cat "$WORK/bg.out" "$WORK/bg.err" >> "$ALL"; cp "$WORK/bg.out" "$OUT"; cp "$WORK/bg.err" "$ERR"
expect 13 "the ledger cannot record the rotation"
contains "Nothing is lost" "the answer is in the rescue file"
check '! grep -rqF "$old" "$HR2"' "the token the server just rotated is in no file of Hermes"
check '[ "$(present "$(rt_of "$(auth "$HR2" gamma)")")" = 400 ] && [ "$(counter families_revoked)" = 0 ]' "what Hermes would present is refused as unknown; the rescued token stays good"
unfill
tl $H2 recover --credential 1 --rescue; expect 0 "recover takes the answer back"
tl $H2 sync --all; expect 0 "sync writes it to Hermes' files"
new=$(sqlite3 "$RDB" "SELECT secret FROM refresh_token WHERE state = 'current'")
check '[ "$(rt_of "$(auth "$HR2" gamma)")" = "$new" ] && [ "$(rt_of "$HR2/shared/nous_auth.json")" = "$new" ]' "the files hold the rescued token"
tl $H2 refresh nous --profile gamma --force; expect 0 "and the grant lives on"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse at the portal, files on a full disk or ledger on one"

no_secret_leak "$WORK/rt-a" "$WORK/rt-b" "$WORK/rt-h1" "$WORK/rt-h2"
finish
