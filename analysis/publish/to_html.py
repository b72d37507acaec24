"""index.html: one self-contained page (inline CSS, JS and SVG; nothing fetched when viewed).

Every string from the store goes through `_e` (html.escape) into markup, or through `_script_json`
into the embedded data block; SVG text is XML-escaped by matplotlib. The page's own script only
reorders and hides table rows: it never turns data into markup.
"""
from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analysis.leaderboard import COLUMNS as LEADERBOARD_COLUMNS
from analysis.generative import INTRO as GENERATIVE_INTRO
from analysis.generative import cell_text, groups, settings_lines
from analysis.caveats import MARK, footnotes, numbered, numbering
from analysis.leaderboard import DENSE, FLAGGED, SANITY, serving_profiles
from analysis.markdown import fmt, settings_line
from analysis.publish import to_json
from analysis.publish.model import PublishedResults
from analysis.publish.plots import render_plots


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _script_json(value: Any) -> str:
    """JSON that cannot end the <script> element it sits in nor break a JS parser (U+2028/9)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


@dataclass(frozen=True)
class Column:
    title: str
    key: str                        # the raw value sorting uses; the column shows where some row has one
    show: Callable[[dict], str]     # the cell's text, from the row
    numeric: bool = True


def _text(key: str, title: str) -> Column:
    return Column(title, key, lambda r: "–" if r.get(key) is None else str(r[key]), numeric=False)


def _num(key: str, title: str, spec: str) -> Column:
    return Column(title, key, lambda r: fmt(r.get(key), spec))


_DIMENSIONS = (_text("sweep", "sweep"), _text("model", "model"), _text("label", "cell"), _text("engine", "engine"),
               _text("kv_cache_dtype", "KV"))
# the figures: the printed leaderboard's columns (analysis.leaderboard.COLUMNS), sorted by their raw values
COLUMNS = _DIMENSIONS + tuple(Column(title, key, show) for title, key, show in LEADERBOARD_COLUMNS)


def _serving_columns(p: str) -> tuple[Column, ...]:
    return (
        *_DIMENSIONS[:4], _num("concurrency", "concurrency", "d"),
        Column("offered load", "request_rate", lambda r: "closed loop" if r["request_rate"] is None
               else f"{r['request_rate']:g} req/s"),
        _num(f"ttft_ms_{p}", f"TTFT {p} ms", ".1f"), _num(f"tpot_ms_{p}", f"TPOT {p} ms", ".2f"),
        _num("requests_per_s", "req/s", ".2f"), _num("output_tokens_per_s", "output tok/s", ".0f"),
        _num("goodput", "goodput req/s", ".2f"), _num("requests_failed", "failed", ".0f"),
    )


def _sort_key(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _table(table_id: str, columns: tuple[Column, ...], rows, marks: Callable[[dict], str] = lambda r: "") -> str:
    """A sortable table with its filter box. A dimension every row shares (one model, one engine) is said
    once above the table instead of on every row; a figure no row has is left out."""
    shared = [c for c in columns if not c.numeric and c.key != "label" and len(rows) > 1
              and len({r.get(c.key) for r in rows}) == 1]
    columns = tuple(c for c in columns if c not in shared and (not c.numeric or any(r.get(c.key) is not None
                                                                                     for r in rows)))
    head = "".join(f'<th data-type="{"num" if c.numeric else "text"}" tabindex="0">{_e(c.title)}</th>'
                   for c in columns)
    body = []
    for r in rows:
        tds = [f'<td data-v="{_e(_sort_key(r.get(c.key)))}"{" class=num" if c.numeric else ""}>'
               f'{_e(c.show(r))}{marks(r) if c.key == "label" else ""}</td>' for c in columns]
        body.append(f'<tr>{"".join(tds)}</tr>')
    common = "; ".join(f"{c.title} {c.show(rows[0])}" for c in shared)
    return ((f'<p class="shared">All rows: {_e(common)}</p>' if common else "") +
            f'<input type="search" class="filter" data-table="{table_id}" placeholder="filter rows…" '
            f'aria-label="filter rows">'
            f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _recommendation(m: PublishedResults) -> str:
    """recommend's own lines (as `qmx recommend` prints them), one list per model, coloured by verdict."""
    if m.gates is None:
        return ""
    from analysis.recommend import render

    parts = ['<section id="recommendation"><h2>Recommendation</h2>']
    for rec in m.recommendations:
        heading, *verdicts = render([rec]).split("\n")
        items = []
        for line in verdicts:
            kind, _, rest = line.strip().partition(":")
            state = "none" if rec.chosen is None and kind == "chosen" else kind
            items.append(f'<li class="{_e(state)}"><b>{_e(kind)}</b>: {_e(rest.strip())}</li>')
        parts.append(f'<h3>{_e(heading)}</h3><ul>{"".join(items)}</ul>')
    return "".join(parts) + "</section>"


