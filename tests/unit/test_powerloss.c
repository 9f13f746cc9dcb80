/*
 * test_powerloss.c - power loss at every durable point of a rotation, the way
 * SQLite tests its own durability: a VFS that records every write and, at a
 * chosen moment, keeps only what a sync covered.
 *
 * The VFS ("powerloss", the default while the tests run) passes every call
 * to the unix VFS, so SQLite and tokenledger run as they always do, and keeps
 * beside each file it sees an image of what would survive a power loss: the
 * file as it was when first opened (a file opened for the first time has been
 * synced: create_ledger fsyncs the ledger before it links it into place), plus
 * every write and truncate made before a sync of that file; writes after the
 * file's last sync are pending, and lost. The -shm (SQLite's WAL index) is not
 * durable by design: an image has none, and SQLite rebuilds it from the WAL.
 *
 * A rotation is a sequence of moments: before and after each sync, the moment
 * the refresh token leaves (the HTTP seam is called) and the moment the new
 * token is handed to the caller. Each run cuts the power at one moment: it
 * writes the images of that moment into a fresh directory (the machine after
 * the reboot) and lets the rotation finish. Then the ledger after the reboot
 * must
 *   - pass integrity_check and open as a tokenledger ledger;
 *   - once the RT has left: hold an attempt for it (the claim is durable
 *     before the RT leaves), so the RT is never `current` without one;
 *   - once the server rotated: hold the new RT, or an attempt for the old one
 *     that is `in_flight` or `unknown` (a rotation is never lost without an
 *     unknown attempt);
 *   - once the new token was handed out: hold the new RT as `current` and the
 *     attempt `rotated` (the record is durable before the token is handed out).
 * Every moment of two rotations is cut, for an answer that arrives and for
 * one that is lost, with the group-commit path (synchronous=NORMAL, the WAL
 * synced once SQLite's write lock is released) and without it (SQLite's own
 * synchronous=FULL). Taking away the sync after a commit makes it fail.
 */
#include "fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the VFS ---------------------------------------------------------------- */

typedef struct pending {
  int64_t off; /* a write at off, or a truncate to off when data is NULL */
  size_t len;
  unsigned char *data;
} pending;

/* What survives a power loss of one file, and what would not. */
typedef struct image {
  char path[512];
  unsigned char *durable;
  size_t size, cap;
  pending *pend;
  size_t npend, cappend;
  struct image *next;
} image;

typedef struct pl_file {
  sqlite3_file base;
  image *img; /* NULL: not tracked (the -shm, temporary files) */
  sqlite3_file *real;
} pl_file;

static sqlite3_vfs *unix_vfs;
static sqlite3_vfs pl_vfs;
static sqlite3_io_methods pl_methods;
static image *images;

/* The moment counter: the run cuts the power when it reaches cut_at. */
static int moment, cut_at;
static char cut_dir[300];
static int sent_before_cut, returned_before_cut, cut_done;

static void image_reserve(image *im, size_t n)
{
  if (n <= im->cap)
    return;
  size_t cap = im->cap ? im->cap : 65536;
  while (cap < n)
    cap *= 2;
  im->durable = realloc(im->durable, cap);
  assert_non_null(im->durable);
  memset(im->durable + im->cap, 0, cap - im->cap);
  im->cap = cap;
}

static image *image_for(const char *path)
{
  for (image *im = images; im; im = im->next)
    if (strcmp(im->path, path) == 0)
      return im;
  image *im = calloc(1, sizeof *im);
  assert_non_null(im);
  snprintf(im->path, sizeof im->path, "%s", path);
  /* first seen: what is on disk now is what a sync left there */
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    image_reserve(im, (size_t)st.st_size + 1);
    assert_int_equal(pread(fd, im->durable, (size_t)st.st_size, 0), st.st_size);
    im->size = (size_t)st.st_size;
    close(fd);
  }
  im->next = images;
  images = im;
  return im;
}

static void image_forget_pending(image *im)
{
  for (size_t i = 0; i < im->npend; i++)
    free(im->pend[i].data);
  im->npend = 0;
}

static void images_free(void)
{
  while (images) {
    image *im = images;
    images = im->next;
    image_forget_pending(im);
    free(im->pend);
    free(im->durable);
    free(im);
  }
}

/* A sync: every pending write and truncate of the file becomes durable, in order. */
static void image_sync(image *im)
{
  for (size_t i = 0; i < im->npend; i++) {
    pending *p = &im->pend[i];
    if (!p->data) {
      if ((size_t)p->off < im->size)
        memset(im->durable + p->off, 0, im->size - (size_t)p->off);
      im->size = (size_t)p->off;
      continue;
    }
    image_reserve(im, (size_t)p->off + p->len + 1);
    memcpy(im->durable + p->off, p->data, p->len);
    if ((size_t)p->off + p->len > im->size)
      im->size = (size_t)p->off + p->len;
  }
  image_forget_pending(im);
}

