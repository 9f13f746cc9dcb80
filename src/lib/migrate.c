/*
 * migrate.c - forward-only schema migrations.
 *
 * The migration texts are migrations/NNNN_*.sql, embedded at build time into
 * tl__migrations[] (generated migrations_data.c). Migration i (1-based) takes
 * the database from user_version i-1 to i, in its own BEGIN IMMEDIATE
 * transaction that also sets user_version, so a crash leaves the database at
 * a whole version. A database newer than TL_SCHEMA_VERSION never reaches this
 * code (store_open.c refuses it read-only).
 */
#include "internal.h"

#include <stdio.h>

/* What a migration needs beyond its SQL text (a secret never is SQL text), in its transaction. */
static tl_status migration_code(tl_store *s, int version, tl_error *err)
{
  if (version == 4)
    return tl__strict_key_create(s, err); /* 0004_strict: the ledger's surrogate key */
  return TL_OK;
}

/*
 * Runs migration version's SQL. 0005 edits table texts in sqlite_schema, as SQLite documents for
 * constraints rewritten without changing what they allow: SQLite's defensive mode, which forbids
 * that, is lifted for this migration's text alone and restored whatever happens.
 */
static tl_status migration_sql(tl_store *s, int version, tl_error *err)
{
  int edits_schema = version == 5;
  tl_status rc = TL_OK;
  if (edits_schema)
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 0, (int *)NULL);
  if (sqlite3_exec(s->db, tl__migrations[version - 1], NULL, NULL, NULL) != SQLITE_OK)
    rc = tl__err_db(err, s, "migrate");
  if (edits_schema) {
    sqlite3_exec(s->db, "PRAGMA writable_schema = OFF", NULL, NULL, NULL); /* already off unless it failed */
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
  }
  return rc;
}

tl_status tl__migrate(tl_store *s, tl_error *err)
{
  tl_status rc = TL_OK;
  if (tl__migration_count != TL_SCHEMA_VERSION)
    return tl__err(err, TL_ERROR, 0, "build error: %zu migrations for schema version %d", tl__migration_count,
                   TL_SCHEMA_VERSION);
  for (;;) {
    if ((rc = tl__tx_begin(s, "migrate", err)) != TL_OK)
      return rc;
    /* Re-read under the write lock: another process may have migrated meanwhile. */
    sqlite3_stmt *st = NULL;
    int ver = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      ver = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (ver < 0) {
      rc = tl__err_db(err, s, "migrate: read user_version");
      goto fail;
    }
    if (ver >= TL_SCHEMA_VERSION) {
      tl__tx_rollback(s);
      return TL_OK;
    }
    if ((rc = migration_sql(s, ver + 1, err)) != TL_OK)
      goto fail;
    if ((rc = migration_code(s, ver + 1, err)) != TL_OK)
      goto fail;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d", ver + 1);
    if ((rc = tl__exec(s, sql, err)) != TL_OK)
      goto fail;
    if ((rc = tl__tx_commit(s, err)) != TL_OK)
      return rc;
  }
fail:
  tl__tx_rollback(s);
  return rc;
}
