"""The results contract: what a cell returns and the store keeps, shared by jobs (which write it)
and analysis (which reads it) without either importing the other.

`Metric` is one measured figure with its unit, its better direction and the settings it was
measured under; `METRIC_SCHEMA` is its Arrow row; `TABLE_SCHEMAS` are the row tables a cell may
return beside its metrics (the store adds `cell_id` and `attempt` to each). `Manifest` (a cell's
weights), `RunFacts` (an attempt's runs row) and `CellOutcome` are the typed records that cross the
Ray boundary between a worker and the driver.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping

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
    # one row per linear layer: its output error against the baseline's (jobs.evaluate.layer_sensitivity)
    "layer_sensitivity": pa.schema([
        ("layer", pa.string()), ("layer_index", pa.int32()), ("kind", pa.string()), ("module", pa.string()),
        ("params", pa.int64()), ("bits", pa.int32()), ("kept", pa.bool_()), ("rel_error", pa.float64()),
        ("settings", pa.string()),
    ]),
}

# one row of the metrics table (the store adds cell_id and attempt)
METRIC_SCHEMA = pa.schema([
    ("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("direction", pa.string()), ("settings", pa.string()),
])


@dataclass(frozen=True)
class Manifest:
    """What a cell's weights are and how they were made: built by jobs.artifacts (and kept beside a built
    artifact as JSON), read by the engines and the driver. The build fields stay None for weights not
    built here (the base model, load-time methods, published checkpoints)."""
    artifact_key: str
    path: str                                   # what the engine loads
    format: str
    quantize_seconds: float | None = None       # None: quantized at load, or published weights
    built: bool = False                         # True only for the caller that ran the quantizer
    model: str | None = None
    revision: str | None = None
    base_path: str | None = None
    method: str | None = None
    backend: str | None = None
    bits: int | None = None
    group_size: int | None = None
    options: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    size_bytes: int | None = None
    weights_bytes: int | None = None
    base_weights_bytes: int | None = None
    rss_at_start_bytes: int | None = None
    peak_rss_kind: str | None = None
    peak_rss_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    library_versions: dict[str, str] | None = None
    host: str | None = None
    built_at: str | None = None
    scheme: str | None = None                   # the backend's words for what it wrote
    device: str | None = None                   # where the quantizer ran
    checkpoint: str | None = None               # a published checkpoint's folder
    quantization_config: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    # facts only one backend reports (e.g. gptqmodel's CPU pool size): kept as it said them, not dropped
    backend_facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, facts: Mapping[str, Any]) -> "Manifest":
        """From a JSON manifest or a backend's facts; keys without a field go to `backend_facts`."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in facts.items() if k in names and k != "backend_facts"}
        extra = {**facts.get("backend_facts", {}), **{k: v for k, v in facts.items() if k not in names}}
        known["notes"] = tuple(known.get("notes") or ())
        return cls(**known, backend_facts=extra)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "notes": list(self.notes)}


@dataclass(frozen=True)
class RunFacts:
    """One attempt's row of the runs table, less the keys the store adds (cell_id, attempt,
    schema_version): every field is a column there (tests/test_store.py holds the two equal; the store
    refuses a fact without a column). A cell's job fills what it knows of itself; the driver adds the
    status, when it started and where Ray placed it."""
    status: str = "ok"                           # ok | failed | skipped
    reason: str | None = None                    # one line: why it failed or was skipped
    error: str | None = None                     # the full error of a failed attempt
    started_at: Any = None                       # a timezone-aware datetime
    seconds: float | None = None
    host: str | None = None
    node_id: str | None = None
    gpu_ids: str | None = None                   # comma-separated, as Ray pinned them
    device: str | None = None
    compute_dtype: str | None = None
    threads: int | None = None                   # torch's intra-op threads
    format: str | None = None
    library_versions: str | None = None          # JSON: distribution -> version
    notes: str | None = None

    @classmethod
    def of(cls, facts: Mapping[str, Any]) -> "RunFacts":
        """From a mapping; a key that is no field (so no runs column) is an error, never dropped."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(facts) - set(names))
        if unknown:
            raise ValueError(f"run fact {unknown[0]!r} has no column in the runs table; known: {', '.join(names)}")
        return cls(**facts)

    def row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CellOutcome:
    """What a finished cell's job returns to the driver."""
    metrics: pa.Table                # METRIC_SCHEMA
    facts: RunFacts                  # host, device, versions, timings, notes
    tables: dict[str, pa.Table] = field(default_factory=dict)   # TABLE_SCHEMAS, non-empty only
