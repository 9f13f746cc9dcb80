/*
 * args.c - the command line: one option table per command, and from it the
 * parser, the usage line, the help text, and the checks of required and
 * mutually exclusive options.
 *
 * Invariants: an argument longer than SHOWN_MAX characters is never echoed in
 * a message, whatever its place (command, option, value), except the value of
 * a path option that does not look like a token (shown_path: "~/..."), and a
 * short one only with control characters escaped; an option that would carry a secret on
 * argv (--refresh-token, --access-token, ...) is refused with a pointer to its
 * -file form; --db PATH and --help are accepted anywhere; the usage line and
 * the help are generated from the same table the parser reads, so every
 * option the parser accepts is described and every described option parses.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *g_cmd = "tokenledger";
const char *g_db;

/* Help wraps at the terminal's width ($COLUMNS, else stdout's terminal), at most 80, at least 40. */
static int help_width(void)
{
  static int width;
  if (!width) {
    int t = cli_term_width();
    width = t <= 0 || t > 80 ? 80 : t < 40 ? 40 : t;
  }
  return width;
}

int cli_version(void)
{
  printf("tokenledger %s (schema %d)\n", tl_version(), TL_SCHEMA_VERSION);
  return EXIT_OK;
}

int usage_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "tokenledger %s: ", g_cmd);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "; see 'tokenledger %s --help'\n", g_cmd);
  return EXIT_USAGE;
}

const char *shown(shown_arg *buf, const char *arg)
{
  size_t n = strlen(arg);
  if (n <= SHOWN_MAX) {
    char esc[6 * SHOWN_MAX + 1];
    tl_text_escape(esc, sizeof esc, arg);
    snprintf(buf->text, sizeof buf->text, "'%s'", esc);
  } else {
    snprintf(buf->text, sizeof buf->text,
             "of %zu characters (not shown: if it is a token, it is now in your shell "
             "history; tokens are read from a file or standard input)",
             n);
  }
  return buf->text;
}

/* A class of character for cli_token_like: 1 lower, 2 upper, 3 digit, 0 anything else. */
static int char_class(char c)
{
  return c >= 'a' && c <= 'z' ? 1 : c >= 'A' && c <= 'Z' ? 2 : c >= '0' && c <= '9' ? 3 : 0;
}

int cli_token_like(const char *v)
{
  size_t n = strlen(v);
  if (n <= SHOWN_MAX)
    return 0;
  if (!strchr(v, '/')) {
    /* no directory: only a file name with a short extension (auth-backup-2026.json) is a name */
    const char *dot = strrchr(v, '.');
    size_t ext = dot ? strlen(dot + 1) : 0;
    if (!dot || ext < 1 || ext > 5)
      return 1;
    for (const char *p = dot + 1; *p; p++)
      if (!char_class(*p))
        return 1;
  }
  /* a run of 16 token characters that often changes between lower case, upper case and digits is random */
  size_t run = 0;
  int changes = 0, last = 0;
  for (const char *p = v;; p++) {
    int k = char_class(*p);
    if (*p && (k || *p == '-' || *p == '_' || *p == '+' || *p == '=' || *p == '~')) {
      run++;
      if (k && last && k != last)
        changes++;
      if (k)
        last = k;
      continue;
    }
    if (run >= 16 && changes >= 4)
      return 1;
    if (!*p)
      return 0;
    run = 0;
    changes = 0;
    last = 0;
  }
}

const char *shown_path(shown_arg *buf, const char *path)
{
  if (strcmp(path, "-") == 0)
    return "'-' (standard input)";
  if (cli_token_like(path))
    return shown(buf, path);
  buf->text[0] = '\'';
  cli_tilde(buf->text + 1, sizeof buf->text - 2, path);
  strcat(buf->text, "'");
  return buf->text;
}

/* Optimal string alignment distance (a swap of two neighbours counts one), in characters as bytes. */
size_t cli_distance(const char *a, const char *b)
{
  size_t n = strlen(a), m = strlen(b);
  if (n > 64 || m > 64)
    return (size_t)-1;
  size_t d[65][65];
  for (size_t i = 0; i <= n; i++)
    d[i][0] = i;
  for (size_t j = 0; j <= m; j++)
    d[0][j] = j;
  for (size_t i = 1; i <= n; i++)
    for (size_t j = 1; j <= m; j++) {
      size_t cost = a[i - 1] != b[j - 1], v = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < v)
        v = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + cost < v)
        v = d[i - 1][j - 1] + cost;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
        v = d[i - 2][j - 2] + 1;
      d[i][j] = v;
    }
  return d[n][m];
}

