/*
 * hermes_adopt.c - taking what Hermes' files hold into the ledger: import, and
 * the adopt step that precedes every sync, export and cooperative refresh.
 *
 * Each slot of each file is matched to a grant by its place (the profile's
 * pool entry for a pool row, grant_place for a singleton or a shared store)
 * and by its refresh token's fingerprint:
 *   - a live token: the slot holds that credential (attach, or unchanged);
 *   - a spent token: import refuses everything (TL_EREUSE, audited after the
 *     rollback); sync/export/refresh record the refusal and the write-back
 *     overwrites the file with the ledger's current token;
 *   - a token new to the ledger at a place that holds credential C: Hermes
 *     rotated C itself. All such tokens of C found in one operation are
 *     ordered by when Hermes obtained them (obtained_at / last_refresh; the
 *     shared store, written last, after the profiles; then file age): the
 *     newest becomes current, the ones between are recorded spent in order
 *     (external rotations), and one older than the ledger's own current token
 *     is recorded retired, never made current;
 *   - a token new to the ledger at a new place: a new grant (new credential).
 * A new token becomes a credential's rotation only if its file names the
 * credential's endpoint (endpoint_agrees); otherwise nothing is adopted.
 * A file another user owns or can change (tl__hf_check) never enters a file
 * set: import refuses it (a whole root: the other homes are imported), the
 * other operations leave it out and report it after doing the rest.
 * A credential with a presentation of ours in flight is never adopted into
 * (deferred; the file is not marked in step, so the next sync tries again). A
 * credential whose last presentation had an unknown outcome is resolved by
 * Hermes' rotation: Hermes could only rotate a token the server had not
 * already rotated for us.
 *
 * Invariants: a spent RT is never stored as live; adoption happens inside the
 * caller's write transaction, so a failure leaves the ledger as it was; the
 * stored templates and pool_entry.original_json hold references, never
 * tokens or API keys (those live in refresh_token.secret, credential.
 * access_token and pool_secret.secret).
 */
#include "hermes.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const report_cols[] = {"profile", "file", "path", "provider", "credential", "action", "note"};

/* ---- queries -------------------------------------------------------------------------- */

tl_status tl__q_int(int64_t *out, tl_store *s, const char *sql, tl_error *err, size_t n, const tl__arg *args)
{
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  *out = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = tl__bind(st, err, n, args)) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "ledger read", err)) != TL_OK)
    return rc;
  if (found)
    *out = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  return TL_OK;
}

tl_status tl__q_exec(tl_store *s, const char *sql, const char *what, tl_error *err, size_t n, const tl__arg *args)
{
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = tl__bind(st, err, n, args)) != TL_OK)
    return rc;
  return tl__step_done(s, st, what, err);
}

/* ---- file sets -------------------------------------------------------------------- */

static void hf_clear(tl__hf *f)
{
  json_decref(f->doc);
  tl__hf_slots_free(&f->ss);
  tl__hf_unlock(f->lock_fd);
  free(f->path);
  free(f->lock);
  memset(f, 0, sizeof *f);
  f->lock_fd = -1;
}

void tl__hfset_free(tl__hfset *set)
{
  for (size_t i = 0; i < set->n; i++)
    hf_clear(&set->v[i]);
  free(set->v);
  for (size_t i = 0; i < set->refused; i++)
    free(set->refused_paths[i]);
  free(set->refused_paths);
  memset(set, 0, sizeof *set);
}

void tl__hfset_remove(tl__hfset *set, size_t i)
{
  hf_clear(&set->v[i]);
  set->v[i] = set->v[--set->n];
}

/* A home is a Hermes root unless it sits in a directory named "profiles". */
static int is_root_home(const char *file)
{
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", file);
  char *slash = strrchr(dir, '/');
  if (!slash)
    return 1;
  *slash = '\0'; /* the home */
  slash = strrchr(dir, '/');
  if (!slash)
    return 1;
  *slash = '\0'; /* its parent */
  const char *parent = strrchr(dir, '/');
  parent = parent ? parent + 1 : dir;
  return strcmp(parent, "profiles") != 0;
}

tl_status tl__hfset_refused(const tl__hfset *set, const char *done, tl_error *err)
{
  if (!set->refused)
    return TL_OK;
  if (set->refused == 1)
    return tl__err(err, TL_EINSECURE, 0, "%s%s%s", set->refusal.message, done ? "; " : "", done ? done : "");
  return tl__err(err, TL_EINSECURE, 0, "%s (and %zu more files refused)%s%s", set->refusal.message, set->refused - 1,
                 done ? "; " : "", done ? done : "");
}

tl_status tl__hfset_add(tl__hfset *set, const char *path, int64_t profile, const char *profile_name, int shared,
                        int is_home, tl_error *err)
{
  for (size_t i = 0; i < set->n; i++)
    if (strcmp(set->v[i].path, path) == 0)
      return TL_OK;
  for (size_t i = 0; i < set->refused; i++)
    if (strcmp(set->refused_paths[i], path) == 0)
      return TL_OK;
  tl_error why = {0};
  if (tl__hf_check(path, &why) != TL_OK) {
    /* Never read, locked or written: whoever can change it could show us anything. */
    char **nv = realloc(set->refused_paths, (set->refused + 1) * sizeof *nv);
    if (!nv || !(nv[set->refused] = strdup(path))) {
      if (nv)
        set->refused_paths = nv;
      return tl__oom(err);
    }
    set->refused_paths = nv;
    if (!set->refused++)
      set->refusal = why;
    return TL_OK;
  }
  if (strlen(path) >= PATH_MAX)
    return tl__err(err, TL_EINVAL, 0, "%.200s...: path longer than %d bytes", path, PATH_MAX - 1);
  if (set->n == set->cap) {
    size_t cap = set->cap ? set->cap * 2 : 8;
    tl__hf *nv = realloc(set->v, cap * sizeof *nv);
    if (!nv)
      return tl__oom(err);
    set->v = nv;
    set->cap = cap;
  }
  tl__hf *f = &set->v[set->n];
  memset(f, 0, sizeof *f);
  size_t lock_n = strlen(path) + 8;
  f->path = strdup(path);
  f->lock = malloc(lock_n);
  if (!f->path || !f->lock) {
    free(f->path);
    free(f->lock);
    return tl__oom(err);
  }
  set->n++;
  tl__hf_lock_path(f->lock, lock_n, path);
  f->profile = profile;
  snprintf(f->profile_name, sizeof f->profile_name, "%s", profile_name ? profile_name : "");
  f->shared = shared;
  f->is_home = is_home;
  f->is_root = !shared && is_root_home(path);
  f->lock_fd = -1;
  return TL_OK;
}

static tl_status file_in_step(int *out, tl_store *s, const char *path, const char *sha, tl_error *err)
{
  static const char sql[] = "SELECT sha256 = :sha FROM hermes_file WHERE path = :p";
  int64_t same = 0;
  tl_status rc = TL_Q_INT(&same, s, sql, err, TL_TEXT(":p", path), TL_TEXT(":sha", sha));
  *out = same == 1;
  return rc;
}

tl_status tl__hfset_read(tl_store *s, tl__hfset *set, tl_error *err)
{
  for (size_t i = 0; i < set->n; i++) {
    tl__hf *f = &set->v[i];
    json_decref(f->doc);
    f->doc = NULL;
    tl__hf_slots_free(&f->ss);
    tl_status rc = tl__hf_load(&f->doc, f->sha, &f->mtime, f->path, err);
    if (rc == TL_ENOTFOUND) {
      if (err)
        tl_error_clear(err);
      f->sha[0] = '\0';
      continue;
    }
    if (rc != TL_OK)
      return rc; /* a file we cannot read is never treated as empty */
    if ((rc = tl__hf_walk(&f->ss, f->doc, f->path, f->shared ? TL_WALK_SHARED : 0, err)) != TL_OK)
      return rc;
    if (s && (rc = file_in_step(&f->in_step, s, f->path, f->sha, err)) != TL_OK)
      return rc;
  }
  return TL_OK;
}

/* ---- places ------------------------------------------------------------------------- */

static tl_status place_cred(int64_t *out, tl_store *s, const tl__hf *f, const tl__slot *sl, tl_error *err)
{
  static const char pool_sql[] = "SELECT credential_id FROM pool_entry WHERE profile_id = :p AND provider = :prov AND "
                                 "entry_id = :e";
  static const char place_sql[] = "SELECT credential_id FROM grant_place WHERE coalesce(profile_id, 0) = :p AND "
                                  "place = :place";
  char place[PATH_MAX + 16];
  *out = 0;
  if (sl->kind == TL_SLOT_POOL)
    return f->profile ? TL_Q_INT(out, s, pool_sql, err, TL_INT(":p", f->profile), TL_TEXT(":prov", sl->provider),
                                 TL_TEXT(":e", sl->entry))
                      : TL_OK;
  if (sl->kind == TL_SLOT_SHARED)
    snprintf(place, sizeof place, "shared:%s", f->path);
  else
    snprintf(place, sizeof place, "%s", sl->place);
  return TL_Q_INT(out, s, place_sql, err, TL_INT(":p", sl->kind == TL_SLOT_SHARED ? 0 : f->profile),
                  TL_TEXT(":place", place));
}

