"""Quantization backends: a registry of small modules, each imported only when used.

A backend does one of three things: writes a quantized checkpoint (`quantize`, run once per
artifact key), quantizes while the engine loads the model (`load_kwargs`, e.g. bitsandbytes),
or points at weights someone else quantized (`resolve`, the `prequantized` backend); a GPTQ
backend also uses `load_kwargs` to pick the kernel its checkpoint is loaded with.
Each says which libraries it needs (`requires`, plus an optional deeper `check`), so the driver
skips the cells of a backend that cannot run here with the reason, before any work starts.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from matrix import Cell
# name -> the module that defines BACKEND (and the methods it implements): one row per backend there
from matrix.backends import BACKENDS


@dataclass(frozen=True)
class Calibration:
    """The calibration token ids a quantizer gets, and what they are (recorded in the manifest)."""
    samples: tuple[tuple[int, ...], ...]      # each exactly `seq_len` tokens
    record: dict[str, Any]                    # corpus, source, samples/seq_len requested and used, tokens


@dataclass(frozen=True)
class Backend:
    name: str
    format: str                                   # what the weights are stored or loaded as
    libraries: tuple[str, ...]                    # distributions whose versions the results record
    # writes an HF folder to `out` from the base model folder; returns facts for the manifest
    quantize: Callable[[Cell, str, Path, Calibration | None], dict[str, Any]] | None = None
    # extra `from_pretrained` kwargs: a load-time method (a BitsAndBytesConfig) or a kernel choice
    load_kwargs: Callable[[Cell, Any], dict[str, Any]] = field(default=lambda cell, dtype: {})
    # weights made elsewhere (a published checkpoint): cell -> manifest with `path` and `format`
    resolve: Callable[[Cell], dict[str, Any]] | None = None
    requires: tuple[str, ...] = ()                # import names; a missing one skips the backend's cells
    check: Callable[[], str | None] | None = None  # deeper check (e.g. it installs but fails to import)
    hint: str = ""                                # appended to a skip reason: what to use instead

    @property
    def writes_artifact(self) -> bool:
        return self.quantize is not None


def backend_names() -> list[str]:
    return list(BACKENDS)


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """Why cells of backend `name` cannot run in this environment, or None when they can.

    Cheap where it can be: `find_spec` for each required library; a backend's own `check`
    (a guarded real import) runs only when its library is installed."""
    if name not in BACKENDS:
        return f"backend {name!r} is not implemented in this version; available: {', '.join(sorted(BACKENDS))}"
    backend = get_backend(name)
    missing = [m for m in backend.requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"backend {name!r} needs {', '.join(missing)}, which is not installed here" + \
            (f"; {backend.hint}" if backend.hint else "")
    return backend.check() if backend.check else None


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise KeyError(f"Unknown quantization backend {name!r}. Available: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name].code).BACKEND


def guarded_import(module: str, why_dead: str) -> str | None:
    """Import `module`; on failure the reason names the module, the error and `why_dead`."""
    try:
        importlib.import_module(module)
    except Exception as err:   # a broken install fails in many ways: each is a reason to skip, not a crash
        return f"{module} is installed but fails to import ({type(err).__name__}: {str(err)[:160]}); {why_dead}"
    return None
