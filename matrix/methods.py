"""What each quantization method allows: bits, backends, options, whether group size and calibration apply.

One table, the single source of truth for method and option names; implementations live in `jobs.quantize`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from matrix.backends import backends_of
from matrix.shown import shown

_NO_DEFAULT = object()


@dataclass(frozen=True)
class OptionInfo:
    """One method option. `kind`: bool | float | str | choice | modules (a list of module names)."""
    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    default: Any = _NO_DEFAULT          # the backend's value when the option is left out
    required: bool = False
    description: str = ""
    backends: tuple[str, ...] = ()      # the backends it applies to; empty: all of the method's
    at_load: bool = False               # how a checkpoint is loaded, not what it holds: not in the artifact key

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def check(self, value: Any) -> str | None:
        """Why `value` is not a valid single value of this option, or None."""
        if self.kind == "bool" and not isinstance(value, bool):
            return f"expects true or false, got {shown(value)}"
        if self.kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"expects a number, got {shown(value)}"
        if self.kind == "str" and not (isinstance(value, str) and value):
            return f"expects a non-empty string, got {shown(value)}"
        if self.kind == "choice" and value not in self.choices:
            allowed = ", ".join("null" if c is None else str(c) for c in self.choices)
            return f"value {shown(value)} not allowed; allowed: {allowed}"
        if self.kind == "modules":
            if not (isinstance(value, str) or (isinstance(value, (list, tuple))
                                               and all(isinstance(v, str) for v in value))):
                return f"expects a preset or a list of module names, got {shown(value)}"
            return next(filter(None, map(_term_problem, keep_terms(value))), None)
        return None

    def is_grid(self, value: Any) -> bool:
        """A list is a grid of values; for module lists, only a list of lists is."""
        if not isinstance(value, (list, tuple)):
            return False
        return self.kind != "modules" or (len(value) > 0 and all(isinstance(v, (list, tuple)) for v in value))


# --- selective precision: the modules a method keeps in 16 bits ----------------------------------
# A `modules` option (ignore, skip_modules) is a list of terms, or one preset string of terms joined
# by "+" (`lm_head`, `lm_head+down_proj`, `lm_head+last:2`); a grid of them is a list of lists. A term:
#   a module name   `lm_head`, `down_proj`, `model.layers.3`: a module whose dotted name ends with it,
#                   and everything inside that module
#   first:N, last:N every module of the first / last N decoder layers (N from the model's config)
#   re:<regex>      matched from the start of the module's full name
# `keep_patterns` resolves terms, against the model's layer count, into what every backend matches:
# `lm_head` as is (each backend has its own switch for it) and `re:` patterns for the rest.
_LAYERS_TERM = re.compile(r"^(first|last):(\d+)$")
_NAME_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
LM_HEAD = "lm_head"


def keep_terms(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A modules value's terms, in order: a preset string and each list entry split at "+" (a `re:` entry
    is kept whole: a regex may hold "+"). A list without presets gives its own entries (ids unchanged)."""
    entries = [value] if isinstance(value, str) else list(value)
    return tuple(t for e in entries for t in ([e] if e.startswith("re:") else e.split("+")))


def _term_problem(term: str) -> str | None:
    if term.startswith("re:"):
        try:
            re.compile(term[3:])
        except re.error as e:
            return f"term {shown(term)} is not a regex: {e}"
        return None if term[3:] else "term 're:' has an empty pattern"
    layers = _LAYERS_TERM.match(term)
    if layers:
        return None if int(layers[2]) >= 1 else f"term {term}: N must be >= 1"
    if not _NAME_TERM.match(term):
        return (f"term {shown(term)} is unknown; a term is a module name (lm_head, down_proj, ...), "
                "first:N, last:N or re:<regex>, joined by +")
    return None


def layer_count(config: dict[str, Any]) -> int | None:
    """Decoder layers in a model's config.json (multimodal wrappers keep the decoder's in text_config)."""
    return config.get("text_config", config).get("num_hidden_layers")


def keep_patterns(value: str | list[str] | tuple[str, ...], layers: int | None) -> tuple[str, ...]:
    """The module patterns of a modules value, resolved for a model of `layers` decoder layers; ValueError
    (naming the term) when a first/last N needs more layers than that, or last:N when the count is unknown."""
    out = []
    for term in keep_terms(value):
        found = _LAYERS_TERM.match(term)
        if found:
            n = int(found[2])
            if (layers is None and found[1] == "last") or (layers is not None and n > layers):
                raise ValueError(f"{term} needs {n} decoder layers; the model has "
                                 f"{'an unknown number' if layers is None else layers}")
            picked = range(n) if found[1] == "first" else range(layers - n, layers)
            out.append(rf"re:(.*\.)?layers\.({'|'.join(map(str, picked))})(\..*)?$")
        elif term == LM_HEAD or term.startswith("re:"):
            out.append(term)
        else:
            out.append(rf"re:(.*\.)?{re.escape(term)}(\..*)?$")
    return tuple(out)


def cell_keep_patterns(method: str, options: tuple[tuple[str, Any], ...], layers: int | None) -> tuple[str, ...] | None:
    """The resolved patterns of the modules a cell keeps in 16 bits: its modules option, else that option's
    default; None where neither is set (the backend's own default applies: bitsandbytes keeps lm_head)."""
    opt = METHODS[method].keep_option
    if opt is None:
        return None
    value = dict(options).get(opt.name, opt.default if opt.has_default else None)
    return None if value is None else keep_patterns(value, layers)


def _ignore(default: tuple[str, ...] = (LM_HEAD,)) -> OptionInfo:
    return OptionInfo("ignore", "modules", default=list(default),
                      description="modules kept in 16-bit: a preset (lm_head, lm_head+down_proj, first:N, last:N, "
                                  "joined by +) or a list of names and `re:` patterns; lm_head by default")


