/*
 * fixture.h - helpers shared by the unit tests: a temporary directory with a
 * fresh ledger per test, raw SQL access, and file snapshots for "left
 * untouched" assertions.
 */
#ifndef TL_TEST_FIXTURE_H
#define TL_TEST_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

typedef struct fx {
  char dir[256];
  char path[300];
  tl_store *s;
} fx;

/* setup/teardown for cmocka: *state becomes an fx with an open ledger. */
int fx_setup(void **state);
int fx_setup_nostore(void **state);
int fx_teardown(void **state);

/* Runs SQL on the store's connection; returns the SQLite result code. */
int fx_sql(tl_store *s, const char *sql);
/* First column of the first row as integer (or -1). */
int64_t fx_int(tl_store *s, const char *sql);
/* Reads a whole file; NULL if missing. *len set. Caller frees. */
char *fx_slurp(const char *path, size_t *len);
/* Writes bytes to a file with mode. */
void fx_write(const char *path, const char *data, size_t len, int mode);
/* Adds profile p and a nous credential with the given RT; returns its id. */
int64_t fx_credential(tl_store *s, const char *profile, const char *rt);

#endif
