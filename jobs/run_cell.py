"""One cell, start to finish on a worker: load the (cached) artifact, evaluate, return Arrow.

`quantize_step` builds a cell's artifact (the scheduler runs it once per artifact key);
`run_cell` loads the engine and runs the evaluators named in the cell's evaluation settings.
A long-lived worker passes the same `state` dict to every call, so consecutive cells that
load the same weights the same way reuse the loaded engine (see `_engine_for`).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
from typing import Any

import pyarrow as pa

from jobs.artifacts import ensure_artifact
from jobs.engines import engine_reusable, load_engine
from jobs.evaluate import Metric, run_evaluator
from jobs.quantize import get_backend
from jobs.stages import report
from jobs.versions import library_versions
from matrix import Cell
from matrix.results import METRIC_SCHEMA, TABLE_SCHEMAS, CellOutcome, Manifest, RunFacts  # noqa: F401  (CellOutcome: here since before)


def quantize_step(cell: Cell) -> Manifest:
    _set_threads()
    return ensure_artifact(cell)


def _set_threads() -> None:
    import torch
    # Ray sets OMP_NUM_THREADS to the task's num_cpus; torch must follow it.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))


def _device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    # the CPU model and the ISA torch dispatches to: kernels (bitsandbytes int8, GEMM blocking) and so
    # the last digits of a figure follow them, not the thread count
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    return f"cpu ({model}, {torch.backends.cpu.get_cpu_capability()})"


# served latency last: its load must not warm or crowd what the quality and speed evaluators measure
_EVALUATION_ORDER = ("perplexity", "kl_divergence", "layer_sensitivity", "lm_eval", "gsm8k", "json_output",
                     "long_context", "prompts", "speed", "serving")


def _engine_for(cell: Cell, manifest: Manifest, state: dict[str, Any]):
    """The cell's engine, reused from `state` when the previous cell loaded the same one.

    Engines that cannot be torn down cleanly in-process (see `engine_reusable`, e.g. vLLM)
    are never kept: the scheduler gives each such cell a fresh actor."""
    key = cell.engine_key
    held = state.get("engine")
    if held is not None and held[0] == key:
        return held[1], True
    state.pop("engine", None)     # drop the old one before loading the next
    if held is not None:
        held[1].close()
    engine = load_engine(cell, manifest)
    if engine_reusable(cell.engine):
        state["engine"] = (key, engine)
    return engine, False


def run_cell(cell: Cell, manifest: Manifest | None = None, state: dict[str, Any] | None = None) -> CellOutcome:
    from jobs.process_memory import reset_peaks

    _set_threads()
    reset_peaks()
    start = time.perf_counter()
    manifest = manifest or ensure_artifact(cell)
    report("loading", "quantizing at load" if manifest.quantize_seconds is None and not cell.is_baseline
           and cell.method != "prequantized" else "")
    engine, reused = _engine_for(cell, manifest, state if state is not None else {})
    metrics: list[Metric] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    # load-time methods quantize while loading: that load is their quantization time
    q_seconds = manifest.quantize_seconds if manifest.quantize_seconds is not None else engine.load_seconds
    if not cell.is_baseline and cell.method != "prequantized":    # published weights: nothing quantized here
        metrics.append(Metric.of("quantize_seconds", q_seconds, "s", "lower",
                                 stage="artifact" if manifest.quantize_seconds is not None else "load-time"))
    evaluations = sorted(((n, s) for n, s in json.loads(cell.evaluation).items() if s is not None),
                         key=lambda item: _EVALUATION_ORDER.index(item[0]) if item[0] in _EVALUATION_ORDER else 0)
    notes = list(engine.notes) + (["engine reused from the previous cell on this worker"] if reused else [])
    # where the cell's time went; every evaluator shares the one engine (a vLLM cell: one `vllm serve`)
    timings = ["engine reused" if reused else f"engine load {engine.load_seconds:.1f}"]
    try:
        for name, settings in evaluations + [("memory", {})]:
            t = time.perf_counter()
            report(name)
            result = run_evaluator(name, engine, settings)
            timings.append(f"{name} {time.perf_counter() - t:.1f}")
            metrics += result.metrics
            notes += result.notes
            for table, new_rows in result.tables.items():
                rows.setdefault(table, []).extend(new_rows)
    finally:
        if not engine_reusable(cell.engine):
            engine.close()      # e.g. stop the cell's server, so the next cell finds the GPU free
    notes.append(f"engine starts: {0 if reused else engine.info.engine_starts}")
    notes.append("seconds: " + ", ".join(timings))
    table = pa.Table.from_pylist([{"metric": m.name, "value": m.value, "unit": m.unit, "direction": m.direction,
                                   "settings": m.settings} for m in metrics], schema=METRIC_SCHEMA)
    import torch
    facts = RunFacts(
        host=socket.gethostname(), device=_device_name(), compute_dtype=engine.compute_dtype,
        threads=torch.get_num_threads(), format=manifest.format,
        library_versions=json.dumps(library_versions(get_backend(cell.backend).libraries + engine.libraries)),
        notes="; ".join(notes), seconds=time.perf_counter() - start,
    )
    tables = {name: pa.Table.from_pylist(r, schema=TABLE_SCHEMAS[name]) for name, r in rows.items() if r}
    return CellOutcome(table, facts, tables)
