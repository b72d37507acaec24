"""quantmatrix's served and throughput clients beside vLLM's own, on ONE `vllm serve`, in rounds.

    python3 cluster/gpu/served_compare.py MODEL_DIR OUT_DIR [--concurrency 1 32] [--requests 50 200] [--rounds 3]

Starts the server exactly as a sweep's vLLM cell does (jobs.engines.vllm.engine_args, the node's
caches), but outside Ray. Then, on that one server:

Served latency, closed loop, 128-token prompts, 64 output tokens, EOS ignored, greedy; `--rounds`
rounds, each running both clients back to back at every level, so the server's drift between runs
(23 % between two `vllm bench serve` runs minutes apart on 2026-12-01) shows as a spread that both
clients share instead of as a client difference:
  bench   `vllm bench serve` (random token prompts, final usage only, 1 warm-up request)
  qmx     quantmatrix's load generator as the sweep runs it (corpus prompts, usage with every chunk)

Throughput, 256 prompts x 128 tokens in and out, EOS ignored (the sweep's `batch_prompts` metric):
  qmx-batch           the sweep's request: 256 corpus token-id prompts in one completions request, greedy
  qmx-batch-t1        the same at temperature 1.0, top_p 1.0 (what `vllm bench throughput` samples with)
  qmx-batch-random    random token-id prompts (what `vllm bench throughput` sends), greedy
  bench-serve-256     `vllm bench serve` at --max-concurrency 256 with 256 random prompts (vLLM's client,
                      the same server, the same batch)
`vllm bench throughput` (offline LLM.generate, its own engine) runs after this script (run.sh compare).

Prints tables with the median and range over rounds and writes compare.json (and vLLM's result files).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPT, OUTPUT = 128, 64
BATCH, BATCH_NEW = 256, 128
FIGURES = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "req_s", "tok_s")


def _bench(url: str, model_dir: str, concurrency: int, requests: int, out: Path, name: str,
           prompt: int = PROMPT, output: int = OUTPUT) -> dict:
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm",
           "--base-url", url, "--endpoint", "/v1/completions", "--model", "cell", "--tokenizer", model_dir,
           "--dataset-name", "random", "--random-input-len", str(prompt), "--random-output-len", str(output),
           "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--request-rate", "inf",
           "--ignore-eos", "--temperature", "0", "--num-warmups", "1", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,95,99", "--disable-tqdm", "--save-result", "--result-dir", str(out),
           "--result-filename", f"{name}.json", "--seed", "0"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    r = json.loads((out / f"{name}.json").read_text())
    return {"ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"], "tpot_p50": r["median_tpot_ms"],
            "tpot_p99": r["p99_tpot_ms"], "req_s": r["request_throughput"], "tok_s": r["output_throughput"],
            "duration_s": r["duration"]}


def _qmx(url: str, tokenizer, concurrency: int, requests: int) -> dict:
    from jobs.evaluate.perplexity import corpus_token_ids
    from jobs.serving.loadgen import LoadLevel, corpus_prompts, run_levels
    from jobs.serving.stats import summarize

    prompts = corpus_prompts(corpus_token_ids(tokenizer, "evals-wikipedia", None), PROMPT, 1 + requests)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])   # noqa: E731
    (run,) = run_levels(url, prompts, OUTPUT, [LoadLevel(concurrency, requests)], count, 0, 1, True)
    s = {k: v for k, (v, _) in summarize(run.samples, run.duration_s, 1e9, 1e9).items()}
    assert s["requests_failed"] == 0, [x.error for x in run.samples if not x.ok][:3]
    return {"ttft_p50": s["ttft_ms_p50"], "ttft_p99": s["ttft_ms_p99"], "tpot_p50": s["tpot_ms_p50"],
            "tpot_p99": s["tpot_ms_p99"], "req_s": s["request_throughput"], "tok_s": s["output_tokens_per_s"],
            "duration_s": run.duration_s}


def _batch(url: str, prompts: list[list[int]], temperature: float) -> dict:
    """The sweep's throughput request (jobs.serving.openai_batch), optionally sampled: output tok/s."""
    from jobs.serving.openai_batch import check_token_counts, complete

    payload = {"prompt": prompts, "max_tokens": BATCH_NEW, "min_tokens": BATCH_NEW, "ignore_eos": True,
               "temperature": temperature, "return_token_ids": True}
    if temperature:
        payload["top_p"] = 1.0
    complete(url, {**payload, "prompt": prompts[:8], "max_tokens": 2, "min_tokens": 2})   # warm the batched path
    t = time.perf_counter()
    choices = complete(url, payload)
    seconds = time.perf_counter() - t
    check_token_counts(choices, len(prompts), BATCH_NEW)     # exactly 256 x 128 tokens came back
    return {"tok_s": len(prompts) * BATCH_NEW / seconds, "seconds": seconds}


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.median(values):.4g} ({min(values):.4g}–{max(values):.4g})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from jobs.engines.vllm import engine_args
    from jobs.evaluate.perplexity import corpus_token_ids
    from jobs.serving.vllm_server import start

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cell = SimpleNamespace(kv_cache_dtype="auto", tensor_parallel_size=1, trust_remote_code=False)
    args = engine_args(cell, a.model)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    server = start(args)
    print(f"vllm serve up in {server.start_seconds:.1f} s at {server.url}", flush=True)
    corpus = corpus_token_ids(tokenizer, "evals-wikipedia", None)
    batches = {"qmx-batch": ([corpus[i * PROMPT:(i + 1) * PROMPT] for i in range(BATCH)], 0.0),
               "qmx-batch-t1": ([corpus[i * PROMPT:(i + 1) * PROMPT] for i in range(BATCH)], 1.0)}
    rng = random.Random(0)
    batches["qmx-batch-random"] = ([[rng.randrange(tokenizer.vocab_size) for _ in range(PROMPT)]
                                    for _ in range(BATCH)], 0.0)
    rows = []

    def record(kind: str, client: str, r: int, c: int, n: int, run) -> None:
        t = time.perf_counter()
        try:
            figures = run()
        except Exception as err:     # one client failing must not lose the others' figures
            tail = (getattr(err, "stderr", None) or b"")[-1500:].decode(errors="replace")
            print(f"{client} round {r} c={c} failed: {type(err).__name__}: {err}\n{tail}", flush=True)
            return
        rows.append({"kind": kind, "client": client, "round": r, "concurrency": c, "requests": n, **figures,
                     "wall_s": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)

    try:
        for r in range(1, a.rounds + 1):
            for c, n in zip(a.concurrency, a.requests):
                record("served", "bench", r, c, n, lambda: _bench(server.url, a.model, c, n, out, f"bench-r{r}-c{c}"))
                record("served", "qmx", r, c, n, lambda: _qmx(server.url, tokenizer, c, n))
            for name, (prompts, temperature) in batches.items():
                record("throughput", name, r, BATCH, BATCH, lambda: _batch(server.url, prompts, temperature))
            record("throughput", "bench-serve-256", r, BATCH, BATCH,
                   lambda: _bench(server.url, a.model, BATCH, BATCH, out, f"bench-r{r}-c{BATCH}", PROMPT, BATCH_NEW))
    finally:
        server.close()
    (out / "compare.json").write_text(json.dumps({
        "engine_args": args, "served": {"prompt_tokens": PROMPT, "output_tokens": OUTPUT},
        "throughput": {"prompts": BATCH, "prompt_tokens": PROMPT, "new_tokens": BATCH_NEW},
        "rounds": a.rounds, "rows": rows}, indent=1))
    print(f"\nServed, median (min–max) over {a.rounds} rounds, ms / req/s:")
    print("| client | conc | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | req/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in a.concurrency:
        for client in ("bench", "qmx"):
            mine = [x for x in rows if x["kind"] == "served" and x["client"] == client and x["concurrency"] == c]
            if mine:
                cells = " | ".join(_summary([x[f] for x in mine]) for f in FIGURES[:5])
                print(f"| {client} | {c} | {cells} |")
    print(f"\nThroughput, {BATCH} prompts x {PROMPT} in / {BATCH_NEW} out, output tok/s, median (min–max):")
    for client in [*batches, "bench-serve-256"]:
        mine = [x["tok_s"] for x in rows if x["kind"] == "throughput" and x["client"] == client]
        if mine:
            print(f"| {client} | {_summary(mine)} |")


if __name__ == "__main__":
    main()
