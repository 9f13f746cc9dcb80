/*
 * hermes_sync.c - Hermes' files kept in step with the ledger under Hermes' own
 * locks: sync, export, the write-back after every rotation, and the
 * cooperative refresh.
 *
 * An operation works on a set of files: profile homes' auth.json and shared
 * Nous stores. It takes their locks in Hermes' order (each profile's
 * auth.lock sorted by path, the root's last, then nous_auth.lock: Hermes
 * never takes an auth.lock while it holds nous_auth.lock), re-reads every file
 * under the locks, adopts what Hermes changed (hermes_adopt.c), does its work,
 * writes the ledger's state back into every file in Hermes' shape, and
 * releases the locks in reverse order.
 *
 * Invariants kept here:
 *   - Adopt before present: a refresh of a credential that lives in Hermes
 *     files presents its RT only after adopting, under the locks, what those
 *     files hold now, and keeps the locks until every file holding the grant
 *     has the result. Locks not had in time: nothing is presented (TL_EBUSY).
 *   - Whether a file is locked and adopted is decided by what it holds: only a
 *     strict file in strict form (surrogates) is left unlocked, its profile's
 *     strict epoch noted for the claim to compare (a switch meanwhile makes
 *     the refresh choose its files again), and it takes the new surrogate
 *     after the refresh when its lock is free (never waited for: its Hermes
 *     may be the caller, through serve). Every write into a strict profile's
 *     file is in strict form.
 *   - No file lock is ever waited for while the ledger's write lock is held.
 *   - Nothing ever writes over a refresh token the ledger does not know: such
 *     a slot is adopted first, or left exactly as it is (a deferred adoption),
 *     and a copy outside the profile's home is refused.
 *   - A slot is only ever filled with a grant its profile holds (a pool entry
 *     or a place of that profile) or, for a shared store, the grant its place
 *     names. The shared store is rewritten with every change of its grant and
 *     removed when the grant dies, as Hermes does. Hermes' Anthropic login file
 *     beside a home's auth.json (.anthropic_oauth.json) is rewritten only when
 *     it holds a token the ledger knows as spent (Hermes re-seeds its pool row
 *     from it).
 *   - A file is rewritten only when something other than the derived
 *     expires_in / agent_key_expires_in fields changes.
 *   - One bad file never stops the rest: a file that cannot be read as a
 *     Hermes file leaves the operation untouched (nothing adopted from it,
 *     nothing written over it), is reported as "unreadable", and the others
 *     are synced; the operation then returns TL_EFILE with its report.
 *
 * It also answers what a sync does not cover, for doctor and the CLI: the
 * files it cannot read, and the Hermes homes under the ledger's roots that
 * hold grants no profile keeps (tl_hermes_new_homes; reported, never adopted).
 */
#include "hermes.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TL_COOP_LOCK_POLL_MS 250

static const char *const report_cols[] = {"profile", "file", "path", "provider", "credential", "action", "note"};

/* ---- locks --------------------------------------------------------------------------- */

int64_t tl__lock_timeout(const tl_store *s)
{
  return s && s->lock_timeout_ms > 0 ? s->lock_timeout_ms : tl__hf_lock_timeout_ms();
}

/* Hermes' order: profiles by path, the root's auth.lock last, then the shared stores. */
static int lock_order(const void *x, const void *y)
{
  const tl__hf *a = x, *b = y;
  if (a->shared != b->shared)
    return a->shared ? 1 : -1;
  if (a->is_root != b->is_root)
    return a->is_root ? 1 : -1;
  return strcmp(a->lock, b->lock);
}

void tl__hfset_unlock(tl__hfset *set)
{
  for (size_t i = set->n; i-- > 0;) {
    tl__hf_unlock(set->v[i].lock_fd);
    set->v[i].lock_fd = -1;
  }
}

static void enough_descriptors(size_t n)
{
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= n + 64)
    return;
  rlim_t want = (rlim_t)(n + 64);
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

/*
 * Takes every lock of the set in order. A lock busy for more than a short poll
 * makes us release everything we hold and start over, so we never keep Hermes
 * waiting on a lock we hold while we wait for another.
 */
tl_status tl__hfset_lock(tl__hfset *set, int64_t deadline, tl_error *err)
{
  qsort(set->v, set->n, sizeof *set->v, lock_order);
  enough_descriptors(set->n);
  for (unsigned round = 0;; round++) {
    size_t i;
    tl_status rc = TL_OK;
    tl_error sub = {0};
    for (i = 0; i < set->n; i++) {
      /* Dedup: two paths can share a lock file (never in Hermes' layout, but cheap to allow). */
      int dup = 0;
      for (size_t k = 0; k < i && !dup; k++)
        dup = strcmp(set->v[k].lock, set->v[i].lock) == 0;
      if (dup)
        continue;
      if ((rc = tl__hf_lock(&set->v[i].lock_fd, set->v[i].lock, deadline, i ? TL_COOP_LOCK_POLL_MS : 0, &sub)) != TL_OK)
        break;
    }
    if (rc == TL_OK)
      return TL_OK;
    tl__hfset_unlock(set);
    if (rc != TL_EBUSY || tl__now_ms() >= deadline) {
      if (err && err->code == TL_OK)
        *err = sub;
      return rc;
    }
    tl__sleep_us((10 + (int64_t)((round * 7919u + (unsigned)getpid()) % 40)) * 1000);
  }
}

/* ---- which files hold a grant ------------------------------------------------------------ */

static void root_of(char *out, size_t n, const char *home)
{
  snprintf(out, n, "%s", home);
  char *slash = strrchr(out, '/');
  if (!slash)
    return;
  if (strcmp(slash + 1, "") != 0) {
    char *prev = slash;
    *prev = '\0';
    char *pslash = strrchr(out, '/');
    const char *parent = pslash ? pslash + 1 : out;
    if (strcmp(parent, "profiles") == 0) {
      if (pslash == out)
        out[1] = '\0';
      else if (pslash)
        *pslash = '\0';
      return;
    }
    *prev = '/';
  }
}

/* The shared Nous store Hermes uses for a home: $HERMES_SHARED_AUTH_DIR, else <root>/shared. */
static void shared_for_home(char *out, size_t n, const char *home)
{
  const char *env = getenv("HERMES_SHARED_AUTH_DIR");
  if (env && *env) {
    snprintf(out, n, "%s/nous_auth.json", env);
    return;
  }
  char root[PATH_MAX];
  root_of(root, sizeof root, home);
  snprintf(out, n, "%s/shared/nous_auth.json", root);
}

static int exists(const char *p)
{
  struct stat st;
  return lstat(p, &st) == 0;
}

/* A shared store: only if it exists, or (a place the ledger keeps) if its directory does. */
static tl_status add_shared(tl__hfset *set, const char *path, int only_existing, tl_error *err)
{
  char real[PATH_MAX], dir[PATH_MAX];
  if (only_existing && !exists(path))
    return TL_OK;
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  struct stat st;
  if (slash)
    *slash = '\0';
  if (!slash || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return TL_OK;
  return tl__hfset_add(set, realpath(path, real) ? real : path, 0, NULL, 1, 1, err);
}

static tl_status add_home(tl__hfset *set, const char *home, int64_t profile, const char *name, int only_existing,
                          tl_error *err)
{
  char file[PATH_MAX + 16];
  if (snprintf(file, sizeof file, "%s/auth.json", home) >= PATH_MAX)
    return tl__err(err, TL_EINVAL, 0, "%.200s...: path too long", home);
  if (only_existing && !exists(file))
    return TL_OK;
  struct stat st;
  if (stat(home, &st) != 0 || !S_ISDIR(st.st_mode))
    return TL_OK; /* a home that is gone holds nothing */
  return tl__hfset_add(set, file, profile, name, 0, 1, err);
}

tl_status tl__hfset_for_credential(tl__hfset *set, tl_store *s, int64_t cred, tl_error *err)
{
  static const char homes_sql[] =
      "SELECT p.id, p.name, p.home FROM profile p WHERE p.home IS NOT NULL AND (EXISTS (SELECT 1 FROM pool_entry e "
      "WHERE e.profile_id = p.id AND e.credential_id = :c) OR EXISTS (SELECT 1 FROM grant_place g WHERE g.profile_id "
      "= p.id AND g.credential_id = :c)) ORDER BY p.name";
  static const char shared_sql[] =
      "SELECT substr(place, 8) FROM grant_place WHERE profile_id IS NULL AND credential_id = :c";
  static const char nous_sql[] = "SELECT provider = 'nous' FROM credential WHERE id = :c";
  int64_t nous = 0;
  int found = 0;
  sqlite3_stmt *st;
  tl_status rc = TL_Q_INT(&nous, s, nous_sql, err, TL_INT(":c", cred));
  if (rc != TL_OK || (rc = tl__prepare(&st, s, homes_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "homes", err)) == TL_OK && found) {
    const char *home = (const char *)sqlite3_column_text(st, 2);
    rc = add_home(set, home, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1), 1, err);
    if (rc == TL_OK && nous) {
      char shared[PATH_MAX + 64];
      shared_for_home(shared, sizeof shared, home);
      rc = add_shared(set, shared, 1, err);
    }
    if (rc != TL_OK)
      break;
  }
  sqlite3_reset(st);
  if (rc != TL_OK || (rc = tl__prepare(&st, s, shared_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "shared stores", err)) == TL_OK && found &&
         (rc = add_shared(set, (const char *)sqlite3_column_text(st, 0), 0, err)) == TL_OK)
    ;
  sqlite3_reset(st);
  return rc;
}

/* Every profile's home and every shared store the ledger knows. */
static tl_status set_for_all(tl__hfset *set, tl_store *s, tl_error *err)
{
  static const char homes_sql[] = "SELECT id, name, home FROM profile WHERE home IS NOT NULL ORDER BY name";
  static const char shared_sql[] = "SELECT substr(place, 8) FROM grant_place WHERE profile_id IS NULL UNION SELECT "
                                   "path FROM hermes_file WHERE kind = 'shared_nous'";
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc = tl__prepare(&st, s, homes_sql, err);
  if (rc != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "homes", err)) == TL_OK && found) {
    const char *home = (const char *)sqlite3_column_text(st, 2);
    char shared[PATH_MAX + 64];
    shared_for_home(shared, sizeof shared, home);
    if ((rc = add_home(set, home, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1), 0, err)) !=
            TL_OK ||
        (rc = add_shared(set, shared, 1, err)) != TL_OK)
      break;
  }
  sqlite3_reset(st);
  if (rc != TL_OK || (rc = tl__prepare(&st, s, shared_sql, err)) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "shared stores", err)) == TL_OK && found &&
         (rc = add_shared(set, (const char *)sqlite3_column_text(st, 0), 0, err)) == TL_OK)
    ;
  sqlite3_reset(st);
  return rc;
}

