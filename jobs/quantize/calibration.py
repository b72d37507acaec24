"""Calibration samples: the corpus's documents joined, tokenized once, cut into `seq_len` chunks.

Every backend gets the same token ids for the same settings, so GPTQ via llm-compressor and via
GPTQModel are calibrated alike; the record says what was actually used (a short corpus gives
fewer samples than asked for, and the manifest shows it).
"""
from __future__ import annotations

import hashlib
from typing import Any

from jobs.corpora import resolve_corpus
from jobs.quantize import Calibration
from matrix.spec import calibration_defaults


def build_calibration(tokenizer, settings: dict[str, Any]) -> Calibration:
    """The samples of one calibration combination (a cell's `calibration`: corpus, samples, seq_len; a field
    left out is CalibrationSpec's default)."""
    settings = {**calibration_defaults(), **settings}
    corpus = resolve_corpus(settings["corpus"])
    wanted, seq_len = int(settings["samples"]), int(settings["seq_len"])
    docs = corpus.load()
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    samples = tuple(tuple(ids[i:i + seq_len]) for i in range(0, min(len(ids), wanted * seq_len), seq_len))
    samples = tuple(s for s in samples if len(s) == seq_len)
    if not samples:
        raise ValueError(f"calibration corpus {corpus.name!r} has {len(ids)} tokens, fewer than one sample "
                         f"of seq_len {seq_len}")
    digest = hashlib.sha256(b"".join(bytes(str(s), "ascii") for s in samples)).hexdigest()[:16]
    record = {"corpus": corpus.name, "source": corpus.description, "samples_requested": wanted,
              "samples": len(samples), "seq_len": seq_len, "tokens": len(samples) * seq_len,
              "documents": len(docs), "token_ids_sha256": digest}
    return Calibration(samples, record)
