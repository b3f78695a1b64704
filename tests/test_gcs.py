"""``gs://`` over a protocol fake of GCS's XML API (``gcs_fake`` in tests/servers.py).

No real GCS can run here, and no installable emulator speaks the XML API that obstore's GCS client
(Rust object_store 0.14) uses for every request: gcp-storage-emulator answers only its JSON API
fully, and lacks ETags, HEAD, DELETE, XML listing and generation preconditions. So these tests run
against :class:`servers.GCSFake`, which implements exactly what object_store sends (GET/HEAD with
Range and If-Match, PUT with ``x-goog-if-generation-match``, DELETE, ``GET /bucket?list-type=2``,
bearer tokens) with GCS's documented semantics, decompressive transcoding included.

What this proves: volbridge's GCS configuration (endpoint and credentials from the standard
environment), its requests, and its compare-and-swap on generations are right for the protocol as
object_store speaks it and as GCS documents it. What it cannot prove: that real GCS answers
exactly as the fake does (its error bodies, header details, chunked large responses, rate
limits), or anything about GCS's JSON API, IAM or signed URLs.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import urllib.parse

import numpy as np
import pytest
from test_concurrency import CHUNK, SHAPE, check_serial_replay, run_writer_threads, writer_boxes

import volbridge as vb
from volbridge.errors import StoreError, URLError, VersionChangedError
from volbridge.kv import open_store
from volbridge.kv.base import ObjectStat

_GCS_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH",
             "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN", "GOOGLE_BASE_URL", "SERVICE_ACCOUNT",
             "STORAGE_EMULATOR_HOST")


@pytest.fixture
def gcsenv(gcs_fake, monkeypatch):
    """The standard environment pointing ``gs://`` at the fake (and nothing else of Google's)."""
    for k in _GCS_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in gcs_fake.env.items():
        monkeypatch.setenv(k, v)
    return gcs_fake


def _sent(fake, method: str, path_part: str) -> list[tuple[str, str, dict, int]]:
    return [r for r in fake.requests if r[0] == method and path_part in urllib.parse.unquote(r[1])]


def test_store_contract_over_gcs(gcsenv, gcs_bucket):
    s = open_store(f"gs://{gcs_bucket}/kv")
    assert s.get("a") is None and not s.exists("a") and s.stat("a") is None
    s.put("a", b"1")
    s.put("d/b", b"22", content_encoding="zstd")
    s.put("d/c", b"x" * 1000, content_encoding="gzip")
    s.put("z", b"")
    assert s.get("a") == b"1" and s.get("d/b") == b"22" and s.get("d/c") == b"x" * 1000 and s.get("z") == b""
    assert sorted(s.list()) == ["a", "d/b", "d/c", "z"] and sorted(s.list("d/")) == ["d/b", "d/c"]
    assert s.get_first(["nope", "d/b", "a"]) == ("d/b", b"22")
    # ranged reads, a suffix, past the end
    s.put("r", bytes(range(100)))
    assert s.get_range("r", 10, 20) == bytes(range(10, 20)) and s.get_part("r", -5) == bytes(range(95, 100))
    with pytest.raises(StoreError, match=rf"gs://{gcs_bucket}/kv/r"):
        s.get_range("r", 90, 110)
    assert s.get_part("nope", 0, 4) is None
    # stat: stored size, the MD5 ETag, the generation as version
    st = s.stat("r")
    obj = gcsenv.object(gcs_bucket, "kv/r")
    assert st == ObjectStat(100, etag=obj.etag, version=str(obj.generation))
    gz = gcsenv.object(gcs_bucket, "kv/d/c")
    assert gz.headers["Content-Encoding"] == "gzip" and s.stat("d/c").size == len(gz.data) < 1000  # stored compressed
    # conditional updates: create (generation 0), then replace (the generation read)
    assert s.update("n", lambda old: (old or b"") + b"x") == b"x"
    assert s.update("n", lambda old: old + b"y") == b"xy"
    puts = [r[2].get("x-goog-if-generation-match") for r in _sent(gcsenv, "PUT", "kv/n")]
    assert puts[0] == "0" and puts[1] == str(int(puts[1])) and int(puts[1]) > 0
    s.delete("a")
    s.delete("a")  # absent: fine
    assert s.get("a") is None
    assert s.stats.requests > 0 and s.stats.bytes_written > 0 and s.stats.retries == 0
    # every request carried the bearer token from GOOGLE_BEARER_TOKEN, and Accept-Encoding: gzip
    mine = [r for r in gcsenv.requests if gcs_bucket in urllib.parse.unquote(r[1])]
    assert all(r[2].get("authorization") == f"Bearer {gcsenv.token}" for r in mine)
    assert all(r[2].get("accept-encoding") == "gzip" for r in mine)


