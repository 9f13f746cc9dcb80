/*
 * serve.c - `tokenledger serve`: strict mode's loopback server and the
 * keep-fresh loop (SPEC section 4 "Strict mode").
 *
 * Hermes' strict profiles name this server as their portal_base_url and hold
 * a surrogate refresh token (strict.c). The server answers Nous Portal's
 * endpoints for them:
 *   POST /api/oauth/token  grant_type=refresh_token, the surrogate in the
 *       header x-nous-refresh-token or the form field refresh_token. Not an
 *       authentic surrogate of a strict profile that still uses its credential,
 *       naming the credential's current generation (or the one before, within
 *       a grace after the rotation: tl__strict_admit): 400 invalid_grant and
 *       nothing else; an authentic but older one (or one of a profile switched
 *       off) is audited as surrogate_replayed too. Otherwise the ledger's access
 *       token if it has more than the provider's skew left, at once; else one
 *       refresh through the normal protocol (tl_refresh), single-flight within
 *       this process (one thread uses the ledger at a time) and across
 *       processes (the ledger's claim). The answer has Nous Portal's shape with a NEW
 *       surrogate as its refresh_token.
 *   POST /api/oauth/device/code, and grant_type=urn:...:device_code on
 *       /api/oauth/token: forwarded to the provider's real endpoints over the
 *       normal transport, with a body built here (never the caller's headers,
 *       never a token the ledger holds). The login's profile is found from the
 *       calling process (its -p/--profile, HERMES_HOME or HOME); a grant
 *       obtained that way is stored in the ledger and Hermes gets a surrogate;
 *       only for a strict profile (another one's surrogate would be refused).
 *   Anything else: a JSON 404 (405 for another method).
 * Every answer is JSON, because Hermes quarantines a grant on a non-JSON
 * error: a transient upstream failure or an unknown outcome is 503
 * temporarily_unavailable with Retry-After; invalid_grant means the grant is
 * really dead (needs_reauth) or the surrogate is not one (or no longer good).
 * A head past HEAD_MAX is a JSON 431: libmicrohttpd's pool is raised so that
 * it reaches the handler; only one past POOL_BYTES still gets libmicrohttpd's
 * own HTML 431, which no Hermes sends.
 *
 * Threads and the store: libmicrohttpd runs one thread per connection; they
 * and the keep-fresh loop (on the caller's thread) share the caller's store,
 * one at a time, behind a mutex (see store_get for why not a store each).
 *
 * The caller: only this user's processes are answered, and who the caller is
 * comes from the kernel's answer for its exact socket (peer_socket:
 * NETLINK_SOCK_DIAG by the full 4-tuple, ESTABLISHED, a non-zero inode), in
 * constant time on the accept thread; never a line of /proc/net/tcp.
 *
 * Audit: every request is audited (event serve_request) with the caller's
 * profile from its surrogate and, when /proc tells, the peer process. The
 * audit row is written once the answer has been sent (MHD's completion
 * callback), so answering never waits for an fsync or a scan of /proc; what
 * changes the ledger (a refresh, a login) is recorded by the protocol before
 * anything leaves.
 *
 * Invariants: binds loopback only; a listen address that is not a loopback
 * literal (or localhost) is refused without resolving it; one serve per
 * ledger (the port file is created O_EXCL|O_NOFOLLOW at 0600 and held with
 * flock while serve runs; a stale one is taken over only once its lock is
 * free); no token, surrogate or device code reaches a log line, an audit row
 * or an error (fingerprint prefixes only); buffers that held one are burned.
 */
#include "internal.h"
#include "lazy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BODY_MAX        16384
#define HEAD_MAX        16384         /* the request line and headers serve reads (Hermes sends a few hundred bytes) */
#define POOL_BYTES      (256u * 1024) /* libmicrohttpd's memory per connection: a head up to about this reaches us */
#define DEVICE_MAX      64
#define THREADS_DEFAULT 64
#define THREADS_MAX     256
#define DEVICE_GRANT    "urn:ietf:params:oauth:grant-type:device_code"

/* ---- the server ------------------------------------------------------------ */

typedef struct device_login {
  char fp[65]; /* SHA-256 of the device code; "" = free slot */
  int64_t profile;
  int64_t expires_at;
} device_login;

typedef struct server {
  const tl_serve_opts *o;
  tl_store *store; /* the caller's, used by one thread at a time (store_mu) */
  pthread_mutex_t store_mu;
  size_t max; /* connections at once */
  pthread_mutex_t dev_mu;
  device_login dev[DEVICE_MAX];
  int port;
  struct sockaddr_storage self; /* the bound address: the remote end of every caller's socket */
  long rounds;                  /* keep-fresh rounds run (the main thread only) */
  _Atomic int64_t refused_said; /* when a refused peer was last logged (once a minute at most) */
  tl__agent *agent;             /* the local agent on <ledger>-agent (agent.c), NULL if it could not start */
} server;

static void say(server *sv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(server *sv, const char *fmt, ...)
{
  char line[600];
  va_list ap;
  if (!sv->o->on_log)
    return;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  sv->o->on_log(sv->o->ud, line);
}

/*
 * The ledger, for one thread at a time: tl_store is not thread-safe, so every thread uses the
 * caller's store in turn. A refresh in flight (one upstream round trip) therefore delays other
 * answers; keep-fresh makes that rare. (A store per thread would be safe as well: nothing in the
 * library closes a descriptor of the ledger or its -shm, which would drop the POSIX locks of
 * every connection of the process; test_store proves it.)
 */
static tl_store *store_get(server *sv)
{
  pthread_mutex_lock(&sv->store_mu);
  return sv->store;
}

static void store_put(server *sv)
{
  pthread_mutex_unlock(&sv->store_mu);
}

/* ---- connections, requests and the peer ----------------------------------------- */

typedef struct peer {
  int looked_up;       /* the pid and command looked for (once, after the answer) */
  long pid, uid;       /* -1 when unknown; uid from the kernel's diag answer at connection time */
  unsigned long inode; /* of the caller's socket; 0 when unknown */
  char comm[32];
} peer;

typedef struct conn {
  peer who;
} conn;

/* One request: its body and what the audit row will say. */
typedef struct request {
  char *body; /* may hold a surrogate or a device code: burned */
  size_t len;
  int too_big, handled;
  size_t head;         /* bytes of the request line and headers */
  const char *what;    /* refresh, device_code, device_token, other */
  const char *outcome; /* fresh, refreshed, refused, dead, unavailable, forwarded, login, ... */
  unsigned status;
  char error[40];
  char why[1100]; /* no secret */
  char fp[13];    /* fingerprint prefix of a refused token */
  int64_t profile, credential, gen_in, gen_out, gen_now;
  const char *replayed; /* an authentic surrogate refused as a copy presented again: why (tl__surrogate_check) */
  char profile_name[72];
} request;

static void request_free(request *r)
{
  if (!r)
    return;
  if (r->body) {
    tl_burn(r->body, r->len);
    free(r->body);
  }
  free(r);
}

/*
 * The kernel's own answer for one socket: the caller's end of a connection to serve, found by its
 * exact 4-tuple (local = the client's address and port, remote = serve's) over NETLINK_SOCK_DIAG
 * (inet_diag, an exact lookup, not a dump: constant time however many sockets the machine has).
 * 1 and *out filled only for an ESTABLISHED socket with a non-zero inode whose answer names the
 * very 4-tuple asked for; a TIME_WAIT entry (uid 0, inode 0), a listener, a closing socket or no
 * answer at all is 0. Never reads /proc/net/tcp, whose lines are matched by hand and list every
 * socket of the machine.
 */
typedef struct sock_owner {
  long uid;
  unsigned long inode;
} sock_owner;

#define DIAG_TCP_ESTABLISHED 1 /* the kernel's TCP_ESTABLISHED (linux/tcp.h clashes with netinet/tcp.h) */

/* Fills a sockid end from a sockaddr: the port and the address, both in network order. */
static int diag_end(__be16 *port, __be32 addr[4], const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    *port = a->sin_port;
    memcpy(addr, &a->sin_addr, sizeof a->sin_addr);
    return 1;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    *port = a->sin6_port;
    memcpy(addr, &a->sin6_addr, sizeof a->sin6_addr);
    return 1;
  }
  return 0;
}

