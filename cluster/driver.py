"""The sweep driver: plan, resume, schedule on Ray, stream each finished cell to the store.

Quantization runs as a Ray task once per artifact key, submitted first (the long poles). Cells
run on a pool of long-lived worker actors, one per resource slot, each keeping its loaded engine
so that cells with the same engine key run back to back without reloading (engines that cannot
be unloaded in-process, vLLM, get a fresh actor per cell). Ray does the pinning (see
`cluster.placement`); the ordering and routing decisions are pure (`cluster.scheduling`). A
failing cell is retried on a fresh actor and then recorded as failed; the sweep goes on. A cell
or build that runs past its time limit is killed and fails as any failure does.
Finished cells are never run or written twice: each cell's attempt is claimed in the store before
work (`analysis.claims`), so a second sweep on the same store skips the cells a live one holds,
counts them when it finishes them, and takes over those of a sweep that died. Ctrl-C stops cleanly
(`cluster.interrupt`).
"""
from __future__ import annotations

import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from analysis.store import ResultStore
from cluster import placement, progress, scheduling
from cluster.interrupt import SweepInterrupted, sigint_requests_stop
from cluster.placement import PlacementError, Slot  # noqa: F401  (PlacementError: raised by run_sweep)
from cluster.ray_runtime import ClusterResources, cluster_resources, connect
from cluster.runtime_envs import stage_runtime_env
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
    failures: list[tuple[str, str]] = field(default_factory=list)      # ("model label", one-line reason)
    elsewhere: int = 0                # cells another live sweep on the store held, and finished meanwhile
    # one entry per successful cell: where and when Ray ran it (cell_id, node_id, gpu_ids, start, end: unix s)
    placements: list[dict[str, Any]] = field(default_factory=list)
    skipped_cells: list[SkippedCell] = field(default_factory=list)
    workers_started: int = 0          # cell actors started (fewer than cells: workers are reused)


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


def _now() -> datetime:
    return datetime.now(timezone.utc)


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
    scheduler = None
    if todo:
        scheduler = _Scheduler(store, connect(address, log_to_driver), spec.resources, None, on_progress)
        scheduler.check(todo)                 # before anything is written or submitted
    report = SweepReport(spec.name, len(expansion.cells), len(expansion.skipped),
                         len(expansion.cells) - len(todo), skipped_cells=list(expansion.skipped))
    with store.claims.owning():
        for s in skipped:
            attempt = store.claim(s.cell.cell_id)
            if attempt is None:               # another live sweep records it
                continue
            store.record(s.cell, attempt, {"status": "skipped", "reason": s.reason, "started_at": _now(),
                                           "seconds": 0.0})
            store.release(s.cell.cell_id, attempt)
        if scheduler is not None:
            scheduler.report = report
            with sigint_requests_stop() as stop:
                scheduler.stop = stop.is_set
                scheduler.run(todo)
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Worker:
    """A live cell actor: its slot, its placement group (gangs only) and the engine it has loaded."""
    actor: Any
    slot: Slot
    pg: Any = None
    engine_key: tuple | None = None
    reusable: bool = True
    busy: bool = False
    node_id: str | None = None          # known after its first cell
    starting: Any = None                # until its actor is up: a ref that resolves then


@dataclass(frozen=True)
class _Flight:
    """What an object ref in flight stands for."""
    kind: str                                   # "quantize" | "cell"
    attempt: int
    started: datetime
    job: scheduling.QuantizeJob | None = None
    cell: Cell | None = None
    worker: _Worker | None = None
    limit_s: float = math.inf                   # its time limit, counted from when it could start


