"""Whole-object PUTs over libcurl (kv.curl_put): the same objects, headers, errors and counters as
obstore's PUTs, against SeaweedFS and a scripted local server; the signature against botocore's;
the engine's writes through it equal to a numpy model."""

from __future__ import annotations

import gzip
import http.server
import socketserver
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

import volbridge as vb
from volbridge.errors import ChunkEncodeError, StoreError
from volbridge.kv import object_store, open_store
from volbridge.kv.cloud import open_object_store
from volbridge.kv.curl_get import S3Signer
from volbridge.kv.curl_put import CurlPutter
from volbridge.kv.object_store import ObjectStore, content_type
from volbridge.kv.retry import RetryPolicy


def done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def test_put_each_stores_what_obstore_puts(s3env, s3_bucket):
    s = open_store(f"s3://{s3_bucket}/put")
    assert s.batched_puts and s.putter is not None  # static credentials: PUTs go through libcurl
    client = s3env.boto3_client()
    rng = np.random.default_rng(0)
    values = {"empty": b"", "one": b"1", "big": rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes(),
              "with space/and ünicode+plus": b"odd key", "deep/er/zarr.json": b'{"a": 1}', "info": b"{}"}
    given = [done(v) if i % 3 == 1 else bytearray(v) if i % 3 == 2 else v for i, v in enumerate(values.values())]
    before = s.stats.as_dict()
    s.put_each(list(values), iter(given))
    after = s.stats.as_dict()
    assert after["requests"] - before["requests"] == len(values) and after["retries"] == before["retries"]
    assert after["bytes_written"] - before["bytes_written"] == sum(map(len, values.values()))
    assert {k: s.get(k) for k in values} == values
    for k, v in values.items():  # as obstore's PUT of the same key stores it
        ours = client.head_object(Bucket=s3_bucket, Key=f"put/{k}")
        s.put("ref/" + k, v)
        theirs = client.head_object(Bucket=s3_bucket, Key=f"put/ref/{k}")
        assert ours["ContentType"] == theirs["ContentType"] == content_type(k)
        assert ours["ContentLength"] == len(v) and "ContentEncoding" not in ours

    s.put_each(["gz/a", "gz/b"], [b"compressed " * 100, done(b"b" * 5000)], content_encoding="gzip")
    stored = client.get_object(Bucket=s3_bucket, Key="put/gz/b")
    assert stored["ContentEncoding"] == "gzip" and gzip.decompress(stored["Body"].read()) == b"b" * 5000
    assert s.get("gz/a") == b"compressed " * 100 and s.get_many(["gz/b"]) == {"gz/b": b"b" * 5000}


