"""Sweeps on a multi-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster).

A head with no resources and two worker nodes that each declare 2 CPUs and 2 GPUs. The GPUs are
declared only: Ray pins them (CUDA_VISIBLE_DEVICES, ray.get_gpu_ids()), torch sees no CUDA and the
tiny model runs on CPU. Checks that cells spread over the nodes, that each cell holds exactly one
GPU that no concurrently running cell holds, and that losing a node mid-sweep costs retries only.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import pytest

from analysis.store import ResultStore
from cluster.driver import PlacementError, run_sweep
from cluster.ray_runtime import cluster_resources
from cluster.recorder import Recorder
from cluster.scheduler import Scheduler, SweepReport
from cluster.scheduling import estimate_cost, estimate_quantize_cost
from matrix.results import METRIC_SCHEMA, CellOutcome, Manifest, RunFacts
from matrix import Cell
from matrix.spec import parse_spec

from conftest import tiny_spec

# the injected run/quantize functions below travel to Ray workers by value: this module is not importable there
import ray.cloudpickle  # noqa: E402
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

WORKERS, GPUS_PER_WORKER = 2, 2
ACCELERATOR_TYPES = ("L4", "H100")          # worker 0, worker 1


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():       # another module's embedded Ray: this one must join the cluster instead
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
        # notice a lost node in ~1.5 s rather than the default ~30 s
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3},
    })
    # a heterogeneous cluster: Ray exposes each node's GPU type as the resource accelerator_type:<T>
    workers = [c.add_node(num_cpus=2, num_gpus=GPUS_PER_WORKER, resources={f"accelerator_type:{t}": 1})
               for t in ACCELERATOR_TYPES]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _runs(results, sweep: str) -> list[dict]:
    return pq.read_table(results / "runs" / f"sweep={sweep}").to_pylist()


def test_cells_spread_over_nodes_each_pinned_to_its_own_gpu(cluster, tmp_path):
    c, workers = cluster
    spec = parse_spec(tiny_spec("multinode", kv_cache_dtype=["auto"]))
    report = run_sweep(spec, tmp_path)
    assert (report.cells, report.succeeded, report.failed) == (4, 4, 0)

    worker_ids = {w.node_id for w in workers}
    placements = report.placements
    assert len(placements) == 4
    assert {p["node_id"] for p in placements} <= worker_ids          # nothing on the GPU-less head
    assert len({p["node_id"] for p in placements}) == WORKERS         # spread over both workers
    for p in placements:
        assert len(p["gpu_ids"]) == 1                                  # tensor_parallel_size 1: one GPU
        assert 0 <= int(p["gpu_ids"][0]) < GPUS_PER_WORKER
    # cells that overlapped in time never held the same GPU of the same node
    for i, a in enumerate(placements):
        for b in placements[i + 1:]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert (a["node_id"], a["gpu_ids"]) != (b["node_id"], b["gpu_ids"]), (a, b)

    # the same placement is in the results' runs columns node_id and gpu_ids
    ok = [r for r in _runs(tmp_path, "multinode") if r["status"] == "ok"]
    by_cell = {p["cell_id"]: p for p in placements}
    for r in ok:
        p = by_cell[r["cell_id"]]
        assert (r["node_id"], r["gpu_ids"]) == (p["node_id"], p["gpu_ids"][0])
    assert len({r["node_id"] for r in ok}) == WORKERS


def test_tensor_parallel_cell_holds_two_gpus_of_one_node_of_the_asked_type(cluster, tmp_path):
    c, workers = cluster
    spec = parse_spec(tiny_spec("tp2-h100", models=[{"id": "builtin:tiny-llama", "tensor_parallel_size": 2}],
                                methods=[{"method": "none"}, {"method": "int8"}],
                                resources={"cpus_per_cell": 1, "max_retries": 0, "accelerator_type": "H100-PCIe"}))
    report = run_sweep(spec, tmp_path)
    assert (report.succeeded, report.failed) == (2, 0)
    h100 = workers[ACCELERATOR_TYPES.index("H100")].node_id       # H100-PCIe is Ray's "H100"
    for p in report.placements:
        assert p["node_id"] == h100 and sorted(p["gpu_ids"]) == ["0", "1"]


def test_an_accelerator_no_node_offers_fails_before_anything_runs(cluster, tmp_path):
    spec = parse_spec(tiny_spec("no-a100", resources={"cpus_per_cell": 1, "accelerator_type": "A100-80G"}))
    with pytest.raises(PlacementError, match=r"'A100-80G' \(Ray: 'A100'\): no node of the cluster offers it; offered: H100, L4"):
        run_sweep(spec, tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


def _synthetic(engine: str, tp: int, i: int) -> Cell:
    return Cell(model="synthetic", revision=None, method="gptq", backend="synthetic", bits=4, group_size=128,
                options=(("i", i),), kv_cache_dtype="auto", engine=engine, calibration=None, evaluation="{}",
                tensor_parallel_size=tp)


@dataclass(frozen=True)
class _Injected:
    """cluster.scheduler.Work from two functions: `quantize_fn(cell)` returns facts the cell's
    `run_fn(cell, manifest, state)` reads back from `manifest.backend_facts`."""
    run_fn: Any
    quantize_fn: Any
    reusable_: bool = True

    def quantize(self, cell):
        return Manifest.of({"artifact_key": cell.artifact_key, "path": "", "format": "synthetic",
                            **self.quantize_fn(cell)})

    def run(self, cell, manifest, state):
        return self.run_fn(cell, manifest, state)

    def needs_artifact(self, cell):
        return True

    def reusable(self, cell):
        return self.reusable_

    def cost(self, cell):
        return estimate_cost(cell)

    def quantize_cost(self, cell):
        return estimate_quantize_cost(cell)


def _drive(tmp_path, cells, resources: dict, run_fn, quantize_fn, reusable=True) -> tuple[SweepReport, list[dict]]:
    """Cells through the driver's scheduler with injected work (no model): what Ray gave each stage."""
    from matrix.spec import ResourcesSpec

    store = ResultStore(tmp_path, "injected")
    report = SweepReport("injected", len(cells), 0, 0)
    Scheduler(Recorder(store), cluster_resources(), ResourcesSpec(**resources), _Injected(run_fn, quantize_fn, reusable),
              report=report).run(cells)
    return report, _runs(tmp_path, "injected")


