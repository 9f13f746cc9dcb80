/*
 * hint.c - what to run next after a failure.
 *
 * The library says what happened ("credential 3 needs a new login: ..."); the
 * tool knows the command line and the user, so it adds the advice, naming the
 * real profile, provider and credential ("hint: log in again with 'tokenledger
 * login nous --profile work'"). A hint is looked up in the ledger only on the
 * failure path, never changes it, and is left out when the library's message
 * already carries that very command. The library's messages name no command of
 * this tool (only serve's OAuth answers to Hermes do, for Hermes' user), so the
 * advice is keyed here on the status and on the situation the message states
 * ("no ledger here", "rescue file", "has no Hermes home", ...); the real
 * profile, provider and credential come from the command line, the ledger, or
 * the names the message quotes. A profile or provider the ledger does not know
 * but nearly does (an edit or two away) gets "did you mean" instead, so no
 * hint ever goes on to create a misspelled name.
 */
#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 2, 3))) static void hint(const tl_error *err, const char *fmt, ...)
{
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  /* The command quoted first in the hint; if the library already said it, say nothing more. */
  const char *q = strchr(text, '\'');
  if (q && err) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%.*s", (int)strcspn(q + 1, "'"), q + 1);
    if (*cmd && strstr(err->message, cmd))
      return;
  }
  fprintf(stderr, "hint: %s\n", text);
}

/* 1 if a name is in a list the ledger gives (its "name" column). */
static int listed(tl_store *s, tl_status (*list)(tl_report **, tl_store *, tl_error *), const char *name)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int found = 0;
  if (list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !found; i++)
      found = strcmp(tl_report_get(r, i, "name"), name) == 0;
  tl_report_free(r);
  return found;
}

static int has_profile(tl_store *s, const char *name)
{
  return listed(s, tl_profile_list, name);
}

/* The ledger the hint being given may look things up in (set by cli_fail for the situation hints). */
static tl_store *cli_hint_store;

int cli_has_provider(tl_store *s, const char *name)
{
  return listed(s, tl_provider_list, name);
}

/*
 * "did you mean profile 'work'?" when a name the ledger does not know is a typo of one it does, so that no
 * hint goes on to create the misspelled name. 1 when said.
 */
static int near_name(tl_store *s, tl_status (*list)(tl_report **, tl_store *, tl_error *), const char *what,
                     const char *name)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int said = 0;
  if (!*name || list(&r, s, &err) != TL_OK)
    return 0;
  size_t n = tl_report_rows(r);
  const char **names = calloc(n + 1, sizeof *names);
  int known = 0;
  for (size_t i = 0; names && i < n; i++) {
    names[i] = tl_report_get(r, i, "name");
    known |= names[i] && strcmp(names[i], name) == 0;
  }
  if (names && !known) {
    char before[32];
    snprintf(before, sizeof before, "%s '", what);
    said = cli_did_you_mean(before, "'", name, names, n);
  }
  free(names);
  tl_report_free(r);
  return said;
}

/* The credential's provider and first profile, from the ledger (buffers may stay empty). */
static void credential_of(tl_store *s, int64_t id, char *provider, size_t pn, char *profile, size_t fn)
{
  tl_report *r = NULL;
  tl_error err = {0};
  if (!s || tl_credential_list(&r, s, &err) != TL_OK)
    return;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    if (strtoll(tl_report_get(r, i, "credential"), NULL, 10) != id)
      continue;
    const char *p = tl_report_get(r, i, "provider"), *f = tl_report_get(r, i, "profiles");
    snprintf(provider, pn, "%s", p ? p : "");
    snprintf(profile, fn, "%.*s", f ? (int)strcspn(f, ",") : 0, f ? f : "");
  }
  tl_report_free(r);
}

