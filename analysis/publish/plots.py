"""The page's plots: matplotlib figures rendered to inline SVG (text stays text, no fonts embedded).

Each plot is a function of the results model returning a `Plot` (its SVG, or None with the reason it
is left out), registered in PLOTS in the order the page shows them.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analysis.caveats import MARK
from analysis.publish.model import PublishedResults

_RC = {
    "svg.fonttype": "none",        # text as <text>, not glyph paths: searchable, small, selectable
    "text.parse_math": False,      # a label holding `$` is text, not mathtext
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],   # each <text>'s font-family; DejaVu ships with matplotlib
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_MIB = 2**20


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    svg: str | None            # an <svg> element, ready to inline
    note: str = ""             # why it is missing, or how to read it


def _render(key: str, draw: Callable, size=(6.4, 3.8), ncols: int = 1) -> str:
    """`draw(fig, axes)` on a fresh Figure, as an <svg> element. No pyplot: no global backend or figure state."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC | {"svg.hashsalt": key}):   # stable ids, distinct per plot on one page
        fig = Figure(figsize=size)
        draw(fig, fig.subplots(1, ncols))
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]           # drop the XML declaration and DOCTYPE: it is inlined in HTML


def _groups(rows, key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _hollow(ax, points: list[tuple[float, float]], colour) -> None:
    """Points whose figures carry a caveat (analysis.caveats): drawn hollow over their filled marker."""
    if points:
        ax.scatter(*zip(*points), s=34, facecolors="white", edgecolors=colour, linewidths=1.2, zorder=4)


_HOLLOW_NOTE = f"Hollow points: figures under a caveat ({MARK} in the tables, with the reason)."


def _cell_name(r: dict, rows) -> str:
    """`label (engine)`, with the model in front where the rows hold several."""
    several = len({o["model"] for o in rows}) > 1
    return f"{r['model'] + ': ' if several else ''}{r['label']} ({r['engine']})"


def _quality(rows) -> tuple[str, str]:
    """Δ perplexity % where every cell has a baseline (comparable across models), else raw perplexity."""
    if rows and all(r["perplexity_delta_pct"] is not None for r in rows):
        return "perplexity_delta_pct", "perplexity Δ % vs baseline (lower is better)"
    return "perplexity", "perplexity (lower is better)"


def _scatter(m: PublishedResults, key: str, title: str, x: str, x_label: str, scale: float, x_higher: bool) -> Plot:
    rows = [r for r in m.rows if r[x] is not None and r["perplexity"] is not None]
    if not rows:
        return Plot(key, title, None, f"no cell has both perplexity and {x}")
    y, y_label = _quality(rows)

    def draw(fig, ax):
        for (model, engine), group in _groups(rows, lambda r: (r["model"], r["engine"])).items():
            xs, ys = [r[x] / scale for r in group], [r[y] for r in group]
            dots = ax.scatter(xs, ys, s=30, zorder=3, label=f"{model} ({engine})")
            for r, xv, yv in zip(group, xs, ys):
                ax.annotate(r["label"], (xv, yv), textcoords="offset points", xytext=(5, 4), fontsize=8)
            _hollow(ax, [(xv, yv) for r, xv, yv in zip(group, xs, ys) if r.get("caveat_ids")],
                    dots.get_facecolor()[0])
            best = sorted((r for r in group if r["cell_id"] in m.fronts.get(x, ())), key=lambda r: r[x])
            ax.scatter([r[x] / scale for r in best], [r[y] for r in best], s=70, facecolors="none",
                       edgecolors=dots.get_facecolor()[0], linewidths=1.2, zorder=3)     # ringed: on the front
            if len(best) > 1:
                # the staircase bounding what the front dominates: it steps at the better cell's x
                ax.step([r[x] / scale for r in best], [r[y] for r in best], where="pre" if x_higher else "post",
                        color=dots.get_facecolor()[0], alpha=0.6, linewidth=1.5, zorder=2)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.margins(x=0.15, y=0.15)
        ax.legend(fontsize=8, loc="best")

    front = ", ".join(r["label"] for r in rows if r["cell_id"] in m.fronts.get(x, ()))
    hollow = f" {_HOLLOW_NOTE}" if any(r.get("caveat_ids") for r in rows) else ""
    return Plot(key, title, _render(key, draw), f"Ringed, joined by the line: the Pareto front per model and engine "
                                                f"(no other cell beats them on both axes): {front or 'none'}.{hollow}")


def quality_vs_speed(m: PublishedResults) -> Plot:
    return _scatter(m, "quality-speed", "Quality vs decode speed", "decode_tokens_per_s",
                    "decode tok/s (batch 1, higher is better)", 1, x_higher=True)


def quality_vs_memory(m: PublishedResults) -> Plot:
    return _scatter(m, "quality-memory", "Quality vs weight memory", "weight_bytes", "weights, MiB (lower is better)",
                    _MIB, x_higher=False)


def served_latency(m: PublishedResults) -> Plot:
    p = m.serving_percentile
    title = f"Served TTFT and TPOT {p} vs concurrency"
    rows = [r for r in m.serving if r["concurrency"] is not None and not r["request_rate"]]
    if not rows:
        return Plot("serving", title, None, "no cell was served under closed-loop load (spec: evaluation.serving)")

    def draw(fig, axes):
        ax, right = axes
        for group in _groups(rows, lambda r: r["cell_id"]).values():
            group = sorted(group, key=lambda r: r["concurrency"])
            conc, name = [r["concurrency"] for r in group], _cell_name(group[0], rows)
            for a, figure in ((ax, f"ttft_ms_{p}"), (right, f"tpot_ms_{p}")):
                [line] = a.plot(conc, [r[figure] for r in group], marker="o", label=name)
                _hollow(a, [(r["concurrency"], r[figure]) for r in group if r.get("caveat_ids")], line.get_color())
        levels = sorted({r["concurrency"] for r in rows})
        for a, name in ((ax, "TTFT"), (right, "TPOT")):
            a.set_xscale("log", base=2)
            a.set_xticks(levels, [str(c) for c in levels])     # plain numbers: the log formatter writes mathtext
            a.minorticks_off()
            a.set_xlabel("concurrent requests (closed loop)")
            a.set_ylabel(f"{name} {p}, ms")
            a.set_title(f"{name} {p}", fontsize=9)
            a.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")

    notes = ["" if p == "p95" else "These runs recorded no p95 latency: the plot shows p99.",
             _HOLLOW_NOTE if any(r.get("caveat_ids") for r in rows) else ""]
    note = " ".join(n for n in notes if n)
    return Plot("serving", title, _render("serving", draw, size=(6.8, 3.2), ncols=2), note)


def mbu_bars(m: PublishedResults) -> Plot:
    title = "Memory-bandwidth utilisation at batch 1"
    if not m.mbu:
        return Plot("mbu", title, None, "no MBU measured: the speed evaluator reports it on a GPU only")
    rows = list(m.mbu)

    def draw(fig, ax):
        labels = [_cell_name(r, rows) for r in rows]
        ax.barh(labels, [100 * r["mbu"] for r in rows], color="#4c72b0", zorder=3)
        ax.axvline(100, color="#c44e52", linewidth=1.5)
        gpus = sorted({f"{r['gpu']} {r['peak_bandwidth_gbps']:g} GB/s" for r in rows if r["gpu"]})
        ax.text(99, len(rows) - 0.5, "roofline: " + ", ".join(gpus), ha="right", va="bottom", fontsize=8,
                color="#c44e52")
        for i, r in enumerate(rows):
            ax.text(100 * r["mbu"] + 1, i, f"{100 * r['mbu']:.1f} %", va="center", fontsize=8)
        ax.set_xlim(0, 105)
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_xlabel("% of peak memory bandwidth (weights + KV read per decode step / TPOT)")
        ax.invert_yaxis()

    return Plot("mbu", title, _render("mbu", draw, size=(6.4, 0.9 + 0.45 * len(rows))),
                "Bars: bytes each decode step must read over its time; the line at 100 % is the GPU's peak.")


PLOTS: tuple[Callable[[PublishedResults], Plot], ...] = (quality_vs_speed, quality_vs_memory, served_latency, mbu_bars)


def render_plots(m: PublishedResults) -> list[Plot]:
    return [plot(m) for plot in PLOTS]
