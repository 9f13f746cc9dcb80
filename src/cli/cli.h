/*
 * cli.h - shared pieces of the tokenledger command-line tool.
 *
 * The tool uses only the public header. Exit codes are mapped from tl_status
 * in one place (tl_cli_exit_code); they are documented in README.md and the
 * manual and are append-only like the status codes.
 *
 * Each command is one cli_cmd with one option table (cli_opt): the parser,
 * the usage line, the help text and the checks of required and exclusive
 * options are all generated from that table, so they cannot drift apart.
 */
#ifndef TL_CLI_H
#define TL_CLI_H

#include "tokenledger.h"

#include <stdint.h>
#include <stdio.h>

enum {
  EXIT_OK = 0,
  EXIT_FAILURE_ = 1,
  EXIT_USAGE = 2,
  EXIT_NOTFOUND = 3,
  EXIT_REUSE = 4,
  EXIT_REAUTH = 5,
  EXIT_UNKNOWN = 6,
  EXIT_TRANSIENT = 7,
  EXIT_BUSY = 8,
  EXIT_INSECURE = 9,
  EXIT_TOONEW = 10,
  EXIT_CORRUPT = 11,
  EXIT_EXISTS = 12,
  EXIT_IO = 13,
  EXIT_BADFILE = 14
};

/* ---- options and commands (args.c) ---------------------------------------- */

enum {
  OPT_REQUIRED = 1 << 0, /* must be given (in a group: one of the group must be) */
  OPT_TABLE = 1 << 1     /* one of the table options (--json, --wide, --columns) */
};
/* Options with the same group number exclude each other. */
#define OPT_GROUP(n)    ((unsigned)(n) << 8)
#define OPT_GROUP_OF(f) ((f) >> 8)

typedef struct cli_opt {
  const char *name; /* without leading dashes */
  const char *arg;  /* the value's name (NAME, SECONDS, ...), NULL for a switch */
  const char *help; /* what it does, one or two lines */
  unsigned flags;
} cli_opt;

/* The options every table-printing command has. */
#define CLI_OPT_JSON                                                                                                   \
  {                                                                                                                    \
    "json", NULL, "print JSON instead of a table: one document on one line", OPT_GROUP(9)                              \
  }
#define CLI_OPTS_TABLE                                                                                                 \
  CLI_OPT_JSON, {"wide", NULL, "show every column, nothing shortened", OPT_GROUP(9) | OPT_TABLE},                      \
  {                                                                                                                    \
    "columns", "LIST", "show these columns (comma-separated names, see --wide)", OPT_GROUP(9) | OPT_TABLE              \
  }

#define CLI_MAX_OPTS 24
#define CLI_MAX_POS  6

typedef struct cli_cmd cli_cmd;
typedef struct cli_args {
  const cli_cmd *cmd;
  const char *path; /* "profile add", for messages */
  const char *pos[CLI_MAX_POS];
  int npos;
  const char *val[CLI_MAX_OPTS]; /* option i's value; "" for a switch that is set; NULL if absent */
} cli_args;

typedef int (*cli_fn)(const cli_cmd *c, cli_args *a);

struct cli_cmd {
  const char *name;
  cli_fn fn;           /* NULL when the command only has subcommands */
  const char *args;    /* positional arguments in the usage line ("PROVIDER", "NAME [DIR]"), or NULL */
  int minpos, maxpos;  /* how many positional arguments */
  const char *summary; /* one line: what it does, for command lists */
  const char *help;    /* the explanation under the usage line (lines end with \n) */
  const cli_opt *opts; /* the option table, ended by {0}; may be NULL */
  const cli_cmd *subs; /* subcommands, ended by {0}; may be NULL */
};

/* The command name used in messages ("profile add"). */
extern const char *g_cmd;
/* --db PATH from anywhere on the command line. */
extern const char *g_db;

/* Prints "tokenledger VERSION (schema N)"; returns EXIT_OK. */
int cli_version(void);
/* Parses argv (argv[0] is the command's name) and runs the command or its subcommand. */
int cli_run(const cli_cmd *c, const char *parent, int argc, char **argv);
/* The top-level help: the commands and what each does. */
void cli_main_help(const cli_cmd *const *commands);
/* Help for one command (and its subcommands). */
void cli_cmd_help(const cli_cmd *c, const char *path);

