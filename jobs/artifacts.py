"""The artifact cache: one quantized checkpoint per artifact key, built once, with a manifest.

Concurrent builders of one key serialise on a lock file; the checkpoint is written to a
temporary folder and renamed into place, so a reader never sees half of one. The manifest says
what was built and how: format (read back from the written config.json), sizes on disk,
quantizer wall time, the build's own peak memory, library versions, the calibration used.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from jobs.filelock import file_lock
from jobs.models import cache_root, weights_source
from jobs.process_memory import peak_rss_bytes, reset_peaks, rss_bytes
from jobs.quantize import get_backend
from jobs.quantize.formats import describe_quantization
from jobs.stages import report
from jobs.versions import library_versions
from matrix import Cell
from matrix.methods import artifact_options
from matrix.results import Manifest

MANIFEST = "quantmatrix-manifest.json"
BUILD_LOG = "builds.jsonl"   # one line per quantizer run: proves quantize-once


def artifacts_dir() -> Path:
    return cache_root() / "artifacts"


def dir_bytes(path: Path, suffix: str = "") -> int:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file())


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """The peak memory of the code inside, not of the whole process's life.

    CPU: Linux's RSS high-water mark (VmHWM), reset on entry by writing 5 to /proc/self/clear_refs
    (so it includes what the process already held: `rss_at_start_bytes` says how much);
    where that is not allowed, the process's lifetime ru_maxrss, labelled as such.
    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats."""
    out: dict[str, Any] = {"rss_at_start_bytes": rss_bytes()}
    reset = reset_peaks()
    out["peak_rss_kind"] = "VmHWM of the building process, reset at build start" if reset else \
        "ru_maxrss of the building process's whole life (could not reset VmHWM)"
    yield out
    out["peak_rss_bytes"] = peak_rss_bytes()
    import torch
    if torch.cuda.is_available():
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()


def _read_manifest(path: Path) -> Manifest:
    return Manifest.of({**json.loads(path.read_text()), "built": False})   # reused, not built by this caller


def ensure_artifact(cell: Cell) -> Manifest:
    """The manifest of `cell`'s weights; quantizes them first if no worker has yet.

    `quantize_seconds` is None for load-time and prequantized methods; `built` is True only for the
    caller that ran the quantizer."""
    backend = get_backend(cell.backend)
    if backend.resolve is not None:
        return Manifest.of({"artifact_key": cell.artifact_key, "quantize_seconds": None, "built": False,
                            **backend.resolve(cell)})
    report("preparing", "base model")     # a builtin or GGUF model is converted once, here
    base = weights_source(cell)     # with a merged adapter: the merged model, merged once
    if not backend.writes_artifact:
        return Manifest(artifact_key=cell.artifact_key, path=base, format=backend.format)
    out = artifacts_dir() / cell.artifact_key
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        return _read_manifest(manifest_path)
    with file_lock(artifacts_dir() / f"{cell.artifact_key}.lock"):
        if manifest_path.is_file():     # another worker finished it while we waited
            return _read_manifest(manifest_path)
        manifest = _build(cell, backend, base, out)
        with open(artifacts_dir() / BUILD_LOG, "a") as log:
            log.write(json.dumps({"artifact_key": cell.artifact_key, "pid": os.getpid(), "host": socket.gethostname(),
                                  "seconds": manifest.quantize_seconds}) + "\n")
        return manifest


def _build(cell: Cell, backend, base: str, out: Path) -> Manifest:
    from transformers import AutoTokenizer

    from jobs.quantize.calibration import build_calibration

    tmp = Path(tempfile.mkdtemp(dir=artifacts_dir(), prefix=f".{cell.artifact_key}-"))
    try:
        calib = dict(cell.calibration or ())
        if calib:
            report("calibration", f"{calib.get('samples')} samples x {calib.get('seq_len')} tokens")
        calibration = build_calibration(AutoTokenizer.from_pretrained(base), calib) if calib else None
        report("quantizing")
        with peak_memory() as memory:
            start = time.perf_counter()
            facts = backend.quantize(cell, base, tmp, calibration)
            seconds = time.perf_counter() - start
        written = json.loads((tmp / "config.json").read_text())
        manifest = Manifest.of({
            "artifact_key": cell.artifact_key, "path": str(out),
            "format": describe_quantization(written.get("quantization_config")),
            "model": cell.model, "revision": cell.revision, "base_path": base, "method": cell.method,
            "backend": cell.backend, "bits": cell.bits, "group_size": cell.group_size,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in artifact_options(cell.method, cell.options)},
            "calibration": calibration.record if calibration else None,
            "quantize_seconds": seconds,
            "size_bytes": dir_bytes(tmp), "weights_bytes": dir_bytes(tmp, ".safetensors"),
            "base_weights_bytes": dir_bytes(Path(base), ".safetensors") if Path(base).is_dir() else None,
            **memory,
            "library_versions": library_versions(backend.libraries), "host": socket.gethostname(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: v for k, v in facts.items() if k != "notes"},
            "notes": list(facts.get("notes", [])),
            "built": True,
        })
        (tmp / MANIFEST).write_text(json.dumps({**manifest.to_json(), "built": False}, indent=2))
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def build_count(artifact_key: str) -> int:
    log = artifacts_dir() / BUILD_LOG
    if not log.is_file():
        return 0
    return sum(json.loads(line)["artifact_key"] == artifact_key for line in log.read_text().splitlines())
