"""Served latency: the statistics as pure functions, the load generator against a scripted
server (multi-token chunks, failures, open-loop arrivals), and the transformers server on real
models (streamed text equals direct greedy generation; queueing shows in TTFT)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time

import pyarrow as pa
import pytest

from jobs.serving.loadgen import LoadLevel, arrival_times, corpus_prompts, run_levels
from jobs.serving.openai_stream import Chunk, SSEDecoder, StreamResult, parse_events
from jobs.serving.stats import (PERCENTILES, RequestSample, chunk_token_counts, meets_sla, percentile,
                                request_sample, summarize)

from conftest import ROOT, baseline_engine


def words(text: str) -> int:
    """A stand-in tokenizer for scripted servers: one token per space-separated word."""
    return len(text.split())


# --- pure statistics ---------------------------------------------------------------------------

def test_percentile_is_numpys_linear_interpolation():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25, 11.0]
    for q in (0, 37, 50, 90, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert math.isnan(percentile([], 50))


def test_sse_decoder_joins_events_split_across_reads_and_characters():
    dec = SSEDecoder()
    payload = 'data: {"t": "é"}\r\n\r\n: ping\n\ndata: [DONE]\n\n'.encode()
    cut = payload.index("é".encode()) + 1          # split inside the two-byte character
    assert dec.feed(payload[:cut]) == []
    assert dec.feed(payload[cut:]) == ['{"t": "é"}', "[DONE]"]


def test_multi_token_chunks_counted_from_server_usage():
    # chunks of 3, 3 and 1 tokens at 100 ms, 160 ms, 170 ms
    chunks = (Chunk(0.10, "a b c", 3), Chunk(0.16, "d e f", 6), Chunk(0.17, "g", 7))
    s = request_sample(0, StreamResult(True, chunks, 32, 7), words, 32)
    assert (s.ok, s.output_tokens, s.token_counts) == (True, 7, "server")
    assert s.ttft_s == pytest.approx(0.10) and s.e2e_s == pytest.approx(0.17)
    # tokens riding with the first one: gap 0; later gaps spread over their chunk's tokens
    assert s.itl_s == pytest.approx((0.0, 0.0, 0.02, 0.02, 0.02, 0.01))
    assert sum(s.itl_s) == pytest.approx(s.e2e_s - s.ttft_s)
    assert s.tpot_s == pytest.approx((0.17 - 0.10) / 6)


def test_multi_token_chunks_counted_by_retokenizing_without_usage():
    chunks = (Chunk(0.05, "", None), Chunk(0.10, "one two", None), Chunk(0.20, " three four five", None))
    counts, source = chunk_token_counts(chunks, words)
    assert (counts, source) == ([0, 2, 3], "retokenized")
    s = request_sample(0, StreamResult(True, chunks, None, None), words, 16)
    # the empty chunk carries no token: TTFT is the first chunk that does
    assert (s.output_tokens, s.prompt_tokens, s.ttft_s) == (5, 16, pytest.approx(0.10))
    assert len(s.itl_s) == 4 and s.tpot_s == pytest.approx(0.10 / 4)


def test_failed_stream_is_a_failed_sample():
    events = [(0.1, json.dumps({"choices": [{"text": "x"}], "usage": None})),
              (0.2, json.dumps({"error": {"message": "boom"}}))]
    result = parse_events(events)
    assert not result.ok and result.error == "boom"
    s = request_sample(3, result, words, 8)
    assert (s.ok, s.output_tokens, s.ttft_s, s.error) == (False, 0, None, "boom")
    assert not parse_events([(0.1, json.dumps({"choices": [{"text": "x"}]}))]).ok   # no [DONE]


def _sample(i, ttft, e2e, n=5, ok=True):
    return RequestSample(i, ok, 8, n if ok else 0, ttft if ok else None, e2e if ok else None,
                         tuple([(e2e - ttft) / (n - 1)] * (n - 1)) if ok else ())


def test_summary_goodput_and_failures():
    samples = [_sample(0, 0.1, 0.5), _sample(1, 0.3, 0.7), _sample(2, 0.1, 2.1), _sample(3, 0, 0, ok=False)]
    out = summarize(samples, duration_s=2.0, sla_ttft_ms=200, sla_tpot_ms=200)
    # 0 meets both; 1 misses TTFT; 2 misses TPOT (500 ms); 3 failed
    assert [meets_sla(s, 200, 200) for s in samples] == [True, False, False, False]
    assert out["goodput"] == (0.5, "req/s") and out["request_throughput"] == (1.5, "req/s")
    assert out["requests_ok"][0] == 3 and out["requests_failed"][0] == 1
    assert out["output_tokens_per_s"][0] == pytest.approx(15 / 2.0)
    assert out["ttft_ms_p50"][0] == pytest.approx(100.0)


def test_arrivals_are_seeded_poisson_scaled_to_the_rate():
    a, b = arrival_times(50, 5.0, seed=1), arrival_times(50, 5.0, seed=1)
    assert a == b and a != arrival_times(50, 5.0, seed=2)
    assert all(x < y for x, y in zip(a, a[1:])) and a[-1] == pytest.approx(10.0)


def test_corpus_prompts_never_repeat_a_start_so_no_prefill_is_cached():
    prompts = corpus_prompts(list(range(100)), 16, 6)
    assert prompts == [list(range(16 * i, 16 * i + 16)) for i in range(6)]     # consecutive while they last
    long = corpus_prompts(list(range(3000)), 128, 40)
    assert all(p == list(range(p[0], p[0] + 128)) for p in long)
    # 23 consecutive windows, then shifted copies: 40 distinct first tokens, so 40 distinct first blocks
    assert [p[0] for p in long[:25]] == [128 * i for i in range(23)] + [64, 192]
    assert len({p[0] for p in long}) == 40
    assert len(corpus_prompts(list(range(1000)), 128)) == 7 * 2     # shifts 0 and 64 fit in 128 tokens
    with pytest.raises(ValueError, match="14 distinct prompts of 128 tokens, 15 asked for"):
        corpus_prompts(list(range(1000)), 128, 15)
    with pytest.raises(ValueError, match="3 distinct prompts of 32 tokens, 4 asked for"):   # < 64: no shifts
        corpus_prompts(list(range(100)), 32, 4)
    with pytest.raises(ValueError, match="fewer than one prompt of 128"):
        corpus_prompts(list(range(100)), 128)


def test_text_prompts_are_windows_that_re_encode_to_their_length():
    """prompt_format text: each prompt is a distinct corpus window decoded to text that the tokenizer turns
    back into exactly as many tokens; windows that do not are skipped, and too few is one clear error."""
    from transformers import AutoTokenizer

    from jobs.evaluate.perplexity import corpus_token_ids
    from jobs.models import materialize
    from jobs.serving.loadgen import exact_text, text_prompts

    tok = AutoTokenizer.from_pretrained(materialize("builtin:smollm2-135m-instruct", None, None))
    windows = corpus_prompts(corpus_token_ids(tok, "evals-wikipedia", None), 64)
    texts = text_prompts(tok, windows, 100)
    assert len(set(texts)) == 100
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 64 for t in texts)
    assert texts == [t for t in (exact_text(tok, w) for w in windows) if t is not None][:100]   # in corpus order
    # a window cut inside a character's bytes decodes to text that re-encodes to another count
    cut = tok("日本語", add_special_tokens=False)["input_ids"]
    assert len(cut) == 6 and exact_text(tok, cut[:5]) is None and exact_text(tok, cut) == "日本語"
    usable = sum(exact_text(tok, w) is not None for w in windows)
    with pytest.raises(ValueError, match=f"{usable} of the corpus's {len(windows)} distinct prompts"):
        text_prompts(tok, windows, usable + 1)


# --- the load generator against a scripted server ---------------------------------------------

@contextlib.contextmanager
def scripted_server(tokens_per_chunk=3, usage=True, fail_every=0, gap_s=0.002):
    """An OpenAI-ish server with known behaviour: `max_tokens` word tokens in chunks of
    `tokens_per_chunk`; every `fail_every`-th request answers HTTP 500; tracks peak in-flight."""
    from aiohttp import web

    state = {"n": 0, "in_flight": 0, "peak": 0}

    async def completions(request):
        body = await request.json()
        state["n"] += 1
        state.setdefault("arrived", []).append(time.time())
        state.setdefault("stream_options", []).append(body.get("stream_options"))
        if fail_every and state["n"] % fail_every == 0:
            return web.Response(status=500, text="scripted failure")
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        try:
            resp = web.StreamResponse()
            await resp.prepare(request)
            n, sent = body["max_tokens"], 0
            while sent < n:
                await asyncio.sleep(gap_s)
                k = min(tokens_per_chunk, n - sent)
                sent += k
                chunk = {"choices": [{"index": 0, "text": " tok" * k}],
                         "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": sent} if usage else None}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if usage:
                await resp.write(f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': n}})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finally:
            state["in_flight"] -= 1

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    loop, ready = asyncio.new_event_loop(), threading.Event()
    runner = web.AppRunner(app)
    port = []

    def run():
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(site._server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield f"http://127.0.0.1:{port[0]}", state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


PROMPTS = [[1] * 8 for _ in range(200)]


@pytest.mark.parametrize("usage", [True, False], ids=["server-usage", "retokenized"])
def test_loadgen_counts_three_token_chunks(usage):
    with scripted_server(tokens_per_chunk=3, usage=usage) as (url, _):
        (run,) = run_levels(url, PROMPTS, 8, [LoadLevel(2, 10)], words)
    assert len(run.samples) == 10 and all(s.ok for s in run.samples)
    for s in run.samples:
        assert s.output_tokens == 8 and len(s.itl_s) == 7
        assert s.itl_s[:2] == (0.0, 0.0)        # chunks 3+3+2: two tokens ride with the first
        assert s.token_counts == ("server" if usage else "retokenized")
        assert sum(s.itl_s) == pytest.approx(s.e2e_s - s.ttft_s)


def test_loadgen_can_ask_for_final_usage_only_as_vllm_bench_does():
    with scripted_server(tokens_per_chunk=1, usage=False) as (url, state):
        (run,) = run_levels(url, PROMPTS, 4, [LoadLevel(2, 6)], words, continuous_usage=False)
    assert all(s.ok and s.output_tokens == 4 and s.token_counts == "retokenized" for s in run.samples)
    assert state["stream_options"] == [{"include_usage": True, "continuous_usage_stats": False}] * 7   # warm-up too


@pytest.mark.parametrize("text", [False, True], ids=["ids", "text"])
def test_loadgen_counts_tokens_only_after_the_level_so_the_next_request_is_not_held_back(text):
    """Re-counting output tokens (and a text prompt's, where the server reports none) from text costs
    milliseconds a request; inside a closed loop that held every next send back (h200-2026-12-02-f)."""
    calls = []

    def recording_words(s: str) -> int:
        calls.append(time.time())
        return words(s)

    prompts = [" tok" * 8] * 10 if text else PROMPTS
    with scripted_server(tokens_per_chunk=1, usage=False) as (url, state):
        (run,) = run_levels(url, prompts, 4, [LoadLevel(1, 5)], recording_words, warmup=0, continuous_usage=False)
    assert all(s.ok and s.output_tokens == 4 and s.token_counts == "retokenized" for s in run.samples)
    assert [s.prompt_tokens for s in run.samples] == [8] * 5      # counted from the text, or the ids' length
    assert len(state["arrived"]) == 5 and calls
    assert min(calls) > max(state["arrived"])       # every count after the last request went out ...
    assert min(calls) >= run.ended_at               # ... and outside the level's clock


def test_loadgen_counts_failed_requests():
    with scripted_server(fail_every=5) as (url, _):
        (run,) = run_levels(url, PROMPTS, 4, [LoadLevel(4, 50)], words, warmup=0)
    failed = [s for s in run.samples if not s.ok]
    assert len(run.samples) == 50 and len(failed) == 10
    assert all("HTTP 500" in s.error for s in failed)
    out = summarize(run.samples, run.duration_s, 2000, 200)
    assert out["requests_failed"][0] == 10 and out["requests_ok"][0] == 40


def test_loadgen_unreachable_server_fails_every_request():
    (run,) = run_levels("http://127.0.0.1:9", PROMPTS, 4, [LoadLevel(2, 6)], words, warmup=0)
    assert [s.ok for s in run.samples] == [False] * 6 and all(s.error for s in run.samples)


def test_open_loop_respects_rate_and_concurrency_cap():
    with scripted_server(tokens_per_chunk=1, gap_s=0.01) as (url, state):
        start = time.perf_counter()
        (run,) = run_levels(url, PROMPTS, 5, [LoadLevel(2, 20, request_rate=40.0)], words, warmup=0)
        took = time.perf_counter() - start
    assert all(s.ok for s in run.samples) and state["peak"] <= 2
    assert took >= 20 / 40.0 * 0.9          # arrivals spread over count / rate seconds


def test_loadgen_reads_the_servers_own_ttft_and_tpot(tmp_path):
    """Against a server that logs when each token left (vLLM's stream format on a fixed pace, its own process),
    every request's client TTFT is at least the server's (the client's clock starts before the request leaves
    and stops after the token arrives), and TPOT is the server's to within 0.1 ms (one token miscounted would
    be 0.43 ms here). Both payloads of served_compare's clients: the sweep's, and vLLM's client's."""
    import statistics
    import sys

    from transformers import AutoTokenizer

    from jobs.models import materialize

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paced_server

    model_dir = str(materialize("builtin:smollm2-135m-instruct", None, None))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])   # noqa: E731
    ids = [list(range(1000 + 64 * i, 1064 + 64 * i)) for i in range(11)]
    truth = tmp_path / "truth.jsonl"
    url, server = paced_server.start(truth, model_dir, ttft_s=0.02, tpot_s=0.01)
    try:
        for text in (False, True):
            skip = paced_server.logged(truth) + 1           # after the warm-up request
            prompts = [tokenizer.decode(p) for p in ids] if text else ids
            (run,) = run_levels(url, prompts, 24, [LoadLevel(1, 10)], count, continuous_usage=not text)
            server_side = paced_server.truth_rows(truth, skip, 10)
            assert all(s.ok and s.output_tokens == 24 for s in run.samples), [s.error for s in run.samples]
            assert {s.token_counts for s in run.samples} == {"retokenized" if text else "server"}
            for mine, theirs in zip(run.samples, server_side):
                assert mine.ttft_s >= theirs["ttft_s"]
            offsets = [m.tpot_s - t["tpot_s"] for m, t in zip(run.samples, server_side)]
            assert abs(statistics.median(offsets)) < 1e-4, offsets
    finally:
        server.terminate()
        server.wait()


@pytest.fixture(scope="module")
def served_compare():
    """cluster/gpu/served_compare.py, a script outside the package, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("served_compare", ROOT / "cluster/gpu/served_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_served_compare_reads_the_servers_means_from_prometheus_histograms(served_compare):
    """served_compare's server-side reference: the deltas of vLLM's TTFT and per-request TPOT histograms
    between two scrapes, summed over engines, as ms means; buckets and other metrics are not counted."""

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    # the exposition vLLM's server writes: prometheus_client's, one labelled series per engine
    registry = CollectorRegistry()
    labels = ("engine", "model_name")
    ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", labels, registry=registry)
    tpot = Histogram("vllm:request_time_per_output_token_seconds", "TPOT", labels, registry=registry)
    e2e = Histogram("vllm:e2e_request_latency_seconds", "e2e", labels, registry=registry)
    tokens = Counter("vllm:generation_tokens", "tokens", labels, registry=registry)

    def observe(engine: str, ttft_s: float, tpot_s: float, count: int) -> None:
        for _ in range(count):
            ttft.labels(engine, "cell").observe(ttft_s)
            tpot.labels(engine, "cell").observe(tpot_s)
            e2e.labels(engine, "cell").observe(9.0)
            tokens.labels(engine, "cell").inc(64)

    observe("0", 0.1, 0.004, 10)
    observe("1", 0.1, 0.004, 5)
    before = served_compare.parse_metrics(generate_latest(registry).decode())
    assert before == pytest.approx({"server_ttft_mean_sum": 1.5, "server_ttft_mean_count": 15,
                                    "server_tpot_mean_sum": 0.06, "server_tpot_mean_count": 15})
    observe("0", 0.018, 0.005, 30)
    observe("1", 0.018, 0.005, 20)
    after = served_compare.parse_metrics(generate_latest(registry).decode())
    means = served_compare._server_means(before, after)
    assert means["server_ttft_mean"] == pytest.approx(18.0) and means["server_ttft_mean_requests"] == 50
    assert means["server_tpot_mean"] == pytest.approx(5.0)
    assert served_compare._server_means({}, after) == {}       # no first scrape: no figure, not a cumulative one


def test_served_compare_summarizes_the_gpu_samples_inside_a_runs_window(served_compare):
    """served_compare's GPU view: nvidia-smi's CSV lines (its local-time stamps, `nounits`) are read back
    and only the samples inside a run's wall-clock window count; a cut or unreported line is skipped."""
    import datetime

    t0 = datetime.datetime(2026, 12, 2, 19, 30, 0)
    stamp = lambda s: (t0 + datetime.timedelta(seconds=s)).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]   # noqa: E731
    lines = [f"{stamp(0.0)}, 345, 3201, 80.5, 31, 0",           # idle, before the run
             f"{stamp(1.0)}, 1980, 3201, 600.0, 40, 100",
             f"{stamp(1.1)}, 1800, 3201, 500.0, 42, 90",
             f"{stamp(1.2)}, [N/A], 3201, 500.0, 42, 90",        # a field the GPU did not report
             f"{stamp(1.3)}, 1700, 32",                          # a line cut mid-write
             f"{stamp(5.0)}, 345, 3201, 80.0, 35, 0"]            # idle again, after it
    csv, start = "\n".join(lines) + "\n", t0.timestamp()
    got = served_compare.gpu_during(csv, start + 0.5, start + 2.0)
    assert got == pytest.approx({"sm_mhz_mean": 1890.0, "sm_mhz_min": 1800.0, "power_w_mean": 550.0,
                                 "temp_c_max": 42.0, "gpu_util_mean": 95.0, "gpu_samples": 2})
    assert served_compare.gpu_during(csv, start + 2.0, start + 4.0) == {}      # no sample in the window


# --- the transformers server on real models ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return baseline_engine("builtin:tiny-llama")


@pytest.fixture(scope="module")
def smol():
    return baseline_engine("builtin:smollm2-135m-instruct")


def _direct_greedy(engine, ids: list[int], n: int) -> str:
    import torch
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    pad_token_id=engine.tokenizer.eos_token_id)
    return engine.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True, clean_up_tokenization_spaces=False)


