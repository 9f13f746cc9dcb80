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
 *
 * Usage: tl-bench [--quick] [--json FILE] [--dir DIR]
 * The portal (tl-portal) and the CLI (tokenledger) are found beside tl-bench.
 * Timings live here only; the test suite runs --quick to prove this works.
 */
#include "internal.h"
#include "portal_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int quick;
static char dir[PATH_MAX], bindir[PATH_MAX], portal_url[128];
static pid_t portal_pid;
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
  sqlite3_prepare_v2(s->db, "INSERT INTO profile (id, name, created_at) VALUES (?1, 'p' || ?1, 0)", -1, &pst, NULL);
  sqlite3_prepare_v2(s->db,
                     "INSERT INTO credential (id, provider, client_id, token_url, access_token, expires_at, "
                     "created_at, updated_at) VALUES (?1, 'nous', 'hermes-cli', 'https://portal.example/t', "
                     "'at-' || ?1 || '-eyJhbGciOiJSUzI1NiJ9.payload.signature', 4102444800000, 0, 0)",
                     -1, &cst, NULL);
  sqlite3_prepare_v2(s->db,
                     "INSERT INTO pool_entry (profile_id, provider, credential_id, entry_id, priority, source) "
                     "VALUES (?1, 'nous', ?2, printf('%06x', ?3), ?4, 'device_code')",
                     -1, &est, NULL);
  sqlite3_prepare_v2(s->db,
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
        die(sqlite3_errmsg(s->db), NULL);
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
  sqlite3_finalize(q);
  sqlite3_close(raw);
  tl_store_free(s);
  int64_t o50 = pct(ours, (size_t)n, 0.5), o99 = pct(ours, (size_t)n, 0.99);
  int64_t r50 = pct(ref, (size_t)n, 0.5), r99 = pct(ref, (size_t)n, 0.99);
  free(ours);
  free(ref);
  double ratio = (double)o50 / (double)r50;
  printf("1. hot path (%d profiles, %d pool entries, %d lineage rows; built in %.1f s)\n", profiles, profiles * per,
         creds * gens, build_s);
  printf("   tl_token_get, valid token     p50 %7lld ns  p99 %7lld ns\n", (long long)o50, (long long)o99);
  printf("   raw indexed point read        p50 %7lld ns  p99 %7lld ns\n", (long long)r50, (long long)r99);
  printf("   ratio p50 %.2fx (budget <= 2x) %s\n\n", ratio, ratio <= 2.0 ? "MET" : "MISSED");
  record("hot_path",
         json_pack("{s:i, s:i, s:i, s:f, s:I, s:I, s:I, s:I, s:f, s:b}", "profiles", profiles, "pool_entries",
                   profiles * per, "lineage_rows", creds * gens, "build_s", build_s, "token_get_p50_ns",
                   (json_int_t)o50, "token_get_p99_ns", (json_int_t)o99, "raw_read_p50_ns", (json_int_t)r50,
                   "raw_read_p99_ns", (json_int_t)r99, "ratio", ratio, "met", ratio <= 2.0));
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
  sqlite3_commit_hook(s->db, count_commit, NULL);
  for (int i = 0; i < n; i++) {
    tl_token *t = NULL;
    int64_t a = now_ns();
    if (tl_refresh(&t, s, 1, TL_REFRESH_FORCE, &err) != TL_OK)
      die("refresh", &err);
    v[i] = now_ns() - a;
    tl_token_free(t);
  }
  sqlite3_commit_hook(s->db, NULL, NULL);
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
  for (int p = 0; p < 16; p++) {
    char name[16];
    snprintf(name, sizeof name, "c%d", p);
    char *rt = seed_rt();
    add_credential(s, name, rt, url);
    tl_secret_free(rt);
  }
  tl_store_free(s);
  slot *sh = mmap(NULL, sizeof(slot) * 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  json_t *rows = json_array();
  printf("4. contention: N processes x 16 profiles, forced refreshes against the loopback portal, %.1f s each\n", secs);
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
          /* Worker c owns the profiles p with p % N == c % N: disjoint while N <= 16, so it never waits for a
           * peer's refresh of the same grant; at N = 64 four workers share each profile. */
          int mine = n < 16 ? 16 / n : 1;
          for (int i = 0; now_ns() < end; i++) {
            char name[16];
            snprintf(name, sizeof name, "c%d", n < 16 ? (c % n) + n * (i % mine) : c % 16);
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
             n, ours, capacity, ratio * 100, store_share * 100, met ? "MET" : "MISSED");
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
  printf("   (rotations without HTTP: canned answers for tokenledger, a local rewrite for auth.json)\n");
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
            int p = (int)(i % 16);
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
                   tl_refresh(&t, cs, cred, TL_REFRESH_FORCE, &e2) == TL_OK;
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
    printf("   N=%-3d token reads/s: tokenledger %9.0f  auth.json %9.0f   rotations/s: tokenledger %7.0f  auth.json "
           "%7.0f\n",
           n, rate[0], rate[1], rate[2], rate[3]);
    json_array_append_new(rows, json_pack("{s:i, s:f, s:f, s:f, s:f}", "n", n, "tokenledger_reads_per_s", rate[0],
                                          "authjson_reads_per_s", rate[1], "tokenledger_rotations_per_s", rate[2],
                                          "authjson_rotations_per_s", rate[3]));
  }
  printf("\n");
  munmap(sh, sizeof(slot) * 64);
  record("alternative", json_pack("{s:o}", "rows", rows));
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

static void bench_process(void)
{
  char tl[PATH_MAX + 32], db[PATH_MAX + 16], sql[256];
  snprintf(tl, sizeof tl, "%s/tokenledger", bindir);
  snprintf(db, sizeof db, "%s/hot.db", dir);
  int n = quick ? 30 : 200;
  int64_t *a = malloc(sizeof(int64_t) * (size_t)n), *b = malloc(sizeof(int64_t) * (size_t)n);
  int have_sqlite = 1;
  for (int i = 0; i < n; i++) {
    char prof[32];
    snprintf(prof, sizeof prof, "p%d", i % 100 + 1);
    char *ta[] = {tl, "--db", db, "token", "nous", "--profile", prof, NULL};
    a[i] = run_ns(ta);
    if (a[i] < 0)
      die("tokenledger token failed", NULL);
    snprintf(sql, sizeof sql,
             "SELECT c.access_token FROM profile p JOIN pool_entry e ON e.profile_id = p.id JOIN credential c ON c.id "
             "= e.credential_id WHERE p.name = '%s' AND e.provider = 'nous' ORDER BY e.priority LIMIT 1",
             prof);
    char *sa[] = {"sqlite3", db, sql, NULL};
    b[i] = run_ns(sa);
    if (b[i] < 0)
      have_sqlite = 0;
  }
  int64_t a50 = pct(a, (size_t)n, 0.5), b50 = have_sqlite ? pct(b, (size_t)n, 0.5) : 0;
  printf("6. whole process, median of %d runs on the hot-path ledger\n", n);
  printf("   tokenledger token             %6.2f ms\n", a50 / 1e6);
  if (have_sqlite)
    printf("   sqlite3 shell, same query     %6.2f ms\n\n", b50 / 1e6);
  else
    printf("   sqlite3 shell not available\n\n");
  record("whole_process", json_pack("{s:i, s:f, s:o}", "runs", n, "tokenledger_token_ms", a50 / 1e6, "sqlite3_shell_ms",
                                    have_sqlite ? json_real(b50 / 1e6) : json_null()));
  free(a);
  free(b);
}

/* ---- 7. growth ------------------------------------------------------------------------ */

static int64_t db_bytes(tl_store *s)
{
  tl_error err = {0};
  tl__exec(s, "PRAGMA wal_checkpoint(TRUNCATE)", &err);
  sqlite3_stmt *st = NULL;
  int64_t n = 0;
  sqlite3_prepare_v2(s->db, "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size", -1, &st, NULL);
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
  if (sqlite3_prepare_v2(s->db, "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 6", -1, &st,
                         NULL) == SQLITE_OK)
    while (sqlite3_step(st) == SQLITE_ROW)
      json_object_set_new(tables, (const char *)sqlite3_column_text(st, 0), json_integer(sqlite3_column_int64(st, 1)));
  sqlite3_finalize(st);
  int64_t fps = 0;
  sqlite3_prepare_v2(s->db, "SELECT count(*) FROM refresh_token", -1, &st, NULL);
  if (sqlite3_step(st) == SQLITE_ROW)
    fps = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  int64_t deleted = 0, cb = 0, ca = 0;
  if (tl_compact(&deleted, &cb, &ca, s, 0, &err) != TL_OK)
    die("compact", &err);
  int64_t fps_after = 0;
  sqlite3_prepare_v2(s->db, "SELECT count(*) FROM refresh_token", -1, &st, NULL);
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
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(tl, tl, "--db", db, "serve", "--quiet", "--no-keep-fresh", (char *)NULL);
    _exit(127);
  }
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
  kill(serve, SIGTERM);
  waitpid(serve, NULL, 0);
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
  printf("   budget p50 <= 1 ms: %s\n\n", met ? "MET" : "MISSED");
  record("serve", json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:b}", "requests", n, "serve_p50_ms", s50 / 1e6,
                            "serve_p99_ms", s99 / 1e6, "serve_answers_per_s_16_clients", srps, "portal_p50_ms",
                            p50 / 1e6, "portal_p99_ms", p99 / 1e6, "portal_answers_per_s_16_clients", prps,
                            "upstream_refreshes", upstream, "met", met));
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
