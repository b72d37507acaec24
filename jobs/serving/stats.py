"""Pure statistics of a served-latency run: per-request timings from streamed chunks, then
percentiles, throughput and goodput per load level. Definitions follow vLLM's `bench serve`.

A chunk may carry several tokens (vLLM under load, speculative decoding, a server that
flushes per step). Tokens per chunk come from the server's cumulative usage when it reports
one with every chunk (vLLM `continuous_usage_stats`), else from re-tokenizing the text
received so far. TTFT ends at the first chunk that carries a token; the gap before each
later chunk is spread evenly over its tokens; tokens that arrive together with the first
one get gap 0. So a request's ITLs sum to E2E - TTFT, and their mean is its TPOT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from jobs.serving.openai_stream import Chunk, StreamResult

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class RequestSample:
    request: int
    ok: bool
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None            # send -> first chunk carrying a token
    e2e_s: float | None             # send -> last chunk carrying a token
    itl_s: tuple[float, ...]        # one gap per token after the first
    error: str = ""
    token_counts: str = "server"    # "server" (continuous usage) or "retokenized"

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); None for a failed or single-token request."""
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def chunk_token_counts(chunks: Sequence[Chunk], count_tokens: Callable[[str], int]) -> tuple[list[int], str]:
    """Tokens carried by each chunk, and where the counts came from."""
    if chunks and all(c.completion_tokens is not None for c in chunks):
        counts, seen = [], 0
        for c in chunks:
            counts.append(max(c.completion_tokens - seen, 0))
            seen = max(seen, c.completion_tokens)
        return counts, "server"
    # re-tokenize the cumulative text: counting each chunk alone would miscount merges across chunk edges
    counts, text, seen = [], "", 0
    for c in chunks:
        text += c.text
        n = count_tokens(text) if text else 0
        counts.append(max(n - seen, 0))
        seen = max(seen, n)
    return counts, "retokenized"


def request_sample(index: int, result: StreamResult, count_tokens: Callable[[str], int],
                   prompt_tokens: int) -> RequestSample:
    prompt = result.prompt_tokens if result.prompt_tokens is not None else prompt_tokens
    counts, source = chunk_token_counts(result.chunks, count_tokens)
    timed = [(c.at, n) for c, n in zip(result.chunks, counts) if n > 0]
    if not result.ok or not timed:
        error = result.error or "no chunk carried a token"
        return RequestSample(index, False, prompt, 0, None, None, (), error, source)
    itl = [0.0] * (timed[0][1] - 1)
    for (before, _), (at, n) in zip(timed, timed[1:]):
        itl += [(at - before) / n] * n
    total = result.completion_tokens if result.completion_tokens is not None else sum(counts)
    return RequestSample(index, True, prompt, total, timed[0][0], timed[-1][0], tuple(itl), "", source)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def meets_sla(sample: RequestSample, sla_ttft_ms: float, sla_tpot_ms: float) -> bool:
    """vLLM's goodput rule: a successful request within both limits (TPOT counts as 0 for one token)."""
    return (sample.ok and sample.ttft_s * 1000 <= sla_ttft_ms
            and (sample.tpot_s or 0.0) * 1000 <= sla_tpot_ms)


def summarize(samples: Sequence[RequestSample], duration_s: float, sla_ttft_ms: float,
              sla_tpot_ms: float) -> dict[str, tuple[float, str]]:
    """Metric name -> (value, unit) for one load level; latencies in ms over successful requests."""
    ok = [s for s in samples if s.ok]
    series = {
        "ttft": [s.ttft_s * 1000 for s in ok],
        "tpot": [s.tpot_s * 1000 for s in ok if s.tpot_s is not None],
        "itl": [g * 1000 for s in ok for g in s.itl_s],      # pooled over all tokens, as vLLM does
        "e2e": [s.e2e_s * 1000 for s in ok],
    }
    out: dict[str, tuple[float, str]] = {}
    for name, values in series.items():
        out[f"{name}_ms_mean"] = (sum(values) / len(values) if values else math.nan, "ms")
        for q in PERCENTILES:
            out[f"{name}_ms_p{q}"] = (percentile(values, q), "ms")
    good = sum(meets_sla(s, sla_ttft_ms, sla_tpot_ms) for s in samples)
    out["request_throughput"] = (len(ok) / duration_s, "req/s")
    out["output_tokens_per_s"] = (sum(s.output_tokens for s in ok) / duration_s, "tok/s")
    out["goodput"] = (good / duration_s, "req/s")
    out["requests_ok"] = (len(ok), "requests")
    out["requests_failed"] = (len(samples) - len(ok), "requests")
    out["duration_s"] = (duration_s, "s")
    return out
