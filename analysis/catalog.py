"""DuckDB over the results folder: one view per table, plus views that answer users' questions.

Views (all queries run on an in-memory DuckDB that only reads the Parquet files):
  cells, runs, metrics       the raw tables (hive column `sweep` added)
  latest_runs                the last attempt of each cell
  results                    metrics of each cell's successful attempt, joined to its dimensions
  leaderboard                one row per successful cell: perplexity and its delta % vs the
                             model's baseline, decode tok/s and speedup, weight bytes and reduction
  serving                    one row per successful cell and load level (concurrency, request rate):
                             TTFT / TPOT p50 and p99, request and token throughput, goodput
  skipped                    cells the validity rules skipped, with the reason
  samples, generations       per-request latency samples and prompt-set outputs of each cell's
                             latest successful attempt (every attempt: samples_all, generations_all)
  generations_side_by_side   each cell's output per prompt beside its model's baseline output

A store on an object store (`s3://`, `gs://`) is read through DuckDB's httpfs extension, which
must be installed and given credentials by the user (`INSTALL httpfs`, `CREATE SECRET ...`).
"""
from __future__ import annotations

from pathlib import Path

import duckdb

from analysis.store import ROW_TABLES, SCHEMAS, TABLES, local_path

_VIEWS = """
CREATE VIEW latest_runs AS
  SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY sweep, cell_id ORDER BY attempt DESC) = 1;
CREATE VIEW results AS
  SELECT c.sweep, c.cell_id, c.label, c.model, c.method, c.backend, c.bits, c.group_size, c.options,
         c.kv_cache_dtype, c.engine, c.is_baseline, m.metric, m.value, m.unit, m.direction, m.settings
  FROM metrics m
  JOIN latest_runs r ON r.sweep = m.sweep AND r.cell_id = m.cell_id AND r.attempt = m.attempt AND r.status = 'ok'
  JOIN (SELECT DISTINCT ON (sweep, cell_id) * FROM cells) c ON c.sweep = m.sweep AND c.cell_id = m.cell_id;
CREATE VIEW cell_metrics AS
  SELECT sweep, cell_id, any_value(label) AS label, any_value(model) AS model, any_value(method) AS method,
         any_value(bits) AS bits, any_value(group_size) AS group_size, any_value(kv_cache_dtype) AS kv_cache_dtype,
         any_value(engine) AS engine, any_value(is_baseline) AS is_baseline,
         max(value) FILTER (metric = 'perplexity') AS perplexity,
         any_value(settings) FILTER (metric = 'perplexity') AS perplexity_settings,
         max(value) FILTER (metric = 'decode_tokens_per_s') AS decode_tokens_per_s,
         max(value) FILTER (metric = 'ttft_ms') AS ttft_ms,
         max(value) FILTER (metric = 'weight_bytes') AS weight_bytes,
         max(value) FILTER (metric = 'peak_memory_bytes') AS peak_memory_bytes,
         max(value) FILTER (metric = 'quantize_seconds') AS quantize_seconds
  FROM results GROUP BY sweep, cell_id;
CREATE VIEW leaderboard AS
  SELECT c.sweep, c.model, c.label, c.method, c.bits, c.group_size, c.kv_cache_dtype, c.engine,
         c.perplexity,
         100 * (c.perplexity / b.perplexity - 1) AS perplexity_delta_pct,
         c.decode_tokens_per_s, c.decode_tokens_per_s / b.decode_tokens_per_s AS speedup,
         c.ttft_ms, c.weight_bytes, b.weight_bytes / c.weight_bytes AS memory_reduction,
         c.peak_memory_bytes, c.quantize_seconds, c.cell_id
  FROM cell_metrics c
  LEFT JOIN cell_metrics b ON b.sweep = c.sweep AND b.model = c.model AND b.is_baseline
       AND b.engine = c.engine AND b.perplexity_settings IS NOT DISTINCT FROM c.perplexity_settings
  ORDER BY c.sweep, c.model, c.perplexity NULLS LAST;
CREATE VIEW serving AS
  SELECT sweep, model, label, engine, kv_cache_dtype,
         CAST(json_extract(settings, '$.concurrency') AS INTEGER) AS concurrency,
         CAST(json_extract(settings, '$.request_rate') AS DOUBLE) AS request_rate,
         max(value) FILTER (metric = 'serving_ttft_ms_p50') AS ttft_ms_p50,
         max(value) FILTER (metric = 'serving_ttft_ms_p99') AS ttft_ms_p99,
         max(value) FILTER (metric = 'serving_tpot_ms_p50') AS tpot_ms_p50,
         max(value) FILTER (metric = 'serving_tpot_ms_p99') AS tpot_ms_p99,
         max(value) FILTER (metric = 'serving_request_throughput') AS requests_per_s,
         max(value) FILTER (metric = 'serving_output_tokens_per_s') AS output_tokens_per_s,
         max(value) FILTER (metric = 'serving_goodput') AS goodput,
         max(value) FILTER (metric = 'serving_requests_ok') AS requests_ok,
         max(value) FILTER (metric = 'serving_requests_failed') AS requests_failed,
         cell_id, settings
  FROM results WHERE starts_with(metric, 'serving_')
  GROUP BY sweep, model, label, engine, kv_cache_dtype, cell_id, settings
  ORDER BY sweep, model, concurrency, request_rate NULLS FIRST, ttft_ms_p50;
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
"""


class NoResults(RuntimeError):
    """The results folder holds no sweep yet."""


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
    con = duckdb.connect(":memory:")
    for table in TABLES:
        view = f"{table}_all" if table in ROW_TABLES else table
        found = fs.get_file_info(pafs.FileSelector(f"{base.rstrip('/')}/{table}", recursive=True, allow_not_found=True))
        if any(f.base_name.endswith(".parquet") and not f.base_name.startswith(".") for f in found):
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{prefix}/{table}/*/*.parquet', "
                        f"hive_partitioning = true, union_by_name = true)")
        else:   # keep every view defined even when, say, only skipped cells exist
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in SCHEMAS[table]) + ", NULL::VARCHAR AS sweep"
            con.execute(f"CREATE VIEW {view} AS SELECT {cols} WHERE false")
    con.execute(_VIEWS)
    return con


def _duck_type(t) -> str:
    import pyarrow as pa
    return {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN"}.get(
        t, "TIMESTAMPTZ")


_READ_ONLY = {"SELECT", "EXPLAIN"}


def query(results: str | Path, sql: str):
    """Run read-only SQL (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE) and return an Arrow table."""
    con = connect(results)
    statements = con.extract_statements(sql)
    for st in statements:
        kind = st.type.name
        if kind not in _READ_ONLY:
            raise PermissionError(f"qmx query is read-only: a {kind} statement is not allowed")
    if len(statements) != 1:
        raise ValueError(f"qmx query takes one statement, got {len(statements)}")
    return con.sql(sql).to_arrow_table()
