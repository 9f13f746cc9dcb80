/*
 * hermes.h - declarations shared by the Hermes interoperability modules:
 *
 *   hermes_file.c  Hermes files without a ledger: loading (never blocking on a
 *                  FIFO), walking a document into grant "slots", filling a slot in
 *                  Hermes' own shape, Hermes' locks, atomic writes.
 *   hermes_adopt.c what a set of files holds, taken into the ledger: import and the
 *                  adopt step of sync/export/refresh (external rotations in order,
 *                  spent tokens refused), and the places that map a slot to its grant.
 *   hermes_sync.c  file sets under Hermes' lock order: sync, export, the write-back
 *                  after a refresh, and the cooperative refresh itself.
 *   keepfresh.c    keep-fresh rounds and the inotify watch.
 *
 * Nothing here is visible outside src/lib/.
 */
#ifndef TL_HERMES_H
#define TL_HERMES_H

#include "internal.h"

#include <limits.h>

#define TL_HERMES_MAX_FILE (16 * 1024 * 1024)

/* ---- slots: every place in a document that may hold a grant ------------------- */

typedef enum tl__slot_kind {
  TL_SLOT_SINGLETON, /* providers.<p> flat (Nous, MiniMax) or legacy systems.nous_portal */
  TL_SLOT_TOKENS,    /* providers.<p>.tokens (Codex, xAI); last_refresh lives in the holder */
  TL_SLOT_POOL,      /* credential_pool.<p>[i] */
  TL_SLOT_SHARED     /* the shared Nous store, whole document */
} tl__slot_kind;

typedef struct tl__slot {
  tl__slot_kind kind;
  char provider[130];
  char place[200]; /* singleton:<p>, pool:<p>:<id>, shared */
  char entry[80];  /* pool entry id (pool slots) */
  char path[320];  /* JSON path for messages */
  json_t *obj;     /* borrowed: the object holding refresh_token/access_token */
  json_t *holder;  /* borrowed: providers.<p> for TOKENS slots */
  json_t *array;   /* borrowed: the pool array holding a POOL slot */
} tl__slot;

typedef struct tl__slots {
  tl__slot *v;
  size_t n, cap;
} tl__slots;

enum {
  TL_WALK_SHARED = 1 << 0,  /* the document is a shared nous_auth.json */
  TL_WALK_TEMPLATE = 1 << 1 /* the ledger's own template: references allowed */
};

/* Walks a document into slots, checking every type the ledger reads. An input
 * file (no TL_WALK_TEMPLATE) that names a ledger object ({"$tl": ...}) is refused. */
tl_status tl__hf_walk(tl__slots *out, json_t *doc, const char *file, unsigned flags, tl_error *err);
void tl__hf_slots_free(tl__slots *ss);

/* Loads a JSON object. A missing file is TL_ENOTFOUND; anything but a regular file
 * (a FIFO, a device, a directory) is refused without blocking. sha: hex SHA-256 of
 * the bytes; mtime_ms may be NULL. */
tl_status tl__hf_load(json_t **out, char sha[65], int64_t *mtime_ms, const char *path, tl_error *err);

/* The trust rules every file operation here applies (see hermes_file.c): every directory from / to
 * the file yours or root's and writable by nobody else, links only yours or root's, the file's
 * directory and the file yours. TL_EINSECURE naming the path, the culprit and its owner, else
 * TL_OK (a missing or unreadable file is for the operation itself to report). */
tl_status tl__hf_check(const char *path, tl_error *err);

/* The keys whose string values are secrets wherever they appear in a Hermes file
 * (NULL-terminated): templates and original_json never keep them in plain text. */
extern const char *const tl__secret_keys[];

/* References from a template to the ledger: {"$tl": "rt"|"at", "credential": N}. */
json_t *tl__hf_ref(const char *what, int64_t cred);
int64_t tl__hf_ref_cred(const json_t *v);

/* ISO 8601 as Hermes writes it: micro "…T10:00:00.123000+00:00", zulu "…Z". */
void tl__hf_iso(char *out, size_t n, int64_t ms, int micro, int zulu);
/* The slot's access-token expiry (expires_at, expires_at_ms, the JWT exp), 0 if unknown. */
int64_t tl__hf_slot_expiry(const tl__slot *sl);
/* When the slot's tokens were obtained (obtained_at, last_refresh, agent_key_obtained_at), 0 if unknown. */
int64_t tl__hf_slot_obtained(const tl__slot *sl);
/* The slot's refresh token if it is a usable string, else NULL. */
const char *tl__hf_slot_rt(const tl__slot *sl);

/* A grant as the ledger holds it, to be written into a slot in Hermes' shape. */
typedef struct tl__grant {
  const char *provider;
  const char *access_token, *refresh_token; /* secrets */
  const char *id_token;                     /* secret; NULL: none known (the slot keeps its own) */
  int64_t expires_ms, obtained_ms, now_ms;
  const char *scope, *token_type, *client_id, *portal_base_url, *inference_base_url;
} tl__grant;