static int peer_socket(sock_owner *out, const struct sockaddr *client, const struct sockaddr *self)
{
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  if (client->sa_family != self->sa_family || !diag_end(&req.r.id.idiag_sport, req.r.id.idiag_src, client) ||
      !diag_end(&req.r.id.idiag_dport, req.r.id.idiag_dst, self))
    return 0;
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST; /* no NLM_F_DUMP: the one socket of this 4-tuple */
  req.nlh.nlmsg_seq = 1;
  req.r.sdiag_family = (__u8)client->sa_family;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = 1u << DIAG_TCP_ESTABLISHED;
  req.r.id.idiag_cookie[0] = req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0)
    return 0;
  struct timeval tv = {1, 0}; /* the kernel answers at once; never hang the accept thread */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  union {
    struct nlmsghdr h;
    char buf[8192];
  } ans;
  struct sockaddr_nl from;
  socklen_t flen = sizeof from;
  int found = 0;
  ssize_t n = -1;
  if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) == (ssize_t)sizeof req)
    n = recvfrom(fd, ans.buf, sizeof ans.buf, 0, (struct sockaddr *)&from, &flen);
  close(fd);
  if (n <= 0 || flen < sizeof from || from.nl_pid != 0) /* only the kernel's word counts */
    return 0;
  int len = (int)n; /* signed: NLMSG_NEXT may take it below 0, which ends the walk */
  for (struct nlmsghdr *h = &ans.h; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_seq != 1 ||
        h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
      continue; /* NLMSG_ERROR (ENOENT: no such socket) or something else: not found */
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    if (m->idiag_family != req.r.sdiag_family || m->id.idiag_sport != req.r.id.idiag_sport ||
        m->id.idiag_dport != req.r.id.idiag_dport ||
        memcmp(m->id.idiag_src, req.r.id.idiag_src, sizeof m->id.idiag_src) != 0 ||
        memcmp(m->id.idiag_dst, req.r.id.idiag_dst, sizeof m->id.idiag_dst) != 0)
      continue;
    if (m->idiag_state != DIAG_TCP_ESTABLISHED || m->idiag_inode == 0)
      return 0;
    out->uid = (long)m->idiag_uid;
    out->inode = m->idiag_inode;
    found = 1;
    break;
  }
  return found;
}

/* The pid of our own uid's process holding socket inode; -1 if none is visible. */
static long socket_owner(unsigned long inode)
{
  char want[48], path[64], link[64];
  snprintf(want, sizeof want, "socket:[%lu]", inode);
  DIR *proc = opendir("/proc");
  long pid = -1;
  if (!proc)
    return -1;
  struct dirent *e;
  uid_t me = geteuid();
  while (pid < 0 && (e = readdir(proc))) {
    if (!isdigit((unsigned char)e->d_name[0]))
      continue;
    struct stat st;
    snprintf(path, sizeof path, "/proc/%.20s", e->d_name);
    if (stat(path, &st) != 0 || st.st_uid != me)
      continue;
    snprintf(path, sizeof path, "/proc/%.20s/fd", e->d_name);
    DIR *fds = opendir(path);
    if (!fds)
      continue;
    struct dirent *d;
    while ((d = readdir(fds))) {
      char fdpath[128];
      snprintf(fdpath, sizeof fdpath, "/proc/%.20s/fd/%.20s", e->d_name, d->d_name);
      ssize_t n = readlink(fdpath, link, sizeof link - 1);
      if (n > 0) {
        link[n] = '\0';
        if (strcmp(link, want) == 0) {
          pid = strtol(e->d_name, NULL, 10);
          break;
        }
      }
    }
    closedir(fds);
  }
  closedir(proc);
  return pid;
}

/*
 * Best effort, for the audit and the device login: which process holds the caller's socket (its
 * inode was taken from the kernel when the connection started). Looked for once, lazily, off the
 * accept path, and only among our own uid's processes (serve answers no other uid anyway).
 */
static void peer_lookup(peer *p)
{
  if (p->looked_up)
    return;
  p->looked_up = 1;
  p->pid = -1;
  p->comm[0] = '\0';
  if (!p->inode || p->uid != (long)geteuid() || (p->pid = socket_owner(p->inode)) < 0)
    return;
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/comm", p->pid);
  FILE *f = fopen(path, "re");
  if (f) {
    if (fgets(p->comm, sizeof p->comm, f))
      p->comm[strcspn(p->comm, "\n")] = '\0';
    fclose(f);
  }
  for (char *q = p->comm; *q; q++)
    if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
      *q = '?';
}

static peer *conn_peer(struct MHD_Connection *c)
{
  const union MHD_ConnectionInfo *ci = tl__mhd()->get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  conn *k = ci ? ci->socket_context : NULL;
  return k ? &k->who : NULL;
}

/* ---- answers ------------------------------------------------------------------- */

static void burn_free(void *p)
{
  if (p) {
    tl_burn(p, strlen(p));
    free(p);
  }
}

/* Queues a JSON answer (steals j). Every answer, success or error, is JSON. */
static enum MHD_Result reply(struct MHD_Connection *c, request *r, unsigned status, json_t *j, long retry_after)
{
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text)
    text = strdup("{\"error\":\"server_error\",\"error_description\":\"out of memory\"}");
  if (!text)
    return MHD_NO;
  struct MHD_Response *resp = tl__mhd()->create_response_from_buffer_with_free_callback(strlen(text), text, burn_free);
  if (!resp) {
    burn_free(text);
    return MHD_NO;
  }
  tl__mhd()->add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  tl__mhd()->add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  tl__mhd()->add_response_header(resp, "Pragma", "no-cache");
  if (retry_after >= 0) {
    char ra[24];
    snprintf(ra, sizeof ra, "%ld", retry_after);
    tl__mhd()->add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
  }
  r->status = status;
  enum MHD_Result rc = tl__mhd()->queue_response(c, status, resp);
  tl__mhd()->destroy_response(resp);
  return rc;
}

static enum MHD_Result oauth_error(struct MHD_Connection *c, request *r, unsigned status, const char *code,
                                   const char *desc, long retry_after)
{
  snprintf(r->error, sizeof r->error, "%s", code);
  if (!r->why[0])
    snprintf(r->why, sizeof r->why, "%s", desc);
  return reply(c, r, status, json_pack("{s:s, s:s}", "error", code, "error_description", desc), retry_after);
}

/* ---- the form ------------------------------------------------------------------- */

/*
 * The decoded value of field name in an x-www-form-urlencoded body (new, burn it), NULL if
 * absent. *dup is set when the field occurs more than once (refused: which one would count?).
 */
static char *form_field(const char *body, const char *name, int *dup)
{
  size_t nl = strlen(name);
  char *found = NULL;
  for (const char *p = body; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t seg = amp ? (size_t)(amp - p) : strlen(p);
    if (seg >= nl && strncmp(p, name, nl) == 0 && (seg == nl || p[nl] == '=')) {
      if (found) {
        *dup = 1;
        burn_free(found);
        return NULL;
      }
      found = strndup(seg == nl ? "" : p + nl + 1, seg == nl ? 0 : seg - nl - 1);
      if (!found)
        return NULL;
      for (char *q = found; *q; q++)
        if (*q == '+')
          *q = ' ';
      found[tl__mhd()->http_unescape(found)] = '\0';
    }
    p = amp ? amp + 1 : NULL;
  }
  return found;
}

/* ---- the refresh grant ------------------------------------------------------------- */

/* What the ledger holds for a credential, for an answer. */
typedef struct cred_state {
  char status[16];
  char *access_token; /* secret */
  int64_t expires_at, skew_ms, not_before;
  char *scope, *base_url, *token_type;
} cred_state;

static void cred_state_clear(cred_state *cs)
{
  tl_secret_free(cs->access_token);
  free(cs->scope);
  free(cs->base_url);
  free(cs->token_type);
  memset(cs, 0, sizeof *cs);
}

