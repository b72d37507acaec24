"""The spec loader and the CLI against inputs nobody should write: random YAML, random bytes, and
mutations of the shipped example specs (junk values, alias bombs, deep nesting, markup, cut files).

Every input must end as a spec or as one bounded SpecError: no other exception, no message of
500 characters or more, no load that allocates 200 MB. Through the real `qmx` (a subprocess per
input), the same holds for the exit code (0 or 2), stderr and the child's peak RSS.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from matrix import SpecError, expand_matrix, load_spec
from matrix.expand import MAX_CELLS, check_matrix_size

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "matrix" / "specs"
EXAMPLES = {p.name: p.read_text() for p in sorted(SPECS.glob("*.yaml"))}
MESSAGE_LIMIT = 500
MEMORY_LIMIT = 200 * 2**20


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A billion-laughs value: `width ** levels` strings from a few hundred bytes (a flow mapping whose
    last value is the largest alias)."""
    items = ["&l0 [" + ",".join(["lol"] * width) + "]"]
    items += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "{defs: [" + ", ".join(items) + f"], bomb: *l{levels - 1}}}"


# values a careless or hostile user writes where a value goes
JUNK = ["[/red]", "[bold]x[/bold]", "*nope", "&a [1, 2]", "yes", "on", "1", "0", "[]", "{}", "~", "null", "-1",
        "1e999", "-.inf", ".nan", "x" * 5000, "'" + "y" * 20000 + "'", "!!binary AAAA", "!!python/object:os.system",
        "2020-13-45", "9" * 5000, "[" * 400, "{a: " * 300, _bomb(), "&r [*r]", "\"\\u0000\"", "\t", "? [a]\n: b",
        "!!set {a, b}", "[1, [2, [3, [4]]]]", "{method: gptq}", "\"é€😀\"", "evals-nope", "hf:x", "file:"]
_junk = st.sampled_from(JUNK)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
_data = st.recursive(_scalar, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.text(max_size=12), kids, max_size=4)),
                     max_leaves=20)
_keys = st.sampled_from(["name", "models", "methods", "id", "method", "bits", "group_size", "options", "engine",
                         "kv_cache_dtype", "corpus", "trust_remote_code", "symmetric", "ignore", "exclude", "include"])


@st.composite
def _mutated_example(draw) -> bytes:
    """An example spec with a few edits: a value replaced by junk, lines dropped or repeated,
    random text inserted, a key renamed, the file cut short, or bytes flipped."""
    lines = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "drop", "repeat", "insert", "key", "cut", "flip"]))
        line = lines[i]
        if op == "value" and ":" in line:
            lines[i] = line.split(":", 1)[0] + ": " + draw(_junk)
        elif op == "drop":
            del lines[i:i + draw(st.integers(1, 4))]
        elif op == "repeat":
            lines[i:i] = [line] * draw(st.integers(1, 3))
        elif op == "insert":
            lines.insert(i, draw(st.one_of(_junk, st.text(max_size=40))))
        elif op == "key":
            indent = line[:len(line) - len(line.lstrip())]
            lines.insert(i, f"{indent}{draw(_keys)}: {draw(_junk)}")
        elif op == "cut":
            lines = lines[:i] + [line[:draw(st.integers(0, len(line)))]]
        elif op == "flip":
            raw = bytearray("\n".join(lines).encode())
            if raw:             # earlier cuts may have left nothing to flip
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            return bytes(raw)
    return "\n".join(lines).encode()


_inputs = st.one_of(
    _mutated_example(),
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    _data.map(lambda d: yaml.safe_dump(d).encode()),
    st.dictionaries(_keys, _data, max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
)


def _folder() -> Path:
    """A folder holding the example prompt file, so specs that name it still find it."""
    folder = Path(tempfile.mkdtemp(prefix="qmx-fuzz-"))
    shutil.copy(SPECS / "prompts-example.jsonl", folder)
    return folder


def _check_message(text: str) -> None:
    assert "Traceback" not in text, text
    assert len(text) < MESSAGE_LIMIT, f"{len(text)} characters: {text[:300]}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=_inputs)
def test_loader_never_crashes_and_stays_bounded(raw):
    folder = _folder()
    try:
        path = folder / "spec.yaml"
        path.write_bytes(raw)
        tracemalloc.start()
        try:
            spec = load_spec(path)
            check_matrix_size(spec, MAX_CELLS)
            expand_matrix(spec, {})              # a spec that loads must expand
        except SpecError as e:
            _check_message(str(e))
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{peak / 2**20:.0f} MB allocated for {raw[:200]!r}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# `qmx`'s own entry point, in a process that writes its peak RSS (VmHWM) as it exits. Not wait4's
# ru_maxrss: that counts the pages of the parent copied at fork, so a test process holding a model
# would charge its 1.4 GB to the child.
_LAUNCH = """
import atexit, re, sys
from pathlib import Path
peak_file = sys.argv.pop(1)
atexit.register(lambda: Path(peak_file).write_text(
    re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)))
sys.argv[0] = "qmx"
from cluster.cli import app
app()
"""


def _qmx(*args: str, cwd: Path, home: Path) -> tuple[int, str, str, int]:
    """Run the real `qmx`; (exit code, stdout, stderr, the process's own peak RSS in bytes)."""
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        proc = subprocess.run([sys.executable, "-c", _LAUNCH, str(peak), *args], cwd=cwd, env=env,
                              capture_output=True, timeout=300)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), \
            int(peak.read_text()) * 1024