const char *cli_closest(const char *word, const char *const *cands, size_t n)
{
  size_t len = strlen(word), best = (size_t)-1, prefixed = 0;
  const char *pick = NULL, *prefix = NULL;
  if (len == 0 || len > 64)
    return NULL;
  /* one or two typos, fewer for short words: 'stauts' is status, 'ls' is not 'rm' */
  size_t limit = len <= 3 ? 1 : len <= 6 ? 2 : 3;
  for (size_t i = 0; i < n; i++) {
    if (!cands[i] || strcmp(cands[i], word) == 0)
      continue;
    size_t d = cli_distance(word, cands[i]);
    if (d <= limit && d < best) {
      best = d;
      pick = cands[i];
    }
    if (len >= 3 && strncmp(cands[i], word, len) == 0) {
      prefix = cands[i];
      prefixed++;
    }
  }
  return pick ? pick : prefixed == 1 ? prefix : NULL;
}

int cli_did_you_mean(const char *before, const char *after, const char *word, const char *const *cands, size_t n)
{
  const char *close = cli_closest(word, cands, n);
  if (close)
    fprintf(stderr, "hint: did you mean %s%s%s?\n", before, close, after);
  return close != NULL;
}

int unexpected(const char *a)
{
  shown_arg b;
  return usage_error("unexpected argument %s", shown(&b, a));
}

int missing_path(const char *what, const char *path, const char *hint)
{
  struct stat st;
  if (strcmp(path, "-") == 0 || strlen(path) <= SHOWN_MAX || lstat(path, &st) == 0)
    return -1;
  shown_arg b;
  fprintf(stderr, "tokenledger %s: %s: no such file or directory %s%s\n", g_cmd, what, shown_path(&b, path),
          hint ? hint : "");
  return EXIT_NOTFOUND;
}

int parse_int64(int64_t *out, const char *text, const char *what)
{
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || !end || *end || end == text || v < 0 || text[0] == '+' || text[0] == ' ') {
    shown_arg b;
    return usage_error("%s %s is not a non-negative whole number", what, shown(&b, text));
  }
  *out = v;
  return -1;
}

