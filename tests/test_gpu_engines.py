"""The vLLM engine on a CUDA GPU (run on the lent GPU: `bash cluster/gpu/run.sh tests`).

Skipped where there is no CUDA or no vLLM. SmolLM2 at bf16: vLLM's perplexity must agree with
the transformers engine's on the same windows, and the fp8 KV cache must hold more tokens.
"""
from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")]

PPL = {"corpus": "evals-wikipedia", "context": 512, "stride": 512, "max_tokens": 2048}


def _cell(engine: str, kv: str = "auto"):
    from matrix import expand_matrix
    from matrix.spec import parse_spec
    spec = parse_spec({"name": "gpu", "models": [{"id": "builtin:smollm2-135m-instruct"}],
                       "methods": [{"method": "none"}], "engine": [engine], "kv_cache_dtype": [kv]})
    (cell,) = expand_matrix(spec).cells
    return cell


def _load(cell):
    from jobs.artifacts import ensure_artifact
    from jobs.engines import load_engine
    return load_engine(cell, ensure_artifact(cell))


def test_vllm_perplexity_matches_transformers_and_fp8_kv_doubles_capacity():
    from jobs.evaluate import run_evaluator

    hf = _load(_cell("hf"))
    hf_ppl = run_evaluator("perplexity", hf, PPL).metrics[0]
    hf.close()
    auto = _load(_cell("vllm"))
    vllm_ppl = run_evaluator("perplexity", auto, PPL).metrics[0]
    # the Engine interface on the cell's server: exact token counts, own-token log-probs, its server handle
    ids = auto.tokenizer("The capital of France is")["input_ids"]
    assert [len(t) for t in auto.generate([ids, ids], 5)] == [5, 5]
    (own,) = auto.prompt_logprobs([ids])
    assert own[0] is None and len(own) == len(ids) and all(x <= 0 for x in own[1:])
    (text,) = auto.generate_text([ids], 8, stop=("\n",))
    assert 0 < text.tokens <= 8 and "\n" not in text.text
    with auto.serve({}) as served:
        assert served.url == auto.server.url and served.batching == "continuous"
    assert not auto.full_distribution
    memory = {m.name: m.value for m in run_evaluator("memory", auto, {}).metrics}
    server = auto.server
    auto.close()                 # stops its `vllm serve`
    fp8 = _load(_cell("vllm", "fp8_e4m3"))
    fp8_memory = {m.name: m.value for m in run_evaluator("memory", fp8, {}).metrics}
    fp8.close()
    print(f"GPU vllm {torch.cuda.get_device_name()}: perplexity {vllm_ppl.value:.3f} (transformers {hf_ppl.value:.3f}) "
          f"kv_cache_tokens auto {memory['kv_cache_tokens']:.0f} fp8_e4m3 {fp8_memory['kv_cache_tokens']:.0f} "
          f"load seconds {auto.load_seconds:.1f} / {fp8.load_seconds:.1f}")
    # both bf16 on the same tokens: kernels differ, the model does not
    assert vllm_ppl.value == pytest.approx(hf_ppl.value, rel=0.01)
    assert memory["kv_cache_tokens"] > 0
    assert auto.info.engine_starts == 1 and server.proc.poll() is not None   # closed: its server is gone
    assert fp8_memory["kv_cache_tokens"] > 1.8 * memory["kv_cache_tokens"]
