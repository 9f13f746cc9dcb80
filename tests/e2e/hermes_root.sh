# hermes_root.sh - helpers for the e2e scripts that need a Hermes root as Hermes
# itself writes it: profiles sharing one Nous grant (the portal's), each with the
# singleton and its device_code row, and the shared store mirrored from them.
# Sourced after lib.sh and start_portal (uses URL and admin).

# hermes_doc SEED LABEL ENTRY: an auth.json as Hermes writes it after a login (singleton + device_code row).
hermes_doc() {
  jq -n --argjson s "$1" --arg url "$URL" --arg who "$2" --arg id "$3" '
    ($s.access_token | split(".")[1] | gsub("-"; "+") | gsub("_"; "/") | . + "==" | @base64d | fromjson | .exp) as $exp |
    ($exp | todate | sub("Z$"; "+00:00")) as $expat |
    {version: 1,
     providers: {nous: {portal_base_url: $url, inference_base_url: "https://inference-api.nousresearch.com/v1",
       client_id: "hermes-cli", scope: "inference:invoke", token_type: "Bearer",
       access_token: $s.access_token, refresh_token: $s.refresh_token,
       obtained_at: "2026-11-30T00:00:00.000000+00:00", expires_at: $expat, expires_in: 3600,
       tls: {insecure: false, ca_bundle: null}, agent_key: $s.access_token, agent_key_id: null,
       agent_key_expires_at: $expat, agent_key_expires_in: 3599, agent_key_reused: false,
       agent_key_obtained_at: "2026-11-30T00:00:00.000000+00:00", label: $who}},
     active_provider: "nous",
     credential_pool: {nous: [{id: $id, label: $who, auth_type: "oauth", priority: 0, source: "device_code",
       access_token: $s.access_token, refresh_token: $s.refresh_token, last_status: null, last_status_at: null,
       last_error_code: null, last_error_reason: null, last_error_message: null, last_error_reset_at: null,
       expires_at: $expat, inference_base_url: "https://inference-api.nousresearch.com/v1",
       agent_key: $s.access_token, agent_key_expires_at: $expat, request_count: 0,
       obtained_at: "2026-11-30T00:00:00.000000+00:00"}]},
     updated_at: "2026-11-30T00:00:00.000000+00:00"}'
}
shared_doc() { # the shared store Hermes mirrors from a profile's singleton
  jq -S '.providers.nous | {_schema: 1, access_token, refresh_token, token_type, scope, client_id, portal_base_url,
         inference_base_url, obtained_at, expires_at, updated_at: "2026-11-30T00:00:00.000000+00:00"}' "$1"
}
# make_root DIR PROFILE...: a Hermes root whose profiles (default = the root) share one grant, and its shared store.
make_root() {
  local root=$1; shift
  local seed; seed=$(admin seed)
  mkdir -p "$root/shared"
  for p in "$@"; do
    local home=$root; [ "$p" = default ] || home=$root/profiles/$p
    mkdir -p "$home"
    hermes_doc "$seed" alice@example.com a1b2c3 > "$home/auth.json"
    chmod 600 "$home/auth.json"
  done
  local first=$1; [ "$first" = default ] && first="" || first=profiles/$first
  shared_doc "$root/${first:+$first/}auth.json" > "$root/shared/nous_auth.json"
  chmod 600 "$root/shared/nous_auth.json"
  chmod 700 "$root" "$root/shared"
}
auth() { if [ "$2" = default ]; then echo "$1/auth.json"; else echo "$1/profiles/$2/auth.json"; fi; }
rt_of() { jq -r '.providers.nous.refresh_token // .refresh_token' "$1"; }
