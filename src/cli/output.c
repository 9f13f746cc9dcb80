/*
 * output.c - how the tool prints: tables, JSON, errors, exit codes.
 *
 * A table shows the columns that matter (each command's cli_col spec), hides
 * optional columns that are empty in every row, and, only when standard output
 * is a terminal, fits the terminal's width (paths shortened from the left,
 * long text from the right) and colours state words (unless NO_COLOR is set).
 * Piped output is never shortened or coloured. --wide shows every column as
 * the library gave it; --columns picks. JSON is one document on one line, the
 * library's rendering, and is never shortened.
 *
 * Invariant: nothing printed here can hold a secret, because reports come
 * from views without secret columns; the one command that prints a token
 * (`token`) does so on purpose, in cmd_token.c.
 */
#include "cli.h"

#include <langinfo.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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
  case TL_EFILE: return EXIT_BADFILE;
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

/* ---- the terminal ------------------------------------------------------- */

int cli_term_width(void)
{
  if (!isatty(STDOUT_FILENO))
    return 0;
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
    return ws.ws_col;
  const char *env = getenv("COLUMNS");
  int n = env ? atoi(env) : 0;
  return n >= 20 && n <= 1000 ? n : 80;
}

int cli_colour(void)
{
  const char *term = getenv("TERM"), *no = getenv("NO_COLOR");
  return isatty(STDOUT_FILENO) && !(no && *no) && term && *term && strcmp(term, "dumb") != 0;
}

/* Drawing characters (tree lines, the ellipsis) only for a terminal that takes UTF-8; pipes get ASCII. */
int cli_utf8(void)
{
  const char *cs = nl_langinfo(CODESET);
  return isatty(STDOUT_FILENO) && cs && (strcmp(cs, "UTF-8") == 0 || strcmp(cs, "utf8") == 0);
}

const char *cli_sgr(const char *code)
{
  static char buf[8][16];
  static int next;
  static int on = -1;
  if (on < 0)
    on = cli_colour();
  if (!on)
    return "";
  char *b = buf[next++ & 7];
  snprintf(b, sizeof buf[0], "\033[%sm", code);
  return b;
}

const char *cli_tilde(char *buf, size_t n, const char *path)
{
  const char *home = getenv("HOME");
  size_t hl = home ? strlen(home) : 0;
  while (hl > 1 && home[hl - 1] == '/')
    hl--;
  /* Paths come from the file system: terminal controls in them are shown escaped. */
  if (path && hl > 1 && strncmp(path, home, hl) == 0 && (path[hl] == '/' || path[hl] == '\0')) {
    buf[0] = '~';
    if (n > 1)
      tl_text_escape(buf + 1, n - 1, path + hl);
  } else {
    tl_text_escape(buf, n, path);
  }
  return buf;
}

const char *cli_time(char *buf, size_t n, const char *iso)
{
  /* 2026-09-20T11:00:00Z, 2026-09-20T11:00:00.123Z */
  if (iso && strlen(iso) >= 20 && iso[4] == '-' && iso[10] == 'T' && iso[13] == ':' && iso[16] == ':' &&
      iso[strlen(iso) - 1] == 'Z')
    snprintf(buf, n, "%.10s %.8s", iso, iso + 11);
  else
    snprintf(buf, n, "%s", iso ? iso : "");
  return buf;
}

const char *cli_duration(char *buf, size_t n, int64_t s)
{
  int64_t a = s < 0 ? -s : s;
  const char *sign = s < 0 ? "-" : "";
  if (a < 60)
    snprintf(buf, n, "%s%llds", sign, (long long)a);
  else if (a < 3600)
    snprintf(buf, n, "%s%lldm%02llds", sign, (long long)(a / 60), (long long)(a % 60));
  else if (a < 86400)
    snprintf(buf, n, "%s%lldh%02lldm", sign, (long long)(a / 3600), (long long)(a % 3600 / 60));
  else
    snprintf(buf, n, "%s%lldd%02lldh", sign, (long long)(a / 86400), (long long)(a % 86400 / 3600));
  return buf;
}

cli_out cli_out_of(const cli_args *a)
{
  cli_out o = {0};
  const cli_cmd *c = a->cmd;
  for (int i = 0; c->opts && c->opts[i].name; i++) {
    if (strcmp(c->opts[i].name, "json") == 0)
      o.json = a->val[i] != NULL;
    else if (strcmp(c->opts[i].name, "wide") == 0)
      o.wide = a->val[i] != NULL;
    else if (strcmp(c->opts[i].name, "columns") == 0)
      o.columns = a->val[i];
  }
  return o;
}

