"""Copy the wanted regions of many decoded chunks into an output array in one native call.

A 32^3 uint8 chunk is 1024 rows of 32 bytes. numpy's strided assignment costs ~20 ns a row in
loop overhead, and a Python statement per chunk adds microseconds more, so on sharded volumes
with small chunks placing voxels cost more than reading and decoding them. Here a compiled loop
(:mod:`.native`, GIL released) copies every row of a batch of chunks from one source buffer:
memcpy speed (measured 17 ms for 128 MiB of 32^3 chunks, against 55-85 ms for per-chunk numpy
assignment).

Chunks are described in the engine's (x, y, z, c) Fortran layout: the source of each is a run of
little-endian voxel bytes of a stored shape (x fastest), the destination a Fortran-contiguous
output array. Without llvmlite (or with ``VOLBRIDGE_NO_NATIVE`` set), before the loop is loaded (see
:data:`LOAD_AT_CHUNKS`), or for an output that is not Fortran-contiguous and little-endian, the
same copies run through numpy.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading

import numpy as np

from . import native
from .parallel import run_bounded

_kernel = None  # the compiled loops (native.Loops) once loaded, False where they cannot run


def load() -> bool:
    """Build the compiled copy loop once per process (:mod:`.native`); whether it runs here. Any
    failure leaves the numpy path."""
    global _kernel
    if _kernel is None:
        _kernel = native.loops() or False
    return bool(_kernel)


#: Reads of fewer chunks than this do not wait for the compiled loop: importing llvmlite and
#: building the loops takes 0.05-0.1 s once per process (measured), which numpy's 20-60 us more
#: per chunk repays only after a few reads of this size. Such a read starts building it in the
#: background instead and runs on numpy; once loaded, every read uses it. Where an earlier
#: process kept the loops as a shared library (:mod:`.native_cache`), loading takes ~1 ms and
#: every read waits for it.
LOAD_AT_CHUNKS = 128
_building = threading.Lock()
_build_started = False
_build_thread: threading.Thread | None = None


def _load_in_background() -> None:
    global _build_started, _build_thread
    with _building:
        if _build_started:
            return
        _build_started = True
        try:
            _build_thread = threading.Thread(target=load, name="volbridge-native-build", daemon=True)
            _build_thread.start()
        except RuntimeError:  # no new threads (interpreter shutting down): the numpy paths serve
            _build_thread = None


def _before_fork() -> None:
    """Let a background build finish before a fork: a child forked half-way through it would
    find the build's lock held (and LLVM's state half-made) and run the numpy paths for good
    (services fork worker pools, often right after a first small read)."""
    thread = _build_thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=30)


def _after_fork_in_child() -> None:
    """A child has no build thread: it may start its own (native.py resets its own state)."""
    global _building, _build_started, _build_thread
    _building, _build_started, _build_thread = threading.Lock(), False, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def prepare(num_chunks: int) -> bool:
    """Load the compiled loop if a read of ``num_chunks`` chunks is worth waiting for it, else
    start loading it in the background; whether it is loaded now (without it, batching chunks
    through a staging buffer only adds a copy: use numpy directly)."""
    if _kernel is None:
        if num_chunks >= LOAD_AT_CHUNKS or native.cheap():
            load()
        else:
            _load_in_background()
    return bool(_kernel)


def loaded() -> bool:
    """Whether the compiled loop is loaded, without loading it."""
    return bool(_kernel)


def ready() -> bool:
    """Whether the compiled loop is loaded, loading it now where that is cheap
    (:func:`native.cheap`) and not waiting for it otherwise."""
    if _kernel is None and native.cheap():
        load()
    return bool(_kernel)


def load_soon() -> None:
    """Start loading the compiled loop in the background, if it is not loaded: for a caller that
    has just finished a read without it, so the build does not compete with that read."""
    if _kernel is None:
        _load_in_background()


#: No chunk holds this many bytes or more: products of shapes are checked against it in floating
#: point first, so the int64 strides below cannot wrap (a shape of 2**60 rows once wrapped to a
#: 0-byte chunk that passed every span check and had the loop read far past its buffer).
_MAX_CHUNK_BYTES = float(1 << 48)


def _strides(shapes: np.ndarray, isz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte strides (y, z, c) of Fortran-ordered chunks of ``shapes`` (n, 4), after checking that
    none of their sizes can wrap around int64."""
    if len(shapes):
        low, high = shapes.min(), shapes.max(axis=0).tolist()  # the product of the largest extents bounds every chunk's
        if low < 0 or (math.prod(high) * isz >= _MAX_CHUNK_BYTES
                       and (shapes.astype(np.float64).prod(axis=1) * isz).max() >= _MAX_CHUNK_BYTES):
            raise ValueError(f"chunk shapes {high} are negative or too big to place")
    sy = shapes[:, 0] * isz
    sz = sy * shapes[:, 1]
    return sy, sz, sz * shapes[:, 2]


