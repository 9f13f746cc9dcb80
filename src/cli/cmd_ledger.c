/*
 * cmd_ledger.c - the commands that manage the ledger itself: init, profile,
 * provider, credential, pool, doctor, compact; and opening the ledger.
 *
 * Invariants: a bad argument is refused before the ledger is opened, so it
 * changes nothing; a secret is read from a file or standard input only
 * (tl_secret_read) and burned after use; every failure goes through cli_fail,
 * which adds what to run next.
 */
#include "cli.h"

#include <signal.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- opening the ledger --------------------------------------------------- */

const char *cli_db_path(char *buf, size_t n)
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

/* A stop signal while a refresh token is at the server: the library waits for the answer; say so at once. */
static void stop_notice(void *ud, int signo, int64_t wait_ms)
{
  (void)ud;
  progress_end();
  fprintf(stderr,
          "tokenledger: %s received while a refresh token is at the server: waiting up to %lld s for the answer so "
          "that the new token is not lost; stopping then\n",
          signo == SIGINT    ? "interrupt (SIGINT)"
          : signo == SIGTERM ? "SIGTERM"
          : signo == SIGHUP  ? "SIGHUP"
                             : "SIGQUIT",
          (long long)((wait_ms + 999) / 1000));
}

int cli_open(tl_store **out, unsigned flags, const char *profile)
{
  char buf[4096];
  tl_error err = {0};
  const char *path = cli_db_path(buf, sizeof buf);
  if (!path) {
    fprintf(stderr, "tokenledger: no database: give --db PATH or set TOKENLEDGER_DB (HOME is not set)\n");
    return EXIT_USAGE;
  }
  tl_status rc = tl_store_open(out, path, flags, &err);
  if (rc != TL_OK) {
    cli_ctx ctx = {0};
    return cli_fail(&ctx, &err, rc);
  }
  tl_store_set_actor(*out, profile, g_cmd);
  tl_store_set_progress(*out, progress_hook, NULL);
  tl_store_set_stop_notice(*out, stop_notice, NULL);
  return -1;
}

const char *cli_default_profile(tl_store *s, const char *given)
{
  if (given)
    return given;
  tl_report *r = NULL;
  tl_error err = {0};
  const char *found = NULL;
  if (tl_profile_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !found; i++)
      if (strcmp(tl_report_get(r, i, "name"), "default") == 0)
        found = "default";
  tl_report_free(r);
  return found;
}

/* Prints a report and frees everything. */
static int finish(tl_store *s, tl_status rc, tl_report *r, const tl_error *err, const cli_ctx *ctx, const cli_col *spec,
                  const cli_out *o, unsigned jflags)
{
  int code = rc == TL_OK ? cli_print(r, spec, o, jflags) : cli_fail(ctx, err, rc);
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

/* A whole-ledger list command: check the columns asked for, open the ledger, list, print. */
static int run_list(cli_args *a, const cli_col *cols, tl_status (*list)(tl_report **, tl_store *, tl_error *))
{
  cli_out o = cli_out_of(a);
  int prc = cli_check_columns(&o, cols);
  if (prc >= 0)
    return prc;
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = list(&r, s, &err);
  cli_ctx ctx = {s, NULL, NULL, 0};
  return finish(s, rc, r, &err, &ctx, cols, &o, 0);
}

/* ---- init ------------------------------------------------------------------- */

static int run_init(const cli_cmd *c, cli_args *a)
{
  (void)c;
  tl_store *s = NULL;
  int orc = cli_open(&s, TL_OPEN_CREATE, NULL);
  if (orc >= 0)
    return orc;
  char buf[4096], ver[16];
  const char *path = cli_db_path(buf, sizeof buf);
  tl_store_free(s);
  snprintf(ver, sizeof ver, "%d", TL_SCHEMA_VERSION);
  if (opt_on(a, "json")) {
    const char *keys[] = {"ledger", "schema_version"}, *vals[] = {path, ver};
    const int num[] = {0, 1};
    return cli_print_object(2, keys, vals, num);
  }
  char shown_path[4096 * 6 + 2];
  tl_text_escape(shown_path, sizeof shown_path, path); /* a path may hold terminal controls */
  printf("ledger ready at %s (schema version %d)\n", shown_path, TL_SCHEMA_VERSION);
  return EXIT_OK;
}

static const cli_opt init_opts[] = {CLI_OPT_JSON, {0}};
const cli_cmd cli_cmd_init = {"init",
                              run_init,
                              NULL,
                              0,
                              0,
                              "create the ledger (directory 0700, file 0600) or migrate an existing one",
                              "Creates the ledger (directory 0700, file 0600, neither following a symbolic link) or "
                              "migrates an existing one forward. Every other command needs it (import creates it "
                              "too).\n",
                              init_opts,
                              NULL};

/* ---- profile ---------------------------------------------------------------- */

static int profile_failed(const cli_args *a, tl_store *s, const tl_error *err, tl_status rc, const char *name,
                          const char *home)
{
  cli_ctx ctx = {s, name, NULL, 0};
  int code = cli_fail(&ctx, err, rc);
  if (rc == TL_ENOTFOUND && home && !opt_on(a, "create") && strstr(err->message, "profile home"))
    fprintf(stderr, "hint: add --create to make the directory (0700)\n");
  return code;
}

static int run_profile_add(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *name = a->pos[0], *home = opt_str(a, "home");
  int create = opt_on(a, "create");
  if (create && !home)
    return usage_error("%s", "--create needs --home DIR");
  int mrc = home && !create ? missing_path("--home", home, "; add --create to make it") : -1;
  if (mrc >= 0)
    return mrc;
  tl_store *s = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, name);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_profile_add(s, name, create ? NULL : home, &err);
  if (rc == TL_OK && create && (rc = tl_profile_set_home(s, name, home, 1, &err)) != TL_OK) {
    tl_error ignore = {0};
    tl_profile_remove(s, name, &ignore); /* all or nothing */
  }
  int code;
  if (rc != TL_OK) {
    code = profile_failed(a, s, &err, rc, name, home);
  } else {
    const char *keys[] = {"profile", "action", "home"}, *vals[] = {name, "added", home};
    code = cli_result(a, 3, keys, vals, NULL, "profile %s added%s", name, home ? " with its Hermes home" : "");
  }
  tl_store_free(s);
  return code;
}

