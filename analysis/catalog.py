"""DuckDB over the results folder: one view per table, plus views that answer users' questions.

Views (all queries run on an in-memory DuckDB that only reads the Parquet files):
  cells, runs, metrics       the raw tables (hive column `sweep` added)
  latest_runs                the last attempt of each cell
  results                    metrics of each cell's successful attempt, joined to its dimensions, with
                             the ids of the caveats noted on each figure (`caveat_ids`; `caveats`)
  leaderboard                one row per successful cell: perplexity and its delta % vs the
                             model's baseline, decode tok/s and speedup, weight bytes and reduction
  serving                    one row per successful cell and load level (concurrency, request rate):
                             TTFT / TPOT p50 and p99, request and token throughput, goodput
  pareto                     leaderboard cells no other cell of their model and engine beats on both
                             perplexity and weight bytes (`qmx pareto` takes any axes)
  failed                     cells whose last attempt failed, with the reason and the error
  accuracy                   lm-eval accuracy per task beside the baseline's, with recovery %
  skipped                    cells the validity rules skipped, with the reason
  caveats                    reasons noted after the fact not to trust some figures, one row per figure
                             (`qmx caveat`); leaderboard and serving rows carry the ids of theirs
  samples, generations       per-request latency samples and prompt-set outputs of each cell's
                             latest successful attempt (every attempt: samples_all, generations_all)
  generations_side_by_side   each cell's output per prompt beside its model's baseline output
  layer_sensitivity          each linear layer's output error against the baseline (latest successful
                             attempt), with its cell's method and bits, most sensitive first

A store on an object store (`s3://`, `gs://`) is read through DuckDB's httpfs extension, which
must be installed and given credentials by the user (`INSTALL httpfs`, `CREATE SECRET ...`).

Read-only means read-only: once the views exist, DuckDB's external access is off except for the
results folder (or the object-store prefix), extensions are neither installed nor loaded on
demand (httpfs is loaded up front for an object store), and the configuration is locked. So a
query reads no other file and makes no outside connection; statements other than SELECT (and
EXPLAIN of a SELECT) are refused before they run, so nothing is written inside the folder either.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb

from analysis.generative import FIGURES as GENERATIVE, _STDERRS as GENERATIVE_STDERRS
from analysis.measures import RELATIVE
from analysis.pareto import DEFAULT_AXES, pareto_sql
from analysis.store import CAVEATS, ROW_TABLES, SCHEMAS, TABLES, local_path

_VIEWS = """
CREATE VIEW latest_runs AS
  SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY sweep, cell_id ORDER BY attempt DESC) = 1;
CREATE VIEW figure_caveats AS   -- the caveats noted on each recorded figure (analysis.caveats)
  SELECT sweep, cell_id, attempt, metric, settings, list_sort(list(DISTINCT caveat_id)) AS caveat_ids
  FROM caveats GROUP BY ALL;
CREATE VIEW results AS
  SELECT c.sweep, c.cell_id, c.label, c.model, c.method, c.backend, c.bits, c.group_size, c.options,
         c.kv_cache_dtype, c.engine, c.is_baseline, m.metric, m.value, m.unit, m.direction, m.settings, f.caveat_ids
  FROM metrics m
  JOIN latest_runs r ON r.sweep = m.sweep AND r.cell_id = m.cell_id AND r.attempt = m.attempt AND r.status = 'ok'
  JOIN (SELECT DISTINCT ON (sweep, cell_id) * FROM cells) c ON c.sweep = m.sweep AND c.cell_id = m.cell_id
  LEFT JOIN figure_caveats f ON f.sweep = m.sweep AND f.cell_id = m.cell_id AND f.attempt = m.attempt
       AND f.metric = m.metric AND f.settings IS NOT DISTINCT FROM m.settings;
