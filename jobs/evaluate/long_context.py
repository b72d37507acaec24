"""Long context: perplexity at long windows, and passkey (needle) retrieval over growing context.

Perplexity (`long_context_perplexity`) at two window sizes: the model's max positions (capped
by `max_context`; on vLLM the server's max_model_len), less one (the token vLLM must generate), and
`calibration_multiple` x the calibration seq_len (the spec fills that in), each scored over the
first `windows` non-overlapping windows of the corpus through the perplexity evaluator's own
`window_nlls` (its windows and conventions, BOS prepended), so only the window size differs;
with several windows, `long_context_perplexity_stderr` is its standard error over them.

Needle retrieval (`needle_accuracy`, one metric per length): a passkey sentence is hidden in
corpus filler at each of `depths` (fraction of the filler before it), the prompt ends in
"What is the pass key? The pass key is", and the model generates greedily; an answer is correct
when its first integer is the key. Each (length, depth) has its own fixed 5-digit key, so every
cell answers the same prompts. Lengths (whole prompt, in tokens) that leave no room for the
8 answer tokens within the model's max positions are skipped with a note. Both metrics record
the KV-cache dtype the engine ran with ("auto": the model dtype; the hf engine runs no other).
"""
from __future__ import annotations

import math
import random
import re
from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.generate import greedy
from jobs.evaluate.perplexity import convention, corpus_token_ids, perplexity_stderr, window_nlls

INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it: "
         "you will be asked for it at the end.\n\n")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"
ANSWER_TOKENS = 8
_INTEGER = re.compile(r"\d+")


def max_positions(engine) -> int:
    """Positions a sequence may hold, prompt and generated tokens together (the vLLM server's
    max_model_len, hf: the model config's max_position_embeddings)."""
    return engine.info.max_positions


def passkey(length: int, depth: float) -> int:
    return random.Random(f"passkey:{length}:{depth}").randint(10000, 99999)


def needle_prompt(tokenizer, filler: list[int], length: int, depth: float) -> tuple[list[int], int]:
    """(prompt token ids of exactly `length` tokens, its key)."""
    key = passkey(length, depth)
    head = tokenizer(INTRO)["input_ids"]
    needle = tokenizer(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
    tail = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    room = length - len(head) - len(needle) - len(tail)
    if room < 0 or room > len(filler):
        raise ValueError(f"long_context: needle length {length} needs {room} filler tokens; "
                         f"the corpus has {len(filler)}")
    at = round(depth * room)
    return head + filler[:at] + needle + filler[at:room] + tail, key


def answered(text: str, key: int) -> bool:
    first = _INTEGER.search(text)
    return first is not None and int(first.group()) == key


def _window_nlls(engine, ids: list[int], context: int) -> list[tuple[float, int]]:
    return window_nlls(engine, ids, context, context, engine.tokenizer.bos_token_id)


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    corpus = settings["corpus"]
    windows = int(settings["windows"])
    positions = max_positions(engine)
    window_cap = positions - 1      # a scored window leaves room for the one token vLLM must generate
    bos_slot = 1 if engine.tokenizer.bos_token_id is not None else 0
    common = dict(corpus=corpus, kv_cache_dtype=engine.kv_cache_dtype, engine=engine.name,
                  compute_dtype=engine.compute_dtype, max_positions=positions)
    # window size -> why it is measured (one window size measured once)
    contexts = {min(int(settings["max_context"]), window_cap) - bos_slot: ["model max"]}
    if settings.get("calibration_seq_len"):
        multiple = int(settings["calibration_multiple"])
        contexts.setdefault(multiple * int(settings["calibration_seq_len"]), []).append(
            f"{multiple}x calibration seq_len")
    notes, metrics = [], []
    longest = max([max(contexts) * windows, *settings["needle_lengths"]])
    ids = corpus_token_ids(engine.tokenizer, corpus, longest)
    for context, why in sorted(contexts.items()):
        basis = " and ".join(why)
        if context + bos_slot > window_cap:
            notes.append(f"long_context: {basis} window of {context} tokens exceeds the model's {positions} "
                         "positions; skipped")
            continue
        if len(ids) < context:
            notes.append(f"long_context: corpus {corpus} has {len(ids)} tokens, fewer than one {context}-token window")
            continue
        nlls = _window_nlls(engine, ids[:context * windows], context)
        scored = sum(n for _, n in nlls)
        ppl = math.exp(sum(nll for nll, _ in nlls) / scored)
        window = {"corpus": corpus, "context": context, "stride": context}
        shown = dict(convention(window, engine.tokenizer.bos_token_id),
                     basis=basis, tokens=scored, **common)
        metrics.append(Metric.of("long_context_perplexity", ppl, "ppl", "lower", **shown))
        if len(nlls) > 1:
            metrics.append(Metric.of("long_context_perplexity_stderr", perplexity_stderr(nlls), "ppl", "none",
                                     window_count=len(nlls), **shown))

    depths = [float(d) for d in settings["needle_depths"]]
    room = positions - ANSWER_TOKENS
    lengths = [n for n in settings["needle_lengths"] if n <= room]
    notes += [f"long_context: needle length {n} + {ANSWER_TOKENS} answer tokens exceeds the model's {positions} "
              "positions; skipped" for n in settings["needle_lengths"] if n > room]
    cases = [(n, d, *needle_prompt(engine.tokenizer, ids, n, d)) for n in lengths for d in depths]
    outputs = greedy(engine, [prompt for _, _, prompt, _ in cases], ANSWER_TOKENS, batch_size=len(depths))
    for n in lengths:
        hits = [answered(o.text, key) for (length, _, _, key), o in zip(cases, outputs) if length == n]
        metrics.append(Metric.of("needle_accuracy", sum(hits) / len(hits), "fraction", "higher", length=n,
                                 depths=depths, trials=len(hits), answer_tokens=ANSWER_TOKENS, decoding="greedy",
                                 **common))
    return Evaluation(metrics, notes=tuple(notes))
