/*
 * strict.c - strict mode's state: surrogate refresh tokens, the per-profile
 * strict flag, and the live state of `tokenledger serve` (its port file).
 *
 * A surrogate is what a strict profile's Hermes files hold in place of the
 * real refresh token. It is an opaque, printable string:
 *
 *     tlsurr1.<credential>.<profile>.<generation>.<nonce>.<mac>
 *
 * credential, profile and generation are decimal (no sign, no leading zero);
 * nonce is 12 bytes derived from them under the ledger's key (so the same
 * grant, profile and generation always give the same surrogate: every file
 * holding the grant agrees, and Hermes never merges one file's surrogate into
 * another), and mac the HMAC-SHA256, under the ledger's key
 * (table strict_key), of "tlsurr1.<credential>.<profile>.<generation>.<nonce>"
 * followed by "|" and the profile's creation time; both are unpadded base64url.
 * So a surrogate is checked from the string alone plus the ledger's key, and
 * it cannot be forged, re-targeted at another credential or profile, or
 * revived for a profile that was removed and re-added. It means nothing to the
 * real server: it is not a refresh token and never enters the lineage.
 *
 * Its generation is the credential's highest RT generation when it was issued
 * (cred_generation). Authentic is not enough for serve (tl__strict_admit): a
 * surrogate is good only while its profile is strict, and only for the
 * credential's current generation, or the one before for TL_SURROGATE_GRACE_MS
 * after the rotation (a Hermes that died between serve's answer and its write).
 * An older one, or one of a profile switched off, is a copy of an old file
 * presented again: refused, and serve audits it as surrogate_replayed. A file
 * holding an older one is rewritten with the current one by the next sync
 * (import and sync recognise any authentic surrogate with tl__strict_verify).
 *
 * The port file <ledger>-serve names the loopback address of the running
 * serve. serve holds an exclusive flock on it for its whole life; a reader
 * that can take a shared lock has found a stale file of a dead serve.
 *
 * Invariants: the key and every surrogate are burned after use and never
 * reach a message, an audit row or a log (fingerprint prefixes only); MACs
 * are compared in constant time; nothing here writes except the key (created
 * once, at migration time), the strict flag and its epoch, and the mark of a
 * switch off in progress (owned by the switch that set it). A switch on
 * writes the flag, then the files; a switch off writes its mark, then the
 * files in plain form, then removes the flag only if its mark is still its
 * own: at every step in between a refresh either holds the files' locks or
 * finds the epoch changed at its claim (tl__strict_skips_check).
 */
#include "internal.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEY_LEN     32
#define NONCE_LEN   12 /* 16 base64url characters */
#define NONCE_CHARS 16
#define MAC_CHARS   43 /* 32 bytes, unpadded base64url */
#define NUM_MAX     18 /* decimal digits of an id or generation */

int tl__strict_is_surrogate(const char *rt)
{
  return rt && strncmp(rt, TL_SURROGATE_PREFIX, sizeof TL_SURROGATE_PREFIX - 1) == 0;
}

/* ---- the key -------------------------------------------------------------- */

tl_status tl__strict_key_create(tl_store *s, tl_error *err)
{
  static const char sql[] =
      "INSERT INTO strict_key (id, secret, created_at) VALUES (1, :secret, :now) ON CONFLICT (id) DO NOTHING";
  unsigned char key[KEY_LEN];
  tl_status rc;
  assert(s->tx_where); /* inside the migration's (or the caller's) write transaction */
  if (tl__rand_bytes(key, sizeof key) != 1)
    return tl__err(err, TL_ERROR, 0, "strict mode: the system's random generator failed; no surrogate key created");
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":now", tl__now_ms()))) != TL_OK) {
    tl_burn(key, sizeof key);
    return rc;
  }
  sqlite3_bind_blob(st, sqlite3_bind_parameter_index(st, ":secret"), key, sizeof key, SQLITE_STATIC);
  rc = tl__step_done(s, st, "surrogate key", err);
  tl_burn(key, sizeof key);
  return rc;
}

/* Copies the ledger's key into key. TL_ENOTFOUND if the ledger has none. */
static tl_status key_load(unsigned char key[KEY_LEN], tl_store *s, tl_error *err)
{
  static const char sql[] = "SELECT secret FROM strict_key WHERE id = 1";
  sqlite3_stmt *st;
  tl_status rc = tl__prepare(&st, s, sql, err);
  if (rc != TL_OK)
    return rc;
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW && sqlite3_column_bytes(st, 0) == KEY_LEN)
    memcpy(key, sqlite3_column_blob(st, 0), KEY_LEN);
  else if (step == SQLITE_ROW || step == SQLITE_DONE)
    rc = tl__err(err, TL_ENOTFOUND, 0, "strict mode: this ledger has no surrogate key");
  else
    rc = tl__err_db(err, s, "surrogate key");
  sqlite3_reset(st);
  return rc;
}

