/*
 * bench.c - tl-bench, every performance budget of SPEC section 7 measured
 * beside its reference, in one run, on the same machine and files.
 *
 *   1. hot path: tl_token_get with a valid token vs a raw indexed point read
 *   2. refresh overhead without HTTP (canned answers through the seam) vs one
 *      raw durable BEGIN IMMEDIATE commit; durable commits per rotation counted
 *   3. single-flight: K processes on one expired credential vs the portal count
 *   4. contention: N processes x 16 profiles against the loopback portal vs the
 *      portal's capacity measured by clients that do no store work
 *   5. the auth.json + flock alternative, reads and rotations side by side
 *   6. `tokenledger token` as a whole process vs the sqlite3 shell
 *   7. growth: bytes per rotation, and what `compact` reclaims
 *   8. strict mode: `tokenledger serve` answering a refresh POST while the
 *      access token is fresh (p50/p99, and answers/s with 16 clients), beside
 *      tl-portal answering the same POST
 *   9. Hermes alongside: with keep-fresh --watch running, the time until a
 *      rotation Hermes writes into one profile reaches every sibling file and
 *      the shared store
 *  10. import cost: a file of 1000 pool rows (import, and a sync adopting 1000
 *      rotations), a root of 10k profiles (time, peak RSS, 100k by a line)
 *  11. the local agent (serve's <ledger>-agent): tl_token_get through the socket
 *      beside the local hot path, and `tokenledger token` as a process with and
 *      without the agent (TOKENLEDGER_AGENT=off), all against one running serve
 * TL_BENCH_ONLY picks sections by their digit ("0" for 10, "a" for 11).
 *
 * Usage: tl-bench [--quick] [--json FILE] [--dir DIR]
 * The portal (tl-portal) and the CLI (tokenledger) are found beside tl-bench.
 * Timings live here only; the test suite runs --quick to prove this works.
 */
#include "internal.h"
#include "portal_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int quick;
static char dir[PATH_MAX], bindir[PATH_MAX], portal_url[128];
static pid_t portal_pid;
static pid_t long_child; /* keep-fresh --watch or serve while a section runs */
static json_t *results;

static int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const tl_error *err)
{
  fprintf(stderr, "tl-bench: %s: %s\n", what, err ? err->message : strerror(errno));
  if (long_child > 0)
    kill(long_child, SIGTERM);
  if (portal_pid > 0)
    kill(portal_pid, SIGTERM);
  exit(1);
}

static int cmp_i64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static int64_t pct(int64_t *v, size_t n, double p)
{
  if (!n)
    return 0;
  qsort(v, n, sizeof *v, cmp_i64);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

/* Forks a worker; its pid is kept so only workers are waited for (the portal is a child too). */
static pid_t workers[128];
static int nworkers;
static pid_t spawn(void)
{
  pid_t p = fork();
  if (p > 0 && nworkers < 128)
    workers[nworkers++] = p;
  return p;
}

static void wait_workers(void)
{
  for (int i = 0; i < nworkers; i++)
    waitpid(workers[i], NULL, 0);
  nworkers = 0;
}

static void record(const char *section, json_t *obj)
{
  json_object_set_new(results, section, obj);
}

/* ---- portal and HTTP helpers ---------------------------------------------------- */

static json_t *http(const char *path, const char *body, const char *rt)
{
  return portal_call(portal_url, path, body, rt);
}

static int64_t counter(const char *name)
{
  json_t *j = http("/admin/counters", NULL, NULL);
  int64_t v = (int64_t)json_integer_value(json_object_get(j, name));
  json_decref(j);
  return v;
}

static char *seed_rt(void)
{
  json_t *j = http("/admin/seed", "", NULL);
  char *rt = tl__strdup(json_string_value(json_object_get(j, "refresh_token")));
  json_decref(j);
  return rt;
}

static void start_portal(void)
{
  char path[PATH_MAX + 32], pf[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/tl-portal", bindir);
  snprintf(pf, sizeof pf, "%s/portal.port", dir);
  portal_pid = fork();
  if (portal_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl(path, path, "--port-file", pf, "--at-lifetime", "3600", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200; i++) {
    FILE *f = fopen(pf, "r");
    int port = 0;
    if (f && fscanf(f, "%d", &port) == 1 && port > 0) {
      fclose(f);
      snprintf(portal_url, sizeof portal_url, "http://127.0.0.1:%d", port);
      return;
    }
    if (f)
      fclose(f);
    usleep(20000);
  }
  die("portal did not start", NULL);
}

static tl_store *open_store(const char *name, unsigned flags)
{
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, path, flags, &err) != TL_OK)
    die(name, &err);
  tl_store_set_actor(s, NULL, "bench");
  return s;
}

/* Instant canned answers: a new RT every time, numbered per process. */
static int canned(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  (void)req;
  static unsigned long n;
  char body[256];
  snprintf(body, sizeof body,
           "{\"access_token\":\"at-%ld-%lu\",\"refresh_token\":\"rt-%s-%ld-%lu\",\"expires_in\":3600}", (long)getpid(),
           n, (const char *)ud, (long)getpid(), n);
  n++;
  resp->failure = TL_HTTP_DONE;
  resp->status = 200;
  resp->body = strdup(body);
  resp->body_len = strlen(body);
  resp->retry_after = -1;
  return 0;
}

/* Times the real transport, to split store time from HTTP time. */
static int64_t http_ns;
static int timed_curl(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  int64_t t = now_ns();
  int rc = tl__curl_post(ud, req, resp);
  http_ns += now_ns() - t;
  return rc;
}

static void add_credential(tl_store *s, const char *profile, const char *rt, const char *token_url)
{
  tl_error err = {0};
  tl_status rc = tl_profile_add(s, profile, NULL, &err);
  if (rc != TL_OK && rc != TL_EEXISTS)
    die("profile", &err);
  tl_credential_spec spec = {.provider = "nous", .profile = profile, .refresh_token = rt, .token_url = token_url};
  if (tl_credential_add(NULL, s, &spec, &err) != TL_OK)
    die("credential", &err);
}

/* ---- 1. hot path ------------------------------------------------------------------- */

static void bench_hot(void)
{
  int profiles = quick ? 1000 : 10000, per = 10, gens = 20;
  int creds = profiles * per / 2; /* every credential is in two profiles' pools */
  tl_store *s = open_store("hot.db", TL_OPEN_CREATE);
  int64_t t0 = now_ns();
  tl_error err = {0};
  tl__exec(s, "PRAGMA synchronous=OFF; BEGIN IMMEDIATE;", &err);
  sqlite3_stmt *pst, *cst, *est, *rst;
  sqlite3_prepare_v2(tl__store_db(s), "INSERT INTO profile (id, name, created_at) VALUES (?1, 'p' || ?1, 0)", -1, &pst,
                     NULL);
  sqlite3_prepare_v2(tl__store_db(s),
                     "INSERT INTO credential (id, provider, client_id, token_url, access_token, expires_at, "
                     "created_at, updated_at) VALUES (?1, 'nous', 'hermes-cli', 'https://portal.example/t', "
                     "'at-' || ?1 || '-eyJhbGciOiJSUzI1NiJ9.payload.signature', 4102444800000, 0, 0)",
                     -1, &cst, NULL);
  sqlite3_prepare_v2(tl__store_db(s),
                     "INSERT INTO pool_entry (profile_id, provider, credential_id, entry_id, priority, source) "
                     "VALUES (?1, 'nous', ?2, printf('%06x', ?3), ?4, 'device_code')",
                     -1, &est, NULL);
  sqlite3_prepare_v2(tl__store_db(s),
                     "INSERT INTO refresh_token (id, credential_id, parent_id, family_id, generation, fingerprint, "
                     "state, origin, secret, issued_at, retired_at) VALUES (?1, ?2, ?3, ?4, ?5, printf('%064x', ?1), "
                     "?6, ?7, ?8, 0, ?9)",
                     -1, &rst, NULL);
  for (int p = 1; p <= profiles; p++) {
    sqlite3_bind_int(pst, 1, p);
    sqlite3_step(pst);
    sqlite3_reset(pst);
  }
  int64_t rtid = 0;
  for (int c = 1; c <= creds; c++) {
    sqlite3_bind_int(cst, 1, c);
    sqlite3_step(cst);
    sqlite3_reset(cst);
    int64_t root = rtid + 1;
    for (int g = 0; g < gens; g++) {
      rtid++;
      int last = g == gens - 1;
      sqlite3_bind_int64(rst, 1, rtid);
      sqlite3_bind_int(rst, 2, c);
      if (g) {
        sqlite3_bind_int64(rst, 3, rtid - 1);
        sqlite3_bind_int64(rst, 4, root);
      } else {
        sqlite3_bind_null(rst, 3);
        sqlite3_bind_null(rst, 4);
      }
      sqlite3_bind_int(rst, 5, g);
      sqlite3_bind_text(rst, 6, last ? "current" : "rotated", -1, SQLITE_STATIC);
      sqlite3_bind_text(rst, 7, g ? "refresh" : "import", -1, SQLITE_STATIC);
      if (last)
        sqlite3_bind_text(rst, 8, "rt-secret", -1, SQLITE_STATIC);
      else
        sqlite3_bind_null(rst, 8);
      if (last)
        sqlite3_bind_null(rst, 9);
      else
        sqlite3_bind_int(rst, 9, 1);
      if (sqlite3_step(rst) != SQLITE_DONE)
        die(sqlite3_errmsg(tl__store_db(s)), NULL);
      sqlite3_reset(rst);
    }
  }
  for (int p = 1, k = 0; p <= profiles; p++)
    for (int e = 0; e < per; e++, k++) {
      int c = (k % creds) + 1;
      sqlite3_bind_int(est, 1, p);
      sqlite3_bind_int(est, 2, c);
      sqlite3_bind_int(est, 3, k);
      sqlite3_bind_int(est, 4, e);
      sqlite3_step(est);
      sqlite3_reset(est);
    }
  sqlite3_finalize(pst);
  sqlite3_finalize(cst);
  sqlite3_finalize(est);
  sqlite3_finalize(rst);
  tl__exec(s, "COMMIT; ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);", &err);
  double build_s = (double)(now_ns() - t0) / 1e9;
  tl_store_free(s);

  s = open_store("hot.db", 0);
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/hot.db", dir);
  sqlite3 *raw = NULL;
  sqlite3_open_v2(path, &raw, SQLITE_OPEN_READWRITE, NULL);
  sqlite3_stmt *q = NULL;
  sqlite3_prepare_v3(raw, "SELECT access_token, expires_at FROM credential WHERE id = ?1", -1,
                     SQLITE_PREPARE_PERSISTENT, &q, NULL);
  int n = quick ? 20000 : 200000;
  int64_t *ours = malloc(sizeof(int64_t) * (size_t)n), *ref = malloc(sizeof(int64_t) * (size_t)n);
  char name[32], copy[256];
  srand(7);
  for (int i = 0; i < 2000; i++) { /* warm both */
    snprintf(name, sizeof name, "p%d", rand() % profiles + 1);
    tl_token *t = NULL;
    tl_token_get(&t, s, name, "nous", 0, &err);
    tl_token_free(t);
  }
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "p%d", rand() % profiles + 1);
    tl_token *t = NULL;
    int64_t a = now_ns();
    tl_status rc = tl_token_get(&t, s, name, "nous", 0, &err);
    ours[i] = now_ns() - a;
    if (rc != TL_OK || t->refreshed)
      die("hot path", &err);
    tl_token_free(t);
    int id = rand() % creds + 1;
    a = now_ns();
    sqlite3_bind_int(q, 1, id);
    if (sqlite3_step(q) == SQLITE_ROW) {
      const unsigned char *v = sqlite3_column_text(q, 0);
      snprintf(copy, sizeof copy, "%s", v);
    }
    sqlite3_reset(q);
    ref[i] = now_ns() - a;
  }
  /* After another connection commits (any change, here a provider's updated_at), the next call reads the ledger
   * again: the cost of the answer that is not kept. */
  int nfirst = quick ? 2000 : 20000;
  int64_t *first = malloc(sizeof(int64_t) * (size_t)nfirst), *cold = malloc(sizeof(int64_t) * (size_t)nfirst);
  sqlite3 *writer = NULL;
  sqlite3_open_v2(path, &writer, SQLITE_OPEN_READWRITE, NULL);
  sqlite3_exec(writer, "PRAGMA synchronous=OFF", NULL, NULL, NULL);
  for (int i = 0; i < nfirst; i++) {
    sqlite3_exec(writer, "UPDATE provider SET updated_at = updated_at + 1 WHERE name = 'nous'", NULL, NULL, NULL);
    snprintf(name, sizeof name, "p%d", rand() % profiles + 1);
    tl_token *t = NULL;
    int64_t a = now_ns();
    if (tl_token_get(&t, s, name, "nous", 0, &err) != TL_OK)
      die("hot path after a commit", &err);
    first[i] = now_ns() - a;
    tl_token_free(t);
    sqlite3_exec(writer, "UPDATE provider SET updated_at = updated_at + 1 WHERE name = 'nous'", NULL, NULL, NULL);
    a = now_ns(); /* the reference after a commit elsewhere: its page cache is gone too */
    sqlite3_bind_int(q, 1, rand() % creds + 1);
    if (sqlite3_step(q) == SQLITE_ROW)
      snprintf(copy, sizeof copy, "%s", sqlite3_column_text(q, 0));
    sqlite3_reset(q);
    cold[i] = now_ns() - a;
  }
  sqlite3_close(writer);
  sqlite3_finalize(q);
  sqlite3_close(raw);
  tl_store_free(s);
  int64_t o50 = pct(ours, (size_t)n, 0.5), o99 = pct(ours, (size_t)n, 0.99);
  int64_t r50 = pct(ref, (size_t)n, 0.5), r99 = pct(ref, (size_t)n, 0.99);
  int64_t f50 = pct(first, (size_t)nfirst, 0.5), f99 = pct(first, (size_t)nfirst, 0.99);
  int64_t c50 = pct(cold, (size_t)nfirst, 0.5), c99 = pct(cold, (size_t)nfirst, 0.99);
  free(cold);
  free(ours);
  free(ref);
  free(first);
  double ratio = (double)o50 / (double)r50, fratio = (double)f50 / (double)c50;
  printf("1. hot path (%d profiles, %d pool entries, %d lineage rows; built in %.1f s)\n", profiles, profiles * per,
         creds * gens, build_s);
  printf("   tl_token_get, valid token     p50 %7lld ns  p99 %7lld ns\n", (long long)o50, (long long)o99);
  printf("   raw indexed point read        p50 %7lld ns  p99 %7lld ns\n", (long long)r50, (long long)r99);
  printf("   ratio p50 %.2fx (budget <= 1.5x) %s\n", ratio, ratio <= 1.5 ? "MET" : "MISSED");
  printf("   after a commit elsewhere: tl_token_get p50 %lld ns p99 %lld ns, raw point read p50 %lld ns p99 %lld ns "
         "(%.2fx; both read the ledger again)\n\n",
         (long long)f50, (long long)f99, (long long)c50, (long long)c99, fratio);
  record("hot_path",
         json_pack("{s:i, s:i, s:i, s:f, s:I, s:I, s:I, s:I, s:f, s:b, s:I, s:I, s:I, s:f}", "profiles", profiles,
                   "pool_entries", profiles * per, "lineage_rows", creds * gens, "build_s", build_s, "token_get_p50_ns",
                   (json_int_t)o50, "token_get_p99_ns", (json_int_t)o99, "raw_read_p50_ns", (json_int_t)r50,
                   "raw_read_p99_ns", (json_int_t)r99, "ratio", ratio, "met", ratio <= 1.5, "after_commit_p50_ns",
                   (json_int_t)f50, "after_commit_p99_ns", (json_int_t)f99, "after_commit_raw_p50_ns", (json_int_t)c50,
                   "after_commit_ratio", fratio));
}

