"""The transformers engine: CPU and GPU, and the path for bitsandbytes models.

On CPU it computes in float32 (bf16 matmuls there are several times slower); weight bytes
are still reported at their stored width (see jobs.evaluate.memory).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from jobs.engines.base import BATCH_SIZE, Engine, EngineInfo, Generation, cut_at_stop, free_memory
from jobs.evaluate.memory import weight_bytes
from jobs.adapters import adapter_weights, apply_unmerged
from jobs.models import reference_source
from jobs.quantize import get_backend
from jobs.tokenizer_check import verify as verify_tokenizer


def window_logprobs(model, window: Sequence[int], new: int, device: str):
    """fp32 log-probs [new, vocab] of the last `new` next-token predictions of `window`: the one formula
    the cell's log-probs and KL's reference (the base, loaded beside it) are both computed with."""
    import torch
    with torch.inference_mode():
        x = torch.tensor([list(window)], device=device)
        return torch.log_softmax(model(x).logits[0, :-1][-new:].float(), dim=-1)


def load_base_model(engine):
    """The cell's unquantized base, loaded as the cell's own engine computes (its dtype and device)."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(engine.base_path, revision=engine.base_revision,
                                                 dtype=getattr(torch, engine.compute_dtype),
                                                 device_map=engine.device if engine.device != "cpu" else None)
    return model.eval()


@dataclass(eq=False)
class HfEngine(Engine):
    """A transformers model in this process: every operation is a forward or `generate` on it."""
    info: EngineInfo
    model: Any
    tokenizer: Any

    def _tensor(self, rows):
        import torch
        return torch.tensor(rows, device=self.device)

    def next_token_logprobs(self, window: Sequence[int], new: int):
        return window_logprobs(self.model, window, new, self.device)

    def prompt_logprobs(self, windows: Sequence[Sequence[int]]) -> list[list[float | None]]:
        import torch
        out = []
        with torch.inference_mode():
            for window in windows:
                x = self._tensor([list(window)])
                logprobs = torch.log_softmax(self.model(x).logits[0, :-1].float(), dim=-1)
                out.append([None] + logprobs.gather(1, x[0, 1:, None])[:, 0].tolist())
        return out

    def generate(self, prompts: Sequence[Sequence[int]], n_new: int) -> list[list[int]]:
        import torch
        x = self._tensor([list(p) for p in prompts])
        if x.is_cuda:
            torch.cuda.synchronize()
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                                      min_new_tokens=n_new, do_sample=False,
                                      pad_token_id=self.model.config.eos_token_id)
        if x.is_cuda:
            torch.cuda.synchronize()
        return out[:, x.shape[1]:].tolist()

    def generate_text(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = (),
                      batch_size: int = BATCH_SIZE) -> list[Generation]:
        # in batches sorted by length and left-padded: fewer pad tokens per batch
        import torch
        tok, stop, prompts = self.tokenizer, tuple(stop), [list(p) for p in prompts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        eos = self.model.generation_config.eos_token_id
        eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        out: dict[int, Generation] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = self._tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch])
            mask = self._tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch])
            extra = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=pad, **extra)
            for row, i in zip(gen[:, width:].tolist(), batch):
                n = len(row)
                while row and row[-1] == pad:       # a finished row is padded to the batch's longest
                    row.pop()
                if len(row) < n and pad in eos:     # it stopped on an EOS that is also the pad: count it, as vLLM does
                    row.append(pad)
                out[i] = Generation(cut_at_stop(tok.decode(row, skip_special_tokens=True), stop), len(row))
        return [out[i] for i in range(len(prompts))]

    def serve(self, settings: dict[str, Any]):
        from jobs.serving.hf_server import serve
        return serve(self, settings)

    def memory_metrics(self):
        from jobs.evaluate.memory import transformers_memory
        return transformers_memory(self.model, self.weight_bytes_at_load, self.device)

    def lm_eval_model(self, batch_size: int):
        from lm_eval.models.huggingface import HFLM
        return HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size)

    def close(self) -> None:
        self.model = None
        free_memory()


def load(cell, manifest: dict[str, Any]) -> HfEngine:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    notes = []
    if cell.kv_cache_dtype != "auto":
        notes.append(f"kv_cache_dtype {cell.kv_cache_dtype} not supported by the hf engine; used the model dtype")
    kwargs = get_backend(cell.backend).load_kwargs(cell, dtype)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(manifest.path, dtype=dtype, device_map="cuda" if on_gpu else None,
                                                 trust_remote_code=cell.trust_remote_code, **kwargs)
    model.eval()
    if kernels := linear_kernels(model):
        notes.append("linear kernels: " + ", ".join(f"{name} x{n}" for name, n in kernels.items()))
    stored = weight_bytes(model)        # as loaded: before an unmerged adapter's load decompresses packed layers
    # adapter_mode unmerged: the LoRA adapter on top of the (quantized) base, through peft
    if (adapted := apply_unmerged(model, cell)) is not model:
        model, stored = adapted, stored + weight_bytes(adapter_weights(adapted))
        notes.append(f"adapter {cell.adapter} applied unmerged at load (peft)")
    tok = AutoTokenizer.from_pretrained(manifest.path)
    base = reference_source(cell)       # the unquantized model: with an adapter, the merged one
    verify_tokenizer(tok, base, cell.model)      # encodes the probe as when the base was converted
    info = EngineInfo("hf", "cuda" if on_gpu else "cpu", str(dtype).removeprefix("torch."), kv_cache_dtype="auto",
                      max_positions=int(model.config.max_position_embeddings),
                      load_seconds=time.perf_counter() - start, notes=tuple(notes), base_path=base,
                      base_revision=cell.revision, is_base=manifest.path == base and not kwargs,
                      weight_bytes_at_load=stored, libraries=("transformers", "torch"))
    return HfEngine(info, model, tok)


def linear_kernels(model) -> dict[str, int]:
    """Quantized linear layers by class, as the load built them (e.g. GPTQModel picks Marlin, ExLlama,
    Triton or torch by device and format): which kernels a cell's figures were measured on."""
    counts: dict[str, int] = {}
    for module in model.modules():
        cls = type(module)
        if "linear" in cls.__name__.lower() and not cls.__module__.startswith(("torch.", "transformers.")):
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return counts