static int run_profile_set_home(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *name = a->pos[0], *home = a->npos > 1 ? a->pos[1] : NULL;
  int clear = opt_on(a, "clear"), create = opt_on(a, "create");
  if (!!home == clear)
    return usage_error("%s", "give the home directory, or --clear");
  if (clear && create)
    return usage_error("%s", "--create and --clear exclude each other");
  int mrc = home && !create ? missing_path("set-home", home, "; add --create to make it") : -1;
  if (mrc >= 0)
    return mrc;
  tl_store *s = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, name);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_profile_set_home(s, name, home, create, &err);
  int code;
  if (rc != TL_OK) {
    code = profile_failed(a, s, &err, rc, name, home);
  } else {
    const char *keys[] = {"profile", "action", "home"}, *vals[] = {name, clear ? "home_cleared" : "home_set", home};
    code = clear ? cli_result(a, 3, keys, vals, NULL, "profile %s has no Hermes home now", name)
                 : cli_result(a, 3, keys, vals, NULL, "profile %s: Hermes home set", name);
  }
  tl_store_free(s);
  return code;
}

static const cli_col profile_cols[] = {{"name", NULL, COL_DEFAULT | COL_SHRINK},
                                       {"home", NULL, COL_DEFAULT | COL_PATH},
                                       {"entries", NULL, COL_DEFAULT},
                                       {"strict", NULL, COL_DEFAULT | COL_BOOL},
                                       {"created", NULL, COL_DEFAULT | COL_TIME | COL_EXTRA},
                                       {0}};

static int run_profile_list(const cli_cmd *c, cli_args *a)
{
  (void)c;
  return run_list(a, profile_cols, tl_profile_list);
}

static int run_profile_rm(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *name = a->pos[0];
  tl_store *s = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, name);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_profile_remove(s, name, &err);
  cli_ctx ctx = {s, name, NULL, 0};
  const char *keys[] = {"profile", "action"}, *vals[] = {name, "removed"};
  int code = rc != TL_OK
                 ? cli_fail(&ctx, &err, rc)
                 : cli_result(a, 2, keys, vals, NULL,
                              "profile %s removed (its credentials and their lineage stay in the ledger)", name);
  tl_store_free(s);
  return code;
}

/* Is the profile's strict flag as asked? (after a failure: was the switch recorded?) */
static int strict_is(tl_store *s, const char *name, int on)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int yes = 0;
  if (tl_profile_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r); i++)
      if (strcmp(tl_report_get(r, i, "name"), name) == 0)
        yes = strcmp(tl_report_get(r, i, "strict"), on ? "1" : "0") == 0;
  tl_report_free(r);
  return yes;
}

static int strict_failed(tl_store *s, const tl_error *err, tl_status rc, const char *name, int on)
{
  cli_ctx ctx = {s, name, NULL, 0};
  int code = cli_fail(&ctx, err, rc);
  if (on && strict_is(s, name, on))
    fprintf(stderr,
            "hint: the switch is recorded; once that is fixed, 'tokenledger sync --profile %s' writes it into "
            "Hermes' files ('tokenledger doctor' shows it unfinished until then)\n",
            name);
  else if (!on && strict_is(s, name, 1))
    fprintf(stderr, "hint: nothing was switched; once that is fixed, run 'tokenledger profile strict %s off' again\n",
            name);
  else if (rc == TL_ENOTFOUND && on && strstr(err->message, "serve"))
    fprintf(stderr, "hint: start 'tokenledger serve' once (or 'systemctl --user start tokenledger-serve'), then "
                    "switch again\n");
  return code;
}

