"""Greedy generation of many prompts on the cell's engine, for the generative evaluators
(GSM8K, JSON output, needle retrieval).

Prompts are token-id lists, so both engines generate from exactly the same tokens. On hf they
go in batches of `batch_size`, sorted by length and left-padded (fewer pad tokens per batch);
on vLLM all of them go in one completions request to the cell's `vllm serve`. Generation stops
at EOS, at `max_new_tokens`, or at the first stop string, and the text is cut before it (as
lm-eval's `until`).
"""
from __future__ import annotations

from typing import Sequence

from jobs.engines.base import BATCH_SIZE, Generation, cut_at_stop  # noqa: F401  (re-exported)


def encode(engine, text: str) -> list[int]:
    """`text` as the tokenizer encodes it by default (its BOS too, where it adds one)."""
    return engine.tokenizer(text)["input_ids"]


def greedy(engine, prompts: list[list[int]], max_new_tokens: int, stop: Sequence[str] = (),
           batch_size: int = BATCH_SIZE) -> list[Generation]:
    """One greedy `Generation` per prompt, in prompt order (the engine's `generate_text`)."""
    return engine.generate_text([list(p) for p in prompts], max_new_tokens, tuple(stop), batch_size)
