"""Calibration as a dimension (corpus x samples x seq_len per calibrated method) and selective precision
presets (lm_head, lm_head+down_proj, first:N, last:N, regex lists): spec, expansion, ids, estimates, and a
real GPTQ sweep (a tiny Llama) on the embedded Ray whose leaderboard tells the calibrations apart."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from cluster.scheduling import estimate_quantize_cost
from matrix.estimate import estimate_cell
from matrix.expand import expand_matrix, matrix_size
from matrix.methods import keep_patterns, keep_terms
from matrix.spec import CalibrationSpec, EvaluationSpec, SpecError, absent_means, calibration_defaults, parse_spec

from conftest import ROOT

SMOL = "builtin:smollm2-135m-instruct"
TINY = "builtin:tiny-llama"
# matrix/specs/*.yaml as they were, with the (cell id, artifact key) pairs the code before calibration lists
# computed for them: a spec of scalars must keep every id, so results written before keep theirs
BEFORE = json.loads((Path(__file__).with_name("spec_ids_before_calibration_grid.json")).read_text())


def _ids(spec) -> list[list[str]]:
    e = expand_matrix(spec)
    return sorted([c.cell_id, c.artifact_key] for c in [*e.cells, *(s.cell for s in e.skipped)])


def _as_measured_before(data: dict) -> dict:
    """The spec with each evaluation field added since at the value that measures as before it existed
    (matrix.spec.absent_means): serving's prompt_format token_ids."""
    for name, settings in (data.get("evaluation") or {}).items():
        if isinstance(settings, dict):
            model = EvaluationSpec.model_fields[name].annotation.__args__[0]
            data["evaluation"][name] = {**absent_means(model), **settings}
    return data


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_scalar_calibration_keeps_every_id(name):
    data = _as_measured_before(yaml.safe_load(BEFORE[name]["yaml"]))
    spec = parse_spec(data, name, ROOT / "matrix" / "specs")
    assert _ids(spec) == BEFORE[name]["ids"]


def _spec(**over) -> dict:
    spec = {"name": "grid", "models": [{"id": SMOL}],
            "methods": [{"method": "gptq", "backend": "llmcompressor", "bits": [4], "group_size": [64]},
                        {"method": "int8"}, {"method": "fp8"}],
            "calibration": {"corpus": ["evals-c4", "evals-wikipedia"], "samples": [2, 4], "seq_len": 32}}
    spec.update(over)
    return spec


def test_calibration_lists_multiply_only_calibrated_methods():
    spec = parse_spec(_spec())
    cells = expand_matrix(spec).cells
    gptq = [c for c in cells if c.method == "gptq"]
    assert len(gptq) == 4 and len({c.artifact_key for c in gptq}) == 4 and len({c.cell_id for c in gptq}) == 4
    assert {tuple(sorted(dict(c.calibration).items())) for c in gptq} == {
        (("corpus", corpus), ("samples", n), ("seq_len", 32)) for corpus in ("evals-c4", "evals-wikipedia")
        for n in (2, 4)}
    # they differ in calibration only
    assert len({json.dumps({**c.dims(), "calibration": None}, sort_keys=True, default=str) for c in gptq}) == 1
    # the baseline, int8 and (data-free) fp8 take no calibration and are not multiplied
    assert sorted(c.method for c in cells if c.calibration is None) == ["fp8", "int8", "none"]
    total, why = matrix_size(spec)
    assert total == len(cells) == 7 and "calibration.corpus 2 × calibration.samples 2" in why
    # a duplicate entry is one combination, not two cells
    assert len(CalibrationSpec(samples=[4, 4], seq_len=[32]).grid()) == 1


