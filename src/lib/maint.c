/*
 * maint.c - keeping a ledger healthy: doctor (its checks, and with fix the
 * repairs), tl_store_fix_permissions, and compact.
 *
 * Invariants: doctor writes only with fix set, and then only what is safe
 * (file modes, and in-flight attempts whose owner is dead, which become
 * `unknown` exactly as a claiming process would record them); a mode is set
 * through an O_PATH descriptor, so a FIFO cannot hang it, a symlink is not
 * followed and no lock of this process is dropped; compact removes only
 * settled attempts older than the cutoff and never a fingerprint: every RT
 * ever held stays in the ledger, so reuse is still caught. Details say what
 * was found, not which command to run (src/cli/hint.c adds that). A check
 * fails only for what still needs someone: a dead or undecided credential
 * that no profile uses any more (replaced by a new login, or removed) is an
 * informational line, so doctor turns green again once every profile that
 * used a dead grant has a live one.
 */
#define _GNU_SOURCE /* O_PATH */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- doctor ------------------------------------------------------------- */

/*
 * Sets the mode of the ledger or a sidecar through an O_PATH descriptor: a FIFO cannot hang it, a symlink is
 * not followed, and its close releases none of the POSIX locks this process holds on the file (SQLite's, if a
 * store of this process has the ledger open; closing any other descriptor of the file would drop them).
 */
