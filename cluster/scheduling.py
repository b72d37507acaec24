"""Scheduling decisions, as pure functions: what a cell costs, which cell an idle worker takes next.

No Ray here: the driver (`cluster.driver`) applies these decisions; tests and the scheduler
benchmark check them directly. Costs are relative work units, used only to order work.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

from matrix import Cell
from matrix.spec import calibration_defaults

# how much a method adds to a cell's own run (load-time quantization, decompression at first forward)
_METHOD_LOAD_UNITS = {"none": 1.0, "nf4": 3.0, "fp4": 3.0, "int8": 3.0}
_DEFAULT_LOAD_UNITS = 2.0
_TOKENS_PER_UNIT = 2048.0          # a unit ~ scoring 2k tokens in one forward pass
_DECODE_STEP_UNITS = 1 / 64        # one decode step ~ a forward over 32 tokens
# default time limits: generous (a unit is ~1 s of CPU work; loads and downloads are not estimated)
_TIMEOUT_S_PER_UNIT = 10.0
CELL_TIMEOUT_FLOOR_S = 600.0
QUANTIZE_TIMEOUT_FLOOR_S = 3600.0    # calibration solves grow with the model, which costs do not see


def estimate_cost(cell: Cell) -> float:
    """A relative estimate of a cell's run time from its method and evaluation settings."""
    ev = json.loads(cell.evaluation)
    units = _METHOD_LOAD_UNITS.get(cell.method, _DEFAULT_LOAD_UNITS)
    if ppl := ev.get("perplexity"):
        units += (ppl.get("max_tokens") or 65536) / _TOKENS_PER_UNIT * max(1.0, ppl["context"] / ppl["stride"])
    if kl := ev.get("kl_divergence"):   # the baseline's log-probs and the cell's: two passes
        units += 2 * (kl.get("max_tokens") or 65536) / _TOKENS_PER_UNIT * max(1.0, kl["context"] / kl["stride"])
    if speed := ev.get("speed"):
        units += speed["repeats"] * (speed["new_tokens"] * _DECODE_STEP_UNITS
                                     + speed["prompt_tokens"] / _TOKENS_PER_UNIT)
    if lm := ev.get("lm_eval"):      # ~4 choices of ~256 tokens per item and shot
        shots = 1 + lm.get("num_fewshot", 0)
        units += len(lm.get("tasks", [1])) * lm.get("limit", 100) * 4 * 256 * shots / _TOKENS_PER_UNIT
    if serving := ev.get("serving"):   # decoding is batched under load: counted once per level
        levels = len(serving.get("concurrency", [1]))
        units += levels * serving.get("requests_per_level", 50) * serving.get("output_tokens", 64) * _DECODE_STEP_UNITS / 4
    if prompts := ev.get("prompts"):
        units += (prompts.get("limit") or 32) * prompts.get("max_new_tokens", 64) * _DECODE_STEP_UNITS
    return units


def estimate_quantize_cost(cell: Cell) -> float:
    """A relative estimate of building a cell's artifact (calibration passes, per-layer solves)."""
    if cell.calibration is None:       # data-free (fp8): no calibration passes
        return 4.0
    calib = {**calibration_defaults(), **dict(cell.calibration)}   # the cell's own samples x seq_len
    return 4.0 + calib["samples"] * calib["seq_len"] / _TOKENS_PER_UNIT * 8


def time_limit(cost: float, floor: float, limit: float | None = None) -> float:
    """Seconds a cell or build may run: the spec's limit when set, else 10 s per cost unit, at least `floor`."""
    return limit if limit is not None else max(floor, _TIMEOUT_S_PER_UNIT * cost)


@dataclass(frozen=True)
class QuantizeJob:
    """One artifact to build and the cells waiting for it; `chain` is quantize + its longest cell."""
    key: str
    cells: tuple[Cell, ...]
    chain: float


def quantize_jobs(cells: Iterable[Cell], needs_artifact: Callable[[Cell], bool],
                  cost: Callable[[Cell], float], quantize_cost: Callable[[Cell], float]
                  ) -> tuple[list[QuantizeJob], list[Cell]]:
    """Split cells into artifact builds (longest chain first: they are the long poles) and cells that
    can start at once (longest first). Each artifact key appears in exactly one job."""
    by_key: dict[str, list[Cell]] = {}
    ready: list[Cell] = []
    for c in cells:
        (by_key.setdefault(c.artifact_key, []) if needs_artifact(c) else ready).append(c)
    jobs = [QuantizeJob(k, tuple(cs), quantize_cost(cs[0]) + max(map(cost, cs))) for k, cs in by_key.items()]
    jobs.sort(key=lambda j: j.chain, reverse=True)     # sorted() is stable: ties keep spec order
    return jobs, sorted(ready, key=cost, reverse=True)


def choose_cell(ready: Sequence[Cell], worker_key: Hashable | None,
                fits: Callable[[Cell], bool] = lambda c: True) -> int | None:
    """Index in `ready` (kept longest first) of the cell an idle worker should run next: the first
    that reuses the worker's loaded engine, else the first (longest) that fits the worker; None when
    none fits. Reuse wins over length because a reload is work that no slot needs to do."""
    first = None
    for i, c in enumerate(ready):
        if not fits(c):
            continue
        if worker_key is not None and c.engine_key == worker_key:
            return i
        if first is None:
            first = i
    return first


def insert_by_cost(ready: list[Cell], cells: Iterable[Cell], cost: Callable[[Cell], float]) -> None:
    """Merge `cells` into `ready`, keeping it longest first (a stable sort: ties keep arrival order)."""
    ready.extend(cells)
    ready.sort(key=cost, reverse=True)
