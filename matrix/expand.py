"""Expand a spec into cells: the product of its dimensions, deduplicated, with rule skips.

Pure: model configs come in as data (the caller reads them), so this runs anywhere, instantly.
Order: the product, then the spec's include/exclude (dropped and counted), then the validity rules
(skipped with a reason). So cells + skipped + excluded == the product (less exact duplicates).
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

from matrix.adapters import DEFAULT_ADAPTER_MODE
from matrix.cells import Cell, SkippedCell
from matrix.methods import BASELINE_METHOD, DEFAULT_GROUP_SIZE, METHODS, MethodInfo, keep_terms
from matrix.rules import ModelConfig, first_violation
from matrix.select import selection
from matrix.spec import CalibrationSpec, MethodSpec, ModelSpec, SpecError, SweepSpec, without_absent

MAX_CELLS = 10_000        # cells of one spec before expansion is refused (--max-cells raises it)


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
    if opt is not None and opt.kind == "modules":    # preset "lm_head+down_proj" == [lm_head, down_proj]
        return keep_terms(value)
    return tuple(value) if isinstance(value, list) else value


def _option_values(info: MethodInfo, options: dict[str, Any]) -> dict[str, list[Any]]:
    """Each option's values: a grid's list, or the one fixed value."""
    out = {}
    for n in sorted(options):
        opt, v = info.option(n), options[n]
        grid = opt.is_grid(v) if opt is not None else isinstance(v, list)
        out[n] = v if grid else [v]
    return out


def _option_grid(info: MethodInfo, options: dict[str, Any]) -> Iterator[tuple[tuple[str, Any], ...]]:
    values = _option_values(info, options)
    for combo in itertools.product(*([_one_value(info, n, x) for x in v] for n, v in values.items())):
        yield tuple(zip(values, combo))


def _dimensions(ms: MethodSpec, calibration: CalibrationSpec) -> dict[str, list[Any]]:
    """One method entry's own dimensions (bits, group size, option grids, and a calibrated method's
    calibration fields), defaults filled in."""
    info = METHODS[ms.method]
    calibrated = {f"calibration.{n}": v if isinstance(v, list) else [v]
                  for n, v in calibration.model_dump().items()} if info.calibrated else {}
    return {"bits": ms.bits or [info.default_bits],
            "group_size": list(ms.group_size or [DEFAULT_GROUP_SIZE]) if info.grouped else [None],
            **{f"options.{n}": v for n, v in _option_values(info, ms.options).items()}, **calibrated}


def _method_variants(ms: MethodSpec, calibration: CalibrationSpec
                     ) -> Iterator[tuple[str, int, int | None, tuple, tuple | None]]:
    info = METHODS[ms.method]
    backend = ms.backend or info.backends[0]
    dims = _dimensions(ms, calibration)
    # uncalibrated methods take no calibration: they are not multiplied by its combinations
    calibrations = calibration.grid() if info.calibrated else (None,)
    for b, g, opts, calib in itertools.product(dims["bits"], dims["group_size"], _option_grid(info, ms.options),
                                               calibrations):
        yield backend, b, g, opts, calib


def _methods_with_baseline(spec: SweepSpec) -> list[MethodSpec]:
    methods = list(spec.methods)
    if not any(m.method == BASELINE_METHOD for m in methods):
        methods.insert(0, MethodSpec(method=BASELINE_METHOD))
    return methods


def matrix_size(spec: SweepSpec) -> tuple[int, str]:
    """The product of the spec's dimensions (before dedup, include/exclude and rules) and what
    multiplies, as text: counted from the spec, nothing expanded."""
    variants = []
    for ms in _methods_with_baseline(spec):
        dims = {k: len(v) for k, v in _dimensions(ms, spec.calibration).items() if len(v) > 1}
        variants.append((math.prod(dims.values()), ms.method, dims))
    n_methods = sum(n for n, _, _ in variants)
    factors = [("models", len(spec.models)), ("method variants", n_methods),
               ("kv_cache_dtype", len(spec.kv_cache_dtype)), ("engine", len(spec.engine))]
    if len(spec.adapter_mode) > 1:      # an upper bound: models without an adapter have one mode
        factors.append(("adapter_mode", len(spec.adapter_mode)))
    total = math.prod(n for _, n in factors)
    biggest = sorted(variants, key=lambda v: -v[0])[:2]
    detail = "; ".join(f"{m} {n:,}" + (f" = {' × '.join(f'{k} {d}' for k, d in dims.items())}" if dims else "")
                       for n, m, dims in biggest)
    return total, " × ".join(f"{name} {n:,}" for name, n in factors) + f" ({detail})"


def check_matrix_size(spec: SweepSpec, limit: int = MAX_CELLS) -> int:
    """The spec's cell count; SpecError naming the count and the dimensions past `limit`."""
    total, why = matrix_size(spec)
    if total > limit:
        raise SpecError(f"the matrix has {total:,} cells ({why}); the limit is {limit:,}: raise it with "
                        "--max-cells, or shrink a dimension")
    return total


def evaluation_json(spec: SweepSpec) -> str:
    """Canonical JSON of the enabled evaluations (a disabled one is left out, so adding an optional
    evaluator to the language changes no existing id), each without the fields at their ID_ABSENT_AT value
    (matrix.spec.without_absent: a field added later, at the value that measures as before it existed, so
    results written before keep their ids; evaluator_settings reads it back)."""
    out = {}
    for name, settings in spec.evaluation:
        if settings is None:
            continue
        out[name] = without_absent(type(settings), settings.model_dump())
    return json.dumps(out, sort_keys=True)


def expand_matrix(spec: SweepSpec, model_configs: dict[str, ModelConfig] | None = None) -> Expansion:
    """All cells of `spec`, a bf16 baseline per model added when missing, unwanted ones dropped,
    invalid ones skipped with their reason."""
    model_configs = model_configs or {}
    evaluation = evaluation_json(spec)
    wanted = selection(list(spec.exclude), [(r.when, r.require) for r in spec.include])
    methods = _methods_with_baseline(spec)

    cells: dict[str, Cell] = {}
    skipped: dict[str, SkippedCell] = {}
    dropped: set[str] = set()
    for model, ms, kv, engine, mode in itertools.product(spec.models, methods, spec.kv_cache_dtype, spec.engine,
                                                         spec.adapter_mode):
        for backend, bits, group, opts, calibration in _method_variants(ms, spec.calibration):
            cell = _make_cell(model, ms, backend, bits, group, opts, kv, engine, calibration, evaluation, mode)
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
               kv: str, engine: str, calibration: tuple | None, evaluation: str,
               adapter_mode: str = DEFAULT_ADAPTER_MODE) -> Cell:
    info = METHODS[ms.method]
    # without an adapter the mode means nothing (those cells collapse into one); the unquantized fine-tuned
    # model is one model, merged once: the baseline of both modes
    mode = None if model.adapter is None else DEFAULT_ADAPTER_MODE if ms.method == BASELINE_METHOD else adapter_mode
    return Cell(
        model=model.id, revision=model.revision, method=ms.method, backend=backend,
        bits=bits, group_size=group, options=opts, kv_cache_dtype=kv, engine=engine,
        calibration=calibration if info.calibrated else None, evaluation=evaluation,
        tensor_parallel_size=model.tensor_parallel_size, trust_remote_code=model.trust_remote_code,
        gguf_file=model.gguf_file,
        adapter=model.adapter, adapter_version=model.adapter_version, adapter_mode=mode,
    )
