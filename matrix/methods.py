"""What each quantization method allows: bits, backends, whether group size and calibration apply.

One table, the single source of truth for method names; implementations live in `jobs.quantize`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    name: str
    bits: tuple[int, ...]
    backends: tuple[str, ...]           # first is the default
    grouped: bool = False               # group size is a real dimension
    calibrated: bool = False            # needs calibration data (changes the artifact)
    description: str = ""


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("none", (16,), ("none",), description="unquantized baseline (bf16 weights)"),
    MethodInfo("nf4", (4,), ("bitsandbytes",), description="bitsandbytes 4-bit NormalFloat, quantized at load"),
    MethodInfo("fp4", (4,), ("bitsandbytes",), description="bitsandbytes 4-bit float, quantized at load"),
    MethodInfo("int8", (8,), ("bitsandbytes",), description="LLM.int8() with fp16 outlier columns, quantized at load"),
    MethodInfo("gptq", (2, 3, 4, 8), ("llmcompressor", "gptqmodel", "autogptq"), grouped=True, calibrated=True,
               description="GPTQ weight-only quantization with second-order error correction"),
    MethodInfo("awq", (4,), ("llmcompressor", "autoawq"), grouped=True, calibrated=True,
               description="activation-aware weight quantization"),
    MethodInfo("fp8", (8,), ("llmcompressor",), description="W8A8 FP8 (dynamic activation scales)"),
    MethodInfo("prequantized", (2, 3, 4, 8), ("prequantized",),
               description="a published GPTQ/AWQ/compressed-tensors checkpoint, loaded as is"),
)}

BASELINE_METHOD = "none"