static tl_status fix_mode(const char *path, mode_t mode, int must_exist, tl_error *err)
{
  int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT && !must_exist)
      return TL_OK;
    return tl__err(err,
                   errno == ENOENT  ? TL_ENOTFOUND
                   : errno == ELOOP ? TL_EINSECURE
                                    : TL_EIO,
                   errno, "%s: cannot open: %s", path, strerror(errno));
  }
  struct stat st;
  char self[64];
  tl_status rc = TL_OK;
  snprintf(self, sizeof self, "/proc/self/fd/%d", fd); /* the file this descriptor names, not a path again */
  if (fstat(fd, &st) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
  else if (S_ISLNK(st.st_mode))
    rc = tl__err(err, TL_EINSECURE, ELOOP, "%s: cannot open: %s", path, strerror(ELOOP));
  else if (!S_ISREG(st.st_mode))
    rc = tl__err(err, TL_EINSECURE, 0, "%s: not a regular file; not touching it", path);
  else if (st.st_uid != geteuid())
    rc = tl__err(err, TL_EINSECURE, 0, "%s: owned by uid %ld, not you; not touching it", path, (long)st.st_uid);
  else if ((st.st_mode & 07777) != mode && chmod(self, mode) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: chmod: %s", path, strerror(errno));
  close(fd);
  return rc;
}

/* The ledger's directory: ours, so take write access from group and others. Another user's is not touched. */
static tl_status fix_dir(const char *path, tl_error *err)
{
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  snprintf(dir, sizeof dir, "%.*s", slash ? (slash == path ? 1 : (int)(slash - path)) : 1, slash ? path : ".");
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: %s", dir, strerror(errno));
  struct stat st;
  tl_status rc = TL_OK;
  if (fstat(fd, &st) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: %s", dir, strerror(errno));
  else if (st.st_uid != geteuid() && (st.st_mode & 022))
    rc = tl__err(err, TL_EINSECURE, 0, "%s: owned by uid %ld, not you, and writable by others; not touching it", dir,
                 (long)st.st_uid);
  else if ((st.st_mode & S_ISVTX) && (st.st_mode & 022))
    /* A directory others share (/tmp): taking their write access away is not ours to do. */
    rc = tl__err(err, TL_EINSECURE, 0,
                 "%s: a directory shared with others (permissions %04o); not changed: keep the ledger in a directory "
                 "of your own",
                 dir, (unsigned)(st.st_mode & 07777));
  else if (st.st_uid == geteuid() && (st.st_mode & 022) && fchmod(fd, st.st_mode & 07755) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: chmod: %s", dir, strerror(errno));
  close(fd);
  return rc;
}

tl_status tl_store_fix_permissions(const char *path, tl_error *err)
{
  tl_error_clear(err);
  static const char *const sides[] = {"-wal", "-shm", "-journal"};
  char side[PATH_MAX];
  if (!path)
    return tl__err(err, TL_EINVAL, 0, "doctor: no path");
  struct stat st;
  if (lstat(path, &st) != 0) /* nothing is changed for a ledger that is not there */
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: %s", path, strerror(errno));
  tl_status rc = fix_dir(path, err);
  if (rc == TL_OK)
    rc = fix_mode(path, 0600, 1, err);
  for (size_t i = 0; rc == TL_OK && i < sizeof sides / sizeof *sides; i++) {
    snprintf(side, sizeof side, "%s%s", path, sides[i]);
    rc = fix_mode(side, 0600, 0, err);
  }
  return rc;
}

static tl_status add_check(tl_report *r, int *problems, const char *check, int ok, const char *detail, tl_error *err)
{
  const char *cells[3] = {check, ok ? "1" : "0", detail};
  const int num[3] = {0, 1, 0};
  if (!ok)
    (*problems)++;
  return tl__report_add_row(r, cells, num, err);
}

/* One number from a query; a failure keeps its status (a busy ledger is busy, not a failed check). */
static tl_status count_of(int64_t *out, tl_store *s, const char *sql, tl_error *err)
{
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    rc = SQLITE_OK;
  }
  tl_status code = rc == SQLITE_OK ? TL_OK : tl__err_db(err, s, "doctor");
  sqlite3_finalize(st);
  return code;
}

/*
 * Who holds the write lock, if anyone holds it for long: SQLite's WAL write lock is an fcntl lock on byte 120
 * of the -shm file (WAL-index format), so /proc/locks names the holder (read without opening the -shm: closing
 * a descriptor of it would drop this process's own locks on it). The lock is the kernel's: it goes with its
 * holder, and a copied file carries none.
 */
static tl_status write_lock_check(tl_report *r, int *problems, tl_store *s, tl_error *err)
{
  char detail[512], shm[PATH_MAX];
  int busy = s->busy_ms;
  s->busy_ms = 2000;
  int held = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK;
  s->busy_ms = busy;
  if (!held)
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  long pid = 0;
  snprintf(shm, sizeof shm, "%s-shm", s->path);
  if (held && tl__lock_held(&pid, shm, 120) != 1)
    pid = 0;
  if (!held)
    snprintf(detail, sizeof detail, "free (SQLite's own lock, released by the kernel when its holder ends)");
  else if (s->readonly)
    snprintf(detail, sizeof detail, "not checked: the ledger is open read-only");
  else if (pid > 0)
    snprintf(detail, sizeof detail, "held for over 2 s by process %ld; writes wait for it (busy, exit 8)", pid);
  else
    snprintf(detail, sizeof detail, "held for over 2 s by another process; writes wait for it (busy, exit 8)");
  return add_check(r, problems, "write_lock", !held || s->readonly, detail, err);
}

/* Rescue files beside the ledger that hold a server's answer not yet on record, or cannot be read. */
static tl_status rescue_check(tl_report *r, int *problems, tl_store *s, tl_error *err)
{
  char detail[900];
  int64_t pending = 0, first = 0;
  tl_error bad = {0};
  tl_status rc = tl__rescue_scan(&pending, &first, &bad, s);
  if (rc != TL_OK && rc != TL_EIO)
    return tl__err(err, rc, bad.sys, "%s", bad.message);
  if (bad.code != TL_OK)
    snprintf(detail, sizeof detail,
             "a file named as a rescue file cannot be read as one (%.600s): inspect it; one tokenledger did not "
             "write can be moved away",
             bad.message);
  else if (pending)
    snprintf(detail, sizeof detail,
             "%lld rescue file(s) hold a server's answer not yet on record (the first for credential %lld)",
             (long long)pending, (long long)first);
  else
    snprintf(detail, sizeof detail, "no answer waiting in a rescue file");
  return add_check(r, problems, "rescue_files", pending == 0 && bad.code == TL_OK, detail, err);
}

/* The profiles whose home file disagrees with their strict flag, named in one detail. */
static tl_status strict_files_check(tl_report *r, int *problems, tl_store *s, tl_error *err)
{
  static const char sql[] = "SELECT id, name FROM profile WHERE home IS NOT NULL ORDER BY name";
  char detail[1100] = "", why[600] = "";
  int bad = 0, found = 0;
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "profiles", err)) == TL_OK && found) {
    int agree = 1;
    char name[80];
    snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(st, 1));
    if ((rc = tl__strict_files_agree(&agree, why, sizeof why, s, sqlite3_column_int64(st, 0), -1, err)) != TL_OK)
      break;
    if (!agree && bad++ == 0)
      snprintf(detail, sizeof detail, "a strict switch of profile %s is unfinished: %s", name, why);
  }
  sqlite3_reset(st);
  if (rc != TL_OK)
    return rc;
  if (bad > 1) {
    size_t l = strlen(detail);
    snprintf(detail + l, sizeof detail - l, " (and %d more profile(s))", bad - 1);
  } else if (!bad)
    snprintf(detail, sizeof detail, "every profile's Hermes file agrees with its strict flag");
  return add_check(r, problems, "strict_files", bad == 0, detail, err);
}

