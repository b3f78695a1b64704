"""VolumeArray semantics: axis orders as views, channels, integer indices, scales, dask."""

import json

import deflate
import numpy as np
import pytest

import volbridge as vb


@pytest.fixture
def em(tmp_path):
    vol = vb.create(f"precomputed://{tmp_path}/em", bounds=((-8, -20, 5), (24, 44, 69)), chunk_shape=(8, 16, 16),
                    resolution=(40, 8, 8), dtype="uint16", num_scales=3)
    data = np.random.default_rng(0).integers(0, 60000, (32, 64, 64), dtype=np.uint16)
    vol[...] = data
    return str(tmp_path / "em"), data


def test_tuples_follow_axis_order(em):
    path, data = em
    zyx, xyz = vb.array(path), vb.array(path, axis_order="xyz")
    assert zyx.shape == (32, 64, 64) and zyx.bounds == ((-8, -20, 5), (24, 44, 69))
    assert zyx.resolution == (40, 8, 8) and zyx.chunk_shape == (8, 16, 16)
    assert xyz.bounds == ((5, -20, -8), (69, 44, 24)) and xyz.resolution == (8, 8, 40)
    assert [s.resolution for s in zyx.scales] == [(40, 8, 8), (40, 16, 16), (40, 32, 32)]
    assert zyx.mip(2).bounds == ((-8, -5, 1), (24, 11, 18))
    assert zyx.metadata["scales"][0]["voxel_offset"] == [5, -20, -8]


def test_reads_are_views_of_one_layout(em):
    path, data = em
    a = vb.array(path)[0:10, -5:30, 7:60]
    b = vb.array(path, axis_order="xyz")[7:60, -5:30, 0:10]
    assert a.flags.c_contiguous and b.flags.f_contiguous
    np.testing.assert_array_equal(a, data[8:18, 15:50, 2:55])
    np.testing.assert_array_equal(b, a.T)
    assert a.flags.writeable


def test_outside_reads_are_zero_and_integers_drop_axes(em):
    path, data = em
    v = vb.array(path)
    cut = v[-20:0, -30:-10, 0:10]
    assert cut.shape == (20, 20, 10)
    np.testing.assert_array_equal(cut[12:, 10:, 5:], data[:8, :10, :5])
    assert (cut[:12] == 0).all() and (cut[:, :10] == 0).all() and (cut[:, :, :5] == 0).all()
    assert v[3, -20, 5] == data[11, 0, 0]
    np.testing.assert_array_equal(v[3], data[11])
    np.testing.assert_array_equal(v[..., 68], data[..., 63])
    np.testing.assert_array_equal(v[-8:24:3, ::5, 10], data[::3, ::5, 5])
    assert v[100, 100, 100] == 0
    np.testing.assert_array_equal(np.asarray(v), data)


def test_scalar_and_broadcast_writes(em):
    path, data = em
    v = vb.array(path, mode="r+")
    v[0:4, 0:3, 10:20] = 7
    v[5, 0:3, 10:20] = np.arange(10, dtype=np.uint16)  # broadcast over y, numpy style
    got = v[...]
    want = data.copy()
    want[8:12, 20:23, 5:15] = 7
    want[13, 20:23, 5:15] = np.arange(10)
    np.testing.assert_array_equal(got, want)


def test_channels(tmp_path):
    vol = vb.create(f"precomputed://{tmp_path}/rgb", shape=(4, 10, 12), chunk_shape=(2, 4, 5), num_channels=3)
    data = np.random.default_rng(1).integers(0, 255, (3, 4, 10, 12), dtype=np.uint8)
    assert vol.shape == (3, 4, 10, 12)
    vol[...] = data
    xyz = vb.array(f"{tmp_path}/rgb", axis_order="xyz")
    assert xyz.shape == (12, 10, 4, 3)
    np.testing.assert_array_equal(xyz[...], data.T)
    np.testing.assert_array_equal(vol[1], data[1])
    np.testing.assert_array_equal(vol[-1, 2, 3:7], data[2, 2, 3:7])
    vol[2, 1:3, 2:9, 0:5] = np.zeros((2, 7, 5), np.uint8)  # one channel: read-modify-write
    data[2, 1:3, 2:9, 0:5] = 0
    np.testing.assert_array_equal(vb.array(f"{tmp_path}/rgb")[...], data)
    assert vb.array(f"{tmp_path}/rgb")[0:2].flags.c_contiguous


