/*
 * hermes.c - import, export and sync of Hermes auth.json files.
 *
 * A Hermes file is walked into "slots": every place that may hold a grant
 * (providers.<p> flat or its "tokens" object, legacy systems.nous_portal,
 * credential_pool.<p>[i], the shared Nous store). Ingesting a file (import, or
 * the adopt half of sync) fingerprints each slot's refresh token and either
 * attaches it to the credential that holds it, stores it as a new credential,
 * records it as an `external` rotation of the credential that slot belonged to,
 * or refuses it as spent. The file is kept as a template in which those tokens
 * are references to ledger rows, so unknown keys survive and no spent plaintext
 * lingers. Export reads the file under Hermes' own lock (flock on the sibling
 * auth.lock), patches only the fields tokenledger owns where the ledger's
 * tokens differ, and replaces the file atomically (temp file in the same
 * directory, fsync, rename onto the symlink-resolved target, directory fsync,
 * mode 0600).
 *
 * Invariants: an import is one transaction (any error leaves the ledger as it
 * was; only a reuse refusal commits its audit event afterwards); a spent RT is
 * never stored; a file is never written except by rename of a complete,
 * fsynced temporary file; I/O errors are never read as an empty store.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TL_HERMES_MAX_FILE (16 * 1024 * 1024)
#define TL_LOCK_TIMEOUT_MS 15000

/* ---- reading files -------------------------------------------------------- */

/* Loads a JSON object from path. sha (65 bytes) receives the hex SHA-256 of the bytes. */
static tl_status load_file(json_t **out, char sha[65], const char *path, tl_error *err)
{
  tl_status rc = TL_OK;
  char *buf = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  *out = NULL;
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      return tl__err(err, TL_ENOTFOUND, e, "%s: no such file", path);
    if (e == ELOOP)
      return tl__err(err, TL_EINVAL, e, "%s: symbolic link loop", path);
    return tl__err(err, TL_EIO, e, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: not a regular file", path);
    goto done;
  }
  if (st.st_size > TL_HERMES_MAX_FILE) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: %lld bytes; an auth.json is at most %d MiB", path, (long long)st.st_size,
                 TL_HERMES_MAX_FILE / (1024 * 1024));
    goto done;
  }
  size_t cap = (size_t)st.st_size + 1, len = 0;
  if (!(buf = malloc(cap + 1))) {
    rc = tl__oom(err);
    goto done;
  }
  for (;;) {
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = tl__err(err, TL_EIO, errno, "%s: read failed: %s", path, strerror(errno));
      goto done;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len > TL_HERMES_MAX_FILE) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: larger than %d MiB", path, TL_HERMES_MAX_FILE / (1024 * 1024));
      goto done;
    }
    if (len == cap) {
      char *nb = realloc(buf, cap * 2 + 1);
      if (!nb) {
        rc = tl__oom(err);
        goto done;
      }
      buf = nb;
      cap *= 2;
    }
  }
  tl_fingerprint(sha, buf, len);
  const char *text = buf;
  size_t tlen = len;
  if (tlen >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF) {
    text += 3; /* Hermes reads utf-8-sig */
    tlen -= 3;
  }
  size_t ws = 0;
  while (ws < tlen && strchr(" \t\r\n", text[ws]))
    ws++;
  if (ws == tlen) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: empty file; an auth.json holds a JSON object", path);
    goto done;
  }
  json_error_t je;
  json_t *doc = json_loadb(text, tlen, JSON_REJECT_DUPLICATES, &je);
  if (!doc) {
    /* Jansson ends some messages with "near '<lexeme>'", and the lexeme can be a token: drop it. */
    char *near = strstr(je.text, " near '");
    if (near)
      *near = '\0';
    rc = tl__err(err, TL_EINVAL, 0, "%s: line %d, column %d: %s", path, je.line, je.column, je.text);
    goto done;
  }
  if (!json_is_object(doc)) {
    json_decref(doc);
    rc = tl__err(err, TL_EINVAL, 0, "%s: $: expected a JSON object at the top level", path);
    goto done;
  }
  *out = doc;
done:
  if (buf) {
    tl_burn(buf, cap);
    free(buf);
  }
  close(fd);
  return rc;
}

/* ---- slots ------------------------------------------------------------------- */

typedef enum slot_kind { SLOT_SINGLETON, SLOT_TOKENS, SLOT_POOL, SLOT_SHARED } slot_kind;

typedef struct slot {
  slot_kind kind;
  char provider[130];
  char key[200];  /* stable identity: singleton:p, pool:p:id, shared:nous */
  char path[320]; /* JSON path for messages */
  json_t *obj;    /* borrowed: the object holding refresh_token/access_token */
  json_t *holder; /* borrowed: providers.<p> for SLOT_TOKENS (last_refresh lives there) */
} slot;

typedef struct slots {
  slot *v;
  size_t n, cap;
} slots;

static tl_status push_slot(slots *ss, slot_kind kind, const char *provider, const char *key, const char *path,
                           json_t *obj, json_t *holder, tl_error *err)
{
  if (ss->n == ss->cap) {
    size_t cap = ss->cap ? ss->cap * 2 : 16;
    slot *nv = realloc(ss->v, cap * sizeof *nv);
    if (!nv)
      return tl__oom(err);
    ss->v = nv;
    ss->cap = cap;
  }
  slot *s = &ss->v[ss->n++];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  snprintf(s->provider, sizeof s->provider, "%s", provider);
  snprintf(s->key, sizeof s->key, "%s", key);
  snprintf(s->path, sizeof s->path, "%s", path);
  s->obj = obj;
  s->holder = holder;
  return TL_OK;
}

/* A field that must be a string or null (or absent). Ref objects count as strings. */
static tl_status want_string(const char *file, const char *path, json_t *obj, const char *k, tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  if (!v || json_is_string(v) || json_is_null(v) || (json_is_object(v) && json_object_get(v, "$tl")))
    return TL_OK;
  return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: expected a string or null", file, path, k);
}

static tl_status want_type(const char *file, const char *path, json_t *obj, const char *k, int types, const char *what,
                           tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  if (!v || json_is_null(v))
    return TL_OK;
  if ((types & 1) && json_is_integer(v))
    return TL_OK;
  if ((types & 2) && json_is_real(v))
    return TL_OK;
  if ((types & 4) && json_is_string(v))
    return TL_OK;
  if ((types & 8) && json_is_boolean(v))
    return TL_OK;
  if ((types & 16) && json_is_object(v))
    return TL_OK;
  return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: expected %s", file, path, k, what);
}

static tl_status check_token_fields(const char *file, const char *path, json_t *o, tl_error *err)
{
  static const char *const strs[] = {"refresh_token",   "access_token", "agent_key",    "expires_at", "label",
                                     "portal_base_url", "client_id",    "last_refresh", "obtained_at"};
  tl_status rc;
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
    if ((rc = want_string(file, path, o, strs[i], err)) != TL_OK)
      return rc;
  if ((rc = want_type(file, path, o, "expires_in", 3, "a number", err)) != TL_OK)
    return rc;
  return want_type(file, path, o, "expires_at_ms", 3, "a number", err);
}

/* Walks a Hermes auth.json (or, with shared set, nous_auth.json) into slots, validating types. */
static tl_status walk(slots *ss, json_t *doc, const char *file, int shared, tl_error *err)
{
  tl_status rc;
  char path[240], key[200];
  if (shared) {
    if ((rc = check_token_fields(file, "$", doc, err)) != TL_OK)
      return rc;
    return push_slot(ss, SLOT_SHARED, "nous", "shared:nous", "$", doc, NULL, err);
  }
  if ((rc = want_type(file, "$", doc, "version", 1, "an integer", err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "active_provider", 4, "a string or null", err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "updated_at", 4, "a string", err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "suppressed_sources", 16, "an object", err)) != TL_OK)
    return rc;
  json_t *providers = json_object_get(doc, "providers");
  if (providers && !json_is_object(providers))
    return tl__err(err, TL_EINVAL, 0, "%s: $.providers: expected an object", file);
  const char *p;
  json_t *v;
  json_object_foreach(providers, p, v)
  {
    snprintf(path, sizeof path, "$.providers.%.200s", p);
    if (!tl__provider_name_valid(p))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: not a provider id (1-128 of A-Z a-z 0-9 . _ : - + @)", file, path);
    if (!json_is_object(v))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, path);
    if ((rc = check_token_fields(file, path, v, err)) != TL_OK)
      return rc;
    json_t *tokens = json_object_get(v, "tokens");
    snprintf(key, sizeof key, "singleton:%.180s", p);
    if (tokens) {
      char tpath[300];
      snprintf(tpath, sizeof tpath, "%s.tokens", path);
      if (!json_is_object(tokens))
        return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, tpath);
      if ((rc = check_token_fields(file, tpath, tokens, err)) != TL_OK)
        return rc;
      if ((rc = push_slot(ss, SLOT_TOKENS, p, key, tpath, tokens, v, err)) != TL_OK)
        return rc;
    } else if (json_object_get(v, "refresh_token") || json_object_get(v, "access_token")) {
      if ((rc = push_slot(ss, SLOT_SINGLETON, p, key, path, v, NULL, err)) != TL_OK)
        return rc;
    }
  }
  json_t *systems = json_object_get(doc, "systems");
  if (systems) {
    json_t *np = json_is_object(systems) ? json_object_get(systems, "nous_portal") : NULL;
    if (!json_is_object(systems) || (np && !json_is_object(np)))
      return tl__err(err, TL_EINVAL, 0, "%s: $.systems: expected an object with an object nous_portal", file);
    if (np) {
      if ((rc = check_token_fields(file, "$.systems.nous_portal", np, err)) != TL_OK)
        return rc;
      if (!json_object_get(providers, "nous") && (rc = push_slot(ss, SLOT_SINGLETON, "nous", "singleton:nous",
                                                                 "$.systems.nous_portal", np, NULL, err)) != TL_OK)
        return rc;
    }
  }
  json_t *pool = json_object_get(doc, "credential_pool");
  if (pool && !json_is_object(pool))
    return tl__err(err, TL_EINVAL, 0, "%s: $.credential_pool: expected an object", file);
  json_object_foreach(pool, p, v)
  {
    snprintf(path, sizeof path, "$.credential_pool.%.200s", p);
    if (!tl__provider_name_valid(p))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: not a provider id (1-128 of A-Z a-z 0-9 . _ : - + @)", file, path);
    if (!json_is_array(v))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an array", file, path);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
      char epath[300];
      snprintf(epath, sizeof epath, "%s[%zu]", path, i);
      if (!json_is_object(e))
        return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, epath);
      json_t *id = json_object_get(e, "id");
      if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > 64)
        return tl__err(err, TL_EINVAL, 0, "%s: %s.id: expected a string of 1-64 characters", file, epath);
      if ((rc = check_token_fields(file, epath, e, err)) != TL_OK ||
          (rc = want_type(file, epath, e, "priority", 1, "an integer", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "request_count", 1, "an integer", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "source", 4, "a string", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "auth_type", 4, "a string", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "last_status", 4, "a string or null", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "last_status_at", 7, "a number or a string", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "last_error_code", 1, "an integer", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "last_error_reset_at", 7, "a number or a string", err)) != TL_OK)
        return rc;
      for (size_t k = 0; k < i; k++)
        if (json_equal(json_object_get(json_array_get(v, k), "id"), id))
          return tl__err(err, TL_EINVAL, 0, "%s: %s.id: '%s' appears twice in %s", file, epath, json_string_value(id),
                         path);
      snprintf(key, sizeof key, "pool:%.120s:%.64s", p, json_string_value(id));
      if ((rc = push_slot(ss, SLOT_POOL, p, key, epath, e, NULL, err)) != TL_OK)
        return rc;
    }
  }
  return TL_OK;
}

