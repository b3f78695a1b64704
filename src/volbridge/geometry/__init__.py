"""Layer 1: boxes, chunk grids and index normalisation. No I/O."""

from .box import Box
from .grid import Cell, ChunkGrid
from .index import IndexPlan, normalize_index

__all__ = ["Box", "Cell", "ChunkGrid", "IndexPlan", "normalize_index"]
