"""Stage reports from inside a job: which stage a build or cell is in (quantizing layer 3/30, perplexity, ...).

jobs knows nothing of Ray: whoever runs a job (the sweep's worker actor) installs a plain callable with
`reporting(fn)`; code deep in a job calls `report(stage, detail)`, a no-op when nobody listens. A
context variable rather than a parameter, so the backends and evaluators keep their signatures.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

StageFn = Callable[[str, str], None]     # (stage, detail)

_listener: contextvars.ContextVar[StageFn | None] = contextvars.ContextVar("qmx_stage_listener", default=None)


@contextlib.contextmanager
def reporting(fn: StageFn | None) -> Iterator[None]:
    """Send this block's stage reports to `fn`."""
    token = _listener.set(fn)
    try:
        yield
    finally:
        _listener.reset(token)


def report(stage: str, detail: str = "") -> None:
    """Say that the running job entered `stage` (or moved on within it: `detail`). Never raises:
    progress is a courtesy, not a reason for a cell to fail."""
    fn = _listener.get()
    if fn is not None:
        with contextlib.suppress(Exception):
            fn(stage, detail)