static int run_profile_strict(const cli_cmd *c, cli_args *a)
{
  (void)c;
  int all = opt_on(a, "all");
  if (a->npos != (all ? 1 : 2))
    return usage_error("%s", "expected 'profile strict NAME on|off' or 'profile strict --all on|off'");
  const char *sw = a->pos[a->npos - 1];
  if (strcmp(sw, "on") != 0 && strcmp(sw, "off") != 0)
    return usage_error("%s", "the switch is 'on' or 'off'");
  tl_store *s = NULL;
  tl_error err = {0};
  tl_report *r = NULL;
  int orc = cli_open(&s, 0, all ? NULL : a->pos[0]);
  if (orc >= 0)
    return orc;
  int on = strcmp(sw, "on") == 0, code = EXIT_OK, done = 0;
  tl_status rc = all ? tl_profile_list(&r, s, &err) : TL_OK;
  size_t n = all ? (r ? tl_report_rows(r) : 0) : 1;
  const char *name = NULL;
  for (size_t i = 0; rc == TL_OK && i < n; i++) {
    name = all ? tl_report_get(r, i, "name") : a->pos[0];
    if (all && !tl_report_get(r, i, "home"))
      continue; /* --all: the profiles whose Hermes files tokenledger keeps */
    if ((rc = tl_profile_strict(s, name, on, &err)) != TL_OK)
      break;
    done++;
    const char *keys[] = {"profile", "strict"}, *vals[] = {name, on ? "true" : "false"};
    const int num[] = {0, 1};
    if (cli_out_of(a).json) {
      code = cli_print_object(2, keys, vals, num);
    } else {
      printf(on ? "profile %s: strict mode on ('tokenledger serve' answers its refreshes)\n"
                : "profile %s: strict mode off\n",
             name);
    }
  }
  if (rc != TL_OK)
    code = name ? strict_failed(s, &err, rc, name, on) : cli_fail(&(cli_ctx){s, NULL, NULL, 0}, &err, rc);
  else if (all && !done)
    fprintf(stderr, "tokenledger: no profile has a Hermes home; nothing switched\n");
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt profile_add_opts[] = {
    {"home", "DIR", "the profile's Hermes home (its auth.json is kept in step); must exist unless --create", 0},
    {"create", NULL, "create DIR (0700) if it does not exist", 0},
    CLI_OPT_JSON,
    {0}};
static const cli_opt profile_set_home_opts[] = {{"create", NULL, "create DIR (0700) if it does not exist", 0},
                                                {"clear", NULL, "forget the profile's home (no DIR then)", 0},
                                                CLI_OPT_JSON,
                                                {0}};
static const cli_opt profile_list_opts[] = {CLI_OPTS_TABLE, {0}};
static const cli_opt profile_rm_opts[] = {CLI_OPT_JSON, {0}};
static const cli_opt profile_strict_opts[] = {
    {"all", NULL, "every profile with a Hermes home (a whole root), instead of NAME", 0}, CLI_OPT_JSON, {0}};

static const cli_cmd profile_subs[] = {
    {"add", run_profile_add, "NAME", 1, 1, "add a profile, optionally with its Hermes home",
     "Adds a profile. NAME follows Hermes' rule ^[a-z0-9][a-z0-9_-]{0,63}$ (hermes, test, tmp, root and sudo are\n"
     "reserved); 'default' is the Hermes root. Its home is the Hermes directory whose auth.json sync, export and\n"
     "every refresh keep in step; importing a home or a root sets it too.\n",
     profile_add_opts, NULL},
    {"set-home", run_profile_set_home, "NAME [DIR]", 1, 2, "set or clear a profile's Hermes home",
     "Sets the profile's Hermes home to DIR (an existing directory of yours; --create makes it 0700), or forgets\n"
     "it with --clear. From then on sync, export and every refresh keep DIR/auth.json in step.\n",
     profile_set_home_opts, NULL},
    {"list", run_profile_list, NULL, 0, 0, "list the profiles: home, pool entries, strict mode",
     "Lists the profiles with their Hermes home, number of pool entries and strict mode.\n", profile_list_opts, NULL},
    {"rm", run_profile_rm, "NAME", 1, 1, "remove a profile (its credentials and lineage stay)",
     "Removes a profile and its pool entries. Its credentials and their lineage stay in the ledger: fingerprints\n"
     "are never forgotten.\n",
     profile_rm_opts, NULL},
    {"strict", run_profile_strict, "[NAME] on|off", 1, 2, "switch strict mode (tokenledger serve) on or off",
     "Switches strict mode: 'tokenledger serve' answers the profile's refreshes, and its Hermes files (and the\n"
     "shared store) hold only a surrogate refresh token and serve's loopback URL, so the real refresh token never\n"
     "leaves the ledger; off writes the real ones back. serve must have run once for the ledger. --all switches\n"
     "every profile with a Hermes home.\n",
     profile_strict_opts, NULL},
    {0}};

const cli_cmd cli_cmd_profile = {"profile",
                                 NULL,
                                 NULL,
                                 0,
                                 0,
                                 "add, list, remove profiles; set their home; strict mode",
                                 "Manages Hermes profiles: the root ('default') and each profiles/<name>.\n",
                                 NULL,
                                 profile_subs};

/* ---- provider --------------------------------------------------------------- */

static int run_provider_set(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *name = a->pos[0], *skew = opt_str(a, "skew"), *grace = opt_str(a, "grace");
  int64_t sk = -1, gr = -1;
  int prc;
  if (skew && (prc = parse_int64(&sk, skew, "--skew")) >= 0)
    return prc;
  if (grace && (prc = parse_int64(&gr, grace, "--grace")) >= 0)
    return prc;
  if (sk > 86400 || gr > 86400)
    return usage_error("%s", "--skew and --grace are at most 86400 seconds");
  tl_provider p = {.name = name,
                   .token_url = opt_str(a, "token-url"),
                   .device_url = opt_str(a, "device-url"),
                   .client_id = opt_str(a, "client-id"),
                   .rt_header = opt_on(a, "rt-in-body") ? "" : opt_str(a, "rt-header"),
                   .scope = opt_str(a, "scope"),
                   .skew_s = (int)sk,
                   .grace_s = (int)gr};
  tl_store *s = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  int exists = cli_has_provider(s, name);
  if (!exists && (!p.token_url || !p.client_id)) {
    int code =
        usage_error("provider %s is new: give --token-url URL and --client-id ID", shown(&(shown_arg){{0}}, name));
    tl_report *r = NULL;
    if (tl_provider_list(&r, s, &err) == TL_OK) {
      const char *names[64];
      size_t n = 0;
      for (size_t i = 0; i < tl_report_rows(r) && n < 64; i++)
        names[n++] = tl_report_get(r, i, "name");
      cli_did_you_mean("provider '", "'", name, names, n);
    }
    tl_report_free(r);
    tl_store_free(s);
    return code;
  }
  tl_status rc = tl_provider_set(s, &p, &err);
  cli_ctx ctx = {s, NULL, name, 0};
  const char *keys[] = {"provider", "action"}, *vals[] = {name, exists ? "updated" : "added"};
  int code = rc != TL_OK ? cli_fail(&ctx, &err, rc) : cli_result(a, 2, keys, vals, NULL, "provider %s saved", name);
  tl_store_free(s);
  return code;
}

static const cli_col provider_cols[] = {{"name", NULL, COL_DEFAULT | COL_SHRINK},
                                        {"refreshes", NULL, COL_DEFAULT | COL_STATE},
                                        {"token_url", NULL, COL_DEFAULT | COL_SHRINK},
                                        {"client_id", NULL, COL_DEFAULT | COL_SHRINK},
                                        {"rt_in", NULL, COL_DEFAULT | COL_SHRINK},
                                        {"skew_s", "skew", COL_DEFAULT | COL_EXTRA},
                                        {"grace_s", "grace", COL_DEFAULT | COL_EXTRA},
                                        {"credentials", "grants", COL_DEFAULT},
                                        {"keys", NULL, COL_DEFAULT | COL_OPTIONAL},
                                        {"device_url", NULL, 0},
                                        {"scope", NULL, 0},
                                        {0}};

static int run_provider_list(const cli_cmd *c, cli_args *a)
{
  (void)c;
  return run_list(a, provider_cols, tl_provider_list);
}

static const cli_opt provider_set_opts[] = {
    {"token-url", "URL", "the token endpoint: https, or http to 127.0.0.0/8, ::1 or localhost (new provider: required)",
     0},
    {"device-url", "URL", "the device authorization endpoint (RFC 8628), for 'tokenledger login'", 0},
    {"client-id", "ID", "the OAuth client id sent with every grant (new provider: required)", 0},
    {"rt-header", "NAME", "send the refresh token in this header (Nous: x-nous-refresh-token)", OPT_GROUP(1)},
    {"rt-in-body", NULL, "send the refresh token in the form field refresh_token", OPT_GROUP(1)},
    {"scope", "S", "the scope asked for at login", 0},
    {"skew", "SECONDS", "refresh when the access token expires within this (default 120, at most 86400)", 0},
    {"grace", "SECONDS",
     "the server's reuse grace window (default 0): only inside it may a lost refresh be retried, once", 0},
    CLI_OPT_JSON,
    {0}};
static const cli_opt provider_list_opts[] = {CLI_OPTS_TABLE, {0}};

static const cli_cmd provider_subs[] = {
    {"set", run_provider_set, "NAME", 1, 1, "add or change a provider's token endpoint",
     "Adds or changes a provider. 'nous' is built in (its endpoint, client hermes-cli, the refresh token in the\n"
     "x-nous-refresh-token header, skew 120 s, no grace window). A credential keeps the endpoint it was created\n"
     "with: changing a provider never redirects an existing grant, but grants imported before the provider was\n"
     "configured take it now.\n",
     provider_set_opts, NULL},
    {"list", run_provider_list, NULL, 0, 0, "list the providers and whether tokenledger refreshes them",
     "Lists the providers. 'refreshes' says configured (tokenledger refreshes its grants), not_configured (grants\n"
     "wait for 'provider set NAME --token-url URL --client-id ID') or api_keys_only (only API keys use it: nothing\n"
     "to refresh).\n",
     provider_list_opts, NULL},
    {0}};

const cli_cmd cli_cmd_provider = {"provider",
                                  NULL,
                                  NULL,
                                  0,
                                  0,
                                  "configure and list token endpoints",
                                  "Configures token endpoints. URLs must be https, or http to a loopback address.\n",
                                  NULL,
                                  provider_subs};

/* ---- credential ----------------------------------------------------------- */

static int run_credential_add(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *provider = a->pos[0], *profile = opt_str(a, "profile"), *rt_file = opt_str(a, "refresh-token-file"),
             *at_file = opt_str(a, "access-token-file"), *expires = opt_str(a, "expires-at");
  if (at_file && strcmp(at_file, "-") == 0 && strcmp(rt_file, "-") == 0)
    return usage_error("%s", "only one of the token files can be standard input");
  int mrc;
  if ((mrc = missing_path("--refresh-token-file", rt_file, NULL)) >= 0 ||
      (at_file && (mrc = missing_path("--access-token-file", at_file, NULL)) >= 0))
    return mrc;
  tl_error err = {0};
  int64_t exp = 0;
  tl_status rc;
  cli_ctx ctx = {NULL, profile, provider, 0};
  if (expires && (rc = tl_time_parse(&exp, expires, &err)) != TL_OK)
    return cli_fail(&ctx, &err, rc);
  char *rt = NULL, *at = NULL;
  if ((rc = tl_secret_read(&rt, rt_file, &err)) != TL_OK)
    return cli_fail(&ctx, &err, rc);
  if (at_file && (rc = tl_secret_read(&at, at_file, &err)) != TL_OK) {
    tl_secret_free(rt);
    return cli_fail(&ctx, &err, rc);
  }
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0) {
    tl_secret_free(rt);
    tl_secret_free(at);
    return orc;
  }
  tl_credential_spec spec = {.provider = provider,
                             .profile = profile,
                             .refresh_token = rt,
                             .access_token = at,
                             .expires_at_ms = exp,
                             .label = opt_str(a, "label"),
                             .token_url = opt_str(a, "token-url"),
                             .origin = opt_str(a, "origin"),
                             .entry_id = opt_str(a, "entry-id"),
                             .source = opt_str(a, "source")};
  int64_t id = 0;
  rc = tl_credential_add(&id, s, &spec, &err);
  tl_secret_free(rt);
  tl_secret_free(at);
  ctx.store = s;
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
  } else {
    char idt[32];
    snprintf(idt, sizeof idt, "%lld", (long long)id);
    const char *keys[] = {"credential", "profile", "provider"}, *vals[] = {idt, profile, provider};
    const int num[] = {1, 0, 0};
    code = cli_result(a, 3, keys, vals, num, "credential %lld stored for profile %s (%s)", (long long)id, profile,
                      provider);
  }
  tl_store_free(s);
  return code;
}

