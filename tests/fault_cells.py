"""Synthetic cells that misbehave on purpose, for tests/test_faults.py (importable by Ray workers).

A cell's options say what it does: `seconds` of sleep, and a `fault` its first attempt (first
build, for build faults) suffers: kill (SIGKILL of its own process), hang (SIGSTOP of it), oom (a
real allocation failure under an address-space limit). `dir` is a folder shared with the test:
each start leaves a line there (cell, pid, node), and a fault fires once per cell (an O_EXCL marker).

Run as a script it is a sweep driver of its own (`python tests/fault_cells.py drive ...`), so a test
can run two at once on one store, or kill one inside a Parquet write.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from matrix import Cell


def cells(n: int, folder: str, seconds: float = 0.2, fault: str | None = None, faulty: int = 1,
          artifact: bool = False) -> list[Cell]:
    """n distinct cells; the first `faulty` carry the fault. With `artifact`, each needs a build."""
    out = []
    for i in range(n):
        opts = {"i": i, "dir": folder, "seconds": seconds, **({"fault": fault} if fault and i < faulty else {})}
        out.append(Cell(model="synthetic", revision=None, method="gptq" if artifact else "none",
                        backend="synthetic", bits=4 if artifact else 16, group_size=None,
                        options=tuple(sorted(opts.items())), kv_cache_dtype="auto", engine="hf",
                        calibration=None, evaluation="{}"))
    return out


def _once(folder: str, tag: str) -> bool:
    """True the first time a tag is seen in the folder (across processes)."""
    try:
        os.close(os.open(f"{folder}/{tag}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _log_start(folder: str, what: str, cell: Cell) -> None:
    import ray
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    with open(f"{folder}/starts.jsonl", "a") as f:
        f.write(json.dumps({"what": what, "cell_id": cell.cell_id, "pid": os.getpid(), "node": node,
                            "t": time.time()}) + "\n")


def _misbehave(fault: str | None, folder: str, tag: str) -> None:
    if fault is None or not _once(folder, f"{fault}-{tag}"):
        return
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)       # stopped: it never answers again until killed
    elif fault == "oom":
        import resource

        import numpy as np
        status = Path("/proc/self/status").read_text().splitlines()
        vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + 64 * 2**20, resource.RLIM_INFINITY))
        np.ones(2**31, dtype=np.uint8)             # 2 GiB past a 64 MiB margin: MemoryError


def run_fn(cell: Cell, manifest, state):
    import pyarrow as pa

    from matrix.results import METRIC_SCHEMA, CellOutcome, RunFacts

    o = dict(cell.options)
    _log_start(o["dir"], "cell", cell)
    if cell.method == "none":
        _misbehave(o.get("fault"), o["dir"], cell.cell_id)
    time.sleep(o["seconds"])
    metrics = pa.Table.from_pylist([{"metric": "sleep_seconds", "value": o["seconds"], "unit": "s",
                                     "direction": "lower", "settings": "{}"}], schema=METRIC_SCHEMA)
    return CellOutcome(metrics, RunFacts(host=os.uname().nodename, device="cpu (synthetic)"))


def quantize_fn(cell: Cell):
    from matrix.results import Manifest

    o = dict(cell.options)
    _log_start(o["dir"], "build", cell)
    _misbehave(o.get("fault"), o["dir"], cell.artifact_key)
    time.sleep(o["seconds"])
    return Manifest(cell.artifact_key, path=o["dir"], format="synthetic", built=True, quantize_seconds=o["seconds"])


class FaultWork:
    """cluster.scheduler.Work: this module's cells, as their options say."""
    quantize = staticmethod(quantize_fn)
    run = staticmethod(run_fn)

    def needs_artifact(self, cell: Cell) -> bool:
        return cell.method != "none"

    def reusable(self, cell: Cell) -> bool:
        return True

    def cost(self, cell: Cell) -> float:
        return dict(cell.options)["seconds"]

    def quantize_cost(self, cell: Cell) -> float:
        from cluster.scheduling import estimate_quantize_cost
        return estimate_quantize_cost(cell)


def scheduler(store, cluster, resources, report):
    """The driver's own scheduler with this module's work (which travels to workers by value)."""
    import ray.cloudpickle

    from cluster.recorder import Recorder
    from cluster.scheduler import Scheduler

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return Scheduler(Recorder(store), cluster, resources, FaultWork(), report=report)


def _drive(args) -> None:
    """One sweep driver: the cells on the cluster at --address; prints its report and files as JSON."""
    import ray

    import analysis.store as store_mod
    from analysis.store import ResultStore
    from cluster.driver import SweepReport
    from cluster.ray_runtime import cluster_resources
    from matrix.spec import ResourcesSpec

    written: list[str] = []
    real_write = store_mod.pq.write_table

    def write_table(table, where, **kw):
        written.append(Path(str(where)).name)
        if args.kill_at_write and len(written) == args.kill_at_write:
            real_write(table, where, **kw)
            os.truncate(where, os.path.getsize(where) // 2)     # half a file on disk, then the process dies
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(table, where, **kw)

    store_mod.pq.write_table = write_table
    ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    work = cells(args.cells, args.dir, args.seconds)
    store = ResultStore(args.results, "faults")
    report = SweepReport("faults", len(work), 0, 0)
    scheduler(store, cluster_resources(), ResourcesSpec(cpus_per_cell=1, max_retries=1), report).run(work)
    print(json.dumps({"succeeded": report.succeeded, "failed": report.failed, "elsewhere": report.elsewhere,
                      "written": written}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["drive"])
    p.add_argument("--results", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cells", type=int, default=6)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--kill-at-write", type=int, default=0)
    _drive(p.parse_args())
