"""What a quantized checkpoint is, read from its config.json `quantization_config`.

One describer per `quant_method` (the key transformers and vLLM dispatch on), so the results name
the format the weights are really stored in, whoever wrote them.
"""
from __future__ import annotations

from typing import Any, Callable


def _compressed_tensors(qc: dict[str, Any]) -> str:
    fmt = qc.get("format") or "dense"
    return f"compressed-tensors ({fmt})"


def _gptq(qc: dict[str, Any]) -> str:
    # GPTQModel writes checkpoint_format "gptq" (the AutoGPTQ layout) or "gptq_v2"; older writers omit it
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    return f"gptq ({fmt}, {qc.get('bits')}-bit, group {qc.get('group_size')}, desc_act {qc.get('desc_act')}, " \
           f"sym {qc.get('sym')})"


def _awq(qc: dict[str, Any]) -> str:
    return f"awq ({qc.get('version') or qc.get('format') or 'gemm'}, {qc.get('bits') or qc.get('w_bit')}-bit, " \
           f"group {qc.get('group_size') or qc.get('q_group_size')}, zero_point {qc.get('zero_point')})"


def _bitsandbytes(qc: dict[str, Any]) -> str:
    if qc.get("load_in_8bit"):
        return "bitsandbytes (int8)"
    return f"bitsandbytes ({qc.get('bnb_4bit_quant_type', '4-bit')})"


_DESCRIBERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "compressed-tensors": _compressed_tensors,
    "gptq": _gptq,
    "awq": _awq,
    "bitsandbytes": _bitsandbytes,
}


def describe_quantization(qc: dict[str, Any] | None) -> str:
    """A short name of the stored format, e.g. `compressed-tensors (pack-quantized)`."""
    if not qc:
        return "unquantized"
    method = str(qc.get("quant_method", "unknown"))
    describe = _DESCRIBERS.get(method)
    return describe(qc) if describe else method
