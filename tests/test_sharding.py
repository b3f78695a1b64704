"""Sharded volumes: zarr v3 ``sharding_indexed`` and precomputed ``neuroglancer_uint64_sharded_v1``.

* The hash and the chunk ids against their references (mmh3, the spec's worked example).
* Interop both ways, byte for byte: zarr-python (index at the start and at the end, with and
  without crc32c), tensorstore ``zarr3`` and ``neuroglancer_precomputed`` (both hashes, raw and
  gzip minishard indexes and data, raw and compressed_segmentation chunks), CloudVolume reads.
* Random specs and writes against a numpy model (hypothesis).
* I/O shape: a write covering whole shards never reads them; a small read fetches the index and
  its chunks, not the whole shard; a shard replaced between index and chunks is read again.
* Bad input: malformed sharding metadata, unsupported index codecs, truncated shards and indexes
  pointing past the end, each an error naming the object, and a failed write changes nothing.
"""

from __future__ import annotations

import json
import os

import mmh3
import numpy as np
import pytest
import tensorstore as ts
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

import volbridge as vb
from volbridge.errors import (
    ChunkDecodeError,
    MetadataError,
    StoreError,
    UnsupportedError,
    VersionChangedError,
)
from volbridge.formats.precomputed_sharding import (
    compressed_morton,
    murmurhash3_x86_128_low64,
)
from volbridge.kv import FileStore, open_store


# -- the hash and the ids ---------------------------------------------------------------------------
def test_murmurhash_matches_mmh3():
    rng = np.random.default_rng(0)
    keys = np.concatenate([np.arange(300, dtype=np.uint64), rng.integers(0, 2**63, 300, dtype=np.uint64),
                           np.array([2**64 - 1, 2**32, 2**32 - 1], dtype=np.uint64)])
    ours = murmurhash3_x86_128_low64(keys)
    for k, h in zip(keys.tolist(), ours.tolist()):
        assert h == mmh3.hash64(int(k).to_bytes(8, "little"), seed=0, x64arch=False, signed=False)[0]


def test_compressed_morton_spec_example():
    assert compressed_morton(np.array([3, 1, 0]), (4, 2, 1)).tolist() == [7]
    # all dims with bits interleave x, y, z; a dim that ran out is skipped
    assert compressed_morton(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0]]), (4, 4, 2)).tolist() == [1, 2, 4, 8]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.tuples(*[st.one_of(st.integers(0, 70), st.integers(0, 2**18)) for _ in range(3)]))
def test_compressed_morton_matches_the_spec_bit_by_bit(data, shape):
    """Per-axis tables (grids up to 2**20 per axis) and the bit loop beyond agree with the
    spec's definition, one Python int at a time."""
    bits = [(n - 1).bit_length() if n > 0 else 0 for n in shape]
    rows = data.draw(st.lists(st.tuples(*[st.integers(0, max(0, n - 1)) for n in shape]), min_size=1, max_size=20))

    def model(x):
        code, j = 0, 0
        for i in range(max(bits)):
            for d in range(3):
                if i < bits[d]:
                    code |= ((x[d] >> i) & 1) << j
                    j += 1
        return code

    assert compressed_morton(np.array(rows), shape).tolist() == [model(r) for r in rows]


def test_shard_capacities_of_a_hashed_spec_list_only_shards_that_hold_chunks():
    """Hashed shard numbers range up to 2**shard_bits however small the grid; the table kept for
    the process lists only the shards that hold chunks (a bincount had held 2**21 entries)."""
    from volbridge.formats.precomputed_sharding import PrecomputedVolumeSharding, ShardingSpec, _capacities

    spec = ShardingSpec({"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "minishard_bits": 2,
                         "shard_bits": 21, "hash": "murmurhash3_x86_128"}, "test")
    sharding = PrecomputedVolumeSharding(spec, "", (4, 5, 3))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (4, 5, 3)], indexing="ij"), -1).reshape(-1, 3)
    shards, _ = sharding.locate_many(grid)
    model = np.bincount(shards)
    assert [sharding.capacity(n) for n in range(len(model) + 3)] == [*model.tolist(), 0, 0, 0]
    numbers, counts = _capacities(0, 2, 21, "murmurhash3_x86_128", (4, 5, 3))
    assert len(numbers) <= 60 and counts.sum() == 60


# -- zarr v3 ----------------------------------------------------------------------------------------
ZARR_SHAPE = (37, 70, 90)  # z, y, x: edge shards and edge inner chunks


