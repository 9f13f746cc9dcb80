/*
 * agent.c - serve's local agent: one refresher per machine (issue 21). While
 * `tokenledger serve` runs, it also listens on the Unix socket "<ledger>-agent"
 * in the ledger's (0700) directory, and tl_token_get and tl_refresh in any
 * process of the ledger's owner ask it instead of opening transactions
 * themselves. When the socket is absent, not trustworthy, or the agent does
 * not answer in time, the caller does exactly what it does without an agent.
 *
 * The server (tl__agent_start/stop, called from serve.c's tl_serve_run): an
 * accept thread and one thread per connection. A fresh access token is
 * answered from the agent's "hot" store (tl__token_hot: select.c's answer
 * cache, valid while the ledger's change marker is unchanged, so coherent with
 * every other writer, else one read), never behind a refresh; everything else
 * goes to its other store, one request at a time (agent->mu), where a refresh
 * runs the normal protocol in this process. Both are its own stores on serve's
 * ledger.
 * Concurrent requests for the same thing (same op, profile, provider or
 * credential, flags) share one flight: one leader does the work, the others
 * wait for its result. Counters (answers, refreshes, shared answers, unknown
 * outcomes, reuse refused, refused peers) are read with op "stats" (serve
 * --status) and as Prometheus text (serve's GET /metrics).
 *
 * The wire: one JSON object per line. Request {"op":"token","profile":..,
 * "provider":..,"flags":..} or {"op":"refresh","credential":..,"flags":..}
 * (with "actor" and "command", the caller's, for the audit) or {"op":"stats"}.
 * The agent first answers {"ack":true} (it is alive and has the request), then
 * {"ok":true,"expires_at_ms":..,"credential":..,"entry_id":..,"base_url":..,
 * "refreshed":..,"access_token_bytes":N} followed by exactly N raw bytes of
 * the access token and a newline, or {"ok":false,"status":N,"sys":N,
 * "message":".."}. The access token never passes through a JSON library on
 * either side (its buffers could not all be burned); every buffer that held it
 * is burned.
 *
 * Invariants: the socket is created only in the ledger's directory, at 0600,
 * after removing only a stale socket of our own uid (serve holds the port
 * file's lock, so no live agent of this ledger owns it) and never through a
 * symlink; a path that does not fit sun_path means no agent, said in serve's
 * log. A connection whose SO_PEERCRED uid is not serve's euid is closed
 * unread. The client trusts "<ledger>-agent" only if lstat says it is a socket
 * of our uid with mode 0600 and the server's SO_PEERCRED uid is ours; anything
 * else (a planted file, a FIFO, a symlink, a stale socket, a silent server) is
 * never written to, and the call falls back. TOKENLEDGER_AGENT=off turns the
 * client off (tests); stores with their own transport, read-only stores and the
 * stores of serve and of the agent itself never ask an agent.
 */
#define _GNU_SOURCE /* accept4, struct ucred (SO_PEERCRED) */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define AGENT_LINE_MAX  (TL_TOKEN_MAX + 8192) /* a request or a header line */
#define AGENT_ACK_MS    2000                  /* the client falls back if no ack comes within this */
#define AGENT_ANSWER_MS 120000                /* after the ack: a refresh's own timeouts bound it */
#define AGENT_POLL_MS   200                   /* how often server threads look at the stop flag */
#define AGENT_CONNS_MAX 512                   /* connections served at once; more are closed (clients fall back) */

/* ---- a line reader over a socket, its buffer burned ------------------------------------------------ */

typedef struct linebuf {
  char *buf;
  size_t len, cap;
} linebuf;

static void linebuf_free(linebuf *b)
{
  if (b->buf) {
    tl_burn(b->buf, b->cap);
    free(b->buf);
  }
  memset(b, 0, sizeof *b);
}

/* Drops the first n bytes. */
static void linebuf_take(linebuf *b, size_t n)
{
  memmove(b->buf, b->buf + n, b->len - n);
  tl_burn(b->buf + b->len - n, n);
  b->len -= n;
}

/*
 * Waits until b holds at least want bytes, or a newline when want is 0. 1 when it does, 0 on EOF,
 * error, timeout (deadline in ms; stop, if not NULL, polled) or an overlong line.
 */
