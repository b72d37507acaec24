"""The sweep driver: plan, resume, and hand the cells not yet finished to the scheduler.

`plan_sweep` expands the spec against each model's config; `run_sweep` checks the store and the
cluster before any work, records the skipped cells, and runs the rest through `cluster.scheduler`
(Ray work in `cluster.workers`, claims and writes in `cluster.recorder`). Finished cells are never
run or written twice: a second sweep on the same store skips the cells a live one holds, counts
them when it finishes them, and takes over those of a sweep that died. Ctrl-C stops cleanly
(`cluster.interrupt`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from analysis.store import ResultStore
from cluster import progress
from cluster.interrupt import SweepInterrupted, sigint_requests_stop  # noqa: F401  (SweepInterrupted: raised by run_sweep)
from cluster.placement import PlacementError  # noqa: F401  (raised by run_sweep)
from cluster.ray_runtime import connect
from cluster.recorder import Recorder
from cluster.scheduler import Scheduler, SweepReport
from matrix import Expansion, SkippedCell, SweepSpec, expand_matrix


class ModelConfigError(RuntimeError):
    """A model whose config cannot be read (unreachable hub id, missing folder, bad GGUF): one line."""


def read_configs(spec: SweepSpec) -> dict[str, dict]:
    """Each model's config.json (a hub download, a GGUF header, or a builtin's folder)."""
    from jobs.models import read_config
    from matrix.shown import bounded

    configs = {}
    for m in spec.models:
        try:
            configs[m.id] = read_config(m.id, m.revision, m.gguf_file)
        except Exception as e:     # any reader's failure, named by model, before Ray starts
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelConfigError(bounded(f"cannot read the config of model {m.id}: {type(e).__name__}: {first}")) \
                from e
    return configs


def plan_sweep(spec: SweepSpec, configs: dict[str, dict] | None = None) -> Expansion:
    """Expand the spec against each model's config; cells whose backend this build lacks are skipped."""
    from jobs.quantize import backend_names, unavailable_reason

    configs = configs if configs is not None else read_configs(spec)
    expansion = expand_matrix(spec, configs)
    # with a quantize-stage runtime env the libraries live there, not in the driver's environment
    stage_env = getattr(getattr(spec.resources, "runtime_env", None), "quantize", None) is not None
    reasons = {b: (f"backend {b!r} is not implemented in this version" if b not in backend_names() else None)
               if stage_env else unavailable_reason(b) for b in {c.backend for c in expansion.cells}}
    cells, skipped = [], list(expansion.skipped)
    for c in expansion.cells:
        if reasons[c.backend] is None:
            cells.append(c)
        else:
            skipped.append(SkippedCell(c, reasons[c.backend], "backend-available"))
    return Expansion(tuple(cells), tuple(skipped), expansion.excluded)


def run_sweep(spec: SweepSpec, results: str | Path, address: str | None = None,
              on_progress: Callable[[progress.SweepEvent], None] | None = None,
              log_to_driver: bool = False) -> SweepReport:
    """Run the cells not yet finished in `results` (a path or a pyarrow filesystem URI).

    Raises StoreNotWritable and PlacementError before any work when the store cannot be written or
    the cluster cannot place the cells, and SweepInterrupted after a Ctrl-C (finished cells stay stored)."""
    start = time.perf_counter()
    store = ResultStore(results, spec.name)
    store.check_writable()                    # before configs are read or Ray starts: one line, not a traceback
    expansion = plan_sweep(spec)
    done = store.finished_cell_ids()
    todo = [c for c in expansion.cells if c.cell_id not in done]
    skipped = [s for s in expansion.skipped if s.cell.cell_id not in done]
    report = SweepReport(spec.name, len(expansion.cells), len(expansion.skipped),
                         len(expansion.cells) - len(todo), skipped_cells=list(expansion.skipped))
    recorder = Recorder(store)
    scheduler = None
    if todo:
        scheduler = Scheduler(recorder, connect(address, log_to_driver), spec.resources, report=report,
                              on_progress=on_progress)
        scheduler.check(todo)                 # before anything is written or submitted
    with recorder.owning():
        for s in skipped:
            recorder.skipped(s)               # unless another live sweep records it
        if scheduler is not None:
            with sigint_requests_stop() as stop:
                scheduler.run(todo, stop=stop.is_set)
    report.seconds = time.perf_counter() - start
    return report
