/*
 * portal.c - tl-portal, a loopback stand-in for Nous Portal's OAuth endpoints.
 *
 * A real HTTP server (libmicrohttpd) bound to 127.0.0.1 only, used by the tests,
 * the demo and the benchmarks. It behaves as a rotating authorization server:
 *   POST /api/oauth/token        grant_type=refresh_token (RT in the header
 *                                x-nous-refresh-token or the form field
 *                                refresh_token): a new RT on every refresh;
 *                                a spent RT revokes the whole family with
 *                                Nous' answer "Refresh token reuse detected",
 *                                later uses get "Refresh session has been revoked".
 *                                grant_type=urn:ietf:params:oauth:grant-type:device_code
 *   POST /api/oauth/device/code  RFC 8628 device authorization
 * Administration (tests only):
 *   POST /admin/seed             new grant; answers its RT and access token
 *   POST /admin/fault            kind=lose|429|500|hang|drop_before, count=N, retry_after=S;
 *                                kind=slow, ms=M: the answer to a rotation waits M ms (admin calls do not);
 *                                kind=hostile_*: answers that attack the client (see hostile_unspent
 *                                and hostile_rotated below)
 *   POST /admin/config           at_lifetime=S, latency_ms=M, approve_after=N
 *   POST /admin/approve          user_code=X approves a device code
 *   GET  /admin/counters         refreshes, reuse_detections, families_revoked, ...
 *   GET  /admin/issued           every RT issued, as sha256 + state
 * --dump FILE appends every refresh and access token issued, in plain text ("rt TOKEN", "at TOKEN"):
 * tests scan files for the ones that must be gone.
 * "lose" rotates and then drops the connection without an answer, like a
 * response lost on the way back. The server binds 127.0.0.1 (or, with --addr,
 * another address in 127.0.0.0/8) and nothing else.
 *
 * --provider NAME gives it another authorization server's personality (the
 * admin routes stay the same; a form or a JSON body is read by its
 * Content-Type):
 *   codex      POST /oauth/token as auth.openai.com: form or JSON body, client_id
 *              app_EMoamEEZ73f0CkXaXp7hrann required; answers id_token and a JWT access
 *              token (exp, https://api.openai.com/auth claims; no expires_in), OpenAI's
 *              nested errors: 401 {"error":{"code":"refresh_token_reused"|
 *              "refresh_token_invalidated",...}}, 500 {"error":"temporary-failure"}
 *   anthropic  POST /v1/oauth/token as platform.claude.com: JSON body only (a form gets
 *              400 "Invalid request format"), client_id 9d1c250a-... required; sk-ant-
 *              tokens, expires_in; every refused RT gets 400 invalid_grant "Refresh token
 *              not found or invalid"
 *   xai        POST /oauth2/token as auth.x.ai: form, client_id b1a00492-... required; id_token,
 *              expires_in; a refused RT gets 400 invalid_grant "Refresh token has been revoked"
 *              (unknown: "Refresh token not found or invalid"); fault kind=403: the tier gate
 *   minimax    POST /oauth/token as api.minimax.io: form, client_id 78257093-... required;
 *              200 {"status":"success", ..., "expired_in": <epoch ms>}; a refused RT gets
 *              200 {"status":"error","base_resp":{...}}
 * /admin/config reuse_mode=revoke_family (default: a spent RT kills its family) or
 * reject_only (only the stale presenter is refused); the counters add json_bodies,
 * form_bodies and bad_client.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY 65536

/* ---- grant state ---------------------------------------------------------- */

typedef struct rt_rec {
  char *token;
  int family;
  int generation;
  int state; /* 0 current, 1 rotated, 2 revoked-with-family */
  struct rt_rec *next_hash;
} rt_rec;

typedef struct family {
  int revoked;
  int generation;
} family;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
#define NBUCKET 65536
static rt_rec *buckets[NBUCKET];
static rt_rec **all_rts;
static size_t n_rts, cap_rts;
static family *families;
static size_t n_families, cap_families;

static struct {
  long requests, refreshes, reuse_detections, families_revoked, unknown_rt, revoked_uses, device_grants, faults;
  long json_bodies, form_bodies, bad_client;
} ctr;

static struct {
  int at_lifetime;
  int latency_ms;
  int approve_after;
  int reject_only; /* reuse_mode=reject_only: a spent RT is refused, its family lives on */
} cfg = {3600, 0, 1, 0};

