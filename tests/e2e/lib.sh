# lib.sh - helpers for the end-to-end scripts: a temporary HOME, the CLI with
# an optional wrapper (TL_WRAP, e.g. valgrind), the real loopback portal,
# assertions, and a leak check that no secret reached any output.
# Sourced by tests/e2e/*.sh; counts passes and failures and prints the
# closing line "N passed, N failed".
set -u
: "${TL_BIN:?TL_BIN must point at the tokenledger binary}"
PASS=0
FAIL=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tl-e2e-XXXXXX")
export HOME="$WORK/home"
mkdir -p "$HOME"
unset TOKENLEDGER_DB COLUMNS # a table fits $COLUMNS even on a pipe: the scripts set it where they mean to
OUT="$WORK/out"
ERR="$WORK/err"
ALL="$WORK/all-output" # every stdout/stderr of every command, for the secret scan
: > "$ALL"
PORTAL_PID=""

cleanup() {
  # Only the script itself: a child forked for `cmd &` is still this shell, with this trap, until
  # it execs, and a signal a test sends it in that moment (the SIGTERM loops) must not make it
  # kill the portal and remove $WORK under the running script.
  [ "${BASHPID:-$$}" = "$$" ] || return 0
  if [ -n "$PORTAL_PID" ]; then kill "$PORTAL_PID" 2>/dev/null; wait "$PORTAL_PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# tl ARGS... : runs the CLI; output in $OUT/$ERR, status in $RC.
tl() {
  set +e
  ${TL_WRAP:-} "$TL_BIN" "$@" > "$OUT" 2> "$ERR" < "${TL_STDIN:-/dev/null}"
  RC=$?
  set -e
  cat "$OUT" "$ERR" >> "$ALL"
  return 0
}
# tlin FILE ARGS... : same with standard input from FILE.
tlin() { local f=$1; shift; TL_STDIN=$f tl "$@"; }

ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; echo "  exit $RC; stdout: $(head -c 600 "$OUT")" >&2; echo "  stderr: $(head -c 600 "$ERR")" >&2; }
# expect CODE DESCRIPTION : the last command exited CODE.
expect() { if [ "$RC" = "$1" ]; then ok; else bad "$2 (wanted exit $1)"; fi; }
# contains PATTERN DESCRIPTION : stdout or stderr of the last command matches.
contains() { if grep -q -- "$1" "$OUT" "$ERR"; then ok; else bad "$2 (no '$1')"; fi; }
lacks() { if grep -q -- "$1" "$OUT" "$ERR"; then bad "$2 (found '$1')"; else ok; fi; }
check() { if eval "$1"; then ok; else RC=-; bad "$2"; fi; }
snapshot() { { sqlite3 "$1" .dump 2>/dev/null; ls -la "$(dirname "$1")" | awk '{print $1, $5, $NF}'; } | sha256sum; }
bytes() { sha256sum < "$1"; }
q() { sqlite3 "$DB" "$1"; }

start_portal() {
  "$TL_PORTAL" --port-file "$WORK/port" "$@" > "$WORK/portal.log" 2>&1 &
  PORTAL_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
  PORT=$(cat "$WORK/port")
  URL="http://127.0.0.1:$PORT"
}
admin() { curl -sf -X POST "$URL/admin/$1" ${2:+-d "$2"}; }
counter() { curl -sf "$URL/admin/counters" | jq -r ".$1"; }
seed_rt() { admin seed | jq -r .refresh_token > "$1"; }

# no_secret_leak FILE... : none of the secrets in FILEs appears in any output.
no_secret_leak() {
  for f in "$@"; do
    [ -s "$f" ] || continue
    if grep -qF -- "$(cat "$f")" "$ALL"; then RC=-; bad "secret from $(basename "$f") appeared in output"; else ok; fi
  done
}

finish() {
  echo "$PASS passed, $FAIL failed"
  [ "$FAIL" = 0 ]
}
