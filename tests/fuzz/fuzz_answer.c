/*
 * fuzz_answer.c - libFuzzer target for the token endpoint's answer parser and
 * its classification (tl__answer_parse), the code every refresh and device
 * login runs on what a server sends back.
 *
 * Input: byte 0 picks the HTTP status ('0'-'9': 200, 400, 401, 429, 500, 503,
 * 302, 204, 0, 999), byte 1 how the transfer ended ('d' done, 'n' not sent,
 * 'l' lost), bytes 2-17 a Retry-After header value up to the first newline,
 * the rest the body. Besides crashes and sanitizer reports, the target checks
 * the parser's promises: tokens are RFC 6749 VSCHAR, a rotation carries a new
 * RT, an expiry is ahead and within ten years, Retry-After is at most a day,
 * server text is bounded and holds no run of 8 characters of the RT that was
 * sent, and escaped text holds no control character. Seeds: tests/fuzz/answer/
 * (Nous, and the shapes of Codex - OpenAI's nested error, id_token, expiry
 * from the JWT -, Anthropic, xAI and MiniMax - expired_in, 200 "status").
 */
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char sent_rt[] = "rt-fuzz-Sent/Token+0123456789abcdef==";

static void check_text(const char *t)
{
  if (!t)
    return;
  if (strlen(t) > 512 + 200) /* server text is cut to 512 bytes; local details are short */
    abort();
  for (size_t i = 0; i + 8 <= sizeof sent_rt - 1; i++) /* no run of 8 characters of the RT survives */
    if (strstr(t, (char[9]){sent_rt[i], sent_rt[i + 1], sent_rt[i + 2], sent_rt[i + 3], sent_rt[i + 4], sent_rt[i + 5],
                            sent_rt[i + 6], sent_rt[i + 7], 0}))
      abort();
  char shown[6 * 1024 + 1];
  tl_text_escape(shown, sizeof shown, t);
  for (const unsigned char *p = (const unsigned char *)shown; *p; p++)
    if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
      abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const long statuses[] = {200, 400, 401, 429, 500, 503, 302, 204, 0, 999};
  if (size < 2)
    return 0;
  tl_http_response r;
  memset(&r, 0, sizeof r);
  r.status = data[0] >= '0' && data[0] <= '9' ? statuses[data[0] - '0'] : (long)data[0] * 3;
  r.failure = data[1] == 'n' ? TL_HTTP_NOT_SENT : data[1] == 'l' ? TL_HTTP_LOST : TL_HTTP_DONE;
  snprintf(r.detail, sizeof r.detail, "fuzz");
  size_t off = 2;
  char ra[17] = "";
  size_t k = 0;
  while (off < size && k < 16 && data[off] != '\n')
    ra[k++] = data[off] ? (char)data[off] : ' ', off++;
  if (off < size && data[off] == '\n')
    off++;
  int64_t now = tl__now_ms();
  r.retry_after = k ? tl__retry_after(ra, now) : -1;
  if (r.retry_after < -1 || r.retry_after > 86400)
    abort();
  if (size > off) {
    r.body = malloc(size - off);
    memcpy(r.body, data + off, size - off);
    r.body_len = size - off;
  }
  tl__answer a;
  tl__answer_parse(&a, &r, sent_rt);
  if (a.access_token && !tl__token_valid(a.access_token, strlen(a.access_token)))
    abort();
  if (a.refresh_token && !tl__token_valid(a.refresh_token, strlen(a.refresh_token)))
    abort();
  if (a.id_token && (!tl__token_valid(a.id_token, strlen(a.id_token)) || r.status != 200))
    abort();
  if (a.kind == TL__A_ROTATED && (!a.refresh_token || strcmp(a.refresh_token, sent_rt) == 0))
    abort();
  if ((a.kind == TL__A_ROTATED || a.kind == TL__A_SAME_RT) &&
      (a.expires_at < now || a.expires_at > tl__now_ms() + 10LL * 366 * 86400 * 1000))
    abort();
  if ((a.kind == TL__A_ROTATED || a.kind == TL__A_SAME_RT) && r.status != 200)
    abort();
  if (a.retry_after < -1 || a.retry_after > 86400)
    abort();
  check_text(a.error);
  check_text(a.desc);
  tl__answer_clear(&a);
  tl__http_response_clear(&r);
  return 0;
}
