"""KL divergence of the cell's next-token distributions from its own unquantized baseline.

Scores the same tokens as perplexity (same corpus, context, stride and windows, via
`perplexity.scored_windows`). For every scored position t, with P the baseline's distribution
and Q the cell's:

    KL_t = sum_{v in S_t} p_v (log p_v - log q_v) + p_R log(p_R / q_R)

where S_t is the baseline's top-k tokens at t (k = `top_k`, default 64) and p_R, q_R are the
probability mass each model puts on all other tokens. This is the exact KL between P and Q
coarsened to k + 1 outcomes (the top-k tokens and one "rest" bucket), hence a *lower bound* on
the full-vocabulary KL (data-processing inequality); it is exact when the baseline puts no mass
outside its top-k. We store top-k rather than the full distribution so that the cached reference
stays small: 2048 tokens x 64 x (fp32 + int64) is ~1.6 MB, where the full 49k-token vocabulary
of SmolLM2 would be ~400 MB. `top_k` and `approximation` appear in every metric's settings, so
values computed with different k are never compared.

The baseline is the base model in the engine's compute dtype (fp32 on CPU, bf16 on GPU), run on
the engine's device. Its top-k log-probs are cached under
<cache>/baseline-logprobs/<digest>.pt; the first cell that needs them computes them (reusing its
own model when it *is* the unquantized base, else loading the base with transformers), later
cells, on any worker sharing the cache, read them.

Metrics, as llama.cpp's `perplexity --kl-divergence` reports them, over scored tokens:
kl_divergence_mean (with kl_divergence_mean_stderr), _median, _p90, _p99, _max (nats);
top1_agreement, llama.cpp's "same top p": the fraction of positions where the cell's argmax equals
the baseline's (with top1_agreement_stderr); delta_p_mean, delta_p_rms and delta_p_p1 .. delta_p_p99,
the change p_cell - p_base in the probability of the text's actual next token (probability units,
so -0.05 is five points lost); perplexity_ratio PPL(cell)/PPL(base) = exp(mean(nll_cell - nll_base))
on the same tokens, with perplexity_ratio_stderr (delta method on the per-token differences, which
treats tokens as independent, as llama.cpp does). The baseline against itself is the noise floor:
KL below 1e-6 and top1_agreement 1 (tests/test_evaluators.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.perplexity import corpus_token_ids, scored_windows
from jobs.filelock import file_lock
from jobs.models import cache_root

_CACHE_FORMAT = 2   # bump when the cached tensors' meaning changes (2: + target_logprob)


def _cache_path(engine, ids: list[int], settings: dict[str, Any], top_k: int) -> Path:
    key = {
        "format": _CACHE_FORMAT, "model": engine.base_path, "revision": engine.base_revision,
        "corpus": settings["corpus"], "context": settings["context"], "stride": settings["stride"],
        "max_tokens": settings.get("max_tokens"), "top_k": top_k, "bos": engine.tokenizer.bos_token_id,
        # the reference depends on the arithmetic it ran in, and on the exact tokens
        "dtype": engine.compute_dtype, "device": engine.device.split(":")[0],
        "tokens": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "baseline-logprobs" / f"{digest}.pt"


def _rest_logmass(logprobs, idx):
    """log of the probability mass outside `idx` per row, computed without cancellation."""
    return logprobs.scatter(1, idx, float("-inf")).logsumexp(dim=-1)


def _reference(logprobs_of: Callable, ids: list[int], settings: dict[str, Any], bos: int | None, top_k: int):
    """`logprobs_of(window, new)`: the reference's fp32 log-probs [new, vocab] (an engine's
    `next_token_logprobs`, or `window_logprobs` of the loaded base)."""
    import torch
    tops, idxs, rests, targets = [], [], [], []
    with torch.inference_mode():
        for window, new in scored_windows(ids, settings["context"], settings["stride"], bos):
            if new <= 0:
                continue
            lp = logprobs_of(window, new)
            top, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)   # sorted: column 0 is the argmax
            tops.append(top.cpu()); idxs.append(idx.cpu()); rests.append(_rest_logmass(lp, idx).cpu())
            targets.append(_target_logprobs(lp, window, new).cpu())
    return {"top_logprobs": torch.cat(tops), "top_ids": torch.cat(idxs), "rest_logmass": torch.cat(rests),
            "target_logprob": torch.cat(targets)}


def _target_logprobs(logprobs, window: list[int], new: int):
    """log-prob of the text's actual next token at each of the last `new` positions."""
    import torch
    return logprobs.gather(1, torch.tensor(window[-new:], device=logprobs.device)[:, None])[:, 0]


def baseline_reference(engine, ids: list[int], settings: dict[str, Any], top_k: int) -> dict[str, Any]:
    """The base model's top-k log-probs on the scored tokens: from the cache, or computed once."""
    import torch
    path = _cache_path(engine, ids, settings, top_k)
    if not path.is_file():
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():      # another worker may have written it while we waited
                bos = engine.tokenizer.bos_token_id
                if engine.is_base:       # the baseline cell's own model is the reference: no second copy in memory
                    ref = _reference(engine.next_token_logprobs, ids, settings, bos, top_k)
                else:
                    from jobs.engines.hf import load_base_model, window_logprobs
                    model = load_base_model(engine)
                    try:
                        ref = _reference(lambda window, new: window_logprobs(model, window, new, engine.device),
                                         ids, settings, bos, top_k)
                    finally:
                        del model
                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
                os.close(fd)
                try:
                    torch.save(ref, tmp)
                    os.replace(tmp, path)    # readers see the whole file or none
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    return torch.load(path, map_location="cpu", weights_only=True)