void cli_login_advice(char *buf, size_t n, tl_store *s, int64_t cred, const char *provider, const char *profile)
{
  char profiles[512] = "", its[130] = "";
  tl_report *r = NULL;
  tl_error err = {0};
  if (s && cred && tl_credential_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r); i++)
      if (strtoll(tl_report_get(r, i, "credential"), NULL, 10) == cred) {
        const char *f = tl_report_get(r, i, "profiles");
        size_t len = 0;
        for (; f && *f && len + 3 < sizeof profiles; f++) /* "default, work" */
          len += (size_t)snprintf(profiles + len, sizeof profiles - len, *f == ',' ? ", " : "%c", *f);
        snprintf(its, sizeof its, "%s", tl_report_get(r, i, "provider"));
      }
  tl_report_free(r);
  if (*its)
    provider = its;
  else if (!provider || !*provider)
    provider = "PROVIDER";
  const char *comma = strchr(profiles, ',');
  if (comma) /* one grant shared: one login keeps it one grant */
    snprintf(buf, n, "used by %s: one login replaces %s: 'tokenledger login %s --credential %lld'", profiles,
             strchr(comma + 1, ',') ? "it in all of them" : "both", provider, (long long)cred);
  else if (*profiles || (profile && *profile))
    snprintf(buf, n, "log in again with 'tokenledger login %s --profile %s'", provider, *profiles ? profiles : profile);
  else
    snprintf(buf, n, "log in again with 'tokenledger login %s --profile NAME' for the profile that needs it", provider);
}

/* The profile's dead credential for the provider (0 if none): what a login would replace. */
static int64_t dead_credential_of(tl_store *s, const char *provider, const char *profile)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int64_t id = 0;
  size_t pl = strlen(profile);
  if (tl_credential_list(&r, s, &err) != TL_OK)
    return 0;
  for (size_t i = 0; i < tl_report_rows(r) && !id; i++) {
    const char *p = tl_report_get(r, i, "provider"), *st = tl_report_get(r, i, "status");
    const char *f = tl_report_get(r, i, "profiles");
    if (!p || !st || !f || strcmp(p, provider) != 0 || strcmp(st, "needs_reauth") != 0)
      continue;
    for (const char *q = f; *q; q += strcspn(q, ","), q += *q == ',')
      if (strncmp(q, profile, pl) == 0 && (q[pl] == ',' || q[pl] == '\0'))
        id = strtoll(tl_report_get(r, i, "credential"), NULL, 10);
  }
  tl_report_free(r);
  return id;
}

/* The text after the first `key` in a message, up to `end` (empty when absent). */
static void text_after(char *buf, size_t n, const char *msg, const char *key, const char *end)
{
  const char *p = strstr(msg, key);
  buf[0] = '\0';
  if (p) {
    p += strlen(key);
    snprintf(buf, n, "%.*s", (int)strcspn(p, end), p);
  }
}

/* The first "credential N" a message names, 0 if none. */
static int64_t credential_in(const char *msg)
{
  for (const char *p = strstr(msg, "credential "); p; p = strstr(p + 1, "credential "))
    if (p[11] >= '1' && p[11] <= '9')
      return strtoll(p + 11, NULL, 10);
  return 0;
}

const char *cli_unknown_advice(char *buf, size_t n, tl_store *s, int64_t cred)
{
  tl_sent sent = TL_SENT_MAYBE;
  tl_error err = {0};
  if (!s || tl_unknown_sent(&sent, s, cred, &err) != TL_OK)
    sent = TL_SENT_MAYBE; /* nothing known: assume the worst */
  if (sent == TL_SENT_NOTHING)
    snprintf(buf, n,
             "present it once more with 'tokenledger recover --credential %lld --assume-not-sent' (safe: no byte of "
             "the request left this machine, so the token is unspent), or give the login up with 'tokenledger "
             "recover --credential %lld --mark-dead'",
             (long long)cred, (long long)cred);
  else
    snprintf(buf, n,
             "give the login up with 'tokenledger recover --credential %lld --mark-dead', then log in again; do not "
             "use --assume-not-sent: %s, so the server may have rotated the token, and presenting it again would be "
             "reuse, for which the server revokes the login",
             (long long)cred,
             sent == TL_SENT_ANSWERED ? "the server answered, so it received the request"
                                      : "the request may have reached the server (it timed out, the connection broke "
                                        "after sending, or the process died mid-request)");
  return buf;
}

/*
 * A Hermes file that cannot be read (its path starts the message): moving it aside and syncing rewrites it
 * from the ledger, which keeps every grant and every key it held; the profile is the one whose home holds it.
 */
