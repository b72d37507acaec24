"""Validity rules as data: each rule names itself and says why a cell cannot run.

A rule is a pure function (cell, model config) -> reason or None. Model-shape rules read
`config.json` values only, never weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from matrix.adapters import ADAPTER_MODES
from matrix.cells import Cell
from matrix.engines import ENGINES
from matrix.methods import METHODS, cell_keep_patterns, keep_terms, layer_count
from matrix.shown import bounded

ModelConfig = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Cell, ModelConfig], str | None]


def quantized_input_dims(config: ModelConfig) -> dict[str, int]:
    """Input dimension of each quantized Linear family in a decoder (q/k/v, o, gate/up, down)."""
    hidden = config.get("hidden_size")
    if hidden is None:
        return {}
    heads = config.get("num_attention_heads", 1)
    head_dim = config.get("head_dim") or hidden // heads
    dims = {"q/k/v and gate/up": hidden, "o_proj": heads * head_dim}
    if config.get("intermediate_size"):
        dims["down_proj"] = config["intermediate_size"]
    return dims


def _bits_allowed(cell: Cell, _: ModelConfig) -> str | None:
    info = METHODS[cell.method]
    if cell.bits not in info.bits:
        allowed = ", ".join(map(str, info.bits))
        return f"{cell.method} is {allowed}-bit only" if len(info.bits) == 1 else \
            f"{cell.method} supports bits {allowed}, not {cell.bits}"
    return None


def _group_divides_layers(cell: Cell, config: ModelConfig) -> str | None:
    if cell.group_size in (None, -1):
        return None
    bad = {name: d for name, d in quantized_input_dims(config).items() if d % cell.group_size}
    if bad:
        what = ", ".join(f"{name} in_features {d}" for name, d in bad.items())
        return f"group size {cell.group_size} does not divide {what}"
    return None


def _fp8_kv_needs_vllm(cell: Cell, _: ModelConfig) -> str | None:
    if cell.kv_cache_dtype not in ENGINES[cell.engine].kv_cache_dtypes:
        able = ", ".join(e.name for e in ENGINES.values() if cell.kv_cache_dtype in e.kv_cache_dtypes)
        return f"{cell.kv_cache_dtype} KV cache needs the {able} engine (engine is {cell.engine})"
    return None


def _awq_bits(cell: Cell, _: ModelConfig) -> str | None:
    if cell.method == "awq" and cell.backend == "llmcompressor" and cell.bits != 4:
        return "llm-compressor AWQ supports 4-bit weights only"
    return None


def _vllm_compressed_tensors_bits(cell: Cell, _: ModelConfig) -> str | None:
    # vLLM's compressed-tensors WNA16 kernels take 4- and 8-bit weights only
    if cell.engine == "vllm" and cell.backend == "llmcompressor" and cell.method in ("gptq", "awq") \
            and cell.bits not in (4, 8):
        return f"vllm serves llm-compressor (compressed-tensors) weights at 4 or 8 bits, not {cell.bits}"
    return None


def _bitsandbytes_on_hf(cell: Cell, _: ModelConfig) -> str | None:
    why = dict(ENGINES[cell.engine].refused_backends).get(cell.backend)
    if why:
        able = ", ".join(e.name for e in ENGINES.values() if cell.backend not in dict(e.refused_backends))
        return f"{cell.method} ({cell.backend}) runs on the {able} engine here: {why}"
    return None


def _kernel_on_hf(cell: Cell, _: ModelConfig) -> str | None:
    kernel = dict(cell.options).get("kernel", "auto")
    if kernel != "auto" and ENGINES[cell.engine].picks_kernel:
        return f"kernel {kernel} is GPTQModel's, on the hf engine; {cell.engine} picks its own (use kernel auto)"
    return None


def _kept_layers_exist(cell: Cell, config: ModelConfig) -> str | None:
    # a first:N / last:N preset needs N decoder layers; unknown config: checked when the backend resolves it
    layers = layer_count(config) if config else None
    if layers is None:
        return None
    try:
        cell_keep_patterns(cell.method, cell.options, layers)
    except ValueError as e:
        return f"option {METHODS[cell.method].keep_option.name}: {e}"
    return None


def _autoawq_keeps_names(cell: Cell, _: ModelConfig) -> str | None:
    # AutoAWQ skips a linear whose name inside its decoder block contains an entry: a layer preset, a
    # regex or a dotted path would match nothing, and those layers would be quantized without a word
    value = dict(cell.options).get("ignore") if cell.backend == "autoawq" else None
    bad = [t for t in keep_terms(value) if ":" in t or "." in t] if value is not None else []
    return f"option ignore: backend autoawq keeps modules by plain name only (down_proj), not {bad[0]}" if bad else None


def _autogptq_keeps_lm_head_only(cell: Cell, _: ModelConfig) -> str | None:
    # AutoGPTQ quantizes every linear inside the decoder blocks and never lm_head, and takes no list of
    # modules to keep: any other value would be measured as lm_head without a word
    option = METHODS[cell.method].keep_option
    value = dict(cell.options).get(option.name) if cell.backend == "autogptq" and option else None
    terms = keep_terms(value) if value is not None else ("lm_head",)
    if terms == ("lm_head",):
        return None
    asked = ", ".join(t.encode("unicode_escape").decode() for t in terms) or "an empty list"     # one line
    return bounded(f"option {option.name}: backend autogptq keeps exactly lm_head (it quantizes every decoder "
                   f"linear), not {asked}")


def _gguf_needs_16bit_start(cell: Cell, _: ModelConfig) -> str | None:
    if cell.method == "prequantized" and (cell.gguf_file or cell.model.endswith(".gguf")):
        return "a GGUF model is de-quantized to 16-bit at load; a prequantized checkpoint is a separate model"
    return None


def _adapter_mode_on_engine(cell: Cell, _: ModelConfig) -> str | None:
    mode = ADAPTER_MODES.get(cell.adapter_mode or "")
    if mode is not None and mode.engines is not None and cell.engine not in mode.engines:
        return (f"adapter_mode {mode.name} needs the {', '.join(mode.engines)} engine (engine is {cell.engine}): "
                f"{mode.why}")
    return None


def _adapter_on_16bit_base(cell: Cell, _: ModelConfig) -> str | None:
    if cell.adapter is not None and cell.method == "prequantized":
        return "an adapter applies to the 16-bit base; a prequantized checkpoint is a separate model"
    return None


RULES: tuple[Rule, ...] = (
    Rule("bits-allowed", _bits_allowed),
    Rule("group-divides-layers", _group_divides_layers),
    Rule("fp8-kv-needs-vllm", _fp8_kv_needs_vllm),
    Rule("awq-bits", _awq_bits),
    Rule("vllm-compressed-tensors-bits", _vllm_compressed_tensors_bits),
    Rule("gguf-prequantized", _gguf_needs_16bit_start),
    Rule("bitsandbytes-on-hf", _bitsandbytes_on_hf),
    Rule("kernel-on-hf", _kernel_on_hf),
    Rule("kept-layers-exist", _kept_layers_exist),
    Rule("autoawq-keeps-names", _autoawq_keeps_names),
    Rule("autogptq-keeps-lm-head", _autogptq_keeps_lm_head_only),
    Rule("adapter-mode-engine", _adapter_mode_on_engine),
    Rule("adapter-prequantized", _adapter_on_16bit_base),
)


def first_violation(cell: Cell, config: ModelConfig) -> tuple[str, str] | None:
    for rule in RULES:
        reason = rule.check(cell, config)
        if reason:
            return rule.name, reason
    return None
