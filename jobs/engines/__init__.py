"""Serving engines: a registry of modules, each exposing `load(cell, manifest) -> Engine`
(the interface in jobs.engines.base)."""
from __future__ import annotations

import importlib
from typing import Any

from jobs.engines.base import Engine, EngineInfo, Generation  # noqa: F401  (the interface, re-exported)
from matrix.engines import ENGINES

_MODULES = {"hf": "jobs.engines.hf", "vllm": "jobs.engines.vllm"}     # the code; its capabilities: matrix.engines


def engine_reusable(name: str) -> bool:
    return ENGINES[name].reusable


def load_engine(cell, manifest: dict[str, Any]) -> Engine:
    if cell.engine not in _MODULES:
        raise KeyError(f"Unknown engine {cell.engine!r}. Available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[cell.engine]).load(cell, manifest)
