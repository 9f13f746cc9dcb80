-- tokenledger canonical schema (user_version 9).
--
-- This file is the documentation of record for the database layout. The binary
-- never executes it: it builds databases by replaying migrations/NNNN_*.sql in
-- order, and tests/test_schema.c proves that the replay yields exactly this
-- schema (statements compared with comments and white space folded).
--
-- Conventions
--   * Every time is INTEGER milliseconds since the Unix epoch, UTC.
--   * Secrets (access tokens, refresh-token plaintext, other secrets of Hermes files, the
--     surrogate key) live only in the columns named `access_token`, `id_token` and `secret`.
--     No view selects any of them.
--   * A refresh token (RT) is identified forever by its fingerprint: the
--     lowercase hex SHA-256 of its exact bytes.
--
-- Invariants enforced here, not only in C (SPEC section 2):
--   1. An RT fingerprint appears at most once        -> refresh_token.fingerprint UNIQUE
--   2. At most one `current`/`presented` RT per
--      credential                                    -> refresh_token_one_open (one current,
--                                                       presented or unknown RT: stronger)
--   3. At most one `in_flight` attempt per credential -> refresh_attempt_one_in_flight
--   4. A parent RT belongs to the same credential and
--      generations increase by one                   -> refresh_token_lineage_insert
--   5. Audit rows are never updated or deleted       -> audit_event_no_update/no_delete

PRAGMA application_id = 1414284359; -- 0x544C4447, 'TLDG'
PRAGMA user_version = 9;

-- Rules on a column's values are written `x = 'a' OR x = 'b' OR ...`, not
-- `x IN ('a', 'b', ...)`: SQLite builds a temporary b-tree for an IN list of three
-- or more constants each time a CHECK, partial index or trigger evaluates it,
-- which is every write of the row (migration 0005).

-- A token endpoint configuration. Credentials copy the endpoint they were
-- issued by, so changing a provider never redirects an existing grant.
CREATE TABLE provider (
  name        TEXT PRIMARY KEY NOT NULL       -- Hermes provider id: 'nous', 'openai-codex', 'custom:x'
              CHECK (length(name) BETWEEN 1 AND 128),
  token_url   TEXT                            -- refresh/token endpoint; https, or http on loopback;
              CHECK (token_url LIKE 'https://%' OR token_url LIKE 'http://%'), -- NULL: not configured yet
  device_url  TEXT,                           -- RFC 8628 device authorization endpoint, if any
  client_id   TEXT,                           -- OAuth client id sent with every grant (NULL: not configured)
  rt_header   TEXT,                           -- header that carries the RT (Nous: x-nous-refresh-token);
                                              -- NULL: the form field refresh_token
  skew_s      INTEGER NOT NULL DEFAULT 120    -- refresh when the access token expires within this many seconds
              CHECK (skew_s >= 0),
  grace_s     INTEGER NOT NULL DEFAULT 0      -- server's reuse grace window; 0 = none (never retry an unknown RT)
              CHECK (grace_s >= 0),
  scope       TEXT,                           -- scope requested at login
  updated_at  INTEGER NOT NULL                -- last change of this row
  -- how a refresh request is written: form (RFC 6749) or json (Anthropic) (migration 0008)
, body        TEXT NOT NULL DEFAULT 'form' CHECK (body = 'form' OR body = 'json')) STRICT;

-- Built-in provider defaults (data, not schema). Nous Portal carries the RT in
-- the x-nous-refresh-token header and declares no reuse grace window.
INSERT INTO provider (name, token_url, device_url, client_id, rt_header, skew_s, grace_s, scope, updated_at)
VALUES ('nous', 'https://portal.nousresearch.com/api/oauth/token',
        'https://portal.nousresearch.com/api/oauth/device/code', 'hermes-cli', 'x-nous-refresh-token',
        120, 0, 'inference:invoke', 0);
