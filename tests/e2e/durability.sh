#!/usr/bin/env bash
# durability.sh - a rotation the server made is never lost, in a private mount
# namespace with a real, small tmpfs and a read-only bind mount:
#   1. a full disk: 'token' with a valid access token still answers;
#   2. the disk fills while the RT is at the server: the refresh keeps the
#      answer in its rescue file (space reserved before sending), and
#      'recover --rescue' takes it back once there is room again;
#   3. a read-only filesystem: 'token' answers, a refresh sends nothing;
#   4. SIGTERM and SIGINT between send and record: the process records the
#      rotation first, then stops.
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
trap 'umount "$WORK/ro" 2>/dev/null || true; umount "$WORK/small" 2>/dev/null || true; cleanup' EXIT
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
tl $D recover --credential 1 --rescue; expect 0 "recover takes the answer back"
check '[ ! -e "$rescue" ]' "and removes the file"
check '[ "$(q "SELECT max(generation) FROM refresh_token WHERE state = \"current\"")" = 2 ]' "generation 2 is current"
tl $D refresh nous --profile alice --force; expect 0 "the next refresh presents the rescued RT"
check '[ "$(counter reuse_detections)" = 0 ]' "the portal never saw a spent RT"
check '[ "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome = \"rotated\"")" = "$(counter refreshes)" ]' "every rotation is on record"

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

no_secret_leak "$WORK/rt-a" "$WORK/rt-b"
finish
