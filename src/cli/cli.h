/*
 * cli.h - shared pieces of the tokenledger command-line tool.
 *
 * The tool uses only the public header. Exit codes are mapped from tl_status
 * in one place (tl_cli_exit_code); they are documented in README.md and are
 * append-only like the status codes.
 */
#ifndef TL_CLI_H
#define TL_CLI_H

#include "tokenledger.h"

#include <stdio.h>

enum {
  EXIT_OK = 0,
  EXIT_FAILURE_ = 1,
  EXIT_USAGE = 2,
  EXIT_NOTFOUND = 3,
  EXIT_REUSE = 4,
  EXIT_REAUTH = 5,
  EXIT_UNKNOWN = 6,
  EXIT_TRANSIENT = 7,
  EXIT_BUSY = 8,
  EXIT_INSECURE = 9,
  EXIT_TOONEW = 10,
  EXIT_CORRUPT = 11,
  EXIT_EXISTS = 12,
  EXIT_IO = 13
};

int tl_cli_exit_code(tl_status rc);
/* Prints "tokenledger: <message>" to stderr and returns the exit code. */
int tl_cli_fail(const tl_error *err, tl_status rc);
/* Prints a report as an aligned table, or as JSON when json is set. */
int tl_cli_print_report(const tl_report *r, int json, unsigned json_flags);
/* Prints the rows of a sync report that changed something, one line each. */
int tl_cli_print_changes(const tl_report *r, int json);

#endif
