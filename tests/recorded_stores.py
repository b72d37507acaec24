"""Results stores written through the real writer (ResultStore.record: Parquet, then DuckDB reads them),
for the tests of what is built from a store (publish). Figures are chosen, not measured: each cell's
perplexity order differs from its decode-speed order, so a sort by either changes the rows."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from analysis.store import ResultStore
from matrix import Cell
from matrix.results import METRIC_SCHEMA

PERPLEXITY = {"corpus": "evals-wikipedia", "context": 128, "stride": 128, "tokens": 256}
SPEED = {"batch": 1, "prompt_tokens": 8, "new_tokens": 8, "repeats": 1, "device": "cpu", "engine": "hf"}
SERVED = {"requests": 20, "prompt_tokens": 16, "output_tokens": 8, "request_rate": None, "sla_ttft_ms": 500.0,
          "sla_tpot_ms": 50.0, "server_batching": "static"}
# label -> (method, backend, bits, group size, perplexity, decode tok/s, weight MiB, TTFT p95 at c=1)
CELLS = {
    "bf16": ("none", "none", 16, None, 20.0, 30.0, 256.0, 40.0),
    "int8 w8": ("int8", "bitsandbytes", 8, None, 20.2, 12.0, 155.0, 90.0),
    "nf4 w4": ("nf4", "bitsandbytes", 4, None, 21.5, 25.0, 105.0, 55.0),
    "gptq w4 g64": ("gptq", "llmcompressor", 4, 64, 22.8, 28.0, 108.0, 45.0),
}


def cell(model: str, method: str, backend: str, bits: int, group_size: int | None) -> Cell:
    return Cell(model=model, revision=None, method=method, backend=backend, bits=bits, group_size=group_size,
                options=(), kv_cache_dtype="auto", engine="hf", calibration=None, evaluation="{}")


def _metric(name: str, value: float, unit: str, direction: str, settings: dict) -> dict:
    return {"metric": name, "value": value, "unit": unit, "direction": direction,
            "settings": json.dumps(settings, sort_keys=True)}


def _metrics(ppl: float, decode: float, mib: float, ttft_p95: float) -> pa.Table:
    rows = [_metric("perplexity", ppl, "ppl", "lower", PERPLEXITY),
            _metric("decode_tokens_per_s", decode, "tok/s", "higher", SPEED),
            _metric("ttft_ms", 1000 / decode, "ms", "lower", SPEED),
            _metric("weight_bytes", mib * 2**20, "bytes", "lower", {})]
    for concurrency, slower in ((1, 1.0), (4, 2.5)):
        at = SERVED | {"concurrency": concurrency}
        rows += [_metric("serving_ttft_ms_p95", ttft_p95 * slower, "ms", "lower", at),
                 _metric("serving_tpot_ms_p95", 1000 / decode * slower, "ms", "lower", at),
                 _metric("serving_request_throughput", concurrency * decode / 10, "req/s", "higher", at),
                 _metric("serving_requests_ok", 20, "requests", "higher", at)]
    return pa.Table.from_pylist(rows, schema=METRIC_SCHEMA)


def record_store(root: Path, model: str = "m", sweep: str = "s", skip_reason: str = "group size 128 does not divide "
                 "576", error: str = "RuntimeError: fp4 kernel missing") -> ResultStore:
    """Four measured cells of `model`, one skipped by the rules and one that failed."""
    store = ResultStore(root, sweep)
    started = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    run = {"status": "ok", "started_at": started, "seconds": 3.0, "host": "box", "device": "cpu (x86_64)",
           "library_versions": json.dumps({"quantmatrix": "0.1.0 (commit abc1234)", "transformers": "5.17.0",
                                           "torch": "2.13.0"})}
    for method, backend, bits, group, ppl, decode, mib, ttft in CELLS.values():
        store.record(cell(model, method, backend, bits, group), 1, run, _metrics(ppl, decode, mib, ttft))
    store.record(cell(model, "gptq", "llmcompressor", 4, 128), 1, {"status": "skipped", "reason": skip_reason})
    store.record(cell(model, "fp4", "bitsandbytes", 4, None), 1, run | {"status": "failed", "error": error})
    return store
