"""Memory: weight bytes of the loaded model and the peak memory of the cell's process.

weight_bytes counts every parameter and buffer once, floating tensors at most 2 bytes per
element: the width they are stored and served in (the CPU engine upcasts to fp32 to compute).
Quantized tensors (int8, packed 4-bit) count at their real size. It is measured right after
load (the engine's `weight_bytes_at_load`): transformers' compressed-tensors path decompresses
packed weights at the first forward, and `weights_in_use_bytes` then shows it (and a note says so).
"""
from __future__ import annotations

from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.process_memory import peak_rss_bytes


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        width = min(t.element_size(), 2) if t.is_floating_point() else t.element_size()
        total += t.numel() * width
    return total


def _board_memory_used() -> int | None:
    """NVML's used memory of the GPU this process sees first (the whole board), or None."""
    try:
        import pynvml

        from jobs.nvml import visible_gpu_handle
        return int(pynvml.nvmlDeviceGetMemoryInfo(visible_gpu_handle()).used)
    except Exception:      # no NVML or no GPU
        return None


def vllm_memory(info) -> Evaluation:
    """vLLM holds the weights in its server's engine-core process: report the checkpoint's weight
    bytes, what vLLM says its weights took on the GPU, the KV cache capacity it allocated, and the
    board's used memory (vLLM reserves a fixed fraction up front, so this is also its peak).
    `info`: the engine's EngineInfo (its facts: engine args, start-up log figures)."""
    args = info.facts["engine_args"]
    out = [Metric.of("weight_bytes", info.weight_bytes_at_load, "bytes", "lower", measured="checkpoint safetensors"),
           Metric.of("kv_cache_tokens", info.facts["kv_cache_tokens"], "tokens", "higher",
                     kv_cache_dtype=info.kv_cache_dtype,
                     gpu_memory_utilization=args["gpu_memory_utilization"], max_model_len=args["max_model_len"])]
    if "weights_gib" in info.facts.get("startup", {}):
        out.append(Metric.of("weights_on_gpu_bytes", info.facts["startup"]["weights_gib"] * 2**30, "bytes", "lower",
                             measured="vllm log: Model loading took"))
    if (used := _board_memory_used()) is not None:
        out.append(Metric.of("peak_memory_bytes", used, "bytes", "lower", kind="nvml board memory used",
                             gpu_memory_utilization=args["gpu_memory_utilization"]))
    return Evaluation(out)


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    return engine.memory_metrics()


def transformers_memory(model, at_load: int, device: str) -> Evaluation:
    """A transformers model in this process: its weight bytes at load and now, and the process's peak
    (CUDA allocator on a GPU, peak RSS on CPU)."""
    import torch

    in_use = weight_bytes(model)
    notes = ("the engine decompressed the quantized weights at first forward (see weights_in_use_bytes)",) \
        if in_use > at_load * 1.2 else ()
    out = [Metric.of("weight_bytes", at_load, "bytes", "lower", floats_counted_at="16-bit", measured="after load"),
           Metric.of("weights_in_use_bytes", in_use, "bytes", "lower", floats_counted_at="16-bit",
                     measured="after evaluation")]
    if device == "cuda":
        out.append(Metric.of("peak_memory_bytes", torch.cuda.max_memory_allocated(), "bytes", "lower",
                             kind="cuda max_memory_allocated"))
    else:
        out.append(Metric.of("peak_memory_bytes", peak_rss_bytes(), "bytes", "lower",
                             kind="process peak RSS (VmHWM) since the cell started"))
    return Evaluation(out, notes=notes)
