/*
 * test_store.c - opening a ledger: modes, refusals, and "a refused file is
 * left exactly as it was".
 */
#include "fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
  assert_non_null(strstr(err.message, "no ledger here"));
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

/*
 * The old write gate: a robust mutex in <db>-wlock. A copy of that file taken while it was held (a backup or a
 * snapshot of ~/.hermes during a write) blocked every later write. Here a file with exactly that content sits
 * beside the ledger, and a copy of the whole directory taken while another connection held the write lock is
 * opened: writes go through at once, because only SQLite's kernel-released locks order writers now.
 */
struct old_gate {
  _Atomic unsigned magic;
  unsigned size;
  pthread_mutex_t mutex;
};

static void test_store__copied_lock_state_never_blocks_writes(void **state)
{
  fx *f = *state;
  char gate[400], copy_dir[400], copy[420], cmd[2000];
  snprintf(gate, sizeof gate, "%s-wlock", f->path);
  /* a held robust mutex, copied byte for byte while its holder (a live child) has it */
  int ready[2], done[2];
  assert_int_equal(pipe(ready), 0);
  assert_int_equal(pipe(done), 0);
  pid_t child = fork();
  if (child == 0) {
    struct old_gate *g = mmap(NULL, sizeof *g, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&g->mutex, &a);
    g->size = sizeof *g;
    g->magic = 0x544C5747u;
    pthread_mutex_lock(&g->mutex);
    int fd = open(gate, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, g, sizeof *g) != (ssize_t)sizeof *g)
      _exit(1);
    close(fd);
    char x;
    if (write(ready[1], "k", 1) != 1 || read(done[0], &x, 1) < 0)
      _exit(1);
    _exit(0);
  }
  char x;
  assert_int_equal(read(ready[0], &x, 1), 1);
  /* meanwhile another connection holds SQLite's write lock, and the whole directory is copied */
  tl_store *holder = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&holder, f->path, 0, &err), TL_OK);
  assert_int_equal(fx_sql(holder, "BEGIN IMMEDIATE; INSERT INTO profile (name, created_at) VALUES ('held', 0)"),
                   SQLITE_OK);
  snprintf(copy_dir, sizeof copy_dir, "%s/copy", f->dir);
  snprintf(cmd, sizeof cmd, "mkdir -m 700 '%s' && cp -p '%s' '%s'-* '%s'/", copy_dir, f->path, f->path, copy_dir);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(write(done[1], "g", 1), 1);
  waitpid(child, NULL, 0);
  tl_store_set_busy_timeout(f->s, 3000);
  assert_int_equal(tl_profile_add(f->s, "after-copy", NULL, &err), TL_EBUSY); /* the live holder does block */
  fx_sql(holder, "ROLLBACK");
  tl_store_free(holder);
  tl_error_clear(&err);
  assert_int_equal(tl_profile_add(f->s, "after", NULL, &err), TL_OK); /* ... until it lets go */
  /* the copy: its -wlock and -shm hold a lock state with no living holder; nothing waits for it */
  snprintf(copy, sizeof copy, "%s/ledger.db", copy_dir);
  tl_store *c = NULL;
  assert_int_equal(tl_store_open(&c, copy, 0, &err), TL_OK);
  tl_store_set_busy_timeout(c, 3000);
  if (tl_profile_add(c, "in-the-copy", NULL, &err) != TL_OK)
    fail_msg("a write to the copy was blocked: %s", err.message);
  assert_int_equal(fx_int(c, "SELECT count(*) FROM profile WHERE name = 'held'"), 0); /* uncommitted: not copied */
  tl_store_free(c);
  close(ready[0]);
  close(ready[1]);
  close(done[0]);
  close(done[1]);
}

