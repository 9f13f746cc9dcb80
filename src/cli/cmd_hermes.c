/*
 * cmd_hermes.c - the commands that meet Hermes' files and run as services:
 * import, export, sync, keep-fresh, serve.
 *
 * keep-fresh in a loop is a service: it logs one concise line per round
 * (when, which round, what was refreshed, what needs attention, how many
 * files were synced) and the details only when they change; --json keeps
 * each round's whole report, one document per line. A stop signal ends it
 * with exit 0 whatever the last round found (stopping a unit must not mark it
 * failed); a configuration problem (a provider without an endpoint) is
 * reported as needing attention, never as a failure, so it cannot keep the
 * command exiting 7.
 */
#include "cli.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The report of import, export and sync: one row per place in a file. */
static const cli_col files_cols[] = {{"profile", NULL, COL_DEFAULT | COL_SHRINK},
                                     {"file", NULL, COL_DEFAULT | COL_PATH},
                                     {"path", NULL, COL_DEFAULT | COL_SHRINK | COL_EXTRA},
                                     {"provider", NULL, COL_DEFAULT | COL_OPTIONAL | COL_SHRINK},
                                     {"credential", "cred", COL_DEFAULT | COL_OPTIONAL},
                                     {"action", NULL, COL_DEFAULT | COL_STATE},
                                     {"note", NULL, COL_DEFAULT | COL_OPTIONAL | COL_TILDE | COL_WRAP},
                                     {0}};

