-- Migration 0005: a cheaper write path, the same rules. Forward-only; applied in
-- one transaction by src/lib/migrate.c, which sets user_version 5.
--
-- SQLite evaluates `x IN ('a', 'b', 'c')` with three or more constants by
-- building a temporary b-tree of the constants each time the expression runs;
-- in a CHECK constraint, a partial index or a trigger that is every INSERT and
-- UPDATE of the row. A rotation paid for ten of them (a third of its CPU time).
-- The same rules written as `x = 'a' OR x = 'b' OR x = 'c'` are compared in
-- place. Every row that satisfied a rule before satisfies it now and the other
-- way round, so the table texts are changed in place, as SQLite documents for
-- changes that leave the stored content as it is (lang_altertable.html, "other
-- kinds of table schema changes"): schema editing is on only between the
-- UPDATEs below and writable_schema=RESET, which turns it off again and
-- reloads this connection's schema; the DDL that follows changes the schema
-- cookie, so every other connection reloads it too. migrate.c lifts SQLite's
-- defensive mode for this migration only. Each replace() must find its text
-- (what 0001 created, which db.c proved before migrating): the schema check
-- after the migration refuses anything else.

PRAGMA writable_schema = ON;

UPDATE sqlite_schema
   SET sql = replace(sql, 'CHECK (status IN (''active'', ''uncertain'', ''needs_reauth''))',
                     'CHECK (status = ''active'' OR status = ''uncertain'' OR status = ''needs_reauth'')')
 WHERE type = 'table' AND name = 'credential';

UPDATE sqlite_schema
   SET sql = replace(sql, 'CHECK (last_status IN (''ok'', ''exhausted'', ''dead''))',
                     'CHECK (last_status = ''ok'' OR last_status = ''exhausted'' OR last_status = ''dead'')')
 WHERE type = 'table' AND name = 'pool_entry';

UPDATE sqlite_schema
   SET sql = replace(replace(replace(sql,
         'CHECK (state IN (''current'', ''presented'', ''rotated'', ''rejected'', ''unknown'', ''retired''))',
         'CHECK (state = ''current'' OR state = ''presented'' OR state = ''rotated'' OR state = ''rejected''
                       OR state = ''unknown'' OR state = ''retired'')'),
         'CHECK (origin IN (''login'', ''import'', ''refresh'', ''external''))',
         'CHECK (origin = ''login'' OR origin = ''import'' OR origin = ''refresh'' OR origin = ''external'')'),
         'CHECK (state IN (''current'', ''presented'', ''unknown'') OR secret IS NULL)',
         'CHECK (state = ''current'' OR state = ''presented'' OR state = ''unknown'' OR secret IS NULL)')
 WHERE type = 'table' AND name = 'refresh_token';

UPDATE sqlite_schema
   SET sql = replace(sql,
         'CHECK (outcome IN (''in_flight'', ''rotated'', ''rejected'', ''not_sent'', ''transient'', ''unknown''))',
         'CHECK (outcome = ''in_flight'' OR outcome = ''rotated'' OR outcome = ''rejected''
                            OR outcome = ''not_sent'' OR outcome = ''transient'' OR outcome = ''unknown'')')
 WHERE type = 'table' AND name = 'refresh_attempt';

PRAGMA writable_schema = RESET;

-- The same trigger without an IN list.
DROP TRIGGER refresh_token_immutable;
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

-- Invariant 2 (one current or presented RT per credential) is implied by
-- refresh_token_one_open (one current, presented or unknown RT): the narrower
-- index only cost a page write on every change of state. refresh_token_one_open
-- itself is rebuilt without its IN list. A partial index serves only a query
-- whose WHERE implies the index's own, and queries elsewhere look for a
-- credential's open RT as `state IN ('current', 'presented', 'unknown')`:
-- refresh_token_state serves those (three index searches) without making any
-- write evaluate a list.
DROP INDEX refresh_token_one_live;
DROP INDEX refresh_token_one_open;
CREATE UNIQUE INDEX refresh_token_one_open ON refresh_token(credential_id)
  WHERE state = 'current' OR state = 'presented' OR state = 'unknown';
CREATE INDEX refresh_token_state ON refresh_token(credential_id, state);

-- Attempts by credential served only the message for a rejected grant, which
-- finds them through the credential's RTs (refresh_attempt_rt) instead: a
-- claim no longer writes a page of this index.
DROP INDEX refresh_attempt_credential;

-- The audit log is searched by event name only for reuse (v_reuse_events):
-- index those rows alone, instead of every row of the log.
DROP INDEX audit_event_event;
CREATE INDEX audit_event_reuse ON audit_event(event, id)
  WHERE event IN ('reuse_blocked', 'reuse_detected_by_server');