/* The ledger's directory: ours (or root's) and writable by nobody else, or the ledger is refused. */
static void test_store__directory_others_can_write_is_refused(void **state)
{
  fx *f = *state;
  tl_store_free(f->s);
  f->s = NULL;
  static const mode_t modes[] = {0777, 01777, 0775, 0757};
  for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
    assert_int_equal(chmod(f->dir, modes[i]), 0);
    /* A sticky directory is shared by design (/tmp): the advice is to move, never to chmod it. */
    expect_refused_untouched(f, f->path, 0, TL_EINSECURE, modes[i] & 01000 ? "a directory of your own" : "chmod go-w");
    expect_refused_untouched(f, f->path, TL_OPEN_CREATE, TL_EINSECURE,
                             modes[i] & 01000 ? "shared with others" : "others can create");
  }
  /* doctor's repair leaves a shared directory as it is */
  tl_error shared_err = {0};
  assert_int_equal(chmod(f->dir, 01777), 0);
  assert_int_equal(tl_store_fix_permissions(f->path, &shared_err), TL_EINSECURE);
  struct stat shared_st;
  assert_int_equal(stat(f->dir, &shared_st), 0);
  assert_int_equal(shared_st.st_mode & 07777, 01777);
  assert_int_equal(chmod(f->dir, 0757), 0);
  /* init in such a directory creates nothing */
  char path[400];
  snprintf(path, sizeof path, "%s/new.db", f->dir);
  expect_refused_untouched(f, path, TL_OPEN_CREATE, TL_EINSECURE, "mode 0757");
  /* doctor's repair makes the directory safe again */
  tl_error err = {0};
  assert_int_equal(tl_store_fix_permissions(f->path, &err), TL_OK);
  struct stat st;
  assert_int_equal(stat(f->dir, &st), 0);
  assert_int_equal(st.st_mode & 022, 0);
  assert_int_equal(tl_store_open(&f->s, f->path, 0, &err), TL_OK);
}

static void test_store__directory_of_another_user_is_refused(void **state)
{
  fx *f = *state;
  if (geteuid() != 0)
    skip(); /* only root can give a directory away */
  tl_store_free(f->s);
  f->s = NULL;
  assert_int_equal(chown(f->dir, 65534, 65534), 0);
  expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "owned by uid 65534");
  expect_refused_untouched(f, f->path, TL_OPEN_CREATE, TL_EINSECURE, "another user could replace");
  assert_int_equal(chown(f->dir, 0, 0), 0);
}

/* -wal, -shm and -journal pass the ledger's own checks before SQLite opens them. */
static void test_store__sqlite_files_beside_the_ledger_are_checked(void **state)
{
  fx *f = *state;
  tl_store_free(f->s);
  f->s = NULL;
  static const char *const sides[] = {"-wal", "-shm", "-journal"};
  char side[420], other[420];
  snprintf(other, sizeof other, "%s/elsewhere", f->dir);
  fx_write(other, "x", 1, 0600);
  for (size_t i = 0; i < 3; i++) {
    snprintf(side, sizeof side, "%s%s", f->path, sides[i]);
    unlink(side);
    assert_int_equal(symlink(other, side), 0);
    expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "symbolic link");
    unlink(side);
    assert_int_equal(mkfifo(side, 0600), 0);
    expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "not a regular file");
    unlink(side);
    fx_write(side, "", 0, 0644);
    expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "mode 0644");
    if (geteuid() == 0) {
      assert_int_equal(chmod(side, 0600), 0);
      assert_int_equal(chown(side, 65534, 65534), 0); /* another user planted it */
      expect_refused_untouched(f, f->path, 0, TL_EINSECURE, "owned by uid 65534");
    }
    unlink(side);
  }
  /* a sidecar with a loose mode is repaired by doctor --fix */
  snprintf(side, sizeof side, "%s-wal", f->path);
  fx_write(side, "", 0, 0640);
  tl_error err = {0};
  assert_int_equal(tl_store_fix_permissions(f->path, &err), TL_OK);
  assert_int_equal(tl_store_open(&f->s, f->path, 0, &err), TL_OK);
}

/* A symlink anywhere above the ledger works (a symlinked ~/.hermes, /home -> /var/home); only the file's own name
 * must not be one. */
static void test_store__symlinks_above_the_ledger_are_fine(void **state)
{
  fx *f = *state;
  char real[400], link[400], path[480];
  snprintf(real, sizeof real, "%s/var-home", f->dir);
  snprintf(link, sizeof link, "%s/home", f->dir);
  assert_int_equal(mkdir(real, 0700), 0);
  assert_int_equal(symlink("var-home", link), 0);
  snprintf(path, sizeof path, "%s/.hermes/tokenledger.db", link);
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, path, TL_OPEN_CREATE, &err) != TL_OK)
    fail_msg("init through a symlinked directory: %s", err.message);
  assert_int_equal(tl_profile_add(s, "p", NULL, &err), TL_OK);
  tl_store_free(s);
  snprintf(path, sizeof path, "%s/.hermes/tokenledger.db", real);
  struct stat st;
  assert_int_equal(lstat(path, &st), 0); /* the ledger lives in the real directory */
  assert_true(S_ISREG(st.st_mode));
  snprintf(path, sizeof path, "%s/.hermes/tokenledger.db", link);
  assert_int_equal(tl_store_open(&s, path, 0, &err), TL_OK);
  assert_int_equal(fx_int(s, "SELECT count(*) FROM profile"), 1);
  tl_store_free(s);
}

