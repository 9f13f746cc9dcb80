/*
 * db.c - the one thin wrapper over SQLite: opening a ledger safely, cached
 * statements with named parameters, and write transactions.
 *
 * Invariants kept here:
 *   - A new database directory is created 0700 and a new file 0600 with
 *     O_EXCL|O_NOFOLLOW; an existing file must be a regular file of ours with
 *     no group/other access, on a local filesystem, or it is refused before
 *     SQLite touches it.
 *   - Nothing is written to a file before it is known to be a tokenledger
 *     database no newer than this binary (WAL mode and migrations come after
 *     the read-only checks), so a refused file is left exactly as it was.
 *   - Every connection runs WAL, foreign_keys=ON, synchronous=FULL,
 *     secure_delete=ON, and a busy timeout that is the lock deadline.
 *   - Values are bound by name, never formatted into SQL text; each statement
 *     is prepared once per connection.
 *   - Write transactions start with BEGIN IMMEDIATE through tl__tx_begin, which
 *     remembers where they were opened, so a write lock is never taken lazily.
 *   - Writers queue on a write gate before BEGIN IMMEDIATE: a process-shared,
 *     robust mutex in <db>-wlock (0600). Waiters sleep in the kernel and wake
 *     when it is released, instead of polling SQLite's lock; a holder killed
 *     with SIGKILL passes it on (EOWNERDEAD). SQLite's locking stays the
 *     correctness mechanism; the gate only orders writers, and without it
 *     (another filesystem, another binary layout) everything still works.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define TL_APPLICATION_ID 1414284359

char *tl__strdup(const char *s)
{
  return s ? strdup(s) : NULL;
}

char *tl__col_dup(sqlite3_stmt *st, int col)
{
  const unsigned char *t = sqlite3_column_text(st, col);
  return t ? strdup((const char *)t) : NULL;
}

tl_status tl__prepare(sqlite3_stmt **out, tl_store *s, const char *sql, tl_error *err)
{
  *out = NULL;
  for (size_t i = 0; i < s->ncache; i++) {
    if (s->cache[i].sql == sql) {
      sqlite3_stmt *st = s->cache[i].st;
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      *out = st;
      return TL_OK;
    }
  }
  if (s->ncache >= TL_STMT_CACHE) /* a programming error: raise TL_STMT_CACHE */
    return tl__err(err, TL_ERROR, 0, "statement cache full (%d statements)", TL_STMT_CACHE);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK)
    return tl__err_db(err, s, "prepare"); /* busy, out of memory, I/O: the status says which */
  s->cache[s->ncache].sql = sql;
  s->cache[s->ncache].st = st;
  s->ncache++;
  *out = st;
  return TL_OK;
}

/* Legacy form for the callers not yet converted (hermes.c): the status is lost. */
sqlite3_stmt *tl__stmt(tl_store *s, const char *sql, tl_error *err)
{
  sqlite3_stmt *st = NULL;
  return tl__prepare(&st, s, sql, err) == TL_OK ? st : NULL;
}

