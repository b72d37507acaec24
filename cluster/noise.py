"""Known harmless library noise at sweep start: each line, who logs it and why it is harmless, declared once.

Each is a Python logging warning from a named logger, so a logging filter on that logger drops it
(`quiet`, the default); `-v` shows everything and `explain` says once what these lines mean.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    logger: str
    starts: str          # the message's first words (matched against the formatted message)
    why: str


KNOWN_NOISE = (
    Noise("torchao", "Failed to load",
          "torchao's optional CUDA kernels (_C_mxfp8, _C_cutlass) do not load on a CPU build of torch; nothing here uses them"),
    Noise("torch.utils._pytree", "<enum",
          "torch deprecates the pytree registration of Enum classes that torchao still makes; harmless"),
    Noise("ray._private.authentication.authentication_token_setup", "Token authentication is enabled",
          "Ray's embedded cluster turns token authentication on by default (RAY_AUTH_MODE=disabled opts out)"),
)


class _Drop(logging.Filter):
    def __init__(self, noise: Noise):
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not record.getMessage().startswith(self.noise.starts)
        except Exception:          # a record whose arguments do not format: keep it
            return True


def quiet() -> None:
    """Drop the known noise in this process (idempotent; before the libraries are imported is fine:
    a logger's filters stay with it), and hide library progress bars (tqdm honours TQDM_DISABLE;
    an embedded Ray's workers inherit it)."""
    for n in KNOWN_NOISE:
        log = logging.getLogger(n.logger)
        if not any(isinstance(f, _Drop) and f.noise == n for f in log.filters):
            log.addFilter(_Drop(n))
    os.environ.setdefault("TQDM_DISABLE", "1")


def explain() -> list[str]:
    """One line per known noise, for `-v` (where it is shown)."""
    return [f"known harmless: {n.logger} '{n.starts}…': {n.why}" for n in KNOWN_NOISE]
