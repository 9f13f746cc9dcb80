/*
 * test_threads.c - the thread-safety contract of tokenledger.h: a tl_store is
 * used by one thread at a time, and several threads, each with its own store,
 * may work on one ledger (and on other ledgers) at once. Threads of one
 * process are one owner for the refresh protocol: a thread that finds another
 * thread's refresh in flight waits for it, exactly as another process would,
 * so no refresh token is presented twice.
 *
 * Three cases: threads with their own ledgers (no shared state but the
 * library's globals); threads sharing one ledger through the HTTP seam, where
 * an in-process authorization server that rotates on every refresh counts any
 * reuse; and the same through libcurl against the real loopback portal
 * (tl-portal, when TL_PORTAL names it). tools/test also runs this file built
 * with ThreadSanitizer (-DTL_TSAN=ON).
 */
#include "fixture.h"
#include "portal_client.h"

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS  8
#define NPROFILES 4
#define CALLS     8

extern char **environ;

/* ---- an authorization server in the process, shared by every thread ------ */

typedef struct server {
  pthread_mutex_t mu;
  char live[NPROFILES][64]; /* the one live RT of each grant */
  int next, rotations, reuse, requests;
} server;

static int rotate(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  server *sv = ud;
  char body[256];
  int grant = -1;
  pthread_mutex_lock(&sv->mu);
  sv->requests++;
  for (int i = 0; i < NPROFILES && req->rt_value; i++)
    if (strcmp(sv->live[i], req->rt_value) == 0)
      grant = i;
  if (grant < 0) {
    sv->reuse++; /* a spent (or unknown) RT reached the server */
    snprintf(body, sizeof body, "{\"error\":\"invalid_grant\",\"error_description\":\"Refresh token reuse detected\"}");
  } else {
    snprintf(sv->live[grant], sizeof sv->live[grant], "thr-rt-%d", ++sv->next);
    sv->rotations++;
    snprintf(body, sizeof body, "{\"access_token\":\"thr-at-%d\",\"refresh_token\":\"%s\",\"expires_in\":3600}",
             sv->next, sv->live[grant]);
  }
  pthread_mutex_unlock(&sv->mu);
  resp->failure = TL_HTTP_DONE;
  resp->status = grant < 0 ? 400 : 200;
  resp->retry_after = -1;
  resp->body = strdup(body);
  resp->body_len = strlen(body);
  return 0;
}

/* ---- a worker: its own store, its own error, forced refreshes ------------- */

typedef struct worker {
  pthread_t th;
  int index;
  const char *path;
  tl_http_fn http; /* NULL: libcurl */
  void *http_ud;
  int ok, failed;
  char first_failure[1200];
} worker;

static void *work(void *arg)
{
  worker *w = arg;
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, w->path, 0, &err) != TL_OK) {
    snprintf(w->first_failure, sizeof w->first_failure, "open: %s", err.message);
    w->failed = CALLS;
    return NULL;
  }
  char profile[16];
  snprintf(profile, sizeof profile, "p%d", w->index % NPROFILES);
  tl_store_set_actor(s, profile, "threads");
  if (w->http)
    tl_store_set_transport(s, w->http, w->http_ud);
  for (int i = 0; i < CALLS; i++) {
    tl_token *t = NULL;
    tl_error_clear(&err);
    tl_status rc = tl_token_get(&t, s, profile, "nous", TL_REFRESH_FORCE, &err);
    if (rc == TL_OK && t && t->access_token) {
      w->ok++;
    } else {
      if (!w->failed++)
        snprintf(w->first_failure, sizeof w->first_failure, "%s: %s", tl_status_name(rc), err.message);
    }
    tl_token_free(t);
  }
  tl_store_free(s);
  return NULL;
}

