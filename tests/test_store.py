"""The results store on a pyarrow filesystem URI, its row tables, and the catalog's views over them."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from analysis.catalog import NoResults, query
from analysis.store import SCHEMA_VERSION, SCHEMAS, ResultStore
from jobs.evaluate import TABLE_SCHEMAS
from matrix.results import METRIC_SCHEMA
from matrix import Cell


def _cell(method: str, bits: int) -> Cell:
    return Cell(model="m", revision=None, method=method, backend="none" if method == "none" else "bitsandbytes",
                bits=bits, group_size=None, options=(), kv_cache_dtype="auto", engine="hf", calibration=None,
                evaluation='{"prompts": {}}')


def _generations(outputs: dict[str, str]) -> pa.Table:
    return pa.Table.from_pylist([{"prompt_id": p, "prompt": f"say {p}", "output": o, "output_tokens": len(o),
                                  "seconds": 0.1, "settings": '{"max_new_tokens": 8}'} for p, o in outputs.items()],
                                schema=TABLE_SCHEMAS["generations"])


def _samples(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"concurrency": 1, "request_rate": None, "request": i, "ok": True, "prompt_tokens": 8,
                                  "output_tokens": 8, "ttft_ms": 10.0 + i, "tpot_ms": 2.0, "itl_ms_mean": 2.0,
                                  "e2e_ms": 30.0, "error": None} for i in range(n)], schema=TABLE_SCHEMAS["samples"])


def _metrics(v: float) -> pa.Table:
    return pa.Table.from_pylist([{"metric": "perplexity", "value": v, "unit": "ppl", "direction": "lower",
                                  "settings": "{}"}], schema=METRIC_SCHEMA)


@pytest.fixture()
def store_uri(tmp_path):
    uri = (tmp_path / "results").as_uri()            # file:///...: the pyarrow-filesystem path
    base, nf4 = _cell("none", 16), _cell("nf4", 4)
    store = ResultStore(uri, "s")
    store.record(base, 1, {"status": "ok"}, _metrics(10.0),
                 {"generations": _generations({"p1": "hello", "p2": "world"}), "samples": _samples(3)})
    # a failed first attempt whose rows must not show, then the successful one
    store.record(nf4, 1, {"status": "failed", "error": "boom"}, None, {"samples": _samples(5)})
    store.record(nf4, 2, {"status": "ok"}, _metrics(11.0),
                 {"generations": _generations({"p1": "hello", "p2": "word"}), "samples": _samples(2)})
    return uri, tmp_path / "results", base, nf4


def test_uri_store_writes_every_table_atomically_and_resumes(store_uri):
    uri, folder, base, nf4 = store_uri
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert f"samples/sweep=s/{nf4.cell_id}-a1.parquet" in names
    assert f"generations/sweep=s/{nf4.cell_id}-a2.parquet" in names
    assert not [n for n in names if n.endswith(".tmp") or "/." in n]
    reopened = ResultStore(uri, "s")                 # a fresh driver: the index is read back from the URI
    assert reopened.finished_cell_ids() == {base.cell_id, nf4.cell_id}
    assert reopened.next_attempt(nf4.cell_id) == 3
    assert SCHEMA_VERSION == 4 and {"samples", "generations", "caveats"} <= set(SCHEMAS)


def test_views_show_the_latest_successful_attempt(store_uri):
    uri, _, base, nf4 = store_uri
    counts = {r["cell_id"]: r["n"] for r in query(uri, "select cell_id, count(*) n from samples group by 1").to_pylist()}
    assert counts == {base.cell_id: 3, nf4.cell_id: 2}
    assert query(uri, "select count(*) from samples_all").column(0)[0].as_py() == 10
    assert query(uri, "select count(*) from generations").column(0)[0].as_py() == 4


def test_generations_side_by_side_pairs_each_output_with_the_baseline(store_uri):
    uri, _, base, nf4 = store_uri
    rows = query(uri, "select label, prompt_id, output, baseline_output, same_as_baseline, baseline_cell_id "
                      f"from generations_side_by_side where cell_id = '{nf4.cell_id}' order by prompt_id").to_pylist()
    assert rows == [
        {"label": "nf4 w4", "prompt_id": "p1", "output": "hello", "baseline_output": "hello", "same_as_baseline": True,
         "baseline_cell_id": base.cell_id},
        {"label": "nf4 w4", "prompt_id": "p2", "output": "word", "baseline_output": "world",
         "same_as_baseline": False, "baseline_cell_id": base.cell_id},
    ]


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    store = ResultStore(tmp_path, "s")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.record(_cell("none", 16), 1, {"status": "ok"}, _metrics(1.0))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert json.dumps(ResultStore(tmp_path, "s").attempts()) == "{}"


def test_serving_view_and_leaderboard_read_a_real_gpu_sweep():
    """The H100 sweep's own results store (benchmarks/results): each served cell and load level is one
    row of the `serving` view, and the leaderboard prints them with the load profile they share."""
    from analysis.leaderboard import leaderboard_markdown
    from conftest import ROOT

    store = ROOT / "benchmarks/results/gpu-h100-smollm2-session-b"
    rows = query(store, "SELECT label, concurrency, ttft_ms_p50, requests_ok FROM serving").to_pylist()
    assert [(r["label"], r["concurrency"]) for r in rows] == [
        ("gptq w4 g64", 1), ("fp8 w8", 1), ("gptq w4 g64", 16), ("fp8 w8", 16)]     # by level, then TTFT
    # the same figure as the raw metric row of that level
    raw = query(store, "SELECT value FROM results WHERE label = 'gptq w4 g64' AND metric = 'serving_ttft_ms_p50' "
                       "AND json_extract(settings, '$.concurrency') = 16").to_pylist()
    assert rows[2]["ttft_ms_p50"] == raw[0]["value"] and all(r["requests_ok"] == 50 for r in rows)
    board = leaderboard_markdown(store)
    served = board[board.index("## Served latency"):]
    # a store written before prompt_format existed: its served figures were sent as token ids
    assert "50 requests per level, prompt 128 tokens sent as token ids (TTFT without tokenizing), 64 output tokens" in served
    assert f"| gptq w4 g64 | c=16 closed loop | {rows[2]['ttft_ms_p50']:.1f} / " in served
    with pytest.raises(NoResults, match="sweeps: 'h100-smollm2'"):
        leaderboard_markdown(ROOT / "benchmarks/results/gpu-h100-smollm2-session-b", sweep="no-such-sweep")
