/*
 * refresh.c - the refresh protocol: claim, present, record; the rescue files
 * that keep an answer the ledger could not record; and recover.
 *
 * Which grant to refresh is decided in select.c; what goes on the wire and
 * how an answer is classified, in oauth.c; this file holds only what makes a
 * presentation safe. The protocol (SPEC section 3) in three steps:
 *   1. Claim (BEGIN IMMEDIATE ... COMMIT): re-read the credential; return a
 *      token someone else just obtained (single-flight); wait for a live
 *      in-flight attempt; turn a dead owner's attempt into `unknown`; check
 *      the RT; insert an `in_flight` attempt, mark the RT `presented`, audit.
 *      The commit is durable (its WAL synced, db.c) before any byte leaves.
 *   2. Present: the POST, outside any transaction.
 *   3. Record (BEGIN IMMEDIATE ... COMMIT): the outcome, exactly one of
 *      rotated / rejected / transient / not_sent / unknown.
 *
 * Invariants kept here:
 *   - An RT is presented only from state `current` (or, by explicit operator
 *     decision or inside a declared grace window, once from `unknown`).
 *   - No write lock is held across the network.
 *   - An outcome that cannot be known (lost response, crash, unreadable 200)
 *     is recorded as `unknown` and is never presented again automatically;
 *     how far its request got is recorded with it (tl_unknown_sent), so that
 *     nobody is advised to present again a token the server may have seen.
 *   - A spent RT's plaintext is erased in the same transaction that spends it.
 *   - Exactly one process per credential presents at a time (partial unique
 *     index on in_flight attempts); others wait for its result.
 */
#define _GNU_SOURCE /* memmem */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LEASE_MARGIN_MS      5000
#define CONNECT_TIMEOUT_MS   5000
#define TRANSIENT_COOLDOWN_S 60

/* ---- the protocol ------------------------------------------------------- */

typedef struct claim {
  int64_t credential, rt, attempt, generation, family, started;
  char fp[65];
  char *secret; /* the RT plaintext (secret) */
  char *token_url, *client_id, *rt_header, *provider, *label;
  int64_t grace_ms;
  int json_body;   /* the provider takes the refresh request as JSON (Anthropic), not as a form */
  char *rescue;    /* where the answer goes if it cannot be recorded: <ledger>-rescue-<cred>-<attempt> */
  int rescued;     /* the answer was written to it */
  int from_rescue; /* recording an answer taken back from a rescue file (recover) */
} claim;

static void rescue_release(claim *c);
static int rescue_pending(tl_store *s, int64_t cred);
static int rescue_holds(tl_store *s, int64_t cred, const char *fp, int usable, tl_error *why);

static void claim_clear(claim *c)
{
  rescue_release(c);
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

/*
 * Marks an in-flight or lost attempt unknown: attempt, RT and credential. request says how far the
 * request got, for tl_unknown_sent: "answered" (the server answered: it has the token), "may_have_arrived"
 * (bytes left and no usable answer came back, or the presenting process died), "not_sent" (provably no
 * byte left). It goes in the attempt_unknown audit row.
 */
static tl_status mark_unknown(tl_store *s, int64_t attempt, const char *why, const char *request, tl_error *err)
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
  return tl__audit(s, "attempt_unknown", &ids,
                   json_pack("{s:I, s:s, s:s}", "attempt", (json_int_t)attempt, "why", why, "request", request), err);
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
                           "may_have_arrived", err)) != TL_OK)
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
    "c.base_url, coalesce(c.refresh_not_before, 0), pv.body = 'json' "
    "FROM credential c JOIN provider pv ON pv.name = c.provider WHERE c.id = :id";

/* What the credential's row said when the claim read it (a dead owner's attempt changes it). */
typedef struct claim_view {
  char status[16];  /* active, uncertain or needs_reauth */
  char reason[300]; /* why it is not active */
  int64_t not_before;
} claim_view;

/*
 * Claim step 1: re-reads the credential. An access token someone else just
 * obtained is fresh enough (single-flight): *fresh gets it. Else cl gets the
 * credential's endpoints and v its state.
 */
