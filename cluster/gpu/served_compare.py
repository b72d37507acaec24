"""quantmatrix's served and throughput clients beside vLLM's own, on ONE `vllm serve`, in rounds.

    python3 cluster/gpu/served_compare.py MODEL_DIR OUT_DIR [--concurrency 1 32] [--requests 50 200] [--rounds 3]
        [--clients bench bench-text qmx qmx-text qmx-idle] [--throughput-rounds N] [--input-len 128] [--output-len 64]
        [--idle-s 25]

Starts the server exactly as a sweep's vLLM cell does (jobs.engines.vllm.engine_args, the node's
caches), but outside Ray. Then, on that one server:

Served latency, closed loop, `--input-len`-token prompts (128), `--output-len` new tokens (64), EOS ignored,
greedy; `--rounds` rounds, each running every client back to back at every level (in an order rotated per round), so the
server's drift between runs (23 % between two `vllm bench serve` runs minutes apart on 2026-12-01)
shows as a spread that the clients share instead of as a client difference. No prompt is sent twice
(vLLM's prefix cache would serve its prefill): the quantmatrix clients take fresh corpus windows per
run, `vllm bench serve` a fresh seed per round. One exception is vLLM's own: its warm-up request is its
first prompt, sent again in the run, so 1 of its requests per run finds its prefill cached.
  bench     `vllm bench serve` (random token prompts sent as text, final usage only, 1 warm-up request)
  bench-text  `vllm bench serve` sending qmx-text's kind of prompts (fresh corpus windows as text, its
            `custom` dataset, no chat template): what is left between it and `qmx-text` is the two clients
  qmx       quantmatrix's load generator as a sweep with `prompt_format: token_ids` runs it (corpus windows
            as token ids, usage with every chunk)
  qmx-text  the same load generator with vLLM's client's payload: corpus windows as text (the sweep's
            default `prompt_format: text`, jobs.serving.loadgen.exact_text), which the server tokenizes,
            and final usage only: what is left between it and `bench-text` is the client itself
  qmx-idle  `qmx` after the server has idled `--idle-s` seconds, as it does while `vllm bench serve`'s
            process imports (13.5–32 s on the H200 hosts): what is left between it and `qmx` is the idle gap

Throughput, 256 prompts x 128 tokens in and out, EOS ignored (the sweep's `batch_prompts` metric):
  qmx-batch           the sweep's request: 256 corpus token-id prompts in one completions request, greedy
  qmx-batch-t1        the same at temperature 1.0, top_p 1.0 (what `vllm bench throughput` samples with)
  qmx-batch-random    random token-id prompts (what `vllm bench throughput` sends), greedy
  bench-serve-256     `vllm bench serve` at --max-concurrency 256 with 256 random prompts (vLLM's client,
                      the same server, the same batch)
`vllm bench throughput` (offline LLM.generate, its own engine) runs after this script (run.sh compare).
`--throughput-rounds 0` leaves the throughput part out.

Beside each served run, the server's own view: the deltas of vLLM's Prometheus histograms
(`vllm:time_to_first_token_seconds`, arrival in the API server to first token;
`vllm:request_time_per_output_token_seconds`, first to last token over n-1, per request) over the run,
as means, against each client's means: the client's offset from the server is its own overhead, so two
clients are compared on what they add, not only on each other (each delta holds the run's warm-up request).

Beside each served run, the GPU's own state: nvidia-smi sampled every 100 ms (gpu.csv), as the mean
and lowest SM clock and the mean power over the run's window (`duration_s` up to its last response; for
`bench`, up to its result file's time, a little after), and the run's per-request TTFTs (`ttfts_ms`; vLLM's from
--save-detailed): a slow start after an idle gap shows as the first requests' TTFT against the rest's.

Prints tables with the median and range over rounds and writes compare.json (and vLLM's result files).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPT, OUTPUT = 128, 64
BATCH, BATCH_NEW = 256, 128
CLIENTS = ("bench", "bench-text", "qmx", "qmx-text", "qmx-idle")
FIGURES = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "req_s", "tok_s")
# vLLM's histograms whose sum/count deltas over a run are the server's mean TTFT and TPOT (seconds)
# and, to split the server's TTFT: engine-side queue (queued to scheduled) and prefill (scheduled to first
# token); the rest is the API server's (rendering, tokenizing a text prompt, IPC to and from the engine)
SERVER_HISTOGRAMS = {"server_ttft_mean": "vllm:time_to_first_token_seconds",
                     "server_tpot_mean": "vllm:request_time_per_output_token_seconds",
                     "server_queue_mean": "vllm:request_queue_time_seconds",
                     "server_prefill_mean": "vllm:request_prefill_time_seconds"}


def parse_metrics(text: str) -> dict[str, float]:
    """Sum and count of each SERVER_HISTOGRAMS series, summed over labels, from Prometheus text."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{")[0]
        for key, metric in SERVER_HISTOGRAMS.items():
            for part in ("sum", "count"):
                if name == f"{metric}_{part}":
                    totals[f"{key}_{part}"] = totals.get(f"{key}_{part}", 0.0) + float(value)
    return totals


