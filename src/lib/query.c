/*
 * query.c - the read side: status, credentials, strategies, lineage, audit,
 * history, check-rt; the progress callback. Doctor, permission fixing and
 * compact, which may write, are maint.c's.
 *
 * Invariants: every report here is built from the forensic views or from
 * columns that hold no secret, so nothing a read command prints can leak a
 * token; nothing here writes. Messages and details say what was found, not
 * which command to run: the tool adds that advice (src/cli/hint.c).
 */
#define _GNU_SOURCE /* O_PATH */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * Status says what each entry would give now. An access token is "valid" only for an active grant: a
 * credential that needs a new login or whose last refresh has an unknown outcome says so instead, and an
 * API-key or borrowed entry (no lineage, nothing tokenledger refreshes) says what it is.
 */
/* ",id,id,": the profiles whose home file disagrees with their strict flag (a switch that stopped halfway). */
static tl_status unfinished_switches(char *out, size_t n, tl_store *s, tl_error *err)
{
  static const char sql[] = "SELECT id FROM profile WHERE home IS NOT NULL ORDER BY id";
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc;
  snprintf(out, n, ",");
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK)
    return rc;
  while ((rc = tl__step_row(&found, s, st, "profiles", err)) == TL_OK && found) {
    int agree = 1;
    int64_t id = sqlite3_column_int64(st, 0);
    if ((rc = tl__strict_files_agree(&agree, NULL, 0, s, id, -1, err)) != TL_OK)
      break;
    size_t l = strlen(out);
    if (!agree && l + 24 < n)
      snprintf(out + l, n - l, "%lld,", (long long)id);
  }
  sqlite3_reset(st);
  return rc;
}

tl_status tl_status_report(tl_report **out, tl_store *s, const char *profile, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT p.name AS profile, e.provider AS provider, e.entry_id AS entry, e.priority AS priority, "
      "e.source AS source, e.auth_type AS auth_type, "
      "CASE WHEN e.auth_type = 'api_key' THEN 'api_key' WHEN c.id IS NULL THEN 'borrowed' ELSE 'oauth' END AS kind, "
      "coalesce(e.label, c.label) AS label, e.credential_id AS credential, c.status AS credential_status, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', c.expires_at / 1000.0, 'unixepoch') AS access_expires, "
      "CASE WHEN e.auth_type = 'api_key' THEN 'api_key' WHEN c.id IS NULL THEN 'borrowed' "
      "WHEN c.status = 'needs_reauth' THEN 'needs_login' WHEN c.status = 'uncertain' THEN 'unknown_outcome' "
      "WHEN c.expires_at IS NULL THEN 'unknown' WHEN c.expires_at > :now THEN 'valid' ELSE 'expired' END "
      "AS access_token_state, "
      "CASE WHEN c.expires_at IS NOT NULL THEN (c.expires_at - :now) / 1000 END AS expires_in_s, "
      "t.generation AS rt_generation, t.state AS rt_state, substr(t.fingerprint, 1, 12) AS rt_fingerprint, "
      "e.last_status AS last_status, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', e.cooldown_until / 1000.0, 'unixepoch') AS cooldown_until, "
      "CASE WHEN e.cooldown_until > :now THEN strftime('%Y-%m-%dT%H:%M:%SZ', e.cooldown_until / 1000.0, "
      "'unixepoch') END AS cooling_until, "
      "e.request_count AS request_count, "
      "EXISTS (SELECT 1 FROM strict_profile sp WHERE sp.profile_id = p.id) AS strict, "
      "instr(:unfinished, ',' || p.id || ',') > 0 AS strict_unfinished, "
      "coalesce(ps.strategy, 'fill_first') AS strategy, "
      "CASE WHEN c.status <> 'active' THEN c.status_reason END AS reason "
      "FROM pool_entry e JOIN profile p ON p.id = e.profile_id "
      "LEFT JOIN credential c ON c.id = e.credential_id "
      "LEFT JOIN refresh_token t ON t.credential_id = c.id AND t.state IN ('current', 'presented', 'unknown') "
      "LEFT JOIN pool_strategy ps ON ps.profile_id = p.id AND ps.provider = e.provider "
      "WHERE :profile IS NULL OR p.name = :profile ORDER BY p.name, e.provider, e.priority, e.id";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "status: bad arguments");
  if (profile) {
    int64_t id;
    tl_status rc = tl__profile_id(&id, s, profile, err);
    if (rc != TL_OK)
      return rc;
  }
  sqlite3_stmt *st;
  tl_status rc;
  char unfinished[2048];
  if ((rc = unfinished_switches(unfinished, sizeof unfinished, s, err)) != TL_OK)
    return rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":profile", profile), TL_INT(":now", tl__now_ms()),
                    TL_TEXT(":unfinished", unfinished))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

