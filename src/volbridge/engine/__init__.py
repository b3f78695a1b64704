"""Layer 5: plan boxes into chunk operations; parallel fetch, decode, assemble; read-modify-write."""

from .chunked import ChunkedVolume
from .volume import Volume

__all__ = ["ChunkedVolume", "Volume"]
