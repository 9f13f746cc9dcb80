/*
 * test_hermes_file.c - the file layer of Hermes interoperability without a
 * ledger: defusing a spent refresh token in place. Every JSON string whose
 * value is the token is overwritten (however it is escaped), nothing else is,
 * the file keeps its size and parses to the same document but for the token,
 * and hostile files (a FIFO, another user's file, a missing one, a link into a
 * directory others can write, a string cut off at the end, a key equal to the
 * token, a token too short for the marker) are refused or left alone without
 * blocking. And the one walk every operation takes: a link of another user's, a
 * directory others can write, a home of another user, a hard link of another
 * user's file are refused by load, lock, write, defuse and remove alike, and
 * what they point at is left byte for byte as it was.
 */
#include "fixture.h"
#include "hermes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/tl-hf-XXXXXX";

static int setup(void **state)
{
  (void)state;
  memcpy(dir + sizeof dir - 7, "XXXXXX", 6);
  return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
  (void)state;
  char cmd[sizeof dir + 16];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void put(const char *path, const char *text)
{
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  assert_int_equal(fclose(fp), 0);
}

static char *get(const char *path, size_t *len)
{
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  static char buf[65536];
  *len = fread(buf, 1, sizeof buf - 1, fp);
  buf[*len] = '\0';
  fclose(fp);
  return buf;
}

static void test_defuse__every_copy_however_escaped_and_nothing_else(void **state)
{
  (void)state;
  char path[300];
  snprintf(path, sizeof path, "%s/auth.json", dir);
  /* The token holds a quote, a backslash and a slash; its copies are written three ways. */
  const char *rt = "rt-\"q\\b/s-0123456789";
  const char *text = "{\n"
                     "  \"providers\": {\"nous\": {\"refresh_token\": \"rt-\\\"q\\\\b/s-0123456789\",\n"
                     "    \"access_token\": \"xx-rt-\\\"q\\\\b/s-0123456789-yy\"}},\n"
                     "  \"credential_pool\": {\"nous\": [{\"refresh_token\": \"rt-\\\"q\\\\b\\/s-0123456789\"},\n"
                     "    {\"refresh_token\": \"\\u0072t-\\\"q\\\\b/s-0123456789\"},\n"
                     "    {\"refresh_token\": \"rt-other\"}]}\n"
                     "}\n";
  put(path, text);
  size_t before = strlen(text), len = 0;
  int n = -1;
  tl_error err = {0};
  const char *rts[] = {rt};
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 3);
  char *after = get(path, &len);
  assert_int_equal(len, before);
  assert_null(strstr(after, "0123456789\","));
  json_error_t je;
  json_t *doc = json_loads(after, JSON_REJECT_DUPLICATES, &je);
  assert_non_null(doc);
  const char *single =
      json_string_value(json_object_get(json_object_get(json_object_get(doc, "providers"), "nous"), "refresh_token"));
  assert_non_null(single);
  assert_true(tl__hf_is_defused(single));
  assert_true(tl__token_valid(single, strlen(single)));
  json_t *pool = json_object_get(json_object_get(doc, "credential_pool"), "nous");
  for (size_t i = 0; i < 2; i++)
    assert_true(tl__hf_is_defused(json_string_value(json_object_get(json_array_get(pool, i), "refresh_token"))));
  /* A string that merely contains the token, and another token, are untouched. */
  assert_string_equal(json_string_value(json_object_get(json_array_get(pool, 2), "refresh_token")), "rt-other");
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_object_get(doc, "providers"), "nous"), "access_token")),
      "xx-rt-\"q\\b/s-0123456789-yy");
  json_decref(doc);
  /* Again: nothing left to defuse, and a defused value is never a token to defuse. */
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 0);
}

