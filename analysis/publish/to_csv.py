"""leaderboard.csv: the `leaderboard` view's rows, every column, raw values (for spreadsheets and scripts)."""
from __future__ import annotations

import csv
import io

from analysis.publish.model import PublishedResults


def render(m: PublishedResults) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=m.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(m.rows)
    return buf.getvalue()
