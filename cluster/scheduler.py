"""The scheduler: streams a sweep's work through Ray and every finished attempt to its recorder.

Quantization runs as a Ray task once per artifact key, submitted first (the long poles). Cells run on a
pool of long-lived worker actors (`cluster.workers`), one per resource slot, each keeping its loaded
engine so that cells with the same engine key run back to back without reloading (engines that cannot
be unloaded in-process, vLLM, get a fresh actor per cell). Ray does the pinning (`cluster.placement`);
the ordering and routing decisions are pure (`cluster.scheduling`); claims, attempt numbers and writes
belong to `cluster.recorder`. A failing cell is retried on a fresh actor and then recorded as failed;
a cell or build that runs past its time limit is killed and fails as any failure does.

What runs is a `Work`: the sweep's (`cluster.workers.JobsWork`) or any other that implements the
protocol (the scheduler benchmark's sleeps, the fault tests' misbehaving cells).
"""
from __future__ import annotations

import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from cluster import placement, progress, scheduling
from cluster.interrupt import SweepInterrupted
from cluster.placement import Slot
from cluster.ray_runtime import ClusterResources, cluster_resources
from cluster.recorder import Recorder, now
from cluster.runtime_envs import stage_runtime_env
from matrix import Cell, SkippedCell
from matrix.results import CellOutcome, Manifest
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


class Work(Protocol):
    """What the scheduler runs. `quantize` runs in a Ray task and `run` in a worker actor (the object
    travels there, pickled once per sweep); the rest are asked on the driver, `cost` once per cell."""

    def quantize(self, cell: Cell) -> Manifest: ...
    def run(self, cell: Cell, manifest: Manifest | None, state: dict[str, Any]) -> CellOutcome: ...
    def needs_artifact(self, cell: Cell) -> bool: ...      # a build must run before the cell
    def reusable(self, cell: Cell) -> bool: ...            # its engine may stay loaded for the next cell
    def cost(self, cell: Cell) -> float: ...               # estimated run time (orders work, sets limits)
    def quantize_cost(self, cell: Cell) -> float: ...


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
    started: datetime
    job: scheduling.QuantizeJob | None = None
    try_: int = 1                               # a build's try (builds are not store attempts)
    cell: Cell | None = None
    worker: _Worker | None = None
    limit_s: float = math.inf                   # its time limit, counted from when it could start


