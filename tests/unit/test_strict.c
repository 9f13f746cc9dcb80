/*
 * test_strict.c - strict mode's surrogate refresh tokens and state: the
 * string's shape, that no alteration, truncation or transplant verifies, that
 * a removed profile's surrogate stays dead, that a surrogate never enters the
 * lineage, the strict flag, and the port file's hostile twins.
 */
#include "fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int64_t profile_of(tl_store *s, const char *name)
{
  int64_t id = 0;
  tl_error err = {0};
  assert_int_equal(tl__profile_id(&id, s, name, &err), TL_OK);
  return id;
}

static char *mint(tl_store *s, int64_t cred, int64_t profile)
{
  char *sur = NULL;
  tl_error err = {0};
  if (tl__strict_surrogate(&sur, s, cred, profile, &err) != TL_OK)
    fail_msg("surrogate: %s", err.message);
  return sur;
}

static tl_status verify(tl_store *s, const char *sur)
{
  tl_error err = {0};
  int64_t c = -1, p = -1, g = -1;
  tl_status rc = tl__strict_verify(&c, &p, &g, s, sur, &err);
  if (rc != TL_OK)
    assert_true(err.message[0] != '\0' && (strlen(sur) < 16 || strstr(err.message, sur) == NULL)); /* never echoed */
  return rc;
}

