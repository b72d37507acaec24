"""The results store: Parquet files under `<results>/<table>/sweep=<name>/`.

Each finished cell attempt writes `cells`, its row tables (`metrics`, `samples`, `generations`:
those it has), then `runs`, the commit point: a `runs` row means the cell's other rows are
complete. A cell is finished when it has a `runs` row with status ok or skipped; reruns skip it,
and failed cells get a new attempt.

The root is a local path or a URI of a pyarrow filesystem (`file:///...`, `s3://bucket/prefix`,
`gs://bucket/prefix`), so several hosts can share one store. Where the filesystem can rename,
each file is written to a temporary name and renamed into place; on object stores a single
object PUT is already all-or-nothing, so files are written in place.

Several writers (sweeps, hosts) may share one store: a writer claims each cell's attempt before
working on it (`analysis.claims`, under `<results>/claims/`, which no table glob reads), so no
cell is computed by two live writers and no two writers write the same file.
"""
from __future__ import annotations

import contextlib
import json
import re
import uuid
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.claims import CLAIM_TIMEOUT_S, Claims
from matrix.results import METRIC_SCHEMA, TABLE_SCHEMAS, RunFacts

SCHEMA_VERSION = 4          # 2: the samples and generations tables; 3: runs.threads; 4: the caveats table
ROW_TABLES = tuple(TABLE_SCHEMAS)      # extra row tables a cell may return (matrix.results)
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
    ("threads", pa.int32()),        # added in 3: older files read it as null (union_by_name, _conform)
])
_RUN_KEYS = ("cell_id", "attempt", "schema_version")      # the store's own runs columns; the rest are RunFacts
METRICS_SCHEMA = pa.schema([("cell_id", pa.string()), ("attempt", pa.int32()), *METRIC_SCHEMA])
_KEYS = pa.schema([("cell_id", pa.string()), ("attempt", pa.int32())])
# a reason not to trust some figures, noted after they were measured (analysis.caveats): one row per figure,
# one file per caveat; not a cell's table, so neither `record` nor `compact` touches it
CAVEATS = "caveats"
CAVEATS_SCHEMA = pa.schema([
    ("caveat_id", pa.string()), ("cell_id", pa.string()), ("attempt", pa.int32()), ("metric", pa.string()),
    ("settings", pa.string()), ("reason", pa.string()), ("selection", pa.string()),
    ("noted_at", pa.timestamp("ms", tz="UTC")),
])
SCHEMAS = {"cells": CELLS_SCHEMA, "runs": RUNS_SCHEMA, "metrics": METRICS_SCHEMA,
           **{name: pa.schema([*_KEYS, *schema]) for name, schema in TABLE_SCHEMAS.items()},
           CAVEATS: CAVEATS_SCHEMA}
_OBJECT_STORES = {"s3", "gcs", "abfs"}     # no rename; one PUT per object is atomic
_TMP_NAME = re.compile(r"^\.(?P<cell>[0-9a-f]+)-a(?P<attempt>\d+)\.[0-9a-f]+\.tmp$")     # see _write


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
        # base+adapter for a fine-tuned model: its quantized cells pair with its own baseline, not the base's
        "model": cell.model_name, "revision": cell.revision, "method": cell.method, "backend": cell.backend,
        "bits": cell.bits, "group_size": cell.group_size, "options": json.dumps(d["options"], sort_keys=True),
        "kv_cache_dtype": cell.kv_cache_dtype, "engine": cell.engine,
        "calibration": json.dumps(d["calibration"], sort_keys=True), "evaluation": cell.evaluation,
        "tensor_parallel_size": cell.tensor_parallel_size, "is_baseline": cell.is_baseline,
    }