/* Whose authorization server this is (--provider). */
enum personality { P_NOUS, P_CODEX, P_ANTHROPIC, P_XAI, P_MINIMAX };
static enum personality who = P_NOUS;
#define CODEX_CLIENT     "app_EMoamEEZ73f0CkXaXp7hrann"
#define ANTHROPIC_CLIENT "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
#define XAI_CLIENT       "b1a00492-073a-47ea-816f-4c329264a828"
#define MINIMAX_CLIENT   "78257093-7e40-4613-99e0-527b14b39113"
static const char *const clients[] = {NULL, CODEX_CLIENT, ANTHROPIC_CLIENT, XAI_CLIENT, MINIMAX_CLIENT};

static struct {
  char kind[32];
  int count;
  int retry_after;
  int ms; /* kind=slow: how long the answer to a rotation waits */
} fault;

typedef struct device {
  char device_code[40], user_code[12];
  int approved, polls;
  struct device *next;
} device;
static device *devices;

static unsigned long hash(const char *s)
{
  unsigned long h = 5381;
  while (*s)
    h = h * 33 + (unsigned char)*s++;
  return h % NBUCKET;
}

static rt_rec *find_rt(const char *t)
{
  for (rt_rec *r = buckets[hash(t)]; r; r = r->next_hash)
    if (strcmp(r->token, t) == 0)
      return r;
  return NULL;
}

static void random_hex(char *out, size_t bytes)
{
  unsigned char b[32];
  static const char hex[] = "0123456789abcdef";
  RAND_bytes(b, (int)bytes);
  for (size_t i = 0; i < bytes; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  out[2 * bytes] = '\0';
}

/* --dump FILE (tests only): every token issued, one per line, so a test can scan files for them all. */
static FILE *dump;

static void dump_token(const char *kind, const char *token)
{
  if (!dump)
    return;
  fprintf(dump, "%s %s\n", kind, token);
  fflush(dump);
}

static rt_rec *issue_rt(int fam, int gen)
{
  char rnd[33], buf[96];
  random_hex(rnd, 16);
  snprintf(buf, sizeof buf, "%s%d-%d-%s", who == P_ANTHROPIC ? "sk-ant-ort01-" : "rt-", fam, gen, rnd);
  rt_rec *r = calloc(1, sizeof *r);
  r->token = strdup(buf);
  r->family = fam;
  r->generation = gen;
  unsigned long h = hash(r->token);
  r->next_hash = buckets[h];
  buckets[h] = r;
  if (n_rts == cap_rts) {
    cap_rts = cap_rts ? cap_rts * 2 : 1024;
    all_rts = realloc(all_rts, cap_rts * sizeof *all_rts);
  }
  all_rts[n_rts++] = r;
  dump_token("rt", r->token);
  return r;
}

static int new_family(void)
{
  if (n_families == cap_families) {
    cap_families = cap_families ? cap_families * 2 : 64;
    families = realloc(families, cap_families * sizeof *families);
  }
  families[n_families].revoked = 0;
  families[n_families].generation = 0;
  return (int)n_families++;
}

/* A JWT-shaped token (three non-empty parts, base64url without padding) whose payload carries exp and scope,
 * and for Codex the ChatGPT account claims (id_token: the e-mail too). */
static char *access_token_kind(int fam, long exp, int id_token)
{
  char payload[512], rnd[17];
  random_hex(rnd, 8);
  if (who == P_CODEX)
    snprintf(payload, sizeof payload,
             "{%s\"https://api.openai.com/auth\":{\"chatgpt_account_id\":\"acct-%d\",\"chatgpt_plan_type\":"
             "\"plus\",\"chatgpt_user_id\":\"user-%d\"},\"exp\":%ld,\"jti\":\"%s\"}",
             id_token ? "\"email\":\"family@example.com\"," : "", fam, fam, exp, rnd);
  else
    snprintf(payload, sizeof payload,
             "{\"sub\":\"family-%d\",\"scope\":\"inference:invoke\",\"exp\":%ld,\"jti\":\"%s\"}", fam, exp, rnd);
  unsigned char enc[1024];
  int n = EVP_EncodeBlock(enc, (const unsigned char *)payload, (int)strlen(payload));
  for (int i = 0; i < n; i++)
    enc[i] = enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : enc[i];
  while (n > 0 && enc[n - 1] == '=')
    n--;
  enc[n] = '\0';
  char *out = malloc((size_t)n + 64);
  snprintf(out, (size_t)n + 64, "eyJhbGciOiJub25lIn0.%s.sig%s", enc, rnd);
  dump_token("at", out);
  return out;
}

static char *access_token(int fam, long exp)
{
  if (who == P_ANTHROPIC || who == P_MINIMAX) { /* opaque: the expiry is only in the answer */
    char rnd[33], *out = malloc(64);
    random_hex(rnd, 16);
    snprintf(out, 64, "%s%d-%s", who == P_ANTHROPIC ? "sk-ant-oat01-" : "mm-at-", fam, rnd);
    return out;
  }
  return access_token_kind(fam, exp, 0);
}

static json_t *token_answer(int fam, rt_rec *rt)
{
  long exp = (long)time(NULL) + cfg.at_lifetime;
  char *at = access_token(fam, exp);
  if (who == P_CODEX) { /* the expiry is the JWT's exp alone */
    char *idt = access_token_kind(fam, exp, 1);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "id_token", idt, "access_token", at, "refresh_token", rt->token,
                          "token_type", "Bearer");
    free(idt);
    free(at);
    return o;
  }
  if (who == P_ANTHROPIC) {
    json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s}", "access_token", at, "refresh_token", rt->token, "expires_in",
                          cfg.at_lifetime, "token_type", "Bearer", "scope", "user:inference user:profile");
    free(at);
    return o;
  }
  if (who == P_XAI) {
    char *idt = access_token_kind(fam, exp, 1);
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "access_token", at, "refresh_token", rt->token, "id_token",
                          idt, "expires_in", cfg.at_lifetime, "token_type", "Bearer", "scope",
                          "openid profile email offline_access grok-cli:access api:access");
    free(idt);
    free(at);
    return o;
  }
  if (who == P_MINIMAX) { /* expired_in: an absolute time in ms */
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:s}", "status", "success", "access_token", at, "refresh_token",
                          rt->token, "expired_in", (json_int_t)exp * 1000, "token_type", "Bearer");
    free(at);
    return o;
  }
  json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "access_token", at, "refresh_token", rt->token, "token_type",
                        "Bearer", "expires_in", cfg.at_lifetime, "scope", "inference:invoke", "inference_base_url",
                        "https://inference-api.nousresearch.com/v1");
  free(at);
  return o;
}

