"""Library versions for provenance, quantmatrix's own among them (version and commit)."""
from __future__ import annotations

import functools
import importlib.metadata as md
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def project_version() -> str:
    """quantmatrix's version and, where this runs from a git checkout, its commit (`git describe`)."""
    try:
        version = md.version("quantmatrix")
    except md.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        # a `git archive` of the tree (the GPU kit runs one): git wrote the commit into jobs/COMMIT
        stamped = (root / "jobs" / "COMMIT").read_text().strip() if (root / "jobs" / "COMMIT").is_file() else ""
        return f"{version} (commit {stamped})" if stamped and not stamped.startswith("$Format") else version
    try:
        described = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} (commit {described})" if described else version


def library_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {"quantmatrix": project_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out
