"""Regressions from a review of the relay: each test failed before its fix."""

from __future__ import annotations

import json
import shutil
import time
import zlib
from http.client import HTTPConnection

import numpy as np
import pytest
from relay_fixtures import error_body, http

import volbridge as vb
from volbridge.codecs import cutout
from volbridge.remotes import dvid
from volbridge.remotes.bossdb import BossProject

T = "hardening-token"


@pytest.fixture
def relay(start_relay, relay_volumes, tmp_path):
    for n in ("image", "seg"):
        shutil.copytree(relay_volumes[f"{n}_path"], tmp_path / n)
    rgb = vb.create(f"precomputed://{tmp_path / 'rgb'}", shape=(8, 64, 64), dtype="uint8", num_channels=3, chunk_shape=(8, 32, 32))
    rgb[...] = np.arange(3, dtype=np.uint8)[:, None, None, None] + 1
    vb.create(f"precomputed://{tmp_path / 'jpg'}", shape=(8, 64, 64), dtype="uint8", encoding="jpeg", chunk_shape=(8, 64, 64))
    r = start_relay({
        "server": {"max_scan_bytes": "1 MiB"},
        "boss": {"data_dir": str(tmp_path / "boss")}, "dvid": {"data_dir": str(tmp_path / "dvid")},
        "sources": {
            "lab/em/image": {"url": f"precomputed://{tmp_path / 'image'}", "writable": True},
            "pub/em/image": {"url": f"precomputed://{tmp_path / 'image'}", "public": True},
            "lab/em/seg": {"url": f"precomputed://{tmp_path / 'seg'}", "writable": True},
            "lab/em/green": {"url": f"precomputed://{tmp_path / 'rgb'}", "writable": True, "channel": 1},
            "lab/em/jpg": {"url": f"precomputed://{tmp_path / 'jpg'}", "writable": True},
        },
        "tokens": [{"token": T, "write": ["*"]}],
    })
    r.root = tmp_path
    return r


def blosc_post(relay, path, arr, token=T):
    return http("POST", f"{relay.url}/v1/cutout/{path}", token=token, body=cutout.encode(arr, cutout.BLOSC),
                headers={"Content-Type": cutout.BLOSC})


def test_two_channels_over_one_upstream_share_their_cache(relay):
    pub = vb.array(f"bossdb://{relay.url}/pub/em/image")
    before = pub[0:4, 0:64, 0:64].copy()  # cached through pub
    assert blosc_post(relay, "lab/em/image/0/0:64/0:64/0:4/", np.full((4, 64, 64), 200, np.uint8))[0] == 201
    assert (pub[0:4, 0:64, 0:64] == 200).all() and not (before == 200).all()


def test_a_lossy_upstream_is_not_cached_as_posted(relay):
    data = np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    assert blosc_post(relay, "lab/em/jpg/0/0:64/0:64/0:8/", data)[0] == 201
    via = vb.array(f"bossdb://{relay.url}/lab/em/jpg", token=T)[...]
    np.testing.assert_array_equal(via, vb.array(str(relay.root / "jpg"))[...])  # what JPEG kept, not what was sent


def test_a_multichannel_source_writes_its_one_channel(relay):
    assert blosc_post(relay, "lab/em/green/0/0:10/0:10/0:2/", np.full((2, 10, 10), 9, np.uint8))[0] == 201
    got = vb.array(str(relay.root / "rgb"))[...]  # (c, z, y, x)
    assert (got[1, 0:2, 0:10, 0:10] == 9).all() and (got[0] == 1).all() and (got[2] == 3).all()
    assert vb.array(f"bossdb://{relay.url}/lab/em/green", token=T)[0, 0, 0] == 9


