"""Smoke tests of the real servers in tests/servers.py: each one answers real requests as the
object-store tests will rely on (put/get/range/list/conditional put; HTTP ranges and gzip
content-encoding; the fault proxy injecting every kind of fault on a fixed seed)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

import obstore
import pytest
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import HTTPStore, S3Store

from servers import FAULT_KINDS, FaultProxy, S3Server, StaticHTTPServer, listening_ports_of

NO_RETRY = {"max_retries": 0}


def _raw(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 10):
    """(status, headers dict lowercased, body) of one request on a fresh connection."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# SeaweedFS
# --------------------------------------------------------------------------------------------


def test_seaweedfs_put_get_range_list_delete(seaweedfs: S3Server, s3_bucket: str):
    store = seaweedfs.store(s3_bucket, retry_config=NO_RETRY)
    payload = bytes(range(256)) * 40  # 10240 bytes
    obstore.put(store, "vol/0_64_0_64_0_64", payload)
    obstore.put(store, "vol/64_128_0_64_0_64", b"second")
    obstore.put(store, "vol/info", b'{"type": "image"}')
    obstore.put(store, "other/x", b"x")

    assert bytes(obstore.get(store, "vol/0_64_0_64_0_64").bytes()) == payload
    assert bytes(obstore.get_range(store, "vol/0_64_0_64_0_64", start=1000, end=1010)) == payload[1000:1010]
    ranges = obstore.get_ranges(store, "vol/0_64_0_64_0_64", starts=[0, 5000], ends=[3, 5005])
    assert [bytes(r) for r in ranges] == [payload[0:3], payload[5000:5005]]
    assert obstore.head(store, "vol/0_64_0_64_0_64")["size"] == len(payload)

    listed = sorted(m["path"] for m in obstore.list(store, prefix="vol/").collect())
    assert listed == ["vol/0_64_0_64_0_64", "vol/64_128_0_64_0_64", "vol/info"]
    top = obstore.list_with_delimiter(store)
    assert sorted(top["common_prefixes"]) == ["other", "vol"]

    obstore.delete(store, "vol/info")
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "vol/info")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "vol/missing")


def test_seaweedfs_conditional_puts(seaweedfs: S3Server, s3_bucket: str):
    """If-None-Match: * (mode="create") and If-Match: <etag> (mode={"e_tag": ...}) are enforced."""
    store = seaweedfs.store(s3_bucket, retry_config=NO_RETRY)
    first = obstore.put(store, "chunk", b"v1", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "chunk", b"intruder", mode="create")
    assert bytes(obstore.get(store, "chunk").bytes()) == b"v1"

    second = obstore.put(store, "chunk", b"v2", mode={"e_tag": first["e_tag"]})
    assert second["e_tag"] != first["e_tag"]
    with pytest.raises(PreconditionError):  # a writer that read v1 lost the race
        obstore.put(store, "chunk", b"stale write", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(store, "chunk").bytes()) == b"v2"
    assert obstore.head(store, "chunk")["e_tag"] == second["e_tag"]


def test_seaweedfs_env_configures_obstore_and_boto3(seaweedfs: S3Server, s3_bucket: str, monkeypatch):
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in seaweedfs.env.items():
        monkeypatch.setenv(k, v)
    store = S3Store(s3_bucket)  # everything from the environment
    obstore.put(store, "from-env", b"hello")

    import boto3

    client = boto3.client("s3")  # AWS_ENDPOINT_URL, keys and region from the environment
    assert client.get_object(Bucket=s3_bucket, Key="from-env")["Body"].read() == b"hello"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["from-env"]