/* A ledger that lost its key row (only by hand) gets a new one; old surrogates die with the old key. */
static tl_status key_ensure(unsigned char key[KEY_LEN], tl_store *s, tl_error *err)
{
  tl_error probe = {0};
  tl_status rc = key_load(key, s, &probe);
  if (rc != TL_ENOTFOUND) {
    if (rc != TL_OK)
      *err = probe;
    return rc;
  }
  if (s->tx_where)
    rc = tl__strict_key_create(s, err);
  else if ((rc = tl__tx_begin(s, "surrogate key", err)) == TL_OK) {
    if ((rc = tl__strict_key_create(s, err)) == TL_OK)
      rc = tl__tx_commit(s, err);
    else
      tl__tx_rollback(s);
  }
  return rc == TL_OK ? key_load(key, s, err) : rc;
}

/* ---- the string ---------------------------------------------------------- */

/* Unpadded base64url of n bytes into out (needs 4*ceil(n/3)+1). */
static void b64url(char *out, const unsigned char *in, size_t n)
{
  int len = tl__b64_encode((unsigned char *)out, in, (int)n);
  while (len > 0 && out[len - 1] == '=')
    len--;
  out[len] = '\0';
  for (int i = 0; i < len; i++)
    out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

/* The MAC of body (the surrogate up to and without ".<mac>") for a profile born at created. */
static tl_status mac_of(char out[MAC_CHARS + 2], const unsigned char key[KEY_LEN], const char *body, int64_t created,
                        tl_error *err)
{
  char msg[256];
  unsigned char md[32];
  int n = snprintf(msg, sizeof msg, "%s|%lld", body, (long long)created);
  if (n < 0 || (size_t)n >= sizeof msg)
    return tl__err(err, TL_EINVAL, 0, "surrogate: too long");
  if (tl__hmac_sha256(md, key, KEY_LEN, (const unsigned char *)msg, (size_t)n) != 1)
    return tl__err(err, TL_ERROR, 0, "surrogate: HMAC-SHA256 failed");
  b64url(out, md, sizeof md);
  tl_burn(md, sizeof md);
  return TL_OK;
}

/* A decimal field of 1-18 digits without a leading zero; advances *p past it and its '.'. */
static int take_num(int64_t *out, const char **p, int last)
{
  const char *q = *p;
  int64_t v = 0;
  size_t n = 0;
  while (q[n] >= '0' && q[n] <= '9') {
    if (n >= NUM_MAX)
      return 0;
    v = v * 10 + (q[n] - '0');
    n++;
  }
  if (n == 0 || (n > 1 && q[0] == '0') || (last ? q[n] != '\0' : q[n] != '.'))
    return 0;
  *out = v;
  *p = q + n + (last ? 0 : 1);
  return 1;
}

static int b64url_char(char c)
{
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Splits a surrogate; body_len is where ".<mac>" starts. 0 if the shape is wrong. */
static int parse(int64_t *cred, int64_t *profile, int64_t *gen, size_t *body_len, const char *rt)
{
  size_t len = strlen(rt);
  if (!tl__strict_is_surrogate(rt) || len > TL_SURROGATE_MAX || !tl__token_valid(rt, len))
    return 0;
  const char *p = rt + sizeof TL_SURROGATE_PREFIX - 1;
  if (!take_num(cred, &p, 0) || !take_num(profile, &p, 0) || !take_num(gen, &p, 0) || *cred <= 0 || *profile <= 0)
    return 0;
  for (int i = 0; i < NONCE_CHARS; i++)
    if (!b64url_char(p[i]))
      return 0;
  if (p[NONCE_CHARS] != '.')
    return 0;
  *body_len = (size_t)(p + NONCE_CHARS - rt);
  const char *mac = p + NONCE_CHARS + 1;
  for (int i = 0; i < MAC_CHARS; i++)
    if (!b64url_char(mac[i]))
      return 0;
  return mac[MAC_CHARS] == '\0';
}

/* The profile's creation time: part of every MAC, so a re-used rowid never revives a surrogate. */
static tl_status profile_born(int64_t *out, tl_store *s, int64_t profile, tl_error *err)
{
  static const char sql[] = "SELECT created_at FROM profile WHERE id = :id";
  sqlite3_stmt *st;
  tl_status prc;
  if ((prc = tl__prepare(&st, s, sql, err)) != TL_OK || (prc = TL_BIND(st, err, TL_INT(":id", profile))) != TL_OK)
    return prc;
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW)
    *out = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (step == SQLITE_ROW)
    return TL_OK;
  if (step != SQLITE_DONE)
    return tl__err_db(err, s, "surrogate profile");
  return tl__err(err, TL_ENOTFOUND, 0, "surrogate names profile %lld, which does not exist (removed?)",
                 (long long)profile);
}

/* 1 if the query (parameters :a and, if it has one, :b) returns a row, 0 if not, -1 on error. */
static int row_exists(tl_store *s, const char *sql, int64_t a, int64_t b)
{
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, sql, NULL) != TL_OK || TL_BIND(st, NULL, TL_INT(":a", a)) != TL_OK ||
      (sqlite3_bind_parameter_index(st, ":b") && TL_BIND(st, NULL, TL_INT(":b", b)) != TL_OK))
    return -1;
  int step = sqlite3_step(st);
  sqlite3_reset(st);
  return step == SQLITE_ROW ? 1 : step == SQLITE_DONE ? 0 : -1;
}

