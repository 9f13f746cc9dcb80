/*
 * db.c - the one thin wrapper over SQLite: cached statements with named
 * parameters, write transactions, and the durability of every commit.
 * Opening a ledger (its place, its files, its schema, the pragmas) is
 * store_open.c's.
 *
 * Invariants kept here:
 *   - Values are bound by name, never formatted into SQL text; binding a name
 *     the statement lacks is an error (TL_BIND, TL_RUN); each statement is
 *     prepared once per connection.
 *   - Write transactions start with BEGIN IMMEDIATE through tl__tx_begin, which
 *     remembers where they were opened, so a write lock is never taken lazily.
 *   - Every commit is durable when it returns: synchronous=NORMAL, and the WAL
 *     is synced once SQLite's write lock is released, so that concurrent
 *     writers share syncs (group commit); a failed sync is reported by
 *     tl__tx_commit although other connections may already see the commit.
 *   - Checkpoints run after a commit, outside the transaction.
 *   - A secret a commit erased does not outlive it in the WAL: the commit
 *     (or, if a reader blocks that, a later one, the end of a keep-fresh
 *     round, or the store's close) runs a TRUNCATE checkpoint, which copies
 *     the pages, whose freed space secure_delete zeroed, into the file and
 *     empties the WAL, where every earlier image of those pages lay.
 */
#define _GNU_SOURCE /* O_PATH, AT_EMPTY_PATH */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

char *tl__strdup(const char *s)
{
  return s ? strdup(s) : NULL;
}

char *tl__col_dup(sqlite3_stmt *st, int col)
{
  const unsigned char *t = sqlite3_column_text(st, col);
  return t ? strdup((const char *)t) : NULL;
}

/*
 * 1 if a statement can erase a secret: a DELETE, or an UPDATE (or an INSERT
 * that may overwrite: an upsert, OR REPLACE) that names a secret column (the
 * schema keeps secrets only in columns named `secret`, `access_token` and,
 * since migration 0008, `id_token`: a new secret column must be named here).
 * Only such a write can leave a secret that is no longer the ledger's
 * current one in an earlier image of a page: a write that does not name them
 * copies the secret unchanged, still live, and a plain INSERT adds one.
 */
static int erases_secret(sqlite3_stmt *st, const char *sql)
{
  if (sqlite3_stmt_readonly(st))
    return 0;
  if (strncmp(sql, "DELETE", 6) == 0)
    return 1;
  if (strncmp(sql, "INSERT", 6) == 0 && !strstr(sql, "DO UPDATE") && !strstr(sql, "REPLACE"))
    return 0;
  return strstr(sql, "secret") || strstr(sql, "access_token") || strstr(sql, "id_token");
}

tl_status tl__prepare(sqlite3_stmt **out, tl_store *s, const char *sql, tl_error *err)
{
  *out = NULL;
  for (size_t i = 0; i < s->ncache; i++) {
    if (s->cache[i].sql == sql) {
      sqlite3_stmt *st = s->cache[i].st;
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      s->scrub_due |= s->cache[i].erases; /* handed out to run: its transaction's commit scrubs the WAL */
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
  s->cache[s->ncache].erases = erases_secret(st, sql);
  s->scrub_due |= s->cache[s->ncache].erases;
  s->ncache++;
  *out = st;
  return TL_OK;
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
    if (s->scrub_due && !s->tx_where && !sqlite3_stmt_readonly(st))
      tl__wal_scrub(s, 0); /* a write in autocommit mode: it committed just now */
    return TL_OK;
  }
  sqlite3_clear_bindings(st);
  return tl__err_db(err, s, what);
}

tl_status tl__run(tl_store *s, const char *sql, const char *what, tl_error *err, size_t n, const tl__arg *args)
{
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = tl__bind(st, err, n, args)) != TL_OK)
    return rc;
  return tl__step_done(s, st, what, err);
}

tl_status tl__exec(tl_store *s, const char *sql, tl_error *err)
{
  if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return tl__err_db(err, s, "exec");
  return TL_OK;
}

