/*
 * actor.c - who is acting, and whether another actor is still alive.
 *
 * A refresh attempt is owned by (host, boot id, pid, process start time). The
 * start time (field 22 of /proc/PID/stat) guards against pid reuse; the boot
 * id against reboots. Liveness is only decided for owners on this host and
 * boot; for any other owner the attempt's lease deadline decides.
 */
#define _XOPEN_SOURCE 700 /* strptime */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t tl__now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Start time of pid in clock ticks since boot, or -1 if there is no such process. */
static long long proc_start(long pid)
{
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* The command name (field 2) may hold spaces and parentheses: skip to the last ')'. */
  char *p = strrchr(buf, ')');
  if (!p)
    return -1;
  p++;
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p + 1, ' ');
  }
  if (!p)
    return -1;
  return strtoll(p + 1, NULL, 10);
}

void tl__actor_init(tl__actor *a)
{
  memset(a, 0, sizeof *a);
  if (gethostname(a->host, sizeof a->host - 1) != 0)
    strcpy(a->host, "unknown");
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
  if (f) {
    if (!fgets(a->boot, sizeof a->boot, f))
      a->boot[0] = '\0';
    fclose(f);
    a->boot[strcspn(a->boot, "\n")] = '\0';
  }
  if (!a->boot[0])
    strcpy(a->boot, "unknown");
  a->pid = (long)getpid();
  a->start = proc_start(a->pid);
}

void tl__actor_clear(tl__actor *a)
{
  free(a->profile);
  free(a->command);
  a->profile = a->command = NULL;
}

int tl__owner_alive(const tl__actor *self, const char *host, const char *boot, long pid, long long start)
{
  if (!host || !boot || strcmp(host, self->host) != 0)
    return -1;
  if (strcmp(boot, self->boot) != 0)
    return 0; /* this host rebooted since: the owner is gone */
  long long now = proc_start(pid);
  if (now < 0)
    return 0;
  return now == start ? 1 : 0;
}

tl_status tl_time_parse(int64_t *out, const char *text, tl_error *err)
{
  if (!out || !text || !*text)
    return tl__err(err, TL_EINVAL, 0, "time: empty");
  char *end = NULL;
  double num = strtod(text, &end);
  if (end && end != text && *end == '\0') {
    if (num < 0 || num > 1e16)
      return tl__err(err, TL_EINVAL, 0, "time '%.40s' is out of range", text);
    *out = num > 1e12 ? (int64_t)num : (int64_t)(num * 1000.0);
    return TL_OK;
  }
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *p = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!p)
    p = strptime(text, "%Y-%m-%d %H:%M:%S", &tm);
  if (!p)
    return tl__err(err, TL_EINVAL, 0, "time '%.40s' is neither ISO 8601 nor epoch seconds/milliseconds", text);
  int64_t ms = 0;
  if (*p == '.') {
    int digits = 0;
    int64_t frac = 0;
    for (p++; *p >= '0' && *p <= '9'; p++, digits++)
      if (digits < 3)
        frac = frac * 10 + (*p - '0');
    if (digits == 0)
      return tl__err(err, TL_EINVAL, 0, "time '%.40s': empty fraction", text);
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
      return tl__err(err, TL_EINVAL, 0, "time '%.40s': bad zone offset", text);
    offset = sign * (hh * 3600L + mm * 60L);
    p += 1 + n;
  }
  if (*p)
    return tl__err(err, TL_EINVAL, 0, "time '%.40s': unexpected text after the time", text);
  time_t secs = timegm(&tm);
  if (secs == (time_t)-1)
    return tl__err(err, TL_EINVAL, 0, "time '%.40s' is out of range", text);
  *out = ((int64_t)secs - offset) * 1000 + ms;
  return TL_OK;
}