_SYMMETRIC = "symmetric integer grid (no zero points)"
# GPTQModel's kernel for a GPTQ-format checkpoint on the hf engine (vLLM picks its own). `auto` is
# GPTQModel's pick by device: Machete on Hopper, which downloads CUTLASS source at first use.
_KERNEL = OptionInfo("kernel", "choice", ("auto", "marlin", "machete", "exllama_v2", "triton", "torch"),
                     default="auto", backends=("gptqmodel",), at_load=True,
                     description="GPTQModel kernel on the hf engine (auto: GPTQModel's pick; vLLM picks its own)")
_SKIP = OptionInfo("skip_modules", "modules",
                   description="modules kept in 16-bit, as `ignore` (presets or a list); transformers keeps "
                               "lm_head when left out")
_BNB4 = (OptionInfo("double_quant", "bool", default=False, description="quantize the absmax constants too"),
         OptionInfo("compute_dtype", "choice", ("bfloat16", "float16", "float32"),
                    description="matmul dtype; the model's dtype when left out"),
         _SKIP)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    bits: tuple[int, ...]
    grouped: bool = False               # group size is a real dimension
    calibrated: bool = False            # needs calibration data (changes the artifact)
    artifact: bool = False              # writes a quantized checkpoint (a quantization job to dedup)
    options: tuple[OptionInfo, ...] = field(default=())
    description: str = ""

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends implementing it (rows of matrix.backends.BACKENDS), the default first."""
        return backends_of(self.name)

    def option(self, name: str) -> OptionInfo | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def default_bits(self) -> int:
        """The bits of a method entry that names none: its only width, else DEFAULT_BITS."""
        return self.bits[0] if len(self.bits) == 1 else DEFAULT_BITS

    @property
    def keep_option(self) -> OptionInfo | None:
        """The option naming the modules it keeps in 16 bits (ignore / skip_modules), if any."""
        return next((o for o in self.options if o.kind == "modules"), None)


DEFAULT_BITS = 4              # a method entry without `bits` (of a method with several widths)
DEFAULT_GROUP_SIZE = 128      # a grouped method's entry without `group_size`

METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("none", (16,), description="unquantized baseline (bf16 weights)"),
    MethodInfo("nf4", (4,), options=_BNB4,
               description="bitsandbytes 4-bit NormalFloat, quantized at load"),
    MethodInfo("fp4", (4,), options=_BNB4,
               description="bitsandbytes 4-bit float, quantized at load"),
    MethodInfo("int8", (8,),
               options=(OptionInfo("llm_int8_threshold", "float", default=6.0,
                                   description="outlier threshold: columns above it stay fp16"), _SKIP),
               description="LLM.int8() with fp16 outlier columns, quantized at load"),
    MethodInfo("gptq", (2, 3, 4, 8), grouped=True, calibrated=True, artifact=True,
               options=(OptionInfo("actorder", "choice", (None, "static", "group", "weight"), default=None,
                                   description="activation order (desc_act)"),
                        OptionInfo("dampening_frac", "float", default=0.01, description="Hessian damping"),
                        OptionInfo("symmetric", "bool", default=True, description=_SYMMETRIC),
                        _ignore(), _KERNEL),
               description="GPTQ weight-only quantization with second-order error correction"),
    MethodInfo("awq", (4,), grouped=True, calibrated=True, artifact=True,
               # asymmetric (zero points), as AWQ's own default (W4A16_ASYM): declared here, once
               options=(OptionInfo("symmetric", "bool", default=False, description=_SYMMETRIC), _ignore()),
               description="activation-aware weight quantization"),
    MethodInfo("fp8", (8,), artifact=True, options=(_ignore(),),
               description="W8A8 FP8 (dynamic activation scales)"),
    MethodInfo("prequantized", (2, 3, 4, 8), grouped=True,
               options=(OptionInfo("checkpoint", "str", required=True,
                                   description="hub id or local path of a published GPTQ/AWQ/compressed-tensors "
                                               "checkpoint of the cell's model"),),
               description="a published GPTQ/AWQ/compressed-tensors checkpoint, loaded as is "
                           "(bits and group_size describe it)"),
)}

BASELINE_METHOD = "none"


def canonical_options(method: str, options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The options with those equal to the backend default removed: writing a default changes no id."""
    info = METHODS[method]
    out = []
    for name, value in options:
        opt = info.option(name)
        default = opt.default if opt is not None and opt.has_default else _NO_DEFAULT
        if isinstance(default, list):
            default = tuple(default)
        if default is _NO_DEFAULT or value != default:
            out.append((name, value))
    return tuple(out)


def resolved_options(method: str, options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The options as a backend uses them: every option with a default filled in, so no backend
    restates a default (`opts.get(name, literal)`)."""
    info = METHODS[method]
    out = {o.name: tuple(o.default) if isinstance(o.default, list) else o.default
           for o in info.options if o.has_default}
    out.update(options)
    return out


def _split_at_load(method: str, options: tuple[tuple[str, Any], ...], at_load: bool) -> tuple[tuple[str, Any], ...]:
    info = METHODS[method]
    return tuple((n, v) for n, v in canonical_options(method, options)
                 if ((opt := info.option(n)) is not None and opt.at_load) == at_load)


def artifact_options(method: str, options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The canonical options that change the quantized weights (load-time ones left out)."""
    return _split_at_load(method, options, at_load=False)


def load_options(method: str, options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The canonical options that change only how the weights are loaded (a kernel)."""
    return _split_at_load(method, options, at_load=True)