def test_get_many_over_gcs(gcsenv, gcs_bucket):
    s = open_store(f"gs://{gcs_bucket}/many")
    for i in range(40):
        s.put(f"k{i}", str(i).encode())
    keys = [f"k{i}" for i in range(0, 40, 2)] + ["absent1", "k0", "absent2"]
    before = s.stats.requests
    got = s.get_many(keys)
    assert got == {f"k{i}": str(i).encode() for i in range(0, 40, 2)}  # absent keys left out
    assert list(got) == [f"k{i}" for i in range(0, 40, 2)]  # in the order asked
    assert s.stats.requests - before == 22  # one GET per distinct key
    child = open_store(f"gs://{gcs_bucket}").child("many")
    assert child.get_many(["k1", "k3", "nope"]) == {"k1": b"1", "k3": b"3"}


def test_get_many_failures_raise_naming_the_key(gcsenv, gcs_bucket, monkeypatch):
    open_store(f"gs://{gcs_bucket}/auth").put("x", b"1")
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "wrong-token")
    bad = open_store(f"gs://{gcs_bucket}/auth")
    with pytest.raises(StoreError, match=rf"GET gs://{gcs_bucket}/auth/(x|y) failed"):
        bad.get_many(["x", "y"])  # never {} as though both were absent


def test_list_pages_and_delimiter(gcsenv, gcs_bucket, monkeypatch):
    import obstore

    s = open_store(f"gs://{gcs_bucket}/p")
    names = sorted([f"a/{i:02d}" for i in range(7)] + ["a/sub/x", "a/sub/y", "b", "a.txt", "a b/%c"])
    for n in names:
        s.put(n, b".")
    monkeypatch.setattr(gcsenv, "page_size", 3)
    assert sorted(s.list()) == names and sorted(s.list("a/")) == [n for n in names if n.startswith("a/")]
    lists = _sent(gcsenv, "GET", f"{gcs_bucket}?list-type=2")
    assert any("continuation-token" in r[1] for r in lists)  # it paged
    listing = obstore.list_with_delimiter(s.store, prefix="p/a/")
    assert listing["common_prefixes"] == ["p/a/sub"]
    assert [m["path"] for m in listing["objects"]] == [f"p/a/{i:02d}" for i in range(7)]


def test_conditional_update_under_four_racing_threads(gcsenv, gcs_bucket):
    s = open_store(f"gs://{gcs_bucket}/cas")
    n, per = 4, 15
    first_round = threading.Barrier(n)
    seen_first = threading.local()

    def bump(old):
        if not getattr(seen_first, "done", False):
            seen_first.done = True
            first_round.wait(30)  # all four have read the same version: three must lose
        return str(int(old or b"0") + 1).encode()

    errors = []

    def run():
        try:
            for _ in range(per):
                s.update("ctr", bump)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert s.get("ctr") == str(n * per).encode()  # no increment lost
    assert s.stats.conflicts >= n - 1
    assert sum(1 for r in _sent(gcsenv, "PUT", "cas/ctr") if r[3] == 412) == s.stats.conflicts


