/*
 * test_refresh.c - the refresh protocol through the HTTP seam with canned
 * answers. Every behaviour here is also exercised end to end against the
 * real loopback portal in tests/e2e/.
 */
#include "fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct canned {
  struct {
    tl_http_failure failure;
    long status;
    const char *body;
    long retry_after;
  } r[8];
  int n, calls;
  char body[1024], hdr_name[64], hdr_value[256];
  tl_store *readonly_after; /* if set: the ledger stops taking writes once the answer is in (a full/read-only disk) */
} canned;

static int fake(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  canned *c = ud;
  assert_true(c->calls < c->n);
  snprintf(c->body, sizeof c->body, "%s", req->body);
  snprintf(c->hdr_name, sizeof c->hdr_name, "%s", req->rt_header ? req->rt_header : "");
  snprintf(c->hdr_value, sizeof c->hdr_value, "%s", req->rt_value ? req->rt_value : "");
  resp->failure = c->r[c->calls].failure;
  resp->status = c->r[c->calls].status;
  resp->retry_after = c->r[c->calls].retry_after ? c->r[c->calls].retry_after : -1;
  if (c->r[c->calls].body) {
    resp->body = strdup(c->r[c->calls].body);
    resp->body_len = strlen(resp->body);
  }
  snprintf(resp->detail, sizeof resp->detail, "canned failure");
  c->calls++;
  if (c->readonly_after)
    assert_int_equal(fx_sql(c->readonly_after, "PRAGMA query_only = 1"), SQLITE_OK);
  return 0;
}

#define OK_ROTATE(rt) "{\"access_token\":\"at-" rt "\",\"refresh_token\":\"" rt "\",\"expires_in\":3600}"

static void add(canned *c, tl_http_failure fl, long status, const char *body, long retry_after)
{
  c->r[c->n].failure = fl;
  c->r[c->n].status = status;
  c->r[c->n].body = body;
  c->r[c->n].retry_after = retry_after;
  c->n++;
}

static tl_status get(fx *f, tl_token **t, tl_error *err)
{
  tl_error_clear(err);
  *t = NULL;
  return tl_token_get(t, f->s, "p", "nous", 0, err);
}

static void test_refresh__rotation_records_child_and_erases_parent(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-0");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(get(f, &t, &err), TL_OK);
  assert_string_equal(t->access_token, "at-rt-1");
  assert_true(t->refreshed);
  assert_true(t->expires_at_ms > tl__now_ms() + 3500000);
  tl_token_free(t);
  /* Nous: the RT travels in the header, not the body */
  assert_string_equal(c.hdr_name, "x-nous-refresh-token");
  assert_string_equal(c.hdr_value, "rt-0");
  assert_null(strstr(c.body, "rt-0"));
  assert_non_null(strstr(c.body, "grant_type=refresh_token"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE generation = 0 AND state = 'rotated' "
                                "AND secret IS NULL"),
                   1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE generation = 1 AND state = 'current' "
                                "AND parent_id = 1 AND family_id = 1 AND origin = 'refresh'"),
                   1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated' AND child_rt_id = 2 "
                                "AND http_status = 200"),
                   1);
  /* a fresh token is served without the network */
  assert_int_equal(get(f, &t, &err), TL_OK);
  assert_false(t->refreshed);
  tl_token_free(t);
  assert_int_equal(c.calls, 1);
}

static void test_refresh__rt_in_body_when_provider_says_so(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-b1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  tl_error err = {0};
  tl_provider p = {.name = "nous", .rt_header = "", .skew_s = -1, .grace_s = -1};
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
  fx_credential(f->s, "p", "rt b+0");
  tl_token *t = NULL;
  assert_int_equal(get(f, &t, &err), TL_OK);
  tl_token_free(t);
  assert_string_equal(c.hdr_name, "");
  assert_non_null(strstr(c.body, "refresh_token=rt%20b%2B0")); /* form-encoded by libcurl */
}

static void test_refresh__answer_without_rt_keeps_the_current_one(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, "{\"access_token\":\"at-x\",\"expires_in\":60}", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-keep");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_OK);
  tl_token_free(t);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'current' AND secret IS NOT NULL"),
                   1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 1);
}

static void test_refresh__reuse_answer_needs_reauth_and_names_outside_process(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 400, "{\"error\":\"invalid_grant\",\"error_description\":\"Refresh token reuse detected\"}", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-stolen");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(get(f, &t, &err), TL_EREAUTH);
  assert_non_null(strstr(err.message, "Refresh token reuse detected"));
  assert_non_null(strstr(err.message, "outside tokenledger"));
  assert_non_null(strstr(err.message, "needs a new login"));
  assert_null(strstr(err.message, "rt-stolen"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'rejected' AND secret IS NULL"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'needs_reauth'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM v_reuse_events WHERE event = 'reuse_detected_by_server'"), 1);
  /* the next call fails fast, without the network */
  assert_int_equal(get(f, &t, &err), TL_EREAUTH);
  assert_int_equal(c.calls, 1);
}