def test_crafted_inputs_are_400s_not_500s(relay):
    base = f"{relay.url}/v1/cutout/lab/em/seg/0/0:8/0:8/0:1/"
    assert http("GET", base + "?filter=-1", token=T)[0] == 400
    assert http("GET", base + f"?filter={2**70}", token=T)[0] == 400
    p = BossProject(relay.url, token=T)
    for path, body in [("coord/f1/", b'{"x_stop": Infinity, "y_stop": 1, "z_stop": 1, "x_voxel_size": 1, "y_voxel_size": 1, "z_voxel_size": 1}'),
                       ("coord/f2/", b'{"x_stop": 1e400, "y_stop": 1, "z_stop": 1, "x_voxel_size": 1, "y_voxel_size": 1, "z_voxel_size": 1}'),
                       ("coord/f3/", b'{"x_stop": 9, "y_stop": 9, "z_stop": 9, "x_voxel_size": 1e300, "y_voxel_size": 1, "z_voxel_size": 1}'),
                       ("coord/f4/", b'{"x_stop": 9999999999999, "y_stop": 9, "z_stop": 9, "x_voxel_size": 1, "y_voxel_size": 1, "z_voxel_size": 1}'),
                       ("collection/dvid/", b"{}"), ("collection/lab%0A/", b"{}")]:
        status, resp, _ = http("POST", f"{relay.url}/v1/{path}", token=T, body=body, headers={"Content-Type": "application/json"})
        assert status == 400, (path, resp)
        error_body(resp)
    p.create_collection("c")
    p.create_coord_frame("f", bounds=((0, 0, 0), (4, 8, 8)), voxel_size=(1, 1, 1))
    p.create_experiment("c", "e", "f")
    status, resp, _ = http("POST", f"{relay.url}/v1/collection/c/experiment/e/channel/x/", token=T,
                           body=b'{"datatype": "uint8", "sources": 5}', headers={"Content-Type": "application/json"})
    assert status == 400 and "sources" in error_body(resp)["message"]
    root = dvid.create_repo(relay.url, "r", token=T)
    status, resp, _ = http("POST", f"{relay.url}/api/node/{root}/commit", token=T, body=b'{"log": 5}')
    assert status == 400
    for spec in ({"typename": "uint8blk", "dataname": "a\u0000b"}, {"typename": "uint8blk", "dataname": "x" * 200},
                 {"typename": "uint8blk", "dataname": "b1", "BlockSize": "0.5,32,32"},
                 {"typename": "uint8blk", "dataname": "b2", "BlockSize": 5}):
        status, resp, _ = http("POST", f"{relay.url}/api/repo/{root}/instance", token=T, body=json.dumps(spec).encode())
        assert status == 400, spec
    assert http("GET", f"{relay.url}/api/repo/{root}/info", token=T)[0] == 200  # nothing half-made was kept
    assert http("GET", f"{relay.url}/api/repos/info", token=T)[0] == 200


def test_a_gzip_body_cannot_inflate_past_its_size(relay):
    root = dvid.create_repo(relay.url, "bomb", token=T)
    dvid.create_instance(relay.url, root, "seg", "labelmap", bounds=((0, 0, 0), (64, 64, 64)), token=T)
    bomb = zlib.compress(bytes(2**28), 9)
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bomb[2:-4] + zlib.crc32(bytes(2**28)).to_bytes(4, "little") + (2**28).to_bytes(4, "little")
    t0 = time.monotonic()
    status, resp, _ = http("POST", f"{relay.url}/api/node/{root}/seg/raw/0_1_2/64_64_64/0_0_0?compression=gzip", token=T, body=gz)
    assert status == 400 and "needs" in error_body(resp)["message"]
    assert time.monotonic() - t0 < 5  # stopped after the expected size, not after 256 MiB


def test_a_commit_during_a_write_refuses_the_write(relay):
    root = dvid.create_repo(relay.url, "race", token=T)
    dvid.create_instance(relay.url, root, "img", "uint8blk", bounds=((0, 0, 0), (32, 32, 32)), token=T)
    conn = HTTPConnection(relay.url.split("://")[1])
    conn.putrequest("POST", f"/api/node/{root}/img/raw/0_1_2/32_32_32/0_0_0")
    conn.putheader("Authorization", f"Token {T}")
    conn.putheader("Content-Length", str(32**3))
    conn.endheaders()
    conn.send(b"\x07" * 1000)
    assert http("POST", f"{relay.url}/api/node/{root}/commit", token=T, body=b"{}")[0] == 200
    conn.send(b"\x07" * (32**3 - 1000))
    r = conn.getresponse()
    assert r.status == 400 and "committed" in error_body(r.read())["message"]
    assert not vb.array(f"dvid://{relay.url}/{root}/img", token=T)[...].any()