static const char uses_sql[] = "SELECT 1 FROM pool_entry WHERE profile_id = :a AND credential_id = :b";
static const char cred_sql[] = "SELECT 1 FROM credential WHERE id = :a";

/*
 * The credential's surrogate generation: its highest RT generation (what surrogates have always
 * named), and when the newest RT of that generation arrived (*since, ms): the rotation that made
 * it current. Two index lookups (refresh_token_credential), whatever the lineage's length: this is
 * on serve's answer path. A lineage that restarted at a new root (adopted from a non-strict file)
 * does not move it until the new lineage passes the old one's highest generation (README, Limits).
 */
static tl_status cred_generation(int64_t *gen, int64_t *since, tl_store *s, int64_t cred, tl_error *err)
{
  static const char sql[] =
      "SELECT m.g, (SELECT t.issued_at FROM refresh_token t WHERE t.credential_id = :c AND t.generation = m.g "
      "ORDER BY t.id DESC LIMIT 1) FROM (SELECT coalesce(max(generation), 0) AS g FROM refresh_token WHERE "
      "credential_id = :c) m";
  sqlite3_stmt *st;
  tl_status rc;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK || (rc = TL_BIND(st, err, TL_INT(":c", cred))) != TL_OK)
    return rc;
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW) {
    *gen = sqlite3_column_int64(st, 0);
    *since = sqlite3_column_int64(st, 1);
  }
  sqlite3_reset(st);
  return step == SQLITE_ROW ? TL_OK : tl__err_db(err, s, "surrogate generation");
}

tl_status tl__strict_surrogate(char **out, tl_store *s, int64_t credential, int64_t profile, tl_error *err)
{
  unsigned char key[KEY_LEN], nonce[NONCE_LEN];
  char nonce64[NONCE_CHARS + 4], mac[MAC_CHARS + 2], body[128];
  int64_t born = 0, gen = 0, since = 0;
  char *text = NULL;
  tl_status rc;
  if (!out || !s || credential <= 0 || profile <= 0)
    return tl__err(err, TL_EINVAL, 0, "surrogate: credential and profile are required");
  *out = NULL;
  if ((rc = profile_born(&born, s, profile, err)) != TL_OK)
    return rc;
  int uses = row_exists(s, uses_sql, profile, credential);
  if (uses != 1)
    return uses < 0 ? tl__err_db(err, s, "surrogate")
                    : tl__err(err, TL_ENOTFOUND, 0, "profile %lld does not use credential %lld; no surrogate issued",
                              (long long)profile, (long long)credential);
  if ((rc = cred_generation(&gen, &since, s, credential, err)) != TL_OK)
    return rc;
  if ((rc = key_ensure(key, s, err)) != TL_OK)
    return rc;
  snprintf(body, sizeof body, "nonce|%lld|%lld|%lld", (long long)credential, (long long)profile, (long long)gen);
  if ((rc = mac_of(mac, key, body, born, err)) != TL_OK)
    goto done;
  memcpy(nonce, mac, sizeof nonce); /* the first 12 characters of a keyed MAC: deterministic, unguessable */
  b64url(nonce64, nonce, sizeof nonce);
  snprintf(body, sizeof body, TL_SURROGATE_PREFIX "%lld.%lld.%lld.%s", (long long)credential, (long long)profile,
           (long long)gen, nonce64);
  if ((rc = mac_of(mac, key, body, born, err)) != TL_OK)
    goto done;
  size_t n = strlen(body) + 1 + MAC_CHARS + 1;
  if (!(text = malloc(n))) {
    rc = tl__oom(err);
    goto done;
  }
  size_t bl = strlen(body);
  memcpy(text, body, bl);
  text[bl] = '.';
  memcpy(text + bl + 1, mac, MAC_CHARS);
  text[bl + 1 + MAC_CHARS] = '\0';
  assert(tl__token_valid(text, strlen(text)) && tl__strict_is_surrogate(text));
  *out = text;
done:
  tl_burn(key, sizeof key);
  tl_burn(mac, sizeof mac);
  tl_burn(body, sizeof body);
  return rc;
}

