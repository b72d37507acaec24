"""The results store: Parquet files under `<results>/<table>/sweep=<name>/`.

Each finished cell attempt writes `cells`, its row tables (`metrics`, `samples`, `generations`:
those it has), then `runs`, the commit point: a `runs` row means the cell's other rows are
complete. A cell is finished when it has a `runs` row with status ok or skipped; reruns skip it,
and failed cells get a new attempt.

The root is a local path or a URI of a pyarrow filesystem (`file:///...`, `s3://bucket/prefix`,
`gs://bucket/prefix`), so several hosts can share one store. Where the filesystem can rename,
each file is written to a temporary name and renamed into place; on object stores a single
object PUT is already all-or-nothing, so files are written in place.
"""
from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.evaluate import TABLE_SCHEMAS

SCHEMA_VERSION = 2          # 2: the samples and generations tables
ROW_TABLES = tuple(TABLE_SCHEMAS)      # extra row tables a cell may return (jobs.evaluate)
TABLES = ("cells", "runs", "metrics", *ROW_TABLES)
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
_KEYS = pa.schema([("cell_id", pa.string()), ("attempt", pa.int32())])
SCHEMAS = {"cells": CELLS_SCHEMA, "runs": RUNS_SCHEMA, "metrics": METRICS_SCHEMA,
           **{name: pa.schema([*_KEYS, *schema]) for name, schema in TABLE_SCHEMAS.items()}}
_OBJECT_STORES = {"s3", "gcs", "abfs"}     # no rename; one PUT per object is atomic


def open_root(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of a store root: a local path, or a pyarrow filesystem URI."""
    text = str(root)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    if text.startswith("file:"):       # `file:///x` after a pathlib round trip reads `file:/x`
        text = text.removeprefix("file:")
    return pafs.LocalFileSystem(), str(Path(text).resolve())


def local_path(root: str | Path) -> Path | None:
    """The root as a local folder, or None when it lives on an object store."""
    fs, base = open_root(root)
    return Path(base) if isinstance(fs, pafs.LocalFileSystem) else None


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
        self.root, self.sweep = root, sweep
        self.fs, self.base = open_root(root)
        self._atomic_rename = self.fs.type_name not in _OBJECT_STORES
        self._made: set[str] = set()
        self._index: dict[str, list[dict[str, Any]]] | None = None

    def _dir(self, table: str) -> str:
        return f"{self.base.rstrip('/')}/{table}/sweep={self.sweep}"

    def _write(self, table: str, name: str, rows: pa.Table) -> None:
        folder = self._dir(table)
        if folder not in self._made:
            self.fs.create_dir(folder, recursive=True)
            self._made.add(folder)
        final = f"{folder}/{name}.parquet"
        if not self._atomic_rename:
            pq.write_table(rows.cast(SCHEMAS[table]), final, filesystem=self.fs)
            return
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(rows.cast(SCHEMAS[table]), tmp, filesystem=self.fs)
            self.fs.move(tmp, final)            # a rename: atomic on one filesystem
        except BaseException:
            _remove_quietly(self.fs, tmp)       # no partial files, even on Ctrl-C mid-write
            raise

    def attempts(self) -> dict[str, list[dict[str, Any]]]:
        """Every recorded run per cell id (read with pyarrow: no DuckDB needed on the driver)."""
        if self._index is None:
            self._index = {}
            selector = pafs.FileSelector(self._dir("runs"), allow_not_found=True)
            files = sorted(f.path for f in self.fs.get_file_info(selector)
                           if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                           and not f.base_name.startswith("."))
            for f in files:
                for row in pq.read_table(f, columns=["cell_id", "attempt", "status"], filesystem=self.fs).to_pylist():
                    self._index.setdefault(row["cell_id"], []).append(row)
        return self._index

    def finished_cell_ids(self) -> set[str]:
        return {cid for cid, runs in self.attempts().items() if any(r["status"] in FINISHED for r in runs)}

    def next_attempt(self, cell_id: str) -> int:
        return 1 + max((r["attempt"] for r in self.attempts().get(cell_id, [])), default=0)

    def record(self, cell, attempt: int, run: dict[str, Any], metrics: pa.Table | None = None,
               tables: dict[str, pa.Table] | None = None) -> None:
        """Write one finished attempt of `cell`: cells, metrics and row tables, then runs (the commit point)."""
        name = f"{cell.cell_id}-a{attempt}"
        self._write("cells", name, pa.Table.from_pylist([cell_row(cell)], schema=CELLS_SCHEMA))
        for table, rows in {"metrics": metrics, **(tables or {})}.items():
            if rows is None or not rows.num_rows:
                continue
            if table not in SCHEMAS or table in ("cells", "runs"):
                raise KeyError(f"unknown results table {table!r}; known: {', '.join(('metrics',) + ROW_TABLES)}")
            self._write(table, name, _with_keys(rows, cell.cell_id, attempt).select(SCHEMAS[table].names))
        row = {name_: None for name_ in RUNS_SCHEMA.names} | run | {
            "cell_id": cell.cell_id, "attempt": attempt, "schema_version": SCHEMA_VERSION}
        row = {k: row[k] for k in RUNS_SCHEMA.names}       # facts the schema has no column for stay out
        self._write("runs", name, pa.Table.from_pylist([row], schema=RUNS_SCHEMA))
        self.attempts().setdefault(cell.cell_id, []).append(
            {"cell_id": cell.cell_id, "attempt": attempt, "status": row["status"]})


def _with_keys(rows: pa.Table, cell_id: str, attempt: int) -> pa.Table:
    n = rows.num_rows
    for col in ("cell_id", "attempt"):
        if col in rows.column_names:
            rows = rows.drop_columns([col])
    return rows.append_column("cell_id", pa.array([cell_id] * n, pa.string())) \
               .append_column("attempt", pa.array([attempt] * n, pa.int32()))


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):     # FileNotFoundError included: already gone is fine
        fs.delete_file(path)
