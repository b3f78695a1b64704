"""Shards: many chunks in one stored object, found through an index inside it.

Zarr v3's ``sharding_indexed`` and neuroglancer's ``neuroglancer_uint64_sharded_v1`` differ only
in how a chunk finds its shard and how the index is laid out, so the engine sees one shape: a
:class:`ShardFormat` says which shard and which id a grid cell has, reads the bytes of some ids
from one version of a shard, and packs or unpacks a whole shard. The chunks' own codecs stay in
the layout (``decode``/``encode`` of one chunk), exactly as for unsharded chunks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np

from ..errors import ChunkDecodeError
from ..kv import KVStore
from ..kv.ranges import RangeReader

#: Reading at least this share of a shard's chunks fetches the whole object (:meth:`ShardFormat.reads_whole`).
WHOLE_SHARD_READ_FRACTION = 0.5


class ShardFormat(ABC):
    """How one scale packs its chunks into shard objects. Chunks are given as grid indices
    ``(x, y, z)`` in numpy arrays: a read of thousands of chunks is planned in a few array
    operations rather than a Python call per chunk."""

    def locate_many(self, grid_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, id inside the shard) of each row of ``grid_index`` (n, 3)."""
        raise NotImplementedError(f"{type(self).__name__} holds objects by id, not grid chunks")

    def block_shape(self) -> tuple[int, int, int] | None:
        """Chunks per shard along (x, y, z) when shards are aligned blocks of the chunk grid, else
        None (hashed shards scatter their chunks)."""
        return None

    def shard_key(self, shard: int) -> str:
        """The key of shard number ``shard``."""
        raise NotImplementedError(f"{type(self).__name__} holds objects by id, not grid chunks")

    @abstractmethod
    def capacity(self, shard: int) -> int | None:
        """How many chunks inside the bounds belong to shard number ``shard``, or None when that
        is too costly to know (a write then always reads the shard before replacing it)."""

    #: Whether stored chunks sit in the shard as their own encoded bytes (no shard-level data
    #: encoding), so :meth:`chunk_spans` locates them.
    plain_data: bool = True
    #: The compression (a :mod:`volbridge.compression` name) the shard applies to each chunk's
    #: encoded bytes (precomputed ``data_encoding: gzip``), if any: :meth:`chunk_spans` then
    #: locates the compressed streams.
    data_compression: str | None = None

    def chunk_spans(self, data, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, byte starts, byte sizes) of every chunk a whole stored shard holds, each checked to
        lie inside it: a read of many chunks looks them up in arrays, not one by one."""
        raise NotImplementedError(f"{type(self).__name__} does not list its chunks' spans")

    def chunk_spans_many(self, datas: list, keys: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`chunk_spans` of several whole shards (a format whose indexes cost Python per
        shard reads them all at once)."""
        return [self.chunk_spans(d, k) for d, k in zip(datas, keys)]

    def reads_whole(self, num_ids: int, capacity: int | None) -> bool:
        """Whether reading ``num_ids`` chunks fetches the whole object rather than its index and
        then each chunk: fewer round trips, and no index request at all."""
        return capacity is not None and num_ids >= WHOLE_SHARD_READ_FRACTION * capacity

    @abstractmethod
    def unpack(self, data, key: str, ids: set[int] | None = None) -> dict[int, bytes | memoryview]:
        """The chunks of a whole stored shard (those of ``ids``, or all), by id, with the shard's
        own data encoding undone (views of ``data`` where no decoding was needed)."""

    @abstractmethod
    def pack(self, chunks: dict[int, bytes]) -> bytes:
        """A whole shard holding ``chunks`` (id -> a chunk's encoded bytes)."""

    @abstractmethod
    def spans(self, reader: RangeReader, key: str, ids: set[int]) -> dict[int, tuple[int, int]] | None:
        """Where each of ``ids`` that the shard holds sits in it, ``{id: (start, size)}``, from its
        index read through ``reader`` (one version of it); None when the shard is absent."""

    def decode_data(self, data, key: str, cid: int):
        """Chunk ``cid``'s stored bytes in shard ``key`` with the shard's own data encoding undone."""
        return data

    def read_ids(self, reader: RangeReader, key: str, ids: set[int]) -> dict[int, bytes] | None:
        """The chunks of ``ids`` that the shard holds, through index lookups and ranged reads of
        one version of it; None when the shard is absent."""
        found = self.spans(reader, key, ids)
        if found is None:
            return None
        cids = list(found)
        datas = reader.read_many([(found[c][0], found[c][0] + found[c][1]) for c in cids])
        return {c: self.decode_data(d, key, c) for c, d in zip(cids, datas)}

    def read(self, store: KVStore, key: str, ids: Iterable[int], capacity: int | None) -> dict[int, bytes | memoryview]:
        """The chunks of ``ids`` present in shard ``key`` ({} for an absent shard)."""
        ids = set(ids)
        if self.reads_whole(len(ids), capacity):
            data = store.get(key)
            if data is None:
                return {}
            return self.unpack(data, key, ids)
        with store.range_reader(key) as reader:
            return self.read_ids(reader, key, ids) or {}


def shard_error(key: str, problem: str) -> ChunkDecodeError:
    return ChunkDecodeError(f"shard {key!r}: {problem}")


def check_span(key: str, what: str, start: int, end: int, size: int) -> None:
    """A byte span an index gives must lie inside the shard."""
    if not 0 <= start <= end <= size:
        raise shard_error(key, f"{what} spans bytes {start}-{end}, outside the shard's {size} bytes")
