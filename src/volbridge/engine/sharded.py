"""Reads and writes of any box over a sharded layout: the unit of I/O is the shard.

A box is planned in a few array operations: every chunk's grid index, its shard and its id
inside the shard (:meth:`ShardFormat.locate_many`), grouped by shard. Reads fetch each shard once
(whole, or its index and the chunks asked for, from one version of it) and decode its chunks
straight into the output. Writes replace each shard through the store's atomic ``update``: a
shard whose every chunk the write covers is built from the new data alone without reading it;
any other shard is read, patched chunk by chunk and written back with a conditional put (a lock
on files), so concurrent writers of one shard never lose each other's chunks. Whole chunks are
encoded before the update, so a lost race re-runs only the merge of partly covered ones.

Threads: one loop per shard while there are at least as many shards as loops; a box inside
fewer shards spreads each shard's chunks over the loops instead (nesting both only made
threads fight over two cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ChunkDecodeError, VersionChangedError
from ..geometry import Box, Cell
from . import batch_decode, parallel, place
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


def _nested(vol: ChunkedVolume, shards: list[_Shard], chunk_nbytes: int) -> bool:
    """Whether a shard's chunks should spread over the cores: when fewer shard loops run than
    there are cores, because the box holds few shards or big shards cap the bytes in flight; but
    not when this read or write runs in an outer loop already (a service's unit), whose sibling
    loops keep the cores busy."""
    if parallel.inside():
        return False
    shard_loops = min(len(shards), _loops(vol), max(1, parallel.MAX_BYTES_IN_FLIGHT // _shard_nbytes(shards, chunk_nbytes)))
    return shard_loops < _cpu_loops()


def read_sharded(vol: ChunkedVolume, layout: ScaleLayout, box: Box, out: np.ndarray, fill=None) -> None:
    """Read ``box`` into ``out``: already the fill value (``fill`` None), or uninitialised, when
    the cells of absent chunks and shards are set to ``fill`` here."""
    shards = _plan(layout, box)
    chunk_nbytes = vol._chunk_nbytes(layout)
    nested = _nested(vol, shards, chunk_nbytes)
    # decoded chunks go through one staging buffer and one compiled copy, when that loop runs
    batched = layout.decodes_to_bytes and place.prepare(sum(len(s.ids) for s in shards))
    whole_codec, ranged_codec = _batch_codec(layout, batched, False), _batch_codec(layout, batched, True)

    def place_stored(codec: str, shard: _Shard, data, spans) -> np.ndarray | None:
        """Chunks stored raw or under a compression decoded in batches, placed from ``data``
        in a few native calls: the positions placed, or None (nothing placed)."""
        if codec == "raw":
            return _place_raw_shard(layout, shard, data, spans, out)
        return _place_decoded_shard(codec, layout, shard, data, spans, out, nested, _cpu_loops())

    def placed_of(shard: _Shard) -> np.ndarray | None:
        """Place the shard's chunks; the positions (in ``shard``'s arrays) of those it holds."""
        if whole_codec and layout.sharding.reads_whole(len(shard.ids), layout.sharding.capacity(shard.number)):
            data = vol.store.get(shard.key)
            if data is None:
                return None
            placed = place_stored(whole_codec, shard, data, layout.sharding.chunk_spans(data, shard.key))
            if placed is not None:
                return placed
            found = layout.sharding.unpack(data, shard.key, set(shard.ids.tolist()))
        else:
            found = _read_shard(vol, layout, shard)
            if found and ranged_codec:
                placed = place_stored(ranged_codec, shard, *_joined(found))
                if placed is not None:
                    return placed
        if not found:
            return None
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

    def shard_task(shard: _Shard) -> None:
        placed = placed_of(shard)
        if fill is not None:
            _fill_absent(out, shard, placed, fill)

    run_bounded(shard_task, shards, _shard_nbytes(shards, chunk_nbytes), _loops(vol), local=vol.store.io_concurrency is None)


def _fill_absent(out: np.ndarray, shard: _Shard, placed: np.ndarray | None, fill) -> None:
    """Set the cells of ``shard`` not among the ``placed`` positions (None: none were) to ``fill``."""
    absent = np.ones(len(shard.ids), bool)
    if placed is not None:
        absent[placed] = False
    for (a, b, c), (n0, n1, n2) in zip(shard.dst_lo[absent].tolist(), shard.size[absent].tolist()):
        out[a:a + n0, b:b + n1, c:c + n2] = fill


def _joined(found: dict) -> tuple[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks read one by one (ranged reads of a shard) as one buffer and their (ids, starts,
    sizes) in it, like a whole shard's :meth:`ShardFormat.chunk_spans`: copying compressed
    bytes once costs far less than decoding them."""
    ids = sorted(found)
    sizes = np.array([len(found[i]) for i in ids], np.int64)
    return b"".join(found[i] for i in ids), (np.array(ids, np.uint64), np.cumsum(sizes) - sizes, sizes)


