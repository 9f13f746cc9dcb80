/*
 * report.c - the rows a read command returns, for tables and --json.
 *
 * A report is a small column-major-free table of strings with a per-cell
 * "is a number" bit, so JSON keeps numbers as numbers while the CLI prints
 * text. Reports are built from forensic views, which never select a secret,
 * so a report never holds one; text cells are escaped with tl_text_escape
 * (server text and file contents reach them), so a report never holds a
 * control character either, in a table or in its JSON. A caller's own rows
 * (tl_report_new, tl_report_add_row) are escaped the same way, and their
 * numbers must be numbers.
 *
 * JSON has one style everywhere: one document on one line (JSON Lines when a
 * command streams), keys in column order, null for a missing value (an empty
 * text cell is null too, never ""). A flag (a yes/no fact: the columns named
 * in flag_columns, whoever built the report) is a JSON boolean, never 0 or 1,
 * which jq would take as true either way; its cell stays "0" or "1" for
 * tl_report_get.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct tl_report {
  size_t ncols, nrows, cap;
  char **cols;
  char **cells; /* nrows * ncols, NULL for SQL NULL */
  unsigned char *num;
};

void tl_report_free(tl_report *r)
{
  if (!r)
    return;
  for (size_t i = 0; i < r->ncols; i++)
    free(r->cols[i]);
  for (size_t i = 0; i < r->nrows * r->ncols; i++)
    free(r->cells[i]);
  free(r->cols);
  free(r->cells);
  free(r->num);
  free(r);
}

size_t tl_report_columns(const tl_report *r)
{
  return r ? r->ncols : 0;
}
size_t tl_report_rows(const tl_report *r)
{
  return r ? r->nrows : 0;
}

const char *tl_report_column(const tl_report *r, size_t col)
{
  return r && col < r->ncols ? r->cols[col] : NULL;
}

const char *tl_report_cell(const tl_report *r, size_t row, size_t col)
{
  return r && row < r->nrows && col < r->ncols ? r->cells[row * r->ncols + col] : NULL;
}

const char *tl_report_get(const tl_report *r, size_t row, const char *column)
{
  if (!r || !column)
    return NULL;
  for (size_t c = 0; c < r->ncols; c++)
    if (strcmp(r->cols[c], column) == 0)
      return tl_report_cell(r, row, c);
  return NULL;
}

tl_status tl__report_kv(tl_report **out, const char *const *cols, size_t ncols, tl_error *err)
{
  tl_report *r = calloc(1, sizeof *r);
  if (!r || !(r->cols = calloc(ncols ? ncols : 1, sizeof *r->cols))) {
    free(r);
    return tl__oom(err);
  }
  r->ncols = ncols;
  for (size_t i = 0; i < ncols; i++) {
    if (!(r->cols[i] = strdup(cols[i]))) {
      tl_report_free(r);
      return tl__oom(err);
    }
  }
  *out = r;
  return TL_OK;
}

tl_status tl__report_add_row(tl_report *r, const char *const *cells, const int *is_num, tl_error *err)
{
  if (r->nrows == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    char **nc = realloc(r->cells, cap * r->ncols * sizeof *nc + 1);
    if (!nc)
      return tl__oom(err);
    r->cells = nc;
    unsigned char *nn = realloc(r->num, cap * r->ncols + 1);
    if (!nn)
      return tl__oom(err);
    r->num = nn;
    r->cap = cap;
  }
  size_t base = r->nrows * r->ncols;
  for (size_t c = 0; c < r->ncols; c++) {
    r->cells[base + c] = NULL;
    r->num[base + c] = is_num ? (unsigned char)is_num[c] : 0;
  }
  r->nrows++;
  /* Every cell is stored escaped, whoever built the row: paths, directory names and profile
   * names come from the file system and may hold terminal controls (an idempotent step for
   * cells escaped already). */
  for (size_t c = 0; c < r->ncols; c++) {
    if (!cells[c])
      continue;
    size_t cap = 6 * strlen(cells[c]) + 1;
    if (!(r->cells[base + c] = malloc(cap)))
      return tl__oom(err);
    tl_text_escape(r->cells[base + c], cap, cells[c]);
  }
  return TL_OK;
}