tl_status tl__place_set(tl_store *s, int64_t profile, const char *place, int64_t cred, tl_error *err)
{
  static const char del_sql[] = "DELETE FROM grant_place WHERE coalesce(profile_id, 0) = :p AND place = :place";
  static const char ins_sql[] = "INSERT INTO grant_place (profile_id, place, credential_id, updated_at) VALUES (:p, "
                                ":place, :c, :now)";
  tl_status rc = TL_Q_EXEC(s, del_sql, "grant place", err, TL_INT(":p", profile), TL_TEXT(":place", place));
  if (rc != TL_OK || !cred)
    return rc;
  return TL_Q_EXEC(s, ins_sql, "grant place", err, TL_OPTINT(":p", profile), TL_TEXT(":place", place),
                   TL_INT(":c", cred), TL_INT(":now", tl__now_ms()));
}

static tl_status set_slot_place(tl_store *s, const tl__hf *f, const tl__slot *sl, int64_t cred, tl_error *err)
{
  char place[PATH_MAX + 16];
  if (sl->kind == TL_SLOT_POOL)
    return TL_OK; /* pool places are pool entries */
  if (sl->kind == TL_SLOT_SHARED) {
    snprintf(place, sizeof place, "shared:%s", f->path);
    return tl__place_set(s, 0, place, cred, err);
  }
  if (!f->profile)
    return TL_OK;
  return tl__place_set(s, f->profile, sl->place, cred, err);
}

/* 1 if the profile (or, for a shared store, its place) holds the credential. */
static tl_status holds(int *out, tl_store *s, const tl__hf *f, int64_t cred, tl_error *err)
{
  static const char prof_sql[] =
      "SELECT 1 FROM pool_entry WHERE profile_id = :p AND credential_id = :c UNION ALL SELECT 1 FROM grant_place WHERE "
      "profile_id = :p AND credential_id = :c LIMIT 1";
  static const char shared_sql[] = "SELECT 1 FROM grant_place WHERE profile_id IS NULL AND place = :place AND "
                                   "credential_id = :c";
  char place[PATH_MAX + 16];
  int64_t yes = 0;
  tl_status rc;
  if (f->shared) {
    snprintf(place, sizeof place, "shared:%s", f->path);
    rc = TL_Q_INT(&yes, s, shared_sql, err, TL_TEXT(":place", place), TL_INT(":c", cred));
  } else {
    rc = TL_Q_INT(&yes, s, prof_sql, err, TL_INT(":p", f->profile), TL_INT(":c", cred));
  }
  *out = yes == 1;
  return rc;
}

static tl_status cred_of_fp(int64_t *out, tl_store *s, const char *fp, tl_error *err)
{
  static const char sql[] = "SELECT credential_id FROM refresh_token WHERE fingerprint = :fp";
  return TL_Q_INT(out, s, sql, err, TL_TEXT(":fp", fp));
}

tl_status tl__slot_credential(int64_t *out, tl_store *s, const tl__hf *f, const tl__slot *sl, tl_error *err)
{
  int64_t c = tl__hf_ref_cred(json_object_get(sl->obj, "refresh_token"));
  tl_status rc;
  *out = 0;
  if (!c && (rc = place_cred(&c, s, f, sl, err)) != TL_OK)
    return rc;
  const char *rt = tl__hf_slot_rt(sl);
  if (!c && rt && tl__strict_is_surrogate(rt)) {
    tl_error ignore = {0};
    if (tl__strict_verify(&c, NULL, NULL, s, rt, &ignore) != TL_OK)
      c = 0;
  } else if (!c && rt) {
    char fp[65];
    tl_fingerprint(fp, rt, strlen(rt));
    if ((rc = cred_of_fp(&c, s, fp, err)) != TL_OK)
      return rc;
  }
  int held = 0;
  if (c && (rc = holds(&held, s, f, c, err)) != TL_OK)
    return rc;
  *out = held ? c : 0;
  return TL_OK;
}

/* ---- report rows ---------------------------------------------------------------------- */

static tl_status row(tl__adopt *a, const tl__hf *f, const tl__slot *sl, int64_t cred, const char *action,
                     const char *note, tl_error *err)
{
  char c[32] = "";
  if (!a->report)
    return TL_OK;
  if (cred)
    snprintf(c, sizeof c, "%lld", (long long)cred);
  const char *cells[7] = {f->shared ? "(shared)" : f->profile_name,
                          f->path,
                          sl ? sl->path : "$",
                          sl ? sl->provider : "",
                          cred ? c : NULL,
                          action,
                          note};
  const int num[7] = {0, 0, 0, 0, 1, 0, 0};
  return tl__report_add_row(a->report, cells, num, err);
}

/* ---- pool entries ------------------------------------------------------------------------ */

static tl_status ensure_provider(tl_store *s, const char *name, tl_error *err)
{
  static const char sql[] = "INSERT OR IGNORE INTO provider (name, updated_at) VALUES (:name, :now)";
  return TL_Q_EXEC(s, sql, "provider", err, TL_TEXT(":name", name), TL_INT(":now", tl__now_ms()));
}

static int64_t ms_or_zero(json_t *v)
{
  int64_t ms = 0;
  if (!v || json_is_null(v))
    return 0;
  return tl__num_time(&ms, v) ? 0 : ms;
}

