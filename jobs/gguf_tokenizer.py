"""Tokenizers rebuilt from a GGUF file's own metadata, and the file's reference encoder.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary as metadata
(`tokenizer.ggml.tokens`, `.scores`, `.token_type`, `.merges` for byte-level BPE). A "llama"
(SentencePiece) vocabulary is encoded as SentencePiece's BPE does, and as llama.cpp's SPM
tokenizer does: user-defined pieces matched whole, then, repeatedly, the adjacent pair whose
join is a piece with the highest score is merged, and bytes stand in for unknown characters.
`reference_encoder` runs the sentencepiece library itself on a model built from those fields:
the yardstick every converted tokenizer is checked against (jobs.tokenizer_check).

Why a builder of our own: transformers 5.17 (pinned by llm-compressor) turns a Gemma GGUF into
a Unigram model, which on reload becomes a BPE without merges (one token per character).
transformers 5.23 rebuilds Gemma's merges from the vocabulary in file order; so does
`sentencepiece_bpe_tokenizer`, equal to sentencepiece token for token (tests/test_tokenizers.py).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# tokenizer.ggml.token_type values (llama.cpp's, SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    architecture: str           # general.architecture, e.g. "gemma3"
    model: str                  # tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (byte-level BPE), ...
    tokens: tuple[str, ...]     # as the file spells them; whitespace-only pieces respelled with "▁"
    scores: tuple[float, ...]
    types: tuple[int, ...]
    special_ids: dict           # bos/eos/unk/pad -> id (absent ones left out)
    add_bos: bool
    add_space_prefix: bool


_SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def read_vocab(path: str | Path) -> GGUFVocab:
    """The tokenizer fields of a local GGUF file, read once per file version and process (Gemma's
    262k-piece vocabulary takes ~20 s to parse on 2 busy cores; a conversion and its check both ask)."""
    stat = Path(path).stat()
    return _read_vocab(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_vocab(path: str, size: int, mtime_ns: int) -> GGUFVocab:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def scalar(key, default=None):
        return fields[key].contents() if key in fields else default

    def array(key):
        if key not in fields:
            raise ValueError(f"{path}: GGUF has no {key}; cannot build its tokenizer")
        return fields[key].contents()

    # a token of spaces only is stored with real spaces; SentencePiece pieces spell a space "▁"
    tokens = tuple("\u2581" * len(t) if t and " " in t and not t.strip() else t
                   for t in array("tokenizer.ggml.tokens"))
    scores = tuple(array("tokenizer.ggml.scores")) if "tokenizer.ggml.scores" in fields else (0.0,) * len(tokens)
    types = tuple(array("tokenizer.ggml.token_type")) if "tokenizer.ggml.token_type" in fields \
        else (NORMAL,) * len(tokens)
    special = {name: int(scalar(f"tokenizer.ggml.{key}")) for name, key in _SPECIAL_KEYS.items()
               if scalar(f"tokenizer.ggml.{key}") is not None}
    return GGUFVocab(str(scalar("general.architecture")), str(scalar("tokenizer.ggml.model")), tokens, scores, types,
                     special, bool(scalar("tokenizer.ggml.add_bos_token", True)),
                     # llama.cpp's default for SentencePiece vocabularies that do not say
                     bool(scalar("tokenizer.ggml.add_space_prefix", True)))


def reference_encoder(vocab: GGUFVocab) -> Callable[[str], list[int]] | None:
    """sentencepiece's own encoder of a "llama" (SentencePiece BPE) vocabulary; None for other kinds."""
    if vocab.model != "llama":
        return None
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = BYTE in vocab.types
    for name in ("unk", "bos", "eos", "pad"):
        setattr(proto.trainer_spec, f"{name}_id", vocab.special_ids.get(name, -1))
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", vocab.add_space_prefix
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    piece_type = pb.ModelProto.SentencePiece
    for i, (token, score, kind) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        piece = proto.pieces.add()
        piece.piece, piece.score = token, score
        piece.type = piece_type.UNKNOWN if i == vocab.special_ids.get("unk") else kind
    processor = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return lambda text: list(processor.encode(text))


def sentencepiece_bpe_tokenizer(vocab: GGUFVocab):
    """A transformers fast tokenizer (GemmaTokenizer's shape) that encodes as SentencePiece BPE does.

    Merges are recovered from the vocabulary: each normal piece splits into two pieces that exist,
    ranked by the piece's score (the file order, best first); control pieces become special tokens
    and user-defined ones (newlines, runs of spaces, HTML tags) added tokens matched whole, as
    SentencePiece and llama.cpp match them."""
    from tokenizers import AddedToken
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    if vocab.add_space_prefix:
        raise ValueError(f"GGUF tokenizer of {vocab.architecture}: add_space_prefix vocabularies are not "
                         "rebuilt here (transformers' own converter handles them)")
    index = {token: i for i, token in enumerate(vocab.tokens)}
    ranks = {t: s for t, s, k in zip(vocab.tokens, vocab.scores, vocab.types) if k == NORMAL}
    names = {f"{n}_token": vocab.tokens[i] for n, i in vocab.special_ids.items()}
    tok = GemmaTokenizer(vocab=index, merges=generate_merges(index, ranks), add_bos_token=vocab.add_bos, **names)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, normalized=False, special=True) for t, k in zip(vocab.tokens, vocab.types)
        if k == CONTROL and t not in names.values()]}, replace_extra_special_tokens=False)
    # normalized: matched after " " -> "▁", so a run of spaces meets its "▁▁▁" piece
    tok.add_tokens([AddedToken(t, normalized=True, special=False)
                    for t, k in zip(vocab.tokens, vocab.types) if k == USER_DEFINED])
    return tok


# architectures whose transformers-5.17 GGUF tokenizer does not survive a save and reload
BUILDERS: dict[str, Callable[[GGUFVocab], object]] = {
    "gemma": sentencepiece_bpe_tokenizer,
    "gemma2": sentencepiece_bpe_tokenizer,
    "gemma3": sentencepiece_bpe_tokenizer,
}
