#!/usr/bin/env bash
# network.sh - the loopback rule on the wire, in private mount and network
# namespaces: only the loopback interface exists, and /etc/hosts (bind-mounted
# over, for this process tree only) maps test names to 127.0.0.2 or to a
# non-loopback address, so nothing off-loopback can be reached even by mistake.
#   1. Plain http only to a loopback address written canonically: names that
#      look like one (127.0.0.1.near.test) are refused when stored and, when an
#      older ledger already holds one, before anything is sent.
#   2. The transfer itself connects only to loopback peers: a name resolving to
#      127.0.0.2 works, one resolving elsewhere is refused before connecting.
#   3. No proxy for a loopback endpoint, whatever http_proxy, HTTPS_PROXY and
#      ALL_PROXY say: a recording proxy on loopback is never contacted.
if [ -z "${TL_NETNS:-}" ]; then
  if [ "$(id -u)" = 0 ] && unshare -mn true 2>/dev/null; then
    exec unshare -mn env TL_NETNS=1 bash "$0" "$@"
  elif unshare -rmn true 2>/dev/null; then
    exec unshare -rmn env TL_NETNS=1 bash "$0" "$@"
  fi
  echo "SKIP: private namespaces (unshare -mn) are not available here"
  exit 77
fi
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}" "${TL_DRIVER:?}"
ip link set lo up
cat > "$WORK/hosts" <<'EOF'
127.0.0.1 localhost
127.0.0.2 near.test 127.0.0.1.near.test
10.255.255.1 far.test 127.0.0.1.far.test
EOF
mount --bind "$WORK/hosts" /etc/hosts
check '[ "$(getent hosts 127.0.0.1.near.test | cut -d" " -f1)" = 127.0.0.2 ]' "the test names resolve inside the namespace"
check '! ip route get 10.255.255.1 >/dev/null 2>&1' "nothing but loopback is reachable from here"

start_portal --addr 127.0.0.2 --at-lifetime 3600
URL="http://127.0.0.2:$PORT" # start_portal assumes 127.0.0.1
DB="$WORK/ledger.db"
D="--db $DB"
tl $D init
tl $D profile add alice
seed_rt "$WORK/rt-a"

# --- 1. names that look like loopback addresses
tl $D provider set nous --token-url "http://127.0.0.1.near.test:$PORT/api/oauth/token"; expect 2 "a look-alike name is refused"
contains "loopback address" "says why"
tl $D provider set nous --token-url "http://0x7f.0.0.2:$PORT/api/oauth/token"; expect 2 "a numeric spelling is refused"
tl $D provider set nous --token-url "$URL/api/oauth/token"; expect 0 "127.0.0.2 is a loopback address"
tl $D credential add nous --profile alice --refresh-token-file "$WORK/rt-a"; expect 0 "store a grant"
# A ledger written before these rules may hold such an endpoint: it is refused before anything is sent.
q "UPDATE credential SET token_url = 'http://127.0.0.1.near.test:$PORT/api/oauth/token'"
tl $D token nous --profile alice; expect 2 "a stored look-alike endpoint is refused"
contains "was not sent" "says the refresh token was not sent"
check '[ "$(counter requests)" = 0 ]' "the portal behind the look-alike name was never contacted"
check '[ "$(q "SELECT count(*) FROM refresh_attempt")" = 0 ]' "no presentation was even claimed"
q "UPDATE credential SET token_url = 'http://127.0.0.1.far.test:9/api/oauth/token'"
tl $D token nous --profile alice; expect 2 "a stored endpoint resolving off-loopback is refused"
q "UPDATE credential SET token_url = '$URL/api/oauth/token'"
tl $D token nous --profile alice; expect 0 "the grant still works at its real loopback endpoint"
check '[ "$(counter refreshes)" = 1 ]' "exactly one refresh"

# --- 2. the transfer keeps to loopback peers on its own
set +e
out=$(TL_DRIVER_LOOPBACK_ONLY=1 "$TL_DRIVER" post "http://near.test:$PORT/api/oauth/token" x-nous-refresh-token rt-nobody)
RC=$?
set -e
check '[ "${out%% *}" = 0 ] && [ "$(echo "$out" | cut -d" " -f2)" = 400 ]' "a name resolving to 127.0.0.2 is reached ($out)"
set +e
out=$(TL_DRIVER_LOOPBACK_ONLY=1 "$TL_DRIVER" post "http://far.test:9/api/oauth/token" x-nous-refresh-token rt-nobody)
set -e
check '[ "${out%% *}" = 1 ]' "a name resolving elsewhere is not sent ($out)"
check 'echo "$out" | grep -q "10.255.255.1, which is not a loopback address"' "refused before connecting, naming the address"
out=$("$TL_DRIVER" post "http://near.test:$PORT/api/oauth/token")
check 'echo "$out" | grep -q "^1 0 refusing to send: URL"' "through the URL rules a name is refused outright ($out)"

# --- 3. proxies are never used for a loopback endpoint
PROXY_PORTAL_PID=""
"$TL_PORTAL" --port-file "$WORK/proxy-port" > "$WORK/proxy.log" 2>&1 &
PROXY_PORTAL_PID=$!
trap '[ "${BASHPID:-$$}" = "$$" ] || exit 0; kill $PROXY_PORTAL_PID 2>/dev/null || true; wait $PROXY_PORTAL_PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do [ -s "$WORK/proxy-port" ] && break; sleep 0.05; done
PROXY="http://127.0.0.1:$(cat "$WORK/proxy-port")"
proxied() { curl -sf "$PROXY/admin/counters" | jq -r .requests; }
before=$(counter refreshes)
http_proxy=$PROXY HTTP_PROXY=$PROXY https_proxy=$PROXY HTTPS_PROXY=$PROXY ALL_PROXY=$PROXY all_proxy=$PROXY NO_PROXY= no_proxy= \
  tl $D refresh nous --profile alice --force
expect 0 "a refresh with every proxy variable set"
check '[ "$(proxied)" = 0 ]' "the proxy was never contacted"
check '[ $(( $(counter refreshes) - before )) = 1 ]' "the refresh went straight to the loopback portal"

no_secret_leak "$WORK/rt-a"
finish
