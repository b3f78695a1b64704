"""The downsample service: each level equals a numpy reference exactly (every method), at odd
sizes and negative offsets, for 2x2x1 and 2x2x2 pyramids, on precomputed and OME-Zarr."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.services import downsample
from volbridge.services.downsample import downsample_array

kernels = importlib.import_module("volbridge.services.downsample")  # the module (``downsample`` is the function)


def reference(a: np.ndarray, f: tuple[int, int, int], method: str, start=(0, 0, 0)) -> np.ndarray:
    """A slow, obvious model: each destination voxel from the source voxels of its block that
    exist (x, y, z), as CloudVolume reduces odd edges. Blocks sit on absolute coordinates: a
    source starting at ``start`` has a first block lacking ``start % f`` voxels."""
    lead = [s % k for s, k in zip(start, f)]
    shape = [-(-(n + lo) // k) for n, lo, k in zip(a.shape, lead, f)]
    out = np.zeros(shape, a.dtype)
    for idx in np.ndindex(*shape):
        block = a[tuple(slice(max(0, i * k - lo), min(n, (i + 1) * k - lo)) for i, k, lo, n in zip(idx, f, lead, a.shape))].ravel()
        if method == "mean":
            s = sum(int(v) for v in block)  # Python ints: exact for 64-bit voxels too
            out[idx] = (s + len(block) // 2) // len(block)
        elif method == "mode":
            vals, counts = np.unique(block, return_counts=True)
            out[idx] = vals[np.argmax(counts)]  # ties: the smallest
        elif method == "min":
            out[idx] = block.min()
        elif method == "max":
            out[idx] = block.max()
        else:
            out[idx] = block[0]
    return out


@settings(max_examples=60)
@given(shape=st.tuples(*[st.integers(1, 9)] * 3), f=st.sampled_from([(2, 2, 1), (2, 2, 2), (3, 1, 2)]),
       method=st.sampled_from(["mean", "mode", "min", "max", "nearest"]), seed=st.integers(0, 2**31))
def test_kernels_equal_the_reference(shape, f, method, seed):
    a = np.random.default_rng(seed).integers(0, 4 if method == "mode" else 256, shape).astype(np.uint8)
    np.testing.assert_array_equal(downsample_array(a, f, method), reference(a, f, method))


@settings(max_examples=60)
@given(shape=st.tuples(*[st.integers(1, 12)] * 3), f=st.sampled_from([(2, 2, 1), (2, 2, 2), (2, 1, 3), (2, 4, 4)]),
       dtype=st.sampled_from(["uint8", "uint16"]), seed=st.integers(0, 2**31))
def test_the_paired_x_mean_on_volume_layout_data_equals_the_reference(shape, f, dtype, seed):
    """Reads come back x-fastest (F order): mean then sums x pairs as wide words (its fast path)."""
    info = np.iinfo(dtype)
    a = np.asfortranarray(np.random.default_rng(seed).integers(0, info.max, shape, dtype=dtype, endpoint=True))
    np.testing.assert_array_equal(downsample_array(a, f, "mean"), reference(a, f, "mean"))


@pytest.fixture(params=["compiled", "numpy"])
def mean_path(request, monkeypatch):
    """The mean through the compiled loop, and through numpy's kernels with the loop switched off."""
    compiled = request.param == "compiled"
    monkeypatch.setattr(kernels, "COMPILED", compiled)
    if compiled:
        kernels._mean_compiled(np.zeros((2, 2, 1), np.uint8, order="F"), (2, 2, 1))  # load it
        assert kernels._loop, "numba is a dependency: the compiled mean must load here"
    return request.param


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)),
       f=st.sampled_from([(2, 2, 1), (2, 2, 2), (1, 2, 1), (3, 1, 2), (4, 4, 4), (8, 4, 4), (16, 16, 1), (3, 3, 3)]),
       dtype=st.sampled_from(["uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"]),
       order=st.sampled_from("CF"), seed=st.integers(0, 2**31))