static int finish_files(tl_store *s, tl_status rc, tl_report *r, const tl_error *err, const cli_ctx *ctx,
                        const cli_out *o)
{
  /* With a file that cannot be read, the others were synced: their table, then the bad file's error and hint. */
  int code = rc == TL_OK || r ? cli_print(r, files_cols, o, 0) : EXIT_OK;
  if (rc != TL_OK)
    code = cli_fail(ctx, err, rc);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

/* ---- import -------------------------------------------------------------------- */

/* After an import, on a terminal or not: providers whose grants wait for an endpoint. */
static void import_notes(tl_store *s, const tl_report *r)
{
  tl_report *pr = NULL;
  tl_error err = {0};
  if (tl_provider_list(&pr, s, &err) != TL_OK)
    return;
  for (size_t i = 0; i < tl_report_rows(pr); i++) {
    const char *name = tl_report_get(pr, i, "name"), *state = tl_report_get(pr, i, "refreshes");
    if (!state || strcmp(state, "not_configured") != 0)
      continue;
    int here = 0;
    for (size_t k = 0; k < tl_report_rows(r) && !here; k++) {
      const char *p = tl_report_get(r, k, "provider");
      here = p && strcmp(p, name) == 0 && tl_report_get(r, k, "credential");
    }
    if (here)
      printf("note: %s grants are kept and written back, but not refreshed until 'tokenledger provider set %s "
             "--token-url URL --client-id ID'\n",
             name, name);
  }
  tl_report_free(pr);
}

static int run_import(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  const char *path = a->pos[0], *profile = opt_str(a, "profile");
  int prc = cli_check_columns(&o, files_cols);
  if (prc >= 0)
    return prc;
  int mrc = missing_path("import", path, NULL);
  if (mrc >= 0)
    return mrc;
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0)
    return orc;
  tl_import_opts io = {.profile = profile, .all_profiles = opt_on(a, "all-profiles"), .dry_run = opt_on(a, "dry-run")};
  tl_report *r = NULL;
  tl_error err = {0};
  char what[300], buf[256];
  snprintf(what, sizeof what, "importing %s", cli_tilde(buf, sizeof buf, path));
  progress_begin(what, 0);
  tl_status rc = tl_import(&r, s, path, &io, &err);
  progress_end();
  cli_ctx ctx = {s, profile, NULL, 0};
  if (rc != TL_OK || o.json)
    return finish_files(s, rc, r, &err, &ctx, &o);
  int code = cli_print(r, files_cols, &o, 0);
  if (io.dry_run)
    printf("dry run: nothing was written\n");
  else
    import_notes(s, r);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt import_opts[] = {
    {"profile", "NAME", "the profile for a single auth.json or home (default: default)", OPT_GROUP(1)},
    {"all-profiles", NULL, "PATH is a Hermes root: the root, every profiles/<name>, and the shared store",
     OPT_GROUP(1)},
    {"dry-run", NULL, "report what would happen; write nothing", 0},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_import = {
    "import",
    run_import,
    "PATH",
    1,
    1,
    "import Hermes credentials: an auth.json, a home, or a whole root",
    "Imports Hermes credentials in one transaction: PATH is an auth.json, a Hermes home, or with --all-profiles a\n"
    "Hermes root (the root is profile 'default', each profiles/<name> its own profile, and shared/nous_auth.json\n"
    "is read too). The same grant anywhere becomes one credential; unknown keys are kept for export. A refresh\n"
    "token the ledger knows as spent refuses the whole import (exit 4). Bad input names the file, the JSON path\n"
    "and the reason (exit 2) and changes nothing. Never contacts a server. Shows its progress on a terminal.\n",
    import_opts,
    NULL};

/* ---- export and sync ---------------------------------------------------------- */

static int run_export(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  const char *profile = opt_str(a, "profile");
  int prc = cli_check_columns(&o, files_cols);
  if (prc >= 0)
    return prc;
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0)
    return orc;
  tl_report *r = NULL;
  tl_error err = {0};
  tl_status rc = tl_export(&r, s, profile, opt_str(a, "output"), opt_str(a, "shared-nous"), &err);
  cli_ctx ctx = {s, profile, NULL, 0};
  int code = finish_files(NULL, rc, r, &err, &ctx, &o);
  tl_store_free(s);
  return code;
}

static const cli_opt export_opts[] = {
    {"profile", "NAME", "the profile to write", OPT_REQUIRED},
    {"output", "FILE", "write FILE instead of the profile's own auth.json", 0},
    {"shared-nous", "DIR", "also write DIR/nous_auth.json (Hermes' shared Nous store) and keep it current", 0},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_export = {
    "export",
    run_export,
    NULL,
    0,
    0,
    "write the ledger's tokens into a profile's auth.json",
    "Writes the ledger's tokens into the profile's auth.json (or FILE) under Hermes' own lock (flock on the\n"
    "sibling auth.lock), changing only the fields tokenledger owns; temp file, fsync, rename, 0600. What Hermes\n"
    "changed is adopted first; a file elsewhere that holds a refresh token the ledger does not know is refused.\n",
    export_opts,
    NULL};

static int run_sync(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  const char *profile = opt_str(a, "profile");
  int prc = cli_check_columns(&o, files_cols);
  if (prc >= 0)
    return prc;
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0)
    return orc;
  tl_report *r = NULL;
  tl_error err = {0};
  tl_status rc = tl_sync(&r, s, profile, &err);
  cli_ctx ctx = {s, profile, NULL, 0};
  /* Homes Hermes made that no profile keeps: named, with the import command; not adopted (README: sync). */
  if (rc == TL_OK || r)
    cli_new_homes_hints(s, stderr, "note: ");
  return finish_files(s, rc, r, &err, &ctx, &o);
}

static const cli_opt sync_opts[] = {
    {"profile", "NAME", "sync this profile's files", OPT_REQUIRED | OPT_GROUP(1)},
    {"all", NULL, "sync every profile's home and every shared store", OPT_REQUIRED | OPT_GROUP(1)},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_sync = {
    "sync",
    run_sync,
    NULL,
    0,
    0,
    "adopt what Hermes changed, then write the ledger's state back",
    "Under Hermes' locks, adopts what Hermes changed (a new refresh token that replaced the ledger's is an\n"
    "external rotation; a spent one is refused and overwritten), then writes the ledger's state back in Hermes'\n"
    "shape. A file that did not change is not rewritten.\n",
    sync_opts,
    NULL};

/* ---- keep-fresh ------------------------------------------------------------------ */

static volatile sig_atomic_t stop_requested;
static void on_stop(int sig)
{
  (void)sig;
  stop_requested = 1;
}

static int64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stamp(char *buf, size_t n)
{
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The sync rows of a watch: one line each (JSON: one object each). */
static void print_changes(const tl_report *r, int json)
{
  char buf[4200];
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *action = tl_report_get(r, i, "action");
    if (!action || strcmp(action, "unchanged") == 0)
      continue;
    const char *profile = tl_report_get(r, i, "profile"), *file = tl_report_get(r, i, "file");
    const char *path = tl_report_get(r, i, "path");
    if (json) {
      char when[40];
      stamp(when, sizeof when);
      const char *keys[] = {"event", "at", "profile", "file", "path", "action"},
                 *vals[] = {"sync", when, profile, file, path, action};
      cli_print_object(6, keys, vals, NULL);
    } else {
      printf("  sync: %s %s%s%s: %s\n", profile ? profile : "-", cli_tilde(buf, sizeof buf, file ? file : "-"),
             path && strcmp(path, "$") ? " " : "", path && strcmp(path, "$") ? path : "", action);
    }
  }
}

/* Sleeps until the next round; with watch, syncs each file Hermes writes meanwhile, as it is written. */
static void wait_round(tl_store *s, int64_t every, int watch, int json, int64_t round)
{
  tl_watch *w = NULL;
  tl_error err = {0};
  char what[80];
  if (watch && tl_watch_open(&w, s, &err) != TL_OK) {
    fprintf(stderr, "tokenledger keep-fresh: %s; polling every %lld s instead\n", err.message, (long long)every);
    w = NULL;
  }
  snprintf(what, sizeof what, "round %lld done; next round%s", (long long)round, w ? " (watching Hermes' files)" : "");
  int64_t end = mono_ms() + every * 1000;
  progress_begin(what, cli_now_ms() + every * 1000);
  while (!stop_requested && mono_ms() < end) {
    int64_t left = end - mono_ms();
    int slice = left > 100 ? 100 : left < 1 ? 1 : (int)left;
    if (!w) {
      usleep((useconds_t)slice * 1000);
      continue;
    }
    int changed = 0;
    tl_error werr = {0};
    if (tl_watch_wait(w, slice, &changed, &werr) != TL_OK || !changed)
      continue;
    tl_report *r = NULL;
    tl_error serr = {0};
    tl_status rc = tl_watch_sync(&r, w, s, &serr);
    progress_end();
    if (rc != TL_OK)
      tl_cli_fail(&serr, rc);
    else
      print_changes(r, json);
    fflush(stdout);
    tl_report_free(r);
    progress_begin(what, cli_now_ms() + (end - mono_ms()));
  }
  progress_end();
  tl_watch_free(w);
}

static const cli_col fresh_cols[] = {{"credential", "cred", COL_DEFAULT},
                                     {"provider", NULL, COL_DEFAULT},
                                     {"action", NULL, COL_DEFAULT | COL_STATE},
                                     {"expires", NULL, COL_DEFAULT | COL_TIME | COL_OPTIONAL},
                                     {"detail", NULL, COL_DEFAULT | COL_OPTIONAL | COL_TILDE | COL_WRAP},
                                     {0}};

/* Credential ids of rows with this action, "1, 4, 7" (at most a line's worth). */
static int ids_of(char *buf, size_t n, const tl_report *r, const char *action)
{
  size_t len = 0;
  int count = 0;
  if (n)
    buf[0] = '\0';
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action"), *cred = tl_report_get(r, i, "credential");
    if (!a || strcmp(a, action) != 0)
      continue;
    if (count++ < 12 && len < n)
      len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? ", " : "", cred ? cred : "-");
    else if (count == 13 && len < n)
      len += (size_t)snprintf(buf + len, n - len, ", ...");
  }
  return count;
}

