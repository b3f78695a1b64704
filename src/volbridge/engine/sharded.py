"""Reads and writes of any box over a sharded layout: the unit of I/O is the shard.

A box is planned in a few array operations: every chunk's grid index, its shard and its id
inside the shard (:meth:`ShardFormat.locate_many`), grouped by shard. Reads fetch each shard once
(whole, or its index and the chunks asked for, from one version of it) and decode its chunks
straight into the output, a group of consecutive shards at a time: their indexes are read, their
chunks looked up, decoded and placed in a fixed number of array operations and native calls for
the whole group, since Python per shard had made the GIL the bound of reads over many shards.
Writes replace each shard through the store's atomic ``update``: a
shard whose every chunk the write covers is built from the new data alone without reading it;
any other shard is read, patched chunk by chunk and written back with a conditional put (a lock
on files), so concurrent writers of one shard never lose each other's chunks. Whole chunks are
encoded before the update, so a lost race re-runs only the merge of partly covered ones.

Threads: one loop per group (reads) or shard (writes) while there are at least as many as
loops; a box inside fewer spreads each one's chunks over the cores instead (nesting both only
made threads fight over two cores).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ChunkDecodeError, VersionChangedError
from ..geometry import Box, Cell
from ..kv.ranges import pack_runs, part_bounds
from ..kv.scratch import scratch
from . import batch_decode, batch_encode, native, parallel, place
from .parallel import default_threads, run_bounded

if TYPE_CHECKING:
    from ..formats.base import ScaleLayout
    from .chunked import ChunkedVolume

#: Attempts at reading a shard that writers keep replacing between its index and its chunks.
_VERSION_RETRIES = 5


@dataclass
class _Shard:
    """The chunks of one shard that a box touches, as arrays: a read of a whole shard of small
    chunks builds no Python object per chunk."""

    key: str
    number: int
    ids: np.ndarray  # (n,) ids inside the shard
    index: np.ndarray  # (n, 3) grid indices
    starts: np.ndarray  # (n, 3) bounds-clipped cell corners
    stops: np.ndarray
    dst_lo: np.ndarray  # (n, 3) where each cell's overlap with the box starts, box-relative
    src_lo: np.ndarray  # ... and cell-relative
    size: np.ndarray  # (n, 3) the overlap's extent

    @property
    def cells(self) -> list[Cell]:
        return [Cell(tuple(i), Box(tuple(a), tuple(b)))
                for i, a, b in zip(self.index.tolist(), self.starts.tolist(), self.stops.tolist())]

    def covered(self) -> np.ndarray:
        """Per cell, whether the box covers it: the overlap starts at the cell's corner and spans
        its whole (bounds-clipped) extent."""
        return (self.src_lo == 0).all(axis=1) & (self.size == self.stops - self.starts).all(axis=1)

    def place(self, k: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices of the box's output, slices of the cell's voxels) of cell ``k``'s overlap with
        the box: built only for the cells that need slices (a whole-shard write gathers its
        chunks without them, and building them for all cost 4 % of it)."""
        d, f, n = self.dst_lo[k].tolist(), self.src_lo[k].tolist(), self.size[k].tolist()
        return tuple(slice(a, a + m) for a, m in zip(d, n)), tuple(slice(a, a + m) for a, m in zip(f, n))


def _plan(layout: ScaleLayout, box: Box) -> list[_Shard]:
    """The chunks of ``box`` grouped by shard, each with its bounds-clipped cell and its id."""
    grid = layout.grid
    region = box.intersect(grid.bounds)
    if region.empty:
        return []
    ranges = [np.arange((a - o) // c, (b - 1 - o) // c + 1, dtype=np.int64)
              for a, b, o, c in zip(region.start, region.stop, grid.origin, grid.chunk_shape)]
    index = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
    shard, ids = layout.sharding.locate_many(index)
    order = np.argsort(shard, kind="stable")
    shard, ids, index = shard[order], ids[order], index[order]
    origin, chunk = np.array(grid.origin), np.array(grid.chunk_shape)
    starts = np.maximum(origin + index * chunk, np.array(grid.bounds.start))
    stops = np.minimum(origin + (index + 1) * chunk, np.array(grid.bounds.stop))
    # where each cell's overlap with the box lands, in array arithmetic rather than Boxes per chunk
    lo, hi = np.maximum(starts, np.array(box.start)), np.minimum(stops, np.array(box.stop))
    dst_lo, src_lo, size = lo - np.array(box.start), lo - starts, hi - lo
    bounds = np.flatnonzero(np.diff(shard)) + 1
    out = []
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(shard)]):
        number = int(shard[a])
        out.append(_Shard(layout.sharding.shard_key(number), number, ids[a:b], index[a:b], starts[a:b], stops[a:b],
                          dst_lo[a:b], src_lo[a:b], size[a:b]))
    return out