tl_status tl__bind(sqlite3_stmt *st, tl_error *err, size_t n, const tl__arg *args)
{
  for (size_t k = 0; k < n; k++) {
    const tl__arg *a = &args[k];
    int i = sqlite3_bind_parameter_index(st, a->name);
    if (!i) /* a typo in our own SQL or C: never silently bind nothing */
      return tl__err(err, TL_ERROR, 0, "internal error: statement has no parameter '%s' (%.60s...)", a->name,
                     sqlite3_sql(st));
    int rc;
    switch (a->kind) {
    case TL__ARG_INT: rc = sqlite3_bind_int64(st, i, a->i); break;
    case TL__ARG_OPTINT: rc = a->i ? sqlite3_bind_int64(st, i, a->i) : sqlite3_bind_null(st, i); break;
    case TL__ARG_TEXT:
      rc = a->t ? sqlite3_bind_text(st, i, a->t, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
      break;
    case TL__ARG_SECRET: /* no copy: the caller keeps the secret alive until the step, then burns it */
      rc = a->t ? sqlite3_bind_text(st, i, a->t, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
      break;
    default: rc = sqlite3_bind_null(st, i); break;
    }
    if (rc != SQLITE_OK)
      return tl__err(err, rc == SQLITE_NOMEM ? TL_ENOMEM : TL_ERROR, rc, "bind %s: %s", a->name, sqlite3_errstr(rc));
  }
  return TL_OK;
}

static int param(sqlite3_stmt *st, const char *name)
{
  int i = sqlite3_bind_parameter_index(st, name);
  return i;
}

int tl__bind_text(sqlite3_stmt *st, const char *name, const char *v)
{
  int i = param(st, name);
  if (!i)
    return SQLITE_RANGE;
  return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* Binds without a copy: the caller keeps the secret alive until the step and burns it. */
int tl__bind_secret(sqlite3_stmt *st, const char *name, const char *v)
{
  int i = param(st, name);
  if (!i)
    return SQLITE_RANGE;
  return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

int tl__bind_int(sqlite3_stmt *st, const char *name, int64_t v)
{
  int i = param(st, name);
  return i ? sqlite3_bind_int64(st, i, v) : SQLITE_RANGE;
}

tl_status tl__step_row(int *found, tl_store *s, sqlite3_stmt *st, const char *what, tl_error *err)
{
  int rc = sqlite3_step(st);
  *found = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    return TL_OK;
  tl_status code = tl__err_db(err, s, what);
  sqlite3_reset(st);
  return code;
}

tl_status tl__step_done(tl_store *s, sqlite3_stmt *st, const char *what, tl_error *err)
{
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
    sqlite3_clear_bindings(st);
    return TL_OK;
  }
  sqlite3_clear_bindings(st);
  return tl__err_db(err, s, what);
}

tl_status tl__exec(tl_store *s, const char *sql, tl_error *err)
{
  if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return tl__err_db(err, s, "exec");
  return TL_OK;
}

/* ---- the write gate ------------------------------------------------------- */

#define TL_GATE_MAGIC 0x544C5747u /* 'TLWG' */

struct tl__wgate {
  _Atomic unsigned magic; /* TL_GATE_MAGIC once initialised, 1 while initialising */
  unsigned size;          /* sizeof(struct tl__wgate): a layout check across builds */
  pthread_mutex_t mutex;
};

static void gate_open(tl_store *s)
{
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s-wlock", s->path) >= (int)sizeof path)
    return;
  int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0)
    return;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) ||
      (st.st_size < (off_t)sizeof(struct tl__wgate) && ftruncate(fd, sizeof(struct tl__wgate)) != 0)) {
    close(fd);
    return;
  }
  struct tl__wgate *g = mmap(NULL, sizeof *g, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (g == MAP_FAILED)
    return;
  unsigned expect = 0;
  if (atomic_compare_exchange_strong(&g->magic, &expect, 1u)) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&g->mutex, &a);
    pthread_mutexattr_destroy(&a);
    g->size = sizeof *g;
    atomic_store(&g->magic, TL_GATE_MAGIC);
  }
  for (int i = 0; i < 1000 && atomic_load(&g->magic) == 1u; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL); /* another process is initialising it */
  }
  if (atomic_load(&g->magic) != TL_GATE_MAGIC || g->size != sizeof *g) {
    munmap(g, sizeof *g); /* unknown layout: do without the gate */
    return;
  }
  s->gate = g;
}

/* 0 when held; TL_EBUSY past the deadline. */
static tl_status gate_enter(tl_store *s)
{
  if (!s->gate)
    return TL_OK;
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += s->busy_ms / 1000;
  dl.tv_nsec += (long)(s->busy_ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000L;
  }
  int rc = pthread_mutex_timedlock(&s->gate->mutex, &dl);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(&s->gate->mutex); /* its holder died; SQLite rolled its transaction back */
    rc = 0;
  }
  if (rc == ETIMEDOUT)
    return TL_EBUSY;
  if (rc != 0)
    return TL_OK; /* the gate is an optimisation: fall back to SQLite's lock alone */
  s->gate_held = 1;
  return TL_OK;
}

