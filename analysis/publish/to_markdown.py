"""leaderboard.md: the printed leaderboard (`qmx leaderboard`: tables, skipped and failed cells), then the
recommendation under the gates."""
from __future__ import annotations

from analysis.publish.model import PublishedResults


def render(m: PublishedResults) -> str:
    from analysis.recommend import render as render_recommendation

    out = [m.markdown]
    if m.recommendations:
        out += ["", "## Recommendation", "", "```text", render_recommendation(list(m.recommendations)), "```"]
    return "\n".join(out) + "\n"
