"""Gather and compress many chunks into one buffer in one native call, with the GIL released.

The mirror of :mod:`.batch_decode` for writes. A sharded zarr array of 32^3 zstd chunks in
128^3 shards is written 64 chunks a shard. Chunk by chunk, each was copied out of the caller's
array into a staging buffer (one pass over the volume, ~13 ms per 16 MiB), compressed through
the Python binding into a fresh bytes object with ~10 us of Python around it, and the shard then
joined from those. Here one compiled loop (:mod:`.native`) copies each chunk out of the array
into a buffer of one chunk, which stays in the CPU's cache, and compresses it from there straight
after the chunk before it in one output buffer; the shard is then one join of views of it.

* ``zstd``: ``ZSTD_compressCCtx`` of the build python-zstandard ships (its cffi module exports
  the C API), so that a chunk's bytes are those the chunk-by-chunk path writes; else any
  libzstd the system has;
* ``gzip``: ``libdeflate_gzip_compress`` of the build the ``deflate`` package ships, at the
  codec's level (the chunk-by-chunk path's ``deflate.gzip_compress``).

Without the library or llvmlite the engine encodes chunk by chunk, as it does for every chunk
this loop does not encode (the library's error), which that path then encodes or names.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from .. import compression
from . import native, place
from .parallel import run_bounded

# A child forked while a thread loads a codec finds its entry False already: it encodes that
# codec chunk by chunk rather than wait forever.
_lock = native.LoadLock()
_local = threading.local()


@dataclass
class _Codec:
    fn: int  # address of the one-shot compression function
    new_context: object  # ctypes function: (level) -> context pointer
    free_context: object  # ctypes function: (pointer) -> None
    mode: int  # 0: zstd's calling convention, 1: libdeflate's
    bound: object  # (level, sizes) -> the most bytes each of ``sizes`` may compress to
    levels: tuple[int, int]  # the levels it compresses at as they are (not clamped)


_kernel = None  # the compiled loops once loaded, False when they cannot run here
_codecs: dict[str, _Codec | bool] = {}  # name -> loaded codec, or False when unavailable here


def _zstd_bound(_level: int, sizes: np.ndarray) -> np.ndarray:
    """ZSTD_COMPRESSBOUND, the bound libzstd's one-shot compression guarantees to fit."""
    small = np.where(sizes < 128 << 10, ((128 << 10) - sizes) >> 11, 0)
    return sizes + (sizes >> 8) + small


def _library(name: str) -> tuple[ctypes.CDLL, tuple[str, str, str], int] | None:
    """(library, (compress, create context, free context), mode) for codec ``name``."""
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_size_t) != 8:
        return None  # the loop passes every argument as a 64-bit integer
    if name == "zstd":
        import zstandard

        names = ("ZSTD_compressCCtx", "ZSTD_createCCtx", "ZSTD_freeCCtx")
        wanted = (*names, "ZSTD_minCLevel", "ZSTD_maxCLevel")
        lib = compression.native_library(compression.files_next_to(zstandard, "_cffi*"), *wanted)
        if lib is None:
            from ctypes.util import find_library

            lib = compression.native_library([find_library("zstd")], *wanted)
        return None if lib is None else (lib, names, 0)
    if name == "gzip":
        lib = compression.libdeflate()
        names = ("libdeflate_gzip_compress", "libdeflate_alloc_compressor", "libdeflate_free_compressor")
        if lib is None or not all(hasattr(lib, n) for n in (*names, "libdeflate_gzip_compress_bound")):
            return None
        return lib, names, 1
    return None


def load(name: str) -> bool:
    """Load the loop and codec ``name``'s compression library once per process; whether batched
    encoding of ``name`` runs here."""
    global _kernel
    with _lock:
        if name not in _codecs:
            _codecs[name] = False
            found = _library(name)
            if found is not None and _kernel is None:
                _kernel = native.loops() or False
            if found is not None and _kernel:
                lib, (compress, create, free), mode = found
                new_context, free_context = getattr(lib, create), getattr(lib, free)
                new_context.restype, new_context.argtypes = ctypes.c_void_p, ([] if mode == 0 else [ctypes.c_int])
                free_context.argtypes = [ctypes.c_void_p]
                bound = _zstd_bound if mode == 0 else _deflate_bound(lib)
                fn = ctypes.cast(getattr(lib, compress), ctypes.c_void_p).value
                _codecs[name] = _Codec(fn, new_context, free_context, mode, bound, _levels(lib, mode))
    return bool(_codecs[name])


def _levels(lib: ctypes.CDLL, mode: int) -> tuple[int, int]:
    """The levels ``lib`` compresses at as asked: libzstd clamps others to its range (which
    python-zstandard refuses above it), libdeflate allocates no compressor for them."""
    if mode == 1:
        return 0, 12
    low, high = lib.ZSTD_minCLevel, lib.ZSTD_maxCLevel
    low.restype = high.restype = ctypes.c_int
    return low(), high()


def _deflate_bound(lib: ctypes.CDLL):
    """libdeflate's bound (``libdeflate_gzip_compress_bound``: its formula changed between
    versions, so it is asked), per level and chunk size: a write has few distinct sizes."""
    ask = lib.libdeflate_gzip_compress_bound
    ask.restype, ask.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]
    known: dict[tuple[int, int], int] = {}

    def bound(level: int, sizes: np.ndarray) -> np.ndarray:
        distinct, which = np.unique(sizes, return_inverse=True)
        for n in distinct.tolist():
            if (level, n) not in known:
                known[level, n] = ask(_context("gzip", level).ptr, n)
        return np.array([known[level, n] for n in distinct.tolist()], np.int64)[which.reshape(-1)]

    return bound