/* A profile's home file, every file holding one of its grants, and the shared store of its root. */
static tl_status set_for_profile(tl__hfset *set, tl_store *s, int64_t profile, const char *name, const char *home,
                                 tl_error *err)
{
  static const char creds_sql[] =
      "SELECT credential_id FROM pool_entry WHERE profile_id = :p AND credential_id IS NOT NULL UNION SELECT "
      "credential_id FROM grant_place WHERE profile_id = :p";
  tl_status rc = add_home(set, home, profile, name, 0, err);
  int64_t *creds = NULL;
  size_t n = 0;
  int found = 0;
  sqlite3_stmt *st;
  if (rc != TL_OK || (rc = tl__prepare(&st, s, creds_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":p", profile))) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "credentials", err)) == TL_OK && found) {
    int64_t *nv = realloc(creds, (n + 1) * sizeof *nv);
    if (!nv) {
      sqlite3_reset(st);
      free(creds);
      return tl__oom(err);
    }
    creds = nv;
    creds[n++] = sqlite3_column_int64(st, 0);
  }
  sqlite3_reset(st);
  for (size_t i = 0; i < n && rc == TL_OK; i++)
    rc = tl__hfset_for_credential(set, s, creds[i], err);
  free(creds);
  char shared[PATH_MAX + 64];
  shared_for_home(shared, sizeof shared, home);
  if (rc == TL_OK)
    rc = add_shared(set, shared, 1, err);
  return rc;
}

/* ---- the ledger's side of a grant ------------------------------------------------------------- */

typedef struct credinfo {
  int64_t id, exp, obtained;
  char status[16], rtstate[16], provider[130];
  char *at, *rt, *idt; /* secrets */
  char *scope, *client_id, *token_url, *label;
  json_t *extra;
  char portal[2100];
} credinfo;

static void credinfo_clear(credinfo *c)
{
  tl_secret_free(c->at);
  tl_secret_free(c->rt);
  tl_secret_free(c->idt);
  free(c->scope);
  free(c->client_id);
  free(c->token_url);
  free(c->label);
  json_decref(c->extra);
  memset(c, 0, sizeof *c);
}

static tl_status load_cred(credinfo *c, tl_store *s, int64_t id, tl_error *err)
{
  static const char sql[] =
      "SELECT c.status, c.access_token, coalesce(c.expires_at, 0), coalesce(c.obtained_at, 0), c.extra, t.secret, "
      "t.state, c.provider, c.scope, c.client_id, c.token_url, c.label, c.id_token FROM credential c LEFT JOIN "
      "refresh_token t "
      "ON t.credential_id = c.id AND t.state IN ('current', 'presented', 'unknown') WHERE c.id = :id";
  memset(c, 0, sizeof *c);
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", id))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential", err)) != TL_OK)
    return rc;
  if (!found)
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)id);
  c->id = id;
  snprintf(c->status, sizeof c->status, "%s", (const char *)sqlite3_column_text(st, 0));
  c->at = tl__col_dup(st, 1);
  c->exp = sqlite3_column_int64(st, 2);
  c->obtained = sqlite3_column_int64(st, 3);
  c->extra = json_loads((const char *)sqlite3_column_text(st, 4), 0, NULL);
  c->rt = tl__col_dup(st, 5);
  snprintf(c->rtstate, sizeof c->rtstate, "%s",
           sqlite3_column_text(st, 6) ? (const char *)sqlite3_column_text(st, 6) : "");
  snprintf(c->provider, sizeof c->provider, "%s", (const char *)sqlite3_column_text(st, 7));
  c->scope = tl__col_dup(st, 8);
  c->client_id = tl__col_dup(st, 9);
  c->token_url = tl__col_dup(st, 10);
  c->label = tl__col_dup(st, 11);
  c->idt = tl__col_dup(st, 12);
  sqlite3_reset(st);
  const char *u = c->token_url ? strstr(c->token_url, "/api/oauth/token") : NULL;
  if (u && strcmp(c->provider, "nous") == 0)
    snprintf(c->portal, sizeof c->portal, "%.*s", (int)(u - c->token_url), c->token_url);
  return TL_OK;
}

static int usable(const credinfo *c)
{
  return strcmp(c->status, "active") == 0 && c->rt && c->at && strcmp(c->rtstate, "current") == 0;
}

static tl__grant grant_of(const credinfo *c, int64_t now)
{
  tl__grant g = {.provider = c->provider,
                 .access_token = c->at,
                 .refresh_token = c->rt,
                 .id_token = c->idt,
                 .expires_ms = c->exp,
                 .obtained_ms = c->obtained ? c->obtained : now,
                 .now_ms = now,
                 .scope = c->scope,
                 .client_id = c->client_id,
                 .portal_base_url = c->portal[0] ? c->portal : NULL};
  json_t *v = json_object_get(c->extra, "token_type");
  g.token_type = json_is_string(v) ? json_string_value(v) : NULL;
  v = json_object_get(c->extra, "inference_base_url");
  g.inference_base_url = json_is_string(v) ? json_string_value(v) : NULL;
  return g;
}

/* The profile's first usable grant for a provider (what a new login gives it). */
static tl_status primary_cred(int64_t *out, tl_store *s, int64_t profile, const char *provider, int64_t not,
                              tl_error *err)
{
  static const char sql[] =
      "SELECT e.credential_id FROM pool_entry e JOIN credential c ON c.id = e.credential_id WHERE e.profile_id = :p "
      "AND e.provider = :prov AND c.status = 'active' AND e.last_status IS NOT 'dead' AND c.id <> :not AND EXISTS "
      "(SELECT 1 FROM refresh_token t WHERE t.credential_id = c.id AND t.state = 'current') ORDER BY e.priority, e.id "
      "LIMIT 1";
  return TL_Q_INT(out, s, sql, err, TL_INT(":p", profile), TL_TEXT(":prov", provider), TL_INT(":not", not ));
}

static tl_status known_token(int *out, tl_store *s, const char *rt, tl_error *err)
{
  static const char sql[] = "SELECT 1 FROM refresh_token WHERE fingerprint = :fp";
  char fp[65];
  int64_t yes = 0;
  if (tl__hf_is_defused(rt)) {
    *out = 1; /* ours, written over a spent token: the slot is ours to fill */
    return TL_OK;
  }
  tl_fingerprint(fp, rt, strlen(rt));
  tl_status rc = TL_Q_INT(&yes, s, sql, err, TL_TEXT(":fp", fp));
  *out = yes == 1;
  return rc;
}

/* ---- write-back ------------------------------------------------------------------------------ */

typedef struct wb {
  tl_store *s;
  tl__hf *f;
  tl_report *report;
  int64_t now;
  int changed, remove_file;
  int64_t shared_replacement; /* a dead shared grant's successor, from a profile in this set */
  int64_t login;              /* a new login filled the singleton: Hermes' device_code row goes with it */
  int strict;                 /* the file belongs to strict mode: surrogates and serve's URL, never the RT */
  int64_t strict_profile;     /* whose surrogates the file holds */
  char portal[300];           /* serve's URL */
} wb;

/* A recreated document's stashed secrets (hermes_secret), back in place. */
static tl_status unstash(tl_store *s, json_t *v, int64_t file, int depth, tl_error *err)
{
  static const char sql[] = "SELECT secret FROM hermes_secret WHERE file_id = :f AND n = :n";
  tl_status rc = TL_OK;
  if (depth > 64)
    return TL_OK;
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x)
    {
      if ((rc = unstash(s, x, file, depth + 1, err)) != TL_OK)
        return rc;
    }
    return TL_OK;
  }
  const char *k;
  json_t *x;
  void *tmp;
  json_object_foreach_safe(v, tmp, k, x)
  {
    json_t *tag = json_object_get(x, "$tl");
    if (!json_is_string(tag) || strcmp(json_string_value(tag), "secret") != 0) {
      if ((rc = unstash(s, x, file, depth + 1, err)) != TL_OK)
        return rc;
      continue;
    }
    sqlite3_stmt *st;
    int found = 0;
    if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_INT(":f", file), TL_INT(":n", json_integer_value(json_object_get(x, "n"))))) !=
            TL_OK ||
        (rc = tl__step_row(&found, s, st, "hermes secrets", err)) != TL_OK)
      return rc;
    json_object_set_new(v, k, found ? json_string((const char *)sqlite3_column_text(st, 0)) : json_null());
    sqlite3_reset(st);
  }
  return TL_OK;
}

/* References left in a recreated document (a grant no longer held) become nulls. */
static void drop_refs(tl__slot *sl)
{
  static const char *const k[] = {"refresh_token", "access_token", "agent_key"};
  for (size_t i = 0; i < 3; i++)
    if (json_is_object(json_object_get(sl->obj, k[i])))
      json_object_set_new(sl->obj, k[i], json_null());
}

static int nous_device_row(const tl__slot *sl)
{
  json_t *src = json_object_get(sl->obj, "source");
  return sl->kind == TL_SLOT_POOL && strcmp(sl->provider, "nous") == 0 && json_is_string(src) &&
         (strcmp(json_string_value(src), "device_code") == 0 ||
          strcmp(json_string_value(src), "manual:device_code") == 0);
}

/*
 * Strict mode: the slot gets a surrogate instead of the refresh token, and
 * serve's URL as its portal. Surrogates are deterministic per grant and
 * generation, so a file in step is not rewritten.
 */
static tl_status strict_grant(wb *w, const credinfo *c, tl__grant *g, char **surrogate, tl_error *err)
{
  /* One surrogate per grant and generation, whatever file it goes to: its first strict profile's. */
  static const char owner_sql[] =
      "SELECT min(sp.profile_id) FROM strict_profile sp JOIN pool_entry e ON "
      "e.profile_id = sp.profile_id WHERE e.credential_id = :c AND sp.leaving_since IS NULL";
  int64_t owner = 0;
  tl_status rc = TL_Q_INT(&owner, w->s, owner_sql, err, TL_INT(":c", c->id));
  if (rc != TL_OK)
    return rc;
  rc = tl__strict_surrogate(surrogate, w->s, c->id, owner ? owner : w->strict_profile, err);
  if (rc != TL_OK)
    return rc;
  g->refresh_token = *surrogate;
  g->portal_base_url = w->portal;
  return TL_OK;
}

