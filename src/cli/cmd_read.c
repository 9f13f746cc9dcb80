/*
 * cmd_read.c - the read commands: status, lineage (a table, a tree, or
 * Graphviz), audit, history.
 *
 * status with nothing to show says what to run to get a credential instead of
 * an empty table; lineage --tree fits the terminal (a shorter time, then who
 * presented a token cut).
 *
 * Invariants: nothing here writes to the ledger; every value shown comes from
 * a report (already escaped, never a secret); Graphviz output quotes every
 * string it writes, so a label from a file cannot break out of its attribute.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static int credential_arg(int64_t *out, const cli_args *a)
{
  const char *cred = opt_str(a, "credential");
  *out = 0;
  return cred ? parse_int64(out, cred, "--credential") : -1;
}

/* ---- status ------------------------------------------------------------------ */

/* Below status' table: which profiles are strict, and whether serve answers for them. */
static void serve_footer(tl_store *s)
{
  tl_report *r = NULL;
  tl_error err = {0};
  if (tl_serve_status(&r, s, &err) != TL_OK) {
    fprintf(stderr, "tokenledger: strict mode: %s\n", err.message);
    return;
  }
  const char *running = tl_report_get(r, 0, "running"), *strict = tl_report_get(r, 0, "strict");
  int up = running && strcmp(running, "1") == 0;
  if (strict || up) {
    if (up)
      fprintf(stdout, "serve: up at %s (pid %s)", tl_report_get(r, 0, "url"), tl_report_get(r, 0, "pid"));
    else
      fprintf(stdout, "serve: NOT RUNNING: strict profiles cannot refresh; start 'tokenledger serve'");
    fprintf(stdout, "; strict profiles: %s\n", strict ? strict : "none");
  }
  tl_report_free(r);
}

/* What needs the user, under the table: one line per credential, with the command to run. */
static void status_hints(const tl_report *r, tl_store *s)
{
  int64_t seen[64];
  size_t nseen = 0;
  const char *last = NULL;
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *p = tl_report_get(r, i, "profile"), *u = tl_report_get(r, i, "strict_unfinished");
    if (p && u && strcmp(u, "1") == 0 && (!last || strcmp(last, p) != 0))
      printf("profile %s: a strict switch is unfinished (its Hermes file disagrees with the flag): 'tokenledger sync "
             "--profile %s' finishes it\n",
             p, p);
    last = p;
  }
  for (size_t i = 0; i < tl_report_rows(r); i++) {
    const char *access = tl_report_get(r, i, "access_token_state"), *cred = tl_report_get(r, i, "credential");
    if (!access || !cred || (strcmp(access, "needs_login") != 0 && strcmp(access, "unknown_outcome") != 0))
      continue;
    int64_t id = strtoll(cred, NULL, 10);
    int dup = 0;
    for (size_t k = 0; k < nseen; k++)
      dup |= seen[k] == id;
    if (dup || nseen == 64)
      continue;
    seen[nseen++] = id;
    if (strcmp(access, "needs_login") == 0) {
      char advice[900];
      cli_login_advice(advice, sizeof advice, s, id, tl_report_get(r, i, "provider"), tl_report_get(r, i, "profile"));
      printf("credential %lld needs a new login: %s\n", (long long)id, advice);
    } else {
      char advice[700];
      printf("credential %lld has a refresh with an unknown outcome: %s\n", (long long)id,
             cli_unknown_advice(advice, sizeof advice, s, id));
    }
  }
}

static const cli_col status_cols[] = {{"profile", NULL, COL_DEFAULT | COL_SHRINK},
                                      {"provider", NULL, COL_DEFAULT | COL_SHRINK},
                                      {"entry", NULL, COL_DEFAULT | COL_SHRINK | COL_EXTRA},
                                      {"priority", NULL, 0},
                                      {"source", NULL, 0},
                                      {"auth_type", NULL, 0},
                                      {"kind", NULL, 0},
                                      {"label", NULL, COL_DEFAULT | COL_SHRINK},
                                      {"credential", "cred", COL_DEFAULT},
                                      {"credential_status", NULL, 0},
                                      {"access_token_state", "access", COL_DEFAULT | COL_STATE},
                                      {"access_expires", "expires", COL_DEFAULT | COL_TIME | COL_OPTIONAL},
                                      {"expires_in_s", NULL, 0},
                                      {"rt_generation", "gen", COL_DEFAULT | COL_OPTIONAL | COL_EXTRA},
                                      {"rt_state", "rt", COL_DEFAULT | COL_STATE | COL_OPTIONAL},
                                      {"rt_fingerprint", NULL, 0},
                                      {"last_status", "last", COL_DEFAULT | COL_STATE | COL_OPTIONAL},
                                      {"cooldown_until", NULL, 0},
                                      {"cooling_until", "cooldown", COL_DEFAULT | COL_TIME | COL_OPTIONAL},
                                      {"request_count", NULL, 0},
                                      {"strict", NULL, COL_DEFAULT | COL_BOOL | COL_OPTIONAL},
                                      {"strict_unfinished", NULL, COL_BOOL},
                                      {"strategy", NULL, 0},
                                      {"reason", NULL, 0},
                                      {0}};

