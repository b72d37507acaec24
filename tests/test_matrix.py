"""The matrix language: expansion, validity rules with reasons, stable ids, clear errors."""
from __future__ import annotations

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
    # fp8 KV on the hf engine is skipped for each of the 19 method variants
    assert len(e.skipped) == 19
    assert all("needs the vllm engine" in s.reason for s in e.skipped)
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
    assert sorted(c.label for c in e.cells) == ["bf16", "gptq w4 g64", "int8 w8 llm_int8_threshold=3.0",
                                                "int8 w8 llm_int8_threshold=6.0", "nf4 w4"]
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
])
def test_errors_name_field_value_and_allowed(patch, field, words):
    base = {"name": "t", "models": [{"id": "m"}], "methods": [{"method": "none"}]}
    base.update(patch)
    with pytest.raises(SpecError) as info:
        parse_spec(base)
    text = str(info.value)
    assert f"  {field}:" in text
    for w in words:
        assert w in text


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), st.text(max_size=8),
                  st.floats(allow_nan=False, allow_infinity=False))
_junk = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["name", "models", "methods", "kv_cache_dtype", "engine", "calibration",
                              "evaluation", "resources"]), value=_junk)
def test_bad_specs_give_spec_errors_never_tracebacks(field, value):
    data = {"name": "t", "models": [{"id": "m"}], "methods": [{"method": "gptq"}], field: value}
    try:
        spec = parse_spec(data)
    except SpecError as e:
        assert "invalid spec" in str(e) and ":" in str(e)
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
