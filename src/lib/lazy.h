/*
 * lazy.h - libcurl and libmicrohttpd, loaded the first time they are needed
 * (lazy.c). Only src/lib/ includes this.
 *
 * Each table holds the functions tokenledger calls, under their library's
 * names without the prefix: tl__curl()->easy_init() is curl_easy_init(). A
 * table is filled once per process (dlopen of the library's soname, then
 * every symbol) and never changes afterwards; NULL means the library cannot
 * be loaded, and tl__lazy_error() says why (the caller turns that into its
 * own error: a request not sent, a URL not checked, serve not started).
 */
#ifndef TL_LAZY_H
#define TL_LAZY_H

#define CURL_DISABLE_TYPECHECK /* calls go through the table, not curl.h's checking macros */
#include <curl/curl.h>
#include <microhttpd.h>

typedef struct tl__curl_api {
  CURLcode (*global_init)(long flags);
  CURL *(*easy_init)(void);
  CURLcode (*easy_setopt)(CURL *h, CURLoption option, ...);
  CURLcode (*easy_perform)(CURL *h);
  CURLcode (*easy_getinfo)(CURL *h, CURLINFO info, ...);
  void (*easy_cleanup)(CURL *h);
  const char *(*easy_strerror)(CURLcode code);
  char *(*easy_escape)(CURL *h, const char *s, int length);
  void (*free)(void *p);
  time_t (*getdate)(const char *p, const time_t *unused);
  struct curl_slist *(*slist_append)(struct curl_slist *list, const char *s);
  void (*slist_free_all)(struct curl_slist *list);
  CURLU *(*url)(void);
  CURLUcode (*url_set)(CURLU *u, CURLUPart what, const char *part, unsigned int flags);
  CURLUcode (*url_get)(const CURLU *u, CURLUPart what, char **part, unsigned int flags);
  void (*url_cleanup)(CURLU *u);
} tl__curl_api;

typedef struct tl__mhd_api {
  struct MHD_Daemon *(*start_daemon)(unsigned int flags, uint16_t port, MHD_AcceptPolicyCallback apc, void *apc_cls,
                                     MHD_AccessHandlerCallback dh, void *dh_cls, ...);
  void (*stop_daemon)(struct MHD_Daemon *d);
  struct MHD_Response *(*create_response_from_buffer_with_free_callback)(size_t size, void *buffer,
                                                                         MHD_ContentReaderFreeCallback crfc);
  void (*destroy_response)(struct MHD_Response *r);
  enum MHD_Result (*add_response_header)(struct MHD_Response *r, const char *header, const char *content);
  enum MHD_Result (*queue_response)(struct MHD_Connection *c, unsigned int status, struct MHD_Response *r);
  const char *(*lookup_connection_value)(struct MHD_Connection *c, enum MHD_ValueKind kind, const char *key);
  int (*get_connection_values)(struct MHD_Connection *c, enum MHD_ValueKind kind, MHD_KeyValueIterator it, void *cls);
  const union MHD_ConnectionInfo *(*get_connection_info)(struct MHD_Connection *c, enum MHD_ConnectionInfoType t, ...);
  size_t (*http_unescape)(char *val);
} tl__mhd_api;

/* libcurl's table, with curl_global_init done (SSLKEYLOGFILE removed first); NULL if it cannot be loaded. */
const tl__curl_api *tl__curl(void);
/* libmicrohttpd's table; NULL if it cannot be loaded. */
const tl__mhd_api *tl__mhd(void);
/* Why the last table asked for is NULL (dlopen's or dlsym's own message); "" otherwise. */
const char *tl__lazy_error(void);

#endif