def test_seaweedfs_buckets_and_prefixes_are_isolated(seaweedfs: S3Server):
    a, b = seaweedfs.new_bucket(), seaweedfs.new_bucket()
    assert a != b
    obstore.put(seaweedfs.store(a), "k", b"a")
    assert obstore.list(seaweedfs.store(b)).collect() == []
    p, q = seaweedfs.new_prefix(), seaweedfs.new_prefix()
    assert p != q and p.endswith("/")
    shared = seaweedfs.store()
    assert not any(m["path"].startswith(".ready") for m in obstore.list(shared).collect())  # no readiness probe left
    obstore.put(shared, p + "k", b"p")
    assert obstore.list(shared, prefix=q).collect() == []


def test_seaweedfs_listens_only_where_told(seaweedfs: S3Server):
    """Every port weed opened is one we chose, on 127.0.0.1; none of its default ports is used,
    and its maintenance worker found the admin server (no connection-refused retry loop)."""
    listening = listening_ports_of(seaweedfs.pid)
    assert set(seaweedfs.ports.values()) <= listening
    assert listening <= set(seaweedfs.ports.values()), f"unexpected ports: {listening - set(seaweedfs.ports.values())}"
    defaults = {9333, 19333, 9340, 19340, 8888, 18888, 8333, 18333, 8181, 9101, 7333, 23646, 33646, 6060}
    assert not listening & defaults
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local = line.split()[1]
        port = int(local.rsplit(":", 1)[1], 16)
        if port in seaweedfs.ports.values() and line.split()[3] == "0A":
            assert local.split(":")[0] == "0100007F", f"port {port} is not bound to 127.0.0.1 only"
    # Components may dial each other a moment before the other listens (a refused dial to one
    # of our own ports at startup is harmless); a dial to any other port is a default left unset.
    log = seaweedfs.log_path.read_text(errors="replace")
    dialled = {int(p) for p in re.findall(r"dial tcp [\d.]+:(\d+)", log)}
    assert dialled <= set(seaweedfs.ports.values()), f"weed dialled ports we did not give it: {dialled}"


# --------------------------------------------------------------------------------------------
# static HTTP server
# --------------------------------------------------------------------------------------------


def test_http_server_get_head_404(http_server):
    (http_server.root / "dir").mkdir()
    (http_server.root / "dir" / "info").write_bytes(b'{"a": 1}')
    status, headers, body = _raw(f"{http_server.url}/dir/info")
    assert (status, body) == (200, b'{"a": 1}')
    assert headers["content-length"] == "8" and headers["accept-ranges"] == "bytes"
    assert "etag" in headers and "last-modified" in headers

    status, headers, body = _raw(f"{http_server.url}/dir/info", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "8", b"")

    assert _raw(f"{http_server.url}/dir/nope")[0] == 404
    assert _raw(f"{http_server.url}/../../etc/passwd")[0] == 404
    assert ("GET", "/dir/info", None, 200) in http_server.requests


@pytest.mark.parametrize(
    "range_header, status, content_range, expected",
    [
        ("bytes=0-9", 206, "bytes 0-9/100", slice(0, 10)),
        ("bytes=10-19", 206, "bytes 10-19/100", slice(10, 20)),
        ("bytes=90-", 206, "bytes 90-99/100", slice(90, 100)),
        ("bytes=-5", 206, "bytes 95-99/100", slice(95, 100)),
        ("bytes=-500", 206, "bytes 0-99/100", slice(0, 100)),
        ("bytes=95-1000", 206, "bytes 95-99/100", slice(95, 100)),
        ("bytes=100-", 416, "bytes */100", None),
        ("bytes=150-160", 416, "bytes */100", None),
        ("bytes=-0", 416, "bytes */100", None),
        ("bytes=20-10", 416, "bytes */100", None),
    ],
)
def test_http_server_ranges(http_server, range_header, status, content_range, expected):
    data = bytes(range(100))
    (http_server.root / "blob").write_bytes(data)
    got_status, headers, body = _raw(f"{http_server.url}/blob", headers={"Range": range_header})
    assert got_status == status
    assert headers["content-range"] == content_range
    if expected is not None:
        assert body == data[expected]
        assert headers["content-length"] == str(len(body))