/* What needs the user in a round: the rows, as one text, to see whether it changed since the last round. */
static char *attention_of(const tl_report *r)
{
  size_t cap = 256, len = 0;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  out[0] = '\0';
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action");
    if (!a || (strcmp(a, "attention") != 0 && strcmp(a, "failed") != 0 && strcmp(a, "waiting") != 0 &&
               strcmp(a, "sync:unreadable") != 0))
      continue;
    const char *cred = tl_report_get(r, i, "credential"), *p = tl_report_get(r, i, "provider"),
               *d = tl_report_get(r, i, "detail");
    size_t need = strlen(a) + (cred ? strlen(cred) : 1) + (p ? strlen(p) : 1) + (d ? strlen(d) : 0) + 64;
    if (len + need >= cap) {
      cap = (len + need) * 2;
      char *nv = realloc(out, cap);
      if (!nv) {
        free(out);
        return NULL;
      }
      out = nv;
    }
    /* "waiting" details count seconds down; only the fact of waiting is news */
    len += (size_t)snprintf(out + len, cap - len, "  credential %s (%s): %s%s%s\n", cred ? cred : "-", p ? p : "-", a,
                            d && strcmp(a, "waiting") != 0 ? ": " : "", d && strcmp(a, "waiting") != 0 ? d : "");
  }
  return out;
}

