-- Migration 0002: Hermes files (auth.json and the shared Nous store) that
-- import, export and sync keep in step with the ledger. Forward-only; applied
-- in one transaction by src/lib/migrate.c, which sets user_version 2.

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
  template    TEXT NOT NULL                    -- SECRET (may hold API keys): the document with token references
              CHECK (json_valid(template)),
  sha256      TEXT,                            -- hex SHA-256 of the bytes last read or written: "did Hermes change it?"
  imported_at INTEGER NOT NULL,
  synced_at   INTEGER NOT NULL                 -- last import, export or sync of this file
) STRICT;
CREATE INDEX hermes_file_profile ON hermes_file(profile_id);
