#!/usr/bin/env bash
# readme.sh - keeps README.md's code blocks true: every block is either run here, line by line as
# written, or named in NOT_HERE with the reason and the test that covers it instead; a block that is
# neither fails the test, so a new block cannot go unchecked.
#
# Each runnable shell block runs in a fresh temporary HOME whose ~/.hermes is a Hermes root (two
# profiles sharing the loopback portal's grant, and the shared store). `tokenledger ...` lines run
# as they are and must succeed; `systemctl --user enable --now UNIT` runs the unit's own ExecStart
# (from docs/UNIT.service.in; keep-fresh for one round, serve in the background, as its unit would);
# `systemctl --user status|daemon-reload` and `journalctl -u UNIT` must name an installed unit;
# `loginctl` needs a user manager and `cmake` lines are e2e_install's (it installs). The Forensics
# queries run in sqlite3 against the ledger the Quick start left. The drop-in example: every
# ReadWritePaths= entry is optional ("-", no 226/NAMESPACE when missing), its ExecStart names the
# binary where First five minutes installs it, and that command runs (one round) with the drop-in's
# Environment=. Then it checks what the five-minute block promises.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/hermes_root.sh"
set -e
: "${TL_PORTAL:?}" "${TL_SRC:?}"
start_portal --at-lifetime 3600
README="$TL_SRC/README.md"
PATH="$(dirname "$TL_BIN"):$PATH"
export PATH
SERVE_PID=""
stop_serve() { if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2> /dev/null || true; wait "$SERVE_PID" 2> /dev/null || true; fi; SERVE_PID=""; }
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; stop_serve; cleanup' EXIT

# Blocks not run here, by their first line (a fixed string), with why and what covers them.
NOT_HERE=(
  "bash tools/demo|tools/test runs the whole suite, this test included; tools/demo builds its own tree (both: e2e is their content)"
  "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo   #|builds and installs: e2e_install does it from a clean prefix"
  "cc app.c \$(pkg-config|compiles a program against an installed prefix: e2e_install builds tests/consumer both ways"
  "find_package(tokenledger|a CMake snippet: e2e_install builds tests/consumer with find_package"
)

# --- every block, numbered, with its language and first line
awk -v dir="$WORK" '
  /^```/ && !on { on = 1; n++; lang = substr($0, 4); f = dir "/block" n; printf "%s\n", lang > (f ".lang"); printf "" > f; next }
  /^```/ && on { on = 0; close(f); close(f ".lang"); next }
  on { print >> f }' "$README"
NBLOCKS=$(ls "$WORK"/block*.lang | wc -l)
check '[ "$NBLOCKS" -ge 10 ]' "the README's code blocks were found ($NBLOCKS)"

# unit_exec UNIT : the unit's ExecStart, with the installed binary's path left to PATH.
unit_exec() {
  local in="$TL_SRC/docs/$1.service.in"
  [ -f "$in" ] || return 1
  sed -n 's/^ExecStart=@CMAKE_INSTALL_FULL_BINDIR@\///p' "$in"
}

# fresh_home NAME : a new HOME with a Hermes root, its ledger's nous provider at the portal when asked.
fresh_home() {
  export HOME="$WORK/$1"
  mkdir -p "$HOME"
  ROOT="$HOME/.hermes"
  make_root "$ROOT" default work
  seed_rt "$HOME/rt.txt"
}

# run_block FILE NAME : every line of a shell block, as written.
run_block() {
  local n=0 line unit exec_line name=$2
  while IFS= read -r line; do
    line=${line%%#*} # comments (no block has a '#' inside a command)
    line=$(printf '%s' "$line" | sed 's/[[:space:]]*$//')
    [ -z "$line" ] && continue
    n=$((n + 1))
    set -- $line
    case $1 in
      tokenledger)
        set +e
        (cd "$HOME" && bash -c "$line") > "$OUT" 2> "$ERR" < /dev/null
        RC=$?
        set -e
        cat "$OUT" "$ERR" >> "$ALL"
        expect 0 "README ($name): $line"
        ;;
      systemctl)
        unit=${!#}
        case $3 in
          daemon-reload) ok ;;
          status) check '[ -f "$TL_SRC/docs/$unit.service.in" ]' "README ($name): $line names an installed unit" ;;
          enable)
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
          *) RC=-; bad "README: a systemctl line this test does not know how to check: $line" ;;
        esac
        ;;
      journalctl)
        unit=$(printf '%s\n' "$line" | sed -n 's/.* -u \([^ ]*\).*/\1/p')
        check '[ -f "$TL_SRC/docs/$unit.service.in" ]' "README: $line names an installed unit"
        ;;
      cmake | loginctl) ;;
      sqlite3)
        # the next block is the SQL it opens the ledger for
        SQLITE_LINE=$line
        ;;
      *) RC=-; bad "README: a line this test does not know how to check: $line" ;;
    esac
  done < "$1"
  LINES=$n
}

