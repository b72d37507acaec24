"""Sweeps through a real local Ray on the tiny model: Parquet out, DuckDB in, resume, failures."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from analysis.catalog import query
from analysis.leaderboard import leaderboard_markdown
from cluster.driver import run_sweep
from jobs.artifacts import build_count
from jobs.models import materialize
from matrix.spec import parse_spec

from conftest import tiny_spec


def _files(results: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in results.rglob("*.parquet")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    spec = parse_spec(tiny_spec("tiny-sweep", kv_cache_dtype=["auto"]))
    report = run_sweep(spec, results)
    return spec, results, report


def test_sweep_writes_parquet_that_duckdb_reads(swept):
    spec, results, report = swept
    assert (report.cells, report.skipped, report.succeeded, report.failed) == (4, 1, 4, 0)
    assert report.workers_started < report.succeeded          # long-lived workers ran several cells each
    # plain DuckDB over the files, without our views
    con = duckdb.connect()
    runs = con.sql(f"select status, count(*) from read_parquet('{results}/runs/*/*.parquet') group by 1 "
                   "order by 1").fetchall()
    assert runs == [("ok", 4), ("skipped", 1)]
    metrics = {r[0] for r in con.sql(f"select distinct metric from read_parquet('{results}/metrics/*/*.parquet')")
               .fetchall()}
    assert {"perplexity", "decode_tokens_per_s", "ttft_ms", "weight_bytes", "peak_memory_bytes",
            "quantize_seconds"} <= metrics
    assert not list(results.rglob("*.tmp"))


def test_metrics_are_sane_and_comparable(swept):
    _, results, _ = swept
    rows = {r["label"]: r for r in query(results, "select * from leaderboard").to_pylist()}
    assert set(rows) == {"bf16", "int8 w8", "nf4 w4", "gptq w4 g32"}
    base = rows["bf16"]
    assert base["perplexity_delta_pct"] == pytest.approx(0.0)
    for r in rows.values():
        assert r["perplexity"] > 1 and r["decode_tokens_per_s"] > 0 and r["peak_memory_bytes"] > r["weight_bytes"]
    # 4-bit weights are smaller than 8-bit, which are smaller than bf16
    assert rows["nf4 w4"]["weight_bytes"] < rows["int8 w8"]["weight_bytes"] < base["weight_bytes"]
    settings = json.loads(query(results, "select settings from metrics where metric='perplexity' limit 1")
                          .column(0)[0].as_py())
    assert {k: settings[k] for k in ("bos", "context", "corpus", "stride", "tokens")} == \
        {"bos": True, "context": 128, "corpus": "evals-wikipedia", "stride": 128, "tokens": 256}
    # the convention is named on the row itself: token-level, one joined stream, non-overlapping windows
    assert settings["level"].startswith("token") and settings["windows"] == "non-overlapping"


def test_skipped_cell_recorded_with_reason(swept):
    _, results, _ = swept
    rows = query(results, "select label, reason from skipped").to_pylist()
    assert rows == [{"label": "gptq w4 g128", "reason": "group size 128 does not divide q/k/v and gate/up "
                                                          "in_features 64, o_proj in_features 64"}]


def test_rerun_does_no_work_and_writes_nothing(swept):
    spec, results, _ = swept
    before = _files(results)
    report = run_sweep(spec, results)
    assert (report.ran, report.already_done, report.quantizations) == (0, 4, 0)
    assert _files(results) == before


def test_cells_sharing_an_artifact_quantize_once(tmp_path):
    gptq = [{"method": "gptq", "bits": [4], "group_size": [64]}]
    first = parse_spec(tiny_spec("artifact-a", methods=gptq))
    # same weights, other evaluation settings: other cells, one artifact key
    second = parse_spec(tiny_spec("artifact-b", methods=gptq,
                                  evaluation={"perplexity": {"corpus": "evals-c4", "context": 64, "stride": 32,
                                                             "max_tokens": 128}, "speed": None}))
    r1, r2 = run_sweep(first, tmp_path), run_sweep(second, tmp_path)
    keys = query(tmp_path, "select distinct sweep, artifact_key, cell_id from cells where method='gptq'").to_pylist()
    assert len({k["cell_id"] for k in keys}) == 2 and len({k["artifact_key"] for k in keys}) == 1
    assert (r1.succeeded, r2.succeeded) == (2, 2)
    # the build log proves once (a warm shared QMX_CACHE may hold the artifact already: then neither built it)
    assert r1.quantizations <= 1 and r2.quantizations == 0
    assert build_count(keys[0]["artifact_key"]) == 1


def test_leaderboard_markdown(swept):
    _, results, _ = swept
    md = leaderboard_markdown(results, "tiny-sweep")
    lines = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| rank")]
    assert len(lines) == 4
    assert "gptq w4 g128: group size 128 does not divide" in md


def test_query_is_read_only(swept):
    _, results, _ = swept
    with pytest.raises(PermissionError, match="read-only"):
        query(results, f"copy (select 1) to '{results}/x.csv'")
    with pytest.raises(PermissionError):
        query(results, "create table t as select 1")
    assert not (results / "x.csv").exists()


def test_a_failing_cell_does_not_sink_the_sweep(tmp_path):
    # a real broken checkpoint: a valid config.json, weights truncated to nothing
    broken = tmp_path / "broken-model"
    shutil.copytree(materialize("builtin:tiny-llama"), broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"\0" * 16)
    spec = parse_spec(tiny_spec("with-failure", models=[{"id": "builtin:tiny-llama"}, {"id": str(broken)}],
                                methods=[{"method": "none"}]))
    results = tmp_path / "results"
    report = run_sweep(spec, results)
    assert (report.succeeded, report.failed) == (1, 1)
    runs = query(results, "select c.model, r.attempt, r.status from runs r "
                          "join (select distinct cell_id, model from cells) c using (cell_id) order by 1, 2").to_pylist()
    assert [(r["attempt"], r["status"]) for r in runs if r["model"] == str(broken)] == [(1, "failed"), (2, "failed")]
    assert query(results, "select count(*) from leaderboard").column(0)[0].as_py() == 1
    # a rerun retries only the failed cell, with a new attempt number; the finished one is untouched
    report2 = run_sweep(spec, results)
    assert (report2.already_done, report2.ran, report2.failed) == (1, 1, 1)


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path):
    import yaml

    spec = tiny_spec("interrupted", methods=[{"method": "none"},
                                             {"method": "int8", "options": {"llm_int8_threshold": [6.0, 4.0, 3.0, 2.0]}},
                                             {"method": "nf4"}])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    qmx = [sys.executable, "-m", "cluster.cli", "sweep", str(tmp_path / "spec.yaml"), "--results", results.as_uri()]
    proc = subprocess.Popen(qmx, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not list((results / "runs").glob("*/*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)                  # as Ctrl-C: after the first cell is stored
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "rerun the same command to resume" in err
    assert not [p for p in results.rglob("*") if p.name.endswith(".tmp")]
    kept = _files(results)
    finished = len(list((results / "runs").glob("*/*.parquet")))
    assert 1 <= finished < 6

    rerun = subprocess.run(qmx, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: t for p, t in _files(results).items() if p in kept} == kept      # nothing rewritten
    runs = query(results, "select cell_id, status from runs").to_pylist()
    assert Counter(r["status"] for r in runs) == {"ok": 6}                    # each cell once, no failures
    assert len({r["cell_id"] for r in runs}) == 6
