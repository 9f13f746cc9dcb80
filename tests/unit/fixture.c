/*
 * fixture.c - see fixture.h.
 */
#include "fixture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make(void **state, int open)
{
  fx *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  snprintf(f->dir, sizeof f->dir, "%s/tl-test-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(f->dir))
    return -1;
  snprintf(f->path, sizeof f->path, "%s/ledger.db", f->dir);
  if (open) {
    tl_error err = {0};
    if (tl_store_open(&f->s, f->path, TL_OPEN_CREATE, &err) != TL_OK) {
      fprintf(stderr, "fixture: %s\n", err.message);
      return -1;
    }
    tl_store_set_actor(f->s, "test", "unit");
  }
  *state = f;
  return 0;
}

int fx_setup(void **state)
{
  return make(state, 1);
}
int fx_setup_nostore(void **state)
{
  return make(state, 0);
}

int fx_teardown(void **state)
{
  fx *f = *state;
  tl_store_free(f->s);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "chmod -R u+rwx '%s' 2>/dev/null; rm -rf '%s'", f->dir, f->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "fixture: could not remove %s\n", f->dir);
  free(f);
  return 0;
}

int fx_sql(tl_store *s, const char *sql)
{
  return sqlite3_exec(s->db, sql, NULL, NULL, NULL);
}

int64_t fx_int(tl_store *s, const char *sql)
{
  sqlite3_stmt *st = NULL;
  int64_t v = -1;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

char *fx_slurp(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  char *buf = NULL;
  size_t cap = 0, n = 0, r;
  do {
    if (n + 65536 > cap) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc(buf, cap);
    }
    r = fread(buf + n, 1, cap - n, f);
    n += r;
  } while (r > 0);
  fclose(f);
  *len = n;
  return buf;
}

void fx_write(const char *path, const char *data, size_t len, int mode)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, (mode_t)mode);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, data, len), (ssize_t)len);
  fchmod(fd, (mode_t)mode);
  close(fd);
}

int64_t fx_credential(tl_store *s, const char *profile, const char *rt)
{
  tl_error err = {0};
  tl_status rc = tl_profile_add(s, profile, NULL, &err);
  assert_true(rc == TL_OK || rc == TL_EEXISTS);
  tl_credential_spec spec = {.provider = "nous", .profile = profile, .refresh_token = rt};
  int64_t id = 0;
  rc = tl_credential_add(&id, s, &spec, &err);
  if (rc != TL_OK)
    fail_msg("credential add: %s", err.message);
  return id;
}
