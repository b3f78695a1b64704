"""Compressor objects over the byte primitives, plus magic-number sniffing.

Sniffing exists because stored bytes do not always say how they were compressed: BigArrays.jl
writes gzip under "raw" layers, and a server may hand back gzip bytes it did not label.
"""

from __future__ import annotations

import struct

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

    def __init__(self, cname: str = "blosclz", level: int = 5, shuffle: int = 1, typesize: int = 1):
        self.cname, self.level, self.shuffle, self.typesize = cname, level, shuffle, typesize

    def compress(self, data: bytes) -> bytes:
        return imagecodecs.blosc_encode(
            data, level=self.level, compressor=self.cname, shuffle=self.shuffle, typesize=self.typesize
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
        "bz2": Bz2,
    }
    try:
        return factories[name](**options)
    except KeyError:
        raise UnsupportedError(
            f"unknown compression {name!r}; expected one of gzip, zstd, blosc, br, xz, bz2"
        ) from None


#: Compressors whose streams announce themselves; tried in this order.
_SNIFFABLE = (Gzip(), Zstd(), Xz(), Bz2(), Blosc())


def sniff(data: bytes) -> Compressor | None:
    """The compressor whose header ``data`` carries, or None."""
    for c in _SNIFFABLE:
        if c.matches(data):
            return c
    return None