def _wanted(shard: _Shard, spans: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of the shard's wanted chunks the stored ones hold: (positions in ``shard``'s arrays,
    their byte starts and sizes), found by array lookups, no call per chunk."""
    cids, starts, sizes = spans
    order = np.argsort(cids)
    cids, starts, sizes = cids[order], starts[order], sizes[order]
    wanted = shard.ids.astype(np.uint64)
    pos = np.minimum(np.searchsorted(cids, wanted), max(len(cids) - 1, 0))
    present = np.flatnonzero(cids[pos] == wanted) if len(cids) else np.zeros(0, np.int64)
    pos = pos[present]
    return present, starts[pos].astype(np.int64), sizes[pos].astype(np.int64)


def _place_raw_shard(layout: ScaleLayout, shard: _Shard, data, spans, out: np.ndarray) -> np.ndarray | None:
    """Place the chunks of a whole shard whose chunks are stored as plain voxels straight from its
    bytes; the positions placed. None (nothing placed) when some chunk's size is not its voxels'
    (a compressed stream under a raw encoding, or damage): the caller then decodes chunk by
    chunk, which decompresses or names the bad chunk."""
    present, starts, sizes = _wanted(shard, spans)
    shapes = layout.stored_shapes((shard.stops - shard.starts)[present])
    if not np.array_equal(sizes, shapes.prod(axis=1) * layout.dtype.itemsize):
        return None
    place.place_chunks(out, np.frombuffer(data, np.uint8), starts, shapes, shard.src_lo[present], shard.dst_lo[present],
                       shard.size[present])
    return present


def _batch_codec(layout: ScaleLayout, batched: bool, data_decoded: bool) -> str | None:
    """How the bytes of a chunk in a shard become its voxels when many chunks are placed in a few
    native calls: ``"raw"`` (they are its voxels), a compression :mod:`.batch_decode` decodes
    (``"zstd"``, ``"gzip"``), or None (chunk by chunk). ``data_decoded``: the shard's own data
    encoding (precomputed ``data_encoding``) is already undone, as in chunks of ranged reads."""
    sharding = layout.sharding
    plain = data_decoded or sharding.plain_data
    if layout.voxels_stored_raw and plain:
        return "raw"
    codec = layout.stored_compression if plain else sharding.data_compression if layout.voxels_stored_raw else None
    return codec if batched and codec is not None and batch_decode.load(codec) else None


def _place_decoded_shard(codec: str, layout: ScaleLayout, shard: _Shard, data, spans, out: np.ndarray, nested: bool,
                         loops: int) -> np.ndarray | None:
    """Decompress the wanted ``codec`` chunks of ``data`` straight into a staging buffer, all of
    a shard in one native call per loop (:mod:`.batch_decode`), and place them; the positions
    placed. None (nothing placed) when some chunk does not decode to exactly its voxels: the
    caller then decodes chunk by chunk, which names the bad chunk."""
    present, starts, sizes = _wanted(shard, spans)
    if not len(present):
        return present
    shapes, slot_sizes, offsets = _slots(layout, (shard.stops - shard.starts)[present])
    src = np.frombuffer(data, np.uint8)
    with place.staging(int(slot_sizes.sum())) as staging:
        # a box inside fewer shards than loops splits each shard's chunks over the loops
        parts = np.array_split(np.arange(len(present)), min(loops, len(present)) if nested else 1)
        decoded = []

        def decode(part: np.ndarray) -> None:
            decoded.append(batch_decode.decode_into(codec, src, starts[part], sizes[part], staging, offsets[part],
                                                    slot_sizes[part]) == len(part))

        run_bounded(decode, parts, 1, len(parts), local=False)  # into the staging buffer: no memory of their own
        if not all(decoded):
            return None
        place.place_chunks(out, staging, offsets, shapes, shard.src_lo[present], shard.dst_lo[present], shard.size[present])
    return present


def _slots(layout: ScaleLayout, cell_shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    shapes, sizes, offsets = _slots(layout, cell_shapes)
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
    nested = _nested(vol, shards, chunk_nbytes)
    gather = layout.decodes_to_bytes and all_channels
    if gather:
        place.prepare(sum(int(s.covered().sum()) for s in shards))

    def shard_task(shard: _Shard) -> None:
        cell_shapes = shard.stops - shard.starts
        covered = shard.covered() & all_channels
        cells, ids = shard.cells, shard.ids.tolist()
        whole = np.flatnonzero(covered)
        partial = [(cells[k], ids[k]) for k in np.flatnonzero(~covered).tolist()]
        encoded: dict[int, bytes] = {}
        gathered, sizes = whole[:0], np.zeros(0, np.int64)
        if gather:  # whole chunks stored unpadded: copied out in one call, encoded from the copies
            shapes = layout.stored_shapes(cell_shapes[whole])
            fits = (shapes[:, :3] == cell_shapes[whole]).all(axis=1) & (shapes[:, 3] == layout.num_channels)
            gathered, whole = whole[fits], whole[~fits]
            shapes, sizes, offsets = _slots(layout, cell_shapes[gathered])
        # Held until the shard is stored: raw chunks go into it as views of this buffer.
        with place.staging(int(sizes.sum())) as buf:
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
            _store_shard(vol, layout, shard, box, data, ch, partial, encoded, int(covered.sum()))

    run_bounded(shard_task, shards, _shard_nbytes(shards, chunk_nbytes), _loops(vol), local=vol.store.io_concurrency is None)


def _store_shard(vol: ChunkedVolume, layout: ScaleLayout, shard: _Shard, box: Box, data: np.ndarray, ch: slice,
                 partial: list, encoded: dict, num_covered: int) -> None:
    """Write ``encoded`` whole chunks and the ``partial`` cells' merges into the shard, through the
    store's atomic update (a conditional put, or a lock on files)."""
    capacity = layout.sharding.capacity(shard.number)
    replaces_all = not partial and capacity is not None and num_covered == capacity

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
