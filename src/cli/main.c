/*
 * main.c - the tokenledger command-line tool: global options and dispatch.
 *
 * Parses what comes before the command (--db, --help, --version), finds the
 * command in the table below and hands it the rest (args.c parses it against
 * the command's own option table; --db and --version are accepted there too,
 * anywhere). An unknown command or option that is a typo of a real one gets
 * "did you mean".
 * Invariants: the process is not dumpable and libcurl gets no SSLKEYLOGFILE;
 * an unknown command or option is never echoed if it is long (it may be a
 * pasted token); every command has --help; every failure ends in an exit code
 * mapped from the library's status in one place (output.c).
 */
#include "cli.h"

#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

static const cli_cmd *const commands[] = {&cli_cmd_init,
                                          &cli_cmd_import,
                                          &cli_cmd_status,
                                          &cli_cmd_token,
                                          &cli_cmd_refresh,
                                          &cli_cmd_sync,
                                          &cli_cmd_keep_fresh,
                                          &cli_cmd_serve,
                                          &cli_cmd_export,
                                          &cli_cmd_login,
                                          &cli_cmd_profile,
                                          &cli_cmd_provider,
                                          &cli_cmd_credential,
                                          &cli_cmd_pool,
                                          &cli_cmd_report,
                                          &cli_cmd_lineage,
                                          &cli_cmd_audit,
                                          &cli_cmd_history,
                                          &cli_cmd_check_rt,
                                          &cli_cmd_recover,
                                          &cli_cmd_doctor,
                                          &cli_cmd_compact,
                                          NULL};

static const cli_cmd *find(const char *name)
{
  for (size_t k = 0; commands[k]; k++)
    if (strcmp(name, commands[k]->name) == 0)
      return commands[k];
  return NULL;
}

int main(int argc, char **argv)
{
  /* This process holds refresh tokens: no core dump of it, no ptrace by other processes of this user. */
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  /* libcurl would write every TLS session key to this file (see http.c, which does the same for any host). */
  unsetenv("SSLKEYLOGFILE");
  /* Only to know whether the terminal takes UTF-8 (tree lines, the ellipsis); numbers stay C. */
  setlocale(LC_CTYPE, "");
  int i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--db") == 0 || strncmp(argv[i], "--db=", 5) == 0) {
      const char *v = argv[i][4] == '=' ? argv[i] + 5 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v || !*v) {
        fprintf(stderr, "tokenledger: --db needs a path\n");
        return EXIT_USAGE;
      }
      g_db = v;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      cli_main_help(commands);
      return EXIT_OK;
    } else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
      return cli_version();
    } else if (argv[i][0] == '-') {
      shown_arg b;
      fprintf(stderr, "tokenledger: unknown option %s; see 'tokenledger --help'\n", shown(&b, argv[i]));
      if (strlen(argv[i]) <= SHOWN_MAX) {
        static const char *const globals[] = {"--db", "--help", "--version"};
        if (!cli_did_you_mean("", "", argv[i], globals, 3) &&
            (strcmp(argv[i], "-p") == 0 || !strncmp(argv[i], "--profile", 9)))
          fprintf(stderr, "hint: --profile goes after the command ('tokenledger status -p NAME')\n");
      }
      return EXIT_USAGE;
    } else {
      break;
    }
  }
  if (i >= argc) {
    cli_main_help(commands);
    return EXIT_USAGE;
  }
  if (strcmp(argv[i], "version") == 0)
    return cli_version();
  if (strcmp(argv[i], "help") == 0) {
    const cli_cmd *c = i + 1 < argc ? find(argv[i + 1]) : NULL;
    if (c)
      cli_cmd_help(c, c->name);
    else
      cli_main_help(commands);
    return EXIT_OK;
  }
  const cli_cmd *c = find(argv[i]);
  if (c)
    return cli_run(c, NULL, argc - i, argv + i);
  shown_arg b;
  fprintf(stderr, "tokenledger: unknown command %s; see 'tokenledger --help'\n", shown(&b, argv[i]));
  if (strlen(argv[i]) <= SHOWN_MAX) {
    const char *names[64];
    size_t n = 0;
    for (size_t k = 0; commands[k] && n < 62; k++)
      names[n++] = commands[k]->name;
    names[n++] = "help";
    names[n++] = "version";
    cli_did_you_mean("'tokenledger ", "'", argv[i], names, n);
  }
  return EXIT_USAGE;
}