static tl_status cred_load(cred_state *cs, tl_store *s, int64_t cred, tl_error *err)
{
  static const char sql[] =
      "SELECT c.status, c.access_token, coalesce(c.expires_at, 0), pv.skew_s * 1000, coalesce(c.refresh_not_before, "
      "0), "
      "coalesce(c.scope, json_extract(c.extra, '$.scope')), c.base_url, json_extract(c.extra, '$.token_type') "
      "FROM credential c JOIN provider pv ON pv.name = c.provider WHERE c.id = :id";
  cred_state_clear(cs);
  sqlite3_stmt *st;
  tl_status prc;
  if ((prc = tl__prepare(&st, s, sql, err)) != TL_OK || (prc = TL_BIND(st, err, TL_INT(":id", cred))) != TL_OK)
    return prc;
  int step = sqlite3_step(st);
  if (step == SQLITE_ROW) {
    snprintf(cs->status, sizeof cs->status, "%s", (const char *)sqlite3_column_text(st, 0));
    cs->access_token = tl__col_dup(st, 1);
    cs->expires_at = sqlite3_column_int64(st, 2);
    cs->skew_ms = sqlite3_column_int64(st, 3);
    cs->not_before = sqlite3_column_int64(st, 4);
    cs->scope = tl__col_dup(st, 5);
    cs->base_url = tl__col_dup(st, 6);
    cs->token_type = tl__col_dup(st, 7);
  }
  sqlite3_reset(st);
  if (step == SQLITE_ROW)
    return TL_OK;
  return step == SQLITE_DONE ? tl__err(err, TL_ENOTFOUND, 0, "credential %lld does not exist", (long long)cred)
                             : tl__err_db(err, s, "serve");
}

static int cred_fresh(const cred_state *cs, int64_t now)
{
  return cs->access_token && cs->expires_at > 0 && cs->expires_at - cs->skew_ms > now;
}

/* Nous Portal's token answer: the ledger's access token and a new surrogate. */
static enum MHD_Result answer_tokens(struct MHD_Connection *c, request *r, tl_store *s, const cred_state *cs)
{
  char *sur = NULL;
  tl_error err = {0};
  if (tl__strict_surrogate(&sur, s, r->credential, r->profile, &err) != TL_OK)
    return oauth_error(c, r, 503, "temporarily_unavailable", "tokenledger serve could not issue a surrogate", 5);
  long long gen = 0;
  if (sscanf(sur + sizeof TL_SURROGATE_PREFIX - 1, "%*d.%*d.%lld", &gen) == 1)
    r->gen_out = gen;
  int64_t left = (cs->expires_at - tl__now_ms()) / 1000;
  json_t *j = json_pack("{s:s, s:s, s:s}", "access_token", cs->access_token, "refresh_token", sur, "token_type",
                        cs->token_type ? cs->token_type : "Bearer");
  tl_secret_free(sur);
  if (j && cs->expires_at > 0)
    json_object_set_new(j, "expires_in", json_integer(left > 0 ? left : 0));
  if (j && cs->scope)
    json_object_set_new(j, "scope", json_string(cs->scope));
  if (j && cs->base_url)
    json_object_set_new(j, "inference_base_url", json_string(cs->base_url));
  return reply(c, r, 200, j, -1);
}

