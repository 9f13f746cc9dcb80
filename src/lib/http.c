/*
 * http.c - the token endpoint transport: one form-encoded POST with libcurl.
 *
 * This is the only file that talks to libcurl's transfer API. It sits behind
 * the tl_http_fn seam so tests and benchmarks can substitute canned answers.
 *
 * Invariants:
 *   - TLS peer and host verification are always on; the only knob is a CA
 *     bundle (TOKENLEDGER_CA_BUNDLE, else SSL_CERT_FILE), never "insecure".
 *   - Redirects are never followed, so no credential can travel to another
 *     host; a 3xx is just a status the caller classifies.
 *   - Only http and https are allowed (http only reaches here for loopback
 *     URLs, which tl_url_check enforced when the URL was stored).
 *   - The response body is capped at 1 MiB.
 *   - A failure is NOT_SENT only if curl reports that no request byte was
 *     written; anything else that fails is LOST (the RT may have arrived).
 *   - The header line that carries an RT is burned after the transfer.
 */
#include "internal.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TL_RESPONSE_MAX (1024 * 1024)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

typedef struct sink {
  char *buf;
  size_t len, cap;
  int overflow;
} sink;

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

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
  tl_http_response *resp = ud;
  size_t len = size * n;
  static const char name[] = "retry-after:";
  if (len > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
    char tmp[64];
    size_t l = len - (sizeof name - 1);
    if (l >= sizeof tmp)
      l = sizeof tmp - 1;
    memcpy(tmp, data + sizeof name - 1, l);
    tmp[l] = '\0';
    char *end = NULL;
    long v = strtol(tmp, &end, 10);
    if (end != tmp && v >= 0)
      resp->retry_after = v;
    else {
      time_t t = curl_getdate(tmp, NULL); /* HTTP-date form */
      if (t > 0) {
        long d = (long)(t - (time_t)(tl__now_ms() / 1000));
        resp->retry_after = d > 0 ? d : 0;
      }
    }
  }
  return len;
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
  CURL *h = NULL;
  struct curl_slist *hdrs = NULL;
  char *rtline = NULL;
  sink k = {0};
  pthread_once(&curl_once, curl_init_once);
  resp->failure = TL_HTTP_NOT_SENT;
  resp->status = 0;
  resp->retry_after = -1;
  h = curl_easy_init();
  if (!h) {
    snprintf(resp->detail, sizeof resp->detail, "cannot initialise libcurl");
    return 0;
  }
  hdrs = curl_slist_append(hdrs, "Accept: application/json");
  hdrs = curl_slist_append(hdrs, "Content-Type: application/x-www-form-urlencoded");
  if (req->rt_header && req->rt_value) {
    size_t n = strlen(req->rt_header) + strlen(req->rt_value) + 3;
    rtline = malloc(n);
    if (rtline) {
      snprintf(rtline, n, "%s: %s", req->rt_header, req->rt_value);
      hdrs = curl_slist_append(hdrs, rtline);
    }
  }
  if (!hdrs || (req->rt_header && !rtline)) {
    snprintf(resp->detail, sizeof resp->detail, "out of memory building the request");
    goto done;
  }
  const char *ca = getenv("TOKENLEDGER_CA_BUNDLE");
  if (!ca || !*ca)
    ca = getenv("SSL_CERT_FILE");
  curl_easy_setopt(h, CURLOPT_URL, req->url);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "tokenledger/" TL_VERSION);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
  if (ca && *ca)
    curl_easy_setopt(h, CURLOPT_CAINFO, ca);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 5000L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 15000L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &k);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);

  CURLcode cc = curl_easy_perform(h);
  long sent = 0;
  curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
  if (cc == CURLE_OK) {
    resp->failure = TL_HTTP_DONE;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    resp->body = k.buf;
    resp->body_len = k.len;
    k.buf = NULL;
  } else {
    resp->failure = sent > 0 ? TL_HTTP_LOST : TL_HTTP_NOT_SENT;
    snprintf(resp->detail, sizeof resp->detail, "%s%s", k.overflow ? "response larger than 1 MiB; " : "",
             curl_easy_strerror(cc));
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
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return 0;
}