/* An option's value by name; NULL when absent. Asking for a name the table lacks aborts (a programming error). */
const char *opt_str(const cli_args *a, const char *name);
int opt_on(const cli_args *a, const char *name);

/* "tokenledger CMD: <message>; see 'tokenledger CMD --help'" on stderr; returns EXIT_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* How an argument appears in a message: a long one (maybe a pasted token) is never echoed. */
#define SHOWN_MAX 24
typedef struct shown_arg {
  char text[1024];
} shown_arg;
const char *shown(shown_arg *buf, const char *arg);
/* 1 if a value longer than SHOWN_MAX looks like a pasted token rather than a path: no directory and no file
 * extension, or a long run of characters that keeps changing between lower case, upper case and digits. */
int cli_token_like(const char *v);
/* How a path option's value appears (--home, --db, --output, --refresh-token-file): quoted, $HOME as ~,
 * controls escaped; a value that looks like a token is not echoed (as shown() says). */
const char *shown_path(shown_arg *buf, const char *path);
int unexpected(const char *a);
/* Edit distance of two words (a swap of neighbours counts one); SIZE_MAX for words over 64 bytes. */
size_t cli_distance(const char *a, const char *b);
/* The candidate a typo of word most likely meant (one to three edits by length, or the one it begins), or NULL. */
const char *cli_closest(const char *word, const char *const *cands, size_t n);
/* "hint: did you mean <before><candidate><after>?" on stderr when a candidate is close; 1 if said. */
int cli_did_you_mean(const char *before, const char *after, const char *word, const char *const *cands, size_t n);
/* A path argument that names nothing, said with the path as shown_path shows it (a token pasted where a file
 * belongs is not echoed): -1 if the path exists (or is short or "-": the library says what is wrong), else
 * EXIT_NOTFOUND. */
int missing_path(const char *what, const char *path, const char *hint);
/* Parses a non-negative whole number; -1 on success, else EXIT_USAGE (message printed). */
int parse_int64(int64_t *out, const char *text, const char *what);

/* ---- output (output.c) ------------------------------------------------------ */

int tl_cli_exit_code(tl_status rc);
/* Prints "tokenledger: <message>" to stderr and returns the exit code. */
int tl_cli_fail(const tl_error *err, tl_status rc);

/* How a column shows in a table (JSON is never changed). */
enum {
  COL_DEFAULT = 1 << 0,  /* shown without --wide */
  COL_OPTIONAL = 1 << 1, /* ... but only when some row has a value */
  COL_TIME = 1 << 2,     /* an ISO 8601 time: shown as YYYY-MM-DD HH:MM:SS */
  COL_PATH = 1 << 3,     /* a path: $HOME shown as ~; on a terminal shortened from the left */
  COL_SHRINK = 1 << 4,   /* on a terminal, shortened from the right to fit */
  COL_BOOL = 1 << 5,     /* 1 shows as "yes", 0 as "-" */
  COL_STATE = 1 << 6,    /* a state word: coloured on a terminal */
  COL_OK = 1 << 7,       /* 1 shows as "ok", 0 as "FAIL" */
  COL_TILDE = 1 << 8,    /* text that holds paths: $HOME shown as ~ (cut like COL_SHRINK text) */
  COL_EXTRA = 1 << 9,    /* left out first when the terminal is too narrow (after columns with one value) */
  COL_WRAP = 1 << 10     /* as the last column: the row's explanation, continued on the next lines, never cut */
};
typedef struct cli_col {
  const char *name;   /* the report's column */
  const char *header; /* shown as (NULL: the name); --columns accepts both */
  unsigned flags;
} cli_col;

/* What the user asked of the output: --json, --wide, --columns. */
typedef struct cli_out {
  int json, wide;
  const char *columns;
} cli_out;
cli_out cli_out_of(const cli_args *a);