def test_http_server_gzip_content_encoding(serve_dir, tmp_path):
    data = os.urandom(3000)
    (tmp_path / "0-64_0-64_0-64.gz").write_bytes(gzip.compress(data))
    (tmp_path / "info").write_bytes(b"{}")
    url = serve_dir(tmp_path)

    status, headers, body = _raw(f"{url}/0-64_0-64_0-64")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == data
    # ranges address the encoded bytes, as HTTP says
    status, headers, body = _raw(f"{url}/0-64_0-64_0-64", headers={"Range": "bytes=0-1"})
    assert (status, body) == (206, b"\x1f\x8b")
    # the .gz object itself is plain bytes, and a plain file has no encoding
    status, headers, body = _raw(f"{url}/0-64_0-64_0-64.gz")
    assert status == 200 and "content-encoding" not in headers and gzip.decompress(body) == data
    assert "content-encoding" not in _raw(f"{url}/info")[1]

    plain = serve_dir(tmp_path, gzip_as_content_encoding=False)
    assert _raw(f"{plain}/0-64_0-64_0-64")[0] == 404


def test_http_server_with_obstore_httpstore(http_server):
    data = bytes(range(256)) * 4
    (http_server.root / "layer").mkdir()
    (http_server.root / "layer" / "chunk").write_bytes(data)
    store = HTTPStore.from_url(http_server.url + "/layer", client_options={"allow_http": True}, retry_config=NO_RETRY)
    assert bytes(obstore.get(store, "chunk").bytes()) == data
    assert bytes(obstore.get_range(store, "chunk", start=100, end=120)) == data[100:120]
    assert obstore.head(store, "chunk")["size"] == len(data)
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "missing")
    assert any(r[2] == "bytes=100-119" and r[3] == 206 for r in http_server.requests)


# --------------------------------------------------------------------------------------------
# fault proxy
# --------------------------------------------------------------------------------------------


def test_fault_proxy_passes_s3_through_cleanly(fault_proxy):
    """SigV4 stays valid through the proxy (Host is forwarded as the client sent it), and with
    faults off every request passes verbatim, including a 412 from a conditional put."""
    s3 = fault_proxy.s3
    bucket = s3.new_bucket()  # boto3 through the proxy: CreateBucket signed for the proxy's host
    store = s3.store(bucket, retry_config=NO_RETRY)
    put = obstore.put(store, "a/b", b"through the proxy")
    assert bytes(obstore.get(store, "a/b").bytes()) == b"through the proxy"
    assert bytes(obstore.get_range(store, "a/b", start=8, end=11)) == b"the"
    assert [m["path"] for m in obstore.list(store).collect()] == ["a/b"]
    obstore.put(store, "a/b", b"v2", mode={"e_tag": put["e_tag"]})
    with pytest.raises(PreconditionError):
        obstore.put(store, "a/b", b"v3", mode={"e_tag": put["e_tag"]})
    counts = fault_proxy.counts
    assert counts["requests"] >= 7 and counts["passed"] == counts["requests"]
    assert all(counts[k] == 0 for k in FAULT_KINDS)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_fault_proxy_each_kind_at_the_wire(make_fault_proxy, tmp_path, kind):
    data = os.urandom(5000)
    (tmp_path / "obj").write_bytes(data)
    with StaticHTTPServer(tmp_path) as upstream:
        proxy: FaultProxy = make_fault_proxy(upstream.url, seed=1)
        proxy.set(**{f"{kind}_rate": 1.0}, delay_s=0.2)
        url = f"{proxy.url}/obj"
        t0 = time.monotonic()
        if kind == "error":
            assert _raw(url)[0] in (500, 503)
        elif kind == "throttle":
            status, headers, _ = _raw(url)
            assert status == 429 and headers["retry-after"] == "0"
        elif kind in ("drop", "lost_response"):
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
                _raw(url)
        elif kind == "truncate":
            with pytest.raises(http.client.IncompleteRead) as e:
                _raw(url)
            assert 0 < len(e.value.partial) < len(data) and e.value.partial == data[: len(e.value.partial)]
        elif kind == "delay":
            status, _, body = _raw(url)
            assert (status, body) == (200, data) and time.monotonic() - t0 >= 0.2
        else:
            raise AssertionError(f"no check for fault kind {kind}")
        assert proxy.counts[kind] == 1 and proxy.counts["requests"] == 1
        # only the kinds that forward reach the upstream
        assert len(upstream.requests) == (1 if kind in ("truncate", "delay", "lost_response") else 0)

        proxy.set()  # clean passthrough again, on the same proxy
        assert _raw(url)[2] == data
        assert proxy.counts[kind] == 1 and proxy.counts["passed"] == 1


