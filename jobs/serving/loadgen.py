"""An asyncio load generator for any OpenAI-compatible completions server.

Per load level it sends `requests` requests, either closed loop (each of `concurrency`
clients sends its next request when its last one finishes) or open loop (Poisson arrivals
at `request_rate` req/s from a fixed seed, at most `concurrency` in flight; like vLLM's
`--max-concurrency`, a request's clock starts when it is sent, not while it waits for a
slot). Each request gets a distinct window of the corpus of exactly `prompt_tokens` tokens, so
a server's prefix cache cannot serve one request from another: as token ids, or as text that
re-encodes to the same count (text_prompts), which the server tokenizes inside its TTFT clock.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from jobs.serving.openai_stream import StreamResult, completion_payload, stream_completion
from jobs.serving.stats import RequestSample, request_sample
from jobs.stages import report

# a request may queue behind many others on a slow server; a hung one must still end the run
REQUEST_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class LoadLevel:
    concurrency: int
    requests: int
    request_rate: float | None = None      # None: closed loop


@dataclass(frozen=True)
class LevelRun:
    level: LoadLevel
    samples: tuple[RequestSample, ...]     # one per request sent, failed ones included
    duration_s: float                      # first send -> last response
    ended_at: float                        # the last response, wall clock: lines the run up with other clocks


PREFIX_SHIFT = 64      # tokens between the starts of a window and its shifted copy


def corpus_prompts(token_ids: Sequence[int], prompt_tokens: int, count: int | None = None) -> list[list[int]]:
    """`count` windows of exactly `prompt_tokens` tokens (None: every one), no two starting at the same
    token: the consecutive windows while the text lasts, then the same shifted by PREFIX_SHIFT tokens, and
    so on. vLLM's prefix cache hashes blocks chained from a prompt's first token, so a prompt that starts
    where no earlier one did has no cached prefill; a repeated prompt would be served from the cache and
    read as a fast TTFT (2026-12-02: the 7B spec's c=128 level reused 109 of its 128 prompts)."""
    starts = [start for shift in range(0, prompt_tokens, PREFIX_SHIFT)
              for start in range(shift, len(token_ids) - prompt_tokens + 1, prompt_tokens)]
    if not starts:
        raise ValueError(f"corpus has {len(token_ids)} tokens, fewer than one prompt of {prompt_tokens}")
    count = len(starts) if count is None else count
    if not 0 <= count <= len(starts):
        raise ValueError(f"corpus has {len(token_ids)} tokens: {len(starts)} distinct prompts of {prompt_tokens} "
                         f"tokens, {count} asked for: fewer requests or shorter prompts")
    return [list(token_ids[start:start + prompt_tokens]) for start in starts[:count]]


def exact_text(tokenizer, window: Sequence[int]) -> str | None:
    """`window` decoded to text, if that text re-encodes (no special tokens) to as many tokens; else None."""
    text = tokenizer.decode(list(window), clean_up_tokenization_spaces=False)     # the corpus's own spacing
    return text if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(window) else None


def text_prompts(tokenizer, windows: Sequence[Sequence[int]], count: int) -> list[str]:
    """The first `count` of `windows` whose text re-encodes to the window's length (exact_text), as text;
    the others are skipped. Text is what users send: the server tokenizes it inside its TTFT clock (vLLM: 2.6 ms
    for 1024 tokens on the H200, 2026-12-02), which token ids skip."""
    out = []
    for window in windows:
        if len(out) == count:
            break
        if (text := exact_text(tokenizer, window)) is not None:
            out.append(text)
    if len(out) < count:
        raise ValueError(f"{len(out)} of the corpus's {len(windows)} distinct prompts re-encode to their length as "
                         f"text, {count} asked for: fewer requests, shorter prompts or prompt_format token_ids")
    return out


def arrival_times(count: int, rate: float, seed: int) -> list[float]:
    """Poisson arrivals (exponential gaps), scaled so the last lands at count / rate as vLLM does."""
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    scale = (count / rate) / times[-1] if times and times[-1] > 0 else 1.0
    return [x * scale for x in times]


async def _served_model(session, base_url: str) -> str | None:
    try:
        async with session.get(f"{base_url}/v1/models") as r:
            return (await r.json())["data"][0]["id"] if r.status == 200 else None
    except Exception:
        return None


async def _run_level(session, url: str, model: str | None, prompts: Sequence[list[int] | str], output_tokens: int,
                     level: LoadLevel, count_tokens: Callable[[str], int], seed: int,
                     continuous_usage: bool = True) -> LevelRun:
    results: list[StreamResult | None] = [None] * level.requests

    async def one(i: int) -> None:
        # only the stream: counting tokens here held every next send back (benchmarks/results/h200-2026-12-02-f)
        results[i] = await stream_completion(session, url, completion_payload(model, prompts[i], output_tokens,
                                                                               continuous_usage))

    start = time.perf_counter()
    if level.request_rate is None:
        pending = iter(range(level.requests))

        async def client() -> None:
            for i in pending:          # a shared iterator: each client takes the next request
                await one(i)
        await asyncio.gather(*(client() for _ in range(level.concurrency)))
    else:
        slots = asyncio.Semaphore(level.concurrency)

        async def arrive(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            async with slots:
                await one(i)
        await asyncio.gather(*(arrive(i, at) for i, at in
                               enumerate(arrival_times(level.requests, level.request_rate, seed))))
    duration, ended_at = time.perf_counter() - start, time.time()
    assert all(r is not None for r in results)
    return LevelRun(level, tuple(_sample(i, result, prompts[i], count_tokens) for i, result in enumerate(results)),
                    duration, ended_at)


def _sample(i: int, result: StreamResult, sent: list[int] | str, count_tokens: Callable[[str], int]) -> RequestSample:
    """A finished stream's timings; a text prompt is counted here only where the server reported no length."""
    if isinstance(sent, str):
        length = result.prompt_tokens if result.prompt_tokens is not None else count_tokens(sent)
    else:
        length = len(sent)
    return request_sample(i, result, count_tokens, length)


async def _run(base_url: str, prompts: Sequence[list[int] | str], output_tokens: int, levels: Sequence[LoadLevel],
               count_tokens: Callable[[str], int], seed: int, warmup: int, continuous_usage: bool) -> list[LevelRun]:
    import aiohttp

    url = f"{base_url}/v1/completions"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=max(level.concurrency for level in levels))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        model = await _served_model(session, base_url)
        offset = 0
        for _ in range(warmup):        # first-call costs (allocations, lazy init) stay out of the numbers
            await stream_completion(session, url, completion_payload(model, prompts[offset], output_tokens,
                                                                     continuous_usage))
            offset += 1
        runs = []
        for k, level in enumerate(levels, 1):
            rate = "" if level.request_rate is None else f", {level.request_rate:g} req/s"
            report("serving", f"level {k}/{len(levels)}: concurrency {level.concurrency}{rate}")
            runs.append(await _run_level(session, url, model, prompts[offset:offset + level.requests],
                                         output_tokens, level, count_tokens, seed, continuous_usage))
            offset += level.requests
        return runs


def run_levels(base_url: str, prompts: Sequence[list[int] | str], output_tokens: int, levels: Sequence[LoadLevel],
               count_tokens: Callable[[str], int], seed: int = 0, warmup: int = 1,
               continuous_usage: bool = True) -> list[LevelRun]:
    """Run the levels in order; `prompts` needs warmup + sum of requests entries (see corpus_prompts).
    `continuous_usage`: ask vLLM for a token count with every chunk (see completion_payload)."""
    needed = warmup + sum(level.requests for level in levels)
    if len(prompts) < needed:
        raise ValueError(f"{len(prompts)} prompts for {needed} requests")
    return asyncio.run(_run(base_url, prompts, output_tokens, levels, count_tokens, seed, warmup, continuous_usage))
