/*
 * query.c - the read side: status, lineage, audit, history, check-rt, doctor.
 *
 * Invariants: every report here is built from the forensic views or from
 * columns that hold no secret, so nothing a read command prints can leak a
 * token; check-rt never writes; doctor writes only with fix set, and then
 * only what is safe (file modes, and in-flight attempts whose owner is dead,
 * which become `unknown` exactly as a claiming process would record them).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

tl_status tl_status_report(tl_report **out, tl_store *s, const char *profile, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "SELECT * FROM v_profile_status WHERE :profile IS NULL OR profile = :profile "
                            "ORDER BY profile, provider, priority";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "status: bad arguments");
  if (profile) {
    int64_t id;
    tl_status rc = tl__profile_id(&id, s, profile, err);
    if (rc != TL_OK)
      return rc;
  }
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":profile", profile))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

static tl_status credential_exists(tl_store *s, int64_t cred, tl_error *err)
{
  static const char sql[] = "SELECT 1 FROM credential WHERE id = :id";
  if (cred == 0)
    return TL_OK;
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential", err)) != TL_OK)
    return rc;
  sqlite3_reset(st);
  return found ? TL_OK : tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
}

/* A report over one statement with :cred (0 = all) and :limit (0 = all, if the SQL has it). */
static tl_status credential_report(tl_report **out, tl_store *s, const char *sql, int64_t cred, int64_t limit,
                                   const char *what, tl_error *err)
{
  if (!out || !s || limit < 0)
    return tl__err(err, TL_EINVAL, 0, "%s: bad arguments", what);
  tl_status rc = credential_exists(s, cred, err);
  if (rc != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK)
    return rc;
  if ((rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK)
    return rc;
  if (strstr(sql, ":limit") && (rc = TL_BIND(st, err, TL_INT(":limit", limit ? limit : -1))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

tl_status tl_lineage_report(tl_report **out, tl_store *s, int64_t cred, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT credential, provider, label, family, generation, state, origin, fingerprint, issued, age_s, retired, "
      "presented_by FROM v_lineage WHERE :cred = 0 OR credential = :cred ORDER BY credential, rt_id";
  return credential_report(out, s, sql, cred, 0, "lineage", err);
}

tl_status tl_audit_report(tl_report **out, tl_store *s, int64_t cred, int64_t limit, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT * FROM (SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', at / 1000.0, 'unixepoch') AS at, event, "
      "actor_host || ':' || actor_pid AS actor, actor_profile AS profile, actor_command AS command, "
      "credential_id AS credential, rt_id, detail FROM audit_event WHERE :cred = 0 OR credential_id = :cred "
      "ORDER BY id DESC LIMIT :limit) ORDER BY id";
  return credential_report(out, s, sql, cred, limit, "audit", err);
}

tl_status tl_history_report(tl_report **out, tl_store *s, int64_t cred, int64_t limit, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "SELECT * FROM v_refresh_history WHERE :cred = 0 OR credential = :cred LIMIT :limit";
  return credential_report(out, s, sql, cred, limit, "history", err);
}

tl_status tl_rt_check(tl_report **out, tl_store *s, const char *rt, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT CASE WHEN t.id IS NULL THEN 'unknown_to_ledger' WHEN t.state IN ('current', 'presented') THEN t.state "
      "WHEN t.state = 'unknown' THEN 'unknown_outcome' ELSE 'spent' END AS verdict, "
      "substr(:fp, 1, 12) AS fingerprint, t.credential_id AS credential, c.provider AS provider, c.label AS label, "
      "coalesce(t.family_id, t.id) AS family, t.generation AS generation, t.state AS state, t.origin AS origin, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', t.issued_at / 1000.0, 'unixepoch') AS issued, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', t.retired_at / 1000.0, 'unixepoch') AS spent, "
      "coalesce(a.owner_host || ':' || a.owner_pid, e.actor_host || ':' || e.actor_pid) AS presented_by, "
      "coalesce(a.owner_profile, e.actor_profile) AS presented_profile, "
      "coalesce(a.owner_command, e.actor_command) AS presented_command, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', coalesce(a.started_at, e.at) / 1000.0, 'unixepoch') AS presented_at, "
      "a.outcome AS outcome, "
      "(SELECT max(generation) FROM refresh_token WHERE credential_id = t.credential_id) AS latest_generation, "
      "(SELECT group_concat(p.name, ',') FROM pool_entry e JOIN profile p ON p.id = e.profile_id "
      "WHERE e.credential_id = t.credential_id) AS profiles "
      "FROM (SELECT :fp AS fp) q LEFT JOIN refresh_token t ON t.fingerprint = q.fp "
      "LEFT JOIN credential c ON c.id = t.credential_id "
      "LEFT JOIN refresh_attempt a ON a.id = (SELECT max(id) FROM refresh_attempt WHERE rt_id = t.id) "
      /* compact removes old attempts; the audit log keeps every presentation */
      "LEFT JOIN audit_event e ON e.id = (SELECT max(id) FROM audit_event WHERE credential_id = t.credential_id "
      "AND rt_id = t.id AND event IN ('rt_presented', 'rt_represented'))";
  char fp[65];
  if (!out || !s || !rt || !*rt)
    return tl__err(err, TL_EINVAL, 0, "check-rt: no token given");
  tl_fingerprint(fp, rt, strlen(rt));
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":fp", fp))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

/* ---- doctor ------------------------------------------------------------- */

static tl_status fix_mode(const char *path, mode_t mode, int must_exist, tl_error *err)
{
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
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
  tl_status rc = TL_OK;
  if (fstat(fd, &st) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    rc = tl__err(err, TL_EINSECURE, 0, "%s: not a regular file; not touching it", path);
  else if (st.st_uid != geteuid())
    rc = tl__err(err, TL_EINSECURE, 0, "%s: owned by uid %ld, not you; not touching it", path, (long)st.st_uid);
  else if ((st.st_mode & 07777) != mode && fchmod(fd, mode) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: chmod: %s", path, strerror(errno));
  close(fd);
  return rc;
}

tl_status tl_store_fix_permissions(const char *path, tl_error *err)
{
  tl_error_clear(err);
  char side[PATH_MAX];
  if (!path)
    return tl__err(err, TL_EINVAL, 0, "doctor: no path");
  tl_status rc = fix_mode(path, 0600, 1, err);
  if (rc != TL_OK)
    return rc;
  snprintf(side, sizeof side, "%s-wal", path);
  if ((rc = fix_mode(side, 0600, 0, err)) != TL_OK)
    return rc;
  snprintf(side, sizeof side, "%s-shm", path);
  if ((rc = fix_mode(side, 0600, 0, err)) != TL_OK)
    return rc;
  snprintf(side, sizeof side, "%s-wlock", path);
  return fix_mode(side, 0600, 0, err);
}

static tl_status add_check(tl_report *r, int *problems, const char *check, int ok, const char *detail, tl_error *err)
{
  const char *cells[3] = {check, ok ? "1" : "0", detail};
  const int num[3] = {0, 1, 0};
  if (!ok)
    (*problems)++;
  return tl__report_add_row(r, cells, num, err);
}

static int64_t count_of(tl_store *s, const char *sql)
{
  sqlite3_stmt *st = NULL;
  int64_t n = -1;
  if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

tl_status tl_doctor(tl_report **out, int *out_problems, tl_store *s, int fix, tl_error *err)
{
  tl_error_clear(err);
  static const char *const cols[] = {"check", "ok", "detail"};
  tl_report *r = NULL;
  tl_status rc;
  int problems = 0;
  char detail[512];
  if (!out || !out_problems || !s)
    return tl__err(err, TL_EINVAL, 0, "doctor: bad arguments");
  if ((rc = tl__report_kv(&r, cols, 3, err)) != TL_OK)
    return rc;

  /* 1. SQLite's own integrity check. */
  {
    sqlite3_stmt *st = NULL;
    detail[0] = '\0';
    int ok = 0;
    if (sqlite3_prepare_v2(s->db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      const char *t = (const char *)sqlite3_column_text(st, 0);
      ok = t && strcmp(t, "ok") == 0;
      snprintf(detail, sizeof detail, "%s", t ? t : "");
    } else {
      snprintf(detail, sizeof detail, "%s", sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
    if ((rc = add_check(r, &problems, "integrity", ok, detail, err)) != TL_OK)
      goto done;
    int64_t fk = count_of(s, "SELECT count(*) FROM pragma_foreign_key_check");
    snprintf(detail, sizeof detail, "%lld dangling reference(s)", (long long)fk);
    if ((rc = add_check(r, &problems, "foreign_keys", fk == 0, detail, err)) != TL_OK)
      goto done;
  }

  /* 2. File and directory modes. */
  {
    struct stat st;
    int ok = stat(s->path, &st) == 0 && (st.st_mode & 077) == 0 && st.st_uid == geteuid();
    snprintf(detail, sizeof detail, "%s mode %04o", s->path, ok || stat(s->path, &st) == 0 ? st.st_mode & 07777 : 0);
    if ((rc = add_check(r, &problems, "file_mode", ok, detail, err)) != TL_OK)
      goto done;
    char *copy = strdup(s->path);
    if (!copy) {
      rc = tl__oom(err);
      goto done;
    }
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
    int dok = stat(dir, &st) == 0 && (st.st_mode & 077) == 0;
    snprintf(detail, sizeof detail, "%s mode %04o%s", dir, (unsigned)(st.st_mode & 07777),
             dok ? "" : " (others can list the ledger's directory; 'chmod 700' it if it is yours alone)");
    free(copy);
    /* A shared directory is a warning, not a refusal: the file itself is 0600. */
    if ((rc = add_check(r, &problems, "directory_mode", 1, detail, err)) != TL_OK)
      goto done;
  }

  /* 3. Journal mode. */
  {
    sqlite3_stmt *st = NULL;
    int ok = 0;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      ok = sqlite3_column_text(st, 0) && strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if ((rc = add_check(r, &problems, "wal", ok, ok ? "journal_mode=wal" : "journal_mode is not wal", err)) != TL_OK)
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
      int64_t n = count_of(s, inv[i].sql);
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
             stale && fix ? ": recorded as unknown"
             : stale      ? "; 'doctor --fix' records them as unknown"
                          : "");
    if ((rc = add_check(r, &problems, "stale_in_flight", stale == 0 || fix, detail, err)) != TL_OK)
      goto done;
  }

  /* 6. Things an operator must decide. */
  {
    int64_t unknown = count_of(s, "SELECT count(*) FROM credential WHERE status = 'uncertain'");
    snprintf(detail, sizeof detail, "%lld credential(s) with an unknown refresh outcome; see 'tokenledger recover'",
             (long long)unknown);
    if ((rc = add_check(r, &problems, "unknown_outcomes", unknown == 0, detail, err)) != TL_OK)
      goto done;
    int64_t reauth = count_of(s, "SELECT count(*) FROM credential WHERE status = 'needs_reauth'");
    snprintf(detail, sizeof detail, "%lld credential(s) need a new login", (long long)reauth);
    if ((rc = add_check(r, &problems, "needs_reauth", reauth == 0, detail, err)) != TL_OK)
      goto done;
  }

  /* 7. Strict profiles need a serve that answers on the port its port file names. */
  {
    int ok = 1;
    tl__strict_doctor(&ok, detail, sizeof detail, s);
    if ((rc = add_check(r, &problems, "strict_serve", ok, detail, err)) != TL_OK)
      goto done;
  }
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
      "DELETE FROM refresh_attempt WHERE outcome NOT IN ('in_flight', 'unknown') AND finished_at < :cutoff AND rt_id "
      "IN (SELECT id FROM refresh_token WHERE state IN ('rotated', 'rejected', 'retired'))";
  tl_status rc;
  if (!s || keep_ms < 0)
    return tl__err(err, TL_EINVAL, 0, "compact: bad arguments");
  int64_t before = file_bytes(s);
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
  if ((rc = tl__exec(s, "VACUUM; PRAGMA wal_checkpoint(TRUNCATE);", err)) != TL_OK)
    return rc;
  if (out_deleted)
    *out_deleted = deleted;
  if (out_before)
    *out_before = before;
  if (out_after)
    *out_after = file_bytes(s);
  return TL_OK;
}
