"""The house rule, checked on the source: matrix knows nothing of the others; jobs knows nothing of
Ray or of the store; analysis reads only the store (and the results contract in matrix)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "matrix": {"cluster", "jobs", "analysis", "ray"},
    "jobs": {"ray", "analysis", "cluster"},
    "analysis": {"jobs", "cluster", "ray"},
}


def imports(path: Path) -> set[str]:
    """Top-level package of every import in the file, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_house_rule_allows(package):
    crossings = {str(p.relative_to(ROOT)): sorted(imports(p) & FORBIDDEN[package])
                 for p in sorted((ROOT / package).rglob("*.py"))}
    assert {k: v for k, v in crossings.items() if v} == {}


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import ray.util\n    from jobs.x import y\n")
    assert imports(f) == {"ray", "jobs"}


def test_the_jobs_registries_and_the_capability_tables_name_the_same_things():
    """Code lives in jobs' registries, facts in matrix's tables: neither may know a name the other lacks."""
    from jobs.quantize import backend_names, get_backend
    from matrix.engines import ENGINES
    from matrix.methods import METHODS

    for name, row in ENGINES.items():     # each row's module builds that engine (its server: its own `serve`)
        assert callable(importlib.import_module(row.code).load), row
    table_backends = {b for m in METHODS.values() for b in m.backends}
    assert set(backend_names()) == table_backends
    from matrix.backends import BACKENDS
    for name, row in BACKENDS.items():     # each row's module defines that backend, for methods the table has
        assert get_backend(name).name == name and set(row.methods) <= set(METHODS), row
