/*
 * hermes_file.c - Hermes' auth.json and shared/nous_auth.json without a ledger.
 *
 * Loading, walking a document into the slots that may hold a grant, writing a
 * grant into a slot in the exact shape Hermes itself writes after a refresh,
 * Hermes' quarantine, Hermes' locks (flock on the sibling <stem>.lock) and
 * Hermes' atomic replace. No SQL here: the importer's fuzzer can drive this
 * layer alone.
 *
 * Invariants kept here:
 *   - Every file operation (load, lock, write, defuse, remove) goes through one
 *     trusted walk (walk_to): the path is opened from / one component at a
 *     time on directory descriptors (openat, O_NOFOLLOW). Every directory on
 *     the way is owned by you or root and writable by nobody else (sticky
 *     ones aside); a symbolic link is followed only if you or root own it
 *     and it lives in a directory nobody else can write (sticky or not); the
 *     file's own directory and the file are yours, and that directory is
 *     writable by nobody else, sticky or not (its lock file lives there too,
 *     and the lock file must be yours with one name). So a home another user owns or can write,
 *     a link they put in one, a file of theirs or a hard link to one is never
 *     read, locked, written, defused or removed; the file is opened, replaced
 *     (renameat) or unlinked relative to the descriptor of the directory
 *     checked, so nothing swapped in after the walk is followed.
 *   - A file is read only if it is a regular file: a FIFO, device or directory
 *     is refused without ever blocking (opened O_NONBLOCK, checked by fstat).
 *     An I/O error is never read as an empty store.
 *   - An input document may not name the ledger's own objects ({"$tl": ...}
 *     anywhere), and every token in it is RFC 6749 VSCHAR; only the ledger's
 *     stored templates hold references.
 *   - Every number read from a file goes through num.c's checked conversions.
 *   - A file is replaced only by renaming a complete, fsynced 0600 temporary
 *     file of the same directory onto the (trusted-)link-resolved target; stop
 *     signals are deferred while the temporary file exists, so it never
 *     outlives the process.
 *   - A slot written here is what Hermes would write: its device_code pool row,
 *     singleton and shared store agree on every field Hermes compares, so
 *     Hermes never rewrites a file of ours for format reasons alone.
 */
#define _GNU_SOURCE /* O_PATH */
#include "hermes.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the trusted walk ------------------------------------------------------------ */

/*
 * Where a path leads, checked: dir is the descriptor (O_PATH) of the directory
 * holding the final entry, base that entry's name (never a symbolic link when
 * walk_to returns: a trusted one was followed), shown the physical path walked,
 * for messages. The entry itself may not exist.
 */
typedef struct hfpath {
  int dir;
  int shared_dir; /* the directory is writable by others (sticky): they can add names, not replace ours */
  char base[256];
  char shown[PATH_MAX];
} hfpath;

static void hfpath_close(hfpath *p)
{
  if (p->dir >= 0)
    close(p->dir);
  p->dir = -1;
}

static void who(char *out, size_t n, uid_t uid)
{
  struct passwd pw, *res = NULL;
  char buf[1024];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res)
    snprintf(out, n, "%s (uid %ld)", res->pw_name, (long)uid);
  else
    snprintf(out, n, "uid %ld", (long)uid);
}

static tl_status not_yours(const char *path, const char *what, const char *shown, uid_t uid, tl_error *err)
{
  char owner[128], me[128];
  who(owner, sizeof owner, uid);
  who(me, sizeof me, geteuid());
  return tl__err(err, TL_EINSECURE, 0,
                 "%s: %s %s is owned by %s, not by you (%s); another user's home or file is never read or written",
                 path, what, shown, owner, me);
}

/*
 * A directory on the way: yours or root's, and nobody else can rename what is
 * in it. The file's own directory (last) is writable by nobody else at all,
 * sticky or not: there another user could create the lock file (auth.lock)
 * first, or remove theirs and create it anew while Hermes holds the old one,
 * and two refreshes would no longer take turns.
 */
static tl_status check_dir(const char *path, const char *shown, const struct stat *st, int last, tl_error *err)
{
  if (!S_ISDIR(st->st_mode))
    return tl__err(err, TL_EIO, ENOTDIR, "%s: %s is not a directory", path, shown);
  if (st->st_uid != geteuid() && (last || st->st_uid != 0))
    return not_yours(path, "the directory", shown, st->st_uid, err);
  if ((st->st_mode & 022) && (last || !(st->st_mode & S_ISVTX)))
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: the directory %s is writable by group or others, who could swap what it holds (or its "
                   "lock); refusing to read or write tokens there",
                   path, shown);
  return TL_OK;
}

static void shown_push(char *shown, const char *name)
{
  size_t l = strlen(shown);
  snprintf(shown + l, PATH_MAX - l, "%s%s", l && shown[l - 1] == '/' ? "" : "/", name);
}

static void shown_pop(char *shown)
{
  char *slash = strrchr(shown, '/');
  if (slash && slash != shown)
    *slash = '\0';
  else
    snprintf(shown, PATH_MAX, "/");
}

static int open_root(void)
{
  return open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
}

/*
 * Walks path from / (a relative path from the working directory's physical
 * path) on directory descriptors, checking every directory (check_dir) and
 * following only links you or root own, at most 40. The final directory must
 * be yours. The final entry is not opened.
 */