/* Options that would put a secret on argv (visible in ps and shell history). */
static int secret_option(const char *name)
{
  static const char *const bad[] = {"refresh-token", "access-token", "token",         "rt",
                                    "secret",        "password",     "client-secret", "api-key"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (strcmp(name, bad[i]) == 0)
      return 1;
  return 0;
}

static int opt_index(const cli_cmd *c, const char *name)
{
  for (int i = 0; c->opts && c->opts[i].name; i++)
    if (strcmp(c->opts[i].name, name) == 0)
      return i;
  return -1;
}

const char *opt_str(const cli_args *a, const char *name)
{
  int i = opt_index(a->cmd, name);
  if (i < 0) {
    fprintf(stderr, "tokenledger: internal error: %s has no option --%s\n", a->path, name);
    abort();
  }
  return a->val[i];
}

int opt_on(const cli_args *a, const char *name)
{
  return opt_str(a, name) != NULL;
}

/* ---- usage and help ----------------------------------------------------- */

/* Appends text to a line that wraps at help_width(), continuing at indent. */
typedef struct wrap {
  FILE *f;
  int col, indent;
} wrap;

static void wrap_word(wrap *w, const char *word, size_t n)
{
  if (w->col > w->indent && w->col + 1 + (int)n > help_width()) {
    fprintf(w->f, "\n%*s", w->indent, "");
    w->col = w->indent;
  } else if (w->col > w->indent) {
    fputc(' ', w->f);
    w->col++;
  }
  fwrite(word, 1, n, w->f);
  w->col += (int)n;
}

/* One usage element ("[--profile NAME]") per call, kept whole on a line. */
static void opt_usage(char *buf, size_t n, const cli_opt *o)
{
  snprintf(buf, n, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
}

static void usage_line(FILE *f, const cli_cmd *c, const char *path, const char *lead, int full)
{
  char elem[512];
  wrap w = {f, 0, (int)strlen(lead) + (full ? 12 : 4)};
  fputs(lead, f);
  w.col = (int)strlen(lead);
  snprintf(elem, sizeof elem, "%s%s", full ? "tokenledger [--db PATH] " : "", path);
  wrap_word(&w, elem, strlen(elem));
  if (c->subs) {
    wrap_word(&w, "SUBCOMMAND [ARGS]", 17);
    fputc('\n', f);
    return;
  }
  if (c->args)
    wrap_word(&w, c->args, strlen(c->args));
  for (int i = 0; c->opts && c->opts[i].name; i++) {
    const cli_opt *o = &c->opts[i];
    unsigned g = OPT_GROUP_OF(o->flags);
    int first = 1, required = (o->flags & OPT_REQUIRED) != 0;
    if (g) {
      int seen = 0;
      for (int k = 0; k < i; k++)
        seen |= OPT_GROUP_OF(c->opts[k].flags) == g;
      if (seen)
        continue;
      size_t len = 0;
      for (int k = i; c->opts[k].name; k++) {
        if (OPT_GROUP_OF(c->opts[k].flags) != g)
          continue;
        char one[128];
        opt_usage(one, sizeof one, &c->opts[k]);
        len += (size_t)snprintf(elem + len, sizeof elem - len, "%s%s", first ? (required ? "(" : "[") : " | ", one);
        first = 0;
        if (len >= sizeof elem)
          len = sizeof elem - 1;
      }
      snprintf(elem + len, sizeof elem - len, "%s", required ? ")" : "]");
    } else {
      char one[128];
      opt_usage(one, sizeof one, o);
      snprintf(elem, sizeof elem, required ? "%s" : "[%s]", one);
    }
    wrap_word(&w, elem, strlen(elem));
  }
  fputc('\n', f);
}

/* Text with words wrapped at help_width(): a single newline is a space, an empty line starts a paragraph. */
static void print_wrapped(FILE *f, const char *text, int col, int indent)
{
  wrap w = {f, col, indent};
  for (const char *p = text; *p;) {
    if (p[0] == '\n' && p[1] == '\n') {
      fputs("\n\n", f);
      p += 2;
      while (*p == '\n')
        p++;
      if (*p)
        fprintf(f, "%*s", indent, "");
      w.col = indent;
      continue;
    }
    if (*p == ' ' || *p == '\n') {
      p++;
      continue;
    }
    size_t n = strcspn(p, " \n");
    wrap_word(&w, p, n);
    p += n;
  }
}

static void option_lines(FILE *f, const cli_opt *opts, int width)
{
  char one[170];
  for (int i = 0; opts && opts[i].name; i++) {
    int p = strcmp(opts[i].name, "profile") == 0; /* the one short option */
    if (p)
      memcpy(one, "-p, ", 4);
    opt_usage(one + (p ? 4 : 0), sizeof one - 4, &opts[i]);
    int len = (int)strlen(one);
    fprintf(f, "  %-*s  ", width, one);
    print_wrapped(f, opts[i].help, (len > width ? len : width) + 4, width + 4);
    fputc('\n', f);
  }
}

static int option_width(const cli_opt *opts, int width)
{
  char one[160];
  for (int i = 0; opts && opts[i].name; i++) {
    opt_usage(one, sizeof one, &opts[i]);
    int len = (int)strlen(one) + (strcmp(opts[i].name, "profile") == 0 ? 4 : 0);
    if (len > width)
      width = len;
  }
  return width > 26 ? 26 : width;
}

static const cli_opt global_opts[] = {
    {"db", "PATH", "the ledger (default: $TOKENLEDGER_DB, else ~/.hermes/tokenledger.db); anywhere on the line", 0},
    {0}};

void cli_cmd_help(const cli_cmd *c, const char *path)
{
  usage_line(stdout, c, path, "usage: ", 1);
  fputc('\n', stdout);
  print_wrapped(stdout, c->help, 0, 0);
  fputc('\n', stdout);
  int width = option_width(global_opts, option_width(c->opts, 12));
  if (c->subs) {
    printf("\nsubcommands:\n");
    for (const cli_cmd *s = c->subs; s->name; s++) {
      char sub[256];
      snprintf(sub, sizeof sub, "%s %s", path, s->name);
      usage_line(stdout, s, sub, "  ", 0);
      printf("      ");
      print_wrapped(stdout, s->summary, 6, 6);
      fputc('\n', stdout);
      width = option_width(s->opts, width);
    }
    printf("\noptions of the subcommands ('tokenledger %s SUBCOMMAND --help' explains one):\n", path);
    /* Each option once, described as its first subcommand does. */
    for (const cli_cmd *s = c->subs; s->name; s++)
      for (int i = 0; s->opts && s->opts[i].name; i++) {
        int dup = 0;
        for (const cli_cmd *t = c->subs; t < s && !dup; t++)
          for (int k = 0; t->opts && t->opts[k].name; k++)
            dup |= strcmp(t->opts[k].name, s->opts[i].name) == 0;
        for (int k = 0; k < i; k++)
          dup |= strcmp(s->opts[k].name, s->opts[i].name) == 0;
        if (!dup) {
          const cli_opt one[2] = {s->opts[i], {0}};
          option_lines(stdout, one, width);
        }
      }
  } else {
    printf("\noptions:\n");
    option_lines(stdout, c->opts, width);
  }
  option_lines(stdout, global_opts, width);
  printf("  %-*s  show this help\n", width, "-h, --help");
}

void cli_main_help(const cli_cmd *const *commands)
{
  printf("usage: tokenledger [--db PATH] COMMAND [ARGS]\n\n");
  print_wrapped(stdout,
                "Keeps the OAuth credentials of Hermes Agent profiles in one SQLite ledger and refreshes them so "
                "that a refresh token leaves this machine at most once.",
                0, 0);
  printf("\n\ncommands:\n");
  for (size_t i = 0; commands[i]; i++) {
    printf("  %-11s ", commands[i]->name);
    print_wrapped(stdout, commands[i]->summary, 14, 14);
    fputc('\n', stdout);
  }
  fputc('\n', stdout);
  print_wrapped(stdout,
                "The ledger is --db PATH, else $TOKENLEDGER_DB, else ~/.hermes/tokenledger.db. "
                "'tokenledger COMMAND --help' explains a command; 'man tokenledger' has them all. "
                "-p NAME is short for --profile NAME.\n\n"
                "Exit codes: 0 ok, 1 failure, 2 usage or invalid input, 3 not found, 4 reuse blocked, 5 needs a new "
                "login, 6 unknown outcome, 7 transient or network, 8 busy, 9 insecure file, 10 schema too new, "
                "11 not a tokenledger database, 12 already exists, 13 I/O error.",
                0, 0);
  fputc('\n', stdout);
}

/* ---- parsing ------------------------------------------------------------ */

static int set_db(const char *v)
{
  if (!v || !*v) {
    fprintf(stderr, "tokenledger: --db needs a path\n");
    return EXIT_USAGE;
  }
  if (g_db && strcmp(g_db, v) != 0) {
    fprintf(stderr, "tokenledger: --db is given twice with different paths\n");
    return EXIT_USAGE;
  }
  g_db = v;
  return -1;
}

/* Does some subcommand's option `name` take a value? (to find the subcommand past the options before it) */
static int sub_option_takes_value(const cli_cmd *c, const char *a)
{
  if (strchr(a, '='))
    return 0;
  for (const cli_cmd *s = c->subs; s && s->name; s++)
    for (int i = 0; s->opts && s->opts[i].name; i++)
      if (strcmp(a + 2, s->opts[i].name) == 0 && s->opts[i].arg)
        return 1;
  return 0;
}

static void subcommand_names(char *buf, size_t n, const cli_cmd *c)
{
  size_t len = 0;
  buf[0] = '\0';
  for (const cli_cmd *s = c->subs; s->name && len < n; s++)
    len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? (s[1].name ? ", " : " or ") : "", s->name);
}

static int run_sub(const cli_cmd *c, const char *path, int argc, char **argv)
{
  int at = -1, help = 0;
  for (int i = 1; i < argc && at < 0; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0)
      break;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
      help = 1;
    else if (a[0] != '-' || a[1] == '\0')
      at = i;
    else if (strcmp(a, "--version") == 0)
      return cli_version();
    else if (strcmp(a, "--db") == 0 || strcmp(a, "-p") == 0 || sub_option_takes_value(c, a))
      i++;
  }
  char names[200];
  subcommand_names(names, sizeof names, c);
  if (at < 0) {
    if (help) {
      cli_cmd_help(c, path);
      return EXIT_OK;
    }
    return usage_error("missing subcommand (%s)", names);
  }
  const cli_cmd *sub = NULL;
  for (const cli_cmd *s = c->subs; s->name; s++)
    if (strcmp(s->name, argv[at]) == 0)
      sub = s;
  if (!sub) {
    shown_arg b;
    const char *cands[16];
    size_t nc = 0;
    for (const cli_cmd *s = c->subs; s->name && nc < 16; s++)
      cands[nc++] = s->name;
    int code = usage_error("unknown subcommand %s (%s)", shown(&b, argv[at]), names);
    char before[160];
    snprintf(before, sizeof before, "'tokenledger %s ", path);
    cli_did_you_mean(before, "'", argv[at], cands, nc);
    return code;
  }
  char **rest = calloc((size_t)argc + 1, sizeof *rest);
  if (!rest)
    return EXIT_FAILURE_;
  int n = 0;
  rest[n++] = argv[at];
  for (int i = 1; i < argc; i++)
    if (i != at)
      rest[n++] = argv[i];
  int code = cli_run(sub, path, n, rest);
  free(rest);
  return code;
}