tl_status tl__strict_verify(int64_t *out_cred, int64_t *out_profile, int64_t *out_gen, tl_store *s, const char *rt,
                            tl_error *err)
{
  unsigned char key[KEY_LEN];
  char body[128], mac[MAC_CHARS + 2];
  int64_t cred = 0, profile = 0, gen = 0, born = 0;
  size_t body_len = 0;
  tl_status rc;
  if (!s || !rt)
    return tl__err(err, TL_EINVAL, 0, "surrogate: nothing to verify");
  if (!parse(&cred, &profile, &gen, &body_len, rt) || body_len >= sizeof body)
    return tl__err(err, TL_EINVAL, 0, "not a surrogate refresh token of tokenledger (malformed or truncated)");
  tl_error probe = {0};
  rc = profile_born(&born, s, profile, &probe);
  if (rc != TL_OK && rc != TL_ENOTFOUND) {
    *err = probe;
    return rc;
  }
  int profile_gone = rc == TL_ENOTFOUND;
  if ((rc = key_load(key, s, err)) != TL_OK)
    return rc == TL_ENOTFOUND ? tl__err(err, TL_EINVAL, 0, "surrogate not issued by this ledger") : rc;
  memcpy(body, rt, body_len);
  body[body_len] = '\0';
  rc = mac_of(mac, key, body, born, err); /* computed even for a missing profile: no shortcut to time */
  tl_burn(key, sizeof key);
  int same = rc == TL_OK && tl__memcmp_ct(mac, rt + body_len + 1, MAC_CHARS) == 0;
  tl_burn(mac, sizeof mac);
  tl_burn(body, sizeof body);
  if (rc != TL_OK)
    return rc;
  if (profile_gone)
    return tl__err(err, TL_ENOTFOUND, 0, "surrogate names profile %lld, which no longer exists", (long long)profile);
  if (!same)
    return tl__err(err, TL_EINVAL, 0,
                   "surrogate does not verify under this ledger's key (forged, altered, or from another ledger)");
  int exists = row_exists(s, cred_sql, cred, 0);
  if (exists != 1)
    return exists < 0 ? tl__err_db(err, s, "surrogate")
                      : tl__err(err, TL_ENOTFOUND, 0, "surrogate names credential %lld, which does not exist",
                                (long long)cred);
  if (out_cred)
    *out_cred = cred;
  if (out_profile)
    *out_profile = profile;
  if (out_gen)
    *out_gen = gen;
  return TL_OK;
}

int tl__strict_uses(tl_store *s, int64_t profile, int64_t credential)
{
  return row_exists(s, uses_sql, profile, credential) == 1;
}

/*
 * What serve accepts: an authentic surrogate (tl__strict_verify) whose profile still uses its
 * credential, is strict now, and which names the credential's current generation, or the one
 * before within TL_SURROGATE_GRACE_MS of the rotation (a Hermes that died between serve's answer
 * and writing it still holds that one). Anything older, or a strict profile's surrogate after the
 * switch off, is a copy of a file presented again: refused as replayed (TL_EREUSE), never a bearer
 * credential for life.
 */
tl_status tl__strict_admit(tl__surrogate_check *out, tl_store *s, const char *rt, tl_error *err)
{
  int64_t since = 0;
  tl_status rc;
  memset(out, 0, sizeof *out);
  if ((rc = tl__strict_verify(&out->credential, &out->profile, &out->generation, s, rt, err)) != TL_OK) {
    out->credential = out->profile = out->generation = 0;
    return rc;
  }
  if (!tl__strict_uses(s, out->profile, out->credential))
    return tl__err(err, TL_ENOTFOUND, 0, "the surrogate's profile no longer uses its credential");
  if ((rc = cred_generation(&out->current, &since, s, out->credential, err)) != TL_OK)
    return rc;
  if (!tl__strict_profile(s, out->profile)) {
    out->refusal = "profile_not_strict";
    return tl__err(err, TL_EREUSE, 0,
                   "a surrogate of profile %lld, which is not in strict mode (switched off): its files hold the "
                   "real grant now, so this is a copy of an old file presented again",
                   (long long)out->profile);
  }
  if (out->generation > out->current)
    return tl__err(err, TL_EINVAL, 0, "surrogate names generation %lld; credential %lld never had it",
                   (long long)out->generation, (long long)out->credential);
  if (out->generation == out->current)
    return TL_OK;
  int64_t ago = tl__now_ms() - since;
  if (out->generation == out->current - 1 && ago <= TL_SURROGATE_GRACE_MS) {
    out->grace = 1;
    return TL_OK;
  }
  out->refusal = "old_generation";
  return tl__err(err, TL_EREUSE, 0,
                 "a surrogate of generation %lld; credential %lld is at generation %lld since %lld s ago (only the "
                 "current one, or the one before for %d s after a rotation, is accepted): a copy of an old file "
                 "presented again",
                 (long long)out->generation, (long long)out->credential, (long long)out->current,
                 (long long)(ago > 0 ? ago / 1000 : 0), TL_SURROGATE_GRACE_MS / 1000);
}

