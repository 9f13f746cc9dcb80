/*
 * test_ledger.c - profiles, providers, credentials, reuse blocking, check-rt,
 * secrets, time parsing, reports and doctor.
 */
#include "fixture.h"

#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_ledger__profile_names_follow_hermes_rule(void **state)
{
  (void)state;
  assert_true(tl_profile_name_valid("default"));
  assert_true(tl_profile_name_valid("work-2_x"));
  assert_true(tl_profile_name_valid("0abc"));
  assert_false(tl_profile_name_valid(""));
  assert_false(tl_profile_name_valid("Work"));
  assert_false(tl_profile_name_valid("-x"));
  assert_false(tl_profile_name_valid("a/b"));
  assert_false(tl_profile_name_valid("hermes"));
  assert_false(tl_profile_name_valid("root"));
  char longname[70];
  memset(longname, 'a', 65);
  longname[65] = '\0';
  assert_false(tl_profile_name_valid(longname));
}

static void test_ledger__profile_add_twice_and_remove_missing_are_errors(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  assert_int_equal(tl_profile_add(f->s, "a", NULL, &err), TL_OK);
  assert_int_equal(tl_profile_add(f->s, "a", NULL, &err), TL_EEXISTS);
  tl_error_clear(&err);
  assert_int_equal(tl_profile_add(f->s, "Bad Name", NULL, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "invalid"));
  tl_error_clear(&err);
  assert_int_equal(tl_profile_add(f->s, "b", "/nonexistent/home", &err), TL_ENOTFOUND);
  tl_error_clear(&err);
  assert_int_equal(tl_profile_remove(f->s, "zzz", &err), TL_ENOTFOUND);
}

static void test_ledger__removing_a_profile_keeps_the_lineage(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  fx_credential(f->s, "a", "rt-keep");
  assert_int_equal(tl_profile_remove(f->s, "a", &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 1);
  /* the fingerprint still catches the token */
  tl_report *r = NULL;
  assert_int_equal(tl_rt_check(&r, f->s, "rt-keep", &err), TL_OK);
  assert_string_equal(tl_report_get(r, 0, "verdict"), "current");
  tl_report_free(r);
}

static void test_ledger__provider_urls_must_be_https_or_loopback(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  tl_provider p = {.name = "x", .token_url = "http://example.com/t", .client_id = "c", .skew_s = -1, .grace_s = -1};
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "https"));
  tl_error_clear(&err);
  p.token_url = "not a url";
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_EINVAL);
  tl_error_clear(&err);
  p.token_url = "http://127.0.0.1:9/t";
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
  p.token_url = "https://auth.example.com/oauth/token";
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
  tl_provider q = {.name = "y", .skew_s = -1, .grace_s = -1};
  assert_int_equal(tl_provider_set(f->s, &q, &err), TL_EINVAL); /* new provider needs url and client id */
  /* an update keeps what it does not name */
  tl_provider u = {.name = "nous", .grace_s = 30, .skew_s = -1};
  assert_int_equal(tl_provider_set(f->s, &u, &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT grace_s FROM provider WHERE name = 'nous'"), 30);
  assert_int_equal(fx_int(f->s, "SELECT skew_s FROM provider WHERE name = 'nous'"), 120);
  assert_int_equal(fx_int(f->s, "SELECT rt_header = 'x-nous-refresh-token' FROM provider WHERE name = 'nous'"), 1);
}

static void test_ledger__spent_rt_is_refused_audited_and_nothing_else_written(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  int64_t cred = fx_credential(f->s, "a", "rt-spent");
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = 1000"),
                   SQLITE_OK);
  int64_t creds = fx_int(f->s, "SELECT count(*) FROM credential");
  int64_t rts = fx_int(f->s, "SELECT count(*) FROM refresh_token");
  int64_t entries = fx_int(f->s, "SELECT count(*) FROM pool_entry");
  assert_int_equal(tl_profile_add(f->s, "b", NULL, &err), TL_OK);
  tl_credential_spec spec = {.provider = "nous", .profile = "b", .refresh_token = "rt-spent"};
  int64_t id = 0;
  assert_int_equal(tl_credential_add(&id, f->s, &spec, &err), TL_EREUSE);
  assert_int_equal(err.code, TL_EREUSE);
  assert_non_null(strstr(err.message, "already spent"));
  assert_non_null(strstr(err.message, "generation 0"));
  assert_null(strstr(err.message, "rt-spent"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential"), creds);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), rts);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), entries);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'reuse_blocked'"), 1);
  char sql[200];
  snprintf(
      sql, sizeof sql,
      "SELECT count(*) FROM v_reuse_events WHERE credential = %lld AND json_extract(detail, '$.state') = 'rotated'",
      (long long)cred);
  assert_int_equal(fx_int(f->s, sql), 1);
}

