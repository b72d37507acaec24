"""Per-layer sensitivity: each linear layer's output error against the baseline's on the baseline's
inputs, from the real evaluator on real quantized models (GPTQ via llm-compressor at 4 and 2 bits,
bitsandbytes int8 and NF4), through a sweep into the store, and out of `qmx layers` worst first."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.driver import run_sweep
from jobs.artifacts import ensure_artifact
from jobs.engines import EngineInfo, load_engine
from jobs.evaluate import run_evaluator
from jobs.models import materialize
from matrix import SpecError, expand_matrix
from matrix.spec import parse_spec

from conftest import tiny_spec

TINY = "builtin:tiny-llama"
SMOL = "builtin:smollm2-135m-instruct"
SETTINGS = {"corpus": "evals-c4", "max_tokens": 128, "context": 64}     # two windows


def _spec(name: str, model: str = TINY, methods=None, settings=SETTINGS):
    # GPTQ on the tiny Llama builds in seconds on CPU (SmolLM2's takes minutes there); group 32 divides its 64
    methods = methods or [{"method": "none"}, {"method": "gptq", "bits": [4, 2], "group_size": [32]}]
    return parse_spec(tiny_spec(name, models=[{"id": model}], methods=methods,
                                evaluation={"perplexity": None, "speed": None, "layer_sensitivity": settings}))


def _cells(spec) -> dict[str, object]:
    return {f"{c.method}{c.bits}": c for c in expand_matrix(spec, {}).cells}


def _evaluate(cell, settings=SETTINGS):
    engine = load_engine(cell, ensure_artifact(cell))
    try:
        out = run_evaluator("layer_sensitivity", engine, settings)
        return out, {m.name: m for m in out.metrics}, out.tables["layer_sensitivity"]
    finally:
        engine.close()


def _base_linears(path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.fixture(scope="module")
def gptq():
    """The tiny Llama's baseline, GPTQ 4-bit and GPTQ 2-bit cells, each through the real evaluator."""
    return {key: _evaluate(cell) for key, cell in _cells(_spec("layers-tiny")).items()}


def test_every_linear_layer_gets_a_row_and_kept_layers_score_zero(gptq):
    _, linears = _base_linears(materialize(TINY))
    for key, (out, metrics, rows) in gptq.items():
        assert sorted(r["layer"] for r in rows) == sorted(linears), key
        assert not out.notes, out.notes
        for r in rows:
            assert r["params"] == linears[r["layer"]].weight.numel() + (linears[r["layer"]].bias.numel()
                                                                        if linears[r["layer"]].bias is not None else 0)
            assert r["kind"] == r["layer"].rsplit(".", 1)[-1]
            assert (r["layer_index"] is None) == (r["layer"] == "lm_head")
    # the baseline against itself: the noise floor, every layer kept and exactly 0
    _, base_metrics, base_rows = gptq["none16"]
    assert all(r["kept"] and r["bits"] == 16 and r["rel_error"] == 0.0 for r in base_rows)
    assert base_metrics["layer_error_max"].value == 0.0
    for key, bits in (("gptq4", 4), ("gptq2", 2)):
        _, metrics, rows = gptq[key]
        by_layer = {r["layer"]: r for r in rows}
        # GPTQ's `ignore` keeps lm_head in 16 bits by default: the base's very weights, error 0
        assert by_layer["lm_head"]["kept"] and by_layer["lm_head"]["bits"] == 16
        assert by_layer["lm_head"]["rel_error"] < 1e-6
        quantized = [r for r in rows if r["layer"] != "lm_head"]
        assert all(not r["kept"] and r["bits"] == bits and r["rel_error"] > 0 for r in quantized), key
        worst = max(rows, key=lambda r: r["rel_error"])
        assert metrics["layer_error_max"].value == worst["rel_error"]
        assert f'"layer": "{worst["layer"]}"' in metrics["layer_error_max"].settings
        assert metrics["layer_error_mean"].value == pytest.approx(
            sum(r["rel_error"] for r in quantized) / len(quantized))


def test_two_bits_err_more_than_four_on_every_quantized_layer(gptq):
    four = {r["layer"]: r["rel_error"] for r in gptq["gptq4"][2] if not r["kept"]}
    two = {r["layer"]: r["rel_error"] for r in gptq["gptq2"][2] if not r["kept"]}
    print({k: (round(four[k], 4), round(two[k], 4)) for k in four})
    assert four.keys() == two.keys() and all(two[k] > four[k] for k in four)
    assert gptq["gptq2"][1]["layer_error_mean"].value > gptq["gptq4"][1]["layer_error_mean"].value


