"""Recommend: the configuration that passes a team's quality and latency gates and is best on
the chosen objective, the runner-up, and for every rejected cell each gate it failed and by how much.

Gates are data (flags or a YAML file), each naming the measure it bounds; a gate whose measure
the sweep never measured is an error, and a cell missing a gated figure fails that gate: nothing
passes unmeasured. Nor on a figure under a caveat (analysis.caveats): a cell whose gated or
objective figure carries one is rejected with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analysis.caveats import caveats, on_measure
from analysis.markdown import fmt_bytes
from analysis.measures import RELATIVE, Measure, MeasureError, cell_table, resolve


@dataclass(frozen=True)
class GateInfo:
    measure: str
    bound: Literal["max", "min"]
    title: str
    unit: str = ""
    scale: float = 1.0            # the flag's unit to the measure's (GiB -> bytes)
    served: bool = False          # measured per load level: needs a concurrency


# one row per gate: the flag (--max-ppl-delta-pct), the key in a gates file, and what it bounds
GATES: dict[str, GateInfo] = {
    "max_ppl_delta_pct": GateInfo("perplexity_delta_pct", "max", "perplexity Δ", " %"),
    "max_kl": GateInfo("kl_divergence_mean", "max", "KL", " nats"),
    "min_recovery_pct": GateInfo("accuracy_recovery_pct", "min", "accuracy recovery", " %"),
    "sla_ttft_p95_ms": GateInfo("serving_ttft_ms_p95", "max", "TTFT p95", " ms", served=True),
    "sla_tpot_p95_ms": GateInfo("serving_tpot_ms_p95", "max", "TPOT p95", " ms", served=True),
    "memory_gib": GateInfo("weight_bytes", "max", "weights", " GiB", scale=2**30),
}
OBJECTIVES = {"decode": "decode_tokens_per_s", "throughput": "throughput_output_tokens_per_s",
              "goodput": "serving_goodput", "memory": "weight_bytes"}


class Gates(BaseModel):
    """A team's gates and objective: from flags, or a YAML file with the same names."""
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    max_ppl_delta_pct: float | None = None
    max_kl: float | None = Field(None, ge=0)
    min_recovery_pct: float | None = None
    sla_ttft_p95_ms: float | None = Field(None, gt=0)
    sla_tpot_p95_ms: float | None = Field(None, gt=0)
    memory_gib: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    optimize: Literal["decode", "throughput", "goodput", "memory"] = "decode"

    def limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in GATES if getattr(self, k) is not None}


class GatesError(ValueError):
    """Gates that cannot be read, or that name something the store never measured."""


