"""A three-tier chain: client -> relay B -> relay A -> local precomputed, each relay a real
`volbridge serve` process. Same data at every tier; repeated reads served by the nearest cache;
the upstream's credentials never reach the client; a dead upstream still leaves the cached regions
readable, and the rest fails clearly (502/504), never as zeros."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from intern import array as intern_array
from intern.convenience.array import _BossDBVolumeProvider
from intern.remote.boss import BossRemote
from relay_fixtures import error_body, http

import volbridge as vb
from volbridge.errors import StoreError

A_TOKEN = "tier-a-secret-0xA"  # B's credentials at A: must never be shown to B's clients
B_TOKEN = "tier-b-user-token"


@pytest.fixture
def chain(start_relay, relay_volumes, tmp_path):
    src = tmp_path / "image"
    shutil.copytree(relay_volumes["image_path"], src)
    a = start_relay({
        "sources": {"lab/em/image": {"url": f"precomputed://{src}", "writable": True}},
        "tokens": [{"token": A_TOKEN, "write": ["lab/*"]}],
        "cache": {"memory_bytes": "64 MiB"},
    }, process=True)
    b = start_relay({
        "sources": {"lab/em/image": {"url": f"bossdb://{a.url}/lab/em/image", "writable": True, "token": A_TOKEN}},
        "tokens": [{"token": B_TOKEN, "write": ["lab/*"]}],
        "cache": {"memory_bytes": "16 MiB", "disk_dir": str(tmp_path / "b-cache"), "disk_bytes": "64 MiB"},
    }, process=True, env={"VOLBRIDGE_MAX_ATTEMPTS": "2", "VOLBRIDGE_TIMEOUT": "5"})
    model = [m.copy() for m in relay_volumes["image"]]
    return a, b, src, model


def counter(metrics: dict, name: str, **labels) -> float:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return sum(v for k, v in metrics.items() if k.startswith(f"volbridge_relay_{name}") and lab in k)


def test_three_tiers_same_data_nearest_cache_and_dead_upstream(chain):
    a, b, src, model = chain
    client = vb.array(f"bossdb://{b.url}/lab/em/image", token=B_TOKEN, mode="r+")
    assert client.shape == model[0].shape and client.resolution == (40, 4, 4)
    warm = (slice(0, 40), slice(0, 300), slice(0, 256))  # the left half, cuboid-aligned in x

    # first read: fetched through both tiers
    np.testing.assert_array_equal(client[warm], model[0][warm])
    for m in (1, 2):
        np.testing.assert_array_equal(client.mip(m)[...], model[m])
    a_cutouts = counter(a.metrics(), "requests_total", kind="cutout")
    b_hits = counter(b.metrics(), "cache_hits_total", tier="memory")
    assert a_cutouts > 0

    # second read of the same region: B answers from its cache, A sees nothing
    np.testing.assert_array_equal(client[warm], model[0][warm])
    host = b.url.split("://", 1)[1]
    theirs = intern_array("bossdb://lab/em/image", volume_provider=_BossDBVolumeProvider(
        BossRemote({"protocol": "http", "host": host, "token": B_TOKEN})))
    np.testing.assert_array_equal(theirs[0:40, 0:300, 0:256], model[0][warm])
    assert counter(a.metrics(), "requests_total", kind="cutout") == a_cutouts
    assert counter(b.metrics(), "cache_hits_total", tier="memory") > b_hits

    # a write through B lands in the source at the bottom, and B's cache shows it
    new = np.arange(5 * 30 * 41, dtype=np.uint64).reshape(5, 30, 41).astype(np.uint8)
    client[7:12, 100:130, 200:241] = new
    model[0][7:12, 100:130, 200:241] = new
    np.testing.assert_array_equal(vb.array(str(src))[...], model[0])
    np.testing.assert_array_equal(client[warm], model[0][warm])

    # B never shows A's token: not in its pages, metrics, resources or errors
    for path in ("/", "/metrics", "/v1/collection/lab/experiment/em/channel/image/", "/v1/downsample/lab/em/image/",
                 "/v1/cutout/lab/em/image/0/0:9999999/0:1/0:1/"):
        status, body, headers = http("GET", b.url + path, token=B_TOKEN)
        assert A_TOKEN.encode() not in body and A_TOKEN not in str(headers)
    assert A_TOKEN not in b.process.log_text()

    # kill A: the warmed region still reads from B's cache...
    a.stop()
    np.testing.assert_array_equal(client[warm], model[0][warm])
    np.testing.assert_array_equal(client.mip(2)[...], model[2])
    # ...and the rest (B caches A's 512x512x16 cuboids: x 512:520 was never read at scale 0) fails
    # clearly: a 502/504 JSON error from B, an exception in the client
    status, body, _ = http("GET", f"{b.url}/v1/cutout/lab/em/image/0/505:520/0:50/0:5/", token=B_TOKEN)
    assert status in (502, 504), body
    assert "upstream" in error_body(body)["message"]
    with pytest.raises(StoreError, match="HTTP 50[24]"):
        client[0:5, 0:50, 505:520]



def test_access_mode_raw_reaches_past_every_relay_of_a_chain(start_relay, tmp_path):
    """(review) access-mode=raw (the documented way past changes made behind a relay's back)
    bypassed only the outer relay's cache: it asked its upstream relay with access-mode=cache."""
    from volbridge.codecs import cutout

    url = f"precomputed://{tmp_path / 'img'}"
    vb.create(url, shape=(16, 64, 64), dtype="uint8", chunk_shape=(16, 64, 64), resolution=(40, 4, 4))[...] = 1
    a = start_relay({"sources": {"c/e/x": {"url": url, "public": True}}})
    b = start_relay({"sources": {"p/q/x": {"url": f"bossdb://{a.url}/c/e/x", "public": True}}})

    def get(relay, path, mode):
        status, body, _ = http("GET", f"{relay.url}/v1/cutout/{path}/0/0:64/0:64/0:16/?access-mode={mode}",
                               headers={"Accept": cutout.BLOSC})
        assert status == 200, body
        return np.unique(cutout.decode(body, cutout.BLOSC, (16, 64, 64), np.uint8)).tolist()

    assert get(b, "p/q/x", "cache") == [1]  # both caches warm
    vb.array(url, mode="r+")[...] = 2  # behind both relays' backs
    assert get(b, "p/q/x", "cache") == [1]  # (caches keep what they saw: the documented limit)
    assert get(b, "p/q/x", "raw") == [2]
