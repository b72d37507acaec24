"""The Engine interface: what every evaluator may ask of a loaded model, whatever runs it.

An engine module (`jobs.engines.<name>`) loads a cell into a subclass of `Engine`; evaluators
call these operations and never ask which engine they hold. What an engine *can* do (e.g. give
the full next-token distribution, which KL and lm-eval need) is declared once, in
`matrix.engines.ENGINES`, and read here through `capabilities`.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ContextManager, Mapping, Sequence

from matrix.engines import ENGINES

if TYPE_CHECKING:
    from jobs.evaluate import Evaluation
    from jobs.serving import ServerHandle
    from matrix.engines import EngineCapabilities as Capabilities

BATCH_SIZE = 8      # prompts per hf generate call of `generate_text` (left-padded)


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine is and ran with: recorded beside its figures, read by evaluators."""
    name: str                              # a key of matrix.engines.ENGINES
    device: str                            # "cpu" | "cuda"
    compute_dtype: str                     # e.g. "bfloat16", "float32"
    kv_cache_dtype: str                    # the KV-cache dtype it runs ("auto": the model dtype)
    max_positions: int                     # tokens one sequence may hold, prompt and generated together
    load_seconds: float
    notes: tuple[str, ...] = ()
    # the unquantized model this cell derives from (a local folder or hub id), and whether the engine
    # runs those weights unquantized: reference-based metrics (KL) need both
    base_path: str | None = None
    base_revision: str | None = None
    is_base: bool = False
    weight_bytes_at_load: int = 0          # measured right after load (jobs.evaluate.memory)
    libraries: tuple[str, ...] = ()        # distributions whose versions the results record
    engine_starts: int = 1                 # engine (server) starts this load cost
    facts: Mapping[str, Any] = field(default_factory=dict)   # engine-specific figures (vLLM: engine args, start log)


@dataclass(frozen=True)
class Generation:
    text: str         # decoded, special tokens skipped, cut before the first stop string
    tokens: int       # tokens generated (stop string included, padding not)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _from_info(name: str) -> property:
    return property(lambda self: getattr(self.info, name), doc=f"`info.{name}`")


class Engine(ABC):
    """A cell's loaded model. Subclasses set `info` (EngineInfo) and `tokenizer` (the cell's own)."""
    info: EngineInfo
    tokenizer: Any

    # read-through to the record, so callers write engine.device rather than engine.info.device
    name = _from_info("name")
    device = _from_info("device")
    compute_dtype = _from_info("compute_dtype")
    kv_cache_dtype = _from_info("kv_cache_dtype")
    load_seconds = _from_info("load_seconds")
    notes = _from_info("notes")
    base_path = _from_info("base_path")
    base_revision = _from_info("base_revision")
    is_base = _from_info("is_base")
    weight_bytes_at_load = _from_info("weight_bytes_at_load")
    libraries = _from_info("libraries")

    @property
    def capabilities(self) -> Capabilities:
        """This engine's row of the capability table."""
        return ENGINES[self.info.name]

    @property
    def full_distribution(self) -> bool:
        """Whether `next_token_logprobs` and `lm_eval_model` work here (the table says)."""
        return self.capabilities.full_distribution

    @abstractmethod
    def prompt_logprobs(self, windows: Sequence[Sequence[int]]) -> list[list[float | None]]:
        """Per window, each position's log-prob of its own token given the ones before (None at 0)."""

    @abstractmethod
    def next_token_logprobs(self, window: Sequence[int], new: int):
        """fp32 log-probs [new, vocab] (a torch tensor) of the last `new` next-token predictions of
        `window`: the full distribution (only where `full_distribution`)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], n_new: int) -> list[list[int]]:
        """Exactly `n_new` greedy tokens per prompt (EOS ignored), all prompts in one batch; the prompts
        have equal lengths (speed and throughput figures time this call)."""

    @abstractmethod
    def generate_text(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = (),
                      batch_size: int = BATCH_SIZE) -> list[Generation]:
        """One greedy `Generation` per prompt, in prompt order, stopping at EOS, `max_new_tokens` or the
        first stop string (the text is cut before it, as lm-eval's `until`)."""

    @abstractmethod
    def serve(self, settings: dict[str, Any]) -> ContextManager[ServerHandle]:
        """An OpenAI-compatible completions server for exactly this model, for the block's duration."""

    @abstractmethod
    def memory_metrics(self) -> Evaluation:
        """Weight bytes, peak memory and what else this engine knows of its memory."""

    @abstractmethod
    def lm_eval_model(self, batch_size: int):
        """An lm-evaluation-harness LM over this model (only where `full_distribution`)."""

    @abstractmethod
    def close(self) -> None:
        """Free the engine's memory (stop what it started) before the worker loads the next one; idempotent."""


def free_memory() -> None:
    """Collect what the engine dropped and return the GPU's cached blocks."""
    import gc
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