def test_scales_are_independent(em):
    path, data = em
    v = vb.array(path, mode="r+")
    m1 = v.mip(1)
    m1[...] = np.full(m1.shape, 3, np.uint16)
    assert (v.mip(1)[...] == 3).all() and (v.mip(2)[...] == 0).all()
    np.testing.assert_array_equal(v[...], data)


def test_to_dask(em):
    path, data = em
    d = vb.array(path).to_dask()
    assert d.shape == data.shape and d.chunksize == (8, 16, 16)
    np.testing.assert_array_equal(d.compute(), data)
    np.testing.assert_array_equal(d[3:20, 10:50, 1:2].compute(), data[3:20, 10:50, 1:2])
    assert int(d.sum().compute()) == int(data.sum(dtype=np.int64))


def test_dask_arrays_see_writes_and_write_back_at_their_place(tmp_path):
    """(review) to_dask() named its graph by the URL alone, so an array taken after a write got
    the blocks of one persisted before it; and a volume given to da.store as its target took
    dask's 0-based regions as absolute, writing every block shifted off a volume whose bounds
    start elsewhere. ``vol[box] = dask_array`` writes each block at its place, after checking
    the box."""
    import dask.array as da

    url = f"precomputed://{tmp_path / 'v'}"
    v = vb.create(url, bounds=((-3, 10, -16), (5, 42, 16)), dtype="uint16", chunk_shape=(4, 16, 16))
    v[...] = 1
    before = v.to_dask().persist()
    v[...] = 7
    after = v.to_dask()
    assert before.name != after.name and int((after - before).max().compute()) == 6
    base = np.random.default_rng(3).integers(0, 1000, v.shape).astype(np.uint16)
    v[...] = base
    v[...] = v.to_dask() * np.uint16(2)  # blocks of 4 x 16 x 16 over a negative offset
    np.testing.assert_array_equal(v[...], base * 2)
    part = da.from_array(np.full((3, 20, 9), 5, np.uint16), chunks=(2, 7, 4))  # unaligned blocks
    v[-2:1, 15:35, -4:5] = part
    want = base * 2
    want[1:4, 5:25, 12:21] = 5
    np.testing.assert_array_equal(v[...], want)
    for sel, bad, err in (((slice(-2, 1), slice(15, 35), slice(-4, 5)), part.astype(np.uint8), vb.errors.DTypeError),
                          ((slice(-2, 1), slice(15, 35), slice(-4, 6)), part, vb.errors.ShapeError),
                          ((slice(3, 6), slice(15, 35), slice(-4, 5)), part, vb.errors.BoundsError)):
        with pytest.raises(err):
            v[sel] = bad
    np.testing.assert_array_equal(v[...], want)  # nothing written by the refused ones


def test_a_pickled_handle_keeps_its_cache_and_a_copy_shares_its_volume(tmp_path):
    """(review) A handle pickled for a dask worker reopened without its cache= tier, so a write
    there left the writer's disk cache stale; copy.copy of a memory volume's handle raised."""
    import copy
    import pickle

    a = vb.create(f"precomputed://{tmp_path / 'v'}", shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16))
    a[...] = 1
    for cache in (str(tmp_path / "cache"), 2**20):
        h = vb.array(str(tmp_path / "v"), mode="r+", cache=cache)
        assert (h[...] == 1).all()
        w = pickle.loads(pickle.dumps(h))
        assert type(w.volume.store) is type(h.volume.store)  # here (a memory tier: in this process only)
        w[...] = 7
        assert (h[...] == 7).all()
        w[...] = 1
    m = vb.create("precomputed://mem://copied", shape=(4, 4, 4), overwrite=True)
    for c in (copy.copy(m), copy.deepcopy(m)):
        assert c.volume is m.volume and c.shape == m.shape