static int linebuf_fill(linebuf *b, int fd, size_t want, int64_t deadline, atomic_int *stop)
{
  for (;;) {
    if (want ? b->len >= want : (b->len && memchr(b->buf, '\n', b->len)))
      return 1;
    if (b->len >= AGENT_LINE_MAX + (want ? want : 0))
      return 0;
    if (b->cap - b->len < 4096) {
      size_t cap = b->cap ? b->cap * 2 : 8192;
      char *nb = malloc(cap);
      if (!nb)
        return 0;
      if (b->buf) {
        memcpy(nb, b->buf, b->len);
        tl_burn(b->buf, b->cap);
        free(b->buf);
      }
      b->buf = nb;
      b->cap = cap;
    }
    int64_t left = deadline - tl__now_ms();
    if (left <= 0 || (stop && atomic_load(stop)))
      return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, (int)(left < AGENT_POLL_MS ? left : AGENT_POLL_MS));
    if (pr < 0 && errno != EINTR)
      return 0;
    if (pr <= 0)
      continue;
    ssize_t n = recv(fd, b->buf + b->len, b->cap - b->len, MSG_DONTWAIT);
    if (n == 0)
      return 0;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      return 0;
    }
    b->len += (size_t)n;
  }
}

/* Writes all of iov (one or more buffers) within the deadline. 1 on success. */
static int write_all(int fd, struct iovec *iov, int n, int64_t deadline)
{
  while (n > 0) {
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN)
        return 0;
      int64_t left = deadline - tl__now_ms();
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      if (left <= 0 || poll(&p, 1, (int)left) <= 0)
        return 0;
      continue;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 1;
}

static int write_json_line(int fd, json_t *j, int64_t deadline)
{
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text)
    return 0;
  struct iovec iov[2] = {{text, strlen(text)}, {"\n", 1}};
  int ok = write_all(fd, iov, 2, deadline);
  free(text);
  return ok;
}

static int agent_path(char *out, size_t n, const tl_store *s)
{
  int len = snprintf(out, n, "%s-agent", s->path);
  return len > 0 && (size_t)len < n;
}

/* ---- the server ----------------------------------------------------------------------------------- */

typedef struct flight {
  struct flight *next;
  char *key;
  int done, refs;
  tl_status rc;
  tl_error err;
  tl_token *tok;
} flight;

struct tl__agent {
  tl_store *store; /* the agent's own, on serve's ledger; used under mu */
  pthread_mutex_t mu;
  tl_store *hot; /* another, for fresh answers only (tl__token_hot), under hot_mu: never behind a refresh */
  pthread_mutex_t hot_mu;
  pthread_mutex_t fl_mu; /* flights, conns */
  pthread_cond_t fl_cv;
  flight *flights;
  int conns; /* connection threads running */
  int lfd;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  struct stat made; /* the socket file we bound, to remove only it */
  pthread_t accept_thread;
  atomic_int stop;
  void (*log)(void *ud, const char *line);
  void *ud;
  _Atomic int64_t answers, refreshes, shared, unknown, reuse, errors, refused_peers, refused_said, connections;
};