static volatile sig_atomic_t stop;

/* ---- HTTP plumbing ---------------------------------------------------------- */

typedef struct req {
  char *body;
  size_t len;
  int too_big;
} req;

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j, int retry_after)
{
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", "application/json");
  if (retry_after >= 0) {
    char ra[16];
    snprintf(ra, sizeof ra, "%d", retry_after);
    MHD_add_response_header(r, "Retry-After", ra);
  }
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result oauth_error(struct MHD_Connection *c, unsigned status, const char *code, const char *desc)
{
  return reply_json(c, status, json_pack("{s:s, s:s}", "error", code, "error_description", desc), -1);
}

/* Form field from the urlencoded body; result new (MHD's decoder). */
static char *form_field(const char *body, const char *name)
{
  size_t nl = strlen(name);
  for (const char *p = body; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t seg = amp ? (size_t)(amp - p) : strlen(p);
    if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      char *v = strndup(p + nl + 1, seg - nl - 1);
      for (char *q = v; *q; q++)
        if (*q == '+')
          *q = ' ';
      size_t n = MHD_http_unescape(v);
      v[n] = '\0';
      return v;
    }
    p = amp ? amp + 1 : NULL;
  }
  return NULL;
}

static int json_request(struct MHD_Connection *c)
{
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
  return ct && strncmp(ct, "application/json", 16) == 0;
}

/* A field of the request body: a JSON object's string member or a form field, by Content-Type; new. */
static char *body_field(struct MHD_Connection *c, const char *body, const char *name)
{
  if (!json_request(c))
    return form_field(body, name);
  json_t *j = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
  json_t *v = json_object_get(j, name);
  char *out = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
  json_decref(j);
  return out;
}

/* Why a refresh token is refused, in the personality's own words and status. */
enum refusal { R_UNKNOWN, R_REVOKED, R_REUSED };
static enum MHD_Result refuse_rt(struct MHD_Connection *c, enum refusal why)
{
  if (who == P_CODEX) {
    static const char *const code[] = {"refresh_token_invalidated", "refresh_token_invalidated",
                                       "refresh_token_reused"};
    static const char *const msg[] = {"Your session has ended. Please log in again.",
                                      "Your session has ended. Please log in again.",
                                      "Your refresh token has already been used to generate a new access token. "
                                      "Please try signing in again."};
    return reply_json(c, 401,
                      json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg[why], "type",
                                "invalid_request_error", "param", "code", code[why]),
                      -1);
  }
  if (who == P_ANTHROPIC)
    return oauth_error(c, 400, "invalid_grant", "Refresh token not found or invalid");
  if (who == P_XAI)
    return oauth_error(c, 400, "invalid_grant",
                       why == R_UNKNOWN ? "Refresh token not found or invalid" : "Refresh token has been revoked");
  if (who == P_MINIMAX)
    return reply_json(c, 200,
                      json_pack("{s:s, s:{s:i, s:s}}", "status", "error", "base_resp", "status_code", 1004,
                                "status_msg", "refresh token invalid"),
                      -1);
  static const char *const desc[] = {"Unknown or invalid refresh token.", "Refresh session has been revoked",
                                     "Refresh token reuse detected"};
  return oauth_error(c, 400, "invalid_grant", desc[why]);
}