static int run_status(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  int prc = cli_check_columns(&o, status_cols);
  if (prc >= 0)
    return prc;
  const char *profile = opt_str(a, "profile");
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_status_report(&r, s, profile, &err);
  int code;
  if (rc != TL_OK) {
    cli_ctx ctx = {s, profile, NULL, 0};
    code = cli_fail(&ctx, &err, rc);
  } else if (!o.json && tl_report_rows(r) == 0) {
    /* nothing to show: say what puts a credential here */
    if (profile)
      printf("profile %s has no credential yet; log in:\n  tokenledger login nous -p %s\nor import its Hermes "
             "home:\n  tokenledger import DIR -p %s\n",
             profile, profile, profile);
    else
      printf("no credential yet; take over a Hermes root (every profile and the shared login):\n"
             "  tokenledger import ~/.hermes --all-profiles\n"
             "or log in anew:\n  tokenledger profile add NAME && tokenledger login nous -p NAME\n");
    serve_footer(s);
    code = EXIT_OK;
  } else {
    code = cli_print(r, status_cols, &o, 0);
    if (code == EXIT_OK && !o.json) {
      serve_footer(s);
      status_hints(r, s);
    }
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt status_opts[] = {{"profile", "NAME", "only this profile's entries", 0}, CLI_OPTS_TABLE, {0}};
const cli_cmd cli_cmd_status = {
    "status",
    run_status,
    NULL,
    0,
    0,
    "what each profile's entries would give now, and what needs you",
    "Per-profile token status, one row per pool entry: its credential, whether its access token is valid (or\n"
    "why it cannot be: needs_login, unknown_outcome; api_key and borrowed entries have no refresh token for\n"
    "tokenledger to keep), when it expires, the refresh token's generation and state, cooldowns and strict\n"
    "mode. Below the table: whether serve is up for strict profiles, and the command to run for each\n"
    "credential that needs you. --wide shows every column (entry source, fingerprints, strategy, reason).\n",
    status_opts,
    NULL};

/* ---- lineage --------------------------------------------------------------------- */

static const cli_col lineage_cols[] = {{"credential", "cred", COL_DEFAULT},
                                       {"provider", NULL, COL_DEFAULT | COL_SHRINK},
                                       {"label", NULL, COL_DEFAULT | COL_SHRINK | COL_EXTRA},
                                       {"family", NULL, 0},
                                       {"generation", "gen", COL_DEFAULT},
                                       {"state", NULL, COL_DEFAULT | COL_STATE},
                                       {"origin", NULL, COL_DEFAULT},
                                       {"fingerprint", NULL, COL_DEFAULT},
                                       {"issued", NULL, COL_DEFAULT | COL_TIME},
                                       {"age_s", NULL, 0},
                                       {"retired", NULL, 0},
                                       {"presented_by", NULL, COL_DEFAULT | COL_SHRINK | COL_OPTIONAL},
                                       {"rt", NULL, 0},
                                       {"parent", NULL, 0},
                                       {"credential_status", NULL, 0},
                                       {0}};

typedef struct node {
  size_t row;
  int64_t rt, parent, credential, generation;
} node;

static int64_t num_at(const tl_report *r, size_t row, const char *col)
{
  const char *v = tl_report_get(r, row, col);
  return v ? strtoll(v, NULL, 10) : 0;
}

typedef struct tree {
  const tl_report *r;
  const node *nodes;
  size_t *by_parent; /* node indices sorted by (parent, rt): a token's children are one run */
  size_t *height;    /* per node: generations below it (the longest line of descendants) */
  size_t n;
  int utf8;
  size_t width; /* the terminal's, 0 for no limit */
} tree;

static const node *g_sort_nodes;
static int by_parent_cmp(const void *a, const void *b)
{
  const node *x = &g_sort_nodes[*(const size_t *)a], *y = &g_sort_nodes[*(const size_t *)b];
  if (x->parent != y->parent)
    return x->parent < y->parent ? -1 : 1;
  return x->rt < y->rt ? -1 : x->rt > y->rt;
}
static int by_rt_cmp(const void *a, const void *b)
{
  const node *x = &g_sort_nodes[*(const size_t *)a], *y = &g_sort_nodes[*(const size_t *)b];
  return x->rt < y->rt ? -1 : x->rt > y->rt;
}
static int by_generation_desc(const void *a, const void *b)
{
  const node *x = &g_sort_nodes[*(const size_t *)a], *y = &g_sort_nodes[*(const size_t *)b];
  return x->generation > y->generation ? -1 : x->generation < y->generation;
}

/* The children of rt, oldest first: *first is the index into by_parent, the count is returned. */
static size_t children(const tree *t, int64_t rt, size_t *first)
{
  size_t lo = 0, hi = t->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (t->nodes[t->by_parent[mid]].parent < rt)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t n = 0;
  while (lo + n < t->n && t->nodes[t->by_parent[lo + n]].parent == rt)
    n++;
  *first = lo;
  return n;
}

/*
 * Heights without recursion (a family may be a million generations long): children are one generation
 * below their parent, so visiting nodes deepest first settles every child before its parent.
 */
static int heights(tree *t)
{
  size_t *order = calloc(t->n + 1, sizeof *order), *by_rt = calloc(t->n + 1, sizeof *by_rt);
  if (!order || !by_rt) {
    free(order);
    free(by_rt);
    return -1;
  }
  for (size_t i = 0; i < t->n; i++)
    order[i] = by_rt[i] = i;
  g_sort_nodes = t->nodes;
  qsort(order, t->n, sizeof *order, by_generation_desc);
  qsort(by_rt, t->n, sizeof *by_rt, by_rt_cmp);
  for (size_t k = 0; k < t->n; k++) {
    const node *c = &t->nodes[order[k]];
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (t->nodes[by_rt[mid]].rt < c->parent)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (c->parent && lo < t->n && t->nodes[by_rt[lo]].rt == c->parent && t->height[by_rt[lo]] < t->height[order[k]] + 1)
      t->height[by_rt[lo]] = t->height[order[k]] + 1;
  }
  free(order);
  free(by_rt);
  return 0;
}

/* Display width of UTF-8 text (the tree's drawing characters are one column each). */
static size_t columns_of(const char *s)
{
  size_t n = 0;
  for (; *s; s++)
    n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

/*
 * One token's line. On a narrow terminal the time loses its year and seconds, "presented by" becomes "by",
 * and what is left of the presenter is cut to fit (--json and a pipe keep it whole).
 */
static void tree_line(const tree *t, const char *prefix, size_t i)
{
  const tl_report *r = t->r;
  size_t row = t->nodes[i].row;
  char when[40], head[600], by[300];
  const char *state = tl_report_get(r, row, "state"), *presented = tl_report_get(r, row, "presented_by");
  const char *colour = strcmp(state, "current") == 0                                     ? "32"
                       : strcmp(state, "rejected") == 0 || strcmp(state, "unknown") == 0 ? "31"
                       : strcmp(state, "presented") == 0                                 ? "33"
                                                                                         : NULL;
  cli_time(when, sizeof when, tl_report_get(r, row, "issued"));
  snprintf(head, sizeof head, "%s%s g%-3s ", prefix, t->utf8 ? "\xe2\x97\x8f" : "*",
           tl_report_get(r, row, "generation"));
  size_t fixed = columns_of(head) + 9 + 1 + 8 + 1 + strlen(tl_report_get(r, row, "fingerprint")) + 2;
  const char *lead = "  presented by ";
  if (t->width && fixed + strlen(when) + (presented ? strlen(lead) + strlen(presented) : 0) > t->width) {
    if (strlen(when) == 19) {
      memmove(when, when + 5, 11); /* YYYY-MM-DD HH:MM:SS -> MM-DD HH:MM */
      when[11] = '\0';
    }
    lead = "  by ";
  }
  snprintf(by, sizeof by, "%s%s", presented ? lead : "", presented ? presented : "");
  size_t used = fixed + strlen(when);
  if (t->width && presented && used + strlen(by) > t->width) {
    size_t room = t->width > used + 6 ? t->width - used : 0; /* "  by " and at least one character */
    const char *el = t->utf8 ? "\xe2\x80\xa6" : "...";
    size_t elw = t->utf8 ? 1 : 3;
    if (room > elw + strlen(lead))
      snprintf(by + room - elw, sizeof by - (room - elw), "%s", el);
    else
      by[0] = '\0';
  }
  printf("%s%s%-9s%s %-8s %s  %s%s\n", head, colour ? cli_sgr(colour) : "", state, colour ? cli_sgr("0") : "",
         tl_report_get(r, row, "origin"), tl_report_get(r, row, "fingerprint"), when, by);
}

/*
 * A family as a tree that stays narrow however long it is: the child with the longest line below it (the
 * newest on a tie) continues the line below its parent at the same indentation, so a chain of rotations is
 * one column; other children branch off to the right, oldest first. The first line of a subtree starts
 * with first, the others with rest.
 */
static void tree_walk(const tree *t, size_t i, const char *first, const char *rest, int depth)
{
  char branch[512], cont[512];
  tree_line(t, first, i);
  for (;;) {
    size_t k0, n = children(t, t->nodes[i].rt, &k0);
    if (n == 0)
      return;
    size_t main = t->by_parent[k0];
    for (size_t k = 1; k < n; k++)
      if (t->height[t->by_parent[k0 + k]] >= t->height[main])
        main = t->by_parent[k0 + k];
    /* At most 64 levels of at most 6 bytes: never cut, and a cut prefix would only shorten the drawing. */
    if (snprintf(branch, sizeof branch, "%s%s", rest, t->utf8 ? "\xe2\x94\x9c\xe2\x94\x80" : "+-") < 0 ||
        snprintf(cont, sizeof cont, "%s%s", rest, t->utf8 ? "\xe2\x94\x82 " : "| ") < 0)
      return;
    for (size_t k = 0; k < n; k++) {
      size_t kid = t->by_parent[k0 + k];
      if (kid == main)
        continue;
      if (depth < 64)
        tree_walk(t, kid, branch, cont, depth + 1);
      else
        printf("%s... (more branches)\n", branch);
    }
    i = main;
    tree_line(t, rest, i);
  }
}

static void print_tree(const tl_report *r, node *nodes, size_t n)
{
  tree t = {r, nodes,      calloc(n + 1, sizeof(size_t)), calloc(n + 1, sizeof(size_t)),
            n, cli_utf8(), (size_t)cli_term_width()};
  if (!t.by_parent || !t.height || heights(&t) != 0) {
    free(t.by_parent);
    free(t.height);
    return;
  }
  for (size_t i = 0; i < n; i++)
    t.by_parent[i] = i;
  g_sort_nodes = nodes;
  qsort(t.by_parent, n, sizeof *t.by_parent, by_parent_cmp);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && nodes[j].credential == nodes[i].credential)
      j++;
    const char *label = tl_report_get(r, nodes[i].row, "label"),
               *status = tl_report_get(r, nodes[i].row, "credential_status");
    printf("%scredential %lld: %s%s%s (%s)\n", i ? "\n" : "", (long long)nodes[i].credential,
           tl_report_get(r, nodes[i].row, "provider"), label ? ", " : "", label ? label : "", status ? status : "-");
    for (size_t k = i; k < j; k++)
      if (!nodes[k].parent) /* a family's root */
        tree_walk(&t, k, "  ", "  ", 0);
    i = j;
  }
  free(t.by_parent);
  free(t.height);
}

/* A DOT string: quoted, with " and \ escaped (the report's own escapes stay readable). */
static void dot_str(const char *s)
{
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      putchar('\\');
    putchar(*s);
  }
  putchar('"');
}