@pytest.mark.parametrize("https", [False, True])
def test_put_signature_matches_botocore(monkeypatch, https):
    import datetime
    import hashlib

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 11, 22, 9, 8, 7))
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    body = b"chunk bytes" * 99
    for token in (None, "session/token+="):
        signer = S3Signer("AKIDEXAMPLE", secret, "eu-west-2", token)
        path = "/bucket/some%20dir/c/0/1/2"
        payload = "UNSIGNED-PAYLOAD" if https else hashlib.sha256(body).hexdigest()
        headers = (("content-encoding", "gzip"), ("content-type", "application/octet-stream"))
        ours = dict(h.split(": ", 1) for h in signer.sign("PUT", "127.0.0.1:8333", path, payload, headers,
                                                          amz_date="20261122T090807Z"))
        req = AWSRequest(method="PUT", url=f"{'https' if https else 'http'}://127.0.0.1:8333{path}", data=body,
                         headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"})
        req.context["client_config"] = Config(s3={"payload_signing_enabled": not https})
        botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", secret, token), "s3", "eu-west-2").add_auth(req)
        assert req.headers["X-Amz-Content-SHA256"] == ours["x-amz-content-sha256"] == payload
        assert ours["Authorization"] == req.headers["Authorization"]
        assert ours["content-type"] == "application/octet-stream" and ours["content-encoding"] == "gzip"


def test_put_failures_raise_naming_the_url(s3env, s3_bucket, monkeypatch):
    s = open_store(f"s3://{s3_bucket}/put-auth")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad = open_store(f"s3://{s3_bucket}/put-auth")
    assert bad.batched_puts
    with pytest.raises(StoreError, match=rf"PUT s3://{s3_bucket}/put-auth/x failed: HTTP 403"):
        bad.put_each(["x"], [b"1"])
    assert bad.stats.retries == 0 and s.get("x") is None  # an auth failure is final
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = open_object_store("s3://b/p", retry=RetryPolicy(max_attempts=3, base_delay=0.01, connect_timeout=1))
    with pytest.raises(StoreError, match=r"PUT s3://b/p/k failed after 3 attempts: .*curl error 7"):
        store.put_each(["k"], [b"1"])
    assert store.stats.retries == 2 and store.stats.requests == 3


def test_a_value_that_fails_to_be_made_raises_and_leaves_the_driver_usable(s3env, s3_bucket):
    s = open_store(f"s3://{s3_bucket}/put-fail")
    failed: Future = Future()
    failed.set_exception(ChunkEncodeError("cannot encode chunk 'k2'"))
    with pytest.raises(ChunkEncodeError, match="k2"):
        s.put_each(["k0", "k1", "k2", "k3"], [b"0", b"1", failed, b"3"])
    assert s.get("k3") is None  # nothing after the failure was taken

    def values():
        yield b"a"
        raise ValueError("the generator broke")

    with pytest.raises(ValueError, match="generator broke"):
        s.put_each(["a", "b"], values())
    s.put_each(["c", "d"], [b"c", done(b"d")])  # the same thread's handles work afterwards
    assert s.get_many(["c", "d"]) == {"c": b"c", "d": b"d"}  # ("a" was in flight: written or not)


def test_a_put_each_inside_another_gets_its_own_transfers(s3env, s3_bucket):
    s = open_store(f"s3://{s3_bucket}/put-nest")

    def values():
        for i in range(5):
            s.put_each([f"inner{i}", f"inner{i}b"], [b"i%d" % i, b"j%d" % i])
            yield b"o%d" % i

    s.put_each([f"outer{i}" for i in range(5)], values())
    want = {**{f"outer{i}": b"o%d" % i for i in range(5)}, **{f"inner{i}": b"i%d" % i for i in range(5)},
            **{f"inner{i}b": b"j%d" % i for i in range(5)}}
    assert s.get_many(list(want)) == want


# -- against a scripted local HTTP server ----------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: dict = {}

    def log_message(self, *args):
        pass

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        log, answers, delay, lock, active = (self.script[k] for k in ("log", "answers", "delay", "lock", "active"))
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
            log.append(("start", self.path, time.monotonic(), {k.lower(): v for k, v in self.headers.items()}))
            status = answers.get(self.path, []).pop(0) if answers.get(self.path) else 200
        time.sleep(delay.get(self.path, 0.0))
        with lock:
            active[0] -= 1
            log.append(("end", self.path, time.monotonic(), body))
            if status == 200:
                self.script["ok"].append(self.path)
        reply = b"" if status == 200 else b"<Error>busy</Error>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def recorder():
    """(base URL, script): a threaded HTTP/1.1 server that logs each PUT, answers it with the
    statuses queued in script["answers"][path] (then 200), after script["delay"][path] seconds."""

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    script = {"log": [], "ok": [], "answers": {}, "delay": {}, "lock": threading.Lock(), "active": [0, 0]}
    server = Server(("127.0.0.1", 0), type("Handler", (_Recorder,), {"script": script}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def _putter_store(base: str, **retry) -> ObjectStore:
    """An ObjectStore whose whole-object PUTs go to ``base`` unsigned (the scripted server)."""
    policy = RetryPolicy(**retry)
    return ObjectStore(None, "s3://scripted/vol", prefix="vol", retry=policy,
                       putter=CurlPutter(base, "/bucket/", None, policy))


def test_retries_and_bytes_in_flight(recorder, monkeypatch):
    base, script = recorder
    script["answers"]["/bucket/vol/k3"] = [503, 500]
    script["answers"]["/bucket/vol/k5"] = [429]
    for i in range(12):
        script["delay"][f"/bucket/vol/k{i}"] = 0.2  # long enough for two to overlap on a busy machine
    monkeypatch.setattr(object_store, "MAX_BYTES_IN_FLIGHT", 8 << 20)
    s = _putter_store(base, base_delay=0.01)
    s.put_each([f"k{i}" for i in range(12)], (b"v%d" % i for i in range(12)), nbytes=4 << 20)
    ends = {path: body for kind, path, _, body in script["log"] if kind == "end"}
    assert ends == {f"/bucket/vol/k{i}": b"v%d" % i for i in range(12)}
    assert s.stats.retries == 3 and s.stats.requests == 15 and s.stats.bytes_written == sum(len(b"v%d" % i) for i in range(12))
    assert script["active"][1] == 2  # 8 MiB / 4 MiB per value
    starts = [h for kind, _, _, h in script["log"] if kind == "start"]
    assert all(h["content-type"] == "application/octet-stream" and "expect" not in h for h in starts)

    script["answers"]["/bucket/vol/bad"] = [503] * 5
    with pytest.raises(StoreError, match=r"PUT s3://scripted/vol/bad failed after 3 attempts: HTTP 503: <Error>busy"):
        _putter_store(base, max_attempts=3, base_delay=0.01).put_each(["bad"], [b"x"])
    script["answers"]["/bucket/vol/final"] = [403]
    s = _putter_store(base)
    with pytest.raises(StoreError, match=r"PUT s3://scripted/vol/final failed: HTTP 403"):
        s.put_each(["final"], [b"x"])
    assert s.stats.retries == 0


def test_a_value_still_being_made_starts_as_soon_as_it_is_made(recorder):
    """The driver waits for a Future's completion as for a socket's: a value made while another
    PUT is in flight goes out at once, and one made while nothing is in flight is waited for."""
    base, script = recorder
    script["delay"]["/bucket/vol/slow"] = 2.0
    later: Future = Future()
    threading.Timer(0.1, later.set_result, [b"made later"]).start()
    s = _putter_store(base)
    began = time.monotonic()
    s.put_each(["slow", "later"], [b"slow", later])
    log = {(kind, path): t for kind, path, t, _ in script["log"]}
    assert log[("start", "/bucket/vol/later")] - began < 1.0  # sent when made, not when the slow one ends (2 s)

    alone: Future = Future()
    threading.Timer(0.2, alone.set_result, [b"alone"]).start()
    s.put_each(["alone"], [alone])
    assert [body for kind, path, _, body in script["log"] if path == "/bucket/vol/alone" and kind == "end"] == [b"alone"]


def test_a_failed_put_each_returns_after_the_value_it_took_is_made(recorder):
    """The value the driver took and waits for, when another PUT fails: cancelled if it has not
    started, else waited for, so nothing of the write still runs once put_each has raised."""
    base, script = recorder
    script["answers"]["/bucket/vol/bad"] = [403]
    running: Future = Future()
    running.set_running_or_notify_cancel()  # as an encoder thread building it
    threading.Timer(0.5, running.set_result, [b"made"]).start()
    with pytest.raises(StoreError, match="HTTP 403"):
        _putter_store(base).put_each(["bad", "later"], [b"x", running])
    assert running.done() and running.result() == b"made"
    script["answers"]["/bucket/vol/bad"] = [403]
    queued: Future = Future()
    with pytest.raises(StoreError, match="HTTP 403"):
        _putter_store(base).put_each(["bad", "later"], [b"x", queued])
    assert queued.cancelled()


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_value_cancelled_while_waited_for_raises(recorder, monkeypatch, encoding):
    """Cancelled before it is made, with nothing in flight (under transport compression its
    compression is chained to it on the encoders): the write raises, it does not wait for ever."""
    from concurrent.futures import CancelledError

    monkeypatch.setattr(object_store, "encoder_threads", lambda: 0)  # even one value goes through parallel.ahead
    base, _ = recorder
    value: Future = Future()
    threading.Timer(0.2, value.cancel).start()
    outcome = []

    def write():
        try:
            _putter_store(base).put_each(["k"], [value], content_encoding=encoding)
            outcome.append("returned")
        except CancelledError:
            outcome.append("cancelled")

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(20)
    assert outcome == ["cancelled"]


def test_retries_waiting_out_a_backoff_count_against_the_bound(recorder, monkeypatch):
    """A burst of 503s: the failed PUTs' bodies wait for their retries, and no more values are
    taken meanwhile than the bound on bytes in flight allows."""
    base, script = recorder
    for i in range(12):
        script["answers"][f"/bucket/vol/k{i}"] = [503]
    monkeypatch.setattr(object_store, "MAX_BYTES_IN_FLIGHT", 8 << 20)
    held = []

    def values():
        for i in range(12):
            held.append(i + 1 - len(script["ok"]))  # taken and not yet stored, this one included
            yield b"v%d" % i

    s = _putter_store(base, base_delay=0.05)
    s.put_each([f"k{i}" for i in range(12)], values(), nbytes=4 << 20)
    assert sorted(script["ok"]) == sorted(f"/bucket/vol/k{i}" for i in range(12)) and s.stats.retries == 12
    assert max(held) <= 2  # 8 MiB / 4 MiB per value


def test_a_value_made_while_every_slot_is_busy_is_not_spun_on(recorder):
    base, script = recorder
    script["answers"]["/bucket/vol/k0"] = [503]
    script["delay"]["/bucket/vol/k0"] = 0.4
    later: Future = Future()
    threading.Timer(0.6, later.set_result, [b"later"]).start()  # while k0's retry is in flight
    putter = CurlPutter(base, "/bucket/", None, RetryPolicy(base_delay=0.01))
    wall, cpu = time.monotonic(), time.thread_time()
    putter.put_each(["vol/k0", "vol/k1"], [b"x", later], where=str, stats=object_store.StoreStats(),
                    max_in_flight=1, content_type=content_type)
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert sorted(script["ok"]) == ["/bucket/vol/k0", "/bucket/vol/k1"]
    assert cpu < 0.25 * wall  # waiting, not polling (a spin took 0.76 s of CPU in 0.8 s)


def test_puts_on_sockets_past_1024_are_waited_for_not_spun_on(recorder, sockets_past_1024, monkeypatch):
    """As for GETs (test_curl_get): the PUT driver waits on libcurl's sockets with poll, also
    while a value is still being made, never in a loop that select() cannot block."""
    from volbridge.kv import curl_get

    base, script = recorder
    for i in range(3):
        script["delay"][f"/bucket/vol/k{i}"] = 0.3
    later: Future = Future()
    threading.Timer(0.2, later.set_result, [b"later"]).start()  # made while the others are in flight
    turns = []
    drive = curl_get.CurlClient._completed
    monkeypatch.setattr(curl_get.CurlClient, "_completed", lambda self, st, active: (turns.append(1), drive(self, st, active))[1])
    _putter_store(base).put_each(["k0", "k1", "k2", "k3"], [b"0", b"1", b"2", later])
    assert sorted(script["ok"]) == ["/bucket/vol/k0", "/bucket/vol/k1", "/bucket/vol/k2", "/bucket/vol/k3"]
    assert len(turns) < 60  # spinning, it turned ~10^4 times in the 0.3 s


def test_a_cache_tier_put_each_that_fails_part_way_leaves_no_stale_copy(s3env, s3_bucket):
    from volbridge.kv.cache_memory import MemoryCache

    backing = open_store(f"s3://{s3_bucket}/put-cache")
    cache = MemoryCache(backing, 16 << 20)
    assert cache.batched_puts
    keys = [f"k{i}" for i in range(6)]
    cache.put_each(keys, [b"old%d" % i for i in range(6)])
    assert {k: cache.get(k) for k in keys} == {k: b"old%d" % i for i, k in enumerate(keys)}  # cached now

    def values():
        for i in range(3):
            yield b"new%d" % i
        raise ChunkEncodeError("cannot encode chunk 'k3'")

    with pytest.raises(ChunkEncodeError):
        cache.put_each(keys, values())
    assert {k: cache.get(k) for k in keys} == {k: backing.get(k) for k in keys}  # what the store holds
    assert [cache.get(k) for k in keys[3:]] == [b"old3", b"old4", b"old5"]


# -- the engine ------------------------------------------------------------------------------------
def keys_put_by_the_driver(monkeypatch) -> list[str]:
    """The keys every CurlPutter.put_each call from now on is given, in order."""
    from volbridge.kv import curl_put

    taken: list[str] = []
    real = curl_put.CurlPutter.put_each

    def counted(self, keys, *args, **kw):
        taken.extend(keys)
        return real(self, keys, *args, **kw)

    monkeypatch.setattr(curl_put.CurlPutter, "put_each", counted)
    return taken


@pytest.mark.parametrize("cache", [None, 64 << 20], ids=["plain", "memory-cache"])
@pytest.mark.parametrize("fmt,kw", [("zarr3", {"compression": "zstd"}), ("precomputed", {"compression": "gzip"}),
                                    ("zarr", {})])
def test_writes_through_the_driver_equal_the_model(s3env, s3_bucket, monkeypatch, fmt, kw, cache):
    from volbridge.engine import chunked

    monkeypatch.setattr(chunked, "ENCODER_MIN_BYTES", 4096)  # some chunks compress on the encoders, ahead
    taken = keys_put_by_the_driver(monkeypatch)
    url = f"{fmt}://s3://{s3_bucket}/engine"
    shape, chunk = (40, 36, 50), (16, 8, 16)
    model = np.zeros(shape, np.uint16)
    vb.create(url, shape=shape, dtype="uint16", chunk_shape=chunk, **kw)
    vol = vb.array(url, mode="r+", cache=cache)
    assert vol.volume.store.batched_puts
    rng = np.random.default_rng(7)
    for _ in range(6):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        box = tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, shape))
        values = rng.integers(0, 60000, tuple(b.stop - b.start for b in box), dtype=np.uint16)
        vol[box] = values
        model[box] = values
        np.testing.assert_array_equal(vol[...], model)
    vol[...] = model[::-1]  # every chunk whole
    np.testing.assert_array_equal(vol[...], model[::-1])
    np.testing.assert_array_equal(vb.array(url)[...], model[::-1])
    assert len(taken) >= 3 * 5 * 4


@pytest.mark.parametrize("cache", [None, 64 << 20], ids=["plain", "memory-cache"])
@pytest.mark.parametrize("fmt,kw", [("zarr3", {"compression": "zstd"}), ("precomputed", {}),
                                    ("precomputed", {"compression": "gzip"})])
def test_sharded_writes_put_whole_shards_through_the_driver(s3env, s3_bucket, monkeypatch, fmt, kw, cache):
    """Shards a write covers whole are built (a few ahead on the encoders) and PUT by the driver,
    the others read-modified-written meanwhile; edge shards hold fewer chunks."""
    from volbridge.engine import parallel

    monkeypatch.setattr(parallel, "encoder_threads", lambda: 1)  # two whole shards make a bulk write
    taken = keys_put_by_the_driver(monkeypatch)
    url = f"{fmt}://s3://{s3_bucket}/sharded-{fmt}-{len(kw)}"
    shape = (40, 36, 50)
    model = np.zeros(shape, np.uint16)
    vb.create(url, shape=shape, dtype="uint16", chunk_shape=(8, 8, 8), shard_shape=(16, 16, 16), **kw)
    vol = vb.array(url, mode="r+", cache=cache)
    assert vol.volume.store.batched_puts
    rng = np.random.default_rng(11)
    boxes = [np.s_[0:32, 0:16, 0:16], np.s_[16:40, 16:36, 3:50]]  # whole shards only; whole and partial ones
    for _ in range(4):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        boxes.append(tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, shape)))
    for box in boxes:
        values = rng.integers(0, 60000, tuple(b.stop - b.start for b in box), dtype=np.uint16)
        before = len(taken)
        vol[box] = values
        model[box] = values
        np.testing.assert_array_equal(vol[...], model)
        if box == boxes[0]:
            assert len(taken) - before == 2  # both shards in one put_each
    vol[...] = model[::-1]  # every shard whole, edge shards too
    np.testing.assert_array_equal(vol[...], model[::-1])
    np.testing.assert_array_equal(vb.array(url)[...], model[::-1])
    assert len(taken) >= 2 + 3 * 3 * 4