static void test_refresh__429_cools_down_and_does_not_spend_the_rt(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 429, "{\"error\":\"rate_limited\"}", 30);
  add(&c, TL_HTTP_DONE, 500, "oops", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-busy");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(get(f, &t, &err), TL_ETRANSIENT);
  assert_non_null(strstr(err.message, "429"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'current'"), 1);
  int64_t cool = fx_int(f->s, "SELECT refresh_not_before FROM credential");
  assert_true(cool > tl__now_ms() + 25000 && cool < tl__now_ms() + 35000);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry WHERE last_status = 'exhausted' AND "
                                "last_error_code = 429"),
                   1);
  /* during the backoff nothing is sent */
  assert_int_equal(get(f, &t, &err), TL_ETRANSIENT);
  assert_non_null(strstr(err.message, "back off"));
  assert_int_equal(c.calls, 1);
  /* but a valid access token is still served */
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at-ok', expires_at = 9999999999999"), SQLITE_OK);
  assert_int_equal(get(f, &t, &err), TL_OK);
  tl_token_free(t);
  /* a forced refresh after the backoff: 500 is transient too */
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET refresh_not_before = NULL"), SQLITE_OK);
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_ETRANSIENT);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'transient'"), 2);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'current'"), 1);
}

static void test_refresh__not_sent_keeps_rt_and_may_retry(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_NOT_SENT, 0, NULL, 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-ns1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-ns0");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(get(f, &t, &err), TL_ETRANSIENT);
  assert_non_null(strstr(err.message, "not sent"));
  assert_int_equal(get(f, &t, &err), TL_OK);
  tl_token_free(t);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'not_sent'"), 1);
}

static void test_refresh__lost_answer_is_unknown_and_never_replayed(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-lost");
  tl_token *t = NULL;
  tl_error err = {0};
  assert_int_equal(get(f, &t, &err), TL_EUNKNOWN);
  assert_non_null(strstr(err.message, "not presented again automatically"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'unknown'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'uncertain'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM v_open_attempts WHERE outcome = 'unknown'"), 1);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(get(f, &t, &err), TL_EUNKNOWN);
    assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  }
  assert_int_equal(c.calls, 1);
  /* bytes left and no answer came: the request may have arrived, so a retry may be reuse */
  tl_sent sent = TL_SENT_NOTHING;
  assert_int_equal(tl_unknown_sent(&sent, f->s, 1, &err), TL_OK);
  assert_int_equal(sent, TL_SENT_MAYBE);
}

static void test_refresh__unknown_outcome_still_serves_a_valid_access_token(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-u");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at-still', expires_at = 9999999999999"),
                   SQLITE_OK);
  assert_int_equal(get(f, &t, &err), TL_OK);
  assert_string_equal(t->access_token, "at-still");
  tl_token_free(t);
}

static void test_refresh__recover_retry_presents_once_more(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-r1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-r0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RETRY, &err), TL_OK);
  assert_string_equal(t->access_token, "at-rt-r1");
  tl_token_free(t);
  assert_string_equal(c.hdr_value, "rt-r0");
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'active'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'rt_represented'"), 1);
  /* nothing left to recover */
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RETRY, &err), TL_EINVAL);
  tl_sent sent;
  assert_int_equal(tl_unknown_sent(&sent, f->s, 1, &err), TL_EINVAL);
}

static long wal_size(const fx *f)
{
  char wal[320];
  struct stat st;
  snprintf(wal, sizeof wal, "%s-wal", f->path);
  return stat(wal, &st) == 0 ? (long)st.st_size : -1;
}

/* 1 if the file holds the text anywhere, as raw bytes. */
static int file_holds(const char *path, const char *text)
{
  size_t len = 0;
  char *buf = fx_slurp(path, &len);
  int found = 0;
  for (size_t i = 0; buf && i + strlen(text) <= len && !found; i++)
    found = memcmp(buf + i, text, strlen(text)) == 0;
  free(buf);
  return found;
}

