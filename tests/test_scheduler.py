"""Scheduling decisions without Ray: cost order, artifact jobs, engine-affinity routing, placement shapes,
per-stage runtime envs."""
from __future__ import annotations

import json

import pytest

from cluster import placement, scheduling
from cluster.placement import PlacementError, Slot
from cluster.runtime_envs import stage_runtime_env
from matrix import Cell
from matrix.spec import parse_spec

from conftest import tiny_spec


def _cell(method="none", backend="none", i=0, engine="hf", kv="auto", tp=1, ppl_tokens=256, bits=16) -> Cell:
    ev = {"perplexity": {"corpus": "c", "context": 128, "stride": 128, "max_tokens": ppl_tokens},
          "speed": {"prompt_tokens": 8, "new_tokens": 8, "repeats": 1}}
    calib = (("corpus", "c"), ("samples", 4), ("seq_len", 64)) if backend == "llmcompressor" else None
    return Cell(model="m", revision=None, method=method, backend=backend, bits=bits, group_size=None,
                options=(("i", i),), kv_cache_dtype=kv, engine=engine, calibration=calib,
                evaluation=json.dumps(ev, sort_keys=True), tensor_parallel_size=tp)


def test_cost_grows_with_evaluation_work_and_load_time_quantization():
    assert scheduling.estimate_cost(_cell(ppl_tokens=4096)) > scheduling.estimate_cost(_cell(ppl_tokens=256))
    assert scheduling.estimate_cost(_cell("nf4", "bitsandbytes", bits=4)) > scheduling.estimate_cost(_cell())


def test_cells_differing_in_a_load_option_share_weights_not_an_engine():
    from dataclasses import replace
    auto = replace(_cell("gptq", "gptqmodel", bits=4), options=())
    marlin, triton = (replace(auto, options=(("kernel", k),)) for k in ("marlin", "triton"))
    assert auto.artifact_key == marlin.artifact_key == triton.artifact_key
    assert len({auto.engine_key, marlin.engine_key, triton.engine_key}) == 3
    assert replace(auto, options=(("kernel", "auto"),)).engine_key == auto.engine_key   # the default, written


def test_quantize_jobs_one_per_key_longest_chain_first_and_ready_cells_longest_first():
    short_q = [_cell("gptq", "llmcompressor", i=1, bits=4)]
    long_q = [_cell("gptq", "llmcompressor", i=2, bits=4, kv=kv) for kv in ("auto", "fp8_e4m3")]
    plain = [_cell(i=3, ppl_tokens=256), _cell(i=4, ppl_tokens=8192)]
    cost = {c.cell_id: v for c, v in zip(short_q + long_q + plain, (1, 9, 2, 3, 5))}
    jobs, ready = scheduling.quantize_jobs(short_q + long_q + plain, lambda c: c.backend == "llmcompressor",
                                           lambda c: cost[c.cell_id], lambda c: 1.0)
    assert [j.key for j in jobs] == [long_q[0].artifact_key, short_q[0].artifact_key]
    assert jobs[0].cells == tuple(long_q) and jobs[0].chain == 10
    assert ready == [plain[1], plain[0]]


def test_an_idle_worker_keeps_its_engine_else_takes_the_longest_that_fits():
    a1, a2 = _cell(i=1), _cell(i=1, ppl_tokens=128)      # same weights and engine settings: one engine key
    b = _cell(i=2, ppl_tokens=8192)
    ready = [b, a2]                                         # longest first
    assert a1.engine_key == a2.engine_key != b.engine_key
    assert scheduling.choose_cell(ready, a1.engine_key) == 1      # reuse beats length
    assert scheduling.choose_cell(ready, None) == 0
    assert scheduling.choose_cell(ready, ("other",)) == 0
    assert scheduling.choose_cell(ready, None, fits=lambda c: c is a2) == 1
    assert scheduling.choose_cell(ready, None, fits=lambda c: False) is None