/*
 * The grant as it goes into this file: in strict form (a surrogate and serve's
 * URL) when the file is strict, whichever command writes it (sync, export, a
 * login, a refresh's write-back). *surrogate is freed by the caller.
 */
static tl_status file_grant(wb *w, const credinfo *c, tl__grant *g, char **surrogate, tl_error *err)
{
  *g = grant_of(c, w->now);
  *surrogate = NULL;
  if (w->strict && strcmp(c->provider, "nous") == 0)
    return strict_grant(w, c, g, surrogate, err);
  return TL_OK;
}

/* Fills a slot with the grant in the file's form; 1 if anything changed. */
static int fill_form(wb *w, tl__slot *sl, const tl__grant *g, const char *surrogate)
{
  int changed = tl__hf_fill(sl, g);
  if (surrogate)
    changed |= tl__hf_set_portal(sl, w->portal);
  return changed;
}

static tl_status fill_slot(wb *w, tl__slot *sl, int64_t cred, int *removed, tl_error *err)
{
  credinfo c;
  tl_status rc = load_cred(&c, w->s, cred, err);
  if (rc != TL_OK)
    return rc;
  *removed = 0;
  if (strcmp(c.status, "needs_reauth") == 0) {
    int64_t next = sl->kind == TL_SLOT_SHARED ? w->shared_replacement : 0;
    if (sl->kind != TL_SLOT_SHARED && w->f->profile &&
        (rc = primary_cred(&next, w->s, w->f->profile, sl->provider, cred, err)) != TL_OK) {
      credinfo_clear(&c);
      return rc;
    }
    if (next && sl->kind != TL_SLOT_POOL) {
      /* A new login replaces the dead grant at this place. */
      credinfo n;
      if ((rc = load_cred(&n, w->s, next, err)) == TL_OK) {
        tl__grant g;
        char *surrogate = NULL;
        if ((rc = file_grant(w, &n, &g, &surrogate, err)) != TL_OK) {
          credinfo_clear(&n);
          credinfo_clear(&c);
          return rc;
        }
        w->changed |= fill_form(w, sl, &g, surrogate);
        tl_secret_free(surrogate);
        if (sl->kind == TL_SLOT_SINGLETON)
          w->login = next;
        char place[PATH_MAX + 16];
        snprintf(place, sizeof place, sl->kind == TL_SLOT_SHARED ? "shared:%s" : "%s",
                 sl->kind == TL_SLOT_SHARED ? w->f->path : sl->place);
        rc = tl__place_set(w->s, sl->kind == TL_SLOT_SHARED ? 0 : w->f->profile, place, next, err);
        credinfo_clear(&n);
      }
    } else if (sl->kind == TL_SLOT_SHARED) {
      w->remove_file = 1; /* Hermes deletes the shared store on a terminal failure */
    } else if (nous_device_row(sl)) {
      *removed = 1; /* Hermes removes the device_code rows of a dead Nous grant */
      w->changed = 1;
    } else {
      w->changed |= tl__hf_quarantine(sl, w->now);
    }
  } else if (usable(&c)) {
    tl__grant g;
    int was_empty = !tl__hf_slot_rt(sl) && !tl__hf_ref_cred(json_object_get(sl->obj, "refresh_token"));
    char *surrogate = NULL;
    if ((rc = file_grant(w, &c, &g, &surrogate, err)) != TL_OK) {
      credinfo_clear(&c);
      return rc;
    }
    w->changed |= fill_form(w, sl, &g, surrogate);
    tl_secret_free(surrogate);
    if (was_empty && sl->kind == TL_SLOT_SINGLETON && strcmp(sl->provider, "nous") == 0)
      w->login = cred; /* a quarantined singleton takes a new login: its device_code row comes too */
  }
  /* uncertain: the outcome of our last presentation is open; Hermes' copy stays as it is. */
  credinfo_clear(&c);
  return rc;
}

/* A singleton place remapped to a new login: the shared store of the same dead grant follows. */
static tl_status successor(int64_t *out, tl_store *s, int64_t dead, tl_error *err)
{
  static const char sql[] =
      "SELECT g.credential_id FROM grant_place g JOIN credential c ON c.id = g.credential_id WHERE g.profile_id IS "
      "NOT NULL AND c.status = 'active' AND g.profile_id IN (SELECT profile_id FROM pool_entry WHERE credential_id = "
      ":d) AND c.provider = 'nous' ORDER BY c.created_at DESC LIMIT 1";
  return TL_Q_INT(out, s, sql, err, TL_INT(":d", dead));
}

static json_t *child(json_t *parent, const char *k, int array)
{
  json_t *v = json_object_get(parent, k);
  if (array ? json_is_array(v) : json_is_object(v))
    return v;
  v = array ? json_array() : json_object();
  json_object_set_new(parent, k, v);
  return v;
}

/*
 * Hermes' login state for a profile whose file has no usable Nous grant while
 * the profile has one (a new login, a home set by hand): the singleton, and the
 * device_code row Hermes would seed from it, with the ledger's entry id.
 */
static tl_status ensure_nous(wb *w, tl_error *err)
{
  static const char entry_sql[] = "SELECT entry_id, label, priority FROM pool_entry WHERE profile_id = :p AND "
                                  "credential_id = :c AND entry_id NOT LIKE 'providers.%' ORDER BY priority LIMIT 1";
  tl__hf *f = w->f;
  int64_t cred = w->login;
  if (!cred) {
    for (size_t i = 0; i < f->ss.n; i++)
      if (strcmp(f->ss.v[i].provider, "nous") == 0 && tl__hf_slot_rt(&f->ss.v[i]))
        return TL_OK; /* Hermes has a Nous grant here */
    tl_status prc = primary_cred(&cred, w->s, f->profile, "nous", 0, err);
    if (prc != TL_OK || !cred)
      return prc;
  }
  credinfo c;
  tl_status rc = load_cred(&c, w->s, cred, err);
  if (rc != TL_OK)
    return rc;
  if (!usable(&c)) {
    credinfo_clear(&c);
    return TL_OK;
  }
  tl__grant g;
  char *surrogate = NULL;
  if ((rc = file_grant(w, &c, &g, &surrogate, err)) != TL_OK) {
    credinfo_clear(&c);
    return rc;
  }
  json_t *nous = child(child(f->doc, "providers", 0), "nous", 0);
  if (!nous) {
    tl_secret_free(surrogate);
    credinfo_clear(&c);
    return tl__oom(err);
  }
  if (c.label && !json_object_get(nous, "label"))
    json_object_set_new(nous, "label", json_string(c.label));
  tl__slot sl = {.kind = TL_SLOT_SINGLETON, .obj = nous};
  snprintf(sl.provider, sizeof sl.provider, "nous");
  snprintf(sl.place, sizeof sl.place, "singleton:nous");
  w->changed |= fill_form(w, &sl, &g, surrogate);
  json_t *active = json_object_get(f->doc, "active_provider");
  if (!active || json_is_null(active)) {
    json_object_set_new(f->doc, "active_provider", json_string("nous"));
    w->changed = 1;
  }
  rc = tl__place_set(w->s, f->profile, "singleton:nous", cred, err);
  /* The device_code row Hermes seeds from the singleton, unless a row holds the grant already. */
  json_t *rows = json_object_get(json_object_get(f->doc, "credential_pool"), "nous");
  size_t i;
  json_t *r;
  json_array_foreach(rows, i, r)
  {
    if (json_is_string(json_object_get(r, "refresh_token")) &&
        strcmp(json_string_value(json_object_get(r, "refresh_token")), g.refresh_token) == 0) {
      tl_secret_free(surrogate);
      credinfo_clear(&c);
      return rc;
    }
  }
  sqlite3_stmt *st = NULL;
  int found = 0;
  if (rc == TL_OK && (rc = tl__prepare(&st, w->s, entry_sql, err)) == TL_OK &&
      (rc = TL_BIND(st, err, TL_INT(":p", f->profile), TL_INT(":c", cred))) == TL_OK &&
      (rc = tl__step_row(&found, w->s, st, "pool entry", err)) == TL_OK) {
    if (found) {
      json_t *row = tl__hf_pool_row((const char *)sqlite3_column_text(st, 0),
                                    sqlite3_column_text(st, 1) ? (const char *)sqlite3_column_text(st, 1) : c.label,
                                    sqlite3_column_int64(st, 2));
      tl__slot ps = {.kind = TL_SLOT_POOL, .obj = row};
      snprintf(ps.provider, sizeof ps.provider, "nous");
      tl__hf_fill(&ps, &g);
      /* The row agrees with the singleton on every field Hermes compares, or Hermes rewrites it. */
      static const char *const same[] = {"access_token",         "refresh_token",      "expires_at", "agent_key",
                                         "agent_key_expires_at", "inference_base_url", "tls"};
      for (size_t k = 0; k < sizeof same / sizeof *same; k++)
        if (json_object_get(nous, same[k]))
          json_object_set(row, same[k], json_object_get(nous, same[k]));
      json_array_append_new(child(child(f->doc, "credential_pool", 0), "nous", 1), row);
      w->changed = 1;
    }
    sqlite3_reset(st);
  }
  tl_secret_free(surrogate);
  credinfo_clear(&c);
  return rc;
}

static tl_status load_template(json_t **out, tl_store *s, const char *path, int64_t *synced, tl_error *err)
{
  static const char sql[] = "SELECT template, synced_at, id FROM hermes_file WHERE path = :path";
  sqlite3_stmt *st;
  int found = 0;
  int64_t id = 0;
  tl_status rc;
  *out = NULL;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":path", path))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "hermes file", err)) != TL_OK)
    return rc;
  if (found) {
    *out = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
    if (synced)
      *synced = sqlite3_column_int64(st, 1);
    id = sqlite3_column_int64(st, 2);
    sqlite3_reset(st);
    if (!*out)
      return tl__err(err, TL_ECORRUPT, 0, "%s: the ledger's template of this file is not JSON", path);
  }
  if (*out && (rc = unstash(s, *out, id, 0, err)) != TL_OK) {
    json_decref(*out);
    *out = NULL;
  }
  return rc;
}