@pytest.mark.parametrize("calibration, line", [
    ({"samples": [2, 0]}, "calibration.samples[1]: must be >= 1 (got 0)"),
    ({"seq_len": [32, 8]}, "calibration.seq_len[1]: must be >= 16 (got 8)"),
    ({"seq_len": 8}, "calibration.seq_len: must be >= 16 (got 8)"),
    ({"corpus": ["evals-c4", "nope"]}, "calibration.corpus[1]: unknown corpus 'nope'"),
    ({"samples": []}, "calibration.samples: an empty list gives no cells"),
    ({"samples": [True]}, "calibration.samples[0]: expects an integer, got True"),
])
def test_a_bad_calibration_entry_is_one_line_naming_it(calibration, line):
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(calibration=calibration))
    problems = str(err.value).splitlines()[1:]
    assert len(problems) == 1 and problems[0].strip().startswith(line), str(err.value)


def test_corpus_forms_are_accepted_as_list_entries(tmp_path):
    spec = parse_spec(_spec(calibration={"corpus": ["evals-openwebtext", "wikitext2", "hf:org/data:train:text",
                                                    f"file:{tmp_path}/mine.jsonl"]}))
    assert len([c for c in expand_matrix(spec).cells if c.method == "gptq"]) == 4


def test_quantize_cost_uses_the_cells_own_samples():
    cells = {dict(c.calibration)["samples"]: c for c in expand_matrix(parse_spec(_spec(
        calibration={"samples": [4, 64], "seq_len": 256}))).cells if c.calibration}
    small, large = estimate_quantize_cost(cells[4]), estimate_quantize_cost(cells[64])
    assert large - 4.0 == pytest.approx(16 * (small - 4.0))
    # a cell whose calibration leaves a field out is read with CalibrationSpec's default
    defaults = calibration_defaults()
    partial = dataclasses.replace(cells[4], calibration=(("corpus", "evals-c4"),))
    spelled = dataclasses.replace(cells[4], calibration=tuple(sorted(defaults.items())))
    assert estimate_quantize_cost(partial) == estimate_quantize_cost(spelled) != small
    assert [f.default for f in CalibrationSpec.model_fields.values()] == list(defaults.values())


def test_leaderboard_shows_a_calib_column_only_where_calibration_varies():
    from analysis.leaderboard import render_markdown

    def row(model, label, ppl, calibration):
        return {"sweep": "s", "model": model, "engine": "hf", "label": label, "perplexity": ppl,
                "calibration": json.dumps(calibration)}
    c4 = {"corpus": "evals-c4", "samples": 128, "seq_len": 2048}
    mine = {"corpus": "file:prompts.jsonl", "samples": 512, "seq_len": 2048}
    md = render_markdown([row("a", "bf16", 10.0, None), row("a", "gptq w4 g64", 11.0, c4),
                          row("a", "gptq w4 g64", 10.5, mine), row("b", "gptq w4 g64", 12.0, c4)])
    table_a, table_b = md.split("### b")
    assert "| rank | cell | calib | perplexity |" in table_a
    assert "| 1 | bf16 | – |" in table_a and "| 3 | gptq w4 g64 | file:prompts.jsonl/512×2048 |" in table_a
    # model b has one calibration: no column, a line above its table (the store holds two)
    assert "calib |" not in table_b and "evals-c4/128×2048" in table_b.split("| rank")[0]


# --- selective precision -------------------------------------------------------------------------

def test_presets_resolve_against_the_layer_count():
    assert keep_terms("lm_head+down_proj") == ("lm_head", "down_proj") == keep_terms(["lm_head+down_proj"])
    assert keep_terms(["lm_head", r"re:.*\d+"]) == ("lm_head", r"re:.*\d+")     # a regex keeps its "+"
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(4)] + ["model.layers.1.self_attn.q_proj", "lm_head"]

    def kept(value, layers=4):
        pats = keep_patterns(value, layers)
        return [n for n in names if any(n == p if not p.startswith("re:") else re.match(p[3:], n) for p in pats)]
    assert kept("lm_head") == ["lm_head"]
    assert kept("lm_head+down_proj") == names[:4] + ["lm_head"]
    assert kept("first:1") == names[:1]
    assert kept("last:2") == names[2:4]
    assert kept(["model.layers.1"]) == [names[1], "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError, match="last:5 needs 5 decoder layers; the model has 4"):
        keep_patterns("last:5", 4)


@pytest.mark.parametrize("value, says", [
    ("lm_head+", "term '' is unknown"), ("mid:3", "term 'mid:3' is unknown"), ("first:0", "N must be >= 1"),
    (["re:("], "is not a regex"), (3, "expects a preset or a list of module names"),
])
def test_a_bad_preset_is_one_line_naming_the_option(value, says):
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(methods=[{"method": "gptq", "options": {"ignore": value}}]))
    problems = str(err.value).splitlines()[1:]
    assert len(problems) == 1 and "methods.0.options: option ignore of gptq" in problems[0] and says in problems[0]