static void test_ledger__same_live_rt_attaches_profile_to_one_credential(void **state)
{
  fx *f = *state;
  int64_t a = fx_credential(f->s, "a", "rt-shared");
  int64_t b = fx_credential(f->s, "b", "rt-shared");
  assert_int_equal(a, b);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry WHERE credential_id = 1"), 2);
  /* a third time for the same profile does not duplicate the entry */
  fx_credential(f->s, "b", "rt-shared");
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 2);
}

static void test_ledger__check_rt_names_current_spent_and_unknown(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  tl_report *r = NULL;
  fx_credential(f->s, "a", "rt-check");
  assert_int_equal(tl_rt_check(&r, f->s, "rt-check", &err), TL_OK);
  assert_string_equal(tl_report_get(r, 0, "verdict"), "current");
  assert_string_equal(tl_report_get(r, 0, "profiles"), "a");
  tl_report_free(r);
  assert_int_equal(tl_rt_check(&r, f->s, "never-seen", &err), TL_OK);
  assert_string_equal(tl_report_get(r, 0, "verdict"), "unknown_to_ledger");
  assert_null(tl_report_get(r, 0, "credential"));
  tl_report_free(r);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'rejected', secret = NULL, retired_at = 1"),
                   SQLITE_OK);
  assert_int_equal(tl_rt_check(&r, f->s, "rt-check", &err), TL_OK);
  assert_string_equal(tl_report_get(r, 0, "verdict"), "spent");
  assert_string_equal(tl_report_get(r, 0, "state"), "rejected");
  char *json = NULL;
  assert_int_equal(tl_report_json(&json, r, TL_JSON_OBJECT, &err), TL_OK);
  assert_non_null(strstr(json, "\"generation\":0")); /* numbers stay numbers */
  assert_null(strstr(json, "rt-check"));
  free(json);
  tl_report_free(r);
}

static void test_ledger__secret_read_trims_and_refuses_bad_input(void **state)
{
  fx *f = *state;
  char path[400];
  char *s = NULL;
  tl_error err = {0};
  snprintf(path, sizeof path, "%s/rt", f->dir);
  fx_write(path, "  tok-123\n", 10, 0600);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_OK);
  assert_string_equal(s, "tok-123");
  tl_secret_free(s);
  fx_write(path, "\n \n", 3, 0600);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "empty"));
  tl_error_clear(&err);
  fx_write(path, "a b", 3, 0600);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_EINVAL);
  tl_error_clear(&err);
  fx_write(path, "a\0b", 3, 0600);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "NUL"));
  tl_error_clear(&err);
  char *big = malloc(20000);
  memset(big, 'x', 20000);
  fx_write(path, big, 20000, 0600);
  free(big);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_EINVAL);
  tl_error_clear(&err);
  snprintf(path, sizeof path, "%s/missing", f->dir);
  assert_int_equal(tl_secret_read(&s, path, &err), TL_ENOTFOUND);
}

static void test_ledger__time_parse_reads_every_hermes_form(void **state)
{
  (void)state;
  int64_t t = 0;
  tl_error err = {0};
  assert_int_equal(tl_time_parse(&t, "2026-09-20T10:00:00.123456+00:00", &err), TL_OK);
  assert_int_equal(t, 1789898400123LL);
  assert_int_equal(tl_time_parse(&t, "2026-09-20T10:00:00Z", &err), TL_OK);
  assert_int_equal(t, 1789898400000LL);
  assert_int_equal(tl_time_parse(&t, "2026-09-20T10:00:00", &err), TL_OK); /* naive = UTC */
  assert_int_equal(t, 1789898400000LL);
  assert_int_equal(tl_time_parse(&t, "2026-09-20T12:00:00+02:00", &err), TL_OK);
  assert_int_equal(t, 1789898400000LL);
  assert_int_equal(tl_time_parse(&t, "1789898400.5", &err), TL_OK);
  assert_int_equal(t, 1789898400500LL);
  assert_int_equal(tl_time_parse(&t, "1789898400123", &err), TL_OK); /* epoch ms */
  assert_int_equal(t, 1789898400123LL);
  assert_int_equal(tl_time_parse(&t, "yesterday", &err), TL_EINVAL);
  tl_error_clear(&err);
  assert_int_equal(tl_time_parse(&t, "2026-09-20T10:00:00Zjunk", &err), TL_EINVAL);
}

