"""Offline decode speed at batch 1: greedy generation of a fixed number of new tokens.

decode tokens/s = (N - 1) / (t(N) - t(1)): generating 1 token is the prefill (TTFT),
the difference is pure decode. The median over `repeats` runs after one warm-up.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from jobs.corpora import load_corpus
from jobs.evaluate import Metric


def _timed_generate(model, x, new_tokens: int) -> float:
    import torch

    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=model.config.eos_token_id)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def evaluate(engine, settings: dict[str, Any]) -> list[Metric]:
    import torch

    n_prompt, n_new, repeats = settings["prompt_tokens"], settings["new_tokens"], settings["repeats"]
    ids = engine.tokenizer(load_corpus("evals-wikipedia")[0], add_special_tokens=False)["input_ids"][:n_prompt]
    x = torch.tensor([ids], device=engine.device)
    _timed_generate(engine.model, x, 2)      # warm-up
    ttft, full = [], []
    for _ in range(repeats):
        ttft.append(_timed_generate(engine.model, x, 1))
        full.append(_timed_generate(engine.model, x, n_new))
    t1, tn = statistics.median(ttft), statistics.median(full)
    common = dict(batch=1, prompt_tokens=n_prompt, new_tokens=n_new, repeats=repeats, device=engine.device,
                  compute_dtype=engine.compute_dtype)
    return [
        Metric.of("decode_tokens_per_s", (n_new - 1) / max(tn - t1, 1e-9), "tok/s", "higher", **common),
        Metric.of("ttft_ms", t1 * 1000, "ms", "lower", **common),
    ]