class _Scheduler:
    """Streams work through Ray: quantize tasks per artifact key, then cells on a worker pool."""

    def __init__(self, store: ResultStore, cluster: ClusterResources, res: ResourcesSpec,
                 report: SweepReport | None, on_progress: Callable[[progress.SweepEvent], None] | None, *,
                 run_fn: Callable[[Cell, dict[str, Any] | None, dict[str, Any]], Any] | None = None,
                 quantize_fn: Callable[[Cell], dict[str, Any]] | None = None,
                 cost_fn: Callable[[Cell], float] | None = None,
                 quantize_cost_fn: Callable[[Cell], float] | None = None,
                 needs_artifact: Callable[[Cell], bool] | None = None,
                 reusable: Callable[[Cell], bool] | None = None):
        """`run_fn(cell, manifest, state) -> CellOutcome` and `quantize_fn(cell) -> manifest` default to
        jobs.run_cell's; with the cost estimates, `needs_artifact` (the backend writes one) and `reusable`
        (the engine may stay loaded) they are injectable, so the scheduler benchmark drives this same
        code with synthetic work."""
        import ray

        if run_fn is None or quantize_fn is None:
            from jobs.run_cell import quantize_step, run_cell
            run_fn, quantize_fn = run_fn or run_cell, quantize_fn or quantize_step
        if needs_artifact is None:
            from jobs.quantize import get_backend
            needs_artifact = lambda c: get_backend(c.backend).writes_artifact  # noqa: E731
        if reusable is None:
            from jobs.engines import engine_reusable
            reusable = lambda c: engine_reusable(c.engine)  # noqa: E731

        self.ray, self.store, self.cluster, self.res, self.report = ray, store, cluster, res, report
        # workers' stage reports reach the driver through a small actor, only when someone listens
        self.events = progress.event_box() if on_progress is not None else None
        self.progress = progress.SweepTracker(on_progress, self.events, lambda: (self.finished, self.total))
        self.stop: Callable[[], bool] = lambda: False
        self._cost_fn = cost_fn or scheduling.estimate_cost
        self._costs: dict[str, float] = {}
        self._slots: dict[str, Slot] = {}
        self.quantize_cost = quantize_cost_fn or scheduling.estimate_quantize_cost
        self.needs_artifact, self.reusable = needs_artifact, reusable
        self.gpu_cluster = cluster.gpus > 0
        self.accelerator_spec = getattr(res, "accelerator_type", None)
        self.accelerator = _ray_accelerator_type(self.accelerator_spec)
        self.serve_env = stage_runtime_env(res, "serve")
        quantize_fn = progress.with_stages(quantize_fn, "build", lambda c: c.artifact_key)
        self.quantize_task = ray.remote(max_retries=0)(quantize_fn)
        # Ray reuses a task's process; a GPU build's would keep its CUDA context (bound to the GPU it
        # had) and PyTorch's cached blocks on a GPU a cell is about to fill: GPU builds exit after one
        # call, as Ray's own default for GPU tasks (which `.options(num_gpus=...)` does not apply)
        self.gpu_quantize_task = ray.remote(max_retries=0, max_calls=1)(quantize_fn)

        @ray.remote(max_restarts=0, max_task_retries=0)
        class CellWorker:
            def __init__(self):
                self.state: dict[str, Any] = {}     # the loaded engine, kept across this worker's cells

            def run(self, cell: Cell, manifest: dict[str, Any] | None, events=None):
                began = time.time()
                with progress.stages_to(events, f"cell:{cell.cell_id}"):
                    outcome = run_fn(cell, manifest, self.state)
                # where Ray placed this actor: the driver folds it into the run's facts
                ctx = ray.get_runtime_context()
                return outcome, {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                                 "start": began, "end": time.time()}

        self.worker_cls = CellWorker
        self.quantize_env = stage_runtime_env(res, "quantize")
        self.pending: dict[Any, _Flight] = {}
        self.workers: list[_Worker] = []
        self.ready: list[Cell] = []                 # longest first
        self.manifests: dict[str, dict[str, Any] | None] = {}
        self.fresh_only: set[str] = set()           # retries: never on a worker that already ran something
        self.finished = self.total = 0
        self.attempts: dict[str, int] = {}          # cell id -> the attempt this writer has claimed
        self.watching: dict[str, Cell] = {}         # cells another live writer holds
        self._watch_at = 0.0
        self._built: dict[str, dict[str, Any]] = {}  # artifact key -> manifest, for cells taken over later
        self._clocks: dict[Any, float] = {}         # ref -> monotonic time its time limit counts from

    def cost(self, cell: Cell) -> float:
        """The cell's estimated run time, computed once (ordering compares it often)."""
        value = self._costs.get(cell.cell_id)
        if value is None:
            value = self._costs[cell.cell_id] = self._cost_fn(cell)
        return value

    # -- decisions that need the cluster ---------------------------------------------------------

    def _cpus(self) -> int:
        biggest = max((n.get("CPU", 0.0) for n in self.cluster.per_node), default=self.cluster.cpus)
        return max(1, min(self.res.cpus_per_cell, int(biggest)))

    def _cell_slot(self, cell: Cell) -> Slot:
        slot = self._slots.get(cell.cell_id)
        if slot is None:
            slot = self._slots[cell.cell_id] = placement.cell_slot(cell, self.gpu_cluster, self._cpus(),
                                                                    self.accelerator)
        return slot

    def _quantize_slot(self, cell: Cell) -> Slot:
        return placement.quantize_slot(cell, self.gpu_cluster, self._cpus(), self.accelerator)

    def check(self, cells: list[Cell]) -> None:
        """Fail before running when no node offers the accelerator type or a cell's resources."""
        nodes = self.cluster.per_node
        placement.check_accelerator(nodes, self.accelerator, self.gpu_cluster, self.accelerator_spec)
        slots = {self._cell_slot(c) for c in cells}
        slots |= {self._quantize_slot(c) for c in cells if self.needs_artifact(c)}
        placement.check_fits(nodes, slots)

    def _in_use(self) -> dict[str, float]:
        used = {"GPU": 0.0, "CPU": 0.0}
        demands = [w.slot.demand() for w in self.workers]
        demands += [self._quantize_slot(f.job.cells[0]).demand() for f in self.pending.values() if f.kind == "quantize"]
        for d in demands:
            for r, n in d.items():
                used[r] += n
        return used

    def _can_spawn(self, slot: Slot) -> bool:
        nodes = self.cluster.per_node
        totals = {r: sum(n.get(r, 0.0) for n in nodes) for r in ("GPU", "CPU")}
        used = self._in_use()
        if any(used[r] + n > totals[r] + 1e-9 for r, n in slot.demand().items() if n > 0):
            return False
        return sum(w.slot == slot for w in self.workers) < placement.capacity(nodes, slot)

    # -- side effects ----------------------------------------------------------------------------

    def _submit_quantize(self, job: scheduling.QuantizeJob, attempt: int) -> None:
        opts = placement.ray_options(self._quantize_slot(job.cells[0]), self.quantize_env)
        task = self.gpu_quantize_task if opts.get("num_gpus") else self.quantize_task
        ref = task.options(**opts, name=f"quantize:{job.key}").remote(job.cells[0], self.events)
        self.progress.begin(f"build:{job.key}", f"build {self.progress.label(job.cells[0])}")
        limit = scheduling.time_limit(self.quantize_cost(job.cells[0]), scheduling.QUANTIZE_TIMEOUT_FLOOR_S,
                                      self.res.quantize_timeout_s)
        self.pending[ref] = _Flight("quantize", attempt, _now(), job=job, limit_s=limit)

    def _spawn(self, slot: Slot, cell: Cell) -> _Worker:
        pg = None
        if slot.gang:
            from ray.util.placement_group import placement_group
            pg = placement_group(placement.gang_bundles(slot), strategy="STRICT_PACK")
        actor = self.worker_cls.options(**placement.ray_options(slot, self.serve_env, pg)).remote()
        worker = _Worker(actor, slot, pg, reusable=self.reusable(cell), starting=actor.__ray_ready__.remote())
        self.workers.append(worker)
        if self.report is not None:
            self.report.workers_started += 1
        return worker

    def _retire(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        with contextlib.suppress(Exception):       # already dead with its node: nothing left to free
            self.ray.kill(worker.actor)
            if worker.pg is not None:
                from ray.util.placement_group import remove_placement_group
                remove_placement_group(worker.pg)

    def _assign(self, worker: _Worker, cell: Cell) -> None:
        attempt = self.attempts[cell.cell_id]                # claimed before the cell was queued
        ref = worker.actor.run.remote(cell, self.manifests.get(cell.cell_id), self.events)
        self.progress.begin(f"cell:{cell.cell_id}", self.progress.label(cell))
        worker.busy, worker.engine_key = True, cell.engine_key
        limit = scheduling.time_limit(self.cost(cell), scheduling.CELL_TIMEOUT_FLOOR_S, self.res.cell_timeout_s)
        self.pending[ref] = _Flight("cell", attempt, _now(), cell=cell, worker=worker, limit_s=limit)
        if worker.starting is None:
            self._clocks[ref] = time.monotonic()

    def _dispatch(self) -> None:
        """Keep every slot busy: idle workers take the next cell (reusing their engine where they
        can), new workers start while the cluster has room, idle workers nobody needs are retired."""
        for w in [w for w in self.workers if not w.busy]:
            def fits(c: Cell, w: _Worker = w) -> bool:
                return (self._cell_slot(c) == w.slot and w.reusable and self.reusable(c)
                        and c.cell_id not in self.fresh_only)
            i = scheduling.choose_cell(self.ready, w.engine_key, fits)
            if i is not None:
                self._assign(w, self.ready.pop(i))
        while self.ready:
            # the longest ready cell a new worker has room for (few distinct slots: ask once per slot)
            room: dict[Slot, bool] = {}

            def has_room(c: Cell) -> bool:
                slot = self._cell_slot(c)
                if slot not in room:
                    room[slot] = self._can_spawn(slot)
                return room[slot]
            i = next((i for i, c in enumerate(self.ready) if has_room(c)), None)
            if i is not None:
                cell = self.ready.pop(i)
                self.fresh_only.discard(cell.cell_id)
                self._assign(self._spawn(self._cell_slot(cell), cell), cell)
                continue
            idle = [w for w in self.workers if not w.busy]
            if not idle:
                break
            self._retire(idle[0])       # it could take none of the ready cells: give its room to them
        quantizing = any(f.kind == "quantize" for f in self.pending.values())
        idle = [w for w in self.workers if not w.busy]
        if idle and not self.ready and (not quantizing or self._quantize_waiting()):
            for w in idle:   # no cell will come for them (or a queued build needs their room)
                self._retire(w)

    def _quantize_waiting(self) -> bool:
        """A submitted build is queued behind the workers' resources."""
        nodes = self.cluster.per_node
        used = self._in_use()
        return any(used[r] > sum(n.get(r, 0.0) for n in nodes) + 1e-9 for r in ("GPU", "CPU"))

    def run(self, todo: list[Cell]) -> None:
        self.total, self.finished = len(todo), 0
        with self.store.claims.owning():      # unreleased claims are free again when this returns
            builds = {c.artifact_key: c for c in todo if self.needs_artifact(c)}
            self.progress.start(todo, sum(map(self.cost, todo)) + sum(map(self.quantize_cost, builds.values())))
            self._enqueue(self._claim(todo))
            try:
                self._dispatch()
                while self.pending or self.watching:
                    if self.stop():
                        raise SweepInterrupted(self.finished, self.total)
                    if self.pending:
                        done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
                        self.progress.drain()       # a task's stages before its end (sent before it returned)
                        for ref in done:
                            self._complete(ref)
                    else:
                        time.sleep(0.5)
                    self._expire()
                    self._watch()
                for cell in self.ready:       # only when lost nodes left no node that can hold them
                    self._fail(cell, self.attempts[cell.cell_id], _now(),
                               "no alive node offers the resources this cell needs", final=True)
                    self.finished += 1
            except BaseException:             # Ctrl-C, or a bug: leave nothing running on the cluster
                self._cancel_all()
                raise
            finally:
                for w in list(self.workers):
                    self._retire(w)

    # -- claims: several writers on one store ----------------------------------------------------

    def _claim(self, cells: list[Cell]) -> list[Cell]:
        """The cells this writer claimed; those another live writer holds are watched instead."""
        mine = []
        for c in cells:
            attempt = self.store.claim(c.cell_id)
            if attempt is not None:
                self.attempts[c.cell_id] = attempt
                mine.append(c)
            elif self.store.is_finished(c.cell_id):
                self._finished_elsewhere()
            else:
                self.watching[c.cell_id] = c
        return mine

    def _finished_elsewhere(self) -> None:
        self.finished += 1
        if self.report is not None:
            self.report.elsewhere += 1

    def _watch(self) -> None:
        """Watched cells: finished when their holder has finished them, ours when it let go or died."""
        if not self.watching or time.monotonic() < self._watch_at:
            return
        self._watch_at = time.monotonic() + min(2.0, self.store.claims.timeout_s / 4)
        watched = list(self.watching.values())
        self.watching.clear()
        taken = self._claim(watched)
        if taken:
            self._enqueue(taken)
            self._dispatch()

    def _enqueue(self, cells: list[Cell]) -> None:
        jobs, ready = scheduling.quantize_jobs(cells, self.needs_artifact, self.cost, self.quantize_cost)
        for job in jobs:                 # artifact builds first: they are the long poles
            manifest = self._built.get(job.key)
            if manifest is None:
                self._submit_quantize(job, 1)
                continue
            for c in job.cells:          # taken over after its artifact was built here
                self.manifests[c.cell_id] = manifest
            ready.extend(job.cells)
        scheduling.insert_by_cost(self.ready, ready, self.cost)

    def _record(self, cell: Cell, attempt: int, run: dict[str, Any], metrics=None, tables=None,
                final: bool = True) -> bool:
        """Write the attempt unless another writer has taken the cell over (this one stalled past the
        claim timeout): then its result is dropped. A final attempt lets the cell go."""
        if not self.store.claims.holds(cell.cell_id, attempt):
            return False
        self.store.record(cell, attempt, run, metrics, tables)
        if final:
            self.store.release(cell.cell_id, attempt)
        return True

    # -- time limits -----------------------------------------------------------------------------

    def _expire(self) -> None:
        """Kill what ran past its time limit; the attempt fails as any failure does, and is retried."""
        now = time.monotonic()
        self._start_build_clocks(now)
        for ref, flight in self.pending.items():       # a cell's limit counts from when its actor is up
            w = flight.worker
            if w is not None and ref not in self._clocks and (
                    w.starting is None or self.ray.wait([w.starting], timeout=0)[0]):
                w.starting, self._clocks[ref] = None, now
        for ref, flight in list(self.pending.items()):
            began = self._clocks.get(ref)
            if began is None or now - began < flight.limit_s:
                continue
            del self.pending[ref], self._clocks[ref]
            error = f"timed out after {flight.limit_s:g} s"
            if flight.kind == "quantize":
                with contextlib.suppress(Exception):      # force: the task's process is killed
                    self.ray.cancel(ref, force=True)
                self._quantize_done(flight, None, error)
            else:
                flight.worker.busy = False
                self._retire(flight.worker)               # kills the actor's process, hung or not
                self._cell_done(flight, None, error)
            self._dispatch()

    def _start_build_clocks(self, now: float) -> None:
        """A build's limit counts from when the cluster has room for it, not from its submission: Ray
        queues builds (submitted all at once) behind the resources that workers and earlier builds hold."""
        free = {r: sum(n.get(r, 0.0) for n in self.cluster.per_node) for r in ("GPU", "CPU")}
        for w in self.workers:
            for r, n in w.slot.demand().items():
                free[r] -= n
        for ref, f in self.pending.items():          # in submission order, as Ray queues them
            if f.kind != "quantize":
                continue
            demand = self._quantize_slot(f.job.cells[0]).demand()
            if ref not in self._clocks:
                if any(n > free[r] + 1e-9 for r, n in demand.items() if n > 0):
                    continue
                self._clocks[ref] = now
            for r, n in demand.items():
                free[r] -= n

    def _complete(self, ref) -> None:
        flight = self.pending.pop(ref)
        self._clocks.pop(ref, None)
        try:
            value, error, reason = self.ray.get(ref), None, None
        except Exception as exc:          # RayTaskError, RayActorError, OOM, lost node
            value, error, reason = None, _short_error(exc), _reason(exc)
        if flight.kind == "quantize":
            self._quantize_done(flight, value, error, reason)
            self._dispatch()
            return
        worker = flight.worker
        worker.busy = False
        if error is None:
            worker.node_id = value[1]["node_id"]
        if error is not None or not worker.reusable:
            self._retire(worker)          # a failed actor may be dead or broken: retries get a fresh one
        if error is not None:
            self._forget_lost_nodes()
        self._dispatch()                  # the next cell starts before this one's files are written
        self._cell_done(flight, value, error, reason)

    def _forget_lost_nodes(self) -> None:
        """After a failure: reread the cluster (a lost node shrinks what new workers can get) and
        retire idle workers that lived on a node that is gone, before they are handed a cell."""
        self.cluster = cluster_resources()
        for w in [w for w in self.workers if not w.busy and w.node_id and w.node_id not in self.cluster.node_ids]:
            self._retire(w)

    def _cancel_all(self) -> None:
        for ref, flight in list(self.pending.items()):
            if flight.kind == "quantize":
                with contextlib.suppress(Exception):   # already finished or its node is gone
                    self.ray.cancel(ref, force=True)
        self.pending.clear()

    def _quantize_done(self, flight: _Flight, manifest, error, reason: str | None = None) -> None:
        job = flight.job
        if error is None:
            if self.report is not None:
                self.report.quantizations += int(bool(manifest.get("built")))
            self._built[job.key] = manifest
            self.progress.end("finish", f"build:{job.key}", self.quantize_cost(job.cells[0]),
                              seconds=manifest.get("quantize_seconds", 0.0) if manifest.get("built") else 0.0)
            for c in job.cells:
                self.manifests[c.cell_id] = manifest
            scheduling.insert_by_cost(self.ready, job.cells, self.cost)
            return
        if flight.attempt <= self.res.max_retries:
            self.progress.end("retry", f"build:{job.key}", error=reason or _first_line(error))
            self._submit_quantize(job, flight.attempt + 1)
            return
        for c in job.cells:      # the artifact cannot be built: each of its cells fails with that error
            self._fail(c, self.attempts[c.cell_id], _now(), f"quantization failed: {error}", final=True,
                       reason=f"quantization failed: {reason or _first_line(error)}")
            self.finished += 1
        self.progress.end("fail", f"build:{job.key}", self.quantize_cost(job.cells[0]),
                          error=reason or _first_line(error))

    def _cell_done(self, flight: _Flight, outcome, error, reason: str | None = None) -> None:
        cell, attempt = flight.cell, flight.attempt
        report = self.report
        report.ran += 1
        if error is None:
            outcome, where = outcome
            run = {"status": "ok", "started_at": flight.started, **outcome.facts, **_placement_facts(where)}
            if self._record(cell, attempt, run, outcome.metrics, getattr(outcome, "tables", None)):
                report.placements.append({"cell_id": cell.cell_id, **where})
                report.succeeded += 1
            self.finished += 1
            self.progress.end("finish", f"cell:{cell.cell_id}", self.cost(cell), seconds=where["end"] - where["start"],
                              metrics=progress.first_values(outcome.metrics))
            return
        # counts failed attempts across reruns too (not attempt numbers: a crashed writer's claims leave gaps)
        failures = sum(r["status"] == "failed" for r in self.store.attempts().get(cell.cell_id, []))
        final = failures + 1 > self.res.max_retries
        self._fail(cell, attempt, flight.started, error, final, reason)
        retry = None if final else self.store.claim(cell.cell_id)   # the next attempt's number
        self.finished += retry is None    # final, or another writer has taken the cell over
        self.progress.end("retry" if retry else "fail", f"cell:{cell.cell_id}", self.cost(cell),
                          error=reason or _first_line(error))
        if retry is None:
            return
        self.attempts[cell.cell_id] = retry
        self.fresh_only.add(cell.cell_id)
        scheduling.insert_by_cost(self.ready, [cell], self.cost)
        self._dispatch()

    def _fail(self, cell: Cell, attempt: int, started, error: str, final: bool, reason: str | None = None) -> None:
        """Every failed attempt is recorded, with a one-line reason beside the full error; only the
        last one counts as the cell's failure."""
        seconds = (_now() - started).total_seconds()
        reason = reason or _first_line(error)
        recorded = self._record(cell, attempt, {"status": "failed", "reason": reason, "error": error,
                                                "started_at": started, "seconds": seconds}, final=final)
        if final and recorded:
            self.report.failed += 1
            self.report.failures.append((f"{cell.model} {cell.label}", reason))


def _ray_accelerator_type(name: str | None) -> str | None:
    """The name Ray reports for the spec's accelerator (variants such as H100-PCIe are Ray's "H100")."""
    from matrix.hardware import ACCELERATORS
    return ACCELERATORS[name].ray_accelerator_type if name in ACCELERATORS else name


def _placement_facts(placement_: dict[str, Any]) -> dict[str, Any]:
    """The runs columns that say where Ray placed a cell: its node, and the GPU ids it pinned."""
    return {"node_id": placement_["node_id"], "gpu_ids": ",".join(placement_["gpu_ids"]) or None}


def _short_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-4000:]


_REASON_CHARS = 300


def _first_line(text: str | None) -> str:
    line = next((l.strip() for l in (text or "").splitlines() if l.strip()), "")
    return line if len(line) <= _REASON_CHARS else line[:_REASON_CHARS - 1] + "…"


def _reason(exc: BaseException) -> str:
    """The runs table's one-line reason: the exception's type and its message's first line (for an
    exception raised in a Ray task or actor, the original one, not Ray's wrapper)."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException) else exc
    message = _first_line(str(cause))
    return _first_line(f"{type(cause).__name__}: {message}" if message else type(cause).__name__)