static int run_credential_rm(const cli_cmd *c, cli_args *a)
{
  (void)c;
  int64_t id = 0;
  int prc = parse_int64(&id, a->pos[0], "the credential id");
  if (prc >= 0)
    return prc;
  tl_store *s = NULL;
  tl_error err = {0};
  tl_report *r = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_credential_remove(&r, s, id, opt_on(a, "force"), &err);
  cli_ctx ctx = {s, NULL, NULL, id};
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
    if (rc == TL_EINVAL && strstr(err.message, "Hermes files"))
      fprintf(stderr, "hint: stop using it in Hermes first (log out, or log in again there); a credential that needs a "
                      "new login can always be removed\n");
    else if (rc == TL_EINVAL && strstr(err.message, "live"))
      fprintf(stderr, "hint: add --force to give it up anyway; the server still takes its refresh token until it "
                      "expires, so log it out there if you can\n");
  } else if (cli_out_of(a).json) {
    code = cli_print(r, NULL, &(cli_out){1, 0, NULL}, TL_JSON_OBJECT);
  } else {
#define G(k) (tl_report_get(r, 0, k) ? tl_report_get(r, 0, k) : "-")
    char buf[4200];
    printf("credential %lld (%s, %s) removed: %s pool entr%s gone", (long long)id, G("provider"), G("label"),
           G("entries"), strcmp(G("entries"), "1") == 0 ? "y" : "ies");
    if (tl_report_get(r, 0, "retired_rt"))
      printf(", refresh token %s... retired", G("retired_rt"));
    printf("; its lineage stays ('tokenledger lineage --credential %lld')\n", (long long)id);
    if (tl_report_get(r, 0, "files"))
      printf("Hermes files no longer kept in step for it: %s\n", cli_tilde(buf, sizeof buf, G("files")));
#undef G
    code = EXIT_OK;
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_col credential_cols[] = {{"credential", "id", COL_DEFAULT},
                                          {"provider", NULL, COL_DEFAULT | COL_SHRINK},
                                          {"label", NULL, COL_DEFAULT | COL_SHRINK},
                                          {"status", NULL, COL_DEFAULT | COL_STATE},
                                          {"profiles", NULL, COL_DEFAULT | COL_SHRINK},
                                          {"entries", NULL, 0},
                                          {"rt_generation", "gen", COL_DEFAULT | COL_EXTRA},
                                          {"rt_state", "rt", COL_DEFAULT | COL_STATE},
                                          {"access_expires", "expires", COL_DEFAULT | COL_TIME},
                                          {"created", NULL, 0},
                                          {"reason", NULL, COL_DEFAULT | COL_OPTIONAL | COL_SHRINK},
                                          {0}};

static int run_credential_list(const cli_cmd *c, cli_args *a)
{
  (void)c;
  return run_list(a, credential_cols, tl_credential_list);
}

static const cli_opt credential_add_opts[] = {
    {"profile", "NAME", "the profile whose pool gets the credential", OPT_REQUIRED},
    {"refresh-token-file", "FILE", "the refresh token: a file, or - for standard input", OPT_REQUIRED},
    {"access-token-file", "FILE", "the current access token, if any: a file, or -", 0},
    {"expires-at", "TIME", "when the access token expires (ISO 8601, epoch seconds or milliseconds)", 0},
    {"label", "L", "the account's label (an e-mail or user name)", 0},
    {"token-url", "URL", "this grant's token endpoint, if not the provider's", 0},
    {"entry-id", "ID", "the Hermes pool entry id (default: a new 6-hex-digit one)", 0},
    {"source", "S", "the Hermes pool source (default manual)", 0},
    {"origin", "login|import", "where the refresh token comes from (default import)", 0},
    CLI_OPT_JSON,
    {0}};
static const cli_opt credential_rm_opts[] = {
    {"force", NULL, "remove a live credential too, giving up its refresh token for good", 0}, CLI_OPT_JSON, {0}};
static const cli_opt credential_list_opts[] = {CLI_OPTS_TABLE, {0}};

static const cli_cmd credential_subs[] = {
    {"add", run_credential_add, "PROVIDER", 1, 1, "store a grant by hand from a refresh-token file",
     "Stores a credential and its refresh token as the root of a new lineage, in the profile's pool. Secrets are\n"
     "read from files or standard input, never from the command line. A refresh token the ledger already knows as\n"
     "spent is refused (exit 4) and the refusal is audited; one that is already live attaches the profile to the\n"
     "existing credential.\n",
     credential_add_opts, NULL},
    {"rm", run_credential_rm, "ID", 1, 1, "remove a credential from every pool; its lineage stays",
     "Removes a credential from the ledger's use: it leaves every pool, its refresh token is retired and its\n"
     "plaintext erased, its access token burned. Its lineage, attempts and audit rows stay for forensics, and its\n"
     "refresh tokens are refused if they come back. A credential that needs a new login (a dead grant, a login\n"
     "you replaced) is removed as it is; a live one only with --force, and not while Hermes files the ledger keeps\n"
     "still hold it (Hermes would go on spending a token the ledger has retired).\n",
     credential_rm_opts, NULL},
    {"list", run_credential_list, NULL, 0, 0, "list every credential, used or not",
     "Lists every credential with its status, the profiles that use it and its latest refresh token.\n",
     credential_list_opts, NULL},
    {0}};

const cli_cmd cli_cmd_credential = {"credential",
                                    NULL,
                                    NULL,
                                    0,
                                    0,
                                    "add, list and remove credentials by hand",
                                    "Manages credentials (OAuth grants) directly; import and login are the usual "
                                    "ways in.\n",
                                    NULL,
                                    credential_subs};

/* ---- pool ----------------------------------------------------------------- */

static int run_pool_strategy(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *provider = a->pos[0], *name = a->npos > 1 ? a->pos[1] : NULL, *profile = opt_str(a, "profile");
  tl_error err = {0};
  tl_strategy st = TL_FILL_FIRST;
  tl_status rc;
  cli_ctx ctx = {NULL, profile, provider, 0};
  if (name && (rc = tl_strategy_parse(&st, name, &err)) != TL_OK)
    return cli_fail(&ctx, &err, rc);
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, profile);
  if (orc >= 0)
    return orc;
  ctx.store = s;
  rc = name ? tl_strategy_set(s, profile, provider, st, &err) : tl_strategy_get(&st, s, profile, provider, &err);
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
  } else {
    const char *keys[] = {"profile", "provider", "strategy"}, *vals[] = {profile, provider, tl_strategy_name(st)};
    code = cli_result(a, 3, keys, vals, NULL, "profile %s uses %s for %s", profile, tl_strategy_name(st), provider);
  }
  tl_store_free(s);
  return code;
}