/* A failed init leaves nothing behind: no directory, no temporary file. */
static void test_store__failed_init_leaves_no_directory(void **state)
{
  fx *f = *state;
  char path[800], dir[400];
  snprintf(dir, sizeof dir, "%s/fresh", f->dir);
  memset(path, 0, sizeof path);
  snprintf(path, sizeof path, "%s/", dir);
  memset(path + strlen(path), 'n', 300); /* longer than any file name may be */
  char *before = listing(f->dir);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_not_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_OK);
  assert_null(s);
  char *after = listing(f->dir);
  assert_string_equal(before, after);
  free(before);
  free(after);
}

/*
 * Concurrent first inits: rounds of three real processes on a fresh path (two init and write, one opens
 * without creating and writes). The ledger is never lost, no write that succeeded is missing, and every
 * failure is one of the expected, specific ones: busy, or "no ledger yet" for the one that does not create.
 */
static void test_store__concurrent_first_inits_never_lose_the_ledger(void **state)
{
  fx *f = *state;
  int64_t until = tl__now_ms() + 15000;
  int rounds = 0;
  for (; rounds < 150 && tl__now_ms() < until; rounds++) {
    char path[400];
    snprintf(path, sizeof path, "%s/race%d/ledger.db", f->dir, rounds);
    int go[2], res[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(res), 0);
    for (int k = 0; k < 3; k++) {
      if (fork() == 0) {
        char x;
        close(go[1]);
        if (read(go[0], &x, 1) < 0)
          _exit(90);
        tl_store *s = NULL;
        tl_error e = {0};
        char name[16];
        snprintf(name, sizeof name, "p%d", k);
        tl_status rc = tl_store_open(&s, path, k < 2 ? TL_OPEN_CREATE : 0, &e);
        if (rc == TL_OK)
          rc = tl_profile_add(s, name, NULL, &e);
        tl_store_free(s);
        char out = (char)(rc == TL_OK ? 'A' + k : rc == TL_EBUSY ? 'b' : rc == TL_ENOTFOUND && k == 2 ? 'n' : '!');
        if (out == '!')
          fprintf(stderr, "round %d process %d: %s: %s\n", rounds, k, tl_status_name(rc), e.message);
        if (write(res[1], &out, 1) != 1)
          _exit(91);
        _exit(0);
      }
    }
    close(go[0]);
    close(go[1]); /* all three start now */
    close(res[1]);
    char got[3] = {0};
    for (int k = 0; k < 3; k++)
      assert_int_equal(read(res[0], &got[k], 1), 1);
    close(res[0]);
    while (wait(NULL) > 0)
      ;
    tl_store *s = NULL;
    tl_error err = {0};
    if (tl_store_open(&s, path, 0, &err) != TL_OK)
      fail_msg("round %d: the ledger is gone: %s", rounds, err.message);
    for (int k = 0; k < 3; k++) {
      assert_true(got[k] != '!');
      if (got[k] >= 'A' && got[k] <= 'C') {
        char sql[80];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM profile WHERE name = 'p%d'", got[k] - 'A');
        if (fx_int(s, sql) != 1)
          fail_msg("round %d: process %d's write was lost", rounds, got[k] - 'A');
      }
    }
    tl_store_free(s);
  }
  assert_true(rounds >= 20);
}

/*
 * A schema object the migrations did not create is refused before any statement runs: here a trigger that
 * copies every new RT into a visible column, a view rewritten to show secrets, a dropped guard, a shadow table.
 */
