"""Whole-object GETs over libcurl (kv.curl_get): the same values, absences, errors and counters as
obstore's GETs, against SeaweedFS and a local HTTP server; the signature against botocore's."""

from __future__ import annotations

import gzip
import http.server
import socketserver
import threading
import time

import numpy as np
import pytest

import volbridge as vb
from volbridge.errors import ChunkDecodeError, StoreError
from volbridge.engine import place
from volbridge.kv import curl_body, curl_get, object_store, open_store
from volbridge.kv.cloud import open_object_store
from volbridge.kv.curl_get import S3Signer
from volbridge.kv.retry import RetryPolicy

from servers import tls_pair


@pytest.fixture(autouse=True, params=["native", "pycurl"])
def body_path(request, monkeypatch):
    """Every test twice: bodies written by the engine's compiled callback (kv.curl_body), and by
    pycurl's Python callbacks (the path before the loops are built, or where pycurl's layout is
    not the one known)."""
    monkeypatch.setattr(curl_body, "_curl", [None])
    if request.param == "native":
        place.load()
        assert curl_body.curl() is not None, "the native body path is not available here"
    else:
        monkeypatch.setenv("VOLBRIDGE_CURL_NATIVE", "0")
        assert curl_body.curl() is None
    return request.param


def fetched(store, keys, heavy=False):
    got = {}
    store.fetch_each(keys, lambda k, v: got.__setitem__(k, None if v is None else bytes(v)), heavy=heavy)
    return got


@pytest.mark.parametrize("heavy", [False, True])
def test_fetch_each_over_s3_is_what_get_reads(s3env, s3_bucket, heavy):
    s = open_store(f"s3://{s3_bucket}/curl-{int(heavy)}")
    assert s.getter is not None  # static credentials: GETs go through libcurl
    rng = np.random.default_rng(0)
    values = {"empty": b"", "one": b"1", "big": rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes(),
              "with space/and ünicode+plus": b"odd key", "deep/er/key": b"x" * 1000}
    for k, v in values.items():
        s.put(k, v)
    s.put("gz", b"compressed " * 100, content_encoding="gzip")
    keys = [*values, "gz", "absent", "deep/absent"]
    requests = s.stats.requests
    got = fetched(s, keys, heavy)
    assert got == {**values, "gz": b"compressed " * 100, "absent": None, "deep/absent": None}
    assert s.stats.requests - requests == len(keys) and s.stats.retries == 0
    assert s.get_many(keys) == {k: v for k, v in got.items() if v is not None}
    assert {k: s.get(k) for k in keys} == got


def test_a_body_its_content_encoding_does_not_describe_raises(s3env, s3_bucket, tmp_path):
    import boto3

    s = open_store(f"s3://{s3_bucket}/curl-enc")
    client = boto3.client("s3", endpoint_url=s3env.endpoint, aws_access_key_id=s3env.access_key_id,
                          aws_secret_access_key=s3env.secret_access_key, region_name=s3env.region)
    client.put_object(Bucket=s3_bucket, Key="curl-enc/bad", Body=b"not gzip at all", ContentEncoding="gzip")
    client.put_object(Bucket=s3_bucket, Key="curl-enc/good", Body=gzip.compress(b"fine"), ContentEncoding="gzip")
    assert fetched(s, ["good"]) == {"good": b"fine"}
    with pytest.raises(ChunkDecodeError, match=rf"s3://{s3_bucket}/curl-enc/bad \(Content-Encoding: gzip\)"):
        fetched(s, ["good", "bad"])


def test_volume_reads_agree_with_and_without_curl(s3env, s3_bucket, monkeypatch):
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (40, 50, 30), dtype=np.uint16)
    for fmt, kw in (("precomputed", {"compression": "gzip"}), ("precomputed", {}), ("zarr3", {"compression": "zstd"})):
        url = f"{fmt}://s3://{s3_bucket}/agree-{fmt}-{len(kw)}"
        vb.create(url, shape=data.shape, dtype=data.dtype, chunk_shape=(16, 16, 16), **kw)[...] = data
        with_curl = vb.array(url)
        assert with_curl.volume.store.getter is not None
        monkeypatch.setenv("VOLBRIDGE_CURL", "0")
        without = vb.array(url)
        monkeypatch.delenv("VOLBRIDGE_CURL")
        assert getattr(without.volume.store, "getter", None) is None
        for _ in range(8):
            lo = [int(rng.integers(-5, s)) for s in data.shape]
            box = tuple(slice(a, int(rng.integers(a + 1, s + 6))) for a, s in zip(lo, data.shape))
            np.testing.assert_array_equal(with_curl[box], without[box])
        np.testing.assert_array_equal(with_curl[...], data)


