"""`qmx publish`: the leaderboard as files a team can share, all rendered from one results model.

One module per format, each `render(PublishedResults) -> str`; FORMATS maps the file each writes.
"""
from __future__ import annotations

from pathlib import Path

from analysis.publish import to_csv, to_html, to_json, to_markdown
from analysis.publish.model import PublishedResults, gather

FORMATS = {
    "leaderboard.md": to_markdown.render,
    "leaderboard.csv": to_csv.render,
    "leaderboard.json": to_json.render,
    "index.html": to_html.render,
}


def publish(results: str | Path, out: str | Path, sweep: str | None = None, gates=None) -> list[Path]:
    """Write every format into `out` (created if missing); returns the paths written."""
    model = gather(results, sweep, gates)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in FORMATS.items():
        path = folder / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


__all__ = ["FORMATS", "PublishedResults", "gather", "publish"]
