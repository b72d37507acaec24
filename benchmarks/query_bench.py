"""Query benchmark: a store of 1 M metric rows written through the real writer, then the time of the
leaderboard, pareto and recommend paths in embedded DuckDB (each as `qmx` runs it: connect, views,
query), and the time from a cell's write to its row being visible to `qmx query`.

    .venv/bin/python benchmarks/query_bench.py [--cells 2000] [--metrics-per-cell 500] [--repeats 5]

Targets (issue 12): each path < 200 ms; write-to-visible < 1 s. Prints figures; asserts nothing.
Every figure is taken twice: on the store as the sweep writes it (one file per table per cell
attempt) and after `qmx compact` (one file per table), since a reader opens every file.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from analysis.catalog import connect, query  # noqa: E402
from analysis.pareto import pareto  # noqa: E402
from analysis.recommend import load_gates, recommend  # noqa: E402
from analysis.store import ResultStore  # noqa: E402
from matrix import Cell  # noqa: E402
from matrix.results import METRIC_SCHEMA  # noqa: E402

METHODS = [("none", 16), ("int8", 8), ("nf4", 4), ("fp4", 4), ("gptq", 4), ("gptq", 3), ("awq", 4), ("fp8", 8)]


def _cell(i: int, models: int) -> Cell:
    method, bits = METHODS[i % len(METHODS)]
    model = f"org/model-{(i // len(METHODS)) % models}"
    variant = i // (len(METHODS) * models)          # distinct dimensions: a group size per variant
    return Cell(model=model, revision=None, method=method, backend="none" if method == "none" else "x",
                bits=bits, group_size=None if method == "none" else 32 * (1 + variant), options=(),
                kv_cache_dtype="auto", engine="hf", calibration=None, evaluation=json.dumps({"v": variant}))


def _metrics(rng: random.Random, n: int) -> pa.Table:
    rows = [{"metric": "perplexity", "value": 10 + rng.random() * 5, "unit": "ppl", "direction": "lower",
             "settings": '{"context": 512}'},
            {"metric": "decode_tokens_per_s", "value": 50 + rng.random() * 50, "unit": "tok/s",
             "direction": "higher", "settings": '{"batch": 1}'},
            {"metric": "weight_bytes", "value": rng.randint(1, 16) * 2**28, "unit": "bytes", "direction": "lower",
             "settings": "{}"}]
    for level in (1, 8, 32, 128):
        rows.append({"metric": "serving_ttft_ms_p95", "value": level * (1 + rng.random()), "unit": "ms",
                     "direction": "lower", "settings": json.dumps({"concurrency": level})})
    rows += [{"metric": f"lm_eval_subtask_{k}", "value": rng.random(), "unit": "fraction", "direction": "higher",
              "settings": "{}"} for k in range(n - len(rows))]
    return pa.Table.from_pylist(rows, schema=METRIC_SCHEMA)


def _timed(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--metrics-per-cell", type=int, default=500)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qmx-query-bench-"))
    rng = random.Random(0)
    store = ResultStore(root, "bench")
    t0 = time.perf_counter()
    for i in range(args.cells):
        store.record(_cell(i, args.models), 1, {"status": "ok"}, _metrics(rng, args.metrics_per_cell))
    write_s = time.perf_counter() - t0
    rows = query(root, "select count(*) as n from metrics").to_pylist()[0]["n"]
    files = sum(1 for _ in root.rglob("*.parquet"))
    print(f"store: {rows:,} metric rows, {args.cells:,} cells, {files:,} Parquet files under {root}")
    print(f"write: {write_s:.1f} s through ResultStore.record ({1000 * write_s / args.cells:.1f} ms per cell)")
    print(f"machine: {os.cpu_count()} CPUs; times are min / median / max of {args.repeats} runs: the query on an "
          f"open connection, then with a fresh connection (snapshot and views), as one `qmx` command makes")

    gates = load_gates(None, max_ppl_delta_pct=30.0, sla_ttft_p95_ms=20.0, concurrency=8)
    paths = {
        "leaderboard": lambda con: con.sql("select * from leaderboard").to_arrow_table(),
        "pareto (perplexity vs weight_bytes)": lambda con: pareto(con, ["perplexity", "weight_bytes"]),
        "recommend (2 gates, served at c=8)": lambda con: recommend(con, gates),
    }
    for layout in ("as written", "compacted"):
        if layout == "compacted":
            t = time.perf_counter()
            merged = store.compact()
            print(f"\nqmx compact: {sum(merged.values()):,} files -> {len(merged)} in {time.perf_counter() - t:.1f} s")
        print(f"-- {layout}: {sum(1 for _ in root.rglob('*.parquet')):,} Parquet files")
        lo, med, hi = _timed(lambda: connect(root), args.repeats)
        print(f"{'connect (snapshot + views)':40s} {1000 * lo:7.1f} / {1000 * med:7.1f} / {1000 * hi:7.1f} ms")
        con = connect(root)
        for name, fn in paths.items():
            lo, med, hi = _timed(lambda: fn(con), args.repeats)          # the query on an open connection
            flag = "  (target < 200 ms: met)" if med < 0.2 else "  (target < 200 ms: NOT met)"
            print(f"{name:40s} {1000 * lo:7.1f} / {1000 * med:7.1f} / {1000 * hi:7.1f} ms{flag}")
            lo, med, hi = _timed(lambda: fn(connect(root)), args.repeats)   # the whole `qmx` command's DuckDB work
            print(f"{'  + connect, as one qmx command':40s} {1000 * lo:7.1f} / {1000 * med:7.1f} / {1000 * hi:7.1f} ms")
        # write-to-visible: a new cell's runs row (the commit point) lands; how soon does a query see it?
        lags = []
        for k in range(args.repeats):
            cell = _cell(args.cells + len(lags) + (0 if layout == "as written" else args.repeats), args.models)
            t = time.perf_counter()
            store.record(cell, 1, {"status": "ok"}, _metrics(rng, args.metrics_per_cell))
            while not query(root, f"select 1 from leaderboard where cell_id = '{cell.cell_id}'").num_rows:
                pass         # poll until the new cell's row is visible
            lags.append(time.perf_counter() - t)
        print(f"{'write -> visible to qmx query':40s} {1000 * min(lags):7.1f} / {1000 * statistics.median(lags):7.1f}"
              f" / {1000 * max(lags):7.1f} ms  (target < 1 s: {'met' if max(lags) < 1 else 'NOT met'})")

if __name__ == "__main__":
    main()