def _over_members(fn, members: list, nested: bool, chunk_nbytes: int, loops: int) -> None:
    if nested:  # asked for by _nested, inside this call's own shard loops: spread anyway
        run_bounded(fn, members, chunk_nbytes, loops, local=False)
    else:
        for m in members:
            fn(m)


def _decode(layout: ScaleLayout, data, cell: Cell, key: str, cid: int) -> np.ndarray:
    try:
        return layout.decode(data, cell, key)
    except ChunkDecodeError as e:
        raise ChunkDecodeError(f"chunk {cid} of shard {key!r}: {e}") from e


def _read_shard(vol: ChunkedVolume, layout: ScaleLayout, shard: _Shard) -> dict:
    capacity = layout.sharding.capacity(shard.number)
    for attempt in range(_VERSION_RETRIES):
        try:
            return layout.sharding.read(vol.store, shard.key, shard.ids.tolist(), capacity)
        except VersionChangedError:
            if attempt == _VERSION_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _shard_nbytes(shards: list[_Shard], chunk_nbytes: int) -> int:
    """Memory a shard task holds: its stored chunks, decoded ones and their copies."""
    return chunk_nbytes * max((len(s.ids) for s in shards), default=1)


def _loops(vol: ChunkedVolume) -> int:
    """Loops for shard work: a network store's request concurrency; locally one per core. A shard
    arrives in one request and its chunks then cost CPU only, so the extra loop that hides the
    syscalls of unsharded chunk reads just adds GIL hand-offs here (measured: 2 loops read
    sharded volumes 15-25 % faster than 3 on 2 cores)."""
    return vol.store.io_concurrency or min(default_threads(), parallel.cores())


def _cpu_loops() -> int:
    """Loops for the CPU work inside shards (decoding, placing, encoding chunks): one per core,
    whatever the store. A network store's request concurrency (32) is for waiting on requests:
    splitting a shard's chunks over 32 loops made a full zarr v3 sharded read over S3 take 2.6x
    tensorstore's CPU (measured: 256^3, 8 shards, 137 against 52 ms)."""
    return min(default_threads(), parallel.cores())