-- The other rotating grants Hermes holds (migration 0008): Codex and Anthropic
-- (Anthropic's endpoint takes JSON), xAI and MiniMax. Skews stay ahead of
-- Hermes' own where Hermes refreshes without a lock (Anthropic, MiniMax).
INSERT INTO provider (name, token_url, device_url, client_id, rt_header, skew_s, grace_s, scope, updated_at, body)
VALUES ('openai-codex', 'https://auth.openai.com/oauth/token', NULL, 'app_EMoamEEZ73f0CkXaXp7hrann', NULL, 600, 0,
        'openid profile email offline_access', 0, 'form'),
       ('anthropic', 'https://platform.claude.com/v1/oauth/token', NULL, '9d1c250a-e61b-44d9-88ed-5944d1962f5e', NULL,
        600, 0, 'user:inference user:profile', 0, 'json'),
       ('xai-oauth', 'https://auth.x.ai/oauth2/token', 'https://auth.x.ai/oauth2/device/code',
        'b1a00492-073a-47ea-816f-4c329264a828', NULL, 120, 0,
        'openid profile email offline_access grok-cli:access api:access', 0, 'form'),
       ('minimax-oauth', 'https://api.minimax.io/oauth/token', NULL, '78257093-7e40-4613-99e0-527b14b39113', NULL,
        300, 0, 'group_id profile model.completion', 0, 'form');

-- A Hermes profile: 'default' is the Hermes root, others are profiles/<name>.
CREATE TABLE profile (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE            -- Hermes rule: ^[a-z0-9][a-z0-9_-]{0,63}$ (checked in C too)
              CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^a-z0-9_-]*'
                     AND substr(name, 1, 1) GLOB '[a-z0-9]'),
  home        TEXT,                           -- absolute path of the Hermes home, if known
  created_at  INTEGER NOT NULL
) STRICT;
-- A home belongs to one profile (kept in C; not UNIQUE, older ledgers may hold one twice).
CREATE INDEX profile_home ON profile(home) WHERE home IS NOT NULL;