CREATE TABLE cell_metrics AS     -- a table: the leaderboard joins it three times
  SELECT sweep, cell_id, any_value(label) AS label, any_value(model) AS model, any_value(method) AS method,
         any_value(bits) AS bits, any_value(group_size) AS group_size, any_value(kv_cache_dtype) AS kv_cache_dtype,
         any_value(engine) AS engine, any_value(is_baseline) AS is_baseline,
         max(value) FILTER (metric = 'perplexity') AS perplexity,
         any_value(settings) FILTER (metric = 'perplexity') AS perplexity_settings,
         max(value) FILTER (metric = 'perplexity_stderr') AS perplexity_stderr,
         max(value) FILTER (metric = 'kl_divergence_mean') AS kl_divergence_mean,
         max(value) FILTER (metric = 'top1_agreement') AS top1_agreement,
         max(value) FILTER (metric = 'decode_tokens_per_s') AS decode_tokens_per_s,
         max(value) FILTER (metric = 'decode_tokens_per_s_min') AS decode_tokens_per_s_min,
         max(value) FILTER (metric = 'decode_tokens_per_s_max') AS decode_tokens_per_s_max,
         any_value(settings) FILTER (metric = 'decode_tokens_per_s') AS speed_settings,
         max(value) FILTER (metric = 'ttft_ms') AS ttft_ms,
         max(value) FILTER (metric = 'throughput_output_tokens_per_s') AS throughput_tokens_per_s,
         max(value) FILTER (metric = 'mbu') AS mbu,
         max(value) FILTER (metric = 'weight_bytes') AS weight_bytes,
         max(value) FILTER (metric = 'weights_in_use_bytes') AS weights_in_use_bytes,
         max(value) FILTER (metric = 'peak_memory_bytes') AS peak_memory_bytes,
         max(value) FILTER (metric = 'kv_cache_tokens') AS kv_cache_tokens,
         max(value) FILTER (metric = 'quantize_seconds') AS quantize_seconds,
         max(value) FILTER (metric = 'chars_per_token') AS chars_per_token,
         max(value) FILTER (metric = 'sanity_flags') AS sanity_flags,
         -- a served figure's caveat marks its load level's row in `serving`, a generation figure's its row
         -- in the generation table: not the whole cell
         list_distinct(flatten(list(caveat_ids) FILTER (NOT starts_with(metric, 'serving_')
                                                        AND metric NOT IN ({generative})))) AS caveat_ids,
         -- those on the figures other cells' Δ, speedup, reduction and recovery are computed against
         list_distinct(flatten(list(caveat_ids) FILTER (metric IN ({relative})))) AS relative_caveat_ids
  FROM results GROUP BY sweep, cell_id;
CREATE TABLE metric_catalog AS   -- what each sweep measured: a measure's unit, direction and load levels at a glance
  SELECT sweep, metric, any_value(unit) AS unit, list(DISTINCT direction ORDER BY direction) AS directions,
         list(DISTINCT CAST(json_extract(settings, '$.concurrency') AS INTEGER) ORDER BY 1)
           FILTER (starts_with(metric, 'serving_') AND json_extract(settings, '$.concurrency') IS NOT NULL)
           AS concurrency_levels
  FROM results GROUP BY sweep, metric;
CREATE VIEW baseline_of AS
  -- each cell's baseline: the model's unquantized cell on the same engine, measured under the same settings
  SELECT c.sweep, c.cell_id, b.cell_id AS baseline_cell_id
  FROM cell_metrics c JOIN cell_metrics b ON b.sweep = c.sweep AND b.model = c.model AND b.is_baseline
       AND b.engine = c.engine AND b.perplexity_settings IS NOT DISTINCT FROM c.perplexity_settings
  -- several unquantized cells (a bf16 model with an fp8 KV cache too): the all-16-bit one is the reference
  QUALIFY row_number() OVER (PARTITION BY c.sweep, c.cell_id ORDER BY b.kv_cache_dtype <> 'auto', b.cell_id) = 1;
CREATE VIEW accuracy AS
  -- lm-eval accuracy per task, beside the baseline's on the same task and settings
  SELECT r.sweep, r.cell_id, json_extract_string(r.settings, '$.task') AS task, r.value AS accuracy,
         b.value AS baseline_accuracy, 100 * r.value / nullif(b.value, 0) AS recovery_pct, r.settings
  FROM results r LEFT JOIN baseline_of o ON o.sweep = r.sweep AND o.cell_id = r.cell_id
  LEFT JOIN results b ON b.sweep = r.sweep AND b.cell_id = o.baseline_cell_id AND b.metric = 'accuracy'
       AND b.settings = r.settings
  WHERE r.metric = 'accuracy';