static tl_status claim_read_credential(tl_token **fresh, claim *cl, claim_view *v, tl_store *s, int64_t cred,
                                       unsigned flags, int retry_unknown, int waited, int64_t ahead_ms, int64_t now,
                                       tl_error *err)
{
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  *fresh = NULL;
  if ((rc = tl__prepare(&st, s, cred_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
  }
  snprintf(v->status, sizeof v->status, "%s", (const char *)sqlite3_column_text(st, 0));
  int64_t exp = sqlite3_column_int64(st, 2), skew = sqlite3_column_int64(st, 3);
  if (ahead_ms > skew)
    skew = ahead_ms; /* keep-fresh: fresh means fresh for longer than its horizon */
  const char *at = (const char *)sqlite3_column_text(st, 1);
  int have_at = at && tl__token_valid(at, strlen(at)); /* never hand out one that is not printable */
  if (have_at && exp - skew > now && (!(flags & TL_REFRESH_FORCE) || waited) && !retry_unknown) {
    tl_token *t = tl__token_new(at, exp, cred, NULL, (const char *)sqlite3_column_text(st, 11), 0);
    sqlite3_reset(st);
    if (!t)
      return tl__oom(err);
    *fresh = t;
    return TL_OK;
  }
  cl->credential = cred;
  cl->token_url = tl__col_dup(st, 4);
  cl->client_id = tl__col_dup(st, 5);
  cl->rt_header = tl__col_dup(st, 6);
  cl->provider = tl__col_dup(st, 7);
  cl->label = tl__col_dup(st, 8);
  cl->grace_ms = sqlite3_column_int64(st, 9);
  snprintf(v->reason, sizeof v->reason, "%s",
           sqlite3_column_text(st, 10) ? (const char *)sqlite3_column_text(st, 10) : "no reason recorded");
  v->not_before = sqlite3_column_int64(st, 12);
  cl->json_body = sqlite3_column_int(st, 13);
  sqlite3_reset(st);
  return cl->provider ? TL_OK : tl__oom(err);
}

/* Claim step 2: the credential may be refreshed now: a valid endpoint, no login needed, no back-off asked. */
static tl_status claim_check_credential(const claim *cl, const claim_view *v, int retry_unknown, int64_t now,
                                        tl_error *err)
{
  long long cred = (long long)cl->credential;
  if (!cl->token_url || !cl->client_id)
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld: provider '%s' has no token endpoint or client id configured",
                   cred, cl->provider);
  /* An endpoint stored before today's rules (or edited in the file) is checked again before anything is sent. */
  tl_error why = {0};
  const char *bad_header = cl->rt_header ? tl__rt_header_invalid(cl->rt_header) : NULL;
  if (tl_url_check(cl->token_url, &why) != TL_OK || bad_header)
    return tl__err(err, TL_EINVAL, 0,
                   "credential %lld (%s): its stored token endpoint is refused, so the refresh token was not sent: %s",
                   cred, cl->provider, bad_header ? "the refresh token header name is not acceptable" : why.message);
  if (strcmp(v->status, "needs_reauth") == 0)
    return tl__err(err, TL_EREAUTH, 0, "credential %lld (%s%s%s) needs a new login: %s", cred, cl->provider,
                   cl->label ? ", " : "", cl->label ? cl->label : "", v->reason);
  if (v->not_before > now && !retry_unknown && strcmp(v->status, "active") == 0)
    return tl__err(err, TL_ETRANSIENT, 0,
                   "credential %lld (%s): the token endpoint asked to back off; the next refresh may be attempted "
                   "in %lld s",
                   cred, cl->provider, (long long)((v->not_before - now + 999) / 1000));
  return TL_OK;
}

/*
 * Claim step 3: is someone presenting right now? A live owner: *wait_for gets
 * its attempt. A dead owner's attempt becomes unknown (and so does the
 * credential, in v too).
 */
static tl_status claim_check_in_flight(int64_t *wait_for, claim_view *v, tl_store *s, int64_t cred, int64_t now,
                                       tl_error *err)
{
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  *wait_for = 0;
  if ((rc = tl__prepare(&st, s, stale_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return TL_OK;
  }
  int64_t att = sqlite3_column_int64(st, 0);
  int dead = attempt_dead(s, st, now);
  sqlite3_reset(st);
  if (!dead) {
    *wait_for = att;
    return TL_OK;
  }
  if ((rc = mark_unknown(s, att, "the presenting process died or its lease expired before it recorded an outcome",
                         "may_have_arrived", err)) != TL_OK)
    return rc;
  snprintf(v->status, sizeof v->status, "uncertain");
  snprintf(v->reason, sizeof v->reason, "the process presenting its refresh token died mid-request");
  return TL_OK;
}

/*
 * Claim step 4: the RT to present: `current` (or `unknown` with
 * retry_unknown), its plaintext kept and matching its fingerprint. *keep: the
 * refusal must commit what the claim recorded (a dead owner's attempt stays
 * unknown).
 */
static tl_status claim_load_rt(int *keep, claim *cl, const claim_view *v, tl_store *s, int retry_unknown, tl_error *err)
{
  static const char live_sql[] =
      "SELECT id, secret, fingerprint, generation, coalesce(family_id, id), state FROM refresh_token "
      "WHERE credential_id = :cred AND (state = 'current' OR state = 'presented' OR state = 'unknown')"; /* one_open */
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  long long cred = (long long)cl->credential;
  int named = 0;
  tl_error why = {0};
  *keep = 0;
  if ((rc = tl__prepare(&st, s, live_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":cred", cl->credential))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "refresh claim", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return tl__err(err, TL_EREAUTH, 0, "credential %lld (%s) holds no usable refresh token; log in again", cred,
                   cl->provider);
  }
  cl->rt = sqlite3_column_int64(st, 0);
  cl->secret = tl__col_dup(st, 1);
  snprintf(cl->fp, sizeof cl->fp, "%s", (const char *)sqlite3_column_text(st, 2));
  cl->generation = sqlite3_column_int64(st, 3);
  cl->family = sqlite3_column_int64(st, 4);
  char rtstate[16];
  snprintf(rtstate, sizeof rtstate, "%s", (const char *)sqlite3_column_text(st, 5));
  sqlite3_reset(st);

  if (strcmp(rtstate, "unknown") == 0 || strcmp(v->status, "uncertain") == 0) {
    if (!retry_unknown && rescue_pending(s, cl->credential)) {
      *keep = 1;
      return tl__err(
          err, TL_EUNKNOWN, 0,
          "credential %lld (%s%s%s): %s, but the server's answer to it is kept in a rescue file beside the "
          "ledger, so nothing is lost; until it is taken back, its refresh token (generation %lld, %.12s...) is not "
          "presented again",
          cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", v->reason, (long long)cl->generation,
          cl->fp);
    }
    if (!retry_unknown) {
      *keep = 1;
      return tl__err(err, TL_EUNKNOWN, 0,
                     "credential %lld (%s%s%s): %s. Its refresh token (generation %lld, %.12s...) may already have "
                     "been spent, so it is not presented again automatically: presenting a spent token makes the "
                     "server revoke the login. It waits for a decision: retry once, or give the login up",
                     cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", v->reason,
                     (long long)cl->generation, cl->fp);
    }
  } else if (strcmp(rtstate, "current") != 0) {
    return tl__err(err, TL_ERROR, 0, "credential %lld: refresh token in state %s cannot be presented", cred, rtstate);
  } else if ((named = rescue_holds(s, cl->credential, cl->fp, 0, &why)) < 0) {
    return tl__err(err, TL_EUNKNOWN, 0,
                   "credential %lld (%s%s%s): a file beside the ledger is named as its rescue file but cannot be read "
                   "as a rescue file (%s); it may hold the server's answer to the refresh token, so the token is not "
                   "presented until that file is inspected and moved away",
                   cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", why.message);
  } else if (named) {
    /* The ledger says current, a rescue file says the server answered it: the ledger is older than the
     * file (restored from a copy, or its last record lost). The file is the later truth. */
    return tl__err(err, TL_EUNKNOWN, 0,
                   "credential %lld (%s%s%s): a rescue file beside the ledger holds the server's answer to its current "
                   "refresh token (generation %lld, %.12s...), so that token was spent already (was the ledger "
                   "restored from an earlier copy?); it is not presented again until the answer is taken back",
                   cred, cl->provider, cl->label ? ", " : "", cl->label ? cl->label : "", (long long)cl->generation,
                   cl->fp);
  }
  if (!cl->secret)
    return tl__err(err, TL_EREAUTH, 0, "credential %lld: the refresh token's plaintext is gone; log in again", cred);
  /* The plaintext must be the token the ledger thinks it is. */
  char check[65];
  tl_fingerprint(check, cl->secret, strlen(cl->secret));
  if (tl__memcmp_ct(check, cl->fp, 64) != 0)
    return tl__err(err, TL_ECORRUPT, 0,
                   "credential %lld: stored refresh token does not match its fingerprint; not presenting it", cred);
  return TL_OK;
}

/* Claim step 5: the attempt, in_flight, owned by this process and leased; the RT `presented`; the audit row. */
static tl_status claim_insert_attempt(claim *cl, tl_store *s, int retry_unknown, int64_t now, tl_error *err)
{
  static const char ins_sql[] =
      "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, "
      "owner_profile, owner_command, started_at, lease_until) VALUES (:cred, :rt, :host, :boot, :pid, :start, "
      ":profile, :command, :now, :lease)";
  static const char pres_sql[] = "UPDATE refresh_token SET state = 'presented', retired_at = NULL WHERE id = :id";
  static const char reopen_sql[] = "UPDATE credential SET status = 'active', status_reason = NULL, updated_at = :now "
                                   "WHERE id = :id AND status = 'uncertain'";
  tl_status rc;
  if ((rc = TL_RUN(s, ins_sql, "claim", err, TL_INT(":cred", cl->credential), TL_INT(":rt", cl->rt),
                   TL_TEXT(":host", s->actor.host), TL_TEXT(":boot", s->actor.boot), TL_INT(":pid", s->actor.pid),
                   TL_INT(":start", s->actor.start), TL_TEXT(":profile", s->actor.profile),
                   TL_TEXT(":command", s->actor.command), TL_INT(":now", now),
                   TL_INT(":lease", now + http_timeout(s) + LEASE_MARGIN_MS))) != TL_OK)
    return rc;
  cl->attempt = sqlite3_last_insert_rowid(s->db);
  cl->started = now;
  if ((rc = TL_RUN(s, pres_sql, "claim", err, TL_INT(":id", cl->rt))) != TL_OK)
    return rc;
  if (retry_unknown &&
      (rc = TL_RUN(s, reopen_sql, "claim", err, TL_INT(":now", now), TL_INT(":id", cl->credential))) != TL_OK)
    return rc;
  tl__ids ids = {.credential = cl->credential, .rt = cl->rt};
  return tl__audit(s, retry_unknown ? "rt_represented" : "rt_presented", &ids,
                   json_pack("{s:I, s:I, s:s%}", "attempt", (json_int_t)cl->attempt, "generation",
                             (json_int_t)cl->generation, "fingerprint", cl->fp, (size_t)12),
                   err);
}

/*
 * One claim transaction, as a list of steps. retry_unknown allows presenting
 * an RT in state `unknown` (operator decision, or the grace-window retry).
 */
static tl_status claim_once(claim_result *res, claim *cl, tl_token **out, int64_t *wait_for, tl_store *s, int64_t cred,
                            unsigned flags, int retry_unknown, int waited, int64_t ahead_ms, tl_error *err)
{
  tl_status rc;
  tl_token *fresh = NULL;
  claim_view v;
  int64_t att = 0;
  int keep = 0;
  if ((rc = tl__tx_begin(s, "refresh claim", err)) != TL_OK)
    return rc;
  int64_t now = tl__now_ms();
  if ((rc = claim_read_credential(&fresh, cl, &v, s, cred, flags, retry_unknown, waited, ahead_ms, now, err)) != TL_OK)
    goto fail;
  if (fresh) {
    *res = SATISFIED;
    /* Another process's record: durable before its token is handed out here too (its own sync may still run). */
    if ((rc = tl__tx_commit(s, err)) != TL_OK || (rc = tl__wal_sync(s, err)) != TL_OK) {
      tl_token_free(fresh);
      return rc;
    }
    *out = fresh;
    return TL_OK;
  }
  if ((rc = claim_check_credential(cl, &v, retry_unknown, now, err)) != TL_OK ||
      (s->coop_nskip && (rc = tl__strict_skips_check(s, err)) != TL_OK) ||
      (rc = claim_check_in_flight(&att, &v, s, cred, now, err)) != TL_OK)
    goto fail;
  if (att) {
    *wait_for = att;
    *res = WAIT;
    return tl__tx_commit(s, err);
  }
  if ((rc = claim_load_rt(&keep, cl, &v, s, retry_unknown, err)) != TL_OK)
    goto refused;
  if ((rc = claim_insert_attempt(cl, s, retry_unknown, now, err)) != TL_OK)
    goto fail;
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  *res = CLAIMED;
  return TL_OK;
refused:
  if (keep) {
    tl__tx_commit(s, NULL); /* keep what the claim recorded (a dead owner's attempt) */
    return rc;
  }
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
    tl__sleep_us((int64_t)delay * 1000);
    if (delay < 50)
      delay = delay * 3 / 2 + 1;
  }
}

/* ---- record ------------------------------------------------------------- */

/* An answer taken back from a rescue file settles an attempt the reaper already called unknown. */
static const char finish_sql[] =
    "UPDATE refresh_attempt SET outcome = :outcome, finished_at = :now, http_status = :status, oauth_error = :error, "
    "error_description = :desc, child_rt_id = :child WHERE id = :id AND (outcome = 'in_flight' OR (:rescue AND "
    "outcome = 'unknown'))";

static tl_status finish_attempt(tl_store *s, const claim *cl, const char *outcome, const tl__answer *a, int64_t child,
                                tl_error *err)
{
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, finish_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":outcome", outcome), TL_INT(":now", tl__now_ms()),
                    TL_OPTINT(":status", a->status), TL_TEXT(":error", a->error), TL_TEXT(":desc", a->desc),
                    TL_OPTINT(":child", child), TL_INT(":id", cl->attempt), TL_INT(":rescue", cl->from_rescue))) !=
          TL_OK)
    return rc;
  rc = tl__step_done(s, st, "record", err);
  if (rc == TL_OK && sqlite3_changes(s->db) != 1)
    rc = tl__err(err, TL_ERROR, 0, "record: attempt %lld was settled by another process (lease expired?)",
                 (long long)cl->attempt);
  return rc;
}