static const cli_opt pool_strategy_opts[] = {{"profile", "NAME", "the profile", OPT_REQUIRED}, CLI_OPT_JSON, {0}};
static const cli_cmd pool_subs[] = {
    {"strategy", run_pool_strategy, "PROVIDER [STRATEGY]", 1, 2, "show or set how a profile picks among its entries",
     "Shows the profile's strategy for PROVIDER, or sets it to STRATEGY: fill_first (the default: the first usable\n"
     "entry by priority), round_robin, least_used or random. Entries in cooldown or needing a login are skipped.\n",
     pool_strategy_opts, NULL},
    {0}};
const cli_cmd cli_cmd_pool = {"pool",
                              NULL,
                              NULL,
                              0,
                              0,
                              "show or set a profile's pool strategy",
                              "A profile's pool for a provider: the entries 'token' picks from.\n",
                              NULL,
                              pool_subs};

/* ---- doctor ---------------------------------------------------------------- */

/* The credentials of a doctor check that still need someone: one hint each, naming every profile that uses it. */
static void credential_hints(tl_store *s, int unknown)
{
  tl_report *cr = NULL;
  tl_error err = {0};
  if (tl_credential_list(&cr, s, &err) != TL_OK)
    return;
  for (size_t k = 0; k < tl_report_rows(cr); k++) {
    const char *st = tl_report_get(cr, k, "status"), *profiles = tl_report_get(cr, k, "profiles");
    const char *provider = tl_report_get(cr, k, "provider");
    long long id = strtoll(tl_report_get(cr, k, "credential"), NULL, 10);
    if (!st || strcmp(st, unknown ? "uncertain" : "needs_reauth") != 0 || !profiles)
      continue; /* no profile uses it: nothing to do (the unused_credentials line) */
    char who[600];
    size_t len = 0;
    for (const char *f = profiles; *f && len + 3 < sizeof who; f++) /* "default, work" */
      len += (size_t)snprintf(who + len, sizeof who - len, *f == ',' ? ", " : "%c", *f);
    profiles = who;
    char advice[700];
    if (unknown)
      fprintf(stderr, "hint: credential %lld (used by %s): %s\n", id, profiles,
              cli_unknown_advice(advice, sizeof advice, s, id));
    else if (strchr(profiles, ','))
      fprintf(stderr,
              "hint: credential %lld (%s, used by %s): one login replaces it in all of them: 'tokenledger login %s "
              "--credential %lld'\n",
              id, provider, profiles, provider, id);
    else
      fprintf(stderr,
              "hint: credential %lld (%s, used by %s): log in again with 'tokenledger login %s --credential %lld'\n",
              id, provider, profiles, provider, id);
  }
  tl_report_free(cr);
}

