"""The figures cells are ordered, gated and compared by, and the one table of cells they come in.

A measure is either a `leaderboard` column or any metric in the store. A metric's unit and
direction come from its own rows (each evaluator declares them once); the leaderboard's
baseline-relative columns are the only figures the store does not hold, so they are declared
here. Served metrics (`serving_*`) hold one value per load level: they take a concurrency.
Where a cell still holds several values of a measure (closed-loop and Poisson runs at one
concurrency, a metric under two settings), the worst in the measure's own direction is used:
a gate passes only when every such figure does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

# leaderboard columns computed against the model's baseline: (unit, direction, the metric they need)
RELATIVE = {
    "perplexity_delta_pct": ("%", "lower", "perplexity"),
    "accuracy_recovery_pct": ("%", "higher", "accuracy"),
    "speedup": ("×", "higher", "decode_tokens_per_s"),
    "memory_reduction": ("×", "higher", "weight_bytes"),
}
# leaderboard columns that are a metric under another name
_COLUMN_OF_METRIC = {"throughput_output_tokens_per_s": "throughput_tokens_per_s"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class MeasureError(ValueError):
    """A measure the store cannot provide, named with the reason and the choices."""


@dataclass(frozen=True)
class Measure:
    name: str                    # as the user wrote it
    column: str                  # the column it is in the cell table
    unit: str
    direction: str               # lower | higher
    metric: str | None = None    # the store's metric (None: a baseline-relative column)
    concurrency: int | None = None
    joined: bool = False         # not a leaderboard column: joined from `results`

    @property
    def header(self) -> str:
        at = f" @c={self.concurrency}" if self.concurrency is not None else ""
        return f"{self.name}{at} ({self.unit})"

    def describe(self) -> str:
        at = f" at concurrency {self.concurrency}" if self.concurrency is not None else ""
        return f"{self.name} ({self.unit}, {self.direction} is better{at})"


def _leaderboard_columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("DESCRIBE leaderboard").fetchall()}


def concurrency_levels(con: duckdb.DuckDBPyConnection, sweep: str | None = None) -> list[int]:
    """The load levels served metrics were measured at (in this sweep, or any)."""
    where, params = ("AND sweep = ?", [sweep]) if sweep else ("", [])
    rows = con.execute(f"SELECT DISTINCT unnest(concurrency_levels) FROM metric_catalog WHERE true {where} ORDER BY 1",
                       params).fetchall()
    return [r[0] for r in rows]


def resolve(con: duckdb.DuckDBPyConnection, name: str, concurrency: int | None = None,
            sweep: str | None = None) -> Measure:
    """The measure `name` names in this store, or a MeasureError listing what it could be."""
    if not _NAME.match(name):
        raise MeasureError(f"{name[:80]!r} is not a metric name (lower-case letters, digits and _)")
    where, params = ("AND sweep = ?", [sweep]) if sweep else ("", [])
    source = RELATIVE[name][2] if name in RELATIVE else name
    # fetched whole: a result left open (fetchone) refuses the connection's next query (DuckDB 2)
    [found] = con.execute(f"SELECT any_value(unit), list(DISTINCT d ORDER BY d) FROM metric_catalog, "
                          f"unnest(directions) AS t(d) WHERE metric = ? {where}", [source, *params]).fetchall()
    if found is None or found[0] is None:
        known = [r[0] for r in con.execute(f"SELECT DISTINCT metric FROM metric_catalog WHERE true {where} ORDER BY 1",
                                           params).fetchall()]
        needs = f" (it needs {source!r})" if source != name else ""
        raise MeasureError(f"metric {name!r} was not measured in this store{needs}; measured: "
                           f"{', '.join([*RELATIVE, *known]) or 'nothing yet'}")
    if name in RELATIVE:
        unit, direction, _ = RELATIVE[name]
        return Measure(name, name, unit, direction)
    unit, directions = found
    if directions not in (["lower"], ["higher"]):
        raise MeasureError(f"metric {name!r} has no better direction ({', '.join(directions)}): it cannot rank cells")
    if name.startswith("serving_"):
        levels = concurrency_levels(con, sweep)
        if concurrency is None:
            if len(levels) != 1:
                raise MeasureError(f"{name} was measured at concurrency {', '.join(map(str, levels))}: "
                                   f"choose one with --concurrency")
            concurrency = levels[0]
        elif concurrency not in levels:
            raise MeasureError(f"{name} was not measured at concurrency {concurrency}; measured at "
                               f"{', '.join(map(str, levels))}")
        return Measure(name, f"{name}_c{concurrency}", unit, directions[0], name, concurrency, joined=True)
    column = _COLUMN_OF_METRIC.get(name, name)
    if column in _leaderboard_columns(con):
        return Measure(name, column, unit, directions[0], name)
    return Measure(name, name, unit, directions[0], name, joined=True)


def optional(con: duckdb.DuckDBPyConnection, name: str, concurrency: int | None = None,
             sweep: str | None = None) -> Measure | None:
    """The measure, or None where this store never measured it (context columns, not gates)."""
    try:
        return resolve(con, name, concurrency, sweep)
    except MeasureError:
        return None


def check_where(con: duckdb.DuckDBPyConnection, where: str | None) -> str:
    """A user's filter over the cell table, accepted only as one boolean expression."""
    if not where:
        return "true"
    statements = con.extract_statements(f"SELECT * FROM leaderboard WHERE {where}")
    if len(statements) != 1 or statements[0].type.name != "SELECT":
        raise MeasureError(f"--where takes one SQL condition over the leaderboard's columns, got {where[:80]!r}")
    return f"({where})"


def cell_table(con: duckdb.DuckDBPyConnection, measures: list[Measure], sweep: str | None = None,
               where: str | None = None, model: str | None = None):
    """One row per successful cell: the leaderboard's columns plus each measure's column (Arrow)."""
    sql, params = cell_table_sql(con, measures, sweep, where, model)
    return con.sql(sql, params=params).to_arrow_table()


def cell_table_sql(con: duckdb.DuckDBPyConnection, measures: list[Measure], sweep: str | None = None,
                   where: str | None = None, model: str | None = None) -> tuple[str, list]:
    """The SELECT behind `cell_table` and its parameters, for use as a subquery."""
    joins, cols, params = [], [], []
    for i, m in enumerate(dict.fromkeys(m for m in measures if m.joined)):
        level = "AND CAST(json_extract(settings, '$.concurrency') AS INTEGER) = ?" if m.concurrency is not None else ""
        worst = "max" if m.direction == "lower" else "min"
        joins.append(f"LEFT JOIN (SELECT sweep, cell_id, {worst}(value) AS value FROM results WHERE metric = ? {level} "
                     f"GROUP BY sweep, cell_id) m{i} ON m{i}.sweep = l.sweep AND m{i}.cell_id = l.cell_id")
        params += [m.metric] + ([m.concurrency] if m.concurrency is not None else [])
        cols.append(f'm{i}.value AS "{m.column}"')
    filters = ["true"]
    if sweep:
        filters.append("l.sweep = ?")
        params.append(sweep)
    if model:
        filters.append("l.model = ?")
        params.append(model)
    # the user's filter sees the leaderboard alone: the joined measures' sweep/cell_id would make its names ambiguous
    sql = (f"SELECT l.*{''.join(', ' + c for c in cols)} FROM (SELECT * FROM leaderboard WHERE "
           f"{check_where(con, where)}) l {' '.join(joins)} WHERE {' AND '.join(filters)}")
    return sql, params
