"""The user's own prompt set: greedy generations stored for side-by-side reading across cells.

The file is JSONL, one object per line with "prompt" and an optional "id" (default: the
line number). Each prompt is sent as plain text (no chat template), special tokens added as
the tokenizer does by default, and generated greedily for up to `max_new_tokens`, stopping
at EOS, one prompt at a time so each row's seconds is that prompt's own wall time.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.generate import encode

_ROOT = Path(__file__).resolve().parents[2]


def _locate(path: str) -> Path:
    """A relative path is tried from the working directory, then the repository."""
    file = Path(path)
    if not file.is_absolute() and not file.exists() and (_ROOT / file).exists():
        file = _ROOT / file
    return file


def read_prompts(path: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(id, prompt) pairs in file order, the first `limit` of them."""
    file = _locate(path)
    rows = []
    with file.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str):
                raise ValueError(f"{file}:{line_no}: each line needs a string \"prompt\"")
            rows.append((str(row.get("id", line_no)), row["prompt"]))
    ids = [i for i, _ in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{file}: prompt ids are not unique")
    return rows[:limit] if limit is not None else rows


def _generate(engine, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    # token ids, so every engine generates from exactly the same tokens
    out, = engine.generate_text([encode(engine, prompt)], max_new_tokens, batch_size=1)
    return out.text, out.tokens


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    max_new = int(settings["max_new_tokens"])
    prompts = read_prompts(settings["path"], settings.get("limit"))
    # the content hash, not just the path, says whether two cells read the same prompts
    digest = hashlib.sha256(_locate(settings["path"]).read_bytes()).hexdigest()[:16]
    common = dict(path=settings["path"], sha256=digest, max_new_tokens=max_new, limit=settings.get("limit"), prompts=len(prompts),
                  decoding="greedy", chat_template=False, engine=engine.name, device=engine.device,
                  compute_dtype=engine.compute_dtype)
    row_settings = json.dumps(common, sort_keys=True)
    rows, total = [], 0.0
    for prompt_id, prompt in prompts:
        start = time.perf_counter()
        text, n = _generate(engine, prompt, max_new)
        seconds = time.perf_counter() - start
        total += seconds
        rows.append({"prompt_id": prompt_id, "prompt": prompt, "output": text, "output_tokens": n,
                     "seconds": seconds, "settings": row_settings})
    mean_tokens = sum(r["output_tokens"] for r in rows) / len(rows) if rows else 0.0
    return Evaluation([
        Metric.of("prompts_run", len(rows), "prompts", "none", **common),
        Metric.of("prompts_mean_output_tokens", mean_tokens, "tokens", "none", **common),
        Metric.of("prompts_total_seconds", total, "s", "lower", **common),
    ], {"generations": rows})
