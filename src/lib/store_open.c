/*
 * store_open.c - opening a ledger safely: where it lives, the checks of its
 * files before SQLite touches them, creation (migrated under a temporary name,
 * then linked into place), identification and the schema check, and the
 * pragmas of every connection; tl_store_free and the store's settings.
 *
 * Invariants kept here:
 *   - The ledger's place: its directory is resolved (symlinks anywhere in it
 *     are fine) and must be ours or root's and writable by nobody else; only
 *     the file's own name must not be a symlink. A missing directory is made
 *     0700 (one level) and removed again if the ledger cannot be made.
 *   - A new ledger is built under a temporary name in that directory, fully
 *     migrated (migrate.c), then linked into place: an existing ledger
 *     (another init won the race) is never replaced, and creation never
 *     removes a file someone else initialised.
 *   - An existing file must be a regular file of ours with no group/other
 *     access, on a local filesystem; its -wal, -shm and -journal, if present,
 *     must pass the same checks; all before SQLite touches them.
 *   - Nothing is written to a file before it is known to be a tokenledger
 *     database no newer than this binary whose schema is exactly what the
 *     migrations made (tl__schema_rows): a trigger, view, index or table
 *     added or changed by someone else is refused before any statement runs.
 *     Connections run in SQLite's defensive mode.
 *   - Every connection runs WAL, foreign_keys=ON, secure_delete=ON (freed
 *     space and pages are zeroed, so the file keeps no erased secret; db.c
 *     empties the WAL after such a commit), and a busy timeout that is the
 *     lock deadline. On a read-only filesystem the
 *     ledger opens read-only, so a valid access token is still served.
 *   - Writers wait only on SQLite's own locks (fcntl locks the kernel releases
 *     when their holder dies; a copied file carries none), with a busy handler
 *     that sleeps in short jittered steps until the deadline.
 */
#define _GNU_SOURCE /* O_PATH, AT_EMPTY_PATH */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define TL_APPLICATION_ID 1414284359

/*
 * Pages of a new ledger. A commit writes every page it changed into the WAL,
 * and syncing it costs by the byte: a rotation changes about ten pages per
 * transaction (a row and a few index entries each), so 1 KiB pages make each
 * durable point about a quarter of what 4 KiB pages cost, for one more level
 * in the largest b-trees. Existing ledgers keep the page size they have.
 */
#ifndef TL_PAGE_SIZE_TEXT
#define TL_PAGE_SIZE_TEXT "1024"
#endif

static const char *network_fs(long type)
{
  switch ((unsigned long)type) {
  case 0x6969UL: return "NFS";
  case 0x517BUL: return "SMB";
  case 0xFF534D42UL: return "CIFS";
  case 0xFE534D42UL: return "SMB2";
  case 0x564c: return "NCP";
  case 0x47504653UL: return "GPFS";
  case 0x65735546UL: return "FUSE";
  case 0x0BD00BD0UL: return "Lustre";
  case 0x6B414653UL: return "AFS";
  case 0x73757245UL: return "Coda";
  case 0x01021997UL: return "9p";
  case 0x00C36400UL: return "CephFS";
  case 0x013111A8UL: return "IBRIX";
  case 0x5346414FUL: return "OpenAFS";
  case 0x61636673UL: return "ACFS";
  case 0x7461636FUL: return "OCFS2";
  case 0x19830326UL: return "BeeGFS";
  case 0xAAD7AAEAUL: return "PanFS";
  case 0x786F4256UL: return "vboxsf";
  case 0x7C7C6673UL: return "prl_fs";
  case 0x01021994UL: return NULL; /* tmpfs */
  default: return NULL;
  }
}

/* The file checks: regular, ours, no group/other access, local. Shared by the ledger and its sidecars. */
static tl_status check_stat(const struct stat *st, const char *path, const char *what, tl_error *err)
{
  if (!S_ISREG(st->st_mode))
    return tl__err(err, TL_EINSECURE, 0, "%s: %s is not a regular file; refusing it", path, what);
  if (st->st_uid != geteuid())
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: %s owned by uid %ld, not by you (uid %ld); refusing a ledger another user controls", path, what,
                   (long)st->st_uid, (long)geteuid());
  if (st->st_mode & 077)
    return tl__err(err, TL_EINSECURE, 0, "%s: %s has mode %04o, which lets group or others read it; run 'chmod 600 %s'",
                   path, what, (unsigned)(st->st_mode & 07777), path);
  return TL_OK;
}