class _Context:
    """A compression context of one thread (contexts are not thread-safe), freed with it."""

    def __init__(self, codec: _Codec, level: int):
        self.free = codec.free_context
        self.ptr = codec.new_context() if codec.mode == 0 else codec.new_context(level)
        if not self.ptr:
            raise MemoryError("the compression library could not allocate a context")

    def __del__(self) -> None:
        self.free(self.ptr)


def _context(name: str, level: int) -> _Context:
    """This thread's context for codec ``name`` (at ``level``: a libdeflate compressor has one)."""
    codec = _codecs[name]
    contexts = _local.__dict__.setdefault("contexts", {})
    key = (codec.fn, 0 if codec.mode == 0 else level)
    ctx = contexts.get(key)
    if ctx is None:
        ctx = contexts[key] = _Context(codec, level)
    return ctx


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's buffer of one gathered chunk (kept: one chunk, a few hundred KiB at most
    for the chunk sizes volumes use)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or len(buf) < nbytes:
        buf = np.empty(max(nbytes, 64 << 10), np.uint8)
        if nbytes <= place.KEEP_STAGING_BYTES:
            _local.scratch = buf
    return buf


def bounds(name: str, level: int, sizes: np.ndarray) -> np.ndarray:
    """The most bytes each chunk of ``sizes`` bytes may compress to; only after :func:`load`."""
    return _codecs[name].bound(level, np.asarray(sizes, np.int64))


def codec_of(layout) -> tuple[str, int] | None:
    """(codec, level) this module encodes ``layout``'s chunks by, where their stored bytes are
    their voxel bytes under one compression it runs (:attr:`ScaleLayout.stored_compression`)
    at a level the chunk-by-chunk path takes as it is; else None. Levels that path refuses
    (zstd's above its maximum, which libzstd would clamp; gzip's outside libdeflate's 0-12) are
    left to it, which names them. gzip without a level is
    :func:`volbridge.compression.gzip_default`'s choice between two encoders: not here."""
    name, level = layout.stored_compression, layout.stored_compression_level
    if name == "zstd" and level is None:
        level = 3  # volbridge.compression.compress's default
    if name not in ("zstd", "gzip") or not isinstance(level, int) or not load(name):
        return None
    low, high = _codecs[name].levels
    return (name, level) if low <= level <= high else None


def encode_gathered(name: str, level: int, data: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray, dst: np.ndarray,
                    parts: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Compress chunk k, the box of shape ``shapes[k]`` (x, y, z, c) at ``src_lo[k]`` of ``data``
    (x, y, z, c) as its voxel bytes (little-endian, Fortran order: what
    ``ScaleLayout.encode_bytes`` takes), into ``dst`` (1-D uint8, at least the sum of
    :func:`bounds` of the chunks' sizes). In ``parts`` native calls on as many loops, each into
    its own region of ``dst``. Returns (offsets, sizes, done): chunk k's stream is
    ``dst[offsets[k]:offsets[k] + sizes[k]]`` where ``done[k]``; the others were not encoded (the
    library failed) and are the caller's to encode on its checked path. None when ``data`` is
    not laid out for the loop (not Fortran-contiguous little-endian): the caller's path then.
    Only after :func:`load` returned True for ``name``."""
    n = len(shapes)
    nbytes = np.asarray(shapes, np.int64).prod(axis=1) * data.dtype.itemsize
    table = place.gather_table(data, np.zeros(n, np.int64), shapes, src_lo, int(nbytes.max(initial=0)))
    if table is None:
        return None
    room = bounds(name, level, nbytes)
    ends = np.cumsum(room)
    if n and ends[-1] > dst.size:
        raise ValueError(f"{name} batch encoding of {n} chunks needs {int(ends[-1])} bytes of room, given {dst.size}")
    native.Sources([data.reshape(-1, order="F").view(np.uint8)]).check_destination(dst, f"{name} batch encoding")
    codec = _codecs[name]
    offsets, sizes, done = ends - room, np.zeros(n, np.int64), np.zeros(n, bool)

    def part_task(span: tuple[int, int]) -> None:
        a, b = span
        scratch = _scratch(int(nbytes[a:b].max()))
        args = np.zeros(len(native.ENCODE_ALL_ARGS), np.int64)
        args[:] = (codec.mode, codec.fn, _context(name, level).ptr, level, table[a:].ctypes.data, 0,
                   nbytes[a:].ctypes.data, b - a, scratch.ctypes.data, dst.ctypes.data + int(offsets[a]),
                   int(ends[b - 1] - offsets[a]), sizes[a:].ctypes.data)
        got = _kernel.encode_all(args.ctypes.data)
        # this part's chunks back to back from its region's start
        sizes_here = sizes[a:a + got]
        offsets[a:a + got] = offsets[a] + np.cumsum(sizes_here) - sizes_here
        done[a:a + got] = True

    cuts = np.linspace(0, n, max(1, min(parts, n)) + 1).astype(np.int64)
    spans = [(int(a), int(b)) for a, b in zip(cuts, cuts[1:]) if b > a]
    if len(spans) <= 1:
        for span in spans:
            part_task(span)
    else:
        run_bounded(part_task, spans, 1, len(spans), local=False)
    return offsets, sizes, done
