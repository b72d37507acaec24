"""The matrix language: expansion, validity rules with reasons, stable ids, clear errors."""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from matrix import SpecError, expand_matrix
from matrix.spec import load_spec, parse_spec

from conftest import ROOT, tiny_spec

SMOL = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64, "intermediate_size": 1536}
LLAMA7B = {"hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 11008}


def _spec(**kw):
    base = {"name": "t", "models": [{"id": "m"}], "methods": [{"method": "none"}]}
    base.update(kw)
    return parse_spec(base)


def test_expansion_is_the_product_minus_skips():
    spec = _spec(methods=[{"method": "gptq", "bits": [2, 3, 4, 8], "group_size": [32, 64, 128, -1]},
                          {"method": "nf4"}, {"method": "int8"}],
                 kv_cache_dtype=["auto", "fp8_e4m3"], engine=["hf", "vllm"])
    e = expand_matrix(spec, {"m": LLAMA7B})
    # (16 gptq + nf4 + int8 + the added baseline) x 2 kv x 2 engines
    assert len(e.cells) + len(e.skipped) == 19 * 4
    # fp8 KV on the hf engine is skipped for each of the 19 method variants; 2- and 3-bit GPTQ
    # (llm-compressor) on vllm for each of 4 groups x 2 KV dtypes
    reasons = [s.reason for s in e.skipped]
    assert sum("needs the vllm engine" in r for r in reasons) == 19
    assert sum("vllm serves llm-compressor" in r for r in reasons) == 2 * 4 * 2
    # nf4 and int8 (bitsandbytes) on vllm, for each KV dtype
    assert sum("runs on the hf engine here" in r for r in reasons) == 2 * 2
    assert len(reasons) == 19 + 16 + 4
    # 4 KV/engine variants share one artifact: 18 quantized variants + 1 baseline
    assert len(e.artifact_keys) == 19


def test_group_size_must_divide_the_layers():
    e = expand_matrix(_spec(methods=[{"method": "gptq", "group_size": [64, 128]}]), {"m": SMOL})
    skipped = {s.cell.group_size: s.reason for s in e.skipped}
    assert set(skipped) == {128}
    assert "576" in skipped[128] and "does not divide" in skipped[128]
    assert {c.group_size for c in e.cells if c.method == "gptq"} == {64}


def test_method_bit_rules_have_reasons():
    e = expand_matrix(_spec(methods=[{"method": "nf4", "bits": [4, 8]}, {"method": "int8", "bits": [4]}]), {})
    reasons = sorted(s.reason for s in e.skipped)
    assert reasons == ["int8 is 8-bit only", "nf4 is 4-bit only"]


def test_baseline_added_once_per_model():
    e = expand_matrix(_spec(models=[{"id": "a"}, {"id": "b"}], methods=[{"method": "nf4"}]), {})
    baselines = [c for c in e.cells if c.is_baseline]
    assert sorted(c.model for c in baselines) == ["a", "b"]


def test_ids_ignore_key_order_and_written_defaults():
    a = _spec(methods=[{"method": "gptq", "bits": [4], "group_size": [64], "options": {"dampening_frac": 0.01,
                                                                                        "actorder": "static"}}])
    b = parse_spec({"methods": [{"options": {"actorder": "static", "dampening_frac": 0.01}, "group_size": [64],
                                 "bits": [4], "method": "gptq", "backend": "llmcompressor"}],
                    "models": [{"revision": None, "id": "m", "tensor_parallel_size": 1}], "name": "t",
                    "kv_cache_dtype": ["auto"], "engine": ["hf"]})
    ids_a = sorted(c.cell_id for c in expand_matrix(a, {}).cells)
    ids_b = sorted(c.cell_id for c in expand_matrix(b, {}).cells)
    assert ids_a == ids_b and len(ids_a) == 2


def test_artifact_key_ignores_kv_engine_and_evaluation():
    e = expand_matrix(_spec(methods=[{"method": "gptq", "group_size": [64]}], engine=["hf", "vllm"],
                            kv_cache_dtype=["auto", "fp8_e4m3", "fp8_e5m2"]), {"m": SMOL})
    gptq = [c for c in e.cells if c.method == "gptq"]
    assert len(gptq) == 4 and len({c.cell_id for c in gptq}) == 4
    assert len({c.artifact_key for c in gptq}) == 1


def test_default_spec_expands_as_documented():
    e = expand_matrix(load_spec(ROOT / "matrix/specs/default.yaml"), {"builtin:smollm2-135m-instruct": SMOL})
    assert sorted(c.label for c in e.cells) == ["bf16", "gptq w4 g64", "int8 w8", "nf4 w4"]
    assert [s.cell.label for s in e.skipped] == ["gptq w4 g128"]


@pytest.mark.parametrize("patch, field, words", [
    ({"methods": [{"method": "gptq4"}]}, "methods.0.method", ["unknown method 'gptq4'", "allowed:", "awq"]),
    ({"methods": [{"method": "nf4", "backend": "llmcompressor"}]}, "methods.0", ["backend 'llmcompressor'",
                                                                                "bitsandbytes"]),
    ({"methods": [{"method": "gptq", "group_size": [100]}]}, "methods.0", ["group_size 100", "32, 64, 128, -1"]),
    ({"kv_cache_dtype": ["fp16"]}, "kv_cache_dtype.0", ["fp16", "fp8_e4m3"]),
    ({"models": []}, "models", ["at least 1"]),
    ({"evaluation": {"perplexity": {"context": 128, "stride": 256}}}, "evaluation.perplexity", ["stride 256"]),
    ({"typo_field": 1}, "typo_field", ["Extra inputs"]),
    ({"methods": [{"method": "gptq", "options": {"act_order": True}}]}, "methods.0.options",
     ["unknown option 'act_order'", "allowed: actorder, dampening_frac, symmetric, ignore"]),
    ({"methods": [{"method": "gptq", "options": {"actorder": "desc"}}]}, "methods.0.options",
     ["value 'desc'", "null, static, group, weight"]),
    ({"methods": [{"method": "nf4", "options": {"compute_dtype": ["bfloat16", "int8"]}}]}, "methods.0.options",
     ["'int8'", "bfloat16, float16, float32"]),
    ({"methods": [{"method": "int8", "options": {"llm_int8_threshold": "high"}}]}, "methods.0.options",
     ["expects a number"]),
    ({"methods": [{"method": "awq", "options": {"ignore": 3}}]}, "methods.0.options",
     ["expects a preset or a list of module names"]),     # a string is a preset (lm_head+down_proj)
    ({"methods": [{"method": "prequantized"}]}, "methods.0.options", ["prequantized needs option checkpoint"]),
    ({"evaluation": {"serving": {"concurrency": [4, 0]}}}, "evaluation.serving.concurrency", ["at least 1"]),
    ({"evaluation": {"serving": {"request_rate": -1}}}, "evaluation.serving.request_rate", ["greater than 0"]),
    ({"evaluation": {"serving": {"prompt_format": "ids"}}}, "evaluation.serving.prompt_format",
     ["'text' or 'token_ids'", "'ids'"]),
    ({"evaluation": {"prompts": {"path": "no/such/file.jsonl"}}}, "evaluation.prompts.path",
     ["prompt file not found: no/such/file.jsonl"]),
    ({"resources": {"runtime_env": {"serve": {"pip": ["vllm"], "py_executable": "/opt/x/bin/python"}}}},
     "resources.runtime_env.serve", ["at most one of py_executable, pip, uv", "py_executable, pip"]),
    ({"resources": {"accelerator_type": "H900"}}, "resources", ["'H900'", "H100", "A100-80G", "gpu_memory_gib"]),
    ({"resources": {"gpu_memory_gib": 0}}, "resources.gpu_memory_gib", ["greater than 0"]),
    ({"models": [{"id": "org/m-GGUF", "gguf_file": "m.bin"}]}, "models.0", ["must name a .gguf file"]),
    ({"methods": [{"method": "gptq", "options": {"kernel": "marlin"}}]}, "methods.0",
     ["option kernel applies to backend gptqmodel, not 'llmcompressor'"]),
    ({"methods": [{"method": "gptq", "backend": "gptqmodel", "options": {"kernel": "exllama"}}]}, "methods.0.options",
     ["'exllama' not allowed", "exllama_v2"]),
])
def test_errors_name_field_value_and_allowed(patch, field, words):
    base = {"name": "t", "models": [{"id": "m"}], "methods": [{"method": "none"}]}
    base.update(patch)
    with pytest.raises(SpecError) as info:
        parse_spec(base)
    text = str(info.value)
    assert f"  {field}:" in text, text
    for w in words:
        assert w in text


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), st.text(max_size=8),
                  st.floats(allow_nan=False, allow_infinity=False))
