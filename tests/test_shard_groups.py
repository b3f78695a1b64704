"""Sharded reads in groups of shards (``engine/sharded.py``): many shards' chunks looked up,
decoded and placed in a few native calls.

* The (shard, id) lookup against a dict model, also for ids too wide to share 64 bits with the
  shard's number.
* Reads of sparse sharded volumes (absent shards and chunks) against a numpy
  model, with one loop and with several, so that groups hold one shard or many.
* A corrupt chunk in one shard of a group is an error naming it and its shard; a chunk stored
  compressed under a raw encoding is still read right, while the group's other shards are placed.
* A shard is read whole when a read wants half its chunks; otherwise its index, then the runs of
  wanted chunks straight into one buffer, again when a writer replaced the shard in between.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.engine import sharded
from volbridge.errors import ChunkDecodeError

from volume_model import patch_and_check


def _shard(ids: list[int]) -> sharded._Shard:
    n = len(ids)
    zeros = np.zeros((n, 3), np.int64)
    return sharded._Shard("k", 0, np.array(ids, np.uint64), zeros, zeros, zeros + 1, zeros, zeros, zeros + 1)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), wide=st.booleans())
def test_group_lookup_matches_a_dict_model(data, wide):
    top = 2**64 - 1 if wide else 2**20
    ident = st.integers(0, top)
    shards = data.draw(st.lists(st.lists(ident, max_size=12, unique=True), min_size=1, max_size=6))
    group = sharded._Group([_shard(ids) for ids in shards])
    fetched, model = {}, {}
    for i, ids in enumerate(shards):
        if not data.draw(st.booleans(), label=f"shard {i} fetched"):
            continue
        held = data.draw(st.lists(ident, max_size=12, unique=True), label=f"shard {i} ids stored")
        held += [c for c in ids if c not in held and data.draw(st.booleans())]  # some wanted, some not
        starts = np.array(data.draw(st.lists(st.integers(0, 10**6), min_size=len(held), max_size=len(held))), np.int64)
        sizes = np.array(data.draw(st.lists(st.integers(0, 10**4), min_size=len(held), max_size=len(held))), np.int64)
        fetched[i] = sharded._Fetched(b"", (np.array(held, np.uint64), starts, sizes), "raw")
        for c, a, n in zip(held, starts.tolist(), sizes.tolist()):
            model[i, c] = (a, n)
    if not fetched:
        return
    pos, src, starts, sizes = sharded._lookup(group, fetched)
    slots = list(fetched)
    got = {(slots[s], int(group.ids[p])): (a, n) for p, s, a, n in zip(pos, src, starts.tolist(), sizes.tolist())}
    assert all(slots[s] == group.shard_of[p] for p, s in zip(pos, src))
    want = {(i, c): model[i, c] for i, ids in enumerate(shards) for c in ids if (i, c) in model}
    assert got == want


@pytest.mark.parametrize("fmt,compression", [("zarr3", "zstd"), ("zarr3", "gzip"), ("zarr3", None),
                                             ("precomputed", None), ("precomputed", "gzip")])
@pytest.mark.parametrize("threads", ["1", "3"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sparse_sharded_reads_match_a_numpy_model(tmp_path_factory, monkeypatch, fmt, compression, threads, data):
    monkeypatch.setenv("VOLBRIDGE_THREADS", threads)
    path = tmp_path_factory.mktemp("sparse")
    shape = (40, 36, 48)
    v = vb.create(f"{fmt}://{path}/v", shape=shape, dtype="uint16", chunk_shape=(4, 4, 4), shard_shape=(8, 8, 8),
                  compression=compression)
    # absent chunks inside the bounds are filled on an uninitialised output
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    patch_and_check(v, lambda: vb.array(f"{fmt}://{path}/v"), shape, np.uint16, rng, data.draw(st.integers(1, 4), label="writes"),
                    20)


def _shard_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("info", "zarr.json")
                  and ".volbridge-locks" not in p.parts)


def test_a_corrupt_chunk_in_one_shard_of_a_group_is_named(tmp_path, monkeypatch):
    """Every shard of the volume falls in one group (one loop): the batch decode stops at the bad
    chunk, the checked path names it, and no wrong voxels come back."""
    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    data = np.random.default_rng(3).integers(0, 255, (32, 32, 64), dtype=np.uint8)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=(16, 16, 16),
                  compression="zstd")
    v[...] = data
    victim = _shard_files(tmp_path / "z")[3]
    raw = bytearray(victim.read_bytes())
    index = np.frombuffer(bytes(raw[-(16 * 8 + 4):-4]), "<u8").reshape(-1, 2)  # (offset, size) of its 8 chunks
    start = int(index[5, 0])
    raw[start:start + 4] = bytes(4)  # chunk 5 no longer starts with zstd's magic number: no frame at all
    victim.write_bytes(bytes(raw))
    with pytest.raises(ChunkDecodeError, match=rf"chunk 5 of shard .*{victim.name}"):
        vb.array(f"zarr3://{tmp_path}/z")[...]


def test_a_chunk_stored_compressed_under_raw_is_read_beside_plain_shards(tmp_path, monkeypatch):
    """A precomputed ``raw`` chunk that is a gzip stream (as some writers leave them) does not fit
    the batch path's size check: its shard takes the checked path, the others are placed."""
    import gzip

    from volbridge.formats.precomputed_sharding import PrecomputedShardCodec, ShardingSpec

    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    data = np.random.default_rng(4).integers(0, 3, (32, 32, 64), dtype=np.uint8)
    v = vb.create(f"precomputed://{tmp_path}/p", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(16, 16, 16))
    v[...] = data
    spec = v.volume.dataset.layout(0).sharding.spec
    victim = _shard_files(tmp_path / "p")[2]
    codec = PrecomputedShardCodec(ShardingSpec(spec.spec, "test"))
    chunks = {k: bytes(c) for k, c in codec.unpack(victim.read_bytes(), victim.name).items()}
    first = sorted(chunks)[0]
    chunks[first] = gzip.compress(chunks[first])
    victim.write_bytes(codec.pack(chunks))
    np.testing.assert_array_equal(vb.array(f"precomputed://{tmp_path}/p")[...].squeeze(), data)


