"""`qmx`: the command line. Thin: each command parses, delegates, and prints."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from analysis.markdown import plural

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="quantmatrix: a distributed benchmarking matrix for LLM quantization.")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RESULTS = typer.Option("results", "--results", "-r", help="results store: a folder, or a URI (file://, s3://, gs://)")
MAX_CELLS = typer.Option(10_000, "--max-cells", min=1, help="refuse a spec whose dimensions multiply to more cells "
                                                            "(counted before anything is expanded)")


def _fail(message: str, code: int = 2):
    """One line on stderr (never read as rich markup: specs and SQL carry brackets), then exit."""
    err.print(message, style="red", markup=False, highlight=False)
    raise typer.Exit(code)


def out(text: str) -> None:
    """Plain text on stdout, markup-free."""
    console.print(text, markup=False, highlight=False)


# the choices of the enumerated arguments: typer makes a Literal a choice and refuses anything else
# (exit 2, the choices listed)
QueryFormat = Literal["table", "csv", "json"]
SchemaSubject = Literal["spec", "results"]
RankFormat = Literal["markdown", "json"]


def _version(value: bool) -> None:
    if value:
        from jobs.versions import project_version
        console.print(f"quantmatrix {project_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="print quantmatrix's version and commit, then exit")):
    pass   # the options of `qmx` itself; the help text is the Typer app's


def _load(spec_path: Path, max_cells: int | None = None):
    """The validated spec, its cell count checked against `max_cells`; a spec error is one message, exit 2."""
    from matrix import SpecError, load_spec
    from matrix.expand import check_matrix_size
    try:
        parsed = load_spec(spec_path)
        if max_cells is not None:
            check_matrix_size(parsed, max_cells)
        return parsed
    except SpecError as e:
        _fail(str(e))


@app.command()
def sweep(spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
          results: str = RESULTS,
          address: str = typer.Option(None, "--address", help="Ray cluster address (default: start an embedded Ray)"),
          max_cells: int = MAX_CELLS,
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="show the libraries' own output from the workers (progress bars, logs)")):
    """Validate, expand and run a sweep; each finished cell lands in Parquet at once. Reruns resume.
    Shows each running build and cell with its stage, and a line per finished cell (one plain line per event
    when stdout is not a terminal). Ctrl-C stops cleanly: finished cells stay, a rerun resumes (exit code 130)."""
    from analysis.store import StoreNotWritable
    from cluster import noise
    from cluster.driver import ModelConfigError, PlacementError, SweepInterrupted, run_sweep
    from cluster.progress import SweepConsole

    if verbose:
        for line in noise.explain():
            console.print(line, style="dim", markup=False, highlight=False)
    else:
        noise.quiet()
    parsed = _load(spec, max_cells)
    try:
        with SweepConsole(console, parsed.name) as shown:
            report = run_sweep(parsed, results, address, shown, log_to_driver=verbose)
    except (PlacementError, StoreNotWritable, ModelConfigError) as e:
        _fail(str(e))
    except SweepInterrupted as e:
        err.print(str(e), style="yellow", markup=False, highlight=False)
        raise typer.Exit(130)
    # labels and reasons carry the spec's strings: Text, never markup
    for s in report.skipped_cells:
        console.print(Text.assemble(("skipped", "yellow"), f" {s.cell.model} {s.cell.label}: {s.reason}"))
    for label, error in report.failures:
        console.print(Text.assemble(("failed", "red"), f" {label}: {error}"))
    console.print(f"{plural(report.cells, 'cell')} ({report.already_done} already done), {report.skipped} skipped; "
                  f"ran {report.ran}: {report.succeeded} ok, {report.failed} failed; "
                  f"{plural(report.quantizations, 'quantization')}; {plural(report.workers_started, 'worker')}; "
                  f"{report.seconds:.1f} s", highlight=False)
    if report.elsewhere:      # claimed by another live sweep on this store, and finished by it
        console.print(f"{plural(report.elsewhere, 'cell')} run meanwhile by another sweep on this store",
                      highlight=False)
    if shown.clock.seconds:
        console.print(f"time by stage, summed over builds and cells: {shown.clock.summary()}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def plan(spec: Path = typer.Argument(..., help="sweep spec (YAML)"), max_cells: int = MAX_CELLS):
    """Show the cells with estimated memory against the target GPU, the skipped cells with reasons,
    and the quantization jobs after dedup. Reads model configs only, never weights."""
    from cluster.driver import plan_sweep, read_configs
    from matrix.plan import build_plan

    from cluster.driver import ModelConfigError

    parsed = _load(spec, max_cells)
    try:
        configs = read_configs(parsed)
    except ModelConfigError as e:   # an unreachable hub model or unreadable config: say which, no traceback
        _fail(str(e))
    expansion = plan_sweep(parsed, configs)
    p = build_plan(parsed, expansion, configs)
    _print_plan(p)


def _print_plan(p) -> None:
    from analysis.markdown import fmt_bytes     # one byte formatter for the plan, progress and the tables

    target = f"target GPU {p.target}" if p.target else "no target GPU"
    by_model: dict[str, list] = {}
    for r in p.rows:
        by_model.setdefault(r.cell.model, []).append(r)
    console.print(f"{p.name}: {len(p.rows)} cells ({target})", markup=False, highlight=False)
    # one table per model, its id in the title: a long hub id in a column wraps over lines at 80 columns
    for model, rows in by_model.items():
        table = Table(title=f"{escape(model)}: {len(rows)} cells", title_justify="left")
        table.add_column("cell", overflow="fold")
        table.add_column("engine")
        table.add_column("kv", no_wrap=True)
        table.add_column("artifact", no_wrap=True, min_width=12)
        table.add_column("est. weights", justify="right", no_wrap=True)
        table.add_column("fits", justify="right", no_wrap=True)
        for r in rows:
            c = r.cell
            artifact = "—" if c.is_baseline else "at load" if r.quantizes_at_load else c.artifact_key
            weights = fmt_bytes(r.estimate.weight_bytes) if r.estimate else "?"
            fit = "" if r.fit is None else \
                f"[green]yes {r.fit.fraction:.0%}[/green]" if r.fit.fits else f"[red]no {r.fit.fraction:.0%}[/red]"
            table.add_row(Text(c.label), c.engine, c.kv_cache_dtype, artifact, weights, fit)
        console.print(table)
    if p.skipped:
        # grouped by reason: a big matrix skips hundreds of cells for a handful of reasons
        skipped = Table(title=f"{len(p.skipped)} skipped cells")
        skipped.add_column("reason", overflow="fold")
        skipped.add_column("cells", justify="right")
        skipped.add_column("e.g.", overflow="fold")
        by_reason: dict[str, list] = {}
        for s in p.skipped:
            by_reason.setdefault(s.reason, []).append(s.cell)
        for reason, cells in by_reason.items():
            shown = ", ".join(dict.fromkeys(f"{c.label} ({c.engine})" for c in cells[:3]))
            skipped.add_row(Text(reason), str(len(cells)), Text(shown + (", …" if len(cells) > 3 else "")))
        console.print(skipped)
    at_load = sum(1 for r in p.rows if r.quantizes_at_load and not r.cell.is_baseline)
    console.print(f"{len(p.rows)} cells, {len(p.skipped)} skipped, {p.excluded} excluded by include/exclude",
                  highlight=False)
    console.print(f"{p.quantization_jobs} quantization job(s) after dedup for {p.artifact_cells} artifact cell(s); "
                  f"{at_load} cells quantize at load (bitsandbytes)", highlight=False)
    if p.target:
        console.print(f"{p.fitting} of {len(p.rows)} cells fit {p.target} (weights + KV cache for {p.kv_tokens} "
                      f"tokens, within 90% of memory)", highlight=False)
    else:
        console.print("no target GPU: set resources.accelerator_type or resources.gpu_memory_gib to check fit",
                      highlight=False)


@app.command()
def query(sql: str = typer.Argument(..., help="one read-only SQL statement"), results: str = RESULTS,
          fmt: QueryFormat = typer.Option("table", "--format", "-f")):
    """Run SQL on DuckDB over the results (views: cells, runs, metrics, results, leaderboard, serving, skipped, …)."""
    from analysis.catalog import NoResults, query as run_query

    import duckdb

    from matrix.shown import bounded

    try:
        out = run_query(results, sql)
    except (NoResults, PermissionError, ValueError) as e:
        _fail(str(e))
    except duckdb.Error as e:   # DuckDB parser/binder/permission errors: one line, not a traceback
        _fail(bounded(f"{type(e).__name__}: {' '.join(str(e).split())}"))
    rows = out.to_pylist()
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, default=_json_value, indent=1) + "\n")
    elif fmt == "csv":
        import csv
        # the csv module, not pyarrow's writer: that one refuses list, struct and map columns
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(out.column_names)
        writer.writerows([("" if v is None else _plain(v)) for v in row.values()] for row in rows)
    else:
        table = Table()
        for name in out.column_names:
            table.add_column(escape(name))
        for row in rows:
            table.add_row(*(Text(_cell_text(v)) for v in row.values()))    # Text: a value is never markup
        console.print(table)


def _json_value(v):
    """What json.dumps cannot write itself: bytes as hex, intervals, decimals, times and the rest as text."""
    return v.hex() if isinstance(v, (bytes, bytearray)) else str(v)


def _plain(v) -> str:
    """A value as one text field: nested values (lists, structs, maps) as JSON, bytes as hex."""
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v, default=_json_value)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def _cell_text(v) -> str:
    """A query value for the table: whole numbers (byte counts, token counts stored as DOUBLE) as integers,
    other floats to 4 significant digits."""
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() or abs(v) >= 1e4 else f"{v:.4g}"
    return _plain(v)


@app.command()
def leaderboard(results: str = RESULTS, sweep: str = typer.Option(None, "--sweep", help="one sweep only")):
    """Print the ranked leaderboard as Markdown."""
    from analysis.catalog import NoResults
    from analysis.leaderboard import leaderboard_markdown

    try:
        sys.stdout.write(leaderboard_markdown(results, sweep) + "\n")
    except NoResults as e:
        _fail(str(e))


@app.command()
def schema(what: SchemaSubject = typer.Argument("spec")):
    """Print the JSON Schema of the sweep spec, or the results tables' Parquet schemas."""
    if what == "spec":
        from matrix.spec import spec_json_schema
        sys.stdout.write(json.dumps(spec_json_schema(), indent=2) + "\n")
    else:
        from analysis.store import SCHEMA_VERSION, SCHEMAS
        console.print(f"results schema version {SCHEMA_VERSION}")
        for name, s in SCHEMAS.items():
            console.print(f"[bold]{name}[/bold]")
            for f in s:
                console.print(f"  {f.name}: {f.type}", highlight=False)


