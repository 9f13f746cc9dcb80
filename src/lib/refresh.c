/*
 * refresh.c - getting a valid access token, and the refresh protocol.
 *
 * The protocol (SPEC section 3) in three steps:
 *   1. Claim (BEGIN IMMEDIATE ... COMMIT): re-read the credential; return a
 *      token someone else just obtained (single-flight); wait for a live
 *      in-flight attempt; turn a dead owner's attempt into `unknown`; check
 *      the RT; insert an `in_flight` attempt, mark the RT `presented`, audit.
 *      The commit is durable (synchronous=FULL) before any byte leaves.
 *   2. Present: the POST, outside any transaction.
 *   3. Record (BEGIN IMMEDIATE ... COMMIT): the outcome, exactly one of
 *      rotated / rejected / transient / not_sent / unknown.
 *
 * Invariants kept here:
 *   - An RT is presented only from state `current` (or, by explicit operator
 *     decision or inside a declared grace window, once from `unknown`).
 *   - No write lock is held across the network.
 *   - An outcome that cannot be known (lost response, crash, unreadable 200)
 *     is recorded as `unknown` and is never presented again automatically.
 *   - A spent RT's plaintext is erased in the same transaction that spends it.
 *   - Exactly one process per credential presents at a time (partial unique
 *     index on in_flight attempts); others wait for its result.
 */
#include "internal.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define LEASE_MARGIN_MS      5000
#define CONNECT_TIMEOUT_MS   5000
#define TRANSIENT_COOLDOWN_S 60

void tl_token_free(tl_token *t)
{
  if (!t)
    return;
  tl_secret_free(t->access_token);
  free(t->entry_id);
  free(t->base_url);
  free(t);
}

static void sleep_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

/* ---- strategies --------------------------------------------------------- */

static const char *const strategy_names[] = {"fill_first", "round_robin", "least_used", "random"};

tl_status tl_strategy_parse(tl_strategy *out, const char *name, tl_error *err)
{
  tl_error_clear(err);
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, strategy_names[i]) == 0) {
      *out = (tl_strategy)i;
      return TL_OK;
    }
  return tl__err(err, TL_EINVAL, 0, "unknown strategy '%.40s': use fill_first, round_robin, least_used or random",
                 name ? name : "");
}

tl_status tl_strategy_set(tl_store *s, const char *profile, const char *provider, tl_strategy strat, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "INSERT INTO pool_strategy (profile_id, provider, strategy) VALUES (:p, :prov, :s) "
                            "ON CONFLICT (profile_id, provider) DO UPDATE SET strategy = :s";
  static const char prov_sql[] = "SELECT 1 FROM provider WHERE name = :name";
  int64_t pid;
  tl_status rc;
  if (!s || !profile || !provider || (unsigned)strat > 3)
    return tl__err(err, TL_EINVAL, 0, "strategy: bad arguments");
  if ((rc = tl__tx_begin(s, "strategy set", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__profile_id(&pid, s, profile, err)) != TL_OK || (rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":name", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "strategy set", err)) != TL_OK)
    goto fail;
  sqlite3_reset(st);
  if (!found) {
    rc = tl__err(err, TL_ENOTFOUND, 0, "provider '%s' is not configured", provider);
    goto fail;
  }
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":p", pid), TL_TEXT(":prov", provider), TL_TEXT(":s", strategy_names[strat]))) !=
          TL_OK ||
      (rc = tl__step_done(s, st, "strategy set", err)) != TL_OK)
    goto fail;
  tl__ids ids = {.profile = pid};
  if ((rc = tl__audit(
           s, "strategy_set", &ids,
           json_pack("{s:s, s:s, s:s}", "profile", profile, "provider", provider, "strategy", strategy_names[strat]),
           err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

/* ---- selection ---------------------------------------------------------- */

typedef struct candidate {
  int64_t entry_rowid, credential, expires_at;
  char *access_token; /* secret */
  char *entry_id, *base_url, *status;
  int64_t skew_ms, request_count, priority, not_before;
} candidate;

static void candidate_clear(candidate *c)
{
  tl_secret_free(c->access_token);
  free(c->entry_id);
  free(c->base_url);
  free(c->status);
  memset(c, 0, sizeof *c);
}

static int fresh(const candidate *c, int64_t now)
{
  return c->access_token && c->expires_at > 0 && c->expires_at - c->skew_ms > now;
}

/*
 * Loads the selectable entries of (profile, provider) in priority order, at
 * most max. Entries in cooldown, dead, or whose credential needs a new login
 * are skipped. Counts what was skipped for the error message.
 */
static const char select_sql[] =
    "SELECT e.id, e.entry_id, e.credential_id, c.access_token, coalesce(c.expires_at, 0), c.status, "
    "pv.skew_s * 1000, c.base_url, e.request_count, e.priority, "
    "coalesce(ps.strategy, 'fill_first'), coalesce(c.refresh_not_before, 0) "
    "FROM profile p JOIN pool_entry e ON e.profile_id = p.id AND e.provider = :provider "
    "JOIN credential c ON c.id = e.credential_id JOIN provider pv ON pv.name = e.provider "
    "LEFT JOIN pool_strategy ps ON ps.profile_id = p.id AND ps.provider = e.provider "
    "WHERE p.name = :profile AND (e.cooldown_until IS NULL OR e.cooldown_until <= :now) "
    "AND e.last_status IS NOT 'dead' AND c.status <> 'needs_reauth' ORDER BY e.priority, e.id";

static tl_status why_none(tl_store *s, const char *profile, const char *provider, tl_error *err)
{
  static const char sql[] =
      "SELECT count(*), sum(c.status = 'needs_reauth' OR e.last_status IS 'dead'), "
      "sum(e.cooldown_until > :now), min(CASE WHEN e.cooldown_until > :now THEN e.cooldown_until END), "
      "sum(e.credential_id IS NULL) "
      "FROM profile p JOIN pool_entry e ON e.profile_id = p.id AND e.provider = :provider "
      "LEFT JOIN credential c ON c.id = e.credential_id WHERE p.name = :profile";
  int64_t pid;
  tl_status rc = tl__profile_id(&pid, s, profile, err);
  if (rc != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int64_t now = tl__now_ms();
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":profile", profile), TL_TEXT(":provider", provider), TL_INT(":now", now))) !=
          TL_OK ||
      (rc = tl__step_row(&found, s, st, "select entry", err)) != TL_OK)
    return rc;
  int64_t total = 0, dead = 0, cooling = 0, until = 0, keyless = 0;
  if (found) {
    total = sqlite3_column_int64(st, 0);
    dead = sqlite3_column_int64(st, 1);
    cooling = sqlite3_column_int64(st, 2);
    until = sqlite3_column_int64(st, 3);
    keyless = sqlite3_column_int64(st, 4);
  }
  sqlite3_reset(st);
  if (total == 0)
    return tl__err(err, TL_ENOTFOUND, 0,
                   "profile '%s' has no %s credential; add one with 'tokenledger credential "
                   "add %s --profile %s' or import its auth.json",
                   profile, provider, provider, profile);
  if (cooling > 0 && dead + cooling + keyless >= total)
    return tl__err(err, TL_ETRANSIENT, 0,
                   "every %s entry of profile '%s' is cooling down; the first is usable in "
                   "%lld s",
                   provider, profile, (long long)((until - now + 999) / 1000));
  if (dead > 0)
    return tl__err(err, TL_EREAUTH, 0,
                   "every %s credential of profile '%s' needs a new login; run 'tokenledger "
                   "login %s --profile %s' (or log in with Hermes and import)",
                   provider, profile, provider, profile);
  return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' has only API-key or borrowed %s entries; nothing to refresh",
                 profile, provider);
}

#define MAX_CANDIDATES 64

