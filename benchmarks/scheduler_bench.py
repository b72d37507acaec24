"""Scheduler benchmark: synthetic cells of known durations through the sweep driver's own scheduler.

A simulated cluster (ray.cluster_utils.Cluster on this machine: NODES nodes x GPUS_PER_NODE declared
GPUs) runs CELLS sleep-based cells whose durations come from a fixed-seed log-normal distribution,
through cluster.driver._Scheduler (one fresh actor per cell, ray.wait streaming, a real ResultStore),
with only the per-cell work injected (run_fn) and longest-first ordering (cost_fn = known duration).

Prints makespan / ideal, where ideal = max(sum(durations) / GPUs, max(duration)), and the driver's
overhead per cell: wall time spent outside ray.wait (submitting, recording to the store) and the
driver process's CPU time, both per cell, in ms.

    .venv/bin/python benchmarks/scheduler_bench.py [--cells 500] [--nodes 4] [--gpus-per-node 8]
                                                   [--mean-seconds 4] [--order longest|spec]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from analysis.store import ResultStore  # noqa: E402
from cluster.driver import SweepReport, _Scheduler  # noqa: E402
from cluster.ray_runtime import connect  # noqa: E402
from matrix import Cell  # noqa: E402
from matrix.spec import ResourcesSpec  # noqa: E402


def synthetic_cells(n: int, mean: float, seed: int) -> tuple[list[Cell], dict[str, float]]:
    """n distinct baseline cells (distinct ids through an option) and a duration for each."""
    rng = random.Random(seed)
    sigma = 0.6                                   # log-normal: most cells near the mean, a long tail
    mu = __import__("math").log(mean) - sigma ** 2 / 2
    cells, durations = [], {}
    for i in range(n):
        c = Cell(model="synthetic", revision=None, method="none", backend="none", bits=16, group_size=None,
                 options=(("i", i),), kv_cache_dtype="auto", engine="transformers", calibration=None,
                 evaluation='{"synthetic": {}}')
        cells.append(c)
        durations[c.cell_id] = min(rng.lognormvariate(mu, sigma), 6 * mean)
    return cells, durations


# jobs.run_cell's CellOutcome and METRIC_SCHEMA, restated: importing jobs.run_cell imports torch and
# transformers, seconds of CPU in every fresh actor, which is not what this measures.
METRIC_SCHEMA = pa.schema([("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
                           ("direction", pa.string()), ("settings", pa.string())])


@dataclass(frozen=True)
class CellOutcome:
    metrics: pa.Table
    facts: dict


def make_run_fn(durations: dict[str, float]):
    def run_fn(cell, manifest):
        d = durations[cell.cell_id]
        time.sleep(d)
        table = pa.Table.from_pylist([{"metric": "sleep_seconds", "value": d, "unit": "s", "direction": "lower",
                                       "settings": "{}"}], schema=METRIC_SCHEMA)
        return CellOutcome(table, {"host": os.uname().nodename, "device": "declared-gpu", "seconds": d})
    return run_fn


class _TimedRay:
    """The ray module, with the time the driver spends blocked in ray.wait counted."""

    def __init__(self, ray):
        self._ray, self.waiting = ray, 0.0

    def wait(self, *a, **k):
        t = time.perf_counter()
        try:
            return self._ray.wait(*a, **k)
        finally:
            self.waiting += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._ray, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--mean-seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", choices=("longest", "spec"), default="longest")
    args = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                            "include_dashboard": False})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=args.gpus_per_node, num_gpus=args.gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        res = connect(cluster.address)
        gpus = int(res.gpus)
        cells, durations = synthetic_cells(args.cells, args.mean_seconds, args.seed)
        ideal = max(sum(durations.values()) / gpus, max(durations.values()))
        with tempfile.TemporaryDirectory(prefix="qmx-bench-") as tmp:
            store = ResultStore(Path(tmp), "scheduler-bench")
            report = SweepReport("scheduler-bench", len(cells), 0, 0)
            sched = _Scheduler(store, res, ResourcesSpec(cpus_per_cell=1, max_retries=1), report, None,
                               run_fn=make_run_fn(durations), quantize_fn=lambda cell: {},
                               cost_fn=(lambda c: durations[c.cell_id]) if args.order == "longest" else None)
            sched.ray = timed = _TimedRay(ray)
            cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
            sched.run(cells)
            makespan = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            recorded = sum(1 for rows in store.attempts().values() for r in rows if r["status"] == "ok")
        starts = sorted(p["start"] for p in report.placements)
        lines = [
            f"cluster: {args.nodes} nodes x {args.gpus_per_node} declared GPUs = {gpus} GPUs "
            f"(ray.cluster_utils.Cluster on one machine, {os.cpu_count()} CPU cores)",
            f"cells: {len(cells)} sleep cells, log-normal durations mean {args.mean_seconds:.1f} s "
            f"(seed {args.seed}): sum {sum(durations.values()):.1f} s, max {max(durations.values()):.1f} s; "
            f"order: {'longest-first' if args.order == 'longest' else 'spec'}",
            f"ok: {report.succeeded}/{len(cells)} (recorded ok runs {recorded}), failed {report.failed}",
            f"ideal: {ideal:.1f} s = max(sum/{gpus}, max)",
            f"makespan: {makespan:.1f} s",
            f"makespan / ideal: {makespan / ideal:.3f}",
            f"first cell began {starts[0] - wall0:.1f} s after submit; "
            f"last cell began at {starts[-1] - starts[0]:.1f} s",
            f"driver overhead per cell (wall outside ray.wait: submit + record): "
            f"{(makespan - timed.waiting) / len(cells) * 1000:.1f} ms",
            f"driver CPU per cell: {cpu / len(cells) * 1000:.1f} ms",
        ]
        print("\n".join(lines))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
