"""The sweep spec: YAML in, validated typed records out.

Errors name the field path, the bad value and what is allowed, before any work starts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from matrix.hardware import ACCELERATORS
from matrix.methods import METHODS
from matrix.select import ENGINES, GROUP_SIZES, KV_CACHE_DTYPES, match_problem  # noqa: F401 (re-exported)


class SpecError(ValueError):
    """A spec that cannot run; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    id: str = Field(min_length=1, description="HF hub id, local directory, local .gguf file, or builtin:<name>")
    revision: str | None = None
    gguf_file: str | None = Field(None, description="a .gguf file inside the hub repo or folder `id` "
                                                    "(de-quantized to 16-bit at load)")
    tensor_parallel_size: int = Field(1, ge=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _gguf_source(self) -> "ModelSpec":
        if self.gguf_file is not None:
            if not self.gguf_file.endswith(".gguf"):
                raise ValueError(f"gguf_file {self.gguf_file!r} must name a .gguf file")
            if self.id.endswith(".gguf"):
                raise ValueError(f"id {self.id!r} is already a .gguf file; leave gguf_file out")
        return self

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None or self.id.endswith(".gguf")


class MethodSpec(_Strict):
    method: str
    backend: str | None = None
    bits: list[int] | None = None
    group_size: list[int] | None = None
    # option grids: each list value is a dimension, scalars are fixed
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(METHODS)}")
        return v

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = METHODS.get(info.data.get("method", ""))
        if method is None:
            return v    # the unknown method is the error reported
        allowed = ", ".join(o.name for o in method.options) or "none"
        for name, value in v.items():
            opt = method.option(name)
            if opt is None:
                raise ValueError(f"unknown option {name!r} for {method.name}; allowed: {allowed}")
            values = value if opt.is_grid(value) else [value]
            if not values:
                raise ValueError(f"option {name}: an empty list gives no cells")
            for one in values:
                problem = opt.check(one)
                if problem:
                    raise ValueError(f"option {name} of {method.name} {problem}")
        missing = [o.name for o in method.options if o.required and o.name not in v]
        if missing:
            raise ValueError(f"{method.name} needs option {', '.join(missing)}")
        return v

    @model_validator(mode="after")
    def _check_against_method(self) -> "MethodSpec":
        info = METHODS[self.method]
        if self.backend is not None and self.backend not in info.backends:
            raise ValueError(f"backend {self.backend!r} does not implement {self.method}; "
                             f"allowed: {', '.join(info.backends)}")
        backend = self.backend or info.backends[0]
        for name in self.options:
            opt = info.option(name)
            if opt.backends and backend not in opt.backends:
                raise ValueError(f"option {name} applies to backend {', '.join(opt.backends)}, not {backend!r}")
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
    batch_prompts: int = Field(0, ge=0, description="also measure offline throughput: this many distinct "
                                                    "prompts generated at once (0: skip)")


class ServingSpec(_Strict):
    """Served latency under load: the same prompts at each concurrency level."""
    concurrency: list[int] = Field(default_factory=lambda: [1, 4], min_length=1,
                                   description="clients (closed loop) or the in-flight cap (with request_rate)")
    requests_per_level: int = Field(50, ge=1)
    request_rate: float | None = Field(None, gt=0, description="null: closed loop, each client sends its next "
                                                               "request when the last finishes; a number: Poisson "
                                                               "arrivals at that many req/s")
    prompt_tokens: int = Field(128, ge=1)
    output_tokens: int = Field(64, ge=1)
    sla_ttft_ms: float = Field(2000.0, gt=0)
    sla_tpot_ms: float = Field(200.0, gt=0)
    corpus: str = Field("evals-wikipedia", description="where prompts are cut from")

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c < 1]
        if bad:
            raise ValueError(f"concurrency levels must be at least 1, got {bad}")
        return v


class PromptSetSpec(_Strict):
    """The user's own prompts: a JSONL file, one {"prompt": ..., "id": ...} object a line."""
    path: str = Field(description="JSONL file; a relative path is read from the spec file's folder, then the "
                                  "working directory")
    max_new_tokens: int = Field(64, ge=1)
    limit: int | None = Field(None, ge=1, description="the first N prompts")

    @field_validator("path")
    @classmethod
    def _readable_jsonl(cls, v: str, info: ValidationInfo) -> str:
        base = (info.context or {}).get("base_dir")
        given = Path(v).expanduser()
        candidates = [given] if given.is_absolute() else \
            [Path(b) / given for b in (base, Path.cwd()) if b is not None]
        try:
            found = next((p for p in candidates if p.is_file()), None)
            text = found.read_text(encoding="utf-8", errors="replace") if found else None
        except OSError as e:    # unreadable, name too long, ...: a spec error, not a traceback
            raise ValueError(f"cannot read prompt file {v}: {e.strerror or e}") from None
        if found is None:
            raise ValueError(f"prompt file not found: {v}")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{found} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{found} line {n}: needs a string \"prompt\"")
        return str(found.resolve())


class EvaluationSpec(_Strict):
    perplexity: PerplexitySpec | None = PerplexitySpec()
    speed: SpeedSpec | None = SpeedSpec()
    kl_divergence: KLSpec | None = None
    lm_eval: LmEvalSpec | None = None
    serving: ServingSpec | None = None
    prompts: PromptSetSpec | None = None