/*
 * A template's token references, filled with the credential's tokens when it
 * has not changed since the template was taken: the document comes back
 * exactly as Hermes wrote it (the round-trip law). A credential that changed
 * since keeps its references, and the fill writes every owned field anew.
 */
static tl_status resolve_refs(tl_store *s, tl__slot *sl, int64_t cred, int64_t synced, tl_error *err)
{
  credinfo c;
  tl_status rc;
  if (!synced)
    return TL_OK;
  if ((rc = load_cred(&c, s, cred, err)) != TL_OK)
    return rc;
  if (c.obtained <= synced && c.rt && c.at) {
    static const char *const k[] = {"refresh_token", "access_token", "agent_key"};
    for (size_t i = 0; i < 3; i++) {
      json_t *v = json_object_get(sl->obj, k[i]);
      if (tl__hf_ref_cred(v) == cred)
        json_object_set_new(sl->obj, k[i], json_string(i == 0 ? c.rt : c.at));
    }
  }
  credinfo_clear(&c);
  return TL_OK;
}

static tl_status report_file(tl_report *r, const tl__hf *f, const char *action, const char *note, tl_error *err)
{
  if (!r)
    return TL_OK;
  const char *cells[7] = {f->shared ? "(shared)" : f->profile_name, f->path, "$", NULL, NULL, action, note};
  const int num[7] = {0};
  return tl__report_add_row(r, cells, num, err);
}

/* serve's URL: the running one, else where it last listened. */
int tl__strict_url(char *out, size_t n, tl_store *s)
{
  static const char sql[] = "SELECT host, port FROM serve_state WHERE id = 1";
  tl_error ignore = {0};
  sqlite3_stmt *st;
  int found = 0, ok = 0;
  if (tl__strict_portal_url(out, n, s, &ignore) == TL_OK)
    return 1;
  if (tl__prepare(&st, s, sql, &ignore) != TL_OK || tl__step_row(&found, s, st, "serve state", &ignore) != TL_OK)
    return 0; /* no address known: the callers say "start serve" */
  if (found)
    ok = tl__serve_url(out, n, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int(st, 1)) != 0;
  sqlite3_reset(st);
  return ok;
}

/* Is the file in strict mode, and whose surrogates does it hold? A shared store is when one of its profiles is. */
tl_status tl__hf_strict_owner(int64_t *out, tl_store *s, const tl__hf *f, tl_error *err)
{
  static const char shared_sql[] =
      "SELECT sp.profile_id FROM strict_profile sp JOIN pool_entry e ON e.profile_id = sp.profile_id JOIN grant_place "
      "g ON g.credential_id = e.credential_id WHERE g.profile_id IS NULL AND g.place = :place AND sp.leaving_since "
      "IS NULL ORDER BY sp.profile_id LIMIT 1";
  *out = 0;
  if (!f->shared) {
    *out = f->profile && tl__strict_active(s, f->profile) ? f->profile : 0;
    return TL_OK;
  }
  char place[PATH_MAX + 16];
  snprintf(place, sizeof place, "shared:%s", f->path);
  return TL_Q_INT(out, s, shared_sql, err, TL_TEXT(":place", place));
}

/*
 * A Hermes file's document and slots as they are on disk now, read without
 * its lock (a snapshot). On failure nothing is left to free.
 */
static tl_status load_slots(json_t **doc, tl__slots *ss, const char *path, int shared, tl_error *err)
{
  char sha[65];
  *doc = NULL;
  memset(ss, 0, sizeof *ss);
  tl_status rc = tl__hf_load(doc, sha, NULL, path, err);
  if (rc == TL_OK && (rc = tl__hf_walk(ss, *doc, path, shared ? TL_WALK_SHARED : 0, err)) != TL_OK) {
    tl__hf_slots_free(ss);
    json_decref(*doc);
    *doc = NULL;
  }
  return rc;
}

/*
 * Does the file, as it is on disk now, hold a real refresh token (one that is
 * neither a surrogate nor defused)? Read without its lock: a snapshot is
 * enough to decide whether the file must be locked and adopted. A file that
 * cannot be read is taken as holding one (the caller then locks it and the
 * adopt step reports why it cannot be read).
 */
static int holds_real_rt(const tl__hf *f)
{
  json_t *doc;
  tl_error ignore = {0};
  tl__slots ss;
  tl_status rc = load_slots(&doc, &ss, f->path, f->shared, &ignore);
  if (rc == TL_ENOTFOUND)
    return 0;
  int real = rc != TL_OK;
  for (size_t k = 0; !real && k < ss.n; k++) {
    const char *rt = tl__hf_slot_rt(&ss.v[k]);
    real = rt && !tl__strict_is_surrogate(rt) && !tl__hf_is_defused(rt);
  }
  tl__hf_slots_free(&ss);
  json_decref(doc);
  return real;
}

/*
 * Does the profile's home file agree with its strict flag? A strict profile
 * whose file still holds a real Nous refresh token (a switch on that stopped
 * halfway), or a plain profile whose file holds a surrogate (a switch off
 * that stopped halfway), disagrees: *out = 0 and why names the place. The
 * next sync finishes the switch. A missing or unreadable file agrees (other
 * checks report it).
 */
tl_status tl__strict_files_agree(int *out, char *why, size_t n, tl_store *s, int64_t profile, int expect, tl_error *err)
{
  static const char sql[] = "SELECT home FROM profile WHERE id = :p";
  char *home = NULL, file[PATH_MAX + 16];
  *out = 1;
  if (why && n)
    why[0] = '\0';
  if (expect < 0 && tl__strict_profile(s, profile) && !tl__strict_active(s, profile)) {
    *out = 0; /* a switch off marked the profile and has not finished (it runs, or it was killed) */
    if (why && n)
      snprintf(why, n,
               "a switch off of this profile is running or was interrupted (its Hermes files are written in "
               "plain form while the profile still counts as strict)");
    return TL_OK;
  }
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":p", profile))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profile", err)) != TL_OK)
    return rc;
  home = found ? tl__col_dup(st, 0) : NULL;
  sqlite3_reset(st);
  if (!home)
    return TL_OK;
  int fit = snprintf(file, sizeof file, "%s/auth.json", home) < (int)sizeof file;
  free(home);
  json_t *doc;
  tl_error ignore = {0};
  tl__slots ss;
  if (!fit || load_slots(&doc, &ss, file, 0, &ignore) != TL_OK)
    return TL_OK;
  int strict = expect >= 0 ? expect : tl__strict_active(s, profile);
  for (size_t k = 0; k < ss.n && *out; k++) {
    const char *rt = tl__hf_slot_rt(&ss.v[k]);
    if (!rt || strcmp(ss.v[k].provider, "nous") != 0 || tl__hf_is_defused(rt))
      continue;
    if (strict != tl__strict_is_surrogate(rt)) {
      *out = 0;
      if (why && n)
        snprintf(why, n, "%s: %s holds %s", file, ss.v[k].path,
                 strict ? "a real refresh token although the profile is strict"
                        : "a surrogate although the profile is not strict");
    }
  }
  tl__hf_slots_free(&ss);
  json_decref(doc);
  return TL_OK;
}

/* The port of a plain-http loopback URL (80 if none is given), -1 for anything else. */
static int loopback_port(const char *url)
{
  int loopback = 0;
  tl_error ignore = {0};
  if (!url || strncmp(url, "http://", 7) != 0 || tl__url_classify(&loopback, url, &ignore) != TL_OK || !loopback)
    return -1;
  const char *host = url + 7, *end = host + strcspn(host, "/?#");
  const char *colon = NULL;
  for (const char *p = host; p < end; p++)
    if (*p == ':')
      colon = p;
  if (host[0] == '[') {
    const char *close = memchr(host, ']', (size_t)(end - host));
    colon = close && close + 1 < end && close[1] == ':' ? close + 1 : NULL;
  }
  if (!colon)
    return 80;
  int port = 0;
  size_t len = (size_t)(end - colon - 1);
  if (len == 0 || len > 5) /* libcurl's canonical form (tl__url_classify) has a decimal port */
    return -1;
  for (const char *p = colon + 1; p < end; p++) {
    if (*p < '0' || *p > '9')
      return -1;
    port = port * 10 + (*p - '0');
  }
  return port >= 1 && port <= 65535 ? port : -1;
}

tl_status tl__hf_strict_foreign(int *out, tl_store *s, const tl__hf *f, const tl__slot *sl, int64_t cred, tl_error *err)
{
  static const char sql[] = "SELECT token_url FROM credential WHERE id = :c";
  int64_t owner = 0;
  *out = 0;
  const char *url = tl__hf_slot_loopback_portal(f->doc, sl);
  if (!url)
    return TL_OK;
  tl_status rc = tl__hf_strict_owner(&owner, s, f, err);
  if (rc != TL_OK || !owner)
    return rc;
  char *token_url = NULL;
  if (cred) {
    sqlite3_stmt *st;
    int found = 0;
    if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK ||
        (rc = tl__step_row(&found, s, st, "credential", err)) != TL_OK)
      return rc;
    token_url = found ? tl__col_dup(st, 0) : NULL;
    sqlite3_reset(st);
  }
  /* The grant's own portal on loopback (a test portal, a local proxy the user set), however its loopback
   * host is spelled (localhost, 127.0.0.1, [::1]): Hermes refreshing it, never foreign. */
  int own = loopback_port(url);
  *out = !(token_url && own > 0 && loopback_port(token_url) == own);
  free(token_url);
  return TL_OK;
}

