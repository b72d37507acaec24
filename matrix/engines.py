"""The engine and KV-cache capability tables: each fact about an engine declared once.

The spec's literals, include/exclude, the validity rules, memory estimates, placement and the
worker pool all read these rows, and `jobs.engines.load_engine` imports the row's module: a new
engine is that module plus one row here.
"""
from __future__ import annotations

from dataclasses import dataclass

# KV-cache dtype -> bytes per element (the plan's KV estimate)
KV_CACHE_DTYPES: dict[str, int] = {"auto": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class EngineCapabilities:
    name: str
    kv_cache_dtypes: tuple[str, ...]       # the KV dtypes it can run
    reusable: bool                         # a worker may keep it loaded across cells (frees memory in-process)
    ray_executor: bool                     # at TP > 1 it starts one Ray worker per GPU in the current placement group
    picks_kernel: bool                     # chooses its own quantized kernels (a GPTQModel `kernel` means nothing)
    full_distribution: bool                # gives the whole next-token distribution in-process (KL, lm-eval need it)
    refused_backends: tuple[tuple[str, str], ...] = ()   # (backend, why it does not run here)
    in_process_weights: bool = False       # its model's layers are modules in this process (layer_sensitivity)
    module: str = ""                       # the module whose load(cell, manifest) builds it; empty: jobs.engines.<name>

    @property
    def code(self) -> str:
        return self.module or f"jobs.engines.{self.name}"


ENGINES: dict[str, EngineCapabilities] = {
    "hf": EngineCapabilities("hf", ("auto",), reusable=True, ray_executor=False, picks_kernel=False, full_distribution=True,
                               in_process_weights=True),
    # vLLM does not free its GPU memory reliably in-process: each vLLM cell gets a fresh actor
    "vllm": EngineCapabilities("vllm", tuple(KV_CACHE_DTYPES), reusable=False, ray_executor=True, picks_kernel=True,
                               full_distribution=False,      # its server returns only its own top-k per position
                               refused_backends=(("bitsandbytes", "vLLM's bitsandbytes path is slated for removal upstream"),)),
}