def _nested(vol: ChunkedVolume, units: int, unit_nbytes: int) -> bool:
    """Whether the chunks of one unit of work (a shard, a group of shards) should spread over
    the cores: when fewer unit loops run than there are cores, because the box holds few units
    or big ones cap the bytes in flight; but not when this read or write runs in an outer loop
    already (a service's unit), whose sibling loops keep the cores busy."""
    if parallel.inside():
        return False
    unit_loops = min(units, _loops(vol), max(1, parallel.MAX_BYTES_IN_FLIGHT // max(1, unit_nbytes)))
    return unit_loops < _cpu_loops()


#: A group of shards read as one unit holds at most about this many bytes of decoded chunks and
#: stored shards (but one shard, whatever its size): its staging buffer then stays one a thread
#: keeps (place.KEEP_STAGING_BYTES). One group per loop measured fastest: 2 groups on the 2 loops
#: of a 300^3 cutout (27 shards) 19.9 ms, 4 groups 24.6, 16 groups 35.2 (the GIL changes hands
#: and each group's fixed work repeats).
GROUP_BYTES = 32 << 20
#: A local read makes a group per this many decoded bytes at most (one per loop at most): groups on
#: two loops fight over the GIL for their Python work, which a small read does not win back.
#: Measured on 32^3 chunks of 128^3 shards, one group against one per loop: 100^3 5.8 vs 8.8 ms,
#: 150^3 8.6 vs 10.6, 200^3 8.6 vs 8.0, 250^3 20.3 vs 17.6 (raw); 150^3 11.8 vs 12.6, 250^3 31.8
#: vs 28.6 (zstd, whose decoding splits over the cores either way).
MIN_LOCAL_GROUP_BYTES = 8 << 20


class _Group:
    """Consecutive shards of a read handled as one unit: their chunks' arrays joined, so that
    looking chunks up, building copy tables and the native calls happen once for all of them.
    Per shard, Python and numpy cost ~0.4 ms with the GIL held, and a 300^3 cutout touches 27
    shards: the GIL, not the copies, had bounded such reads (measured: 18 of 25 ms)."""

    def __init__(self, shards: list[_Shard]):
        self.shards = shards
        counts = [len(s.ids) for s in shards]
        self.first = np.cumsum([0, *counts])
        self.shard_of = np.repeat(np.arange(len(shards)), counts)
        for name in ("ids", "starts", "stops", "dst_lo", "src_lo", "size"):
            parts = [getattr(s, name) for s in shards]
            setattr(self, name, parts[0] if len(parts) == 1 else np.concatenate(parts))


def _groups(shards: list[_Shard], loops: int, held_bytes: list[int]) -> list[_Group]:
    """``shards`` in consecutive groups, one per loop, of about equal numbers of chunks (the work
    of a group: a group ends where the running count crosses a loop's share, at the nearer end of
    the shard that crosses it), each holding at most :data:`GROUP_BYTES` (``held_bytes``: what
    each shard holds while its group is placed) and at most its share of the shards (a network
    store fetches a group's shards one after another)."""
    total = sum(len(s.ids) for s in shards)
    share = max(total / loops, 1)
    max_shards = -(-len(shards) // loops)
    groups, current, held, before, cut = [], [], 0, 0, share
    for shard, nbytes in zip(shards, held_bytes):
        n = len(shard.ids)
        if current and (held + nbytes > GROUP_BYTES or len(current) == max_shards or before + n / 2 > cut):
            groups.append(_Group(current))
            current, held = [], 0
            while cut < before + n / 2:
                cut += share
        current.append(shard)
        held += nbytes
        before += n
    if current:
        groups.append(_Group(current))
    return groups


@dataclass
class _Fetched:
    """A shard's stored bytes as read for placing many chunks at once: a whole shard, or the wanted
    chunks of one read by ranges (``ranged``); its chunks' (ids, starts, sizes) in ``data``, and
    how those bytes become voxels (``codec``, see :func:`_batch_codec`)."""

    data: bytes | memoryview
    spans: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # None: a whole shard, its index not yet read
    codec: str
    ranged: bool = False

    def chunks(self, layout: ScaleLayout, shard: _Shard) -> dict:
        """The shard's chunks by id, with the shard's data encoding undone, for the checked path."""
        if not self.ranged:
            return layout.sharding.unpack(self.data, shard.key, set(shard.ids.tolist()))
        view = memoryview(self.data)
        return {cid: layout.sharding.decode_data(view[a:a + n], shard.key, cid)
                for cid, a, n in zip(*(x.tolist() for x in self.spans))}


class _RangeParts:
    """Where one group's ranged shards land: page-aligned parts of a buffer this thread keeps (up
    to :data:`GROUP_BYTES`), past that memory of their own. A part never moves once handed out:
    growing the kept buffer leaves the earlier parts in the old one."""

    def __init__(self):
        self.at = 0

    def take(self, nbytes: int, key: str) -> memoryview:
        end = self.at + nbytes
        if end > GROUP_BYTES:
            try:
                return memoryview(mmap.mmap(-1, max(nbytes, 1)))
            except (OverflowError, OSError, ValueError) as e:  # a damaged index (sizes are checked where known)
                raise ChunkDecodeError(f"shard {key!r}: its index points at {nbytes} bytes of chunks ({e})") from e
        part = scratch("shard-ranges", end)[self.at:end]
        self.at = -(-end // 4096) * 4096  # the next part starts on a page too (pack_runs' alignment)
        return part


def _read_ranged(vol: ChunkedVolume, layout: ScaleLayout, shard: _Shard, into: _RangeParts) -> tuple | None:
    """The shard's wanted chunks' stored bytes, located through its index and read by ranges
    straight into a part of ``into``, as (that part, (ids, starts, sizes) in it); None when the
    shard is absent or holds none of them. One shard at a time, so a read over thousands of
    shards holds one descriptor (or one whole value, for stores without ranges) at a time.
    Read into bytes objects per range and joined, these chunks had cost more than whole shards."""
    for attempt in range(_VERSION_RETRIES):
        try:
            with vol.store.range_reader(shard.key) as reader:
                found = layout.sharding.spans(reader, shard.key, set(shard.ids.tolist()))
                if not found:
                    return None
                runs, run_at, span_at, nbytes = pack_runs([(a, a + n) for a, n in found.values()], reader.merge_gap)
                size = reader.known_size()
                if size is not None:  # before sizing the buffer by what a damaged index may claim
                    for a, b in runs:
                        part_bounds(a, b, size, reader.where)
                part = into.take(nbytes, shard.key)
                reader.read_runs(runs, part, run_at)
            return part, (np.array(list(found), np.uint64), np.array(span_at, np.int64),
                          np.array([n for _, n in found.values()], np.int64))
        except VersionChangedError:
            if attempt == _VERSION_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def read_sharded(vol: ChunkedVolume, layout: ScaleLayout, box: Box, out: np.ndarray, fill=None) -> None:
    """Read ``box`` into ``out``: already the fill value (``fill`` None), or uninitialised, when
    the cells of absent chunks and shards are set to ``fill`` here."""
    shards = _plan(layout, box)
    chunk_nbytes = vol._chunk_nbytes(layout)
    # decoded chunks go through one staging buffer and one compiled copy, when that loop runs
    batched = layout.decodes_to_bytes and place.prepare(sum(len(s.ids) for s in shards))
    codec = _batch_codec(layout, batched)
    voxel_bytes = chunk_nbytes // 3  # a decoded chunk alone

    # the others' wanted chunks are read by ranges into one buffer (_read_ranged), which from the
    # page cache costs about what whole shards do (measured), and reads less from a disk
    whole = {s.number for s in shards
             if codec and layout.sharding.reads_whole(len(s.ids), layout.sharding.capacity(s.number))}
    # bytes a shard holds while its group is placed: its decoded chunks, and its stored bytes
    # (all of it when read whole; raw chunks are placed straight from them)
    held = [voxel_bytes * (len(s.ids) + (layout.sharding.capacity(s.number) if s.number in whole else len(s.ids)))
            for s in shards]
    local = vol.store.io_concurrency is None
    loops = _loops(vol)
    if local:  # a small read is one group, its native work split in parts
        loops = max(1, min(loops, sum(len(s.ids) for s in shards) * voxel_bytes // MIN_LOCAL_GROUP_BYTES))
    groups = _groups(shards, loops, held)
    group_nbytes = max((len(g.ids) for g in groups), default=1) * chunk_nbytes
    nested = _nested(vol, len(groups), group_nbytes)
    parts = _cpu_loops() if nested else 1

    def fetch(shard: _Shard, read_before: dict) -> _Fetched | dict | None:
        """The shard's bytes to place at once (:class:`_Fetched`), or its chunks by id for the
        checked path (no batched codec), or None when the shard is absent. With a batched codec
        all of a group's shards are read before, whole or by ranges, and are only handed on here
        (``read_before``: by shard number)."""
        if not codec:
            return _read_shard(vol, layout, shard) or None
        got = read_before[shard.number]
        if got is None:
            return None
        return _Fetched(got, None, codec) if shard.number in whole else _Fetched(*got, codec, ranged=True)

    def place_checked(shard: _Shard, found: dict) -> np.ndarray:
        """Decode the shard's chunks ``found`` one by one (naming any that is bad) and place
        them; the positions placed."""
        if batched:
            return _place_shard(layout, shard, found, out, nested, chunk_nbytes, _cpu_loops())

        def put(member) -> None:
            cell, cid, data, (to, frm) = member
            out[to] = _decode(layout, data, cell, shard.key, cid)[frm]

        ids = shard.ids.tolist()
        present = [k for k, cid in enumerate(ids) if cid in found]
        cells = shard.cells
        _over_members(put, [(cells[k], ids[k], found[ids[k]], shard.place(k)) for k in present], nested, chunk_nbytes,
                      _cpu_loops())
        return np.array(present, np.int64)

    def group_task(group: _Group) -> None:
        placed = np.zeros(len(group.ids), bool)
        # views of a buffer this thread reuses: used up before its next group
        read_before = {}
        if codec:  # whole shards in one call; the others' wanted chunks' stored bytes, placed alike
            whole_shards = [s for s in group.shards if s.number in whole]
            read_before = dict(zip([s.number for s in whole_shards], vol.store.get_many_transient([s.key for s in whole_shards])))
            into = _RangeParts()
            read_before.update((s.number, _read_ranged(vol, layout, s, into)) for s in group.shards if s.number not in whole)
        fetched: dict[int, _Fetched] = {}
        for i, shard in enumerate(group.shards):
            got = fetch(shard, read_before)
            if isinstance(got, _Fetched):
                fetched[i] = got
            elif got:
                placed[group.first[i] + place_checked(shard, got)] = True
        unparsed = [i for i, got in fetched.items() if got.spans is None]
        spans = layout.sharding.chunk_spans_many([fetched[i].data for i in unparsed], [group.shards[i].key for i in unparsed])
        for i, found in zip(unparsed, spans):
            fetched[i].spans = found
        for i in _place_fetched(layout, group, fetched, out, placed, parts):  # shards whose bytes were not as expected
            shard = group.shards[i]
            placed[group.first[i] + place_checked(shard, fetched[i].chunks(layout, shard))] = True
        if fill is not None:
            for (a, b, c), (n0, n1, n2) in zip(group.dst_lo[~placed].tolist(), group.size[~placed].tolist()):
                out[a:a + n0, b:b + n1, c:c + n2] = fill

    run_bounded(group_task, groups, group_nbytes, _loops(vol), local=local)


def _lookup(group: _Group, fetched: dict[int, _Fetched]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which wanted chunks of the ``fetched`` shards they hold: (positions in the group's
    arrays, the index of their shard among ``fetched``, their byte starts and sizes), by one
    sorted lookup of (shard, id) keys for all shards, no call per chunk or shard."""
    slots = list(fetched)
    slot_of = np.full(len(group.shards), -1, np.int64)
    slot_of[slots] = np.arange(len(slots))
    counts = [len(fetched[i].spans[0]) for i in slots]
    cids, starts, sizes = (np.concatenate([fetched[i].spans[j] for i in slots]) for j in range(3))
    cids, src = cids.astype(np.uint64), np.repeat(np.arange(len(slots)), counts)
    wanted = np.flatnonzero(slot_of[group.shard_of] >= 0)
    ids, wanted_src = group.ids[wanted].astype(np.uint64), slot_of[group.shard_of[wanted]]
    top = max(int(cids.max(initial=0)), int(ids.max(initial=0))).bit_length()
    if len(slots) == 1:  # one shard (a network store's groups): its ids alone
        keys, want = cids, ids
    elif top + len(slots).bit_length() <= 64:  # (shard, id) as one integer
        keys, want = (src.astype(np.uint64) << np.uint64(top)) | cids, (wanted_src.astype(np.uint64) << np.uint64(top)) | ids
    else:  # ids too wide to share 64 bits with the shard: compare them as pairs
        pairs = np.dtype([("s", "<i8"), ("c", "<u8")])
        keys, want = np.empty(len(cids), pairs), np.empty(len(ids), pairs)
        keys["s"], keys["c"], want["s"], want["c"] = src, cids, wanted_src, ids
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    # an id listed twice in one shard's index: its last entry, as every dict-building path takes it
    pos = np.maximum(np.searchsorted(keys, want, side="right") - 1, 0)
    hit = keys[pos] == want if len(keys) else np.zeros(len(want), bool)
    j = order[pos[hit]]
    return wanted[hit], src[j], starts[j].astype(np.int64), sizes[j].astype(np.int64)


def _place_fetched(layout: ScaleLayout, group: _Group, fetched: dict[int, _Fetched], out: np.ndarray, placed: np.ndarray,
                   parts: int) -> list[int]:
    """Place the wanted chunks of the ``fetched`` shards in a few native calls for all of them
    and mark them in ``placed``; the group's positions of the shards not placed, whose bytes are
    not what the batched path expects (a compressed stream under a raw encoding, or damage):
    the caller decodes those chunk by chunk, which decompresses them or names the bad chunk."""
    if not fetched:
        return []
    slots = list(fetched)
    pos, src, starts, sizes = _lookup(group, fetched)
    (codec,) = {fetched[i].codec for i in slots}  # a read's shards all come one way (fetch)
    sources = native.Sources([fetched[i].data for i in slots])
    shapes, slot_sizes, _ = stored_slots(layout, group.stops[pos] - group.starts[pos])
    bad = np.zeros(len(slots), bool)
    if codec != "raw":
        copy = batch_decode.CopyOut(out, shapes, slot_sizes, group.src_lo[pos], group.dst_lo[pos], group.size[pos])
        ok = batch_decode.decode_and_place(codec, sources, src, starts, sizes, copy, np.arange(len(pos)), bad, parts)
        placed[pos[ok]] = True
    else:
        bad[src[sizes != slot_sizes]] = True  # a raw chunk must be exactly its voxels
        sel = np.flatnonzero(~bad[src])
        place.place_chunks(out, sources, starts[sel], shapes[sel], group.src_lo[pos[sel]], group.dst_lo[pos[sel]],
                           group.size[pos[sel]], which=src[sel], parts=parts)
        placed[pos[sel]] = True
    return [slots[k] for k in np.flatnonzero(bad).tolist()]


def _batch_codec(layout: ScaleLayout, batched: bool) -> str | None:
    """How the stored bytes of a chunk in a shard become its voxels when many chunks are placed
    in a few native calls: ``"raw"`` (they are its voxels), a compression :mod:`.batch_decode`
    decodes (``"zstd"``, ``"gzip"``: the chunk's codec, or the shard's own data encoding over raw
    voxels), or None (chunk by chunk, through the checked path)."""
    sharding = layout.sharding
    plain = sharding.plain_data
    if layout.voxels_stored_raw and plain:
        return "raw"
    codec = layout.stored_compression if plain else sharding.data_compression if layout.voxels_stored_raw else None
    return codec if batched and codec is not None and batch_decode.load(codec) else None


def stored_slots(layout: ScaleLayout, cell_shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored shapes, byte sizes, byte offsets) of chunks of ``cell_shapes`` laid end to end in a
    staging buffer."""
    shapes = layout.stored_shapes(cell_shapes)
    sizes = shapes.prod(axis=1) * layout.dtype.itemsize
    return shapes, sizes, np.cumsum(sizes) - sizes


def _place_shard(layout: ScaleLayout, shard: _Shard, found: dict, out: np.ndarray, nested: bool, chunk_nbytes: int,
                 loops: int) -> np.ndarray:
    """Decode the shard's chunks into one buffer, each copied in right after its decode (keeping
    all decoded chunks alive first measured 45 % slower: the allocator then keeps returning
    and refaulting memory), then copy all of them into ``out`` in one call; the positions placed."""
    ids = shard.ids.tolist()
    present = [k for k, cid in enumerate(ids) if cid in found]
    sel = np.array(present, np.int64)
    cell_shapes = (shard.stops - shard.starts)[sel]
    shapes, sizes, offsets = stored_slots(layout, cell_shapes)
    spans, cell_shapes = list(zip(offsets.tolist(), sizes.tolist())), cell_shapes.tolist()
    with place.staging(int(sizes.sum())) as staging:

        def decode(j: int) -> None:
            cid = ids[present[j]]
            try:
                buf, _ = layout.decode_bytes(found[cid], cell_shapes[j], shard.key)
                start, n = spans[j]
                if len(buf) != n:  # decode_bytes checks sizes; this guards the layout's stored_shapes
                    raise ChunkDecodeError(f"decoded to {len(buf)} bytes, expected {n}")
                staging[start:start + n] = np.frombuffer(buf, np.uint8)
            except ChunkDecodeError as e:
                raise ChunkDecodeError(f"chunk {cid} of shard {shard.key!r}: {e}") from e

        _over_members(decode, range(len(present)), nested, chunk_nbytes, loops)
        place.place_chunks(out, staging, offsets, shapes, shard.src_lo[sel], shard.dst_lo[sel], shard.size[sel])
    return sel


def write_sharded(vol: ChunkedVolume, layout: ScaleLayout, box: Box, data: np.ndarray, ch: slice,
                  all_channels: bool) -> None:
    shards = _plan(layout, box)
    chunk_nbytes = vol._chunk_nbytes(layout)
    shard_nbytes = _shard_nbytes(shards, chunk_nbytes)
    gather = layout.decodes_to_bytes and all_channels
    # whole chunks gathered and compressed in native calls where the layout's codec runs there
    # and the loops are loaded (a small write does not wait for their build: place.prepare)
    loaded = gather and place.prepare(sum(int(s.covered().sum()) for s in shards))
    codec = batch_encode.codec_of(layout) if loaded else None

    def encode_covered(shard: _Shard, covered: np.ndarray, nested: bool, then):
        """``then(encoded)``, ``encoded`` the covered chunks' stored bytes by id, while the staging
        buffer they may be views of is held."""
        cell_shapes = shard.stops - shard.starts
        cells, ids = shard.cells, shard.ids.tolist()
        whole = np.flatnonzero(covered)
        encoded: dict[int, bytes] = {}
        gathered, sizes = whole[:0], np.zeros(0, np.int64)
        if gather:  # whole chunks stored unpadded: copied out in one call, encoded from the copies
            shapes = layout.stored_shapes(cell_shapes[whole])
            fits = (shapes[:, :3] == cell_shapes[whole]).all(axis=1) & (shapes[:, 3] == layout.num_channels)
            gathered, whole = whole[fits], whole[~fits]
            shapes, sizes, offsets = stored_slots(layout, cell_shapes[gathered])
        room = batch_encode.bounds(*codec, sizes) if codec is not None and len(gathered) else sizes
        # Held until the shard is stored: chunks go into it as views of this buffer.
        with place.staging(int(room.sum())) as buf:  # (a bound is never below its size)
            if codec is not None and len(gathered):
                got = batch_encode.encode_gathered(*codec, data, shapes, shard.dst_lo[gathered], buf,
                                                   _cpu_loops() if nested else 1)
                if got is not None:
                    starts, lengths, done = got
                    view = memoryview(buf)
                    for k, a, n in zip(gathered[done].tolist(), starts[done].tolist(), lengths[done].tolist()):
                        encoded[ids[k]] = view[a:a + n]
                    # any the library did not encode: the checked path encodes them or says why not
                    whole, gathered = np.concatenate([whole, gathered[~done]]), gathered[:0]
            if len(gathered):
                place.gather_chunks(data, buf, offsets, shapes, shard.dst_lo[gathered])
                slots = list(zip(gathered.tolist(), offsets.tolist(), sizes.tolist()))

                def encode_slot(slot) -> None:
                    k, start, n = slot
                    encoded[ids[k]] = vol._encode(layout, buf[start:start + n], cells[k], shard.key, voxel_bytes=True)

                _over_members(encode_slot, slots, nested, chunk_nbytes, _cpu_loops())

            def encode_task(k: int) -> None:
                encoded[ids[k]] = vol._encode(layout, data[shard.place(k)[0]], cells[k], shard.key)

            _over_members(encode_task, whole.tolist(), nested, chunk_nbytes, _cpu_loops())
            return then(encoded)

    replaced: list[_Shard] = []
    merged = shards
    if vol.store.batched_puts and all_channels:
        merged = []
        for s in shards:
            (replaced if _holds_every_chunk(layout, s) and s.covered().all() else merged).append(s)

    def merge_all(shards: list[_Shard], nbytes: int) -> None:
        nested = _nested(vol, len(shards), nbytes)

        def shard_task(shard: _Shard) -> None:
            covered = shard.covered() & all_channels
            cells, ids = shard.cells, shard.ids.tolist()
            partial = [(cells[k], ids[k]) for k in np.flatnonzero(~covered).tolist()]
            encode_covered(shard, covered, nested, lambda encoded: _store_shard(
                vol, layout, shard, box, data, ch, partial, encoded))

        run_bounded(shard_task, shards, nbytes, _loops(vol), local=vol.store.io_concurrency is None)

    if not replaced:
        merge_all(merged, shard_nbytes)
        return
    # A store that drives many PUTs from one thread (KVStore.put_each) gets the shards the write
    # replaces whole, each built when the store takes it (on the encoder threads, a few ahead,
    # when there are more than they have threads); the others are read-modified-written
    # meanwhile. Each half of the write gets half the bound on bytes in flight.
    nbytes = 2 * shard_nbytes if merged else shard_nbytes
    # Built ahead only while the bound holds every shard the encoders build and hold ready
    # besides those in flight: shards of a quarter of it or more are built one at a time.
    room = parallel.MAX_BYTES_IN_FLIGHT // (2 * nbytes)
    bulk = len(replaced) > parallel.encoder_threads() and room > parallel.encoder_threads()
    nested = not bulk and not parallel.inside()  # made one after another in this thread: spread each

    def body(shard: _Shard) -> bytes:
        return encode_covered(shard, np.ones(len(shard.ids), bool), nested, layout.sharding.pack)

    def replace_all() -> None:
        depth = min(2 * parallel.encoder_threads(), room - parallel.encoder_threads())
        values = parallel.ahead(body, replaced, depth) if bulk else map(body, replaced)
        vol.store.put_each([s.key for s in replaced], values, nbytes=2 * nbytes)

    parallel.alongside(replace_all, (lambda: merge_all(merged, nbytes)) if merged else None)


def _holds_every_chunk(layout: ScaleLayout, shard: _Shard) -> bool:
    """Whether ``shard``'s chunks are all the shard holds inside the bounds: a write of every
    channel that covers them all builds the new shard without reading the old one."""
    capacity = layout.sharding.capacity(shard.number)
    return capacity is not None and len(shard.ids) == capacity


def _store_shard(vol: ChunkedVolume, layout: ScaleLayout, shard: _Shard, box: Box, data: np.ndarray, ch: slice,
                 partial: list, encoded: dict) -> None:
    """Write ``encoded`` whole chunks and the ``partial`` cells' merges into the shard, through the
    store's atomic update (a conditional put, or a lock on files)."""
    replaces_all = not partial and _holds_every_chunk(layout, shard)

    def merge(old: bytes | None) -> bytes:  # runs again when a conditional write loses a race
        chunks = {} if old is None else layout.sharding.unpack(old, shard.key)
        for cell, cid in partial:
            region = cell.box.intersect(box)
            stored = chunks.get(cid)
            if stored is None:
                fill = 0 if layout.fill_value is None else layout.fill_value
                chunk = np.full((*cell.box.shape, layout.num_channels), fill, layout.dtype, order="F")
            else:
                chunk = np.array(_decode(layout, stored, cell, shard.key, cid), order="F", copy=True)
            chunk[region.slices(cell.box.start) + (ch,)] = data[region.slices(box.start)]
            chunks[cid] = vol._encode(layout, chunk, cell, shard.key)
        chunks.update(encoded)
        return layout.sharding.pack(chunks)

    try:
        vol.store.update(shard.key, merge, needs_old=not replaces_all)
    except ChunkDecodeError as e:
        raise ChunkDecodeError(
            f"cannot update shard {shard.key!r} in {vol.store.url}: its stored bytes are corrupt ({e}); nothing was written to it"
        ) from e