/* The entry as Hermes wrote it, without its tokens or key: for round trips, never a secret. */
static char *original_json(json_t *o)
{
  json_t *copy = json_deep_copy(o);
  if (!copy)
    return NULL;
  for (size_t i = 0; tl__secret_keys[i]; i++)
    json_object_del(copy, tl__secret_keys[i]);
  char *text = json_dumps(copy, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(copy);
  return text;
}

/* Creates or updates the profile's pool entry for a slot. Singletons get one only if no pool row holds the grant. */
static tl_status upsert_entry(tl__adopt *a, const tl__hf *f, const tl__slot *sl, int64_t cred, tl_error *err)
{
  static const char sql[] =
      "INSERT INTO pool_entry (profile_id, provider, credential_id, entry_id, priority, source, auth_type, label, "
      "last_status, last_status_at, last_error_code, last_error_reason, last_error_message, cooldown_until, "
      "request_count, original_json) VALUES (:p, :prov, :cred, :entry, :prio, :source, :auth, :label, :ls, :lsat, "
      ":lec, :ler, :lem, :cool, :rc, :orig) ON CONFLICT (profile_id, provider, entry_id) DO UPDATE SET "
      "credential_id = :cred, priority = :prio, source = :source, auth_type = :auth, label = :label, "
      "last_status = :ls, last_status_at = :lsat, last_error_code = :lec, last_error_reason = :ler, "
      "last_error_message = :lem, cooldown_until = :cool, request_count = :rc, original_json = :orig";
  static const char has_sql[] = "SELECT 1 FROM pool_entry WHERE profile_id = :p AND provider = :prov AND "
                                "credential_id = :cred AND entry_id <> :entry";
  json_t *o = sl->obj, *v;
  tl_store *s = a->s;
  if (!f->profile || sl->kind == TL_SLOT_SHARED)
    return TL_OK; /* the shared store has no pool */
  tl_status rc = ensure_provider(s, sl->provider, err);
  if (rc != TL_OK)
    return rc;
  char entry[80];
  if (sl->kind == TL_SLOT_POOL) {
    snprintf(entry, sizeof entry, "%s", sl->entry);
  } else {
    int64_t has = 0;
    if (!cred)
      return TL_OK;
    snprintf(entry, sizeof entry, "providers.%.60s", sl->provider);
    if ((rc = TL_Q_INT(&has, s, has_sql, err, TL_INT(":p", f->profile), TL_TEXT(":prov", sl->provider),
                       TL_INT(":cred", cred), TL_TEXT(":entry", entry))) != TL_OK ||
        has)
      return rc;
  }
  int64_t prio = 0, count = 0, code = 0;
  if (tl__num_i64(&prio, json_object_get(o, "priority"), -1000000000, 1000000000))
    prio = 0;
  if (tl__num_i64(&code, json_object_get(o, "last_error_code"), 0, 999))
    code = 0;
  if (tl__num_i64(&count, json_object_get(o, "request_count"), 0, INT64_MAX / 2))
    count = 0;
  const char *auth = json_is_string(v = json_object_get(o, "auth_type")) ? json_string_value(v) : "oauth";
  const char *ls = json_is_string(v = json_object_get(o, "last_status")) ? json_string_value(v) : NULL;
  if (ls && strcmp(ls, "ok") && strcmp(ls, "exhausted") && strcmp(ls, "dead"))
    ls = NULL;
  int64_t reset = ms_or_zero(json_object_get(o, "last_error_reset_at"));
  json_t *src = json_object_get(o, "source"), *label = json_object_get(o, "label"),
         *reason = json_object_get(o, "last_error_reason"), *message = json_object_get(o, "last_error_message");
  const char *source = json_is_string(src) ? json_string_value(src) : sl->kind == TL_SLOT_POOL ? "manual" : "singleton";
  char *orig = original_json(o);
  rc = TL_Q_EXEC(s, sql, "pool entry", err, TL_INT(":p", f->profile), TL_TEXT(":prov", sl->provider),
                 TL_OPTINT(":cred", cred), TL_TEXT(":entry", entry), TL_INT(":prio", prio), TL_TEXT(":source", source),
                 TL_TEXT(":auth", strcmp(auth, "api_key") == 0 ? "api_key" : "oauth"),
                 TL_TEXT(":label", json_is_string(label) ? json_string_value(label) : NULL), TL_TEXT(":ls", ls),
                 TL_OPTINT(":lsat", ms_or_zero(json_object_get(o, "last_status_at"))), TL_OPTINT(":lec", code),
                 TL_TEXT(":ler", json_is_string(reason) ? json_string_value(reason) : NULL),
                 TL_TEXT(":lem", json_is_string(message) ? json_string_value(message) : NULL),
                 TL_OPTINT(":cool", ls && strcmp(ls, "exhausted") == 0 ? reset : 0), TL_INT(":rc", count),
                 TL_TEXT(":orig", orig));
  free(orig);
  return rc;
}

/* ---- new grants and external rotations ------------------------------------------------------ */

/* Where a Nous grant refreshes, from the slot's portal_base_url (Hermes' rules); a MiniMax grant likewise
 * ({portal_base_url}/oauth/token, Hermes' _refresh_minimax_oauth_state), its region's host otherwise. */
static tl_status portal_token_url(char *out, size_t n, json_t *obj, json_t *fallback, int minimax, const char *file,
                                  const char *path, tl_error *err)
{
  json_t *v = json_object_get(obj, "portal_base_url");
  if (!json_is_string(v))
    v = fallback; /* Hermes refreshes every Nous row through the singleton's portal */
  out[0] = '\0';
  json_t *region = json_object_get(obj, "region");
  if (!json_is_string(v) && minimax && json_is_string(region) && strcmp(json_string_value(region), "cn") == 0) {
    snprintf(out, n, "https://api.minimaxi.com/oauth/token");
    return TL_OK;
  }
  if (!json_is_string(v))
    return TL_OK; /* the provider's default */
  const char *base = json_string_value(v);
  if (!minimax && strstr(base, "://api.nousresearch.com"))
    base = "https://portal.nousresearch.com"; /* the dead host Hermes rewrites */
  size_t len = strlen(base);
  while (len && base[len - 1] == '/')
    len--;
  if (len > 2000)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.portal_base_url: longer than 2000 characters", file, path);
  snprintf(out, n, "%.*s%s", (int)len, base, minimax ? "/oauth/token" : "/api/oauth/token");
  tl_error sub = {0};
  if (tl_url_check(out, &sub) != TL_OK)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.portal_base_url: %s", file, path, sub.message);
  return TL_OK;
}

static json_t *doc_nous_portal(json_t *doc)
{
  json_t *v = json_object_get(json_object_get(json_object_get(doc, "providers"), "nous"), "portal_base_url");
  if (!v)
    v = json_object_get(json_object_get(json_object_get(doc, "systems"), "nous_portal"), "portal_base_url");
  return v;
}

static tl_status new_credential(int64_t *out, tl__adopt *a, const tl__hf *f, const tl__slot *sl, const char *rt,
                                const char *fp, tl_error *err)
{
  static const char prov_sql[] = "SELECT token_url, client_id FROM provider WHERE name = :name";
  static const char cred_sql[] =
      "INSERT INTO credential (provider, client_id, token_url, label, access_token, expires_at, obtained_at, scope, "
      "extra, created_at, updated_at) VALUES (:prov, :client, :url, :label, :at, nullif(:exp, 0), nullif(:obtained, "
      "0), :scope, :extra, :now, :now)";
  static const char rt_sql[] = "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                               "secret, issued_at) VALUES (:c, 0, :fp, 'current', 'import', :secret, :now)";
  tl_store *s = a->s;
  tl_status rc;
  char url[2100] = "";
  char *purl = NULL, *pclient = NULL, *extra_text = NULL;
  if ((rc = ensure_provider(s, sl->provider, err)) != TL_OK)
    return rc;
  if (strcmp(sl->provider, "nous") == 0 &&
      (rc = portal_token_url(url, sizeof url, sl->obj, doc_nous_portal(f->doc), 0, f->path, sl->path, err)) != TL_OK)
    return rc;
  if (strcmp(sl->provider, "minimax-oauth") == 0) {
    json_t *state = json_object_get(json_object_get(f->doc, "providers"), "minimax-oauth");
    if ((rc = portal_token_url(url, sizeof url, sl->obj, json_object_get(state, "portal_base_url"), 1, f->path,
                               sl->path, err)) != TL_OK)
      return rc;
  }
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":name", sl->provider))) ||
      (rc = tl__step_row(&found, s, st, "provider", err)) != TL_OK)
    return rc;
  if (found) {
    purl = tl__col_dup(st, 0);
    pclient = tl__col_dup(st, 1);
  }
  sqlite3_reset(st);
  json_t *o = sl->obj, *v;
  json_t *atv = json_object_get(o, "access_token");
  const char *at = json_is_string(atv) && json_string_length(atv) ? json_string_value(atv) : NULL;
  int64_t now = tl__now_ms(), obtained = tl__hf_slot_obtained(sl);
  json_t *extra = json_object();
  static const char *const keep[] = {"inference_base_url", "token_type", "base_url"};
  for (size_t i = 0; extra && i < 3; i++)
    if (json_is_string(v = json_object_get(o, keep[i])))
      json_object_set(extra, keep[i], v);
  extra_text = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
  json_decref(extra);
  json_t *client = json_object_get(o, "client_id"), *label = json_object_get(o, "label"),
         *scope = json_object_get(o, "scope");
  if ((rc = TL_Q_EXEC(s, cred_sql, "import credential", err, TL_TEXT(":prov", sl->provider),
                      TL_TEXT(":client", json_is_string(client) ? json_string_value(client) : pclient),
                      TL_TEXT(":url", *url ? url : purl),
                      TL_TEXT(":label", json_is_string(label) ? json_string_value(label) : NULL), TL_SECRET(":at", at),
                      TL_INT(":exp", at ? tl__hf_slot_expiry(sl) : 0),
                      TL_INT(":obtained", obtained < now ? obtained : now),
                      TL_TEXT(":scope", json_is_string(scope) ? json_string_value(scope) : NULL),
                      TL_TEXT(":extra", extra_text ? extra_text : "{}"), TL_INT(":now", now))) != TL_OK)
    goto done;
  *out = sqlite3_last_insert_rowid(s->db);
  if ((rc = TL_Q_EXEC(s, rt_sql, "import refresh token", err, TL_INT(":c", *out), TL_TEXT(":fp", fp),
                      TL_SECRET(":secret", rt), TL_INT(":now", now))) != TL_OK)
    goto done;
  tl__ids ids = {.profile = f->profile, .credential = *out, .rt = sqlite3_last_insert_rowid(s->db)};
  rc = tl__audit(s, "rt_stored", &ids,
                 json_pack("{s:s?, s:s, s:s, s:s, s:s, s:s%, s:i}", "profile", f->shared ? NULL : f->profile_name,
                           "provider", sl->provider, "origin", "import", "file", f->path, "path", sl->path,
                           "fingerprint", fp, (size_t)12, "generation", 0),
                 err);
done:
  free(purl);
  free(pclient);
  free(extra_text);
  return rc;
}

/* The credential's open RT (current, presented or unknown). */
typedef struct open_rt {
  int64_t id, gen, family, parent;
  char state[16];
} open_rt;

static tl_status load_open_rt(int *found, tl_store *s, int64_t cred, open_rt *o, tl_error *err)
{
  static const char sql[] = "SELECT id, state, generation, coalesce(family_id, id), coalesce(parent_id, 0) FROM "
                            "refresh_token WHERE credential_id = :c AND state IN ('current', 'presented', 'unknown')";
  sqlite3_stmt *st;
  tl_status rc;
  memset(o, 0, sizeof *o);
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK ||
      (rc = tl__step_row(found, s, st, "open refresh token", err)) != TL_OK)
    return rc;
  if (*found) {
    o->id = sqlite3_column_int64(st, 0);
    snprintf(o->state, sizeof o->state, "%s", (const char *)sqlite3_column_text(st, 1));
    o->gen = sqlite3_column_int64(st, 2);
    o->family = sqlite3_column_int64(st, 3);
    o->parent = sqlite3_column_int64(st, 4);
  }
  sqlite3_reset(st);
  return TL_OK;
}