static void alog(tl__agent *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void alog(tl__agent *a, const char *fmt, ...)
{
  char line[600];
  va_list ap;
  if (!a->log)
    return;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  a->log(a->ud, line);
}

static void flight_release(tl__agent *a, flight *f)
{
  /* fl_mu held */
  if (--f->refs > 0)
    return;
  (void)a;
  tl_token_free(f->tok);
  free(f->key);
  free(f);
}

typedef struct job {
  const char *op; /* "token" or "refresh" */
  const char *profile, *provider, *actor, *command;
  int64_t credential;
  unsigned flags;
} job;

/* The work itself, on the agent's store. */
static tl_status job_run(tl__agent *a, tl_token **out, const job *j, tl_error *err)
{
  pthread_mutex_lock(&a->mu);
  tl_store_set_actor(a->store, j->actor, j->command);
  tl_status rc = strcmp(j->op, "token") == 0 ? tl_token_get(out, a->store, j->profile, j->provider, j->flags, err)
                                             : tl_refresh(out, a->store, j->credential, j->flags, err);
  tl_store_set_actor(a->store, NULL, "agent");
  pthread_mutex_unlock(&a->mu);
  return rc;
}

/* One flight per key: the leader runs the job, the others wait and get a copy of its result. */
static tl_status job_shared(tl__agent *a, tl_token **out, const job *j, int *follower, tl_error *err)
{
  /* The whole key, never cut: two requests share a flight only if they ask for exactly the same thing. */
  int tok = strcmp(j->op, "token") == 0;
  size_t kn = (tok ? strlen(j->profile) + strlen(j->provider) : 0) + 64;
  char *key = malloc(kn);
  if (!key)
    return tl__oom(err);
  if (tok)
    snprintf(key, kn, "t\n%s\n%s\n%u", j->profile, j->provider, j->flags);
  else
    snprintf(key, kn, "r\n%lld\n%u", (long long)j->credential, j->flags);
  *follower = 0;
  pthread_mutex_lock(&a->fl_mu);
  flight *f = a->flights;
  while (f && strcmp(f->key, key) != 0)
    f = f->next;
  if (f) {
    *follower = 1;
    f->refs++;
    while (!f->done)
      pthread_cond_wait(&a->fl_cv, &a->fl_mu);
    tl_status rc = f->rc;
    *err = f->err;
    if (rc == TL_OK && f->tok) {
      *out = tl__token_new(f->tok->access_token, f->tok->expires_at_ms, f->tok->credential, f->tok->entry_id,
                           f->tok->base_url, f->tok->refreshed);
      if (!*out)
        rc = tl__oom(err);
    }
    flight_release(a, f);
    pthread_mutex_unlock(&a->fl_mu);
    free(key);
    return rc;
  }
  f = calloc(1, sizeof *f);
  if (f)
    f->key = key;
  else
    free(key);
  if (f) {
    f->refs = 1;
    f->next = a->flights;
    a->flights = f;
  }
  pthread_mutex_unlock(&a->fl_mu);
  tl_status rc = job_run(a, out, j, err);
  if (!f)
    return rc;
  pthread_mutex_lock(&a->fl_mu);
  for (flight **p = &a->flights; *p; p = &(*p)->next)
    if (*p == f) {
      *p = f->next;
      break;
    }
  f->done = 1;
  f->rc = rc;
  f->err = *err;
  if (rc == TL_OK && *out && f->refs > 1)
    f->tok = tl__token_new((*out)->access_token, (*out)->expires_at_ms, (*out)->credential, (*out)->entry_id,
                           (*out)->base_url, (*out)->refreshed);
  if (rc == TL_OK && *out && f->refs > 1 && !f->tok) {
    f->rc = TL_ENOMEM;
    tl__oom(&f->err);
  }
  pthread_cond_broadcast(&a->fl_cv);
  flight_release(a, f);
  pthread_mutex_unlock(&a->fl_mu);
  return rc;
}

static json_t *stats_json(tl__agent *a)
{
  return json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "ok", 1, "connections",
                   (json_int_t)atomic_load(&a->connections), "answers", (json_int_t)atomic_load(&a->answers),
                   "refreshes", (json_int_t)atomic_load(&a->refreshes), "shared", (json_int_t)atomic_load(&a->shared),
                   "unknown", (json_int_t)atomic_load(&a->unknown), "reuse_refused", (json_int_t)atomic_load(&a->reuse),
                   "errors", (json_int_t)atomic_load(&a->errors), "refused_peers",
                   (json_int_t)atomic_load(&a->refused_peers));
}