static tl_status load_candidates(candidate *out, size_t *n, char strategy[16], tl_store *s, const char *profile,
                                 const char *provider, tl_error *err)
{
  sqlite3_stmt *st;
  tl_status trc;
  *n = 0;
  if ((trc = tl__prepare(&st, s, select_sql, err)) != TL_OK ||
      (trc = TL_BIND(st, err, TL_TEXT(":profile", profile), TL_TEXT(":provider", provider),
                     TL_INT(":now", tl__now_ms()))) != TL_OK)
    return trc;
  strategy[0] = '\0';
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < MAX_CANDIDATES) {
    candidate *c = &out[*n];
    memset(c, 0, sizeof *c);
    c->entry_rowid = sqlite3_column_int64(st, 0);
    c->entry_id = tl__col_dup(st, 1);
    c->credential = sqlite3_column_int64(st, 2);
    c->access_token = tl__col_dup(st, 3);
    c->expires_at = sqlite3_column_int64(st, 4);
    c->status = tl__col_dup(st, 5);
    c->skew_ms = sqlite3_column_int64(st, 6);
    c->base_url = tl__col_dup(st, 7);
    c->request_count = sqlite3_column_int64(st, 8);
    c->priority = sqlite3_column_int64(st, 9);
    snprintf(strategy, 16, "%s", (const char *)sqlite3_column_text(st, 10));
    c->not_before = sqlite3_column_int64(st, 11);
    (*n)++;
    if (!c->entry_id || !c->status) {
      sqlite3_reset(st);
      return tl__oom(err);
    }
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    trc = tl__err_db(err, s, "select entry");
    sqlite3_reset(st);
    return trc;
  }
  sqlite3_reset(st);
  return TL_OK;
}

/* Index of the entry the strategy picks among usable candidates, -1 if none. */
static int pick(const candidate *c, size_t n, const char *strategy)
{
  int usable[MAX_CANDIDATES];
  size_t k = 0;
  int64_t now = tl__now_ms();
  /* Usable: a fresh access token, or a refresh that may be attempted now. */
  for (size_t i = 0; i < n; i++)
    if (fresh(&c[i], now) || (strcmp(c[i].status, "active") == 0 && c[i].not_before <= now))
      usable[k++] = (int)i;
  /* Nothing usable now: fall back to an entry whose refresh is only backing off, so the
   * caller hears "try later" rather than "unknown". */
  for (size_t i = 0; k == 0 && i < n; i++)
    if (strcmp(c[i].status, "active") == 0)
      usable[k++] = (int)i;
  if (k == 0)
    return -1;
  if (strcmp(strategy, "least_used") == 0) {
    int best = usable[0];
    for (size_t i = 1; i < k; i++)
      if (c[usable[i]].request_count < c[best].request_count)
        best = usable[i];
    return best;
  }
  if (strcmp(strategy, "random") == 0) {
    unsigned r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
      r = (unsigned)now;
    return usable[r % k];
  }
  return usable[0]; /* fill_first, and round_robin's head */
}

/* Counter-keeping strategies write after selecting (SPEC: they may write). */
static tl_status note_use(tl_store *s, const candidate *c, const char *strategy, tl_error *err)
{
  static const char rr_sql[] =
      "UPDATE pool_entry SET priority = (SELECT max(priority) + 1 FROM pool_entry WHERE profile_id = "
      "(SELECT profile_id FROM pool_entry WHERE id = :id) AND provider = (SELECT provider FROM pool_entry WHERE id "
      "= :id)) WHERE id = :id";
  static const char lu_sql[] = "UPDATE pool_entry SET request_count = request_count + 1 WHERE id = :id";
  const char *sql = strcmp(strategy, "round_robin") == 0 ? rr_sql : strcmp(strategy, "least_used") == 0 ? lu_sql : NULL;
  if (!sql)
    return TL_OK;
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", c->entry_rowid))) != TL_OK)
    return rc;
  return tl__step_done(s, st, "pool counters", err);
}

static tl_status token_from(tl_token **out, const candidate *c, tl_error *err)
{
  tl_token *t = calloc(1, sizeof *t);
  if (!t)
    return tl__oom(err);
  t->access_token = tl__strdup(c->access_token);
  t->entry_id = tl__strdup(c->entry_id);
  t->base_url = tl__strdup(c->base_url);
  t->expires_at_ms = c->expires_at;
  t->credential = c->credential;
  if (!t->access_token || !t->entry_id || (c->base_url && !t->base_url)) {
    tl_token_free(t);
    return tl__oom(err);
  }
  *out = t;
  return TL_OK;
}

tl_status tl_credential_find(int64_t *out, tl_store *s, const char *profile, const char *provider, tl_error *err)
{
  tl_error_clear(err);
  candidate c[MAX_CANDIDATES];
  size_t n = 0;
  char strategy[16];
  if (!out || !s || !profile || !provider)
    return tl__err(err, TL_EINVAL, 0, "credential find: bad arguments");
  tl_status rc = load_candidates(c, &n, strategy, s, profile, provider, err);
  int i = rc == TL_OK ? pick(c, n, "fill_first") : -1;
  if (rc == TL_OK && i < 0)
    rc = n ? tl__err(err, TL_EUNKNOWN, 0,
                     "every %s credential of profile '%s' has an unknown refresh outcome; "
                     "see 'tokenledger recover --help'",
                     provider, profile)
           : why_none(s, profile, provider, err);
  if (rc == TL_OK)
    *out = c[i].credential;
  for (size_t k = 0; k < n; k++)
    candidate_clear(&c[k]);
  return rc;
}

/*
 * The hot path: with fill_first (no strategy row), the first selectable entry
 * by priority, if its access token is fresh. One indexed query, one row, no
 * write. Anything else (not fresh, another strategy) takes the full path,
 * which picks exactly the same entry when this one is fresh.
 */
static const char fast_sql[] =
    "SELECT e.entry_id, c.id, c.access_token, c.expires_at, c.base_url "
    "FROM profile p JOIN pool_entry e ON e.profile_id = p.id AND e.provider = :provider "
    "JOIN credential c ON c.id = e.credential_id "
    "WHERE p.name = :profile AND (e.cooldown_until IS NULL OR e.cooldown_until <= :now) "
    "AND e.last_status IS NOT 'dead' AND c.status <> 'needs_reauth' "
    "AND NOT EXISTS (SELECT 1 FROM pool_strategy ps WHERE ps.profile_id = p.id AND ps.provider = :provider) "
    "ORDER BY e.priority, e.id LIMIT 1";

static int fast_token(tl_token **out, tl_store *s, const char *profile, const char *provider)
{
  static const char skew_sql[] = "SELECT skew_s * 1000 FROM provider WHERE name = :provider";
  sqlite3_stmt *st;
  int64_t now = tl__now_ms();
  if (tl__prepare(&st, s, fast_sql, NULL) != TL_OK ||
      TL_BIND(st, NULL, TL_TEXT(":profile", profile), TL_TEXT(":provider", provider), TL_INT(":now", now)) != TL_OK)
    return 0; /* the full path reports what went wrong */
  int found = 0;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 2) != SQLITE_NULL) {
    int64_t exp = sqlite3_column_int64(st, 3);
    /* The provider's skew changes rarely: a long-lived store re-reads it once a second. */
    if (strcmp(s->skew.provider, provider) != 0 || now - s->skew.loaded_at > 1000) {
      sqlite3_stmt *sk;
      s->skew.skew_ms = 120000;
      if (tl__prepare(&sk, s, skew_sql, NULL) == TL_OK && TL_BIND(sk, NULL, TL_TEXT(":provider", provider)) == TL_OK) {
        if (sqlite3_step(sk) == SQLITE_ROW)
          s->skew.skew_ms = sqlite3_column_int64(sk, 0);
        sqlite3_reset(sk);
      }
      snprintf(s->skew.provider, sizeof s->skew.provider, "%s", provider);
      s->skew.loaded_at = now;
    }
    if (exp > 0 && exp - s->skew.skew_ms > now) {
      tl_token *t = calloc(1, sizeof *t);
      if (t) {
        t->entry_id = tl__col_dup(st, 0);
        t->credential = sqlite3_column_int64(st, 1);
        t->access_token = tl__col_dup(st, 2);
        t->expires_at_ms = exp;
        t->base_url = tl__col_dup(st, 4);
        if (t->entry_id && t->access_token) {
          *out = t;
          found = 1;
        } else {
          tl_token_free(t);
        }
      }
    }
  }
  sqlite3_reset(st);
  return found;
}

