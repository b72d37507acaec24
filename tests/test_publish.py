"""`qmx publish`: four files from one store, the recommendation under gates, every string escaped.
(The page in a real browser: test_publish_browser.py.)"""
from __future__ import annotations

import csv
import html
import json
import re

from conftest import ROOT
from recorded_stores import CELLS, record_store
from typer.testing import CliRunner

from analysis.leaderboard import leaderboard_markdown
from analysis.publish import publish
from analysis.publish.to_html import _script_json
from cluster.cli import app

HOSTILE = "<script>alert(1)</script>"


def test_one_store_gives_four_files_that_agree(tmp_path):
    record_store(tmp_path / "results")
    written = publish(tmp_path / "results", tmp_path / "site")
    assert sorted(p.name for p in written) == ["index.html", "leaderboard.csv", "leaderboard.json", "leaderboard.md"]
    site = tmp_path / "site"
    assert (site / "leaderboard.md").read_text().startswith(leaderboard_markdown(tmp_path / "results"))
    rows = list(csv.DictReader((site / "leaderboard.csv").open()))
    assert {r["label"]: float(r["perplexity"]) for r in rows} == {label: c[4] for label, c in CELLS.items()}
    doc = json.loads((site / "leaderboard.json").read_text())
    assert [r["label"] for r in doc["rows"]] == [r["label"] for r in rows]
    assert [s["label"] for s in doc["skipped"]] == ["gptq w4 g128"]
    assert doc["failed"][0]["summary"] == "RuntimeError: fp4 kernel missing"
    assert doc["provenance"]["commits"] == ["abc1234"] and doc["serving_percentile"] == "p95"
    # perplexity vs weights: bf16 (best), int8 and nf4 (smallest) are the front; gptq is beaten by nf4 on both
    front = {r["label"] for r in doc["rows"] if r["cell_id"] in doc["fronts"]["weight_bytes"]}
    assert front == {"bf16", "int8 w8", "nf4 w4"}
    page = (site / "index.html").read_text()
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(http", page)     # nothing to fetch
    assert page.count("<svg") == 3 and "no MBU measured" in page


def test_gates_put_the_recommendation_on_every_format(tmp_path):
    record_store(tmp_path / "results")
    result = CliRunner().invoke(app, ["publish", "--out", str(tmp_path / "site"), "--results", str(tmp_path / "results"),
                                      "--max-ppl-delta-pct", "5", "--optimize", "memory"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / "site" / n) for n in
                                     ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "index.html")]
    # smallest weights within 5 % perplexity: int8 (155 MiB); nf4 (105 MiB) is 7.5 % worse
    rec = json.loads((tmp_path / "site" / "leaderboard.json").read_text())["recommendations"][0]
    assert (rec["chosen"]["label"], rec["runner_up"]["label"]) == ("int8 w8", "bf16")
    failed = {v["label"]: v["failures"] for v in rec["rejected"]}
    assert set(failed) == {"nf4 w4", "gptq w4 g64"} and "+7.5 %" in failed["nf4 w4"][0]
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    page = (tmp_path / "site" / "index.html").read_text()
    assert "chosen:    int8 w8" in md and failed["nf4 w4"][0] in md        # recommend's own lines
    assert html.escape(failed["nf4 w4"][0]) in page
    chosen_row = re.search(r"<tr>(?:(?!</tr>).)*recommended</span>", page).group(0)
    assert ">int8 w8<" in chosen_row                                     # the table marks the chosen cell


def test_publish_refuses_what_it_cannot_judge(tmp_path):
    record_store(tmp_path / "results")
    runner = CliRunner()
    args = ["publish", "--out", str(tmp_path / "site"), "--results", str(tmp_path / "results")]
    unmeasured = runner.invoke(app, [*args, "--max-kl", "0.1"])
    assert unmeasured.exit_code == 2 and "kl_divergence_mean" in unmeasured.output
    assert runner.invoke(app, [*args, "--sweep", "nope"]).exit_code == 2
    assert not (tmp_path / "site").exists()          # nothing half-written


def test_every_string_is_escaped_in_the_page(tmp_path):
    breakout = "</script><script>alert(2)</script>\u2028&"
    record_store(tmp_path / "results", model=HOSTILE, skip_reason=breakout, error=f"ValueError: {breakout}")
    publish(tmp_path / "results", tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    assert page.count("<script") == 2 and page.count("</script>") == 2      # the data block and the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page                 # in the table and the SVG legends
    data = page[page.index('id="qmx-data">') + len('id="qmx-data">'):page.index("</script>")]
    assert "\u2028" not in data                                          # a JS line break, even inside a string
    assert json.loads(data)["rows"][0]["model"] == HOSTILE and json.loads(data)["skipped"][0]["reason"] == breakout
    text = _script_json({"a": breakout})
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"} and json.loads(text) == {"a": breakout}


def test_the_kept_gpu_store_draws_served_latency_and_mbu(tmp_path):
    publish(ROOT / "benchmarks/results/gpu-h100-smollm2-session-b", tmp_path)
    page = (tmp_path / "index.html").read_text()
    mbu = page[page.index('id="plot-mbu"'):]
    assert "<svg" in mbu[:2000] and "roofline: H100 3350 GB/s" in mbu
    served = page[page.index('id="plot-serving"'):page.index('id="plot-mbu"')]
    assert ">TTFT p95, ms</text>" in served and ">TPOT p95, ms</text>" in served     # p95: the view has it
    doc = json.loads((tmp_path / "leaderboard.json").read_text())
    assert {r["concurrency"] for r in doc["serving"]} == {1, 16}
    assert doc["provenance"]["devices"] == ["NVIDIA H100 80GB HBM3"]
