"""The one writer of a sweep's results: claims, attempt numbers and every store write.

Each cell's attempt is claimed in the store before work (`analysis.claims`), so several sweeps can
share one store; a retry claims the next number; an attempt is written unless another writer has
taken the cell over meanwhile (this one stalled past the claim timeout), and the last attempt of a
cell lets it go. The scheduler decides what runs; this module decides what is written and as which
attempt.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, ContextManager

from analysis.store import ResultStore
from matrix import Cell, SkippedCell
from matrix.results import CellOutcome, RunFacts


def now() -> datetime:
    return datetime.now(timezone.utc)


class Recorder:
    """A sweep's claims and writes on one `ResultStore` (use inside `owning()`)."""

    def __init__(self, store: ResultStore):
        self.store = store
        self._attempts: dict[str, int] = {}         # cell id -> the attempt this writer holds

    @property
    def claim_timeout_s(self) -> float:
        return self.store.claims.timeout_s

    def owning(self) -> ContextManager[Any]:
        """Heartbeats this writer's claims; unreleased claims are free again when the block ends."""
        return self.store.claims.owning()

    def claim(self, cell: Cell) -> bool:
        """Claim the cell's next attempt: False while another live writer holds it or has finished it
        (then `is_finished`)."""
        attempt = self.store.claim(cell.cell_id)
        if attempt is None:
            return False
        self._attempts[cell.cell_id] = attempt
        return True

    def is_finished(self, cell: Cell) -> bool:
        return self.store.is_finished(cell.cell_id)

    def attempt(self, cell: Cell) -> int:
        """The attempt this writer holds for a claimed cell."""
        return self._attempts[cell.cell_id]

    def skipped(self, skipped: SkippedCell) -> bool:
        """A skipped cell, recorded with its reason, unless another live sweep records it."""
        if not self.claim(skipped.cell):
            return False
        return self._write(skipped.cell, RunFacts(status="skipped", reason=skipped.reason, started_at=now(),
                                                  seconds=0.0), final=True)

    def succeeded(self, cell: Cell, started: datetime, outcome: CellOutcome, where: dict[str, Any]) -> bool:
        """A successful attempt, with where Ray placed it (`where`: node_id, gpu_ids); False when dropped."""
        facts = dataclasses.replace(outcome.facts, status="ok", started_at=started, node_id=where["node_id"],
                                    gpu_ids=",".join(where["gpu_ids"]) or None)
        return self._write(cell, facts, outcome.metrics, outcome.tables, final=True)

    def failed(self, cell: Cell, started: datetime, error: str, reason: str, final: bool) -> bool:
        """Every failed attempt is written, with a one-line reason beside the full error; only a final
        one lets the cell go. False when dropped."""
        facts = RunFacts(status="failed", reason=reason, error=error, started_at=started,
                         seconds=(now() - started).total_seconds())
        return self._write(cell, facts, final=final)

    def failures(self, cell: Cell) -> int:
        """Failed attempts of the cell across reruns too (not attempt numbers: a crashed writer's claims
        leave gaps)."""
        return sum(r["status"] == "failed" for r in self.store.attempts().get(cell.cell_id, []))

    def retry(self, cell: Cell) -> bool:
        """Claim the cell's next attempt after a failed one: False when another writer has taken it over."""
        return self.claim(cell)

    def _write(self, cell: Cell, facts: RunFacts, metrics=None, tables=None, final: bool = True) -> bool:
        attempt = self._attempts[cell.cell_id]
        if not self.store.claims.holds(cell.cell_id, attempt):
            return False                  # taken over: the other writer's attempt counts, not this one
        self.store.record(cell, attempt, facts, metrics, tables)
        if final:
            self.store.release(cell.cell_id, attempt)
        return True
