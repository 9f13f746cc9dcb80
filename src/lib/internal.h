/*
 * internal.h - declarations shared by the library's modules (tl__ prefix).
 *
 * The store owns one SQLite connection, a cache of prepared statements keyed by
 * the address of their SQL text (each statement is a static string, prepared
 * once), the identity of the acting process, and the HTTP transport. Nothing
 * here is visible outside src/lib/.
 */
#ifndef TL_INTERNAL_H
#define TL_INTERNAL_H

#include "tokenledger.h"

#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>

#define TL_STMT_CACHE 96

/* Identity of the process acting on the ledger. */
typedef struct tl__actor {
  char host[256];
  char boot[64];
  long pid;
  long long start; /* clock ticks since boot, /proc/self/stat field 22 */
  char *profile;
  char *command;
} tl__actor;

struct tl_store {
  sqlite3 *db;
  char *path;
  int busy_ms;
  int64_t busy_since;  /* when the current wait for a lock began (busy handler) */
  int http_timeout_ms; /* total HTTP timeout; the attempt lease follows it */
  int found_version;
  struct {
    const char *sql;
    sqlite3_stmt *st;
    int erases; /* a write that overwrites or deletes a secret (db.c, tl__prepare) */
  } cache[TL_STMT_CACHE];
  size_t ncache;
  const char *tx_where;     /* where the open write transaction began, or NULL */
  int readonly;             /* opened read-only (asked for, or a read-only or full filesystem) */
  const char *readonly_why; /* why, when it was not asked for */
  int wal_pages;            /* WAL size after our last commit (wal hook), for checkpoints outside transactions */
  int checkpoint_next;      /* WAL size at which this connection tries its next checkpoint */
  int scrub_due;            /* a commit erased a secret: the WAL still holds it until a TRUNCATE checkpoint */
  int scrub_off;            /* TOKENLEDGER_TEST_KEEP_WAL: the old behaviour, for the test that proves the scan */
  int closing;              /* tl_store_free runs: a scrub may wait for readers a moment */
  int64_t scrub_next_at;    /* the next scrub after a commit not before this (ms; db.c, TL_SCRUB_GAP_MS) */
  int sync_failed;          /* the SQLite error of the last failed WAL sync after a commit, else 0 */
  long wal_syncs;           /* commits this connection made durable (tests and benchmarks count them) */
  int rescue_fd;            /* space reserved for a rescue file (refresh.c), or -1 */
  char *rescue_reserve;     /* its path */
  struct {
    struct tl__cached_token *slots; /* open addressing by (profile, provider); refresh.c */
    size_t cap, used;
  } tokens; /* the hot path's answers, each valid while the ledger's change marker is the one it was read at */
  int coop; /* a cooperative refresh holds Hermes' locks: shorter HTTP timeout */
  char coop_spent_fp[65];  /* set by it: an RT the server rotated that the ledger could not record */
  int64_t lock_timeout_ms; /* waits for Hermes' locks; 0: TOKENLEDGER_LOCK_TIMEOUT_MS (15 s) */
  struct {
    int64_t profile, epoch;
  } coop_skip[16];  /* a cooperative refresh: strict profiles whose files it left unlocked, and their epochs */
  int coop_nskip;   /* how many (a 17th strict profile's files are locked like any other) */
  int coop_restart; /* set by the claim: a strict switch off began meanwhile, choose the files again */
  tl__actor actor;
  tl_http_fn http;
  void *http_ud;
  tl_stop_notice_fn stop_notice; /* tl_store_set_stop_notice; NULL: none */
  void *stop_notice_ud;
  tl_progress_fn progress; /* tl_store_set_progress; NULL: none */
  void *progress_ud;
  int64_t progress_at;    /* when it was last called (ms), to call it a few times a second at most */
  int agent_fd;           /* the connection to the local agent (agent.c), reused; -1 if none */
  long agent_pid;         /* the process that made it (a forked child makes its own) */
  int agent_off;          /* never ask an agent: serve's store and the agent's own */
  int64_t agent_retry_at; /* an agent that failed to answer is not asked again before this (ms) */
};

