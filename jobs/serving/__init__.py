"""Served latency: a registry of OpenAI-compatible servers per engine, and a load generator.

Each server module exposes `serve(engine, settings)`, a context manager that yields the base
URL of a running server (POST {base_url}/v1/completions, `stream: true`) for exactly the
cell's loaded model, and `BATCHING`: how it schedules concurrent requests ("none": one
generation at a time; "continuous": vLLM's scheduler), recorded with every number it serves.
Servers are imported lazily: vLLM is heavy and absent on CPU hosts.
"""
from __future__ import annotations

import importlib
from types import ModuleType

_SERVERS = {"hf": "jobs.serving.hf_server", "vllm": "jobs.serving.vllm_server"}


def server_module(engine_name: str) -> ModuleType:
    if engine_name not in _SERVERS:
        raise KeyError(f"No server for engine {engine_name!r}. Available: {', '.join(_SERVERS)}")
    return importlib.import_module(_SERVERS[engine_name])


def serve(engine, settings: dict):
    """The engine's server as a context manager yielding its base URL."""
    return server_module(engine.name).serve(engine, settings)


def server_batching(engine_name: str) -> str:
    return getattr(server_module(engine_name), "BATCHING", "unknown")
