"""`qmx`: the command line. Thin: each command parses, delegates, and prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="quantmatrix: a distributed benchmarking matrix for LLM quantization.")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RESULTS = typer.Option("results", "--results", "-r", help="results store: a folder, or a URI (file://, s3://, gs://)")


def _load(spec_path: Path):
    from matrix import SpecError, load_spec
    try:
        return load_spec(spec_path)
    except SpecError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2)


@app.command()
def sweep(spec: Path = typer.Argument(..., help="sweep spec (YAML)"),
          results: str = RESULTS,
          address: str = typer.Option(None, "--address", help="Ray cluster address (default: start an embedded Ray)")):
    """Validate, expand and run a sweep; each finished cell lands in Parquet at once. Reruns resume.
    Ctrl-C stops cleanly: finished cells stay, a rerun resumes (exit code 130)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cluster.driver import PlacementError, SweepInterrupted, run_sweep

    parsed = _load(spec)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task(f"sweep {parsed.name}", total=None)

            def on_progress(_: str, done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = run_sweep(parsed, results, address, on_progress)
    except PlacementError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2)
    except SweepInterrupted as e:
        err.print(f"[yellow]{e}[/yellow]", highlight=False)
        raise typer.Exit(130)
    for s in report.skipped_cells:
        console.print(f"[yellow]skipped[/yellow] {s.cell.model} {s.cell.label}: {s.reason}", highlight=False)
    for label, error in report.failures:
        console.print(f"[red]failed[/red] {label}: {error}", highlight=False)
    console.print(f"{report.cells} cells ({report.already_done} already done), {report.skipped} skipped; "
                  f"ran {report.ran}: {report.succeeded} ok, {report.failed} failed; "
                  f"{report.quantizations} quantizations; {report.workers_started} workers; "
                  f"{report.seconds:.1f} s", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def plan(spec: Path = typer.Argument(..., help="sweep spec (YAML)")):
    """Show the cells with estimated memory against the target GPU, the skipped cells with reasons,
    and the quantization jobs after dedup. Reads model configs only, never weights."""
    from cluster.driver import plan_sweep, read_configs
    from matrix.plan import build_plan

    parsed = _load(spec)
    try:
        configs = read_configs(parsed)
        expansion = plan_sweep(parsed, configs)
    except Exception as e:   # an unreachable hub model or unreadable config: say which, no traceback
        err.print(f"[red]cannot read the model configs: {type(e).__name__}: {e}[/red]", highlight=False)
        raise typer.Exit(2)
    p = build_plan(parsed, expansion, configs)
    _print_plan(p)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _print_plan(p) -> None:
    target = f"target GPU {p.target}" if p.target else "no target GPU"
    table = Table(title=f"{p.name}: {len(p.rows)} cells ({target})")
    table.add_column("model", overflow="fold")
    table.add_column("cell", overflow="fold")
    table.add_column("engine")
    table.add_column("kv")
    table.add_column("artifact", no_wrap=True, min_width=12)
    table.add_column("est. weights", justify="right", no_wrap=True)
    table.add_column("fits", justify="right", no_wrap=True)
    for r in p.rows:
        c = r.cell
        artifact = "—" if c.is_baseline else "at load" if r.quantizes_at_load else c.artifact_key
        weights = _gib(r.estimate.weight_bytes) if r.estimate else "?"
        fit = "" if r.fit is None else \
            f"[green]yes {r.fit.fraction:.0%}[/green]" if r.fit.fits else f"[red]no {r.fit.fraction:.0%}[/red]"
        table.add_row(c.model, c.label, c.engine, c.kv_cache_dtype, artifact, weights, fit)
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
            skipped.add_row(reason, str(len(cells)), shown + (", …" if len(cells) > 3 else ""))
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
          fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json")):
    """Run SQL on DuckDB over the results (views: cells, runs, metrics, results, leaderboard, serving, skipped, …)."""
    from analysis.catalog import NoResults, query as run_query

    try:
        out = run_query(results, sql)
    except (NoResults, PermissionError, ValueError) as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2)
    except Exception as e:   # DuckDB parser/binder errors: show them, not a traceback
        err.print(f"[red]{type(e).__name__}: {e}[/red]", highlight=False)
        raise typer.Exit(2)
    if fmt == "json":
        sys.stdout.write(json.dumps(out.to_pylist(), default=str, indent=1) + "\n")
    elif fmt == "csv":
        import pyarrow.csv as pc
        pc.write_csv(out, sys.stdout.buffer)
    else:
        table = Table()
        for name in out.column_names:
            table.add_column(name)
        for row in out.to_pylist():
            table.add_row(*("NULL" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                            for v in row.values()))
        console.print(table)


@app.command()
def leaderboard(results: str = RESULTS, sweep: str = typer.Option(None, "--sweep", help="one sweep only")):
    """Print the ranked leaderboard as Markdown."""
    from analysis.catalog import NoResults
    from analysis.leaderboard import leaderboard_markdown

    try:
        sys.stdout.write(leaderboard_markdown(results, sweep) + "\n")
    except NoResults as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2)


@app.command()
def schema(what: str = typer.Argument("spec", help="spec | results")):
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


if __name__ == "__main__":
    app()
