"""The artifact cache: one quantized checkpoint per artifact key, built once, with a manifest.

Concurrent builders of one key serialise on a lock file; the checkpoint is written to a
temporary folder and renamed into place, so a reader never sees half of one.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs.corpora import load_corpus
from jobs.filelock import file_lock
from jobs.models import cache_root, materialize
from jobs.quantize import get_backend
from jobs.versions import library_versions
from matrix import Cell

MANIFEST = "quantmatrix-manifest.json"
BUILD_LOG = "builds.jsonl"   # one line per quantizer run: proves quantize-once


def artifacts_dir() -> Path:
    return cache_root() / "artifacts"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ensure_artifact(cell: Cell) -> dict[str, Any]:
    """The manifest of `cell`'s weights; quantizes them first if no worker has yet."""
    backend = get_backend(cell.backend)
    base = materialize(cell.model, cell.revision)
    if not backend.writes_artifact:
        return {"artifact_key": cell.artifact_key, "path": base, "format": backend.format,
                "quantize_seconds": None, "built": False}
    out = artifacts_dir() / cell.artifact_key
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        return {**json.loads(manifest_path.read_text()), "built": False}   # reused, not built here
    with file_lock(artifacts_dir() / f"{cell.artifact_key}.lock"):
        if manifest_path.is_file():     # another worker finished it while we waited
            return {**json.loads(manifest_path.read_text()), "built": False}
        tmp = Path(tempfile.mkdtemp(dir=artifacts_dir(), prefix=f".{cell.artifact_key}-"))
        try:
            calib = dict(cell.calibration or ())
            texts = load_corpus(calib["corpus"]) if "corpus" in calib else []
            start = time.perf_counter()
            facts = backend.quantize(cell, base, tmp, texts)
            seconds = time.perf_counter() - start
            manifest = {
                "artifact_key": cell.artifact_key, "path": str(out), "format": backend.format,
                "model": cell.model, "revision": cell.revision, "method": cell.method, "backend": cell.backend,
                "bits": cell.bits, "group_size": cell.group_size, "options": dict(cell.options),
                "calibration": calib, "quantize_seconds": seconds, "size_bytes": _dir_bytes(tmp),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "library_versions": library_versions(backend.libraries), "host": socket.gethostname(),
                "built": True, **facts,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with open(artifacts_dir() / BUILD_LOG, "a") as log:
            log.write(json.dumps({"artifact_key": cell.artifact_key, "pid": os.getpid(),
                                  "seconds": seconds}) + "\n")
        return manifest


def build_count(artifact_key: str) -> int:
    log = artifacts_dir() / BUILD_LOG
    if not log.is_file():
        return 0
    return sum(json.loads(line)["artifact_key"] == artifact_key for line in log.read_text().splitlines())
