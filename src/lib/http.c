/*
 * http.c - the token endpoint transport: one form-encoded POST with libcurl,
 * and the rules for which URLs may carry a token at all.
 *
 * This is the only file that talks to libcurl's transfer API. It sits behind
 * the tl_http_fn seam so tests and benchmarks can substitute canned answers.
 *
 * Invariants:
 *   - TLS peer and host verification are always on; the only knob is a CA
 *     bundle (TOKENLEDGER_CA_BUNDLE, else SSL_CERT_FILE), never "insecure".
 *     libcurl is loaded on first use (lazy.c), which removes SSLKEYLOGFILE
 *     from the environment before libcurl's global initialisation, so TLS
 *     session keys are never written to a file.
 *   - Redirects are never followed, so no credential can travel to another
 *     host; a 3xx is just a status the caller classifies.
 *   - Plain http only to a loopback address: an IP literal in 127.0.0.0/8,
 *     [::1], or exactly localhost, written in the canonical form libcurl
 *     itself uses (no 0x7f.1, 2130706433, userinfo or zone tricks). For such
 *     an endpoint, every address libcurl is about to connect to, and the
 *     connected peer before the first request byte, must be a loopback
 *     address, and no proxy is ever used.
 *   - No control character goes into a header: the RT header's name is an
 *     RFC 7230 token and its value printable, or nothing is sent.
 *   - The response body is capped at 1 MiB; numbers in headers are bounded.
 *   - A failure is NOT_SENT only if curl reports that no request byte was
 *     written; anything else that fails is LOST (the RT may have arrived).
 *   - The header line that carries an RT is burned after the transfer.
 *   - A stop signal deferred across a presentation (refresh.c) ends a
 *     transfer that has not written a request byte yet (NOT_SENT); after the
 *     first byte it is only reported (tl__stop_watch), never acted on: the
 *     answer must be recorded first.
 */
#include "internal.h"
#include "lazy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define TL_RESPONSE_MAX (1024 * 1024)

/* ---- which URLs may carry a token --------------------------------------- */

static int loopback_sockaddr(const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr);
  return 0;
}

/* 1 if text is an IP literal of a loopback address (127.0.0.0/8 in dotted quads, or ::1). */
static int loopback_ip_text(const char *text)
{
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, text, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, text, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6);
  return 0;
}

tl_status tl__url_classify(int *out_loopback, const char *url, tl_error *err)
{
  tl_status rc = TL_OK;
  char *scheme = NULL, *host = NULL, *user = NULL, *zone = NULL;
  const tl__curl_api *cu = tl__curl();
  *out_loopback = 0;
  if (!cu)
    return tl__err(err, TL_ERROR, 0, "cannot check URL '%.200s': libcurl could not be loaded (%s)", url ? url : "",
                   tl__lazy_error());
  CURLU *u = cu->url();
  if (!u)
    return tl__oom(err);
  if (!url || strlen(url) > 2048 || cu->url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      cu->url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      cu->url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
    rc = tl__err(err, TL_EINVAL, 0, "URL '%.200s' is not a valid absolute URL", url ? url : "");
    goto done;
  }
  if (cu->url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
    rc = tl__err(err, TL_EINVAL, 0, "URL '%.200s' carries user information; a token endpoint never does", url);
    goto done;
  }
  if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0) {
    rc = tl__err(err, TL_EINVAL, 0, "URL '%.200s' must use https", url);
    goto done;
  }
  /*
   * A loopback host, as libcurl understood it and exactly as written: libcurl reads 0x7f.1, 2130706433
   * and 0177.0.0.1 as 127.0.0.1, so the written authority must be the canonical one for the host to
   * mean what it says.
   */
  size_t sl = strlen(scheme), hl = strlen(host);
  int canonical = strncasecmp(url, scheme, sl) == 0 && strncmp(url + sl, "://", 3) == 0 &&
                  strncmp(url + sl + 3, host, hl) == 0 && strchr(":/?#", url[sl + 3 + hl]);
  int has_zone = cu->url_get(u, CURLUPART_ZONEID, &zone, 0) == CURLUE_OK;
  int loopback = 0;
  if (canonical && !has_zone) {
    if (strcmp(host, "localhost") == 0) {
      loopback = 1;
    } else if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
      char v6[64];
      snprintf(v6, sizeof v6, "%.*s", (int)(hl - 2), host + 1);
      loopback = loopback_ip_text(v6);
    } else {
      loopback = strchr(host, ':') == NULL && loopback_ip_text(host);
    }
  }
  if (strcmp(scheme, "http") == 0 && !loopback) {
    rc = tl__err(err, TL_EINVAL, 0,
                 "URL '%.200s' must use https: plain http is allowed only to a loopback address written as an IP "
                 "literal in 127.0.0.0/8, [::1], or exactly localhost",
                 url);
    goto done;
  }
  *out_loopback = loopback;
