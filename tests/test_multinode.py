"""Sweeps on a multi-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster).

A head with no resources and two worker nodes that each declare 2 CPUs and 2 GPUs. The GPUs are
declared only: Ray pins them (CUDA_VISIBLE_DEVICES, ray.get_gpu_ids()), torch sees no CUDA and the
tiny model runs on CPU. Checks that cells spread over the nodes, that each cell holds exactly one
GPU that no concurrently running cell holds, and that losing a node mid-sweep costs retries only.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from cluster.driver import run_sweep
from matrix.spec import parse_spec

from conftest import tiny_spec

WORKERS, GPUS_PER_WORKER = 2, 2


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
    workers = [c.add_node(num_cpus=2, num_gpus=GPUS_PER_WORKER) for _ in range(WORKERS)]
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


def test_losing_a_node_mid_sweep_only_costs_retries(cluster, tmp_path):
    import ray

    c, workers = cluster
    # no artifact methods (no quantize task), more work per cell: the removal lands mid-cell
    spec = parse_spec(tiny_spec(
        "node-loss", kv_cache_dtype=["auto"],
        methods=[{"method": "none"}, {"method": "int8"}, {"method": "nf4"}],
        evaluation={"perplexity": {"corpus": "evals-wikipedia", "context": 128, "stride": 64, "max_tokens": 2048},
                    "speed": {"prompt_tokens": 8, "new_tokens": 32, "repeats": 3}},
        resources={"cpus_per_cell": 1, "max_retries": 2}))
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("report", run_sweep(spec, tmp_path)), daemon=True)
    thread.start()

    victim = workers[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:       # wait until a cell holds a GPU on the victim node
        avail = ray._private.state.available_resources_per_node().get(victim.node_id, {})
        if avail.get("GPU", GPUS_PER_WORKER) < GPUS_PER_WORKER:
            break
        time.sleep(0.1)
    else:
        pytest.fail("no cell started on the victim node")
    time.sleep(1.0)                          # let it get into its work
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
    survivor = workers[1].node_id
    assert all(r["node_id"] == survivor for r in runs if r["status"] == "ok"
               and r["cell_id"] in {f["cell_id"] for f in failed})    # the retries ran on the surviving node