def test_a_legacy_backend_skips_the_keep_values_it_cannot_honour():
    """AutoAWQ matches plain names only and AutoGPTQ keeps lm_head and nothing else: any other value
    would be quantized as if unasked, so the cell is skipped with the reason; the default runs."""
    spec = parse_spec(_spec(methods=[
        {"method": "gptq", "backend": "autogptq", "group_size": [64],
         "options": {"ignore": [["lm_head"], ["lm_head+down_proj"], ["re:.*down_proj"]]}},
        {"method": "gptq", "backend": "autogptq", "group_size": [64], "options": {"ignore": []}},
        {"method": "gptq", "backend": "gptqmodel", "group_size": [64], "options": {"ignore": "lm_head+down_proj"}},
        {"method": "awq", "backend": "autoawq", "group_size": [64],
         "options": {"ignore": [["lm_head", "down_proj"], ["first:1"], ["model.layers.0.mlp"]]}}],
        calibration={"corpus": "evals-c4", "samples": 2, "seq_len": 32}))
    e = expand_matrix(spec, {})
    ran = sorted((c.backend, c.label) for c in e.cells if not c.is_baseline)
    assert ran == [("autoawq", "awq w4 g64 ignore=lm_head,down_proj"), ("autogptq", "gptq w4 g64 ignore=lm_head"),
                   ("gptqmodel", "gptq w4 g64 ignore=lm_head,down_proj")]
    gptq = "option ignore: backend autogptq keeps exactly lm_head (it quantizes every decoder linear), not "
    awq = "option ignore: backend autoawq keeps modules by plain name only (down_proj), not "
    assert {(s.rule, s.reason) for s in e.skipped} == {
        ("autogptq-keeps-lm-head", gptq + "lm_head, down_proj"), ("autogptq-keeps-lm-head", gptq + "re:.*down_proj"),
        ("autogptq-keeps-lm-head", gptq + "an empty list"),
        ("autoawq-keeps-names", awq + "first:1"), ("autoawq-keeps-names", awq + "model.layers.0.mlp")}


def test_presets_are_an_axis_priced_by_the_estimate():
    from jobs.models import _builtin_config

    config = _builtin_config("smollm2-135m-instruct")
    layers = config["num_hidden_layers"]
    grid = [["lm_head"], ["lm_head+down_proj"], ["first:2"], ["last:2"], [f"last:{layers + 1}"]]
    spec = parse_spec(_spec(methods=[{"method": "gptq", "bits": [4], "group_size": [64], "options": {"ignore": grid}},
                                     {"method": "nf4", "options": {"skip_modules": "lm_head+down_proj"}},
                                     {"method": "nf4"}],
                            calibration={"corpus": "evals-c4", "samples": 2, "seq_len": 32}))
    e = expand_matrix(spec, {SMOL: config})
    size = {c.label.removeprefix("gptq w4 g64 "): estimate_cell(c, config).weight_bytes for c in e.cells}
    assert len({c.artifact_key for c in e.cells if c.method == "gptq"}) == 4
    # `ignore: lm_head` is the default: the same cell as leaving it out
    assert size["ignore=lm_head"] == estimate_cell(expand_matrix(parse_spec(_spec(
        methods=[{"method": "gptq", "bits": [4], "group_size": [64]}], calibration=spec.calibration.model_dump())),
        {SMOL: config}).cells[1], config).weight_bytes
    # down_proj at 2 bytes a weight instead of ~4 bits: every layer's (hidden x intermediate) weights cost more
    down = layers * config["hidden_size"] * config["intermediate_size"]
    assert 1.3 * down < size["ignore=lm_head,down_proj"] - size["ignore=lm_head"] < 2 * down
    assert size["ignore=first:2"] == size["ignore=last:2"] > size["ignore=lm_head"]
    assert size["nf4 w4 skip_modules=lm_head,down_proj"] > size["nf4 w4"]
    [skip] = e.skipped
    assert skip.rule == "kept-layers-exist" and f"last:{layers + 1} needs {layers + 1} decoder layers" in skip.reason


