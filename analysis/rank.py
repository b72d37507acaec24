"""Cells ordered by one measure, best first, in the direction the measure declares.

Where a measure carries its spread (`<metric>_min` / `_max` over its repeats), cells whose
ranges overlap share a rank: the measurement cannot tell them apart.
"""
from __future__ import annotations

import duckdb

from analysis.caveats import ids_on
from analysis.measures import Measure, cell_table, concurrency_levels, optional, resolve

# the columns beside the ranked one: baseline-relative first, as the guides compare
CONTEXT = ("perplexity_delta_pct", "kl_divergence_mean", "accuracy_recovery_pct", "speedup", "memory_reduction")
SERVED = ("serving_ttft_ms_p95", "serving_tpot_ms_p95")


def rank(con: duckdb.DuckDBPyConnection, by: str, sweep: str | None = None, where: str | None = None,
         concurrency: int | None = None) -> tuple[Measure, list[Measure], list[dict]]:
    """(the ranked measure, the measures shown beside it, rows best first with a `rank` per model and the
    caveats on the figures shown, `caveat_ids`)."""
    target = resolve(con, by, concurrency, sweep)
    levels = concurrency_levels(con, sweep)
    level = target.concurrency or concurrency or (levels[0] if levels else None)
    context = [optional(con, c, None, sweep) for c in CONTEXT if c != by]
    context += [optional(con, s, level, sweep) for s in SERVED if s != by] if level is not None else []
    context = [m for m in context if m is not None]
    rows = cell_table(con, [target, *context], sweep, where).to_pylist()
    doubted = ids_on(con, [target, *context], sweep)
    for r in rows:
        r["caveat_ids"] = list(doubted.get((r["sweep"], r["cell_id"]), ()))
    sign = 1 if target.direction == "lower" else -1
    col = target.column
    rows.sort(key=lambda r: (r["sweep"], r["model"], r[col] is None, sign * (r[col] or 0.0)))
    position: dict[tuple, int] = {}
    lead: dict[tuple, dict] = {}          # per model: the first cell of the current tie
    for r in rows:
        key = (r["sweep"], r["model"])
        if r[col] is None:
            r["rank"] = None
            continue
        position[key] = position.get(key, 0) + 1
        first = lead.get(key)
        r["rank"] = first["rank"] if first is not None and _overlap(first, r, col) else position[key]
        if r["rank"] == position[key]:
            lead[key] = r
    shared = {(r["sweep"], r["model"], r["rank"]) for r in rows if r["rank"] is not None}
    counts = {k: sum(1 for r in rows if (r["sweep"], r["model"], r["rank"]) == k) for k in shared}
    for r in rows:
        r["tied"] = r["rank"] is not None and counts[(r["sweep"], r["model"], r["rank"])] > 1
    return target, context, rows


def _overlap(a: dict, b: dict, col: str) -> bool:
    """Both cells carry a [min, max] range for the measure and the ranges meet."""
    ranges = (a.get(f"{col}_min"), a.get(f"{col}_max"), b.get(f"{col}_min"), b.get(f"{col}_max"))
    return None not in ranges and ranges[0] <= ranges[3] and ranges[2] <= ranges[1]