# -- deciding: rank, pareto, recommend, compare (analysis/ does the work; these parse and print) ---------

SWEEP = typer.Option(None, "--sweep", help="one sweep only")
WHERE = typer.Option(None, "--where", help="SQL condition over the leaderboard's columns, e.g. \"engine = 'vllm'\"")
CONCURRENCY = typer.Option(None, "--concurrency", "-c", help="load level for served metrics (serving_*)")


def _decide(fn, results: str, sweep: str | None):
    """Run an analysis over a connected store; its expected errors become one line and exit 2."""
    from analysis.catalog import NoResults, check_sweep, connect
    from analysis.measures import MeasureError
    from analysis.recommend import GatesError
    try:
        con = connect(results)
        check_sweep(con, sweep)
        return fn(con)
    except (NoResults, MeasureError, GatesError, ValueError) as e:
        _fail(str(e))
    except Exception as e:      # DuckDB binder errors from --where: the message, not a traceback
        import duckdb
        if isinstance(e, duckdb.Error):
            _fail(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        raise


def _markdown_rows(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """(header, key) columns as a Markdown table; floats to 4 significant digits, bytes in MiB/GiB."""
    from analysis.markdown import fmt_bytes, table

    def cell(key: str, v) -> str:
        if v is None:
            return "–"
        if key.endswith("bytes"):
            return fmt_bytes(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(table([h for h, _ in columns], [[cell(k, r.get(k)) for _, k in columns] for r in rows],
                            left=("model", "cell", "engine", "kv")))


_IDENTITY = [("model", "model"), ("cell", "label"), ("engine", "engine"), ("kv", "kv_cache_dtype")]


def _mark_caveats(rows: list[dict], noted) -> str:
    """Marks each row's label with its caveats' numbers (`bf16 ‡1`); returns their footnotes, to print
    under the table."""
    from analysis.caveats import footnotes, marks, numbering
    numbers = numbering(noted)
    for r in rows:
        r["label"] += marks(r.get("caveat_ids"), numbers)
    return "".join(f"{line}\n" for line in footnotes(noted, rows))


@app.command()
def rank(by: str = typer.Option(..., "--by", help="metric or leaderboard column, e.g. kl_divergence_mean"),
         results: str = RESULTS, sweep: str = SWEEP, where: str = WHERE, concurrency: int = CONCURRENCY,
         fmt: RankFormat = typer.Option("markdown", "--format", "-f")):
    """Cells ordered by one metric, best first (its direction is the metric's own), with the
    baseline-relative columns beside it. Cells whose min–max ranges overlap share a rank."""
    from analysis.caveats import caveats
    from analysis.rank import rank as run_rank

    (target, context, rows), noted = _decide(lambda con: (run_rank(con, by, sweep, where, concurrency),
                                                          caveats(con)), results, sweep)
    if fmt == "json":
        keys = ["rank", "tied", "sweep", "model", "label", "engine", "kv_cache_dtype", target.column,
                *(m.column for m in context), "caveat_ids", "cell_id"]
        sys.stdout.write(json.dumps([{k: r.get(k) for k in keys} for r in rows], default=str, indent=1) + "\n")
        return
    cols = [("rank", "rank_text"), *_IDENTITY, *((m.header, m.column) for m in (target, *context))]
    for r in rows:
        r["rank_text"] = "–" if r["rank"] is None else f"={r['rank']}" if r["tied"] else str(r["rank"])
    notes = _mark_caveats(rows, noted)
    out(f"Ranked by {target.describe()}; '=' marks cells whose measured ranges overlap.")
    sys.stdout.write(_markdown_rows(cols, rows) + "\n" + notes)


@app.command()
def pareto(x: str = typer.Option(..., "--x", help="first axis: a metric or leaderboard column"),
           y: str = typer.Option(..., "--y", help="second axis"),
           z: str = typer.Option(None, "--z", help="optional third axis"),
           results: str = RESULTS, sweep: str = SWEEP, where: str = WHERE, concurrency: int = CONCURRENCY):
    """The non-dominated cells per model and engine on the chosen axes, each in its own direction."""
    from analysis.caveats import caveats, ids_on
    from analysis.pareto import pareto as run_pareto

    def run(con):
        measures, table = run_pareto(con, axes, sweep, concurrency, where)
        doubted = ids_on(con, measures, sweep)
        rows = [r | {"caveat_ids": doubted.get((r["sweep"], r["cell_id"]))} for r in table.to_pylist()]
        return measures, rows, caveats(con)
    axes = [a for a in (x, y, z) if a]
    measures, rows, noted = _decide(run, results, sweep)
    notes = _mark_caveats(rows, noted)
    out("Pareto set per model and engine on " + ", ".join(m.describe() for m in measures) + ":")
    sys.stdout.write(_markdown_rows([*_IDENTITY, *((m.header, m.column) for m in measures)], rows) + "\n" + notes)


@app.command()
def recommend(results: str = RESULTS, sweep: str = SWEEP, where: str = WHERE,
              gates: Path = typer.Option(None, "--gates", help="YAML file of gates (the flags' names, _ for -)"),
              max_ppl_delta_pct: float = typer.Option(None, help="perplexity at most this % above the baseline"),
              max_kl: float = typer.Option(None, help="mean KL divergence to the baseline at most this (nats)"),
              min_recovery_pct: float = typer.Option(None, help="lm-eval accuracy at least this % of the baseline's"),
              sla_ttft_p95_ms: float = typer.Option(None, help="served TTFT p95 at most this (ms), at --concurrency"),
              sla_tpot_p95_ms: float = typer.Option(None, help="served TPOT p95 at most this (ms), at --concurrency"),
              concurrency: int = CONCURRENCY,
              memory_gib: float = typer.Option(None, help="weights at most this many GiB"),
              optimize: str = typer.Option(None, help="decode | throughput | goodput | memory (default decode)")):
    """The fastest (or smallest) configuration that passes every gate, the runner-up, and for each
    rejected cell the gates it failed. Exit 0 when every model has a passing cell, 3 when one has none."""
    from analysis.recommend import load_gates, recommend as run_recommend, render

    def decide(con):
        g = load_gates(gates, max_ppl_delta_pct=max_ppl_delta_pct, max_kl=max_kl, min_recovery_pct=min_recovery_pct,
                       sla_ttft_p95_ms=sla_ttft_p95_ms, sla_tpot_p95_ms=sla_tpot_p95_ms, concurrency=concurrency,
                       memory_gib=memory_gib, optimize=optimize)
        return run_recommend(con, g, sweep, where)
    recs = _decide(decide, results, sweep)
    out(render(recs))
    if not recs or any(r.chosen is None for r in recs):
        raise typer.Exit(3)


@app.command()
def compare(before: str = typer.Argument(..., help="results store (or store#sweep) to compare against"),
            after: str = typer.Argument(..., help="results store (or store#sweep) to check"),
            threshold: float = typer.Option(5.0, "--threshold", help="% change in the worse direction that is a regression"),
            metric: list[str] = typer.Option([], "--metric", "-m", help="only these metrics (repeatable)"),
            all_rows: bool = typer.Option(False, "--all", help="print every matched metric, not only regressions"),
            allow_missing: bool = typer.Option(False, "--allow-missing",
                                               help="a cell with no successful result in AFTER is not a regression")):
    """Cells matched by identity across two runs, per-metric deltas, regressions flagged.
    Exit 1 when a metric regressed beyond the threshold, or a cell measured in BEFORE failed or is
    missing in AFTER (unless --allow-missing)."""
    from analysis.catalog import NoResults
    from analysis.compare import Side, compare as run_compare, render

    try:
        result = run_compare(Side.parse(before), Side.parse(after), threshold, tuple(metric))
    except (NoResults, ValueError) as e:
        _fail(str(e))
    sys.stdout.write(render(result, all_rows, allow_missing) + "\n")
    if result.failed(allow_missing):
        raise typer.Exit(1)


@app.command()
def layers(results: str = RESULTS, sweep: str = SWEEP,
           cell: str = typer.Option(None, "--cell", help="one cell: its id, or the start of it"),
           model: str = typer.Option(None, "--model", help="one model, its id as the spec names it"),
           n: int = typer.Option(20, "-n", min=1, help="how many layers to show")):
    """The most sensitive linear layers, worst first: each layer's output error against the baseline's on the
    same inputs (evaluation.layer_sensitivity), the candidates to keep in 16 bits."""
    def fetch(con):
        where, params = [], []
        for flag, column, value in (("--model", "model", model), ("--cell", "cell_id", cell)):
            if value is None:
                continue
            test = "starts_with(cell_id, ?)" if column == "cell_id" else f"{column} = ?"
            if not con.execute(f"SELECT count(*) FROM layer_sensitivity WHERE {test}", [value]).fetchone()[0]:
                known = [r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM layer_sensitivity ORDER BY 1 "
                                                   "LIMIT 11").fetchall()]
                shown = ", ".join(map(repr, known[:10])) + (", ..." if len(known) > 10 else "")
                raise ValueError(f"{flag}: no layer_sensitivity rows for {value!r}; "
                                 + (f"known: {shown}" if known else "none in these results: add "
                                    "evaluation.layer_sensitivity to the spec (hf engine)"))
            where.append(test)
            params.append(value)
        if sweep is not None:
            where.append("sweep = ?")
            params.append(sweep)
        cond = " AND ".join(where) or "true"
        total = con.execute(f"SELECT count(*) FROM layer_sensitivity WHERE {cond}", params).fetchone()[0]
        if not total:
            raise ValueError("no layer_sensitivity rows in these results: add evaluation.layer_sensitivity to the "
                             "spec (hf engine)")
        rows = con.execute(f"SELECT model, label, layer, kind, bits, params, rel_error, cell_id FROM layer_sensitivity "
                           f"WHERE {cond} ORDER BY rel_error DESC, model, label, layer LIMIT ?", [*params, n]).fetchall()
        return total, rows

    total, rows = _decide(fetch, results, sweep)
    table = Table(title=f"{len(rows)} most sensitive of {plural(total, 'layer')}: ||cell(x) - base(x)|| / "
                        "||base(x)|| on the base's inputs", title_justify="left")
    for name, justify in (("model", "left"), ("cell", "left"), ("layer", "left"), ("kind", "left"),
                          ("bits", "right"), ("params", "right"), ("rel_error", "right"), ("cell_id", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for model_id, label, layer, kind, bits, params_, rel_error, cell_id in rows:
        table.add_row(Text(model_id), Text(label), Text(layer), Text(kind), "?" if bits is None else str(bits),
                      f"{params_:,}", f"{rel_error:.4g}", Text(cell_id))
    console.print(table)


# publish takes recommend's very gate flags: its typer options, declared once (there)
_GATE_FLAGS = inspect.signature(recommend).parameters


@app.command()
def publish(out_dir: Path = typer.Option(..., "--out", help="folder to write the page and tables into"),
            results: str = RESULTS, sweep: str = SWEEP,
            gates: Path = _GATE_FLAGS["gates"].default,
            max_ppl_delta_pct: float = _GATE_FLAGS["max_ppl_delta_pct"].default,
            max_kl: float = _GATE_FLAGS["max_kl"].default,
            min_recovery_pct: float = _GATE_FLAGS["min_recovery_pct"].default,
            sla_ttft_p95_ms: float = _GATE_FLAGS["sla_ttft_p95_ms"].default,
            sla_tpot_p95_ms: float = _GATE_FLAGS["sla_tpot_p95_ms"].default, concurrency: int = CONCURRENCY,
            memory_gib: float = _GATE_FLAGS["memory_gib"].default, optimize: str = _GATE_FLAGS["optimize"].default):
    """Write leaderboard.md, leaderboard.csv, leaderboard.json and index.html (one self-contained page:
    sortable table, plots, the recommendation under the gates if given, skipped and failed cells, provenance)."""
    from analysis.publish import publish as write_all
    from analysis.recommend import load_gates

    flags = {"max_ppl_delta_pct": max_ppl_delta_pct, "max_kl": max_kl, "min_recovery_pct": min_recovery_pct,
             "sla_ttft_p95_ms": sla_ttft_p95_ms, "sla_tpot_p95_ms": sla_tpot_p95_ms, "concurrency": concurrency,
             "memory_gib": memory_gib, "optimize": optimize}
    wanted = gates is not None or any(v is not None for v in flags.values())

    def write(_con):
        chosen = load_gates(gates, **flags) if wanted else None
        try:
            return write_all(results, out_dir, sweep, chosen)
        except OSError as e:          # --out is a file, or not writable: say so, no traceback
            _fail(f"--out {out_dir}: cannot write there: {e.strerror or e}")
    for path in _decide(write, results, sweep):
        out(str(path))


@app.command()
def caveat(reason: str = typer.Argument(..., help="why the figures are not to be trusted (printed beside them)"),
           where: str = typer.Option(..., "--where", help="SQL condition over the results view's columns plus "
                                                          "concurrency and request_rate, e.g. \"concurrency = 128\""),
           results: str = RESULTS, sweep: str = SWEEP):
    """Note a reason, found after they were measured, not to trust some figures of a sweep. Nothing is
    rewritten: the reason is stored beside the figures; the leaderboard, the published page, rank, pareto
    and `qmx query` mark them, and recommend passes no cell on them. A rerun of a cell measures afresh."""
    from analysis.catalog import NoResults
    from analysis.caveats import CaveatError, note_caveat

    try:
        noted, path = note_caveat(results, sweep, where, reason)
    except (NoResults, CaveatError, OSError) as e:
        _fail(str(e))
    out(f"caveat {noted.caveat_id} on {plural(noted.figures, 'figure')} of {plural(noted.cells, 'cell')}: "
        f"{noted.reason}")
    out(f"(remove it by deleting {path})")


@app.command()
def compact(results: str = RESULTS, sweep: str = typer.Option(None, "--sweep", help="one sweep only (default: all)")):
    """Merge each sweep's per-cell Parquet files into one file per table, so queries open a few files, not
    thousands. Refused while a sweep writes to it; run it when no query is reading the store either."""
    from analysis.catalog import NoResults, check_sweep, connect
    from analysis.store import ResultStore, StoreBusy

    try:
        con = connect(results)
        check_sweep(con, sweep)
        names = [sweep] if sweep else [r[0] for r in con.execute("SELECT DISTINCT sweep FROM runs ORDER BY 1").fetchall()]
        for name in names:
            merged = ResultStore(results, name).compact()
            out(f"{name}: " + (", ".join(f"{t} {n} files -> 1" for t, n in merged.items()) or "already compact"))
    except (NoResults, StoreBusy, OSError) as e:
        _fail(str(e))


if __name__ == "__main__":
    app()
