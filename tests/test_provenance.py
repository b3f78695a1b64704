"""Every service output carries a provenance record beside it, in the format's own place, and the
peers still read the volume (CloudVolume shows the record; zarr-python sees the attribute)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import volbridge as vb
from volbridge.services import downsample, provenance, transfer


@pytest.fixture
def src(tmp_path, monkeypatch):
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    a = vb.create(f"precomputed://{tmp_path / 'src'}", shape=(8, 40, 40), dtype="uint8", chunk_shape=(4, 16, 16),
                  resolution=(40, 4, 4), num_scales=2)
    a[...] = np.random.default_rng(0).integers(0, 255, a.shape, dtype=np.uint8)
    return a


def test_downsample_and_transfer_record_what_they_did(tmp_path, src):
    downsample(src)
    (rec,) = provenance.read(src.url)
    assert rec["method"]["service"] == "downsample" and rec["method"]["parameters"]["mips"] == [1]
    assert rec["method"]["parameters"]["factors"] == {"1": [1, 2, 2]}  # z, y, x (review: it was not recorded)
    assert rec["source"] == src.url and rec["started"] <= rec["ended"] and rec["host"]
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{tmp_path / 'src'}", progress=False)
    assert cv.provenance.processing[-1]["method"]["service"] == "downsample"
    for fmt in ("ome-zarr", "zarr3", "n5", "precomputed"):
        url = f"{fmt}://{tmp_path / ('dst-' + fmt)}"
        bbox = ((0, 0, 0), (8, 40, 40))
        if fmt == "zarr3":
            with pytest.warns(UserWarning):
                transfer(src, url, bbox=bbox)
        else:
            transfer(src, url, bbox=bbox)
        (rec,) = provenance.read(url)
        assert rec["method"]["service"] == "transfer" and rec["source"] == src.url
        assert rec["box"] == {"start": [0, 0, 0], "stop": [8, 40, 40], "order": "zyx"} and rec["scale"] == 0
        np.testing.assert_array_equal(vb.array(url)[...], src[...])
    import zarr

    z = zarr.open_array(str(tmp_path / "dst-zarr3"), mode="r")
    assert z.attrs["volbridge_provenance"][0]["method"]["service"] == "transfer"
    transfer(src, f"precomputed://{tmp_path / 'dst-precomputed'}", bbox=((0, 0, 0), (4, 40, 40)))
    assert [r["method"]["service"] for r in provenance.read(f"precomputed://{tmp_path / 'dst-precomputed'}")] == ["transfer"] * 2
    assert json.loads((tmp_path / "dst-precomputed" / "provenance").read_text())["sources"] == [src.url]
    # (review) CloudVolume's own entries share the list, with a string "method": kept in the
    # file, left out of volbridge's records (code reading r["method"]["service"] crashed)
    cv = CloudVolume(f"file://{tmp_path / 'dst-precomputed'}", progress=False)
    cv.provenance.processing.append({"method": "cv-step", "by": "someone"})
    cv.commit_provenance()
    assert [r["method"]["service"] for r in provenance.read(f"precomputed://{tmp_path / 'dst-precomputed'}")] == ["transfer"] * 2
    assert "cv-step" in (tmp_path / "dst-precomputed" / "provenance").read_text()
    with pytest.raises(vb.errors.InvalidArgumentError, match="volbridge.create"):
        transfer(src[...], f"precomputed://{tmp_path / 'from-ndarray'}")


def test_mesh_and_skeleton_outputs_get_provenance(tmp_path):
    pytest.importorskip("zmesh")
    from volbridge.services import provenance
    from volbridge.services.mesh import mesh
    from volbridge.services.skeleton import skeleton

    seg = vb.create(f"precomputed://{tmp_path}/seg", shape=(16, 32, 32), dtype="uint32", chunk_shape=(8, 16, 16),
                    layer_type="segmentation", resolution=(40, 4, 4))
    labels = np.zeros(seg.shape, np.uint32)
    labels[4:12, 8:24, 2:30] = 5
    seg[...] = labels
    ticks = []
    mesh(f"precomputed://{tmp_path}/seg", output=str(tmp_path / "seg" / "mesh"), progress=lambda d, t: ticks.append((d, t)))
    assert ticks and ticks[-1][0] == ticks[-1][1]
    (rec,) = provenance.read_beside(str(tmp_path / "seg" / "mesh"))
    assert rec["method"]["service"] == "mesh" and rec["method"]["parameters"]["smoothing"] == 40
    assert rec["source"] == f"precomputed://{tmp_path}/seg" and rec["box"]["stop"] == [16, 32, 32]
    skeleton(seg, output=str(tmp_path / "seg" / "skeletons"), dust_threshold=0, sharded=True)
    (rec,) = provenance.read_beside(str(tmp_path / "seg" / "skeletons"))
    assert rec["method"]["service"] == "skeleton" and rec["method"]["parameters"]["sharded"] is True
