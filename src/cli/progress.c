/*
 * progress.c - a status line for long work, on a terminal only.
 *
 * While a long call runs (import, compact, a login waiting for approval,
 * keep-fresh between rounds), a thread redraws one line on standard error:
 * what is being done, the counts the library reported (tl_progress_fn), and
 * the time spent, or the time left before a deadline. It draws only when
 * standard error is a terminal (never into a log, a pipe or a file), starts
 * after half a second so that quick calls print nothing, and erases its line
 * before anything else is printed (progress_end). The thread blocks every
 * signal, so a stop signal reaches the main thread, which defers it across a
 * refresh's critical section; it would otherwise end the process there.
 */
#include "cli.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static struct {
  pthread_mutex_t lock;
  pthread_t thread;
  int running, stop, drawn;
  char what[200], stage[64];
  int64_t start, deadline, done, total;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER};

int64_t cli_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int terminal(void)
{
  const char *term = getenv("TERM");
  return isatty(STDERR_FILENO) && !(term && strcmp(term, "dumb") == 0);
}

/* Called with the lock held. */
static void draw(void)
{
  char line[400], t[32];
  int64_t now = mono_ms();
  size_t n = (size_t)snprintf(line, sizeof line, "%s", g.what);
  if (g.stage[0] && n < sizeof line)
    n += (size_t)snprintf(line + n, sizeof line - n, ": %s", g.stage);
  if (g.total > 0 && n < sizeof line)
    n += (size_t)snprintf(line + n, sizeof line - n, " %lld/%lld", (long long)g.done, (long long)g.total);
  else if (g.done > 0 && n < sizeof line)
    n += (size_t)snprintf(line + n, sizeof line - n, " %lld", (long long)g.done);
  if (g.deadline && n < sizeof line) {
    int64_t left = (g.deadline - cli_now_ms()) / 1000;
    snprintf(line + n, sizeof line - n, " (%s left)", cli_duration(t, sizeof t, left > 0 ? left : 0));
  } else if (n < sizeof line) {
    snprintf(line + n, sizeof line - n, " (%s)", cli_duration(t, sizeof t, (now - g.start) / 1000));
  }
  /* One terminal line at most: a wrapped line could not be erased. */
  struct winsize ws;
  int width = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20 ? ws.ws_col : 80;
  fprintf(stderr, "\r\033[K%.*s", width - 1, line);
  fflush(stderr);
  g.drawn = 1;
}

static void *ticker(void *arg)
{
  (void)arg;
  struct timespec tick = {0, 100 * 1000000L};
  for (int n = 0;; n++) {
    nanosleep(&tick, NULL);
    pthread_mutex_lock(&g.lock);
    if (g.stop) {
      pthread_mutex_unlock(&g.lock);
      return NULL;
    }
    if (mono_ms() - g.start >= 500 && n % 2 == 0)
      draw();
    pthread_mutex_unlock(&g.lock);
  }
}

void progress_begin(const char *what, int64_t deadline_ms)
{
  if (g.running || !terminal())
    return;
  pthread_mutex_lock(&g.lock);
  snprintf(g.what, sizeof g.what, "%s", what);
  g.stage[0] = '\0';
  g.start = mono_ms();
  g.deadline = deadline_ms;
  g.done = g.total = 0;
  g.stop = g.drawn = 0;
  pthread_mutex_unlock(&g.lock);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  if (pthread_create(&g.thread, NULL, ticker, NULL) == 0)
    g.running = 1;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void progress_count(const char *stage, int64_t done, int64_t total)
{
  if (!g.running)
    return;
  pthread_mutex_lock(&g.lock);
  snprintf(g.stage, sizeof g.stage, "%s", stage ? stage : "");
  g.done = done;
  g.total = total;
  pthread_mutex_unlock(&g.lock);
}

void progress_hook(void *ud, const char *stage, int64_t done, int64_t total)
{
  (void)ud;
  progress_count(stage, done, total);
}

void progress_end(void)
{
  if (!g.running)
    return;
  pthread_mutex_lock(&g.lock);
  g.stop = 1;
  pthread_mutex_unlock(&g.lock);
  pthread_join(g.thread, NULL);
  g.running = 0;
  if (g.drawn) {
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
  }
}
