"""LoRA adapters (peft) on a cell's model: where the adapter's files are, and applying it unmerged at load.

Merging (once, cached) is jobs.models' `weights_source`; the modes are matrix.adapters'.
"""
from __future__ import annotations

from pathlib import Path

from matrix.adapters import ADAPTER_CONFIG


def adapter_folder(adapter: str, revision: str | None = None) -> Path:
    """The adapter's local folder: itself, or a hub adapter's snapshot through huggingface_hub's usual path
    (its cache, HF_TOKEN, HF_HUB_OFFLINE)."""
    local = Path(adapter).expanduser()
    if not local.is_dir():
        from huggingface_hub import snapshot_download
        local = Path(snapshot_download(adapter, revision=revision))
    if not (local / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"adapter {adapter!r}: no {ADAPTER_CONFIG} in {local}: not a peft adapter")
    return local


def apply_unmerged(model, cell):
    """`model` with the cell's adapter on top, unmerged (its own low-rank matmuls run beside the quantized
    base's), when the cell asks for that; else `model` itself."""
    if cell.adapter is None or cell.merges_adapter:
        return model
    from peft import PeftModel

    folder = adapter_folder(cell.adapter, None if Path(cell.adapter).is_absolute() else cell.adapter_version)
    out = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    out.eval()
    return out
