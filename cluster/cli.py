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

RESULTS = typer.Option(Path("results"), "--results", "-r", help="results folder (Parquet store)")


def _load(spec_path: Path):
    from matrix import SpecError, load_spec
    try:
        return load_spec(spec_path)
    except SpecError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2)


@app.command()
def sweep(spec: Path = typer.Argument(..., help="sweep spec (YAML)"), results: Path = RESULTS,
          address: str = typer.Option(None, "--address", help="Ray cluster address (default: start an embedded Ray)")):
    """Validate, expand and run a sweep; each finished cell lands in Parquet at once. Reruns resume."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cluster.driver import run_sweep

    parsed = _load(spec)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(f"sweep {parsed.name}", total=None)

        def on_progress(_: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = run_sweep(parsed, results, address, on_progress)
    for s in report.skipped_cells:
        console.print(f"[yellow]skipped[/yellow] {s.cell.model} {s.cell.label}: {s.reason}", highlight=False)
    for label, error in report.failures:
        console.print(f"[red]failed[/red] {label}: {error}", highlight=False)
    console.print(f"{report.cells} cells ({report.already_done} already done), {report.skipped} skipped; "
                  f"ran {report.ran}: {report.succeeded} ok, {report.failed} failed; "
                  f"{report.quantizations} quantizations; {report.seconds:.1f} s", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def plan(spec: Path = typer.Argument(..., help="sweep spec (YAML)")):
    """Show the cells a spec expands to, the skipped ones with reasons, and the quantization jobs."""
    from cluster.driver import plan_sweep

    expansion = plan_sweep(_load(spec))
    table = Table(title="cells")
    for col in ("cell_id", "model", "cell", "engine", "artifact"):
        table.add_column(col)
    for c in expansion.cells:
        table.add_row(c.cell_id, c.model, c.label, c.engine, c.artifact_key)
    console.print(table)
    for s in expansion.skipped:
        console.print(f"[yellow]skipped[/yellow] {s.cell.model} {s.cell.label}: {s.reason}", highlight=False)
    console.print(f"{len(expansion.cells)} cells, {len(expansion.skipped)} skipped, "
                  f"{len(expansion.artifact_keys)} distinct artifacts")


@app.command()
def query(sql: str = typer.Argument(..., help="one read-only SQL statement"), results: Path = RESULTS,
          fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json")):
    """Run SQL on DuckDB over the results (views: cells, runs, metrics, results, leaderboard, skipped)."""
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
def leaderboard(results: Path = RESULTS, sweep: str = typer.Option(None, "--sweep", help="one sweep only")):
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
        from matrix.spec import SweepSpec
        sys.stdout.write(json.dumps(SweepSpec.model_json_schema(), indent=2) + "\n")
    else:
        from analysis.store import SCHEMA_VERSION, SCHEMAS
        console.print(f"results schema version {SCHEMA_VERSION}")
        for name, s in SCHEMAS.items():
            console.print(f"[bold]{name}[/bold]")
            for f in s:
                console.print(f"  {f.name}: {f.type}", highlight=False)


if __name__ == "__main__":
    app()
