"""quantmatrix's served-latency client beside `vllm bench serve`, on ONE `vllm serve`, back to back.

    python3 cluster/gpu/served_compare.py MODEL_DIR OUT_DIR [--concurrency 1 32] [--requests 50 200]

Starts the server exactly as a sweep's vLLM cell does (jobs.engines.vllm.engine_args, the node's
caches), but outside Ray, then runs in turn on it, at each concurrency level (closed loop,
128-token prompts, 64 output tokens, EOS ignored, greedy):
  bench-1   `vllm bench serve` (random token prompts, final usage only)
  qmx       quantmatrix's load generator as the sweep runs it (corpus prompts, usage with every chunk)
  qmx-final the same without per-chunk usage (tokens per chunk by re-tokenizing, as vLLM's client)
  bench-2   `vllm bench serve` again: the server's drift over the run
Same server and moment for all: a difference between the clients is the client's; a difference
between these and the sweep's cell (the server inside a Ray worker) is that environment's.
Prints one table and writes compare.json (and vLLM's result files) to OUT_DIR.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPT, OUTPUT = 128, 64


def _bench(url: str, model_dir: str, concurrency: int, requests: int, out: Path, tag: str) -> dict:
    name = f"{tag}-c{concurrency}.json"
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm",
           "--base-url", url, "--endpoint", "/v1/completions", "--model", "cell", "--tokenizer", model_dir,
           "--dataset-name", "random", "--random-input-len", str(PROMPT), "--random-output-len", str(OUTPUT),
           "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--request-rate", "inf",
           "--ignore-eos", "--temperature", "0", "--num-warmups", "1", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,95,99", "--disable-tqdm", "--save-result", "--result-dir", str(out),
           "--result-filename", name, "--seed", "0"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    r = json.loads((out / name).read_text())
    return {"ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"], "tpot_p50": r["median_tpot_ms"],
            "tpot_p99": r["p99_tpot_ms"], "req_s": r["request_throughput"], "tok_s": r["output_throughput"]}


def _qmx(url: str, tokenizer, concurrency: int, requests: int, continuous_usage: bool) -> dict:
    from jobs.evaluate.perplexity import corpus_token_ids
    from jobs.serving.loadgen import LoadLevel, corpus_prompts, run_levels
    from jobs.serving.stats import summarize

    prompts = corpus_prompts(corpus_token_ids(tokenizer, "evals-wikipedia", None), PROMPT, 1 + requests)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])   # noqa: E731
    (run,) = run_levels(url, prompts, OUTPUT, [LoadLevel(concurrency, requests)], count, 0, 1, continuous_usage)
    s = {k: v for k, (v, _) in summarize(run.samples, run.duration_s, 1e9, 1e9).items()}
    assert s["requests_failed"] == 0, [x.error for x in run.samples if not x.ok][:3]
    return {"ttft_p50": s["ttft_ms_p50"], "ttft_p99": s["ttft_ms_p99"], "tpot_p50": s["tpot_ms_p50"],
            "tpot_p99": s["tpot_ms_p99"], "req_s": s["request_throughput"], "tok_s": s["output_tokens_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[50, 200])
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from jobs.engines.vllm import engine_args
    from jobs.serving.vllm_server import start

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cell = SimpleNamespace(kv_cache_dtype="auto", tensor_parallel_size=1, trust_remote_code=False)
    args = engine_args(cell, a.model)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    server = start(args)
    print(f"vllm serve up in {server.start_seconds:.1f} s at {server.url}", flush=True)
    rows = []
    try:
        for c, n in zip(a.concurrency, a.requests):
            for tag, run in (("bench-1", lambda: _bench(server.url, a.model, c, n, out, "bench1")),
                             ("qmx", lambda: _qmx(server.url, tokenizer, c, n, True)),
                             ("qmx-final", lambda: _qmx(server.url, tokenizer, c, n, False)),
                             ("bench-2", lambda: _bench(server.url, a.model, c, n, out, "bench2"))):
                t = time.perf_counter()
                try:
                    figures = run()
                except Exception as err:     # one client failing must not lose the others' figures
                    tail = (getattr(err, "stderr", None) or b"")[-1500:].decode(errors="replace")
                    print(f"{tag} c={c} failed: {type(err).__name__}: {err}\n{tail}", flush=True)
                    continue
                rows.append({"client": tag, "concurrency": c, "requests": n, **figures,
                             "seconds": time.perf_counter() - t})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.close()
    (out / "compare.json").write_text(json.dumps({"engine_args": args, "prompt_tokens": PROMPT,
                                                  "output_tokens": OUTPUT, "rows": rows}, indent=1))
    print("\n| client | conc | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | req/s | out tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['client']} | {r['concurrency']} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['tpot_p50']:.3f} | "
              f"{r['tpot_p99']:.3f} | {r['req_s']:.2f} | {r['tok_s']:.0f} |")


if __name__ == "__main__":
    main()
