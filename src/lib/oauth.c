/*
 * oauth.c - the OAuth 2.0 token endpoint's wire format, shared by the refresh
 * protocol (refresh.c), the device login (login.c) and strict mode's
 * forwarding (serve.c): form and JSON bodies, the POST over the store's
 * transport, the classification of every answer into one outcome (the RFC
 * 6749 error shape, OpenAI's nested {"error": {"code", "message"}}, MiniMax's
 * 200 {"status": "error"}), the access token's expiry (the earlier of
 * expires_in - MiniMax: expired_in, an epoch in ms - and the JWT's exp claim),
 * the id_token an answer carries, and the redaction of a token a server
 * echoes back.
 *
 * Invariants kept here:
 *   - Every answer is exactly one of rotated / same_rt / rejected / transient
 *     / config / not_sent / unknown; what cannot be interpreted (not JSON, a
 *     status outside 100-599, a 200 whose new refresh token is unusable, a
 *     lost response) is unknown, never a guess. A failure is not_sent only
 *     if the transport says no request byte was written.
 *   - A token taken from an answer is RFC 6749 VSCHAR or it is not taken; an
 *     answer is a JSON object without duplicate keys; every number is range
 *     checked (num.c); an access token's lifetime is never in the past and
 *     never more than ten years.
 *   - Server text (error, error_description) is cut to 512 bytes and holds no
 *     echo of any token sent or received: the token, any 8 of its characters
 *     in a row, percent-decoded or not, are replaced by '*'.
 *   - Form values are percent-encoded through http.c; a body that holds a
 *     secret is burned by its caller after the transfer.
 */
#define _GNU_SOURCE /* memmem */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- outcome classification ---------------------------------------------- */

static int contains_ci(const char *hay, const char *needle)
{
  if (!hay)
    return 0;
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return 1;
  return 0;
}

/* Terminal for the lineage: never retry, never re-present (server reference). */
static int terminal_answer(const char *error, const char *desc)
{
  static const char *const codes[] = {
      "invalid_grant",         "invalid_token",     "refresh_token_reused", "refresh_token_invalidated",
      "refresh_token_expired", "token_invalidated", "token_revoked",        "token_expired",
      "unauthorized_client"};
  static const char *const words[] = {"reuse",       "already used",          "revoked",
                                      "stale token", "invalid refresh token", "expired"};
  for (size_t i = 0; error && i < sizeof codes / sizeof *codes; i++)
    if (strcmp(error, codes[i]) == 0)
      return 1;
  for (size_t i = 0; i < sizeof words / sizeof *words; i++)
    if (contains_ci(desc, words[i]) || contains_ci(error, words[i]))
      return 1;
  return 0;
}

int tl__answer_reuse(const char *error, const char *desc)
{
  return (error && strcmp(error, "refresh_token_reused") == 0) || contains_ci(desc, "reuse") ||
         contains_ci(desc, "already used") || contains_ci(desc, "already been used") ||
         contains_ci(desc, "maximum allowed refresh token reuse");
}

