#!/usr/bin/env bash
# homes.sh - Hermes homes and files another local user can change (issue 24 §3), as root with a
# second account (tlother) and the attacker's own loopback portal (a second tl-portal, whose
# counters say what reached it):
#   (a) import --all-profiles refuses a profile home owned by tlother, naming it and its owner,
#       and imports the other homes (exit 9);
#   (b) a home that was ours, given to tlother, whose auth.json tlother replaced with a link to a
#       victim's Hermes file: sync, export, keep-fresh and refresh refuse it; nothing reaches the
#       attacker's portal, the victim's file is unchanged, the ledger adopts nothing; sync --all
#       still syncs the other homes;
#   (c) during keep-fresh --watch, tlother swaps auth.json for a link to a root-owned 0644 JSON
#       file: that file stays byte for byte and mode for mode as it was;
#   (d) an auth.json that is a hard link to another user's file, and a hard link to one of ours
#       in a directory others can write: refused, nothing adopted;
#   (e) tlother running tokenledger: a link in its home to a root-owned file, a home others can
#       write: refused; a link to its own file outside the home still works;
#   (f) a file of ours whose new token names another endpoint than the credential it would
#       rotate (the victim's file copied over the attacker-endpoint grant's): not adopted, and
#       the victim's token never reaches the credential's (attacker's) endpoint.
# Needs root and useradd: skipped (77) otherwise.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
if [ "$(id -u)" != 0 ]; then echo "homes.sh: needs root and a second account; skipped"; exit 77; fi
id tlother > /dev/null 2>&1 || useradd -m tlother > /dev/null 2>&1 || { echo "homes.sh: no useradd; skipped"; exit 77; }
. "$(dirname "$0")/hermes_root.sh"
chmod 0711 "$WORK"            # tlother reaches $WORK/pub, nothing more
PUB="$WORK/pub"; mkdir -m 0755 "$PUB"
as_other() { runuser -u tlother -- "$@"; }
start_portal --at-lifetime 3600
REAL_URL=$URL
# The attacker's own portal: every request that reaches it is counted.
"$TL_PORTAL" --port-file "$WORK/att-port" > "$WORK/att.log" 2>&1 & ATT_PID=$!
for _ in $(seq 100); do [ -s "$WORK/att-port" ] && break; sleep 0.05; done
ATT_URL="http://127.0.0.1:$(cat "$WORK/att-port")"
trap 'kill $ATT_PID 2>/dev/null; wait $ATT_PID 2>/dev/null; cleanup' EXIT
att() { curl -sf "$ATT_URL/admin/counters" | jq -r ".$1"; }
# doc_from PORTAL_URL LABEL: a Hermes auth.json with a new grant of that portal (it names the portal).
doc_from() { local seed; seed=$(curl -sf -X POST "$1/admin/seed"); URL=$1 hermes_doc "$seed" "$2" a1b2c3; }
put_doc() { doc_from "$1" "$2" > "$3"; chmod 600 "$3"; }
mode_bytes() { stat -c '%a %u %s' "$1"; sha256sum < "$1"; }
DB="$WORK/ledger.db"; D="--db $DB"
tl $D init; expect 0 "a root-owned ledger"

# The victim: another Hermes file root can read (a backup of another user's home).
mkdir -m 0700 -p "$WORK/victim/.hermes"
V="$WORK/victim/.hermes/auth.json"; put_doc "$REAL_URL" victim@example.com "$V"
rt_of "$V" > "$WORK/rt-victim"
V0=$(mode_bytes "$V")