def _check(ok: bool) -> None:
    # The loop runs without bounds checks or the GIL: every copy must lie inside both arrays.
    if not ok:
        raise ValueError("chunk placement outside its source buffer or the output (a layout's stored_shapes or decode_bytes is wrong)")


def _run(dst: np.ndarray, sources: native.Sources, table: np.ndarray, parts: int = 1) -> None:
    """Copy the boxes of ``table`` (source starts absolute, :class:`native.Sources`) into
    ``dst``; in ``parts`` native calls on as many loops when asked (each call releases the GIL)."""
    sources.check_destination(dst, "chunk placement")
    if not (table.dtype == np.int64 and table.ndim == 2 and table.shape[1] == 12 and table.flags.c_contiguous and table.flags.aligned):
        raise ValueError("chunk placement needs an aligned int64 table of 12 columns")
    to = dst.ctypes.data
    if parts <= 1 or len(table) < 2:
        _kernel.copy_rows(to, 0, table.ctypes.data, len(table))
        return
    # parts of about equal bytes: boxes differ in size at a cutout's edges
    nbytes = np.cumsum(table[:, 8] * table[:, 9] * table[:, 10] * table[:, 11])
    cuts = np.searchsorted(nbytes, nbytes[-1] * np.arange(1, parts) / parts)
    bounds = [0, *np.unique(cuts).tolist(), len(table)]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    run_bounded(lambda ab: _kernel.copy_rows(to, 0, table[ab[0]:].ctypes.data, ab[1] - ab[0]), spans, 1, len(spans),
                local=False)


def _table(s0, src_strides, d0, dst_strides, extent: np.ndarray, isz: int, nc: int) -> np.ndarray:
    """The loop's rows: per box, source start and (y, z, c) strides, destination start and
    strides (arrays or scalars), row bytes and y, z, c extents (``extent``: (n, 3) voxels)."""
    table = np.empty((len(extent), 12), np.int64)
    table[:, 0], table[:, 4] = s0, d0
    table[:, 1], table[:, 2], table[:, 3] = src_strides
    table[:, 5], table[:, 6], table[:, 7] = dst_strides
    table[:, 8] = extent[:, 0] * isz
    table[:, 9], table[:, 10], table[:, 11] = extent[:, 1], extent[:, 2], nc
    return table


def _little_endian(dtype: np.dtype) -> bool:
    return dtype == dtype.newbyteorder("<")


