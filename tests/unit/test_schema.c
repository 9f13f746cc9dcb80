/*
 * test_schema.c - the schema: migrations replay to the canonical schema, and
 * the five invariants hold against raw SQL, not only through the C API.
 */
#include "fixture.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Strips -- comments and folds white space, so comment-only differences vanish. */
static char *normalize(const char *sql)
{
  size_t n = strlen(sql);
  char *out = malloc(n + 1), *o = out;
  int space = 0;
  for (const char *p = sql; *p;) {
    if (p[0] == '-' && p[1] == '-') {
      while (*p && *p != '\n')
        p++;
      continue;
    }
    if (isspace((unsigned char)*p)) {
      space = 1;
      p++;
      continue;
    }
    if (space && o != out)
      *o++ = ' ';
    space = 0;
    *o++ = *p++;
  }
  *o = '\0';
  return out;
}

static char *schema_dump(sqlite3 *db)
{
  sqlite3_stmt *st = NULL;
  size_t cap = 1 << 16, len = 0;
  char *out = calloc(1, cap);
  assert_int_equal(sqlite3_prepare_v2(db,
                                      "SELECT type, name, tbl_name, sql FROM sqlite_schema "
                                      "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
                                      -1, &st, NULL),
                   SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    char *norm = normalize(sqlite3_column_text(st, 3) ? (const char *)sqlite3_column_text(st, 3) : "");
    size_t need = strlen(norm) + 512;
    if (len + need > cap) {
      cap = (len + need) * 2;
      out = realloc(out, cap);
    }
    len += (size_t)snprintf(out + len, cap - len, "%s|%s|%s|%s\n", sqlite3_column_text(st, 0),
                            sqlite3_column_text(st, 1), sqlite3_column_text(st, 2), norm);
    free(norm);
  }
  sqlite3_finalize(st);
  return out;
}

static void test_schema__migrations_replay_equals_canonical_schema(void **state)
{
  fx *f = *state;
  size_t len = 0;
  char *text = fx_slurp(TL_SOURCE_DIR "/schema/tokenledger.sql", &len);
  assert_non_null(text);
  text = realloc(text, len + 1);
  text[len] = '\0';
  sqlite3 *canon = NULL;
  assert_int_equal(sqlite3_open(":memory:", &canon), SQLITE_OK);
  assert_int_equal(sqlite3_exec(canon, text, NULL, NULL, NULL), SQLITE_OK);
  char *a = schema_dump(canon), *b = schema_dump(f->s->db);
  if (strcmp(a, b) != 0) {
    fprintf(stderr, "canonical:\n%s\nmigrated:\n%s\n", a, b);
    fail_msg("replaying migrations/ does not produce schema/tokenledger.sql");
  }
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(canon, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(st, 0), TL_SCHEMA_VERSION);
  sqlite3_finalize(st);
  assert_int_equal(fx_int(f->s, "PRAGMA user_version"), TL_SCHEMA_VERSION);
  assert_int_equal(fx_int(f->s, "PRAGMA application_id"), 1414284359);
  assert_int_equal(tl__migration_count, TL_SCHEMA_VERSION);
  free(a);
  free(b);
  free(text);
  sqlite3_close(canon);
}

/* The schema db.c holds every ledger to (generated at build time) is what this SQLite makes of the migrations. */
static void test_schema__expected_rows_equal_a_replay_here(void **state)
{
  (void)state;
  for (int v = 1; v <= TL_SCHEMA_VERSION; v++) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    for (int i = 0; i < v; i++)
      assert_int_equal(sqlite3_exec(db, tl__migrations[i], NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, TL_SCHEMA_QUERY, -1, &st, NULL), SQLITE_OK);
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
      assert_true(n < tl__schema_counts[v]);
      const tl__schema_row *w = &tl__schema_rows[v][n++];
      const char *cols[] = {w->type, w->name, w->tbl, w->sql};
      for (int c = 0; c < 4; c++) {
        const char *got = (const char *)sqlite3_column_text(st, c);
        if (!((!got && !cols[c]) || (got && cols[c] && strcmp(got, cols[c]) == 0)))
          fail_msg("version %d, %s: column %d differs", v, w->name, c);
      }
    }
    assert_int_equal(n, tl__schema_counts[v]);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  assert_int_equal(tl__schema_counts[0], 0);
}

