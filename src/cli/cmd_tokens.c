/*
 * cmd_tokens.c - the commands around one grant: token, refresh, login,
 * recover, report, check-rt.
 *
 * Invariants: `token` is the one command that prints a secret, and only a
 * printable one; a refresh token read by check-rt (a file, a pipe, or typed
 * at a terminal with echo off) is burned after use; a terminal's echo is
 * restored on every way out, a stop signal included.
 */
#include "cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

/* Printable ASCII (RFC 6749 VSCHAR): what a token may hold. */
#define PRINTABLE " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"

/* --profile, else the ledger's 'default' profile; NULL (and a usage error printed) if neither. */
static const char *profile_or_default(tl_store *s, const cli_args *a)
{
  const char *p = cli_default_profile(s, opt_str(a, "profile"));
  if (!p)
    usage_error("%s", "--profile NAME is required: the ledger has no 'default' profile");
  return p;
}

/* ---- token and refresh -------------------------------------------------------- */

static int token_json(const cli_args *a, const tl_token *t, int is_refresh)
{
  tl_error err = {0};
  if (!is_refresh) {
    char *text = NULL;
    tl_status rc = tl_token_json(&text, t, &err);
    if (rc != TL_OK)
      return tl_cli_fail(&err, rc);
    puts(text);
    tl_secret_free(text);
    return EXIT_OK;
  }
  /* `refresh --json` reports without the token: printing secrets is token's job. */
  char id[32], exp[32];
  snprintf(id, sizeof id, "%lld", (long long)t->credential);
  snprintf(exp, sizeof exp, "%lld", (long long)t->expires_at_ms);
  const char *keys[] = {"credential", "refreshed", "expires_at_ms"},
             *vals[] = {id, t->refreshed ? "true" : "false", t->expires_at_ms ? exp : NULL};
  const int num[] = {1, 1, 1};
  (void)a;
  return cli_print_object(3, keys, vals, num);
}

static int run_token(const cli_cmd *c, cli_args *a)
{
  int is_refresh = strcmp(c->name, "refresh") == 0;
  const char *provider = a->pos[0];
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, opt_str(a, "profile"));
  if (orc >= 0)
    return orc;
  const char *profile = profile_or_default(s, a);
  if (!profile) {
    tl_store_free(s);
    return EXIT_USAGE;
  }
  tl_store_set_actor(s, profile, c->name);
  tl_token *t = NULL;
  tl_error err = {0};
  tl_status rc = tl_token_get(&t, s, profile, provider, is_refresh && opt_on(a, "force") ? TL_REFRESH_FORCE : 0, &err);
  int code = EXIT_OK;
  if (rc != TL_OK) {
    cli_ctx ctx = {s, profile, provider, 0};
    code = cli_fail(&ctx, &err, rc);
  } else if (opt_on(a, "json")) {
    code = token_json(a, t, is_refresh);
  } else if (is_refresh) {
    char left[32];
    int64_t secs = t->expires_at_ms ? (t->expires_at_ms - cli_now_ms()) / 1000 : 0;
    /* Forced and not refreshed: another process refreshed it while this one waited (single flight). */
    const char *what = t->refreshed         ? "refreshed"
                       : opt_on(a, "force") ? "was refreshed by another process just now (not sent again)"
                                            : "already fresh (use --force to refresh anyway)";
    printf("credential %lld %s; access token valid for %s\n", (long long)t->credential, what,
           t->expires_at_ms ? cli_duration(left, sizeof left, secs) : "an unknown time");
  } else if (strspn(t->access_token, PRINTABLE) != strlen(t->access_token)) {
    /* The library never hands out such a token; a terminal must never receive one either. */
    fprintf(stderr, "tokenledger: the access token holds characters that are not printable ASCII; not printing it\n");
    code = EXIT_FAILURE_;
  } else {
    puts(t->access_token);
  }
  tl_token_free(t);
  tl_store_free(s);
  return code;
}

static const cli_opt token_opts[] = {
    {"profile", "NAME", "the profile (default: 'default', the Hermes root, when the ledger has it)", 0},
    {"json", NULL,
     "one JSON object: access_token, expires_at, expires_at_ms, entry_id, base_url, credential, refreshed", 0},
    {0}};