/* Answers one request line. 0 if the connection should close. */
static int serve_request(tl__agent *a, int fd, const char *line, size_t len, long peer_pid)
{
  int64_t deadline = tl__now_ms() + 10000;
  json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
  const char *op = json_string_value(json_object_get(req, "op"));
  if (!op) {
    json_decref(req);
    write_json_line(fd,
                    json_pack("{s:b, s:i, s:i, s:s}", "ok", 0, "status", TL_EINVAL, "sys", 0, "message",
                              "agent: a request is one JSON object with an op"),
                    deadline);
    return 0; /* not a client of ours: hang up */
  }
  if (strcmp(op, "stats") == 0) {
    json_decref(req);
    return write_json_line(fd, stats_json(a), deadline);
  }
  job j = {.op = op,
           .profile = json_string_value(json_object_get(req, "profile")),
           .provider = json_string_value(json_object_get(req, "provider")),
           .actor = json_string_value(json_object_get(req, "actor")),
           .command = json_string_value(json_object_get(req, "command")),
           .credential = json_integer_value(json_object_get(req, "credential")),
           .flags = (unsigned)json_integer_value(json_object_get(req, "flags")) & TL_REFRESH_FORCE};
  tl_error err = {0};
  tl_token *t = NULL;
  tl_status rc;
  int follower = 0;
  int is_token = strcmp(op, "token") == 0;
  if ((!is_token && strcmp(op, "refresh") != 0) || (is_token && (!j.profile || !j.provider)) ||
      (!is_token && j.credential <= 0)) {
    json_decref(req);
    return write_json_line(fd,
                           json_pack("{s:b, s:i, s:i, s:s}", "ok", 0, "status", TL_EINVAL, "sys", 0, "message",
                                     "agent: unknown op or missing arguments"),
                           deadline);
  }
  if (!write_json_line(fd, json_pack("{s:b}", "ack", 1), deadline)) {
    json_decref(req);
    return 0;
  }
  char cmd[80];
  snprintf(cmd, sizeof cmd, "agent:%.60s", j.command ? j.command : "client");
  j.command = cmd;
  /* A fresh access token from memory (or one read), whatever refresh runs meanwhile; else the full path. */
  if (is_token && !(j.flags & TL_REFRESH_FORCE)) {
    pthread_mutex_lock(&a->hot_mu);
    int hot = tl__token_hot(&t, a->hot, j.profile, j.provider);
    pthread_mutex_unlock(&a->hot_mu);
    rc = hot ? TL_OK : job_shared(a, &t, &j, &follower, &err);
  } else {
    rc = job_shared(a, &t, &j, &follower, &err);
  }
  if (rc == TL_OK && t && t->access_token) {
    atomic_fetch_add(&a->answers, 1);
    if (follower)
      atomic_fetch_add(&a->shared, 1);
    else if (t->refreshed) {
      atomic_fetch_add(&a->refreshes, 1);
      alog(a, "agent: %s for %s%s%s%s (pid %ld): refreshed credential %lld", op, is_token ? "profile " : "credential",
           is_token ? j.profile : "", is_token ? " " : "", is_token ? j.provider : "", peer_pid,
           (long long)t->credential);
    }
  } else {
    if (rc == TL_OK)
      rc = tl__err(&err, TL_ERROR, 0, "agent: no token");
    if (rc == TL_EUNKNOWN)
      atomic_fetch_add(&a->unknown, 1);
    else if (rc == TL_EREUSE)
      atomic_fetch_add(&a->reuse, 1);
    else
      atomic_fetch_add(&a->errors, 1);
  }
  json_decref(req); /* j's strings are gone from here on */
  deadline = tl__now_ms() + 10000;
  int ok;
  if (rc != TL_OK) {
    ok = write_json_line(fd,
                         json_pack("{s:b, s:i, s:i, s:s}", "ok", 0, "status", (int)rc, "sys", err.sys, "message",
                                   err.message[0] ? err.message : tl_status_name(rc)),
                         deadline);
  } else {
    size_t n = strlen(t->access_token);
    json_t *h =
        json_pack("{s:b, s:I, s:I, s:s?, s:s?, s:b, s:I}", "ok", 1, "expires_at_ms", (json_int_t)t->expires_at_ms,
                  "credential", (json_int_t)t->credential, "entry_id", t->entry_id, "base_url", t->base_url,
                  "refreshed", t->refreshed, "access_token_bytes", (json_int_t)n);
    char *text = h ? json_dumps(h, JSON_COMPACT) : NULL;
    json_decref(h);
    ok = 0;
    if (text) {
      struct iovec iov[4] = {{text, strlen(text)}, {"\n", 1}, {t->access_token, n}, {"\n", 1}};
      ok = write_all(fd, iov, 4, deadline);
      free(text);
    }
  }
  tl_token_free(t);
  return ok;
}

typedef struct conn_arg {
  tl__agent *a;
  int fd;
  long pid;
} conn_arg;