CREATE VIEW leaderboard AS
  WITH acc AS (SELECT sweep, cell_id, avg(accuracy) AS accuracy, avg(recovery_pct) AS accuracy_recovery_pct
               FROM accuracy GROUP BY sweep, cell_id)
  SELECT c.sweep, c.model, c.label, c.method, c.bits, c.group_size, c.kv_cache_dtype, c.engine, c.is_baseline,
         c.perplexity, c.perplexity_stderr,
         100 * (c.perplexity / b.perplexity - 1) AS perplexity_delta_pct,
         c.kl_divergence_mean, c.top1_agreement, a.accuracy, a.accuracy_recovery_pct,
         c.decode_tokens_per_s, c.decode_tokens_per_s_min, c.decode_tokens_per_s_max,
         c.decode_tokens_per_s / b.decode_tokens_per_s AS speedup,
         c.ttft_ms, c.throughput_tokens_per_s, c.mbu,
         c.weight_bytes, b.weight_bytes / c.weight_bytes AS memory_reduction,
         c.weights_in_use_bytes, coalesce(c.weights_in_use_bytes > 1.25 * c.weight_bytes, false) AS ran_dense,
         c.peak_memory_bytes, c.kv_cache_tokens, c.quantize_seconds, c.chars_per_token, c.sanity_flags,
         c.perplexity_settings, c.speed_settings,
         -- a cell's own figures' caveats, and its baseline's on the figures its relative columns divide by
         nullif(list_sort(list_distinct(list_concat(coalesce(c.caveat_ids, []),
                CASE WHEN b.cell_id <> c.cell_id THEN coalesce(b.relative_caveat_ids, []) ELSE [] END))), [])
           AS caveat_ids,
         c.cell_id, o.baseline_cell_id
  FROM cell_metrics c
  LEFT JOIN baseline_of o ON o.sweep = c.sweep AND o.cell_id = c.cell_id
  LEFT JOIN cell_metrics b ON b.sweep = o.sweep AND b.cell_id = o.baseline_cell_id
  LEFT JOIN acc a ON a.sweep = c.sweep AND a.cell_id = c.cell_id
  ORDER BY c.sweep, c.model, c.perplexity NULLS LAST, c.label, c.cell_id;
CREATE VIEW serving AS
  SELECT sweep, model, label, engine, kv_cache_dtype,
         CAST(json_extract(settings, '$.concurrency') AS INTEGER) AS concurrency,
         CAST(json_extract(settings, '$.request_rate') AS DOUBLE) AS request_rate,
         max(value) FILTER (metric = 'serving_ttft_ms_p50') AS ttft_ms_p50,
         max(value) FILTER (metric = 'serving_ttft_ms_p95') AS ttft_ms_p95,
         max(value) FILTER (metric = 'serving_ttft_ms_p99') AS ttft_ms_p99,
         max(value) FILTER (metric = 'serving_tpot_ms_p50') AS tpot_ms_p50,
         max(value) FILTER (metric = 'serving_tpot_ms_p95') AS tpot_ms_p95,
         max(value) FILTER (metric = 'serving_tpot_ms_p99') AS tpot_ms_p99,
         max(value) FILTER (metric = 'serving_request_throughput') AS requests_per_s,
         max(value) FILTER (metric = 'serving_output_tokens_per_s') AS output_tokens_per_s,
         max(value) FILTER (metric = 'serving_goodput') AS goodput,
         max(value) FILTER (metric = 'serving_requests_ok') AS requests_ok,
         max(value) FILTER (metric = 'serving_requests_failed') AS requests_failed,
         nullif(list_sort(list_distinct(flatten(list(caveat_ids)))), []) AS caveat_ids,
         cell_id, settings
  FROM results WHERE starts_with(metric, 'serving_')
  GROUP BY sweep, model, label, engine, kv_cache_dtype, cell_id, settings
  ORDER BY sweep, model, concurrency, request_rate NULLS FIRST, ttft_ms_p50, label, cell_id;
CREATE VIEW failed AS
  SELECT c.sweep, c.model, c.label, c.method, c.bits, c.group_size, c.kv_cache_dtype, c.engine, r.attempt,
         r.reason, r.error, r.started_at, c.cell_id
  FROM latest_runs r JOIN (SELECT DISTINCT ON (sweep, cell_id) * FROM cells) c USING (sweep, cell_id)
  WHERE r.status = 'failed';
CREATE VIEW skipped AS
  SELECT c.sweep, c.model, c.label, c.method, c.bits, c.group_size, c.kv_cache_dtype, c.engine, r.reason, c.cell_id
  FROM latest_runs r JOIN (SELECT DISTINCT ON (sweep, cell_id) * FROM cells) c USING (sweep, cell_id)
  WHERE r.status = 'skipped';