static void image_pend(image *im, int64_t off, const void *data, size_t len)
{
  if (im->npend == im->cappend) {
    im->cappend = im->cappend ? im->cappend * 2 : 64;
    im->pend = realloc(im->pend, im->cappend * sizeof *im->pend);
    assert_non_null(im->pend);
  }
  pending *p = &im->pend[im->npend++];
  p->off = off;
  p->len = len;
  p->data = NULL;
  if (data) {
    p->data = malloc(len ? len : 1);
    assert_non_null(p->data);
    memcpy(p->data, data, len);
  }
}

/* The power goes: the durable images of the ledger's files, as the machine finds them after the reboot. */
static void cut_power(void)
{
  cut_done = 1;
  assert_int_equal(mkdir(cut_dir, 0700), 0);
  for (image *im = images; im; im = im->next) {
    const char *base = strrchr(im->path, '/');
    base = base ? base + 1 : im->path;
    if (strncmp(base, "ledger.db", 9) != 0 || (base[9] && strcmp(base + 9, "-wal") != 0))
      continue; /* the ledger and its WAL; never the -shm */
    char out[1024];
    snprintf(out, sizeof out, "%s/%s", cut_dir, base);
    int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, im->durable, im->size), (ssize_t)im->size);
    close(fd);
  }
}

/* One moment of the rotation passes; the power is cut at the chosen one. */
static void tick(void)
{
  if (++moment == cut_at)
    cut_power();
}

static int pl_close(sqlite3_file *f)
{
  pl_file *p = (pl_file *)f;
  int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
  return rc; /* pending writes stay pending: closing a file does not sync it */
}

static int pl_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xRead(p->real, buf, n, off);
}

static int pl_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
  pl_file *p = (pl_file *)f;
  int rc = p->real->pMethods->xWrite(p->real, buf, n, off);
  if (rc == SQLITE_OK && p->img)
    image_pend(p->img, off, buf, (size_t)n);
  return rc;
}

static int pl_truncate(sqlite3_file *f, sqlite3_int64 size)
{
  pl_file *p = (pl_file *)f;
  int rc = p->real->pMethods->xTruncate(p->real, size);
  if (rc == SQLITE_OK && p->img)
    image_pend(p->img, size, NULL, 0);
  return rc;
}

static int pl_sync(sqlite3_file *f, int flags)
{
  pl_file *p = (pl_file *)f;
  if (p->img)
    tick(); /* just before the sync: its writes are lost */
  int rc = p->real->pMethods->xSync(p->real, flags);
  if (rc == SQLITE_OK && p->img) {
    image_sync(p->img);
    tick(); /* just after it */
  }
  return rc;
}

static int pl_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xFileSize(p->real, size);
}

static int pl_lock(sqlite3_file *f, int level)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xLock(p->real, level);
}

static int pl_unlock(sqlite3_file *f, int level)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xUnlock(p->real, level);
}

static int pl_check_reserved(sqlite3_file *f, int *out)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int pl_file_control(sqlite3_file *f, int op, void *arg)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int pl_sector_size(sqlite3_file *f)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xSectorSize(p->real);
}

static int pl_device_characteristics(sqlite3_file *f)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int pl_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xShmMap(p->real, region, size, extend, out);
}

static int pl_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void pl_shm_barrier(sqlite3_file *f)
{
  pl_file *p = (pl_file *)f;
  p->real->pMethods->xShmBarrier(p->real);
}

static int pl_shm_unmap(sqlite3_file *f, int del)
{
  pl_file *p = (pl_file *)f;
  return p->real->pMethods->xShmUnmap(p->real, del);
}

static int pl_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags, int *out_flags)
{
  (void)vfs;
  pl_file *p = (pl_file *)f;
  memset(p, 0, sizeof *p);
  p->real = (sqlite3_file *)(p + 1);
  /* the durable image of a file is read before SQLite may create or change it */
  if (name && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)))
    p->img = image_for(name);
  int rc = unix_vfs->xOpen(unix_vfs, name, p->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    p->img = NULL;
    return rc;
  }
  f->pMethods = &pl_methods;
  return SQLITE_OK;
}

static int pl_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
  (void)vfs;
  int rc = unix_vfs->xDelete(unix_vfs, name, sync_dir);
  for (image *im = images; rc == SQLITE_OK && im; im = im->next)
    if (strcmp(im->path, name) == 0) { /* a deleted file is gone, whatever it held */
      image_forget_pending(im);
      im->size = 0;
    }
  return rc;
}

static int pl_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
  (void)vfs;
  return unix_vfs->xAccess(unix_vfs, name, flags, out);
}

static int pl_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
  (void)vfs;
  return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}

