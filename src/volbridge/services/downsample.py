"""Downsampling: fill a volume's coarser scales from its finer ones.

Each scale ``m`` is computed from scale ``m - 1`` with the integer factor their resolutions imply
(2x2x1 or 2x2x2 usually; any per axis). The work is split into units aligned to the destination
scale's chunks, so no two units ever write the same object and units run in parallel with no
read-modify-write between them. A destination voxel ``i`` covers source voxels
``[i * f, (i + 1) * f)``; where that block runs past the source's bounds (odd edges, offsets not
a multiple of the factor) it is reduced over the voxels that exist (a 3-wide block with two
reads their mean), as CloudVolume does and the precomputed scale bounds (``ceil``) expect.

Methods: ``mean`` (images; integers rounded half up), ``mode`` (segmentations: the most frequent
label; never an invented one), ``min``, ``max``, ``nearest`` (the block's first voxel), and
``auto`` (mean for images, mode for segmentations). A BossDB source builds its pyramid with its
own server-side service instead.
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
import time
from typing import Any, Callable

import numpy as np

from ..array import VolumeArray
from ..engine.identity import instance_id
from ..errors import (
    InvalidArgumentError,
    UnsupportedError,
    VolbridgeError,
)
from ..geometry import Box
from . import _mean_kernel, provenance
from .base import FunctionService, Writable
from .units import (
    PROCESSES,
    Journal,
    open_ref,
    process_pool,
    run_units,
    volume_ref,
    volume_url,
)

METHODS = ("auto", "mean", "mode", "min", "max", "nearest")
#: Whether ``mean`` may use the compiled loop (tests switch it off to check numpy's kernel too).
COMPILED = True


# -- kernels on (x, y, z) arrays whose shape is a multiple of the factor -----------------------------
def _blocks(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """(X/fx, Y/fy, Z/fz, fx*fy*fz): each destination voxel's source block, flattened."""
    X, Y, Z = a.shape
    b = a.reshape(X // f[0], f[0], Y // f[1], f[1], Z // f[2], f[2])
    return b.transpose(0, 2, 4, 1, 3, 5).reshape(X // f[0], Y // f[1], Z // f[2], -1)


def _views(a: np.ndarray, f: tuple[int, int, int]):
    """The ``prod(f)`` strided views whose voxel ``i`` is the ``k``-th voxel of block ``i``: adding
    or comparing them costs one pass each, with no transpose or copy of the source."""
    for i in range(f[0]):
        for j in range(f[1]):
            for k in range(f[2]):
                yield a[i:: f[0], j:: f[1], k:: f[2]]


#: (item type, the type twice as wide, its accumulator) for the paired-x fast path of mean.
_PAIRED = {np.dtype(np.uint8): (np.uint16, 8, np.uint16), np.dtype(np.uint16): (np.uint32, 16, np.uint32)}


def _mean_paired_x(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray | None:
    """Mean of unsigned 8/16-bit voxels with x halved, on F-ordered data: each x pair is one
    wide word, so the pair sums come from a mask and a shift on contiguous memory (SIMD), not
    from stride-2 views; y and z then add contiguous rows. 3x the strided kernel, same result."""
    paired = _PAIRED.get(a.dtype)
    n = math.prod(f)
    if paired is None or f[0] != 2 or not a.flags.f_contiguous or a.shape[0] % 2:
        return None
    wide, bits, acc_t = paired
    if a.dtype.itemsize == 1 and n > 256:
        return None  # the uint16 accumulator would overflow
    w = a.T.view(wide)  # (z, y, x / 2): little or big endian, a word holds one x pair
    pair = w & np.array((1 << bits) - 1, dtype=wide)
    pair += w >> np.array(bits, dtype=wide)  # in place: one temporary fewer per unit
    pair = pair.astype(acc_t, copy=False)
    acc = None
    for k in range(f[2]):
        for j in range(f[1]):
            v = pair[k:: f[2], j:: f[1], :]
            acc = v.copy() if acc is None else acc.__iadd__(v)
    acc += n // 2
    if n & (n - 1) == 0:
        acc >>= n.bit_length() - 1
    else:
        acc //= n
    return acc.astype(a.dtype).T


_loop_lock = threading.Lock()
_loop = None  # the compiled mean loop, False where it cannot run


def _mean_compiled(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray | None:
    """The mean by the compiled loop (:mod:`._mean_kernel`), or None where it does not apply:
    not an integer type of up to 32 bits in native order, not Fortran-ordered (the service's
    reads always are), or no numba here."""
    global _loop
    acc = _mean_kernel.accumulator(a.dtype, math.prod(f))
    if acc is None or not a.flags.f_contiguous:
        return None
    if _loop is None:
        with _loop_lock:
            if _loop is None:
                _loop = _mean_kernel.compile_native(_mean_kernel.build, "the block-mean loop")
    if not _loop:
        return None
    out = np.empty(tuple(s // k for s, k in zip(a.shape, f)), a.dtype, order="F")
    _loop(a, *f, out, np.empty(out.shape[0], acc))
    return out


def mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    n = math.prod(f)
    fast = _mean_compiled(a, f) if COMPILED else None
    if fast is None:
        fast = _mean_paired_x(a, f)
    if fast is not None:
        return fast
    if a.dtype.kind in "iu" and a.dtype.itemsize <= 2:  # exact sums, rounded half up
        # the narrowest accumulator that cannot overflow: uint16 for up to 256 uint8 voxels
        wide = a.dtype == np.uint8 and n <= 256
        acc_t = np.uint16 if wide else (np.int32 if a.dtype.kind == "i" else np.uint32)
        views = _views(a, f)
        acc = next(views).astype(acc_t)
        for v in views:
            acc += v
        acc += n // 2
        if n & (n - 1) == 0 and a.dtype.kind == "u":
            acc >>= n.bit_length() - 1  # a power of two: a shift, several times faster than //
        else:
            acc //= n
        return acc.astype(a.dtype)
    b = _blocks(a, f)
    if a.dtype.kind in "iu" and a.dtype.itemsize <= 4:  # exact integer sums, rounded half up
        s = b.sum(axis=-1, dtype=np.int64)
        return ((s + n // 2) // n).astype(a.dtype)
    if a.dtype.kind in "iu":  # 64-bit: the sum may not fit, so sum quotients and remainders apart
        # (sum + n // 2) // n == sum(v // n) + (sum(v % n) + n // 2) // n, each term in range
        t = a.dtype.type  # in native byte order
        d = np.array(n, t)
        q = (b // d).sum(axis=-1, dtype=t)
        r = (b % d).sum(axis=-1, dtype=t)
        return (q + (r + d // 2) // d).astype(a.dtype)
    s = b.sum(axis=-1, dtype=np.float64)
    return (s / n if a.dtype.kind == "f" else np.floor(s / n + 0.5)).astype(a.dtype)


def mode(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """The most frequent value of each block; ties go to the smallest value."""
    b = _blocks(a, f)
    if b.shape[-1] == 1:
        return b[..., 0].copy()
    s = np.sort(b, axis=-1)
    n = s.shape[-1]
    # run lengths: for each position, how many equal values end there
    same = s[..., 1:] == s[..., :-1]
    run = np.ones(s.shape, dtype=np.int16)
    for i in range(1, n):
        run[..., i] = np.where(same[..., i - 1], run[..., i - 1] + 1, 1)
    best = np.argmax(run, axis=-1)  # the first maximal run end: the smallest of the most frequent
    return np.take_along_axis(s, best[..., None], axis=-1)[..., 0]


def _fold(ufunc, a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    views = _views(a, f)
    out = next(views).copy()
    for v in views:
        ufunc(out, v, out=out)
    return out


def minimum(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    return _fold(np.minimum, a, f)


def maximum(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    return _fold(np.maximum, a, f)


def nearest(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    return a[:: f[0], :: f[1], :: f[2]].copy()


KERNELS: dict[str, Callable[[np.ndarray, tuple[int, int, int]], np.ndarray]] = {
    "mean": mean, "mode": mode, "min": minimum, "max": maximum, "nearest": nearest,
}


def downsample_array(a: np.ndarray, factor: tuple[int, int, int], method: str = "mean") -> np.ndarray:
    """``a`` (x, y, z) reduced by ``factor`` (x, y, z), its odd edges reduced over the voxels
    that exist: ``ceil(n / f)`` out."""
    if not a.size:  # nothing to reduce (and no edge to repeat)
        return np.empty(tuple(-(-n // k) for n, k in zip(a.shape, factor)), a.dtype)
    return _reduce_edges(a, (0, 0, 0), tuple(factor), KERNELS[method])  # type: ignore[arg-type]


def _segments(n: int, lead: int, f: int) -> list[tuple[int, int, int]]:
    """(start, stop, block) runs of an axis of ``n`` voxels whose first block lacks ``lead``:
    a partial first block, the whole blocks, a partial last block."""
    segs, i = [], 0
    if lead:
        i = min(n, f - lead)
        segs.append((0, i, i))
    whole = (n - i) // f * f
    if whole:
        segs.append((i, i + whole, f))
        i += whole
    if i < n:
        segs.append((i, n, n - i))
    return segs


def _reduce_edges(a: np.ndarray, lead: tuple[int, int, int], f: tuple[int, int, int], kernel,
                  trail: tuple[int, int, int] | None = None) -> np.ndarray:
    """``kernel`` over blocks of ``f`` of ``a`` (x, y, z), the first lacking ``lead`` voxels a
    side and the last what the size leaves. Where repeating edge voxels weighs a partial block's
    voxels alike (a side of 1, or 2 of 2, as in CloudVolume's pyramids), the edges are repeated
    and the kernel runs once; otherwise (factor 3 and up: '0 0 0 0 90' by 3 gave 60, and mode
    counted the repeated voxel twice) each run of equal blocks is reduced over the voxels that
    exist (the mean of 0 and 90 is 45)."""
    if trail is None:  # (the voxels missing after the last block; default: to a whole block)
        trail = tuple(-(lo + n) % k for n, lo, k in zip(a.shape, lead, f))
    pad = list(zip(lead, trail))
    # blocks with no source voxel at all (a coarse scale's bounds wider than the scale below
    # implies, as another tool may write them) have nothing to reduce: edges repeated, as before
    beyond = any(lo >= k or after >= k for (lo, after), k in zip(pad, f))
    segs = [] if beyond else [_segments(n, lo, k) for n, lo, k in zip(a.shape, lead, f)]
    if beyond or all(b in (1, k) for sg, k in zip(segs, f) for _, _, b in sg):
        if any(p != (0, 0) for p in pad):
            a = np.pad(a, pad, mode="edge")
        return kernel(a, f)
    out = np.empty(tuple(sum((t - s) // b for s, t, b in sg) for sg in segs), a.dtype, order="F")
    starts = [np.cumsum([0] + [(t - s) // b for s, t, b in sg]) for sg in segs]
    for combo in itertools.product(*(list(enumerate(sg)) for sg in segs)):
        src = a[tuple(slice(s, t) for _, (s, t, _) in combo)]
        dst = tuple(slice(st[j], st[j + 1]) for st, (j, _) in zip(starts, combo))
        out[dst] = kernel(src, tuple(b for _, (_, _, b) in combo))
    return out


def reduce_box(read: Callable[[Box], np.ndarray], src_bounds: Box, dst: Box, f: tuple[int, int, int], kernel) -> np.ndarray:
    """The destination voxels of ``dst`` (x, y, z[, c]) from a source read with edge repetition."""
    want = Box(tuple(a * k for a, k in zip(dst.start, f)), tuple(b * k for b, k in zip(dst.stop, f)))
    have = want.intersect(src_bounds)
    if have.empty:
        raise VolbridgeError(f"destination box {dst} has no source voxels in {src_bounds}")
    data = read(have)
    lead = tuple(a - w for a, w in zip(have.start, want.start))
    trail = tuple(v - b for v, b in zip(want.stop, have.stop))
    if data.ndim == 3:
        return _reduce_edges(data, lead, f, kernel, trail)
    if data.shape[3] == 1:  # a view with the channel axis: no copy
        return _reduce_edges(data[..., 0], lead, f, kernel, trail)[..., None]
    return np.stack([_reduce_edges(data[..., c], lead, f, kernel, trail) for c in range(data.shape[3])], axis=-1)


def factor_between(fine: tuple, coarse: tuple) -> tuple[int, int, int]:
    """The integer factor (x, y, z) between two resolutions; refuses non-integer ratios."""
    f = []
    for a, b in zip(fine, coarse):
        r = b / a
        if abs(r - round(r)) > 1e-6 or round(r) < 1:
            raise UnsupportedError(f"resolution {coarse} is not an integer multiple of {fine}")
        f.append(int(round(r)))
    return tuple(f)  # type: ignore[return-value]


def _target(target):
    """The Volume a unit works on: the object itself (local threads), or opened from its
    reference once per worker process and metadata version (a cluster)."""
    return open_ref(target, "r+")


#: A unit's source voxels are read into a buffer each thread keeps while a job runs, up to this
#: size: a fresh array per unit cost two thirds of a 2x2x1 mip's page faults (measured).
KEEP_SOURCE_BYTES = 64 << 20
_kept: dict[int, np.ndarray] = {}  # thread id -> its buffer; emptied when a local job ends


def _source_buffer(shape: tuple[int, ...], dtype: np.dtype, keep: bool = True) -> np.ndarray:
    """An uninitialised (x, y, z, c) array of ``shape``: this thread's kept buffer when it fits
    and ``keep``. (A thread id reused by a new thread takes over a dead thread's buffer, which
    is fine.)"""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > KEEP_SOURCE_BYTES or not keep:
        return np.empty(shape, dtype, order="F")
    thread = threading.get_ident()
    buf = _kept.get(thread)
    if buf is None or len(buf) < nbytes:
        buf = _kept[thread] = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape, order="F")


def downsample_unit(target, levels: tuple[tuple[int, tuple[int, int, int]], ...], method: str, keep: bool, box: Box) -> None:
    """One unit: the destination cell ``box`` of the last of ``levels`` ((scale, factor from the
    scale below), consecutive scales), and the cells under it of the levels below, each level
    reduced from the one below it in memory, the first from the volume. Its source is read into
    this thread's buffer if ``keep``: the kernels never return a view of their input, and the
    buffer is free again once the first level is computed. A cluster's units keep nothing: no job
    end in the client could release a worker's buffers (a job's own worker processes end with it)."""
    volume = _target(target)
    scales = volume.meta.scales
    boxes = {levels[-1][0]: box}  # each level's part of the unit, top down
    for m, f in reversed(levels[1:]):
        top = boxes[m]
        boxes[m - 1] = Box(tuple(a * k for a, k in zip(top.start, f)), tuple(b * k for b, k in zip(top.stop, f))).intersect(scales[m - 1].bounds)
    first = levels[0][0]

    def read(b: Box) -> np.ndarray:
        out = _source_buffer((*b.shape, volume.meta.num_channels), volume.meta.dtype, keep)
        volume.read_into(b, out, first - 1)
        return out

    data = None
    for m, f in levels:
        if data is None:
            data = reduce_box(read, scales[m - 1].bounds, boxes[m], f, KERNELS[method])
        else:
            data = reduce_box(lambda b, below=data, at=boxes[m - 1].start: below[b.slices(at)], scales[m - 1].bounds,
                              boxes[m], f, KERNELS[method])
        volume.write(boxes[m], data, m)


#: A unit computes several levels from one read while its source stays under this size.
LEVELS_SOURCE_BYTES = 64 << 20


def _levels_nest(volume, m: int, f: tuple[int, int, int]) -> bool:
    """Whether each write cell of scale ``m`` covers whole write cells of scale ``m - 1`` (and the
    scale's bounds cover the one's below): then one unit can compute both without sharing an
    object with another unit."""
    lo, hi = volume.write_grid(m - 1), volume.write_grid(m)
    b_lo, b_hi = volume.meta.scales[m - 1].bounds, volume.meta.scales[m].bounds
    for i, k in enumerate(f):
        if (hi.chunk_shape[i] * k) % lo.chunk_shape[i] or (hi.origin[i] * k - lo.origin[i]) % lo.chunk_shape[i]:
            return False
        if b_hi.start[i] * k > b_lo.start[i] or b_hi.stop[i] * k < b_lo.stop[i]:
            return False
    return True


def _groups(volume, mips: list[int], factors: dict[int, tuple[int, int, int]], limit: int) -> list[list[int]]:
    """``mips`` in runs of consecutive scales that one unit computes together (one read of the
    first's source, the others from memory), each run's source per unit at most ``limit``."""
    voxel = volume.meta.num_channels * np.dtype(volume.meta.dtype).itemsize
    groups: list[list[int]] = []
    for m in sorted(mips):
        g = groups[-1] if groups else None
        if g and g[-1] == m - 1 and _levels_nest(volume, m, factors[m]) and \
                _source_bytes(volume, g + [m], factors, voxel) <= limit:
            g.append(m)
        else:
            groups.append([m])
    return groups


def _source_bytes(volume, group: list[int], factors: dict, voxel: int) -> int:
    """Source bytes of one unit of ``group``: its top cell times every level's factor."""
    n = math.prod(volume.write_grid(group[-1]).chunk_shape)
    for m in group:
        n *= math.prod(factors[m])
    return n * voxel


def downsample(source: Any, *, num_mips: int | None = None, factor: tuple[int, int, int] = (1, 2, 2),
               mips: range | list[int] | None = None, method: str = "auto", executor=None, resume: bool = True,
               progress: Callable[[int, int, int], None] | None = None) -> None:
    """Fill scales ``mips`` (default: every scale above 0) of ``source`` (a URL or a writable
    VolumeArray), each from the one below it. ``num_mips``: first extend the pyramid to that many
    scales above 0, each ``factor`` (z, y, x) coarser than the last (precomputed).

    ``executor``: None (local threads), ``"processes"`` (local worker processes, as the command
    line runs: faster, see :data:`.units.PROCESSES`; threads where the volume cannot be reopened
    from its URL) or a ``dask.distributed.Client`` (then ``source`` must be a URL the workers can
    open). ``resume``: finished units are journaled, so running the same call
    again after a failure does only what is left (change nothing in between).

    Where the cells of consecutive scales nest, one unit computes several of them from one read
    (up to :data:`LEVELS_SOURCE_BYTES` of source; 15-20 % faster for a 4-level pyramid, measured);
    ``progress(mip, done, total)`` then counts the units of the highest scale of each such run.
    """
    from ..api import array
    if not isinstance(source, (str, VolumeArray)):  # an ndarray has nowhere to keep the scales it would make
        raise InvalidArgumentError(f"downsample writes scales into a volume: give a URL or a writable VolumeArray, "
                                   f"not {type(source).__name__}")
    vol: VolumeArray = array(source, mode="r+") if isinstance(source, str) else source
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if executor not in (None, PROCESSES) and not isinstance(source, str):
        raise InvalidArgumentError("on a cluster, give the source as a URL: the workers open it themselves")
    volume = vol.volume
    if num_mips is not None and (isinstance(num_mips, bool) or not isinstance(num_mips, numbers.Integral) or num_mips < 0):
        raise InvalidArgumentError(f"num_mips is a count of scales above 0, got {num_mips!r}")
    if num_mips is not None:
        if DOWNSAMPLE.native(volume):
            raise UnsupportedError(f"{volume.url} builds its pyramid on the server, with the levels its experiment has")
        # everything that can refuse the job does so before a scale is added: a refusal after
        # left empty levels in the pyramid, which viewers show black (a review found)
        DOWNSAMPLE.check(volume)
        have = len(volume.meta.scales)
        will = max(have, int(num_mips) + 1)
        if mips is not None and any(not isinstance(m, numbers.Integral) or not 1 <= m < will for m in mips):
            raise InvalidArgumentError(f"mips must lie in 1..{will - 1} (the volume's scales once num_mips={num_mips} "
                                       f"are added), got {list(mips)}")
        for m in range(1, int(num_mips) + 1) if mips is None else mips:
            if 1 <= m < have:
                factor_between(volume.meta.scales[m - 1].resolution, volume.meta.scales[m].resolution)
        added = range(have, int(num_mips) + 1)
        for _ in added:
            volume.add_scale(tuple(factor)[::-1])
        if mips is None:
            mips = range(1, int(num_mips) + 1)
    n = len(volume.meta.scales)
    mips = list(range(1, n) if mips is None else mips)
    if any(not 1 <= m < n for m in mips):
        raise InvalidArgumentError(f"mips must lie in 1..{n - 1} (the volume's scales; add scales first), got {mips}")
    if not mips:  # (a review found the CLI reporting 'downsampled: scales  of 1' for this)
        if num_mips == 0 or n > 1:
            raise InvalidArgumentError(f"nothing to fill: num_mips={num_mips} and mips={list(mips)} select no scale of {volume.url}")
        raise InvalidArgumentError(f"{volume.url} has no scale above 0 to fill; give num_mips (--num-mips) to add scales")
    DOWNSAMPLE.check(volume)
    if DOWNSAMPLE.native(volume):
        volume.downsample()  # the server's own service (BossDB)
        return
    if method == "auto":
        method = "mode" if volume.meta.layer_type == "segmentation" else "mean"
    started = time.time()
    factors = {m: factor_between(volume.meta.scales[m - 1].resolution, volume.meta.scales[m].resolution) for m in mips}
    voxel = volume.meta.num_channels * np.dtype(volume.meta.dtype).itemsize
    groups = _groups(volume, mips, factors, LEVELS_SOURCE_BYTES)
    # this instance of the volume: one deleted and created again since a failed run has none of its scales
    instance = instance_id(volume, stamp=True) if resume else None
    units_of = {g[-1]: [c.box for c in volume.write_grid(g[-1]).cells(volume.meta.scales[g[-1]].bounds)] for g in groups}
    per_unit = {g[-1]: 3 * _source_bytes(volume, g, factors, voxel) for g in groups}
    with process_pool(volume, max(map(len, units_of.values()), default=0), executor, max(per_unit.values(), default=1)) as pool:
        if pool is not None:  # worker processes reopen the volume from its URL
            target, keep, executor = pool.ref, True, pool
        elif executor is None or executor == PROCESSES:  # local threads
            target, keep, executor = volume, True, None
        else:  # a cluster
            target, keep = volume_ref(volume), False
        for g in groups:
            top, units = g[-1], units_of[g[-1]]
            levels = tuple((m, factors[m]) for m in g)
            journal = Journal({"service": "downsample", "url": volume_url(volume), "instance": instance, "mips": g,
                               "method": method, "factors": [factors[m] for m in g], "units": len(units)}) if resume else None
            tick = (lambda done, total, m=top: progress(m, done, total)) if progress is not None else None
            try:
                run_units(units, downsample_unit, (target, levels, method, keep), executor=executor, journal=journal,
                          bytes_per_unit=per_unit[top], progress=tick)
            finally:
                _kept.clear()  # the pool's threads outlive the job: let go of their buffers (a unit
                # still running elsewhere keeps its own view alive)
    provenance.append(volume, provenance.record(
        "downsample", {"mips": sorted(mips), "method": method, "num_mips": num_mips,
                       # each scale's factor over the one below, z, y, x (what made it, asked or found)
                       "factors": {str(m): list(factors[m])[::-1] for m in sorted(mips)}}, volume_url(volume),
        scale=min(mips) - 1 if mips else None, started=started, ended=time.time()))


def wait_for(status: Callable[[], dict], timeout: float = 3600, poll: float = 0.5) -> dict:
    """Poll a server-side downsample's status until it is DOWNSAMPLED (or FAILED: raises)."""
    deadline = time.monotonic() + timeout
    while True:
        s = status()
        if s.get("status") == "DOWNSAMPLED":
            return s
        if s.get("status") == "FAILED":
            raise VolbridgeError(f"the server's downsample failed: {s}")
        if time.monotonic() > deadline:
            raise VolbridgeError(f"the server's downsample did not finish in {timeout} s (last status {s.get('status')})")
        time.sleep(poll)


DOWNSAMPLE = FunctionService("downsample", downsample, requires=(Writable(),),
                             native_capability="native_downsample")