/* ---- references ------------------------------------------------------------------ */

static json_t *ref(const char *what, int64_t cred)
{
  return json_pack("{s:s, s:I}", "$tl", what, "credential", (json_int_t)cred);
}

static int64_t ref_cred(json_t *v)
{
  if (!json_is_object(v) || !json_is_string(json_object_get(v, "$tl")))
    return 0;
  return (int64_t)json_integer_value(json_object_get(v, "credential"));
}

/* Reads the credential each slot key pointed at in a stored template. */
static int64_t template_cred(json_t *tmpl, const char *key, int shared)
{
  if (!tmpl)
    return 0;
  slots ss = {0};
  tl_error ignore = {0};
  int64_t found = 0;
  if (walk(&ss, tmpl, "template", shared, &ignore) == TL_OK)
    for (size_t i = 0; i < ss.n && !found; i++)
      if (strcmp(ss.v[i].key, key) == 0)
        found = ref_cred(json_object_get(ss.v[i].obj, "refresh_token"));
  free(ss.v);
  return found;
}

/* ---- times ---------------------------------------------------------------------- */

/* ISO 8601 as Hermes writes it: micro=1 "…T10:00:00.123000+00:00", zulu=1 "…Z". */
static void iso(char *out, size_t n, int64_t ms, int micro, int zulu)
{
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  if (micro)
    snprintf(out, n, "%s.%06d%s", base, (int)(ms % 1000) * 1000, zulu ? "Z" : "+00:00");
  else
    snprintf(out, n, "%s%s", base, zulu ? "Z" : "+00:00");
}

/* Expiry of a slot's access token in ms: expires_at, expires_at_ms, or the JWT exp. */
static int64_t slot_expiry(json_t *obj, const char *at)
{
  int64_t ms = 0;
  json_t *v = json_object_get(obj, "expires_at");
  if (json_is_string(v) && tl_time_parse(&ms, json_string_value(v), NULL) == TL_OK)
    return ms;
  v = json_object_get(obj, "expires_at_ms");
  if (json_is_integer(v))
    return (int64_t)json_integer_value(v);
  return at ? tl__jwt_exp_ms(at) : 0;
}

/* ---- ingest ----------------------------------------------------------------------- */

typedef struct ingest {
  tl_store *s;
  tl_report *report;
  int64_t profile; /* 0 for the shared store */
  const char *profile_name;
  const char *file;
  int adopt; /* sync: spent RTs at mapped slots are left for export to overwrite */
  json_t *old_template;
  int shared;
  json_t *nous_portal; /* borrowed: the document's providers.nous.portal_base_url, for pool rows */
  char blocked_fp[65]; /* a spent RT found by import: reported after rollback */
  char blocked_where[PATH_MAX + 400];
} ingest;

static tl_status row(ingest *in, const slot *sl, int64_t cred, const char *action, const char *note, tl_error *err)
{
  char c[32] = "";
  if (cred)
    snprintf(c, sizeof c, "%lld", (long long)cred);
  const char *cells[7] = {in->profile_name ? in->profile_name : "(shared)",
                          in->file,
                          sl ? sl->path : "$",
                          sl ? sl->provider : "",
                          cred ? c : NULL,
                          action,
                          note};
  const int num[7] = {0, 0, 0, 0, 1, 0, 0};
  return tl__report_add_row(in->report, cells, num, err);
}

static tl_status ensure_provider(tl_store *s, const char *name, tl_error *err)
{
  static const char sql[] = "INSERT OR IGNORE INTO provider (name, updated_at) VALUES (:name, :now)";
  sqlite3_stmt *st = tl__stmt(s, sql, err);
  if (!st)
    return TL_ERROR;
  tl__bind_text(st, ":name", name);
  tl__bind_int(st, ":now", tl__now_ms());
  return tl__step_done(s, st, "provider", err);
}

/* Where a Nous grant refreshes, from the slot's portal_base_url (Hermes' rules). */
static tl_status nous_token_url(char *out, size_t n, json_t *obj, json_t *fallback, const char *file, const char *path,
                                tl_error *err)
{
  json_t *v = json_object_get(obj, "portal_base_url");
  if (!json_is_string(v))
    v = fallback; /* Hermes refreshes every Nous row through the singleton's portal */
  out[0] = '\0';
  if (!json_is_string(v))
    return TL_OK; /* the provider's default */
  const char *base = json_string_value(v);
  if (strstr(base, "://api.nousresearch.com"))
    base = "https://portal.nousresearch.com"; /* the dead host Hermes rewrites */
  size_t len = strlen(base);
  while (len && base[len - 1] == '/')
    len--;
  snprintf(out, n, "%.*s/api/oauth/token", (int)len, base);
  tl_error sub = {0};
  if (tl_url_check(out, &sub) != TL_OK)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.portal_base_url: %s", file, path, sub.message);
  return TL_OK;
}

static tl_status upsert_entry(ingest *in, const slot *sl, int64_t cred, tl_error *err)
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
  json_t *o = sl->obj;
  if (!in->profile)
    return TL_OK; /* the shared store has no pool */
  tl_status erc = ensure_provider(in->s, sl->provider, err);
  if (erc != TL_OK)
    return erc;
  sqlite3_stmt *st;
  char entry[80];
  if (sl->kind == SLOT_POOL) {
    snprintf(entry, sizeof entry, "%s", json_string_value(json_object_get(o, "id")));
  } else {
    /* A singleton gets an entry of its own only if no pool row holds its grant. */
    snprintf(entry, sizeof entry, "providers.%.60s", sl->provider);
    if (cred) {
      if (!(st = tl__stmt(in->s, has_sql, err)))
        return TL_ERROR;
      tl__bind_int(st, ":p", in->profile);
      tl__bind_text(st, ":prov", sl->provider);
      tl__bind_int(st, ":cred", cred);
      tl__bind_text(st, ":entry", entry);
      int has = sqlite3_step(st) == SQLITE_ROW;
      sqlite3_reset(st);
      if (has)
        return TL_OK;
    }
  }
  if (!(st = tl__stmt(in->s, sql, err)))
    return TL_ERROR;
  tl__bind_int(st, ":p", in->profile);
  tl__bind_text(st, ":prov", sl->provider);
  if (cred)
    tl__bind_int(st, ":cred", cred);
  tl__bind_text(st, ":entry", entry);
  json_t *v;
  tl__bind_int(st, ":prio", json_is_integer(v = json_object_get(o, "priority")) ? json_integer_value(v) : 0);
  tl__bind_text(st, ":source",
                json_is_string(v = json_object_get(o, "source")) ? json_string_value(v)
                : sl->kind == SLOT_POOL                          ? "manual"
                                                                 : "singleton");
  const char *auth = json_is_string(v = json_object_get(o, "auth_type")) ? json_string_value(v) : "oauth";
  tl__bind_text(st, ":auth", strcmp(auth, "api_key") == 0 ? "api_key" : "oauth");
  tl__bind_text(st, ":label", json_is_string(v = json_object_get(o, "label")) ? json_string_value(v) : NULL);
  const char *ls = json_is_string(v = json_object_get(o, "last_status")) ? json_string_value(v) : NULL;
  if (ls && strcmp(ls, "ok") && strcmp(ls, "exhausted") && strcmp(ls, "dead"))
    ls = NULL;
  tl__bind_text(st, ":ls", ls);
  int64_t t = 0;
  v = json_object_get(o, "last_status_at");
  if (json_is_number(v))
    tl__bind_int(st, ":lsat", (int64_t)(json_number_value(v) * 1000));
  else if (json_is_string(v) && tl_time_parse(&t, json_string_value(v), NULL) == TL_OK)
    tl__bind_int(st, ":lsat", t);
  if (json_is_integer(v = json_object_get(o, "last_error_code")))
    tl__bind_int(st, ":lec", json_integer_value(v));
  tl__bind_text(st, ":ler", json_is_string(v = json_object_get(o, "last_error_reason")) ? json_string_value(v) : NULL);
  tl__bind_text(st, ":lem", json_is_string(v = json_object_get(o, "last_error_message")) ? json_string_value(v) : NULL);
  v = json_object_get(o, "last_error_reset_at");
  if (ls && strcmp(ls, "exhausted") == 0 && json_is_number(v))
    tl__bind_int(st, ":cool", (int64_t)(json_number_value(v) * 1000));
  tl__bind_int(st, ":rc", json_is_integer(v = json_object_get(o, "request_count")) ? json_integer_value(v) : 0);
  char *orig = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  tl__bind_text(st, ":orig", orig);
  tl_status rc = tl__step_done(in->s, st, "pool entry", err);
  free(orig);
  return rc;
}

