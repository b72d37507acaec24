"""Served-latency clients against a server whose timing is known: quantmatrix's load generator and
`vllm bench serve`, each checked against the server's own send times.

On the H200 the two clients disagreed at c=1 by more than ±5 % (benchmarks/results/h200-2026-12-02-c), and
vLLM's own client moved 32-37 % between runs on one server: a GPU server cannot tell a client's error from
its own drift. This benchmark takes the GPU out: the clients talk to benchmarks/paced_server.py, which
speaks vLLM's streaming format on a fixed pace and logs when each chunk really left. Each client's TTFT and
TPOT p50 are compared with the server's own figures for the same requests, not with the targets.

    .venv/bin/python benchmarks/client_bench.py [--ttft-ms 15] [--tpot-ms 2.3] [--requests 50] [--rounds 3]
                                                [--vllm-path DIR[:DIR]]

The clients are those of cluster/gpu/served_compare.py (`bench`, `qmx`, `qmx-text`), with 128-token prompts,
64 output tokens and c=1, in an order rotated per round. Where vLLM is not installed (this CPU box), its
client runs from the wheel's Python files (no compiled part is imported): `pip download --no-deps vllm==0.26.0`,
unzip it into DIR, then `pip install --no-deps --target DIR2` fastapi starlette cbor2 pyzmq openai-harmony
openai jiter msgspec pybase64 cachetools uvloop llguidance xgrammar apache-tvm-ffi uvicorn watchfiles
partial-json-parser model-hosting-container-standards httpx2 httpcore2 truststore sniffio supervisor
jmespath, and pass `--vllm-path DIR:DIR2`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "cluster/gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import paced_server  # noqa: E402
import served_compare as compare  # noqa: E402


async def _in_process(url: str, truth: Path, requests: int) -> list[dict]:
    """vLLM's request function (the heart of `vllm bench serve`) and quantmatrix's, in this one process, each in
    an aiohttp session with and without `trust_env` (vLLM's client turns it on): which part of a TTFT gap
    is the function and which the session."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

    from jobs.serving.openai_stream import completion_payload, stream_completion
    from jobs.serving.stats import request_sample

    prompt = list(range(1000, 1000 + compare.PROMPT))
    endpoint = f"{url}/v1/completions"

    async def vllm_ttft(session) -> float:
        r = await async_request_openai_completions(RequestFuncInput(
            prompt=prompt, api_url=endpoint, prompt_len=compare.PROMPT, output_len=compare.OUTPUT, model="cell",
            extra_body={"ignore_eos": True, "temperature": 0.0}), session)
        assert r.success, r.error
        return r.ttft

    async def qmx_ttft(session) -> float:
        r = await stream_completion(session, endpoint, completion_payload("cell", prompt, compare.OUTPUT))
        return request_sample(0, r, len, compare.PROMPT).ttft_s

    rows = []
    for trust_env in (True, False):
        # vLLM's connector settings (vllm/benchmarks/serve.py) for both
        connector = aiohttp.TCPConnector(limit=1, limit_per_host=1, ttl_dns_cache=300, use_dns_cache=True,
                                         keepalive_timeout=60, enable_cleanup_closed=True, force_close=False)
        async with aiohttp.ClientSession(connector=connector, trust_env=trust_env,
                                         timeout=aiohttp.ClientTimeout(total=3600)) as session:
            for name, ttft in (("vLLM's request function", vllm_ttft), ("quantmatrix's", qmx_ttft)):
                await ttft(session)                      # warm-up, not in the figures
                skip = paced_server.logged(truth)
                mine = [await ttft(session) for _ in range(requests)]
                server = paced_server.truth_p50(truth, skip, requests)["ttft_p50"]
                rows.append({"function": name, "trust_env": trust_env,
                             "ttft_p50": statistics.median(mine) * 1e3, "server_ttft_p50": server})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ttft-ms", type=float, default=15.0)
    ap.add_argument("--tpot-ms", type=float, default=2.3)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", nargs="+", default=list(compare.CLIENTS), choices=compare.CLIENTS)
    ap.add_argument("--vllm-path", default="", help="prepended to PYTHONPATH for `vllm bench serve` only")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from jobs.models import materialize

    model_dir = str(materialize("builtin:smollm2-135m-instruct", None, None))
    work = Path(tempfile.mkdtemp(prefix="qmx-client-bench-"))
    truth = work / "truth.jsonl"
    url, server = paced_server.start(truth, model_dir, a.ttft_ms / 1e3, a.tpot_ms / 1e3)
    if a.vllm_path:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [a.vllm_path, os.environ.get("PYTHONPATH")]))
    rows = []
    try:
        windows = compare.Windows(AutoTokenizer.from_pretrained(model_dir))
        run = {
            "bench": lambda r: compare._bench(url, model_dir, 1, a.requests, work, f"bench-r{r}", seed=r),
            "qmx": lambda r: compare._qmx(url, windows, 1, a.requests, text=False),
            "qmx-text": lambda r: compare._qmx(url, windows, 1, a.requests, text=True),
        }
        for r in range(1, a.rounds + 1):
            order = a.clients[(r - 1) % len(a.clients):] + a.clients[:(r - 1) % len(a.clients)]
            for client in order:
                skip = paced_server.logged(truth)
                measured = run[client](r)
                rows.append({"client": client, "round": r, **{k: measured[k] for k in ("ttft_p50", "tpot_p50")},
                             **{f"server_{k}": v for k, v in paced_server.truth_p50(truth, skip, a.requests).items()}})
                print(json.dumps(rows[-1]), flush=True)
        if a.vllm_path:
            sys.path[:0] = a.vllm_path.split(os.pathsep)
        try:
            import vllm.benchmarks.lib.endpoint_request_func  # noqa: F401
        except ImportError as err:
            print(f"in-process part left out: vLLM's client does not import ({err})")
            attribution = []
        else:
            attribution = asyncio.run(_in_process(url, truth, a.requests))
    finally:
        server.terminate()
        server.wait()
    print(f"\nPaced server: TTFT {a.ttft_ms} ms, TPOT {a.tpot_ms} ms, {a.requests} requests at c=1 per run, "
          f"{a.rounds} rounds; 128-token prompts, 64 output tokens. Client figure, then client - server and"
          f" client / server - 1 for the same requests: medians (min-max) over rounds.")
    print("| client | TTFT p50 ms | vs server | TPOT p50 ms | vs server |")
    print("| --- | --- | --- | --- | --- |")
    for client in a.clients:
        mine = [x for x in rows if x["client"] == client]
        cells = []
        for figure in ("ttft_p50", "tpot_p50"):
            off = [x[figure] / x[f"server_{figure}"] - 1 for x in mine]
            ms = statistics.median(x[figure] - x[f"server_{figure}"] for x in mine)
            cells += [compare._summary([x[figure] for x in mine]),
                      f"{ms:+.3f} ms, {statistics.median(off):+.2%} ({min(off):+.2%} to {max(off):+.2%})"]
        print(f"| {client} | {' | '.join(cells)} |")
    if attribution:
        print(f"\nIn one process, token-id prompts, {a.requests} requests each: client TTFT p50 over the server's.")
        print("| request function | session trust_env | TTFT p50 ms | vs server |")
        print("| --- | --- | --- | --- |")
        for x in attribution:
            print(f"| {x['function']} | {x['trust_env']} | {x['ttft_p50']:.3f} | "
                  f"{x['ttft_p50'] - x['server_ttft_p50']:+.3f} ms |")


if __name__ == "__main__":
    main()