/* ---- 2. refresh overhead ------------------------------------------------------------ */

static int commits;
static int count_commit(void *ud)
{
  (void)ud;
  commits++;
  return 0;
}

static void bench_refresh(void)
{
  tl_store *s = open_store("refresh.db", TL_OPEN_CREATE);
  add_credential(s, "r", "rt-refresh-root", NULL);
  tl_store_set_transport(s, canned, "r");
  int n = quick ? 200 : 1000;
  tl_error err = {0};
  int64_t *v = malloc(sizeof(int64_t) * (size_t)n);
  sqlite3_commit_hook(tl__store_db(s), count_commit, NULL);
  for (int i = 0; i < n; i++) {
    tl_token *t = NULL;
    int64_t a = now_ns();
    if (tl_refresh(&t, s, 1, TL_REFRESH_FORCE, &err) != TL_OK)
      die("refresh", &err);
    v[i] = now_ns() - a;
    tl_token_free(t);
  }
  sqlite3_commit_hook(tl__store_db(s), NULL, NULL);
  double per_refresh = (double)commits / n;
  int64_t o50 = pct(v, (size_t)n, 0.5), o99 = pct(v, (size_t)n, 0.99);
  tl_store_free(s);
  /* The reference: one durable commit on the same file, as SQLite does it. */
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/refresh.db", dir);
  sqlite3 *raw = NULL;
  sqlite3_open_v2(path, &raw, SQLITE_OPEN_READWRITE, NULL);
  sqlite3_exec(raw, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS bench_ref (x)", NULL,
               NULL, NULL);
  sqlite3_stmt *ins = NULL;
  sqlite3_prepare_v2(raw, "INSERT INTO bench_ref VALUES (?1)", -1, &ins, NULL);
  for (int i = 0; i < n; i++) {
    int64_t a = now_ns();
    sqlite3_exec(raw, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    sqlite3_bind_int(ins, 1, i);
    sqlite3_step(ins);
    sqlite3_reset(ins);
    sqlite3_exec(raw, "COMMIT", NULL, NULL, NULL);
    v[i] = now_ns() - a;
  }
  sqlite3_finalize(ins);
  sqlite3_close(raw);
  int64_t r50 = pct(v, (size_t)n, 0.5), r99 = pct(v, (size_t)n, 0.99);
  free(v);
  double ratio = (double)o50 / (double)r50;
  int met = per_refresh <= 2.0 + 1e-9;
  printf("2. refresh overhead without HTTP (%d rotations, canned answers)\n", n);
  printf("   tl_refresh                    p50 %7.1f us  p99 %7.1f us  durable commits/rotation %.2f\n", o50 / 1e3,
         o99 / 1e3, per_refresh);
  printf("   one raw durable commit        p50 %7.1f us  p99 %7.1f us\n", r50 / 1e3, r99 / 1e3);
  printf("   ratio p50 %.2f commits' worth (budget <= 2 durable commits) %s\n\n", ratio, met ? "MET" : "MISSED");
  record("refresh_overhead", json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:b}", "rotations", n, "p50_us", o50 / 1e3,
                                       "p99_us", o99 / 1e3, "raw_commit_p50_us", r50 / 1e3, "raw_commit_p99_us",
                                       r99 / 1e3, "commits_per_rotation", per_refresh, "ratio", ratio, "met", met));
}

/* ---- 3. single-flight ---------------------------------------------------------------- */

static void bench_singleflight(void)
{
  tl_store *s = open_store("sf.db", TL_OPEN_CREATE);
  char url[200];
  snprintf(url, sizeof url, "%s/api/oauth/token", portal_url);
  char *rt = seed_rt();
  add_credential(s, "sf", rt, url);
  tl_secret_free(rt);
  json_decref(http("/admin/config", "latency_ms=50", NULL));
  json_t *rows = json_array();
  int ks[] = {2, 8, 32};
  int rounds = quick ? 2 : 5;
  printf("3. single-flight (portal latency 50 ms, %d rounds per K)\n", rounds);
  int all_met = 1;
  for (size_t ki = 0; ki < 3; ki++) {
    int k = ks[ki];
    int64_t *waits = malloc(sizeof(int64_t) * (size_t)(k * rounds));
    size_t nw = 0;
    int64_t before = counter("refreshes");
    for (int r = 0; r < rounds; r++) {
      tl_error err = {0};
      tl__exec(s, "UPDATE credential SET expires_at = 1", &err);
      int gate[2], res[2];
      if (pipe(gate) || pipe(res))
        die("pipe", NULL);
      for (int c = 0; c < k; c++) {
        if (spawn() == 0) {
          close(gate[1]);
          close(res[0]);
          tl_store *cs = open_store("sf.db", 0);
          char x;
          if (read(gate[0], &x, 1) < 0)
            _exit(2);
          tl_token *t = NULL;
          tl_error e2 = {0};
          int64_t a = now_ns();
          tl_status rc = tl_token_get(&t, cs, "sf", "nous", 0, &e2);
          int64_t w = rc == TL_OK ? now_ns() - a : -1;
          tl_token_free(t);
          tl_store_free(cs);
          if (write(res[1], &w, sizeof w) != sizeof w)
            _exit(3);
          _exit(rc == TL_OK ? 0 : 1);
        }
      }
      close(gate[0]);
      close(res[1]);
      usleep(200000);
      close(gate[1]);
      int64_t w;
      while (read(res[0], &w, sizeof w) == sizeof w)
        if (w >= 0)
          waits[nw++] = w;
      close(res[0]);
      wait_workers();
    }
    int64_t refreshes = counter("refreshes") - before;
    double per = (double)refreshes / rounds;
    int met = refreshes == rounds && nw == (size_t)(k * rounds);
    all_met &= met;
    int64_t p50 = pct(waits, nw, 0.5), p99 = pct(waits, nw, 0.99);
    printf("   K=%-3d refreshes per rotation %.2f (must be 1.00)  wait p50 %6.1f ms  p99 %6.1f ms  %s\n", k, per,
           p50 / 1e6, p99 / 1e6, met ? "MET" : "MISSED");
    json_array_append_new(rows, json_pack("{s:i, s:f, s:f, s:f, s:b}", "k", k, "refreshes_per_rotation", per,
                                          "wait_p50_ms", p50 / 1e6, "wait_p99_ms", p99 / 1e6, "met", met));
    free(waits);
  }
  printf("\n");
  json_decref(http("/admin/config", "latency_ms=0", NULL));
  tl_store_free(s);
  record("single_flight", json_pack("{s:o, s:b}", "rows", rows, "met", all_met));
}