def load_gates(path: Path | None, **flags) -> Gates:
    """Gates from a YAML file (if given), overridden by the flags that are set."""
    import yaml
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise GatesError(f"{path}: cannot read the gates file: {type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(data, dict):
            raise GatesError(f"{path}: a gates file is a mapping of {', '.join(Gates.model_fields)}")
        data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
        data = {k: float(v) if k in GATES and isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in data.items()}
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Gates(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(map(str, err["loc"])) or "gates"
        allowed = f"; allowed: {', '.join(Gates.model_fields)}" if err["type"] == "extra_forbidden" else ""
        raise GatesError(f"{field}: {err['msg']}{allowed}") from None


@dataclass(frozen=True)
class Verdict:
    """One cell under the gates."""
    cell_id: str
    sweep: str
    model: str
    label: str
    engine: str
    kv_cache_dtype: str
    objective: float | None
    values: dict[str, float | None]      # gate name -> the cell's figure (in the gate's unit)
    failures: tuple[str, ...]            # one line per failed gate: "perplexity +87.8 % > 5 %"

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Recommendation:
    """The decision for one model of one sweep."""
    sweep: str
    model: str
    objective: Measure
    gates: Gates
    concurrency: int | None
    passed: tuple[Verdict, ...]          # best first
    rejected: tuple[Verdict, ...]

    @property
    def chosen(self) -> Verdict | None:
        return self.passed[0] if self.passed else None

    @property
    def runner_up(self) -> Verdict | None:
        return self.passed[1] if len(self.passed) > 1 else None


def _fmt(value: float, info: GateInfo, other: float | None = None) -> str:
    """The figure in the gate's unit, with as many digits as it takes to differ from `other`."""
    signed = info.measure.endswith("_delta_pct")
    for digits in range(1 if signed else 3, 9):
        text = f"{value / info.scale:+.{digits}f}" if signed else f"{value / info.scale:.{digits}g}"
        if other is None or text != (f"{other / info.scale:+.{digits}f}" if signed else
                                     f"{other / info.scale:.{digits}g}"):
            break
    return text + info.unit


def _judge(info: GateInfo, value: float | None, limit: float, has_baseline: bool) -> str | None:
    """The failure line of one gate, or None when the cell passes it."""
    bound = limit * info.scale
    if value is None:
        why = "not measured for this cell" if has_baseline or info.measure not in RELATIVE else \
            "unknown: no baseline cell of this model on this engine to compare with"
        return f"{info.title} {why} (gate {'≤' if info.bound == 'max' else '≥'} {_fmt(bound, info)})"
    if info.bound == "max" and value > bound:
        return f"{info.title} {_fmt(value, info, bound)} > {_fmt(bound, info, value)}"
    if info.bound == "min" and value < bound:
        return f"{info.title} {_fmt(value, info, bound)} < {_fmt(bound, info, value)}"
    return None


def recommend(con: duckdb.DuckDBPyConnection, gates: Gates, sweep: str | None = None,
              where: str | None = None) -> list[Recommendation]:
    """One recommendation per (sweep, model): the passing cells best first, and the rejected ones."""
    limits = gates.limits()
    served = any(GATES[g].served for g in limits) or gates.optimize == "goodput"
    if served and gates.concurrency is None:
        from analysis.measures import concurrency_levels
        levels = concurrency_levels(con, sweep)
        if len(levels) != 1:
            raise GatesError(f"served gates need --concurrency: the sweep was served at "
                             f"{', '.join(map(str, levels)) or 'no concurrency (no serving measured)'}")
    try:
        measures = {g: resolve(con, GATES[g].measure, gates.concurrency if GATES[g].served else None, sweep)
                    for g in limits}
        objective = resolve(con, OBJECTIVES[gates.optimize], gates.concurrency, sweep)
    except MeasureError as e:
        raise GatesError(f"cannot apply the gates: {e}") from None
    rows = cell_table(con, [*measures.values(), objective], sweep, where).to_pylist()
    reasons = {c.caveat_id: c.reason for c in caveats(con)}
    doubted = [(GATES[g].title, on_measure(con, m, sweep)) for g, m in measures.items()]
    doubted.append((objective.name, on_measure(con, objective, sweep)))
    sign = 1 if objective.direction == "lower" else -1
    groups: dict[tuple[str, str], list[Verdict]] = {}
    for r in rows:
        values = {g: r[m.column] for g, m in measures.items()}
        failures = tuple(f for g, limit in limits.items()
                         if (f := _judge(GATES[g], values[g], limit, r["baseline_cell_id"] is not None)))
        under: dict[str, list[str]] = {}      # caveat -> the figures here it covers
        for title, on in doubted:
            for i in on.get((r["sweep"], r["cell_id"]), ()):
                under.setdefault(i, []).append(title)
        failures += tuple(f"{' and '.join(titles)} under a caveat: {reasons[i]}" for i, titles in under.items())
        groups.setdefault((r["sweep"], r["model"]), []).append(Verdict(
            r["cell_id"], r["sweep"], r["model"], r["label"], r["engine"], r["kv_cache_dtype"],
            r[objective.column], values, failures))
    level = next((m.concurrency for m in [*measures.values(), objective] if m.concurrency is not None), None)
    out = []
    for (sw, model), verdicts in sorted(groups.items()):
        # best objective first; a cell without the objective's figure cannot be chosen over one with it
        verdicts.sort(key=lambda v: (v.objective is None, sign * (v.objective or 0.0), v.label))
        out.append(Recommendation(
            sw, model, objective, gates, level,
            tuple(v for v in verdicts if v.passed and v.objective is not None),
            tuple(v for v in verdicts if not (v.passed and v.objective is not None))))
    return out


def render(recs: list[Recommendation]) -> str:
    """The decision as text: chosen, runner-up, then each rejected cell with the gates it failed."""
    lines = []
    for rec in recs:
        gates = ", ".join(f"{GATES[g].title} {'≤' if GATES[g].bound == 'max' else '≥'} "
                          f"{v:g}{GATES[g].unit}" for g, v in rec.gates.limits().items()) or "no gates"
        at = f" at concurrency {rec.concurrency}" if rec.concurrency is not None else ""
        lines.append(f"{rec.model} ({rec.sweep}): gates {gates}{at}; optimizing {rec.objective.describe()}")
        obj = rec.objective

        def show(v: Verdict) -> str:
            figure = "–" if v.objective is None else fmt_bytes(v.objective) if obj.unit == "bytes" else \
                f"{v.objective:.4g} {obj.unit}"
            return f"{v.label} [{v.engine}, kv {v.kv_cache_dtype}]: {obj.name} {figure}"
        lines.append(f"  chosen:    {show(rec.chosen)}" if rec.chosen else "  chosen:    none passes every gate")
        if rec.runner_up:
            lines.append(f"  runner-up: {show(rec.runner_up)}")
        for v in rec.passed[2:]:
            lines.append(f"  passed:    {show(v)}")
        for v in rec.rejected:
            why = "; ".join(v.failures) or f"{obj.name} not measured for this cell"
            lines.append(f"  rejected:  {v.label} [{v.engine}, kv {v.kv_cache_dtype}]: {why}")
    return "\n".join(lines)
