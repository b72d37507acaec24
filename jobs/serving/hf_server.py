"""An OpenAI-compatible streaming `/v1/completions` server around the cell's loaded transformers model.

It serves exactly `engine.model` (the cell's quantized weights), greedy, on 127.0.0.1 at a
free port. Scheduling is the simplest honest one: a single generation thread runs one
request at a time, first come first served (`BATCHING = "none"`); waiting requests queue,
so TTFT under concurrency includes that queueing. Decoding is a plain KV-cache loop, one
forward per token, each token handed to the request's stream as it is produced.

Protocol as vLLM speaks it: `max_tokens`, `min_tokens` (EOS masked until then), `ignore_eos`
(EOS does not stop generation), SSE `data: {...}` chunks and `data: [DONE]`, `usage` in a
final chunk when `stream_options.include_usage`, and per chunk (cumulative) when
`stream_options.continuous_usage_stats`. `settings["tokens_per_chunk"]` (default 1) packs
several tokens into each chunk, as a loaded server would: the load generator must cope.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jobs.serving import ServerHandle

BATCHING = "none"
SERVED_MODEL_NAME = "quantmatrix-cell"


@dataclass
class _Job:
    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    # thread-safe: ("token", id, finish_reason or None) | ("done", "abort") | ("error", text)
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


def _eos_ids(engine) -> set[int]:
    ids = getattr(engine.model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids])
    return {i for i in ids | {engine.tokenizer.eos_token_id} if i is not None}


def _generate(engine, job: _Job, eos: set[int]) -> None:
    """Greedy decode with a KV cache, emitting each token as soon as it is chosen."""
    import torch

    model = engine.model
    x = torch.tensor([job.prompt_ids], device=engine.device)
    mask = torch.ones_like(x)
    past = None
    eos_index = torch.tensor(sorted(eos), device=engine.device, dtype=torch.long)
    with torch.inference_mode():
        for step in range(job.max_tokens):
            if job.cancelled.is_set():
                job.emit(("done", "abort"))
                return
            out = model(input_ids=x, attention_mask=mask, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
            if step < job.min_tokens and len(eos_index):
                logits = logits.index_fill(0, eos_index, float("-inf"))
            token = int(logits.argmax())
            stop = token in eos and not job.ignore_eos and step + 1 >= job.min_tokens
            last = stop or step + 1 == job.max_tokens
            job.emit(("token", token, ("stop" if stop else "length") if last else None))
            if last:
                return
            x = torch.tensor([[token]], device=engine.device)
            mask = torch.cat([mask, torch.ones_like(x)], dim=1)


def _worker(engine, jobs: "queue.Queue[_Job | None]") -> None:
    eos = _eos_ids(engine)
    while (job := jobs.get()) is not None:
        try:
            _generate(engine, job, eos)
        except Exception as exc:   # one bad request must not kill the server
            job.emit(("error", f"{type(exc).__name__}: {exc}"))


def _parse_request(body: dict[str, Any], tokenizer) -> tuple[list[int], dict[str, Any]]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer(prompt)["input_ids"]          # special tokens added, as vLLM does for text prompts
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        ids = list(prompt)
    else:
        raise ValueError("prompt must be one string or one list of token ids")
    max_tokens = int(body.get("max_tokens") or 16)
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if float(body.get("temperature", 0.0) or 0.0) != 0.0:
        raise ValueError("this server decodes greedily only: temperature must be 0")
    options = body.get("stream_options") or {}
    return ids, {
        "max_tokens": max_tokens,
        "min_tokens": min(int(body.get("min_tokens") or 0), max_tokens),
        "ignore_eos": bool(body.get("ignore_eos", False)),
        "stream": bool(body.get("stream", False)),
        "include_usage": bool(options.get("include_usage", False)),
        "continuous_usage": bool(options.get("include_usage", False) and options.get("continuous_usage_stats", False)),
    }


class _TextDelta:
    """Incremental detokenization: text is released only once its bytes are complete."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def add(self, ids: list[int], final: bool) -> str:
        self.ids += ids
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not final and text.endswith("\ufffd"):       # a multi-byte character split across tokens
            text = text.rstrip("\ufffd")
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _app(engine, jobs: "queue.Queue[_Job | None]", tokens_per_chunk: int):
    from aiohttp import web

    ids = itertools.count()

    async def models(_request):
        return web.json_response({"object": "list", "data": [
            {"id": SERVED_MODEL_NAME, "object": "model", "root": engine.base_path, "owned_by": "quantmatrix"}]})

    async def completions(request):
        try:
            prompt_ids, opts = _parse_request(await request.json(), engine.tokenizer)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": {"message": str(exc), "type": "BadRequestError", "code": 400}},
                                     status=400)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = _Job(prompt_ids, opts["max_tokens"], opts["min_tokens"], opts["ignore_eos"],
                   lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        jobs.put(job)
        rid, created = f"cmpl-{next(ids)}", int(time.time())
        usage = lambda n: {"prompt_tokens": len(prompt_ids), "completion_tokens": n,   # noqa: E731
                           "total_tokens": len(prompt_ids) + n}
        chunk = lambda text, finish, n: {                                           # noqa: E731
            "id": rid, "object": "text_completion", "created": created, "model": SERVED_MODEL_NAME,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
            "usage": usage(n) if opts["continuous_usage"] else None}
        detok, pending, produced, finish, error = _TextDelta(engine.tokenizer), [], 0, None, None
        response = None
        try:
            if opts["stream"]:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await response.prepare(request)
            while finish is None and error is None:
                event = await events.get()
                if event[0] == "token":
                    pending.append(event[1])
                    finish = event[2]
                elif event[0] == "done":
                    finish = event[1]
                else:
                    error = event[1]
                if response is not None and pending and (len(pending) >= tokens_per_chunk or finish or error):
                    produced += len(pending)
                    text = detok.add(pending, final=finish is not None)
                    pending = []
                    data = chunk(text, finish, produced)
                    await response.write(f"data: {json.dumps(data)}\n\n".encode())
            if response is None:     # non-streaming: one JSON body
                if error:
                    return web.json_response({"error": {"message": error, "code": 500}}, status=500)
                body = chunk(detok.add(pending, final=True), finish, len(pending))
                body["usage"] = usage(len(pending))
                return web.json_response(body)
            if error:
                await response.write(f"data: {json.dumps({'error': {'message': error, 'code': 500}})}\n\n".encode())
            if opts["include_usage"] and not error:
                final = {"id": rid, "object": "text_completion", "created": created, "model": SERVED_MODEL_NAME,
                         "choices": [], "usage": usage(produced)}
                await response.write(f"data: {json.dumps(final)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            job.cancelled.set()      # a client that went away frees the generator at its next step

    async def health(_request):
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    return app


@contextlib.contextmanager
def serve(engine, settings: dict[str, Any]):
    """Run the server for `engine` (an HfEngine: `HfEngine.serve`) in background threads for the duration
    of the block; yields its `ServerHandle`."""
    from aiohttp import web

    jobs: "queue.Queue[_Job | None]" = queue.Queue()
    worker = threading.Thread(target=_worker, args=(engine, jobs), name="qmx-hf-generate", daemon=True)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(engine, jobs, int(settings.get("tokens_per_chunk", 1))), access_log=None)
    started, port, failure = threading.Event(), [], []

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)      # port 0: the OS picks a free one
            loop.run_until_complete(site.start())
            port.append(site._server.sockets[0].getsockname()[1])
        except Exception as exc:
            failure.append(exc)
        finally:
            started.set()
        if not failure:
            loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    server = threading.Thread(target=run_loop, name="qmx-hf-server", daemon=True)
    worker.start()
    server.start()
    started.wait()
    try:
        if failure:
            raise RuntimeError(f"hf server failed to start: {failure[0]}") from failure[0]
        yield ServerHandle(f"http://127.0.0.1:{port[0]}", BATCHING)
    finally:
        jobs.put(None)
        with contextlib.suppress(RuntimeError):     # the loop is already closed if start-up failed
            loop.call_soon_threadsafe(loop.stop)
        server.join(timeout=30)
        worker.join(timeout=60)
