"""Offline speed: batch-1 decode, optional batched throughput, MBU and energy on GPUs.

decode tokens/s = (N - 1) / (t(N) - t(1)): generating 1 token is the prefill (TTFT), the
difference is pure decode. Medians over `repeats` runs after one warm-up, each run on a prompt of
its own (distinct corpus windows, so no prefix cache serves a prefill). The spread of the repeats
rides beside each median as `decode_tokens_per_s_min`/`_max` and `ttft_ms_min`/`_max`.

Batched throughput (`batch_prompts` > 0): that many prompts of `prompt_tokens` at once, each
generating exactly `new_tokens` (EOS ignored); output tokens/s = all generated tokens / wall time.

MBU (model bandwidth utilisation) of batch-1 decode = bytes read per decode step / TPOT / the
GPU's peak memory bandwidth (matrix.hardware's table, named in the settings). Bytes per step =
weight bytes + the KV cache read at the mean context of the decode (prompt + N/2 tokens).

Energy: joules per output token of the batch-1 decode runs, from NVML's total-energy counter of
the cell's GPU (the whole board, so it includes anything else running on it).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from jobs.evaluate import Metric
from jobs.evaluate.perplexity import corpus_token_ids
from jobs.models import read_config
from jobs.stages import report
from matrix.estimate import KV_BYTES, Shape


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _EnergyMeter:
    """NVML total-energy counter (mJ) of the GPU this process sees first; None where unavailable."""

    def __init__(self):
        self.handle = None
        try:
            from jobs.nvml import visible_gpu_handle
            self.handle = visible_gpu_handle()
            self.read()
        except Exception:      # no NVML, no GPU, or a board without the counter
            self.handle = None

    def read(self) -> float | None:
        if self.handle is None:
            return None
        import pynvml
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


def _mbu(engine, tpot_s: float, context: float) -> list[Metric]:
    from matrix.hardware import accelerator_for_device_name
    import torch

    gpu = accelerator_for_device_name(torch.cuda.get_device_name())
    if gpu is None or not engine.weight_bytes_at_load:
        return []
    shape = Shape.from_config(read_config(engine.base_path, engine.base_revision))
    kv = shape.kv_bytes_per_token(KV_BYTES.get(engine.kv_cache_dtype, 2)) * context if shape else 0
    step_bytes = engine.weight_bytes_at_load + kv
    return [Metric.of("mbu", step_bytes / tpot_s / (gpu.bandwidth_gbps * 1e9), "fraction", "higher",
                      gpu=gpu.name, peak_bandwidth_gbps=gpu.bandwidth_gbps, weight_bytes=engine.weight_bytes_at_load,
                      kv_bytes_read=round(kv), context_tokens=context, batch=1,
                      bandwidth_table="matrix.hardware")]


def _distinct_prompts(tokenizer, n_prompt: int, count: int) -> list[list[int]]:
    """`count` different windows of `n_prompt` corpus tokens: no engine can serve one's prefill from a
    prefix cache of another (vLLM caches prefixes by default)."""
    pool = corpus_token_ids(tokenizer, "evals-wikipedia", None)
    if len(pool) < count * n_prompt:
        raise ValueError(f"speed: {count} prompts of prompt_tokens={n_prompt} need {count * n_prompt} corpus "
                         f"tokens (lower speed.batch_prompts or speed.prompt_tokens); evals-wikipedia has {len(pool)}")
    return [pool[i * n_prompt:(i + 1) * n_prompt] for i in range(count)]


def _spread(common: dict[str, Any], *figures: tuple[str, str, list[float]]) -> list[Metric]:
    """`<name>_min` and `<name>_max` over the repeats beside each median figure (the decode rate of
    one run: its full generate minus its own prefill)."""
    return [Metric.of(f"{name}_{k}", f(values), unit, "none", of=name, **common)
            for name, unit, values in figures for k, f in (("min", min), ("max", max))]


def evaluate(engine, settings: dict[str, Any]) -> list[Metric]:
    n_prompt, n_new, repeats = settings["prompt_tokens"], settings["new_tokens"], settings["repeats"]
    generate = engine.generate      # exactly n_new greedy tokens per prompt, EOS ignored
    batch = settings["batch_prompts"]
    # every prompt sent is a window no other one shares: a server's prefix cache (vLLM's is on by default)
    # must not serve a timed prefill (re-sent windows read 1.6x: benchmarks/results/h200-2026-12-02)
    single, batch_warm = 1 + 2 * repeats, min(8, batch)
    windows = _distinct_prompts(engine.tokenizer, n_prompt, single + batch_warm + batch)
    (warm, *fresh), batch_warm, prompts = windows[:single], windows[single:single + batch_warm], windows[single + batch_warm:]
    generate([warm], 2)
    meter = _EnergyMeter() if engine.device == "cuda" else None
    ttft, full, joules = [], [], []
    for r in range(repeats):
        report("speed", f"run {r + 1}/{repeats}")
        ttft.append(_timed(lambda: generate([fresh[2 * r]], 1)))
        before = meter.read() if meter else None
        full.append(_timed(lambda: generate([fresh[2 * r + 1]], n_new)))
        if before is not None:
            joules.append(meter.read() - before)
    t1, tn = statistics.median(ttft), statistics.median(full)
    tpot = max(tn - t1, 1e-9) / (n_new - 1)
    common = dict(batch=1, prompt_tokens=n_prompt, new_tokens=n_new, repeats=repeats, device=engine.device,
                  compute_dtype=engine.compute_dtype, engine=engine.name, prompts="distinct")
    out = [
        Metric.of("decode_tokens_per_s", 1 / tpot, "tok/s", "higher", **common),
        Metric.of("ttft_ms", t1 * 1000, "ms", "lower", **common),
    ]
    out += _spread(common, ("decode_tokens_per_s", "tok/s", [(n_new - 1) / max(f - t, 1e-9) for f, t in zip(full, ttft)]),
                   ("ttft_ms", "ms", [t * 1000 for t in ttft]))
    if engine.device == "cuda":
        out += _mbu(engine, tpot, n_prompt + n_new / 2)
    if joules:
        out.append(Metric.of("energy_j_per_token", statistics.median(joules) / n_new, "J/token", "lower",
                             source="nvml total energy, whole board", **common))
    if batch:
        generate(batch_warm, 2)      # warm the batched path
        seconds = _timed(lambda: generate(prompts, n_new))
        out.append(Metric.of("throughput_output_tokens_per_s", batch * n_new / seconds, "tok/s", "higher",
                             **{**common, "batch": batch, "repeats": 1}))     # one timed generate
    return out
