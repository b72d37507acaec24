"""Cells and their stable identities.

`cell_id` hashes every dimension of a cell; `artifact_key` hashes only what changes the
quantized weights, so cells that differ in KV dtype, engine, evaluation or a load-time option
(a GPTQ kernel) share one artifact; `engine_key` adds back what a loaded engine depends on.
Both hash canonical JSON (sorted keys, spec defaults filled in, method options equal to their
backend default left out, evaluation fields added later left out at the value that measures as before:
matrix.spec.without_absent), so key order in the YAML and defaults written or left out give the same ids.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property, lru_cache
from typing import Any

from matrix.adapters import ADAPTER_MODES
from matrix.methods import artifact_options, canonical_options, load_options

_ADAPTER_FIELDS = ("adapter", "adapter_version", "adapter_mode")


def _digest(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


@lru_cache(maxsize=64)
def _parsed(evaluation: str) -> Any:
    return json.loads(evaluation)


@dataclass(frozen=True)
class Cell:
    model: str
    revision: str | None
    method: str
    backend: str
    bits: int
    group_size: int | None
    options: tuple[tuple[str, Any], ...]      # sorted (name, value) pairs
    kv_cache_dtype: str
    engine: str
    calibration: tuple[tuple[str, Any], ...] | None   # None where the method takes none
    evaluation: str                           # canonical JSON of the evaluation settings
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False
    gguf_file: str | None = None              # a .gguf inside `model` (a .gguf `model` is itself the file)
    # a LoRA adapter of `model` (absolute folder or hub id), its content hash or hub revision, and
    # matrix.adapters' mode; all None without an adapter, and then left out of every id (old ids hold)
    adapter: str | None = None
    adapter_version: str | None = None
    adapter_mode: str | None = None

    def dims(self) -> dict[str, Any]:
        # fields are immutable values, so a shallow dict is enough (dataclasses.asdict deep-copies, slowly)
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["options"] = dict(self.options)
        d["calibration"] = dict(self.calibration) if self.calibration is not None else None
        d["evaluation"] = json.loads(self.evaluation)
        return d

    def _identity(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in _ADAPTER_FIELDS or self.adapter is not None}
        d["options"] = dict(canonical_options(self.method, self.options))
        d["calibration"] = dict(self.calibration) if self.calibration is not None else None
        d["evaluation"] = _parsed(self.evaluation)    # shared, read-only: only hashed
        return d

    # cached: a frozen Cell's ids never change, and expansion and plans ask for them often
    @cached_property
    def cell_id(self) -> str:
        return _digest(self._identity())

    @cached_property
    def artifact_key(self) -> str:
        d = self._identity()
        key = {k: d[k] for k in ("model", "revision", "method", "backend", "bits", "group_size", "calibration")}
        key["options"] = dict(artifact_options(self.method, self.options))
        if self.gguf_file is not None:   # only when set: keeps the keys of existing cached artifacts
            key["gguf_file"] = self.gguf_file
        if self.merges_adapter:         # unmerged: the weights are the base's, quantized once for both
            key.update({k: d[k] for k in _ADAPTER_FIELDS})
        return _digest(key)

    @cached_property
    def engine_key(self) -> tuple:
        """What a loaded engine depends on: the weights, how they load (a kernel) and the engine's own
        settings. A worker keeps its engine for the next cell with an equal key (scheduler and worker)."""
        return (self.artifact_key, load_options(self.method, self.options), self.engine, self.kv_cache_dtype,
                self.tensor_parallel_size, self.trust_remote_code) + \
            ((self.adapter, self.adapter_version, self.adapter_mode) if self.adapter is not None else ())

    @property
    def merges_adapter(self) -> bool:
        """The cell's weights start from the base with its adapter merged in (matrix.adapters)."""
        return self.adapter is not None and ADAPTER_MODES[self.adapter_mode].merged

    @property
    def model_name(self) -> str:
        """The model the cell measures: the base id, or base+adapter (what a baseline is paired on)."""
        if self.adapter is None:
            return self.model
        return f"{self.model}+{self.adapter}" + (f"@{self.adapter_version}" if self.adapter_version else "")

    @property
    def is_baseline(self) -> bool:
        return self.method == "none"

    @property
    def label(self) -> str:
        """A short human name: method, bits, group, options, KV, engine."""
        parts = [self.method if self.method != "none" else "bf16"]
        if self.method != "none":
            parts.append(f"w{self.bits}")
        if self.group_size is not None:
            parts.append("per-channel" if self.group_size == -1 else f"g{self.group_size}")
        parts += [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in self.options]
        if self.kv_cache_dtype != "auto":
            parts.append(f"kv={self.kv_cache_dtype}")
        if self.adapter is not None and not self.merges_adapter:
            parts.append(f"adapter {self.adapter_mode}")
        return " ".join(parts)


@dataclass(frozen=True)
class SkippedCell:
    cell: Cell
    reason: str
    rule: str = field(default="")