async def _stream_text(base_url: str, prompt, n: int) -> tuple[str, list]:
    import aiohttp
    from jobs.serving.openai_stream import completion_payload, stream_completion

    async with aiohttp.ClientSession() as session:
        result = await stream_completion(session, f"{base_url}/v1/completions", completion_payload(None, prompt, n))
    assert result.ok, result.error
    return "".join(c.text for c in result.chunks), list(result.chunks)


@pytest.mark.parametrize("tokens_per_chunk", [1, 3])
def test_hf_server_streams_the_direct_greedy_generation(tiny, tokens_per_chunk):

    ids = tiny.tokenizer("The history of the city begins", add_special_tokens=False)["input_ids"]
    with tiny.serve({"tokens_per_chunk": tokens_per_chunk}) as server:
        url = server.url
        text, chunks = asyncio.run(_stream_text(url, ids, 10))
    assert text == _direct_greedy(tiny, ids, 10)
    assert [c.completion_tokens for c in chunks] == list(range(tokens_per_chunk, 10, tokens_per_chunk)) + [10]


def test_hf_server_rejects_what_it_cannot_serve(tiny):
    import aiohttp

    async def post(url, body):
        async with aiohttp.ClientSession() as session, session.post(f"{url}/v1/completions", json=body) as r:
            return r.status, await r.json()

    with tiny.serve({}) as server:
        url = server.url
        assert asyncio.run(post(url, {"prompt": [], "max_tokens": 2}))[0] == 400
        status, body = asyncio.run(post(url, {"prompt": "Hi", "max_tokens": 2, "temperature": 0.7}))
        assert status == 400 and "greedily" in body["error"]["message"]
        status, body = asyncio.run(post(url, {"prompt": "Hi", "max_tokens": 3, "ignore_eos": True}))  # not streamed
        assert status == 200 and body["usage"]["completion_tokens"] == 3


