"""Whole-object GETs over libcurl (kv.curl_get): the same values, absences, errors and counters as
obstore's GETs, against SeaweedFS and a local HTTP server; the signature against botocore's."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import volbridge as vb
from volbridge.errors import ChunkDecodeError, StoreError
from volbridge.kv import open_store
from volbridge.kv.cloud import open_object_store
from volbridge.kv.curl_get import S3Signer
from volbridge.kv.retry import RetryPolicy


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
