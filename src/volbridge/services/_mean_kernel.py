"""The compiled block-mean loop of :func:`volbridge.services.downsample.mean`.

One pass over the source, no temporaries: each output row's sums build up in one small
accumulator row, as the source rows of its block stream by (x fastest, the engine's layout).
The numpy kernel it replaces made three to five full-size temporaries per unit, and their fresh
pages cost more than the arithmetic.
"""

from __future__ import annotations

import os
import warnings

import numpy as np


def compile_native(build, what: str):
    """``build(numba, cache)``'s compiled function, or False when it cannot run here: no numba,
    numba's JIT switched off (the loop would run as Python, byte by byte), ``VOLBRIDGE_NO_NATIVE``
    (or ``VOLBRIDGE_NO_NUMBA``) set, or no compiler; without a writable cache directory (a
    read-only install) it compiles without caching. A failure with numba present warns, naming
    ``what``. (The engine's own loops are built with llvmlite alone: :mod:`volbridge.engine.native`.)"""
    if os.environ.get("VOLBRIDGE_NO_NATIVE") or os.environ.get("VOLBRIDGE_NO_NUMBA"):
        return False
    try:
        import numba
    except ImportError:  # numba has no wheel for this platform or Python yet
        return False
    if numba.config.DISABLE_JIT:
        return False
    for cache in (True, False):
        try:
            return build(numba, cache)
        except Exception as e:  # noqa: BLE001 - any numba failure leaves the slower path
            error = e
    warnings.warn(f"volbridge: numba cannot compile {what} ({error}); using the slower path", RuntimeWarning, stacklevel=3)
    return False


def accumulator(dtype: np.dtype, n: int) -> np.dtype | None:
    """The narrowest signed type that holds any sum of ``n`` voxels of ``dtype`` plus ``n // 2``
    (narrow lanes are what make the loop fast: 17 GB/s with int16 sums of uint8, 6 with int64),
    or None for types the loop does not take (floats, 64-bit integers: numpy's kernel)."""
    if dtype.kind not in "iu" or dtype.itemsize > 4 or not dtype.isnative:
        return None
    info = np.iinfo(dtype)
    biggest = max(abs(int(info.min)), int(info.max)) * n + n // 2
    for acc in (np.int16, np.int32, np.int64):
        if biggest <= np.iinfo(acc).max:
            return np.dtype(acc)
    return None


def build(numba, cache: bool):
    """The loop, compiled per (voxel type, accumulator type) at first use (and kept in numba's
    disk cache); compiled here for uint8 voxels, so that a machine where numba cannot compile
    finds out at load time, not in the middle of a job."""

    @numba.njit(nogil=True, cache=cache)
    def mean_into(src, fx, fy, fz, out, acc):  # pragma: no cover - compiled
        """``out[i, j, k]``: the mean of ``src``'s block (i, j, k) of ``fx * fy * fz`` voxels,
        rounded half up (the floor of (sum + n // 2) / n); ``src``'s shape is ``out``'s times
        the factor, both (x, y, z) Fortran-ordered; ``acc`` a row of ``out.shape[0]`` sums."""
        ox, oy, oz = out.shape
        n = fx * fy * fz
        half = n // 2
        shift = -1
        if n & (n - 1) == 0:  # a power of two: a shift (a floor, also for negative sums)
            shift = 0
            while (1 << shift) < n:
                shift += 1
        for k in range(oz):
            for j in range(oy):
                acc[:] = half
                for dz in range(fz):
                    z = k * fz + dz
                    for dy in range(fy):
                        y = j * fy + dy
                        if fx == 2:
                            for i in range(ox):
                                acc[i] += src[2 * i, y, z] + src[2 * i + 1, y, z]
                        elif fx == 1:
                            for i in range(ox):
                                acc[i] += src[i, y, z]
                        else:
                            for i in range(ox):
                                s = 0
                                for dx in range(fx):
                                    s += src[i * fx + dx, y, z]
                                acc[i] += s
                if shift >= 0:
                    for i in range(ox):
                        out[i, j, k] = acc[i] >> shift
                else:
                    for i in range(ox):
                        out[i, j, k] = acc[i] // n

    probe = np.zeros((2, 2, 1), np.uint8, order="F")
    mean_into(probe, 2, 2, 1, np.empty((1, 1, 1), np.uint8, order="F"), np.empty(1, np.int16))
    return mean_into