_junk = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)


_method = st.sampled_from(["none", "gptq", "awq", "nf4", "fp4", "int8", "fp8", "prequantized"])
_field_junk = st.sampled_from(["name", "models", "methods", "kv_cache_dtype", "engine", "calibration", "evaluation",
                               "resources", "include", "exclude"]).flatmap(
    lambda f: st.fixed_dictionaries({f: _junk}))
# junk placed inside the new nested fields, where the validators are more specific than the types
_nested_junk = st.one_of(
    st.builds(lambda m, o: {"methods": [{"method": m, "options": o}]}, _method, _junk),
    st.builds(lambda m, k, v: {"methods": [{"method": m, "options": {k: v}}]}, _method,
              st.sampled_from(["actorder", "dampening_frac", "symmetric", "ignore", "double_quant", "compute_dtype",
                               "skip_modules", "llm_int8_threshold", "checkpoint", "act_order"]), _junk),
    st.builds(lambda v: {"evaluation": {"serving": v}}, _junk),
    st.builds(lambda k, v: {"evaluation": {"serving": {k: v}}},
              st.sampled_from(["concurrency", "requests_per_level", "request_rate", "sla_ttft_ms", "corpus"]), _junk),
    st.builds(lambda v: {"evaluation": {"prompts": v}}, _junk),
    st.builds(lambda v: {"evaluation": {"prompts": {"path": v}}}, _junk),
    st.builds(lambda k, v: {"resources": {k: v}},
              st.sampled_from(["accelerator_type", "gpu_memory_gib", "runtime_env"]), _junk),
    st.builds(lambda s, v: {"resources": {"runtime_env": {s: v}}}, st.sampled_from(["quantize", "serve", "x"]), _junk),
    st.builds(lambda k, v: {"exclude": [{k: v}]}, st.sampled_from(["engine", "bits", "method", "model", "enigne"]),
              _junk),
    st.builds(lambda w, r: {"include": [{"when": w, "require": r}]}, _junk, _junk),
    st.builds(lambda k, v: {"models": [{"id": "m", k: v}]}, st.sampled_from(["gguf_file", "id", "revision"]), _junk),
)