def test_status_page_json_and_metrics_show_nothing_private(relay):
    s = json.loads(http("GET", relay.url + "/", headers={"Accept": "application/json"})[1])
    assert [x["name"] for x in s["sources"]] == ["pub/em/image"]
    http("GET", relay.url + "/v1/x%0Avolbridge_relay_fake_total%2042%0A/")
    text = http("GET", relay.url + "/metrics")[1].decode()
    assert "fake_total" not in text


def test_whole_scale_scans_are_bounded(relay):
    status, body, _ = http("GET", f"{relay.url}/v1/boundingbox/lab/em/seg/0/1/", token=T)
    assert status == 413 and "scan" in error_body(body)["message"]  # 8 MB of uint64 > 1 MiB


def test_reserved_ids_and_downsample_status_survive_a_restart(relay, start_relay):
    p = BossProject(relay.url, token=T)
    p.create_collection("k")
    p.create_coord_frame("kf", bounds=((0, 0, 0), (4, 16, 16)), voxel_size=(1, 1, 1))
    p.create_experiment("k", "e", "kf", num_hierarchy_levels=2)
    url = p.create_channel("k", "e", "s", datatype="uint64", type="annotation")
    v = vb.array(url, mode="r+", token=T)
    first = v.volume.reserve_ids(5)
    v.volume.downsample()
    assert v.volume.downsample_status()["status"] == "DOWNSAMPLED"
    v[0:1, 0:1, 0:1] = 3
    chan = json.loads(http("GET", f"{relay.url}/v1/collection/k/experiment/e/channel/s/", token=T)[1])
    assert chan["downsample_status"] == "NOT_DOWNSAMPLED"
    again = start_relay({"boss": {"data_dir": str(relay.root / "boss")}, "tokens": [{"token": T, "write": ["*"]}]})
    w = vb.array(f"bossdb://{again.url}/k/e/s", token=T, mode="r+").volume
    assert w.reserve_ids(1) == first + 5
    assert w.downsample_status()["status"] == "NOT_DOWNSAMPLED"


def test_dvid_rights_per_instance_and_no_uuid_leak(start_relay, tmp_path):
    r = start_relay({"dvid": {"data_dir": str(tmp_path / "d")}, "tokens": [{"token": T, "write": ["dvid/*"]}]})
    root = dvid.create_repo(r.url, "x", token=T)
    dvid.create_instance(r.url, root, "seg", "uint8blk", bounds=((0, 0, 0), (8, 8, 8)), token=T)
    narrow = start_relay({"dvid": {"data_dir": str(tmp_path / "d")},
                          "tokens": [{"token": "only-seg", "read": [f"dvid/{root}/seg"]}]})
    assert vb.array(f"dvid://{narrow.url}/{root}/seg", token="only-seg").shape == (8, 8, 8)
    status, body, _ = http("GET", f"{narrow.url}/api/node/{root[0]}/seg/info")
    assert status == 401 and root not in body.decode()


def test_relay_cache_keys_name_the_upstream_service():
    """One s3:// URL on two endpoints (a relay restarted against a mirror, same disk cache): the
    cuboids of one must never be served for the other."""
    from types import SimpleNamespace

    from volbridge.relay.source import source_key

    on = lambda identity: SimpleNamespace(store=SimpleNamespace(identity=identity))  # noqa: E731
    assert source_key("s3://b/vol", on("http://127.0.0.1:1 | s3://b/vol")) != source_key("s3://b/vol", on("http://127.0.0.1:2 | s3://b/vol"))
    assert source_key("s3://b/vol", on("x | s3://b/vol")) == source_key("s3://b/vol", on("x | s3://b/vol"))
    assert source_key("bossdb://c/e/ch") == source_key("bossdb://c/e/ch", SimpleNamespace())  # server remotes: the URL