/* Message for a terminal answer: what the server said and who presented what. */
static void rejected_message(tl_store *s, const claim *cl, const tl__answer *a, tl_error *err)
{
  static const char prev_sql[] =
      "SELECT t.generation, a.owner_host || ':' || a.owner_pid, coalesce(a.owner_profile, '-'), "
      "coalesce(a.owner_command, '-'), strftime('%Y-%m-%dT%H:%M:%SZ', a.started_at / 1000.0, 'unixepoch') "
      "FROM refresh_token t JOIN refresh_attempt a ON a.rt_id = t.id WHERE t.credential_id = :cred AND a.id < :att "
      "ORDER BY a.id DESC LIMIT 1"; /* through the credential's RTs: only a rejection asks */
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
  int reuse = tl__answer_reuse(a->error, a->desc);
  char outside[300] = "";
  if (reuse && times <= 1)
    snprintf(outside, sizeof outside,
             " tokenledger never presented generation %lld before, so a process outside tokenledger (a script, a "
             "second install, a restored backup) presented it first.",
             (long long)cl->generation);
  tl__err(err, TL_EREAUTH, 0,
          "%s rejected refresh token generation %lld (%.12s...) of credential %lld%s%s%s: HTTP %ld %s%s%s. "
          "Before this presentation (by %s:%ld), %s.%s The credential needs a new login.",
          cl->provider, (long long)cl->generation, cl->fp, (long long)cl->credential, cl->label ? " (" : "",
          cl->label ? cl->label : "", cl->label ? ")" : "", a->status, a->error ? a->error : "(no error code)",
          a->desc ? ": " : "", a->desc ? a->desc : "", s->actor.host, s->actor.pid, prev, outside);
}