static void sleep_ms(long ms)
{
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_strict__surrogate_is_printable_prefixed_and_names_what_it_stands_for(void **state)
{
  fx *f = *state;
  int64_t cred = fx_credential(f->s, "p", "rt-one");
  int64_t prof = profile_of(f->s, "p");
  char *sur = mint(f->s, cred, prof);
  assert_true(tl__strict_is_surrogate(sur));
  assert_true(tl__token_valid(sur, strlen(sur)));
  assert_true(strlen(sur) <= TL_SURROGATE_MAX);
  assert_int_equal(strncmp(sur, "tlsurr1.", 8), 0);
  int64_t c = 0, p = 0, g = -1;
  tl_error err = {0};
  assert_int_equal(tl__strict_verify(&c, &p, &g, f->s, sur, &err), TL_OK);
  assert_int_equal(c, cred);
  assert_int_equal(p, prof);
  assert_int_equal(g, 0);
  assert_false(tl__strict_is_surrogate("rt-one"));
  assert_false(tl__strict_is_surrogate("tlsurr1"));
  assert_false(tl__strict_is_surrogate(NULL));
  tl_secret_free(sur);
}

static void test_strict__a_surrogate_names_the_current_generation_and_is_stable_within_it(void **state)
{
  fx *f = *state;
  int64_t cred = fx_credential(f->s, "p", "rt-one");
  int64_t prof = profile_of(f->s, "p");
  char *a = mint(f->s, cred, prof), *b = mint(f->s, cred, prof);
  assert_string_equal(a, b); /* every file holding the grant agrees: Hermes never merges one into another */
  assert_int_equal(verify(f->s, a), TL_OK);
  assert_int_equal(verify(f->s, b), TL_OK);
  /* A rotation later: new surrogates name generation 1; the old ones still verify (Hermes may hold one). */
  assert_int_equal(fx_sql(f->s, "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = 1"),
                   SQLITE_OK);
  assert_int_equal(fx_sql(f->s, "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, "
                                "fingerprint, state, origin, secret, issued_at) VALUES (1, 1, 1, 1, "
                                "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'current', "
                                "'refresh', 'rt-two', 2)"),
                   SQLITE_OK);
  char *c = mint(f->s, cred, prof);
  int64_t g = -1;
  tl_error err = {0};
  assert_int_equal(tl__strict_verify(NULL, NULL, &g, f->s, c, &err), TL_OK);
  assert_int_equal(g, 1);
  assert_string_not_equal(a, c); /* a rotation gives a new surrogate */
  assert_int_equal(verify(f->s, a),
                   TL_OK); /* still authentic (sync recognises it); serve admits less: tl__strict_admit */
  tl_secret_free(a);
  tl_secret_free(b);
  tl_secret_free(c);
}

/* Makes the credential's open RT spent and adds its child of generation gen, issued at `at` ms. */
static void rotate_at(tl_store *s, int64_t cred, int64_t gen, int64_t at)
{
  char sql[600];
  assert_int_equal(fx_sql(s, "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = 1 WHERE state = "
                             "'current'"),
                   SQLITE_OK);
  snprintf(sql, sizeof sql,
           "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, "
           "secret, issued_at) SELECT %lld, id, coalesce(family_id, id), %lld, printf('%%064x', %lld), 'current', "
           "'refresh', 'rt-child-%lld', %lld FROM refresh_token WHERE credential_id = %lld AND generation = %lld - 1",
           (long long)cred, (long long)gen, (long long)(1000 + gen), (long long)gen, (long long)at, (long long)cred,
           (long long)gen);
  assert_int_equal(fx_sql(s, sql), SQLITE_OK);
}

static tl_status admit(tl_store *s, const char *sur, tl__surrogate_check *sc)
{
  tl_error err = {0};
  tl_status rc = tl__strict_admit(sc, s, sur, &err);
  if (rc != TL_OK)
    assert_true(err.message[0] != '\0' && strstr(err.message, sur) == NULL);
  return rc;
}

static void test_strict__serve_admits_the_current_generation_and_the_one_before_briefly_while_strict(void **state)
{
  fx *f = *state;
  int64_t cred = fx_credential(f->s, "p", "rt-one");
  int64_t prof = profile_of(f->s, "p");
  tl__surrogate_check sc;
  tl_error err = {0};
  char *s0 = mint(f->s, cred, prof);
  assert_int_equal(admit(f->s, s0, &sc), TL_EREUSE); /* not strict (yet): nobody should hold one */
  assert_string_equal(sc.refusal, "profile_not_strict");
  assert_int_equal(tl_profile_strict(f->s, "p", 1, &err), TL_OK);
  assert_int_equal(admit(f->s, s0, &sc), TL_OK);
  assert_int_equal(sc.generation, 0);
  assert_false(sc.grace);
  /* A rotation just now: generation 0 is still good (a Hermes that died before writing), for a while. */
  rotate_at(f->s, cred, 1, tl__now_ms());
  char *s1 = mint(f->s, cred, prof);
  assert_int_equal(admit(f->s, s0, &sc), TL_OK);
  assert_true(sc.grace);
  assert_int_equal(sc.current, 1);
  assert_int_equal(admit(f->s, s1, &sc), TL_OK);
  assert_false(sc.grace);
  /* A second rotation, issued past the grace: neither older one is good any more. */
  rotate_at(f->s, cred, 2, tl__now_ms() - TL_SURROGATE_GRACE_MS - 1000);
  char *s2 = mint(f->s, cred, prof);
  assert_int_equal(admit(f->s, s0, &sc), TL_EREUSE);
  assert_string_equal(sc.refusal, "old_generation");
  assert_int_equal(sc.generation, 0);
  assert_int_equal(sc.current, 2);
  assert_int_equal(sc.credential, cred);
  assert_int_equal(sc.profile, prof);
  assert_int_equal(admit(f->s, s1, &sc), TL_EREUSE); /* the one before, but its grace is over */
  assert_int_equal(admit(f->s, s2, &sc), TL_OK);
  /* Strict off: even the current one is refused. */
  assert_int_equal(tl_profile_strict(f->s, "p", 0, &err), TL_OK);
  assert_int_equal(admit(f->s, s2, &sc), TL_EREUSE);
  assert_string_equal(sc.refusal, "profile_not_strict");
  /* Not authentic: no verdict on a generation, nothing named. */
  assert_int_equal(admit(f->s, "tlsurr1.1.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &sc),
                   TL_EINVAL);
  assert_int_equal(sc.credential, 0);
  assert_null(sc.refusal);
  tl_secret_free(s0);
  tl_secret_free(s1);
  tl_secret_free(s2);
}

static void test_strict__any_altered_character_is_refused(void **state)
{
  fx *f = *state;
  int64_t cred = fx_credential(f->s, "p", "rt-one");
  char *sur = mint(f->s, cred, profile_of(f->s, "p"));
  size_t n = strlen(sur);
  char *copy = strdup(sur);
  for (size_t i = 0; i < n; i++) {
    static const char swaps[] = "A1-_.z9";
    for (const char *w = swaps; *w; w++) {
      if (sur[i] == *w)
        continue;
      strcpy(copy, sur);
      copy[i] = *w;
      if (verify(f->s, copy) == TL_OK)
        fail_msg("altered at %zu to '%c' still verifies", i, *w);
    }
  }
  strcpy(copy, sur);
  assert_int_equal(verify(f->s, copy), TL_OK); /* the loop changed nothing for good */
  free(copy);
  tl_secret_free(sur);
}

static void test_strict__every_truncation_and_extension_is_refused(void **state)
{
  fx *f = *state;
  int64_t cred = fx_credential(f->s, "p", "rt-one");
  char *sur = mint(f->s, cred, profile_of(f->s, "p"));
  size_t n = strlen(sur);
  char buf[512];
  for (size_t k = 0; k < n; k++) {
    memcpy(buf, sur, k);
    buf[k] = '\0';
    if (verify(f->s, buf) == TL_OK)
      fail_msg("truncated to %zu bytes still verifies", k);
  }
  snprintf(buf, sizeof buf, "%sA", sur);
  assert_int_not_equal(verify(f->s, buf), TL_OK);
  snprintf(buf, sizeof buf, " %s", sur);
  assert_int_not_equal(verify(f->s, buf), TL_OK);
  tl_secret_free(sur);
}

static void test_strict__hostile_strings_are_refused_without_harm(void **state)
{
  fx *f = *state;
  fx_credential(f->s, "p", "rt-one");
  static const char *const bad[] = {
      "",
      "tlsurr1.",
      "tlsurr1.1.1.0",
      "tlsurr1.01.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.0.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.-1.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.99999999999999999999999.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.1.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.1.1.0.AAAAAAAAAAAA\nAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
      "tlsurr1.1.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\x7f",
      "tlsurr1.1.1.0.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.extra",
      "tlsurr1.1.1.0.AAAAAAAA+AAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (verify(f->s, bad[i]) == TL_OK)
      fail_msg("hostile surrogate %zu verified", i);
  char *huge = malloc(100000);
  memset(huge, '7', 99999);
  memcpy(huge, "tlsurr1.", 8);
  huge[99999] = '\0';
  assert_int_equal(verify(f->s, huge), TL_EINVAL);
  free(huge);
}

static void test_strict__surrogate_cannot_be_moved_to_another_credential_or_profile(void **state)
{
  fx *f = *state;
  int64_t c1 = fx_credential(f->s, "alice", "rt-alice");
  int64_t c2 = fx_credential(f->s, "bob", "rt-bob");
  int64_t alice = profile_of(f->s, "alice"), bob = profile_of(f->s, "bob");
  char *sur = mint(f->s, c1, alice);
  char moved[512];
  /* Re-target the credential field (1 -> 2) and the profile field (1 -> 2) by hand. */
  assert_int_equal(strncmp(sur, "tlsurr1.1.1.", 12), 0);
  snprintf(moved, sizeof moved, "tlsurr1.%lld.%s", (long long)c2, sur + 10);
  assert_int_equal(verify(f->s, moved), TL_EINVAL);
  snprintf(moved, sizeof moved, "tlsurr1.1.%lld.%s", (long long)bob, sur + 12);
  assert_int_equal(verify(f->s, moved), TL_EINVAL);
  /* Alice does not use bob's grant: no surrogate for that pairing. */
  char *none = NULL;
  tl_error err = {0};
  assert_int_equal(tl__strict_surrogate(&none, f->s, c2, alice, &err), TL_ENOTFOUND);
  assert_null(none);
  assert_true(tl__strict_uses(f->s, alice, c1));
  assert_false(tl__strict_uses(f->s, alice, c2));
  tl_secret_free(sur);
}

static void test_strict__another_ledgers_surrogate_is_refused(void **state)
{
  fx *f = *state;
  int64_t c = fx_credential(f->s, "p", "rt-one");
  char path[400];
  snprintf(path, sizeof path, "%s/other.db", f->dir);
  tl_store *o = NULL;
  tl_error err = {0};
  assert_int_equal(tl_store_open(&o, path, TL_OPEN_CREATE, &err), TL_OK);
  fx_credential(o, "p", "rt-one"); /* same ids, same RT even: another key */
  char *sur = mint(o, c, profile_of(o, "p"));
  assert_int_equal(verify(o, sur), TL_OK);
  assert_int_equal(verify(f->s, sur), TL_EINVAL);
  assert_int_equal(fx_int(o, "SELECT count(*) FROM strict_key"), 1);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(f->s->db, "ATTACH ? AS other", -1, &st, NULL), SQLITE_OK);
  sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
  assert_int_equal(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM main.strict_key a, other.strict_key b WHERE a.secret = "
                                "b.secret"),
                   0);
  assert_int_equal(fx_sql(f->s, "DETACH other"), SQLITE_OK);
  tl_secret_free(sur);
  tl_store_free(o);
}

static void test_strict__removed_profile_stays_dead_even_when_added_again(void **state)
{
  fx *f = *state;
  int64_t c = fx_credential(f->s, "p", "rt-one");
  int64_t p = profile_of(f->s, "p");
  char *sur = mint(f->s, c, p);
  tl_error err = {0};
  assert_int_equal(tl_profile_remove(f->s, "p", &err), TL_OK);
  assert_int_equal(verify(f->s, sur), TL_ENOTFOUND);
  sleep_ms(3);
  fx_credential(f->s, "p", "rt-one"); /* same name, same grant, and SQLite re-uses the rowid */
  assert_int_equal(profile_of(f->s, "p"), p);
  assert_int_equal(verify(f->s, sur), TL_EINVAL);
  char *fresh = mint(f->s, c, p);
  assert_int_equal(verify(f->s, fresh), TL_OK);
  tl_secret_free(sur);
  tl_secret_free(fresh);
}

static void test_strict__a_surrogate_never_enters_the_lineage(void **state)
{
  fx *f = *state;
  int64_t c = fx_credential(f->s, "p", "rt-one");
  char *sur = mint(f->s, c, profile_of(f->s, "p"));
  int64_t rts = fx_int(f->s, "SELECT count(*) FROM refresh_token");
  int64_t audits = fx_int(f->s, "SELECT count(*) FROM audit_event");
  tl_credential_spec spec = {.provider = "nous", .profile = "p", .refresh_token = sur};
  tl_error err = {0};
  assert_int_equal(tl_credential_add(NULL, f->s, &spec, &err), TL_EINVAL);
  assert_non_null(strstr(err.message, "surrogate"));
  assert_null(strstr(err.message, sur));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM refresh_token"), rts);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event"), audits);
  char fp[65];
  tl_fingerprint(fp, sur, strlen(sur));
  int64_t id = 0, cred = 0;
  assert_int_equal(tl__rt_lookup(&id, &cred, f->s, fp, &err), TL_OK);
  assert_int_equal(id, 0);
  tl_secret_free(sur);
}