static tl_status walk_to(hfpath *out, const char *path, tl_error *err)
{
  char todo[2 * PATH_MAX + 2], next[2 * PATH_MAX + 2], target[PATH_MAX];
  struct stat st;
  tl_status rc = TL_OK;
  int links = 0;
  memset(out, 0, sizeof *out);
  out->dir = -1;
  if (!path || !*path)
    return tl__err(err, TL_EINVAL, 0, "an empty path");
  if (path[0] == '/') {
    if (snprintf(todo, sizeof todo, "%s", path) >= PATH_MAX)
      return tl__err(err, TL_EINVAL, 0, "%.200s...: path too long", path);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
      return tl__err(err, TL_EIO, errno, "%s: the working directory: %s", path, strerror(errno));
    if (snprintf(todo, sizeof todo, "%s/%s", cwd, path) >= PATH_MAX)
      return tl__err(err, TL_EINVAL, 0, "%.200s...: path too long", path);
  }
  int fd = open_root();
  if (fd < 0)
    return tl__err(err, TL_EIO, errno, "/: %s", strerror(errno));
  snprintf(out->shown, sizeof out->shown, "/");
  char *p = todo;
  for (;;) {
    while (*p == '/')
      p++;
    if (!*p) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: names a directory, not a file", path);
      break;
    }
    char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char *rest = end;
    while (rest && *rest == '/')
      rest++;
    int last = !rest || !*rest;
    char name[256];
    if (len >= sizeof name) {
      rc = tl__err(err, TL_EINVAL, ENAMETOOLONG, "%s: a name longer than 255 bytes", path);
      break;
    }
    memcpy(name, p, len);
    name[len] = '\0';
    p = rest ? rest : p + len;
    if (strcmp(name, ".") == 0 && !last)
      continue;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
      if (last) {
        rc = tl__err(err, TL_EINVAL, 0, "%s: names a directory, not a file", path);
        break;
      }
      int up = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (up < 0 || fstat(up, &st) != 0) {
        rc = tl__err(err, TL_EIO, errno, "%s: %s/..: %s", path, out->shown, strerror(errno));
        if (up >= 0)
          close(up);
        break;
      }
      close(fd);
      fd = up;
      shown_pop(out->shown);
      if ((rc = check_dir(path, out->shown, &st, 0, err)) != TL_OK)
        break;
      continue;
    }
    if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      int e = errno;
      if (e == ENOENT && last) {
        snprintf(out->base, sizeof out->base, "%s", name);
        break; /* a new file */
      }
      shown_push(out->shown, name);
      rc = tl__err(err, e == ENOENT ? TL_ENOTFOUND : TL_EIO, e, "%s: %s: %s", path, out->shown, strerror(e));
      break;
    }
    if (S_ISLNK(st.st_mode)) {
      char at[PATH_MAX];
      snprintf(at, sizeof at, "%s", out->shown);
      shown_push(at, name);
      if (st.st_uid != geteuid() && st.st_uid != 0) {
        rc = not_yours(path, "the symbolic link", at, st.st_uid, err);
        break;
      }
      struct stat here;
      if (fstat(fd, &here) != 0 || (here.st_mode & 022)) {
        /* Even a sticky one (/tmp): no link that lives where others can write is followed. */
        rc = tl__err(err, TL_EINSECURE, 0,
                     "%s: the symbolic link %s lives in a directory others can write; not followed", path, at);
        break;
      }
      if (++links > 40) {
        rc = tl__err(err, TL_EINVAL, ELOOP, "%s: symbolic link loop", path);
        break;
      }
      ssize_t n = readlinkat(fd, name, target, sizeof target - 1);
      if (n <= 0) {
        rc = tl__err(err, TL_EIO, errno, "%s: %s: %s", path, at, n == 0 ? "an empty link" : strerror(errno));
        break;
      }
      target[n] = '\0';
      if (snprintf(next, sizeof next, "%s%s%s", target, last ? "" : "/", last ? "" : p) >= PATH_MAX) {
        rc = tl__err(err, TL_EINVAL, 0, "%.200s...: path too long", path);
        break;
      }
      snprintf(todo, sizeof todo, "%s", next);
      p = todo;
      if (target[0] == '/') {
        close(fd);
        if ((fd = open_root()) < 0) {
          rc = tl__err(err, TL_EIO, errno, "/: %s", strerror(errno));
          break;
        }
        snprintf(out->shown, sizeof out->shown, "/");
      }
      continue;
    }
    if (last) {
      snprintf(out->base, sizeof out->base, "%s", name);
      break;
    }
    int sub = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    shown_push(out->shown, name);
    if (sub < 0 || fstat(sub, &st) != 0) {
      int e = errno;
      if (sub >= 0)
        close(sub);
      rc = tl__err(err,
                   e == ENOENT  ? TL_ENOTFOUND
                   : e == ELOOP ? TL_EINSECURE
                                : TL_EIO,
                   e, "%s: %s: %s", path, out->shown,
                   e == ELOOP ? "replaced by a symbolic link while it was walked" : strerror(e));
      break;
    }
    close(fd);
    fd = sub;
    if ((rc = check_dir(path, out->shown, &st, 0, err)) != TL_OK)
      break;
  }
  if (rc == TL_OK) {
    /* The file's own directory: yours (root's is not enough), as a write needs it. */
    if (fstat(fd, &st) != 0)
      rc = tl__err(err, TL_EIO, errno, "%s: %s: %s", path, out->shown, strerror(errno));
    else
      rc = check_dir(path, out->shown, &st, 1, err);
    out->shared_dir = (st.st_mode & 022) != 0;
  }
  if (rc != TL_OK) {
    close(fd);
    return rc;
  }
  out->dir = fd;
  return TL_OK;
}

/* The final entry, opened or looked at through walk_to's directory: a regular file of yours, one name only
 * where others could have added one. */
static tl_status check_file(const char *path, const hfpath *hp, const struct stat *st, tl_error *err)
{
  char at[PATH_MAX];
  snprintf(at, sizeof at, "%s", hp->shown);
  shown_push(at, hp->base);
  if (!S_ISREG(st->st_mode))
    return tl__err(err, TL_EINVAL, 0, "%s: not a regular file (%s)", path,
                   S_ISFIFO(st->st_mode)  ? "a FIFO"
                   : S_ISDIR(st->st_mode) ? "a directory"
                   : S_ISLNK(st->st_mode) ? "a symbolic link that appeared while it was walked"
                                          : "a device or socket");
  if (st->st_uid != geteuid())
    return not_yours(path, "the file", at, st->st_uid, err);
  if (st->st_nlink > 1 && hp->shared_dir)
    return tl__err(err, TL_EINSECURE, 0,
                   "%s: %s has %ld names (hard links) in a directory others can write; refusing to read or write "
                   "tokens there",
                   path, at, (long)st->st_nlink);
  return TL_OK;
}

/* walk_to, where a missing directory on the way is nothing to do (hp->dir < 0, TL_OK). */
static tl_status walk_gone_ok(hfpath *hp, const char *path, tl_error *err)
{
  tl_error sub = {0};
  tl_status rc = walk_to(hp, path, &sub);
  if (rc == TL_ENOTFOUND)
    return TL_OK;
  if (rc != TL_OK && err && err->code == TL_OK)
    *err = sub;
  return rc;
}

/* A lock file that exists must be a regular file of ours with one name: anything else (a FIFO, another
 * user's file) could block every refresh of the grant, or be swapped while Hermes holds it. */
static tl_status check_lock(const char *path, tl_error *err)
{
  char lock[PATH_MAX + 16];
  hfpath hp;
  struct stat st;
  tl__hf_lock_path(lock, sizeof lock, path);
  tl_status rc = walk_to(&hp, lock, err);
  if (rc == TL_OK && fstatat(hp.dir, hp.base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISREG(st.st_mode))
      rc = tl__err(err, TL_EINSECURE, 0, "%s: its lock %s is not a regular file (%s); it is never taken", path, lock,
                   S_ISFIFO(st.st_mode)  ? "a FIFO"
                   : S_ISLNK(st.st_mode) ? "a symbolic link"
                                         : "not a file");
    else if (st.st_uid != geteuid())
      rc = not_yours(path, "the lock", lock, st.st_uid, err);
    else if (st.st_nlink != 1)
      rc = tl__err(err, TL_EINSECURE, 0, "%s: its lock %s has %ld names (hard links)", path, lock, (long)st.st_nlink);
  }
  hfpath_close(&hp);
  return rc;
}

tl_status tl__hf_check(const char *path, tl_error *err)
{
  hfpath hp;
  struct stat st;
  tl_error sub = {0};
  tl_status rc = walk_to(&hp, path, &sub);
  if (rc == TL_OK && fstatat(hp.dir, hp.base, &st, AT_SYMLINK_NOFOLLOW) == 0)
    rc = check_file(path, &hp, &st, &sub);
  hfpath_close(&hp);
  if (rc == TL_OK)
    rc = check_lock(path, &sub);
  if (rc != TL_EINSECURE)
    return TL_OK; /* anything else is for the operation itself to report */
  if (err && err->code == TL_OK)
    *err = sub;
  return rc;
}