/* One token Hermes obtained that the ledger has not seen, at a place of credential cred. */
typedef struct pending {
  tl__hf *f;
  tl__slot *sl;
  const char *rt; /* borrowed from the document */
  char fp[65];
  int64_t cred;
  int64_t obtained; /* 0 if the slot does not say */
  int dup;          /* same token as an earlier pending entry */
  size_t seq;       /* order of discovery: pool rows of a file before its singletons */
} pending;

/* Oldest first: explicit obtained times in order; then those without, the shared store last, then by file age. */
static int by_age(const void *x, const void *y)
{
  const pending *a = x, *b = y;
  if ((a->obtained != 0) != (b->obtained != 0))
    return a->obtained ? -1 : 1;
  if (a->obtained != b->obtained)
    return a->obtained < b->obtained ? -1 : 1;
  if (a->f->shared != b->f->shared)
    return a->f->shared ? 1 : -1;
  if (a->f->mtime != b->f->mtime)
    return a->f->mtime < b->f->mtime ? -1 : 1;
  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static tl_status retire_open(tl_store *s, const open_rt *o, int64_t now, tl_error *err)
{
  static const char sql[] = "UPDATE refresh_token SET state = 'retired', secret = NULL, retired_at = :now WHERE id = "
                            ":id";
  return TL_Q_EXEC(s, sql, "external rotation", err, TL_INT(":now", now), TL_INT(":id", o->id));
}

/* Hermes rotated the grant: the token becomes the credential's current child. */
static tl_status chain_external(tl__adopt *a, const pending *p, int64_t *out_rt, tl_error *err)
{
  static const char child_sql[] =
      "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, secret, "
      "issued_at) VALUES (:c, :parent, :family, :gen, :fp, 'current', 'external', :secret, :now)";
  static const char root_sql[] = "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                 "secret, issued_at) VALUES (:c, 0, :fp, 'current', 'external', :secret, :now)";
  tl_store *s = a->s;
  open_rt o;
  int64_t now = tl__now_ms();
  tl_status rc;
  int had = 0;
  if ((rc = load_open_rt(&had, s, p->cred, &o, err)) != TL_OK)
    return rc;
  int resolved = had && strcmp(o.state, "unknown") == 0;
  if (had && (rc = retire_open(s, &o, now, err)) != TL_OK)
    return rc;
  rc = had ? TL_Q_EXEC(s, child_sql, "external rotation", err, TL_INT(":c", p->cred), TL_INT(":parent", o.id),
                       TL_INT(":family", o.family), TL_INT(":gen", o.gen + 1), TL_TEXT(":fp", p->fp),
                       TL_SECRET(":secret", p->rt), TL_INT(":now", now))
           : TL_Q_EXEC(s, root_sql, "external rotation", err, TL_INT(":c", p->cred), TL_TEXT(":fp", p->fp),
                       TL_SECRET(":secret", p->rt), TL_INT(":now", now));
  if (rc != TL_OK)
    return rc;
  *out_rt = sqlite3_last_insert_rowid(s->db);
  tl__ids ids = {.profile = p->f->profile, .credential = p->cred, .rt = *out_rt};
  if (resolved &&
      (rc = tl__audit(s, "unknown_resolved", &ids,
                      json_pack("{s:s, s:I, s:s}", "file", p->f->path, "generation", (json_int_t)o.gen, "why",
                                "Hermes rotated the token whose presentation by tokenledger had an unknown "
                                "outcome, so that presentation did not rotate it"),
                      err)) != TL_OK)
    return rc;
  return tl__audit(s, "external_rotation", &ids,
                   json_pack("{s:s, s:s, s:I, s:s%, s:I}", "file", p->f->path, "path", p->sl->path, "generation",
                             (json_int_t)(had ? o.gen + 1 : 0), "fingerprint", p->fp, (size_t)12, "obtained_at",
                             (json_int_t)p->obtained),
                   err);
}

/* A token Hermes held before the ledger's current one: spent; recorded, never current. */
static tl_status record_stale(tl__adopt *a, const pending *p, tl_error *err)
{
  static const char sibling_sql[] =
      "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, "
      "issued_at, retired_at) VALUES (:c, :parent, :family, :gen, :fp, 'retired', 'external', :now, :now)";
  static const char root_sql[] = "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                 "issued_at, retired_at) VALUES (:c, 0, :fp, 'retired', 'external', :now, :now)";
  tl_store *s = a->s;
  open_rt o;
  int64_t now = tl__now_ms();
  int found = 0;
  tl_status rc = load_open_rt(&found, s, p->cred, &o, err);
  if (rc != TL_OK)
    return rc;
  rc = found && o.parent
           ? TL_Q_EXEC(s, sibling_sql, "stale external token", err, TL_INT(":c", p->cred), TL_INT(":parent", o.parent),
                       TL_INT(":family", o.family), TL_INT(":gen", o.gen), TL_TEXT(":fp", p->fp), TL_INT(":now", now))
           : TL_Q_EXEC(s, root_sql, "stale external token", err, TL_INT(":c", p->cred), TL_TEXT(":fp", p->fp),
                       TL_INT(":now", now));
  if (rc != TL_OK)
    return rc;
  tl__ids ids = {.profile = p->f->profile, .credential = p->cred, .rt = sqlite3_last_insert_rowid(s->db)};
  return tl__audit(s, "external_stale", &ids,
                   json_pack("{s:s, s:s, s:s%, s:I, s:s}", "file", p->f->path, "path", p->sl->path, "fingerprint",
                             p->fp, (size_t)12, "obtained_at", (json_int_t)p->obtained, "why",
                             "obtained before the ledger's current token: recorded as spent, the file is rewritten"),
                   err);
}

/* The credential takes the access token of the slot that held its newest token. */
static tl_status take_access_token(tl__adopt *a, const pending *p, tl_error *err)
{
  static const char sql[] =
      "UPDATE credential SET access_token = coalesce(:at, access_token), expires_at = CASE WHEN :at IS NULL THEN "
      "expires_at ELSE nullif(:exp, 0) END, obtained_at = :obtained, status = 'active', status_reason = NULL, "
      "updated_at = :now WHERE id = :c";
  json_t *atv = json_object_get(p->sl->obj, "access_token");
  const char *at = json_is_string(atv) && json_string_length(atv) ? json_string_value(atv) : NULL;
  int64_t now = tl__now_ms();
  return TL_Q_EXEC(a->s, sql, "external rotation", err, TL_SECRET(":at", at),
                   TL_INT(":exp", at ? tl__hf_slot_expiry(p->sl) : 0),
                   TL_INT(":obtained", p->obtained && p->obtained < now ? p->obtained : now), TL_INT(":now", now),
                   TL_INT(":c", p->cred));
}

static tl_status cred_obtained(int64_t *out, tl_store *s, int64_t cred, tl_error *err)
{
  static const char sql[] = "SELECT coalesce(obtained_at, 0) FROM credential WHERE id = :c";
  return TL_Q_INT(out, s, sql, err, TL_INT(":c", cred));
}

/* Every new token of one credential, in order: the chain of Hermes' rotations. */
static tl_status adopt_group(tl__adopt *a, pending *p, size_t n, tl_error *err)
{
  tl_status rc;
  open_rt o;
  int64_t cred = p[0].cred, current = 0, known = 0;
  int found = 0;
  if ((rc = load_open_rt(&found, a->s, cred, &o, err)) != TL_OK)
    return rc;
  if (found && strcmp(o.state, "presented") == 0) {
    /* A presentation of ours is in flight: never rewrite history under it. */
    for (size_t i = 0; i < n; i++) {
      p[i].f->unadopted = 1;
      if ((rc = row(a, p[i].f, p[i].sl, cred, "deferred",
                    "a refresh of this credential is in flight; adopted by the next sync", err)) != TL_OK)
        return rc;
    }
    return TL_OK;
  }
  qsort(p, n, sizeof *p, by_age);
  for (size_t i = 1; i < n; i++)
    for (size_t k = 0; k < i; k++)
      if (!p[k].dup && strcmp(p[k].fp, p[i].fp) == 0)
        p[i].dup = 1;
  if ((rc = cred_obtained(&current, a->s, cred, err)) != TL_OK)
    return rc;
  const pending *newest = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!p[i].dup && (rc = cred_of_fp(&known, a->s, p[i].fp, err)) != TL_OK)
      return rc;
    if (!p[i].dup && known)
      p[i].dup = 1; /* stored meanwhile (another place of the same token): never twice */
    if (p[i].dup)
      continue;
    int64_t rt = 0;
    if (p[i].obtained && current && p[i].obtained < current) {
      if ((rc = record_stale(a, &p[i], err)) != TL_OK)
        return rc;
      continue;
    }
    if ((rc = chain_external(a, &p[i], &rt, err)) != TL_OK)
      return rc;
    newest = &p[i];
    if (p[i].obtained)
      current = p[i].obtained;
  }
  if (newest && (rc = take_access_token(a, newest, err)) != TL_OK)
    return rc;
  for (size_t i = 0; i < n; i++) {
    int is_newest = newest && strcmp(newest->fp, p[i].fp) == 0;
    int64_t c = 0; /* the group's, or the grant another place stored it under */
    if ((rc = cred_of_fp(&c, a->s, p[i].fp, err)) != TL_OK)
      return rc;
    if (!c)
      c = cred;
    if ((rc = set_slot_place(a->s, p[i].f, p[i].sl, c, err)) != TL_OK ||
        (rc = upsert_entry(a, p[i].f, p[i].sl, c, err)) != TL_OK ||
        (rc = row(a, p[i].f, p[i].sl, c, is_newest ? "external_rotation" : "external_stale",
                  is_newest ? "Hermes rotated this grant; adopted"
                            : "a generation Hermes already spent; the file gets the current one",
                  err)) != TL_OK)
      return rc;
  }
  return TL_OK;
}