tl_status tl__report_from_stmt(tl_report **out, tl_store *s, sqlite3_stmt *st, tl_error *err)
{
  tl_report *r = NULL;
  tl_status rc = TL_OK;
  int n = sqlite3_column_count(st);
  const char **names = calloc((size_t)n + 1, sizeof *names);
  const char **cells = calloc((size_t)n + 1, sizeof *cells);
  char **shown = calloc((size_t)n + 1, sizeof *shown);
  int *num = calloc((size_t)n + 1, sizeof *num);
  if (!names || !cells || !num || !shown) {
    rc = tl__oom(err);
    goto done;
  }
  for (int i = 0; i < n; i++)
    names[i] = sqlite3_column_name(st, i);
  if ((rc = tl__report_kv(&r, names, (size_t)n, err)) != TL_OK)
    goto done;
  int step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    for (int i = 0; i < n; i++) {
      int t = sqlite3_column_type(st, i);
      num[i] = t == SQLITE_INTEGER || t == SQLITE_FLOAT;
      free(shown[i]);
      shown[i] = NULL;
      const char *v = t == SQLITE_NULL ? NULL : (const char *)sqlite3_column_text(st, i);
      if (v && !num[i]) {
        /* Server text and file contents reach these columns: a report shows no control character. */
        size_t cap = 6 * strlen(v) + 1;
        if (!(shown[i] = malloc(cap))) {
          rc = tl__oom(err);
          goto done;
        }
        tl_text_escape(shown[i], cap, v);
        v = shown[i];
      }
      cells[i] = v;
    }
    if ((rc = tl__report_add_row(r, cells, num, err)) != TL_OK)
      goto done;
  }
  if (step != SQLITE_DONE)
    rc = tl__err_db(err, s, "report");
done:
  sqlite3_reset(st);
  for (int i = 0; shown && i < n; i++)
    free(shown[i]);
  free(shown);
  free(names);
  free(cells);
  free(num);
  if (rc == TL_OK)
    *out = r;
  else
    tl_report_free(r);
  return rc;
}

tl_status tl_report_new(tl_report **out, const char *const *columns, size_t ncolumns, tl_error *err)
{
  tl_error_clear(err);
  if (!out || !columns || ncolumns == 0 || ncolumns > 1024)
    return tl__err(err, TL_EINVAL, 0, "report: 1-1024 columns are required");
  for (size_t i = 0; i < ncolumns; i++)
    if (!columns[i] || !*columns[i])
      return tl__err(err, TL_EINVAL, 0, "report: column %zu has no name", i);
  return tl__report_kv(out, columns, ncolumns, err);
}

/* A JSON number as Jansson would read one back (no leading +, no hex, no inf/nan), or true or false. */
static int is_literal(const char *v)
{
  json_error_t e;
  json_t *j = json_loads(v, JSON_DECODE_ANY, &e);
  int ok = j && (json_is_number(j) || json_is_boolean(j));
  json_decref(j);
  return ok;
}

tl_status tl_report_add_row(tl_report *r, const char *const *cells, const int *numeric, tl_error *err)
{
  tl_error_clear(err);
  if (!r || !cells)
    return tl__err(err, TL_EINVAL, 0, "report: no row");
  char **shown = calloc(r->ncols + 1, sizeof *shown);
  int *num = calloc(r->ncols + 1, sizeof *num);
  tl_status rc = TL_OK;
  if (!shown || !num) {
    rc = tl__oom(err);
    goto done;
  }
  for (size_t c = 0; c < r->ncols && rc == TL_OK; c++) {
    num[c] = numeric && numeric[c] && cells[c];
    if (num[c] && !is_literal(cells[c])) {
      rc = tl__err(err, TL_EINVAL, 0, "report: column %s: not a number, true or false", r->cols[c]);
    } else if (cells[c] && !num[c]) {
      size_t cap = 6 * strlen(cells[c]) + 1;
      if (!(shown[c] = malloc(cap)))
        rc = tl__oom(err);
      else
        tl_text_escape(shown[c], cap, cells[c]);
    }
  }
  if (rc == TL_OK) {
    const char **row = calloc(r->ncols + 1, sizeof *row);
    if (!row) {
      rc = tl__oom(err);
      goto done;
    }
    for (size_t c = 0; c < r->ncols; c++)
      row[c] = num[c] ? cells[c] : shown[c];
    rc = tl__report_add_row(r, row, num, err);
    free(row);
  }
done:
  for (size_t c = 0; shown && c < r->ncols; c++)
    free(shown[c]);
  free(shown);
  free(num);
  return rc;
}