def test_shards_are_read_whole_for_half_their_chunks_else_by_index_and_runs(tmp_path):
    v = vb.create(f"zarr3://{tmp_path}/z", shape=(32, 32, 32), dtype="uint8", chunk_shape=(16, 16, 16),
                  shard_shape=(32, 32, 32))  # 8 chunks of 4 KiB in one shard, the index at its end
    data = np.random.default_rng(3).integers(0, 255, (32, 32, 32), dtype=np.uint8)
    v[...] = data
    size = _shard_files(tmp_path / "z")[0].stat().st_size
    index = size - 8 * 4096
    for url in (f"zarr3://{tmp_path}/z", f"file://{tmp_path}/z"):  # a FileStore, and one under a prefix
        r = vb.array(url)
        store = r.volume.store
        for box, read in (((0, 2, 0, 2, 0, 2), (index + 4096, 2)),  # one chunk: the index, then the chunk
                          ((0, 2, 0, 2, 0, 32), (index + 2 * 4096, 2)),  # two adjacent chunks: one run
                          ((0, 2, 0, 32, 0, 2), (index + 3 * 4096, 2)),  # one chunk between: one run
                          ((0, 32, 0, 2, 0, 2), (index + 2 * 4096, 3)),  # three between: a run each
                          ((0, 2, 0, 32, 0, 32), (size, 1))):  # half of them: the whole shard in one read
            before, requests = store.stats.bytes_read, store.stats.requests
            sl = tuple(slice(a, b) for a, b in zip(box[::2], box[1::2]))
            np.testing.assert_array_equal(r[sl].squeeze(), data[sl])
            assert (store.stats.bytes_read - before, store.stats.requests - requests) == read, box


def test_a_shard_replaced_while_its_ranges_are_read_is_read_again(tmp_path, monkeypatch):
    """A version change between a shard's index and its chunks (an object store's conditional
    ranges say so) reads the group's ranged shards again; one that keeps changing raises."""
    from volbridge.errors import VersionChangedError
    from volbridge.kv.file import _FileRangeReader

    data = np.random.default_rng(4).integers(0, 255, (32, 32, 64), dtype=np.uint8)
    v = vb.create(f"precomputed://{tmp_path}/p", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(16, 16, 16))
    v[...] = data
    real, calls, changes = _FileRangeReader.read_runs, [], [2]

    def changing(self, runs, out, at):
        calls.append(self.key)
        if changes[0] > 0:
            changes[0] -= 1
            raise VersionChangedError(f"{self.where} changed while it was being read")
        return real(self, runs, out, at)

    monkeypatch.setattr(_FileRangeReader, "read_runs", changing)
    sl = (slice(3, 29), slice(5, 6), slice(1, 7))  # 2 of each shard's 8 chunks: ranged
    np.testing.assert_array_equal(vb.array(f"precomputed://{tmp_path}/p")[sl], data[sl])
    assert len(calls) > 2 and changes == [0]
    changes[0] = 10**6  # it keeps changing
    with pytest.raises(VersionChangedError, match="changed while it was being read"):
        vb.array(f"precomputed://{tmp_path}/p")[sl]