/* ---- loading -------------------------------------------------------------------- */

static tl_status read_all(char **out, size_t *out_len, int fd, const char *path, off_t size, tl_error *err)
{
  size_t cap = (size_t)size + 1, len = 0;
  char *buf = malloc(cap + 1);
  if (!buf)
    return tl__oom(err);
  tl_status rc = TL_OK;
  for (;;) {
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = tl__err(err, TL_EIO, errno, "%s: read failed: %s", path, strerror(errno));
      break;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len > TL_HERMES_MAX_FILE) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: larger than %d MiB", path, TL_HERMES_MAX_FILE / (1024 * 1024));
      break;
    }
    if (len == cap) {
      char *nb = realloc(buf, cap * 2 + 1);
      if (!nb) {
        rc = tl__oom(err);
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  if (rc != TL_OK) {
    tl_burn(buf, cap);
    free(buf);
    return rc;
  }
  *out = buf;
  *out_len = len;
  return TL_OK;
}

/* 1 if v (at any depth) is an object naming a ledger object. */
static int names_ledger_object(json_t *v, int depth)
{
  if (depth > 4096)
    return 1;
  if (json_is_object(v)) {
    if (json_object_get(v, "$tl"))
      return 1;
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
      if (names_ledger_object(x, depth + 1))
        return 1;
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x)
    {
      if (names_ledger_object(x, depth + 1))
        return 1;
    }
  }
  return 0;
}

tl_status tl__hf_load(json_t **out, char sha[65], int64_t *mtime_ms, const char *path, tl_error *err)
{
  tl_status rc = TL_OK;
  char *buf = NULL;
  size_t len = 0;
  hfpath hp;
  *out = NULL;
  if ((rc = walk_to(&hp, path, err)) != TL_OK)
    return rc;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below. */
  int fd = openat(hp.dir, hp.base, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0) {
    int e = errno;
    hfpath_close(&hp);
    if (e == ENOENT)
      return tl__err(err, TL_ENOTFOUND, e, "%s: no such file", path);
    if (e == ELOOP)
      return tl__err(err, TL_EINSECURE, e, "%s: became a symbolic link while it was walked; not followed", path);
    if (e == ENXIO)
      return tl__err(err, TL_EINVAL, e, "%s: not a regular file (a socket or device)", path);
    return tl__err(err, TL_EIO, e, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
    goto done;
  }
  if ((rc = check_file(path, &hp, &st, err)) != TL_OK)
    goto done;
  if (st.st_size > TL_HERMES_MAX_FILE) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: %lld bytes; an auth.json is at most %d MiB", path, (long long)st.st_size,
                 TL_HERMES_MAX_FILE / (1024 * 1024));
    goto done;
  }
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
    goto done;
  }
  if ((rc = read_all(&buf, &len, fd, path, st.st_size, err)) != TL_OK)
    goto done;
  if (mtime_ms)
    *mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
  tl_fingerprint(sha, buf, len);
  const char *text = buf;
  size_t tlen = len;
  if (tlen >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF) {
    text += 3; /* Hermes reads utf-8-sig */
    tlen -= 3;
  }
  size_t ws = 0;
  while (ws < tlen && strchr(" \t\r\n", text[ws]))
    ws++;
  if (ws == tlen) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: empty file; an auth.json holds a JSON object", path);
    goto done;
  }
  json_error_t je;
  json_t *doc = json_loadb(text, tlen, JSON_REJECT_DUPLICATES, &je);
  if (!doc) {
    /* Jansson ends some messages with "near '<lexeme>'", and the lexeme can be a token: drop it. */
    char *near = strstr(je.text, " near '");
    if (near)
      *near = '\0';
    rc = tl__err(err, TL_EINVAL, 0, "%s: line %d, column %d: %s", path, je.line, je.column, je.text);
    goto done;
  }
  if (!json_is_object(doc)) {
    json_decref(doc);
    rc = tl__err(err, TL_EINVAL, 0, "%s: $: expected a JSON object at the top level", path);
    goto done;
  }
  *out = doc;
done:
  if (buf) {
    tl_burn(buf, len);
    free(buf);
  }
  close(fd);
  hfpath_close(&hp);
  return rc;
}

/* ---- slots ------------------------------------------------------------------------ */

void tl__hf_slots_free(tl__slots *ss)
{
  free(ss->v);
  memset(ss, 0, sizeof *ss);
}

static tl_status push_slot(tl__slots *ss, tl__slot_kind kind, const char *provider, const char *place, const char *path,
                           json_t *obj, json_t *holder, tl_error *err)
{
  if (ss->n == ss->cap) {
    size_t cap = ss->cap ? ss->cap * 2 : 2;
    tl__slot *nv = realloc(ss->v, cap * sizeof *nv);
    if (!nv)
      return tl__oom(err);
    ss->v = nv;
    ss->cap = cap;
  }
  tl__slot *s = &ss->v[ss->n++];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  snprintf(s->provider, sizeof s->provider, "%s", provider);
  snprintf(s->place, sizeof s->place, "%s", place);
  snprintf(s->path, sizeof s->path, "%s", path);
  s->obj = obj;
  s->holder = holder;
  return TL_OK;
}

/* A token field: absent, null, a token string, or (templates only) a reference. */
static tl_status want_token(const char *file, const char *path, json_t *obj, const char *k, unsigned flags,
                            tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  if (!v || json_is_null(v))
    return TL_OK;
  if ((flags & TL_WALK_TEMPLATE) && json_is_object(v) && json_is_string(json_object_get(v, "$tl")))
    return TL_OK;
  if (!json_is_string(v))
    return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: expected a string or null", file, path, k);
  size_t n = json_string_length(v);
  if (n == 0)
    return TL_OK; /* Hermes writes "" for no token */
  if (strlen(json_string_value(v)) != n || !tl__token_valid(json_string_value(v), n))
    return tl__err(err, TL_EINVAL, 0,
                   "%s: %s.%s: not a token (tokens are 1-%d printable ASCII characters without surrounding space; "
                   "this one has a control character, a NUL byte, non-ASCII text or surrounding space)",
                   file, path, k, TL_TOKEN_MAX);
  return TL_OK;
}

enum { T_INT = 1, T_REAL = 2, T_STR = 4, T_BOOL = 8, T_OBJ = 16 };

static tl_status want_type(const char *file, const char *path, json_t *obj, const char *k, int types, const char *what,
                           tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  if (!v || json_is_null(v))
    return TL_OK;
  if (((types & T_INT) && json_is_integer(v)) || ((types & T_REAL) && json_is_real(v)) ||
      ((types & T_STR) && json_is_string(v)) || ((types & T_BOOL) && json_is_boolean(v)) ||
      ((types & T_OBJ) && json_is_object(v)))
    return TL_OK;
  return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: expected %s", file, path, k, what);
}

