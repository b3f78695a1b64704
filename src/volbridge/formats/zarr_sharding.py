"""Zarr v3 ``sharding_indexed``: inner chunks packed into one object per outer chunk.

The index is a uint64 array of shape ``chunks_per_shard + [2]`` in C order, ``(offset, nbytes)``
per inner chunk with absolute offsets, ``2**64 - 1`` twice for an absent chunk, encoded by the
fixed-size ``index_codecs`` (``bytes``, optionally ``crc32c``) at the start or the end of the
shard (``shared/specs/formats.md`` section 3). Inner-chunk ids here are the C-order position of
the chunk inside its shard.
"""

from __future__ import annotations

import numpy as np

from ..codecs.compression import Crc32c
from ..errors import MetadataError, UnsupportedError
from ..kv.ranges import RangeReader
from .sharding import ShardFormat, check_span, shard_error

EMPTY = 2**64 - 1


class ZarrShardIndexCodec:
    """The index's own codec chain: ``bytes`` (either endian), then optionally ``crc32c``."""

    def __init__(self, codecs: list, where: str):
        names = [c.get("name") if isinstance(c, dict) else c for c in codecs or []]
        if not names or names[0] != "bytes" or any(n != "crc32c" for n in names[1:]) or len(names) > 2:
            raise UnsupportedError(
                f"{where}: sharding index_codecs {names} are not supported (bytes, optionally followed by crc32c)"
            )
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        if endian not in ("little", "big"):
            raise MetadataError(f"{where}: index endian must be 'little' or 'big', got {endian!r}")
        self.dtype = np.dtype("<u8" if endian == "little" else ">u8")
        self.crc = Crc32c() if len(names) == 2 else None

    def size(self, n: int) -> int:
        return 16 * n + (4 if self.crc else 0)

    def decode(self, data: bytes, n: int) -> np.ndarray:
        if self.crc is not None:
            data = self.crc.decompress(data)
        return np.frombuffer(data, self.dtype).reshape(n, 2)

    def encode(self, table: np.ndarray) -> bytes:
        data = table.astype(self.dtype).tobytes()
        return self.crc.compress(data) if self.crc is not None else data


class ZarrSharding(ShardFormat):
    """``chunks_per_shard`` and ``grid_shape`` are in the array's dimension order (leading axes
    first, then z, y, x); ``key_of`` names the shard at an outer-grid index (the array's chunk
    key encoding); ``lead`` is the inner-chunk index on the leading axes (a channel chunk)."""

    def __init__(self, chunks_per_shard: tuple[int, ...], grid_shape: tuple[int, ...], index: ZarrShardIndexCodec,
                 index_at_end: bool, key_of, lead: tuple[int, ...] = ()):
        self.cps = chunks_per_shard
        self.n = int(np.prod(chunks_per_shard))
        self.grid_shape = grid_shape  # inner chunks per dimension over the whole array
        self.shard_grid = tuple(-(-g // c) for g, c in zip(grid_shape, chunks_per_shard))
        self.index = index
        self.at_end = index_at_end
        self.key_of = key_of
        self.lead = lead

    def locate_many(self, grid_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(grid_index, dtype=np.int64).reshape(-1, 3)[:, ::-1]  # z, y, x
        idx = np.concatenate([np.tile(np.array(self.lead, dtype=np.int64), (len(idx), 1)), idx], axis=1)
        cps = np.array(self.cps, dtype=np.int64)
        shard = np.ravel_multi_index(tuple((idx // cps).T), self.shard_grid)
        inner = np.ravel_multi_index(tuple((idx % cps).T), self.cps)
        return shard.astype(np.int64), inner.astype(np.uint64)

    def block_shape(self) -> tuple[int, int, int]:
        return tuple(self.cps[-3:][::-1])  # type: ignore[return-value]

    def shard_key(self, shard: int) -> str:
        return self.key_of(tuple(int(i) for i in np.unravel_index(shard, self.shard_grid)))

    def capacity(self, shard: int) -> int | None:
        n = 1
        # the shard's grid position, C order (last axis fastest), in Python ints: called per shard read
        for c, g, s in zip(reversed(self.cps), reversed(self.grid_shape), reversed(self.shard_grid)):
            shard, i = divmod(shard, s)
            n *= max(0, min(c, g - i * c))
        return n

    # -- the index ----------------------------------------------------------------------------
    def _table(self, raw: bytes | None, key: str) -> np.ndarray:
        try:
            return self.index.decode(raw, self.n)
        except Exception as e:
            raise shard_error(key, f"its index cannot be decoded ({e})") from e

    def _index_span(self, size: int) -> tuple[int, int]:
        isize = self.index.size(self.n)
        return (size - isize, size) if self.at_end else (0, isize)

    def chunk_spans(self, data, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        isize = self.index.size(self.n)
        if len(data) < isize:
            raise shard_error(key, f"{len(data)} bytes cannot hold its {isize}-byte index (truncated?)")
        a, b = self._index_span(len(data))
        table = self._table(data[a:b], key)
        present = np.flatnonzero(table[:, 0] != EMPTY)
        offs, sizes = table[present, 0], table[present, 1]
        bad = (offs > len(data)) | (sizes > len(data) - np.minimum(offs, len(data)))
        if bad.any():
            i = int(np.argmax(bad))
            check_span(key, f"inner chunk {int(present[i])}", int(offs[i]), int(offs[i]) + int(sizes[i]), len(data))
        return present.astype(np.uint64), offs, sizes

    def unpack(self, data, key: str, ids: set[int] | None = None) -> dict[int, memoryview]:
        cids, offs, sizes = self.chunk_spans(data, key)
        view = memoryview(data)
        return {i: view[o:o + n] for i, o, n in zip(cids.tolist(), offs.tolist(), sizes.tolist()) if ids is None or i in ids}

    def spans(self, reader: RangeReader, key: str, ids: set[int]) -> dict[int, tuple[int, int]] | None:
        isize = self.index.size(self.n)
        raw = reader.read(-isize) if self.at_end else reader.read(0, isize)
        if raw is None:
            return None
        table = self._table(raw, key)
        out = {}
        for i in sorted(ids):
            off, nbytes = int(table[i, 0]), int(table[i, 1])
            if off == EMPTY:
                continue
            if off + nbytes > EMPTY:
                raise shard_error(key, f"inner chunk {i} has an invalid span {off}+{nbytes}")
            out[i] = (off, nbytes)
        return out

    def pack(self, chunks: dict[int, bytes]) -> bytes:
        isize = self.index.size(self.n)
        table = np.full((self.n, 2), EMPTY, dtype=np.uint64)
        pos = 0 if self.at_end else isize
        for i in sorted(chunks):
            table[i] = (pos, len(chunks[i]))
            pos += len(chunks[i])
        body = [chunks[i] for i in sorted(chunks)]
        index = self.index.encode(table)
        # one join: concatenating the joined body with the index would copy the shard twice
        return b"".join([*body, index] if self.at_end else [index, *body])