def test_a_shard_that_fails_to_be_built_fails_the_write_and_nothing_hangs(s3env, s3_bucket, monkeypatch):
    from volbridge.engine import parallel
    from volbridge.formats.zarr_sharding import ZarrSharding

    monkeypatch.setattr(parallel, "encoder_threads", lambda: 1)  # built ahead on the encoders
    url = f"zarr3://s3://{s3_bucket}/sharded-fails"
    vol = vb.create(url, shape=(32, 32, 64), dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=(16, 16, 16))
    real, calls = ZarrSharding.pack, []

    def pack(self, chunks):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("cannot build this shard")
        return real(self, chunks)

    monkeypatch.setattr(ZarrSharding, "pack", pack)
    with pytest.raises(RuntimeError, match="cannot build this shard"):
        vol[:, :, 0:60] = 7  # 12 shards whole, 4 partly covered (read-modified-written meanwhile)
    monkeypatch.setattr(ZarrSharding, "pack", real)
    vol[...] = 9  # the store and its driver are usable after the failure
    assert (vb.array(url)[...] == 9).all()


@pytest.mark.parametrize("shard", [None, (16, 16, 16)], ids=["chunks", "sharded"])
def test_an_empty_selection_writes_nothing(s3env, s3_bucket, shard):
    url = f"zarr3://s3://{s3_bucket}/empty-{shard is None}"
    vol = vb.create(url, shape=(32, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=shard)
    assert vol.volume.store.batched_puts
    vol[...] = 3
    vol[5:5, :, :] = np.zeros((0, 32, 32), np.uint8)
    assert (vb.array(url)[...] == 3).all()


@pytest.mark.parametrize("bound_in_shards,bulk", [(64, True), (3, False)])
def test_shards_built_ahead_stay_inside_the_bytes_bound(s3env, s3_bucket, monkeypatch, bound_in_shards, bulk):
    """Shards are built a few ahead on the encoders only while the bound on bytes in flight
    holds them; big shards are built one at a time."""
    from volbridge.engine import parallel
    from volbridge.formats.zarr_sharding import ZarrSharding

    url = f"zarr3://s3://{s3_bucket}/bound-{bound_in_shards}"
    vol = vb.create(url, shape=(32, 64, 64), dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=(16, 16, 16))
    monkeypatch.setattr(parallel, "MAX_BYTES_IN_FLIGHT", bound_in_shards * 16**3)
    real, lock, now, most, where = ZarrSharding.pack, threading.Lock(), [0], [0], set()

    def pack(self, chunks):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            where.add(threading.current_thread().name.startswith("volbridge-encode"))
        time.sleep(0.02)
        try:
            return real(self, chunks)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(ZarrSharding, "pack", pack)
    data = np.random.default_rng(3).integers(0, 255, (32, 64, 64), dtype=np.uint8)
    vol[...] = data  # 32 shards, all whole
    monkeypatch.setattr(ZarrSharding, "pack", real)
    np.testing.assert_array_equal(vb.array(url)[...], data)
    assert where == {bulk}  # on the encoder threads, or in the writing thread
    assert (1 <= most[0] <= parallel.encoder_threads()) if bulk else most[0] == 1


def test_idle_handles_keep_no_value(s3env, s3_bucket):
    import sys

    s = open_store(f"s3://{s3_bucket}/put-refs")
    values = [bytes([i]) * 100_000 for i in range(40)]
    before = [sys.getrefcount(v) for v in values]
    s.put_each([f"k{i}" for i in range(40)], values)
    assert [sys.getrefcount(v) for v in values] == before  # 32 idle handles hold none of them
    assert s.get("k39") == values[39]
