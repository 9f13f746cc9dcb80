/*
 * tokenledger.h - the public interface of libtokenledger.
 *
 * tokenledger keeps OAuth 2 credentials for many Hermes Agent profiles in one
 * SQLite database, refreshes them under refresh-token rotation, and keeps a
 * ledger of every refresh token (RT) ever held so that reuse is caught before
 * a server sees it. Its promise: an RT leaves the machine at most once, every
 * presentation is recorded durably before it happens, and every rotation is on
 * record.
 *
 * Conventions (after libgit2):
 *   - Handles are opaque. Output parameters come first and are named `out`.
 *   - Every fallible function returns a tl_status: TL_OK (0) or a negative
 *     code. Codes are append-only and never renumbered.
 *   - Every fallible function takes an optional `tl_error *` (NULL: no
 *     details). Each call starts by clearing it, so a struct reused across
 *     calls never shows an earlier call's failure, and a success leaves it
 *     clean. On failure it holds the call's first, root-cause error (a later
 *     failure while cleaning up never overwrites it): the code, one
 *     impersonal line, and the underlying SQLite/curl/errno value. Messages
 *     never contain a secret.
 *   - Objects returned as "new" are freed by the caller with the type's own
 *     _free function, which accepts NULL. "Borrowed" pointers live as long as
 *     the object they came from.
 *   - The library never prints, exits or aborts.
 *
 * Threads (tests/unit/test_threads.c, also run under ThreadSanitizer):
 *   - A tl_store is not thread-safe: use it from one thread at a time; one
 *     store per thread is the simple rule. It may move to another thread
 *     between calls (no lock is held from one call to the next). Any number
 *     of stores, in any threads and processes, may open the same ledger: they
 *     coordinate through SQLite's locks and the ledger's own records, and the
 *     threads of one process are one owner to the refresh protocol, so they
 *     get the same single-flight and no-reuse guarantees as processes do.
 *   - A tl_report or tl_token is never changed by the library once returned:
 *     any number of threads may read one at a time; one of them frees it.
 *     A tl_error belongs to the call it is passed to.
 *   - Functions that take no store (tl_time_parse, tl_url_check,
 *     tl_fingerprint, tl_strategy_parse, tl_status_name, tl_version, tl_burn,
 *     ...) are reentrant; tl_secret_read("-") reads the process's standard
 *     input, which threads share.
 *   - There is no global initialisation to call. libcurl, libmicrohttpd and
 *     libcrypto are loaded (dlopen) the first time a call needs them, and
 *     libcurl's global init runs then, once, under pthread_once; SQLite, OpenSSL and
 *     Jansson initialise themselves thread-safely. So the host must not call
 *     curl_global_cleanup() while a store may still make a request, must not
 *     configure SQLite single-threaded (SQLITE_CONFIG_SINGLETHREAD), and must
 *     not change the environment (setenv, putenv) while a call may read it:
 *     the library reads its TOKENLEDGER_* variables, HERMES_SHARED_AUTH_DIR
 *     and SSL_CERT_FILE with getenv.
 *   - Callbacks (a tl_http_fn transport, a tl_login_prompt) run on the
 *     calling thread; a transport given to stores in several threads must be
 *     thread-safe itself.
 *   - Across a refresh's critical section the library defers SIGINT, SIGTERM,
 *     SIGHUP and SIGQUIT in the calling thread only (pthread_sigmask). A
 *     multi-threaded program that wants the same protection blocks them in
 *     every thread (before creating threads) and handles them with sigwait in
 *     one; otherwise a signal taken by another thread can end the process
 *     mid-refresh, and a later call finds that attempt's outcome unknown
 *     (TL_EUNKNOWN).
 */
#ifndef TOKENLEDGER_H
#define TOKENLEDGER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TL_BUILDING_SHARED) && defined(__GNUC__)
#define TL_EXTERN __attribute__((visibility("default")))
#else
#define TL_EXTERN
#endif

/*
 * The version of this header. tl_version() and tl_version_number() give the
 * library's own at run time; a program can compare the two to catch a header
 * and a library from different releases. TL_VERSION_NUMBER is
 * major * 1000000 + minor * 1000 + patch (SQLite's scheme), so 0.1.0 is 1000.
 * The soname follows the major version.
 */
#define TL_VERSION        "0.1.0"
#define TL_VERSION_MAJOR  0
#define TL_VERSION_MINOR  1
#define TL_VERSION_PATCH  0
#define TL_VERSION_NUMBER (TL_VERSION_MAJOR * 1000000 + TL_VERSION_MINOR * 1000 + TL_VERSION_PATCH)

/** The library's version text ("0.1.0"): static, never freed. */
TL_EXTERN const char *tl_version(void);

/** The library's TL_VERSION_NUMBER. */
TL_EXTERN int tl_version_number(void);