/* The yes/no columns of every report: rendered as true/false in JSON. */
static int flag_column(const char *name)
{
  static const char *const flag_columns[] = {"strict", "strict_unfinished", "ok", "running", "refreshed", NULL};
  for (size_t i = 0; flag_columns[i]; i++)
    if (strcmp(name, flag_columns[i]) == 0)
      return 1;
  return 0;
}

static json_t *row_json(const tl_report *r, size_t row)
{
  json_t *o = json_object();
  for (size_t c = 0; o && c < r->ncols; c++) {
    const char *v = r->cells[row * r->ncols + c];
    json_t *j;
    if (!v || !*v)
      j = json_null();
    else if (r->num[row * r->ncols + c] && (strcmp(v, "true") == 0 || strcmp(v, "false") == 0))
      j = json_boolean(v[0] == 't');
    else if (r->num[row * r->ncols + c] && flag_column(r->cols[c]) && (strcmp(v, "0") == 0 || strcmp(v, "1") == 0))
      j = json_boolean(v[0] == '1');
    else if (r->num[row * r->ncols + c])
      j = strpbrk(v, ".eE") ? json_real(strtod(v, NULL)) : json_integer(strtoll(v, NULL, 10));
    else if (strcmp(r->cols[c], "detail") == 0 && v[0] == '{' && (j = json_loads(v, 0, NULL)))
      ; /* audit details are JSON objects: embed them, not their text */
    else
      j = json_string(v);
    if (!j)
      j = json_stringn(v, strlen(v)); /* invalid UTF-8 cannot come from our views; keep the bytes visible */
    if (json_object_set_new(o, r->cols[c], j ? j : json_null()) != 0) {
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

tl_status tl_report_json(char **out, const tl_report *r, unsigned flags, tl_error *err)
{
  tl_error_clear(err);
  if (!out || !r)
    return tl__err(err, TL_EINVAL, 0, "report: nothing to render");
  json_t *doc;
  if (flags & TL_JSON_OBJECT) {
    doc = r->nrows ? row_json(r, 0) : json_object();
  } else {
    doc = json_array();
    for (size_t i = 0; doc && i < r->nrows; i++) {
      json_t *o = row_json(r, i);
      if (!o || json_array_append_new(doc, o) != 0) {
        json_decref(doc);
        doc = NULL;
      }
    }
  }
  if (!doc)
    return tl__oom(err);
  *out = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(doc);
  return *out ? TL_OK : tl__oom(err);
}

tl_status tl_token_json(char **out, const tl_token *t, tl_error *err)
{
  tl_error_clear(err);
  if (!out || !t || !t->access_token)
    return tl__err(err, TL_EINVAL, 0, "token json: no token");
  char when[40] = "";
  if (t->expires_at_ms > 0) {
    time_t secs = (time_t)(t->expires_at_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
  json_t *o = json_pack("{s:s, s:s?, s:I, s:s?, s:s?, s:I, s:b}", "access_token", t->access_token, "expires_at",
                        *when ? when : NULL, "expires_at_ms", (json_int_t)t->expires_at_ms, "entry_id", t->entry_id,
                        "base_url", t->base_url, "credential", (json_int_t)t->credential, "refreshed", t->refreshed);
  if (!o)
    return tl__oom(err);
  *out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  /* Jansson keeps a copy of the token inside the object: burn it before freeing. */
  json_t *at = json_object_get(o, "access_token");
  if (json_is_string(at))
    tl_burn((void *)(uintptr_t)json_string_value(at), json_string_length(at));
  json_decref(o);
  return *out ? TL_OK : tl__oom(err);
}