/* A time field: any form Hermes writes, in range (checked, never cast blindly). */
static tl_status want_time(const char *file, const char *path, json_t *obj, const char *k, tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  int64_t ms;
  if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
    return TL_OK;
  const char *why = tl__num_time(&ms, v);
  if (why)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: %s", file, path, k, why);
  return TL_OK;
}

/* A whole number in [min, max]. */
static tl_status want_int(const char *file, const char *path, json_t *obj, const char *k, int64_t min, int64_t max,
                          tl_error *err)
{
  json_t *v = json_object_get(obj, k);
  int64_t x;
  if (!v || json_is_null(v))
    return TL_OK;
  const char *why = tl__num_i64(&x, v, min, max);
  if (why)
    return tl__err(err, TL_EINVAL, 0, "%s: %s.%s: %s (expected a whole number from %lld to %lld)", file, path, k, why,
                   (long long)min, (long long)max);
  return TL_OK;
}

static tl_status check_token_fields(const char *file, const char *path, json_t *o, unsigned flags, tl_error *err)
{
  static const char *const tokens[] = {"refresh_token", "access_token", "agent_key"};
  static const char *const strs[] = {"label", "portal_base_url", "client_id",
                                     "scope", "token_type",      "inference_base_url"};
  static const char *const times[] = {"expires_at",           "obtained_at",           "last_refresh",
                                      "agent_key_expires_at", "agent_key_obtained_at", "expires_at_ms"};
  tl_status rc;
  for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++)
    if ((rc = want_token(file, path, o, tokens[i], flags, err)) != TL_OK)
      return rc;
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
    if ((rc = want_type(file, path, o, strs[i], T_STR, "a string or null", err)) != TL_OK)
      return rc;
  for (size_t i = 0; i < sizeof times / sizeof *times; i++)
    if ((rc = want_time(file, path, o, times[i], err)) != TL_OK)
      return rc;
  if ((rc = want_type(file, path, o, "expires_in", T_INT | T_REAL, "a number", err)) != TL_OK ||
      (rc = want_type(file, path, o, "agent_key_expires_in", T_INT | T_REAL, "a number", err)) != TL_OK)
    return rc;
  json_t *ei = json_object_get(o, "expires_in");
  int64_t x;
  if (json_is_real(ei) && tl__num_f2i(&x, json_real_value(ei), -TL_MS_MAX / 1000, TL_MS_MAX / 1000))
    return tl__err(err, TL_EINVAL, 0, "%s: %s.expires_in: out of range", file, path);
  return TL_OK;
}

static tl_status walk_pool(tl__slots *ss, json_t *pool, const char *file, unsigned flags, tl_error *err)
{
  tl_status rc = TL_OK;
  const char *p;
  json_t *v;
  char path[240], epath[300], place[200];
  json_t *seen = json_object(); /* ids per provider array: a set, so a walk stays linear */
  if (!seen)
    return tl__oom(err);
  json_object_foreach(pool, p, v)
  {
    snprintf(path, sizeof path, "$.credential_pool.%.200s", p);
    if (!tl__provider_name_valid(p)) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: %s: not a provider id (1-128 of A-Z a-z 0-9 . _ : - + @)", file, path);
      goto done;
    }
    if (!json_is_array(v)) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: %s: expected an array", file, path);
      goto done;
    }
    json_object_clear(seen);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
      snprintf(epath, sizeof epath, "%s[%zu]", path, i);
      if (!json_is_object(e)) {
        rc = tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, epath);
        goto done;
      }
      json_t *id = json_object_get(e, "id");
      if (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > 64 ||
          strlen(json_string_value(id)) != json_string_length(id)) {
        rc = tl__err(err, TL_EINVAL, 0, "%s: %s.id: expected a string of 1-64 characters", file, epath);
        goto done;
      }
      if ((rc = check_token_fields(file, epath, e, flags, err)) != TL_OK ||
          (rc = want_int(file, epath, e, "priority", -1000000000, 1000000000, err)) != TL_OK ||
          (rc = want_int(file, epath, e, "request_count", 0, INT64_MAX / 2, err)) != TL_OK ||
          (rc = want_type(file, epath, e, "source", T_STR, "a string", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "auth_type", T_STR, "a string", err)) != TL_OK ||
          (rc = want_type(file, epath, e, "last_status", T_STR, "a string or null", err)) != TL_OK ||
          (rc = want_time(file, epath, e, "last_status_at", err)) != TL_OK ||
          (rc = want_int(file, epath, e, "last_error_code", 0, 999, err)) != TL_OK ||
          (rc = want_time(file, epath, e, "last_error_reset_at", err)) != TL_OK)
        goto done;
      if (json_object_get(seen, json_string_value(id))) {
        rc =
            tl__err(err, TL_EINVAL, 0, "%s: %s.id: '%s' appears twice in %s", file, epath, json_string_value(id), path);
        goto done;
      }
      json_object_set_new(seen, json_string_value(id), json_true());
      snprintf(place, sizeof place, "pool:%.120s:%.64s", p, json_string_value(id));
      if ((rc = push_slot(ss, TL_SLOT_POOL, p, place, epath, e, NULL, err)) != TL_OK)
        goto done;
      snprintf(ss->v[ss->n - 1].entry, sizeof ss->v[ss->n - 1].entry, "%s", json_string_value(id));
      ss->v[ss->n - 1].array = v;
    }
  }
done:
  json_decref(seen);
  return rc;
}

static tl_status walk_providers(tl__slots *ss, json_t *providers, const char *file, unsigned flags, tl_error *err)
{
  tl_status rc;
  const char *p;
  json_t *v;
  char path[240], place[200];
  json_object_foreach(providers, p, v)
  {
    snprintf(path, sizeof path, "$.providers.%.200s", p);
    if (!tl__provider_name_valid(p))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: not a provider id (1-128 of A-Z a-z 0-9 . _ : - + @)", file, path);
    if (!json_is_object(v))
      return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, path);
    if ((rc = check_token_fields(file, path, v, flags, err)) != TL_OK)
      return rc;
    json_t *tokens = json_object_get(v, "tokens");
    snprintf(place, sizeof place, "singleton:%.180s", p);
    if (tokens) {
      char tpath[300];
      snprintf(tpath, sizeof tpath, "%s.tokens", path);
      if (!json_is_object(tokens))
        return tl__err(err, TL_EINVAL, 0, "%s: %s: expected an object", file, tpath);
      if ((rc = check_token_fields(file, tpath, tokens, flags, err)) != TL_OK)
        return rc;
      if ((rc = push_slot(ss, TL_SLOT_TOKENS, p, place, tpath, tokens, v, err)) != TL_OK)
        return rc;
    } else if (json_object_get(v, "refresh_token") || json_object_get(v, "access_token") ||
               json_object_get(v, "last_auth_error") || strcmp(p, "nous") == 0) {
      if ((rc = push_slot(ss, TL_SLOT_SINGLETON, p, place, path, v, NULL, err)) != TL_OK)
        return rc;
    }
  }
  return TL_OK;
}

