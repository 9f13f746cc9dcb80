/*
 * login.c - a new grant through the OAuth 2.0 device authorization grant
 * (RFC 8628), as Hermes logs in to Nous Portal.
 *
 * POST the provider's device endpoint with client_id and scope, show the user
 * the verification URI and code (through the caller's prompt), then poll the
 * token endpoint with grant_type=urn:ietf:params:oauth:grant-type:device_code:
 * authorization_pending waits, slow_down adds a second (at most 30), 429/5xx
 * back off by Retry-After (at most 60 s), until the code expires. The answer's
 * refresh token becomes the root of a new lineage (origin `login`) through
 * tl_credential_add, so a token the ledger has seen spent is refused even here.
 * A login in place of a dead grant keeps its label and its places; with
 * tl_login_replace, one login takes the dead grant's place in every profile and
 * shared store that used it (a shared grant stays one grant).
 * The wire format (form bodies, the POST, the answer parser) is oauth.c's; the
 * provider's device endpoints are read here for serve's forwarding of Hermes'
 * own logins too (tl__device_endpoints_load).
 *
 * Invariants: the device code and the tokens are burned after use and never
 * reach a message; every answer is read by the one token-answer parser
 * (tl__answer_parse: printable tokens, checked numbers, no duplicate keys);
 * the device answer's interval is kept in [1, 30] s and its lifetime in
 * [1, 1800] s; what the prompt shows (URI, user code) holds no control
 * character.
 */
#include "hermes.h" /* TL_Q_EXEC */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEVICE_LIFETIME_MAX_S 1800
#define DEVICE_INTERVAL_MAX_S 30

static void pause_s(long s)
{
  tl__sleep_us((int64_t)s * 1000000);
}

typedef tl__device_endpoints endpoints;

void tl__device_endpoints_clear(tl__device_endpoints *e)
{
  free(e->token_url);
  free(e->device_url);
  free(e->client_id);
  free(e->scope);
  memset(e, 0, sizeof *e);
}

/* What the device endpoint answered; strings are new. */
typedef struct device_grant {
  char *device_code; /* secret */
  char *user_code, *uri, *uri_complete;
  long interval;
  int64_t expires_in;
} device_grant;

static void device_grant_clear(device_grant *g)
{
  tl_secret_free(g->device_code);
  free(g->user_code);
  free(g->uri);
  free(g->uri_complete);
  memset(g, 0, sizeof *g);
}

tl_status tl__device_endpoints_load(tl__device_endpoints *e, tl_store *s, const char *provider, tl_error *err)
{
  static const char prov_sql[] = "SELECT token_url, device_url, client_id, scope FROM provider WHERE name = :n";
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  memset(e, 0, sizeof *e);
  if ((rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":n", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "login", err)) != TL_OK)
    return rc;
  if (found) {
    e->token_url = tl__col_dup(st, 0);
    e->device_url = tl__col_dup(st, 1);
    e->client_id = tl__col_dup(st, 2);
    e->scope = tl__col_dup(st, 3);
  }
  sqlite3_reset(st);
  if (!e->token_url || !e->device_url || !e->client_id)
    return tl__err(err, TL_ENOTFOUND, 0,
                   "provider '%s' has no device authorization endpoint, token endpoint or client id", provider);
  return TL_OK;
}

static void post(tl_http_response *resp, tl_store *s, const char *url, const char *body)
{
  tl_http_request req = {.url = url, .body = body, .connect_timeout_ms = 5000, .timeout_ms = s->http_timeout_ms};
  tl__oauth_post(resp, s, &req);
}

/* A string field the user will see: printable, bounded; NULL if absent or not so. */
static char *shown_field(json_t *o, const char *k, size_t max)
{
  json_t *v = json_object_get(o, k);
  if (!json_is_string(v) || json_string_length(v) > max ||
      !tl__token_valid(json_string_value(v), json_string_length(v)))
    return NULL;
  return strdup(json_string_value(v));
}

/* A number of seconds from the server, clamped to [1, max]; dflt if absent or not a number. */
static int64_t bounded_seconds(json_t *v, int64_t dflt, int64_t max)
{
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    return x < 1 ? 1 : x > max ? max : (int64_t)x;
  }
  if (json_is_real(v) && isfinite(json_real_value(v))) {
    double d = json_real_value(v);
    return d < 1 ? 1 : d > (double)max ? max : (int64_t)d; /* cast only inside [1, max] */
  }
  return dflt;
}

