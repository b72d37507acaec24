"""Ctrl-C as a request to stop: the driver finishes the write it is doing, then stops cleanly.

A SIGINT arriving in the middle of a Parquet write would leave the store half-written; instead
the first SIGINT only sets an event the scheduling loop checks between writes. A second SIGINT
raises KeyboardInterrupt at once, as usual.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class SweepInterrupted(Exception):
    """The sweep stopped on request; `finished` cells are stored, a rerun resumes the rest."""

    def __init__(self, finished: int, total: int):
        super().__init__(f"interrupted: {finished} of {total} cells finished and are stored; "
                         "rerun the same command to resume")
        self.finished, self.total = finished, total


@contextmanager
def sigint_requests_stop() -> Iterator[threading.Event]:
    """An event set by the first SIGINT while the block runs (main thread only: elsewhere the
    event is returned unset and signals keep their handlers)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)    # a second Ctrl-C: stop now

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
