"""`qmx caveat`: a reason not to trust some recorded figures, noted after the fact. Nothing is rewritten;
the views, the printed leaderboard, the published page and the recommendation all carry it."""
from __future__ import annotations

import csv
import hashlib
import json
import re

import pyarrow as pa
import pytest
from conftest import ROOT
from recorded_stores import CELLS, _metrics, cell, record_store
from typer.testing import CliRunner

from analysis.catalog import connect
from analysis.leaderboard import leaderboard_markdown
from analysis.publish import publish
from analysis.recommend import Gates, recommend
from analysis.store import ResultStore
from cluster.cli import app
from matrix.results import METRIC_SCHEMA

REASON = "the load generator repeated prompts at c=4"


def _files(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.parquet")) if "caveats" not in p.parts}


def _caveat(root, reason: str, where: str, *more: str):
    return CliRunner().invoke(app, ["caveat", reason, "--where", where, "--results", str(root), *more])


def _served_labels(text: str, level: str) -> dict[str, str]:
    """Served-table rows of `level` (`c=4`): label without marks -> the marks after it."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 1 and cells[1].startswith(f"{level} "):
            label, _, marks = cells[0].partition(" ‡")
            out[label] = "‡" + marks if marks else ""
    return out


def test_a_caveat_marks_its_figures_everywhere_and_rewrites_nothing(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    before = _files(root)
    res = _caveat(root, REASON, "concurrency = 4")
    assert res.exit_code == 0, res.output
    # 4 served figures at c=4 per measured cell (TTFT, TPOT, req/s, requests ok)
    assert res.output.splitlines()[0].endswith(f"on 16 figures of 4 cells: {REASON}")
    assert _files(root) == before                    # no recorded file touched
    con = connect(root)
    marked = con.execute("SELECT concurrency, count(*) FILTER (caveat_ids IS NOT NULL), count(*) FROM serving "
                         "GROUP BY ALL ORDER BY 1").fetchall()
    assert marked == [(1, 0, 4), (4, 4, 4)]
    assert con.execute("SELECT count(*) FROM leaderboard WHERE caveat_ids IS NOT NULL").fetchone() == (0,)

    text = leaderboard_markdown(root)
    assert re.search(rf"^‡1 {re.escape(REASON)} \(caveat noted .* UTC on 16 figures of 4 cells: concurrency = 4\)$",
                     text, re.M)
    assert _served_labels(text, "c=4") == {label: "‡1" for label in CELLS}
    assert _served_labels(text, "c=1") == {label: "" for label in CELLS}

    publish(root, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    served = page[page.index('id="serving"'):page.index("</section>", page.index('id="serving"'))]
    assert served.count('class="tag caveat"') == 4 and f"‡1 {REASON}" in served
    leaderboard = page[page.index('id="leaderboard"'):page.index('id="plots"')]
    assert "‡" not in leaderboard
    plots = page[page.index('id="plots"'):page.index('id="serving"')]
    # the served plot draws the 4 points of each latency hollow and says so; the scatter plots have none
    assert plots.count("Hollow points: figures under a caveat") == 1
    doc = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    assert [(c["reason"], c["figures"], c["cells"]) for c in doc["caveats"]] == [(REASON, 16, 4)]
    assert sum(1 for r in doc["serving"] if r["caveat_ids"]) == 4


def test_caveats_number_in_the_order_noted_and_a_rerun_measures_afresh(tmp_path):
    root = tmp_path / "results"
    store = record_store(root)
    assert _caveat(root, "perplexity corpus was truncated", "label = 'nf4 w4' AND metric = 'perplexity'").exit_code == 0
    assert _caveat(root, REASON, "concurrency = 4").exit_code == 0
    text = leaderboard_markdown(root)
    assert re.search(r"^\| \d \| nf4 w4 ‡1 \|", text, re.M)       # the leaderboard row: its own figure
    assert _served_labels(text, "c=4")["nf4 w4"] == "‡2"           # the served row: the served caveat only
    # gptq is remeasured: its new attempt carries neither caveat
    _, backend, bits, group, *figures = CELLS["gptq w4 g64"]
    store.record(cell("m", "gptq", backend, bits, group), 2, {"status": "ok", "seconds": 1.0},
                 pa.Table.from_pylist(_metrics(*figures).to_pylist()))
    text = leaderboard_markdown(root)
    assert _served_labels(text, "c=4") == {label: "" if label == "gptq w4 g64" else "‡2" for label in CELLS}
    # and a caveat whose figures were all remeasured marks nothing, so it gets no footnote
    assert _caveat(root, "gptq only", "label = 'gptq w4 g64'", "--sweep", "s").exit_code == 0
    store.record(cell("m", "gptq", backend, bits, group), 3, {"status": "ok", "seconds": 1.0},
                 pa.Table.from_pylist(_metrics(*figures).to_pylist()))
    assert "gptq only" not in leaderboard_markdown(root)


def test_the_recommendation_passes_nothing_on_a_figure_under_a_caveat(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    gates = Gates(sla_ttft_p95_ms=1000.0, concurrency=4)
    [rec] = recommend(connect(root), gates)
    assert len(rec.passed) == 4
    assert _caveat(root, REASON, "concurrency = 4 AND label IN ('bf16', 'int8 w8') "
                                 "AND metric = 'serving_ttft_ms_p95'").exit_code == 0
    [rec] = recommend(connect(root), gates)
    assert sorted(v.label for v in rec.passed) == ["gptq w4 g64", "nf4 w4"]
    assert {v.label: v.failures for v in rec.rejected} == {
        label: (f"TTFT p95 under a caveat: {REASON}",) for label in ("bf16", "int8 w8")}


def test_a_condition_cannot_reach_another_sweep(tmp_path):
    root = tmp_path / "results"
    record_store(root, sweep="s")
    record_store(root, sweep="t")
    # text that closes the condition's parentheses to widen it is not one expression: refused
    for widened in ("true) OR (true", "true) UNION ALL SELECT *, NULL::INT, NULL::DOUBLE FROM results WHERE (true"):
        res = _caveat(root, REASON, widened, "--sweep", "s")
        assert res.exit_code == 2 and res.output.startswith("--where: ParserException"), res.output
    assert not (root / "caveats").exists()
    # an expression may read other sweeps (a subquery); it still selects among this sweep's figures only
    res = _caveat(root, REASON, "cell_id IN (SELECT cell_id FROM results WHERE sweep = 't') -- every cell",
                  "--sweep", "s")
    assert res.exit_code == 0 and "on 48 figures of 4 cells" in res.output, res.output
    marked = connect(root).execute("SELECT DISTINCT sweep FROM results WHERE caveat_ids IS NOT NULL").fetchall()
    assert marked == [("s",)]


def test_compaction_keeps_the_caveats(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    assert _caveat(root, REASON, "concurrency = 4").exit_code == 0
    ResultStore(root, "s").compact()
    assert connect(root).execute("SELECT count(*) FROM serving WHERE caveat_ids IS NOT NULL").fetchone() == (4,)
    assert len(list((root / "caveats").rglob("*.parquet"))) == 1


@pytest.mark.parametrize("args, says", [
    (["--where", "concurrency = 64"], "--where selects no figure of sweep 's': nothing noted"),
    (["--where", "no_such_column = 1"], '--where: BinderException: Binder Error: Referenced column "no_such_column"'),
    (["--where", "true; SELECT 1"], "--where: ParserException"),
    (["--where", " "], "--where: an empty condition would select every figure"),
    (["--where", "true", "--sweep", "other"], "--sweep: no sweep 'other' in these results; sweeps: 's'"),
])
def test_a_bad_caveat_is_one_line_and_writes_nothing(tmp_path, args, says):
    root = tmp_path / "results"
    record_store(root)
    res = CliRunner().invoke(app, ["caveat", REASON, *args, "--results", str(root)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and says in res.output, res.output
    assert not (root / "caveats").exists()


def test_a_caveat_needs_a_reason_and_one_sweep(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    record_store(root, sweep="t")
    for reason, says in (("  ", "reason: say why"), (REASON, "--sweep: a caveat is noted in one sweep; these results "
                                                             "hold 's', 't'")):
        res = _caveat(root, reason, "true")
        assert res.exit_code == 2 and says in res.output, res.output
    assert not (root / "caveats").exists()


@pytest.mark.parametrize("folder, sweep", [("h200-2026-12-01", "h200-llama7b"),
                                           ("h200-2026-12-02-c", "h200-llama7b-bf16")])
def test_the_h200_stores_mark_the_c128_rows_whose_prompts_repeated(folder, sweep):
    """The committed H200 stores whose served c=128 level reused prompts (README there) carry a caveat on
    exactly those rows, and their committed pages show it."""
    con = connect(ROOT / "benchmarks/results" / folder)
    rows = con.execute("SELECT sweep, concurrency, caveat_ids IS NOT NULL FROM serving").fetchall()
    assert {(s, c) for s, c, marked in rows if marked} == {(s, c) for s, c, _ in rows if (s, c) == (sweep, 128)}
    page = (ROOT / "benchmarks/results" / folder / "page/index.html").read_text()
    assert page.count('class="tag caveat"') == sum(marked for *_, marked in rows) > 0
    assert "‡1 109 of its 128 prompts repeated earlier ones" in page


def test_rank_and_pareto_mark_the_figures_they_show_under_a_caveat(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    assert _caveat(root, REASON, "concurrency = 4 AND label = 'nf4 w4'").exit_code == 0
    run = CliRunner().invoke
    at4 = run(app, ["rank", "--by", "serving_ttft_ms_p95", "-c", "4", "--results", str(root)]).output
    assert "| nf4 w4 ‡1 | hf |" in at4 and at4.count("‡1") == 2       # its row and the footnote
    assert at4.rstrip().splitlines()[-1].startswith(f"‡1 {REASON} (caveat noted ")
    at1 = run(app, ["rank", "--by", "serving_ttft_ms_p95", "-c", "1", "--results", str(root)]).output
    assert "‡" not in at1
    rows = json.loads(run(app, ["rank", "--by", "serving_ttft_ms_p95", "-c", "4", "--results", str(root),
                                "--format", "json"]).output)
    assert {r["label"]: bool(r["caveat_ids"]) for r in rows} == {label: label == "nf4 w4" for label in CELLS}
    # nf4 is on the TTFT-vs-weights front at c=4 (smallest weights): its point is marked there too
    front = run(app, ["pareto", "--x", "serving_ttft_ms_p95", "--y", "weight_bytes", "-c", "4",
                      "--results", str(root)]).output
    assert "| nf4 w4 ‡1 |" in front and front.rstrip().splitlines()[-1].startswith(f"‡1 {REASON} (caveat noted ")


def test_a_caveat_keeps_its_number_in_every_output(tmp_path):
    """‡2 is the second caveat noted, in the leaderboard, rank and the page, even where ‡1 is not shown."""
    root = tmp_path / "results"
    record_store(root)
    assert _caveat(root, "first", "label = 'int8 w8' AND metric = 'ttft_ms'").exit_code == 0   # not a figure rank shows
    assert _caveat(root, REASON, "concurrency = 4 AND label = 'nf4 w4'").exit_code == 0
    text = leaderboard_markdown(root)
    assert _served_labels(text, "c=4")["nf4 w4"] == "‡2"
    ranked = CliRunner().invoke(app, ["rank", "--by", "serving_ttft_ms_p95", "-c", "4", "--results", str(root)]).output
    assert "| nf4 w4 ‡2 |" in ranked and "‡1" not in ranked
    publish(root, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'nf4 w4<span class="tag caveat" title="[^"]*">‡2</span>', page)


def test_a_doubted_baseline_marks_the_figures_computed_against_it(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    assert _caveat(root, "baseline corpus truncated", "label = 'bf16' AND metric = 'perplexity'").exit_code == 0
    marked = dict(connect(root).execute("SELECT label, caveat_ids IS NOT NULL FROM leaderboard").fetchall())
    assert marked == {label: True for label in CELLS}        # every Δ ppl % divides by the baseline's perplexity
    [rec] = recommend(connect(root), Gates(max_ppl_delta_pct=50.0))
    assert rec.passed == () and all(v.failures == ("perplexity Δ under a caveat: baseline corpus truncated",)
                                    for v in rec.rejected)
    # a measure that does not read the perplexity is untouched
    [rec] = recommend(connect(root), Gates(memory_gib=1.0))
    assert len(rec.passed) == 4
    front = CliRunner().invoke(app, ["pareto", "--x", "perplexity_delta_pct", "--y", "memory_reduction",
                                     "--results", str(root)]).output
    assert front.count(" ‡1 |") == 3, front          # bf16, int8 and nf4 are the front: every Δ is doubted


def test_a_baseline_caveat_off_the_relative_figures_marks_the_baseline_alone(tmp_path):
    root = tmp_path / "results"
    record_store(root)
    assert _caveat(root, "timer drift", "label = 'bf16' AND metric = 'ttft_ms'").exit_code == 0
    marked = dict(connect(root).execute("SELECT label, caveat_ids IS NOT NULL FROM leaderboard").fetchall())
    assert marked == {label: label == "bf16" for label in CELLS}


def test_the_same_reason_is_noted_once_per_figure_and_a_rerun_updates_the_counts(tmp_path):
    root = tmp_path / "results"
    store = record_store(root)
    assert _caveat(root, REASON, "concurrency = 4 AND label = 'bf16'").exit_code == 0
    wider = _caveat(root, REASON.upper(), "concurrency = 4")     # bf16's 4 figures already carry it
    assert wider.exit_code == 0 and "on 12 figures of 3 cells" in wider.output, wider.output
    again = _caveat(root, REASON, "concurrency = 4 AND label <> 'int8 w8'")
    assert again.exit_code == 2 and "every figure selected already carries this reason" in again.output
    assert len(list((root / "caveats").rglob("*.parquet"))) == 2
    assert _served_labels(leaderboard_markdown(root), "c=4") == {label: "‡1" if label == "bf16" else "‡2"
                                                                 for label in CELLS}
    _, backend, bits, group, *figures = CELLS["gptq w4 g64"]
    store.record(cell("m", "gptq", backend, bits, group), 2, {"status": "ok", "seconds": 1.0},
                 pa.Table.from_pylist(_metrics(*figures).to_pylist()))
    assert "on 8 figures of 2 cells" in leaderboard_markdown(root)       # the remeasured cell's 4 are gone


def test_a_figure_without_settings_and_the_csv(tmp_path):
    root = tmp_path / "results"
    store = record_store(root)
    row = {"metric": "quantize_seconds", "value": 12.0, "unit": "s", "direction": "lower", "settings": None}
    _, backend, bits, group, *figures = CELLS["gptq w4 g64"]
    metrics = pa.concat_tables([_metrics(*figures), pa.Table.from_pylist([row], schema=METRIC_SCHEMA)])
    store.record(cell("m", "gptq", backend, bits, group), 2, {"status": "ok", "seconds": 1.0}, metrics)
    res = _caveat(root, "build timed on a busy box", "metric = 'quantize_seconds'")
    assert res.exit_code == 0 and "on 1 figure of 1 cell" in res.output, res.output
    assert connect(root).execute("SELECT label FROM results WHERE caveat_ids IS NOT NULL").fetchall() == \
        [("gptq w4 g64",)]
    publish(root, tmp_path / "site")
    rows = {r["label"]: r["caveat_ids"] for r in csv.DictReader((tmp_path / "site" / "leaderboard.csv").open())}
    [cid] = [c[0] for c in connect(root).execute("SELECT DISTINCT caveat_id FROM caveats").fetchall()]
    assert rows == {label: f"{cid}: build timed on a busy box" if label == "gptq w4 g64" else "" for label in CELLS}


def test_a_caveat_on_a_store_given_as_a_uri(tmp_path):
    """The same writer as the tables' (atomic rename on a filesystem, one PUT on an object store)."""
    record_store(tmp_path / "results")
    uri = (tmp_path / "results").as_uri()
    res = _caveat(uri, REASON, "concurrency = 4")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1] == f"(remove it by deleting {tmp_path}/results/caveats/sweep=s/" \
                                         f"{res.output.split()[1]}.parquet)"
    assert connect(uri).execute("SELECT count(*) FROM serving WHERE caveat_ids IS NOT NULL").fetchone() == (4,)