/* The credential's live RT id and state, 0 if none. */
static int64_t live_rt(tl_store *s, int64_t cred, char state[16], int64_t *gen, int64_t *family)
{
  static const char sql[] = "SELECT id, state, generation, coalesce(family_id, id) FROM refresh_token WHERE "
                            "credential_id = :c AND state IN ('current', 'presented', 'unknown')";
  sqlite3_stmt *st = tl__stmt(s, sql, NULL);
  int64_t id = 0;
  if (!st)
    return 0;
  tl__bind_int(st, ":c", cred);
  if (sqlite3_step(st) == SQLITE_ROW) {
    id = sqlite3_column_int64(st, 0);
    snprintf(state, 16, "%s", (const char *)sqlite3_column_text(st, 1));
    *gen = sqlite3_column_int64(st, 2);
    *family = sqlite3_column_int64(st, 3);
  }
  sqlite3_reset(st);
  return id;
}

/* Hermes rotated a grant itself: record the new RT as an external child. */
static tl_status external_rotation(ingest *in, const slot *sl, int64_t cred, const char *rt, const char *fp,
                                   int *deferred, tl_error *err)
{
  static const char retire_sql[] = "UPDATE refresh_token SET state = 'retired', secret = NULL, retired_at = :now "
                                   "WHERE id = :id";
  static const char child_sql[] =
      "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, secret, "
      "issued_at) VALUES (:c, :parent, :family, :gen, :fp, 'current', 'external', :secret, :now)";
  static const char root_sql[] = "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                                 "secret, issued_at) VALUES (:c, 0, :fp, 'current', 'external', :secret, :now)";
  static const char cred_sql[] =
      "UPDATE credential SET access_token = coalesce(:at, access_token), expires_at = coalesce(nullif(:exp, 0), "
      "expires_at), obtained_at = :now, status = 'active', status_reason = NULL, updated_at = :now WHERE id = :c";
  char state[16] = "";
  int64_t gen = 0, family = 0, now = tl__now_ms();
  int64_t old = live_rt(in->s, cred, state, &gen, &family);
  sqlite3_stmt *st;
  tl_status rc;
  *deferred = 0;
  if (old && strcmp(state, "current") != 0) {
    *deferred = 1; /* a presentation of ours is in flight or unresolved: do not rewrite history under it */
    return TL_OK;
  }
  if (old) {
    if (!(st = tl__stmt(in->s, retire_sql, err)))
      return TL_ERROR;
    tl__bind_int(st, ":now", now);
    tl__bind_int(st, ":id", old);
    if ((rc = tl__step_done(in->s, st, "external rotation", err)) != TL_OK)
      return rc;
  }
  if (!(st = tl__stmt(in->s, old ? child_sql : root_sql, err)))
    return TL_ERROR;
  tl__bind_int(st, ":c", cred);
  if (old) {
    tl__bind_int(st, ":parent", old);
    tl__bind_int(st, ":family", family);
    tl__bind_int(st, ":gen", gen + 1);
  }
  tl__bind_text(st, ":fp", fp);
  tl__bind_secret(st, ":secret", rt);
  tl__bind_int(st, ":now", now);
  if ((rc = tl__step_done(in->s, st, "external rotation", err)) != TL_OK)
    return rc;
  int64_t child = sqlite3_last_insert_rowid(in->s->db);
  json_t *atv = json_object_get(sl->obj, "access_token");
  const char *at = json_is_string(atv) ? json_string_value(atv) : NULL;
  if (!(st = tl__stmt(in->s, cred_sql, err)))
    return TL_ERROR;
  tl__bind_secret(st, ":at", at);
  tl__bind_int(st, ":exp", slot_expiry(sl->obj, at));
  tl__bind_int(st, ":now", now);
  tl__bind_int(st, ":c", cred);
  if ((rc = tl__step_done(in->s, st, "external rotation", err)) != TL_OK)
    return rc;
  tl__ids ids = {.profile = in->profile, .credential = cred, .rt = child};
  return tl__audit(in->s, "external_rotation", &ids,
                   json_pack("{s:s, s:s, s:I, s:s%}", "file", in->file, "path", sl->path, "generation",
                             (json_int_t)(old ? gen + 1 : 0), "fingerprint", fp, (size_t)12),
                   err);
}

static tl_status new_credential(int64_t *out, ingest *in, const slot *sl, const char *rt, const char *fp, tl_error *err)
{
  static const char prov_sql[] = "SELECT token_url, client_id FROM provider WHERE name = :name";
  static const char cred_sql[] =
      "INSERT INTO credential (provider, client_id, token_url, label, access_token, expires_at, obtained_at, scope, "
      "extra, created_at, updated_at) VALUES (:prov, :client, :url, :label, :at, nullif(:exp, 0), :obtained, "
      ":scope, :extra, :now, :now)";
  static const char rt_sql[] = "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, "
                               "secret, issued_at) VALUES (:c, 0, :fp, 'current', 'import', :secret, :now)";
  tl_status rc;
  char url[600] = "";
  if ((rc = ensure_provider(in->s, sl->provider, err)) != TL_OK)
    return rc;
  if (strcmp(sl->provider, "nous") == 0 &&
      (rc = nous_token_url(url, sizeof url, sl->obj, in->nous_portal, in->file, sl->path, err)) != TL_OK)
    return rc;
  sqlite3_stmt *st = tl__stmt(in->s, prov_sql, err);
  if (!st)
    return TL_ERROR;
  tl__bind_text(st, ":name", sl->provider);
  char *purl = NULL, *pclient = NULL;
  if (sqlite3_step(st) == SQLITE_ROW) {
    purl = tl__col_dup(st, 0);
    pclient = tl__col_dup(st, 1);
  }
  sqlite3_reset(st);
  json_t *o = sl->obj, *v;
  json_t *atv = json_object_get(o, "access_token");
  const char *at = json_is_string(atv) ? json_string_value(atv) : NULL;
  int64_t now = tl__now_ms(), obtained = 0;
  v = json_object_get(o, "obtained_at");
  if (!json_is_string(v) || tl_time_parse(&obtained, json_string_value(v), NULL) != TL_OK)
    obtained = 0;
  json_t *extra = json_object();
  static const char *const keep[] = {"inference_base_url", "token_type", "base_url"};
  for (size_t i = 0; i < 3; i++)
    if (json_is_string(v = json_object_get(o, keep[i])))
      json_object_set(extra, keep[i], v);
  char *extra_text = json_dumps(extra, JSON_COMPACT);
  json_decref(extra);
  if (!(st = tl__stmt(in->s, cred_sql, err))) {
    rc = TL_ERROR;
    goto done;
  }
  tl__bind_text(st, ":prov", sl->provider);
  tl__bind_text(st, ":client", json_is_string(v = json_object_get(o, "client_id")) ? json_string_value(v) : pclient);
  tl__bind_text(st, ":url", *url ? url : purl);
  tl__bind_text(st, ":label", json_is_string(v = json_object_get(o, "label")) ? json_string_value(v) : NULL);
  tl__bind_secret(st, ":at", at);
  tl__bind_int(st, ":exp", slot_expiry(o, at));
  if (obtained)
    tl__bind_int(st, ":obtained", obtained);
  tl__bind_text(st, ":scope", json_is_string(v = json_object_get(o, "scope")) ? json_string_value(v) : NULL);
  tl__bind_text(st, ":extra", extra_text ? extra_text : "{}");
  tl__bind_int(st, ":now", now);
  if ((rc = tl__step_done(in->s, st, "import credential", err)) != TL_OK)
    goto done;
  *out = sqlite3_last_insert_rowid(in->s->db);
  if (!(st = tl__stmt(in->s, rt_sql, err))) {
    rc = TL_ERROR;
    goto done;
  }
  tl__bind_int(st, ":c", *out);
  tl__bind_text(st, ":fp", fp);
  tl__bind_secret(st, ":secret", rt);
  tl__bind_int(st, ":now", now);
  if ((rc = tl__step_done(in->s, st, "import refresh token", err)) != TL_OK)
    goto done;
  tl__ids ids = {.profile = in->profile, .credential = *out, .rt = sqlite3_last_insert_rowid(in->s->db)};
  rc = tl__audit(in->s, "rt_stored", &ids,
                 json_pack("{s:s?, s:s, s:s, s:s, s:s, s:s%, s:i}", "profile", in->profile_name, "provider",
                           sl->provider, "origin", "import", "file", in->file, "path", sl->path, "fingerprint", fp,
                           (size_t)12, "generation", 0),
                 err);
done:
  free(purl);
  free(pclient);
  free(extra_text);
  return rc;
}