tl_status tl__hf_walk(tl__slots *ss, json_t *doc, const char *file, unsigned flags, tl_error *err)
{
  tl_status rc;
  memset(ss, 0, sizeof *ss);
  if (!(flags & TL_WALK_TEMPLATE) && names_ledger_object(doc, 0))
    return tl__err(err, TL_EINVAL, 0,
                   "%s: holds an object with a \"$tl\" key, the form of tokenledger's internal references; an input "
                   "file may not name the ledger's objects",
                   file);
  if (flags & TL_WALK_SHARED) {
    if ((rc = check_token_fields(file, "$", doc, flags, err)) != TL_OK)
      return rc;
    return push_slot(ss, TL_SLOT_SHARED, "nous", "shared", "$", doc, NULL, err);
  }
  if ((rc = want_int(file, "$", doc, "version", 0, 1000000, err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "active_provider", T_STR, "a string or null", err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "updated_at", T_STR, "a string", err)) != TL_OK ||
      (rc = want_type(file, "$", doc, "suppressed_sources", T_OBJ, "an object", err)) != TL_OK)
    goto fail;
  json_t *providers = json_object_get(doc, "providers");
  if (providers && !json_is_object(providers)) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: $.providers: expected an object", file);
    goto fail;
  }
  json_t *pool = json_object_get(doc, "credential_pool");
  if (pool && !json_is_object(pool)) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: $.credential_pool: expected an object", file);
    goto fail;
  }
  /* Pool rows first: a singleton whose grant a pool row holds resolves to the same credential. */
  if ((rc = walk_pool(ss, pool, file, flags, err)) != TL_OK || (rc = walk_providers(ss, providers, file, flags, err)))
    goto fail;
  json_t *systems = json_object_get(doc, "systems");
  if (systems) {
    json_t *np = json_is_object(systems) ? json_object_get(systems, "nous_portal") : NULL;
    if (!json_is_object(systems) || (np && !json_is_object(np))) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: $.systems: expected an object with an object nous_portal", file);
      goto fail;
    }
    if (np) {
      if ((rc = check_token_fields(file, "$.systems.nous_portal", np, flags, err)) != TL_OK)
        goto fail;
      if (!json_object_get(providers, "nous") && (rc = push_slot(ss, TL_SLOT_SINGLETON, "nous", "singleton:nous",
                                                                 "$.systems.nous_portal", np, NULL, err)) != TL_OK)
        goto fail;
    }
  }
  return TL_OK;
fail:
  tl__hf_slots_free(ss);
  return rc;
}

/* ---- references and times ------------------------------------------------------------ */

const char *const tl__secret_keys[] = {"access_token", "refresh_token", "agent_key",     "anon_token",
                                       "id_token",     "api_key",       "client_secret", NULL};

json_t *tl__hf_ref(const char *what, int64_t cred)
{
  return json_pack("{s:s, s:I}", "$tl", what, "credential", (json_int_t)cred);
}

int64_t tl__hf_ref_cred(const json_t *v)
{
  if (!json_is_object(v) || !json_is_string(json_object_get(v, "$tl")))
    return 0;
  json_t *c = json_object_get(v, "credential");
  return json_is_integer(c) && json_integer_value(c) > 0 ? (int64_t)json_integer_value(c) : 0;
}

void tl__hf_iso(char *out, size_t n, int64_t ms, int micro, int zulu)
{
  if (ms < 0)
    ms = 0;
  if (ms > TL_MS_MAX)
    ms = TL_MS_MAX;
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  if (micro)
    snprintf(out, n, "%s.%06d%s", base, (int)(ms % 1000) * 1000, zulu ? "Z" : "+00:00");
  else
    snprintf(out, n, "%s%s", base, zulu ? "Z" : "+00:00");
}

static int64_t time_of(const json_t *v)
{
  int64_t ms = 0;
  if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
    return 0;
  return tl__num_time(&ms, v) ? 0 : ms;
}

const char *tl__hf_slot_rt(const tl__slot *sl)
{
  json_t *v = json_object_get(sl->obj, "refresh_token");
  return json_is_string(v) && json_string_length(v) > 0 ? json_string_value(v) : NULL;
}

int64_t tl__hf_slot_expiry(const tl__slot *sl)
{
  int64_t ms = time_of(json_object_get(sl->obj, "expires_at"));
  if (ms)
    return ms;
  if ((ms = time_of(json_object_get(sl->obj, "expires_at_ms"))))
    return ms;
  json_t *at = json_object_get(sl->obj, "access_token");
  return json_is_string(at) ? tl__jwt_exp_ms(json_string_value(at)) : 0;
}

int64_t tl__hf_slot_obtained(const tl__slot *sl)
{
  int64_t ms = time_of(json_object_get(sl->obj, "obtained_at"));
  if (!ms && sl->holder)
    ms = time_of(json_object_get(sl->holder, "last_refresh"));
  if (!ms)
    ms = time_of(json_object_get(sl->obj, "last_refresh"));
  if (!ms)
    ms = time_of(json_object_get(sl->obj, "agent_key_obtained_at"));
  return ms;
}

/* ---- writing a grant in Hermes' shape ---------------------------------------------------- */

/* Sets o[k] = v (stolen); 1 if the value changed. */
static int put(json_t *o, const char *k, json_t *v)
{
  json_t *old = json_object_get(o, k);
  if (old && json_equal(old, v)) {
    json_decref(v);
    return 0;
  }
  json_object_set_new(o, k, v);
  return 1;
}

/* Only where the key exists already (keeps a row's shape). */
static int put_present(json_t *o, const char *k, json_t *v)
{
  if (!json_object_get(o, k)) {
    json_decref(v);
    return 0;
  }
  return put(o, k, v);
}

static int drop(json_t *o, const char *k)
{
  return json_object_del(o, k) == 0;
}

static json_t *iso_json(int64_t ms, int micro, int zulu)
{
  char buf[64];
  tl__hf_iso(buf, sizeof buf, ms, micro, zulu);
  return json_string(buf);
}

/* Expiry as Hermes' agent-key step leaves it: the JWT exp (no fraction) when the
 * access token is a JWT, else obtained + expires_in. */
typedef struct expiry {
  int64_t at;    /* ms, 0 unknown */
  int jwt;       /* 1: from the JWT exp */
  int64_t left;  /* seconds left at write time */
  int64_t lived; /* seconds issued for */
} expiry;

static expiry expiry_of(const tl__grant *g)
{
  expiry e = {0};
  int64_t jwt = g->access_token ? tl__jwt_exp_ms(g->access_token) : 0;
  e.jwt = jwt > 0;
  e.at = jwt > 0 ? jwt : g->expires_ms;
  if (e.at > 0) {
    e.left = e.at > g->now_ms ? (e.at - g->now_ms) / 1000 : 0;
    e.lived = e.at > g->obtained_ms ? (e.at - g->obtained_ms) / 1000 : 0;
  }
  return e;
}

static json_t *tls_default(void)
{
  return json_pack("{s:b, s:n}", "insecure", 0, "ca_bundle");
}