static void test_defuse__short_token_key_and_cut_off_string(void **state)
{
  (void)state;
  char path[300];
  snprintf(path, sizeof path, "%s/short.json", dir);
  /* A token too short for the whole marker is left alone (a cut marker would not read as defused). */
  put(path, "{\"refresh_token\": \"abcdefghijkl\", \"x\": \"abc");
  int n = -1;
  tl_error err = {0};
  const char *shorty[] = {"abcdefghijkl"};
  assert_int_equal(tl__hf_defuse(&n, path, shorty, 1, &err), TL_OK);
  assert_int_equal(n, 0);
  size_t len = 0;
  assert_string_equal(get(path, &len), "{\"refresh_token\": \"abcdefghijkl\", \"x\": \"abc");
  /* The shortest one defused, and a key that equals the token is a key, not a value. */
  put(path, "{\"abcdefghijklm\" : 1, \"refresh_token\": \"abcdefghijklm\", \"x\": \"abc");
  const char *rts[] = {"abcdefghijklm"};
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 1);
  const char *after = get(path, &len);
  assert_string_equal(after, "{\"abcdefghijklm\" : 1, \"refresh_token\": \"tl-spent-xxxx\", \"x\": \"abc");
  assert_true(tl__hf_is_defused("tl-spent-xxxx"));
}

static void test_defuse__hostile_files(void **state)
{
  (void)state;
  char path[300];
  int n = -1;
  tl_error err = {0};
  const char *rts[] = {"rt-secret-000"};
  /* Missing: nothing to do. */
  snprintf(path, sizeof path, "%s/missing.json", dir);
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 0);
  /* A FIFO without a writer: refused at once, never waited on. */
  snprintf(path, sizeof path, "%s/fifo.json", dir);
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_not_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 0);
  assert_non_null(strstr(err.message, "regular file"));
  /* A directory. */
  snprintf(path, sizeof path, "%s/dir.json", dir);
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_not_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  /* Another user's file (only root can make one): left exactly as it was. */
  if (geteuid() == 0) {
    snprintf(path, sizeof path, "%s/theirs.json", dir);
    put(path, "{\"refresh_token\": \"rt-secret-000\"}");
    assert_int_equal(chown(path, 65534, 65534), 0);
    tl_error_clear(&err);
    assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_EINSECURE);
    size_t len = 0;
    assert_string_equal(get(path, &len), "{\"refresh_token\": \"rt-secret-000\"}");
    assert_null(strstr(err.message, "rt-secret-000"));
  }
  /* Through a symbolic link to one's own file: the file is defused, the link stays. */
  char target[300];
  snprintf(target, sizeof target, "%s/real.json", dir);
  snprintf(path, sizeof path, "%s/link.json", dir);
  put(target, "{\"refresh_token\": \"rt-secret-000\"}");
  assert_int_equal(symlink(target, path), 0);
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_OK);
  assert_int_equal(n, 1);
  struct stat st;
  assert_int_equal(lstat(path, &st), 0);
  assert_true(S_ISLNK(st.st_mode));
  /* A link into a directory others can write (they could swap the file under us): refused, the
   * target left byte for byte as it was. The same rule as a write. */
  char open_dir[300];
  snprintf(open_dir, sizeof open_dir, "%s/open", dir);
  assert_int_equal(mkdir(open_dir, 0700), 0);
  assert_int_equal(chmod(open_dir, 0777), 0);
  snprintf(target, sizeof target, "%s/open/auth.json", dir);
  snprintf(path, sizeof path, "%s/link2.json", dir);
  put(target, "{\"refresh_token\": \"rt-secret-000\"}");
  assert_int_equal(symlink(target, path), 0);
  tl_error_clear(&err);
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_EINSECURE);
  assert_int_equal(n, 0);
  assert_non_null(strstr(err.message, "writable by group or others"));
  size_t len = 0;
  assert_string_equal(get(target, &len), "{\"refresh_token\": \"rt-secret-000\"}");
}

/* Every operation of the layer on path: each refused with TL_EINSECURE, target unchanged. */
static void refused_everywhere(const char *path, const char *target, const char *why)
{
  static const char text[] = "{\"refresh_token\": \"rt-secret-000\"}";
  const char *rts[] = {"rt-secret-000"};
  tl_error err = {0};
  json_t *doc = NULL;
  char sha[65], lock[400];
  int n = 0, fd = -1;
  size_t len = 0;
  put(target, text);
  assert_int_equal(tl__hf_load(&doc, sha, NULL, path, &err), TL_EINSECURE);
  assert_null(doc);
  if (!strstr(err.message, why))
    fail_msg("load %s: '%s' lacks '%s'", path, err.message, why);
  tl_error_clear(&err);
  assert_int_equal(tl__hf_check(path, &err), TL_EINSECURE);
  tl_error_clear(&err);
  assert_int_equal(tl__hf_write(path, "{\"refresh_token\": \"rt-live-111\"}", &err), TL_EINSECURE);
  tl_error_clear(&err);
  assert_int_equal(tl__hf_defuse(&n, path, rts, 1, &err), TL_EINSECURE);
  assert_int_equal(n, 0);
  tl_error_clear(&err);
  assert_int_equal(tl__hf_remove(path, &err), TL_EINSECURE);
  tl_error_clear(&err);
  tl__hf_lock_path(lock, sizeof lock, path);
  if (tl__hf_lock(&fd, lock, tl__now_ms() + 1000, 0, &err) == TL_OK)
    tl__hf_unlock(fd); /* a lock beside a link of ours in our directory is fine; elsewhere it is refused */
  tl_error_clear(&err);
  assert_string_equal(get(target, &len), text);
}