/* Checks an open descriptor of the database file. */
static tl_status check_file(int fd, const char *path, tl_error *err)
{
  struct stat st;
  if (fstat(fd, &st) != 0)
    return tl__err(err, TL_EIO, errno, "%s: cannot stat: %s", path, strerror(errno));
  tl_status rc = check_stat(&st, path, "the ledger", err);
  if (rc != TL_OK)
    return rc;
  struct statfs fs;
  if (fstatfs(fd, &fs) == 0) {
    const char *net = network_fs((long)fs.f_type);
    if (net && !getenv("TOKENLEDGER_ALLOW_NETWORK_FS"))
      return tl__err(err, TL_EINSECURE, 0,
                     "%s: on a %s filesystem, where SQLite locking is unreliable; keep the ledger on a local disk",
                     path, net);
  }
  return TL_OK;
}

/* SQLite's files beside the ledger: whoever can write them can change or read what the ledger holds. */
static const char *const sidecars[] = {"-wal", "-shm", "-journal"};

tl_status tl__check_sidecars(const char *path, tl_error *err)
{
  for (size_t i = 0; i < sizeof sidecars / sizeof *sidecars; i++) {
    char side[PATH_MAX + 16];
    struct stat st;
    snprintf(side, sizeof side, "%s%s", path, sidecars[i]);
    if (lstat(side, &st) != 0) {
      if (errno == ENOENT)
        continue;
      return tl__err(err, TL_EIO, errno, "%s: cannot stat: %s", side, strerror(errno));
    }
    if (S_ISLNK(st.st_mode))
      return tl__err(err, TL_EINSECURE, 0, "%s: SQLite's %s file is a symbolic link; refusing to use the ledger", path,
                     sidecars[i]);
    tl_status rc = check_stat(&st, side, "this SQLite file beside the ledger", err);
    if (rc != TL_OK)
      return rc;
  }
  return TL_OK;
}

/* The directory that holds the ledger: ours (or root's) and writable by nobody else. */
tl_status tl__check_dir(const char *dir, tl_error *err)
{
  struct stat st;
  if (stat(dir, &st) != 0)
    return tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: %s", dir, strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return tl__err(err, TL_EIO, ENOTDIR, "%s: not a directory", dir);
  if (st.st_uid != geteuid() && st.st_uid != 0)
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: the ledger's directory is owned by uid %ld, not by you (uid %ld); another user could replace "
                   "the ledger or plant files beside it",
                   dir, (long)st.st_uid, (long)geteuid());
  if ((st.st_mode & S_ISVTX) && (st.st_mode & 022))
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: the ledger's directory is shared with others (permissions %04o, like /tmp): they can create "
                   "files beside the ledger; keep the ledger in a directory of your own, such as ~/.hermes",
                   dir, (unsigned)(st.st_mode & 07777));
  if (st.st_mode & 022)
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: the ledger's directory has mode %04o: others can create, replace or plant files beside the "
                   "ledger; run 'chmod go-w %s', or keep the ledger elsewhere",
                   dir, (unsigned)(st.st_mode & 07777), dir);
  return TL_OK;
}

/*
 * Where the ledger lives: its directory with every symlink resolved (a
 * symlinked ~/.hermes or /home is fine) and checked, and the canonical path
 * to the file. With create, a missing directory is made 0700 (one level);
 * *made tells, so a failed init can take it away again.
 */
static tl_status locate(char **out_dir, char **out_path, int *made, const char *path, int create, tl_error *err)
{
  tl_status rc = TL_OK;
  char real[PATH_MAX];
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  char *dir = slash ? (slash == path ? strdup("/") : strndup(path, (size_t)(slash - path))) : strdup(".");
  *made = 0;
  *out_dir = *out_path = NULL;
  if (!dir)
    return tl__oom(err);
  if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: not a file name", path);
    goto done;
  }
  if (!realpath(dir, real)) {
    int e = errno;
    if (e == ENOENT && create) {
      if (mkdir(dir, 0700) == 0)
        *made = 1;
      else if (errno != EEXIST) { /* EEXIST: another init made it first */
        rc = tl__err(err, errno == ENOENT ? TL_ENOTFOUND : TL_EIO, errno, "%s: cannot create directory: %s", dir,
                     strerror(errno));
        goto done;
      }
      if (!realpath(dir, real)) {
        rc = tl__err(err, TL_EIO, errno, "%s: %s", dir, strerror(errno));
        goto done;
      }
    } else if (e == ENOENT) {
      rc = tl__err(err, TL_ENOTFOUND, e, "%s: no ledger here (no directory %s)", path, dir);
      goto done;
    } else {
      rc = tl__err(err, TL_EIO, e, "%s: %s", dir,
                   e == ENOTDIR ? "a component of the path is not a directory" : strerror(e));
      goto done;
    }
  }
  if ((rc = tl__check_dir(real, err)) != TL_OK)
    goto done;
  size_t n = strlen(real) + strlen(base) + 2;
  if (n > PATH_MAX) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: path too long", path);
    goto done;
  }
  if (!(*out_path = malloc(n)) || !(*out_dir = strdup(real))) {
    rc = tl__oom(err);
    goto done;
  }
  snprintf(*out_path, n, "%s%s%s", real, strcmp(real, "/") == 0 ? "" : "/", base);
