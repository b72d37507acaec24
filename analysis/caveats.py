"""Caveats: a reason, found after the fact, not to trust some recorded figures.

A figure is never rewritten. `note_caveat` selects figures of one sweep with a SQL condition over
the `results` view and writes the reason beside them (`caveats/sweep=<name>/<id>.parquet`, one row
per figure, keyed by cell, attempt, metric and settings). The views carry `caveat_ids`, so the
printed tables, the published page and the decisions mark those figures and say why. A rerun of a
cell is a new attempt, a new measurement: its figures carry no caveat, and a caveat none of whose
figures is current any more is gone from every output. Deleting a caveat's file removes it.

Every output numbers the store's current caveats in the order they were noted, so `‡2` names the
same caveat in `qmx leaderboard`, `qmx rank` and the page, whichever sweeps each shows.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from analysis.catalog import _literal, connect
from analysis.markdown import plural
from analysis.measures import RELATIVE, Measure
from analysis.store import CAVEATS_SCHEMA, ResultStore

MARK = "‡"      # beside a marked row's label, numbered: ‡1, ‡2 (the printed leaderboard's † and ⚠ are others)
LEVEL = "CAST(json_extract({}, '$.concurrency') AS INTEGER)"     # a served figure's load level, from its settings


class CaveatError(ValueError):
    """A caveat that cannot be noted (bad condition, no figure selected, no reason): one line."""


@dataclass(frozen=True)
class Caveat:
    caveat_id: str
    reason: str
    selection: str        # the SQL condition that selected the figures, as given
    noted_at: datetime    # UTC
    figures: int          # the figures it covers that are still current (their cell not remeasured)
    cells: int

    def footnote(self, number: int) -> str:
        return (f"{MARK}{number} {self.reason} (caveat noted {self.noted_at:%Y-%m-%d %H:%M} UTC on "
                f"{plural(self.figures, 'figure')} of {plural(self.cells, 'cell')}: {self.selection})")


def _sweep_of(con: duckdb.DuckDBPyConnection, sweep: str | None) -> str:
    known = [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY 1").fetchall()]
    if sweep is None and len(known) == 1:
        return known[0]
    if sweep is None:
        raise CaveatError(f"--sweep: a caveat is noted in one sweep; these results hold {', '.join(map(repr, known))}")
    if sweep not in known:
        raise CaveatError(f"--sweep: no sweep {sweep!r} in these results; sweeps: {', '.join(map(repr, known))}")
    return sweep


def _selected(con: duckdb.DuckDBPyConnection, sweep: str, where: str) -> pa.Table:
    """The figures of `sweep` that `where` selects, with the attempt each was measured in."""
    # what --where reads: the sweep's figures, with a served figure's load level as columns of its own.
    # A relation's filter parses one expression, nothing more: no condition can reach another sweep.
    figures = con.sql(f"SELECT *, {LEVEL.format('settings')} AS concurrency, "
                      f"CAST(json_extract(settings, '$.request_rate') AS DOUBLE) AS request_rate "
                      f"FROM results WHERE sweep = {_literal(sweep)}")
    try:
        chosen = figures.filter(where).project("cell_id, metric, settings").to_arrow_table()
    except duckdb.Error as e:
        raise CaveatError(f"--where: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    attempts = dict(con.execute("SELECT cell_id, attempt FROM latest_runs WHERE sweep = ?", [sweep]).fetchall())
    return chosen.append_column("attempt", pa.array([attempts[c] for c in chosen.column("cell_id").to_pylist()],
                                                    pa.int32()))


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
    # a figure that already carries this reason (any caveat, any letter case) is not noted again
    noted_before = set(con.execute("SELECT cell_id, attempt, metric, settings FROM caveats WHERE sweep = ? "
                                   "AND lower(reason) = lower(?)", [sweep, reason]).fetchall())
    keys = zip(*(figures.column(k).to_pylist() for k in ("cell_id", "attempt", "metric", "settings")))
    figures = figures.filter(pa.array([k not in noted_before for k in keys], pa.bool_()))
    if not figures.num_rows:
        raise CaveatError("every figure selected already carries this reason: nothing noted")
    caveat_id = uuid.uuid4().hex[:8]
    noted = datetime.now(UTC)
    n = figures.num_rows
    rows = figures.append_column("caveat_id", pa.array([caveat_id] * n)) \
        .append_column("reason", pa.array([reason] * n)).append_column("selection", pa.array([where] * n)) \
        .append_column("noted_at", pa.array([noted] * n, pa.timestamp("ms", tz="UTC")))
    path = ResultStore(results, sweep).add_caveat(caveat_id, rows.select(CAVEATS_SCHEMA.names))
    cells = len(set(figures.column("cell_id").to_pylist()))
    return Caveat(caveat_id, reason, where, noted.replace(microsecond=0), n, cells), path


# a caveat's rows whose figure is still current: its attempt is its cell's committed one
_CURRENT = ("FROM caveats c JOIN latest_runs l ON l.sweep = c.sweep AND l.cell_id = c.cell_id "
            "AND l.attempt = c.attempt AND l.status = 'ok'")


def caveats(con: duckdb.DuckDBPyConnection) -> tuple[Caveat, ...]:
    """The store's current caveats, oldest first: their numbers in every output (`numbering`)."""
    rows = con.execute(f"SELECT c.caveat_id, any_value(c.reason), any_value(c.selection), min(c.noted_at), "
                       f"count(*), count(DISTINCT c.cell_id) {_CURRENT} GROUP BY c.caveat_id "
                       f"ORDER BY min(c.noted_at), c.caveat_id").fetchall()
    return tuple(Caveat(cid, reason, sel, at.astimezone(UTC), n, cells) for cid, reason, sel, at, n, cells in rows)