-- One OAuth grant at one provider. Shared by every profile whose pool holds it.
CREATE TABLE credential (
  id            INTEGER PRIMARY KEY,
  provider      TEXT NOT NULL REFERENCES provider(name),
  client_id     TEXT,                         -- client id the grant was issued to (NULL: the provider's, once set)
  token_url     TEXT,                         -- endpoint this grant refreshes at (NULL: the provider's, once set)
  label         TEXT,                         -- account label (e-mail or user name), never a secret
  access_token  TEXT,                         -- SECRET: the current access token
  expires_at    INTEGER,                      -- access-token expiry; NULL = unknown (treated as expired)
  obtained_at   INTEGER,                      -- when the access token was issued to us
  scope         TEXT,
  status        TEXT NOT NULL DEFAULT 'active'
                CHECK (status = 'active' OR status = 'uncertain' OR status = 'needs_reauth'),
  status_reason TEXT,                         -- why the status is not 'active' (no secret)
  refresh_not_before INTEGER,                 -- token endpoint asked us to back off (429/5xx) until then
  extra         TEXT NOT NULL DEFAULT '{}'    -- provider-specific fields as a JSON object (no secret)
                CHECK (json_valid(extra) AND json_type(extra) = 'object'),
  base_url      TEXT GENERATED ALWAYS AS      -- inference base URL, computed once per write for the hot path
                (json_extract(extra, '$.inference_base_url')) STORED,
  created_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
  -- SECRET: the OpenID id_token the last answer carried (Codex writes it back to Hermes) (migration 0008)
, id_token      TEXT) STRICT;

-- A credential's place in one profile's pool for one provider. API-key and
-- borrowed entries have no credential and so no lineage.
CREATE TABLE pool_entry (
  id                 INTEGER PRIMARY KEY,
  profile_id         INTEGER NOT NULL REFERENCES profile(id) ON DELETE CASCADE,
  provider           TEXT NOT NULL REFERENCES provider(name),
  credential_id      INTEGER REFERENCES credential(id),
  entry_id           TEXT NOT NULL,           -- Hermes pool id (6 hex chars), stable across exports
  priority           INTEGER NOT NULL DEFAULT 0,
  source             TEXT NOT NULL,           -- Hermes source: device_code, manual:..., env:VAR, ...
  auth_type          TEXT NOT NULL DEFAULT 'oauth' CHECK (auth_type IN ('oauth', 'api_key')),
  label              TEXT,
  last_status        TEXT CHECK (last_status = 'ok' OR last_status = 'exhausted' OR last_status = 'dead'),
  last_status_at     INTEGER,
  last_error_code    INTEGER,                 -- HTTP status that caused last_status
  last_error_reason  TEXT,
  last_error_message TEXT,
  cooldown_until     INTEGER,                 -- skipped by selection until then
  request_count      INTEGER NOT NULL DEFAULT 0 CHECK (request_count >= 0),
  original_json      TEXT                     -- the entry as imported, without its tokens or key (no secret)
                     CHECK (original_json IS NULL OR json_valid(original_json)),
  UNIQUE (profile_id, provider, entry_id)
) STRICT;
CREATE INDEX pool_entry_select ON pool_entry(profile_id, provider, priority);
CREATE INDEX pool_entry_credential ON pool_entry(credential_id);

-- How a profile picks among its pool entries for a provider (default fill_first).
CREATE TABLE pool_strategy (
  profile_id  INTEGER NOT NULL REFERENCES profile(id) ON DELETE CASCADE,
  provider    TEXT NOT NULL REFERENCES provider(name),
  strategy    TEXT NOT NULL CHECK (strategy IN ('fill_first', 'round_robin', 'least_used', 'random')),
  PRIMARY KEY (profile_id, provider)
) STRICT;

-- The lineage: every refresh token ever held. Rows are never deleted.
CREATE TABLE refresh_token (
  id            INTEGER PRIMARY KEY,
  credential_id INTEGER NOT NULL REFERENCES credential(id),
  parent_id     INTEGER REFERENCES refresh_token(id), -- the RT whose presentation produced this one
  family_id     INTEGER REFERENCES refresh_token(id), -- root of the rotation chain; NULL on the root itself
  generation    INTEGER NOT NULL CHECK (generation >= 0), -- 0 at the root, parent + 1 below
  fingerprint   TEXT NOT NULL UNIQUE               -- lowercase hex SHA-256 of the RT (invariant 1)
                CHECK (length(fingerprint) = 64 AND fingerprint NOT GLOB '*[^0-9a-f]*'),
  state         TEXT NOT NULL
                CHECK (state = 'current' OR state = 'presented' OR state = 'rotated' OR state = 'rejected'
                       OR state = 'unknown' OR state = 'retired'),
  origin        TEXT NOT NULL CHECK (origin = 'login' OR origin = 'import' OR origin = 'refresh' OR origin = 'external'),
  secret        TEXT,                              -- SECRET: plaintext while usable, NULL once spent
  issued_at     INTEGER NOT NULL,                  -- when the ledger first saw it
  retired_at    INTEGER,                           -- when it left current/presented
  CHECK (state = 'current' OR state = 'presented' OR state = 'unknown' OR secret IS NULL),
  CHECK ((state IN ('current', 'presented')) = (retired_at IS NULL))
) STRICT;
-- Invariant 2, stronger, and the index every refresh looks up: at most one RT per credential
-- that is still open (usable, being presented, or with an unknown outcome). A query finds it
-- through this index when its WHERE names the same OR expression (or one of its terms).
CREATE UNIQUE INDEX refresh_token_one_open ON refresh_token(credential_id)
  WHERE state = 'current' OR state = 'presented' OR state = 'unknown';
-- A credential's RTs by state: `state IN ('current', 'presented', 'unknown')` is three searches
-- here (such an IN list is not the expression refresh_token_one_open is defined by).
CREATE INDEX refresh_token_state ON refresh_token(credential_id, state);
CREATE INDEX refresh_token_credential ON refresh_token(credential_id, generation);

-- Invariant 4, and the shape of a lineage: a root has no parent, no family and
-- generation 0; a child sits under a parent of the same credential, in the
-- parent's family, one generation deeper.
CREATE TRIGGER refresh_token_lineage_insert BEFORE INSERT ON refresh_token
BEGIN
  SELECT RAISE(ABORT, 'refresh_token: a root has generation 0 and no family')
   WHERE NEW.parent_id IS NULL AND (NEW.generation <> 0 OR NEW.family_id IS NOT NULL);
  SELECT RAISE(ABORT, 'refresh_token: parent belongs to another credential')
   WHERE NEW.parent_id IS NOT NULL
     AND (SELECT credential_id FROM refresh_token WHERE id = NEW.parent_id) IS NOT NEW.credential_id;
  SELECT RAISE(ABORT, 'refresh_token: generation must be parent generation + 1')
   WHERE NEW.parent_id IS NOT NULL
     AND (SELECT generation + 1 FROM refresh_token WHERE id = NEW.parent_id) IS NOT NEW.generation;
  SELECT RAISE(ABORT, 'refresh_token: family must be the parent''s family')
   WHERE NEW.parent_id IS NOT NULL
     AND (SELECT coalesce(family_id, id) FROM refresh_token WHERE id = NEW.parent_id) IS NOT NEW.family_id;
END;

-- Identity columns never change, and a spent RT never comes back.
CREATE TRIGGER refresh_token_immutable BEFORE UPDATE ON refresh_token
BEGIN
  SELECT RAISE(ABORT, 'refresh_token: identity columns are immutable')
   WHERE NEW.id IS NOT OLD.id OR NEW.credential_id IS NOT OLD.credential_id
      OR NEW.parent_id IS NOT OLD.parent_id OR NEW.family_id IS NOT OLD.family_id
      OR NEW.generation IS NOT OLD.generation OR NEW.fingerprint IS NOT OLD.fingerprint
      OR NEW.origin IS NOT OLD.origin OR NEW.issued_at IS NOT OLD.issued_at;
  SELECT RAISE(ABORT, 'refresh_token: a spent token cannot change state')
   WHERE (OLD.state = 'rotated' OR OLD.state = 'rejected' OR OLD.state = 'retired') AND NEW.state IS NOT OLD.state;
  SELECT RAISE(ABORT, 'refresh_token: a secret cannot be restored')
   WHERE OLD.secret IS NULL AND NEW.secret IS NOT NULL;
END;

CREATE TRIGGER refresh_token_no_delete BEFORE DELETE ON refresh_token
BEGIN
  SELECT RAISE(ABORT, 'refresh_token: lineage rows are never deleted');
END;

-- One presentation of an RT to a server.
CREATE TABLE refresh_attempt (
  id                INTEGER PRIMARY KEY,
  credential_id     INTEGER NOT NULL REFERENCES credential(id),
  rt_id             INTEGER NOT NULL REFERENCES refresh_token(id), -- the RT presented
  owner_host        TEXT NOT NULL,             -- gethostname() of the presenting process
  owner_boot        TEXT NOT NULL,             -- kernel boot id of that host
  owner_pid         INTEGER NOT NULL,
  owner_start       INTEGER NOT NULL,          -- process start time (clock ticks since boot): pid reuse guard
  owner_profile     TEXT,                      -- profile the process acted for
  owner_command     TEXT,                      -- tokenledger command (or library caller) that presented it
  started_at        INTEGER NOT NULL,
  lease_until       INTEGER NOT NULL,          -- after this, others may treat the attempt as dead
  finished_at       INTEGER,
  outcome           TEXT NOT NULL DEFAULT 'in_flight'
                    CHECK (outcome = 'in_flight' OR outcome = 'rotated' OR outcome = 'rejected'
                            OR outcome = 'not_sent' OR outcome = 'transient' OR outcome = 'unknown'),
  http_status       INTEGER,
  oauth_error       TEXT,                      -- the server's `error`
  error_description TEXT,                      -- the server's `error_description`, or the local failure
  child_rt_id       INTEGER REFERENCES refresh_token(id), -- the RT this presentation produced
  CHECK ((outcome = 'in_flight') = (finished_at IS NULL))
) STRICT;
CREATE UNIQUE INDEX refresh_attempt_one_in_flight ON refresh_attempt(credential_id)
  WHERE outcome = 'in_flight'; -- invariant 3
CREATE INDEX refresh_attempt_rt ON refresh_attempt(rt_id); -- also a credential's attempts, through its RTs

-- Append-only log. No secret ever: tokens appear as fingerprint prefixes only.
-- References are plain integers (no foreign keys) so that history outlives
-- the rows it speaks of.
CREATE TABLE audit_event (
  id             INTEGER PRIMARY KEY,
  at             INTEGER NOT NULL,
  actor_host     TEXT NOT NULL,
  actor_pid      INTEGER NOT NULL,
  actor_profile  TEXT,
  actor_command  TEXT,
  event          TEXT NOT NULL,                -- e.g. rt_stored, rt_presented, rt_rotated, reuse_blocked
  profile_id     INTEGER,
  credential_id  INTEGER,
  rt_id          INTEGER,
  detail         TEXT NOT NULL DEFAULT '{}'    -- JSON object with event-specific facts
                 CHECK (json_valid(detail))
) STRICT;
CREATE INDEX audit_event_credential ON audit_event(credential_id, id);
-- Searched by event name only for reuse (v_reuse_events): those rows alone are indexed.
CREATE INDEX audit_event_reuse ON audit_event(event, id)
  WHERE event IN ('reuse_blocked', 'reuse_detected_by_server');

CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
BEGIN
  SELECT RAISE(ABORT, 'audit_event is append-only');
END;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
BEGIN
  SELECT RAISE(ABORT, 'audit_event is append-only');
END;

-- A Hermes file tokenledger imports from and exports to: a profile's auth.json,
-- or the shared Nous store (shared/nous_auth.json). The template is the file as
-- last read, with every refresh/access token that belongs to a credential
-- replaced by a reference {"$tl": "rt"|"at", "credential": N}; export fills the
-- references from the ledger and keeps every other key as Hermes wrote it.
CREATE TABLE hermes_file (
  id          INTEGER PRIMARY KEY,
  profile_id  INTEGER REFERENCES profile(id) ON DELETE CASCADE, -- NULL for the shared Nous store
  kind        TEXT NOT NULL CHECK (kind IN ('auth', 'shared_nous')),
  path        TEXT NOT NULL UNIQUE,            -- absolute path of the file
  template    TEXT NOT NULL                    -- the document with token and key references (no secret)
              CHECK (json_valid(template)),
  sha256      TEXT,                            -- hex SHA-256 of the bytes last read or written: "did Hermes change it?"
  imported_at INTEGER NOT NULL,
  synced_at   INTEGER NOT NULL                 -- last import, export or sync of this file
) STRICT;
CREATE INDEX hermes_file_profile ON hermes_file(profile_id);

-- A place in Hermes' files that holds a grant and is not a pool row (pool rows
-- are pool_entry rows): a profile's provider singleton (providers.<p>), or a
-- shared Nous store. The same profile, provider and place with a new refresh
-- token is the same grant rotated (an external rotation), wherever the file
-- was read from; a file is only ever patched with the grant its places name.
CREATE TABLE grant_place (
  id            INTEGER PRIMARY KEY,
  profile_id    INTEGER REFERENCES profile(id) ON DELETE CASCADE, -- NULL for a shared Nous store
  place         TEXT NOT NULL                  -- 'singleton:<provider>', or 'shared:<absolute path>'
                CHECK (length(place) BETWEEN 1 AND 4200),
  credential_id INTEGER NOT NULL REFERENCES credential(id),
  updated_at    INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX grant_place_key ON grant_place(coalesce(profile_id, 0), place);
CREATE INDEX grant_place_credential ON grant_place(credential_id);

-- A secret in a Hermes file that is not a grant the ledger keeps (an API key,
-- a guest token, an id_token): kept here, and only here, so that templates and
-- pool_entry.original_json hold no secret. The template names it as
-- {"$tl": "secret", "n": N}.
CREATE TABLE hermes_secret (
  file_id INTEGER NOT NULL REFERENCES hermes_file(id) ON DELETE CASCADE,
  n       INTEGER NOT NULL,                    -- the reference number within the file's template
  secret  TEXT NOT NULL,                       -- SECRET: the value as Hermes stored it
  PRIMARY KEY (file_id, n)
) STRICT;

-- The ledger's key for surrogate refresh tokens: an HMAC-SHA256 key that
-- authenticates every surrogate `tokenledger serve` hands to Hermes. One row.
CREATE TABLE strict_key (
  id          INTEGER PRIMARY KEY CHECK (id = 1), -- one key per ledger
  secret      BLOB NOT NULL                       -- SECRET: 32 random bytes; whoever holds them can forge surrogates
              CHECK (typeof(secret) = 'blob' AND length(secret) = 32),
  created_at  INTEGER NOT NULL
) STRICT;

-- Profiles in strict mode: their Hermes files hold surrogates and point at
-- `tokenledger serve`, so the real refresh token never leaves the ledger.
-- A row here is the flag; removing the profile removes it.
CREATE TABLE strict_profile (
  profile_id  INTEGER PRIMARY KEY REFERENCES profile(id) ON DELETE CASCADE,
  since       INTEGER NOT NULL                    -- when the profile was switched to strict
  -- set while `profile strict NAME off` writes the profile's files in plain form (migration 0009)
, leaving_since INTEGER) STRICT;

-- Where `tokenledger serve` last listened, so that a restart (without
-- --listen) binds the same loopback port that strict profiles' files name.
-- The live state (is it up, which pid) is the port file beside the ledger.
CREATE TABLE serve_state (
  id          INTEGER PRIMARY KEY CHECK (id = 1), -- one row
  host        TEXT NOT NULL                       -- loopback address literal: 127.x.y.z or ::1
              CHECK (host = '::1' OR host GLOB '127.[0-9]*.[0-9]*.[0-9]*'),
  port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
  updated_at  INTEGER NOT NULL
) STRICT;

-- Forensic views. None selects access_token or secret.

-- Every RT of every credential, oldest first, with who presented it (from the
-- attempt, or from the audit log once compact has removed old attempts).
CREATE VIEW v_lineage AS
SELECT t.credential_id                                   AS credential,
       c.provider                                        AS provider,
       c.label                                           AS label,
       coalesce(t.family_id, t.id)                       AS family,
       t.generation                                      AS generation,
       t.state                                           AS state,
       t.origin                                          AS origin,
       substr(t.fingerprint, 1, 12)                      AS fingerprint,
       strftime('%Y-%m-%dT%H:%M:%fZ', t.issued_at / 1000.0, 'unixepoch') AS issued,
       CAST((CAST(strftime('%s', 'now') AS INTEGER) * 1000 - t.issued_at) / 1000 AS INTEGER) AS age_s,
       strftime('%Y-%m-%dT%H:%M:%fZ', t.retired_at / 1000.0, 'unixepoch') AS retired,
       coalesce((SELECT a.owner_host || ':' || a.owner_pid || coalesce(' ' || a.owner_profile, '')
                         || coalesce(' ' || a.owner_command, '')
                   FROM refresh_attempt a WHERE a.rt_id = t.id ORDER BY a.id DESC LIMIT 1),
                (SELECT e.actor_host || ':' || e.actor_pid || coalesce(' ' || e.actor_profile, '')
                         || coalesce(' ' || e.actor_command, '')
                   FROM audit_event e WHERE e.credential_id = t.credential_id AND e.rt_id = t.id
                    AND e.event IN ('rt_presented', 'rt_represented') ORDER BY e.id DESC LIMIT 1)) AS presented_by,
       t.id                                              AS rt_id
  FROM refresh_token t JOIN credential c ON c.id = t.credential_id;

-- Spent tokens that something tried to use again, caught locally or by the server.
CREATE VIEW v_reuse_events AS
SELECT e.id                                                       AS event_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch')  AS at,
       e.event                                                    AS event,
       e.credential_id                                            AS credential,
       e.rt_id                                                    AS rt_id,
       e.actor_host || ':' || e.actor_pid                          AS actor,
       e.actor_command                                            AS command,
       e.detail                                                   AS detail
  FROM audit_event e
 WHERE e.event IN ('reuse_blocked', 'reuse_detected_by_server');

-- Attempts whose outcome is not settled: running now, or lost.
CREATE VIEW v_open_attempts AS
SELECT a.id AS attempt, a.credential_id AS credential, t.generation AS generation,
       substr(t.fingerprint, 1, 12) AS fingerprint, a.outcome AS outcome,
       a.owner_host || ':' || a.owner_pid AS owner, a.owner_profile AS profile,
       a.owner_command AS command,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.started_at / 1000.0, 'unixepoch') AS started,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.lease_until / 1000.0, 'unixepoch') AS lease_until,
       a.error_description AS detail
  FROM refresh_attempt a JOIN refresh_token t ON t.id = a.rt_id
 WHERE a.outcome IN ('in_flight', 'unknown');

