-- Migration 0004: strict mode (tokenledger serve, surrogate refresh tokens).
-- Forward-only; applied in one transaction by src/lib/migrate.c, which sets
-- user_version 4 and, in the same transaction, writes the ledger's surrogate
-- key (32 bytes from RAND_bytes; a secret never appears in SQL text).

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
) STRICT;

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

-- v_profile_status gains `strict` (1 when the profile is in strict mode).
DROP VIEW v_profile_status;
CREATE VIEW v_profile_status AS
SELECT p.name AS profile, e.provider AS provider, e.entry_id AS entry, e.priority AS priority,
       e.source AS source, e.auth_type AS auth_type, coalesce(e.label, c.label) AS label,
       e.credential_id AS credential, c.status AS credential_status,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.expires_at / 1000.0, 'unixepoch') AS access_expires,
       CASE WHEN c.id IS NULL THEN NULL
            WHEN c.expires_at IS NULL THEN 'unknown'
            WHEN c.expires_at > CAST(strftime('%s', 'now') AS INTEGER) * 1000 THEN 'valid'
            ELSE 'expired' END AS access_token,
       t.generation AS rt_generation, t.state AS rt_state, substr(t.fingerprint, 1, 12) AS rt_fingerprint,
       e.last_status AS last_status,
       strftime('%Y-%m-%dT%H:%M:%SZ', e.cooldown_until / 1000.0, 'unixepoch') AS cooldown_until,
       e.request_count AS request_count,
       EXISTS (SELECT 1 FROM strict_profile sp WHERE sp.profile_id = p.id) AS strict
  FROM pool_entry e
  JOIN profile p ON p.id = e.profile_id
  LEFT JOIN credential c ON c.id = e.credential_id
  LEFT JOIN refresh_token t ON t.credential_id = c.id AND t.state IN ('current', 'presented', 'unknown');
