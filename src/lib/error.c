/*
 * error.c - status names and the tl_error helpers.
 *
 * Invariants: within one call the first error wins (a later failure on a
 * cleanup path never overwrites the message that explains the original one);
 * each public entry point starts with tl_error_clear(err), so a struct reused
 * across calls never shows an old failure (tests/unit/test_api.c holds every
 * entry point to this and lists those that do not clear yet); reporting OOM
 * never allocates; messages are single lines and callers never pass a secret
 * into them (tokens are named by fingerprint prefix only).
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
  }
  return "unknown status";
}

tl_status tl__err(tl_error *err, tl_status code, int sys, const char *fmt, ...)
{
  if (!err || err->code != TL_OK)
    return code;
  err->code = code;
  err->sys = sys;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  for (char *p = err->message; *p; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
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
