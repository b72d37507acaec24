"""Tokenizers that survive conversion: a fixed probe text must encode the same everywhere.

When a model is converted into the cache (jobs.models), the tokenizer written there is reloaded
and must encode PROBE exactly as the source's tokenizer does (for a GGUF SentencePiece
vocabulary, sentencepiece itself: jobs.gguf_tokenizer). The ids are kept beside it in
PROBE_FILE, and every engine load checks its tokenizer against them again. A mismatch is an
error naming the model and the first differing tokens: never a silent fallback, since a wrong
split changes perplexity by orders of magnitude.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# plain text only (no special-token strings): words, digits, punctuation, runs of spaces,
# tabs, newlines and non-ASCII scripts, where tokenizers most often disagree
PROBE = ("The quick brown fox jumps over the lazy dog.\n\nIn 1969, 3.14159 x 2 = 6.28; naïve café,  double  spaces,"
         "\ttabs\nand 日本語 — “quotes” 🤖.")
PROBE_FILE = "qmx-tokenizer-probe.json"


class TokenizerMismatch(RuntimeError):
    """A tokenizer encodes the probe text differently from the one it was converted from."""


def encode(tokenizer, text: str = PROBE) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def compare(expected: list[int], got: list[int], model: str, what: str, tokenizer=None) -> None:
    """Raise TokenizerMismatch naming `model` and the first differing tokens, unless equal."""
    if expected == got:
        return
    k = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))

    def show(ids):
        window = ids[k:k + 4]
        return f"{window} {tokenizer.convert_ids_to_tokens(window)}" if tokenizer is not None else str(window)
    raise TokenizerMismatch(f"model {model!r}: {what} encodes the probe text into {len(got)} tokens, the source "
                            f"into {len(expected)}; first difference at token {k}: source {show(expected)}, "
                            f"got {show(got)}")


def save_checked(tokenizer, out: Path, model: str, source_ids: list[int] | None = None, source: str = "") -> None:
    """Save `tokenizer` to `out`, reload it, and require both to encode PROBE as the source does
    (`source_ids`, default: `tokenizer`'s own encoding); record the ids in PROBE_FILE."""
    from transformers import AutoTokenizer

    expected = encode(tokenizer) if source_ids is None else list(source_ids)
    compare(expected, encode(tokenizer), model, "the built tokenizer", tokenizer)
    tokenizer.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    compare(expected, encode(reloaded), model, "the saved tokenizer, reloaded", reloaded)
    (Path(out) / PROBE_FILE).write_text(json.dumps(
        {"probe": PROBE, "ids": expected, "source": source or "the source tokenizer, before saving"}, indent=1))


def verify(tokenizer, folder: str | Path, model: str) -> dict[str, Any] | None:
    """Check a loaded tokenizer against the probe ids recorded when `folder` was converted; None
    where nothing was converted (a hub id or a user's folder without the file)."""
    path = Path(folder) / PROBE_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    compare(record["ids"], encode(tokenizer, record["probe"]), model, f"the tokenizer loaded for {folder}", tokenizer)
    return record