def _zarr_python_sharded(path, dtype, location, index_codecs, inner_codecs, fill=0):
    return zarr.create_array(
        str(path), shape=ZARR_SHAPE, dtype=dtype, chunks=(32, 32, 32), fill_value=fill,
        serializer=ShardingCodec(chunk_shape=(8, 16, 16), codecs=inner_codecs, index_codecs=index_codecs,
                                 index_location=location),
        compressors=None, filters=None, zarr_format=3,
    )


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("index_codecs,inner", [
    ([BytesCodec(), Crc32cCodec()], [BytesCodec(), ZstdCodec(level=3)]),
    ([BytesCodec(endian="big")], [BytesCodec(endian="big"), GzipCodec(level=1), Crc32cCodec()]),
])
def test_zarr_python_sharded_both_ways(tmp_path, location, index_codecs, inner):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 60000, ZARR_SHAPE, dtype=np.uint16)
    a[:16, :32, :32] = 5  # one region equal to the fill value below: zarr-python omits those chunks
    z = _zarr_python_sharded(tmp_path / "a", "uint16", location, index_codecs, inner, fill=5)
    z[...] = a
    assert vb.array(str(tmp_path / "a")).dtype == np.uint16
    np.testing.assert_array_equal(vb.array(str(tmp_path / "a"))[...], a)
    np.testing.assert_array_equal(vb.array(str(tmp_path / "a"))[3:30, 17:61, 5:88], a[3:30, 17:61, 5:88])
    # volbridge rewrites parts through the same codecs; zarr-python and tensorstore read the result
    w = vb.array(str(tmp_path / "a"), mode="r+")
    w[2:35, 10:20, 3:89] = 7
    a[2:35, 10:20, 3:89] = 7
    w[0:32, 32:64, 64:90] = 9  # whole inner chunks and the edge shard
    a[0:32, 32:64, 64:90] = 9
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"))[...], a)
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "a")}}).result()
    np.testing.assert_array_equal(t.read().result(), a)


def test_volbridge_sharded_zarr_read_by_peers(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(-2**31, 2**31 - 1, (3, *ZARR_SHAPE), dtype=np.int32)  # channels
    v = vb.create(f"zarr3://{tmp_path}/v", shape=ZARR_SHAPE, dtype="int32", chunk_shape=(16, 16, 32),
                  shard_shape=(32, 48, 64), num_channels=3, compression="blosc")
    v[...] = a
    doc = json.loads((tmp_path / "v" / "zarr.json").read_text())
    assert doc["codecs"][0]["name"] == "sharding_indexed"
    assert doc["chunk_grid"]["configuration"]["chunk_shape"] == [3, 32, 48, 64]
    assert sorted(os.listdir(tmp_path / "v" / "c" / "0" / "0" / "0")) == ["0", "1"]  # one object per shard
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "v"))[...], a)
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "v")}}).result()
    np.testing.assert_array_equal(t.read().result(), a)


def test_tensorstore_sharded_zarr_read_by_volbridge(tmp_path):
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "t")}, "create": True,
            "metadata": {"shape": list(ZARR_SHAPE), "data_type": "float32",
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 32, 32]}},
                         "codecs": [{"name": "sharding_indexed", "configuration": {
                             "chunk_shape": [8, 8, 16], "index_location": "start",
                             "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}],
                             "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]}}
    t = ts.open(spec).result()
    a = np.random.default_rng(3).standard_normal(ZARR_SHAPE).astype(np.float32)
    t[4:, :, 10:].write(a[4:, :, 10:]).result()  # some shards partly absent
    a[:4] = 0
    a[:, :, :10] = 0
    np.testing.assert_array_equal(vb.array(str(tmp_path / "t"))[...], a)


# -- precomputed ------------------------------------------------------------------------------------
def _ts_precomputed(path, sharding, encoding="raw", dtype="uint32", size=(100, 90, 70), offset=(-5, 3, 0), create=True):
    scale = {"size": list(size), "voxel_offset": list(offset), "resolution": [4, 4, 40], "chunk_size": [16, 16, 16],
             "encoding": encoding, "sharding": sharding}
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}}
    if create:
        spec.update(create=True, multiscale_metadata={"type": "segmentation", "data_type": dtype, "num_channels": 1},
                    scale_metadata=scale)
    return ts.open(spec).result()


def _spec(hash_, minishard_enc="gzip", data_enc="gzip", preshift=2, minishard=2, shard=3):
    return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": preshift, "hash": hash_,
            "minishard_bits": minishard, "shard_bits": shard, "minishard_index_encoding": minishard_enc,
            "data_encoding": data_enc}


