/*
 * select.c - which grant serves a request for an access token, and the
 * answers that need no refresh: pool strategies (fill_first, round_robin,
 * least_used, random), the selectable entries of a (profile, provider), the
 * per-store answer cache and the one-read fast path of tl_token_get, the
 * reason nothing can be served (why_none), and Hermes' pool cooldowns
 * (tl_entry_report). When the chosen entry's access token is not fresh, the
 * refresh goes to the protocol (refresh.c, tl_refresh).
 *
 * Invariants kept here:
 *   - An entry in cooldown, marked dead, or whose credential needs a new
 *     login is never selected; a credential with an unknown outcome is never
 *     refreshed from here (the protocol would refuse it anyway).
 *   - A stored access token that is not printable is never handed out.
 *   - A cached answer is handed out only while the ledger's change marker is
 *     the one read around the query that found it, and only until its access
 *     token's expiry minus the provider's skew (or the end of the earliest
 *     cooldown): any commit by any process sends the next call to the ledger.
 *   - round_robin and least_used count a use in a write transaction of its
 *     own, before the token is returned; fill_first and random never write.
 *   - A refresh that fails for its grant alone (needs a login, transient,
 *     unknown outcome) falls back to the next entry the strategy picks, as
 *     Hermes' pool does; every entry of a failed grant is passed over, and
 *     the first failure is reported when no entry is left. --force never
 *     falls back.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tl_token_free(tl_token *t)
{
  if (!t)
    return;
  tl_secret_free(t->access_token);
  free(t->entry_id);
  free(t->base_url);
  free(t);
}

tl_token *tl__token_new(const char *access_token, int64_t expires_at_ms, int64_t credential, const char *entry_id,
                        const char *base_url, int refreshed)
{
  tl_token *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->access_token = tl__strdup(access_token);
  t->entry_id = entry_id ? tl__strdup(entry_id) : NULL;
  t->base_url = base_url ? tl__strdup(base_url) : NULL;
  t->expires_at_ms = expires_at_ms;
  t->credential = credential;
  t->refreshed = refreshed;
  if (!t->access_token || (entry_id && !t->entry_id) || (base_url && !t->base_url)) {
    tl_token_free(t);
    return NULL;
  }
  return t;
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
  int failed; /* its refresh failed in this call: the pool falls back to the next entry */
} candidate;

static void candidate_clear(candidate *c)
{
  tl_secret_free(c->access_token);
  free(c->entry_id);
  free(c->base_url);
  free(c->status);
  memset(c, 0, sizeof *c);
}

/* A stored access token that is not printable (an older ledger, an edited file) is never handed out. */
static int usable_at(const char *at)
{
  return at && tl__token_valid(at, strlen(at));
}

static int fresh(const candidate *c, int64_t now)
{
  return usable_at(c->access_token) && c->expires_at > 0 && c->expires_at - c->skew_ms > now;
}

/*
 * The rule of a selectable pool entry, written once (e: pool_entry, c: its
 * credential, :now the moment): not cooling down, and live: not marked dead,
 * its credential not waiting for a new login. select_sql and fast_sql select
 * by it; why_none counts the entries it refuses.
 */
#define ENTRY_READY      "(e.cooldown_until IS NULL OR e.cooldown_until <= :now)"
#define ENTRY_LIVE       "(e.last_status IS NOT 'dead' AND c.status <> 'needs_reauth')"
#define ENTRY_SELECTABLE ENTRY_READY " AND " ENTRY_LIVE

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
    "WHERE p.name = :profile AND " ENTRY_SELECTABLE " ORDER BY e.priority, e.id";