def numbering(noted: tuple[Caveat, ...]) -> dict[str, int]:
    """Each caveat's number, in the order given (`caveats`' order)."""
    return {c.caveat_id: i for i, c in enumerate(noted, 1)}


def numbered(ids: list[str] | tuple[str, ...] | None, numbers: dict[str, int]) -> list[tuple[int, str]]:
    """A row's caveats as (number, id), by number."""
    return sorted((numbers[i], i) for i in ids or () if i in numbers)


def marks(ids: list[str] | tuple[str, ...] | None, numbers: dict[str, int]) -> str:
    """A row's marks, e.g. ` ‡1 ‡2` (empty for a row without caveats)."""
    return "".join(f" {MARK}{n}" for n, _ in numbered(ids, numbers))


def footnotes(noted: tuple[Caveat, ...], rows) -> list[str]:
    """The footnotes of the caveats that mark some of `rows`, numbered as in `noted`."""
    used = {i for r in rows for i in r.get("caveat_ids") or ()}
    return [c.footnote(n) for n, c in enumerate(noted, 1) if c.caveat_id in used]


def on_measure(con: duckdb.DuckDBPyConnection, measure: Measure,
               sweep: str | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(sweep, cell_id) -> the caveats on the figures `measure` reads for that cell: a served one, its load
    level's; a baseline-relative one, the cell's own figure of the metric it needs and its baseline's."""
    metric = measure.metric or RELATIVE[measure.name][2]
    # the caveats table and the committed attempts only: the figures' own view would be read whole
    sql, params = f"SELECT c.sweep, c.cell_id, c.caveat_id {_CURRENT} WHERE c.metric = ?", [metric]
    if measure.concurrency is not None:
        sql += f" AND {LEVEL.format('c.settings')} = ?"
        params.append(measure.concurrency)
    if sweep:
        sql += " AND c.sweep = ?"
        params.append(sweep)
    found: dict[tuple[str, str], set[str]] = {}
    for sw, cid, caveat_id in con.execute(sql, params).fetchall():
        found.setdefault((sw, cid), set()).add(caveat_id)
    if measure.name in RELATIVE and found:
        for sw, cid, base in con.execute("SELECT sweep, cell_id, baseline_cell_id FROM baseline_of").fetchall():
            found.setdefault((sw, cid), set()).update(found.get((sw, base), ()))
    return {key: tuple(sorted(ids)) for key, ids in found.items() if ids}


def ids_on(con: duckdb.DuckDBPyConnection, measures: list[Measure],
           sweep: str | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(sweep, cell_id) -> the caveats on any of those measures' figures of the cell."""
    out: dict[tuple[str, str], set[str]] = {}
    for m in measures:
        for key, ids in on_measure(con, m, sweep).items():
            out.setdefault(key, set()).update(ids)
    return {key: tuple(sorted(v)) for key, v in out.items()}