@pytest.mark.parametrize("hash_", ["identity", "murmurhash3_x86_128"])
@pytest.mark.parametrize("encs", [("raw", "raw"), ("gzip", "gzip"), ("raw", "gzip")])
@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
def test_tensorstore_precomputed_sharded_both_ways(tmp_path, hash_, encs, encoding):
    t = _ts_precomputed(tmp_path / "v", _spec(hash_, *encs), encoding)
    a = np.random.default_rng(4).integers(0, 40, (100, 90, 70, 1), dtype=np.uint32)
    t.write(a).result()
    url = f"precomputed://{tmp_path}/v"
    np.testing.assert_array_equal(vb.array(url, axis_order="xyz")[...], a[..., 0])
    np.testing.assert_array_equal(vb.array(url, axis_order="xyz")[0:30, 40:93, 7:61], a[5:35, 37:90, 7:61, 0])
    w = vb.array(url, mode="r+", axis_order="xyz")
    w[0:50, 10:20, 5:60] = 7  # unaligned: read-modify-write of several shards
    a[5:55, 7:17, 5:60] = 7
    w[-5:43, 3:35, 0:48] = 3  # chunk-aligned from the volume's corner
    a[0:48, 0:32, 0:48] = 3
    np.testing.assert_array_equal(_ts_precomputed(tmp_path / "v", None, create=False).read().result(), a)


def test_cloudvolume_reads_volbridge_sharded_precomputed(tmp_path):
    from cloudvolume import CloudVolume

    a = np.random.default_rng(5).integers(0, 1000, (70, 90, 100), dtype=np.uint64)  # z, y, x
    url = f"precomputed://{tmp_path}/v"
    v = vb.create(url, shape=a.shape, dtype="uint64", chunk_shape=(16, 16, 16), shard_shape=(64, 64, 64),
                  layer_type="segmentation", encoding="compressed_segmentation", resolution=(40, 4, 4))
    v[...] = a
    info = json.loads((tmp_path / "v" / "info").read_text())
    assert info["scales"][0]["sharding"]["hash"] == "identity"
    cv = CloudVolume(f"file://{tmp_path}/v", progress=False, parallel=1)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), a)
    # the identity spec makes shards 64^3 blocks: 2 x 2 x 2 shard files
    assert len([n for n in os.listdir(tmp_path / "v" / "4_4_40") if n.endswith(".shard")]) == 8


# -- random specs and writes against a numpy model ---------------------------------------------------
@st.composite
def precomputed_sharded(draw):
    return dict(
        hash=draw(st.sampled_from(["identity", "murmurhash3_x86_128"])),
        preshift=draw(st.integers(0, 4)), minishard=draw(st.integers(0, 3)), shard=draw(st.integers(0, 4)),
        index_enc=draw(st.sampled_from(["raw", "gzip"])), data_enc=draw(st.sampled_from(["raw", "gzip"])),
        size=tuple(draw(st.integers(1, 40)) for _ in range(3)), offset=tuple(draw(st.integers(-20, 20)) for _ in range(3)),
        chunk=tuple(draw(st.integers(1, 9)) for _ in range(3)),
    )


def _random_box(draw, start, stop):
    lo = [draw(st.integers(a - 3, b)) for a, b in zip(start, stop)]
    hi = [draw(st.integers(x, b + 3)) for x, b in zip(lo, stop)]
    return lo, hi


def test_a_sharded_pyramid_grows_sharded_scales(tmp_path):
    """(review) downsample(num_mips=...) of a sharded precomputed volume added unsharded scales:
    a large dataset's coarse scales as millions of small files. New scales now carry the last
    scale's shard shape (identity hash, spatial blocks), and tensorstore reads them as written."""
    from volbridge.services import downsample

    a = vb.create(f"precomputed://{tmp_path / 'v'}", bounds=((-3, 5, -40), (61, 200, 300)), dtype="uint8",
                  chunk_shape=(16, 32, 32), shard_shape=(64, 128, 128), compression="gzip")
    a[...] = np.random.default_rng(0).integers(0, 255, a.shape, dtype=np.uint8)
    downsample(vb.array(str(tmp_path / "v"), mode="r+"), num_mips=3, factor=(2, 2, 2))
    scales = json.loads((tmp_path / "v" / "info").read_text())["scales"]
    assert all(s.get("sharding", {}).get("hash") == "identity" for s in scales)
    assert scales[1]["sharding"]["preshift_bits"] + scales[1]["sharding"]["minishard_bits"] == 6  # 4 x 4 x 4 chunks a shard
    v = vb.array(str(tmp_path / "v"))
    for m in range(1, 4):
        t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path / 'v'}", "scale_index": m}).result()
        np.testing.assert_array_equal(np.asarray(t.read().result())[..., 0].T, v.mip(m)[...])
    files = [p for p in (tmp_path / "v" / scales[1]["key"]).iterdir()]
    assert files and all(p.suffix == ".shard" for p in files)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=precomputed_sharded(), data=st.data())