/* ---- the strict flag -------------------------------------------------------- */

int tl__strict_profile(tl_store *s, int64_t profile)
{
  static const char sql[] = "SELECT 1 FROM strict_profile WHERE profile_id = :a";
  return s && row_exists(s, sql, profile, 0) == 1;
}

int tl__strict_active(tl_store *s, int64_t profile)
{
  static const char sql[] = "SELECT 1 FROM strict_profile WHERE profile_id = :a AND leaving_since IS NULL";
  return s && row_exists(s, sql, profile, 0) == 1;
}

int64_t tl__strict_epoch(tl_store *s, int64_t profile)
{
  static const char sql[] = "SELECT since FROM strict_profile WHERE profile_id = :p AND leaving_since IS NULL";
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, sql, NULL) != TL_OK || TL_BIND(st, NULL, TL_INT(":p", profile)) != TL_OK)
    return 0;
  int64_t epoch = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  return epoch;
}

tl_status tl__strict_skips_check(tl_store *s, tl_error *err)
{
  /* Each profile whose files were left unlocked must still be strict, not leaving, and in the same epoch
   * (a switch off and on again in between would have written the real token into its files). */
  int changed = 0;
  for (int i = 0; !changed && i < s->coop_nskip; i++)
    changed = tl__strict_epoch(s, s->coop_skip[i].profile) != s->coop_skip[i].epoch;
  if (!changed)
    return TL_OK;
  s->coop_restart = 1;
  return tl__err(err, TL_EBUSY, 0,
                 "a strict profile sharing this grant was switched meanwhile: its Hermes file may now hold the real "
                 "refresh token, so the files are chosen and locked again before anything is presented");
}

static int profile_has_home(tl_store *s, const char *name)
{
  static const char sql[] = "SELECT home IS NOT NULL FROM profile WHERE name = :n";
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, sql, NULL) != TL_OK || TL_BIND(st, NULL, TL_TEXT(":n", name)) != TL_OK)
    return 0;
  int home = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
  sqlite3_reset(st);
  return home;
}

/* The profile's files (and every file holding its grants) take the switch at once, under Hermes' locks. */
static tl_status strict_reach_files(tl_store *s, const char *name, tl_error *err)
{
  if (!profile_has_home(s, name))
    return TL_OK;
  tl_report *r = NULL;
  tl_status rc = tl_sync(&r, s, name, err);
  tl_report_free(r);
  return rc;
}

/*
 * on: the flag, or a new epoch for a profile a switch off had marked (that
 * switch then finds its mark gone and stops). off: the flag goes only if the
 * mark is still the one this switch set (mine); otherwise another switch ran
 * meanwhile and nothing is switched by this one (TL_EBUSY).
 */
static tl_status flag_set(tl_store *s, int64_t *id, const char *name, int on, int64_t mine, tl_error *err)
{
  static const char on_sql[] =
      "INSERT INTO strict_profile (profile_id, since) VALUES (:id, :now) ON CONFLICT (profile_id) DO UPDATE SET "
      "leaving_since = NULL, since = max(:now, strict_profile.since + 1) WHERE leaving_since IS NOT NULL";
  static const char off_sql[] = "DELETE FROM strict_profile WHERE profile_id = :id AND leaving_since = :mine";
  tl_status rc;
  if ((rc = tl__tx_begin(s, "profile strict", err)) != TL_OK)
    return rc;
  if ((rc = tl__profile_id(id, s, name, err)) != TL_OK)
    goto fail;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, on ? on_sql : off_sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_INT(":id", *id))) != TL_OK ||
      (rc = on ? TL_BIND(st, err, TL_INT(":now", tl__now_ms())) : TL_BIND(st, err, TL_INT(":mine", mine))) != TL_OK ||
      (rc = tl__step_done(s, st, "profile strict", err)) != TL_OK)
    goto fail;
  if (sqlite3_changes(s->db) == 0) {
    tl__tx_rollback(s); /* on: already so, nothing to record */
    if (!on)
      return tl__err(err, TL_EBUSY, 0,
                     "profile strict %s off: another strict switch of this profile ran meanwhile, so this one switched "
                     "nothing; run it again",
                     name);
    return TL_OK;
  }
  tl__ids ids = {.profile = *id};
  if ((rc = tl__audit(s, on ? "profile_strict_on" : "profile_strict_off", &ids, json_pack("{s:s}", "profile", name),
                      err)) != TL_OK)
    goto fail;
  return tl__tx_commit(s, err);
fail:
  tl__tx_rollback(s);
  return rc;
}

/*
 * The mark of a switch off in progress (leaving_since), owned by the switch
 * that set it: set to a value no earlier mark had (*mine), or cleared only if
 * it is still *mine (a later switch's mark is never cleared by this one).
 */