static int take_fault(char kind[32], int *retry_after)
{
  if (fault.count <= 0)
    return 0;
  fault.count--;
  ctr.faults++;
  memcpy(kind, fault.kind, 32);
  *retry_after = fault.retry_after;
  return 1;
}

/* ---- hostile answers (tests of the client's defences) ---------------------- */

/* A JSON string literal for s (quotes and escapes included); new. */
static char *json_literal(const char *s)
{
  json_t *j = json_string(s);
  char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
  json_decref(j);
  return t;
}

/* Percent-encoding as a form body carries it; new. */
static char *pct(const char *s)
{
  static const char hex[] = "0123456789ABCDEF";
  char *o = malloc(3 * strlen(s) + 1), *p = o;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-_.~", c)) {
      *p++ = (char)c;
    } else {
      *p++ = '%';
      *p++ = hex[c >> 4];
      *p++ = hex[c & 15];
    }
  }
  *p = '\0';
  return o;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text, const char *retry_after)
{
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", "application/json");
  if (retry_after)
    MHD_add_response_header(r, "Retry-After", retry_after);
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

/*
 * Hostile answers that spend nothing: the presented RT stays current at the portal.
 *   hostile_escape_error  400 invalid_request whose error and description carry terminal escapes (CSI, OSC 52,
 *                         C1 CSI, a bidi override) and a CR LF
 *   hostile_echo_rt       400 invalid_request whose description echoes the presented RT plainly, percent-encoded
 *                         and in part
 *   hostile_retry_after   429 with Retry-After: 99999999999999999999
 * (hostile_squat, handled before: 200 with a new grant of the portal's own for any token at all, as a
 * program holding serve's port while serve is down could answer Hermes.)
 * Returns 0 if kind is none of them.
 */
static int hostile_unspent(enum MHD_Result *out, struct MHD_Connection *c, const char *kind, const char *rt)
{
  char body[8192];
  if (strcmp(kind, "hostile_escape_error") == 0) {
    *out = reply_text(c, 400,
                      "{\"error\":\"invalid_request\\u001b[31m\\u001b]0;owned\\u0007\",\"error_description\":"
                      "\"\\u001b[2J\\u001b]52;c;b3duZWQ=\\u0007\\u009b31m\\u202eevil\\r\\nFAKE: line\\u007f\"}",
                      NULL);
    return 1;
  }
  if (strcmp(kind, "hostile_echo_rt") == 0) {
    char *enc = pct(rt), part[16] = "", *lit;
    snprintf(part, sizeof part, "%.10s", rt);
    char text[4096];
    snprintf(text, sizeof text, "bad token %s; form refresh_token=%s; starts %s; ends %s", rt, enc, part,
             rt + (strlen(rt) > 10 ? strlen(rt) - 10 : 0));
    lit = json_literal(text);
    snprintf(body, sizeof body, "{\"error\":\"invalid_request\",\"error_description\":%s}", lit ? lit : "\"\"");
    free(enc);
    free(lit);
    *out = reply_text(c, 400, body, NULL);
    return 1;
  }
  if (strcmp(kind, "hostile_retry_after") == 0) {
    *out = reply_text(c, 429, "{\"error\":\"rate_limited\"}", "99999999999999999999");
    return 1;
  }
  return 0;
}

/*
 * Hostile answers to a real rotation: the presented RT is spent at the portal and the new one (new_rt) is its
 * only successor, so a client that cannot use the answer has lost the grant unless it keeps the answer.
 *   hostile_crlf_rt        the new RT followed by CR LF and a header line
 *   hostile_ctl_at         an access token with terminal escapes (the new RT is fine)
 *   hostile_expires_huge   expires_in 1e300          hostile_expires_negative  expires_in -3600
 *   hostile_expires_string expires_in "3600"         hostile_expires_bigint    expires_in 99999999999999999999
 *                          (with an opaque access token: no JWT exp to fall back on)
 *   hostile_duplicate_keys refresh_token twice (the second a fake)
 * Returns 0 if kind is none of them.
 */
static int hostile_rotated(enum MHD_Result *out, struct MHD_Connection *c, const char *kind, const char *new_rt,
                           const char *at)
{
  char body[8192], *lit_rt = json_literal(new_rt), *lit_at = json_literal(at);
  const char *expires = "3600";
  int handled = 1;
  body[0] = '\0';
  if (strcmp(kind, "hostile_crlf_rt") == 0) {
    char bad[512];
    snprintf(bad, sizeof bad, "%s\r\nX-Injected: 1", new_rt);
    char *lit = json_literal(bad);
    snprintf(body, sizeof body, "{\"access_token\":%s,\"refresh_token\":%s,\"expires_in\":3600}", lit_at, lit);
    free(lit);
  } else if (strcmp(kind, "hostile_ctl_at") == 0) {
    snprintf(body, sizeof body,
             "{\"access_token\":\"at-\\u001b[2J\\u001b]0;owned\\u0007\",\"refresh_token\":%s,\"expires_in\":3600}",
             lit_rt);
  } else if (strcmp(kind, "hostile_duplicate_keys") == 0) {
    snprintf(body, sizeof body,
             "{\"access_token\":%s,\"refresh_token\":%s,\"refresh_token\":\"rt-fake-duplicate\",\"expires_in\":3600}",
             lit_at, lit_rt);
  } else if (strcmp(kind, "hostile_expires_huge") == 0) {
    expires = "1e300";
  } else if (strcmp(kind, "hostile_expires_negative") == 0) {
    expires = "-3600";
  } else if (strcmp(kind, "hostile_expires_string") == 0) {
    expires = "\"3600\"";
  } else if (strcmp(kind, "hostile_expires_bigint") == 0) {
    expires = "99999999999999999999";
  } else {
    handled = 0;
  }
  if (handled && !body[0]) /* an opaque access token: no JWT exp to fall back on */
    snprintf(body, sizeof body, "{\"access_token\":\"at-opaque-%.12s\",\"refresh_token\":%s,\"expires_in\":%s}",
             new_rt + (strlen(new_rt) > 12 ? strlen(new_rt) - 12 : 0), lit_rt, expires);
  free(lit_rt);
  free(lit_at);
  if (handled)
    *out = reply_text(c, 200, body, NULL);
  return handled;
}

static enum MHD_Result handle_refresh(struct MHD_Connection *c, const char *body)
{
  const char *hdr = who == P_NOUS ? MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-nous-refresh-token") : NULL;
  char *rt = hdr ? strdup(hdr) : body_field(c, body, "refresh_token");
  char kind[32] = "";
  int retry_after = -1;
  enum MHD_Result result;
  if (!rt || !*rt) {
    free(rt);
    return oauth_error(c, 400, "invalid_request", "Missing refresh token");
  }
  if (who != P_NOUS) {
    char *client = body_field(c, body, "client_id");
    int ok = client && strcmp(client, clients[who]) == 0;
    free(client);
    if (!ok) {
      free(rt);
      pthread_mutex_lock(&mu);
      ctr.bad_client++;
      pthread_mutex_unlock(&mu);
      return oauth_error(c, who == P_CODEX ? 401 : 400, "invalid_client", "Unknown client");
    }
  }
  pthread_mutex_lock(&mu);
  int faulted = take_fault(kind, &retry_after);
  if (faulted && strcmp(kind, "429") == 0) {
    pthread_mutex_unlock(&mu);
    free(rt);
    return reply_json(c, 429,
                      json_pack("{s:s, s:s}", "error", "rate_limited", "error_description", "Too many requests"),
                      retry_after >= 0 ? retry_after : 2);
  }
  if (faulted && strcmp(kind, "500") == 0) {
    pthread_mutex_unlock(&mu);
    free(rt);
    return reply_json(c, 500, json_pack("{s:s}", "error", who == P_CODEX ? "temporary-failure" : "server_error"), -1);
  }
  if (faulted && strcmp(kind, "403") == 0) { /* xAI's tier gate: not a login problem */
    pthread_mutex_unlock(&mu);
    free(rt);
    return reply_json(c, 403, json_pack("{s:s, s:s}", "code", "permission_denied", "error", "tier not allowed"), -1);
  }
  if (faulted && strcmp(kind, "hostile_squat") == 0) {
    /* Whoever holds serve's port while it is down: any token is "refreshed" with a grant of its own. */
    int fam = new_family();
    json_t *a = token_answer(fam, issue_rt(fam, 0));
    pthread_mutex_unlock(&mu);
    free(rt);
    return reply_json(c, 200, a, -1);
  }
  if (faulted && hostile_unspent(&result, c, kind, rt)) {
    pthread_mutex_unlock(&mu);
    free(rt);
    return result;
  }
  if (faulted && strcmp(kind, "drop_before") == 0) {
    /* Close without looking at the token: as if it never arrived. Still a LOST for the client. */
    pthread_mutex_unlock(&mu);
    free(rt);
    return MHD_NO;
  }
  rt_rec *r = find_rt(rt);
  free(rt);
  if (!r) {
    ctr.unknown_rt++;
    pthread_mutex_unlock(&mu);
    return refuse_rt(c, R_UNKNOWN);
  }
  family *f = &families[r->family];
  if (f->revoked) {
    ctr.revoked_uses++;
    pthread_mutex_unlock(&mu);
    return refuse_rt(c, R_REVOKED);
  }
  if (r->state != 0 && cfg.reject_only) {
    ctr.reuse_detections++; /* only the stale presenter is refused */
    pthread_mutex_unlock(&mu);
    return refuse_rt(c, R_REUSED);
  }
  if (r->state != 0) {
    /* A spent RT: theft as far as the server can tell. Revoke the family. */
    ctr.reuse_detections++;
    ctr.families_revoked++;
    f->revoked = 1;
    for (size_t i = 0; i < n_rts; i++)
      if (all_rts[i]->family == r->family)
        all_rts[i]->state = 2;
    pthread_mutex_unlock(&mu);
    return refuse_rt(c, R_REUSED);
  }
  r->state = 1;
  f->generation++;
  rt_rec *child = issue_rt(r->family, f->generation);
  ctr.refreshes++;
  json_t *answer = token_answer(r->family, child);
  int hang = faulted && strcmp(kind, "hang") == 0;
  int lose = faulted && strcmp(kind, "lose") == 0;
  int slow_ms = faulted && strcmp(kind, "slow") == 0 ? fault.ms : 0;
  pthread_mutex_unlock(&mu);
  for (int i = 0; hang && i < 600 && !stop; i++)
    usleep(100000); /* the client's timeout fires first */
  if (slow_ms > 0)
    usleep((useconds_t)slow_ms * 1000); /* rotated; the answer is on its way, slowly */
  if (lose) {
    json_decref(answer);
    return MHD_NO; /* rotated, but the answer never leaves */
  }
  if (faulted && strncmp(kind, "hostile_", 8) == 0 &&
      hostile_rotated(&result, c, kind, child->token, json_string_value(json_object_get(answer, "access_token")))) {
    json_decref(answer);
    return result;
  }
  result = reply_json(c, 200, answer, -1);
  return result;
}

static enum MHD_Result handle_device_poll(struct MHD_Connection *c, const char *body)
{
  char *code = form_field(body, "device_code");
  pthread_mutex_lock(&mu);
  device *d = devices;
  while (d && (!code || strcmp(d->device_code, code) != 0))
    d = d->next;
  free(code);
  if (!d) {
    pthread_mutex_unlock(&mu);
    return oauth_error(c, 400, "invalid_grant", "Unknown device code");
  }
  d->polls++;
  if (!d->approved && cfg.approve_after > 0 && d->polls >= cfg.approve_after)
    d->approved = 1;
  if (d->approved == 2) {
    pthread_mutex_unlock(&mu);
    return oauth_error(c, 400, "expired_token", "Device code already used");
  }
  if (!d->approved) {
    pthread_mutex_unlock(&mu);
    return oauth_error(c, 400, "authorization_pending", "Waiting for the user");
  }
  d->approved = 2;
  int fam = new_family();
  rt_rec *r = issue_rt(fam, 0);
  ctr.device_grants++;
  json_t *a = token_answer(fam, r);
  pthread_mutex_unlock(&mu);
  return reply_json(c, 200, a, -1);
}

static enum MHD_Result handle_device_code(struct MHD_Connection *c)
{
  device *d = calloc(1, sizeof *d);
  random_hex(d->device_code, 16);
  random_hex(d->user_code, 4);
  pthread_mutex_lock(&mu);
  d->next = devices;
  devices = d;
  pthread_mutex_unlock(&mu);
  char uri[128];
  snprintf(uri, sizeof uri, "http://127.0.0.1/device?user_code=%s", d->user_code);
  return reply_json(c, 200,
                    json_pack("{s:s, s:s, s:s, s:s, s:i, s:i}", "device_code", d->device_code, "user_code",
                              d->user_code, "verification_uri", "http://127.0.0.1/device", "verification_uri_complete",
                              uri, "expires_in", 600, "interval", 1),
                    -1);
}

static enum MHD_Result handle_admin(struct MHD_Connection *c, const char *url, const char *body)
{
  if (strcmp(url, "/admin/counters") == 0) {
    pthread_mutex_lock(&mu);
    json_t *j = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "requests", (json_int_t)ctr.requests,
        "refreshes", (json_int_t)ctr.refreshes, "reuse_detections", (json_int_t)ctr.reuse_detections,
        "families_revoked", (json_int_t)ctr.families_revoked, "unknown_rt", (json_int_t)ctr.unknown_rt, "revoked_uses",
        (json_int_t)ctr.revoked_uses, "device_grants", (json_int_t)ctr.device_grants, "faults", (json_int_t)ctr.faults,
        "families", (json_int_t)n_families, "issued", (json_int_t)n_rts, "json_bodies", (json_int_t)ctr.json_bodies,
        "form_bodies", (json_int_t)ctr.form_bodies, "bad_client", (json_int_t)ctr.bad_client);
    pthread_mutex_unlock(&mu);
    return reply_json(c, 200, j, -1);
  }
  if (strcmp(url, "/admin/issued") == 0) {
    json_t *arr = json_array();
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_rts; i++) {
      unsigned char md[32];
      char hex[65];
      static const char hx[] = "0123456789abcdef";
      EVP_Digest(all_rts[i]->token, strlen(all_rts[i]->token), md, NULL, EVP_sha256(), NULL);
      for (int k = 0; k < 32; k++) {
        hex[2 * k] = hx[md[k] >> 4];
        hex[2 * k + 1] = hx[md[k] & 15];
      }
      hex[64] = '\0';
      static const char *const st[] = {"current", "rotated", "revoked"};
      json_array_append_new(arr, json_pack("{s:s, s:i, s:i, s:s}", "fingerprint", hex, "family", all_rts[i]->family,
                                           "generation", all_rts[i]->generation, "state", st[all_rts[i]->state]));
    }
    pthread_mutex_unlock(&mu);
    return reply_json(c, 200, arr, -1);
  }
  if (strcmp(url, "/admin/seed") == 0) {
    pthread_mutex_lock(&mu);
    int fam = new_family();
    rt_rec *r = issue_rt(fam, 0);
    json_t *a = token_answer(fam, r);
    json_object_set_new(a, "family", json_integer(fam));
    pthread_mutex_unlock(&mu);
    return reply_json(c, 200, a, -1);
  }
  if (strcmp(url, "/admin/fault") == 0) {
    char *kind = form_field(body, "kind"), *count = form_field(body, "count"), *ra = form_field(body, "retry_after"),
         *ms = form_field(body, "ms");
    pthread_mutex_lock(&mu);
    snprintf(fault.kind, sizeof fault.kind, "%s", kind ? kind : "");
    fault.count = count ? atoi(count) : 1;
    fault.retry_after = ra ? atoi(ra) : -1;
    fault.ms = ms ? atoi(ms) : 0;
    pthread_mutex_unlock(&mu);
    free(kind);
    free(count);
    free(ra);
    free(ms);
    return reply_json(c, 200, json_pack("{s:b}", "ok", 1), -1);
  }
  if (strcmp(url, "/admin/config") == 0) {
    char *a = form_field(body, "at_lifetime"), *l = form_field(body, "latency_ms"),
         *p = form_field(body, "approve_after"), *m = form_field(body, "reuse_mode");
    pthread_mutex_lock(&mu);
    if (m)
      cfg.reject_only = strcmp(m, "reject_only") == 0;
    free(m);
    if (a)
      cfg.at_lifetime = atoi(a);
    if (l)
      cfg.latency_ms = atoi(l);
    if (p)
      cfg.approve_after = atoi(p);
    pthread_mutex_unlock(&mu);
    free(a);
    free(l);
    free(p);
    return reply_json(c, 200, json_pack("{s:b}", "ok", 1), -1);
  }
  if (strcmp(url, "/admin/approve") == 0) {
    char *code = form_field(body, "user_code");
    int found = 0;
    pthread_mutex_lock(&mu);
    for (device *d = devices; d; d = d->next)
      if (code && strcmp(d->user_code, code) == 0 && !d->approved)
        d->approved = found = 1;
    pthread_mutex_unlock(&mu);
    free(code);
    return reply_json(c, found ? 200 : 404, json_pack("{s:b}", "ok", found), -1);
  }
  return oauth_error(c, 404, "not_found", "No such endpoint");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *size, void **con_cls)
{
  (void)cls;
  (void)version;
  req *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    *con_cls = r;
    return MHD_YES;
  }
  if (*size) {
    if (r->len + *size > MAX_BODY)
      r->too_big = 1;
    else {
      r->body = realloc(r->body, r->len + *size + 1);
      memcpy(r->body + r->len, data, *size);
      r->len += *size;
      r->body[r->len] = '\0';
    }
    *size = 0;
    return MHD_YES;
  }
  const char *body = r->body ? r->body : "";
  pthread_mutex_lock(&mu);
  if (strncmp(url, "/admin/", 7) != 0)
    ctr.requests++; /* the counters count the OAuth endpoints only */
  int latency = cfg.latency_ms;
  pthread_mutex_unlock(&mu);
  if (latency > 0)
    usleep((useconds_t)latency * 1000);
  if (r->too_big)
    return oauth_error(c, 413, "invalid_request", "Body too large");
  if (strncmp(url, "/admin/", 7) == 0)
    return handle_admin(c, url, body);
  if (strcmp(method, "POST") != 0)
    return oauth_error(c, 405, "invalid_request", "POST only");
  if (strcmp(url, "/api/oauth/device/code") == 0)
    return handle_device_code(c);
  static const char *const token_paths[] = {"/api/oauth/token", "/oauth/token", "/v1/oauth/token", "/oauth2/token",
                                            "/oauth/token"};
  const char *token_path = token_paths[who];
  if (strcmp(url, token_path) == 0) {
    pthread_mutex_lock(&mu);
    if (json_request(c))
      ctr.json_bodies++;
    else
      ctr.form_bodies++;
    pthread_mutex_unlock(&mu);
    if (who == P_ANTHROPIC && !json_request(c))
      return oauth_error(c, 400, "invalid_request", "Invalid request format");
    char *grant = body_field(c, body, "grant_type");
    enum MHD_Result rc;
    if (grant && strcmp(grant, "refresh_token") == 0)
      rc = handle_refresh(c, body);
    else if (grant && strcmp(grant, "urn:ietf:params:oauth:grant-type:device_code") == 0)
      rc = handle_device_poll(c, body);
    else
      rc = oauth_error(c, 400, "unsupported_grant_type", "Unsupported grant type");
    free(grant);
    return rc;
  }
  return oauth_error(c, 404, "not_found", "No such endpoint");
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)c;
  (void)toe;
  req *r = *con_cls;
  if (r) {
    free(r->body);
    free(r);
  }
  *con_cls = NULL;
}