static void gate_leave(tl_store *s)
{
  if (s->gate && s->gate_held) {
    s->gate_held = 0;
    pthread_mutex_unlock(&s->gate->mutex);
  }
}

/*
 * Checkpoints happen after a commit, outside the write gate: SQLite's
 * automatic checkpoint would run inside the committing transaction and make
 * every queued writer wait for it.
 */
#define TL_CHECKPOINT_PAGES 8000
static int on_wal(void *ud, sqlite3 *db, const char *name, int pages)
{
  (void)db;
  (void)name;
  ((tl_store *)ud)->wal_pages = pages;
  return SQLITE_OK;
}

static void checkpoint_if_due(tl_store *s)
{
  if (s->wal_pages < TL_CHECKPOINT_PAGES)
    return;
  s->wal_pages = 0;
  sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

tl_status tl__tx_begin(tl_store *s, const char *where, tl_error *err)
{
  if (s->tx_where)
    return tl__err(err, TL_ERROR, 0, "%s: transaction already open (from %s)", where, s->tx_where);
  if (gate_enter(s) != TL_OK)
    return tl__err(err, TL_EBUSY, 0, "%s: another process has held the ledger's write lock for %d ms; try again", where,
                   s->busy_ms);
  if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
    tl_status rc = tl__err_db(err, s, where);
    gate_leave(s);
    return rc;
  }
  s->tx_where = where;
  return TL_OK;
}

tl_status tl__tx_commit(tl_store *s, tl_error *err)
{
  const char *where = s->tx_where ? s->tx_where : "commit";
  if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    tl_status rc = tl__err_db(err, s, where);
    tl__tx_rollback(s);
    return rc;
  }
  s->tx_where = NULL;
  gate_leave(s);
  checkpoint_if_due(s);
  return TL_OK;
}

void tl__tx_rollback(tl_store *s)
{
  if (!sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  s->tx_where = NULL;
  gate_leave(s);
}

/* Filesystems on which SQLite's locking cannot be trusted. */
static const char *network_fs(long type)
{
  switch ((unsigned long)type) {
  case 0x6969UL: return "NFS";
  case 0x517BUL: return "SMB";
  case 0xFF534D42UL: return "CIFS";
  case 0xFE534D42UL: return "SMB2";
  case 0x564c: return "NCP";
  case 0x47504653UL: return "GPFS";
  case 0x65735546UL: return "FUSE";
  case 0x0BD00BD0UL: return "Lustre";
  case 0x6B414653UL: return "AFS";
  case 0x73757245UL: return "Coda";
  case 0x01021994UL: return NULL; /* tmpfs */
  default: return NULL;
  }
}

/* Checks an open descriptor of the database file. */
static tl_status check_file(int fd, const char *path, tl_error *err)
{
  struct stat st;
  if (fstat(fd, &st) != 0)
    return tl__err(err, TL_EIO, errno, "%s: cannot stat: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return tl__err(err, TL_EINSECURE, 0, "%s: not a regular file", path);
  if (st.st_uid != geteuid())
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: owned by uid %ld, not by you (uid %ld); refusing a ledger another user controls", path,
                   (long)st.st_uid, (long)geteuid());
  if (st.st_mode & 077)
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: mode %04o lets group or others read it; run 'chmod 600 %s' or 'tokenledger doctor --fix'", path,
                   (unsigned)(st.st_mode & 07777), path);
  struct statfs fs;
  if (fstatfs(fd, &fs) == 0) {
    const char *net = network_fs((long)fs.f_type);
    if (net && !getenv("TOKENLEDGER_ALLOW_NETWORK_FS"))
      return tl__err(err, TL_EINSECURE, 0,
                     "%s: on a %s filesystem, where SQLite locking is unreliable; keep the ledger on a local disk",
                     path, net);
  }
  return TL_OK;
}

