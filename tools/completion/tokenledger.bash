# bash completion for tokenledger(1)                                       -*- shell-script -*-
# Installed as share/bash-completion/completions/tokenledger (bash-completion loads it on first
# use), or source it from ~/.bashrc. Completes commands, subcommands, each command's options,
# profile and provider names from the ledger named on the line (--db, else $TOKENLEDGER_DB, else
# the default), strategies, and file or directory names where an option takes a path. It only
# reads the ledger (`profile list`, `provider list`) and never prints an error.
# tests/e2e/docs.sh checks that every command and option `tokenledger --help` lists completes here.

# _tokenledger_names BIN DB KIND: the names in `KIND list --json` (profile or provider).
_tokenledger_names()
{
  local bin=$1 db=$2 kind=$3
  command -v "$bin" > /dev/null 2>&1 || return 0
  "$bin" ${db:+--db "$db"} "$kind" list --json 2> /dev/null < /dev/null |
    command grep -o '"name": *"[^"]*"' | command sed 's/^"name": *"\(.*\)"$/\1/'
}

_tokenledger()
{
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local commands="init import status token refresh sync keep-fresh serve export login profile provider credential
                  pool report lineage audit history check-rt recover doctor compact help"
  local bin=${COMP_WORDS[0]} db="" cmd="" at=0 i
  COMPREPLY=()

  # The command is the first word that is not a global option or its value.
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
      --db) db=${COMP_WORDS[i + 1]}; ((i++)) ;;
      --db=*) db=${COMP_WORDS[i]#--db=} ;;
      -*) ;;
      *) cmd=${COMP_WORDS[i]}; at=$i; break ;;
    esac
  done
  for ((i = at + 1; i < COMP_CWORD; i++)); do # --db may follow the command too
    case ${COMP_WORDS[i]} in
      --db) db=${COMP_WORDS[i + 1]} ;;
      --db=*) db=${COMP_WORDS[i]#--db=} ;;
    esac
  done
  # Words after the command that are neither options nor option values: subcommand, PROVIDER, ...
  local args=() takes_value="--db --home --token-url --device-url --client-id --rt-header --scope --skew --grace
    --profile --refresh-token-file --access-token-file --expires-at --label --entry-id --source --origin --output
    --shared-nous --interval --ahead --count --keep-days --credential --limit --entry --status --reset-at --columns
    --listen --threads"
  if ((at)); then
    for ((i = at + 1; i < COMP_CWORD; i++)); do
      case ${COMP_WORDS[i]} in
        -*=*) ;;
        -*) [[ " $takes_value " == *" ${COMP_WORDS[i]} "* ]] && ((i++)) ;;
        *) args+=("${COMP_WORDS[i]}") ;;
      esac
    done
  fi

  # The value of an option.
  case $prev in
    --db | --output | --refresh-token-file | --access-token-file)
      compopt -o filenames 2> /dev/null
      COMPREPLY=($(compgen -f -- "$cur"))
      return 0 ;;
    --home | --shared-nous)
      compopt -o filenames 2> /dev/null
      COMPREPLY=($(compgen -d -- "$cur"))
      return 0 ;;
    --profile | -p)
      COMPREPLY=($(compgen -W "$(_tokenledger_names "$bin" "$db" profile)" -- "$cur"))
      return 0 ;;
    --origin)
      COMPREPLY=($(compgen -W "login import" -- "$cur"))
      return 0 ;;
    --token-url | --device-url | --client-id | --rt-header | --scope | --skew | --grace | --expires-at | \
      --label | --entry-id | --source | --interval | --ahead | --count | --keep-days | --credential | --limit | \
      --entry | --status | --reset-at | --columns | --listen | --threads)
      return 0 ;; # free text
  esac

  if [[ -z $cmd ]]; then
    COMPREPLY=($(compgen -W "$commands --db --help --version" -- "$cur"))
    return 0
  fi

  local opts="" words=""
  case $cmd in
    init) opts="--json" ;;
    help) ((${#args[@]} == 0)) && words=$commands ;;
    profile)
      opts="--home --create --clear --all --json --wide --columns"
      case ${#args[@]} in
        0) words="add set-home list rm strict" ;;
        1) [[ ${args[0]} == set-home || ${args[0]} == rm || ${args[0]} == strict ]] &&
          words=$(_tokenledger_names "$bin" "$db" profile) ;;
        2)
          [[ ${args[0]} == strict ]] && words="on off"
          if [[ ${args[0]} == set-home && $cur != -* ]]; then
            compopt -o filenames 2> /dev/null
            COMPREPLY=($(compgen -d -- "$cur"))
            return 0
          fi ;;
      esac ;;
    provider)
      opts="--token-url --device-url --client-id --rt-header --rt-in-body --scope --skew --grace --json --wide --columns"
      ((${#args[@]} == 0)) && words="set list" ;;
    credential)
      opts="--profile --refresh-token-file --access-token-file --expires-at --label --token-url --entry-id
            --source --origin --force --json --wide --columns"
      ((${#args[@]} == 0)) && words="add rm list"
      ((${#args[@]} == 1)) && [[ ${args[0]} == add ]] && words=$(_tokenledger_names "$bin" "$db" provider) ;;
    login) opts="--profile --credential --json" ;;&
    token) opts="--profile --json" ;;&
    refresh) opts="--profile --force --json" ;;&
    report) opts="--profile --entry --status --reset-at --json" ;;&
    login | token | refresh | report) ((${#args[@]} == 0)) && words=$(_tokenledger_names "$bin" "$db" provider) ;;
    import)
      opts="--profile --all-profiles --dry-run --json --wide --columns"
      if ((${#args[@]} == 0)) && [[ $cur != -* ]]; then
        compopt -o filenames 2> /dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
      fi ;;
    export) opts="--profile --output --shared-nous --json --wide --columns" ;;
    sync) opts="--profile --all --json --wide --columns" ;;
    keep-fresh) opts="--interval --ahead --once --count --no-sync --watch --json --wide --columns" ;;
    serve) opts="--listen --interval --ahead --no-sync --no-keep-fresh --threads --quiet --status --json --wide
                 --columns" ;;
    compact) opts="--keep-days --json" ;;
    status) opts="--profile --json --wide --columns" ;;
    lineage) opts="--credential --tree --dot --json --wide --columns" ;;
    audit | history) opts="--credential --limit --json --wide --columns" ;;
    check-rt) opts="--refresh-token-file --json" ;;
    doctor) opts="--fix --json --wide --columns" ;;
    recover) opts="--credential --assume-not-sent --mark-dead --rescue --json" ;;
    pool)
      opts="--profile --json"
      case ${#args[@]} in
        0) words="strategy" ;;
        1) words=$(_tokenledger_names "$bin" "$db" provider) ;;
        2) words="fill_first round_robin least_used random" ;;
      esac ;;
    *) return 0 ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts --help --db" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
  fi
  return 0
}
complete -F _tokenledger tokenledger