/* ---- 4. contention ------------------------------------------------------------------ */

typedef struct slot {
  int64_t calls, total_ns, http_ns;
} slot;

static void bench_contention(void)
{
  int ns[] = {1, 4, 16, 64};
  int nn = quick ? 3 : 4;
  double secs = quick ? 1.5 : 4.0;
  char url[200];
  snprintf(url, sizeof url, "%s/api/oauth/token", portal_url);
  tl_store *s = open_store("contention.db", TL_OPEN_CREATE);
  for (int p = 0; p < 64; p++) {
    char name[16];
    snprintf(name, sizeof name, "c%d", p);
    char *rt = seed_rt();
    add_credential(s, name, rt, url);
    tl_secret_free(rt);
  }
  tl_store_free(s);
  slot *sh = mmap(NULL, sizeof(slot) * 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  json_t *rows = json_array();
  printf("4. contention: N processes, 64 profiles (each process its own), forced refreshes against the loopback "
         "portal, %.1f s each\n",
         secs);
  int all_met = 1, realistic_met = 1;
  int latencies[] = {0, 20};
  for (int li = 0; li < 2; li++) {
    int latency = latencies[li];
    char cfg[64];
    snprintf(cfg, sizeof cfg, "latency_ms=%d", latency);
    json_decref(http("/admin/config", cfg, NULL));
    printf("   portal answering %s:\n",
           latency ? "after 20 ms (a fast real endpoint)" : "at once (no durable work of its own)");
    for (int ni = 0; ni < nn; ni++) {
      int n = ns[ni];
      /* The portal's own capacity: clients that keep RT chains in memory, no store. */
      int64_t before = counter("refreshes");
      for (int c = 0; c < n; c++) {
        if (spawn() == 0) {
          char *rt = seed_rt();
          int64_t end = now_ns() + (int64_t)(secs * 1e9);
          while (rt && now_ns() < end) {
            json_t *j = http("/api/oauth/token", "grant_type=refresh_token&client_id=hermes-cli", rt);
            free(rt);
            rt = tl__strdup(json_string_value(json_object_get(j, "refresh_token")));
            json_decref(j);
          }
          free(rt);
          _exit(0);
        }
      }
      wait_workers();
      double capacity = (double)(counter("refreshes") - before - n) / secs; /* minus the seeds */
      memset(sh, 0, sizeof(slot) * 64);
      before = counter("refreshes");
      for (int c = 0; c < n; c++) {
        if (spawn() == 0) {
          tl_store *cs = open_store("contention.db", 0);
          tl_store_set_transport(cs, timed_curl, NULL);
          http_ns = 0;
          int64_t start = now_ns(), end = start + (int64_t)(secs * 1e9);
          int64_t calls = 0;
          /* Worker c owns the profiles p with p % N == c: disjoint, so it never waits for a peer's refresh of
           * the same grant (that would be single-flight, section 3, not contention). */
          int mine = 64 / n;
          for (int i = 0; now_ns() < end; i++) {
            char name[16];
            snprintf(name, sizeof name, "c%d", c + n * (i % mine));
            int64_t cred = 0;
            tl_error e2 = {0};
            if (tl_credential_find(&cred, cs, name, "nous", &e2) == TL_OK)
              tl_refresh(NULL, cs, cred, TL_REFRESH_FORCE, &e2);
            calls++;
          }
          sh[c].calls = calls;
          sh[c].total_ns = now_ns() - start;
          sh[c].http_ns = http_ns;
          tl_store_free(cs);
          _exit(0);
        }
      }
      wait_workers();
      double ours = (double)(counter("refreshes") - before) / secs;
      int64_t total = 0, httpt = 0;
      for (int c = 0; c < n; c++) {
        total += sh[c].total_ns;
        httpt += sh[c].http_ns;
      }
      double store_share = total ? 1.0 - (double)httpt / (double)total : 0;
      double ratio = capacity > 0 ? ours / capacity : 0;
      int met = ratio >= 0.8;
      if (latency)
        realistic_met &= met;
      else
        all_met &= met;
      printf("     N=%-3d tokenledger %7.0f rotations/s  portal capacity %7.0f/s  ratio %5.1f%%  time in store %4.1f%% "
             " %s\n",
             n, ours, capacity, ratio * 100, store_share * 100,
             !latency ? "(no budget)"
             : met    ? "MET"
                      : "MISSED");
      json_array_append_new(rows, json_pack("{s:i, s:i, s:f, s:f, s:f, s:f, s:b}", "portal_latency_ms", latency, "n", n,
                                            "rotations_per_s", ours, "portal_capacity_per_s", capacity, "ratio", ratio,
                                            "store_time_share", store_share, "met", met));
    }
  }
  json_decref(http("/admin/config", "latency_ms=0", NULL));
  printf("\n");
  munmap(sh, sizeof(slot) * 64);
  record("contention", json_pack("{s:o, s:b, s:b}", "rows", rows, "met_against_instant_portal", all_met,
                                 "met_against_20ms_portal", realistic_met));
}

/* ---- 5. the auth.json + flock alternative --------------------------------------------- */

static int flock_read(const char *file, const char *lock)
{
  int fd = open(lock, O_RDWR | O_CREAT, 0600);
  if (fd < 0 || flock(fd, LOCK_EX) != 0)
    return -1;
  json_t *j = json_load_file(file, 0, NULL);
  const char *at =
      json_string_value(json_object_get(json_object_get(json_object_get(j, "providers"), "nous"), "access_token"));
  int ok = at && strlen(at) > 0;
  json_decref(j);
  flock(fd, LOCK_UN);
  close(fd);
  return ok ? 0 : -1;
}

static int flock_rotate(const char *file, const char *lock, long n)
{
  int fd = open(lock, O_RDWR | O_CREAT, 0600);
  if (fd < 0 || flock(fd, LOCK_EX) != 0)
    return -1;
  json_t *j = json_load_file(file, 0, NULL);
  json_t *nous = json_object_get(json_object_get(j, "providers"), "nous");
  char v[64], tmp[PATH_MAX + 64];
  snprintf(v, sizeof v, "rt-%ld-%ld", (long)getpid(), n);
  json_object_set_new(nous, "refresh_token", json_string(v));
  snprintf(v, sizeof v, "at-%ld-%ld", (long)getpid(), n);
  json_object_set_new(nous, "access_token", json_string(v));
  char *text = json_dumps(j, JSON_INDENT(2));
  json_decref(j);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", file, (long)getpid());
  int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  int rc = -1;
  if (out >= 0 && write(out, text, strlen(text)) == (ssize_t)strlen(text) && fsync(out) == 0) {
    close(out);
    out = -1;
    if (rename(tmp, file) == 0) {
      int d = open(dir, O_RDONLY | O_DIRECTORY);
      if (d >= 0) {
        fsync(d);
        close(d);
      }
      rc = 0;
    }
  }
  if (out >= 0)
    close(out);
  free(text);
  flock(fd, LOCK_UN);
  close(fd);
  return rc;
}

static void bench_alternative(void)
{
  int ns[] = {1, 4, 16};
  double secs = quick ? 1.0 : 3.0;
  tl_store *s = open_store("alt.db", TL_OPEN_CREATE);
  for (int p = 0; p < 16; p++) {
    char name[16], file[PATH_MAX + 32], rt[32];
    snprintf(name, sizeof name, "a%d", p);
    snprintf(rt, sizeof rt, "rt-alt-root-%d", p);
    add_credential(s, name, rt, NULL);
    snprintf(file, sizeof file, "%s/auth-%d.json", dir, p);
    json_t *doc = json_pack("{s:i, s:{s:{s:s, s:s, s:s}}}", "version", 1, "providers", "nous", "access_token",
                            "at-initial-eyJhbGciOiJSUzI1NiJ9.payload.signature", "refresh_token", rt, "expires_at",
                            "2099-01-01T00:00:00+00:00");
    json_dump_file(doc, file, JSON_INDENT(2));
    json_decref(doc);
  }
  tl_error err = {0};
  tl__exec(s, "UPDATE credential SET access_token = 'at-initial', expires_at = 4102444800000", &err);
  tl_store_free(s);
  slot *sh = mmap(NULL, sizeof(slot) * 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  json_t *rows = json_array();
  printf("5. the alternative users have today: auth.json files with flock'ed read-modify-write and fsync'd rename\n");
  printf("   (rotations without HTTP: canned answers for tokenledger, a local rewrite for auth.json; budgets: reads "
         ">= 5x, rotations >= 1.0x)\n");
  int reads_met = 1, rotations_met = 1;
  for (int ni = 0; ni < 3; ni++) {
    int n = ns[ni];
    double rate[4];
    for (int mode = 0; mode < 4; mode++) { /* 0 tl reads, 1 file reads, 2 tl rotations, 3 file rotations */
      memset(sh, 0, sizeof(slot) * 64);
      for (int c = 0; c < n; c++) {
        if (spawn() == 0) {
          tl_store *cs = mode == 0 || mode == 2 ? open_store("alt.db", 0) : NULL;
          char tag[16]; /* lives as long as the store uses it */
          snprintf(tag, sizeof tag, "alt%d", c);
          if (cs)
            tl_store_set_transport(cs, canned, tag);
          int64_t end = now_ns() + (int64_t)(secs * 1e9), ops = 0;
          for (long i = c; now_ns() < end; i++) {
            /* reads: every process over all 16 profiles; rotations: each process its own profiles (p % N == c),
             * for both, so that neither waits for a peer rotating the same grant or file */
            int p = mode == 0 || mode == 1 ? (int)(i % 16) : c + n * (int)(i % (16 / n));
            char name[16], file[PATH_MAX + 32], lock[PATH_MAX + 32];
            snprintf(name, sizeof name, "a%d", p);
            snprintf(file, sizeof file, "%s/auth-%d.json", dir, p);
            snprintf(lock, sizeof lock, "%s/auth-%d.lock", dir, p);
            tl_error e2 = {0};
            tl_token *t = NULL;
            int ok = 0;
            if (mode == 0)
              ok = tl_token_get(&t, cs, name, "nous", 0, &e2) == TL_OK;
            else if (mode == 1)
              ok = flock_read(file, lock) == 0;
            else if (mode == 2) {
              int64_t cred = 0;
              ok = tl_credential_find(&cred, cs, name, "nous", &e2) == TL_OK &&
                   tl_refresh(&t, cs, cred, TL_REFRESH_FORCE, &e2) == TL_OK && t->refreshed;
              if (!ok && getenv("TL_BENCH_DEBUG"))
                fprintf(stderr, "alt rotate: %s\n", e2.message);
            } else
              ok = flock_rotate(file, lock, i) == 0;
            tl_token_free(t);
            ops += ok;
          }
          sh[c].calls = ops;
          tl_store_free(cs);
          _exit(0);
        }
      }
      wait_workers();
      int64_t ops = 0;
      for (int c = 0; c < n; c++)
        ops += sh[c].calls;
      rate[mode] = (double)ops / secs;
    }
    double rr = rate[1] > 0 ? rate[0] / rate[1] : 0, wr = rate[3] > 0 ? rate[2] / rate[3] : 0;
    reads_met &= rr >= 5.0;
    rotations_met &= wr >= 1.0;
    printf("   N=%-3d token reads/s: tokenledger %9.0f  auth.json %9.0f  %5.1fx %-6s  rotations/s: tokenledger %6.0f  "
           "auth.json %6.0f  %4.2fx %s\n",
           n, rate[0], rate[1], rr, rr >= 5.0 ? "MET" : "MISSED", rate[2], rate[3], wr, wr >= 1.0 ? "MET" : "MISSED");
    json_array_append_new(rows,
                          json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f}", "n", n, "tokenledger_reads_per_s", rate[0],
                                    "authjson_reads_per_s", rate[1], "reads_ratio", rr, "tokenledger_rotations_per_s",
                                    rate[2], "authjson_rotations_per_s", rate[3], "rotations_ratio", wr));
  }
  printf("\n");
  munmap(sh, sizeof(slot) * 64);
  record("alternative",
         json_pack("{s:o, s:b, s:b}", "rows", rows, "reads_met", reads_met, "rotations_met", rotations_met));
}

