"""Sanity gates on the figures a cell reports: each failure becomes a `sanity:` note (runs.notes)
and the count a metric, so a number that cannot be right is flagged, not ranked silently.

The gates catch what once went unnoticed: a tokenizer that split every character (Gemma-3 GGUF
reloaded without merges: 1.0 characters per token, baseline perplexity 1829 instead of 17).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.evaluate import Metric

NOTE_PREFIX = "sanity: "
# a subword tokenizer on natural-language text: English ~3.5-5 chars/token, CJK and code ~1.5-3
CHARS_PER_TOKEN = (1.5, 10.0)
# an unquantized model's token perplexity on ordinary text; a random or broken model sits at ~vocab size
BASELINE_PERPLEXITY = (1.5, 1000.0)


@dataclass(frozen=True)
class Gates:
    metrics: list[Metric]
    notes: tuple[str, ...]


def _window_limits(engine) -> dict[str, int]:
    from jobs.models import read_config

    try:
        config = read_config(engine.base_path, engine.base_revision) if engine.base_path else {}
    except (OSError, RuntimeError, ValueError):    # the window gates are skipped, the figure is not
        return {}
    config = config.get("text_config", config)
    return {k: config[k] for k in ("sliding_window", "max_position_embeddings") if isinstance(config.get(k), int)}


def perplexity_gates(engine, settings: dict[str, Any], ids: list[int], ppl: float, bos: int | None) -> Gates:
    """chars_per_token of the scored text, the baseline's perplexity range, and the window length
    against the model's sliding window and context."""
    notes = []
    cpt = len(engine.tokenizer.decode(ids)) / max(len(ids), 1)
    lo, hi = CHARS_PER_TOKEN
    if not lo <= cpt <= hi:
        notes.append(f"chars_per_token {cpt:.2f} on {settings['corpus']} is outside [{lo}, {hi}]: "
                     "the tokenizer does not split text into subwords as expected")
    lo, hi = BASELINE_PERPLEXITY
    if engine.is_base and not lo <= ppl <= hi:
        notes.append(f"baseline perplexity {ppl:.1f} on {settings['corpus']} is outside [{lo}, {hi}]")
    window = settings["context"] + (bos is not None)
    limits = _window_limits(engine)
    if window > limits.get("max_position_embeddings", window):
        notes.append(f"window of {window} tokens exceeds the model's context {limits['max_position_embeddings']}")
    flags = len(notes)
    if window > limits.get("sliding_window", window):   # how such models work: noted, not a failure
        notes.append(f"info: window of {window} tokens exceeds the model's sliding window "
                     f"{limits['sliding_window']}: its local-attention layers do not see the whole window")
    return Gates([Metric.of("chars_per_token", cpt, "chars/token", "none", corpus=settings["corpus"],
                            tokens=len(ids)),
                  Metric.of("sanity_flags", flags, "count", "lower", gates="chars_per_token, baseline "
                            "perplexity, window vs context")], tuple(NOTE_PREFIX + n for n in notes))