# --- the acceptance sweep: 2 corpora x 2 sample counts on GPTQ, and two presets, on the real SmolLM2 --------

_EVALUATION = {"perplexity": {"corpus": "evals-wikipedia", "context": 64, "stride": 64, "max_tokens": 128},
               "speed": None}


def test_calibration_grid_and_presets_sweep(tmp_path):
    # the random 2-layer Llama (hidden 64): five GPTQ builds take seconds, and what is asserted (4 keys,
    # 4 rows told apart, the kept down_proj's bytes) does not depend on the model's size or quality
    from analysis.catalog import query
    from analysis.compare import Side, compare
    from analysis.leaderboard import leaderboard_markdown
    from cluster.driver import run_sweep

    results = tmp_path / "results"
    grid = parse_spec({**_spec(models=[{"id": TINY}], methods=[{"method": "none"}, {"method": "gptq", "backend": "llmcompressor",
                                                              "bits": [4], "group_size": [64]}]),
                       "name": "calib-grid", "evaluation": _EVALUATION,
                       "resources": {"cpus_per_cell": 1, "max_retries": 0}})
    assert len(expand_matrix(grid).quantization_jobs) == 4
    report = run_sweep(grid, results)
    assert report.failed == 0, report
    board = leaderboard_markdown(results, "calib-grid")
    rows = [line for line in board.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    calibs = [re.search(r"\| (evals-[a-z0-9]+/\d+×32|–) \|", line)[1] for line in rows]
    assert sorted(calibs) == ["evals-c4/2×32", "evals-c4/4×32", "evals-wikipedia/2×32", "evals-wikipedia/4×32",
                              "–"], board
    ppl = {r["calibration"]: r["perplexity"] for r in query(
        results, "select c.calibration, l.perplexity from leaderboard l join cells c using (sweep, cell_id) "
                 "where l.method = 'gptq'").to_pylist()}
    assert len(ppl) == 4 and all(v > 0 for v in ppl.values())
    cmp = compare(Side(str(results), "calib-grid"), Side(str(results), "calib-grid"))
    assert len({d.label for d in cmp.deltas if d.label.startswith("gptq")}) == 4

    # selective precision: lm_head (an artifact the grid built already) against lm_head+down_proj
    presets = parse_spec({**_spec(models=[{"id": TINY}], methods=[{"method": "gptq", "backend": "llmcompressor", "bits": [4],
                                            "group_size": [64], "options": {"ignore": [["lm_head"],
                                                                                       ["lm_head+down_proj"]]}}]),
                          "name": "presets", "evaluation": _EVALUATION,
                          "calibration": {"corpus": "evals-c4", "samples": 2, "seq_len": 32},
                          "resources": {"cpus_per_cell": 1, "max_retries": 0}})
    report = run_sweep(presets, results)
    assert report.failed == 0 and report.quantizations == 1, report
    measured = {r["label"]: r["weight_bytes"] for r in query(
        results, "select label, weight_bytes from leaderboard where sweep = 'presets' and method = 'gptq'").to_pylist()}
    from jobs.models import _builtin_config
    config = _builtin_config("tiny-llama")
    est = {c.label: estimate_cell(c, config).weight_bytes for c in expand_matrix(presets).cells if c.method == "gptq"}
    kept, plain = "gptq w4 g64 ignore=lm_head,down_proj", "gptq w4 g64 ignore=lm_head"
    assert measured[kept] > measured[plain] and est[kept] > est[plain]
    # the estimate prices the 16-bit down_proj as the checkpoint holds it
    assert measured[kept] - measured[plain] == pytest.approx(est[kept] - est[plain], rel=0.05)
