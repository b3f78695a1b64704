"""Zarr v2 and v3 interop with the two reference implementations, both directions, and bad input.

* zarr-python writes (every v2 compressor and blosc cname/shuffle, order C and F, both dimension
  separators, v3 bytes/transpose/blosc/gzip/zstd/crc32c, every chunk key encoding, many dtypes and
  fill values, 3-D and 4-D, edge chunks, absent chunks); volbridge reads in both axis orders.
* zarr-python writes, volbridge rewrites parts of it (unaligned, through the array's own codec
  chain), and zarr-python, tensorstore and volbridge read the result.
* volbridge writes (``zarr2://`` and ``zarr3://``, each compression), with unaligned partial writes
  that leave some chunks absent; zarr-python and tensorstore read exactly the same data, and the
  chunk files are the ones the spec names.
* tensorstore writes (``zarr`` and ``zarr3`` drivers); volbridge reads.
* Bad input: malformed metadata, unsupported features, corrupt chunks and refused writes raise a
  clear library error that names the problem (the chunk key for a corrupt chunk), never zeros.

"Exactly" means identical dtype, shape and bytes: floats are compared bit for bit, so NaN (with its
payload), -0.0 and inf count. The reference for a peer-written array is the data the test wrote,
and the peer's own read is checked against it first, so a peer bug cannot hide in the oracle.

Axes: zarr arrays here are ``(z, y, x)`` or ``(c, z, y, x)`` in C order. volbridge's default
``zyx`` handle is that same array (C-contiguous); its ``xyz`` handle is the transpose
(F-contiguous). A 4-D array with one channel reads without a channel axis (DESIGN: "a
single-channel volume has no channel axis unless asked for").
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import volbridge as vb
from volbridge.errors import (
    BoundsError,
    ChunkDecodeError,
    DTypeError,
    MetadataError,
    ShapeError,
    UnsupportedError,
)

# -- data -----------------------------------------------------------------------------------------

#: NaN bit patterns with a payload, which must survive every codec and every copy.
NAN_PAYLOAD = {4: 0x7FC00123, 8: 0x7FF8000000000123}


def make_data(shape, dtype, seed) -> np.ndarray:
    """Random data over the dtype's full range; floats include NaN (two payloads), -0.0, +-inf, tiny."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    native = dt.newbyteorder("=")
    if native.kind == "b":
        out = rng.integers(0, 2, shape).astype(bool)
    elif native.kind == "c":
        half = np.dtype(f"f{native.itemsize // 2}")
        out = np.empty(shape, native)
        out.real = make_data(shape, half, seed)
        out.imag = make_data(shape, half, seed + 1000)
    elif native.kind == "f":
        out = rng.normal(0, 1000, shape).astype(native)
        flat = out.reshape(-1)
        specials = np.array([np.nan, -0.0, np.inf, -np.inf, np.finfo(native).tiny], native)
        k = min(flat.size, len(specials))
        flat[:k] = specials[:k]
        bits = flat.view(f"u{native.itemsize}")
        if flat.size > 5:
            bits[5] = NAN_PAYLOAD[native.itemsize]
            bits[rng.choice(flat.size, min(4, flat.size), replace=False)] = NAN_PAYLOAD[native.itemsize]
    else:
        info = np.iinfo(native)
        out = rng.integers(info.min, info.max, shape, dtype=native, endpoint=True)
    return out.astype(dt)


