"""Fault injection on a real Ray cluster (ray.cluster_utils.Cluster: a head and one worker node):
each fault, then the sweep finishes (or is rerun), then the store is audited through DuckDB.

Per fault one line: `fault: cells expected E / found F / duplicated D / lost L / temp files visible T`
(found: cells whose last attempt is ok; duplicated: cells with more than one ok attempt; temp files
visible: files under the tables' folders that are not committed cell files). Lost and duplicated
must be 0. The cells are synthetic (tests/fault_cells.py: sleeps that kill, stop or starve their
own process) so that each fault lands where it should and the module runs in about a minute.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import fault_cells
import pytest
from conftest import ROOT, tiny_spec

from analysis.catalog import query
from analysis.claims import Claim
from analysis.store import TABLES, ResultStore, StoreNotWritable
from cluster.driver import SweepReport, run_sweep
from cluster.ray_runtime import cluster_resources
from matrix.spec import ResourcesSpec, parse_spec

SWEEP = "faults"
_COMMITTED = re.compile(r"^[0-9a-f]+-a\d+\.parquet$")


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False,
        # notice a lost node in ~1.5 s rather than ~30 s
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3}})
    worker = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c, worker
    ray.shutdown()
    c.shutdown()


def audit(fault: str, results: Path, expected: set[str], capsys) -> dict[str, int]:
    """The store as a reader sees it: DuckDB over every table, and what the readers' globs match."""
    runs = query(results, f"select cell_id, count(*) filter (status = 'ok') as ok from runs "
                          f"where sweep = '{SWEEP}' group by 1").to_pylist()
    latest = {r["cell_id"]: r["status"] for r in
              query(results, f"select cell_id, status from latest_runs where sweep = '{SWEEP}'").to_pylist()}
    for table in ("cells", "metrics"):      # every committed file reads whole
        query(results, f"select count(*) from {table}")
    # hidden names too (DuckDB's glob lists them): stricter than the readers' `*.parquet`
    visible = [Path(f).name for t in TABLES if (results / t).exists()
               for (f,) in duckdb.sql(f"select file from glob('{results}/{t}/*/*')").fetchall()]
    visible += [p.name for p in results.glob("*/*/.*")]
    found = {cid for cid, status in latest.items() if status == "ok"} & expected
    return _report(fault, {"expected": len(expected), "found": len(found),
                           "duplicated": sum(1 for r in runs if r["ok"] > 1), "lost": len(expected - found),
                           "temp": sum(1 for name in set(visible) if not _COMMITTED.match(name))}, capsys)


def _report(fault: str, counts: dict[str, int], capsys) -> dict[str, int]:
    with capsys.disabled():
        print(f"\n{fault}: cells expected {counts['expected']} / found {counts['found']} / duplicated "
              f"{counts['duplicated']} / lost {counts['lost']} / temp files visible {counts['temp']}")
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["temp"] == 0, counts
    return counts


def _drive(results: Path, cells, timeout: float | None = None, **resources) -> SweepReport:
    res = ResourcesSpec(**{"cpus_per_cell": 1, "max_retries": 1, **resources})
    report = SweepReport(SWEEP, len(cells), 0, 0)
    fault_cells.scheduler(ResultStore(results, SWEEP), cluster_resources(), res, report).run(cells)
    return report


def _runs(results: Path) -> list[dict]:
    return query(results, f"select cell_id, attempt, status, reason, error from runs where sweep = '{SWEEP}' "
                          "order by cell_id, attempt").to_pylist()


# a hung cell or build waits out its limit; the others get one no healthy 0.3 s cell reaches on a loaded CI box.
# A build's limit also covers its task process starting (a cell's starts once its actor is up): more room.
HUNG_LIMIT_S, HUNG_BUILD_LIMIT_S, LIMIT_S = 8, 20, 120


@pytest.mark.parametrize("fault, artifact, expected_reason", [
    ("kill", False, r"^ActorDiedError: "),               # SIGKILL of a running cell worker
    ("hang", False, rf"^timed out after {HUNG_LIMIT_S} s$"),   # SIGSTOP of it: only the time limit ends it
    ("oom", False, r"^MemoryError: "),                    # an allocation past its address-space limit
    ("kill", True, None),                                 # SIGKILL during a build: retried, then the cell runs
    ("hang", True, None),                                 # a stopped build: killed at its limit, retried
])
def test_a_fault_costs_one_failed_attempt_and_the_cell_still_finishes(cluster, tmp_path, capsys, fault, artifact,
                                                                      expected_reason):
    work = fault_cells.cells(4, str(tmp_path), seconds=0.3, fault=fault, artifact=artifact)
    results = tmp_path / "results"
    hung = fault == "hang"
    report = _drive(results, work, cell_timeout_s=HUNG_LIMIT_S if hung else LIMIT_S,
                    quantize_timeout_s=HUNG_BUILD_LIMIT_S if hung else LIMIT_S)
    assert (report.succeeded, report.failed) == (4, 0), report.failures
    audit(f"{fault} {'build' if artifact else 'cell'}", results, {c.cell_id for c in work}, capsys)
    runs = _runs(results)
    faulty = work[0].cell_id
    if artifact:      # a failed build is not a failed cell attempt: its retry built it
        assert all(r["status"] == "ok" and r["attempt"] == 1 for r in runs)
        builds = [json.loads(l) for l in (tmp_path / "starts.jsonl").read_text().splitlines()
                  if json.loads(l)["what"] == "build" and json.loads(l)["cell_id"] == faulty]
        assert len(builds) == 2                 # the faulty build, then its retry
        return
    mine = [r for r in runs if r["cell_id"] == faulty]
    assert [(r["attempt"], r["status"]) for r in mine] == [(1, "failed"), (2, "ok")]
    failed = mine[0]
    assert re.search(expected_reason, failed["reason"]), failed
    assert "\n" not in failed["reason"] and len(failed["reason"]) <= 300 and failed["error"]
    assert all(r["status"] == "ok" for r in runs if r["cell_id"] != faulty)


