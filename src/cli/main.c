/*
 * main.c - the tokenledger command-line tool.
 *
 * Parses the command line, opens the ledger, calls the library, prints.
 * Invariants: secrets are never taken from argv (options that look like one
 * are refused with a pointer to the -file form); an argument longer than 24
 * characters is never echoed, whatever its place (command, option, value,
 * file name), and a short one only with control characters escaped; a secret
 * is printed only by `token`, whose job that is, and only if printable; the
 * process is not dumpable and libcurl gets no SSLKEYLOGFILE; every command
 * has --help; every read command has --json; every failure ends in
 * tl_cli_fail, which maps the library's status to the documented exit code.
 */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Printable ASCII (RFC 6749 VSCHAR): what a token may hold. */
#define PRINTABLE " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"

/* ---- option parsing ------------------------------------------------------ */

typedef struct opt {
  const char *name; /* without leading dashes */
  int has_arg;
  const char **value; /* for options with an argument */
  int *flag;          /* for switches */
} opt;

typedef struct cmd cmd;
typedef int (*cmd_fn)(const cmd *c, int argc, char **argv);
struct cmd {
  const char *name;
  cmd_fn fn;
  const char *usage;
  const char *help;
};

static const char *g_db;
static const char *g_cmd = "tokenledger";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "tokenledger %s: ", g_cmd);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "; see 'tokenledger %s --help'\n", g_cmd);
  return EXIT_USAGE;
}

/* Options that would put a secret on argv (visible in ps and shell history). */
static int secret_option(const char *name)
{
  static const char *const bad[] = {"refresh-token", "access-token", "token",         "rt",
                                    "secret",        "password",     "client-secret", "api-key"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (strcmp(name, bad[i]) == 0)
      return 1;
  return 0;
}

/*
 * How an argument appears in a message. A long one may be a token typed or pasted on the command line (as a
 * command, an option, a value or a file name): it is described, never echoed, in any form; a short one is
 * shown with control characters escaped.
 */
#define SHOWN_MAX 24
typedef struct shown_arg {
  char text[160];
} shown_arg;

static const char *shown(shown_arg *buf, const char *arg)
{
  size_t n = strlen(arg);
  if (n <= SHOWN_MAX) {
    char esc[6 * SHOWN_MAX + 1];
    tl_text_escape(esc, sizeof esc, arg);
    snprintf(buf->text, sizeof buf->text, "'%s'", esc);
  } else {
    snprintf(buf->text, sizeof buf->text,
             "of %zu characters (not shown: if it is a token, it is now in your shell "
             "history; tokens are read from a file or standard input)",
             n);
  }
  return buf->text;
}

/* An argument we did not expect may be a token typed on the command line. */
static int unexpected(int index, const char *a)
{
  shown_arg b;
  (void)index;
  return usage_error("unexpected argument %s", shown(&b, a));
}

/* A path argument that names nothing: said without echoing a long one (a token pasted where a file belongs). */
static int missing_path_hint(const char *what, const char *path, const char *hint)
{
  struct stat st;
  if (strcmp(path, "-") == 0 || strlen(path) <= SHOWN_MAX || lstat(path, &st) == 0)
    return -1;
  shown_arg b;
  fprintf(stderr, "tokenledger %s: %s: no such file or directory %s%s\n", g_cmd, what, shown(&b, path), hint);
  return EXIT_NOTFOUND;
}

static int missing_path(const char *what, const char *path)
{
  return missing_path_hint(what, path, "");
}

/*
 * Parses argv (argv[0] is the command name) against opts. Positional
 * arguments are collected into pos (at most maxpos). Returns -1 on success,
 * else an exit code.
 */
static int parse(int argc, char **argv, const opt *opts, const char **pos, int maxpos, int *npos, int *help)
{
  *npos = 0;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      for (i++; i < argc; i++) {
        if (*npos >= maxpos)
          return unexpected(i, argv[i]);
        pos[(*npos)++] = argv[i];
      }
      break;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      *help = 1;
      continue;
    }
    if (a[0] != '-' || a[1] == '\0') {
      if (*npos >= maxpos)
        return unexpected(i, a);
      pos[(*npos)++] = a;
      continue;
    }
    shown_arg b;
    if (a[1] != '-')
      return usage_error("unknown option %s", shown(&b, a));
    char name[64];
    const char *eq = strchr(a + 2, '=');
    size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
    if (len >= sizeof name)
      return usage_error("unknown option %s", shown(&b, a));
    memcpy(name, a + 2, len);
    name[len] = '\0';
    const opt *o = NULL;
    for (const opt *p = opts; p && p->name; p++)
      if (strcmp(p->name, name) == 0)
        o = p;
    if (!o) {
      if (secret_option(name)) {
        fprintf(stderr,
                "tokenledger %s: --%s is refused: secrets are never taken from the command line, where ps and shell "
                "history would show them; use --%s-file FILE (or - for standard input)\n",
                g_cmd, name, strcmp(name, "rt") == 0 ? "refresh-token" : name);
        return EXIT_USAGE;
      }
      return usage_error("unknown option %s", shown(&b, a));
    }
    if (o->has_arg) {
      const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v)
        return usage_error("option %s needs a value", shown(&b, a));
      *o->value = v;
    } else {
      if (eq)
        return usage_error("option --%s takes no value", o->name);
      *o->flag = 1;
    }
  }
  return -1;
}

static int show_help(const cmd *c)
{
  printf("usage: tokenledger [--db PATH] %s\n\n%s", c->usage, c->help);
  return EXIT_OK;
}

static const char *db_path(char *buf, size_t n)
{
  if (g_db)
    return g_db;
  const char *env = getenv("TOKENLEDGER_DB");
  if (env && *env)
    return env;
  const char *home = getenv("HOME");
  if (!home || !*home)
    return NULL;
  snprintf(buf, n, "%s/.hermes/tokenledger.db", home);
  return buf;
}

static int open_store(tl_store **out, unsigned flags, const char *profile)
{
  char buf[4096];
  tl_error err = {0};
  const char *path = db_path(buf, sizeof buf);
  if (!path) {
    fprintf(stderr, "tokenledger: no database: give --db PATH or set TOKENLEDGER_DB (HOME is not set)\n");
    return EXIT_USAGE;
  }
  tl_status rc = tl_store_open(out, path, flags, &err);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store_set_actor(*out, profile, g_cmd);
  return -1;
}