const cli_cmd cli_cmd_token = {
    "token",
    run_token,
    "PROVIDER",
    1,
    1,
    "print a valid access token, refreshing it first only when due",
    "Prints a valid access token for the profile, refreshing it first only when it expires within the provider's\n"
    "skew, so scripts and health checks never touch the refresh endpoint themselves. The only command that\n"
    "prints a secret.\n",
    token_opts,
    NULL};

static const cli_opt refresh_opts[] = {
    {"profile", "NAME", "the profile (default: 'default', the Hermes root, when the ledger has it)", 0},
    {"force", NULL, "refresh even if the access token is still fresh", 0},
    {"json", NULL, "one JSON object: credential, refreshed, expires_at_ms (never the token)", 0},
    {0}};
const cli_cmd cli_cmd_refresh = {
    "refresh",
    run_token,
    "PROVIDER",
    1,
    1,
    "refresh a profile's credential when due (always with --force)",
    "Refreshes the profile's credential if its access token is due (always with --force), following the\n"
    "claim/present/record protocol: the refresh token leaves this machine at most once. Prints no secret.\n",
    refresh_opts,
    NULL};

/* ---- login ---------------------------------------------------------------------- */

static void show_code(void *ud, const char *uri, const char *complete, const char *code, int expires_in)
{
  (void)ud;
  fprintf(stderr, "To log in, open %s and enter the code %s (valid %d s)\n", complete ? complete : uri, code,
          expires_in);
  if (isatty(STDERR_FILENO))
    progress_begin("waiting for approval", cli_now_ms() + (int64_t)expires_in * 1000);
  else
    fprintf(stderr, "Waiting for approval...\n");
}

/* login --credential N: one login in place of a dead grant, for every profile and shared store that used it. */
static int login_replace(cli_args *a, const char *provider)
{
  int64_t dead = 0, id = 0;
  int prc = parse_int64(&dead, opt_str(a, "credential"), "--credential");
  if (prc >= 0)
    return prc;
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_report *r = NULL;
  tl_error err = {0};
  char label[512] = "", profiles[1024] = "", its[130] = "";
  if (tl_credential_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r); i++)
      if (strtoll(tl_report_get(r, i, "credential"), NULL, 10) == dead) {
        const char *l = tl_report_get(r, i, "label"), *f = tl_report_get(r, i, "profiles");
        snprintf(its, sizeof its, "%s", tl_report_get(r, i, "provider"));
        snprintf(label, sizeof label, "%s", l ? l : "");
        snprintf(profiles, sizeof profiles, "%s", f ? f : "");
      }
  tl_report_free(r);
  if (*its && strcmp(its, provider) != 0) {
    tl_store_free(s);
    return usage_error("credential %lld is a %s grant, not %s", (long long)dead, its, provider);
  }
  tl_store_set_actor(s, NULL, "login");
  tl_status rc = tl_login_replace(&id, s, dead, show_code, NULL, &err);
  progress_end();
  cli_ctx ctx = {s, NULL, provider, dead};
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
  } else {
    char idt[32], deadt[32];
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    snprintf(deadt, sizeof deadt, "%lld", (long long)dead);
    const char *keys[] = {"credential", "replaced", "provider", "label", "profiles"},
               *vals[] = {idt, deadt, provider, *label ? label : NULL, profiles};
    const int num[] = {1, 1, 0, 0, 0};
    code = cli_result(a, 5, keys, vals, num,
                      "logged in: credential %lld%s%s%s replaces credential %lld for %s and their Hermes files",
                      (long long)id, *label ? " (" : "", label, *label ? ")" : "", (long long)dead,
                      *profiles ? profiles : "its profiles");
  }
  tl_store_free(s);
  return code;
}