/* Expiry from a JWT's exp claim, in ms; 0 if the token is not a readable JWT or exp is out of range. */
int64_t tl__jwt_exp_ms(const char *jwt)
{
  const char *a = strchr(jwt, '.');
  const char *b = a ? strchr(a + 1, '.') : NULL;
  if (!a || !b || b - a - 1 <= 0 || b - a - 1 > 8192)
    return 0;
  size_t n = (size_t)(b - a - 1);
  char *in = malloc(n + 4);
  unsigned char *outb = malloc(n + 4);
  int64_t exp = 0;
  if (!in || !outb)
    goto done;
  for (size_t i = 0; i < n; i++)
    in[i] = a[1 + i] == '-' ? '+' : a[1 + i] == '_' ? '/' : a[1 + i];
  while (n % 4)
    in[n++] = '=';
  int len = tl__b64_decode(outb, (unsigned char *)in, (int)n);
  if (len > 0) {
    while (len > 0 && outb[len - 1] == '\0')
      len--; /* base64 decoding counts padding as zero bytes */
    json_t *j = json_loadb((const char *)outb, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    json_t *e = j ? json_object_get(j, "exp") : NULL;
    int64_t secs = 0;
    if (json_is_integer(e) && !tl__num_i64(&secs, e, 1, TL_MS_MAX / 1000))
      exp = secs * 1000;
    else if (json_is_real(e) && !tl__num_f2i(&exp, json_real_value(e) * 1000.0, 1000, TL_MS_MAX))
      ;
    else
      exp = 0;
    json_decref(j);
  }
done:
  free(in);
  free(outb);
  return exp;
}

void tl__answer_clear(tl__answer *a)
{
  free(a->error);
  free(a->desc);
  tl_secret_free(a->access_token);
  tl_secret_free(a->refresh_token);
  tl_secret_free(a->id_token);
  json_decref(a->extra);
  if (a->raw) {
    tl_burn(a->raw, a->raw_len);
    free(a->raw);
  }
  memset(a, 0, sizeof *a);
}

/*
 * Redaction of a token a server echoes back, in every form we can recognise:
 * the token itself, any run of TL_ECHO_MIN or more of its characters (a
 * prefix, a suffix, a middle part), and the same after percent-decoding
 * (a form body echoed back) with or without '+' as space.
 */
#define TL_ECHO_MIN 8

/* Marks in hide[] every byte of text covered by an echo of secret in one decoding of text. */
static void mark_echoes(unsigned char *hide, const char *text, size_t tlen, const char *secret, size_t slen, int decode,
                        int plus_space)
{
  unsigned char *dec = malloc(tlen + 1);
  size_t *from = malloc((tlen + 1) * sizeof *from), *to = malloc((tlen + 1) * sizeof *to);
  if (!dec || !from || !to)
    goto done;
  size_t n = 0;
  for (size_t i = 0; i < tlen;) {
    int hi, lo;
    from[n] = i;
    if (decode && text[i] == '%' && i + 2 < tlen && (hi = tl__hexchar2int((unsigned char)text[i + 1])) >= 0 &&
        (lo = tl__hexchar2int((unsigned char)text[i + 2])) >= 0) {
      dec[n] = (unsigned char)(hi * 16 + lo);
      i += 3;
    } else {
      dec[n] = plus_space && text[i] == '+' ? ' ' : (unsigned char)text[i];
      i++;
    }
    to[n++] = i;
  }
  size_t w = slen < TL_ECHO_MIN ? slen : TL_ECHO_MIN;
  for (size_t j = 0; w > 0 && j + w <= n; j++) {
    /* The whole of a short secret, or a window of TL_ECHO_MIN characters of a long one. */
    if (memmem(secret, slen, dec + j, w))
      for (size_t k = from[j]; k < to[j + w - 1]; k++)
        hide[k] = 1;
  }
done:
  free(dec);
  free(from);
  free(to);
}

static void redact(char *text, const char *secret)
{
  size_t tlen = text ? strlen(text) : 0, slen = secret ? strlen(secret) : 0;
  if (!tlen || slen < 4)
    return;
  unsigned char *hide = calloc(tlen, 1);
  if (!hide) {
    memset(text, '*', tlen); /* cannot check: show nothing rather than an echo */
    return;
  }
  mark_echoes(hide, text, tlen, secret, slen, 0, 0);
  mark_echoes(hide, text, tlen, secret, slen, 1, 0);
  mark_echoes(hide, text, tlen, secret, slen, 1, 1);
  for (size_t i = 0; i < tlen; i++)
    if (hide[i])
      text[i] = '*';
  free(hide);
}

/* Server text (error codes and descriptions) is kept to TL_SERVER_TEXT_MAX bytes, cut on a character boundary. */
#define TL_SERVER_TEXT_MAX 512
static char *server_text(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  if (!json_is_string(v))
    return NULL;
  const char *t = json_string_value(v);
  size_t n = strlen(t); /* an embedded NUL (\u0000) ends the text */
  if (n > TL_SERVER_TEXT_MAX) {
    n = TL_SERVER_TEXT_MAX;
    while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80)
      n--; /* t is valid UTF-8 (Jansson checked): back up to a lead byte */
  }
  return strndup(t, n);
}

