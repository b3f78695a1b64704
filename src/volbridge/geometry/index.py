"""Turn a numpy-style index into absolute per-axis ranges.

Spatial axes use absolute coordinates: a negative number is a real coordinate (volumes may start
below zero), never "from the end", and an open slice end means the axis bound. The channel axis
(when present) follows plain numpy rules, since channels have no frame to be absolute in.
An integer drops its axis, a slice keeps it, ``...`` fills.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InvalidIndexError


@dataclass(frozen=True, slots=True)
class AxisSpec:
    """One user-visible axis: its valid range and whether it is the channel axis."""

    lo: int
    hi: int
    is_channel: bool = False


@dataclass(frozen=True, slots=True)
class AxisSelection:
    start: int
    stop: int
    step: int
    drop: bool

    @property
    def length(self) -> int:
        return max(0, self.stop - self.start)


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """Per-axis selections in the caller's axis order; ``stop`` is exclusive, step >= 1."""

    axes: tuple[AxisSelection, ...]

    @property
    def needs_stride(self) -> bool:
        return any(a.step != 1 for a in self.axes)

    def post_slices(self) -> tuple[Any, ...]:
        """Applied to the array that covers ``start:stop`` of each axis: steps, then drops."""
        return tuple(0 if a.drop else slice(None, None, a.step) for a in self.axes)


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, (bool,)) or not isinstance(v, numbers.Integral):
        raise InvalidIndexError(f"{what} must be an integer, got {v!r}")
    return int(v)


def normalize_index(index: Any, axes: Sequence[AxisSpec]) -> IndexPlan:
    if not isinstance(index, tuple):
        index = (index,)
    n_ellipsis = sum(1 for i in index if i is Ellipsis)
    if n_ellipsis > 1:
        raise InvalidIndexError("an index can only have a single ellipsis ('...')")
    explicit = len(index) - n_ellipsis
    if explicit > len(axes):
        raise InvalidIndexError(f"too many indices: {explicit} given for {len(axes)} axes")
    if n_ellipsis:
        pos = index.index(Ellipsis)
        index = index[:pos] + (slice(None),) * (len(axes) - explicit) + index[pos + 1 :]
    else:
        index = index + (slice(None),) * (len(axes) - explicit)

    out = []
    for i, (item, axis) in enumerate(zip(index, axes)):
        name = "channel axis" if axis.is_channel else f"axis {i}"
        if item is None:
            raise InvalidIndexError("np.newaxis (None) is not supported in volume indices")
        if isinstance(item, slice):
            step = 1 if item.step is None else _as_int(item.step, f"step on {name}")
            if step <= 0:
                raise InvalidIndexError(f"step on {name} must be positive, got {step}")
            if axis.is_channel:
                start, stop, step = item.indices(axis.hi - axis.lo)
                out.append(AxisSelection(start, max(start, stop), step, False))
                continue
            start = axis.lo if item.start is None else _as_int(item.start, f"slice start on {name}")
            stop = axis.hi if item.stop is None else _as_int(item.stop, f"slice stop on {name}")
            out.append(AxisSelection(start, max(start, stop), step, False))
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            v = int(item)
            if axis.is_channel:
                n = axis.hi - axis.lo
                if not -n <= v < n:
                    raise InvalidIndexError(f"channel index {v} is out of range for {n} channels")
                v %= n
            out.append(AxisSelection(v, v + 1, 1, True))
        else:
            raise InvalidIndexError(
                f"unsupported index {item!r} on {name}: use integers, slices or '...' "
                "(absolute voxel coordinates)"
            )
    return IndexPlan(tuple(out))
