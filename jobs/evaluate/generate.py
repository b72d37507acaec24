"""Greedy generation of many prompts on the cell's engine, for the generative evaluators
(GSM8K, JSON output, needle retrieval).

Prompts are token-id lists, so both engines generate from exactly the same tokens. On hf they
go in batches of `batch_size`, sorted by length and left-padded (fewer pad tokens per batch);
on vLLM all of them go in one completions request to the cell's `vllm serve`. Generation stops
at EOS, at `max_new_tokens`, or at the first stop string, and the text is cut before it (as
lm-eval's `until`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

BATCH_SIZE = 8


@dataclass(frozen=True)
class Generation:
    text: str         # decoded, special tokens skipped, cut before the first stop string
    tokens: int       # tokens generated (stop string included, padding not)


def encode(engine, text: str) -> list[int]:
    """`text` as the tokenizer encodes it by default (its BOS too, where it adds one)."""
    return engine.tokenizer(text)["input_ids"]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _greedy_hf(engine, prompts: list[list[int]], max_new_tokens: int, stop: Sequence[str],
               batch_size: int) -> list[Generation]:
    import torch

    tok = engine.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, Generation] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=engine.device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch],
                            device=engine.device)
        extra = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
        with torch.inference_mode():
            gen = engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, pad_token_id=pad, **extra)
        for row, i in zip(gen[:, width:].tolist(), batch):
            while row and row[-1] == pad:       # a finished row is padded to the batch's longest
                row.pop()
            text = tok.decode(row, skip_special_tokens=True)
            out[i] = Generation(cut_at_stop(text, stop), len(row))
    return [out[i] for i in range(len(prompts))]


def _greedy_vllm(engine, prompts: list[list[int]], max_new_tokens: int, stop: Sequence[str],
                 batch_size: int) -> list[Generation]:
    from jobs.serving.openai_batch import complete

    payload = {"prompt": prompts, "max_tokens": max_new_tokens, "temperature": 0.0, "return_token_ids": True}
    if stop:
        payload["stop"] = list(stop)
    return [Generation(cut_at_stop(c["text"], stop), len(c.get("token_ids") or []))
            for c in complete(engine.handle.url, payload)]


_GREEDY = {"hf": _greedy_hf, "vllm": _greedy_vllm}


def greedy(engine, prompts: list[list[int]], max_new_tokens: int, stop: Sequence[str] = (),
           batch_size: int = BATCH_SIZE) -> list[Generation]:
    """One greedy `Generation` per prompt, in prompt order."""
    if engine.name not in _GREEDY:
        raise KeyError(f"no generation for engine {engine.name!r}. Available: {', '.join(_GREEDY)}")
    return _GREEDY[engine.name](engine, [list(p) for p in prompts], max_new_tokens, tuple(stop), batch_size)