/* ---- adopting a set of files ---------------------------------------------------------------- */

static const char *no_rt_action(json_t *o)
{
  json_t *src = json_object_get(o, "source");
  json_t *auth = json_object_get(o, "auth_type");
  if (json_is_string(auth) && strcmp(json_string_value(auth), "api_key") == 0)
    return "api_key";
  if (json_object_get(o, "secret_fingerprint") ||
      (json_is_string(src) && strncmp(json_string_value(src), "env:", 4) == 0))
    return "borrowed";
  return "no_refresh_token";
}

static tl_status other_profiles(tl_store *s, int64_t cred, int64_t profile, char *out, size_t n, tl_error *err)
{
  static const char sql[] = "SELECT group_concat(DISTINCT p.name) FROM pool_entry e JOIN profile p ON p.id = "
                            "e.profile_id WHERE e.credential_id = :c AND e.profile_id <> :p";
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  out[0] = '\0';
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":c", cred), TL_INT(":p", profile))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profiles", err)) != TL_OK)
    return rc;
  if (found && sqlite3_column_text(st, 0))
    snprintf(out, n, "%.*s", (int)n - 1, (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
  return TL_OK;
}

/* A slot whose token the ledger knows: attach it, or (spent) refuse or overwrite. */
static tl_status adopt_known(tl__adopt *a, tl__hf *f, tl__slot *sl, const char *fp, int64_t known_cred, int live,
                             tl_error *err)
{
  int64_t mapped = 0;
  tl_status rc = place_cred(&mapped, a->s, f, sl, err);
  if (rc != TL_OK)
    return rc;
  if (!live) {
    snprintf(a->blocked_fp, sizeof a->blocked_fp, "%s", fp);
    snprintf(a->blocked_where, sizeof a->blocked_where, "%s %s %s", a->import ? "import" : "sync", f->path, sl->path);
    if (a->import)
      return TL_EREUSE;
    /* Hermes still holds a token the ledger knows is spent: the write-back replaces it. */
    int64_t cred = mapped ? mapped : known_cred;
    if ((!mapped && (rc = set_slot_place(a->s, f, sl, cred, err)) != TL_OK) ||
        (rc = upsert_entry(a, f, sl, cred, err)) != TL_OK)
      return rc;
    return row(a, f, sl, cred, "spent_overwritten", "the file held a spent refresh token; it is replaced", err);
  }
  char others[200] = "", note[300] = "";
  if ((rc = other_profiles(a->s, known_cred, f->profile, others, sizeof others, err)) != TL_OK)
    return rc;
  if (*others && f->profile)
    snprintf(note, sizeof note, "same grant as profile(s) %.200s: one credential", others);
  if ((rc = set_slot_place(a->s, f, sl, known_cred, err)) != TL_OK ||
      (rc = upsert_entry(a, f, sl, known_cred, err)) != TL_OK)
    return rc;
  return row(a, f, sl, known_cred, mapped == known_cred ? "unchanged" : "attached", *note ? note : NULL, err);
}

/*
 * The credential a place holds, if a new token there can be its rotation: a
 * dead grant (needs_reauth) cannot rotate, so a new token at its place is a new
 * login (Hermes' or ours), treated as a new place.
 */
static tl_status live_place_cred(int64_t *out, tl_store *s, const tl__hf *f, const tl__slot *sl, tl_error *err)
{
  static const char sql[] = "SELECT status <> 'needs_reauth' FROM credential WHERE id = :c";
  int64_t c = 0, live = 0;
  tl_status rc = place_cred(&c, s, f, sl, err);
  if (rc == TL_OK && c)
    rc = TL_Q_INT(&live, s, sql, err, TL_INT(":c", c));
  *out = live ? c : 0;
  return rc;
}

/*
 * A strict profile's surrogate: not a refresh token (never fingerprinted into
 * the lineage). An authentic one says which grant the place holds; one that
 * does not verify (forged, another ledger's, a removed profile's) is refused by
 * import and left for the write-back to replace by sync.
 */
static tl_status adopt_surrogate(tl__adopt *a, tl__hf *f, tl__slot *sl, const char *rt, tl_error *err)
{
  int64_t cred = 0;
  tl_error why = {0};
  tl_status rc;
  if (tl__strict_verify(&cred, NULL, NULL, a->s, rt, &why) != TL_OK) {
    if (a->import)
      return tl__err(err, TL_EINVAL, 0, "%s: %s.refresh_token: a tokenledger surrogate that does not verify (%s)",
                     f->path, sl->path, why.message);
    return row(a, f, sl, 0, "foreign_surrogate", "a surrogate this ledger did not issue; the write-back replaces it",
               err);
  }
  if ((rc = set_slot_place(a->s, f, sl, cred, err)) != TL_OK || (rc = upsert_entry(a, f, sl, cred, err)) != TL_OK)
    return rc;
  return row(a, f, sl, cred, "strict", "a surrogate of this ledger (strict mode)", err);
}

static tl_status push_pending(pending **v, size_t *n, size_t *cap, tl__hf *f, tl__slot *sl, const char *rt,
                              const char *fp, int64_t cred, tl_error *err)
{
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    pending *nv = realloc(*v, c * sizeof *nv);
    if (!nv)
      return tl__oom(err);
    *v = nv;
    *cap = c;
  }
  pending *p = &(*v)[(*n)++];
  memset(p, 0, sizeof *p);
  p->f = f;
  p->sl = sl;
  p->rt = rt;
  snprintf(p->fp, sizeof p->fp, "%s", fp);
  p->cred = cred;
  p->obtained = tl__hf_slot_obtained(sl);
  p->seq = *n;
  return TL_OK;
}

/*
 * A strict file never holds a real refresh token: serve hands Hermes surrogates only. A
 * foreign token (tl__hf_strict_foreign) came from whoever answered on serve's port while
 * serve was down (any local user can bind it); adopting it as Hermes' rotation would retire
 * the only copy of the real refresh token. Import refuses the file; sync leaves the grant as
 * it is and the write-back puts the strict form back.
 */
static tl_status refuse_foreign(tl__adopt *a, tl__hf *f, tl__slot *sl, const char *fp, tl_error *err)
{
  if (a->import)
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: %s.refresh_token: a strict profile's file holds a refresh token that is not this ledger's "
                   "surrogate, answered by whatever listened on its loopback portal; not adopted",
                   f->path, sl->path);
  int64_t cred = 0;
  tl_status rc = place_cred(&cred, a->s, f, sl, err);
  if (rc != TL_OK)
    return rc;
  tl__ids ids = {.profile = f->profile, .credential = cred};
  char fp12[13];
  snprintf(fp12, sizeof fp12, "%.12s", fp);
  if ((rc = tl__audit(a->s, "strict_foreign_token", &ids,
                      json_pack("{s:s, s:s, s:s}", "file", f->path, "path", sl->path, "fingerprint", fp12), err)) !=
      TL_OK)
    return rc;
  return row(a, f, sl, cred, "foreign_refused",
             "a refresh token that is not this ledger's surrogate, from whatever answered on serve's port; not "
             "adopted, the strict form is written back",
             err);
}

/*
 * A new token at a place of credential cred is adopted as its rotation only if the file sends it
 * where the credential does: the endpoint the slot's own settings name (a Nous portal_base_url,
 * else the provider's) is the credential's token URL. Otherwise the token would leave for an
 * endpoint its own file never named (another grant's token, copied or linked in, sent to the
 * server of whoever set this credential up): refused, nothing adopted, nothing presented.
 * Strict files point at serve and have their own rule (tl__hf_strict_foreign).
 */
