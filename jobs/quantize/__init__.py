"""Quantization backends: a registry of small modules, each imported only when used.

A backend either writes a quantized checkpoint (`quantize`, run once per artifact key) or
quantizes while the engine loads the model (`load_kwargs`, e.g. bitsandbytes).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from matrix import Cell

# name -> module that defines BACKEND; one source of truth, imported lazily.
_MODULES = {
    "none": "jobs.quantize.baseline",
    "bitsandbytes": "jobs.quantize.bitsandbytes",
    "llmcompressor": "jobs.quantize.llmcompressor",
}


@dataclass(frozen=True)
class Backend:
    name: str
    format: str                                   # what the weights are stored or loaded as
    libraries: tuple[str, ...]                    # distributions whose versions the results record
    # writes an HF folder to `out` from the base model folder; returns facts for the manifest
    quantize: Callable[[Cell, str, Path, list[str]], dict[str, Any]] | None = None
    # extra `from_pretrained` kwargs for load-time methods (e.g. a BitsAndBytesConfig)
    load_kwargs: Callable[[Cell, Any], dict[str, Any]] = field(default=lambda cell, dtype: {})

    @property
    def writes_artifact(self) -> bool:
        return self.quantize is not None


def backend_names() -> list[str]:
    return list(_MODULES)


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise KeyError(f"Unknown quantization backend {name!r}. Available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).BACKEND
