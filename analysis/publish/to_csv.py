"""leaderboard.csv: the `leaderboard` view's rows, every column, raw values (for spreadsheets and scripts)."""
from __future__ import annotations

import csv
import io

from analysis.publish.model import PublishedResults


def render(m: PublishedResults) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=m.columns, lineterminator="\n")
    writer.writeheader()
    # a list (caveat_ids) as one field, its items joined
    writer.writerows({k: "; ".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in m.rows)
    return buf.getvalue()