static void profile_name(request *r, tl_store *s)
{
  static const char sql[] = "SELECT name FROM profile WHERE id = :id";
  sqlite3_stmt *st;
  if (tl__prepare(&st, s, sql, NULL) == TL_OK && TL_BIND(st, NULL, TL_INT(":id", r->profile)) == TL_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      snprintf(r->profile_name, sizeof r->profile_name, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
  }
}

/* Refusal of a presented token that is not an authentic surrogate of a live pairing. */
static enum MHD_Result refuse(struct MHD_Connection *c, request *r, const char *presented, const char *why)
{
  char fp[65];
  tl_fingerprint(fp, presented, strlen(presented));
  snprintf(r->fp, sizeof r->fp, "%.12s", fp);
  snprintf(r->why, sizeof r->why, "%s", why);
  r->outcome = "refused";
  return oauth_error(c, r, 400, "invalid_grant", "Unknown or invalid refresh token.", -1);
}

/* Takes the presented surrogate from the header or the form; NULL after queueing an error. */
static char *presented_token(struct MHD_Connection *c, request *r, const char *body, enum MHD_Result *res)
{
  const char *hdr = tl__mhd()->lookup_connection_value(c, MHD_HEADER_KIND, "x-nous-refresh-token");
  int dup = 0;
  char *field = form_field(body, "refresh_token", &dup);
  char *rt = NULL;
  if (dup)
    *res = oauth_error(c, r, 400, "invalid_request", "refresh_token given more than once", -1);
  else if (hdr && field && strcmp(hdr, field) != 0)
    *res = oauth_error(c, r, 400, "invalid_request", "two different refresh tokens (header and body)", -1);
  else if (!(hdr && *hdr) && !(field && *field))
    *res = oauth_error(c, r, 400, "invalid_request", "Missing refresh token", -1);
  else if (!(rt = strdup(hdr && *hdr ? hdr : field)))
    *res = oauth_error(c, r, 503, "temporarily_unavailable", "out of memory", 1);
  burn_free(field);
  return rt;
}

/* Seconds Hermes should wait before asking again after a failed refresh. */
static long retry_after_s(const cred_state *cs, tl_status rc)
{
  int64_t now = tl__now_ms();
  if (cs->not_before > now)
    return (long)((cs->not_before - now + 999) / 1000);
  return rc == TL_EUNKNOWN ? 300 : rc == TL_EBUSY ? 2 : 30;
}

static enum MHD_Result handle_refresh(struct MHD_Connection *c, request *r, tl_store *s, const char *body)
{
  enum MHD_Result res = MHD_NO;
  cred_state cs = {0};
  tl_error err = {0};
  r->what = "refresh";
  char *rt = presented_token(c, r, body, &res);
  if (!rt) {
    r->outcome = "refused";
    return res;
  }
  /* 1. An authentic surrogate whose profile still uses its credential. */
  if (!tl__token_valid(rt, strlen(rt)) || !tl__strict_is_surrogate(rt)) {
    int64_t known = 0, kc = 0;
    tl_error probe = {0};
    char fp[65];
    tl_fingerprint(fp, rt, strlen(rt));
    tl_status lk = tl__rt_lookup(&known, &kc, s, fp, &probe);
    res = refuse(c, r, rt,
                 lk == TL_EREUSE ? "a refresh token the ledger knows as spent was presented to serve; never forwarded"
                 : known         ? "a live refresh token of the ledger was presented to serve instead of a surrogate; "
                                   "never forwarded"
                                 : "not a surrogate issued by this ledger");
    goto done;
  }
  /* ... of a profile that is strict now, naming the current generation (or the one before, briefly). */
  tl__surrogate_check sc;
  tl_status vr = tl__strict_admit(&sc, s, rt, &err);
  if (vr == TL_EREUSE) {
    r->credential = sc.credential;
    r->profile = sc.profile;
    r->gen_in = sc.generation;
    r->gen_now = sc.current;
    r->replayed = sc.refusal;
    profile_name(r, s);
    res = refuse(c, r, rt, err.message);
    r->outcome = "replayed";
    goto done;
  }
  if (vr != TL_OK) {
    r->credential = r->profile = 0;
    res = refuse(c, r, rt, err.message);
    goto done;
  }
  r->credential = sc.credential;
  r->profile = sc.profile;
  r->gen_in = sc.generation;
  profile_name(r, s);
  /* 2. The ledger's token, fresh enough: answered at once. */
  if (cred_load(&cs, s, r->credential, &err) != TL_OK) {
    res = oauth_error(c, r, 503, "temporarily_unavailable", "the ledger is busy; try again", 2);
    r->outcome = "unavailable";
    goto done;
  }
  if (strcmp(cs.status, "needs_reauth") == 0) {
    r->outcome = "dead";
    res = oauth_error(c, r, 400, "invalid_grant",
                      "The grant needs a new login (tokenledger: the credential needs re-authentication).", -1);
    goto done;
  }
  if (cred_fresh(&cs, tl__now_ms())) {
    r->outcome = "fresh";
    res = answer_tokens(c, r, s, &cs);
    goto done;
  }
  /* 3. One refresh through the protocol: single-flight here and across processes. */
  tl_store_set_actor(s, r->profile_name[0] ? r->profile_name : NULL, "serve");
  tl_status rc = tl_refresh(NULL, s, r->credential, 0, &err); /* under store_mu: single-flight in this process */
  tl_store_set_actor(s, NULL, "serve");
  tl_error err2 = {0};
  if (cred_load(&cs, s, r->credential, &err2) != TL_OK) {
    r->outcome = "unavailable";
    res = oauth_error(c, r, 503, "temporarily_unavailable", "the ledger is busy; try again", 2);
    goto done;
  }
  if (rc == TL_OK && cs.access_token && (cs.expires_at == 0 || cs.expires_at > tl__now_ms())) {
    r->outcome = "refreshed";
    res = answer_tokens(c, r, s, &cs);
  } else if (rc == TL_EREAUTH || strcmp(cs.status, "needs_reauth") == 0) {
    r->outcome = "dead";
    snprintf(r->why, sizeof r->why, "%s", err.message);
    res = oauth_error(c, r, 400, "invalid_grant", err.message[0] ? err.message : "The grant needs a new login.", -1);
  } else {
    r->outcome = rc == TL_EUNKNOWN ? "unknown_outcome" : "unavailable";
    snprintf(r->why, sizeof r->why, "%s", err.message[0] ? err.message : "refresh gave no fresh access token");
    res = oauth_error(c, r, 503, "temporarily_unavailable",
                      rc == TL_EUNKNOWN ? "The last refresh of this grant has an unknown outcome; an operator must "
                                          "decide (tokenledger recover). Try again later."
                                        : "The token endpoint is unavailable; try again later.",
                      retry_after_s(&cs, rc));
  }
done:
  cred_state_clear(&cs);
  burn_free(rt);
  return res;
}

/* ---- the device-code login --------------------------------------------------------- */

/* Reads a /proc/PID file (NUL-separated strings); new buffer, *n its length. */
static char *proc_read(long pid, const char *what, size_t *n)
{
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/%s", pid, what);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return NULL;
  size_t cap = 65536;
  char *buf = malloc(cap + 1);
  ssize_t got = 0, k;
  while (buf && (size_t)got < cap && (k = read(fd, buf + got, cap - (size_t)got)) > 0)
    got += k;
  close(fd);
  if (buf) {
    buf[got] = '\0';
    *n = (size_t)got;
  }
  return buf;
}

static const char *env_get(const char *env, size_t n, const char *name)
{
  size_t nl = strlen(name);
  for (size_t i = 0; i < n; i += strlen(env + i) + 1)
    if (strncmp(env + i, name, nl) == 0 && env[i + nl] == '=')
      return env + i + nl + 1;
  return NULL;
}

static int64_t profile_by(tl_store *s, const char *sql, const char *value)
{
  sqlite3_stmt *st;
  int64_t id = 0;
  if (!value || tl__prepare(&st, s, sql, NULL) != TL_OK || TL_BIND(st, NULL, TL_TEXT(":v", value)) != TL_OK)
    return 0;
  if (sqlite3_step(st) == SQLITE_ROW)
    id = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  return id;
}

/*
 * Which profile is logging in: the calling process's -p/--profile NAME, else its HERMES_HOME,
 * else HOME/.hermes with its sticky active_profile (Hermes' own order). 0 if it cannot be told.
 */
static int64_t login_profile(tl_store *s, const peer *p, char *name, size_t nn)
{
  static const char by_name[] = "SELECT id FROM profile WHERE name = :v";
  static const char by_home[] = "SELECT id FROM profile WHERE home = :v";
  static const char name_of[] = "SELECT name FROM profile WHERE id = :id";
  size_t n = 0;
  int64_t id = 0;
  if (p->pid <= 0)
    return 0;
  char *argv = proc_read(p->pid, "cmdline", &n);
  for (size_t i = 0; argv && !id && i < n; i += strlen(argv + i) + 1) {
    const char *a = argv + i;
    if ((strcmp(a, "-p") == 0 || strcmp(a, "--profile") == 0) && i + strlen(a) + 1 < n)
      id = profile_by(s, by_name, a + strlen(a) + 1);
    else if (strncmp(a, "--profile=", 10) == 0)
      id = profile_by(s, by_name, a + 10);
  }
  free(argv);
  char *env = id ? NULL : proc_read(p->pid, "environ", &n);
  if (env) {
    char real[PATH_MAX], buf[PATH_MAX];
    const char *hh = env_get(env, n, "HERMES_HOME"), *home = env_get(env, n, "HOME");
    if (hh && *hh && realpath(hh, real))
      id = profile_by(s, by_home, real);
    else if (home && *home && snprintf(buf, sizeof buf, "%s/.hermes", home) < (int)sizeof buf && realpath(buf, real)) {
      char sticky[PATH_MAX + 32], active[72] = "";
      snprintf(sticky, sizeof sticky, "%s/active_profile", real);
      FILE *f = fopen(sticky, "re");
      if (f) {
        if (fgets(active, sizeof active, f))
          active[strcspn(active, "\r\n")] = '\0';
        fclose(f);
      }
      id = *active && strcmp(active, "default") != 0 && tl_profile_name_valid(active) ? profile_by(s, by_name, active)
                                                                                      : profile_by(s, by_home, real);
    }
    tl_burn(env, n);
    free(env);
  }
  sqlite3_stmt *st;
  if (id && tl__prepare(&st, s, name_of, NULL) == TL_OK && TL_BIND(st, NULL, TL_INT(":id", id)) == TL_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      snprintf(name, nn, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
  }
  return id;
}

typedef tl__device_endpoints portal;

/* POSTs body to url over the store's transport; the answer as a JSON object (or NULL). */
static json_t *forward(tl_store *s, const char *url, const char *body, tl_http_response *resp)
{
  tl_http_request req = {.url = url, .body = body, .connect_timeout_ms = 5000, .timeout_ms = s->http_timeout_ms};
  tl__oauth_post(resp, s, &req);
  json_t *j = resp->failure == TL_HTTP_DONE && resp->body ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  if (j && !json_is_object(j)) {
    json_decref(j);
    j = NULL;
  }
  return j;
}

/* An upstream error answer passed on: its status and OAuth fields only; never non-JSON. */
static enum MHD_Result pass_error(struct MHD_Connection *c, request *r, const tl_http_response *resp, json_t *j)
{
  const char *e = json_string_value(json_object_get(j, "error"));
  const char *d = json_string_value(json_object_get(j, "error_description"));
  r->outcome = "forwarded";
  if (resp->failure != TL_HTTP_DONE || !e || resp->status < 400 || resp->status > 599) {
    snprintf(r->why, sizeof r->why, "portal: %s", resp->failure != TL_HTTP_DONE ? resp->detail : "no JSON error");
    return oauth_error(c, r, 503, "temporarily_unavailable", "The portal is unavailable; try again later.",
                       resp->retry_after >= 0 ? resp->retry_after : 5);
  }
  snprintf(r->error, sizeof r->error, "%.39s", e);
  json_t *out = json_pack("{s:s}", "error", e);
  if (out && d)
    json_object_set_new(out, "error_description", json_string(d));
  json_t *iv = json_object_get(j, "interval");
  if (out && json_is_integer(iv))
    json_object_set(out, "interval", iv);
  return reply(c, r, (unsigned)resp->status, out, resp->retry_after);
}

static enum MHD_Result handle_device_code(server *sv, struct MHD_Connection *c, request *r, tl_store *s,
                                          const char *body)
{
  portal pt;
  tl_http_response resp;
  enum MHD_Result res;
  int dup = 0;
  r->what = "device_code";
  peer *p = conn_peer(c);
  if (p)
    peer_lookup(p);
  if (!p || !(r->profile = login_profile(s, p, r->profile_name, sizeof r->profile_name))) {
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request",
                       "tokenledger serve cannot tell which profile is logging in (run Hermes with -p NAME or "
                       "HERMES_HOME of a profile the ledger knows), or log in with 'tokenledger login nous "
                       "--profile NAME'",
                       -1);
  }
  if (!tl__strict_profile(s, r->profile)) { /* its surrogate would be refused: serve answers strict profiles only */
    char why[600];
    snprintf(why, sizeof why,
             "profile %s is not in strict mode, and tokenledger serve answers only strict profiles (run "
             "'tokenledger profile strict %s on', or log in with 'tokenledger login nous --profile %s')",
             r->profile_name, r->profile_name, r->profile_name);
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request", why, -1);
  }
  if (tl__device_endpoints_load(&pt, s, "nous", NULL) != TL_OK) {
    tl__device_endpoints_clear(&pt);
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request",
                       "provider nous has no device authorization endpoint configured in the ledger", -1);
  }
  char *scope = form_field(body, "scope", &dup);
  const char *keys[] = {"client_id", "scope"};
  const char *vals[] = {pt.client_id, scope && *scope ? scope : pt.scope ? pt.scope : ""};
  char *fwd = tl__oauth_form(2, keys, vals);
  free(scope);
  json_t *j = fwd ? forward(s, pt.device_url, fwd, &resp) : NULL;
  free(fwd);
  const char *dc = json_string_value(json_object_get(j, "device_code"));
  if (!fwd) {
    res = oauth_error(c, r, 503, "temporarily_unavailable", "out of memory", 1);
  } else if (resp.failure == TL_HTTP_DONE && resp.status == 200 && dc &&
             json_is_string(json_object_get(j, "user_code"))) {
    int64_t expires = json_is_integer(json_object_get(j, "expires_in"))
                          ? (int64_t)json_integer_value(json_object_get(j, "expires_in"))
                          : 900;
    if (expires < 60 || expires > 86400)
      expires = 900;
    pthread_mutex_lock(&sv->dev_mu);
    device_login *slot = &sv->dev[0];
    for (int i = 0; i < DEVICE_MAX && slot->fp[0]; i++) /* a free slot, else the one that expires first */
      if (!sv->dev[i].fp[0] || sv->dev[i].expires_at < slot->expires_at)
        slot = &sv->dev[i];
    tl_fingerprint(slot->fp, dc, strlen(dc));
    slot->profile = r->profile;
    slot->expires_at = tl__now_ms() + expires * 1000;
    pthread_mutex_unlock(&sv->dev_mu);
    static const char *const keep[] = {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                                       "expires_in",  "interval"};
    json_t *out = json_object();
    for (size_t i = 0; out && i < sizeof keep / sizeof *keep; i++)
      if (json_object_get(j, keep[i]))
        json_object_set(out, keep[i], json_object_get(j, keep[i]));
    r->outcome = "forwarded";
    res = reply(c, r, 200, out, -1);
  } else {
    res = pass_error(c, r, &resp, j);
  }
  json_decref(j);
  if (fwd)
    tl__http_response_clear(&resp);
  tl__device_endpoints_clear(&pt);
  return res;
}

