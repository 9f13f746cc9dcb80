#!/usr/bin/env bash
# readme.sh - keeps README.md's "First five minutes" true: runs its block line by line, as written,
# in a temporary HOME whose ~/.hermes is a Hermes root (two profiles sharing the loopback portal's
# grant, and the shared store). `tokenledger ...` lines run as they are and must succeed;
# `systemctl --user enable --now UNIT` runs the unit's own ExecStart (from docs/UNIT.service.in;
# keep-fresh for one round, serve in the background, as its unit would); `journalctl -u UNIT` must
# name an installed unit; `cmake` and `loginctl` lines are not run here (e2e_install installs).
# Then it checks what the block promises: every profile imported, strict mode on with surrogates in
# Hermes' files, and doctor content.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/hermes_root.sh"
set -e
: "${TL_PORTAL:?}" "${TL_SRC:?}"
start_portal --at-lifetime 3600
ROOT="$HOME/.hermes"
PATH="$(dirname "$TL_BIN"):$PATH"
export PATH
SERVE_PID=""
stop_serve() { if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2> /dev/null || true; wait "$SERVE_PID" 2> /dev/null || true; fi; SERVE_PID=""; }
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; stop_serve; cleanup' EXIT
make_root "$ROOT" default work

awk '/<!-- five-minutes:begin -->/ { on = 1; next } /<!-- five-minutes:end -->/ { on = 0 } on' "$TL_SRC/README.md" |
  grep -v '^```' > "$WORK/block"
check '[ "$(grep -c "^tokenledger " "$WORK/block")" -ge 8 ]' "the README has its five-minute block"

# unit_exec UNIT : the unit's ExecStart, with the installed binary's path left to PATH.
unit_exec() {
  local in="$TL_SRC/docs/$1.service.in"
  [ -f "$in" ] || return 1
  sed -n 's/^ExecStart=@CMAKE_INSTALL_FULL_BINDIR@\///p' "$in"
}

n=0
while IFS= read -r line; do
  line=${line%%#*}                         # comments
  line=$(printf '%s' "$line" | sed 's/[[:space:]]*$//')
  [ -z "$line" ] && continue
  n=$((n + 1))
  set -- $line
  case $1 in
    tokenledger)
      set +e
      bash -c "$line" > "$OUT" 2> "$ERR" < /dev/null
      RC=$?
      set -e
      cat "$OUT" "$ERR" >> "$ALL"
      expect 0 "README: $line"
      ;;
    systemctl)
      unit=${!#}
      exec_line=$(unit_exec "$unit") || { RC=-; bad "README: $line names a unit the build does not install"; continue; }
      check '[ -n "$exec_line" ]' "$unit has an ExecStart"
      case $exec_line in
        "tokenledger keep-fresh "*)
          set +e; bash -c "$exec_line --count 1" > "$OUT" 2> "$ERR" < /dev/null; RC=$?; set -e
          cat "$OUT" "$ERR" >> "$ALL"
          expect 0 "README: $line ($exec_line, one round)"
          check 'grep -qE "round 1: " "$OUT"' "the keep-fresh unit logs its round"
          ;;
        "tokenledger serve "*)
          bash -c "exec $exec_line" >> "$WORK/serve.log" 2>&1 &
          SERVE_PID=$!
          for _ in $(seq 200); do [ "$(jq -r .pid "$ROOT/tokenledger.db-serve" 2> /dev/null)" = "$SERVE_PID" ] && break; sleep 0.05; done
          tl serve --status; expect 0 "README: $line (serve is up)"
          ;;
        *) RC=-; bad "README: $line: no way to run $exec_line here" ;;
      esac
      ;;
    journalctl)
      unit=$(printf '%s\n' "$line" | sed -n 's/.* -u \([^ ]*\).*/\1/p')
      check '[ -f "$TL_SRC/docs/$unit.service.in" ]' "README: $line names an installed unit"
      ;;
    cmake | loginctl) ;;
    *) RC=-; bad "README: a line this test does not know how to check: $line" ;;
  esac
done < "$WORK/block"
check '[ "$n" -ge 15 ]' "every line of the block was looked at ($n)"

# --- what the block promises
DB="$ROOT/tokenledger.db"
tl profile list --json
check 'jq -e "map(.name) == [\"default\", \"work\"] and all(.strict == true)" "$OUT" > /dev/null' \
  "both profiles imported and in strict mode"
surl=$(jq -r .url "$DB-serve")
check '[ "$(jq -r .providers.nous.portal_base_url "$(auth "$ROOT" work)")" = "$surl" ]' "Hermes' files point at serve"
check 'jq -r .providers.nous.refresh_token "$(auth "$ROOT" work)" | grep -q "^tlsurr1\."' "and hold only a surrogate"
tl doctor; expect 0 "doctor finds nothing wrong"
tl lineage --tree; contains "credential 1: nous, alice@example.com (active)" "the tree shows the grant"
stop_serve
finish
