"""The Engine interface (jobs.engines.base): every engine implements all of it, no evaluator asks
which engine it holds, and the real hf engine on SmolLM2 answers each operation sensibly."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import math
import urllib.request

import pytest

from jobs.engines import Engine
from matrix.engines import ENGINES

from conftest import ROOT, baseline_engine

SMOL = "builtin:smollm2-135m-instruct"
OPERATIONS = sorted(Engine.__abstractmethods__)


def _engine_classes() -> dict[str, type]:
    """engine name -> the Engine subclass its module defines (one each)."""
    out = {}
    for name, row in ENGINES.items():
        classes = [c for c in vars(importlib.import_module(row.code)).values()
                   if inspect.isclass(c) and issubclass(c, Engine) and c is not Engine]
        assert len(classes) == 1, (name, classes)
        out[name] = classes[0]
    return out


def test_every_engine_implements_the_whole_interface_with_its_signatures():
    assert {"prompt_logprobs", "next_token_logprobs", "generate", "generate_text", "serve", "memory_metrics",
            "lm_eval_model", "close"} <= set(OPERATIONS)
    classes = _engine_classes()
    assert set(classes) == set(ENGINES)
    for name, cls in classes.items():
        assert not cls.__abstractmethods__, (name, cls.__abstractmethods__)
        for op in OPERATIONS:
            assert op in vars(cls), f"{cls.__name__} inherits {op} instead of implementing it"
            assert inspect.signature(getattr(cls, op)).parameters.keys() == \
                inspect.signature(getattr(Engine, op)).parameters.keys(), (name, op)
            defaults = {p.name: p.default for p in inspect.signature(getattr(cls, op)).parameters.values()}
            assert defaults == {p.name: p.default for p in inspect.signature(getattr(Engine, op)).parameters.values()}


def test_capabilities_are_the_tables_rows():
    for name, cls in _engine_classes().items():
        assert cls.full_distribution is Engine.full_distribution       # read from the table, not restated
        assert ENGINES[name].full_distribution in (True, False)
    assert ENGINES["hf"].full_distribution and not ENGINES["vllm"].full_distribution


# ---- no evaluator branches on the engine's name ----

_ENGINE_NAMES = set(ENGINES)


def _is_engine_name(node: ast.AST) -> bool:
    """`engine.name` (any object called engine/eng) or a string literal naming an engine."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        return isinstance(node.value, ast.Name) and "engine" in node.value.id
    return isinstance(node, ast.Constant) and node.value in _ENGINE_NAMES


