/*
 * hint.c - what to run next after a failure.
 *
 * The library says what happened ("credential 3 needs a new login: ..."); the
 * tool knows the command line and the user, so it adds the advice, naming the
 * real profile, provider and credential ("hint: log in again with 'tokenledger
 * login nous --profile work'"). A hint is looked up in the ledger only on the
 * failure path, never changes it, and is left out when the library's message
 * already carries that very command (messages of modules not yet converted).
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

static int has_profile(tl_store *s, const char *name)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int found = 0;
  if (tl_profile_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !found; i++)
      found = strcmp(tl_report_get(r, i, "name"), name) == 0;
  tl_report_free(r);
  return found;
}

static int has_provider(tl_store *s, const char *name)
{
  tl_report *r = NULL;
  tl_error err = {0};
  int found = 0;
  if (tl_provider_list(&r, s, &err) == TL_OK)
    for (size_t i = 0; i < tl_report_rows(r) && !found; i++)
      found = strcmp(tl_report_get(r, i, "name"), name) == 0;
  tl_report_free(r);
  return found;
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
  switch (rc) {
  case TL_EREAUTH:
    if (*provider && *profile)
      hint(err, "log in again with 'tokenledger login %s --profile %s' (or log in with Hermes and import)", provider,
           profile);
    else
      hint(err, "'tokenledger status' shows which credentials need a new login");
    break;
  case TL_EUNKNOWN:
    if (cred)
      hint(err,
           "decide with 'tokenledger recover --credential %lld --assume-not-sent' (only if the request cannot have "
           "reached the server) or 'tokenledger recover --credential %lld --mark-dead' (then log in again)",
           (long long)cred, (long long)cred);
    else
      hint(err, "'tokenledger recover --help' explains how to resolve an unknown outcome");
    break;
  case TL_ENOTFOUND:
    if (!s)
      break;
    if (*profile && tl_profile_name_valid(profile) && !has_profile(s, profile))
      hint(err, "add it with 'tokenledger profile add %s' (or import its Hermes home)", profile);
    else if (*provider && !has_provider(s, provider))
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