static void *conn_main(void *p)
{
  conn_arg c = *(conn_arg *)p;
  free(p);
  tl__agent *a = c.a;
  linebuf b = {0};
  while (!atomic_load(&a->stop)) {
    /* Idle connections stay open (one per client store); a day without a request closes one. */
    if (!linebuf_fill(&b, c.fd, 0, tl__now_ms() + 86400000, &a->stop))
      break;
    char *nl = memchr(b.buf, '\n', b.len);
    size_t n = (size_t)(nl - b.buf);
    int keep = serve_request(a, c.fd, b.buf, n, c.pid);
    linebuf_take(&b, n + 1);
    if (!keep)
      break;
  }
  linebuf_free(&b);
  close(c.fd);
  pthread_mutex_lock(&a->fl_mu);
  a->conns--;
  pthread_cond_broadcast(&a->fl_cv);
  pthread_mutex_unlock(&a->fl_mu);
  return NULL;
}

static void *accept_main(void *p)
{
  tl__agent *a = p;
  while (!atomic_load(&a->stop)) {
    struct pollfd pf = {.fd = a->lfd, .events = POLLIN};
    if (poll(&pf, 1, AGENT_POLL_MS) <= 0)
      continue;
    int fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cl != sizeof cr || cr.uid != geteuid()) {
      long uid = cl == sizeof cr ? (long)cr.uid : -1;
      close(fd); /* unread */
      atomic_fetch_add(&a->refused_peers, 1);
      int64_t now = tl__now_ms(), prev = atomic_load(&a->refused_said);
      if (now - prev >= 60000 && atomic_compare_exchange_strong(&a->refused_said, &prev, now))
        alog(a,
             "agent: refused a connection from uid %ld: the agent answers only its own user (uid %ld); said once a "
             "minute at most",
             uid, (long)geteuid());
      continue;
    }
    pthread_mutex_lock(&a->fl_mu);
    int busy = a->conns >= AGENT_CONNS_MAX;
    pthread_mutex_unlock(&a->fl_mu);
    if (busy) { /* the owner's own processes, but threads are not free: the client falls back */
      close(fd);
      continue;
    }
    atomic_fetch_add(&a->connections, 1);
    conn_arg *c = malloc(sizeof *c);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (c) {
      *c = (conn_arg){a, fd, (long)cr.pid};
      pthread_mutex_lock(&a->fl_mu);
      a->conns++;
      pthread_mutex_unlock(&a->fl_mu);
      if (pthread_create(&th, &at, conn_main, c) != 0) {
        free(c);
        close(fd);
        pthread_mutex_lock(&a->fl_mu);
        a->conns--;
        pthread_mutex_unlock(&a->fl_mu);
      }
    } else {
      close(fd);
    }
    pthread_attr_destroy(&at);
  }
  return NULL;
}

/*
 * Makes the socket: removes a stale socket of ours first (the caller holds serve's port-file lock, so no
 * live agent of this ledger can own it), refuses anything else at the path, binds at 0600.
 */
static int make_socket(tl__agent *a, const char *path)
{
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid()) {
      alog(a,
           "agent: not started: %s exists and is not a socket of yours (a %s of uid %ld); the local agent stays off "
           "until it is removed",
           path,
           S_ISLNK(st.st_mode)    ? "symbolic link"
           : S_ISREG(st.st_mode)  ? "regular file"
           : S_ISFIFO(st.st_mode) ? "FIFO"
           : S_ISSOCK(st.st_mode) ? "socket"
                                  : "special file",
           (long)st.st_uid);
      return -1;
    }
    if (unlink(path) != 0) {
      alog(a, "agent: not started: cannot remove the stale socket %s: %s", path, strerror(errno));
      return -1;
    }
    alog(a, "agent: removed the stale socket of a serve that died");
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    alog(a, "agent: not started: socket: %s", strerror(errno));
    return -1;
  }
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path) + 1);
  mode_t old = umask(0177); /* the file is born 0600 (serve starts the agent before any other thread) */
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  int e = errno;
  umask(old);
  if (rc != 0) {
    alog(a, "agent: not started: cannot bind %s: %s", path, strerror(e));
    close(fd);
    return -1;
  }
  if (lstat(path, &a->made) != 0 || !S_ISSOCK(a->made.st_mode) || (a->made.st_mode & 0777) != 0600 ||
      listen(fd, 128) != 0) {
    alog(a, "agent: not started: %s is not the 0600 socket just made", path);
    unlink(path);
    close(fd);
    return -1;
  }
  return fd;
}