static int run_login(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *provider = a->pos[0];
  if (opt_str(a, "credential"))
    return login_replace(a, provider);
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, opt_str(a, "profile"));
  if (orc >= 0)
    return orc;
  const char *profile = profile_or_default(s, a);
  if (!profile) {
    tl_store_free(s);
    return EXIT_USAGE;
  }
  tl_store_set_actor(s, profile, "login");
  tl_error err = {0};
  int64_t id = 0;
  tl_status rc = tl_login(&id, s, profile, provider, show_code, NULL, &err);
  progress_end();
  cli_ctx ctx = {s, profile, provider, 0};
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
    if (id)
      fprintf(stderr,
              "hint: the new grant is stored as credential %lld; once that is fixed, 'tokenledger sync --profile %s' "
              "writes it into Hermes' files\n",
              (long long)id, profile);
    else if (rc == TL_ENOTFOUND && strstr(err.message, "device"))
      fprintf(stderr,
              "hint: give the provider its endpoints with 'tokenledger provider set %s --device-url URL "
              "--token-url URL --client-id ID'\n",
              provider);
  } else {
    char idt[32];
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    const char *keys[] = {"credential", "profile", "provider"}, *vals[] = {idt, profile, provider};
    const int num[] = {1, 0, 0};
    code = cli_result(a, 3, keys, vals, num, "logged in: credential %lld stored for profile %s (%s)", (long long)id,
                      profile, provider);
  }
  tl_store_free(s);
  return code;
}

static const cli_opt login_opts[] = {
    {"profile", "NAME", "the profile that gets the grant (default: 'default' when the ledger has it)", OPT_GROUP(1)},
    {"credential", "ID",
     "log in in place of this dead credential, for every profile and shared store that used it (one grant)",
     OPT_GROUP(1)},
    CLI_OPT_JSON,
    {0}};
const cli_cmd cli_cmd_login = {
    "login",
    run_login,
    "PROVIDER",
    1,
    1,
    "log in with the device flow and store the new grant",
    "Logs in with the device authorization grant (RFC 8628): prints where to approve the login, waits (showing\n"
    "the time left on a terminal), and stores the new grant in the profile's pool, in place of a dead one, and\n"
    "in the profile's Hermes files. Use it when a credential needs a new login. With --credential ID, the one\n"
    "new grant replaces the dead credential ID in every profile and shared store that used it, keeping its\n"
    "label: a grant several profiles shared stays one grant.\n",
    login_opts,
    NULL};

/* ---- recover --------------------------------------------------------------------- */

static int run_recover(const cli_cmd *c, cli_args *a)
{
  (void)c;
  int64_t id = 0;
  int prc = parse_int64(&id, opt_str(a, "credential"), "--credential");
  if (prc >= 0)
    return prc;
  int retry = opt_on(a, "assume-not-sent"), rescue = opt_on(a, "rescue");
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_error err = {0};
  tl_token *t = NULL;
  tl_status rc = tl_recover(&t, s, id,
                            retry    ? TL_RECOVER_RETRY
                            : rescue ? TL_RECOVER_RESCUE
                                     : TL_RECOVER_MARK_DEAD,
                            &err);
  tl_token_free(t);
  cli_ctx ctx = {s, NULL, NULL, id};
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
  } else {
    char idt[32];
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    const char *action = retry ? "retried" : rescue ? "rescued" : "marked_dead";
    const char *keys[] = {"credential", "action"}, *vals[] = {idt, action};
    const int num[] = {1, 0};
    if (retry)
      code =
          cli_result(a, 2, keys, vals, num,
                     "credential %lld recovered: its refresh token was presented once more and rotated", (long long)id);
    else if (rescue)
      code = cli_result(a, 2, keys, vals, num,
                        "credential %lld recovered: the server's answer kept in the rescue file is on record, and "
                        "the file is removed",
                        (long long)id);
    else {
      char advice[900];
      cli_login_advice(advice, sizeof advice, s, id, NULL, NULL);
      code = cli_result(a, 2, keys, vals, num, "credential %lld marked dead: %s", (long long)id, advice);
    }
  }
  tl_store_free(s);
  return code;
}

static const cli_opt recover_opts[] = {
    {"credential", "ID", "the credential whose last refresh has an unknown outcome", OPT_REQUIRED},
    {"assume-not-sent", NULL,
     "present the same refresh token once more: safe only if the request cannot have reached the server, or "
     "the server has a reuse grace window",
     OPT_REQUIRED | OPT_GROUP(1)},
    {"mark-dead", NULL, "give the refresh token up; the credential then needs a new login",
     OPT_REQUIRED | OPT_GROUP(1)},
    {"rescue", NULL, "record the server's answer a refresh kept in a rescue file, and remove the file",
     OPT_REQUIRED | OPT_GROUP(1)},
    CLI_OPT_JSON,
    {0}};