class ResultStore:
    """One sweep's partition of the store. The index of recorded runs is read once, then kept
    up to date by `record`, so the driver's per-cell bookkeeping never rereads the folder."""

    def __init__(self, root: str | Path, sweep: str, claim_timeout_s: float = CLAIM_TIMEOUT_S):
        self.root, self.sweep = root, sweep
        self.fs, self.base = open_root(root)
        self._atomic_rename = self.fs.type_name not in _OBJECT_STORES
        self._made: set[str] = set()
        self._index: dict[str, list[dict[str, Any]]] | None = None
        self._leftovers: dict[str, list[tuple[int, str]]] | None = None
        self.claims = Claims(self.fs, self.base, sweep, isinstance(self.fs, pafs.LocalFileSystem), claim_timeout_s)

    def check_writable(self) -> None:
        """Raise StoreNotWritable (one line) unless a file can be created in the store: a real probe
        write, since permission bits say nothing to root, nor about read-only mounts or object stores."""
        probe = f"{self.claims.folder}/.probe-{uuid.uuid4().hex}"
        try:
            self.fs.create_dir(self.claims.folder, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"qmx")
            self.fs.delete_file(probe)
        except OSError as e:
            detail = " ".join(str(e).split())[:200]
            raise StoreNotWritable(f"results store {self.root} is not writable: {type(e).__name__}: {detail}") from None

    def _dir(self, table: str) -> str:
        return f"{self.base.rstrip('/')}/{table}/sweep={self.sweep}"

    def _write(self, table: str, name: str, rows: pa.Table) -> str:
        """Write `rows` as the table's file `name`; returns its path."""
        folder = self._dir(table)
        if folder not in self._made:
            self.fs.create_dir(folder, recursive=True)
            self._made.add(folder)
        final = f"{folder}/{name}.parquet"
        if not self._atomic_rename:
            pq.write_table(rows.cast(SCHEMAS[table]), final, filesystem=self.fs)
            return final
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            pq.write_table(rows.cast(SCHEMAS[table]), tmp, filesystem=self.fs)
            self.fs.move(tmp, final)            # a rename: atomic on one filesystem
        except BaseException:
            _remove_quietly(self.fs, tmp)       # no partial files, even on Ctrl-C mid-write
            raise
        return final

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

    def is_finished(self, cell_id: str) -> bool:
        return any(r["status"] in FINISHED for r in self.attempts().get(cell_id, []))

    def next_attempt(self, cell_id: str) -> int:
        return 1 + max((r["attempt"] for r in self.attempts().get(cell_id, [])), default=0)

    def claim(self, cell_id: str) -> int | None:
        """Claim the cell's next attempt for this writer (inside `claims.owning()`): its number, or None
        while another live writer holds the cell, or when another writer has finished it (then
        `is_finished`). A stale or released claim is taken over, after reading what it committed."""
        top = self.claims.top(cell_id)
        if top is not None and top.run != self.claims.run:
            if self.claims.live(top):
                return None
            self._reread(cell_id, top.attempt)      # it may have committed before it let go, or died
            if self.is_finished(cell_id):
                return None
            if not top.released:
                self._remove_leftovers(cell_id, top.attempt)
        attempt = max(top.attempt if top else 0, self.next_attempt(cell_id) - 1) + 1
        return attempt if self.claims.create(cell_id, attempt) else None

    def release(self, cell_id: str, attempt: int) -> None:
        self.claims.release(cell_id, attempt)

    def _remove_leftovers(self, cell_id: str, upto: int) -> None:
        """Delete the temporary files a dead writer left of the cell's attempts (no reader sees them, but
        they are clutter). The table folders are listed once, at the first takeover."""
        if not self._atomic_rename:
            return
        if self._leftovers is None:
            self._leftovers = {}
            for table in TABLES:
                for f in self.fs.get_file_info(pafs.FileSelector(self._dir(table), allow_not_found=True)):
                    if m := _TMP_NAME.match(f.base_name):
                        self._leftovers.setdefault(m["cell"], []).append((int(m["attempt"]), f.path))
        for attempt, path in self._leftovers.pop(cell_id, []):
            if attempt <= upto:
                _remove_quietly(self.fs, path)

    def _reread(self, cell_id: str, attempt: int) -> None:
        """Fold another writer's committed runs row of this attempt into the index."""
        known = {r["attempt"] for r in self.attempts().get(cell_id, [])}
        path = f"{self._dir('runs')}/{cell_id}-a{attempt}.parquet"
        if attempt in known or self.fs.get_file_info(path).type != pafs.FileType.File:
            return
        for row in pq.read_table(path, columns=["cell_id", "attempt", "status"], filesystem=self.fs).to_pylist():
            self.attempts().setdefault(cell_id, []).append(row)

    def record(self, cell, attempt: int, run: RunFacts | Mapping[str, Any], metrics: pa.Table | None = None,
               tables: dict[str, pa.Table] | None = None) -> None:
        """Write one finished attempt of `cell`: cells, metrics and row tables, then runs (the commit point).
        A fact the runs table has no column for raises (ValueError) before anything is written."""
        facts = (run if isinstance(run, RunFacts) else RunFacts.of(run)).row()
        lost = [k for k in facts if k not in RUNS_SCHEMA.names or k in _RUN_KEYS]
        if lost:
            raise ValueError(f"run fact {lost[0]!r} has no column in the runs table")
        name = f"{cell.cell_id}-a{attempt}"
        self._write("cells", name, pa.Table.from_pylist([cell_row(cell)], schema=CELLS_SCHEMA))
        for table, rows in {"metrics": metrics, **(tables or {})}.items():
            if rows is None or not rows.num_rows:
                continue
            if table not in ("metrics", *ROW_TABLES):
                raise KeyError(f"unknown results table {table!r}; known: {', '.join(('metrics',) + ROW_TABLES)}")
            self._write(table, name, _with_keys(rows, cell.cell_id, attempt).select(SCHEMAS[table].names))
        row = {name_: None for name_ in RUNS_SCHEMA.names} | facts | {
            "cell_id": cell.cell_id, "attempt": attempt, "schema_version": SCHEMA_VERSION}
        self._write("runs", name, pa.Table.from_pylist([row], schema=RUNS_SCHEMA))
        self.attempts().setdefault(cell.cell_id, []).append(
            {"cell_id": cell.cell_id, "attempt": attempt, "status": row["status"]})


    def add_caveat(self, caveat_id: str, rows: pa.Table) -> str:
        """Write one caveat's rows (`CAVEATS_SCHEMA`, one per figure it covers); returns the file's path."""
        return self._write(CAVEATS, caveat_id, rows)

    def compact(self) -> dict[str, int]:
        """Merge the sweep's per-attempt files into one file per table: a reader opens every file on each
        query, so thousands of small files cost seconds (benchmarks/query_bench.py). Each cell attempt's
        rows are taken from one file only, so a compaction that died between its write and its deletes
        leaves no duplicate behind the next one. Refused while another sweep writes this partition; a
        reader that listed the files before the deletes fails once and must be rerun."""
        busy = self.claims.live_owners()
        if busy:
            raise StoreBusy(f"sweep {self.sweep!r} is being written by {', '.join(busy)}: compact it when that ends")
        merged: dict[str, int] = {}
        for table in TABLES:
            sel = pafs.FileSelector(self._dir(table), allow_not_found=True)
            files = sorted(f.path for f in self.fs.get_file_info(sel) if f.type == pafs.FileType.File
                           and f.base_name.endswith(".parquet") and not f.base_name.startswith("."))
            if len(files) < 2:
                continue
            parts, seen = [], set()
            for path in files:
                rows = _conform(pq.read_table(path, filesystem=self.fs), SCHEMAS[table])
                # a cell attempt's key; `cells` rows carry no attempt (any attempt's row describes the cell)
                keys = list(zip(*(rows.column(k).to_pylist() for k in ("cell_id", "attempt") if k in rows.column_names)))
                fresh = [k not in seen for k in keys]
                seen.update(keys)
                parts.append(rows.filter(pa.array(fresh, pa.bool_())))
            self._write(table, f"compact-{uuid.uuid4().hex[:12]}", pa.concat_tables(parts))
            for path in files:
                _remove_quietly(self.fs, path)
            merged[table] = len(files)
        return merged


class StoreBusy(RuntimeError):
    """Another sweep is writing the partition a maintenance step would rewrite."""


class StoreNotWritable(OSError):
    """The results store cannot be written (checked before any work starts)."""


def _with_keys(rows: pa.Table, cell_id: str, attempt: int) -> pa.Table:
    n = rows.num_rows
    for col in ("cell_id", "attempt"):
        if col in rows.column_names:
            rows = rows.drop_columns([col])
    return rows.append_column("cell_id", pa.array([cell_id] * n, pa.string())) \
               .append_column("attempt", pa.array([attempt] * n, pa.int32()))


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` in `schema`: columns an older file lacks become nulls, columns the schema dropped go."""
    cols = [rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):     # FileNotFoundError included: already gone is fine
        fs.delete_file(path)
