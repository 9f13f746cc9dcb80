/*
 * hermes_sim.c - tl-hermes, a stand-in for Hermes Agent's own Nous refresh, as
 * faithful to reference/hermes-auth.md §3.3-3.7 as a test needs:
 *
 *   tl-hermes refresh ROOT PROFILE URL [--force]
 *       one runtime-credential resolution in one profile ("default" = ROOT):
 *       profile auth.lock (then the root's when the grant comes from the root),
 *       re-read, shared nous_auth.lock, merge the shared store ("the shared
 *       store wins when its refresh token differs, or its access token expires
 *       later"), refresh only if the invoke JWT is not usable (scope without
 *       inference:invoke or exp within 120 s) or forced as after a 401 (then
 *       the POST is skipped when the file already holds a different usable
 *       token; --force-current: the 401 was on the token the file holds now),
 *       persist the profile at once, mirror the shared store (sorted
 *       keys, no agent_key), release in reverse; then a separate, later
 *       auth.lock transaction copies the singleton into the device_code row.
 *       URL "file" refreshes at the state's portal_base_url, as Hermes does.
 *       Exit 0 refreshed or not needed, 3 quarantined (the server refused:
 *       reuse), 4 lock timeout, 5 torn or unreadable file.
 *   tl-hermes run ROOT URL SECONDS FORCE_PERMILLE PROFILE...
 *       one process per profile doing the above in a loop (every 10-40 ms)
 *       until SECONDS pass, forced FORCE_PERMILLE times in 1000 (a 401 on the
 *       bearer it holds, Hermes' stampede rule applies); prints totals and exits
 *       non-zero if any was quarantined or read a torn file.
 *   tl-hermes check ROOT PROFILE
 *       would Hermes rewrite this profile's auth.json for format reasons alone?
 *       The device_code row and providers.nous must agree on access_token,
 *       refresh_token, expires_at, agent_key, agent_key_expires_at and
 *       inference_base_url, and the shared store must hold the same refresh
 *       token and no later expiry. Exit 0 if not, 1 with the reason if so.
 *
 * Test code: never linked into the library or the tool.
 */
#define _XOPEN_SOURCE 700 /* strptime */
#include "portal_client.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOCK_TIMEOUT_MS 15000
#define SKEW_S          120

enum { H_OK = 0, H_QUARANTINED = 3, H_LOCK_TIMEOUT = 4, H_TORN = 5 };

static int64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void iso(char *out, size_t n, int64_t ms, int micro)
{
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  if (micro)
    snprintf(out, n, "%s.%06d+00:00", base, (int)(ms % 1000) * 1000);
  else
    snprintf(out, n, "%s+00:00", base);
}

static int64_t parse_iso(const char *s)
{
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *p = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
  if (!p)
    return 0;
  int64_t ms = 0;
  if (*p == '.') {
    int d = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, d++)
      if (d < 3)
        ms = ms * 10 + (*p - '0');
    for (; d < 3; d++)
      ms *= 10;
  }
  return (int64_t)timegm(&tm) * 1000 + ms;
}

/* The JWT payload's claims (new reference) or NULL. */
static json_t *jwt_claims(const char *jwt)
{
  const char *a = jwt ? strchr(jwt, '.') : NULL, *b = a ? strchr(a + 1, '.') : NULL;
  if (!b || b - a - 1 > 4000)
    return NULL;
  char in[4100];
  unsigned char out[4100];
  size_t n = (size_t)(b - a - 1);
  for (size_t i = 0; i < n; i++)
    in[i] = a[1 + i] == '-' ? '+' : a[1 + i] == '_' ? '/' : a[1 + i];
  while (n % 4)
    in[n++] = '=';
  int len = EVP_DecodeBlock(out, (unsigned char *)in, (int)n);
  while (len > 0 && out[len - 1] == '\0')
    len--;
  return len > 0 ? json_loadb((const char *)out, (size_t)len, 0, NULL) : NULL;
}

/* Hermes' JWT-only rule: an invoke JWT with inference:invoke and exp beyond the skew. */
static int usable(json_t *nous)
{
  json_t *c = jwt_claims(json_string_value(json_object_get(nous, "access_token")));
  int ok = 0;
  if (c) {
    const char *scope = json_string_value(json_object_get(c, "scope"));
    json_int_t exp = json_integer_value(json_object_get(c, "exp"));
    ok = scope && strstr(scope, "inference:invoke") && exp > (json_int_t)(now_ms() / 1000) + SKEW_S;
  }
  json_decref(c);
  return ok;
}

static int64_t expiry(json_t *o)
{
  return parse_iso(json_string_value(json_object_get(o, "expires_at")));
}

