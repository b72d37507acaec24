"""leaderboard.csv: the `leaderboard` view's rows, every column, raw values (for spreadsheets and scripts)."""
from __future__ import annotations

import csv
import io

from analysis.publish.model import PublishedResults


def render(m: PublishedResults) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=m.columns, lineterminator="\n")
    writer.writeheader()
    reasons = {c.caveat_id: c.reason for c in m.caveats}

    def resolved(r: dict) -> dict:
        # a row's caveats as one field a reader can resolve without the store: `<id>: <reason>`, joined
        if "caveat_ids" not in r:
            return r
        return r | {"caveat_ids": " | ".join(f"{i}: {reasons[i]}" for i in r["caveat_ids"] or () if i in reasons)}
    writer.writerows(map(resolved, m.rows))
    return buf.getvalue()
