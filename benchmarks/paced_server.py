"""A server whose timing is known: vLLM's streaming completions format on a fixed pace, and a log of when
each chunk really left. It stands in for `vllm serve` where a client's own measurement is what is checked
(benchmarks/client_bench.py, tests/test_serving.py): one SSE chunk per token, the usage per chunk when asked
(`continuous_usage_stats`) and at the end, then `[DONE]`. The first token leaves TTFT after the request
arrives and one more every TPOT after that, on an absolute schedule. Per request it appends to TRUTH the
server's own TTFT (arrival to first chunk sent) and TPOT ((last - first chunk sent) / (tokens - 1)).

    python3 benchmarks/paced_server.py PORT TRUTH MODEL_DIR TTFT_S TPOT_S     (its own process: no shared GIL)
"""
from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def serve(port: int, truth: str, model_dir: str, ttft_s: float, tpot_s: float) -> None:
    """Run the server until terminated; MODEL_DIR's tokenizer counts text prompts as vLLM does."""
    from aiohttp import web
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    log = open(truth, "a", buffering=1)

    def event(data: dict) -> bytes:
        return f"data: {json.dumps(data)}\n\n".encode()

    async def completions(request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        body = await request.json()
        prompt, n = body["prompt"], int(body["max_tokens"])
        # vLLM's count: token ids as sent, text tokenized with its special tokens
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(tokenizer(prompt)["input_ids"])
        options = body.get("stream_options") or {}
        per_chunk = bool(options.get("include_usage") and options.get("continuous_usage_stats"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sends = []
        for i in range(n):
            await asyncio.sleep(max(0.0, arrival + ttft_s + i * tpot_s - time.perf_counter()))
            chunk = {"id": "cmpl-paced", "object": "text_completion", "created": int(time.time()), "model": "cell",
                     "choices": [{"index": 0, "text": " the", "logprobs": None,
                                  "finish_reason": "length" if i == n - 1 else None, "stop_reason": None}]}
            if per_chunk:
                chunk["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": i + 1,
                                  "total_tokens": prompt_tokens + i + 1}
            sends.append(time.perf_counter())      # before the write: no client can have it earlier
            await response.write(event(chunk))
        if options.get("include_usage"):
            await response.write(event({"id": "cmpl-paced", "object": "text_completion", "model": "cell",
                                        "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                                 "completion_tokens": n,
                                                                 "total_tokens": prompt_tokens + n}}))
        # logged before [DONE]: a client that has read the whole stream finds its request in the log
        log.write(json.dumps({"ttft_s": sends[0] - arrival, "tpot_s": (sends[-1] - sends[0]) / (n - 1)}) + "\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the paced server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the paced server did not answer /health")


def start(truth: Path, model_dir: str, ttft_s: float, tpot_s: float) -> tuple[str, subprocess.Popen]:
    """Start the server in its own process; return its base URL once /health answers, and the process."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    truth.touch()
    proc = subprocess.Popen([sys.executable, __file__, str(port), str(truth), model_dir, str(ttft_s), str(tpot_s)])
    try:
        _wait_healthy(url, proc)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return url, proc


def logged(truth: Path) -> int:
    """How many requests the server has logged so far."""
    return len(truth.read_text().splitlines())


def truth_rows(truth: Path, skip: int, last: int) -> list[dict[str, float]]:
    """The server's figures (seconds) for the `last` requests logged after line `skip` (warm-ups come first)."""
    rows = [json.loads(line) for line in truth.read_text().splitlines()[skip:]][-last:]
    assert len(rows) == last, f"the server logged {len(rows)} requests, not {last}"
    return rows


def truth_p50(truth: Path, skip: int, last: int) -> dict[str, float]:
    """The server's own TTFT and TPOT p50 in ms over those requests."""
    rows = truth_rows(truth, skip, last)
    return {"ttft_p50": statistics.median(r["ttft_s"] for r in rows) * 1e3,
            "tpot_p50": statistics.median(r["tpot_s"] for r in rows) * 1e3}


if __name__ == "__main__":
    port, truth, model_dir, ttft_s, tpot_s = sys.argv[1:6]
    serve(int(port), truth, model_dir, float(ttft_s), float(tpot_s))