def test_bigarrays_layout(tmp_path):
    """BigArrays.jl: gzip bytes under 'raw', double hyphens for negative keys, no resolution field."""
    root = tmp_path / "ba"
    (root / "4_4_40").mkdir(parents=True)
    info = {"data_type": "uint8", "num_channels": 1, "type": "image", "scales": [
        {"key": "4_4_40", "size": [10, 10, 5], "voxel_offset": [-10, -10, -5], "resolution": [4, 4, 40],
         "chunk_sizes": [[10, 10, 5]], "encoding": "raw"}]}
    (root / "info").write_text(json.dumps(info))
    chunk = np.arange(500, dtype=np.uint8).reshape(10, 10, 5, order="F")
    (root / "4_4_40" / "-10-0_-10-0_-5-0").write_bytes(deflate.gzip_compress(chunk.tobytes(order="F"), 6))
    np.testing.assert_array_equal(vb.array(str(root), axis_order="xyz")[-10:0, -10:0, -5:0], chunk)


def test_deep_layout_and_cloudvolume_suffixes(tmp_path):
    vol = vb.create(f"precomputed://{tmp_path}/v", shape=(4, 4, 8), chunk_shape=(4, 4, 4))
    data = np.arange(128, dtype=np.uint8).reshape(4, 4, 8)
    vol[...] = data
    d = tmp_path / "v" / "1_1_1"
    # Move one chunk to neuroglancer-scripts' deep layout, the other to CloudVolume's .gz.
    (d / "0-4" / "0-4").mkdir(parents=True)
    (d / "0-4_0-4_0-4").rename(d / "0-4" / "0-4" / "0-4")
    (d / "4-8_0-4_0-4.gz").write_bytes(deflate.gzip_compress((d / "4-8_0-4_0-4").read_bytes(), 6))
    (d / "4-8_0-4_0-4").unlink()
    np.testing.assert_array_equal(vb.array(str(tmp_path / "v"))[...], data)
    # A write replaces the variant with the canonical name and removes the stale copy.
    vb.array(str(tmp_path / "v"), mode="r+")[0:2, 0:2, 6:8] = np.zeros((2, 2, 2), np.uint8)
    data[0:2, 0:2, 6:8] = 0
    assert not (d / "4-8_0-4_0-4.gz").exists() and (d / "4-8_0-4_0-4").exists()
    np.testing.assert_array_equal(vb.array(str(tmp_path / "v"))[...], data)


def test_memory_urls():
    v = vb.create("precomputed://mem://arr-test", shape=(3, 3, 3), chunk_shape=(2, 2, 2), overwrite=True)
    v[...] = np.ones((3, 3, 3), np.uint8)
    assert vb.array("mem://arr-test")[...].sum() == 27


def test_scalar_writes_follow_the_volume_dtype(tmp_path):
    f = vb.create(f"precomputed://{tmp_path}/f", shape=(2, 2, 2), chunk_shape=(2, 2, 2), dtype="float32")
    f[0] = 0.1  # rounds to float32, as numpy would
    f[1] = float("nan")
    got = f[...]
    assert (got[0] == np.float32(0.1)).all() and np.isnan(got[1]).all()
    with pytest.raises(vb.errors.DTypeError, match="not representable"):
        f[0] = 1e300  # overflows float32
    with pytest.raises(vb.errors.DTypeError, match="not representable"):
        f[0] = 1 + 2j
    i = vb.create(f"precomputed://{tmp_path}/i", shape=(2, 2, 2), chunk_shape=(2, 2, 2), dtype="int16")
    i[0] = -7
    i[1] = np.uint8(3)
    assert i[0, 0, 0] == -7 and i[1, 0, 0] == 3
    for bad in (2.0, 40000, True + 0.5):
        with pytest.raises(vb.errors.DTypeError, match="not representable"):
            i[0] = bad
    # (review) Python ints past 64 bits: numpy's own TypeError / OverflowError came out, and
    # floats that hold them were refused
    f[0] = 10**30
    assert f[0, 0, 0] == np.float32(1e30)
    u = vb.create(f"precomputed://{tmp_path}/u", shape=(2, 2, 2), chunk_shape=(2, 2, 2), dtype="uint64")
    u[0] = 2**64 - 1
    assert u[0, 0, 0] == 2**64 - 1
    for vol, bad in ((u, 2**70), (u, -2**70), (i, 2**64 + 1), (f, 10**40), (f, 10**400)):
        with pytest.raises(vb.errors.DTypeError, match="not representable"):
            vol[1] = bad
    assert u[1, 0, 0] == 0 and np.isnan(f[1, 0, 0])