static tl_status endpoint_agrees(tl_store *s, const tl__hf *f, const tl__slot *sl, int64_t cred, tl_error *err)
{
  static const char cred_sql[] = "SELECT coalesce(c.token_url, p.token_url) FROM credential c LEFT JOIN provider p ON "
                                 "p.name = c.provider WHERE c.id = :c";
  static const char prov_sql[] = "SELECT token_url FROM provider WHERE name = :n";
  char url[2100] = "";
  int64_t strict = 0;
  tl_status rc;
  int minimax = strcmp(sl->provider, "minimax-oauth") == 0;
  if (!cred || (strcmp(sl->provider, "nous") != 0 && !minimax))
    return TL_OK; /* other providers' files name no endpoint: the ledger's is the only one */
  if ((rc = tl__hf_strict_owner(&strict, s, f, err)) != TL_OK || strict)
    return rc;
  json_t *fallback = minimax ? json_object_get(json_object_get(json_object_get(f->doc, "providers"), "minimax-oauth"),
                                               "portal_base_url")
                             : doc_nous_portal(f->doc);
  if ((rc = portal_token_url(url, sizeof url, sl->obj, fallback, minimax, f->path, sl->path, err)) != TL_OK)
    return rc;
  char *mine = NULL, *theirs = NULL;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential", err)) != TL_OK)
    return rc;
  mine = found ? tl__col_dup(st, 0) : NULL;
  sqlite3_reset(st);
  if (!url[0]) {
    if ((rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_TEXT(":n", sl->provider))) != TL_OK ||
        (rc = tl__step_row(&found, s, st, "provider", err)) != TL_OK) {
      free(mine);
      return rc;
    }
    theirs = found ? tl__col_dup(st, 0) : NULL;
    sqlite3_reset(st);
  }
  const char *file_url = url[0] ? url : theirs;
  if (mine && file_url && strcmp(mine, file_url) != 0)
    rc = tl__err(err, TL_EINSECURE, 0,
                 "%s: %s.refresh_token: a new refresh token where credential %lld lives, but this file refreshes it "
                 "at %s, not at the credential's %s; not adopted (a token goes only where its own file sends it)",
                 f->path, sl->path, (long long)cred, file_url, mine);
  free(mine);
  free(theirs);
  return rc;
}

static int by_cred(const void *x, const void *y)
{
  const pending *a = x, *b = y;
  if (a->cred != b->cred)
    return a->cred < b->cred ? -1 : 1;
  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

tl_status tl__adopt_set(tl__adopt *a, tl__hfset *set, tl_error *err)
{
  tl_status rc = TL_OK;
  pending *pv = NULL;
  size_t pn = 0, pcap = 0;
  /* 1. Known tokens and slots without one; collect new tokens. */
  for (size_t i = 0; i < set->n && rc == TL_OK; i++) {
    tl__hf *f = &set->v[i];
    if (a->import)
      tl__progress(a->s, "files", (int64_t)i, (int64_t)set->n);
    if (!f->doc || f->in_step)
      continue;
    for (size_t k = 0; k < f->ss.n && rc == TL_OK; k++) {
      tl__slot *sl = &f->ss.v[k];
      const char *rt = tl__hf_slot_rt(sl);
      if (tl__hf_is_defused(rt))
        rt = NULL; /* a spent token we overwrote in place: no token, the next write-back fills it */
      if (!rt) {
        int64_t mapped = 0;
        if ((rc = place_cred(&mapped, a->s, f, sl, err)) != TL_OK)
          break;
        if (sl->kind == TL_SLOT_POOL)
          rc = upsert_entry(a, f, sl, mapped, err);
        if (rc == TL_OK && (sl->kind == TL_SLOT_POOL || json_object_get(sl->obj, "access_token")))
          rc = row(a, f, sl, mapped, no_rt_action(sl->obj), "kept in the file; no lineage", err);
        continue;
      }
      if (tl__strict_is_surrogate(rt)) {
        rc = adopt_surrogate(a, f, sl, rt, err);
        continue;
      }
      char fp[65];
      tl_fingerprint(fp, rt, strlen(rt));
      int64_t known_rt = 0, known_cred = 0, placed = 0;
      int foreign = 0;
      tl_error probe = {0};
      tl_status look = tl__rt_lookup(&known_rt, &known_cred, a->s, fp, &probe);
      if (look == TL_OK && known_rt)
        rc = adopt_known(a, f, sl, fp, known_cred, 1, err);
      else if (look == TL_EREUSE)
        rc = adopt_known(a, f, sl, fp, known_cred, 0, err);
      else if (look != TL_OK)
        rc = tl__err(err, look, probe.sys, "%s", probe.message);
      else if ((rc = place_cred(&placed, a->s, f, sl, err)) != TL_OK ||
               (rc = tl__hf_strict_foreign(&foreign, a->s, f, sl, placed, err)) != TL_OK)
        break;
      else if (foreign)
        rc = refuse_foreign(a, f, sl, fp, err);
      else {
        int64_t mapped = 0;
        if ((rc = live_place_cred(&mapped, a->s, f, sl, err)) == TL_OK &&
            (rc = endpoint_agrees(a->s, f, sl, mapped, err)) == TL_OK)
          rc = push_pending(&pv, &pn, &pcap, f, sl, rt, fp, mapped, err);
      }
    }
  }
  if (rc != TL_OK)
    goto done;
  /* 2. New tokens at places of known grants: Hermes' rotations, in order, per credential. */
  if (pn)
    qsort(pv, pn, sizeof *pv, by_cred);
  size_t start = 0;
  while (start < pn && pv[start].cred == 0)
    start++;
  for (size_t i = start; i < pn && rc == TL_OK;) {
    size_t j = i;
    while (j < pn && pv[j].cred == pv[i].cred)
      j++;
    rc = adopt_group(a, pv + i, j - i, err);
    i = j;
  }
  /* 3. New tokens at new places: new grants (one credential per token, however many places). */
  for (size_t i = 0; i < start && rc == TL_OK; i++) {
    pending *p = &pv[i];
    int64_t known_rt = 0, known_cred = 0, cred = 0;
    tl_error probe = {0};
    tl_status look = tl__rt_lookup(&known_rt, &known_cred, a->s, p->fp, &probe);
    if (look == TL_OK && known_rt) {
      rc = adopt_known(a, p->f, p->sl, p->fp, known_cred, 1, err);
      continue;
    }
    if (look != TL_OK) {
      rc = tl__err(err, look, probe.sys, "%s", probe.message);
      break;
    }
    if ((rc = new_credential(&cred, a, p->f, p->sl, p->rt, p->fp, err)) != TL_OK ||
        (rc = set_slot_place(a->s, p->f, p->sl, cred, err)) != TL_OK ||
        (rc = upsert_entry(a, p->f, p->sl, cred, err)) != TL_OK)
      break;
    rc = row(a, p->f, p->sl, cred, "new", NULL, err);
  }
  /* 4. A singleton whose grant a pool row of the same profile holds needs no entry of its own. */
  for (size_t i = 0; i < set->n && rc == TL_OK; i++) {
    static const char dedup[] =
        "DELETE FROM pool_entry WHERE profile_id = :p AND entry_id LIKE 'providers.%' AND credential_id IN "
        "(SELECT credential_id FROM pool_entry WHERE profile_id = :p AND entry_id NOT LIKE 'providers.%')";
    if (!set->v[i].profile || set->v[i].in_step || !set->v[i].doc)
      continue;
    rc = TL_Q_EXEC(a->s, dedup, "pool entries", err, TL_INT(":p", set->v[i].profile));
  }
done:
  free(pv);
  return rc;
}

/* ---- remembering files ---------------------------------------------------------------------- */

/* Secrets of a file the ledger holds no grant for, numbered as the template names them. */
typedef struct stash {
  char **v; /* secrets: burned when freed */
  size_t n, cap;
} stash;

static void stash_free(stash *st)
{
  for (size_t i = 0; i < st->n; i++)
    tl_secret_free(st->v[i]);
  free(st->v);
  memset(st, 0, sizeof *st);
}

static int is_secret_key(const char *k)
{
  for (size_t i = 0; tl__secret_keys[i]; i++)
    if (strcmp(k, tl__secret_keys[i]) == 0)
      return 1;
  return 0;
}

/* Every remaining secret string (an API key, a guest token, an id_token) becomes {"$tl": "secret", "n": N}. */
static int stash_secrets(json_t *v, stash *st, int depth)
{
  if (depth > 64)
    return 0;
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x)
    {
      if (stash_secrets(x, st, depth + 1) != 0)
        return -1;
    }
    return 0;
  }
  if (!json_is_object(v))
    return 0;
  const char *k;
  json_t *x;
  void *tmp;
  json_object_foreach_safe(v, tmp, k, x)
  {
    if (is_secret_key(k) && json_is_string(x) && json_string_length(x) > 0) {
      if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 8;
        char **nv = realloc(st->v, cap * sizeof *nv);
        if (!nv)
          return -1;
        st->v = nv;
        st->cap = cap;
      }
      if (!(st->v[st->n] = strdup(json_string_value(x))))
        return -1;
      json_object_set_new(v, k, json_pack("{s:s, s:I}", "$tl", "secret", "n", (json_int_t)st->n));
      st->n++;
    } else if (stash_secrets(x, st, depth + 1) != 0) {
      return -1;
    }
  }
  return 0;
}

