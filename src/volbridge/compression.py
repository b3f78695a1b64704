"""Byte compression primitives shared by two layers.

Stores use them for *transport* compression (CloudFiles' ``<key>.gz`` files on disk, the
``Content-Encoding`` header on object stores and HTTP); codecs use them beneath chunk encodings.
Pure functions of bytes, no I/O, so both layers can import them. gzip decodes with libdeflate
(about 1.7x zlib, GIL released) and encodes as :func:`gzip_default` says; brotli uses imagecodecs; zstd uses
python-zstandard with reused contexts per thread (imagecodecs builds a context per call:
measured 35-45 % slower on 32 KiB chunks).
"""

from __future__ import annotations

import bz2
import ctypes
import glob
import lzma
import os
import sys
import threading
import zlib

import deflate
import imagecodecs
import zstandard

try:
    from isal import igzip_lib
except ImportError:  # ISA-L has wheels for the usual platforms; without it gzip encodes with libdeflate only
    igzip_lib = None

from .errors import ChunkDecodeError, UnsupportedError

#: Content-Encoding names (HTTP) and the file suffixes CloudFiles gives each, in lookup order.
SUFFIXES = {"gzip": ".gz", "br": ".br", "zstd": ".zstd", "xz": ".xz", "bz2": ".bz2"}
ALIASES = {"gz": "gzip", "brotli": "br", "zst": "zstd", "x-gzip": "gzip"}


def canonical(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in SUFFIXES:
        raise UnsupportedError(f"unknown compression {name!r}; expected one of {', '.join(SUFFIXES)}")
    return name


def compress(name: str, data: bytes, level: int | None = None) -> bytes:
    name = canonical(name)
    if name == "gzip":
        return gzip_default(data) if level is None else deflate.gzip_compress(data, level)
    if name == "zstd":
        return _zstd_compressor(3 if level is None else level).compress(data)
    if name == "br":
        return imagecodecs.brotli_encode(data, level=level)
    if name == "xz":
        return lzma.compress(data, preset=6 if level is None else level)
    return bz2.compress(data, 9 if level is None else level)


#: Where the fast encoder's stream is at least this fraction of the input, it is kept.
FAST_GZIP_KEEP = 0.75


def gzip_default(data) -> bytes:
    """``data`` as one gzip member, when no level is asked for (transport compression, shard
    chunks, codecs whose metadata names no level).

    ISA-L's level 2 encodes 4-8x faster than libdeflate's level 6. Where the data barely
    compresses (image chunks: noise is coded by Huffman alike whatever the level) its stream is
    within 1 % of level 6's, and it is kept. Where deflate's matches pay (labels, masks, smooth
    images, floats: ISA-L's stream 5-140 % larger on the demo volumes), it is thrown away and
    libdeflate's level 6 is written, at ~15 % more CPU than level 6 alone. Both write mtime 0 (no
    time in the header); ISA-L's bytes may still differ between CPU types (its code is chosen
    per CPU), which no reader minds.
    """
    if igzip_lib is not None:
        fast = igzip_lib.compress(data, 2, flag=igzip_lib.COMP_GZIP)
        if len(fast) >= FAST_GZIP_KEEP * memoryview(data).nbytes:
            return fast
    return deflate.gzip_compress(data, 6)


def gzip_fast(data) -> bytes:
    """``data`` as one gzip member for the wire (a relay's responses), where time counts more
    than size: ISA-L's level 1, ~5x libdeflate's level 1 on both image and label chunks (demo
    volumes: 317 against 55 MB/s, 1550 against 330), its stream 0.6 % larger on images and 10 %
    on labels; libdeflate's level 1 without ISA-L."""
    if igzip_lib is not None:
        return igzip_lib.compress(data, 1, flag=igzip_lib.COMP_GZIP)
    return bytes(deflate.gzip_compress(data, 1))


def decompress(name: str, data: bytes) -> bytes:
    """Decompressed ``data``; a corrupt stream raises ChunkDecodeError (the caller names the key)."""
    name = canonical(name)
    try:
        if name == "gzip":
            return _gzip_decode(data)
        if name == "zstd":
            return _zstd_decode(data)
        if name == "br":
            return imagecodecs.brotli_decode(data)
        if name == "xz":
            return lzma.decompress(data)
        return bz2.decompress(data)
    except Exception as e:
        raise ChunkDecodeError(f"corrupt {name} stream ({len(data)} bytes): {e}") from e




def decompress_many(name: str, datas: list) -> list[bytes]:
    """:func:`decompress` of each of ``datas``; a corrupt one raises ChunkDecodeError whose
    ``index`` says which. Small single-member gzip streams (a shard's minishard indexes, dozens
    per read) take a short path: ~2 us each rather than ~8 through :func:`decompress`."""
    out, gzip = [], canonical(name) == "gzip"
    for i, data in enumerate(datas):
        got = None
        if gzip and len(data) < _SMALL_GZIP:
            member = zlib.decompressobj(31)
            try:
                got = member.decompress(data)
            except zlib.error:
                pass  # the general path says what is wrong
            if not member.eof or member.unused_data:
                got = None  # cut, several members or padding: the general path
        if got is None:
            try:
                got = decompress(name, data)
            except ChunkDecodeError as e:
                e.index = i
                raise
        out.append(got)
    return out


_local = threading.local()


def native_library(paths: list[str | None], *symbols: str, mode: int = ctypes.DEFAULT_MODE) -> ctypes.CDLL | None:
    """The first of ``paths`` that loads (dlopen ``mode``) and exports every one of ``symbols``
    (None if none)."""
    for path in paths:
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path, mode=mode)  # CDLL calls release the GIL
            for name in symbols:
                getattr(lib, name)
        except (OSError, AttributeError):
            continue
        return lib
    return None


