/*
 * output.c - how the tool prints: tables, JSON, errors, exit codes.
 *
 * A table shows the columns that matter (each command's cli_col spec), hides
 * optional columns that are empty in every row, and, when standard output is a
 * terminal or $COLUMNS is set, fits that width: columns with one value in every
 * row go first (that value is said below the table), then the extra ones,
 * then headers and long text shrink (paths from the left, text from the
 * right); the column that explains a row wraps instead of being cut. Help
 * wraps at the same width, at most 80. State words are coloured on a terminal
 * (unless NO_COLOR is set). Piped output without $COLUMNS is never shortened,
 * and never coloured. A single-row report (serve --status) is one "name
 * value" line per column. --wide shows every column as the library gave it;
 * --columns picks (and nothing is left out). JSON is one document on one line,
 * the library's rendering, and is never shortened.
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
  char text[sizeof err->message + 16];
  if (err && err->message[0])
    fprintf(stderr, "tokenledger: %s\n", cli_tilde_text(text, sizeof text, err->message));
  else
    fprintf(stderr, "tokenledger: %s\n", tl_status_name(rc));
  return tl_cli_exit_code(rc);
}

/* ---- the terminal ------------------------------------------------------- */

int cli_term_width(void)
{
  /* $COLUMNS wins when it is set, as for ls(1) and ps(1), on a pipe too (COLUMNS=80 cmd | less). */
  const char *env = getenv("COLUMNS");
  if (env && *env) {
    char *end = NULL;
    long n = strtol(env, &end, 10);
    if (end && !*end && n >= 20 && n <= 1000)
      return (int)n;
  }
  if (!isatty(STDOUT_FILENO))
    return 0;
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
    return ws.ws_col;
  return 80;
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

const char *cli_tilde_text(char *buf, size_t n, const char *text)
{
  const char *home = getenv("HOME");
  size_t hl = home ? strlen(home) : 0, len = 0;
  while (hl > 1 && home[hl - 1] == '/')
    hl--;
  if (!n)
    return buf;
  for (const char *p = text; *p && len + 1 < n;) {
    /* at the start of a path: the text's start, or after a space, quote, '=', '(' or ':' */
    int start = p == text || strchr(" '\"=(:", p[-1]);
    if (hl > 1 && start && strncmp(p, home, hl) == 0 && (strchr("/ '\",:)", p[hl]) || p[hl] == '\0')) {
      buf[len++] = '~';
      p += hl;
    } else {
      buf[len++] = *p++;
    }
  }
  buf[len] = '\0';
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
      int code = usage_error("--columns: no column %s; the columns are: %s", shown(&b, name), list);
      const char *names[128];
      size_t k = 0;
      for (size_t i = 0; spec && spec[i].name && k + 2 <= 128; i++) {
        names[k++] = spec[i].name;
        if (spec[i].header)
          names[k++] = spec[i].header;
      }
      cli_did_you_mean("", "", name, names, k);
      return code;
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
  size_t width;       /* shown width */
  size_t content;     /* the widest cell */
  int short_time;     /* a time shown as MM-DD HH:MM, to fit a narrow terminal */
  int hidden;         /* left out to fit the terminal */
  int constant;       /* left out because every row has the same value (said below the table) */
  int wrap;           /* the last column, continued on the next lines instead of cut */
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
      cols[n++] = (tcol){.rc = rc, .sp = sp, .header = sp && sp->header ? sp->header : tl_report_column(r, (size_t)rc)};
      p += len;
      if (*p == ',')
        p++;
    }
    return (int)n;
  }
  if (o->wide || !spec) {
    for (size_t c = 0; c < tl_report_columns(r) && n < max; c++)
      cols[n++] = (tcol){.rc = (int)c, .sp = spec_find(spec, tl_report_column(r, c)), .header = tl_report_column(r, c)};
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
        any = v && *v && !((spec[i].flags & COL_BOOL) && (strcmp(v, "0") == 0 || strcmp(v, "false") == 0));
      }
      if (!any)
        continue;
    }
    cols[n++] = (tcol){.rc = rc, .sp = &spec[i], .header = spec[i].header ? spec[i].header : spec[i].name};
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
  int no = strcmp(v, "0") == 0 || strcmp(v, "false") == 0;
  if (sp->flags & COL_BOOL)
    return strdup(no ? "-" : "yes");
  if (sp->flags & COL_OK)
    return strdup(no ? "FAIL" : "ok");
  if (sp->flags & COL_TIME)
    return strdup(cli_time(buf, sizeof buf, v));
  if (sp->flags & (COL_PATH | COL_TILDE))
    return strdup(cli_tilde_text(buf, sizeof buf, v)); /* every path in the text, not only a leading one */
  return strdup(v);
}

