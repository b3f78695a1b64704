"""The precomputed format layer: building, parsing and keeping `info` documents."""

import json

import numpy as np
import pytest

import volbridge as vb
from volbridge.formats.precomputed import DATA_TYPES, build_info, parse_info, scale_key
from volbridge.geometry import Box


def test_build_info_scales_cover_the_volume():
    info = build_info(bounds=Box((-5, 1, -64), (10, 5, 192)), dtype="uint8", chunk_shape=(64, 64, 16),
                      resolution=(8, 8, 40), num_scales=3, factor=(2, 2, 1))
    s = info["scales"]
    assert [x["key"] for x in s] == ["8_8_40", "16_16_40", "32_32_40"]
    assert s[0]["voxel_offset"] == [-5, 1, -64] and s[0]["size"] == [15, 4, 256]
    # floor(start / f) .. ceil(stop / f): every voxel of mip 0 has a parent voxel.
    assert s[1]["voxel_offset"] == [-3, 0, -64] and s[1]["size"] == [8, 3, 256]
    assert s[2]["voxel_offset"] == [-2, 0, -64] and s[2]["size"] == [5, 2, 256]
    assert info["@type"] == "neuroglancer_multiscale_volume" and info["num_channels"] == 1


def test_scale_key_formats_like_the_peers():
    assert scale_key((4, 4, 40)) == "4_4_40"
    assert scale_key((4.5, 4.0, 40.0)) == "4.5_4_40"


@pytest.mark.parametrize("dtype", DATA_TYPES)
def test_every_dtype_round_trips(tmp_path, dtype):
    v = vb.create(f"precomputed://{tmp_path}/v", shape=(3, 5, 7), chunk_shape=(2, 2, 4), dtype=dtype)
    rng = np.random.default_rng(0)
    d = np.dtype(dtype)
    data = (rng.standard_normal((3, 5, 7)) * 100).astype(d) if d.kind == "f" else \
        rng.integers(np.iinfo(d).min, np.iinfo(d).max, (3, 5, 7), dtype=d, endpoint=True)
    v[...] = data
    got = vb.array(f"{tmp_path}/v")[...]
    assert got.dtype == d
    np.testing.assert_array_equal(got, data)


def test_unknown_and_optional_fields_survive(tmp_path):
    info = build_info(bounds=Box((0, 0, 0), (8, 8, 8)), dtype="uint64", chunk_shape=(8, 8, 8),
                      resolution=(1, 1, 1), encoding="compressed_segmentation", layer_type="segmentation")
    info.update(mesh="mesh", skeletons="skeletons", segment_properties="props")
    info["scales"][0].update(hidden=True, png_level=3, custom={"a": 1})
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "info").write_text(json.dumps(info))
    meta = vb.array(str(tmp_path / "v")).metadata
    assert meta["mesh"] == "mesh" and meta["skeletons"] == "skeletons" and meta["segment_properties"] == "props"
    assert meta["scales"][0]["hidden"] is True and meta["scales"][0]["custom"] == {"a": 1}
    assert parse_info(meta)["scales"][0].cseg_block_size == (8, 8, 8)


def test_scale_keys_with_subdirectories(tmp_path):
    info = build_info(bounds=Box((0, 0, 0), (4, 4, 4)), dtype="uint8", chunk_shape=(4, 4, 4), resolution=(1, 1, 1))
    info["scales"][0]["key"] = "mips/./0"
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "info").write_text(json.dumps(info))
    v = vb.array(str(tmp_path / "v"), mode="r+")
    v[...] = np.full((4, 4, 4), 9, np.uint8)
    assert (tmp_path / "v" / "mips" / "0" / "0-4_0-4_0-4").exists()
    info["scales"][0]["key"] = "../outside"
    (tmp_path / "v" / "info").write_text(json.dumps(info))
    with pytest.raises(vb.errors.UnsupportedError, match="outside"):
        vb.array(str(tmp_path / "v"))[...]
