"""bitsandbytes NF4 / FP4 / LLM.int8(): weights are quantized as the model loads.

Options (spec `options`): nf4/fp4 take `double_quant` (bool) and `compute_dtype`;
int8 takes `llm_int8_threshold` (outlier threshold, default 6.0). `skip_modules` keeps
modules (e.g. lm_head) in higher precision.
"""
from __future__ import annotations

from typing import Any

from jobs.models import read_config
from jobs.quantize import Backend
from matrix import Cell
from matrix.methods import cell_keep_patterns, layer_count, resolved_options


def _load_kwargs(cell: Cell, dtype: Any) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    opts = resolved_options(cell.method, cell.options)     # defaults (threshold 6.0, ...) from the method table
    # names and presets resolved; transformers matches each entry as a regex (no `re:` prefix). A first:N /
    # last:N preset resolves against the model's decoder layers (its config.json, read only then)
    layers = layer_count(read_config(cell.model, cell.revision, cell.gguf_file)) \
        if dict(cell.options).get("skip_modules") is not None else None
    patterns = cell_keep_patterns(cell.method, cell.options, layers)
    skip = None if patterns is None else [p.removeprefix("re:") for p in patterns]
    if cell.method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(opts["llm_int8_threshold"]),
                                    llm_int8_skip_modules=skip)
    else:
        compute = getattr(torch, opts["compute_dtype"]) if "compute_dtype" in opts else dtype
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cell.method,
                                    bnb_4bit_use_double_quant=bool(opts["double_quant"]),
                                    bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)
    return {"quantization_config": config}


BACKEND = Backend(name="bitsandbytes", format="bitsandbytes (quantized at load)",
                  libraries=("bitsandbytes", "transformers", "torch"), load_kwargs=_load_kwargs,
                  requires=("bitsandbytes",))