/* The first profile that uses a credential ("" if none). */
static void first_profile(char *out, size_t n, tl_store *s, const char *cred)
{
  tl_report *r = NULL;
  tl_error err = {0};
  out[0] = '\0';
  if (tl_credential_list(&r, s, &err) != TL_OK)
    return;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *c = tl_report_get(r, i, "credential"), *f = tl_report_get(r, i, "profiles");
    if (c && f && strcmp(c, cred) == 0)
      snprintf(out, n, "%.*s", (int)strcspn(f, ","), f);
  }
  tl_report_free(r);
}

/*
 * Hints for the rows that need the user: the library says what, the tool says what to run, with the real
 * profile. Left out when the row's detail already names that very command.
 */
static void attention_hints(tl_store *s, const tl_report *r)
{
  char cmd[400], profile[80];
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action"), *d = tl_report_get(r, i, "detail");
    const char *cred = tl_report_get(r, i, "credential"), *p = tl_report_get(r, i, "provider");
    if (a && strcmp(a, "sync:unreadable") == 0 && d) {
      /* "PROFILE PATH: why": the other files were synced; moving this one aside lets sync rewrite it */
      const char *path = strchr(d, ' ');
      char file[4096], shown[4200];
      snprintf(file, sizeof file, "%.*s", path ? (int)strcspn(path + 1, " ") : 0, path ? path + 1 : "");
      size_t l = strlen(file);
      if (l && file[l - 1] == ':')
        file[l - 1] = '\0';
      cli_tilde(shown, sizeof shown, file);
      printf("    hint: move it aside and let the ledger rewrite it: 'mv %s %s.bad && tokenledger sync %s%.*s'\n",
             shown, shown, d[0] == '(' ? "--all" : "--profile ", d[0] == '(' ? 0 : (int)strcspn(d, " "), d);
      continue;
    }
    if (!a || strcmp(a, "attention") != 0 || !d || !p || !cred)
      continue;
    cmd[0] = '\0';
    if (strstr(d, "unknown outcome")) {
      char advice[700];
      printf("    hint: %s\n", cli_unknown_advice(advice, sizeof advice, s, strtoll(cred, NULL, 10)));
      continue;
    } else if (strstr(d, "login")) {
      char advice[900];
      first_profile(profile, sizeof profile, s, cred);
      cli_login_advice(advice, sizeof advice, s, strtoll(cred, NULL, 10), p, profile);
      printf("    hint: %s\n", advice);
      continue;
    } else if (strstr(d, "endpoint"))
      snprintf(cmd, sizeof cmd, "tokenledger provider set %s --token-url URL --client-id ID", p);
    if (*cmd && !strstr(d, cmd))
      printf("    hint: '%s'\n", cmd);
  }
}

/* The files a round's sync changed (the rows keep-fresh names sync:<action>). */
static void print_changes_of_round(const tl_report *r)
{
  char buf[4200];
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action"), *d = tl_report_get(r, i, "detail");
    if (a && strncmp(a, "sync:", 5) == 0 && strcmp(a, "sync:unreadable") != 0)
      printf("  sync: %s: %s\n", cli_tilde(buf, sizeof buf, d ? d : "-"), a + 5);
  }
}