static tl_status write_one(tl_store *s, tl__hf *f, tl_report *report, tl_error *err)
{
  wb w = {.s = s, .f = f, .report = report, .now = tl__now_ms()};
  tl_status rc = tl__hf_strict_owner(&w.strict_profile, s, f, err);
  if (rc != TL_OK)
    return rc;
  if (w.strict_profile) {
    w.strict = 1;
    if (!tl__strict_url(w.portal, sizeof w.portal, s))
      return tl__err(err, TL_ENOTFOUND, 0,
                     "%s: its profile is in strict mode but tokenledger serve has never run for this ledger, so there "
                     "is no loopback portal to point Hermes at yet",
                     f->path);
  }
  int created = f->created;
  int64_t synced = f->template_synced;
  char *text = NULL;
  if (!f->doc) {
    if (!f->is_home)
      return TL_OK;
    if (f->shared)
      f->doc = json_pack("{s:i}", "_schema", 1); /* created only if its grant (or a successor) fills it */
    else if ((rc = load_template(&f->doc, s, f->path, &synced, err)) != TL_OK)
      return rc;
    else if (!f->doc)
      f->doc = json_pack("{s:i, s:{}}", "version", 1, "providers");
    if (!f->doc)
      return tl__oom(err);
    created = 1;
  }
  tl__hf_slots_free(&f->ss);
  if ((rc = tl__hf_walk(&f->ss, f->doc, f->path, TL_WALK_TEMPLATE | (f->shared ? TL_WALK_SHARED : 0), err)) != TL_OK)
    return rc;
  if (f->shared) {
    char place[PATH_MAX + 16];
    snprintf(place, sizeof place, "shared:%s", f->path);
    int64_t c = 0;
    if ((rc = tl__slot_credential(&c, s, f, &f->ss.v[0], err)) != TL_OK)
      return rc;
    if (c) {
      credinfo ci;
      if ((rc = load_cred(&ci, s, c, err)) != TL_OK)
        return rc;
      if (strcmp(ci.status, "needs_reauth") == 0)
        rc = successor(&w.shared_replacement, s, c, err);
      credinfo_clear(&ci);
      if (rc != TL_OK)
        return rc;
    }
  }
  size_t nremove = 0;
  tl__slot **remove = calloc(f->ss.n ? f->ss.n : 1, sizeof *remove);
  if (!remove)
    return tl__oom(err);
  for (size_t i = 0; i < f->ss.n && rc == TL_OK; i++) {
    tl__slot *sl = &f->ss.v[i];
    int64_t cred = 0;
    int known = 1;
    const char *rt = tl__hf_slot_rt(sl);
    if ((rc = tl__slot_credential(&cred, s, f, sl, err)) != TL_OK)
      break;
    if (!cred) {
      drop_refs(sl);
      continue;
    }
    if (rt && !tl__strict_is_surrogate(rt) && (rc = known_token(&known, s, rt, err)) != TL_OK)
      break;
    if (!known && w.strict && (rc = tl__hf_strict_foreign(&known, s, f, sl, cred, err)) != TL_OK)
      break; /* known: a strict file's foreign token (adopt refused it), overwritten with the strict form */
    if (!known)
      continue; /* never overwrite a token the ledger does not know */
    if ((rc = resolve_refs(s, sl, cred, synced, err)) != TL_OK)
      break;
    int removed = 0;
    rc = fill_slot(&w, sl, cred, &removed, err);
    if (removed)
      remove[nremove++] = sl;
  }
  /* Remove rows back to front within their arrays (indices stay valid). */
  for (size_t i = nremove; rc == TL_OK && i-- > 0;) {
    size_t idx;
    json_t *e;
    json_array_foreach(remove[i]->array, idx, e)
    {
      if (e == remove[i]->obj) {
        json_array_remove(remove[i]->array, idx);
        break;
      }
    }
  }
  free(remove);
  if (rc == TL_OK && !f->shared && f->is_home && f->profile)
    rc = ensure_nous(&w, err);
  if (rc != TL_OK)
    return rc;
  if (w.remove_file && created) {
    json_decref(f->doc);
    f->doc = NULL;
    return TL_OK;
  }
  if (w.remove_file) {
    if ((rc = tl__hf_remove(f->path, err)) != TL_OK)
      return rc;
    json_decref(f->doc);
    f->doc = NULL;
    tl__ids ids = {.profile = f->profile};
    if ((rc = tl__tx_begin(s, "shared store removed", err)) != TL_OK)
      return rc;
    rc =
        tl__audit(s, "file_removed", &ids,
                  json_pack("{s:s, s:s}", "file", f->path, "why", "its grant was rejected; Hermes does the same"), err);
    rc = rc == TL_OK ? tl__tx_commit(s, err) : (tl__tx_rollback(s), rc);
    return rc == TL_OK ? report_file(report, f, "removed", "the grant is dead; removed as Hermes does", err) : rc;
  }
  if (!w.changed && (!created || f->shared)) {
    if (created) {
      json_decref(f->doc); /* nothing to put in a shared store that does not exist */
      f->doc = NULL;
      return TL_OK;
    }
    return report_file(report, f, "unchanged", NULL, err);
  }
  char now[64];
  tl__hf_iso(now, sizeof now, w.now, 1, 0);
  json_object_set_new(f->doc, "updated_at", json_string(now));
  if (w.changed && !f->shared && !json_object_get(f->doc, "version"))
    json_object_set_new(f->doc, "version", json_integer(1)); /* Hermes stamps it on every save */
  if (!(text = tl__hf_dump(f->doc, f->shared)))
    return tl__oom(err);
  rc = tl__hf_write(f->path, text, err);
  if (rc == TL_OK) {
    tl_fingerprint(f->sha, text, strlen(text));
    f->in_step = 0; /* remembered below */
    rc = report_file(report, f, created ? "created" : "written", NULL, err);
  }
  tl_secret_free(text);
  return rc;
}

/*
 * A file that could not be rewritten (disk full, I/O error), or that holds a
 * token the server rotated while the ledger could not record it, may hold a
 * refresh token the server has already rotated: Hermes presenting it would be
 * a reuse, and the server would revoke the whole grant. That token is defused
 * in place (tl__hf_defuse: same length, no new disk block), so Hermes presents
 * an unknown token instead, which costs nothing; the next write-back fills the
 * slot. spent_fp: that one token; NULL: every token the ledger knows as rotated.
 * Best effort: the caller already reports the failure.
 */
static void defuse_spent(tl_store *s, const tl__hf *f, const char *spent_fp, tl_report *report)
{
  static const char sql[] = "SELECT 1 FROM refresh_token WHERE fingerprint = :fp AND state = 'rotated'";
  json_t *doc;
  tl_error e = {0};
  tl__slots ss;
  const char **rts = NULL;
  size_t n = 0;
  int done = 0;
  if (load_slots(&doc, &ss, f->path, f->shared, &e) != TL_OK || !(rts = calloc(ss.n ? ss.n : 1, sizeof *rts)))
    goto out;
  for (size_t k = 0; k < ss.n; k++) {
    const char *rt = tl__hf_slot_rt(&ss.v[k]);
    if (!rt || tl__strict_is_surrogate(rt) || tl__hf_is_defused(rt))
      continue;
    char fp[65];
    int64_t rotated = 0;
    tl_fingerprint(fp, rt, strlen(rt));
    if (spent_fp ? strcmp(fp, spent_fp) == 0
                 : TL_Q_INT(&rotated, s, sql, &e, TL_TEXT(":fp", fp)) == TL_OK && rotated == 1)
      rts[n++] = rt;
  }
  if (n == 0 || tl__hf_defuse(&done, f->path, rts, n, &e) != TL_OK || done == 0)
    goto out;
  if (report)
    report_file(report, f, "defused", "held a refresh token the server had rotated; overwritten in place", &e);
  tl__ids ids = {.profile = f->profile};
  if (tl__tx_begin(s, "defused", &e) == TL_OK) {
    if (tl__audit(s, "file_defused", &ids, json_pack("{s:s, s:i}", "file", f->path, "values", done), &e) == TL_OK)
      tl__tx_commit(s, &e);
    else
      tl__tx_rollback(s);
  }
out:
  free(rts);
  tl__hf_slots_free(&ss);
  json_decref(doc);
}

/*
 * Hermes' Anthropic login file beside a profile's auth.json: Hermes seeds its hermes_pkce pool row from it
 * at every load, so a file left holding a rotated token puts a spent token back into the pool
 * (hermes-agent#92606). A file holding a token the ledger knows as no longer current gets the grant's
 * current tokens; a token the ledger does not know (a new login) is left alone, and so is a grant that is
 * not usable now. Best effort: failing to write it is reported, it never undoes the rest.
 */
static tl_status anthropic_pkce_step(tl_store *s, const tl__hf *f, tl_report *report, tl_error *err)
{
  static const char sql[] = "SELECT t.credential_id FROM refresh_token t JOIN credential c ON c.id = t.credential_id "
                            "WHERE t.fingerprint = :fp AND t.state <> 'current' AND c.provider = 'anthropic'";
  char path[PATH_MAX], sha[65], fp[65];
  const char *slash = strrchr(f->path, '/');
  json_t *doc = NULL;
  tl_error ignore = {0};
  tl_status rc = TL_OK;
  if (f->shared || !f->profile || !slash ||
      snprintf(path, sizeof path, "%.*s/%s", (int)(slash - f->path), f->path, TL_HF_ANTHROPIC_PKCE) >= (int)sizeof path)
    return TL_OK;
  if (access(path, F_OK) != 0 || tl__hf_load(&doc, sha, NULL, path, &ignore) != TL_OK)
    return TL_OK; /* none (the usual case), or not one we can read: Hermes' business */
  json_t *rt = json_object_get(doc, "refreshToken");
  int64_t cred = 0;
  if (json_is_string(rt) && json_string_length(rt) > 0) {
    tl_fingerprint(fp, json_string_value(rt), json_string_length(rt));
    rc = TL_Q_INT(&cred, s, sql, err, TL_TEXT(":fp", fp));
  }
  credinfo c;
  if (rc == TL_OK && cred && (rc = load_cred(&c, s, cred, err)) == TL_OK) {
    tl__grant g = grant_of(&c, tl__now_ms());
    char *text = NULL;
    if (usable(&c) && tl__hf_fill_anthropic_pkce(doc, &g) && (text = tl__hf_dump(doc, 0))) {
      tl_error why = {0};
      tl__hf pk = *f;
      pk.path = path;
      if (tl__hf_write(path, text, &why) == TL_OK)
        rc = report_file(report, &pk, "written", "Hermes' Anthropic login file, in step with the grant", err);
      else
        rc = report_file(report, &pk, "not_written", why.message, err);
    }
    tl_secret_free(text);
    credinfo_clear(&c);
  }
  json_decref(doc);
  return rc;
}