/* Stores a grant the portal issued through serve; answers with a surrogate. */
static enum MHD_Result store_login(struct MHD_Connection *c, request *r, tl_store *s, json_t *j)
{
  const char *rt = json_string_value(json_object_get(j, "refresh_token"));
  const char *at = json_string_value(json_object_get(j, "access_token"));
  json_t *ei = json_object_get(j, "expires_in");
  tl_error err = {0};
  cred_state cs = {0};
  if (!rt || !at || !tl__token_valid(rt, strlen(rt)) || !tl__token_valid(at, strlen(at)) ||
      tl__strict_is_surrogate(rt)) {
    r->outcome = "unavailable";
    return oauth_error(c, r, 503, "temporarily_unavailable", "the portal's login answer holds no usable tokens", 5);
  }
  int64_t exp = json_is_integer(ei) && json_integer_value(ei) > 0 && json_integer_value(ei) < 10 * 365 * 86400
                    ? tl__now_ms() + (int64_t)json_integer_value(ei) * 1000
                    : tl__jwt_exp_ms(at);
  tl_credential_spec spec = {.provider = "nous",
                             .profile = r->profile_name,
                             .refresh_token = rt,
                             .access_token = at,
                             .expires_at_ms = exp,
                             .origin = "login",
                             .source = "device_code"};
  tl_store_set_actor(s, r->profile_name, "serve");
  tl_status rc = tl_credential_add(&r->credential, s, &spec, &err);
  tl_store_set_actor(s, NULL, "serve");
  if (rc != TL_OK) {
    r->outcome = "unavailable";
    snprintf(r->why, sizeof r->why, "storing the new grant failed: %.1000s", err.message);
    return oauth_error(c, r, 503, "temporarily_unavailable", "tokenledger could not store the new grant", 5);
  }
  if (cred_load(&cs, s, r->credential, &err) != TL_OK) {
    r->outcome = "unavailable";
    return oauth_error(c, r, 503, "temporarily_unavailable", "the ledger is busy; try again", 2);
  }
  json_t *v = json_object_get(j, "token_type");
  if (json_is_string(v) && !cs.token_type)
    cs.token_type = strdup(json_string_value(v));
  if (json_is_string(v = json_object_get(j, "scope")) && !cs.scope)
    cs.scope = strdup(json_string_value(v));
  if (json_is_string(v = json_object_get(j, "inference_base_url")) && !cs.base_url)
    cs.base_url = strdup(json_string_value(v));
  r->outcome = "login";
  enum MHD_Result res = answer_tokens(c, r, s, &cs);
  cred_state_clear(&cs);
  return res;
}

