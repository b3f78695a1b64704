"""Reads of unsharded chunks a group at a time: one read call, one decode call, one copy call.

A 300^3 cutout of a zarr v3 volume of 64^3 zstd chunks touches 216 chunk files. Chunk by chunk,
each cost ~90 us of Python with the GIL held (a bytes object from the zstd binding, a numpy
assignment, the store call and the geometry around them): ~20 ms of a 150 ms read's CPU, where
tensorstore spends ~3 ms (measured with perf). Here a group of chunks is read into one buffer
(``get_many_transient``), then one native call (:mod:`.batch_decode`, GIL released) decodes
each chunk and copies it into the output while it is still in cache, by a copy table worked out
and checked once for the read; raw chunks are copied straight from the read buffer
(:mod:`.place`). The same machinery serves a group of shards (:mod:`.sharded`). Over a network
store compressed chunks are placed the same way, a batch at a time as they arrive.

Anything the batched calls cannot take goes to the caller's chunk-by-chunk path, which decodes
it or names what is wrong with it: a chunk that does not decode to exactly its voxels, or one
stored raw whose size is not its voxels'. An absent chunk is filled, or looked for under its
other names first where the format has some.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..geometry import Box, Cell
from . import batch_decode, native, parallel, place
from .parallel import run_bounded
from .sharded import stored_slots

if TYPE_CHECKING:
    from ..formats.base import ScaleLayout
    from .chunked import ChunkedVolume

#: Decoded bytes of one group at most: its stored chunks then fit the read buffer a thread keeps
#: (kv.file.KEEP_OBJECTS_BYTES), and a read of many chunks gives every loop several groups
#: (measured, CPU per 300^3 cutout on one thread: 1 MiB 183 ms, 8 MiB 144, 64 MiB 199).
GROUP_BYTES = 8 << 20


def group_codec(layout: ScaleLayout, num_chunks: int) -> str | None:
    """How a group of the layout's chunks become voxels in batched calls: ``"raw"`` (their
    stored bytes are their voxels) or a compression :mod:`.batch_decode` runs; None when they
    must go chunk by chunk (other encodings, or the compiled loops not built yet).

    No read waits for the loops to be built here: unsharded chunks read one by one only ~10-15 %
    slower, while building the loops costs a process's first read ~70 ms (a 300^3 zarr3 cutout's
    first read measured 190 ms waiting for them, 168 building them beside it). The engine starts
    the build in the background once such a read is done (:func:`place.load_soon`), and the
    reads after it use the loops. Loops an earlier process kept as a shared library load in ~1
    ms: those every read loads (:func:`place.ready`)."""
    if not (layout.decodes_to_bytes and place.ready()):
        return None
    if layout.voxels_stored_raw:
        return "raw"
    codec = layout.stored_compression
    return codec if codec is not None and batch_decode.load(codec) else None


class _Cells:
    """A read's cells as arrays (where each one's overlap with the box starts and ends, and how
    its voxels are stored) and their keys, for placing any subset of them in batched calls.
    ``copy``: where decoded chunks go (:class:`batch_decode.CopyOut`), for compressed chunks or
    when asked for."""

    def __init__(self, layout: ScaleLayout, box: Box, cells: list[Cell], out: np.ndarray, codec: str,
                 copy: bool = False):
        self.cells, self.out = cells, out
        starts = np.array([c.box.start for c in cells], np.int64).reshape(-1, 3)
        stops = np.array([c.box.stop for c in cells], np.int64).reshape(-1, 3)
        lo, hi = np.maximum(starts, np.array(box.start)), np.minimum(stops, np.array(box.stop))
        self.dst_lo, self.src_lo, self.size = lo - np.array(box.start), lo - starts, hi - lo
        self.shapes, self.slot_sizes, _ = stored_slots(layout, stops - starts)
        self.names = [layout.read_keys(c) for c in cells]
        self.other_names = any(len(n) > 1 for n in self.names)
        # worked out and checked once for the whole read
        self.copy = batch_decode.CopyOut(out, self.shapes, self.slot_sizes, self.src_lo, self.dst_lo,
                                         self.size) if copy or codec != "raw" else None


def _place_values(vol: ChunkedVolume, layout: ScaleLayout, at: _Cells, chunks: np.ndarray, values: list, codec: str,
                  parts: int, place_found: Callable) -> None:
    """Place cells ``chunks`` (positions in ``at``) from their stored ``values`` (None: absent)
    in a few batched calls; the rest through ``place_found``, the checked path."""
    present = [j for j, v in enumerate(values) if v is not None]
    for j in (j for j, v in enumerate(values) if v is None):
        k = int(chunks[j])
        place_found(at.cells[k], vol._fetch(layout, at.cells[k], skip=at.names[k][0]) if at.other_names else None)
    if not present:
        return
    sel = chunks[present]
    sources = native.Sources([values[j] for j in present])
    which = np.arange(len(present))
    sizes = sources.size
    bad = np.zeros(len(present), bool)
    if codec == "raw":
        bad[sizes != at.slot_sizes[sel]] = True  # a raw chunk must be exactly its voxels
        ok = ~bad
        place.place_chunks(at.out, sources, np.zeros(int(ok.sum()), np.int64), at.shapes[sel[ok]], at.src_lo[sel[ok]],
                           at.dst_lo[sel[ok]], at.size[sel[ok]], which=which[ok], parts=parts)
    else:
        batch_decode.decode_and_place(codec, sources, which, np.zeros(len(present), np.int64), sizes, at.copy, sel, bad,
                                      parts)
    for j in np.flatnonzero(bad).tolist():  # decoded or named by the checked path
        k = int(sel[j])
        place_found(at.cells[k], (at.names[k][0], values[present[j]]))


def read_grouped(vol: ChunkedVolume, layout: ScaleLayout, box: Box, cells: list[Cell], out: np.ndarray, codec: str,
                 place_found: Callable[[Cell, tuple[str, bytes | memoryview] | None], None]) -> None:
    """Read ``cells`` of ``box`` from a local store into ``out`` (``codec`` from
    :func:`group_codec`): plain files in native loops (:func:`_read_files`), the chunks those
    cannot place and those of other stores in groups (:func:`_read_groups`).
    ``place_found(cell, (key, stored bytes) or None)`` is the checked chunk-by-chunk path, which
    also fills absent chunks."""
    if not cells:
        return
    at = _Cells(layout, box, cells, out, codec, copy=place.writes_natively(out))
    keys = [names[0] for names in at.names]
    paths = vol.store.local_paths(keys) if at.copy is not None and at.copy.fused else None
    # Plain chunks absent, the loops open CloudVolume's gzipped copies (key.gz, its default on
    # disk, which precomputed's info does not record): the store's own order of names.
    copies = vol.store.local_paths(keys, "gzip") if paths is not None and codec == "raw" and batch_decode.load("gzip") else None
    left = np.arange(len(cells)) if paths is None else _read_files(vol, at, codec, paths, copies)
    _read_groups(vol, layout, at, codec, left, place_found)


def _read_groups(vol: ChunkedVolume, layout: ScaleLayout, at: _Cells, codec: str, chunks: np.ndarray,
                 place_found: Callable) -> None:
    """Place cells ``chunks`` (positions in ``at``) a group at a time: the store reads a group's
    objects into one buffer (``get_many_transient``, which also finds compressed variants), then
    :func:`_place_values`."""
    if not len(chunks):
        return
    loops = parallel.default_threads()
    count = max(1, min(len(chunks), max(loops, -(-int(at.slot_sizes[chunks].sum()) // GROUP_BYTES))))
    groups = np.array_split(chunks, count)
    # Fewer groups than cores: each spreads its native calls over them (but not inside an outer
    # loop, whose siblings keep the cores busy already).
    cpu_loops = min(loops, parallel.cores())  # VOLBRIDGE_THREADS=1 means one thread here too
    parts = cpu_loops if count < cpu_loops and not parallel.inside() else 1

    def group_task(group: np.ndarray) -> None:
        # views of a buffer this thread reuses: used up before the thread's next group
        values = vol.store.get_many_transient([at.names[k][0] for k in group.tolist()])
        _place_values(vol, layout, at, group, values, codec, parts, place_found)

    run_bounded(group_task, groups, int(at.slot_sizes[groups[0]].sum()) * 2 or 1)


def _read_files(vol: ChunkedVolume, at: _Cells, codec: str, paths: list[bytes],
                gzip_copies: list[bytes] | None = None) -> np.ndarray:
    """Read, decode and place every chunk file in native loops, one per core, that take the
    chunks one at a time from a shared counter with the GIL released throughout
    (:func:`native._emit_read_files`); returns the positions of the chunks they could not place
    (absent, unreadable, bigger than their buffer, not decoding to exactly their voxels), for
    the store to read and the checked path to place or name. ``gzip_copies``: where a chunk's
    file is absent, the loops read and gunzip the file there instead (raw chunks only).

    Reading a group's files from Python cost a GIL hand-off per system call: at the start of a
    300^3 cutout three loops opening files at once passed the GIL back and forth for 11-17 ms
    before the first decode, and the read's last group ran alone at its end (~1.8 of 2 cores
    busy)."""
    n = len(paths)
    names = paths + (gzip_copies or [])
    lengths = np.fromiter(map(len, names), np.int64, len(names)) + 1
    blob = np.frombuffer(b"\0".join(names) + b"\0", np.uint8)
    starts = np.cumsum(lengths) - lengths
    path_at, alt_at = starts[:n], starts[n:]
    status = np.full(n, -9, np.int64)
    counter = np.zeros(1, np.int64)
    copy = at.copy
    raw = codec == "raw"
    dcap = int(copy.caps.max())
    # a compressed chunk is at most a little bigger than its voxels (stored blocks); one that
    # fills the buffer is read again by the store, whatever its size
    decodes = not raw or bool(gzip_copies)  # the loops decode into a buffer of one chunk
    rcap = dcap + dcap // 8 + (64 << 10) if decodes else dcap + 1
    libc = _libc()
    loops = native.loops()
    threads = 1 if parallel.inside() else max(1, min(parallel.default_threads(), parallel.cores(), n))

    def one_loop(_) -> None:
        mode, fn, ctx, stream = (native.MODE_RAW, 0, 0, 0) if raw else batch_decode.decoder(codec)
        alt_mode, alt_fn, alt_ctx, _ = batch_decode.decoder("gzip") if gzip_copies else (0, 0, 0, 0)
        with place.staging(rcap + (dcap if decodes else 0)) as buf:
            # the loops write the decode buffer without bounds checks: it must be all here
            if len(buf) != rcap + (dcap if decodes else 0):
                raise ValueError("reading chunk files: a buffer of the wrong size")
            native.Sources([buf]).check_destination(copy.flat, "reading chunk files")
            values = dict(mode=mode, fn=fn, ctx=ctx, open=libc[0], read=libc[1], close=libc[2],
                          flags=os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, paths=blob.ctypes.data, path_at=path_at.ctypes.data, n=n,
                          next=counter.ctypes.data, rbuf=buf.ctypes.data, rcap=rcap,
                          dbuf=buf.ctypes.data + rcap if decodes else 0, dcap=dcap if decodes else 0,
                          caps=copy.caps.ctypes.data, out=copy.flat.ctypes.data, table=copy.table.ctypes.data,
                          status=status.ctypes.data, needs=copy.needs.ctypes.data, stream=stream,
                          alt_at=alt_at.ctypes.data if gzip_copies else 0, alt_mode=alt_mode, alt_fn=alt_fn,
                          alt_ctx=alt_ctx)
            args = np.array([values[name] for name in native.READ_FILES_ARGS], np.int64)
            loops.read_files(args.ctypes.data)

    run_bounded(one_loop, range(threads), 1, threads, local=True)
    placed = status >= 0
    vol.store.stats.add(requests=int(placed.sum()), bytes_read=int(status[placed].sum()))
    return np.flatnonzero(~placed)


@functools.cache
def _libc() -> tuple[int, int, int]:
    """Addresses of the C library's ``open``, ``read`` and ``close``."""
    lib = ctypes.CDLL(None)
    return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in ("open", "read", "close"))