@settings(max_examples=200, deadline=None)
@given(patch=st.one_of(_field_junk, _nested_junk))
def test_bad_specs_give_spec_errors_never_tracebacks(patch):
    data = {"name": "t", "models": [{"id": "m"}], "methods": [{"method": "gptq"}], **patch}
    try:
        spec = parse_spec(data)
    except SpecError as e:
        header, *problems = str(e).splitlines()
        assert header.startswith("invalid spec") and problems and len(str(e)) < 500
        # each problem names its field path, then says what is wrong (past the length bound: how many more)
        problems = [line for line in problems if not line.startswith("  ... and ")]
        assert problems and all(line.startswith("  ") and ": " in line for line in problems), str(e)
        return
    expand_matrix(spec, {})   # a spec that validates must expand


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)


def test_tiny_spec_is_valid():
    assert parse_spec(tiny_spec("x")).name == "x"


# --- include / exclude ---------------------------------------------------------------------------

def _product_spec(**kw):
    return _spec(methods=[{"method": "gptq", "bits": [3, 4], "group_size": [64, 128]},
                          {"method": "awq", "bits": [3, 4], "group_size": [64, 128]}, {"method": "nf4"}],
                 kv_cache_dtype=["auto", "fp8_e4m3", "fp8_e5m2"], engine=["hf", "vllm"], **kw)


