"""Writing an option's default and leaving it out are the same cell: over the whole method table.

The defaults are declared once, in `matrix.methods`; a default a backend restated on its own
(AWQ's `symmetric` was False in every backend and the estimate, undeclared in the table) made
two ids, two artifact keys and a second quantization for identical weights.
"""
from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings, strategies as st

from matrix import expand_matrix
from matrix.methods import METHODS, resolved_options
from matrix.select import GROUP_SIZES
from matrix.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
WITH_DEFAULTS = [(m.name, o.name) for m in METHODS.values() for o in m.options if o.has_default]


def _value(opt) -> st.SearchStrategy:
    """A valid single value of `opt`, as YAML would give it."""
    return {
        "bool": st.booleans(),
        "float": st.floats(0.001, 100, allow_nan=False),
        "str": st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8),
        "choice": st.sampled_from(opt.choices),
        "modules": st.lists(st.sampled_from(["lm_head", "re:.*mlp.*", "model.layers.0.self_attn.q_proj"]),
                            min_size=1, max_size=2, unique=True),
    }[opt.kind]


@st.composite
def _cell_pair(draw):
    """(method, option, spec entry with the option's default written, the same entry without it)."""
    method_name, option_name = draw(st.sampled_from(WITH_DEFAULTS))
    info, opt = METHODS[method_name], METHODS[method_name].option(option_name)
    backend = draw(st.sampled_from(opt.backends or info.backends))
    entry = {"method": method_name, "backend": backend, "bits": [draw(st.sampled_from(info.bits))]}
    if info.grouped:
        entry["group_size"] = [draw(st.sampled_from(GROUP_SIZES))]
    others = {}
    for other in info.options:
        applies = not other.backends or backend in other.backends
        if other.name != option_name and applies and (other.required or draw(st.booleans())):
            others[other.name] = draw(_value(other))
    written = {**entry, "options": {**others, option_name: opt.default}}
    left_out = {**entry, "options": others}
    return method_name, option_name, written, left_out


def _cell(entry: dict):
    spec = parse_spec({"name": "d", "models": [{"id": "m"}], "methods": [{"method": "none"}, entry]})
    e = expand_matrix(spec, {})       # a cell a rule skips (autoawq with a regex ignore) has its id too
    (cell,) = [c for c in [*e.cells, *(s.cell for s in e.skipped)] if not c.is_baseline]
    return cell


@settings(max_examples=300, deadline=None)
@given(pair=_cell_pair())
def test_writing_a_default_is_leaving_it_out(pair):
    method, option, written, left_out = pair
    a, b = _cell(written), _cell(left_out)
    assert a.cell_id == b.cell_id, (method, option, written)
    assert a.artifact_key == b.artifact_key, (method, option, written)
    assert a.engine_key == b.engine_key, (method, option, written)
    # and the backends see one value either way
    assert resolved_options(a.method, a.options) == resolved_options(b.method, b.options)


def test_every_option_with_a_default_is_covered():
    """The property test draws from every (method, option) with a default; AWQ's symmetric is one."""
    assert ("awq", "symmetric") in WITH_DEFAULTS and METHODS["awq"].option("symmetric").default is False
    assert ("gptq", "symmetric") in WITH_DEFAULTS and METHODS["gptq"].option("symmetric").default is True


def test_no_backend_restates_the_symmetric_default():
    """`symmetric` is read resolved (`opts["symmetric"]`), never `opts.get("symmetric", <literal>)`."""
    offenders = []
    for path in [*(ROOT / "jobs" / "quantize").glob("*.py"), ROOT / "matrix" / "estimate.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value == "symmetric":
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_no_backend_looks_up_an_option_that_has_a_default():
    """Backends read resolved options (`opts[name]`): a `.get(name, ...)` of an option with a default
    restates or guesses that default (dampening 0.01, threshold 6.0, kernel auto were restated)."""
    defaulted = {o for _, o in WITH_DEFAULTS}
    offenders = [f"{path.name}:{node.lineno} {node.args[0].value}"
                 for path in (ROOT / "jobs" / "quantize").glob("*.py")
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                 and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in defaulted]
    assert not offenders, offenders
