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

    _decompress_packed(model)
    folder = adapter_folder(cell.adapter, None if Path(cell.adapter).is_absolute() else cell.adapter_version)
    out = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    out.eval()
    return out


def adapter_weights(model):
    """The unmerged adapter's own tensors in `model` (a PeftModel), as a module: what the adapter adds to the
    weight bytes (jobs.evaluate.memory's `weight_bytes` counts them as it counts the base's)."""
    import torch
    from peft.utils import get_peft_model_state_dict
    return torch.nn.ParameterList(get_peft_model_state_dict(model).values())


def _decompress_packed(model) -> None:
    """compressed-tensors (an llm-compressor checkpoint on transformers) leaves packed layers without a
    `weight` until a pre-hook on the model decompresses them at its first forward; peft reads each target's
    `weight` as it wraps it, and its wrapper calls the model's `forward`, which skips that hook. One forward
    first decompresses them, as the engine would have at its first."""
    import torch
    if all(hasattr(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)):
        return
    with torch.no_grad():
        model(torch.zeros((1, 1), dtype=torch.long, device=model.device))