tl_status tl_token_get(tl_token **out, tl_store *s, const char *profile, const char *provider, unsigned flags,
                       tl_error *err)
{
  tl_error_clear(err);
  candidate c[MAX_CANDIDATES];
  size_t n = 0;
  char strategy[16];
  tl_status rc;
  if (!out || !s || !profile || !provider)
    return tl__err(err, TL_EINVAL, 0, "token: profile and provider are required");
  *out = NULL;
  if (!(flags & TL_REFRESH_FORCE) && fast_token(out, s, profile, provider))
    return TL_OK;
  if ((rc = load_candidates(c, &n, strategy, s, profile, provider, err)) != TL_OK)
    goto done;
  int i = pick(c, n, strategy);
  if (i < 0) {
    rc = n ? tl__err(err, TL_EUNKNOWN, 0,
                     "no usable %s token for profile '%s': the last refresh of its credential %lld has an unknown "
                     "outcome, so its refresh token is not presented again automatically; see 'tokenledger "
                     "recover --help'",
                     provider, profile, (long long)c[0].credential)
           : why_none(s, profile, provider, err);
    goto done;
  }
  if (strcmp(strategy, "round_robin") == 0 || strcmp(strategy, "least_used") == 0) {
    if ((rc = tl__tx_begin(s, "token select", err)) != TL_OK)
      goto done;
    if ((rc = note_use(s, &c[i], strategy, err)) != TL_OK) {
      tl__tx_rollback(s);
      goto done;
    }
    if ((rc = tl__tx_commit(s, err)) != TL_OK)
      goto done;
  }
  if (!(flags & TL_REFRESH_FORCE) && fresh(&c[i], tl__now_ms())) {
    rc = token_from(out, &c[i], err);
    goto done;
  }
  rc = tl_refresh(out, s, c[i].credential, flags, err);
  if (rc == TL_OK && *out) {
    free((*out)->entry_id);
    (*out)->entry_id = tl__strdup(c[i].entry_id);
    if (!(*out)->base_url && c[i].base_url)
      (*out)->base_url = tl__strdup(c[i].base_url);
  }
done:
  for (size_t k = 0; k < n; k++)
    candidate_clear(&c[k]);
  return rc;
}

/* ---- the protocol ------------------------------------------------------- */

typedef struct claim {
  int64_t credential, rt, attempt, generation, family, started;
  char fp[65];
  char *secret; /* the RT plaintext (secret) */
  char *token_url, *client_id, *rt_header, *provider, *label;
  int64_t grace_ms;
} claim;

static void claim_clear(claim *c)
{
  tl_secret_free(c->secret);
  free(c->token_url);
  free(c->client_id);
  free(c->rt_header);
  free(c->provider);
  free(c->label);
  memset(c, 0, sizeof *c);
}

/* The HTTP timeout of a presentation; under Hermes' locks it stays well under Hermes' 15 s lock wait. */
static int http_timeout(const tl_store *s)
{
  return s->coop && s->http_timeout_ms > TL_COOP_HTTP_TIMEOUT_MS ? TL_COOP_HTTP_TIMEOUT_MS : s->http_timeout_ms;
}

/* Marks an in-flight or lost attempt unknown: attempt, RT and credential. */
static tl_status mark_unknown(tl_store *s, int64_t attempt, const char *why, tl_error *err)
{
  static const char att_sql[] =
      "UPDATE refresh_attempt SET outcome = 'unknown', finished_at = :now, error_description = :why "
      "WHERE id = :id AND outcome = 'in_flight' RETURNING credential_id, rt_id";
  static const char rt_sql[] = "UPDATE refresh_token SET state = 'unknown', retired_at = :now "
                               "WHERE id = :id AND state = 'presented'";
  static const char cred_sql[] = "UPDATE credential SET status = 'uncertain', status_reason = :why, "
                                 "updated_at = :now WHERE id = :id AND status = 'active'";
  int64_t now = tl__now_ms();
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  if ((rc = tl__prepare(&st, s, att_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":now", now), TL_TEXT(":why", why), TL_INT(":id", attempt))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "mark unknown", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return TL_OK; /* already settled */
  }
  tl__ids ids = {.credential = sqlite3_column_int64(st, 0), .rt = sqlite3_column_int64(st, 1)};
  if ((rc = tl__step_done(s, st, "mark unknown", err)) != TL_OK) /* finishes the RETURNING statement */
    return rc;
  if ((rc = tl__prepare(&st, s, rt_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":now", now), TL_INT(":id", ids.rt))) != TL_OK ||
      (rc = tl__step_done(s, st, "mark unknown", err)) != TL_OK)
    return rc;
  if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":now", now), TL_TEXT(":why", why), TL_INT(":id", ids.credential))) != TL_OK ||
      (rc = tl__step_done(s, st, "mark unknown", err)) != TL_OK)
    return rc;
  return tl__audit(s, "attempt_unknown", &ids, json_pack("{s:I, s:s}", "attempt", (json_int_t)attempt, "why", why),
                   err);
}

/* Both use the partial index on in-flight attempts: never a scan of the history. */
static const char stale_sql[] =
    "SELECT id, owner_host, owner_boot, owner_pid, owner_start, lease_until FROM refresh_attempt "
    "WHERE outcome = 'in_flight' AND credential_id = :cred";
static const char stale_all_sql[] =
    "SELECT id, owner_host, owner_boot, owner_pid, owner_start, lease_until FROM refresh_attempt "
    "WHERE outcome = 'in_flight'";

/* 1 if the in-flight attempt's owner is gone or its lease is over. */
static int attempt_dead(tl_store *s, sqlite3_stmt *st, int64_t now)
{
  const char *host = (const char *)sqlite3_column_text(st, 1);
  const char *boot = (const char *)sqlite3_column_text(st, 2);
  int alive = tl__owner_alive(&s->actor, host, boot, (long)sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4));
  if (alive == 0)
    return 1;
  return sqlite3_column_int64(st, 5) < now;
}

tl_status tl__reap_dead_attempts(int64_t *out, tl_store *s, int fix, tl_error *err)
{
  int64_t ids[256];
  size_t n = 0;
  tl_status rc = TL_OK;
  *out = 0;
  if (fix && (rc = tl__tx_begin(s, "reap attempts", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, stale_all_sql, err)) != TL_OK)
    goto done;
  int64_t now = tl__now_ms();
  int step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW && n < 256)
    if (attempt_dead(s, st, now))
      ids[n++] = sqlite3_column_int64(st, 0);
  if (step != SQLITE_ROW && step != SQLITE_DONE)
    rc = tl__err_db(err, s, "in-flight attempts");
  sqlite3_reset(st);
  if (rc != TL_OK)
    goto done;
  *out = (int64_t)n;
  for (size_t i = 0; fix && i < n; i++)
    if ((rc = mark_unknown(s, ids[i],
                           "the presenting process died or its lease expired before it recorded an "
                           "outcome",
                           err)) != TL_OK)
      goto done;
done:
  if (fix) {
    if (rc == TL_OK)
      rc = tl__tx_commit(s, err);
    else
      tl__tx_rollback(s);
  }
  return rc;
}

typedef enum claim_result {
  CLAIMED,   /* an attempt is in flight and ours: present */
  SATISFIED, /* a fresh token exists now: *out holds it */
  WAIT,      /* another live process is presenting: wait for attempt */
} claim_result;

static const char cred_sql[] =
    "SELECT c.status, c.access_token, coalesce(c.expires_at, 0), pv.skew_s * 1000, c.token_url, c.client_id, "
    "pv.rt_header, c.provider, c.label, pv.grace_s * 1000, c.status_reason, "
    "c.base_url, coalesce(c.refresh_not_before, 0) "
    "FROM credential c JOIN provider pv ON pv.name = c.provider WHERE c.id = :id";

/*
 * One claim transaction. retry_unknown allows presenting an RT in state
 * `unknown` (operator decision, or the grace-window retry).
 */