/* Prints a report: JSON (flags TL_JSON_*), or a table of the spec's columns fitted to the terminal. */
int cli_print(const tl_report *r, const cli_col *spec, const cli_out *o, unsigned json_flags);
/* Checks --columns against a spec before any work is done; -1 if fine, else EXIT_USAGE. */
int cli_check_columns(const cli_out *o, const cli_col *spec);
/* One JSON object of key/value pairs on one line (values NULL: null; num[i]: a number). */
int cli_print_object(size_t n, const char *const *keys, const char *const *vals, const int *num);
/* A command's result: with --json the object of (keys, vals), else the sentence fmt. */
int cli_result(const cli_args *a, size_t n, const char *const *keys, const char *const *vals, const int *num,
               const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The terminal: width to fit ($COLUMNS if set, else stdout's terminal, 0 for neither), colours allowed, UTF-8
 * drawing allowed. */
int cli_term_width(void);
int cli_colour(void);
int cli_utf8(void);
/* Colour codes ("" when colours are off). */
const char *cli_sgr(const char *code);
/* Text with every path that starts with the user's home directory shown as ~/... (messages, table cells). */
const char *cli_tilde_text(char *buf, size_t n, const char *text);
/* A path with the user's home directory shown as ~. */
const char *cli_tilde(char *buf, size_t n, const char *path);
/* What to run for a credential that needs a new login, naming every profile that uses it: a grant several profiles
 * share gets one login in place of it ('login P --credential N'), a profile's own grant 'login P --profile X'. */
void cli_login_advice(char *buf, size_t n, tl_store *s, int64_t cred, const char *provider, const char *profile);
/* One line per Hermes home that holds grants the ledger does not keep, with the exact import command. */
void cli_new_homes_hints(tl_store *s, FILE *to, const char *prefix);
/* An ISO 8601 time as "YYYY-MM-DD HH:MM:SS" (a copy when it is not one). */
const char *cli_time(char *buf, size_t n, const char *iso);
/* Seconds as "3h12m", "45s", "2d4h". */
const char *cli_duration(char *buf, size_t n, int64_t seconds);

/* ---- hints (hint.c): the advice the library leaves to the tool ------------- */

typedef struct cli_ctx {
  tl_store *store;      /* may be NULL */
  const char *profile;  /* the profile the command acted for, if known */
  const char *provider; /* the provider, if known */
  int64_t credential;   /* the credential, if known */
} cli_ctx;
/* Prints the failure and, when there is one, what to run next; returns the exit code. */
int cli_fail(const cli_ctx *ctx, const tl_error *err, tl_status rc);
/*
 * The advice for a credential with an unknown outcome, one sentence naming the commands (hint.c): it leads
 * with 'recover --mark-dead' and says why '--assume-not-sent' is unsafe unless the ledger shows that no byte of
 * the request left (tl_unknown_sent), and only then offers '--assume-not-sent' first.
 */
const char *cli_unknown_advice(char *buf, size_t n, tl_store *s, int64_t credential);
/* 1 if the ledger has a provider of that name (hint.c). */
int cli_has_provider(tl_store *s, const char *name);

/* ---- progress (progress.c): a status line on a terminal only ---------------- */

/* Starts a status line on stderr (if it is a terminal): what, then the time spent, or left until deadline_ms. */
void progress_begin(const char *what, int64_t deadline_ms);
/* Counts shown on the line (from a library progress callback). */
void progress_count(const char *stage, int64_t done, int64_t total);
/* Clears the line; call before printing anything else. */
void progress_end(void);
/* A tl_progress_fn for tl_store_set_progress. */
void progress_hook(void *ud, const char *stage, int64_t done, int64_t total);
int64_t cli_now_ms(void);

/* ---- commands (cmd_*.c) ----------------------------------------------------- */

/* Opens the ledger (--db, $TOKENLEDGER_DB, ~/.hermes/tokenledger.db); -1 on success, else an exit code. */
int cli_open(tl_store **out, unsigned flags, const char *profile);
const char *cli_db_path(char *buf, size_t n);
/* The profile a command acts for: --profile, else "default" when the ledger has it (NULL: none). */
const char *cli_default_profile(tl_store *s, const char *given);

extern const cli_cmd cli_cmd_init, cli_cmd_profile, cli_cmd_provider, cli_cmd_credential, cli_cmd_pool, cli_cmd_login,
    cli_cmd_import, cli_cmd_export, cli_cmd_sync, cli_cmd_keep_fresh, cli_cmd_serve, cli_cmd_compact, cli_cmd_status,
    cli_cmd_lineage, cli_cmd_audit, cli_cmd_history, cli_cmd_check_rt, cli_cmd_doctor, cli_cmd_token, cli_cmd_refresh,
    cli_cmd_recover, cli_cmd_report;

#endif