static void test_refresh__a_rotation_leaves_its_spent_tokens_nowhere_on_disk(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-w1"), 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-w2"), 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-w3"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-spent-w0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_OK);
  tl_token_free(t);
  /* the commit that erased rt-spent-w0 emptied the WAL; the file keeps no trace of it (secure_delete) */
  assert_int_equal(wal_size(f), 0);
  assert_false(file_holds(f->path, "rt-spent-w0"));
  assert_true(file_holds(f->path, "rt-w1"));
  /* a reader that keeps the WAL in use: the scrub waits (the spent token is still in the WAL) ... */
  sqlite3 *r = NULL;
  assert_int_equal(sqlite3_open_v2(f->path, &r, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_exec(r, "BEGIN; SELECT count(*) FROM credential;", NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_OK);
  tl_token_free(t);
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_OK);
  tl_token_free(t);
  char wal[320];
  snprintf(wal, sizeof wal, "%s-wal", f->path);
  assert_true(wal_size(f) > 0);
  assert_true(file_holds(wal, "rt-w1") || file_holds(f->path, "rt-w1"));
  /* ... and the end of a keep-fresh round, once the reader is gone, empties it */
  sqlite3_exec(r, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(r);
  tl_report *rep = NULL;
  int failures = 0;
  assert_int_equal(tl_keep_fresh(&rep, &failures, f->s, 0, 0, &err), TL_OK);
  tl_report_free(rep);
  assert_int_equal(wal_size(f), 0);
  assert_false(file_holds(f->path, "rt-w1"));
  assert_false(file_holds(f->path, "rt-w2"));
  assert_true(file_holds(f->path, "rt-w3"));
}

static void test_refresh__recover_mark_dead_requires_login(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-d0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(tl_recover(NULL, f->s, 1, TL_RECOVER_MARK_DEAD, &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'retired' AND secret IS NULL"), 1);
  assert_int_equal(get(f, &t, &err), TL_EREAUTH);
  assert_int_equal(c.calls, 1);
}

static void test_refresh__grace_window_allows_one_automatic_retry(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-g1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  tl_error err = {0};
  tl_provider p = {.name = "nous", .grace_s = 30, .skew_s = -1};
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
  fx_credential(f->s, "p", "rt-g0");
  tl_token *t = NULL;
  assert_int_equal(get(f, &t, &err), TL_OK);
  tl_token_free(t);
  assert_int_equal(c.calls, 2);
  /* and only one: a second loss stays unknown */
  canned d = {0};
  add(&d, TL_HTTP_LOST, 0, NULL, 0);
  add(&d, TL_HTTP_LOST, 0, NULL, 0);
  tl_store_set_transport(f->s, fake, &d);
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(d.calls, 2);
}

static void test_refresh__unreadable_200_is_unknown(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, "<html>proxy says hi</html>", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-h");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'unknown'"), 1);
  /* the server answered: it certainly received the token */
  tl_sent sent = TL_SENT_NOTHING;
  assert_int_equal(tl_unknown_sent(&sent, f->s, 1, &err), TL_OK);
  assert_int_equal(sent, TL_SENT_ANSWERED);
}

static void test_refresh__a_server_echoing_the_token_is_redacted(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 400, "{\"error\":\"invalid_grant\",\"error_description\":\"token rt-echo-SECRET was revoked\"}",
      0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-echo-SECRET");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EREAUTH);
  assert_null(strstr(err.message, "rt-echo-SECRET"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE error_description LIKE '%SECRET%'"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE detail LIKE '%SECRET%'"), 0);
}

static void test_refresh__client_error_is_not_terminal(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 401, "{\"error\":\"invalid_client\",\"error_description\":\"no such client\"}", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-c");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_ERROR);
  assert_non_null(strstr(err.message, "invalid_client"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'current'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'active'"), 1);
}

static void test_refresh__terminal_words_of_other_servers_are_terminal(void **state)
{
  fx *f = *state;
  static const char *const bodies[] = {
      "{\"error\":\"refresh_token_reused\",\"message\":\"Your refresh token has already been used\"}",
      "{\"error\":\"invalid_request\",\"error_description\":\"Refresh session has been revoked\"}",
      "{\"error\":\"invalid_grant\",\"error_description\":\"Stale token\"}",
  };
  for (int i = 0; i < 3; i++) {
    canned c = {0};
    add(&c, TL_HTTP_DONE, 400, bodies[i], 0);
    tl_store_set_transport(f->s, fake, &c);
    char prof[8], rt[16];
    snprintf(prof, sizeof prof, "q%d", i);
    snprintf(rt, sizeof rt, "rt-term-%d", i);
    int64_t id = fx_credential(f->s, prof, rt);
    tl_error err = {0};
    tl_token *t = NULL;
    assert_int_equal(tl_refresh(&t, f->s, id, TL_REFRESH_FORCE, &err), TL_EREAUTH);
  }
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'needs_reauth'"), 3);
}

static void test_refresh__strategies_pick_and_skip(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  fx_credential(f->s, "p", "rt-s1");
  fx_credential(f->s, "p", "rt-s2");
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at-' || id, expires_at = 9999999999999"),
                   SQLITE_OK);
  tl_token *t = NULL;
  assert_int_equal(get(f, &t, &err), TL_OK); /* fill_first: always the first */
  assert_string_equal(t->access_token, "at-1");
  tl_token_free(t);
  assert_int_equal(tl_strategy_set(f->s, "p", "nous", TL_ROUND_ROBIN, &err), TL_OK);
  const char *seen[4];
  for (int i = 0; i < 4; i++) {
    assert_int_equal(get(f, &t, &err), TL_OK);
    seen[i] = t->access_token[3] == '1' ? "1" : "2";
    tl_token_free(t);
  }
  assert_string_not_equal(seen[0], seen[1]);
  assert_string_equal(seen[0], seen[2]);
  assert_int_equal(tl_strategy_set(f->s, "p", "nous", TL_LEAST_USED, &err), TL_OK);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(get(f, &t, &err), TL_OK);
    tl_token_free(t);
  }
  assert_int_equal(fx_int(f->s, "SELECT max(request_count) - min(request_count) FROM pool_entry"), 0);
  /* an entry in cooldown is skipped */
  assert_int_equal(tl_strategy_set(f->s, "p", "nous", TL_FILL_FIRST, &err), TL_OK);
  char entry[16];
  sqlite3_stmt *st;
  sqlite3_prepare_v2(f->s->db, "SELECT entry_id FROM pool_entry WHERE credential_id = 1", -1, &st, NULL);
  sqlite3_step(st);
  snprintf(entry, sizeof entry, "%s", sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  assert_int_equal(tl_entry_report(f->s, "p", "nous", entry, 429, 0, &err), TL_OK);
  assert_int_equal(get(f, &t, &err), TL_OK);
  assert_string_equal(t->access_token, "at-2");
  tl_token_free(t);
  assert_int_equal(tl_entry_report(f->s, "p", "nous", "nope", 429, 0, &err), TL_ENOTFOUND);
  tl_strategy s;
  assert_int_equal(tl_strategy_parse(&s, "quota_aware", &err), TL_EINVAL);
}

static void test_refresh__compact_keeps_every_fingerprint(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-k1"), 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-k2"), 0);
  add(&c, TL_HTTP_LOST, 0, NULL, 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-k0");
  tl_error err = {0};
  tl_token *t = NULL;
  for (int i = 0; i < 3; i++) {
    tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err);
    tl_token_free(t);
    t = NULL;
    tl_error_clear(&err);
  }
  int64_t deleted = -1, before = 0, after = 0, audit = fx_int(f->s, "SELECT count(*) FROM audit_event");
  assert_int_equal(tl_compact(&deleted, &before, &after, f->s, 0, &err), TL_OK);
  assert_int_equal(deleted, 2); /* the two settled presentations of spent tokens */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 3);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'unknown'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event"), audit + 1);
  assert_true(after > 0);
}