static tl_status leaving_mark(tl_store *s, int64_t id, int on, int64_t *mine, tl_error *err)
{
  static const char get_sql[] = "SELECT coalesce(leaving_since, 0) FROM strict_profile WHERE profile_id = :id";
  static const char set_sql[] = "UPDATE strict_profile SET leaving_since = :mark WHERE profile_id = :id";
  static const char clear_sql[] =
      "UPDATE strict_profile SET leaving_since = NULL WHERE profile_id = :id AND leaving_since = :mark";
  int64_t prev = 0;
  tl_status rc;
  if ((rc = tl__tx_begin(s, "profile strict off", err)) != TL_OK)
    return rc;
  if (on) {
    sqlite3_stmt *st;
    if ((rc = tl__prepare(&st, s, get_sql, err)) == TL_OK && (rc = TL_BIND(st, err, TL_INT(":id", id))) == TL_OK) {
      prev = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
      sqlite3_reset(st);
    }
    int64_t now = tl__now_ms();
    *mine = now > prev ? now : prev + 1;
  }
  if (rc == TL_OK)
    rc = TL_RUN(s, on ? set_sql : clear_sql, "profile strict off", err, TL_INT(":mark", *mine), TL_INT(":id", id));
  if (rc != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  return tl__tx_commit(s, err);
}

static void append(tl_error *err, const char *text)
{
  if (!err)
    return;
  size_t l = strlen(err->message);
  snprintf(err->message + l, sizeof err->message - l, "%s", text);
}

/*
 * The switch and the files agree, or the difference is safe and visible:
 *
 *  on   the flag first (serve honours the profile's surrogates from then on),
 *       then the files. If they cannot be reached (Hermes holds auth.lock, a
 *       full disk), the profile is strict with files that still hold the real
 *       token: the cooperative refresh decides by what a file holds, so they
 *       are locked and adopted like any Hermes file until the next sync writes
 *       the strict form (doctor and status name them meanwhile).
 *  off  the mark first (leaving_since: from then on every process writes the
 *       profile's files in plain form, locks and adopts them before presenting,
 *       and a refresh that chose its files before the mark gives up its claim
 *       and chooses again), then the files in plain form under their locks,
 *       then a check that the home file holds no surrogate any more (a refresh
 *       in flight keeps its token out of files until it is recorded), and the
 *       flag only then. A switch off that fails clears the mark: the profile
 *       stays strict and its surrogates honoured, never surrogates without
 *       strict mode.
 */
tl_status tl_profile_strict(tl_store *s, const char *name, int on, tl_error *err)
{
  tl_error_clear(err);
  int64_t id = 0;
  tl_status rc;
  char url[300];
  if (!s || !name)
    return tl__err(err, TL_EINVAL, 0, "profile strict: no profile name");
  if (on && profile_has_home(s, name) && !tl__strict_url(url, sizeof url, s))
    return tl__err(err, TL_ENOTFOUND, 0,
                   "profile strict: tokenledger serve has never run for this ledger, so there is no loopback portal "
                   "to point the profile's Hermes files at yet");
  if (on) {
    if ((rc = flag_set(s, &id, name, 1, 0, err)) != TL_OK)
      return rc;
    if ((rc = strict_reach_files(s, name, err)) != TL_OK)
      append(err, " (the profile is strict, but its Hermes files still hold the real token: until the next sync "
                  "writes the strict form they are locked and adopted before every presentation like any Hermes file)");
    return rc;
  }
  if ((rc = tl__profile_id(&id, s, name, err)) != TL_OK)
    return rc;
  if (!tl__strict_profile(s, id))
    return strict_reach_files(s, name, err); /* already off: a sync finishes a half-done switch */
  int64_t mine = 0;
  if ((rc = leaving_mark(s, id, 1, &mine, err)) != TL_OK)
    return rc;
  int agree = 1;
  char why[600] = "";
  if ((rc = strict_reach_files(s, name, err)) == TL_OK &&
      (rc = tl__strict_files_agree(&agree, why, sizeof why, s, id, 0, err)) == TL_OK && !agree)
    rc = tl__err(err, TL_EBUSY, 0,
                 "profile strict %s off: %s: a refresh of its grant is in flight and its token reaches the files "
                 "only once it is recorded; try again",
                 name, why);
  if (rc == TL_OK)
    rc = flag_set(s, &id, name, 0, mine, err);
  if (rc != TL_OK) {
    tl_error ignore = {0};
    leaving_mark(s, id, 0, &mine, &ignore);
    append(err, " (strict mode stays on for this profile: the flag goes only once its files are written in plain "
                "form; its surrogates are still honoured)");
    return rc;
  }
  return TL_OK;
}

/* ---- serve's port file --------------------------------------------------------- */

int tl__serve_host_valid(const char *host)
{
  struct in_addr a4;
  struct in6_addr a6;
  if (!host)
    return 0;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

tl_status tl__serve_port_path(char *out, size_t n, const tl_store *s, tl_error *err)
{
  int len = snprintf(out, n, "%s-serve", s->path);
  if (len < 0 || (size_t)len >= n)
    return tl__err(err, TL_EINVAL, 0, "%s: path too long for the port file", s->path);
  return TL_OK;
}

/* Reads host, port and pid from an open port file. 0 if it holds no valid record. */
static int port_record(tl__serve_live *out, int fd)
{
  char buf[512];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  json_t *j = json_loads(buf, 0, NULL);
  const char *host = json_string_value(json_object_get(j, "host"));
  json_t *port = json_object_get(j, "port"), *pid = json_object_get(j, "pid");
  int ok = host && tl__serve_host_valid(host) && strlen(host) < sizeof out->host && json_is_integer(port) &&
           json_integer_value(port) >= 1 && json_integer_value(port) <= 65535 && json_is_integer(pid);
  if (ok) {
    snprintf(out->host, sizeof out->host, "%s", host);
    out->port = (int)json_integer_value(port);
    out->pid = (long)json_integer_value(pid);
  }
  json_decref(j);
  return ok;
}

tl_status tl__serve_probe(tl__serve_live *out, tl_store *s, tl_error *err)
{
  char path[4096];
  struct stat st;
  tl_status rc;
  memset(out, 0, sizeof *out);
  if ((rc = tl__serve_port_path(path, sizeof path, s, err)) != TL_OK)
    return rc;
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    if (errno == ENOENT)
      return TL_OK;
    return tl__err(err, errno == ELOOP ? TL_EINSECURE : TL_EIO, errno, "%s: %s", path,
                   errno == ELOOP ? "is a symbolic link; not trusting it" : strerror(errno));
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
    close(fd);
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: not a regular 0600 file of yours; not trusting the address it names (remove it)", path);
  }
  out->exists = 1;
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN); /* nobody holds it: a dead serve's file */
    out->stale = 1;
    port_record(out, fd);
    close(fd);
    return TL_OK;
  }
  /* Held: serve is up. It writes the record right after binding; give it a moment. */
  for (int i = 0; i < 100 && !port_record(out, fd); i++) {
    tl__sleep_us(10000);
  }
  out->running = out->port > 0;
  close(fd);
  if (!out->running)
    return tl__err(err, TL_EBUSY, 0, "%s: tokenledger serve is starting or wrote no address; try again", path);
  return TL_OK;
}