static void test_schema__connection_is_wal_fk_secure_delete_and_syncs_commits(void **state)
{
  fx *f = *state;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(f->s->db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  assert_int_equal(fx_int(f->s, "PRAGMA foreign_keys"), 1);
  assert_int_equal(fx_int(f->s, "PRAGMA synchronous"), 1); /* NORMAL, and the WAL hook syncs each commit */
  assert_int_equal(fx_int(f->s, "PRAGMA secure_delete"), 1);
  long before = f->s->wal_syncs;
  tl_error err = {0};
  assert_int_equal(tl_profile_add(f->s, "p", NULL, &err), TL_OK);
  assert_int_equal(f->s->wal_syncs, before + 1);
  assert_int_equal(fx_sql(f->s, "UPDATE profile SET home = '/h' WHERE name = 'p'"), SQLITE_OK); /* autocommit too */
  assert_int_equal(f->s->wal_syncs, before + 2);
}

#define FP(c)                                                                                                          \
  "'" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c  \
      c c c c c c c c "'"

static void seed(fx *f)
{
  fx_credential(f->s, "p", "rt-root");
  assert_int_equal(fx_sql(f->s, "INSERT INTO credential (provider, client_id, token_url, created_at, updated_at) "
                                "VALUES ('nous', 'x', 'https://e/t', 0, 0)"),
                   SQLITE_OK); /* credential 2 */
}

/* Counts the temporary b-trees SQLite builds to run sql (an IN list of three or more constants makes one). */
static int ephemeral_tables(sqlite3 *db, const char *sql)
{
  char q[1024];
  snprintf(q, sizeof q, "EXPLAIN %s", sql);
  sqlite3_stmt *st = NULL;
  int n = 0;
  assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW)
    n += strcmp((const char *)sqlite3_column_text(st, 1), "OpenEphemeral") == 0;
  sqlite3_finalize(st);
  return n;
}

/*
 * A ledger of schema version 4 (made by replaying migrations 1-4, with a lineage, attempts and audit rows)
 * opens migrated to the current version: the exact schema, every row kept, integrity ok, the rules on
 * states still enforced, and the write path without the temporary b-trees 0005 removed.
 */
