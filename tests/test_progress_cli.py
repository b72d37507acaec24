"""The CLI as a new user meets it: a sweep's progress in a log, refusals of nonsense, --version, offline plans."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_spec

QMX = str(Path(sys.executable).with_name("qmx"))


def _qmx(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    # stdout is a pipe, not a terminal: the CLI prints one plain line per event
    return subprocess.run([QMX, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-cell sweep on the tiny model (a GPTQ build and the baseline) through `qmx sweep`."""
    from jobs.artifacts import artifacts_dir
    from matrix import expand_matrix
    from matrix.spec import parse_spec

    folder = tmp_path_factory.mktemp("progress")
    spec = tiny_spec("progress", methods=[{"method": "none"}, {"method": "gptq", "bits": [4], "group_size": [32]}],
                     calibration={"corpus": "evals-c4", "samples": 3, "seq_len": 32})
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    for cell in expand_matrix(parse_spec(spec), {}).cells:     # the build must run here, not come from the cache
        shutil.rmtree(artifacts_dir() / cell.artifact_key, ignore_errors=True)
    out = _qmx("sweep", str(folder / "spec.yaml"), "--results", str(folder / "results"))
    return out, str(folder / "results")


def test_sweep_log_has_a_line_per_finished_cell_and_the_builds_stages(swept):
    out, _ = swept
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # a line per finished cell with its headline figures
    for label in ("bf16", "gptq w4 g32"):
        assert any(re.fullmatch(rf"\[\d/2\] done {label}: ppl \d+\.\d\d, decode \d+\.\d tok/s, weights [\d.]+ MiB"
                                r" \(\d+\.\d s\)(; ETA .*)?", l) for l in lines), out.stdout
    # the running build's stages, from the worker: calibration, then llm-compressor's layers one by one
    build = [l for l in lines if re.match(r"\[\d/2\] build gptq w4 g32 · ", l)]
    assert any(l.endswith("· calibration 3 samples x 32 tokens") for l in build), out.stdout
    assert [l.rsplit("· ", 1)[1] for l in build if "layer" in l] == ["quantizing layer 1/2", "quantizing layer 2/2"]
    assert any(re.search(r"\] bf16 · .+ · perplexity$", l) for l in lines)
    # no live bars in a log; the time by stage at the end; the known noise filtered
    assert "━" not in out.stdout and "\r" not in out.stdout
    [summary] = [l for l in lines if l.startswith("time by stage, summed over builds and cells: ")]
    stages = dict(re.findall(r"(\w+) (\d+\.\d) s", summary))
    assert {"calibration", "quantizing", "loading", "perplexity", "speed", "memory"} <= set(stages), summary
    assert list(stages).index("quantizing") < list(stages).index("loading")    # the builds' stages first
    assert re.search(r"; 1 quantization; (1 worker|[2-9] workers);", out.stdout)      # singular and plural
    for noise in ("Token authentication is enabled", "Failed to load", "_pytree"):
        assert noise not in out.stdout + out.stderr


@pytest.mark.parametrize("args, choices", [
    (["schema", "bogus"], ["'spec'", "'results'"]),
    (["query", "select 1", "--format", "xml"], ["'table'", "'csv'", "'json'"]),
    (["leaderboard", "--sweep", "nosuch"], ["'progress'"]),
])
def test_cli_refuses_nonsense_with_the_choices(swept, args, choices):
    _, results = swept
    out = _qmx(*args, "--results", results) if args[0] != "schema" else _qmx(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert all(c in out.stderr for c in choices), out.stderr
    assert out.stdout == ""


def test_version_names_the_package_and_the_commit():
    from importlib.metadata import version

    out = _qmx("--version")
    assert out.returncode == 0
    assert out.stdout.startswith(f"quantmatrix {version('quantmatrix')}")
    if (ROOT / ".git").exists():
        described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--tags"],
                                   capture_output=True, text=True).stdout.strip()
        assert f"(commit {described})" in out.stdout


def test_runs_rows_carry_the_quantmatrix_version(swept):
    import json

    from analysis.catalog import query
    from jobs.versions import project_version

    _, results = swept
    rows = query(results, "select library_versions from runs where status = 'ok'").to_pylist()
    assert rows and all(json.loads(r["library_versions"])["quantmatrix"] == project_version() for r in rows)


SPECS = sorted((ROOT / "matrix/specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_example_spec_plans_offline_in_5s(spec):
    from jobs.models import materialize

    # builtin models are converted once into the cache (real work, not the network): not timed here
    for model in yaml.safe_load(spec.read_text())["models"]:
        if model["id"].startswith("builtin:"):
            materialize(model["id"])
    start = time.monotonic()
    out = _qmx("plan", str(spec), env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert seconds < 5, f"{spec.name} planned in {seconds:.1f} s"
    hub = [m["id"] for m in yaml.safe_load(spec.read_text())["models"] if "/" in m["id"] and ":" not in m["id"]]
    for model in hub:        # planned from the shipped config, and said so
        assert re.search(rf"{model}: (the hub is unreachable|HF_HUB_OFFLINE is set); using quantmatrix's shipped "
                         "snapshot", out.stderr), out.stderr


def test_an_unknown_hub_model_offline_fails_fast_in_one_line(tmp_path):
    spec = tmp_path / "unknown.yaml"
    spec.write_text(yaml.safe_dump({"name": "unknown", "models": [{"id": "nosuch-org/nosuch-model"}],
                                    "methods": [{"method": "none"}]}))
    start = time.monotonic()
    out = _qmx("plan", str(spec), env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    assert time.monotonic() - start < 5
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "nosuch-org/nosuch-model" in line and "unreachable" in line and "Retrying" not in out.stderr
