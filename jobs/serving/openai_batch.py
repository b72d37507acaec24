"""Plain (not streamed) OpenAI `/v1/completions` requests to a cell's server, for evaluators that
need whole results rather than token timings: perplexity through vLLM's `prompt_logprobs`,
batched greedy generation for offline-style speed and prompt sets.

A list of prompts goes in one request: vLLM's server hands them all to its scheduler at once,
as `LLM.generate` does offline. Prompts are token-id lists, so nothing is re-tokenized.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Sequence

REQUEST_TIMEOUT_S = 3600.0


def complete(base_url: str, payload: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S) -> list[dict[str, Any]]:
    """POST one completions request; its choices in prompt order. A refused request raises with the server's reason."""
    request = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"completions request refused: HTTP {err.code}: "
                           f"{err.read()[:300].decode(errors='replace')}") from None
    return sorted(body["choices"], key=lambda c: c["index"])


def generate(base_url: str, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[dict[str, Any]]:
    """Exactly `new_tokens` greedy tokens per prompt (EOS ignored), all prompts in one request;
    raises if any prompt got another count (throughput figures assume exactly that many)."""
    choices = complete(base_url, {"prompt": [list(p) for p in prompts], "max_tokens": new_tokens,
                                  "min_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0,
                                  "return_token_ids": True})
    check_token_counts(choices, len(prompts), new_tokens)
    return choices


def check_token_counts(choices: list[dict[str, Any]], prompts: int, new_tokens: int) -> None:
    counts = [len(c.get("token_ids") or ()) for c in choices]
    if len(counts) != prompts or any(n != new_tokens for n in counts):
        raise RuntimeError(f"asked for {new_tokens} tokens for each of {prompts} prompts; the server returned "
                           f"{len(counts)} choices with {sorted(set(counts))} tokens")


def prompt_logprobs(base_url: str, prompts: Sequence[Sequence[int]]) -> list[list[float | None]]:
    """Per prompt, each position's log-prob of its own token (None at position 0), from vLLM's
    `prompt_logprobs=0` extra parameter (raw logits, as offline `SamplingParams(prompt_logprobs=0)`)."""
    choices = complete(base_url, {"prompt": [list(p) for p in prompts], "max_tokens": 1, "temperature": 0.0,
                                  "prompt_logprobs": 0})
    return own_token_logprobs(prompts, choices)


def own_token_logprobs(prompts: Sequence[Sequence[int]], choices: list[dict[str, Any]]) -> list[list[float | None]]:
    """Each prompt token's log-prob from vLLM's `prompt_logprobs` (one entry per position: None, then
    {token id as a string: {"logprob", "rank", "decoded_token"}} holding that token, plus the top-1)."""
    if len(choices) != len(prompts):
        raise RuntimeError(f"server returned {len(choices)} choices for {len(prompts)} prompts")
    out = []
    for prompt, choice in zip(prompts, choices):
        per_pos = choice.get("prompt_logprobs")
        if per_pos is None or len(per_pos) != len(prompt):
            raise RuntimeError(f"server returned {None if per_pos is None else len(per_pos)} prompt log-probs "
                               f"for a {len(prompt)}-token prompt (does it support `prompt_logprobs`?)")
        out.append([None if entry is None else entry[str(token)]["logprob"] for token, entry in zip(prompt, per_pos)])
    return out