static void pl_register(void)
{
  unix_vfs = sqlite3_vfs_find("unix");
  assert_non_null(unix_vfs);
  pl_vfs = *unix_vfs;
  pl_vfs.zName = "powerloss";
  pl_vfs.szOsFile = (int)sizeof(pl_file) + unix_vfs->szOsFile;
  pl_vfs.xOpen = pl_open;
  pl_vfs.xDelete = pl_delete;
  pl_vfs.xAccess = pl_access;
  pl_vfs.xFullPathname = pl_full_pathname;
  pl_vfs.pAppData = NULL;
  pl_methods = (sqlite3_io_methods){.iVersion = 2,
                                    .xClose = pl_close,
                                    .xRead = pl_read,
                                    .xWrite = pl_write,
                                    .xTruncate = pl_truncate,
                                    .xSync = pl_sync,
                                    .xFileSize = pl_file_size,
                                    .xLock = pl_lock,
                                    .xUnlock = pl_unlock,
                                    .xCheckReservedLock = pl_check_reserved,
                                    .xFileControl = pl_file_control,
                                    .xSectorSize = pl_sector_size,
                                    .xDeviceCharacteristics = pl_device_characteristics,
                                    .xShmMap = pl_shm_map,
                                    .xShmLock = pl_shm_lock,
                                    .xShmBarrier = pl_shm_barrier,
                                    .xShmUnmap = pl_shm_unmap};
  assert_int_equal(sqlite3_vfs_register(&pl_vfs, 1), SQLITE_OK);
}

/* ---- the rotation ---------------------------------------------------------------- */

typedef struct server {
  int lose_answer; /* the server rotates, but its answer never arrives */
  int calls;
  char issued[64]; /* the RT it issued */
} server;

static int portal(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  server *sv = ud;
  (void)req;
  sent_before_cut = sent_before_cut || !cut_done;
  tick(); /* the RT leaves this process: a cut now finds it gone */
  snprintf(sv->issued, sizeof sv->issued, "rt-issued-%d", ++sv->calls);
  if (sv->lose_answer) {
    resp->failure = TL_HTTP_LOST;
    snprintf(resp->detail, sizeof resp->detail, "the connection broke after the request was sent");
    return 0;
  }
  char body[256];
  snprintf(body, sizeof body, "{\"access_token\":\"at-%s\",\"refresh_token\":\"%s\",\"expires_in\":3600}", sv->issued,
           sv->issued);
  resp->failure = TL_HTTP_DONE;
  resp->status = 200;
  resp->body = strdup(body);
  resp->body_len = strlen(body);
  resp->retry_after = -1;
  return 0;
}

static void copy_file(const char *from, const char *to)
{
  size_t n = 0;
  char *data = fx_slurp(from, &n);
  assert_non_null(data);
  fx_write(to, data, n, 0600);
  free(data);
}

static int64_t one(sqlite3 *db, const char *sql, const char *text)
{
  sqlite3_stmt *st = NULL;
  int64_t v = -1;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  if (text)
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* The ledger after the reboot holds the promises of the moment the power went. */
static void check_after_reboot(const server *sv, const char *what)
{
  char path[400], fp_old[65], fp_new[65];
  snprintf(path, sizeof path, "%s/ledger.db", cut_dir);
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, path, 0, &err) != TL_OK)
    fail_msg("%s: the ledger does not open after the reboot: %s", what, err.message);
  sqlite3 *db = s->db;
  char *ok = NULL;
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  ok = tl__col_dup(st, 0);
  sqlite3_finalize(st);
  if (strcmp(ok, "ok") != 0)
    fail_msg("%s: integrity_check: %s", what, ok);
  free(ok);
  tl_fingerprint(fp_old, "rt-gen-0", 8);
  int64_t old_rt = one(db, "SELECT id FROM refresh_token WHERE fingerprint = ?1", fp_old);
  assert_true(old_rt > 0);
  char sql[300];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM refresh_attempt WHERE rt_id = %lld", (long long)old_rt);
  int64_t attempts = one(db, sql, NULL);
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM refresh_attempt WHERE rt_id = %lld AND outcome IN ('in_flight', 'unknown')",
           (long long)old_rt);
  int64_t open_attempts = one(db, sql, NULL);
  int64_t old_current = one(db, "SELECT state = 'current' FROM refresh_token WHERE fingerprint = ?1", fp_old);
  int64_t new_rt = 0, new_current = 0;
  if (sv->issued[0]) {
    tl_fingerprint(fp_new, sv->issued, strlen(sv->issued));
    new_rt = one(db, "SELECT count(*) FROM refresh_token WHERE fingerprint = ?1", fp_new);
    new_current = one(db, "SELECT count(*) FROM refresh_token WHERE fingerprint = ?1 AND state = 'current'", fp_new);
  }
  if (sent_before_cut && attempts < 1)
    fail_msg("%s: the RT had left, but no attempt for it survived (claim not durable)", what);
  if (sent_before_cut && old_current == 1 && attempts < 1)
    fail_msg("%s: the presented RT is current again without an attempt on record", what);
  if (sent_before_cut && !new_rt && open_attempts < 1)
    fail_msg("%s: the server rotated, and the ledger has neither the new RT nor an unknown attempt", what);
  if (returned_before_cut && !sv->lose_answer && new_current != 1)
    fail_msg("%s: the new token was handed out, but its record did not survive", what);
  tl_store_free(s);
}