def test_ranged_shards_are_read_one_open_file_at_a_time(tmp_path, monkeypatch):
    """A group may hold thousands of ranged shards: holding each one's descriptor (or whole value)
    until all indexes were read ran out of descriptors at the usual limit of 1024 (review)."""
    from volbridge.kv.file import _FileRangeReader

    data = np.random.default_rng(9).integers(0, 255, (64, 64, 8), dtype=np.uint8)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(4, 4, 4),
                  shard_shape=(8, 8, 8))  # 64 shards of 8 chunks
    v[...] = data
    open_now, most = [0], [0]
    init, close = _FileRangeReader.__init__, _FileRangeReader.close

    def counted_init(self, *a):
        init(self, *a)
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])

    def counted_close(self):
        open_now[0] -= self.fd >= 0
        close(self)

    monkeypatch.setattr(_FileRangeReader, "__init__", counted_init)
    monkeypatch.setattr(_FileRangeReader, "close", counted_close)
    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    np.testing.assert_array_equal(vb.array(f"zarr3://{tmp_path}/z")[:, 0:1, 0:1], data[:, 0:1, 0:1])  # 2 of 8 chunks each
    assert (most[0], open_now[0]) == (1, 0)


def test_an_index_claiming_huge_chunks_is_named_before_any_buffer_is_sized(tmp_path):
    """A minishard index has no checksum: a chunk size of 2**50 must be the error naming the shard
    that a ranged read past its end gives, not a failed allocation."""
    from volbridge.errors import StoreError
    from volbridge.formats.precomputed_sharding import PrecomputedShardCodec, ShardingSpec

    v = vb.create(f"precomputed://{tmp_path}/p", shape=(16, 16, 16), dtype="uint8", chunk_shape=(4, 4, 4),
                  shard_shape=(16, 16, 16))
    v[...] = 5
    victim = _shard_files(tmp_path / "p")[0]
    codec = PrecomputedShardCodec(ShardingSpec(v.volume.dataset.layout(0).sharding.spec.spec, "test"))
    import gzip

    raw = bytearray(victim.read_bytes())
    base = codec.spec.index_bytes
    table = np.frombuffer(bytes(raw[:base]), "<u8").reshape(-1, 2).copy()
    for m, (a, b) in enumerate(table.tolist()):  # every chunk's size (rows: ids, starts, sizes), index appended
        if a == b:
            continue
        index = bytes(raw[base + a:base + b])
        rows = np.frombuffer(gzip.decompress(index) if codec.spec.index_gzip else index, "<u8").reshape(3, -1).copy()
        rows[2] = 2**50
        body = gzip.compress(rows.tobytes()) if codec.spec.index_gzip else rows.tobytes()
        table[m] = (len(raw) - base, len(raw) - base + len(body))
        raw += body
    raw[:base] = table.astype("<u8").tobytes()
    victim.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=rf"{victim.name} has {len(raw)} bytes; bytes \d+-\d+ were asked for"):
        vb.array(f"precomputed://{tmp_path}/p")[0:1, 0:1, 0:1]


def test_a_shard_stored_as_a_variant_beside_a_directory_reads_the_same_on_every_path(tmp_path):
    import gzip

    v = vb.create(f"zarr3://{tmp_path}/z", shape=(16, 16, 16), dtype="uint8", chunk_shape=(4, 4, 4),
                  shard_shape=(16, 16, 16))
    v[...] = 9
    shard = tmp_path / "z" / "c" / "0" / "0" / "0"
    raw = shard.read_bytes()
    shard.unlink()
    (shard.parent / "0.gz").write_bytes(gzip.compress(raw))
    shard.mkdir()  # as get() does, the directory is no object: the variant is the shard
    r = vb.array(f"zarr3://{tmp_path}/z")
    assert (r[0:16, 0:16, 0:4] == 9).all() and (r[0:1, 0:1, 0:1] == 9).all() and (r[...] == 9).all()


