"""The transformers engine: CPU and GPU, and the path for bitsandbytes models.

On CPU it computes in float32 (bf16 matmuls there are several times slower); weight bytes
are still reported at their stored width (see jobs.evaluate.memory).
"""
from __future__ import annotations

import time
from typing import Any

from jobs.engines import Engine
from jobs.evaluate.memory import weight_bytes
from jobs.models import materialize
from jobs.quantize import get_backend
from jobs.tokenizer_check import verify as verify_tokenizer


def load(cell, manifest: dict[str, Any]) -> Engine:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    notes = []
    if cell.kv_cache_dtype != "auto":
        notes.append(f"kv_cache_dtype {cell.kv_cache_dtype} not supported by the hf engine; used the model dtype")
    kwargs = get_backend(cell.backend).load_kwargs(cell, dtype)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(manifest["path"], dtype=dtype, device_map="cuda" if on_gpu else None,
                                                 trust_remote_code=cell.trust_remote_code, **kwargs)
    model.eval()
    if kernels := linear_kernels(model):
        notes.append("linear kernels: " + ", ".join(f"{name} x{n}" for name, n in kernels.items()))
    tok = AutoTokenizer.from_pretrained(manifest["path"])
    base = materialize(cell.model, cell.revision, cell.gguf_file)
    verify_tokenizer(tok, base, cell.model)      # encodes the probe as when the base was converted
    return Engine("hf", model, tok, "cuda" if on_gpu else "cpu", str(dtype).removeprefix("torch."),
                  time.perf_counter() - start, tuple(notes), base_path=base,
                  base_revision=cell.revision, is_base=manifest["path"] == base and not kwargs,
                  weight_bytes_at_load=weight_bytes(model), libraries=("transformers", "torch"))


def linear_kernels(model) -> dict[str, int]:
    """Quantized linear layers by class, as the load built them (e.g. GPTQModel picks Marlin, ExLlama,
    Triton or torch by device and format): which kernels a cell's figures were measured on."""
    counts: dict[str, int] = {}
    for module in model.modules():
        cls = type(module)
        if "linear" in cls.__name__.lower() and not cls.__module__.startswith(("torch.", "transformers.")):
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return counts