/* Shows a failed refresh on every pool entry of the credential (what Hermes' export carries). */
static tl_status mark_entries(tl_store *s, int64_t cred, const char *status, const tl__answer *a, int64_t now,
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

static const char rotate_old_sql[] = "UPDATE refresh_token SET state = 'rotated', secret = NULL, retired_at = :now "
                                     "WHERE id = :id";
static const char back_sql[] = "UPDATE refresh_token SET state = 'current', retired_at = NULL WHERE id = :id";

/* 200: the child RT (if any), the access token (if usable), the entries' status; *out gets the new token. */
static tl_status record_rotated(tl_token **out, tl_store *s, const claim *cl, tl__answer *a, int64_t now, tl_error *err)
{
  static const char child_sql[] =
      "INSERT INTO refresh_token (credential_id, parent_id, family_id, generation, fingerprint, state, origin, secret, "
      "issued_at) VALUES (:cred, :parent, :family, :gen, :fp, 'current', 'refresh', :secret, :now)";
  static const char cred_ok_sql[] =
      "UPDATE credential SET access_token = coalesce(:at, access_token), id_token = CASE WHEN :at IS NULL THEN "
      "id_token ELSE :idt END, "
      "expires_at = CASE WHEN :at IS NULL THEN expires_at ELSE nullif(:exp, 0) END, "
      "obtained_at = CASE WHEN :at IS NULL THEN obtained_at ELSE :now END, "
      "scope = coalesce(json_extract(:extra, '$.scope'), scope), status = 'active', status_reason = NULL, "
      "refresh_not_before = NULL, extra = json_patch(extra, :extra), updated_at = :now WHERE id = :id";
  static const char entries_ok_sql[] =
      "UPDATE pool_entry SET last_status = 'ok', last_status_at = :now, last_error_code = NULL, "
      "last_error_reason = NULL, last_error_message = NULL, cooldown_until = NULL WHERE credential_id = :cred "
      "AND last_status IS NOT NULL AND last_status <> 'ok'";
  tl_status rc;
  sqlite3_stmt *st;
  int64_t child = 0;
  char childfp[65] = "";
  tl__ids ids = {.credential = cl->credential, .rt = cl->rt};
  if (a->kind == TL__A_ROTATED) {
    tl_fingerprint(childfp, a->refresh_token, strlen(a->refresh_token));
    if ((rc = TL_RUN(s, rotate_old_sql, "record", err, TL_INT(":now", now), TL_INT(":id", cl->rt))) != TL_OK ||
        (rc = TL_RUN(s, child_sql, "record child", err, TL_INT(":cred", cl->credential), TL_INT(":parent", cl->rt),
                     TL_INT(":family", cl->family), TL_INT(":gen", cl->generation + 1), TL_TEXT(":fp", childfp),
                     TL_SECRET(":secret", a->refresh_token), TL_INT(":now", now))) != TL_OK)
      return rc;
    child = sqlite3_last_insert_rowid(s->db);
  } else if ((rc = TL_RUN(s, back_sql, "record", err, TL_INT(":id", cl->rt))) != TL_OK) {
    return rc;
  }
  char *extra = a->extra ? json_dumps(a->extra, JSON_COMPACT) : NULL;
  if ((rc = tl__prepare(&st, s, cred_ok_sql, err)) == TL_OK &&
      (rc = TL_BIND(st, err, TL_SECRET(":at", a->at_unusable ? NULL : a->access_token), TL_SECRET(":idt", a->id_token),
                    TL_INT(":exp", a->expires_at), TL_INT(":now", now), TL_TEXT(":extra", extra ? extra : "{}"),
                    TL_INT(":id", cl->credential))) == TL_OK)
    rc = tl__step_done(s, st, "record credential", err);
  free(extra);
  if (rc != TL_OK)
    return rc;
  if ((rc = TL_RUN(s, entries_ok_sql, "record", err, TL_INT(":now", now), TL_INT(":cred", cl->credential))) != TL_OK ||
      (rc = finish_attempt(s, cl, "rotated", a, child, err)) != TL_OK)
    return rc;
  ids.rt = child ? child : cl->rt;
  json_t *d =
      child ? json_pack("{s:I, s:I, s:s%, s:s%}", "attempt", (json_int_t)cl->attempt, "generation",
                        (json_int_t)(cl->generation + 1), "parent", cl->fp, (size_t)12, "fingerprint", childfp,
                        (size_t)12)
            : json_pack("{s:I, s:I}", "attempt", (json_int_t)cl->attempt, "generation", (json_int_t)cl->generation);
  if (d && a->expiry_assumed)
    json_object_set_new(d, "expiry_assumed_s", json_integer(TL_LIFETIME_ASSUMED_S));
  if (d && a->at_unusable)
    json_object_set_new(d, "access_token_unusable", json_true());
  if (d && cl->from_rescue)
    json_object_set_new(d, "from_rescue_file", json_true());
  if ((rc = tl__audit(s, child ? "rt_rotated" : "access_refreshed", &ids, d, err)) != TL_OK)
    return rc;
  if (a->at_unusable)
    return TL_OK; /* nothing to hand out; record() says why */
  json_t *bu = a->extra ? json_object_get(a->extra, "inference_base_url") : NULL;
  tl_token *t = tl__token_new(a->access_token, a->expires_at, cl->credential, NULL, json_string_value(bu), 1);
  if (!t)
    return tl__oom(err);
  *out = t;
  return TL_OK;
}

/* A terminal answer: the RT is rejected, the credential needs a new login, its entries are dead. */
static tl_status record_rejected(tl_store *s, const claim *cl, const tl__answer *a, int64_t now, tl_error *err)
{
  static const char reject_sql[] = "UPDATE refresh_token SET state = 'rejected', secret = NULL, retired_at = :now "
                                   "WHERE id = :id";
  static const char reauth_sql[] = "UPDATE credential SET status = 'needs_reauth', status_reason = :why, "
                                   "updated_at = :now WHERE id = :id";
  tl_status rc;
  tl__ids ids = {.credential = cl->credential, .rt = cl->rt};
  char why[300];
  snprintf(why, sizeof why, "server rejected generation %lld: HTTP %ld %s%s%.200s", (long long)cl->generation,
           a->status, a->error ? a->error : "", a->desc ? ": " : "", a->desc ? a->desc : "");
  if ((rc = TL_RUN(s, reject_sql, "record", err, TL_INT(":now", now), TL_INT(":id", cl->rt))) != TL_OK ||
      (rc = TL_RUN(s, reauth_sql, "record", err, TL_TEXT(":why", why), TL_INT(":now", now),
                   TL_INT(":id", cl->credential))) != TL_OK ||
      (rc = mark_entries(s, cl->credential, "dead", a, now, err)) != TL_OK ||
      (rc = finish_attempt(s, cl, "rejected", a, 0, err)) != TL_OK)
    return rc;
  int reuse = tl__answer_reuse(a->error, a->desc);
  return tl__audit(s, reuse ? "reuse_detected_by_server" : "rt_rejected", &ids,
                   json_pack("{s:I, s:I, s:s%, s:i, s:s?, s:s?}", "attempt", (json_int_t)cl->attempt, "generation",
                             (json_int_t)cl->generation, "fingerprint", cl->fp, (size_t)12, "http_status",
                             (int)a->status, "error", a->error, "error_description", a->desc),
                   err);
}

/* Not sent, transient or a configuration error: the RT is current again; a server that answered is backed off. */
static tl_status record_retryable(tl_store *s, const claim *cl, const tl__answer *a, int64_t now, long *wait_s,
                                  tl_error *err)
{
  static const char backoff_sql[] = "UPDATE credential SET refresh_not_before = :until WHERE id = :id";
  tl_status rc;
  tl__ids ids = {.credential = cl->credential, .rt = cl->rt};
  if ((rc = TL_RUN(s, back_sql, "record", err, TL_INT(":id", cl->rt))) != TL_OK)
    return rc;
  *wait_s = a->retry_after >= 0 ? a->retry_after : TRANSIENT_COOLDOWN_S;
  if (*wait_s > 86400)
    *wait_s = 86400;
  if (a->kind != TL__A_NOT_SENT) {
    /* Back off the refresh (the credential), not the entries: their access tokens stay usable. */
    if ((rc = TL_RUN(s, backoff_sql, "record", err, TL_INT(":until", now + (int64_t)*wait_s * 1000),
                     TL_INT(":id", cl->credential))) != TL_OK ||
        (rc = mark_entries(s, cl->credential, "exhausted", a, now, err)) != TL_OK)
      return rc;
  }
  if ((rc = finish_attempt(s, cl, a->kind == TL__A_NOT_SENT ? "not_sent" : "transient", a, 0, err)) != TL_OK)
    return rc;
  if (cl->from_rescue) {
    /* The reaper had made the credential uncertain; the rescued answer says the RT was not spent. */
    static const char reopen_sql[] = "UPDATE credential SET status = 'active', status_reason = NULL WHERE id = :id "
                                     "AND status = 'uncertain'";
    if ((rc = TL_RUN(s, reopen_sql, "record", err, TL_INT(":id", cl->credential))) != TL_OK)
      return rc;
  }
  return tl__audit(s, a->kind == TL__A_NOT_SENT ? "refresh_not_sent" : "refresh_transient", &ids,
                   json_pack("{s:I, s:I, s:i, s:s?, s:s?, s:i}", "attempt", (json_int_t)cl->attempt, "generation",
                             (json_int_t)cl->generation, "http_status", (int)a->status, "error", a->error,
                             "error_description", a->desc, "cooldown_s", a->kind == TL__A_NOT_SENT ? 0 : (int)*wait_s),
                   err);
}

/* What the caller hears after an answer was recorded (the server's text escaped by tl__err). */
static tl_status outcome_message(tl_store *s, const claim *cl, const tl__answer *a, long wait_s, tl_error *msg)
{
  const char *kept = cl->rescued && cl->rescue ? cl->rescue : "";
  switch (a->kind) {
  case TL__A_ROTATED:
  case TL__A_SAME_RT:
    if (!a->at_unusable)
      return TL_OK;
    return tl__err(msg, TL_ETRANSIENT, 0,
                   "%s answered 200 without a usable access token (missing, or not printable ASCII)%s; nothing "
                   "unusable was stored; try again",
                   cl->provider,
                   a->kind == TL__A_ROTATED ? "; its new refresh token was recorded" : "; the refresh token stays");
  case TL__A_REJECTED: rejected_message(s, cl, a, msg); return TL_EREAUTH;
  case TL__A_NOT_SENT:
    return tl__err(msg, TL_ETRANSIENT, 0, "%s: the refresh token was not sent (%s) and stays current", cl->provider,
                   a->desc ? a->desc : "no detail");
  case TL__A_TRANSIENT:
    return tl__err(msg, TL_ETRANSIENT, 0,
                   "%s answered HTTP %ld%s%s; the refresh token was not spent; the next refresh waits for %ld s",
                   cl->provider, a->status, a->error ? " " : "", a->error ? a->error : "", wait_s);
  case TL__A_CONFIG:
    return tl__err(msg, TL_ERROR, 0,
                   "%s refused the request: HTTP %ld %s%s%s; check the provider configuration (client id, "
                   "endpoint); the refresh token was not spent",
                   cl->provider, a->status, a->error ? a->error : "", a->desc ? ": " : "", a->desc ? a->desc : "");
  case TL__A_UNKNOWN:
    return tl__err(msg, TL_EUNKNOWN, 0,
                   "credential %lld (%s): response to generation %lld lost or unusable: %.200s.%s%s%s The server may "
                   "have rotated the refresh token, so it is not presented again automatically until someone decides",
                   (long long)cl->credential, cl->provider, (long long)cl->generation, a->desc ? a->desc : "no detail",
                   *kept ? " The raw answer is kept in " : "", kept, *kept ? " (0600) for inspection." : "");
  }
  return TL_ERROR;
}

/* An answer that cannot be used: the RT's outcome is unknown and it is never presented again automatically. */
static tl_status record_unknown(tl_store *s, const claim *cl, const tl__answer *a, tl_error *err)
{
  char why[300];
  snprintf(why, sizeof why, "response to generation %lld lost or unusable: %.200s", (long long)cl->generation,
           a->desc ? a->desc : "no detail");
  return mark_unknown(s, cl->attempt, why, a->status > 0 ? "answered" : "may_have_arrived", err);
}

/* A new RT the ledger already holds is not stored twice: the answer becomes unknown. */
static tl_status check_child_is_new(tl_store *s, tl__answer *a, tl_error *err)
{
  char childfp[65];
  int64_t known_rt = 0, known_cred = 0;
  tl_error probe = {0};
  if (a->kind != TL__A_ROTATED)
    return TL_OK;
  tl_fingerprint(childfp, a->refresh_token, strlen(a->refresh_token));
  tl_status rc = tl__rt_lookup(&known_rt, &known_cred, s, childfp, &probe);
  if (rc != TL_OK && rc != TL_EREUSE)
    return tl__err(err, rc, probe.sys, "%s", probe.message);
  if (known_rt) {
    a->kind = TL__A_UNKNOWN;
    free(a->desc);
    a->desc = strdup("server returned a refresh token that is already in the ledger");
  }
  return TL_OK;
}

/* The outcome's writes, inside the record transaction: exactly one of the record_* steps. */
static tl_status record_outcome(tl_token **out, long *wait_s, tl_store *s, const claim *cl, tl__answer *a, int64_t now,
                                tl_error *err)
{
  tl_status rc;
  if ((rc = check_child_is_new(s, a, err)) != TL_OK)
    return rc;
  switch (a->kind) {
  case TL__A_ROTATED:
  case TL__A_SAME_RT: return record_rotated(out, s, cl, a, now, err);
  case TL__A_REJECTED: return record_rejected(s, cl, a, now, err);
  case TL__A_TRANSIENT:
  case TL__A_CONFIG:
  case TL__A_NOT_SENT: return record_retryable(s, cl, a, now, wait_s, err);
  case TL__A_UNKNOWN: return record_unknown(s, cl, a, err);
  }
  return tl__err(err, TL_ERROR, 0, "record: answer of unknown kind %d", (int)a->kind);
}

/* BEGIN IMMEDIATE for the record; never gives up early: a long busy wait is better than an unknown. */
static tl_status record_begin(tl_store *s, tl_error *err)
{
  int busy = s->busy_ms;
  s->busy_ms = busy > 60000 ? busy : 60000;
  tl_status rc = tl__tx_begin(s, "refresh record", err);
  s->busy_ms = busy;
  return rc;
}

/*
 * Records the outcome in one transaction. *recorded tells whether it
 * committed; the return value is then the outcome for the caller (TL_OK, or
 * rejected/transient/unknown with a message). Not recorded: the failure, and
 * the attempt stays in_flight (the caller keeps the answer in the rescue file).
 */
static tl_status record(tl_token **out, int *recorded, tl_store *s, const claim *cl, tl__answer *a, tl_error *err)
{
  tl_status rc;
  int64_t now = tl__now_ms();
  long wait_s = 0;
  tl_error msg = {0};
  *recorded = 0;
  if ((rc = record_begin(s, err)) != TL_OK)
    return rc;
  if ((rc = record_outcome(out, &wait_s, s, cl, a, now, err)) != TL_OK) {
    tl__tx_rollback(s);
    goto discard;
  }
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    goto discard;
  *recorded = 1;
  rc = outcome_message(s, cl, a, wait_s, &msg);
  if (rc != TL_OK && err && err->code == TL_OK)
    *err = msg;
  return rc;
discard:
  tl_token_free(*out);
  *out = NULL;
  return rc;
}

/* ---- rescue files --------------------------------------------------------- */

/*
 * A rotation the server made is never lost. While an RT is out, space for a
 * rescue file is reserved beside the ledger (<ledger>-rescue-<credential>-
 * <attempt>, O_EXCL|O_NOFOLLOW, 0600), so it can be written even on a full
 * disk. If the record transaction cannot commit, the parsed answer (with the
 * new tokens) goes there, fsynced; so does the raw answer of a 200 we could
 * not use. 'recover --rescue' records it and removes the file. A file never
 * written is released (unlinked) once the outcome is recorded.
 */
#define TL_RESCUE_RESERVE (96 * 1024)
#define TL_RESCUE_MAX     (4 * 1024 * 1024)

static char *rescue_name(const tl_store *s, int64_t cred, int64_t attempt)
{
  size_t n = strlen(s->path) + 64;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s-rescue-%lld-%lld", s->path, (long long)cred, (long long)attempt);
  return p;
}

static void fsync_dir_of(const char *path)
{
  char *copy = strdup(path);
  char *slash = copy ? strrchr(copy, '/') : NULL;
  if (slash) {
    *slash = '\0';
    int fd = open(*copy ? copy : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      fsync(fd);
      close(fd);
    }
  }
  free(copy);
}

/*
 * Space for a rescue file, reserved once per store (<ledger>-rescue-reserve-<pid>-<random>, 96 KiB) and kept
 * for the next refresh when unused, so a refresh pays nothing for it. Its owner holds an flock on it for as
 * long as it lives (the kernel drops it with the process); a reservation nobody holds, last written a minute ago or
 * more, is a dead process's and is removed when the next one is made. A pid says nothing across PID namespaces (a
 * containerised keep-fresh sharing the directory), a lock does.
 */
static void sweep_reservations(const tl_store *s)
{
  const char *slash = strrchr(s->path, '/');
  char *dir = slash ? strndup(s->path, (size_t)(slash - s->path)) : strdup(".");
  const char *base = slash ? slash + 1 : s->path;
  DIR *d = dir ? opendir(*dir ? dir : "/") : NULL;
  size_t bl = strlen(base);
  for (struct dirent *e; d && (e = readdir(d));) {
    if (strncmp(e->d_name, base, bl) != 0 || strncmp(e->d_name + bl, "-rescue-reserve-", 16) != 0)
      continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0)
      continue;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && st.st_mtime + 60 <= time(NULL) &&
        flock(fd, LOCK_EX | LOCK_NB) == 0)
      unlink(path); /* nobody holds it, and it is not one being made this moment */
    close(fd);
  }
  if (d)
    closedir(d);
  free(dir);
}

