"""GPTQ, AWQ and FP8 through llm-compressor's `oneshot`, saved as compressed-tensors checkpoints.

One recipe builder per method (the registry `_RECIPES`); the model loading, calibration and
saving around them are shared.
  gptq  `GPTQModifier`, W{bits}A16; options `actorder`, `dampening_frac`, `symmetric`, `ignore`
  awq   `AWQModifier` + `QuantizationModifier`, W4A16 asymmetric by default; `symmetric`, `ignore`
  fp8   `QuantizationModifier` FP8_DYNAMIC (W8A8, per-channel weights, per-token dynamic
        activations), data-free; `ignore`. Quantizing runs on CPU; transformers on CPU loads the
        fp8 weights and decompresses them at the first forward (weight-only in effect; the note says so)
On a machine without CUDA, AWQ's grid search pins cached activations (`Tensor.pin_memory()`,
only useful for host-to-GPU copies), which raises "Cannot access accelerator device": the
build then runs with that pinning disabled and the manifest's notes say so.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs.quantize import Backend, Calibration
from jobs.stages import report
from matrix import Cell
from matrix.methods import keep_patterns, layer_count, resolved_options


def _weights(cell: Cell, symmetric: bool, actorder: str | None = None):
    from compressed_tensors.quantization import QuantizationArgs

    strategy = "channel" if cell.group_size in (None, -1) else "group"
    return QuantizationArgs(num_bits=cell.bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=None if strategy == "channel" else cell.group_size, actorder=actorder)


def _scheme_name(cell: Cell, symmetric: bool) -> str:
    group = "per-channel" if cell.group_size in (None, -1) else f"group {cell.group_size}"
    return f"W{cell.bits}A16 {'sym' if symmetric else 'asym'} {group}"


def _gptq(cell: Cell, opts: dict[str, Any]) -> tuple[list, str]:
    from compressed_tensors.quantization import QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    symmetric = bool(opts["symmetric"])
    scheme = QuantizationScheme(targets=["Linear"], weights=_weights(cell, symmetric, opts["actorder"]))
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=opts["ignore"],
                          dampening_frac=float(opts["dampening_frac"]))
    return [recipe], f"GPTQ {_scheme_name(cell, symmetric)}, actorder {opts['actorder']}"


def _awq(cell: Cell, opts: dict[str, Any]) -> tuple[list, str]:
    from compressed_tensors.quantization import QuantizationScheme
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    symmetric = bool(opts["symmetric"])
    scheme = QuantizationScheme(targets=["Linear"], weights=_weights(cell, symmetric))
    # AWQ only scales channels; the QuantizationModifier after it writes the quantized weights
    recipe = [AWQModifier(), QuantizationModifier(config_groups={"group_0": scheme},
                                                  ignore=opts["ignore"])]
    return recipe, f"AWQ {_scheme_name(cell, symmetric)}"


def _fp8(cell: Cell, opts: dict[str, Any]) -> tuple[list, str]:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    recipe = QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=opts["ignore"])
    return [recipe], "FP8_DYNAMIC (W8A8 fp8 e4m3, per-channel weights, dynamic per-token activations)"


# method -> (recipe builder, needs calibration data)
_RECIPES: dict[str, tuple[Callable[[Cell, dict[str, Any]], tuple[list, str]], bool]] = {
    "gptq": (_gptq, True),
    "awq": (_awq, True),
    "fp8": (_fp8, False),
}


@contextlib.contextmanager
def _no_pinning_without_accelerator(notes: list[str]) -> Iterator[None]:
    """Without CUDA, make llm-compressor's activation-cache pinning a no-op (it only speeds up H2D copies)."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    notes.append("no CUDA: llm-compressor's IntermediatesCache.pin_memory disabled for this build "
                 "(it raises 'Cannot access accelerator device' on CPU; pinning only speeds host-to-GPU copies)")
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


_LAYER = re.compile(r"\blayers\.(\d+)\.")


@contextlib.contextmanager
def _layer_progress(layers: int) -> Iterator[None]:
    """Report "layer k/N" as llm-compressor works through the layers: GPTQ logs (loguru, INFO) each batch
    of modules it quantizes ("Quantizing 3 module(s): ['model.layers.4.self_attn.q_proj', ...]")."""
    from loguru import logger

    seen = {"layer": -1}

    def sink(message) -> None:
        found = _LAYER.search(message.record["message"])
        if found and int(found[1]) != seen["layer"]:
            seen["layer"] = int(found[1])
            report("quantizing", f"layer {seen['layer'] + 1}/{layers}")

    sink_id = logger.add(sink, level="INFO", filter="llmcompressor", format="{message}")
    try:
        yield
    finally:
        logger.remove(sink_id)


def _quantize(cell: Cell, base: str, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cell.method not in _RECIPES:
        raise ValueError(f"the llmcompressor backend implements {', '.join(_RECIPES)}, not {cell.method}")
    build, calibrated = _RECIPES[cell.method]
    if calibrated and calibration is None:
        raise ValueError(f"llmcompressor {cell.method} needs calibration data; the cell has none")
    on_gpu = torch.cuda.is_available()
    # fp32 on CPU: bf16 matmuls there are ~6x slower and GPTQ's Hessians want the precision anyway
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                 device_map="cuda" if on_gpu else None,
                                                 trust_remote_code=cell.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(base)
    opts = resolved_options(cell.method, cell.options)
    # presets (lm_head+down_proj, last:N) resolved for this model: names and re: patterns, as llm-compressor matches
    opts["ignore"] = list(keep_patterns(opts["ignore"], layer_count(model.config.to_dict())))
    recipe, scheme = build(cell, opts)
    notes: list[str] = []
    kwargs: dict[str, Any] = {}
    if calibrated:
        ids = [list(s) for s in calibration.samples]
        kwargs = {"dataset": Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(s) for s in ids]}),
                  "max_seq_length": calibration.record["seq_len"], "num_calibration_samples": len(ids)}
    guard = _no_pinning_without_accelerator(notes) if cell.method == "awq" else contextlib.nullcontext()
    with guard, _layer_progress(model.config.num_hidden_layers):
        oneshot(model=model, recipe=recipe, tokenizer=tok, **kwargs)
    model.to(torch.bfloat16)   # store the unquantized parts (embeddings, norms, scales) as bf16
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
    if cell.method == "fp8":
        # measured with transformers 5.17 on CPU: loads float8_e4m3fn weights + scales, then decompresses
        # them to the compute dtype at the first forward; activations stay unquantized there
        notes.append("fp8 W8A8 computes in fp8 only on an FP8 GPU (vLLM, sm89+); the hf engine on CPU "
                     "decompresses the fp8 weights at first forward and does not quantize activations")
    return {"scheme": scheme, "device": "cuda" if on_gpu else "cpu", "notes": notes}


BACKEND = Backend(name="llmcompressor", format="compressed-tensors",
                  libraries=("llmcompressor", "compressed-tensors", "transformers", "torch"), quantize=_quantize,
                  requires=("llmcompressor", "compressed_tensors"))
