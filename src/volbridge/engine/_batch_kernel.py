"""The compiled loop of :mod:`.batch_decode`, at module level so that numba's disk cache finds it
again (intrinsics held in a closure made every process compile it anew). Imports numba: imported
only when the loop is loaded."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core.extending import intrinsic

_word = numba.types.uint64


def _codegen(nargs: int):
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        proto = ir.FunctionType(i64, [i64] * nargs)
        return builder.call(builder.inttoptr(args[0], proto.as_pointer()), args[1:])

    return codegen


# ``fn(...)`` for the address ``fn`` of a C function taking and returning 64-bit integers or
# pointers (an int enum returns in the same register). The address is an argument, not a
# constant, so the compiled loop can be cached on disk.
@intrinsic
def call5(typingctx, fn, a, b, c, d, e):
    return _word(_word, _word, _word, _word, _word, _word), _codegen(5)


@intrinsic
def call7(typingctx, fn, a, b, c, d, e, f, g):
    return _word(_word, _word, _word, _word, _word, _word, _word, _word), _codegen(7)


_idx = numba.types.Array(numba.types.int64, 1, "C")
SIGNATURE = numba.types.int64(numba.types.int64, _word, _word, numba.types.Array(numba.types.uint8, 1, "C", readonly=True),
                              _idx, _idx, numba.types.Array(numba.types.uint8, 1, "C"), _idx, _idx)


def decode_all(mode, fn, ctx, src, starts, sizes, dst, offsets, caps):  # pragma: no cover - compiled
    """Chunk k: src[starts[k]:+sizes[k]] -> dst[offsets[k]:+caps[k]]. Stops at the first chunk
    that does not decode to exactly caps[k] bytes from exactly its sizes[k] bytes, or is empty
    (libzstd takes no frame at all for zero bytes): the caller checks those. Mode 0, zstd,
    returns the size written (an error code is a huge size_t) and decodes every frame of the
    input; mode 1, ``libdeflate_gzip_decompress_ex`` given no output size pointer, returns 0 only
    when it wrote exactly caps[k], and says how many input bytes its one gzip member took (a
    second member or trailing bytes are left to the checked path)."""
    s0, d0 = numba.uint64(src.ctypes.data), numba.uint64(dst.ctypes.data)
    used = np.zeros(1, np.uint64)
    used_at = numba.uint64(used.ctypes.data)
    for k in range(starts.shape[0]):
        cap, size = numba.uint64(caps[k]), numba.uint64(sizes[k])
        d, s = d0 + numba.uint64(offsets[k]), s0 + numba.uint64(starts[k])
        if mode == 0:
            ok = call5(fn, ctx, d, cap, s, size) == cap
        else:
            used[0] = 0
            result = call7(fn, ctx, s, size, d, cap, used_at, numba.uint64(0)) & numba.uint64(0xFFFFFFFF)
            ok = result == 0 and used[0] == size
        if not ok or size == 0:
            return k
    return starts.shape[0]