static void store_reserve(tl_store *s)
{
  if (s->rescue_fd >= 0)
    return;
  unsigned char rnd[6];
  if (tl__rand_bytes(rnd, sizeof rnd) != 1)
    return;
  size_t n = strlen(s->path) + 64;
  char *path = malloc(n);
  if (!path)
    return;
  snprintf(path, n, "%s-rescue-reserve-%ld-%02x%02x%02x%02x%02x%02x", s->path, s->actor.pid, rnd[0], rnd[1], rnd[2],
           rnd[3], rnd[4], rnd[5]);
  sweep_reservations(s);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && posix_fallocate(fd, 0, TL_RESCUE_RESERVE) == 0) {
    s->rescue_fd = fd;
    s->rescue_reserve = path;
    return;
  }
  if (fd >= 0) {
    close(fd);
    unlink(path);
  }
  free(path);
}

void tl__rescue_unreserve(tl_store *s)
{
  if (s->rescue_fd >= 0) {
    close(s->rescue_fd);
    unlink(s->rescue_reserve);
  }
  s->rescue_fd = -1;
  free(s->rescue_reserve);
  s->rescue_reserve = NULL;
}

/* Before the RT leaves: name the rescue file, and make sure space for it is reserved. */
static void rescue_reserve(tl_store *s, claim *cl)
{
  store_reserve(s);
  cl->rescue = rescue_name(s, cl->credential, cl->attempt);
}

static void rescue_release(claim *cl)
{
  free(cl->rescue);
  cl->rescue = NULL;
}

static const char *const kind_names[] = {"rotated", "same_rt",  "rejected", "transient",
                                         "config",  "not_sent", "unknown"};

/* Writes the answer into the rescue file (reserved, or created now). TL_OK once it is durable. */
static tl_status rescue_write(tl_store *s, claim *cl, const tl__answer *a, tl_error *err)
{
  tl_status rc = TL_OK;
  char *text = NULL, *b64 = NULL;
  json_t *o =
      json_pack("{s:i, s:I, s:I, s:I, s:s, s:I, s:I, s:s, s:I, s:s?, s:s?, s:I, s:b, s:b, s:I}", "tokenledger_rescue",
                1, "credential", (json_int_t)cl->credential, "attempt", (json_int_t)cl->attempt, "rt",
                (json_int_t)cl->rt, "fingerprint", cl->fp, "generation", (json_int_t)cl->generation, "saved_at",
                (json_int_t)tl__now_ms(), "kind", kind_names[a->kind], "http_status", (json_int_t)a->status, "error",
                a->error, "error_description", a->desc, "expires_at", (json_int_t)a->expires_at, "expiry_assumed",
                a->expiry_assumed, "access_token_unusable", a->at_unusable, "retry_after", (json_int_t)a->retry_after);
  if (!o)
    return tl__oom(err);
  if (a->access_token && !a->at_unusable)
    json_object_set_new(o, "access_token", json_string(a->access_token));
  if (a->refresh_token)
    json_object_set_new(o, "refresh_token", json_string(a->refresh_token));
  if (a->extra)
    json_object_set(o, "extra", a->extra);
  if (a->raw && a->raw_len <= TL_RESCUE_MAX / 2 && (b64 = malloc(4 * (a->raw_len / 3 + 1) + 1))) {
    tl__b64_encode((unsigned char *)b64, (const unsigned char *)a->raw, (int)a->raw_len);
    json_object_set_new(o, "raw_answer_base64", json_string(b64));
  }
  text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
  /* Jansson copied the tokens into the object: burn them before it is freed. */
  const char *sec[] = {"access_token", "refresh_token", "raw_answer_base64"};
  for (size_t i = 0; i < 3; i++) {
    json_t *v = json_object_get(o, sec[i]);
    if (json_is_string(v))
      tl_burn((void *)(uintptr_t)json_string_value(v), json_string_length(v));
  }
  json_decref(o);
  if (!text) {
    rc = tl__oom(err);
    goto done;
  }
  size_t len = strlen(text);
  int fd = -1, reserved = s->rescue_fd >= 0 && len <= TL_RESCUE_RESERVE;
  if (!cl->rescue) {
    rc = tl__oom(err);
    goto done;
  }
again:
  /* The reserved space if the answer fits (it always does but for a huge raw answer), else a new file. */
  fd =
      reserved ? s->rescue_fd : open(cl->rescue, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) {
    rc = tl__err(err, TL_EIO, errno, "cannot create the rescue file %s: %s", cl->rescue, strerror(errno));
    goto done;
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = pwrite(fd, text + off, len - off, (off_t)off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      rc = tl__err(err, TL_EIO, errno, "cannot write the rescue file %s: %s", cl->rescue, strerror(errno));
      break;
    }
    off += (size_t)w;
  }
  if (rc == TL_OK && (ftruncate(fd, (off_t)len) != 0 || fsync(fd) != 0))
    rc = tl__err(err, TL_EIO, errno, "cannot sync the rescue file %s: %s", cl->rescue, strerror(errno));
  if (rc == TL_OK && reserved && rename(s->rescue_reserve, cl->rescue) != 0)
    rc = tl__err(err, TL_EIO, errno, "cannot name the rescue file %s: %s", cl->rescue, strerror(errno));
  if (reserved) {
    close(fd); /* written (and renamed) or not, this reservation is spent */
    if (rc != TL_OK)
      unlink(s->rescue_reserve);
    s->rescue_fd = -1;
    free(s->rescue_reserve);
    s->rescue_reserve = NULL;
    if (rc != TL_OK) {
      /* The reservation was removed under us (or could not be written): a file of its own, if the disk lets us. */
      reserved = 0;
      rc = TL_OK;
      goto again;
    }
  } else {
    close(fd);
    if (rc != TL_OK)
      unlink(cl->rescue); /* an empty or partial file would read as an answer that is not there */
  }
  if (rc == TL_OK) {
    cl->rescued = 1;
    fsync_dir_of(cl->rescue);
  }
done:
  if (text) {
    tl_burn(text, strlen(text));
    free(text);
  }
  if (b64) {
    tl_burn(b64, strlen(b64));
    free(b64);
  }
  return rc;
}

/* The refresh request's body, a form or JSON as the provider takes it; the RT goes in it unless the provider
 * takes it in a header. */
static char *form_body(const claim *cl)
{
  const char *keys[] = {"grant_type", "client_id", "refresh_token"};
  const char *vals[] = {"refresh_token", cl->client_id, cl->rt_header ? NULL : cl->secret};
  return cl->json_body ? tl__oauth_json(3, keys, vals) : tl__oauth_form(3, keys, vals);
}

/* Sends the claimed RT and turns whatever came back into an answer. */
static void present(tl_store *s, claim *cl, tl__answer *a)
{
  tl_http_response resp;
  char *body = form_body(cl);
  if (!body) {
    /* Nothing left the process: record not_sent. */
    memset(a, 0, sizeof *a);
    a->kind = TL__A_NOT_SENT;
    a->retry_after = -1;
    a->desc = strdup("out of memory building the request");
    return;
  }
  tl_http_request req = {.url = cl->token_url,
                         .body = body,
                         .rt_header = cl->rt_header,
                         .rt_value = cl->rt_header ? cl->secret : NULL,
                         .connect_timeout_ms = CONNECT_TIMEOUT_MS,
                         .timeout_ms = http_timeout(s),
                         .content_type = cl->json_body ? "application/json" : NULL};
  /* A stop signal waits (tl__refresh_protocol defers it): say so at once, or end a transfer that sent nothing. */
  tl__stop_watch watch = {s->stop_notice, s->stop_notice_ud, tl__now_ms() + req.timeout_ms, 0};
  tl__http_stop_watch(&watch);
  tl__oauth_post(&resp, s, &req);
  tl__http_stop_watch(NULL);
  tl_burn(body, strlen(body));
  free(body);
  tl__answer_parse(a, &resp, cl->secret);
  tl__http_response_clear(&resp);
}

/*
 * Presents the claimed RT and records the outcome; if the record cannot
 * commit (disk full, read-only file, a lock held past a minute), the answer
 * goes to the rescue file so the rotation is not lost. A 200 we could not use
 * is kept there too, as evidence.
 */
static tl_status present_and_record(tl_token **out, tl_store *s, claim *cl, tl__answer *a, tl_error *err)
{
  int recorded = 0;
  tl_error fail = {0}, why = {0};
  rescue_reserve(s, cl);
  if (s->rescue_fd < 0) {
    /* No room kept for the server's answer: if the record then failed, a rotation would be lost. */
    memset(a, 0, sizeof *a);
    a->kind = TL__A_NOT_SENT;
    a->retry_after = -1;
    a->desc = strdup("no room beside the ledger to keep the server's answer should its record fail (a 96 KiB "
                     "reservation could not be made: is the disk full?); not presented");
  } else {
    present(s, cl, a);
  }
  if (a->raw && rescue_write(s, cl, a, &why) != TL_OK)
    tl_error_clear(&why); /* evidence only: the outcome is recorded as unknown either way */
  tl_status rc = record(out, &recorded, s, cl, a, &fail);
  if (recorded) {
    rescue_release(cl); /* only an unused reservation: a written file stays */
  } else {
    if (s->coop && a->kind == TL__A_ROTATED)
      memcpy(s->coop_spent_fp, cl->fp, sizeof s->coop_spent_fp); /* Hermes' copies must not be presented */
    tl_status wrc = cl->rescued ? TL_OK : rescue_write(s, cl, a, &why);
    if (wrc == TL_OK)
      return tl__err(err, rc, fail.sys,
                     "credential %lld (%s): the server answered (%s) but the ledger could not record it: %s. Nothing "
                     "is lost: the answer is kept in %s (0600) until the ledger is writable again",
                     (long long)cl->credential, cl->provider, kind_names[a->kind], fail.message, cl->rescue);
    return tl__err(err, rc, fail.sys,
                   "credential %lld (%s): the server answered (%s) but the ledger could not record it (%s) nor keep "
                   "the answer (%s); its refresh token's outcome is unknown",
                   (long long)cl->credential, cl->provider, kind_names[a->kind], fail.message, why.message);
  }
  if (rc != TL_OK && err && err->code == TL_OK)
    *err = fail;
  return rc;
}

