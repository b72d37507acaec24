"""The generation and long-context table: what log-likelihood and perplexity miss (GSM8K exact match,
JSON validity, long-context perplexity, passkey retrieval), one row per cell that measured any of it.

A figure measured under several settings (long-context perplexity at two window sizes, the needle at
each prompt length) gets one column per setting, named after the setting that tells them apart.
Units and directions stay the store's (each evaluator declares them once); this only says what a
column is called, how it prints, and under which settings each sweep and model measured it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from analysis.markdown import fmt, settings_line, table


@dataclass(frozen=True)
class Figure:
    name: str                  # in the line saying what it was measured under (split: the column titles)
    header: str                # its column; "{}" takes the value of `split_by`
    split_by: str | None       # the setting that makes one column per value
    spec: str                  # how the value prints
    stderr: str | None = None  # the metric holding its standard error, where the evaluator records one


# metric -> how it is shown (jobs.evaluate.gsm8k, json_output, long_context), in column order
FIGURES = {
    "gsm8k_exact_match": Figure("GSM8K", "GSM8K EM", None, ".2f", "gsm8k_exact_match_stderr"),
    "json_valid_fraction": Figure("JSON valid", "JSON valid", None, ".2f"),
    "json_schema_fraction": Figure("JSON schema", "JSON schema", None, ".2f"),
    "long_context_perplexity": Figure("Long-context perplexity", "ppl @{} tok", "context", ".2f",
                                      "long_context_perplexity_stderr"),
    "needle_accuracy": Figure("Needle (passkey)", "needle @{} tok", "length", ".2f"),
}
_STDERRS = {f.stderr: metric for metric, f in FIGURES.items() if f.stderr}
# settings a row or column already says (engine, KV dtype) or that only describe the cell (its dtype,
# its max positions): left out of the lines of what a figure was measured under
_PER_CELL = ("engine", "kv_cache_dtype", "compute_dtype", "max_positions")

INTRO = ("What log-likelihoods miss, from each cell's own greedy generations: GSM8K exact match ± its standard "
         "error, the share of JSON answers that parse (valid) and that match the asked-for keys and types "
         "(schema), perplexity of long windows ± its standard error where several were scored, and passkey "
         "retrieval at growing prompt lengths; a KV column appears where the KV-cache dtype varies.")


@dataclass(frozen=True)
class Column:
    title: str
    spec: str


@dataclass(frozen=True)
class GenerativeTable:
    columns: tuple[Column, ...]              # figure columns, in FIGURES order then by setting value
    rows: tuple[dict[str, Any], ...]         # sweep, model, label, engine, kv_cache_dtype, cell_id, then
    #                                          column title -> value and "<title> ±" -> its standard error
    settings: tuple[tuple[str, str, str, str], ...]   # (sweep, model, figure or column, settings JSON less
    #                                                    _PER_CELL and the split setting), distinct


def _column(metric: str, settings: dict[str, Any]) -> tuple[tuple[int, float], Column]:
    figure = FIGURES[metric]
    value = settings.get(figure.split_by) if figure.split_by else None
    number = isinstance(value, (int, float))
    order = (list(FIGURES).index(metric), float(value) if number else 0.0)
    shown = f"{value:g}" if number else value
    return order, Column(figure.header.format(shown) if figure.split_by else figure.header, figure.spec)


def generative_table(con, where: str = "true", params: list | None = None,
                     order: list[str] | None = None) -> GenerativeTable:
    """The table from the `results` view under `where`; rows in the cell order `order` (cell ids: the
    leaderboard's ranking), else by sweep, model and label."""
    names = [*FIGURES, *_STDERRS]
    marks = ", ".join("?" for _ in names)
    found = con.sql(f"SELECT sweep, model, label, engine, kv_cache_dtype, cell_id, metric, value, settings, caveat_ids "
                    f"FROM results WHERE metric IN ({marks}) AND ({where})",
                    params=[*names, *(params or [])]).to_arrow_table().to_pylist()
    columns: dict[Column, tuple[int, float]] = {}
    shared: dict[tuple[str, str, str, str], tuple[int, float]] = {}     # -> its column's place: names in order
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in found:
        metric = _STDERRS.get(r["metric"], r["metric"])
        settings = json.loads(r["settings"] or "{}")
        rank, column = _column(metric, settings)
        row = rows.setdefault((r["sweep"], r["cell_id"]), {k: r[k] for k in (
            "sweep", "model", "label", "engine", "kv_cache_dtype", "cell_id")} | {"caveat_ids": []})
        row["caveat_ids"] = sorted({*row["caveat_ids"], *(r["caveat_ids"] or ())})     # those of its figures here
        if r["metric"] in _STDERRS:
            row[f"{column.title} ±"] = r["value"]
            continue
        columns[column] = rank
        row[column.title] = r["value"]
        figure = FIGURES[metric]
        rest = {k: v for k, v in settings.items() if k not in (*_PER_CELL, figure.split_by)}
        if rest:
            shared[(r["sweep"], r["model"], column.title if figure.split_by else figure.name,
                    json.dumps(rest, sort_keys=True))] = rank
    position = {cell: i for i, cell in enumerate(order or [])}
    ordered = sorted(rows.values(), key=lambda r: (r["sweep"], r["model"], position.get(r["cell_id"], len(position)),
                                                   r["label"]))
    return GenerativeTable(tuple(sorted(columns, key=columns.get)), tuple(ordered),
                           tuple(sorted(shared, key=lambda k: (shared[k], k))))


def settings_lines(t: GenerativeTable, sweep: str, model: str) -> list[str]:
    """What this sweep's figures of this model were measured under: one line per distinct convention,
    naming every figure or column measured under it."""
    names: dict[str, list[str]] = {}
    for s, m, name, raw in t.settings:
        if (s, m) == (sweep, model):
            names.setdefault(raw, []).append(name)
    return sorted(settings_line(", ".join(dict.fromkeys(n)), raw) for raw, n in names.items())


def groups(t: GenerativeTable) -> list[tuple[str, str, list[dict[str, Any]], list[Column]]]:
    """(sweep, model, its rows, the columns any of them has), in row order."""
    out = []
    for sweep, model in dict.fromkeys((r["sweep"], r["model"]) for r in t.rows):
        mine = [r for r in t.rows if (r["sweep"], r["model"]) == (sweep, model)]
        out.append((sweep, model, mine, [c for c in t.columns if any(r.get(c.title) is not None for r in mine)]))
    return out


def cell_text(row: dict[str, Any], column: Column) -> str:
    v, se = row.get(column.title), row.get(f"{column.title} ±")
    return fmt(v, column.spec) + (f" ± {se:{column.spec}}" if v is not None and se is not None else "")


def render_markdown(t: GenerativeTable, numbers: dict[str, int] | None = None) -> str:
    """One table per sweep and model, under the lines of what it was measured with; a KV column where the
    KV-cache dtype varies (its damage shows here). `numbers`: the caveats' (analysis.caveats.numbering)."""
    from analysis.caveats import marks

    out: list[str] = []
    for sweep, model, mine, shown in groups(t):
        kv = len({r["kv_cache_dtype"] for r in mine}) > 1
        header = ["cell", *(["KV"] if kv else []), "engine", *(c.title for c in shown)]
        body = [[r["label"] + marks(r["caveat_ids"], numbers or {}), *([r["kv_cache_dtype"]] if kv else []), r["engine"],
                 *(cell_text(r, c) for c in shown)] for r in mine]
        out += [f"### {model} (sweep {sweep})", "", *settings_lines(t, sweep, model), "",
                *table(header, body, left=("cell", "KV", "engine")), ""]
    return "\n".join(out).rstrip()
