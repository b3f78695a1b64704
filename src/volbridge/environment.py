"""Numbers from ``VOLBRIDGE_*`` environment variables, checked where they are read: a bad value
names its variable and what it should be, instead of a bare ``ValueError`` from ``int()``
(or, for a timeout of 0 or less, a retry loop or no timeout at all)."""

from __future__ import annotations

import math
import os
from typing import Callable, TypeVar

from .errors import InvalidArgumentError

N = TypeVar("N", int, float)


def number(name: str, default: N, kind: Callable[[str], N] = int, *, least: float | None = None,
           above: float | None = None) -> N:
    """``kind(os.environ[name])``, or ``default`` when unset or empty; at least ``least``, or
    more than ``above``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    what = "a whole number" if kind is int else "a number"
    bound = f" of at least {least:g}" if least is not None else f" greater than {above:g}" if above is not None else ""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if (value is None or (kind is float and not math.isfinite(value)) or (least is not None and value < least)
            or (above is not None and value <= above)):
        raise InvalidArgumentError(f"{name}={text!r}: expected {what}{bound}")
    return value