RAN=0
for ((i = 1; i <= NBLOCKS; i++)); do
  f="$WORK/block$i"
  lang=$(cat "$f.lang")
  first=$(grep -v '^[[:space:]]*\(#.*\)\?$' "$f" | head -1)
  reason=""
  for entry in "${NOT_HERE[@]}"; do
    case $first in "${entry%%|*}"*) reason=${entry#*|} ;; esac
  done
  if [ -n "$reason" ]; then
    echo "README block $i ($first): not run here: $reason"
    ok
    continue
  fi
  RAN=$((RAN + 1))
  case $lang in
    sh)
      if grep -q "^tokenledger keep-fresh --once$" "$f" && grep -q "profile strict --all on" "$f"; then
        # --- First five minutes: a Hermes user with a root at ~/.hermes
        fresh_home five
        run_block "$f" "First five minutes"
        check '[ "$LINES" -ge 15 ]' "every line of the five-minute block was looked at ($LINES)"
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
      elif grep -q "^tokenledger profile add work" "$f"; then
        # --- by hand, without Hermes files: a ledger with nothing but its nous provider at the portal
        export HOME="$WORK/byhand"
        mkdir -p "$HOME"
        seed_rt "$HOME/rt.txt"
        tl init; expect 0 "the ledger for the by-hand block"
        tl provider set nous --token-url "$URL/api/oauth/token" --device-url "$URL/api/oauth/device/code"
        admin config "approve_after=1" > /dev/null
        check '[ ! -e "$HOME/.hermes/profiles" ]' "no Hermes profiles directory before the block"
        run_block "$f" "by hand"
        tl status --json
        check 'jq -e "map(select(.profile == \"work\" and .access_token != \"needs_login\")) | length == 2" "$OUT" > /dev/null' \
          "the by-hand block leaves work with the added grant and the logged-in one"
      elif grep -q "^sqlite3 " "$f"; then
        run_block "$f" "Forensics"
      elif grep -q "^systemctl --user daemon-reload" "$f"; then
        fresh_home service
        tl init; tl import "$ROOT" --all-profiles
        run_block "$f" "Run it as a service"
      else
        # --- any other block: a fresh root, its ledger imported, the portal as nous's endpoint
        fresh_home "quick$i"
        run_block "$f" "block $i"
        QUICK_DB="$HOME/.hermes/tokenledger.db"
      fi
      ;;
    sql)
      check '[ -n "${SQLITE_LINE:-}" ] && [ -n "${QUICK_DB:-}" ]' "the SQL block follows its sqlite3 line, after the Quick start"
      set +e
      sqlite3 -bail -header -column "$QUICK_DB" < "$f" > "$OUT" 2> "$ERR"
      RC=$?
      set -e
      expect 0 "README (Forensics): every query runs against a real ledger"
      check '[ ! -s "$ERR" ]' "without an error ($(head -c 300 "$ERR"))"
      contains "generation" "and the lineage query answers"
      ;;
    ini)
      # --- the drop-in example
      rw=$(sed -n 's/^ReadWritePaths=//p' "$f")
      check '[ -n "$rw" ] && ! printf "%s\n" $rw | grep -qv "^-"' \
        "every ReadWritePaths= entry is optional ('-'): a missing one does not fail the unit (226/NAMESPACE)"
      prefix=$(sed -n 's/^cmake --install build --prefix \([^ ]*\).*/\1/p' "$README" | head -1)
      exec_line=$(sed -n 's/^ExecStart=\(..*\)/\1/p' "$f")
      bin=${exec_line%% *}
      check '[ "${bin/\%h/\~}" = "$prefix/bin/tokenledger" ]' "the drop-in's ExecStart names the binary where the README installs it ($bin, $prefix)"
      fresh_home dropin
      tl init; tl import "$ROOT" --all-profiles
      envs=$(sed -n 's/^Environment=//p' "$f" | sed "s|%h|$HOME|g")
      set +e
      env $envs "$TL_BIN" ${exec_line#* } --count 1 > "$OUT" 2> "$ERR" < /dev/null
      RC=$?
      set -e
      cat "$OUT" "$ERR" >> "$ALL"
      expect 0 "the drop-in's ExecStart runs with its Environment= (one round)"
      contains "round 1: " "and logs its round"
      ;;
    *) RC=-; bad "README block $i (${lang:-no language}, $first): neither run here nor listed in NOT_HERE" ;;
  esac
done
check '[ "$RAN" -ge 6 ]' "the runnable blocks ran ($RAN)"
finish