/* Creates the parent directory (one level) 0700 if missing. */
static tl_status ensure_dir(const char *path, tl_error *err)
{
  char *copy = strdup(path);
  if (!copy)
    return tl__oom(err);
  char *dir = dirname(copy);
  tl_status rc = TL_OK;
  struct stat st;
  if (stat(dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      rc = tl__err(err, TL_EIO, ENOTDIR, "%s: not a directory", dir);
  } else if (errno == ENOENT) {
    if (mkdir(dir, 0700) != 0)
      rc = tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: cannot create directory: %s", dir,
                   strerror(errno));
  } else {
    rc = tl__err(err, TL_EIO, errno, "%s: %s", dir, strerror(errno));
  }
  free(copy);
  return rc;
}

/* Opens or creates the file itself, never following a symlink. *created tells. */
static tl_status open_file(const char *path, unsigned flags, int *created, tl_error *err)
{
  *created = 0;
  int ro = (flags & TL_OPEN_READONLY) != 0;
  int fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (fd < 0 && errno == ENOENT && (flags & TL_OPEN_CREATE) && !ro) {
    tl_status rc = ensure_dir(path, err);
    if (rc != TL_OK)
      return rc;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd >= 0)
      *created = 1;
  }
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      return tl__err(err, TL_ENOTFOUND, e, "%s: no ledger here; create one with 'tokenledger init'", path);
    if (e == ELOOP)
      return tl__err(err, TL_EINSECURE, e, "%s: is a symbolic link; refusing to follow it", path);
    if (e == ENOTDIR)
      return tl__err(err, TL_EIO, e, "%s: a component of the path is not a directory", path);
    return tl__err(err, TL_EIO, e, "%s: cannot open: %s", path, strerror(e));
  }
  tl_status rc = check_file(fd, path, err);
  if (rc == TL_OK && *created && fsync(fd) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: fsync: %s", path, strerror(errno));
  close(fd);
  if (rc != TL_OK && *created)
    unlink(path);
  return rc;
}

static tl_status pragma_int(tl_store *s, const char *sql, int *out, tl_error *err)
{
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *out = sqlite3_column_int(st, 0);
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_OK && rc != SQLITE_DONE) {
    tl_status code = tl__map_sqlite(sqlite3_extended_errcode(s->db));
    if (code == TL_ECORRUPT)
      return tl__err(err, TL_ECORRUPT, rc, "%s: not a tokenledger database (%s)", s->path, sqlite3_errmsg(s->db));
    return tl__err_db(err, s, s->path);
  }
  return TL_OK;
}

/* Read-only identification: ours, empty, or something else. */
static tl_status identify(tl_store *s, tl_error *err)
{
  int app = 0, ver = 0, objects = 0;
  tl_status rc;
  if ((rc = pragma_int(s, "PRAGMA application_id", &app, err)) != TL_OK)
    return rc;
  if ((rc = pragma_int(s, "PRAGMA user_version", &ver, err)) != TL_OK)
    return rc;
  if ((rc = pragma_int(s, "SELECT count(*) FROM sqlite_schema", &objects, err)) != TL_OK)
    return rc;
  s->found_version = ver;
  if (app == 0 && ver == 0 && objects == 0)
    return TL_OK; /* empty: a new ledger */
  if (app != TL_APPLICATION_ID)
    return tl__err(err, TL_ECORRUPT, 0, "%s: a SQLite database, but not a tokenledger ledger (application_id %d)",
                   s->path, app);
  if (ver > TL_SCHEMA_VERSION)
    return tl__err(err, TL_ETOONEW, 0,
                   "%s: schema version %d is newer than this tokenledger understands (%d); upgrade tokenledger, "
                   "the file was left untouched",
                   s->path, ver, TL_SCHEMA_VERSION);
  return TL_OK;
}

/*
 * Busy handler: waits in short, jittered steps (50 us growing to 2 ms) until
 * the deadline. SQLite's default sleeps up to 25 ms per step, which leaves
 * the write lock idle while refreshing processes queue for it.
 */
static int on_busy(void *ud, int count)
{
  tl_store *s = ud;
  if (count == 0)
    s->busy_since = tl__now_ms();
  if (tl__now_ms() - s->busy_since >= s->busy_ms)
    return 0;
  long us = count < 6 ? 50L << count : 2000;
  us += (long)((unsigned)(count * 7919 + s->actor.pid) % 50);
  struct timespec ts = {0, us * 1000};
  nanosleep(&ts, NULL);
  return 1;
}

