"""Sweep progress: the stage events workers send, the driver's sweep events, and how a terminal shows them.

Workers report stages (`jobs.stages.report`) into a small Ray actor, `EventBox`; the driver drains it in
its `ray.wait` loop and passes each step to `on_progress` as a `SweepEvent`. `SweepConsole` renders them:
on a terminal, rich's live display (an overall bar with an ETA from the cost estimates, one line per
running build or cell with its stage, a printed line per finished cell with its headline figures);
elsewhere one plain line per event, no bars. It also sums the time each stage took (worker clocks).
"""
from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

from rich.console import Console
from rich.progress import ProgressColumn
from rich.text import Text

from analysis.markdown import fmt_bytes


@dataclass(frozen=True)
class StageEvent:
    """A worker's report: `task` ("cell:<id>" or "build:<key>") entered `stage`; stage "" ends the task."""
    task: str
    stage: str
    detail: str = ""
    where: str = ""          # the worker's host (and GPUs)
    at: float = 0.0          # the worker's clock (time.time())


@dataclass(frozen=True)
class SweepEvent:
    """One step of a sweep, as the driver sees it. `work_*` are the scheduler's cost estimates (relative
    units): their ratio, against the elapsed time, gives the ETA."""
    kind: Literal["start", "begin", "stage", "finish", "fail", "retry"]
    task: str = ""
    label: str = ""
    done: int = 0
    total: int = 0
    work_done: float = 0.0
    work_total: float = 0.0
    stage: str = ""
    detail: str = ""
    where: str = ""
    at: float = 0.0                                  # the worker's clock, for stage events
    seconds: float = 0.0                             # a finished task's run time
    metrics: tuple[tuple[str, float], ...] = ()      # a finished cell's metrics (first value of each name)
    error: str = ""


def event_box():
    """A Ray actor that holds workers' stage events until the driver drains them (0 CPUs: it only queues)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class EventBox:
        def __init__(self):
            self.events: list[StageEvent] = []

        def put(self, event: StageEvent) -> None:
            self.events.append(event)

        def drain(self) -> list[StageEvent]:
            out, self.events = self.events, []
            return out

    return EventBox.remote()


def _where() -> str:
    import ray
    gpus = ray.get_gpu_ids()
    return socket.gethostname() + (f" gpu {','.join(map(str, gpus))}" if gpus else "")


@contextlib.contextmanager
def stages_to(box, task: str) -> Iterator[None]:
    """Inside a worker: send this block's `jobs.stages` reports to `box` (fire and forget); at the end, one
    synchronous end event, so the driver has all of a task's events before it sees the task finish."""
    from jobs.stages import reporting

    if box is None:
        yield
        return
    import ray
    where = _where()

    def send(stage: str, detail: str) -> None:
        box.put.remote(StageEvent(task, stage, detail, where, time.time()))
    try:
        with reporting(send):
            yield
    finally:
        with contextlib.suppress(Exception):      # progress never fails a task
            ray.get(box.put.remote(StageEvent(task, "", "", where, time.time())), timeout=10)


class SweepTracker:
    """The driver's side: scheduling steps and drained stage events as `SweepEvent`s for `on_progress`,
    each with the sweep's counts (`counts()` -> (done, total)) and the estimated work done so far."""

    def __init__(self, on_progress: Callable[[SweepEvent], None] | None, box, counts: Callable[[], tuple[int, int]]):
        self.on_progress, self.box, self.counts = on_progress, box, counts
        self.work_done = self.work_total = 0.0
        self.multi_model = False
        self.labels: dict[str, str] = {}

    def _emit(self, kind: str, task: str = "", **fields: Any) -> None:
        if self.on_progress is None:
            return
        done, total = self.counts()
        self.on_progress(SweepEvent(kind, task, self.labels.get(task, ""), done, total, self.work_done,
                                    self.work_total, **fields))

    def label(self, cell) -> str:
        return f"{cell.model} {cell.label}" if self.multi_model else cell.label

    def start(self, cells, work_total: float) -> None:
        self.multi_model = len({c.model for c in cells}) > 1
        self.work_total = work_total
        self._emit("start")

    def begin(self, task: str, label: str, where: str = "") -> None:
        self.labels[task] = label
        self._emit("begin", task, where=where)

    def drain(self) -> None:
        """Pass on the stage events workers have sent since the last call."""
        if self.box is None:
            return
        import ray
        with contextlib.suppress(Exception):       # progress never stops a sweep
            for e in ray.get(self.box.drain.remote(), timeout=10):
                self._emit("stage", e.task, stage=e.stage, detail=e.detail, where=e.where, at=e.at)

    def end(self, kind: str, task: str, work: float = 0.0, **fields: Any) -> None:
        """A task finished ("finish"), failed for good ("fail", its work counts as done) or will retry."""
        if kind != "retry":
            self.work_done += work
        self._emit(kind, task, **fields)


def first_values(metrics) -> tuple[tuple[str, float], ...]:
    """(metric, value) pairs of a cell's metrics table (matrix.results.METRIC_SCHEMA), the first of each name."""
    out: dict[str, float] = {}
    for name, value in zip(metrics.column("metric").to_pylist(), metrics.column("value").to_pylist()):
        out.setdefault(name, value)
    return tuple(out.items())


# -- rendering ---------------------------------------------------------------------------------------

# the headline figures of a finished cell: metric -> (label, format); bytes as the leaderboard shows them
HEADLINE: dict[str, tuple[str, Any]] = {
    "perplexity": ("ppl", "{:.2f}".format),
    "decode_tokens_per_s": ("decode", lambda v: f"{v:.1f} tok/s"),
    "weight_bytes": ("weights", fmt_bytes),
}


