"""The NVML handle of the GPU this process was given (board-level counters: memory used, energy)."""
from __future__ import annotations

import os
from typing import Any


def visible_gpu_handle() -> Any:
    """NVML numbers the host's GPUs, not the ones Ray made visible: map the first visible one (an
    index or a UUID in CUDA_VISIBLE_DEVICES). Raises where NVML or the GPU is absent."""
    import pynvml
    pynvml.nvmlInit()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return (pynvml.nvmlDeviceGetHandleByIndex(int(visible)) if visible.isdigit()
            else pynvml.nvmlDeviceGetHandleByUUID(visible))
