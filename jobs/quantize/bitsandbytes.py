"""bitsandbytes NF4 / FP4 / LLM.int8(): weights are quantized as the model loads.

Options (spec `options`): nf4/fp4 take `double_quant` (bool) and `compute_dtype`;
int8 takes `llm_int8_threshold` (outlier threshold, default 6.0). `skip_modules` keeps
modules (e.g. lm_head) in higher precision.
"""
from __future__ import annotations

from typing import Any

from jobs.quantize import Backend
from matrix import Cell


def _load_kwargs(cell: Cell, dtype: Any) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    opts = dict(cell.options)
    skip = opts.get("skip_modules")
    if cell.method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(opts.get("llm_int8_threshold", 6.0)),
                                    llm_int8_skip_modules=skip)
    else:
        compute = getattr(torch, opts["compute_dtype"]) if "compute_dtype" in opts else dtype
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cell.method,
                                    bnb_4bit_use_double_quant=bool(opts.get("double_quant", False)),
                                    bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)
    return {"quantization_config": config}


BACKEND = Backend(name="bitsandbytes", format="bitsandbytes (quantized at load)",
                  libraries=("bitsandbytes", "transformers", "torch"), load_kwargs=_load_kwargs,
                  requires=("bitsandbytes",), methods=("nf4", "fp4", "int8"))
