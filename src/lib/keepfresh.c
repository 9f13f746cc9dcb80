/*
 * keepfresh.c - keep-fresh: refresh every grant ahead of its access token's
 * expiry and keep every Hermes file in step, so Hermes always finds a fresh
 * access token and never needs to spend a refresh token itself; and the
 * inotify watch that brings a rotation Hermes made in one profile to every
 * sibling file and the shared store at once.
 *
 * Invariants: a round never presents a credential with an unknown outcome or
 * one needing a login, and never one whose provider has no endpoint (those are
 * reported as needing attention, not as failures); a Hermes file that cannot
 * be read is a row of its own (sync:unreadable), not a failure to retry, and
 * the other files are still synced; every refresh is the
 * cooperative one (adopt under Hermes' locks first), so keep-fresh never
 * presents a token Hermes already rotated. A round ends with the WAL emptied
 * (db.c, tl__wal_scrub) when no reader needs it, so no spent token waits there.
 */
#include "hermes.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const cols[] = {"credential", "provider", "action", "expires", "detail"};

static tl_status add(tl_report *r, int64_t cred, const char *provider, const char *action, int64_t expires,
                     const char *detail, tl_error *err)
{
  char idt[32] = "", when[40] = "";
  if (cred)
    snprintf(idt, sizeof idt, "%lld", (long long)cred);
  if (expires)
    tl__hf_iso(when, sizeof when, expires, 0, 1);
  const char *cells[5] = {cred ? idt : NULL, provider, action, *when ? when : NULL, detail};
  const int num[5] = {1, 0, 0, 0, 0};
  return tl__report_add_row(r, cells, num, err);
}

typedef struct due {
  int64_t id;
  char provider[130];
} due;

/* Credentials a pool holds: report the ones that must not be presented, collect the due ones. */
static tl_status survey(due **out, size_t *n, tl_report *r, tl_store *s, int64_t ahead_ms, tl_error *err)
{
  static const char sql[] =
      "SELECT c.id, c.provider, c.status, coalesce(c.expires_at, 0), coalesce(c.token_url, pv.token_url) IS NOT NULL "
      "AND coalesce(c.client_id, pv.client_id) IS NOT NULL, coalesce(c.refresh_not_before, 0) FROM credential c "
      "JOIN provider pv ON pv.name = c.provider WHERE EXISTS (SELECT 1 FROM pool_entry e WHERE e.credential_id = "
      "c.id) ORDER BY c.id";
  size_t cap = 0;
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  if (rc != TL_OK)
    return rc;
  int64_t now = tl__now_ms();
  while (rc == TL_OK && sqlite3_step(st) == SQLITE_ROW) {
    int64_t id = sqlite3_column_int64(st, 0), exp = sqlite3_column_int64(st, 3), nb = sqlite3_column_int64(st, 5);
    const char *provider = (const char *)sqlite3_column_text(st, 1);
    const char *status = (const char *)sqlite3_column_text(st, 2);
    char detail[300];
    if (strcmp(status, "uncertain") == 0) {
      rc = add(r, id, provider, "attention", exp, "unknown outcome: it waits for a decision", err);
    } else if (strcmp(status, "active") != 0) {
      rc = add(r, id, provider, "attention", exp, "needs a new login", err);
    } else if (exp && exp - ahead_ms > now) {
      rc = add(r, id, provider, "fresh", exp, NULL, err);
    } else if (!sqlite3_column_int(st, 4)) {
      snprintf(detail, sizeof detail, "provider %s has no token endpoint or client id", provider);
      rc = add(r, id, provider, "attention", exp, detail, err);
    } else if (nb > now) {
      snprintf(detail, sizeof detail, "the token endpoint asked to wait %lld s more", (long long)((nb - now) / 1000));
      rc = add(r, id, provider, "waiting", exp, detail, err);
    } else {
      if (*n == cap) {
        cap = cap ? cap * 2 : 16;
        due *nv = realloc(*out, cap * sizeof *nv);
        if (!nv) {
          rc = tl__oom(err);
          break;
        }
        *out = nv;
      }
      (*out)[*n].id = id;
      snprintf((*out)[*n].provider, sizeof(*out)[*n].provider, "%s", provider);
      (*n)++;
    }
  }
  sqlite3_reset(st);
  return rc;
}