/*
 * The claim committed but its sync failed: other processes see the RT presented, yet the claim may not
 * survive a power loss, so the RT is not sent. The attempt is settled as not sent (RT current again);
 * if even that cannot be recorded, the attempt stays in flight and becomes unknown when it is reaped,
 * which never re-presents the RT without an operator's decision.
 */
static void claim_not_durable(tl_store *s, claim *cl)
{
  tl__answer a;
  memset(&a, 0, sizeof a);
  a.kind = TL__A_NOT_SENT;
  a.retry_after = -1;
  a.desc = strdup("not sent: the claim could not be made durable (the disk did not confirm a write)");
  tl_token *t = NULL;
  tl_error ignored = {0};
  int recorded = 0;
  record(&t, &recorded, s, cl, &a, &ignored);
  tl_token_free(t);
  tl__answer_clear(&a);
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
    /* From the claim's commit to the record's, a stop signal waits: the RT's fate must be on record. */
    sigset_t old;
    tl__signals_defer(&old);
    rc = claim_once(&res, &cl, out, &wait_for, s, cred, flags, retry_unknown, waited, ahead_ms, err);
    if (rc != TL_OK && cl.attempt && s->sync_failed)
      claim_not_durable(s, &cl); /* committed, but not known to be durable: the RT must not leave */
    if (rc != TL_OK || res == SATISFIED) {
      tl__signals_restore(&old);
      claim_clear(&cl);
      return rc;
    }
    if (res == WAIT) {
      tl__signals_restore(&old);
      claim_clear(&cl);
      if (tl__now_ms() > deadline)
        return tl__err(err, TL_EBUSY, 0, "credential %lld: another process has been refreshing it for too long",
                       (long long)cred);
      if ((rc = wait_attempt(s, wait_for, err)) != TL_OK)
        return rc;
      waited = 1;
      continue;
    }
    tl__answer a;
    rc = present_and_record(out, s, &cl, &a, err);
    tl__signals_restore(&old);
    /* One automatic re-presentation, only inside a declared grace window. */
    if (rc == TL_EUNKNOWN && !retry_unknown && cl.grace_ms > 0 && tl__now_ms() - cl.started < cl.grace_ms && !a.raw) {
      tl_error again = {0};
      claim_clear(&cl);
      tl__answer_clear(&a);
      rc = tl__refresh_protocol(out, s, cred, flags, 1, ahead_ms, &again);
      if (err && rc != TL_OK) {
        tl_error_clear(err);
        *err = again;
      }
      return rc;
    }
    claim_clear(&cl);
    tl__answer_clear(&a);
    return rc;
  }
}

tl_status tl_refresh(tl_token **out, tl_store *s, int64_t cred, unsigned flags, tl_error *err)
{
  tl_error_clear(err);
  tl_token *t = NULL;
  if (!s || cred <= 0)
    return tl__err(err, TL_EINVAL, 0, "refresh: no credential");
  tl_status rc;
  if (!tl__agent_refresh(&rc, &t, s, cred, flags, err)) /* serve's agent, when one runs; else the work here */
    rc = tl__coop_refresh(&t, s, cred, flags, 0, 0, err);
  if (out)
    *out = t;
  else
    tl_token_free(t);
  return rc;
}

/* ---- recover ------------------------------------------------------------ */

/*
 * The rescue files of a credential, oldest attempt first: names
 * <ledger>-rescue-<cred>-<attempt> in the ledger's directory. A file that was
 * only reserved (all zero bytes) and whose attempt is settled is a leftover
 * of a process that died: it is removed on the way.
 */
typedef struct rescue_file {
  char *path;
  int64_t attempt;
  json_t *doc; /* NULL: only a reservation */
} rescue_file;

/* Frees a rescue file's document, its tokens burned first. */
static void rescue_doc_free(json_t *doc)
{
  static const char *const secrets[] = {"refresh_token", "access_token"};
  for (size_t k = 0; doc && k < 2; k++) {
    json_t *v = json_object_get(doc, secrets[k]);
    if (json_is_string(v))
      tl_burn((void *)(uintptr_t)json_string_value(v), json_string_length(v));
  }
  json_decref(doc);
}

static void rescue_files_free(rescue_file *f, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free(f[i].path);
    rescue_doc_free(f[i].doc);
  }
  free(f);
}

/* Reads one rescue file, refusing what is not ours: regular, owned by us, 0600, no symlink, bounded. */
static tl_status rescue_load(json_t **out, const char *path, tl_error *err)
{
  tl_status rc = TL_OK;
  char *buf = NULL;
  *out = NULL;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return tl__err(err, errno == ELOOP ? TL_EINSECURE : TL_EIO, errno, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) ||
      st.st_size > TL_RESCUE_MAX) {
    rc = tl__err(err, TL_EINSECURE, 0, "%s: not a regular 0600 file of yours of at most %d bytes; not reading it", path,
                 TL_RESCUE_MAX);
    goto done;
  }
  size_t len = (size_t)st.st_size, got = 0;
  if (!(buf = malloc(len + 1))) {
    rc = tl__oom(err);
    goto done;
  }
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  size_t used = 0;
  for (size_t i = 0; i < got; i++)
    used |= buf[i] != 0;
  if (!used)
    goto done; /* a reservation that was never written */
  json_error_t je;
  if (!(*out = json_loadb(buf, got, JSON_REJECT_DUPLICATES, &je)) || !json_is_object(*out) ||
      json_integer_value(json_object_get(*out, "tokenledger_rescue")) != 1) {
    json_decref(*out);
    *out = NULL;
    rc = tl__err(err, TL_EINVAL, 0, "%s: not a tokenledger rescue file (line %d)", path, je.line);
  }
done:
  if (buf) {
    tl_burn(buf, len + 1);
    free(buf);
  }
  close(fd);
  return rc;
}

static int attempt_order(const void *x, const void *y)
{
  const rescue_file *a = x, *b = y;
  return (a->attempt > b->attempt) - (a->attempt < b->attempt);
}

static tl_status rescue_files(rescue_file **out, size_t *n, tl_store *s, int64_t cred, tl_error *err)
{
  tl_status rc = TL_OK;
  char prefix[128];
  const char *slash = strrchr(s->path, '/');
  char *dir = slash ? strndup(s->path, (size_t)(slash - s->path)) : strdup(".");
  const char *base = slash ? slash + 1 : s->path;
  rescue_file *f = NULL;
  size_t cap = 0;
  *out = NULL;
  *n = 0;
  snprintf(prefix, sizeof prefix, "-rescue-%lld-", (long long)cred);
  DIR *d = dir ? opendir(*dir ? dir : "/") : NULL;
  if (!d) {
    rc = dir ? tl__err(err, TL_EIO, errno, "%s: %s", dir, strerror(errno)) : tl__oom(err);
    goto done;
  }
  for (struct dirent *e; (e = readdir(d));) {
    size_t bl = strlen(base), pl = strlen(prefix);
    const char *num = e->d_name + bl + pl;
    if (strncmp(e->d_name, base, bl) != 0 || strncmp(e->d_name + bl, prefix, pl) != 0 || !*num ||
        strspn(num, "0123456789") != strlen(num) || strlen(num) > 18)
      continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 4;
      rescue_file *nf = realloc(f, cap * sizeof *nf);
      if (!nf) {
        rc = tl__oom(err);
        goto done;
      }
      f = nf;
    }
    memset(&f[*n], 0, sizeof f[*n]);
    f[*n].attempt = strtoll(num, NULL, 10);
    size_t plen = strlen(s->path) + strlen(prefix) + strlen(num) + 1;
    if (!(f[*n].path = malloc(plen))) {
      rc = tl__oom(err);
      goto done;
    }
    snprintf(f[*n].path, plen, "%s%s%s", s->path, prefix, num);
    (*n)++;
    if ((rc = rescue_load(&f[*n - 1].doc, f[*n - 1].path, err)) != TL_OK)
      goto done;
  }
  if (*n)
    qsort(f, *n, sizeof *f, attempt_order);
done:
  if (d)
    closedir(d);
  free(dir);
  if (rc != TL_OK) {
    rescue_files_free(f, *n);
    f = NULL;
    *n = 0;
  }
  *out = f;
  return rc;
}

static void rescue_remove(const char *path)
{
  unlink(path);
  fsync_dir_of(path);
}

