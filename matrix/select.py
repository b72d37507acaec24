"""`include` / `exclude`: which cells of the product a user wants, as data in the spec.

A match is a mapping from a dimension name to a value or a list of values; a cell matches when every
key matches (a list: any of its values). `exclude: [match, ...]` drops the cells matching any entry;
`include: [{when: match, require: match}]` drops the cells matching `when` but not `require`
("AWQ only at 4 bit" = `{when: {method: awq}, require: {bits: 4}}`). Dropped cells are counted, not
kept: they are the user's choice, unlike rule-skipped cells, which keep their reason.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from matrix import engines
from matrix.adapters import ADAPTER_MODES
from matrix.cells import Cell
from matrix.methods import METHODS

Match = Mapping[str, Any]

KV_CACHE_DTYPES = tuple(engines.KV_CACHE_DTYPES)
ENGINES = tuple(engines.ENGINES)
GROUP_SIZES = (32, 64, 128, -1)       # -1: per-channel
BITS = (2, 3, 4, 8, 16)

# dimension -> allowed values (None: any value of the right kind is fine)
_DIMENSIONS: dict[str, tuple[Any, ...] | None] = {
    "model": None,
    "method": tuple(METHODS),
    "backend": tuple(dict.fromkeys(b for m in METHODS.values() for b in m.backends)),
    "bits": BITS,
    "group_size": GROUP_SIZES + (None,),
    "kv_cache_dtype": KV_CACHE_DTYPES,
    "engine": ENGINES,
    "tensor_parallel_size": None,
    "adapter_mode": tuple(ADAPTER_MODES) + (None,),     # None: a model without an adapter
}
OPTION_NAMES = tuple(dict.fromkeys(o.name for m in METHODS.values() for o in m.options))
MATCH_KEYS = tuple(_DIMENSIONS) + OPTION_NAMES


def match_problem(match: Any) -> str | None:
    """Why `match` is not a valid match mapping, or None."""
    if not isinstance(match, Mapping) or not match:
        return f"a match is a non-empty mapping of dimension to value(s), got {match!r}"
    for key, value in match.items():
        if key not in MATCH_KEYS:
            return f"unknown dimension {key!r}; allowed: {', '.join(MATCH_KEYS)}"
        allowed = _DIMENSIONS.get(key)
        for v in (value if isinstance(value, list) and key not in OPTION_NAMES else [value]):
            if allowed is not None and v not in allowed:
                shown = ", ".join("null" if a is None else str(a) for a in allowed)
                return f"{key}: value {v!r} not allowed; allowed: {shown}"
    return None


def _value(cell: Cell, key: str) -> Any:
    if key in _DIMENSIONS:
        return getattr(cell, key)
    return dict(cell.options).get(key, _MISSING)


_MISSING = object()


def _normal(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def cell_matches(cell: Cell, match: Match) -> bool:
    for key, want in match.items():
        got = _value(cell, key)
        if got is _MISSING:
            return False
        wanted = want if isinstance(want, list) and not (key in OPTION_NAMES and isinstance(got, tuple)) else [want]
        if _normal(got) not in [_normal(w) for w in wanted]:
            return False
    return True


def selection(exclude: list[Match], include: list[tuple[Match, Match]]) -> Callable[[Cell], bool]:
    """A predicate: is the cell wanted by the spec's include/exclude rules."""
    def wanted(cell: Cell) -> bool:
        if any(cell_matches(cell, m) for m in exclude):
            return False
        return all(cell_matches(cell, req) for when, req in include if cell_matches(cell, when))
    return wanted
