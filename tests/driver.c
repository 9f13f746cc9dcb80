/*
 * driver.c - tl-driver, real processes for the concurrency and crash tests.
 *
 *   tl-driver hammer DB NPROC NPROF CALLS   NPROC processes x CALLS token/refresh
 *                                            calls over profiles p0..p{NPROF-1}
 *   tl-driver crowd DB NPROC PROFILE        NPROC processes released at once on
 *                                            one expired credential
 *   tl-driver crash DB URL ITER NPROF       ITER rounds: two refreshing processes,
 *                                            each killed with SIGKILL at a random
 *                                            moment; unknown outcomes are marked
 *                                            dead and replaced by a fresh grant
 *   tl-driver hermes-writer AUTH URL DB N    behaves like Hermes: 2N rounds of flock(auth.lock),
 *                                            read, bump writer_seq, and every other round refresh
 *                                            at the portal with the file's RT and write the new
 *                                            pair atomically; after a rotation it waits until
 *                                            the ledger has adopted the new RT (a sync ran)
 *   tl-driver surrogate DB PROFILE [CRED]    prints a new surrogate refresh token (strict mode) for
 *                                            the profile's nous credential (or CRED): what phase 2
 *                                            writes into a strict profile's auth.json
 *   tl-driver post URL [HEADER VALUE]       one POST through the libcurl transport, as a
 *                                            refresh would send it; prints the outcome as
 *                                            "failure status detail" (0 done, 1 not sent,
 *                                            2 lost)
 *   tl-driver verify DB URL                  every RT the portal issued is in the
 *                                            ledger, or is the answer to an
 *                                            attempt recorded `unknown`; no reuse;
 *                                            integrity ok
 * Each prints one summary line and exits non-zero if an expectation fails.
 * TL_DRIVER_PROVIDER names the provider of the profiles' credentials (default nous), so the
 * same hammer, crowd and crash runs prove the promise for openai-codex and anthropic.
 */
#include "internal.h"
#include "portal_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The provider whose credentials the runs use (TL_DRIVER_PROVIDER, default nous). */
static const char *provider(void)
{
  const char *p = getenv("TL_DRIVER_PROVIDER");
  return p && *p ? p : "nous";
}

static tl_store *open_or_die(const char *db, const char *cmd)
{
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, db, 0, &err) != TL_OK) {
    fprintf(stderr, "driver: %s\n", err.message);
    exit(2);
  }
  tl_store_set_actor(s, NULL, cmd);
  return s;
}

static json_t *admin(const char *url, const char *path, int post)
{
  return portal_call(url, path, post ? "" : NULL, NULL);
}

static int64_t credential_of(tl_store *s, const char *profile)
{
  int64_t id = 0;
  tl_error err = {0};
  if (tl_credential_find(&id, s, profile, provider(), &err) != TL_OK)
    return 0;
  return id;
}

static int hammer(const char *db, int nproc, int nprof, int calls)
{
  for (int c = 0; c < nproc; c++) {
    pid_t pid = fork();
    if (pid == 0) {
      tl_store *s = open_or_die(db, "hammer");
      int failures = 0;
      for (int i = 0; i < calls; i++) {
        char prof[16];
        snprintf(prof, sizeof prof, "p%d", (c + i) % nprof);
        tl_error err = {0};
        tl_token *t = NULL;
        tl_status rc;
        if (i % 3 == 2)
          rc = tl_refresh(&t, s, credential_of(s, prof), TL_REFRESH_FORCE, &err);
        else
          rc = tl_token_get(&t, s, prof, provider(), 0, &err);
        tl_token_free(t);
        if (rc != TL_OK) {
          fprintf(stderr, "hammer[%d] call %d on %s: %s: %s\n", c, i, prof, tl_status_name(rc), err.message);
          failures++;
        }
      }
      tl_store_free(s);
      _exit(failures > 100 ? 100 : failures);
    }
  }
  int bad = 0, status;
  while (wait(&status) > 0)
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      bad++;
  printf("hammer: %d processes x %d calls, %d process(es) with failures\n", nproc, calls, bad);
  return bad ? 1 : 0;
}