static int fill_nous(json_t *o, const tl__grant *g, int pool)
{
  expiry e = expiry_of(g);
  int changed = 0;
  json_t *old_key = json_object_get(o, "agent_key");
  int same_key = json_is_string(old_key) && strcmp(json_string_value(old_key), g->access_token) == 0;
  changed |= put(o, "access_token", json_string(g->access_token));
  changed |= put(o, "refresh_token", json_string(g->refresh_token));
  if (e.at) {
    changed |= put(o, "expires_at", iso_json(e.at, !e.jwt, 0));
    if (pool)
      put_present(o, "expires_in", json_integer(e.jwt ? e.left : e.lived));
    else
      put(o, "expires_in", json_integer(e.jwt ? e.left : e.lived)); /* derived: not a change */
  }
  if (g->inference_base_url)
    changed |= put(o, "inference_base_url", json_string(g->inference_base_url));
  changed |= put(o, "agent_key", json_string(g->access_token));
  if (e.at) {
    changed |= put(o, "agent_key_expires_at", iso_json(e.at, 0, 0));
    if (pool)
      put_present(o, "agent_key_expires_in", json_integer(e.left));
    else
      put(o, "agent_key_expires_in", json_integer(e.left));
  }
  int (*set)(json_t *, const char *, json_t *) = pool ? put_present : put;
  changed |= set(o, "obtained_at", iso_json(g->obtained_ms, 1, 0));
  if (!same_key || !json_object_get(o, "agent_key_obtained_at"))
    changed |= set(o, "agent_key_obtained_at", iso_json(g->obtained_ms, 1, 0));
  changed |= set(o, "agent_key_id", json_null());
  changed |= set(o, "agent_key_reused", json_false());
  if (g->token_type)
    changed |= set(o, "token_type", json_string(g->token_type));
  else if (!pool && !json_object_get(o, "token_type"))
    changed |= put(o, "token_type", json_string("Bearer"));
  if (g->scope)
    changed |= set(o, "scope", json_string(g->scope));
  if (g->client_id)
    changed |= set(o, "client_id", json_string(g->client_id));
  if (g->portal_base_url)
    changed |= set(o, "portal_base_url", json_string(g->portal_base_url));
  if (!pool && !json_is_object(json_object_get(o, "tls")))
    changed |= put(o, "tls", tls_default());
  if (!pool)
    changed |= drop(o, "last_auth_error");
  return changed;
}

/* Status fields of a pool row, cleared as Hermes clears them when it adopts new tokens. */
static void clear_status(json_t *o)
{
  static const char *const status[] = {"last_status",       "last_status_at",     "last_error_code",
                                       "last_error_reason", "last_error_message", "last_error_reset_at"};
  for (size_t i = 0; i < sizeof status / sizeof *status; i++)
    put_present(o, status[i], json_null());
}

static int fill_other(tl__slot *sl, const tl__grant *g)
{
  json_t *o = sl->obj;
  int changed = put(o, "access_token", json_string(g->access_token));
  changed |= put(o, "refresh_token", json_string(g->refresh_token));
  if (g->expires_ms) {
    changed |= put_present(o, "expires_at", iso_json(g->expires_ms, 1, 0));
    changed |= put_present(o, "expires_at_ms", json_integer(g->expires_ms));
  }
  if (sl->kind == TL_SLOT_TOKENS) {
    /* Codex's tokens object: the id_token of the last answer goes with its pair, as the Codex CLI writes it
     * (Hermes keeps the one it had; a stale one names the account all the same). */
    if (g->id_token)
      changed |= put(o, "id_token", json_string(g->id_token));
    changed |= put(sl->holder, "last_refresh", iso_json(g->obtained_ms, 1, 1));
    changed |= drop(sl->holder, "last_auth_error");
  } else {
    changed |= put_present(o, "last_refresh", iso_json(g->obtained_ms, 1, 1));
    changed |= put_present(o, "obtained_at", iso_json(g->obtained_ms, 1, 0));
    if (sl->kind == TL_SLOT_SINGLETON)
      changed |= drop(o, "last_auth_error");
  }
  return changed;
}

static int fill_shared(json_t *o, const tl__grant *g)
{
  expiry e = expiry_of(g);
  int changed = put(o, "_schema", json_integer(1));
  changed |= put(o, "access_token", json_string(g->access_token));
  changed |= put(o, "refresh_token", json_string(g->refresh_token));
  changed |= put(o, "token_type", json_string(g->token_type ? g->token_type : "Bearer"));
  if (g->scope)
    changed |= put(o, "scope", json_string(g->scope));
  if (g->client_id)
    changed |= put(o, "client_id", json_string(g->client_id));
  if (g->portal_base_url)
    changed |= put(o, "portal_base_url", json_string(g->portal_base_url));
  if (g->inference_base_url)
    changed |= put(o, "inference_base_url", json_string(g->inference_base_url));
  changed |= put(o, "obtained_at", iso_json(g->obtained_ms, 1, 0));
  if (e.at)
    changed |= put(o, "expires_at", iso_json(e.at, !e.jwt, 0));
  /* The shared store never holds the volatile agent key fields. */
  static const char *const never[] = {"agent_key",        "agent_key_id",         "agent_key_expires_at",
                                      "agent_key_reused", "agent_key_expires_in", "agent_key_obtained_at"};
  for (size_t i = 0; i < sizeof never / sizeof *never; i++)
    changed |= drop(o, never[i]);
  return changed;
}

static int same_string(json_t *v, const char *s)
{
  return json_is_string(v) && s && strcmp(json_string_value(v), s) == 0;
}

int tl__hf_fill(tl__slot *sl, const tl__grant *g)
{
  int changed;
  int nous = strcmp(sl->provider, "nous") == 0;
  /* The same tokens: the slot is in step, whatever format its times were written in. */
  if (same_string(json_object_get(sl->obj, "refresh_token"), g->refresh_token) &&
      same_string(json_object_get(sl->obj, "access_token"), g->access_token))
    return 0;
  if (sl->kind == TL_SLOT_SHARED)
    return fill_shared(sl->obj, g);
  if (nous && sl->kind == TL_SLOT_SINGLETON)
    return fill_nous(sl->obj, g, 0);
  if (nous && sl->kind == TL_SLOT_POOL) {
    json_t *rt = json_object_get(sl->obj, "refresh_token"), *at = json_object_get(sl->obj, "access_token");
    int tokens_changed = !json_is_string(rt) || strcmp(json_string_value(rt), g->refresh_token) != 0 ||
                         !json_is_string(at) || strcmp(json_string_value(at), g->access_token) != 0;
    changed = fill_nous(sl->obj, g, 1);
    if (tokens_changed)
      clear_status(sl->obj);
    return changed;
  }
  changed = fill_other(sl, g);
  if (changed && sl->kind == TL_SLOT_POOL)
    clear_status(sl->obj);
  return changed;
}

int tl__hf_fill_anthropic_pkce(json_t *doc, const tl__grant *g)
{
  int changed = put(doc, "accessToken", json_string(g->access_token));
  changed |= put(doc, "refreshToken", json_string(g->refresh_token));
  if (g->expires_ms)
    changed |= put(doc, "expiresAt", json_integer(g->expires_ms));
  return changed;
}

int tl__hf_set_portal(tl__slot *sl, const char *url)
{
  if (!url || strcmp(sl->provider, "nous") != 0)
    return 0;
  if (sl->kind == TL_SLOT_POOL)
    return put_present(sl->obj, "portal_base_url", json_string(url));
  if (sl->kind == TL_SLOT_SINGLETON || sl->kind == TL_SLOT_SHARED)
    return put(sl->obj, "portal_base_url", json_string(url));
  return 0;
}