static int parse_int64(int64_t *out, const char *text, const char *what)
{
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || !end || *end || end == text || v < 0) {
    shown_arg b;
    return usage_error("%s %s is not a non-negative whole number", what, shown(&b, text));
  }
  *out = v;
  return -1;
}

#define PARSE_OR_RETURN(opts, pos, maxpos)                                                                             \
  int help = 0, npos = 0;                                                                                              \
  {                                                                                                                    \
    int prc = parse(argc, argv, opts, pos, maxpos, &npos, &help);                                                      \
    if (prc >= 0)                                                                                                      \
      return prc;                                                                                                      \
    if (help)                                                                                                          \
      return show_help(c);                                                                                             \
  }

#define OPEN_OR_RETURN(store, flags, profile)                                                                          \
  {                                                                                                                    \
    int orc = open_store(&store, flags, profile);                                                                      \
    if (orc >= 0)                                                                                                      \
      return orc;                                                                                                      \
  }

/* Runs a report-producing call and prints it; frees everything. */
static int finish_report(tl_store *s, tl_status rc, tl_report *r, const tl_error *err, int json, unsigned jflags)
{
  int code = rc == TL_OK ? tl_cli_print_report(r, json, jflags) : tl_cli_fail(err, rc);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

/* ---- commands ------------------------------------------------------------ */

static int cmd_init(const cmd *c, int argc, char **argv)
{
  const char *pos[1];
  opt opts[] = {{0}};
  PARSE_OR_RETURN(opts, pos, 0);
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, TL_OPEN_CREATE, NULL);
  char buf[4096];
  printf("ledger ready at %s (schema version %d)\n", db_path(buf, sizeof buf), TL_SCHEMA_VERSION);
  tl_store_free(s);
  return EXIT_OK;
}