/* ---- 6. whole process ------------------------------------------------------------------ */

static int64_t run_ns(char *const argv[])
{
  int64_t a = now_ns();
  pid_t p = fork();
  if (p == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  waitpid(p, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return -1;
  return now_ns() - a;
}

/* Rotating workers for section 6: each rotates its own credential with canned answers until *stop. */
static void rotate_until(const char *db_name, int64_t cred, const char *tag, volatile int *stop, int64_t *count)
{
  tl_store *cs = open_store(db_name, 0);
  tl_store_set_transport(cs, canned, (void *)tag);
  int64_t n = 0;
  while (!*stop) {
    tl_token *t = NULL;
    tl_error e = {0};
    if (tl_refresh(&t, cs, cred, TL_REFRESH_FORCE, &e) == TL_OK && t && t->refreshed)
      n++;
    tl_token_free(t);
  }
  __atomic_add_fetch(count, n, __ATOMIC_RELAXED);
  tl_store_free(cs);
}

/* 16 processes rotating 16 credentials of their own in db_name until stop_rotators: the load of sections 6 and 11. */
typedef struct rotators {
  int *stop;
  int64_t *rotated;
} rotators;

static rotators start_rotators(const char *db_name, const char *tag_prefix)
{
  tl_store *s = open_store(db_name, 0);
  int64_t creds[16];
  for (int r = 0; r < 16; r++) {
    char name[16], rt[48];
    snprintf(name, sizeof name, "r%d", r);
    snprintf(rt, sizeof rt, "rt-%s-load-%d", tag_prefix, r);
    tl_error err = {0};
    tl_credential_spec spec = {.provider = "nous", .profile = name, .refresh_token = rt};
    if (tl_profile_add(s, name, NULL, &err) != TL_OK || tl_credential_add(&creds[r], s, &spec, &err) != TL_OK)
      die("rotators' setup", &err);
  }
  tl_store_free(s);
  rotators rt;
  rt.stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  rt.rotated = (int64_t *)(void *)(rt.stop + 16);
  static char tags[16][16];
  for (int r = 0; r < 16; r++) {
    snprintf(tags[r], sizeof tags[r], "%s%d", tag_prefix, r);
    if (spawn() == 0) {
      rotate_until(db_name, creds[r], tags[r], rt.stop, rt.rotated);
      _exit(0);
    }
  }
  usleep(200000);
  return rt;
}

/* Stops them; rotations per second over secs (plus the start-up pause). */
static double stop_rotators(rotators *rt, double secs)
{
  __atomic_store_n(rt->stop, 1, __ATOMIC_RELAXED);
  wait_workers();
  double rate = (double)*rt->rotated / (secs + 0.2);
  munmap(rt->stop, 4096);
  return rate;
}

/* n runs of `tokenledger token` on profiles p1..p100 of hot.db, into v. */
static void token_runs(int64_t *v, int n, const char *tl, const char *db)
{
  for (int i = 0; i < n; i++) {
    char prof[32];
    snprintf(prof, sizeof prof, "p%d", i % 100 + 1);
    char *ta[] = {(char *)tl, "--db", (char *)db, "token", "nous", "--profile", prof, NULL};
    if ((v[i] = run_ns(ta)) < 0)
      die("tokenledger token failed", NULL);
  }
}

static void bench_process(void)
{
  char tl[PATH_MAX + 32], db[PATH_MAX + 16], sql[256];
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  snprintf(db, sizeof db, "%s/hot.db", dir);
  int n = quick ? 30 : 200;
  int64_t *a = malloc(sizeof(int64_t) * (size_t)n), *b = malloc(sizeof(int64_t) * (size_t)n),
          *c = malloc(sizeof(int64_t) * (size_t)n);
  int have_sqlite = 1;
  token_runs(a, n, tl, db);
  for (int i = 0; i < n; i++) {
    snprintf(sql, sizeof sql,
             "SELECT c.access_token FROM profile p JOIN pool_entry e ON e.profile_id = p.id JOIN credential c ON c.id "
             "= e.credential_id WHERE p.name = 'p%d' AND e.provider = 'nous' ORDER BY e.priority LIMIT 1",
             i % 100 + 1);
    char *sa[] = {"sqlite3", db, sql, NULL};
    b[i] = run_ns(sa);
    if (b[i] < 0)
      have_sqlite = 0;
  }
  /* The same runs while 16 processes rotate 16 other credentials of the same ledger. */
  rotators rt = start_rotators("hot.db", "ld");
  int64_t t0 = now_ns();
  token_runs(c, n, tl, db);
  double load_rate = stop_rotators(&rt, (double)(now_ns() - t0) / 1e9);
  int64_t a50 = pct(a, (size_t)n, 0.5), a99 = pct(a, (size_t)n, 0.99);
  int64_t b50 = have_sqlite ? pct(b, (size_t)n, 0.5) : 0, b99 = have_sqlite ? pct(b, (size_t)n, 0.99) : 0;
  int64_t c50 = pct(c, (size_t)n, 0.5), c99 = pct(c, (size_t)n, 0.99);
  double ratio = have_sqlite ? (double)a50 / (double)b50 : 0;
  printf("6. whole process, %d runs each on the hot-path ledger\n", n);
  printf("   tokenledger token               p50 %6.2f ms  p99 %6.2f ms\n", a50 / 1e6, a99 / 1e6);
  if (have_sqlite)
    printf("   sqlite3 shell, same query       p50 %6.2f ms  p99 %6.2f ms   ratio p50 %.2fx (budget <= 1.5x) %s\n",
           b50 / 1e6, b99 / 1e6, ratio, ratio <= 1.5 ? "MET" : "MISSED");
  else
    printf("   sqlite3 shell not available\n");
  printf("   tokenledger token, while 16 processes rotate (%.0f rotations/s meanwhile)  p50 %6.2f ms  p99 %6.2f ms\n\n",
         load_rate, c50 / 1e6, c99 / 1e6);
  record("whole_process", json_pack("{s:i, s:f, s:f, s:o, s:o, s:o, s:b, s:f, s:f, s:f}", "runs", n,
                                    "tokenledger_token_ms", a50 / 1e6, "tokenledger_token_p99_ms", a99 / 1e6,
                                    "sqlite3_shell_ms", have_sqlite ? json_real(b50 / 1e6) : json_null(),
                                    "sqlite3_shell_p99_ms", have_sqlite ? json_real(b99 / 1e6) : json_null(), "ratio",
                                    have_sqlite ? json_real(ratio) : json_null(), "met", have_sqlite && ratio <= 1.5,
                                    "token_ms_while_16_rotate", c50 / 1e6, "token_p99_ms_while_16_rotate", c99 / 1e6,
                                    "rotations_per_s_meanwhile", load_rate));
  free(a);
  free(b);
  free(c);
}

/* ---- 7. growth ------------------------------------------------------------------------ */

static int64_t db_bytes(tl_store *s)
{
  tl_error err = {0};
  tl__exec(s, "PRAGMA wal_checkpoint(TRUNCATE)", &err);
  sqlite3_stmt *st = NULL;
  int64_t n = 0;
  sqlite3_prepare_v2(tl__store_db(s), "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size", -1, &st,
                     NULL);
  if (sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

static void bench_growth(void)
{
  int n = quick ? 5000 : 1000000;
  tl_store *s = open_store("growth.db", TL_OPEN_CREATE);
  add_credential(s, "g", "rt-growth-root", NULL);
  tl_store_set_transport(s, canned, "g");
  tl_error err = {0};
  /* Durability does not change bytes: skip the fsyncs so a million rotations fit the run. */
  tl__exec(s, "PRAGMA synchronous=OFF", &err);
  int64_t before = db_bytes(s), t0 = now_ns();
  for (int i = 0; i < n; i++)
    if (tl_refresh(NULL, s, 1, TL_REFRESH_FORCE, &err) != TL_OK)
      die("growth", &err);
  double secs = (double)(now_ns() - t0) / 1e9;
  int64_t after = db_bytes(s);
  json_t *tables = json_object();
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(tl__store_db(s), "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 6",
                         -1, &st, NULL) == SQLITE_OK)
    while (sqlite3_step(st) == SQLITE_ROW)
      json_object_set_new(tables, (const char *)sqlite3_column_text(st, 0), json_integer(sqlite3_column_int64(st, 1)));
  sqlite3_finalize(st);
  int64_t fps = 0;
  sqlite3_prepare_v2(tl__store_db(s), "SELECT count(*) FROM refresh_token", -1, &st, NULL);
  if (sqlite3_step(st) == SQLITE_ROW)
    fps = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  int64_t deleted = 0, cb = 0, ca = 0;
  if (tl_compact(&deleted, &cb, &ca, s, 0, &err) != TL_OK)
    die("compact", &err);
  int64_t fps_after = 0;
  sqlite3_prepare_v2(tl__store_db(s), "SELECT count(*) FROM refresh_token", -1, &st, NULL);
  if (sqlite3_step(st) == SQLITE_ROW)
    fps_after = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  tl_store_free(s);
  double per = (double)(after - before) / n, per_after = (double)(ca - before) / n;
  printf("7. growth after %d rotations (%.0f rotations/s without fsync)\n", n, n / secs);
  printf("   %.0f bytes per rotation (%.1f MB in all); compact removed %lld attempts: %.0f bytes per rotation, "
         "%lld fingerprints before and %lld after\n",
         per, (after - before) / 1e6, (long long)deleted, per_after, (long long)fps, (long long)fps_after);
  char *t = json_dumps(tables, JSON_COMPACT);
  printf("   largest tables and indexes (bytes): %s\n\n", t);
  free(t);
  record("growth", json_pack("{s:i, s:f, s:f, s:I, s:I, s:I, s:o, s:b}", "rotations", n, "bytes_per_rotation", per,
                             "bytes_per_rotation_after_compact", per_after, "attempts_removed", (json_int_t)deleted,
                             "fingerprints_before", (json_int_t)fps, "fingerprints_after", (json_int_t)fps_after,
                             "largest", tables, "fingerprints_kept", fps == fps_after));
}

/* ---- 8. strict mode: serve answering a refresh POST with a fresh token ------------------ */

/* One keep-alive HTTP client: the same connection for every POST, as a long-lived Hermes would. */
typedef struct client {
  CURL *h;
  char url[256];
} client;

static void client_open(client *c, const char *base)
{
  c->h = curl_easy_init();
  snprintf(c->url, sizeof c->url, "%s/api/oauth/token", base);
  if (!c->h)
    die("curl", NULL);
}

/* POSTs a refresh grant with token; returns the HTTP status; *next gets the answer's refresh_token. */
static long client_post(client *c, const char *token, char **next)
{
  char hdr[600];
  portal_buf b = {0};
  snprintf(hdr, sizeof hdr, "x-nous-refresh-token: %s", token);
  struct curl_slist *hl = curl_slist_append(NULL, hdr);
  curl_easy_setopt(c->h, CURLOPT_URL, c->url);
  curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, hl);
  curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, "grant_type=refresh_token&client_id=hermes-cli");
  curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, portal_on_data);
  curl_easy_setopt(c->h, CURLOPT_WRITEDATA, &b);
  long code = 0;
  if (curl_easy_perform(c->h) == CURLE_OK)
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &code);
  curl_slist_free_all(hl);
  if (next) {
    json_t *j = b.p ? json_loads(b.p, 0, NULL) : NULL;
    *next = tl__strdup(json_string_value(json_object_get(j, "refresh_token")));
    json_decref(j);
  }
  free(b.p);
  return code;
}

