"""The speed evaluator never sends one corpus window twice: vLLM's server caches prefixes by default,
and a re-sent window's prefill served from that cache read throughput 1.6x too high on the H200
(benchmarks/results/h200-2026-12-02)."""
from __future__ import annotations

from jobs.artifacts import ensure_artifact
from jobs.engines import load_engine
from jobs.evaluate import run_evaluator
from matrix import expand_matrix
from matrix.spec import parse_spec

from conftest import tiny_spec


def test_every_prompt_the_speed_evaluator_sends_is_a_window_no_other_shares(monkeypatch):
    spec = parse_spec(tiny_spec("speed-prompts", models=[{"id": "builtin:tiny-llama"}], methods=[{"method": "none"}]))
    (cell,) = expand_matrix(spec, {}).cells
    engine = load_engine(cell, ensure_artifact(cell))
    sent: list[tuple[int, ...]] = []
    real = engine.generate

    def recording(prompts, new_tokens):
        sent.extend(tuple(p) for p in prompts)
        return real(prompts, new_tokens)

    monkeypatch.setattr(engine, "generate", recording)
    try:
        out = run_evaluator("speed", engine, {"prompt_tokens": 8, "new_tokens": 4, "repeats": 2, "batch_prompts": 12})
    finally:
        engine.close()
    names = {m.name for m in out.metrics}
    assert {"decode_tokens_per_s", "throughput_output_tokens_per_s"} <= names
    # 1 warm-up + 2 x 2 timed batch-1 runs + 8 batch warm-up + 12 batch prompts, each its own window
    assert len(sent) == 1 + 4 + 8 + 12
    assert len(set(sent)) == len(sent)
    assert all(len(p) == 8 for p in sent)
