"""Zarr codec pipelines (v2 filters + compressor, v3 codec chains) by their metadata names.

A pipeline turns one stored chunk into the full (padded) chunk array in the array's own dimension
order and back. The byte transforms reuse imagecodecs and libdeflate (blosc with every cname and
shuffle, zstd, gzip, zlib, lz4 with numcodecs' 4-byte size header, bz2, lzma); crc32c uses the
``crc32c`` package. Unknown codecs raise UnsupportedError naming them.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import crc32c as _crc32c
import imagecodecs
import numpy as np

from .. import compression
from .compression import Blosc as _BloscFrame
from ..errors import ChunkDecodeError, MetadataError, UnsupportedError

_SHUFFLE_V3 = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class BytesStep:
    """A bytes -> bytes codec: ``encode`` on the way in, ``decode`` on the way out."""

    name: str
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]


def _guard(name: str, fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        try:
            return fn(data)
        except ChunkDecodeError:
            raise
        except Exception as e:
            raise ChunkDecodeError(f"corrupt {name} data ({len(data)} bytes): {e}") from e

    return run


def _blosc(cname: str, clevel: int, shuffle: int, typesize: int, blocksize: int) -> BytesStep:
    def enc(b: bytes) -> bytes:
        return imagecodecs.blosc_encode(b, level=clevel, compressor=cname, shuffle=shuffle, typesize=typesize,
                                        blocksize=blocksize or None)

    return BytesStep("blosc", enc, _BloscFrame().decompress)


def _crc32c_step() -> BytesStep:
    def enc(b: bytes) -> bytes:
        return bytes(b) + _crc32c.crc32c(b).to_bytes(4, "little")

    def dec(b: bytes) -> bytes:
        if len(b) < 4:
            raise ChunkDecodeError("crc32c: chunk shorter than its 4-byte checksum")
        body, want = memoryview(b)[:-4], int.from_bytes(b[-4:], "little")
        got = _crc32c.crc32c(body)
        if got != want:
            raise ChunkDecodeError(f"crc32c mismatch: stored {want:#010x}, computed {got:#010x}")
        return bytes(body)

    return BytesStep("crc32c", enc, dec)


def v2_compressor(cfg: dict | None, itemsize: int) -> BytesStep | None:
    """A numcodecs compressor config (``.zarray``'s ``compressor``)."""
    if cfg is None:
        return None
    cid = cfg.get("id")
    level = cfg.get("level", cfg.get("clevel"))
    if cid == "blosc":
        shuffle = cfg.get("shuffle", 1)
        if shuffle == -1:  # AUTOSHUFFLE: bit shuffle for 1-byte items, byte shuffle otherwise
            shuffle = 2 if itemsize == 1 else 1
        return _blosc(cfg.get("cname", "lz4"), cfg.get("clevel", 5), shuffle, itemsize, cfg.get("blocksize", 0))
    if cid == "zstd":
        return BytesStep("zstd", lambda b: imagecodecs.zstd_encode(b, level=level or 0), _guard("zstd", imagecodecs.zstd_decode))
    if cid == "gzip":
        return BytesStep("gzip", lambda b: compression.compress("gzip", b, level if level is not None else 1),
                         _guard("gzip", lambda b: compression.decompress("gzip", b)))
    if cid == "zlib":
        return BytesStep("zlib", lambda b: zlib.compress(b, level if level is not None else 1), _guard("zlib", zlib.decompress))
    if cid == "lz4":
        return BytesStep("lz4", lambda b: imagecodecs.lz4_encode(b, header=True),
                         _guard("lz4", lambda b: imagecodecs.lz4_decode(b, header=True)))
    if cid == "bz2":
        return BytesStep("bz2", lambda b: bz2.compress(b, level or 1), _guard("bz2", bz2.decompress))
    if cid == "lzma":
        return BytesStep("lzma", lambda b: lzma.compress(b, preset=cfg.get("preset")), _guard("lzma", lzma.decompress))
    raise UnsupportedError(f"zarr v2 compressor {cid!r} is not supported (blosc, zstd, gzip, zlib, lz4, bz2, lzma are)")


def v3_bytes_codec(codec: dict, itemsize: int) -> BytesStep:
    name, cfg = codec.get("name"), codec.get("configuration") or {}
    if name == "blosc":
        shuffle = cfg.get("shuffle", "noshuffle")
        shuffle = _SHUFFLE_V3.get(shuffle) if isinstance(shuffle, str) else shuffle
        if shuffle is None:
            raise MetadataError(f"blosc shuffle {cfg.get('shuffle')!r} is not one of {list(_SHUFFLE_V3)}")
        return _blosc(cfg.get("cname", "zstd"), cfg.get("clevel", 5), shuffle, cfg.get("typesize") or itemsize, cfg.get("blocksize", 0))
    if name == "gzip":
        return v2_compressor({"id": "gzip", "level": cfg.get("level", 5)}, itemsize)  # type: ignore[return-value]
    if name == "zstd":
        return v2_compressor({"id": "zstd", "level": cfg.get("level", 0)}, itemsize)  # type: ignore[return-value]
    if name == "crc32c":
        return _crc32c_step()
    raise UnsupportedError(f"zarr v3 codec {name!r} is not supported (bytes, transpose, blosc, gzip, zstd, crc32c are)")


@dataclass
class ZarrPipeline:
    """Chunk bytes <-> a full chunk array of ``chunk_shape`` in the array's dimension order."""

    chunk_shape: tuple[int, ...]
    dtype: np.dtype  # the stored dtype, with its byte order
    order: str = "C"  # memory order of the stored elements (v2 "order"; v3 after transposes)
    permutation: tuple[int, ...] | None = None  # v3 transpose: encoded[i] = decoded[perm[i]]
    steps: tuple[BytesStep, ...] = ()  # bytes -> bytes, in encode order

    def decode(self, data: bytes) -> np.ndarray:
        for step in reversed(self.steps):
            data = step.decode(data)
        shape = self.chunk_shape if self.permutation is None else tuple(self.chunk_shape[p] for p in self.permutation)
        n = int(np.prod(shape)) * self.dtype.itemsize
        if len(data) != n:
            raise ChunkDecodeError(f"chunk holds {len(data)} bytes after decoding, expected {n} for {shape} {self.dtype}")
        arr = np.frombuffer(data, dtype=self.dtype).reshape(shape, order=self.order)
        if self.permutation is not None:
            arr = arr.transpose(np.argsort(self.permutation))
        return arr

    def encode(self, arr: np.ndarray) -> bytes:
        if self.permutation is not None:
            arr = arr.transpose(self.permutation)
        data = np.asarray(arr, dtype=self.dtype).tobytes(order=self.order)
        for step in self.steps:
            data = step.encode(data)
        return data


def v3_pipeline(codecs: list[dict], chunk_shape: tuple[int, ...], dtype: np.dtype) -> ZarrPipeline:
    """Build from ``zarr.json`` ``codecs``: array->array*, one array->bytes, bytes->bytes*."""
    perm: tuple[int, ...] | None = None
    endian = None
    seen_bytes = False
    steps = []
    for codec in codecs:
        if not isinstance(codec, dict):
            raise MetadataError(f"zarr v3 codec entries are objects, got {codec!r}")
        name, cfg = codec.get("name"), codec.get("configuration") or {}
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
        elif name == "sharding_indexed":
            raise UnsupportedError("zarr v3 sharding (sharding_indexed) is not supported yet")
        else:
            if not seen_bytes:
                raise MetadataError(f"zarr v3: bytes->bytes codec {name!r} comes before the array->bytes codec")
            steps.append(v3_bytes_codec(codec, dtype.itemsize))
    if not seen_bytes:
        raise MetadataError("zarr v3: the codec chain has no array->bytes codec ('bytes')")
    stored = dtype.newbyteorder("<" if endian == "little" else ">") if dtype.itemsize > 1 else dtype
    return ZarrPipeline(chunk_shape, stored, "C", perm, tuple(steps))
