"""Axis-aligned integer boxes: half-open ``[start, stop)`` per dimension.

Boxes are the currency of every layer: requests, chunk extents, bounds. They hold plain Python
ints in tuples (3 or 4 dimensions), which keeps per-chunk arithmetic cheap and hashable.
"""

from __future__ import annotations

from typing import Iterable, Sequence


class Box:
    """Immutable by convention; a plain slotted class because the engine builds several per chunk
    and a frozen dataclass costs 4x more to construct."""

    __slots__ = ("start", "stop")
    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __init__(self, start: tuple[int, ...], stop: tuple[int, ...]):
        if len(start) != len(stop):
            raise ValueError(f"box start {start} and stop {stop} differ in length")
        self.start = start
        self.stop = stop

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and self.start == other.start and self.stop == other.stop

    def __hash__(self) -> int:
        return hash((self.start, self.stop))

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

    def reduced(self, factor: Sequence[int]) -> "Box":
        """The box of the scale ``factor`` times coarser that covers this one: the start rounded
        down, the stop up (as CloudVolume, DVID and volbridge's pyramids round)."""
        return Box(tuple(a // k for a, k in zip(self.start, factor)), tuple(-(-b // k) for b, k in zip(self.stop, factor)))

    def slices(self, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices that select this box from an array whose element 0 sits at ``origin``."""
        if origin is None:
            return tuple(map(slice, self.start, self.stop))
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin))

    def __repr__(self) -> str:
        return "Box(" + ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop)) + ")"
