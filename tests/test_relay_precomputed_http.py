"""Precomputed over HTTP from the relay, read by the peers (CloudVolume, tensorstore) as the
oracles: whatever the source's format, they see the source's voxels at every scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from relay_fixtures import http

import volbridge as vb


@pytest.fixture
def served(start_relay, relay_volumes, tmp_path):
    # the same image as precomputed and as zarr v3 (another format behind the same relay view)
    zsrc = vb.create(f"zarr3://{tmp_path / 'img.zarr'}", shape=relay_volumes["image"][0].shape, dtype="uint8",
                     chunk_shape=(8, 32, 32))
    zsrc[...] = relay_volumes["image"][0]
    relay = start_relay({"sources": {
        "pub/em/image": {"url": f"precomputed://{relay_volumes['image_path']}", "public": True},
        "pub/em/seg": {"url": f"precomputed://{relay_volumes['seg_path']}", "public": True},
        "pub/zarr/image": {"url": f"zarr3://{tmp_path / 'img.zarr'}", "public": True},
    }})
    return relay


def test_cloudvolume_reads_every_scale(served, relay_volumes):
    from cloudvolume import CloudVolume

    for m, model in enumerate(relay_volumes["image"]):
        cv = CloudVolume(f"precomputed://{served.url}/pub/em/image", mip=m, fill_missing=False, progress=False)
        got = np.asarray(cv[:, :, :])[..., 0]  # x, y, z
        np.testing.assert_array_equal(got.T, model)
    cv = CloudVolume(f"precomputed://{served.url}/pub/em/seg", fill_missing=False, progress=False)
    assert cv.layer_type == "segmentation"
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].T, relay_volumes["seg"])


def test_tensorstore_reads_a_zarr_source_as_precomputed(served, relay_volumes):
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"{served.url}/pub/zarr/image/"}, read=True).result()
    got = np.asarray(store[ts.d["channel"][0]].read().result())  # x, y, z
    np.testing.assert_array_equal(got.T, relay_volumes["image"][0])


def test_chunks_are_gzipped_when_asked_and_cors_is_open(served, relay_volumes):
    info = json.loads(http("GET", served.url + "/pub/em/image/info")[1])
    chunk = info["scales"][0]["chunk_sizes"][0]
    name = f"0-{chunk[0]}_0-{chunk[1]}_0-{chunk[2]}"
    status, body, headers = http("GET", f"{served.url}/pub/em/image/0/{name}",
                                 headers={"Accept-Encoding": "gzip", "Origin": "http://viewer.example"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert headers.get("access-control-allow-origin") == "*"
    import gzip

    raw = np.frombuffer(gzip.decompress(body), np.uint8).reshape(chunk[::-1])
    np.testing.assert_array_equal(raw, relay_volumes["image"][0][: chunk[2], : chunk[1], : chunk[0]])
    # a browser's preflight for a token header is answered
    status, _, headers = http("OPTIONS", f"{served.url}/pub/em/image/info", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert status == 200 and "GET" in headers.get("access-control-allow-methods", "")


def test_status_page_and_metrics(served):
    http("GET", served.url + "/pub/em/image/info")
    status, body, headers = http("GET", served.url + "/")
    assert status == 200 and b"pub/em/image" in body and b"memory" in body
    s = json.loads(http("GET", served.url + "/", headers={"Accept": "application/json"})[1])
    assert {t["tier"] for t in s["tiers"]} == {"memory"} and len(s["sources"]) == 3
    text = http("GET", served.url + "/metrics")[1].decode()
    assert "# TYPE volbridge_relay_cache_hits_total counter" in text
    assert 'volbridge_relay_requests_total{kind="precomputed_info",status="200"}' in text