# --- (a) import --all-profiles refuses a profile home owned by tlother
RA="$PUB/ra"; mkdir -p "$RA/profiles/good" "$RA/profiles/evil"; chmod 0755 "$RA" "$RA/profiles"
chmod 0700 "$RA/profiles/good"; put_doc "$REAL_URL" good@example.com "$RA/profiles/good/auth.json"
chown tlother "$RA/profiles/evil"; chmod 0700 "$RA/profiles/evil"
as_other sh -c "umask 077; cat > '$RA/profiles/evil/auth.json'" < <(doc_from "$ATT_URL" evil@example.com)
tl $D import "$RA" --all-profiles; expect 9 "(a) a home owned by tlother is refused"
contains "$RA/profiles/evil" "(a) names the home"
contains "tlother (uid $(id -u tlother))" "(a) names its owner"
contains "the other file was imported" "(a) and says the rest was imported"
check '[ "$(q "SELECT count(*) FROM profile WHERE name = \"evil\"")" = 0 ]' "(a) no profile for the refused home"
check '[ "$(q "SELECT count(*) FROM profile WHERE name = \"good\"")" = 1 ]' "(a) the other home is imported"
check '[ "$(q "SELECT count(*) FROM credential WHERE token_url LIKE \"$ATT_URL%\"")" = 0 ]' "(a) no endpoint taken from tlother's file"
tl $D import "$RA/profiles/evil" --profile evil; expect 9 "(a) the home alone is refused too"
contains "tlother" "(a) naming the owner"

# --- (b) a home that was ours, then tlother's, whose auth.json became a link to the victim's file
HB="$PUB/hb"; mkdir -m 0700 "$HB"; put_doc "$ATT_URL" evil@example.com "$HB/auth.json"
tl $D import "$HB" --profile evil; expect 0 "(b) the home, ours at import, is imported"
HG="$PUB/hg"; mkdir -m 0700 "$HG"; put_doc "$REAL_URL" good2@example.com "$HG/auth.json"
tl $D import "$HG" --profile good2; expect 0 "(b) a second, good home"
chown -R tlother "$HB"        # given to tlother (or made before this release)
as_other sh -c "ln -s '$V' '$HB/.x' && mv -T '$HB/.x' '$HB/auth.json'"
tl $D sync --profile evil; expect 9 "(b) sync refuses tlother's home"
contains "tlother" "(b) names the owner"
tl $D export --profile evil; expect 9 "(b) export refuses it"
tl $D keep-fresh --once --ahead 86400; expect 7 "(b) keep-fresh reports the refused grant"
tl $D refresh nous --profile evil --force; expect 9 "(b) refresh refuses to present the grant"
contains "not presented" "(b) says nothing was presented"
rm "$HG/auth.json"
tl $D sync --all; expect 9 "(b) sync --all names the refused home"
contains "other files were synced" "(b) and syncs the others"
check '[ -s "$HG/auth.json" ] && [ "$(rt_of "$HG/auth.json")" != null ]' "(b) the good home was written by the same sync --all"
check '[ "$(att requests)" = 0 ] && [ "$(att unknown_rt)" = 0 ]' "(b) nothing reached the attacker's portal"
check '[ "$(mode_bytes "$V")" = "$V0" ]' "(b) the victim's file is unchanged"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"external_rotation\"")" = 0 ]' "(b) nothing adopted"
check '[ "$(q "SELECT count(*) FROM refresh_token WHERE fingerprint = \"$(printf %s "$(cat "$WORK/rt-victim")" | sha256sum | cut -c1-64)\"")" = 0 ]' "(b) the victim's RT is not in the ledger"

# --- (c) keep-fresh --watch: tlother swaps auth.json for a link to a root-owned 0644 JSON file
HC="$PUB/hc"; mkdir -m 0700 "$HC"; put_doc "$REAL_URL" c@example.com "$HC/auth.json"
tl $D import "$HC" --profile watched; expect 0 "(c) import"
chown -R tlother "$HC"
mkdir -m 0755 "$WORK/etc"; CONF="$WORK/etc/app.json"
printf '{\n  "log_level": "info",\n  "workers": 4\n}\n' > "$CONF"; chmod 0644 "$CONF"
C0=$(mode_bytes "$CONF")
# The watch syncs the home as soon as auth.json is renamed; a round every 2 s syncs everything too
# (so a change the watch missed while it was being set up is still seen).
"$TL_BIN" $D keep-fresh --watch --interval 2 > "$WORK/kf.out" 2> "$WORK/kf.err" & KF=$!
for _ in $(seq 300); do grep -q "round 1" "$WORK/kf.out" 2>/dev/null && break; sleep 0.1; done
as_other sh -c "ln -s '$CONF' '$HC/.x' && mv -T '$HC/.x' '$HC/auth.json'"
for _ in $(seq 300); do
  { [ "$(mode_bytes "$CONF")" != "$C0" ] || grep -q "$HC" "$WORK/kf.err" "$WORK/kf.out"; } && break; sleep 0.1
