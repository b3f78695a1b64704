"""Axis-aligned integer boxes: half-open ``[start, stop)`` per dimension.

Boxes are the currency of every layer: requests, chunk extents, bounds. They hold plain Python
ints in tuples (3 or 4 dimensions), which keeps per-chunk arithmetic cheap and hashable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Box:
    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ValueError(f"box start {self.start} and stop {self.stop} differ in length")

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] | None = None) -> "Box":
        offset = tuple(int(o) for o in (offset if offset is not None else (0,) * len(shape)))
        return cls(offset, tuple(o + int(s) for o, s in zip(offset, shape)))

    @classmethod
    def of(cls, start: Iterable[int], stop: Iterable[int]) -> "Box":
        return cls(tuple(int(v) for v in start), tuple(int(v) for v in stop))

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop))

    def intersect(self, other: "Box") -> "Box":
        return Box(tuple(map(max, self.start, other.start)), tuple(map(min, self.stop, other.stop)))

    def contains(self, other: "Box") -> bool:
        """True when ``other`` lies wholly inside this box (an empty box lies inside any box)."""
        if other.empty:
            return True
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def translate(self, delta: Sequence[int]) -> "Box":
        return Box(
            tuple(a + d for a, d in zip(self.start, delta)),
            tuple(b + d for b, d in zip(self.stop, delta)),
        )

    def slices(self, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices that select this box from an array whose element 0 sits at ``origin``."""
        if origin is None:
            return tuple(map(slice, self.start, self.stop))
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))

    def __repr__(self) -> str:
        return "Box(" + ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop)) + ")"
