#!/usr/bin/env bash
# providers.sh - the rotating grants besides Nous, end to end through the real
# CLI and the real loopback portal in each provider's personality (tl-portal
# --provider): built-in endpoints; a Hermes home's Codex grant
# (providers."openai-codex".tokens) imported, refreshed with a form body,
# rotated on record in the lineage, written back in Hermes' shape (tokens with
# the answer's id_token, last_refresh); a spent token refused locally; OpenAI's
# nested error classified; concurrent processes: one rotation, no reuse.
# Then Anthropic (<HERMES_HOME>/.anthropic_oauth.json kept as it is; JSON body).
. "$(dirname "$0")/lib.sh"
set -e
: "${TL_PORTAL:?}"
export TOKENLEDGER_HTTP_TIMEOUT_MS=5000
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
# an access token Hermes and the Codex CLI read as expired: a JWT whose exp is in the past
EXPIRED_JWT="eyJhbGciOiJub25lIn0.$(printf '{"exp":1700000000,"https://api.openai.com/auth":{"chatgpt_account_id":"acct-0"}}' | b64url).sigold"
jwt_exp() { cut -d. -f2 <<< "$1" | tr '_-' '/+' | { p=$(cat); while [ $(( ${#p} % 4 )) != 0 ]; do p="$p="; done; printf %s "$p"; } | base64 -d | jq -r .exp; }

# --- 0. built in: a new ledger knows where Codex, Anthropic, xAI and MiniMax refresh
DB0="$WORK/builtin.db"
tl --db "$DB0" init; expect 0 "init"
tl --db "$DB0" provider list --json; expect 0 "provider list"
check 'jq -e "any(.[]; .name == \"openai-codex\" and .token_url == \"https://auth.openai.com/oauth/token\" and .client_id == \"app_EMoamEEZ73f0CkXaXp7hrann\")" "$OUT" >/dev/null' "openai-codex is built in"
check 'jq -e "any(.[]; .name == \"anthropic\" and .token_url == \"https://platform.claude.com/v1/oauth/token\" and .client_id == \"9d1c250a-e61b-44d9-88ed-5944d1962f5e\")" "$OUT" >/dev/null' "anthropic is built in"
check 'jq -e "any(.[]; .name == \"xai-oauth\" and (.token_url | startswith(\"https://auth.x.ai/\")))" "$OUT" >/dev/null' "xai-oauth is built in, on x.ai over https"
check 'jq -e "any(.[]; .name == \"minimax-oauth\" and .token_url == \"https://api.minimax.io/oauth/token\")" "$OUT" >/dev/null' "minimax-oauth is built in"
check '[ "$(sqlite3 "$DB0" "SELECT body FROM provider WHERE name = \"anthropic\"")" = json ]' "anthropic's refresh is a JSON body"
tl --db "$DB0" import "$TL_SRC/tests/data/hermes/03_codex_tokens.json" --profile c; expect 0 "import a Codex grant"
check '[ "$(sqlite3 "$DB0" "SELECT token_url FROM credential WHERE provider = \"openai-codex\"")" = https://auth.openai.com/oauth/token ]' "an imported Codex grant refreshes at auth.openai.com"

# --- 1. Codex: a Hermes home, imported
start_portal --provider codex --at-lifetime 3600
DB="$WORK/ledger.db"; D="--db $DB"
tl $D init
tl $D provider set openai-codex --token-url "$URL/oauth/token"; expect 0 "point openai-codex at the loopback portal"
H="$WORK/hermes-cx"; mkdir -p "$H"
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/rt0"
jq -r .id_token <<< "$seed" > "$WORK/id0"
jq -n --arg rt "$(cat "$WORK/rt0")" --arg at "$EXPIRED_JWT" --arg idt "$(cat "$WORK/id0")" '{version: 1,
  providers: {"openai-codex": {tokens: {id_token: $idt, access_token: $at, refresh_token: $rt, account_id: "acct-0"},
    last_refresh: "2026-10-01T01:02:03.000004Z", auth_mode: "chatgpt", label: "family@example.com"}},
  active_provider: "openai-codex", credential_pool: {}, updated_at: "2026-10-01T01:02:04+00:00"}' > "$H/auth.json"
chmod 600 "$H/auth.json"
tl $D import "$H" --profile cx; expect 0 "import a Hermes home holding openai-codex"
check '[ "$(q "SELECT token_url FROM credential WHERE provider = \"openai-codex\"")" = "$URL/oauth/token" ]' "the Codex grant refreshes at the portal set"

# --- 2. the expired access token is refreshed: rotation on record, Hermes' shape written back
tl $D token openai-codex --profile cx; expect 0 "token: the expired Codex access token is refreshed"
cp "$OUT" "$WORK/at1"
check '[ "$(counter refreshes)" = 1 ] && [ "$(counter form_bodies)" = 1 ] && [ "$(counter bad_client)" = 0 ]' "one refresh, a form body, Codex's client id"
check '[ "$(jq -r '"'"'.providers."openai-codex".tokens.access_token'"'"' "$H/auth.json")" = "$(cat "$WORK/at1")" ]' "Hermes' tokens.access_token is the new one"
check '[ "$(jq -r '"'"'.providers."openai-codex".tokens.refresh_token'"'"' "$H/auth.json")" != "$(cat "$WORK/rt0")" ]' "Hermes' tokens.refresh_token rotated"
idt=$(jq -r '.providers."openai-codex".tokens.id_token' "$H/auth.json")
check '[ "$idt" != "$(cat "$WORK/id0")" ] && [ "$(cut -d. -f2 <<< "$idt" | wc -c)" -gt 10 ]' "the id_token the answer carried is written back"
check 'jq -r '"'"'.providers."openai-codex".last_refresh'"'"' "$H/auth.json" | grep -Eq "^20[0-9-]{8}T[0-9:]{8}\.[0-9]{6}Z$"' "last_refresh in Hermes' format (microseconds, Z)"
check '[ "$(jq -r '"'"'.providers."openai-codex".last_refresh'"'"' "$H/auth.json")" != "2026-10-01T01:02:03.000004Z" ]' "last_refresh moved"
check 'jq -e ".providers.\"openai-codex\" | .tokens.account_id == \"acct-0\" and .auth_mode == \"chatgpt\" and .label == \"family@example.com\"" "$H/auth.json" >/dev/null' "account_id, auth_mode and label kept"
check 'jq -e ".providers.\"openai-codex\" | keys == [\"auth_mode\", \"label\", \"last_refresh\", \"tokens\"]" "$H/auth.json" >/dev/null && jq -e ".providers.\"openai-codex\".tokens | keys == [\"access_token\", \"account_id\", \"id_token\", \"refresh_token\"]" "$H/auth.json" >/dev/null' "no key added to Hermes' shape"
check '[ "$(q "SELECT expires_at FROM credential WHERE provider = \"openai-codex\"")" = "$(( $(jwt_exp "$(cat "$WORK/at1")") * 1000 ))" ]' "the access token's expiry is the JWT's exp"
tl $D lineage --json; expect 0 "lineage"
check 'jq -e "[.[] | select(.provider == \"openai-codex\")] | length == 2 and .[0].state == \"rotated\" and .[1].state == \"current\" and .[1].origin == \"refresh\"" "$OUT" >/dev/null' "the rotation is on record in the lineage"
tl $D token openai-codex --profile cx; expect 0 "token again"
check '[ "$(counter refreshes)" = 1 ]' "a fresh Codex token is not refreshed again"

# --- 3. a spent Codex token is refused locally, never presented
requests=$(counter requests)
tl $D check-rt --refresh-token-file "$WORK/rt0"; expect 4 "check-rt: the imported Codex token is spent"
tl $D credential add openai-codex --profile cx --refresh-token-file "$WORK/rt0"; expect 4 "adding the spent token is refused"
jq --arg rt "$(cat "$WORK/rt0")" '.providers."openai-codex".tokens.refresh_token = $rt' "$H/auth.json" > "$H/auth.json.new" && mv "$H/auth.json.new" "$H/auth.json"
tl $D sync --profile cx --json; expect 0 "sync with the spent token back in Hermes' file"
check 'jq -e "any(.[]; .action == \"spent_overwritten\")" "$OUT" >/dev/null' "the spent token is reported"
check '[ "$(jq -r '"'"'.providers."openai-codex".tokens.refresh_token'"'"' "$H/auth.json")" = "$(q "SELECT secret FROM refresh_token WHERE state = \"current\" AND credential_id = (SELECT id FROM credential WHERE provider = \"openai-codex\")")" ]' "and overwritten with the current one"
check '[ "$(counter requests)" = "$requests" ] && [ "$(counter reuse_detections)" = 0 ]' "nothing reached the portal"

# --- 4. OpenAI's nested error: another client spent the token (401 refresh_token_reused)
cur=$(jq -r '.providers."openai-codex".tokens.refresh_token' "$H/auth.json")
curl -sf "$URL/oauth/token" -H 'Content-Type: application/json' \
  -d "{\"grant_type\":\"refresh_token\",\"client_id\":\"app_EMoamEEZ73f0CkXaXp7hrann\",\"refresh_token\":\"$cur\"}" > /dev/null
tl $D refresh openai-codex --profile cx --force; expect 5 "the token another client spent: a new login is needed"
contains "refresh_token_reused" "OpenAI's nested error code is read"
check '[ "$(q "SELECT status FROM credential WHERE provider = \"openai-codex\"")" = needs_reauth ]' "the credential needs a login"
check '[ "$(q "SELECT state FROM refresh_token WHERE credential_id = (SELECT id FROM credential WHERE provider = \"openai-codex\") ORDER BY id DESC LIMIT 1")" = rejected ]' "its token is rejected, not current"
requests=$(counter requests)
tl $D refresh openai-codex --profile cx --force; expect 5 "asked again: still a login, nothing sent"
check '[ "$(counter requests)" = "$requests" ]' "the rejected token is never presented again"
# 429 with Retry-After and 500: transient, the token stays current
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/rt-t"
tl $D profile add cxt
tl $D credential add openai-codex --profile cxt --refresh-token-file "$WORK/rt-t"; expect 0 "a second Codex grant"
admin fault "kind=429&count=1&retry_after=7" > /dev/null
tl $D refresh openai-codex --profile cxt --force; expect 7 "429: transient"
contains "7 s" "Retry-After is obeyed"
check '[ "$(q "SELECT state FROM refresh_token WHERE credential_id = (SELECT max(id) FROM credential)")" = current ]' "the token stays current after a 429"

# --- 5. concurrency through Hermes' files: several processes, one rotation, no reuse at the portal
H2="$WORK/hermes-cx2"; mkdir -p "$H2"
seed=$(admin seed)
jq -n --arg rt "$(jq -r .refresh_token <<< "$seed")" --arg at "$EXPIRED_JWT" '{version: 1,
  providers: {"openai-codex": {tokens: {access_token: $at, refresh_token: $rt}, last_refresh: "2026-10-01T01:02:03.000004Z",
    auth_mode: "chatgpt"}}, credential_pool: {}}' > "$H2/auth.json"
chmod 600 "$H2/auth.json"
tl $D import "$H2" --profile crowd; expect 0 "import a second Codex home"
admin config "latency_ms=300" > /dev/null
before=$(counter refreshes); reuse=$(counter reuse_detections)
pids=""
for i in 1 2 3 4 5 6; do
  ( r=0; "$TL_BIN" $D token openai-codex --profile crowd > "$WORK/crowd$i.out" 2> "$WORK/crowd$i.err" || r=$?; echo $r > "$WORK/crowd$i.rc" ) &
  pids="$pids $!"
done
wait $pids
admin config "latency_ms=0" > /dev/null
cat "$WORK"/crowd*.out "$WORK"/crowd*.err >> "$ALL"
check '[ "$(cat "$WORK"/crowd*.rc | sort -u)" = 0 ]' "six processes all get a token"
check '[ "$(sort -u "$WORK"/crowd*.out | wc -l)" = 1 ]' "all of them the same one"
check '[ $(( $(counter refreshes) - before )) = 1 ]' "exactly one rotation reached the portal"
check '[ "$(counter reuse_detections)" = "$reuse" ]' "zero reuse at the portal"
# forced: each may rotate, none may reuse
before=$(counter refreshes)
pids=""
for i in 1 2 3 4 5 6; do
  ( r=0; "$TL_BIN" $D refresh openai-codex --profile crowd --force > /dev/null 2> "$WORK/force$i.err" || r=$?; echo $r > "$WORK/force$i.rc" ) &
  pids="$pids $!"
done
wait $pids
cat "$WORK"/force*.err >> "$ALL"

check '[ "$(cat "$WORK"/force*.rc | sort -u)" = 0 ]' "six forced refreshes all succeed"
check '[ $(( $(counter refreshes) - before )) -ge 1 ] && [ $(( $(counter refreshes) - before )) -le 6 ]' "they rotated at least once, at most once each"
check '[ "$(counter reuse_detections)" = "$reuse" ]' "zero reuse at the portal after forced refreshes"
check '[ "$(jq -r '"'"'.providers."openai-codex".tokens.refresh_token'"'"' "$H2/auth.json")" = "$(q "SELECT secret FROM refresh_token WHERE state = \"current\" AND credential_id = (SELECT credential_id FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = \"crowd\")")" ]' "Hermes' file holds the current token"
no_secret_leak "$WORK/rt0" "$WORK/rt-t"
kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; PORTAL_PID=""; rm -f "$WORK/port"

# --- 6. Anthropic: Hermes' hermes_pkce pool row and its .anthropic_oauth.json, a JSON body
start_portal --provider anthropic --at-lifetime 28800
DB="$WORK/anthropic.db"; D="--db $DB"
tl $D init
tl $D provider set anthropic --token-url "$URL/v1/oauth/token"; expect 0 "point anthropic at the loopback portal"
HA="$WORK/hermes-an"; mkdir -p "$HA"
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/an-rt0"
jq -n --arg rt "$(cat "$WORK/an-rt0")" '{version: 1, providers: {}, credential_pool: {anthropic: [{id: "an0001",
  label: "pkce", auth_type: "oauth", priority: 0, source: "hermes_pkce", access_token: "sk-ant-oat01-old",
  refresh_token: $rt, last_status: null, last_status_at: null, last_error_code: null, last_error_reason: null,
  last_error_message: null, last_error_reset_at: null, expires_at_ms: 1700000000000, request_count: 4}]},
  updated_at: "2026-09-22T00:00:00+00:00"}' > "$HA/auth.json"
