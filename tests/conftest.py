"""Shared fixtures. One cache for the whole session (set before Ray starts, so workers inherit it)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QMX_CACHE", tempfile.mkdtemp(prefix="qmx-test-cache-"))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown():
    yield
    import ray
    if ray.is_initialized():
        ray.shutdown()


def tiny_spec(name: str, **overrides) -> dict:
    """A small spec on the random tiny Llama: seconds per cell on CPU."""
    spec = {
        "name": name,
        "models": [{"id": "builtin:tiny-llama"}],
        "methods": [{"method": "none"}, {"method": "int8"}, {"method": "nf4"},
                    {"method": "gptq", "bits": [4], "group_size": [32, 128]}],
        "calibration": {"corpus": "evals-c4", "samples": 4, "seq_len": 64},
        "evaluation": {"perplexity": {"corpus": "evals-wikipedia", "context": 128, "stride": 128, "max_tokens": 256},
                       "speed": {"prompt_tokens": 8, "new_tokens": 8, "repeats": 1}},
        "resources": {"cpus_per_cell": 1, "max_retries": 1},
    }
    spec.update(overrides)
    return spec


def baseline_engine(model: str):
    """The hf engine of `model`'s unquantized cell, loaded as a sweep would load it."""
    from jobs.artifacts import ensure_artifact
    from jobs.engines import load_engine
    from matrix import expand_matrix
    from matrix.spec import parse_spec

    spec = parse_spec(tiny_spec("baseline", models=[{"id": model}], methods=[{"method": "none"}]))
    cell = expand_matrix(spec, {}).cells[0]
    return load_engine(cell, ensure_artifact(cell))