/* ---- locks and files as Hermes does them ----------------------------------------------- */

static int lock_file(const char *path)
{
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return -1;
  int64_t deadline = now_ms() + LOCK_TIMEOUT_MS;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (now_ms() > deadline) {
      close(fd);
      return -2;
    }
    usleep(50000); /* Hermes polls every 50 ms */
  }
  return fd;
}

static void unlock_file(int fd)
{
  if (fd >= 0) {
    flock(fd, LOCK_UN);
    close(fd);
  }
}

static int save(const char *path, json_t *doc, int sorted)
{
  char dir[4096], tmp[8400], stem[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  *slash = '\0';
  snprintf(stem, sizeof stem, "%s", slash + 1);
  char *dot = strrchr(stem, '.');
  if (dot)
    *dot = '\0';
  snprintf(tmp, sizeof tmp, "%s/.%s_XXXXXX.tmp", dir, stem);
  int fd = mkstemps(tmp, 4);
  if (fd < 0)
    return -1;
  char *text = json_dumps(doc, JSON_INDENT(2) | (sorted ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER));
  size_t len = strlen(text);
  int rc = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0 ? 0 : -1;
  free(text);
  close(fd);
  if (rc == 0)
    rc = rename(tmp, path);
  if (rc != 0)
    unlink(tmp);
  return rc;
}

static void stamp(json_t *doc)
{
  char buf[64];
  iso(buf, sizeof buf, now_ms(), 1);
  json_object_set_new(doc, "version", json_integer(1));
  json_object_set_new(doc, "updated_at", json_string(buf));
}

/* ---- one resolution ------------------------------------------------------------------------ */

typedef struct paths {
  char auth[4096], lock[4096], root_lock[4096], shared[4096], shared_lock[4096];
} paths;

static void make_paths(paths *p, const char *root, const char *profile)
{
  if (strcmp(profile, "default") == 0) {
    snprintf(p->auth, sizeof p->auth, "%s/auth.json", root);
    snprintf(p->lock, sizeof p->lock, "%s/auth.lock", root);
  } else {
    snprintf(p->auth, sizeof p->auth, "%s/profiles/%s/auth.json", root, profile);
    snprintf(p->lock, sizeof p->lock, "%s/profiles/%s/auth.lock", root, profile);
  }
  snprintf(p->root_lock, sizeof p->root_lock, "%s/auth.lock", root);
  snprintf(p->shared, sizeof p->shared, "%s/shared/nous_auth.json", root);
  snprintf(p->shared_lock, sizeof p->shared_lock, "%s/shared/nous_auth.lock", root);
}

static void merge_shared(json_t *nous, json_t *shared)
{
  static const char *const keys[] = {"access_token", "refresh_token",   "token_type",  "scope",
                                     "client_id",    "portal_base_url", "obtained_at", "expires_at"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
    json_t *v = json_object_get(shared, keys[i]);
    if (v)
      json_object_set(nous, keys[i], v);
  }
  json_t *ib = json_object_get(shared, "inference_base_url");
  if (ib)
    json_object_set(nous, "inference_base_url", ib);
}

/* What Hermes writes after a refresh, the agent-key step included. */
static void apply_answer(json_t *nous, json_t *ans)
{
  int64_t now = now_ms();
  char buf[64];
  json_t *at = json_object_get(ans, "access_token"), *rt = json_object_get(ans, "refresh_token");
  json_t *old_key = json_object_get(nous, "agent_key");
  int same_key = json_equal(old_key, at);
  json_object_set(nous, "access_token", at);
  if (json_is_string(rt))
    json_object_set(nous, "refresh_token", rt);
  json_object_set(nous, "token_type", json_object_get(ans, "token_type"));
  json_object_set(nous, "scope", json_object_get(ans, "scope"));
  json_t *ib = json_object_get(ans, "inference_base_url");
  if (json_is_string(ib))
    json_object_set(nous, "inference_base_url", ib);
  iso(buf, sizeof buf, now, 1);
  json_object_set_new(nous, "obtained_at", json_string(buf));
  json_int_t ei = json_integer_value(json_object_get(ans, "expires_in"));
  json_t *claims = jwt_claims(json_string_value(at));
  json_int_t exp = json_integer_value(json_object_get(claims, "exp"));
  json_decref(claims);
  iso(buf, sizeof buf, exp * 1000, 0);
  json_object_set_new(nous, "expires_at", json_string(buf));
  json_object_set_new(nous, "expires_in", json_integer(exp - now / 1000 > 0 ? exp - now / 1000 : 0));
  (void)ei;
  json_object_set(nous, "agent_key", at);
  json_object_set_new(nous, "agent_key_id", json_null());
  json_object_set_new(nous, "agent_key_reused", json_false());
  json_object_set_new(nous, "agent_key_expires_at", json_string(buf));
  json_object_set_new(nous, "agent_key_expires_in", json_integer(exp - now / 1000 > 0 ? exp - now / 1000 : 0));
  if (!same_key) {
    iso(buf, sizeof buf, now, 1);
    json_object_set_new(nous, "agent_key_obtained_at", json_string(buf));
  }
}

static json_t *shared_of(json_t *nous)
{
  json_t *sh = json_object();
  static const char *const keys[] = {"access_token",    "refresh_token",      "token_type",  "scope",     "client_id",
                                     "portal_base_url", "inference_base_url", "obtained_at", "expires_at"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
    json_t *v = json_object_get(nous, keys[i]);
    if (v)
      json_object_set(sh, keys[i], v);
  }
  json_object_set_new(sh, "_schema", json_integer(1));
  char buf[64];
  iso(buf, sizeof buf, now_ms(), 1);
  json_object_set_new(sh, "updated_at", json_string(buf));
  return sh;
}

static void quarantine(json_t *doc, json_t *nous)
{
  static const char *const gone[] = {"access_token",     "refresh_token",        "expires_at",
                                     "expires_in",       "obtained_at",          "agent_key",
                                     "agent_key_id",     "agent_key_expires_at", "agent_key_expires_in",
                                     "agent_key_reused", "agent_key_obtained_at"};
  for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
    json_object_del(nous, gone[i]);
  json_object_set_new(nous, "last_auth_error",
                      json_pack("{s:s, s:s, s:b}", "provider", "nous", "code", "invalid_grant", "relogin_required", 1));
  json_t *rows = json_object_get(json_object_get(doc, "credential_pool"), "nous");
  for (size_t i = json_array_size(rows); i-- > 0;) {
    const char *src = json_string_value(json_object_get(json_array_get(rows, i), "source"));
    if (src && (strcmp(src, "device_code") == 0 || strcmp(src, "manual:device_code") == 0))
      json_array_remove(rows, i);
  }
}

/* The later, separate transaction: the device_code row takes the singleton's tokens. */
static int sync_pool_row(const paths *p)
{
  static const char *const keys[] = {"access_token",         "refresh_token",      "expires_at", "agent_key",
                                     "agent_key_expires_at", "inference_base_url", "obtained_at"};
  int fd = lock_file(p->lock);
  if (fd < 0)
    return fd == -2 ? H_LOCK_TIMEOUT : H_TORN;
  json_error_t je;
  json_t *doc = json_load_file(p->auth, JSON_REJECT_DUPLICATES, &je);
  int rc = H_OK;
  if (!doc) {
    rc = H_TORN;
    goto done;
  }
  json_t *nous = json_object_get(json_object_get(doc, "providers"), "nous");
  json_t *rows = json_object_get(json_object_get(doc, "credential_pool"), "nous");
  int changed = 0;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    if (!json_is_string(json_object_get(nous, "refresh_token")) ||
        strcmp(json_string_value(json_object_get(row, "source")), "device_code") != 0)
      continue;
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
      json_t *v = json_object_get(nous, keys[k]);
      if (v && !json_equal(v, json_object_get(row, keys[k]))) {
        json_object_set(row, keys[k], v);
        changed = 1;
      }
    }
  }
  if (changed) {
    stamp(doc);
    if (save(p->auth, doc, 0) != 0)
      rc = H_TORN;
  }