static void make_base(const char *dir)
{
  char path[400];
  snprintf(path, sizeof path, "%s/ledger.db", dir);
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, TL_OPEN_CREATE, &err), TL_OK);
  assert_int_equal(tl_profile_add(s, "p", NULL, &err), TL_OK);
  tl_credential_spec spec = {.provider = "nous", .profile = "p", .refresh_token = "rt-gen-0"};
  assert_int_equal(tl_credential_add(NULL, s, &spec, &err), TL_OK);
  tl_store_free(s); /* the last connection: checkpointed, the WAL gone */
}

/*
 * Runs one rotation on a copy of base, cutting the power at moment cut (0: never). Returns the number of
 * moments the rotation passed through.
 */
static int rotate(const char *base, const char *work, int cut, int group_commit, int lose_answer)
{
  char from[300], path[300];
  snprintf(from, sizeof from, "%s/ledger.db", base);
  assert_int_equal(mkdir(work, 0700), 0);
  snprintf(path, sizeof path, "%s/ledger.db", work);
  copy_file(from, path);
  snprintf(cut_dir, sizeof cut_dir, "%s-cut", work);
  moment = cut_at = 0; /* the open is not part of the rotation */
  sent_before_cut = returned_before_cut = cut_done = 0;
  server sv = {.lose_answer = lose_answer};
  tl_store *s = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&s, path, 0, &err), TL_OK);
  if (!group_commit) {
    /* SQLite's own durability: FULL syncs the WAL inside COMMIT, under the write lock; no sync after it */
    sqlite3_wal_hook(s->db, NULL, NULL);
    assert_int_equal(fx_sql(s, "PRAGMA synchronous=FULL"), SQLITE_OK);
  }
  tl_store_set_transport(s, portal, &sv);
  moment = 0;
  cut_at = cut;
  tl_token *t = NULL;
  tl_status rc = tl_refresh(&t, s, 1, TL_REFRESH_FORCE, &err);
  if (lose_answer)
    assert_int_equal(rc, TL_EUNKNOWN);
  else
    assert_int_equal(rc, TL_OK);
  returned_before_cut = t && !cut_done;
  tick(); /* the new token is in the caller's hands: a cut now finds it handed out */
  tl_token_free(t);
  int moments = moment;
  tl_store_free(s);
  if (cut)
    check_after_reboot(&sv, work);
  images_free();
  return moments;
}

static void cut_everywhere(fx *f, int group_commit, int lose_answer)
{
  char base[300], work[300];
  snprintf(base, sizeof base, "%s/base", f->dir);
  assert_int_equal(mkdir(base, 0700), 0);
  make_base(base);
  images_free();
  snprintf(work, sizeof work, "%s/count", f->dir);
  int moments = rotate(base, work, 0, group_commit, lose_answer);
  /* the RT leaves; the token is handed out (then a durable rotation adds before and after each of its syncs) */
  assert_true(moments >= 2);
  for (int cut = 1; cut <= moments; cut++) {
    snprintf(work, sizeof work, "%s/cut%d", f->dir, cut);
    rotate(base, work, cut, group_commit, lose_answer);
  }
}

static void test_powerloss__rotation_with_group_commit(void **state)
{
  cut_everywhere(*state, 1, 0);
}

static void test_powerloss__rotation_with_sqlite_full_sync(void **state)
{
  cut_everywhere(*state, 0, 0);
}

static void test_powerloss__lost_answer_with_group_commit(void **state)
{
  cut_everywhere(*state, 1, 1);
}

static void test_powerloss__lost_answer_with_sqlite_full_sync(void **state)
{
  cut_everywhere(*state, 0, 1);
}

int main(void)
{
  pl_register();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_powerloss__rotation_with_group_commit, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_powerloss__rotation_with_sqlite_full_sync, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_powerloss__lost_answer_with_group_commit, fx_setup_nostore, fx_teardown),
      cmocka_unit_test_setup_teardown(test_powerloss__lost_answer_with_sqlite_full_sync, fx_setup_nostore, fx_teardown),
  };
  return cmocka_run_group_tests_name("powerloss", tests, NULL, NULL);
}
