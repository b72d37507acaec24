"""Bounded text for error messages: a user's value is shown, never pasted whole.

A spec can hold a megabyte string or a list of a million items; an error that embeds it with
`{value!r}` prints all of it. `shown` is a repr cut to a few dozen characters, `bounded` cuts a
whole message.
"""
from __future__ import annotations

import reprlib
from typing import Any

MESSAGE_LIMIT = 480        # characters in one error message (the CLI prints it as is)

_REPR = reprlib.Repr()      # keyword arguments to Repr() need Python 3.12
for _name, _limit in (("maxlevel", 2), ("maxlist", 4), ("maxtuple", 4), ("maxdict", 4), ("maxset", 4),
                      ("maxstring", 40), ("maxother", 40), ("maxlong", 40)):
    setattr(_REPR, _name, _limit)


def shown(value: Any) -> str:
    """`repr(value)`, shortened: strings and containers cut with `...`, at most ~60 characters."""
    try:
        text = _REPR.repr(value)
    except Exception:        # an object whose repr fails still gets a name
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def bounded(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    cut = f" ... ({len(message) - limit} more characters)"
    return message[:limit - len(cut)] + cut