def kl_against_reference(engine, ids: list[int], settings: dict[str, Any], bos: int | None, ref: dict[str, Any]):
    """Per-token coarsened KL(P_ref || Q_engine), top-1 agreement and the cell's log-prob of the actual
    next token (1-D tensors)."""
    import torch
    kls, agree, targets, row = [], [], [], 0
    with torch.inference_mode():
        for window, new in scored_windows(ids, settings["context"], settings["stride"], bos):
            if new <= 0:
                continue
            q = engine.next_token_logprobs(window, new).cpu()
            p_top = ref["top_logprobs"][row:row + new]
            idx = ref["top_ids"][row:row + new]
            p_rest = ref["rest_logmass"][row:row + new]
            row += new
            q_top = q.gather(1, idx)
            q_rest = _rest_logmass(q, idx)
            kl = (p_top.exp() * (p_top - q_top)).sum(-1)
            # p_R log(p_R/q_R); 0 where the baseline leaves no mass outside its top-k
            kl = kl + torch.where(p_rest > float("-inf"), p_rest.exp() * (p_rest - q_rest), torch.zeros_like(kl))
            kls.append(kl.clamp_min(0.0))    # float rounding can dip a hair below 0
            agree.append((q.argmax(-1) == idx[:, 0]).float())
            targets.append(_target_logprobs(q, window, new))
    if row != ref["top_ids"].shape[0]:
        raise RuntimeError(f"baseline reference has {ref['top_ids'].shape[0]} positions, scored {row}")
    return torch.cat(kls), torch.cat(agree), torch.cat(targets)


def evaluate(engine, settings: dict[str, Any]) -> list[Metric] | Evaluation:
    if not engine.full_distribution:
        # e.g. vLLM returns only its own top-k per position, not the cell's mass on the baseline's top-k
        return Evaluation([], notes=(f"kl_divergence not measured on the {engine.name} engine: it needs the "
                                     "cell's full next-token distribution (hf engine)",))
    if engine.base_path is None:
        raise ValueError(f"engine {engine.name!r} does not name its base model; KL needs it")
    top_k = settings["top_k"]
    ids = corpus_token_ids(engine.tokenizer, settings["corpus"], settings.get("max_tokens"))
    ref = baseline_reference(engine, ids, settings, top_k)
    kl, agree, q_target = kl_against_reference(engine, ids, settings, engine.tokenizer.bos_token_id, ref)
    common = dict(corpus=settings["corpus"], context=settings["context"], stride=settings["stride"],
                  tokens=int(kl.numel()), top_k=top_k, reference=f"unquantized base, {engine.compute_dtype}",
                  approximation="top-k + rest bucket (lower bound on full KL)")
    return statistics_metrics(kl, agree, q_target, ref["target_logprob"], common)


_QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}
_DELTA_P_QUANTILES = {"p1": 0.01, "p5": 0.05, "median": 0.5, "p95": 0.95, "p99": 0.99}


def statistics_metrics(kl, agree, q_target, p_target, common: dict[str, Any]) -> list[Metric]:
    """llama.cpp's KL-divergence summary (see the module docstring) as metrics."""
    import math

    import torch
    kl, agree = kl.double(), agree.double()
    n = kl.numel()
    dp = q_target.double().exp() - p_target.double().exp()
    diff = p_target.double() - q_target.double()       # nll_cell - nll_base per token
    ratio = math.exp(diff.mean().item())
    prob = dict(common, delta_p="p_cell - p_base of the actual next token")
    out = [Metric.of("kl_divergence_mean", kl.mean().item(), "nats", "lower", **common),
           Metric.of("kl_divergence_mean_stderr", (kl.std() / math.sqrt(n)).item(), "nats", "none", **common)]
    out += [Metric.of(f"kl_divergence_{name}", torch.quantile(kl, q).item(), "nats", "lower", **common)
            for name, q in _QUANTILES.items()]
    out += [Metric.of("kl_divergence_max", kl.max().item(), "nats", "lower", **common),
            Metric.of("top1_agreement", agree.mean().item(), "fraction", "higher", **common),
            Metric.of("top1_agreement_stderr", math.sqrt(agree.mean().item() * (1 - agree.mean().item()) / n),
                      "fraction", "none", **common),
            Metric.of("delta_p_mean", dp.mean().item(), "probability", "higher", **prob),
            Metric.of("delta_p_rms", dp.square().mean().sqrt().item(), "probability", "lower", **prob)]
    out += [Metric.of(f"delta_p_{name}", torch.quantile(dp, q).item(), "probability", "none", **prob)
            for name, q in _DELTA_P_QUANTILES.items()]
    ppl = dict(common, formula="exp(mean(nll_cell - nll_base)) over the same tokens; stderr by the delta method, "
                               "tokens taken as independent (as llama.cpp)")
    out += [Metric.of("perplexity_ratio", ratio, "ratio", "lower", **ppl),
            Metric.of("perplexity_ratio_stderr", ratio * (diff.std() / math.sqrt(n)).item(), "ratio", "none", **ppl)]
    return out