/* The last visible column wraps (its text is the one that explains the row) when it is at least this wide. */
#define WRAP_MIN 30

static int flag(const tcol *c, unsigned f)
{
  return c->sp && (c->sp->flags & f);
}

/* The row's width: visible columns and the two spaces between them; a wrapping column counts at most WRAP_MIN. */
static size_t total_width(const tcol *cols, size_t n)
{
  size_t total = 0, seen = 0;
  for (size_t i = 0; i < n; i++) {
    if (cols[i].hidden)
      continue;
    total += (seen++ ? 2 : 0) + (cols[i].wrap && cols[i].width > WRAP_MIN ? WRAP_MIN : cols[i].width);
  }
  return total;
}

/* Marks the last visible column as wrapping if its spec allows it. */
static void mark_wrap(tcol *cols, size_t n)
{
  size_t last = n;
  for (size_t i = 0; i < n; i++) {
    cols[i].wrap = 0;
    if (!cols[i].hidden)
      last = i;
  }
  if (last < n && flag(&cols[last], COL_WRAP))
    cols[last].wrap = 1;
}

/* Shrinks the shrinkable columns (headers too, down to floor) one character at a time, always the widest. */
static void shrink(tcol *cols, size_t n, size_t term, size_t floor)
{
  while (total_width(cols, n) > term) {
    tcol *widest = NULL;
    for (size_t i = 0; i < n; i++) {
      size_t h = text_width(cols[i].header), min = h < cols[i].content ? cols[i].content : h;
      if (flag(&cols[i], COL_PATH | COL_SHRINK | COL_TILDE | COL_WRAP))
        min = floor;
      else if (min > cols[i].content)
        min = cols[i].content > 4 ? cols[i].content : 4; /* a header wider than every cell is cut to them */
      if (!cols[i].hidden && !cols[i].wrap && cols[i].width > min && (!widest || cols[i].width > widest->width))
        widest = &cols[i];
    }
    if (!widest)
      break;
    widest->width--;
  }
}

/* Hides columns with this flag (or, with flag 0, those with one value in every row), rightmost first, until fit. */
static void drop(tcol *cols, size_t n, size_t term, unsigned f, char **cells, size_t nr)
{
  for (size_t k = n; k-- > 0 && total_width(cols, n) > term;) {
    if (cols[k].hidden)
      continue;
    size_t visible = 0;
    for (size_t i = 0; i < n; i++)
      visible += !cols[i].hidden;
    if (visible <= 2)
      return;
    if (f) {
      if (!flag(&cols[k], f))
        continue;
    } else {
      int same = nr >= 2;
      for (size_t row = 1; row < nr && same; row++)
        same = strcmp(cells[row * n + k], cells[k]) == 0;
      if (!same)
        continue;
      cols[k].constant = 1;
    }
    cols[k].hidden = 1;
    mark_wrap(cols, n);
  }
}

/*
 * Fits a row into the terminal, keeping what explains a row readable as long as possible: first columns with
 * the same value in every row go (said once below the table), then times lose their year and seconds, then the
 * columns the spec calls extra go, then headers wider than their cells and long text shrink to 8 characters,
 * then to 4. The last column, when it is the row's explanation (COL_WRAP), keeps at least WRAP_MIN characters
 * and continues on the next lines. With --columns nothing is left out. What still does not fit wraps.
 */