/* Everything the agent holds once its socket and threads exist: the listening socket, stores, locks. */
static void agent_free(tl__agent *a)
{
  if (a->lfd >= 0)
    close(a->lfd);
  tl_store_free(a->hot);
  tl_store_free(a->store);
  pthread_mutex_destroy(&a->mu);
  pthread_mutex_destroy(&a->hot_mu);
  pthread_mutex_destroy(&a->fl_mu);
  pthread_cond_destroy(&a->fl_cv);
  free(a);
}

tl__agent *tl__agent_start(tl_store *serve_store, void (*log)(void *ud, const char *line), void *ud)
{
  tl__agent *a = calloc(1, sizeof *a);
  if (!a)
    return NULL;
  a->log = log;
  a->ud = ud;
  a->lfd = -1;
  char path[4096];
  if (!agent_path(path, sizeof path, serve_store) || strlen(path) >= sizeof a->path) {
    alog(a,
         "agent: not started: the socket path %.400s... is longer than a Unix socket path may be (%zu bytes); "
         "clients do without it",
         serve_store->path, sizeof a->path - 1);
    free(a);
    return NULL;
  }
  memcpy(a->path, path, strlen(path) + 1); /* fits: checked above */
  tl_error err = {0};
  if (tl_store_open(&a->store, serve_store->path, 0, &err) != TL_OK) {
    alog(a, "agent: not started: cannot open the ledger: %s", err.message);
    free(a);
    return NULL;
  }
  if (tl_store_open(&a->hot, serve_store->path, 0, &err) != TL_OK) {
    alog(a, "agent: not started: cannot open the ledger: %s", err.message);
    tl_store_free(a->store);
    free(a);
    return NULL;
  }
  a->store->agent_off = 1;
  a->hot->agent_off = 1;
  tl_store_set_actor(a->store, NULL, "agent");
  if ((a->lfd = make_socket(a, a->path)) < 0) {
    tl_store_free(a->hot);
    tl_store_free(a->store);
    free(a);
    return NULL;
  }
  pthread_mutex_init(&a->mu, NULL);
  pthread_mutex_init(&a->hot_mu, NULL);
  pthread_mutex_init(&a->fl_mu, NULL);
  pthread_cond_init(&a->fl_cv, NULL);
  if (pthread_create(&a->accept_thread, NULL, accept_main, a) != 0) {
    alog(a, "agent: not started: no thread");
    unlink(a->path);
    agent_free(a);
    return NULL;
  }
  alog(a, "agent: listening on %s", a->path);
  return a;
}

void tl__agent_stop(tl__agent *a)
{
  if (!a)
    return;
  /* The path first: from now on clients find nothing and do without. Only the socket we made. */
  struct stat st;
  if (lstat(a->path, &st) == 0 && st.st_ino == a->made.st_ino && st.st_dev == a->made.st_dev)
    unlink(a->path);
  atomic_store(&a->stop, 1);
  pthread_join(a->accept_thread, NULL);
  close(a->lfd); /* no new connection; the ones open finish below */
  a->lfd = -1;
  pthread_mutex_lock(&a->fl_mu);
  while (a->conns > 0)
    pthread_cond_wait(&a->fl_cv, &a->fl_mu);
  pthread_mutex_unlock(&a->fl_mu);
  agent_free(a);
}

