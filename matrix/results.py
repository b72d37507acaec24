"""The results contract: what a cell returns and the store keeps, shared by jobs (which write it)
and analysis (which reads it) without either importing the other.

`Metric` is one measured figure with its unit, its better direction and the settings it was
measured under; `METRIC_SCHEMA` is its Arrow row; `TABLE_SCHEMAS` are the row tables a cell may
return beside its metrics (the store adds `cell_id` and `attempt` to each).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str
    direction: Literal["lower", "higher", "none"]   # which way is better
    settings: str = "{}"                             # canonical JSON: what makes two values comparable

    @staticmethod
    def of(name: str, value: float, unit: str, direction: str, **settings: Any) -> "Metric":
        return Metric(name, float(value), unit, direction, json.dumps(settings, sort_keys=True))


# Row tables an evaluator may return beside its metrics (the store adds cell_id and attempt).
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    # one row per request of a served-latency run
    "samples": pa.schema([
        ("concurrency", pa.int32()), ("request_rate", pa.float64()), ("request", pa.int32()),
        ("ok", pa.bool_()), ("prompt_tokens", pa.int32()), ("output_tokens", pa.int32()),
        ("ttft_ms", pa.float64()), ("tpot_ms", pa.float64()), ("itl_ms_mean", pa.float64()),
        ("e2e_ms", pa.float64()), ("error", pa.string()),
    ]),
    # one row per prompt of the user's prompt set
    "generations": pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("output", pa.string()),
        ("output_tokens", pa.int32()), ("seconds", pa.float64()), ("settings", pa.string()),
    ]),
}

# one row of the metrics table (the store adds cell_id and attempt)
METRIC_SCHEMA = pa.schema([
    ("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("direction", pa.string()), ("settings", pa.string()),
])
