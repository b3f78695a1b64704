"""Decompress many zstd chunks into one buffer in one native call, with the GIL released.

A sharded zarr array of 32^3 zstd chunks holds 64 chunks in each 128^3 shard. Decoded one by one
through python-zstandard, every chunk costs a fresh bytes object, a copy of it into the staging
buffer and ~10 µs of Python around the (GIL-free) decompression, so two threads decoded a
volume only ~1.3x as fast as one. Here one compiled loop (numba) calls libzstd's
``ZSTD_decompressDCtx`` for every chunk of a shard straight into its slot of the staging buffer,
holding no GIL for the whole shard.

libzstd is the build python-zstandard ships (its cffi module exports the C API; the same version
the chunk-by-chunk path runs), else the system's. Without either, or without numba, the engine
decodes chunk by chunk. Every chunk this loop cannot decode into exactly its slot is left to that
checked path, which decodes it or says what is wrong with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading

import numpy as np

from . import place

_lock = threading.Lock()
_loaded = None  # (compiled loop, address of ZSTD_decompressDCtx, library) once loaded; False: unavailable
_local = threading.local()


def _library() -> ctypes.CDLL | None:
    """A libzstd with the one-shot decompression API: python-zstandard's own build first (its
    cffi extension exports the C API), else the system's."""
    import zstandard

    here = os.path.dirname(zstandard.__file__)
    for path in [*sorted(glob.glob(os.path.join(here, "_cffi*"))), ctypes.util.find_library("zstd")]:
        if not path:
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.ZSTD_createDCtx.restype = ctypes.c_void_p
            lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
            lib.ZSTD_decompressDCtx  # noqa: B018 - raises AttributeError when not exported
        except (OSError, AttributeError):
            continue
        return lib
    return None


def _compile(numba, cache: bool):
    from llvmlite import ir
    from numba.core.extending import intrinsic

    word = numba.types.uint64

    @intrinsic
    def call5(typingctx, fn, a, b, c, d, e):
        """``fn(a, b, c, d, e)`` for the address ``fn`` of a C function taking and returning
        64-bit integers or pointers (``size_t ZSTD_decompressDCtx(ctx, dst, cap, src, size)``).
        The address is an argument, not a constant, so the compiled loop can be cached on disk."""

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            proto = ir.FunctionType(i64, [i64] * 5)
            return builder.call(builder.inttoptr(args[0], proto.as_pointer()), args[1:])

        return word(word, word, word, word, word, word), codegen

    u8, idx = numba.types.Array(numba.types.uint8, 1, "C"), numba.types.Array(numba.types.int64, 1, "C")
    readonly_u8 = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)

    # Chunk k: src[starts[k]:+sizes[k]] -> dst[offsets[k]:+caps[k]]. Stops at the first chunk whose
    # result is not exactly caps[k] bytes (an error code is a huge size_t), or that is empty (no
    # frame at all, which libzstd takes for zero bytes): the caller checks those.
    @numba.njit(numba.types.int64(word, word, readonly_u8, idx, idx, u8, idx, idx), nogil=True, cache=cache)
    def decode_all(fn, ctx, src, starts, sizes, dst, offsets, caps):  # pragma: no cover - compiled
        s0, d0 = numba.uint64(src.ctypes.data), numba.uint64(dst.ctypes.data)
        for k in range(starts.shape[0]):
            cap = numba.uint64(caps[k])
            got = call5(fn, ctx, d0 + numba.uint64(offsets[k]), cap, s0 + numba.uint64(starts[k]), numba.uint64(sizes[k]))
            if got != cap or sizes[k] == 0:
                return k
        return starts.shape[0]

    return decode_all


def load() -> bool:
    """Load the loop and libzstd once per process; whether batched decoding runs here."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = False
            lib = _library()
            kernel = place.compile_native(_compile, "the zstd batch loop") if lib is not None else False
            if kernel:
                _loaded = (kernel, ctypes.cast(lib.ZSTD_decompressDCtx, ctypes.c_void_p).value, lib)
    return bool(_loaded)


class _Context:
    """A decompression context of one thread (contexts are not thread-safe), freed with it."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib, self.ptr = lib, lib.ZSTD_createDCtx()
        if not self.ptr:
            raise MemoryError("libzstd could not allocate a decompression context")

    def __del__(self) -> None:
        self.lib.ZSTD_freeDCtx(self.ptr)


def decode_into(src: np.ndarray, starts: np.ndarray, sizes: np.ndarray, dst: np.ndarray, offsets: np.ndarray,
                caps: np.ndarray) -> int:
    """Decompress the zstd stream ``src[starts[k]:starts[k] + sizes[k]]`` into
    ``dst[offsets[k]:offsets[k] + caps[k]]`` for k = 0, 1, ..., in order (``src``, ``dst``: 1-D
    uint8). Returns how many chunks decoded to exactly their ``caps[k]`` bytes before the first
    that did not (corrupt, cut, or of another size): the caller decodes that one on its checked
    path, which says what is wrong. Only after :func:`load` returned True."""
    kernel, fn, lib = _loaded
    starts, sizes, offsets, caps = (np.ascontiguousarray(a, np.int64) for a in (starts, sizes, offsets, caps))
    # The loop runs without bounds checks or the GIL: every span must lie inside its buffer.
    if not (len(starts) == len(sizes) == len(offsets) == len(caps) and (starts >= 0).all() and (sizes >= 0).all()
            and (starts + sizes <= src.size).all() and (offsets >= 0).all() and (caps >= 0).all()
            and (offsets + caps <= dst.size).all()):
        raise ValueError("zstd batch spans outside their source or destination buffer")
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = _Context(lib)
    src = src.view()
    src.flags.writeable = False
    return kernel(fn, ctx.ptr, src, starts, sizes, dst, offsets, caps)
