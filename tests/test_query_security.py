"""`qmx query` is read-only: real DuckDB over a real small store (written with ResultStore).

Writes (COPY, CREATE, EXPLAIN ANALYZE of them), reads outside the results folder (files, globs,
URLs) and extension installs are refused in one line, nothing is written, no extension is
fetched; ordinary queries over the views still answer, in every output format.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from analysis.catalog import connect, query
from analysis.store import ResultStore
from matrix.results import METRIC_SCHEMA
from matrix import Cell

QMX = str(Path(sys.executable).with_name("qmx"))


def _cell(method: str, bits: int) -> Cell:
    return Cell(model="m", revision=None, method=method, backend="none" if method == "none" else "bitsandbytes",
                bits=bits, group_size=None, options=(), kv_cache_dtype="auto", engine="hf", calibration=None,
                evaluation="{}")


@pytest.fixture()
def store(tmp_path) -> Path:
    """Two cells, one metric each, under a folder whose name carries a quote (it must stay one SQL string)."""
    root = tmp_path / "it's results"
    s = ResultStore(root, "s")
    for cell, ppl in ((_cell("none", 16), 10.0), (_cell("nf4", 4), 11.0)):
        s.record(cell, 1, {"status": "ok"}, pa.Table.from_pylist(
            [{"metric": "perplexity", "value": ppl, "unit": "ppl", "direction": "lower", "settings": "{}"}],
            schema=METRIC_SCHEMA))
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_views_answer_through_the_quoted_path(store):
    rows = query(store, "SELECT label, perplexity FROM leaderboard ORDER BY perplexity").to_pylist()
    assert [(r["label"], r["perplexity"]) for r in rows] == [("bf16", 10.0), ("nf4 w4", 11.0)]
    assert query(store, "EXPLAIN ANALYZE SELECT count(*) FROM metrics").num_rows >= 1


def test_the_connection_is_locked_down(store):
    con = connect(store)
    settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
                                "'autoinstall_known_extensions', 'autoload_known_extensions', 'lock_configuration')"
                                ).fetchall())
    assert settings == {"enable_external_access": "false", "autoinstall_known_extensions": "false",
                        "autoload_known_extensions": "false", "lock_configuration": "true"}
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")


def _refusals(tmp_path: Path, store: Path) -> dict[str, tuple[str, str]]:
    outside, inside = tmp_path / "x.csv", store / "metrics" / "sweep=s" / "evil.parquet"
    return {   # statement -> (the words of its one-line refusal, a file it must not write)
        "explain-copy-out": (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}'", "EXPLAIN of a COPY statement"),
        "explain-copy-in": (f"EXPLAIN ANALYZE COPY (SELECT 1 AS value) TO '{str(inside).replace(chr(39), 2 * chr(39))}'"
                            " (FORMAT parquet)", "EXPLAIN of a COPY statement"),
        "explain-create": ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "EXPLAIN of a CREATE statement"),
        "copy": (f"COPY (SELECT 1) TO '{outside}'", "a COPY statement"),
        "read-csv": ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        "read-text": ("SELECT * FROM read_text('/etc/passwd')", "disabled by configuration"),
        "glob": ("SELECT * FROM glob('/root/*')", "disabled by configuration"),
        "sniff": ("SELECT * FROM sniff_csv('/etc/passwd')", "disabled by configuration"),
        "url": ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "disabled by configuration"),
        "install": ("INSTALL httpfs", "an INSTALL statement"),
        "load": ("LOAD httpfs", "a LOAD statement"),
        "attach": (f"ATTACH '{tmp_path / 'db.duckdb'}'", "an ATTACH statement"),
        "set": ("SET enable_external_access = true", "a SET statement"),
    }


@pytest.mark.parametrize("case", sorted(_refusals(Path("/t"), Path("/s"))))
def test_refused_in_process_and_nothing_written(case, store, tmp_path):
    sql, words = _refusals(tmp_path, store)[case]
    before = _snapshot(store)
    with pytest.raises((PermissionError, duckdb.Error), match=words):
        query(store, sql)
    assert _snapshot(store) == before
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "db.duckdb").exists()


def _qmx(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([QMX, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["explain-copy-out", "read-csv", "read-text", "glob", "url", "install"])
def test_cli_refuses_in_one_line_with_no_outside_connection(case, store, tmp_path):
    sql, words = _refusals(tmp_path, store)[case]
    home = tmp_path / "home"       # DuckDB would install extensions under ~/.duckdb
    home.mkdir()
    before = _snapshot(store)
    done = _qmx("query", sql, "--results", str(store), home=home)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert _snapshot(store) == before and not (tmp_path / "x.csv").exists()
    assert not list(home.rglob("*httpfs*")), "an extension was fetched"


NESTED = ("SELECT [1, 2] AS l, {'a': 1, 'b': [true]} AS s, MAP {'k': 1} AS m, '\\x01'::BLOB AS b, "
          "INTERVAL 3 DAY AS i, 1.5::DECIMAL(10, 2) AS d, DATE '2020-01-01' AS dt, '[/red]' AS markup, NULL AS n, "
          "(SELECT max(value) FROM metrics) AS top")


def test_every_format_prints_every_column_type(store, tmp_path):
    rows = {}
    for fmt in ("csv", "json", "table"):
        done = _qmx("query", NESTED, "--results", str(store), "--format", fmt, home=tmp_path)
        assert done.returncode == 0, done.stderr
        rows[fmt] = done.stdout
    (row,) = list(csv.DictReader(io.StringIO(rows["csv"])))
    assert json.loads(row["l"]) == [1, 2] and json.loads(row["s"]) == {"a": 1, "b": [True]}
    assert row["markup"] == "[/red]" and row["n"] == "" and row["top"] == "11.0" and row["b"] == "01"
    (obj,) = json.loads(rows["json"])
    assert obj["l"] == [1, 2] and obj["s"] == {"a": 1, "b": [True]} and obj["markup"] == "[/red]"
    assert "[/red]" in rows["table"] and "NULL" in rows["table"]


def test_an_object_store_prefix_stays_readable_and_nothing_beside_it():
    """The lock-down an s3:// store gets: DuckDB's permission check passes paths under the prefix (the
    read then needs httpfs, which this offline machine lacks) and refuses the rest of the bucket."""
    from analysis.catalog import _lock_down

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    _lock_down(con, "s3://bucket/results")
    with pytest.raises(duckdb.Error, match="httpfs"):
        con.sql("SELECT * FROM read_parquet('s3://bucket/results/runs/*/*.parquet')").fetchall()
    for outside in ("s3://bucket/other/x.parquet", "s3://bucket/results/../x.parquet", "s3://bucket/results2/x.parquet"):
        with pytest.raises(duckdb.PermissionException):
            con.sql(f"SELECT * FROM read_parquet('{outside}')").fetchall()