class RuntimeEnvSpec(_Strict):
    """A Ray runtime environment for one stage: an existing interpreter, or packages to install."""
    py_executable: str | None = None
    pip: list[str] | None = None
    uv: list[str] | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "RuntimeEnvSpec":
        given = [k for k in ("py_executable", "pip", "uv") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of py_executable, pip, uv; got {', '.join(given)}")
        return self


class StageEnvs(_Strict):
    quantize: RuntimeEnvSpec | None = None
    serve: RuntimeEnvSpec | None = None


class ResourcesSpec(_Strict):
    cpus_per_cell: int = Field(2, ge=1, description="CPU cells (no GPU in the cluster) reserve this many cores")
    max_retries: int = Field(1, ge=0)
    accelerator_type: str | None = Field(None, description="Ray accelerator type (H100, A100-80G, L4, ...): "
                                                           "pins cells to that GPU type")
    gpu_memory_gib: float | None = Field(None, gt=0, description="target GPU memory for `qmx plan`; default: "
                                                                 "from accelerator_type")
    runtime_env: StageEnvs = StageEnvs()

    @model_validator(mode="after")
    def _known_memory(self) -> "ResourcesSpec":
        # an accelerator outside the table is fine for Ray, but plan needs its memory
        if self.accelerator_type and self.accelerator_type not in ACCELERATORS and self.gpu_memory_gib is None:
            raise ValueError(f"accelerator_type {self.accelerator_type!r} is not in the hardware table; known: "
                             f"{', '.join(ACCELERATORS)} (or set gpu_memory_gib)")
        return self

    @property
    def target_memory_gib(self) -> float | None:
        if self.gpu_memory_gib is not None:
            return self.gpu_memory_gib
        acc = ACCELERATORS.get(self.accelerator_type or "")
        return acc.memory_gib if acc else None


def _valid_match(v: dict[str, Any]) -> dict[str, Any]:
    problem = match_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class IncludeRule(_Strict):
    """Cells matching `when` are kept only if they also match `require`."""
    when: dict[str, Any]
    require: dict[str, Any]

    _check = field_validator("when", "require")(_valid_match)


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    kv_cache_dtype: list[Literal["auto", "fp8_e4m3", "fp8_e5m2"]] = Field(default_factory=lambda: ["auto"])
    engine: list[Literal["hf", "vllm"]] = Field(default_factory=lambda: ["hf"])
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: ResourcesSpec = ResourcesSpec()
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="drop the cells matching any entry "
                                                                            "(every key; a list: any value)")
    include: list[IncludeRule] = Field(default_factory=list)

    @field_validator("exclude")
    @classmethod
    def _valid_excludes(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, m in enumerate(v):
            problem = match_problem(m)
            if problem:
                raise ValueError(f"entry {i}: {problem}")
        return v

    @model_validator(mode="after")
    def _matches_name_models(self) -> "SweepSpec":
        ids = [m.id for m in self.models]
        matches = [(f"exclude.{i}", m) for i, m in enumerate(self.exclude)] + \
            [(f"include.{i}.{part}", getattr(r, part)) for i, r in enumerate(self.include)
             for part in ("when", "require")]
        for where, m in matches:
            for v in m.get("model", []) if isinstance(m.get("model"), list) else [m.get("model", ids[0])]:
                if v not in ids:
                    raise ValueError(f"{where}.model: {v!r} is not one of the spec's models; allowed: {', '.join(ids)}")
        return self


def spec_json_schema() -> dict[str, Any]:
    """The spec's JSON Schema, plus the method table (`x-methods`: bits, backends, options) and the
    dimension names include/exclude match on (`x-match-keys`): what a plain schema cannot say."""
    from matrix.select import MATCH_KEYS

    schema = SweepSpec.model_json_schema()
    schema["x-methods"] = {m.name: {
        "description": m.description, "bits": list(m.bits), "backends": list(m.backends), "grouped": m.grouped,
        "writes_artifact": m.artifact,
        "options": {o.name: {"kind": o.kind, "description": o.description, "required": o.required,
                             **({"choices": list(o.choices)} if o.choices else {}),
                             **({"default": o.default} if o.has_default else {}),
                             **({"backends": list(o.backends)} if o.backends else {}),
                             **({"at_load": True} if o.at_load else {})} for o in m.options},
    } for m in METHODS.values()}
    schema["x-match-keys"] = list(MATCH_KEYS)
    return schema


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid spec {source}:"]
    for e in err.errors():
        # odd keys (spaces, control characters) are quoted, so each problem stays on one readable line
        path = ".".join(str(p) if isinstance(p, int) or str(p).isidentifier() else repr(p)
                        for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        bad = e.get("input")
        shown = "" if isinstance(bad, (dict, list)) else f" (got {bad!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>", base_dir: str | Path | None = None) -> SweepSpec:
    """Validate `data`; relative file paths in it (the prompt set) are read from `base_dir` first."""
    if not isinstance(data, dict):
        raise SpecError(f"invalid spec {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
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
    return parse_spec(data, str(path), path.parent)
