#!/usr/bin/env bash
# concurrency.sh - real processes against the real loopback portal:
#   1. 8 processes x 4 profiles x 200 token/refresh calls with a 2 s access
#      token: zero reuse, and the portal's rotations equal the ledger's.
#   2. 16 processes ask at once for the same expired credential: exactly one
#      refresh reaches the portal. Then 40 rounds of two concurrent first
#      inits and a write: the ledger and every acknowledged write survive.
#   2b. a ledger another program keeps locked: exit 8, nothing presented.
#   3. kill -9 at random points of refreshing processes (TL_CRASH_ROUNDS rounds
#      of two kills, 100 by default = 200 kills): the portal never sees a spent
#      RT, every RT it issued is in the ledger or answers an `unknown`
#      attempt, and integrity_check is ok.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}"
ROUNDS=${TL_CRASH_ROUNDS:-100}
CALLS=${TL_HAMMER_CALLS:-200}
start_portal --at-lifetime 2
DB="$WORK/ledger.db"
D="--db $DB"
tl $D init
tl $D provider set nous --token-url "$URL/api/oauth/token" --skew 0
for p in 0 1 2 3; do
  tl $D profile add p$p
  seed_rt "$WORK/rt$p"
  tl $D credential add nous --profile p$p --refresh-token-file "$WORK/rt$p"; expect 0 "credential for p$p"
done

# 1. the hammer
set +e; "$TL_DRIVER" hammer "$DB" 8 4 "$CALLS" > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "8 processes x 4 profiles x $CALLS calls all succeed"
cat "$OUT"
set +e; "$TL_DRIVER" verify "$DB" "$URL" > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "after the hammer: no reuse, every issued RT accounted for"
cat "$OUT"
check '[ "$(counter reuse_detections)" = 0 ]' "zero reuse at the portal"
check '[ "$(counter refreshes)" = "$(q "SELECT count(*) FROM refresh_attempt WHERE outcome=\"rotated\"")" ]' "portal rotations equal ledger rotations"
# Forced refreshes that meet a peer's refresh of the same credential take its result (single-flight), so how many
# rotate depends on timing (121 of ~530 under ASan on a loaded machine): the check is only that it rotated a lot.
check '[ "$(counter refreshes)" -ge "$((CALLS / 10))" ]' "the hammer really rotated (at least $((CALLS / 10)) rotations)"

# 2. the crowd: 16 processes, one expired credential, one refresh
tl $D profile add crowd
seed_rt "$WORK/rtc"
tl $D credential add nous --profile crowd --refresh-token-file "$WORK/rtc"
admin config "latency_ms=300" >/dev/null
before=$(counter refreshes)
set +e; "$TL_DRIVER" crowd "$DB" 16 crowd > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "16 processes get a token; exactly one of them refreshed"
cat "$OUT"
check '[ $(( $(counter refreshes) - before )) = 1 ]' "exactly one refresh reached the portal"
admin config "latency_ms=2" >/dev/null

# 2b. concurrent first inits through the CLI: the ledger is never lost, a write that said it succeeded is there,
# and every failure is a specific one (3: no ledger yet for the command that does not create; 8: busy)
bad=0
for i in $(seq 40); do
  d="$WORK/race$i"
  ( r=0; "$TL_BIN" --db "$d/l.db" init > /dev/null 2>&1 || r=$?; echo "init $r" > "$d.a" ) &
  p1=$!
  ( r=0; "$TL_BIN" --db "$d/l.db" init > /dev/null 2>&1 || r=$?; echo "init $r" > "$d.b" ) &
  p2=$!
  ( r=0; "$TL_BIN" --db "$d/l.db" profile add "p$i" > /dev/null 2>&1 || r=$?; echo "add $r" > "$d.c" ) &
  p3=$!
  wait $p1 $p2 $p3 || true
  [ -f "$d/l.db" ] || { echo "round $i: the ledger is gone" >&2; bad=$((bad + 1)); }
  case "$(cat "$d.a" "$d.b")" in *"init 0"*) ;; *) echo "round $i: no init succeeded: $(cat "$d.a" "$d.b")" >&2; bad=$((bad + 1)) ;; esac
  for f in "$d.a" "$d.b" "$d.c"; do
    case "$(cat "$f")" in *" 0" | *" 3" | *" 8") ;; *) echo "round $i: $(cat "$f")" >&2; bad=$((bad + 1)) ;; esac
  done
  if [ "$(cat "$d.c")" = "add 0" ] && [ "$(sqlite3 "$d/l.db" "SELECT count(*) FROM profile WHERE name = 'p$i'")" != 1 ]; then
    echo "round $i: a write that succeeded was lost" >&2; bad=$((bad + 1))
  fi
done
check '[ "$bad" = 0 ]' "40 rounds of two inits and a write through the CLI: nothing lost, only exits 0, 3 or 8"

# 2b. a ledger held locked by another program past the deadline: exit 8, a
# clear message, nothing presented, nothing written
before_rows=$(q "SELECT (SELECT count(*) FROM refresh_attempt) || '/' || (SELECT count(*) FROM refresh_token)")
before_refreshes=$(counter refreshes)
mkfifo "$WORK/hold"
sqlite3 "$DB" < "$WORK/hold" > /dev/null 2>&1 & holder=$!
exec 9> "$WORK/hold"
echo "BEGIN EXCLUSIVE; SELECT 1;" >&9
for _ in $(seq 100); do sqlite3 "$DB" "BEGIN IMMEDIATE; ROLLBACK;" 2>/dev/null || break; sleep 0.05; done
tl $D refresh nous --profile p0 --force; expect 8 "a ledger locked past the deadline: busy"
contains "lock" "says the ledger is locked"
echo "ROLLBACK;" >&9; exec 9>&-; wait $holder || true
check '[ "$(counter refreshes)" = "$before_refreshes" ]' "nothing reached the portal while the ledger was locked"
check '[ "$(q "SELECT (SELECT count(*) FROM refresh_attempt) || '"'/'"' || (SELECT count(*) FROM refresh_token)")" = "$before_rows" ]' "and nothing was written"
tl $D refresh nous --profile p0 --force; expect 0 "once the lock is gone, the same refresh goes through"

# 3. kill -9 torture
set +e; "$TL_DRIVER" crash "$DB" "$URL" "$ROUNDS" 4 > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "$ROUNDS rounds of kill -9 during refreshes"
cat "$OUT"
set +e; "$TL_DRIVER" verify "$DB" "$URL" > "$OUT" 2> "$ERR"; RC=$?; set -e
expect 0 "after the kills: no reuse, nothing issued is lost without an unknown record, integrity ok"
cat "$OUT"
check '[ "$(counter reuse_detections)" = 0 ]' "the portal never saw a spent RT"
finish
