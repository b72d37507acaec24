"""Evaluators on real (tiny) models: perplexity against an independent computation, KL from the
baseline, and an offline lm-eval task end to end."""
from __future__ import annotations

import importlib.util
import math
import time

import pytest

from jobs.artifacts import ensure_artifact
from jobs.engines import load_engine
from jobs.evaluate import run_evaluator
from matrix import expand_matrix
from matrix.spec import parse_spec

from conftest import tiny_spec

PPL = {"corpus": "evals-wikipedia", "context": 128, "stride": 128, "max_tokens": 512}
KL = {**PPL, "top_k": 64}
# the random tiny Llama predicts a near-uniform distribution (KL ~1e-7 for any quantization),
# so the ordering test needs a real model: SmolLM2-135M on a short text
KL_SMOL = {**KL, "max_tokens": 256}


def _engines(model: str, methods=("none", "int8", "nf4"), kl=KL) -> dict:
    spec = parse_spec(tiny_spec("evaluators", models=[{"id": model}],
                                methods=[{"method": m} for m in methods],
                                evaluation={"perplexity": PPL, "kl_divergence": kl}))
    cells = {c.method: c for c in expand_matrix(spec, {}).cells}
    return {m: load_engine(cells[m], ensure_artifact(cells[m])) for m in methods}


@pytest.fixture(scope="module")
def engines():
    return _engines("builtin:tiny-llama", methods=("none",))


@pytest.fixture(scope="module")
def smol():
    return _engines("builtin:smollm2-135m-instruct", kl=KL_SMOL)


def _by_name(metrics) -> dict[str, float]:
    return {m.name: m.value for m in metrics}


def test_perplexity_matches_plain_hf_loss(engines):
    import torch
    from jobs.corpora import load_corpus

    engine = engines["none"]
    tok, model = engine.tokenizer, engine.model
    ids = tok("\n\n".join(load_corpus(PPL["corpus"])), add_special_tokens=False)["input_ids"][:PPL["max_tokens"]]
    # independent: HF's own shifted cross-entropy (labels=input_ids) per non-overlapping window, BOS prepended
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(ids), PPL["context"]):
            x = torch.tensor([[tok.bos_token_id] + ids[i:i + PPL["context"]]])
            loss = model(x, labels=x).loss.item()
            nll += loss * (x.shape[1] - 1)
            n += x.shape[1] - 1
    expected = math.exp(nll / n)
    got = run_evaluator("perplexity", engine, PPL).metrics[0]
    assert got.name == "perplexity"
    assert got.value == pytest.approx(expected, rel=0.005)
    assert n == len(ids)


def test_kl_of_baseline_against_itself_is_zero(engines):
    m = _by_name(run_evaluator("kl_divergence", engines["none"], KL).metrics)
    assert m["kl_divergence_mean"] < 1e-6 and m["kl_divergence_p99"] < 1e-6
    assert m["top1_agreement"] == 1.0


@pytest.mark.slow   # three SmolLM2 loads (bitsandbytes on CPU): over a minute
def test_kl_orders_int8_below_nf4_and_reuses_the_baseline_cache(smol):
    from jobs.models import cache_root

    base = _by_name(run_evaluator("kl_divergence", smol["none"], KL_SMOL).metrics)
    assert base["kl_divergence_mean"] < 1e-6 and base["top1_agreement"] == 1.0
    refs = cache_root() / "baseline-logprobs"
    before = sorted(refs.glob("*.pt"))
    results = {q: _by_name(run_evaluator("kl_divergence", smol[q], KL_SMOL).metrics) for q in ("int8", "nf4")}
    print({q: {k: round(v, 6) for k, v in r.items()} for q, r in results.items()})
    assert 0 < results["int8"]["kl_divergence_mean"] < results["nf4"]["kl_divergence_mean"]
    assert results["int8"]["top1_agreement"] >= results["nf4"]["top1_agreement"]
    assert results["nf4"]["kl_divergence_p99"] >= results["nf4"]["kl_divergence_mean"]
    # the baseline cell's reference file is reused by every other cell: none added, no temp left
    assert before and sorted(refs.glob("*.pt")) == before and not list(refs.glob("*.tmp"))


@pytest.mark.slow   # three SmolLM2 loads (bitsandbytes on CPU): over a minute
def test_kl_reference_computed_by_a_quantized_cell_loads_the_base(tmp_path, monkeypatch, smol):
    # a fresh cache: the nf4 cell comes first and must load the unquantized base itself
    expected = _by_name(run_evaluator("kl_divergence", smol["nf4"], KL_SMOL).metrics)
    monkeypatch.setenv("QMX_CACHE", str(tmp_path))
    first = _by_name(run_evaluator("kl_divergence", smol["nf4"], KL_SMOL).metrics)
    assert list((tmp_path / "baseline-logprobs").glob("*.pt"))
    assert first["kl_divergence_mean"] == pytest.approx(expected["kl_divergence_mean"], rel=1e-4)
    base = _by_name(run_evaluator("kl_divergence", smol["none"], KL_SMOL).metrics)
    assert base["kl_divergence_mean"] < 1e-6 and base["top1_agreement"] == 1.0


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed")
def test_lm_eval_task_runs_offline(engines, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    (metric,) = run_evaluator("lm_eval", engines["none"], {"tasks": ["evals-mmlu"], "limit": 20, "num_fewshot": 0}).metrics
    print(f"lm-eval accuracy {metric.value:.3f} in {time.perf_counter() - start:.1f}s")
    assert metric.name == "accuracy" and 0.0 <= metric.value <= 1.0
    assert '"items": 20' in metric.settings and '"task": "evals-mmlu"' in metric.settings
