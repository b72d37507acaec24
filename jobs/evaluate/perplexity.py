"""Perplexity: sliding windows of `context` tokens moved by `stride`, on a named corpus.

Each window scores only the tokens not scored by the previous one (stride == context gives
non-overlapping windows). A BOS token is prepended to every window when the tokenizer has one.
Every row's settings name this convention (`convention`), and `perplexity_stderr` its standard
error over windows; the sanity gates (jobs.evaluate.sanity) ride along.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

from jobs.corpora import load_corpus
from jobs.evaluate import Evaluation, Metric


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


def window_nlls(model, token_ids: list[int], context: int, stride: int, bos: int | None,
                device: str) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, scored tokens) per window under a transformers `model`."""
    import torch

    out = []
    with torch.inference_mode():
        for window, new in scored_windows(token_ids, context, stride, bos):
            x = torch.tensor([window], device=device)
            logits = model(x).logits[0, :-1].float()
            targets = x[0, 1:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            out.append((-logprobs[-new:].sum().item(), new))
    return out


def window_nlls_vllm(base_url: str, token_ids: list[int], context: int, stride: int,
                     bos: int | None) -> list[tuple[float, int]]:
    """The same windows scored by the cell's vLLM server: `prompt_logprobs=0` returns each prompt
    token's own log-prob (from the raw logits), all windows in one request."""
    from jobs.serving.openai_batch import prompt_logprobs

    windows = list(scored_windows(token_ids, context, stride, bos))
    per_window = prompt_logprobs(base_url, [w for w, _ in windows])
    return [(-sum(per_pos[len(window) - new:]), new) for (window, new), per_pos in zip(windows, per_window)]


def _pooled(nlls: list[tuple[float, int]]) -> tuple[float, int]:
    nll, scored = sum(n for n, _ in nlls), sum(k for _, k in nlls)
    return math.exp(nll / scored), scored


def perplexity(model, token_ids: list[int], context: int, stride: int, bos: int | None, device: str) -> tuple[float, int]:
    """(perplexity, number of scored tokens) of `token_ids` under a transformers `model`."""
    return _pooled(window_nlls(model, token_ids, context, stride, bos, device))


def perplexity_vllm(base_url: str, token_ids: list[int], context: int, stride: int, bos: int | None) -> tuple[float, int]:
    return _pooled(window_nlls_vllm(base_url, token_ids, context, stride, bos))


def perplexity_stderr(nlls: list[tuple[float, int]]) -> float:
    """Standard error of the perplexity over windows (windows, not tokens, are the independent units:
    neighbouring tokens are correlated). With L_w = nll_w / n_w, L = sum(nll_w) / sum(n_w) and W windows,
    SE(L)^2 = W / (W - 1) * sum(n_w^2 (L_w - L)^2) / (sum n_w)^2, and SE(ppl) = ppl * SE(L) (delta method).
    NaN for a single window."""
    if len(nlls) < 2:
        return float("nan")
    total = sum(k for _, k in nlls)
    mean = sum(n for n, _ in nlls) / total
    var = len(nlls) / (len(nlls) - 1) * sum(k * k * (n / k - mean) ** 2 for n, k in nlls) / total ** 2
    return math.exp(mean) * math.sqrt(var)


def convention(settings: dict[str, Any], bos: int | None) -> dict[str, Any]:
    """What every perplexity row says about how it was computed (so no one compares it with lm-eval's
    word perplexity or with per-document scoring by mistake)."""
    context, stride = settings["context"], settings["stride"]
    return dict(corpus=settings["corpus"], context=context, stride=stride, bos=bos is not None,
                level="token (exp of mean NLL per token; not lm-eval's word perplexity)",
                text="documents joined by a blank line into one stream (not per document)",
                windows="non-overlapping" if stride >= context else f"sliding, each scores its last {stride} new tokens",
                bos_handling="BOS prepended to every window" if bos is not None else "no BOS; each window's first token unscored")


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    from jobs.evaluate.sanity import perplexity_gates

    ids = corpus_token_ids(engine.tokenizer, settings["corpus"], settings.get("max_tokens"))
    bos = engine.tokenizer.bos_token_id
    if engine.name == "vllm":
        nlls = window_nlls_vllm(engine.handle.url, ids, settings["context"], settings["stride"], bos)
    else:
        nlls = window_nlls(engine.model, ids, settings["context"], settings["stride"], bos, engine.device)
    ppl, scored = _pooled(nlls)
    common = dict(convention(settings, bos), tokens=scored)
    metrics = [Metric.of("perplexity", ppl, "ppl", "lower", **common)]
    if len(nlls) > 1:
        metrics.append(Metric.of("perplexity_stderr", perplexity_stderr(nlls), "ppl", "none", window_count=len(nlls),
                                 formula="ppl * SE of the mean token NLL over windows (delta method)", **common))
    gates = perplexity_gates(engine, settings, ids, ppl, bos)
    return Evaluation(metrics + gates.metrics, notes=gates.notes)