def test_one_layer_recomputed_by_hand(gptq):
    """The row's figure is ||cell layer(x) - base layer(x)|| / ||base layer(x)|| on the base's inputs."""
    import torch

    from jobs.corpora import load_corpus

    cell = _cells(_spec("layers-tiny"))["gptq2"]
    engine = load_engine(cell, ensure_artifact(cell))
    try:
        base, linears = _base_linears(engine.base_path)
        tok = engine.tokenizer
        ids = tok("\n\n".join(load_corpus("evals-c4")), add_special_tokens=False)["input_ids"][:128]
        name = "model.layers.1.mlp.down_proj"
        seen = []
        handle = linears[name].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        with torch.inference_mode():
            engine.model(torch.tensor([[tok.bos_token_id] + ids[:8]]))     # compressed-tensors decompresses here
            for i in (0, 64):
                base(torch.tensor([[tok.bos_token_id] + ids[i:i + 64]]))
            handle.remove()
            cell_layer = dict(engine.model.named_modules())[name]
            num = sum((cell_layer(x) - linears[name](x)).double().square().sum() for x in seen)
            den = sum(linears[name](x).double().square().sum() for x in seen)
        expected = (num / den).sqrt().item()
    finally:
        engine.close()
    got = {r["layer"]: r["rel_error"] for r in gptq["gptq2"][2]}[name]
    assert got == pytest.approx(expected, rel=1e-6)


def test_vllm_engine_gets_a_note_not_a_figure():
    from jobs.engines.vllm import VllmEngine
    engine = VllmEngine(EngineInfo("vllm", "cuda", "bfloat16", "auto", max_positions=4096, load_seconds=0.0),
                        None, None)
    out = run_evaluator("layer_sensitivity", engine, SETTINGS)
    assert out.metrics == [] and not out.tables
    assert len(out.notes) == 1 and "vllm engine" in out.notes[0] and "hf engine" in out.notes[0]


def test_spec_rejects_bad_settings_by_field():
    with pytest.raises(SpecError, match=r"evaluation\.layer_sensitivity\.max_tokens: .*greater than or equal to 16"):
        _spec("bad", settings={"max_tokens": 4})
    with pytest.raises(SpecError, match=r"evaluation\.layer_sensitivity\.corpus: unknown corpus 'nope'"):
        _spec("bad", settings={"corpus": "nope"})
    with pytest.raises(SpecError, match=r"evaluation\.layer_sensitivity\.windows: .*xtra"):
        _spec("bad", settings={"windows": 2})
    # left out, it stays out of the cell's evaluation (existing cell ids unchanged)
    spec = parse_spec(tiny_spec("plain"))
    assert "layer_sensitivity" not in expand_matrix(spec, {}).cells[0].evaluation


def _table_rows(output: str) -> list[list[str]]:
    """The data rows of a rich table printed by `qmx layers` (its box-drawing column separators)."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in output.splitlines()
            if line.startswith("│") and not re.match(r"│\s*model\s*│", line)]


def test_sweep_then_qmx_layers_prints_the_worst_layers_first(tmp_path, gptq):
    spec = _spec("layers-tiny")
    cells = _cells(spec)
    report = run_sweep(spec, tmp_path)
    assert report.succeeded == 3 and report.failed == 0 and report.quantizations == 0   # artifacts of the fixture
    runner = CliRunner(env={"COLUMNS": "250"})      # one table line per row
    res = runner.invoke(app, ["layers", "--results", str(tmp_path), "-n", "50"])
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.output)
    assert len(rows) == 45 and "45 most sensitive of 45 layers" in res.output      # 3 cells x 15 layers
    errors = [float(r[6]) for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0 and errors[-1] == 0
    assert {r[1] for r in rows[:14]} == {cells["gptq2"].label}     # every 2-bit layer above every 4-bit one
    stored = max(r["rel_error"] for r in gptq["gptq2"][2])
    assert errors[0] == pytest.approx(stored, rel=1e-3)        # the sweep's own run of the same evaluator
    cell_id = cells["gptq4"].cell_id
    res = runner.invoke(app, ["layers", "--results", str(tmp_path), "--cell", cell_id[:8], "-n", "3"])
    rows = _table_rows(res.output)
    assert res.exit_code == 0 and len(rows) == 3 and {r[7] for r in rows} == {cell_id}, res.output
    for args, message in ((["--cell", "f" * 12], "--cell: no layer_sensitivity rows for 'ffffffffffff'; known: "),
                          (["--model", "nope"], f"--model: no layer_sensitivity rows for 'nope'; known: '{TINY}'"),
                          (["-n", "0"], "")):
        res = runner.invoke(app, ["layers", "--results", str(tmp_path), *args])
        assert res.exit_code == 2 and message in res.output, res.output


@pytest.mark.slow   # two SmolLM2 loads that quantize at load (bitsandbytes on CPU): about a minute
def test_bitsandbytes_layers_on_smollm2():
    cells = _cells(_spec("layers-smol", SMOL, [{"method": "int8"}, {"method": "nf4"}]))
    by_method = {"int8": _evaluate(cells["int88"]), "nf4": _evaluate(cells["nf44"])}
    for method, bits, module in (("int8", 8, "Linear8bitLt"), ("nf4", 4, "Linear4bit")):
        _, metrics, rows = by_method[method]
        assert len(rows) == 30 * 7 + 1          # SmolLM2-135M: 30 blocks of 7 linears, and lm_head
        head = next(r for r in rows if r["layer"] == "lm_head")
        assert head["kept"] and head["rel_error"] < 1e-6    # transformers keeps lm_head out of bitsandbytes
        assert all(r["module"] == module and r["bits"] == bits and r["rel_error"] > 0 for r in rows if r is not head)
    print({m: round(r[1]["layer_error_mean"].value, 5) for m, r in by_method.items()})
    assert by_method["nf4"][1]["layer_error_mean"].value > by_method["int8"][1]["layer_error_mean"].value