def files_next_to(module, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.path.dirname(module.__file__), pattern)))


LIBDEFLATE_GZIP = ("libdeflate_gzip_decompress_ex", "libdeflate_alloc_decompressor", "libdeflate_free_decompressor")


def libdeflate() -> ctypes.CDLL | None:
    """The libdeflate build the ``deflate`` package ships (so the same version as its binding)."""
    global _libdeflate
    if _libdeflate is None:
        lib = native_library(files_next_to(deflate, "_deflate*"), *LIBDEFLATE_GZIP)
        if lib is not None and sys.implementation.name == "cpython" and ctypes.sizeof(ctypes.c_size_t) == 8:
            size_p = ctypes.POINTER(ctypes.c_size_t)
            fn = lib.libdeflate_gzip_decompress_ex
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                                     ctypes.c_size_t, size_p, size_p]
            lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
            lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
        _libdeflate = lib or False
    return _libdeflate or None


_libdeflate = None
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype, _new_bytes.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]


class _Decompressor:
    """A libdeflate decompressor of one thread (they are not thread-safe), freed with it."""

    def __init__(self, lib):
        self.free, self.ptr = lib.libdeflate_free_decompressor, lib.libdeflate_alloc_decompressor()
        if not self.ptr:
            raise MemoryError("libdeflate could not allocate a decompressor")

    def __del__(self) -> None:
        self.free(self.ptr)


def _gzip_one_member(data: bytes) -> bytes | None:
    """``data`` decoded when it is exactly one gzip member (the usual case), else None.

    libdeflate's ``gzip_decompress_ex`` says how many input bytes the member took, so a stream
    of several members (bgzip), with trailing bytes or with padding is told apart exactly, even
    when its members are alike; the ``deflate`` binding does not say, and its result for the first
    member of such a stream looks whole. The output is a fresh bytes object of the trailer's size
    that libdeflate fills in place (no copy); it is seen by no one before it is full."""
    lib = libdeflate()
    size = int.from_bytes(data[-4:], "little")  # the member's size modulo 2^32
    if lib is None or len(data) < 18 or size < 2 or size > 1032 * len(data) or data[3] & 0x02:
        # (sizes 0 and 1 may be shared singletons; deflate expands 1032x at most; libdeflate does
        # not check a header CRC (FHCRC), which zlib does, so such streams take zlib's path)
        return None
    d = getattr(_local, "deflate", None)
    if d is None:
        d = _local.deflate = _Decompressor(lib)
    out, used, got = _new_bytes(None, size), ctypes.c_size_t(), ctypes.c_size_t()
    status = lib.libdeflate_gzip_decompress_ex(d.ptr, data, len(data), out, size, ctypes.byref(used), ctypes.byref(got))
    return out if status == 0 and used.value == len(data) and got.value == size else None


_SMALL_GZIP = 1024  # compressed bytes; about where the two cost the same (measured 148-5462 bytes)


def _gzip_decode(data) -> bytes:
    """Every member of a gzip stream: one member through libdeflate; anything else (several
    members, as bgzip writes; zero padding, which gzip and numcodecs allow; damage) through zlib,
    member by member, which rejects bytes that are not a member and says what is wrong."""
    data = data if isinstance(data, bytes) else bytes(data)
    # small streams (a shard's minishard indexes: ~100 bytes each, 8 per shard read) skip
    # libdeflate: its ctypes call costs 6.3 us where zlib's member loop takes 2.1 (measured)
    out = _gzip_one_member(data) if len(data) >= _SMALL_GZIP else None
    if out is not None:
        return out
    parts, rest = [], data
    while True:
        member = zlib.decompressobj(31)
        parts.append(member.decompress(rest))
        if not member.eof:
            raise ValueError("the stream ends inside a gzip member")
        rest = member.unused_data
        if not rest.strip(b"\0"):  # the end, or zero padding
            return b"".join(parts)


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` (contexts are not safe to share between threads;
    imagecodecs builds one per call: measured 35 % slower on 32 KiB chunks)."""
    per_level = _local.__dict__.setdefault("zstd_compressors", {})
    ctx = per_level.get(level)
    if ctx is None:
        ctx = per_level[level] = zstandard.ZstdCompressor(level=level)  # frames carry their size
    return ctx


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_decode(data) -> bytes:
    """Every frame of ``data``, as ZSTD_decompress reads them."""
    if bytes(data[:4]) == _ZSTD_MAGIC and 0 < zstandard.get_frame_parameters(data).content_size < 1 << 30:
        # The common case, one frame that gives its size: decoded in one shot with this thread's
        # context (one-shot calls keep no window buffer in it). It fails, rather than stopping
        # early, on a second frame or a cut one.
        ctx = getattr(_local, "zstd", None)
        if ctx is None:
            ctx = _local.zstd = zstandard.ZstdDecompressor()
        try:
            return ctx.decompress(data, allow_extra_data=False)
        except zstandard.ZstdError:
            pass
    # Several frames, skippable frames (pzstd writes them), frames without their size, damage:
    # stream frame by frame (imagecodecs returns a stream cut inside its second frame as if
    # whole). A fresh context, since streaming grows a context's window buffer to the frame's
    # window (up to GiBs), which a context kept per pool thread would hold for good.
    ctx = zstandard.ZstdDecompressor()
    parts = []
    while True:
        frame = ctx.decompressobj(write_size=1 << 20)
        parts.append(frame.decompress(data))
        if not frame.eof:
            raise ChunkDecodeError("truncated zstd stream (it ends inside a frame)")
        data = frame.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)