/* One concise line per round, and what needs attention only when it changed. */
static void round_line(tl_store *s, const tl_report *r, int64_t round, char **last_attention)
{
  char when[40], refreshed[200], attention[200], failed[200], line[1024];
  stamp(when, sizeof when);
  int nref = ids_of(refreshed, sizeof refreshed, r, "refreshed");
  int nfresh = ids_of(line, sizeof line, r, "fresh");
  int nwait = ids_of(line, sizeof line, r, "waiting");
  int natt = ids_of(attention, sizeof attention, r, "attention");
  int nfail = ids_of(failed, sizeof failed, r, "failed");
  int nbad = ids_of(line, sizeof line, r, "sync:unreadable");
  int nsync = 0;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *a = tl_report_get(r, i, "action");
    nsync += a && strncmp(a, "sync:", 5) == 0;
  }
  size_t len = (size_t)snprintf(line, sizeof line, "%s round %lld:", when, (long long)round);
#define PART(...) (len < sizeof line ? (len += (size_t)snprintf(line + len, sizeof line - len, __VA_ARGS__)) : 0)
  if (nref)
    PART(" refreshed %d (credential %s);", nref, refreshed);
  PART(" %d fresh;", nfresh);
  if (nwait)
    PART(" %d waiting;", nwait);
  if (natt)
    PART(" %d need%s attention (credential %s);", natt, natt == 1 ? "s" : "", attention);
  if (nfail)
    PART(" %d failed (credential %s);", nfail, failed);
  if (nbad)
    PART(" %d Hermes file%s cannot be read;", nbad, nbad == 1 ? "" : "s");
  PART(" %d file change%s synced", nsync - nbad, nsync - nbad == 1 ? "" : "s");
#undef PART
  puts(line);
  char *now = attention_of(r);
  if (now && (!*last_attention || strcmp(now, *last_attention) != 0)) {
    if (*now) {
      fputs(now, stdout);
      attention_hints(s, r);
    } else if (*last_attention && **last_attention) {
      printf("  nothing needs attention any more\n");
    }
  }
  if (now) {
    free(*last_attention);
    *last_attention = now;
  }
  print_changes_of_round(r);
}

/* Homes Hermes made that no profile keeps, in a service's log: when the list changes, not every round. */
static void new_homes_news(tl_store *s, char **last)
{
  char *text = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&text, &len);
  if (!m)
    return;
  cli_new_homes_hints(s, m, "  note: ");
  fclose(m);
  if (text && (!*last || strcmp(text, *last) != 0)) {
    fputs(text, stdout);
    free(*last);
    *last = text;
  } else {
    free(text);
  }
}

static int run_keep_fresh(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  const char *interval = opt_str(a, "interval"), *ahead = opt_str(a, "ahead"), *count = opt_str(a, "count");
  int64_t every = 60, before = 600, rounds = 0;
  int prc, watch = opt_on(a, "watch"), nosync = opt_on(a, "no-sync");
  if ((interval && (prc = parse_int64(&every, interval, "--interval")) >= 0) ||
      (ahead && (prc = parse_int64(&before, ahead, "--ahead")) >= 0) ||
      (count && (prc = parse_int64(&rounds, count, "--count")) >= 0) || (prc = cli_check_columns(&o, fresh_cols)) >= 0)
    return prc;
  if (every < 1 || every > 86400 || before > 86400)
    return usage_error("%s", "--interval is 1-86400 seconds and --ahead at most 86400");
  if (count && rounds < 1)
    return usage_error("%s", "--count is at least 1");
  if (opt_on(a, "once"))
    rounds = 1;
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  int code = EXIT_OK, table = opt_on(a, "once");
  char *last_attention = NULL, *last_homes = NULL;
  for (int64_t round = 1; !stop_requested && (rounds == 0 || round <= rounds); round++) {
    if (round > 1)
      wait_round(s, every, watch, o.json, round - 1);
    if (stop_requested)
      break;
    tl_report *r = NULL;
    tl_error err = {0};
    int failures = 0;
    progress_begin(table ? "refreshing what is due" : "keep-fresh round", 0);
    tl_status rc = tl_keep_fresh(&r, &failures, s, before * 1000, !nosync, &err);
    progress_end();
    if (rc != TL_OK) {
      cli_ctx ctx = {s, NULL, NULL, 0};
      code = cli_fail(&ctx, &err, rc);
      if (rc != TL_EBUSY && rc != TL_ETRANSIENT)
        break;
      continue;
    }
    if (o.json || table) {
      cli_print(r, fresh_cols, &o, 0);
      if (table && !o.json)
        attention_hints(s, r);
      if (table)
        cli_new_homes_hints(s, stderr, "note: ");
    } else {
      round_line(s, r, round, &last_attention);
      new_homes_news(s, &last_homes);
    }
    fflush(stdout);
    /* A file that cannot be read stays so until someone moves it: not transient. */
    code = ids_of(NULL, 0, r, "sync:unreadable") ? EXIT_BADFILE : failures ? EXIT_TRANSIENT : EXIT_OK;
    tl_report_free(r);
  }
  free(last_attention);
  free(last_homes);
  tl_store_free(s);
  /* Stopped by a signal: the service did its job; the unit must not be marked failed. */
  return stop_requested ? EXIT_OK : code;
}

