/*
 * actor.c - who is acting, and whether another actor is still alive.
 *
 * A refresh attempt is owned by (host, boot id, pid, process start time). The
 * start time (field 22 of /proc/PID/stat) guards against pid reuse; the boot
 * id against reboots. Liveness is only decided for owners on this host and
 * boot; for any other owner the attempt's lease deadline decides.
 *
 * Also the one sleep of the library (tl__sleep_us), and the one place that defers the signals a user sends to stop a
 * process (SIGINT, SIGTERM, SIGHUP, SIGQUIT) across a critical section: between a claim and its record, and while a
 * temporary file holds tokens. A deferred signal is delivered when the section ends, so the process still stops.
 */
#include "internal.h"

#include <pthread.h>
#include <signal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void tl__sleep_us(int64_t us)
{
  if (us <= 0)
    return;
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
  while (nanosleep(&ts, &ts) != 0)
    ; /* a signal does not cut the pause short: callers poll for what they wait on */
}

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

static void stop_signals(sigset_t *set)
{
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGHUP);
  sigaddset(set, SIGQUIT);
}

void tl__signals_defer(sigset_t *old)
{
  sigset_t set;
  stop_signals(&set);
  pthread_sigmask(SIG_BLOCK, &set, old);
}

void tl__signals_restore(const sigset_t *old)
{
  pthread_sigmask(SIG_SETMASK, old, NULL);
}
