-- Migration 0003: where each grant lives in Hermes' files, and secrets out of
-- the stored documents. Forward-only; applied in one transaction by src/lib/migrate.c,
-- which sets user_version 3.

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

-- Places of the singletons and shared stores already in the ledger's templates.
INSERT OR IGNORE INTO grant_place (profile_id, place, credential_id, updated_at)
SELECT f.profile_id, 'singleton:' || p.key,
       coalesce(json_extract(p.value, '$.refresh_token.credential'),
                json_extract(p.value, '$.tokens.refresh_token.credential')), f.synced_at
  FROM hermes_file f, json_each(f.template, '$.providers') p
 WHERE f.kind = 'auth' AND f.profile_id IS NOT NULL AND json_type(p.value) = 'object'
   AND coalesce(json_extract(p.value, '$.refresh_token.credential'),
                json_extract(p.value, '$.tokens.refresh_token.credential')) IN (SELECT id FROM credential)
 ORDER BY f.synced_at DESC;
INSERT OR IGNORE INTO grant_place (profile_id, place, credential_id, updated_at)
SELECT NULL, 'shared:' || f.path, json_extract(f.template, '$.refresh_token.credential'), f.synced_at
  FROM hermes_file f
 WHERE f.kind = 'shared_nous' AND json_extract(f.template, '$.refresh_token.credential') IN (SELECT id FROM credential);

-- Secrets out of the entries' original JSON (templates lose theirs at their next write).
UPDATE pool_entry SET original_json = json_remove(original_json, '$.access_token', '$.refresh_token', '$.agent_key',
                                                  '$.anon_token', '$.id_token', '$.api_key')
 WHERE original_json IS NOT NULL;

-- Who presented a token survives compact: the audit log answers once old attempts are gone.
DROP VIEW v_lineage;
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