static void test_refresh__no_credential_is_not_found(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  assert_int_equal(tl_profile_add(f->s, "p", NULL, &err), TL_OK);
  tl_token *t = NULL;
  assert_int_equal(get(f, &t, &err), TL_ENOTFOUND);
  assert_non_null(strstr(err.message, "no nous credential"));
  assert_int_equal(tl_token_get(&t, f->s, "ghost", "nous", 0, &err), TL_ENOTFOUND);
}

/* Path of the one rescue file of credential 1, or "" if none. */
static void rescue_of(fx *f, char *out, size_t n)
{
  char cmd[600];
  snprintf(cmd, sizeof cmd, "ls %s/ledger.db-rescue-1-* 2>/dev/null | head -n 1", f->dir);
  FILE *p = popen(cmd, "r");
  out[0] = '\0';
  if (p) {
    if (fgets(out, (int)n, p))
      out[strcspn(out, "\n")] = '\0';
    pclose(p);
  }
}

/* A 200 whose new RT is not VSCHAR: the server rotated, so nothing is guessed and nothing is lost. */
static void test_refresh__unusable_new_rt_is_unknown_and_kept_raw(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, "{\"access_token\":\"at-1\",\"refresh_token\":\"rt-1\\r\\nX-Evil: 1\",\"expires_in\":60}",
      0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_non_null(strstr(err.message, "not usable"));
  assert_non_null(strstr(err.message, "rescue"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE secret LIKE '%Evil%'"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'unknown'"), 1);
  char path[512];
  rescue_of(f, path, sizeof path);
  assert_true(path[0]);
  struct stat st;
  assert_int_equal(lstat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  size_t len = 0;
  char *text = fx_slurp(path, &len);
  assert_non_null(strstr(text, "raw_answer_base64")); /* the evidence, as received */
  free(text);
  /* never presented again, and --rescue cannot make a usable token of it */
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(c.calls, 1);
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RESCUE, &err), TL_EREAUTH);
  assert_int_equal(lstat(path, &st), 0); /* kept for inspection */
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RETRY, &err), TL_EREUSE); /* the server answered 200 */
}

