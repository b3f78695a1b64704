"""Faults between volbridge and S3: every read is either correct or raises, never zeros.

A fault-injecting proxy (fixed seed) sits in front of SeaweedFS and answers some requests with
500/503 or 429, drops connections, truncates bodies, delays, or forwards a request and then loses
the response (the ambiguous case a conditional PUT has to survive).
"""

from __future__ import annotations

import numpy as np
import pytest

import volbridge as vb
from volbridge.errors import StoreError
from volbridge.geometry import Box

SHAPE = (24, 64, 64)
CHUNK = (8, 16, 16)


def _env(monkeypatch, server):
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def volume(seaweedfs, fault_proxy, monkeypatch):
    """A gzip volume written cleanly, the data it holds, and its URL."""
    _env(monkeypatch, seaweedfs)
    prefix = seaweedfs.new_prefix().rstrip("/")
    url = f"precomputed://s3://{seaweedfs.bucket}/{prefix}"
    data = np.random.default_rng(0).integers(1, 250, SHAPE, dtype=np.uint8)  # no zeros anywhere
    vol = vb.create(url, shape=SHAPE, chunk_shape=CHUNK, compression="gzip")
    vol[...] = data
    _env(monkeypatch, fault_proxy.s3)  # from here on, every request goes through the proxy
    return url, data


def random_boxes(rng, n):
    for _ in range(n):
        start = [int(rng.integers(-4, s - 1)) for s in SHAPE]
        yield tuple(slice(a, int(rng.integers(a + 1, s + 5))) for a, s in zip(start, SHAPE))


def expected(data, box):
    req = Box.of((b.start for b in box), (b.stop for b in box))
    out = np.zeros(req.shape, np.uint8)
    inter = req.intersect(Box.from_shape(SHAPE))
    if not inter.empty:
        out[inter.slices(req.start)] = data[inter.slices()]
    return out


@pytest.mark.parametrize("curl", ["1", "0"], ids=["libcurl", "obstore"])
def test_reads_through_faults_are_correct_with_retries(volume, fault_proxy, monkeypatch, curl):
    url, data = volume
    fault_proxy.set(error_rate=0.15, throttle_rate=0.05, drop_rate=0.05, truncate_rate=0.1, delay_rate=0.05, seed=7)
    monkeypatch.setenv("VOLBRIDGE_CURL", curl)  # chunk GETs over libcurl (kv.curl_get) or obstore
    vol = vb.array(url)
    assert (vol.volume.store.getter is not None) == (curl == "1")
    rng = np.random.default_rng(1)
    for box in random_boxes(rng, 12):
        np.testing.assert_array_equal(vol[box], expected(data, box))
    counts = fault_proxy.counts
    for kind in ("error", "throttle", "drop", "truncate", "delay"):
        assert counts[kind] > 0, f"no {kind} faults were injected: {counts}"
    assert vol.volume.store.stats.retries >= counts["error"] + counts["drop"] + counts["truncate"]


def test_without_retries_every_read_is_correct_or_raises(volume, fault_proxy, monkeypatch):
    url, data = volume
    monkeypatch.setenv("VOLBRIDGE_MAX_ATTEMPTS", "1")
    fault_proxy.set(error_rate=0.03, drop_rate=0.02, truncate_rate=0.03, seed=11)
    vol = vb.array(url)
    outcomes = {"correct": 0, "raised": 0}
    for box in random_boxes(np.random.default_rng(2), 30):
        try:
            got = vol[box]
        except StoreError as e:
            assert "s3://" in str(e)  # the error names the object
            outcomes["raised"] += 1
            continue
        np.testing.assert_array_equal(got, expected(data, box))  # never silent zeros
        outcomes["correct"] += 1
    assert outcomes["raised"] > 0 and outcomes["correct"] > 0, outcomes


@pytest.mark.parametrize("curl", ["1", "0"], ids=["libcurl", "obstore"])
def test_writes_through_faults_land_exactly_once(volume, fault_proxy, seaweedfs, monkeypatch, curl):
    """Unaligned writes with lost responses and errors: the result equals the model (whole
    chunks PUT over libcurl, kv.curl_put, or obstore; partial ones are conditional, on obstore)."""
    url, data = volume
    fault_proxy.set(error_rate=0.1, drop_rate=0.05, lost_response_rate=0.1, truncate_rate=0.05, seed=3)
    monkeypatch.setenv("VOLBRIDGE_CURL", curl)
    vol = vb.array(url, mode="r+")
    assert vol.volume.store.batched_puts == (curl == "1")
    rng = np.random.default_rng(5)
    model = data.copy()
    # random boxes, and two that cover many whole chunks (blind PUTs) beside partial ones
    for box in [*random_boxes(rng, 8), (slice(0, 24), slice(16, 64), slice(3, 61)), (slice(8, 24), slice(0, 64), slice(0, 64))]:
        inside = tuple(slice(max(b.start, 0), min(max(b.stop, 1), s)) for b, s in zip(box, SHAPE))
        if any(s.stop <= s.start for s in inside):
            continue
        values = rng.integers(1, 250, tuple(s.stop - s.start for s in inside), dtype=np.uint8)
        vol[inside] = values
        model[inside] = values
    assert fault_proxy.counts["lost_response"] > 0 and vol.volume.store.stats.retries > 0
    _env(monkeypatch, seaweedfs)  # read back cleanly
    np.testing.assert_array_equal(vb.array(url)[...], model)