/* p50/p99 of n sequential POSTs; chain: each answer's refresh token is the next request's (the portal rotates). */
static void latency(int64_t *p50, int64_t *p99, const char *base, const char *token, int chain, int n)
{
  client c;
  client_open(&c, base);
  int64_t *t = malloc(sizeof *t * (size_t)n);
  char *tok = strdup(token);
  for (int i = -20; i < n; i++) { /* 20 warm-up requests */
    char *next = NULL;
    int64_t a = now_ns();
    long code = client_post(&c, tok, chain ? &next : NULL);
    if (i >= 0)
      t[i] = now_ns() - a;
    if (code != 200)
      die("latency: a POST was not answered 200", NULL);
    if (chain) {
      free(tok);
      tok = next;
    }
  }
  *p50 = pct(t, (size_t)n, 0.5);
  *p99 = pct(t, (size_t)n, 0.99);
  free(tok);
  free(t);
  curl_easy_cleanup(c.h);
}

/* Answers per second with 16 keep-alive clients for secs; token NULL: each client seeds its own chain. */
static double throughput(const char *base, const char *token, double secs)
{
  slot *sh = mmap(NULL, sizeof(slot) * 16, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  memset(sh, 0, sizeof(slot) * 16);
  for (int k = 0; k < 16; k++) {
    if (spawn() == 0) {
      client c;
      client_open(&c, base);
      char *tok = token ? strdup(token) : seed_rt();
      int64_t end = now_ns() + (int64_t)(secs * 1e9), calls = 0;
      while (tok && now_ns() < end) {
        char *next = NULL;
        if (client_post(&c, tok, token ? NULL : &next) == 200)
          calls++;
        if (!token) {
          free(tok);
          tok = next;
        }
      }
      free(tok);
      sh[k].calls = calls;
      curl_easy_cleanup(c.h);
      _exit(0);
    }
  }
  wait_workers();
  int64_t total = 0;
  for (int k = 0; k < 16; k++)
    total += sh[k].calls;
  munmap(sh, sizeof(slot) * 16);
  return (double)total / secs;
}

/*
 * serve while another uid floods it (issue 24): two processes of uid 65534 connect to serve's port
 * as fast as they can (each connection refused by serve's accept check and closed) while the owner
 * posts refreshes, each on a new connection as Hermes makes them. Root only (to act as another uid);
 * *ran 0 otherwise. Returns the owner's latencies (p50, p99, max) and the flood's connection count.
 */
static void serve_flood(int *ran, int64_t *p50, int64_t *p99, int64_t *mx, int64_t *floods, int *owner_n,
                        const char *serve_url, const char *sur, double secs)
{
  *ran = 0;
  if (geteuid() != 0)
    return;
  const char *colon = strrchr(serve_url, ':');
  int port = colon ? atoi(colon + 1) : 0;
  int64_t *shared = mmap(NULL, sizeof(int64_t) * 2, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (port <= 0 || shared == MAP_FAILED)
    return;
  shared[0] = shared[1] = 0;
  int64_t end = now_ns() + (int64_t)(secs * 1e9);
  for (int k = 0; k < 2; k++) {
    if (spawn() == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        _exit(1);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      int64_t n = 0;
      while (now_ns() < end) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
          continue;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
          n++;
        close(fd);
      }
      shared[k] = n;
      _exit(0);
    }
  }
  usleep(200000); /* the flood is under way */
  size_t cap = 100000, n = 0;
  int64_t *t = malloc(sizeof *t * cap);
  while (t && now_ns() < end - 200000000LL && n < cap) {
    client c;
    client_open(&c, serve_url); /* a new connection each time: the accept path is what is measured */
    int64_t a = now_ns();
    long code = client_post(&c, sur, NULL);
    t[n++] = now_ns() - a;
    curl_easy_cleanup(c.h);
    if (code != 200)
      die("serve under a flood: the owner's POST was not answered 200", NULL);
    usleep(20000);
  }
  wait_workers();
  *floods = shared[0] + shared[1];
  munmap(shared, sizeof(int64_t) * 2);
  *owner_n = (int)n;
  *p50 = pct(t, n, 0.5);
  *p99 = pct(t, n, 0.99);
  *mx = n ? t[n - 1] : 0; /* pct sorted t */
  free(t);
  *ran = 1;
}

static void bench_serve(void)
{
  int n = quick ? 200 : 3000;
  double secs = quick ? 1.0 : 3.0;
  char url[200], db[PATH_MAX + 16], pf[PATH_MAX + 32], tl[PATH_MAX + 32], serve_url[128] = "";
  snprintf(url, sizeof url, "%s/api/oauth/token", portal_url);
  snprintf(db, sizeof db, "%s/serve.db", dir);
  snprintf(pf, sizeof pf, "%s-serve", db);
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  /* A strict profile with a fresh access token, and the surrogate its auth.json would hold. */
  tl_store *s = open_store("serve.db", TL_OPEN_CREATE);
  char *rt = seed_rt(), *sur = NULL;
  add_credential(s, "strict", rt, url);
  tl_secret_free(rt);
  tl_error err = {0};
  tl_token *t = NULL;
  int64_t prof = 0;
  if (tl_token_get(&t, s, "strict", "nous", 0, &err) != TL_OK || tl_profile_strict(s, "strict", 1, &err) != TL_OK ||
      tl__profile_id(&prof, s, "strict", &err) != TL_OK || tl__strict_surrogate(&sur, s, t->credential, prof, &err))
    die("serve setup", &err);
  tl_token_free(t);
  tl_store_free(s); /* serve is another process; this one keeps no connection open */
  pid_t serve = fork();
  if (serve == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench, however it ends */
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(tl, tl, "--db", db, "serve", "--quiet", "--no-keep-fresh", (char *)NULL);
    _exit(127);
  }
  long_child = serve;
  for (int i = 0; i < 400 && !serve_url[0]; i++) {
    json_t *j = json_load_file(pf, 0, NULL);
    if (json_is_string(json_object_get(j, "url")) && json_integer_value(json_object_get(j, "pid")) == serve)
      snprintf(serve_url, sizeof serve_url, "%s", json_string_value(json_object_get(j, "url")));
    json_decref(j);
    if (!serve_url[0])
      usleep(10000);
  }
  if (!serve_url[0])
    die("tokenledger serve did not start", NULL);
  int64_t before = counter("refreshes");
  int64_t s50, s99, p50, p99;
  latency(&s50, &s99, serve_url, sur, 0, n);
  double srps = throughput(serve_url, sur, secs);
  int upstream = (int)(counter("refreshes") - before);
  char *prt = seed_rt();
  latency(&p50, &p99, portal_url, prt, 1, n);
  free(prt);
  double prps = throughput(portal_url, NULL, secs);
  int flooded = 0, owner_n = 0;
  int64_t f50 = 0, f99 = 0, fmax = 0, floods = 0;
  double fsecs = quick ? 2.0 : 30.0;
  serve_flood(&flooded, &f50, &f99, &fmax, &floods, &owner_n, serve_url, sur, fsecs);
  kill(serve, SIGTERM);
  waitpid(serve, NULL, 0);
  long_child = 0;
  tl_secret_free(sur);
  int met = s50 <= 1000000;
  printf("8. strict mode: a refresh POST with a fresh access token, %d sequential on one keep-alive connection, "
         "then 16 clients for %.1f s\n",
         n, secs);
  printf("   tokenledger serve  p50 %6.3f ms  p99 %6.3f ms   16 clients %7.0f answers/s  (upstream refreshes: %d)\n",
         s50 / 1e6, s99 / 1e6, srps, upstream);
  printf("   tl-portal          p50 %6.3f ms  p99 %6.3f ms   16 clients %7.0f answers/s  (each one a rotation, in "
         "memory, nothing durable)\n",
         p50 / 1e6, p99 / 1e6, prps);
  printf("   budget p50 <= 1 ms: %s\n", met ? "MET" : "MISSED");
  int fmet = flooded && f99 <= 1000000000LL;
  if (flooded)
    printf("   while uid 65534 floods serve with connections for %.0f s (%lld connections, each refused): the owner's "
           "%d POSTs, each on a new connection, p50 %.3f ms  p99 %.3f ms  max %.3f ms\n"
           "   budget p99 <= 1 s: %s\n\n",
           fsecs, (long long)floods, owner_n, f50 / 1e6, f99 / 1e6, fmax / 1e6, fmet ? "MET" : "MISSED");
  else
    printf("   another uid's flood: not measured (needs root to act as uid 65534)\n\n");
  record("serve", json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:b}", "requests", n, "serve_p50_ms", s50 / 1e6,
                            "serve_p99_ms", s99 / 1e6, "serve_answers_per_s_16_clients", srps, "portal_p50_ms",
                            p50 / 1e6, "portal_p99_ms", p99 / 1e6, "portal_answers_per_s_16_clients", prps,
                            "upstream_refreshes", upstream, "met", met));
  if (flooded)
    record("serve_flood", json_pack("{s:f, s:I, s:i, s:f, s:f, s:f, s:b}", "seconds", fsecs, "flood_connections",
                                    (json_int_t)floods, "owner_posts", owner_n, "owner_p50_ms", f50 / 1e6,
                                    "owner_p99_ms", f99 / 1e6, "owner_max_ms", fmax / 1e6, "met", fmet));
}