done:
  json_decref(doc);
  unlock_file(fd);
  return rc;
}

typedef struct tally {
  int refreshed, skipped, merged, quarantined, torn, timeouts;
} tally;

/* force: 0 no, 1 after a 401 on the token read before the lock, 2 after a 401 on whatever the file holds. */
static int resolve(const char *root, const char *profile, const char *url, int force, tally *t)
{
  paths p;
  make_paths(&p, root, profile);
  int rc = H_OK, fd = -1, rfd = -1, sfd = -1;
  json_t *doc = NULL, *shared = NULL;
  json_error_t je;
  /* The bearer that just got a 401, as Hermes passes it along. */
  char stale[8192] = "";
  json_t *peek = force ? json_load_file(p.auth, 0, &je) : NULL;
  snprintf(
      stale, sizeof stale, "%s",
      json_string_value(json_object_get(json_object_get(json_object_get(peek, "providers"), "nous"), "access_token"))
          ? json_string_value(
                json_object_get(json_object_get(json_object_get(peek, "providers"), "nous"), "access_token"))
          : "");
  json_decref(peek);
  if ((fd = lock_file(p.lock)) < 0) {
    rc = fd == -2 ? H_LOCK_TIMEOUT : H_TORN;
    goto done;
  }
  if (!(doc = json_load_file(p.auth, JSON_REJECT_DUPLICATES, &je))) {
    fprintf(stderr, "tl-hermes %s: torn or unreadable auth.json: %s\n", profile, je.text);
    rc = H_TORN;
    goto done;
  }
  json_t *nous = json_object_get(json_object_get(doc, "providers"), "nous");
  if (!json_is_object(nous)) {
    /* The grant comes from the root: lock it too (profile first, root second). */
    if (strcmp(profile, "default") != 0 && (rfd = lock_file(p.root_lock)) < 0) {
      rc = H_LOCK_TIMEOUT;
      goto done;
    }
    goto done; /* not exercised by the tests: every profile has its own file */
  }
  if (!json_is_string(json_object_get(nous, "refresh_token")))
    goto done; /* quarantined: Hermes fails fast without a network call */
  if (!force && usable(nous)) {
    t->skipped++;
    goto done;
  }
  if ((sfd = lock_file(p.shared_lock)) < 0) {
    rc = sfd == -2 ? H_LOCK_TIMEOUT : H_TORN;
    goto done;
  }
  shared = json_load_file(p.shared, JSON_REJECT_DUPLICATES, &je);
  if (!shared && access(p.shared, F_OK) == 0) {
    fprintf(stderr, "tl-hermes %s: torn shared store: %s\n", profile, je.text);
    rc = H_TORN;
    goto done;
  }
  int merged = 0;
  if (shared && json_is_string(json_object_get(shared, "refresh_token")) &&
      (!json_equal(json_object_get(shared, "refresh_token"), json_object_get(nous, "refresh_token")) ||
       expiry(shared) > expiry(nous))) {
    merge_shared(nous, shared);
    merged = 1;
    t->merged++;
  }
  const char *at = json_string_value(json_object_get(nous, "access_token"));
  int fresh_other = force == 1 && at && strcmp(at, stale) != 0 && usable(nous);
  if ((!force && usable(nous)) || fresh_other) {
    t->skipped++;
    if (merged) {
      stamp(doc);
      save(p.auth, doc, 0);
    }
    goto done;
  }
  /* Hermes refreshes at the state's portal_base_url ("file"), which strict mode points at serve. */
  const char *portal = strcmp(url, "file") == 0 ? json_string_value(json_object_get(nous, "portal_base_url")) : url;
  json_t *ans = portal_call(portal ? portal : url, "/api/oauth/token", "grant_type=refresh_token&client_id=hermes-cli",
                            json_string_value(json_object_get(nous, "refresh_token")));
  if (!ans || !json_is_string(json_object_get(ans, "access_token"))) {
    const char *e = json_string_value(json_object_get(ans, "error"));
    if (e && (strcmp(e, "invalid_grant") == 0 || strcmp(e, "refresh_token_reused") == 0)) {
      fprintf(stderr, "tl-hermes %s: the portal refused the refresh: %s\n", profile,
              json_string_value(json_object_get(ans, "error_description")));
      quarantine(doc, nous);
      stamp(doc);
      save(p.auth, doc, 0);
      unlink(p.shared);
      t->quarantined++;
      rc = H_QUARANTINED;
    }
    json_decref(ans);
    goto done;
  }
  apply_answer(nous, ans);
  json_decref(ans);
  stamp(doc);
  if (save(p.auth, doc, 0) != 0) { /* persisted at once, before anything else */
    rc = H_TORN;
    goto done;
  }
  json_t *sh = shared_of(nous);
  save(p.shared, sh, 1);
  json_decref(sh);
  t->refreshed++;
done:
  json_decref(shared);
  json_decref(doc);
  unlock_file(sfd);
  unlock_file(rfd);
  unlock_file(fd);
  if (rc == H_OK)
    rc = sync_pool_row(&p);
  if (rc == H_TORN)
    t->torn++;
  if (rc == H_LOCK_TIMEOUT)
    t->timeouts++;
  return rc;
}

