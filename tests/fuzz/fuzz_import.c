/*
 * fuzz_import.c - libFuzzer target for the Hermes importer.
 *
 * Each input is written as an auth.json into a private directory and
 * imported with --dry-run semantics into one ledger made at start-up, so the
 * whole path runs: reading, BOM handling, JSON parsing, the walk and its type
 * checks, fingerprinting, and the ingest SQL inside a transaction that is
 * rolled back. Crashes, leaks and sanitizer reports fail the run; any status
 * code is fine. Seeds: tests/data/hermes/.
 */
#include "tokenledger.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tl_store *store;
static char file[512];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  static char dir[256];
  snprintf(dir, sizeof dir, "%s/tl-fuzz-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir))
    abort();
  char db[400];
  snprintf(db, sizeof db, "%s/ledger.db", dir);
  snprintf(file, sizeof file, "%s/auth.json", dir);
  tl_error err = {0};
  if (tl_store_open(&store, db, TL_OPEN_CREATE, &err) != TL_OK)
    abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0)
    abort();
  if (size && write(fd, data, size) != (ssize_t)size)
    abort();
  close(fd);
  tl_import_opts o = {.profile = "fuzz", .dry_run = 1};
  tl_report *r = NULL;
  tl_error err = {0};
  if (tl_import(&r, store, file, &o, &err) == TL_OK) {
    char *json = NULL;
    if (tl_report_json(&json, r, 0, &err) == TL_OK)
      free(json);
  }
  tl_report_free(r);
  return 0;
}
