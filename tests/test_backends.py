"""Quantization backends on CPU, on the real SmolLM2-135M: each quantizes, saves, reloads through
the hf engine, and lands between the baseline's perplexity and 3x it; the artifact cache builds a
key once under concurrent builders; calibration text comes from packages, files or the hub."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from jobs.artifacts import BUILD_LOG, ensure_artifact
from jobs.corpora import load_corpus, resolve_corpus
from jobs.engines import load_engine
from jobs.engines.hf import linear_kernels
from jobs.evaluate import run_evaluator
from jobs.quantize import backend_names, get_backend, unavailable_reason
from matrix import Cell
from matrix.methods import METHODS

SMOL = "builtin:smollm2-135m-instruct"
TINY = "builtin:tiny-llama"
CALIB = (("corpus", "evals-c4"), ("samples", 8), ("seq_len", 128))
# the default sweep's calibration: its GPTQ group-64 artifact is then built once for both tests
DEFAULT_CALIB = (("corpus", "evals-c4"), ("samples", 8), ("seq_len", 128))
PPL = {"corpus": "evals-wikipedia", "context": 512, "stride": 512, "max_tokens": 1024}


def make_cell(method: str, backend: str, bits: int, group: int | None = None, model: str = SMOL,
              calibration: tuple = CALIB, **options) -> Cell:
    calibrated = METHODS[method].calibrated
    return Cell(model=model, revision=None, method=method, backend=backend, bits=bits, group_size=group,
                options=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items())),
                kv_cache_dtype="auto", engine="hf", calibration=calibration if calibrated else None,
                evaluation=json.dumps({"perplexity": PPL}))


def perplexity_of(cell: Cell, manifest: dict, settings: dict = PPL) -> tuple[float, dict[str, int]]:
    """(perplexity, quantized linear layers by class) of the cell's model on the hf engine."""
    engine = load_engine(cell, manifest)
    try:
        return run_evaluator("perplexity", engine, settings).metrics[0].value, linear_kernels(engine.model)
    finally:
        engine.close()


# --- registry and availability -------------------------------------------------------------

def test_every_method_backend_has_a_module_and_says_whether_it_runs_here():
    for method in METHODS.values():
        for name in method.backends:
            assert name in backend_names(), f"{method.name}: backend {name} has no module"
            assert get_backend(name).name == name, (method.name, name)   # the row's module defines that backend
            # the plan and the scheduler count builds from the method's `artifact`; the backend is what builds
            assert get_backend(name).writes_artifact == method.artifact, (method.name, name)
    for name in ("none", "bitsandbytes", "llmcompressor", "gptqmodel", "prequantized"):
        assert unavailable_reason(name) is None, name
    assert "not implemented" in unavailable_reason("no-such-backend")


@pytest.mark.parametrize("name, library", [("autogptq", "auto_gptq"), ("autoawq", "awq")])
def test_legacy_backends_skip_with_the_reason(name, library):
    reason = unavailable_reason(name)
    assert reason is not None and library in reason   # neither dead library imports on this stack


# --- corpora and calibration ---------------------------------------------------------------

def test_calibration_from_local_files_and_hub_names(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "text": f"document {i} " * 50}) for i in range(3)))
    txt = tmp_path / "c.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    assert load_corpus(f"file:{jsonl}")[1].startswith("document 1")
    assert load_corpus(f"file:{txt}") == ["first paragraph\nstill first", "second paragraph"]
    hub = resolve_corpus("hf:wikitext:wikitext-2-raw-v1:train:text")
    assert "wikitext" in hub.description and "train" in hub.description
    assert "split test" in resolve_corpus("hf:org/data:test:body").description
    with pytest.raises(KeyError, match="hf:<dataset>"):
        resolve_corpus("hf:only-a-name")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_corpus(f"file:{tmp_path / 'missing.txt'}")


def test_calibration_record_says_what_was_used():
    from transformers import AutoTokenizer

    from jobs.models import materialize
    from jobs.quantize.calibration import build_calibration

    tok = AutoTokenizer.from_pretrained(materialize(SMOL))
    calib = build_calibration(tok, {"corpus": "evals-c4", "samples": 8, "seq_len": 128})
    assert len(calib.samples) == 8 and {len(s) for s in calib.samples} == {128}
    assert (calib.record["corpus"], calib.record["samples"], calib.record["seq_len"], calib.record["tokens"]) == \
        ("evals-c4", 8, 128, 1024)
    short = build_calibration(tok, {"corpus": "evals-c4", "samples": 10_000, "seq_len": 2048})
    assert short.record["samples"] < 10_000 == short.record["samples_requested"]


# --- the artifact cache under concurrent builders -----------------------------------------

def _build_in_child(cache: str, queue) -> None:
    os.environ["QMX_CACHE"] = cache
    m = ensure_artifact(make_cell("fp8", "llmcompressor", 8, model=TINY))
    queue.put({k: v for k, v in m.to_json().items() if k != "built"} | {"built_here": m.built})


def test_three_concurrent_builders_of_one_key_build_it_once(tmp_path):
    from jobs.models import cache_root, materialize

    materialize(TINY)   # the model folder is shared; the artifact cache is fresh
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(cache_root() / "models")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(cache), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(r.pop("built_here") for r in results) == 1
    assert results[0] == results[1] == results[2]
    log = [json.loads(line) for line in (cache / "artifacts" / BUILD_LOG).read_text().splitlines()]
    assert [entry["artifact_key"] for entry in log] == [results[0]["artifact_key"]]
    assert not [p for p in (cache / "artifacts").iterdir() if p.name.startswith(".")]   # no temp folder left
    m = results[0]
    assert m["format"] == "compressed-tensors (float-quantized)"
    assert m["size_bytes"] >= m["weights_bytes"] > 0 and m["peak_rss_bytes"] > 0 and m["quantize_seconds"] > 0
    assert m["library_versions"]["llmcompressor"] != "not installed" and m["calibration"] is None


