"""Compare two runs: cells matched by identity (the cell id hashes every dimension), each metric
measured under the same settings on both sides set against each other, and regressions flagged
where a figure moved the wrong way (its declared direction) by more than a threshold.

A side is a results store, or one sweep of it (`results#sweep`).
"""
from __future__ import annotations

from dataclasses import dataclass

from analysis.catalog import check_sweep, connect
from analysis.leaderboard import calib_text
from analysis.markdown import table


@dataclass(frozen=True)
class Side:
    results: str
    sweep: str | None

    @staticmethod
    def parse(text: str) -> "Side":
        results, _, sweep = text.rpartition("#") if "#" in text else (text, "", "")
        return Side(results, sweep or None)

    def __str__(self) -> str:
        return self.results + (f"#{self.sweep}" if self.sweep else "")


@dataclass(frozen=True)
class Delta:
    model: str
    label: str
    engine: str
    metric: str
    unit: str
    direction: str
    before: float
    after: float
    cell_id: str

    @property
    def change_pct(self) -> float | None:
        return None if self.before == 0 else 100 * (self.after - self.before) / abs(self.before)

    def regressed(self, threshold_pct: float) -> bool:
        """Worse in the metric's own direction by more than the threshold."""
        change = self.change_pct
        if change is None or self.direction not in ("lower", "higher"):
            return False
        return change > threshold_pct if self.direction == "lower" else change < -threshold_pct


@dataclass(frozen=True)
class Comparison:
    before: Side
    after: Side
    threshold_pct: float
    deltas: tuple[Delta, ...]
    only_before: tuple[str, ...]       # "model label" of cells with no successful result after: failed or gone
    only_after: tuple[str, ...]

    @property
    def regressions(self) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.regressed(self.threshold_pct))

    def failed(self, allow_missing: bool = False) -> bool:
        """A regression, or (unless allowed) a cell measured before that has no successful result after."""
        return bool(self.regressions) or (bool(self.only_before) and not allow_missing)

    @property
    def matched_cells(self) -> int:
        return len({d.cell_id for d in self.deltas})


def _metrics(side: Side, by_sweep: bool) -> dict[tuple, dict]:
    """Rows keyed by (sweep,) cell id, metric, settings: a cell id is the same in every sweep, so a
    whole store with several sweeps is matched sweep by sweep, never one sweep's row over another's."""
    con = connect(side.results)
    check_sweep(con, side.sweep)
    where, params = ("WHERE sweep = ?", [side.sweep]) if side.sweep else ("", [])
    rows = con.sql(f"SELECT sweep, cell_id, model, label, engine, metric, value, unit, direction, settings FROM results "
                   f"{where}", params=params).to_arrow_table().to_pylist()
    sweeps = sorted({r["sweep"] for r in rows})
    if not by_sweep and len(sweeps) > 1:
        raise ValueError(f"{side.results} holds sweeps {', '.join(map(repr, sweeps))}: name one as "
                         f"{side.results}#SWEEP to compare it with one sweep")
    # cells that differ only in calibration share a label: such labels name the calibration too
    calib = {(c["sweep"], c["cell_id"]): calib_text(c["calibration"]) for c in con.sql(
        f"SELECT DISTINCT ON (sweep, cell_id) sweep, cell_id, calibration FROM cells {where}",
        params=params).to_arrow_table().to_pylist()}
    seen: dict[tuple, set] = {}
    for r in rows:
        seen.setdefault((r["sweep"], r["model"], r["label"]), set()).add(calib.get((r["sweep"], r["cell_id"])))
    rows = [{**r, "label": r["label"] + f" calib={calib[r['sweep'], r['cell_id']]}"}
            if len(seen[r["sweep"], r["model"], r["label"]]) > 1 and calib.get((r["sweep"], r["cell_id"])) else r
            for r in rows]
    return {((r["sweep"],) if by_sweep else ()) + (r["cell_id"], r["metric"], r["settings"]): r for r in rows}


def compare(before: Side, after: Side, threshold_pct: float = 5.0, metrics: tuple[str, ...] = ()) -> Comparison:
    by_sweep = before.sweep is None and after.sweep is None     # two whole stores: sweep matched to sweep
    a, b = _metrics(before, by_sweep), _metrics(after, by_sweep)
    keep = (lambda m: m in metrics) if metrics else (lambda m: True)
    deltas = tuple(sorted(
        (Delta(ra["model"], ra["label"], ra["engine"], ra["metric"], ra["unit"], ra["direction"],
               ra["value"], b[k]["value"], ra["cell_id"])
         for k, ra in a.items() if k in b and keep(ra["metric"])),
        key=lambda d: (d.model, d.label, d.engine, d.metric)))
    cells_a = {k[:-2]: f"{r['model']} {r['label']}" for k, r in a.items()}     # (sweep,) cell id
    cells_b = {k[:-2]: f"{r['model']} {r['label']}" for k, r in b.items()}
    return Comparison(before, after, threshold_pct, deltas,
                      tuple(sorted(lbl for c, lbl in cells_a.items() if c not in cells_b)),
                      tuple(sorted(lbl for c, lbl in cells_b.items() if c not in cells_a)))


def render(cmp: Comparison, all_rows: bool = False, allow_missing: bool = False) -> str:
    """A Markdown table of the regressions (or of every delta), then the summary line."""
    shown = cmp.deltas if all_rows else cmp.regressions
    lines = [f"Comparing {cmp.after} against {cmp.before}: {cmp.matched_cells} matched cells, "
             f"{len(cmp.deltas)} metrics under the same settings; regression = worse by more than "
             f"{cmp.threshold_pct:g} % in the metric's own direction."]
    if cmp.only_before:
        counted = "allowed (--allow-missing)" if allow_missing else "counted as regressions"
        lines.append(f"No successful result in {cmp.after} (failed or missing), {counted}: "
                     f"{', '.join(cmp.only_before)}.")
    if cmp.only_after:
        lines.append(f"New in {cmp.after}: {', '.join(cmp.only_after)}.")
    if shown:
        rows = [[d.model, d.label, d.engine, f"{d.metric} ({d.unit})", f"{d.before:.6g}", f"{d.after:.6g}",
                 "–" if d.change_pct is None else f"{d.change_pct:+.2f} %",
                 "REGRESSION" if d.regressed(cmp.threshold_pct) else ""] for d in shown]
        lines += ["", *table(["model", "cell", "engine", "metric", "before", "after", "change", "flag"], rows,
                             left=("model", "cell", "engine", "metric", "flag"))]
    lost = 0 if allow_missing else len(cmp.only_before)
    lines += ["", f"{len(cmp.regressions)} regression(s), {lost} lost cell(s)" if cmp.failed(allow_missing)
              else "no regression"]
    return "\n".join(lines)
