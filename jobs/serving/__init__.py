"""Served latency: OpenAI-compatible servers, their clients and a load generator.

Each engine's `serve(settings)` (jobs.engines.base) is a context manager that yields a
`ServerHandle` of a running server (POST {url}/v1/completions, `stream: true`) for exactly the
cell's loaded model: `hf_server` for the hf engine, the cell's own `vllm serve` (`vllm_server`)
for vLLM. Server modules are imported lazily: vLLM is heavy and absent on CPU hosts.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerHandle:
    url: str          # base URL, e.g. http://127.0.0.1:8123
    batching: str     # how it schedules concurrent requests ("none": one at a time; "continuous": vLLM's
    #                   scheduler), recorded with every number it serves