static tl_status claim_once(claim_result *res, claim *cl, tl_token **out, int64_t *wait_for, tl_store *s, int64_t cred,
                            unsigned flags, int retry_unknown, int waited, int64_t ahead_ms, tl_error *err)
{
  static const char live_sql[] =
      "SELECT id, secret, fingerprint, generation, coalesce(family_id, id), state FROM refresh_token "
      "WHERE credential_id = :cred AND state IN ('current', 'presented', 'unknown')"; /* unique: one open RT */
  static const char ins_sql[] =
      "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, "
      "owner_profile, owner_command, started_at, lease_until) VALUES (:cred, :rt, :host, :boot, :pid, :start, "
      ":profile, :command, :now, :lease)";
  static const char pres_sql[] = "UPDATE refresh_token SET state = 'presented', retired_at = NULL WHERE id = :id";
  static const char reopen_sql[] = "UPDATE credential SET status = 'active', status_reason = NULL, updated_at = :now "
                                   "WHERE id = :id AND status = 'uncertain'";
  tl_status rc;
  sqlite3_stmt *st;
  int64_t now;

  if ((rc = tl__tx_begin(s, "refresh claim", err)) != TL_OK)
    return rc;
  now = tl__now_ms();
  int found = 0;
  if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    rc = tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
    goto fail;
  }
  char status[16];
  snprintf(status, sizeof status, "%s", (const char *)sqlite3_column_text(st, 0));
  int64_t exp = sqlite3_column_int64(st, 2), skew = sqlite3_column_int64(st, 3);
  if (ahead_ms > skew)
    skew = ahead_ms; /* keep-fresh: fresh means fresh for longer than its horizon */
  int have_at = sqlite3_column_type(st, 1) != SQLITE_NULL;
  if (have_at && exp - skew > now && (!(flags & TL_REFRESH_FORCE) || waited) && !retry_unknown) {
    tl_token *t = calloc(1, sizeof *t);
    if (t) {
      t->access_token = tl__col_dup(st, 1);
      t->base_url = tl__col_dup(st, 11);
      t->expires_at_ms = exp;
      t->credential = cred;
    }
    sqlite3_reset(st);
    if (!t || !t->access_token) {
      tl_token_free(t);
      rc = tl__oom(err);
      goto fail;
    }
    *out = t;
    *res = SATISFIED;
    return tl__tx_commit(s, err);
  }
  cl->credential = cred;
  cl->token_url = tl__col_dup(st, 4);
  cl->client_id = tl__col_dup(st, 5);
  cl->rt_header = tl__col_dup(st, 6);
  cl->provider = tl__col_dup(st, 7);
  cl->label = tl__col_dup(st, 8);
  cl->grace_ms = sqlite3_column_int64(st, 9);
  char reason[300];
  snprintf(reason, sizeof reason, "%s",
           sqlite3_column_text(st, 10) ? (const char *)sqlite3_column_text(st, 10) : "no reason recorded");
  int64_t not_before = sqlite3_column_int64(st, 12);
  sqlite3_reset(st);
  if (!cl->provider) {
    rc = tl__oom(err);
    goto fail;
  }
  if (!cl->token_url || !cl->client_id) {
    rc = tl__err(err, TL_ENOTFOUND, 0,
                 "credential %lld: provider '%s' has no token endpoint or client id configured; run 'tokenledger "
                 "provider set %s --token-url URL --client-id ID'",
                 (long long)cred, cl->provider, cl->provider);
    goto fail;
  }
  /* An endpoint stored before today's rules (or edited in the file) is checked again before anything is sent. */
  tl_error why = {0};
  const char *bad_header = cl->rt_header ? tl__rt_header_invalid(cl->rt_header) : NULL;
  if (tl_url_check(cl->token_url, &why) != TL_OK || bad_header) {
    rc = tl__err(err, TL_EINVAL, 0,
                 "credential %lld (%s): its stored token endpoint is refused, so the refresh token was not sent: "
                 "%s; set a valid one with 'tokenledger provider set %s' (or import the profile again)",
                 (long long)cred, cl->provider,
                 bad_header ? "the refresh token header name is not acceptable" : why.message, cl->provider);
    goto fail;
  }
  if (strcmp(status, "needs_reauth") == 0) {
    rc = tl__err(err, TL_EREAUTH, 0,
                 "credential %lld (%s%s%s) needs a new login: %s. Run 'tokenledger login %s --profile PROFILE', or "
                 "log in with Hermes ('hermes auth add %s') and import the profile again",
                 (long long)cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", reason, cl->provider,
                 cl->provider);
    goto fail;
  }

  if (not_before > now && !retry_unknown && strcmp(status, "active") == 0) {
    rc = tl__err(err, TL_ETRANSIENT, 0,
                 "credential %lld (%s): the token endpoint asked to back off; the next refresh may be attempted "
                 "in %lld s",
                 (long long)cred, cl->provider, (long long)((not_before - now + 999) / 1000));
    goto fail;
  }

  /* Someone presenting right now? */
  if ((rc = tl__prepare(&st, s, stale_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    goto fail;
  if (found) {
    int64_t att = sqlite3_column_int64(st, 0);
    int dead = attempt_dead(s, st, now);
    sqlite3_reset(st);
    if (!dead) {
      *wait_for = att;
      *res = WAIT;
      return tl__tx_commit(s, err);
    }
    if ((rc = mark_unknown(s, att, "the presenting process died or its lease expired before it recorded an outcome",
                           err)) != TL_OK)
      goto fail;
    snprintf(status, sizeof status, "uncertain");
    snprintf(reason, sizeof reason, "the process presenting its refresh token died mid-request");
  } else {
    sqlite3_reset(st);
  }

  if ((rc = tl__prepare(&st, s, live_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    rc = tl__err(err, TL_EREAUTH, 0, "credential %lld (%s) holds no usable refresh token; log in again",
                 (long long)cred, cl->provider);
    goto fail;
  }
  cl->rt = sqlite3_column_int64(st, 0);
  cl->secret = tl__col_dup(st, 1);
  snprintf(cl->fp, sizeof cl->fp, "%s", (const char *)sqlite3_column_text(st, 2));
  cl->generation = sqlite3_column_int64(st, 3);
  cl->family = sqlite3_column_int64(st, 4);
  char rtstate[16];
  snprintf(rtstate, sizeof rtstate, "%s", (const char *)sqlite3_column_text(st, 5));
  sqlite3_reset(st);

  if (strcmp(rtstate, "unknown") == 0 || strcmp(status, "uncertain") == 0) {
    if (!retry_unknown) {
      rc = tl__err(err, TL_EUNKNOWN, 0,
                   "credential %lld (%s%s%s): %s. Its refresh token (generation %lld, %.12s...) may already have "
                   "been spent, so it is not presented again automatically: presenting a spent token makes the "
                   "server revoke the login. Decide with 'tokenledger recover --credential %lld --assume-not-sent' "
                   "(retry once) or '--mark-dead' (log in again)",
                   (long long)cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", reason,
                   (long long)cl->generation, cl->fp, (long long)cred);
      goto commit_fail; /* the dead owner's attempt must stay recorded as unknown */
    }
  } else if (strcmp(rtstate, "current") != 0) {
    rc = tl__err(err, TL_ERROR, 0, "credential %lld: refresh token in state %s cannot be presented", (long long)cred,
                 rtstate);
    goto fail;
  }
  if (!cl->secret) {
    rc = tl__err(err, TL_EREAUTH, 0, "credential %lld: the refresh token's plaintext is gone; log in again",
                 (long long)cred);
    goto fail;
  }
  /* The plaintext must be the token the ledger thinks it is. */
  char check[65];
  tl_fingerprint(check, cl->secret, strlen(cl->secret));
  if (CRYPTO_memcmp(check, cl->fp, 64) != 0) {
    rc = tl__err(err, TL_ECORRUPT, 0,
                 "credential %lld: stored refresh token does not match its fingerprint; not "
                 "presenting it",
                 (long long)cred);
    goto fail;
  }

  if ((rc = tl__prepare(&st, s, ins_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":cred", cred), TL_INT(":rt", cl->rt), TL_TEXT(":host", s->actor.host),
                    TL_TEXT(":boot", s->actor.boot), TL_INT(":pid", s->actor.pid), TL_INT(":start", s->actor.start),
                    TL_TEXT(":profile", s->actor.profile), TL_TEXT(":command", s->actor.command), TL_INT(":now", now),
                    TL_INT(":lease", now + http_timeout(s) + LEASE_MARGIN_MS))) != TL_OK ||
      (rc = tl__step_done(s, st, "claim", err)) != TL_OK)
    goto fail;
  cl->attempt = sqlite3_last_insert_rowid(s->db);
  cl->started = now;
  if ((rc = tl__prepare(&st, s, pres_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cl->rt))) != TL_OK ||
      (rc = tl__step_done(s, st, "claim", err)) != TL_OK)
    goto fail;
  if (retry_unknown) {
    if ((rc = tl__prepare(&st, s, reopen_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_INT(":now", now), TL_INT(":id", cred))) != TL_OK ||
        (rc = tl__step_done(s, st, "claim", err)) != TL_OK)
      goto fail;
  }
  tl__ids ids = {.credential = cred, .rt = cl->rt};
  if ((rc = tl__audit(s, retry_unknown ? "rt_represented" : "rt_presented", &ids,
                      json_pack("{s:I, s:I, s:s%}", "attempt", (json_int_t)cl->attempt, "generation",
                                (json_int_t)cl->generation, "fingerprint", cl->fp, (size_t)12),
                      err)) != TL_OK)
    goto fail;
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  *res = CLAIMED;
  return TL_OK;
commit_fail:
  tl__tx_commit(s, NULL); /* keep what the claim recorded (a dead owner's attempt) */
  return rc;
fail:
  tl__tx_rollback(s);
  return rc;
}

/* Waits (read-only polling, growing backoff) until the attempt is settled. */
static tl_status wait_attempt(tl_store *s, int64_t attempt, tl_error *err)
{
  static const char sql[] = "SELECT outcome, lease_until FROM refresh_attempt WHERE id = :id";
  long delay = 1; /* a peer's refresh takes about a round trip; poll cheaply, then back off */
  for (;;) {
    sqlite3_stmt *st;
    tl_status trc;
    if ((trc = tl__prepare(&st, s, sql, err)) != TL_OK || (trc = TL_BIND(st, err, TL_INT(":id", attempt))) != TL_OK)
      return trc;
    int rc = sqlite3_step(st);
    int settled = rc != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(st, 0), "in_flight") != 0;
    int64_t lease = rc == SQLITE_ROW ? sqlite3_column_int64(st, 1) : 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      trc = tl__err_db(err, s, "wait for refresh");
      sqlite3_reset(st);
      return trc;
    }
    sqlite3_reset(st);
    if (settled || tl__now_ms() > lease)
      return TL_OK; /* the next claim decides what an expired lease means */
    sleep_ms(delay);
    if (delay < 50)
      delay = delay * 3 / 2 + 1;
  }
}