/* ---- 11. the local agent ------------------------------------------------------------------ */

/* n calls of tl_token_get on profiles a1..a8 of the store, into v (ns each). */
/* `tokenledger token` as a whole process, np runs with the agent (via) and without (local), interleaved. */
static void process_runs(int64_t *via, int64_t *local, int np, const char *tl, const char *db, const char *what)
{
  for (int i = 0; i < np; i++) {
    char prof[16];
    snprintf(prof, sizeof prof, "a%d", i % 8 + 1);
    char *ta[] = {(char *)tl, "--db", (char *)db, "token", "nous", "--profile", prof, NULL};
    unsetenv("TOKENLEDGER_AGENT");
    via[i] = run_ns(ta);
    setenv("TOKENLEDGER_AGENT", "off", 1);
    local[i] = run_ns(ta);
    unsetenv("TOKENLEDGER_AGENT");
    if (via[i] < 0 || local[i] < 0)
      die(what, NULL);
  }
}

static void agent_calls(int64_t *v, int n, tl_store *s)
{
  for (int i = 0; i < n; i++) {
    char prof[16];
    snprintf(prof, sizeof prof, "a%d", i % 8 + 1);
    tl_token *t = NULL;
    tl_error err = {0};
    int64_t a = now_ns();
    if (tl_token_get(&t, s, prof, "nous", 0, &err) != TL_OK)
      die("token through the agent", &err);
    v[i] = now_ns() - a;
    tl_token_free(t);
  }
}

static void bench_agent(void)
{
  int n = quick ? 300 : 20000, np = quick ? 30 : 300;
  char url[200], db[PATH_MAX + 16], pf[PATH_MAX + 32], sock[PATH_MAX + 32], tl[PATH_MAX + 32];
  snprintf(url, sizeof url, "%s/api/oauth/token", portal_url);
  snprintf(db, sizeof db, "%s/agent.db", dir);
  snprintf(pf, sizeof pf, "%s-serve", db);
  snprintf(sock, sizeof sock, "%s-agent", db);
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  tl_store *s = open_store("agent.db", TL_OPEN_CREATE);
  for (int i = 1; i <= 8; i++) {
    char prof[16];
    snprintf(prof, sizeof prof, "a%d", i);
    char *rt = seed_rt();
    add_credential(s, prof, rt, url);
    tl_secret_free(rt);
    tl_token *t = NULL;
    tl_error err = {0};
    if (tl_token_get(&t, s, prof, "nous", 0, &err) != TL_OK)
      die("agent setup", &err);
    tl_token_free(t);
  }
  tl_store_free(s);
  pid_t serve = fork();
  if (serve == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(tl, tl, "--db", db, "serve", "--quiet", "--no-keep-fresh", (char *)NULL);
    _exit(127);
  }
  long_child = serve;
  struct stat st;
  for (int i = 0; i < 400 && lstat(sock, &st) != 0; i++)
    usleep(10000);
  if (lstat(sock, &st) != 0)
    die("tokenledger serve did not start its agent", NULL);
  int64_t *la = malloc(sizeof(int64_t) * (size_t)n), *ag = malloc(sizeof(int64_t) * (size_t)n),
          *pa = malloc(sizeof(int64_t) * (size_t)np), *pl = malloc(sizeof(int64_t) * (size_t)np);
  /* The library call: one store each way, warmed, alternating in blocks so both see the same machine. */
  setenv("TOKENLEDGER_AGENT", "off", 1);
  tl_store *local = open_store("agent.db", 0);
  unsetenv("TOKENLEDGER_AGENT");
  tl_store *via = open_store("agent.db", 0);
  json_t *before = tl__agent_stats(via);
  int64_t answered0 = json_integer_value(json_object_get(before, "answers"));
  json_decref(before);
  int64_t warm[16];
  setenv("TOKENLEDGER_AGENT", "off", 1);
  agent_calls(warm, 16, local);
  unsetenv("TOKENLEDGER_AGENT");
  agent_calls(warm, 16, via);
  for (int k = 0; k < 10; k++) {
    int from = n / 10 * k, cnt = k == 9 ? n - from : n / 10;
    setenv("TOKENLEDGER_AGENT", "off", 1);
    agent_calls(la + from, cnt, local);
    unsetenv("TOKENLEDGER_AGENT");
    agent_calls(ag + from, cnt, via);
  }
  json_t *after = tl__agent_stats(via);
  int64_t answered = json_integer_value(json_object_get(after, "answers")) - answered0;
  json_decref(after);
  tl_store_free(local);
  tl_store_free(via);
  if (answered < n)
    die("the agent did not answer every call (a silent fallback?)", NULL);
  /* The whole process, with and without the agent, interleaved; then the same while 16 processes rotate
   * 16 other credentials of the ledger (canned answers, each its own store). */
  int64_t *qa = malloc(sizeof(int64_t) * (size_t)np), *ql = malloc(sizeof(int64_t) * (size_t)np);
  process_runs(pa, pl, np, tl, db, "tokenledger token failed");
  rotators rt = start_rotators("agent.db", "ag");
  int64_t t0 = now_ns();
  process_runs(qa, ql, np, tl, db, "tokenledger token failed under load");
  double load_rate = stop_rotators(&rt, (double)(now_ns() - t0) / 1e9);
  int64_t qa50 = pct(qa, (size_t)np, 0.5), qa99 = pct(qa, (size_t)np, 0.99), ql50 = pct(ql, (size_t)np, 0.5),
          ql99 = pct(ql, (size_t)np, 0.99);
  free(qa);
  free(ql);
  kill(serve, SIGTERM);
  waitpid(serve, NULL, 0);
  long_child = 0;
  int64_t l50 = pct(la, (size_t)n, 0.5), l99 = pct(la, (size_t)n, 0.99), a50 = pct(ag, (size_t)n, 0.5),
          a99 = pct(ag, (size_t)n, 0.99), pa50 = pct(pa, (size_t)np, 0.5), pa99 = pct(pa, (size_t)np, 0.99),
          pl50 = pct(pl, (size_t)np, 0.5), pl99 = pct(pl, (size_t)np, 0.99);
  printf("11. the local agent: tl_token_get on 8 profiles with fresh tokens, %d calls each way; `tokenledger token` "
         "%d runs each way\n",
         n, np);
  printf("   library call, local hot path     p50 %7lld ns  p99 %7lld ns\n", (long long)l50, (long long)l99);
  printf("   library call, through the agent  p50 %7lld ns  p99 %7lld ns   (budget p50 <= 50 us: %s)\n", (long long)a50,
         (long long)a99, a50 <= 50000 ? "MET" : "MISSED");
  printf("   tokenledger token, agent         p50 %6.2f ms  p99 %6.2f ms\n", pa50 / 1e6, pa99 / 1e6);
  printf("   tokenledger token, no agent      p50 %6.2f ms  p99 %6.2f ms\n", pl50 / 1e6, pl99 / 1e6);
  printf("   while 16 processes rotate (%.0f rotations/s meanwhile):\n", load_rate);
  printf("   tokenledger token, agent         p50 %6.2f ms  p99 %6.2f ms\n", qa50 / 1e6, qa99 / 1e6);
  printf("   tokenledger token, no agent      p50 %6.2f ms  p99 %6.2f ms\n\n", ql50 / 1e6, ql99 / 1e6);
  record("agent", json_pack("{s:i, s:i, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:b}", "calls", n, "process_runs", np,
                            "local_p50_ns", (json_int_t)l50, "local_p99_ns", (json_int_t)l99, "agent_p50_ns",
                            (json_int_t)a50, "agent_p99_ns", (json_int_t)a99, "process_agent_p50_ms", pa50 / 1e6,
                            "process_agent_p99_ms", pa99 / 1e6, "process_local_p50_ms", pl50 / 1e6,
                            "process_local_p99_ms", pl99 / 1e6, "met", a50 <= 50000));
  json_t *under_load =
      json_pack("{s:f, s:f, s:f, s:f, s:f}", "rotations_per_s_meanwhile", load_rate,
                "process_agent_p50_ms_while_16_rotate", qa50 / 1e6, "process_agent_p99_ms_while_16_rotate", qa99 / 1e6,
                "process_local_p50_ms_while_16_rotate", ql50 / 1e6, "process_local_p99_ms_while_16_rotate", ql99 / 1e6);
  json_object_update(json_object_get(results, "agent"), under_load);
  json_decref(under_load);
  free(la);
  free(ag);
  free(pa);
  free(pl);
}

/* ---- helpers for Hermes' files (sections 9 and 10) ------------------------------------------- */

/* A time as Hermes writes it: 2026-11-30T10:00:00.123456+00:00 */
static void hermes_time(char *out, size_t n, int64_t ms)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, n, "%s.%06lld+00:00", base, (long long)(ms % 1000) * 1000);
}

/* The Nous singleton as Hermes writes it after a login or a refresh. */
static json_t *hermes_singleton(const char *portal, const char *at, const char *rt, int64_t obtained_ms)
{
  char obtained[64], expires[64];
  hermes_time(obtained, sizeof obtained, obtained_ms);
  hermes_time(expires, sizeof expires, obtained_ms + 3600000);
  return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:{s:b, s:n}, s:s, s:n, s:s, s:i, s:b, s:s}",
                   "portal_base_url", portal, "inference_base_url", "https://inference-api.nousresearch.com/v1",
                   "client_id", "hermes-cli", "scope", "inference:invoke", "token_type", "Bearer", "access_token", at,
                   "refresh_token", rt, "obtained_at", obtained, "expires_at", expires, "expires_in", 3600, "tls",
                   "insecure", 0, "ca_bundle", "agent_key", at, "agent_key_id", "agent_key_expires_at", expires,
                   "agent_key_expires_in", 3599, "agent_key_reused", 0, "agent_key_obtained_at", obtained);
}

