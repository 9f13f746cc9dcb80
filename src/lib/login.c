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
 * Invariants: the device code and the tokens are burned after use and never
 * reach a message.
 */
#include "internal.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void pause_s(long s)
{
  struct timespec ts = {s, 0};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

static tl_status post(json_t **out, long *status, long *retry_after, tl_store *s, const char *url, const char *body,
                      tl_error *err)
{
  tl_http_response resp;
  memset(&resp, 0, sizeof resp);
  resp.retry_after = -1;
  tl_http_request req = {.url = url, .body = body, .connect_timeout_ms = 5000, .timeout_ms = s->http_timeout_ms};
  s->http(s->http_ud, &req, &resp);
  *out = NULL;
  *status = resp.status;
  *retry_after = resp.retry_after;
  tl_status rc = TL_OK;
  if (resp.failure != TL_HTTP_DONE)
    rc = tl__err(err, TL_ETRANSIENT, 0, "%s: %s", url, resp.detail);
  else if (resp.body)
    *out = json_loadb(resp.body, resp.body_len, 0, NULL);
  tl__http_response_clear(&resp);
  return rc;
}

/*
 * A new login replaces the profile's dead entries for the provider: the new
 * grant takes the first one's entry id and priority (so Hermes' pool row keeps
 * its id) and its places; the dead entries leave the pool (their lineage stays).
 */
static tl_status replace_dead(tl_store *s, int64_t profile, const char *provider, int64_t cred, tl_error *err)
{
  static const char dead_sql[] =
      "SELECT e.id, e.entry_id, e.priority, e.credential_id FROM pool_entry e JOIN credential c ON c.id = "
      "e.credential_id WHERE e.profile_id = :p AND e.provider = :prov AND e.credential_id <> :new AND c.status = "
      "'needs_reauth' ORDER BY e.entry_id LIKE 'providers.%', e.priority, e.id";
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
      (rc = TL_BIND(st, err, TL_INT(":p", profile), TL_TEXT(":prov", provider), TL_INT(":new", cred))) != TL_OK ||
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
             " (the new grant is stored; 'tokenledger sync --profile %s' writes it into Hermes' files)", profile);
  }
  return rc;
}