/* ---- outcome classification ---------------------------------------------- */

static int contains_ci(const char *hay, const char *needle)
{
  if (!hay)
    return 0;
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return 1;
  return 0;
}

/* Terminal for the lineage: never retry, never re-present (server reference). */
static int terminal_answer(const char *error, const char *desc)
{
  static const char *const codes[] = {"invalid_grant", "invalid_token", "refresh_token_reused", "token_invalidated",
                                      "token_revoked", "token_expired", "unauthorized_client"};
  static const char *const words[] = {"reuse",       "already used",          "revoked",
                                      "stale token", "invalid refresh token", "expired"};
  for (size_t i = 0; error && i < sizeof codes / sizeof *codes; i++)
    if (strcmp(error, codes[i]) == 0)
      return 1;
  for (size_t i = 0; i < sizeof words / sizeof *words; i++)
    if (contains_ci(desc, words[i]) || contains_ci(error, words[i]))
      return 1;
  return 0;
}

static int reuse_answer(const char *error, const char *desc)
{
  return (error && strcmp(error, "refresh_token_reused") == 0) || contains_ci(desc, "reuse") ||
         contains_ci(desc, "already used") || contains_ci(desc, "already been used") ||
         contains_ci(desc, "maximum allowed refresh token reuse");
}

/* Expiry from a JWT's exp claim, in ms; 0 if the token is not a readable JWT. */
int64_t tl__jwt_exp_ms(const char *jwt)
{
  const char *a = strchr(jwt, '.');
  const char *b = a ? strchr(a + 1, '.') : NULL;
  if (!a || !b || b - a - 1 <= 0 || b - a - 1 > 8192)
    return 0;
  size_t n = (size_t)(b - a - 1);
  char *in = malloc(n + 4);
  unsigned char *outb = malloc(n + 4);
  int64_t exp = 0;
  if (!in || !outb)
    goto done;
  for (size_t i = 0; i < n; i++)
    in[i] = a[1 + i] == '-' ? '+' : a[1 + i] == '_' ? '/' : a[1 + i];
  while (n % 4)
    in[n++] = '=';
  int len = EVP_DecodeBlock(outb, (unsigned char *)in, (int)n);
  if (len > 0) {
    while (len > 0 && outb[len - 1] == '\0')
      len--; /* EVP_DecodeBlock counts padding as zero bytes */
    json_t *j = json_loadb((const char *)outb, (size_t)len, 0, NULL);
    json_t *e = j ? json_object_get(j, "exp") : NULL;
    if (json_is_integer(e))
      exp = (int64_t)json_integer_value(e) * 1000;
    else if (json_is_real(e))
      exp = (int64_t)(json_real_value(e) * 1000);
    json_decref(j);
  }
done:
  free(in);
  free(outb);
  return exp;
}

/* Everything the record step needs to know about the answer. */
typedef struct answer {
  enum { A_ROTATED, A_SAME_RT, A_REJECTED, A_TRANSIENT, A_CONFIG, A_NOT_SENT, A_UNKNOWN } kind;
  long status;
  char *error, *desc;
  char *access_token, *refresh_token; /* secrets */
  int64_t expires_at;
  json_t *extra; /* token_type, scope, inference_base_url */
  long retry_after;
} answer;

static void answer_clear(answer *a)
{
  free(a->error);
  free(a->desc);
  tl_secret_free(a->access_token);
  tl_secret_free(a->refresh_token);
  json_decref(a->extra);
  memset(a, 0, sizeof *a);
}

static char *jstr(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

/* A server that echoes the token back must not get it into our records or messages. */
static void redact(char *text, const char *secret)
{
  size_t n = secret ? strlen(secret) : 0;
  if (!text || n < 4)
    return;
  for (char *p = strstr(text, secret); p; p = strstr(p, secret)) {
    memset(p, '*', n);
    p += n;
  }
}

static void classify_body(answer *a, const tl_http_response *r, const char *old_rt);

static void classify(answer *a, const tl_http_response *r, const char *old_rt)
{
  classify_body(a, r, old_rt);
  redact(a->error, old_rt);
  redact(a->desc, old_rt);
  redact(a->error, a->refresh_token);
  redact(a->desc, a->refresh_token);
}

static void classify_body(answer *a, const tl_http_response *r, const char *old_rt)
{
  memset(a, 0, sizeof *a);
  a->retry_after = r->retry_after;
  a->status = r->status;
  if (r->failure == TL_HTTP_NOT_SENT) {
    a->kind = A_NOT_SENT;
    a->desc = strdup(r->detail);
    return;
  }
  if (r->failure == TL_HTTP_LOST) {
    a->kind = A_UNKNOWN;
    a->desc = strdup(r->detail);
    return;
  }
  json_error_t je;
  json_t *j = r->body && r->body_len ? json_loadb(r->body, r->body_len, 0, &je) : NULL;
  if (j && !json_is_object(j)) {
    json_decref(j);
    j = NULL;
  }
  if (j) {
    a->error = jstr(j, "error");
    a->desc = jstr(j, "error_description");
    if (!a->desc)
      a->desc = jstr(j, "message");
  }
  if (r->status == 200) {
    a->access_token = j ? jstr(j, "access_token") : NULL;
    if (!a->access_token || !*a->access_token) {
      /* The server may have rotated the RT, but we cannot read the answer. */
      a->kind = A_UNKNOWN;
      free(a->desc);
      a->desc = strdup(j ? "200 answer without access_token" : "200 answer that is not a JSON object");
      json_decref(j);
      return;
    }
    a->refresh_token = jstr(j, "refresh_token");
    json_t *ei = json_object_get(j, "expires_in");
    int64_t now = tl__now_ms();
    if (json_is_integer(ei) && json_integer_value(ei) > 0)
      a->expires_at = now + (int64_t)json_integer_value(ei) * 1000;
    else if (json_is_real(ei) && json_real_value(ei) > 0)
      a->expires_at = now + (int64_t)(json_real_value(ei) * 1000);
    else
      a->expires_at = tl__jwt_exp_ms(a->access_token);
    a->extra = json_object();
    static const char *const keep[] = {"token_type", "inference_base_url"};
    for (size_t i = 0; a->extra && i < 2; i++) {
      json_t *v = json_object_get(j, keep[i]);
      if (json_is_string(v))
        json_object_set(a->extra, keep[i], v);
    }
    json_t *sc = json_object_get(j, "scope");
    if (a->extra && json_is_string(sc))
      json_object_set(a->extra, "scope", sc);
    a->kind = a->refresh_token && *a->refresh_token && strcmp(a->refresh_token, old_rt) != 0 ? A_ROTATED : A_SAME_RT;
    json_decref(j);
    return;
  }
  json_decref(j);
  if (r->status == 429 || r->status >= 500 || (a->error && strcmp(a->error, "temporarily_unavailable") == 0)) {
    a->kind = A_TRANSIENT;
  } else if (r->status >= 400 && r->status < 500 && terminal_answer(a->error, a->desc)) {
    a->kind = A_REJECTED;
  } else if (r->status >= 400 && r->status < 500) {
    a->kind = A_CONFIG; /* invalid_client, invalid_request...: no tokens issued */
  } else {
    /* 1xx/3xx/other 2xx: the server did something we cannot interpret. */
    a->kind = A_UNKNOWN;
    if (!a->desc) {
      char d[64];
      snprintf(d, sizeof d, "unexpected HTTP status %ld", r->status);
      a->desc = strdup(d);
    }
  }
}

/* ---- record ------------------------------------------------------------- */

static tl_status exec_bound(tl_store *s, const char *sql, const char *what, tl_error *err, int nbind,
                            const char *const *names, const int64_t *ints, const char *const *texts)
{
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  for (int i = 0; rc == TL_OK && i < nbind; i++)
    rc = texts && texts[i] ? TL_BIND(st, err, TL_SECRET(names[i], texts[i]))
                           : TL_BIND(st, err, TL_INT(names[i], ints[i]));
  return rc == TL_OK ? tl__step_done(s, st, what, err) : rc;
}

static const char finish_sql[] =
    "UPDATE refresh_attempt SET outcome = :outcome, finished_at = :now, http_status = :status, oauth_error = :error, "
    "error_description = :desc, child_rt_id = :child WHERE id = :id AND outcome = 'in_flight'";

static tl_status finish_attempt(tl_store *s, const claim *cl, const char *outcome, const answer *a, int64_t child,
                                tl_error *err)
{
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, finish_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":outcome", outcome), TL_INT(":now", tl__now_ms()),
                    TL_OPTINT(":status", a->status), TL_TEXT(":error", a->error), TL_TEXT(":desc", a->desc),
                    TL_OPTINT(":child", child), TL_INT(":id", cl->attempt))) != TL_OK)
    return rc;
  rc = tl__step_done(s, st, "record", err);
  if (rc == TL_OK && sqlite3_changes(s->db) != 1)
    rc = tl__err(err, TL_ERROR, 0, "record: attempt %lld was settled by another process (lease expired?)",
                 (long long)cl->attempt);
  return rc;
}

