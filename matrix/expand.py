"""Expand a spec into cells: the product of its dimensions, deduplicated, with rule skips.

Pure: model configs come in as data (the caller reads them), so this runs anywhere, instantly.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterator

from matrix.cells import Cell, SkippedCell
from matrix.methods import BASELINE_METHOD, METHODS
from matrix.rules import ModelConfig, first_violation
from matrix.spec import MethodSpec, ModelSpec, SweepSpec


@dataclass(frozen=True)
class Expansion:
    cells: tuple[Cell, ...]
    skipped: tuple[SkippedCell, ...]

    @property
    def artifact_keys(self) -> set[str]:
        return {c.artifact_key for c in self.cells}


def _option_grid(options: dict[str, Any]) -> Iterator[tuple[tuple[str, Any], ...]]:
    names = sorted(options)
    values = [v if isinstance(v, list) else [v] for v in (options[n] for n in names)]
    for combo in itertools.product(*values):
        yield tuple(zip(names, combo))


def _method_variants(ms: MethodSpec) -> Iterator[tuple[str, int, int | None, tuple]]:
    info = METHODS[ms.method]
    backend = ms.backend or info.backends[0]
    bits = ms.bits or [info.bits[0] if len(info.bits) == 1 else 4]
    groups: list[int | None] = list(ms.group_size or [128]) if info.grouped else [None]
    for b, g, opts in itertools.product(bits, groups, _option_grid(ms.options)):
        yield backend, b, g, opts


def _baseline_spec() -> MethodSpec:
    return MethodSpec(method=BASELINE_METHOD)


def expand_matrix(spec: SweepSpec, model_configs: dict[str, ModelConfig] | None = None) -> Expansion:
    """All cells of `spec`, a bf16 baseline per model added when missing, invalid ones skipped."""
    model_configs = model_configs or {}
    evaluation = json.dumps(spec.evaluation.model_dump(), sort_keys=True)
    calibration = tuple(sorted(spec.calibration.model_dump().items()))
    methods = list(spec.methods)
    if not any(m.method == BASELINE_METHOD for m in methods):
        methods.insert(0, _baseline_spec())

    cells: dict[str, Cell] = {}
    skipped: dict[str, SkippedCell] = {}
    for model, ms, kv, engine in itertools.product(spec.models, methods, spec.kv_cache_dtype, spec.engine):
        for backend, bits, group, opts in _method_variants(ms):
            cell = _make_cell(model, ms, backend, bits, group, opts, kv, engine, calibration, evaluation)
            if cell.cell_id in cells or cell.cell_id in skipped:
                continue
            violation = first_violation(cell, model_configs.get(model.id, {}))
            if violation:
                skipped[cell.cell_id] = SkippedCell(cell, violation[1], violation[0])
            else:
                cells[cell.cell_id] = cell
    return Expansion(tuple(cells.values()), tuple(skipped.values()))


def _make_cell(model: ModelSpec, ms: MethodSpec, backend: str, bits: int, group: int | None, opts: tuple,
               kv: str, engine: str, calibration: tuple, evaluation: str) -> Cell:
    info = METHODS[ms.method]
    return Cell(
        model=model.id, revision=model.revision, method=ms.method, backend=backend,
        bits=bits, group_size=group, options=opts, kv_cache_dtype=kv, engine=engine,
        calibration=calibration if info.calibrated else None, evaluation=evaluation,
        tensor_parallel_size=model.tensor_parallel_size, trust_remote_code=model.trust_remote_code,
    )