def test_mean_of_every_integer_type_equals_the_reference(mean_path, shape, f, dtype, order, seed):
    """Whole blocks of extreme and random values (sums that need every accumulator width, negative
    sums rounding half up): the compiled loop and numpy's kernels both give the model's answer."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    full = tuple(n * k for n, k in zip(shape, f))
    a = rng.choice(np.array([info.min, info.max, info.min + 1, info.max - 1, 0, -1 if info.min else 1], dtype=dtype), full)
    a = np.where(rng.random(full) < 0.3, rng.integers(info.min, info.max, full, dtype=dtype, endpoint=True), a)
    a = np.asarray(a, order=order)
    got = kernels.mean(a, f)
    assert got.dtype == a.dtype and got.shape == shape
    np.testing.assert_array_equal(got, reference(a, f, "mean"))


@pytest.mark.parametrize("dtype", [">i8", ">u8", ">u2", "<i8"])
def test_mean_of_non_native_and_64_bit_arrays(mean_path, dtype):
    """Big-endian arrays (a user's, from a file) keep their type; 64-bit extremes stay exact."""
    info = np.iinfo(np.dtype(dtype).newbyteorder("="))
    a = np.array([[[info.max], [info.max - 1]], [[info.max], [info.max]]], dtype=dtype)  # 2 x 2 x 1
    got = downsample_array(a, (2, 2, 1), "mean")
    assert got.dtype == a.dtype and got.shape == (1, 1, 1)
    assert int(got[0, 0, 0]) == (sum(int(v) for v in a.ravel()) + 2) // 4


def test_an_empty_array_downsamples_to_an_empty_one(mean_path):
    for method in ("mean", "mode", "min", "max", "nearest"):
        got = downsample_array(np.zeros((4, 0, 3), np.uint8), (2, 2, 2), method)
        assert got.shape == (2, 0, 2) and got.dtype == np.uint8


def test_the_compiled_mean_sums_in_the_narrowest_type_that_cannot_overflow():
    from volbridge.services._mean_kernel import accumulator

    u8, i8, u16, i32 = (np.dtype(t) for t in ("uint8", "int8", "uint16", "int32"))
    assert accumulator(u8, 128) == np.int16 and accumulator(u8, 129) == np.int32  # 255 * 128 + 64 < 2^15
    assert accumulator(i8, 255) == np.int16 and accumulator(i8, 256) == np.int32  # 128 * 255 + 127
    assert accumulator(u16, 4) == np.int32 and accumulator(u16, 32768) == np.int32 and accumulator(u16, 32769) == np.int64
    assert accumulator(i32, 2) == np.int64
    assert accumulator(np.dtype("uint64"), 2) is None and accumulator(np.dtype("float32"), 2) is None
    assert accumulator(np.dtype(">u2"), 2) is None  # big-endian: numpy's kernel


@pytest.mark.parametrize("fmt", ["precomputed", "ome-zarr"])
@pytest.mark.parametrize("factor", [(1, 2, 2), (2, 2, 2)])
def test_pyramid_equals_the_reference_at_odd_sizes_and_negative_offsets(tmp_path, fmt, factor):
    rng = np.random.default_rng(1)
    bounds = ((-7, -33, 5), (22, 40, 80)) if fmt == "precomputed" else ((0, 0, 0), (29, 73, 75))
    shape = tuple(b - a for a, b in zip(*bounds))
    img = vb.create(f"{fmt}://{tmp_path / 'img'}", bounds=bounds, dtype="uint16", chunk_shape=(8, 16, 16),
                    resolution=(40, 4, 4), num_scales=4, factor=factor)
    data = rng.integers(0, 60000, shape).astype(np.uint16)
    img[...] = data
    downsample(img)
    ref = data.T  # x, y, z
    for m in range(1, 4):
        ref = reference(ref, factor[::-1], "mean", img.mip(m - 1).bounds[0][::-1])
        np.testing.assert_array_equal(img.mip(m)[...], ref.T, err_msg=f"mip {m}")
    # units read into buffers their threads keep while the job runs; none outlive it (review)
    assert not kernels._kept


@pytest.mark.parametrize("url, kw, grouped", [
    ("precomputed://{p}", dict(bounds=((0, -32, 64), (37, 100, 203)), chunk_shape=(8, 16, 16)), True),  # on the grid
    ("precomputed://{p}", dict(bounds=((-7, -33, 5), (22, 40, 80)), chunk_shape=(8, 16, 16)), False),  # odd offsets
    ("precomputed://{p}", dict(bounds=((0, 0, 0), (32, 128, 128)), chunk_shape=(8, 16, 16), shard_shape=(16, 32, 32)), True),
    ("ome-zarr://{p}/o.zarr", dict(bounds=((0, 0, 0), (21, 77, 90)), chunk_shape=(8, 16, 16)), True),
    ("n5://{p}/n.n5", dict(shape=(16, 64, 80), chunk_shape=(8, 16, 16)), True),
])
@pytest.mark.parametrize("dtype, method", [("uint8", "mean"), ("uint64", "mode")])
def test_units_of_several_levels_write_what_level_by_level_units_write(tmp_path, monkeypatch, url, kw, grouped, dtype, method):
    """Where the cells of consecutive scales nest, one unit computes them all from one read of
    the lowest one's source; every level equals the level-by-level run, voxel for voxel."""
    rng = np.random.default_rng(3)
    outs, groups = [], []
    real = kernels._groups
    monkeypatch.setattr(kernels, "_groups", lambda *a: groups.append(real(*a)) or groups[-1])
    for limit in (kernels.LEVELS_SOURCE_BYTES, 1):  # 1 byte: every level on its own
        monkeypatch.setattr(kernels, "LEVELS_SOURCE_BYTES", limit)
        p = tmp_path / str(limit)
        v = vb.create(url.format(p=p), dtype=dtype, num_scales=4, resolution=(40, 4, 4), **kw)
        data = rng.integers(0, 5 if method == "mode" else 256, v.shape, dtype=np.uint8).astype(dtype)
        v[...] = data if not outs else outs[0][0]
        downsample(v, method=method, resume=False)
        outs.append([v.mip(m)[...] for m in range(4)])
    assert (max(map(len, groups[0])) > 1) == grouped, groups
    assert max(map(len, groups[1])) == 1
    for m in range(4):
        np.testing.assert_array_equal(outs[0][m], outs[1][m], err_msg=f"mip {m}")


def test_levels_nest_only_where_cells_and_bounds_line_up():
    from types import SimpleNamespace

    from volbridge.geometry import Box, ChunkGrid

    def volume(b0, b1, o1=(0, 0, 0), c1=(16, 16, 8)):
        bounds = [Box(*b0), Box(*b1)]
        grids = [ChunkGrid(bounds[0], (16, 16, 8), (0, 0, 0)), ChunkGrid(bounds[1], c1, o1)]
        return SimpleNamespace(write_grid=grids.__getitem__, meta=SimpleNamespace(scales=[SimpleNamespace(bounds=b) for b in bounds]))

    f = (2, 2, 1)
    assert kernels._levels_nest(volume(((0, 0, 0), (65, 64, 8)), ((0, 0, 0), (33, 32, 8))), 1, f)
    # a coarser level whose size was rounded down leaves the last column of cells to no unit
    assert not kernels._levels_nest(volume(((0, 0, 0), (65, 64, 8)), ((0, 0, 0), (32, 32, 8))), 1, f)
    assert not kernels._levels_nest(volume(((0, 0, 0), (64, 64, 8)), ((0, 0, 0), (32, 32, 8)), o1=(4, 0, 0)), 1, f)
    assert not kernels._levels_nest(volume(((0, 0, 0), (64, 64, 8)), ((0, 0, 0), (32, 32, 8)), c1=(12, 16, 8)), 1, f)


def test_segmentation_takes_the_mode_and_never_invents_ids(tmp_path):
    seg = vb.create(f"precomputed://{tmp_path / 'seg'}", bounds=((-3, -9, -11), (10, 30, 31)), dtype="uint64",
                    chunk_shape=(4, 8, 8), resolution=(40, 8, 8), layer_type="segmentation", num_scales=3,
                    encoding="compressed_segmentation")
    labels = np.array([0, 5, 2**40 + 1, 2**63 + 7], np.uint64)
    data = labels[np.random.default_rng(2).integers(0, 4, seg.shape)]
    seg[...] = data
    downsample(f"precomputed://{tmp_path / 'seg'}")
    ref = data.T
    for m in (1, 2):
        ref = reference(ref, (2, 2, 1), "mode", seg.mip(m - 1).bounds[0][::-1])
        got = seg.mip(m)[...]
        np.testing.assert_array_equal(got, ref.T)
        assert set(np.unique(got)) <= set(labels)


def test_refusals(tmp_path):
    img = vb.create(f"precomputed://{tmp_path / 'img'}", shape=(4, 8, 8), dtype="uint8", num_scales=2)
    with pytest.raises(vb.errors.ReadOnlyError):
        downsample(vb.array(str(tmp_path / "img")))
    with pytest.raises(vb.errors.InvalidArgumentError, match="method"):
        downsample(img, method="median")
    with pytest.raises(vb.errors.InvalidArgumentError, match="1..1"):
        downsample(img, mips=[2])


def test_extend_a_pyramid_that_peers_read(tmp_path):
    """num_mips adds precomputed scales (CloudVolume's floor/ceil bounds); CloudVolume and
    tensorstore read the levels volbridge wrote."""
    import tensorstore as ts
    from cloudvolume import CloudVolume

    img = vb.create(f"precomputed://{tmp_path / 'img'}", bounds=((3, -21, 9), (20, 70, 100)), dtype="uint8",
                    chunk_shape=(8, 16, 16), resolution=(40, 4, 4))
    data = np.random.default_rng(5).integers(0, 256, img.shape, dtype=np.uint8)
    img[...] = data
    downsample(img, num_mips=3, factor=(2, 2, 2))
    img = vb.array(f"precomputed://{tmp_path / 'img'}")
    assert len(img.scales) == 4 and img.mip(3).resolution == (320, 32, 32)
    ref = data.T
    for m in range(1, 4):
        ref = reference(ref, (2, 2, 2), "mean", img.mip(m - 1).bounds[0][::-1])
        np.testing.assert_array_equal(img.mip(m)[...], ref.T)
        cv = CloudVolume(f"file://{tmp_path / 'img'}", mip=m, progress=False)
        assert tuple(cv.bounds.minpt) == img.mip(m).bounds[0][::-1]
        np.testing.assert_array_equal(np.asarray(cv[cv.bounds])[..., 0], ref)
        t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path / 'img'}", "scale_index": m}).result()
        np.testing.assert_array_equal(np.asarray(t[ts.d["channel"][0]].read().result()), ref)
    with pytest.raises(vb.errors.UnsupportedError, match="add scales"):
        downsample(vb.create(f"zarr3://{tmp_path / 'z'}", shape=(4, 8, 8), dtype="uint8"), num_mips=1)


