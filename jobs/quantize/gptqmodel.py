"""GPTQ through GPTQModel, saved in the GPTQ checkpoint format (`quant_method: gptq`).

That format is AutoGPTQ's: transformers (through optimum + gptqmodel) and vLLM load it, and the
`autogptq` backend's cells are covered by it. Options map to GPTQModel's `QuantizeConfig`:
  actorder   null -> desc_act off, GAR off; group -> desc_act (g_idx); static -> desc_act with
             static_groups; weight -> act_group_aware (GAR: order by activations, groups stay
             contiguous, no g_idx; the nearest to llm-compressor's "weight")
  dampening_frac -> damp_percent; symmetric -> sym
  ignore     lm_head stays 16-bit unless left out of the list; other names or `re:` patterns
             become GPTQModel `dynamic` negative rules ("-:<regex>": not quantized)
  kernel     at load, on the hf engine: GPTQModel's `BACKEND.GPTQ_<KERNEL>`; `auto` lets GPTQModel
             pick (Machete on Hopper, which downloads CUTLASS source at first use: offline, name one)
GPTQModel sizes a CPU worker pool at import; on small machines it needs GPTQMODEL_CPU_WORKERS,
set here (to 2 unless the environment says otherwise) before the import, and recorded.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from jobs.quantize import Backend, Calibration
from matrix import Cell
from matrix.methods import DEFAULT_GROUP_SIZE, keep_patterns, layer_count, resolved_options

_ACTORDER: dict[str | None, dict[str, bool]] = {
    None: {"desc_act": False, "act_group_aware": False},
    "group": {"desc_act": True, "act_group_aware": False},
    "static": {"desc_act": True, "static_groups": True, "act_group_aware": False},
    "weight": {"desc_act": False, "act_group_aware": True},
}


def _skip_rules(ignore: list[str]) -> dict[str, dict]:
    """GPTQModel `dynamic` rules that keep the named modules unquantized (lm_head has its own flag)."""
    rules = {}
    for name in ignore:
        if name == "lm_head":
            continue
        pattern = name.removeprefix("re:") if name.startswith("re:") else rf"(.*\.)?{re.escape(name)}$"
        rules[f"-:{pattern}"] = {}
    return rules


def quantize_config(cell: Cell, layers: int | None = None):
    """GPTQModel's config for `cell`; `layers` (the model's decoder layers) resolves first:N / last:N presets."""
    from gptqmodel import QuantizeConfig

    opts = resolved_options(cell.method, cell.options)
    ignore = list(keep_patterns(opts["ignore"], layers))
    return QuantizeConfig(bits=cell.bits, group_size=cell.group_size if cell.group_size is not None else DEFAULT_GROUP_SIZE,
                          sym=bool(opts["symmetric"]), damp_percent=float(opts["dampening_frac"]),
                          lm_head="lm_head" not in ignore, dynamic=_skip_rules(ignore) or None,
                          # keep finished layers in memory: offloading each to disk and back costs
                          # seconds per layer, and the engine must hold the whole model anyway
                          offload_to_disk=False,
                          **_ACTORDER[opts["actorder"]])


def _kernel_load_kwargs(cell: Cell, dtype) -> dict[str, Any]:
    """`from_pretrained` kwargs that pick GPTQModel's kernel for a GPTQ checkpoint (option `kernel`):
    transformers merges a passed GPTQConfig's `backend` into the checkpoint's own config."""
    kernel = resolved_options(cell.method, cell.options)["kernel"]
    if kernel == "auto":
        return {}
    from transformers import GPTQConfig
    return {"quantization_config": GPTQConfig(bits=cell.bits, backend=f"gptq_{kernel}")}


def _quantize(cell: Cell, base: str, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    if cell.method != "gptq":
        raise ValueError(f"the gptqmodel backend here implements gptq, not {cell.method}")
    if calibration is None:
        raise ValueError("gptqmodel gptq needs calibration data; the cell has none")
    notes = []
    if "GPTQMODEL_CPU_WORKERS" not in os.environ:
        os.environ["GPTQMODEL_CPU_WORKERS"] = "2"   # read when gptqmodel builds its pool, at first use
        notes.append("GPTQMODEL_CPU_WORKERS=2 set for this build (GPTQModel's CPU pool on a small machine)"
                     + (" after gptqmodel was imported in this process: its pool may use its own default"
                        if "gptqmodel" in sys.modules else ""))
    import torch
    from gptqmodel import GPTQModel

    on_gpu = torch.cuda.is_available()
    layers = layer_count(json.loads((Path(base) / "config.json").read_text()))
    model = GPTQModel.load(base, quantize_config(cell, layers), device="cuda" if on_gpu else "cpu",
                           trust_remote_code=cell.trust_remote_code)
    rows = [{"input_ids": list(s), "attention_mask": [1] * len(s)} for s in calibration.samples]
    model.quantize(rows, batch_size=1)
    model.save(str(out))
    return {"scheme": f"GPTQ W{cell.bits}A16 group {cell.group_size}, actorder {resolved_options(cell.method, cell.options)['actorder']}",
            "device": "cuda" if on_gpu else "cpu", "notes": notes,
            "gptqmodel_cpu_workers": os.environ.get("GPTQMODEL_CPU_WORKERS")}


BACKEND = Backend(name="gptqmodel", format="gptq", quantize=_quantize, load_kwargs=_kernel_load_kwargs,
                  libraries=("gptqmodel", "optimum", "transformers", "torch"),
                  # transformers loads GPTQ checkpoints through optimum's GPTQQuantizer + gptqmodel kernels
                  requires=("gptqmodel", "optimum"))