jq -n --arg rt "$(cat "$WORK/an-rt0")" '{accessToken: "sk-ant-oat01-old", refreshToken: $rt, expiresAt: 1700000000000,
  hermes_note: "kept"}' > "$HA/.anthropic_oauth.json"
chmod 600 "$HA/auth.json" "$HA/.anthropic_oauth.json"
tl $D import "$HA" --profile an; expect 0 "import a Hermes home with an Anthropic PKCE login"
admin config "latency_ms=300" > /dev/null
pids=""
for i in 1 2 3 4; do
  ( r=0; "$TL_BIN" $D token anthropic --profile an > "$WORK/an$i.out" 2> "$WORK/an$i.err" || r=$?; echo $r > "$WORK/an$i.rc" ) &
  pids="$pids $!"
done
wait $pids
admin config "latency_ms=0" > /dev/null
cat "$WORK"/an*.out "$WORK"/an*.err >> "$ALL"
check '[ "$(cat "$WORK"/an?.rc | sort -u)" = 0 ] && [ "$(sort -u "$WORK"/an?.out | wc -l)" = 1 ]' "four processes get the same Anthropic token"
check '[ "$(counter refreshes)" = 1 ] && [ "$(counter reuse_detections)" = 0 ]' "one rotation, no reuse"
check '[ "$(counter json_bodies)" = 1 ] && [ "$(counter form_bodies)" = 0 ] && [ "$(counter bad_client)" = 0 ]' "a JSON body with Anthropic's client id"
at=$(cat "$WORK/an1.out")
check '[ "$(jq -r ".credential_pool.anthropic[0].access_token" "$HA/auth.json")" = "$at" ] && [ "$(jq -r ".credential_pool.anthropic[0].refresh_token" "$HA/auth.json")" != "$(cat "$WORK/an-rt0")" ]' "the hermes_pkce row holds the new pair"
exp=$(q "SELECT expires_at FROM credential WHERE provider = 'anthropic'")
check '[ "$(jq -r ".credential_pool.anthropic[0].expires_at_ms" "$HA/auth.json")" = "$exp" ] && [ "$exp" -gt "$(( ($(date +%s) + 28000) * 1000 ))" ]' "expires_at_ms from expires_in"
check '[ "$(jq -r .refreshToken "$HA/.anthropic_oauth.json")" = "$(jq -r ".credential_pool.anthropic[0].refresh_token" "$HA/auth.json")" ] && [ "$(jq -r .accessToken "$HA/.anthropic_oauth.json")" = "$at" ] && [ "$(jq -r .expiresAt "$HA/.anthropic_oauth.json")" = "$exp" ]' ".anthropic_oauth.json is in step (Hermes re-seeds its pool row from it)"
check '[ "$(jq -r .hermes_note "$HA/.anthropic_oauth.json")" = kept ] && [ "$(stat -c %a "$HA/.anthropic_oauth.json")" = 600 ]' "its other keys kept, 0600"
# a new login Hermes wrote into the file is not overwritten
jq '.refreshToken = "sk-ant-ort01-new-login-unknown"' "$HA/.anthropic_oauth.json" > "$WORK/x" && mv "$WORK/x" "$HA/.anthropic_oauth.json"
tl $D sync --profile an; expect 0 "sync"
check '[ "$(jq -r .refreshToken "$HA/.anthropic_oauth.json")" = sk-ant-ort01-new-login-unknown ]' "a token the ledger does not know is left alone"
# another client spends the grant: 400 invalid_grant is terminal
cur=$(jq -r ".credential_pool.anthropic[0].refresh_token" "$HA/auth.json")
curl -sf "$URL/v1/oauth/token" -H 'Content-Type: application/json' \
  -d "{\"grant_type\":\"refresh_token\",\"client_id\":\"9d1c250a-e61b-44d9-88ed-5944d1962f5e\",\"refresh_token\":\"$cur\"}" > /dev/null