/* error.c */
tl_status tl__err(tl_error *err, tl_status code, int sys, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
tl_status tl__err_db(tl_error *err, tl_store *s, const char *what);
tl_status tl__oom(tl_error *err);

/* time and actor (actor.c) */
int64_t tl__now_ms(void);
/* actor.c: the library's one pause, in microseconds; the whole of it, whatever signals arrive. */
void tl__sleep_us(int64_t us);
/* Defers SIGINT/SIGTERM/SIGHUP/SIGQUIT across a critical section; restore delivers them. */
void tl__signals_defer(sigset_t *old);
void tl__signals_restore(const sigset_t *old);
void tl__actor_init(tl__actor *a);
void tl__actor_clear(tl__actor *a);
/* 1 if the owner is certainly alive, 0 if certainly dead, -1 if unknowable here. */
int tl__owner_alive(const tl__actor *self, const char *host, const char *boot, long pid, long long start);

/* num.c: checked conversions of numbers and times from outside. Each returns NULL on
 * success, else a constant reason ("out of range", ...) for the caller's message. */
#define TL_MS_MAX 253402300799999LL /* 9999-12-31T23:59:59.999Z */
const char *tl__num_f2i(int64_t *out, double d, int64_t min, int64_t max);
const char *tl__num_i64(int64_t *out, const json_t *v, int64_t min, int64_t max);
/* A time in every form Hermes writes (ISO 8601, epoch s or ms, number or text) -> ms. */
const char *tl__num_time(int64_t *out, const json_t *v);
const char *tl__num_time_text(int64_t *out, const char *text);

/* lazy.c: libcrypto, loaded on first use. Each returns what its OpenSSL function returns (EVP_Digest and
 * HMAC with SHA-256: 1 on success; RAND_bytes; EVP_EncodeBlock's length; EVP_DecodeBlock's; CRYPTO_memcmp;
 * OPENSSL_hexchar2int), or its failure value (0, 0, 0, 0, -1, non-zero, -1) when libcrypto cannot be loaded. */
int tl__sha256(unsigned char md[32], const void *data, size_t len);
int tl__hmac_sha256(unsigned char md[32], const void *key, int key_len, const unsigned char *msg, size_t len);
int tl__rand_bytes(unsigned char *buf, int n);
int tl__b64_encode(unsigned char *out, const unsigned char *in, int n);
int tl__b64_decode(unsigned char *out, const unsigned char *in, int n);
int tl__memcmp_ct(const void *a, const void *b, size_t n);
int tl__hexchar2int(unsigned char c);

/* secret.c: a token is 1-16384 bytes of RFC 6749 VSCHAR (0x20-0x7E) with no
 * leading or trailing space, wherever it comes from (file, server, stdin). */
#define TL_TOKEN_MAX 16384
int tl__token_valid(const char *s, size_t len);

/*
 * db.c: statements and transactions. tl__prepare hands out the store's cached
 * statement for a static SQL text (reset, bindings cleared) and keeps the real
 * status of a failure (busy, out of memory, I/O) for the exit code.
 */
tl_status tl__prepare(sqlite3_stmt **out, tl_store *s, const char *sql, tl_error *err)
    __attribute__((warn_unused_result));

/* Named values for tl__bind; an unknown name is a programming error (TL_ERROR naming it). */
typedef struct tl__arg {
  const char *name;
  enum { TL__ARG_INT, TL__ARG_OPTINT, TL__ARG_TEXT, TL__ARG_SECRET, TL__ARG_NULL } kind;
  int64_t i;
  const char *t;
} tl__arg;
#define TL_INT(n, v)    ((tl__arg){(n), TL__ARG_INT, (int64_t)(v), NULL})
#define TL_OPTINT(n, v) ((tl__arg){(n), TL__ARG_OPTINT, (int64_t)(v), NULL}) /* 0 binds NULL */
#define TL_TEXT(n, v)   ((tl__arg){(n), TL__ARG_TEXT, 0, (v)})               /* NULL binds NULL */
#define TL_SECRET(n, v) ((tl__arg){(n), TL__ARG_SECRET, 0, (v)})             /* bound without a copy */
#define TL_NULL(n)      ((tl__arg){(n), TL__ARG_NULL, 0, NULL})
tl_status tl__bind(sqlite3_stmt *st, tl_error *err, size_t n, const tl__arg *args) __attribute__((warn_unused_result));
#define TL_BIND(st, err, ...)                                                                                          \
  tl__bind((st), (err), sizeof((const tl__arg[]){__VA_ARGS__}) / sizeof(tl__arg), (const tl__arg[]){__VA_ARGS__})
/* One step: *found is 1 on a row (readable until the next reset), 0 when done; errors keep their status. */
tl_status tl__step_row(int *found, tl_store *s, sqlite3_stmt *st, const char *what, tl_error *err)
    __attribute__((warn_unused_result));

/* store_open.c: the ledger's directory (ours or root's, writable by nobody else) and SQLite's files beside the ledger
 * (-wal, -shm, -journal: regular, ours, no group/other access, no symlink) pass before SQLite opens them. */
tl_status tl__check_dir(const char *dir, tl_error *err);
/* 1 if a process (this one too) holds a lock on path covering byte at (*pid: who, when known), 0 if none,
 * -1 if it cannot be told; from /proc/locks, without opening path (closing would drop this process's locks). */
int tl__lock_held(long *pid, const char *path, int64_t at);
tl_status tl__check_sidecars(const char *path, tl_error *err);
/* The schema is exactly what migrations 1..version made (TL_EINSECURE naming the first difference). */
tl_status tl__schema_check(tl_store *s, int version, tl_error *err);
/* store_open.c: the store's SQLite connection, for tools/bench.c's seeding and measuring only (the library's own
 * code uses s->db; nothing else outside src/lib may touch a connection). */
sqlite3 *tl__store_db(tl_store *s);

tl_status tl__exec(tl_store *s, const char *sql, tl_error *err);
tl_status tl__step_done(tl_store *s, sqlite3_stmt *st, const char *what, tl_error *err);
/* One statement that returns no rows (or whose rows are not wanted): prepare, bind by name, step. */
tl_status tl__run(tl_store *s, const char *sql, const char *what, tl_error *err, size_t n, const tl__arg *args)
    __attribute__((warn_unused_result));
#define TL_RUN(s, sql, what, err, ...)                                                                                 \
  tl__run((s), (sql), (what), (err), sizeof((const tl__arg[]){__VA_ARGS__}) / sizeof(tl__arg),                         \
          (const tl__arg[]){__VA_ARGS__})
/* The ledger's change marker (db.c): equal markers, equal ledger. 0 if none can be read now. */
#define TL_DB_MARKER_LEN 48
int tl__db_marker(tl_store *s, unsigned char out[TL_DB_MARKER_LEN]);
/* Makes everything written to the WAL so far durable (the group commit's sync; db.c). TL_EIO if the disk fails. */
tl_status tl__wal_sync(tl_store *s, tl_error *err);
/* db.c: the WAL hook every connection gets (store_open.c): the checkpoint after a commit, when one is due. */
int tl__on_wal(void *ud, sqlite3 *db, const char *name, int pages);
/* db.c: empties the WAL by a TRUNCATE checkpoint when a commit erased a secret (always: whatever this connection
 * did); 1 if it is empty now. Outside transactions only. */
int tl__wal_scrub(tl_store *s, int always);
tl_status tl__tx_begin(tl_store *s, const char *where, tl_error *err);
tl_status tl__tx_commit(tl_store *s, tl_error *err);
void tl__tx_rollback(tl_store *s);
tl_status tl__map_sqlite(int rc);
char *tl__strdup(const char *s);
char *tl__col_dup(sqlite3_stmt *st, int col);

/* query.c: reports progress to the store's callback (stage changes always, counts at most every 200 ms). */
void tl__progress(tl_store *s, const char *stage, int64_t done, int64_t total);

/* migrate.c */
tl_status tl__migrate(tl_store *s, tl_error *err);
extern const char *const tl__migrations[];
extern const size_t tl__migration_count;

/*
 * The schema objects each version must have exactly (schema_expected.c,
 * generated at build time by tools/schema_gen.c replaying the migrations),
 * in the order of TL_SCHEMA_QUERY. Index 0 is the empty database.
 */
typedef struct tl__schema_row {
  const char *type, *name, *tbl, *sql;
} tl__schema_row;
extern const tl__schema_row *const tl__schema_rows[];
extern const size_t tl__schema_counts[];
#define TL_SCHEMA_QUERY "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"

/* report.c */
tl_status tl__report_from_stmt(tl_report **out, tl_store *s, sqlite3_stmt *st, tl_error *err);
tl_status tl__report_kv(tl_report **out, const char *const *cols, size_t ncols, tl_error *err);
tl_status tl__report_add_row(tl_report *r, const char *const *cells, const int *is_num, tl_error *err);

/* ledger.c */
typedef struct tl__ids {
  int64_t profile, credential, rt;
} tl__ids;
/* Appends an audit row as the store's actor. Steals detail (may be NULL). */
tl_status tl__audit(tl_store *s, const char *event, const tl__ids *ids, json_t *detail, tl_error *err);
tl_status tl__profile_id(int64_t *out, tl_store *s, const char *name, tl_error *err);
/* The profile (other than `except`) whose home is `home` or its real path: name[0] is '\0' if none. */
tl_status tl__home_owner(char *name, size_t n, tl_store *s, const char *home, int64_t except, tl_error *err);
/* Provider ids: 1-128 of A-Z a-z 0-9 . _ : - + @ (safe in messages and JSON). */
int tl__provider_name_valid(const char *name);
/*
 * Checks an RT about to be stored. TL_OK with *out_rt = 0 if new to the ledger,
 * TL_OK with *out_rt = id (and *out_cred) if it is live; TL_EREUSE with a
 * message if spent. Does not write: the caller writes the audit event with
 * tl__reuse_blocked after rolling back its own work.
 */
tl_status tl__rt_lookup(int64_t *out_rt, int64_t *out_cred, tl_store *s, const char *fp, tl_error *err);
tl_status tl__reuse_blocked(tl_store *s, const char *fp, const char *where, tl_error *err);

/* refresh.c: the protocol alone (claim, present, record) for one credential; the
 * caller has already handled Hermes' files. ahead_ms widens "fresh" (keep-fresh). */
#define TL_COOP_HTTP_TIMEOUT_MS 8000
tl_status tl__refresh_protocol(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                               int64_t ahead_ms, tl_error *err);
/* hermes_sync.c: the cooperative refresh. For a credential that lives in Hermes
 * files: their locks in Hermes' order, adopt what they hold, the protocol, the
 * write-back of every file holding the grant, unlock. Otherwise the protocol alone. */
tl_status tl__coop_refresh(tl_token **out, tl_store *s, int64_t cred, unsigned flags, int retry_unknown,
                           int64_t ahead_ms, tl_error *err);
/* hermes_sync.c: every Hermes file holding the credential brought in step (its locks, adopt, write back). */
tl_status tl__sync_credential(tl_store *s, int64_t cred, tl_error *err);
/* select.c: the one constructor of a tl_token (every string copied; entry_id and base_url may be NULL); NULL if
 * out of memory. */
tl_token *tl__token_new(const char *access_token, int64_t expires_at_ms, int64_t credential, const char *entry_id,
                        const char *base_url, int refreshed);
/* select.c: tl_token_get's answer without a write or a refresh (the store's cached answer, else the one-read fast
 * path): 1 with *out set, 0 if the full path is needed. (agent.c answers from it without waiting for a refresh.) */
int tl__token_hot(tl_token **out, tl_store *s, const char *profile, const char *provider);
/* select.c: burns and frees the hot path's cached answers (tl_store_free). */
void tl__token_cache_clear(tl_store *s);
/* refresh.c: releases the store's rescue-file reservation (tl_store_free). */
void tl__rescue_unreserve(tl_store *s);

/* refresh.c: marks in-flight attempts whose owner is gone as unknown (with fix). */
tl_status tl__reap_dead_attempts(int64_t *out_reaped, tl_store *s, int fix, tl_error *err);

/* oauth.c: expiry (ms) from a JWT access token's exp claim; 0 if unreadable or out of range. */
int64_t tl__jwt_exp_ms(const char *jwt);

/*
 * oauth.c: a token endpoint's answer, parsed and classified (the one parser
 * for refresh and login answers, and the libFuzzer target's entry point).
 * Tokens are RFC 6749 VSCHAR or not taken; server text is cut to 512 bytes
 * and scrubbed of every echo of the tokens involved; numbers are range
 * checked; a JSON document with duplicate keys is not read.
 */
typedef enum tl__answer_kind {
  TL__A_ROTATED,   /* 200 with a new, usable RT */
  TL__A_SAME_RT,   /* 200 without a new RT: the presented one stays */
  TL__A_REJECTED,  /* a terminal 4xx: the grant is dead */
  TL__A_TRANSIENT, /* 429, 5xx, temporarily_unavailable */
  TL__A_CONFIG,    /* another 4xx: no tokens issued */
  TL__A_NOT_SENT,  /* nothing reached the server */
  TL__A_UNKNOWN    /* the server may have rotated, and we cannot use what it said */
} tl__answer_kind;
/* The access token lifetime assumed when the server states none usably and the token carries no JWT exp. */
#define TL_LIFETIME_ASSUMED_S 900
typedef struct tl__answer {
  tl__answer_kind kind;
  long status;                        /* HTTP status, 0 if none */
  char *error, *desc;                 /* server text or local detail; may hold control characters */
  char *access_token, *refresh_token; /* SECRET; usable (VSCHAR) or NULL */
  char *id_token;                     /* SECRET: an OpenID id_token the 200 carried (Codex), usable or NULL */
  int at_unusable;                    /* a 200 whose access token was missing or not printable */
  int64_t expires_at;                 /* ms; always set for a 200 with tokens */
  int expiry_assumed;                 /* no usable expires_in or JWT exp: TL_LIFETIME_ASSUMED_S */
  json_t *extra;                      /* token_type, scope, inference_base_url (printable only) */
  long retry_after;                   /* seconds, capped at a day; -1 if none */
  char *raw;                          /* SECRET: the raw body of a 200 we could not use, for the rescue file */
  size_t raw_len;
} tl__answer;
void tl__answer_parse(tl__answer *a, const tl_http_response *r, const char *sent_rt);
/* What of an answer's other fields is kept (token_type, inference_base_url, scope; printable,
 * at most 2 KiB each): the same rule for a server's answer and a rescue file's. */
json_t *tl__answer_extra(const json_t *src);
/* TL_EREUSE (saying `what` did not happen, and why) if a rescue file beside the ledger holds a
 * server's answer for the credential with a usable refresh token, or a file named as one cannot be
 * read: nothing may give that credential up until the answer is taken back. */
tl_status tl__rescue_refuse(tl_store *s, int64_t cred, const char *what, tl_error *err);
/* Every rescue file beside the ledger: *pending holds a server's answer (the first for credential
 * *first); bad gets the first file named as a rescue file that cannot be read as one. */
tl_status tl__rescue_scan(int64_t *pending, int64_t *first, tl_error *bad, tl_store *s);
void tl__answer_clear(tl__answer *a);
/* oauth.c: 1 if a rejection's words say the refresh token was used before (reuse detected). */
int tl__answer_reuse(const char *error, const char *desc);
/* oauth.c: "k1=v1&k2=v2..." with each value form-encoded, pairs whose value is NULL left out (at most 8);
 * new (burn it before free: a value may be a secret); NULL if out of memory. */
char *tl__oauth_form(size_t n, const char *const *keys, const char *const *vals);
/* oauth.c: the same pairs as a JSON object {"k1":"v1",...} (Anthropic's token endpoint takes JSON only); new, burn
 * it before free; NULL if out of memory. */
char *tl__oauth_json(size_t n, const char *const *keys, const char *const *vals);
#define TL_GRANT_DEVICE_CODE "urn:ietf:params:oauth:grant-type:device_code"
/* login.c: a provider's device-login endpoints (new strings; free with tl__device_endpoints_clear). TL_ENOTFOUND
 * unless the provider has a device authorization endpoint, a token endpoint and a client id. Shared by login and
 * serve's forwarding of Hermes' own logins. */
typedef struct tl__device_endpoints {
  char *token_url, *device_url, *client_id, *scope;
} tl__device_endpoints;
tl_status tl__device_endpoints_load(tl__device_endpoints *e, tl_store *s, const char *provider, tl_error *err);
void tl__device_endpoints_clear(tl__device_endpoints *e);
/* oauth.c: one POST over the store's transport (tl_store_set_transport, else libcurl); *resp is reset first. */
void tl__oauth_post(tl_http_response *resp, tl_store *s, const tl_http_request *req);
/*
 * http.c: a presentation's watch for stop signals, set by refresh.c on the presenting thread around the
 * transfer (NULL: none). A deferred stop signal before any request byte left ends the transfer (NOT_SENT);
 * after, fn is told once that the process waits for the answer until deadline_ms.
 */
typedef struct tl__stop_watch {
  tl_stop_notice_fn fn;
  void *ud;
  int64_t deadline_ms;
  int noticed; /* fn was called, or a signal ended the transfer */
} tl__stop_watch;
void tl__http_stop_watch(tl__stop_watch *w);

/* http.c: the libcurl transport (tl_http_fn), and the transfer itself after the URL rules; with
 * loopback set, no proxy is used and every peer that is not a loopback address is refused unsent. */
int tl__curl_post(void *ud, const tl_http_request *req, tl_http_response *resp);
void tl__curl_transfer(const tl_http_request *req, tl_http_response *resp, int loopback);
void tl__http_response_clear(tl_http_response *resp);
/* text form-encoded (libcurl's escaping) in a string to free with free() (burn it first if text was a
 * secret); NULL if out of memory or libcurl cannot be loaded. */
char *tl__url_escape(const char *text);
/*
 * Checks a token endpoint URL: https, or plain http to a loopback address (an
 * IP literal in 127.0.0.0/8, [::1], or exactly localhost) in libcurl's
 * canonical form; never user information. *out_loopback tells whether the
 * host is such a loopback address (then no proxy, and the peer is checked).
 */
tl_status tl__url_classify(int *out_loopback, const char *url, tl_error *err);
/* NULL if name is a valid, harmless header name for the RT; else why not. */
const char *tl__rt_header_invalid(const char *name);
/* A Retry-After value in seconds, capped at a day; -1 if absent or unreadable. */
long tl__retry_after(const char *value, int64_t now_ms);

/* strict.c: strict mode (SPEC section 4 "Strict mode"; the interface the Hermes code uses).
 *
 * A surrogate refresh token is what a strict profile's Hermes files hold instead of the
 * real RT: "tlsurr1.<credential>.<profile>.<generation>.<nonce>.<mac>", printable (RFC 6749
 * VSCHAR), at most TL_SURROGATE_MAX bytes, authenticated with HMAC-SHA256 under the ledger's
 * key (table strict_key). It is NOT a refresh token: never fingerprint it into the lineage,
 * never present it to a server. Verifiable from the string alone plus the ledger's key, so a
 * surrogate that comes back through import or sync is recognised with tl__strict_verify. */
#define TL_SURROGATE_PREFIX "tlsurr1."
#define TL_SURROGATE_MAX    256
/* A new surrogate for (credential, profile) naming the credential's current surrogate generation
 * (its highest RT generation; see tl__strict_admit):
 * new secret string (free with tl_secret_free). TL_ENOTFOUND if the profile does not exist or
 * its pool does not hold the credential. Reads only (the key exists from migration 0004 on;
 * a ledger whose key row was deleted by hand gets a new one, inside the caller's open write
 * transaction if there is one). */
tl_status tl__strict_surrogate(char **out, tl_store *s, int64_t credential, int64_t profile, tl_error *err);
/* 1 if rt starts with TL_SURROGATE_PREFIX (a cheap test; says nothing about authenticity). */
int tl__strict_is_surrogate(const char *rt);
/* Checks a surrogate and returns what it names (each out may be NULL). TL_OK: authentic under
 * this ledger's key, its profile exists (the same one: a removed and re-added profile does not
 * revive it) and its credential exists. TL_EINVAL: malformed, truncated, forged, altered, or
 * from another ledger. TL_ENOTFOUND: its profile was removed or its credential is gone. Does
 * NOT check that the profile's pool still holds the credential (tl__strict_uses), nor the
 * credential's status; out_gen is the RT generation when it was issued. Never writes. */
tl_status tl__strict_verify(int64_t *out_cred, int64_t *out_profile, int64_t *out_gen, tl_store *s, const char *rt,
                            tl_error *err);
/* 1 if the profile's pool holds the credential. */
int tl__strict_uses(tl_store *s, int64_t profile, int64_t credential);
/* How long after a rotation the surrogate of the generation before is still accepted (ms). */
#define TL_SURROGATE_GRACE_MS 120000
/* serve's verdict on a presented surrogate (tl__strict_admit). */
typedef struct tl__surrogate_check {
  int64_t credential, profile, generation; /* what it names (0 when it is not authentic) */
  int64_t current;                         /* the credential's surrogate generation now */
  int grace;                               /* accepted as the generation before, within the grace */
  const char *refusal;                     /* TL_EREUSE's reason: "old_generation", "profile_not_strict" */
} tl__surrogate_check;
/* Whether serve accepts a surrogate: tl__strict_verify, its profile's pool holds the credential
 * (else TL_ENOTFOUND), the profile is strict now, and it names the credential's current surrogate
 * generation, or the one before within TL_SURROGATE_GRACE_MS of the rotation. An authentic one
 * that fails the last two is TL_EREUSE (a replayed copy; out->refusal says which). Never writes. */
tl_status tl__strict_admit(tl__surrogate_check *out, tl_store *s, const char *rt, tl_error *err);
/* "http://127.0.0.1:PORT" of the running serve, from its port file (checked: ours, 0600, held
 * by a live serve). TL_ENOTFOUND if serve is not running; TL_EINSECURE for a port file that is
 * a symlink or not a 0600 file of ours. */
tl_status tl__strict_portal_url(char *out, size_t n, tl_store *s, tl_error *err);
/* 1 if the profile (id) is in strict mode. */
int tl__strict_profile(tl_store *s, int64_t profile);
/* Strict and not being switched off (strict_profile.leaving_since): its files are written in strict form. */
int tl__strict_active(tl_store *s, int64_t profile);
/* The profile's strict epoch (strict_profile.since, renewed by every switch on) while it is strict and not
 * leaving; 0 otherwise. Equal epochs at two moments: no switch happened in between. */
int64_t tl__strict_epoch(tl_store *s, int64_t profile);
/* refresh.c's claim: TL_EBUSY (and s->coop_restart) if a profile whose files the cooperative refresh left
 * unlocked is no longer strict, or is being switched off: its file may hold the real token from now on. */
tl_status tl__strict_skips_check(tl_store *s, tl_error *err);
/* Migration 0004's code: the ledger's surrogate key, inside the open write transaction. */
tl_status tl__strict_key_create(tl_store *s, tl_error *err);
/* doctor's check: *ok 0 when strict profiles exist and nothing answers for them. */
void tl__strict_doctor(int *ok, char *detail, size_t n, tl_store *s);
/* doctor: every Hermes file the ledger keeps, read as sync reads it (no lock, nothing written). */
tl_status tl__hermes_files_doctor(int *ok, char *detail, size_t n, tl_store *s, tl_error *err);

/* agent.c: serve's local agent on the Unix socket "<ledger>-agent" (issue 21). */
typedef struct tl__agent tl__agent;
/* Starts the agent for serve's store (its own store on the same ledger, an accept thread). NULL if it cannot
 * (said through log); serve runs without it. Call before any other thread of serve exists (umask). */
tl__agent *tl__agent_start(tl_store *serve_store, void (*log)(void *ud, const char *line), void *ud);
/* Removes the socket (only the one it made), stops every thread, closes its store. Accepts NULL. */
void tl__agent_stop(tl__agent *a);
/* Prometheus text of the agent's counters (new string; a NULL agent says it is down). NULL if out of memory. */
char *tl__agent_metrics(tl__agent *a);
/* The agent's counters as JSON ({"ok":true,"answers":..}), asked through the socket; NULL if no trustworthy agent
 * answers. */
json_t *tl__agent_stats(tl_store *s);
/* The client, for tl_token_get and tl_refresh: 1 if a trustworthy agent answered (*rc, *out, err as the call
 * would have set them), 0 if the caller must do the work itself (no agent, TOKENLEDGER_AGENT=off, an untrusted
 * or silent socket). */
int tl__agent_token(tl_status *rc, tl_token **out, tl_store *s, const char *profile, const char *provider,
                    unsigned flags, tl_error *err);
int tl__agent_refresh(tl_status *rc, tl_token **out, tl_store *s, int64_t cred, unsigned flags, tl_error *err);
/* Closes the store's connection to the agent (tl_store_free). */
void tl__agent_disconnect(tl_store *s);

/* The live state of serve, from the port file <ledger>-serve (strict.c). */
typedef struct tl__serve_live {
  int exists, running, stale; /* a file; held by a live serve; left by a dead one */
  char host[64];
  int port;
  long pid;
} tl__serve_live;
tl_status tl__serve_probe(tl__serve_live *out, tl_store *s, tl_error *err);
tl_status tl__serve_port_path(char *out, size_t n, const tl_store *s, tl_error *err);
/* 1 if host is an IPv4 literal in 127.0.0.0/8 or the IPv6 literal ::1. */
int tl__serve_host_valid(const char *host);
/* http://host:port (brackets for IPv6); 0 if it does not fit. */
int tl__serve_url(char *out, size_t n, const char *host, int port);
/* The socket address of an IP literal host and a port, for serve's bind and the probe's connect; 0 if host is
 * not an IP literal (never resolved). */
struct sockaddr_storage;
unsigned tl__serve_sockaddr(struct sockaddr_storage *ss, const char *host, int port);
/* hermes_sync.c: serve's URL for strict files: the running serve's, else where it last listened. 0 if none. */
int tl__strict_url(char *out, size_t n, tl_store *s);
/* hermes_sync.c: does the profile's home file agree with its strict flag (no real Nous RT in a strict
 * profile's file, no surrogate in a plain one's)? why (may be NULL) names the place that disagrees.
 * expect: 1 strict form, 0 plain form, -1 as the ledger says (a switch off left marked disagrees). */
tl_status tl__strict_files_agree(int *out, char *why, size_t n, tl_store *s, int64_t profile, int expect,
                                 tl_error *err);

#endif
