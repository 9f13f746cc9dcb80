# deps.sh - sourced by tools/test, tools/demo and tools/bench: installs the
# Debian packages a task needs when they are missing (as root), or says
# exactly what to install (otherwise).
tl_deps() {
  local want="gcc make cmake pkg-config libsqlite3-dev libcurl4-openssl-dev libjansson-dev libssl-dev
              libmicrohttpd-dev sqlite3 jq curl"
  case "$1" in
    # groff-base renders the manual page; systemd brings systemd-analyze for the user unit's checks;
    # graphviz's dot reads what `lineage --dot` prints; bsdutils' script makes the terminal of e2e_ux.
    test) want="$want libcmocka-dev valgrind clang libclang-rt-14-dev groff-base systemd graphviz bsdutils" ;;
    demo | bench) want="$want libcmocka-dev" ;;
  esac
  local missing=""
  for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing > /dev/null
  else
    echo "missing Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install$missing" >&2
    return 1
  fi
}