static const cli_opt keep_fresh_opts[] = {
    {"interval", "SECONDS", "time between rounds (default 60, 1-86400)", 0},
    {"ahead", "SECONDS", "refresh what expires within this (default 600, at most 86400)", 0},
    {"once", NULL, "one round, printed as a table (for cron)", OPT_GROUP(1)},
    {"count", "N", "N rounds, then exit", OPT_GROUP(1)},
    {"no-sync", NULL, "refresh only; leave Hermes' files alone", OPT_GROUP(2)},
    {"watch", NULL, "also sync each auth.json or nous_auth.json as soon as Hermes writes it (inotify)", OPT_GROUP(2)},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_keep_fresh = {
    "keep-fresh",
    run_keep_fresh,
    NULL,
    0,
    0,
    "refresh every grant ahead of expiry and keep Hermes' files in step",
    "Refreshes every credential whose access token expires within --ahead and then syncs every profile's\n"
    "auth.json and shared store, every --interval until SIGTERM/SIGINT (exit 0). Every refresh first adopts what\n"
    "Hermes' files hold, under Hermes' locks. --watch also syncs as soon as Hermes writes a file, so a rotation in\n"
    "one profile reaches its siblings and the shared store at once. Credentials with an unknown outcome, needing a\n"
    "login or without an endpoint are reported for attention, never presented, and are not failures.\n"
    "In a loop it logs one line per round (refreshed, fresh, waiting, needing attention, failed, file changes\n"
    "synced) and what needs attention only when that changes; on a terminal it shows when the next round is due.\n"
    "--once prints the round as a table. --json prints each round's report on one line. Exit 7 if the last round\n"
    "had a failure (an unreachable endpoint, a failed sync). The systemd user unit tokenledger-keep-fresh.service\n"
    "runs it with --watch.\n",
    keep_fresh_opts,
    NULL};

/* ---- serve --------------------------------------------------------------------- */

static void serve_ready(void *ud, const char *url)
{
  (void)ud;
  printf("tokenledger serve: listening on %s\n", url);
  fflush(stdout);
}

static void serve_log(void *ud, const char *line)
{
  if (!*(const int *)ud)
    fprintf(stderr, "tokenledger serve: %s\n", line);
}

static int serve_should_stop(void *ud)
{
  (void)ud;
  return stop_requested;
}

static const cli_col serve_cols[] = {{"running", NULL, COL_DEFAULT | COL_BOOL},
                                     {"url", NULL, COL_DEFAULT},
                                     {"pid", NULL, COL_DEFAULT},
                                     {"port_file", NULL, COL_DEFAULT | COL_PATH},
                                     {"strict_profiles", NULL, COL_DEFAULT},
                                     {"strict", NULL, COL_DEFAULT | COL_SHRINK},
                                     {"last_url", NULL, COL_DEFAULT},
                                     {0}};

static int serve_status(const cli_out *o)
{
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, TL_OPEN_READONLY, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_serve_status(&r, s, &err);
  cli_ctx ctx = {s, NULL, NULL, 0};
  int code = rc == TL_OK ? cli_print(r, serve_cols, o, TL_JSON_OBJECT) : cli_fail(&ctx, &err, rc);
  if (code == EXIT_OK && strcmp(tl_report_get(r, 0, "running"), "1") != 0) {
    code = EXIT_NOTFOUND;
    if (!o->json)
      fprintf(stderr, "hint: start it with 'tokenledger serve'\n      (or as a service: 'systemctl --user start "
                      "tokenledger-serve')\n");
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static int run_serve(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  if (opt_on(a, "status"))
    return serve_status(&o);
  if (o.json)
    return usage_error("%s", "serve logs lines, not JSON: --json goes with --status");
  if (o.wide || o.columns)
    return usage_error("%s", "--wide and --columns go with --status");
  const char *interval = opt_str(a, "interval"), *ahead = opt_str(a, "ahead"), *threads = opt_str(a, "threads");
  int64_t every = 60, before = 600, nthreads = 0;
  int prc;
  if ((interval && (prc = parse_int64(&every, interval, "--interval")) >= 0) ||
      (ahead && (prc = parse_int64(&before, ahead, "--ahead")) >= 0) ||
      (threads && (prc = parse_int64(&nthreads, threads, "--threads")) >= 0))
    return prc;
  if (every < 1 || every > 86400 || before > 86400)
    return usage_error("%s", "--interval is 1-86400 seconds and --ahead at most 86400");
  if (threads && (nthreads < 1 || nthreads > 256))
    return usage_error("%s", "--threads is 1-256");
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  signal(SIGHUP, on_stop);
  signal(SIGPIPE, SIG_IGN);
  int quiet = opt_on(a, "quiet");
  tl_serve_opts so = {.listen = opt_str(a, "listen"),
                      .interval_ms = opt_on(a, "no-keep-fresh") ? -1 : every * 1000,
                      .ahead_ms = before * 1000,
                      .no_sync = opt_on(a, "no-sync"),
                      .threads = (int)nthreads,
                      .should_stop = serve_should_stop,
                      .on_ready = serve_ready,
                      .on_log = serve_log,
                      .ud = &quiet};
  tl_error err = {0};
  tl_status rc = tl_serve_run(s, &so, &err);
  cli_ctx ctx = {s, NULL, NULL, 0};
  int code = EXIT_OK;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
    if (rc == TL_EBUSY && strstr(err.message, "port"))
      fprintf(stderr, "hint: free the port, or give --listen another port (then 'tokenledger sync --all' points "
                      "the strict profiles' files at it)\n");
    else if (rc == TL_EEXISTS)
      fprintf(stderr, "hint: 'tokenledger serve --status' says where it runs\n");
  } else {
    printf("tokenledger serve: stopped\n");
  }
  tl_store_free(s);
  return code;
}

static const cli_opt serve_opts[] = {
    {"listen", "HOST:PORT", "a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT); default: the last one",
     0},
    {"interval", "SECONDS", "keep-fresh round every SECONDS (default 60)", 0},
    {"ahead", "SECONDS", "keep-fresh refreshes what expires within this (default 600)", 0},
    {"threads", "N", "most connections at once (default 64, 1-256)", 0},
    {"no-sync", NULL, "keep-fresh does not sync Hermes' files", OPT_GROUP(1)},
    {"no-keep-fresh", NULL, "answer Hermes only; no keep-fresh rounds", OPT_GROUP(1)},
    {"quiet", NULL, "no log line per request", 0},
    {"status", NULL, "say whether serve is up (exit 0) or not (exit 3), and where", 0},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_serve = {
    "serve",
    run_serve,
    NULL,
    0,
    0,
    "strict mode's loopback server for Hermes, plus keep-fresh",
    "Strict mode's server: answers Hermes' Nous Portal calls for strict profiles on a loopback port (POST\n"
    "/api/oauth/token with a surrogate refresh token; the device-code login forwarded to the real portal) and\n"
    "runs keep-fresh every --interval, until SIGTERM/SIGINT. Without --listen it binds the address it used last\n"
    "(else 127.0.0.1 on a free port). Its address goes to the 0600 port file <ledger>-serve, removed on exit.\n"
    "Refuses to start when another serve runs for the ledger (exit 12) or the port belongs to another program\n"
    "(exit 8). --json, --wide and --columns go with --status. The systemd user unit tokenledger-serve.service\n"
    "runs it.\n",
    serve_opts,
    NULL};