def test_precomputed_random_sharding_specs(tmp_path_factory, spec, data):
    path = tmp_path_factory.mktemp("p")
    sharding = _spec(spec["hash"], spec["index_enc"], spec["data_enc"], spec["preshift"], spec["minishard"], spec["shard"])
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint16", "num_channels": 1,
            "scales": [{"key": "s0", "size": list(spec["size"]), "voxel_offset": list(spec["offset"]),
                        "resolution": [1, 1, 1], "chunk_sizes": [list(spec["chunk"])], "encoding": "raw",
                        "sharding": sharding}]}
    (path / "info").write_text(json.dumps(info))
    url = f"precomputed://{path}"
    vol = vb.array(url, mode="r+", axis_order="xyz")
    start, stop = spec["offset"], tuple(o + s for o, s in zip(spec["offset"], spec["size"]))
    model = np.zeros(spec["size"], np.uint16)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    for _ in range(data.draw(st.integers(1, 4))):
        lo = [data.draw(st.integers(a, b - 1)) for a, b in zip(start, stop)]
        hi = [data.draw(st.integers(x + 1, b)) for x, b in zip(lo, stop)]
        values = rng.integers(0, 65535, [b - a for a, b in zip(lo, hi)], dtype=np.uint16)
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = values
        model[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, start))] = values
        lo, hi = _random_box(data.draw, start, stop)
        got = vb.array(url, axis_order="xyz")[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        want = np.zeros([b - a for a, b in zip(lo, hi)], np.uint16)
        inner = [(max(a, s), min(b, e)) for a, b, s, e in zip(lo, hi, start, stop)]
        if all(a < b for a, b in inner):
            want[tuple(slice(a - l, b - l) for (a, b), l in zip(inner, lo))] = model[tuple(slice(a - o, b - o) for (a, b), o in zip(inner, start))]
        np.testing.assert_array_equal(got, want)
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}}).result()
    np.testing.assert_array_equal(t.read().result()[..., 0], model)


# -- I/O shape --------------------------------------------------------------------------------------
def test_whole_shard_writes_do_not_read_and_small_reads_are_ranged(tmp_path):
    url = f"zarr3://{tmp_path}/z"
    v = vb.create(url, shape=(64, 64, 128), dtype="uint8", chunk_shape=(16, 16, 16), shard_shape=(64, 64, 64))
    store = v.volume.store
    read_at_create = store.stats.bytes_read  # (its metadata, read back to stamp its instance id)
    v[:, :, 0:64] = 1  # exactly one shard
    assert store.stats.bytes_read == read_at_create
    v[...] = np.random.default_rng(6).integers(0, 255, (64, 64, 128), dtype=np.uint8)  # two whole shards
    assert store.stats.bytes_read == read_at_create
    shard_size = os.path.getsize(tmp_path / "z" / "c" / "0" / "0" / "0")
    r = vb.array(url)
    before = r.volume.store.stats.bytes_read
    r[3:5, 3:5, 3:5]
    used = r.volume.store.stats.bytes_read - before
    assert 0 < used <= 16 * 64 + 4 + 16**3, f"read {used} bytes of a {shard_size}-byte shard for one chunk"


def test_shard_replaced_between_index_and_chunks_is_read_again(s3env, s3_bucket):
    url = f"zarr3://s3://{s3_bucket}/versions"
    v = vb.create(url, shape=(32, 32, 64), dtype="uint8", chunk_shape=(16, 16, 16), shard_shape=(32, 32, 64))
    v[...] = 1
    store = open_store(f"s3://{s3_bucket}/versions")
    with store.range_reader("c/0/0/0") as reader:
        reader.read(-(16 * 8 + 4))
        v[...] = 2
        with pytest.raises(VersionChangedError, match="changed while it was being read"):
            reader.read(0, 10)
    assert (vb.array(url)[0:2, 0:2, 0:2] == 2).all()


def test_sharded_zarr_and_precomputed_over_s3(s3env, s3_bucket):
    a = np.random.default_rng(7).integers(0, 255, (40, 50, 60), dtype=np.uint8)
    for url in (f"zarr3://s3://{s3_bucket}/sz", f"precomputed://s3://{s3_bucket}/sp"):
        v = vb.create(url, shape=a.shape, dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=(32, 32, 32))
        v[...] = a
        v[5:33, 7:9, 1:59] = 4
        b = a.copy()
        b[5:33, 7:9, 1:59] = 4
        np.testing.assert_array_equal(vb.array(url)[...], b)
        np.testing.assert_array_equal(vb.array(url)[10:12, 20:21, 30:40], b[10:12, 20:21, 30:40])