/* A 200 with a usable new RT but an access token with control characters: rotation kept, token not stored. */
static void test_refresh__unusable_access_token_is_never_stored_or_served(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, "{\"access_token\":\"at\\u001b[2J\",\"refresh_token\":\"rt-a1\",\"expires_in\":3600}", 0);
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-a2"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-a0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(get(f, &t, &err), TL_ETRANSIENT);
  assert_null(t);
  assert_non_null(strstr(err.message, "access token"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'current' AND generation = 1"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE access_token IS NULL"), 1);
  /* a ledger that holds such a token anyway (older version, edited file) never serves it */
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at' || char(27) || '[2J', expires_at = "
                                "9999999999999"),
                   SQLITE_OK);
  assert_int_equal(get(f, &t, &err), TL_OK); /* refreshed instead */
  assert_string_equal(t->access_token, "at-rt-a2");
  tl_token_free(t);
  assert_int_equal(c.calls, 2);
}

/* expires_in from a server: never UB, never a past or negative expiry, never "refresh on every call". */
static void test_refresh__expires_in_is_range_checked(void **state)
{
  fx *f = *state;
  static const char *const hostile[] = {"1e300",
                                        "-3600",
                                        "0",
                                        "\"3600\"",
                                        "99999999999999999999",
                                        "1e18",
                                        "9223372036854775807",
                                        "-9223372036854775808",
                                        "null",
                                        "[]",
                                        "0.0001"};
  int64_t lo = tl__now_ms() + 890000, hi = tl__now_ms() + 910000 + 60000;
  for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
    char body[256], rt[32];
    snprintf(rt, sizeof rt, "rt-e%zu", i + 1);
    snprintf(body, sizeof body, "{\"access_token\":\"at-%zu\",\"refresh_token\":\"%s\",\"expires_in\":%s}", i, rt,
             hostile[i]);
    canned c = {0};
    add(&c, TL_HTTP_DONE, 200, body, 0);
    tl_store_set_transport(f->s, fake, &c);
    if (i == 0)
      fx_credential(f->s, "p", "rt-e0");
    tl_error err = {0};
    tl_token *t = NULL;
    if (tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err) != TL_OK)
      fail_msg("expires_in %s: %s", hostile[i], err.message);
    int64_t exp = t->expires_at_ms;
    tl_token_free(t);
    if (exp < lo || exp > hi)
      fail_msg("expires_in %s gave expiry %lld", hostile[i], (long long)exp);
    /* the next call is served from the ledger */
    assert_int_equal(get(f, &t, &err), TL_OK);
    assert_false(t->refreshed);
    tl_token_free(t);
    assert_int_equal(c.calls, 1);
  }
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'rt_rotated' AND "
                                "json_extract(detail, '$.expiry_assumed_s') = 900"),
                   (int64_t)(sizeof hostile / sizeof *hostile));
}

/* Duplicate keys: a 200 cannot be read (unknown), a 400 is no terminal verdict. */
static void test_refresh__duplicate_keys_are_not_read(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 400, "{\"error\":\"temporarily_unavailable\",\"error\":\"invalid_grant\"}", 0);
  add(&c, TL_HTTP_DONE, 200,
      "{\"access_token\":\"at-d\",\"refresh_token\":\"rt-d1\",\"refresh_token\":\"rt-d2\",\"expires_in\":60}", 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-d0");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_ERROR);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'active'"), 1);
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET refresh_not_before = NULL"), SQLITE_OK);
  tl_error_clear(&err);
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EUNKNOWN);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE fingerprint IN (SELECT fingerprint FROM "
                                "refresh_token WHERE generation > 0)"),
                   0);
}