/* The answer a rescue file holds, validated as if it had just come from the server. */
static tl_status rescue_answer(tl__answer *a, json_t *doc, const char *path, tl_error *err)
{
  memset(a, 0, sizeof *a);
  const char *kind = json_string_value(json_object_get(doc, "kind"));
  int k = -1;
  for (int i = 0; kind && i < (int)(sizeof kind_names / sizeof *kind_names); i++)
    if (strcmp(kind, kind_names[i]) == 0)
      k = i;
  json_t *at = json_object_get(doc, "access_token"), *rt = json_object_get(doc, "refresh_token");
  int64_t exp = 0, status = 0, retry = -1;
  json_t *ra = json_object_get(doc, "retry_after");
  if (k < 0 || tl__num_i64(&exp, json_object_get(doc, "expires_at"), 0, TL_MS_MAX) ||
      tl__num_i64(&status, json_object_get(doc, "http_status"), 0, 599) || (ra && tl__num_i64(&retry, ra, -1, 86400)) ||
      (at && (!json_is_string(at) || !tl__token_valid(json_string_value(at), json_string_length(at)))) ||
      (rt && (!json_is_string(rt) || !tl__token_valid(json_string_value(rt), json_string_length(rt)))) ||
      (k == TL__A_ROTATED && !rt) || ((k == TL__A_ROTATED || k == TL__A_SAME_RT) && !exp))
    return tl__err(err, TL_EINVAL, 0, "%s: the rescued answer is incomplete or malformed; it stays for inspection",
                   path);
  a->kind = (tl__answer_kind)k;
  a->status = (long)status;
  a->retry_after = (long)retry;
  a->expires_at = exp;
  a->expiry_assumed = json_is_true(json_object_get(doc, "expiry_assumed"));
  a->at_unusable = !at;
  const char *e = json_string_value(json_object_get(doc, "error")),
             *d = json_string_value(json_object_get(doc, "error_description"));
  a->error = e ? strdup(e) : NULL;
  a->desc = d ? strdup(d) : NULL;
  a->access_token = at ? strdup(json_string_value(at)) : NULL;
  a->refresh_token = rt ? strdup(json_string_value(rt)) : NULL;
  json_t *x = json_object_get(doc, "extra");
  a->extra = json_is_object(x) ? tl__answer_extra(x) : NULL; /* a file is input: the server's rule */
  if ((at && !a->access_token) || (rt && !a->refresh_token)) {
    tl__answer_clear(a);
    return tl__oom(err);
  }
  return TL_OK;
}

/* The claim a rescued answer belongs to, read back from the ledger; TL_EEXISTS if already settled otherwise. */
static tl_status rescue_claim(claim *cl, tl_store *s, int64_t cred, int64_t attempt, json_t *doc, const char *path,
                              tl_error *err)
{
  static const char sql[] =
      "SELECT a.outcome, t.id, t.fingerprint, t.generation, coalesce(t.family_id, t.id), t.state, c.provider, c.label, "
      "t.secret FROM refresh_attempt a JOIN refresh_token t ON t.id = a.rt_id JOIN credential c ON c.id = "
      "a.credential_id WHERE a.id = :att AND a.credential_id = :cred";
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":att", attempt), TL_INT(":cred", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "recover", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return tl__err(err, TL_EINVAL, 0, "%s: attempt %lld of credential %lld is not in the ledger", path,
                   (long long)attempt, (long long)cred);
  }
  char outcome[16];
  snprintf(outcome, sizeof outcome, "%s", (const char *)sqlite3_column_text(st, 0));
  cl->credential = cred;
  cl->attempt = attempt;
  cl->rt = sqlite3_column_int64(st, 1);
  snprintf(cl->fp, sizeof cl->fp, "%s", (const char *)sqlite3_column_text(st, 2));
  cl->generation = sqlite3_column_int64(st, 3);
  cl->family = sqlite3_column_int64(st, 4);
  cl->provider = tl__col_dup(st, 6);
  cl->label = tl__col_dup(st, 7);
  cl->secret = tl__col_dup(st, 8);
  cl->from_rescue = 1;
  sqlite3_reset(st);
  const char *fp = json_string_value(json_object_get(doc, "fingerprint"));
  if (!cl->provider)
    return tl__oom(err);
  if (!fp || strcmp(fp, cl->fp) != 0 || json_integer_value(json_object_get(doc, "rt")) != cl->rt)
    return tl__err(err, TL_EINVAL, 0, "%s: the rescued answer names another refresh token than attempt %lld presented",
                   path, (long long)attempt);
  if (strcmp(outcome, "in_flight") == 0)
    return tl__err(err, TL_EBUSY, 0,
                   "attempt %lld of credential %lld is still in flight in a live process; try again when it has "
                   "finished",
                   (long long)attempt, (long long)cred);
  if (strcmp(outcome, "unknown") != 0)
    return tl__err(err, TL_EEXISTS, 0, "attempt %lld is already settled (%s)", (long long)attempt, outcome);
  return TL_OK;
}

/*
 * A rescue file whose attempt the ledger does not have (the ledger was restored from a copy taken before it,
 * or lost its last commits), while the refresh token the file names is still open in the ledger: the file is
 * the later truth. The attempt is put back as `unknown` (the token `unknown`, the credential `uncertain`,
 * audited `attempt_restored`), exactly what the lost claim and a lost answer would have left, so the answer
 * can be recorded on it. *attempt: the attempt to record on (0: the file is not such a case).
 */
static tl_status restore_lost_attempt(int64_t *attempt, tl_store *s, int64_t cred, json_t *doc, const char *path,
                                      tl_error *err)
{
  static const char rt_sql[] = "SELECT count(*) FROM refresh_token WHERE id = :rt AND credential_id = :cred AND "
                               "fingerprint = :fp AND (state = 'current' OR state = 'presented')";
  static const char busy_sql[] =
      "SELECT count(*) FROM refresh_attempt WHERE credential_id = :cred AND outcome = 'in_flight'";
  static const char ins_sql[] =
      "INSERT INTO refresh_attempt (credential_id, rt_id, owner_host, owner_boot, owner_pid, owner_start, "
      "owner_profile, owner_command, started_at, lease_until, finished_at, outcome, error_description) VALUES "
      "(:cred, :rt, :host, :boot, :pid, :start, :profile, :command, :saved, :saved, :now, 'unknown', :why)";
  static const char rt_unknown_sql[] = "UPDATE refresh_token SET state = 'unknown', retired_at = :now WHERE id = :rt";
  static const char uncertain_sql[] =
      "UPDATE credential SET status = 'uncertain', status_reason = :why, updated_at = :now WHERE id = :cred";
  static const char why[] = "restored from a rescue file: the ledger had lost this presentation";
  const char *fp = json_string_value(json_object_get(doc, "fingerprint"));
  int64_t rt = 0, saved = 0, open_rt = 0, busy = 0, now = tl__now_ms();
  tl_status rc;
  *attempt = 0;
  if (!fp || tl__num_i64(&rt, json_object_get(doc, "rt"), 1, INT64_MAX) ||
      tl__num_i64(&saved, json_object_get(doc, "saved_at"), 0, TL_MS_MAX))
    return TL_OK;
  if ((rc = tl__tx_begin(s, "recover", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  int found = 0;
  if ((rc = tl__prepare(&st, s, rt_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":rt", rt), TL_INT(":cred", cred), TL_TEXT(":fp", fp))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "recover", err)) != TL_OK)
    goto fail;
  open_rt = found ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if ((rc = tl__prepare(&st, s, busy_sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "recover", err)) != TL_OK)
    goto fail;
  busy = found ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (!open_rt || busy) {
    tl__tx_rollback(s);
    return TL_OK;
  }
  if ((rc =
           TL_RUN(s, ins_sql, "recover", err, TL_INT(":cred", cred), TL_INT(":rt", rt), TL_TEXT(":host", s->actor.host),
                  TL_TEXT(":boot", s->actor.boot), TL_INT(":pid", s->actor.pid), TL_INT(":start", s->actor.start),
                  TL_TEXT(":profile", s->actor.profile), TL_TEXT(":command", s->actor.command), TL_INT(":saved", saved),
                  TL_INT(":now", now), TL_TEXT(":why", why))) != TL_OK)
    goto fail;
  int64_t att = sqlite3_last_insert_rowid(s->db);
  if ((rc = TL_RUN(s, rt_unknown_sql, "recover", err, TL_INT(":now", now), TL_INT(":rt", rt))) != TL_OK ||
      (rc = TL_RUN(s, uncertain_sql, "recover", err, TL_TEXT(":why", why), TL_INT(":now", now),
                   TL_INT(":cred", cred))) != TL_OK)
    goto fail;
  tl__ids ids = {.credential = cred, .rt = rt};
  if ((rc = tl__audit(s, "attempt_restored", &ids,
                      json_pack("{s:s, s:I, s:I}", "file", path, "attempt_in_file",
                                (json_int_t)json_integer_value(json_object_get(doc, "attempt")), "attempt",
                                (json_int_t)att),
                      err)) != TL_OK ||
      (rc = tl__tx_commit(s, err)) != TL_OK)
    goto fail;
  *attempt = att;
  return TL_OK;
fail:
  tl__tx_rollback(s);
  return rc;
}

/* recover --rescue: records what a rescue file kept, exactly as the interrupted record would have. */
static tl_status recover_rescue(tl_token **out, tl_store *s, int64_t cred, tl_error *err)
{
  rescue_file *f = NULL;
  size_t n = 0, applied = 0;
  tl_status rc = rescue_files(&f, &n, s, cred, err), result = TL_OK;
  for (size_t i = 0; rc == TL_OK && i < n; i++) {
    claim cl;
    memset(&cl, 0, sizeof cl);
    tl__answer a;
    memset(&a, 0, sizeof a);
    tl_error why = {0};
    if (!f[i].doc) {
      /* Only a reservation: whatever happened to that attempt is on record (or it is still in flight). */
      json_t *none = json_object();
      rc = rescue_claim(&cl, s, cred, f[i].attempt, none, f[i].path, &why);
      json_decref(none);
      claim_clear(&cl);
      if (rc == TL_EEXISTS || rc == TL_EINVAL || rc == TL_OK)
        rescue_remove(f[i].path); /* settled, or unknown without an answer: nothing to take back */
      rc = rc == TL_ENOMEM ? rc : TL_OK;
      continue;
    }
    rc = rescue_claim(&cl, s, cred, f[i].attempt, f[i].doc, f[i].path, &why);
    if (rc == TL_EINVAL) {
      /* The attempt is not in the ledger (or is another): lost with a restored or damaged ledger? */
      int64_t restored = 0;
      tl_error lost = {0};
      if ((rc = restore_lost_attempt(&restored, s, cred, f[i].doc, f[i].path, &lost)) != TL_OK)
        why = lost;
      else if (restored) {
        claim_clear(&cl);
        memset(&cl, 0, sizeof cl);
        tl_error_clear(&why);
        rc = rescue_claim(&cl, s, cred, restored, f[i].doc, f[i].path, &why);
      } else
        rc = TL_EINVAL;
    }
    if (rc == TL_EEXISTS) {
      rescue_remove(f[i].path); /* recorded meanwhile: the file is a stale copy */
      claim_clear(&cl);
      rc = TL_OK;
      continue;
    }
    if (rc == TL_OK && (rc = rescue_answer(&a, f[i].doc, f[i].path, &why)) == TL_OK && a.kind == TL__A_UNKNOWN)
      rc = tl__err(&why, TL_EREAUTH, 0,
                   "%s holds the server's answer to attempt %lld, but its new refresh token cannot be used (%s); the "
                   "grant is lost and the credential needs a new login; the file stays for inspection",
                   f[i].path, (long long)f[i].attempt, a.desc ? a.desc : "unusable answer");
    if (rc == TL_OK) {
      int recorded = 0;
      tl_token *t = NULL;
      result = record(&t, &recorded, s, &cl, &a, &why);
      if (recorded) {
        rescue_remove(f[i].path);
        applied++;
        if (out && t) {
          tl_token_free(*out);
          *out = t;
          t = NULL;
        }
      } else {
        rc = result;
      }
      tl_token_free(t);
    }
    claim_clear(&cl);
    tl__answer_clear(&a);
    if (rc != TL_OK && err && err->code == TL_OK)
      *err = why;
    else if (rc == TL_OK && result != TL_OK && err && err->code == TL_OK)
      *err = why;
  }
  rescue_files_free(f, n);
  if (rc != TL_OK)
    return rc;
  if (!applied)
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld has no rescue file with an answer to take back",
                   (long long)cred);
  return result;
}

