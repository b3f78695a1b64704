"""Regular chunk grids anchored at an origin and clipped to bounds.

A grid cell ``g`` covers ``[origin + g*chunk, origin + (g+1)*chunk)`` intersected with the bounds.
Precomputed anchors the grid at the voxel offset; zarr and N5 anchor it at 0. Cells are found by
floor division, so negative coordinates work like any others.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

from .box import Box


class Cell:
    """One grid cell: its integer grid index and the part of the bounds it covers."""

    __slots__ = ("index", "box")

    def __init__(self, index: tuple[int, ...], box: Box):
        self.index = index
        self.box = box

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.index == other.index and self.box == other.box

    def __hash__(self) -> int:
        return hash(self.index)

    def __repr__(self) -> str:
        return f"Cell(index={self.index}, box={self.box})"


@dataclass(frozen=True, slots=True)
class ChunkGrid:
    bounds: Box
    chunk_shape: tuple[int, ...]
    origin: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(c <= 0 for c in self.chunk_shape):
            raise ValueError(f"chunk shape must be positive, got {self.chunk_shape}")

    def cell_box(self, index: tuple[int, ...]) -> Box:
        """The cell's full (unclipped) extent."""
        start = tuple(o + g * c for o, g, c in zip(self.origin, index, self.chunk_shape))
        return Box(start, tuple(s + c for s, c in zip(start, self.chunk_shape)))

    def cells(self, box: Box) -> Iterator[Cell]:
        """Cells that overlap ``box`` inside the bounds, with their bounds-clipped extents."""
        region = box.intersect(self.bounds)
        if region.empty:
            return
        # per axis, each index with its clipped extent, worked out once: a cutout's cells are a
        # product of a few of them (building a Box per cell twice over cost 7 us a cell)
        axes = [
            [(g, max(o + g * c, lo), min(o + (g + 1) * c, hi)) for g in range((a - o) // c, (b - 1 - o) // c + 1)]
            for a, b, o, c, lo, hi in zip(region.start, region.stop, self.origin, self.chunk_shape,
                                          self.bounds.start, self.bounds.stop)
        ]
        if not axes:  # a 0-D grid: its one cell
            yield Cell((), Box((), ()))
            return
        # x fastest, matching the storage order of every format here.
        for rev in itertools.product(*reversed(axes)):
            index, start, stop = zip(*reversed(rev))
            yield Cell(index, Box(start, stop))

    def grid_shape(self) -> tuple[int, ...]:
        """Number of cells per dimension covering the bounds."""
        return tuple(
            max(0, (b - 1 - o) // c - (a - o) // c + 1) if b > a else 0
            for a, b, o, c in zip(self.bounds.start, self.bounds.stop, self.origin, self.chunk_shape)
        )
