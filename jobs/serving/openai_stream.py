"""One streamed OpenAI `/v1/completions` request, timed on the client.

It records what arrived when and what the server said about token counts; turning that into
TTFT/ITL/TPOT is `jobs.serving.stats`' job. The payload asks for vLLM's extras (`ignore_eos`,
`min_tokens`, `stream_options.continuous_usage_stats`) so every request yields exactly
`max_tokens` tokens and, where the server supports it, a cumulative token count per chunk.
"""
from __future__ import annotations

import codecs
import json
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    at: float                        # seconds after the request was sent
    text: str
    completion_tokens: int | None    # cumulative count the server reported with this chunk, if any


@dataclass(frozen=True)
class StreamResult:
    ok: bool                         # HTTP 200, no error event, ended with [DONE]
    chunks: tuple[Chunk, ...]        # the chunks that carried a choice, in arrival order
    prompt_tokens: int | None        # from the server's usage, when reported
    completion_tokens: int | None    # final usage, when reported
    error: str = ""


class SSEDecoder:
    """Server-sent events: `data:` payloads of complete events (blank-line separated); comments skipped."""

    def __init__(self) -> None:
        self._buffer = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()    # a read may split a character

    def feed(self, data: bytes | str) -> list[str]:
        self._buffer += self._utf8.decode(data) if isinstance(data, bytes) else data
        self._buffer = self._buffer.replace("\r\n", "\n")
        events = []
        while "\n\n" in self._buffer:
            event, self._buffer = self._buffer.split("\n\n", 1)
            lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
            if lines:
                events.append("\n".join(lines))
        return events


def completion_payload(model: str | None, prompt: str | list[int], max_tokens: int,
                       continuous_usage: bool = True) -> dict:
    """`continuous_usage=False` asks only for the final usage, as `vllm bench serve` does (chunk
    token counts then come from re-tokenizing the text)."""
    payload = {
        "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens, "ignore_eos": True,
        "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": continuous_usage},
    }
    if model is not None:
        payload["model"] = model
    return payload


def parse_events(events: list[tuple[float, str]]) -> StreamResult:
    """Fold timed SSE payloads into a StreamResult (pure: the transport only collects them)."""
    chunks, prompt_tokens, completion_tokens, done = [], None, None, False
    for at, payload in events:
        if payload.strip() == "[DONE]":
            done = True
            break
        data = json.loads(payload)
        if "error" in data:     # vLLM reports a failure mid-stream as an error event
            err = data["error"]
            return StreamResult(False, tuple(chunks), prompt_tokens, completion_tokens,
                                str(err.get("message", err) if isinstance(err, dict) else err))
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
        completion_tokens = usage.get("completion_tokens", completion_tokens)
        if data.get("choices"):
            chunks.append(Chunk(at, data["choices"][0].get("text") or "", usage.get("completion_tokens")))
    error = "" if done else "stream ended without [DONE]"
    return StreamResult(done, tuple(chunks), prompt_tokens, completion_tokens, error)


async def stream_completion(session, url: str, payload: dict) -> StreamResult:
    """POST one streaming request; every failure becomes a StreamResult with ok=False, never an exception."""
    events: list[tuple[float, str]] = []
    start = time.perf_counter()
    try:
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                body = (await response.text())[:300]
                return StreamResult(False, (), None, None, f"HTTP {response.status}: {body}")
            decoder = SSEDecoder()
            async for data in response.content.iter_any():
                at = time.perf_counter() - start      # one timestamp for all events in this read
                events.extend((at, e) for e in decoder.feed(data))
    except Exception as exc:   # connection refused, reset, timeout: counted as a failed request
        return StreamResult(False, (), None, None, f"{type(exc).__name__}: {exc}")
    try:
        return parse_events(events)
    except (ValueError, KeyError, TypeError) as exc:
        return StreamResult(False, (), None, None, f"malformed stream: {exc}")