static void test_strict__the_key_is_32_random_bytes_written_at_migration(void **state)
{
  fx *f = *state;
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM strict_key WHERE typeof(secret) = 'blob' AND "
                                "length(secret) = 32"),
                   1);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM strict_key WHERE secret = zeroblob(32)"), 0);
  assert_int_not_equal(
      fx_sql(f->s, "INSERT INTO strict_key (id, secret, created_at) VALUES (2, zeroblob(32), 0)") & 0xff, SQLITE_OK);
  assert_int_not_equal(fx_sql(f->s, "UPDATE strict_key SET secret = 'text-is-not-a-key'") & 0xff, SQLITE_OK);
  /* A key row deleted by hand: the next surrogate creates a new key; the old surrogates die with the old one. */
  int64_t c = fx_credential(f->s, "p", "rt-one");
  int64_t p = profile_of(f->s, "p");
  char *old = mint(f->s, c, p);
  assert_int_equal(fx_sql(f->s, "DELETE FROM strict_key"), SQLITE_OK);
  assert_int_equal(verify(f->s, old), TL_EINVAL);
  char *fresh = mint(f->s, c, p);
  assert_int_equal(verify(f->s, fresh), TL_OK);
  assert_int_equal(verify(f->s, old), TL_EINVAL);
  tl_secret_free(old);
  tl_secret_free(fresh);
}