tl_status tl_store_open(tl_store **out, const char *path, unsigned flags, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc = TL_OK;
  tl_store *s = NULL;
  int created = 0;

  if (!out || !path || !*path)
    return tl__err(err, TL_EINVAL, 0, "store: no database path");
  *out = NULL;
  if ((rc = open_file(path, flags, &created, err)) != TL_OK)
    return rc;
  s = calloc(1, sizeof *s);
  if (!s || !(s->path = strdup(path))) {
    rc = tl__oom(err);
    goto done;
  }
  s->busy_ms = 10000;
  s->http_timeout_ms = 15000;
  const char *to = getenv("TOKENLEDGER_HTTP_TIMEOUT_MS");
  if (to && atoi(to) >= 100 && atoi(to) <= 600000)
    s->http_timeout_ms = atoi(to);
  s->http = tl__curl_post;
  tl__actor_init(&s->actor);
  int oflags = ((flags & TL_OPEN_READONLY) ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOFOLLOW |
               SQLITE_OPEN_EXRESCODE;
  if (sqlite3_open_v2(path, &s->db, oflags, NULL) != SQLITE_OK) {
    rc = tl__err_db(err, s, path);
    goto done;
  }
  sqlite3_busy_handler(s->db, on_busy, s);
  sqlite3_extended_result_codes(s->db, 1);
  if ((rc = identify(s, err)) != TL_OK)
    goto done;
  if ((rc = tl__exec(s, "PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON; PRAGMA synchronous=FULL;", err)) != TL_OK)
    goto done;
  if (!(flags & TL_OPEN_READONLY)) {
    gate_open(s);
    sqlite3_wal_autocheckpoint(s->db, 0);
    sqlite3_wal_hook(s->db, on_wal, s);
    if ((rc = tl__exec(s, "PRAGMA journal_mode=WAL", err)) != TL_OK)
      goto done;
    if (s->found_version < TL_SCHEMA_VERSION && (rc = tl__migrate(s, err)) != TL_OK)
      goto done; /* only an old schema takes the write lock at open */
  } else if (s->found_version < TL_SCHEMA_VERSION) {
    rc = tl__err(err, TL_ECORRUPT, 0, "%s: schema version %d needs migrating; open it read-write once", path,
                 s->found_version);
    goto done;
  }
  *out = s;
  s = NULL;
done:
  if (s) {
    tl_store_free(s);
    if (created) {
      /* A half-made ledger is not left behind. */
      unlink(path);
      char side[PATH_MAX];
      snprintf(side, sizeof side, "%s-wal", path);
      unlink(side);
      snprintf(side, sizeof side, "%s-shm", path);
      unlink(side);
      snprintf(side, sizeof side, "%s-wlock", path);
      unlink(side);
    }
  }
  return rc;
}

void tl_store_free(tl_store *s)
{
  if (!s)
    return;
  if (s->db && !sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  for (size_t i = 0; i < s->ncache; i++)
    sqlite3_finalize(s->cache[i].st);
  sqlite3_close(s->db);
  gate_leave(s);
  if (s->gate)
    munmap(s->gate, sizeof *s->gate);
  tl__actor_clear(&s->actor);
  free(s->path);
  free(s);
}

void tl_store_set_actor(tl_store *s, const char *profile, const char *command)
{
  if (!s)
    return;
  char *p = tl__strdup(profile), *c = tl__strdup(command);
  tl__actor_clear(&s->actor);
  s->actor.profile = p;
  s->actor.command = c;
}

void tl_store_set_busy_timeout(tl_store *s, int ms)
{
  if (!s || ms < 0)
    return;
  s->busy_ms = ms;
}

int tl_store_schema_version_found(const tl_store *s)
{
  return s ? s->found_version : 0;
}

void tl_store_set_transport(tl_store *s, tl_http_fn fn, void *ud)
{
  if (!s)
    return;
  s->http = fn ? fn : tl__curl_post;
  s->http_ud = fn ? ud : NULL;
}
