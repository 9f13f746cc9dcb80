#!/usr/bin/env bash
# docs.sh - the manual page and the bash completion against the tool itself, so they cannot drift
# apart silently: tokenledger(1) renders without a warning; every command `tokenledger --help` lists
# has its section in the manual, and every option that command's --help names appears in that
# section and completes after the command; every exit code (src/cli/cli.h) and every environment
# variable the code reads (getenv in src/) is documented in the manual; the completion offers the
# ledger's own profile and provider names.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_MAN:?TL_MAN must name the built manual page}" "${TL_SRC:?TL_SRC must name the source tree}"
COMPLETION="$TL_SRC/tools/completion/tokenledger.bash"
# The manual's source with roff's escaped dashes as plain ones.
sed 's/\\-/-/g' "$TL_MAN" > "$WORK/man.txt"

# --- it renders
if command -v groff > /dev/null; then
  set +e; groff -man -Tutf8 -ww -z "$TL_MAN" > "$OUT" 2> "$ERR"; RC=$?; set -e
  expect 0 "groff renders tokenledger(1)"
  check '[ ! -s "$ERR" ]' "groff -ww has no warning: $(head -c 300 "$ERR")"
  groff -man -Tutf8 "$TL_MAN" 2> /dev/null | sed 's/\x1b\[[0-9;]*m//g; s/.\x08//g' > "$WORK/man.rendered"
  check 'grep -q "^EXIT STATUS" "$WORK/man.rendered" && grep -q "^ENVIRONMENT" "$WORK/man.rendered"' \
    "the rendered page has its sections"
elif command -v mandoc > /dev/null; then
  set +e; mandoc -T lint -W warning "$TL_MAN" > "$OUT" 2> "$ERR"; RC=$?; set -e
  expect 0 "mandoc -T lint"
else
  echo "skipped: neither groff nor mandoc is installed; the page was checked as text only"
fi
for s in NAME SYNOPSIS DESCRIPTION COMMANDS ENVIRONMENT "EXIT STATUS" FILES EXAMPLES "SEE ALSO"; do
  check 'grep -q "^\.SH \"\?$s\"\?$" "$WORK/man.txt"' "section $s"
done

# section CMD : the manual's .SS CMD section; chapter NAME : its .SH NAME section.
section() { awk -v c="$1" '/^\.S[SH] / { on = ($1 == ".SS" && $2 == c) } on' "$WORK/man.txt"; }
chapter() { awk -v c="$1" '/^\.SH / { t = substr($0, 5); gsub(/"/, "", t); on = (t == c); next } on' "$WORK/man.txt"; }
# completes WORDS... : what the completion offers for the last word.
completes() {
  bash -c '. "$0"; COMP_WORDS=("${@}"); COMP_CWORD=$(($# - 1)); _tokenledger; printf "%s\n" "${COMPREPLY[@]}"' \
    "$COMPLETION" "$@"
}

# --- every command and each of its options, from the tool's own help
tl --help
expect 0 "--help"
awk '/^commands:/ { on = 1; next } on && /^$/ { exit } on && /^  [a-z]/ { print $1 }' "$OUT" > "$WORK/commands"
check '[ "$(wc -l < "$WORK/commands")" -ge 20 ]' "--help lists the commands ($(wc -l < "$WORK/commands"))"
completes tokenledger "" > "$WORK/top"
for c in $(cat "$WORK/commands"); do
  check '[ -n "$(section "$c")" ]' "tokenledger(1) has a section for '$c'"
  check 'grep -qx -- "$c" "$WORK/top"' "the completion offers '$c'"
  tl "$c" --help
  expect 0 "$c --help"
  grep -oE -- '--[a-z][a-z0-9-]*' "$OUT" | sort -u | grep -vxE -- '--(db|help)' > "$WORK/opts" || true
  completes tokenledger "$c" -- > "$WORK/copts"
  for o in $(cat "$WORK/opts"); do
    check 'section "$c" | grep -qE -- "(^|[^a-z-])$o([^a-z-]|$)"' "tokenledger(1) documents $c $o"
    check 'grep -qx -- "$o" "$WORK/copts"' "the completion offers $c $o"
  done
done
for o in --db --help --version; do
  check 'grep -q -- "^\.B[IR]* $o" "$WORK/man.txt"' "tokenledger(1) documents the global $o"
  check 'grep -qx -- "$o" "$WORK/top"' "the completion offers the global $o"
done

# --- every exit code and every environment variable
for code in $(grep -oE 'EXIT_[A-Z_]+ = [0-9]+' "$TL_SRC/src/cli/cli.h" | awk '{ print $3 }'); do
  check 'chapter "EXIT STATUS" | grep -qx "\.B $code"' \
    "tokenledger(1) documents exit code $code"
done
grep -rhoE 'getenv\("[A-Z_]+"\)' "$TL_SRC/src" | sed 's/getenv("\(.*\)")/\1/' | sort -u > "$WORK/env"
check '[ "$(wc -l < "$WORK/env")" -ge 5 ]' "the code reads environment variables"
for v in $(cat "$WORK/env"); do
  check 'chapter ENVIRONMENT | grep -qw "$v"' \
    "tokenledger(1) documents \$$v"
done

# --- the completion reads the ledger named on the line
DB="$WORK/ledger.db"
tl --db "$DB" init
tl --db "$DB" profile add work
tl --db "$DB" profile add play
PATH="$(dirname "$TL_BIN"):$PATH"
export PATH
check '[ "$(completes tokenledger --db "$DB" status --profile "" | sort | tr "\n" " ")" = "play work " ]' \
  "profiles complete from the ledger"
check '[ "$(completes tokenledger --db "$DB" token "" | sort | tr "\n" " ")" = "anthropic minimax-oauth nous openai-codex xai-oauth " ]' "providers complete from the ledger (the built-in ones)"
check '[ "$(completes tokenledger --db "$DB" token --profile w)" = work ]' "a profile prefix completes"
check '[ -z "$(completes tokenledger --db "$WORK/none.db" status --profile "")" ] && [ ! -e "$WORK/none.db" ]' \
  "a missing ledger completes nothing and is not created"
check '[ "$(completes tokenledger pool strategy nous "" | tr "\n" " ")" = "fill_first round_robin least_used random " ]' \
  "strategies complete"
check '[ "$(completes tokenledger profile "" | tr "\n" " ")" = "add set-home list rm strict " ]' "subcommands complete"
check '[ "$(completes tokenledger --db "$DB" profile set-home "" | sort | tr "\n" " ")" = "play work " ]' "set-home completes profile names"

finish
