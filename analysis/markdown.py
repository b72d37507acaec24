"""Markdown table cells and figures, shared by every Markdown writer (leaderboard, compare, publish)."""
from __future__ import annotations

import json
from typing import Iterable


def row(cells: Iterable[str]) -> str:
    """One table row; a `|` or a newline inside a cell would break the table."""
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def table(header: list[str], rows: list[list[str]], left: Iterable[str] = ()) -> list[str]:
    """Header, alignment row (numbers right, the `left` columns left), rows."""
    left = set(left)
    return [row(header), "|" + "|".join("---" if h in left else "---:" for h in header) + "|", *map(row, rows)]


def plural(n: int, noun: str) -> str:
    """`1 cell`, `3 cells`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def fmt(v, spec: str, signed: bool = False) -> str:
    return "–" if v is None else format(v, ("+" if signed else "") + spec)


def fmt_bytes(n) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def settings_line(what: str, raw: str | None) -> str:
    """`what: key value, key value` from a metric's settings JSON: the convention a figure was measured under."""
    s = json.loads(raw) if raw else {}
    return f"{what}: " + ", ".join(f"{k} {v}" for k, v in s.items())