# -- bad input --------------------------------------------------------------------------------------
def _zarr_doc(tmp_path):
    vb.create(f"zarr3://{tmp_path}/z", shape=(32, 32, 32), dtype="uint8", chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32))
    return json.loads((tmp_path / "z" / "zarr.json").read_text())


@pytest.mark.parametrize("change,error,match", [
    (lambda c: c.update(index_codecs=[{"name": "bytes"}, {"name": "gzip"}]), UnsupportedError, "index_codecs"),
    (lambda c: c.update(index_location="middle"), MetadataError, "index_location"),
    (lambda c: c.update(chunk_shape=[16, 16, 12]), MetadataError, "does not divide"),
    (lambda c: c.update(codecs=[{"name": "sharding_indexed", "configuration": dict(c)}]), UnsupportedError, "nested"),
])
def test_malformed_zarr_sharding(tmp_path, change, error, match):
    doc = _zarr_doc(tmp_path)
    change(doc["codecs"][0]["configuration"])
    (tmp_path / "z" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(error, match=match):
        vb.array(f"zarr://{tmp_path}/z")


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update(hash="md5"), "hash"),
    (lambda s: s.pop("shard_bits"), "shard_bits"),
    (lambda s: s.update(minishard_bits=-1), "minishard_bits"),
    (lambda s: s.update(data_encoding="zstd"), "data_encoding"),
    (lambda s: s.update({"@type": "neuroglancer_uint64_sharded_v2"}), "@type"),
])
def test_malformed_precomputed_sharding(tmp_path, change, match):
    vb.create(f"precomputed://{tmp_path}/p", shape=(32, 32, 32), dtype="uint8", chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32))
    info = json.loads((tmp_path / "p" / "info").read_text())
    change(info["scales"][0]["sharding"])
    (tmp_path / "p" / "info").write_text(json.dumps(info))
    with pytest.raises((MetadataError, UnsupportedError), match=match):
        vb.array(f"precomputed://{tmp_path}/p")


def _one_shard(tmp_path, fmt):
    url = f"{fmt}://{tmp_path}/{fmt}"
    v = vb.create(url, shape=(32, 32, 32), dtype="uint8", chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32))
    v[...] = np.arange(32**3, dtype=np.uint64).reshape(32, 32, 32).astype(np.uint8)
    shard = next(p for p in (tmp_path / fmt).rglob("*") if p.is_file() and p.name not in ("info", "zarr.json")
                 and ".volbridge-locks" not in p.parts)
    return url, shard


@pytest.mark.parametrize("fmt", ["zarr3", "precomputed"])
@pytest.mark.parametrize("damage", ["truncate", "past_end"])
def test_corrupt_shard_raises_naming_it_and_writes_change_nothing(tmp_path, fmt, damage):
    url, shard = _one_shard(tmp_path, fmt)
    raw = bytearray(shard.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 3] if fmt == "zarr3" else raw[:40]  # zarr: the index is at the end
    elif fmt == "zarr3":  # chunk 0's offset past the end (and no crc32c to catch it first: rewrite it)
        n = 8
        index = np.frombuffer(bytes(raw[-(16 * n + 4):-4]), "<u8").copy()
        index[0] = len(raw) + 100
        import crc32c

        body = index.tobytes()
        raw[-(16 * n + 4):] = body + crc32c.crc32c(body).to_bytes(4, "little")
    else:  # minishard 0's index span past the end
        table = np.frombuffer(bytes(raw[:16]), "<u8").copy()
        table[1] = len(raw) + 100
        raw[:16] = table.tobytes()
    shard.write_bytes(bytes(raw))
    with pytest.raises((ChunkDecodeError, StoreError), match=shard.name):
        vb.array(url)[...]
    with pytest.raises((ChunkDecodeError, StoreError), match=shard.name):
        vb.array(url)[0:2, 0:2, 0:2]  # the ranged path too
    with pytest.raises((ChunkDecodeError, StoreError), match=shard.name):
        vb.array(url, mode="r+")[1:3, 1:3, 1:3] = 0
    assert shard.read_bytes() == bytes(raw)


@pytest.mark.parametrize("shrink", [1, 4096])
def test_raw_chunk_of_the_wrong_size_in_a_shard_read_whole_is_named(tmp_path, shrink):
    """Plain-voxel chunks of a whole shard are placed straight from its bytes; one whose stored
    size is not its voxels' must still be an error naming it, never misplaced bytes."""
    import crc32c

    url, shard = _one_shard(tmp_path, "zarr3")
    raw = bytearray(shard.read_bytes())
    n = 8
    index = np.frombuffer(bytes(raw[-(16 * n + 4):-4]), "<u8").copy()
    index[3] -= shrink  # chunk 1's byte count
    body = index.tobytes()
    raw[-(16 * n + 4):] = body + crc32c.crc32c(body).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))
    with pytest.raises(ChunkDecodeError, match=rf"chunk 1 of shard .*{shard.name}.*expected 4096"):
        vb.array(url)[...]