tl_status tl_doctor(tl_report **out, int *out_problems, tl_store *s, int fix, tl_error *err)
{
  tl_error_clear(err);
  static const char *const cols[] = {"check", "ok", "detail"};
  tl_report *r = NULL;
  tl_status rc;
  int problems = 0;
  char detail[1100];
  if (!out || !out_problems || !s)
    return tl__err(err, TL_EINVAL, 0, "doctor: bad arguments");
  if ((rc = tl__report_kv(&r, cols, 3, err)) != TL_OK)
    return rc;

  /* 1. SQLite's own integrity check. */
  {
    sqlite3_stmt *st = NULL;
    detail[0] = '\0';
    int ok = 0, step = sqlite3_prepare_v2(s->db, "PRAGMA integrity_check", -1, &st, NULL);
    if (step == SQLITE_OK && (step = sqlite3_step(st)) == SQLITE_ROW) {
      const char *t = (const char *)sqlite3_column_text(st, 0);
      ok = t && strcmp(t, "ok") == 0;
      snprintf(detail, sizeof detail, "%s", t ? t : "");
    } else if (tl__map_sqlite(sqlite3_extended_errcode(s->db)) == TL_EBUSY ||
               tl__map_sqlite(sqlite3_extended_errcode(s->db)) == TL_ENOMEM) {
      rc = tl__err_db(err, s, "doctor: integrity check");
      sqlite3_finalize(st);
      goto done;
    } else {
      snprintf(detail, sizeof detail, "%s", sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
    if ((rc = add_check(r, &problems, "integrity", ok, detail, err)) != TL_OK)
      goto done;
    int64_t fk = 0;
    if ((rc = count_of(&fk, s, "SELECT count(*) FROM pragma_foreign_key_check", err)) != TL_OK)
      goto done;
    snprintf(detail, sizeof detail, "%lld dangling reference(s)", (long long)fk);
    if ((rc = add_check(r, &problems, "foreign_keys", fk == 0, detail, err)) != TL_OK)
      goto done;
  }

  /* 2. The files: the ledger, SQLite's files beside it, the directory (open refused them otherwise). */
  {
    struct stat st;
    int ok = stat(s->path, &st) == 0 && (st.st_mode & 077) == 0 && st.st_uid == geteuid();
    snprintf(detail, sizeof detail, "%s mode %04o", s->path, ok || stat(s->path, &st) == 0 ? st.st_mode & 07777 : 0);
    if ((rc = add_check(r, &problems, "file_mode", ok, detail, err)) != TL_OK)
      goto done;
    tl_error why = {0};
    ok = tl__check_sidecars(s->path, &why) == TL_OK;
    snprintf(detail, sizeof detail, "%s", ok ? "-wal, -shm, -journal: regular, yours, 0600, or absent" : why.message);
    if ((rc = add_check(r, &problems, "sqlite_files", ok, detail, err)) != TL_OK)
      goto done;
    char dir[PATH_MAX];
    const char *slash = strrchr(s->path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (slash == s->path ? 1 : (int)(slash - s->path)) : 1,
             slash ? s->path : ".");
    tl_error_clear(&why);
    ok = tl__check_dir(dir, &why) == TL_OK;
    int listable = ok && stat(dir, &st) == 0 && (st.st_mode & 077);
    snprintf(detail, sizeof detail, "%s",
             !ok        ? why.message
             : listable ? "others can list the ledger's directory; "
                          "'chmod 700' it if it is yours alone"
                        : "yours, writable by you alone");
    if ((rc = add_check(r, &problems, "directory", ok, detail, err)) != TL_OK)
      goto done;
  }

  /* 3. Journal mode, the schema, the write lock. */
  {
    sqlite3_stmt *st = NULL;
    int ok = 0;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      ok = sqlite3_column_text(st, 0) && strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if ((rc = add_check(r, &problems, "wal", ok, ok ? "journal_mode=wal" : "journal_mode is not wal", err)) != TL_OK)
      goto done;
    tl_error why = {0};
    ok = tl__schema_check(s, s->found_version, &why) == TL_OK;
    snprintf(detail, sizeof detail, "%s", ok ? "exactly what the migrations create" : why.message);
    if ((rc = add_check(r, &problems, "schema", ok, detail, err)) != TL_OK)
      goto done;
    if ((rc = write_lock_check(r, &problems, s, err)) != TL_OK)
      goto done;
    if ((rc = rescue_check(r, &problems, s, err)) != TL_OK)
      goto done;
  }

  /* 4. Lineage invariants, recomputed from the rows. */
  {
    static const struct {
      const char *name, *sql, *what;
    } inv[] = {
        {"unique_fingerprint",
         "SELECT count(*) FROM (SELECT fingerprint FROM refresh_token GROUP BY fingerprint HAVING count(*) > 1)",
         "fingerprint(s) stored twice"},
        {"one_live_rt",
         "SELECT count(*) FROM (SELECT credential_id FROM refresh_token WHERE state IN ('current','presented') "
         "GROUP BY credential_id HAVING count(*) > 1)",
         "credential(s) with more than one live RT"},
        {"one_in_flight",
         "SELECT count(*) FROM (SELECT credential_id FROM refresh_attempt WHERE outcome = 'in_flight' "
         "GROUP BY credential_id HAVING count(*) > 1)",
         "credential(s) with more than one in-flight attempt"},
        {"lineage_shape",
         "SELECT count(*) FROM refresh_token c JOIN refresh_token p ON p.id = c.parent_id "
         "WHERE p.credential_id <> c.credential_id OR c.generation <> p.generation + 1",
         "RT(s) whose parent is of another credential or generation"},
        {"spent_secrets_erased",
         "SELECT count(*) FROM refresh_token WHERE state IN ('rotated','rejected','retired') AND secret IS NOT NULL",
         "spent RT(s) still holding plaintext"},
    };
    for (size_t i = 0; i < sizeof inv / sizeof *inv; i++) {
      int64_t n = 0;
      if ((rc = count_of(&n, s, inv[i].sql, err)) != TL_OK)
        goto done;
      snprintf(detail, sizeof detail, "%lld %s", (long long)n, inv[i].what);
      if ((rc = add_check(r, &problems, inv[i].name, n == 0, detail, err)) != TL_OK)
        goto done;
    }
  }

  /* 5. In-flight attempts whose owner died: they become unknown with fix. */
  {
    int64_t stale = 0;
    if ((rc = tl__reap_dead_attempts(&stale, s, fix, err)) != TL_OK)
      goto done;
    snprintf(detail, sizeof detail, "%lld in-flight attempt(s) whose owner is gone%s", (long long)stale,
             stale && fix ? ": recorded as unknown" : "");
    if ((rc = add_check(r, &problems, "stale_in_flight", stale == 0 || fix, detail, err)) != TL_OK)
      goto done;
  }

  /*
   * 6. Things an operator must decide: only grants a profile still uses (a pool entry or a place in Hermes'
   * files). A dead or undecided grant no profile uses any more (replaced by a login, or removed) needs nobody:
   * it stays for its lineage, so its tokens are still recognised, and is counted on an informational line.
   */
  {
#define TL_USED                                                                                                        \
  "(EXISTS (SELECT 1 FROM pool_entry e WHERE e.credential_id = c.id) OR EXISTS (SELECT 1 FROM grant_place g WHERE "    \
  "g.credential_id = c.id))"
    int64_t unknown = 0, reauth = 0, unused = 0;
    if ((rc = count_of(&unknown, s, "SELECT count(*) FROM credential c WHERE status = 'uncertain' AND " TL_USED,
                       err)) != TL_OK ||
        (rc = count_of(&reauth, s, "SELECT count(*) FROM credential c WHERE status = 'needs_reauth' AND " TL_USED,
                       err)) != TL_OK ||
        (rc = count_of(&unused, s, "SELECT count(*) FROM credential c WHERE status <> 'active' AND NOT " TL_USED,
                       err)) != TL_OK)
      goto done;
#undef TL_USED
    snprintf(detail, sizeof detail, "%lld credential(s) in use with an unknown refresh outcome", (long long)unknown);
    if ((rc = add_check(r, &problems, "unknown_outcomes", unknown == 0, detail, err)) != TL_OK)
      goto done;
    snprintf(detail, sizeof detail, "%lld credential(s) in use need a new login", (long long)reauth);
    if ((rc = add_check(r, &problems, "needs_reauth", reauth == 0, detail, err)) != TL_OK)
      goto done;
    snprintf(detail, sizeof detail,
             "%lld dead or undecided credential(s) no profile uses any more (kept for their lineage; nothing to do)",
             (long long)unused);
    if ((rc = add_check(r, &problems, "unused_credentials", 1, detail, err)) != TL_OK)
      goto done;
  }

  /*
   * 7. Hermes' files: every one the ledger keeps reads as Hermes' shape (sync leaves one that does not alone),
   * and no Hermes home under a root the ledger knows holds grants the ledger does not (Hermes would refresh
   * them alone, which is what the ledger exists to prevent).
   */
  {
    int ok = 1;
    if ((rc = tl__hermes_files_doctor(&ok, detail, sizeof detail, s, err)) != TL_OK ||
        (rc = add_check(r, &problems, "hermes_files", ok, detail, err)) != TL_OK)
      goto done;
    tl_report *nh = NULL;
    if ((rc = tl_hermes_new_homes(&nh, s, err)) != TL_OK)
      goto done;
    size_t n = tl_report_rows(nh), len = 0;
    if (n == 0)
      snprintf(detail, sizeof detail, "every Hermes home holding grants under the ledger's roots is a profile");
    else
      len = (size_t)snprintf(detail, sizeof detail, "%zu Hermes home(s) hold grants the ledger does not keep:", n);
    for (size_t i = 0; i < n && len < sizeof detail; i++)
      len += (size_t)snprintf(detail + len, sizeof detail - len, "%s %s (%s grant(s))", i ? "," : "",
                              tl_report_get(nh, i, "home"), tl_report_get(nh, i, "grants"));
    tl_report_free(nh);
    if ((rc = add_check(r, &problems, "new_profiles", n == 0, detail, err)) != TL_OK)
      goto done;
  }

  /* 8. Strict profiles need a serve that answers on the port its port file names. */
  {
    int ok = 1;
    tl__strict_doctor(&ok, detail, sizeof detail, s);
    if ((rc = add_check(r, &problems, "strict_serve", ok, detail, err)) != TL_OK)
      goto done;
  }

  /* 8. Every profile's home file agrees with its strict flag (a switch that stopped halfway does not). */
  if ((rc = strict_files_check(r, &problems, s, err)) != TL_OK)
    goto done;
done:
  if (rc != TL_OK) {
    tl_report_free(r);
    return rc;
  }
  *out = r;
  *out_problems = problems;
  return TL_OK;
}

static int64_t file_bytes(tl_store *s)
{
  sqlite3_stmt *st = NULL;
  int64_t n = 0;
  if (sqlite3_prepare_v2(s->db, "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size", -1, &st,
                         NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

tl_status tl_compact(int64_t *out_deleted, int64_t *out_before, int64_t *out_after, tl_store *s, int64_t keep_ms,
                     tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "DELETE FROM refresh_attempt WHERE outcome NOT IN ('in_flight', 'unknown') AND finished_at <= :cutoff AND rt_id "
      "IN (SELECT id FROM refresh_token WHERE state IN ('rotated', 'rejected', 'retired'))";
  tl_status rc;
  if (!s || keep_ms < 0)
    return tl__err(err, TL_EINVAL, 0, "compact: bad arguments");
  int64_t before = file_bytes(s);
  tl__progress(s, "settled attempts", 0, 2);
  if ((rc = tl__tx_begin(s, "compact", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":cutoff", tl__now_ms() - keep_ms))) != TL_OK ||
      (rc = tl__step_done(s, st, "compact", err)) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  int64_t deleted = sqlite3_changes64(s->db);
  tl__ids ids = {0};
  if ((rc = tl__audit(s, "compact", &ids,
                      json_pack("{s:I, s:I}", "attempts_deleted", (json_int_t)deleted, "keep_ms", (json_int_t)keep_ms),
                      err)) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  tl__progress(s, "vacuum", 1, 2);
  if ((rc = tl__exec(s, "VACUUM; PRAGMA wal_checkpoint(TRUNCATE);", err)) != TL_OK)
    return rc;
  tl__progress(s, "vacuum", 2, 2);
  if (out_deleted)
    *out_deleted = deleted;
  if (out_before)
    *out_before = before;
  if (out_after)
    *out_after = file_bytes(s);
  return TL_OK;
}