/*
 * 1 if a rescue file of cred holds a server's answer (usable: with a token to take back), to the
 * refresh token with fingerprint fp if fp is given; -1 if a file named as one of cred's rescue files
 * cannot be read as one (why says which and why): it may hold an answer, so the caller assumes the worst.
 */
static int rescue_holds(tl_store *s, int64_t cred, const char *fp, int usable, tl_error *why)
{
  rescue_file *f = NULL;
  size_t n = 0;
  int holds = 0;
  if (rescue_files(&f, &n, s, cred, why) != TL_OK)
    return -1;
  for (size_t i = 0; i < n; i++) {
    const char *kind = f[i].doc ? json_string_value(json_object_get(f[i].doc, "kind")) : NULL;
    const char *named = f[i].doc ? json_string_value(json_object_get(f[i].doc, "fingerprint")) : NULL;
    int answered = f[i].doc && !(kind && strcmp(kind, "not_sent") == 0);
    int live = kind && (strcmp(kind, "rotated") == 0 || strcmp(kind, "same_rt") == 0);
    holds |= (usable ? live : answered) && (!fp || (named && strcmp(named, fp) == 0));
  }
  rescue_files_free(f, n);
  return holds;
}

tl_status tl__rescue_scan(int64_t *pending, int64_t *first, tl_error *bad, tl_store *s)
{
  const char *slash = strrchr(s->path, '/');
  char *dir = slash ? strndup(s->path, (size_t)(slash - s->path)) : strdup(".");
  const char *base = slash ? slash + 1 : s->path;
  size_t bl = strlen(base);
  DIR *d = dir ? opendir(*dir ? dir : "/") : NULL;
  *pending = *first = 0;
  if (!d) {
    tl_status rc = dir ? tl__err(bad, TL_EIO, errno, "%s: %s", dir, strerror(errno)) : tl__oom(bad);
    free(dir);
    return rc;
  }
  for (struct dirent *e; (e = readdir(d));) {
    const char *rest = e->d_name + bl, *num = rest + 8;
    if (strncmp(e->d_name, base, bl) != 0 || strncmp(rest, "-rescue-", 8) != 0 || !(*num >= '0' && *num <= '9'))
      continue; /* reservations (-rescue-reserve-...) are nobody's answer */
    char path[PATH_MAX + 260];
    snprintf(path, sizeof path, "%s/%s", *dir ? dir : "", e->d_name);
    json_t *doc = NULL;
    tl_error why = {0};
    if (rescue_load(&doc, path, &why) != TL_OK) {
      if (bad && bad->code == TL_OK)
        *bad = why;
      continue;
    }
    const char *kind = doc ? json_string_value(json_object_get(doc, "kind")) : NULL;
    if (doc && !(kind && strcmp(kind, "not_sent") == 0) && !(*pending)++)
      *first = strtoll(num, NULL, 10);
    rescue_doc_free(doc);
  }
  closedir(d);
  free(dir);
  return TL_OK;
}

tl_status tl__rescue_refuse(tl_store *s, int64_t cred, const char *what, tl_error *err)
{
  tl_error why = {0};
  int held = rescue_holds(s, cred, NULL, 1, &why);
  if (held < 0)
    return tl__err(err, TL_EREUSE, 0,
                   "credential %lld: %s: a file beside the ledger is named as its rescue file but cannot be read as "
                   "a rescue file (%s); it may hold the server's answer, so nothing gives the login up until that "
                   "file is inspected and moved away",
                   (long long)cred, what, why.message);
  if (held)
    return tl__err(err, TL_EREUSE, 0,
                   "credential %lld: %s: a rescue file beside the ledger holds the server's answer to its last "
                   "presentation with a usable refresh token; the login is not given up while that answer waits to "
                   "be taken back",
                   (long long)cred, what);
  return TL_OK;
}

/* 1 if a rescue file holds a server's answer for cred: re-presenting its RT would be reuse. */
static int rescue_pending(tl_store *s, int64_t cred)
{
  tl_error ignore = {0};
  return rescue_holds(s, cred, NULL, 0, &ignore) != 0;
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
  if (!s || cred <= 0 || (action != TL_RECOVER_RETRY && action != TL_RECOVER_MARK_DEAD && action != TL_RECOVER_RESCUE))
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
  if (action == TL_RECOVER_RESCUE) {
    /* The rescued rotation reaches Hermes' files at once: they still hold the token the server rotated. */
    if ((rc = recover_rescue(out, s, cred, err)) == TL_OK)
      rc = tl__sync_credential(s, cred, err);
    return rc;
  }
  if (strcmp(status, "uncertain") != 0)
    return tl__err(err, TL_EINVAL, 0, "credential %lld is %s: there is no unknown outcome to recover from",
                   (long long)cred, status);
  if (action == TL_RECOVER_RETRY) {
    if (rescue_pending(s, cred))
      return tl__err(err, TL_EREUSE, 0,
                     "credential %lld: a rescue file beside the ledger holds the server's answer to its last "
                     "presentation, so presenting the same refresh token again would be reuse; its answer must be "
                     "taken back instead",
                     (long long)cred);
    tl_token *t = NULL;
    rc = tl__coop_refresh(&t, s, cred, TL_REFRESH_FORCE, 1, 0, err);
    if (out)
      *out = t;
    else
      tl_token_free(t);
    return rc;
  }
  /* A rescued answer holds a live grant: giving the login up would throw it away. */
  if ((rc = tl__rescue_refuse(s, cred, "not given up", err)) != TL_OK ||
      (rc = tl__tx_begin(s, "recover", err)) != TL_OK)
    return rc;
  int64_t now = tl__now_ms();
  if ((rc = TL_RUN(s, dead_rt_sql, "recover", err, TL_INT(":now", now), TL_INT(":cred", cred))) != TL_OK ||
      (rc = TL_RUN(s, dead_cred_sql, "recover", err, TL_INT(":now", now), TL_INT(":cred", cred))) != TL_OK)
    goto fail;
  tl__ids ids = {.credential = cred};
  if ((rc = tl__audit(s, "recover_mark_dead", &ids, NULL, err)) != TL_OK)
    goto fail;
  if ((rc = tl__tx_commit(s, err)) != TL_OK)
    return rc;
  return tl__sync_credential(s, cred, err); /* Hermes' files are quarantined as Hermes would */
fail:
  tl__tx_rollback(s);
  return rc;
}

tl_status tl_unknown_sent(tl_sent *out, tl_store *s, int64_t cred, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT c.status, (SELECT json_extract(e.detail, '$.request') FROM refresh_attempt a JOIN audit_event e ON "
      "e.credential_id = a.credential_id AND e.event = 'attempt_unknown' AND json_extract(e.detail, '$.attempt') = "
      "a.id WHERE a.credential_id = c.id AND a.outcome = 'unknown' ORDER BY a.id DESC, e.id DESC LIMIT 1) "
      "FROM credential c WHERE c.id = :id";
  if (!out || !s || cred <= 0)
    return tl__err(err, TL_EINVAL, 0, "unknown outcome: a credential is required");
  *out = TL_SENT_MAYBE;
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "unknown outcome", err)) != TL_OK)
    return rc;
  if (!found) {
    sqlite3_reset(st);
    return tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
  }
  int uncertain = strcmp((const char *)sqlite3_column_text(st, 0), "uncertain") == 0;
  const char *req = (const char *)sqlite3_column_text(st, 1);
  /* No word on record (a ledger from before this was recorded): assume the worst. */
  *out = !req                           ? TL_SENT_MAYBE
         : strcmp(req, "answered") == 0 ? TL_SENT_ANSWERED
         : strcmp(req, "not_sent") == 0 ? TL_SENT_NOTHING
                                        : TL_SENT_MAYBE;
  sqlite3_reset(st);
  if (!uncertain)
    return tl__err(err, TL_EINVAL, 0, "credential %lld has no unknown outcome to decide", (long long)cred);
  return TL_OK;
}