done:
  cu->free(scheme);
  cu->free(host);
  cu->free(user);
  cu->free(zone);
  cu->url_cleanup(u);
  return rc;
}

char *tl__url_escape(const char *text)
{
  const tl__curl_api *cu = tl__curl();
  char *e = cu ? cu->easy_escape(NULL, text, 0) : NULL;
  char *copy = e ? strdup(e) : NULL;
  if (e) {
    tl_burn(e, strlen(e)); /* text may be a secret */
    cu->free(e);
  }
  return copy;
}

/* RFC 7230 tchar: the only bytes a header name may hold. */
static int header_name_valid(const char *name)
{
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 64)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c)))
      return 0;
  }
  return 1;
}

const char *tl__rt_header_invalid(const char *name)
{
  /* Headers that frame or route the request, or carry other credentials: an RT in one of them would
   * change what is sent (a smuggled request, another host) or where the RT ends up (a log, a proxy). */
  static const char *const reserved[] = {"host",
                                         "content-length",
                                         "transfer-encoding",
                                         "connection",
                                         "content-type",
                                         "content-encoding",
                                         "authorization",
                                         "proxy-authorization",
                                         "cookie",
                                         "expect",
                                         "upgrade",
                                         "te",
                                         "trailer",
                                         "keep-alive",
                                         "proxy-connection",
                                         "accept",
                                         "user-agent",
                                         "forwarded",
                                         "x-forwarded-for",
                                         "x-forwarded-host",
                                         "via",
                                         "referer",
                                         "range",
                                         "origin"};
  if (!header_name_valid(name))
    return "is not a valid HTTP header name (1-64 of A-Z a-z 0-9 and !#$%&'*+-.^_`|~)";
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
    if (strcasecmp(name, reserved[i]) == 0)
      return "is a header that frames, routes or authenticates the request; choose a harmless name";
  return NULL;
}

/* ---- the transfer ------------------------------------------------------- */

typedef struct sink {
  char *buf;
  size_t len, cap;
  int overflow;
} sink;

/* What the connect-time checks saw, for the failure detail. */
typedef struct peer_guard {
  int refused;
  char addr[64];
} peer_guard;

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
  sink *k = ud;
  size_t add = size * n;
  if (k->len + add > TL_RESPONSE_MAX) {
    k->overflow = 1;
    return 0; /* aborts the transfer */
  }
  if (k->len + add + 1 > k->cap) {
    size_t cap = k->cap ? k->cap : 4096;
    while (cap < k->len + add + 1)
      cap *= 2;
    char *nb = realloc(k->buf, cap);
    if (!nb)
      return 0;
    k->buf = nb;
    k->cap = cap;
  }
  memcpy(k->buf + k->len, data, add);
  k->len += add;
  k->buf[k->len] = '\0';
  return add;
}

/*
 * Retry-After: delta-seconds (digits only) or an HTTP-date; anything else is
 * ignored. The result is capped at a day, so no later arithmetic overflows.
 */
long tl__retry_after(const char *value, int64_t now_ms)
{
  char tmp[64];
  size_t b = 0, e = strlen(value);
  while (b < e && (value[b] == ' ' || value[b] == '\t'))
    b++;
  while (e > b && strchr(" \t\r\n", value[e - 1]))
    e--;
  if (e == b || e - b >= sizeof tmp)
    return -1;
  memcpy(tmp, value + b, e - b);
  tmp[e - b] = '\0';
  if (strspn(tmp, "0123456789") == strlen(tmp)) {
    long v = 0;
    for (const char *p = tmp; *p && v <= 86400; p++)
      v = v * 10 + (*p - '0');
    return v > 86400 ? 86400 : v;
  }
  const tl__curl_api *cu = tl__curl();
  time_t t = cu ? cu->getdate(tmp, NULL) : -1;
  if (t <= 0)
    return -1;
  int64_t d = (int64_t)t - now_ms / 1000;
  return d <= 0 ? 0 : d > 86400 ? 86400 : (long)d;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
  tl_http_response *resp = ud;
  size_t len = size * n;
  static const char name[] = "retry-after:";
  if (len > sizeof name - 1 && len < 128 && strncasecmp(data, name, sizeof name - 1) == 0) {
    char tmp[128];
    memcpy(tmp, data + sizeof name - 1, len - (sizeof name - 1));
    tmp[len - (sizeof name - 1)] = '\0';
    resp->retry_after = tl__retry_after(tmp, tl__now_ms());
  }
  return len;
}

