#!/usr/bin/env bash
# install.sh - the installed package as a library consumer and a service user meet it:
# `cmake --install` into a temporary prefix puts every file in its place (shared library with its
# soname, archive, header, pkg-config files, CMake package, manual page, completion, user unit);
# the shared library exports exactly the TL_EXTERN functions of tokenledger.h; the package files
# carry no build-time path; a program built with pkg-config and one built with find_package, each
# against the shared library and the archive, open a ledger and refresh through the library; all of
# it still works after the prefix is moved elsewhere. The keep-fresh user unit names the installed
# binary and, where systemd-analyze exists, passes `verify` and rates an exposure below 3.
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_BUILD:?TL_BUILD must name the build directory}" "${TL_SRC:?TL_SRC must name the source tree}"
CC=${TL_CC:-cc}
read -r -a XCFLAGS <<< "${TL_CONSUMER_CFLAGS:-}" # the build's sanitizer flags, so consumers link its library
P="$WORK/prefix"
CONSUMER="$TL_SRC/tests/consumer"
# step LOG CMD... : runs CMD with its output in LOG; RC is its status.
step() { local log=$1; shift; set +e; "$@" > "$log" 2>&1; RC=$?; set -e; cp "$log" "$OUT"; : > "$ERR"; }

# --- install into a prefix that exists nowhere else
step "$WORK/install.log" cmake --install "$TL_BUILD" --prefix "$P"
expect 0 "cmake --install --prefix"
for f in bin/tokenledger include/tokenledger.h lib/libtokenledger.a lib/pkgconfig/tokenledger.pc \
  lib/pkgconfig/tokenledger-static.pc lib/cmake/tokenledger/tokenledgerConfig.cmake \
  lib/cmake/tokenledger/tokenledgerConfigVersion.cmake share/man/man1/tokenledger.1 \
  share/bash-completion/completions/tokenledger share/systemd/user/tokenledger-keep-fresh.service; do
  check '[ -f "$P/$f" ]' "installed $f"
done
check '[ "$(readlink "$P/lib/libtokenledger.so")" = libtokenledger.so.0 ]' "libtokenledger.so links to the soname"
check '[ -f "$P/lib/$(readlink "$P/lib/libtokenledger.so.0")" ]' "libtokenledger.so.0 links to the library"
check 'readelf -d "$P/lib/libtokenledger.so.0" | grep -q "SONAME.*\[libtokenledger.so.0\]"' "soname libtokenledger.so.0"
check '! grep -q "@[A-Z_]*@" "$P/share/man/man1/tokenledger.1"' "the manual page is filled in"
if command -v man > /dev/null; then
  check 'MANPATH="$P/share/man" man -w tokenledger | grep -q "^$P/share/man/man1/tokenledger.1"' \
    "man finds tokenledger(1) below the prefix"
fi

# --- the shared library exports the public interface and nothing else
nm -D --defined-only "$P/lib/libtokenledger.so.0" | awk '$2 == "T" { print $3 }' | sort > "$WORK/exported"
# Every function the header declares, marked TL_EXTERN or not (an unmarked one would be hidden).
grep -oE '^(TL_EXTERN )?(const )?[a-z_0-9]+[ *]+tl_[a-z0-9_]+\(' "$P/include/tokenledger.h" | grep -oE 'tl_[a-z0-9_]+\($' |
  tr -d '(' | sort > "$WORK/declared"
diff "$WORK/declared" "$WORK/exported" > "$WORK/symdiff" || true
check '[ ! -s "$WORK/symdiff" ]' "exported symbols = TL_EXTERN declarations ($(grep '^[<>]' "$WORK/symdiff" | tr '\n' ' '))"
check '[ "$(wc -l < "$WORK/exported")" -gt 40 ]' "the public interface is exported"

# --- no build-time path in the package files: they are relocatable
check '! grep -rlF -e "$P" -e "$TL_SRC" -e "$TL_BUILD" "$P/lib/pkgconfig" "$P/lib/cmake"' \
  "pkg-config and CMake files name no absolute build or install path"

export PKG_CONFIG_PATH="$P/lib/pkgconfig"
check '[ "$(pkg-config --modversion tokenledger)" = "$("$P/bin/tokenledger" --version | cut -d" " -f2)" ]' \
  "pkg-config version = tokenledger --version"
check '[ "$(pkg-config --variable=includedir tokenledger)" -ef "$P/include" ]' "includedir is below the prefix"
check 'pkg-config --libs tokenledger | grep -q -- "-ltokenledger" && ! pkg-config --libs tokenledger | grep -q -- -lsqlite3' \
  "--libs: the shared library alone (it carries its dependencies)"
check 'pkg-config --static --libs tokenledger | grep -q -- "-lsqlite3.*-lcurl.*-ljansson.*-lcrypto"' \
  "--static --libs: the archive's dependencies too"

# consumer NAME ARGS... : builds $CONSUMER/consumer.c into $WORK/NAME with ARGS (pkg-config output).
consumer() { local name=$1; shift; step "$WORK/$name.log" "$CC" "${XCFLAGS[@]}" -o "$WORK/$name" "$CONSUMER/consumer.c" "$@"; }
# runs BIN... : runs a consumer on a new ledger; it must print its verdict.
runs() { step "$WORK/run.log" "$@" "$WORK/ledger-$RANDOM.db"; expect 0 "$* runs"; contains "consumer ok" "$* checks pass"; }

