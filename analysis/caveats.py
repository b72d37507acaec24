"""Caveats: a reason, found after the fact, not to trust some recorded figures.

A figure is never rewritten. `note_caveat` selects figures of one sweep with a SQL condition over
the `results` view and writes the reason beside them (`caveats/sweep=<name>/<id>.parquet`, one row
per figure, keyed by cell, attempt, metric and settings). The views carry `caveat_ids`, so the
printed leaderboard, the published page and its tables mark those figures and say why. A rerun of a
cell is a new attempt, a new measurement: its figures carry no caveat. Deleting a caveat's file
removes it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from analysis.catalog import connect
from analysis.markdown import plural
from analysis.measures import RELATIVE, Measure
from analysis.store import CAVEATS_SCHEMA, ResultStore

MARK = "‡"      # beside a marked row's label, numbered: ‡1, ‡2 (the printed leaderboard's † and ⚠ are others)


class CaveatError(ValueError):
    """A caveat that cannot be noted (bad condition, no figure selected, no reason): one line."""


@dataclass(frozen=True)
class Caveat:
    caveat_id: str
    reason: str
    selection: str        # the SQL condition that selected the figures, as given
    noted_at: str         # UTC, to the minute
    figures: int
    cells: int

    def footnote(self, number: int) -> str:
        return (f"{MARK}{number} {self.reason} (caveat noted {self.noted_at} on {plural(self.figures, 'figure')} "
                f"of {plural(self.cells, 'cell')}: {self.selection})")


def _sweep_of(con: duckdb.DuckDBPyConnection, sweep: str | None) -> str:
    known = [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY 1").fetchall()]
    if sweep is None and len(known) == 1:
        return known[0]
    if sweep is None:
        raise CaveatError(f"--sweep: a caveat is noted in one sweep; these results hold {', '.join(map(repr, known))}")
    if sweep not in known:
        raise CaveatError(f"--sweep: no sweep {sweep!r} in these results; sweeps: {', '.join(map(repr, known))}")
    return sweep


# what --where reads: the results view, plus a served figure's load level as columns of its own
_FIGURES = ("SELECT *, CAST(json_extract(settings, '$.concurrency') AS INTEGER) AS concurrency, "
            "CAST(json_extract(settings, '$.request_rate') AS DOUBLE) AS request_rate FROM results")


def _selected(con: duckdb.DuckDBPyConnection, sweep: str, where: str) -> pa.Table:
    """The figures of `sweep` that `where` selects, with the attempt each was measured in."""
    # the sweep is filtered first, apart: no condition can reach another sweep's figures
    sql = (f"SELECT r.cell_id, l.attempt, r.metric, r.settings FROM (SELECT * FROM (SELECT * FROM ({_FIGURES}) "
           f"WHERE sweep = $sweep) WHERE ({where})) r JOIN latest_runs l ON l.sweep = r.sweep AND l.cell_id = r.cell_id")
    try:
        statements = con.extract_statements(sql)
        if len(statements) != 1 or statements[0].type.name != "SELECT":
            raise CaveatError(f"--where takes one SQL condition over the results view's columns, got {where[:80]!r}")
        return con.sql(sql, params={"sweep": sweep}).to_arrow_table()
    except duckdb.Error as e:
        raise CaveatError(f"--where: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def note_caveat(results: str | Path, sweep: str | None, where: str, reason: str) -> tuple[Caveat, str]:
    """Note `reason` on the figures `where` selects in `sweep` (optional where the store holds one);
    returns the caveat and its file. Raises CaveatError before writing anything when it cannot."""
    reason = " ".join(reason.split())
    if not reason:
        raise CaveatError("reason: say why the figures are not to be trusted (it is printed beside them)")
    if not where.strip():
        raise CaveatError("--where: an empty condition would select every figure; name the ones meant")
    con = connect(results)
    sweep = _sweep_of(con, sweep)
    figures = _selected(con, sweep, where)
    if not figures.num_rows:
        raise CaveatError(f"--where selects no figure of sweep {sweep!r}: nothing noted")
    caveat_id = uuid.uuid4().hex[:8]
    noted = datetime.now(UTC)
    n = figures.num_rows
    rows = figures.append_column("caveat_id", pa.array([caveat_id] * n)) \
        .append_column("reason", pa.array([reason] * n)).append_column("selection", pa.array([where] * n)) \
        .append_column("noted_at", pa.array([noted] * n, pa.timestamp("ms", tz="UTC")))
    path = ResultStore(results, sweep).add_caveat(caveat_id, rows.select(CAVEATS_SCHEMA.names))
    return Caveat(caveat_id, reason, where, _minute(noted), n, len(set(figures.column("cell_id").to_pylist()))), path


def _minute(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def caveats(con: duckdb.DuckDBPyConnection, where: str = "true", params: list | None = None) -> tuple[Caveat, ...]:
    """The caveats noted in the sweeps `where` selects, oldest first (their numbers on a page)."""
    rows = con.execute(f"SELECT caveat_id, any_value(reason), any_value(selection), min(noted_at), count(*), "
                       f"count(DISTINCT cell_id) FROM caveats WHERE {where} GROUP BY caveat_id "
                       f"ORDER BY min(noted_at), caveat_id", params or []).fetchall()
    return tuple(Caveat(cid, reason, sel, _minute(at), n, cells) for cid, reason, sel, at, n, cells in rows)


def caveats_shown(con: duckdb.DuckDBPyConnection, where: str, params: list, rows: list[dict]) -> tuple[Caveat, ...]:
    """The caveats that mark some of `rows` (leaderboard or serving rows): a caveat whose figures were all
    remeasured since marks nothing, and gets no footnote."""
    used = {i for r in rows for i in r.get("caveat_ids") or ()}
    return tuple(c for c in caveats(con, where, params) if c.caveat_id in used)


def numbering(noted: tuple[Caveat, ...]) -> dict[str, int]:
    """Each caveat's footnote number, in the order given."""
    return {c.caveat_id: i for i, c in enumerate(noted, 1)}


