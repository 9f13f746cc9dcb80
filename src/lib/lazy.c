/*
 * lazy.c - libcurl, libmicrohttpd and libcrypto, loaded when first needed.
 *
 * `tokenledger token` with a fresh access token needs neither: it opens the
 * ledger and reads one row. Loading libcurl at process start (with GnuTLS,
 * Kerberos, LDAP, SSH, RTMP and the rest of its dependencies) and
 * libmicrohttpd cost about four milliseconds, more than everything else such
 * a process does; libcrypto alone (its 21,000 relocations) cost a millisecond,
 * and such a process hashes nothing. So the library calls them through tables
 * filled on first use, by dlopen of the soname the build linked against
 * (TL_LIBCURL_SONAME, TL_LIBMHD_SONAME, TL_LIBCRYPTO_SONAME, read from the
 * libraries by CMake) and dlsym of each function; the command-line tool is
 * linked --as-needed, so nothing loads them before a refresh, a login, an
 * import or serve needs them. libcrypto's few functions have wrappers below,
 * each with its failure value when the library cannot be loaded (then nothing
 * that needs a hash, a MAC or randomness succeeds, and tl_fingerprint gives
 * the impossible value the schema refuses).
 *
 * Invariants: a table is filled once per process (pthread_once) and is then
 * read-only; it is published only when every function was found, so a caller
 * never sees half a table; the handles are never closed (the libraries stay
 * for the life of the process, as linked ones would). libcurl's global
 * initialisation happens here, after SSLKEYLOGFILE is removed from the
 * environment: libcurl with OpenSSL opens that file during initialisation and
 * appends every TLS session key to it (a host that initialised libcurl itself
 * has decided already).
 */
#include "lazy.h"
#include "internal.h"

#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TL_LIBCURL_SONAME
#define TL_LIBCURL_SONAME "libcurl.so.4"
#endif
#ifndef TL_LIBMHD_SONAME
#define TL_LIBMHD_SONAME "libmicrohttpd.so.12"
#endif
#ifndef TL_LIBCRYPTO_SONAME
#define TL_LIBCRYPTO_SONAME "libcrypto.so.3"
#endif

static char lazy_why[256];

static void *open_library(const char *soname)
{
  void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!h)
    snprintf(lazy_why, sizeof lazy_why, "%s", dlerror());
  return h;
}

/* One function into its slot: POSIX lets dlsym's result be converted to the function's pointer type. */
static int sym(void *h, const char *soname, const char *name, void *slot, size_t size)
{
  void *p = dlsym(h, name);
  if (!p || size != sizeof p) {
    snprintf(lazy_why, sizeof lazy_why, "%s: no %s", soname, name);
    return 0;
  }
  memcpy(slot, &p, sizeof p);
  return 1;
}
#define SYM(h, so, prefix, api, f) sym((h), (so), prefix #f, &(api).f, sizeof(api).f)

static tl__curl_api curl_api;
static const tl__curl_api *curl_ready;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_load(void)
{
  const char *so = TL_LIBCURL_SONAME;
  tl__curl_api a;
  void *h = open_library(so);
  /* On failure the handle stays open: dlclose of a half-used library gains nothing. */
  if (!h || !SYM(h, so, "curl_", a, global_init) || !SYM(h, so, "curl_", a, easy_init) ||
      !SYM(h, so, "curl_", a, easy_setopt) || !SYM(h, so, "curl_", a, easy_perform) ||
      !SYM(h, so, "curl_", a, easy_getinfo) || !SYM(h, so, "curl_", a, easy_cleanup) ||
      !SYM(h, so, "curl_", a, easy_strerror) || !SYM(h, so, "curl_", a, easy_escape) || !SYM(h, so, "curl_", a, free) ||
      !SYM(h, so, "curl_", a, getdate) || !SYM(h, so, "curl_", a, slist_append) ||
      !SYM(h, so, "curl_", a, slist_free_all) || !SYM(h, so, "curl_", a, url) || !SYM(h, so, "curl_", a, url_set) ||
      !SYM(h, so, "curl_", a, url_get) || !SYM(h, so, "curl_", a, url_cleanup))
    return;
  unsetenv("SSLKEYLOGFILE");
  if (a.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    snprintf(lazy_why, sizeof lazy_why, "curl_global_init failed");
    return;
  }
  curl_api = a;
  curl_ready = &curl_api;
}

const tl__curl_api *tl__curl(void)
{
  pthread_once(&curl_once, curl_load);
  return curl_ready;
}

static tl__mhd_api mhd_api;
static const tl__mhd_api *mhd_ready;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;

