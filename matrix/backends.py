"""The quantization-backend table: which methods each backend implements, and where its code is.

One row per backend, the single source of the backend names: `MethodInfo.backends` (the spec's
choices, their default) and `jobs.quantize`'s registry both read it. A new backend is a module
defining `BACKEND` (a `jobs.quantize.Backend`) plus a row here. The code is imported only when a
cell of that backend runs, so a row costs nothing at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendInfo:
    name: str
    methods: tuple[str, ...]            # the methods it implements (names in matrix.methods.METHODS)
    module: str = ""                    # the module defining BACKEND; empty: jobs.quantize.<name>

    @property
    def code(self) -> str:
        return self.module or f"jobs.quantize.{self.name}"


# A method's default backend is the first row that names it: append new rows, so no default
# (and no cell id of a spec that leaves `backend` out) changes.
BACKENDS: dict[str, BackendInfo] = {b.name: b for b in (
    BackendInfo("none", ("none",), module="jobs.quantize.baseline"),
    BackendInfo("bitsandbytes", ("nf4", "fp4", "int8")),
    BackendInfo("llmcompressor", ("gptq", "awq", "fp8")),
    BackendInfo("gptqmodel", ("gptq",)),
    BackendInfo("autogptq", ("gptq",)),
    BackendInfo("autoawq", ("awq",)),
    BackendInfo("prequantized", ("prequantized",)),
)}


def backends_of(method: str) -> tuple[str, ...]:
    """The backends implementing `method`, its default first."""
    return tuple(b.name for b in BACKENDS.values() if method in b.methods)