def headline(metrics: tuple[tuple[str, float], ...]) -> str:
    values = dict(metrics)
    return ", ".join(f"{label} {fmt(values[m])}" for m, (label, fmt) in HEADLINE.items() if m in values)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class StageClock:
    """Seconds per stage summed over tasks, from each task's consecutive stage events (worker clocks)."""
    seconds: dict[str, float] = field(default_factory=dict)
    _open: dict[str, tuple[str, float]] = field(default_factory=dict)    # task -> (stage, since)
    _build_stages: dict[str, None] = field(default_factory=dict)

    def add(self, task: str, stage: str, at: float) -> None:
        held = self._open.get(task)
        if held is not None and held[0] == stage:
            return                                   # a new detail within the same stage
        if held is not None:
            self.seconds[held[0]] = self.seconds.get(held[0], 0.0) + max(0.0, at - held[1])
        if stage:
            self._open[task] = (stage, at)
            self.seconds.setdefault(stage, 0.0)          # first seen, first listed
            if task.startswith("build:"):
                self._build_stages.setdefault(stage)
        else:
            self._open.pop(task, None)

    def forget(self, task: str) -> None:
        self._open.pop(task, None)

    def summary(self) -> str:
        """The builds' stages first, then the cells', each in the order they were first seen."""
        order = list(self._build_stages) + [s for s in self.seconds if s not in self._build_stages]
        return ", ".join(f"{name} {self.seconds[name]:.1f} s" for name in order)


class _OverallOnly(ProgressColumn):
    """A column shown on the overall bar only: a running task's line is its text alone."""

    def __init__(self, column: ProgressColumn):
        super().__init__()
        self.column = column

    def render(self, task) -> Any:
        return self.column.render(task) if task.fields.get("overall") else Text("")


class SweepConsole:
    """`on_progress` for `run_sweep`, rendering to `console`: live on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console, name: str):
        self.console, self.name = console, name
        self.live = console.is_terminal
        self.clock = StageClock()
        self.start = time.monotonic()
        self.where: dict[str, str] = {}         # task -> the host its worker reported
        self._progress = None
        self._overall = None
        self._rows: dict[str, Any] = {}

    def __enter__(self) -> "SweepConsole":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("{task.description}", markup=False),
                                      *(_OverallOnly(c) for c in (BarColumn(), MofNCompleteColumn(),
                                                                   TimeElapsedColumn(), TextColumn("{task.fields[eta]}"))),
                                      console=self.console, transient=False)
            self._progress.__enter__()
            self._overall = self._progress.add_task(f"sweep {self.name}", total=None, eta="", overall=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            for row in self._rows.values():
                self._progress.remove_task(row)
            self._rows.clear()
            self._progress.__exit__(*exc)

    def eta(self, e: SweepEvent) -> str:
        if e.work_done <= 0 or e.work_total <= e.work_done:
            return ""
        elapsed = time.monotonic() - self.start
        return f"ETA {_duration(elapsed * (e.work_total - e.work_done) / e.work_done)}"

    def __call__(self, e: SweepEvent) -> None:
        if e.kind == "stage":
            self.clock.add(e.task, e.stage, e.at)
            if not e.stage:
                return
            self.where[e.task] = e.where
        if e.kind == "start":
            self.start = time.monotonic()      # the ETA counts from the first submission, not from planning
        if e.kind in ("fail", "retry"):
            self.clock.forget(e.task)          # a retry starts its stages afresh
        if self.live:
            self._live(e, e.label)
        else:
            self._plain(e, e.label)

    def _status(self, e: SweepEvent, label: str) -> str:
        where = self.where.get(e.task) or e.where
        stage = " ".join(x for x in (e.stage, e.detail) if x)
        return " · ".join(x for x in (label, where, stage) if x)

    def _finished(self, e: SweepEvent, label: str) -> str:
        if e.kind == "finish":
            figures = headline(e.metrics)
            took = f" ({e.seconds:.1f} s)" if e.seconds else " (cached)" if e.task.startswith("build:") else ""
            return f"done {label}" + (f": {figures}" if figures else "") + took
        if e.kind == "retry":
            return f"retry {label}: {e.error}"
        return f"failed {label}: {e.error}"

    def _plain(self, e: SweepEvent, label: str) -> None:
        counts = f"[{e.done}/{e.total}]"
        eta = self.eta(e)
        if e.kind == "start":
            line = f"sweep {self.name}: {e.total} cell{'' if e.total == 1 else 's'} to run; artifact builds start first"
        elif e.kind in ("begin", "stage"):
            line = f"{counts} {'started ' if e.kind == 'begin' else ''}{self._status(e, label)}"
        else:
            line = f"{counts} {self._finished(e, label)}" + (f"; {eta}" if eta else "")
        print(line, file=self.console.file, flush=True)

    def _live(self, e: SweepEvent, label: str) -> None:
        p = self._progress
        p.update(self._overall, completed=e.done, total=e.total or None, eta=self.eta(e))
        if e.kind in ("begin", "stage"):
            row = self._rows.get(e.task)
            text = "  " + self._status(e, label)
            if row is None:
                self._rows[e.task] = p.add_task(text, total=None, eta="")
            else:
                p.update(row, description=text)
        elif e.kind in ("finish", "fail", "retry"):
            row = self._rows.pop(e.task, None)
            if row is not None:
                p.remove_task(row)
            style = {"finish": "green", "fail": "red", "retry": "yellow"}[e.kind]
            p.console.print(Text(self._finished(e, label), style=style))   # Text: labels and errors are not markup
