"""Serving engines: a registry of modules, each exposing `load(cell, manifest) -> Engine`."""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from matrix.engines import ENGINES

_MODULES = {"hf": "jobs.engines.hf", "vllm": "jobs.engines.vllm"}     # the code; its capabilities: matrix.engines


def engine_reusable(name: str) -> bool:
    return ENGINES[name].reusable


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
    weight_bytes_at_load: int = 0                  # measured right after load (jobs.evaluate.memory)
    libraries: tuple[str, ...] = ()                # distributions whose versions the results record
    handle: Any = None                             # engine-specific object (e.g. a vllm.LLM)
    info: dict[str, Any] = field(default_factory=dict)   # engine facts for evaluators (e.g. KV capacity)
    on_close: Callable[[], None] | None = None     # stops what the engine started (e.g. a server process)

    def close(self) -> None:
        """Free the engine's memory before the worker loads the next one."""
        import gc
        stop, self.on_close = self.on_close, None
        if stop is not None:
            stop()
        self.model = self.handle = None
        gc.collect()
        with contextlib.suppress(ImportError):
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def load_engine(cell, manifest: dict[str, Any]) -> Engine:
    if cell.engine not in _MODULES:
        raise KeyError(f"Unknown engine {cell.engine!r}. Available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[cell.engine]).load(cell, manifest)