def _expect_one_error(code: int, out: str, err: str, rss: int, *words: str) -> None:
    assert code == 2, (code, out, err)
    _check_message(err)
    assert rss < MEMORY_LIMIT, f"qmx peaked at {rss / 2**20:.0f} MB"
    for w in words:
        assert w in err, err


# the issue's crashes, each through the real CLI: (file bytes, words the one error must contain)
CASES = {
    "alias-bomb": ("name: b\nmodels: [{id: m}]\nmethods:\n  - method: gptq\n    options:\n      ignore: "
                   + _bomb() + "\n", ["alias"]),
    "binary": (bytes(range(256)) * 8, ["not UTF-8"]),
    "deep": ("[" * 2000, ["nested too deeply"]),
    "markup": ("name: m\nmodels: [{id: m}]\nmethods: [{method: \"[/red]\"}]\n", ["[/red]", "methods.0.method"]),
    "strict-bool": ("name: s\nmodels: [{id: m, trust_remote_code: \"on\"}]\nmethods: [{method: none}]\n",
                    ["trust_remote_code"]),
    "empty-engine": ("name: e\nmodels: [{id: m}]\nmethods: [{method: none}]\nengine: []\n", ["engine"]),
    "group-on-int8": ("name: g\nmodels: [{id: m}]\nmethods: [{method: int8, group_size: [64]}]\n",
                      ["methods.0.group_size", "int8 takes no group size"]),
    "unknown-corpus": ("name: c\nmodels: [{id: m}]\nmethods: [{method: none}]\ncalibration: {corpus: nope}\n",
                       ["calibration.corpus", "evals-c4"]),
    "million-cells": ("name: big\nmodels: [{id: a}, {id: b}, {id: c}, {id: d}]\nmethods:\n  - method: gptq\n"
                      "    bits: [2, 3, 4, 8]\n    group_size: [32, 64, 128, -1]\n    options:\n"
                      "      dampening_frac: [" + ", ".join(str(i / 100) for i in range(1, 65)) + "]\n"
                      "      actorder: [null, static, group, weight]\n      symmetric: [true, false]\n"
                      "kv_cache_dtype: [auto, fp8_e4m3, fp8_e5m2]\nengine: [hf, vllm]\n",
                      ["cells (models 4", "--max-cells"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_turns_each_crash_of_the_issue_into_one_error(case, tmp_path):
    raw, words = CASES[case]
    spec = tmp_path / f"{case}.yaml"
    spec.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    _expect_one_error(*_qmx("plan", str(spec), cwd=tmp_path, home=tmp_path), *words)


def test_sweep_names_an_unreadable_model_in_one_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: u\nmodels: [{id: ./no-such-model}]\nmethods: [{method: none}]\n")
    code, out, err, rss = _qmx("sweep", str(spec), "--results", str(tmp_path / "r"), cwd=tmp_path, home=tmp_path)
    assert code == 2 and "Traceback" not in err + out, (code, out, err)
    assert "no-such-model" in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "r").rglob("*.parquet"))   # no cell recorded (the store may hold its probe folder)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(raw=_inputs)
def test_cli_never_prints_a_traceback(raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    shutil.copy(SPECS / "prompts-example.jsonl", folder)
    (folder / "spec.yaml").write_bytes(raw)
    # --max-cells 1 refuses every spec past one cell before configs are read: the run stays a loader run
    try:
        spec = load_spec(folder / "spec.yaml")
        if check_matrix_size(spec, 10**9) <= 1:
            return                                     # would read model configs: not this test's business
    except SpecError:
        pass                                           # refused by the loader: the CLI must say so in one line
    code, out, err, rss = _qmx("plan", "--max-cells", "1", str(folder / "spec.yaml"), cwd=folder, home=folder)
    _expect_one_error(code, out, err, rss)