/* ---- the commands ------------------------------------------------------------------------- */

static int run(const char *root, const char *url, int seconds, int force_pml, int n, char **profiles)
{
  int fds[64][2];
  pid_t kids[64];
  if (n > 64)
    n = 64;
  for (int i = 0; i < n; i++) {
    if (pipe(fds[i]) != 0)
      return 2;
    kids[i] = fork();
    if (kids[i] == 0) {
      close(fds[i][0]);
      srand((unsigned)getpid() ^ (unsigned)now_ms());
      tally t = {0};
      int64_t end = now_ms() + seconds * 1000LL;
      while (now_ms() < end) {
        usleep((useconds_t)(10000 + rand() % 30000));
        resolve(root, profiles[i], url, rand() % 1000 < force_pml, &t);
      }
      if (write(fds[i][1], &t, sizeof t) != (ssize_t)sizeof t)
        _exit(2);
      _exit(0);
    }
    close(fds[i][1]);
  }
  tally sum = {0};
  for (int i = 0; i < n; i++) {
    tally t = {0};
    if (read(fds[i][0], &t, sizeof t) != (ssize_t)sizeof t)
      sum.torn++;
    close(fds[i][0]);
    waitpid(kids[i], NULL, 0);
    sum.refreshed += t.refreshed;
    sum.skipped += t.skipped;
    sum.merged += t.merged;
    sum.quarantined += t.quarantined;
    sum.torn += t.torn;
    sum.timeouts += t.timeouts;
  }
  printf("tl-hermes: %d profiles, %d s: %d refreshes, %d merges from the shared store, %d not needed, %d "
         "quarantined, %d torn reads, %d lock timeouts\n",
         n, seconds, sum.refreshed, sum.merged, sum.skipped, sum.quarantined, sum.torn, sum.timeouts);
  return sum.quarantined || sum.torn ? 1 : 0;
}