static void test_ledger__numbers_from_outside_are_range_checked(void **state)
{
  (void)state;
  int64_t v = 0;
  json_t *j = json_real(1e300);
  assert_non_null(tl__num_time(&v, j)); /* once undefined behaviour: a float epoch far out of range */
  json_decref(j);
  j = json_real(1790000000.5);
  assert_null(tl__num_time(&v, j));
  assert_int_equal(v, 1790000000500LL);
  json_decref(j);
  j = json_integer(-1);
  assert_non_null(tl__num_time(&v, j));
  json_decref(j);
  j = json_string("99999-01-01T00:00:00Z");
  assert_non_null(tl__num_time(&v, j));
  json_decref(j);
  assert_non_null(tl__num_f2i(&v, 9.3e18, 0, INT64_MAX));
  assert_non_null(tl__num_f2i(&v, NAN, 0, 10));
  assert_null(tl__num_f2i(&v, 9.9, 0, 10));
  assert_int_equal(v, 9);
  j = json_integer(1000000);
  assert_non_null(tl__num_i64(&v, j, 0, 86400));
  assert_null(tl__num_i64(&v, j, 0, 10000000));
  json_decref(j);
  int64_t t = 0;
  tl_error err = {0};
  assert_int_equal(tl_time_parse(&t, "1e300", &err), TL_EINVAL);
}

static void test_ledger__tokens_are_printable_ascii_without_surrounding_space(void **state)
{
  (void)state;
  assert_true(tl__token_valid("rt-abc.DEF_123~+/=", strlen("rt-abc.DEF_123~+/=")));
  assert_false(tl__token_valid("rt-live ", 8));
  assert_false(tl__token_valid(" rt", 3));
  assert_false(tl__token_valid("rt\r\nHost: evil", strlen("rt\r\nHost: evil")));
  assert_false(tl__token_valid("rt\x1b[31m", strlen("rt\x1b[31m")));
  assert_false(tl__token_valid("", 0));
  assert_false(tl__token_valid("caf\xc3\xa9", 5));
  assert_true(tl__token_valid("a b", 3)); /* inner space is VSCHAR */
}

static void test_ledger__doctor_turns_a_dead_owners_attempt_into_unknown(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  fx_credential(f->s, "a", "rt-doc");
  tl_report *r = NULL;
  int problems = -1;
  assert_int_equal(tl_doctor(&r, &problems, f->s, 0, &err), TL_OK);
  assert_int_equal(problems, 0);
  tl_report_free(r);
  /* an attempt owned by a process that does not exist on this host */
  char sql[600];
  snprintf(sql, sizeof sql,
           "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, "
           "started_at, lease_until) VALUES (1, 1, '%s', '%s', 999999999, 1, 0, 9999999999999); "
           "UPDATE refresh_token SET state = 'presented'",
           f->s->actor.host, f->s->actor.boot);
  assert_int_equal(fx_sql(f->s, sql), SQLITE_OK);
  assert_int_equal(tl_doctor(&r, &problems, f->s, 0, &err), TL_OK);
  assert_true(problems >= 1);
  tl_report_free(r);
  assert_int_equal(tl_doctor(&r, &problems, f->s, 1, &err), TL_OK);
  tl_report_free(r);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'unknown'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'unknown'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE status = 'uncertain'"), 1);
}

