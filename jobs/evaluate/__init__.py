"""Evaluators: one measurement per module, each returning typed metric records.

The registry maps a name in the spec's `evaluation` section to a module with
`evaluate(engine, settings) -> list[Metric]`; `memory` runs for every cell, last.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, Literal

_MODULES = {
    "perplexity": "jobs.evaluate.perplexity",
    "speed": "jobs.evaluate.speed",
    "memory": "jobs.evaluate.memory",
    "kl_divergence": "jobs.evaluate.kl_divergence",
    "lm_eval": "jobs.evaluate.lm_eval_tasks",
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


def run_evaluator(name: str, engine, settings: dict[str, Any] | None) -> list[Metric]:
    if name not in _MODULES:
        raise KeyError(f"Unknown evaluator {name!r}. Available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).evaluate(engine, settings or {})
