"""GPTQ through AutoGPTQ (`auto_gptq`): a legacy backend, run only where its library imports.

AutoGPTQ is dead upstream: 0.7.1, its last release, fails to import with transformers 5
(`no_init_weights` moved), and transformers 5 dropped its integration for GPTQModel. Where an
older environment has it, it writes the GPTQ checkpoint format (`quant_method: gptq`), the same
format the `gptqmodel` backend writes, which transformers and vLLM load; so a cell of this
backend is measured on a modern stack by `backend: gptqmodel`, or by `prequantized` on an
AutoGPTQ-made checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.quantize import Backend, Calibration, guarded_import
from matrix import Cell
from matrix.methods import resolved_options

_DEAD = "AutoGPTQ is unmaintained (0.7.1 needs transformers 4); backend gptqmodel writes the same GPTQ format"


def _quantize(cell: Cell, base: str, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    import torch
    from auto_gptq import AutoGPTQForCausalLM, BaseQuantizeConfig

    if cell.method != "gptq" or calibration is None:
        raise ValueError(f"the autogptq backend implements calibrated gptq, not {cell.method}")
    opts = resolved_options(cell.method, cell.options)
    actorder = opts["actorder"]
    config = BaseQuantizeConfig(bits=cell.bits, group_size=cell.group_size or -1, sym=bool(opts["symmetric"]),
                                desc_act=actorder in ("group", "static"), static_groups=actorder == "static",
                                damp_percent=float(opts["dampening_frac"]))
    model = AutoGPTQForCausalLM.from_pretrained(base, config, trust_remote_code=cell.trust_remote_code)
    examples = [{"input_ids": torch.tensor([s]), "attention_mask": torch.ones(1, len(s), dtype=torch.long)}
                for s in calibration.samples]
    model.quantize(examples)
    model.save_quantized(str(out), use_safetensors=True)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return {"scheme": f"GPTQ W{cell.bits}A16 group {cell.group_size}, actorder {actorder}", "notes": []}


BACKEND = Backend(name="autogptq", format="gptq", quantize=_quantize,
                  libraries=("auto-gptq", "transformers", "torch"), requires=("auto_gptq",),
                  hint=_DEAD, check=lambda: guarded_import("auto_gptq", _DEAD))