static enum MHD_Result handle_device_token(server *sv, struct MHD_Connection *c, request *r, tl_store *s,
                                           const char *body)
{
  portal pt;
  tl_http_response resp;
  enum MHD_Result res;
  int dup = 0;
  char fp[65];
  r->what = "device_token";
  char *code = form_field(body, "device_code", &dup);
  if (!code || !*code || dup) {
    burn_free(code);
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request", "device_code is required (once)", -1);
  }
  tl_fingerprint(fp, code, strlen(code));
  pthread_mutex_lock(&sv->dev_mu);
  int64_t now = tl__now_ms();
  for (int i = 0; i < DEVICE_MAX && !r->profile; i++)
    if (sv->dev[i].fp[0] && strcmp(sv->dev[i].fp, fp) == 0 && sv->dev[i].expires_at > now)
      r->profile = sv->dev[i].profile;
  pthread_mutex_unlock(&sv->dev_mu);
  static const char name_sql[] = "SELECT name FROM profile WHERE id = :id";
  sqlite3_stmt *st;
  if (r->profile && tl__prepare(&st, s, name_sql, NULL) == TL_OK &&
      TL_BIND(st, NULL, TL_INT(":id", r->profile)) == TL_OK) {
    if (sqlite3_step(st) == SQLITE_ROW)
      snprintf(r->profile_name, sizeof r->profile_name, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
  }
  if (!r->profile_name[0]) {
    burn_free(code);
    snprintf(r->fp, sizeof r->fp, "%.12s", fp);
    r->outcome = "refused";
    r->profile = 0;
    return oauth_error(c, r, 400, "invalid_grant",
                       "unknown or expired device code (was the login started through this serve?); start the "
                       "login again",
                       -1);
  }
  if (tl__device_endpoints_load(&pt, s, "nous", NULL) != TL_OK) {
    burn_free(code);
    tl__device_endpoints_clear(&pt);
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request", "provider nous has no token endpoint configured", -1);
  }
  const char *keys[] = {"grant_type", "client_id", "device_code"};
  const char *vals[] = {TL_GRANT_DEVICE_CODE, pt.client_id, code ? code : ""};
  char *fwd = tl__oauth_form(3, keys, vals);
  burn_free(code);
  json_t *j = fwd ? forward(s, pt.token_url, fwd, &resp) : NULL;
  burn_free(fwd);
  if (!fwd)
    res = oauth_error(c, r, 503, "temporarily_unavailable", "out of memory", 1);
  else if (resp.failure == TL_HTTP_DONE && resp.status == 200 && j) {
    pthread_mutex_lock(&sv->dev_mu);
    for (int i = 0; i < DEVICE_MAX; i++)
      if (strcmp(sv->dev[i].fp, fp) == 0)
        memset(&sv->dev[i], 0, sizeof sv->dev[i]);
    pthread_mutex_unlock(&sv->dev_mu);
    res = store_login(c, r, s, j);
  } else
    res = pass_error(c, r, &resp, j);
  json_decref(j);
  if (fwd)
    tl__http_response_clear(&resp);
  tl__device_endpoints_clear(&pt);
  return res;
}

/* ---- routing ------------------------------------------------------------------------- */

static enum MHD_Result route(server *sv, struct MHD_Connection *c, request *r, const char *url, const char *method)
{
  int token = strcmp(url, "/api/oauth/token") == 0, device = strcmp(url, "/api/oauth/device/code") == 0;
  r->what = "other";
  if (r->head > HEAD_MAX) {
    char why[120];
    snprintf(why, sizeof why, "request head too large (%zu bytes; tokenledger serve reads at most %d)", r->head,
             HEAD_MAX);
    r->outcome = "refused";
    return oauth_error(c, r, 431, "invalid_request", why, -1);
  }
  if (strcmp(url, "/metrics") == 0 && strcmp(method, "GET") == 0) { /* the agent's counters, Prometheus text */
    char *text = tl__agent_metrics(sv->agent);
    struct MHD_Response *resp =
        text ? tl__mhd()->create_response_from_buffer_with_free_callback(strlen(text), text, free) : NULL;
    if (!resp) {
      free(text);
      return MHD_NO;
    }
    tl__mhd()->add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4");
    r->what = "metrics";
    r->outcome = "answered";
    r->status = 200;
    enum MHD_Result rc = tl__mhd()->queue_response(c, 200, resp);
    tl__mhd()->destroy_response(resp);
    return rc;
  }
  if (!token && !device) {
    r->outcome = "refused";
    return oauth_error(c, r, 404, "not_found",
                       "tokenledger serve answers only POST /api/oauth/token and /api/oauth/device/code", -1);
  }
  if (strcmp(method, "POST") != 0) {
    r->outcome = "refused";
    return oauth_error(c, r, 405, "invalid_request", "POST only", -1);
  }
  if (r->too_big) {
    r->outcome = "refused";
    return oauth_error(c, r, 413, "invalid_request", "request body too large", -1);
  }
  const char *ct = tl__mhd()->lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
  if (r->len && ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0) {
    r->outcome = "refused";
    return oauth_error(c, r, 400, "invalid_request", "expected an application/x-www-form-urlencoded body", -1);
  }
  tl_store *s = store_get(sv);
  const char *body = r->body ? r->body : "";
  enum MHD_Result res;
  if (device) {
    res = handle_device_code(sv, c, r, s, body);
  } else {
    int dup = 0;
    char *grant = form_field(body, "grant_type", &dup);
    if (dup || !grant) {
      r->outcome = "refused";
      res = oauth_error(c, r, 400, "invalid_request", "grant_type is required (once)", -1);
    } else if (strcmp(grant, "refresh_token") == 0)
      res = handle_refresh(c, r, s, body);
    else if (strcmp(grant, DEVICE_GRANT) == 0)
      res = handle_device_token(sv, c, r, s, body);
    else {
      r->outcome = "refused";
      res = oauth_error(c, r, 400, "unsupported_grant_type", "Unsupported grant type", -1);
    }
    free(grant);
  }
  store_put(sv);
  return res;
}

static enum MHD_Result add_header_len(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  (void)kind;
  *(size_t *)cls += strlen(key) + (value ? strlen(value) : 0) + 4; /* "key: value\r\n" */
  return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *size, void **con_cls)
{
  request *r = *con_cls;
  if (!r) {
    if (!(r = calloc(1, sizeof *r)))
      return MHD_NO;
    *con_cls = r;
    /* libmicrohttpd's pool (POOL_BYTES) lets a big head reach us, to be refused in JSON (route). */
    r->head = strlen(method) + strlen(url) + strlen(version) + 4;
    tl__mhd()->get_connection_values(c, MHD_HEADER_KIND, add_header_len, &r->head);
    return MHD_YES;
  }
  if (*size) {
    if (r->len + *size > BODY_MAX) {
      r->too_big = 1;
    } else {
      char *nb = malloc(r->len + *size + 1);
      if (!nb)
        return MHD_NO;
      if (r->body) {
        memcpy(nb, r->body, r->len);
        tl_burn(r->body, r->len);
        free(r->body);
      }
      memcpy(nb + r->len, data, *size);
      r->body = nb;
      r->len += *size;
      r->body[r->len] = '\0';
    }
    *size = 0;
    return MHD_YES;
  }
  if (r->handled)
    return MHD_NO;
  r->handled = 1;
  return route(cls, c, r, url, method);
}

/*
 * A surrogate replayed: an authentic one of a profile that is no longer strict, or of a generation
 * the credential left behind. Whoever presents it holds a copy of an old auth.json (a backup, a
 * copied home); seen here, locally, before any server could see it.
 */
/* The calling process in an audit detail, when /proc told it. */
static void peer_detail(json_t *d, const peer *p)
{
  if (d && p && p->pid > 0)
    json_object_set_new(d, "peer_pid", json_integer(p->pid));
  if (d && p && p->uid >= 0)
    json_object_set_new(d, "peer_uid", json_integer(p->uid));
  if (d && p && p->comm[0])
    json_object_set_new(d, "peer_command", json_string(p->comm));
}

static json_t *replay_detail(const request *r, const peer *p)
{
  json_t *d =
      json_pack("{s:s, s:s, s:I, s:I, s:s}", "profile", r->profile_name, "reason", r->replayed, "surrogate_generation",
                (json_int_t)r->gen_in, "current_generation", (json_int_t)r->gen_now, "presented", r->fp);
  peer_detail(d, p);
  return d;
}

/* After the answer went out: the audit row (and the peer, looked up once per connection). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
  server *sv = cls;
  request *r = *con_cls;
  *con_cls = NULL;
  if (!r)
    return;
  /* A Prometheus scrape of the counters holds no credential: not audited (it would fill the log). */
  if (r->handled && strcmp(r->what, "metrics") != 0) {
    peer *p = conn_peer(c);
    if (p)
      peer_lookup(p);
    tl_error err = {0};
    json_t *d = json_pack("{s:s, s:s, s:i, s:s?, s:s?}", "request", r->what, "outcome", r->outcome ? r->outcome : "-",
                          "http_status", (int)r->status, "error", r->error[0] ? r->error : NULL, "why",
                          r->why[0] ? r->why : NULL);
    if (d && r->fp[0])
      json_object_set_new(d, "presented", json_string(r->fp));
    if (d && r->gen_in)
      json_object_set_new(d, "surrogate_generation", json_integer(r->gen_in));
    if (d && r->status == 200 && strcmp(r->what, "device_code") != 0)
      json_object_set_new(d, "issued_generation", json_integer(r->gen_out));
    if (d && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
      json_object_set_new(d, "delivered", json_false());
    peer_detail(d, p);
    tl__ids ids = {.profile = r->profile, .credential = r->credential};
    json_t *replay = r->replayed ? replay_detail(r, p) : NULL;
    tl_store *s = store_get(sv);
    tl_store_set_actor(s, r->profile_name[0] ? r->profile_name : NULL, "serve");
    if (tl__tx_begin(s, "serve audit", &err) == TL_OK) {
      tl_status arc = tl__audit(s, "serve_request", &ids, d, &err); /* each tl__audit takes its detail */
      if (replay && arc == TL_OK)
        arc = tl__audit(s, "surrogate_replayed", &ids, replay, &err);
      else
        json_decref(replay);
      replay = NULL;
      if (arc == TL_OK)
        tl__tx_commit(s, &err);
      else
        tl__tx_rollback(s);
    } else {
      json_decref(d);
    }
    json_decref(replay);
    tl_store_set_actor(s, NULL, "serve");
    store_put(sv);
    say(sv, "%s %s%s%s: %u %s%s%s (pid %ld%s%s)", r->what, r->profile_name[0] ? "profile " : "",
        r->profile_name[0] ? r->profile_name : "", r->profile_name[0] ? "" : "unknown caller", r->status,
        r->outcome ? r->outcome : "-", r->error[0] ? " " : "", r->error, p ? p->pid : -1L, p && p->comm[0] ? " " : "",
        p ? p->comm : "");
    if (err.message[0])
      say(sv, "audit not written: %s", err.message);
  }
  request_free(r);
}

/* A new connection (its caller already accepted by on_accept): the kernel's word on its socket, for the audit. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
  server *sv = cls;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    conn *k = calloc(1, sizeof(conn));
    const union MHD_ConnectionInfo *ci = tl__mhd()->get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    sock_owner so;
    if (k) {
      k->who.pid = k->who.uid = -1;
      if (ci && ci->client_addr && peer_socket(&so, ci->client_addr, (const struct sockaddr *)&sv->self)) {
        k->who.uid = so.uid;
        k->who.inode = so.inode;
      }
    }
    *socket_context = k;
  } else {
    free(*socket_context);
    *socket_context = NULL;
  }
}

/*
 * Only loopback peers (the socket is bound to loopback, this says so twice), and only
 * this user's: a surrogate is worth the real access token, and any local user can reach
 * a loopback port, capture a surrogate by holding the port while serve is down, or fill
 * the connection slots and the audit log. Who the caller is comes from the kernel's answer
 * for its exact socket (peer_socket: the full 4-tuple, ESTABLISHED, a non-zero inode), in
 * constant time: another uid's connection flood costs one netlink round trip each, never a
 * scan of every socket of the machine. A peer the kernel does not vouch for is refused.
 * Nothing is read from a refused connection and nothing is written to the ledger for it.
 */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
  server *sv = cls;
  (void)len;
  int loopback = 0;
  if (addr->sa_family == AF_INET)
    loopback = (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127;
  else if (addr->sa_family == AF_INET6)
    loopback = IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)addr)->sin6_addr);
  if (!loopback)
    return MHD_NO;
  sock_owner so = {.uid = -1};
  if (peer_socket(&so, addr, (const struct sockaddr *)&sv->self) && so.uid == (long)geteuid())
    return MHD_YES;
  long uid = so.uid;
  int64_t now = tl__now_ms(), prev = atomic_load(&sv->refused_said);
  if (now - prev < 60000 || !atomic_compare_exchange_strong(&sv->refused_said, &prev, now))
    return MHD_NO;
  if (uid < 0)
    say(sv,
        "refused a connection whose user the kernel does not vouch for (no established socket of that "
        "address): serve answers only its own user (uid %ld); said once a minute at most",
        (long)geteuid());
  else
    say(sv, "refused a connection from uid %ld: serve answers only its own user (uid %ld); said once a minute at most",
        uid, (long)geteuid());
  return MHD_NO;
}