/* ---- tables ------------------------------------------------------------- */

/* Display width of UTF-8 text: one column per character (tables hold no wide or combining ones we know of). */
static size_t text_width(const char *s)
{
  size_t n = 0;
  for (; *s; s++)
    n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

/* Byte offset of the character at column col. */
static size_t byte_at(const char *s, size_t col)
{
  size_t i = 0, c = 0;
  while (s[i] && c < col) {
    i++;
    while (((unsigned char)s[i] & 0xC0) == 0x80)
      i++;
    c++;
  }
  return i;
}

static const char *ellipsis(void)
{
  return cli_utf8() ? "\xe2\x80\xa6" : "...";
}

/* The text cut to width columns: from the right (keep the head), or from the left (keep the tail of a path). */
static char *cut(const char *text, size_t width, int keep_tail)
{
  size_t w = text_width(text);
  if (w <= width)
    return strdup(text);
  const char *el = ellipsis();
  size_t ew = text_width(el);
  if (width <= ew)
    return strndup(el, byte_at(el, width));
  size_t keep = width - ew;
  char *out = malloc(strlen(text) + strlen(el) + 1);
  if (!out)
    return NULL;
  if (keep_tail)
    sprintf(out, "%s%s", el, text + byte_at(text, w - keep));
  else
    sprintf(out, "%.*s%s", (int)byte_at(text, keep), text, el);
  return out;
}

static const char *state_colour(const char *v)
{
  static const char *const red[] = {
      "needs_login", "needs_reauth",  "unknown_outcome",          "unknown", "rejected",  "failed",
      "dead",        "reuse_blocked", "reuse_detected_by_server", "spent",   "uncertain", "FAIL",
      NULL};
  static const char *const yellow[] = {"expired",   "exhausted", "attention", "waiting", "presented",
                                       "in_flight", "transient", "not_sent",  NULL};
  static const char *const green[] = {"valid", "current", "active", "ok", "refreshed", "fresh", NULL};
  for (size_t i = 0; red[i]; i++)
    if (strcmp(v, red[i]) == 0)
      return "31";
  for (size_t i = 0; yellow[i]; i++)
    if (strcmp(v, yellow[i]) == 0)
      return "33";
  for (size_t i = 0; green[i]; i++)
    if (strcmp(v, green[i]) == 0)
      return "32";
  return NULL;
}

static const cli_col *spec_find(const cli_col *spec, const char *name)
{
  for (size_t i = 0; spec && spec[i].name; i++)
    if (strcmp(spec[i].name, name) == 0 || (spec[i].header && strcmp(spec[i].header, name) == 0))
      return &spec[i];
  return NULL;
}

static int report_col(const tl_report *r, const char *name)
{
  for (size_t c = 0; c < tl_report_columns(r); c++)
    if (strcmp(tl_report_column(r, c), name) == 0)
      return (int)c;
  return -1;
}

static void column_names(char *buf, size_t n, const cli_col *spec)
{
  size_t len = 0;
  buf[0] = '\0';
  for (size_t i = 0; spec && spec[i].name && len < n; i++)
    len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", spec[i].name);
}

int cli_check_columns(const cli_out *o, const cli_col *spec)
{
  if (!o->columns)
    return -1;
  char list[1024];
  const char *p = o->columns;
  if (!*p)
    return usage_error("%s", "--columns needs at least one column name");
  while (*p) {
    size_t n = strcspn(p, ",");
    char name[64];
    if (n == 0 || n >= sizeof name) {
      column_names(list, sizeof list, spec);
      return usage_error("--columns: an empty or overlong name; the columns are: %s", list);
    }
    memcpy(name, p, n);
    name[n] = '\0';
    if (!spec_find(spec, name)) {
      shown_arg b;
      column_names(list, sizeof list, spec);
      return usage_error("--columns: no column %s; the columns are: %s", shown(&b, name), list);
    }
    p += n;
    if (*p == ',')
      p++;
  }
  return -1;
}

typedef struct tcol {
  int rc;             /* report column */
  const cli_col *sp;  /* its spec, or NULL */
  const char *header; /* shown header */
  size_t width;
  int short_time; /* a time shown as MM-DD HH:MM, to fit a narrow terminal */
} tcol;

/* Which columns, in which order. Returns the count, or -1 after a usage error. */
static int choose_columns(tcol *cols, size_t max, const tl_report *r, const cli_col *spec, const cli_out *o)
{
  size_t n = 0;
  if (o->columns) {
    for (const char *p = o->columns; *p && n < max;) {
      size_t len = strcspn(p, ",");
      char name[64];
      snprintf(name, sizeof name, "%.*s", (int)len, p);
      const cli_col *sp = spec_find(spec, name);
      int rc = report_col(r, sp ? sp->name : name);
      if (rc < 0) {
        shown_arg b;
        usage_error("--columns: no column %s in this report", shown(&b, name));
        return -1;
      }
      cols[n++] = (tcol){rc, sp, sp && sp->header ? sp->header : tl_report_column(r, (size_t)rc), 0, 0};
      p += len;
      if (*p == ',')
        p++;
    }
    return (int)n;
  }
  if (o->wide || !spec) {
    for (size_t c = 0; c < tl_report_columns(r) && n < max; c++)
      cols[n++] = (tcol){(int)c, spec_find(spec, tl_report_column(r, c)), tl_report_column(r, c), 0, 0};
    return (int)n;
  }
  for (size_t i = 0; spec[i].name && n < max; i++) {
    int rc = report_col(r, spec[i].name);
    if (rc < 0 || !(spec[i].flags & COL_DEFAULT))
      continue;
    if (spec[i].flags & COL_OPTIONAL) {
      int any = 0;
      for (size_t row = 0; row < tl_report_rows(r) && !any; row++) {
        const char *v = tl_report_cell(r, row, (size_t)rc);
        any = v && *v && !((spec[i].flags & COL_BOOL) && strcmp(v, "0") == 0);
      }
      if (!any)
        continue;
    }
    cols[n++] = (tcol){rc, &spec[i], spec[i].header ? spec[i].header : spec[i].name, 0, 0};
  }
  return (int)n;
}

/* A cell as the table shows it (new). */
static char *cell_text(const char *v, const cli_col *sp, int raw)
{
  char buf[4200];
  if (!v || !*v)
    return strdup("-");
  if (raw || !sp)
    return strdup(v);
  if (sp->flags & COL_BOOL)
    return strdup(strcmp(v, "0") == 0 ? "-" : "yes");
  if (sp->flags & COL_OK)
    return strdup(strcmp(v, "0") == 0 ? "FAIL" : "ok");
  if (sp->flags & COL_TIME)
    return strdup(cli_time(buf, sizeof buf, v));
  if (sp->flags & (COL_PATH | COL_TILDE)) {
    /* every path in the text, not only a leading one */
    const char *home = getenv("HOME");
    size_t hl = home ? strlen(home) : 0;
    if (hl < 2)
      return strdup(v);
    size_t len = 0;
    for (const char *p = v; *p && len + 2 < sizeof buf;) {
      if (strncmp(p, home, hl) == 0 && (p[hl] == '/' || p[hl] == '\0' || p[hl] == ' ')) {
        buf[len++] = '~';
        p += hl;
      } else {
        buf[len++] = *p++;
      }
    }
    buf[len] = '\0';
    return strdup(buf);
  }
  return strdup(v);
}

static size_t min_width(const tcol *c, size_t floor)
{
  size_t h = text_width(c->header);
  return h > floor ? h : floor;
}

/* Shrinks the shrinkable columns to at least floor, one character at a time, always the widest. */
static size_t shrink(tcol *cols, size_t n, size_t total, size_t term, size_t floor)
{
  while (total > term) {
    tcol *widest = NULL;
    for (size_t i = 0; i < n; i++)
      if (cols[i].sp && (cols[i].sp->flags & (COL_PATH | COL_SHRINK | COL_TILDE)) &&
          cols[i].width > min_width(&cols[i], floor) && (!widest || cols[i].width > widest->width))
        widest = &cols[i];
    if (!widest)
      break;
    widest->width--;
    total--;
  }
  return total;
}

/*
 * Fits a row into the terminal: text and paths shrink to 8 characters, then times lose their year and
 * seconds, then text shrinks to 4. What still does not fit wraps: the line is as short as it gets.
 */
static void fit(tcol *cols, size_t n, size_t term)
{
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    total += cols[i].width + (i + 1 < n ? 2 : 0);
  total = shrink(cols, n, total, term, 8);
  for (size_t i = 0; i < n && total > term; i++) {
    if (cols[i].sp && (cols[i].sp->flags & COL_TIME) && cols[i].width > min_width(&cols[i], 11)) {
      total -= cols[i].width - min_width(&cols[i], 11);
      cols[i].width = min_width(&cols[i], 11);
      cols[i].short_time = 1;
    }
  }
  shrink(cols, n, total, term, 4);
}

static void put_cell(const char *text, size_t width, int last, const char *colour, int header)
{
  size_t w = text_width(text);
  if (header)
    fputs(cli_sgr("1"), stdout);
  else if (colour)
    fputs(cli_sgr(colour), stdout);
  fputs(text, stdout);
  if ((header || colour) && *cli_sgr("0"))
    fputs(cli_sgr("0"), stdout);
  if (!last)
    printf("%*s", (int)(width - (w < width ? w : width) + 2), "");
}

static int print_table(const tl_report *r, const cli_col *spec, const cli_out *o)
{
  tcol cols[64];
  int nc = choose_columns(cols, 64, r, spec, o);
  if (nc < 0)
    return EXIT_USAGE;
  size_t nr = tl_report_rows(r), n = (size_t)nc;
  char **cells = calloc(nr * n + 1, sizeof *cells);
  if (!cells)
    return EXIT_FAILURE_;
  int code = EXIT_OK;
  for (size_t c = 0; c < n; c++)
    cols[c].width = text_width(cols[c].header);
  for (size_t i = 0; i < nr && code == EXIT_OK; i++)
    for (size_t c = 0; c < n; c++) {
      char *t = cell_text(tl_report_cell(r, i, (size_t)cols[c].rc), cols[c].sp, o->wide);
      if (!t) {
        code = EXIT_FAILURE_;
        break;
      }
      cells[i * n + c] = t;
      if (text_width(t) > cols[c].width)
        cols[c].width = text_width(t);
    }
  size_t term = o->wide ? 0 : (size_t)cli_term_width();
  if (term)
    fit(cols, n, term);
  for (size_t c = 0; code == EXIT_OK && c < n; c++)
    put_cell(cols[c].header, cols[c].width, c + 1 == n, NULL, 1);
  if (code == EXIT_OK)
    fputc('\n', stdout);
  for (size_t i = 0; code == EXIT_OK && i < nr; i++) {
    for (size_t c = 0; c < n; c++) {
      const char *t = cells[i * n + c];
      char *shortened = NULL, brief[16];
      if (cols[c].short_time && strlen(t) == 19 && t[4] == '-' && t[10] == ' ') {
        snprintf(brief, sizeof brief, "%.11s", t + 5); /* YYYY-MM-DD HH:MM:SS -> MM-DD HH:MM */
        t = brief;
      }
      if (term && text_width(t) > cols[c].width)
        t = shortened = cut(t, cols[c].width, cols[c].sp && (cols[c].sp->flags & COL_PATH));
      const char *colour = cols[c].sp && (cols[c].sp->flags & (COL_STATE | COL_OK)) && t ? state_colour(t) : NULL;
      put_cell(t ? t : "-", cols[c].width, c + 1 == n, colour, 0);
      free(shortened);
    }
    fputc('\n', stdout);
  }
  for (size_t i = 0; i < nr * n; i++)
    free(cells[i]);
  free(cells);
  return code;
}

int cli_print(const tl_report *r, const cli_col *spec, const cli_out *o, unsigned json_flags)
{
  if (o->json) {
    char *text = NULL;
    tl_error err = {0};
    tl_status rc = tl_report_json(&text, r, json_flags, &err);
    if (rc != TL_OK)
      return tl_cli_fail(&err, rc);
    puts(text);
    free(text);
    return EXIT_OK;
  }
  return print_table(r, spec, o);
}

int cli_print_object(size_t n, const char *const *keys, const char *const *vals, const int *num)
{
  tl_report *r = NULL;
  tl_error err = {0};
  char *text = NULL;
  tl_status rc = tl_report_new(&r, keys, n, &err);
  if (rc == TL_OK)
    rc = tl_report_add_row(r, vals, num, &err);
  if (rc == TL_OK)
    rc = tl_report_json(&text, r, TL_JSON_OBJECT, &err);
  tl_report_free(r);
  if (rc != TL_OK)
    return tl_cli_fail(&err, rc);
  puts(text);
  free(text);
  return EXIT_OK;
}

int cli_result(const cli_args *a, size_t n, const char *const *keys, const char *const *vals, const int *num,
               const char *fmt, ...)
{
  if (cli_out_of(a).json)
    return cli_print_object(n, keys, vals, num);
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fputc('\n', stdout);
  return EXIT_OK;
}
