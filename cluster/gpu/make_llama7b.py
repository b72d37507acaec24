"""A random-weight Llama of 7B shape (Llama-2/Mistral-like: 32 layers, hidden 4096, 32 heads, 8 KV
heads, FFN 14336) with SmolLM2's tokenizer and vocabulary, in bf16, for GPU speed figures.

    python3 cluster/gpu/make_llama7b.py OUT_DIR

Random weights: speed and memory only (perplexity is meaningless). SmolLM2's tokenizer makes the
corpus prompts real, distinct token sequences (a word-level toy tokenizer would map them to <unk>).
Built on the GPU when there is one (seconds), written as safetensors; skipped if OUT_DIR is complete.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPE = dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
             intermediate_size=14336, max_position_embeddings=4096, tie_word_embeddings=False)


def main(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from jobs.models import materialize

    if (out / "DONE").is_file():
        print(f"{out}: already there")
        return
    start = time.perf_counter()
    smol = materialize("builtin:smollm2-135m-instruct", None, None)
    tok = AutoTokenizer.from_pretrained(smol)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, max_shard_size="4GB")
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    (out / "DONE").write_text(json.dumps({"params": params, "seconds": time.perf_counter() - start}))
    print(f"wrote {out}: {params / 1e9:.2f}B parameters in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
