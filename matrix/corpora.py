"""Corpus names: the named corpora and the two name forms that reach any text.

The one table of names, so a spec's corpus is checked before any work starts; `jobs.corpora`
gives each name its loader and refuses to import if the two disagree.
  `hf:<dataset>[:<config>]:<split>:<field>`   a hub dataset (needs network or a warm HF cache)
  `file:<path>`                               a local .jsonl or .txt file
"""
from __future__ import annotations

from dataclasses import dataclass

from matrix.shown import shown

NAMED_CORPORA: dict[str, str] = {
    "evals-wikipedia": "50 Wikipedia articles from the `evals` package (text_compression)",
    "evals-c4": "50 C4 web documents from the `evals` package (text_compression)",
    "evals-openwebtext": "50 OpenWebText documents from the `evals` package",
    "wikitext2": "WikiText-2 raw test split from the HF hub (the GPTQ/AWQ papers' setting)",
}
HF_FORM = "hf:<dataset>[:<config>]:<split>:<field>"
FILE_FORM = "file:<path.jsonl|path.txt>"


@dataclass(frozen=True)
class CorpusName:
    """A parsed corpus name: `kind` is named | hf | file."""
    kind: str
    name: str
    dataset: str | None = None
    config: str | None = None
    split: str | None = None
    field: str | None = None
    path: str | None = None


def parse_corpus(name: str) -> CorpusName:
    """What `name` stands for; ValueError naming the known corpora and forms when it is none of them."""
    if name in NAMED_CORPORA:
        return CorpusName("named", name)
    if name.startswith("hf:"):
        parts = name.removeprefix("hf:").split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(f"corpus {shown(name)}: expected {HF_FORM}")
        dataset, config, split, text_field = parts if len(parts) == 4 else (parts[0], None, parts[1], parts[2])
        return CorpusName("hf", name, dataset=dataset, config=config, split=split, field=text_field)
    if name.startswith("file:") and name.removeprefix("file:"):
        return CorpusName("file", name, path=name.removeprefix("file:"))
    raise ValueError(f"unknown corpus {shown(name)}; known: {', '.join(NAMED_CORPORA)}, {HF_FORM}, {FILE_FORM}")