SERVING = {"concurrency": [1, 4], "requests_per_level": 50, "request_rate": None, "prompt_tokens": 16,
           "output_tokens": 8, "sla_ttft_ms": 2000.0, "sla_tpot_ms": 200.0, "corpus": "evals-wikipedia"}


def test_serving_evaluator_levels_percentiles_and_queueing(tiny):
    from jobs.evaluate import TABLE_SCHEMAS, run_evaluator

    result = run_evaluator("serving", tiny, SERVING)
    by = {(m.name, json.loads(m.settings)["concurrency"]): m for m in result.metrics}
    for c in (1, 4):
        settings = json.loads(by[("serving_ttft_ms_p50", c)].settings)
        assert settings["requests"] == 50 and settings["server_batching"] == "none"
        assert {"prompt_tokens", "output_tokens", "sla_ttft_ms", "sla_tpot_ms", "device", "request_rate"} <= set(settings)
        assert by[("serving_requests_ok", c)].value == 50 and by[("serving_requests_failed", c)].value == 0
        for name in ("ttft", "tpot", "itl", "e2e"):
            values = [by[(f"serving_{name}_ms_p{q}", c)].value for q in PERCENTILES]
            assert values == sorted(values), (name, c, values)
        assert by[("serving_goodput", c)].value <= by[("serving_request_throughput", c)].value
        tps, rps = by[("serving_output_tokens_per_s", c)].value, by[("serving_request_throughput", c)].value
        assert tps == pytest.approx(8 * rps)
    # one generation at a time: with 4 clients each request waits behind the others
    assert by[("serving_ttft_ms_p50", 4)].value > 2 * by[("serving_ttft_ms_p50", 1)].value
    rows = result.tables["samples"]
    assert len(rows) == 100 and all(r["ok"] and r["output_tokens"] == 8 and r["prompt_tokens"] == 16 for r in rows)
    pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS["samples"])     # the store's schema holds them