class Scheduler:
    """Streams work through Ray: quantize tasks per artifact key, then cells on a worker pool."""

    def __init__(self, recorder: Recorder, cluster: ClusterResources, res: ResourcesSpec, work: Work | None = None,
                 *, report: SweepReport | None = None,
                 on_progress: Callable[[progress.SweepEvent], None] | None = None):
        import ray

        from cluster import workers

        self.work: Work = work if work is not None else workers.JobsWork()
        self.ray, self.recorder, self.cluster, self.res = ray, recorder, cluster, res
        self.report = report if report is not None else SweepReport("", 0, 0, 0)
        # workers' stage reports reach the driver through a small actor, only when someone listens
        self.events = progress.event_box() if on_progress is not None else None
        self.progress = progress.SweepTracker(on_progress, self.events, lambda: (self.finished, self.total))
        self.stop: Callable[[], bool] = lambda: False
        self.waited_s = 0.0                         # time the loop spent blocked in ray.wait
        self._costs: dict[str, float] = {}
        self._slots: dict[str, Slot] = {}
        self.gpu_cluster = cluster.gpus > 0
        self.accelerator_spec = getattr(res, "accelerator_type", None)
        self.accelerator = _ray_accelerator_type(self.accelerator_spec)
        self.serve_env = stage_runtime_env(res, "serve")
        self.quantize_env = stage_runtime_env(res, "quantize")
        self._workers_mod = workers
        self._work_ref = None                       # the work, put in the object store at the first submit
        self.pending: dict[Any, _Flight] = {}
        self.workers: list[_Worker] = []
        self.ready: list[Cell] = []                 # longest first
        self.manifests: dict[str, Manifest | None] = {}
        self.fresh_only: set[str] = set()           # retries: never on a worker that already ran something
        self.finished = self.total = 0
        self.watching: dict[str, Cell] = {}         # cells another live writer holds
        self._watch_at = 0.0
        self._built: dict[str, Manifest] = {}       # artifact key -> manifest, for cells taken over later
        self._clocks: dict[Any, float] = {}         # ref -> monotonic time its time limit counts from

    def cost(self, cell: Cell) -> float:
        """The cell's estimated run time, computed once (ordering compares it often)."""
        value = self._costs.get(cell.cell_id)
        if value is None:
            value = self._costs[cell.cell_id] = self.work.cost(cell)
        return value

    def _work(self):
        if self._work_ref is None:
            self._work_ref = self.ray.put(self.work)
        return self._work_ref

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
        slots |= {self._quantize_slot(c) for c in cells if self.work.needs_artifact(c)}
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

    def _submit_quantize(self, job: scheduling.QuantizeJob, try_: int) -> None:
        opts = placement.ray_options(self._quantize_slot(job.cells[0]), self.quantize_env)
        task = self._workers_mod.GPU_QUANTIZE_TASK if opts.get("num_gpus") else self._workers_mod.QUANTIZE_TASK
        ref = task.options(**opts, name=f"quantize:{job.key}").remote(self._work(), job.cells[0], self.events)
        self.progress.begin(f"build:{job.key}", f"build {self.progress.label(job.cells[0])}")
        limit = scheduling.time_limit(self.work.quantize_cost(job.cells[0]), scheduling.QUANTIZE_TIMEOUT_FLOOR_S,
                                      self.res.quantize_timeout_s)
        self.pending[ref] = _Flight("quantize", now(), job=job, try_=try_, limit_s=limit)

    def _spawn(self, slot: Slot, cell: Cell) -> _Worker:
        pg = None
        if slot.gang:
            from ray.util.placement_group import placement_group
            pg = placement_group(placement.gang_bundles(slot), strategy="STRICT_PACK")
        actor = self._workers_mod.CellWorker.options(**placement.ray_options(slot, self.serve_env, pg)) \
            .remote(self._work())
        worker = _Worker(actor, slot, pg, reusable=self.work.reusable(cell), starting=actor.__ray_ready__.remote())
        self.workers.append(worker)
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
        ref = worker.actor.run.remote(cell, self.manifests.get(cell.cell_id), self.events)
        self.progress.begin(f"cell:{cell.cell_id}", self.progress.label(cell))
        worker.busy, worker.engine_key = True, cell.engine_key
        limit = scheduling.time_limit(self.cost(cell), scheduling.CELL_TIMEOUT_FLOOR_S, self.res.cell_timeout_s)
        self.pending[ref] = _Flight("cell", now(), cell=cell, worker=worker, limit_s=limit)
        if worker.starting is None:
            self._clocks[ref] = time.monotonic()

    def _dispatch(self) -> None:
        """Keep every slot busy: idle workers take the next cell (reusing their engine where they
        can), new workers start while the cluster has room, idle workers nobody needs are retired."""
        for w in [w for w in self.workers if not w.busy]:
            def fits(c: Cell, w: _Worker = w) -> bool:
                return (self._cell_slot(c) == w.slot and w.reusable and self.work.reusable(c)
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

    def run(self, todo: list[Cell], stop: Callable[[], bool] | None = None) -> None:
        """Run the cells to the end (each finished, failed, or finished by another writer); `stop()`
        true (Ctrl-C) raises SweepInterrupted with nothing left running on the cluster."""
        if stop is not None:
            self.stop = stop
        self.total, self.finished = len(todo), 0
        with self.recorder.owning():      # unreleased claims are free again when this returns
            builds = {c.artifact_key: c for c in todo if self.work.needs_artifact(c)}
            self.progress.start(todo, sum(map(self.cost, todo)) + sum(map(self.work.quantize_cost, builds.values())))
            self._enqueue(self._claim(todo))
            try:
                self._dispatch()
                while self.pending or self.watching:
                    if self.stop():
                        raise SweepInterrupted(self.finished, self.total)
                    if self.pending:
                        t = time.perf_counter()
                        done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
                        self.waited_s += time.perf_counter() - t
                        self.progress.drain()       # a task's stages before its end (sent before it returned)
                        for ref in done:
                            self._complete(ref)
                    else:
                        time.sleep(0.5)
                    self._expire()
                    self._watch()
                for cell in self.ready:       # only when lost nodes left no node that can hold them
                    self._fail(cell, now(), "no alive node offers the resources this cell needs", final=True)
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
            if self.recorder.claim(c):
                mine.append(c)
            elif self.recorder.is_finished(c):
                self.finished += 1
                self.report.elsewhere += 1
            else:
                self.watching[c.cell_id] = c
        return mine

    def _watch(self) -> None:
        """Watched cells: finished when their holder has finished them, ours when it let go or died."""
        if not self.watching or time.monotonic() < self._watch_at:
            return
        self._watch_at = time.monotonic() + min(2.0, self.recorder.claim_timeout_s / 4)
        watched = list(self.watching.values())
        self.watching.clear()
        taken = self._claim(watched)
        if taken:
            self._enqueue(taken)
            self._dispatch()

    def _enqueue(self, cells: list[Cell]) -> None:
        jobs, ready = scheduling.quantize_jobs(cells, self.work.needs_artifact, self.cost, self.work.quantize_cost)
        for job in jobs:                 # artifact builds first: they are the long poles
            manifest = self._built.get(job.key)
            if manifest is None:
                self._submit_quantize(job, 1)
                continue
            for c in job.cells:          # taken over after its artifact was built here
                self.manifests[c.cell_id] = manifest
            ready.extend(job.cells)
        scheduling.insert_by_cost(self.ready, ready, self.cost)

    # -- time limits -----------------------------------------------------------------------------

    def _expire(self) -> None:
        """Kill what ran past its time limit; the attempt fails as any failure does, and is retried."""
        now_ = time.monotonic()
        self._start_build_clocks(now_)
        for ref, flight in self.pending.items():       # a cell's limit counts from when its actor is up
            w = flight.worker
            if w is not None and ref not in self._clocks and (
                    w.starting is None or self.ray.wait([w.starting], timeout=0)[0]):
                w.starting, self._clocks[ref] = None, now_
        for ref, flight in list(self.pending.items()):
            began = self._clocks.get(ref)
            if began is None or now_ - began < flight.limit_s:
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

    def _start_build_clocks(self, now_: float) -> None:
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
                self._clocks[ref] = now_
            for r, n in demand.items():
                free[r] -= n

    # -- results ---------------------------------------------------------------------------------

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

    def _quantize_done(self, flight: _Flight, manifest: Manifest | None, error, reason: str | None = None) -> None:
        job = flight.job
        if error is None:
            self.report.quantizations += int(manifest.built)
            self._built[job.key] = manifest
            self.progress.end("finish", f"build:{job.key}", self.work.quantize_cost(job.cells[0]),
                              seconds=(manifest.quantize_seconds or 0.0) if manifest.built else 0.0)
            for c in job.cells:
                self.manifests[c.cell_id] = manifest
            scheduling.insert_by_cost(self.ready, job.cells, self.cost)
            return
        if flight.try_ <= self.res.max_retries:
            self.progress.end("retry", f"build:{job.key}", error=reason or _first_line(error))
            self._submit_quantize(job, flight.try_ + 1)
            return
        for c in job.cells:      # the artifact cannot be built: each of its cells fails with that error
            self._fail(c, now(), f"quantization failed: {error}", final=True,
                       reason=f"quantization failed: {reason or _first_line(error)}")
            self.finished += 1
        self.progress.end("fail", f"build:{job.key}", self.work.quantize_cost(job.cells[0]),
                          error=reason or _first_line(error))

    def _cell_done(self, flight: _Flight, value, error, reason: str | None = None) -> None:
        cell, report = flight.cell, self.report
        report.ran += 1
        if error is None:
            outcome, where = value
            if self.recorder.succeeded(cell, flight.started, outcome, where):
                report.placements.append({"cell_id": cell.cell_id, **where})
                report.succeeded += 1
            self.finished += 1
            self.progress.end("finish", f"cell:{cell.cell_id}", self.cost(cell), seconds=where["end"] - where["start"],
                              metrics=progress.first_values(outcome.metrics))
            return
        final = self.recorder.failures(cell) + 1 > self.res.max_retries
        self._fail(cell, flight.started, error, final, reason)
        retry = not final and self.recorder.retry(cell)
        self.finished += not retry        # final, or another writer has taken the cell over
        self.progress.end("retry" if retry else "fail", f"cell:{cell.cell_id}", self.cost(cell),
                          error=reason or _first_line(error))
        if not retry:
            return
        self.fresh_only.add(cell.cell_id)
        scheduling.insert_by_cost(self.ready, [cell], self.cost)
        self._dispatch()

    def _fail(self, cell: Cell, started: datetime, error: str, final: bool, reason: str | None = None) -> None:
        """Only the last failed attempt counts as the cell's failure."""
        reason = reason or _first_line(error)
        if self.recorder.failed(cell, started, error, reason, final) and final:
            self.report.failed += 1
            self.report.failures.append((f"{cell.model} {cell.label}", reason))


def _ray_accelerator_type(name: str | None) -> str | None:
    """The name Ray reports for the spec's accelerator (variants such as H100-PCIe are Ray's "H100")."""
    from matrix.hardware import ACCELERATORS
    return ACCELERATORS[name].ray_accelerator_type if name in ACCELERATORS else name


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