/* Does another profile already use this credential? Names it for the fork note. */
static void other_profiles(tl_store *s, int64_t cred, int64_t profile, char *out, size_t n)
{
  static const char sql[] = "SELECT group_concat(DISTINCT p.name) FROM pool_entry e JOIN profile p ON p.id = "
                            "e.profile_id WHERE e.credential_id = :c AND e.profile_id <> :p";
  out[0] = '\0';
  sqlite3_stmt *st = tl__stmt(s, sql, NULL);
  if (!st)
    return;
  tl__bind_int(st, ":c", cred);
  tl__bind_int(st, ":p", profile);
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
    snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
}

static tl_status ingest_slot(ingest *in, slot *sl, tl_error *err)
{
  json_t *o = sl->obj;
  json_t *rtv = json_object_get(o, "refresh_token");
  json_t *atv = json_object_get(o, "access_token");
  tl_status rc;
  int64_t cred = 0;
  const char *action;
  char note[300] = "";
  if (!json_is_string(rtv) || json_string_length(rtv) == 0) {
    /* No refresh token: an API key, a borrowed row, or a grant Hermes quarantined. */
    json_t *src = json_object_get(o, "source");
    json_t *auth = json_object_get(o, "auth_type");
    action = json_is_string(auth) && strcmp(json_string_value(auth), "api_key") == 0 ? "api_key"
             : json_object_get(o, "secret_fingerprint") ||
                     (json_is_string(src) && strncmp(json_string_value(src), "env:", 4) == 0)
                 ? "borrowed"
                 : "no_refresh_token";
    if ((rc = upsert_entry(in, sl, 0, err)) != TL_OK)
      return rc;
    return row(in, sl, 0, action, "kept in the file; no lineage", err);
  }
  const char *rt = json_string_value(rtv);
  if (strlen(rt) != json_string_length(rtv) || json_string_length(rtv) > 16384)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.refresh_token: not a token (NUL byte or longer than 16 KiB)", in->file,
                   sl->path);
  char fp[65];
  tl_fingerprint(fp, rt, strlen(rt));
  int64_t known_rt = 0, known_cred = 0;
  tl_error probe = {0};
  tl_status look = tl__rt_lookup(&known_rt, &known_cred, in->s, fp, &probe);
  int64_t mapped = template_cred(in->old_template, sl->key, in->shared);
  if (look == TL_EREUSE) {
    if (in->adopt && !mapped)
      mapped = known_cred; /* the spent token itself says which grant this place holds */
    if (in->adopt && mapped) {
      /* Hermes still holds a token the ledger knows is spent; export overwrites it. */
      snprintf(in->blocked_fp, sizeof in->blocked_fp, "%s", fp);
      snprintf(in->blocked_where, sizeof in->blocked_where, "sync %s %s", in->file, sl->path);
      json_object_set_new(o, "refresh_token", ref("rt", mapped));
      if (json_is_string(atv))
        json_object_set_new(o, "access_token", ref("at", mapped));
      if ((rc = upsert_entry(in, sl, mapped, err)) != TL_OK)
        return rc;
      return row(in, sl, mapped, "spent_overwritten", "the file held a spent refresh token; export replaces it", err);
    }
    snprintf(in->blocked_fp, sizeof in->blocked_fp, "%s", fp);
    snprintf(in->blocked_where, sizeof in->blocked_where, "import %s %s", in->file, sl->path);
    return TL_EREUSE;
  }
  if (look != TL_OK)
    return tl__err(err, look, probe.sys, "%s", probe.message);
  if (known_rt) {
    cred = known_cred;
    action = mapped == cred ? "unchanged" : "attached";
    char others[200];
    other_profiles(in->s, cred, in->profile, others, sizeof others);
    if (*others && in->profile)
      snprintf(note, sizeof note, "same grant as profile(s) %s: one credential", others);
  } else if (mapped) {
    int deferred = 0;
    if ((rc = external_rotation(in, sl, mapped, rt, fp, &deferred, err)) != TL_OK)
      return rc;
    cred = mapped;
    action = deferred ? "deferred" : "external_rotation";
    if (deferred)
      snprintf(note, sizeof note, "a refresh of this credential is in flight or unresolved; adoption deferred");
  } else {
    if ((rc = new_credential(&cred, in, sl, rt, fp, err)) != TL_OK)
      return rc;
    action = "new";
  }
  if (!(strcmp(action, "deferred") == 0)) {
    json_object_set_new(o, "refresh_token", ref("rt", cred));
    json_t *ak = json_object_get(o, "agent_key");
    if (json_is_string(atv) && json_is_string(ak) && json_equal(ak, atv))
      json_object_set_new(o, "agent_key", ref("at", cred));
    if (json_is_string(atv))
      json_object_set_new(o, "access_token", ref("at", cred));
  }
  if ((rc = upsert_entry(in, sl, cred, err)) != TL_OK)
    return rc;
  return row(in, sl, cred, action, *note ? note : NULL, err);
}

static tl_status save_file(ingest *in, const char *path, json_t *tmpl, const char *sha, tl_error *err)
{
  static const char sql[] =
      "INSERT INTO hermes_file (profile_id, kind, path, template, sha256, imported_at, synced_at) VALUES (:p, :kind, "
      ":path, :t, :sha, :now, :now) ON CONFLICT (path) DO UPDATE SET profile_id = :p, kind = :kind, template = :t, "
      "sha256 = :sha, synced_at = :now";
  char *text = json_dumps(tmpl, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text)
    return tl__oom(err);
  sqlite3_stmt *st = tl__stmt(in->s, sql, err);
  if (!st) {
    tl_secret_free(text);
    return TL_ERROR;
  }
  if (in->profile)
    tl__bind_int(st, ":p", in->profile);
  tl__bind_text(st, ":kind", in->shared ? "shared_nous" : "auth");
  tl__bind_text(st, ":path", path);
  tl__bind_secret(st, ":t", text);
  tl__bind_text(st, ":sha", sha);
  tl__bind_int(st, ":now", tl__now_ms());
  tl_status rc = tl__step_done(in->s, st, "hermes file", err);
  tl_secret_free(text);
  return rc;
}

static json_t *load_template(tl_store *s, const char *path, int64_t *synced)
{
  static const char sql[] = "SELECT template, synced_at FROM hermes_file WHERE path = :path";
  sqlite3_stmt *st = tl__stmt(s, sql, NULL);
  json_t *t = NULL;
  if (!st)
    return NULL;
  tl__bind_text(st, ":path", path);
  if (sqlite3_step(st) == SQLITE_ROW) {
    t = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
    if (synced)
      *synced = sqlite3_column_int64(st, 1);
  }
  sqlite3_reset(st);
  return t;
}

/* Ingests one parsed document for a profile (or the shared store). Takes doc. */
static tl_status ingest_doc(ingest *in, const char *path, json_t *doc, const char *sha, tl_error *err)
{
  slots ss = {0};
  tl_status rc = walk(&ss, doc, path, in->shared, err);
  in->old_template = rc == TL_OK ? load_template(in->s, path, NULL) : NULL;
  in->nous_portal = json_object_get(json_object_get(json_object_get(doc, "providers"), "nous"), "portal_base_url");
  if (!in->nous_portal)
    in->nous_portal =
        json_object_get(json_object_get(json_object_get(doc, "systems"), "nous_portal"), "portal_base_url");
  /* Pool rows first: a singleton whose grant a pool row holds needs no entry of its own. */
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; rc == TL_OK && i < ss.n; i++)
      if ((ss.v[i].kind == SLOT_POOL) == (pass == 0))
        rc = ingest_slot(in, &ss.v[i], err);
  if (rc == TL_OK && in->profile) {
    static const char dedup[] =
        "DELETE FROM pool_entry WHERE profile_id = :p AND entry_id LIKE 'providers.%' AND credential_id IN "
        "(SELECT credential_id FROM pool_entry WHERE profile_id = :p AND entry_id NOT LIKE 'providers.%')";
    sqlite3_stmt *st = tl__stmt(in->s, dedup, err);
    if (!st)
      rc = TL_ERROR;
    else {
      tl__bind_int(st, ":p", in->profile);
      rc = tl__step_done(in->s, st, "pool entries", err);
    }
  }
  if (rc == TL_OK)
    rc = save_file(in, path, doc, sha, err);
  json_decref(in->old_template);
  in->old_template = NULL;
  free(ss.v);
  return rc;
}

/* ---- import ------------------------------------------------------------------------ */

typedef struct import_target {
  char profile[80];
  char home[PATH_MAX];
  char file[PATH_MAX];
  int shared;
} import_target;