static void fit(tcol *cols, size_t n, size_t term, int keep_all, char **cells, size_t nr)
{
  mark_wrap(cols, n);
  if (!keep_all)
    drop(cols, n, term, 0, cells, nr);
  for (size_t i = 0; i < n && total_width(cols, n) > term; i++) {
    if (flag(&cols[i], COL_TIME) && cols[i].width > 11) {
      cols[i].width = text_width(cols[i].header) > 11 ? text_width(cols[i].header) : 11;
      cols[i].short_time = 1;
    }
  }
  if (!keep_all)
    drop(cols, n, term, COL_EXTRA, cells, nr);
  shrink(cols, n, term, 8);
  shrink(cols, n, term, 4);
  /* the wrapping column takes what is left */
  size_t others = 0, seen = 0;
  for (size_t i = 0; i < n; i++)
    if (!cols[i].hidden) {
      others += (seen++ ? 2 : 0) + (cols[i].wrap ? 0 : cols[i].width);
    }
  for (size_t i = 0; i < n; i++)
    if (cols[i].wrap && !cols[i].hidden) {
      size_t room = term > others ? term - others : 0;
      cols[i].width = room < WRAP_MIN ? WRAP_MIN : room < cols[i].width ? room : cols[i].width;
    }
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

/* The text of a wrapping cell from byte `at`: up to width columns, broken after a space when there is one. */
static size_t wrap_piece(const char *t, size_t width)
{
  size_t end = byte_at(t, width);
  if (!t[end])
    return end;
  for (size_t k = end; k > 0; k--)
    if (t[k] == ' ')
      return k; /* the space itself starts the next line, where it is skipped */
  return end;
}

/* A single-row report (serve --status): one "name  value" line per column, so it fits any terminal. */
static int print_object(const tl_report *r, tcol *cols, size_t n, const cli_out *o)
{
  size_t hw = 0, term = o->wide ? 0 : (size_t)cli_term_width();
  for (size_t c = 0; c < n; c++)
    if (text_width(cols[c].header) > hw)
      hw = text_width(cols[c].header);
  for (size_t c = 0; c < n; c++) {
    const char *v = tl_report_rows(r) ? tl_report_cell(r, 0, (size_t)cols[c].rc) : NULL;
    char *t = flag(&cols[c], COL_BOOL) && v ? strdup(strcmp(v, "0") == 0 || strcmp(v, "false") == 0 ? "no" : "yes")
                                            : cell_text(v, cols[c].sp, o->wide);
    if (!t)
      return EXIT_FAILURE_;
    char *shortened = NULL;
    if (term > hw + 2 + 4 && text_width(t) > term - hw - 2)
      shortened = cut(t, term - hw - 2, flag(&cols[c], COL_PATH));
    const char *shown_text = shortened ? shortened : t;
    fputs(cli_sgr("1"), stdout);
    fputs(cols[c].header, stdout);
    fputs(cli_sgr("0"), stdout);
    printf("%*s%s\n", (int)(hw - text_width(cols[c].header) + 2), "", shown_text);
    free(shortened);
    free(t);
  }
  return EXIT_OK;
}

static int print_table(const tl_report *r, const cli_col *spec, const cli_out *o, int object)
{
  tcol cols[64];
  int nc = choose_columns(cols, 64, r, spec, o);
  if (nc < 0)
    return EXIT_USAGE;
  if (object)
    return print_object(r, cols, (size_t)nc, o);
  size_t nr = tl_report_rows(r), n = (size_t)nc;
  char **cells = calloc(nr * n + 1, sizeof *cells);
  if (!cells)
    return EXIT_FAILURE_;
  int code = EXIT_OK;
  for (size_t i = 0; i < nr && code == EXIT_OK; i++)
    for (size_t c = 0; c < n; c++) {
      char *t = cell_text(tl_report_cell(r, i, (size_t)cols[c].rc), cols[c].sp, o->wide);
      if (!t) {
        code = EXIT_FAILURE_;
        break;
      }
      cells[i * n + c] = t;
      if (text_width(t) > cols[c].content)
        cols[c].content = text_width(t);
    }
  for (size_t c = 0; c < n; c++)
    cols[c].width = text_width(cols[c].header) > cols[c].content ? text_width(cols[c].header) : cols[c].content;
  size_t term = o->wide ? 0 : (size_t)cli_term_width();
  if (term && code == EXIT_OK)
    fit(cols, n, term, o->columns != NULL, cells, nr);
  size_t last = 0;
  for (size_t c = 0; c < n; c++)
    if (!cols[c].hidden)
      last = c;
  for (size_t c = 0; code == EXIT_OK && c < n; c++) {
    if (cols[c].hidden)
      continue;
    char *h = term && text_width(cols[c].header) > cols[c].width ? cut(cols[c].header, cols[c].width, 0) : NULL;
    put_cell(h ? h : cols[c].header, cols[c].width, c == last, NULL, 1);
    free(h);
  }
  if (code == EXIT_OK)
    fputc('\n', stdout);
  for (size_t i = 0; code == EXIT_OK && i < nr; i++) {
    const char *rest = NULL; /* what the wrapping column still has to say */
    size_t indent = 0, wrap_width = 0;
    for (size_t c = 0; c < n; c++) {
      if (cols[c].hidden)
        continue;
      const char *t = cells[i * n + c];
      char *shortened = NULL, brief[16];
      if (cols[c].short_time && strlen(t) == 19 && t[4] == '-' && t[10] == ' ') {
        snprintf(brief, sizeof brief, "%.11s", t + 5); /* YYYY-MM-DD HH:MM:SS -> MM-DD HH:MM */
        t = brief;
      }
      if (term && cols[c].wrap && text_width(t) > cols[c].width) {
        size_t k = wrap_piece(t, cols[c].width);
        rest = t + k; /* t is the row's own cell: it outlives the loop */
        shortened = strndup(t, k);
        wrap_width = cols[c].width;
        t = shortened;
      } else if (term && text_width(t) > cols[c].width) {
        t = shortened = cut(t, cols[c].width, flag(&cols[c], COL_PATH));
      }
      if (!cols[c].wrap)
        indent += cols[c].width + 2;
      const char *colour = flag(&cols[c], COL_STATE | COL_OK) && t ? state_colour(t) : NULL;
      put_cell(t ? t : "-", cols[c].width, c == last, colour, 0);
      free(shortened);
    }
    fputc('\n', stdout);
    while (rest && *rest) {
      while (*rest == ' ')
        rest++;
      size_t k = wrap_piece(rest, wrap_width);
      printf("%*s%.*s\n", (int)indent, "", (int)k, rest);
      rest += k;
    }
  }
  /* what the columns left out for having one value said, in lines that fit too */
  size_t at = 0;
  for (size_t c = 0; code == EXIT_OK && c < n; c++) {
    if (!cols[c].constant || !nr || strcmp(cells[c], "-") == 0)
      continue;
    const char *lead = at ? ", " : "every row: ";
    size_t need = text_width(cols[c].header) + 1 + text_width(cells[c]);
    if (at && at + 2 + need > term) {
      fputs(",\n", stdout);
      lead = "  ";
      at = 0;
    }
    at += text_width(lead) + text_width(cols[c].header) + 1;
    char *v = at + 1 < term ? cut(cells[c], term - at - 1, flag(&cols[c], COL_PATH)) : strdup(""); /* and a comma */
    printf("%s%s %s", lead, cols[c].header, v ? v : "");
    at += v ? text_width(v) : 0;
    free(v);
  }
  if (at)
    fputc('\n', stdout);
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
  return print_table(r, spec, o, (json_flags & TL_JSON_OBJECT) != 0);
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