tl_status tl__hfset_write_back(tl_store *s, tl__hfset *set, tl_report *report, tl_error *err)
{
  tl_status rc = TL_OK;
  tl_status *wrc = calloc(set->n ? set->n : 1, sizeof *wrc);
  if (!wrc)
    return tl__oom(err);
  /* Profiles first: a shared store follows the grant its profiles moved to. Every file
   * is tried even after one fails: each one written is one less copy of a spent token.
   * Only a file that could not be written (disk full, I/O error) is defused; a file
   * refused (another user's, a bad directory, not a regular file) is never touched. */
  for (int shared = 0; shared < 2; shared++)
    for (size_t i = 0; i < set->n; i++) {
      if (set->v[i].shared != shared)
        continue;
      tl_error one = {0};
      if ((wrc[i] = write_one(s, &set->v[i], report, &one)) == TL_OK)
        continue;
      if (wrc[i] == TL_EIO)
        defuse_spent(s, &set->v[i], NULL, report);
      if (rc == TL_OK) {
        rc = wrc[i];
        if (err)
          *err = one;
      }
    }
  if (s->coop_spent_fp[0])
    for (size_t i = 0; i < set->n; i++)
      if (wrc[i] == TL_OK || wrc[i] == TL_EIO)
        defuse_spent(s, &set->v[i], s->coop_spent_fp, report);
  for (size_t i = 0; rc == TL_OK && i < set->n; i++)
    if (wrc[i] == TL_OK)
      rc = anthropic_pkce_step(s, &set->v[i], report, err);
  free(wrc);
  if (rc != TL_OK)
    return rc;
  int any = 0;
  for (size_t i = 0; i < set->n; i++)
    any |= set->v[i].doc && (!set->v[i].in_step || set->v[i].unadopted);
  if (!any)
    return TL_OK;
  if ((rc = tl__tx_begin(s, "remember files", err)) != TL_OK)
    return rc;
  rc = tl__hfset_remember(s, set, err);
  if (rc == TL_OK)
    rc = tl__tx_commit(s, err);
  else
    tl__tx_rollback(s);
  return rc;
}

/* ---- one operation: lock, read, adopt, work, write back, unlock -------------------------------- */

static tl_status adopt_locked(tl_store *s, tl__hfset *set, tl_report *report, tl_error *err)
{
  tl__adopt a;
  memset(&a, 0, sizeof a);
  a.s = s;
  a.report = report;
  tl_status rc = tl__hfset_read(s, set, err);
  if (rc != TL_OK)
    return rc;
  int any = 0;
  for (size_t i = 0; i < set->n; i++)
    any |= set->v[i].doc && !set->v[i].in_step;
  if (!any)
    return TL_OK;
  if ((rc = tl__tx_begin(s, "adopt", err)) != TL_OK)
    return rc;
  rc = tl__adopt_set(&a, set, err);
  if (rc == TL_OK)
    rc = tl__tx_commit(s, err);
  else
    tl__tx_rollback(s);
  if (rc == TL_OK && a.blocked_fp[0]) {
    tl_error ignore = {0};
    tl__reuse_blocked(s, a.blocked_fp, a.blocked_where, &ignore);
  }
  return rc;
}

/*
 * One bad file never stops the rest: a file of the set that cannot be read as a Hermes file (malformed JSON,
 * wrong types, not a regular file) leaves the set and is reported as "unreadable" with why, and the others are
 * synced. It is only looked at here, without its lock: nothing is adopted from it and nothing written over it
 * (the locked read reads every remaining file again). *first gets the first such file's error, its status
 * TL_EFILE for a file that is not Hermes' shape (never transient: it stays bad until someone moves it). Only
 * running out of memory fails the call itself. With hermes_too (before a presentation), only a file Hermes
 * could not read either leaves the set: not JSON, empty, not an object, not a regular file. One Hermes would
 * still read (a duplicate key, a type it ignores, an oversized file) may hold a token Hermes rotated, so it
 * stops the refresh as before: adopt before present.
 */
static tl_status drop_unreadable(tl__hfset *set, tl_report *r, tl_error *first, int hermes_too, tl_error *err)
{
  for (size_t i = set->n; i-- > 0;) {
    tl__hf *f = &set->v[i];
    json_t *doc = NULL;
    tl__slots ss = {0};
    char sha[65];
    tl_error why = {0};
    tl_status rc = tl__hf_load(&doc, sha, NULL, f->path, &why);
    int hermes_reads = rc != TL_EINVAL || strstr(why.message, "duplicate") || strstr(why.message, "at most");
    if (rc == TL_OK)
      rc = tl__hf_walk(&ss, doc, f->path, f->shared ? TL_WALK_SHARED : 0, &why);
    tl__hf_slots_free(&ss);
    json_decref(doc);
    if (rc == TL_OK || rc == TL_ENOTFOUND || (hermes_too && hermes_reads))
      continue;
    if (rc == TL_ENOMEM)
      return tl__oom(err);
    tl_status code = rc == TL_EINVAL ? TL_EFILE : rc;
    if (first && first->code == TL_OK) {
      *first = why;
      first->code = code;
    }
    tl_status arc = report_file(r, f, "unreadable", why.message, err);
    tl__hfset_remove(set, i);
    if (arc != TL_OK)
      return arc;
  }
  return TL_OK;
}

/* The error for the files drop_unreadable took out, once the others are done (TL_OK if none). */
static tl_status unreadable_status(const tl_error *first, size_t bad, tl_error *err)
{
  if (first->code == TL_OK)
    return TL_OK;
  if (err) {
    *err = *first;
    if (bad > 1) {
      size_t l = strlen(err->message);
      snprintf(err->message + l, sizeof err->message - l, " (and %zu more unreadable file(s))", bad - 1);
    }
  }
  return first->code;
}

static size_t count_action(const tl_report *r, const char *action)
{
  size_t n = 0;
  for (size_t i = 0; r && i < tl_report_rows(r); i++)
    n += tl_report_get(r, i, "action") && strcmp(tl_report_get(r, i, "action"), action) == 0;
  return n;
}

static tl_status run_sync(tl_store *s, tl__hfset *set, tl_report *report, tl_error *err)
{
  tl_status rc = tl__hfset_lock(set, tl__now_ms() + tl__lock_timeout(s), err);
  if (rc != TL_OK)
    return rc;
  rc = adopt_locked(s, set, report, err);
  if (rc == TL_OK)
    rc = tl__hfset_write_back(s, set, report, err);
  tl__hfset_unlock(set);
  return rc;
}

tl_status tl__sync_credential(tl_store *s, int64_t cred, tl_error *err)
{
  tl__hfset set = {0};
  tl_status rc = tl__hfset_for_credential(&set, s, cred, err);
  if (rc == TL_OK && set.n)
    rc = run_sync(s, &set, NULL, err);
  if (rc == TL_OK)
    rc = tl__hfset_refused(&set, "the other files were synced", err);
  tl__hfset_free(&set);
  return rc;
}

/*
 * After a refresh, the grant's strict files take the new generation's surrogate
 * at once (serve admits only the current generation and, briefly, the one
 * before): each file whose locks can be had without waiting is synced. One
 * whose lock is held is skipped: its Hermes is most likely the caller of this
 * refresh through serve, and stores the surrogate serve answers it with; the
 * next sync covers the rest. Never waits, so never deadlocks with that Hermes.
 */
static void strict_follow(tl_store *s, tl__hfset *strict)
{
  for (size_t i = 0; i < strict->n; i++) {
    tl__hfset one = {0};
    tl_error ignore = {0};
    const tl__hf *f = &strict->v[i];
    if (tl__hfset_add(&one, f->path, f->profile, f->profile_name, f->shared, f->is_home, &ignore) == TL_OK &&
        one.n == 1 && tl__hfset_lock(&one, tl__now_ms(), &ignore) == TL_OK) {
      if (adopt_locked(s, &one, NULL, &ignore) == TL_OK)
        tl__hfset_write_back(s, &one, NULL, &ignore);
      tl__hfset_unlock(&one);
    }
    tl__hfset_free(&one);
  }
}

static tl_status coop_once(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                           int64_t ahead_ms, tl_error *err);

/*
 * Notes that a strict profile's files are left unlocked, with the profile's
 * strict epoch now, for the claim to compare (tl__strict_skips_check). 0 when
 * there is no room to note it: then the file is locked like any other.
 */
static int skip_note(tl_store *s, int64_t owner)
{
  int64_t epoch = tl__strict_epoch(s, owner);
  if (!epoch)
    return 0;
  for (int i = 0; i < s->coop_nskip; i++)
    if (s->coop_skip[i].profile == owner)
      return s->coop_skip[i].epoch == epoch;
  if (s->coop_nskip == (int)(sizeof s->coop_skip / sizeof *s->coop_skip))
    return 0;
  s->coop_skip[s->coop_nskip].profile = owner;
  s->coop_skip[s->coop_nskip++].epoch = epoch;
  return 1;
}

/*
 * The cooperative refresh. The files left unlocked (strict files in strict
 * form) are remembered in s->coop_skip: if one of their profiles starts a
 * switch off before the claim, the claim gives up (nothing presented) and the
 * files are chosen and locked again, now with that profile's.
 */
tl_status tl__coop_refresh(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                           int64_t ahead_ms, tl_error *err)
{
  tl_status rc;
  for (int round = 0;; round++) {
    s->coop_nskip = 0;
    s->coop_restart = 0;
    tl_error sub = {0};
    rc = coop_once(out, s, cred, flags, retry_unknown, ahead_ms, &sub);
    int again = rc == TL_EBUSY && s->coop_restart && round < 8;
    s->coop_nskip = 0;
    s->coop_restart = 0;
    if (!again) {
      if (err && rc != TL_OK)
        *err = sub;
      return rc;
    }
  }
}