tl $D refresh anthropic --profile an --force; expect 5 "Anthropic's invalid_grant: a new login is needed"
contains "invalid_grant" "names the server's answer"
curl -s "$URL/v1/oauth/token" -d "grant_type=refresh_token&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e&refresh_token=x" > "$WORK/form-answer"
check 'grep -q "Invalid request format" "$WORK/form-answer"' "the anthropic portal refuses a form body, as platform.claude.com does"
no_secret_leak "$WORK/an-rt0"
kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; PORTAL_PID=""; rm -f "$WORK/port"

# --- 7. xAI through provider set (discovery is pinned to https on x.ai): tokens and id_token, the 403 tier gate
start_portal --provider xai --at-lifetime 21600
DB="$WORK/xai.db"; D="--db $DB"
tl $D init
tl $D provider set xai-oauth --token-url "$URL/oauth2/token"; expect 0 "point xai-oauth at the loopback portal"
HX="$WORK/hermes-xai"; mkdir -p "$HX"
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/x-rt0"
jq -n --arg rt "$(cat "$WORK/x-rt0")" --arg at "$EXPIRED_JWT" '{version: 1, providers: {"xai-oauth": {tokens: {access_token: $at,
  refresh_token: $rt, id_token: "eyJold.id.x", expires_in: 21600, token_type: "Bearer"}, last_refresh: "2026-10-02T00:00:00Z",
  auth_mode: "oauth_device_code", discovery: {token_endpoint: "https://auth.x.ai/oauth2/token"}, redirect_uri: null}},
  credential_pool: {}}' > "$HX/auth.json"