char *tl__agent_metrics(tl__agent *a)
{
  static const char *const names[] = {"answers",       "refreshes", "shared",        "unknown_outcomes",
                                      "reuse_refused", "errors",    "refused_peers", "connections"};
  static const char *const help[] = {"Access tokens the local agent answered",
                                     "Refreshes the local agent performed",
                                     "Answers shared from another request's flight",
                                     "Refreshes whose outcome is unknown",
                                     "Requests refused because a refresh token was spent",
                                     "Other failed requests",
                                     "Connections refused because their uid is not the ledger owner's",
                                     "Connections accepted from the owner"};
  int64_t v[8] = {0};
  if (a) {
    v[0] = atomic_load(&a->answers);
    v[1] = atomic_load(&a->refreshes);
    v[2] = atomic_load(&a->shared);
    v[3] = atomic_load(&a->unknown);
    v[4] = atomic_load(&a->reuse);
    v[5] = atomic_load(&a->errors);
    v[6] = atomic_load(&a->refused_peers);
    v[7] = atomic_load(&a->connections);
  }
  size_t cap = 4096, len = 0;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  len += (size_t)snprintf(out + len, cap - len,
                          "# HELP tokenledger_agent_up 1 if the local agent listens on its socket\n"
                          "# TYPE tokenledger_agent_up gauge\ntokenledger_agent_up %d\n",
                          a ? 1 : 0);
  for (int i = 0; i < 8 && len < cap; i++)
    len += (size_t)snprintf(out + len, cap - len,
                            "# HELP tokenledger_agent_%s_total %s\n# TYPE tokenledger_agent_%s_total counter\n"
                            "tokenledger_agent_%s_total %lld\n",
                            names[i], help[i], names[i], names[i], (long long)v[i]);
  return out;
}

/* ---- the client ------------------------------------------------------------------------------------- */

void tl__agent_disconnect(tl_store *s)
{
  if (s->agent_fd >= 0 && s->agent_pid == (long)getpid())
    close(s->agent_fd);
  s->agent_fd = -1;
}

/*
 * A connection to a trustworthy agent: -1 if there is none. The path must be a socket of our uid at
 * mode 0600 (lstat: never followed), and the process listening on it must run as our uid.
 */
static int agent_connect(tl_store *s)
{
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  struct stat st;
  if (!agent_path(path, sizeof path, s) || lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != geteuid() ||
      (st.st_mode & 0777) != 0600)
    return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  memcpy(sa.sun_path, path, strlen(path) + 1);
  /* A Unix socket connects at once or not at all (EAGAIN: its backlog is full, ECONNREFUSED: stale). */
  struct ucred cr;
  socklen_t cl = sizeof cr;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 ||
      cl != sizeof cr || cr.uid != geteuid()) {
    close(fd);
    return -1;
  }
  return fd;
}

static int client_enabled(const tl_store *s)
{
  const char *e = getenv("TOKENLEDGER_AGENT");
  return !s->agent_off && !s->readonly && s->http == tl__curl_post && !(e && strcmp(e, "off") == 0);
}

/*
 * Sends req (stolen) and reads the answer. 1: answered (*rc and *out/err set); 0: no agent or no answer in
 * time, nothing set: the caller does the work itself.
 */