def native(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder not in ("=", "|") else a


def assert_same(actual, expected, what: str) -> None:
    """Identical dtype, shape and bytes (floats bit for bit)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    n = actual.dtype.itemsize
    a = np.ascontiguousarray(actual).view(np.uint8).reshape(*actual.shape, n)
    e = np.ascontiguousarray(expected).view(np.uint8).reshape(*expected.shape, n)
    same = (a == e).all(axis=-1)
    if not same.all():
        bad = np.argwhere(~same)
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {same.size} elements differ; first at {i}: got {actual[i]!r}, expected {expected[i]!r}"
        )


def fill_scalar(fill, dtype) -> np.ndarray:
    """A 0-d array of ``dtype`` holding ``fill``; a ``"0x..."`` string is a bit pattern (v3 hex float fill values)."""
    dt = np.dtype(dtype)
    if isinstance(fill, str) and fill.startswith("0x"):
        return np.array(int(fill, 16), f"u{dt.itemsize}").view(dt)
    if fill is None:
        return np.zeros((), dt)
    return np.array(fill, dt)


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def write_bytes(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def read_json(*parts: str):
    return json.loads(Path(*parts).read_text())


# -- volbridge reads ------------------------------------------------------------------------------


def vb_read_both(url: str, expected: np.ndarray, what: str) -> None:
    """volbridge reads ``url`` in both axis orders and must see ``expected`` (the zarr array's own order)."""
    expected = native(expected)
    squeeze = expected.ndim == 4 and expected.shape[0] == 1
    want = expected[0] if squeeze else expected
    zyx = vb.array(url)
    assert zyx.shape == want.shape, f"{what}: zyx shape {zyx.shape}, expected {want.shape}"
    assert zyx.dtype == want.dtype
    got = zyx[...]
    assert got.flags.c_contiguous, f"{what}: zyx reads are C-contiguous"
    assert_same(got, want, f"{what} (zyx)")
    xyz = vb.array(url, axis_order="xyz")
    assert xyz.shape == want.T.shape
    got = xyz[...]
    assert got.flags.f_contiguous, f"{what}: xyz reads are F-contiguous"
    assert_same(got, want.T, f"{what} (xyz)")
    # An unaligned cutout across chunk borders, both orders.
    sp = want.shape[-3:]
    lo = tuple(max(0, n // 3 - 1) for n in sp)
    hi = tuple(max(a + 1, n - n // 4) for a, n in zip(lo, sp))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    lead = (slice(None),) * (want.ndim - 3)
    assert_same(zyx[lead + sl], want[lead + sl], f"{what}: zyx cutout {sl}")
    assert_same(xyz[sl[::-1]], want[lead + sl].T, f"{what}: xyz cutout {sl[::-1]}")
    # Integer indices drop their axes, as in numpy.
    mid = tuple(n // 2 for n in sp)
    assert_same(zyx[lead + (mid[0],)], want[lead + (mid[0],)], f"{what}: z plane {mid[0]}")
    assert_same(np.asarray(zyx[lead + mid]), want[lead + mid], f"{what}: voxel {mid}")


# -- 1. zarr-python writes, volbridge reads -------------------------------------------------------

S3 = (11, 13, 10)  # (z, y, x): edge chunks on every axis with C3
C3 = (4, 5, 3)
S4 = (3, 9, 7, 10)  # (c, z, y, x)
C4 = (3, 4, 3, 4)


@dataclass(frozen=True)
class ZCase:
    id: str
    fmt: int  # 2 or 3
    dtype: str
    shape: tuple[int, ...] = S3
    chunks: tuple[int, ...] = C3
    fill: Any = 0
    #: v2: one numcodecs compressor or None. v3: a list of bytes->bytes codecs.
    compressor: Any = None
    order: str = "C"  # v2 only
    separator: str = "."  # v2 dimension_separator, or the v3 key encoding's separator
    key_encoding: str = "default"  # v3: "default" or "v2"
    endian: str = "little"  # v3 bytes codec
    transposes: tuple[tuple[int, ...], ...] = ()  # v3 transpose codecs, in order
    #: leave chunks absent: only z < chunk_z + 1 (and y >= 1) is written
    missing: bool = False
    #: replace zarr.json's fill_value with this after creation (e.g. a hex bit pattern)
    raw_fill: Any = None

    def __str__(self) -> str:
        return self.id


def zp_create(path: str, case: ZCase):
    kw: dict[str, Any] = dict(shape=case.shape, chunks=case.chunks, dtype=case.dtype, zarr_format=case.fmt, fill_value=case.fill)
    if case.fmt == 2:
        kw.update(compressors=case.compressor, order=case.order, chunk_key_encoding={"name": "v2", "separator": case.separator})
    else:
        kw.update(
            compressors=list(case.compressor or []) or None,
            serializer=BytesCodec(endian=case.endian),
            filters=[TransposeCodec(order=list(t)) for t in case.transposes] or None,
            chunk_key_encoding={"name": case.key_encoding, "separator": case.separator},
        )
    return zarr.create_array(path, **kw)


def spec_key(case: ZCase, index: tuple[int, ...]) -> str:
    """The chunk key by formats.md sections 2-3, independent of every implementation."""
    parts = [str(i) for i in index]
    if case.fmt == 3 and case.key_encoding == "default":
        parts = ["c", *parts]
    return case.separator.join(parts)


def grid_indices(shape, chunks):
    return list(product(*(range(-(-n // c)) for n, c in zip(shape, chunks))))


def written_region(case: ZCase) -> tuple[slice, ...]:
    lead = (slice(None),) * (len(case.shape) - 3)
    if not case.missing:
        return lead + (slice(None),) * 3
    cz = case.chunks[-3]
    return lead + (slice(0, cz + 1), slice(1, None), slice(None))


def zp_write(path: str, case: ZCase, seed: int = 3) -> np.ndarray:
    """Write with zarr-python; returns the array every reader must see."""
    a = zp_create(path, case)
    if case.raw_fill is not None:
        meta = read_json(path, "zarr.json")
        meta["fill_value"] = case.raw_fill
        write_bytes(os.path.join(path, "zarr.json"), json.dumps(meta).encode())
        a = zarr.open_array(path, mode="r+")
    fill = case.raw_fill if case.raw_fill is not None else case.fill
    data = make_data(case.shape, case.dtype, seed)
    region = written_region(case)
    a[region] = data[region]
    expected = np.empty(case.shape, np.dtype(case.dtype))
    expected[...] = fill_scalar(fill, case.dtype)
    expected[region] = data[region]
    # The oracle agrees with the data written: a peer bug cannot become the reference.
    assert_same(native(zarr.open_array(path, mode="r")[...]), native(expected), f"{case.id}: zarr-python reading its own array")
    if case.missing:
        idx = grid_indices(case.shape, case.chunks)
        assert os.path.exists(os.path.join(path, spec_key(case, idx[0]))), f"{case.id}: first chunk not at its spec key"
        assert not os.path.exists(os.path.join(path, spec_key(case, idx[-1]))), f"{case.id}: last chunk should be absent"
    return expected


NC = numcodecs
V2_CASES = [
    ZCase("v2-zstd-uint8-C-dot", 2, "uint8", compressor=NC.Zstd(level=3)),
    ZCase("v2-zstd-checksum-int16-F-slash-fill7-missing", 2, "int16", fill=7, compressor=NC.Zstd(level=1, checksum=True),
          order="F", separator="/", missing=True),
    ZCase("v2-gzip-int16-F-slash-fill7", 2, "int16", fill=7, compressor=NC.GZip(level=5), order="F", separator="/"),
    ZCase("v2-zlib-uint32-F-dot", 2, "uint32", compressor=NC.Zlib(level=1), order="F"),
    ZCase("v2-lz4-int64-C-slash-missing", 2, "int64", fill=7, compressor=NC.LZ4(), separator="/", missing=True),
    ZCase("v2-bz2-uint64-F-dot", 2, "uint64", compressor=NC.BZ2(level=9), order="F"),
    ZCase("v2-lzma-float32-C-slash-nan-missing", 2, "float32", fill=np.nan, compressor=NC.LZMA(), separator="/", missing=True),
    ZCase("v2-none-float64-F-dot-neginf-missing", 2, "float64", fill=-np.inf, order="F", missing=True),
    ZCase("v2-none-bool-C-slash", 2, "bool", fill=False, separator="/"),
    ZCase("v2-blosc-bool-F-missing", 2, "bool", fill=True, compressor=NC.Blosc("zstd", shuffle=-1), order="F", missing=True),
    ZCase("v2-zstd-complex64-F", 2, "complex64", fill=0, compressor=NC.Zstd(), order="F"),
    ZCase("v2-none-bigendian-uint16", 2, ">u2", fill=3, missing=True),
    ZCase("v2-gzip-bigendian-float64-F", 2, ">f8", fill=np.nan, compressor=NC.GZip(), order="F", missing=True),
    ZCase("v2-none-fill-null", 2, "uint16", fill=None, missing=True),
    ZCase("v2-none-float32-negzero-fill-missing", 2, "float32", fill=-0.0, missing=True),
    ZCase("v2-blosc-uint16-4ch-F-slash-missing", 2, "uint16", S4, C4, fill=7, compressor=NC.Blosc("lz4", shuffle=2),
          order="F", separator="/", missing=True),
    ZCase("v2-gzip-float32-2ch-C-dot", 2, "float32", (2, *S3), (2, *C3), fill=np.nan, compressor=NC.GZip()),
    ZCase("v2-zstd-uint8-1ch-4d", 2, "uint8", (1, *S3), (1, *C3), compressor=NC.Zstd()),
]

V3_CASES = [
    ZCase("v3-bytes-le-uint8-slash", 3, "uint8", separator="/"),
    ZCase("v3-bytes-be-int16-dot", 3, "int16", endian="big", separator="."),
    ZCase("v3-transpose210-be-uint32-v2dot", 3, "uint32", endian="big", transposes=((2, 1, 0),), key_encoding="v2"),
    ZCase("v3-transpose102-gzip-int64-v2slash-missing", 3, "int64", fill=7, transposes=((1, 0, 2),),
          compressor=[GzipCodec(level=6)], key_encoding="v2", separator="/", missing=True),
    ZCase("v3-two-transposes-zstd-uint64", 3, "uint64", transposes=((1, 0, 2), (0, 2, 1)), compressor=[ZstdCodec(level=3)],
          separator="/"),
    ZCase("v3-zstd-checksum-float32-nan-missing", 3, "float32", fill=np.nan, compressor=[ZstdCodec(level=1, checksum=True)],
          separator="/", missing=True),
    ZCase("v3-crc32c-float64-neginf-missing", 3, "float64", fill=-np.inf, compressor=[Crc32cCodec()], separator=".", missing=True),
    ZCase("v3-gzip-crc32c-be-uint16", 3, "uint16", endian="big", compressor=[GzipCodec(level=1), Crc32cCodec()], separator="/"),
    ZCase("v3-blosc-bool-missing", 3, "bool", fill=True, compressor=[BloscCodec(cname="lz4", shuffle="bitshuffle")],
          separator="/", missing=True),
    ZCase("v3-complex64-fill-missing", 3, "complex64", fill=1 + 2j, compressor=[ZstdCodec()], separator="/", missing=True),
    ZCase("v3-float32-hex-nan-payload-fill-missing", 3, "float32", fill=0, raw_fill="0x7fc00001", separator="/", missing=True),
    ZCase("v3-float32-negzero-fill-missing", 3, "float32", fill=-0.0, separator="/", missing=True),
    ZCase("v3-blosc-transpose-4ch-missing", 3, "int16", S4, C4, fill=-3, transposes=((3, 2, 1, 0),),
          compressor=[BloscCodec(cname="zstd", shuffle="shuffle")], separator="/", missing=True),
    ZCase("v3-transpose0312-be-crc32c-2ch-v2", 3, "float64", (2, *S3), (2, *C3), fill=np.nan, endian="big",
          transposes=((0, 3, 1, 2),), compressor=[Crc32cCodec()], key_encoding="v2", separator="."),
    ZCase("v3-gzip-uint32-1ch-4d", 3, "uint32", (1, *S3), (1, *C3), compressor=[GzipCodec()], separator="/"),
]


@pytest.mark.parametrize("case", V2_CASES + V3_CASES, ids=str)
def test_zarr_python_written_read_by_volbridge(tmp_path, case):
    path = str(tmp_path / "a.zarr")
    expected = zp_write(path, case)
    vb_read_both(path, expected, case.id)
    # The same through the format prefixes.
    want = native(expected)
    if want.ndim == 4 and want.shape[0] == 1:
        want = want[0]
    for prefix in ("zarr://", f"zarr{case.fmt}://"):
        assert_same(vb.array(prefix + path)[...], want, f"{case.id} via {prefix}")
    h = vb.array(path)
    nc = case.shape[0] if len(case.shape) == 4 else 1
    assert h.num_channels == nc
    assert h.chunk_shape == tuple(case.chunks[-3:])
    fill = case.raw_fill if case.raw_fill is not None else case.fill
    assert_same(np.asarray(h.fill_value, h.dtype), native(fill_scalar(fill, case.dtype)), f"{case.id}: fill_value")


BLOSC_CNAMES = ["lz4", "lz4hc", "blosclz", "zstd", "zlib"]
BLOSC_SHUFFLES = [0, 1, 2, -1]  # noshuffle, shuffle, bitshuffle, autoshuffle
BLOSC_DTYPES = ["uint8", "int16", "float32", "uint64", "float64"]


@pytest.mark.parametrize("shuffle", BLOSC_SHUFFLES)
@pytest.mark.parametrize("cname", BLOSC_CNAMES)
def test_zarr_python_v2_blosc_read_by_volbridge(tmp_path, cname, shuffle):
    i = BLOSC_CNAMES.index(cname) * len(BLOSC_SHUFFLES) + BLOSC_SHUFFLES.index(shuffle)
    dtype = BLOSC_DTYPES[i % len(BLOSC_DTYPES)]
    case = ZCase(f"v2-blosc-{cname}-{shuffle}-{dtype}", 2, dtype, compressor=NC.Blosc(cname, clevel=5, shuffle=shuffle),
                 order="CF"[i % 2], separator="./"[i // 2 % 2], fill=7 if dtype != "float32" else np.nan, missing=i % 3 == 0)
    path = str(tmp_path / "a.zarr")
    vb_read_both(path, zp_write(path, case, seed=i), case.id)


@pytest.mark.parametrize("shuffle", ["noshuffle", "shuffle", "bitshuffle"])
@pytest.mark.parametrize("cname", BLOSC_CNAMES)
def test_zarr_python_v3_blosc_read_by_volbridge(tmp_path, cname, shuffle):
    i = BLOSC_CNAMES.index(cname) * 3 + ["noshuffle", "shuffle", "bitshuffle"].index(shuffle)
    dtype = BLOSC_DTYPES[i % len(BLOSC_DTYPES)]
    case = ZCase(f"v3-blosc-{cname}-{shuffle}-{dtype}", 3, dtype, compressor=[BloscCodec(cname=cname, clevel=5, shuffle=shuffle)],
                 separator="/."[i % 2], transposes=((2, 1, 0),) if i % 3 == 0 else (), missing=i % 2 == 0)
    path = str(tmp_path / "a.zarr")
    vb_read_both(path, zp_write(path, case, seed=i), case.id)


# -- 2. volbridge writes; zarr-python and tensorstore read ------------------------------------------

#: Unaligned partial writes in (z, y, x) for S3/C3: they overlap, cross chunk borders, reach the
#: edge chunks, include one whole aligned chunk and one voxel, and leave some chunks untouched.
WRITES = [
    ((1, 2, 1), (7, 12, 9)),
    ((5, 9, 6), (11, 13, 10)),
    ((4, 5, 3), (8, 10, 6)),  # exactly chunk (1, 1, 1)
    ((0, 0, 0), (1, 1, 1)),
    ((10, 0, 9), (11, 13, 10)),  # the far x/z edge, a 1-voxel-thick slab
]


@dataclass(frozen=True)
class VCase:
    id: str
    fmt: int
    dtype: str
    compression: str | None
    nc: int = 1
    axis_order: str = "zyx"
    #: after the full-channel writes, write channels [1, 2) of this box alone
    channel_write: tuple | None = None
    #: create with checksum=True: a crc32c codec after the compressor
    checksum: bool = False

    def __str__(self) -> str:
        return self.id


VB_CASES = [
    VCase("v2-zstd-uint16", 2, "uint16", "zstd"),
    VCase("v2-gzip-float32", 2, "float32", "gzip"),
    VCase("v2-blosc-int64-xyz", 2, "int64", "blosc", axis_order="xyz"),
    VCase("v2-raw-uint8-3ch", 2, "uint8", None, nc=3, channel_write=((2, 3, 2), (9, 11, 8))),
    VCase("v2-zstd-float64-2ch-xyz", 2, "float64", "zstd", nc=2, axis_order="xyz", channel_write=((0, 0, 0), (11, 13, 6))),
    VCase("v2-raw-bool", 2, "bool", None),
    VCase("v2-gzip-uint64", 2, "uint64", "gzip"),
    VCase("v2-zstd-complex64", 2, "complex64", "zstd"),
    VCase("v3-zstd-int16", 3, "int16", "zstd"),
    VCase("v3-gzip-uint32-xyz", 3, "uint32", "gzip", axis_order="xyz"),
    VCase("v3-blosc-float32-2ch", 3, "float32", "blosc", nc=2, channel_write=((3, 4, 2), (10, 12, 7))),
    VCase("v3-raw-float64", 3, "float64", None),
    VCase("v3-raw-int8-4ch-xyz", 3, "int8", None, nc=4, axis_order="xyz", channel_write=((4, 5, 3), (8, 10, 6))),
    VCase("v3-blosc-uint64", 3, "uint64", "blosc"),
    VCase("v3-zstd-bool", 3, "bool", "zstd"),
    VCase("v3-raw-complex64", 3, "complex64", None),
    VCase("v3-zstd-uint16-crc32c", 3, "uint16", "zstd", checksum=True),
    VCase("v3-raw-float32-2ch-crc32c-xyz", 3, "float32", None, nc=2, axis_order="xyz", checksum=True,
          channel_write=((1, 2, 0), (9, 12, 5))),
]


def vb_set(h, case: VCase, lo, hi, value_czyx: np.ndarray, channels: slice = slice(None)) -> None:
    """Write a (c, z, y, x) block at zyx box [lo, hi) through a handle of the case's axis order."""
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    v = value_czyx if case.nc > 1 else value_czyx[0]
    if case.axis_order == "zyx":
        h[((channels,) if case.nc > 1 else ()) + sl] = v
    else:
        h[sl[::-1] + ((channels,) if case.nc > 1 else ())] = v.T


def chunk_files(path: str) -> set[str]:
    out = set()
    for root, _dirs, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
            if rel not in (".zarray", "zarr.json", ".zattrs") and not rel.startswith(".volbridge-locks/"):
                out.add(rel)
    return out


def touched_chunks(boxes, chunks_zyx) -> set[tuple[int, ...]]:
    out = set()
    for lo, hi in boxes:
        ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, chunks_zyx)]
        out.update(product(*ranges))
    return out


def vb_write_volume(path: str, case: VCase, seed: int = 5) -> np.ndarray:
    """Create with volbridge and apply WRITES; returns the (c, z, y, x) model of the volume."""
    o = (lambda t: tuple(t)) if case.axis_order == "zyx" else (lambda t: tuple(t)[::-1])
    h = vb.create(f"zarr{case.fmt}://{path}", shape=o(S3), chunk_shape=o(C3), dtype=case.dtype,
                  compression=case.compression, num_channels=case.nc, axis_order=case.axis_order,
                  checksum=case.checksum)
    dt = np.dtype(case.dtype)
    model = np.zeros((case.nc, *S3), dt)
    for i, (lo, hi) in enumerate(WRITES):
        block = make_data((case.nc, *(b - a for a, b in zip(lo, hi))), dt, seed + i)
        vb_set(h, case, lo, hi, block)
        model[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))] = block
    if case.channel_write is not None:
        lo, hi = case.channel_write
        block = make_data((1, *(b - a for a, b in zip(lo, hi))), dt, seed + 99)
        vb_set(h, case, lo, hi, block, slice(1, 2))
        model[(slice(1, 2),) + tuple(slice(a, b) for a, b in zip(lo, hi))] = block
    return model


def ts_read(path: str, fmt: int) -> np.ndarray:
    t = ts.open({"driver": "zarr" if fmt == 2 else "zarr3", "kvstore": {"driver": "file", "path": path}}, read=True).result()
    return np.asarray(t.read().result())


@pytest.mark.parametrize("case", VB_CASES, ids=str)
def test_volbridge_written_read_by_peers(tmp_path, case):
    path = str(tmp_path / "vb.zarr")
    model = vb_write_volume(path, case)
    want = model if case.nc > 1 else model[0]
    meta_name = ".zarray" if case.fmt == 2 else "zarr.json"
    meta = read_json(path, meta_name)
    assert meta["zarr_format"] == case.fmt
    assert meta["shape"] == list(want.shape)
    if case.fmt == 3:
        assert (meta["codecs"][-1] == {"name": "crc32c"}) == case.checksum

    z = zarr.open_array(path, mode="r")
    assert z.metadata.zarr_format == case.fmt
    assert z.shape == want.shape and tuple(z.chunks) == ((case.nc,) if case.nc > 1 else ()) + C3
    assert_same(native(z[...]), want, f"{case.id}: zarr-python reading volbridge's array")
    sl = (slice(None),) * (want.ndim - 3) + (slice(3, 9), slice(4, 11), slice(2, 8))
    assert_same(native(z[sl]), want[sl], f"{case.id}: zarr-python cutout")

    t = ts_read(path, case.fmt)
    assert_same(native(t), want, f"{case.id}: tensorstore reading volbridge's array")

    vb_read_both(path, want, f"{case.id}: volbridge reading its own array")

    # Exactly the chunks written exist, under the spec's keys; untouched ones are absent.
    boxes = list(WRITES) + ([case.channel_write] if case.channel_write else [])
    idx = touched_chunks(boxes, C3)
    lead = (0,) if case.nc > 1 else ()
    if case.fmt == 2:
        sep = meta.get("dimension_separator", ".")
        want_keys = {sep.join(str(i) for i in lead + c) for c in idx}
    else:
        enc = meta["chunk_key_encoding"]
        sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
        pre = ["c"] if enc["name"] == "default" else []
        want_keys = {sep.join(pre + [str(i) for i in lead + c]) for c in idx}
    got = chunk_files(path)
    assert got == want_keys, f"{case.id}: missing {sorted(want_keys - got)[:4]}, extra {sorted(got - want_keys)[:4]}"
    assert len(want_keys) < len(grid_indices(S3, C3)), "the case should leave some chunks absent"


@pytest.mark.parametrize("fmt", [2, 3])
def test_volbridge_raw_chunks_byte_identical_to_zarr_python(tmp_path, fmt):
    """Uncompressed, one valid byte string per chunk (edge chunks padded with the fill value)."""
    case = VCase(f"v{fmt}", fmt, "int16", None)
    vb_path, zp_path = str(tmp_path / "vb.zarr"), str(tmp_path / "zp.zarr")
    h = vb.create(f"zarr{fmt}://{vb_path}", shape=S3, chunk_shape=C3, dtype="int16", compression=None)
    data = make_data(S3, "int16", 8)
    h[...] = data
    os.makedirs(zp_path)
    meta = ".zarray" if fmt == 2 else "zarr.json"
    shutil.copy(os.path.join(vb_path, meta), os.path.join(zp_path, meta))
    zarr.open_array(zp_path, mode="r+")[...] = data
    names = chunk_files(vb_path)
    assert names == chunk_files(zp_path) and len(names) == len(grid_indices(S3, C3))
    for n in sorted(names):
        assert read_bytes(os.path.join(vb_path, n)) == read_bytes(os.path.join(zp_path, n)), (
            f"{case.id} {n}: volbridge's bytes differ from zarr-python's"
        )


# -- 2b. zarr-python writes, volbridge rewrites parts through the array's own codecs ------------------

#: (case, peers that read the result). tensorstore's zarr driver has no lz4 or lzma compressor.
UPDATE_CASES = [
    (ZCase("v2-lz4-F-int32", 2, "int32", compressor=NC.LZ4(), order="F", separator="/", fill=7), ("zp",)),
    (ZCase("v2-bz2-uint16", 2, "uint16", compressor=NC.BZ2(), missing=True), ("zp", "ts")),
    (ZCase("v2-lzma-float64", 2, "float64", compressor=NC.LZMA(), fill=np.nan, missing=True), ("zp",)),
    (ZCase("v2-zlib-F-bigendian", 2, ">i4", compressor=NC.Zlib(level=3), order="F", fill=-1), ("zp", "ts")),
    (ZCase("v2-blosc-bitshuffle-uint8-4ch", 2, "uint8", S4, C4, compressor=NC.Blosc("zstd", shuffle=2), separator="/",
           missing=True), ("zp", "ts")),
    (ZCase("v3-transpose-be-crc32c", 3, "uint64", endian="big", transposes=((2, 0, 1),),
           compressor=[Crc32cCodec()], separator=".", missing=True), ("zp", "ts")),
    (ZCase("v3-blosc-autotypesize-float32", 3, "float32", compressor=[BloscCodec(cname="lz4hc", shuffle="bitshuffle")],
           fill=np.nan, key_encoding="v2"), ("zp", "ts")),
    (ZCase("v2-float32-negzero-fill", 2, "float32", fill=-0.0, compressor=NC.Zstd(), missing=True), ("zp", "ts")),
    (ZCase("v3-float64-nan-payload-fill", 3, "float64", raw_fill="0x7ff8000000000123", separator="/", missing=True),
     ("zp", "ts")),
    (ZCase("v3-transpose-gzip-4ch", 3, "int16", S4, C4, transposes=((3, 1, 2, 0),), compressor=[GzipCodec(level=1)],
           separator="/", missing=True, fill=5), ("zp", "ts")),
]


@pytest.mark.parametrize("case,readers", UPDATE_CASES, ids=[c.id for c, _ in UPDATE_CASES])
def test_volbridge_updates_zarr_python_array(tmp_path, case, readers):
    path = str(tmp_path / "a.zarr")
    model = native(zp_write(path, case))
    h = vb.array(path, mode="r+")
    nc = case.shape[0] if len(case.shape) == 4 else 1
    sp = case.shape[-3:]
    for i, (lo, hi) in enumerate([((1, 2, 1), (6, 6, 7)), ((sp[0] - 3, 0, 2), (sp[0], sp[1], sp[2] - 1)), ((0, 0, 0), (1, 1, 1))]):
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        block = make_data((nc, *(b - a for a, b in zip(lo, hi))), model.dtype, 40 + i)
        if nc > 1:
            h[(slice(None),) + sl] = block
            model[(slice(None),) + sl] = block
        else:
            h[sl] = block[0]
            model[sl] = block[0]
    if "zp" in readers:
        assert_same(native(zarr.open_array(path, mode="r")[...]), model, f"{case.id}: zarr-python after volbridge's update")
    if "ts" in readers:
        assert_same(native(ts_read(path, case.fmt)), model, f"{case.id}: tensorstore after volbridge's update")
    vb_read_both(path, model, f"{case.id}: volbridge after its update")


# -- 3. tensorstore writes, volbridge reads -----------------------------------------------------------


def _v3_meta(shape, chunks, dtype, codecs, fill, enc=("default", "/")):
    return {"shape": list(shape), "data_type": dtype, "fill_value": fill, "codecs": codecs,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": enc[0], "configuration": {"separator": enc[1]}}}


TS_CASES = [
    ("v2-blosc-zstd-bitshuffle-F-slash", "zarr", {"shape": list(S3), "chunks": list(C3), "dtype": "<i4", "fill_value": 5,
     "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}, "order": "F", "dimension_separator": "/"}),
    ("v2-zlib-uint16-C-dot", "zarr", {"shape": list(S3), "chunks": list(C3), "dtype": "<u2", "fill_value": 0,
     "compressor": {"id": "zlib", "level": 2}, "order": "C"}),
    ("v2-raw-float32-nan", "zarr", {"shape": list(S3), "chunks": list(C3), "dtype": "<f4", "fill_value": "NaN",
     "compressor": None, "order": "C"}),
    ("v2-bz2-bigendian-int64-4ch", "zarr", {"shape": list(S4), "chunks": list(C4), "dtype": ">i8", "fill_value": -2,
     "compressor": {"id": "bz2", "level": 5}, "order": "F", "dimension_separator": "/"}),
    ("v2-gzip-float64-neginf", "zarr", {"shape": list(S3), "chunks": list(C3), "dtype": "<f8", "fill_value": "-Infinity",
     "compressor": {"id": "gzip", "level": 1}, "order": "C"}),
    ("v3-bytes-uint8", "zarr3", _v3_meta(S3, C3, "uint8", [{"name": "bytes"}], 3)),
    ("v3-transpose-be-gzip-crc32c-4ch-v2keys", "zarr3", _v3_meta(S4, C4, "uint16", [
        {"name": "transpose", "configuration": {"order": [3, 1, 2, 0]}},
        {"name": "bytes", "configuration": {"endian": "big"}},
        {"name": "gzip", "configuration": {"level": 4}}, {"name": "crc32c"}], 9, ("v2", "/"))),
    ("v3-blosc-float32-dot", "zarr3", _v3_meta(S3, C3, "float32", [
        {"name": "bytes", "configuration": {"endian": "little"}},
        {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": 4}}], "NaN",
        ("default", "."))),
    ("v3-zstd-int64-transpose-F", "zarr3", _v3_meta(S3, C3, "int64", [
        {"name": "transpose", "configuration": {"order": [2, 1, 0]}},
        {"name": "bytes", "configuration": {"endian": "little"}},
        {"name": "zstd", "configuration": {"level": 5, "checksum": True}}], -7)),
    ("v3-bool-crc32c", "zarr3", _v3_meta(S3, C3, "bool", [{"name": "bytes"}, {"name": "crc32c"}], True)),
]


@pytest.mark.parametrize("name,driver,metadata", TS_CASES, ids=[c[0] for c in TS_CASES])
def test_tensorstore_written_read_by_volbridge(tmp_path, name, driver, metadata):
    path = str(tmp_path / "ts.zarr")
    t = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": path}, "metadata": metadata}, create=True).result()
    shape = tuple(metadata["shape"])
    dtype = t.dtype.numpy_dtype
    data = make_data(shape, dtype, 17)
    # Leave chunks absent: write the first chunk rows in z only, and a partial edge chunk.
    cz = (metadata.get("chunks") or metadata["chunk_grid"]["configuration"]["chunk_shape"])[-3]
    lead = (slice(None),) * (len(shape) - 3)
    region = lead + (slice(0, cz + 1), slice(1, None), slice(None))
    t[region].write(data[region]).result()
    chunks = metadata.get("chunks") or metadata["chunk_grid"]["configuration"]["chunk_shape"]
    assert len(chunk_files(path)) < len(grid_indices(shape, chunks)), f"{name}: some chunks should be absent"
    full = np.asarray(t.read().result())
    expected = np.empty(shape, dtype)
    expected[...] = fill_scalar(metadata["fill_value"], dtype)  # numpy parses "NaN", "-Infinity"
    expected[region] = data[region]
    assert_same(full, expected, f"{name}: tensorstore reading its own array")
    vb_read_both(path, expected, f"{name}: volbridge reading tensorstore's array")


# -- 4. bad input -------------------------------------------------------------------------------------


def good_array(tmp_path, fmt: int, **kw) -> tuple[str, dict]:
    """A small zarr-python array with data in every chunk; returns (path, metadata doc)."""
    path = str(tmp_path / f"bad{fmt}.zarr")
    args = dict(shape=(4, 6, 8), chunks=(2, 3, 4), dtype="uint16", zarr_format=fmt, fill_value=0)
    args.update(kw)
    a = zarr.create_array(path, **args)
    a[...] = (np.arange(int(np.prod(args["shape"]))) % 1000 + 1).astype(args["dtype"]).reshape(args["shape"])
    name = ".zarray" if fmt == 2 else "zarr.json"
    return path, read_json(path, name)


def put_meta(path: str, fmt: int, doc) -> None:
    """Replace the array's metadata file with ``doc`` (a str is written as is, anything else as JSON)."""
    name = ".zarray" if fmt == 2 else "zarr.json"
    write_bytes(os.path.join(path, name), (doc if isinstance(doc, str) else json.dumps(doc)).encode())


V2_BAD = [
    ("not-json", lambda m: "{zarr_format: 2,", MetadataError, "not valid JSON"),
    ("not-object", lambda m: [1, 2], MetadataError, "JSON object"),
    ("zarr-format-3", lambda m: {**m, "zarr_format": 3}, MetadataError, "zarr_format must be 2"),
    ("zarr-format-missing", lambda m: {k: v for k, v in m.items() if k != "zarr_format"}, MetadataError, "zarr_format"),
    ("chunks-rank", lambda m: {**m, "chunks": [2, 3]}, MetadataError, r"chunks \[2, 3\] do not fit shape \[4, 6, 8\]"),
    ("chunks-zero", lambda m: {**m, "chunks": [2, 0, 4]}, MetadataError, "chunks"),
    ("shape-negative", lambda m: {**m, "shape": [4, -6, 8]}, MetadataError, "'shape'"),
    ("shape-missing", lambda m: {k: v for k, v in m.items() if k != "shape"}, MetadataError, "'shape'"),
    ("dtype-unknown", lambda m: {**m, "dtype": "<q9"}, MetadataError, "<q9"),
    ("dtype-object", lambda m: {**m, "dtype": "|O"}, UnsupportedError, r"\|O"),
    ("dtype-structured", lambda m: {**m, "dtype": [["a", "<u2"]]}, UnsupportedError, "structured"),
    ("order-bad", lambda m: {**m, "order": "K"}, MetadataError, "order"),
    ("separator-bad", lambda m: {**m, "dimension_separator": "-"}, MetadataError, "dimension_separator"),
    ("compressor-unknown", lambda m: {**m, "compressor": {"id": "snappy"}}, UnsupportedError, "'snappy'"),
    ("filters", lambda m: {**m, "filters": [{"id": "delta", "dtype": "<u2"}]}, UnsupportedError, r"filters.*delta"),
    ("fill-bad", lambda m: {**m, "fill_value": "NaN"}, MetadataError, "fill_value"),
    ("2-d", lambda m: {**m, "shape": [6, 8], "chunks": [3, 4]}, UnsupportedError, "2 dimensions"),
    ("5-d", lambda m: {**m, "shape": [1, 1, 4, 6, 8], "chunks": [1, 1, 2, 3, 4]}, UnsupportedError, "5 dimensions"),
    # (review) these were an AttributeError, or read as another value than the metadata says
    ("compressor-string", lambda m: {**m, "compressor": "zstd"}, MetadataError, r"\.zarray: .*'compressor' must be a JSON object"),
    ("compressor-level-string", lambda m: {**m, "compressor": {"id": "zstd", "level": "x"}}, MetadataError, "'level' must be an integer"),
    ("fill-fraction", lambda m: {**m, "fill_value": 1.5}, MetadataError, "fill_value 1.5 is not a value of uint16"),
    ("fill-bool", lambda m: {**m, "fill_value": True}, MetadataError, "fill_value True is not a value of uint16"),
]


@pytest.mark.parametrize("mutate,error,message", [c[1:] for c in V2_BAD], ids=[c[0] for c in V2_BAD])
def test_malformed_zarray(tmp_path, mutate, error, message):
    path, meta = good_array(tmp_path, 2)
    put_meta(path, 2, mutate(meta))
    for url in (path, "zarr://" + path, "zarr2://" + path):
        with pytest.raises(error, match=message):
            vb.array(url)[...]


def _codecs(m, codecs):
    return {**m, "codecs": codecs}


V3_BAD = [
    ("not-json", lambda m: "{\"zarr_format\": 3,", MetadataError, "not valid JSON"),
    ("zarr-format-2", lambda m: {**m, "zarr_format": 2}, MetadataError, "zarr_format 3"),
    ("node-type-missing", lambda m: {k: v for k, v in m.items() if k != "node_type"}, MetadataError, "node_type"),
    ("chunks-rank", lambda m: {**m, "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3]}}},
     MetadataError, r"chunk_shape \[2, 3\] does not fit shape \[4, 6, 8\]"),
    ("chunks-zero", lambda m: {**m, "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 0, 4]}}},
     MetadataError, "chunk_shape"),
    ("grid-unknown", lambda m: {**m, "chunk_grid": {"name": "rectilinear", "configuration": {}}}, UnsupportedError, "rectilinear"),
    ("dtype-unknown", lambda m: {**m, "data_type": "float8_e4m3"}, UnsupportedError, "float8_e4m3"),
    ("fill-missing", lambda m: {k: v for k, v in m.items() if k != "fill_value"}, MetadataError, "fill_value"),
    ("fill-bad", lambda m: {**m, "fill_value": "Infinity"}, MetadataError, "fill_value"),
    ("codecs-empty", lambda m: _codecs(m, []), MetadataError, "codecs"),
    ("codecs-missing", lambda m: {k: v for k, v in m.items() if k != "codecs"}, MetadataError, "codecs"),
    ("codec-unknown", lambda m: _codecs(m, [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "bitround"}]),
     UnsupportedError, "'bitround'"),
    ("no-array-to-bytes", lambda m: _codecs(m, [{"name": "gzip", "configuration": {"level": 1}}]), MetadataError, "bytes"),
    ("transpose-bad", lambda m: _codecs(m, [{"name": "transpose", "configuration": {"order": [0, 0, 1]}}, {"name": "bytes"}]),
     MetadataError, "transpose"),
    # an array->array codec volbridge lacks is valid metadata it cannot read, not misplaced codecs
    ("array-codec-unknown", lambda m: _codecs(m, [{"name": "numcodecs.delta", "configuration": {"dtype": "<u2"}},
                                                  {"name": "bytes", "configuration": {"endian": "little"}}]),
     UnsupportedError, "codec 'numcodecs.delta' is not supported"),
    ("bytes-codec-first", lambda m: _codecs(m, [{"name": "gzip", "configuration": {"level": 1}},
                                                {"name": "bytes", "configuration": {"endian": "little"}}]),
     MetadataError, "comes before the array->bytes codec"),
    ("channels-last", lambda m: {**m, "shape": [4, 6, 8, 2], "chunk_grid": {"name": "regular", "configuration": {
        "chunk_shape": [2, 3, 4, 2]}}, "dimension_names": ["z", "y", "x", "c"]},
     UnsupportedError, r"dimension_names \['z', 'y', 'x', 'c'\]"),
    ("sharding", lambda m: _codecs(m, [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [1, 3, 2], "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}},
        {"name": "crc32c"}]),  # a bytes->bytes codec after the shard: not something any writer makes
     UnsupportedError, "sharding_indexed must be the only outer codec"),
    ("key-encoding-unknown", lambda m: {**m, "chunk_key_encoding": {"name": "morton"}}, UnsupportedError, "morton"),
    ("storage-transformer", lambda m: {**m, "storage_transformers": [{"name": "offset"}]}, UnsupportedError, "storage transformer"),
    ("must-understand-extension", lambda m: {**m, "spatial_index": {"name": "rtree", "must_understand": True}},
     UnsupportedError, "spatial_index"),
    # (review) these were an AttributeError, or read as another value than the metadata says
    ("grid-string", lambda m: {**m, "chunk_grid": "regular"}, MetadataError, r"zarr\.json: 'chunk_grid' must be a JSON object"),
    ("key-encoding-string", lambda m: {**m, "chunk_key_encoding": "default"}, MetadataError, "'chunk_key_encoding' must be a JSON object"),
    ("codec-config-string", lambda m: _codecs(m, [{"name": "bytes", "configuration": "little"}]), MetadataError,
     r"zarr\.json: the configuration of zarr v3 codec 'bytes' must be a JSON object"),
    ("endian-middle", lambda m: _codecs(m, [{"name": "bytes", "configuration": {"endian": "middle"}}]), MetadataError,
     "endian must be 'little' or 'big'"),
    ("fill-bool", lambda m: {**m, "fill_value": True}, MetadataError, "fill_value True is not a value of uint16"),
]


@pytest.mark.parametrize("mutate,error,message", [c[1:] for c in V3_BAD], ids=[c[0] for c in V3_BAD])
def test_malformed_zarr_json(tmp_path, mutate, error, message):
    path, meta = good_array(tmp_path, 3)
    put_meta(path, 3, mutate(meta))
    for url in (path, "zarr://" + path, "zarr3://" + path):
        with pytest.raises(error, match=message):
            vb.array(url)[...]


@pytest.mark.parametrize("fmt,filters", [(1, None), (2, None), (3, [{"id": 33, "preset": 1}])],
                         ids=["xz", "lzma-alone", "raw-filters"])
def test_v2_lzma_containers_both_ways(tmp_path, fmt, filters):
    """numcodecs' lzma writes the container its ``format`` says; volbridge reads and writes the same."""
    import lzma

    path = str(tmp_path / "a.zarr")
    os.makedirs(path)
    comp = {"id": "lzma", "format": fmt, "check": -1, "preset": None if filters else 1, "filters": filters}
    with open(os.path.join(path, ".zarray"), "w") as f:
        json.dump({"zarr_format": 2, "shape": [4, 6, 8], "chunks": [2, 3, 4], "dtype": "<u2", "compressor": comp,
                   "fill_value": 0, "order": "C", "filters": None}, f)
    data = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    zarr.open_array(path, mode="r+")[...] = data
    assert_same(vb.array(path)[...], data, f"lzma format {fmt} written by zarr-python")
    vb.array(path, mode="r+")[1:3, 2:5, 3:7] = 7
    data[1:3, 2:5, 3:7] = 7
    assert_same(zarr.open_array(path, mode="r")[...], data, f"lzma format {fmt} written by volbridge")
    with open(os.path.join(path, "1.0.0"), "rb") as f:
        chunk = f.read()
    assert lzma.decompress(chunk, format=fmt, filters=filters if fmt == 3 else None)  # the container it says


def test_unknown_extension_that_need_not_be_understood_is_ignored(tmp_path):
    path, meta = good_array(tmp_path, 3)
    put_meta(path, 3, {**meta, "spatial_index": {"name": "rtree", "must_understand": False}})
    assert_same(vb.array(path)[...], zarr.open_array(path, mode="r")[...], "unknown must_understand=false member")


def test_sharded_array_written_by_zarr_python_reads(tmp_path):
    """Sharding in depth (index placement, index codecs, writes, peers) is in test_sharding.py."""
    path = str(tmp_path / "sh.zarr")
    a = zarr.create_array(path, shape=(4, 6, 8), chunks=(2, 3, 4), shards=(4, 6, 8), dtype="uint8", fill_value=0)
    a[...] = np.arange(4 * 6 * 8, dtype=np.uint8).reshape(4, 6, 8)
    assert_same(vb.array(path)[...], a[...], "sharded zarr v3")


@pytest.mark.parametrize("fmt,chunk_c,shard_c", [(2, 1, None), (3, 1, None), (3, 2, None), (3, 2, 4), (3, 1, 5)])
def test_channel_axis_chunked_smaller_than_channels(tmp_path, fmt, chunk_c, shard_c):
    """OME-Zarr's usual (1, z, y, x) chunks: each channel chunk is read and written on its own;
    unaligned writes of some channels leave the others' chunks as they were."""
    path = str(tmp_path / "c.zarr")
    shards = None if shard_c is None else (shard_c, 4, 6, 8)
    z = zarr.create_array(path, shape=(5, 7, 9, 11), chunks=(chunk_c, 2, 3, 4), shards=shards, dtype="int16",
                          zarr_format=fmt, fill_value=-3)
    a = np.random.default_rng(10).integers(-999, 999, z.shape, dtype=np.int16)
    z[...] = a
    v = vb.array(path, mode="r+")
    assert_same(v[...], a, "all channels")
    assert_same(v[1:4, 2:6, 1:8, 3:10], a[1:4, 2:6, 1:8, 3:10], "a box of some channels")
    assert_same(vb.array(path, axis_order="xyz")[3:10, 1:8, 2:6, 4], a[4, 2:6, 1:8, 3:10].T, "one channel, xyz")
    v[3, 1:6, 2:7, 3:9] = 7
    a[3, 1:6, 2:7, 3:9] = 7
    v[1:5, 0:7, 0:9, 0:11] = a[1:5] + 1
    a[1:5] += 1
    assert_same(zarr.open_array(path, mode="r")[...], a, "zarr-python reads the writes")
    assert_same(vb.array(path)[...], a, "volbridge reads the writes")


# -- corrupt chunks -------------------------------------------------------------------------------------

CORRUPT_V2 = [None, NC.Blosc("lz4", shuffle=1), NC.Zstd(), NC.GZip(), NC.Zlib(), NC.LZ4(), NC.BZ2(), NC.LZMA()]
DAMAGES = {
    "garbage": lambda b: bytes(range(256))[: max(16, len(b) // 2)] * 3,
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
}


def _expect_corrupt(path: str, key: str, zyx_box: tuple[slice, ...], other_box: tuple[slice, ...], reference: np.ndarray):
    h = vb.array(path)
    for box in ((...,), zyx_box):
        with pytest.raises(ChunkDecodeError, match=re.escape(repr(key))):
            h[box]
    # Reads that do not touch the corrupt chunk still work.
    assert_same(h[other_box], reference[other_box], "a read away from the corrupt chunk")


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("compressor", CORRUPT_V2, ids=lambda c: "none" if c is None else c.codec_id)
def test_corrupt_v2_chunk_names_key(tmp_path, compressor, damage):
    path, _ = good_array(tmp_path, 2, compressors=compressor, chunk_key_encoding={"name": "v2", "separator": "."})
    reference = zarr.open_array(path, mode="r")[...]
    key = "1.0.1"
    f = os.path.join(path, key)
    raw = read_bytes(f)
    bad = DAMAGES[damage](raw)
    assert bad != raw
    write_bytes(f, bad)
    _expect_corrupt(path, key, (slice(2, 3), slice(0, 2), slice(5, 6)), (slice(0, 2), slice(None), slice(None)), reference)


V3_CORRUPT = [
    ("crc32c-bitflip", [Crc32cCodec()], lambda b: bytes([b[0] ^ 1]) + b[1:], "crc32c"),
    ("crc32c-bad-checksum", [Crc32cCodec()], lambda b: b[:-4] + bytes(4 * [0xAB]), "crc32c"),
    ("crc32c-truncated", [Crc32cCodec()], lambda b: b[:-7], ""),
    ("crc32c-tiny", [Crc32cCodec()], lambda b: b[:3], ""),
    ("gzip-crc32c-bitflip", [GzipCodec(), Crc32cCodec()], lambda b: b[:10] + bytes([b[10] ^ 0x40]) + b[11:], "crc32c"),
    ("blosc-garbage", [BloscCodec()], DAMAGES["garbage"], ""),
    ("blosc-truncated", [BloscCodec()], DAMAGES["truncated"], ""),
    ("blosc-empty", [BloscCodec()], DAMAGES["empty"], ""),
    ("zstd-truncated", [ZstdCodec()], DAMAGES["truncated"], ""),
    ("gzip-garbage", [GzipCodec()], DAMAGES["garbage"], ""),
    ("raw-truncated", None, DAMAGES["truncated"], "bytes"),
    ("raw-too-long", None, lambda b: b + b"\0\0", "bytes"),
]


@pytest.mark.parametrize("compressors,damage,message", [c[1:] for c in V3_CORRUPT], ids=[c[0] for c in V3_CORRUPT])
def test_corrupt_v3_chunk_names_key(tmp_path, compressors, damage, message):
    path, _ = good_array(tmp_path, 3, compressors=compressors)
    reference = zarr.open_array(path, mode="r")[...]
    key = "c/1/0/1"
    f = os.path.join(path, *key.split("/"))
    raw = read_bytes(f)
    write_bytes(f, damage(raw))
    _expect_corrupt(path, key, (slice(2, 4), slice(0, 3), slice(4, 8)), (slice(0, 2), slice(None), slice(None)), reference)
    if message:  # the codec that caught it
        with pytest.raises(ChunkDecodeError, match=message):
            vb.array(path)[2:4, 0:3, 4:8]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("fmt", [2, 3])
def test_short_blosc_chunk_is_not_decoded_from_stale_bytes(tmp_path, fmt, damage):
    """Blosc1 trusts the ``cbytes`` in its header, not the buffer's length. A short chunk must be
    refused from its header, or it decodes whatever lies beyond its end (here: the same chunk's
    intact bytes, left from an earlier read in the read buffer) and reads as valid data."""
    comp = {"compressors": [BloscCodec(cname="lz4", shuffle="shuffle")]} if fmt == 3 else {"compressors": NC.Blosc("lz4", shuffle=1)}
    path, _ = good_array(tmp_path, fmt, **comp)
    key = "1.0.1" if fmt == 2 else "c/1/0/1"
    one_chunk = (slice(2, 4), slice(0, 3), slice(4, 8))  # exactly that chunk: read on the calling thread
    h = vb.array(path)
    h[one_chunk]  # the intact bytes pass through the read buffer
    f = os.path.join(path, *key.split("/"))
    write_bytes(f, DAMAGES[damage](read_bytes(f)))
    with pytest.raises(ChunkDecodeError, match=re.escape(repr(key))):
        h[one_chunk]


@pytest.mark.parametrize("fmt", [2, 3])
def test_partial_write_onto_corrupt_chunk_changes_nothing(tmp_path, fmt):
    path, _ = good_array(tmp_path, fmt, compressors=[GzipCodec()] if fmt == 3 else NC.GZip())
    key = "1.0.1" if fmt == 2 else "c/1/0/1"
    f = os.path.join(path, *key.split("/"))
    write_bytes(f, read_bytes(f)[:-9])
    before = snapshot(path)
    h = vb.array(path, mode="r+")
    with pytest.raises(ChunkDecodeError, match=re.escape(repr(key))):
        h[3, 1, 5] = np.uint16(9)
    assert snapshot(path) == before


# -- refused writes -----------------------------------------------------------------------------------


def snapshot(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if ".volbridge-locks" not in p:
                out[p] = read_bytes(p)
    return out


REFUSED = [
    ("dtype", (slice(0, 4), slice(0, 6), slice(0, 8)), np.ones((4, 6, 8), np.int32), DTypeError, "int32"),
    ("dtype-float-into-int", (slice(0, 2), slice(0, 3), slice(0, 4)), np.ones((2, 3, 4), np.float32), DTypeError, "float32"),
    ("scalar-not-representable", (slice(0, 2), slice(0, 3), slice(0, 4)), 70000, DTypeError, "not representable"),
    ("shape", (slice(0, 4), slice(0, 6), slice(0, 8)), np.ones((4, 6, 7), np.uint16), ShapeError, r"\(4, 6, 7\)"),
    ("beyond-far-edge", (slice(0, 4), slice(0, 6), slice(4, 12)), np.ones((4, 6, 8), np.uint16), BoundsError, "outside the bounds"),
    ("negative-start", (slice(-1, 3), slice(0, 6), slice(0, 8)), np.ones((4, 6, 8), np.uint16), BoundsError, "outside the bounds"),
    ("whole-plus-one", (slice(0, 5), slice(0, 6), slice(0, 8)), np.ones((5, 6, 8), np.uint16), BoundsError, "outside the bounds"),
]


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("index,value,error,message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_writes_write_nothing(tmp_path, fmt, index, value, error, message):
    path = str(tmp_path / "w.zarr")
    h = vb.create(f"zarr{fmt}://{path}", shape=(4, 6, 8), chunk_shape=(2, 3, 4), dtype="uint16", compression="zstd")
    h[1:3, 1:5, 2:7] = np.full((2, 4, 5), 5, np.uint16)  # some chunks exist, some do not
    before = snapshot(path)
    with pytest.raises(error, match=message):
        h[index] = value
    assert snapshot(path) == before
    # A reopened handle refuses the same way.
    with pytest.raises(error, match=message):
        vb.array(path, mode="r+")[index] = value
    assert snapshot(path) == before


@pytest.mark.parametrize("shard_shape", [None, (8, 10, 6)], ids=["chunks", "shards"])
def test_a_checksummed_array_is_read_by_peers_and_refuses_a_flipped_bit(tmp_path, shard_shape):
    """checksum=True puts zarr v3's crc32c codec after zstd (zstd frames are written without
    their own checksum, as the peers write them): a flipped bit then raises in every reader
    instead of decoding, maybe, to other voxels."""
    path = str(tmp_path / "c.zarr")
    data = make_data((16, 20, 12), np.dtype("uint16"), 7)
    h = vb.create(f"zarr3://{path}", shape=data.shape, chunk_shape=(4, 5, 3), dtype="uint16", compression="zstd",
                  checksum=True, shard_shape=shard_shape)
    h[...] = data
    h[1:6, 2:9, 0:5] = data[1:6, 2:9, 0:5] + 1  # a read-modify-write keeps the checksum right
    data[1:6, 2:9, 0:5] += 1
    assert_same(native(zarr.open_array(path, mode="r")[...]), data, "zarr-python reading a checksummed array")
    assert_same(native(ts_read(path, 3)), data, "tensorstore reading a checksummed array")
    vb_read_both(path, data, "volbridge reading its checksummed array")

    stored = Path(path) / sorted(chunk_files(path))[0]
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 3] ^= 0x10  # inside a chunk's zstd frame (a shard's index is at its end)
    stored.write_bytes(bytes(damaged))
    with pytest.raises(ChunkDecodeError, match="crc32c mismatch"):
        vb.array(f"zarr3://{path}")[...]
    with pytest.raises(Exception):
        zarr.open_array(path, mode="r")[...]


@pytest.mark.parametrize("url", ["zarr2://{p}", "precomputed://{p}", "n5://{p}", "ome-zarr://{p}", "{p}.h5"])
def test_checksum_is_refused_where_the_format_has_no_place_for_it(tmp_path, url):
    kw = {"ome_version": "0.4"} if url.startswith("ome") else {}
    with pytest.raises(UnsupportedError, match="checksum"):
        vb.create(url.format(p=tmp_path / "v"), shape=(4, 4, 4), dtype="uint8", checksum=True, **kw)