/* The document with every token and secret replaced by a reference: what the ledger keeps. */
static json_t *templatize(tl_store *s, const tl__hf *f, stash *st, tl_status *rc, tl_error *err)
{
  json_t *t = json_deep_copy(f->doc);
  tl__slots ss = {0};
  tl_error ignore = {0};
  if (!t || tl__hf_walk(&ss, t, f->path, TL_WALK_TEMPLATE | (f->shared ? TL_WALK_SHARED : 0), &ignore) != TL_OK) {
    json_decref(t);
    return NULL;
  }
  for (size_t i = 0; i < ss.n; i++) {
    tl__slot *sl = &ss.v[i];
    json_t *o = sl->obj;
    json_t *atv = json_object_get(o, "access_token"), *ak = json_object_get(o, "agent_key");
    int64_t c = 0;
    if ((*rc = tl__slot_credential(&c, s, f, sl, err)) != TL_OK) {
      tl__hf_slots_free(&ss);
      json_decref(t);
      return NULL;
    }
    if (!c) {
      /* A token the ledger does not hold (a deferred adoption) is not kept at all: the file has it. */
      if (json_is_string(json_object_get(o, "refresh_token")) && tl__hf_slot_rt(sl))
        json_object_set_new(o, "refresh_token", json_null());
      continue;
    }
    if (json_is_string(ak) && json_is_string(atv) && json_equal(ak, atv))
      json_object_set_new(o, "agent_key", tl__hf_ref("at", c));
    if (json_is_string(atv))
      json_object_set_new(o, "access_token", tl__hf_ref("at", c));
    if (json_is_string(json_object_get(o, "refresh_token")))
      json_object_set_new(o, "refresh_token", tl__hf_ref("rt", c));
  }
  tl__hf_slots_free(&ss);
  if (stash_secrets(t, st, 0) != 0) {
    json_decref(t);
    return NULL;
  }
  return t;
}

tl_status tl__hfset_remember(tl_store *s, tl__hfset *set, tl_error *err)
{
  static const char sql[] =
      "INSERT INTO hermes_file (profile_id, kind, path, template, sha256, imported_at, synced_at) VALUES (:p, :kind, "
      ":path, :t, :sha, :now, :now) ON CONFLICT (path) DO UPDATE SET profile_id = :p, kind = :kind, template = :t, "
      "sha256 = :sha, synced_at = :now RETURNING id";
  static const char del_sql[] = "DELETE FROM hermes_secret WHERE file_id = :f";
  static const char ins_sql[] = "INSERT INTO hermes_secret (file_id, n, secret) VALUES (:f, :n, :s)";
  tl_status rc = TL_OK;
  for (size_t i = 0; i < set->n && rc == TL_OK; i++) {
    tl__hf *f = &set->v[i];
    if (!f->doc || (f->in_step && !f->unadopted))
      continue;
    stash st = {0};
    json_t *t = templatize(s, f, &st, &rc, err);
    char *text = t ? json_dumps(t, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(t);
    int64_t id = 0;
    if (!t && rc == TL_OK)
      rc = TL_ERROR; /* the error is set by templatize */
    if (rc == TL_OK && !text)
      rc = tl__oom(err);
    /* a file with a deferred token keeps no hash: it is read again next time */
    if (rc == TL_OK)
      rc = TL_Q_INT(&id, s, sql, err, TL_OPTINT(":p", f->profile), TL_TEXT(":kind", f->shared ? "shared_nous" : "auth"),
                    TL_TEXT(":path", f->path), TL_TEXT(":t", text), TL_TEXT(":sha", f->unadopted ? NULL : f->sha),
                    TL_INT(":now", tl__now_ms()));
    if (rc == TL_OK)
      rc = TL_Q_EXEC(s, del_sql, "hermes secrets", err, TL_INT(":f", id));
    for (size_t k = 0; k < st.n && rc == TL_OK; k++)
      rc = TL_Q_EXEC(s, ins_sql, "hermes secrets", err, TL_INT(":f", id), TL_INT(":n", (int64_t)k),
                     TL_SECRET(":s", st.v[k]));
    stash_free(&st);
    free(text);
  }
  return rc;
}

/* ---- import ------------------------------------------------------------------------------------- */

typedef struct plan {
  char profile[80];
  char *home; /* a Hermes home this import makes the profile's sync target, or NULL */
  char *file;
  int shared;
} plan;

static void plans_free(plan *v, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free(v[i].home);
    free(v[i].file);
  }
  free(v);
}

static tl_status add_plan(plan **v, size_t *n, size_t *cap, const char *profile, const char *home, const char *file,
                          int shared, tl_error *err)
{
  if (strlen(file) >= PATH_MAX || (home && strlen(home) >= PATH_MAX))
    return tl__err(err, TL_EINVAL, 0, "%.200s...: path longer than %d bytes", file, PATH_MAX - 1);
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    plan *nv = realloc(*v, c * sizeof *nv);
    if (!nv)
      return tl__oom(err);
    *v = nv;
    *cap = c;
  }
  plan *t = &(*v)[*n];
  memset(t, 0, sizeof *t);
  snprintf(t->profile, sizeof t->profile, "%s", profile ? profile : "");
  t->file = strdup(file);
  t->home = home ? strdup(home) : NULL;
  if (!t->file || (home && !t->home)) {
    free(t->file);
    free(t->home);
    return tl__oom(err);
  }
  t->shared = shared;
  (*n)++;
  return TL_OK;
}

static int is_dir(const char *p)
{
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int exists(const char *p)
{
  struct stat st;
  return lstat(p, &st) == 0;
}

static int by_name(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The profile's recorded home, if any (to tell a home's auth.json from a copy). */
static tl_status profile_home(int *has, tl_store *s, const char *name, char *out, size_t n, tl_error *err)
{
  static const char sql[] = "SELECT home FROM profile WHERE name = :n";
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  out[0] = '\0';
  *has = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":n", name))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profile", err)) != TL_OK)
    return rc;
  if (found && sqlite3_column_text(st, 0)) {
    snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
    *has = 1;
  }
  sqlite3_reset(st);
  return TL_OK;
}

static tl_status plan_root(plan **v, size_t *n, size_t *cap, tl_report *warn, const char *abs, tl_error *err)
{
  char file[PATH_MAX + 16], dir[PATH_MAX + 16];
  tl_status rc;
  snprintf(file, sizeof file, "%s/auth.json", abs);
  if (exists(file) && (rc = add_plan(v, n, cap, "default", abs, file, 0, err)) != TL_OK)
    return rc;
  snprintf(dir, sizeof dir, "%s/profiles", abs);
  DIR *d = opendir(dir);
  if (d) {
    char **names = NULL;
    size_t nn = 0;
    struct dirent *de;
    int oom = 0;
    while (!oom && (de = readdir(d))) {
      if (de->d_name[0] == '.')
        continue; /* ., .., and Hermes' .deleted tombstones */
      char **nv = realloc(names, (nn + 1) * sizeof *nv);
      if (!nv) {
        oom = 1;
        break;
      }
      names = nv;
      if (!(names[nn] = strdup(de->d_name)))
        oom = 1;
      else
        nn++;
    }
    if (oom) {
      for (size_t k = 0; k < nn; k++)
        free(names[k]);
      free(names);
      closedir(d);
      return tl__oom(err);
    }
    closedir(d);
    if (nn)
      qsort(names, nn, sizeof *names, by_name);
    rc = TL_OK;
    for (size_t i = 0; i < nn; i++) {
      char home[PATH_MAX + 300], pf[PATH_MAX + 320];
      snprintf(home, sizeof home, "%s/%s", dir, names[i]);
      snprintf(pf, sizeof pf, "%s/auth.json", home);
      if (rc != TL_OK || !is_dir(home) || !exists(pf))
        continue;
      if (!tl_profile_name_valid(names[i]) || strcmp(names[i], "default") == 0) {
        const char *cells[7] = {names[i], pf, "$", "", NULL, "skipped", "not a valid Hermes profile name"};
        const int num[7] = {0};
        rc = tl__report_add_row(warn, cells, num, err);
        continue;
      }
      rc = add_plan(v, n, cap, names[i], home, pf, 0, err);
    }
    for (size_t i = 0; i < nn; i++)
      free(names[i]);
    free(names);
    if (rc != TL_OK)
      return rc;
  }
  const char *shared_dir = getenv("HERMES_SHARED_AUTH_DIR");
  char shared[PATH_MAX + 32];
  if (shared_dir && *shared_dir)
    snprintf(shared, sizeof shared, "%s/nous_auth.json", shared_dir);
  else
    snprintf(shared, sizeof shared, "%s/shared/nous_auth.json", abs);
  char real[PATH_MAX];
  if (exists(shared) && (rc = add_plan(v, n, cap, NULL, NULL, realpath(shared, real) ? real : shared, 1, err)) != TL_OK)
    return rc;
  return TL_OK;
}