static void print_dot(const tl_report *r, const node *nodes, size_t n)
{
  char text[1200], when[40];
  printf("digraph lineage {\n  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"monospace\", "
         "fontsize=10];\n");
  for (size_t i = 0; i < n;) {
    size_t j = i;
    int64_t cred = nodes[i].credential;
    while (j < n && nodes[j].credential == cred)
      j++;
    const char *label = tl_report_get(r, nodes[i].row, "label"),
               *status = tl_report_get(r, nodes[i].row, "credential_status");
    printf("  subgraph \"cluster_credential_%lld\" {\n    label=", (long long)cred);
    snprintf(text, sizeof text, "credential %lld: %s%s%s (%s)", (long long)cred,
             tl_report_get(r, nodes[i].row, "provider"), label ? ", " : "", label ? label : "", status ? status : "-");
    dot_str(text);
    printf(";\n");
    for (size_t k = i; k < j; k++) {
      size_t row = nodes[k].row;
      const char *state = tl_report_get(r, row, "state"), *by = tl_report_get(r, row, "presented_by");
      const char *colour = strcmp(state, "current") == 0     ? "darkgreen"
                           : strcmp(state, "rejected") == 0  ? "red"
                           : strcmp(state, "unknown") == 0   ? "red"
                           : strcmp(state, "presented") == 0 ? "orange"
                           : strcmp(state, "retired") == 0   ? "gray50"
                                                             : "black";
      snprintf(text, sizeof text, "gen %s  %s\n%s  %s\n%s%s%s", tl_report_get(r, row, "generation"), state,
               tl_report_get(r, row, "origin"), tl_report_get(r, row, "fingerprint"),
               cli_time(when, sizeof when, tl_report_get(r, row, "issued")), by ? "\nby " : "", by ? by : "");
      printf("    \"rt%lld\" [label=", (long long)nodes[k].rt);
      /* newlines become DOT's \n; everything else is quoted */
      putchar('"');
      for (const char *p = text; *p; p++) {
        if (*p == '\n') {
          fputs("\\n", stdout);
          continue;
        }
        if (*p == '"' || *p == '\\')
          putchar('\\');
        putchar(*p);
      }
      printf("\", color=\"%s\"%s];\n", colour, strcmp(state, "retired") == 0 ? ", style=\"rounded,dashed\"" : "");
    }
    printf("  }\n");
    for (size_t k = i; k < j; k++)
      if (nodes[k].parent)
        printf("  \"rt%lld\" -> \"rt%lld\";\n", (long long)nodes[k].parent, (long long)nodes[k].rt);
    i = j;
  }
  printf("}\n");
}

