"""Leaderboard: the ranked table of a sweep, as Markdown (for terminals, READMEs and PRs)."""
from __future__ import annotations

from pathlib import Path

from analysis.catalog import connect


def _fmt_bytes(n) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _fmt(v, spec: str, signed: bool = False) -> str:
    if v is None:
        return "–"
    return format(v, ("+" if signed else "") + spec)


COLUMNS = ("rank", "model", "cell", "perplexity", "Δ ppl %", "decode tok/s", "speedup", "weights", "peak mem",
           "quant s")


def render_markdown(rows: list[dict], skipped: list[dict] = ()) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---:" if c != "cell" and c != "model" else "---"
                                                              for c in COLUMNS]) + "|"]
    rank_by_model: dict[str, int] = {}
    for r in rows:
        rank_by_model[r["model"]] = rank_by_model.get(r["model"], 0) + 1
        cells = [str(rank_by_model[r["model"]]), r["model"], r["label"], _fmt(r["perplexity"], ".3f"),
                 _fmt(r["perplexity_delta_pct"], ".2f", signed=True), _fmt(r["decode_tokens_per_s"], ".1f"),
                 _fmt(r["speedup"], ".2f") + ("×" if r["speedup"] is not None else ""), _fmt_bytes(r["weight_bytes"]),
                 _fmt_bytes(r["peak_memory_bytes"]), _fmt(r["quantize_seconds"], ".1f")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if skipped:
        lines += ["", "Skipped by the validity rules:", ""]
        lines += [f"- {s['model']} {s['label']}: {s['reason']}" for s in skipped]
    return "\n".join(lines)


def leaderboard_markdown(results: str | Path, sweep: str | None = None) -> str:
    con = connect(results)
    where, params = ("WHERE sweep = ?", [sweep]) if sweep else ("", [])
    rows = con.sql(f"SELECT * FROM leaderboard {where}", params=params).to_arrow_table().to_pylist()
    skipped = con.sql(f"SELECT * FROM skipped {where} ORDER BY model, label", params=params).to_arrow_table().to_pylist()
    settings = con.execute(f"SELECT DISTINCT settings FROM results WHERE metric = 'perplexity' "
                           f"{'AND sweep = ?' if sweep else ''}", params).fetchall()
    header = "Ranked by perplexity (lower is better); Δ, speedup and memory reduction are vs the model's bf16 baseline."
    notes = [f"Perplexity settings: {s[0]}" for s in settings]
    return "\n".join([header, *notes, "", render_markdown(rows, skipped)])
