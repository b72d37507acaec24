"""A published quantized checkpoint (GPTQ, AWQ, compressed-tensors, bitsandbytes ...), loaded as is.

Option `checkpoint`: a hub id or a local folder. The cell's `model` stays the base model it was
made from, so the baseline relation (perplexity delta, KL) holds; the engine loads the
checkpoint (the manifest's `path`), and transformers picks the kernels from its
`quantization_config`. Nothing is quantized here: `quantize_seconds` is None. The checkpoint is
checked against the base model's shape and against the cell's bits and group size, so a result
is never filed under the wrong model or setting.
"""
from __future__ import annotations

from typing import Any

from jobs.models import read_config
from jobs.quantize import Backend
from jobs.quantize.formats import describe_quantization
from matrix import Cell

_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def declared_bits_group(qc: dict[str, Any]) -> tuple[int | None, int | None]:
    """(weight bits, group size) a quantization_config declares; group -1 for per-channel."""
    if qc.get("quant_method") == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            if w:
                return w.get("num_bits"), w.get("group_size") if w.get("strategy") == "group" else -1
        return None, None
    if qc.get("quant_method") == "bitsandbytes":
        return (8 if qc.get("load_in_8bit") else 4), None
    return qc.get("bits") or qc.get("w_bit"), qc.get("group_size") or qc.get("q_group_size")


def _resolve(cell: Cell) -> dict[str, Any]:
    opts = dict(cell.options)
    checkpoint = opts.get("checkpoint")
    if not checkpoint:
        raise ValueError("prequantized needs option `checkpoint` (a hub id or a local folder)")
    config = read_config(str(checkpoint))
    qc = config.get("quantization_config")
    if not qc:
        raise ValueError(f"checkpoint {checkpoint!r} has no quantization_config in its config.json: not a "
                         "quantized checkpoint (use method none for the base model)")
    base = read_config(cell.model, cell.revision, cell.gguf_file)
    differ = {k: (config.get(k), base.get(k)) for k in _SHAPE_KEYS if config.get(k) != base.get(k)}
    if differ:
        raise ValueError(f"checkpoint {checkpoint!r} is not a quantization of {cell.model}: "
                         + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items()))
    bits, group = declared_bits_group(qc)
    if (bits is not None and bits != cell.bits) or (group is not None and cell.group_size is not None
                                                      and group != cell.group_size):
        raise ValueError(f"checkpoint {checkpoint!r} declares {bits}-bit group {group}; the cell says "
                         f"{cell.bits}-bit group {cell.group_size}")
    return {"path": str(checkpoint), "format": describe_quantization(qc), "checkpoint": str(checkpoint),
            "quantization_config": qc, "model": cell.model, "method": cell.method, "backend": cell.backend}


BACKEND = Backend(name="prequantized", format="as published (read from the checkpoint)", resolve=_resolve,
                  libraries=("transformers", "compressed-tensors", "gptqmodel", "optimum", "bitsandbytes", "torch"))
