/*
 * num.c - the one checked conversion for numbers and times that come from
 * outside: Hermes files, token endpoint answers, the command line.
 *
 * Invariants: no value from outside reaches a C integer through an unchecked
 * cast (a float-to-integer conversion out of range is undefined behaviour);
 * every time is milliseconds since the epoch in [0, TL_MS_MAX] (year 9999);
 * a refusal is a short constant reason that the caller puts after the file,
 * the JSON path or the option it came from.
 */
#define _XOPEN_SOURCE 700 /* strptime */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *tl__num_f2i(int64_t *out, double d, int64_t min, int64_t max)
{
  if (!isfinite(d))
    return "not a finite number";
  /* Compare as doubles first: only a value known to fit is cast. */
  if (d < (double)min || d > (double)max)
    return "out of range";
  *out = (int64_t)d;
  if (*out < min || *out > max) /* rounding at the edges of the double range */
    return "out of range";
  return NULL;
}

const char *tl__num_i64(int64_t *out, const json_t *v, int64_t min, int64_t max)
{
  if (!json_is_integer(v))
    return json_is_real(v) ? "expected a whole number" : "expected a number";
  json_int_t x = json_integer_value(v);
  if (x < min || x > max)
    return "out of range";
  *out = (int64_t)x;
  return NULL;
}

/* Epoch seconds, or milliseconds above 1e12, as Hermes reads them. */
static const char *epoch_number(int64_t *out, double num)
{
  if (!isfinite(num) || num < 0)
    return "out of range";
  if (num > 1e12)
    return tl__num_f2i(out, num, 0, TL_MS_MAX);
  return tl__num_f2i(out, num * 1000.0, 0, TL_MS_MAX);
}

static const char *iso_time(int64_t *out, const char *text)
{
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *p = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!p)
    p = strptime(text, "%Y-%m-%d %H:%M:%S", &tm);
  if (!p)
    return "neither ISO 8601 nor epoch seconds/milliseconds";
  int64_t ms = 0;
  if (*p == '.') {
    int digits = 0;
    int64_t frac = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, digits++)
      if (digits < 3)
        frac = frac * 10 + (*p - '0');
    if (digits == 0)
      return "empty fraction";
    for (int d = digits; d < 3; d++)
      frac *= 10;
    ms = frac;
  }
  long offset = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int sign = *p == '-' ? -1 : 1;
    int hh = 0, mm = 0, n = 0;
    if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 && sscanf(p + 1, "%2d%2d%n", &hh, &mm, &n) != 2)
      return "bad zone offset";
    if (hh > 23 || mm > 59)
      return "bad zone offset";
    offset = sign * (hh * 3600L + mm * 60L);
    p += 1 + n;
  }
  if (*p)
    return "unexpected text after the time";
  if (tm.tm_year < 70 - 1 || tm.tm_year > 9999 - 1900)
    return "out of range";
  time_t secs = timegm(&tm);
  if (secs == (time_t)-1 && tm.tm_year != 69)
    return "out of range";
  int64_t v = ((int64_t)secs - offset) * 1000 + ms;
  if (v < 0 || v > TL_MS_MAX)
    return "out of range";
  *out = v;
  return NULL;
}

const char *tl__num_time_text(int64_t *out, const char *text)
{
  if (!text || !*text)
    return "empty";
  char *end = NULL;
  double num = strtod(text, &end);
  if (end && end != text && *end == '\0')
    return epoch_number(out, num);
  return iso_time(out, text);
}

const char *tl__num_time(int64_t *out, const json_t *v)
{
  if (json_is_string(v))
    return tl__num_time_text(out, json_string_value(v));
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    if (x < 0)
      return "out of range";
    if (x > 1000000000000LL)
      return x <= TL_MS_MAX ? (*out = (int64_t)x, NULL) : "out of range";
    *out = (int64_t)x * 1000;
    return NULL;
  }
  if (json_is_real(v))
    return epoch_number(out, json_real_value(v));
  return "expected a time (ISO 8601 text or epoch seconds/milliseconds)";
}

tl_status tl_time_parse(int64_t *out, const char *text, tl_error *err)
{
  tl_error_clear(err);
  if (!out || !text || !*text)
    return tl__err(err, TL_EINVAL, 0, "time: empty");
  const char *why = tl__num_time_text(out, text);
  if (why)
    return tl__err(err, TL_EINVAL, 0, "time '%.40s': %s", text, why);
  return TL_OK;
}