tl_status tl_login(int64_t *out, tl_store *s, const char *profile, const char *provider, tl_login_prompt prompt,
                   void *ud, tl_error *err)
{
  tl_error_clear(err);
  static const char prov_sql[] = "SELECT token_url, device_url, client_id, scope FROM provider WHERE name = :n";
  tl_status rc = TL_OK;
  char *token_url = NULL, *device_url = NULL, *client_id = NULL, *scope = NULL, *body = NULL;
  json_t *j = NULL;
  int64_t pid;
  if (!s || !profile || !provider)
    return tl__err(err, TL_EINVAL, 0, "login: profile and provider are required");
  if ((rc = tl__profile_id(&pid, s, profile, err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":n", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "login", err)) != TL_OK)
    return rc;
  if (found) {
    token_url = tl__col_dup(st, 0);
    device_url = tl__col_dup(st, 1);
    client_id = tl__col_dup(st, 2);
    scope = tl__col_dup(st, 3);
  }
  sqlite3_reset(st);
  if (!token_url || !device_url || !client_id) {
    rc = tl__err(err, TL_ENOTFOUND, 0,
                 "provider '%s' has no device authorization endpoint, token endpoint or client id; see 'tokenledger "
                 "provider set --help'",
                 provider);
    goto done;
  }
  char *cid = curl_easy_escape(NULL, client_id, 0), *sc = curl_easy_escape(NULL, scope ? scope : "", 0);
  size_t n = strlen(cid) + strlen(sc) + 32;
  body = malloc(n);
  if (body)
    snprintf(body, n, "client_id=%s&scope=%s", cid, sc);
  curl_free(sc);
  if (!body) {
    curl_free(cid);
    rc = tl__oom(err);
    goto done;
  }
  long status = 0, retry = -1;
  rc = post(&j, &status, &retry, s, device_url, body, err);
  free(body);
  body = NULL;
  if (rc != TL_OK) {
    curl_free(cid);
    goto done;
  }
  json_t *dc = json_object_get(j, "device_code"), *uc = json_object_get(j, "user_code");
  if (status != 200 || !json_is_string(dc) || !json_is_string(uc)) {
    curl_free(cid);
    rc = tl__err(err, TL_ERROR, 0, "%s answered HTTP %ld without a device code", device_url, status);
    goto done;
  }
  int64_t expires =
      json_is_integer(json_object_get(j, "expires_in")) ? json_integer_value(json_object_get(j, "expires_in")) : 600;
  long interval =
      json_is_integer(json_object_get(j, "interval")) ? (long)json_integer_value(json_object_get(j, "interval")) : 1;
  if (interval < 1)
    interval = 1;
  if (prompt)
    prompt(ud, json_string_value(json_object_get(j, "verification_uri")),
           json_string_value(json_object_get(j, "verification_uri_complete")), json_string_value(uc), (int)expires);
  char *dce = curl_easy_escape(NULL, json_string_value(dc), 0);
  n = strlen(cid) + strlen(dce) + 128;
  body = malloc(n);
  if (body)
    snprintf(body, n,
             "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Adevice_code&client_id=%s&device_code=%s", cid,
             dce);
  tl_burn(dce, strlen(dce));
  curl_free(dce);
  curl_free(cid);
  json_decref(j);
  j = NULL;
  if (!body) {
    rc = tl__oom(err);
    goto done;
  }
  int64_t deadline = tl__now_ms() + expires * 1000;
  for (;;) {
    if (tl__now_ms() > deadline) {
      rc = tl__err(err, TL_ETRANSIENT, 0, "timed out waiting for device authorization at %s", device_url);
      goto done;
    }
    pause_s(interval);
    json_decref(j);
    j = NULL;
    tl_error net = {0};
    if (post(&j, &status, &retry, s, token_url, body, &net) != TL_OK)
      continue; /* the device code survives a network hiccup */
    const char *e = json_string_value(json_object_get(j, "error"));
    if (status == 200) {
      const char *rt = json_string_value(json_object_get(j, "refresh_token"));
      const char *at = json_string_value(json_object_get(j, "access_token"));
      if (!rt || !at) {
        rc = tl__err(err, TL_ERROR, 0, "%s: the login answer has no refresh token", token_url);
        goto done;
      }
      json_t *ei = json_object_get(j, "expires_in");
      int64_t exp = json_is_integer(ei) ? tl__now_ms() + (int64_t)json_integer_value(ei) * 1000 : tl__jwt_exp_ms(at);
      tl_credential_spec spec = {.provider = provider,
                                 .profile = profile,
                                 .refresh_token = rt,
                                 .access_token = at,
                                 .expires_at_ms = exp,
                                 .origin = "login",
                                 .source = "device_code"};
      int64_t cred = 0;
      rc = tl_credential_add(&cred, s, &spec, err);
      if (rc == TL_OK && out)
        *out = cred;
      if (rc == TL_OK)
        rc = replace_dead(s, pid, provider, cred, err);
      if (rc == TL_OK)
        rc = reach_files(s, profile, err);
      goto done;
    }
    if (e && strcmp(e, "authorization_pending") == 0)
      continue;
    if (e && strcmp(e, "slow_down") == 0) {
      if (interval < 30)
        interval++;
      continue;
    }
    if (status == 408 || status == 429 || status >= 500) {
      if (retry > 0)
        pause_s(retry > 60 ? 60 : retry);
      continue;
    }
    rc = tl__err(err, TL_EREAUTH, 0, "device authorization failed: HTTP %ld %s%s%s", status, e ? e : "",
                 json_string_value(json_object_get(j, "error_description")) ? ": " : "",
                 json_string_value(json_object_get(j, "error_description"))
                     ? json_string_value(json_object_get(j, "error_description"))
                     : "");
    goto done;
  }
done:
  if (body) {
    tl_burn(body, strlen(body));
    free(body);
  }
  json_decref(j);
  free(token_url);
  free(device_url);
  free(client_id);
  free(scope);
  return rc;
}
