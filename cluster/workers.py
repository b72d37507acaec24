"""What runs on the cluster: the cell worker actor, the quantize task, and the sweep's real work.

A `CellWorker` is a long-lived Ray actor that keeps its loaded engine (in `state`) across the cells
it is handed; a build is a Ray task (`QUANTIZE_TASK`, or `GPU_QUANTIZE_TASK` for one that holds a
GPU). Both run a `cluster.scheduler.Work`'s methods: `JobsWork`, jobs.run_cell's, in a sweep; a
benchmark's or a test's synthetic work otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray

from cluster import progress, scheduling
from matrix import Cell
from matrix.methods import METHODS
from matrix.results import CellOutcome, Manifest


@dataclass(frozen=True)
class JobsWork:
    """The sweep's work: jobs.run_cell's quantize step and cell (imported where they run), with
    cluster.scheduling's cost estimates."""

    def quantize(self, cell: Cell) -> Manifest:
        from jobs.run_cell import quantize_step
        return quantize_step(cell)

    def run(self, cell: Cell, manifest: Manifest | None, state: dict[str, Any]) -> CellOutcome:
        from jobs.run_cell import run_cell
        return run_cell(cell, manifest, state)

    def needs_artifact(self, cell: Cell) -> bool:
        return METHODS[cell.method].artifact

    def reusable(self, cell: Cell) -> bool:
        from jobs.engines import engine_reusable
        return engine_reusable(cell.engine)

    def cost(self, cell: Cell) -> float:
        return scheduling.estimate_cost(cell)

    def quantize_cost(self, cell: Cell) -> float:
        return scheduling.estimate_quantize_cost(cell)


@ray.remote(max_restarts=0, max_task_retries=0)
class CellWorker:
    """One resource slot's worker: runs cells one at a time, keeping the engine the last one loaded."""

    def __init__(self, work):
        self.work = work
        self.state: dict[str, Any] = {}     # the loaded engine, kept across this worker's cells

    def run(self, cell: Cell, manifest: Manifest | None, events=None) -> tuple[CellOutcome, dict[str, Any]]:
        began = time.time()
        with progress.stages_to(events, f"cell:{cell.cell_id}"):
            outcome = self.work.run(cell, manifest, self.state)
        # where Ray placed this actor: the driver folds it into the run's facts
        ctx = ray.get_runtime_context()
        return outcome, {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                         "start": began, "end": time.time()}


def quantize(work, cell: Cell, events=None) -> Manifest:
    """One build of the cell's artifact, its stages reported under "build:<artifact key>"."""
    with progress.stages_to(events, f"build:{cell.artifact_key}"):
        return work.quantize(cell)


QUANTIZE_TASK = ray.remote(max_retries=0)(quantize)
# Ray reuses a task's process; a GPU build's would keep its CUDA context (bound to the GPU it had) and
# PyTorch's cached blocks on a GPU a cell is about to fill: GPU builds exit after one call, as Ray's own
# default for GPU tasks (which `.options(num_gpus=...)` does not apply)
GPU_QUANTIZE_TASK = ray.remote(max_retries=0, max_calls=1)(quantize)