def test_conditional_puts_as_obstore_sends_them(gcsenv, gcs_bucket):
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    store = open_store(f"gs://{gcs_bucket}/raw").store
    first = obstore.put(store, "raw/o", b"1", mode="create", use_multipart=False)
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "raw/o", b"2", mode="create", use_multipart=False)
    second = obstore.put(store, "raw/o", b"2", mode={"e_tag": first["e_tag"], "version": first["version"]},
                         use_multipart=False)
    with pytest.raises(PreconditionError):  # the stale generation loses
        obstore.put(store, "raw/o", b"3", mode={"e_tag": first["e_tag"], "version": first["version"]},
                    use_multipart=False)
    assert int(second["version"]) > int(first["version"])
    assert bytes(obstore.get(store, "raw/o").bytes()) == b"2"


def test_a_ranged_reader_pins_one_version(gcsenv, gcs_bucket):
    s = open_store(f"gs://{gcs_bucket}/pin")
    s.put("shard", bytes(range(50)))
    with s.range_reader("shard") as reader:
        assert reader.read(0, 10) == bytes(range(10))
        s.put("shard", bytes(50))  # replaced between the index and the chunk reads
        with pytest.raises(VersionChangedError, match=rf"gs://{gcs_bucket}/pin/shard changed"):
            reader.read(10, 20)
    assert _sent(gcsenv, "GET", "pin/shard")[-1][2].get("if-match")


def test_gzip_objects_are_read_as_stored_not_transcoded(gcsenv, gcs_bucket):
    """GCS decompresses a ``Content-Encoding: gzip`` object for a client that does not accept
    gzip, without Content-Length or ETag, which object_store rejects (apache/arrow-rs-object-store
    #774); volbridge asks for gzip and decodes it itself."""
    payload = b"chunk bytes " * 200
    s = open_store(f"gs://{gcs_bucket}/gz")
    s.put("c", payload, content_encoding="gzip")
    stored = gcsenv.object(gcs_bucket, "gz/c").data
    assert stored[:2] == b"\x1f\x8b" and gzip.decompress(stored) == payload
    assert s.get("c") == payload and s.get_range("c", 0, 2) == payload[:2]  # ranges address the value, as on disk
    # what a client without Accept-Encoding: gzip gets (the fake's transcoding)
    u = urllib.parse.urlsplit(gcsenv.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", f"/{gcs_bucket}/gz/c", headers={"Authorization": f"Bearer {gcsenv.token}", "Range": "bytes=0-1"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and body == payload
    assert resp.getheader("Content-Length") is None and resp.getheader("ETag") is None
    assert resp.getheader("Content-Encoding") is None and resp.getheader("x-goog-stored-content-encoding") == "gzip"


def test_precomputed_volume_over_gcs(gcsenv, gcs_bucket):
    url = f"precomputed://gs://{gcs_bucket}/em"
    vol = vb.create(url, bounds=((-3, 0, 0), (13, 40, 36)), chunk_shape=(8, 16, 16), dtype="uint16",
                    compression="gzip")
    data = np.random.default_rng(1).integers(0, 60000, vol.shape, dtype=np.uint16)
    vol[...] = data
    vol[2:7, 5:30, 3:9] = np.full((5, 25, 6), 7, np.uint16)  # unaligned: read-modify-write
    data[5:10, 5:30, 3:9] = 7
    got = vb.array(f"gs://{gcs_bucket}/em")  # detected from its info file
    np.testing.assert_array_equal(got[...], data)
    np.testing.assert_array_equal(got[-10:0, 0:4, 0:4][7:], data[:3, :4, :4])  # fill outside the bounds
    assert np.all(got[-10:-3, :, :] == 0)
    chunk = gcsenv.object(gcs_bucket, "em/1_1_1/0-16_0-16_-3-5")
    assert chunk is not None and chunk.headers.get("Content-Encoding") == "gzip"


def test_threads_writing_one_volume_over_gcs_lose_nothing(gcsenv, gcs_bucket):
    url = f"precomputed://gs://{gcs_bucket}/concurrent"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype="uint16")
    boxes = writer_boxes(23, 4)
    run_writer_threads(url, boxes)
    check_serial_replay(url, boxes)


