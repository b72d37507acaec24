"""Scheduler benchmark: synthetic cells of known durations through the sweep driver's own scheduler.

A simulated cluster of declared GPUs (one Ray node with 32 GPUs by default, or --nodes N of a
ray.cluster_utils.Cluster) runs CELLS sleep-based cells through the sweep's own cluster.scheduler.Scheduler:
the worker-actor pool, engine-key routing, longest-first order, quantize-before-cells dependencies,
ray.wait streaming, and a real ResultStore behind a real Recorder. Only the work differs: `SleepWork`
implements the scheduler's `Work` protocol, its `run` sleeps the cell's duration, its `quantize`
sleeps its artifact's build time, and its cost estimates are the known durations. Some cells share
an artifact key (KEYS keys x CELLS_PER_KEY cells, each key one synthetic quantize step); the rest need
no artifact.

    ideal = max(total work / GPUs, longest chain)
      total work    = sum of cell durations + sum of quantize durations (each holds one GPU)
      longest chain = max(a key's quantize + its longest cell, the longest artifact-free cell)
    driver overhead per cell = (wall time outside ray.wait) / cells, and driver CPU time / cells

The cluster is warmed first (Ray's idle worker processes started, as on a cluster that has run
anything before). Each GPU build and each worker actor still starts a process of its own; that
start-up is inside the measured makespan.

    .venv/bin/python benchmarks/scheduler_bench.py [--cells 500] [--gpus 32] [--mean-seconds 12]
                                                   [--nodes 1] [--order longest|spec]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from analysis.store import ResultStore  # noqa: E402
from cluster.ray_runtime import cluster_resources  # noqa: E402
from cluster.recorder import Recorder  # noqa: E402
from cluster.scheduler import Scheduler, SweepReport  # noqa: E402
from matrix import Cell  # noqa: E402
from matrix.results import METRIC_SCHEMA, CellOutcome, Manifest, RunFacts  # noqa: E402
from matrix.spec import ResourcesSpec  # noqa: E402

KEYS, CELLS_PER_KEY = 40, 5                    # 200 cells behind 40 synthetic quantize steps


def _lognormal(rng: random.Random, mean: float, cap: float) -> float:
    sigma = 0.6                                 # most near the mean, a long tail
    return min(rng.lognormvariate(math.log(mean) - sigma ** 2 / 2, sigma), cap)


def synthetic_work(n: int, mean: float, seed: int) -> tuple[list[Cell], dict[str, float], dict[str, float]]:
    """n distinct cells, their durations, and a build time per artifact key of the artifact cells."""
    rng = random.Random(seed)
    cells, durations, builds = [], {}, {}
    for i in range(n):
        key = i // CELLS_PER_KEY if i < KEYS * CELLS_PER_KEY else None
        quantized = key is not None
        # cells of one key differ in evaluation settings only: one artifact, one engine key, distinct ids
        c = Cell(model="synthetic", revision=None, method="gptq" if quantized else "none",
                 backend="synthetic-artifact" if quantized else "none", bits=4 if quantized else 16,
                 group_size=128 if quantized else None, options=(("k", key if quantized else i),),
                 kv_cache_dtype="auto", engine="hf", calibration=(("samples", 16),) if quantized else None,
                 evaluation=json.dumps({"synthetic": {"i": i}}))
        cells.append(c)
        durations[c.cell_id] = _lognormal(rng, mean, 6 * mean)
        if quantized and c.artifact_key not in builds:
            builds[c.artifact_key] = _lognormal(rng, mean, 4 * mean)
    return cells, durations, builds


@dataclass(frozen=True)
class SleepWork:
    """cluster.scheduler.Work of known durations: a cell sleeps its duration, a build its artifact's.
    Each build leaves a line in `spans` (a folder on this machine): the GPU it held, when it ran."""
    durations: dict[str, float]
    builds: dict[str, float]
    spans: str
    longest_first: bool = True          # False: every cost 0, so cells run in spec order

    def run(self, cell: Cell, manifest: Manifest | None, state: dict) -> CellOutcome:
        d = self.durations[cell.cell_id]
        time.sleep(d)
        table = pa.Table.from_pylist([{"metric": "sleep_seconds", "value": d, "unit": "s", "direction": "lower",
                                       "settings": "{}"}], schema=METRIC_SCHEMA)
        return CellOutcome(table, RunFacts(host=os.uname().nodename, device="declared-gpu", seconds=d))

    def quantize(self, cell: Cell) -> Manifest:
        import ray   # where the build ran, for the idle-time breakdown

        began, seconds = time.time(), self.builds[cell.artifact_key]
        time.sleep(seconds)
        span = {"kind": "build", "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "start": began, "end": time.time()}
        with open(f"{self.spans}/{cell.artifact_key}.json", "w") as f:
            json.dump(span, f)
        return Manifest(cell.artifact_key, path=self.spans, format="synthetic", quantize_seconds=seconds, built=True)

    def needs_artifact(self, cell: Cell) -> bool:
        return cell.artifact_key in self.builds

    def reusable(self, cell: Cell) -> bool:
        return True

    def cost(self, cell: Cell) -> float:
        return self.durations[cell.cell_id] if self.longest_first else 0.0

    def quantize_cost(self, cell: Cell) -> float:
        return self.builds[cell.artifact_key]


def idle_breakdown(spans: list[dict], gpus: int, wall0: float, wall1: float) -> dict[str, float]:
    """GPU-seconds each declared GPU sat idle, by what it waited for: `spans` are the builds and cells
    with the GPU they held. A gap before a cell that follows a build is a new worker actor starting
    (workers start when a build frees its GPU); a gap between two cells is dispatch (result back,
    next cell out)."""
    by_gpu: dict[str, list[dict]] = {}
    for s in spans:
        by_gpu.setdefault(",".join(s["gpu_ids"]), []).append(s)
    idle = {"before first work": 0.0, "build -> first cell (actor start-up)": 0.0,
            "cell -> next cell (dispatch)": 0.0, "-> next build": 0.0, "after last work": 0.0}
    for seq in by_gpu.values():
        seq.sort(key=lambda s: s["start"])
        idle["before first work"] += seq[0]["start"] - wall0
        for a, b in zip(seq, seq[1:]):
            kind = "cell -> next cell (dispatch)" if a["kind"] == b["kind"] == "cell" else \
                "build -> first cell (actor start-up)" if a["kind"] == "build" and b["kind"] == "cell" else \
                "-> next build"
            idle[kind] += max(0.0, b["start"] - a["end"])
        idle["after last work"] += wall1 - seq[-1]["end"]
    idle["before first work"] += (gpus - len(by_gpu)) * (wall1 - wall0)     # GPUs never used
    return idle


class CpuSampler(threading.Thread):
    """This machine's CPU use (all processes: driver, Ray, workers), sampled once a second from /proc/stat:
    shows whether worker start-up is CPU-bound."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int]] = []      # (unix time, busy jiffies, all jiffies)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(1.0 if self.samples else 0.0):
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:]]
            self.samples.append((time.time(), sum(ticks) - ticks[3] - ticks[4], sum(ticks)))   # idle, iowait

    def busy(self, start: float, end: float) -> float:
        """Fraction of all cores busy between two unix times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        return (inside[-1][1] - inside[0][1]) / max(1, inside[-1][2] - inside[0][2]) if len(inside) > 1 else float("nan")


def start_cluster(nodes: int, gpus: int):
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if nodes <= 1:
        ray.init(address="local", num_cpus=gpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        return None
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=gpus // nodes, num_gpus=gpus // nodes)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    return cluster


def warm_up(gpus: int) -> float:
    """Start Ray's idle workers before the clock starts, as on a cluster that has run anything before.
    Builds and cells still start processes of their own inside the makespan: a GPU build exits after
    one call (the driver's max_calls=1: a reused process would keep the CUDA context of the GPU it had),
    and Ray never hosts an actor in a process that ran a task."""
    import ray

    t = time.perf_counter()

    @ray.remote
    def noop():
        time.sleep(0.5)
        return os.getpid()

    ray.get([noop.options(num_cpus=1, num_gpus=1).remote() for _ in range(gpus)])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--gpus", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--mean-seconds", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", choices=("longest", "spec"), default="longest")
    args = ap.parse_args()

    import ray

    cluster = start_cluster(args.nodes, args.gpus)
    try:
        warm = warm_up(args.gpus)
        res = cluster_resources()
        gpus = int(res.gpus)
        cells, durations, builds = synthetic_work(args.cells, args.mean_seconds, args.seed)
        by_key: dict[str, float] = {}
        for c in cells:
            if c.artifact_key in builds:
                by_key[c.artifact_key] = max(by_key.get(c.artifact_key, 0.0), durations[c.cell_id])
        work = sum(durations.values()) + sum(builds.values())
        chain = max([builds[k] + d for k, d in by_key.items()]
                    + [durations[c.cell_id] for c in cells if c.artifact_key not in builds])
        ideal = max(work / gpus, chain)
        with tempfile.TemporaryDirectory(prefix="qmx-bench-") as tmp:
            store = ResultStore(Path(tmp) / "results", "scheduler-bench")
            spans = Path(tmp) / "spans"
            spans.mkdir()
            report = SweepReport("scheduler-bench", len(cells), 0, 0)
            sleeps = SleepWork(durations, builds, str(spans), longest_first=args.order == "longest")
            sched = Scheduler(Recorder(store), res, ResourcesSpec(cpus_per_cell=1, max_retries=1), sleeps, report=report)
            sampler = CpuSampler()
            sampler.start()
            cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
            sched.run(cells)
            makespan = time.perf_counter() - t0
            wall1 = time.time()
            sampler.done.set()
            cpu = time.process_time() - cpu0
            recorded = sum(1 for rows in store.attempts().values() for r in rows if r["status"] == "ok")
            builds_run = [json.loads(p.read_text()) for p in spans.glob("*.json")]
        first_build = sorted(b["end"] for b in builds_run)
        starts = sorted(p["start"] for p in report.placements)
        idle = idle_breakdown(builds_run + [{**p, "kind": "cell"} for p in report.placements], gpus, wall0, wall1)
        busy = sum(p["end"] - p["start"] for p in report.placements) + sum(builds.values())
        lines = [
            f"cluster: {args.nodes} node(s), {gpus} declared GPUs ({os.cpu_count()} CPU cores on this machine; "
            f"warm-up {warm:.1f} s, not counted)",
            f"cells: {len(cells)} sleep cells, log-normal durations mean {args.mean_seconds:.1f} s (seed {args.seed}): "
            f"sum {sum(durations.values()):.1f} s, max {max(durations.values()):.1f} s; "
            f"{len(builds)} artifact keys x {CELLS_PER_KEY} cells, quantize sum {sum(builds.values()):.1f} s, "
            f"max {max(builds.values()):.1f} s; order: {'longest-first' if args.order == 'longest' else 'spec'}",
            f"ok: {report.succeeded}/{len(cells)} (recorded ok runs {recorded}), failed {report.failed}; "
            f"quantizations {report.quantizations}; worker actors started {report.workers_started}",
            f"ideal: {ideal:.1f} s = max(total work {work:.1f} s / {gpus} GPUs = {work / gpus:.1f} s, "
            f"longest chain {chain:.1f} s)",
            f"makespan: {makespan:.1f} s",
            f"makespan / ideal: {makespan / ideal:.3f} (target <= 1.10)",
            f"GPU busy fraction over the makespan: {busy / (gpus * makespan):.3f}",
            f"first build finished (worker clock) {first_build[0] - wall0:.1f} s after submit, last at {first_build[-1] - wall0:.1f} s; "
            f"first cell began at {starts[0] - wall0:.1f} s (actor start-up), last cell began at {starts[-1] - wall0:.1f} s",
            f"idle GPU-seconds ({gpus * makespan - busy:.0f} in all, {(gpus * makespan - busy) / gpus:.1f} s of makespan): "
            + ", ".join(f"{k} {v:.0f}" for k, v in idle.items()),
            f"machine CPU busy (all processes, {os.cpu_count()} cores): {sampler.busy(wall0, wall0 + 60):.0%} in the first 60 s "
            f"(builds and worker actors starting), {sampler.busy(wall0 + 60, wall1):.0%} after",
            f"driver overhead per cell (wall outside ray.wait: dispatch + record): "
            f"{(makespan - sched.waited_s) / len(cells) * 1000:.1f} ms (target < 50 ms)",
            f"driver CPU per cell: {cpu / len(cells) * 1000:.1f} ms (target < 50 ms)",
        ]
        print("\n".join(lines))
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