# --- pkg-config: the shared library and the archive
consumer pc_shared $(pkg-config --cflags --libs tokenledger)
expect 0 "build with pkg-config --cflags --libs tokenledger"
check 'readelf -d "$WORK/pc_shared" | grep -q "NEEDED.*libtokenledger.so.0"' "links libtokenledger.so.0"
runs env LD_LIBRARY_PATH="$P/lib" "$WORK/pc_shared"
consumer pc_static $(pkg-config --cflags --libs tokenledger-static)
expect 0 "build with pkg-config --cflags --libs tokenledger-static"
check '! readelf -d "$WORK/pc_static" | grep -q libtokenledger' "the archive is linked in, no libtokenledger.so needed"
runs "$WORK/pc_static"

# --- CMake: find_package(tokenledger 0.1 COMPONENTS shared static)
cmake_consumer() { # BUILD_DIR PREFIX [ARGS]
  local b=$1 p=$2; shift 2
  step "$b.log" cmake -S "$CONSUMER" -B "$b" -DCMAKE_PREFIX_PATH="$p" -DCMAKE_C_COMPILER="$CC" \
    -DCMAKE_C_FLAGS="${XCFLAGS[*]}" "$@"
  [ "$RC" = 0 ] && step "$b.log" cmake --build "$b"
  return 0
}
cmake_consumer "$WORK/cm" "$P"
expect 0 "build with find_package(tokenledger)"
check 'readelf -d "$WORK/cm/consumer_shared" | grep -q "NEEDED.*libtokenledger.so.0"' "tokenledger::tokenledger is shared"
check '! readelf -d "$WORK/cm/consumer_static" | grep -q libtokenledger' "tokenledger::tokenledger_static is the archive"
runs "$WORK/cm/consumer_shared"
runs "$WORK/cm/consumer_static"
cmake_consumer "$WORK/cm9" "$P" -DTL_WANT_VERSION=9.0
expect 1 "find_package(tokenledger 9.0) is refused"
contains "compatible with requested version" "the refusal names the version"

# --- the user units (every docs/*.service.in) name the installed binary and are hardened
UNITS=$(ls "$P"/share/systemd/user/*.service 2> /dev/null)
check '[ -n "$UNITS" ] && [ "$(echo "$UNITS" | wc -l)" = "$(ls "$TL_SRC"/docs/*.service.in | wc -l)" ]' \
  "every unit template is installed"
UNIT="$P/share/systemd/user/tokenledger-keep-fresh.service"
check 'grep -qx "ExecStart=$P/bin/tokenledger keep-fresh --interval 60 --ahead 600 --watch" "$UNIT"' \
  "keep-fresh's ExecStart is the installed binary"
if command -v systemd-analyze > /dev/null; then
  mkdir -m 0700 -p "$WORK/xdg"
  export XDG_RUNTIME_DIR="$WORK/xdg" MANPATH="$P/share/man:"
fi
for u in $UNITS; do
  n=$(basename "$u")
  check 'grep -q "^ExecStart=$P/bin/tokenledger " "$u" && ! grep -q "@[A-Z_]*@" "$u"' "$n: ExecStart is the installed binary"
  check 'grep -qx "Type=exec" "$u"' "$n: Type=exec"
  # serve asks the kernel (NETLINK_SOCK_DIAG) whose each caller's socket is: AF_NETLINK too, for it alone.
  families="AF_UNIX AF_INET AF_INET6"; [ "$n" = tokenledger-serve.service ] && families="$families AF_NETLINK"
  for k in ProtectSystem=strict ProtectHome=read-only "ReadWritePaths=%h/.hermes" NoNewPrivileges=yes \
    "RestrictAddressFamilies=$families" "SystemCallFilter=@system-service" MemoryDenyWriteExecute=yes \
    UMask=0077 "CapabilityBoundingSet="; do
    check 'grep -qx -- "$k" "$u"' "$n has $k"
  done
  if command -v systemd-analyze > /dev/null; then
    step "$WORK/verify.log" systemd-analyze verify --user "$u"
    expect 0 "systemd-analyze verify --user $n"
    lacks "." "verify says nothing about $n"
    # --threshold is the exposure times ten: above 29 (a score of 3.0 or more) fails.
    step "$WORK/security.log" systemd-analyze security --offline=true --user --threshold=29 "$u"
    expect 0 "systemd-analyze security $n: exposure below 3"
    contains "Overall exposure level for $n: [0-2]\.[0-9] " "$n: the score is below 3"
    grep "Overall exposure" "$WORK/security.log"
  else
    echo "skipped: systemd-analyze is not installed (Debian package systemd); $n was checked as text only"
  fi
done

# --- move the prefix: everything but the unit's ExecStart still holds
mv "$P" "$WORK/moved"
M="$WORK/moved"
export PKG_CONFIG_PATH="$M/lib/pkgconfig"
check '[ "$(pkg-config --variable=includedir tokenledger)" -ef "$M/include" ]' "after the move, includedir follows"
check '[ "$(pkg-config --variable=libdir tokenledger-static)" -ef "$M/lib" ]' "after the move, libdir follows"
consumer moved_shared $(pkg-config --cflags --libs tokenledger)
expect 0 "build with pkg-config from the moved prefix"
runs env LD_LIBRARY_PATH="$M/lib" "$WORK/moved_shared"
consumer moved_static $(pkg-config --cflags --libs tokenledger-static)
expect 0 "build with the archive from the moved prefix"
runs "$WORK/moved_static"
cmake_consumer "$WORK/cm-moved" "$M"
expect 0 "find_package from the moved prefix"
check 'grep -rqF "$M/lib/libtokenledger" "$WORK/cm-moved/CMakeFiles"' "the moved library is the one linked"
runs "$WORK/cm-moved/consumer_shared"
runs "$WORK/cm-moved/consumer_static"
step "$WORK/version.log" "$M/bin/tokenledger" --version
expect 0 "the moved tokenledger runs (it links the archive)"
contains "^tokenledger $(pkg-config --modversion tokenledger) " "and names its version"

finish
