"""The sweep driver: plan, resume, schedule on Ray, stream each finished cell to the store.

Quantization runs as a Ray task once per artifact key; each cell then runs on a fresh actor
that loads the engine and evaluates. Resources are declared to Ray (GPUs when the cluster has
them, CPUs otherwise); Ray does the pinning. A failing cell is retried on a fresh actor and
then recorded as failed; the sweep goes on. Finished cells are never run or written twice.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from analysis.store import ResultStore
from cluster.ray_runtime import ClusterResources, connect
from matrix import Cell, Expansion, SkippedCell, SweepSpec, expand_matrix
from matrix.spec import ResourcesSpec


@dataclass
class SweepReport:
    sweep: str
    cells: int
    skipped: int
    already_done: int
    ran: int = 0
    succeeded: int = 0
    failed: int = 0
    quantizations: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    # one entry per successful cell: where and when Ray ran it (cell_id, node_id, gpu_ids, start, end: unix s)
    placements: list[dict[str, Any]] = field(default_factory=list)
    skipped_cells: list[SkippedCell] = field(default_factory=list)


def plan_sweep(spec: SweepSpec) -> Expansion:
    """Expand the spec against each model's config; cells whose backend this build lacks are skipped."""
    from jobs.models import read_config
    from jobs.quantize import backend_names

    configs = {m.id: read_config(m.id, m.revision) for m in spec.models}
    expansion = expand_matrix(spec, configs)
    available = set(backend_names())
    cells, skipped = [], list(expansion.skipped)
    for c in expansion.cells:
        if c.backend in available:
            cells.append(c)
        else:
            skipped.append(SkippedCell(c, f"backend {c.backend!r} is not implemented in this version; "
                                          f"available: {', '.join(sorted(available))}", "backend-available"))
    return Expansion(tuple(cells), tuple(skipped))


def cell_resources(cluster: ClusterResources, cell: Cell, res: ResourcesSpec) -> dict[str, Any]:
    if cluster.gpus > 0:
        return {"num_gpus": cell.tensor_parallel_size, "num_cpus": 1}
    return {"num_cpus": max(1, min(res.cpus_per_cell, int(cluster.cpus)))}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def run_sweep(spec: SweepSpec, results: str | Path, address: str | None = None,
              on_progress: Callable[[str, int, int], None] | None = None) -> SweepReport:
    start = time.perf_counter()
    expansion = plan_sweep(spec)
    store = ResultStore(Path(results), spec.name)
    done = store.finished_cell_ids()
    for s in expansion.skipped:
        if s.cell.cell_id not in done:
            store.record(s.cell, store.next_attempt(s.cell.cell_id),
                         {"status": "skipped", "reason": s.reason, "started_at": _now(), "seconds": 0.0})
    todo = [c for c in expansion.cells if c.cell_id not in done]
    report = SweepReport(spec.name, len(expansion.cells), len(expansion.skipped),
                         len(expansion.cells) - len(todo), skipped_cells=list(expansion.skipped))
    if todo:
        cluster = connect(address)
        _Scheduler(store, cluster, spec.resources, report, on_progress).run(todo)
    report.seconds = time.perf_counter() - start
    return report