def test_shard_shape_rules():
    with pytest.raises(MetadataError, match="power of two"):
        vb.create("precomputed://mem://x", shape=(32, 32, 32), chunk_shape=(16, 16, 16), shard_shape=(32, 32, 48))
    with pytest.raises(MetadataError, match="multiple"):
        vb.create("zarr3://mem://x", shape=(32, 32, 32), chunk_shape=(16, 16, 16), shard_shape=(32, 32, 40))
    with pytest.raises(UnsupportedError, match="not zarr2"):
        vb.create("zarr2://mem://y", shape=(32, 32, 32), chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32))
    with pytest.raises(UnsupportedError, match="shards"):
        vb.create("n5://mem://z", shape=(32, 32, 32), chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32))


def test_ome_zarr_pyramid_with_shards_and_ome_version(tmp_path):
    a = np.random.default_rng(8).integers(0, 255, (40, 64, 64), dtype=np.uint8)
    v = vb.create(f"ome-zarr://{tmp_path}/o", shape=a.shape, dtype="uint8", chunk_shape=(8, 16, 16),
                  shard_shape=(16, 32, 64), num_scales=2, resolution=(40, 4, 4))
    v[...] = a
    for level in ("0", "1"):
        doc = json.loads((tmp_path / "o" / level / "zarr.json").read_text())
        assert doc["codecs"][0]["name"] == "sharding_indexed"
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o" / "0"))[...], a)
    with pytest.raises(UnsupportedError, match="no shards"):
        vb.create(f"ome-zarr://{tmp_path}/o4", shape=a.shape, chunk_shape=(8, 16, 16), shard_shape=(16, 32, 64), ome_version="0.4")
    v4 = vb.create(f"ome-zarr://{tmp_path}/o4", shape=a.shape, dtype="uint8", chunk_shape=(8, 16, 16), ome_version="0.4")
    v4[...] = a
    assert json.loads((tmp_path / "o4" / ".zattrs").read_text())["multiscales"][0]["version"] == "0.4"
    np.testing.assert_array_equal(vb.array(f"{tmp_path}/o4")[...], a)
    with pytest.raises(UnsupportedError, match="ome_version"):
        vb.create(f"zarr3://{tmp_path}/z", shape=a.shape, ome_version="0.4")


def test_objects_by_segment_id_many_shards_reruns_and_prefixes(tmp_path):
    """Skeleton and mesh shards: thousands of ids over several shard files; a rerun for some ids
    keeps the others; unindexed prefixes (multi-resolution mesh fragment data) survive merges and
    sit right before their object, where neuroglancer looks for them."""
    from volbridge.formats.precomputed_sharding import (PrecomputedShardCodec, ShardingSpec, label_sharding,
                                                        read_sharded_object, write_sharded_objects)

    rng = np.random.default_rng(9)
    ids = [int(i) for i in rng.choice(2**40, 9000, replace=False)]
    spec = label_sharding(len(ids))
    assert spec["shard_bits"] >= 1
    store = open_store(str(tmp_path))
    objects = {i: rng.bytes(int(rng.integers(0, 50))) for i in ids}
    prefixes = {i: rng.bytes(int(rng.integers(1, 30))) for i in ids[:100]}
    write_sharded_objects(store, spec, objects, prefixes)
    assert len(list(tmp_path.glob("*.shard"))) == 2 ** spec["shard_bits"]
    again = {i: b"new" + bytes([k % 256]) for k, i in enumerate(ids[:50])}
    # a rerun for 50 ids replaces them (and their prefixes); the stored objects say how many
    # bytes before them are theirs (a mesh manifest's data_size), so those survive the rewrite
    stored_prefix = {i: len(p) for i, p in prefixes.items()}
    write_sharded_objects(store, spec, again, prefix_size=lambda cid, raw: stored_prefix.get(cid, 0))
    for i in ids[::97] + ids[:120]:
        assert read_sharded_object(store, spec, i) == again.get(i, objects[i])
    assert read_sharded_object(store, spec, 2**41) is None
    codec = PrecomputedShardCodec(ShardingSpec(spec, "t"))
    for i in ids[:50]:
        stored_prefix.pop(i)
    for key in {codec.key_of_id(i) for i in ids[50:100]}:
        chunks, before = codec.unpack_prefixed(store.get(key), key, lambda cid, raw: stored_prefix.get(cid, 0))
        for i in ids[50:100]:
            if codec.key_of_id(i) == key:
                assert before[i] == prefixes[i]
        assert not set(before) & set(ids[:50])