/* Echoes of the RT in the server's text, plain, percent-encoded or in part, never reach a record or message. */
static void test_refresh__echoes_of_the_rt_in_any_form_are_redacted(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 400,
      "{\"error\":\"invalid_grant\",\"error_description\":\"bad refresh_token=rt%2Fecho%2BSECRET%3D%3D; "
      "prefix rt/echo+SE, tail ho+SECRET==, form rt%2fecho%2bSECRET%3d%3d\"}",
      0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt/echo+SECRET==");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EREAUTH);
  static const char *const pieces[] = {"SECRET", "echo", "%2Fecho", "%2fecho", "o+SE", "%3D%3D"};
  for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM refresh_attempt WHERE instr(error_description, '%s')", pieces[i]);
    if (strstr(err.message, pieces[i]) || fx_int(f->s, sql) != 0)
      fail_msg("'%s' survived: %s", pieces[i], err.message);
  }
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE instr(detail, 'SECRET')"), 0);
  assert_non_null(strstr(err.message, "bad refresh_token=")); /* the rest of what the server said stays */
}

/* Escape sequences from a server are shown escaped in messages and in history. */
static void test_refresh__server_text_is_shown_escaped(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 400,
      "{\"error\":\"invalid_grant\\u001b]0;owned\\u0007\",\"error_description\":\"\\u001b[2J\\u009b31m\\u202eevil\\r\\n"
      "Refresh token reuse detected\"}",
      0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-esc");
  tl_error err = {0};
  tl_token *t = NULL;
  assert_int_equal(tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err), TL_EREAUTH);
  for (const unsigned char *p = (const unsigned char *)err.message; *p; p++)
    assert_true(*p >= 0x20 && *p != 0x7f && !(p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f));
  assert_non_null(strstr(err.message, "\\u001b[2J"));
  assert_null(strstr(err.message, "\xe2\x80\xae"));
  tl_report *r = NULL;
  tl_error_clear(&err);
  assert_int_equal(tl_history_report(&r, f->s, 0, 0, &err), TL_OK);
  char *json = NULL;
  assert_int_equal(tl_report_json(&json, r, 0, &err), TL_OK);
  for (size_t row = 0; row < tl_report_rows(r); row++)
    for (size_t col = 0; col < tl_report_columns(r); col++)
      for (const unsigned char *p = (const unsigned char *)tl_report_cell(r, row, col); p && *p; p++)
        assert_true(*p >= 0x20 && *p != 0x7f);
  assert_null(strchr(json, 0x1b));
  assert_null(strstr(json, "\xc2\x9b"));
  free(json);
  tl_report_free(r);
  /* the ledger keeps what the server said, for forensics */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE instr(error_description, char(27))"), 1);
}

static void test_refresh__retry_after_and_status_are_bounded(void **state)
{
  (void)state;
  int64_t now = 1700000000000LL;
  assert_int_equal(tl__retry_after(" 30\r\n", now), 30);
  assert_int_equal(tl__retry_after("99999999999999999999999", now), 86400);
  assert_int_equal(tl__retry_after("-5", now), -1);
  assert_int_equal(tl__retry_after("3e2", now), -1);
  assert_int_equal(tl__retry_after("", now), -1);
  assert_int_equal(tl__retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), 0);
  assert_int_equal(tl__retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now), 86400);
  tl_http_response r = {.failure = TL_HTTP_DONE, .status = 999, .retry_after = -1};
  tl__answer a;
  tl__answer_parse(&a, &r, "rt");
  assert_int_equal(a.kind, TL__A_UNKNOWN);
  tl__answer_clear(&a);
  r.status = -7;
  tl__answer_parse(&a, &r, "rt");
  assert_int_equal(a.kind, TL__A_UNKNOWN);
  assert_int_equal(a.status, 0);
  tl__answer_clear(&a);
  r.status = 503;
  r.retry_after = 1L << 40;
  tl__answer_parse(&a, &r, "rt");
  assert_int_equal(a.kind, TL__A_TRANSIENT);
  assert_int_equal(a.retry_after, 86400);
  tl__answer_clear(&a);
}