const cli_cmd cli_cmd_recover = {
    "recover",
    run_recover,
    NULL,
    0,
    0,
    "resolve a refresh whose outcome is unknown",
    "Resolves a refresh whose outcome is unknown (the answer was lost: a timeout, a reset, a crash). Such a\n"
    "refresh token is never presented again automatically. When the request may have reached the server (a\n"
    "timeout or a reset after sending: the usual case), the server may have rotated the token, and presenting it\n"
    "again is reuse, for which the server revokes the login: --mark-dead and a new login are the safe way out.\n"
    "--assume-not-sent is for a request that cannot have reached the server; the hint after a failure, 'status'\n"
    "and 'doctor' say which case the ledger shows. --rescue takes back an answer a refresh kept in a rescue file\n"
    "beside the ledger (<ledger>-rescue-ID-N, 0600) because it could not record it (disk full, read-only\n"
    "ledger).\n",
    recover_opts,
    NULL};

/* ---- report ---------------------------------------------------------------------- */

/* Until when the entry is skipped, from the status report (NULL if not cooling down). */
static char *cooling_until(tl_store *s, const char *profile, const char *provider, const char *entry)
{
  tl_report *r = NULL;
  tl_error err = {0};
  char *until = NULL;
  if (tl_status_report(&r, s, profile, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !until; i++) {
      const char *p = tl_report_get(r, i, "provider"), *e = tl_report_get(r, i, "entry");
      const char *u = tl_report_get(r, i, "cooling_until");
      if (p && e && u && strcmp(p, provider) == 0 && strcmp(e, entry) == 0)
        until = strdup(u);
    }
  tl_report_free(r);
  return until;
}

static int run_report(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *provider = a->pos[0], *profile = opt_str(a, "profile"), *entry = opt_str(a, "entry"),
             *status = opt_str(a, "status"), *reset = opt_str(a, "reset-at");
  int64_t code = 0, at = 0;
  int prc;
  if ((prc = parse_int64(&code, status, "--status")) >= 0)
    return prc;
  if (code < 100 || code > 599)
    return usage_error("--status %s is not an HTTP status (100-599)", shown(&(shown_arg){{0}}, status));
  tl_error err = {0};
  tl_status rc;
  cli_ctx ctx = {NULL, profile, provider, 0};
  if (reset && (rc = tl_time_parse(&at, reset, &err)) != TL_OK)
    return cli_fail(&ctx, &err, rc);
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0)
    return orc;
  ctx.store = s;
  rc = tl_entry_report(s, profile, provider, entry, (int)code, at, &err);
  int out;
  if (rc != TL_OK) {
    out = cli_fail(&ctx, &err, rc);
  } else {
    char *until = cooling_until(s, profile, provider, entry), when[40], left[32];
    int64_t ms = 0;
    tl_error ignore = {0};
    if (until && tl_time_parse(&ms, until, &ignore) != TL_OK)
      ms = 0;
    const char *keys[] = {"profile", "provider", "entry", "status", "cooldown_until"},
               *vals[] = {profile, provider, entry, "exhausted", until};
    out = cli_result(a, 5, keys, vals, NULL, "entry %s of profile %s marked exhausted; it cools down until %s (%s)",
                     entry, profile, until ? cli_time(when, sizeof when, until) : "-",
                     ms ? cli_duration(left, sizeof left, (ms - cli_now_ms() + 999) / 1000) : "-");
    free(until);
  }
  tl_store_free(s);
  return out;
}

static const cli_opt report_opts[] = {
    {"profile", "NAME", "the profile", OPT_REQUIRED},
    {"entry", "ID", "the pool entry's id (as 'tokenledger status' shows it)", OPT_REQUIRED},
    {"status", "CODE", "the HTTP status the API answered (401, 402, 429, ...)", OPT_REQUIRED},
    {"reset-at", "TIME", "cool down until then (what the API said), instead of Hermes' default", 0},
    CLI_OPT_JSON,
    {0}};
const cli_cmd cli_cmd_report = {
    "report",
    run_report,
    "PROVIDER",
    1,
    1,
    "mark a pool entry exhausted after an API error (cooldown)",
    "Marks a pool entry exhausted after an API error, for Hermes' cooldown (401: 5 min, others 1 h, a sole entry\n"
    "1 min unless 402) or until --reset-at, and says until when it cools down. 'token' skips it meanwhile.\n",
    report_opts,
    NULL};

/* ---- check-rt ---------------------------------------------------------------------- */