def test_a_corrupt_chunk_decoded_on_a_worker_raises_naming_it(s3env, s3_bucket):
    url = f"zarr3://s3://{s3_bucket}/corrupt-z"
    vol = vb.create(url, shape=(32, 32, 32), dtype="uint8", chunk_shape=(16, 16, 16), compression="zstd")
    vol[...] = np.ones((32, 32, 32), np.uint8)
    store = open_store(f"s3://{s3_bucket}/corrupt-z")
    key = next(k for k in store.list() if k.startswith("c/"))
    store.put(key, b"\x28\xb5\x2f\xfd damaged")
    with pytest.raises(ChunkDecodeError, match=key.replace("/", "/")):
        vb.array(url)[...]


def test_failures_raise_naming_the_url_and_count_retries(s3env, s3_bucket, monkeypatch):
    s = open_store(f"s3://{s3_bucket}/curl-auth")
    s.put("x", b"1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad = open_store(f"s3://{s3_bucket}/curl-auth")
    assert bad.getter is not None
    with pytest.raises(StoreError, match=rf"GET s3://{s3_bucket}/curl-auth/x failed: HTTP 403"):
        fetched(bad, ["x"])
    assert bad.stats.retries == 0  # an auth failure is final
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = open_object_store("s3://b/p", retry=RetryPolicy(max_attempts=3, base_delay=0.01, connect_timeout=1))
    with pytest.raises(StoreError, match=r"GET s3://b/p/k failed after 3 attempts: .*curl error 7"):
        fetched(store, ["j", "k"][1:])
    assert store.stats.retries == 2 and store.stats.requests == 3


def test_fetch_each_over_http_with_escaped_names(serve_dir, tmp_path):
    (tmp_path / "my data").mkdir()
    (tmp_path / "my data" / "a b").write_bytes(b"spaced")
    (tmp_path / "my data" / "c").write_bytes(b"plain")
    s = open_store(f"{serve_dir(tmp_path)}/my%20data")
    assert s.getter is not None
    assert fetched(s, ["a b", "c", "nothing"]) == {"a b": b"spaced", "c": b"plain", "nothing": None}


def test_signature_matches_botocore(monkeypatch):
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 11, 21, 10, 10, 10))
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    for token in (None, "session/token+="):
        signer = S3Signer("AKIDEXAMPLE", secret, "eu-west-2", token)
        path = "/bucket/some%20dir/chunk_1-2~3"
        ours = dict(h.split(": ", 1) for h in signer.headers("127.0.0.1:8333", path, amz_date="20261121T101010Z"))
        req = AWSRequest(method="GET", url=f"http://127.0.0.1:8333{path}")
        req.context["client_config"] = Config(s3={"payload_signing_enabled": False})  # unsigned, as these GETs are
        botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", secret, token), "s3", "eu-west-2").add_auth(req)
        assert req.headers["X-Amz-Content-SHA256"] == ours["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert ours["Authorization"] == req.headers["Authorization"]
        assert ours.get("x-amz-security-token") == req.headers.get("X-Amz-Security-Token")


# -- against a scripted local HTTP server ----------------------------------------------------------
class _Routes(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, headers, body = self.routes.get(self.path, (404, {}, b"no such object"))
        if callable(body):
            status, headers, body = body(self)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        chunked = headers.get("Transfer-Encoding") == "chunked"  # no length announced
        if not chunked:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not chunked:
            self.wfile.write(body)
            return
        for at in range(0, len(body), 100_000):
            piece = body[at:at + 100_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    do_HEAD = do_GET


@pytest.fixture
def scripted():
    """(base URL, routes): a threaded HTTP/1.1 server answering each path from ``routes``
    (path -> (status, headers, body), or a callable of the request that returns one)."""

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    routes: dict = {}
    handler = type("Handler", (_Routes,), {"routes": routes})
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("heavy", [False, True])
def test_bodies_of_any_size_with_or_without_a_length(scripted, body_path, heavy, monkeypatch):
    """Bodies around and far past the first buffer's size (64 KiB), announced or sent chunked
    (the buffer then grows without knowing the end), arrive whole, one request each; on the
    native path no byte goes through Python."""
    base, routes = scripted
    if body_path == "native":
        def no_python(*_):
            raise AssertionError("a body went through pycurl's Python callback")
        monkeypatch.setattr(curl_get._Request, "write", no_python)
    rng = np.random.default_rng(1)
    want = {}
    for size in (0, 1, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, (1 << 20) + 3, 5 << 20):
        for chunked in (False, True):
            key = f"{'chunked' if chunked else 'sized'}-{size}"
            want[key] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            routes[f"/{key}"] = (200, {"Transfer-Encoding": "chunked"} if chunked else {}, want[key])
    s = open_store(base + "/")
    assert s.getter is not None
    got = fetched(s, list(want), heavy)
    assert got == want
    assert s.stats.requests == len(want) and s.stats.retries == 0


def test_bytes_in_flight_stay_bounded(scripted, monkeypatch):
    base, routes = scripted
    lock, now, peak = threading.Lock(), [0], [0]

    def slow(_req):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return 200, {}, b"x" * 1000

    routes.update({f"/vol/k{i}": (0, {}, slow) for i in range(24)})
    monkeypatch.setattr(object_store, "MAX_BYTES_IN_FLIGHT", 8 << 20)
    s = open_store(f"{base}/vol")
    got = {}
    s.fetch_each([f"k{i}" for i in range(24)], lambda k, v: got.__setitem__(k, bytes(v)), nbytes=4 << 20)
    assert len(got) == 24 and peak[0] == 2  # 8 MiB / 4 MiB per chunk
    peak[0] = 0
    s.fetch_each([f"k{i}" for i in range(24)], lambda k, v: None, nbytes=1 << 10)
    assert 2 < peak[0] <= s.io_concurrency


def test_a_fetch_inside_a_fetch_gets_its_own_transfers(scripted):
    base, routes = scripted
    for i in range(6):
        routes[f"/vol/k{i}"] = (200, {}, b"k%d" % i)
        routes[f"/vol/m{i}"] = (200, {}, b"m%d" % i)
    s = open_store(f"{base}/vol")
    got = {}
    s.fetch_each([f"k{i}" for i in range(6)], lambda k, v: got.__setitem__(k, (bytes(v), s.get_many(["m" + k[1:]]))))
    assert got == {f"k{i}": (b"k%d" % i, {f"m{i}": b"m%d" % i}) for i in range(6)}


def test_redirects_are_followed_and_the_last_response_counts(scripted):
    base, routes = scripted
    routes["/vol/a"] = (302, {"Location": "/elsewhere/a", "Content-Encoding": "gzip"}, b"")
    routes["/elsewhere/a"] = (200, {}, b"DATA")
    routes["/vol/b"] = (301, {"Location": "/elsewhere/b"}, b"")
    routes["/elsewhere/b"] = (200, {"Content-Encoding": "gzip"}, gzip.compress(b"UNZIPPED"))
    s = open_store(f"{base}/vol")
    assert s.getter is not None and fetched(s, ["a", "b"]) == {"a": b"DATA", "b": b"UNZIPPED"}


def test_a_retry_waits_out_its_backoff_without_spinning(scripted, monkeypatch):
    base, routes = scripted
    routes["/vol/k"] = (503, {}, b"busy")
    s = open_object_store(f"{base}/vol", retry=RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=0.2))
    sleeps = []
    real_sleep = time.sleep
    monkeypatch.setattr(curl_get.time, "sleep", lambda t: (sleeps.append(t), real_sleep(t)))
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt: 0.2)
    with pytest.raises(StoreError, match=r"GET http://.*/vol/k failed after 3 attempts: HTTP 503"):
        fetched(s, ["k"])
    assert s.stats.retries == 2 and len(sleeps) <= 4  # one sleep per backoff, not a poll each millisecond


def test_transfers_on_sockets_past_1024_are_waited_for_not_spun_on(scripted, sockets_past_1024, monkeypatch):
    """select() cannot see a socket numbered past 1024, and libcurl's fdset leaves it out: a
    driver waiting through them returned at once, and spun a core while its GETs ran. It waits on
    libcurl's sockets with poll: a few turns of the loop a response, however slow."""
    base, routes = scripted

    def slow(req):
        time.sleep(0.3)
        return 200, {}, req.path.encode()

    routes.update({f"/vol/k{i}": (0, {}, slow) for i in range(4)})
    s = open_store(f"{base}/vol")
    turns = []
    drive = curl_get.CurlClient._completed
    monkeypatch.setattr(curl_get.CurlClient, "_completed", lambda self, st, active: (turns.append(1), drive(self, st, active))[1])
    assert fetched(s, [f"k{i}" for i in range(4)]) == {f"k{i}": b"/vol/k%d" % i for i in range(4)}
    assert len(turns) < 60  # spinning, it turned ~10^4 times in the 0.3 s


def test_proxy_variables_are_read_as_obstore_reads_them(scripted, monkeypatch):
    base, routes = scripted
    routes["/vol/a"] = (200, {}, b"DIRECT")
    proxy_base, proxy_routes = base, routes  # the same server, answering absolute-URI requests
    proxy_routes[f"{base}/vol/a"] = (200, {}, b"FROM-PROXY")
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv(var, proxy_base)
        from volbridge.kv import cloud

        cloud._clients.clear()
        s = open_store(f"{base}/vol")
        assert fetched(s, ["a"]) == {"a": b"FROM-PROXY"}, var
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        cloud._clients.clear()
        assert fetched(open_store(f"{base}/vol"), ["a"]) == {"a": b"DIRECT"}, var
    cloud._clients.clear()


def test_the_signed_host_is_the_host_header_libcurl_sends():
    from volbridge.kv.curl_get import CurlGetter

    policy = RetryPolicy()
    assert CurlGetter("http://h:80", "/", None, policy).host == "h"
    assert CurlGetter("https://h:443/", "/", None, policy).host == "h"
    assert CurlGetter("http://h:8333", "/", None, policy).host == "h:8333"
    assert CurlGetter("https://h", "/", None, policy).host == "h"


def test_options_volbridge_does_not_reproduce_leave_gets_to_obstore(s3env, s3_bucket, monkeypatch):
    assert open_store(f"s3://{s3_bucket}/opt").getter is not None
    monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")  # obstore sends x-amz-request-payer
    assert open_store(f"s3://{s3_bucket}/opt").getter is None


def test_https_trusts_the_ca_named_by_ssl_cert_file(scripted, tmp_path, monkeypatch):
    import ssl

    base, routes = scripted
    routes["/vol/a"] = (200, {}, b"SECURE")
    tls_pair(tmp_path)
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    tls = Server(("127.0.0.1", 0), type("Handler", (_Routes,), {"routes": routes}))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    url = f"https://localhost:{tls.server_address[1]}/vol"
    try:
        from volbridge.kv import cloud

        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        cloud._clients.clear()
        assert fetched(open_store(url), ["a"]) == {"a": b"SECURE"}
        monkeypatch.delenv("SSL_CERT_FILE")  # the system's CAs do not know this one
        cloud._clients.clear()
        with pytest.raises(StoreError, match=rf"GET {url}/a failed: .*curl error 60"):
            fetched(open_store(url), ["a"])
    finally:
        cloud._clients.clear()
        tls.shutdown()
        tls.server_close()


def test_anonymous_gcs_reads_go_through_libcurl_and_get_gzip_as_stored(monkeypatch):
    """A public bucket (here the GCS protocol fake without a token): GETs over libcurl ask for
    gzip as stored, as obstore's client is told to (GCS would otherwise transcode, with no size)."""
    from servers import GCSFake
    from test_gcs import _GCS_VARS

    with GCSFake(token=None) as fake:
        for k in _GCS_VARS:
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)  # anonymous, as with an emulator
        bucket = fake.new_bucket()
        url = f"precomputed://gs://{bucket}/em"
        data = np.random.default_rng(5).integers(1, 255, (20, 24, 16), dtype=np.uint8)
        vb.create(url, shape=data.shape, chunk_shape=(8, 8, 8), compression="gzip")[...] = data
        arr = vb.array(url)
        assert arr.volume.store.getter is not None
        gets = len([r for r in fake.requests if r[0] == "GET"])
        np.testing.assert_array_equal(arr[...], data)
        chunk_gets = [r for r in fake.requests if r[0] == "GET"][gets:]
        assert len(chunk_gets) == 3 * 3 * 2 and all(r[2].get("accept-encoding") == "gzip" for r in chunk_gets)
        s = open_store(f"gs://{bucket}/em")
        keys = [k for k in s.list() if "_" in k.split("/")[-1]]
        assert fetched(s, keys + ["absent"]) == {**{k: s.get(k) for k in keys}, "absent": None}