static int crowd(const char *db, int nproc, const char *profile)
{
  int gate[2];
  if (pipe(gate) != 0)
    return 2;
  for (int c = 0; c < nproc; c++) {
    pid_t pid = fork();
    if (pid == 0) {
      close(gate[1]);
      tl_store *s = open_or_die(db, "crowd");
      char x;
      if (read(gate[0], &x, 1) < 0)
        _exit(3);
      tl_error err = {0};
      tl_token *t = NULL;
      tl_status rc = tl_token_get(&t, s, profile, provider(), 0, &err);
      int refreshed = t ? t->refreshed : 0;
      tl_token_free(t);
      tl_store_free(s);
      if (rc != TL_OK)
        fprintf(stderr, "crowd[%d]: %s\n", c, err.message);
      _exit(rc != TL_OK ? 1 : refreshed ? 10 : 0);
    }
  }
  close(gate[0]);
  usleep(300000); /* every child is open and blocked on the gate */
  close(gate[1]);
  int failed = 0, refreshers = 0, status;
  while (wait(&status) > 0) {
    if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 10))
      failed++;
    else if (WEXITSTATUS(status) == 10)
      refreshers++;
  }
  printf("crowd: %d processes, %d refreshed, %d failed\n", nproc, refreshers, failed);
  return failed || refreshers != 1 ? 1 : 0;
}

/* Replaces every uncertain credential by marking it dead and adding a fresh grant. */
static int replace_uncertain(tl_store *s, const char *url, int nprof, int *unknowns)
{
  tl_error err = {0};
  int64_t reaped = 0;
  if (tl__reap_dead_attempts(&reaped, s, 1, &err) != TL_OK) {
    fprintf(stderr, "crash: reap: %s\n", err.message);
    return -1;
  }
  for (int p = 0; p < nprof; p++) {
    char prof[16];
    snprintf(prof, sizeof prof, "p%d", p);
    static const char sql[] = "SELECT c.id, c.status FROM credential c JOIN pool_entry e ON e.credential_id = c.id "
                              "JOIN profile f ON f.id = e.profile_id WHERE f.name = :p ORDER BY c.id DESC LIMIT 1";
    sqlite3_stmt *st = NULL;
    if (tl__prepare(&st, s, sql, &err) != TL_OK || TL_BIND(st, &err, TL_TEXT(":p", prof)) != TL_OK) {
      fprintf(stderr, "crash: %s\n", err.message);
      return -1;
    }
    if (sqlite3_step(st) != SQLITE_ROW) {
      sqlite3_reset(st);
      continue;
    }
    int64_t cred = sqlite3_column_int64(st, 0);
    int uncertain = strcmp((const char *)sqlite3_column_text(st, 1), "uncertain") == 0;
    int dead = strcmp((const char *)sqlite3_column_text(st, 1), "needs_reauth") == 0;
    sqlite3_reset(st);
    if (!uncertain && !dead)
      continue;
    if (uncertain) {
      (*unknowns)++;
      if (tl_recover(NULL, s, cred, TL_RECOVER_MARK_DEAD, &err) != TL_OK) {
        fprintf(stderr, "crash: mark dead: %s\n", err.message);
        return -1;
      }
    }
    json_t *seed = admin(url, "/admin/seed", 1);
    const char *rt = json_string_value(json_object_get(seed, "refresh_token"));
    if (!rt) {
      fprintf(stderr, "crash: portal did not seed a grant\n");
      json_decref(seed);
      return -1;
    }
    tl_credential_spec spec = {.provider = provider(), .profile = prof, .refresh_token = rt, .origin = "login"};
    tl_status rc = tl_credential_add(NULL, s, &spec, &err);
    json_decref(seed);
    if (rc != TL_OK) {
      fprintf(stderr, "crash: add: %s\n", err.message);
      return -1;
    }
  }
  return 0;
}

