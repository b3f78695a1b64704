"""Layer 4: one module per chunked format (metadata, key naming, chunk grid, codec chain)."""

from .base import ChunkedDataset, ScaleLayout, ScaleMeta, VolumeMeta

__all__ = ["ChunkedDataset", "ScaleLayout", "ScaleMeta", "VolumeMeta"]