static void test_ledger__a_live_owners_attempt_is_not_reaped(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  fx_credential(f->s, "a", "rt-live");
  char sql[600];
  snprintf(sql, sizeof sql,
           "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, "
           "started_at, lease_until) VALUES (1, 1, '%s', '%s', %ld, %lld, 0, 9999999999999)",
           f->s->actor.host, f->s->actor.boot, f->s->actor.pid, f->s->actor.start);
  assert_int_equal(fx_sql(f->s, sql), SQLITE_OK);
  int64_t n = -1;
  assert_int_equal(tl__reap_dead_attempts(&n, f->s, 1, &err), TL_OK);
  assert_int_equal(n, 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'in_flight'"), 1);
}

/* Plain http only to a loopback address written as libcurl itself writes it: every other spelling refused. */
static void test_ledger__plain_http_only_to_a_canonical_loopback_address(void **state)
{
  (void)state;
  static const char *const good[] = {
      "http://127.0.0.1:8080/api/oauth/token",
      "http://127.0.0.2/t",
      "http://127.255.255.254:1/t",
      "http://[::1]:9/t",
      "http://localhost:9/t",
      "http://localhost",
      "https://portal.nousresearch.com/api/oauth/token",
      "https://127.0.0.1.example.com/t",
  };
  static const char *const bad[] = {
      "http://127.0.0.1.evil.com/t", /* a name that merely starts like a loopback address */
      "http://127.x/t",
      "http://0x7f.1/t", /* numeric spellings libcurl reads as 127.0.0.1 */
      "http://2130706433/t",
      "http://0177.0.0.1/t",
      "http://127.1/t",
      "http://127.0.0.01/t",
      "http://127.0.0.1%2eevil.com/t",
      "http://127.0.0.1@evil.com/t", /* userinfo tricks, either way round */
      "http://evil.com@127.0.0.1/t",
      "http://user:pw@127.0.0.1/t",
      "https://user@portal.example.com/t",
      "http://[::1%25lo]/t", /* zone ids, mapped and spelled-out v6 */
      "http://[::ffff:127.0.0.1]/t",
      "http://[0:0:0:0:0:0:0:1]/t",
      "http://localhost./t",
      "http://LOCALHOST/t",
      "http://localhost.evil.com/t",
      "http://0.0.0.0/t",
      "http://10.0.0.1/t",
      "HTTP://example.com/t",
      "http:/127.0.0.1/t",
      "ftp://127.0.0.1/t",
      "file:///etc/passwd",
      "127.0.0.1/t",
      "",
  };
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    tl_error err = {0};
    if (tl_url_check(good[i], &err) != TL_OK)
      fail_msg("refused %s: %s", good[i], err.message);
  }
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    tl_error err = {0};
    if (tl_url_check(bad[i], &err) != TL_EINVAL)
      fail_msg("accepted %s", bad[i]);
  }
  int loop = -1;
  tl_error err = {0};
  assert_int_equal(tl__url_classify(&loop, "http://127.0.0.3:1/t", &err), TL_OK);
  assert_int_equal(loop, 1);
  assert_int_equal(tl__url_classify(&loop, "https://[::1]/t", &err), TL_OK);
  assert_int_equal(loop, 1); /* https to loopback: no proxy either */
  assert_int_equal(tl__url_classify(&loop, "https://auth.example.com/t", &err), TL_OK);
  assert_int_equal(loop, 0);
}

static void test_ledger__rt_header_must_be_a_harmless_token(void **state)
{
  fx *f = *state;
  static const char *const bad[] = {
      "Host",  "content-length", "Transfer-Encoding", "Connection", "Content-Type", "Authorization", "Cookie", "x-a b",
      "x-a:b", "x-a\r\nHost",    "x-\x1b[31m",        "",           "x-\xc3\xa9"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    tl_error err = {0};
    tl_provider p = {.name = "nous", .rt_header = bad[i], .skew_s = -1, .grace_s = -1};
    if (!*bad[i])
      continue; /* empty means 'in the body' */
    if (tl_provider_set(f->s, &p, &err) != TL_EINVAL)
      fail_msg("accepted header name #%zu", i);
    for (const char *m = err.message; *m; m++)
      assert_true((unsigned char)*m >= 0x20 && (unsigned char)*m < 0x7f); /* never echoed raw */
  }
  assert_int_equal(fx_int(f->s, "SELECT rt_header = 'x-nous-refresh-token' FROM provider WHERE name = 'nous'"), 1);
  tl_error err = {0};
  tl_provider p = {.name = "nous", .rt_header = "X-Refresh_Token.v2", .skew_s = -1, .grace_s = -1};
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
}