chmod 600 "$HX/auth.json"
tl $D import "$HX" --profile gx; expect 0 "import a Hermes home holding xai-oauth"
tl $D token xai-oauth --profile gx; expect 0 "token: the expired xAI access token is refreshed"
check '[ "$(counter refreshes)" = 1 ] && [ "$(counter form_bodies)" = 1 ] && [ "$(counter bad_client)" = 0 ]' "one refresh, a form body, the Grok CLI's client id"
check '[ "$(jq -r '"'"'.providers."xai-oauth".tokens.access_token'"'"' "$HX/auth.json")" = "$(cat "$OUT")" ] && [ "$(jq -r '"'"'.providers."xai-oauth".tokens.id_token'"'"' "$HX/auth.json")" != eyJold.id.x ]' "Hermes' xai-oauth tokens hold the new pair and id_token"
check '[ "$(jq -c '"'"'.providers."xai-oauth".discovery'"'"' "$HX/auth.json")" = "{\"token_endpoint\":\"https://auth.x.ai/oauth2/token\"}" ]' "discovery kept as Hermes wrote it"
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/x-rt-gate"
tl $D profile add gate
tl $D credential add xai-oauth --profile gate --refresh-token-file "$WORK/x-rt-gate"; expect 0 "a second xAI grant"
admin fault "kind=403&count=1" > /dev/null
tl $D refresh xai-oauth --profile gate --force; expect 1 "the 403 tier gate is not a login problem"
check '[ "$(q "SELECT status FROM credential WHERE id = (SELECT max(id) FROM credential)")" = active ] && [ "$(q "SELECT state FROM refresh_token WHERE credential_id = (SELECT max(id) FROM credential)")" = current ]' "the grant stays active, its token current"
cur=$(jq -r '.providers."xai-oauth".tokens.refresh_token' "$HX/auth.json")
curl -sf "$URL/oauth2/token" -d "grant_type=refresh_token&client_id=b1a00492-073a-47ea-816f-4c329264a828&refresh_token=$cur" > /dev/null
tl $D refresh xai-oauth --profile gx --force; expect 5 "xAI's revoked token: a new login is needed"
contains "revoked" "names the server's answer"
no_secret_leak "$WORK/x-rt0" "$WORK/x-rt-gate"
kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; PORTAL_PID=""; rm -f "$WORK/port"