/* A token in an answer: absent (missing or null), usable (RFC 6749 VSCHAR), or unusable (anything else). */
enum token_field { TOKEN_ABSENT, TOKEN_USABLE, TOKEN_UNUSABLE };
static enum token_field token_field(char **out, char **raw, json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  *out = NULL;
  if (!v || json_is_null(v))
    return TOKEN_ABSENT;
  if (!json_is_string(v))
    return TOKEN_UNUSABLE;
  const char *t = json_string_value(v);
  size_t n = json_string_length(v);
  if (raw && n >= 4 && strlen(t) == n)
    *raw = strdup(t); /* only to scrub an echo of it from the server's text */
  if (strlen(t) != n || !tl__token_valid(t, n))
    return TOKEN_UNUSABLE;
  return (*out = strdup(t)) ? TOKEN_USABLE : TOKEN_UNUSABLE;
}

/* Longest access-token lifetime taken from a server; a longer one is not believed. */
#define TL_LIFETIME_MAX_S (10LL * 365 * 86400)

/* A lifetime in seconds in [1, ten years] as an expiry in ms from now; 0 if v is not one. */
static int64_t lifetime_at(const json_t *v, int64_t now)
{
  int64_t secs = 0;
  if (json_is_integer(v) && !tl__num_i64(&secs, v, 1, TL_LIFETIME_MAX_S))
    return now + secs * 1000;
  if (json_is_real(v) && !tl__num_f2i(&secs, json_real_value(v), 1, TL_LIFETIME_MAX_S))
    return now + secs * 1000;
  return 0;
}

/* MiniMax's expired_in: an absolute epoch in ms in practice, a lifetime in seconds in older answers (Hermes
 * tells them apart the same way: more than half of now in ms is a time). 0 if neither. */
static int64_t minimax_expired_in(const json_t *v, int64_t now)
{
  int64_t ms = 0;
  if (!json_is_number(v))
    return 0;
  if (json_number_value(v) > (double)now / 2)
    return tl__num_f2i(&ms, json_number_value(v), now + 1, now + TL_LIFETIME_MAX_S * 1000) ? 0 : ms;
  return lifetime_at(v, now);
}

/*
 * When the access token expires: the earlier of expires_in (seconds in
 * [1, ten years]; MiniMax's expired_in, see above) and the JWT exp claim if
 * it lies ahead (Codex's tokens say their expiry there); else
 * TL_LIFETIME_ASSUMED_S from now, flagged. Never in the past from the
 * server's say-so, never an overflow, never "unknown" (that would refresh on
 * every call).
 */
static void answer_expiry(tl__answer *a, json_t *j, int64_t now)
{
  int64_t at = lifetime_at(json_object_get(j, "expires_in"), now);
  if (!at && !json_object_get(j, "expires_in"))
    at = minimax_expired_in(json_object_get(j, "expired_in"), now);
  int64_t jwt = a->access_token ? tl__jwt_exp_ms(a->access_token) : 0;
  if (jwt > now && jwt <= now + TL_LIFETIME_MAX_S * 1000 && (!at || jwt < at))
    at = jwt;
  if (at) {
    a->expires_at = at;
    return;
  }
  a->expires_at = now + TL_LIFETIME_ASSUMED_S * 1000;
  a->expiry_assumed = 1;
}

/* Keeps the raw answer for the rescue file: the server may have issued tokens we could not use. */
static void keep_raw(tl__answer *a, const tl_http_response *r)
{
  if (r->body && r->body_len && (a->raw = malloc(r->body_len))) {
    memcpy(a->raw, r->body, r->body_len);
    a->raw_len = r->body_len;
  }
}

