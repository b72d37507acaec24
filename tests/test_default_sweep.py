"""The README's default sweep through the real CLI, on the real SmolLM2 (minutes on 2 cores)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.catalog import query
from jobs.artifacts import build_count

from conftest import ROOT

QMX = str(Path(sys.executable).with_name("qmx"))


def _qmx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QMX, *args], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=1500)


@pytest.mark.slow
def test_default_sweep_end_to_end(tmp_path):
    results = str(tmp_path / "results")
    first = _qmx("sweep", "matrix/specs/default.yaml", "--results", results)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "skipped builtin:smollm2-135m-instruct gptq w4 g128: group size 128 does not divide" in first.stdout
    assert "ran 5: 5 ok, 0 failed;" in first.stdout
    # quantized once in this cache, whether by this run or an earlier one (QMX_CACHE may be warm)
    [key] = {r["artifact_key"] for r in query(results, "select artifact_key from cells where method = 'gptq' "
                                                       "and label = 'gptq w4 g64'").to_pylist()}
    assert build_count(key) == 1

    # each run says where its time went: the engine's load (or reuse), then each evaluator
    notes = [r["notes"] for r in query(results, "select notes from runs where status = 'ok'").to_pylist()]
    assert len(notes) == 5
    assert all(re.search(r"seconds: engine (load \d+\.\d|reused)(, \w+ \d+\.\d)*, memory \d+\.\d", n) for n in notes)

    board = _qmx("leaderboard", "--results", results)
    assert board.returncode == 0, board.stderr
    rows = [l for l in board.stdout.splitlines() if l.startswith("| ") and not l.startswith("| rank")]
    assert len(rows) >= 4

    ppl = {r["label"]: r["perplexity"] for r in query(results, "select label, perplexity from leaderboard").to_pylist()}
    base = ppl["bf16"]
    # the OFFLINE-ASSETS reference: 19.23 in fp32, 512-token windows, BOS per window, first 2048 tokens
    assert base == pytest.approx(19.23, rel=0.005)
    best_int8 = min(v for k, v in ppl.items() if k.startswith("int8"))
    assert abs(best_int8 / base - 1) < 0.02
    assert ppl["nf4 w4"] > base and ppl["gptq w4 g64"] > base

    count = _qmx("query", "select count(*) as n from leaderboard", "--results", results, "--format", "csv")
    assert count.returncode == 0 and count.stdout.splitlines()[-1] == "5"

    second = _qmx("sweep", "matrix/specs/default.yaml", "--results", results)
    assert second.returncode == 0, second.stderr
    assert "5 cells (5 already done), 1 skipped; ran 0" in second.stdout