def test_a_rewrite_keeps_no_stray_bytes_of_a_tensorstore_shard(tmp_path):
    """tensorstore writes each minishard index right after that minishard's data: a rewrite of
    such a shard (a skeleton rerun) must not carry those bytes along as if they were objects'."""
    from volbridge.formats.precomputed_sharding import read_sharded_object, write_sharded_objects

    spec = _spec("identity", "raw", "raw", preshift=0, minishard=2, shard=0)
    kv = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "base": f"file://{tmp_path}/", "metadata": spec}).result()
    for i in range(1, 9):
        kv.write(i.to_bytes(8, "big"), bytes([i]) * 10).result()
    write_sharded_objects(open_store(str(tmp_path)), spec, {20: b"x" * 10})
    # the shard index, 9 objects of 10 bytes and a 24-byte index row per object: nothing else
    assert (tmp_path / "0.shard").stat().st_size == 16 * 4 + 9 * 10 + 24 * 9
    assert {int.from_bytes(k, "big") for k in kv.list().result()} == {*range(1, 9), 20}
    for i in range(1, 9):
        assert read_sharded_object(open_store(str(tmp_path)), spec, i) == bytes([i]) * 10


def test_ranged_shard_reads_over_object_stores_are_concurrent_and_pinned(s3env, s3_bucket, monkeypatch):
    """A read of a few chunks of a big shard on an object store: the index, then the chunk ranges
    (neighbours merged into one request, distant ones in parallel: latency bounds small ranges),
    each GET conditional on the first one's ETag."""
    import threading
    import time

    import volbridge.kv.object_store as os_mod

    url = f"zarr3://s3://{s3_bucket}/concurrent-ranges"
    v = vb.create(url, shape=(64, 256, 256), dtype="uint8", chunk_shape=(64, 64, 64), shard_shape=(64, 256, 256))
    data = np.random.default_rng(11).integers(0, 255, (64, 256, 256), dtype=np.uint8)
    v[...] = data
    real, lock = os_mod.obstore.get, threading.Lock()
    state = {"now": 0, "max": 0, "gets": 0, "conditional": 0}

    def slow_get(store, path, options=None):
        with lock:
            state["now"] += 1
            state["gets"] += "/c/" in path  # the shard's requests, not the metadata's
            state["max"] = max(state["max"], state["now"])
            state["conditional"] += bool(options and options.get("if_match"))
        try:
            time.sleep(0.05)
            return real(store, path, options=options)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(os_mod.obstore, "get", slow_get)
    column = (slice(0, 64), slice(0, 256), slice(0, 64))  # chunks 0, 4, 8, 12: 768 KiB apart
    np.testing.assert_array_equal(vb.array(url)[column], data[column])
    assert state["gets"] == 5 and state["conditional"] == 4  # the index, then 4 pinned ranges
    assert state["max"] >= 2, f"distant chunk ranges were fetched {state['max']} at a time"
    state.update(gets=0, conditional=0)
    row = (slice(0, 64), slice(0, 64), slice(0, 256))  # chunks 0-3, adjacent: one request
    np.testing.assert_array_equal(vb.array(url)[row], data[row])
    assert state["gets"] == 2 and state["conditional"] == 1

def test_services_write_whole_shards_and_caches_read_ranges(tmp_path):
    """transfer and downsample split their work on the destination's shards (write_grid), so each
    shard is written once, not read-modify-written once per chunk; a cache tier serves a small
    read of an uncached shard by range instead of fetching (and caching) the whole shard."""
    from volbridge.services import downsample, transfer

    data = np.random.default_rng(12).integers(0, 255, (64, 128, 128), dtype=np.uint8)
    src = vb.create(f"zarr3://{tmp_path}/src", shape=data.shape, dtype="uint8", chunk_shape=(16, 16, 16))
    src[...] = data
    for fmt in ("zarr3", "precomputed"):
        dst = vb.create(f"{fmt}://{tmp_path}/{fmt}", shape=data.shape, dtype="uint8", chunk_shape=(8, 16, 16),
                        shard_shape=(32, 64, 64), **({"num_scales": 2} if fmt == "precomputed" else {}))
        assert dst.volume.write_grid(0).chunk_shape == (64, 64, 32)
        store = dst.volume.store
        read_at_create = store.stats.bytes_read  # (its metadata, read back to stamp its instance id)
        transfer(f"zarr3://{tmp_path}/src", dst)
        shards = [p for p in (tmp_path / fmt).rglob("*") if p.is_file() and p.name not in ("info", "zarr.json", "provenance")
                  and ".volbridge-locks" not in p.parts]
        assert store.stats.bytes_written <= 1.05 * sum(p.stat().st_size for p in shards) + 4096
        assert store.stats.bytes_read - read_at_create < 4096  # no shard was read back to be patched (metadata only)
        np.testing.assert_array_equal(vb.array(f"{fmt}://{tmp_path}/{fmt}")[...], data)
        if fmt == "precomputed":
            before = store.stats.bytes_written
            downsample(dst)
            assert store.stats.bytes_written - before < 0.3 * data.nbytes  # a quarter of the voxels, once
    cached = vb.array(f"zarr3://{tmp_path}/zarr3", cache=64 * 2**20)
    backing = cached.volume.store.backing
    cached[0:2, 0:2, 0:2]
    assert 0 < backing.stats.bytes_read < 8 * 16 * 16 * 4  # the index and one chunk, not the shard