/* Homes Hermes made that the ledger does not keep: the exact import command for each. */
void cli_new_homes_hints(tl_store *s, FILE *to, const char *prefix)
{
  tl_report *r = NULL;
  tl_error err = {0};
  char shown[4200];
  if (tl_hermes_new_homes(&r, s, &err) != TL_OK)
    return;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *home = tl_report_get(r, i, "home"), *name = tl_report_get(r, i, "profile");
    const char *grants = tl_report_get(r, i, "grants");
    cli_tilde(shown, sizeof shown, home);
    fprintf(to,
            "%s%s holds %s grant(s) no profile of the ledger keeps (Hermes refreshes them alone); import it with "
            "'tokenledger import %s --profile %s'\n",
            prefix, shown, grants, shown, name);
  }
  tl_report_free(r);
}

/* The checks that fail only when the ledger's own file or rows are damaged. */
static int damaged_check(const char *check)
{
  static const char *const names[] = {"integrity",     "foreign_keys",       "wal",
                                      "schema",        "unique_fingerprint", "one_live_rt",
                                      "one_in_flight", "lineage_shape",      "spent_secrets_erased"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strcmp(check, names[i]) == 0)
      return 1;
  return 0;
}

/* What to run for each failed check (the library says what it found): every failed check gets its next step. */
/* The next step for each check whose advice is a fixed sentence. */
static const struct {
  const char *check, *hint;
} doctor_advice[] = {
    {"stale_in_flight", "'tokenledger doctor --fix' records them as unknown"},
    {"strict_serve", "start or restart 'tokenledger serve' (or 'systemctl --user restart tokenledger-serve')"},
    {"strict_files", "'tokenledger sync --all' finishes the switch once Hermes no longer holds the file's lock "
                     "(until then the file is locked and adopted like any Hermes file); a switch that was "
                     "interrupted is finished by running 'tokenledger profile strict NAME on' or 'off' again"},
    {"file_mode", "'tokenledger doctor --fix' repairs the modes of your own files"},
    {"sqlite_files", "'tokenledger doctor --fix' repairs the modes of your own files"},
    {"directory", "keep the ledger in a directory of your own ('chmod 700 DIR', or move it and give --db)"},
    {"write_lock", "see what the process the detail names is doing ('ps -p PID -o args'); writes resume when it ends"},
    {"hermes_files", "'tokenledger sync --all' names each file and why; moving one aside ('mv FILE FILE.bad') and "
                     "syncing again rewrites it from the ledger"},
};

