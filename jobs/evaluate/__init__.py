"""Evaluators: one measurement per module, each returning typed metric records.

The registry maps a name in the spec's `evaluation` section to a module with
`evaluate(engine, settings) -> list[Metric] | Evaluation`; `memory` runs for every cell, last.
An `Evaluation` also carries row tables where one number per metric is not enough
(per-request latency samples, the generations of a prompt set): see `TABLE_SCHEMAS`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from matrix.results import TABLE_SCHEMAS, Metric  # noqa: F401  (the results contract, re-exported)
from matrix.spec import evaluator_settings

_MODULES = {
    "perplexity": "jobs.evaluate.perplexity",
    "speed": "jobs.evaluate.speed",
    "memory": "jobs.evaluate.memory",
    "kl_divergence": "jobs.evaluate.kl_divergence",
    "lm_eval": "jobs.evaluate.lm_eval_tasks",
    "serving": "jobs.evaluate.serving",
    "prompts": "jobs.evaluate.prompts",
    "gsm8k": "jobs.evaluate.gsm8k",
    "json_output": "jobs.evaluate.json_output",
    "long_context": "jobs.evaluate.long_context",
    "layer_sensitivity": "jobs.evaluate.layer_sensitivity",
}


@dataclass(frozen=True)
class Evaluation:
    metrics: list[Metric]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # name in TABLE_SCHEMAS -> rows
    notes: tuple[str, ...] = ()     # what the evaluator could not do on this engine, and why


def run_evaluator(name: str, engine, settings: dict[str, Any] | None) -> Evaluation:
    if name not in _MODULES:
        raise KeyError(f"Unknown evaluator {name!r}. Available: {', '.join(_MODULES)}")
    settings = evaluator_settings(name, settings or {})      # the spec's defaults (or absent_means), filled in once
    out = importlib.import_module(_MODULES[name]).evaluate(engine, settings)
    return out if isinstance(out, Evaluation) else Evaluation(list(out))
