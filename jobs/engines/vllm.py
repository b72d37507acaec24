"""The vLLM engine: vLLM's own OpenAI server (`vllm serve`), one start per cell, on CUDA GPUs.

Every evaluator of a vLLM cell talks to that one server (`jobs.serving.vllm_server`): quality
through `prompt_logprobs`, offline-style speed through batched completions requests, served
latency through streamed ones. vLLM reads the checkpoint's own quantization config (GPTQ, AWQ,
compressed-tensors, FP8), so artifacts load as written; bitsandbytes cells belong on the hf
engine (`load` refuses them). The cell's KV-cache dtype is passed through (`auto`, `fp8_e4m3`,
`fp8_e5m2`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jobs.artifacts import dir_bytes
from jobs.engines.base import BATCH_SIZE, Engine, EngineInfo, Generation, cut_at_stop, free_memory
from jobs.models import read_config, reference_source
from matrix.engines import ENGINES
from matrix.spec import KLSpec

# engine arguments every cell shares (`vllm serve` flags; `vllm bench` in cluster/gpu/run.sh uses the same)
GPU_MEMORY_UTILIZATION = 0.85
MAX_MODEL_LEN = 4096
MAX_LOGPROBS = KLSpec.model_fields["top_k"].default    # the KL evaluator's default top-k


def engine_args(cell, path: str) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments for `cell`, given to `vllm serve` as flags."""
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
    refused = dict(ENGINES["vllm"].refused_backends)      # the rules skip these cells; a direct load is refused too
    if cell.backend in refused:
        raise ValueError(f"the vllm engine does not run {cell.backend} ({cell.method}) cells here: use engine hf "
                         f"({refused[cell.backend]})")
    from transformers import AutoTokenizer

    from jobs.serving.vllm_server import start, startup_facts

    args = engine_args(cell, manifest.path)
    server = start(args)
    try:
        facts = startup_facts(server.log())
        quant = (read_config(manifest.path).get("quantization_config") or {}).get("quant_method")
        tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"], trust_remote_code=cell.trust_remote_code)
        base = reference_source(cell)     # with an adapter: the merged model
        from jobs.tokenizer_check import verify
        verify(tokenizer, base, cell.model)       # encodes the probe as when the base was converted
        weight_bytes = checkpoint_bytes(manifest.path)
    except BaseException:
        server.close()
        raise
    compile_note = (f"compile cache hit (graphs loaded in {facts['compile_cache_load_seconds']:.1f} s)"
                    if "compile_cache_load_seconds" in facts else
                    f"torch.compile {facts['compile_seconds']:.1f} s" if "compile_seconds" in facts else "")
    notes = (f"vllm serve quantization={quant}, kv_cache_dtype={cell.kv_cache_dtype}",
             f"vllm start {server.start_seconds:.1f} s" + (f", init engine {facts['init_engine_seconds']:.1f} s"
                                                       if "init_engine_seconds" in facts else "")
             + (f", {compile_note}" if compile_note else ""))
    info = EngineInfo("vllm", "cuda", args["dtype"], kv_cache_dtype=cell.kv_cache_dtype,
                      max_positions=int(args["max_model_len"]), load_seconds=server.start_seconds, notes=notes,
                      base_path=base, base_revision=cell.revision, is_base=cell.is_baseline,
                      weight_bytes_at_load=weight_bytes, libraries=("vllm", "torch", "transformers"), engine_starts=1,
                      facts={"engine_args": args, "kv_cache_tokens": facts.get("kv_cache_tokens", 0),
                             "quantization": quant, "startup": facts})
    return VllmEngine(info, tokenizer, server)


@dataclass(eq=False)
class VllmEngine(Engine):
    """The cell's one `vllm serve` (`server`: jobs.serving.vllm_server.VllmServer); every operation is a
    request to it (jobs.serving.openai_batch), all prompts of a call in one request, as `LLM.generate`
    batches them offline."""
    info: EngineInfo
    tokenizer: Any
    server: Any

    def prompt_logprobs(self, windows: Sequence[Sequence[int]]) -> list[list[float | None]]:
        # `prompt_logprobs=0`: each prompt token's own log-prob, from the raw logits
        from jobs.serving.openai_batch import prompt_logprobs
        return prompt_logprobs(self.server.url, windows)

    def next_token_logprobs(self, window: Sequence[int], new: int):
        # refused by design: evaluators that need it (KL) read `full_distribution` from the capability
        # table first and note the skip; only a direct call reaches this
        raise NotImplementedError("the vllm engine returns only its own top-k log-probs per position, not the "
                                  "full next-token distribution (matrix.engines: full_distribution)")

    def generate(self, prompts: Sequence[Sequence[int]], n_new: int) -> list[list[int]]:
        from jobs.serving.openai_batch import generate
        return [c["token_ids"] for c in generate(self.server.url, prompts, n_new)]

    def generate_text(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = (),
                      batch_size: int = BATCH_SIZE) -> list[Generation]:
        # batch_size is hf's: vLLM's scheduler batches the one request itself
        from jobs.serving.openai_batch import complete
        payload = {"prompt": [list(p) for p in prompts], "max_tokens": max_new_tokens, "temperature": 0.0,
                   "return_token_ids": True}
        if stop:
            payload["stop"] = list(stop)
        return [Generation(cut_at_stop(c["text"], stop), len(c.get("token_ids") or []))
                for c in complete(self.server.url, payload)]

    def serve(self, settings: dict[str, Any]):
        from jobs.serving.vllm_server import serve
        return serve(self.server, settings)

    def memory_metrics(self):
        from jobs.evaluate.memory import vllm_memory
        return vllm_memory(self.info)

    def lm_eval_model(self, batch_size: int):
        # refused by design, as above: lm_eval checks `full_distribution` and notes "use the hf engine"
        raise NotImplementedError("lm-eval's vllm backend builds its own LLM: a second copy beside this cell's "
                                  "server (matrix.engines: full_distribution)")

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()        # the GPU is free only once its process group is gone
        free_memory()
