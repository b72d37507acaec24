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
    assert "ran 4: 4 ok, 0 failed;" in first.stdout
    # not a terminal: one plain line per finished cell with its figures, and where the time went
    assert re.search(r"^\[\d/4\] done int8 w8: ppl \d+\.\d\d, decode \d+\.\d tok/s, weights [\d.]+ MiB", first.stdout, re.M)
    assert "time by stage, summed over builds and cells: " in first.stdout
    # quantized once in this cache, whether by this run or an earlier one (QMX_CACHE may be warm)
    [key] = {r["artifact_key"] for r in query(results, "select artifact_key from cells where method = 'gptq' "
                                                       "and label = 'gptq w4 g64'").to_pylist()}
    assert build_count(key) == 1

    # each run says where its time went: the engine's load (or reuse), then each evaluator
    notes = [r["notes"] for r in query(results, "select notes from runs where status = 'ok'").to_pylist()]
    assert len(notes) == 4
    assert all(re.search(r"seconds: engine (load \d+\.\d|reused)(, \w+ \d+\.\d)*, memory \d+\.\d", n) for n in notes)

    board = _qmx("leaderboard", "--results", results)
    assert board.returncode == 0, board.stderr
    rows = [l for l in board.stdout.splitlines() if l.startswith("| ") and not l.startswith("| rank")]
    assert len(rows) >= 4

    ppl = {r["label"]: r["perplexity"] for r in query(results, "select label, perplexity from leaderboard").to_pylist()}
    base = ppl["bf16"]
    # the OFFLINE-ASSETS reference: 19.23 in fp32, 512-token windows, BOS per window, first 2048 tokens
    assert base == pytest.approx(19.23, rel=0.005)
    # LLM.int8() keeps outlier columns in 16 bit and the rest at 8 bits: closer to bf16 than 4-bit NF4, always.
    # Measured int8 vs bf16: threshold 6.0 +3.49 % here (2,048 tokens; NF4 +28.1 %) and +4.9 % at 1,024 tokens;
    # the best of thresholds 6.0/3.0 +1.86 % and +2.40 % on two fresh clones: 10 % is twice the worst seen.
    int8, nf4 = abs(ppl["int8 w8"] / base - 1), abs(ppl["nf4 w4"] / base - 1)
    assert int8 < nf4 and int8 < 0.10
    assert ppl["nf4 w4"] > base and ppl["gptq w4 g64"] > base

    count = _qmx("query", "select count(*) as n from leaderboard", "--results", results, "--format", "csv")
    assert count.returncode == 0 and count.stdout.splitlines()[-1] == "4"

    second = _qmx("sweep", "matrix/specs/default.yaml", "--results", results)
    assert second.returncode == 0, second.stderr
    assert "4 cells (4 already done), 1 skipped; ran 0" in second.stdout