done
sleep 3                        # at least one more round: it must not write there either
kill -TERM $KF; wait $KF || true
cat "$WORK/kf.out" "$WORK/kf.err" >> "$ALL"
check '[ "$(mode_bytes "$CONF")" = "$C0" ]' "(c) the root-owned file is unchanged, bytes and mode"
check 'grep -q "tlother" "$WORK/kf.err" "$WORK/kf.out"' "(c) keep-fresh says why it refused the home"

# --- (d) hard links: to another user's file; to one of ours in a directory others can write
TLH="$PUB/tlhome"; mkdir -m 0700 "$TLH"; mkdir -m 0700 "$TLH/.hermes"
put_doc "$ATT_URL" theirs@example.com "$TLH/.hermes/auth.json"; chown -R tlother "$TLH"
T0=$(mode_bytes "$TLH/.hermes/auth.json")
HD="$PUB/hd"; mkdir -m 0700 "$HD"; put_doc "$REAL_URL" d@example.com "$HD/auth.json"
tl $D import "$HD" --profile linked; expect 0 "(d) import"
ln -f "$TLH/.hermes/auth.json" "$HD/auth.json"
ext0=$(q "SELECT count(*) FROM audit_event WHERE event = 'external_rotation'")
att0=$(q "SELECT count(*) FROM credential WHERE token_url LIKE '$ATT_URL%'")
tl $D sync --profile linked; expect 9 "(d) a hard link to tlother's file is refused"
contains "tlother" "(d) names the owner"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"external_rotation\"")" = "$ext0" ]' "(d) nothing adopted from it"
check '[ "$(q "SELECT count(*) FROM credential WHERE token_url LIKE \"$ATT_URL%\"")" = "$att0" ]' "(d) no endpoint of tlother's"
check '[ "$(mode_bytes "$TLH/.hermes/auth.json")" = "$T0" ]' "(d) tlother's file is unchanged"
V2="$WORK/victim/.hermes/backup.json"; put_doc "$REAL_URL" v2@example.com "$V2"
mkdir "$PUB/sticky"; chmod 1777 "$PUB/sticky"; ln "$V2" "$PUB/sticky/auth.json"
tl $D import "$PUB/sticky" --profile sticky; expect 9 "(d) a second name of our file where others can add names"
contains "writable by group or others" "(d) says why: a home others can write, sticky or not"
check '[ "$(att requests)" = 0 ]' "(d) still nothing reached the attacker's portal"

# --- (g) the lock: a home of ours that others can write (sticky) lets them create or swap auth.lock
# while Hermes holds it, so two refreshes no longer take turns; and a lock file of another user's
G="$PUB/gsticky"; mkdir -m 0700 "$G"; put_doc "$REAL_URL" g@example.com "$G/auth.json"
tl $D import "$G" --profile gsticky; expect 0 "(g) import a private home"
chmod 1777 "$G"
runuser -u tlother -- touch "$G/auth.lock"
G0=$(mode_bytes "$G/auth.json")
tl $D sync --profile gsticky; expect 9 "(g) once others can write the home (sticky), it is refused"
contains "writable by group or others" "(g) says why"
tl $D refresh nous --profile gsticky --force; check '[ "$RC" != 0 ] && [ "$(att requests)" = 0 ]' "(g) a refresh presents nothing"
chmod 0700 "$G"
tl $D sync --profile gsticky; expect 9 "(g) a lock file of another user's is not taken"
contains "the lock" "(g) names the lock"
check '[ "$(mode_bytes "$G/auth.json")" = "$G0" ]' "(g) the file is unchanged"
rm -f "$G/auth.lock"
tl $D sync --profile gsticky; expect 0 "(g) with our own lock again, the home syncs"
rm -f "$G/auth.lock"; mkfifo "$G/auth.lock"
tl $D sync --profile gsticky; expect 9 "(g) a FIFO as the lock is never taken: the home is refused"
contains "not a regular file" "(g) says why"
tl $D sync --all; expect 9 "(g) sync --all: refused homes named, not a failure of every home"
contains "the other files were synced" "(g) the other homes were synced"
check '[ "$(mode_bytes "$G/auth.json")" = "$G0" ]' "(g) the file is unchanged"
rm -f "$G/auth.lock"