@pytest.mark.parametrize("url,kw", [
    ("ome-zarr://{p}/o5", dict(bounds=((3, -21, 9), (20, 70, 100)), shard_shape=(16, 32, 32))),  # offsets, shards
    ("ome-zarr://{p}/o4", dict(shape=(17, 91, 91), ome_version="0.4")),
    ("n5://{p}/n5", dict(shape=(17, 91, 91), num_scales=2)),
])
def test_extend_ome_zarr_and_n5_pyramids_that_peers_read(tmp_path, url, kw):
    """num_mips adds OME-Zarr datasets (the last array's codecs and shards, scale x factor, a
    translation at floor(start / factor)) and N5 s<n> groups; zarr-python and tensorstore read them."""
    import tensorstore as ts
    import zarr

    url = url.format(p=tmp_path)
    img = vb.create(url, dtype="uint8", chunk_shape=(8, 16, 16), resolution=(40, 4, 4), **kw)
    data = np.random.default_rng(6).integers(0, 256, img.shape, dtype=np.uint8)
    img[...] = data
    downsample(url, num_mips=3, factor=(1, 2, 2))
    img = vb.array(url)
    assert len(img.scales) == 4
    assert img.mip(3).resolution == (40, 32, 32)
    ref = data.T
    root = url.split("://", 1)[1]
    for m in range(1, 4):
        ref = reference(ref, (2, 2, 1), "mean", img.mip(m - 1).bounds[0][::-1])
        np.testing.assert_array_equal(img.mip(m)[...], ref.T, err_msg=f"mip {m}")
        if "ome-zarr" in url:
            path = img.volume.dataset.attrs["multiscales"][0]["datasets"][m]["path"]
            np.testing.assert_array_equal(zarr.open_array(f"{root}/{path}", mode="r")[...], ref.T)
        else:
            t = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{root}/s{m}"}}).result()
            np.testing.assert_array_equal(np.asarray(t.read().result()), ref)
    if "o5" in url:  # translations keep the levels in register: mip 3 starts at floor(start / 8)
        assert img.mip(3).bounds[0] == (3, -3, 1)