/* credential rm: out of every pool, its token retired and erased, its lineage and audit kept. */
static void test_ledger__credential_rm_detaches_a_dead_grant_and_keeps_its_lineage(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  int64_t id = fx_credential(f->s, "a", "rt-remove-me");
  tl_credential_spec spec = {.provider = "nous", .profile = "b", .refresh_token = "rt-remove-me"};
  assert_int_equal(tl_profile_add(f->s, "b", NULL, &err), TL_OK);
  assert_int_equal(tl_credential_add(NULL, f->s, &spec, &err), TL_OK); /* b shares the grant */
  int64_t audit = fx_int(f->s, "SELECT count(*) FROM audit_event");

  /* live: refused without force, nothing written */
  assert_int_equal(tl_credential_remove(NULL, f->s, id, 0, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "live"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 2);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event"), audit);
  /* being presented: refused even with force */
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'presented'"), 0);
  assert_int_equal(tl_credential_remove(NULL, f->s, id, 1, &err), TL_EBUSY);
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'current'"), 0);
  /* unknown credential */
  assert_int_equal(tl_credential_remove(NULL, f->s, 424242, 1, &err), TL_ENOTFOUND);
  /* live in a Hermes file the ledger keeps: refused even with force */
  char sql[300];
  snprintf(
      sql, sizeof sql,
      "INSERT INTO hermes_file (profile_id, kind, path, template, imported_at, synced_at) VALUES (1, 'auth', "
      "'/h/auth.json', '{\"providers\":{\"nous\":{\"refresh_token\":{\"$tl\":\"rt\",\"credential\":%lld}}}}', 0, 0)",
      (long long)id);
  assert_int_equal(fx_sql(f->s, sql), 0);
  assert_int_equal(tl_credential_remove(NULL, f->s, id, 1, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "/h/auth.json"));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 2);
  /* a live one nobody's files hold: with force */
  int64_t other = fx_credential(f->s, "c", "rt-forced-out");
  assert_int_equal(tl_credential_remove(NULL, f->s, other, 0, &err), TL_EINVAL);
  tl_error_clear(&err);
  assert_int_equal(tl_credential_remove(NULL, f->s, other, 1, &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 2);

  /* dead: no force needed, even in a Hermes file */
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET status = 'needs_reauth'"), 0);
  tl_report *r = NULL;
  tl_error_clear(&err);
  assert_int_equal(tl_credential_remove(&r, f->s, id, 0, &err), TL_OK);
  assert_string_equal(tl_report_get(r, 0, "profiles"), "a,b");
  assert_string_equal(tl_report_get(r, 0, "entries"), "2");
  assert_non_null(tl_report_get(r, 0, "retired_rt"));
  tl_report_free(r);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM pool_entry"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM credential WHERE access_token IS NOT NULL"), 0);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token WHERE state = 'retired' AND secret IS NULL"), 2);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'credential_removed'"), 2);
  /* the lineage stays, and the token is refused if it comes back */
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), 2);
  assert_int_equal(tl_credential_add(NULL, f->s, &spec, &err), TL_EREUSE);
}

