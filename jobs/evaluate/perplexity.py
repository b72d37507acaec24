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


def window_nlls(engine, token_ids: list[int], context: int, stride: int, bos: int | None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, scored tokens) per window, from the engine's own-token log-probs
    (`prompt_logprobs`: all windows in one call)."""
    windows = list(scored_windows(token_ids, context, stride, bos))
    per_window = engine.prompt_logprobs([w for w, _ in windows])
    return [(-sum(per_pos[len(window) - new:]), new) for (window, new), per_pos in zip(windows, per_window)]


def _pooled(nlls: list[tuple[float, int]]) -> tuple[float, int]:
    nll, scored = sum(n for n, _ in nlls), sum(k for _, k in nlls)
    return math.exp(nll / scored), scored


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
    nlls = window_nlls(engine, ids, settings["context"], settings["stride"], bos)
    ppl, scored = _pooled(nlls)
    common = dict(convention(settings, bos), tokens=scored)
    metrics = [Metric.of("perplexity", ppl, "ppl", "lower", **common)]
    if len(nlls) > 1:
        metrics.append(Metric.of("perplexity_stderr", perplexity_stderr(nlls), "ppl", "none", window_count=len(nlls),
                                 formula="ppl * SE of the mean token NLL over windows (delta method)", **common))
    gates = perplexity_gates(engine, settings, ids, ppl, bos)
    return Evaluation(metrics + gates.metrics, notes=gates.notes)