def test_single_scale_n5_cannot_grow_scales(tmp_path):
    n5 = vb.create(f"n5://{tmp_path}/n", shape=(4, 8, 8), dtype="uint8")
    with pytest.raises(vb.errors.UnsupportedError, match="single-scale N5"):
        downsample(n5, num_mips=1)


@settings(max_examples=150, deadline=None)
@given(st.tuples(*[st.integers(1, 11)] * 3), st.tuples(*[st.integers(1, 4)] * 3), st.data(),
       st.sampled_from(["mean", "mode", "min", "max", "nearest"]))
def test_partial_edge_blocks_reduce_over_the_voxels_that_exist(shape, f, data, method):
    """(review) with factor 3, '0 0 0 0 90' gave '0 60' (the edge voxel repeated into the block)
    and mode counted it twice against the tie rule; both take the voxels that exist."""
    from volbridge.services.downsample import KERNELS, _reduce_edges

    lead = tuple(data.draw(st.integers(0, k - 1)) for k in f)
    a = np.asfortranarray(np.random.default_rng(sum(shape) + 7 * sum(f)).integers(0, 4, shape).astype(np.uint16))
    # a source starting at `lead` lacks `lead` voxels of its first block
    np.testing.assert_array_equal(_reduce_edges(a, lead, f, KERNELS[method]), reference(a, f, method, lead))


