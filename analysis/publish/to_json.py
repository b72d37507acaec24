"""leaderboard.json: the whole results model (rows, serving, skipped, failed, provenance, recommendation)."""
from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from typing import Any

from analysis.publish.model import PublishedResults


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):        # pydantic (the gates)
        return _plain(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return None          # JSON has no NaN or infinity
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)        # timestamps and the like


def document(m: PublishedResults) -> dict[str, Any]:
    """The model as plain JSON values; markdown is left out (it is leaderboard.md)."""
    out = _plain(m)
    out.pop("markdown")
    for rec, plain in zip(m.recommendations, out["recommendations"]):    # properties, not fields: named here
        plain["chosen"] = _plain(rec.chosen)
        plain["runner_up"] = _plain(rec.runner_up)
    return out


def render(m: PublishedResults) -> str:
    return json.dumps(document(m), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