def read_arriving(vol: ChunkedVolume, layout: ScaleLayout, box: Box, cells: list[Cell], out: np.ndarray, codec: str,
                  place_found: Callable[[Cell, tuple[str, bytes | memoryview] | None], None]) -> None:
    """Read ``cells`` of ``box`` (compressed chunks: ``codec`` not raw) from a network store into
    ``out``: the store fetches them its own way (many requests in flight,
    :meth:`KVStore.fetch_each`), and the thread it hands a chunk to decodes and places it there
    and then, from the buffer it arrived in (:class:`batch_decode.ChunkAtATime`); absent chunks
    and those the loop cannot decode go to the batched and checked paths."""
    at = _Cells(layout, box, cells, out, codec)
    by_key = {names[0]: k for k, names in enumerate(at.names)}
    one = batch_decode.ChunkAtATime(codec, at.copy) if at.copy.fused else None

    def arrived(key: str, data: bytes | memoryview | None) -> None:
        k = by_key[key]
        if data is None or one is None:
            _place_values(vol, layout, at, np.array([k], np.int64), [data], codec, 1, place_found)
        elif not one.place(k, data):
            place_found(at.cells[k], (at.names[k][0], data))  # decodes it or names what is wrong

    vol.store.fetch_each(list(by_key), arrived, heavy=True, nbytes=vol._chunk_nbytes(layout))