/* The ledger cannot take the record (read-only, full): the rotation waits in the rescue file, recover takes it. */
static void test_refresh__rotation_that_cannot_be_recorded_is_rescued(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-s1"), 0);
  c.readonly_after = f->s;
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-s0");
  tl_error err = {0};
  tl_token *t = NULL;
  tl_status rc = tl_refresh(&t, f->s, 1, TL_REFRESH_FORCE, &err);
  assert_int_not_equal(rc, TL_OK);
  assert_null(t);
  assert_non_null(strstr(err.message, "the answer is kept in"));
  assert_null(strstr(err.message, "rt-s1"));
  char path[512];
  rescue_of(f, path, sizeof path);
  assert_true(path[0]);
  size_t len = 0;
  char *text = fx_slurp(path, &len);
  assert_non_null(strstr(text, "\"refresh_token\": \"rt-s1\""));
  free(text);
  assert_int_equal(fx_sql(f->s, "PRAGMA query_only = 0"), SQLITE_OK);
  /* until then the RT is not presented again */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'in_flight'"), 1);
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RESCUE, &err), TL_EBUSY); /* its process (us) is alive */
  /* the process that could not record exits: its attempt becomes unknown, and the answer can be taken back */
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_attempt SET owner_start = -1"), SQLITE_OK);
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RETRY, &err), TL_EREUSE); /* the server answered */
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RESCUE, &err), TL_OK);
  assert_string_equal(t->access_token, "at-rt-s1");
  tl_token_free(t);
  struct stat st;
  assert_int_not_equal(lstat(path, &st), 0); /* taken back and removed */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE generation = 1 AND state = 'current'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'"), 1);
  assert_int_equal(get(f, &t, &err), TL_OK);
  assert_false(t->refreshed);
  tl_token_free(t);
  assert_int_equal(c.calls, 1);
  tl_error_clear(&err);
  assert_int_equal(tl_recover(&t, f->s, 1, TL_RECOVER_RESCUE, &err), TL_ENOTFOUND);
}

/* Another process: runs one change to the ledger per byte read from in, answers on out when it is committed. */
static void other_process(const char *path, int in, int out)
{
  static const char *const changes[] = {
      /* 1: entry of credential 1 cooling down for an hour */
      "UPDATE pool_entry SET cooldown_until = CAST(strftime('%s','now') AS INTEGER) * 1000 + 3600000 "
      "WHERE credential_id = 1",
      /* 2: the cooldown lifted */
      "UPDATE pool_entry SET cooldown_until = NULL WHERE credential_id = 1",
      /* 3: a refresh elsewhere: a new access token for credential 1 */
      "UPDATE credential SET access_token = 'at-1-new' WHERE id = 1",
      /* 4: entry of credential 1 dead */
      "UPDATE pool_entry SET last_status = 'dead' WHERE credential_id = 1",
      /* 5: credential 2 needs a new login */
      "UPDATE credential SET status = 'needs_reauth' WHERE id = 2",
      /* 6: both alive again, and credential 1 re-logged in with another access token */
      "UPDATE pool_entry SET last_status = NULL; UPDATE credential SET status = 'active', "
      "access_token = 'at-1-relogin' WHERE id IN (1, 2); UPDATE credential SET access_token = 'at-2' WHERE id = 2",
      /* 7: round robin for the profile */
      "INSERT INTO pool_strategy (profile_id, provider, strategy) VALUES (1, 'nous', 'round_robin')",
  };
  tl_store *o = NULL;
  tl_error err = {0};
  if (tl_store_open(&o, path, 0, &err) != TL_OK)
    _exit(2);
  char k;
  while (read(in, &k, 1) == 1) {
    if (k < 1 || k > 7 || sqlite3_exec(o->db, changes[k - 1], NULL, NULL, NULL) != SQLITE_OK)
      _exit(3);
    if (write(out, &k, 1) != 1)
      _exit(4);
  }
  tl_store_free(o);
  _exit(0);
}

static const char *token_now(fx *f, char *buf, size_t n)
{
  tl_token *t = NULL;
  tl_error err = {0};
  tl_status rc = get(f, &t, &err);
  snprintf(buf, n, "%s", rc == TL_OK ? t->access_token : tl_status_name(rc));
  tl_token_free(t);
  return buf;
}

/*
 * The hot path keeps its answers between calls, and yet every change another process commits (a cooldown,
 * its end, a refresh, a dead entry, a credential needing a new login, a re-login, a strategy) is seen by the
 * very next call.
 */
static void test_refresh__hot_path_answers_follow_every_change_of_another_process(void **state)
{
  fx *f = *state;
  fx_credential(f->s, "p", "rt-h1");
  fx_credential(f->s, "p", "rt-h2");
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at-' || id, expires_at = 9999999999999"),
                   SQLITE_OK);
  char buf[64];
  assert_string_equal(token_now(f, buf, sizeof buf), "at-1");
  assert_string_equal(token_now(f, buf, sizeof buf), "at-1");
  assert_int_equal(f->s->tokens.used, 1); /* kept */
  int to[2], from[2];
  assert_int_equal(pipe(to), 0);
  assert_int_equal(pipe(from), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(to[1]);
    close(from[0]);
    other_process(f->path, to[0], from[1]);
  }
  close(to[0]);
  close(from[1]);
  static const char *const expect[] = {"at-2",         "at-1", "at-1-new", "at-2", "needs re-authentication",
                                       "at-1-relogin", NULL};
  for (char k = 1; k <= 7; k++) {
    char done = 0;
    assert_int_equal(write(to[1], &k, 1), 1);
    assert_int_equal(read(from[0], &done, 1), 1);
    assert_int_equal(done, k);
    if (expect[k - 1])
      assert_string_equal(token_now(f, buf, sizeof buf), expect[k - 1]);
  }
  /* round robin: the next two calls alternate (and write), as without any cache */
  char first[64], second[64];
  token_now(f, first, sizeof first);
  token_now(f, second, sizeof second);
  assert_string_not_equal(first, second);
  close(to[1]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(from[0]);
}