def _outcome(notes: dict) -> CellOutcome:
    return CellOutcome(pa_empty_metrics(), RunFacts(notes=json.dumps(notes)))


def pa_empty_metrics():
    import pyarrow as pa
    return pa.Table.from_pylist([], schema=METRIC_SCHEMA)


def test_each_gpu_build_runs_in_a_process_of_its_own(cluster, tmp_path):
    """A process that held a GPU for a build keeps its CUDA context and cached blocks: it must exit."""
    import ray

    def quantize_fn(cell):
        time.sleep(0.3)
        return {"built": True, "pid": os.getpid(), "gpus": ray.get_gpu_ids()}

    def run_fn(cell, manifest, state):
        return _outcome({"build": [manifest.backend_facts["pid"], manifest.backend_facts["gpus"]]})

    cells = [_synthetic("hf", 1, i) for i in range(6)]            # 6 artifact keys on 4 GPUs: some GPUs build twice
    report, runs = _drive(tmp_path, cells, {"max_retries": 0}, run_fn, quantize_fn)
    assert report.succeeded == 6
    builds = [json.loads(r["notes"])["build"] for r in runs]
    assert all(len(gpus) == 1 for _, gpus in builds)
    assert len({pid for pid, _ in builds}) == 6


def test_vllm_tensor_parallel_runs_in_a_strict_pack_group_its_workers_land_in(cluster, tmp_path):
    import ray

    def run_fn(cell, manifest, state):
        # what vLLM's Ray executor does at TP 2: one Ray worker per GPU, in the current placement group
        @ray.remote(num_gpus=1, num_cpus=1)
        def gpu_worker():
            return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()
        got = ray.get([gpu_worker.remote() for _ in range(cell.tensor_parallel_size)])
        pg = ray.util.get_current_placement_group()
        return _outcome({"workers": got, "pg": pg.id.hex() if pg else None})

    report, runs = _drive(tmp_path, [_synthetic("vllm", 2, i) for i in range(2)], {"max_retries": 0},
                          run_fn, lambda c: {"built": True}, reusable=False)
    assert (report.succeeded, report.workers_started) == (2, 2)      # not reusable: a fresh actor per cell
    for r in runs:
        notes = json.loads(r["notes"])
        nodes = {n for n, _ in notes["workers"]}
        gpus = sorted(g for _, ids in notes["workers"] for g in ids)
        assert notes["pg"] and len(nodes) == 1 and len(gpus) == 2 and len(set(gpus)) == 2


