"""Codec interfaces.

Two kinds, composed by the formats layer:

* :class:`ChunkCodec` turns one chunk array into bytes and back. Chunk arrays are 4-D
  ``(x, y, z, channel)`` in Fortran order: x fastest, each channel a contiguous plane, which is
  the storage order of precomputed (and of N5, and of zarr with ``order="F"``).
* :class:`Compressor` turns bytes into bytes (gzip, zstd, blosc), beneath a chunk codec or as the
  transport compression of whole objects.

Codecs raise :class:`~volbridge.errors.ChunkDecodeError` on bad input; the engine adds the key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache

import numpy as np

Shape4 = tuple[int, int, int, int]


class ChunkCodec(ABC):
    name: str

    @abstractmethod
    def decode(self, data: bytes, shape: Shape4, dtype: np.dtype) -> np.ndarray:
        """A ``shape`` array of ``dtype`` (may be a read-only view of ``data``)."""

    @abstractmethod
    def encode(self, chunk: np.ndarray) -> bytes:
        """Bytes for a 4-D ``(x, y, z, c)`` chunk of any memory layout."""


class Compressor(ABC):
    name: str

    @abstractmethod
    def compress(self, data: bytes) -> bytes: ...

    @abstractmethod
    def decompress(self, data: bytes) -> bytes: ...

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` starts with this compressor's magic number."""
        return False


@lru_cache(maxsize=None)
def little_endian(dtype) -> np.dtype:
    """The little-endian form of ``dtype`` (cached: this runs once per chunk)."""
    return np.dtype(dtype).newbyteorder("<")
