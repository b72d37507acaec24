"""Named text corpora for perplexity and calibration: package-shipped offline, hub when online.

Every result names the corpus it used, so numbers on different text are never compared.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from jobs.assets import package_file

_EVALS_SAMPLES = "evals/registry/data/text_compression/samples.jsonl"


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    load: Callable[[], list[str]]      # documents, in a fixed order


def _evals_source(kind: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        with package_file("evals", _EVALS_SAMPLES).open() as f:
            return [row["text"] for row in map(json.loads, f) if row["type"] == kind]
    return load


def _hub_dataset(path: str, name: str, split: str) -> Callable[[], list[str]]:
    def load() -> list[str]:
        import datasets  # the hub path; needs network or a warm HF cache
        return [t for t in datasets.load_dataset(path, name, split=split)["text"]]
    return load


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("evals-wikipedia", "50 Wikipedia articles from the `evals` package (text_compression)", _evals_source("wikipedia")),
    Corpus("evals-c4", "50 C4 web documents from the `evals` package (text_compression)", _evals_source("c4")),
    Corpus("evals-openwebtext", "50 OpenWebText documents from the `evals` package", _evals_source("openwebtext")),
    Corpus("wikitext2", "WikiText-2 raw test split from the HF hub (the GPTQ/AWQ papers' setting)",
           _hub_dataset("wikitext", "wikitext-2-raw-v1", "test")),
)}


def load_corpus(name: str) -> list[str]:
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    return CORPORA[name].load()
