/*
 * test_store.c - opening a ledger: modes, refusals, and "a refused file is
 * left exactly as it was".
 */
#include "fixture.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Names in a directory, sorted, as one string. */
static char *listing(const char *dir)
{
  struct dirent **names = NULL;
  int n = scandir(dir, &names, NULL, alphasort);
  char *out = calloc(1, 4096);
  for (int i = 0; i < n; i++) {
    strncat(out, names[i]->d_name, 4000 - strlen(out));
    strncat(out, "\n", 4000 - strlen(out));
    free(names[i]);
  }
  free(names);
  return out;
}

/* Opens path expecting a refusal with code; asserts bytes and directory unchanged. */
static void expect_refused_untouched(fx *f, const char *path, unsigned flags, tl_status code, const char *needle)
{
  size_t before_len = 0, after_len = 0;
  char *before = fx_slurp(path, &before_len);
  char *dir_before = listing(f->dir);
  tl_store *s = NULL;
  tl_error err = {0};
  tl_status rc = tl_store_open(&s, path, flags, &err);
  if (rc != code)
    fail_msg("expected %s, got %s: %s", tl_status_name(code), tl_status_name(rc), err.message);
  assert_null(s);
  assert_int_equal(err.code, code);
  if (needle && !strstr(err.message, needle))
    fail_msg("message '%s' lacks '%s'", err.message, needle);
  char *after = fx_slurp(path, &after_len);
  char *dir_after = listing(f->dir);
  assert_int_equal(before_len, after_len);
  if (before)
    assert_memory_equal(before, after, before_len);
  assert_string_equal(dir_before, dir_after);
  free(before);
  free(after);
  free(dir_before);
  free(dir_after);
}

static void test_store__init_creates_dir_0700_and_file_0600(void **state)
{
  fx *f = *state;
  char path[400];
  snprintf(path, sizeof path, "%s/new/x.db", f->dir);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_OK);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  char dir[400];
  snprintf(dir, sizeof dir, "%s/new", f->dir);
  assert_int_equal(stat(dir, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0700);
  tl_store_free(s);
  /* reopening an existing ledger works and finds the current version */
  assert_int_equal(tl_store_open(&s, path, 0, &err), TL_OK);
  assert_int_equal(tl_store_schema_version_found(s), TL_SCHEMA_VERSION);
  tl_store_free(s);
}

static void test_store__missing_ledger_is_not_found_and_nothing_is_created(void **state)
{
  fx *f = *state;
  tl_store *s = NULL;
  tl_error err = {0};
  char *before = listing(f->dir);
  assert_int_equal(tl_store_open(&s, f->path, 0, &err), TL_ENOTFOUND);
  assert_non_null(strstr(err.message, "tokenledger init"));
  char *after = listing(f->dir);
  assert_string_equal(before, after);
  free(before);
  free(after);
}

static void test_store__missing_parent_of_directory_is_reported(void **state)
{
  fx *f = *state;
  char path[400];
  snprintf(path, sizeof path, "%s/a/b/x.db", f->dir);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_ENOTFOUND);
  assert_non_null(strstr(err.message, "cannot create directory"));
}

static void test_store__parent_that_is_a_file_is_reported(void **state)
{
  fx *f = *state;
  char file[400], path[420];
  snprintf(file, sizeof file, "%s/plain", f->dir);
  fx_write(file, "x", 1, 0600);
  snprintf(path, sizeof path, "%s/x.db", file);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_EIO);
  assert_non_null(strstr(err.message, "not a directory"));
}

static void test_store__unwritable_directory_is_reported(void **state)
{
  fx *f = *state;
  if (geteuid() == 0)
    skip(); /* root writes anywhere; the not-a-directory case covers the error path */
  char dir[400], path[420];
  snprintf(dir, sizeof dir, "%s/ro", f->dir);
  assert_int_equal(mkdir(dir, 0500), 0);
  snprintf(path, sizeof path, "%s/x.db", dir);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_EIO);
  assert_non_null(strstr(err.message, "Permission denied"));
}

static void test_store__world_readable_ledger_is_refused_untouched(void **state)
{
  fx *f = *state;
  tl_store_free(f->s);
  f->s = NULL;
  assert_int_equal(chmod(f->path, 0644), 0);
  expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "chmod 600");
  /* doctor's repair makes it usable again */
  tl_error err = {0};
  assert_int_equal(tl_store_fix_permissions(f->path, &err), TL_OK);
  struct stat st;
  assert_int_equal(stat(f->path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  assert_int_equal(tl_store_open(&f->s, f->path, 0, &err), TL_OK);
}

static void test_store__ledger_of_another_user_is_refused(void **state)
{
  fx *f = *state;
  if (geteuid() != 0)
    skip(); /* only root can give a file away */
  tl_store_free(f->s);
  f->s = NULL;
  assert_int_equal(chown(f->path, 1, 1), 0);
  expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "not by you");
}

static void test_store__symlinked_ledger_is_refused(void **state)
{
  fx *f = *state;
  tl_store_free(f->s);
  f->s = NULL;
  char link[400];
  snprintf(link, sizeof link, "%s/link.db", f->dir);
  assert_int_equal(symlink(f->path, link), 0);
  expect_refused_untouched(f, link, 0, TL_EINSECURE, "symbolic link");
  expect_refused_untouched(f, link, TL_OPEN_CREATE, TL_EINSECURE, "symbolic link");
}