/* A pool row of the same grant, as Hermes keeps it beside the singleton. */
static json_t *hermes_row(const char *id, const char *source, int priority, const char *at, const char *rt,
                          int64_t obtained_ms)
{
  char obtained[64], expires[64];
  hermes_time(obtained, sizeof obtained, obtained_ms);
  hermes_time(expires, sizeof expires, obtained_ms + 3600000);
  return json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:n, s:n, s:n, s:n, s:n, s:n, s:s, s:s, s:s, s:s, s:i, s:s}",
                   "id", id, "label", "bench@example.com", "auth_type", "oauth", "priority", priority, "source", source,
                   "access_token", at, "refresh_token", rt, "last_status", "last_status_at", "last_error_code",
                   "last_error_reason", "last_error_message", "last_error_reset_at", "expires_at", expires,
                   "inference_base_url", "https://inference-api.nousresearch.com/v1", "agent_key", at,
                   "agent_key_expires_at", expires, "request_count", 0, "obtained_at", obtained);
}

/* Writes doc to path as Hermes does: a temporary file in the same directory, 0600, fsync, rename, dir fsync. */
static void hermes_write(const char *path, json_t *doc, size_t flags)
{
  char tmp[PATH_MAX + 32], dirname[PATH_MAX];
  snprintf(dirname, sizeof dirname, "%s", path);
  *strrchr(dirname, '/') = '\0';
  snprintf(tmp, sizeof tmp, "%s/.auth_XXXXXX.tmp", dirname);
  int fd = mkstemps(tmp, 4);
  char *text = json_dumps(doc, flags);
  if (fd < 0 || !text || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fsync(fd) != 0 || close(fd) != 0 ||
      rename(tmp, path) != 0)
    die("writing a Hermes file", NULL);
  free(text);
  int d = open(dirname, O_RDONLY | O_DIRECTORY);
  if (d >= 0) {
    fsync(d);
    close(d);
  }
}