static struct termios g_saved;
static volatile sig_atomic_t g_echo_off;

static void restore_echo(int sig)
{
  if (g_echo_off)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* A token typed at the terminal, echo off; new, burn with tl_secret_free. */
static tl_status read_typed(char **out, tl_error *err)
{
  char line[16400];
  fprintf(stderr, "Paste the refresh token (it is not shown), then press Enter: ");
  fflush(stderr);
  struct termios t;
  int echo = tcgetattr(STDIN_FILENO, &g_saved) == 0;
  if (echo) {
    t = g_saved;
    t.c_lflag &= ~(tcflag_t)ECHO;
    signal(SIGINT, restore_echo);
    signal(SIGTERM, restore_echo);
    signal(SIGHUP, restore_echo);
    g_echo_off = tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0;
  }
  char *got = fgets(line, sizeof line, stdin);
  if (g_echo_off)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved);
  g_echo_off = 0;
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  fputc('\n', stderr);
  tl_status rc = TL_OK;
  if (!got) {
    tl_error_clear(err);
    snprintf(err->message, sizeof err->message, "check-rt: no token was typed");
    err->code = rc = TL_EINVAL;
  } else {
    size_t n = strcspn(line, "\r\n");
    line[n] = '\0';
    char *p = line;
    while (*p == ' ' || *p == '\t')
      p++;
    n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      p[--n] = '\0';
    if (!n) {
      tl_error_clear(err);
      snprintf(err->message, sizeof err->message, "check-rt: no token was typed");
      err->code = rc = TL_EINVAL;
    } else if (!(*out = strdup(p))) {
      rc = TL_ENOMEM;
    }
  }
  tl_burn(line, sizeof line);
  return rc;
}

/* A check-rt verdict as the status it stands for, so its exit code comes from the one mapping (output.c). */
static tl_status verdict_status(const char *verdict)
{
  if (strcmp(verdict, "spent") == 0)
    return TL_EREUSE;
  if (strcmp(verdict, "unknown_to_ledger") == 0)
    return TL_ENOTFOUND;
  if (strcmp(verdict, "unknown_outcome") == 0)
    return TL_EUNKNOWN;
  return TL_OK;
}

static int run_check_rt(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *file = opt_str(a, "refresh-token-file");
  if (!file)
    file = "-";
  int mrc = missing_path("--refresh-token-file", file, NULL);
  if (mrc >= 0)
    return mrc;
  tl_error err = {0};
  char *rt = NULL;
  tl_status rc =
      strcmp(file, "-") == 0 && isatty(STDIN_FILENO) ? read_typed(&rt, &err) : tl_secret_read(&rt, file, &err);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0) {
    tl_secret_free(rt);
    return orc;
  }
  tl_report *r = NULL;
  rc = tl_rt_check(&r, s, rt, &err);
  tl_secret_free(rt);
  int code = EXIT_OK;
  if (rc != TL_OK) {
    cli_ctx ctx = {s, NULL, NULL, 0};
    code = cli_fail(&ctx, &err, rc);
    tl_store_free(s);
    return code;
  }
  const char *verdict = tl_report_get(r, 0, "verdict");
  code = tl_cli_exit_code(verdict_status(verdict));
  if (opt_on(a, "json")) {
    cli_out o = {1, 0, NULL};
    cli_print(r, NULL, &o, TL_JSON_OBJECT);
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
      if (code == EXIT_REUSE || code == EXIT_UNKNOWN)
        fprintf(stderr, "hint: 'tokenledger lineage --credential %s --tree' shows the whole family\n", G("credential"));
    }
#undef G
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt check_rt_opts[] = {
    {"refresh-token-file", "FILE",
     "read the token from FILE (default: standard input; asked for, not echoed, on a terminal)", 0},
    CLI_OPT_JSON,
    {0}};
const cli_cmd cli_cmd_check_rt = {
    "check-rt",
    run_check_rt,
    NULL,
    0,
    0,
    "say what the ledger knows of a refresh token (live, spent, unknown)",
    "Reads a refresh token (standard input by default: on a terminal it asks for it and does not echo it) and\n"
    "says what the ledger knows of it: live, spent (when, by whom, in which generation) or unknown.\n\n"
    "Exit 0: live (current or presented); 4: spent; 3: unknown to the ledger; 6: outcome unknown.\n",
    check_rt_opts,
    NULL};
