"""Deciding from a store: rank, pareto, recommend under gates, compare runs (real Parquet, real DuckDB, the CLI)."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from analysis.catalog import connect, query
from analysis.compare import Side, compare
from analysis.pareto import pareto
from analysis.rank import rank
from analysis.recommend import GatesError, load_gates, recommend
from analysis.store import ResultStore
from cluster.cli import app
from matrix import Cell
from matrix.results import METRIC_SCHEMA

SERVE = {"concurrency": 1, "request_rate": None, "requests": 20}


def _cell(method: str, bits: int, model: str = "org/model") -> Cell:
    return Cell(model=model, revision=None, method=method, backend="none" if method == "none" else "bitsandbytes",
                bits=bits, group_size=None, options=(), kv_cache_dtype="auto", engine="hf", calibration=None,
                evaluation='{"perplexity": {}}')


def _metrics(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([{"metric": m, "value": v, "unit": u, "direction": d, "settings": json.dumps(s)}
                                 for m, v, u, d, s in rows], schema=METRIC_SCHEMA)


# label -> (perplexity, decode tok/s (median, min, max), weight MB, served TTFT p95 ms at c=1 and c=8)
CELLS = {
    ("none", 16): (10.0, (50.0, 48.0, 52.0), 1000, (30.0, 90.0)),
    ("int8", 8): (10.2, (40.0, 39.0, 41.0), 500, (35.0, 95.0)),
    ("nf4", 4): (11.5, (70.0, 69.0, 71.0), 300, (20.0, 60.0)),      # the fastest, and +15 % perplexity
    ("fp4", 4): (10.4, (60.0, 50.5, 69.5), 300, (25.0, 70.0)),      # its speed range meets nf4's: a tie
}


def write_store(root, perplexity_scale: dict[str, float] | None = None, model: str = "org/model",
                sweep: str = "s") -> dict[str, Cell]:
    store, cells = ResultStore(root, sweep), {}
    for (method, bits), (ppl, (dec, lo, hi), mb, (p95_1, p95_8)) in CELLS.items():
        cell = _cell(method, bits, model)
        ppl *= (perplexity_scale or {}).get(cell.label, 1.0)
        rows = [("perplexity", ppl, "ppl", "lower", {"corpus": "c", "context": 512}),
                ("decode_tokens_per_s", dec, "tok/s", "higher", {"batch": 1}),
                ("decode_tokens_per_s_min", lo, "tok/s", "higher", {"batch": 1}),
                ("decode_tokens_per_s_max", hi, "tok/s", "higher", {"batch": 1}),
                ("weight_bytes", mb * 2**20, "bytes", "lower", {}),
                ("serving_ttft_ms_p95", p95_1, "ms", "lower", SERVE),
                ("serving_ttft_ms_p95", p95_8, "ms", "lower", {**SERVE, "concurrency": 8}),
                ("serving_goodput", 100 / p95_1, "req/s", "higher", SERVE)]
        store.record(cell, 1, {"status": "ok"}, _metrics(rows))
        cells[cell.label] = cell
    return cells


@pytest.fixture()
def store(tmp_path):
    write_store(tmp_path / "a")
    return tmp_path / "a"


def test_rank_follows_each_metrics_direction_and_ties_overlapping_ranges(store):
    con = connect(store)
    _, _, by_ppl = rank(con, "perplexity")
    assert [r["label"] for r in by_ppl] == ["bf16", "int8 w8", "fp4 w4", "nf4 w4"]       # lower first
    target, context, by_speed = rank(con, "decode_tokens_per_s")
    assert target.direction == "higher"
    assert [(r["label"], r["rank"]) for r in by_speed] == [("nf4 w4", 1), ("fp4 w4", 1), ("bf16", 3), ("int8 w8", 4)]
    assert by_speed[0]["tied"] and by_speed[1]["tied"] and not by_speed[2]["tied"]
    assert {"perplexity_delta_pct", "speedup", "memory_reduction"} <= {m.column for m in context}
    nf4 = by_speed[0]
    assert nf4["perplexity_delta_pct"] == pytest.approx(15.0) and nf4["memory_reduction"] == pytest.approx(1000 / 300)
    _, _, served = rank(con, "serving_ttft_ms_p95", concurrency=8)
    assert [r["label"] for r in served][0] == "nf4 w4" and served[0]["serving_ttft_ms_p95_c8"] == 60.0


def test_pareto_keeps_only_the_non_dominated_cells(store):
    con = connect(store)
    # fp4 and nf4 weigh the same; fp4 has the lower perplexity, so nf4 is dominated
    assert sorted(r["label"] for r in con.sql("select label from pareto").to_arrow_table().to_pylist()) == \
        ["bf16", "fp4 w4", "int8 w8"]
    measures, front = pareto(con, ["perplexity", "decode_tokens_per_s"])
    assert [m.direction for m in measures] == ["lower", "higher"]
    # int8 is worse than bf16 on both axes; nf4 is the fastest, so it stays on this front
    assert [r["label"] for r in front.to_pylist()] == ["bf16", "fp4 w4", "nf4 w4"]


def test_recommend_skips_the_fastest_cell_that_fails_the_quality_gate(store):
    [rec] = recommend(connect(store), load_gates(None, max_ppl_delta_pct=5.0))
    assert rec.chosen.label == "fp4 w4" and rec.runner_up.label == "bf16"
    [nf4] = [v for v in rec.rejected if v.label == "nf4 w4"]
    assert nf4.failures == ("perplexity Δ +15.0 % > +5.0 %",)


def test_recommend_cli_exits_3_when_no_cell_passes_and_names_each_failed_gate(store):
    res = CliRunner().invoke(app, ["recommend", "--results", str(store), "--max-ppl-delta-pct", "1",
                                   "--sla-ttft-p95-ms", "22", "--concurrency", "1", "--memory-gib", "0.5"])
    assert res.exit_code == 3, res.output
    assert "none passes every gate" in res.output
    rejected = [line for line in res.output.splitlines() if line.lstrip().startswith("rejected:")]
    assert len(rejected) == 4
    assert "TTFT p95 30 ms > 22 ms" in res.output and "weights 0.977 GiB > 0.5 GiB" in res.output
    assert "perplexity Δ +15.0 % > +1.0 %" in res.output and "perplexity Δ +2.0 % > +1.0 %" in res.output
    ok = CliRunner().invoke(app, ["recommend", "--results", str(store), "--max-ppl-delta-pct", "5",
                                  "--optimize", "goodput", "--concurrency", "1"])
    assert ok.exit_code == 0, ok.output
    assert "chosen:    fp4 w4" in ok.output


def test_a_gate_on_a_metric_never_measured_is_an_error_not_a_pass(store, tmp_path):
    with pytest.raises(GatesError, match="kl_divergence_mean.*not measured"):
        recommend(connect(store), load_gates(None, max_kl=0.1))
    with pytest.raises(GatesError, match="concurrency: .* 1, 8"):
        recommend(connect(store), load_gates(None, sla_ttft_p95_ms=100.0))
    bad = tmp_path / "gates.yaml"
    bad.write_text("max_ppl_delta: 5\n")
    with pytest.raises(GatesError, match="max_ppl_delta: .*allowed: max_ppl_delta_pct"):
        load_gates(bad)
    bad.write_text("max_ppl_delta_pct: 5\nconcurrency: 1\nsla_ttft_p95_ms: 26\n")
    assert load_gates(bad, sla_ttft_p95_ms=40.0).sla_ttft_p95_ms == 40.0     # a flag overrides the file
    res = CliRunner().invoke(app, ["recommend", "--results", str(store), "--max-kl", "0.1"])
    assert res.exit_code == 2 and "not measured" in res.output and "Traceback" not in res.output


def test_compare_flags_a_ten_percent_perplexity_regression(store, tmp_path):
    assert not compare(Side(str(store), None), Side(str(store), None)).regressions
    same = CliRunner().invoke(app, ["compare", str(store), str(store)])
    assert same.exit_code == 0 and "no regression" in same.output
    write_store(tmp_path / "b", perplexity_scale={"int8 w8": 1.10})
    result = compare(Side(str(store), None), Side(str(tmp_path / "b"), None))
    assert result.matched_cells == 4
    assert [(d.label, d.metric) for d in result.regressions] == [("int8 w8", "perplexity")]
    assert result.regressions[0].change_pct == pytest.approx(10.0)
    res = CliRunner().invoke(app, ["compare", str(store), str(tmp_path / "b")])
    assert res.exit_code == 1 and "int8 w8" in res.output and "+10.00 %" in res.output
    # two sweeps of one store, named store#sweep
    write_store(store, perplexity_scale={"bf16": 0.5}, sweep="t")
    both = compare(Side.parse(f"{store}#s"), Side.parse(f"{store}#t"))
    assert not both.regressions and [d.label for d in both.deltas if d.change_pct][:1] == ["bf16"]


def test_compare_counts_a_cell_that_failed_after_as_a_regression(store, tmp_path):
    cells = write_store(tmp_path / "b")
    ResultStore(tmp_path / "b", "s").record(cells["nf4 w4"], 2, {"status": "failed", "reason": "OOM"})
    result = compare(Side(str(store), None), Side(str(tmp_path / "b"), None))
    assert not result.regressions and result.only_before == ("org/model nf4 w4",) and result.failed()
    res = CliRunner().invoke(app, ["compare", str(store), str(tmp_path / "b")])
    assert res.exit_code == 1 and "failed or missing" in res.output and "org/model nf4 w4" in res.output
    allowed = CliRunner().invoke(app, ["compare", str(store), str(tmp_path / "b"), "--allow-missing"])
    assert allowed.exit_code == 0, allowed.output


def test_accuracy_recovery_is_against_the_baseline_on_the_same_task(tmp_path):
    store = ResultStore(tmp_path / "r", "s")
    for (method, bits), (mmlu, arc) in {("none", 16): (0.50, 0.40), ("int8", 8): (0.45, 0.40),
                                        ("nf4", 4): (0.30, 0.20)}.items():
        store.record(_cell(method, bits), 1, {"status": "ok"}, _metrics([
            ("perplexity", 10.0, "ppl", "lower", {"context": 512}),
            ("weight_bytes", 16.0 * bits, "bytes", "lower", {}),
            ("accuracy", mmlu, "fraction", "higher", {"task": "mmlu", "items": 100}),
            ("accuracy", arc, "fraction", "higher", {"task": "arc", "items": 100})]))
    con = connect(tmp_path / "r")
    per_task = {(r["label"], r["task"]): r["recovery_pct"] for r in
                con.sql("select c.label, a.task, a.recovery_pct from accuracy a join cells c using (sweep, cell_id)")
                .to_arrow_table().to_pylist()}
    assert per_task[("int8 w8", "mmlu")] == pytest.approx(90.0) and per_task[("int8 w8", "arc")] == pytest.approx(100.0)
    board = {r["label"]: r["accuracy_recovery_pct"] for r in
             con.sql("select label, accuracy_recovery_pct from leaderboard").to_arrow_table().to_pylist()}
    assert board == pytest.approx({"bf16": 100.0, "int8 w8": 95.0, "nf4 w4": 55.0})
    [rec] = recommend(con, load_gates(None, min_recovery_pct=90.0, optimize="memory"))
    assert (rec.chosen.label, rec.runner_up.label) == ("int8 w8", "bf16")      # the smallest that passes
    assert [v.failures for v in rec.rejected if v.label == "nf4 w4"] == [("accuracy recovery 55 % < 90 %",)]


def test_unknown_sweeps_metrics_and_filters_are_one_line_errors(store):
    runner = CliRunner()
    for args, needle in [(["rank", "--by", "nosuch"], "not measured in this store"),
                         (["rank", "--by", "perplexity", "--sweep", "nosuch"], "sweeps: 's'"),
                         (["rank", "--by", "perplexity", "--where", "1=1; copy (select 1) to '/tmp/qmx-x'"],
                          "--where takes one SQL condition"),
                         (["pareto", "--x", "perplexity", "--y", "serving_ttft_ms_p95"], "--concurrency"),
                         (["compare", str(store), f"{store}#nosuch"], "no sweep 'nosuch'")]:
        res = runner.invoke(app, [*args, "--results", str(store)] if args[0] != "compare" else args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output
    assert query(store, "select count(*) as n from leaderboard").to_pylist() == [{"n": 4}]