/* Message for a terminal answer: what the server said and who presented what. */
static void rejected_message(tl_store *s, const claim *cl, const answer *a, tl_error *err)
{
  static const char prev_sql[] =
      "SELECT t.generation, a.owner_host || ':' || a.owner_pid, coalesce(a.owner_profile, '-'), "
      "coalesce(a.owner_command, '-'), strftime('%Y-%m-%dT%H:%M:%SZ', a.started_at / 1000.0, 'unixepoch') "
      "FROM refresh_attempt a JOIN refresh_token t ON t.id = a.rt_id WHERE a.credential_id = :cred AND a.id < :att "
      "ORDER BY a.id DESC LIMIT 1";
  /* The audit log, not the attempts (compact may have removed old ones), says how often we presented it. */
  static const char count_sql[] = "SELECT count(*) FROM audit_event WHERE credential_id = :cred AND rt_id = :rt AND "
                                  "event IN ('rt_presented', 'rt_represented')";
  char prev[400] = "no presentation of this credential is on record";
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, prev_sql, NULL) == TL_OK &&
      TL_BIND(st, NULL, TL_INT(":cred", cl->credential), TL_INT(":att", cl->attempt)) == TL_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      snprintf(prev, sizeof prev, "the last one on record was generation %lld by %s (profile %s, command %s) at %s",
               (long long)sqlite3_column_int64(st, 0), sqlite3_column_text(st, 1), sqlite3_column_text(st, 2),
               sqlite3_column_text(st, 3), sqlite3_column_text(st, 4));
    sqlite3_reset(st);
  }
  int64_t times = 0;
  if (tl__prepare(&st, s, count_sql, NULL) == TL_OK &&
      TL_BIND(st, NULL, TL_INT(":cred", cl->credential), TL_INT(":rt", cl->rt)) == TL_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      times = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
  }
  int reuse = reuse_answer(a->error, a->desc);
  char outside[300] = "";
  if (reuse && times <= 1)
    snprintf(outside, sizeof outside,
             " tokenledger never presented generation %lld before, so a process outside tokenledger (a script, a "
             "second install, a restored backup) presented it first.",
             (long long)cl->generation);
  tl__err(err, TL_EREAUTH, 0,
          "%s rejected refresh token generation %lld (%.12s...) of credential %lld%s%s%s: HTTP %ld %s%s%s. "
          "Before this presentation (by %s:%ld), %s.%s The credential needs a new login: 'tokenledger login %s "
          "--profile PROFILE' (or 'hermes auth add %s', then import).",
          cl->provider, (long long)cl->generation, cl->fp, (long long)cl->credential, cl->label ? " (" : "",
          cl->label ? cl->label : "", cl->label ? ")" : "", a->status, a->error ? a->error : "(no error code)",
          a->desc ? ": " : "", a->desc ? a->desc : "", s->actor.host, s->actor.pid, prev, outside, cl->provider,
          cl->provider);
}

/* Shows a failed refresh on every pool entry of the credential (what Hermes' export carries). */
static tl_status mark_entries(tl_store *s, int64_t cred, const char *status, const answer *a, int64_t now,
                              tl_error *err)
{
  static const char sql[] = "UPDATE pool_entry SET last_status = :st, last_status_at = :now, last_error_code = :code, "
                            "last_error_reason = :reason, last_error_message = :msg WHERE credential_id = :cred";
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":st", status), TL_INT(":now", now), TL_INT(":code", a->status),
                    TL_TEXT(":reason", a->error), TL_TEXT(":msg", a->desc), TL_INT(":cred", cred))) != TL_OK)
    return rc;
  return tl__step_done(s, st, "record", err);
}