/** Status codes. Append-only; the CLI maps each to one exit code. */
typedef enum tl_status {
  TL_OK = 0,
  TL_ERROR = -1,       /**< failure with no more specific code */
  TL_EINVAL = -2,      /**< invalid argument or input */
  TL_ENOTFOUND = -3,   /**< no such profile, provider, credential, file */
  TL_EEXISTS = -4,     /**< the object already exists */
  TL_EREUSE = -5,      /**< the RT is already spent: use blocked locally */
  TL_EINSECURE = -6,   /**< file permissions/ownership/filesystem unsafe */
  TL_ETOONEW = -7,     /**< database schema newer than this binary */
  TL_EBUSY = -8,       /**< database or lock busy past the deadline */
  TL_ENOMEM = -9,      /**< out of memory */
  TL_EIO = -10,        /**< I/O error (disk full, unreadable file, ...) */
  TL_ECORRUPT = -11,   /**< not a tokenledger database, or damaged */
  TL_EREAUTH = -12,    /**< credential needs a new login */
  TL_EUNKNOWN = -13,   /**< outcome of a presentation unknown; operator must recover */
  TL_ETRANSIENT = -14, /**< server busy/unreachable; try later */
  TL_EFILE = -15       /**< a Hermes file cannot be read as one (malformed, wrong types); not transient */
} tl_status;

/** Error details, filled on failure when the caller passes one. */
typedef struct tl_error {
  tl_status code;     /**< same value the function returned */
  int sys;            /**< underlying SQLite, curl or errno code, 0 if none */
  char message[1024]; /**< one line, no secret, no trailing newline */
} tl_error;

/** Resets an error struct to "no error". Accepts NULL. */
TL_EXTERN void tl_error_clear(tl_error *err);

/** A short constant name for a status ("reuse blocked", ...). */
TL_EXTERN const char *tl_status_name(tl_status code);

/**
 * Copies text for a terminal: control characters (C0, DEL, C1), line
 * separators and bidi controls become \uXXXX, bytes that are not UTF-8 \xXX;
 * the rest is kept. Writes at most n bytes including the NUL, never half a
 * character; returns the length written. Messages in tl_error and the cells
 * of every tl_report are already escaped this way.
 */
TL_EXTERN size_t tl_text_escape(char *out, size_t n, const char *text);

/* ------------------------------------------------------------------------ */
/* Secrets                                                                  */
/* ------------------------------------------------------------------------ */

/** Overwrites n bytes at p in a way the compiler may not elide. */
TL_EXTERN void tl_burn(void *p, size_t n);

/** Burns a NUL-terminated secret string and frees it. Accepts NULL. */
TL_EXTERN void tl_secret_free(char *s);

/**
 * Reads a secret (one token) from a file path, or from standard input when
 * path is "-". Surrounding white space is removed. The result is new and must
 * be released with tl_secret_free. Refuses empty input, NUL bytes, inner
 * white space, and more than 16 KiB.
 */
TL_EXTERN tl_status tl_secret_read(char **out, const char *path, tl_error *err);

/**
 * Parses a time as Hermes writes them: ISO 8601 with or without fraction and
 * with Z, +hh:mm or no zone (naive = UTC), epoch seconds (integer or float),
 * or epoch milliseconds (any value above 1e12). out is ms since the epoch.
 */
TL_EXTERN tl_status tl_time_parse(int64_t *out, const char *text, tl_error *err);

/** Writes the lowercase hex SHA-256 of data (65 bytes with NUL) to out. */
TL_EXTERN void tl_fingerprint(char out[65], const char *data, size_t len);

/* ------------------------------------------------------------------------ */
/* Store                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct tl_store tl_store;

/** Flags for tl_store_open. */
enum {
  TL_OPEN_CREATE = 1 << 0,  /**< create the database (and directory) if missing */
  TL_OPEN_READONLY = 1 << 1 /**< open read-only; never migrates */
};

/** Schema version this library reads and writes. */
#define TL_SCHEMA_VERSION 9

/**
 * Opens (or creates) the ledger at path.
 *
 * A new directory is created 0700 and a new file 0600, without following
 * symlinks. An existing file must be a regular file owned by the caller and not
 * accessible to group or others (TL_EINSECURE), must not sit on a network
 * filesystem (TL_EINSECURE), must be a tokenledger database (TL_ECORRUPT) no
 * newer than TL_SCHEMA_VERSION (TL_ETOONEW). Older schemas are migrated.
 * Missing without TL_OPEN_CREATE: TL_ENOTFOUND, and nothing is created.
 *
 * @param out   new store, free with tl_store_free
 * @param path  database file path
 * @param flags TL_OPEN_* flags
 */
TL_EXTERN tl_status tl_store_open(tl_store **out, const char *path, unsigned flags, tl_error *err);

/** Closes the store and burns cached secrets. Accepts NULL. */
TL_EXTERN void tl_store_free(tl_store *store);

/** Who acts, for attempts and audit rows: profile (may be NULL) and command. */
TL_EXTERN void tl_store_set_actor(tl_store *store, const char *profile, const char *command);