def test_each_stage_runs_in_its_own_runtime_env(cluster, tmp_path):
    def quantize_fn(cell):
        return {"built": True, "stage": os.environ.get("QMX_STAGE"), "exe": sys.executable}

    def run_fn(cell, manifest, state):
        return _outcome({"quantize": [manifest.backend_facts["stage"], manifest.backend_facts["exe"]],
                         "serve": [os.environ.get("QMX_STAGE"), sys.executable]})

    venv_python = sys.executable               # the venv's own interpreter, as a user's prebuilt env would be
    report, runs = _drive(tmp_path, [_synthetic("hf", 1, 0)], {
        "max_retries": 0, "runtime_env": {"quantize": {"env_vars": {"QMX_STAGE": "quantize"}},
                                          "serve": {"py_executable": venv_python, "env_vars": {"QMX_STAGE": "serve"}}}},
        run_fn, quantize_fn)
    assert report.succeeded == 1
    notes = json.loads(runs[0]["notes"])
    assert notes["quantize"][0] == "quantize" and notes["serve"] == ["serve", venv_python]


def test_losing_a_node_mid_sweep_only_costs_retries(cluster, tmp_path):
    import ray

    c, workers = cluster
    # no artifact methods (no quantize task), more work per cell: the removal lands mid-cell
    spec = parse_spec(tiny_spec(
        "node-loss", kv_cache_dtype=["auto"],
        methods=[{"method": "none"}, {"method": "int8"}, {"method": "nf4"}],
        evaluation={"perplexity": {"corpus": "evals-wikipedia", "context": 128, "stride": 64, "max_tokens": 2048},
                    # seconds of decoding per cell: workers keep engines loaded, so cells are short otherwise
                    "speed": {"prompt_tokens": 8, "new_tokens": 64, "repeats": 10}},
        resources={"cpus_per_cell": 1, "max_retries": 2}))
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("report", run_sweep(spec, tmp_path)), daemon=True)
    thread.start()

    # the victim is the first node a cell holds a GPU on: Ray may place every cell on either node
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        per_node = ray._private.state.available_resources_per_node()
        victim = next((w for w in workers
                       if per_node.get(w.node_id, {}).get("GPU", GPUS_PER_WORKER) < GPUS_PER_WORKER), None)
        time.sleep(0.1)
    if victim is None:
        pytest.fail("no cell started on a worker node")
    time.sleep(0.2)                          # let it get into its work (reused engines finish cells fast)
    assert "report" not in done, "the sweep finished before the node could be lost"
    c.remove_node(victim)

    thread.join(timeout=180)
    assert not thread.is_alive(), "sweep did not finish after the node loss"
    report = done["report"]
    assert (report.cells, report.succeeded, report.failed) == (3, 3, 0)

    runs = _runs(tmp_path, "node-loss")
    ok = Counter(r["cell_id"] for r in runs if r["status"] == "ok")
    assert len(ok) == 3 and set(ok.values()) == {1}                  # every cell once ok, nothing doubled
    failed = [r for r in runs if r["status"] == "failed"]
    assert failed, "no attempt was lost with the node"
    for cell_id in ok:                                                 # attempt numbers unique and dense
        attempts = sorted(r["attempt"] for r in runs if r["cell_id"] == cell_id)
        assert attempts == list(range(1, len(attempts) + 1))
    [survivor] = [w.node_id for w in workers if w is not victim]
    assert all(r["node_id"] == survivor for r in runs if r["status"] == "ok"
               and r["cell_id"] in {f["cell_id"] for f in failed})    # the retries ran on the surviving node