unsigned tl__serve_sockaddr(struct sockaddr_storage *ss, const char *host, int port)
{
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return sizeof *a4;
  }
  if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    return sizeof *a6;
  }
  return 0;
}

int tl__serve_url(char *out, size_t n, const char *host, int port)
{
  int len = snprintf(out, n, strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d", host, port);
  return len > 0 && (size_t)len < n;
}

tl_status tl__strict_portal_url(char *out, size_t n, tl_store *s, tl_error *err)
{
  tl__serve_live live;
  tl_status rc;
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "strict: bad arguments");
  if ((rc = tl__serve_probe(&live, s, err)) != TL_OK)
    return rc;
  if (!live.running)
    return tl__err(err, TL_ENOTFOUND, 0, "tokenledger serve is not running for %s%s", s->path,
                   live.stale ? " (its port file is left over from a serve that died)" : "");
  if (!tl__serve_url(out, n, live.host, live.port))
    return tl__err(err, TL_EINVAL, 0, "strict: buffer too small for the portal URL");
  return TL_OK;
}

/* ---- status and doctor ----------------------------------------------------------- */

static const char strict_names_sql[] =
    "SELECT count(*), group_concat(name, ',') FROM (SELECT p.name FROM strict_profile sp "
    "JOIN profile p ON p.id = sp.profile_id ORDER BY p.name)";

static void strict_names(int64_t *count, char *names, size_t n, tl_store *s)
{
  *count = 0;
  names[0] = '\0';
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, strict_names_sql, NULL) != TL_OK)
    return;
  if (sqlite3_step(st) == SQLITE_ROW) {
    *count = sqlite3_column_int64(st, 0);
    if (sqlite3_column_text(st, 1))
      snprintf(names, n, "%s", (const char *)sqlite3_column_text(st, 1));
  }
  sqlite3_reset(st);
}