int tl__hf_quarantine(tl__slot *sl, int64_t now_ms)
{
  static const char *const gone[] = {"access_token",     "refresh_token",        "expires_at",
                                     "expires_in",       "obtained_at",          "agent_key",
                                     "agent_key_id",     "agent_key_expires_at", "agent_key_expires_in",
                                     "agent_key_reused", "agent_key_obtained_at"};
  json_t *o = sl->obj;
  int changed = 0;
  if (sl->kind == TL_SLOT_TOKENS) {
    changed |= drop(o, "access_token");
    changed |= drop(o, "refresh_token");
    o = sl->holder;
  } else {
    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
      changed |= drop(o, gone[i]);
  }
  if (sl->kind == TL_SLOT_POOL) {
    changed |= put(o, "last_status", json_string("dead"));
    return changed;
  }
  if (changed || !json_object_get(o, "last_auth_error")) {
    char at[64];
    tl__hf_iso(at, sizeof at, now_ms, 1, 0);
    json_object_set_new(
        o, "last_auth_error",
        json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "provider", sl->provider, "message",
                  "The login was rejected by the token endpoint (recorded by tokenledger); log in again.", "reason",
                  "invalid_grant", "relogin_required", 1, "code", "invalid_grant", "at", at));
    changed = 1;
  }
  return changed;
}

json_t *tl__hf_pool_row(const char *entry_id, const char *label, int64_t priority)
{
  /* Hermes' PooledCredential.to_dict() order: core fields, status fields (always), then extras. */
  return json_pack("{s:s, s:s, s:s, s:I, s:s, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:I, s:n, "
                   "s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n}",
                   "id", entry_id, "label", label ? label : "device_code", "auth_type", "oauth", "priority",
                   (json_int_t)priority, "source", "device_code", "access_token", "refresh_token", "last_status",
                   "last_status_at", "last_error_code", "last_error_reason", "last_error_message",
                   "last_error_reset_at", "expires_at", "inference_base_url", "agent_key", "agent_key_expires_at",
                   "request_count", (json_int_t)0, "token_type", "scope", "client_id", "portal_base_url", "obtained_at",
                   "expires_in", "agent_key_id", "agent_key_expires_in", "agent_key_reused", "agent_key_obtained_at",
                   "tls");
}

/* ---- locks --------------------------------------------------------------------------------- */

void tl__hf_lock_path(char *out, size_t n, const char *file)
{
  snprintf(out, n, "%s", file);
  char *slash = strrchr(out, '/'), *dot = strrchr(out, '.');
  if (dot && (!slash || dot > slash + 1))
    *dot = '\0';
  size_t l = strlen(out);
  snprintf(out + l, n > l ? n - l : 0, ".lock");
}

int64_t tl__hf_lock_timeout_ms(void)
{
  const char *env = getenv("TOKENLEDGER_LOCK_TIMEOUT_MS");
  char *end = NULL;
  int64_t v;
  if (env && *env) {
    double d = strtod(env, &end);
    if (end && *end == '\0' && !tl__num_f2i(&v, d, 0, 600000))
      return v;
  }
  return 15000;
}

tl_status tl__hf_lock(int *out, const char *lock, int64_t deadline, int64_t poll_limit, tl_error *err)
{
  *out = -1;
  hfpath hp;
  tl_status wrc = walk_to(&hp, lock, err);
  if (wrc != TL_OK)
    return wrc;
  int fd = openat(hp.dir, hp.base, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK, 0600);
  hfpath_close(&hp);
  if (fd < 0) {
    int e = errno;
    return tl__err(err,
                   e == ENOENT  ? TL_ENOTFOUND
                   : e == ELOOP ? TL_EINSECURE
                   : e == ENXIO ? TL_EINVAL
                                : TL_EIO,
                   e, "%s: cannot open the lock: %s", lock, e == ELOOP ? "it is a symbolic link" : strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return tl__err(err, TL_EINVAL, 0, "%s: the lock is not a regular file", lock);
  }
  if (st.st_uid != geteuid() || st.st_nlink != 1) { /* another user's lock could be swapped or held for ever */
    close(fd);
    return st.st_uid != geteuid()
               ? not_yours(lock, "the lock", lock, st.st_uid, err)
               : tl__err(err, TL_EINSECURE, 0, "%s: the lock has %ld names (hard links)", lock, (long)st.st_nlink);
  }
  int64_t until = poll_limit > 0 && tl__now_ms() + poll_limit < deadline ? tl__now_ms() + poll_limit : deadline;
  long delay = 2;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int e = errno;
      close(fd);
      return tl__err(err, TL_EIO, e, "%s: flock: %s", lock, strerror(e));
    }
    if (tl__now_ms() >= until) {
      close(fd);
      return tl__err(err, TL_EBUSY, 0,
                     "%s: still locked (Hermes or another tokenledger holds it); nothing was presented or written; "
                     "try again",
                     lock);
    }
    tl__sleep_us((int64_t)delay * 1000);
    if (delay < 50)
      delay = delay * 2;
  }
  *out = fd;
  return TL_OK;
}

void tl__hf_unlock(int fd)
{
  if (fd >= 0) {
    flock(fd, LOCK_UN);
    close(fd);
  }
}

/* ---- writing files ---------------------------------------------------------------------------- */

