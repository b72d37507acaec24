"""Leaderboard: the ranked table of a sweep, as Markdown (for terminals, READMEs and PRs).

The settings every figure was measured under are printed once above the tables; each model gets a
table of its own, ranked by perplexity; columns no cell measured are left out; speed shows its
spread over the repeats where the evaluator recorded one; a cell whose engine ran the quantized
weights dense is marked, since its speed and memory are not the quantized format's.
"""
from __future__ import annotations

import json
from pathlib import Path

from analysis.catalog import check_sweep, connect
from analysis.caveats import caveats, footnotes, marks, numbering
from analysis.generative import INTRO as GENERATIVE_INTRO
from analysis.generative import generative_table
from analysis.generative import render_markdown as render_generative_markdown
from analysis.markdown import fmt, fmt_bytes, settings_line, table
from matrix.spec import ServingSpec, absent_means

DENSE = "†"
FLAGGED = "⚠"
SANITY = ("a sanity gate flagged the cell (characters per token, baseline perplexity or window length out of "
          "range): its runs.notes say which; do not trust its figures unread")


def _ppl(r: dict) -> str:
    v, se = r["perplexity"], r.get("perplexity_stderr")
    return fmt(v, ".3f") + (f" ± {se:.2f}" if v is not None and se is not None else "")


def _spread(r: dict, col: str, spec: str) -> str:
    v, lo, hi = r[col], r.get(f"{col}_min"), r.get(f"{col}_max")
    return fmt(v, spec) + (f" ({lo:{spec}}–{hi:{spec}})" if v is not None and lo is not None and hi is not None
                           else "")