/* Fills the slot with the grant as Hermes writes it after a refresh. A slot that
 * already holds the grant's tokens is left as Hermes wrote it. Returns 1 if
 * anything but the derived expires_in / agent_key_expires_in changed. */
int tl__hf_fill(tl__slot *sl, const tl__grant *g);
/* Hermes' Anthropic login file (<HERMES_HOME>/.anthropic_oauth.json: accessToken, refreshToken, expiresAt in
 * epoch ms) filled with the grant, every other key kept. Returns 1 if changed. */
#define TL_HF_ANTHROPIC_PKCE ".anthropic_oauth.json"
int tl__hf_fill_anthropic_pkce(json_t *doc, const tl__grant *g);
/* Points a Nous slot at a portal (strict mode: serve's loopback URL). Returns 1 if changed. */
int tl__hf_set_portal(tl__slot *sl, const char *url);
/* Hermes' quarantine of a dead grant in a singleton: tokens out, last_auth_error in. */
int tl__hf_quarantine(tl__slot *sl, int64_t now_ms);
/* A Nous pool row Hermes would seed for a grant (device_code source). New reference. */
json_t *tl__hf_pool_row(const char *entry_id, const char *label, int64_t priority);

/* ---- locks and writes --------------------------------------------------------------- */

/* <dir>/<stem>.lock beside a file, as Hermes names it. */
void tl__hf_lock_path(char *out, size_t n, const char *file);
/* flock(LOCK_EX) on path, polling until deadline_ms; TL_EBUSY when not had in time. */
tl_status tl__hf_lock(int *out, const char *lock_path, int64_t deadline_ms, int64_t poll_limit_ms, tl_error *err);
void tl__hf_unlock(int fd);
/* The lock deadline for export and sync (TOKENLEDGER_LOCK_TIMEOUT_MS, default 15 s). */
int64_t tl__hf_lock_timeout_ms(void);

/* Atomic replace as Hermes does it: .<stem>_XXXXXX.tmp in the target's directory,
 * 0600, fsync, rename onto the symlink-resolved target, directory fsync. Refuses a
 * target or directory owned by another user. Stop signals are deferred while the
 * temporary file exists, so it never outlives the process. */
tl_status tl__hf_write(const char *target, const char *text, tl_error *err);
/* A spent refresh token that could not be replaced in a file is defused: its
 * characters overwritten in place (same length, no new disk block, JSON intact)
 * by "tl-spent-xxx...". Presented anywhere it is an unknown token, never a reuse;
 * adoption skips it, and the next write-back fills the slot. *out_n: how many
 * string values were overwritten. Only a regular file of the caller's. */
#define TL_HF_SPENT_PREFIX "tl-spent-"
/* The shortest token defused: the marker and at least four more characters. */
#define TL_HF_DEFUSE_MIN (sizeof TL_HF_SPENT_PREFIX - 1 + 4)
int tl__hf_is_defused(const char *rt);
/* The portal a Nous slot refreshes through (its own portal_base_url, else the file's Nous
 * state's) if that is plain http to a loopback address, else NULL: where a strict file sends
 * Hermes (serve), and where anyone on the machine could stand while serve is down. */
const char *tl__hf_slot_loopback_portal(json_t *doc, const tl__slot *sl);
tl_status tl__hf_defuse(int *out_n, const char *path, const char *const *rts, size_t nrts, tl_error *err);
/* Removes a file (the shared store on a terminal failure); absent is fine. */
tl_status tl__hf_remove(const char *target, tl_error *err);
/* The text Hermes would write: indent 2, key order kept (sorted for the shared store). */
char *tl__hf_dump(const json_t *doc, int shared);

/* ---- adopting what files hold (hermes_adopt.c) --------------------------------------- */

/* One integer from the first row of a query (0 when there is none), the failure's status kept. */
tl_status tl__q_int(int64_t *out, tl_store *s, const char *sql, tl_error *err, size_t n, const tl__arg *args);
#define TL_Q_INT(out, s, sql, err, ...)                                                                                \
  tl__q_int((out), (s), (sql), (err), sizeof((const tl__arg[]){__VA_ARGS__}) / sizeof(tl__arg),                        \
            (const tl__arg[]){__VA_ARGS__})
/* A statement whose rows (if any) are not read. */
tl_status tl__q_exec(tl_store *s, const char *sql, const char *what, tl_error *err, size_t n, const tl__arg *args);
#define TL_Q_EXEC(s, sql, what, err, ...)                                                                              \
  tl__q_exec((s), (sql), (what), (err), sizeof((const tl__arg[]){__VA_ARGS__}) / sizeof(tl__arg),                      \
             (const tl__arg[]){__VA_ARGS__})