static int profile_strict(int npos, const char **pos, int all)
{
  const char *sw = pos[npos - 1];
  if (npos != (all ? 2 : 3) || (strcmp(sw, "on") != 0 && strcmp(sw, "off") != 0))
    return usage_error("%s", "expected 'profile strict NAME on|off' or 'profile strict --all on|off'");
  tl_store *s = NULL;
  tl_error err = {0};
  tl_report *r = NULL;
  OPEN_OR_RETURN(s, 0, all ? NULL : pos[1]);
  int on = strcmp(sw, "on") == 0, code = EXIT_OK;
  tl_status rc = all ? tl_profile_list(&r, s, &err) : TL_OK;
  size_t n = all ? (r ? tl_report_rows(r) : 0) : 1;
  for (size_t i = 0; rc == TL_OK && i < n; i++) {
    const char *name = all ? tl_report_get(r, i, "name") : pos[1];
    if (all && !tl_report_get(r, i, "home"))
      continue; /* --all: the profiles whose Hermes files tokenledger keeps */
    if ((rc = tl_profile_strict(s, name, on, &err)) == TL_OK)
      printf(on ? "profile %s: strict mode on ('tokenledger serve' answers its refreshes)\n"
                : "profile %s: strict mode off\n",
             name);
  }
  if (rc != TL_OK)
    code = tl_cli_fail(&err, rc);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static int cmd_profile(const cmd *c, int argc, char **argv)
{
  const char *pos[3] = {0}, *home = NULL;
  int json = 0, create = 0, clear = 0, all = 0;
  opt opts[] = {{"home", 1, &home, NULL}, {"create", 0, NULL, &create}, {"clear", 0, NULL, &clear},
                {"all", 0, NULL, &all},   {"json", 0, NULL, &json},     {0}};
  PARSE_OR_RETURN(opts, pos, 3);
  if (npos == 0)
    return usage_error("%s", "missing subcommand (add, set-home, list, rm or strict)");
  if (strcmp(pos[0], "strict") == 0)
    return profile_strict(npos, pos, all);
  if (all)
    return usage_error("%s", "--all goes with 'profile strict --all on|off'");
  tl_store *s = NULL;
  tl_error err = {0};
  tl_status rc;
  if (strcmp(pos[0], "add") == 0 || strcmp(pos[0], "rm") == 0) {
    if (npos < 2)
      return usage_error("%s", "missing profile name");
    if (npos > 2)
      return unexpected(3, pos[2]);
    if (create && !home)
      return usage_error("%s", "--create needs --home DIR");
    int mrc = home && !create ? missing_path_hint("--home", home, "; add --create to make it") : -1;
    if (mrc >= 0)
      return mrc;
    OPEN_OR_RETURN(s, 0, pos[1]);
    if (pos[0][0] == 'a') {
      rc = tl_profile_add(s, pos[1], create ? NULL : home, &err);
      if (rc == TL_OK && create && (rc = tl_profile_set_home(s, pos[1], home, 1, &err)) != TL_OK) {
        tl_error ignore = {0};
        tl_profile_remove(s, pos[1], &ignore); /* all or nothing */
      }
    } else {
      rc = tl_profile_remove(s, pos[1], &err);
    }
    tl_store_free(s);
    if (rc != TL_OK)
      return tl_cli_fail(&err, rc);
    printf("profile %s %s\n", pos[1], pos[0][0] == 'a' ? "added" : "removed");
    return EXIT_OK;
  }
  if (strcmp(pos[0], "set-home") == 0) {
    if (npos < 2)
      return usage_error("%s", "missing profile name");
    if ((npos == 3) == clear)
      return usage_error("%s", "give the home directory, or --clear");
    int mrc = !clear && !create ? missing_path_hint("set-home", pos[2], "; add --create to make it") : -1;
    if (mrc >= 0)
      return mrc;
    OPEN_OR_RETURN(s, 0, pos[1]);
    rc = tl_profile_set_home(s, pos[1], clear ? NULL : pos[2], create, &err);
    tl_store_free(s);
    if (rc != TL_OK)
      return tl_cli_fail(&err, rc);
    if (clear)
      printf("profile %s has no Hermes home now\n", pos[1]);
    else
      printf("profile %s: Hermes home set\n", pos[1]);
    return EXIT_OK;
  }
  if (strcmp(pos[0], "list") == 0) {
    if (npos != 1)
      return unexpected(2, pos[1]);
    tl_report *r = NULL;
    OPEN_OR_RETURN(s, 0, NULL);
    rc = tl_profile_list(&r, s, &err);
    return finish_report(s, rc, r, &err, json, 0);
  }
  shown_arg b;
  return usage_error("unknown subcommand %s (add, set-home, list, rm or strict)", shown(&b, pos[0]));
}

static int cmd_provider(const cmd *c, int argc, char **argv)
{
  const char *pos[2] = {0}, *token_url = NULL, *device_url = NULL, *client_id = NULL, *header = NULL, *scope = NULL,
             *skew = NULL, *grace = NULL;
  int json = 0, body = 0;
  opt opts[] = {{"token-url", 1, &token_url, NULL}, {"device-url", 1, &device_url, NULL},
                {"client-id", 1, &client_id, NULL}, {"rt-header", 1, &header, NULL},
                {"rt-in-body", 0, NULL, &body},     {"scope", 1, &scope, NULL},
                {"skew", 1, &skew, NULL},           {"grace", 1, &grace, NULL},
                {"json", 0, NULL, &json},           {0}};
  PARSE_OR_RETURN(opts, pos, 2);
  if (npos == 0)
    return usage_error("%s", "missing subcommand (set or list)");
  tl_store *s = NULL;
  tl_error err = {0};
  tl_status rc;
  if (strcmp(pos[0], "list") == 0) {
    tl_report *r = NULL;
    OPEN_OR_RETURN(s, 0, NULL);
    rc = tl_provider_list(&r, s, &err);
    return finish_report(s, rc, r, &err, json, 0);
  }
  if (strcmp(pos[0], "set") != 0)
    return usage_error("unknown subcommand %s (set or list)", shown(&(shown_arg){{0}}, pos[0]));
  if (npos != 2)
    return usage_error("%s", "missing provider name");
  if (header && body)
    return usage_error("%s", "--rt-header and --rt-in-body exclude each other");
  int64_t sk = -1, gr = -1;
  int prc;
  if (skew && (prc = parse_int64(&sk, skew, "--skew")) >= 0)
    return prc;
  if (grace && (prc = parse_int64(&gr, grace, "--grace")) >= 0)
    return prc;
  if (sk > 86400 || gr > 86400)
    return usage_error("%s", "--skew and --grace are at most 86400 seconds");
  tl_provider p = {.name = pos[1],
                   .token_url = token_url,
                   .device_url = device_url,
                   .client_id = client_id,
                   .rt_header = body ? "" : header,
                   .scope = scope,
                   .skew_s = (int)sk,
                   .grace_s = (int)gr};
  OPEN_OR_RETURN(s, 0, NULL);
  rc = tl_provider_set(s, &p, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  printf("provider %s saved\n", pos[1]);
  return EXIT_OK;
}

static int cmd_credential(const cmd *c, int argc, char **argv)
{
  const char *pos[2] = {0}, *profile = NULL, *rt_file = NULL, *at_file = NULL, *expires = NULL, *label = NULL,
             *token_url = NULL, *entry = NULL, *source = NULL, *origin = NULL;
  int json = 0;
  opt opts[] = {{"profile", 1, &profile, NULL},
                {"refresh-token-file", 1, &rt_file, NULL},
                {"access-token-file", 1, &at_file, NULL},
                {"expires-at", 1, &expires, NULL},
                {"label", 1, &label, NULL},
                {"token-url", 1, &token_url, NULL},
                {"entry-id", 1, &entry, NULL},
                {"source", 1, &source, NULL},
                {"origin", 1, &origin, NULL},
                {"json", 0, NULL, &json},
                {0}};
  PARSE_OR_RETURN(opts, pos, 2);
  if (npos != 2 || strcmp(pos[0], "add") != 0)
    return usage_error("%s", "expected 'credential add PROVIDER --profile NAME --refresh-token-file FILE'");
  if (!profile)
    return usage_error("%s", "--profile is required");
  if (!rt_file)
    return usage_error("%s", "--refresh-token-file is required (use - to read it from standard input)");
  if (at_file && strcmp(at_file, "-") == 0 && strcmp(rt_file, "-") == 0)
    return usage_error("%s", "only one of the token files can be standard input");
  int mrc;
  if ((mrc = missing_path("--refresh-token-file", rt_file)) >= 0 ||
      (at_file && (mrc = missing_path("--access-token-file", at_file)) >= 0))
    return mrc;
  tl_error err = {0};
  int64_t exp = 0;
  tl_status rc;
  if (expires && (rc = tl_time_parse(&exp, expires, &err)) != TL_OK)
    return tl_cli_fail(&err, rc);
  char *rt = NULL, *at = NULL;
  if ((rc = tl_secret_read(&rt, rt_file, &err)) != TL_OK)
    return tl_cli_fail(&err, rc);
  if (at_file && (rc = tl_secret_read(&at, at_file, &err)) != TL_OK) {
    tl_secret_free(rt);
    return tl_cli_fail(&err, rc);
  }
  tl_store *s = NULL;
  int orc = open_store(&s, 0, profile);
  if (orc >= 0) {
    tl_secret_free(rt);
    tl_secret_free(at);
    return orc;
  }
  tl_credential_spec spec = {.provider = pos[1],
                             .profile = profile,
                             .refresh_token = rt,
                             .access_token = at,
                             .expires_at_ms = exp,
                             .label = label,
                             .token_url = token_url,
                             .origin = origin,
                             .entry_id = entry,
                             .source = source};
  int64_t id = 0;
  rc = tl_credential_add(&id, s, &spec, &err);
  tl_secret_free(rt);
  tl_secret_free(at);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  if (json)
    printf("{\"credential\": %lld, \"profile\": \"%s\", \"provider\": \"%s\"}\n", (long long)id, profile, pos[1]);
  else
    printf("credential %lld stored for profile %s (%s)\n", (long long)id, profile, pos[1]);
  return EXIT_OK;
}

/* Below status' table: which profiles are strict, and whether serve answers for them. */
static void serve_footer(tl_store *s)
{
  tl_report *r = NULL;
  tl_error err = {0};
  if (tl_serve_status(&r, s, &err) != TL_OK) {
    fprintf(stderr, "tokenledger: strict mode: %s\n", err.message);
    return;
  }
  const char *running = tl_report_get(r, 0, "running"), *strict = tl_report_get(r, 0, "strict");
  int up = running && strcmp(running, "1") == 0;
  if (strict || up) {
    if (up)
      fprintf(stdout, "serve: up at %s (pid %s)", tl_report_get(r, 0, "url"), tl_report_get(r, 0, "pid"));
    else
      fprintf(stdout, "serve: NOT RUNNING: strict profiles cannot refresh; start 'tokenledger serve'");
    fprintf(stdout, "; strict profiles: %s\n", strict ? strict : "none");
  }
  tl_report_free(r);
}

static int cmd_status(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *profile = NULL;
  int json = 0;
  opt opts[] = {{"profile", 1, &profile, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  OPEN_OR_RETURN(s, 0, NULL);
  tl_status rc = tl_status_report(&r, s, profile, &err);
  if (rc != TL_OK || json)
    return finish_report(s, rc, r, &err, json, 0);
  int code = tl_cli_print_report(r, 0, 0);
  serve_footer(s);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static int cmd_lineage(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *cred = NULL;
  int json = 0;
  opt opts[] = {{"credential", 1, &cred, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  int64_t id = 0;
  int prc;
  if (cred && (prc = parse_int64(&id, cred, "--credential")) >= 0)
    return prc;
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  OPEN_OR_RETURN(s, 0, NULL);
  tl_status rc = tl_lineage_report(&r, s, id, &err);
  return finish_report(s, rc, r, &err, json, 0);
}

static int cmd_audit(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *cred = NULL, *limit = NULL;
  int json = 0, history = strcmp(c->name, "history") == 0;
  opt opts[] = {{"credential", 1, &cred, NULL}, {"limit", 1, &limit, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  int64_t id = 0, lim = 0;
  int prc;
  if (cred && (prc = parse_int64(&id, cred, "--credential")) >= 0)
    return prc;
  if (limit && (prc = parse_int64(&lim, limit, "--limit")) >= 0)
    return prc;
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  OPEN_OR_RETURN(s, 0, NULL);
  tl_status rc = history ? tl_history_report(&r, s, id, lim, &err) : tl_audit_report(&r, s, id, lim, &err);
  return finish_report(s, rc, r, &err, json, 0);
}

static int cmd_check_rt(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *file = "-";
  int json = 0;
  opt opts[] = {{"refresh-token-file", 1, &file, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  int mrc = missing_path("--refresh-token-file", file);
  if (mrc >= 0)
    return mrc;
  tl_error err = {0};
  char *rt = NULL;
  tl_status rc = tl_secret_read(&rt, file, &err);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store *s = NULL;
  int orc = open_store(&s, 0, NULL);
  if (orc >= 0) {
    tl_secret_free(rt);
    return orc;
  }
  tl_report *r = NULL;
  rc = tl_rt_check(&r, s, rt, &err);
  tl_secret_free(rt);
  if (rc != TL_OK)
    return finish_report(s, rc, r, &err, json, 0);
  const char *verdict = tl_report_get(r, 0, "verdict");
  int code = EXIT_OK;
  if (strcmp(verdict, "spent") == 0)
    code = EXIT_REUSE;
  else if (strcmp(verdict, "unknown_to_ledger") == 0)
    code = EXIT_NOTFOUND;
  else if (strcmp(verdict, "unknown_outcome") == 0)
    code = EXIT_UNKNOWN;
  if (json) {
    tl_cli_print_report(r, 1, TL_JSON_OBJECT);
  } else {
#define G(k) (tl_report_get(r, 0, k) ? tl_report_get(r, 0, k) : "-")
    if (strcmp(verdict, "unknown_to_ledger") == 0) {
      printf("unknown to the ledger: fingerprint %s... has never been stored or presented by tokenledger\n",
             G("fingerprint"));
    } else {
      printf("%s: generation %s of credential %s (%s, %s), fingerprint %s..., family %s, latest generation %s\n",
             verdict, G("generation"), G("credential"), G("provider"), G("label"), G("fingerprint"), G("family"),
             G("latest_generation"));
      printf("  origin %s, issued %s, spent %s\n", G("origin"), G("issued"), G("spent"));
      if (tl_report_get(r, 0, "presented_by"))
        printf("  last presented by %s (profile %s, command %s) at %s, outcome %s\n", G("presented_by"),
               G("presented_profile"), G("presented_command"), G("presented_at"), G("outcome"));
      else
        printf("  never presented by tokenledger\n");
      printf("  used by profiles: %s\n", G("profiles"));
    }
#undef G
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static int cmd_doctor(const cmd *c, int argc, char **argv)
{
  const char *pos[1];
  int json = 0, fix = 0;
  opt opts[] = {{"fix", 0, NULL, &fix}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  char buf[4096];
  tl_error err = {0};
  tl_store *s = NULL;
  const char *path = db_path(buf, sizeof buf);
  if (!path)
    return usage_error("%s", "no database: give --db PATH or set TOKENLEDGER_DB");
  tl_status rc = tl_store_open(&s, path, 0, &err);
  if (rc == TL_EINSECURE && fix) {
    printf("repairing file modes of %s\n", path);
    tl_error_clear(&err);
    if ((rc = tl_store_fix_permissions(path, &err)) == TL_OK)
      rc = tl_store_open(&s, path, 0, &err);
  }
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store_set_actor(s, NULL, "doctor");
  tl_report *r = NULL;
  int problems = 0;
  rc = tl_doctor(&r, &problems, s, fix, &err);
  int code = finish_report(s, rc, r, &err, json, 0);
  if (code == EXIT_OK && problems) {
    fprintf(stderr, "tokenledger: doctor found %d problem(s)\n", problems);
    return EXIT_FAILURE_;
  }
  return code;
}

static int cmd_token(const cmd *c, int argc, char **argv)
{
  const char *pos[1] = {0}, *profile = NULL;
  int json = 0, force = 0, is_refresh = strcmp(c->name, "refresh") == 0;
  opt opts[] = {{"profile", 1, &profile, NULL}, {"json", 0, NULL, &json}, {"force", 0, NULL, &force}, {0}};
  PARSE_OR_RETURN(opts, pos, 1);
  if (npos != 1)
    return usage_error("%s", "missing provider (for example: nous)");
  if (!profile)
    return usage_error("%s", "--profile is required");
  if (!is_refresh && force)
    return usage_error("%s", "--force belongs to 'refresh'");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  tl_token *t = NULL;
  tl_error err = {0};
  tl_status rc = tl_token_get(&t, s, profile, pos[0], is_refresh && force ? TL_REFRESH_FORCE : 0, &err);
  tl_store_free(s);
  if (rc != TL_OK) {
    tl_token_free(t);
    return tl_cli_fail(&err, rc);
  }
  int code = EXIT_OK;
  if (json) {
    char *text = NULL;
    if ((rc = tl_token_json(&text, t, &err)) != TL_OK) {
      code = tl_cli_fail(&err, rc);
    } else if (is_refresh) {
      /* `refresh --json` reports without the token: printing secrets is token's job. */
      printf("{\"credential\": %lld, \"refreshed\": %s, \"expires_at_ms\": %lld}\n", (long long)t->credential,
             t->refreshed ? "true" : "false", (long long)t->expires_at_ms);
    } else {
      puts(text);
    }
    tl_secret_free(text);
  } else if (is_refresh) {
    printf("credential %lld %s; access token valid for %lld s\n", (long long)t->credential,
           t->refreshed ? "refreshed" : "already fresh (use --force to refresh anyway)",
           t->expires_at_ms ? (long long)((t->expires_at_ms - (int64_t)time(NULL) * 1000) / 1000) : -1LL);
  } else if (strspn(t->access_token, PRINTABLE) != strlen(t->access_token)) {
    /* The library never hands out such a token; a terminal must never receive one either. */
    fprintf(stderr, "tokenledger: the access token holds characters that are not printable ASCII; not printing it\n");
    code = EXIT_FAILURE_;
  } else {
    puts(t->access_token);
  }
  tl_token_free(t);
  return code;
}

static int cmd_recover(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *cred = NULL;
  int retry = 0, dead = 0, rescue = 0;
  opt opts[] = {{"credential", 1, &cred, NULL},
                {"assume-not-sent", 0, NULL, &retry},
                {"mark-dead", 0, NULL, &dead},
                {"rescue", 0, NULL, &rescue},
                {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  if (!cred)
    return usage_error("%s", "--credential is required");
  if (retry + dead + rescue != 1)
    return usage_error("%s", "choose exactly one of --assume-not-sent, --mark-dead and --rescue");
  int64_t id = 0;
  int prc;
  if ((prc = parse_int64(&id, cred, "--credential")) >= 0)
    return prc;
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, NULL);
  tl_error err = {0};
  tl_token *t = NULL;
  tl_status rc = tl_recover(&t, s, id,
                            retry    ? TL_RECOVER_RETRY
                            : rescue ? TL_RECOVER_RESCUE
                                     : TL_RECOVER_MARK_DEAD,
                            &err);
  tl_store_free(s);
  tl_token_free(t);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  printf(retry    ? "credential %lld recovered: its refresh token was presented once more and rotated\n"
         : rescue ? "credential %lld recovered: the server's answer kept in the rescue file is on record, and the "
                    "file is removed\n"
                  : "credential %lld marked dead: log in again to use it\n",
         (long long)id);
  return EXIT_OK;
}

static int cmd_report(const cmd *c, int argc, char **argv)
{
  const char *pos[1] = {0}, *profile = NULL, *entry = NULL, *status = NULL, *reset = NULL;
  opt opts[] = {{"profile", 1, &profile, NULL},
                {"entry", 1, &entry, NULL},
                {"status", 1, &status, NULL},
                {"reset-at", 1, &reset, NULL},
                {0}};
  PARSE_OR_RETURN(opts, pos, 1);
  if (npos != 1 || !profile || !entry || !status)
    return usage_error("%s", "expected 'report PROVIDER --profile NAME --entry ID --status CODE'");
  int64_t code = 0, at = 0;
  int prc;
  if ((prc = parse_int64(&code, status, "--status")) >= 0)
    return prc;
  if (code < 100 || code > 599)
    return usage_error("--status %s is not an HTTP status (100-599)", shown(&(shown_arg){{0}}, status));
  tl_error err = {0};
  tl_status rc;
  if (reset && (rc = tl_time_parse(&at, reset, &err)) != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  rc = tl_entry_report(s, profile, pos[0], entry, (int)code, at, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  printf("entry %s of profile %s marked exhausted\n", entry, profile);
  return EXIT_OK;
}

static int cmd_pool(const cmd *c, int argc, char **argv)
{
  const char *pos[3] = {0}, *profile = NULL;
  opt opts[] = {{"profile", 1, &profile, NULL}, {0}};
  PARSE_OR_RETURN(opts, pos, 3);
  if (npos != 3 || strcmp(pos[0], "strategy") != 0 || !profile)
    return usage_error("%s", "expected 'pool strategy PROVIDER STRATEGY --profile NAME'");
  tl_error err = {0};
  tl_strategy st;
  tl_status rc = tl_strategy_parse(&st, pos[2], &err);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  rc = tl_strategy_set(s, profile, pos[1], st, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  printf("profile %s uses %s for %s\n", profile, pos[2], pos[1]);
  return EXIT_OK;
}

static int cmd_import(const cmd *c, int argc, char **argv)
{
  const char *pos[1] = {0}, *profile = NULL;
  int json = 0, all = 0, dry = 0;
  opt opts[] = {{"profile", 1, &profile, NULL},
                {"all-profiles", 0, NULL, &all},
                {"dry-run", 0, NULL, &dry},
                {"json", 0, NULL, &json},
                {0}};
  PARSE_OR_RETURN(opts, pos, 1);
  if (npos != 1)
    return usage_error("%s", "expected 'import PATH' (an auth.json, a Hermes home, or a root with --all-profiles)");
  if (all && profile)
    return usage_error("%s", "--profile and --all-profiles exclude each other");
  int mrc = missing_path("import", pos[0]);
  if (mrc >= 0)
    return mrc;
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  tl_import_opts o = {.profile = profile, .all_profiles = all, .dry_run = dry};
  tl_report *r = NULL;
  tl_error err = {0};
  tl_status rc = tl_import(&r, s, pos[0], &o, &err);
  if (rc == TL_OK && dry && !json)
    printf("dry run: nothing was written\n");
  return finish_report(s, rc, r, &err, json, 0);
}

static int cmd_export(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *profile = NULL, *output = NULL, *shared = NULL;
  int json = 0;
  opt opts[] = {{"profile", 1, &profile, NULL},
                {"output", 1, &output, NULL},
                {"shared-nous", 1, &shared, NULL},
                {"json", 0, NULL, &json},
                {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  if (!profile)
    return usage_error("%s", "--profile is required");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  tl_report *r = NULL;
  tl_error err = {0};
  tl_status rc = tl_export(&r, s, profile, output, shared, &err);
  return finish_report(s, rc, r, &err, json, 0);
}

static int cmd_sync(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *profile = NULL;
  int json = 0, all = 0;
  opt opts[] = {{"profile", 1, &profile, NULL}, {"all", 0, NULL, &all}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  if (!!profile == !!all)
    return usage_error("%s", "give --profile NAME or --all");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  tl_report *r = NULL;
  tl_error err = {0};
  tl_status rc = tl_sync(&r, s, profile, &err);
  return finish_report(s, rc, r, &err, json, 0);
}

static void show_code(void *ud, const char *uri, const char *complete, const char *code, int expires_in)
{
  (void)ud;
  fprintf(stderr, "To log in, open %s and enter the code %s (valid %d s)\n", complete ? complete : uri, code,
          expires_in);
  fprintf(stderr, "Waiting for approval...\n");
}

static int cmd_login(const cmd *c, int argc, char **argv)
{
  const char *pos[1] = {0}, *profile = NULL;
  int json = 0;
  opt opts[] = {{"profile", 1, &profile, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 1);
  if (npos != 1 || !profile)
    return usage_error("%s", "expected 'login PROVIDER --profile NAME'");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, profile);
  tl_error err = {0};
  int64_t id = 0;
  tl_status rc = tl_login(&id, s, profile, pos[0], show_code, NULL, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  if (json)
    printf("{\"credential\": %lld, \"profile\": \"%s\", \"provider\": \"%s\"}\n", (long long)id, profile, pos[0]);
  else
    printf("logged in: credential %lld stored for profile %s (%s)\n", (long long)id, profile, pos[0]);
  return EXIT_OK;
}

static int cmd_compact(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *keep = NULL;
  int json = 0;
  opt opts[] = {{"keep-days", 1, &keep, NULL}, {"json", 0, NULL, &json}, {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  int64_t days = 90;
  int prc;
  if (keep && (prc = parse_int64(&days, keep, "--keep-days")) >= 0)
    return prc;
  if (days > 36500)
    return usage_error("%s", "--keep-days is at most 36500");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, NULL);
  tl_error err = {0};
  int64_t deleted = 0, before = 0, after = 0;
  tl_status rc = tl_compact(&deleted, &before, &after, s, days * 86400000LL, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  if (json)
    printf("{\"attempts_deleted\": %lld, \"bytes_before\": %lld, \"bytes_after\": %lld}\n", (long long)deleted,
           (long long)before, (long long)after);
  else
    printf("removed %lld settled attempt(s) older than %lld day(s); %lld -> %lld bytes (fingerprints and audit kept)\n",
           (long long)deleted, (long long)days, (long long)before, (long long)after);
  return EXIT_OK;
}

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

/* Sleeps until the next round; with watch, syncs each file Hermes writes meanwhile, as it is written. */
static void wait_round(tl_store *s, int64_t every, int watch, int json)
{
  tl_watch *w = NULL;
  tl_error err = {0};
  if (watch && tl_watch_open(&w, s, &err) != TL_OK) {
    fprintf(stderr, "tokenledger keep-fresh: %s; polling every %lld s instead\n", err.message, (long long)every);
    w = NULL;
  }
  int64_t end = mono_ms() + every * 1000;
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
    if (rc != TL_OK)
      tl_cli_fail(&serr, rc);
    else
      tl_cli_print_changes(r, json);
    fflush(stdout);
    tl_report_free(r);
  }
  tl_watch_free(w);
}

static int cmd_keep_fresh(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *interval = NULL, *ahead = NULL, *count = NULL;
  int json = 0, once = 0, nosync = 0, watch = 0;
  opt opts[] = {{"interval", 1, &interval, NULL}, {"ahead", 1, &ahead, NULL},
                {"count", 1, &count, NULL},       {"once", 0, NULL, &once},
                {"no-sync", 0, NULL, &nosync},    {"watch", 0, NULL, &watch},
                {"json", 0, NULL, &json},         {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  int64_t every = 60, before = 600, rounds = 0;
  int prc;
  if (interval && (prc = parse_int64(&every, interval, "--interval")) >= 0)
    return prc;
  if (ahead && (prc = parse_int64(&before, ahead, "--ahead")) >= 0)
    return prc;
  if (count && (prc = parse_int64(&rounds, count, "--count")) >= 0)
    return prc;
  if (every < 1 || every > 86400 || before > 86400)
    return usage_error("%s", "--interval is 1-86400 seconds and --ahead at most 86400");
  if (once)
    rounds = 1;
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, NULL);
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  int code = EXIT_OK;
  if (watch && nosync)
    return usage_error("%s", "--watch syncs files as Hermes writes them; it cannot go with --no-sync");
  for (int64_t round = 0; !stop_requested && (rounds == 0 || round < rounds); round++) {
    if (round)
      wait_round(s, every, watch, json);
    if (stop_requested)
      break;
    tl_report *r = NULL;
    tl_error err = {0};
    int failures = 0;
    tl_status rc = tl_keep_fresh(&r, &failures, s, before * 1000, !nosync, &err);
    if (rc != TL_OK) {
      code = tl_cli_fail(&err, rc);
      if (rc != TL_EBUSY && rc != TL_ETRANSIENT)
        break;
      continue;
    }
    tl_cli_print_report(r, json, 0);
    fflush(stdout);
    tl_report_free(r);
    code = failures ? EXIT_TRANSIENT : EXIT_OK;
  }
  tl_store_free(s);
  return code;
}

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

static int serve_status(int json)
{
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  OPEN_OR_RETURN(s, TL_OPEN_READONLY, NULL);
  tl_status rc = tl_serve_status(&r, s, &err);
  int code = rc == TL_OK ? tl_cli_print_report(r, json, TL_JSON_OBJECT) : tl_cli_fail(&err, rc);
  if (code == EXIT_OK && strcmp(tl_report_get(r, 0, "running"), "1") != 0)
    code = EXIT_NOTFOUND;
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static int cmd_serve(const cmd *c, int argc, char **argv)
{
  const char *pos[1], *listen = NULL, *interval = NULL, *ahead = NULL, *threads = NULL;
  int json = 0, status = 0, nosync = 0, nofresh = 0, quiet = 0;
  opt opts[] = {{"listen", 1, &listen, NULL},  {"interval", 1, &interval, NULL},
                {"ahead", 1, &ahead, NULL},    {"threads", 1, &threads, NULL},
                {"no-sync", 0, NULL, &nosync}, {"no-keep-fresh", 0, NULL, &nofresh},
                {"quiet", 0, NULL, &quiet},    {"status", 0, NULL, &status},
                {"json", 0, NULL, &json},      {0}};
  PARSE_OR_RETURN(opts, pos, 0);
  if (status)
    return serve_status(json);
  if (json)
    return usage_error("%s", "--json goes with --status");
  int64_t every = 60, before = 600, nthreads = 0;
  int prc;
  if (interval && (prc = parse_int64(&every, interval, "--interval")) >= 0)
    return prc;
  if (ahead && (prc = parse_int64(&before, ahead, "--ahead")) >= 0)
    return prc;
  if (threads && (prc = parse_int64(&nthreads, threads, "--threads")) >= 0)
    return prc;
  if (every < 1 || every > 86400 || before > 86400)
    return usage_error("%s", "--interval is 1-86400 seconds and --ahead at most 86400");
  if (threads && (nthreads < 1 || nthreads > 256))
    return usage_error("%s", "--threads is 1-256");
  tl_store *s = NULL;
  OPEN_OR_RETURN(s, 0, NULL);
  signal(SIGTERM, on_stop);
  signal(SIGINT, on_stop);
  signal(SIGHUP, on_stop);
  signal(SIGPIPE, SIG_IGN);
  tl_serve_opts o = {.listen = listen,
                     .interval_ms = nofresh ? -1 : every * 1000,
                     .ahead_ms = before * 1000,
                     .no_sync = nosync,
                     .threads = (int)nthreads,
                     .should_stop = serve_should_stop,
                     .on_ready = serve_ready,
                     .on_log = serve_log,
                     .ud = &quiet};
  tl_error err = {0};
  tl_status rc = tl_serve_run(s, &o, &err);
  tl_store_free(s);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  printf("tokenledger serve: stopped\n");
  return EXIT_OK;
}

/* ---- dispatch ------------------------------------------------------------ */

static const cmd commands[] = {
    {"init", cmd_init, "init", "Creates the ledger (directory 0700, file 0600) or migrates an existing one.\n"},
    {"profile", cmd_profile,
     "profile add NAME [--home DIR [--create]] | profile set-home NAME (DIR [--create] | --clear) | profile list "
     "[--json] | profile rm NAME |\n"
     "                    profile strict (NAME | --all) on|off",
     "Manages Hermes profiles. NAME follows Hermes' rule ^[a-z0-9][a-z0-9_-]{0,63}$; 'default' is the Hermes\n"
     "root. A profile's home is the Hermes directory whose auth.json sync, export and every refresh keep in\n"
     "step (--create makes it, 0700); importing a home or a root sets it too, importing any other file never\n"
     "does. Removing a profile drops its pool entries; credentials and their lineage stay. 'strict' switches\n"
     "strict mode: 'tokenledger serve' answers the profile's refreshes and its files (and the shared store)\n"
     "hold only a surrogate refresh token and serve's loopback URL; off writes the real ones back. --all:\n"
     "every profile with a Hermes home (a whole root in one command).\n"},
    {"provider", cmd_provider,
     "provider set NAME [--token-url URL] [--device-url URL] [--client-id ID] [--rt-header NAME | --rt-in-body]\n"
     "                    [--scope S] [--skew SECONDS] [--grace SECONDS] | provider list [--json]",
     "Configures token endpoints. 'nous' is built in (RT in the x-nous-refresh-token header, skew 120 s,\n"
     "no grace window). URLs must be https, or http to a loopback address. --grace declares the server's\n"
     "reuse grace window: only inside it may a lost refresh be retried automatically, once.\n"},
    {"credential", cmd_credential,
     "credential add PROVIDER --profile NAME --refresh-token-file FILE|- [--access-token-file FILE]\n"
     "                    [--expires-at TIME] [--label L] [--token-url URL] [--entry-id ID] [--source S]\n"
     "                    [--origin login|import] [--json]",
     "Stores a credential and its refresh token as the root of a new lineage, in the profile's pool.\n"
     "Secrets are read from files or standard input, never from the command line. An RT the ledger\n"
     "already knows as spent is refused (exit 4) and the refusal is audited. An RT that is already live\n"
     "attaches the profile to the existing credential.\n"},
    {"login", cmd_login, "login PROVIDER --profile NAME [--json]",
     "Logs in with the device authorization grant (RFC 8628): prints where to approve the login, waits,\n"
     "and stores the new grant in the profile's pool. Use it after a credential needs re-authentication.\n"},
    {"import", cmd_import, "import PATH [--profile NAME | --all-profiles] [--dry-run] [--json]",
     "Imports Hermes credentials in one transaction: PATH is an auth.json, a Hermes home, or with\n"
     "--all-profiles a Hermes root (the root is profile 'default', each profiles/<name> its own profile,\n"
     "and shared/nous_auth.json is read too). The same grant anywhere becomes one credential; unknown keys\n"
     "are kept for export. A refresh token the ledger knows as spent refuses the whole import (exit 4).\n"
     "Bad input names the file, the JSON path and the reason (exit 2) and changes nothing. Never contacts\n"
     "a server. --dry-run reports what would happen and writes nothing.\n"},
    {"export", cmd_export, "export --profile NAME [--output FILE] [--shared-nous DIR] [--json]",
     "Writes the ledger's tokens into the profile's auth.json (or FILE) under Hermes' own lock (flock on\n"
     "the sibling auth.lock), changing only the fields tokenledger owns; temp file, fsync, rename, 0600.\n"
     "--shared-nous DIR also writes DIR/nous_auth.json under nous_auth.lock.\n"},
    {"sync", cmd_sync, "sync (--profile NAME | --all) [--json]",
     "Under auth.lock, adopts what Hermes changed (a new refresh token that replaced the ledger's is an\n"
     "external rotation; a spent one is refused and overwritten), then exports the ledger's state.\n"
     "A file that did not change is not rewritten.\n"},
    {"keep-fresh", cmd_keep_fresh,
     "keep-fresh [--interval SECONDS] [--ahead SECONDS] [--once | --count N] [--no-sync | --watch] [--json]",
     "Refreshes every credential whose access token expires within --ahead (default 600 s) and then syncs\n"
     "every profile's auth.json and shared store, every --interval (default 60 s) until SIGTERM/SIGINT;\n"
     "--once does one round (for cron). Every refresh first adopts what Hermes' files hold, under Hermes'\n"
     "locks. --watch also syncs as soon as Hermes writes an auth.json or nous_auth.json (inotify), so a\n"
     "rotation in one profile reaches its siblings and the shared store at once. Credentials with an\n"
     "unknown outcome, needing a login or without an endpoint are reported for attention, never\n"
     "presented. Exit 7 if the last round had a failure. A systemd user unit, tokenledger-keep-fresh.service, is "
     "installed.\n"},
    {"serve", cmd_serve,
     "serve [--listen 127.0.0.1:PORT] [--interval SECONDS] [--ahead SECONDS] [--no-sync | --no-keep-fresh]\n"
     "                    [--threads N] [--quiet] | serve --status [--json]",
     "Strict mode's server: answers Hermes' Nous Portal calls for strict profiles on a loopback port\n"
     "(POST /api/oauth/token with a surrogate refresh token; the device-code login forwarded to the real\n"
     "portal) and runs keep-fresh every --interval, until SIGTERM/SIGINT. Without --listen it binds the\n"
     "address it used last (else 127.0.0.1 on a free port); only loopback addresses are accepted. Its\n"
     "address goes to the 0600 port file <ledger>-serve, removed on exit. Refuses to start when another\n"
     "serve runs for the ledger (exit 12) or the port belongs to another program (exit 8). --status\n"
     "says whether serve is up (exit 0) or not (exit 3). A systemd user unit, tokenledger-serve.service, is "
     "installed.\n"},
    {"compact", cmd_compact, "compact [--keep-days N] [--json]",
     "Retention: removes settled refresh attempts of spent tokens older than N days (default 90) and\n"
     "vacuums. Refresh-token rows (fingerprints) and audit rows are never removed.\n"},
    {"status", cmd_status, "status [--profile NAME] [--json]",
     "Per-profile token status: entries, credentials, access-token validity, RT generation and state.\n"},
    {"lineage", cmd_lineage, "lineage [--credential ID] [--json]",
     "Every refresh token ever held, with generation, state, origin, fingerprint prefix, age and who\n"
     "presented it.\n"},
    {"audit", cmd_audit, "audit [--credential ID] [--limit N] [--json]",
     "The append-only audit log, oldest first (the last N with --limit). No secret appears in it.\n"},
    {"history", cmd_audit, "history [--credential ID] [--limit N] [--json]",
     "Every presentation of a refresh token, newest first, with outcome, HTTP status and actor.\n"},
    {"check-rt", cmd_check_rt, "check-rt [--refresh-token-file FILE] [--json]  < token",
     "Reads a refresh token (standard input by default) and says what the ledger knows of it.\n"
     "Exit 0: live (current or presented); 4: spent; 3: unknown to the ledger; 6: outcome unknown.\n"},
    {"doctor", cmd_doctor, "doctor [--fix] [--json]",
     "Checks integrity, file modes, WAL, the lineage invariants, stale in-flight attempts and credentials\n"
     "needing attention. --fix repairs file modes and records dead in-flight attempts as unknown.\n"
     "Exit 1 if a problem remains.\n"},
    {"token", cmd_token, "token PROVIDER --profile NAME [--json]",
     "Prints a valid access token for the profile, refreshing it first only when it expires within the\n"
     "provider's skew. --json adds expiry, entry id, base URL and credential.\n"},
    {"refresh", cmd_token, "refresh PROVIDER --profile NAME [--force] [--json]",
     "Refreshes the profile's credential if its access token is due (always with --force), following\n"
     "the claim/present/record protocol. Prints no secret.\n"},
    {"recover", cmd_recover, "recover --credential ID (--assume-not-sent | --mark-dead | --rescue)",
     "Resolves a refresh whose outcome is unknown. --assume-not-sent presents the same refresh token once\n"
     "more: safe only if the request never reached the server or the server has a reuse grace window.\n"
     "--mark-dead gives the token up; the credential then needs a new login. --rescue records the server's\n"
     "answer that a refresh kept in a rescue file beside the ledger (<ledger>-rescue-ID-N, 0600) because it\n"
     "could not record it (disk full, read-only ledger), and removes the file.\n"},
    {"report", cmd_report, "report PROVIDER --profile NAME --entry ID --status CODE [--reset-at TIME]",
     "Marks a pool entry exhausted after an API error, for Hermes' cooldown (401: 5 min, others 1 h,\n"
     "a sole entry 1 min unless 402) or until --reset-at.\n"},
    {"pool", cmd_pool, "pool strategy PROVIDER STRATEGY --profile NAME",
     "Sets how the profile picks among its entries: fill_first (default), round_robin, least_used, random.\n"},
};

static void main_help(void)
{
  printf("usage: tokenledger [--db PATH] COMMAND [ARGS]\n\n"
         "Keeps OAuth credentials of Hermes profiles in one SQLite ledger and refreshes them so that a\n"
         "refresh token leaves this machine at most once.\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    printf("  %-11s %s\n", commands[i].name, commands[i].usage);
  printf("\nThe database is --db PATH, else $TOKENLEDGER_DB, else ~/.hermes/tokenledger.db.\n"
         "'tokenledger COMMAND --help' explains a command. Exit codes: 0 ok, 1 failure, 2 usage or invalid\n"
         "input, 3 not found, 4 reuse blocked, 5 needs re-auth, 6 unknown outcome, 7 transient or network,\n"
         "8 busy, 9 insecure file, 10 schema too new, 11 not a tokenledger database, 12 already exists,\n"
         "13 I/O error.\n");
}

int main(int argc, char **argv)
{
  /* This process holds refresh tokens: no core dump of it, no ptrace by other processes of this user. */
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  /* libcurl would write every TLS session key to this file (see http.c, which does the same for any host). */
  unsetenv("SSLKEYLOGFILE");
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--db") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "tokenledger: --db needs a path\n");
        return EXIT_USAGE;
      }
      g_db = argv[++i];
    } else if (strncmp(argv[i], "--db=", 5) == 0) {
      g_db = argv[i] + 5;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      main_help();
      return EXIT_OK;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("tokenledger %s (schema %d)\n", tl_version(), TL_SCHEMA_VERSION);
      return EXIT_OK;
    } else if (argv[i][0] == '-') {
      shown_arg b;
      fprintf(stderr, "tokenledger: unknown option %s; see 'tokenledger --help'\n", shown(&b, argv[i]));
      return EXIT_USAGE;
    } else {
      break;
    }
  }
  if (g_db && !*g_db) {
    fprintf(stderr, "tokenledger: --db needs a path\n");
    return EXIT_USAGE;
  }
  if (i >= argc) {
    main_help();
    return EXIT_USAGE;
  }
  if (strcmp(argv[i], "help") == 0) {
    main_help();
    return EXIT_OK;
  }
  for (size_t k = 0; k < sizeof commands / sizeof *commands; k++) {
    if (strcmp(argv[i], commands[k].name) == 0) {
      g_cmd = commands[k].name;
      return commands[k].fn(&commands[k], argc - i, argv + i);
    }
  }
  shown_arg b;
  fprintf(stderr, "tokenledger: unknown command %s; see 'tokenledger --help'\n", shown(&b, argv[i]));
  return EXIT_USAGE;
}