static void test_strict__profile_strict_on_off_is_audited_and_idempotent(void **state)
{
  fx *f = *state;
  fx_credential(f->s, "p", "rt-one");
  int64_t p = profile_of(f->s, "p");
  tl_error err = {0};
  assert_false(tl__strict_profile(f->s, p));
  assert_int_equal(tl_profile_strict(f->s, "p", 1, &err), TL_OK);
  assert_true(tl__strict_profile(f->s, p));
  assert_int_equal(tl_profile_strict(f->s, "p", 1, &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'profile_strict_on'"), 1);
  assert_int_equal(fx_int(f->s, "SELECT strict FROM v_profile_status WHERE profile = 'p'"), 1);
  assert_int_equal(tl_profile_strict(f->s, "p", 0, &err), TL_OK);
  assert_false(tl__strict_profile(f->s, p));
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM audit_event WHERE event = 'profile_strict_off'"), 1);
  assert_int_equal(tl_profile_strict(f->s, "ghost", 1, &err), TL_ENOTFOUND);
  tl_error_clear(&err);
  assert_int_equal(tl_profile_strict(f->s, "p", 1, &err), TL_OK);
  assert_int_equal(tl_profile_remove(f->s, "p", &err), TL_OK);
  assert_int_equal(fx_int(f->s, "SELECT count(*) FROM strict_profile"), 0);
}

/* The port file: absent, stale, held by a live serve, and its hostile twins. */
static void test_strict__portal_url_comes_only_from_a_live_port_file_of_ours(void **state)
{
  fx *f = *state;
  char pf[400], url[128], other[400];
  tl_error err = {0};
  snprintf(pf, sizeof pf, "%s-serve", f->path);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_ENOTFOUND);
  static const char rec[] = "{\"host\":\"127.0.0.1\",\"port\":4242,\"pid\":1,\"url\":\"http://127.0.0.1:4242\"}\n";
  fx_write(pf, rec, strlen(rec), 0600);
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_ENOTFOUND); /* nobody holds it */
  assert_non_null(strstr(err.message, "died"));
  int fd = open(pf, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(flock(fd, LOCK_EX), 0); /* as a running serve does */
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_OK);
  assert_string_equal(url, "http://127.0.0.1:4242");
  static const char evil[] = "{\"host\":\"10.0.0.1\",\"port\":4242,\"pid\":1}";
  assert_int_equal(ftruncate(fd, 0), 0);
  assert_int_equal(pwrite(fd, evil, strlen(evil), 0), (ssize_t)strlen(evil));
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_EBUSY); /* never a non-loopback URL */
  close(fd);
  /* Group-readable, a symlink, a FIFO: refused, and nothing hangs. */
  assert_int_equal(chmod(pf, 0644), 0);
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_EINSECURE);
  unlink(pf);
  snprintf(other, sizeof other, "%s/elsewhere", f->dir);
  fx_write(other, rec, strlen(rec), 0600);
  assert_int_equal(symlink(other, pf), 0);
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_EINSECURE);
  unlink(pf);
  assert_int_equal(mkfifo(pf, 0600), 0);
  tl_error_clear(&err);
  assert_int_equal(tl__strict_portal_url(url, sizeof url, f->s, &err), TL_EINSECURE);
  unlink(pf);
}

