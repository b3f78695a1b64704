"""Neuroglancer's ``neuroglancer_uint64_sharded_v1``: chunks by hashed id in shard files.

A chunk's id is the compressed Morton code of its grid position; ``hash(id >> preshift_bits)``
picks the minishard (low ``minishard_bits``) and the shard (the next ``shard_bits``). A shard file
is a fixed index of ``[start, end)`` per minishard, then (as CloudVolume writes them) the chunk
data grouped by minishard, then the minishard indexes: delta-coded ``[ids, offsets, sizes]``
tables. Facts: ``shared/specs/formats.md`` sections 1.6-1.7, checked against tensorstore and
CloudVolume in the tests. The same shard files hold meshes and skeletons keyed by segment id,
so the shard codec here knows nothing of volumes; :class:`PrecomputedVolumeSharding` adds the
chunk grid.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..compression import compress, decompress, decompress_many
from ..errors import ChunkDecodeError, MetadataError, UnsupportedError
from ..kv.ranges import RangeReader
from .sharding import ShardFormat, check_span, shard_error

HASHES = ("identity", "murmurhash3_x86_128")
ENCODINGS = ("raw", "gzip")
#: Grids up to this many chunks are enumerated once to know how many chunks each shard holds
#: (so writes covering a whole shard skip reading it); larger ones always read-modify-write.
_CAPACITY_LIMIT = 1 << 22


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def murmurhash3_x86_128_low64(keys: np.ndarray) -> np.ndarray:
    """Low 64 bits of MurmurHash3_x86_128 (seed 0) of each uint64 key's 8 little-endian bytes.

    Vectorised: an 8-byte key has no 16-byte body block, only the tail (two 32-bit lanes) and
    the finalisation, so the whole hash is a handful of uint32 array operations.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        k1 = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        k2 = (keys >> np.uint64(32)).astype(np.uint32)
        c1, c2, c3, c4 = (np.uint32(c) for c in (0x239B961B, 0xAB0E9789, 0x38B34AE5, 0xA1E38B93))
        del c4  # the third and fourth lanes get no tail bytes from an 8-byte key
        zero = np.zeros_like(k1)
        h1, h2, h3, h4 = zero.copy(), zero.copy(), zero.copy(), zero.copy()
        k2 = _rotl32(k2 * c2, 16) * c3
        h2 ^= k2
        k1 = _rotl32(k1 * c1, 15) * c2
        h1 ^= k1
        n = np.uint32(8)
        h1 ^= n
        h2 ^= n
        h3 ^= n
        h4 ^= n
        h1 = h1 + h2 + h3 + h4
        h2, h3, h4 = h2 + h1, h3 + h1, h4 + h1
        h1, h2, h3, h4 = _fmix32(h1), _fmix32(h2), _fmix32(h3), _fmix32(h4)
        h1 = h1 + h2 + h3 + h4
        h2 = h2 + h1
    return h1.astype(np.uint64) | (h2.astype(np.uint64) << np.uint64(32))


def compressed_morton(grid_index: np.ndarray, grid_shape) -> np.ndarray:
    """Compressed Morton codes of ``grid_index`` rows ``(x, y, z)`` on a grid of ``grid_shape``:
    bits interleaved x, y, z, skipping a dimension once its own bits run out. Each axis's bits
    land in places of their own, so the code is the OR of one table lookup per axis (the bit loop
    cost ~0.1 ms of numpy calls per read of a few hundred chunks)."""
    g = np.asarray(grid_index, dtype=np.uint64).reshape(-1, 3)
    tables = _morton_tables(tuple(int(n) for n in grid_shape))
    if tables is not None:
        (tx, mx), (ty, my), (tz, mz) = tables
        return tx[g[:, 0] & mx] | ty[g[:, 1] & my] | tz[g[:, 2] & mz]
    out = np.zeros(len(g), dtype=np.uint64)
    for d, places in enumerate(_morton_places(tuple(grid_shape))):
        for i, j in enumerate(places):
            out |= ((g[:, d] >> np.uint64(i)) & np.uint64(1)) << np.uint64(j)
    return out