def test_an_upstream_refusing_the_relay_is_a_502_not_the_client_s_400(start_relay, relay_volumes):
    """(review) A chained upstream that stopped taking the relay's token (401) or lost the
    channel (404) after the relay started reached the client as 400 Bad Request: the client's
    request was fine."""
    from urllib.parse import urlparse

    image = f"precomputed://{relay_volumes['image_path']}"
    a = start_relay({"sources": {"lab/em/image": {"url": image}, "lab/em/other": {"url": image}},
                     "tokens": [{"token": "token-one", "read": ["lab/*"]}, {"token": "token-two", "read": ["lab/*"]}]})
    b = start_relay({"sources": {
        "lab/em/revoked": {"url": f"bossdb://{a.url}/lab/em/image", "token": "token-one", "public": True},
        "lab/em/gone": {"url": f"bossdb://{a.url}/lab/em/other", "token": "token-two", "public": True},
    }, "cache": {"memory_bytes": 0}})
    a.stop()  # the upstream starts again on its port, without token-one and without the other channel
    start_relay({"server": {"port": urlparse(a.url).port}, "sources": {"lab/em/image": {"url": image}},
                 "tokens": [{"token": "token-two", "read": ["lab/*"]}]})
    for channel, says in (("revoked", "401"), ("gone", "not found")):
        status, body, _ = http("GET", f"{b.url}/v1/cutout/lab/em/{channel}/0/0:64/0:64/0:8/",
                               headers={"Accept": "application/npygz"})
        doc = error_body(body)
        assert status == 502 and "upstream" in doc["message"] and says in doc["message"], (channel, status, doc)


def test_the_quick_start_serves_a_multichannel_volume(tmp_path):
    """(review) 'view rgb.zarr' and 'serve rgb.zarr' refused every multi-channel volume, asking
    for a 'channel = N' the quick start has no config to take. The BossDB channel is channel 0;
    the precomputed face serves all of them (CloudVolume as the oracle)."""
    from cloudvolume import CloudVolume

    from volbridge.relay import RelayConfig
    from volbridge.relay.serve import RelayServer

    data = np.random.default_rng(7).integers(0, 255, (3, 8, 64, 64), dtype=np.uint8)
    url = f"ome-zarr://{tmp_path / 'rgb.zarr'}"
    vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 32, 32), num_channels=3)[...] = data
    server = RelayServer(RelayConfig.from_urls([url], host="127.0.0.1", port=0), log_level="warning").start()
    try:
        boss = vb.array(f"bossdb://{server.url}/volbridge/rgb/rgb")
        np.testing.assert_array_equal(boss[...], data[0])
        cv = CloudVolume(f"precomputed://{server.url}/volbridge/rgb/rgb", fill_missing=False, progress=False)
        assert cv.num_channels == 3
        np.testing.assert_array_equal(np.asarray(cv[:, :, :]).transpose(3, 2, 1, 0), data)
    finally:
        server.stop()


def test_an_upstream_deleted_while_the_relay_runs_is_an_error_not_zeros(start_relay, tmp_path, monkeypatch):
    """(review) Its chunks were absent, so every read of it came back as zeros (and was cached
    as such). An all-absent read now looks for the upstream's metadata; an empty region of a
    volume that is there still reads as zeros."""
    url = f"precomputed://{tmp_path / 'up'}"
    a = vb.create(url, shape=(16, 128, 128), dtype="uint8", chunk_shape=(16, 64, 64))
    a[:, :64, :] = 9  # the rest stays empty
    relay = start_relay({"sources": {"lab/em/v": {"url": url, "public": True}}, "cache": {"memory_bytes": 0}})

    def get(y0, y1):
        status, body, _ = http("GET", f"{relay.url}/v1/cutout/lab/em/v/0/0:128/{y0}:{y1}/0:16/",
                               headers={"Accept": "application/npygz"})
        return status, body

    status, body = get(64, 128)
    assert status == 200 and not np.load(__import__("io").BytesIO(zlib.decompress(body))).any()
    shutil.rmtree(tmp_path / "up")
    status, body = get(64, 128)
    assert status == 502, status  # (was 200: zeros)
    assert "metadata is gone" in error_body(body)["message"]
    # (review) right after the deletion too, through the cache, which keeps no zeros for it: the
    # metadata was looked for at most every 5 s, and an empty region read within them was cached
    a = vb.create(url, shape=(16, 1024, 128), dtype="uint8", chunk_shape=(16, 64, 64))
    a[:, :64, :] = 9
    cached = start_relay({"sources": {"lab/em/v": {"url": url, "public": True}}})
    path = f"{cached.url}/v1/cutout/lab/em/v/0/0:128/{{}}/0:16/"
    assert http("GET", path.format("0:64"))[0] == 200
    shutil.rmtree(tmp_path / "up")
    for _ in range(2):
        status, body, _ = http("GET", path.format("896:1024"))  # another cuboid than the one read
        assert status == 502 and "metadata is gone" in error_body(body)["message"]