def _times(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


# (header, the leaderboard column that decides whether the column is shown, how a row prints it)
COLUMNS = (
    ("perplexity", "perplexity", _ppl),
    ("Δ ppl %", "perplexity_delta_pct", lambda r: fmt(r["perplexity_delta_pct"], ".2f", signed=True)),
    ("KL mean", "kl_divergence_mean", lambda r: fmt(r["kl_divergence_mean"], ".4f")),
    ("acc. recovery %", "accuracy_recovery_pct", lambda r: fmt(r["accuracy_recovery_pct"], ".1f")),
    ("decode tok/s", "decode_tokens_per_s", lambda r: _spread(r, "decode_tokens_per_s", ".1f")),
    ("speedup", "speedup", lambda r: _times(r["speedup"])),
    ("TTFT ms", "ttft_ms", lambda r: fmt(r["ttft_ms"], ".1f")),
    ("batch tok/s", "throughput_tokens_per_s", lambda r: fmt(r["throughput_tokens_per_s"], ".0f")),
    ("MBU", "mbu", lambda r: "–" if r["mbu"] is None else f"{r['mbu']:.0%}"),
    ("weights", "weight_bytes", lambda r: fmt_bytes(r["weight_bytes"]) + (f" {DENSE}" if r["ran_dense"] else "")),
    ("mem. reduction", "memory_reduction", lambda r: _times(r["memory_reduction"])),
    ("peak mem", "peak_memory_bytes", lambda r: fmt_bytes(r["peak_memory_bytes"])),
    ("quant s", "quantize_seconds", lambda r: fmt(r["quantize_seconds"], ".1f")),
)


def calib_text(calibration: str | dict | None) -> str | None:
    """A cell's calibration as `corpus/samples×seq_len` (None for a method that takes none)."""
    c = json.loads(calibration) if isinstance(calibration, str) else calibration
    return None if not c else f"{c.get('corpus')}/{c.get('samples')}×{c.get('seq_len')}"


def calibration_line(texts: set[str]) -> str:
    return "Calibration (calibrated methods), corpus/samples×seq_len tokens: " + ", ".join(sorted(texts))


def render_markdown(rows: list[dict], skipped: list[dict] = (), failed: list[dict] = (),
                    numbers: dict[str, int] | None = None) -> str:
    """One table per model, ranked as the rows come (the view orders by perplexity). Where a table's
    cells differ in calibration (a calibration dimension), a `calib` column tells them apart; where
    they share one, it is a line above the table (or above all tables: `leaderboard_markdown`).
    `numbers` are the caveats' footnote numbers (analysis.caveats.numbering)."""
    shown = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    engines = len({r["engine"] for r in rows}) > 1
    every_calib = {t for r in rows if (t := calib_text(r.get("calibration")))}
    out: list[str] = []
    sweeps = len({r["sweep"] for r in rows}) > 1
    # one table (and one ranking) per sweep and model: the view orders by sweep first, and two sweeps'
    # cells were measured under their own settings and baselines
    for sweep, model in dict.fromkeys((r["sweep"], r["model"]) for r in rows):
        mine = [r for r in rows if (r["sweep"], r["model"]) == (sweep, model)]
        calibs = {t for r in mine if (t := calib_text(r.get("calibration")))}
        varies = len(calibs) > 1
        header = ["rank", "cell", *(["calib"] if varies else []), *(["engine"] if engines else []),
                  *(c[0] for c in shown)]
        body = [[str(i), r["label"] + (f" {FLAGGED}" if r.get("sanity_flags") else "")
                 + marks(r.get("caveat_ids"), numbers or {}),
                 *([calib_text(r.get("calibration")) or "–"] if varies else []),
                 *([r["engine"]] if engines else []), *(c[2](r) for c in shown)]
                for i, r in enumerate(mine, 1)]
        # one calibration here but another elsewhere: say which, above this table
        own = [calibration_line(calibs), ""] if len(calibs) == 1 and len(every_calib) > 1 else []
        out += [f"### {model}" + (f" (sweep {sweep})" if sweeps else ""), "", *own,
                *table(header, body, left=("cell", "calib", "engine")), ""]
    if skipped:
        out += ["Skipped by the validity rules:", ""]
        out += [f"- {s['model']} {s['label']}: {s['reason']}" for s in skipped]
        out.append("")
    if failed:
        out += ["Failed (last attempt):", ""]
        out += [f"- {f['model']} {f['label']} (attempt {f['attempt']}): {f['reason'] or _last_line(f['error'])}"
                for f in failed]
        out.append("")
    return "\n".join(out).rstrip()


def _last_line(text: str | None) -> str:
    """A traceback's last line: the exception and its message (rows written before `reason` existed)."""
    return text.strip().splitlines()[-1][:200] if text and text.strip() else "no error recorded"


SERVING_COLUMNS = ("cell", "load", "TTFT p50 / p95 / p99 ms", "TPOT p50 / p95 / p99 ms", "req/s", "output tok/s",
                   "goodput req/s", "ok / failed")


def _load_level(r: dict) -> str:
    rate = r["request_rate"]
    return f"c={r['concurrency']}" + (f", {rate:g} req/s Poisson" if rate else " closed loop")


def _triple(r: dict, name: str, spec: str) -> str:
    return " / ".join(fmt(r.get(f"{name}_{p}"), spec) for p in ("p50", "p95", "p99"))


def render_serving_markdown(rows: list[dict], numbers: dict[str, int] | None = None) -> str:
    """Served latency, one table per model, one row per cell and load level (empty when nothing was served)."""
    out: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        body = [[r["label"] + marks(r.get("caveat_ids"), numbers or {}), _load_level(r),
                 _triple(r, "ttft_ms", ".1f"), _triple(r, "tpot_ms", ".2f"),
                 fmt(r["requests_per_s"], ".2f"), fmt(r["output_tokens_per_s"], ".0f"), fmt(r["goodput"], ".2f"),
                 f"{fmt(r['requests_ok'], '.0f')} / {fmt(r['requests_failed'], '.0f')}"] for r in rows
                if r["model"] == model]
        out += [f"### {model}", "", *table(list(SERVING_COLUMNS), body, left=("cell", "load")), ""]
    return "\n".join(out).rstrip()


_SENT = {"text": "as text (tokenized by the server, inside TTFT)", "token_ids": "as token ids (TTFT without tokenizing)"}
_WRITTEN_BEFORE = absent_means(ServingSpec)      # what a figure stored before the field measured


def serving_profiles(settings: list[str]) -> list[str]:
    """One line per distinct load profile: what a served row's figures are comparable under."""
    out = []
    for raw in settings:
        s = json.loads(raw)
        sent = s.get("prompt_format", _WRITTEN_BEFORE["prompt_format"])
        out.append(f"Served by the cell's engine ({s.get('server_batching')} batching): {s.get('requests')} requests "
                   f"per level, prompt {s.get('prompt_tokens')} tokens sent {_SENT[sent]}, "
                   f"{s.get('output_tokens')} output tokens; "
                   f"goodput = requests/s with TTFT ≤ {s.get('sla_ttft_ms')} ms and TPOT ≤ {s.get('sla_tpot_ms')} ms.")
    return sorted(set(out))


def leaderboard_markdown(results: str | Path, sweep: str | None = None) -> str:
    con = connect(results)
    check_sweep(con, sweep)
    where, params = ("WHERE sweep = ?", [sweep]) if sweep else ("", [])
    rows = con.sql(f"SELECT * FROM leaderboard {where}", params=params).to_arrow_table().to_pylist()
    calibration = {(c["sweep"], c["cell_id"]): c["calibration"] for c in con.sql(
        f"SELECT DISTINCT ON (sweep, cell_id) sweep, cell_id, calibration FROM cells {where}",
        params=params).to_arrow_table().to_pylist()}
    rows = [{**r, "calibration": calibration.get((r["sweep"], r["cell_id"]))} for r in rows]
    skipped = con.sql(f"SELECT * FROM skipped {where} ORDER BY model, label", params=params).to_arrow_table().to_pylist()
    failed = con.sql(f"SELECT * FROM failed {where} ORDER BY model, label", params=params).to_arrow_table().to_pylist()
    out = ["Ranked by perplexity within each model (lower is better); Δ, speedup and memory reduction are against "
           "the model's unquantized baseline on the same engine, measured under the same settings."]
    out += sorted({settings_line("Perplexity", r["perplexity_settings"]) for r in rows if r["perplexity_settings"]})
    out += sorted({settings_line("Speed", r["speed_settings"]) for r in rows if r["speed_settings"]})
    calibs = {t for r in rows if (t := calib_text(r["calibration"]))}
    if len(calibs) == 1:     # shared by every calibrated cell: said once; several: a column (render_markdown)
        out.append(calibration_line(calibs))
    if any(r["perplexity_stderr"] is not None for r in rows):
        out.append("perplexity: ± its standard error over the scored windows.")
    if any(r["decode_tokens_per_s_min"] is not None for r in rows):
        out.append("decode tok/s: median (min–max) over the repeats.")
    if any(r["sanity_flags"] for r in rows):
        out.append(f"{FLAGGED} {SANITY}.")
    if any(r["ran_dense"] for r in rows):
        out.append(f"{DENSE} ran dense: the engine decompressed the quantized weights at load (weights in use "
                   f"> 1.25 × stored), so its speed and memory are a 16-bit model's, not the format's.")
    noted = caveats(con)
    numbers = numbering(noted)
    out += footnotes(noted, rows)
    out += ["", render_markdown(rows, skipped, failed, numbers)]
    generative = generative_table(con, where.removeprefix("WHERE ") or "true", params, [r["cell_id"] for r in rows])
    if generative.rows:
        out += ["", "## Generation and long context", "", GENERATIVE_INTRO, *footnotes(noted, generative.rows), "",
                render_generative_markdown(generative, numbers)]
    served = con.sql(f"SELECT * FROM serving {where}", params=params).to_arrow_table().to_pylist()
    if served:
        out += ["", "## Served latency", "", *serving_profiles([r["settings"] for r in served]),
                *footnotes(noted, served), "", render_serving_markdown(served, numbers)]
    return "\n".join(out)