# --- 8. MiniMax: portal_base_url in Hermes' state (as Hermes refreshes it), expired_in in epoch ms, 200 status error
start_portal --provider minimax --at-lifetime 1800
DB="$WORK/minimax.db"; D="--db $DB"
tl $D init
HM="$WORK/hermes-mm"; mkdir -p "$HM"
seed=$(admin seed)
jq -r .refresh_token <<< "$seed" > "$WORK/mm-rt0"
jq -n --arg rt "$(cat "$WORK/mm-rt0")" --arg url "$URL" '{version: 1, providers: {"minimax-oauth": {provider: "minimax-oauth",
  region: "global", portal_base_url: $url, inference_base_url: "https://api.minimax.io/anthropic",
  client_id: "78257093-7e40-4613-99e0-527b14b39113", scope: "group_id profile model.completion", token_type: "Bearer",
  access_token: "mm-at-old", refresh_token: $rt, resource_url: null, obtained_at: "2026-01-01T00:00:00.000000+00:00",
  expires_at: "2026-01-01T00:15:00.000000+00:00", expires_in: 900}}, active_provider: "minimax-oauth", credential_pool: {}}' > "$HM/auth.json"
chmod 600 "$HM/auth.json"
tl $D import "$HM" --profile mm; expect 0 "import a Hermes home holding minimax-oauth"
check '[ "$(q "SELECT token_url FROM credential WHERE provider = \"minimax-oauth\"")" = "$URL/oauth/token" ]' "the grant refreshes at {portal_base_url}/oauth/token, as Hermes does"
tl $D token minimax-oauth --profile mm; expect 0 "token: the expired MiniMax access token is refreshed"
exp=$(q "SELECT expires_at FROM credential WHERE provider = 'minimax-oauth'")
now=$(date +%s)
check '[ "$exp" -gt $(( (now + 1600) * 1000 )) ] && [ "$exp" -lt $(( (now + 2000) * 1000 )) ]' "expired_in read as an epoch in ms (30 minutes ahead, not the 15 assumed without it)"
check '[ "$(jq -r '"'"'.providers."minimax-oauth".access_token'"'"' "$HM/auth.json")" = "$(cat "$OUT")" ] && [ "$(jq -r '"'"'.providers."minimax-oauth".portal_base_url'"'"' "$HM/auth.json")" = "$URL" ]' "Hermes' state holds the new token, its portal unchanged"
cur=$(jq -r '.providers."minimax-oauth".refresh_token' "$HM/auth.json")
curl -sf "$URL/oauth/token" -d "grant_type=refresh_token&client_id=78257093-7e40-4613-99e0-527b14b39113&refresh_token=$cur" > /dev/null
tl $D refresh minimax-oauth --profile mm --force; expect 5 "MiniMax's 200 {\"status\": \"error\"} is final"
check '[ "$(q "SELECT status FROM credential WHERE provider = \"minimax-oauth\"")" = needs_reauth ]' "the grant needs a login"
no_secret_leak "$WORK/mm-rt0"