static void refresher(const char *db, int nprof, unsigned seed)
{
  tl_store *s = open_or_die(db, "crash");
  srand(seed);
  for (;;) {
    char prof[16];
    snprintf(prof, sizeof prof, "p%d", rand() % nprof);
    tl_error err = {0};
    int64_t cred = credential_of(s, prof);
    if (cred)
      tl_refresh(NULL, s, cred, TL_REFRESH_FORCE, &err);
  }
}

static int crash(const char *db, const char *url, int iters, int nprof)
{
  tl_store *s = open_or_die(db, "crash-supervisor");
  int unknowns = 0;
  srand((unsigned)time(NULL) ^ (unsigned)getpid());
  for (int i = 0; i < iters; i++) {
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
      unsigned seed = (unsigned)rand();
      kids[k] = fork();
      if (kids[k] == 0)
        refresher(db, nprof, seed);
    }
    usleep((useconds_t)(rand() % 40000));
    kill(kids[0], SIGKILL);
    usleep((useconds_t)(rand() % 10000));
    kill(kids[1], SIGKILL);
    waitpid(kids[0], NULL, 0);
    waitpid(kids[1], NULL, 0);
    if (replace_uncertain(s, url, nprof, &unknowns) != 0) {
      tl_store_free(s);
      return 1;
    }
  }
  tl_store_free(s);
  printf("crash: %d kill rounds (%d kills), %d unknown outcome(s) marked dead and replaced\n", iters, 2 * iters,
         unknowns);
  return 0;
}

