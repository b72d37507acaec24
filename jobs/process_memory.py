"""This process's memory high-water marks, resettable so a build or a cell measures only itself.

Linux resets the RSS high-water mark (VmHWM) on writing 5 to /proc/self/clear_refs; elsewhere the
process's lifetime peak (ru_maxrss) is all there is, and callers label it so.
"""
from __future__ import annotations

import contextlib
import re
import resource
from pathlib import Path


def _status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    return None


def rss_bytes() -> int | None:
    return _status_kb("VmRSS")


def reset_peaks() -> bool:
    """Start a new peak window (RSS, and CUDA when present); True when the RSS mark was reset."""
    with contextlib.suppress(ImportError):
        import torch
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM (since the last reset) where /proc has it, else the process's lifetime peak."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