static void test_store__file_that_is_not_a_database_is_refused_untouched(void **state)
{
  fx *f = *state;
  char path[400];
  snprintf(path, sizeof path, "%s/notes.db", f->dir);
  const char text[] = "these are my notes, not a database; they must survive intact\n";
  fx_write(path, text, sizeof text - 1, 0600);
  expect_refused_untouched(f, path, 0, TL_ECORRUPT, "not a tokenledger database");
  expect_refused_untouched(f, path, TL_OPEN_CREATE, TL_ECORRUPT, NULL);
}

static void test_store__foreign_sqlite_database_is_refused_untouched(void **state)
{
  fx *f = *state;
  char path[400];
  snprintf(path, sizeof path, "%s/other.db", f->dir);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  chmod(path, 0600);
  expect_refused_untouched(f, path, 0, TL_ECORRUPT, "not a tokenledger ledger");
}

static void test_store__truncated_ledger_is_refused_untouched(void **state)
{
  fx *f = *state;
  tl_store_free(f->s); /* checkpoints the WAL into the file */
  f->s = NULL;
  size_t len = 0;
  char *whole = fx_slurp(f->path, &len);
  assert_true(len > 8192);
  fx_write(f->path, whole, 60, 0600); /* cut inside the header */
  free(whole);
  expect_refused_untouched(f, f->path, 0, TL_ECORRUPT, NULL);
}

static void test_store__ledger_from_a_newer_version_is_refused_untouched(void **state)
{
  fx *f = *state;
  assert_int_equal(fx_sql(f->s, "PRAGMA user_version = 99"), SQLITE_OK);
  tl_store_free(f->s);
  f->s = NULL;
  expect_refused_untouched(f, f->path, 0, TL_ETOONEW, "schema version 99 is newer");
}

static void test_store__busy_write_lock_reports_busy(void **state)
{
  fx *f = *state;
  tl_store *other = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&other, f->path, 0, &err), TL_OK);
  assert_int_equal(fx_sql(other, "BEGIN IMMEDIATE"), SQLITE_OK);
  tl_store_set_busy_timeout(f->s, 50);
  tl_status rc = tl_profile_add(f->s, "late", NULL, &err);
  assert_int_equal(rc, TL_EBUSY);
  assert_non_null(strstr(err.message, "locked"));
  fx_sql(other, "ROLLBACK");
  tl_store_free(other);
}

static void test_store__write_gate_survives_a_holder_that_died(void **state)
{
  fx *f = *state;
  char gate[400];
  snprintf(gate, sizeof gate, "%s-wlock", f->path);
  struct stat st;
  assert_int_equal(stat(gate, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  pid_t child = fork();
  if (child == 0) {
    tl_store *s = NULL;
    tl_error e = {0};
    if (tl_store_open(&s, f->path, 0, &e) != TL_OK || tl__tx_begin(s, "dying", &e) != TL_OK)
      _exit(1);
    _exit(0); /* dies holding the gate and SQLite's write lock */
  }
  int status = 0;
  waitpid(child, &status, 0);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  tl_error err = {0};
  /* An unrecovered gate would make this fail with TL_EBUSY at the deadline. */
  assert_int_equal(tl_profile_add(f->s, "after", NULL, &err), TL_OK);
}

static void test_store__unknown_parameter_name_is_a_hard_error(void **state)
{
  fx *f = *state;
  static const char sql[] = "SELECT :known";
  sqlite3_stmt *st = NULL;
  tl_error err = {0};
  assert_int_equal(tl__prepare(&st, f->s, sql, &err), TL_OK);
  assert_int_equal(TL_BIND(st, &err, TL_INT(":known", 1)), TL_OK);
  assert_int_equal(TL_BIND(st, &err, TL_INT(":known", 1), TL_TEXT(":typo", "x")), TL_ERROR);
  assert_int_equal(err.code, TL_ERROR);
  if (!strstr(err.message, "':typo'"))
    fail_msg("message does not name the parameter: %s", err.message);
}

/* A failure while preparing keeps SQLite's cause (here out of memory) instead of a generic error. */
static void test_store__prepare_failure_keeps_its_status(void **state)
{
  fx *f = *state;
  tl_report *r = NULL;
  tl_error err = {0};
  sqlite3_int64 old = sqlite3_hard_heap_limit64(-1);
  sqlite3_hard_heap_limit64(sqlite3_memory_used() + 512);
  tl_status rc = tl_profile_list(&r, f->s, &err);
  sqlite3_hard_heap_limit64(old);
  tl_report_free(r);
  if (rc != TL_ENOMEM)
    fail_msg("expected out of memory, got %s: %s", tl_status_name(rc), err.message);
  /* and once memory is back, the same call works */
  tl_error_clear(&err);
  assert_int_equal(tl_profile_list(&r, f->s, &err), TL_OK);
  tl_report_free(r);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_store__init_creates_dir_0700_and_file_0600, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__missing_ledger_is_not_found_and_nothing_is_created, fx_setup_nostore,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__missing_parent_of_directory_is_reported, fx_setup_nostore,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__parent_that_is_a_file_is_reported, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__unwritable_directory_is_reported, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__world_readable_ledger_is_refused_untouched, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__ledger_of_another_user_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__symlinked_ledger_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__file_that_is_not_a_database_is_refused_untouched, fx_setup_nostore,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__foreign_sqlite_database_is_refused_untouched, fx_setup_nostore,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__truncated_ledger_is_refused_untouched, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__ledger_from_a_newer_version_is_refused_untouched, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__busy_write_lock_reports_busy, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__write_gate_survives_a_holder_that_died, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__unknown_parameter_name_is_a_hard_error, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__prepare_failure_keeps_its_status, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
