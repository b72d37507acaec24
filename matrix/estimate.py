"""Memory estimates from a model's config.json alone (no weights): weight bytes per cell, KV bytes per token.

A dense decoder's parameters are counted by family (embeddings, lm_head unless tied, per layer
q/k/v/o and gate/up/down, norms, q/k/v biases where the architecture has them). Quantized Linear
weights are priced by the storage format each method writes (`FORMATS`, one function a method);
modules kept in 16-bit (`ignore` / `skip_modules`, presets such as lm_head+down_proj or last:N resolved
by `matrix.methods.keep_patterns`; lm_head by default) stay at 2 bytes a weight.
Pure: a config dict in, integers out, so `qmx plan` prices hundreds of cells in milliseconds.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from matrix.cells import Cell
from matrix.engines import KV_CACHE_DTYPES
from matrix.methods import LM_HEAD, METHODS, cell_keep_patterns, resolved_options

GIB = 1024 ** 3
BF16 = 2
HEADROOM = 0.90     # like vLLM's gpu_memory_utilization: the rest is CUDA context, activations, fragmentation


@dataclass(frozen=True)
class Shape:
    """The parameter shapes of a dense (or Mixtral-style MoE) decoder, read from config.json."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool
    experts: int = 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Shape | None":
        config = config.get("text_config", config)      # multimodal wrappers keep the decoder here
        need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if any(not config.get(k) for k in need):
            return None
        heads = config["num_attention_heads"]
        return cls(vocab=config["vocab_size"], hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                   heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   intermediate=config.get("moe_intermediate_size") or config["intermediate_size"],
                   # untied is the larger (safer) assumption when config.json does not say
                   tied=bool(config.get("tie_word_embeddings", False)),
                   qkv_bias=bool(config.get("attention_bias", config.get("model_type") in ("qwen2", "qwen2_moe"))),
                   experts=config.get("num_local_experts") or config.get("num_experts") or 1)

    def linears(self) -> list[tuple[str, int, int]]:
        """(module name, out_features, in_features) of every Linear in the decoder layers."""
        h, q, kv, inter = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        attn = [("self_attn.q_proj", q, h), ("self_attn.k_proj", kv, h), ("self_attn.v_proj", kv, h),
                ("self_attn.o_proj", h, q)]
        mlp = [("mlp.gate_proj", inter, h), ("mlp.up_proj", inter, h), ("mlp.down_proj", h, inter)]
        if self.experts > 1:
            mlp = [(f"mlp.experts.{e}.{n.split('.')[-1]}", o, i) for e in range(self.experts) for n, o, i in mlp]
        return [(f"model.layers.{layer}.{n}", o, i) for layer in range(self.layers) for n, o, i in attn + mlp]

    def other_params(self) -> int:
        """16-bit parameters outside the decoder Linears: embeddings, norms, biases, MoE routers."""
        n = self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden
        if self.qkv_bias:
            n += self.layers * (self.heads + 2 * self.kv_heads) * self.head_dim
        if self.experts > 1:
            n += self.layers * self.experts * self.hidden
        return n

    def kv_bytes_per_token(self, bytes_per_value: float) -> int:
        return int(2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value)


# --- storage formats: bytes of one quantized Linear (out, in) -------------------------------------

def _packed_int(bits: int, group: int | None, symmetric: bool, g_idx: bool) -> Callable[[int, int], float]:
    """compressed-tensors pack-quantized (GPTQ / AWQ): 32 // bits values per int32 along in_features,
    a 16-bit scale per group (or per output row), packed zero points when asymmetric."""
    per_word = 32 // bits

    def size(out: int, in_: int) -> float:
        groups = 1 if group in (None, -1) else math.ceil(in_ / group)
        b = out * math.ceil(in_ / per_word) * 4 + out * groups * BF16 + 16   # + weight_shape (2 x int64)
        if not symmetric:
            b += math.ceil(out / per_word) * groups * 4
        if g_idx:
            b += in_ * 4
        return b
    return size