CREATE VIEW samples AS
  SELECT s.* FROM samples_all s
  JOIN latest_runs r ON r.sweep = s.sweep AND r.cell_id = s.cell_id AND r.attempt = s.attempt AND r.status = 'ok';
CREATE VIEW generations AS
  SELECT g.* FROM generations_all g
  JOIN latest_runs r ON r.sweep = g.sweep AND r.cell_id = g.cell_id AND r.attempt = g.attempt AND r.status = 'ok';
CREATE VIEW generations_side_by_side AS
  WITH dims AS (SELECT DISTINCT ON (sweep, cell_id) sweep, cell_id, label, model, engine, is_baseline FROM cells)
  SELECT c.sweep, c.model, c.label, c.engine, g.cell_id, g.prompt_id, g.prompt,
         g.output, bg.output AS baseline_output, g.output = bg.output AS same_as_baseline,
         g.output_tokens, bg.output_tokens AS baseline_output_tokens, g.settings, b.cell_id AS baseline_cell_id
  FROM generations g
  JOIN dims c ON c.sweep = g.sweep AND c.cell_id = g.cell_id
  LEFT JOIN dims b ON b.sweep = c.sweep AND b.model = c.model AND b.engine = c.engine AND b.is_baseline
  LEFT JOIN generations bg ON bg.sweep = b.sweep AND bg.cell_id = b.cell_id AND bg.prompt_id = g.prompt_id
       AND bg.settings IS NOT DISTINCT FROM g.settings
  ORDER BY c.sweep, c.model, g.prompt_id, c.label;
CREATE VIEW layer_sensitivity AS
  -- each linear layer's output error against the baseline, beside its cell's method and bits (`qmx layers`)
  WITH dims AS (SELECT DISTINCT ON (sweep, cell_id) sweep, cell_id, label, model, method, bits, group_size, engine
                FROM cells)
  SELECT c.sweep, c.model, c.label, c.method, c.bits AS cell_bits, c.group_size, c.engine, l.layer, l.layer_index,
         l.kind, l.module, l.params, l.bits, l.kept, l.rel_error, l.settings, l.cell_id, l.attempt
  FROM layer_sensitivity_all l
  JOIN latest_runs r ON r.sweep = l.sweep AND r.cell_id = l.cell_id AND r.attempt = l.attempt AND r.status = 'ok'
  JOIN dims c ON c.sweep = l.sweep AND c.cell_id = l.cell_id
  ORDER BY l.rel_error DESC, c.sweep, c.model, c.label, l.layer;
"""


_SNAPSHOT = ("cells", "runs")      # read into memory at connect; metrics and the row tables stay views


class NoResults(RuntimeError):
    """The results folder holds no sweep yet, or not the sweep asked for."""


def check_sweep(con: duckdb.DuckDBPyConnection, sweep: str | None) -> None:
    """Raise NoResults naming the sweeps there when `sweep` is not one of them."""
    if sweep is None:
        return
    known = [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY 1").fetchall()]
    if sweep not in known:
        raise NoResults(f"--sweep: no sweep {sweep!r} in these results; sweeps: {', '.join(map(repr, known)) or 'none'}")


def connect(results: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose views read the Parquet files; the files are never written."""
    import pyarrow.fs as pafs
    from analysis.store import open_root

    fs, base = open_root(results)
    local = local_path(results)
    # DuckDB reads local paths itself; object-store URIs go to it as written (httpfs)
    prefix = local.as_posix() if local is not None else str(results).rstrip("/")
    if fs.get_file_info(f"{base.rstrip('/')}/runs").type == pafs.FileType.NotFound:
        raise NoResults(f"no results under {results}: run `qmx sweep SPEC --results {results}` first")
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    if local is None:
        _load_httpfs(con, results)
    for table in (*TABLES, CAVEATS):
        view = f"{table}_all" if table in ROW_TABLES else table
        found = fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/{table}", recursive=True, allow_not_found=True))
        if any(f.base_name.endswith(".parquet") and not f.base_name.startswith(".") for f in found):
            # cells and runs, which every view joins, are read once into memory: one snapshot of which
            # attempts are committed (rows of later attempts never join it), and no per-query re-read
            kind = "TABLE" if table in _SNAPSHOT else "VIEW"
            con.execute(f"CREATE {kind} {view} AS SELECT * FROM read_parquet("
                        f"{_literal(f'{prefix}/{table}/*/*.parquet')}, hive_partitioning = true, union_by_name = true)")
        else:   # keep every view defined even when, say, only skipped cells exist
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in SCHEMAS[table]) + ", NULL::VARCHAR AS sweep"
            con.execute(f"CREATE VIEW {view} AS SELECT {cols} WHERE false")
    con.execute(_VIEWS.format(generative=_names([*GENERATIVE, *GENERATIVE_STDERRS]),
                              relative=_names(source for *_, source in RELATIVE.values())))
    con.execute(f"CREATE VIEW pareto AS {pareto_sql('leaderboard', DEFAULT_AXES)}")
    _lock_down(con, prefix)
    return con


