"""Quantization backends on a CUDA GPU (skipped without one): AWQ and GPTQ via llm-compressor,
bitsandbytes NF4 / int8, GPTQ via GPTQModel where it is installed (loaded with its Marlin and Triton
kernels), each loaded back through the hf engine on the GPU.

Self-contained: a random-weight Llama (hidden 512, 2 layers) with a word-level tokenizer, and a
generated text file as both calibration and perplexity corpus, so it needs neither the hub nor the
package-shipped model or text. Random weights: the check is that each path runs on the GPU and
its perplexity stays near the unquantized model's, not quality. Prints one line per backend
(format, quantize seconds, peak CUDA memory, perplexity) for the record.
"""
from __future__ import annotations

import importlib.util
import json
import random

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

WORDS = 2000
PPL = {"context": 256, "stride": 256, "max_tokens": 1024}


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    """(model folder, corpus name): a random Llama whose every in_features divides 128."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("gpu-backends")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    out = root / "llama"
    tok.save_pretrained(out)
    config = LlamaConfig(vocab_size=WORDS, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    rng = random.Random(0)   # Zipf-ish word frequencies, so activations have some structure
    text = root / "text.txt"
    text.write_text("\n\n".join(" ".join(f"w{min(WORDS - 1, 3 + int(rng.paretovariate(1.2)))}" for _ in range(400))
                                for _ in range(40)))
    return str(out), f"file:{text}"


def _cell(model: str, corpus: str, method: str, backend: str, bits: int, group: int | None = None, **options):
    from matrix import Cell
    from matrix.methods import METHODS

    calib = (("corpus", corpus), ("samples", 16), ("seq_len", 256)) if METHODS[method].calibrated else None
    return Cell(model=model, revision=None, method=method, backend=backend, bits=bits, group_size=group,
                options=tuple(sorted(options.items())), kv_cache_dtype="auto", engine="hf", calibration=calib,
                evaluation="{}")


def _ppl(cell, corpus: str) -> tuple[float, dict, dict[str, int]]:
    from jobs.artifacts import ensure_artifact
    from jobs.engines import load_engine
    from jobs.engines.hf import linear_kernels
    from jobs.evaluate import run_evaluator

    manifest = ensure_artifact(cell)
    engine = load_engine(cell, manifest)
    try:
        assert engine.device == "cuda"
        kernels = linear_kernels(engine.model)
        ppl = run_evaluator("perplexity", engine, {"corpus": corpus, **PPL}).metrics[0].value
    finally:
        engine.close()
    return ppl, manifest, kernels


CASES = {
    "awq-llmcompressor": (("awq", "llmcompressor", 4, 128), "compressed-tensors (pack-quantized)"),
    "gptq-llmcompressor": (("gptq", "llmcompressor", 4, 128), "compressed-tensors (pack-quantized)"),
    "fp8-llmcompressor": (("fp8", "llmcompressor", 8), "compressed-tensors (float-quantized)"),
    "nf4-bitsandbytes": (("nf4", "bitsandbytes", 4), "bitsandbytes"),
    "int8-bitsandbytes": (("int8", "bitsandbytes", 8), "bitsandbytes"),
    # one artifact, two GPTQModel kernels (the kernel is a load option, not in the artifact key); not
    # `auto`: on Hopper it picks Machete, which downloads CUTLASS source at first use (offline here)
    "gptq-gptqmodel-marlin": (("gptq", "gptqmodel", 4, 128, {"kernel": "marlin"}), "gptq (gptq, 4-bit, group 128"),
    "gptq-gptqmodel-triton": (("gptq", "gptqmodel", 4, 128, {"kernel": "triton"}), "gptq (gptq, 4-bit, group 128"),
}
_LIBRARY = {"llmcompressor": "llmcompressor", "bitsandbytes": "bitsandbytes", "gptqmodel": "gptqmodel"}


@pytest.mark.parametrize("case", list(CASES))
def test_backend_on_gpu(case, gpu_model):
    from jobs.quantize import unavailable_reason

    (method, backend, *rest), fmt = CASES[case]
    options = rest.pop() if isinstance(rest[-1], dict) else {}
    if importlib.util.find_spec(_LIBRARY[backend]) is None or unavailable_reason(backend):
        pytest.skip(f"{backend}: {unavailable_reason(backend) or 'not installed on this GPU machine'}")
    model, corpus = gpu_model
    base_ppl, _, base_kernels = _ppl(_cell(model, corpus, "none", "none", 16), corpus)
    ppl, manifest, kernels = _ppl(_cell(model, corpus, method, backend, *rest, **options), corpus)
    assert manifest.format.startswith(fmt)
    assert not base_kernels
    # transformers decompresses compressed-tensors checkpoints into dense Linear layers (the memory
    # evaluator notes it); every other format keeps its own quantized layers
    assert bool(kernels) != fmt.startswith("compressed-tensors"), f"quantized linear layers: {kernels}"
    if "kernel" in options:
        assert options["kernel"] in " ".join(kernels).lower(), kernels
    if manifest.quantize_seconds is not None:
        assert manifest.device == "cuda" and manifest.peak_cuda_bytes > 0
        assert not manifest.notes or "pin_memory" not in " ".join(manifest.notes)   # the CPU workaround stays off
    print(f"GPU {case}: {torch.cuda.get_device_name()} format {manifest.format} quantize_seconds "
          f"{manifest.quantize_seconds} peak_cuda_bytes {manifest.peak_cuda_bytes} kernels {kernels} perplexity {ppl:.2f} "
          f"(base {base_ppl:.2f}) versions {json.dumps(manifest.library_versions)}")
    assert ppl == ppl and ppl < 1.5 * base_ppl
