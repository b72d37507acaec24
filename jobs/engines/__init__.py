"""Serving engines: one module per row of matrix.engines.ENGINES, each exposing
`load(cell, manifest) -> Engine` (the interface in jobs.engines.base)."""
from __future__ import annotations

import importlib
from typing import Any

from jobs.engines.base import Engine, EngineInfo, Generation  # noqa: F401  (the interface, re-exported)
from matrix.engines import ENGINES


def engine_reusable(name: str) -> bool:
    return ENGINES[name].reusable


def load_engine(cell, manifest: dict[str, Any]) -> Engine:
    if cell.engine not in ENGINES:
        raise KeyError(f"Unknown engine {cell.engine!r}. Available: {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[cell.engine].code).load(cell, manifest)
