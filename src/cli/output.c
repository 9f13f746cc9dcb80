/*
 * output.c - how the tool prints: tables, JSON, errors, exit codes.
 *
 * Invariant: nothing printed here can hold a secret, because reports come
 * from views without secret columns; the one command that prints a token
 * (`token`) does so in main.c on purpose.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

int tl_cli_exit_code(tl_status rc)
{
  switch (rc) {
  case TL_OK: return EXIT_OK;
  case TL_EINVAL: return EXIT_USAGE;
  case TL_ENOTFOUND: return EXIT_NOTFOUND;
  case TL_EREUSE: return EXIT_REUSE;
  case TL_EREAUTH: return EXIT_REAUTH;
  case TL_EUNKNOWN: return EXIT_UNKNOWN;
  case TL_ETRANSIENT: return EXIT_TRANSIENT;
  case TL_EBUSY: return EXIT_BUSY;
  case TL_EINSECURE: return EXIT_INSECURE;
  case TL_ETOONEW: return EXIT_TOONEW;
  case TL_ECORRUPT: return EXIT_CORRUPT;
  case TL_EEXISTS: return EXIT_EXISTS;
  case TL_EIO: return EXIT_IO;
  case TL_ENOMEM:
  case TL_ERROR: break;
  }
  return EXIT_FAILURE_;
}

int tl_cli_fail(const tl_error *err, tl_status rc)
{
  if (err && err->message[0])
    fprintf(stderr, "tokenledger: %s\n", err->message);
  else
    fprintf(stderr, "tokenledger: %s\n", tl_status_name(rc));
  return tl_cli_exit_code(rc);
}

int tl_cli_print_report(const tl_report *r, int json, unsigned json_flags)
{
  if (json) {
    char *text = NULL;
    tl_error err = {0};
    tl_status rc = tl_report_json(&text, r, json_flags, &err);
    if (rc != TL_OK)
      return tl_cli_fail(&err, rc);
    puts(text);
    free(text);
    return EXIT_OK;
  }
  size_t nc = tl_report_columns(r), nr = tl_report_rows(r);
  size_t *w = calloc(nc ? nc : 1, sizeof *w);
  if (!w)
    return EXIT_FAILURE_;
  for (size_t c = 0; c < nc; c++) {
    w[c] = strlen(tl_report_column(r, c));
    for (size_t i = 0; i < nr; i++) {
      const char *v = tl_report_cell(r, i, c);
      size_t l = strlen(v ? v : "-");
      if (l > w[c])
        w[c] = l;
    }
  }
  for (size_t c = 0; c < nc; c++)
    printf("%-*s%s", c + 1 < nc ? (int)w[c] : 0, tl_report_column(r, c), c + 1 < nc ? "  " : "\n");
  for (size_t i = 0; i < nr; i++)
    for (size_t c = 0; c < nc; c++) {
      const char *v = tl_report_cell(r, i, c);
      printf("%-*s%s", c + 1 < nc ? (int)w[c] : 0, v ? v : "-", c + 1 < nc ? "  " : "\n");
    }
  free(w);
  return EXIT_OK;
}

int tl_cli_print_changes(const tl_report *r, int json)
{
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *action = tl_report_get(r, i, "action");
    if (!action || strcmp(action, "unchanged") == 0)
      continue;
    const char *profile = tl_report_get(r, i, "profile"), *file = tl_report_get(r, i, "file");
    const char *path = tl_report_get(r, i, "path");
    if (json)
      printf("{\"event\": \"sync\", \"profile\": \"%s\", \"action\": \"%s\"}\n", profile ? profile : "", action);
    else
      printf("sync: %s %s%s%s: %s\n", profile ? profile : "-", file ? file : "-", path && strcmp(path, "$") ? " " : "",
             path && strcmp(path, "$") ? path : "", action);
  }
  return EXIT_OK;
}