def place_chunks(out: np.ndarray, src, offsets: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray,
                 dst_lo: np.ndarray, size: np.ndarray, which: np.ndarray | None = None, parts: int = 1) -> None:
    """Copy region ``size`` at ``src_lo`` of each chunk into ``out`` at ``dst_lo``.

    ``out``: (x, y, z, c) array; ``src``: 1-D uint8 buffer holding every chunk, chunk ``k`` at
    byte ``offsets[k]`` as voxels of ``out.dtype`` in Fortran order of shape ``shapes[k]``
    (x, y, z, c); or :class:`native.Sources`, chunk ``k`` then in buffer ``which[k]``;
    ``src_lo``, ``dst_lo``, ``size``: (n, 3) voxel corners and extents (x, y, z). All channels of
    ``out`` are copied from the first channels of each chunk. ``parts``: native calls to spread
    the copies over (each on its own loop).
    """
    n = len(offsets)
    if n == 0:
        return
    sources = src if isinstance(src, native.Sources) else native.Sources([src])
    which = np.zeros(n, np.int64) if which is None else np.asarray(which, np.int64)
    isz, nc = out.dtype.itemsize, out.shape[3]
    shapes, offsets = np.asarray(shapes, np.int64), np.asarray(offsets, np.int64)
    src_lo, dst_lo, size = (np.asarray(a, np.int64) for a in (src_lo, dst_lo, size))
    sy, sz, sc = _checked_strides(out, shapes, src_lo, dst_lo, size)
    at = sources.starts(which, offsets, sc * shapes[:, 3], "chunk placement")
    if writes_natively(out):
        _run(out_bytes(out), sources, _copy_table(out, at, (sy, sz, sc), src_lo, dst_lo, size), parts)
        return
    dtype = out.dtype.newbyteorder("<") if isz > 1 else out.dtype
    for k in range(n):
        (x, y, z, c), o = shapes[k].tolist(), int(offsets[k])
        chunk = np.frombuffer(sources.arrays[int(which[k])], dtype, count=x * y * z * c, offset=o).reshape((x, y, z, c), order="F")
        (fx, fy, fz), (tx, ty, tz), (nx, ny, nz) = src_lo[k].tolist(), dst_lo[k].tolist(), size[k].tolist()
        out[tx:tx + nx, ty:ty + ny, tz:tz + nz] = chunk[fx:fx + nx, fy:fy + ny, fz:fz + nz, :nc]


def _checked_strides(out: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray, dst_lo: np.ndarray, size: np.ndarray):
    """The (y, z, c) byte strides of chunks of ``shapes`` (n, 4), after checking that each region
    ``size`` at ``src_lo`` lies inside its chunk and at ``dst_lo`` inside ``out``."""
    sy, sz, sc = _strides(shapes, out.dtype.itemsize)
    # few array operations: a read calls this once per group of chunks, and each costs microseconds
    _check(bool(np.concatenate((src_lo, dst_lo, size), axis=1).min() >= 0 and shapes[:, 3].min() >= out.shape[3]
                and (src_lo + size <= shapes[:, :3]).all() and (dst_lo + size <= np.array(out.shape[:3])).all()))
    return sy, sz, sc


def _copy_table(out: np.ndarray, starts: np.ndarray, strides, src_lo: np.ndarray, dst_lo: np.ndarray,
                size: np.ndarray) -> np.ndarray:
    isz, nc = out.dtype.itemsize, out.shape[3]
    sy, sz, _ = strides
    # an axis of length 1 is never stepped along: its stride (which numpy may leave negative, a
    # reversed view) is 0 here, so every table entry stays non-negative
    dy, dz, dc = (st if n > 1 else 0 for st, n in zip(out.strides[1:], out.shape[1:]))
    return _table(starts + src_lo[:, 0] * isz + src_lo[:, 1] * sy + src_lo[:, 2] * sz, strides,
                  dst_lo[:, 0] * isz + dst_lo[:, 1] * dy + dst_lo[:, 2] * dz, (dy, dz, dc), size, isz, nc)


def writes_natively(out: np.ndarray) -> bool:
    """Whether the compiled loop copies into ``out`` (loaded, and ``out`` a Fortran-contiguous,
    little-endian array, as the engine's outputs are): else numpy does."""
    return bool(_kernel) and out.flags.f_contiguous and out.size > 0 and _little_endian(out.dtype)


def out_bytes(out: np.ndarray) -> np.ndarray:
    """``out`` (Fortran-contiguous) as the flat bytes the compiled loop writes."""
    return out.reshape(-1, order="F").view(np.uint8)