def _plots(m: PublishedResults) -> str:
    figures = []
    for p in render_plots(m):
        body = p.svg if p.svg is not None else f'<p class="missing">{_e(p.note)}</p>'
        note = f'<figcaption>{_e(p.note)}</figcaption>' if p.svg is not None and p.note else ""
        figures.append(f'<figure id="plot-{_e(p.key)}" class="plot{"" if p.svg else " absent"}">'
                       f'<h3>{_e(p.title)}</h3>{body}{note}</figure>')
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(figures)}</div></section>'


def _cells_not_ranked(m: PublishedResults) -> str:
    out = []
    if m.skipped:
        items = "".join(f"<li>{_e(s['model'])} <b>{_e(s['label'])}</b> ({_e(s['engine'])}): {_e(s['reason'])}</li>"
                        for s in m.skipped)
        out.append(f'<section id="skipped"><h2>Skipped cells ({len(m.skipped)})</h2>'
                   f'<p>The validity rules skipped these; nothing ran.</p><ul>{items}</ul></section>')
    if m.failed:
        items = "".join(f"<li><details><summary>{_e(f.model)} <b>{_e(f.label)}</b> ({_e(f.engine)}), attempt "
                        f"{f.attempt}: {_e(f.summary)}</summary><pre>{_e(f.error)}</pre></details></li>"
                        for f in m.failed)
        out.append(f'<section id="failed"><h2>Failed cells ({len(m.failed)})</h2><ul>{items}</ul></section>')
    return "".join(out)


