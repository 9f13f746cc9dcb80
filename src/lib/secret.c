/*
 * secret.c - handling of secret bytes: burning, reading, fingerprinting.
 *
 * Invariants: every buffer that held a token is overwritten with
 * explicit_bzero before it is freed; a secret is read only from a file or
 * standard input, never from argv; the fingerprint of an RT is the lowercase
 * hex SHA-256 of its exact bytes and is the only form in which an RT is ever
 * named in messages, audit rows and views.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TL_SECRET_MAX (16 * 1024)

void tl_burn(void *p, size_t n)
{
  if (p && n)
    explicit_bzero(p, n);
}

void tl_secret_free(char *s)
{
  if (!s)
    return;
  tl_burn(s, strlen(s));
  free(s);
}

int tl__token_valid(const char *s, size_t len)
{
  if (!s || len == 0 || len > TL_TOKEN_MAX || s[0] == ' ' || s[len - 1] == ' ')
    return 0;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
      return 0;
  return 1;
}

void tl_fingerprint(char out[65], const char *data, size_t len)
{
  unsigned char md[32];
  static const char hex[] = "0123456789abcdef";
  if (tl__sha256(md, data, len) != 1) {
    /* Cannot happen with a working libcrypto; produce an impossible value the
     * schema's CHECK rejects rather than a wrong fingerprint. */
    memset(out, 'x', 64);
    out[64] = '\0';
    return;
  }
  for (unsigned i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
  tl_burn(md, sizeof md);
}

tl_status tl_secret_read(char **out, const char *path, tl_error *err)
{
  tl_error_clear(err);
  tl_status rc = TL_OK;
  char *buf = NULL;
  size_t len = 0;
  int fd = -1;
  const char *name = path && strcmp(path, "-") ? path : "standard input";

  if (!out || !path)
    return tl__err(err, TL_EINVAL, 0, "secret: no path given");
  *out = NULL;
  if (strcmp(path, "-") == 0) {
    fd = STDIN_FILENO;
  } else {
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      int e = errno;
      return tl__err(err, e == ENOENT ? TL_ENOTFOUND : TL_EIO, e, "%s: cannot open: %s", name, strerror(e));
    }
  }
  buf = malloc(TL_SECRET_MAX + 1);
  if (!buf) {
    rc = tl__oom(err);
    goto done;
  }
  for (;;) {
    ssize_t n = read(fd, buf + len, TL_SECRET_MAX + 1 - len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int e = errno;
      rc = tl__err(err, TL_EIO, e, "%s: read failed: %s", name, strerror(e));
      goto done;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len > TL_SECRET_MAX) {
      rc = tl__err(err, TL_EINVAL, 0, "%s: more than %d bytes; a token is expected", name, TL_SECRET_MAX);
      goto done;
    }
  }
  if (memchr(buf, '\0', len)) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: contains a NUL byte; a token is expected", name);
    goto done;
  }
  size_t b = 0, e = len;
  while (b < e && strchr(" \t\r\n", buf[b]))
    b++;
  while (e > b && strchr(" \t\r\n", buf[e - 1]))
    e--;
  if (b == e) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: empty; a token is expected", name);
    goto done;
  }
  for (size_t i = b; i < e; i++) {
    unsigned char c = (unsigned char)buf[i];
    if (c <= 0x20 || c >= 0x7f) {
      rc = tl__err(err, TL_EINVAL, 0,
                   "%s: %s inside the token (byte %zu); a token is printable ASCII (RFC 6749 VSCHAR)", name,
                   c == 0x20 || c == '\t' ? "white space"
                   : c > 0x7f             ? "a byte that is not ASCII"
                                          : "a control character",
                   i - b + 1);
      goto done;
    }
  }
  if (!tl__token_valid(buf + b, e - b)) {
    rc = tl__err(err, TL_EINVAL, 0, "%s: not a token (1-%d bytes of printable ASCII)", name, TL_TOKEN_MAX);
    goto done;
  }
  memmove(buf, buf + b, e - b);
  tl_burn(buf + (e - b), len - (e - b));
  buf[e - b] = '\0';
  *out = buf;
  buf = NULL;
done:
  if (buf) {
    tl_burn(buf, TL_SECRET_MAX + 1);
    free(buf);
  }
  if (fd >= 0 && fd != STDIN_FILENO)
    close(fd);
  return rc;
}