def marks(ids: list[str] | None, numbers: dict[str, int]) -> str:
    """A row's marks, e.g. ` ‡1 ‡2` (empty for a row without caveats)."""
    return "".join(f" {MARK}{numbers[i]}" for i in sorted(ids or (), key=lambda i: numbers.get(i, 0)) if i in numbers)


def on_measure(con: duckdb.DuckDBPyConnection, measure: Measure, sweep: str | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(sweep, cell_id) -> the caveats on the figures `measure` reads for that cell (a baseline-relative
    measure: the cell's own figure of the metric it needs; a served one: its load level's)."""
    metric = measure.metric or RELATIVE[measure.name][2]
    # the caveats table and the committed attempts only: the figures' own view would be read whole
    sql = ("SELECT c.sweep, c.cell_id, list_sort(list(DISTINCT c.caveat_id)) FROM caveats c JOIN latest_runs l "
           "ON l.sweep = c.sweep AND l.cell_id = c.cell_id AND l.attempt = c.attempt AND l.status = 'ok' "
           "WHERE c.metric = ?")
    params: list = [metric]
    if measure.concurrency is not None:
        sql += " AND CAST(json_extract(c.settings, '$.concurrency') AS INTEGER) = ?"
        params.append(measure.concurrency)
    if sweep:
        sql += " AND c.sweep = ?"
        params.append(sweep)
    return {(sw, cid): tuple(ids) for sw, cid, ids in con.execute(sql + " GROUP BY ALL", params).fetchall()}


def reasons_on(con: duckdb.DuckDBPyConnection, measures: list[Measure],
               sweep: str | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(sweep, cell_id) -> the reasons of the caveats on any of those measures' figures of the cell."""
    reasons = {c.caveat_id: c.reason for c in caveats(con)}
    out: dict[tuple[str, str], set[str]] = {}
    for m in measures:
        for key, ids in on_measure(con, m, sweep).items():
            out.setdefault(key, set()).update(reasons[i] for i in ids)
    return {key: tuple(sorted(v)) for key, v in out.items()}


def footnoted(rows: list[dict], doubted: dict[tuple[str, str], tuple[str, ...]]) -> list[str]:
    """Marks each row's label with its caveats' numbers (`bf16 ‡1`), numbered in row order, and returns
    the footnote lines (`‡1 reason`) to print under the table."""
    numbers: dict[str, int] = {}
    for r in rows:
        for reason in doubted.get((r["sweep"], r["cell_id"]), ()):
            r["label"] += f" {MARK}{numbers.setdefault(reason, len(numbers) + 1)}"
    return [f"{MARK}{n} under a caveat: {reason}" for reason, n in numbers.items()]
