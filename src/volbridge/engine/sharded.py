"""Reads and writes of any box over a sharded layout: the unit of I/O is the shard.

Reads group the box's cells by shard; each shard is fetched once (whole, or its index and the
chunks asked for, from one version of it) and its chunks decode in parallel into the output.
Writes group the same way and replace each shard through the store's atomic ``update``: a shard
whose every chunk the write covers is built from the new data alone without reading it; any other
shard is read, patched chunk by chunk and written back with a conditional put (a lock on files),
so concurrent writers of one shard never lose each other's chunks. Whole chunks are encoded
before the update, so a lost race re-runs only the merge of partly covered ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ChunkDecodeError, VersionChangedError
from ..geometry import Box, Cell
from .parallel import run_bounded

if TYPE_CHECKING:
    from ..formats.base import ScaleLayout
    from .chunked import ChunkedVolume

#: Attempts at reading a shard that writers keep replacing between its index and its chunks.
_VERSION_RETRIES = 5


def _by_shard(layout: ScaleLayout, cells) -> list[tuple[str, list[tuple[Cell, int]]]]:
    groups: dict[str, list[tuple[Cell, int]]] = defaultdict(list)
    for cell in cells:
        key, cid = layout.sharding.locate(cell)
        groups[key].append((cell, cid))
    return list(groups.items())


def _shard_nbytes(shards, chunk_nbytes: int) -> int:
    """Memory a shard task holds: its stored chunks, decoded ones and their copies."""
    return chunk_nbytes * max((len(members) for _, members in shards), default=1)


def _decode(layout: ScaleLayout, data: bytes, cell: Cell, key: str, cid: int) -> np.ndarray:
    try:
        return layout.decode(data, cell, key)
    except ChunkDecodeError as e:
        raise ChunkDecodeError(f"chunk {cid} of shard {key!r}: {e}") from e


def read_sharded(vol: ChunkedVolume, layout: ScaleLayout, box: Box, out: np.ndarray) -> None:
    shards = _by_shard(layout, layout.grid.cells(box))
    chunk_nbytes = vol._chunk_nbytes(layout)

    def shard_task(item) -> None:
        key, members = item
        found = _read_shard(vol, layout, key, [cid for _, cid in members])

        def chunk_task(member) -> None:
            cell, cid = member
            data = found.get(cid)
            if data is None:
                return  # absent chunk: already the fill value
            region = cell.box.intersect(box)
            out[region.slices(box.start)] = _decode(layout, data, cell, key, cid)[region.slices(cell.box.start)]

        run_bounded(chunk_task, members, chunk_nbytes)

    run_bounded(shard_task, shards, _shard_nbytes(shards, chunk_nbytes), vol.store.io_concurrency)


def _read_shard(vol: ChunkedVolume, layout: ScaleLayout, key: str, ids: list[int]) -> dict[int, bytes]:
    for attempt in range(_VERSION_RETRIES):
        try:
            return layout.sharding.read(vol.store, key, ids)
        except VersionChangedError:
            if attempt == _VERSION_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def write_sharded(vol: ChunkedVolume, layout: ScaleLayout, box: Box, data: np.ndarray, ch: slice,
                  all_channels: bool) -> None:
    shards = _by_shard(layout, layout.grid.cells(box))
    chunk_nbytes = vol._chunk_nbytes(layout)

    def shard_task(item) -> None:
        key, members = item
        whole, partial = [], []
        for cell, cid in members:
            covered = cell.box.intersect(box) == cell.box and all_channels
            (whole if covered else partial).append((cell, cid))
        encoded: dict[int, bytes] = {}

        def encode_task(member) -> None:
            cell, cid = member
            region = cell.box.intersect(box)
            encoded[cid] = vol._encode(layout, data[region.slices(box.start)], cell, key)

        run_bounded(encode_task, whole, chunk_nbytes)
        capacity = layout.sharding.capacity(key)
        replaces_all = not partial and capacity is not None and len(whole) == capacity

        def merge(old: bytes | None) -> bytes:  # runs again when a conditional write loses a race
            chunks = {} if old is None else layout.sharding.unpack(old, key)
            for cell, cid in partial:
                region = cell.box.intersect(box)
                stored = chunks.get(cid)
                if stored is None:
                    fill = 0 if layout.fill_value is None else layout.fill_value
                    chunk = np.full((*cell.box.shape, layout.num_channels), fill, layout.dtype, order="F")
                else:
                    chunk = np.array(_decode(layout, stored, cell, key, cid), order="F", copy=True)
                chunk[region.slices(cell.box.start) + (ch,)] = data[region.slices(box.start)]
                chunks[cid] = vol._encode(layout, chunk, cell, key)
            chunks.update(encoded)
            return layout.sharding.pack(chunks)

        try:
            vol.store.update(key, merge, needs_old=not replaces_all)
        except ChunkDecodeError as e:
            raise ChunkDecodeError(
                f"cannot update shard {key!r} in {vol.store.url}: its stored bytes are corrupt ({e}); nothing was written to it"
            ) from e

    run_bounded(shard_task, shards, _shard_nbytes(shards, chunk_nbytes), vol.store.io_concurrency)