@pytest.mark.parametrize("fmt,shard", [("precomputed", None), ("zarr3", (8, 16, 16)), ("n5", None)])
def test_read_into_equals_read_and_writes_every_voxel(tmp_path, fmt, shard):
    """``Volume.read_into`` (service units reuse one buffer): boxes inside and across the bounds,
    absent chunks, channels; the buffer starts as garbage, which must all be overwritten."""
    from volbridge.geometry import Box

    kw = {"num_channels": 2} if fmt != "n5" else {}
    v = vb.create(f"{fmt}://{tmp_path}/v", shape=(16, 32, 24), dtype="uint16", chunk_shape=(8, 8, 8), shard_shape=shard,
                  **kw)
    data = np.random.default_rng(3).integers(1, 60000, (16, 20, 24) if fmt == "n5" else (2, 16, 20, 24), dtype=np.uint16)
    v[..., :20, :] = data  # y 20..32 stays absent
    vol = v.volume
    for start, stop in [((0, 0, 0), (24, 32, 16)), ((3, 5, 1), (17, 29, 9)), ((-4, 10, 12), (30, 40, 20))]:
        box = Box(start, stop)
        expect = vol.read(box)
        out = np.full(expect.shape, 0xBEEF, np.uint16, order="F")
        vol.read_into(box, out)
        np.testing.assert_array_equal(out, expect)
    from volbridge.errors import DTypeError, ShapeError

    nc = vol.meta.num_channels
    with pytest.raises(ShapeError, match="shape"):
        vol.read_into(Box((0, 0, 0), (8, 8, 8)), np.zeros((8, 8, 7, nc), np.uint16, order="F"))
    with pytest.raises(DTypeError, match="uint16"):
        vol.read_into(Box((0, 0, 0), (8, 8, 8)), np.zeros((8, 8, 8, nc), np.uint8, order="F"))
    frozen = np.zeros((8, 8, 8, nc), np.uint16, order="F")
    frozen.flags.writeable = False
    with pytest.raises(ShapeError, match="read-only"):  # (review) a bare ValueError from the engine before
        vol.read_into(Box((0, 0, 0), (8, 8, 8)), frozen)
    assert not frozen.any()


@pytest.mark.parametrize("fmt,kw", [("zarr", {}), ("zarr3", {}), ("zarr3", {"shard_shape": (8, 8, 8)}), ("n5", {}),
                                    ("ome-zarr", {"ome_version": "0.4"}), ("ome-zarr", {"ome_version": "0.5", "num_scales": 2})])
@pytest.mark.parametrize("where", ["file", "mem"])
def test_create_with_overwrite_starts_from_nothing(tmp_path, fmt, kw, where):
    """(review) overwrite=True wrote new metadata over the old chunks: the new array read the
    old voxels, or, recreated with another dtype, failed to decode them on every read and
    partial write. As zarr-python and TensorStore do, the old objects go first; a recreate
    whose arguments are refused leaves the old volume whole."""
    base = f"file://{tmp_path}/v" if where == "file" else f"mem://overwrite-{fmt}-{len(kw)}-{kw.get('ome_version')}/v"
    url = f"{fmt}://{base}"
    old = vb.create(url, shape=(16, 16, 16), chunk_shape=(4, 4, 4), dtype="uint8", **kw)
    old[...] = 7
    if fmt == "ome-zarr":
        with pytest.raises(vb.errors.UnsupportedError):
            vb.create(url, shape=(16, 16, 16), chunk_shape=(4, 4, 4), dtype="uint8", compression="lzma", overwrite=True, **kw)
        assert (vb.array(url)[...] == 7).all()
    again = vb.create(url, shape=(16, 16, 24), chunk_shape=(4, 4, 4), dtype="uint16",
                      **{k: v for k, v in kw.items() if k != "num_scales"}, overwrite=True)
    assert again.dtype == np.uint16 and (again[...] == 0).all()
    again[1:3, 2:5, 3:9] = 1000  # read-modify-write of chunks that must not find the old bytes
    expect = np.zeros((16, 16, 24), np.uint16)
    expect[1:3, 2:5, 3:9] = 1000
    reopened = vb.array(url)
    assert reopened.scales == again.scales and (reopened[...] == expect).all()
