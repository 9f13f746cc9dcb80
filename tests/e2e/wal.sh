#!/usr/bin/env bash
# wal.sh - a spent token does not outlive its rotation on disk: after hundreds
# of rotations by a long-lived keep-fresh (whose open connection keeps SQLite
# from removing the WAL at close), and by short CLI refreshes while it runs,
# a raw-byte scan of the ledger, its -wal and its -shm finds none of the
# refresh or access tokens the portal ever issued except the current ones.
# The same run with the scrub switched off (TOKENLEDGER_TEST_KEEP_WAL, the old
# behaviour) finds them: the scan can fail.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
start_portal --at-lifetime 3600 --dump "$WORK/issued"
CREDS=30

# spent_on_disk DB : how many issued tokens that are not current lie in DB, DB-wal, DB-shm (raw bytes).
spent_on_disk() {
  local db=$1 files=() f
  for f in "$db" "$db-wal" "$db-shm"; do [ -e "$f" ] && files+=("$f"); done
  # the scan first, the current tokens after: reading them opens the ledger
  cp "${files[@]}" "$WORK/scan/" 2>/dev/null
  sqlite3 "$db" "SELECT secret FROM refresh_token WHERE secret IS NOT NULL; SELECT access_token FROM credential
                 WHERE access_token IS NOT NULL" | sort -u > "$WORK/current"
  awk '{print $2}' "$WORK/issued" | sort -u | comm -23 - "$WORK/current" > "$WORK/spent"
  [ -s "$WORK/spent" ] || { echo 0; return; }
  grep -a -o -F -f "$WORK/spent" "$WORK"/scan/* | sort -u | wc -l
}

# settle : waits until the portal has seen no refresh for 3 s (keep-fresh's rounds found nothing due).
settle() {
  local last=-1 now
  for _ in $(seq 120); do
    now=$(counter refreshes)
    [ "$now" = "$last" ] && return 0
    last=$now
    sleep 3
  done
  return 1
}

# run_case NAME ROUNDS REFRESHES : a ledger with $CREDS grants, keep-fresh refreshing all of them every
# second for ROUNDS rounds, then REFRESHES forced CLI refreshes while keep-fresh keeps the ledger open.
run_case() {
  local name=$1 rounds=$2 refreshes=$3
  DB="$WORK/$name/ledger.db"
  local D="--db $DB"
  rm -rf "$WORK/scan"; mkdir -p "$WORK/scan"
  admin config "at_lifetime=3600" >/dev/null
  tl $D init
  tl $D provider set nous --token-url "$URL/api/oauth/token"
  tl $D profile add p
  for i in $(seq $CREDS); do
    seed_rt "$WORK/rt"
    tl $D credential add nous --profile p --refresh-token-file "$WORK/rt"
  done
  check '[ "$(q "SELECT count(*) FROM credential")" = $CREDS ]' "$name: $CREDS grants stored"
  local base
  base=$(counter refreshes)
  # every access token expires within --ahead: each round rotates every grant
  "$TL_BIN" $D keep-fresh --interval 1 --ahead 86400 --no-sync > "$WORK/kf.out" 2> "$WORK/kf.err" &
  local kf=$!
  for _ in $(seq 600); do [ "$(counter refreshes)" -ge $((base + CREDS * rounds)) ] && break; sleep 0.1; done
  # from now on answers outlive --ahead: the rounds go quiet
  admin config "at_lifetime=200000" >/dev/null
  check 'settle' "$name: keep-fresh's rounds went quiet"
  for i in $(seq $refreshes); do
    tl $D refresh nous --profile p --force
  done
  check '[ "$(counter refreshes)" -ge $((base + CREDS * rounds + refreshes)) ]' \
    "$name: $((CREDS * rounds)) rotations by keep-fresh and $refreshes by the CLI reached the portal"
  sleep 1.5 # one more keep-fresh round
  FOUND=$(spent_on_disk "$DB")
  kill -TERM $kf
  wait $kf || true
  cat "$WORK/kf.out" "$WORK/kf.err" >> "$ALL"
  check '[ "$(counter reuse_detections)" = 0 ]' "$name: no reuse"
}

run_case scrubbed 10 60
check '[ "$(wc -l < "$WORK/spent")" -ge 600 ]' "hundreds of spent tokens to look for ($(wc -l < "$WORK/spent"))"
check '[ "$FOUND" = 0 ]' "no spent refresh or access token in the ledger, its -wal or -shm (found $FOUND)"
echo "scrubbed: $(wc -l < "$WORK/spent") spent tokens looked for, $FOUND found"
check '[ ! -s "$WORK/scan/ledger.db-wal" ]' "the WAL is empty while keep-fresh runs"

# The scan can fail: the same run with the scrub switched off finds spent tokens on disk.
TOKENLEDGER_TEST_KEEP_WAL=1
export TOKENLEDGER_TEST_KEEP_WAL
run_case kept 3 20
unset TOKENLEDGER_TEST_KEEP_WAL
echo "kept: $(wc -l < "$WORK/spent") spent tokens looked for, $FOUND found"
check '[ "$FOUND" -gt 50 ]' "without the scrub, the scan finds spent tokens on disk ($FOUND)"
finish