@pytest.mark.parametrize("heavy", [False, True])
def test_receive_buffers_are_reused_but_never_under_a_view_kept(scripted, heavy, monkeypatch):
    """Bodies arrive in buffers reused from one request to the next (no regrowing, no fresh
    pages); a view a callee keeps past its call (against the contract) pins its buffer, which is
    then never written again; get_many keeps copies."""
    monkeypatch.setattr(curl_get, "_pool", [None])  # this process's pool, without other tests' buffers
    base, routes = scripted
    bodies = {f"k{i}": bytes([i]) * (70_000 + 1000 * i) for i in range(12)}  # each over curl's 16 KiB pieces
    routes.update({f"/vol/{k}": (200, {}, v) for k, v in bodies.items()})
    routes["/vol/err"] = (403, {}, b"denied: " + b"y" * 50_000)
    s = open_store(f"{base}/vol")
    kept = {}

    def keep(k, v):  # holds on to views as numpy arrays (what a lazy decoder might do)
        assert v is not None and v == bodies[k]
        kept[k] = np.frombuffer(v, np.uint8)

    s.fetch_each(list(bodies), keep, heavy=heavy)
    buffers = curl_get._process_buffers()
    assert buffers.free == []  # every buffer is pinned by a kept view
    seen = {}
    for _ in range(3):
        s.fetch_each(list(bodies), lambda k, v: seen.__setitem__(k, bytes(v)), heavy=heavy)
        assert seen == bodies
    assert all(kept[k].tobytes() == v for k, v in bodies.items())  # never overwritten
    assert 0 < len(buffers.free) <= len(bodies) and buffers.bytes == sum(map(len, buffers.free)) <= curl_get.KEPT_BUFFER_BYTES
    before = {id(b) for b in buffers.free}
    s.fetch_each(list(bodies)[:3], lambda k, v: None, heavy=heavy)
    assert {id(b) for b in buffers.free} <= before  # taken from the pool and given back
    many = s.get_many(list(bodies))
    s.fetch_each(list(bodies), lambda k, v: None, heavy=heavy)
    assert many == bodies and all(type(v) is bytes for v in many.values())
    with pytest.raises(StoreError, match=r"HTTP 403: denied: y"):
        s.fetch_each(["k1", "err"], lambda k, v: None, heavy=heavy)
    assert fetched(s, list(bodies), heavy) == bodies  # and the next fetch is whole