# --- 10. the concurrency and kill -9 promises per provider: the hammer (processes x profiles x
# token/refresh calls on 2 s tokens) and kill -9 at random moments of refreshes (TL_CRASH_ROUNDS_PROVIDERS
# rounds of two kills, 20 by default), each followed by tl-driver verify: no reuse, every token the
# portal issued is in the ledger or answers an `unknown` attempt, integrity ok
: "${TL_DRIVER:?}"
if [ -n "$PORTAL_PID" ]; then kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; PORTAL_PID=""; fi
rm -f "$WORK/port"
for spec in "openai-codex codex /oauth/token" "anthropic anthropic /v1/oauth/token"; do
  set -- $spec
  prov=$1 who=$2 path=$3
  start_portal --provider "$who" --at-lifetime 2
  DB="$WORK/torture-$who.db"; D="--db $DB"
  tl $D init
  tl $D provider set "$prov" --token-url "$URL$path" --skew 0; expect 0 "$prov: at the loopback portal"
  for p in 0 1 2 3; do
    tl $D profile add p$p
    admin seed | jq -r .refresh_token > "$WORK/trt$p"
    tl $D credential add "$prov" --profile p$p --refresh-token-file "$WORK/trt$p"; expect 0 "$prov: a credential for p$p"
  done
  set +e; TL_DRIVER_PROVIDER=$prov "$TL_DRIVER" hammer "$DB" 6 4 "${TL_HAMMER_CALLS_PROVIDERS:-60}" > "$OUT" 2> "$ERR"; RC=$?; set -e
  expect 0 "$prov: 6 processes x 4 profiles of token/refresh calls all succeed"
  set +e; TL_DRIVER_PROVIDER=$prov "$TL_DRIVER" crash "$DB" "$URL" "${TL_CRASH_ROUNDS_PROVIDERS:-20}" 4 > "$OUT" 2> "$ERR"; RC=$?; set -e
  expect 0 "$prov: rounds of kill -9 during refreshes"
  set +e; TL_DRIVER_PROVIDER=$prov "$TL_DRIVER" verify "$DB" "$URL" > "$OUT" 2> "$ERR"; RC=$?; set -e
  expect 0 "$prov: after the hammer and the kills: no reuse, nothing issued lost without an unknown record, integrity ok"
  check '[ "$(counter reuse_detections)" = 0 ] && [ "$(counter refreshes)" -gt 20 ]' "$prov: the portal rotated ($(counter refreshes)) and never saw a spent token"
  kill "$PORTAL_PID"; wait "$PORTAL_PID" 2>/dev/null || true; PORTAL_PID=""; rm -f "$WORK/port"
done

finish