static void file_hint(const tl_error *err, const char *m)
{
  char path[4096], shown[4200], home[4096], profile[80] = "";
  snprintf(path, sizeof path, "%.*s", (int)strcspn(m, " "), m);
  size_t l = strlen(path);
  if (l && path[l - 1] == ':')
    path[--l] = '\0';
  const char *base = strrchr(path, '/');
  if (!base || (strcmp(base, "/auth.json") != 0 && strcmp(base, "/nous_auth.json") != 0)) {
    hint(err, "look at the file the message names; 'tokenledger doctor' checks every Hermes file the ledger keeps");
    return;
  }
  snprintf(home, sizeof home, "%.*s", (int)(base - path), path);
  tl_store *s = cli_hint_store;
  tl_report *r = NULL;
  tl_error ignore = {0};
  if (s && strcmp(base, "/auth.json") == 0 && tl_profile_list(&r, s, &ignore) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !*profile; i++)
      if (tl_report_get(r, i, "home") && strcmp(tl_report_get(r, i, "home"), home) == 0)
        snprintf(profile, sizeof profile, "%s", tl_report_get(r, i, "name"));
  tl_report_free(r);
  cli_tilde(shown, sizeof shown, path);
  hint(err,
       "the other files were synced; this one is left as it is. Move it aside and let the ledger rewrite it: 'mv %s "
       "%s.bad && tokenledger sync %s%s'",
       shown, shown, *profile ? "--profile " : "--all", profile);
}

/*
 * Advice keyed on the situation the library's message describes rather than on the status alone (the
 * library says what happened and why; the commands are the tool's). 1 when a hint was given.
 */
static int situation_hint(const tl_error *err, tl_status rc, const char *provider, const char *profile, int64_t cred)
{
  const char *m = err ? err->message : "";
  const char *f = *profile ? profile : "PROFILE";
  if (strstr(m, "no ledger here")) {
    hint(err, "create one with 'tokenledger init'");
  } else if (strstr(m, "cannot be read as a rescue file") || strstr(m, "not a tokenledger rescue file") ||
             strstr(m, "not a regular 0600 file of yours")) {
    hint(err, "look at the file the message names: if it is not one tokenledger wrote, move it out of the "
              "ledger's directory; if it is, 'tokenledger recover --help' explains what it holds");
  } else if (strstr(m, "nor keep the answer") || strstr(m, "outcome is unknown")) {
    hint(err, "'tokenledger recover --help' explains how to resolve an unknown outcome");
  } else if (strstr(m, "no rescue file with an answer")) {
    hint(err, "nothing waits to be taken back; 'tokenledger status' shows the credential's state");
  } else if (cred && (strstr(m, "rescue file") || strstr(m, "until the ledger is writable again"))) {
    if (rc == TL_EREAUTH)
      hint(err,
           "log in again with 'tokenledger login %s --profile %s', then 'tokenledger recover --credential %lld "
           "--mark-dead'",
           *provider ? provider : "PROVIDER", f, (long long)cred);
    else
      hint(err, "take the answer back with 'tokenledger recover --credential %lld --rescue'%s", (long long)cred,
           strstr(m, "could not record it") ? " once the ledger is writable again" : "");
  } else if (rc == TL_ENOTFOUND && *provider && strstr(m, "no token endpoint or client id")) {
    hint(err, "configure it with 'tokenledger provider set %s --token-url URL --client-id ID'", provider);
  } else if (rc == TL_EINVAL && *provider && strstr(m, "stored token endpoint is refused")) {
    hint(err, "set a valid one with 'tokenledger provider set %s' (or import the profile again)", provider);
  } else if (rc == TL_ENOTFOUND && *provider && *profile && strstr(m, "credential; add one")) {
    hint(err, "add one with 'tokenledger credential add %s --profile %s' or import its auth.json", provider, profile);
  } else if (strstr(m, "serve has never run")) {
    hint(err, "start 'tokenledger serve' first (or 'systemctl --user start tokenledger-serve')");
  } else if (strstr(m, "has no Hermes home")) {
    hint(err, "%sset the home with 'tokenledger profile set-home %s DIR'",
         strstr(m, "no output file") ? "give --output FILE, or " : "", f);
  } else if (rc == TL_EINVAL && strstr(m, "refresh token the ledger does not know")) {
    hint(err,
         "if this is the profile's own auth.json, 'tokenledger sync --profile %s' adopts it; otherwise export to "
         "another file",
         f);
  } else if (rc == TL_EREUSE && strstr(m, "The file is stale")) {
    hint(err, "'tokenledger sync --profile %s' rewrites a profile's own auth.json with the ledger's current tokens", f);
    return 0; /* the reuse hint follows */
  } else if (rc == TL_EFILE) {
    file_hint(err, m);
  } else {
    return 0;
  }
  return 1;
}