def test_kept_receive_buffers_stay_under_their_bound(scripted, monkeypatch):
    base, routes = scripted
    routes.update({f"/vol/k{i}": (200, {}, bytes(300_000)) for i in range(8)})
    monkeypatch.setattr(curl_get, "KEPT_BUFFER_BYTES", 1_000_000)
    monkeypatch.setattr(curl_get, "_pool", [None])
    s = open_store(f"{base}/vol")
    assert len(fetched(s, [f"k{i}" for i in range(8)])) == 8
    buffers = curl_get._process_buffers()
    assert len(buffers.free) == 3 and buffers.bytes <= 1_000_000
    # one pool for every thread that drives transfers (a relay's request threads): one bound
    threads = [threading.Thread(target=fetched, args=(s, [f"k{i}" for i in range(8)])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert curl_get._process_buffers() is buffers and len(buffers.free) == 3 and buffers.bytes <= 1_000_000


@pytest.mark.parametrize("heavy", [False, True])
def test_a_callee_holding_an_export_of_the_view_itself_keeps_its_buffer(scripted, heavy, monkeypatch):
    """(review) A PickleBuffer of the value made releasing the view raise BufferError (and with
    heavy=True killed a worker, so the fetch hung): now such a buffer is simply left to it."""
    import pickle

    monkeypatch.setattr(curl_get, "_pool", [None])
    base, routes = scripted
    bodies = {f"k{i}": bytes([65 + i]) * 100_000 for i in range(4)}
    routes.update({f"/vol/{k}": (200, {}, v) for k, v in bodies.items()})
    s = open_store(f"{base}/vol")
    kept = {}
    done = threading.Event()
    errors = []

    def run():
        try:
            s.fetch_each(list(bodies), lambda k, v: kept.__setitem__(k, pickle.PickleBuffer(v)), heavy=heavy, nbytes=1 << 40)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "fetch_each hung"
    assert not errors, errors
    assert curl_get._process_buffers().free == []
    assert fetched(s, list(bodies), heavy) == bodies
    assert {k: bytes(v.raw()) for k, v in kept.items()} == bodies


def test_a_failed_fetch_keeps_no_receive_buffer(scripted):
    """(review) The error page of a request that failed for good stayed alive, held by the idle
    curl handle's write callback."""
    import gc

    base, routes = scripted
    routes["/vol/bad"] = (403, {}, b"E" * (4 << 20))
    routes["/vol/flaky"] = (503, {}, b"busy " * 1000)
    s = open_store(f"{base}/vol")
    for keys in (["bad"], ["flaky", "bad"]):
        with pytest.raises(StoreError, match="HTTP 403"):
            s.fetch_each(keys, lambda k, v: None)
        gc.collect()
        assert [r.key for r in gc.get_objects() if type(r) is curl_get._Request and r.buf is not None] == []
    # a callee that raises, on the driver or on a worker: the error, kept, holds no receive buffer
    routes["/vol/ok"] = (200, {}, b"x" * (1 << 20))

    def fails(key, value):
        raise ValueError(f"callee failed on {key}")

    for heavy in (False, True):
        with pytest.raises(ValueError, match="callee failed on ok") as kept:
            s.fetch_each(["ok"], fails, heavy=heavy)
        gc.collect()
        assert [r.key for r in gc.get_objects() if type(r) is curl_get._Request and r.buf is not None] == [], heavy
        assert kept.value is not None


def test_a_marker_that_cannot_be_read_falls_back_to_asking_one_at_a_time(scripted):
    """Format detection asks for every marker document at once; where one answers with an error
    (a public bucket says 403 for keys it lacks), it asks as before, one marker at a time, and a
    volume whose own marker reads still opens."""
    import json

    base, routes = scripted
    info = {"type": "image", "data_type": "uint8", "num_channels": 1, "scales": [{
        "key": "s0", "size": [4, 4, 4], "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
        "chunk_sizes": [[4, 4, 4]], "encoding": "raw"}]}
    routes["/vol/info"] = (200, {}, json.dumps(info).encode())
    routes["/vol/s0/0-4_0-4_0-4"] = (200, {}, bytes(range(64)))
    for marker in (".zattrs", "zarr.json", ".zarray", "attributes.json"):
        routes[f"/vol/{marker}"] = (403, {}, b"AccessDenied")
    a = vb.array(f"{base}/vol")
    assert a.format == "precomputed"
    np.testing.assert_array_equal(a[...], np.arange(64, dtype=np.uint8).reshape(4, 4, 4))  # x fastest in the chunk
    # through a cache the same, and the cached markers are still compared: a changed info is seen
    held = vb.array(f"{base}/vol", cache=1 << 20)
    np.testing.assert_array_equal(held[...], a[...])
    info["data_type"] = "int8"
    routes["/vol/info"] = (200, {}, json.dumps(info).encode())
    again = vb.array(f"{base}/vol", cache=1 << 20)
    assert again.dtype == np.int8
    np.testing.assert_array_equal(again[...], a[...].view(np.int8))


def test_a_prefixed_url_through_a_cache_asks_for_its_own_marker_only(scripted, monkeypatch):
    """(review) Through a cache a format-prefixed URL asked for every format's markers, so a
    server failing on one this format never reads (503 on .zattrs) made a precomputed open fail."""
    import json

    base, routes = scripted
    info = json.dumps({"type": "image", "data_type": "uint8", "num_channels": 1, "scales": [{
        "key": "s0", "size": [4, 4, 4], "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
        "chunk_sizes": [[4, 4, 4]], "encoding": "raw"}]}).encode()
    asked = []
    routes["/vol/info"] = (0, {}, lambda _req: asked.append("info") or (200, {}, info))
    routes["/vol/s0/0-4_0-4_0-4"] = (200, {}, bytes(range(64)))
    for marker in (".zattrs", "zarr.json", ".zarray", "attributes.json"):
        routes[f"/vol/{marker}"] = (0, {}, lambda _req, m=marker: asked.append(m) or (503, {}, b"SlowDown"))
    monkeypatch.setenv("VOLBRIDGE_MAX_ATTEMPTS", "2")
    held = [vb.array(f"precomputed://{base}/vol", cache=1 << 20) for _ in range(2)]  # cold, then warm
    for a in held:
        np.testing.assert_array_equal(a[...], np.arange(64, dtype=np.uint8).reshape(4, 4, 4))
    assert asked == ["info", "info"]  # read, then compared


def test_a_store_that_keeps_failing_is_not_asked_again_key_by_key(scripted, monkeypatch):
    """(review) Detection fell back to asking marker by marker after any error, so a server that
    answered only 503 (or never) was waited out twice, with a fresh retry budget each time."""
    base, routes = scripted
    count = [0]

    def busy(_req):
        count[0] += 1
        return 503, {}, b"SlowDown"

    for marker in ("info", ".zattrs", "zarr.json", ".zarray", "attributes.json"):
        routes[f"/vol/{marker}"] = (0, {}, busy)
    monkeypatch.setenv("VOLBRIDGE_MAX_ATTEMPTS", "2")
    with pytest.raises(StoreError, match=r"failed after 2 attempts: HTTP 503"):
        vb.array(f"{base}/vol")
    assert count[0] <= 5 * 2  # the batch's attempts only, no second pass one marker at a time


def test_a_registered_format_that_takes_no_documents_still_opens(tmp_path, monkeypatch):
    """(review) A FormatEntry registered from outside, whose open takes (store, url, writable):
    opening passed it the detection's documents (TypeError), and a cache tier's revalidation
    left its marker out."""
    import json

    from volbridge.kv import cache_tier
    from volbridge.remotes import registry

    data = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    vb.create(f"zarr3://{tmp_path}/v", shape=data.shape, dtype="uint8", chunk_shape=(2, 2, 2))[...] = data
    (tmp_path / "v" / "my.json").write_text(json.dumps({"inner": "zarr3"}))
    (tmp_path / "v" / "zarr.json").rename(tmp_path / "v" / "inner.json")

    def open_my(store, url, writable):  # the zarr array, its document under another name
        return registry._open_zarr(store, url, writable, docs={"zarr.json": store.get("inner.json")})

    monkeypatch.setitem(registry.FORMATS, "my", registry.FormatEntry(
        "my", ("my.json",), lambda store: store.exists("my.json"), open_my))
    for url in (f"my://{tmp_path}/v", str(tmp_path / "v")):
        np.testing.assert_array_equal(vb.array(url)[...], data)
    asked = []
    real = cache_tier.CacheTier.refresh  # an open through a cache reads the markers afresh, to compare
    monkeypatch.setattr(cache_tier.CacheTier, "refresh", lambda self, keys: asked.append(list(keys)) or real(self, keys))
    np.testing.assert_array_equal(vb.array(str(tmp_path / "v"), cache=1 << 20)[...], data)
    assert "my.json" in asked[0]


def test_a_fetch_that_fails_keeps_no_body_alive(scripted):
    """The callee fails on the first body while others of the same round have arrived: their
    buffers are not kept by the idle handles' callbacks."""
    import gc

    base, routes = scripted

    def slow(_req):
        time.sleep(0.2)  # all answer together: one round of completions
        return 200, {}, b"x" * 200_000

    routes.update({f"/vol/k{i}": (0, {}, slow) for i in range(8)})
    s = open_store(f"{base}/vol")

    def done(key, value):
        raise RuntimeError("the callee failed")

    with pytest.raises(RuntimeError, match="callee failed"):
        s.fetch_each([f"k{i}" for i in range(8)], done)
    gc.collect()
    kept = [r for r in gc.get_objects() if isinstance(r, curl_get._Request) and r.buf is not None]
    assert kept == []