def copy_table(out: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray, dst_lo: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The compiled loop's rows copying region ``size`` at ``src_lo`` of each chunk (voxels of
    ``out.dtype`` in Fortran order of shape ``shapes[k]``, x, y, z, c) to ``dst_lo`` of ``out``,
    source starts relative to the chunk's first byte: for a loop that decodes a chunk into a
    buffer and copies it out at once (:func:`volbridge.engine.batch_decode.decode_and_place`).
    Only where :func:`writes_natively`; checks every region (:func:`row_ends` bounds a row)."""
    shapes, src_lo, dst_lo, size = (np.asarray(a, np.int64) for a in (shapes, src_lo, dst_lo, size))
    if not len(shapes):
        return np.zeros((0, 12), np.int64)
    strides = _checked_strides(out, shapes, src_lo, dst_lo, size)
    return _copy_table(out, np.zeros(len(shapes), np.int64), strides, src_lo, dst_lo, size)


def row_ends(table: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row of a copy table, one past the last byte it reads (from its source start) and
    writes (from its destination start): what a caller checks against both buffers. None when
    an entry is negative or an end lies past 2**52 (worked out in floating point first, so that
    no product can wrap around int64 and pass a check)."""
    if len(table) and table.min() < 0:
        return None
    last = np.maximum(table[:, [9, 10, 11]] - 1, 0)
    for span in ((0, 1, 2, 3), (4, 5, 6, 7)):
        start, strides = table[:, span[0]].astype(np.float64), table[:, list(span[1:])].astype(np.float64)
        if len(table) and (start + (last * strides).sum(axis=1) + table[:, 8]).max() >= 2.0 ** 52:
            return None
    empty = (table[:, [8, 9, 10, 11]] == 0).any(axis=1)
    src_end = table[:, 0] + (last * table[:, [1, 2, 3]]).sum(axis=1) + table[:, 8]
    dst_end = table[:, 4] + (last * table[:, [5, 6, 7]]).sum(axis=1) + table[:, 8]
    return np.where(empty, 0, src_end), np.where(empty, 0, dst_end)


def gather_table(data: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray,
                 dst_size: int) -> np.ndarray | None:
    """The compiled copy's rows (:func:`native._emit_copy_rows`, source starts absolute) that
    copy the box of shape ``shapes[k]`` (x, y, z, c) at ``src_lo[k]`` of ``data`` (x, y, z, c)
    to byte ``offsets[k]`` of a buffer of ``dst_size`` bytes, little-endian in Fortran order,
    checked to lie inside both; None where the loop does not run or ``data`` is not laid out
    for it (Fortran-contiguous, little-endian). Rows that share a destination (offsets 0: each
    gathered into one chunk's buffer in turn, :mod:`.batch_encode`) are allowed."""
    isz, nc = data.dtype.itemsize, data.shape[3]
    shapes, offsets, src_lo = (np.asarray(a, np.int64) for a in (shapes, offsets, src_lo))
    sy, sz, sc = _strides(shapes, isz)
    _check(bool((offsets >= 0).all() and (offsets + sc * shapes[:, 3] <= dst_size).all() and (src_lo >= 0).all()
                and (shapes[:, 3] == nc).all() and (src_lo + shapes[:, :3] <= data.shape[:3]).all()))
    if not (_kernel and data.flags.f_contiguous and data.size and _little_endian(data.dtype)):
        return None
    _, dy, dz, dc = data.strides
    flat = data.reshape(-1, order="F").view(np.uint8)
    return _table(flat.ctypes.data + src_lo[:, 0] * isz + src_lo[:, 1] * dy + src_lo[:, 2] * dz, (dy, dz, dc), offsets,
                  (sy, sz, sc), shapes[:, :3], isz, nc)