int main(int argc, char **argv)
{
  int port = 0;
  const char *port_file = NULL, *bind_addr = "127.0.0.1";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc)
      bind_addr = argv[++i];
    else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
      port_file = argv[++i];
    else if (strcmp(argv[i], "--at-lifetime") == 0 && i + 1 < argc)
      cfg.at_lifetime = atoi(argv[++i]);
    else if (strcmp(argv[i], "--latency-ms") == 0 && i + 1 < argc)
      cfg.latency_ms = atoi(argv[++i]);
    else if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc && strcmp(argv[i + 1], "codex") == 0 && ++i)
      who = P_CODEX;
    else if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc && strcmp(argv[i + 1], "anthropic") == 0 && ++i)
      who = P_ANTHROPIC;
    else if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc && strcmp(argv[i + 1], "nous") == 0 && ++i)
      who = P_NOUS;
    else if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc && strcmp(argv[i + 1], "xai") == 0 && ++i)
      who = P_XAI;
    else if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc && strcmp(argv[i + 1], "minimax") == 0 && ++i)
      who = P_MINIMAX;
    else if (strcmp(argv[i], "--dump") == 0 && i + 1 < argc) {
      if (!(dump = fopen(argv[++i], "a"))) {
        perror(argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "usage: tl-portal [--port N] [--port-file FILE] [--addr 127.X.Y.Z] [--at-lifetime SECONDS] "
                      "[--latency-ms MS] [--provider nous|codex|anthropic|xai|minimax] [--dump FILE]\n"
                      "A loopback stand-in for Nous Portal's OAuth endpoints (binds 127.0.0.1, or another "
                      "127.0.0.0/8 address, only).\n");
      return strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, bind_addr, &addr.sin_addr) != 1 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "tl-portal: --addr must be an IPv4 address in 127.0.0.0/8\n");
    return 2;
  }
  /* SIGTERM and SIGINT are taken by the main thread alone, with sigwait: a handler that set a flag could
   * run on one of libmicrohttpd's threads while the main thread slept in pause() for good. */
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL); /* inherited by every thread the daemon starts */
  signal(SIGPIPE, SIG_IGN);
  struct MHD_Daemon *d =
      MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0, NULL,
                       NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
                       MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "tl-portal: cannot listen on %s:%d: %s\n", bind_addr, port, strerror(errno));
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  int bound = info ? info->port : port;
  if (port_file) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", bound) < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0) {
      fprintf(stderr, "tl-portal: cannot write %s\n", port_file);
      MHD_stop_daemon(d);
      return 1;
    }
  }
  printf("tl-portal listening on http://%s:%d\n", bind_addr, bound);
  fflush(stdout);
  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0)
    ;
  stop = 1; /* a connection held by the hang fault lets go */
  MHD_stop_daemon(d);
  return 0;
}