static tl_status coop_once(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                           int64_t ahead_ms, tl_error *err)
{
  tl__hfset set = {0};
  tl_status rc = tl__hfset_for_credential(&set, s, cred, err);
  /* A file of the grant that cannot be trusted cannot be locked or adopted: nothing is presented. */
  if (rc == TL_OK)
    rc = tl__hfset_refused(&set, "the refresh token was not presented", err);
  /*
   * A strict file in strict form holds no refresh token: nothing there to
   * adopt, and its profile's Hermes may be the very caller of this refresh
   * (through serve), holding its own locks while it waits for the answer. Such
   * files are left to the next sync, which takes their locks outside any
   * request. What decides is what the file holds, never the flag alone: a
   * strict profile's file that still holds a real refresh token (a switch
   * that stopped halfway, a foreign token) is locked and adopted like any
   * other Hermes file, or Hermes' own rotation of it would make this
   * presentation a reuse.
   */
  tl__hfset strict = {0};
  for (size_t i = 0; rc == TL_OK && i < set.n;) {
    int64_t owner = 0;
    if ((rc = tl__hf_strict_owner(&owner, s, &set.v[i], err)) == TL_OK && owner && !holds_real_rt(&set.v[i]) &&
        skip_note(s, owner)) {
      const tl__hf *f = &set.v[i];
      tl_error ignore = {0};
      tl__hfset_add(&strict, f->path, f->profile, f->profile_name, f->shared, f->is_home, &ignore);
      tl__hfset_remove(&set, i);
    } else
      i++;
  }
  /* A file that cannot be read holds nothing to adopt and takes nothing: the grant's other files go on. */
  if (rc == TL_OK)
    rc = drop_unreadable(&set, NULL, NULL, 1, err);
  if (rc != TL_OK || set.n == 0) {
    tl__hfset_free(&set);
    if (rc == TL_OK && (rc = tl__refresh_protocol(out, s, cred, flags, retry_unknown, ahead_ms, err)) == TL_OK)
      strict_follow(s, &strict);
    tl__hfset_free(&strict);
    return rc;
  }
  if ((rc = tl__hfset_lock(&set, tl__now_ms() + tl__lock_timeout(s), err)) != TL_OK) {
    tl__hfset_free(&strict);
    tl__hfset_free(&set);
    if (rc == TL_EBUSY && err) {
      size_t l = strlen(err->message);
      snprintf(err->message + l, sizeof err->message - l,
               " (credential %lld lives in Hermes files; its refresh token is only presented under their locks)",
               (long long)cred);
    }
    return rc;
  }
  /* Adopt before present: what the files hold now is what the ledger presents. */
  if ((rc = adopt_locked(s, &set, NULL, err)) != TL_OK) {
    tl__hfset_free(&strict);
    tl__hfset_free(&set);
    return rc;
  }
  s->coop = 1;
  s->coop_spent_fp[0] = '\0';
  rc = tl__refresh_protocol(out, s, cred, flags, retry_unknown, ahead_ms, err);
  s->coop = 0;
  /* Whatever happened (rotated, rejected, fresh after adoption), every file holding the grant gets it. */
  tl_error werr = {0};
  tl_status wrc = tl__hfset_write_back(s, &set, NULL, &werr);
  s->coop_spent_fp[0] = '\0';
  tl__hfset_free(&set);
  if (rc == TL_OK)
    strict_follow(s, &strict);
  tl__hfset_free(&strict);
  if (rc == TL_OK && wrc != TL_OK) {
    if (err)
      *err = werr;
    return wrc;
  }
  return rc;
}

/* ---- export and sync ------------------------------------------------------------------------------ */

typedef struct profinfo {
  int64_t id;
  char name[80];
  char home[PATH_MAX];
  char source[PATH_MAX + 32]; /* the newest file imported for the profile (template for copies) */
} profinfo;

static tl_status load_profile(profinfo *p, tl_store *s, const char *name, tl_error *err)
{
  static const char sql[] = "SELECT p.id, p.home, (SELECT path FROM hermes_file WHERE profile_id = p.id AND kind = "
                            "'auth' ORDER BY synced_at DESC LIMIT 1) FROM profile p WHERE p.name = :n";
  memset(p, 0, sizeof *p);
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":n", name))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profile", err)) != TL_OK)
    return rc;
  if (!found)
    return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' does not exist", name);
  p->id = sqlite3_column_int64(st, 0);
  snprintf(p->name, sizeof p->name, "%s", name);
  if (sqlite3_column_text(st, 1))
    snprintf(p->home, sizeof p->home, "%s", (const char *)sqlite3_column_text(st, 1));
  if (sqlite3_column_text(st, 2))
    snprintf(p->source, sizeof p->source, "%s", (const char *)sqlite3_column_text(st, 2));
  sqlite3_reset(st);
  return TL_OK;
}

/* Export to a file that is not the profile's home: a copy, never remembered, never over an unknown token. */
static tl_status export_copy(tl_store *s, const profinfo *p, const char *output, tl_report *r, tl_error *err)
{
  tl__hfset set = {0};
  tl_status rc = tl__hfset_add(&set, output, p->id, p->name, 0, 0, err);
  if (rc == TL_OK)
    rc = tl__hfset_refused(&set, NULL, err);
  if (rc != TL_OK) {
    tl__hfset_free(&set);
    return rc;
  }
  tl__hf *f = &set.v[0];
  if ((rc = tl__hfset_lock(&set, tl__now_ms() + tl__lock_timeout(s), err)) != TL_OK)
    goto done;
  f = &set.v[0];
  if ((rc = tl__hfset_read(NULL, &set, err)) != TL_OK)
    goto done;
  for (size_t i = 0; f->doc && i < f->ss.n; i++) {
    const char *rt = tl__hf_slot_rt(&f->ss.v[i]);
    int known = 1;
    if (rt && !tl__strict_is_surrogate(rt) && (rc = known_token(&known, s, rt, err)) != TL_OK)
      goto done;
    if (!known) {
      rc = tl__err(err, TL_EINVAL, 0,
                   "%s: %s.refresh_token holds a refresh token the ledger does not know (perhaps Hermes rotated it); "
                   "refusing to write over it (profile '%s')",
                   output, f->ss.v[i].path, p->name);
      goto done;
    }
  }
  if (!f->doc) {
    const char *src = p->source[0] ? p->source : NULL;
    if (src && (rc = load_template(&f->doc, s, src, &f->template_synced, err)) != TL_OK)
      goto done;
    f->created = 1;
    if (!f->doc) {
      f->doc = json_pack("{s:i, s:{}}", "version", 1, "providers");
      if (!f->doc) {
        rc = tl__oom(err);
        goto done;
      }
    }
    /* A copy is filled from the profile's grants: map its places through the profile. */
  }
  rc = write_one(s, f, r, err);
done:
  tl__hfset_free(&set);
  return rc;
}

/* --shared-nous DIR: the profile's Nous grant written to DIR/nous_auth.json, and kept current from now on. */
static tl_status export_shared(tl_store *s, const profinfo *p, const char *dir, tl_report *r, tl_error *err)
{
  char path[PATH_MAX + 32], real[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/nous_auth.json", dir) >= PATH_MAX)
    return tl__err(err, TL_EINVAL, 0, "%.200s...: path too long", dir);
  if (!realpath(dir, real))
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: %s", dir, strerror(errno));
  snprintf(path, sizeof path, "%s/nous_auth.json", real);
  int64_t cred = 0;
  tl_status prc = primary_cred(&cred, s, p->id, "nous", 0, err);
  if (prc != TL_OK)
    return prc;
  if (!cred)
    return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' has no usable nous grant to write to %s", p->name, path);
  tl__hfset set = {0};
  tl_status rc = tl__hfset_add(&set, path, 0, NULL, 1, 1, err);
  if (rc == TL_OK)
    rc = tl__hfset_refused(&set, NULL, err);
  if (rc == TL_OK)
    rc = tl__hfset_lock(&set, tl__now_ms() + tl__lock_timeout(s), err);
  if (rc == TL_OK)
    rc = adopt_locked(s, &set, r, err);
  if (rc != TL_OK) {
    tl__hfset_free(&set);
    return rc;
  }
  tl__hf *f = &set.v[0];
  char place[PATH_MAX + 64];
  snprintf(place, sizeof place, "shared:%s", path);
  if (rc == TL_OK && f->doc) {
    const char *rt = tl__hf_slot_rt(&f->ss.v[0]);
    int known = 1;
    if (rt && !tl__strict_is_surrogate(rt))
      rc = known_token(&known, s, rt, err);
    if (rc == TL_OK && !known)
      rc = tl__err(err, TL_EINVAL, 0, "%s: holds a refresh token the ledger does not know; refusing to write over it",
                   path);
  }
  if (rc == TL_OK && (rc = tl__tx_begin(s, "shared place", err)) == TL_OK) {
    rc = tl__place_set(s, 0, place, cred, err);
    rc = rc == TL_OK ? tl__tx_commit(s, err) : (tl__tx_rollback(s), rc);
  }
  if (rc == TL_OK && !f->doc) {
    f->doc = json_pack("{s:i}", "_schema", 1);
    if (!f->doc)
      rc = tl__oom(err);
  }
  if (rc == TL_OK) {
    tl__hf_slots_free(&f->ss);
    f->in_step = 0;
    f->unadopted = 0;
    rc = tl__hfset_write_back(s, &set, r, err);
  }
  tl__hfset_free(&set);
  return rc;
}

tl_status tl_export(tl_report **out, tl_store *s, const char *profile, const char *output, const char *shared_dir,
                    tl_error *err)
{
  tl_error_clear(err);
  tl_status rc;
  tl_report *r = NULL;
  profinfo p;
  tl_error bad = {0};
  if (!out || !s || !profile)
    return tl__err(err, TL_EINVAL, 0, "export: a profile is required");
  *out = NULL;
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if ((rc = load_profile(&p, s, profile, err)) != TL_OK)
    goto done;
  char home_file[PATH_MAX + 16] = "", out_real[2 * PATH_MAX + 2] = "";
  if (p.home[0])
    snprintf(home_file, sizeof home_file, "%s/auth.json", p.home);
  if (output) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", output);
    char *slash = strrchr(dir, '/');
    if (slash)
      *slash = '\0';
    else
      snprintf(dir, sizeof dir, ".");
    char rdir[PATH_MAX];
    if (!realpath(dir, rdir)) {
      rc = tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: %s", dir, strerror(errno));
      goto done;
    }
    snprintf(out_real, sizeof out_real, "%s/%s", rdir, slash ? slash + 1 : output);
  }
  if (output && strcmp(out_real, home_file) != 0) {
    rc = export_copy(s, &p, output, r, err);
  } else if (!p.home[0]) {
    rc = tl__err(err, TL_EINVAL, 0, "profile '%s' has no Hermes home and no output file was given", profile);
  } else {
    tl__hfset set = {0};
    rc = set_for_profile(&set, s, p.id, p.name, p.home, err);
    if (rc == TL_OK)
      rc = drop_unreadable(&set, r, &bad, 0, err);
    if (rc == TL_OK && set.n)
      rc = run_sync(s, &set, r, err);
    if (rc == TL_OK)
      rc = tl__hfset_refused(&set, "the other files were written", err);
    tl__hfset_free(&set);
  }
  if (rc == TL_OK && shared_dir)
    rc = export_shared(s, &p, shared_dir, r, err);
  if (rc == TL_OK)
    rc = unreadable_status(&bad, count_action(r, "unreadable"), err);
done:
  if (rc == TL_OK || (bad.code != TL_OK && rc == bad.code))
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

/* The grants a set's files hold now (after adoption): what the propagation step carries further. */
static tl_status grants_of(int64_t **out, size_t *n, tl_store *s, const tl__hfset *set, tl_error *err)
{
  for (size_t i = 0; i < set->n; i++) {
    const tl__hf *f = &set->v[i];
    for (size_t k = 0; f->doc && k < f->ss.n; k++) {
      int64_t c = 0;
      tl_status rc = tl__slot_credential(&c, s, f, &f->ss.v[k], err);
      if (rc != TL_OK)
        return rc;
      int seen = !c;
      for (size_t j = 0; j < *n && !seen; j++)
        seen = (*out)[j] == c;
      if (seen)
        continue;
      int64_t *nv = realloc(*out, (*n + 1) * sizeof *nv);
      if (!nv)
        return tl__oom(err);
      *out = nv;
      (*out)[(*n)++] = c;
    }
  }
  return TL_OK;
}

/*
 * What the watch saw change, in two steps. First exactly those files, under
 * their own locks, so a rotation Hermes just wrote is adopted while the file
 * still holds it (the fewer locks, the sooner). Then every file holding the
 * grants they hold (siblings and the shared store), so the rotation reaches
 * them all; files already in step cost a read and no write.
 */
tl_status tl__sync_paths(tl_report *r, tl_store *s, char *const *paths, size_t n, tl_error *err)
{
  static const char sql[] = "SELECT id, name FROM profile WHERE home = :h";
  tl__hfset set = {0}, all = {0};
  int64_t *creds = NULL;
  size_t nc = 0;
  tl_status rc = TL_OK;
  for (size_t i = 0; i < n && rc == TL_OK; i++) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", paths[i]);
    char *slash = strrchr(dir, '/');
    if (!slash)
      continue;
    *slash = '\0';
    if (strcmp(slash + 1, "nous_auth.json") == 0) {
      rc = add_shared(&set, paths[i], 1, err);
      continue;
    }
    sqlite3_stmt *st;
    int found = 0;
    if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":h", dir))) != TL_OK ||
        (rc = tl__step_row(&found, s, st, "profile", err)) != TL_OK)
      break;
    if (found)
      rc = add_home(&set, dir, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1), 1, err);
    sqlite3_reset(st);
  }
  if (rc == TL_OK)
    rc = drop_unreadable(&set, r, NULL, 0, err); /* reported in r; the others go on */
  if (rc == TL_OK && set.n)
    rc = run_sync(s, &set, r, err);
  if (rc == TL_OK)
    rc = grants_of(&creds, &nc, s, &set, err);
  for (size_t i = 0; i < nc && rc == TL_OK; i++)
    rc = tl__hfset_for_credential(&all, s, creds[i], err);
  if (rc == TL_OK)
    rc = drop_unreadable(&all, NULL, NULL, 0, err);
  if (rc == TL_OK && all.n)
    rc = run_sync(s, &all, r, err);
  if (rc == TL_OK && (rc = tl__hfset_refused(&set, "the other files were synced", err)) == TL_OK)
    rc = tl__hfset_refused(&all, "the other files were synced", err);
  free(creds);
  tl__hfset_free(&all);
  tl__hfset_free(&set);
  return rc;
}