/* The sync's news, one row per file that changed. */
static tl_status add_sync_rows(tl_report *r, const tl_report *sr, tl_error *err)
{
  tl_status rc = TL_OK;
  for (size_t i = 0; sr && i < tl_report_rows(sr) && rc == TL_OK; i++) {
    const char *action = tl_report_get(sr, i, "action");
    if (!action || strcmp(action, "unchanged") == 0)
      continue;
    char detail[PATH_MAX + 200], what[64];
    const char *cred = tl_report_get(sr, i, "credential");
    const char *note = strcmp(action, "unreadable") == 0 ? tl_report_get(sr, i, "note") : NULL;
    if (note) /* the note names the file and why */
      snprintf(detail, sizeof detail, "%s %.900s", tl_report_get(sr, i, "profile"), note);
    else
      snprintf(detail, sizeof detail, "%s %s%s%s", tl_report_get(sr, i, "profile"), tl_report_get(sr, i, "file"),
               strcmp(tl_report_get(sr, i, "path"), "$") ? " " : "",
               strcmp(tl_report_get(sr, i, "path"), "$") ? tl_report_get(sr, i, "path") : "");
    snprintf(what, sizeof what, "sync:%s", action);
    const char *p = tl_report_get(sr, i, "provider");
    rc = add(r, cred ? strtoll(cred, NULL, 10) : 0, p, what, 0, detail, err);
  }
  return rc;
}

tl_status tl_keep_fresh(tl_report **out, int *out_failures, tl_store *s, int64_t ahead_ms, int sync, tl_error *err)
{
  tl_error_clear(err);
  tl_report *r = NULL;
  due *list = NULL;
  size_t n = 0;
  int failures = 0;
  tl_status rc;
  if (!out || !out_failures || !s || ahead_ms < 0)
    return tl__err(err, TL_EINVAL, 0, "keep-fresh: bad arguments");
  if ((rc = tl__report_kv(&r, cols, 5, err)) != TL_OK)
    return rc;
  if ((rc = survey(&list, &n, r, s, ahead_ms, err)) != TL_OK)
    goto done;
  for (size_t i = 0; i < n && rc == TL_OK; i++) {
    tl_token *t = NULL;
    tl_error one = {0};
    tl_status frc = tl__coop_refresh(&t, s, list[i].id, 0, 0, ahead_ms, &one);
    const char *action = frc != TL_OK ? "failed" : t && t->refreshed ? "refreshed" : "fresh";
    if (frc != TL_OK)
      failures++;
    rc = add(r, list[i].id, list[i].provider, action, t ? t->expires_at_ms : 0, frc == TL_OK ? NULL : one.message, err);
    tl_token_free(t);
  }
  if (rc == TL_OK && sync) {
    tl_report *sr = NULL;
    tl_error serr = {0};
    tl_status src = tl_sync(&sr, s, NULL, &serr);
    if (src != TL_OK && !sr) {
      failures++;
      rc = add(r, 0, NULL, "failed", 0, serr.message, err);
    } else {
      rc = add_sync_rows(r, sr, err); /* an unreadable file is a row "sync:unreadable": not transient */
    }
    tl_report_free(sr);
  }
done:
  free(list);
  /* Whatever this round or another process erased (a refresh whose scrub a reader blocked, a CLI that exited
   * while this process kept the ledger open), the WAL does not keep it past the round. */
  tl__wal_scrub(s, 1);
  if (rc == TL_OK) {
    *out = r;
    *out_failures = failures;
  } else {
    tl_report_free(r);
  }
  return rc;
}

/* ---- the watch ------------------------------------------------------------------------ */

#define TL_WATCH_MAX 4096

struct tl_watch {
  int fd;
  struct {
    int wd;
    char *dir;
  } * dirs;
  size_t ndirs;
  char **changed; /* files written since the last tl_watch_sync */
  size_t nchanged;
};

