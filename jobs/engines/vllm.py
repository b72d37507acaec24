"""The vLLM engine: offline `vllm.LLM` for quality and throughput, on CUDA GPUs.

vLLM reads the checkpoint's own quantization config (GPTQ, AWQ, compressed-tensors, FP8), so
artifacts load as written; bitsandbytes cells belong on the hf engine (`load` refuses them).
The cell's KV-cache dtype is passed through (`auto`, `fp8_e4m3`, `fp8_e5m2`). The served-latency
evaluator stops this offline engine and starts vLLM's own OpenAI server with the same
arguments (`jobs.serving.vllm_server`), so both measure the same configuration.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.artifacts import dir_bytes
from jobs.engines import Engine
from jobs.models import materialize, read_config

# engine arguments every cell shares; the served-latency evaluator reuses them for `vllm serve`
GPU_MEMORY_UTILIZATION = 0.85
MAX_MODEL_LEN = 4096
MAX_LOGPROBS = 64                       # the KL evaluator's default top-k
LOAD_TIME_BACKENDS = ("bitsandbytes",)  # quantize-at-load methods this engine does not run


def engine_args(cell, path: str) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments for `cell`; `vllm serve` gets the same as flags."""
    max_len = min(MAX_MODEL_LEN, read_config(path).get("max_position_embeddings", MAX_MODEL_LEN))
    args = {"model": path, "tokenizer": path, "dtype": "bfloat16", "kv_cache_dtype": cell.kv_cache_dtype,
            "tensor_parallel_size": cell.tensor_parallel_size, "trust_remote_code": cell.trust_remote_code,
            "gpu_memory_utilization": GPU_MEMORY_UTILIZATION, "max_model_len": max_len, "seed": 0,
            "max_logprobs": MAX_LOGPROBS}
    if cell.tensor_parallel_size > 1:
        # inside a Ray actor placed in a placement group, vLLM's Ray executor uses that group
        args["distributed_executor_backend"] = "ray"
    return args


def checkpoint_bytes(path: str) -> int:
    """Bytes of the checkpoint's weight files: what vLLM loads onto the GPU (packed where quantized).
    A hub checkpoint (prequantized) is read from the local snapshot vLLM has just downloaded."""
    if not Path(path).is_dir():
        from huggingface_hub import snapshot_download
        path = snapshot_download(path, local_files_only=True)
    return dir_bytes(Path(path), ".safetensors")


def load(cell, manifest: dict[str, Any]) -> Engine:
    if cell.backend in LOAD_TIME_BACKENDS:
        raise ValueError(f"the vllm engine does not run {cell.backend} ({cell.method}) cells here: "
                         "use engine hf (vLLM's bitsandbytes path is slated for removal upstream)")
    from vllm import LLM

    args = engine_args(cell, manifest["path"])
    start = time.perf_counter()
    llm = LLM(**args)
    seconds = time.perf_counter() - start
    cfg = llm.llm_engine.vllm_config
    info = {
        "engine_args": args,
        "kv_cache_tokens": (cfg.cache_config.num_gpu_blocks or 0) * cfg.cache_config.block_size,
        "quantization": cfg.model_config.quantization,
        "kv_cache_dtype": cfg.cache_config.cache_dtype,
    }
    base = materialize(cell.model, cell.revision, cell.gguf_file)
    return Engine("vllm", None, llm.get_tokenizer(), "cuda", "bfloat16", seconds,
                  (f"vllm quantization={info['quantization']}, kv_cache_dtype={info['kv_cache_dtype']}",),
                  base_path=base, base_revision=cell.revision, is_base=cell.is_baseline,
                  weight_bytes_at_load=checkpoint_bytes(manifest["path"]),
                  libraries=("vllm", "torch", "transformers"), handle=llm, info=info)


def shutdown(engine: Engine) -> None:
    """Stop the offline engine's core process so its GPU memory is free for the next user."""
    llm = engine.handle
    engine.handle = None
    if llm is None:
        return
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    engine.close()