def _morton_places(grid_shape: tuple) -> list[list[int]]:
    """Per axis, the code bit that each of its coordinate's bits goes to."""
    bits = [max(0, math.ceil(math.log2(n))) if n > 0 else 0 for n in grid_shape]
    places: list[list[int]] = [[], [], []]
    j = 0
    for i in range(max(bits, default=0)):
        for d in range(3):
            if i < bits[d]:
                places[d].append(j)
                j += 1
    return places


@functools.lru_cache(maxsize=16)
def _morton_tables(grid_shape: tuple) -> tuple | None:
    """Per axis, (the code part of every coordinate below the axis's power of two, the mask of its
    bits); None for grids too big to tabulate (over 65536 chunks an axis: the bit loop serves those)."""
    places = _morton_places(grid_shape)
    if any(len(p) > 16 for p in places):  # 512 KiB an axis at most
        return None
    out = []
    for p in places:
        c = np.arange(1 << len(p), dtype=np.uint64)
        table = np.zeros(len(c), dtype=np.uint64)
        for i, j in enumerate(p):
            table |= ((c >> np.uint64(i)) & np.uint64(1)) << np.uint64(j)
        table.flags.writeable = False
        out.append((table, np.uint64((1 << len(p)) - 1)))
    return tuple(out)


class ShardingSpec:
    """A parsed ``sharding`` object: which shard and minishard an id belongs to."""

    def __init__(self, spec: dict, where: str):
        if spec.get("@type") != "neuroglancer_uint64_sharded_v1":
            raise UnsupportedError(f"{where}: sharding @type {spec.get('@type')!r} is not neuroglancer_uint64_sharded_v1")
        for name in ("preshift_bits", "minishard_bits", "shard_bits"):
            v = spec.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 64:
                raise MetadataError(f"{where}: sharding {name!r} must be an integer in 0..64, got {v!r}")
        if spec["minishard_bits"] + spec["shard_bits"] > 64:
            raise MetadataError(f"{where}: minishard_bits + shard_bits exceed 64")
        if spec.get("hash") not in HASHES:
            raise MetadataError(f"{where}: sharding hash {spec.get('hash')!r} is not one of {', '.join(HASHES)}")
        for name in ("minishard_index_encoding", "data_encoding"):
            if spec.get(name, "raw") not in ENCODINGS:
                raise MetadataError(f"{where}: sharding {name} {spec.get(name)!r} is not one of {', '.join(ENCODINGS)}")
        self.spec = spec
        self.preshift = spec["preshift_bits"]
        self.minishard_bits = spec["minishard_bits"]
        self.shard_bits = spec["shard_bits"]
        self.hash = spec["hash"]
        self.index_gzip = spec.get("minishard_index_encoding", "raw") == "gzip"
        self.data_gzip = spec.get("data_encoding", "raw") == "gzip"
        self.index_bytes = 16 << self.minishard_bits
        self.digits = math.ceil(self.shard_bits / 4)

    def hashed(self, ids: np.ndarray) -> np.ndarray:
        shifted = np.asarray(ids, dtype=np.uint64) >> np.uint64(self.preshift)
        return shifted if self.hash == "identity" else murmurhash3_x86_128_low64(shifted)

    def shard_and_minishard(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self.hashed(ids)
        minishard = h & np.uint64((1 << self.minishard_bits) - 1)
        shard = (h >> np.uint64(self.minishard_bits)) & np.uint64((1 << self.shard_bits) - 1)
        return shard, minishard

    def shard_name(self, shard: int) -> str:
        return f"{shard:0{self.digits}x}.shard" if self.digits else f"{shard:x}.shard"


class PrecomputedShardCodec(ShardFormat):
    """Shard files of one ``sharding`` spec under ``prefix`` (a scale key, a mesh directory),
    keyed by any uint64 ids."""

    def __init__(self, spec: ShardingSpec, prefix: str = ""):
        self.spec = spec
        self.prefix = f"{prefix}/" if prefix else ""

    def key_of_id(self, cid: int) -> str:
        shard, _ = self.spec.shard_and_minishard(np.array([cid], dtype=np.uint64))
        return self.shard_key(int(shard[0]))

    def shard_key(self, shard: int) -> str:
        return self.prefix + self.spec.shard_name(shard)

    def capacity(self, shard: int) -> int | None:
        return None

    # -- decoding -----------------------------------------------------------------------------
    def _shard_index(self, raw: bytes, key: str) -> np.ndarray:
        if len(raw) < self.spec.index_bytes:
            raise shard_error(key, f"{len(raw)} bytes cannot hold its {self.spec.index_bytes}-byte shard index (truncated?)")
        return np.frombuffer(raw, "<u8", count=2 << self.spec.minishard_bits).reshape(-1, 2)

    def _minishards(self, raws: list, where: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(ids, absolute starts, sizes) of every entry of the minishard indexes ``raws`` (stored
        bytes of the minishards ``where`` names as (shard key, number)), and how many entries
        each holds, decoded together in a fixed number of array operations (a read touches
        dozens of shards, each with several minishards): their delta coding restarts in each, so
        one cumulative sum serves all with each segment's restart folded in."""
        if self.spec.index_gzip:
            try:
                raws = decompress_many("gzip", raws)
            except ChunkDecodeError as e:
                key, m = where[e.index]
                raise shard_error(key, f"minishard {m} index: {e}") from e
        parts, entries = [], []
        for raw, (key, m) in zip(raws, where):
            if len(raw) % 24:
                raise shard_error(key, f"minishard {m} index has {len(raw)} bytes, not a multiple of 24")
            entries.append(len(raw) // 24)
            if raw:
                parts.append(raw)
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), entries
        flat = np.frombuffer(parts[0] if len(parts) == 1 else b"".join(parts), "<u8")
        if len(parts) == 1:
            table = flat.reshape(3, -1)
        else:  # each index is 3 rows (id deltas, start deltas, sizes) of its own length
            counts = np.array([len(p) // 24 for p in parts])
            first = np.cumsum(counts) - counts
            col = np.arange(len(flat) // 3) + np.repeat(2 * first, counts)
            row = np.repeat(counts, counts)
            table = flat[np.stack([col, col + row, col + 2 * row])]
        sizes = table[2]
        # start_i = end_{i-1} + delta_i = start_{i-1} + size_{i-1} + delta_i, and start_{-1} + size_{-1}
        # is the end of the shard index: ids and starts are both cumulative sums of a row
        x = table[:2].astype(np.uint64)  # a copy, summed in place (uint64 wraps, as the format's deltas may)
        x[1, 1:] += sizes[:-1]
        if len(parts) > 1:
            x[1, first[1:]] -= sizes[first[1:] - 1]  # no previous entry across minishards
            # restart the sums at each minishard: its first entry takes off the previous one's total
            x[:, first[1:]] -= np.add.reduceat(x, first, axis=1)[:, :-1]
        np.cumsum(x, axis=1, out=x)
        x[1] += np.uint64(self.spec.index_bytes)
        return x[0], x[1], sizes, entries

    def decode_data(self, data, key: str, cid: int) -> bytes:
        if not self.spec.data_gzip:
            return data
        try:
            return decompress("gzip", data)
        except ChunkDecodeError as e:
            raise shard_error(key, f"chunk {cid}: {e}") from e

    @property
    def plain_data(self) -> bool:
        return not self.spec.data_gzip

    @property
    def data_compression(self) -> str | None:
        return "gzip" if self.spec.data_gzip else None

    def chunk_spans(self, data, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.chunk_spans_many([data], [key])[0]

    def chunk_spans_many(self, datas: list, keys: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`chunk_spans` of many shards, their indexes read in a fixed number of array
        operations for all (a shard's took ~0.13 ms of Python alone), but the decompression of
        each gzip'd minishard index."""
        if not datas:
            return []
        sizes = np.array([len(d) for d in datas], np.int64)
        base = self.spec.index_bytes
        for d, k in zip(datas, keys):
            if len(d) < base:
                self._shard_index(d, k)  # raises, naming the shard
        heads = b"".join(memoryview(d)[:base] for d in datas)
        tables = np.frombuffer(heads, "<u8").reshape(len(datas), -1, 2)
        shard, number = np.nonzero(tables[:, :, 0] != tables[:, :, 1])
        a, b = tables[shard, number, 0], tables[shard, number, 1]
        room = (sizes[shard] - base).astype(np.uint64)  # every shard here holds its index
        bad = (a > b) | (b > room)
        if bad.any():
            i = int(np.argmax(bad))
            check_span(keys[shard[i]], f"minishard {number[i]} index", base + int(a[i]), base + int(b[i]), int(sizes[shard[i]]))
        shard, number = shard.tolist(), number.tolist()
        raws = [memoryview(datas[i])[base + x:base + y] for i, x, y in zip(shard, a.tolist(), b.tolist())]
        cids, starts, lengths, entries = self._minishards(raws, [(keys[i], m) for i, m in zip(shard, number)])
        of = np.repeat(np.array(shard, np.int64), entries)
        end = sizes[of].astype(np.uint64)
        bad = (starts > end) | (lengths > end - np.minimum(starts, end))
        if bad.any():
            i = int(np.argmax(bad))
            check_span(keys[of[i]], f"chunk {int(cids[i])}", int(starts[i]), int(starts[i]) + int(lengths[i]), int(end[i]))
        ends = np.searchsorted(of, np.arange(1, len(datas) + 1)).tolist()
        return [(cids[a:b], starts[a:b], lengths[a:b]) for a, b in zip([0, *ends], ends)]

    def unpack(self, data, key: str, ids: set[int] | None = None) -> dict[int, bytes | memoryview]:
        cids, starts, sizes = self.chunk_spans(data, key)
        view = memoryview(data)
        return {cid: self.decode_data(view[start:start + n], key, cid)
                for cid, start, n in zip(cids.tolist(), starts.tolist(), sizes.tolist()) if ids is None or cid in ids}

    def spans(self, reader: RangeReader, key: str, ids: set[int]) -> dict[int, tuple[int, int]] | None:
        """Where each of ``ids`` the shard holds sits in it, ``{id: (start, size)}``, from its
        shard index and the minishard indexes they need (read concurrently); None when absent."""
        head = reader.read(0, self.spec.index_bytes)
        if head is None:
            return None
        table = self._shard_index(head, key)
        wanted = np.array(sorted(ids), dtype=np.uint64)
        _, minis = self.spec.shard_and_minishard(wanted)
        base = self.spec.index_bytes
        needed = [m for m in np.unique(minis).tolist() if table[m, 0] != table[m, 1]]
        for m in needed:
            if table[m, 1] < table[m, 0]:
                raise shard_error(key, f"minishard {m} index spans bytes {base + int(table[m, 0])}-{base + int(table[m, 1])}")
        raws = reader.read_many([(base + int(table[m, 0]), base + int(table[m, 1])) for m in needed])
        got, starts, sizes, _ = self._minishards(raws, [(key, m) for m in needed])
        # ids are unique in a shard: each wanted one is in its own minishard's index or absent
        where = {cid: i for i, cid in enumerate(got.tolist())}
        out: dict[int, tuple[int, int]] = {}
        starts, sizes = starts.tolist(), sizes.tolist()
        for cid in wanted.tolist():
            i = where.get(cid)
            if i is not None:
                out[cid] = (starts[i], sizes[i])
        return out

    def unpack_prefixed(self, data, key: str, prefix_size) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """(chunks, prefixes): with each chunk, the ``prefix_size(id, chunk)`` bytes right before
        it, which a sharded multi-resolution mesh keeps unindexed (its fragment data). Other gaps
        (minishard indexes that tensorstore writes between minishards) are not prefixes."""
        chunks = self.unpack(data, key)
        base = self.spec.index_bytes
        prefixes = {}
        cids, starts, _ = self.chunk_spans(data, key)
        for cid, start in zip(cids.tolist(), starts.tolist()):
            n = prefix_size(cid, chunks[cid])
            if n:
                if n > start - base:
                    raise shard_error(key, f"object {cid} needs {n} bytes before it, but starts at byte {start}")
                prefixes[cid] = bytes(data[start - n:start])
        return chunks, prefixes

    # -- encoding -----------------------------------------------------------------------------
    def pack(self, chunks: dict[int, bytes], prefixes: dict[int, bytes] | None = None) -> bytes:
        """A shard of ``chunks`` (id -> bytes before the data encoding); ``prefixes`` (id ->
        bytes) go uncompressed right before their chunk and in no index (mesh fragment data)."""
        prefixes = prefixes or {}
        ids = np.array(sorted(chunks), dtype=np.uint64)
        _, minis = self.spec.shard_and_minishard(ids)
        data_parts: list[bytes] = []
        index_parts: list[bytes] = []
        spans = np.zeros((1 << self.spec.minishard_bits, 2), dtype="<u8")
        pos = 0  # relative to the end of the shard index
        minishard_tables = []
        for m in np.unique(minis).tolist():
            members = ids[minis == m]
            stored = [chunks[int(c)] for c in members.tolist()]
            if self.spec.data_gzip:
                stored = [compress("gzip", c) for c in stored]
            sizes = np.array([len(c) for c in stored], dtype=np.uint64)
            before = [prefixes.get(int(c), b"") for c in members.tolist()]
            # each chunk starts where the previous ends (the first at pos), after its prefix
            offsets = np.array([len(b) for b in before], dtype=np.uint64)
            offsets[0] += pos
            deltas = np.diff(members, prepend=np.uint64(0))
            minishard_tables.append((m, np.stack([deltas, offsets, sizes]).astype("<u8").tobytes()))
            for b, c in zip(before, stored):
                data_parts.extend((b, c))
            pos += int(sizes.sum()) + sum(len(b) for b in before)
        for m, table in minishard_tables:
            if self.spec.index_gzip:
                table = compress("gzip", table)
            spans[m] = (pos, pos + len(table))
            index_parts.append(table)
            pos += len(table)
        return b"".join([spans.tobytes(), *data_parts, *index_parts])  # one copy of the shard, not three


def label_sharding(num_labels: int, data_encoding: str = "gzip") -> dict:
    """A sharding spec for objects keyed by segment id (skeletons, meshes): murmurhash spreads
    ids evenly; about 4096 labels a shard and 64 a minishard keep each minishard index small
    enough for one ranged read, and the shard count grows with the labels."""
    n = max(1, int(num_labels))
    shard_bits = max(0, math.ceil(math.log2(n / 4096))) if n > 4096 else 0
    per_shard = n / 2**shard_bits
    minishard_bits = max(0, math.ceil(math.log2(per_shard / 64))) if per_shard > 64 else 0
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "murmurhash3_x86_128", "preshift_bits": 0,
            "minishard_bits": minishard_bits, "shard_bits": shard_bits,
            "minishard_index_encoding": "gzip", "data_encoding": data_encoding}


def write_sharded_objects(store, spec: dict, objects: dict[int, bytes], prefixes: dict[int, bytes] | None = None,
                          prefix_size=None) -> None:
    """Put ``objects`` (segment id -> bytes) into the shard files of ``spec`` in ``store``, one
    atomic update per shard that keeps the ids already there (a rerun for some labels).
    ``prefixes``: unindexed bytes to place right before an object; ``prefix_size(id, object)``
    tells how many such bytes the objects already stored carry, so a rewrite keeps them."""
    codec = PrecomputedShardCodec(ShardingSpec(spec, "sharding"))
    prefixes = prefixes or {}
    by_key: dict[str, list[int]] = {}
    for i in objects:
        by_key.setdefault(codec.key_of_id(int(i)), []).append(int(i))
    for key, ids in sorted(by_key.items()):
        def merge(old: bytes | None, ids=ids, key=key) -> bytes:
            if old is None:
                chunks, before = {}, {}
            elif prefix_size is not None:
                chunks, before = codec.unpack_prefixed(old, key, prefix_size)
            else:
                chunks, before = codec.unpack(old, key), {}
            for i in ids:
                chunks[i] = objects[i]
                before.pop(i, None)
                if i in prefixes:
                    before[i] = prefixes[i]
            return codec.pack(chunks, before)

        store.update(key, merge)


def read_sharded_object(store, spec: dict, segid: int) -> bytes | None:
    """The object of ``segid`` in the shard files of ``spec`` (None when absent): the shard
    index, one minishard index and the object, by ranged reads of one version of the shard."""
    codec = PrecomputedShardCodec(ShardingSpec(spec, "sharding"))
    key = codec.key_of_id(int(segid))
    with store.range_reader(key) as reader:
        found = (codec.read_ids(reader, key, {int(segid)}) or {}).get(int(segid))
    return None if found is None else bytes(found)


@functools.lru_cache(maxsize=64)
def _capacities(preshift: int, minishard_bits: int, shard_bits: int, hash_name: str,
                grid_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(shard numbers, chunks of the grid in each), kept for the process: every fresh handle needs
    the table, and hashing the whole grid cost ~0.7 ms of each first read. Only shards that hold
    chunks are listed: hashed shard numbers range up to 2**shard_bits however small the grid."""
    spec = ShardingSpec({"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": preshift, "minishard_bits": minishard_bits,
                         "shard_bits": shard_bits, "hash": hash_name}, "capacity")
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.uint64) for n in grid_shape], indexing="ij"), -1)
    shards, _ = spec.shard_and_minishard(compressed_morton(grid.reshape(-1, 3), grid_shape))
    numbers, counts = np.unique(shards, return_counts=True)
    numbers.flags.writeable = counts.flags.writeable = False
    return numbers, counts


class PrecomputedVolumeSharding(PrecomputedShardCodec):
    """The shard codec of one sharded volume scale: cells by compressed Morton code."""

    def __init__(self, spec: ShardingSpec, prefix: str, grid_shape: tuple[int, int, int]):
        super().__init__(spec, prefix)
        self.grid_shape = grid_shape
        self._capacity: tuple[np.ndarray, np.ndarray] | None = None

    def block_shape(self) -> tuple[int, int, int] | None:
        """With the identity hash a shard holds the ids that agree above their low
        ``preshift + minishard`` bits: an aligned block of ``2**bits`` chunks per axis, where
        ``bits`` counts each axis's share of those low bits of the compressed Morton code."""
        if self.spec.hash != "identity":
            return None
        low = self.spec.preshift + self.spec.minishard_bits
        grid_bits = [max(0, math.ceil(math.log2(n))) if n > 0 else 0 for n in self.grid_shape]
        bits, j, i = [0, 0, 0], 0, 0
        while j < low and i < max(grid_bits, default=0):
            for d in range(3):
                if i < grid_bits[d] and j < low:
                    bits[d] += 1
                    j += 1
            i += 1
        return tuple(1 << b for b in bits)  # type: ignore[return-value]

    def locate_many(self, grid_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cids = compressed_morton(grid_index, self.grid_shape)
        shard, _ = self.spec.shard_and_minishard(cids)
        return shard.astype(np.int64), cids

    def capacity(self, shard: int) -> int | None:
        if self._capacity is None:
            if math.prod(self.grid_shape) > _CAPACITY_LIMIT:
                return None
            s = self.spec
            self._capacity = _capacities(s.preshift, s.minishard_bits, s.shard_bits, s.hash, tuple(self.grid_shape))
        numbers, counts = self._capacity
        i = int(np.searchsorted(numbers, shard))
        return int(counts[i]) if i < len(numbers) and numbers[i] == shard else 0
