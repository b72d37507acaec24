"""Structured output: the share of greedy generations that are valid JSON, and that satisfy the
JSON Schema their prompt asks for.

The prompt set ships in the package (jobs/data/json_prompts.jsonl, 20 prompts): one object a
line with "id", "prompt" (asks for a JSON object with named, typed keys; plain text, no chat
template) and "schema" (a JSON Schema: type, properties, required, items, enum). The first
`limit` prompts in file order are used.

Extraction rule: the output's first JSON value starting at its first "{" or "[" (text before it,
such as a ```json fence, and after it is ignored), decoded with `json.JSONDecoder.raw_decode`.
`json_valid_fraction` counts outputs where that decodes; `json_schema_fraction` those whose
value also validates against the prompt's schema (jsonschema, the schema's own draft).
The generations are stored in the `generations` table, beside the prompt set's.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.generate import encode, greedy

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "json_prompts.jsonl"
EXTRACTION = "first JSON value from the first { or [; surrounding text ignored"
_START = re.compile(r"[\[{]")
_NOT_FOUND = object()


def read_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit is not None else rows


def extract_json(text: str) -> Any:
    """The first JSON value in `text` under the extraction rule, or `_NOT_FOUND`."""
    start = _START.search(text)     # the first opening bracket decides: a later one could hide a broken object
    if start is None:
        return _NOT_FOUND
    try:
        return json.JSONDecoder().raw_decode(text, start.start())[0]
    except json.JSONDecodeError:
        return _NOT_FOUND


def check(text: str, schema: dict[str, Any]) -> tuple[bool, bool]:
    """(parses as JSON, satisfies `schema`) for one output."""
    import jsonschema

    value = extract_json(text)
    if value is _NOT_FOUND:
        return False, False
    validator = jsonschema.validators.validator_for(schema)(schema)
    return True, validator.is_valid(value)


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    max_new = int(settings["max_new_tokens"])
    rows = read_prompts(settings.get("limit"))
    outputs = greedy(engine, [encode(engine, r["prompt"]) for r in rows], max_new)
    checks = [check(o.text, r["schema"]) for o, r in zip(outputs, rows)]
    common = dict(prompts=len(rows), max_new_tokens=max_new, extraction=EXTRACTION, decoding="greedy",
                  chat_template=False, prompt_set=PROMPTS.name,
                  sha256=hashlib.sha256(PROMPTS.read_bytes()).hexdigest()[:16], engine=engine.name,
                  compute_dtype=engine.compute_dtype, kv_cache_dtype=engine.kv_cache_dtype)
    row_settings = json.dumps({**common, "evaluator": "json_output"}, sort_keys=True)
    table = [{"prompt_id": f"json:{r['id']}", "prompt": r["prompt"], "output": o.text, "output_tokens": o.tokens,
              "seconds": None, "settings": row_settings} for o, r in zip(outputs, rows)]
    return Evaluation([
        Metric.of("json_valid_fraction", sum(v for v, _ in checks) / len(rows), "fraction", "higher", **common),
        Metric.of("json_schema_fraction", sum(s for _, s in checks) / len(rows), "fraction", "higher", **common),
    ], {"generations": table})