static tl_status record(tl_token **out, tl_store *s, const claim *cl, answer *a, tl_error *err)
{
  static const char rotate_old_sql[] = "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = :now "
                                       "WHERE id = :id";
  static const char child_sql[] =
      "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, secret, "
      "issued_at) VALUES (:cred, :parent, :family, :gen, :fp, 'current', 'refresh', :secret, :now)";
  static const char cred_ok_sql[] =
      "UPDATE credential SET access_token = :at, expires_at = nullif(:exp, 0), obtained_at = :now, "
      "scope = coalesce(json_extract(:extra, '$.scope'), scope), status = 'active', status_reason = NULL, "
      "refresh_not_before = NULL, "
      "extra = json_patch(extra, :extra), updated_at = :now WHERE id = :id";
  static const char back_sql[] = "UPDATE refresh_token SET state = 'current', retired_at = NULL WHERE id = :id";
  static const char reject_sql[] = "UPDATE refresh_token SET state = 'rejected', secret = NULL, retired_at = :now "
                                   "WHERE id = :id";
  static const char reauth_sql[] = "UPDATE credential SET status = 'needs_reauth', status_reason = :why, "
                                   "updated_at = :now WHERE id = :id";
  static const char entries_ok_sql[] =
      "UPDATE pool_entry SET last_status = 'ok', last_status_at = :now, last_error_code = NULL, "
      "last_error_reason = NULL, last_error_message = NULL, cooldown_until = NULL WHERE credential_id = :cred "
      "AND last_status IS NOT NULL AND last_status <> 'ok'";
  static const char backoff_sql[] = "UPDATE credential SET refresh_not_before = :until WHERE id = :id";
  tl_status rc;
  int64_t now = tl__now_ms(), child = 0;
  char childfp[65] = "";
  sqlite3_stmt *st;
  tl__ids ids = {.credential = cl->credential, .rt = cl->rt};
  tl_status result = TL_OK;
  tl_error msg = {0};

  /* Never give up on recording early: a long busy wait is better than an unknown. */
  int busy = s->busy_ms;
  s->busy_ms = busy > 60000 ? busy : 60000;
  rc = tl__tx_begin(s, "refresh record", err);
  s->busy_ms = busy;
  if (rc != TL_OK)
    return rc; /* the attempt stays in_flight; our death makes it unknown */

  if (a->kind == A_ROTATED) {
    tl_fingerprint(childfp, a->refresh_token, strlen(a->refresh_token));
    int64_t known_rt = 0, known_cred = 0;
    tl_error probe = {0};
    if (tl__rt_lookup(&known_rt, &known_cred, s, childfp, &probe) != TL_OK || known_rt) {
      /* The server handed out a token the ledger already holds: do not store it twice. */
      a->kind = A_UNKNOWN;
      free(a->desc);
      a->desc = strdup("server returned a refresh token that is already in the ledger");
    }
  }

  switch (a->kind) {
  case A_ROTATED:
  case A_SAME_RT: {
    if (a->kind == A_ROTATED) {
      const char *n1[] = {":now", ":id"};
      int64_t v1[] = {now, cl->rt};
      if ((rc = exec_bound(s, rotate_old_sql, "record", err, 2, n1, v1, NULL)) != TL_OK)
        goto fail;
      if ((rc = tl__prepare(&st, s, child_sql, err)) != TL_OK ||
          (rc = TL_BIND(st, err, TL_INT(":cred", cl->credential), TL_INT(":parent", cl->rt),
                        TL_INT(":family", cl->family), TL_INT(":gen", cl->generation + 1), TL_TEXT(":fp", childfp),
                        TL_SECRET(":secret", a->refresh_token), TL_INT(":now", now))) != TL_OK ||
          (rc = tl__step_done(s, st, "record child", err)) != TL_OK)
        goto fail;
      child = sqlite3_last_insert_rowid(s->db);
    } else {
      const char *n1[] = {":id"};
      int64_t v1[] = {cl->rt};
      if ((rc = exec_bound(s, back_sql, "record", err, 1, n1, v1, NULL)) != TL_OK)
        goto fail;
    }
    char *extra = a->extra ? json_dumps(a->extra, JSON_COMPACT) : NULL;
    if ((rc = tl__prepare(&st, s, cred_ok_sql, err)) == TL_OK &&
        (rc = TL_BIND(st, err, TL_SECRET(":at", a->access_token), TL_INT(":exp", a->expires_at), TL_INT(":now", now),
                      TL_TEXT(":extra", extra ? extra : "{}"), TL_INT(":id", cl->credential))) == TL_OK)
      rc = tl__step_done(s, st, "record credential", err);
    free(extra);
    if (rc != TL_OK)
      goto fail;
    {
      const char *n2[] = {":now", ":cred"};
      int64_t v2[] = {now, cl->credential};
      if ((rc = exec_bound(s, entries_ok_sql, "record", err, 2, n2, v2, NULL)) != TL_OK)
        goto fail;
    }
    if ((rc = finish_attempt(s, cl, "rotated", a, child, err)) != TL_OK)
      goto fail;
    ids.rt = child ? child : cl->rt;
    if ((rc = tl__audit(s, child ? "rt_rotated" : "access_refreshed", &ids,
                        child ? json_pack("{s:I, s:I, s:s%, s:s%}", "attempt", (json_int_t)cl->attempt, "generation",
                                          (json_int_t)(cl->generation + 1), "parent", cl->fp, (size_t)12, "fingerprint",
                                          childfp, (size_t)12)
                              : json_pack("{s:I, s:I}", "attempt", (json_int_t)cl->attempt, "generation",
                                          (json_int_t)cl->generation),
                        err)) != TL_OK)
      goto fail;
    tl_token *t = calloc(1, sizeof *t);
    if (!t || !(t->access_token = tl__strdup(a->access_token))) {
      free(t);
      rc = tl__oom(err);
      goto fail;
    }
    t->expires_at_ms = a->expires_at;
    t->credential = cl->credential;
    t->refreshed = 1;
    json_t *bu = a->extra ? json_object_get(a->extra, "inference_base_url") : NULL;
    if (json_is_string(bu))
      t->base_url = tl__strdup(json_string_value(bu));
    *out = t;
    break;
  }
  case A_REJECTED: {
    rejected_message(s, cl, a, &msg);
    const char *n1[] = {":now", ":id"};
    int64_t v1[] = {now, cl->rt};
    if ((rc = exec_bound(s, reject_sql, "record", err, 2, n1, v1, NULL)) != TL_OK)
      goto fail;
    char why[300];
    snprintf(why, sizeof why, "server rejected generation %lld: HTTP %ld %s%s%.200s", (long long)cl->generation,
             a->status, a->error ? a->error : "", a->desc ? ": " : "", a->desc ? a->desc : "");
    if ((rc = tl__prepare(&st, s, reauth_sql, err)) != TL_OK ||
        (rc = TL_BIND(st, err, TL_TEXT(":why", why), TL_INT(":now", now), TL_INT(":id", cl->credential))) != TL_OK ||
        (rc = tl__step_done(s, st, "record", err)) != TL_OK)
      goto fail;
    if ((rc = mark_entries(s, cl->credential, "dead", a, now, err)) != TL_OK)
      goto fail;
    if ((rc = finish_attempt(s, cl, "rejected", a, 0, err)) != TL_OK)
      goto fail;
    int reuse = reuse_answer(a->error, a->desc);
    if ((rc = tl__audit(s, reuse ? "reuse_detected_by_server" : "rt_rejected", &ids,
                        json_pack("{s:I, s:I, s:s%, s:i, s:s?, s:s?}", "attempt", (json_int_t)cl->attempt, "generation",
                                  (json_int_t)cl->generation, "fingerprint", cl->fp, (size_t)12, "http_status",
                                  (int)a->status, "error", a->error, "error_description", a->desc),
                        err)) != TL_OK)
      goto fail;
    result = TL_EREAUTH;
    break;
  }
  case A_TRANSIENT:
  case A_CONFIG:
  case A_NOT_SENT: {
    const char *n1[] = {":id"};
    int64_t v1[] = {cl->rt};
    if ((rc = exec_bound(s, back_sql, "record", err, 1, n1, v1, NULL)) != TL_OK)
      goto fail;
    long wait_s = a->retry_after >= 0 ? a->retry_after : TRANSIENT_COOLDOWN_S;
    if (wait_s > 86400)
      wait_s = 86400;
    if (a->kind != A_NOT_SENT) {
      /* Back off the refresh (the credential), not the entries: their access tokens stay usable. */
      const char *nb[] = {":until", ":id"};
      int64_t vb[] = {now + (int64_t)wait_s * 1000, cl->credential};
      if ((rc = exec_bound(s, backoff_sql, "record", err, 2, nb, vb, NULL)) != TL_OK)
        goto fail;
      if ((rc = mark_entries(s, cl->credential, "exhausted", a, now, err)) != TL_OK)
        goto fail;
    }
    const char *outcome = a->kind == A_NOT_SENT ? "not_sent" : "transient";
    if ((rc = finish_attempt(s, cl, outcome, a, 0, err)) != TL_OK)
      goto fail;
    if ((rc = tl__audit(s, a->kind == A_NOT_SENT ? "refresh_not_sent" : "refresh_transient", &ids,
                        json_pack("{s:I, s:I, s:i, s:s?, s:s?, s:i}", "attempt", (json_int_t)cl->attempt, "generation",
                                  (json_int_t)cl->generation, "http_status", (int)a->status, "error", a->error,
                                  "error_description", a->desc, "cooldown_s", a->kind == A_NOT_SENT ? 0 : (int)wait_s),
                        err)) != TL_OK)
      goto fail;
    if (a->kind == A_NOT_SENT)
      tl__err(&msg, TL_ETRANSIENT, 0,
              "%s token endpoint unreachable (%s); the refresh token was not sent and stays "
              "current",
              cl->provider, a->desc ? a->desc : "no detail");
    else if (a->kind == A_TRANSIENT)
      tl__err(&msg, TL_ETRANSIENT, 0,
              "%s answered HTTP %ld%s%s; the refresh token was not spent; the next refresh waits "
              "for %ld s",
              cl->provider, a->status, a->error ? " " : "", a->error ? a->error : "", wait_s);
    else
      tl__err(&msg, TL_ERROR, 0,
              "%s refused the request: HTTP %ld %s%s%s; check the provider configuration "
              "(client id, endpoint); the refresh token was not spent",
              cl->provider, a->status, a->error ? a->error : "", a->desc ? ": " : "", a->desc ? a->desc : "");
    result = msg.code;
    break;
  }
  case A_UNKNOWN: {
    char why[300];
    snprintf(why, sizeof why, "response to generation %lld lost: %.200s", (long long)cl->generation,
             a->desc ? a->desc : "no detail");
    if ((rc = mark_unknown(s, cl->attempt, why, err)) != TL_OK)
      goto fail;
    tl__err(&msg, TL_EUNKNOWN, 0,
            "credential %lld (%s): %s. The server may have rotated the refresh token, so it is not presented again "
            "automatically; decide with 'tokenledger recover --credential %lld --assume-not-sent' or '--mark-dead'",
            (long long)cl->credential, cl->provider, why, (long long)cl->credential);
    result = TL_EUNKNOWN;
    break;
  }
  }
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  if (result != TL_OK && err && err->code == TL_OK)
    *err = msg;
  return result;
fail:
  tl__tx_rollback(s);
  return rc;
}

static char *form_body(const claim *cl)
{
  char *cid = curl_easy_escape(NULL, cl->client_id, 0);
  char *rt = cl->rt_header ? NULL : curl_easy_escape(NULL, cl->secret, 0);
  char *body = NULL;
  if (cid && (cl->rt_header || rt)) {
    size_t n = strlen(cid) + (rt ? strlen(rt) : 0) + 64;
    if ((body = malloc(n)))
      snprintf(body, n, "grant_type=refresh_token&client_id=%s%s%s", cid, rt ? "&refresh_token=" : "", rt ? rt : "");
  }
  curl_free(cid);
  if (rt) {
    tl_burn(rt, strlen(rt));
    curl_free(rt);
  }
  return body;
}