static void test_store__schema_changed_by_someone_else_is_refused(void **state)
{
  fx *f = *state;
  static const struct {
    const char *sql, *needle;
  } attacks[] = {
      {"CREATE TRIGGER steal AFTER INSERT ON refresh_token BEGIN UPDATE credential SET label = NEW.secret WHERE id = "
       "NEW.credential_id; END",
       "trigger 'steal' on refresh_token was not created by tokenledger"},
      {"DROP VIEW v_lineage; CREATE VIEW v_lineage AS SELECT secret FROM refresh_token",
       "view 'v_lineage' is not what tokenledger created"},
      {"DROP TRIGGER refresh_token_no_delete", "trigger 'refresh_token_no_delete' is missing"},
      {"CREATE TABLE shadow (rt TEXT)", "table 'shadow' was not created by tokenledger"},
      {"CREATE INDEX peek ON refresh_token(secret)", "index 'peek' on refresh_token"},
  };
  tl_store_free(f->s);
  f->s = NULL;
  char saved[420], cmd[1600];
  snprintf(saved, sizeof saved, "%s/pristine.db", f->dir);
  snprintf(cmd, sizeof cmd, "cp -p '%s' '%s'", f->path, saved);
  assert_int_equal(system(cmd), 0);
  for (size_t i = 0; i < sizeof attacks / sizeof *attacks; i++) {
    snprintf(cmd, sizeof cmd, "cp -p '%s' '%s' && rm -f '%s-wal' '%s-shm'", saved, f->path, f->path, f->path);
    assert_int_equal(system(cmd), 0);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    if (sqlite3_exec(db, attacks[i].sql, NULL, NULL, NULL) != SQLITE_OK)
      fail_msg("attack %zu: %s", i, sqlite3_errmsg(db));
    sqlite3_close(db);
    expect_refused_untouched(f, f->path, 0, TL_EINSECURE, attacks[i].needle);
  }
  /* ANALYZE's own statistics table is SQLite's, not someone else's */
  snprintf(cmd, sizeof cmd, "cp -p '%s' '%s'", saved, f->path);
  assert_int_equal(system(cmd), 0);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "ANALYZE", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  tl_error err = {0};
  assert_int_equal(tl_store_open(&f->s, f->path, 0, &err), TL_OK);
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

/*
 * Whether another process sees this one holding a lock on byte `at` (len bytes) of file: asked by a child
 * with F_GETLK, as any other process would (F_GETLK never reports the asker's own locks).
 */
static int held_by_us(const char *file, off_t at, off_t len)
{
  pid_t me = getpid(), pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = len};
    _exit(fd >= 0 && fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK && fl.l_pid == me ? 1 : 0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) && WEXITSTATUS(status) == 1;
}

/*
 * Two stores on one ledger in one process: while the first holds a transaction, a second store opens,
 * runs doctor (its write-lock check, its permission repair) and closes. Closing any descriptor of a file
 * releases every POSIX lock the process holds on it (fcntl(2)), SQLite's included; so nothing in the
 * library may close a descriptor of the ledger or of its -shm: the first store's locks stay held, as
 * another process sees them.
 */
static void test_store__a_second_store_in_the_process_leaves_the_first_ones_locks(void **state)
{
  fx *f = *state;
  char shm[400];
  snprintf(shm, sizeof shm, "%s-shm", f->path);
  tl_error err = {0};
  assert_int_equal(tl_profile_add(f->s, "p", NULL, &err), TL_OK);
  /* a read transaction: the database file's shared lock (at 1 GiB + 2) and the -shm's (dead-man switch, 128) */
  assert_int_equal(fx_sql(f->s, "BEGIN; SELECT count(*) FROM profile;"), SQLITE_OK);
  assert_true(held_by_us(f->path, 0x40000002, 510));
  assert_true(held_by_us(shm, 128, 1));
  tl_store *other = NULL;
  assert_int_equal(tl_store_open(&other, f->path, 0, &err), TL_OK);
  assert_int_equal(tl_store_fix_permissions(f->path, &err), TL_OK);
  tl_store_free(other);
  assert_true(held_by_us(f->path, 0x40000002, 510));
  assert_true(held_by_us(shm, 128, 1));
  assert_int_equal(fx_sql(f->s, "COMMIT"), SQLITE_OK);
  /* a write transaction: SQLite's WAL write lock (byte 120 of the -shm), which doctor finds held for 2 s */
  assert_int_equal(tl__tx_begin(f->s, "test", &err), TL_OK);
  assert_true(held_by_us(shm, 120, 1));
  assert_int_equal(tl_store_open(&other, f->path, 0, &err), TL_OK);
  tl_report *r = NULL;
  int problems = 0;
  assert_int_equal(tl_doctor(&r, &problems, other, 0, &err), TL_OK);
  assert_true(problems > 0); /* the write lock is held */
  tl_report_free(r);
  tl_store_free(other);
  assert_true(held_by_us(shm, 120, 1));
  assert_true(held_by_us(shm, 128, 1));
  assert_int_equal(tl__tx_commit(f->s, &err), TL_OK);
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
      cmocka_unit_test_setup_teardown(test_store__copied_lock_state_never_blocks_writes, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__directory_others_can_write_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__directory_of_another_user_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__sqlite_files_beside_the_ledger_are_checked, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__symlinks_above_the_ledger_are_fine, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__failed_init_leaves_no_directory, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__concurrent_first_inits_never_lose_the_ledger, fx_setup_nostore,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__schema_changed_by_someone_else_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__unknown_parameter_name_is_a_hard_error, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__prepare_failure_keeps_its_status, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_store__a_second_store_in_the_process_leaves_the_first_ones_locks, fx_setup,
                                      fx_teardown),
  };
  return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