def test_sharded_precomputed_gzip_is_the_data_encoding(tmp_path):
    data = np.random.default_rng(13).integers(0, 4, (32, 64, 64), dtype=np.uint8)
    v = vb.create(f"precomputed://{tmp_path}/g", shape=data.shape, dtype="uint8", chunk_shape=(16, 16, 16),
                  shard_shape=(32, 32, 32), compression="gzip")
    v[...] = data
    info = json.loads((tmp_path / "g" / "info").read_text())
    assert info["scales"][0]["sharding"]["data_encoding"] == "gzip" and "volbridge" not in info["scales"][0]
    np.testing.assert_array_equal(_ts_precomputed(tmp_path / "g", None, create=False).read().result()[..., 0].T, data)
    with pytest.raises(UnsupportedError, match="gzip only"):
        vb.create(f"precomputed://{tmp_path}/z", shape=data.shape, chunk_shape=(16, 16, 16), shard_shape=(32, 32, 32),
                  compression="zstd")


def test_merge_spans_covers_every_span_exactly():
    from volbridge.kv.ranges import RangeReader, merge_spans

    rng = np.random.default_rng(14)
    data = rng.bytes(5000)
    for _ in range(200):
        spans = [(int(a), int(a + rng.integers(0, 60))) for a in rng.integers(0, 4900, int(rng.integers(1, 30)))]
        spans += spans[:2]  # duplicates
        gap = int(rng.integers(0, 200))
        groups = merge_spans(spans, gap)
        assert sorted(i for _, _, m in groups for i in m) == list(range(len(spans)))
        assert all(a <= spans[i][0] and spans[i][1] <= b for a, b, m in groups for i in m)
        reader = RangeReader(data, "mem")
        reader.merge_gap = gap
        assert [bytes(v) for v in reader.read_many(spans)] == [data[a:b] for a, b in spans]
    assert len(merge_spans([(i * 10, i * 10 + 10) for i in range(100000)], 0)) == 1  # linear, not quadratic


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spans=st.lists(st.tuples(st.integers(0, 12000), st.integers(0, 300)), min_size=1, max_size=25),
       gap=st.integers(0, 5000))
def test_spans_packed_into_one_buffer_read_the_bytes_of_each(tmp_path, spans, gap):
    """pack_runs lays spans out in one buffer (each run at its object offset modulo a page) and
    read_runs fills it: from a file in place, and through the base reader, the same bytes as
    slicing the object, none overwritten by another span's run."""
    from volbridge.kv.ranges import RangeReader, pack_runs

    data = bytes(np.random.default_rng(len(spans)).integers(0, 256, 12500, dtype=np.uint8))
    spans = [(a, min(a + n, len(data))) for a, n in spans]
    runs, run_at, span_at, total = pack_runs(spans, gap)
    assert all(p % 4096 == a % 4096 for (a, _), p in zip(runs, run_at))
    assert all(p + b - a <= q for (a, b), p, q in zip(runs, run_at, [*run_at[1:], total]))  # runs do not overlap
    assert total <= sum(b - a for a, b in runs) + 4096 * len(runs)
    path = tmp_path / "obj"
    path.write_bytes(data)
    store = FileStore(tmp_path)
    for reader in (store.range_reader("obj"), RangeReader(data, "mem")):
        with reader:
            buf = memoryview(bytearray(total))
            reader.read_runs(runs, buf, run_at)
        assert [bytes(buf[p:p + b - a]) for p, (a, b) in zip(span_at, spans)] == [data[a:b] for a, b in spans]


def test_reading_runs_past_the_end_of_a_file_names_it(tmp_path):
    (tmp_path / "obj").write_bytes(b"x" * 100)
    with FileStore(tmp_path).range_reader("obj") as reader:
        with pytest.raises(StoreError, match=r"obj has 100 bytes; bytes 90-120"):
            reader.read_runs([(0, 10), (90, 120)], memoryview(bytearray(4096 + 30)), [0, 4096])