def test_a_build_that_keeps_failing_fails_its_cells_with_a_one_line_reason(cluster, tmp_path, capsys):
    work = fault_cells.cells(1, str(tmp_path), seconds=0.2, fault="hang", artifact=True)
    results = tmp_path / "results"
    # each fault fires once per tag: a second hang needs a second marker, so no retries here
    report = _drive(results, work, max_retries=0, quantize_timeout_s=HUNG_LIMIT_S)
    reason = f"quantization failed: timed out after {HUNG_LIMIT_S} s"       # no retry here: the short limit
    assert report.failed == 1 and report.failures == [(f"synthetic {work[0].label}", reason)]
    assert _runs(results)[0]["reason"] == reason


def _unwritable_roots(tmp_path: Path) -> list[Path]:
    """Roots no one can write, root included: a path under a plain file, and a read-only mount where
    this machine allows mounting (root ignores permission bits, so chmod would prove nothing)."""
    (tmp_path / "a-file").write_text("x")
    roots = [tmp_path / "a-file" / "results"]
    ro = tmp_path / "read-only"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=False,
                      capture_output=True).returncode == 0:
        roots.append(ro)
    return roots


def test_an_unwritable_store_fails_before_ray_starts_in_one_line(tmp_path, capsys, monkeypatch):
    import yaml

    import cluster.driver

    spec = tiny_spec("unwritable", methods=[{"method": "none"}])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    roots = _unwritable_roots(tmp_path)

    def too_late(*_):
        raise AssertionError("the store is checked before configs are read or Ray starts")
    try:
        for root in roots:
            with monkeypatch.context() as m:
                m.setattr(cluster.driver, "plan_sweep", too_late)
                m.setattr(cluster.driver, "connect", too_late)
                with pytest.raises(StoreNotWritable, match=f"^results store {root} is not writable: "):
                    run_sweep(parse_spec(spec), root)
            t0 = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "cluster.cli", "sweep", str(spec_path), "--results", str(root)],
                                 cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 2 and len(lines) == 1, (out.stdout, out.stderr)
            assert lines[0].startswith(f"results store {root} is not writable: ") and "Traceback" not in out.stderr
            left = list(root.rglob("*")) if root.is_dir() else []
            kind = "read-only mount" if root.name == "read-only" else "path under a file"
            _report(f"unwritable store ({kind}, {time.monotonic() - t0:.1f} s to exit 2)",
                    {"expected": 0, "found": 0, "duplicated": 0, "lost": 0, "temp": len(left)}, capsys)
    finally:
        if len(roots) > 1:
            subprocess.run(["umount", str(roots[1])], check=False)