/* Presents the claimed RT and records the outcome. */
static tl_status present_and_record(tl_token **out, tl_store *s, claim *cl, answer *a, tl_error *err)
{
  tl_http_response resp;
  memset(&resp, 0, sizeof resp);
  resp.retry_after = -1;
  char *body = form_body(cl);
  if (!body) {
    /* Nothing left the process: record not_sent. */
    memset(a, 0, sizeof *a);
    a->kind = A_NOT_SENT;
    a->desc = strdup("out of memory building the request");
  } else {
    tl_http_request req = {.url = cl->token_url,
                           .body = body,
                           .rt_header = cl->rt_header,
                           .rt_value = cl->rt_header ? cl->secret : NULL,
                           .connect_timeout_ms = CONNECT_TIMEOUT_MS,
                           .timeout_ms = http_timeout(s)};
    s->http(s->http_ud, &req, &resp);
    tl_burn(body, strlen(body));
    free(body);
    classify(a, &resp, cl->secret);
    tl__http_response_clear(&resp);
  }
  return record(out, s, cl, a, err);
}

tl_status tl__refresh_protocol(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                               int64_t ahead_ms, tl_error *err)
{
  tl_status rc;
  int waited = 0;
  int64_t deadline = tl__now_ms() + 2 * (http_timeout(s) + LEASE_MARGIN_MS) + s->busy_ms;
  for (;;) {
    claim cl;
    memset(&cl, 0, sizeof cl);
    claim_result res = CLAIMED;
    int64_t wait_for = 0;
    rc = claim_once(&res, &cl, out, &wait_for, s, cred, flags, retry_unknown, waited, ahead_ms, err);
    if (rc != TL_OK || res == SATISFIED) {
      claim_clear(&cl);
      return rc;
    }
    if (res == WAIT) {
      claim_clear(&cl);
      if (tl__now_ms() > deadline)
        return tl__err(err, TL_EBUSY, 0, "credential %lld: another process has been refreshing it for too long",
                       (long long)cred);
      if ((rc = wait_attempt(s, wait_for, err)) != TL_OK)
        return rc;
      waited = 1;
      continue;
    }
    answer a;
    rc = present_and_record(out, s, &cl, &a, err);
    /* One automatic re-presentation, only inside a declared grace window. */
    if (rc == TL_EUNKNOWN && !retry_unknown && cl.grace_ms > 0 && tl__now_ms() - cl.started < cl.grace_ms) {
      tl_error again = {0};
      claim_clear(&cl);
      answer_clear(&a);
      rc = tl__refresh_protocol(out, s, cred, flags, 1, ahead_ms, &again);
      if (err && rc != TL_OK) {
        tl_error_clear(err);
        *err = again;
      }
      return rc;
    }
    claim_clear(&cl);
    answer_clear(&a);
    return rc;
  }
}

tl_status tl_refresh(tl_token **out, tl_store *s, int64_t cred, unsigned flags, tl_error *err)
{
  tl_error_clear(err);
  tl_token *t = NULL;
  if (!s || cred <= 0)
    return tl__err(err, TL_EINVAL, 0, "refresh: no credential");
  tl_status rc = tl__coop_refresh(&t, s, cred, flags, 0, 0, err);
  if (out)
    *out = t;
  else
    tl_token_free(t);
  return rc;
}

tl_status tl_recover(tl_token **out, tl_store *s, int64_t cred, tl_recover_action action, tl_error *err)
{
  tl_error_clear(err);
  static const char state_sql[] = "SELECT status FROM credential WHERE id = :id";
  static const char dead_rt_sql[] = "UPDATE refresh_token SET state = 'retired', secret = NULL, retired_at = :now "
                                    "WHERE credential_id = :cred AND state IN ('unknown', 'current')";
  static const char dead_cred_sql[] =
      "UPDATE credential SET status = 'needs_reauth', status_reason = 'operator marked the refresh token dead after "
      "an unknown outcome', updated_at = :now WHERE id = :cred";
  tl_status rc;
  int64_t reaped;
  if (!s || cred <= 0 || (action != TL_RECOVER_RETRY && action != TL_RECOVER_MARK_DEAD))
    return tl__err(err, TL_EINVAL, 0, "recover: credential and action are required");
  if ((rc = tl__reap_dead_attempts(&reaped, s, 1, err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, state_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "recover", err)) != TL_OK)
    return rc;
  char status[16] = "";
  if (found)
    snprintf(status, sizeof status, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
  if (!*status)
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
  if (strcmp(status, "uncertain") != 0)
    return tl__err(err, TL_EINVAL, 0, "credential %lld is %s: there is no unknown outcome to recover from",
                   (long long)cred, status);
  if (action == TL_RECOVER_RETRY) {
    tl_token *t = NULL;
    rc = tl__coop_refresh(&t, s, cred, TL_REFRESH_FORCE, 1, 0, err);
    if (out)
      *out = t;
    else
      tl_token_free(t);
    return rc;
  }
  if ((rc = tl__tx_begin(s, "recover", err)) != TL_OK)
    return rc;
  const char *n[] = {":now", ":cred"};
  int64_t v[] = {tl__now_ms(), cred};
  if ((rc = exec_bound(s, dead_rt_sql, "recover", err, 2, n, v, NULL)) != TL_OK ||
      (rc = exec_bound(s, dead_cred_sql, "recover", err, 2, n, v, NULL)) != TL_OK)
    goto fail;
  tl__ids ids = {.credential = cred};
  if ((rc = tl__audit(s, "recover_mark_dead", &ids, NULL, err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

/* ---- pool entry reports --------------------------------------------------- */

tl_status tl_entry_report(tl_store *s, const char *profile, const char *provider, const char *entry_id, int http_status,
                          int64_t reset_at_ms, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "UPDATE pool_entry SET last_status = 'exhausted', last_status_at = :now, last_error_code = :code, "
      "cooldown_until = :until WHERE entry_id = :entry AND provider = :provider "
      "AND profile_id = (SELECT id FROM profile WHERE name = :profile) RETURNING id, credential_id, profile_id";
  static const char count_sql[] =
      "SELECT count(*) FROM pool_entry e JOIN profile p ON p.id = e.profile_id WHERE p.name = :profile AND "
      "e.provider = :provider AND e.last_status IS NOT 'dead'";
  tl_status rc;
  if (!s || !profile || !provider || !entry_id || http_status < 100 || http_status > 599)
    return tl__err(err, TL_EINVAL, 0, "report: profile, provider, entry and an HTTP status are required");
  if ((rc = tl__tx_begin(s, "report", err)) != TL_OK)
    return rc;
  int64_t now = tl__now_ms(), pid;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__profile_id(&pid, s, profile, err)) != TL_OK || (rc = tl__prepare(&st, s, count_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":profile", profile), TL_TEXT(":provider", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "report", err)) != TL_OK)
    goto fail;
  int64_t live = found ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  /* Hermes' cooldowns: 401 five minutes, others an hour; a sole entry a minute unless billing (402). */
  int64_t cool = http_status == 401 ? 300 : 3600;
  if (live <= 1 && http_status != 402)
    cool = 60;
  int64_t until = reset_at_ms > now ? reset_at_ms : now + cool * 1000;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":now", now), TL_INT(":code", http_status), TL_INT(":until", until),
                    TL_TEXT(":entry", entry_id), TL_TEXT(":provider", provider), TL_TEXT(":profile", profile))) !=
          TL_OK ||
      (rc = tl__step_row(&found, s, st, "report", err)) != TL_OK)
    goto fail;
  if (!found) {
    sqlite3_reset(st);
    rc = tl__err(err, TL_ENOTFOUND, 0, "profile '%s' has no %s entry '%s'", profile, provider, entry_id);
    goto fail;
  }
  tl__ids ids = {.credential = sqlite3_column_int64(st, 1), .profile = sqlite3_column_int64(st, 2)};
  if ((rc = tl__step_done(s, st, "report", err)) != TL_OK) /* finishes the RETURNING statement */
    goto fail;
  if ((rc = tl__audit(s, "entry_exhausted", &ids,
                      json_pack("{s:s, s:s, s:i, s:I}", "entry", entry_id, "provider", provider, "http_status",
                                http_status, "cooldown_s", (json_int_t)((until - now) / 1000)),
                      err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}
