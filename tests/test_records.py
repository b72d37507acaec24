"""The typed records that cross the Ray boundary (matrix.results): every run fact has a runs column and
the store refuses one that has none; a manifest keeps every fact a backend reports, through its JSON."""
from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.catalog import query
from analysis.store import RUNS_SCHEMA, SCHEMA_VERSION, ResultStore
from matrix import Cell
from matrix.results import METRIC_SCHEMA, Manifest, RunFacts

STORE_KEYS = {"cell_id", "attempt", "schema_version"}       # the columns the store adds itself


def _cell(i: int = 0) -> Cell:
    return Cell(model="m", revision=None, method="none", backend="none", bits=16, group_size=None,
                options=(("i", i),), kv_cache_dtype="auto", engine="hf", calibration=None, evaluation="{}")


def _metrics() -> pa.Table:
    return pa.Table.from_pylist([{"metric": "perplexity", "value": 1.0, "unit": "ppl", "direction": "lower",
                                  "settings": "{}"}], schema=METRIC_SCHEMA)


def test_every_run_fact_has_a_runs_column_and_every_runs_column_is_a_fact():
    facts = [f.name for f in dataclasses.fields(RunFacts)]
    assert len(facts) == len(set(facts))
    assert set(facts) == set(RUNS_SCHEMA.names) - STORE_KEYS
    assert "threads" in facts and RUNS_SCHEMA.field("threads").nullable      # the fact the old store dropped


def test_a_fact_without_a_runs_column_raises_and_writes_nothing(tmp_path):
    store = ResultStore(tmp_path, "s")
    with pytest.raises(ValueError, match="^run fact 'gpu_temp' has no column in the runs table"):
        store.record(_cell(), 1, {"status": "ok", "gpu_temp": 71}, _metrics())
    # a record type grown by a field the runs schema lacks: refused at the write, not silently dropped
    wider = dataclasses.make_dataclass("WiderFacts", [("gpu_temp", int, 71)], bases=(RunFacts,), frozen=True)
    with pytest.raises(ValueError, match="^run fact 'gpu_temp' has no column in the runs table"):
        store.record(_cell(), 1, wider(), _metrics())
    assert not [p for p in tmp_path.rglob("*.parquet")]
    assert store.attempts() == {}


def test_every_fact_is_stored_and_an_older_store_reads_the_new_column_as_null(tmp_path):
    store = ResultStore(tmp_path, "s")
    facts = RunFacts(status="ok", seconds=1.5, host="h", device="cpu (x)", compute_dtype="bfloat16", threads=4,
                     format="gptq", library_versions=json.dumps({"torch": "2"}), notes="n", gpu_ids="0,1")
    store.record(_cell(0), 1, facts, _metrics())
    # a runs file written before `threads` existed (schema version 2): no such column at all
    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name != "threads"])
    old = {n: None for n in old_schema.names} | {"cell_id": _cell(1).cell_id, "attempt": 1, "status": "ok",
                                                  "schema_version": 2}
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema),
                   tmp_path / "runs" / "sweep=s" / f"{_cell(1).cell_id}-a1.parquet")
    rows = {r["cell_id"]: r for r in query(tmp_path, "select * from runs").to_pylist()}
    new = rows[_cell(0).cell_id]
    assert {k: new[k] for k in facts.row() if k != "started_at"} == {k: v for k, v in facts.row().items()
                                                                     if k != "started_at"}
    assert new["schema_version"] == SCHEMA_VERSION
    assert rows[_cell(1).cell_id]["threads"] is None and rows[_cell(1).cell_id]["status"] == "ok"
    assert ResultStore(tmp_path, "s").finished_cell_ids() == {_cell(0).cell_id, _cell(1).cell_id}


def test_a_manifest_keeps_every_fact_through_its_json():
    facts = {"artifact_key": "k", "path": "/a", "format": "gptq 4-bit", "quantize_seconds": 2.5, "built": True,
             "options": {"sym": True}, "library_versions": {"gptqmodel": "1"}, "notes": ["n1"],
             "gptqmodel_cpu_workers": "2"}                    # a fact only one backend reports
    m = Manifest.of(facts)
    assert (m.quantize_seconds, m.built, m.notes) == (2.5, True, ("n1",))
    assert m.backend_facts == {"gptqmodel_cpu_workers": "2"}
    again = Manifest.of(json.loads(json.dumps(m.to_json())))      # as written beside the artifact, and read back
    assert again == m
    with pytest.raises(TypeError):
        Manifest.of({"path": "/a", "format": "f"})                 # an artifact key is required
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.path = "/b"