/*
 * Group commit. Connections run synchronous=NORMAL: a commit writes its WAL
 * frames under SQLite's write lock and releases the lock without waiting for
 * the disk. SQLite then calls the WAL hook, after the commit and with the lock
 * released, and the hook makes the WAL durable through SQLite's own handle of
 * it (SQLITE_FCNTL_JOURNAL_POINTER): the sync covers every frame written so far,
 * this commit's and those of writers that committed meanwhile, so concurrent
 * writers share syncs instead of queueing behind each other's. A commit is
 * therefore durable when COMMIT returns, as with synchronous=FULL. Frames are
 * never overwritten before they are durable: SQLite reuses the WAL only after
 * a checkpoint, which syncs the WAL before it copies and the database after.
 * If the sync fails, COMMIT reports the I/O error although other connections
 * can already see the transaction; tl__tx_commit says so.
 *
 * Checkpoints happen after a commit too, outside the transaction: SQLite's
 * automatic checkpoint would run inside the committing transaction and make
 * every queued writer wait for it. A passive checkpoint never completes while
 * other processes keep committing (the log restarts only when a writer begins
 * from a fully checkpointed log), so under steady concurrent writes the log
 * grew without bound and every commit checkpointed again, with a sync of the
 * log and of the database each time. Past TL_CHECKPOINT_PAGES, one connection
 * runs a RESTART checkpoint: it waits briefly for the writers and readers of
 * the moment, copies the whole log, syncs the database and lets the next
 * writer start the log over; the next attempt of this connection is due only
 * after the log has grown by another quarter of the threshold.
 */
#define TL_CHECKPOINT_PAGES   8000
#define TL_CHECKPOINT_WAIT_MS 200
#define TL_SCRUB_GAP_MS       1000
#define TL_SCRUB_RETRY_MS     250

tl_status tl__wal_sync(tl_store *s, tl_error *err)
{
  sqlite3_file *wal = NULL;
  int rc = sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
  if (rc == SQLITE_OK && wal && wal->pMethods)
    rc = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
  else if (rc == SQLITE_OK)
    rc = SQLITE_IOERR_FSYNC; /* no WAL open: nothing this connection wrote can be made durable */
  if (rc == SQLITE_OK)
    return TL_OK;
  s->sync_failed = rc;
  return tl__err(err, TL_EIO, rc, "%s: the disk did not confirm a write (%s)", s->path, sqlite3_errstr(rc));
}

int tl__on_wal(void *ud, sqlite3 *db, const char *name, int pages)
{
  tl_store *s = ud;
  (void)db;
  (void)name;
  s->wal_pages = pages;
  s->wal_syncs++;
  return tl__wal_sync(s, NULL) == TL_OK ? SQLITE_OK : s->sync_failed;
}

/*
 * Scrubbing the WAL. SQLite never rewrites a page in place: a commit appends
 * the page's new image to the WAL, and the images before it stay there, in
 * the WAL file, until the log is restarted and overwritten, or truncated. So
 * an RT whose plaintext a rotation erased (secure_delete zeroes it in the
 * page) still lies in every earlier image of its page: after hundreds of
 * rotations by one long-lived process (keep-fresh, serve), whose connection
 * keeps the WAL from being removed at close, the WAL held most of the spent
 * RTs and old access tokens, and any copy of the directory carried them.
 * After a commit that erased a secret (a statement erases_secret marks), a
 * TRUNCATE checkpoint copies the WAL into the file and truncates it to zero
 * bytes: the file then holds each page's last image (secure_delete zeroed the
 * freed space and pages in it), and the WAL nothing. It waits briefly for the
 * readers of the moment (after a commit, not at all); if one still needs the
 * WAL, the scrub stays due and runs after this connection's next commit, at
 * the end of a keep-fresh round (which also scrubs for processes that could
 * not) or when the store closes. A scrub costs a sync of the file, holds the
 * write lock while it copies, and under a stream of concurrent writers a
 * failed one still degrades to a passive checkpoint that copies and syncs:
 * after a commit, one runs at most every TL_SCRUB_GAP_MS (TL_SCRUB_RETRY_MS
 * after a failure). The first rotation after a quiet second is scrubbed at
 * once; the later ones of a burst by the first commit after the gap, the
 * round's end or the close (docs/BENCHMARKS.md has what each costs).
 * 1 if the WAL was emptied (or scrubbing is switched off).
 */
int tl__wal_scrub(tl_store *s, int always)
{
  if (s->scrub_off)
    return 1;
  if ((!s->scrub_due && !always) || s->readonly || s->tx_where || !sqlite3_get_autocommit(s->db))
    return 0;
  int64_t now = tl__now_ms();
  if (!always && !s->closing && now < s->scrub_next_at)
    return 0; /* one ran or failed a moment ago: see TL_SCRUB_GAP_MS */
  int busy = s->busy_ms;
  /* After a commit, only if nobody is in the way: concurrent refreshers do not queue behind each other's
   * scrubs (the last one to commit finds the way clear). A round's end and a close wait a moment. */
  s->busy_ms = always || s->closing ? TL_CHECKPOINT_WAIT_MS : 0;
  int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
  s->busy_ms = busy;
  if (rc != SQLITE_OK) {
    s->scrub_next_at = now + TL_SCRUB_RETRY_MS;
    return 0;
  }
  s->scrub_next_at = now + TL_SCRUB_GAP_MS;
  s->scrub_due = 0;
  s->wal_pages = 0;
  s->checkpoint_next = 0;
  return 1;
}

