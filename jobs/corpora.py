"""Named text corpora for perplexity and calibration: package-shipped offline, hub when online.

Besides the named corpora below, two name forms reach any text:
  `hf:<dataset>[:<config>]:<split>:<field>`   a hub dataset (needs network or a warm HF cache)
  `file:<path>`                               a local .jsonl (field "text", else the first string
                                              field of each row) or .txt (documents split on blank lines)
Every result names the corpus it used, so numbers on different text are never compared.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
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


def _hub_dataset(path: str, name: str | None, split: str, text_field: str = "text",
                 drop_empty: bool = True) -> Callable[[], list[str]]:
    def load() -> list[str]:
        import datasets  # the hub path; needs network or a warm HF cache
        try:
            rows = datasets.load_dataset(path, name, split=split)
        except Exception as err:   # offline, unknown id, gated: say which corpus and why
            raise RuntimeError(f"corpus hf:{path}: could not load split {split!r} from the hub "
                               f"({type(err).__name__}: {str(err)[:200]})") from err
        if text_field not in rows.column_names:
            raise KeyError(f"corpus hf:{path}: no field {text_field!r}; fields: {', '.join(rows.column_names)}")
        return [t for t in rows[text_field] if isinstance(t, str) and (t.strip() or not drop_empty)]
    return load


def _jsonl_text(row) -> str | None:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        if isinstance(row.get("text"), str):
            return row["text"]
        return next((v for v in row.values() if isinstance(v, str)), None)
    return None


def _local_file(path: Path) -> Callable[[], list[str]]:
    def load() -> list[str]:
        if not path.is_file():
            raise FileNotFoundError(f"corpus file:{path}: no such file")
        if path.suffix == ".jsonl":
            with path.open() as f:
                docs = [_jsonl_text(json.loads(line)) for line in f if line.strip()]
            docs = [d for d in docs if d and d.strip()]
        else:
            docs = [d.strip() for d in path.read_text().split("\n\n") if d.strip()]
        if not docs:
            raise ValueError(f"corpus file:{path}: no text found")
        return docs
    return load


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("evals-wikipedia", "50 Wikipedia articles from the `evals` package (text_compression)", _evals_source("wikipedia")),
    Corpus("evals-c4", "50 C4 web documents from the `evals` package (text_compression)", _evals_source("c4")),
    Corpus("evals-openwebtext", "50 OpenWebText documents from the `evals` package", _evals_source("openwebtext")),
    Corpus("wikitext2", "WikiText-2 raw test split from the HF hub (the GPTQ/AWQ papers' setting)",
           # the papers join every row, empty ones included: "\n\n".join(test["text"])
           _hub_dataset("wikitext", "wikitext-2-raw-v1", "test", drop_empty=False)),
)}


def resolve_corpus(name: str) -> Corpus:
    """The corpus `name` stands for: a named one, `hf:...` or `file:...`."""
    if name in CORPORA:
        return CORPORA[name]
    if name.startswith("hf:"):
        parts = name.removeprefix("hf:").split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise KeyError(f"corpus {name!r}: expected hf:<dataset>[:<config>]:<split>:<field>")
        dataset, config, split, text_field = parts if len(parts) == 4 else (parts[0], None, parts[1], parts[2])
        return Corpus(name, f"hub dataset {dataset}" + (f" ({config})" if config else "") + f", split {split}, "
                      f"field {text_field}", _hub_dataset(dataset, config, split, text_field))
    if name.startswith("file:"):
        path = Path(name.removeprefix("file:")).expanduser()
        return Corpus(name, f"local file {path}", _local_file(path))
    raise KeyError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}, hf:<dataset>[:<config>]:<split>:<field>, "
                   "file:<path.jsonl|path.txt>")


def load_corpus(name: str) -> list[str]:
    return resolve_corpus(name).load()
