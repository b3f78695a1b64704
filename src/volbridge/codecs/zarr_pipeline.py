"""Zarr codec pipelines (v2 filters + compressor, v3 codec chains) by their metadata names.

A pipeline turns one stored chunk into the full (padded) chunk array in the array's own dimension
order and back. Its bytes -> bytes steps are the codec layer's :class:`Compressor` objects (blosc
with every cname and shuffle, zstd, gzip, zlib, numcodecs-framed lz4, bz2, lzma, crc32c), so every
format decodes through the same checked code. Unknown codecs raise UnsupportedError naming them.
"""

from __future__ import annotations

import math

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import ChunkDecodeError, MetadataError, UnsupportedError
from .base import Compressor
from .compression import Blosc, Lzma, _Primitive, get_compressor

_SHUFFLE_V3 = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _blosc(cfg: dict, shuffle: int, itemsize: int, default_cname: str) -> Blosc:
    return Blosc(cfg.get("cname", default_cname), cfg.get("clevel", 5), shuffle, cfg.get("typesize") or itemsize,
                 cfg.get("blocksize", 0))


def config_object(value, what: str) -> dict:
    """A metadata member that must be a JSON object (None: absent, {}); a string or list there is
    malformed metadata, named, not an AttributeError deep in the parser."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MetadataError(f"{what} must be a JSON object, got {value!r}")
    return value


def _level(cfg: dict, key: str, what: str):
    value = cfg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise MetadataError(f"{what}: '{key}' must be an integer, got {value!r}")
    return value


def v2_compressor(cfg: dict | None, itemsize: int) -> Compressor | None:
    """A numcodecs compressor config (``.zarray``'s ``compressor``)."""
    if cfg is None:
        return None
    cfg = config_object(cfg, "a zarr v2 'compressor'")
    cid = cfg.get("id")
    for key in ("level", "clevel", "preset"):
        _level(cfg, key, f"compressor {cid!r}")
    if cid == "blosc":
        shuffle = cfg.get("shuffle", 1)
        if shuffle == -1:  # AUTOSHUFFLE: bit shuffle for 1-byte items, byte shuffle otherwise
            shuffle = 2 if itemsize == 1 else 1
        return _blosc(cfg, shuffle, itemsize, "lz4")
    if cid == "lzma":
        return Lzma(cfg.get("preset"), cfg.get("format", 1), cfg.get("check", -1), cfg.get("filters"))
    defaults = {"zstd": 0, "gzip": 1, "zlib": 1, "bz2": 1}
    if cid in defaults:
        level = cfg.get("preset" if cid == "lzma" else "level")
        return get_compressor(cid, level=defaults[cid] if level is None else level)
    if cid == "lz4":
        return get_compressor("lz4")
    raise UnsupportedError(f"zarr v2 compressor {cid!r} is not supported (blosc, zstd, gzip, zlib, lz4, bz2, lzma are)")


def v3_bytes_codec(codec: dict, itemsize: int) -> Compressor:
    name = codec.get("name")
    cfg = config_object(codec.get("configuration"), f"the configuration of zarr v3 codec {name!r}")
    if name == "blosc":
        shuffle = cfg.get("shuffle", "noshuffle")
        shuffle = _SHUFFLE_V3.get(shuffle) if isinstance(shuffle, str) else shuffle
        if shuffle is None:
            raise MetadataError(f"blosc shuffle {cfg.get('shuffle')!r} is not one of {list(_SHUFFLE_V3)}")
        return _blosc(cfg, shuffle, itemsize, "zstd")
    if name == "gzip":
        return get_compressor("gzip", level=cfg.get("level", 5))
    if name == "zstd":
        return get_compressor("zstd", level=cfg.get("level", 0))
    if name == "crc32c":
        return get_compressor("crc32c")
    raise UnsupportedError(f"zarr v3 codec {name!r} is not supported (bytes, transpose, blosc, gzip, zstd, crc32c are)")


@dataclass
class ZarrPipeline:
    """Chunk bytes <-> a full chunk array of ``chunk_shape`` in the array's dimension order."""

    chunk_shape: tuple[int, ...]
    dtype: np.dtype  # the stored dtype, with its byte order
    order: str = "C"  # memory order of the stored elements (v2 "order"; v3 after transposes)
    permutation: tuple[int, ...] | None = None  # v3 transpose: encoded[i] = decoded[perm[i]]
    steps: tuple[Compressor, ...] = ()  # bytes -> bytes, in encode order

    def __post_init__(self) -> None:
        # the stored shape and size, once: decode runs per chunk, thousands of times a read
        self._shape = self.chunk_shape if self.permutation is None else tuple(self.chunk_shape[p] for p in self.permutation)
        self._nbytes = math.prod(self._shape) * self.dtype.itemsize  # Python ints: numpy's product wraps

    @property
    def plain(self) -> bool:
        """Whether decoded bytes are little-endian C-order elements (no transpose, no swap)."""
        return self.permutation is None and self.order == "C" and (self.dtype.itemsize == 1 or self.dtype.byteorder in "<|"
                                                                   or (self.dtype.byteorder == "=" and sys.byteorder == "little"))

    @property
    def compression(self) -> str | None:
        """The name of the one bytes -> bytes step when it is a plain compression (gzip, zstd,
        ...), else None (no step, a checksum, blosc's shuffles, several steps)."""
        if len(self.steps) == 1 and isinstance(self.steps[0], _Primitive):
            return self.steps[0].name
        return None

    def decode_bytes(self, data: bytes) -> bytes:
        """The chunk's stored elements after the bytes -> bytes steps, size-checked."""
        for step in reversed(self.steps):
            data = step.decompress(data)
        if len(data) != self._nbytes:
            raise ChunkDecodeError(f"chunk holds {len(data)} bytes after decoding, expected {self._nbytes} for {self._shape} {self.dtype}")
        return data

    def decode(self, data: bytes) -> np.ndarray:
        arr = np.frombuffer(self.decode_bytes(data), dtype=self.dtype).reshape(self._shape, order=self.order)
        if self.permutation is not None:
            arr = arr.transpose(np.argsort(self.permutation))
        return arr

    def encode(self, arr: np.ndarray) -> bytes:
        if self.permutation is not None:
            arr = arr.transpose(self.permutation)
        return self.encode_bytes(np.asarray(arr, dtype=self.dtype).tobytes(order=self.order))

    def encode_bytes(self, data):
        """Stored bytes of a chunk's elements in stored order (any bytes-like), through the steps."""
        for step in self.steps:
            data = step.compress(data)
        return data


#: The bytes->bytes codecs :func:`v3_bytes_codec` knows.
_V3_BYTES_CODECS = ("blosc", "gzip", "zstd", "crc32c")


def v3_pipeline(codecs: list[dict], chunk_shape: tuple[int, ...], dtype: np.dtype) -> ZarrPipeline:
    """Build from ``zarr.json`` ``codecs``: array->array*, one array->bytes, bytes->bytes*."""
    perm: tuple[int, ...] | None = None
    endian = None
    seen_bytes = False
    steps = []
    for codec in codecs:
        if not isinstance(codec, dict):
            raise MetadataError(f"zarr v3 codec entries are objects, got {codec!r}")
        name = codec.get("name")
        cfg = config_object(codec.get("configuration"), f"the configuration of zarr v3 codec {name!r}")
        if name == "transpose":
            if seen_bytes:
                raise MetadataError("zarr v3: 'transpose' must come before the array->bytes codec")
            order = tuple(cfg.get("order", ()))
            if sorted(order) != list(range(len(chunk_shape))):
                raise MetadataError(f"zarr v3 transpose order {list(order)} is not a permutation of {len(chunk_shape)} axes")
            perm = order if perm is None else tuple(perm[i] for i in order)
        elif name == "bytes":
            seen_bytes = True
            endian = cfg.get("endian", "little")
            if endian not in ("little", "big"):
                raise MetadataError(f"zarr v3 'bytes' codec: endian must be 'little' or 'big', got {endian!r}")
        elif name == "sharding_indexed":
            raise UnsupportedError("zarr v3 sharding (sharding_indexed) is not supported yet")
        else:
            if not seen_bytes:
                if name in _V3_BYTES_CODECS:
                    raise MetadataError(f"zarr v3: bytes->bytes codec {name!r} comes before the array->bytes codec")
                # an array->array codec volbridge does not know (numcodecs.delta, say): valid metadata
                raise UnsupportedError(f"zarr v3 codec {name!r} is not supported (array->array codecs: transpose)")
            steps.append(v3_bytes_codec(codec, dtype.itemsize))
    if not seen_bytes:
        raise MetadataError("zarr v3: the codec chain has no array->bytes codec ('bytes')")
    stored = dtype.newbyteorder("<" if endian == "little" else ">") if dtype.itemsize > 1 else dtype
    return ZarrPipeline(chunk_shape, stored, "C", perm, tuple(steps))
