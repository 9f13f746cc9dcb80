-- Migration 0008: the rotating grants Hermes holds besides Nous are built in.
-- Forward-only; applied in one transaction by src/lib/migrate.c, which sets
-- user_version 8.
--
-- provider.body says how a refresh request is written: 'form'
-- (application/x-www-form-urlencoded, RFC 6749) or 'json' (Anthropic's token
-- endpoint takes JSON only). credential.id_token keeps the OpenID id_token
-- the last answer carried (Codex writes it back into Hermes' tokens object).
ALTER TABLE provider ADD COLUMN body TEXT NOT NULL DEFAULT 'form' CHECK (body = 'form' OR body = 'json');
ALTER TABLE credential ADD COLUMN id_token TEXT;

-- Built-in endpoints (data, not schema). A provider already configured with
-- `provider set` keeps its endpoint, client id and skew; one that import
-- created without an endpoint takes the built-in one. Skews: Codex 600 s,
-- ahead of Hermes (120 s) and the Codex CLI (300 s); Anthropic 600 s and
-- MiniMax 300 s, well ahead of Hermes' own skews (120 s, 60 s), because
-- Hermes takes no lock around those refreshes; xAI 120 s (Hermes refreshes it
-- under auth.lock, which the ledger joins).
INSERT INTO provider (name, token_url, device_url, client_id, rt_header, skew_s, grace_s, scope, updated_at, body)
VALUES ('openai-codex', 'https://auth.openai.com/oauth/token', NULL, 'app_EMoamEEZ73f0CkXaXp7hrann', NULL, 600, 0,
        'openid profile email offline_access', 0, 'form'),
       ('anthropic', 'https://platform.claude.com/v1/oauth/token', NULL, '9d1c250a-e61b-44d9-88ed-5944d1962f5e', NULL,
        600, 0, 'user:inference user:profile', 0, 'json'),
       ('xai-oauth', 'https://auth.x.ai/oauth2/token', 'https://auth.x.ai/oauth2/device/code',
        'b1a00492-073a-47ea-816f-4c329264a828', NULL, 120, 0,
        'openid profile email offline_access grok-cli:access api:access', 0, 'form'),
       ('minimax-oauth', 'https://api.minimax.io/oauth/token', NULL, '78257093-7e40-4613-99e0-527b14b39113', NULL,
        300, 0, 'group_id profile model.completion', 0, 'form')
ON CONFLICT (name) DO UPDATE SET
  skew_s = CASE WHEN provider.token_url IS NULL THEN excluded.skew_s ELSE provider.skew_s END,
  scope = coalesce(provider.scope, excluded.scope),
  body = CASE WHEN provider.token_url IS NULL THEN excluded.body ELSE provider.body END,
  device_url = coalesce(provider.device_url, excluded.device_url),
  client_id = coalesce(provider.client_id, excluded.client_id),
  token_url = coalesce(provider.token_url, excluded.token_url);

-- Grants imported before, waiting for an endpoint, take the built-in one
-- (MiniMax's depends on each grant's region: those wait for a re-import).
UPDATE credential
   SET token_url = coalesce(token_url, (SELECT p.token_url FROM provider p WHERE p.name = credential.provider)),
       client_id = coalesce(client_id, (SELECT p.client_id FROM provider p WHERE p.name = credential.provider))
 WHERE provider IN ('openai-codex', 'anthropic', 'xai-oauth') AND (token_url IS NULL OR client_id IS NULL);