def test_groups_split_work_evenly_and_bound_their_bytes():
    shards = [_shard(list(range(n))) for n in (64, 64, 8)]
    assert [len(g.ids) for g in sharded._groups(shards, 2, [0, 0, 0])] == [64, 72]  # not 128 and 8
    assert [len(g.ids) for g in sharded._groups(shards, 1, [sharded.GROUP_BYTES // 2 + 1] * 3)] == [64, 64, 8]
    many = [_shard([0, 1]) for _ in range(32)]
    assert [len(g.shards) for g in sharded._groups(many, 32, [0] * 32)] == [1] * 32  # a network store's loops


def test_a_small_local_read_is_one_group_and_a_big_one_one_per_loop(tmp_path, monkeypatch):
    data = np.random.default_rng(8).integers(0, 255, (64, 64, 64), dtype=np.uint8)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(16, 16, 16), compression="zstd")
    v[...] = data
    counts, real = [], sharded._groups
    monkeypatch.setattr(sharded, "_groups", lambda *a: counts.append(len(g := real(*a))) or g)
    monkeypatch.setenv("VOLBRIDGE_THREADS", "3")
    r = vb.array(f"zarr3://{tmp_path}/z")
    np.testing.assert_array_equal(r[3:61, 2:60, 1:50], data[3:61, 2:60, 1:50])  # 448 chunks of 512 bytes: one group
    monkeypatch.setattr(sharded, "MIN_LOCAL_GROUP_BYTES", 4096)
    np.testing.assert_array_equal(r[3:61, 2:60, 1:50], data[3:61, 2:60, 1:50])
    assert counts == [1, sharded._loops(r.volume)]


def test_an_id_listed_twice_in_a_shard_reads_its_last_entry_on_every_path(tmp_path, monkeypatch):
    """Every dict-building path (ranged reads, unpack) keeps an index's last entry for an id; the
    grouped lookup must agree, or a voxel would depend on how many chunks a read wants."""
    from volbridge.formats.precomputed_sharding import PrecomputedShardCodec, ShardingSpec

    data = np.zeros((16, 16, 32), np.uint8)
    v = vb.create(f"precomputed://{tmp_path}/p", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(16, 16, 16))
    v[...] = data
    spec = v.volume.dataset.layout(0).sharding.spec
    codec = PrecomputedShardCodec(ShardingSpec(spec.spec, "test"))
    victim = next(p for p in _shard_files(tmp_path / "p") if 0 in codec.unpack(p.read_bytes(), p.name))
    chunks = {k: bytes(c) for k, c in codec.unpack(victim.read_bytes(), victim.name).items()}
    first, second = bytes([1]) * len(chunks[0]), bytes([2]) * len(chunks[0])
    shard = bytearray(codec.pack({**chunks, 0: first}))
    # append a second entry for id 0 at the end of its minishard index by hand: pack() dedups
    spans = np.frombuffer(bytes(shard[:codec.spec.index_bytes]), "<u8").reshape(-1, 2).copy()
    _, minishard = codec.spec.shard_and_minishard(np.array([0], np.uint64))
    m = int(minishard[0])
    base = codec.spec.index_bytes
    raw = bytes(shard[base + int(spans[m, 0]):base + int(spans[m, 1])])
    import gzip

    table = np.frombuffer(gzip.decompress(raw) if codec.spec.index_gzip else raw, "<u8").reshape(3, -1)
    data_at = len(shard) - base  # the duplicate's bytes go at the end of the shard
    last_start = table[1].sum() + table[2][:-1].sum()  # start of the last entry, relative to the index's end
    deltas = [(0 - int(table[0].sum())) % 2**64, (data_at - int(last_start) - int(table[2][-1])) % 2**64, len(second)]
    entry = np.array(deltas, np.uint64)[:, None]  # the format's deltas wrap around 2**64
    table = np.concatenate([table, entry], axis=1).astype("<u8")
    body = table.tobytes()
    body = gzip.compress(body) if codec.spec.index_gzip else body
    spans[m] = (len(shard) + len(second) - base, len(shard) + len(second) - base + len(body))
    shard[:base] = spans.astype("<u8").tobytes()
    victim.write_bytes(bytes(shard) + second + body)
    r = vb.array(f"precomputed://{tmp_path}/p")
    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    assert r[0, 0, 0] == 2  # one chunk: ranged
    assert r[0:1, 0:1, 0:16][0, 0, 0] == 2  # two chunks of eight: ranged, with the other chunk
    assert r[0:1, 0:16, 0:16][0, 0, 0] == 2  # four chunks of eight: read whole
    assert r[...][0, 0, 0] == 2
