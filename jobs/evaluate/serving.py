"""Served latency under load: TTFT, TPOT, ITL and end-to-end latency percentiles, request and
token throughput and goodput, per concurrency level, through the engine's OpenAI-compatible
server (jobs.serving), with prompts sent as text (tokenized by the server, inside its TTFT) or as token
ids (`prompt_format`). One `samples` row per request, failed ones included.
"""
from __future__ import annotations

import math
from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.perplexity import corpus_token_ids
from jobs.serving.loadgen import LevelRun, LoadLevel, corpus_prompts, run_levels, text_prompts
from jobs.serving.stats import summarize
from matrix.spec import ServingSpec, without_absent

SEED, WARMUP = 0, 1
# each of matrix.spec.PROMPT_FORMATS: `count` distinct corpus windows of `length` tokens, as the server is sent them
PROMPTS = {"token_ids": lambda tok, corpus, length, count: corpus_prompts(corpus, length, count),
           "text": lambda tok, corpus, length, count: text_prompts(tok, corpus_prompts(corpus, length), count)}
_DIRECTION = {"request_throughput": "higher", "output_tokens_per_s": "higher", "goodput": "higher",
              "requests_ok": "higher", "requests_failed": "lower", "duration_s": "none"}


def _rows(run: LevelRun) -> list[dict[str, Any]]:
    def ms(x):
        return None if x is None else x * 1000
    return [{"concurrency": run.level.concurrency, "request_rate": run.level.request_rate, "request": s.request,
             "ok": s.ok, "prompt_tokens": s.prompt_tokens, "output_tokens": s.output_tokens,
             "ttft_ms": ms(s.ttft_s), "tpot_ms": ms(s.tpot_s),
             "itl_ms_mean": ms(sum(s.itl_s) / len(s.itl_s)) if s.itl_s else None,
             "e2e_ms": ms(s.e2e_s), "error": s.error or None} for s in run.samples]


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    cfg = settings      # matrix.spec.ServingSpec's, every default filled in (jobs.evaluate.run_evaluator)
    n, rate = int(cfg["requests_per_level"]), cfg["request_rate"]
    levels = [LoadLevel(int(c), n, None if rate is None else float(rate)) for c in cfg["concurrency"]]
    tok = engine.tokenizer
    prompts = PROMPTS[cfg["prompt_format"]](tok, corpus_token_ids(tok, cfg["corpus"], None), int(cfg["prompt_tokens"]),
                                            WARMUP + n * len(levels))

    def count_tokens(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    with engine.serve(settings) as server:
        runs = run_levels(server.url, prompts, int(cfg["output_tokens"]), levels, count_tokens, SEED, WARMUP)

    batching = server.batching
    metrics, rows = [], []
    for run in runs:
        # the percentiles' sample size is part of the claim: every request asked for was sent and recorded
        assert len(run.samples) == run.level.requests, (len(run.samples), run.level.requests)
        common = dict(concurrency=run.level.concurrency, request_rate=run.level.request_rate,
                      requests=run.level.requests, prompt_tokens=int(cfg["prompt_tokens"]),
                      output_tokens=int(cfg["output_tokens"]), sla_ttft_ms=float(cfg["sla_ttft_ms"]),
                      sla_tpot_ms=float(cfg["sla_tpot_ms"]), corpus=cfg["corpus"], server_batching=batching,
                      engine=engine.name, device=engine.device, compute_dtype=engine.compute_dtype,
                      seed=SEED, warmup_requests=WARMUP, ignore_eos=True, decoding="greedy",
                      prompt_format=cfg["prompt_format"])
        # token_ids, as every served figure was measured before the field: settings written as then, so they
        # still pair with the old figures (qmx compare keys figures by their settings)
        common = without_absent(ServingSpec, common)
        # where per-chunk token counts came from: the server's continuous usage, or re-tokenized text
        common["token_counts"] = ",".join(sorted({s.token_counts for s in run.samples if s.ok})) or "none"
        summary = summarize(run.samples, run.duration_s, float(cfg["sla_ttft_ms"]), float(cfg["sla_tpot_ms"]))
        for name, (value, unit) in summary.items():
            if math.isnan(value):
                continue          # no successful request: the failure count says so
            metrics.append(Metric.of(f"serving_{name}", value, unit, _DIRECTION.get(name, "lower"), **common))
        rows += _rows(run)
    return Evaluation(metrics, {"samples": rows})