/* A 200: tokens were issued. Decide what can be stored, and how much of the answer must be rescued. */
static void classify_200(tl__answer *a, const tl_http_response *r, json_t *j, const char *sent_rt, char **raw_at,
                         char **raw_rt)
{
  if (!j) {
    a->kind = TL__A_UNKNOWN; /* the server may have rotated the RT, but we cannot read the answer */
    a->desc = strdup("200 answer that is not a JSON object without duplicate keys");
    keep_raw(a, r);
    return;
  }
  enum token_field at = token_field(&a->access_token, raw_at, j, "access_token");
  enum token_field rt = token_field(&a->refresh_token, raw_rt, j, "refresh_token");
  json_t *status = json_object_get(j, "status");
  if (at == TOKEN_ABSENT && rt == TOKEN_ABSENT && json_is_string(status) &&
      strcmp(json_string_value(status), "error") == 0) {
    /* MiniMax refuses a refresh with a 200 {"status": "error"}: no token issued, and Hermes takes it as final. */
    a->kind = TL__A_REJECTED;
    a->error = strdup("status_error");
    a->desc = server_text(json_object_get(j, "base_resp"), "status_msg");
    if (!a->desc)
      a->desc = strdup("200 answer with \"status\": \"error\" and no token");
    return;
  }
  if (rt == TOKEN_UNUSABLE) {
    /* Rotated, but the new RT cannot be stored or sent: never guess. The raw answer goes to the rescue file. */
    a->kind = TL__A_UNKNOWN;
    a->desc = strdup("200 answer whose new refresh token is not usable (not 1-16384 bytes of printable ASCII)");
    keep_raw(a, r);
    return;
  }
  if (rt == TOKEN_ABSENT && at != TOKEN_USABLE) {
    a->kind = TL__A_UNKNOWN;
    a->desc = strdup(at == TOKEN_ABSENT ? "200 answer without access_token"
                                        : "200 answer whose access token is not printable ASCII");
    keep_raw(a, r);
    return;
  }
  a->kind = rt == TOKEN_USABLE && strcmp(a->refresh_token, sent_rt ? sent_rt : "") != 0 ? TL__A_ROTATED : TL__A_SAME_RT;
  a->at_unusable = at != TOKEN_USABLE;
  if (token_field(&a->id_token, NULL, j, "id_token") != TOKEN_USABLE) {
    tl_secret_free(a->id_token); /* an id_token is kept if usable; without one the grant is no less good */
    a->id_token = NULL;
  }
  answer_expiry(a, j, tl__now_ms());
  a->extra = tl__answer_extra(j);
}

json_t *tl__answer_extra(const json_t *src)
{
  static const char *const keep[] = {"token_type", "inference_base_url", "scope"};
  json_t *extra = json_object();
  for (size_t i = 0; extra && i < sizeof keep / sizeof *keep; i++) {
    json_t *v = json_object_get(src, keep[i]);
    if (json_is_string(v) && json_string_length(v) <= 2048 &&
        tl__token_valid(json_string_value(v), json_string_length(v)))
      json_object_set(extra, keep[i], v);
  }
  return extra;
}

void tl__answer_parse(tl__answer *a, const tl_http_response *r, const char *sent_rt)
{
  char *raw_at = NULL, *raw_rt = NULL;
  memset(a, 0, sizeof *a);
  a->retry_after = r->retry_after < 0 ? -1 : r->retry_after > 86400 ? 86400 : r->retry_after;
  a->status = r->status;
  if (r->failure == TL_HTTP_NOT_SENT || r->failure == TL_HTTP_LOST) {
    a->kind = r->failure == TL_HTTP_NOT_SENT ? TL__A_NOT_SENT : TL__A_UNKNOWN;
    a->desc = strndup(r->detail, strnlen(r->detail, sizeof r->detail));
    goto scrub;
  }
  if (r->status < 100 || r->status > 599) {
    a->kind = TL__A_UNKNOWN; /* not HTTP as we know it: the server did something we cannot interpret */
    char d[64];
    snprintf(d, sizeof d, "unexpected HTTP status %ld", r->status);
    a->desc = strdup(d);
    a->status = 0;
    goto scrub;
  }
  /* Integers are read as doubles: an absurd expires_in (99999999999999999999) must not make a whole answer with
   * usable tokens unreadable; every number is range checked where it is used. */
  json_t *j = r->body && r->body_len
                  ? json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL)
                  : NULL;
  if (j && !json_is_object(j)) {
    json_decref(j);
    j = NULL;
  }
  if (j) {
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) {
      /* OpenAI: {"error": {"message", "type", "param", "code"}}; the code says what happened, else the type. */
      a->error = server_text(e, "code");
      if (!a->error)
        a->error = server_text(e, "type");
      a->desc = server_text(e, "message");
    } else {
      a->error = server_text(j, "error");
      a->desc = server_text(j, "error_description");
      if (!a->desc)
        a->desc = server_text(j, "message");
    }
    if (!a->error)
      a->error = server_text(j, "code"); /* a top-level code, as the Codex CLI also reads it */
    if (!a->desc)
      a->desc = server_text(json_object_get(j, "base_resp"), "status_msg"); /* MiniMax */
  }
  if (r->status == 200) {
    free(a->error); /* a 200 is judged by its tokens, not by what else it says */
    free(a->desc);
    a->error = a->desc = NULL;
    classify_200(a, r, j, sent_rt, &raw_at, &raw_rt);
    if (a->kind == TL__A_REJECTED)
      goto done; /* a refusal carried by a 200 (MiniMax); the rest is about issued tokens */
  } else if (r->status == 429 || r->status >= 500 || (a->error && strcmp(a->error, "temporarily_unavailable") == 0)) {
    a->kind = TL__A_TRANSIENT;
  } else if (r->status >= 400 && r->status < 500 && terminal_answer(a->error, a->desc)) {
    a->kind = TL__A_REJECTED;
  } else if (r->status >= 400 && r->status < 500) {
    a->kind = TL__A_CONFIG; /* invalid_client, invalid_request...: no tokens issued */
  } else {
    /* 1xx/3xx/other 2xx: the server did something we cannot interpret. */
    a->kind = TL__A_UNKNOWN;
    if (!a->desc) {
      char d[64];
      snprintf(d, sizeof d, "unexpected HTTP status %ld", r->status);
      a->desc = strdup(d);
    }
  }