static tl_status request_code(device_grant *g, tl_store *s, const endpoints *e, tl_error *err)
{
  tl_status rc = TL_OK;
  const char *keys[] = {"client_id", "scope"}, *vals[] = {e->client_id, e->scope ? e->scope : ""};
  char *body = tl__oauth_form(2, keys, vals);
  json_t *j = NULL;
  tl_http_response resp;
  memset(&resp, 0, sizeof resp);
  if (!body)
    return tl__oom(err);
  post(&resp, s, e->device_url, body);
  free(body);
  if (resp.failure != TL_HTTP_DONE) {
    rc = tl__err(err, TL_ETRANSIENT, 0, "%s: %s", e->device_url, resp.detail);
    goto done;
  }
  j = resp.body ? json_loadb(resp.body, resp.body_len, JSON_REJECT_DUPLICATES, NULL) : NULL;
  g->device_code = shown_field(j, "device_code", 4096);
  g->user_code = shown_field(j, "user_code", 64);
  g->uri = shown_field(j, "verification_uri", 2048);
  g->uri_complete = shown_field(j, "verification_uri_complete", 2048);
  if (resp.status != 200 || !json_is_object(j) || !g->device_code || !g->user_code || !g->uri) {
    rc = tl__err(err, TL_ERROR, 0,
                 "%s answered HTTP %ld without a usable device code, user code and verification URI (printable "
                 "text, a JSON object without duplicate keys)",
                 e->device_url, resp.status >= 100 && resp.status <= 599 ? resp.status : 0);
    goto done;
  }
  g->expires_in = bounded_seconds(json_object_get(j, "expires_in"), 600, DEVICE_LIFETIME_MAX_S);
  g->interval = (long)bounded_seconds(json_object_get(j, "interval"), 1, DEVICE_INTERVAL_MAX_S);
done:
  json_decref(j);
  tl__http_response_clear(&resp);
  return rc;
}

/* The poll body: the device code goes in form-encoded; the result is a secret. */
static char *poll_body(const endpoints *e, const device_grant *g)
{
  const char *keys[] = {"grant_type", "client_id", "device_code"};
  const char *vals[] = {TL_GRANT_DEVICE_CODE, e->client_id, g->device_code};
  return tl__oauth_form(3, keys, vals);
}

/* Polls until the user approved (TL_OK with a usable answer in *a), refused, or the code expired. */
static tl_status wait_for_approval(tl__answer *a, tl_store *s, const endpoints *e, device_grant *g, tl_error *err)
{
  char *body = poll_body(e, g);
  tl_status rc = TL_OK;
  if (!body)
    return tl__oom(err);
  int64_t deadline = tl__now_ms() + g->expires_in * 1000;
  long interval = g->interval;
  for (;;) {
    if (tl__now_ms() > deadline) {
      rc = tl__err(err, TL_ETRANSIENT, 0, "timed out waiting for device authorization at %s", e->device_url);
      break;
    }
    pause_s(interval);
    tl_http_response resp;
    post(&resp, s, e->token_url, body);
    tl__answer_clear(a);
    tl__answer_parse(a, &resp, g->device_code);
    tl__http_response_clear(&resp);
    if (a->kind == TL__A_NOT_SENT || (a->kind == TL__A_UNKNOWN && !a->raw && a->status == 0))
      continue; /* the device code survives a network hiccup */
    if (a->kind == TL__A_ROTATED && !a->at_unusable)
      break;
    if (a->status == 200) {
      rc = tl__err(err, TL_ERROR, 0, "%s: the login answer has no usable refresh and access token (%s)", e->token_url,
                   a->desc ? a->desc : "missing or not printable");
      break;
    }
    if (a->error && strcmp(a->error, "authorization_pending") == 0)
      continue;
    if (a->error && strcmp(a->error, "slow_down") == 0) {
      if (interval < DEVICE_INTERVAL_MAX_S)
        interval++;
      continue;
    }
    if (a->status == 408 || a->kind == TL__A_TRANSIENT) {
      if (a->retry_after > 0)
        pause_s(a->retry_after > 60 ? 60 : a->retry_after);
      continue;
    }
    rc = tl__err(err, TL_EREAUTH, 0, "device authorization failed: HTTP %ld %s%s%s", a->status,
                 a->error ? a->error : "", a->desc ? ": " : "", a->desc ? a->desc : "");
    break;
  }
  tl_burn(body, strlen(body));
  free(body);
  return rc;
}