def test_expansion_count_is_product_minus_exclusions_and_skips():
    spec = _product_spec(exclude=[{"engine": "hf", "kv_cache_dtype": ["fp8_e4m3", "fp8_e5m2"]}],
                         include=[{"when": {"method": "awq"}, "require": {"bits": 4}}])
    e = expand_matrix(spec, {"m": LLAMA7B})
    product = (1 + 4 + 4 + 1) * 3 * 2      # (baseline + gptq 2x2 + awq 2x2 + nf4) x kv x engine
    # dropped: the 10 variants x 2 fp8 KV on hf, then awq at 3 bit on the remaining 4 KV/engine pairs x 2 groups
    assert e.excluded == 10 * 2 + 2 * 4
    assert len(e.cells) == product - e.excluded - len(e.skipped)
    # the fp8-KV-on-hf cells were excluded, so no rule had to skip them; 3-bit GPTQ on vllm is skipped
    assert not any("needs the vllm engine" in s.reason for s in e.skipped)
    assert {s.rule for s in e.skipped} == {"vllm-compressed-tensors-bits", "bitsandbytes-on-hf"}
    assert "not 3" in next(s.reason for s in e.skipped if s.rule == "vllm-compressed-tensors-bits")
    assert all(not (c.method == "awq" and c.bits == 3) for c in e.cells)


def test_without_rules_the_same_cells_are_skipped_not_dropped():
    e = expand_matrix(_product_spec(), {"m": LLAMA7B})
    assert e.excluded == 0
    assert len(e.cells) + len(e.skipped) == 10 * 3 * 2


def test_exclude_by_option_value():
    spec = _spec(methods=[{"method": "gptq", "group_size": [64], "options": {"actorder": [None, "static", "group"]}}],
                 exclude=[{"actorder": "group"}])
    e = expand_matrix(spec, {})
    assert e.excluded == 1 and sorted(dict(c.options).get("actorder", "-") or "null" for c in e.cells) == \
        ["-", "null", "static"]


@pytest.mark.parametrize("patch, words", [
    ({"exclude": [{"engin": "hf"}]}, ["exclude:", "unknown dimension 'engin'", "kv_cache_dtype", "engine"]),
    ({"exclude": [{"engine": "tgi"}]}, ["exclude:", "engine: value 'tgi'", "hf, vllm"]),
    ({"exclude": [{}]}, ["exclude:", "non-empty mapping"]),
    ({"include": [{"when": {"methd": "awq"}, "require": {"bits": 4}}]}, ["include.0.when:", "unknown dimension"]),
    ({"include": [{"when": {"method": "awq"}}]}, ["include.0.require:", "Field required"]),
    ({"exclude": [{"model": "other"}]}, ["exclude.0.model: 'other' is not one of the spec's models", "allowed: m"]),
])
def test_include_exclude_errors_name_the_key(patch, words):
    with pytest.raises(SpecError) as info:
        _spec(**patch)
    for w in words:
        assert w in str(info.value)


YAML_A = """
name: t
models: [{id: m, revision: main}]
methods:
  - {method: gptq, bits: [4], group_size: [64, 128], options: {actorder: [static, group], dampening_frac: 0.05}}
  - {method: nf4, options: {double_quant: true}}
kv_cache_dtype: [auto, fp8_e4m3]
engine: [vllm]
exclude: [{method: nf4, kv_cache_dtype: fp8_e4m3}]
evaluation:
  perplexity: {corpus: evals-wikipedia, context: 512, stride: 256}
  serving: {concurrency: [1, 8], request_rate: 4.0}
resources: {accelerator_type: L4}
"""
YAML_B = """
resources: {accelerator_type: L4}
evaluation:
  serving: {request_rate: 4.0, concurrency: [1, 8]}
  perplexity: {stride: 256, context: 512, corpus: evals-wikipedia}
exclude: [{kv_cache_dtype: fp8_e4m3, method: nf4}]
engine: [vllm]
kv_cache_dtype: [auto, fp8_e4m3]
methods:
  - {options: {dampening_frac: 0.05, actorder: [static, group]}, group_size: [64, 128], bits: [4], method: gptq}
  - {options: {double_quant: true}, method: nf4}
models: [{revision: main, id: m}]
name: t
"""