-- What each profile would get for each provider, entry by entry, and whether
-- the profile is in strict mode. access_token follows `tokenledger status`:
-- api_key, borrowed, needs_login, unknown_outcome, unknown, valid or expired;
-- reason says why a credential is not active.
CREATE VIEW v_profile_status AS
SELECT p.name AS profile, e.provider AS provider, e.entry_id AS entry, e.priority AS priority,
       e.source AS source, e.auth_type AS auth_type, coalesce(e.label, c.label) AS label,
       e.credential_id AS credential, c.status AS credential_status,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.expires_at / 1000.0, 'unixepoch') AS access_expires,
       CASE WHEN e.auth_type = 'api_key' THEN 'api_key'
            WHEN c.id IS NULL THEN 'borrowed'
            WHEN c.status = 'needs_reauth' THEN 'needs_login'
            WHEN c.status = 'uncertain' THEN 'unknown_outcome'
            WHEN c.expires_at IS NULL THEN 'unknown'
            WHEN c.expires_at > CAST(strftime('%s', 'now') AS INTEGER) * 1000 THEN 'valid'
            ELSE 'expired' END AS access_token,
       t.generation AS rt_generation, t.state AS rt_state, substr(t.fingerprint, 1, 12) AS rt_fingerprint,
       e.last_status AS last_status,
       strftime('%Y-%m-%dT%H:%M:%SZ', e.cooldown_until / 1000.0, 'unixepoch') AS cooldown_until,
       e.request_count AS request_count,
       EXISTS (SELECT 1 FROM strict_profile sp WHERE sp.profile_id = p.id) AS strict,
       CASE WHEN c.status <> 'active' THEN c.status_reason END AS reason
  FROM pool_entry e
  JOIN profile p ON p.id = e.profile_id
  LEFT JOIN credential c ON c.id = e.credential_id
  LEFT JOIN refresh_token t ON t.credential_id = c.id AND t.state IN ('current', 'presented', 'unknown');

-- Every presentation, newest first, with its actor and what it produced.
CREATE VIEW v_refresh_history AS
SELECT a.id AS attempt, a.credential_id AS credential,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.started_at / 1000.0, 'unixepoch') AS started,
       a.finished_at - a.started_at AS duration_ms,
       t.generation AS generation, substr(t.fingerprint, 1, 12) AS fingerprint,
       a.outcome AS outcome, a.http_status AS http_status, a.oauth_error AS oauth_error,
       a.error_description AS error_description,
       (SELECT generation FROM refresh_token WHERE id = a.child_rt_id) AS child_generation,
       a.owner_host || ':' || a.owner_pid AS actor, a.owner_profile AS profile, a.owner_command AS command
  FROM refresh_attempt a JOIN refresh_token t ON t.id = a.rt_id
 ORDER BY a.id DESC;
