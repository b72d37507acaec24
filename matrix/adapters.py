"""LoRA adapters on a model entry: the adapter modes (a matrix dimension) and an adapter folder's content hash.

`merged`: the adapter is merged into the 16-bit base once, and that merged model is quantized and is the
baseline. `unmerged`: the base is quantized and the adapter is applied on top at load, unmerged (the
"quantized base + adapter" the guides compare merging against). Both compare to the merged 16-bit model.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"      # what makes a folder a peft adapter


@dataclass(frozen=True)
class AdapterMode:
    name: str
    merged: bool                        # the quantized weights already hold the adapter
    engines: tuple[str, ...] | None     # the engines that can run it (None: every engine)
    why: str = ""                       # why the others cannot


ADAPTER_MODES: dict[str, AdapterMode] = {
    "merged": AdapterMode("merged", merged=True, engines=None),
    "unmerged": AdapterMode("unmerged", merged=False, engines=("hf",),
                            why="the adapter is applied unmerged at load through peft, on the hf engine only"),
}
DEFAULT_ADAPTER_MODE = "merged"


def content_digest(folder: str | Path) -> str:
    """sha256 over the adapter's files (names and bytes, in name order): a retrained adapter in the same
    folder is a different model. Cached by each file's size and mtime, so a re-plan does not re-read."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return _digest(str(root.resolve()), tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                                              for p in files))


@functools.lru_cache(maxsize=32)
def _digest(root: str, files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(name.encode() + b"\0")
        with open(Path(root, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:16]