def test_generation_figures_mark_their_own_table_and_the_sanity_tag_is_not_a_caveat(tmp_path):
    root = tmp_path / "results"
    store = record_store(root)
    gsm8k = {"dataset": "gsm8k test", "num_fewshot": 0, "items": 20}
    _, backend, bits, group, *figures = CELLS["nf4 w4"]
    extra = [{"metric": "gsm8k_exact_match", "value": 0.3, "unit": "fraction", "direction": "higher",
              "settings": json.dumps(gsm8k)},
             {"metric": "sanity_flags", "value": 1.0, "unit": "flags", "direction": "lower", "settings": None}]
    store.record(cell("m", "nf4", backend, bits, group), 2, {"status": "ok", "seconds": 1.0},
                 pa.concat_tables([_metrics(*figures), pa.Table.from_pylist(extra, schema=METRIC_SCHEMA)]))
    assert _caveat(root, "answers leaked", "metric = 'gsm8k_exact_match'").exit_code == 0
    text = leaderboard_markdown(root)
    generation = text[text.index("## Generation and long context"):text.index("## Served latency")]
    assert "| nf4 w4 ‡1 |" in generation and "‡1 answers leaked" in generation
    ranked = text[:text.index("## Generation and long context")]
    assert "‡" not in ranked and "| nf4 w4 ⚠ |" in ranked      # the leaderboard row: its sanity flag only
    publish(root, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    assert page.count('class="tag caveat"') == 1 and page.count('class="tag sanity"') == 1
    [noted] = json.loads((tmp_path / "site" / "leaderboard.json").read_text())["caveats"]
    assert noted["noted_at"].endswith("+00:00") and "T" in noted["noted_at"]      # ISO 8601, in UTC