static tl_status add_target(import_target **v, size_t *n, const char *profile, const char *home, const char *file,
                            int shared, tl_error *err)
{
  import_target *nv = realloc(*v, (*n + 1) * sizeof *nv);
  if (!nv)
    return tl__oom(err);
  *v = nv;
  size_t lf = strlen(file), lh = home ? strlen(home) : 0;
  if (lf >= sizeof nv->file || lh >= sizeof nv->home)
    return tl__err(err, TL_EINVAL, 0, "%.200s...: path longer than %d bytes", file, PATH_MAX - 1);
  import_target *t = &nv[(*n)++];
  memset(t, 0, sizeof *t);
  snprintf(t->profile, sizeof t->profile, "%s", profile ? profile : "");
  memcpy(t->home, home ? home : "", lh + 1);
  memcpy(t->file, file, lf + 1);
  t->shared = shared;
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

static tl_status plan_import(import_target **v, size_t *n, tl_report *warn, const char *path, const tl_import_opts *o,
                             tl_error *err)
{
  char abs[PATH_MAX], file[PATH_MAX + 16];
  tl_status rc;
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
      return tl__err(err, TL_EINVAL, 0, "%s: --all-profiles needs a Hermes root directory", path);
    char home[PATH_MAX];
    snprintf(home, sizeof home, "%s", abs);
    char *slash = strrchr(home, '/');
    if (slash)
      *slash = '\0';
    return add_target(v, n, profile, home, abs, 0, err);
  }
  snprintf(file, sizeof file, "%s/auth.json", abs);
  if (!(o && o->all_profiles)) {
    if (!exists(file))
      return tl__err(err, TL_ENOTFOUND, 0, "%s: no auth.json in this Hermes home", path);
    return add_target(v, n, profile, abs, file, 0, err);
  }
  if (exists(file) && (rc = add_target(v, n, "default", abs, file, 0, err)) != TL_OK)
    return rc;
  char dir[PATH_MAX + 16];
  snprintf(dir, sizeof dir, "%s/profiles", abs);
  DIR *d = opendir(dir);
  if (d) {
    char **names = NULL;
    size_t nn = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
      if (de->d_name[0] == '.')
        continue; /* ., .., and Hermes' .deleted tombstones */
      char **nv = realloc(names, (nn + 1) * sizeof *nv);
      if (!nv || !(nv[nn] = strdup(de->d_name))) {
        free(nv ? nv : names);
        closedir(d);
        return tl__oom(err);
      }
      names = nv;
      nn++;
    }
    closedir(d);
    qsort(names, nn, sizeof *names, by_name);
    for (size_t i = 0; i < nn; i++) {
      char home[PATH_MAX + 300], pf[PATH_MAX + 320];
      snprintf(home, sizeof home, "%s/%s", dir, names[i]);
      snprintf(pf, sizeof pf, "%s/auth.json", home);
      if (!is_dir(home) || !exists(pf)) {
        free(names[i]);
        continue;
      }
      if (!tl_profile_name_valid(names[i]) || strcmp(names[i], "default") == 0) {
        const char *cells[7] = {names[i], pf, "$", "", NULL, "skipped", "not a valid Hermes profile name"};
        const int num[7] = {0};
        tl__report_add_row(warn, cells, num, err);
        free(names[i]);
        continue;
      }
      rc = add_target(v, n, names[i], home, pf, 0, err);
      free(names[i]);
      if (rc != TL_OK) {
        for (size_t k = i + 1; k < nn; k++)
          free(names[k]);
        free(names);
        return rc;
      }
    }
    free(names);
  }
  const char *shared_dir = getenv("HERMES_SHARED_AUTH_DIR");
  char shared[PATH_MAX + 32];
  if (shared_dir && *shared_dir)
    snprintf(shared, sizeof shared, "%s/nous_auth.json", shared_dir);
  else
    snprintf(shared, sizeof shared, "%s/shared/nous_auth.json", abs);
  if (exists(shared) && (rc = add_target(v, n, NULL, NULL, shared, 1, err)) != TL_OK)
    return rc;
  if (*n == 0)
    return tl__err(err, TL_ENOTFOUND, 0, "%s: no auth.json in this Hermes root or its profiles", path);
  return TL_OK;
}

static tl_status ensure_profile(int64_t *out, tl_store *s, const char *name, const char *home, tl_error *err)
{
  static const char ins[] = "INSERT INTO profile (name, home, created_at) VALUES (:n, :h, :now)";
  static const char upd[] = "UPDATE profile SET home = :h WHERE id = :id AND (home IS NULL OR home <> :h)";
  tl_error probe = {0};
  if (tl__profile_id(out, s, name, &probe) == TL_OK) {
    sqlite3_stmt *st = tl__stmt(s, upd, err);
    if (!st)
      return TL_ERROR;
    tl__bind_text(st, ":h", home);
    tl__bind_int(st, ":id", *out);
    return tl__step_done(s, st, "profile home", err);
  }
  if (!tl_profile_name_valid(name))
    return tl__err(err, TL_EINVAL, 0, "profile name '%.64s' is invalid", name);
  sqlite3_stmt *st = tl__stmt(s, ins, err);
  if (!st)
    return TL_ERROR;
  tl__bind_text(st, ":n", name);
  tl__bind_text(st, ":h", home);
  tl__bind_int(st, ":now", tl__now_ms());
  tl_status rc = tl__step_done(s, st, "profile", err);
  *out = sqlite3_last_insert_rowid(s->db);
  if (rc == TL_OK) {
    tl__ids ids = {.profile = *out};
    rc = tl__audit(s, "profile_added", &ids,
                   json_pack("{s:s, s:s?, s:s}", "profile", name, "home", home, "by", "import"), err);
  }
  return rc;
}

static const char *const report_cols[] = {"profile", "file", "path", "provider", "credential", "action", "note"};

tl_status tl_import(tl_report **out, tl_store *s, const char *path, const tl_import_opts *o, tl_error *err)
{
  tl_status rc;
  import_target *targets = NULL;
  size_t nt = 0;
  tl_report *r = NULL;
  json_t **docs = NULL;
  char(*shas)[65] = NULL;
  ingest in;
  memset(&in, 0, sizeof in);
  if (!out || !s || !path)
    return tl__err(err, TL_EINVAL, 0, "import: no path");
  *out = NULL;
  if (o && o->profile && !tl_profile_name_valid(o->profile))
    return tl__err(err, TL_EINVAL, 0, "profile name '%.64s' is invalid", o->profile);
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if ((rc = plan_import(&targets, &nt, r, path, o, err)) != TL_OK)
    goto done;
  /* Read and parse every file before touching the ledger: a bad file changes nothing. */
  docs = calloc(nt, sizeof *docs);
  shas = calloc(nt, sizeof *shas);
  if (!docs || !shas) {
    rc = tl__oom(err);
    goto done;
  }
  for (size_t i = 0; i < nt; i++) {
    if ((rc = load_file(&docs[i], shas[i], targets[i].file, err)) != TL_OK)
      goto done;
    slots ss = {0};
    rc = walk(&ss, docs[i], targets[i].file, targets[i].shared, err);
    free(ss.v);
    if (rc != TL_OK)
      goto done;
  }
  if ((rc = tl__tx_begin(s, "import", err)) != TL_OK)
    goto done;
  in.s = s;
  in.report = r;
  for (size_t i = 0; rc == TL_OK && i < nt; i++) {
    in.shared = targets[i].shared;
    in.file = targets[i].file;
    in.profile = 0;
    in.profile_name = in.shared ? NULL : targets[i].profile;
    if (!in.shared && (rc = ensure_profile(&in.profile, s, targets[i].profile, targets[i].home, err)) != TL_OK)
      break;
    rc = ingest_doc(&in, targets[i].file, docs[i], shas[i], err);
  }
  if (rc == TL_OK && (!o || !o->dry_run)) {
    tl__ids ids = {0};
    rc = tl__audit(s, "import", &ids, json_pack("{s:s, s:I}", "path", path, "files", (json_int_t)nt), err);
    if (rc == TL_OK)
      rc = tl__tx_commit(s, err);
  } else {
    tl__tx_rollback(s);
  }
  if (rc == TL_EREUSE) {
    /* Nothing of the import stays; the refusal itself is on record (not in a dry run). */
    if (o && o->dry_run) {
      rc = tl__err(err, TL_EREUSE, 0, "%s: holds a refresh token the ledger knows as spent (%.12s...)",
                   in.blocked_where, in.blocked_fp);
    } else {
      rc = tl__reuse_blocked(s, in.blocked_fp, in.blocked_where, err);
      if (rc == TL_EREUSE && err) {
        size_t l = strlen(err->message);
        snprintf(err->message + l, sizeof err->message - l,
                 ". The file is stale (a backup or a copy); nothing was imported. 'tokenledger sync' rewrites it "
                 "with the ledger's current tokens");
      }
    }
  }
done:
  for (size_t i = 0; docs && i < nt; i++)
    json_decref(docs[i]);
  free(docs);
  free(shas);
  free(targets);
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

/* ---- locking and atomic writes ------------------------------------------------------ */

/* The lock Hermes takes: flock(LOCK_EX) on the sibling .lock file, polled to a deadline. */
static tl_status take_lock(int *out, const char *file, tl_error *err)
{
  char lock[PATH_MAX + 8];
  snprintf(lock, sizeof lock, "%s", file);
  char *slash = strrchr(lock, '/'), *dot = strrchr(lock, '.');
  if (dot && (!slash || dot > slash))
    *dot = '\0';
  strncat(lock, ".lock", sizeof lock - strlen(lock) - 1);
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
  if (fd < 0)
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: cannot open the lock: %s", lock,
                   strerror(errno));
  int timeout = TL_LOCK_TIMEOUT_MS;
  const char *env = getenv("TOKENLEDGER_LOCK_TIMEOUT_MS");
  if (env && atoi(env) >= 0 && atoi(env) <= 600000)
    timeout = atoi(env);
  int64_t deadline = tl__now_ms() + timeout;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int e = errno;
      close(fd);
      return tl__err(err, TL_EIO, e, "%s: flock: %s", lock, strerror(e));
    }
    if (tl__now_ms() > deadline) {
      close(fd);
      return tl__err(err, TL_EBUSY, 0,
                     "%s: still locked after %d ms (Hermes or another tokenledger holds it); "
                     "try again",
                     lock, timeout);
    }
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
  *out = fd;
  return TL_OK;
}

