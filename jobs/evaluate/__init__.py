"""Evaluators: one measurement per module, each returning typed metric records.

The registry maps a name in the spec's `evaluation` section to a module with
`evaluate(engine, settings) -> list[Metric] | Evaluation`; `memory` runs for every cell, last.
An `Evaluation` also carries row tables where one number per metric is not enough
(per-request latency samples, the generations of a prompt set): see `TABLE_SCHEMAS`.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from dataclasses import field
from typing import Any, Literal

import pyarrow as pa

_MODULES = {
    "perplexity": "jobs.evaluate.perplexity",
    "speed": "jobs.evaluate.speed",
    "memory": "jobs.evaluate.memory",
    "kl_divergence": "jobs.evaluate.kl_divergence",
    "lm_eval": "jobs.evaluate.lm_eval_tasks",
    "serving": "jobs.evaluate.serving",
    "prompts": "jobs.evaluate.prompts",
}


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str
    direction: Literal["lower", "higher", "none"]   # which way is better
    settings: str = "{}"                             # canonical JSON: what makes two values comparable

    @staticmethod
    def of(name: str, value: float, unit: str, direction: str, **settings: Any) -> "Metric":
        return Metric(name, float(value), unit, direction, json.dumps(settings, sort_keys=True))


# Row tables an evaluator may return beside its metrics (the store adds cell_id and attempt).
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    # one row per request of a served-latency run
    "samples": pa.schema([
        ("concurrency", pa.int32()), ("request_rate", pa.float64()), ("request", pa.int32()),
        ("ok", pa.bool_()), ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()),
        ("ttft_ms", pa.float64()), ("tpot_ms", pa.float64()), ("itl_ms_mean", pa.float64()),
        ("e2e_ms", pa.float64()), ("error", pa.string()),
    ]),
    # one row per prompt of the user's prompt set
    "generations": pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("output", pa.string()),
        ("output_tokens", pa.int32()), ("seconds", pa.float64()), ("settings", pa.string()),
    ]),
}


@dataclass(frozen=True)
class Evaluation:
    metrics: list[Metric]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # name in TABLE_SCHEMAS -> rows
    notes: tuple[str, ...] = ()     # what the evaluator could not do on this engine, and why


def run_evaluator(name: str, engine, settings: dict[str, Any] | None) -> Evaluation:
    if name not in _MODULES:
        raise KeyError(f"Unknown evaluator {name!r}. Available: {', '.join(_MODULES)}")
    out = importlib.import_module(_MODULES[name]).evaluate(engine, settings or {})
    return out if isinstance(out, Evaluation) else Evaluation(list(out))
