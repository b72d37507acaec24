"""A sweep's plan: each cell with its estimated memory against the target GPU, before anything runs.

Pure: the expansion and the model configs come in, typed rows go out (the CLI renders them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from matrix.cells import Cell, SkippedCell
from matrix.estimate import Estimate, Fit, estimate_cell, fit_on
from matrix.expand import Expansion
from matrix.methods import METHODS
from matrix.spec import EvaluationSpec, SweepSpec


@dataclass(frozen=True)
class PlanRow:
    cell: Cell
    estimate: Estimate | None     # None: the model's config lacks the shapes
    fit: Fit | None               # None: no target GPU memory, or no estimate

    @property
    def quantizes_at_load(self) -> bool:
        return not METHODS[self.cell.method].artifact


@dataclass(frozen=True)
class Plan:
    name: str
    rows: tuple[PlanRow, ...]
    skipped: tuple[SkippedCell, ...]
    excluded: int
    quantization_jobs: int        # distinct artifact keys among cells whose method writes a checkpoint
    artifact_cells: int           # cells served from such an artifact
    target: str | None            # e.g. "H100, 80 GiB"
    kv_tokens: int                # KV-cache tokens priced into each cell's need

    @property
    def fitting(self) -> int:
        return sum(1 for r in self.rows if r.fit is not None and r.fit.fits)


def kv_tokens_for(evaluation: EvaluationSpec) -> int:
    """The KV cache of the largest load the evaluations put on one cell: serving's highest concurrency x
    (prompt + output tokens), else the longest evaluation window."""
    if evaluation.serving is not None:
        s = evaluation.serving
        return max(s.concurrency) * (s.prompt_tokens + s.output_tokens)
    windows = [evaluation.perplexity.context if evaluation.perplexity else 0,
               evaluation.kl_divergence.context if evaluation.kl_divergence else 0,
               evaluation.speed.prompt_tokens + evaluation.speed.new_tokens if evaluation.speed else 0]
    return max(windows) or 512


def build_plan(spec: SweepSpec, expansion: Expansion, configs: dict[str, dict[str, Any]]) -> Plan:
    memory = spec.resources.target_memory_gib
    tokens = kv_tokens_for(spec.evaluation)
    rows = []
    for cell in expansion.cells:
        est = estimate_cell(cell, configs.get(cell.model, {}))
        fit = fit_on(est, memory, tokens, cell.tensor_parallel_size) if est and memory else None
        rows.append(PlanRow(cell, est, fit))
    artifact_cells = [c for c in expansion.cells if METHODS[c.method].artifact]
    target = None
    if memory:
        target = f"{spec.resources.accelerator_type + ', ' if spec.resources.accelerator_type else ''}{memory:g} GiB"
    return Plan(spec.name, tuple(rows), expansion.skipped, expansion.excluded, len(expansion.quantization_jobs),
                len(artifact_cells), target, tokens)
