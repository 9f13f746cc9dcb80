/*
 * ledger.c - profiles, providers, credentials, the RT ledger and the audit log.
 *
 * Invariants kept here (the schema enforces them too):
 *   - Every RT is fingerprinted before it is stored; a fingerprint already in
 *     the ledger as spent (rotated, rejected, unknown, retired) is refused with
 *     TL_EREUSE, nothing of the refused operation is written, and a
 *     reuse_blocked audit event is committed on its own naming when, by whom
 *     and in which generation the token was spent.
 *   - The same live RT seen again is the same grant: the profile is attached
 *     to the existing credential instead of creating a second one.
 *   - Every change writes its audit event in the same transaction as the
 *     change itself. Audit details never hold a secret: RTs appear as
 *     12-character fingerprint prefixes.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- audit -------------------------------------------------------------- */

tl_status tl__audit(tl_store *s, const char *event, const tl__ids *ids, json_t *detail, tl_error *err)
{
  static const char sql[] = "INSERT INTO audit_event (at, actor_host, actor_pid, actor_profile, actor_command, "
                            "event, profile_id, credential_id, rt_id, detail) VALUES (:at, :host, :pid, :profile, "
                            ":command, :event, :pid_, :cred, :rt, coalesce(:detail, '{}'))";
  char *text = detail ? json_dumps(detail, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(detail);
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) == TL_OK &&
      (rc = TL_BIND(st, err, TL_INT(":at", tl__now_ms()), TL_TEXT(":host", s->actor.host), TL_INT(":pid", s->actor.pid),
                    TL_TEXT(":profile", s->actor.profile), TL_TEXT(":command", s->actor.command),
                    TL_TEXT(":event", event), TL_OPTINT(":pid_", ids ? ids->profile : 0),
                    TL_OPTINT(":cred", ids ? ids->credential : 0), TL_OPTINT(":rt", ids ? ids->rt : 0),
                    TL_TEXT(":detail", text))) == TL_OK)
    rc = tl__step_done(s, st, "audit", err);
  free(text);
  return rc;
}

/* ---- profiles ----------------------------------------------------------- */

int tl_profile_name_valid(const char *name)
{
  static const char *const reserved[] = {"hermes", "test", "tmp", "root", "sudo"};
  if (!name || !*name)
    return 0;
  size_t n = strlen(name);
  if (n > 64)
    return 0;
  if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return 0;
  }
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
    if (strcmp(name, reserved[i]) == 0)
      return 0;
  return 1;
}

tl_status tl__profile_id(int64_t *out, tl_store *s, const char *name, tl_error *err)
{
  static const char sql[] = "SELECT id FROM profile WHERE name = :name";
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":name", name))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profile", err)) != TL_OK)
    return rc;
  if (found) {
    *out = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return TL_OK;
  }
  sqlite3_reset(st);
  return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' does not exist", name);
}

/* mkdir -p with 0700 for every directory it makes (Hermes' ~/.hermes/profiles/NAME may not exist yet). */
static int make_dirs(const char *home)
{
  char path[PATH_MAX];
  struct stat st;
  if (snprintf(path, sizeof path, "%s", home) >= (int)sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *p = path + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char c = *p;
    *p = '\0';
    if (lstat(path, &st) != 0 && (errno != ENOENT || mkdir(path, 0700) != 0))
      return -1;
    *p = c;
    if (!c)
      return 0;
  }
}

/* A Hermes home: an existing directory of ours (created 0700 with its parents when asked), as an absolute path. */
static tl_status check_home(char abs[PATH_MAX], const char *home, int create, tl_error *err)
{
  struct stat st;
  if (create && lstat(home, &st) != 0 && errno == ENOENT && make_dirs(home) != 0)
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "profile home %s: cannot create it: %s", home,
                   strerror(errno));
  if (!realpath(home, abs))
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "profile home %s: %s", home, strerror(errno));
  if (stat(abs, &st) != 0 || !S_ISDIR(st.st_mode))
    return tl__err(err, TL_EINVAL, 0, "profile home %s: not a directory", home);
  if (st.st_uid != geteuid())
    return tl__err(err, TL_EINSECURE, 0, "profile home %s: owned by uid %ld, not by you (uid %ld)", home,
                   (long)st.st_uid, (long)geteuid());
  static const char *const system_dirs[] = {"/dev", "/proc", "/sys", "/run"};
  for (size_t i = 0; i < sizeof system_dirs / sizeof *system_dirs; i++) {
    size_t n = strlen(system_dirs[i]);
    if (strcmp(abs, "/") == 0 || (strncmp(abs, system_dirs[i], n) == 0 && (abs[n] == '/' || abs[n] == '\0')))
      return tl__err(err, TL_EINVAL, 0, "profile home %s: %s is a system directory, not a Hermes home", home, abs);
  }
  return TL_OK;
}

