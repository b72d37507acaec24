"""Serving engines: a registry of modules, each exposing `load(cell, manifest) -> Engine`."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

_MODULES = {"hf": "jobs.engines.hf"}


@dataclass
class Engine:
    """A loaded model ready to evaluate: the model object, its tokenizer, device and dtype."""
    name: str
    model: Any
    tokenizer: Any
    device: str
    compute_dtype: str
    load_seconds: float
    notes: tuple[str, ...] = ()
    # the unquantized model this cell derives from (a local folder or hub id), and whether
    # `model` *is* those weights unquantized: reference-based metrics (KL) need both
    base_path: str | None = None
    base_revision: str | None = None
    is_base: bool = False


def load_engine(cell, manifest: dict[str, Any]) -> Engine:
    if cell.engine not in _MODULES:
        raise KeyError(f"Unknown engine {cell.engine!r}. Available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[cell.engine]).load(cell, manifest)
