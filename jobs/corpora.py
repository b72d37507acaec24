"""Named text corpora for perplexity and calibration: package-shipped offline, hub when online.

The names (and the `hf:` / `file:` forms) are `matrix.corpora`'s table; this module gives each a loader:
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
from matrix.corpora import NAMED_CORPORA, parse_corpus

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


_LOADERS: dict[str, Callable[[], list[str]]] = {
    "evals-wikipedia": _evals_source("wikipedia"),
    "evals-c4": _evals_source("c4"),
    "evals-openwebtext": _evals_source("openwebtext"),
    # the papers join every row, empty ones included: "\n\n".join(test["text"])
    "wikitext2": _hub_dataset("wikitext", "wikitext-2-raw-v1", "test", drop_empty=False),
}
if set(_LOADERS) != set(NAMED_CORPORA):   # one table of names (matrix.corpora), one loader each
    raise ImportError(f"corpus loaders {sorted(_LOADERS)} do not match matrix.corpora {sorted(NAMED_CORPORA)}")
CORPORA: dict[str, Corpus] = {name: Corpus(name, description, _LOADERS[name])
                              for name, description in NAMED_CORPORA.items()}


def resolve_corpus(name: str) -> Corpus:
    """The corpus `name` stands for: a named one, `hf:...` or `file:...`."""
    try:
        parsed = parse_corpus(name)
    except ValueError as e:
        raise KeyError(str(e)) from None
    if parsed.kind == "named":
        return CORPORA[name]
    if parsed.kind == "hf":
        return Corpus(name, f"hub dataset {parsed.dataset}" + (f" ({parsed.config})" if parsed.config else "") +
                      f", split {parsed.split}, field {parsed.field}",
                      _hub_dataset(parsed.dataset, parsed.config, parsed.split, parsed.field))
    path = Path(parsed.path).expanduser()
    return Corpus(name, f"local file {path}", _local_file(path))


def load_corpus(name: str) -> list[str]:
    return resolve_corpus(name).load()