static int run_lineage(const cli_cmd *c, cli_args *a)
{
  (void)c;
  cli_out o = cli_out_of(a);
  int64_t id = 0;
  int prc = credential_arg(&id, a);
  if (prc >= 0 || (prc = cli_check_columns(&o, lineage_cols)) >= 0)
    return prc;
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = tl_lineage_report(&r, s, id, &err);
  int code = EXIT_OK, tree_mode = opt_on(a, "tree"), dot = opt_on(a, "dot");
  if (rc != TL_OK) {
    cli_ctx ctx = {s, NULL, NULL, 0};
    code = cli_fail(&ctx, &err, rc);
  } else if (tree_mode || dot) {
    size_t n = tl_report_rows(r);
    node *nodes = calloc(n + 1, sizeof *nodes);
    if (!nodes) {
      code = EXIT_FAILURE_;
    } else {
      for (size_t i = 0; i < n; i++)
        nodes[i] = (node){i, num_at(r, i, "rt"), num_at(r, i, "parent"), num_at(r, i, "credential"),
                          num_at(r, i, "generation")};
      if (dot)
        print_dot(r, nodes, n);
      else if (n)
        print_tree(r, nodes, n);
      else
        printf("the ledger holds no refresh token yet\n");
      free(nodes);
    }
  } else {
    code = cli_print(r, lineage_cols, &o, 0);
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt lineage_opts[] = {
    {"credential", "ID", "only this credential's tokens", 0},
    {"tree", NULL, "draw each credential's family as a tree: generation, state, origin, when, who presented it",
     OPT_GROUP(9)},
    {"dot", NULL, "print the families as a Graphviz graph (tokenledger lineage --dot | dot -Tsvg > lineage.svg)",
     OPT_GROUP(9)},
    CLI_OPTS_TABLE,
    {0}};
const cli_cmd cli_cmd_lineage = {
    "lineage",
    run_lineage,
    NULL,
    0,
    0,
    "every refresh token ever held: a table, a tree, or Graphviz",
    "Every refresh token ever held, oldest first: its credential, generation, state, origin, fingerprint prefix,\n"
    "when it was issued and who presented it. --tree draws each family as a tree (a rotation continues the line\n"
    "below; a token with two children branches); --dot emits the same as a Graphviz graph.\n",
    lineage_opts,
    NULL};

/* ---- audit and history ------------------------------------------------------------- */

static const cli_col audit_cols[] = {{"id", NULL, COL_DEFAULT},
                                     {"at", NULL, COL_DEFAULT | COL_TIME},
                                     {"event", NULL, COL_DEFAULT | COL_STATE},
                                     {"actor", NULL, 0},
                                     {"profile", NULL, COL_DEFAULT | COL_OPTIONAL | COL_SHRINK},
                                     {"command", NULL, COL_DEFAULT | COL_OPTIONAL | COL_SHRINK | COL_EXTRA},
                                     {"credential", "cred", COL_DEFAULT | COL_OPTIONAL},
                                     {"rt_id", NULL, 0},
                                     {"summary", NULL, COL_DEFAULT | COL_TILDE | COL_WRAP},
                                     {"detail", NULL, 0},
                                     {0}};

static const cli_col history_cols[] = {{"attempt", NULL, COL_DEFAULT},
                                       {"credential", "cred", COL_DEFAULT},
                                       {"started", NULL, COL_DEFAULT | COL_TIME},
                                       {"duration_ms", "ms", COL_DEFAULT | COL_EXTRA},
                                       {"generation", "gen", COL_DEFAULT},
                                       {"fingerprint", NULL, 0},
                                       {"outcome", NULL, COL_DEFAULT | COL_STATE},
                                       {"http_status", "http", COL_DEFAULT | COL_OPTIONAL},
                                       {"oauth_error", "error", COL_DEFAULT | COL_OPTIONAL},
                                       {"error_description", "description", COL_DEFAULT | COL_OPTIONAL | COL_SHRINK},
                                       {"child_generation", NULL, 0},
                                       {"actor", NULL, 0},
                                       {"profile", NULL, COL_DEFAULT | COL_OPTIONAL | COL_SHRINK},
                                       {"command", NULL, COL_DEFAULT | COL_EXTRA},
                                       {0}};

static int run_audit(const cli_cmd *c, cli_args *a)
{
  int history = strcmp(c->name, "history") == 0;
  const cli_col *spec = history ? history_cols : audit_cols;
  cli_out o = cli_out_of(a);
  int64_t id = 0, lim = 0;
  const char *limit = opt_str(a, "limit");
  int prc;
  if ((prc = credential_arg(&id, a)) >= 0 || (limit && (prc = parse_int64(&lim, limit, "--limit")) >= 0) ||
      (prc = cli_check_columns(&o, spec)) >= 0)
    return prc;
  tl_store *s = NULL;
  tl_report *r = NULL;
  tl_error err = {0};
  int orc = cli_open(&s, 0, NULL);
  if (orc >= 0)
    return orc;
  tl_status rc = history ? tl_history_report(&r, s, id, lim, &err) : tl_audit_report(&r, s, id, lim, &err);
  int code;
  if (rc != TL_OK) {
    cli_ctx ctx = {s, NULL, NULL, 0};
    code = cli_fail(&ctx, &err, rc);
  } else {
    code = cli_print(r, spec, &o, 0);
  }
  tl_report_free(r);
  tl_store_free(s);
  return code;
}

static const cli_opt audit_opts[] = {{"credential", "ID", "only events about this credential", 0},
                                     {"limit", "N", "only the last N events", 0},
                                     CLI_OPTS_TABLE,
                                     {0}};
const cli_cmd cli_cmd_audit = {
    "audit",
    run_audit,
    NULL,
    0,
    0,
    "the append-only audit log, in words",
    "The append-only audit log, oldest first (the last N with --limit). The table says each event's detail in\n"
    "words (key=value, paths below your home as ~); --json and --wide keep the detail's JSON object. No secret\n"
    "appears in it: refresh tokens are 12-digit fingerprint prefixes.\n",
    audit_opts,
    NULL};

static const cli_opt history_opts[] = {{"credential", "ID", "only this credential's refreshes", 0},
                                       {"limit", "N", "only the N newest", 0},
                                       CLI_OPTS_TABLE,
                                       {0}};
const cli_cmd cli_cmd_history = {
    "history",
    run_audit,
    NULL,
    0,
    0,
    "every presentation of a refresh token, with its outcome",
    "Every presentation of a refresh token, newest first, with its outcome, HTTP status, what the server said\n"
    "and which process (profile, command) presented it.\n",
    history_opts,
    NULL};