/* Runs the CLI (stdout and stderr to /dev/null); its exit status, elapsed ns and peak RSS (KiB). */
static int run_cli(int64_t *ns, long *rss_kb, char *const argv[])
{
  int64_t a = now_ns();
  pid_t p = fork();
  if (p == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  wait4(p, &status, 0, &ru);
  if (ns)
    *ns = now_ns() - a;
  if (rss_kb)
    *rss_kb = ru.ru_maxrss;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void mkdir_or_die(const char *path)
{
  if (mkdir(path, 0700) != 0)
    die(path, NULL);
}

static char *json_rt(const char *path)
{
  json_t *j = json_load_file(path, 0, NULL);
  json_t *n = json_object_get(json_object_get(j, "providers"), "nous");
  const char *rt = json_string_value(json_object_get(n ? n : j, "refresh_token"));
  char *out = tl__strdup(rt);
  json_decref(j);
  return out;
}

/* ---- 9. Hermes alongside: a rotation Hermes writes into one profile reaches every file ---------- */

/* What Hermes does when it refreshes in one profile: under its auth.lock, the file's RT at the portal, the new pair
 * written into the singleton and the device_code row, atomically. Returns the new RT (new). */
static char *hermes_rotation(const char *home)
{
  char lock[2 * PATH_MAX + 16], file[2 * PATH_MAX + 16];
  snprintf(lock, sizeof lock, "%s/auth.lock", home);
  snprintf(file, sizeof file, "%s/auth.json", home);
  int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || flock(fd, LOCK_EX) != 0)
    die("auth.lock", NULL);
  json_t *doc = json_load_file(file, 0, NULL);
  json_t *nous = json_object_get(json_object_get(doc, "providers"), "nous");
  json_t *ans = http("/api/oauth/token", "grant_type=refresh_token&client_id=hermes-cli",
                     json_string_value(json_object_get(nous, "refresh_token")));
  const char *at = json_string_value(json_object_get(ans, "access_token"));
  const char *rt = json_string_value(json_object_get(ans, "refresh_token"));
  if (!doc || !nous || !at || !rt) {
    char *why = ans ? json_dumps(ans, JSON_COMPACT) : NULL;
    fprintf(stderr, "tl-bench: the portal answered %s\n", why ? why : "nothing");
    free(why);
    die("a Hermes-like refresh at the portal", NULL);
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts); /* Hermes' obtained_at: wall-clock time, later with every rotation */
  int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  json_object_set_new(json_object_get(doc, "providers"), "nous", hermes_singleton(portal_url, at, rt, now));
  json_t *pool = json_object_get(json_object_get(doc, "credential_pool"), "nous");
  json_array_set_new(pool, 0, hermes_row("a1b2c3", "device_code", 0, at, rt, now));
  hermes_write(file, doc, JSON_INDENT(2));
  char *out = tl__strdup(rt);
  json_decref(ans);
  json_decref(doc);
  flock(fd, LOCK_UN);
  close(fd);
  return out;
}

static void bench_hermes(void)
{
  int rounds = quick ? 3 : 20;
  char root[PATH_MAX + 16], path[3 * PATH_MAX], db[PATH_MAX + 16], tl[PATH_MAX + 32], homes[4][2 * PATH_MAX];
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  snprintf(root, sizeof root, "%s/hroot", dir);
  snprintf(db, sizeof db, "%s/hermes.db", dir);
  mkdir_or_die(root);
  snprintf(path, sizeof path, "%s/profiles", root);
  mkdir_or_die(path);
  snprintf(path, sizeof path, "%s/shared", root);
  mkdir_or_die(path);
  json_t *seed = http("/admin/seed", "", NULL);
  const char *at = json_string_value(json_object_get(seed, "access_token"));
  const char *rt = json_string_value(json_object_get(seed, "refresh_token"));
  int64_t t0 = ((int64_t)time(NULL) - 60) * 1000;
  for (int k = 0; k < 4; k++) {
    snprintf(homes[k], sizeof homes[k], "%s/profiles/h%d", root, k);
    mkdir_or_die(homes[k]);
    json_t *doc =
        json_pack("{s:i, s:{s:o}, s:s, s:{s:[o]}, s:s}", "version", 1, "providers", "nous",
                  hermes_singleton(portal_url, at, rt, t0), "active_provider", "nous", "credential_pool", "nous",
                  hermes_row("a1b2c3", "device_code", 0, at, rt, t0), "updated_at", "2026-11-30T00:00:00.000000+00:00");
    snprintf(path, sizeof path, "%.8000s/auth.json", homes[k]);
    hermes_write(path, doc, JSON_INDENT(2));
    json_decref(doc);
  }
  char obtained[64], expires[64];
  hermes_time(obtained, sizeof obtained, t0);
  hermes_time(expires, sizeof expires, t0 + 3600000);
  json_t *shared =
      json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "_schema", 1, "access_token", at,
                "refresh_token", rt, "token_type", "Bearer", "scope", "inference:invoke", "client_id", "hermes-cli",
                "portal_base_url", portal_url, "inference_base_url", "https://inference-api.nousresearch.com/v1",
                "obtained_at", obtained, "expires_at", expires, "updated_at", obtained);
  snprintf(path, sizeof path, "%s/shared/nous_auth.json", root);
  hermes_write(path, shared, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(shared);
  json_decref(seed);
  char *init[] = {tl, "--db", db, "init", NULL};
  char *import[] = {tl, "--db", db, "import", root, "--all-profiles", NULL};
  if (run_cli(NULL, NULL, init) != 0 || run_cli(NULL, NULL, import) != 0)
    die("importing the Hermes root", NULL);
  int64_t reuse_before = counter("reuse_detections");
  unsetenv("HERMES_SHARED_AUTH_DIR");
  snprintf(path, sizeof path, "%s/keep-fresh.log", dir);
  pid_t watcher = fork();
  if (watcher == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench, however it ends */
    int log = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(log, 1);
    dup2(log, 2);
    execl(tl, tl, "--db", db, "keep-fresh", "--watch", "--interval", "3600", (char *)NULL);
    _exit(127);
  }
  long_child = watcher;
  usleep(1000000); /* its first round, then its watches */
  int64_t *lat = malloc(sizeof(int64_t) * (size_t)rounds);
  int reached = 0;
  char *sync_all[] = {tl, "--db", db, "sync", "--all", NULL};
  int64_t wait_ns = quick ? 2000000000LL : 5000000000LL;
  for (int r = 0; r < rounds; r++) {
    char *fresh = hermes_rotation(homes[r % 4]);
    int64_t a = now_ns(), end = a + wait_ns;
    int all = 0;
    while (!all && now_ns() < end) {
      all = 1;
      for (int k = 0; k < 5 && all; k++) {
        if (k == 4)
          snprintf(path, sizeof path, "%s/shared/nous_auth.json", root);
        else
          snprintf(path, sizeof path, "%.8000s/auth.json", homes[k]);
        char *have = json_rt(path);
        all = have && strcmp(have, fresh) == 0;
        free(have);
      }
      if (!all)
        usleep(1000);
    }
    lat[r] = all ? now_ns() - a : -1;
    reached += all;
    if (getenv("TL_BENCH_DEBUG"))
      fprintf(stderr, "hermes round %d (profile h%d): %s %.1f ms\n", r, r % 4, all ? "reached" : "NOT reached",
              (now_ns() - a) / 1e6);
    free(fresh);
    /* Not there: bring every file up to date, or the next round's Hermes would present a spent token. */
    if (!all && run_cli(NULL, NULL, sync_all) != 0)
      die("sync --all after a round that did not reach every file", NULL);
    usleep(100000);
  }
  kill(watcher, SIGTERM);
  waitpid(watcher, NULL, 0);
  long_child = 0;
  int64_t reuse = counter("reuse_detections") - reuse_before;
  size_t ok = 0;
  for (int r = 0; r < rounds; r++)
    if (lat[r] >= 0)
      lat[ok++] = lat[r];
  int64_t p50 = pct(lat, ok, 0.5), worst = ok ? lat[ok - 1] : 0;
  free(lat);
  printf("9. Hermes alongside: a root of 4 profiles sharing one grant, keep-fresh --watch running; Hermes rotates in "
         "one profile (auth.lock, atomic rename), %d rounds\n",
         rounds);
  if (ok)
    printf("   until every sibling auth.json and shared/nous_auth.json hold the new RT:  p50 %6.1f ms  max %6.1f ms  "
           "(%d of %d rounds reached every file within %.0f s; reuse at the portal: %lld)\n\n",
           p50 / 1e6, worst / 1e6, reached, rounds, wait_ns / 1e9, (long long)reuse);
  else
    printf(
        "   until every sibling auth.json and shared/nous_auth.json hold the new RT:  not within %.0f s in any of %d "
        "rounds (keep-fresh --watch adopted each rotation; the files came up to date with the next 'sync --all'); "
        "reuse at the portal: %lld\n\n",
        wait_ns / 1e9, rounds, (long long)reuse);
  record("hermes_alongside",
         json_pack("{s:i, s:i, s:f, s:o, s:o, s:I, s:b}", "rounds", rounds, "reached", reached, "wait_limit_s",
                   wait_ns / 1e9, "propagation_p50_ms", ok ? json_real(p50 / 1e6) : json_null(), "propagation_max_ms",
                   ok ? json_real(worst / 1e6) : json_null(), "reuse_detections", (json_int_t)reuse, "within_a_second",
                   reached == rounds && worst <= 1000000000));
}

/* ---- 10. import cost ----------------------------------------------------------------------------- */

/* A home whose auth.json holds n grants: the singleton (row 0's) and n pool rows; generation gen of each. */
static void write_pool_home(const char *home, int n, int gen, int64_t obtained_ms)
{
  json_t *pool = json_array();
  char at[64], rt[64], id[16];
  for (int i = 0; i < n; i++) {
    snprintf(at, sizeof at, "eyJhbGciOiJSUzI1NiJ9.bench-%d-%d.sig", i, gen);
    snprintf(rt, sizeof rt, "rt-bench-pool-%d-gen-%d", i, gen);
    snprintf(id, sizeof id, "%06x", i + 1);
    json_array_append_new(pool, hermes_row(id, i ? "manual:device_code" : "device_code", i, at, rt, obtained_ms));
  }
  snprintf(at, sizeof at, "eyJhbGciOiJSUzI1NiJ9.bench-0-%d.sig", gen);
  snprintf(rt, sizeof rt, "rt-bench-pool-0-gen-%d", gen);
  json_t *doc = json_pack("{s:i, s:{s:o}, s:s, s:{s:o}, s:s}", "version", 1, "providers", "nous",
                          hermes_singleton("https://portal.nousresearch.com", at, rt, obtained_ms), "active_provider",
                          "nous", "credential_pool", "nous", pool, "updated_at", "2026-11-30T00:00:00.000000+00:00");
  char path[PATH_MAX + 48];
  snprintf(path, sizeof path, "%s/auth.json", home);
  hermes_write(path, doc, JSON_INDENT(2));
  json_decref(doc);
}

/* A root of n profiles, each with its own grant; imported with --all-profiles: *ns and *rss_kb. */
static void import_root(int64_t *ns, long *rss_kb, int n, const char *tl)
{
  char root[PATH_MAX + 16], path[2 * PATH_MAX], db[PATH_MAX + 32];
  snprintf(root, sizeof root, "%s/root%d", dir, n);
  snprintf(db, sizeof db, "%s/root%d.db", dir, n);
  mkdir_or_die(root);
  snprintf(path, sizeof path, "%s/profiles", root);
  mkdir_or_die(path);
  int64_t t = ((int64_t)time(NULL) - 60) * 1000;
  for (int i = 0; i < n; i++) {
    char at[64], rt[64];
    snprintf(path, sizeof path, "%s/profiles/p%d", root, i);
    mkdir_or_die(path);
    snprintf(at, sizeof at, "eyJhbGciOiJSUzI1NiJ9.root-%d.sig", i);
    snprintf(rt, sizeof rt, "rt-bench-root-%d-%d", n, i);
    json_t *doc = json_pack("{s:i, s:{s:o}, s:s, s:{s:[o]}}", "version", 1, "providers", "nous",
                            hermes_singleton("https://portal.nousresearch.com", at, rt, t), "active_provider", "nous",
                            "credential_pool", "nous", hermes_row("a1b2c3", "device_code", 0, at, rt, t));
    snprintf(path, sizeof path, "%s/profiles/p%d/auth.json", root, i);
    if (json_dump_file(doc, path, JSON_INDENT(2)) != 0 || chmod(path, 0600) != 0)
      die("writing a profile", NULL);
    json_decref(doc);
  }
  char *init[] = {(char *)tl, "--db", db, "init", NULL};
  char *import[] = {(char *)tl, "--db", db, "import", root, "--all-profiles", NULL};
  if (run_cli(NULL, NULL, init) != 0 || run_cli(ns, rss_kb, import) != 0)
    die("importing a root", NULL);
}

static void bench_import(void)
{
  int rows = quick ? 200 : 1000, big = quick ? 1000 : 10000;
  char tl[PATH_MAX + 32], home[PATH_MAX + 16], db[PATH_MAX + 16];
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  snprintf(home, sizeof home, "%s/poolhome", dir);
  snprintf(db, sizeof db, "%s/import.db", dir);
  mkdir_or_die(home);
  int64_t t = ((int64_t)time(NULL) - 120) * 1000;
  write_pool_home(home, rows, 0, t);
  int64_t import_ns = 0, sync_ns = 0;
  long import_rss = 0, sync_rss = 0;
  char *init[] = {tl, "--db", db, "init", NULL};
  char *import[] = {tl, "--db", db, "import", home, "--profile", "pool", NULL};
  char *sync[] = {tl, "--db", db, "sync", "--profile", "pool", NULL};
  if (run_cli(NULL, NULL, init) != 0 || run_cli(&import_ns, &import_rss, import) != 0)
    die("importing the pool file", NULL);
  write_pool_home(home, rows, 1, t + 60000); /* Hermes rotated every grant */
  if (run_cli(&sync_ns, &sync_rss, sync) != 0)
    die("sync adopting the rotations", NULL);
  tl_store *s = open_store("import.db", 0);
  int64_t adopted = 0;
  sqlite3_stmt *st = NULL;
  sqlite3_prepare_v2(tl__store_db(s), "SELECT count(*) FROM refresh_token WHERE origin = 'external'", -1, &st, NULL);
  if (sqlite3_step(st) == SQLITE_ROW)
    adopted = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  tl_store_free(s);
  int64_t small_ns = 0, big_ns = 0;
  long small_rss = 0, big_rss = 0;
  import_root(&small_ns, &small_rss, big / 10, tl);
  import_root(&big_ns, &big_rss, big, tl);
  /* a straight line through the two roots, at 100k profiles */
  double per_ns = (double)(big_ns - small_ns) / (big - big / 10),
         per_kb = (double)(big_rss - small_rss) / (big - big / 10);
  double x_s = (big_ns + per_ns * (100000 - big)) / 1e9, x_mb = (big_rss + per_kb * (100000 - big)) / 1024.0;
  printf("10. import cost\n");
  printf("   a file with %d pool rows (%d grants): import %6.3f s (%ld MiB peak); sync adopting %d new tokens %6.3f s "
         "(%lld external rotations recorded, %ld MiB)\n",
         rows, rows, import_ns / 1e9, import_rss / 1024, rows, sync_ns / 1e9, (long long)adopted, sync_rss / 1024);
  printf("   a root of %d profiles: import --all-profiles %6.2f s, %ld MiB peak (%d profiles: %.2f s, %ld MiB); "
         "at 100000, by a straight line: %.1f s, %.0f MiB\n\n",
         big, big_ns / 1e9, big_rss / 1024, big / 10, small_ns / 1e9, small_rss / 1024, x_s, x_mb);
  record("import_cost",
         json_pack("{s:i, s:f, s:f, s:f, s:f, s:I, s:i, s:f, s:f, s:i, s:f, s:f, s:f, s:f}", "pool_rows", rows,
                   "import_s", import_ns / 1e9, "import_peak_mib", import_rss / 1024.0, "sync_s", sync_ns / 1e9,
                   "sync_peak_mib", sync_rss / 1024.0, "external_rotations", (json_int_t)adopted, "root_profiles", big,
                   "root_import_s", big_ns / 1e9, "root_peak_mib", big_rss / 1024.0, "small_root_profiles", big / 10,
                   "small_root_import_s", small_ns / 1e9, "small_root_peak_mib", small_rss / 1024.0,
                   "extrapolated_100k_s", x_s, "extrapolated_100k_mib", x_mb));
}

int main(int argc, char **argv)
{
  const char *json_out = NULL, *where = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0)
      quick = 1;
    else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
      json_out = argv[++i];
    else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
      where = argv[++i];
    else {
      fprintf(stderr, "usage: tl-bench [--quick] [--json FILE] [--dir DIR]\n");
      return strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  ssize_t l = readlink("/proc/self/exe", bindir, sizeof bindir - 1);
  if (l <= 0)
    die("cannot find my own directory", NULL);
  bindir[l] = '\0';
  *strrchr(bindir, '/') = '\0';
  snprintf(dir, sizeof dir, "%s/tl-bench-XXXXXX", where ? where : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir))
    die("mkdtemp", NULL);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows as each section ends, even into a file */
  curl_global_init(CURL_GLOBAL_DEFAULT);
  results = json_object();
  struct utsname u;
  uname(&u);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  char cpu[256] = "unknown";
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "model name", 10) == 0) {
      snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
      cpu[strcspn(cpu, "\n")] = '\0';
      break;
    }
  if (f)
    fclose(f);
  time_t now = time(NULL);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  printf("tl-bench %s%s: %s, %ld CPUs, %s %s, SQLite %s, files in %s\n\n", TL_VERSION, quick ? " (quick)" : "", cpu,
         cpus, u.sysname, u.release, sqlite3_libversion(), dir);
  record("machine", json_pack("{s:s, s:i, s:s, s:s, s:s, s:b}", "cpu", cpu, "cpus", (int)cpus, "kernel", u.release,
                              "sqlite", sqlite3_libversion(), "date", when, "quick", quick));
  start_portal();
  const char *only = getenv("TL_BENCH_ONLY"); /* e.g. "4" or "14": run just those sections */
#define RUN(k, fn)                                                                                                     \
  if (!only || strchr(only, k))                                                                                        \
  fn()
  RUN('1', bench_hot);
  RUN('2', bench_refresh);
  RUN('3', bench_singleflight);
  RUN('4', bench_contention);
  RUN('5', bench_alternative);
  RUN('6', bench_process);
  RUN('7', bench_growth);
  RUN('8', bench_serve);
  RUN('9', bench_hermes);
  RUN('0', bench_import); /* section 10 */
  RUN('a', bench_agent);  /* section 11 */
#undef RUN
  kill(portal_pid, SIGTERM);
  waitpid(portal_pid, NULL, 0);
  if (json_out && json_dump_file(results, json_out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
    die("cannot write the JSON results", NULL);
  json_decref(results);
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "tl-bench: could not remove %s\n", dir);
  return 0;
}
