"""Expand a spec into cells: the product of its dimensions, deduplicated, with rule skips.

Pure: model configs come in as data (the caller reads them), so this runs anywhere, instantly.
Order: the product, then the spec's include/exclude (dropped and counted), then the validity rules
(skipped with a reason). So cells + skipped + excluded == the product (less exact duplicates).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterator

from matrix.cells import Cell, SkippedCell
from matrix.methods import BASELINE_METHOD, METHODS, MethodInfo
from matrix.rules import ModelConfig, first_violation
from matrix.select import selection
from matrix.spec import MethodSpec, ModelSpec, SweepSpec


@dataclass(frozen=True)
class Expansion:
    cells: tuple[Cell, ...]
    skipped: tuple[SkippedCell, ...]
    excluded: int = 0          # cells the spec's include/exclude dropped

    @property
    def artifact_keys(self) -> set[str]:
        return {c.artifact_key for c in self.cells}

    @property
    def quantization_jobs(self) -> set[str]:
        """Artifact keys of the cells whose method writes a checkpoint: one quantization job each."""
        return {c.artifact_key for c in self.cells if METHODS[c.method].artifact}


def _one_value(info: MethodInfo, name: str, value: Any) -> Any:
    """Hashable, canonical option values: numbers as floats where the option is a float, lists as tuples."""
    opt = info.option(name)
    if opt is not None and opt.kind == "float":
        return float(value)
    return tuple(value) if isinstance(value, list) else value


def _option_grid(info: MethodInfo, options: dict[str, Any]) -> Iterator[tuple[tuple[str, Any], ...]]:
    names = sorted(options)
    values = []
    for n in names:
        opt, v = info.option(n), options[n]
        grid = opt.is_grid(v) if opt is not None else isinstance(v, list)
        values.append([_one_value(info, n, x) for x in (v if grid else [v])])
    for combo in itertools.product(*values):
        yield tuple(zip(names, combo))


def _method_variants(ms: MethodSpec) -> Iterator[tuple[str, int, int | None, tuple]]:
    info = METHODS[ms.method]
    backend = ms.backend or info.backends[0]
    bits = ms.bits or [info.bits[0] if len(info.bits) == 1 else 4]
    groups: list[int | None] = list(ms.group_size or [128]) if info.grouped else [None]
    for b, g, opts in itertools.product(bits, groups, _option_grid(info, ms.options)):
        yield backend, b, g, opts


def evaluation_json(spec: SweepSpec) -> str:
    """Canonical JSON of the enabled evaluations (a disabled one is left out, so adding an optional
    evaluator to the language changes no existing id)."""
    return json.dumps({k: v for k, v in spec.evaluation.model_dump().items() if v is not None}, sort_keys=True)


def expand_matrix(spec: SweepSpec, model_configs: dict[str, ModelConfig] | None = None) -> Expansion:
    """All cells of `spec`, a bf16 baseline per model added when missing, unwanted ones dropped,
    invalid ones skipped with their reason."""
    model_configs = model_configs or {}
    evaluation = evaluation_json(spec)
    calibration = tuple(sorted(spec.calibration.model_dump().items()))
    wanted = selection(list(spec.exclude), [(r.when, r.require) for r in spec.include])
    methods = list(spec.methods)
    if not any(m.method == BASELINE_METHOD for m in methods):
        methods.insert(0, MethodSpec(method=BASELINE_METHOD))

    cells: dict[str, Cell] = {}
    skipped: dict[str, SkippedCell] = {}
    dropped: set[str] = set()
    for model, ms, kv, engine in itertools.product(spec.models, methods, spec.kv_cache_dtype, spec.engine):
        for backend, bits, group, opts in _method_variants(ms):
            cell = _make_cell(model, ms, backend, bits, group, opts, kv, engine, calibration, evaluation)
            cid = cell.cell_id
            if cid in cells or cid in skipped or cid in dropped:
                continue
            if not wanted(cell):
                dropped.add(cid)
                continue
            violation = first_violation(cell, model_configs.get(model.id, {}))
            if violation:
                skipped[cid] = SkippedCell(cell, violation[1], violation[0])
            else:
                cells[cid] = cell
    return Expansion(tuple(cells.values()), tuple(skipped.values()), len(dropped))


def _make_cell(model: ModelSpec, ms: MethodSpec, backend: str, bits: int, group: int | None, opts: tuple,
               kv: str, engine: str, calibration: tuple, evaluation: str) -> Cell:
    info = METHODS[ms.method]
    return Cell(
        model=model.id, revision=model.revision, method=ms.method, backend=backend,
        bits=bits, group_size=group, options=opts, kv_cache_dtype=kv, engine=engine,
        calibration=calibration if info.calibrated else None, evaluation=evaluation,
        tensor_parallel_size=model.tensor_parallel_size, trust_remote_code=model.trust_remote_code,
        gguf_file=model.gguf_file,
    )