static void checkpoint_if_due(tl_store *s)
{
  if (s->wal_pages < TL_CHECKPOINT_PAGES) {
    s->checkpoint_next = 0; /* the log was restarted */
    return;
  }
  if (s->wal_pages < s->checkpoint_next)
    return;
  s->checkpoint_next = s->wal_pages + TL_CHECKPOINT_PAGES / 4;
  int busy = s->busy_ms;
  s->busy_ms = TL_CHECKPOINT_WAIT_MS; /* a long reader costs this commit a moment, not the lock deadline */
  sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
  s->busy_ms = busy;
}

/*
 * The ledger's change marker, read without a transaction: the WAL-index
 * header at the start of the -shm (two copies of a 48-byte header; SQLite's
 * walformat.html), read the way SQLite's own readers read it: the first copy,
 * a barrier, the second, and they must agree (a writer writes the second copy
 * first). Every commit, by any connection of any process, rewrites it (a
 * change counter, the last valid frame, checksums), and every change to the
 * ledger is a commit: an unchanged marker means an unchanged ledger. Only a
 * connection that has the WAL open reads it, through SQLite's own handle of
 * the shared memory (xShmMap of SQLITE_FCNTL_FILE_POINTER, never extending
 * or creating it). 0: no marker now (no shared memory, as for a read-only
 * or frozen ledger; a commit half-published); the caller then reads the
 * ledger itself.
 */
int tl__db_marker(tl_store *s, unsigned char out[TL_DB_MARKER_LEN])
{
  sqlite3_file *db = NULL, *wal = NULL;
  void volatile *shm = NULL;
  if (s->readonly || sqlite3_file_control(s->db, "main", SQLITE_FCNTL_FILE_POINTER, &db) != SQLITE_OK || !db ||
      !db->pMethods || db->pMethods->iVersion < 2 ||
      sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK || !wal ||
      !wal->pMethods) /* the WAL (and so the shared memory) is not open yet */
    return 0;
  if (db->pMethods->xShmMap(db, 0, 32768, 0, &shm) != SQLITE_OK || !shm)
    return 0;
  const volatile unsigned char *hdr = shm;
  int same = 1;
  for (size_t i = 0; i < TL_DB_MARKER_LEN; i++)
    out[i] = hdr[i];
  db->pMethods->xShmBarrier(db);
  for (size_t i = 0; i < TL_DB_MARKER_LEN; i++)
    same &= out[i] == hdr[TL_DB_MARKER_LEN + i];
  return same && out[12] /* isInit */;
}

/* BEGIN IMMEDIATE and COMMIT run on every write: prepared once, like every other statement. */
static int step_cached(tl_store *s, const char *sql)
{
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, sql, NULL) != TL_OK)
    return sqlite3_errcode(s->db) ? sqlite3_errcode(s->db) : SQLITE_ERROR;
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static const char begin_sql[] = "BEGIN IMMEDIATE";
static const char commit_sql[] = "COMMIT";

tl_status tl__tx_begin(tl_store *s, const char *where, tl_error *err)
{
  if (s->tx_where)
    return tl__err(err, TL_ERROR, 0, "%s: transaction already open (from %s)", where, s->tx_where);
  if (s->readonly)
    return tl__err(err, TL_EIO, 0, "%s: %s is open read-only (%s); nothing can be written", where, s->path,
                   s->readonly_why ? s->readonly_why : "as asked, or a read-only file");
  if (step_cached(s, begin_sql) != SQLITE_OK)
    return tl__err_db(err, s, where);
  s->tx_where = where;
  return TL_OK;
}

tl_status tl__tx_commit(tl_store *s, tl_error *err)
{
  const char *where = s->tx_where ? s->tx_where : "commit";
  s->sync_failed = 0;
  if (step_cached(s, commit_sql) != SQLITE_OK) {
    tl_status rc;
    if (s->sync_failed) /* committed (others may see it), but the disk did not confirm it */
      rc = tl__err(err, TL_EIO, s->sync_failed,
                   "%s: %s: the change was written but the disk did not confirm it (%s); it may be lost if the "
                   "machine loses power",
                   s->path, where, sqlite3_errstr(s->sync_failed));
    else
      rc = tl__err_db(err, s, where);
    tl__tx_rollback(s);
    return rc;
  }
  s->tx_where = NULL;
  if (!s->scrub_due || !tl__wal_scrub(s, 0))
    checkpoint_if_due(s);
  return TL_OK;
}

void tl__tx_rollback(tl_store *s)
{
  if (!sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  s->tx_where = NULL;
}

/* Filesystems on which SQLite's locking cannot be trusted. */
