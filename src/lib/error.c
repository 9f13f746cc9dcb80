/*
 * error.c - status names and the tl_error helpers.
 *
 * Invariants: within one call the first error wins (a later failure on a
 * cleanup path never overwrites the message that explains the original one);
 * each public entry point starts with tl_error_clear(err), so a struct reused
 * across calls never shows an old failure (tests/unit/test_api.c holds every
 * entry point to this and lists those that do not clear yet); reporting OOM
 * never allocates; messages are single lines and callers never pass a secret
 * into them (tokens are named by fingerprint prefix only); a message holds no
 * control character (C0, DEL, C1, bidi controls are shown as \uXXXX, bytes
 * that are not UTF-8 as \xXX), whatever a server or a file put into it.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

void tl_error_clear(tl_error *err)
{
  if (!err)
    return;
  err->code = TL_OK;
  err->sys = 0;
  err->message[0] = '\0';
}

const char *tl_status_name(tl_status code)
{
  switch (code) {
  case TL_OK: return "ok";
  case TL_ERROR: return "error";
  case TL_EINVAL: return "invalid argument";
  case TL_ENOTFOUND: return "not found";
  case TL_EEXISTS: return "already exists";
  case TL_EREUSE: return "reuse blocked";
  case TL_EINSECURE: return "insecure file";
  case TL_ETOONEW: return "schema too new";
  case TL_EBUSY: return "busy";
  case TL_ENOMEM: return "out of memory";
  case TL_EIO: return "I/O error";
  case TL_ECORRUPT: return "not a tokenledger database";
  case TL_EREAUTH: return "needs re-authentication";
  case TL_EUNKNOWN: return "outcome unknown";
  case TL_ETRANSIENT: return "transient failure";
  case TL_EFILE: return "unreadable Hermes file";
  }
  return "unknown status";
}

/* Length of the valid UTF-8 sequence at p (1-4), 0 if invalid; *cp gets the code point. */
static size_t utf8_char(const unsigned char *p, unsigned *cp)
{
  size_t n = p[0] < 0x80 ? 1 : (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3 : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
  if (n == 0)
    return 0;
  unsigned c = n == 1 ? p[0] : n == 2 ? p[0] & 0x1Fu : n == 3 ? p[0] & 0x0Fu : p[0] & 0x07u;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    c = (c << 6) | (p[i] & 0x3Fu);
  }
  static const unsigned least[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < least[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
    return 0; /* overlong, out of range, surrogate */
  *cp = c;
  return n;
}

/* Characters a terminal acts on or that reorder what is shown: C0, DEL, C1, line separators, bidi controls. */
static int shown_escaped(unsigned c)
{
  return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x200E || c == 0x200F || (c >= 0x2028 && c <= 0x202E) ||
         (c >= 0x2066 && c <= 0x2069) || c == 0x061C || c == 0xFEFF;
}

size_t tl_text_escape(char *out, size_t n, const char *text)
{
  size_t o = 0;
  if (!out || n == 0)
    return 0;
  const unsigned char *p = (const unsigned char *)(text ? text : "");
  while (*p) {
    char esc[16];
    unsigned cp = 0;
    size_t len = utf8_char(p, &cp), w;
    if (len == 0) {
      w = (size_t)snprintf(esc, sizeof esc, "\\x%02x", p[0]); /* not UTF-8: show the byte */
      len = 1;
    } else if (shown_escaped(cp)) {
      w = (size_t)snprintf(esc, sizeof esc, "\\u%04x", cp);
    } else {
      w = len;
      memcpy(esc, p, len);
    }
    if (o + w >= n)
      break; /* never half a character or half an escape */
    memcpy(out + o, esc, w);
    o += w;
    p += len;
  }
  out[o] = '\0';
  return o;
}

tl_status tl__err(tl_error *err, tl_status code, int sys, const char *fmt, ...)
{
  if (!err || err->code != TL_OK)
    return code;
  err->code = code;
  err->sys = sys;
  char raw[sizeof err->message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(raw, sizeof raw, fmt, ap);
  va_end(ap);
  for (char *p = raw; *p; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
  /* Messages carry text from servers and files: whoever prints them gets no control character. */
  tl_text_escape(err->message, sizeof err->message, raw);
  return code;
}

tl_status tl__map_sqlite(int rc)
{
  switch (rc & 0xff) {
  case SQLITE_OK:
  case SQLITE_DONE:
  case SQLITE_ROW: return TL_OK;
  case SQLITE_BUSY:
  case SQLITE_LOCKED: return TL_EBUSY;
  case SQLITE_NOMEM: return TL_ENOMEM;
  case SQLITE_NOTADB:
  case SQLITE_CORRUPT: return TL_ECORRUPT;
  case SQLITE_IOERR:
  case SQLITE_FULL:
  case SQLITE_CANTOPEN:
  case SQLITE_READONLY: return TL_EIO;
  case SQLITE_CONSTRAINT: return TL_EINVAL;
  default: return TL_ERROR;
  }
}

tl_status tl__err_db(tl_error *err, tl_store *s, const char *what)
{
  int rc = s && s->db ? sqlite3_extended_errcode(s->db) : SQLITE_ERROR;
  const char *msg = s && s->db ? sqlite3_errmsg(s->db) : "no connection";
  tl_status code = tl__map_sqlite(rc);
  if (code == TL_OK)
    code = TL_ERROR;
  if (code == TL_EBUSY)
    return tl__err(err, code, rc, "%s: database is locked by another process (waited %d ms); try again", what,
                   s ? s->busy_ms : 0);
  return tl__err(err, code, rc, "%s: %s", what, msg);
}

tl_status tl__oom(tl_error *err)
{
  if (err && err->code == TL_OK) {
    err->code = TL_ENOMEM;
    err->sys = 0;
    memcpy(err->message, "out of memory", sizeof "out of memory");
  }
  return TL_ENOMEM;
}