static void doctor_hints(const tl_report *r, tl_store *s, const char *db)
{
  char shown[4200];
  cli_tilde(shown, sizeof shown, db ? db : "LEDGER");
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *check = tl_report_get(r, i, "check"), *ok = tl_report_get(r, i, "ok");
    if (!check || !ok || strcmp(ok, "1") == 0)
      continue;
    const char *detail = tl_report_get(r, i, "detail"), *fixed = NULL;
    for (size_t k = 0; k < sizeof doctor_advice / sizeof *doctor_advice && !fixed; k++)
      if (strcmp(check, doctor_advice[k].check) == 0)
        fixed = doctor_advice[k].hint;
    if (fixed)
      fprintf(stderr, "hint: %s: %s\n", check, fixed);
    else if (strcmp(check, "rescue_files") == 0 && detail && strstr(detail, "cannot be read"))
      fprintf(stderr, "hint: rescue_files: look at the file the detail names: if tokenledger did not write it, move "
                      "it out of the ledger's directory; 'tokenledger recover --help' explains rescue files\n");
    else if (strcmp(check, "rescue_files") == 0)
      fprintf(stderr, "hint: rescue_files: take the answer back with 'tokenledger recover --credential ID --rescue' "
                      "(ID as the detail names it)\n");
    else if (strcmp(check, "unknown_outcomes") == 0 || strcmp(check, "needs_reauth") == 0)
      credential_hints(s, strcmp(check, "unknown_outcomes") == 0);
    else if (strcmp(check, "new_profiles") == 0)
      cli_new_homes_hints(s, stderr, "hint: new_profiles: ");
    else if (damaged_check(check)) /* the ledger itself is damaged */
      fprintf(stderr,
              "hint: %s: the ledger itself is damaged: stop keep-fresh and serve and keep a copy as evidence "
              "('cp %s %s.broken'); the detail says what is wrong, and nothing repairs it by guessing\n",
              check, shown, shown);
    else /* a check this version has no advice for: where its meaning is written */
      fprintf(stderr, "hint: %s: the detail says what is wrong; 'man tokenledger' (doctor) says what the check means\n",
              check);
  }
}