def test_a_factor_of_three_at_an_odd_edge(tmp_path):
    a = np.array([0, 0, 0, 0, 90], np.uint8).reshape(5, 1, 1)
    assert downsample_array(a, (3, 1, 1), "mean").ravel().tolist() == [0, 45]
    assert downsample_array(np.array([1, 1, 1, 4, 9], np.uint64).reshape(5, 1, 1), (3, 1, 1), "mode").ravel().tolist() == [1, 4]


def test_coarse_bounds_wider_than_the_scale_below_implies_still_fill(tmp_path):
    """(review of the edge rule) a scale 1 whose bounds start before floor(start / f), or run
    past ceil(stop / f), as another tool may write them, made the units' blocks hold no source
    voxel: StopIteration or a ShapeError. Such blocks repeat the edge, as before."""
    import json

    url = f"precomputed://{tmp_path / 'v'}"
    a = vb.create(url, bounds=((0, 0, 10), (8, 16, 100)), dtype="uint8", chunk_shape=(8, 16, 16), num_scales=2)
    a[...] = np.arange(90, dtype=np.uint8)[None, None, :]
    info = json.loads((tmp_path / "v" / "info").read_text())
    info["scales"][1]["voxel_offset"][0] = 0  # x from 0, not floor(10 / 2) = 5
    info["scales"][1]["size"][0] = 60  # to 60, not ceil(100 / 2) = 50
    (tmp_path / "v" / "info").write_text(json.dumps(info))
    from volbridge.services.downsample import downsample as run

    run(url, mips=[1], resume=False)
    got = vb.array(url).mip(1)[0, 0, :]  # x 0..60 at mip 1
    assert got[5:50].tolist() == [((2 * i - 10) + (2 * i - 9) + 1) // 2 for i in range(5, 50)]  # the means inside
    assert (got[:5] == 0).all() and (got[50:] == 89).all()  # the edge voxels (x 10 and 99) repeated outside
