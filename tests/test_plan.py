"""`qmx plan`: memory estimates from configs, the hardware table, and the plan as the user sees it."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from matrix import expand_matrix
from matrix.estimate import estimate_cell
from matrix.hardware import ACCELERATORS, accelerator_for_device_name
from matrix.plan import build_plan, kv_tokens_for
from matrix.spec import parse_spec

# SmolLM2-135M-Instruct's config.json (the shapes only)
SMOL = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536,
        "tie_word_embeddings": True}
MIB = 2 ** 20


def _cells(methods, **kw):
    spec = parse_spec({"name": "t", "models": [{"id": "m"}], "methods": methods, **kw})
    return {c.label: c for c in expand_matrix(spec, {"m": SMOL}).cells}


@pytest.mark.parametrize("label, measured_mib", [
    ("bf16", 256.6),              # weight_bytes measured on the real model after load
    ("int8 w8", 155.3),
    ("nf4 w4", 104.7),            # measured without bitsandbytes' absmax (a quant_state, not a tensor)
    ("gptq w4 g64", 107.9),       # llm-compressor, lm_head kept (tied to the embeddings here)
])
def test_estimates_match_measured_smollm2_within_10pct(label, measured_mib):
    cells = _cells([{"method": "none"}, {"method": "int8"}, {"method": "nf4"},
                    {"method": "gptq", "bits": [4], "group_size": [64]}])
    est = estimate_cell(cells[label], SMOL).weight_bytes / MIB
    assert est == pytest.approx(measured_mib, rel=0.10)


def test_estimates_follow_the_format():
    cells = _cells([{"method": "none"}, {"method": "nf4", "options": {"double_quant": [False, True]}},
                    {"method": "gptq", "bits": [3, 4], "group_size": [32, 64, -1]},
                    {"method": "gptq", "bits": [4], "group_size": [64],
                     "options": {"ignore": [["lm_head", "re:.*mlp.*"]]}}])
    size = {label: estimate_cell(c, SMOL).weight_bytes for label, c in cells.items()}
    assert size["nf4 w4 double_quant=True"] < size["nf4 w4 double_quant=False"]
    assert size["gptq w3 g64"] < size["gptq w4 g64"]
    assert size["gptq w4 per-channel"] < size["gptq w4 g64"] < size["gptq w4 g32"]
    # the MLP kept in 16-bit: most of the Linear bytes are back
    assert size["gptq w4 g64"] < size["gptq w4 g64 ignore=lm_head,re:.*mlp.*"] < size["bf16"]


def test_untied_lm_head_is_kept_in_16_bit_by_default():
    untied = {**SMOL, "tie_word_embeddings": False}
    spec = parse_spec({"name": "t", "models": [{"id": "m"}], "methods": [
        {"method": "gptq", "group_size": [64]}, {"method": "gptq", "group_size": [64], "options": {"ignore": []}}]})
    a, b = (c for c in expand_matrix(spec, {"m": untied}).cells if c.method == "gptq")
    lm_head_bf16 = 49152 * 576 * 2
    assert estimate_cell(a, untied).weight_bytes - estimate_cell(a, SMOL).weight_bytes == lm_head_bf16
    assert estimate_cell(b, untied).weight_bytes < estimate_cell(a, untied).weight_bytes


def test_kv_cache_bytes_per_token():
    cells = _cells([{"method": "none"}], kv_cache_dtype=["auto", "fp8_e4m3"], engine=["vllm"])
    assert estimate_cell(cells["bf16"], SMOL).kv_bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert estimate_cell(cells["bf16 kv=fp8_e4m3"], SMOL).kv_bytes_per_token == 2 * 30 * 3 * 64


def test_no_shapes_no_estimate():
    assert estimate_cell(_cells([{"method": "none"}])["bf16"], {}) is None


@pytest.mark.parametrize("device, key, memory, bandwidth", [
    ("NVIDIA H100 80GB HBM3", "H100", 80, 3350),
    ("NVIDIA H200", "H200", 141, 4800),
    ("NVIDIA A100-SXM4-80GB", "A100-80G", 80, 2039),
    ("NVIDIA A100-SXM4-40GB", "A100-40G", 40, 1555),
    ("NVIDIA L4", "L4", 24, 300),
    ("NVIDIA A10G", "A10G", 24, 600),
    ("Tesla T4", "T4", 16, 320),
    ("NVIDIA L40S", "L40S", 48, 864),
    ("NVIDIA GeForce RTX 4090", "GeForce-RTX-4090", 24, 1008),
    ("NVIDIA GeForce RTX 4060", "GeForce-RTX-4060", 8, 272),
])
def test_device_names_map_to_the_table(device, key, memory, bandwidth):
    acc = accelerator_for_device_name(device)
    assert (acc.name, acc.memory_gib, acc.bandwidth_gbps) == (key, memory, bandwidth)
    assert "datasheet" in acc.source or "specifications" in acc.source or "AWS" in acc.source


def test_table_keys_are_ray_accelerator_types():
    from ray.util.accelerators import accelerators as ray_acc
    ray_names = {v for k, v in vars(ray_acc).items() if k.isupper() and isinstance(v, str)}
    for acc in ACCELERATORS.values():
        if not acc.ray_accelerator_type.startswith("GeForce-"):   # Ray derives consumer names from the device
            assert acc.ray_accelerator_type in ray_names, acc.name
    assert accelerator_for_device_name("cpu") is None


def test_plan_prices_cells_against_the_target_gpu():
    big = {**SMOL, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32000,
           "tie_word_embeddings": False}
    spec = parse_spec({"name": "t", "models": [{"id": "m"}], "methods": [
        {"method": "none"}, {"method": "gptq", "bits": [3, 4], "group_size": [128]}],
        "evaluation": {"serving": {"concurrency": [1, 4], "prompt_tokens": 256, "output_tokens": 256}},
        "resources": {"accelerator_type": "GeForce-RTX-4060"}})
    plan = build_plan(spec, expand_matrix(spec, {"m": big}), {"m": big})
    assert plan.target == "GeForce-RTX-4060, 8 GiB" and plan.kv_tokens == kv_tokens_for(spec.evaluation) == 4 * 512
    fits = {r.cell.label: r.fit.fits for r in plan.rows}
    assert fits == {"bf16": False, "gptq w3 g128": True, "gptq w4 g128": True}


def _write_models(tmp_path):
    shapes = {"llama-7b": {**SMOL, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                           "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
                           "vocab_size": 32000, "tie_word_embeddings": False},
              "smol": SMOL}
    for name, config in shapes.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    return [str(tmp_path / name) for name in shapes]


def test_qmx_plan_shows_cells_skips_exclusions_and_dedup(tmp_path, monkeypatch):
    from cluster.cli import app

    models = _write_models(tmp_path)
    spec = {"name": "planned", "models": [{"id": m} for m in models],
            "methods": [{"method": "none"}, {"method": "nf4"},
                        {"method": "gptq", "bits": [4], "group_size": [64, 128]}],
            "kv_cache_dtype": ["auto", "fp8_e4m3"], "engine": ["hf", "vllm"],
            "exclude": [{"method": "nf4", "engine": "vllm"}],
            "resources": {"accelerator_type": "L4"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("COLUMNS", "240")
    out = CliRunner().invoke(app, ["plan", str(path)])
    assert out.exit_code == 0, out.output
    text = out.output
    # 2 models x (bf16 + nf4 + 2 gptq) x 2 KV x 2 engines = 32; nf4 on vllm excluded (2 x 2 KV = 4);
    # skipped: fp8 KV on hf (4 variants x 2 models = 8) and SmolLM2's group 128 on the 3 other KV/engine pairs
    assert "planned: 17 cells (target GPU L4, 24 GiB)" in text
    assert "fp8_e4m3 KV cache needs the vllm engine (engine is hf)" in text
    assert "group size 128 does not divide" in text
    assert "17 cells, 11 skipped, 4 excluded by include/exclude" in text
    # 3 GPTQ artifacts (llama g64, g128; smol g64) serve 9 cells across KV dtypes and engines
    assert "3 quantization job(s) after dedup for 9 artifact cell(s)" in text
    assert "at load" in text and "yes " in text and "GiB" in text


def test_qmx_plan_bad_spec_is_a_clear_error(tmp_path):
    from cluster.cli import app

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "models": [{"id": "m"}], "methods": [{"method": "none"}],
                                    "exclude": [{"engines": "hf"}]}))
    out = CliRunner().invoke(app, ["plan", str(path)])
    assert out.exit_code == 2 and "unknown dimension 'engines'" in out.output