static tl_status why_none(tl_store *s, const char *profile, const char *provider, tl_error *err)
{
  static const char sql[] =
      "SELECT count(*), sum(NOT " ENTRY_LIVE "), "
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
    return tl__err(err, TL_ENOTFOUND, 0, "profile '%s' has no %s credential; add one or import its auth.json", profile,
                   provider);
  if (cooling > 0 && dead + cooling + keyless >= total)
    return tl__err(err, TL_ETRANSIENT, 0,
                   "every %s entry of profile '%s' is cooling down; the first is usable in "
                   "%lld s",
                   provider, profile, (long long)((until - now + 999) / 1000));
  if (dead > 0)
    return tl__err(err, TL_EREAUTH, 0, "every %s credential of profile '%s' needs a new login", provider, profile);
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
    if (!c[i].failed && (fresh(&c[i], now) || (strcmp(c[i].status, "active") == 0 && c[i].not_before <= now)))
      usable[k++] = (int)i;
  /* Nothing usable now: fall back to an entry whose refresh is only backing off, so the
   * caller hears "try later" rather than "unknown". */
  for (size_t i = 0; k == 0 && i < n; i++)
    if (!c[i].failed && strcmp(c[i].status, "active") == 0)
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
    if (tl__rand_bytes((unsigned char *)&r, sizeof r) != 1)
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
  assert(c->entry_id);
  tl_token *t = tl__token_new(c->access_token, c->expires_at, c->credential, c->entry_id, c->base_url, 0);
  if (!t)
    return tl__oom(err);
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
    rc = n ? tl__err(err, TL_EUNKNOWN, 0, "every %s credential of profile '%s' has an unknown refresh outcome",
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
 * which picks exactly the same entry when this one is fresh. The query also
 * reads the provider's skew and the end of the earliest cooldown among the
 * profile's entries for the provider: until then, only a change to the ledger
 * can change the answer.
 */
static const char fast_sql[] =
    "SELECT e.entry_id, c.id, c.access_token, c.expires_at, c.base_url, pv.skew_s * 1000, "
    "(SELECT min(o.cooldown_until) FROM pool_entry o WHERE o.profile_id = p.id AND o.provider = :provider AND "
    "o.cooldown_until > :now) "
    "FROM profile p JOIN pool_entry e ON e.profile_id = p.id AND e.provider = :provider "
    "JOIN credential c ON c.id = e.credential_id JOIN provider pv ON pv.name = e.provider "
    "WHERE p.name = :profile AND " ENTRY_SELECTABLE " "
    "AND NOT EXISTS (SELECT 1 FROM pool_strategy ps WHERE ps.profile_id = p.id AND ps.provider = :provider) "
    "ORDER BY e.priority, e.id LIMIT 1";

/*
 * The hot path's answers, per store. An answer is kept with the ledger's
 * change marker (tl__db_marker) read before and after the query that found
 * it (kept only if both agree: no commit in between) and with the moment it
 * stops being the answer on its own: its access token's expiry minus the
 * provider's skew, or the end of the profile's earliest cooldown. It is handed
 * out again only while the marker is still the same, so any commit by any
 * process (a refresh, a cooldown, a dead entry, a re-login, a new strategy)
 * sends the next call back to the ledger at once, and only until that moment.
 * Access tokens in it are burned when it is cleared.
 */
struct tl__cached_token {
  char *profile, *provider; /* NULL: an empty slot */
  unsigned char marker[TL_DB_MARKER_LEN];
  int64_t until; /* ms: the answer is not handed out from here at or after this */
  tl_token tok;  /* access_token SECRET */
};
#define TOKEN_CACHE_MAX 65536

static uint64_t cache_hash(const char *profile, const char *provider)
{
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (const char *p = profile; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  h = (h ^ 0xff) * 1099511628211ULL;
  for (const char *p = provider; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ULL;
  return h;
}

static void cached_clear(struct tl__cached_token *c)
{
  free(c->profile);
  free(c->provider);
  tl_secret_free(c->tok.access_token);
  free(c->tok.entry_id);
  free(c->tok.base_url);
  memset(c, 0, sizeof *c);
}

void tl__token_cache_clear(tl_store *s)
{
  for (size_t i = 0; i < s->tokens.cap; i++)
    cached_clear(&s->tokens.slots[i]);
  free(s->tokens.slots);
  memset(&s->tokens, 0, sizeof s->tokens);
}

/* The slot of (profile, provider): its entry, or the empty slot where it would go; NULL without a table. */
static struct tl__cached_token *cache_slot(tl_store *s, const char *profile, const char *provider)
{
  if (!s->tokens.cap)
    return NULL;
  size_t mask = s->tokens.cap - 1;
  for (size_t i = (size_t)cache_hash(profile, provider) & mask;; i = (i + 1) & mask) {
    struct tl__cached_token *c = &s->tokens.slots[i];
    if (!c->profile || (strcmp(c->profile, profile) == 0 && strcmp(c->provider, provider) == 0))
      return c;
  }
}

/* A fresh answer for (profile, provider) while the ledger is as it was when the answer was read. */
static int cached_token(tl_token **out, tl_store *s, const char *profile, const char *provider)
{
  unsigned char now_marker[TL_DB_MARKER_LEN];
  struct tl__cached_token *c = cache_slot(s, profile, provider);
  if (!c || !c->profile || tl__now_ms() >= c->until || !tl__db_marker(s, now_marker) ||
      memcmp(now_marker, c->marker, sizeof now_marker) != 0)
    return 0;
  tl_token *t = tl__token_new(c->tok.access_token, c->tok.expires_at_ms, c->tok.credential, c->tok.entry_id,
                              c->tok.base_url, c->tok.refreshed);
  if (!t)
    return 0;
  *out = t;
  return 1;
}

/* Keeps t as the answer for (profile, provider) at marker until the given moment (best effort: memory). */
static void cache_put(tl_store *s, const char *profile, const char *provider, const unsigned char *marker,
                      int64_t until, const tl_token *t)
{
  if (s->tokens.used + 1 > s->tokens.cap / 2) {
    size_t cap = s->tokens.cap ? s->tokens.cap * 2 : 64;
    if (s->tokens.used >= TOKEN_CACHE_MAX)
      cap = s->tokens.cap; /* full: start over rather than grow without bound */
    struct tl__cached_token *old = s->tokens.slots, *slots = calloc(cap, sizeof *slots);
    size_t oldcap = s->tokens.cap;
    if (!slots)
      return;
    s->tokens.slots = slots;
    s->tokens.cap = cap;
    s->tokens.used = 0;
    for (size_t i = 0; i < oldcap; i++) {
      if (old[i].profile && s->tokens.used < TOKEN_CACHE_MAX / 2) {
        *cache_slot(s, old[i].profile, old[i].provider) = old[i];
        s->tokens.used++;
      } else {
        cached_clear(&old[i]);
      }
    }
    free(old);
  }
  struct tl__cached_token *c = cache_slot(s, profile, provider);
  if (!c->profile)
    s->tokens.used++;
  cached_clear(c);
  c->profile = tl__strdup(profile);
  c->provider = tl__strdup(provider);
  c->tok = *t;
  c->tok.access_token = tl__strdup(t->access_token);
  c->tok.entry_id = tl__strdup(t->entry_id);
  c->tok.base_url = tl__strdup(t->base_url);
  memcpy(c->marker, marker, sizeof c->marker);
  c->until = until;
  if (!c->profile || !c->provider || !c->tok.access_token || !c->tok.entry_id || (t->base_url && !c->tok.base_url)) {
    cached_clear(c); /* leaves an empty slot: a later probe stops there, as for a key never stored */
    s->tokens.used--;
  }
}

static int fast_token(tl_token **out, tl_store *s, const char *profile, const char *provider)
{
  sqlite3_stmt *st;
  unsigned char before[TL_DB_MARKER_LEN], after[TL_DB_MARKER_LEN];
  int marked = tl__db_marker(s, before);
  int64_t now = tl__now_ms();
  if (tl__prepare(&st, s, fast_sql, NULL) != TL_OK ||
      TL_BIND(st, NULL, TL_TEXT(":profile", profile), TL_TEXT(":provider", provider), TL_INT(":now", now)) != TL_OK)
    return 0; /* the full path reports what went wrong */
  int found = 0;
  int64_t until = 0;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 2) != SQLITE_NULL) {
    int64_t exp = sqlite3_column_int64(st, 3), skew = sqlite3_column_int64(st, 5);
    int64_t cooldown_ends = sqlite3_column_int64(st, 6); /* 0: none pending */
    until = exp - skew;
    if (cooldown_ends > 0 && cooldown_ends < until)
      until = cooldown_ends;
    if (exp > 0 && exp - skew > now && usable_at((const char *)sqlite3_column_text(st, 2))) {
      const char *entry = (const char *)sqlite3_column_text(st, 0);
      tl_token *t = entry ? tl__token_new((const char *)sqlite3_column_text(st, 2), exp, sqlite3_column_int64(st, 1),
                                          entry, (const char *)sqlite3_column_text(st, 4), 0)
                          : NULL;
      if (t) {
        *out = t;
        found = 1;
      }
    }
  }
  sqlite3_reset(st);
  /* Kept only if no commit happened while it was read: then it is the ledger's answer at that marker. */
  if (found && marked && tl__db_marker(s, after) && memcmp(before, after, sizeof before) == 0)
    cache_put(s, profile, provider, before, until, *out);
  return found;
}

int tl__token_hot(tl_token **out, tl_store *s, const char *profile, const char *provider)
{
  *out = NULL;
  return cached_token(out, s, profile, provider) || fast_token(out, s, profile, provider);
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
  if (tl__agent_token(&rc, out, s, profile, provider, flags, err)) /* serve's agent, when one runs */
    return rc;
  if (!(flags & TL_REFRESH_FORCE) && (cached_token(out, s, profile, provider) || fast_token(out, s, profile, provider)))
    return TL_OK;
  if ((rc = load_candidates(c, &n, strategy, s, profile, provider, err)) != TL_OK)
    goto done;
  int i = pick(c, n, strategy);
  if (i < 0) {
    rc = n ? tl__err(err, TL_EUNKNOWN, 0,
                     "no usable %s token for profile '%s': the last refresh of its credential %lld has an unknown "
                     "outcome, so its refresh token is not presented again automatically",
                     provider, profile, (long long)c[0].credential)
           : why_none(s, profile, provider, err);
    goto done;
  }
  /*
   * As Hermes' pool does, a refresh that fails for this grant alone (a dead grant, a server that cannot answer
   * now, an unknown outcome) falls back to the next entry the strategy picks; the first failure is the one
   * reported when none is left. A forced refresh is of the chosen entry only: it never falls back.
   */
  tl_error first = {0};
  tl_status first_rc = TL_OK;
  int none_left = 0;
  for (;;) {
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
    if ((flags & TL_REFRESH_FORCE) || (rc != TL_EREAUTH && rc != TL_ETRANSIENT && rc != TL_EUNKNOWN))
      break;
    if (first_rc == TL_OK) {
      first_rc = rc;
      first = *err;
    }
    for (size_t k = 0; k < n; k++) /* every entry of that grant failed with it */
      c[k].failed |= c[k].credential == c[i].credential;
    if ((i = pick(c, n, strategy)) < 0) {
      none_left = 1;
      break;
    }
    tl_error_clear(err);
  }
  if (none_left) {
    rc = first_rc;
    *err = first;
  }
done:
  for (size_t k = 0; k < n; k++)
    candidate_clear(&c[k]);
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