def test_fault_proxy_mixed_faults_over_s3_fixed_seed(fault_proxy, seaweedfs):
    """On a fixed seed every fault kind happens; each read through the proxy is either correct or
    raises (never silently short), and the same seed replays the same faults."""
    bucket = seaweedfs.new_bucket()
    direct = seaweedfs.store(bucket)
    objects = {f"k{i}": os.urandom(2000 + i) for i in range(8)}
    for k, v in objects.items():
        obstore.put(direct, k, v)

    store = fault_proxy.s3.store(bucket, retry_config=NO_RETRY, client_options={"timeout": "5s"})

    def run() -> list[str]:
        outcomes = []
        for i in range(60):
            key = f"k{i % len(objects)}"
            try:
                got = bytes(obstore.get(store, key).bytes())
            except Exception as e:  # noqa: BLE001 - any error is an honest failure
                outcomes.append(type(e).__name__)
                continue
            assert got == objects[key], f"read of {key} returned wrong bytes without raising"
            outcomes.append("ok")
        return outcomes

    rates = dict(
        error_rate=0.1,
        throttle_rate=0.1,
        drop_rate=0.1,
        truncate_rate=0.1,
        delay_rate=0.1,
        lost_response_rate=0.1,
        delay_s=0.01,
    )
    fault_proxy.set(**rates, seed=1234)
    first = run()
    counts = fault_proxy.counts
    assert all(counts[k] >= 1 for k in FAULT_KINDS), counts
    assert first.count("ok") == counts["passed"] + counts["delay"], (first, counts)

    fault_proxy.reset_counts()
    fault_proxy.set(**rates, seed=1234)
    assert run() == first and fault_proxy.counts == counts

    fault_proxy.set()
    assert run() == ["ok"] * 60


def test_fault_proxy_lost_response_on_a_write(fault_proxy, seaweedfs):
    """A PUT whose response is lost did happen: a retry with If-None-Match then conflicts."""
    bucket = seaweedfs.new_bucket()
    store = fault_proxy.s3.store(bucket, retry_config=NO_RETRY)
    fault_proxy.set(lost_response_rate=1.0, methods=["PUT"])
    with pytest.raises(Exception) as e:
        obstore.put(store, "chunk", b"v1", mode="create")
    assert not isinstance(e.value, AlreadyExistsError)
    assert bytes(obstore.get(seaweedfs.store(bucket), "chunk").bytes()) == b"v1"
    fault_proxy.set()
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "chunk", b"v1", mode="create")
    assert fault_proxy.counts["lost_response"] == 1


def test_fault_proxy_with_client_retries_reads_correctly(fault_proxy, seaweedfs):
    """With obstore's own retries on, 500/503/429/drops/delays are absorbed; the data is right."""
    bucket = seaweedfs.new_bucket()
    obstore.put(seaweedfs.store(bucket), "obj", b"z" * 4096)
    store = fault_proxy.s3.store(
        bucket,
        retry_config={
            "max_retries": 10,
            "backoff": {"init_backoff": timedelta(milliseconds=1), "max_backoff": timedelta(milliseconds=5), "base": 2},
            "retry_timeout": timedelta(seconds=20),
        },
    )
    fault_proxy.set(error_rate=0.15, throttle_rate=0.15, drop_rate=0.1, delay_rate=0.1, delay_s=0.01, seed=7)
    for _ in range(20):
        assert bytes(obstore.get(store, "obj").bytes()) == b"z" * 4096
    counts = fault_proxy.counts
    assert counts["error"] + counts["throttle"] + counts["drop"] >= 3, counts