static void drop_lock(int fd)
{
  if (fd >= 0) {
    flock(fd, LOCK_UN);
    close(fd);
  }
}

/* Temp file in the target's directory, 0600, fsync, rename onto the symlink-resolved target, fsync the directory. */
static tl_status write_atomic(const char *target, const char *text, tl_error *err)
{
  char real[PATH_MAX], dir[PATH_MAX], tmp[PATH_MAX + 32];
  if (!realpath(target, real))
    snprintf(real, sizeof real, "%s", target); /* a new file: write it where asked */
  snprintf(dir, sizeof dir, "%s", real);
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    dir[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  snprintf(tmp, sizeof tmp, "%s/.auth_XXXXXX.tmp", dir);
  int fd = mkstemps(tmp, 4);
  if (fd < 0)
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: cannot create a temporary file: %s", dir,
                   strerror(errno));
  tl_status rc = TL_OK;
  size_t len = strlen(text), off = 0;
  if (fchmod(fd, 0600) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: chmod: %s", tmp, strerror(errno));
    goto fail;
  }
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = tl__err(err, TL_EIO, errno, "%s: write: %s", tmp, strerror(errno));
      goto fail;
    }
    off += (size_t)n;
  }
  if (fsync(fd) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: fsync: %s", tmp, strerror(errno));
    goto fail;
  }
  close(fd);
  fd = -1;
  if (rename(tmp, real) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: rename: %s", real, strerror(errno));
    goto fail;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return TL_OK;
fail:
  if (fd >= 0)
    close(fd);
  unlink(tmp);
  return rc;
}

/* ---- patching owned fields ------------------------------------------------------------ */

typedef struct credinfo {
  int64_t id, exp, obtained;
  char status[16], rtstate[16];
  char *at, *rt; /* secrets */
  json_t *extra;
} credinfo;

static void credinfo_clear(credinfo *c)
{
  tl_secret_free(c->at);
  tl_secret_free(c->rt);
  json_decref(c->extra);
  memset(c, 0, sizeof *c);
}

static tl_status load_cred(credinfo *c, tl_store *s, int64_t id, tl_error *err)
{
  static const char sql[] =
      "SELECT c.status, c.access_token, coalesce(c.expires_at, 0), coalesce(c.obtained_at, 0), c.extra, t.secret, "
      "t.state FROM credential c LEFT JOIN refresh_token t ON t.credential_id = c.id AND t.state IN ('current', "
      "'presented', 'unknown') WHERE c.id = :id";
  memset(c, 0, sizeof *c);
  sqlite3_stmt *st = tl__stmt(s, sql, err);
  if (!st)
    return TL_ERROR;
  tl__bind_int(st, ":id", id);
  if (sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_reset(st);
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)id);
  }
  c->id = id;
  snprintf(c->status, sizeof c->status, "%s", (const char *)sqlite3_column_text(st, 0));
  c->at = tl__col_dup(st, 1);
  c->exp = sqlite3_column_int64(st, 2);
  c->obtained = sqlite3_column_int64(st, 3);
  c->extra = json_loads((const char *)sqlite3_column_text(st, 4), 0, NULL);
  c->rt = tl__col_dup(st, 5);
  snprintf(c->rtstate, sizeof c->rtstate, "%s",
           sqlite3_column_text(st, 6) ? (const char *)sqlite3_column_text(st, 6) : "");
  sqlite3_reset(st);
  return TL_OK;
}

static void set_str(json_t *o, const char *k, const char *v)
{
  if (v)
    json_object_set_new(o, k, json_string(v));
}

static void set_if_present(json_t *o, const char *k, json_t *v)
{
  if (json_object_get(o, k))
    json_object_set(o, k, v);
  json_decref(v);
}

/* Patches a slot from its credential. synced: when the file was last in step (ms). Returns 1 if changed. */
static int patch_slot(const slot *sl, const credinfo *c, int64_t synced)
{
  json_t *o = sl->obj;
  char buf[64];
  int64_t now = tl__now_ms();
  if (strcmp(c->status, "needs_reauth") == 0) {
    /* Hermes' quarantine: tokens out, a last_auth_error in, the row dead. */
    int had = json_object_get(o, "refresh_token") != NULL;
    static const char *const gone[] = {"refresh_token",        "access_token",        "agent_key",
                                       "expires_at",           "expires_in",          "obtained_at",
                                       "agent_key_expires_at", "agent_key_expires_in"};
    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
      json_object_del(o, gone[i]);
    if (sl->kind == SLOT_POOL) {
      json_object_set_new(o, "last_status", json_string("dead"));
    } else if (had) {
      iso(buf, sizeof buf, now, 1, 0);
      json_object_set_new(sl->kind == SLOT_TOKENS ? sl->holder : o, "last_auth_error",
                          json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "provider", sl->provider, "message",
                                    "tokenledger: the grant was rejected; log in again", "reason", "invalid_grant",
                                    "relogin_required", 1, "code", "tokenledger_needs_reauth", "at", buf));
    }
    return had;
  }
  json_t *rtv = json_object_get(o, "refresh_token"), *atv = json_object_get(o, "access_token");
  int changed = 0;
  if (ref_cred(rtv) || ref_cred(atv)) {
    changed = c->obtained > synced;
    if (ref_cred(rtv))
      json_object_set_new(o, "refresh_token", c->rt ? json_string(c->rt) : json_null());
    if (ref_cred(atv))
      json_object_set_new(o, "access_token", c->at ? json_string(c->at) : json_null());
    if (ref_cred(json_object_get(o, "agent_key")))
      json_object_set_new(o, "agent_key", c->at ? json_string(c->at) : json_null());
  } else {
    if (strcmp(c->rtstate, "unknown") == 0)
      return 0; /* the outcome is open: leave Hermes' copy as it is */
    if (json_is_string(rtv) && c->rt && strcmp(json_string_value(rtv), c->rt) != 0) {
      json_object_set_new(o, "refresh_token", json_string(c->rt));
      changed = 1;
    }
    if (json_is_string(atv) && c->at && strcmp(json_string_value(atv), c->at) != 0) {
      if (json_is_string(json_object_get(o, "agent_key")))
        json_object_set_new(o, "agent_key", json_string(c->at));
      json_object_set_new(o, "access_token", json_string(c->at));
      changed = 1;
    }
  }
  if (!changed)
    return 0;
  int64_t exp = c->exp, obtained = c->obtained ? c->obtained : now;
  int64_t jwt = c->at ? tl__jwt_exp_ms(c->at) : 0;
  if (sl->kind == SLOT_TOKENS) {
    iso(buf, sizeof buf, obtained, 1, 1);
    json_object_set_new(sl->holder, "last_refresh", json_string(buf));
    return 1;
  }
  if (exp) {
    iso(buf, sizeof buf, exp, 1, 0);
    if (sl->kind != SLOT_POOL || json_object_get(o, "expires_at") || strcmp(sl->provider, "nous") == 0)
      json_object_set_new(o, "expires_at", json_string(buf));
    set_if_present(o, "expires_at_ms", json_integer(exp));
    set_if_present(o, "expires_in", json_integer((exp - obtained) / 1000));
  }
  iso(buf, sizeof buf, obtained, 1, 0);
  set_if_present(o, "obtained_at", json_string(buf));
  set_if_present(o, "agent_key_obtained_at", json_string(buf));
  iso(buf, sizeof buf, obtained, 1, 1);
  set_if_present(o, "last_refresh", json_string(buf));
  if (jwt || exp) {
    iso(buf, sizeof buf, jwt ? jwt : exp, 0, 0);
    set_if_present(o, "agent_key_expires_at", json_string(buf));
    set_if_present(o, "agent_key_expires_in", json_integer(((jwt ? jwt : exp) - now) / 1000));
  }
  static const char *const extras[] = {"token_type", "inference_base_url"};
  for (size_t i = 0; i < 2; i++) {
    json_t *v = json_object_get(c->extra, extras[i]);
    if (json_is_string(v) && json_object_get(o, extras[i]))
      json_object_set(o, extras[i], v);
  }
  if (sl->kind == SLOT_POOL) {
    static const char *const status[] = {"last_status",       "last_status_at",     "last_error_code",
                                         "last_error_reason", "last_error_message", "last_error_reset_at"};
    for (size_t i = 0; i < sizeof status / sizeof *status; i++)
      set_if_present(o, status[i], json_null());
  }
  return 1;
}