/*
 * A new login replaces the profile's dead entries for the provider (only: that
 * credential's, or any dead one's when 0): the new grant takes the first one's
 * entry id and priority (so Hermes' pool row keeps its id), its places and its
 * label; the dead entries leave the pool (their lineage stays).
 */
static tl_status replace_dead(tl_store *s, int64_t profile, const char *provider, int64_t cred, int64_t only,
                              tl_error *err)
{
  static const char dead_sql[] =
      "SELECT e.id, e.entry_id, e.priority, e.credential_id FROM pool_entry e JOIN credential c ON c.id = "
      "e.credential_id WHERE e.profile_id = :p AND e.provider = :prov AND e.credential_id <> :new AND c.status = "
      "'needs_reauth' AND (:only = 0 OR c.id = :only) ORDER BY e.entry_id LIKE 'providers.%', e.priority, e.id";
  static const char del_sql[] = "DELETE FROM pool_entry WHERE profile_id = :p AND provider = :prov AND "
                                "credential_id = :old";
  static const char take_sql[] = "UPDATE pool_entry SET entry_id = :entry, priority = :prio WHERE profile_id = :p AND "
                                 "provider = :prov AND credential_id = :new";
  /* The profile's places, and a shared store that held the dead grant (Hermes mirrors a new login there). */
  static const char place_sql[] = "UPDATE grant_place SET credential_id = :new, updated_at = :now WHERE (profile_id = "
                                  ":p OR profile_id IS NULL) AND credential_id = :old";
  tl_status rc = tl__tx_begin(s, "login replaces", err);
  if (rc != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, dead_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":p", profile), TL_TEXT(":prov", provider), TL_INT(":new", cred),
                    TL_INT(":only", only))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "login replaces", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    tl__tx_rollback(s);
    return TL_OK; /* nothing to replace */
  }
  char entry[80];
  snprintf(entry, sizeof entry, "%s", (const char *)sqlite3_column_text(st, 1));
  int64_t prio = sqlite3_column_int64(st, 2), old = sqlite3_column_int64(st, 3);
  sqlite3_reset(st);
  const char *sqls[] = {del_sql, take_sql, place_sql};
  for (size_t i = 0; i < 3; i++) {
    if ((rc = tl__prepare(&st, s, sqls[i], err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":p", profile))) != TL_OK ||
        (i < 2 && (rc = TL_BIND(st, err, TL_TEXT(":prov", provider))) != TL_OK) ||
        (i != 1 && (rc = TL_BIND(st, err, TL_INT(":old", old))) != TL_OK) ||
        (i && (rc = TL_BIND(st, err, TL_INT(":new", cred))) != TL_OK) ||
        (i == 1 && (rc = TL_BIND(st, err, TL_TEXT(":entry", entry), TL_INT(":prio", prio))) != TL_OK) ||
        (i == 2 && (rc = TL_BIND(st, err, TL_INT(":now", tl__now_ms()))) != TL_OK) ||
        (rc = tl__step_done(s, st, "login replaces", err)) != TL_OK)
      goto fail;
  }
  /* The account is the same one logged in again: the new grant keeps the dead one's label. */
  if ((rc = TL_Q_EXEC(s,
                      "UPDATE credential SET label = coalesce(label, (SELECT label FROM credential WHERE id = :old)) "
                      "WHERE id = :new",
                      "login replaces", err, TL_INT(":old", old), TL_INT(":new", cred))) != TL_OK ||
      (rc = TL_Q_EXEC(s,
                      "UPDATE pool_entry SET label = coalesce(label, (SELECT label FROM credential WHERE id = :new)) "
                      "WHERE credential_id = :new AND profile_id = :p",
                      "login replaces", err, TL_INT(":new", cred), TL_INT(":p", profile))) != TL_OK)
    goto fail;
  tl__ids ids = {.profile = profile, .credential = cred};
  if ((rc = tl__audit(s, "entry_replaced", &ids,
                      json_pack("{s:s, s:s, s:I, s:I}", "provider", provider, "entry", entry, "dead_credential",
                                (json_int_t)old, "credential", (json_int_t)cred),
                      err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

/* The profile's Hermes files get the new grant at once (its home, siblings, the shared store). */
static tl_status reach_files(tl_store *s, const char *profile, tl_error *err)
{
  static const char sql[] = "SELECT home IS NOT NULL FROM profile WHERE name = :n";
  sqlite3_stmt *st;
  tl_status src;
  int found = 0;
  if ((src = tl__prepare(&st, s, sql, err)) != TL_OK || (src = TL_BIND(st, err, TL_TEXT(":n", profile))) != TL_OK ||
      (src = tl__step_row(&found, s, st, "login", err)) != TL_OK)
    return src;
  int home = found && sqlite3_column_int(st, 0);
  sqlite3_reset(st);
  if (!home)
    return TL_OK;
  tl_report *r = NULL;
  tl_status rc = tl_sync(&r, s, profile, err);
  tl_report_free(r);
  if (rc != TL_OK && err) {
    size_t l = strlen(err->message);
    snprintf(err->message + l, sizeof err->message - l,
             " (the new grant is stored, but profile %s's Hermes files were not updated)", profile);
  }
  return rc;
}

/* The device flow itself: code, prompt, approval; *a holds the answer's tokens (secrets) on TL_OK. */
static tl_status device_login(tl__answer *a, tl_store *s, const char *provider, tl_login_prompt prompt, void *ud,
                              tl_error *err)
{
  endpoints e = {0};
  device_grant g = {0};
  tl_status rc;
  if ((rc = tl__device_endpoints_load(&e, s, provider, err)) == TL_OK && (rc = request_code(&g, s, &e, err)) == TL_OK) {
    if (prompt)
      prompt(ud, g.uri, g.uri_complete, g.user_code, (int)g.expires_in);
    rc = wait_for_approval(a, s, &e, &g, err);
  }
  device_grant_clear(&g);
  tl__device_endpoints_clear(&e);
  return rc;
}

tl_status tl_login(int64_t *out, tl_store *s, const char *profile, const char *provider, tl_login_prompt prompt,
                   void *ud, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc = TL_OK;
  tl__answer a;
  memset(&a, 0, sizeof a);
  int64_t pid;
  if (!s || !profile || !provider)
    return tl__err(err, TL_EINVAL, 0, "login: profile and provider are required");
  if ((rc = tl__profile_id(&pid, s, profile, err)) != TL_OK ||
      (rc = device_login(&a, s, provider, prompt, ud, err)) != TL_OK)
    goto done;
  tl_credential_spec spec = {.provider = provider,
                             .profile = profile,
                             .refresh_token = a.refresh_token,
                             .access_token = a.access_token,
                             .expires_at_ms = a.expires_at,
                             .origin = "login",
                             .source = "device_code"};
  int64_t cred = 0;
  rc = tl_credential_add(&cred, s, &spec, err);
  if (rc == TL_OK && out)
    *out = cred;
  if (rc == TL_OK)
    rc = replace_dead(s, pid, provider, cred, 0, err);
  if (rc == TL_OK)
    rc = reach_files(s, profile, err);
done:
  tl__answer_clear(&a);
  return rc;
}

/*
 * login --credential: the dead grant's every use moves to the new one in one transaction: the first profile's
 * entries as a profile's own login replaces them (replace_dead), every other profile's entries keep their id,
 * priority and label and now name the new grant, and every place (a singleton, a shared store) follows.
 */
static tl_status replace_everywhere(tl_store *s, int64_t first, const char *provider, int64_t old, int64_t cred,
                                    tl_error *err)
{
  static const char entries_sql[] = "UPDATE pool_entry SET credential_id = :new WHERE credential_id = :old";
  static const char places_sql[] =
      "UPDATE grant_place SET credential_id = :new, updated_at = :now WHERE credential_id = :old";
  static const char who_sql[] =
      "SELECT group_concat(name, ',') FROM (SELECT DISTINCT p.name AS name FROM pool_entry e JOIN profile p ON p.id "
      "= e.profile_id WHERE e.credential_id = :old ORDER BY p.name)";
  tl_status rc = replace_dead(s, first, provider, cred, old, err);
  if (rc != TL_OK || (rc = tl__tx_begin(s, "login replaces", err)) != TL_OK)
    return rc;
  char *who = NULL;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, who_sql, err)) == TL_OK && (rc = TL_BIND(st, err, TL_INT(":old", old))) == TL_OK &&
      (rc = tl__step_row(&found, s, st, "login replaces", err)) == TL_OK && found) {
    who = tl__col_dup(st, 0);
    sqlite3_reset(st);
  }
  if (rc == TL_OK)
    rc = TL_Q_EXEC(s, entries_sql, "login replaces", err, TL_INT(":new", cred), TL_INT(":old", old));
  if (rc == TL_OK)
    rc = TL_Q_EXEC(s, places_sql, "login replaces", err, TL_INT(":new", cred), TL_INT(":old", old),
                   TL_INT(":now", tl__now_ms()));
  tl__ids ids = {.credential = cred};
  if (rc == TL_OK)
    rc = tl__audit(s, "credential_replaced", &ids,
                   json_pack("{s:s, s:I, s:I, s:s?}", "provider", provider, "dead_credential", (json_int_t)old,
                             "credential", (json_int_t)cred, "other_profiles", who),
                   err);
  free(who);
  if (rc == TL_OK)
    return tl__tx_commit(s, err);
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_login_replace(int64_t *out, tl_store *s, int64_t dead, tl_login_prompt prompt, void *ud, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT c.provider, c.label, c.status, (SELECT p.name FROM profile p WHERE EXISTS (SELECT 1 FROM pool_entry e "
      "WHERE e.profile_id = p.id AND e.credential_id = c.id) OR EXISTS (SELECT 1 FROM grant_place g WHERE "
      "g.profile_id = p.id AND g.credential_id = c.id) ORDER BY p.name = 'default' DESC, p.name LIMIT 1) FROM "
      "credential c WHERE c.id = :c";
  char provider[130] = "", label[512] = "", status[16] = "", first[80] = "";
  int has_label = 0, found = 0;
  sqlite3_stmt *st;
  tl_status rc;
  if (!s || dead <= 0)
    return tl__err(err, TL_EINVAL, 0, "login: a credential id is required");
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", dead))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "login", err)) != TL_OK)
    return rc;
  if (found) {
    snprintf(provider, sizeof provider, "%s", (const char *)sqlite3_column_text(st, 0));
    has_label = sqlite3_column_text(st, 1) != NULL;
    if (has_label)
      snprintf(label, sizeof label, "%s", (const char *)sqlite3_column_text(st, 1));
    snprintf(status, sizeof status, "%s", (const char *)sqlite3_column_text(st, 2));
    if (sqlite3_column_text(st, 3))
      snprintf(first, sizeof first, "%s", (const char *)sqlite3_column_text(st, 3));
    sqlite3_reset(st);
  }
  if (!found)
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)dead);
  if (strcmp(status, "uncertain") == 0)
    return tl__err(err, TL_EUNKNOWN, 0,
                   "credential %lld: its last refresh has an unknown outcome, so the grant may still be live; not "
                   "replaced",
                   (long long)dead);
  if (strcmp(status, "needs_reauth") != 0)
    return tl__err(err, TL_EINVAL, 0,
                   "credential %lld (%s%s%s) is live: a login replaces only a grant that needs one; not replaced",
                   (long long)dead, provider, has_label ? ", " : "", label);
  if (!*first)
    return tl__err(err, TL_EINVAL, 0, "credential %lld (%s) is used by no profile any more; nothing to replace",
                   (long long)dead, provider);
  tl__answer a;
  memset(&a, 0, sizeof a);
  if ((rc = device_login(&a, s, provider, prompt, ud, err)) == TL_OK) {
    tl_credential_spec spec = {.provider = provider,
                               .profile = first,
                               .refresh_token = a.refresh_token,
                               .access_token = a.access_token,
                               .expires_at_ms = a.expires_at,
                               .label = has_label ? label : NULL,
                               .origin = "login",
                               .source = "device_code"};
    int64_t cred = 0;
    rc = tl_credential_add(&cred, s, &spec, err);
    if (rc == TL_OK && out)
      *out = cred;
    int64_t pid = 0;
    if (rc == TL_OK && (rc = tl__profile_id(&pid, s, first, err)) == TL_OK)
      rc = replace_everywhere(s, pid, provider, dead, cred, err);
    if (rc == TL_OK && (rc = tl__sync_credential(s, cred, err)) != TL_OK && err) {
      size_t l = strlen(err->message);
      snprintf(err->message + l, sizeof err->message - l,
               " (the new grant is stored as credential %lld in place of %lld, but Hermes' files were not updated)",
               (long long)cred, (long long)dead);
    }
  }
  tl__answer_clear(&a);
  return rc;
}