static void test_schema__a_version_4_ledger_migrates_in_place(void **state)
{
  fx *f = *state;
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
  for (int i = 0; i < 4; i++)
    assert_int_equal(sqlite3_exec(db, tl__migrations[i], NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(
      sqlite3_exec(
          db,
          "PRAGMA user_version = 4;"
          "INSERT INTO strict_key (id, secret, created_at) VALUES (1, randomblob(32), 0);"
          "INSERT INTO profile (id, name, created_at) VALUES (1, 'p', 0);"
          "INSERT INTO credential (id, provider, client_id, token_url, access_token, expires_at, created_at, "
          "updated_at) VALUES (1, 'nous', 'hermes-cli', 'http://127.0.0.1:9/t', 'at', 1, 0, 0);"
          "INSERT INTO pool_entry (profile_id, provider, credential_id, entry_id, source) VALUES (1, 'nous', "
          "1, 'abc123', 'device_code');"
          "INSERT INTO refresh_token (id, credential_id, generation, fingerprint, state, origin, issued_at, "
          "retired_at) VALUES (1, 1, 0, " FP("a") ", 'rotated', 'import', 0, 1);"
                                                  "INSERT INTO refresh_token (id, credential_id, parent_id, family_id, "
                                                  "generation, fingerprint, state, "
                                                  "origin, secret, issued_at) VALUES (2, 1, 1, 1, 1, " FP(
                                                      "c") ", 'current', 'refresh', "
                                                           "'rt-gen-1', 1);"
                                                           "INSERT INTO refresh_attempt (credential_id, rt_id, "
                                                           "owner_host, owner_boot, owner_pid, owner_start, "
                                                           "started_at, lease_until, finished_at, outcome, "
                                                           "child_rt_id) VALUES (1, 1, 'h', 'b', 1, 1, 0, 0, 1, "
                                                           "'rotated', 2);"
                                                           "INSERT INTO audit_event (at, actor_host, actor_pid, event, "
                                                           "credential_id, rt_id) VALUES (0, 'h', 1, "
                                                           "'rt_rotated', 1, 2), (0, 'h', 1, 'reuse_blocked', 1, 1);",
          NULL, NULL, NULL),
      SQLITE_OK);
  assert_int_equal(sqlite3_close(db), SQLITE_OK);
  chmod(f->path, 0600);

  tl_error err = {0};
  if (tl_store_open(&f->s, f->path, 0, &err) != TL_OK)
    fail_msg("open: %s", err.message);
  assert_int_equal(tl_store_schema_version_found(f->s), 4);
  assert_int_equal(fx_int(f->s, "PRAGMA user_version"), TL_SCHEMA_VERSION);
  assert_int_equal(tl__schema_check(f->s, TL_SCHEMA_VERSION, &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 2);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event"), 2);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM v_reuse_events"), 1);
  /* the rules hold as before */
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'bogus' WHERE id = 2") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'current', retired_at = NULL WHERE id = 1") & 0xff,
                   SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_attempt SET outcome = 'maybe'") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET status = 'fine'") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE pool_entry SET last_status = 'tired'") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                "issued_at) VALUES (1, 0, " FP("b") ", 'current', 'guess', 0)") &
                       0xff,
                   SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'rotated', retired_at = 2 WHERE id = 2") & 0xff,
                   SQLITE_CONSTRAINT); /* a spent state keeps no plaintext */
  /* what a rotation writes builds no temporary b-tree */
  assert_int_equal(
      ephemeral_tables(f->s->db, "UPDATE refresh_token SET state = 'presented', retired_at = NULL WHERE id = 2"), 0);
  assert_int_equal(ephemeral_tables(f->s->db,
                                    "INSERT INTO refresh_token (credential_id, parent_id, family_id, "
                                    "generation, fingerprint, state, origin, secret, issued_at) VALUES (1, 2, "
                                    "1, 2, " FP("d") ", 'current', 'refresh', 'x', 2)"),
                   0);
  assert_int_equal(ephemeral_tables(f->s->db, "UPDATE refresh_attempt SET outcome = 'unknown', finished_at = 2"), 0);
  assert_int_equal(ephemeral_tables(f->s->db, "UPDATE credential SET status = 'uncertain'"), 0);
}

static void test_schema__inv1_fingerprint_is_unique_across_credentials(void **state)
{
  fx *f = *state;
  seed(f);
  assert_int_equal(fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                "issued_at) VALUES (2, 0, " FP("a") ", 'current', 'import', 0)"),
                   SQLITE_OK);
  int rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, issued_at, "
                        "retired_at) VALUES (1, 0, " FP("a") ", 'rotated', 'import', 0, 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
}

static void test_schema__inv2_one_live_rt_per_credential(void **state)
{
  fx *f = *state;
  seed(f);
  /* credential 1 already has a current RT */
  int rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                        "issued_at) VALUES (1, 0, " FP("b") ", 'current', 'import', 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
  rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                    "issued_at) VALUES (1, 0, " FP("b") ", 'presented', 'import', 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
}

static void test_schema__inv3_one_in_flight_attempt_per_credential(void **state)
{
  fx *f = *state;
  seed(f);
  const char *ins = "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, "
                    "owner_start, started_at, lease_until) VALUES (1, 1, 'h', 'b', 1, 1, 0, 0)";
  assert_int_equal(fx_sql(f->s, ins), SQLITE_OK);
  assert_int_equal(fx_sql(f->s, ins) & 0xff, SQLITE_CONSTRAINT);
}

static void test_schema__inv4_parent_same_credential_and_next_generation(void **state)
{
  fx *f = *state;
  seed(f);
  /* parent (id 1) belongs to credential 1: a child for credential 2 is refused */
  int rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, "
                        "state, origin, issued_at) VALUES (2, 1, 1, 1, " FP("c") ", 'current', 'refresh', 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(
      fx_sql(f->s, "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = 1 WHERE id = 1"),
      SQLITE_OK);
  /* a generation that skips one is refused */
  rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, "
                    "state, origin, issued_at) VALUES (1, 1, 1, 2, " FP("c") ", 'current', 'refresh', 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
  /* a root with a generation is refused */
  rc = fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, issued_at) "
                    "VALUES (2, 3, " FP("d") ", 'current', 'import', 0)");
  assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
  /* the right child is accepted */
  assert_int_equal(fx_sql(f->s, "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, "
                                "fingerprint, state, origin, issued_at) VALUES (1, 1, 1, 1, " FP("c") ", 'current', "
                                                                                                      "'refresh', 0)"),
                   SQLITE_OK);
}