/* ---- listening -------------------------------------------------------------------------- */

/* Parses HOST:PORT (or [::1]:PORT, localhost:PORT); only loopback literals. */
static tl_status parse_listen(char host[64], int *port, const char *listen, tl_error *err)
{
  const char *colon, *h = listen;
  size_t hl;
  if (listen[0] == '[') {
    const char *close = strchr(listen, ']');
    if (!close || close[1] != ':')
      goto bad;
    h = listen + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    if (!(colon = strrchr(listen, ':')))
      goto bad;
    hl = (size_t)(colon - listen);
  }
  if (hl == 0 || hl >= 64)
    goto bad;
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (strcmp(host, "localhost") == 0)
    snprintf(host, 64, "127.0.0.1");
  char *end = NULL;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (errno || !end || *end || end == colon + 1 || p < 1 || p > 65535 || colon[1] == '+' || colon[1] == '-')
    goto bad;
  *port = (int)p;
  if (!tl__serve_host_valid(host))
    return tl__err(err, TL_EINVAL, 0,
                   "listen address '%.80s': '%.63s' is not a loopback address; tokenledger serve listens only on "
                   "127.0.0.0/8, ::1 or localhost (names are not resolved)",
                   listen, host);
  return TL_OK;
bad:
  return tl__err(err, TL_EINVAL, 0,
                 "listen address '%.80s' is not HOST:PORT (for example 127.0.0.1:8787, a port 1-65535)", listen);
}

/* A listening socket on host:port (0: any free port), owned alone: no SO_REUSEPORT. */
static tl_status bind_listen(int *out_fd, int *out_port, const char *host, int port, tl_error *err)
{
  struct sockaddr_storage ss;
  socklen_t len = tl__serve_sockaddr(&ss, host, port);
  if (!len)
    return tl__err(err, TL_EINVAL, 0, "'%s' is not an address", host);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0)
    return tl__err(err, TL_EIO, errno, "socket: %s", strerror(errno));
  /* SO_REUSEADDR only lets a restart bind past TIME_WAIT; on Linux it never shares a listening port. */
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 128) != 0) {
    int e = errno;
    close(fd);
    if (e == EADDRINUSE)
      return tl__err(err, TL_EBUSY, e,
                     "%s port %d is in use by another program; tokenledger serve does not share a port", host, port);
    return tl__err(err, TL_EIO, e, "cannot listen on %s port %d: %s", host, port, strerror(e));
  }
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
    int e = errno;
    close(fd);
    return tl__err(err, TL_EIO, e, "getsockname: %s", strerror(e));
  }
  *out_port =
      ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port : ((struct sockaddr_in6 *)&ss)->sin6_port);
  *out_fd = fd;
  return TL_OK;
}

/* The address to bind: --listen, else the last one used, else 127.0.0.1 on any free port. */
static tl_status choose_address(char host[64], int *port, tl_store *s, const tl_serve_opts *o, tl_error *err)
{
  static const char sql[] = "SELECT host, port FROM serve_state WHERE id = 1";
  if (o->listen)
    return parse_listen(host, port, o->listen, err);
  snprintf(host, 64, "127.0.0.1");
  *port = 0;
  sqlite3_stmt *st;
  tl_status prc = tl__prepare(&st, s, sql, err);
  if (prc != TL_OK)
    return prc;
  if (sqlite3_step(st) == SQLITE_ROW && tl__serve_host_valid((const char *)sqlite3_column_text(st, 0))) {
    snprintf(host, 64, "%s", (const char *)sqlite3_column_text(st, 0));
    *port = sqlite3_column_int(st, 1);
  }
  sqlite3_reset(st);
  return TL_OK;
}

/*
 * Takes the port file: created O_EXCL|O_NOFOLLOW at 0600, or an existing one of ours whose
 * lock is free (its serve died). Holding the lock is being the serve of this ledger.
 */
static tl_status port_file_take(int *out_fd, long *stale_pid, const char *path, tl_error *err)
{
  for (int attempt = 0; attempt < 5; attempt++) {
    int created = 1;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0 && errno == EEXIST) {
      created = 0;
      fd = open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
      if (fd < 0 && errno == ENOENT)
        continue; /* removed meanwhile */
    }
    if (fd < 0)
      return tl__err(err, errno == ELOOP ? TL_EINSECURE : TL_EIO, errno, "%s: %s", path,
                     errno == ELOOP ? "is a symbolic link; refusing to follow it" : strerror(errno));
    struct stat st, again;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
      close(fd);
      return tl__err(err, TL_EINSECURE, 0, "%s: not a regular 0600 file of yours; remove it and start serve again",
                     path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      tl__serve_live live = {0};
      char buf[512] = "";
      ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
      json_t *j = n > 0 ? json_loadb(buf, (size_t)n, 0, NULL) : NULL;
      live.pid = (long)json_integer_value(json_object_get(j, "pid"));
      live.port = (int)json_integer_value(json_object_get(j, "port"));
      json_decref(j);
      close(fd);
      return tl__err(err, TL_EEXISTS, 0,
                     "another tokenledger serve (pid %ld, port %d) is running for this ledger; one is enough", live.pid,
                     live.port);
    }
    /* Ours now, unless the file was replaced between open and lock. */
    if (stat(path, &again) != 0 || again.st_ino != st.st_ino || again.st_dev != st.st_dev) {
      close(fd);
      continue;
    }
    if (!created) {
      char buf[512] = "";
      ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
      json_t *j = n > 0 ? json_loadb(buf, (size_t)n, 0, NULL) : NULL;
      *stale_pid = j ? (long)json_integer_value(json_object_get(j, "pid")) : -1;
      json_decref(j);
      if (ftruncate(fd, 0) != 0) {
        int e = errno;
        close(fd);
        return tl__err(err, TL_EIO, e, "%s: %s", path, strerror(e));
      }
    }
    *out_fd = fd;
    return TL_OK;
  }
  return tl__err(err, TL_EBUSY, 0, "%s: keeps changing under us; is another serve starting?", path);
}