def engine_name_branches(source: str) -> list[int]:
    """Lines that compare with, look up by or key a table by an engine's name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hit = any(_is_engine_name(x) for x in [node.left, *node.comparators])
        elif isinstance(node, ast.Subscript):
            hit = any(_is_engine_name(x) for x in ast.walk(node.slice))
        elif isinstance(node, ast.Dict):
            hit = any(k is not None and _is_engine_name(k) for k in node.keys)
        elif isinstance(node, ast.Call):
            # a positional engine name picks something by it (`server_batching(engine.name)`, `.get(...)`);
            # a keyword one records it (`Metric.of(..., engine=engine.name)`)
            hit = any(_is_engine_name(a) for a in node.args)
        elif isinstance(node, ast.match_case):
            hit = any(_is_engine_name(x) for x in ast.walk(node.pattern))
        else:
            continue
        if hit:
            lines.append(node.lineno if hasattr(node, "lineno") else node.pattern.lineno)
    return lines


@pytest.mark.parametrize("snippet", [
    'if engine.name == "vllm":\n    pass\n',
    "_GENERATORS[engine.name](engine)\n",
    '_GREEDY = {"hf": 1, "vllm": 2}\n',
    "x = table.get(engine.name)\n",
    "batching = server_batching(engine.name)\n",
    'ok = "hf" in names\n',
    "match engine.name:\n    case 'vllm':\n        pass\n",
])
def test_the_checker_sees_the_branches_evaluators_used_to_make(snippet):
    assert engine_name_branches(snippet)


def test_no_evaluator_branches_on_the_engine_name():
    found = {str(p.relative_to(ROOT)): engine_name_branches(p.read_text())
             for p in sorted((ROOT / "jobs" / "evaluate").glob("*.py"))}
    assert len(found) > 5 and {k: v for k, v in found.items() if v} == {}
    # recording which engine ran is data, not a branch
    assert not engine_name_branches("Metric.of('x', 1, 'u', 'none', engine=engine.name)\n")


# ---- the real hf engine on SmolLM2 ----

@pytest.fixture(scope="module")
def smol():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the box's cores are shared (see test_evaluators_generative)
    engine = baseline_engine(SMOL)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


def test_hf_engine_info_is_a_frozen_record(smol):
    import dataclasses
    assert smol.name == "hf" and smol.device == "cpu" and smol.compute_dtype == "float32"
    assert smol.kv_cache_dtype == "auto" and smol.info.max_positions == smol.model.config.max_position_embeddings
    assert smol.is_base and smol.weight_bytes_at_load > 0 and smol.full_distribution
    with pytest.raises(dataclasses.FrozenInstanceError):
        smol.info.device = "cuda"


def test_hf_prompt_logprobs_are_each_tokens_own_log_prob(smol):
    text = "The capital of France is Paris. The capital of Italy is Rome."
    windows = [smol.tokenizer(text)["input_ids"], smol.tokenizer("Hello there, how are you?")["input_ids"]]
    out = smol.prompt_logprobs(windows)
    assert [len(o) for o in out] == [len(w) for w in windows]
    for own, window in zip(out, windows):
        assert own[0] is None and all(math.isfinite(x) and x <= 0 for x in own[1:])
        # the same numbers as the full distribution at each position, read at the text's next token
        full = smol.next_token_logprobs(window, len(window) - 1)
        assert tuple(full.shape) == (len(window) - 1, smol.model.config.vocab_size)
        gathered = [full[i, t].item() for i, t in enumerate(window[1:])]
        assert own[1:] == pytest.approx(gathered, abs=1e-5)
    # real weights: the repeated pattern is far likelier than a uniform guess over the vocabulary
    mean_nll = -sum(out[0][1:]) / (len(out[0]) - 1)
    assert mean_nll < math.log(smol.model.config.vocab_size) / 2


def test_hf_generate_gives_exactly_n_new_greedy_tokens(smol):
    a = smol.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    b = smol.tokenizer("Water boils at one hundred", add_special_tokens=False)["input_ids"]
    width = min(len(a), len(b))
    prompts = [a[:width], b[:width]]
    out = smol.generate(prompts, 6)
    assert [len(o) for o in out] == [6, 6]
    assert all(0 <= t < smol.model.config.vocab_size for row in out for t in row)
    assert smol.generate(prompts, 6) == out            # greedy: the same again
    # the first token is the argmax of the next-token distribution after the prompt
    first = smol.next_token_logprobs(prompts[0] + out[0][:1], 1)
    assert int(first[0].argmax()) == out[0][0]


def test_hf_generate_text_stops_and_cuts_at_stop_strings(smol):
    prompts = [smol.tokenizer("The capital of France is")["input_ids"],
               smol.tokenizer("Question: What is 2 + 2?\nAnswer:")["input_ids"]]
    out = smol.generate_text(prompts, 12, stop=("Question:",))
    assert len(out) == 2 and all(0 < g.tokens <= 12 and "Question:" not in g.text for g in out)
    assert "Paris" in out[0].text


def test_hf_serve_yields_a_handle_of_a_running_server(smol):
    with smol.serve({}) as server:
        assert server.batching == "none" and server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["root"] == smol.base_path


def test_hf_memory_metrics_and_lm_eval_model(smol):
    m = {x.name: x.value for x in smol.memory_metrics().metrics}
    assert m["weight_bytes"] == smol.weight_bytes_at_load > 0 and m["peak_memory_bytes"] > m["weight_bytes"]
    if importlib.util.find_spec("lm_eval") is not None:
        assert smol.lm_eval_model(batch_size=2).batch_size == 2