def test_sharded_zarr3_volume_over_gcs(gcsenv, gcs_bucket):
    url = f"zarr3://gs://{gcs_bucket}/z.zarr"
    vol = vb.create(url, shape=(20, 64, 64), chunk_shape=(10, 16, 16), shard_shape=(20, 32, 32), dtype="uint32",
                    compression="zstd")
    data = np.random.default_rng(2).integers(0, 2**31, vol.shape, dtype=np.uint32)
    vol[...] = data
    vol[3:17, 10:50, 20:21] = np.zeros((14, 40, 1), np.uint32)  # partial shards
    data[3:17, 10:50, 20:21] = 0
    np.testing.assert_array_equal(vb.array(url)[...], data)
    shards = [k for k in open_store(f"gs://{gcs_bucket}/z.zarr").list() if k.startswith("c/")]
    assert len(shards) == 4  # one object per shard
    before = len(gcsenv.requests)
    np.testing.assert_array_equal(vb.array(url)[0:5, 0:8, 0:8], data[0:5, 0:8, 0:8])
    ranged = [r for r in gcsenv.requests[before:] if r[0] == "GET" and "range" in r[2] and "c%2F" in r[1]]
    assert ranged, "a small read of a sharded volume should fetch ranges, not whole shards"


def test_errors_name_the_url(gcsenv, gcs_bucket, monkeypatch):
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "wrong-token")
    bad = open_store(f"gs://{gcs_bucket}/auth")
    with pytest.raises(StoreError, match=rf"PUT gs://{gcs_bucket}/auth/x failed"):
        bad.put("x", b"1")
    with pytest.raises(StoreError, match=rf"GET gs://{gcs_bucket}/auth/x failed"):
        bad.get("x")
    with pytest.raises(StoreError, match=rf"LIST gs://{gcs_bucket}/auth/ failed"):
        list(bad.list())
    with pytest.raises(StoreError, match=rf"HEAD gs://{gcs_bucket}/auth/x failed"):
        bad.stat("x")
    assert bad.stats.retries == 0  # refused credentials are final: no retries
    with pytest.raises(StoreError, match=rf"gs://{gcs_bucket}/em"):
        vb.array(f"precomputed://gs://{gcs_bucket}/em")
    monkeypatch.setenv("GOOGLE_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    from volbridge.kv.cloud import open_object_store
    from volbridge.kv.retry import RetryPolicy

    store = open_object_store("gs://b/p", retry=RetryPolicy(max_attempts=2, base_delay=0.01, connect_timeout=1))
    with pytest.raises(StoreError, match=r"gs://b/p/k failed after 2 attempts"):
        store.get("k")
    assert store.stats.retries == 1
    with pytest.raises(URLError, match="names no bucket"):
        open_store("gs://")


def test_storage_emulator_host_routes_anonymously(gcs_fake, gcs_bucket, monkeypatch):
    """``STORAGE_EMULATOR_HOST`` (what Google's client libraries read) points ``gs://`` at an
    emulator: reads go unsigned, writes carry an empty token instead of a metadata-server lookup."""
    for k in _GCS_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_fake.url.removeprefix("http://"))
    monkeypatch.setattr(gcs_fake, "token", None)  # an emulator takes anyone
    s = open_store(f"gs://{gcs_bucket}/anon")
    s.put("k", b"v")
    assert s.update("k", lambda old: old + b"w") == b"vw" and s.get("k") == b"vw" and list(s.list()) == ["k"]
    gets = _sent(gcs_fake, "GET", "anon/k")
    assert gets and all("authorization" not in r[2] for r in gets)
    assert all(r[2].get("authorization", "").strip() == "Bearer" for r in _sent(gcs_fake, "PUT", "anon/k"))