def test_yaml_with_keys_reordered_gives_identical_cell_ids(tmp_path):
    (tmp_path / "a.yaml").write_text(YAML_A)
    (tmp_path / "b.yaml").write_text(YAML_B)
    ea, eb = (expand_matrix(load_spec(tmp_path / f), {"m": LLAMA7B}) for f in ("a.yaml", "b.yaml"))
    assert len(ea.cells) == 10      # bf16 x 2 KV + gptq 2 groups x 2 actorder x 2 KV (nf4 skipped on vllm)
    assert [c.cell_id for c in ea.cells] == [c.cell_id for c in eb.cells]
    assert [c.artifact_key for c in ea.cells] == [c.artifact_key for c in eb.cells]


def test_option_defaults_written_or_left_out_give_the_same_ids():
    written = _spec(methods=[{"method": "gptq", "group_size": [64], "options": {
        "actorder": None, "dampening_frac": 0.01, "symmetric": True, "ignore": ["lm_head"]}},
        {"method": "int8", "options": {"llm_int8_threshold": 6}}])
    plain = _spec(methods=[{"method": "gptq", "group_size": [64]}, {"method": "int8"}])
    ids = lambda s: sorted((c.cell_id, c.artifact_key) for c in expand_matrix(s, {}).cells)   # noqa: E731
    assert ids(written) == ids(plain)
    # a value off the default is a different cell and artifact
    other = _spec(methods=[{"method": "gptq", "group_size": [64], "options": {"dampening_frac": 0.1}}])
    assert set(ids(other)) - set(ids(plain))


def test_a_load_time_option_makes_cells_that_share_one_artifact():
    spec = _spec(methods=[{"method": "gptq", "backend": "gptqmodel", "group_size": [64],
                           "options": {"kernel": ["auto", "marlin", "triton"]}}])
    expansion = expand_matrix(spec, {})
    gptq = [c for c in expansion.cells if c.method == "gptq"]
    assert len({c.cell_id for c in gptq}) == 3
    assert len(expansion.quantization_jobs) == 1      # one GPTQ run serves all three kernels
    assert {c.label for c in gptq} == {f"gptq w4 g64 kernel={k}" for k in ("auto", "marlin", "triton")}
    on_vllm = expand_matrix(_spec(methods=spec.model_dump()["methods"], engine=["vllm"]), {})
    assert [c.label for c in on_vllm.cells if c.method == "gptq"] == ["gptq w4 g64 kernel=auto"]
    assert {s.rule for s in on_vllm.skipped} == {"kernel-on-hf"} and len(on_vllm.skipped) == 2


def test_evaluation_settings_are_part_of_the_cell_id_only():
    base = expand_matrix(_spec(methods=[{"method": "gptq", "group_size": [64]}]), {})
    served = expand_matrix(_spec(methods=[{"method": "gptq", "group_size": [64]}],
                                 evaluation={"serving": {"concurrency": [1, 2]}}), {})
    assert {c.cell_id for c in base.cells}.isdisjoint(c.cell_id for c in served.cells)
    assert {c.artifact_key for c in base.cells} == {c.artifact_key for c in served.cells}


# --- the new fields ------------------------------------------------------------------------------

def test_prompt_file_is_checked_line_by_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "Hello", "id": "a"}\n\n{"prompt": "World"}\n')
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "t", "models": [{"id": "m"}], "methods": [
        {"method": "none"}], "evaluation": {"prompts": {"path": "p.jsonl", "limit": 1}}}))
    spec = load_spec(tmp_path / "spec.yaml")      # relative to the spec file's folder
    assert spec.evaluation.prompts.path == str(good.resolve())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(SpecError) as info:
        _spec(evaluation={"prompts": {"path": str(bad)}})
    assert "evaluation.prompts.path:" in str(info.value) and "line 2" in str(info.value)


