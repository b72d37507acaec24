"""GPTQ through llm-compressor's `oneshot`, saved as a compressed-tensors checkpoint.

Options: `actorder` (static | group | weight | null), `dampening_frac`, `symmetric`,
`ignore` (modules kept in higher precision; lm_head by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.quantize import Backend
from matrix import Cell


def _quantize(cell: Cell, base: str, out: Path, calibration: list[str]) -> dict[str, Any]:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cell.method != "gptq":
        raise ValueError(f"the llmcompressor backend here implements gptq, not {cell.method}")
    opts = dict(cell.options)
    calib = dict(cell.calibration or ())
    on_gpu = torch.cuda.is_available()
    # fp32 on CPU: bf16 matmuls there are ~6x slower and GPTQ's Hessians want the precision anyway
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                 device_map="cuda" if on_gpu else None,
                                                 trust_remote_code=cell.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(base)
    strategy = "channel" if cell.group_size == -1 else "group"
    weights = QuantizationArgs(num_bits=cell.bits, type="int", symmetric=bool(opts.get("symmetric", True)),
                               strategy=strategy, group_size=None if strategy == "channel" else cell.group_size,
                               actorder=opts.get("actorder"))
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=list(opts.get("ignore", ["lm_head"])),
                          dampening_frac=float(opts.get("dampening_frac", 0.01)))
    samples = calibration[: calib.get("samples", 16)]
    oneshot(model=model, dataset=Dataset.from_dict({"text": samples}), recipe=recipe, tokenizer=tok,
            max_seq_length=calib.get("seq_len", 256), num_calibration_samples=len(samples))
    model.to(torch.bfloat16)   # store the unquantized parts (embeddings, norms, scales) as bf16
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
    return {"calibration_samples": len(samples), "scheme": f"W{cell.bits}A16 {strategy}{cell.group_size or ''}"}


BACKEND = Backend(name="llmcompressor", format="compressed-tensors (pack-quantized)",
                  libraries=("llmcompressor", "compressed-tensors", "transformers", "torch"), quantize=_quantize)
