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
    tok = AutoTokenizer.from_pretrained(manifest["path"])
    base = materialize(cell.model, cell.revision, cell.gguf_file)
    return Engine("hf", model, tok, "cuda" if on_gpu else "cpu", str(dtype).removeprefix("torch."),
                  time.perf_counter() - start, tuple(notes), base_path=base,
                  base_revision=cell.revision, is_base=manifest["path"] == base and not kwargs,
                  weight_bytes_at_load=weight_bytes(model), libraries=("transformers", "torch"))
