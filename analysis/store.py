"""The results store: Parquet files under `<results>/<table>/sweep=<name>/`.

Each finished cell attempt writes three files, `cells`, `metrics`, then `runs`: each to a
temporary name and renamed into place, `runs` last, so a `runs` row means the cell's other
rows are complete. A cell is finished when it has a `runs` row with status ok or skipped;
reruns skip it, and failed cells get a new attempt.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TABLES = ("cells", "runs", "metrics")
FINISHED = ("ok", "skipped")

CELLS_SCHEMA = pa.schema([
    ("cell_id", pa.string()), ("artifact_key", pa.string()), ("label", pa.string()),
    ("model", pa.string()), ("revision", pa.string()), ("method", pa.string()), ("backend", pa.string()),
    ("bits", pa.int32()), ("group_size", pa.int32()), ("options", pa.string()),
    ("kv_cache_dtype", pa.string()), ("engine", pa.string()), ("calibration", pa.string()),
    ("evaluation", pa.string()), ("tensor_parallel_size", pa.int32()), ("is_baseline", pa.bool_()),
])
RUNS_SCHEMA = pa.schema([
    ("cell_id", pa.string()), ("attempt", pa.int32()), ("status", pa.string()), ("reason", pa.string()),
    ("error", pa.string()), ("started_at", pa.timestamp("ms", tz="UTC")), ("seconds", pa.float64()),
    ("host", pa.string()), ("node_id", pa.string()), ("gpu_ids", pa.string()), ("device", pa.string()),
    ("compute_dtype", pa.string()), ("format", pa.string()),
    ("library_versions", pa.string()), ("notes", pa.string()), ("schema_version", pa.int32()),
])
METRICS_SCHEMA = pa.schema([
    ("cell_id", pa.string()), ("attempt", pa.int32()), ("metric", pa.string()), ("value", pa.float64()),
    ("unit", pa.string()), ("direction", pa.string()), ("settings", pa.string()),
])
SCHEMAS = {"cells": CELLS_SCHEMA, "runs": RUNS_SCHEMA, "metrics": METRICS_SCHEMA}


def cell_row(cell) -> dict[str, Any]:
    d = cell.dims()
    return {
        "cell_id": cell.cell_id, "artifact_key": cell.artifact_key, "label": cell.label,
        "model": cell.model, "revision": cell.revision, "method": cell.method, "backend": cell.backend,
        "bits": cell.bits, "group_size": cell.group_size, "options": json.dumps(d["options"], sort_keys=True),
        "kv_cache_dtype": cell.kv_cache_dtype, "engine": cell.engine,
        "calibration": json.dumps(d["calibration"], sort_keys=True), "evaluation": cell.evaluation,
        "tensor_parallel_size": cell.tensor_parallel_size, "is_baseline": cell.is_baseline,
    }


class ResultStore:
    """One sweep's partition of the store. The index of recorded runs is read once, then kept
    up to date by `record`, so the driver's per-cell bookkeeping never rereads the folder."""

    def __init__(self, root: str | Path, sweep: str):
        self.root, self.sweep = Path(root), sweep
        self._index: dict[str, list[dict[str, Any]]] | None = None

    def _dir(self, table: str) -> Path:
        return Path(self.root) / table / f"sweep={self.sweep}"

    def _write(self, table: str, name: str, rows: pa.Table) -> None:
        folder = self._dir(table)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(rows.cast(SCHEMAS[table]), tmp)
        os.replace(tmp, folder / f"{name}.parquet")     # atomic on one filesystem

    def attempts(self) -> dict[str, list[dict[str, Any]]]:
        """Every recorded run per cell id (read with pyarrow: no DuckDB needed on the driver)."""
        if self._index is None:
            folder = self._dir("runs")
            self._index = {}
            for f in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
                for row in pq.read_table(f, columns=["cell_id", "attempt", "status"]).to_pylist():
                    self._index.setdefault(row["cell_id"], []).append(row)
        return self._index

    def finished_cell_ids(self) -> set[str]:
        return {cid for cid, runs in self.attempts().items() if any(r["status"] in FINISHED for r in runs)}

    def next_attempt(self, cell_id: str) -> int:
        return 1 + max((r["attempt"] for r in self.attempts().get(cell_id, [])), default=0)

    def record(self, cell, attempt: int, run: dict[str, Any], metrics: pa.Table | None = None) -> None:
        """Write one finished attempt of `cell`: cells, metrics, then runs (the commit point)."""
        name = f"{cell.cell_id}-a{attempt}"
        self._write("cells", name, pa.Table.from_pylist([cell_row(cell)], schema=CELLS_SCHEMA))
        if metrics is not None and metrics.num_rows:
            n = metrics.num_rows
            full = metrics.append_column("cell_id", pa.array([cell.cell_id] * n)) \
                          .append_column("attempt", pa.array([attempt] * n, pa.int32()))
            self._write("metrics", name, full.select(METRICS_SCHEMA.names))
        row = {name_: None for name_ in RUNS_SCHEMA.names} | run | {
            "cell_id": cell.cell_id, "attempt": attempt, "schema_version": SCHEMA_VERSION}
        self._write("runs", name, pa.Table.from_pylist([row], schema=RUNS_SCHEMA))
        self.attempts().setdefault(cell.cell_id, []).append(
            {"cell_id": cell.cell_id, "attempt": attempt, "status": row["status"]})
