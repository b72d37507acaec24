"""The Pareto set: cells no other cell of the same sweep, model and engine beats on every axis.

One SQL template serves the `pareto` view (quality against weight memory) and `qmx pareto` on any
axes, each axis respecting its measure's direction. A cell dominates another when it is at least
as good on every axis and better on one; cells missing an axis are left out, not guessed.
"""
from __future__ import annotations

from typing import Sequence

import duckdb

from analysis.measures import Measure, cell_table_sql, resolve

DEFAULT_AXES = (("perplexity", "lower"), ("weight_bytes", "lower"))
GROUP = ("sweep", "model", "engine")


def pareto_sql(source: str, axes: Sequence[tuple[str, str]]) -> str:
    """SELECT the non-dominated rows of `source` (a table or a subquery) on `axes` (column, direction)."""
    def cmp(direction: str, strict: bool) -> str:
        return ("<" if direction == "lower" else ">") + ("" if strict else "=")

    present = " AND ".join(f'"{c}" IS NOT NULL' for c, _ in axes)
    same = " AND ".join(f"o.{g} IS NOT DISTINCT FROM p.{g}" for g in GROUP)
    no_worse = " AND ".join(f'o."{c}" {cmp(d, False)} p."{c}"' for c, d in axes)
    better = " OR ".join(f'o."{c}" {cmp(d, True)} p."{c}"' for c, d in axes)
    return (f"WITH p AS (SELECT * FROM {source} WHERE {present}) "
            f"SELECT p.* FROM p WHERE NOT EXISTS "
            f"(SELECT 1 FROM p o WHERE {same} AND {no_worse} AND ({better}))")


def pareto(con: duckdb.DuckDBPyConnection, axes: Sequence[str], sweep: str | None = None,
           concurrency: int | None = None, where: str | None = None):
    """The Pareto cells on the named measures (two or three), each group ordered by its first axis."""
    measures: list[Measure] = [resolve(con, a, concurrency, sweep) for a in axes]
    cells, params = cell_table_sql(con, measures, sweep, where)
    order = f'"{measures[0].column}" {"ASC" if measures[0].direction == "lower" else "DESC"}'
    sql = pareto_sql(f"({cells})", [(m.column, m.direction) for m in measures])
    return measures, con.sql(f"{sql} ORDER BY sweep, model, engine, {order}", params=params).to_arrow_table()