static void test_schema__inv5_audit_rows_cannot_be_updated_or_deleted(void **state)
{
  fx *f = *state;
  seed(f);
  int64_t n = fx_int(f->s, "SELECT count(*) FROM audit_event");
  assert_true(n > 0);
  assert_int_equal(fx_sql(f->s, "UPDATE audit_event SET event = 'x'") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "DELETE FROM audit_event") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event"), n);
}

static void test_schema__spent_rt_never_comes_back(void **state)
{
  fx *f = *state;
  seed(f);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = 1"),
                   SQLITE_OK);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'current', retired_at = NULL") & 0xff,
                   SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET secret = 'again'") & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET fingerprint = " FP("e")) & 0xff, SQLITE_CONSTRAINT);
  assert_int_equal(fx_sql(f->s, "DELETE FROM refresh_token") & 0xff, SQLITE_CONSTRAINT);
  /* a spent state with plaintext is refused by CHECK */
  assert_int_equal(fx_sql(f->s, "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                "secret, issued_at, retired_at) VALUES (2, 0, " FP("f") ", 'rejected', 'import', "
                                                                                        "'plain', 0, 0)") &
                       0xff,
                   SQLITE_CONSTRAINT);
}

static void test_schema__views_never_show_a_secret(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  assert_int_equal(tl_profile_add(f->s, "p", NULL, &err), TL_OK);
  tl_credential_spec spec = {.provider = "nous",
                             .profile = "p",
                             .refresh_token = "SECRETRT-0123456789",
                             .access_token = "SECRETAT-0123456789",
                             .expires_at_ms = 4102444800000};
  assert_int_equal(tl_credential_add(NULL, f->s, &spec, &err), TL_OK);
  static const char *const views[] = {"v_lineage", "v_reuse_events", "v_open_attempts", "v_profile_status",
                                      "v_refresh_history"};
  for (size_t v = 0; v < sizeof views / sizeof *views; v++) {
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT * FROM %s", views[v]);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->s->db, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
      for (int c = 0; c < sqlite3_column_count(st); c++) {
        const char *t = (const char *)sqlite3_column_text(st, c);
        assert_null(t ? strstr(t, "SECRET") : NULL);
      }
    sqlite3_finalize(st);
  }
  /* and the audit log neither */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE detail LIKE '%SECRET%'"), 0);
}

/*
 * The lookups every refresh makes stay single-row index searches, however long
 * a lineage grows: each must use the index named here (or one of those named) (a search by credential
 * through every generation would make rotation quadratic in the history).
 */
static void test_schema__refresh_lookups_never_scan_the_history(void **state)
{
  fx *f = *state;
  static const struct {
    const char *sql, *index;
  } q[] = {
      {"SELECT id, secret FROM refresh_token WHERE credential_id = 1 AND (state = 'current' OR state = 'presented' "
       "OR state = 'unknown')",
       "refresh_token_one_open|refresh_token_state"},
      {"SELECT id, secret FROM refresh_token WHERE credential_id = 1 AND state = 'current'",
       "refresh_token_one_open|refresh_token_state"},
      {"SELECT id FROM refresh_token WHERE credential_id = 1 AND state IN ('current', 'presented', 'unknown')",
       "refresh_token_state"},
      {"SELECT id FROM refresh_attempt WHERE outcome = 'in_flight' AND credential_id = 1",
       "refresh_attempt_one_in_flight"},
      {"SELECT id FROM refresh_token WHERE fingerprint = 'x'", "sqlite_autoindex_refresh_token_1"},
      {"SELECT count(*) FROM refresh_attempt WHERE rt_id = 1", "refresh_attempt_rt"},
      {"SELECT a.id FROM refresh_token t JOIN refresh_attempt a ON a.rt_id = t.id WHERE t.credential_id = 1 AND "
       "a.id < 9 ORDER BY a.id DESC LIMIT 1",
       "refresh_attempt_rt"},
      {"SELECT rt_generation FROM v_profile_status WHERE profile = 'p'", "refresh_token_state"},
      /* whose home is this (tl__home_owner, once per imported profile) */
      {"SELECT name FROM profile WHERE (home = '/h' OR home = '/r') AND id <> 0", "profile_home"},
  };
  for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
    char sql[512], plan[2048] = "";
    snprintf(sql, sizeof sql, "EXPLAIN QUERY PLAN %s", q[i].sql);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->s->db, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
      const char *detail = (const char *)sqlite3_column_text(st, 3);
      strncat(plan, detail, sizeof plan - strlen(plan) - 2);
      strcat(plan, ";");
      if (strncmp(detail, "SCAN", 4) == 0)
        fail_msg("'%s' scans: %s", q[i].sql, detail);
    }
    sqlite3_finalize(st);
    /* q[i].index: the index to use, or alternatives separated by '|' (each a single-row search) */
    int uses = 0;
    char names[128];
    snprintf(names, sizeof names, "%s", q[i].index);
    for (char *save = NULL, *name = strtok_r(names, "|", &save); name; name = strtok_r(NULL, "|", &save))
      uses |= strstr(plan, name) != NULL;
    if (!uses)
      fail_msg("'%s' does not use %s: %s", q[i].sql, q[i].index, plan);
  }
}

