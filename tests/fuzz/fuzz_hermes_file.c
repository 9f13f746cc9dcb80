/*
 * fuzz_hermes_file.c - libFuzzer target for the Hermes file layer alone
 * (hermes_file.c, no ledger): loading, walking into slots, and writing a
 * grant into every slot in Hermes' shape, then the quarantine.
 *
 * Each input is written as a file and loaded (as an auth.json and as a shared
 * store). For every document that loads, the promises of the layer are checked
 * as invariants (abort() on a broken one):
 *   - every slot's refresh token, if any, is a valid token (VSCHAR);
 *   - filling every slot with a grant gives a document that dumps as Hermes
 *     writes it, parses again, walks again to as many slots, and holds the
 *     grant's tokens in every slot;
 *   - filling it a second time changes nothing (a file in step is never
 *     rewritten);
 *   - the quarantine leaves no refresh token in a singleton.
 * Seeds: tests/data/hermes and tests/fuzz/import; dictionary tests/fuzz/import.dict.
 */
#include "hermes.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char file[512];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  static char dir[256];
  snprintf(dir, sizeof dir, "%s/tl-fuzz-hf-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir))
    abort();
  snprintf(file, sizeof file, "%s/auth.json", dir);
  return 0;
}

static void check_filled(json_t *doc, unsigned flags, size_t nslots, const tl__grant *g)
{
  char *text = tl__hf_dump(doc, (flags & TL_WALK_SHARED) != 0);
  if (!text)
    abort();
  json_error_t je;
  json_t *again = json_loads(text, JSON_REJECT_DUPLICATES, &je);
  free(text);
  if (!again)
    abort(); /* what we write must parse */
  tl__slots ss = {0};
  tl_error err = {0};
  if (tl__hf_walk(&ss, again, "fuzz", flags, &err) != TL_OK || ss.n != nslots)
    abort(); /* and walk to the same places */
  for (size_t i = 0; i < ss.n; i++) {
    const char *rt = tl__hf_slot_rt(&ss.v[i]);
    if (!rt || strcmp(rt, g->refresh_token) != 0)
      abort(); /* every place holds the grant */
  }
  tl__hf_slots_free(&ss);
  json_decref(again);
}

static void exercise(unsigned flags)
{
  json_t *doc = NULL;
  char sha[65];
  int64_t mtime = 0;
  tl_error err = {0};
  if (tl__hf_load(&doc, sha, &mtime, file, &err) != TL_OK)
    return;
  tl__slots ss = {0};
  if (tl__hf_walk(&ss, doc, file, flags, &err) != TL_OK) {
    json_decref(doc);
    return;
  }
  for (size_t i = 0; i < ss.n; i++) {
    const char *rt = tl__hf_slot_rt(&ss.v[i]);
    if (rt && !tl__token_valid(rt, strlen(rt)))
      abort(); /* an input token is always printable */
    (void)tl__hf_slot_expiry(&ss.v[i]);
    (void)tl__hf_slot_obtained(&ss.v[i]);
  }
  tl__grant g = {.provider = "nous",
                 .access_token = "eyJhbGciOiJub25lIn0.eyJleHAiOjE3OTAwMDAwMDAsInNjb3BlIjoiaW5mZXJlbmNlOmludm9rZSJ9.s",
                 .refresh_token = "rt-fuzz-0001",
                 .expires_ms = 1790000000000,
                 .obtained_ms = 1789996400000,
                 .now_ms = 1789996400500,
                 .scope = "inference:invoke",
                 .client_id = "hermes-cli",
                 .portal_base_url = "https://portal.nousresearch.com"};
  for (size_t i = 0; i < ss.n; i++)
    tl__hf_fill(&ss.v[i], &g);
  check_filled(doc, flags, ss.n, &g);
  for (size_t i = 0; i < ss.n; i++)
    if (tl__hf_fill(&ss.v[i], &g))
      abort(); /* in step: a second fill changes nothing */
  for (size_t i = 0; i < ss.n; i++) {
    tl__hf_quarantine(&ss.v[i], g.now_ms);
    if (ss.v[i].kind == TL_SLOT_SINGLETON && json_object_get(ss.v[i].obj, "refresh_token"))
      abort();
  }
  tl__hf_slots_free(&ss);
  json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0)
    abort();
  if (size && write(fd, data, size) != (ssize_t)size)
    abort();
  close(fd);
  exercise(0);
  exercise(TL_WALK_SHARED);
  return 0;
}
