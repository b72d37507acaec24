"""The one results model every published format reads: gathered once from DuckDB, then frozen."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.caveats import Caveat, caveats
from analysis.catalog import connect
from analysis.generative import GenerativeTable, generative_table
from analysis.recommend import Gates, Recommendation, recommend

FRONT_AXES = ("decode_tokens_per_s", "weight_bytes")     # the plots' x axes, each against perplexity
_COMMIT = re.compile(r"\(commit ([^)]+)\)")        # jobs.versions.project_version: "0.1.0 (commit 91d24b3)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")       # Ray colours its tracebacks; a page shows no escapes


@dataclass(frozen=True)
class FailedCell:
    model: str
    label: str
    engine: str
    attempt: int
    error: str          # the full error, ANSI escapes removed
    summary: str        # its last non-empty line: usually the exception and its message


@dataclass(frozen=True)
class Provenance:
    devices: tuple[str, ...]
    hosts: tuple[str, ...]
    commits: tuple[str, ...]                     # quantmatrix's commit, where a run recorded it (jobs.versions)
    libraries: tuple[tuple[str, tuple[str, ...]], ...]     # (library, every version seen)
    perplexity_settings: tuple[dict[str, Any], ...]        # corpus, context, stride, tokens, ...
    first_run: str | None                        # runs.started_at, earliest and latest (UTC, to the minute)
    last_run: str | None


@dataclass(frozen=True)
class PublishedResults:
    source: str                                  # the store as given
    sweep: str | None
    generated_at: str
    markdown: str                                # analysis.leaderboard.leaderboard_markdown, as printed
    columns: tuple[str, ...]                     # the `leaderboard` view's columns, in its order
    rows: tuple[dict[str, Any], ...]             # the `leaderboard` view
    serving: tuple[dict[str, Any], ...]          # the `serving` view
    serving_percentile: str                      # "p95", or "p99" where the runs recorded no p95
    mbu: tuple[dict[str, Any], ...]              # label, model, engine, mbu, gpu, peak_bandwidth_gbps
    skipped: tuple[dict[str, Any], ...]
    failed: tuple[FailedCell, ...]
    provenance: Provenance
    fronts: dict[str, frozenset[str]]            # x axis -> cell ids non-dominated on perplexity vs it
    generative: GenerativeTable | None = None    # GSM8K, JSON, long context (analysis.generative), where measured
    gates: Gates | None = None                   # the team's gates, where given
    recommendations: tuple[Recommendation, ...] = ()     # one per sweep and model under the gates
    caveats: tuple[Caveat, ...] = ()             # the current ones, numbered in this order (analysis.caveats)


def _rows(con, sql: str, params: list) -> tuple[dict[str, Any], ...]:
    return tuple(con.sql(sql, params=params).to_arrow_table().to_pylist())


def _failed(con, where: str, params: list) -> tuple[FailedCell, ...]:
    out = []
    for r in _rows(con, f"SELECT * FROM failed WHERE {where} ORDER BY model, label", params):
        error = _ANSI.sub("", r["error"] or r["reason"] or "no error recorded")
        lines = [line.strip() for line in error.split("\n") if line.strip()]     # splitlines() also splits at U+2028
        out.append(FailedCell(r["model"], r["label"], r["engine"], r["attempt"], error, lines[-1] if lines else error))
    return tuple(out)


def _provenance(con, where: str, params: list) -> Provenance:
    runs = _rows(con, f"SELECT * FROM latest_runs WHERE {where}", params)
    ran = [r for r in runs if r["status"] != "skipped"]    # a skipped cell ran nowhere
    libraries: dict[str, set[str]] = {}
    for r in ran:
        for name, version in json.loads(r["library_versions"] or "{}").items():
            libraries.setdefault(name, set()).add(str(version))
    dates = sorted(r["started_at"] for r in ran if r["started_at"] is not None)

    def distinct(column: str) -> tuple[str, ...]:
        return tuple(sorted({str(r[column]) for r in ran if r.get(column)}))

    settings = con.execute(f"SELECT DISTINCT settings FROM results WHERE metric = 'perplexity' "
                           f"AND {where} ORDER BY 1", params).fetchall()
    return Provenance(
        devices=distinct("device"), hosts=distinct("host"),
        commits=tuple(sorted({m.group(1) for v in libraries.get("quantmatrix", ()) if (m := _COMMIT.search(v))})),
        libraries=tuple((name, tuple(sorted(v))) for name, v in sorted(libraries.items())),
        perplexity_settings=tuple(json.loads(s[0]) for s in settings if s[0]),
        first_run=_day_and_time(dates[0]) if dates else None, last_run=_day_and_time(dates[-1]) if dates else None)


def _day_and_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _serving(con, where: str, params: list) -> tuple[tuple[dict[str, Any], ...], str]:
    """The served rows and the percentile to show: p95, or p99 for a store whose runs recorded no p95."""
    rows = _rows(con, f"SELECT * FROM serving WHERE {where}", params)
    return rows, "p95" if not rows or any(r.get("ttft_ms_p95") is not None for r in rows) else "p99"


def _mbu(con, where: str, params: list) -> tuple[dict[str, Any], ...]:
    rows = _rows(con, f"SELECT model, label, engine, value AS mbu, settings FROM results "
                      f"WHERE metric = 'mbu' AND {where} ORDER BY model, value DESC", params)
    out = []
    for r in rows:
        s = json.loads(r.pop("settings") or "{}")
        out.append(r | {"gpu": s.get("gpu"), "peak_bandwidth_gbps": s.get("peak_bandwidth_gbps")})
    return tuple(out)


def _fronts(con, sweep: str | None) -> dict[str, frozenset[str]]:
    """Per plotted x axis: the cells on the Pareto front of perplexity against it, per model and engine."""
    from analysis.measures import MeasureError
    from analysis.pareto import pareto

    out = {}
    for x in FRONT_AXES:
        try:
            _, front = pareto(con, ["perplexity", x], sweep)
        except MeasureError:          # a store that never measured the axis has no front on it
            front = None
        out[x] = frozenset(front.column("cell_id").to_pylist()) if front is not None else frozenset()
    return out


def gather(results: str | Path, sweep: str | None = None, gates: Gates | None = None) -> PublishedResults:
    """Read everything a published page shows from the store, once. Raises GatesError for gates the
    store cannot judge (a gate on a metric it never measured)."""
    from analysis.leaderboard import leaderboard_markdown

    con = connect(results)
    where, params = ("sweep = ?", [sweep]) if sweep else ("true", [])     # every query's filter
    board = con.sql(f"SELECT * FROM leaderboard WHERE {where}", params=params).to_arrow_table()
    rows = tuple(board.to_pylist())
    serving, percentile = _serving(con, where, params)
    return PublishedResults(
        source=str(results), sweep=sweep,
        generated_at=_day_and_time(datetime.now(UTC)),
        markdown=leaderboard_markdown(results, sweep), columns=tuple(board.column_names), rows=rows,
        serving=serving, serving_percentile=percentile,
        mbu=_mbu(con, where, params),
        skipped=_rows(con, f"SELECT * FROM skipped WHERE {where} ORDER BY model, label", params),
        failed=_failed(con, where, params), provenance=_provenance(con, where, params),
        fronts=_fronts(con, sweep), generative=generative_table(con, where, params, [r["cell_id"] for r in rows]),
        gates=gates,
        recommendations=tuple(recommend(con, gates, sweep)) if gates is not None else (),
        caveats=caveats(con))