def test_serving_evaluator_sends_text_that_the_server_tokenizes_to_the_prompt_length(smol, monkeypatch):
    """prompt_format text (the spec's default): every request carries text of exactly prompt_tokens tokens,
    which the server tokenizes (special tokens added, as vLLM does for text) and reports back; token_ids
    sends the windows as ids. The figures say which format they measured: text in their settings, token_ids
    by leaving it out, as every served figure was written before the field."""
    from jobs.evaluate import run_evaluator
    from jobs.serving import loadgen

    sent = []
    payload = loadgen.completion_payload
    monkeypatch.setattr(loadgen, "completion_payload", lambda model, prompt, *a: sent.append(prompt) or
                        payload(model, prompt, *a))       # the real payload, recorded on its way out
    tok = smol.tokenizer
    specials = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    small = {**SERVING, "concurrency": [2], "requests_per_level": 6, "output_tokens": 3}
    text = run_evaluator("serving", smol, {**small, "prompt_format": "text"})
    assert len(sent) == 7 and all(isinstance(p, str) for p in sent)             # the warm-up and 6
    assert [len(tok(p, add_special_tokens=False)["input_ids"]) for p in sent] == [16] * 7
    rows = text.tables["samples"]
    assert len(rows) == 6 and all(r["ok"] and r["prompt_tokens"] == 16 + specials for r in rows), rows
    assert {json.loads(m.settings)["prompt_format"] for m in text.metrics} == {"text"}
    sent.clear()
    ids = run_evaluator("serving", smol, {**small, "prompt_format": "token_ids"})
    assert len(sent) == 7 and all(isinstance(p, list) and len(p) == 16 for p in sent)
    assert all(r["prompt_tokens"] == 16 for r in ids.tables["samples"])
    assert not any("prompt_format" in json.loads(m.settings) for m in ids.metrics)


def test_smollm2_server_matches_generate_and_serves_a_small_load(smol):
    from jobs.evaluate import run_evaluator

    text_prompt = "The three primary colors are"
    ids = smol.tokenizer(text_prompt)["input_ids"]
    with smol.serve({}) as server:
        url = server.url
        streamed, _ = asyncio.run(_stream_text(url, text_prompt, 8))
    assert streamed == _direct_greedy(smol, ids, 8) and streamed.strip()
    # a small load: the 50-request percentiles are the tiny model's test; this one is about real weights
    small = {**SERVING, "concurrency": [1, 2], "requests_per_level": 8, "prompt_tokens": 16, "output_tokens": 3}
    metrics = {(m.name, json.loads(m.settings)["concurrency"]): m.value for m in run_evaluator("serving", smol, small).metrics}
    assert metrics[("serving_requests_ok", 1)] == metrics[("serving_requests_ok", 2)] == 8
    assert metrics[("serving_ttft_ms_p50", 2)] > metrics[("serving_ttft_ms_p50", 1)]
