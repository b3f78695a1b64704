"""OME-Zarr multiscales (0.4 on zarr v2, 0.5 on zarr v3) as one volume with mips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import zarr

import volbridge as vb
from volbridge.errors import MetadataError, UnsupportedError


def write_v04(path, axes, datasets, arrays):
    zarr.open_group(str(path), mode="w", zarr_format=2)
    for name, data in arrays.items():
        a = zarr.create_array(f"{path}/{name}", shape=data.shape, chunks=tuple(min(s, 8) for s in data.shape),
                              dtype=data.dtype, zarr_format=2)
        a[...] = data
    (path / ".zattrs").write_text(json.dumps({"multiscales": [{"version": "0.4", "axes": axes, "datasets": datasets}]}))


AXES5 = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
    {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]


def test_v04_tczyx_micrometers_and_translation(tmp_path):
    rng = np.random.default_rng(0)
    s0 = rng.integers(0, 255, (1, 2, 6, 16, 20), dtype=np.uint8)
    s1 = rng.integers(0, 255, (1, 2, 6, 8, 10), dtype=np.uint8)
    datasets = [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.04, 0.008, 0.008]},
                                                    {"type": "translation", "translation": [0, 0, 0.08, -0.016, 0.8]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.04, 0.016, 0.016]}]},
    ]
    write_v04(tmp_path / "img.zarr", AXES5, datasets, {"0": s0, "1": s1})
    vol = vb.array(str(tmp_path / "img.zarr"))
    assert vol.format == "ome-zarr" and vol.shape == (2, 6, 16, 20)
    assert vol.resolution == pytest.approx((40, 8, 8)) and vol.bounds == ((2, -2, 100), (8, 14, 120))
    assert vol.mip(1).resolution == pytest.approx((40, 16, 16)) and vol.mip(1).bounds == ((0, 0, 0), (6, 8, 10))
    np.testing.assert_array_equal(vol[...], s0[0])
    np.testing.assert_array_equal(vol.mip(1)[...], s1[0])
    np.testing.assert_array_equal(vol[1, 2:4, -2:0, 100:103], s0[0, 1, 0:2, 0:2, 0:3])


def test_v05_pyramid_created_by_volbridge(tmp_path):
    url = f"ome-zarr://{tmp_path}/p.zarr"
    vol = vb.create(url, bounds=((-4, -16, 8), (12, 48, 72)), chunk_shape=(4, 16, 16), dtype="uint16",
                    resolution=(40, 8, 8), num_scales=3, num_channels=2)
    data = np.random.default_rng(1).integers(0, 60000, (2, 16, 64, 64), dtype=np.uint16)
    vol[...] = data
    ome = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    # voxel 0 of level 1 starts at (-8, 4) x 16 nm in y, x; its centre, which the translation
    # names (as neuroglancer and ome-zarr-py read it), lies (16 - 8) / 2 = 4 nm further
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 40.0, 16.0, 16.0]},
        {"type": "translation", "translation": [0.0, -160.0, -124.0, 68.0]}]
    for level in range(3):  # each level is a zarr v3 array with dimension_names, as 0.5 requires
        meta = json.loads((tmp_path / "p.zarr" / str(level) / "zarr.json").read_text())
        assert meta["dimension_names"] == ["c", "z", "y", "x"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr" / "0"), mode="r")[...], data)
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "p.zarr" / "0")}}).result()
    np.testing.assert_array_equal(t.read().result(), data)
    again = vb.array(str(tmp_path / "p.zarr"))
    assert again.bounds == ((-4, -16, 8), (12, 48, 72)) and again.mip(2).bounds == ((-4, -4, 2), (12, 12, 18))
    np.testing.assert_array_equal(again[...], data)


@pytest.mark.parametrize("mutate,error,message", [
    (lambda m: m.update(axes=[{"name": "x", "type": "space"}, {"name": "c", "type": "channel"}] + AXES5[2:4]), UnsupportedError, "spatial"),
    (lambda m: m["axes"][2].update(unit="parsec"), UnsupportedError, "'parsec'"),
    (lambda m: m["datasets"][0].update(path="9"), MetadataError, "'9' has no zarr array"),
    (lambda m: m["datasets"][0]["coordinateTransformations"].append({"type": "affine"}), UnsupportedError, "'affine'"),
    (lambda m: m["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 1]), MetadataError, "one value per axis"),
])
def test_malformed_multiscales(tmp_path, mutate, error, message):
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1, 1]}]}]
    write_v04(tmp_path / "x.zarr", AXES5, datasets, {"0": np.zeros((1, 1, 2, 2, 2), np.uint8)})
    doc = json.loads((tmp_path / "x.zarr" / ".zattrs").read_text())
    mutate(doc["multiscales"][0])
    (tmp_path / "x.zarr" / ".zattrs").write_text(json.dumps(doc))
    with pytest.raises(error, match=message):
        vb.array(str(tmp_path / "x.zarr"))


def test_time_axis_longer_than_one_is_refused(tmp_path):
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1, 1]}]}]
    write_v04(tmp_path / "t.zarr", AXES5, datasets, {"0": np.zeros((3, 1, 2, 2, 2), np.uint8)})
    with pytest.raises(UnsupportedError, match="length 3"):
        vb.array(str(tmp_path / "t.zarr"))


def test_v04_pyramid_created_by_volbridge(tmp_path):
    """``ome_version="0.4"``: NGFF 0.4 on zarr v2, read back by volbridge, zarr-python and tensorstore."""
    from volbridge.formats.ome_zarr import OmeZarrDataset
    from volbridge.geometry import Box
    from volbridge.kv import open_store

    path = tmp_path / "p4.zarr"
    OmeZarrDataset.create(open_store(str(path)), bounds=Box((8, -16, -4), (72, 48, 12)), chunk_shape=(16, 16, 4),
                          dtype="uint16", resolution=(8, 8, 40), num_scales=3, num_channels=2, factor=(2, 2, 1),
                          compression="zstd", ome_version="0.4")
    vol = vb.array(str(path), mode="r+")
    rng = np.random.default_rng(2)
    levels = [rng.integers(0, 60000, vol.mip(i).shape, dtype=np.uint16) for i in range(3)]
    for i, data in enumerate(levels):
        vol.mip(i)[...] = data
    # the JSON, against the 0.4 spec
    assert json.loads((path / ".zgroup").read_text()) == {"zarr_format": 2} and not (path / "zarr.json").exists()
    ms = json.loads((path / ".zattrs").read_text())["multiscales"]
    assert len(ms) == 1 and ms[0]["version"] == "0.4"
    assert ms[0]["axes"] == [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    assert [d["path"] for d in ms[0]["datasets"]] == ["0", "1", "2"]
    for d in ms[0]["datasets"]:  # exactly one scale, then at most one translation, one value per axis
        kinds = [t["type"] for t in d["coordinateTransformations"]]
        assert kinds == ["scale", "translation"]
        assert all(len(t[t["type"]]) == 4 for t in d["coordinateTransformations"])
    assert ms[0]["datasets"][1]["coordinateTransformations"] == [  # (voxel centres: see the 0.5 test)
        {"type": "scale", "scale": [1.0, 40.0, 16.0, 16.0]},
        {"type": "translation", "translation": [0.0, -160.0, -124.0, 68.0]}]
    assert ms[0]["datasets"][2]["coordinateTransformations"][1]["translation"] == [0.0, -160.0, -128.0 + 12.0, 64.0 + 12.0]
    # volbridge
    again = vb.array(str(path))
    assert again.format == "ome-zarr" and len(again.scales) == 3
    assert [again.mip(i).resolution for i in range(3)] == [(40, 8, 8), (40, 16, 16), (40, 32, 32)]
    assert again.bounds == ((-4, -16, 8), (12, 48, 72)) and again.mip(2).bounds == ((-4, -4, 2), (12, 12, 18))
    # zarr-python and tensorstore, level by level
    group = zarr.open_group(str(path), mode="r", zarr_format=2)
    assert group.attrs["multiscales"][0]["version"] == "0.4"
    for i, data in enumerate(levels):
        np.testing.assert_array_equal(again.mip(i)[...], data)
        meta = json.loads((path / str(i) / ".zarray").read_text())
        assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "/"
        np.testing.assert_array_equal(group[str(i)][...], data)
        t = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(path / str(i))}}).result()
        np.testing.assert_array_equal(t.read().result(), data)


def test_v04_segmentation_and_version_switch(tmp_path):
    url = f"ome-zarr://{tmp_path}/s.zarr"
    vb.create(url, shape=(4, 8, 8), chunk_shape=(4, 8, 8), dtype="uint32", layer_type="segmentation")
    from volbridge.formats.ome_zarr import OmeZarrDataset
    from volbridge.geometry import Box
    from volbridge.kv import open_store

    store = open_store(str(tmp_path / "s.zarr"))
    with pytest.raises(MetadataError, match="already exists"):
        OmeZarrDataset.create(store, bounds=Box((0, 0, 0), (8, 8, 4)), chunk_shape=(8, 8, 4), dtype="uint32", ome_version="0.4")
    with pytest.raises(UnsupportedError, match="'0.3'"):
        OmeZarrDataset.create(store, bounds=Box((0, 0, 0), (8, 8, 4)), chunk_shape=(8, 8, 4), dtype="uint32",
                              ome_version="0.3", overwrite=True)
    OmeZarrDataset.create(store, bounds=Box((0, 0, 0), (8, 8, 4)), chunk_shape=(8, 8, 4), dtype="uint32",
                          layer_type="segmentation", ome_version="0.4", overwrite=True)
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()  # else the 0.5 group would still win
    assert json.loads((tmp_path / "s.zarr" / ".zattrs").read_text())["image-label"] == {"version": "0.4"}
    vol = vb.array(url, mode="r+")
    assert vol.layer_type == "segmentation" and (tmp_path / "s.zarr" / "0" / ".zarray").exists()
    vol[...] = np.arange(256, dtype=np.uint32).reshape(4, 8, 8)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "0"), mode="r")[...],
                                  np.arange(256, dtype=np.uint32).reshape(4, 8, 8))


def test_levels_added_to_an_ome_zarr_py_pyramid_follow_its_voxel_centres(tmp_path):
    """(review) ome-zarr-py writes level k's translation as (s_k - s_0) / 2 (voxel centres, as
    neuroglancer reads them); a level volbridge added had translation 0: shifted (2^k - 1) / 2
    fine voxels from the others. Levels read back at the bounds their corners give."""
    root = tmp_path / "p.zarr"
    grp = zarr.open_group(str(root), mode="w", zarr_format=2)
    datasets = []
    for k in range(3):
        n = 64 >> k
        grp.create_array(str(k), shape=(4, n, n), chunks=(4, 16, 16), dtype="uint8", fill_value=0)[...] = k + 1
        s = 8.0 * 2**k
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [40.0, s, s]}, {"type": "translation", "translation": [0.0, (s - 8) / 2, (s - 8) / 2]}]})
    grp.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                                 "datasets": datasets}]
    vol = vb.array(f"ome-zarr://{root}", mode="r+")
    assert [vol.mip(k).bounds for k in range(3)] == [((0, 0, 0), (4, 64 >> k, 64 >> k)) for k in range(3)]
    vol.volume.add_scale((2, 2, 1))
    ms = json.loads((root / ".zattrs").read_text())["multiscales"][0]
    assert ms["datasets"][3]["coordinateTransformations"][1]["translation"] == [0.0, 28.0, 28.0]  # (64 - 8) / 2
    assert vb.array(f"ome-zarr://{root}").mip(3).bounds == ((0, 0, 0), (4, 8, 8))


def test_a_level_added_to_a_5d_pyramid_keeps_its_time_and_channel_translation(tmp_path):
    """(review) the top-level translation of t (5 s) came out 0 on the added level."""
    root = tmp_path / "five.zarr"
    grp = zarr.open_group(str(root), mode="w", zarr_format=2)
    grp.create_array("0", shape=(1, 2, 8, 16, 16), chunks=(1, 1, 8, 8, 8), dtype="uint16")
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    grp.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1, 1]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1, 0.5, 0.5, 0.5]},
                                      {"type": "translation", "translation": [5.0, 0, 10, 10, 10]}]}]
    vb.array(str(root), mode="r+").volume.add_scale((2, 2, 1))
    ms = json.loads((root / ".zattrs").read_text())["multiscales"][0]
    top_scale, top_trans = (t[t["type"]] for t in ms["coordinateTransformations"])
    scale, trans = (t[t["type"]] for t in ms["datasets"][1]["coordinateTransformations"])
    final = [t * s + tt for t, s, tt in zip(trans, top_scale, top_trans)]
    assert final == [5.0, 0.0, 10.0, 10.25, 10.25]  # t, c kept; y, x at the centre of voxel 10 of 1 um
    assert vb.array(str(root)).mip(1).bounds == ((20, 10, 10), (28, 18, 18))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_levels_added_through_an_open_handle_keep_what_was_written_since(tmp_path, version):
    """(review) add_scale rewrote the group's attributes from the copy read at open: omero added
    by another tool, earlier provenance records and the instance id were lost. And a downsample
    refused for a non-integer factor had already added empty levels (black in viewers)."""
    from volbridge.services import downsample, provenance

    url = f"ome-zarr://{tmp_path / 'img.zarr'}"
    v = vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 32, 32), ome_version=version)
    v[...] = 3
    g = zarr.open_group(str(tmp_path / "img.zarr"), mode="r+")
    if version == "0.4":
        g.attrs["omero"] = {"channels": [{"label": "em"}]}
    else:
        g.attrs["ome"] = {**g.attrs["ome"], "omero": {"channels": [{"label": "em"}]}}
    for n in (1, 2):
        downsample(v, num_mips=n)
    ome = dict(zarr.open_group(str(tmp_path / "img.zarr"), mode="r").attrs)
    ome = ome if version == "0.4" else ome["ome"]
    assert ome["omero"] == {"channels": [{"label": "em"}]} and len(ome["multiscales"][0]["datasets"]) == 3
    assert len(provenance.read(url)) == 2
    before = (tmp_path / "img.zarr").stat().st_mtime_ns, sorted(p.name for p in (tmp_path / "img.zarr").iterdir())
    meta = tmp_path / "img.zarr" / (".zattrs" if version == "0.4" else "zarr.json")
    doc = json.loads(meta.read_text())
    ms = (doc if version == "0.4" else doc["attributes"]["ome"])["multiscales"][0]
    ms["datasets"][1]["coordinateTransformations"][0]["scale"] = [1.0, 2.05, 2.0]
    meta.write_text(json.dumps(doc))
    with pytest.raises(vb.errors.UnsupportedError, match="integer multiple"):
        downsample(vb.array(url, mode="r+"), num_mips=4)
    with pytest.raises(vb.errors.InvalidArgumentError, match="mips must lie"):  # (review) nor for mips out of range
        downsample(vb.array(url, mode="r+"), num_mips=4, mips=[7])
    doc = json.loads(meta.read_text())
    assert len((doc if version == "0.4" else doc["attributes"]["ome"])["multiscales"][0]["datasets"]) == 3
    assert before[1] == sorted(p.name for p in (tmp_path / "img.zarr").iterdir())
