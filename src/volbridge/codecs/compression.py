"""Compressor objects over the byte primitives, plus magic-number sniffing.

Sniffing exists because stored bytes do not always say how they were compressed: BigArrays.jl
writes gzip under "raw" layers, and a server may hand back gzip bytes it did not label.
"""

from __future__ import annotations

import struct
import zlib

import crc32c as _crc32c
import imagecodecs

from .. import compression as prim
from ..errors import ChunkDecodeError, UnsupportedError
from .base import Compressor


class _Primitive(Compressor):
    """A compressor backed by :mod:`volbridge.compression` (gzip, zstd, br, xz, bz2)."""

    magic = b""

    def __init__(self, level: int | None = None):
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return prim.compress(self.name, data, self.level)

    def decompress(self, data: bytes) -> bytes:
        return prim.decompress(self.name, data)

    def matches(self, data: bytes) -> bool:
        return bool(self.magic) and data[: len(self.magic)] == self.magic


class Gzip(_Primitive):
    name = "gzip"
    magic = b"\x1f\x8b\x08"


class Zstd(_Primitive):
    name = "zstd"
    magic = b"\x28\xb5\x2f\xfd"


class Brotli(_Primitive):
    name = "br"  # no magic number: never sniffed


class Xz(_Primitive):
    name = "xz"
    magic = b"\xfd7zXZ\x00"


class Bz2(_Primitive):
    name = "bz2"
    magic = b"BZh"


class Blosc(Compressor):
    """Blosc1 frames, as BigArrays.jl writes for its "blosclz" encoding (level 5, byte shuffle)."""

    name = "blosc"

    def __init__(self, cname: str = "blosclz", level: int = 5, shuffle: int = 1, typesize: int = 1, blocksize: int = 0):
        self.cname, self.level, self.shuffle, self.typesize, self.blocksize = cname, level, shuffle, typesize, blocksize

    def compress(self, data: bytes) -> bytes:
        return imagecodecs.blosc_encode(
            data, level=self.level, compressor=self.cname, shuffle=self.shuffle, typesize=self.typesize,
            blocksize=self.blocksize or None,
        )

    def decompress(self, data: bytes) -> bytes:
        if not self.matches(data):
            raise ChunkDecodeError(f"not a blosc frame ({len(data)} bytes, bad header)")
        try:
            return imagecodecs.blosc_decode(data)
        except Exception as e:
            raise ChunkDecodeError(f"corrupt blosc frame ({len(data)} bytes): {e}") from e

    def matches(self, data: bytes) -> bool:
        # No magic number: a plausible header whose compressed size equals the object's size.
        if len(data) < 16 or data[0] not in (1, 2):
            return False
        _, _, cbytes = struct.unpack_from("<III", data, 4)
        return cbytes == len(data)


class Zlib(Compressor):
    """A zlib container (numcodecs' "zlib", N5's gzip with useZlib)."""

    name = "zlib"

    def __init__(self, level: int | None = None):
        self.level = 1 if level is None else level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: bytes) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as e:
            raise ChunkDecodeError(f"corrupt zlib stream ({len(data)} bytes): {e}") from e


class Lz4(Compressor):
    """numcodecs' LZ4: a 4-byte little-endian uncompressed size, then one LZ4 block."""

    name = "lz4"

    def compress(self, data: bytes) -> bytes:
        return imagecodecs.lz4_encode(data, header=True)

    def decompress(self, data: bytes) -> bytes:
        try:
            return imagecodecs.lz4_decode(data, header=True)
        except Exception as e:
            raise ChunkDecodeError(f"corrupt lz4 block ({len(data)} bytes): {e}") from e


class Crc32c(Compressor):
    """Zarr v3's crc32c codec: appends the CRC32C of the data; decoding verifies and strips it."""

    name = "crc32c"

    def compress(self, data: bytes) -> bytes:
        return bytes(data) + _crc32c.crc32c(data).to_bytes(4, "little")

    def decompress(self, data: bytes) -> bytes:
        if len(data) < 4:
            raise ChunkDecodeError("crc32c: chunk shorter than its 4-byte checksum")
        body, want = memoryview(data)[:-4], int.from_bytes(data[-4:], "little")
        got = _crc32c.crc32c(body)
        if got != want:
            raise ChunkDecodeError(f"crc32c mismatch: stored {want:#010x}, computed {got:#010x}")
        return bytes(body)


def get_compressor(name: str, **options) -> Compressor:
    factories = {
        "gzip": Gzip,
        "gz": Gzip,
        "zstd": Zstd,
        "zst": Zstd,
        "blosc": Blosc,
        "blosclz": Blosc,
        "br": Brotli,
        "brotli": Brotli,
        "xz": Xz,
        "lzma": Xz,
        "bz2": Bz2,
        "zlib": Zlib,
        "lz4": Lz4,
        "crc32c": Crc32c,
    }
    try:
        return factories[name](**options)
    except KeyError:
        raise UnsupportedError(
            f"unknown compression {name!r}; expected one of gzip, zstd, blosc, br, xz, bz2, zlib, lz4, crc32c"
        ) from None


#: Compressors whose streams announce themselves; tried in this order.
_SNIFFABLE = (Gzip(), Zstd(), Xz(), Bz2(), Blosc())


def sniff(data: bytes) -> Compressor | None:
    """The compressor whose header ``data`` carries, or None."""
    for c in _SNIFFABLE:
        if c.matches(data):
            return c
    return None