def _scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())
    except Exception as err:     # the server's view is a reference: without it the clients' figures still stand
        print(f"/metrics not read: {type(err).__name__}: {err}", flush=True)
        return {}


def _server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The server's mean TTFT and TPOT in ms over the requests between two scrapes."""
    out: dict[str, float] = {}
    for key in SERVER_HISTOGRAMS if before and after else ():
        count = after.get(f"{key}_count", 0.0) - before.get(f"{key}_count", 0.0)
        if count:
            out[key] = 1000 * (after[f"{key}_sum"] - before.get(f"{key}_sum", 0.0)) / count
            out[f"{key}_requests"] = count
    return out


GPU_FIELDS = "timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu"


def gpu_during(csv: str, t0: float, t1: float) -> dict[str, float]:
    """nvidia-smi's GPU_FIELDS lines (`--format=csv,noheader,nounits`) inside the wall-clock window t0..t1,
    summarized; {} when none is (a cut line, or one with a field the GPU does not report, is skipped)."""
    rows = []
    for line in csv.splitlines():
        try:
            stamp, sm, _mem, power, temp, util = (x.strip() for x in line.split(","))
            # nvidia-smi stamps local time, as datetime.timestamp() reads it
            t = datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, float(sm), float(power), float(temp), float(util)))
        except ValueError:
            continue
    mine = [r for r in rows if t0 <= r[0] <= t1]
    if not mine:
        return {}
    return {"sm_mhz_mean": statistics.mean(r[1] for r in mine), "sm_mhz_min": min(r[1] for r in mine),
            "power_w_mean": statistics.mean(r[2] for r in mine), "temp_c_max": max(r[3] for r in mine),
            "gpu_util_mean": statistics.mean(r[4] for r in mine), "gpu_samples": len(mine)}