static int agent_call(tl_status *rc, tl_token **out, json_t *req, tl_store *s, tl_error *err)
{
  int answered = 0;
  if (tl__now_ms() < s->agent_retry_at) { /* it failed us a moment ago: do without it for a second */
    json_decref(req);
    return 0;
  }
  char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  if (!text)
    return 0;
  linebuf b = {0};
  for (int attempt = 0; attempt < 2 && !answered; attempt++) {
    int reused = s->agent_fd >= 0 && s->agent_pid == (long)getpid();
    if (!reused) {
      if (s->agent_fd >= 0 && s->agent_pid != (long)getpid())
        close(s->agent_fd); /* a forked child's copy of its parent's connection: the child makes its own */
      s->agent_fd = agent_connect(s);
      s->agent_pid = (long)getpid();
      if (s->agent_fd < 0)
        break;
    }
    struct iovec iov[2] = {{text, strlen(text)}, {"\n", 1}};
    int64_t deadline = tl__now_ms() + AGENT_ACK_MS;
    b.len = 0;
    int acked = 0;
    if (write_all(s->agent_fd, iov, 2, deadline) && linebuf_fill(&b, s->agent_fd, 0, deadline, NULL)) {
      char *nl = memchr(b.buf, '\n', b.len);
      json_t *ack = json_loadb(b.buf, (size_t)(nl - b.buf), 0, NULL);
      acked = json_is_true(json_object_get(ack, "ack"));
      json_decref(ack);
      linebuf_take(&b, (size_t)(nl - b.buf) + 1);
    }
    if (!acked) {
      tl__agent_disconnect(s);
      if (reused)
        continue; /* an old connection to an agent that is gone: once more, afresh */
      s->agent_retry_at = tl__now_ms() + 1000;
      break;
    }
    /* The agent has the request: its answer, or a dead agent's EOF (then the caller's own path). */
    deadline = tl__now_ms() + AGENT_ANSWER_MS;
    if (!linebuf_fill(&b, s->agent_fd, 0, deadline, NULL)) {
      tl__agent_disconnect(s);
      s->agent_retry_at = tl__now_ms() + 1000;
      break;
    }
    char *nl = memchr(b.buf, '\n', b.len);
    size_t hl = (size_t)(nl - b.buf);
    json_t *h = json_loadb(b.buf, hl, JSON_REJECT_DUPLICATES, NULL);
    linebuf_take(&b, hl + 1);
    if (json_is_true(json_object_get(h, "ok")) && json_is_integer(json_object_get(h, "access_token_bytes"))) {
      json_int_t n = json_integer_value(json_object_get(h, "access_token_bytes"));
      if (n > 0 && n <= TL_TOKEN_MAX && linebuf_fill(&b, s->agent_fd, (size_t)n + 1, deadline, NULL) &&
          b.buf[n] == '\n' && tl__token_valid(b.buf, (size_t)n)) {
        b.buf[n] = '\0';
        tl_token *t = tl__token_new(
            b.buf, json_integer_value(json_object_get(h, "expires_at_ms")),
            json_integer_value(json_object_get(h, "credential")), json_string_value(json_object_get(h, "entry_id")),
            json_string_value(json_object_get(h, "base_url")), json_is_true(json_object_get(h, "refreshed")));
        linebuf_take(&b, (size_t)n + 1);
        if (t) {
          *out = t;
          *rc = TL_OK;
          answered = 1;
        }
      }
    } else if (json_is_false(json_object_get(h, "ok")) && json_is_integer(json_object_get(h, "status"))) {
      int st = (int)json_integer_value(json_object_get(h, "status"));
      const char *msg = json_string_value(json_object_get(h, "message"));
      if (st < 0) {
        *rc = tl__err(err, (tl_status)st, (int)json_integer_value(json_object_get(h, "sys")), "%s",
                      msg ? msg : tl_status_name((tl_status)st));
        answered = 1;
      }
    }
    json_decref(h);
    if (!answered)
      tl__agent_disconnect(s); /* an answer we cannot read: never trusted again on this connection */
    break;
  }
  linebuf_free(&b);
  free(text);
  return answered;
}

int tl__agent_token(tl_status *rc, tl_token **out, tl_store *s, const char *profile, const char *provider,
                    unsigned flags, tl_error *err)
{
  if (!client_enabled(s))
    return 0;
  json_t *req = json_pack("{s:s, s:s, s:s, s:i, s:s?, s:s?}", "op", "token", "profile", profile, "provider", provider,
                          "flags", (int)flags, "actor", s->actor.profile, "command", s->actor.command);
  return agent_call(rc, out, req, s, err);
}

int tl__agent_refresh(tl_status *rc, tl_token **out, tl_store *s, int64_t cred, unsigned flags, tl_error *err)
{
  if (!client_enabled(s))
    return 0;
  json_t *req = json_pack("{s:s, s:I, s:i, s:s?, s:s?}", "op", "refresh", "credential", (json_int_t)cred, "flags",
                          (int)flags, "actor", s->actor.profile, "command", s->actor.command);
  return agent_call(rc, out, req, s, err);
}

json_t *tl__agent_stats(tl_store *s)
{
  int fd = agent_connect(s);
  if (fd < 0)
    return NULL;
  json_t *out = NULL;
  linebuf b = {0};
  int64_t deadline = tl__now_ms() + AGENT_ACK_MS;
  struct iovec iov[1] = {{"{\"op\":\"stats\"}\n", 15}};
  if (write_all(fd, iov, 1, deadline) && linebuf_fill(&b, fd, 0, deadline, NULL)) {
    char *nl = memchr(b.buf, '\n', b.len);
    out = json_loadb(b.buf, (size_t)(nl - b.buf), 0, NULL);
  }
  linebuf_free(&b);
  close(fd);
  return out;
}