def _driver(results: Path, address: str, folder: Path, **kw) -> subprocess.Popen:
    args = [sys.executable, str(Path(fault_cells.__file__)), "drive", "--results", str(results),
            "--address", address, "--dir", str(folder)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_driver_killed_inside_a_parquet_write_leaves_nothing_a_reader_sees(cluster, tmp_path, capsys):
    c, _ = cluster
    results = tmp_path / "results"
    # writes go cells, metrics, runs per cell: the 5th is the second cell's metrics file
    first = _driver(results, c.address, tmp_path, cells=4, seconds=0.3, kill_at_write=5)
    out, err = first.communicate(timeout=120)
    assert first.returncode == -9, err
    half = [p for p in results.rglob("*.tmp")]
    assert len(half) == 1 and half[0].name.startswith("."), half   # the half-written file, hidden from globs
    rerun = _driver(results, c.address, tmp_path, cells=4, seconds=0.3)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["succeeded"] == 3 and report["failed"] == 0      # the first cell was committed before the kill
    work = fault_cells.cells(4, str(tmp_path), 0.3)
    audit("kill inside a Parquet write", results, {c.cell_id for c in work}, capsys)


def test_two_sweeps_on_one_store_share_it_without_duplicates(cluster, tmp_path, capsys):
    c, _ = cluster
    results = tmp_path / "results"
    drivers = [_driver(results, c.address, tmp_path, cells=6, seconds=1.5)]
    deadline = time.monotonic() + 60
    while len(list(results.glob(f"claims/sweep={SWEEP}/cells/*/a1.json"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    # the second starts while the first holds every cell (and has run at most one or two)
    drivers.append(_driver(results, c.address, tmp_path, cells=6, seconds=1.5))
    reports = []
    for d in drivers:
        out, err = d.communicate(timeout=180)
        assert d.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["succeeded"] for r in reports) == 6 and reports[1]["elsewhere"] == 6 - reports[1]["succeeded"]
    assert reports[1]["elsewhere"] > 0            # the second found cells the first held, and left them
    written = [set(r["written"]) for r in reports]
    assert not (written[0] & written[1])          # no file written by both (none replaced another's)
    work = fault_cells.cells(6, str(tmp_path), 1.5)
    audit("two sweeps on one store", results, {c.cell_id for c in work}, capsys)
    starts = [json.loads(l) for l in (tmp_path / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 6                       # each cell computed once


def test_a_second_writer_waits_for_a_live_claim_and_takes_over_a_stale_one(cluster, tmp_path, capsys):
    results = tmp_path / "results"
    live, stale = fault_cells.cells(2, str(tmp_path), seconds=0.2)
    timeout = 2.0
    other = ResultStore(results, SWEEP, claim_timeout_s=timeout)     # a live writer in this process
    dead = ResultStore(results, SWEEP, claim_timeout_s=timeout)      # one on another host that stopped beating
    dead.fs.create_dir(f"{dead.claims.folder}/owners", recursive=True)
    (results / "claims" / f"sweep={SWEEP}" / "owners" / f"{dead.claims.run}.json").write_text(json.dumps(
        {"run": dead.claims.run, "host": "another-host", "pid": 1, "heartbeat": time.time()}))
    assert dead.claim(stale.cell_id) == 1
    report = SweepReport(SWEEP, 2, 0, 0)
    mine = ResultStore(results, SWEEP, claim_timeout_s=timeout)
    with other.claims.owning():
        assert other.claim(live.cell_id) == 1
        thread = threading.Thread(target=lambda: fault_cells.scheduler(
            mine, cluster_resources(), ResourcesSpec(cpus_per_cell=1, max_retries=0), report).run([live, stale]))
        t0 = time.monotonic()
        thread.start()
        time.sleep(1.0)
        assert report.ran == 0                    # both held by live writers: nothing runs
        other.record(live, 1, {"status": "ok"})   # the live writer finishes its cell and lets it go
        other.release(live.cell_id, 1)
        thread.join(timeout=60)
    took = time.monotonic() - t0
    assert not thread.is_alive()
    assert (report.succeeded, report.elsewhere) == (1, 1)
    assert took >= timeout - 1.0                  # the dead writer's claim was left alone until stale
    runs = {(r["cell_id"], r["attempt"]): r["status"] for r in _runs(results)}
    assert runs == {(live.cell_id, 1): "ok", (stale.cell_id, 2): "ok"}     # attempt 1 was the other's claim
    audit("a live and a stale claim", results, {live.cell_id, stale.cell_id}, capsys)


def test_losing_a_node_mid_cell_costs_a_retry_only(cluster, tmp_path, capsys):
    """Last in this module: the cluster keeps one node after it."""
    c, worker = cluster
    work = fault_cells.cells(4, str(tmp_path), seconds=3.0)
    results = tmp_path / "results"
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("report", _drive(results, work, max_retries=2)),
                              daemon=True)
    thread.start()
    starts = tmp_path / "starts.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:       # wait until a cell runs on the worker node
        if starts.exists() and any(json.loads(l)["node"] == worker.node_id for l in starts.read_text().splitlines()):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no cell started on the worker node")
    c.remove_node(worker)
    thread.join(timeout=120)
    assert not thread.is_alive()
    report = done["report"]
    assert (report.succeeded, report.failed) == (4, 0)
    failed = [r for r in _runs(results) if r["status"] == "failed"]
    assert failed and all(r["reason"] for r in failed)
    audit("lost node", results, {c.cell_id for c in work}, capsys)


@pytest.mark.parametrize("local", [True, False], ids=["local-exclusive-create", "object-store-write-then-list"])
def test_two_writers_never_get_the_same_attempt(tmp_path, local):
    import pyarrow.fs as pafs

    from analysis.claims import Claims

    a, b = (Claims(pafs.LocalFileSystem(), str(tmp_path), SWEEP, local=local) for _ in range(2))
    with a.owning(), b.owning():
        assert a.create("c0ffee", 1) and not b.create("c0ffee", 1)
        assert a.holds("c0ffee", 1) and not b.holds("c0ffee", 1)
        assert b.live(a.top("c0ffee"))                              # a beats: b must leave the cell alone
        assert b.create("c0ffee", 2) and not a.holds("c0ffee", 1)   # a takeover: the higher attempt wins
        a.release("c0ffee", 1)                                      # a superseded claim: nothing to let go
        b.release("c0ffee", 2)
        assert a.top("c0ffee") == Claim("c0ffee", 2, b.run, True) and not a.live(a.top("c0ffee"))
    assert not list(tmp_path.rglob("*.tmp"))