def gather_chunks(data: np.ndarray, dst: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, src_lo: np.ndarray) -> None:
    """The inverse of :func:`place_chunks` for whole chunks: copy the box of shape ``shapes[k]``
    (x, y, z, c) at ``src_lo[k]`` of ``data`` (x, y, z, c) into ``dst`` (1-D uint8) at byte
    ``offsets[k]``, little-endian in Fortran order: the voxel bytes a chunk encoder takes."""
    n = len(offsets)
    if n == 0:
        return
    table = gather_table(data, offsets, shapes, src_lo, dst.size)
    if table is not None:
        # the copy's destination is dst: its starts are offsets into it, the sources' absolute
        _run(dst, native.Sources([data.reshape(-1, order="F").view(np.uint8)]), table)
        return
    isz = data.dtype.itemsize
    shapes, offsets, src_lo = (np.asarray(a, np.int64) for a in (shapes, offsets, src_lo))
    dtype = data.dtype.newbyteorder("<") if isz > 1 else data.dtype
    for k in range(n):
        (x, y, z, c), o, (fx, fy, fz) = shapes[k].tolist(), int(offsets[k]), src_lo[k].tolist()
        slot = dst[o:o + x * y * z * c * isz].view(dtype).reshape((x, y, z, c), order="F")
        slot[...] = data[fx:fx + x, fy:fy + y, fz:fz + z]


def place_one(out: np.ndarray, data, shape: tuple[int, int, int, int], src_lo, dst_lo, size) -> None:
    """:func:`place_chunks` of one chunk's voxel bytes ``data`` (for chunks that arrive one by
    one, each in its own object): a few microseconds of Python instead of a dozen numpy calls."""
    isz = out.dtype.itemsize
    src = np.frombuffer(data, np.uint8)
    if (_kernel and out.flags.f_contiguous and out.size and _little_endian(out.dtype) and len(src) >= isz * shape[0] * shape[1] * shape[2] * shape[3]
            and shape[3] >= out.shape[3] and all(0 <= a and 0 <= n and a + n <= m for a, n, m in zip(src_lo, size, shape))
            and all(0 <= a and a + n <= m for a, n, m in zip(dst_lo, size, out.shape))):
        sy = shape[0] * isz
        sz, (fx, fy, fz), (tx, ty, tz), (nx, ny, nz) = sy * shape[1], src_lo, dst_lo, size
        _, dy, dz, dc = out.strides
        table = np.array([[src.ctypes.data + fx * isz + fy * sy + fz * sz, sy, sz, sz * shape[2], tx * isz + ty * dy + tz * dz,
                           dy, dz, dc, nx * isz, ny, nz, out.shape[3]]], np.int64)
        _run(out.reshape(-1, order="F").view(np.uint8), native.Sources([src]), table)
        return
    # no compiled loop, or geometry to check: place_chunks checks it and says what is wrong
    place_chunks(out, src, np.zeros(1, np.int64), np.array([shape]), np.array([src_lo]), np.array([dst_lo]), np.array([size]))


#: Staging buffers up to this size are kept per thread and reused: a fresh one per shard costs
#: page faults that, on this machine's VM, take longer than the copies themselves. 16 MiB of
#: chunks (a 256^3 uint8 shard) and the room compressing them may need beyond their size
#: (:mod:`.batch_encode` stages a shard in the sum of its chunks' bounds: zstd's is +0.4 %).
KEEP_STAGING_BYTES = 17 << 20
_staging = threading.local()


@contextlib.contextmanager
def staging(nbytes: int):
    """A uint8 buffer of ``nbytes``, this thread's while the ``with`` block runs: a nested use
    (a store that reads a volume inside an update, say) gets a buffer of its own, so bytes
    staged for a write cannot be overwritten before they are stored."""
    buf = getattr(_staging, "buf", None)
    _staging.buf = None
    if buf is None or len(buf) < nbytes:
        buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    try:
        yield buf[:nbytes]
    finally:
        if len(buf) <= KEEP_STAGING_BYTES:
            _staging.buf = buf