def _provenance(m: PublishedResults) -> str:
    p = m.provenance
    settings = "; ".join(", ".join(f"{k} {v}" for k, v in s.items()) for s in p.perplexity_settings)
    facts = [
        ("device", ", ".join(p.devices) or "–"), ("host", ", ".join(p.hosts) or "–"),
        ("GPU driver", "not recorded (the runs table holds the device name only)"),
        ("project commit", ", ".join(p.commits) or "not recorded by these runs"),
        ("libraries", "; ".join(f"{name} {', '.join(v)}" for name, v in p.libraries) or "–"),
        ("perplexity", settings or "–"),
        ("runs", f"{p.first_run or '–'} to {p.last_run or '–'}"),
        ("store", m.source + (f", sweep {m.sweep}" if m.sweep else "")), ("published", m.generated_at),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return f'<section id="provenance"><h2>Provenance</h2><dl>{rows}</dl></section>'


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;
background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:12px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:14px;margin:12px 0 6px}
.sub{color:#5b6b7c;margin:0 0 12px}
section{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:4px 16px 12px;margin:16px 0}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 7px;border-bottom:1px solid #e8ebef;text-align:left;vertical-align:top}
td.num{text-align:right;white-space:nowrap}
th{background:#eef1f5;cursor:pointer;user-select:none;position:sticky;top:0;white-space:nowrap}
th:hover{background:#e1e7ee}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tbody tr:hover{background:#f3f7fc}
.filter{margin:6px 0 8px;padding:5px 8px;width:280px;border:1px solid #c5ccd4;border-radius:4px;font:inherit}
.tag{display:inline-block;margin-left:6px;padding:0 5px;border-radius:3px;font-size:11px;background:#e3f1e6;
color:#22663a}
.tag.best{background:#fff1c9;color:#7a5a00}.tag.base{background:#e8ecf2;color:#3d4b5c}
.tag.caveat,.tag.sanity{background:#fde2e1;color:#8a1f1c}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{margin:0;padding:8px;border:1px solid #eceff3;border-radius:4px}
figure svg{max-width:100%;height:auto;display:block}
figcaption,.missing,.note{color:#5b6b7c;font-size:12px}
.note{margin:2px 0}
.shared{margin:6px 0 0;font-weight:600}
.missing{font-style:italic}
#recommendation li.chosen{color:#22663a}#recommendation li.none{color:#a3262a}#recommendation li.rejected{color:#6b4d4d}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:13px}dt{color:#5b6b7c}dd{margin:0}
pre{white-space:pre-wrap;font-size:12px;background:#f6f7f9;padding:8px;max-height:320px;overflow:auto}
.scroll{overflow-x:auto}
"""

# Sorting reads each cell's data-v (the raw value), filtering the rows' text: data never becomes markup.
_JS = """
(function(){
  function key(td, numeric){
    var v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    if (numeric) { var n = parseFloat(v); return isNaN(n) ? null : n; }
    return v.toLowerCase();
  }
  function sortBy(table, th){
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute('data-type') === 'num';
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    table.querySelectorAll('th').forEach(function(h){ h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a.cells[index], numeric), y = key(b.cells[index], numeric);
      if (x === null) return y === null ? 0 : 1;      // missing values last, either way
      if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){
    var table = th.closest('table');
    th.addEventListener('click', function(){ sortBy(table, th); });
    th.addEventListener('keydown', function(e){ if (e.key === 'Enter') sortBy(table, th); });
  });
  document.querySelectorAll('input.filter').forEach(function(box){
    var table = document.getElementById(box.getAttribute('data-table'));
    box.addEventListener('input', function(){
      var terms = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
      Array.prototype.forEach.call(table.tBodies[0].rows, function(r){
        var text = r.textContent.toLowerCase();
        r.hidden = !terms.every(function(t){ return text.indexOf(t) >= 0; });
      });
    });
  });
})();
"""


# the table's tag for each Pareto front the model holds (model.FRONT_AXES)
FRONT_TAGS = {"decode_tokens_per_s": ("speed front", "on the Pareto front of perplexity vs decode tok/s"),
              "weight_bytes": ("memory front", "on the Pareto front of perplexity vs weight memory")}


def _caveat_marks(m: PublishedResults) -> Callable[[dict], str]:
    """A row's caveats, each its footnote number with the reason on hover (the footnotes say it in full)."""
    numbers, reasons = numbering(m.caveats), {c.caveat_id: c.reason for c in m.caveats}
    return lambda r: "".join(f'<span class="tag caveat" title="{_e(reasons[i])}">{MARK}{n}</span>'
                             for n, i in numbered(r.get("caveat_ids"), numbers))


def _marks(m: PublishedResults) -> Callable[[dict], str]:
    chosen = {rec.chosen.cell_id for rec in m.recommendations if rec.chosen}
    caveat_marks = _caveat_marks(m)

    def marks(r: dict) -> str:
        out = '<span class="tag best" title="recommended under the gates">recommended</span>' \
            if r["cell_id"] in chosen else ""
        if r.get("is_baseline"):
            out += '<span class="tag base" title="what Δ, speedup and memory reduction are against">baseline</span>'
        for axis, (tag, title) in FRONT_TAGS.items():
            if r["cell_id"] in m.fronts.get(axis, ()):
                out += f'<span class="tag" title="{_e(title)}">{_e(tag)}</span>'
        if r.get("sanity_flags"):
            out += f'<span class="tag sanity" title="{_e(SANITY)}">{FLAGGED} sanity</span>'
        return out + caveat_marks(r)
    return marks


def _conventions(m: PublishedResults) -> str:
    """What every figure was measured under, once above the table (as the printed leaderboard does)."""
    lines = sorted({settings_line("Perplexity", r["perplexity_settings"]) for r in m.rows if r.get("perplexity_settings")})
    lines += sorted({settings_line("Speed", r["speed_settings"]) for r in m.rows if r.get("speed_settings")})
    if any(r.get("ran_dense") for r in m.rows):
        lines.append(f"{DENSE} ran dense: the engine decompressed the quantized weights at load, so its speed and "
                     f"memory are a 16-bit model's, not the format's.")
    lines += footnotes(m.caveats, m.rows)
    return "".join(f'<p class="note">{_e(line)}</p>' for line in lines)


def render(m: PublishedResults) -> str:
    title = "quantmatrix leaderboard" + (f": {m.sweep}" if m.sweep else "")
    counts = f"Cells ranked: {len(m.rows)}; skipped: {len(m.skipped)}; failed: {len(m.failed)}"
    served = ""
    if m.serving:
        profiles = "".join(f'<p class="note">{_e(line)}</p>' for line in
                           [*serving_profiles([r["settings"] for r in m.serving]), *footnotes(m.caveats, m.serving)])
        table = _table("serving-table", _serving_columns(m.serving_percentile), m.serving, _caveat_marks(m))
        served = f'<section id="serving"><h2>Served latency</h2>{profiles}<div class="scroll">{table}</div></section>'
    generative = ""
    if m.generative is not None and m.generative.rows:
        parts = []
        for i, (sweep, model, rows, shown) in enumerate(groups(m.generative)):
            columns = _DIMENSIONS + tuple(Column(c.title, c.title, lambda r, c=c: cell_text(r, c)) for c in shown)
            notes = "".join(f'<p class="note">{_e(line)}</p>' for line in
                            [*settings_lines(m.generative, sweep, model), *footnotes(m.caveats, rows)])
            parts.append(f'<h3>{_e(model)} (sweep {_e(sweep)})</h3>{notes}<div class="scroll">'
                         f'{_table(f"generative-table-{i}", columns, rows, _caveat_marks(m))}</div>')
        generative = (f'<section id="generative"><h2>Generation and long context</h2>'
                      f'<p class="note">{_e(GENERATIVE_INTRO)}</p>{"".join(parts)}</section>')
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no network at view time, and no script but the page's own
        ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
         "script-src 'unsafe-inline'\">"),
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        (f'<h1>{_e(title)}</h1><p class="sub">{_e(counts)}. Ranked by perplexity within each model; Δ, speedup '
         f'and memory reduction are against the model\'s baseline on the same engine. Click a header to sort.</p>'),
        _recommendation(m),
        (f'<section id="leaderboard"><h2>Leaderboard</h2>{_conventions(m)}<div class="scroll">'
         f'{_table("leaderboard-table", COLUMNS, m.rows, _marks(m))}</div></section>'),
        _plots(m), generative, served, _cells_not_ranked(m), _provenance(m),
        f'<script type="application/json" id="qmx-data">{_script_json(to_json.document(m))}</script>',
        f"<script>{_JS}</script></main></body></html>\n",
    ])