static void watch_dir(tl_watch *w, const char *dir)
{
  struct stat st;
  if (w->ndirs >= TL_WATCH_MAX || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return;
  int wd = inotify_add_watch(w->fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_ONLYDIR);
  if (wd < 0)
    return;
  for (size_t i = 0; i < w->ndirs; i++)
    if (w->dirs[i].wd == wd)
      return; /* the same directory twice */
  void *nv = realloc(w->dirs, (w->ndirs + 1) * sizeof *w->dirs);
  char *copy = strdup(dir);
  if (!nv || !copy) {
    free(copy);
    if (nv)
      w->dirs = nv;
    return;
  }
  w->dirs = nv;
  w->dirs[w->ndirs].wd = wd;
  w->dirs[w->ndirs].dir = copy;
  w->ndirs++;
}

tl_status tl_watch_open(tl_watch **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "SELECT home FROM profile WHERE home IS NOT NULL UNION SELECT substr(place, 8) FROM "
                            "grant_place WHERE profile_id IS NULL UNION SELECT path FROM hermes_file WHERE kind = "
                            "'shared_nous'";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "watch: bad arguments");
  *out = NULL;
  tl_watch *w = calloc(1, sizeof *w);
  if (!w)
    return tl__oom(err);
  w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w->fd < 0) {
    int e = errno;
    free(w);
    return tl__err(err, TL_EIO, e, "inotify: %s", strerror(e));
  }
  sqlite3_stmt *st;
  tl_status prc = tl__prepare(&st, s, sql, err);
  if (prc != TL_OK) {
    tl_watch_free(w);
    return prc;
  }
  const char *env = getenv("HERMES_SHARED_AUTH_DIR");
  if (env && *env)
    watch_dir(w, env);
  while (sqlite3_step(st) == SQLITE_ROW) {
    char dir[PATH_MAX + 32];
    const char *p = (const char *)sqlite3_column_text(st, 0);
    size_t l = strlen(p);
    if (l > 5 && strcmp(p + l - 5, ".json") == 0) {
      snprintf(dir, sizeof dir, "%s", p); /* a shared store: watch its directory */
      char *slash = strrchr(dir, '/');
      if (slash)
        *slash = '\0';
      watch_dir(w, dir);
      continue;
    }
    watch_dir(w, p);
    /* the shared store of a root, even before tokenledger has seen it */
    snprintf(dir, sizeof dir, "%s/shared", p);
    watch_dir(w, dir);
  }
  sqlite3_reset(st);
  *out = w;
  return TL_OK;
}

static void note_change(tl_watch *w, const char *dir, const char *name)
{
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
    return;
  for (size_t i = 0; i < w->nchanged; i++)
    if (strcmp(w->changed[i], path) == 0)
      return;
  char **nv = realloc(w->changed, (w->nchanged + 1) * sizeof *nv);
  if (!nv)
    return;
  w->changed = nv;
  if ((w->changed[w->nchanged] = strdup(path)))
    w->nchanged++;
}

/* Waits up to timeout_ms for a change of an auth.json or nous_auth.json; *changed tells. */
tl_status tl_watch_wait(tl_watch *w, int timeout_ms, int *changed, tl_error *err)
{
  tl_error_clear(err);
  if (!w || !changed)
    return tl__err(err, TL_EINVAL, 0, "watch: bad arguments");
  *changed = 0;
  struct pollfd p = {.fd = w->fd, .events = POLLIN};
  int n = w->nchanged ? 1 : poll(&p, 1, timeout_ms);
  if (n < 0)
    return errno == EINTR ? TL_OK : tl__err(err, TL_EIO, errno, "watch: %s", strerror(errno));
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  for (;;) {
    ssize_t len = read(w->fd, buf, sizeof buf);
    if (len <= 0)
      break;
    for (char *q = buf; q < buf + len;) {
      struct inotify_event *ev = (struct inotify_event *)(void *)q;
      if (ev->len && (strcmp(ev->name, "auth.json") == 0 || strcmp(ev->name, "nous_auth.json") == 0))
        for (size_t i = 0; i < w->ndirs; i++)
          if (w->dirs[i].wd == ev->wd)
            note_change(w, w->dirs[i].dir, ev->name);
      q += sizeof *ev + ev->len;
    }
  }
  *changed = w->nchanged > 0;
  return TL_OK;
}

tl_status tl_watch_sync(tl_report **out, tl_watch *w, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char *const sync_cols[] = {"profile", "file", "path", "provider", "credential", "action", "note"};
  tl_report *r = NULL;
  if (!out || !w || !s)
    return tl__err(err, TL_EINVAL, 0, "watch sync: bad arguments");
  *out = NULL;
  tl_status rc = tl__report_kv(&r, sync_cols, 7, err);
  if (rc == TL_OK)
    rc = tl__sync_paths(r, s, w->changed, w->nchanged, err);
  for (size_t i = 0; i < w->nchanged; i++)
    free(w->changed[i]);
  w->nchanged = 0;
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

void tl_watch_free(tl_watch *w)
{
  if (!w)
    return;
  if (w->fd >= 0)
    close(w->fd);
  for (size_t i = 0; i < w->ndirs; i++)
    free(w->dirs[i].dir);
  free(w->dirs);
  for (size_t i = 0; i < w->nchanged; i++)
    free(w->changed[i]);
  free(w->changed);
  free(w);
}