def test_new_fields_parse_and_reach_the_cells():
    spec = _spec(models=[{"id": "org/m-GGUF", "gguf_file": "m.Q8_0.gguf"}, {"id": "local/m.gguf"}],
                 methods=[{"method": "gptq", "group_size": [64],
                           "options": {"ignore": [["lm_head"], ["lm_head", "re:.*down_proj"]]}},
                          {"method": "prequantized", "options": {"checkpoint": "org/m-GPTQ"}, "group_size": [128]}],
                 evaluation={"serving": {}},
                 resources={"accelerator_type": "L4", "runtime_env": {"quantize": {"uv": ["llmcompressor"]},
                                                                      "serve": {"py_executable": "/venv/bin/python",
                                                                                "env_vars": {"A": "1"}}}})
    assert spec.evaluation.serving.concurrency == [1, 4] and spec.evaluation.serving.request_rate is None
    assert spec.resources.target_memory_gib == 24
    assert spec.resources.runtime_env.serve.env_vars == {"A": "1"}
    e = expand_matrix(spec, {})
    gptq = [c for c in e.cells if c.method == "gptq"]
    assert sorted(dict(c.options)["ignore"] for c in gptq) == \
        [("lm_head",), ("lm_head",), ("lm_head", "re:.*down_proj"), ("lm_head", "re:.*down_proj")]
    assert {c.gguf_file for c in e.cells} == {"m.Q8_0.gguf", None}
    # a GGUF model is de-quantized at load: a prequantized checkpoint is not a variant of it
    assert {s.rule for s in e.skipped} == {"gguf-prequantized"} and len(e.skipped) == 2
    assert json.loads(e.cells[0].evaluation)["serving"]["output_tokens"] == 64


def test_serving_prompt_format_text_is_a_new_measurement_and_token_ids_keeps_the_old_ids():
    """prompt_format came after served results existed: its default (text, tokenized inside the server's
    TTFT clock) is a new measurement with new cell ids; token_ids, the only format before, is left out of the
    cell's evaluation JSON, so its ids are those of the same spec written before the field, and a worker
    reading that JSON (or a store's from before) gets token_ids back, not the spec's default."""
    from matrix.spec import evaluator_settings

    def cells(**serving):
        return expand_matrix(_spec(evaluation={"serving": serving})).cells

    default, text, ids = cells(), cells(prompt_format="text"), cells(prompt_format="token_ids")
    assert [c.cell_id for c in default] == [c.cell_id for c in text]          # text is the default
    assert not {c.cell_id for c in text} & {c.cell_id for c in ids}
    as_text, as_ids = json.loads(text[0].evaluation)["serving"], json.loads(ids[0].evaluation)["serving"]
    assert as_text["prompt_format"] == "text"
    # token_ids: the serving JSON every cell carried before the field, which is what it measured
    assert as_ids == {k: v for k, v in as_text.items() if k != "prompt_format"}
    assert evaluator_settings("serving", as_ids)["prompt_format"] == "token_ids"
    assert evaluator_settings("serving", as_text)["prompt_format"] == "text"


def test_each_prompt_format_is_built_and_described():
    """matrix.spec.PROMPT_FORMATS is the one list: the evaluator builds each and the served tables name each."""
    from analysis.leaderboard import _SENT
    from jobs.evaluate.serving import PROMPTS
    from matrix.spec import PROMPT_FORMATS

    assert set(PROMPTS) == set(_SENT) == set(PROMPT_FORMATS)


EXAMPLE_CONFIGS = {
    "Qwen/Qwen2.5-7B-Instruct": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                                 "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                                 "intermediate_size": 18944},
    "meta-llama/Llama-3.1-8B-Instruct": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                                         "num_hidden_layers": 32, "num_attention_heads": 32,
                                         "num_key_value_heads": 8, "intermediate_size": 14336},
    "builtin:smollm2-135m-instruct": SMOL,
    "builtin:tiny-llama": {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128},
    "builtin:gemma3-270m": {"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
                            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
                            "head_dim": 256, "intermediate_size": 2048},
}


@pytest.mark.parametrize("path", sorted((ROOT / "matrix/specs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_parse_and_expand(path):
    spec = load_spec(path)
    assert all(m.id in EXAMPLE_CONFIGS for m in spec.models)
    e = expand_matrix(spec, EXAMPLE_CONFIGS)
    assert e.cells and any(c.is_baseline for c in e.cells)
    assert len(e.cells) == len({c.cell_id for c in e.cells})