tl_status tl_sync(tl_report **out, tl_store *s, const char *profile, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc;
  tl_report *r = NULL;
  tl__hfset set = {0};
  tl_error bad = {0};
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "sync: bad arguments");
  *out = NULL;
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if (profile) {
    profinfo p;
    if ((rc = load_profile(&p, s, profile, err)) != TL_OK)
      goto done;
    if (!p.home[0]) {
      rc = tl__err(err, TL_EINVAL, 0, "profile '%s' has no Hermes home to sync", profile);
      goto done;
    }
    rc = set_for_profile(&set, s, p.id, p.name, p.home, err);
  } else {
    rc = set_for_all(&set, s, err);
  }
  if (rc == TL_OK)
    rc = drop_unreadable(&set, r, &bad, 0, err);
  if (rc == TL_OK && set.n)
    rc = run_sync(s, &set, r, err);
  if (rc == TL_OK)
    rc = unreadable_status(&bad, count_action(r, "unreadable"), err);
  if (rc == TL_OK)
    rc = tl__hfset_refused(&set, "the other files were synced", err);
done:
  tl__hfset_free(&set);
  if (rc == TL_OK || (bad.code != TL_OK && rc == bad.code))
    *out = r; /* with unreadable files: what was synced, and a row for each of them */
  else
    tl_report_free(r);
  return rc;
}

/* ---- what a sync does not cover: files it cannot read, homes the ledger does not know ------------- */

tl_status tl__hermes_files_doctor(int *ok, char *detail, size_t n, tl_store *s, tl_error *err)
{
  tl__hfset set = {0};
  tl_error bad = {0};
  tl_status rc = set_for_all(&set, s, err);
  size_t total = set.n;
  if (rc == TL_OK)
    rc = drop_unreadable(&set, NULL, &bad, 0, err);
  size_t nbad = total - set.n;
  tl__hfset_free(&set);
  if (rc != TL_OK)
    return rc;
  *ok = nbad == 0;
  if (nbad)
    snprintf(detail, n, "%zu of %zu Hermes file(s) cannot be read; sync leaves them alone: %.700s", nbad, total,
             bad.message);
  else
    snprintf(detail, n, "%zu Hermes file(s) the ledger keeps: each reads as Hermes' shape", total);
  return TL_OK;
}

/* A home's grants: refresh tokens in its auth.json (not surrogates); *unknown of them the ledger does not know. */
static tl_status home_grants(int *grants, int *unknown, tl_store *s, const char *home, tl_error *err)
{
  char file[PATH_MAX + 16];
  json_t *doc;
  tl__slots ss;
  tl_error ignore = {0};
  *grants = *unknown = 0;
  snprintf(file, sizeof file, "%s/auth.json", home);
  /* A file that cannot be read is not looked at further: doctor's hermes_files check is about the ledger's. */
  if (load_slots(&doc, &ss, file, 0, &ignore) != TL_OK)
    return TL_OK;
  tl_status rc = TL_OK;
  for (size_t i = 0; i < ss.n && rc == TL_OK; i++) {
    const char *rt = tl__hf_slot_rt(&ss.v[i]);
    int known = 1, again = 0;
    for (size_t k = 0; rt && k < i && !again; k++) /* one grant in the singleton and its pool row: one */
      again = tl__hf_slot_rt(&ss.v[k]) && strcmp(tl__hf_slot_rt(&ss.v[k]), rt) == 0;
    if (!rt || again || tl__strict_is_surrogate(rt))
      continue;
    (*grants)++;
    if ((rc = known_token(&known, s, rt, err)) == TL_OK && !known)
      (*unknown)++;
  }
  tl__hf_slots_free(&ss);
  json_decref(doc);
  return rc;
}

static tl_status new_home_row(tl_report *r, tl_store *s, const char *home, const char *name, tl_error *err)
{
  static const char sql[] = "SELECT count(*) FROM profile WHERE home = :h";
  int64_t known = 0;
  int grants = 0, unknown = 0;
  tl_status rc = TL_Q_INT(&known, s, sql, err, TL_TEXT(":h", home));
  if (rc != TL_OK || known || (rc = home_grants(&grants, &unknown, s, home, err)) != TL_OK || !grants)
    return rc;
  char g[16], u[16];
  snprintf(g, sizeof g, "%d", grants);
  snprintf(u, sizeof u, "%d", unknown);
  const char *cells[4] = {name, home, g, u};
  const int num[4] = {0, 0, 1, 1};
  return tl__report_add_row(r, cells, num, err);
}

tl_status tl_hermes_new_homes(tl_report **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char *const cols[] = {"profile", "home", "grants", "unknown"};
  static const char sql[] = "SELECT DISTINCT home FROM profile WHERE home IS NOT NULL ORDER BY home";
  tl_report *r = NULL;
  char **roots = NULL;
  size_t nroots = 0;
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "new homes: bad arguments");
  *out = NULL;
  tl_status rc = tl__report_kv(&r, cols, 4, err);
  sqlite3_stmt *st;
  int found = 0;
  if (rc == TL_OK)
    rc = tl__prepare(&st, s, sql, err);
  /* The known roots: the Hermes root of every home the ledger keeps. */
  while (rc == TL_OK && (rc = tl__step_row(&found, s, st, "homes", err)) == TL_OK && found) {
    char root[PATH_MAX];
    root_of(root, sizeof root, (const char *)sqlite3_column_text(st, 0));
    int seen = 0;
    for (size_t i = 0; i < nroots && !seen; i++)
      seen = strcmp(roots[i], root) == 0;
    if (seen)
      continue;
    char **nv = realloc(roots, (nroots + 1) * sizeof *nv);
    if (!nv || !(nv[nroots] = strdup(root))) {
      if (nv)
        roots = nv;
      rc = tl__oom(err);
      break;
    }
    roots = nv;
    nroots++;
  }
  if (found)
    sqlite3_reset(st);
  /* Under each: the root itself (Hermes' default profile) and every profiles/<name>. */
  for (size_t i = 0; i < nroots && rc == TL_OK; i++) {
    if ((rc = new_home_row(r, s, roots[i], "default", err)) != TL_OK)
      break;
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/profiles", roots[i]);
    struct dirent **names = NULL;
    int k = scandir(dir, &names, NULL, alphasort);
    for (int j = 0; j < k; j++) {
      char home[2 * PATH_MAX];
      struct stat hs;
      snprintf(home, sizeof home, "%s/%s", dir, names[j]->d_name);
      if (rc == TL_OK && tl_profile_name_valid(names[j]->d_name) && lstat(home, &hs) == 0 && S_ISDIR(hs.st_mode))
        rc = new_home_row(r, s, home, names[j]->d_name, err);
      free(names[j]);
    }
    free(names);
  }
  for (size_t i = 0; i < nroots; i++)
    free(roots[i]);
  free(roots);
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}