/* "did you mean --profile?" for an option the command does not have (exact: -json for --json). */
static void option_hint(const cli_cmd *c, const char *name, int exact)
{
  const char *cands[CLI_MAX_OPTS + 4];
  size_t n = 0;
  for (int i = 0; c->opts && c->opts[i].name && n < CLI_MAX_OPTS; i++)
    cands[n++] = c->opts[i].name;
  cands[n++] = "db";
  cands[n++] = "help";
  cands[n++] = "version";
  const char *close = NULL;
  for (size_t i = 0; exact && i < n && !close; i++)
    if (strcmp(cands[i], name) == 0)
      close = cands[i];
  if (!close)
    close = cli_closest(name, cands, n);
  if (close)
    fprintf(stderr, "hint: did you mean --%s?\n", close);
}

/* The checks the table states: values not given twice, required options, exclusive groups. */
static int check_table(const cli_cmd *c, const cli_args *a)
{
  char one[128], two[128];
  for (int i = 0; c->opts && c->opts[i].name; i++) {
    const cli_opt *o = &c->opts[i];
    unsigned g = OPT_GROUP_OF(o->flags);
    if (!g && (o->flags & OPT_REQUIRED) && !a->val[i]) {
      opt_usage(one, sizeof one, o);
      return usage_error("%s is required", one);
    }
    if (!g)
      continue;
    int first = 1, any = 0;
    for (int k = 0; k < i; k++)
      first &= OPT_GROUP_OF(c->opts[k].flags) != g;
    if (!first)
      continue;
    char names[400] = "";
    size_t len = 0;
    int set = -1, members = 0;
    for (int k = i; c->opts[k].name; k++)
      members += OPT_GROUP_OF(c->opts[k].flags) == g;
    for (int k = i, m = 0; c->opts[k].name; k++) {
      if (OPT_GROUP_OF(c->opts[k].flags) != g)
        continue;
      opt_usage(two, sizeof two, &c->opts[k]);
      m++;
      len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", m == 1 ? "" : m == members ? " or " : ", ", two);
      if (len >= sizeof names)
        len = sizeof names - 1;
      if (a->val[k]) {
        if (set >= 0) {
          opt_usage(one, sizeof one, &c->opts[set]);
          return usage_error("--%s and --%s exclude each other", c->opts[set].name, c->opts[k].name);
        }
        set = k;
      }
      any |= (c->opts[k].flags & OPT_REQUIRED) != 0;
    }
    if (any && set < 0)
      return usage_error(members > 2 ? "give exactly one of %s" : "give %s", names);
  }
  return -1;
}