/** Busy deadline in milliseconds for locks (default 10000). */
TL_EXTERN void tl_store_set_busy_timeout(tl_store *store, int ms);

/**
 * Progress of a long call: stage names what it is doing ("vacuum",
 * "profiles", ...), done and total count its units (total 0: unknown).
 */
typedef void (*tl_progress_fn)(void *ud, const char *stage, int64_t done, int64_t total);

/**
 * Sets the store's progress callback (NULL: none), called by long calls
 * (tl_compact; tl_import per file) on the calling thread, inside the call,
 * at most a few times a second. It must not use the store.
 */
TL_EXTERN void tl_store_set_progress(tl_store *store, tl_progress_fn fn, void *ud);

/**
 * Told when a stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) arrives while a
 * refresh token is at the server: the library defers the signal until the
 * answer is recorded, so that the new token is not lost, and waits at most
 * wait_ms more for it. signo is the signal. Called at most once per
 * presentation, on the calling thread, within about a second of the signal;
 * it must not use the store. A signal that arrives before any byte of the
 * request left ends the transfer at once instead (the RT stays unspent).
 * Only the libcurl transport (not one set by tl_store_set_transport) watches.
 */
typedef void (*tl_stop_notice_fn)(void *ud, int signo, int64_t wait_ms);

/** Sets the store's stop notice (NULL: none). */
TL_EXTERN void tl_store_set_stop_notice(tl_store *store, tl_stop_notice_fn fn, void *ud);

/** The schema version found when the file was opened (before migrating). */
TL_EXTERN int tl_store_schema_version_found(const tl_store *store);

/* ------------------------------------------------------------------------ */
/* Reports: the rows of a read command, for tables and --json                */
/* ------------------------------------------------------------------------ */

typedef struct tl_report tl_report;

TL_EXTERN void tl_report_free(tl_report *r);
TL_EXTERN size_t tl_report_columns(const tl_report *r);
TL_EXTERN size_t tl_report_rows(const tl_report *r);
/** Borrowed column name. */
TL_EXTERN const char *tl_report_column(const tl_report *r, size_t col);
/** Borrowed cell text, NULL for SQL NULL. */
TL_EXTERN const char *tl_report_cell(const tl_report *r, size_t row, size_t col);
/** Cell looked up by column name; NULL if absent or NULL. */
TL_EXTERN const char *tl_report_get(const tl_report *r, size_t row, const char *column);

enum {
  TL_JSON_OBJECT = 1 << 0 /**< render the first row as one object, not an array */
};
/**
 * Renders the report as JSON on one line: an array of objects (one per row,
 * keys in column order), or with TL_JSON_OBJECT the first row alone. Numbers
 * stay numbers; a flag (strict, strict_unfinished, ok, running, refreshed) is
 * true or false; a missing value (SQL NULL or empty text) is null. out is new;
 * free().
 */
TL_EXTERN tl_status tl_report_json(char **out, const tl_report *r, unsigned flags, tl_error *err);

/**
 * A new, empty report with these columns, for a caller's own rows (a tool's
 * one-line results), so that they print and render like the library's.
 * Errors: TL_EINVAL (no columns, an empty name). out is new; tl_report_free.
 */
TL_EXTERN tl_status tl_report_new(tl_report **out, const char *const *columns, size_t ncolumns, tl_error *err);

/**
 * Appends a row: cells[i] is column i's text (NULL: null), numeric[i] (may be
 * NULL) marks cells that are JSON numbers or true/false, which are checked
 * (TL_EINVAL if one is not). Text is stored escaped as tl_text_escape does,
 * so a report never holds a control character.
 */