def _gptq(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    return _packed_int(cell.bits, cell.group_size, bool(opts["symmetric"]), opts["actorder"] == "group")


def _awq(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    return _packed_int(cell.bits, cell.group_size, bool(opts["symmetric"]), False)


def _published(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    # a published checkpoint's grid is not declared: price zero points in (the larger format)
    return _packed_int(cell.bits, cell.group_size, False, False)


def _bnb4(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    # 4-bit codes; an fp32 absmax per 64-element block, or with double quant an 8-bit absmax
    # plus an fp32 scale per 256 absmax values
    per_block = (1 + 4 / 256) if opts["double_quant"] else 4
    return lambda out, in_: out * in_ / 2 + out * in_ / 64 * per_block


def _int8(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    return lambda out, in_: out * in_ + out * 4           # int8 codes + an fp32 scale per row (SCB)


def _fp8(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    return lambda out, in_: out * in_ + out * BF16        # fp8 codes + a scale per output channel


def _bf16(cell: Cell, opts: dict[str, Any]) -> Callable[[int, int], float]:
    return lambda out, in_: out * in_ * BF16


FORMATS: dict[str, Callable[[Cell, dict[str, Any]], Callable[[int, int], float]]] = {
    "none": _bf16, "gptq": _gptq, "awq": _awq, "prequantized": _published, "nf4": _bnb4, "fp4": _bnb4,
    "int8": _int8, "fp8": _fp8,
}
KV_BYTES = KV_CACHE_DTYPES


def _kept(name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], name):
                return True
        elif name == p or name.endswith("." + p) or (p in name.split(".")):
            return True
    return False


def kept_modules(cell: Cell, layers: int) -> tuple[str, ...]:
    """Patterns of the modules `cell` keeps in 16 bits (presets resolved for `layers` decoder layers):
    () for a method without the option; lm_head where the backend's own default applies (bitsandbytes)."""
    if METHODS[cell.method].keep_option is None:
        return ()
    patterns = cell_keep_patterns(cell.method, cell.options, layers)
    return (LM_HEAD,) if patterns is None else patterns


@lru_cache(maxsize=4096)
def _weight_bytes(shape: Shape, method: str, bits: int, group: int | None, options: tuple,
                  keep: tuple[str, ...]) -> int:
    probe = Cell(model="", revision=None, method=method, backend="", bits=bits, group_size=group,
                 options=options, kv_cache_dtype="auto", engine="hf", calibration=None, evaluation="{}")
    size = FORMATS[method](probe, resolved_options(method, options))
    total = shape.other_params() * BF16
    for name, out, in_ in shape.linears():
        total += out * in_ * BF16 if keep and _kept(name, keep) else size(out, in_)
    if not shape.tied:
        lm = (shape.vocab, shape.hidden)
        total += lm[0] * lm[1] * BF16 if method == "none" or _kept("lm_head", keep) else size(*lm)
    return int(total)


@dataclass(frozen=True)
class Estimate:
    weight_bytes: int
    kv_bytes_per_token: int

    def need_bytes(self, kv_tokens: int, tensor_parallel_size: int = 1) -> int:
        """Memory per GPU: weights and the KV cache of `kv_tokens`, split over the tensor-parallel ranks."""
        return int((self.weight_bytes + self.kv_bytes_per_token * kv_tokens) / tensor_parallel_size)


def estimate_cell(cell: Cell, config: dict[str, Any]) -> Estimate | None:
    """Weight and KV-cache bytes of `cell` from its model's config, or None when the config lacks the shapes."""
    shape = Shape.from_config(config)
    if shape is None:
        return None
    keep = kept_modules(cell, shape.layers)
    return Estimate(_weight_bytes(shape, cell.method, cell.bits, cell.group_size, cell.options, keep),
                    shape.kv_bytes_per_token(KV_BYTES[cell.kv_cache_dtype]))


@dataclass(frozen=True)
class Fit:
    need_bytes: int
    memory_bytes: int

    @property
    def fraction(self) -> float:
        return self.need_bytes / self.memory_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= HEADROOM * self.memory_bytes


def fit_on(est: Estimate, memory_gib: float, kv_tokens: int, tensor_parallel_size: int = 1) -> Fit:
    return Fit(est.need_bytes(kv_tokens, tensor_parallel_size), int(memory_gib * GIB))