/* Credentials with the profiles that use them; removed and orphaned ones too. */
tl_status tl_credential_list(tl_report **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT c.id AS credential, c.provider AS provider, c.label AS label, c.status AS status, "
      "(SELECT group_concat(name, ',') FROM (SELECT DISTINCT p.name AS name FROM pool_entry e JOIN profile p ON "
      "p.id = e.profile_id WHERE e.credential_id = c.id ORDER BY p.name)) AS profiles, "
      "(SELECT count(*) FROM pool_entry e WHERE e.credential_id = c.id) AS entries, "
      "t.generation AS rt_generation, t.state AS rt_state, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', c.expires_at / 1000.0, 'unixepoch') AS access_expires, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', c.created_at / 1000.0, 'unixepoch') AS created, "
      "CASE WHEN c.status <> 'active' THEN c.status_reason END AS reason "
      "FROM credential c LEFT JOIN refresh_token t ON t.id = (SELECT max(id) FROM refresh_token WHERE "
      "credential_id = c.id) ORDER BY c.id";
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "credential list: bad arguments");
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  return rc == TL_OK ? tl__report_from_stmt(out, s, st, err) : rc;
}

static const char *const strategy_names[] = {"fill_first", "round_robin", "least_used", "random"};

const char *tl_strategy_name(tl_strategy st)
{
  return (unsigned)st < sizeof strategy_names / sizeof *strategy_names ? strategy_names[st] : "fill_first";
}

tl_status tl_strategy_get(tl_strategy *out, tl_store *s, const char *profile, const char *provider, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "SELECT strategy FROM pool_strategy WHERE profile_id = :p AND provider = :prov";
  static const char prov_sql[] = "SELECT 1 FROM provider WHERE name = :prov";
  if (!out || !s || !profile || !provider)
    return tl__err(err, TL_EINVAL, 0, "pool strategy: profile and provider are required");
  int64_t pid = 0;
  sqlite3_stmt *st;
  int found = 0;
  tl_status rc = tl__profile_id(&pid, s, profile, err);
  if (rc != TL_OK)
    return rc;
  if ((rc = tl__prepare(&st, s, prov_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":prov", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "pool strategy", err)) != TL_OK)
    return rc;
  sqlite3_reset(st);
  if (!found)
    return tl__err(err, TL_ENOTFOUND, 0, "provider '%s' is not configured", provider);
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":p", pid), TL_TEXT(":prov", provider))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "pool strategy", err)) != TL_OK)
    return rc;
  *out = TL_FILL_FIRST;
  for (size_t i = 0; found && i < sizeof strategy_names / sizeof *strategy_names; i++)
    if (strcmp((const char *)sqlite3_column_text(st, 0), strategy_names[i]) == 0)
      *out = (tl_strategy)i;
  sqlite3_reset(st);
  return TL_OK;
}

static tl_status credential_exists(tl_store *s, int64_t cred, tl_error *err)
{
  static const char sql[] = "SELECT 1 FROM credential WHERE id = :id";
  if (cred == 0)
    return TL_OK;
  sqlite3_stmt *st;
  tl_status rc;
  int found = 0;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK ||
      (rc = tl__step_row(&found, s, st, "credential", err)) != TL_OK)
    return rc;
  sqlite3_reset(st);
  return found ? TL_OK : tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred);
}

