"""Provenance of the code itself: a run records quantmatrix's commit, also from a `git archive` of the
tree (the GPU kit runs one, with no .git), where git writes the commit into jobs/COMMIT."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


def test_a_git_archive_of_the_tree_records_its_commit(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    assert not (tmp_path / ".git").exists()
    version = subprocess.run([sys.executable, "-c", "from jobs.versions import project_version; print(project_version())"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version.endswith(f"(commit {head})"), version
