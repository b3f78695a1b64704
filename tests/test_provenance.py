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