def _names(names) -> str:
    """SQL string literals, comma-separated: `'a', 'b'`."""
    return ", ".join(map(_literal, names))


def _literal(text: str) -> str:
    """`text` as a SQL string literal (a path with a quote in it stays one string)."""
    return "'" + text.replace("'", "''") + "'"


def _load_httpfs(con: duckdb.DuckDBPyConnection, results: str | Path) -> None:
    """httpfs and the user's stored secrets, loaded now: once locked, nothing loads on demand."""
    try:
        con.execute("LOAD httpfs")
        con.execute("FROM duckdb_secrets()")     # reads persistent secrets while files may be read
    except duckdb.Error as e:
        raise NoResults(f"reading {results} needs DuckDB's httpfs extension: run "
                        f"`python -c \"import duckdb; duckdb.sql('INSTALL httpfs')\"` once "
                        f"({str(e).splitlines()[0][:200]})") from None


def _lock_down(con: duckdb.DuckDBPyConnection, prefix: str) -> None:
    """No file, URL or extension outside the results folder from here on, and no SET to undo it."""
    con.execute(f"SET allowed_directories = [{_literal(prefix.rstrip('/') + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _duck_type(t) -> str:
    import pyarrow as pa
    return {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
            pa.bool_(): "BOOLEAN"}.get(
        t, "TIMESTAMPTZ")


# leading blanks and comments, then EXPLAIN [ANALYZE] [(options)]: what wraps the explained statement
_EXPLAIN = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*EXPLAIN\b(?:\s+ANALY[SZ]E\b)?(\s*\([^)]*\))?",
                      re.IGNORECASE | re.DOTALL)
_KEYWORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)


def _refusal(con: duckdb.DuckDBPyConnection, st) -> str | None:
    """Why statement `st` is not read-only, or None. EXPLAIN ANALYZE runs what it explains, so the
    explained statement must itself be a SELECT."""
    kind = st.type.name
    if kind == "SELECT":
        return None
    if kind == "EXPLAIN":
        inner = _explained(con, st.query)
        if len(inner) == 1 and inner[0].type.name == "SELECT":
            return None
        what = _named(inner[0]) if len(inner) == 1 else "anything but one SELECT"
        return f"EXPLAIN of {what} is not allowed (EXPLAIN ANALYZE runs it)"
    return f"{_named(st)} is not allowed"


def _explained(con: duckdb.DuckDBPyConnection, sql: str) -> list:
    """The statements an EXPLAIN wraps. A parenthesised group after it is EXPLAIN's options, or
    the start of the statement itself (`EXPLAIN ANALYZE (SELECT 1) UNION (SELECT 2)`): both are tried."""
    wrapper = _EXPLAIN.match(sql)
    if wrapper is None:
        return []
    for start in (wrapper.end(), wrapper.start(1)) if wrapper.group(1) else (wrapper.end(),):
        try:
            inner = con.extract_statements(sql[start:])
        except duckdb.ParserException:
            continue
        if inner:
            return inner
    return []


def _named(st) -> str:
    """'a COPY statement': the keyword written, since the statement type lumps some together
    (INSTALL is a LOAD)."""
    word = _KEYWORD.match(st.query)
    shown = word.group(1).upper() if word else st.type.name
    return f"{'an' if shown[0] in 'AEIOU' else 'a'} {shown} statement"


def query(results: str | Path, sql: str):
    """Run read-only SQL (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of those) and return an Arrow table."""
    con = connect(results)
    statements = con.extract_statements(sql)
    for st in statements:
        why = _refusal(con, st)
        if why:
            raise PermissionError(f"qmx query is read-only: {why}")
    if len(statements) != 1:
        raise ValueError(f"qmx query takes one statement, got {len(statements)}")
    return con.sql(sql).to_arrow_table()
