"""Volume instances (engine.identity): a volume deleted and created again at the same URL is
another one, and the journals of resumable jobs know it. A review found a downsample run again
after its volume was recreated skipping the units an earlier, failed run had finished: the new
pyramid came out part zeros, and the call reported success."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading

import numpy as np
import pytest

import volbridge as vb
from volbridge.engine.identity import INSTANCE_KEY, instance_id

URLS = {
    "precomputed": lambda p: f"precomputed://{p}",
    "zarr3": lambda p: f"zarr3://{p}",
    "zarr2": lambda p: f"zarr2://{p}",
    "ome-zarr": lambda p: f"ome-zarr://{p}",
    "n5": lambda p: f"n5://{p}",
    "hdf5": lambda p: f"h5://{p}.h5#/raw",
}


def _remove(path):
    shutil.rmtree(path, ignore_errors=True)
    for f in (f"{path}.h5", f"{path}.h5.volbridge-lock"):
        if os.path.exists(f):
            os.remove(f)


@pytest.mark.parametrize("fmt", sorted(URLS))
def test_every_created_volume_has_an_id_and_one_created_again_another(tmp_path, fmt):
    url = URLS[fmt](tmp_path / "v")
    first = instance_id(vb.create(url, shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16)).volume)
    assert first and not first.startswith("version:")
    again = vb.array(url, mode="r+")
    assert instance_id(again.volume) == first == instance_id(again.volume, stamp=True)  # read back; a stamp keeps it
    again[...] = 5  # voxels written: the same instance
    assert instance_id(vb.array(url).volume) == first
    _remove(tmp_path / "v")
    second = instance_id(vb.create(url, shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16)).volume)
    assert second and second != first
    if fmt != "hdf5":  # (an HDF5 dataset is replaced whole by create(overwrite=True))
        third = instance_id(vb.create(url, shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16), overwrite=True).volume)
        assert third not in (first, second)


def test_a_volume_made_by_another_tool_is_stamped_once_and_the_stamp_survives_its_tools(tmp_path):
    """CloudVolume writes no id: the version of its info stands in until a job stamps one. The
    stamped info is still read by CloudVolume and tensorstore, and CloudVolume keeps the member
    when it rewrites the info."""
    from cloudvolume import CloudVolume
    import tensorstore as ts

    path = tmp_path / "cv"
    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [64, 64, 8], chunk_size=[32, 32, 8])
    cv = CloudVolume(f"file://{path}", info=info, compress=False)  # (tensorstore reads no .gz chunk files)
    cv.commit_info()
    data = np.random.default_rng(0).integers(0, 255, (64, 64, 8, 1), dtype=np.uint8)
    cv[:, :, :] = data
    unstamped = instance_id(vb.array(f"precomputed://{path}").volume)
    assert unstamped.startswith("version:") and unstamped == instance_id(vb.array(f"precomputed://{path}").volume)
    read_only = vb.array(f"precomputed://{path}")  # a read-only handle never writes a stamp
    assert instance_id(read_only.volume, stamp=True) == unstamped
    stamped = instance_id(vb.array(f"precomputed://{path}", mode="r+").volume, stamp=True)
    assert not stamped.startswith("version:") and json.loads((path / "info").read_text())[INSTANCE_KEY] == stamped
    np.testing.assert_array_equal(CloudVolume(f"file://{path}")[:, :, :], data)
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/"}).result()
    np.testing.assert_array_equal(t.read().result(), data)
    cv = CloudVolume(f"file://{path}")
    cv.add_scale((2, 2, 1))
    cv.commit_info()
    assert instance_id(vb.array(f"precomputed://{path}").volume) == stamped


def test_writers_stamping_at_once_agree_on_one_id(tmp_path):
    from cloudvolume import CloudVolume

    path = tmp_path / "cv"
    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [64, 64, 8], chunk_size=[32, 32, 8])
    CloudVolume(f"file://{path}", info=info).commit_info()
    handles = [vb.array(f"precomputed://{path}", mode="r+").volume for _ in range(8)]
    got, start = [], threading.Barrier(len(handles))

    def stamp(v):
        start.wait()
        got.append(instance_id(v, stamp=True))

    threads = [threading.Thread(target=stamp, args=(v,)) for v in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
    assert json.loads((path / "info").read_text())[INSTANCE_KEY] == got[0]


def _fail_after(module, name, n, monkeypatch):
    real, calls = getattr(module, name), [0]

    def failing(*args):
        calls[0] += 1
        if calls[0] > n:
            raise RuntimeError("node preempted")
        return real(*args)

    monkeypatch.setattr(module, name, failing)
    return real


@pytest.mark.parametrize("recreate_with", ["volbridge", "cloudvolume"])
def test_a_downsample_run_again_on_a_volume_created_anew_does_every_unit(tmp_path, monkeypatch, recreate_with):
    from cloudvolume import CloudVolume

    from volbridge.services.downsample import downsample

    module = importlib.import_module("volbridge.services.downsample")
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    url = f"precomputed://{tmp_path / 'img'}"

    def make(seed):
        shutil.rmtree(tmp_path / "img", ignore_errors=True)
        data = np.random.default_rng(seed).integers(1, 255, (16, 128, 128), dtype=np.uint8)
        if recreate_with == "volbridge" or seed == 0:
            v = vb.create(url, shape=data.shape, dtype="uint8", chunk_shape=(16, 32, 32), resolution=(40, 4, 4), num_scales=2)
        else:
            info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [128, 128, 16],
                                               chunk_size=[32, 32, 16])
            cv = CloudVolume(f"file://{tmp_path / 'img'}", info=info)
            cv.add_scale((2, 2, 1))
            cv.commit_info()
            v = vb.array(url, mode="r+")
        v[...] = data
        return data

    make(0)
    real = _fail_after(module, "downsample_unit", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="preempted"):
        downsample(url)
    monkeypatch.setattr(module, "downsample_unit", real)
    data = make(1)
    downsample(url)
    mean = ((data.reshape(16, 64, 2, 64, 2).astype(np.uint16).sum(axis=(2, 4)) + 2) >> 2).astype(np.uint8)
    np.testing.assert_array_equal(vb.array(url).mip(1)[...], mean)


def test_a_downsample_resumed_on_the_same_volume_still_skips_finished_units(tmp_path, monkeypatch):
    """The stamp a job writes into a volume made by another tool is read back by its rerun."""
    from cloudvolume import CloudVolume

    from volbridge.services.downsample import downsample

    module = importlib.import_module("volbridge.services.downsample")
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40], [0, 0, 0], [128, 128, 16], chunk_size=[32, 32, 16])
    cv = CloudVolume(f"file://{tmp_path / 'img'}", info=info)
    cv.add_scale((2, 2, 1))
    cv.commit_info()
    url = f"precomputed://{tmp_path / 'img'}"
    data = np.random.default_rng(2).integers(1, 255, (16, 128, 128), dtype=np.uint8)
    vb.array(url, mode="r+")[...] = data
    real = _fail_after(module, "downsample_unit", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="preempted"):
        downsample(url)
    ran = []
    monkeypatch.setattr(module, "downsample_unit", lambda *a: (ran.append(a[-1]), real(*a))[1])
    downsample(url)
    assert 1 <= len(ran) < 4  # of its 4 units, those the failed run finished did not run again
    mean = ((data.reshape(16, 64, 2, 64, 2).astype(np.uint16).sum(axis=(2, 4)) + 2) >> 2).astype(np.uint8)
    np.testing.assert_array_equal(vb.array(url).mip(1)[...], mean)


def test_a_transfer_run_again_into_a_destination_created_anew_copies_everything(tmp_path, monkeypatch):
    """The destination deleted and created again by the user (not by the transfer call)."""
    from volbridge.services.transfer import transfer

    module = importlib.import_module("volbridge.services.transfer")
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    data = np.random.default_rng(3).integers(1, 255, (8, 64, 64), dtype=np.uint8)
    src = f"precomputed://{tmp_path / 'src'}"
    vb.create(src, shape=data.shape, chunk_shape=(8, 16, 16), dtype="uint8")[...] = data
    dst = f"zarr3://{tmp_path / 'dst'}"

    def make_destination():
        shutil.rmtree(tmp_path / "dst", ignore_errors=True)
        vb.create(dst, shape=data.shape, chunk_shape=(8, 16, 16), dtype="uint8")

    make_destination()
    real = _fail_after(module, "transfer_unit", 6, monkeypatch)
    with pytest.raises(RuntimeError, match="preempted"):
        transfer(src, dst)
    monkeypatch.setattr(module, "transfer_unit", real)
    make_destination()
    transfer(src, dst)
    np.testing.assert_array_equal(vb.array(dst)[...], data)


def test_a_mesh_run_again_on_a_source_created_anew_meshes_the_new_labels(tmp_path, monkeypatch):
    """Journaled pieces of the old labels must not be joined into the new meshes."""
    from volbridge.services import mesh as mesh_module

    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    monkeypatch.setattr(mesh_module, "UNIT", (32, 32, 16))
    url = f"precomputed://{tmp_path / 'seg'}"

    def make(size):
        shutil.rmtree(tmp_path / "seg", ignore_errors=True)
        labels = np.zeros((32, 64, 64), np.uint64)
        labels[4:4 + size, 8:8 + 3 * size, 8:8 + 3 * size] = 7
        a = vb.create(url, shape=labels.shape, dtype="uint64", chunk_shape=(16, 32, 32), layer_type="segmentation")
        a[...] = labels
        return a

    make(20)
    real = _fail_after(mesh_module, "mesh_unit", 4, monkeypatch)
    with pytest.raises(RuntimeError, match="preempted"):
        mesh_module.mesh(url, smoothing=0)
    monkeypatch.setattr(mesh_module, "mesh_unit", real)
    fresh = make(10)
    got = mesh_module.mesh(url, smoothing=0)
    clean = mesh_module.mesh(fresh, smoothing=0, resume=False)
    assert sorted(got) == sorted(clean) == [7]
    np.testing.assert_array_equal(got[7].vertices, clean[7].vertices)


def test_a_zarr_v2_array_without_attributes_is_known_by_its_zarray(tmp_path):
    """(review) tensorstore writes no .zattrs: two arrays recreated at one URL both had id None,
    so a mesh or transfer journal of the first applied to the second."""
    import tensorstore as ts

    ids = []
    for value in (1, 2):
        shutil.rmtree(tmp_path / "a", ignore_errors=True)
        t = ts.open({"driver": "zarr", "kvstore": f"file://{tmp_path / 'a'}", "create": True,
                     "metadata": {"shape": [4, 8, 8], "chunks": [4, 8, 8], "dtype": "|u1"}}).result()
        t[...] = value
        assert not (tmp_path / "a" / ".zattrs").exists()
        ids.append(instance_id(vb.array(f"zarr2://{tmp_path / 'a'}").volume))
    assert None not in ids and ids[0] != ids[1]


def test_adding_a_scale_through_an_older_handle_keeps_the_id(tmp_path):
    """(review) add_scale rewrote info from the handle's copy, made before the id was stamped:
    the id was erased and the next job stamped another."""
    url = f"precomputed://{tmp_path / 'v'}"
    v = vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 32, 32))
    first = instance_id(v.volume)
    v.volume.add_scale((2, 2, 1))
    assert json.loads((tmp_path / "v" / "info").read_text())[INSTANCE_KEY] == first
    assert instance_id(vb.array(url).volume) == first and len(vb.array(url).scales) == 2
    stale = vb.array(url, mode="r+").volume
    vb.array(url, mode="r+").volume.add_scale((2, 2, 1))  # another handle adds one first
    with pytest.raises(vb.errors.MetadataError, match="changed since it was opened"):
        stale.add_scale((2, 2, 1))
    assert len(vb.array(url).scales) == 3
