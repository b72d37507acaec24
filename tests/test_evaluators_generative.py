"""The generative evaluators (GSM8K, JSON output, long context) and lm-eval tasks by name, on the real
SmolLM2-135M offline, with tiny limits; their scoring rules on known strings and real GSM8K answers."""
from __future__ import annotations

import json
import math
import re

import pytest

from jobs.evaluate import gsm8k, json_output, long_context, run_evaluator
from matrix.spec import GSM8KSpec, JsonOutputSpec, LmEvalSpec, LongContextSpec, SpecError, parse_spec

from conftest import baseline_engine, tiny_spec

SMOL = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    import torch
    # the box's 2 cores are shared: one thread spends a quarter of the CPU time two spinning ones do here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = baseline_engine(SMOL)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


def _settings(model, **given) -> dict:
    return model(**given).model_dump()     # what a cell's evaluator receives: the spec's settings, defaults filled


# ---- batched greedy generation ----

def test_left_padded_batches_generate_what_single_prompts_do(smol):
    from jobs.evaluate.generate import encode, greedy
    prompts = [encode(smol, "The capital of France is"),
               encode(smol, "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:")]
    batched = greedy(smol, prompts, 12, stop=("Question:",))
    alone = [greedy(smol, [p], 12, stop=("Question:",))[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert all(0 < g.tokens <= 12 and "Question:" not in g.text for g in batched)


# ---- GSM8K: lm-eval's extraction and normalization ----

def test_gsm8k_reference_answers_normalize_to_their_final_line():
    items = gsm8k.load_items()
    assert len(items) == 1319
    for item in items[:200]:
        final = item["answer"].rsplit("#### ", 1)[1]
        assert gsm8k.normalize(item["answer"]) == final.replace(",", "").strip()
        # the reference's own last number is its #### answer, so it scores itself correct
        assert gsm8k.is_correct(item["answer"], item["answer"])
    assert gsm8k.normalize(items[0]["answer"]) == "18"


@pytest.mark.parametrize("output, reference, correct", [
    ("She makes 9 * 2 = $18.", "#### 18", True),                   # "$18." -> 18
    ("The total is 1,234 dollars.", "x\n#### 1,234", True),         # commas dropped on both sides
    ("First 3 apples, then 4 pears, so 7", "#### 7", True),         # the last number wins
    ("The answer is 7. Question: what is 8?", "#### 7", False),     # (the stop string is cut before scoring)
    ("I do not know.", "#### 0", False),                           # no number: wrong
    ("It drops to -5 degrees", "#### -5", True),
    ("18.5", "#### 18", False),
])
def test_gsm8k_flexible_extract_on_known_strings(output, reference, correct):
    assert gsm8k.is_correct(output, reference) is correct


def test_gsm8k_few_shot_prompts_use_the_last_items_as_exemplars():
    items = gsm8k.load_items()
    first, second = gsm8k.prompts(items, 2, 2)
    exemplars = f"Question: {items[-2]['question']}\nAnswer: {items[-2]['answer']}\n\n" \
                f"Question: {items[-1]['question']}\nAnswer: {items[-1]['answer']}\n\n"
    assert first == exemplars + f"Question: {items[0]['question']}\nAnswer:"
    assert second.startswith(exemplars) and second.endswith(f"{items[1]['question']}\nAnswer:")
    assert gsm8k.prompts(items, 1, 0) == [f"Question: {items[0]['question']}\nAnswer:"]
    with pytest.raises(ValueError, match="exceeds the 1319 test items"):
        gsm8k.prompts(items, 1319, 1)


def test_gsm8k_on_smollm2(smol):
    settings = _settings(GSM8KSpec, limit=5, max_new_tokens=64)
    result = run_evaluator("gsm8k", smol, settings)
    metrics = {m.name: m for m in result.metrics}
    p = metrics["gsm8k_exact_match"].value
    assert p in {k / 5 for k in range(6)}
    assert metrics["gsm8k_exact_match_stderr"].value == pytest.approx(math.sqrt(p * (1 - p) / 5))
    shown = json.loads(metrics["gsm8k_exact_match"].settings)
    assert shown["items"] == 5 and shown["num_fewshot"] == 0 and shown["max_new_tokens"] == 64
    assert shown["extraction"] == "flexible-extract" and shown["kv_cache_dtype"] == "auto"
    # the exact match is the extraction rule applied to the stored outputs
    rows, items = result.tables["generations"], gsm8k.load_items()
    assert [r["prompt_id"] for r in rows] == [f"gsm8k:{i}" for i in range(5)]
    assert p == sum(gsm8k.is_correct(r["output"], items[i]["answer"]) for i, r in enumerate(rows)) / 5
    assert all(0 < r["output_tokens"] <= 64 and "Question:" not in r["output"] for r in rows)


# ---- JSON output ----

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.mark.parametrize("text, valid, fits", [
    ('{"name": "Ada", "age": 36}', True, True),
    ('Sure! ```json\n{"name": "Ada", "age": 36}\n``` Hope this helps.', True, True),
    ('{"name": "Ada", "age": "36"}', True, False),                  # wrong type
    ('{"name": "Ada"}', True, False),                               # a required key missing
    ('[1, 2]', True, False),                                        # JSON, but not an object
    ('{"name": "Ada", "age": 36', False, False),                    # cut off
    ("{'name': 'Ada', 'age': 36}", False, False),                   # Python, not JSON
    ("no JSON here", False, False),
])
def test_json_checker_on_known_strings(text, valid, fits):
    assert json_output.check(text, SCHEMA) == (valid, fits)


def test_json_prompt_set_is_well_formed():
    import jsonschema
    rows = json_output.read_prompts()
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    for r in rows:
        jsonschema.validators.validator_for(r["schema"]).check_schema(r["schema"])
        assert all(f'"{key}"' in r["prompt"] for key in r["schema"]["required"])


def test_json_output_on_smollm2(smol):
    result = run_evaluator("json_output", smol, _settings(JsonOutputSpec, limit=5, max_new_tokens=48))
    metrics = {m.name: m.value for m in result.metrics}
    rows = result.tables["generations"]
    assert len(rows) == 5 and all(r["output_tokens"] <= 48 for r in rows)
    # the fractions are the checker's verdicts on the stored outputs
    schemas = {f"json:{r['id']}": r["schema"] for r in json_output.read_prompts(5)}
    verdicts = [json_output.check(r["output"], schemas[r["prompt_id"]]) for r in rows]
    assert metrics["json_valid_fraction"] == sum(v for v, _ in verdicts) / 5
    assert metrics["json_schema_fraction"] == sum(s for _, s in verdicts) / 5
    assert 0.0 <= metrics["json_schema_fraction"] <= metrics["json_valid_fraction"] <= 1.0


# ---- long context ----

def test_needle_prompt_has_the_length_and_hides_the_key_at_its_depth(smol):
    tok = smol.tokenizer
    filler = tok("word " * 3000, add_special_tokens=False)["input_ids"]
    where = []
    for depth in (0.0, 0.5, 1.0):
        ids, key = long_context.needle_prompt(tok, filler, 300, depth)
        assert len(ids) == 300 and ids == long_context.needle_prompt(tok, filler, 300, depth)[0]
        text = tok.decode(ids)
        assert text.count(str(key)) == 2 and text.endswith(long_context.QUESTION)
        where.append(text.index(str(key)))
    assert where == sorted(where) and where[0] < where[-1]
    assert long_context.answered(" 12345. It was 12345.", 12345) and not long_context.answered(" 1234", 12345)


def test_long_context_on_smollm2(smol):
    settings = _settings(LongContextSpec, max_context=256, calibration_seq_len=32, needle_lengths=[128, 256],
                         needle_depths=[0.1, 0.9])
    result = run_evaluator("long_context", smol, settings)
    ppl = {json.loads(m.settings)["context"]: m for m in result.metrics if m.name == "long_context_perplexity"}
    needle = {json.loads(m.settings)["length"]: m for m in result.metrics if m.name == "needle_accuracy"}
    assert sorted(ppl) == [128, 255] and sorted(needle) == [128, 256]    # 4 x 32, and the 256 cap less the BOS
    assert json.loads(ppl[128].settings)["basis"] == "4x calibration seq_len"
    for m in result.metrics:
        shown = json.loads(m.settings)
        assert shown["kv_cache_dtype"] == "auto" and shown["max_positions"] == 8192
    for m in needle.values():
        assert m.value in (0.0, 0.5, 1.0) and json.loads(m.settings)["trials"] == 2
    # the same windows as the perplexity evaluator: one 128-token window scores identically
    plain = run_evaluator("perplexity", smol, {"corpus": "evals-wikipedia", "context": 128, "stride": 128,
                                               "max_tokens": 128}).metrics[0]
    assert plain.name == "perplexity" and ppl[128].value == pytest.approx(plain.value, rel=1e-6)
    assert 1.0 < plain.value < 1000


def test_long_context_skips_what_the_model_cannot_hold_with_a_note(smol):
    settings = _settings(LongContextSpec, max_context=64, calibration_seq_len=4096, needle_lengths=[8190])
    result = run_evaluator("long_context", smol, settings)
    assert [(m.name, json.loads(m.settings)["context"]) for m in result.metrics] == [("long_context_perplexity", 63)]
    assert result.notes == (
        "long_context: 4x calibration seq_len window of 16384 tokens exceeds the model's 8192 positions; skipped",
        "long_context: needle length 8190 + 8 answer tokens exceeds the model's 8192 positions; skipped")


def test_spec_gives_long_context_the_calibration_seq_len():
    spec = parse_spec(tiny_spec("lc", evaluation={"long_context": {"needle_lengths": [256]}}))
    assert spec.evaluation.long_context.calibration_seq_len == 64      # tiny_spec's calibration seq_len
    bad = tiny_spec("lc", evaluation={"long_context": {"needle_depths": [1.5]}, "gsm8k": {"limit": 1319,
                                                                                          "num_fewshot": 1}})
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    assert "long_context.needle_depths: needle depths are fractions from 0 to 1" in str(err.value)
    assert "gsm8k: limit 1319 + num_fewshot 1 exceeds the 1319 test items" in str(err.value)


# ---- lm-eval tasks by name ----

def test_lm_eval_local_yaml_task_and_an_offline_hub_task(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [{"q": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 3)], "label": 0}
            for a, b in [(1, 2), (2, 2), (3, 4), (10, 5), (6, 1)]]
    (tmp_path / "adds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "adds.yaml").write_text(
        "task: qmx_test_adds\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'adds.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    spec = parse_spec(tiny_spec("lm", evaluation={"lm_eval": {"tasks": ["adds.yaml", "arc_challenge"], "limit": 5}}),
                      base_dir=tmp_path)
    result = run_evaluator("lm_eval", smol, spec.evaluation.lm_eval.model_dump())
    metrics = {m.name: m for m in result.metrics}
    assert set(metrics) == {"accuracy", "accuracy_stderr"}
    shown = json.loads(metrics["accuracy"].settings)
    assert shown["task"] == str(tmp_path / "adds.yaml") and shown["items"] == 5 and shown["source"] == "yaml"
    assert metrics["accuracy"].value in {k / 5 for k in range(6)} and metrics["accuracy"].direction == "higher"
    p = metrics["accuracy"].value    # lm-eval's stderr of a mean: the sample standard deviation over sqrt(n)
    assert metrics["accuracy_stderr"].value == pytest.approx(math.sqrt(p * (1 - p) * 5 / 4 / 5))
    (note,) = result.notes
    assert re.match(r"lm_eval task arc_challenge not run \(lm-eval\): \w+", note) and "\n" not in note


def test_lm_eval_task_names_are_checked_in_the_spec():
    with pytest.raises(SpecError, match="neither a task name nor a .yaml"):
        parse_spec(tiny_spec("lm", evaluation={"lm_eval": {"tasks": ["gsm8k; rm -rf"]}}))
    assert LmEvalSpec(tasks=["gsm8k", "mmlu", "evals-mmlu"]).tasks == ["gsm8k", "mmlu", "evals-mmlu"]