/* One file of an operation: read under its lock (or, for import, without). */
typedef struct tl__hf {
  char *path;      /* absolute path as given (a symlink stays a symlink) */
  char *lock;      /* its Hermes lock file */
  int64_t profile; /* 0: a shared Nous store */
  char profile_name[80];
  int shared, is_root, is_home;
  int lock_fd;
  json_t *doc; /* NULL if the file does not exist */
  char sha[65];
  int64_t mtime;
  int in_step;             /* bytes are what the ledger last read or wrote */
  int created;             /* doc was made from a template: write it even if nothing changes */
  int64_t template_synced; /* when that template was taken */
  int unadopted;           /* holds a token adoption had to defer: do not mark it in step */
  tl__slots ss;
} tl__hf;

typedef struct tl__hfset {
  tl__hf *v;
  size_t n, cap;
  size_t refused;       /* files left out because they failed tl__hf_check */
  char **refused_paths; /* their paths, each counted once */
  tl_error refusal;     /* the first one's reason */
} tl__hfset;

void tl__hfset_free(tl__hfset *set);
/* TL_EINSECURE with the first refusal's reason if tl__hfset_add left a file out, else TL_OK.
 * Operations on several files call it after doing the rest: a refused home stops no other. */
tl_status tl__hfset_refused(const tl__hfset *set, const char *done, tl_error *err);
/* Drops file i from the set (its lock released, its memory freed). */
void tl__hfset_remove(tl__hfset *set, size_t i);
/* Adds a file to the set, unless it fails tl__hf_check (another user's home or file, a link of
 * theirs, a directory others can write): then it is left out and counted in set->refused. */
tl_status tl__hfset_add(tl__hfset *set, const char *path, int64_t profile, const char *profile_name, int shared,
                        int is_home, tl_error *err);

/* Lock waits of file operations: TOKENLEDGER_LOCK_TIMEOUT_MS, or the store's own (serve keeps it short). */
int64_t tl__lock_timeout(const tl_store *s);

typedef struct tl__adopt {
  tl_store *s;
  tl_report *report;   /* rows: profile, file, path, provider, credential, action, note */
  int import;          /* import: a spent token refuses everything; otherwise it is overwritten */
  char blocked_fp[65]; /* a spent RT found: reported after rollback (import) or commit (sync) */
  char blocked_where[PATH_MAX + 400];
} tl__adopt;

/* Takes what the set's files hold into the ledger inside the caller's write
 * transaction: external rotations ordered by when Hermes obtained them, new
 * grants, spent tokens. Files must have been read (tl__hfset_read). */
tl_status tl__adopt_set(tl__adopt *a, tl__hfset *set, tl_error *err);
/* Reads every file of the set (missing files are fine) and notes which are in step. */
tl_status tl__hfset_read(tl_store *s, tl__hfset *set, tl_error *err);
/* Records each file as the ledger now knows it (template with references, hash). */
tl_status tl__hfset_remember(tl_store *s, tl__hfset *set, tl_error *err);

/* The credential a slot of a file belongs to (0 if none): its reference, its
 * place, or its refresh token. Only credentials the file's profile holds (or the
 * one the shared store holds) are ever returned. */
tl_status tl__slot_credential(int64_t *out, tl_store *s, const tl__hf *f, const tl__slot *sl, tl_error *err);
tl_status tl__place_set(tl_store *s, int64_t profile, const char *place, int64_t cred, tl_error *err);

/* ---- file sets under Hermes' locks (hermes_sync.c) ---------------------------------- */

tl_status tl__hfset_lock(tl__hfset *set, int64_t deadline_ms, tl_error *err);
/* The strict profile whose surrogates the file holds (0: not a strict file). A shared store is
 * strict when one of its profiles is. */
tl_status tl__hf_strict_owner(int64_t *out, tl_store *s, const tl__hf *f, tl_error *err);
/* 1 if the slot of a strict file refreshes through a loopback portal that is not its grant's
 * own (cred's token URL): only serve, or whoever held serve's port while it was down, answers
 * there, so a real-looking refresh token in the slot is foreign, never Hermes' rotation. */
tl_status tl__hf_strict_foreign(int *out, tl_store *s, const tl__hf *f, const tl__slot *sl, int64_t cred,
                                tl_error *err);
void tl__hfset_unlock(tl__hfset *set);
/* Adds every file that holds credential cred (profile homes and shared stores). */
tl_status tl__hfset_for_credential(tl__hfset *set, tl_store *s, int64_t cred, tl_error *err);
/* Syncs exactly these files (profile homes' auth.json or shared stores): what the watch saw change. */
tl_status tl__sync_paths(tl_report *r, tl_store *s, char *const *paths, size_t n, tl_error *err);
/* Writes the ledger's state into every file of the set (Hermes' shape), under its locks. */
tl_status tl__hfset_write_back(tl_store *s, tl__hfset *set, tl_report *report, tl_error *err);

#endif