static int missing_positional(const cli_cmd *c, const cli_args *a)
{
  if (c->args)
    return usage_error("expected '%s %s'", a->path, c->args);
  return usage_error("%s", "missing argument");
}

int cli_run(const cli_cmd *c, const char *parent, int argc, char **argv)
{
  static char paths[4][128];
  static int depth;
  char *path = paths[depth & 3];
  snprintf(path, sizeof paths[0], "%s%s%s", parent ? parent : "", parent ? " " : "", c->name);
  g_cmd = path;
  if (c->subs) {
    depth++;
    int code = run_sub(c, path, argc, argv);
    depth--;
    return code;
  }
  cli_args a;
  memset(&a, 0, sizeof a);
  a.cmd = c;
  a.path = path;
  int help = 0;
  for (int i = 1; i < argc; i++) {
    char *arg = argv[i];
    if (strcmp(arg, "--") == 0) {
      for (i++; i < argc; i++) {
        if (a.npos >= c->maxpos || a.npos >= CLI_MAX_POS)
          return unexpected(argv[i]);
        a.pos[a.npos++] = argv[i];
      }
      break;
    }
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      help = 1;
      continue;
    }
    if (strcmp(arg, "--version") == 0)
      return cli_version();
    if (arg[0] != '-' || arg[1] == '\0') {
      if (a.npos >= c->maxpos || a.npos >= CLI_MAX_POS)
        return unexpected(arg);
      a.pos[a.npos++] = arg;
      continue;
    }
    shown_arg b;
    if (strcmp(arg, "-p") == 0 && opt_index(c, "profile") >= 0) {
      /* -p NAME: --profile, as Hermes spells it short */
      int k = opt_index(c, "profile");
      const char *v = i + 1 < argc ? argv[++i] : NULL;
      if (!v)
        return usage_error("option -p needs a value (%s)", c->opts[k].arg);
      if (a.val[k] && strcmp(a.val[k], v) != 0)
        return usage_error("%s", "option --profile is given twice");
      a.val[k] = v;
      continue;
    }
    if (arg[1] != '-') {
      int code = usage_error("unknown option %s", shown(&b, arg));
      if (strcmp(arg, "-p") == 0)
        fprintf(stderr, "hint: 'tokenledger %s' acts for no single profile: it has no --profile\n", g_cmd);
      else if (strlen(arg) <= SHOWN_MAX)
        option_hint(c, arg + 1, 1);
      return code;
    }
    char name[64];
    const char *eq = strchr(arg + 2, '=');
    size_t len = eq ? (size_t)(eq - (arg + 2)) : strlen(arg + 2);
    if (len >= sizeof name)
      return usage_error("unknown option %s", shown(&b, arg));
    memcpy(name, arg + 2, len);
    name[len] = '\0';
    if (strcmp(name, "db") == 0) {
      const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      int rc = set_db(v);
      if (rc >= 0)
        return rc;
      continue;
    }
    int k = opt_index(c, name);
    if (k < 0) {
      if (secret_option(name)) {
        fprintf(stderr,
                "tokenledger %s: --%s is refused: secrets are never taken from the command line, where ps and shell "
                "history would show them; use --%s-file FILE (or - for standard input)\n",
                g_cmd, name, strcmp(name, "rt") == 0 ? "refresh-token" : name);
        return EXIT_USAGE;
      }
      int code = usage_error("unknown option %s", shown(&b, arg));
      if (strlen(arg) <= SHOWN_MAX)
        option_hint(c, name, 0);
      return code;
    }
    const cli_opt *o = &c->opts[k];
    const char *v = "";
    if (o->arg) {
      v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v)
        return usage_error("option %s needs a value (%s)", shown(&b, arg), o->arg);
      if (a.val[k] && strcmp(a.val[k], v) != 0)
        return usage_error("option --%s is given twice", o->name);
    } else if (eq) {
      return usage_error("option --%s takes no value", o->name);
    }
    a.val[k] = v;
  }
  if (help) {
    cli_cmd_help(c, path);
    return EXIT_OK;
  }
  int rc = check_table(c, &a);
  if (rc >= 0)
    return rc;
  if (a.npos < c->minpos)
    return missing_positional(c, &a);
  return c->fn(c, &a);
}
