"""Extending quantmatrix: a new backend is one module plus one row in `matrix.backends.BACKENDS`.

This file is such a module: `BACKEND` below is "roundtrip", round-to-nearest onto the cell's integer
grid per group (GPTQ without its error correction, a toy), written as plain bf16 safetensors. The
tests add its row, then plan a spec that names it and run one cell, quantize step and all, in-process
on the random tiny Llama (the row lives in this process only, so not on Ray's workers).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from jobs.quantize import Backend, Calibration
from matrix import Cell
from matrix.backends import BACKENDS, BackendInfo
from matrix.methods import resolved_options

from conftest import tiny_spec

GROUP = 32       # divides tiny-llama's 64 and 128


def _quantize(cell: Cell, base: str, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts = resolved_options(cell.method, cell.options)      # defaults filled in by the method table
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    top = 2 ** (cell.bits - 1) - 1 if opts["symmetric"] else 2 ** cell.bits - 1
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in opts["ignore"]:
            w = module.weight.data
            groups = w.reshape(-1, cell.group_size)
            if opts["symmetric"]:
                scale, zero = groups.abs().amax(1, keepdim=True).clamp(min=1e-8) / top, 0.0
            else:
                low = groups.amin(1, keepdim=True)
                scale, zero = (groups.amax(1, keepdim=True) - low).clamp(min=1e-8) / top, low
            module.weight.data = (torch.round((groups - zero) / scale) * scale + zero).reshape(w.shape)
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return {"scheme": f"RTN W{cell.bits} {'sym' if opts['symmetric'] else 'asym'} group {cell.group_size}",
            "notes": ["toy backend: round-to-nearest, stored dense"]}


BACKEND = Backend(name="roundtrip", format="bf16 safetensors (rounded to the grid)", libraries=("transformers", "torch"),
                  quantize=_quantize)
ROW = BackendInfo("roundtrip", ("gptq",), module=__name__)      # the one table row


def _spec(method: str = "gptq"):
    from matrix.spec import parse_spec

    entry = {"method": method, "backend": "roundtrip", "bits": [4], **({"group_size": [GROUP]} if method == "gptq" else {})}
    return parse_spec(tiny_spec("extending", methods=[{"method": "none"}, entry],
                                evaluation={"perplexity": {"corpus": "evals-wikipedia", "context": 128,
                                                           "stride": 128, "max_tokens": 256}}))


def _distinct_per_group(weights: dict, group: int) -> int:
    """The most distinct values in any group of any decoder Linear weight."""
    return max(int(row.unique().numel()) for name, w in weights.items()
               if ".layers." in name and name.endswith("proj.weight") for row in w.float().reshape(-1, group))


def test_a_backend_without_its_row_is_refused_with_the_choices():
    from matrix.spec import SpecError

    assert "roundtrip" not in BACKENDS
    with pytest.raises(SpecError, match=r"backend 'roundtrip' does not implement gptq; allowed: llmcompressor"):
        _spec()


def test_one_module_and_one_row_make_a_backend_that_plans_and_runs(monkeypatch):
    import safetensors.torch

    from cluster.driver import plan_sweep, read_configs
    from jobs.artifacts import artifacts_dir, build_count
    from jobs.quantize import backend_names, get_backend, unavailable_reason
    from jobs.run_cell import quantize_step, run_cell
    from matrix.methods import METHODS
    from matrix.plan import build_plan
    from matrix.spec import SpecError

    monkeypatch.setitem(BACKENDS, "roundtrip", ROW)
    assert "roundtrip" in backend_names() and get_backend("roundtrip") is BACKEND
    assert METHODS["gptq"].backends[0] == "llmcompressor" and METHODS["gptq"].backends[-1] == "roundtrip"
    assert unavailable_reason("roundtrip") is None
    with pytest.raises(SpecError, match="does not implement nf4"):      # the row says which methods it does
        _spec(method="nf4")

    spec = _spec()
    configs = read_configs(spec)
    expansion = plan_sweep(spec, configs)
    (cell,) = [c for c in expansion.cells if c.backend == "roundtrip"]
    assert not expansion.skipped and build_plan(spec, expansion, configs).quantization_jobs == 1

    shutil.rmtree(artifacts_dir() / cell.artifact_key, ignore_errors=True)   # built here, even in a warm QMX_CACHE
    builds = build_count(cell.artifact_key)
    manifest = quantize_step(cell)
    assert manifest.built and manifest.backend == "roundtrip" and manifest.scheme == "RTN W4 sym group 32"
    assert manifest.quantize_seconds > 0 and manifest.calibration["samples"] == 4
    assert quantize_step(cell).built is False and build_count(cell.artifact_key) == builds + 1   # quantized once

    # the weights really are on a 4-bit symmetric grid: at most 15 values a group, where the base has more
    rounded = safetensors.torch.load_file(str(Path(manifest.path) / "model.safetensors"))
    base = safetensors.torch.load_file(str(Path(manifest.base_path) / "model.safetensors"))
    assert _distinct_per_group(rounded, GROUP) <= 15 < _distinct_per_group(base, GROUP)

    outcome = run_cell(cell, manifest)
    metrics = {r["metric"]: r for r in outcome.metrics.to_pylist()}
    assert metrics["quantize_seconds"]["value"] == manifest.quantize_seconds
    assert 1 < metrics["perplexity"]["value"] < float("inf")
    assert outcome.facts.format == manifest.format == "unquantized"    # read back from what it wrote