def test_fault_proxy_methods_filter_and_validation(make_fault_proxy, serve_dir, tmp_path):
    (tmp_path / "obj").write_bytes(b"abc")
    proxy = make_fault_proxy(serve_dir(tmp_path))
    proxy.set(error_rate=1.0, methods=["HEAD"])
    assert _raw(f"{proxy.url}/obj")[0] == 200
    assert _raw(f"{proxy.url}/obj", method="HEAD")[0] in (500, 503)
    with pytest.raises(ValueError):
        proxy.set(error_rate=0.7, drop_rate=0.7)


# --------------------------------------------------------------------------------------------
# GCS emulator and Azurite
# --------------------------------------------------------------------------------------------


def test_gcs_emulator_json_api(gcs_emulator):
    """google-cloud-storage (the JSON API, as cloud-files and tensorstore use) against the emulator.

    obstore's GCSStore is not tested here: it speaks GCS's XML API, which this emulator answers
    without ETag/Last-Modified, with 501 for HEAD, DELETE and list-type=2 (see GCSServer)."""
    client = gcs_emulator.client()
    bucket = client.bucket(gcs_emulator.bucket)
    data = os.urandom(1000)
    bucket.blob("vol/chunk").upload_from_string(data)
    assert bucket.blob("vol/chunk").download_as_bytes() == data
    assert bucket.blob("vol/chunk").download_as_bytes(start=10, end=19) == data[10:20]
    assert [b.name for b in client.list_blobs(gcs_emulator.bucket, prefix="vol/")] == ["vol/chunk"]

    other = gcs_emulator.new_bucket()
    assert other != gcs_emulator.bucket
    assert list(client.list_blobs(other)) == []
    status, _, body = _raw(f"{gcs_emulator.endpoint}/storage/v1/b/{other}")
    assert status == 200 and json.loads(body)["name"] == other


def test_azurite_obstore(azurite):
    store = azurite.store(retry_config=NO_RETRY)
    data = os.urandom(3000)
    first = obstore.put(store, "vol/chunk", data)
    assert bytes(obstore.get(store, "vol/chunk").bytes()) == data
    assert bytes(obstore.get_range(store, "vol/chunk", start=100, end=200)) == data[100:200]
    assert obstore.head(store, "vol/chunk")["size"] == 3000
    assert [m["path"] for m in obstore.list(store, prefix="vol/").collect()] == ["vol/chunk"]

    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "vol/chunk", b"x", mode="create")
    obstore.put(store, "vol/chunk", b"v2", mode={"e_tag": first["e_tag"]})
    with pytest.raises(PreconditionError):
        obstore.put(store, "vol/chunk", b"v3", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(store, "vol/chunk").bytes()) == b"v2"

    other = azurite.new_container()
    assert obstore.list(azurite.store(other)).collect() == []
    obstore.delete(store, "vol/chunk")
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "vol/chunk")


def test_seaweedfs_refuses_to_start_on_a_nearly_full_disk(tmp_path, monkeypatch):
    """Below 1 % free SeaweedFS makes its volumes read-only and answers every PUT with a bare 500:
    the fixture says so before starting it."""
    import collections
    import shutil

    import servers

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(250 << 30, 247 << 30, 3 << 30))
    with pytest.raises(servers.ServerStartError, match=r"needs 6\.5 GiB free .*HTTP 500.* 3\.0 GiB of 250"):
        servers._check_free_disk(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(250 << 30, 180 << 30, 70 << 30))
    servers._check_free_disk(tmp_path)