static void run_workers(worker *w, const char *path, tl_http_fn http, void *ud)
{
  for (int i = 0; i < NTHREADS; i++) {
    w[i] = (worker){.index = i, .path = path, .http = http, .http_ud = ud};
    assert_int_equal(pthread_create(&w[i].th, NULL, work, &w[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) {
    assert_int_equal(pthread_join(w[i].th, NULL), 0);
    if (w[i].failed)
      fail_msg("thread %d: %d of %d calls failed, first: %s", i, w[i].failed, CALLS, w[i].first_failure);
    assert_int_equal(w[i].ok, CALLS);
  }
}

/* Every grant has one live RT in the ledger; nothing was lost or left in flight. */
static void assert_ledger_consistent(tl_store *s, int rotations)
{
  assert_int_equal(fx_int(s, "SELECT count(*) FROM refresh_token WHERE state = 'rotated'"), rotations);
  assert_int_equal(fx_int(s, "SELECT count(*) FROM refresh_token WHERE state = 'current'"), NPROFILES);
  assert_int_equal(fx_int(s, "SELECT count(*) FROM refresh_attempt WHERE outcome IN ('in_flight', 'unknown')"), 0);
  assert_int_equal(fx_int(s, "SELECT count(*) FROM audit_event WHERE event LIKE '%reuse%'"), 0);
  assert_int_equal(fx_int(s, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
}

/* ---- the cases ------------------------------------------------------------ */

typedef struct solo {
  pthread_t th;
  char dir[300];
  int ok;
  char why[1200];
} solo;

/* A whole life cycle on a ledger of its own, with failures on a reused error struct. */
static void *solo_life(void *arg)
{
  solo *o = arg;
  char path[400];
  tl_store *s = NULL;
  tl_error err = {0};
  tl_report *r = NULL;
  tl_token *t = NULL;
  server sv = {.mu = PTHREAD_MUTEX_INITIALIZER};
  snprintf(path, sizeof path, "%s/ledger.db", o->dir);
  snprintf(sv.live[0], sizeof sv.live[0], "solo-rt-0");
  tl_credential_spec spec = {.provider = "nous", .profile = "p0", .refresh_token = "solo-rt-0"};
  if (tl_store_open(&s, path, TL_OPEN_CREATE, &err) != TL_OK || tl_profile_add(s, "p0", NULL, &err) != TL_OK ||
      tl_credential_add(NULL, s, &spec, &err) != TL_OK) {
    snprintf(o->why, sizeof o->why, "set up: %s", err.message);
    goto done;
  }
  tl_store_set_transport(s, rotate, &sv);
  for (int i = 0; i < CALLS; i++) {
    tl_error_clear(&err);
    if (tl_token_get(&t, s, "p0", "nous", TL_REFRESH_FORCE, &err) != TL_OK) {
      snprintf(o->why, sizeof o->why, "token %d: %s", i, err.message);
      goto done;
    }
    tl_token_free(t);
    t = NULL;
    tl_error_clear(&err);
    if (tl_status_report(&r, s, "nobody", &err) != TL_ENOTFOUND || !strstr(err.message, "nobody")) {
      snprintf(o->why, sizeof o->why, "status of a missing profile: %s", err.message);
      goto done;
    }
    tl_error_clear(&err);
    if (tl_lineage_report(&r, s, 0, &err) != TL_OK || tl_report_rows(r) != (size_t)i + 2) {
      snprintf(o->why, sizeof o->why, "lineage after %d rotations: %s", i + 1, err.message);
      goto done;
    }
    tl_report_free(r);
    r = NULL;
  }
  o->ok = sv.rotations == CALLS && sv.reuse == 0;
  if (!o->ok)
    snprintf(o->why, sizeof o->why, "%d rotations, %d reuses", sv.rotations, sv.reuse);
done:
  tl_report_free(r);
  tl_token_free(t);
  tl_store_free(s);
  return NULL;
}

static void test_threads__each_thread_with_its_own_ledger(void **state)
{
  fx *f = *state;
  solo o[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    memset(&o[i], 0, sizeof o[i]);
    snprintf(o[i].dir, sizeof o[i].dir, "%s/solo%d", f->dir, i);
    assert_int_equal(pthread_create(&o[i].th, NULL, solo_life, &o[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) {
    assert_int_equal(pthread_join(o[i].th, NULL), 0);
    if (!o[i].ok)
      fail_msg("thread %d: %s", i, o[i].why);
  }
}

static void test_threads__stores_per_thread_on_one_ledger_never_reuse_a_token(void **state)
{
  fx *f = *state;
  server sv = {.mu = PTHREAD_MUTEX_INITIALIZER};
  assert_true(sqlite3_threadsafe() != 0);
  for (int i = 0; i < NPROFILES; i++) {
    char profile[16];
    snprintf(profile, sizeof profile, "p%d", i);
    snprintf(sv.live[i], sizeof sv.live[i], "thr-rt-seed-%d", i);
    fx_credential(f->s, profile, sv.live[i]);
  }
  worker w[NTHREADS];
  run_workers(w, f->path, rotate, &sv);
  assert_int_equal(sv.reuse, 0);
  assert_true(sv.rotations >= 1);
  assert_int_equal(sv.requests, sv.rotations);
  assert_ledger_consistent(f->s, sv.rotations);
}

/* ---- against the real portal, through libcurl ----------------------------- */

static pid_t g_portal;
static char g_url[64];

static int portal_start(const char *dir)
{
  char bin[4096], opt[] = "--port-file", port_file[300];
  snprintf(bin, sizeof bin, "%s", getenv("TL_PORTAL"));
  snprintf(port_file, sizeof port_file, "%s/port", dir);
  char *argv[] = {bin, opt, port_file, NULL};
  if (posix_spawn(&g_portal, bin, NULL, NULL, argv, environ) != 0)
    return -1;
  for (int i = 0; i < 200; i++) {
    size_t n = 0;
    char *port = fx_slurp(port_file, &n);
    if (port && n) {
      snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d", atoi(port));
      free(port);
      return 0;
    }
    free(port);
    struct timespec ts = {0, 25000000};
    nanosleep(&ts, NULL);
  }
  return -1;
}

static int portal_teardown(void **state)
{
  if (g_portal > 0) {
    kill(g_portal, SIGTERM);
    waitpid(g_portal, NULL, 0);
    g_portal = 0;
  }
  return fx_teardown(state);
}

static int64_t portal_counter(const char *name)
{
  json_t *c = portal_call(g_url, "/admin/counters", NULL, NULL);
  int64_t v = json_is_integer(json_object_get(c, name)) ? json_integer_value(json_object_get(c, name)) : -1;
  json_decref(c);
  return v;
}

static void test_threads__curl_in_many_threads_against_the_portal(void **state)
{
  fx *f = *state;
  if (!getenv("TL_PORTAL")) {
    printf("skipped: TL_PORTAL does not name tl-portal\n");
    return;
  }
  assert_int_equal(portal_start(f->dir), 0);
  char token_url[128];
  snprintf(token_url, sizeof token_url, "%s/api/oauth/token", g_url);
  tl_provider p = {.name = "nous", .token_url = token_url, .skew_s = -1, .grace_s = -1};
  tl_error err = {0};
  assert_int_equal(tl_provider_set(f->s, &p, &err), TL_OK);
  for (int i = 0; i < NPROFILES; i++) {
    char profile[16];
    snprintf(profile, sizeof profile, "p%d", i);
    json_t *seed = portal_call(g_url, "/admin/seed", "", NULL);
    const char *rt = json_string_value(json_object_get(seed, "refresh_token"));
    assert_non_null(rt);
    fx_credential(f->s, profile, rt);
    json_decref(seed);
  }
  worker w[NTHREADS];
  run_workers(w, f->path, NULL, NULL);
  int64_t refreshes = portal_counter("refreshes");
  assert_int_equal(portal_counter("reuse_detections"), 0);
  assert_int_equal(portal_counter("families_revoked"), 0);
  assert_true(refreshes >= 1);
  assert_ledger_consistent(f->s, (int)refreshes);
}

int main(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT); /* for the test's own portal client; the library does its own */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_threads__each_thread_with_its_own_ledger, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_threads__stores_per_thread_on_one_ledger_never_reuse_a_token, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_threads__curl_in_many_threads_against_the_portal, fx_setup, portal_teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