tl_status tl_serve_status(tl_report **out, tl_store *s, tl_error *err)
{
  tl_error_clear(err);
  static const char *const cols[] = {"running",
                                     "url",
                                     "pid",
                                     "port_file",
                                     "strict_profiles",
                                     "strict",
                                     "last_url",
                                     "agent",
                                     "agent_answers",
                                     "agent_refreshes",
                                     "agent_shared",
                                     "agent_unknown",
                                     "agent_reuse_refused",
                                     "agent_refused_peers",
                                     "agent_connections"};
  static const char *const counters[] = {"answers",       "refreshes",     "shared",     "unknown",
                                         "reuse_refused", "refused_peers", "connections"};
  static const char last_sql[] = "SELECT host, port FROM serve_state WHERE id = 1";
  const int num[] = {1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1};
  tl__serve_live live;
  tl_report *r = NULL;
  char path[4096], url[128] = "", last[128] = "", pid[32] = "", count[32], names[2048];
  int64_t nstrict = 0;
  tl_status rc;
  if (!out || !s)
    return tl__err(err, TL_EINVAL, 0, "serve status: bad arguments");
  if ((rc = tl__serve_port_path(path, sizeof path, s, err)) != TL_OK || (rc = tl__serve_probe(&live, s, err)) != TL_OK)
    return rc;
  if (live.running) {
    tl__serve_url(url, sizeof url, live.host, live.port);
    snprintf(pid, sizeof pid, "%ld", live.pid);
  }
  sqlite3_stmt *st;
  tl_status prc = tl__prepare(&st, s, last_sql, err);
  if (prc != TL_OK)
    return prc;
  if (sqlite3_step(st) == SQLITE_ROW)
    tl__serve_url(last, sizeof last, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int(st, 1));
  sqlite3_reset(st);
  strict_names(&nstrict, names, sizeof names, s);
  snprintf(count, sizeof count, "%lld", (long long)nstrict);
  /* The local agent (agent.c): its socket when a trustworthy one answers, and its counters. */
  char agent[4200] = "", cnt[7][24];
  json_t *stats = live.running ? tl__agent_stats(s) : NULL;
  if (stats)
    snprintf(agent, sizeof agent, "%s-agent", s->path);
  for (int i = 0; i < 7; i++)
    snprintf(cnt[i], sizeof cnt[i], "%lld", (long long)json_integer_value(json_object_get(stats, counters[i])));
  json_decref(stats);
  const char *cells[] = {live.running ? "1" : "0",
                         *url ? url : NULL,
                         *pid ? pid : NULL,
                         path,
                         count,
                         *names ? names : NULL,
                         *last ? last : NULL,
                         *agent ? agent : NULL,
                         *agent ? cnt[0] : NULL,
                         *agent ? cnt[1] : NULL,
                         *agent ? cnt[2] : NULL,
                         *agent ? cnt[3] : NULL,
                         *agent ? cnt[4] : NULL,
                         *agent ? cnt[5] : NULL,
                         *agent ? cnt[6] : NULL};
  if ((rc = tl__report_kv(&r, cols, sizeof cols / sizeof *cols, err)) != TL_OK)
    return rc;
  if ((rc = tl__report_add_row(r, cells, num, err)) != TL_OK) {
    tl_report_free(r);
    return rc;
  }
  *out = r;
  return TL_OK;
}

/* 1 if a TCP connection to host:port is accepted within timeout_ms. */
static int answers(const char *host, int port, int timeout_ms)
{
  struct sockaddr_storage ss;
  socklen_t len = tl__serve_sockaddr(&ss, host, port);
  if (!len)
    return 0;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int ok = connect(fd, (struct sockaddr *)&ss, len) == 0;
  close(fd);
  return ok;
}

void tl__strict_doctor(int *ok, char *detail, size_t n, tl_store *s)
{
  int64_t nstrict = 0;
  char names[1024], url[128];
  tl__serve_live live;
  tl_error err = {0};
  strict_names(&nstrict, names, sizeof names, s);
  *ok = 1;
  if (nstrict == 0) {
    snprintf(detail, n, "no profile is in strict mode");
    return;
  }
  tl_status rc = tl__serve_probe(&live, s, &err);
  if (rc == TL_OK && live.running && answers(live.host, live.port, 1000)) {
    tl__serve_url(url, sizeof url, live.host, live.port);
    snprintf(detail, n, "%lld strict profile(s) (%s); tokenledger serve answers on %s (pid %ld)", (long long)nstrict,
             names, url, live.pid);
    return;
  }
  *ok = 0;
  if (rc != TL_OK)
    snprintf(detail, n, "%lld strict profile(s) (%s), but the port file cannot be used: %s", (long long)nstrict, names,
             err.message);
  else if (live.running) {
    tl__serve_url(url, sizeof url, live.host, live.port);
    snprintf(detail, n,
             "%lld strict profile(s) (%s), but nothing answers on %s named by the port file: Hermes cannot refresh "
             "them",
             (long long)nstrict, names, url);
  } else
    snprintf(detail, n,
             "%lld strict profile(s) (%s), but tokenledger serve is not running%s: Hermes cannot refresh them",
             (long long)nstrict, names, live.stale ? " (stale port file of a dead serve)" : "");
}