/* Which credential a slot of a file belongs to: its reference, its RT's fingerprint, or the template. */
static int64_t slot_cred(tl_store *s, const slot *sl, json_t *tmpl, int shared)
{
  json_t *rtv = json_object_get(sl->obj, "refresh_token");
  int64_t c = ref_cred(rtv);
  if (c)
    return c;
  if (json_is_string(rtv)) {
    char fp[65];
    tl_fingerprint(fp, json_string_value(rtv), json_string_length(rtv));
    static const char sql[] = "SELECT credential_id FROM refresh_token WHERE fingerprint = :fp";
    sqlite3_stmt *st = tl__stmt(s, sql, NULL);
    if (st) {
      tl__bind_text(st, ":fp", fp);
      if (sqlite3_step(st) == SQLITE_ROW)
        c = sqlite3_column_int64(st, 0);
      sqlite3_reset(st);
    }
    if (c)
      return c;
  }
  return template_cred(tmpl, sl->key, shared);
}

/* Replaces ledger-known tokens in a written document by references, for the stored template. */
static void templatize(tl_store *s, json_t *doc, json_t *tmpl, int shared)
{
  slots ss = {0};
  tl_error ignore = {0};
  if (walk(&ss, doc, "export", shared, &ignore) == TL_OK)
    for (size_t i = 0; i < ss.n; i++) {
      json_t *o = ss.v[i].obj;
      json_t *rtv = json_object_get(o, "refresh_token");
      if (!json_is_string(rtv))
        continue;
      int64_t c = slot_cred(s, &ss.v[i], tmpl, shared);
      if (!c)
        continue;
      json_t *atv = json_object_get(o, "access_token");
      json_t *ak = json_object_get(o, "agent_key");
      if (json_is_string(ak) && json_is_string(atv) && json_equal(ak, atv))
        json_object_set_new(o, "agent_key", ref("at", c));
      if (json_is_string(atv))
        json_object_set_new(o, "access_token", ref("at", c));
      json_object_set_new(o, "refresh_token", ref("rt", c));
    }
  free(ss.v);
}

/* A document for a profile tokenledger has never seen a file of: Hermes' Nous singleton. */
static json_t *synthesize(tl_store *s, int64_t profile, int shared, tl_error *err)
{
  static const char sql[] = "SELECT e.credential_id, c.client_id, c.token_url, c.scope, c.label FROM pool_entry e "
                            "JOIN credential c ON c.id = e.credential_id WHERE e.profile_id = :p AND e.provider = "
                            "'nous' AND c.status <> 'needs_reauth' ORDER BY e.priority, e.id LIMIT 1";
  sqlite3_stmt *st = tl__stmt(s, sql, err);
  if (!st)
    return NULL;
  tl__bind_int(st, ":p", profile);
  json_t *doc = shared ? json_pack("{s:i}", "_schema", 1) : json_pack("{s:i, s:{}}", "version", 1, "providers");
  if (sqlite3_step(st) == SQLITE_ROW) {
    int64_t c = sqlite3_column_int64(st, 0);
    const char *url = (const char *)sqlite3_column_text(st, 2);
    char portal[600] = "https://portal.nousresearch.com";
    if (url && strstr(url, "/api/oauth/token"))
      snprintf(portal, sizeof portal, "%.*s", (int)(strstr(url, "/api/oauth/token") - url), url);
    json_t *n = shared ? doc : json_object();
    set_str(n, "portal_base_url", portal);
    set_str(n, "client_id", sqlite3_column_text(st, 1) ? (const char *)sqlite3_column_text(st, 1) : "hermes-cli");
    set_str(n, "scope", sqlite3_column_text(st, 3) ? (const char *)sqlite3_column_text(st, 3) : "inference:invoke");
    set_str(n, "token_type", "Bearer");
    json_object_set_new(n, "access_token", ref("at", c));
    json_object_set_new(n, "refresh_token", ref("rt", c));
    json_object_set_new(n, "obtained_at", json_string(""));
    json_object_set_new(n, "expires_at", json_string(""));
    if (!shared) {
      json_object_set_new(n, "expires_in", json_integer(0));
      json_object_set_new(n, "agent_key", ref("at", c));
      json_object_set_new(n, "agent_key_id", json_null());
      json_object_set_new(n, "agent_key_expires_at", json_string(""));
      json_object_set_new(n, "agent_key_reused", json_false());
      if (sqlite3_column_text(st, 4))
        set_str(n, "label", (const char *)sqlite3_column_text(st, 4));
      json_object_set_new(json_object_get(doc, "providers"), "nous", n);
      json_object_set_new(doc, "active_provider", json_string("nous"));
    }
  }
  sqlite3_reset(st);
  return doc;
}

typedef struct fileop {
  tl_store *s;
  tl_report *report;
  int64_t profile;
  const char *profile_name;
  int shared;
  int adopt;        /* sync: ingest Hermes' changes first */
  const char *home; /* the file the ledger keeps in step (its template); NULL: the target itself */
} fileop;

/*
 * Brings one file in step with the ledger under its lock: with adopt, ingest
 * what Hermes changed; then patch owned fields and write if anything changed.
 */
static tl_status sync_file(fileop *op, const char *target, tl_error *err)
{
  tl_status rc;
  int lock = -1;
  json_t *doc = NULL, *tmpl = NULL;
  char sha[65] = "", *text = NULL;
  const char *action = "unchanged";
  int64_t synced = 0;
  int in_step = 0; /* the file is byte for byte what the ledger last read or wrote */
  slots ss = {0};
  const char *known = op->home ? op->home : target;
  int record = strcmp(known, target) == 0; /* an export elsewhere is a copy, not the profile's file */
  if ((rc = take_lock(&lock, target, err)) != TL_OK)
    return rc;
  tmpl = load_template(op->s, known, &synced);
  rc = load_file(&doc, sha, target, err);
  if (rc == TL_ENOTFOUND) {
    if (err)
      tl_error_clear(err);
    doc = tmpl ? json_deep_copy(tmpl) : synthesize(op->s, op->profile, op->shared, err);
    if (!doc) {
      rc = err && err->code ? err->code : tl__oom(err);
      goto done;
    }
    if (!tmpl)
      synced = -1; /* a synthesized document always takes the ledger's values */
    action = "created";
    rc = TL_OK;
  } else if (rc != TL_OK) {
    goto done; /* a file we cannot read is never treated as empty */
  } else {
    static const char sha_sql[] = "SELECT sha256 FROM hermes_file WHERE path = :p";
    sqlite3_stmt *st = tl__stmt(op->s, sha_sql, err);
    if (st) {
      tl__bind_text(st, ":p", target);
      in_step = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) &&
                strcmp((const char *)sqlite3_column_text(st, 0), sha) == 0;
      sqlite3_reset(st);
    }
  }
  if (op->adopt && !in_step && strcmp(action, "created") != 0) {
    /* Adopt what Hermes changed since the last sync. */
    ingest in;
    memset(&in, 0, sizeof in);
    in.s = op->s;
    in.report = op->report;
    in.profile = op->profile;
    in.profile_name = op->profile_name;
    in.file = target;
    in.adopt = 1;
    in.shared = op->shared;
    json_t *copy = json_deep_copy(doc);
    if ((rc = tl__tx_begin(op->s, "sync adopt", err)) != TL_OK) {
      json_decref(copy);
      goto done;
    }
    rc = ingest_doc(&in, target, copy, sha, err);
    json_decref(copy);
    if (rc == TL_OK)
      rc = tl__tx_commit(op->s, err);
    else
      tl__tx_rollback(op->s);
    if (rc == TL_OK && in.blocked_fp[0]) {
      tl_error ignore = {0};
      tl__reuse_blocked(op->s, in.blocked_fp, in.blocked_where, &ignore);
    }
    if (rc != TL_OK)
      goto done;
    json_decref(tmpl);
    tmpl = load_template(op->s, target, &synced);
    synced = 0; /* compare file values, not times */
  }
  if ((rc = walk(&ss, doc, target, op->shared, err)) != TL_OK)
    goto done;
  int changed = 0;
  for (size_t i = 0; i < ss.n; i++) {
    int64_t c = slot_cred(op->s, &ss.v[i], tmpl, op->shared);
    if (!c)
      continue;
    credinfo ci;
    if ((rc = load_cred(&ci, op->s, c, err)) != TL_OK)
      goto done;
    changed |= patch_slot(&ss.v[i], &ci, synced);
    credinfo_clear(&ci);
  }
  if (strcmp(action, "created") == 0 || changed) {
    char buf[64];
    iso(buf, sizeof buf, tl__now_ms(), 1, 0);
    json_object_set_new(doc, "updated_at", json_string(buf));
    text = json_dumps(doc, JSON_INDENT(2) | (op->shared ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER));
    if (!text) {
      rc = tl__oom(err);
      goto done;
    }
    if ((rc = write_atomic(target, text, err)) != TL_OK)
      goto done;
    tl_fingerprint(sha, text, strlen(text));
    if (strcmp(action, "created") != 0)
      action = "written";
  }
  if (!record || (in_step && strcmp(action, "unchanged") == 0)) {
    /* A copy elsewhere is not remembered; a file already in step needs no write transaction. */
    const char *cells[7] = {op->profile_name ? op->profile_name : "(shared)", target, "$", "", NULL, action, NULL};
    const int num[7] = {0};
    rc = tl__report_add_row(op->report, cells, num, err);
    goto done;
  }
  /* Remember the file as written, tokens as references. */
  templatize(op->s, doc, tmpl, op->shared);
  ingest rec;
  memset(&rec, 0, sizeof rec);
  rec.s = op->s;
  rec.profile = op->profile;
  rec.shared = op->shared;
  if ((rc = tl__tx_begin(op->s, "export", err)) != TL_OK)
    goto done;
  rc = save_file(&rec, target, doc, sha, err);
  if (rc == TL_OK && strcmp(action, "unchanged") != 0) {
    tl__ids ids = {.profile = op->profile};
    rc = tl__audit(op->s, "file_written", &ids, json_pack("{s:s, s:s}", "file", target, "action", action), err);
  }
  if (rc == TL_OK)
    rc = tl__tx_commit(op->s, err);
  else
    tl__tx_rollback(op->s);
  if (rc == TL_OK) {
    const char *cells[7] = {op->profile_name ? op->profile_name : "(shared)", target, "$", "", NULL, action, NULL};
    const int num[7] = {0};
    rc = tl__report_add_row(op->report, cells, num, err);
  }