class _Scheduler:
    """Streams work through Ray: quantize tasks per artifact key, then one actor per cell."""

    def __init__(self, store: ResultStore, cluster: ClusterResources, res: ResourcesSpec, report: SweepReport,
                 on_progress: Callable[[str, int, int], None] | None, *,
                 run_fn: Callable[[Cell, dict[str, Any] | None], Any] | None = None,
                 quantize_fn: Callable[[Cell], dict[str, Any]] | None = None,
                 cost_fn: Callable[[Cell], float] | None = None):
        """`run_fn(cell, manifest) -> CellOutcome` and `quantize_fn(cell) -> manifest` default to
        jobs.run_cell's; they are injectable so a benchmark can drive this same scheduling code with
        synthetic work. `cost_fn(cell)` (an estimate of a cell's run time), when given, submits the cells
        longest first so the long poles do not start last."""
        import ray

        if run_fn is None or quantize_fn is None:
            from jobs.run_cell import quantize_step, run_cell
            run_fn, quantize_fn = run_fn or run_cell, quantize_fn or quantize_step

        self.ray, self.store, self.cluster, self.res, self.report = ray, store, cluster, res, report
        self.on_progress = on_progress or (lambda *_: None)
        self.cost_fn = cost_fn
        self.quantize = ray.remote(max_retries=0)(quantize_fn)

        @ray.remote(max_restarts=0)
        class CellWorker:
            def run(self, cell: Cell, manifest: dict[str, Any]):
                began = time.time()
                outcome = run_fn(cell, manifest)
                # where Ray placed this actor: the driver folds it into the run's facts
                ctx = ray.get_runtime_context()
                return outcome, {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                                 "start": began, "end": time.time()}

        self.worker_cls = CellWorker
        self.pending: dict[Any, tuple] = {}     # object ref -> (kind, payload, attempt, started, actor)

    def _submit_quantize(self, key: str, cells: list[Cell], attempt: int) -> None:
        opts = cell_resources(self.cluster, cells[0], self.res)
        ref = self.quantize.options(**opts, name=f"quantize:{key}").remote(cells[0])
        self.pending[ref] = ("quantize", cells, attempt, _now(), None)

    def _submit_cell(self, cell: Cell, manifest: dict[str, Any]) -> None:
        attempt = self.store.next_attempt(cell.cell_id)
        actor = self.worker_cls.options(**cell_resources(self.cluster, cell, self.res),
                                        name=None).remote()
        ref = actor.run.remote(cell, manifest)
        self.pending[ref] = ("cell", (cell, manifest), attempt, _now(), actor)

    def run(self, todo: list[Cell]) -> None:
        from jobs.quantize import get_backend

        if self.cost_fn is not None:     # longest first; sorted() is stable, so ties keep spec order
            todo = sorted(todo, key=self.cost_fn, reverse=True)
        by_key: dict[str, list[Cell]] = {}
        for c in todo:
            by_key.setdefault(c.artifact_key, []).append(c)
        # artifact-building groups first: they are the long poles
        for key, cells in sorted(by_key.items(), key=lambda kv: not get_backend(kv[1][0].backend).writes_artifact):
            if get_backend(cells[0].backend).writes_artifact:
                self._submit_quantize(key, cells, 1)
            else:
                for c in cells:
                    self._submit_cell(c, None)
        total, finished = len(todo), 0
        self.on_progress("running", finished, total)
        try:
            while self.pending:
                [ref], _ = self.ray.wait(list(self.pending), num_returns=1)
                kind, payload, attempt, started, actor = self.pending.pop(ref)
                try:
                    value, error = self.ray.get(ref), None
                except Exception as exc:      # RayTaskError, RayActorError, OOM, lost node
                    value, error = None, _short_error(exc)
                if actor is not None:
                    self.ray.kill(actor)
                if kind == "quantize":
                    finished += self._quantize_done(payload, attempt, value, error)
                else:
                    finished += self._cell_done(payload, attempt, started, value, error)
                self.on_progress("running", finished, total)
        except KeyboardInterrupt:
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
            raise

    def _quantize_done(self, cells: list[Cell], attempt: int, manifest, error) -> int:
        if error is None:
            self.report.quantizations += int(bool(manifest.get("built")))
            for c in cells:
                self._submit_cell(c, manifest)
            return 0
        if attempt <= self.res.max_retries:
            self._submit_quantize(cells[0].artifact_key, cells, attempt + 1)
            return 0
        for c in cells:      # the artifact cannot be built: each of its cells fails with that error
            self._fail(c, self.store.next_attempt(c.cell_id), _now(), f"quantization failed: {error}", final=True)
        return len(cells)

    def _cell_done(self, payload, attempt: int, started, outcome, error) -> int:
        cell, manifest = payload
        self.report.ran += 1
        if error is None:
            outcome, placement = outcome
            run = {"status": "ok", "started_at": started, **outcome.facts, **_placement_facts(placement)}
            self.store.record(cell, attempt, run, outcome.metrics)
            self.report.placements.append({"cell_id": cell.cell_id, **placement})
            self.report.succeeded += 1
            return 1
        final = attempt > self.res.max_retries      # counts attempts across reruns too
        self._fail(cell, attempt, started, error, final)
        if not final:
            self._submit_cell(cell, manifest)
            return 0
        return 1

    def _fail(self, cell: Cell, attempt: int, started, error: str, final: bool) -> None:
        """Every failed attempt is recorded; only the last one counts as the cell's failure."""
        seconds = (_now() - started).total_seconds()
        self.store.record(cell, attempt, {"status": "failed", "error": error, "started_at": started,
                                          "seconds": seconds})
        if final:
            self.report.failed += 1
            self.report.failures.append((cell.label, error.splitlines()[-1] if error else ""))


def _placement_facts(placement: dict[str, Any]) -> dict[str, Any]:
    """The runs columns that say where Ray placed a cell: its node, and the GPU ids it pinned."""
    return {"node_id": placement["node_id"], "gpu_ids": ",".join(placement["gpu_ids"]) or None}


def _short_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-4000:]