# --- acceptance on SmolLM2 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline_ppl() -> float:
    cell = make_cell("none", "none", 16)
    ppl, kernels = perplexity_of(cell, ensure_artifact(cell))
    assert not kernels, kernels
    return ppl


# (cell, the format the manifest must name); grouped methods at group 64: SmolLM2's 576 is not a multiple of 128
CPU_CASES = {
    "nf4": (make_cell("nf4", "bitsandbytes", 4), "bitsandbytes"),
    "int8": (make_cell("int8", "bitsandbytes", 8), "bitsandbytes"),
    "gptq-llmcompressor": (make_cell("gptq", "llmcompressor", 4, 64, calibration=DEFAULT_CALIB),
                           "compressed-tensors (pack-quantized)"),
    "awq-llmcompressor": (make_cell("awq", "llmcompressor", 4, 64), "compressed-tensors (pack-quantized)"),
    "fp8-llmcompressor": (make_cell("fp8", "llmcompressor", 8), "compressed-tensors (float-quantized)"),
    "gptq-gptqmodel": (make_cell("gptq", "gptqmodel", 4, 64), "gptq (gptq, 4-bit, group 64"),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_backend_quantizes_saves_reloads_within_3x_baseline(case, baseline_ppl):
    cell, fmt = CPU_CASES[case]
    manifest = ensure_artifact(cell)
    assert manifest.format.startswith(fmt)
    if METHODS[cell.method].artifact:
        assert manifest.quantize_seconds > 0 and manifest.weights_bytes < manifest.base_weights_bytes
        assert manifest.calibration is None or \
            manifest.calibration["samples"] == dict(cell.calibration)["samples"] == manifest.calibration["samples_requested"]
        assert all(v != "not installed" for v in manifest.library_versions.values())
        if cell.method == "awq":   # the CPU workaround is visible, not hidden
            assert any("pin_memory" in n for n in manifest.notes)
    ppl, kernels = perplexity_of(cell, manifest)
    print(f"{case}: perplexity {ppl:.3f} (baseline {baseline_ppl:.3f}), format {manifest.format}, "
          f"quantize_seconds {manifest.quantize_seconds}, kernels {kernels}")
    # transformers decompresses compressed-tensors checkpoints into dense Linear layers
    assert bool(kernels) != fmt.startswith("compressed-tensors"), kernels
    assert baseline_ppl * 0.99 <= ppl <= 3 * baseline_ppl


def test_gptq_kernel_is_chosen_at_load_from_the_same_checkpoint():
    auto = CPU_CASES["gptq-gptqmodel"][0]
    torch_kernel = make_cell("gptq", "gptqmodel", 4, 64, kernel="torch")
    manifest = ensure_artifact(torch_kernel)
    assert manifest.path == ensure_artifact(auto).path    # no second quantization
    short = PPL | {"max_tokens": 512}      # two loads of one checkpoint: the kernels, not the quality
    auto_ppl, auto_kernels = perplexity_of(auto, manifest, short)
    ppl, kernels = perplexity_of(torch_kernel, manifest, short)
    print(f"gptqmodel kernels on CPU: auto {auto_kernels} {auto_ppl:.3f}, torch {kernels} {ppl:.3f}")
    assert kernels == {"TorchLinear": sum(auto_kernels.values())} and "TorchLinear" not in auto_kernels
    assert abs(ppl - auto_ppl) < 0.01 * auto_ppl     # two kernels, one set of weights


@pytest.mark.parametrize("writer, fmt", [
    # GPTQModel writes the GPTQ format AutoGPTQ wrote and vLLM reads: the autogptq backend's format path
    ("gptq-gptqmodel", "gptq (gptq, 4-bit, group 64"),
    # llm-compressor's AWQ is AutoAWQ's successor: the autoawq backend's algorithm, in compressed-tensors
    ("awq-llmcompressor", "compressed-tensors (pack-quantized)"),
])
def test_prequantized_loads_a_checkpoint_as_published(writer, fmt, baseline_ppl):
    published = ensure_artifact(CPU_CASES[writer][0]).path
    qc = json.loads((Path(published) / "config.json").read_text())["quantization_config"]
    if writer == "gptq-gptqmodel":   # what AutoGPTQ / vLLM's gptq loaders dispatch on
        assert qc["quant_method"] == "gptq" and qc.get("checkpoint_format", "gptq") == "gptq"
    cell = make_cell("prequantized", "prequantized", 4, 64, checkpoint=published)
    manifest = ensure_artifact(cell)
    assert manifest.path == published and manifest.quantize_seconds is None
    assert manifest.format.startswith(fmt)
    ppl, kernels = perplexity_of(cell, manifest)
    print(f"prequantized {writer}: perplexity {ppl:.3f}, kernels {kernels}")
    assert baseline_ppl * 0.99 <= ppl <= 3 * baseline_ppl


def test_prequantized_rejects_a_checkpoint_of_another_model_or_setting():
    published = ensure_artifact(CPU_CASES["fp8-llmcompressor"][0]).path
    with pytest.raises(ValueError, match="not a quantization of"):
        ensure_artifact(make_cell("prequantized", "prequantized", 8, None, model=TINY, checkpoint=published))
    with pytest.raises(ValueError, match="declares 8-bit"):
        ensure_artifact(make_cell("prequantized", "prequantized", 4, None, checkpoint=published))