def test_chained_relays_serve_what_the_bottom_holds(start_relay, tmp_path):
    """(review) Relay B over relay A over a jpeg volume kept the bytes written through B, which
    no upstream holds (jpeg is lossy further down); B's disk cache served a volume made again
    under A after both restarted (A's info carried no instance id); a deleted zarr upstream with
    fill 7 read as 7s where one with fill 0 was a 502; an HDF5 dataset removed was a 500 with
    no CORS header, so a browser saw a CORS failure."""
    src = f"precomputed://{tmp_path / 'img'}"
    vb.create(src, shape=(16, 64, 64), dtype="uint8", chunk_shape=(16, 64, 64), resolution=(40, 4, 4), encoding="jpeg")[...] = 100
    a = start_relay({"sources": {"c/e/img": {"url": src, "public": True, "writable": True, "public_write": True}}})
    b = start_relay({"sources": {"c/e/img": {"url": f"bossdb://{a.url}/c/e/img", "public": True, "writable": True,
                                             "public_write": True}}})
    data = np.random.default_rng(0).integers(0, 256, (16, 64, 64), dtype=np.uint8)
    vb.array(f"bossdb://{b.url}/c/e/img", mode="r+")[...] = data
    truth = vb.array(src)[...]
    assert not np.array_equal(truth, data)  # (jpeg)
    for relay in (a, b):
        status, body, _ = http("GET", f"{relay.url}/c/e/img/0/0-64_0-64_0-16")
        assert status == 200 and np.array_equal(np.frombuffer(body, np.uint8).reshape(16, 64, 64), truth)
    # the served info names the upstream's instance
    info = json.loads(http("GET", f"{a.url}/c/e/img/info")[1])
    assert info["volbridge_instance"] == vb.array(src).volume.instance_id(False)
    # a zarr upstream with fill 7, deleted
    z = vb.create(f"zarr3://{tmp_path / 'f7.zarr'}", shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 32, 32))
    meta = tmp_path / "f7.zarr" / "zarr.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fill_value": 7}))
    r = start_relay({"sources": {"c/e/f": {"url": z.url, "public": True}}})
    shutil.rmtree(tmp_path / "f7.zarr")
    status, body, _ = http("GET", f"{r.url}/v1/cutout/c/e/f/0/32:64/32:64/0:8/")
    assert status == 502 and "metadata is gone" in error_body(body)["message"]
    import h5py

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("raw", data=np.ones((8, 64, 64), np.uint8))
    h = start_relay({"sources": {"c/e/h": {"url": f"h5://{tmp_path / 'c.h5'}#/raw", "public": True}}})
    with h5py.File(tmp_path / "c.h5", "a") as f:
        del f["raw"]
    status, body, headers = http("GET", f"{h.url}/c/e/h/0/0-64_0-64_0-8", headers={"Origin": "http://viewer"})
    assert status == 502 and "no longer" in error_body(body)["message"]
    assert {k.lower(): v for k, v in headers.items()}.get("access-control-allow-origin") == "*"


def test_a_bool_source_is_refused_by_name(tmp_path):
    """(review) A bool zarr source stopped the relay with a message about the relay's own info."""
    from volbridge.relay import RelayConfig
    from volbridge.relay.state import Relay

    z = vb.create(f"zarr3://{tmp_path / 'b.zarr'}", shape=(4, 4, 4), dtype="bool")
    with pytest.raises(vb.errors.InvalidArgumentError, match="c/e/b.*bool"):
        Relay(RelayConfig.from_dict({"sources": {"c/e/b": {"url": z.url}}}))
