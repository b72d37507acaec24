"""Leaderboard: the ranked table of a sweep, as Markdown (for terminals, READMEs and PRs)."""
from __future__ import annotations

import json
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


SERVING_COLUMNS = ("model", "cell", "load", "TTFT p50 / p99 ms", "TPOT p50 / p99 ms", "req/s", "output tok/s",
                   "goodput req/s", "ok / failed")


def _load_level(r: dict) -> str:
    rate = r["request_rate"]
    return f"c={r['concurrency']}" + (f", {rate:g} req/s Poisson" if rate else " closed loop")


def render_serving_markdown(rows: list[dict]) -> str:
    """Served latency, one row per cell and load level (empty when no cell was served)."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(SERVING_COLUMNS) + " |",
             "|" + "|".join("---" if c in ("model", "cell", "load") else "---:" for c in SERVING_COLUMNS) + "|"]
    for r in rows:
        cells = [r["model"], r["label"], _load_level(r),
                 f"{_fmt(r['ttft_ms_p50'], '.1f')} / {_fmt(r['ttft_ms_p99'], '.1f')}",
                 f"{_fmt(r['tpot_ms_p50'], '.2f')} / {_fmt(r['tpot_ms_p99'], '.2f')}",
                 _fmt(r["requests_per_s"], ".2f"), _fmt(r["output_tokens_per_s"], ".0f"), _fmt(r["goodput"], ".2f"),
                 f"{_fmt(r['requests_ok'], '.0f')} / {_fmt(r['requests_failed'], '.0f')}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _serving_header(settings: list[str]) -> list[str]:
    """One line per distinct load profile: what a served row's figures are comparable under."""
    out = []
    for raw in settings:
        s = json.loads(raw)
        out.append(f"Served by the cell's engine ({s.get('server_batching')} batching): {s.get('requests')} requests "
                   f"per level, prompt {s.get('prompt_tokens')} tokens, {s.get('output_tokens')} output tokens; "
                   f"goodput = requests/s with TTFT ≤ {s.get('sla_ttft_ms')} ms and TPOT ≤ {s.get('sla_tpot_ms')} ms.")
    return sorted(set(out))


def leaderboard_markdown(results: str | Path, sweep: str | None = None) -> str:
    con = connect(results)
    where, params = ("WHERE sweep = ?", [sweep]) if sweep else ("", [])
    rows = con.sql(f"SELECT * FROM leaderboard {where}", params=params).to_arrow_table().to_pylist()
    skipped = con.sql(f"SELECT * FROM skipped {where} ORDER BY model, label", params=params).to_arrow_table().to_pylist()
    settings = con.execute(f"SELECT DISTINCT settings FROM results WHERE metric = 'perplexity' "
                           f"{'AND sweep = ?' if sweep else ''}", params).fetchall()
    header = "Ranked by perplexity (lower is better); Δ, speedup and memory reduction are vs the model's bf16 baseline."
    notes = [f"Perplexity settings: {s[0]}" for s in settings]
    out = [header, *notes, "", render_markdown(rows, skipped)]
    served = con.sql(f"SELECT * FROM serving {where}", params=params).to_arrow_table().to_pylist()
    if served:
        out += ["", "## Served latency", "", *_serving_header([r["settings"] for r in served]), "",
                render_serving_markdown(served)]
    return "\n".join(out)
