"""`qmx compact`: one file per table, the same answers, no duplicate after an interrupted compaction."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.catalog import query
from analysis.store import ResultStore, StoreBusy
from cluster.cli import app

sys.path.insert(0, str(Path(__file__).parent))
from test_decide import write_store  # noqa: E402

BOARD = "select label, perplexity, perplexity_delta_pct, decode_tokens_per_s, weight_bytes from leaderboard order by 1"


def _parquet(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet"))


def test_compaction_keeps_every_answer_with_one_file_per_table(tmp_path):
    root = tmp_path / "r"
    cells = write_store(root)
    before = query(root, BOARD).to_pylist()
    metrics_before = query(root, "select count(*) as n from metrics").to_pylist()
    assert len(_parquet(root)) == 3 * len(cells)
    res = CliRunner().invoke(app, ["compact", "--results", str(root)])
    assert res.exit_code == 0, res.output
    assert "metrics 4 files -> 1" in res.output
    assert [p.parent.parent.name for p in _parquet(root)] == ["cells", "metrics", "runs"]
    assert query(root, BOARD).to_pylist() == before
    assert query(root, "select count(*) as n from metrics").to_pylist() == metrics_before
    # a compacted store keeps resuming: its runs still say which cells are finished
    assert ResultStore(root, "s").finished_cell_ids() == {c.cell_id for c in cells.values()}


def test_an_interrupted_compaction_leaves_no_duplicate_behind_the_next(tmp_path):
    root = tmp_path / "r"
    write_store(root)
    saved = tmp_path / "saved"
    shutil.copytree(root, saved)
    ResultStore(root, "s").compact()
    # as if the first compaction died after writing its file, before deleting the small ones
    for p in (saved / "metrics").rglob("*.parquet"):
        shutil.copy(p, root / "metrics" / p.parent.name / p.name)
    assert query(root, "select count(*) as n from metrics").to_pylist()[0]["n"] == 2 * 4 * 8
    ResultStore(root, "s").compact()
    assert query(root, "select count(*) as n from metrics").to_pylist()[0]["n"] == 4 * 8
    assert len(list((root / "metrics").rglob("*.parquet"))) == 1


def test_compaction_is_refused_while_another_sweep_writes(tmp_path):
    root = tmp_path / "r"
    write_store(root)
    writer = ResultStore(root, "s")
    with writer.claims.owning():
        with pytest.raises(StoreBusy, match="being written by"):
            ResultStore(root, "s").compact()
        res = CliRunner().invoke(app, ["compact", "--results", str(root)])
        assert res.exit_code == 2 and "being written by" in res.output
    assert ResultStore(root, "s").compact()["metrics"] == 4