static int verify(const char *db, const char *url)
{
  tl_store *s = open_or_die(db, "verify");
  json_t *ctr = admin(url, "/admin/counters", 0);
  json_t *issued = admin(url, "/admin/issued", 0);
  int bad = 0, in_ledger = 0, lost_ok = 0;
  if (!ctr || !issued) {
    fprintf(stderr, "verify: portal did not answer\n");
    return 2;
  }
  json_int_t reuse = json_integer_value(json_object_get(ctr, "reuse_detections"));
  json_int_t refreshes = json_integer_value(json_object_get(ctr, "refreshes"));
  if (reuse != 0) {
    fprintf(stderr, "verify: the portal saw %lld reused refresh token(s)\n", (long long)reuse);
    bad++;
  }
  static const char find_sql[] = "SELECT id FROM refresh_token WHERE fingerprint = :fp";
  static const char lost_sql[] = "SELECT count(*) FROM refresh_token t JOIN refresh_attempt a ON a.rt_id = t.id "
                                 "WHERE t.fingerprint = :fp AND a.outcome = 'unknown'";
  tl_error err = {0};
  size_t i;
  json_t *row;
  json_array_foreach(issued, i, row)
  {
    const char *fp = json_string_value(json_object_get(row, "fingerprint"));
    json_int_t fam = json_integer_value(json_object_get(row, "family"));
    json_int_t gen = json_integer_value(json_object_get(row, "generation"));
    sqlite3_stmt *st = NULL;
    if (tl__prepare(&st, s, find_sql, &err) != TL_OK || TL_BIND(st, &err, TL_TEXT(":fp", fp)) != TL_OK) {
      fprintf(stderr, "verify: %s\n", err.message);
      return 1;
    }
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    if (found) {
      in_ledger++;
      continue;
    }
    /* Not in the ledger: the answer to generation gen-1 of this family must have been lost. */
    const char *parent = NULL;
    size_t k;
    json_t *other;
    json_array_foreach(issued, k, other)
    {
      if (json_integer_value(json_object_get(other, "family")) == fam &&
          json_integer_value(json_object_get(other, "generation")) == gen - 1)
        parent = json_string_value(json_object_get(other, "fingerprint"));
    }
    int64_t lost = 0;
    if (parent) {
      if (tl__prepare(&st, s, lost_sql, &err) != TL_OK || TL_BIND(st, &err, TL_TEXT(":fp", parent)) != TL_OK) {
        fprintf(stderr, "verify: %s\n", err.message);
        return 1;
      }
      if (sqlite3_step(st) == SQLITE_ROW)
        lost = sqlite3_column_int64(st, 0);
      sqlite3_reset(st);
    }
    if (lost > 0) {
      lost_ok++;
    } else {
      fprintf(stderr,
              "verify: RT %.12s (family %lld, generation %lld) was issued but is neither in the ledger nor "
              "the answer to an unknown attempt\n",
              fp, (long long)fam, (long long)gen);
      bad++;
    }
  }
  int64_t ok = 0;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(s->db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    ok = strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
  sqlite3_finalize(st);
  if (!ok) {
    fprintf(stderr, "verify: integrity_check failed\n");
    bad++;
  }
  int64_t rotated = 0;
  if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM refresh_attempt WHERE outcome = 'rotated'", -1, &st, NULL) ==
          SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    rotated = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  printf("verify: portal refreshes %lld, ledger rotations %lld, reuse %lld, issued RTs %zu (%d in the ledger, %d "
         "answers to unknown attempts), integrity %s\n",
         (long long)refreshes, (long long)rotated, (long long)reuse, json_array_size(issued), in_ledger, lost_ok,
         ok ? "ok" : "FAILED");
  json_decref(ctr);
  json_decref(issued);
  tl_store_free(s);
  return bad ? 1 : 0;
}

static int hermes_round(const char *auth, const char *url, int seq, int rotate, char fp[65])
{
  char lock[4096], tmp[4200];
  snprintf(lock, sizeof lock, "%s", auth);
  char *dot = strrchr(lock, '.');
  if (dot)
    *dot = '\0';
  strcat(lock, ".lock");
  int fd = open(lock, O_RDWR | O_CREAT, 0600);
  if (fd < 0 || flock(fd, LOCK_EX) != 0)
    return 1;
  json_error_t je;
  json_t *doc = json_load_file(auth, JSON_REJECT_DUPLICATES, &je);
  int rc = 1;
  if (!doc) {
    fprintf(stderr, "hermes-writer: torn or unreadable auth.json: %s\n", je.text);
    goto done;
  }
  json_object_set_new(doc, "writer_seq", json_integer(seq));
  if (rotate) {
    json_t *nous = json_object_get(json_object_get(doc, "providers"), "nous");
    const char *rt = json_string_value(json_object_get(nous, "refresh_token"));
    json_t *ans = portal_call(url, "/api/oauth/token", "grant_type=refresh_token&client_id=hermes-cli", rt ? rt : "");
    const char *nrt = json_string_value(json_object_get(ans, "refresh_token"));
    if (!nrt) {
      fprintf(stderr, "hermes-writer: the portal did not rotate the refresh token\n");
      json_decref(ans);
      goto done;
    }
    tl_fingerprint(fp, nrt, strlen(nrt));
    json_object_set(nous, "refresh_token", json_object_get(ans, "refresh_token"));
    json_object_set(nous, "access_token", json_object_get(ans, "access_token"));
    json_decref(ans);
  }
  snprintf(tmp, sizeof tmp, "%s.writer.tmp", auth);
  if (json_dump_file(doc, tmp, JSON_INDENT(2)) != 0 || rename(tmp, auth) != 0)
    goto done;
  rc = 0;
done:
  json_decref(doc);
  flock(fd, LOCK_UN);
  close(fd);
  return rc;
}

static int hermes_writer(const char *auth, const char *url, const char *db, int rotations)
{
  tl_store *s = NULL;
  tl_error err = {0};
  if (tl_store_open(&s, db, TL_OPEN_READONLY, &err) != TL_OK) {
    fprintf(stderr, "hermes-writer: %s\n", err.message);
    return 2;
  }
  int adopted = 0;
  for (int i = 0; i < 2 * rotations; i++) {
    char fp[65] = "";
    int rotate = i % 2 == 1;
    if (hermes_round(auth, url, i, rotate, fp) != 0) {
      tl_store_free(s);
      return 1;
    }
    if (!rotate)
      continue;
    /* Wait for a sync to adopt this rotation before the next one. */
    int64_t deadline = tl__now_ms() + 20000;
    for (;;) {
      static const char sql[] = "SELECT 1 FROM refresh_token WHERE fingerprint = :fp";
      sqlite3_stmt *st = NULL;
      if (tl__prepare(&st, s, sql, &err) != TL_OK || TL_BIND(st, &err, TL_TEXT(":fp", fp)) != TL_OK) {
        fprintf(stderr, "hermes-writer: %s\n", err.message);
        return 1;
      }
      int known = sqlite3_step(st) == SQLITE_ROW;
      sqlite3_reset(st);
      if (known) {
        adopted++;
        break;
      }
      if (tl__now_ms() > deadline) {
        fprintf(stderr, "hermes-writer: rotation %d was never adopted by a sync\n", i / 2);
        tl_store_free(s);
        return 1;
      }
      usleep(5000);
    }
  }
  tl_store_free(s);
  printf("hermes-writer: %d writes, %d rotations, all adopted into the lineage\n", 2 * rotations, adopted);
  return 0;
}

static int surrogate(const char *db, const char *profile, const char *cred_text)
{
  tl_store *s = open_or_die(db, "surrogate");
  tl_error err = {0};
  int64_t pid = 0, cred = cred_text ? atoll(cred_text) : credential_of(s, profile);
  char *sur = NULL;
  if (tl__profile_id(&pid, s, profile, &err) != TL_OK || tl__strict_surrogate(&sur, s, cred, pid, &err) != TL_OK) {
    fprintf(stderr, "driver: %s\n", err.message);
    tl_store_free(s);
    return 1;
  }
  puts(sur);
  tl_secret_free(sur);
  tl_store_free(s);
  return 0;
}

/*
 * The transport on its own, for the loopback and proxy checks (tests/e2e/network.sh). With
 * TL_DRIVER_LOOPBACK_ONLY=1 the URL rules are skipped and the transfer alone must keep the
 * connection on loopback addresses (the defence behind them: a name that resolves elsewhere).
 */
static int post(const char *url, const char *header, const char *value)
{
  tl_http_request req = {.url = url,
                         .body = "grant_type=refresh_token&client_id=hermes-cli",
                         .rt_header = header,
                         .rt_value = value,
                         .connect_timeout_ms = 2000,
                         .timeout_ms = 4000};
  tl_http_response resp;
  memset(&resp, 0, sizeof resp);
  const char *direct = getenv("TL_DRIVER_LOOPBACK_ONLY");
  if (direct && strcmp(direct, "1") == 0)
    tl__curl_transfer(&req, &resp, 1);
  else
    tl__curl_post(NULL, &req, &resp);
  printf("%d %ld %s\n", (int)resp.failure, resp.status, resp.detail);
  tl__http_response_clear(&resp);
  return 0;
}

int main(int argc, char **argv)
{
  signal(SIGPIPE, SIG_IGN);
  if (argc == 6 && strcmp(argv[1], "hammer") == 0)
    return hammer(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  if (argc == 5 && strcmp(argv[1], "crowd") == 0)
    return crowd(argv[2], atoi(argv[3]), argv[4]);
  if (argc == 6 && strcmp(argv[1], "crash") == 0)
    return crash(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
  if (argc == 6 && strcmp(argv[1], "hermes-writer") == 0)
    return hermes_writer(argv[2], argv[3], argv[4], atoi(argv[5]));
  if ((argc == 3 || argc == 5) && strcmp(argv[1], "post") == 0)
    return post(argv[2], argc == 5 ? argv[3] : NULL, argc == 5 ? argv[4] : NULL);
  if (argc == 4 && strcmp(argv[1], "verify") == 0)
    return verify(argv[2], argv[3]);
  if ((argc == 4 || argc == 5) && strcmp(argv[1], "surrogate") == 0)
    return surrogate(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
  fprintf(stderr, "usage: tl-driver hammer DB NPROC NPROF CALLS | crowd DB NPROC PROFILE | crash DB URL ITER NPROF | "
                  "hermes-writer AUTH URL DB N | verify DB URL | surrogate DB PROFILE [CRED]\n");
  return 2;
}