/* A kept answer ends on its own when the token stops being fresh or an earlier entry's cooldown ends. */
static void test_refresh__hot_path_answers_end_with_expiry_and_cooldown(void **state)
{
  fx *f = *state;
  canned c = {0};
  add(&c, TL_HTTP_DONE, 200, OK_ROTATE("rt-e1"), 0);
  tl_store_set_transport(f->s, fake, &c);
  fx_credential(f->s, "p", "rt-e0");
  fx_credential(f->s, "p", "rt-f0");
  int64_t now = tl__now_ms();
  char sql[256], buf[64];
  /* credential 1 cools down for 300 ms: credential 2 is the answer until then, then credential 1 again */
  snprintf(sql, sizeof sql,
           "UPDATE credential SET access_token = 'at-' || id, expires_at = 9999999999999; UPDATE pool_entry SET "
           "cooldown_until = %lld WHERE credential_id = 1",
           (long long)(now + 300));
  assert_int_equal(fx_sql(f->s, sql), SQLITE_OK);
  assert_string_equal(token_now(f, buf, sizeof buf), "at-2");
  assert_string_equal(token_now(f, buf, sizeof buf), "at-2");
  usleep(400000);
  assert_string_equal(token_now(f, buf, sizeof buf), "at-1");
  /* credential 1's token stops being fresh (skew 120 s) 300 ms from now: then it is refreshed */
  now = tl__now_ms();
  snprintf(sql, sizeof sql, "UPDATE credential SET expires_at = %lld WHERE id = 1", (long long)(now + 120000 + 300));
  assert_int_equal(fx_sql(f->s, sql), SQLITE_OK);
  assert_string_equal(token_now(f, buf, sizeof buf), "at-1");
  assert_int_equal(c.calls, 0);
  usleep(400000);
  assert_string_equal(token_now(f, buf, sizeof buf), "at-rt-e1");
  assert_int_equal(c.calls, 1);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)
  const struct CMUnitTest tests[] = {
      T(test_refresh__rotation_records_child_and_erases_parent),
      T(test_refresh__hot_path_answers_follow_every_change_of_another_process),
      T(test_refresh__hot_path_answers_end_with_expiry_and_cooldown),
      T(test_refresh__rt_in_body_when_provider_says_so),
      T(test_refresh__answer_without_rt_keeps_the_current_one),
      T(test_refresh__reuse_answer_needs_reauth_and_names_outside_process),
      T(test_refresh__429_cools_down_and_does_not_spend_the_rt),
      T(test_refresh__not_sent_keeps_rt_and_may_retry),
      T(test_refresh__lost_answer_is_unknown_and_never_replayed),
      T(test_refresh__unknown_outcome_still_serves_a_valid_access_token),
      T(test_refresh__recover_retry_presents_once_more),
      T(test_refresh__recover_mark_dead_requires_login),
      T(test_refresh__grace_window_allows_one_automatic_retry),
      T(test_refresh__a_rotation_leaves_its_spent_tokens_nowhere_on_disk),
      T(test_refresh__unreadable_200_is_unknown),
      T(test_refresh__a_server_echoing_the_token_is_redacted),
      T(test_refresh__client_error_is_not_terminal),
      T(test_refresh__terminal_words_of_other_servers_are_terminal),
      T(test_refresh__strategies_pick_and_skip),
      T(test_refresh__compact_keeps_every_fingerprint),
      T(test_refresh__no_credential_is_not_found),
      T(test_refresh__unusable_new_rt_is_unknown_and_kept_raw),
      T(test_refresh__unusable_access_token_is_never_stored_or_served),
      T(test_refresh__expires_in_is_range_checked),
      T(test_refresh__duplicate_keys_are_not_read),
      T(test_refresh__echoes_of_the_rt_in_any_form_are_redacted),
      T(test_refresh__server_text_is_shown_escaped),
      cmocka_unit_test(test_refresh__retry_after_and_status_are_bounded),
      T(test_refresh__rotation_that_cannot_be_recorded_is_rescued),
  };
  return cmocka_run_group_tests_name("refresh", tests, NULL, NULL);
}
