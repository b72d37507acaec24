"""Per-stage Ray runtime environments: quantize tasks and cell (serve) actors may run different Pythons.

vLLM and llm-compressor pin different compressed-tensors versions, so a GPU cluster typically
runs the quantize stage in an llm-compressor environment and the serve stage in a vLLM one. Each
stage's `RuntimeEnvSpec` becomes a Ray runtime_env dict; Ray merges it over the job's own
runtime env (e.g. the `working_dir` of `ray job submit`), env vars key by key.
"""
from __future__ import annotations

from typing import Any, Literal

Stage = Literal["quantize", "serve"]


def stage_runtime_env(resources: Any, stage: Stage) -> dict[str, Any] | None:
    """The Ray runtime_env for `stage` from `resources.runtime_env.<stage>`, or None to inherit the job's."""
    envs = getattr(resources, "runtime_env", None)
    spec = getattr(envs, stage, None) if envs is not None else None
    if spec is None:
        return None
    env: dict[str, Any] = {}
    if getattr(spec, "py_executable", None):
        # an interpreter that already has quantmatrix and the stage's libraries installed
        env["py_executable"] = spec.py_executable
    if getattr(spec, "pip", None):
        env["pip"] = list(spec.pip)
    if getattr(spec, "uv", None):
        env["uv"] = list(spec.uv)
    if getattr(spec, "env_vars", None):
        env["env_vars"] = {str(k): str(v) for k, v in spec.env_vars.items()}
    return env or None