int cli_fail(const cli_ctx *ctx, const tl_error *err, tl_status rc)
{
  int code = tl_cli_fail(err, rc);
  tl_store *s = ctx ? ctx->store : NULL;
  char provider[130] = "", profile[80] = "";
  if (ctx && ctx->provider)
    snprintf(provider, sizeof provider, "%s", ctx->provider);
  if (ctx && ctx->profile)
    snprintf(profile, sizeof profile, "%s", ctx->profile);
  int64_t cred = ctx ? ctx->credential : 0;
  if (!cred && err)
    cred = credential_in(err->message);
  if (!*profile && err)
    text_after(profile, sizeof profile, err->message, "profile '", "'");
  if (!*provider && err)
    text_after(provider, sizeof provider, err->message, "provider '", "'");
  if (s && !cred && *profile && *provider) {
    tl_error ignore = {0};
    if (tl_credential_find(&cred, s, profile, provider, &ignore) != TL_OK)
      cred = 0;
  }
  if (s && cred && (!*provider || !*profile)) {
    char p[130] = "", f[80] = "";
    credential_of(s, cred, p, sizeof p, f, sizeof f);
    if (!*provider)
      snprintf(provider, sizeof provider, "%s", p);
    if (!*profile)
      snprintf(profile, sizeof profile, "%s", f);
  }
  cli_hint_store = s;
  if (rc == TL_ENOTFOUND && s &&
      (near_name(s, tl_profile_list, "profile", profile) || near_name(s, tl_provider_list, "provider", provider)))
    return code;
  if (situation_hint(err, rc, provider, profile, cred))
    return code;
  switch (rc) {
  case TL_EREAUTH:
    if (!cred && s && *provider && *profile)
      cred = dead_credential_of(s, provider, profile);
    if (*provider && *profile) {
      char advice[900];
      cli_login_advice(advice, sizeof advice, s, cred, provider, profile);
      hint(err, "%s (or log in with Hermes and import)", advice);
    } else
      hint(err, "'tokenledger status' shows which credentials need a new login");
    break;
  case TL_EUNKNOWN:
    if (cred) {
      char advice[700];
      hint(err, "%s", cli_unknown_advice(advice, sizeof advice, s, cred));
    } else
      hint(err, "'tokenledger recover --help' explains how to resolve an unknown outcome");
    break;
  case TL_ENOTFOUND:
    if (!s || strstr(err ? err->message : "", "profile home"))
      break; /* the directory is missing, not the profile: the command's own hint says what to add */
    if (*profile && tl_profile_name_valid(profile) && !has_profile(s, profile)) {
      /* Hermes made the profile after the import: its home is there to import, grants and all. */
      tl_report *nh = NULL;
      tl_error ignore = {0};
      char shown[4200] = "";
      if (tl_hermes_new_homes(&nh, s, &ignore) == TL_OK)
        for (size_t i = 0; i < tl_report_rows(nh) && !*shown; i++)
          if (strcmp(tl_report_get(nh, i, "profile"), profile) == 0)
            cli_tilde(shown, sizeof shown, tl_report_get(nh, i, "home"));
      tl_report_free(nh);
      if (*shown)
        hint(
            err,
            "Hermes has a profile %s the ledger does not keep yet: import it with 'tokenledger import %s --profile %s'",
            profile, shown, profile);
      else
        hint(err, "add it with 'tokenledger profile add %s' (or import its Hermes home)", profile);
    } else if (*provider && !cli_has_provider(s, provider))
      hint(err, "configure it with 'tokenledger provider set %s --token-url URL --client-id ID'", provider);
    break;
  case TL_EREUSE:
    if (cred)
      hint(err, "'tokenledger lineage --credential %lld --tree' shows who presented each generation", (long long)cred);
    break;
  case TL_EBUSY:
    hint(err, "another process holds the lock; try again ('tokenledger doctor' names a process holding the "
              "ledger's write lock)");
    break;
  case TL_ETRANSIENT: hint(err, "nothing was lost; try again later (keep-fresh retries by itself)"); break;
  case TL_EINSECURE:
    if (strstr(err ? err->message : "", "mode"))
      hint(err, "'tokenledger doctor --fix' repairs the modes of your own ledger files");
    break;
  default: break;
  }
  return code;
}