/* Before a socket exists: a loopback endpoint is only ever reached at a loopback address. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
  peer_guard *g = ud;
  if (purpose != CURLSOCKTYPE_IPCXN || !loopback_sockaddr(&a->addr)) {
    g->refused = 1;
    const void *raw = a->family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)(void *)&a->addr)->sin6_addr
                                            : (const void *)&((struct sockaddr_in *)(void *)&a->addr)->sin_addr;
    if (!inet_ntop(a->family, raw, g->addr, sizeof g->addr))
      snprintf(g->addr, sizeof g->addr, "an address of family %d", a->family);
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* After connecting, before the first request byte: the peer libcurl actually reached. */
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port, int conn_local_port)
{
  (void)conn_local_ip;
  (void)conn_primary_port;
  (void)conn_local_port;
  peer_guard *g = ud;
  if (conn_primary_ip && loopback_ip_text(conn_primary_ip))
    return CURL_PREREQFUNC_OK;
  g->refused = 1;
  snprintf(g->addr, sizeof g->addr, "%s", conn_primary_ip ? conn_primary_ip : "an unknown peer");
  return CURL_PREREQFUNC_ABORT;
}

/* A header value a server will read as exactly one printable line. */
static int header_value_valid(const char *v)
{
  return v && tl__token_valid(v, strlen(v));
}

/* ---- stop signals during a transfer ------------------------------------- */

static _Thread_local tl__stop_watch *stop_watch;

void tl__http_stop_watch(tl__stop_watch *w)
{
  stop_watch = w;
}

/* The stop signal pending for this thread (they are blocked across a presentation), 0 if none; one the
 * process ignores (nohup's SIGHUP) is none: it will be discarded, not stop anything. */
static int stop_pending(void)
{
  static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
  sigset_t p;
  struct sigaction sa;
  if (sigpending(&p) != 0)
    return 0;
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    if (sigismember(&p, sigs[i]) == 1 && sigaction(sigs[i], NULL, &sa) == 0 && sa.sa_handler != SIG_IGN)
      return sigs[i];
  return 0;
}

typedef struct xfer {
  CURL *h;
  tl__stop_watch *w;
  int stopped; /* ended by a stop signal before any byte left */
} xfer;

/* libcurl's progress callback: at least about once a second, also while waiting for the answer. */
static int on_xfer(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
  xfer *x = ud;
  (void)dltotal;
  (void)dlnow;
  (void)ultotal;
  int sig;
  if (x->w->noticed || !(sig = stop_pending()))
    return 0;
  x->w->noticed = 1;
  long sent = 0;
  tl__curl()->easy_getinfo(x->h, CURLINFO_REQUEST_SIZE, &sent);
  if (sent == 0 && ulnow == 0) {
    x->stopped = 1; /* nothing left: the RT stays unspent, and the process may stop now */
    return 1;
  }
  if (x->w->fn) {
    int64_t left = x->w->deadline_ms - tl__now_ms();
    x->w->fn(x->w->ud, sig, left > 0 ? left : 0);
  }
  return 0;
}

void tl__http_response_clear(tl_http_response *resp)
{
  if (!resp)
    return;
  if (resp->body) {
    tl_burn(resp->body, resp->body_len);
    free(resp->body);
  }
  memset(resp, 0, sizeof *resp);
  resp->retry_after = -1;
}

int tl__curl_post(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  (void)ud;
  int loopback = 0;
  tl_error uerr = {0};
  resp->failure = TL_HTTP_NOT_SENT;
  resp->status = 0;
  resp->retry_after = -1;
  if (tl__url_classify(&loopback, req->url, &uerr) != TL_OK) {
    snprintf(resp->detail, sizeof resp->detail, "refusing to send: %.200s", uerr.message);
    return 0;
  }
  tl__curl_transfer(req, resp, loopback);
  return 0;
}