TL_EXTERN tl_status tl_report_add_row(tl_report *r, const char *const *cells, const int *numeric, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Profiles, providers, credentials                                          */
/* ------------------------------------------------------------------------ */

/** True if name follows Hermes' profile rule ^[a-z0-9][a-z0-9_-]{0,63}$. */
TL_EXTERN int tl_profile_name_valid(const char *name);

/** Adds a profile; home may be NULL. TL_EEXISTS if the name is taken. */
TL_EXTERN tl_status tl_profile_add(tl_store *store, const char *name, const char *home, tl_error *err);

/**
 * Removes a profile and its pool entries. Credentials and their lineage stay:
 * fingerprints are never forgotten.
 */
TL_EXTERN tl_status tl_profile_remove(tl_store *store, const char *name, tl_error *err);

/**
 * Sets (or, with home NULL, clears) the profile's Hermes home: the directory
 * whose auth.json sync, export and every refresh keep in step. With create,
 * a missing directory is created 0700. The home must be a directory owned by
 * the caller.
 */
TL_EXTERN tl_status tl_profile_set_home(tl_store *store, const char *name, const char *home, int create, tl_error *err);

/**
 * Switches a profile's strict mode on or off (SPEC section 4 "Strict mode"). A strict
 * profile's Hermes files hold a surrogate refresh token and point at `tokenledger serve`,
 * which answers its refreshes, so the real refresh token never leaves the ledger. Switching
 * again to the state it is in changes nothing. Errors: TL_ENOTFOUND (no such profile).
 */
TL_EXTERN tl_status tl_profile_strict(tl_store *store, const char *name, int on, tl_error *err);

/** Lists profiles: name, home, entries, strict (1 in strict mode), created. */
TL_EXTERN tl_status tl_profile_list(tl_report **out, tl_store *store, tl_error *err);

/** A provider's token endpoint configuration. */
typedef struct tl_provider {
  const char *name;       /**< 'nous', 'openai-codex', ... */
  const char *token_url;  /**< https, or http to a loopback address */
  const char *device_url; /**< may be NULL */
  const char *client_id;
  const char *rt_header; /**< NULL: RT in the form field refresh_token */
  const char *scope;     /**< may be NULL */
  int skew_s;            /**< refresh this long before expiry; < 0: keep/default */
  int grace_s;           /**< server reuse grace window; < 0: keep/default */
} tl_provider;

/**
 * Creates or updates a provider. On update, NULL fields keep their value and
 * negative numbers keep theirs. URLs must be https, or http to 127.0.0.1,
 * ::1 or localhost.
 */
TL_EXTERN tl_status tl_provider_set(tl_store *store, const tl_provider *p, tl_error *err);

/**
 * Lists providers: name, token_url, device_url, client_id, rt_in (header
 * name or body:refresh_token), skew_s, grace_s, scope, credentials (in use),
 * keys (API-key and borrowed pool entries), refreshes (configured,
 * not_configured, or api_keys_only: a provider only API keys use, which
 * tokenledger never refreshes).
 */
TL_EXTERN tl_status tl_provider_list(tl_report **out, tl_store *store, tl_error *err);

/** Checks that url is https, or http to a loopback host. */
TL_EXTERN tl_status tl_url_check(const char *url, tl_error *err);

/** What to store as a new credential. */
typedef struct tl_credential_spec {
  const char *provider;      /**< must exist (nous is built in) */
  const char *profile;       /**< must exist */
  const char *refresh_token; /**< SECRET, required */
  const char *access_token;  /**< SECRET, may be NULL */
  int64_t expires_at_ms;     /**< access-token expiry, 0 if unknown */
  const char *label;         /**< may be NULL */
  const char *token_url;     /**< NULL: the provider's */
  const char *origin;        /**< 'login' or 'import'; NULL = 'import' */
  const char *entry_id;      /**< Hermes pool id; NULL = generated */
  const char *source;        /**< Hermes pool source; NULL = 'manual' */
} tl_credential_spec;

/**
 * Stores a credential with its RT as the root of a new lineage and puts it in
 * the profile's pool. If the RT is already the live RT of a credential, the
 * profile is attached to that credential instead (one grant, one credential).
 * If the RT is spent, nothing is stored, a reuse_blocked audit event is
 * written, and TL_EREUSE is returned with a message naming when, by whom and
 * in which generation it was spent.
 *
 * @param out_id optional: the credential id
 */
TL_EXTERN tl_status tl_credential_add(int64_t *out_id, tl_store *store, const tl_credential_spec *spec, tl_error *err);

/**
 * Removes a credential from the ledger's use: it leaves every pool and grant
 * place, its open refresh token is retired (plaintext erased), its access
 * token burned, and it is marked as needing a login. Its lineage, attempts
 * and audit rows stay (fingerprints are never forgotten, so its tokens are
 * refused if they come back). A live credential (active or uncertain) is
 * removed only with force, and not while Hermes files the ledger keeps hold
 * it (they would go on spending a token the ledger retired).
 * Errors: TL_ENOTFOUND, TL_EINVAL (live: without force, or held by Hermes
 * files), TL_EBUSY (its refresh token is being presented). out (may be NULL) gets one row:
 * credential, provider, label, status (before), profiles, entries,
 * retired_rt (fingerprint prefix), files (Hermes files that hold it).
 */
TL_EXTERN tl_status tl_credential_remove(tl_report **out, tl_store *store, int64_t credential, int force,
                                         tl_error *err);

/**
 * Lists every credential, used or not: credential, provider, label, status,
 * profiles (names, comma-separated), entries, rt_generation and rt_state of
 * its latest refresh token, access_expires, created, reason (why it is not
 * active).
 */
TL_EXTERN tl_status tl_credential_list(tl_report **out, tl_store *store, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Read commands                                                             */
/* ------------------------------------------------------------------------ */

/**
 * Per-profile token status, one row per pool entry; profile may be NULL.
 * Columns: profile, provider, entry, priority, source, auth_type, kind
 * (oauth, api_key, borrowed), label, credential, credential_status,
 * access_expires, access_token (valid, expired, unknown; needs_login or
 * unknown_outcome for a credential that cannot refresh; api_key or borrowed
 * for entries without lineage), expires_in_s, rt_generation, rt_state,
 * rt_fingerprint, last_status, cooldown_until, cooling_until (only while the
 * cooldown lasts), request_count, strict, strategy, reason.
 */
TL_EXTERN tl_status tl_status_report(tl_report **out, tl_store *store, const char *profile, tl_error *err);

/**
 * Lineage (view v_lineage) with each token's rt id, its parent's and the
 * credential's status; credential 0 = all.
 */
TL_EXTERN tl_status tl_lineage_report(tl_report **out, tl_store *store, int64_t credential, tl_error *err);

/**
 * Audit events, newest last; limit 0 = all; credential 0 = all. `summary`
 * is the detail as key=value words, `detail` the JSON object.
 */
TL_EXTERN tl_status tl_audit_report(tl_report **out, tl_store *store, int64_t credential, int64_t limit, tl_error *err);

/** Refresh attempts (view v_refresh_history); credential 0 = all. */
TL_EXTERN tl_status tl_history_report(tl_report **out, tl_store *store, int64_t credential, int64_t limit,
                                      tl_error *err);

/**
 * What is this RT? One row: verdict (current | presented | spent | unknown_to_ledger | unknown_outcome),
 * and when known: credential, provider, label, generation, state, issued, retired,
 * presented_by, presented_at, profiles. Never writes.
 */
TL_EXTERN tl_status tl_rt_check(tl_report **out, tl_store *store, const char *rt, tl_error *err);

/**
 * Health checks: integrity, permissions of the file, its SQLite files and its
 * directory, the schema, the write lock, rescue files, stale in-flight
 * attempts, invariants.
 * One row per check: check, ok (1/0), detail. With fix set, repairs what is
 * safe to repair (file modes; dead in-flight attempts become unknown).
 * *out_problems counts failed checks after fixing.
 */
TL_EXTERN tl_status tl_doctor(tl_report **out, int *out_problems, tl_store *store, int fix, tl_error *err);

/**
 * Retention: deletes settled refresh attempts finished keep_ms or more ago
 * (with 0, every settled one, up to this millisecond) whose RT is spent
 * (rotated, rejected, retired), then VACUUMs. Never deletes a refresh
 * token row (fingerprints are what catches reuse) nor an audit row.
 * *out_deleted: attempts removed; *out_bytes_before/after: file size.
 */
TL_EXTERN tl_status tl_compact(int64_t *out_deleted, int64_t *out_bytes_before, int64_t *out_bytes_after,
                               tl_store *store, int64_t keep_ms, tl_error *err);

/**
 * Repairs the modes of an existing ledger before it can be opened: the file
 * (and its -wal/-shm/-journal companions) to 0600, and takes write access
 * from group and others on its directory. Only regular files and a directory
 * owned by the caller are touched; symlinks are refused.
 */
TL_EXTERN tl_status tl_store_fix_permissions(const char *path, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Tokens and refresh                                                       */
/* ------------------------------------------------------------------------ */

/** Pool strategies. */
typedef enum tl_strategy { TL_FILL_FIRST = 0, TL_ROUND_ROBIN = 1, TL_LEAST_USED = 2, TL_RANDOM = 3 } tl_strategy;

/** Parses "fill_first" etc. */
TL_EXTERN tl_status tl_strategy_parse(tl_strategy *out, const char *name, tl_error *err);

/** Sets a profile's strategy for a provider. */
TL_EXTERN tl_status tl_strategy_set(tl_store *store, const char *profile, const char *provider, tl_strategy s,
                                    tl_error *err);

/** A profile's strategy for a provider (fill_first unless one was set). Errors: TL_ENOTFOUND. */
TL_EXTERN tl_status tl_strategy_get(tl_strategy *out, tl_store *store, const char *profile, const char *provider,
                                    tl_error *err);

/** The strategy's name ("fill_first", ...): static. */
TL_EXTERN const char *tl_strategy_name(tl_strategy s);

/** A valid access token and where it came from. */
typedef struct tl_token {
  char *access_token;    /**< SECRET */
  int64_t expires_at_ms; /**< 0 if unknown */
  int64_t credential;
  char *entry_id;
  char *base_url; /**< inference base URL if known, else NULL */
  int refreshed;  /**< 1 if this call refreshed */
} tl_token;

/**
 * Renders a token as JSON: access_token, expires_at (ISO 8601), entry_id,
 * base_url, credential, refreshed. The result holds the secret: out is new
 * and must be released with tl_secret_free.
 */
TL_EXTERN tl_status tl_token_json(char **out, const tl_token *t, tl_error *err);

/** Burns and frees a token. Accepts NULL. */
TL_EXTERN void tl_token_free(tl_token *t);

/** Flags for tl_token_get / tl_refresh. */
enum {
  TL_REFRESH_FORCE = 1 << 0 /**< refresh even if the access token is fresh */
};

/**
 * Returns a valid access token for (profile, provider), refreshing only when
 * it expires within the provider's skew. Single-flight across processes.
 * Errors: TL_ENOTFOUND, TL_EREAUTH, TL_EUNKNOWN, TL_ETRANSIENT, TL_EREUSE,
 * TL_EBUSY.
 */
TL_EXTERN tl_status tl_token_get(tl_token **out, tl_store *store, const char *profile, const char *provider,
                                 unsigned flags, tl_error *err);

/** Refreshes one credential (SPEC section 3). out may be NULL. */
TL_EXTERN tl_status tl_refresh(tl_token **out, tl_store *store, int64_t credential, unsigned flags, tl_error *err);

/** Marks a pool entry exhausted after an API error (401, 402, 429 ...). */
TL_EXTERN tl_status tl_entry_report(tl_store *store, const char *profile, const char *provider, const char *entry_id,
                                    int http_status, int64_t reset_at_ms, tl_error *err);

/** Operator decisions for an RT whose presentation outcome is unknown. */
typedef enum tl_recover_action {
  TL_RECOVER_RETRY = 1,     /**< assume it was not sent; present it once more */
  TL_RECOVER_MARK_DEAD = 2, /**< give it up; the credential needs a new login */
  TL_RECOVER_RESCUE = 3     /**< record the answer a rescue file kept (see tl_refresh) */
} tl_recover_action;

/**
 * Resolves an unknown outcome on a credential. With TL_RECOVER_RESCUE, the
 * server's answers kept in rescue files beside the ledger
 * (<ledger>-rescue-<credential>-<attempt>, written when a refresh could not
 * record what the server said, e.g. on a full disk) are recorded as the
 * refresh would have, and the files removed: TL_ENOTFOUND if there is none.
 * TL_RECOVER_RETRY is refused (TL_EREUSE) while such a file exists.
 */
TL_EXTERN tl_status tl_recover(tl_token **out, tl_store *store, int64_t credential, tl_recover_action action,
                               tl_error *err);

/** How far the request behind an unknown outcome got (tl_unknown_sent). */
typedef enum tl_sent {
  TL_SENT_MAYBE = 0,    /**< bytes may have reached the server (a timeout, a reset after sending, a process that
                             died mid-request): it may have rotated the RT, so presenting it again may be reuse */
  TL_SENT_ANSWERED = 1, /**< the server answered (unusably): it certainly received the RT */
  TL_SENT_NOTHING = 2   /**< provably no byte of the request left: the RT is unspent */
} tl_sent;

/**
 * What is on record about the request of a credential's unknown outcome (its
 * last attempt recorded `unknown`), so that a tool can advise: TL_RECOVER_RETRY
 * is safe only for TL_SENT_NOTHING. A presentation that provably sent nothing
 * is normally recorded `not_sent` (its RT stays current and needs no
 * decision), so an unknown outcome is almost always TL_SENT_MAYBE or
 * TL_SENT_ANSWERED. Errors: TL_ENOTFOUND (no such credential), TL_EINVAL (no
 * unknown outcome to decide). Never writes.
 */
TL_EXTERN tl_status tl_unknown_sent(tl_sent *out, tl_store *store, int64_t credential, tl_error *err);

/** Resolves (profile, provider) to the credential its strategy picks first. */
TL_EXTERN tl_status tl_credential_find(int64_t *out, tl_store *store, const char *profile, const char *provider,
                                       tl_error *err);

/** Shows the user where to approve a device login. Strings borrowed for the call. */
typedef void (*tl_login_prompt)(void *ud, const char *verification_uri, const char *verification_uri_complete,
                                const char *user_code, int expires_in);

/**
 * Logs in with the OAuth 2.0 device authorization grant (RFC 8628) at the
 * provider's device endpoint, waits for the user's approval, and stores the
 * new grant as a credential (origin login) in the profile's pool.
 * Errors: TL_ENOTFOUND (no profile or endpoints), TL_ETRANSIENT (timed out,
 * unreachable), TL_EREAUTH (denied or expired), TL_EREUSE.
 */
TL_EXTERN tl_status tl_login(int64_t *out_credential, tl_store *store, const char *profile, const char *provider,
                             tl_login_prompt prompt, void *ud, tl_error *err);

/**
 * Logs in (as tl_login) in place of a dead credential, for every profile and
 * shared store that used it: one login, one new grant. The new credential
 * keeps the dead one's label; each profile's pool entry keeps its id and
 * priority and now names the new grant, every grant place (a singleton, a
 * shared Nous store) follows, and their Hermes files get it at once. The dead
 * credential stays for its lineage, used by no profile.
 * Errors: TL_ENOTFOUND (no such credential, no endpoints), TL_EINVAL (the
 * credential is live, or no profile uses it), TL_EUNKNOWN (its last refresh
 * has an unknown outcome: decide with tl_recover first), and tl_login's.
 */
TL_EXTERN tl_status tl_login_replace(int64_t *out_credential, tl_store *store, int64_t credential,
                                     tl_login_prompt prompt, void *ud, tl_error *err);

/* ------------------------------------------------------------------------ */
/* Hermes interoperability                                                  */
/* ------------------------------------------------------------------------ */

typedef struct tl_import_opts {
  const char *profile; /**< profile for a single file or home (default "default") */
  int all_profiles;    /**< PATH is a Hermes root: root = default, profiles/<name>, shared store */
  int dry_run;         /**< report what would happen; write nothing */
} tl_import_opts;

/**
 * Imports an auth.json, a Hermes home or (all_profiles) a Hermes root in one
 * transaction. The same grant anywhere becomes one credential; the same
 * profile, provider and place (singleton or pool entry id) with a new refresh
 * token is the same grant rotated by Hermes (an external rotation, never a
 * second credential). Unknown keys are kept for export. A refresh token the
 * ledger knows as spent refuses the whole import (TL_EREUSE, audited). Bad
 * input: TL_EINVAL naming the file, the JSON path and the reason; the ledger
 * is untouched. Never contacts a server. A home or root becomes the profiles'
 * sync target (their home); any other file only records where the grant came
 * from. The report has one row per grant place: profile, file, path,
 * provider, credential, action (new, attached, unchanged, external_rotation,
 * external_stale, api_key, borrowed, no_refresh_token, ...), note.
 */
TL_EXTERN tl_status tl_import(tl_report **out, tl_store *store, const char *path, const tl_import_opts *opts,
                              tl_error *err);

/**
 * Writes the ledger's tokens into the profile's home auth.json (or output),
 * under Hermes' locks, patching only the fields tokenledger owns; atomic
 * replace at 0600. The home file is synced (what Hermes changed is adopted
 * first, with every other file holding the same grants and the shared store);
 * a file elsewhere that holds a refresh token the ledger does not know is
 * refused (TL_EINVAL), never overwritten. With shared_dir, also writes
 * shared_dir/nous_auth.json under nous_auth.lock and keeps it current from
 * then on.
 */
TL_EXTERN tl_status tl_export(tl_report **out, tl_store *store, const char *profile, const char *output,
                              const char *shared_dir, tl_error *err);

/**
 * For one profile (every file holding one of its grants) or, with profile
 * NULL, every home and shared store: takes Hermes' locks in Hermes' order,
 * adopts what Hermes changed (new refresh tokens are external rotations,
 * ordered by when Hermes obtained them; a spent one is refused and
 * overwritten), then writes the ledger's state back in Hermes' shape. A
 * profile whose Nous grant died and was replaced by a new login gets the new
 * grant in place of the quarantined state. TL_EBUSY if the locks are not had
 * within TOKENLEDGER_LOCK_TIMEOUT_MS (15 s). One bad file never stops the
 * rest: a file that cannot be read as a Hermes file (malformed JSON, wrong
 * types) is left exactly as it is, reported as a row with action
 * "unreadable" and the reason in note, every other file is synced, and the
 * call returns TL_EFILE (or the first such file's own status, e.g.
 * TL_EINSECURE) with *out still set to the report. Moving the file aside and
 * syncing again rewrites it from the ledger. tl_export of a profile's home
 * does the same for the files it syncs.
 */
TL_EXTERN tl_status tl_sync(tl_report **out, tl_store *store, const char *profile, tl_error *err);

/**
 * Hermes homes the ledger does not know that hold grants: under every Hermes
 * root one of the ledger's homes is in (the root itself, Hermes' default
 * profile, and each <root>/profiles/<name>), a home no profile has whose
 * auth.json holds a refresh token. Hermes refreshes those alone; sync does
 * not adopt them (importing is the user's decision: a new home may be a copy
 * of another's). Reads only. Columns: profile (the name Hermes gives it),
 * home, grants (refresh tokens in its auth.json), unknown (of them, how many
 * the ledger has never seen).
 */
TL_EXTERN tl_status tl_hermes_new_homes(tl_report **out, tl_store *store, tl_error *err);

/**
 * One round of keep-fresh: refreshes every active credential that a pool
 * holds and whose access token expires within ahead_ms (or is unknown), each
 * cooperatively (adopting what Hermes' files hold first, under their locks),
 * then (with sync) syncs every profile that has a Hermes home and every shared
 * store. Credentials with an unknown outcome, needing a login, or whose
 * provider has no endpoint are reported ("attention"), never presented and not
 * counted as failures. The report: credential, provider, action (refreshed,
 * fresh, waiting, attention, failed, sync:<file action>), expires, detail.
 * *out_failures counts failed refreshes and syncs.
 */
TL_EXTERN tl_status tl_keep_fresh(tl_report **out, int *out_failures, tl_store *store, int64_t ahead_ms, int sync,
                                  tl_error *err);

/**
 * A watch on every Hermes home and shared Nous store the ledger knows
 * (inotify): keep-fresh --watch syncs as soon as Hermes writes a file, so a
 * rotation in one profile reaches its siblings and the shared store at once.
 */
typedef struct tl_watch tl_watch;

/** Opens a watch on the homes and shared stores known now. out is new; tl_watch_free. */
TL_EXTERN tl_status tl_watch_open(tl_watch **out, tl_store *store, tl_error *err);

/** Waits up to timeout_ms for a change of an auth.json or nous_auth.json; *changed is 1 if one happened. */
TL_EXTERN tl_status tl_watch_wait(tl_watch *w, int timeout_ms, int *changed, tl_error *err);

/**
 * Syncs exactly the files written since the last call (each under its own
 * lock: adopt, write back), so a rotation is adopted while the file that holds
 * it still does. The report is tl_sync's.
 */
TL_EXTERN tl_status tl_watch_sync(tl_report **out, tl_watch *w, tl_store *store, tl_error *err);

/** Closes the watch. Accepts NULL. */
TL_EXTERN void tl_watch_free(tl_watch *w);

/* ------------------------------------------------------------------------ */
/* Strict mode: tokenledger serve                                           */
/* ------------------------------------------------------------------------ */

/** How tokenledger serve runs. Zeroed fields take the defaults. */
typedef struct tl_serve_opts {
  const char *listen;  /**< "127.0.0.1:PORT", "[::1]:PORT" or "localhost:PORT"; NULL: the last
                            address serve used for this ledger, else 127.0.0.1 on a free port */
  int64_t interval_ms; /**< keep-fresh round every interval (default 60 s); < 0: no keep-fresh */
  int64_t ahead_ms;    /**< keep-fresh refreshes what expires within this (default 600 s) */
  int no_sync;         /**< keep-fresh does not sync profiles' files */
  int threads;         /**< most connections at once (default 64, at most 256) */
  /** Polled about every 100 ms; serve stops cleanly when it returns non-zero. Required. */
  int (*should_stop)(void *ud);
  /** Called once when serve is listening, with its URL (http://127.0.0.1:PORT). May be NULL. */
  void (*on_ready)(void *ud, const char *url);
  /** One line about what serve did (no secret, no newline). May be NULL. Called from any thread. */
  void (*on_log)(void *ud, const char *line);
  void *ud;
} tl_serve_opts;

/**
 * Runs `tokenledger serve` for the store's ledger until should_stop says so: a loopback HTTP
 * server that answers Hermes' Nous Portal calls for strict profiles (POST /api/oauth/token
 * with a surrogate refresh token, and the device-code login forwarded to the real portal),
 * plus the keep-fresh loop (tl_keep_fresh every interval, on this thread and this store).
 * Request threads take turns on the same store (it is not thread-safe). Binds loopback only, writes
 * its address to the 0600 port file "<ledger>-serve" (held with a lock while serve runs,
 * removed on return), and remembers the address so a restart binds the same port.
 * Errors: TL_EINVAL (a listen address that is not loopback), TL_EEXISTS (another serve runs
 * for this ledger), TL_EBUSY (the port belongs to another program), TL_EINSECURE (the port
 * file is a symlink or not a 0600 file of ours), TL_EIO.
 */
TL_EXTERN tl_status tl_serve_run(tl_store *store, const tl_serve_opts *opts, tl_error *err);

/**
 * One row about strict mode: running (1/0), url and pid of the running serve, port_file,
 * strict_profiles (count), strict (their names), last_url (where serve last listened).
 * Never writes.
 */
TL_EXTERN tl_status tl_serve_status(tl_report **out, tl_store *store, tl_error *err);

/* ------------------------------------------------------------------------ */
/* HTTP seam (tests and benchmarks)                                         */
/* ------------------------------------------------------------------------ */

/** What the transport must send. All strings borrowed for the call. */
typedef struct tl_http_request {
  const char *url;
  const char *body;         /**< see content_type; may hold a secret */
  const char *rt_header;    /**< header name for the RT, or NULL */
  const char *rt_value;     /**< SECRET, or NULL */
  long connect_timeout_ms;  /**< suggested */
  long timeout_ms;          /**< suggested */
  const char *content_type; /**< of body; NULL: application/x-www-form-urlencoded */
} tl_http_request;

/** How far a failed request got. */
typedef enum tl_http_failure {
  TL_HTTP_DONE = 0,     /**< a response arrived: see status/body */
  TL_HTTP_NOT_SENT = 1, /**< failed before any byte could reach the server */
  TL_HTTP_LOST = 2      /**< may have reached the server; response lost */
} tl_http_failure;

typedef struct tl_http_response {
  tl_http_failure failure;
  long status; /**< HTTP status when failure == TL_HTTP_DONE */
  char *body;  /**< new (malloc), may be NULL */
  size_t body_len;
  long retry_after; /**< seconds from Retry-After, -1 if absent */
  char detail[256]; /**< local failure description (no secret) */
} tl_http_response;

/** A transport: performs one POST. Returns 0; failures go in resp. */
typedef int (*tl_http_fn)(void *ud, const tl_http_request *req, tl_http_response *resp);

/** Replaces the libcurl transport (NULL restores it). */
TL_EXTERN void tl_store_set_transport(tl_store *store, tl_http_fn fn, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* TOKENLEDGER_H */