done:
  free(ss.v);
  if (doc) {
    json_decref(doc);
  }
  json_decref(tmpl);
  tl_secret_free(text);
  drop_lock(lock);
  return rc;
}

static tl_status profile_target(char *out, size_t n, char *home_file, int64_t *pid, tl_store *s, const char *profile,
                                const char *output, tl_error *err)
{
  static const char sql[] = "SELECT p.id, p.home, (SELECT path FROM hermes_file WHERE profile_id = p.id AND kind = "
                            "'auth' ORDER BY synced_at DESC LIMIT 1) FROM profile p WHERE p.name = :n";
  sqlite3_stmt *st = tl__stmt(s, sql, err);
  if (!st)
    return TL_ERROR;
  tl__bind_text(st, ":n", profile);
  if (sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_reset(st);
    return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' does not exist", profile);
  }
  *pid = sqlite3_column_int64(st, 0);
  const char *home = (const char *)sqlite3_column_text(st, 1);
  const char *known = (const char *)sqlite3_column_text(st, 2);
  if (known)
    snprintf(home_file, n, "%s", known);
  else if (home)
    snprintf(home_file, n, "%s/auth.json", home);
  else
    home_file[0] = '\0';
  snprintf(out, n, "%s", output ? output : home_file);
  sqlite3_reset(st);
  if (!out[0])
    return tl__err(err, TL_EINVAL, 0, "profile '%s' has no Hermes home; give --output FILE or 'profile add --home'",
                   profile);
  return TL_OK;
}

tl_status tl_export(tl_report **out, tl_store *s, const char *profile, const char *output, const char *shared_dir,
                    tl_error *err)
{
  tl_status rc;
  tl_report *r = NULL;
  char target[PATH_MAX + 32], home_file[PATH_MAX + 32];
  int64_t pid = 0;
  if (!out || !s || !profile)
    return tl__err(err, TL_EINVAL, 0, "export: a profile is required");
  *out = NULL;
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if ((rc = profile_target(target, sizeof target, home_file, &pid, s, profile, output, err)) != TL_OK)
    goto done;
  fileop op = {.s = s, .report = r, .profile = pid, .profile_name = profile, .home = *home_file ? home_file : NULL};
  if ((rc = sync_file(&op, target, err)) != TL_OK)
    goto done;
  if (shared_dir) {
    snprintf(target, sizeof target, "%s/nous_auth.json", shared_dir);
    fileop sh = {.s = s, .report = r, .profile = pid, .profile_name = profile, .shared = 1};
    rc = sync_file(&sh, target, err);
  }
done:
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

tl_status tl_sync(tl_report **out, tl_store *s, const char *profile, tl_error *err)
{
  static const char all_sql[] = "SELECT p.name FROM profile p WHERE p.home IS NOT NULL OR EXISTS (SELECT 1 FROM "
                                "hermes_file f WHERE f.profile_id = p.id) ORDER BY p.name";
  static const char shared_sql[] = "SELECT path FROM hermes_file WHERE kind = 'shared_nous'";
  tl_status rc;
  tl_report *r = NULL;
  char **names = NULL;
  size_t n = 0;
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "sync: bad arguments");
  *out = NULL;
  if ((rc = tl__report_kv(&r, report_cols, 7, err)) != TL_OK)
    return rc;
  if (profile) {
    names = calloc(1, sizeof *names);
    if (!names || !(names[0] = strdup(profile))) {
      rc = tl__oom(err);
      goto done;
    }
    n = 1;
  } else {
    sqlite3_stmt *st = tl__stmt(s, all_sql, err);
    if (!st) {
      rc = TL_ERROR;
      goto done;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
      char **nv = realloc(names, (n + 1) * sizeof *nv);
      if (!nv) {
        sqlite3_reset(st);
        rc = tl__oom(err);
        goto done;
      }
      names = nv;
      names[n++] = tl__col_dup(st, 0);
    }
    sqlite3_reset(st);
  }
  for (size_t i = 0; i < n; i++) {
    char target[PATH_MAX + 32], home_file[PATH_MAX + 32];
    int64_t pid = 0;
    if ((rc = profile_target(target, sizeof target, home_file, &pid, s, names[i], NULL, err)) != TL_OK)
      goto done;
    fileop op = {.s = s, .report = r, .profile = pid, .profile_name = names[i], .adopt = 1};
    if ((rc = sync_file(&op, target, err)) != TL_OK)
      goto done;
  }
  if (!profile) {
    sqlite3_stmt *st = tl__stmt(s, shared_sql, err);
    char *path = NULL;
    if (st && sqlite3_step(st) == SQLITE_ROW)
      path = tl__col_dup(st, 0);
    if (st)
      sqlite3_reset(st);
    if (path) {
      fileop op = {.s = s, .report = r, .shared = 1, .adopt = 1};
      rc = sync_file(&op, path, err);
      free(path);
    }
  }
done:
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

/* ---- keep-fresh ------------------------------------------------------------------------- */

tl_status tl_keep_fresh(tl_report **out, int *out_failures, tl_store *s, int64_t ahead_ms, int sync, tl_error *err)
{
  static const char *const cols[] = {"credential", "provider", "action", "expires", "detail"};
  static const char sql[] =
      "SELECT c.id, c.provider, c.status, coalesce(c.expires_at, 0) FROM credential c WHERE EXISTS (SELECT 1 FROM "
      "pool_entry e WHERE e.credential_id = c.id) ORDER BY c.id";
  tl_report *r = NULL;
  tl_status rc;
  int failures = 0;
  int64_t *ids = NULL;
  size_t n = 0, cap = 0;
  if (!out || !out_failures || !s || ahead_ms < 0)
    return tl__err(err, TL_EINVAL, 0, "keep-fresh: bad arguments");
  if ((rc = tl__report_kv(&r, cols, 5, err)) != TL_OK)
    return rc;
  sqlite3_stmt *st = tl__stmt(s, sql, err);
  if (!st) {
    rc = TL_ERROR;
    goto done;
  }
  int64_t now = tl__now_ms();
  while (sqlite3_step(st) == SQLITE_ROW) {
    int64_t id = sqlite3_column_int64(st, 0), exp = sqlite3_column_int64(st, 3);
    const char *status = (const char *)sqlite3_column_text(st, 2);
    char idt[32], when[40] = "";
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    if (exp)
      iso(when, sizeof when, exp, 0, 1);
    const char *action = NULL, *detail = NULL;
    if (strcmp(status, "active") != 0) {
      action = "skipped";
      detail = strcmp(status, "uncertain") == 0 ? "unknown outcome: see 'tokenledger recover'"
                                                : "needs a new login: see 'tokenledger login'";
    } else if (exp && exp - ahead_ms > now) {
      action = "fresh";
    } else {
      if (n == cap) {
        cap = cap ? cap * 2 : 16;
        int64_t *nv = realloc(ids, cap * sizeof *nv);
        if (!nv) {
          sqlite3_reset(st);
          rc = tl__oom(err);
          goto done;
        }
        ids = nv;
      }
      ids[n++] = id;
      continue;
    }
    const char *cells[5] = {idt, (const char *)sqlite3_column_text(st, 1), action, *when ? when : NULL, detail};
    const int num[5] = {1, 0, 0, 0, 0};
    if ((rc = tl__report_add_row(r, cells, num, err)) != TL_OK) {
      sqlite3_reset(st);
      goto done;
    }
  }
  sqlite3_reset(st);
  for (size_t i = 0; i < n; i++) {
    tl_token *t = NULL;
    tl_error one = {0};
    tl_status frc = tl_refresh(&t, s, ids[i], TL_REFRESH_FORCE, &one);
    char idt[32], when[40] = "";
    snprintf(idt, sizeof idt, "%lld", (long long)ids[i]);
    if (t && t->expires_at_ms)
      iso(when, sizeof when, t->expires_at_ms, 0, 1);
    const char *cells[5] = {idt, NULL, frc == TL_OK ? "refreshed" : "failed", *when ? when : NULL,
                            frc == TL_OK ? NULL : one.message};
    const int num[5] = {1, 0, 0, 0, 0};
    tl_token_free(t);
    if (frc != TL_OK)
      failures++;
    if ((rc = tl__report_add_row(r, cells, num, err)) != TL_OK)
      goto done;
  }
  if (sync) {
    tl_report *sr = NULL;
    tl_error serr = {0};
    if (tl_sync(&sr, s, NULL, &serr) != TL_OK) {
      failures++;
      const char *cells[5] = {NULL, NULL, "failed", NULL, serr.message};
      const int num[5] = {0};
      if ((rc = tl__report_add_row(r, cells, num, err)) != TL_OK) {
        tl_report_free(sr);
        goto done;
      }
    }
    tl_report_free(sr);
  }
done:
  free(ids);
  if (rc == TL_OK) {
    *out = r;
    *out_failures = failures;
  } else {
    tl_report_free(r);
  }
  return rc;
}