def test_insert_by_cost_keeps_longest_first_and_arrival_order_on_ties():
    cells = [_cell(i=i) for i in range(4)]
    cost = {cells[0].cell_id: 5, cells[1].cell_id: 1, cells[2].cell_id: 5, cells[3].cell_id: 3}
    ready = [cells[0], cells[1]]
    scheduling.insert_by_cost(ready, [cells[2], cells[3]], lambda c: cost[c.cell_id])
    assert ready == [cells[0], cells[2], cells[3], cells[1]]


def test_slots_tensor_parallel_and_gangs():
    assert placement.cell_slot(_cell(), False, 2, "H100") == Slot(0, 2)
    assert placement.cell_slot(_cell(tp=2), True, 2, None) == Slot(2, 1)                  # hf: the actor holds both
    gang = placement.cell_slot(_cell(engine="vllm", tp=2), True, 2, "H100")
    assert gang == Slot(2, 1, "H100", gang=True)                                           # vLLM's Ray executor
    assert placement.gang_bundles(gang) == [{"GPU": 1.0, "CPU": 1.0, "accelerator_type:H100": 0.001}] * 2
    opts = placement.ray_options(gang, {"env_vars": {"A": "1"}}, placement_group=None)
    assert (opts["num_gpus"], opts["num_cpus"]) == (0, 0)
    assert opts["scheduling_strategy"].placement_group_capture_child_tasks
    assert placement.ray_options(Slot(1, 1, "H100"))["accelerator_type"] == "H100"
    assert "accelerator_type" not in placement.ray_options(Slot(0, 2, "H100"))


def test_capacity_counts_per_node_and_accelerator_type():
    nodes = [{"CPU": 8, "GPU": 4, "accelerator_type:H100": 1}, {"CPU": 8, "GPU": 2, "accelerator_type:L4": 1},
             {"CPU": 4}]
    assert placement.capacity(nodes, Slot(1, 1)) == 6
    assert placement.capacity(nodes, Slot(2, 1)) == 3
    assert placement.capacity(nodes, Slot(1, 1, "H100")) == 4
    assert placement.capacity(nodes, Slot(4, 1, "L4")) == 0
    assert placement.capacity(nodes, Slot(0, 3)) == 2 + 2 + 1
    with pytest.raises(PlacementError, match="'A100-80G': no node of the cluster offers it; offered: H100, L4"):
        placement.check_accelerator(nodes, "A100-80G", gpu_cluster=True)
    placement.check_accelerator(nodes, "A100-80G", gpu_cluster=False)       # CPU clusters ignore the type
    with pytest.raises(PlacementError, match="needs 8 GPU"):
        placement.check_fits(nodes, [Slot(8, 1)])


def test_stage_runtime_envs_from_the_spec():
    spec = parse_spec(tiny_spec("envs", resources={
        "runtime_env": {"quantize": {"py_executable": "/opt/llmc/bin/python", "env_vars": {"A": "1"}},
                        "serve": {"pip": ["vllm==0.26.0"]}}}))
    assert stage_runtime_env(spec.resources, "quantize") == {"py_executable": "/opt/llmc/bin/python",
                                                             "env_vars": {"A": "1"}}
    assert stage_runtime_env(spec.resources, "serve") == {"pip": ["vllm==0.26.0"]}
    assert stage_runtime_env(parse_spec(tiny_spec("plain")).resources, "serve") is None


def test_time_limits_default_from_the_cost_estimate_with_a_floor():
    heavy, light = _cell(ppl_tokens=2**20), _cell(ppl_tokens=256)
    floor = scheduling.CELL_TIMEOUT_FLOOR_S
    assert scheduling.time_limit(scheduling.estimate_cost(light), floor) == floor
    assert scheduling.time_limit(scheduling.estimate_cost(heavy), floor) == 10 * scheduling.estimate_cost(heavy) > floor
    assert scheduling.time_limit(scheduling.estimate_cost(heavy), floor, limit=30.0) == 30.0     # the spec's own
    assert parse_spec(tiny_spec("t", resources={"cell_timeout_s": 30})).resources.cell_timeout_s == 30
