-- Migration 0006: the forensic view v_profile_status tells the truth about a
-- credential that is not active. Forward-only; applied in one transaction by
-- src/lib/migrate.c, which sets user_version 6.
--
-- Before, the view called an unexpired access token 'valid' whatever its
-- credential's status, so a grant the server had revoked (needs_reauth) or one
-- whose last presentation has no known outcome (uncertain) still read 'valid'
-- in `sqlite3` while `tokenledger status` said otherwise. The column now
-- follows src/lib/query.c (tl_status_report) case for case: 'api_key' for an
-- API key entry, 'borrowed' for an entry without a credential of its own,
-- 'needs_login', 'unknown_outcome', then 'unknown', 'valid' or 'expired' by
-- the expiry. Every other column is as it was; one column is added at the end:
-- `reason`, why a credential is not active (its status_reason).

DROP VIEW v_profile_status;
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