/*
 * The forensic view says what `tokenledger status` says about the access token
 * (migration 0006): a revoked grant or one whose last presentation has no known
 * outcome is never 'valid' in sqlite3 either, whatever its expiry.
 */
static void test_schema__profile_status_view_agrees_with_status(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  int64_t id = fx_credential(f->s, "p", "rt-view-0123456789");
  static const struct {
    const char *status, *expires, *want;
  } c[] = {
      {"active", "4102444800000", "valid"},
      {"active", "1000", "expired"},
      {"active", "NULL", "unknown"},
      {"needs_reauth", "4102444800000", "needs_login"},
      {"needs_reauth", "1000", "needs_login"},
      {"uncertain", "4102444800000", "unknown_outcome"},
      {"uncertain", "NULL", "unknown_outcome"},
  };
  for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE credential SET status = '%s', status_reason = %s, expires_at = %s WHERE id = %lld", c[i].status,
             strcmp(c[i].status, "active") ? "'server said so'" : "NULL", c[i].expires, (long long)id);
    assert_int_equal(fx_sql(f->s, sql), SQLITE_OK);
    tl_report *r = NULL;
    assert_int_equal(tl_status_report(&r, f->s, "p", &err), TL_OK);
    assert_int_equal(tl_report_rows(r), 1);
    const char *lib = tl_report_get(r, 0, "access_token_state");
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(f->s->db,
                                        "SELECT access_token, reason FROM v_profile_status WHERE profile = 'p'", -1,
                                        &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const char *view = (const char *)sqlite3_column_text(st, 0);
    if (!view || strcmp(view, c[i].want) || !lib || strcmp(lib, c[i].want))
      fail_msg("%s, expires %s: view says %s, status says %s, want %s", c[i].status, c[i].expires, view ? view : "NULL",
               lib ? lib : "NULL", c[i].want);
    /* reason: only for a credential that is not active */
    if (strcmp(c[i].status, "active") == 0)
      assert_int_equal(sqlite3_column_type(st, 1), SQLITE_NULL);
    else
      assert_string_equal((const char *)sqlite3_column_text(st, 1), "server said so");
    sqlite3_finalize(st);
    tl_report_free(r);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_schema__migrations_replay_equals_canonical_schema, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__profile_status_view_agrees_with_status, fx_setup, fx_teardown),
      cmocka_unit_test(test_schema__expected_rows_equal_a_replay_here),
      cmocka_unit_test_setup_teardown(test_schema__connection_is_wal_fk_secure_delete_and_syncs_commits, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__inv1_fingerprint_is_unique_across_credentials, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__inv2_one_live_rt_per_credential, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__inv3_one_in_flight_attempt_per_credential, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__inv4_parent_same_credential_and_next_generation, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__inv5_audit_rows_cannot_be_updated_or_deleted, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__spent_rt_never_comes_back, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__views_never_show_a_secret, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__refresh_lookups_never_scan_the_history, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_schema__a_version_4_ledger_migrates_in_place, fx_setup_nostore, fx_teardown),
  };
  return cmocka_run_group_tests_name("schema", tests, NULL, NULL);
}