static tl_status plan_import(plan **v, size_t *n, size_t *cap, tl_report *warn, tl_store *s, const char *path,
                             const tl_import_opts *o, tl_error *err)
{
  char abs[PATH_MAX], file[PATH_MAX + 16];
  if (!realpath(path, abs)) {
    int e = errno;
    return tl__err(err,
                   e == ENOENT  ? TL_ENOTFOUND
                   : e == ELOOP ? TL_EINVAL
                                : TL_EIO,
                   e, "%s: %s", path, e == ELOOP ? "symbolic link loop" : strerror(e));
  }
  const char *profile = o && o->profile ? o->profile : "default";
  if (!is_dir(abs)) {
    if (o && o->all_profiles)
      return tl__err(err, TL_EINVAL, 0, "%s: not a directory; importing every profile needs a Hermes root directory",
                     path);
    /* A file is where the grant came from; only a home (or root) makes a sync target. */
    char home[PATH_MAX], dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", abs);
    char *slash = strrchr(dir, '/');
    if (slash)
      *slash = '\0';
    int has = 0;
    tl_status rc = profile_home(&has, s, profile, home, sizeof home, err);
    if (rc != TL_OK)
      return rc;
    int is_home = has && strcmp(home, dir) == 0 && slash && strcmp(slash + 1, "auth.json") == 0;
    return add_plan(v, n, cap, profile, is_home ? home : NULL, abs, 0, err);
  }
  if (o && o->all_profiles) {
    tl_status rc = plan_root(v, n, cap, warn, abs, err);
    if (rc == TL_OK && *n == 0)
      rc = tl__err(err, TL_ENOTFOUND, 0, "%s: no auth.json in this Hermes root or its profiles", path);
    return rc;
  }
  snprintf(file, sizeof file, "%s/auth.json", abs);
  if (!exists(file))
    return tl__err(err, TL_ENOTFOUND, 0, "%s: no auth.json in this Hermes home", path);
  return add_plan(v, n, cap, profile, abs, file, 0, err);
}

/*
 * Every planned file against the rules of the Hermes file layer (tl__hf_check): a home or file
 * of another user, a link of theirs, a directory others can write is never imported, since
 * whoever can change it decides what we would read (a link to another user's auth.json) and
 * where its grant would be sent. A single file or home: refused. A whole root: the others are
 * imported, the refused ones reported as rows and in *refusal (the first one's reason).
 */
static tl_status screen_plans(plan *v, size_t *n, tl_report *r, int many, tl_error *refusal, tl_error *err)
{
  size_t kept = 0, refused = 0;
  tl_status rc = TL_OK;
  for (size_t i = 0; i < *n; i++) {
    tl_error why = {0};
    if (tl__hf_check(v[i].file, &why) == TL_OK) {
      v[kept++] = v[i];
      continue;
    }
    if (!many) {
      rc = tl__err(err, why.code, 0, "%s", why.message);
      for (size_t k = i; k < *n; k++)
        v[kept++] = v[k]; /* freed by the caller */
      break;
    }
    const char *cells[7] = {v[i].shared ? "(shared)" : v[i].profile, v[i].file, "$", "", NULL, "refused", why.message};
    const int num[7] = {0};
    if (!refused++)
      *refusal = why;
    rc = tl__report_add_row(r, cells, num, err);
    free(v[i].home);
    free(v[i].file);
    if (rc != TL_OK) {
      for (size_t k = i + 1; k < *n; k++)
        v[kept++] = v[k];
      break;
    }
  }
  *n = kept;
  if (rc == TL_OK && refused > 1) {
    size_t l = strlen(refusal->message);
    snprintf(refusal->message + l, sizeof refusal->message - l, " (and %zu more refused)", refused - 1);
  }
  if (rc == TL_OK && refused && kept == 0)
    rc = tl__err(err, refusal->code, 0, "%s; nothing was imported", refusal->message);
  return rc;
}

static tl_status ensure_profile(int64_t *out, tl_store *s, const char *name, const char *home, tl_error *err)
{
  static const char ins[] = "INSERT INTO profile (name, home, created_at) VALUES (:n, :h, :now)";
  static const char upd[] = "UPDATE profile SET home = :h WHERE id = :id AND (home IS NULL OR home <> :h)";
  tl_error probe = {0};
  char other[80] = "";
  int known = tl__profile_id(out, s, name, &probe) == TL_OK;
  tl_status rc;
  if (home && (rc = tl__home_owner(other, sizeof other, s, home, known ? *out : 0, err)) != TL_OK)
    return rc;
  if (other[0]) /* two profiles writing one auth.json would swap its grant back and forth */
    return tl__err(err, TL_EEXISTS, 0, "%s: already the home of profile '%s'; a Hermes home belongs to one profile",
                   home, other);
  if (known)
    return home ? TL_Q_EXEC(s, upd, "profile home", err, TL_TEXT(":h", home), TL_INT(":id", *out)) : TL_OK;
  if (!tl_profile_name_valid(name))
    return tl__err(err, TL_EINVAL, 0, "profile name '%.64s' is invalid", name);
  rc = TL_Q_EXEC(s, ins, "profile", err, TL_TEXT(":n", name), TL_TEXT(":h", home), TL_INT(":now", tl__now_ms()));
  *out = sqlite3_last_insert_rowid(s->db);
  if (rc == TL_OK) {
    tl__ids ids = {.profile = *out};
    rc = tl__audit(s, "profile_added", &ids,
                   json_pack("{s:s, s:s?, s:s}", "profile", name, "home", home, "by", "import"), err);
  }
  return rc;
}

tl_status tl_import(tl_report **out, tl_store *s, const char *path, const tl_import_opts *o, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc;
  plan *plans = NULL;
  size_t np = 0, pcap = 0;
  tl_report *r = NULL;
  tl__hfset set = {0};
  tl__adopt a;
  tl_error refusal = {0};
  memset(&a, 0, sizeof a);
  if (!out || !s || !path)
    return tl__err(err, TL_EINVAL, 0, "import: no path");
  *out = NULL;
  if (o && o->profile && !tl_profile_name_valid(o->profile))
    return tl__err(err, TL_EINVAL, 0, "profile name '%.64s' is invalid", o->profile);
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if ((rc = plan_import(&plans, &np, &pcap, r, s, path, o, err)) != TL_OK ||
      (rc = screen_plans(plans, &np, r, o && o->all_profiles, &refusal, err)) != TL_OK)
    goto done;
  for (size_t i = 0; i < np; i++)
    if ((rc = tl__hfset_add(&set, plans[i].file, 0, plans[i].shared ? NULL : plans[i].profile, plans[i].shared,
                            plans[i].home != NULL, err)) != TL_OK ||
        (rc = tl__hfset_refused(&set, NULL, err)) != TL_OK)
      goto done; /* changed since it was screened: nothing is imported */
  /* Read and check every file before touching the ledger: a bad file changes nothing. */
  if ((rc = tl__hfset_read(NULL, &set, err)) != TL_OK)
    goto done;
  for (size_t i = 0; i < set.n; i++)
    if (!set.v[i].doc) {
      rc = tl__err(err, TL_ENOTFOUND, 0, "%s: no such file", set.v[i].path);
      goto done;
    }
  if ((rc = tl__tx_begin(s, "import", err)) != TL_OK)
    goto done;
  for (size_t i = 0; rc == TL_OK && i < np; i++)
    if (!plans[i].shared)
      rc = ensure_profile(&set.v[i].profile, s, plans[i].profile, plans[i].home, err);
  a.s = s;
  a.report = r;
  a.import = 1;
  if (rc == TL_OK)
    rc = tl__adopt_set(&a, &set, err);
  if (rc == TL_OK)
    rc = tl__hfset_remember(s, &set, err);
  if (rc == TL_OK)
    tl__progress(s, "files", (int64_t)set.n, (int64_t)set.n);
  if (rc == TL_OK && (!o || !o->dry_run)) {
    tl__ids ids = {0};
    rc = tl__audit(s, "import", &ids, json_pack("{s:s, s:I}", "path", path, "files", (json_int_t)np), err);
    if (rc == TL_OK)
      rc = tl__tx_commit(s, err);
  } else {
    tl__tx_rollback(s);
  }
  if (rc == TL_EREUSE) {
    /* Nothing of the import stays; the refusal itself is on record (not in a dry run). */
    if (o && o->dry_run) {
      rc = tl__err(err, TL_EREUSE, 0, "%s: holds a refresh token the ledger knows as spent (%.12s...)", a.blocked_where,
                   a.blocked_fp);
    } else {
      rc = tl__reuse_blocked(s, a.blocked_fp, a.blocked_where, err);
      if (rc == TL_EREUSE && err) {
        size_t l = strlen(err->message);
        snprintf(err->message + l, sizeof err->message - l,
                 ". The file is stale (a backup or a copy); nothing was imported");
      }
    }
  }
  if (rc == TL_OK && refusal.code != TL_OK) {
    /* The other homes are imported; the refused one is named, and the exit is not 0. */
    size_t l = strlen(refusal.message);
    char others[64];
    if (np == 1)
      snprintf(others, sizeof others, "the other file %s", o && o->dry_run ? "would be" : "was");
    else
      snprintf(others, sizeof others, "the other %zu files %s", np, o && o->dry_run ? "would be" : "were");
    snprintf(refusal.message + l, sizeof refusal.message - l, "; not imported (%s imported)", others);
    rc = tl__err(err, refusal.code, 0, "%s", refusal.message);
  }
done:
  tl__hfset_free(&set);
  plans_free(plans, np);
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}