tl_status tl__home_owner(char *name, size_t n, tl_store *s, const char *home, int64_t except, tl_error *err)
{
  static const char sql[] = "SELECT name FROM profile WHERE (home = :home OR home = :real) AND id <> :except";
  char real[PATH_MAX];
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  name[0] = '\0';
  if (!realpath(home, real))
    snprintf(real, sizeof real, "%s", home);
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":home", home), TL_TEXT(":real", real), TL_INT(":except", except))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "profile home", err)) != TL_OK)
    return rc;
  if (found)
    snprintf(name, n, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
  return TL_OK;
}

/*
 * The profile (other than except) whose stored home is the same directory as home, however either is
 * spelled now (a root moved and a symlink kept its old name): one stat per profile with a home, for the
 * commands that set one home by hand.
 */
static tl_status home_same_dir(char *name, size_t n, tl_store *s, const char *home, int64_t except, tl_error *err)
{
  static const char sql[] = "SELECT name, home FROM profile WHERE home IS NOT NULL AND id <> :except";
  struct stat want, st;
  sqlite3_stmt *q;
  tl_status rc;
  int found = 0;
  name[0] = '\0';
  if (stat(home, &want) != 0)
    return TL_OK;
  if ((rc = tl__prepare(&q, s, sql, err)) != TL_OK || (rc = TL_BIND(q, err, TL_INT(":except", except))) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, q, "profile homes", err)) == TL_OK && found) {
    const char *h = (const char *)sqlite3_column_text(q, 1);
    if (h && stat(h, &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino) {
      snprintf(name, n, "%s", (const char *)sqlite3_column_text(q, 0));
      break;
    }
  }
  sqlite3_reset(q);
  return rc;
}

/* One Hermes home is one profile's: two profiles writing one auth.json would swap its grant back and forth. */
static tl_status home_free(tl_store *s, const char *home, int64_t except, tl_error *err)
{
  char other[80];
  tl_status rc = tl__home_owner(other, sizeof other, s, home, except, err);
  if (rc == TL_OK && !other[0])
    rc = home_same_dir(other, sizeof other, s, home, except, err);
  if (rc == TL_OK && other[0])
    rc = tl__err(err, TL_EEXISTS, 0,
                 "profile home %s: already the home of profile '%s'; a Hermes home belongs to one "
                 "profile",
                 home, other);
  return rc;
}