done:
  free(dir);
  if (rc != TL_OK) {
    free(*out_path);
    free(*out_dir);
    *out_path = *out_dir = NULL;
  }
  return rc;
}

/*
 * The ledger file itself, checked without opening it for reading or writing:
 * an O_PATH descriptor, which fstat and fstatfs accept and whose close, unlike
 * any other descriptor's, releases none of the POSIX locks this process holds
 * on the file (fcntl(2): closing any descriptor of a file drops them all, and
 * another store of this process may hold SQLite's). Never follows a symlink.
 * Read-write unless asked for read-only or the file or filesystem is read-only
 * (*ro, *ro_fs): then what the ledger holds is still served.
 */
static tl_status open_file(int *ro, int *ro_fs, const char *path, tl_error *err)
{
  int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      return tl__err(err, TL_ENOTFOUND, e, "%s: no ledger here", path);
    if (e == ENOTDIR)
      return tl__err(err, TL_EIO, e, "%s: a component of the path is not a directory", path);
    return tl__err(err, TL_EIO, e, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  struct statvfs vfs;
  tl_status rc = TL_OK;
  if (fstat(fd, &st) == 0 && S_ISLNK(st.st_mode)) /* O_PATH|O_NOFOLLOW opens the link itself */
    rc = tl__err(err, TL_EINSECURE, ELOOP, "%s: is a symbolic link; refusing to follow it", path);
  else if ((rc = check_file(fd, path, err)) != TL_OK)
    ;
  else if (faccessat(fd, "", R_OK, AT_EMPTY_PATH | AT_EACCESS) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: cannot open: %s", path, strerror(errno));
  else if (!*ro && fstatvfs(fd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY))
    *ro = *ro_fs = 1;
  else if (!*ro && faccessat(fd, "", W_OK, AT_EMPTY_PATH | AT_EACCESS) != 0) {
    if (errno != EACCES && errno != EROFS)
      rc = tl__err(err, TL_EIO, errno, "%s: cannot open: %s", path, strerror(errno));
    *ro = 1;
    *ro_fs = errno == EROFS;
  }
  close(fd);
  return rc;
}

/*
 * Whether any process holds a POSIX or open-file-description lock on path
 * that covers byte `at`: 1 (with its pid in *pid when known), 0 if none, -1
 * if it cannot be told. Read from /proc/locks, so no descriptor of the file is
 * opened (see open_file: closing one would release this process's locks on
 * it). Unlike F_GETLK, it also sees this process's own locks. A lock is
 * matched by inode number alone, the conservative way: a file elsewhere with
 * the same number can only make a lock appear held.
 */
int tl__lock_held(long *pid, const char *path, int64_t at)
{
  struct stat st;
  if (lstat(path, &st) != 0)
    return errno == ENOENT ? 0 : -1;
  FILE *f = fopen("/proc/locks", "re");
  if (!f)
    return -1;
  char line[256];
  int held = 0;
  while (!held && fgets(line, sizeof line, f)) {
    char kind[16], rw[16], dev[64], end[32];
    long owner = 0;
    unsigned long long ino = 0;
    long long start = 0;
    /* "7: POSIX  ADVISORY  WRITE 4242 fd:01:1837046 120 120" (a waiting request has "->" and is skipped) */
    if (strstr(line, "->") ||
        sscanf(line, "%*[^:]: %15s %*s %15s %ld %63s %lld %31s", kind, rw, &owner, dev, &start, end) != 6)
      continue;
    const char *colon = strrchr(dev, ':');
    if (!colon || sscanf(colon + 1, "%llu", &ino) != 1 || ino != (unsigned long long)st.st_ino)
      continue;
    if ((strcmp(kind, "POSIX") != 0 && strcmp(kind, "OFDLCK") != 0) || at < start ||
        (strcmp(end, "EOF") != 0 && at > atoll(end)))
      continue;
    held = 1;
    if (pid)
      *pid = owner;
  }
  fclose(f);
  return held;
}

/* Read-only identification, in one snapshot: ours, empty, or something else. */
static tl_status identify(tl_store *s, tl_error *err)
{
  static const char sql[] = "SELECT (SELECT application_id FROM pragma_application_id), "
                            "(SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_schema)";
  sqlite3_stmt *st = NULL;
  int app = 0, ver = 0, objects = 0;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    app = sqlite3_column_int(st, 0);
    ver = sqlite3_column_int(st, 1);
    objects = sqlite3_column_int(st, 2);
    rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_OK) {
    if (tl__map_sqlite(sqlite3_extended_errcode(s->db)) == TL_ECORRUPT)
      return tl__err(err, TL_ECORRUPT, rc, "%s: not a tokenledger database (%s)", s->path, sqlite3_errmsg(s->db));
    return tl__err_db(err, s, s->path);
  }
  s->found_version = ver;
  if (app == 0 && ver == 0 && objects == 0)
    return TL_OK; /* empty: a new ledger */
  if (app != TL_APPLICATION_ID)
    return tl__err(err, TL_ECORRUPT, 0, "%s: a SQLite database, but not a tokenledger ledger (application_id %d)",
                   s->path, app);
  if (ver > TL_SCHEMA_VERSION)
    return tl__err(err, TL_ETOONEW, 0,
                   "%s: schema version %d is newer than this tokenledger understands (%d); upgrade tokenledger, "
                   "the file was left untouched",
                   s->path, ver, TL_SCHEMA_VERSION);
  if (ver < 0)
    return tl__err(err, TL_ECORRUPT, 0, "%s: schema version %d is not one tokenledger ever wrote", s->path, ver);
  return TL_OK;
}

/* Tables SQLite itself creates (ANALYZE), with the only text they can have. */
static int sqlite_own(const char *type, const char *name, const char *sql)
{
  return type && name && sql && strcmp(type, "table") == 0 &&
         ((strcmp(name, "sqlite_stat1") == 0 && strcmp(sql, "CREATE TABLE sqlite_stat1(tbl,idx,stat)") == 0) ||
          (strcmp(name, "sqlite_stat4") == 0 &&
           strcmp(sql, "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)") == 0));
}

static int same(const char *a, const char *b)
{
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

tl_status tl__schema_check(tl_store *s, int version, tl_error *err)
{
  sqlite3_stmt *st = NULL;
  const tl__schema_row *want = tl__schema_rows[version];
  size_t n = tl__schema_counts[version], i = 0;
  tl_status rc = TL_OK;
  char what[400] = "";
  int step = sqlite3_prepare_v2(s->db, TL_SCHEMA_QUERY, -1, &st, NULL);
  while (step == SQLITE_OK || step == SQLITE_ROW) {
    if ((step = sqlite3_step(st)) != SQLITE_ROW)
      break;
    const char *type = (const char *)sqlite3_column_text(st, 0), *name = (const char *)sqlite3_column_text(st, 1),
               *tbl = (const char *)sqlite3_column_text(st, 2), *sql = (const char *)sqlite3_column_text(st, 3);
    if (sqlite_own(type, name, sql))
      continue;
    /* Both lists are sorted by (type, name): walk them side by side. */
    while (i < n && (strcmp(want[i].type, type ? type : "") < 0 ||
                     (strcmp(want[i].type, type ? type : "") == 0 && strcmp(want[i].name, name ? name : "") < 0))) {
      snprintf(what, sizeof what, "%s '%.100s' is missing", want[i].type, want[i].name);
      goto differs;
    }
    if (i < n && same(want[i].type, type) && same(want[i].name, name)) {
      if (!same(want[i].tbl, tbl) || !same(want[i].sql, sql)) {
        snprintf(what, sizeof what, "%s '%.100s' is not what tokenledger created", want[i].type, want[i].name);
        goto differs;
      }
      i++;
      continue;
    }
    snprintf(what, sizeof what, "%.20s '%.100s'%s%.100s was not created by tokenledger", type ? type : "object",
             name ? name : "", tbl && name && strcmp(tbl, name) ? " on " : "",
             tbl && name && strcmp(tbl, name) ? tbl : "");
    goto differs;
  }
  if (step != SQLITE_DONE) {
    rc = tl__err_db(err, s, s->path);
    goto done;
  }
  if (i < n) {
    snprintf(what, sizeof what, "%s '%.100s' is missing", want[i].type, want[i].name);
    goto differs;
  }
  goto done;
differs:
  rc = tl__err(err, TL_EINSECURE, 0,
               "%s: the ledger's schema was changed by someone else: %s. A trigger or view added to the file can copy "
               "tokens or keep spent ones, so tokenledger refuses to use it; find out who changed it, then remove the "
               "object with sqlite3 or restore a backup",
               s->path, what);
done:
  sqlite3_finalize(st);
  return rc;
}

/*
 * Busy handler: waits in short, jittered steps (50 us growing to 2 ms) until
 * the deadline. SQLite's default sleeps up to 25 ms per step, which leaves
 * the write lock idle while refreshing processes queue for it.
 */
static int on_busy(void *ud, int count)
{
  tl_store *s = ud;
  if (count == 0)
    s->busy_since = tl__now_ms();
  if (tl__now_ms() - s->busy_since >= s->busy_ms)
    return 0;
  long us = count < 6 ? 50L << count : 2000;
  us += (long)((unsigned)(count * 7919 + s->actor.pid) % 50);
  tl__sleep_us(us);
  return 1;
}

/* The URI that opens a ledger on a read-only filesystem without its -shm: nobody can write it there. */
static char *immutable_uri(const char *path)
{
  size_t cap = 3 * strlen(path) + 32, o = 0;
  char *u = malloc(cap);
  if (!u)
    return NULL;
  o += (size_t)snprintf(u, cap, "file:");
  for (const char *p = path; *p; p++)
    o += (size_t)(strchr("%?#", *p) ? snprintf(u + o, cap - o, "%%%02X", (unsigned char)*p)
                                    : snprintf(u + o, cap - o, "%c", *p));
  snprintf(u + o, cap - o, "?immutable=1");
  return u;
}

/*
 * 1 if no connection has the ledger open and its WAL is empty, so the main file alone is the whole ledger:
 * SQLite's dead-man-switch lock (byte 128 of the -shm, WAL-index format) is held by every open connection,
 * in any process, this one included. Asked after this store's own failed connection is closed.
 */
static int ledger_quiet(const char *path)
{
  char side[PATH_MAX + 16];
  struct stat st;
  snprintf(side, sizeof side, "%s-wal", path);
  if (lstat(side, &st) == 0 && st.st_size > 0)
    return 0;
  snprintf(side, sizeof side, "%s-shm", path);
  return tl__lock_held(NULL, side, 128) == 0;
}

static void configure(tl_store *s)
{
  sqlite3_busy_handler(s->db, on_busy, s);
  sqlite3_extended_result_codes(s->db, 1);
  /*
   * The file is input like any other. SQL can never corrupt it on purpose (defensive: writable_schema and
   * friends are off). Nothing its schema defines runs before tl__schema_check has proven the schema to be
   * exactly what the migrations make: the reads before it touch only pragmas and sqlite_schema. (The schema
   * cannot be loaded with trusted_schema off: its generated column and CHECKs use json_extract and json_valid,
   * which SQLite 3.40 does not mark innocuous; once proven ours, it is trusted by that proof.)
   */
  sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
}

/* Closes this store's connection (it could not read the ledger) and tells whether the file alone is the ledger. */
static int frozen_possible(tl_store *s)
{
  sqlite3_close(s->db);
  s->db = NULL;
  return ledger_quiet(s->path);
}

/*
 * A full or read-only disk where SQLite cannot make its -shm: if nobody has the ledger open and its WAL is
 * empty, the file alone is the ledger and cannot change under us, so it is read as immutable (read-only):
 * a valid access token is still served, and every write says why it cannot happen.
 */
static tl_status open_frozen(tl_store *s, const char *why, tl_error *err)
{
  char *uri = immutable_uri(s->path);
  sqlite3_close(s->db);
  s->db = NULL;
  if (!uri)
    return tl__oom(err);
  int orc = sqlite3_open_v2(uri, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_EXRESCODE, NULL);
  free(uri);
  if (orc != SQLITE_OK)
    return tl__err_db(err, s, s->path);
  configure(s);
  s->readonly = 1;
  s->readonly_why = why;
  return identify(s, err);
}

/* SQLite on a file that passed the checks: configure, identify, check the schema, migrate. */
static tl_status connect(tl_store *s, int ro_fs, tl_error *err)
{
  tl_status rc;
  int oflags =
      (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE;
  if (sqlite3_open_v2(s->path, &s->db, oflags, NULL) != SQLITE_OK)
    return tl__err_db(err, s, s->path);
  configure(s);
  tl_error first = {0};
  rc = identify(s, &first);
  if (rc != TL_OK && (rc == TL_EIO || (first.sys & 0xff) == SQLITE_CANTOPEN) && frozen_possible(s))
    rc = open_frozen(s, ro_fs ? "a read-only filesystem" : "a full or read-only disk", err);
  else if (rc != TL_OK && err && err->code == TL_OK)
    *err = first;
  if (rc != TL_OK || (rc = tl__schema_check(s, s->found_version, err)) != TL_OK)
    return rc;
  /* NORMAL: the WAL hook syncs every commit once the write lock is released (group commit, above). */
  if ((rc = tl__exec(s, "PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON; PRAGMA synchronous=NORMAL;", err)) != TL_OK)
    return rc;
  if (s->readonly) {
    if (s->found_version < TL_SCHEMA_VERSION)
      return tl__err(err, TL_ECORRUPT, 0, "%s: schema version %d needs migrating; open it read-write once", s->path,
                     s->found_version);
    return TL_OK;
  }
  if (s->found_version == 0 && (rc = tl__exec(s, "PRAGMA page_size=" TL_PAGE_SIZE_TEXT, err)) != TL_OK)
    return rc; /* a new ledger, before its first table */
  sqlite3_wal_autocheckpoint(s->db, 0);
  sqlite3_wal_hook(s->db, tl__on_wal, s);
  if ((rc = tl__exec(s, "PRAGMA journal_mode=WAL", err)) != TL_OK)
    return rc;
  if (s->found_version < TL_SCHEMA_VERSION) {
    /* only an old schema takes the write lock at open */
    if ((rc = tl__migrate(s, err)) != TL_OK || (rc = tl__schema_check(s, TL_SCHEMA_VERSION, err)) != TL_OK)
      return rc;
  }
  return TL_OK;
}

static tl_status store_new(tl_store **out, const char *path, int readonly, tl_error *err)
{
  tl_store *s = calloc(1, sizeof *s);
  if (!s || !(s->path = strdup(path))) {
    free(s);
    return tl__oom(err);
  }
  s->busy_ms = 10000;
  s->http_timeout_ms = 15000;
  const char *to = getenv("TOKENLEDGER_HTTP_TIMEOUT_MS");
  if (to && atoi(to) >= 100 && atoi(to) <= 600000)
    s->http_timeout_ms = atoi(to);
  s->http = tl__curl_post;
  /* Tests only: keep spent secrets in the WAL as before, so the test that scans for them proves it can fail. */
  s->scrub_off = getenv("TOKENLEDGER_TEST_KEEP_WAL") != NULL;
  s->readonly = readonly;
  s->rescue_fd = -1;
  s->agent_fd = -1;
  tl__actor_init(&s->actor);
  *out = s;
  return TL_OK;
}

static void unlink_with_sidecars(const char *path)
{
  unlink(path);
  for (size_t i = 0; i < sizeof sidecars / sizeof *sidecars; i++) {
    char side[PATH_MAX + 16];
    snprintf(side, sizeof side, "%s%s", path, sidecars[i]);
    unlink(side);
  }
}

static void fsync_dir(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

/*
 * Makes a new ledger at path: built and migrated under a temporary name in
 * the same directory, synced, then linked into place. If another process got
 * there first, theirs stays and ours goes: creation never removes a ledger
 * someone else initialised, and a reader never sees a half-made one.
 */
static tl_status create_ledger(const char *dir, const char *path, tl_error *err)
{
  tl_status rc = TL_OK;
  tl_store *t = NULL;
  size_t n = strlen(dir) + 40;
  char *tmp = malloc(n);
  if (!tmp)
    return tl__oom(err);
  snprintf(tmp, n, "%s/.tokenledger-init-XXXXXX", dir);
  int fd = mkstemp(tmp); /* O_EXCL, mode 0600 */
  if (fd < 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: cannot create a file here: %s", dir, strerror(errno));
    free(tmp);
    return rc;
  }
  if (fchmod(fd, 0600) != 0 || (rc = check_file(fd, tmp, err)) != TL_OK) {
    if (rc == TL_OK)
      rc = tl__err(err, TL_EIO, errno, "%s: chmod: %s", tmp, strerror(errno));
    close(fd);
    goto done;
  }
  close(fd);
  if ((rc = store_new(&t, tmp, 0, err)) != TL_OK || (rc = connect(t, 0, err)) != TL_OK)
    goto done;
  tl_store_free(t); /* checkpoints: the new ledger is whole in one file */
  t = NULL;
  if ((fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0 || fsync(fd) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: fsync: %s", tmp, strerror(errno));
    if (fd >= 0)
      close(fd);
    goto done;
  }
  close(fd);
  if (link(tmp, path) != 0 && errno != EEXIST) /* EEXIST: another init won; we use theirs */
    rc = tl__err(err, TL_EIO, errno, "%s: cannot put the new ledger in place: %s", path, strerror(errno));
done:
  tl_store_free(t);
  unlink_with_sidecars(tmp);
  if (rc == TL_OK)
    fsync_dir(dir);
  free(tmp);
  return rc;
}

tl_status tl_store_open(tl_store **out, const char *path, unsigned flags, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc = TL_OK;
  tl_store *s = NULL;
  char *dir = NULL, *file = NULL;
  int made_dir = 0, ro = (flags & TL_OPEN_READONLY) != 0, ro_fs = 0;
  int create = (flags & TL_OPEN_CREATE) && !ro;

  if (!out || !path || !*path)
    return tl__err(err, TL_EINVAL, 0, "store: no database path");
  *out = NULL;
  if ((rc = locate(&dir, &file, &made_dir, path, create, err)) != TL_OK)
    goto done;
  struct stat st;
  if (create && lstat(file, &st) != 0 && errno == ENOENT && (rc = create_ledger(dir, file, err)) != TL_OK)
    goto done;
  if ((rc = open_file(&ro, &ro_fs, file, err)) != TL_OK || (rc = tl__check_sidecars(file, err)) != TL_OK ||
      (rc = store_new(&s, file, ro, err)) != TL_OK || (rc = connect(s, ro_fs, err)) != TL_OK)
    goto done;
  *out = s;
  s = NULL;
done:
  tl_store_free(s);
  if (rc != TL_OK && made_dir)
    rmdir(dir); /* a failed init leaves no empty directory behind (and rmdir never removes anything else) */
  free(dir);
  free(file);
  return rc;
}

void tl_store_free(tl_store *s)
{
  if (!s)
    return;
  if (s->db && !sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  for (size_t i = 0; i < s->ncache; i++)
    sqlite3_finalize(s->cache[i].st);
  s->ncache = 0;
  s->closing = 1;
  if (s->db && s->scrub_due)
    tl__wal_scrub(s, 0); /* a scrub a reader blocked; the last connection's close also empties the WAL */
  sqlite3_close(s->db);
  tl__token_cache_clear(s);
  tl__rescue_unreserve(s);
  tl__agent_disconnect(s);
  tl__actor_clear(&s->actor);
  free(s->path);
  free(s);
}

void tl_store_set_actor(tl_store *s, const char *profile, const char *command)
{
  if (!s)
    return;
  char *p = tl__strdup(profile), *c = tl__strdup(command);
  tl__actor_clear(&s->actor);
  s->actor.profile = p;
  s->actor.command = c;
}

void tl_store_set_busy_timeout(tl_store *s, int ms)
{
  if (!s || ms < 0)
    return;
  s->busy_ms = ms;
}

void tl_store_set_stop_notice(tl_store *s, tl_stop_notice_fn fn, void *ud)
{
  if (!s)
    return;
  s->stop_notice = fn;
  s->stop_notice_ud = ud;
}

int tl_store_schema_version_found(const tl_store *s)
{
  return s ? s->found_version : 0;
}

sqlite3 *tl__store_db(tl_store *s)
{
  return s->db;
}

void tl_store_set_transport(tl_store *s, tl_http_fn fn, void *ud)
{
  if (!s)
    return;
  s->http = fn ? fn : tl__curl_post;
  s->http_ud = fn ? ud : NULL;
}