static const cli_col doctor_cols[] = {{"check", NULL, COL_DEFAULT},
                                      {"ok", NULL, COL_DEFAULT | COL_OK},
                                      {"detail", NULL, COL_DEFAULT | COL_TILDE | COL_WRAP},
                                      {0}};

static int run_doctor(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  int prc = cli_check_columns(&o, doctor_cols);
  if (prc >= 0)
    return prc;
  char buf[4096];
  tl_error err = {0};
  tl_store *s = NULL;
  cli_ctx ctx = {0};
  const char *path = cli_db_path(buf, sizeof buf);
  char shown_path[4096 * 6 + 2];
  int fix = opt_on(a, "fix");
  if (!path)
    return usage_error("%s", "no database: give --db PATH or set TOKENLEDGER_DB");
  tl_status rc = tl_store_open(&s, path, 0, &err);
  if (rc == TL_EINSECURE && fix) {
    if (!o.json) {
      tl_text_escape(shown_path, sizeof shown_path, path);
      printf("repairing file modes of %s\n", shown_path);
    }
    tl_error_clear(&err);
    if ((rc = tl_store_fix_permissions(path, &err)) == TL_OK)
      rc = tl_store_open(&s, path, 0, &err);
  }
  if (rc != TL_OK)
    return cli_fail(&ctx, &err, rc);
  tl_store_set_actor(s, NULL, "doctor");
  tl_report *r = NULL;
  int problems = 0;
  rc = tl_doctor(&r, &problems, s, fix, &err);
  ctx.store = s;
  int code = rc == TL_OK ? cli_print(r, doctor_cols, &o, 0) : cli_fail(&ctx, &err, rc);
  if (code == EXIT_OK && problems) {
    doctor_hints(r, s, path);
    fprintf(stderr, "tokenledger: doctor found %d problem(s)\n", problems);
    code = EXIT_FAILURE_;
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt doctor_opts[] = {
    {"fix", NULL, "repair file modes and record in-flight attempts of dead processes as unknown", 0},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_doctor = {
    "doctor",
    run_doctor,
    NULL,
    0,
    0,
    "check the ledger, its files and the credentials that need you",
    "Checks integrity, foreign keys, file modes, WAL, the schema, the write lock, rescue files, the lineage\n"
    "invariants, stale in-flight attempts, credentials needing attention, and strict profiles without a serve\n"
    "answering for them. --fix repairs file modes and records dead in-flight attempts as unknown. Exit 1 if a\n"
    "problem remains; each failed check is followed by what to run.\n",
    doctor_opts,
    NULL};

/* ---- compact ---------------------------------------------------------------- */

static int run_compact(const cli_cmd *c, cli_args *a)
{
  (void)c;
  const char *keep = opt_str(a, "keep-days");
  int64_t days = 90;
  int prc;
  if (keep && (prc = parse_int64(&days, keep, "--keep-days")) >= 0)
    return prc;
  if (days > 36500)
    return usage_error("%s", "--keep-days is at most 36500");
  tl_store *s = NULL;
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_error err = {0};
  int64_t deleted = 0, before = 0, after = 0;
  progress_begin("compacting the ledger", 0);
  tl_status rc = tl_compact(&deleted, &before, &after, s, days * 86400000LL, &err);
  progress_end();
  cli_ctx ctx = {s, NULL, NULL, 0};
  int code;
  if (rc != TL_OK) {
    code = cli_fail(&ctx, &err, rc);
  } else {
    char d[32], b[32], f[32];
    snprintf(d, sizeof d, "%lld", (long long)deleted);
    snprintf(b, sizeof b, "%lld", (long long)before);
    snprintf(f, sizeof f, "%lld", (long long)after);
    const char *keys[] = {"attempts_deleted", "bytes_before", "bytes_after"}, *vals[] = {d, b, f};
    const int num[] = {1, 1, 1};
    code = cli_result(a, 3, keys, vals, num,
                      "removed %lld settled attempt(s) older than %lld day(s); %lld -> %lld bytes (fingerprints and "
                      "audit kept)",
                      (long long)deleted, (long long)days, (long long)before, (long long)after);
  }
  tl_store_free(s);
  return code;
}

static const cli_opt compact_opts[] = {
    {"keep-days", "N", "keep settled attempts younger than N days (default 90, at most 36500)", 0}, CLI_OPT_JSON, {0}};
const cli_cmd cli_cmd_compact = {"compact",
                                 run_compact,
                                 NULL,
                                 0,
                                 0,
                                 "remove old settled attempts and vacuum; fingerprints and audit stay",
                                 "Retention: removes settled refresh attempts of spent tokens older than N days "
                                 "(default 90) and vacuums. Refresh-token rows (fingerprints) and audit rows are "
                                 "never removed. Shows its progress on a terminal.\n",
                                 compact_opts,
                                 NULL};