/* The entry walk_to found, if it exists: a regular file of yours (else it is not replaced or removed). */
static tl_status check_existing(const char *path, const hfpath *hp, tl_error *err)
{
  struct stat st;
  if (fstatat(hp->dir, hp->base, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return errno == ENOENT ? TL_OK : tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
  return check_file(path, hp, &st, err);
}

/* A temporary file beside the target, created through the checked directory (never through a link). */
static int create_temp(char *name, size_t n, const hfpath *hp)
{
  char stem[80];
  snprintf(stem, sizeof stem, "%.64s", hp->base);
  char *dot = strrchr(stem, '.');
  if (dot && dot != stem)
    *dot = '\0';
  static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  for (int tries = 0; tries < 100; tries++) {
    unsigned char r[6];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
      return -1;
    char sfx[7];
    for (size_t i = 0; i < 6; i++)
      sfx[i] = abc[r[i] % (sizeof abc - 1)];
    sfx[6] = '\0';
    snprintf(name, n, ".%s_%s.tmp", stem, sfx);
    int fd = openat(hp->dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd >= 0 || errno != EEXIST)
      return fd;
  }
  errno = EEXIST;
  return -1;
}

static void sync_dir(const hfpath *hp)
{
  int dfd = openat(hp->dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

tl_status tl__hf_write(const char *target, const char *text, tl_error *err)
{
  char tmp[128];
  hfpath hp;
  tl_status rc = walk_to(&hp, target, err);
  if (rc != TL_OK)
    return rc;
  if ((rc = check_existing(target, &hp, err)) != TL_OK) {
    hfpath_close(&hp);
    return rc;
  }
  sigset_t old;
  tl__signals_defer(&old); /* the temporary file holds tokens: it must not outlive us */
  int fd = create_temp(tmp, sizeof tmp, &hp);
  if (fd < 0) {
    int e = errno;
    tl__signals_restore(&old);
    hfpath_close(&hp);
    return tl__err(err, e == ENOENT ? TL_ENOTFOUND : TL_EIO, e, "%s: cannot create a temporary file: %s", hp.shown,
                   strerror(e));
  }
  size_t len = strlen(text), off = 0;
  if (fchmod(fd, 0600) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s/%s: chmod: %s", hp.shown, tmp, strerror(errno));
    goto fail;
  }
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = tl__err(err, TL_EIO, errno, "%s/%s: write: %s", hp.shown, tmp, strerror(errno));
      goto fail;
    }
    off += (size_t)n;
  }
  if (fsync(fd) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s/%s: fsync: %s", hp.shown, tmp, strerror(errno));
    goto fail;
  }
  close(fd);
  fd = -1;
  if (renameat(hp.dir, tmp, hp.dir, hp.base) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: rename: %s", target, strerror(errno));
    goto fail;
  }
  tl__signals_restore(&old);
  sync_dir(&hp);
  hfpath_close(&hp);
  return TL_OK;
fail:
  if (fd >= 0)
    close(fd);
  unlinkat(hp.dir, tmp, 0);
  tl__signals_restore(&old);
  hfpath_close(&hp);
  return rc;
}

/* ---- defusing a spent token in place ----------------------------------------------------------- */

int tl__hf_is_defused(const char *rt)
{
  return rt && strncmp(rt, TL_HF_SPENT_PREFIX, sizeof TL_HF_SPENT_PREFIX - 1) == 0;
}

const char *tl__hf_slot_loopback_portal(json_t *doc, const tl__slot *sl)
{
  if (strcmp(sl->provider, "nous") != 0)
    return NULL;
  /* A pool row without a portal of its own refreshes through the file's Nous state (Hermes' resolver). */
  const char *url = json_string_value(json_object_get(sl->obj, "portal_base_url"));
  if (!url)
    url = json_string_value(
        json_object_get(json_object_get(json_object_get(doc, "providers"), "nous"), "portal_base_url"));
  int loopback = 0;
  tl_error ignore = {0};
  return url && strncmp(url, "http://", 7) == 0 && tl__url_classify(&loopback, url, &ignore) == TL_OK && loopback
             ? url
             : NULL;
}

/* 1 if the JSON string literal buf[0..len) (quotes included) decodes to one of rts. */
static int literal_is_one_of(const char *buf, size_t len, const char *const *rts, size_t nrts)
{
  json_error_t je;
  json_t *v = json_loadb(buf, len, JSON_DECODE_ANY, &je);
  int hit = 0;
  if (json_is_string(v))
    for (size_t i = 0; i < nrts && !hit; i++)
      hit = rts[i] && strlen(rts[i]) == json_string_length(v) && strcmp(json_string_value(v), rts[i]) == 0;
  json_decref(v);
  return hit;
}

static tl_status pwrite_all(int fd, const char *p, size_t n, off_t off, const char *path, tl_error *err)
{
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return tl__err(err, TL_EIO, errno, "%s: cannot overwrite in place: %s", path, strerror(errno));
    p += w;
    n -= (size_t)w;
    off += w;
  }
  return TL_OK;
}

tl_status tl__hf_defuse(int *out_n, const char *path, const char *const *rts, size_t nrts, tl_error *err)
{
  *out_n = 0;
  /* The same walk as a write (tl__hf_write): the file and its directory are yours and nobody
   * else can swap them; the file is opened through the checked directory, never through a link. */
  hfpath hp;
  tl_status rc = walk_gone_ok(&hp, path, err);
  if (rc != TL_OK || hp.dir < 0)
    return rc;
  int fd = openat(hp.dir, hp.base, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0) {
    int e = errno;
    hfpath_close(&hp);
    return e == ENOENT ? TL_OK
                       : tl__err(err, e == ELOOP ? TL_EINSECURE : TL_EIO, e, "%s: cannot open: %s", path, strerror(e));
  }
  char *buf = NULL;
  size_t len = 0;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
    goto done;
  }
  if ((rc = check_file(path, &hp, &st, err)) != TL_OK)
    goto done;
  if (st.st_size > TL_HERMES_MAX_FILE) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: larger than %d MiB; left alone", path, TL_HERMES_MAX_FILE / (1024 * 1024));
    goto done;
  }
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0 ||
      (rc = read_all(&buf, &len, fd, path, st.st_size, err)) != TL_OK) {
    if (rc == TL_OK)
      rc = tl__err(err, TL_EIO, errno, "%s: %s", path, strerror(errno));
    goto done;
  }
  /* Every string literal: a token's bytes become the marker's, same length, so the
   * file keeps its size and structure and needs no new block on the disk. */
  for (size_t i = 0; i < len && rc == TL_OK; i++) {
    if (buf[i] != '"')
      continue;
    size_t j = i + 1;
    while (j < len && buf[j] != '"')
      j += buf[j] == '\\' ? 2 : 1;
    if (j >= len)
      break;
    size_t inner = j - i - 1, k = j + 1;
    while (k < len && (buf[k] == ' ' || buf[k] == '\t' || buf[k] == '\n' || buf[k] == '\r'))
      k++;
    int is_key = k < len && buf[k] == ':';
    /* Values only (a key that happens to equal a token is left alone), and only where the whole
     * marker fits: a shorter token could not be recognised as defused afterwards. */
    if (!is_key && inner >= TL_HF_DEFUSE_MIN && literal_is_one_of(buf + i, j - i + 1, rts, nrts)) {
      char *m = buf + i + 1;
      memset(m, 'x', inner);
      memcpy(m, TL_HF_SPENT_PREFIX, inner < sizeof TL_HF_SPENT_PREFIX - 1 ? inner : sizeof TL_HF_SPENT_PREFIX - 1);
      if ((rc = pwrite_all(fd, m, inner, (off_t)(i + 1), path, err)) == TL_OK)
        (*out_n)++;
    }
    i = j;
  }
  if (rc == TL_OK && *out_n && fdatasync(fd) != 0)
    rc = tl__err(err, TL_EIO, errno, "%s: fdatasync: %s", path, strerror(errno));
done:
  if (buf) {
    tl_burn(buf, len);
    free(buf);
  }
  close(fd);
  hfpath_close(&hp);
  return rc;
}

tl_status tl__hf_remove(const char *target, tl_error *err)
{
  hfpath hp;
  tl_status rc = walk_gone_ok(&hp, target, err);
  if (rc != TL_OK || hp.dir < 0)
    return rc;
  if ((rc = check_existing(target, &hp, err)) == TL_OK && unlinkat(hp.dir, hp.base, 0) != 0 && errno != ENOENT)
    rc = tl__err(err, TL_EIO, errno, "%s: cannot remove: %s", target, strerror(errno));
  hfpath_close(&hp);
  return rc;
}

char *tl__hf_dump(const json_t *doc, int shared)
{
  return json_dumps(doc, JSON_INDENT(2) | (shared ? JSON_SORT_KEYS : JSON_PRESERVE_ORDER));
}
