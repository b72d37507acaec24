"""One cell, start to finish on a worker: load the (cached) artifact, evaluate, return Arrow.

`quantize_step` builds a cell's artifact (the scheduler runs it once per artifact key);
`run_cell` loads the engine and runs the evaluators named in the cell's evaluation settings.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from jobs.artifacts import ensure_artifact
from jobs.engines import load_engine
from jobs.evaluate import Metric, run_evaluator
from jobs.quantize import get_backend
from jobs.versions import library_versions
from matrix import Cell

METRIC_SCHEMA = pa.schema([
    ("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("direction", pa.string()), ("settings", pa.string()),
])


@dataclass(frozen=True)
class CellOutcome:
    metrics: pa.Table               # METRIC_SCHEMA
    facts: dict[str, Any]           # host, device, versions, timings, notes


def quantize_step(cell: Cell) -> dict[str, Any]:
    _set_threads()
    return ensure_artifact(cell)


def _set_threads() -> None:
    import torch
    # Ray sets OMP_NUM_THREADS to the task's num_cpus; torch must follow it.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))


def _device_name() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"


def run_cell(cell: Cell, manifest: dict[str, Any] | None = None) -> CellOutcome:
    _set_threads()
    start = time.perf_counter()
    manifest = manifest or ensure_artifact(cell)
    engine = load_engine(cell, manifest)
    from jobs.evaluate.memory import weight_bytes
    at_load = weight_bytes(engine.model)
    metrics: list[Metric] = []
    # load-time methods quantize while loading: that load is their quantization time
    q_seconds = manifest["quantize_seconds"] if manifest["quantize_seconds"] is not None else engine.load_seconds
    if not cell.is_baseline:
        metrics.append(Metric.of("quantize_seconds", q_seconds, "s", "lower",
                                 stage="artifact" if manifest["quantize_seconds"] is not None else "load-time"))
    for name, settings in json.loads(cell.evaluation).items():
        if settings is not None:
            metrics += run_evaluator(name, engine, settings)
    metrics += run_evaluator("memory", engine, {"weight_bytes_at_load": at_load})
    notes = list(engine.notes)
    if weight_bytes(engine.model) > at_load * 1.2:
        notes.append("the engine decompressed the quantized weights at first forward (see weights_in_use_bytes)")
    table = pa.Table.from_pylist([{"metric": m.name, "value": m.value, "unit": m.unit, "direction": m.direction,
                                   "settings": m.settings} for m in metrics], schema=METRIC_SCHEMA)
    import torch
    facts = {
        "host": socket.gethostname(), "device": _device_name(), "compute_dtype": engine.compute_dtype,
        "threads": torch.get_num_threads(), "format": manifest["format"],
        "library_versions": json.dumps(library_versions(get_backend(cell.backend).libraries)),
        "notes": "; ".join(notes), "seconds": time.perf_counter() - start,
    }
    return CellOutcome(table, facts)