static tl_status port_file_write(int fd, const char *path, const char *host, int port, tl_error *err)
{
  char url[128];
  tl__serve_url(url, sizeof url, host, port);
  json_t *j = json_pack("{s:s, s:i, s:I, s:s}", "host", host, "port", port, "pid", (json_int_t)getpid(), "url", url);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text)
    return tl__oom(err);
  size_t n = strlen(text);
  text[n] = '\n';
  ssize_t w = pwrite(fd, text, n + 1, 0);
  free(text);
  if (w != (ssize_t)(n + 1) || fsync(fd) != 0)
    return tl__err(err, TL_EIO, errno, "%s: cannot write: %s", path, strerror(errno));
  return TL_OK;
}

static tl_status remember_address(tl_store *s, const char *host, int port, long stale_pid, tl_error *err)
{
  static const char sql[] = "INSERT INTO serve_state (id, host, port, updated_at) VALUES (1, :host, :port, :now) "
                            "ON CONFLICT (id) DO UPDATE SET host = :host, port = :port, updated_at = :now";
  tl_status rc;
  if ((rc = tl__tx_begin(s, "serve start", err)) != TL_OK)
    return rc;
  sqlite3_stmt *st;
  if ((rc = tl__prepare(&st, s, sql, err)) != TL_OK ||
      (rc = TL_BIND(st, err, TL_TEXT(":host", host), TL_INT(":port", port), TL_INT(":now", tl__now_ms()))) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  if ((rc = tl__step_done(s, st, "serve start", err)) != TL_OK ||
      (rc = tl__audit(s, "serve_started", NULL,
                      json_pack("{s:s, s:i, s:I}", "host", host, "port", port, "pid", (json_int_t)getpid()), err)) !=
          TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  if (stale_pid != 0 && (rc = tl__audit(s, "serve_stale_port_file", NULL,
                                        json_pack("{s:I}", "dead_pid", (json_int_t)stale_pid), err)) != TL_OK) {
    tl__tx_rollback(s);
    return rc;
  }
  return tl__tx_commit(s, err);
}

/* ---- the loop ------------------------------------------------------------------------------ */

static void keep_fresh_round(server *sv, tl_store *s, const tl_serve_opts *o)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int failures = 0;
  tl_status rc = tl_keep_fresh(&r, &failures, s, o->ahead_ms > 0 ? o->ahead_ms : 600000, !o->no_sync, &err);
  if (rc != TL_OK) {
    say(sv, "keep-fresh: %s", err.message[0] ? err.message : tl_status_name(rc));
    return;
  }
  /* One line per round, as `keep-fresh` logs as a service: a quiet log means serve's rounds stopped. */
  int refreshed = 0, fresh = 0, synced = 0;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action");
    if (a && strcmp(a, "refreshed") == 0)
      refreshed++;
    else if (a && strcmp(a, "fresh") == 0)
      fresh++;
    else if (a && strncmp(a, "sync:", 5) == 0 && strcmp(a, "sync:unchanged") != 0)
      synced++;
  }
  sv->rounds++;
  say(sv, "keep-fresh round %ld: %d refreshed, %d fresh, %d file(s) written, %d failure(s)", sv->rounds, refreshed,
      fresh, synced, failures);
  tl_report_free(r);
}

tl_status tl_serve_run(tl_store *s, const tl_serve_opts *o, tl_error *err)
{
  tl_error_clear(err);
  server sv;
  char path[4096], host[64], url[128];
  int lfd = -1, pfd = -1, port = 0;
  long stale_pid = 0;
  struct MHD_Daemon *d = NULL;
  tl_status rc;
  if (!s || !o || !o->should_stop)
    return tl__err(err, TL_EINVAL, 0, "serve: a store and a stop callback are required");
  if (o->threads < 0 || o->threads > THREADS_MAX)
    return tl__err(err, TL_EINVAL, 0, "serve: threads must be 1-%d", THREADS_MAX);
  if (!tl__mhd()) /* loaded here, before the daemon exists: every tl__mhd() below finds it */
    return tl__err(err, TL_ERROR, 0, "serve: libmicrohttpd could not be loaded (%s)", tl__lazy_error());
  memset(&sv, 0, sizeof sv);
  sv.o = o;
  sv.store = s;
  /* A Hermes process may wait on an answer while it holds its own auth.lock: serve's file work never waits long. */
  int64_t lock_timeout = s->lock_timeout_ms;
  s->lock_timeout_ms = 2000;
  sv.max = (size_t)(o->threads ? o->threads : THREADS_DEFAULT);
  pthread_mutex_init(&sv.store_mu, NULL);
  pthread_mutex_init(&sv.dev_mu, NULL);
  s->agent_off = 1; /* serve's own calls never ask its agent */
  if ((rc = choose_address(host, &port, s, o, err)) != TL_OK || (rc = tl__serve_port_path(path, sizeof path, s, err)))
    goto done;
  if ((rc = port_file_take(&pfd, &stale_pid, path, err)) != TL_OK)
    goto done;
  if ((rc = bind_listen(&lfd, &sv.port, host, port, err)) != TL_OK)
    goto done;
  tl__serve_sockaddr(&sv.self, host, sv.port);
  if ((rc = port_file_write(pfd, path, host, sv.port, err)) != TL_OK ||
      (rc = remember_address(s, host, sv.port, stale_pid, err)) != TL_OK)
    goto done;
  sv.agent = tl__agent_start(s, o->on_log, o->ud); /* before any other thread: it sets the umask */
  unsigned flags =
      MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | (strchr(host, ':') ? MHD_USE_IPv6 : 0);
  d = tl__mhd()->start_daemon(flags, 0, on_accept, &sv, on_request, &sv, MHD_OPTION_LISTEN_SOCKET, lfd,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, &sv, MHD_OPTION_NOTIFY_CONNECTION,
                              on_connection, &sv, MHD_OPTION_CONNECTION_LIMIT, (unsigned)sv.max,
                              MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                              (size_t)POOL_BYTES, MHD_OPTION_END);
  if (!d) {
    rc = tl__err(err, TL_EIO, errno, "cannot start the HTTP server on %s port %d", host, sv.port);
    goto done;
  }
  lfd = -1; /* MHD closes it */
  tl__serve_url(url, sizeof url, host, sv.port);
  if (stale_pid)
    say(&sv, "took over the port file of a serve that died (pid %ld)", stale_pid);
  if (o->on_ready)
    o->on_ready(o->ud, url);
  int64_t next = 0;
  while (!o->should_stop(o->ud)) {
    if (o->interval_ms >= 0 && tl__now_ms() >= next) {
      store_get(&sv);
      keep_fresh_round(&sv, s, o);
      store_put(&sv);
      next = tl__now_ms() + (o->interval_ms > 0 ? o->interval_ms : 60000);
    }
    tl__sleep_us(100000);
  }
  rc = TL_OK;
done:
  tl__agent_stop(sv.agent); /* its socket goes first: clients do without it from then on */
  s->lock_timeout_ms = lock_timeout;
  s->agent_off = 0;
  if (d)
    tl__mhd()->stop_daemon(d); /* waits for every connection thread */
  if (lfd >= 0)
    close(lfd);
  if (pfd >= 0) {
    unlink(path); /* still holding the lock: nobody else can have taken it */
    close(pfd);
  }
  if (d) {
    tl_error quiet = {0};
    if (tl__tx_begin(s, "serve stop", &quiet) == TL_OK) {
      if (tl__audit(s, "serve_stopped", NULL, json_pack("{s:i}", "port", sv.port), &quiet) == TL_OK)
        tl__tx_commit(s, &quiet);
      else
        tl__tx_rollback(s);
    }
  }
  pthread_mutex_destroy(&sv.dev_mu);
  pthread_mutex_destroy(&sv.store_mu);
  return rc;
}
