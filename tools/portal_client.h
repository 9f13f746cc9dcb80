/*
 * portal_client.h - a tiny libcurl client for tl-portal's endpoints, shared by
 * the test driver (tests/driver.c) and the benchmark (tools/bench.c). Not part
 * of the library: the library's transport is src/lib/http.c.
 *
 * portal_call(base, path, body, rt): POST when body is given (GET otherwise),
 * with the refresh token in x-nous-refresh-token when rt is given; returns the
 * parsed JSON answer (new) or NULL.
 */
#ifndef TL_PORTAL_CLIENT_H
#define TL_PORTAL_CLIENT_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct portal_buf {
  char *p;
  size_t n;
} portal_buf;

static inline size_t portal_on_data(char *d, size_t sz, size_t n, void *ud)
{
  portal_buf *b = ud;
  char *np = realloc(b->p, b->n + sz * n + 1);
  if (!np)
    return 0;
  b->p = np;
  memcpy(b->p + b->n, d, sz * n);
  b->n += sz * n;
  b->p[b->n] = '\0';
  return sz * n;
}

static inline json_t *portal_call(const char *base, const char *path, const char *body, const char *rt)
{
  char url[512], hdr[600];
  snprintf(url, sizeof url, "%s%s", base, path);
  CURL *h = curl_easy_init();
  if (!h)
    return NULL;
  struct curl_slist *hl = NULL;
  if (rt) {
    snprintf(hdr, sizeof hdr, "x-nous-refresh-token: %s", rt);
    hl = curl_slist_append(hl, hdr);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
  }
  portal_buf b = {0};
  curl_easy_setopt(h, CURLOPT_URL, url);
  if (body)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, portal_on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  CURLcode rc = curl_easy_perform(h);
  curl_slist_free_all(hl);
  curl_easy_cleanup(h);
  json_t *j = rc == CURLE_OK && b.p ? json_loads(b.p, 0, NULL) : NULL;
  free(b.p);
  return j;
}

#endif
