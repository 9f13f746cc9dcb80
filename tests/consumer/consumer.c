/*
 * consumer.c - a program that knows libtokenledger only as an installed
 * package: it includes <tokenledger.h> from the install prefix and links the
 * shared library or the archive, built once with pkg-config and once with
 * CMake's find_package by tests/e2e/install.sh. It opens a ledger, refreshes
 * a credential through the HTTP seam, and checks what each call returns, so
 * a broken header, library or package file makes it fail. Prints no secret.
 */
#include <tokenledger.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, what)                                                                                              \
  do {                                                                                                                 \
    if (!(cond)) {                                                                                                     \
      fprintf(stderr, "consumer: FAIL line %d: %s (%s)\n", __LINE__, what, err.message);                               \
      failures++;                                                                                                      \
    }                                                                                                                  \
  } while (0)

/* The token endpoint: one rotation, counted. */
static int endpoint(void *ud, const tl_http_request *req, tl_http_response *resp)
{
  static const char answer[] = "{\"access_token\":\"consumer-at-1\",\"refresh_token\":\"consumer-rt-1\","
                               "\"expires_in\":3600}";
  int *calls = ud;
  (*calls)++;
  resp->failure = TL_HTTP_DONE;
  resp->status = req->rt_value && strcmp(req->rt_value, "consumer-rt-0") == 0 ? 200 : 400;
  resp->retry_after = -1;
  resp->body = strdup(answer);
  resp->body_len = resp->body ? strlen(answer) : 0;
  return 0;
}

int main(int argc, char **argv)
{
  tl_error err = {0};
  tl_store *s = NULL;
  tl_token *t = NULL;
  tl_report *r = NULL;
  int64_t id = 0;
  int calls = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: consumer LEDGER\n");
    return 2;
  }
  CHECK(strcmp(tl_version(), TL_VERSION) == 0, "tl_version() is the installed header's TL_VERSION");
  CHECK(tl_version_number() == TL_VERSION_NUMBER, "tl_version_number() is the header's TL_VERSION_NUMBER");

  CHECK(tl_store_open(&s, argv[1], 0, &err) == TL_ENOTFOUND && !s, "a missing ledger is not created without CREATE");
  tl_error_clear(&err);
  CHECK(tl_store_open(&s, argv[1], TL_OPEN_CREATE, &err) == TL_OK && s, "tl_store_open creates the ledger");
  if (!s)
    return 1;
  CHECK(tl_profile_add(s, "work", NULL, &err) == TL_OK, "tl_profile_add");
  CHECK(tl_profile_add(s, "work", NULL, &err) == TL_EEXISTS && err.code == TL_EEXISTS, "a second add: TL_EEXISTS");
  tl_error_clear(&err);

  tl_store_set_transport(s, endpoint, &calls);
  tl_credential_spec spec = {.provider = "nous", .profile = "work", .refresh_token = "consumer-rt-0"};
  CHECK(tl_credential_add(&id, s, &spec, &err) == TL_OK && id > 0, "tl_credential_add");
  CHECK(tl_token_get(&t, s, "work", "nous", 0, &err) == TL_OK && t, "tl_token_get refreshes");
  CHECK(t && t->refreshed && strcmp(t->access_token, "consumer-at-1") == 0 && calls == 1,
        "one rotation, the new access token");
  tl_token_free(t);
  t = NULL;
  CHECK(tl_token_get(&t, s, "work", "nous", 0, &err) == TL_OK && t && !t->refreshed && calls == 1,
        "a fresh token is served without a request");
  tl_token_free(t);

  CHECK(tl_credential_add(NULL, s, &spec, &err) == TL_EREUSE, "the spent refresh token is refused");
  tl_error_clear(&err);
  CHECK(tl_lineage_report(&r, s, id, &err) == TL_OK && tl_report_rows(r) == 2, "the lineage has both generations");
  tl_report_free(r);
  tl_store_free(s);
  if (failures)
    return 1;
  printf("consumer ok: libtokenledger %s\n", tl_version());
  return 0;
}