tl_status tl_profile_add(tl_store *s, const char *name, const char *home, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "INSERT INTO profile (name, home, created_at) VALUES (:name, :home, :now)";
  tl_status rc;
  char abs[PATH_MAX];
  if (!s || !name)
    return tl__err(err, TL_EINVAL, 0, "profile add: no name");
  if (!tl_profile_name_valid(name))
    return tl__err(err, TL_EINVAL, 0,
                   "profile name '%.64s' is invalid: use 1-64 of a-z 0-9 _ -, starting with a letter or digit "
                   "(hermes, test, tmp, root, sudo are reserved)",
                   name);
  if (home) {
    if ((rc = check_home(abs, home, 0, err)) != TL_OK)
      return rc;
    home = abs;
  }
  if ((rc = tl__tx_begin(s, "profile add", err)) != TL_OK)
    return rc;
  int64_t id = 0;
  tl_error probe = {0};
  sqlite3_stmt *st;
  if ((rc = tl__profile_id(&id, s, name, &probe)) == TL_OK) {
    tl__tx_rollback(s);
    return tl__err(err, TL_EEXISTS, 0, "profile '%s' already exists", name);
  }
  if (rc != TL_ENOTFOUND) {
    tl__tx_rollback(s);
    return tl__err(err, rc, probe.sys, "%s", probe.message);
  }
  if ((home && (rc = home_free(s, home, 0, err)) != TL_OK) || (rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":name", name), TL_TEXT(":home", home), TL_INT(":now", tl__now_ms()))) != TL_OK ||
      (rc = tl__step_done(s, st, "profile add", err)) != TL_OK)
    goto fail;
  tl__ids ids = {.profile = sqlite3_last_insert_rowid(s->db)};
  if ((rc = tl__audit(s, "profile_added", &ids, json_pack("{s:s, s:s?}", "profile", name, "home", home), err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_profile_set_home(tl_store *s, const char *name, const char *home, int create, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "UPDATE profile SET home = :home WHERE id = :id";
  char abs[PATH_MAX];
  int64_t id = 0;
  tl_status rc;
  if (!s || !name)
    return tl__err(err, TL_EINVAL, 0, "profile set-home: no name");
  if (home && (rc = check_home(abs, home, create, err)) != TL_OK)
    return rc;
  if ((rc = tl__tx_begin(s, "profile set-home", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__profile_id(&id, s, name, err)) != TL_OK || (home && (rc = home_free(s, abs, id, err)) != TL_OK) ||
      (rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":home", home ? abs : NULL), TL_INT(":id", id))) != TL_OK ||
      (rc = tl__step_done(s, st, "profile set-home", err)) != TL_OK)
    goto fail;
  tl__ids ids = {.profile = id};
  if ((rc = tl__audit(s, "profile_home_set", &ids, json_pack("{s:s, s:s?}", "profile", name, "home", home ? abs : NULL),
                      err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_profile_remove(tl_store *s, const char *name, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "DELETE FROM profile WHERE id = :id";
  tl_status rc;
  int64_t id = 0;
  if (!s || !name)
    return tl__err(err, TL_EINVAL, 0, "profile rm: no name");
  if ((rc = tl__tx_begin(s, "profile rm", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__profile_id(&id, s, name, err)) != TL_OK || (rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":id", id))) != TL_OK || (rc = tl__step_done(s, st, "profile rm", err)) != TL_OK)
    goto fail;
  tl__ids ids = {.profile = id};
  if ((rc = tl__audit(s, "profile_removed", &ids, json_pack("{s:s}", "profile", name), err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_profile_list(tl_report **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT p.name AS name, p.home AS home, "
      "(SELECT count(*) FROM pool_entry e WHERE e.profile_id = p.id) AS entries, "
      "EXISTS (SELECT 1 FROM strict_profile sp WHERE sp.profile_id = p.id) AS strict, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', p.created_at / 1000.0, 'unixepoch') AS created FROM profile p ORDER BY p.name";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "profile list: bad arguments");
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  return rc == TL_OK ? tl__report_from_stmt(out, s, st, err) : rc;
}

/* ---- providers ---------------------------------------------------------- */

int tl__provider_name_valid(const char *name)
{
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 128)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._:-+@", c)))
      return 0;
  }
  return 1;
}

tl_status tl_url_check(const char *url, tl_error *err)
{
  tl_error_clear(err);
  int loopback = 0;
  return tl__url_classify(&loopback, url, err);
}

tl_status tl_provider_set(tl_store *s, const tl_provider *p, tl_error *err)
{
  tl_error_clear(err);
  static const char ins_sql[] =
      "INSERT INTO provider (name, token_url, device_url, client_id, rt_header, skew_s, grace_s, scope, updated_at) "
      "VALUES (:name, :token_url, :device_url, :client_id, nullif(:rt_header, ''), coalesce(:skew, 120), "
      "coalesce(:grace, 0), :scope, :now)";
  static const char upd_sql[] =
      "UPDATE provider SET token_url = coalesce(:token_url, token_url), device_url = coalesce(:device_url, "
      "device_url), "
      "client_id = coalesce(:client_id, client_id), "
      "rt_header = CASE WHEN :rt_header = '' THEN NULL ELSE coalesce(:rt_header, rt_header) END, "
      "skew_s = coalesce(:skew, skew_s), grace_s = coalesce(:grace, grace_s), scope = coalesce(:scope, scope), "
      "updated_at = :now WHERE name = :name";
  static const char exists_sql[] = "SELECT 1 FROM provider WHERE name = :name";
  tl_status rc;
  if (!s || !p || !p->name || !*p->name)
    return tl__err(err, TL_EINVAL, 0, "provider set: no provider name");
  if (!tl__provider_name_valid(p->name))
    return tl__err(err, TL_EINVAL, 0,
                   "provider name '%.64s' is invalid: 1-128 of A-Z a-z 0-9 and . _ : - + @ (Hermes ids such as nous, "
                   "openai-codex, custom:name)",
                   p->name);
  if (p->token_url && (rc = tl_url_check(p->token_url, err)) != TL_OK)
    return rc;
  if (p->device_url && (rc = tl_url_check(p->device_url, err)) != TL_OK)
    return rc;
  const char *bad_header = p->rt_header && *p->rt_header ? tl__rt_header_invalid(p->rt_header) : NULL;
  if (bad_header)
    return tl__err(err, TL_EINVAL, 0, "refresh token header name '%.64s' %s",
                   tl__token_valid(p->rt_header, strlen(p->rt_header)) ? p->rt_header : "(control characters)",
                   bad_header);
  if ((rc = tl__tx_begin(s, "provider set", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int exists = 0;
  if ((rc = tl__prepare(&st, s, exists_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":name", p->name))) != TL_OK ||
      (rc = tl__step_row(&exists, s, st, "provider set", err)) != TL_OK)
    goto fail;
  sqlite3_reset(st);
  if (!exists && (!p->token_url || !p->client_id)) {
    rc = tl__err(err, TL_EINVAL, 0, "provider '%s' is new: a token endpoint and a client id are required", p->name);
    goto fail;
  }
  if ((rc = tl__prepare(&st, s, exists ? upd_sql : ins_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":name", p->name), TL_TEXT(":token_url", p->token_url),
                    TL_TEXT(":device_url", p->device_url), TL_TEXT(":client_id", p->client_id),
                    TL_TEXT(":rt_header", p->rt_header), TL_TEXT(":scope", p->scope), TL_INT(":now", tl__now_ms()))) !=
          TL_OK)
    goto fail;
  if (p->skew_s >= 0 && (rc = TL_BIND(st, err, TL_INT(":skew", p->skew_s))) != TL_OK)
    goto fail;
  if (p->grace_s >= 0 && (rc = TL_BIND(st, err, TL_INT(":grace", p->grace_s))) != TL_OK)
    goto fail;
  if ((rc = tl__step_done(s, st, "provider set", err)) != TL_OK)
    goto fail;
  if (p->token_url || p->client_id) {
    /* Credentials imported before the provider was configured take its endpoint now. */
    static const char fill_sql[] = "UPDATE credential SET token_url = coalesce(token_url, :url), client_id = "
                                   "coalesce(client_id, :client) WHERE provider = :name AND (token_url IS NULL OR "
                                   "client_id IS NULL)";
    if ((rc = tl__prepare(&st, s, fill_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_TEXT(":url", p->token_url), TL_TEXT(":client", p->client_id),
                      TL_TEXT(":name", p->name))) != TL_OK ||
        (rc = tl__step_done(s, st, "provider set", err)) != TL_OK)
      goto fail;
  }
  if ((rc = tl__audit(s, exists ? "provider_updated" : "provider_added", NULL,
                      json_pack("{s:s, s:s?, s:s?, s:s?}", "provider", p->name, "token_url", p->token_url, "rt_header",
                                p->rt_header, "client_id", p->client_id),
                      err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_provider_list(tl_report **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  /* Rows exist for every provider a pool names (API keys too: the pool refers to them); `refreshes` says
   * which of them tokenledger refreshes: configured, not_configured (grants wait for an endpoint), or
   * api_keys_only (nothing to refresh). */
  static const char sql[] =
      "SELECT name, token_url, device_url, client_id, coalesce(rt_header, 'body:refresh_token') AS rt_in, "
      "skew_s, grace_s, scope, "
      "(SELECT count(*) FROM credential c WHERE c.provider = pv.name AND EXISTS (SELECT 1 FROM pool_entry e WHERE "
      "e.credential_id = c.id)) AS credentials, "
      "(SELECT count(*) FROM pool_entry e WHERE e.provider = pv.name AND e.credential_id IS NULL) AS keys, "
      "CASE WHEN token_url IS NOT NULL AND client_id IS NOT NULL THEN 'configured' "
      "WHEN EXISTS (SELECT 1 FROM credential c WHERE c.provider = pv.name) THEN 'not_configured' "
      "WHEN EXISTS (SELECT 1 FROM pool_entry e WHERE e.provider = pv.name) THEN 'api_keys_only' "
      "ELSE 'not_configured' END AS refreshes "
      "FROM provider pv ORDER BY name";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "provider list: bad arguments");
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  return rc == TL_OK ? tl__report_from_stmt(out, s, st, err) : rc;
}

/* ---- the RT ledger ------------------------------------------------------ */

tl_status tl__rt_lookup(int64_t *out_rt, int64_t *out_cred, tl_store *s, const char *fp, tl_error *err)
{
  static const char sql[] = "SELECT id, credential_id, state FROM refresh_token WHERE fingerprint = :fp";
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  *out_rt = 0;
  *out_cred = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":fp", fp))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "ledger lookup", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return TL_OK;
  }
  *out_rt = sqlite3_column_int64(st, 0);
  *out_cred = sqlite3_column_int64(st, 1);
  const char *state = (const char *)sqlite3_column_text(st, 2);
  int live = state && (strcmp(state, "current") == 0 || strcmp(state, "presented") == 0);
  sqlite3_reset(st);
  return live ? TL_OK : TL_EREUSE;
}

tl_status tl__reuse_blocked(tl_store *s, const char *fp, const char *where, tl_error *err)
{
  static const char sql[] =
      "SELECT t.id, t.credential_id, c.provider, c.label, t.generation, t.state, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', coalesce(t.retired_at, t.issued_at) / 1000.0, 'unixepoch'), "
      "coalesce(a.owner_host || ':' || a.owner_pid, e.actor_host || ':' || e.actor_pid), "
      "coalesce(a.owner_profile, e.actor_profile), coalesce(a.owner_command, e.actor_command), "
      "strftime('%Y-%m-%dT%H:%M:%SZ', coalesce(a.started_at, e.at) / 1000.0, 'unixepoch') "
      "FROM refresh_token t JOIN credential c ON c.id = t.credential_id "
      "LEFT JOIN refresh_attempt a ON a.id = (SELECT max(id) FROM refresh_attempt WHERE rt_id = t.id) "
      /* "never presented by tokenledger" must survive compact: the audit log keeps every presentation */
      "LEFT JOIN audit_event e ON e.id = (SELECT max(id) FROM audit_event WHERE credential_id = t.credential_id "
      "AND rt_id = t.id AND event IN ('rt_presented', 'rt_represented')) "
      "WHERE t.fingerprint = :fp";
  tl_status rc;
  if ((rc = tl__tx_begin(s, "reuse blocked", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":fp", fp))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "reuse check", err)) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  if (!found) {
    sqlite3_reset(st);
    tl__tx_rollback(s);
    return tl__err(err, TL_ERROR, 0, "reuse check: token vanished from the ledger");
  }
  tl__ids ids = {.credential = sqlite3_column_int64(st, 1), .rt = sqlite3_column_int64(st, 0)};
  char provider[129] = "", label[129] = "", state[16] = "", when[32] = "", by[300] = "", byprof[80] = "",
       bycmd[80] = "", bywhen[32] = "";
#define COPY(buf, col)                                                                                                 \
  snprintf(buf, sizeof buf, "%s", sqlite3_column_text(st, col) ? (const char *)sqlite3_column_text(st, col) : "")
  COPY(provider, 2);
  COPY(label, 3);
  COPY(state, 5);
  COPY(when, 6);
  COPY(by, 7);
  COPY(byprof, 8);
  COPY(bycmd, 9);
  COPY(bywhen, 10);
#undef COPY
  int64_t gen = sqlite3_column_int64(st, 4);
  sqlite3_reset(st);
  json_t *d = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s?}", "fingerprint", fp, "where", where,
                        "state", state, "generation", (json_int_t)gen, "spent_at", when, "provider", provider,
                        "presented_by", *by ? by : NULL, "presented_profile", *byprof ? byprof : NULL,
                        "presented_command", *bycmd ? bycmd : NULL, "presented_at", *bywhen ? bywhen : NULL);
  if (d)
    json_object_set_new(d, "fingerprint", json_stringn(fp, 12));
  if ((rc = tl__audit(s, "reuse_blocked", &ids, d, err)) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  char who[768];
  if (*by)
    snprintf(who, sizeof who, "; last presented by %s%s%s%s%s at %s", by, *byprof ? " profile " : "", byprof,
             *bycmd ? " command " : "", bycmd, bywhen);
  else
    snprintf(who, sizeof who, "; never presented by tokenledger");
  return tl__err(err, TL_EREUSE, 0,
                 "%s: refresh token %.12s... is already spent: generation %lld of credential %lld (%s%s%s), %s "
                 "since %s%s; refusing to store or present it again (that would make the server revoke the login)",
                 where, fp, (long long)gen, (long long)ids.credential, provider, *label ? ", " : "", label, state, when,
                 who);
}

/* ---- credentials -------------------------------------------------------- */

static void random_entry_id(char out[7])
{
  unsigned char b[3] = {0};
  static const char hex[] = "0123456789abcdef";
  if (tl__rand_bytes(b, sizeof b) != 1) {
    int64_t t = tl__now_ms();
    memcpy(b, &t, sizeof b);
  }
  for (int i = 0; i < 3; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  out[6] = '\0';
}

static tl_status add_pool_entry(tl_store *s, int64_t profile, const char *provider, int64_t cred, const char *entry_id,
                                const char *source, const char *label, tl_error *err)
{
  static const char sql[] =
      "INSERT INTO pool_entry (profile_id, provider, credential_id, entry_id, priority, source, label) "
      "VALUES (:profile, :provider, :cred, :entry, (SELECT coalesce(max(priority) + 1, 0) FROM pool_entry "
      "WHERE profile_id = :profile AND provider = :provider), :source, :label)";
  static const char dup_sql[] =
      "SELECT entry_id FROM pool_entry WHERE profile_id = :profile AND provider = :provider AND credential_id = :cred";
  char gen[7];
  sqlite3_stmt *st;
  tl_status rc;
  int have = 0;
  if ((rc = tl__prepare(&st, s, dup_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":profile", profile), TL_TEXT(":provider", provider), TL_INT(":cred", cred))) !=
          TL_OK ||
      (rc = tl__step_row(&have, s, st, "pool entry", err)) != TL_OK)
    return rc;
  sqlite3_reset(st);
  if (have)
    return TL_OK; /* this profile already uses this grant */
  if (!entry_id) {
    random_entry_id(gen);
    entry_id = gen;
  }
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":profile", profile), TL_TEXT(":provider", provider), TL_INT(":cred", cred),
                    TL_TEXT(":entry", entry_id), TL_TEXT(":source", source ? source : "manual"),
                    TL_TEXT(":label", label))) != TL_OK)
    return rc;
  return tl__step_done(s, st, "pool entry", err);
}

tl_status tl_credential_add(int64_t *out_id, tl_store *s, const tl_credential_spec *spec, tl_error *err)
{
  tl_error_clear(err);
  static const char prov_sql[] = "SELECT token_url, client_id, scope FROM provider WHERE name = :name";
  static const char cred_sql[] =
      "INSERT INTO credential (provider, client_id, token_url, label, access_token, expires_at, obtained_at, scope, "
      "created_at, updated_at) VALUES (:provider, :client_id, :token_url, :label, :at, :exp, :obtained, :scope, "
      ":now, :now)";
  static const char rt_sql[] =
      "INSERT INTO refresh_token (credential_id, generation, fingerprint, state, origin, secret, issued_at) "
      "VALUES (:cred, 0, :fp, 'current', :origin, :secret, :now)";
  static const char prov_of_cred[] = "SELECT provider FROM credential WHERE id = :id";
  tl_status rc;
  char fp[65];
  char *token_url = NULL, *client_id = NULL, *scope = NULL;
  int64_t profile = 0, rt = 0, cred = 0;
  sqlite3_stmt *st;

  if (!s || !spec || !spec->provider || !spec->profile)
    return tl__err(err, TL_EINVAL, 0, "credential add: provider and profile are required");
  if (!spec->refresh_token || !*spec->refresh_token)
    return tl__err(err, TL_EINVAL, 0, "credential add: a refresh token is required");
  if (tl__strict_is_surrogate(spec->refresh_token))
    return tl__err(err, TL_EINVAL, 0,
                   "credential add: this is a surrogate of tokenledger serve (strict mode), not a refresh token; "
                   "the real one stays in the ledger");
  /* Whatever the source (file, stdin, a server's answer), a token is RFC 6749 VSCHAR: never stored otherwise. */
  if (!tl__token_valid(spec->refresh_token, strlen(spec->refresh_token)) ||
      (spec->access_token && !tl__token_valid(spec->access_token, strlen(spec->access_token))))
    return tl__err(err, TL_EINVAL, 0,
                   "credential add: the %s token is not 1-%d bytes of printable ASCII without surrounding space",
                   tl__token_valid(spec->refresh_token, strlen(spec->refresh_token)) ? "access" : "refresh",
                   TL_TOKEN_MAX);
  const char *origin = spec->origin ? spec->origin : "import";
  if (strcmp(origin, "login") != 0 && strcmp(origin, "import") != 0)
    return tl__err(err, TL_EINVAL, 0, "credential add: origin must be login or import");
  if (spec->token_url && (rc = tl_url_check(spec->token_url, err)) != TL_OK)
    return rc;
  if (spec->entry_id && (!*spec->entry_id || strlen(spec->entry_id) > 64))
    return tl__err(err, TL_EINVAL, 0, "credential add: entry id must be 1-64 bytes");
  tl_fingerprint(fp, spec->refresh_token, strlen(spec->refresh_token));

  if ((rc = tl__tx_begin(s, "credential add", err)) != TL_OK)
    return rc;
  int found = 0;
  if ((rc = tl__profile_id(&profile, s, spec->profile, err)) != TL_OK ||
      (rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":name", spec->provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential add", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    rc = tl__err(err, TL_ENOTFOUND, 0, "provider '%s' is not configured", spec->provider);
    goto fail;
  }
  token_url = tl__col_dup(st, 0);
  client_id = tl__col_dup(st, 1);
  scope = tl__col_dup(st, 2);
  int lost = (!token_url && sqlite3_column_type(st, 0) != SQLITE_NULL) ||
             (!client_id && sqlite3_column_type(st, 1) != SQLITE_NULL) ||
             (!scope && sqlite3_column_type(st, 2) != SQLITE_NULL);
  sqlite3_reset(st);
  if (lost) {
    rc = tl__oom(err);
    goto fail;
  }

  rc = tl__rt_lookup(&rt, &cred, s, fp, err);
  if (rc == TL_EREUSE) {
    tl__tx_rollback(s);
    rc = tl__reuse_blocked(s, fp, "credential add", err);
    goto out;
  }
  if (rc != TL_OK)
    goto fail;
  tl__ids ids = {.profile = profile};
  if (rt) {
    /* The same grant seen again: attach this profile to it. */
    if ((rc = tl__prepare(&st, s, prov_of_cred, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
        (rc = tl__step_row(&found, s, st, "credential add", err)) != TL_OK)
      goto fail;
    int same =
        found && sqlite3_column_text(st, 0) && strcmp((const char *)sqlite3_column_text(st, 0), spec->provider) == 0;
    sqlite3_reset(st);
    if (!same) {
      rc = tl__err(err, TL_EEXISTS, 0, "this refresh token already belongs to credential %lld of another provider",
                   (long long)cred);
      goto fail;
    }
    if ((rc = add_pool_entry(s, profile, spec->provider, cred, spec->entry_id, spec->source, spec->label, err)) !=
        TL_OK)
      goto fail;
    ids.credential = cred;
    ids.rt = rt;
    if ((rc = tl__audit(s, "profile_attached", &ids,
                        json_pack("{s:s, s:s, s:s%}", "profile", spec->profile, "provider", spec->provider,
                                  "fingerprint", fp, (size_t)12),
                        err)) != TL_OK)
      goto fail;
  } else {
    int64_t now = tl__now_ms();
    if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_TEXT(":provider", spec->provider), TL_TEXT(":client_id", client_id),
                      TL_TEXT(":token_url", spec->token_url ? spec->token_url : token_url),
                      TL_TEXT(":label", spec->label), TL_SECRET(":at", spec->access_token),
                      TL_OPTINT(":exp", spec->access_token && spec->expires_at_ms > 0 ? spec->expires_at_ms : 0),
                      TL_OPTINT(":obtained", spec->access_token ? now : 0), TL_TEXT(":scope", scope),
                      TL_INT(":now", now))) != TL_OK ||
        (rc = tl__step_done(s, st, "credential add", err)) != TL_OK)
      goto fail;
    cred = sqlite3_last_insert_rowid(s->db);
    if ((rc = tl__prepare(&st, s, rt_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_INT(":cred", cred), TL_TEXT(":fp", fp), TL_TEXT(":origin", origin),
                      TL_SECRET(":secret", spec->refresh_token), TL_INT(":now", now))) != TL_OK ||
        (rc = tl__step_done(s, st, "store refresh token", err)) != TL_OK)
      goto fail;
    rt = sqlite3_last_insert_rowid(s->db);
    if ((rc = add_pool_entry(s, profile, spec->provider, cred, spec->entry_id, spec->source, spec->label, err)) !=
        TL_OK)
      goto fail;
    ids.credential = cred;
    ids.rt = rt;
    if ((rc = tl__audit(s, "rt_stored", &ids,
                        json_pack("{s:s, s:s, s:s, s:s%, s:i}", "profile", spec->profile, "provider", spec->provider,
                                  "origin", origin, "fingerprint", fp, (size_t)12, "generation", 0),
                        err)) != TL_OK)
      goto fail;
  }
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    goto out;
  if (out_id)
    *out_id = cred;
  goto out;
fail:
  tl__tx_rollback(s);
out:
  free(token_url);
  free(client_id);
  free(scope);
  return rc;
}

/*
 * credential rm: the grant leaves every pool and every grant place, its open refresh token is retired
 * with its plaintext erased, the access token is burned, and the credential is marked as needing a login
 * (why: removed). Its lineage, attempts and audit rows stay for forensics, so its refresh tokens are
 * still recognised (and refused) if they come back. A live grant (active, or with an unknown outcome) is
 * given up only with force, and never while Hermes files the ledger keeps still hold it (they would go
 * on spending a token the ledger has retired) or while it is being presented.
 */
static tl_status remove_rows(tl_store *s, int64_t cred, int64_t now, int64_t *entries, tl_error *err)
{
  static const char rt_sql[] = "UPDATE refresh_token SET state = 'retired', secret = NULL, retired_at = :now "
                               "WHERE credential_id = :c AND state IN ('current', 'unknown')";
  static const char cred_sql[] =
      "UPDATE credential SET status = 'needs_reauth', status_reason = 'removed from the ledger (credential rm)', "
      "access_token = NULL, id_token = NULL, refresh_not_before = NULL, updated_at = :now WHERE id = :c";
  static const char entries_sql[] = "DELETE FROM pool_entry WHERE credential_id = :c";
  static const char places_sql[] = "DELETE FROM grant_place WHERE credential_id = :c";
  const char *const sqls[] = {rt_sql, cred_sql, entries_sql, places_sql};
  tl_status rc = TL_OK;
  for (size_t i = 0; i < sizeof sqls / sizeof *sqls && rc == TL_OK; i++) {
    sqlite3_stmt *st;
    if ((rc = tl__prepare(&st, s, sqls[i], err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK ||
        (i < 2 && (rc = TL_BIND(st, err, TL_INT(":now", now))) != TL_OK) ||
        (rc = tl__step_done(s, st, "credential rm", err)) != TL_OK)
      break;
    if (sqls[i] == entries_sql)
      *entries = sqlite3_changes64(s->db);
  }
  return rc;
}

tl_status tl_credential_remove(tl_report **out, tl_store *s, int64_t cred, int force, tl_error *err)
{
  tl_error_clear(err);
  static const char cred_sql[] =
      "SELECT c.provider, c.label, c.status, "
      "(SELECT group_concat(name, ',') FROM (SELECT DISTINCT p.name AS name FROM pool_entry e JOIN profile p ON "
      "p.id = e.profile_id WHERE e.credential_id = c.id ORDER BY p.name)), "
      "(SELECT substr(fingerprint, 1, 12) FROM refresh_token WHERE credential_id = c.id AND state IN ('current', "
      "'presented', 'unknown')), "
      "EXISTS (SELECT 1 FROM refresh_token WHERE credential_id = c.id AND state = 'presented') OR EXISTS (SELECT 1 "
      "FROM refresh_attempt WHERE credential_id = c.id AND outcome = 'in_flight'), "
      "(SELECT group_concat(path, ',') FROM (SELECT DISTINCT f.path AS path FROM hermes_file f, "
      "json_tree(f.template) j WHERE j.key = '$tl' AND j.value IN ('rt', 'at') AND "
      "json_extract(f.template, j.path || '.credential') = c.id ORDER BY f.path)) "
      "FROM credential c WHERE c.id = :c";
  static const char *const cols[] = {"credential", "provider", "label",      "status",
                                     "profiles",   "entries",  "retired_rt", "files"};
  tl_report *r = NULL;
  char *provider = NULL, *label = NULL, *status = NULL, *profiles = NULL, *fp = NULL, *files = NULL;
  int64_t entries = 0, now = tl__now_ms();
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  if (!s || cred <= 0)
    return tl__err(err, TL_EINVAL, 0, "credential rm: a credential id is required");
  int64_t reaped = 0; /* an attempt whose owner died is unknown, not "being presented right now" */
  if ((rc = tl__reap_dead_attempts(&reaped, s, 1, err)) != TL_OK ||
      (rc = tl__tx_begin(s, "credential rm", err)) != TL_OK)
    return rc;
  if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential rm", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    rc = tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
    goto fail;
  }
  provider = tl__col_dup(st, 0);
  label = tl__col_dup(st, 1);
  status = tl__col_dup(st, 2);
  profiles = tl__col_dup(st, 3);
  fp = tl__col_dup(st, 4);
  int busy = sqlite3_column_int(st, 5);
  files = tl__col_dup(st, 6);
  sqlite3_reset(st);
  if (!provider || !status) {
    rc = tl__oom(err);
    goto fail;
  }
  if (busy) {
    rc = tl__err(err, TL_EBUSY, 0, "credential %lld: its refresh token is being presented right now; not removed",
                 (long long)cred);
    goto fail;
  }
  if ((rc = tl__rescue_refuse(s, cred, "not removed", err)) != TL_OK)
    goto fail;
  if (strcmp(status, "needs_reauth") != 0 && files) {
    /* Hermes keeps using it: the ledger would retire a token the files go on spending (and refuse them). */
    rc = tl__err(err, TL_EINVAL, 0,
                 "credential %lld (%s%s%s) is live in Hermes files the ledger keeps (%.600s); not removed",
                 (long long)cred, provider, label ? ", " : "", label ? label : "", files);
    goto fail;
  }
  if (strcmp(status, "needs_reauth") != 0 && !force) {
    rc = tl__err(err, TL_EINVAL, 0,
                 "credential %lld (%s%s%s) is %s: removing it gives up its refresh token for good; not removed",
                 (long long)cred, provider, label ? ", " : "", label ? label : "",
                 strcmp(status, "uncertain") == 0 ? "live (its last refresh has an unknown outcome)" : "live");
    goto fail;
  }
  if ((rc = remove_rows(s, cred, now, &entries, err)) != TL_OK)
    goto fail;
  tl__ids ids = {.credential = cred};
  if ((rc = tl__audit(s, "credential_removed", &ids,
                      json_pack("{s:s, s:s?, s:s, s:s?, s:I, s:s?, s:s?, s:b}", "provider", provider, "label", label,
                                "status", status, "profiles", profiles, "entries", (json_int_t)entries, "retired_rt",
                                fp, "files", files, "forced", force != 0),
                      err)) != TL_OK)
    goto fail;
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    goto done;
  if (out) {
    char idt[32], nt[32];
    snprintf(idt, sizeof idt, "%lld", (long long)cred);
    snprintf(nt, sizeof nt, "%lld", (long long)entries);
    const char *cells[8] = {idt, provider, label, status, profiles, nt, fp, files};
    const int num[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    if ((rc = tl_report_new(&r, cols, 8, err)) == TL_OK && (rc = tl_report_add_row(r, cells, num, err)) == TL_OK) {
      *out = r;
      r = NULL;
    }
  }
  goto done;
fail:
  tl__tx_rollback(s);
done:
  tl_report_free(r);
  free(provider);
  free(label);
  free(status);
  free(profiles);
  free(fp);
  free(files);
  return rc;
}
