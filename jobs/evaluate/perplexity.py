"""Perplexity: sliding windows of `context` tokens moved by `stride`, on a named corpus.

Each window scores only the tokens not scored by the previous one (stride == context gives
non-overlapping windows). A BOS token is prepended to every window when the tokenizer has one.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

from jobs.corpora import load_corpus
from jobs.evaluate import Metric


def corpus_token_ids(tokenizer, corpus: str, max_tokens: int | None) -> list[int]:
    text = "\n\n".join(load_corpus(corpus))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:max_tokens] if max_tokens else ids


def scored_windows(token_ids: list[int], context: int, stride: int, bos: int | None) -> Iterator[tuple[list[int], int]]:
    """(model input, number of new scored positions at its end) per window.

    Shared with the KL evaluator, so both score exactly the same tokens.
    """
    prev_end = 0
    for begin in range(0, len(token_ids), stride):
        end = min(begin + context, len(token_ids))
        prefix = [bos] if bos is not None else []
        # without a BOS the window's first token has nothing to be predicted from
        new = end - max(prev_end, begin) if bos is not None else end - max(prev_end, begin + 1)
        yield prefix + token_ids[begin:end], new
        prev_end = end
        if end == len(token_ids):
            break


def perplexity(model, token_ids: list[int], context: int, stride: int, bos: int | None, device: str) -> tuple[float, int]:
    """(perplexity, number of scored tokens) of `token_ids` under a transformers `model`."""
    import torch

    nll, scored = 0.0, 0
    with torch.inference_mode():
        for window, new in scored_windows(token_ids, context, stride, bos):
            x = torch.tensor([window], device=device)
            logits = model(x).logits[0, :-1].float()
            targets = x[0, 1:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            nll -= logprobs[-new:].sum().item()
            scored += new
    return math.exp(nll / scored), scored


def perplexity_vllm(llm, token_ids: list[int], context: int, stride: int, bos: int | None) -> tuple[float, int]:
    """The same windows scored by vLLM: `prompt_logprobs=0` returns each prompt token's own
    log-prob (from the raw logits), all windows in one batched `generate`."""
    from vllm import SamplingParams

    windows = list(scored_windows(token_ids, context, stride, bos))
    outs = llm.generate([{"prompt_token_ids": w} for w, _ in windows],
                        SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
    nll, scored = 0.0, 0
    for (window, new), out in zip(windows, outs):
        per_pos = out.prompt_logprobs            # [None, {token: Logprob}, ...], one per prompt position
        for pos in range(len(window) - new, len(window)):
            nll -= per_pos[pos][window[pos]].logprob
        scored += new
    return math.exp(nll / scored), scored


def evaluate(engine, settings: dict[str, Any]) -> list[Metric]:
    ids = corpus_token_ids(engine.tokenizer, settings["corpus"], settings.get("max_tokens"))
    bos = engine.tokenizer.bos_token_id
    if engine.name == "vllm":
        ppl, scored = perplexity_vllm(engine.handle, ids, settings["context"], settings["stride"], bos)
    else:
        ppl, scored = perplexity(engine.model, ids, settings["context"], settings["stride"], bos, engine.device)
    return [Metric.of("perplexity", ppl, "ppl", "lower", corpus=settings["corpus"], context=settings["context"],
                      stride=settings["stride"], tokens=scored, bos=engine.tokenizer.bos_token_id is not None)]