static void test_walk__other_users_links_homes_and_open_directories(void **state)
{
  (void)state;
  char sub[300], path[400], target[400];
  /* A directory others can write, holding a file of ours: anyone could swap it. */
  snprintf(sub, sizeof sub, "%s/open-home", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  assert_int_equal(chmod(sub, 0777), 0);
  snprintf(path, sizeof path, "%s/auth.json", sub);
  refused_everywhere(path, path, "writable by group or others");
  /* Our own link, but in a sticky directory others can write (/tmp-like): not followed either. */
  snprintf(sub, sizeof sub, "%s/sticky", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  assert_int_equal(chmod(sub, 01777), 0);
  snprintf(target, sizeof target, "%s/sticky-target.json", dir);
  snprintf(path, sizeof path, "%s/auth.json", sub);
  assert_int_equal(symlink(target, path), 0);
  refused_everywhere(path, target, "lives in a directory others can write");
  if (geteuid() != 0)
    return; /* the rest needs a second owner */
  /* A home owned by another user, holding a file of ours (the user can replace it). */
  snprintf(sub, sizeof sub, "%s/their-home", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  snprintf(path, sizeof path, "%s/auth.json", sub);
  put(path, "{}");
  assert_int_equal(chown(sub, 65534, 65534), 0);
  refused_everywhere(path, path, "is owned by");
  /* A link of another user's in our own directory, pointing at a file of ours. */
  snprintf(target, sizeof target, "%s/victim.json", dir);
  snprintf(path, sizeof path, "%s/their-link.json", dir);
  put(target, "{}");
  assert_int_equal(symlink(target, path), 0);
  assert_int_equal(lchown(path, 65534, 65534), 0);
  refused_everywhere(path, target, "the symbolic link");
  /* A link in a directory of ours above the home, owned by another user. */
  snprintf(sub, sizeof sub, "%s/real-root", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  snprintf(target, sizeof target, "%s/auth.json", sub);
  snprintf(path, sizeof path, "%s/linked-root", dir);
  assert_int_equal(symlink(sub, path), 0);
  assert_int_equal(lchown(path, 65534, 65534), 0);
  snprintf(path, sizeof path, "%s/linked-root/auth.json", dir);
  refused_everywhere(path, target, "the symbolic link");
  /* A hard link to another user's file in a home of ours. */
  snprintf(target, sizeof target, "%s/theirs.json", dir);
  snprintf(path, sizeof path, "%s/hard.json", dir);
  put(target, "{}");
  assert_int_equal(chown(target, 65534, 65534), 0);
  assert_int_equal(link(target, path), 0);
  refused_everywhere(path, target, "owned by");
  /* Our own link to our own file: followed, and it stays a link. */
  snprintf(target, sizeof target, "%s/mine.json", dir);
  snprintf(path, sizeof path, "%s/my-link.json", dir);
  put(target, "{}");
  assert_int_equal(symlink(target, path), 0);
  tl_error err = {0};
  assert_int_equal(tl__hf_write(path, "{\"version\": 1}", &err), TL_OK);
  struct stat st;
  assert_int_equal(lstat(path, &st), 0);
  assert_true(S_ISLNK(st.st_mode));
  size_t len = 0;
  assert_string_equal(get(target, &len), "{\"version\": 1}");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_walk__other_users_links_homes_and_open_directories),
      cmocka_unit_test(test_defuse__every_copy_however_escaped_and_nothing_else),
      cmocka_unit_test(test_defuse__short_token_key_and_cut_off_string),
      cmocka_unit_test(test_defuse__hostile_files),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
