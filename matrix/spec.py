"""The sweep spec: YAML in, validated typed records out.

Errors name the field path, the bad value and what is allowed, before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from matrix.methods import METHODS

KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
ENGINES = ("hf", "vllm")
GROUP_SIZES = (32, 64, 128, -1)       # -1: per-channel


class SpecError(ValueError):
    """A spec that cannot run; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    id: str = Field(description="HF hub id, local directory, or builtin:<name>")
    revision: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    trust_remote_code: bool = False


class MethodSpec(_Strict):
    method: str
    backend: str | None = None
    bits: list[int] | None = None
    group_size: list[int] | None = None
    # option grids: each list value is a dimension, scalars are fixed
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _check_against_method(self) -> "MethodSpec":
        info = METHODS[self.method]
        if self.backend is not None and self.backend not in info.backends:
            raise ValueError(f"backend {self.backend!r} does not implement {self.method}; "
                             f"allowed: {', '.join(info.backends)}")
        for g in self.group_size or []:
            if g not in GROUP_SIZES:
                raise ValueError(f"group_size {g} not allowed; allowed: {', '.join(map(str, GROUP_SIZES))}")
        for b in self.bits or []:
            if b not in (2, 3, 4, 8, 16):
                raise ValueError(f"bits {b} not allowed; allowed: 2, 3, 4, 8 (16 for the baseline)")
        return self


class CalibrationSpec(_Strict):
    corpus: str = "evals-c4"
    samples: int = Field(16, ge=1)
    seq_len: int = Field(256, ge=16)


class PerplexitySpec(_Strict):
    corpus: str = "evals-wikipedia"
    context: int = Field(512, ge=16)
    stride: int = Field(512, ge=1)
    max_tokens: int | None = Field(2048, ge=32)

    @model_validator(mode="after")
    def _stride_fits(self) -> "PerplexitySpec":
        if self.stride > self.context:
            raise ValueError(f"stride {self.stride} is larger than context {self.context}")
        return self


class KLSpec(PerplexitySpec):
    """KL of next-token distributions from the unquantized baseline, on perplexity's windows."""
    top_k: int = Field(64, ge=1, description="baseline log-probs kept per token; the rest is one bucket")


class LmEvalSpec(_Strict):
    """Offline multiple-choice tasks run through lm-evaluation-harness."""
    tasks: list[Literal["evals-mmlu"]] = Field(default_factory=lambda: ["evals-mmlu"], min_length=1)
    limit: int = Field(100, ge=1, description="items per task (the first N, in file order)")
    num_fewshot: int = Field(0, ge=0)


class SpeedSpec(_Strict):
    prompt_tokens: int = Field(32, ge=1)
    new_tokens: int = Field(32, ge=2)
    repeats: int = Field(3, ge=1)


class EvaluationSpec(_Strict):
    perplexity: PerplexitySpec | None = PerplexitySpec()
    speed: SpeedSpec | None = SpeedSpec()
    kl_divergence: KLSpec | None = None
    lm_eval: LmEvalSpec | None = None


class ResourcesSpec(_Strict):
    cpus_per_cell: int = Field(2, ge=1, description="CPU cells (no GPU in the cluster) reserve this many cores")
    max_retries: int = Field(1, ge=0)


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    kv_cache_dtype: list[Literal["auto", "fp8_e4m3", "fp8_e5m2"]] = Field(default_factory=lambda: ["auto"])
    engine: list[Literal["hf", "vllm"]] = Field(default_factory=lambda: ["hf"])
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: ResourcesSpec = ResourcesSpec()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid spec {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        bad = e.get("input")
        shown = "" if isinstance(bad, (dict, list)) else f" (got {bad!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid spec {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"invalid spec {path}: not YAML: {err}") from None
    return parse_spec(data, str(path))