void tl__curl_transfer(const tl_http_request *req, tl_http_response *resp, int loopback)
{
  CURL *h = NULL;
  struct curl_slist *hdrs = NULL;
  char *rtline = NULL;
  sink k = {0};
  peer_guard guard = {0};
  xfer x = {0};
  const tl__curl_api *cu = tl__curl();
  resp->failure = TL_HTTP_NOT_SENT;
  resp->status = 0;
  resp->retry_after = -1;
  if (req->rt_header && (tl__rt_header_invalid(req->rt_header) || !header_value_valid(req->rt_value))) {
    snprintf(resp->detail, sizeof resp->detail,
             "refusing to send: the refresh token header would carry a control character or an invalid name");
    return;
  }
  if (!cu) {
    snprintf(resp->detail, sizeof resp->detail, "libcurl could not be loaded (%.200s)", tl__lazy_error());
    return;
  }
  h = cu->easy_init();
  if (!h) {
    snprintf(resp->detail, sizeof resp->detail, "cannot initialise libcurl");
    return;
  }
  hdrs = cu->slist_append(hdrs, "Accept: application/json");
  hdrs = cu->slist_append(hdrs, req->content_type && strcmp(req->content_type, "application/json") == 0
                                    ? "Content-Type: application/json"
                                    : "Content-Type: application/x-www-form-urlencoded");
  if (req->rt_header) {
    size_t n = strlen(req->rt_header) + strlen(req->rt_value) + 3;
    rtline = malloc(n);
    if (rtline) {
      snprintf(rtline, n, "%s: %s", req->rt_header, req->rt_value);
      hdrs = cu->slist_append(hdrs, rtline);
    }
  }
  if (!hdrs || (req->rt_header && !rtline)) {
    snprintf(resp->detail, sizeof resp->detail, "out of memory building the request");
    goto done;
  }
  const char *ca = getenv("TOKENLEDGER_CA_BUNDLE");
  if (!ca || !*ca)
    ca = getenv("SSL_CERT_FILE");
  cu->easy_setopt(h, CURLOPT_URL, req->url);
  cu->easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
  cu->easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  cu->easy_setopt(h, CURLOPT_USERAGENT, "tokenledger/" TL_VERSION);
  cu->easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  cu->easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  cu->easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
  cu->easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
  if (ca && *ca)
    cu->easy_setopt(h, CURLOPT_CAINFO, ca);
  if (loopback) {
    /* Never through a proxy, whatever http_proxy, HTTPS_PROXY, ALL_PROXY or NO_PROXY say, and only to a
     * loopback peer: checked on every address before connecting and on the connected peer before sending. */
    cu->easy_setopt(h, CURLOPT_PROXY, "");
    cu->easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    cu->easy_setopt(h, CURLOPT_OPENSOCKETDATA, &guard);
    cu->easy_setopt(h, CURLOPT_PREREQFUNCTION, on_prereq);
    cu->easy_setopt(h, CURLOPT_PREREQDATA, &guard);
  }
  cu->easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  cu->easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 5000L);
  cu->easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 15000L);
  cu->easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  cu->easy_setopt(h, CURLOPT_WRITEDATA, &k);
  cu->easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  cu->easy_setopt(h, CURLOPT_HEADERDATA, resp);
  if (stop_watch) {
    x.h = h;
    x.w = stop_watch;
    cu->easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xfer);
    cu->easy_setopt(h, CURLOPT_XFERINFODATA, &x);
    cu->easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  }

  CURLcode cc = cu->easy_perform(h);
  long sent = 0;
  cu->easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
  if (cc == CURLE_OK) {
    resp->failure = TL_HTTP_DONE;
    cu->easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    resp->body = k.buf;
    resp->body_len = k.len;
    k.buf = NULL;
  } else if (x.stopped && sent == 0) {
    resp->failure = TL_HTTP_NOT_SENT;
    snprintf(resp->detail, sizeof resp->detail, "stopped by a signal before any byte of the request left");
  } else if (guard.refused) {
    resp->failure = sent > 0 ? TL_HTTP_LOST : TL_HTTP_NOT_SENT;
    snprintf(resp->detail, sizeof resp->detail,
             "refusing to send: the loopback endpoint led to %s, which is not a loopback address", guard.addr);
  } else {
    resp->failure = sent > 0 ? TL_HTTP_LOST : TL_HTTP_NOT_SENT;
    snprintf(resp->detail, sizeof resp->detail, "%s%s", k.overflow ? "response larger than 1 MiB; " : "",
             cu->easy_strerror(cc));
  }
done:
  if (k.buf) {
    tl_burn(k.buf, k.len);
    free(k.buf);
  }
  if (rtline) {
    tl_burn(rtline, strlen(rtline));
    free(rtline);
  }
  /* curl_slist_append copied the line: burn the copy too. */
  for (struct curl_slist *p = hdrs; p; p = p->next)
    tl_burn(p->data, strlen(p->data));
  cu->slist_free_all(hdrs);
  cu->easy_cleanup(h);
}
