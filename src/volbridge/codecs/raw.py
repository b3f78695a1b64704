"""``raw``: the chunk's little-endian Fortran-order bytes, optionally under a compressor.

Decoding checks the byte count against the chunk shape; a count that does not match but starts
with a known compressor's header is decompressed first (BigArrays.jl's "raw" holds gzip bytes,
and its "gzip"/"zstd"/"blosclz" encodings are raw under that compressor).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import ChunkDecodeError
from .base import ChunkCodec, Compressor, Shape4, little_endian
from .compression import sniff


def decompress_to_size(data: bytes, nbytes: int, what: Callable[[], str]) -> bytes:
    """``data`` itself when it has ``nbytes`` bytes, else its decompressed form, checked.

    ``what`` describes the chunk for error messages; it is only called on failure (this runs
    once per chunk, so nothing is formatted on the happy path).
    """
    if len(data) == nbytes:
        return data
    comp = sniff(data)
    if comp is None:
        raise ChunkDecodeError(f"{what()}: {len(data)} bytes, expected {nbytes} (truncated or corrupt)")
    out = comp.decompress(data)
    if len(out) != nbytes:
        raise ChunkDecodeError(f"{what()}: {comp.name} stream decompressed to {len(out)} bytes, expected {nbytes}")
    return out


class RawCodec(ChunkCodec):
    name = "raw"

    def __init__(self, compressor: Compressor | None = None):
        self.compressor = compressor

    def decode_bytes(self, data: bytes, shape: Shape4, dtype: np.dtype) -> bytes:
        """The chunk's little-endian Fortran-order voxel bytes, decompressed and size-checked."""
        dt = little_endian(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        what = lambda: f"raw {shape[:3]} {dt.name} chunk"  # noqa: E731
        if self.compressor is not None and self.compressor.matches(data):
            # Decompress whenever the stream says it is ours: a small chunk's compressed size can
            # equal its raw size, and the size test alone would then take the stream for voxels.
            out = self.compressor.decompress(data)
            if len(out) != nbytes:
                raise ChunkDecodeError(f"{what()}: {self.compressor.name} stream decompressed to {len(out)} bytes, expected {nbytes}")
            return out
        return decompress_to_size(data, nbytes, what)

    def decode(self, data: bytes, shape: Shape4, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(self.decode_bytes(data, shape, dtype), dtype=little_endian(dtype)).reshape(shape, order="F")

    def encode(self, chunk: np.ndarray) -> bytes:
        dt = little_endian(chunk.dtype)
        if chunk.dtype != dt:
            chunk = chunk.astype(dt)
        # tobytes('F') of an F-contiguous array is a straight memcpy; other layouts are gathered.
        return self.encode_bytes(chunk.tobytes(order="F"))

    def encode_bytes(self, data):
        """Stored bytes of a chunk's little-endian Fortran-order voxel bytes (any bytes-like)."""
        return self.compressor.compress(data) if self.compressor else data