done:
  json_decref(j);
scrub:
  /* What a server says never carries a token into our records or messages. */
  {
    const char *secrets[] = {sent_rt, a->refresh_token, a->access_token, a->id_token, raw_rt, raw_at};
    for (size_t i = 0; i < sizeof secrets / sizeof *secrets; i++) {
      redact(a->error, secrets[i]);
      redact(a->desc, secrets[i]);
    }
  }
  tl_secret_free(raw_at);
  tl_secret_free(raw_rt);
}

/* ---- form bodies and the POST ------------------------------------------------ */

char *tl__oauth_form(size_t n, const char *const *keys, const char *const *vals)
{
  char *esc[8] = {0};
  char *body = NULL;
  size_t len = 1;
  if (n > sizeof esc / sizeof *esc)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    if (!vals[i])
      continue;
    if (!(esc[i] = tl__url_escape(vals[i])))
      goto done;
    len += strlen(keys[i]) + strlen(esc[i]) + 2;
  }
  if (!(body = malloc(len)))
    goto done;
  size_t at = 0;
  for (size_t i = 0; i < n; i++)
    if (esc[i])
      at += (size_t)snprintf(body + at, len - at, "%s%s=%s", at ? "&" : "", keys[i], esc[i]);
  body[at] = '\0';
done:
  for (size_t i = 0; i < n; i++)
    if (esc[i]) {
      tl_burn(esc[i], strlen(esc[i])); /* a value may be a token or a device code */
      free(esc[i]);
    }
  return body;
}

char *tl__oauth_json(size_t n, const char *const *keys, const char *const *vals)
{
  size_t len = 3;
  for (size_t i = 0; i < n; i++)
    if (vals[i])
      len += strlen(keys[i]) + 6 * strlen(vals[i]) + 6; /* "k":"v", with every byte escaped at worst */
  char *body = malloc(len), *o = body;
  if (!body)
    return NULL;
  *o++ = '{';
  for (size_t i = 0; i < n; i++) {
    if (!vals[i])
      continue;
    if (o > body + 1)
      *o++ = ',';
    for (int part = 0; part < 2; part++) {
      const unsigned char *v = (const unsigned char *)(part ? vals[i] : keys[i]);
      *o++ = '"';
      for (; *v; v++) {
        if (*v == '"' || *v == '\\') {
          *o++ = '\\';
          *o++ = (char)*v;
        } else if (*v < 0x20 || *v == 0x7f) {
          o += snprintf(o, 7, "\\u%04x", *v);
        } else {
          *o++ = (char)*v;
        }
      }
      *o++ = '"';
      if (!part)
        *o++ = ':';
    }
  }
  *o++ = '}';
  *o = '\0';
  return body;
}

void tl__oauth_post(tl_http_response *resp, tl_store *s, const tl_http_request *req)
{
  memset(resp, 0, sizeof *resp);
  resp->retry_after = -1;
  s->http(s->http_ud, req, resp);
}