/* A report over one statement with :cred (0 = all) and :limit (0 = all, if the SQL has it). */
static tl_status credential_report(tl_report **out, tl_store *s, const char *sql, int64_t cred, int64_t limit,
                                   const char *what, tl_error *err)
{
  if (!out || !s || limit < 0)
    return tl__err(err, TL_EINVAL, 0, "%s: bad arguments", what);
  tl_status rc = credential_exists(s, cred, err);
  if (rc != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK)
    return rc;
  if ((rc = TL_BIND(st, err, TL_INT(":cred", cred))) != TL_OK)
    return rc;
  if (strstr(sql, ":limit") && (rc = TL_BIND(st, err, TL_INT(":limit", limit ? limit : -1))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

tl_status tl_lineage_report(tl_report **out, tl_store *s, int64_t cred, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT l.credential, l.provider, l.label, l.family, l.generation, l.state, l.origin, l.fingerprint, l.issued, "
      "l.age_s, l.retired, l.presented_by, l.rt_id AS rt, t.parent_id AS parent, c.status AS credential_status "
      "FROM v_lineage l JOIN refresh_token t ON t.id = l.rt_id JOIN credential c ON c.id = l.credential "
      "WHERE :cred = 0 OR l.credential = :cred ORDER BY l.credential, l.rt_id";
  return credential_report(out, s, sql, cred, 0, "lineage", err);
}

/*
 * The audit log. `profile` is the profile the acting command ran for, else the one the event names (a
 * profile added, imported, switched). `summary` is the detail in words for a table: key=value pairs in
 * the detail's order, nested values as compact JSON, times (keys ending in _at, epoch milliseconds) as
 * ISO 8601, nulls left out; `detail` keeps the JSON object itself.
 */
tl_status tl_audit_report(tl_report **out, tl_store *s, int64_t cred, int64_t limit, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT * FROM (SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', at / 1000.0, 'unixepoch') AS at, event, "
      "actor_host || ':' || actor_pid AS actor, "
      "coalesce(actor_profile, CASE WHEN json_type(detail, '$.profile') = 'text' THEN json_extract(detail, "
      "'$.profile') END) AS profile, actor_command AS command, "
      "credential_id AS credential, rt_id, "
      "(SELECT group_concat(j.key || '=' || CASE WHEN j.type IN ('object', 'array') THEN json(j.value) "
      "WHEN j.type = 'integer' AND (j.key LIKE '%\\_at' ESCAPE '\\' OR j.key LIKE '%until') AND j.value > 100000000000 "
      "THEN strftime('%Y-%m-%dT%H:%M:%SZ', j.value / 1000.0, 'unixepoch') "
      "ELSE j.value END, ' ') FROM json_each(audit_event.detail) j WHERE j.type <> 'null') AS summary, "
      "detail FROM audit_event WHERE :cred = 0 OR credential_id = :cred "
      "ORDER BY id DESC LIMIT :limit) ORDER BY id";
  return credential_report(out, s, sql, cred, limit, "audit", err);
}

tl_status tl_history_report(tl_report **out, tl_store *s, int64_t cred, int64_t limit, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] = "SELECT * FROM v_refresh_history WHERE :cred = 0 OR credential = :cred LIMIT :limit";
  return credential_report(out, s, sql, cred, limit, "history", err);
}

tl_status tl_rt_check(tl_report **out, tl_store *s, const char *rt, tl_error *err)
{
  tl_error_clear(err);
  static const char sql[] =
      "SELECT CASE WHEN t.id IS NULL THEN 'unknown_to_ledger' WHEN t.state IN ('current', 'presented') THEN t.state "
      "WHEN t.state = 'unknown' THEN 'unknown_outcome' ELSE 'spent' END AS verdict, "
      "substr(:fp, 1, 12) AS fingerprint, t.credential_id AS credential, c.provider AS provider, c.label AS label, "
      "coalesce(t.family_id, t.id) AS family, t.generation AS generation, t.state AS state, t.origin AS origin, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', t.issued_at / 1000.0, 'unixepoch') AS issued, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', t.retired_at / 1000.0, 'unixepoch') AS spent, "
      "coalesce(a.owner_host || ':' || a.owner_pid, e.actor_host || ':' || e.actor_pid) AS presented_by, "
      "coalesce(a.owner_profile, e.actor_profile) AS presented_profile, "
      "coalesce(a.owner_command, e.actor_command) AS presented_command, "
      "strftime('%Y-%m-%dT%H:%M:%SZ', coalesce(a.started_at, e.at) / 1000.0, 'unixepoch') AS presented_at, "
      "a.outcome AS outcome, "
      "(SELECT max(generation) FROM refresh_token WHERE credential_id = t.credential_id) AS latest_generation, "
      "(SELECT group_concat(p.name, ',') FROM pool_entry e JOIN profile p ON p.id = e.profile_id "
      "WHERE e.credential_id = t.credential_id) AS profiles "
      "FROM (SELECT :fp AS fp) q LEFT JOIN refresh_token t ON t.fingerprint = q.fp "
      "LEFT JOIN credential c ON c.id = t.credential_id "
      "LEFT JOIN refresh_attempt a ON a.id = (SELECT max(id) FROM refresh_attempt WHERE rt_id = t.id) "
      /* compact removes old attempts; the audit log keeps every presentation */
      "LEFT JOIN audit_event e ON e.id = (SELECT max(id) FROM audit_event WHERE credential_id = t.credential_id "
      "AND rt_id = t.id AND event IN ('rt_presented', 'rt_represented'))";
  char fp[65];
  if (!out || !s || !rt || !*rt)
    return tl__err(err, TL_EINVAL, 0, "check-rt: no token given");
  tl_fingerprint(fp, rt, strlen(rt));
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_TEXT(":fp", fp))) != TL_OK)
    return rc;
  return tl__report_from_stmt(out, s, st, err);
}

/* ---- progress ----------------------------------------------------------- */

void tl_store_set_progress(tl_store *s, tl_progress_fn fn, void *ud)
{
  if (!s)
    return;
  s->progress = fn;
  s->progress_ud = ud;
  s->progress_at = 0;
}

void tl__progress(tl_store *s, const char *stage, int64_t done, int64_t total)
{
  if (!s || !s->progress)
    return;
  int64_t now = tl__now_ms();
  if (done != 0 && done != total && now - s->progress_at < 200)
    return;
  s->progress_at = now;
  s->progress(s->progress_ud, stage, done, total);
}