# --- (f) a file of our own whose new token names another endpoint than its credential's: not adopted
HF="$PUB/hf"; mkdir -m 0700 "$HF"; put_doc "$ATT_URL" f@example.com "$HF/auth.json"
tl $D import "$HF" --profile copied; expect 0 "(f) a grant whose endpoint is the attacker's portal"
V3="$WORK/victim/.hermes/auth-f.json"; put_doc "$REAL_URL" v3@example.com "$V3"; rt_of "$V3" > "$WORK/rt-victim3"
cp "$V3" "$HF/auth.json"      # the victim's file copied over it (a restored backup, a mistake)
ext0=$(q "SELECT count(*) FROM audit_event WHERE event = 'external_rotation'")
tl $D sync --profile copied; expect 9 "(f) a token whose file names another endpoint is not a rotation"
contains "not adopted" "(f) says so"; contains "$REAL_URL" "(f) naming the file's endpoint"
tl $D keep-fresh --once --ahead 86400; expect 7 "(f) keep-fresh presents nothing for it"
check '[ "$(q "SELECT count(*) FROM audit_event WHERE event = \"external_rotation\"")" = "$ext0" ]' "(f) nothing adopted"
check '[ "$(att unknown_rt)" = 0 ]' "(f) the victim's token never reached the attacker's portal"

# --- (e) tlother running tokenledger itself
TD="$TLH/l"; as_other mkdir -m 0700 "$TD"
mkdir -m 0755 "$PUB/rootcfg"; put_doc "$REAL_URL" backup@example.com "$PUB/rootcfg/auth.json"; chmod 0644 "$PUB/rootcfg/auth.json"
B0=$(mode_bytes "$PUB/rootcfg/auth.json")
as_other mkdir -m 0700 "$TLH/h1"; as_other ln -s "$PUB/rootcfg/auth.json" "$TLH/h1/auth.json"
as_other mkdir -m 0700 "$TLH/dots" "$TLH/h2"; put_doc "$REAL_URL" mine@example.com "$TLH/dots/auth.json"
chown tlother "$TLH/dots/auth.json"; as_other ln -s "$TLH/dots/auth.json" "$TLH/h2/auth.json"
as_other mkdir "$TLH/h3"; as_other chmod 0777 "$TLH/h3"; put_doc "$REAL_URL" open@example.com "$TLH/h3/auth.json"
chown tlother "$TLH/h3/auth.json"
OT="runuser -u tlother -- env HOME=$TLH"
TL_WRAP=$OT tl --db "$TD/l.db" init; expect 0 "(e) tlother's own ledger"
TL_WRAP=$OT tl --db "$TD/l.db" import "$TLH/h1" --profile h1; expect 9 "(e) a link in the home to a root-owned file is refused"
contains "owned by root (uid 0)" "(e) names the owner"
check '[ "$(mode_bytes "$PUB/rootcfg/auth.json")" = "$B0" ]' "(e) the root-owned file is unchanged"
TL_WRAP=$OT tl --db "$TD/l.db" import "$TLH/h3" --profile h3; expect 9 "(e) a home others can write is refused"
contains "writable by group or others" "(e) says why"
TL_WRAP=$OT tl --db "$TD/l.db" import "$TLH/h2" --profile h2; expect 0 "(e) a link of one's own to one's own file is followed"
TL_WRAP=$OT tl --db "$TD/l.db" sync --all; expect 0 "(e) and synced"
check '[ -L "$TLH/h2/auth.json" ]' "(e) the link stays a link"

no_secret_leak "$WORK/rt-victim" "$WORK/rt-victim3"
finish