static void mhd_load(void)
{
  const char *so = TL_LIBMHD_SONAME;
  tl__mhd_api a;
  void *h = open_library(so);
  if (!h || !SYM(h, so, "MHD_", a, start_daemon) || !SYM(h, so, "MHD_", a, stop_daemon) ||
      !SYM(h, so, "MHD_", a, create_response_from_buffer_with_free_callback) ||
      !SYM(h, so, "MHD_", a, destroy_response) || !SYM(h, so, "MHD_", a, add_response_header) ||
      !SYM(h, so, "MHD_", a, queue_response) || !SYM(h, so, "MHD_", a, lookup_connection_value) ||
      !SYM(h, so, "MHD_", a, get_connection_values) || !SYM(h, so, "MHD_", a, get_connection_info) ||
      !SYM(h, so, "MHD_", a, http_unescape))
    return;
  mhd_api = a;
  mhd_ready = &mhd_api;
}

const tl__mhd_api *tl__mhd(void)
{
  pthread_once(&mhd_once, mhd_load);
  return mhd_ready;
}

/* ---- libcrypto ------------------------------------------------------------ */

typedef struct crypto_api {
  const EVP_MD *(*sha256)(void);
  int (*digest)(const void *data, size_t count, unsigned char *md, unsigned int *size, const EVP_MD *type,
                ENGINE *impl);
  unsigned char *(*hmac)(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *data, size_t data_len,
                         unsigned char *md, unsigned int *md_len);
  int (*rand_bytes)(unsigned char *buf, int num);
  int (*encode_block)(unsigned char *t, const unsigned char *f, int n);
  int (*decode_block)(unsigned char *t, const unsigned char *f, int n);
  int (*ct_memcmp)(const void *in_a, const void *in_b, size_t len);
  int (*hex2int)(unsigned char c);
} crypto_api;

static crypto_api crypto;
static const crypto_api *crypto_ready;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;

static void crypto_load(void)
{
  const char *so = TL_LIBCRYPTO_SONAME;
  crypto_api a;
  void *h = open_library(so);
  if (!h || !sym(h, so, "EVP_sha256", &a.sha256, sizeof a.sha256) ||
      !sym(h, so, "EVP_Digest", &a.digest, sizeof a.digest) || !sym(h, so, "HMAC", &a.hmac, sizeof a.hmac) ||
      !sym(h, so, "RAND_bytes", &a.rand_bytes, sizeof a.rand_bytes) ||
      !sym(h, so, "EVP_EncodeBlock", &a.encode_block, sizeof a.encode_block) ||
      !sym(h, so, "EVP_DecodeBlock", &a.decode_block, sizeof a.decode_block) ||
      !sym(h, so, "CRYPTO_memcmp", &a.ct_memcmp, sizeof a.ct_memcmp) ||
      !sym(h, so, "OPENSSL_hexchar2int", &a.hex2int, sizeof a.hex2int))
    return;
  crypto = a;
  crypto_ready = &crypto;
}

static const crypto_api *crypto_get(void)
{
  pthread_once(&crypto_once, crypto_load);
  return crypto_ready;
}

int tl__sha256(unsigned char md[32], const void *data, size_t len)
{
  const crypto_api *c = crypto_get();
  unsigned int n = 0;
  return c && c->digest(data, len, md, &n, c->sha256(), NULL) == 1 && n == 32;
}

int tl__hmac_sha256(unsigned char md[32], const void *key, int key_len, const unsigned char *msg, size_t len)
{
  const crypto_api *c = crypto_get();
  unsigned int n = 0;
  return c && c->hmac(c->sha256(), key, key_len, msg, len, md, &n) && n == 32;
}

int tl__rand_bytes(unsigned char *buf, int n)
{
  const crypto_api *c = crypto_get();
  return c ? c->rand_bytes(buf, n) : 0;
}

int tl__b64_encode(unsigned char *out, const unsigned char *in, int n)
{
  const crypto_api *c = crypto_get();
  int len = c ? c->encode_block(out, in, n) : 0;
  if (len <= 0)
    out[0] = '\0';
  return len > 0 ? len : 0;
}

int tl__b64_decode(unsigned char *out, const unsigned char *in, int n)
{
  const crypto_api *c = crypto_get();
  return c ? c->decode_block(out, in, n) : -1;
}

int tl__memcmp_ct(const void *a, const void *b, size_t n)
{
  const crypto_api *c = crypto_get();
  return c ? c->ct_memcmp(a, b, n) : 1; /* without libcrypto, nothing is equal */
}

int tl__hexchar2int(unsigned char ch)
{
  const crypto_api *c = crypto_get();
  return c ? c->hex2int(ch) : -1;
}

const char *tl__lazy_error(void)
{
  return lazy_why;
}