static int check(const char *root, const char *profile)
{
  static const char *const keys[] = {"access_token", "refresh_token",        "expires_at",
                                     "agent_key",    "agent_key_expires_at", "inference_base_url"};
  paths p;
  make_paths(&p, root, profile);
  json_error_t je;
  json_t *doc = json_load_file(p.auth, JSON_REJECT_DUPLICATES, &je);
  if (!doc) {
    printf("%s: unreadable: %s\n", p.auth, je.text);
    return 1;
  }
  json_t *nous = json_object_get(json_object_get(doc, "providers"), "nous");
  json_t *rows = json_object_get(json_object_get(doc, "credential_pool"), "nous");
  int bad = 0;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    const char *src = json_string_value(json_object_get(row, "source"));
    if (!src || strcmp(src, "device_code") != 0)
      continue;
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
      if (json_object_get(nous, keys[k]) &&
          !json_equal(json_object_get(nous, keys[k]), json_object_get(row, keys[k]))) {
        printf("%s: the device_code row differs from providers.nous in %s: Hermes would rewrite it\n", p.auth, keys[k]);
        bad = 1;
      }
  }
  json_t *shared = json_load_file(p.shared, 0, &je);
  if (shared && nous) {
    if (!json_equal(json_object_get(shared, "refresh_token"), json_object_get(nous, "refresh_token"))) {
      printf("%s: the shared store holds another refresh token: Hermes would merge it\n", p.auth);
      bad = 1;
    } else if (expiry(shared) > expiry(nous)) {
      printf("%s: the shared store's access token expires later: Hermes would merge it\n", p.auth);
      bad = 1;
    }
    if (json_object_get(shared, "agent_key")) {
      printf("%s: the shared store holds agent_key\n", p.shared);
      bad = 1;
    }
  }
  json_decref(shared);
  json_decref(doc);
  return bad;
}

int main(int argc, char **argv)
{
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if ((argc == 5 || argc == 6) && strcmp(argv[1], "refresh") == 0) {
    tally t = {0};
    int force = argc == 6 ? strcmp(argv[5], "--force") == 0 ? 1 : strcmp(argv[5], "--force-current") == 0 ? 2 : -1 : 0;
    if (force < 0) {
      fprintf(stderr, "tl-hermes refresh: --force or --force-current\n");
      return 2;
    }
    int rc = resolve(argv[2], argv[3], argv[4], force, &t);
    printf("tl-hermes refresh %s: %s\n", argv[3],
           rc == H_QUARANTINED    ? "quarantined"
           : rc == H_LOCK_TIMEOUT ? "lock timeout"
           : rc == H_TORN         ? "torn file"
           : t.refreshed          ? "refreshed"
                                  : "not needed");
    return rc;
  }
  if (argc >= 7 && strcmp(argv[1], "run") == 0)
    return run(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argc - 6, argv + 6);
  if (argc == 4 && strcmp(argv[1], "check") == 0)
    return check(argv[2], argv[3]);
  fprintf(stderr,
          "usage: tl-hermes refresh ROOT PROFILE URL [--force | --force-current] | run ROOT URL SECONDS FORCE_PERMILLE "
          "PROFILE... | check ROOT PROFILE\n");
  return 2;
}