class GpuSamples:
    """nvidia-smi sampling the GPU every 100 ms into a CSV for the script's life; without nvidia-smi
    there are no samples and `during` returns {}."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={GPU_FIELDS}", "--format=csv,noheader,nounits",
                                          "-lms", "100", "-f", str(path)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        except OSError as err:
            print(f"no GPU samples: {err}", flush=True)
            self.proc = None

    def during(self, t0: float, t1: float) -> dict[str, float]:
        """After close(): nvidia-smi writes its file in blocks, so a read while it runs misses the latest."""
        return gpu_during(self.path.read_text(), t0, t1) if self.path.exists() else {}

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def _bench(url: str, model_dir: str, concurrency: int, requests: int, out: Path, name: str,
           prompt: int = PROMPT, output: int = OUTPUT, seed: int = 0, texts: list[str] | None = None) -> dict:
    """`vllm bench serve`: its random dataset, or with `texts` these prompts (its custom dataset, in order)."""
    if texts is None:
        dataset = ["--dataset-name", "random", "--random-input-len", str(prompt), "--random-output-len", str(output)]
    else:
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
        dataset = ["--dataset-name", "custom", "--dataset-path", str(path), "--custom-output-len", str(output),
                   "--skip-chat-template", "--disable-shuffle"]
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm",
           "--base-url", url, "--endpoint", "/v1/completions", "--model", "cell", "--tokenizer", model_dir,
           *dataset, "--num-prompts", str(requests), "--max-concurrency", str(concurrency), "--request-rate", "inf",
           "--ignore-eos", "--temperature", "0", "--num-warmups", "1", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,95,99", "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(out),
           "--result-filename", f"{name}.json", "--seed", str(seed)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    r = json.loads((out / f"{name}.json").read_text())
    return {"ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"], "tpot_p50": r["median_tpot_ms"],
            "tpot_p99": r["p99_tpot_ms"], "req_s": r["request_throughput"], "tok_s": r["output_throughput"],
            "ttft_mean": r["mean_ttft_ms"], "tpot_mean": r["mean_tpot_ms"], "duration_s": r["duration"],
            "ttfts_ms": [1000 * t for t in r["ttfts"]], "ended_at": (out / f"{name}.json").stat().st_mtime}


class Windows:
    """Corpus windows of `length` tokens (jobs.serving.loadgen.corpus_prompts: no two start at the same
    token, so none is served from vLLM's prefix cache), each handed out once: as token ids, or as text
    when it re-encodes to exactly the same count (loadgen.exact_text; ~108 k corpus tokens: ~1,700 prompts)."""

    def __init__(self, tokenizer, length: int,
                 corpora: tuple[str, ...] = ("evals-wikipedia", "evals-openwebtext", "evals-c4")):
        from jobs.evaluate.perplexity import corpus_token_ids
        from jobs.serving.loadgen import corpus_prompts
        self.tokenizer, self.length = tokenizer, length
        self.pool = [w for corpus in corpora for w in corpus_prompts(corpus_token_ids(tokenizer, corpus, None), length)]
        self.next = 0

    def take(self, count: int, text: bool) -> list:
        from jobs.serving.loadgen import exact_text
        out = []
        while len(out) < count:
            if self.next == len(self.pool):
                raise RuntimeError(f"all {len(self.pool)} distinct windows were sent: fewer rounds or requests")
            window = self.pool[self.next]
            self.next += 1
            if not text:
                out.append(window)
            elif (s := exact_text(self.tokenizer, window)) is not None:
                out.append(s)
        return out


def _qmx(url: str, windows: Windows, concurrency: int, requests: int, output: int, text: bool) -> dict:
    from jobs.serving.loadgen import LoadLevel, run_levels
    from jobs.serving.stats import summarize

    tokenizer = windows.tokenizer
    prompts = windows.take(1 + requests, text)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])   # noqa: E731
    # text prompts with final usage only: vLLM's client's payload (the sweep asks for usage per chunk)
    (run,) = run_levels(url, prompts, output, [LoadLevel(concurrency, requests)], count, 0, 1, not text)
    s = {k: v for k, (v, _) in summarize(run.samples, run.duration_s, 1e9, 1e9).items()}
    assert s["requests_failed"] == 0, [x.error for x in run.samples if not x.ok][:3]
    # token ids go in as sent; text is tokenized by the server, which may add a BOS (Gemma, Llama)
    want = [len(tokenizer(p)["input_ids"]) if text else windows.length for p in prompts[1:]]
    assert [x.prompt_tokens for x in run.samples] == want, {x.prompt_tokens for x in run.samples}
    return {"ttft_p50": s["ttft_ms_p50"], "ttft_p99": s["ttft_ms_p99"], "tpot_p50": s["tpot_ms_p50"],
            "tpot_p99": s["tpot_ms_p99"], "req_s": s["request_throughput"], "tok_s": s["output_tokens_per_s"],
            "ttft_mean": s["ttft_ms_mean"], "tpot_mean": s["tpot_ms_mean"], "duration_s": run.duration_s,
            "ttfts_ms": [1000 * x.ttft_s for x in run.samples], "ended_at": run.ended_at}


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


def medians(rows: list[dict], levels: list[int], clients: list[str], title: str, needs: tuple[str, ...],
            columns: list) -> None:
    """A Markdown table, one row per client and level: each (name, figure) column's median over the rounds
    whose served rows hold every key in `needs` (a run the server's /metrics missed is left out)."""
    print(f"\n{title}")
    print("| client | conc | " + " | ".join(name for name, _ in columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for c in levels:
        for client in clients:
            mine = [x for x in rows if x["kind"] == "served" and x["client"] == client and x["concurrency"] == c
                    and all(k in x for k in needs)]
            if mine:
                cells = (statistics.median(figure(x) for x in mine) for _, figure in columns)
                print(f"| {client} | {c} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--throughput-rounds", type=int, default=None, help="default: --rounds")
    ap.add_argument("--input-len", type=int, default=PROMPT, help="served prompt tokens")
    ap.add_argument("--output-len", type=int, default=OUTPUT, help="served new tokens")
    ap.add_argument("--idle-s", type=float, default=25.0, help="qmx-idle's wait before its run")
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
    gpu = GpuSamples(out / "gpu.csv")
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
            before = _scrape(server.url) if kind == "served" else {}
            figures = run()
            if kind == "served":
                figures |= _server_means(before, _scrape(server.url))
                figures["gpu_window"] = [figures["ended_at"] - figures["duration_s"], figures["ended_at"]]
        except Exception as err:     # one client failing must not lose the others' figures
            tail = (getattr(err, "stderr", None) or b"")[-1500:].decode(errors="replace")
            print(f"{client} round {r} c={c} failed: {type(err).__name__}: {err}\n{tail}", flush=True)
            return
        rows.append({"kind": kind, "client": client, "round": r, "concurrency": c, "requests": n, **figures,
                     "wall_s": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)

    windows = Windows(tokenizer, a.input_len)
    served = {
        # a seed per round and level: vLLM's random dataset repeats its prompts under one seed
        "bench": lambda r, c, n: _bench(server.url, a.model, c, n, out, f"bench-r{r}-c{c}", a.input_len,
                                        a.output_len, seed=r * 10_000 + c),
        # its warm-up request is its first prompt again, as with its random dataset
        "bench-text": lambda r, c, n: _bench(server.url, a.model, c, n, out, f"bench-text-r{r}-c{c}", a.input_len,
                                             a.output_len, texts=windows.take(n, text=True)),
        "qmx": lambda r, c, n: _qmx(server.url, windows, c, n, a.output_len, text=False),
        "qmx-text": lambda r, c, n: _qmx(server.url, windows, c, n, a.output_len, text=True),
        "qmx-idle": lambda r, c, n: time.sleep(a.idle_s) or _qmx(server.url, windows, c, n, a.output_len, text=False),
    }
    throughput_rounds = a.rounds if a.throughput_rounds is None else a.throughput_rounds
    try:
        for r in range(1, max(a.rounds, throughput_rounds) + 1):
            order = a.clients[(r - 1) % len(a.clients):] + a.clients[:(r - 1) % len(a.clients)]
            for c, n in zip(a.concurrency, a.requests) if r <= a.rounds else ():
                for client in order:
                    record("served", client, r, c, n, lambda: served[client](r, c, n))
            if r > throughput_rounds:
                continue
            for name, (prompts, temperature) in batches.items():
                record("throughput", name, r, BATCH, BATCH, lambda: _batch(server.url, prompts, temperature))
            record("throughput", "bench-serve-256", r, BATCH, BATCH,
                   lambda: _bench(server.url, a.model, BATCH, BATCH, out, f"bench-r{r}-c{BATCH}", PROMPT, BATCH_NEW,
                                  r * 10_000 + 9_999))
    finally:
        server.close()
        gpu.close()
    for row in rows:        # read once nvidia-smi has stopped: until then its file lacks the last seconds
        row |= gpu.during(*row["gpu_window"]) if "gpu_window" in row else {}
    (out / "compare.json").write_text(json.dumps({
        "engine_args": args, "served": {"prompt_tokens": a.input_len, "output_tokens": a.output_len},
        "throughput": {"prompts": BATCH, "prompt_tokens": PROMPT, "new_tokens": BATCH_NEW},
        "rounds": a.rounds, "rows": rows}, indent=1))
    print(f"\nServed, median (min–max) over {a.rounds} rounds, ms / req/s:")
    print("| client | conc | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | req/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in a.concurrency:
        for client in a.clients:
            mine = [x for x in rows if x["kind"] == "served" and x["client"] == client and x["concurrency"] == c]
            if mine:
                cells = " | ".join(_summary([x[f] for x in mine]) for f in FIGURES[:5])
                print(f"| {client} | {c} | {cells} |")
    print("\nPaired by round against `vllm bench serve` (client / bench - 1), median over rounds:")
    print("| client | against | conc | figure | median | per round |")
    print("| --- | --- | --- | --- | --- | --- |")
    served_rows = {(x["client"], x["round"], x["concurrency"]): x for x in rows if x["kind"] == "served"}
    for c in a.concurrency:
        for theirs in [x for x in a.clients if x.startswith("bench")]:
            for client in [x for x in a.clients if x.startswith("qmx")]:
                for figure in ("ttft_p50", "tpot_p50"):
                    ratios = [served_rows[client, r, c][figure] / served_rows[theirs, r, c][figure] - 1
                              for r in range(1, a.rounds + 1)
                              if (client, r, c) in served_rows and (theirs, r, c) in served_rows]
                    if ratios:
                        per_round = " ".join(f"{x:+.1%}" for x in ratios)
                        print(f"| {client} | {theirs} | {c} | {figure} | {statistics.median(ratios):+.1%} | {per_round} |")
    medians(rows, a.concurrency, a.clients, "Against the server's own means (vLLM's histograms over the run), ms, "
            "median over rounds:", ("ttft_mean", "server_ttft_mean", "tpot_mean", "server_tpot_mean"), [
                ("TTFT mean", lambda x: x["ttft_mean"]), ("server's", lambda x: x["server_ttft_mean"]),
                ("client - server", lambda x: x["ttft_mean"] - x["server_ttft_mean"]),
                ("TPOT mean", lambda x: x["tpot_mean"]), ("server's", lambda x: x["server_tpot_mean"]),
                ("client - server", lambda x: x["tpot_mean"] - x["server_tpot_mean"])])
    medians(rows, a.concurrency, a.clients, "The server's mean TTFT split, ms, median over rounds (rest: API "
            "server, tokenizing text, IPC):", ("server_ttft_mean", "server_queue_mean", "server_prefill_mean"), [
                ("TTFT", lambda x: x["server_ttft_mean"]), ("queue", lambda x: x["server_queue_mean"]),
                ("prefill", lambda x: x["server_prefill_mean"]),
                ("rest", lambda x: x["server_ttft_mean"] - x["server_queue_mean"] - x["server_prefill_mean"])])
    medians(rows, a.concurrency, a.clients, "The GPU over each run (nvidia-smi, 100 ms) and its requests' TTFT, "
            "median over rounds:", ("sm_mhz_mean", "ttfts_ms"), [
                ("SM MHz mean", lambda x: x["sm_mhz_mean"]), ("SM MHz min", lambda x: x["sm_mhz_min"]),
                ("power W", lambda x: x["power_w_mean"]), ("GPU util %", lambda x: x["gpu_util_mean"]),
                ("TTFT ms, first 5", lambda x: statistics.median(x["ttfts_ms"][:5])),
                ("TTFT ms, rest", lambda x: statistics.median(x["ttfts_ms"][5:] or [math.nan]))])
    print(f"\nThroughput, {BATCH} prompts x {PROMPT} in / {BATCH_NEW} out, output tok/s, median (min–max):")
    for client in [*batches, "bench-serve-256"]:
        mine = [x["tok_s"] for x in rows if x["kind"] == "throughput" and x["client"] == client]
        if mine:
            print(f"| {client} | {_summary(mine)} |")


if __name__ == "__main__":
    main()