static void test_strict__listen_hosts_are_loopback_literals_only(void **state)
{
  (void)state;
  assert_true(tl__serve_host_valid("127.0.0.1"));
  assert_true(tl__serve_host_valid("127.1.2.3"));
  assert_true(tl__serve_host_valid("::1"));
  static const char *const bad[] = {"0.0.0.0",   "10.0.0.1",    "128.0.0.1",  "::", "::ffff:127.0.0.1",
                                    "localhost", "example.com", "127.0.0.1 ", "",   "127.0.0.1/8"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (tl__serve_host_valid(bad[i]))
      fail_msg("'%s' accepted as a loopback literal", bad[i]);
  assert_false(tl__serve_host_valid(NULL));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_strict__surrogate_is_printable_prefixed_and_names_what_it_stands_for,
                                      fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__a_surrogate_names_the_current_generation_and_is_stable_within_it,
                                      fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_strict__serve_admits_the_current_generation_and_the_one_before_briefly_while_strict, fx_setup,
          fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__any_altered_character_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__every_truncation_and_extension_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__hostile_strings_are_refused_without_harm, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__surrogate_cannot_be_moved_to_another_credential_or_profile, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__another_ledgers_surrogate_is_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__removed_profile_stays_dead_even_when_added_again, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__a_surrogate_never_enters_the_lineage, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__the_key_is_32_random_bytes_written_at_migration, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__profile_strict_on_off_is_audited_and_idempotent, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_strict__portal_url_comes_only_from_a_live_port_file_of_ours, fx_setup,
                                      fx_teardown),
      cmocka_unit_test(test_strict__listen_hosts_are_loopback_literals_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