/* Status never calls an access token valid when the grant cannot refresh; entries without lineage say so. */
static void test_ledger__status_says_what_each_entry_can_give(void **state)
{
  fx *f = *state;
  tl_error err = {0};
  fx_credential(f->s, "a", "rt-status");
  assert_int_equal(fx_sql(f->s, "UPDATE credential SET access_token = 'at', expires_at = 32503680000000"), 0);
  assert_int_equal(fx_sql(f->s, "INSERT INTO provider (name, updated_at) VALUES ('openrouter', 0);"
                                "INSERT INTO pool_entry (profile_id, provider, entry_id, source, auth_type) "
                                "VALUES (1, 'openrouter', 'k1', 'env:KEY', 'api_key');"
                                "INSERT INTO pool_entry (profile_id, provider, entry_id, source) "
                                "VALUES (1, 'openrouter', 'b1', 'claude_code')"),
                   0);
  static const struct {
    const char *status, *want;
  } cases[] = {{"active", "valid"}, {"needs_reauth", "needs_login"}, {"uncertain", "unknown_outcome"}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE credential SET status = '%s'", cases[i].status);
    assert_int_equal(fx_sql(f->s, sql), 0);
    tl_report *r = NULL;
    assert_int_equal(tl_status_report(&r, f->s, "a", &err), TL_OK);
    assert_int_equal(tl_report_rows(r), 3);
    for (size_t row = 0; row < 3; row++) {
      const char *entry = tl_report_get(r, row, "entry"), *access = tl_report_get(r, row, "access_token_state");
      const char *want = strcmp(entry, "k1") == 0 ? "api_key" : strcmp(entry, "b1") == 0 ? "borrowed" : cases[i].want;
      assert_string_equal(access, want);
      assert_string_equal(tl_report_get(r, row, "kind"), strcmp(want, "api_key") == 0    ? "api_key"
                                                         : strcmp(want, "borrowed") == 0 ? "borrowed"
                                                                                         : "oauth");
    }
    tl_report_free(r);
  }
  /* the provider only API keys use says so */
  tl_report *p = NULL;
  assert_int_equal(tl_provider_list(&p, f->s, &err), TL_OK);
  for (size_t i = 0; i < tl_report_rows(p); i++)
    if (strcmp(tl_report_get(p, i, "name"), "openrouter") == 0)
      assert_string_equal(tl_report_get(p, i, "refreshes"), "api_keys_only");
  tl_report_free(p);
}

/* A caller's rows are escaped like the library's, numbers are checked, and JSON is one line with null for "". */
static void test_ledger__own_report_rows_are_escaped_and_render_one_json_line(void **state)
{
  (void)state;
  static const char *const cols[] = {"text", "n", "flag", "empty"};
  const char *cells[] = {"a\x1b[2Jb\nc", "12", "true", ""};
  const int num[] = {0, 1, 1, 0};
  tl_report *r = NULL;
  tl_error err = {0};
  char *json = NULL;
  assert_int_equal(tl_report_new(&r, cols, 4, &err), TL_OK);
  assert_int_equal(tl_report_add_row(r, cells, num, &err), TL_OK);
  assert_null(strchr(tl_report_get(r, 0, "text"), '\x1b'));
  assert_int_equal(tl_report_json(&json, r, TL_JSON_OBJECT, &err), TL_OK);
  assert_null(strchr(json, '\n'));
  assert_non_null(strstr(json, "\"n\":12"));
  assert_non_null(strstr(json, "\"flag\":true"));
  assert_non_null(strstr(json, "\"empty\":null"));
  free(json);
  const char *bad[] = {"x", "1e999999x", "true", "y"};
  assert_int_equal(tl_report_add_row(r, bad, num, &err), TL_EINVAL);
  assert_int_equal(tl_report_rows(r), 1);
  tl_report_free(r);
  assert_int_equal(tl_report_new(&r, cols, 0, &err), TL_EINVAL);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ledger__profile_names_follow_hermes_rule),
      cmocka_unit_test_setup_teardown(test_ledger__profile_add_twice_and_remove_missing_are_errors, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__removing_a_profile_keeps_the_lineage, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__provider_urls_must_be_https_or_loopback, fx_setup, fx_teardown),
      cmocka_unit_test(test_ledger__plain_http_only_to_a_canonical_loopback_address),
      cmocka_unit_test_setup_teardown(test_ledger__rt_header_must_be_a_harmless_token, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__spent_rt_is_refused_audited_and_nothing_else_written, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__same_live_rt_attaches_profile_to_one_credential, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__check_rt_names_current_spent_and_unknown, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__secret_read_trims_and_refuses_bad_input, fx_setup, fx_teardown),
      cmocka_unit_test(test_ledger__time_parse_reads_every_hermes_form),
      cmocka_unit_test(test_ledger__numbers_from_outside_are_range_checked),
      cmocka_unit_test(test_ledger__tokens_are_printable_ascii_without_surrounding_space),
      cmocka_unit_test_setup_teardown(test_ledger__doctor_turns_a_dead_owners_attempt_into_unknown, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__a_live_owners_attempt_is_not_reaped, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__credential_rm_detaches_a_dead_grant_and_keeps_its_lineage, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_ledger__status_says_what_each_entry_can_give, fx_setup, fx_teardown),
      cmocka_unit_test(test_ledger__own_report_rows_are_escaped_and_render_one_json_line),
  };
  return cmocka_run_group_tests_name("ledger", tests, NULL, NULL);
}
