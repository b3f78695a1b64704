"""Bad input raises a clear error that names the problem, and loses no data.

Never zeros for a failure: corrupt, truncated or unreadable chunks raise with the key named.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import volbridge as vb
from volbridge.errors import (
    BoundsError,
    ChunkDecodeError,
    DTypeError,
    MetadataError,
    ReadOnlyError,
    ShapeError,
    StoreError,
    UnsupportedError,
    URLError,
)


def make(tmp_path, **kw):
    args = dict(shape=(8, 16, 16), chunk_shape=(4, 8, 8), dtype="uint8")
    args.update(kw)
    vol = vb.create(f"precomputed://{tmp_path}/v", **args)
    data = (np.arange(np.prod(args["shape"])) % 251 + 1).astype(args["dtype"]).reshape(args["shape"])
    vol[...] = data
    return vol, data


def chunk_file(tmp_path, name="0-8_0-8_0-4"):
    return tmp_path / "v" / "1_1_1" / name


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if ".volbridge-locks" not in p:
                out[p] = open(p, "rb").read()
    return out


# -- corrupt stored data --------------------------------------------------------------------------
def test_truncated_raw_chunk_names_key(tmp_path):
    make(tmp_path)
    f = chunk_file(tmp_path)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ChunkDecodeError, match=r"0-8_0-8_0-4.*246 bytes, expected 256"):
        vb.array(f"{tmp_path}/v")[...]


def test_corrupt_gzip_chunk_names_key(tmp_path):
    make(tmp_path, compression="gzip")
    f = chunk_file(tmp_path, "0-8_0-8_0-4.gz")
    data = bytearray(f.read_bytes())
    data[12:40] = b"\xff" * 28
    f.write_bytes(bytes(data))
    with pytest.raises(ChunkDecodeError, match=r"0-8_0-8_0-4\.gz"):
        vb.array(f"{tmp_path}/v")[...]


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "offsets_past_end"])
def test_corrupt_compressed_segmentation_raises_not_crashes(tmp_path, damage):
    make(tmp_path, dtype="uint32", encoding="compressed_segmentation")
    f = chunk_file(tmp_path)
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage_header":
        data[4:40] = b"\xff" * 36
    else:
        data[4:8] = (0x00FFFFFF | (4 << 24)).to_bytes(4, "little")
    f.write_bytes(bytes(data))
    with pytest.raises(ChunkDecodeError, match="0-8_0-8_0-4"):
        vb.array(f"{tmp_path}/v")[...]


def test_corrupt_png_and_jpeg(tmp_path):
    for enc in ("png", "jpeg"):
        d = tmp_path / enc
        d.mkdir()
        make(d, encoding=enc)
        f = chunk_file(d)
        f.write_bytes(f.read_bytes()[:20])
        with pytest.raises(ChunkDecodeError, match="0-8_0-8_0-4"):
            vb.array(f"{d}/v")[...]


def test_unreadable_chunk_is_an_error_not_zeros(tmp_path):
    make(tmp_path)
    f = chunk_file(tmp_path)
    f.unlink()
    f.symlink_to(f.name)  # a link to itself: opening it fails with ELOOP
    with pytest.raises(StoreError, match="0-8_0-8_0-4"):
        vb.array(f"{tmp_path}/v")[...]


def test_absent_chunk_reads_as_fill(tmp_path):
    _, data = make(tmp_path)
    chunk_file(tmp_path).unlink()
    got = vb.array(f"{tmp_path}/v")[...]
    assert (got[0:4, 0:8, 0:8] == 0).all()
    np.testing.assert_array_equal(got[4:], data[4:])


def test_partial_write_onto_corrupt_chunk_leaves_it_untouched(tmp_path):
    vol, _ = make(tmp_path)
    f = chunk_file(tmp_path)
    f.write_bytes(b"garbage")
    with pytest.raises(ChunkDecodeError, match="corrupt"):
        vol[0:2, 0:2, 0:2] = np.ones((2, 2, 2), np.uint8)
    assert f.read_bytes() == b"garbage"


# -- malformed metadata ---------------------------------------------------------------------------
def write_info(tmp_path, info):
    d = tmp_path / "v"
    d.mkdir(exist_ok=True)
    (d / "info").write_text(info if isinstance(info, str) else json.dumps(info))
    return str(d)


GOOD = {
    "type": "image", "data_type": "uint8", "num_channels": 1,
    "scales": [{"key": "a", "size": [4, 4, 4], "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
                "chunk_sizes": [[4, 4, 4]], "encoding": "raw"}],
}


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda i: "{not json", "not valid JSON"),
        (lambda i: [], "expected a JSON object"),
        (lambda i: {**i, "type": "mesh"}, "'type' must be 'image' or 'segmentation'"),
        (lambda i: {**i, "data_type": "complex64"}, "'data_type' 'complex64'"),
        (lambda i: {**i, "num_channels": 0}, "num_channels"),
        (lambda i: {**i, "scales": []}, "'scales' must be a non-empty list"),
        (lambda i: {**i, "scales": [{**i["scales"][0], "size": [4, 4]}]}, "'size' must be 3 integers"),
        (lambda i: {**i, "scales": [{**i["scales"][0], "size": [4, 0, 4]}]}, "'size' must be positive"),
        (lambda i: {**i, "scales": [{**i["scales"][0], "voxel_offset": [0.5, 0, 0]}]}, "'voxel_offset' must be 3 integers"),
        (lambda i: {**i, "scales": [{**i["scales"][0], "encoding": "webp"}]}, "unknown encoding 'webp'"),
        (lambda i: {**i, "scales": [{k: v for k, v in i["scales"][0].items() if k != "chunk_sizes"}]}, "chunk_sizes"),
        (lambda i: {**i, "data_type": "uint32", "scales": [{**i["scales"][0], "encoding": "compressed_segmentation"}]},
         "compressed_segmentation_block_size"),
        # two scales in one set of chunk files: writing one would overwrite the other
        (lambda i: {**i, "scales": [i["scales"][0], {**i["scales"][0], "key": "a/"}]}, "already the key of another scale"),
    ],
)
def test_malformed_info(tmp_path, mutate, message):
    path = write_info(tmp_path, mutate(GOOD))
    with pytest.raises(MetadataError, match=message):
        vb.array(path)


def test_unsupported_encoding_and_sharding_are_clear(tmp_path):
    path = write_info(tmp_path, {**GOOD, "scales": [{**GOOD["scales"][0], "encoding": "compresso"}]})
    with pytest.raises(UnsupportedError, match="compresso"):
        vb.array(path)[...]
    sharded = {**GOOD["scales"][0], "sharding": {"@type": "neuroglancer_uint64_sharded_v1"}}
    path = write_info(tmp_path, {**GOOD, "scales": [sharded]})
    with pytest.raises(MetadataError, match="preshift_bits"):  # an incomplete sharding spec
        vb.array(path)[...]


# -- writes that must be refused before any byte is written ---------------------------------------
@pytest.mark.parametrize(
    "index,value,error,message",
    [
        ((slice(0, 4), slice(0, 8), slice(0, 8)), np.ones((4, 8, 8), np.uint16), DTypeError, "uint16"),
        ((slice(0, 4), slice(0, 8), slice(0, 8)), np.ones((4, 8, 9), np.uint8), ShapeError, r"\(4, 8, 9\)"),
        ((slice(0, 4), slice(0, 8), slice(10, 20)), np.ones((4, 8, 10), np.uint8), BoundsError, "outside the bounds"),
        ((slice(-1, 4), slice(0, 8), slice(0, 8)), np.ones((5, 8, 8), np.uint8), BoundsError, "outside the bounds"),
        ((slice(0, 4), slice(0, 8), slice(0, 8)), 300, DTypeError, "not representable"),
        ((slice(0, 4), slice(0, 8), slice(0, 8)), 1.5, DTypeError, "not representable"),
        ((slice(0, 4), slice(0, 8), slice(0, 8)), [[1]], DTypeError, "numpy array"),
    ],
)
def test_refused_writes_write_nothing(tmp_path, index, value, error, message):
    vol, _ = make(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message):
        vol[index] = value
    assert snapshot(tmp_path) == before


def test_read_only_handle(tmp_path):
    make(tmp_path)
    ro = vb.array(f"{tmp_path}/v")
    with pytest.raises(ReadOnlyError, match="mode='r\\+'"):
        ro[0:1, 0:1, 0:1] = np.zeros((1, 1, 1), np.uint8)


def test_create_refuses_to_clobber(tmp_path):
    make(tmp_path)
    with pytest.raises(MetadataError, match="already exists"):
        vb.create(f"precomputed://{tmp_path}/v", shape=(1, 1, 1))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(encoding="jpeg", dtype="uint16"), "jpeg"),
        (dict(encoding="compressed_segmentation", dtype="uint8"), "uint32 or uint64"),
        (dict(layer_type="segmentation", num_channels=2, dtype="uint32"), "exactly 1 channel"),
        (dict(compression="lz77"), "compression 'lz77'"),
        (dict(encoding="png", compression="gzip"), "raw and compressed_segmentation"),
        (dict(dtype="complex64"), "cannot store complex64"),
        (dict(chunk_shape=(0, 8, 8)), "positive"),
        (dict(num_scales=2, factor=(1, 1, 1)), "every scale the same resolution"),
        (dict(num_scales=2, factor=(2, 2)), "factor must have 3 entries"),
        (dict(num_scales=2, factor=(2, 1.5, 1)), "3 integers >= 1"),
    ],
)
def test_create_validation(tmp_path, kw, message):
    args = dict(shape=(8, 16, 16), chunk_shape=(4, 8, 8), dtype="uint8")
    args.update(kw)
    with pytest.raises(vb.VolbridgeError, match=message):
        vb.create(f"precomputed://{tmp_path}/v", **args)
    assert not (tmp_path / "v" / "info").exists()


# -- settings from the environment ---------------------------------------------------------------
@pytest.mark.parametrize("name,value,expected", [
    ("VOLBRIDGE_TIMEOUT", "abc", "a number greater than 0"), ("VOLBRIDGE_TIMEOUT", "0", "a number greater than 0"),
    ("VOLBRIDGE_TIMEOUT", "-1", "a number greater than 0"), ("VOLBRIDGE_TIMEOUT", "inf", "a number"),
    ("VOLBRIDGE_MAX_ATTEMPTS", "0", "a whole number of at least 1"), ("VOLBRIDGE_MAX_ATTEMPTS", "2.5", "a whole number"),
    ("VOLBRIDGE_THREADS", "abc", "a whole number of at least 1"), ("VOLBRIDGE_IO_CONCURRENCY", "0", "a whole number of at least 1"),
])
def test_bad_settings_in_the_environment_name_their_variable(monkeypatch, name, value, expected):
    """(review) A bare ValueError from int() or from obstore's duration, or, for a timeout of 0,
    GETs failing after every attempt on obstore while libcurl took it as no timeout at all."""
    from volbridge.engine.parallel import default_threads
    from volbridge.kv import open_store
    from volbridge.kv.retry import RetryPolicy

    monkeypatch.setenv(name, value)
    with pytest.raises(vb.errors.InvalidArgumentError, match=f"{name}='{value}': expected {expected}"):
        RetryPolicy()
        default_threads()
        open_store("http://127.0.0.1:9/vol")


def test_bad_retry_policies_are_refused():
    from volbridge.kv.retry import RetryPolicy

    for kw in ({"max_attempts": 0}, {"max_attempts": 2.5}, {"timeout": 0}, {"connect_timeout": -1}):
        with pytest.raises(vb.errors.InvalidArgumentError, match=f"{next(iter(kw))}="):
            RetryPolicy(**kw)
    assert RetryPolicy(max_attempts=1, timeout=0.5).timeout == 0.5


# -- URLs and indices -----------------------------------------------------------------------------
def test_bad_urls(tmp_path):
    with pytest.raises(URLError, match="no volume found"):
        vb.array(str(tmp_path))
    import zarr  # (review) a zarr group: 'none of ... zarr.json ... is there' of the zarr.json just read

    for version, says in ((3, "its zarr.json describes a zarr group"), (2, "its .zattrs and .zgroup describe a zarr group")):
        zarr.open_group(str(tmp_path / f"g{version}.zarr"), mode="w", zarr_format=version).create_array("raw", shape=(2, 2, 2), dtype="u1")
        with pytest.raises(URLError, match=f"{says}, not an array.*g{version}.zarr/<name>"):
            vb.array(str(tmp_path / f"g{version}.zarr"))
        assert vb.array(str(tmp_path / f"g{version}.zarr" / "raw")).shape == (2, 2, 2)
    with pytest.raises(URLError, match="unsupported storage scheme 'ftp'"):
        vb.array("ftp://host/x")
    with pytest.raises(URLError, match="names no location"):
        vb.array("precomputed://")
    with pytest.raises(MetadataError, match="no precomputed 'info'"):
        vb.array(f"precomputed://{tmp_path}/nothing-here")


def test_bad_indices(tmp_path):
    vol, _ = make(tmp_path)
    with pytest.raises(IndexError, match="too many indices"):
        vol[0, 0, 0, 0]
    with pytest.raises(IndexError, match="step"):
        vol[::-1]
    with pytest.raises(IndexError, match="unsupported index"):
        vol[[1, 2]]
    with pytest.raises(IndexError, match="mip 7 does not exist"):
        vol.mip(7)


@pytest.mark.parametrize("scheme", ["zarr2", "zarr3"])
@pytest.mark.parametrize("kw", [dict(resolution=(40, 8, 8)), dict(layer_type="segmentation", dtype="uint32"), dict(num_scales=2)])
def test_plain_zarr_refuses_what_it_cannot_keep(tmp_path, scheme, kw):
    with pytest.raises(UnsupportedError, match="ome-zarr"):
        vb.create(f"{scheme}://{tmp_path}/z", shape=(4, 4, 4), chunk_shape=(2, 2, 2), **kw)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("fmt", ["precomputed", "zarr3", "zarr2", "n5"])
def test_absurd_chunk_sizes_are_named_before_any_allocation(tmp_path, fmt, monkeypatch):
    """Metadata whose chunks cannot fit in memory (damaged, hostile): a MetadataError naming the
    chunk shape at the first read or write, not a MemoryError or a buffer size failing far inside;
    the volume still opens (its metadata can be inspected) and nothing is written."""
    url = f"{fmt}://{tmp_path}/v"
    vb.create(url, shape=(8, 16, 16), chunk_shape=(4, 8, 8), dtype="uint16")
    monkeypatch.setenv("VOLBRIDGE_MAX_CHUNK_BYTES", str(4 * 8 * 8 * 2 - 1))  # one byte under this volume's chunk
    before = snapshot(tmp_path)
    a = vb.array(url, mode="r+")
    assert a.shape == (8, 16, 16)
    for act in (lambda: a[0:1, 0:1, 0:1], lambda: a.__setitem__((slice(0, 4), slice(0, 8), slice(0, 8)), 7)):
        with pytest.raises(MetadataError, match=r"8 x 8 x 4 voxels \(x, y, z\) x 1 channel\(s\) of uint16.*VOLBRIDGE_MAX_CHUNK_BYTES"):
            act()
    assert snapshot(tmp_path) == before
    monkeypatch.setenv("VOLBRIDGE_MAX_CHUNK_BYTES", str(4 * 8 * 8 * 2))  # exactly one chunk: allowed
    a[0:4, 0:8, 0:8] = 7
    assert (a[0:4, 0:8, 0:8] == 7).all()


def test_terabyte_chunks_in_an_info_file(tmp_path):
    """The default limit: an info file naming 4e6 x 4e6 x 1000 chunks in a 1e5^3 scale (its chunk file present)."""
    info = {"type": "image", "data_type": "uint8", "num_channels": 1, "scales": [{
        "key": "s0", "size": [10**5] * 3, "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
        "chunk_sizes": [[4 * 10**6, 4 * 10**6, 1000]], "encoding": "raw"}]}
    (tmp_path / "v" / "s0").mkdir(parents=True)
    (tmp_path / "v" / "info").write_text(json.dumps(info))
    (tmp_path / "v" / "s0" / "0-100000_0-100000_0-1000").write_bytes(b"x" * 100)
    a = vb.array(f"precomputed://{tmp_path}/v")
    with pytest.raises(MetadataError, match=r"100000 x 100000 x 1000 voxels.*GiB each decoded.*over 2 GiB"):  # clipped to the scale
        a[0:2, 0:2, 0:2]


def test_the_chunk_bound_counts_what_a_chunk_holds(tmp_path, monkeypatch):
    """(review) The bound once counted every channel of arrays chunked one channel at a time
    (OME-Zarr's usual chunks), and precomputed chunk sizes beyond the scale's size, which are
    stored clipped: both valid volumes were refused."""
    import zarr

    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=(6, 8, 16, 16), chunks=(1, 4, 8, 8), dtype="uint16", zarr_format=3,
                          dimension_names=["c", "z", "y", "x"])
    z[...] = np.arange(z.size, dtype=np.uint16).reshape(z.shape)
    info = {"type": "image", "data_type": "uint8", "num_channels": 1, "scales": [{
        "key": "s0", "size": [10, 12, 14], "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
        "chunk_sizes": [[2048, 2048, 1024]], "encoding": "raw"}]}
    (tmp_path / "p" / "s0").mkdir(parents=True)
    (tmp_path / "p" / "info").write_text(json.dumps(info))
    data = (np.arange(10 * 12 * 14) % 251).astype(np.uint8).reshape(14, 12, 10)  # z, y, x
    (tmp_path / "p" / "s0" / "0-10_0-12_0-14").write_bytes(data.tobytes())  # x fastest
    cases = [(f"zarr3://{tmp_path / 'c.zarr'}", 4 * 8 * 8 * 2, np.asarray(z[...]), "1 channel"),
             (f"precomputed://{tmp_path / 'p'}", 10 * 12 * 14, data, "10 x 12 x 14 voxels")]
    for url, chunk_bytes, want, named in cases:
        monkeypatch.setenv("VOLBRIDGE_MAX_CHUNK_BYTES", str(chunk_bytes))
        got = np.asarray(vb.array(url)[...])
        assert np.array_equal(got.reshape(want.shape), want), url
        monkeypatch.setenv("VOLBRIDGE_MAX_CHUNK_BYTES", str(chunk_bytes - 1))
        with pytest.raises(MetadataError, match=named):
            vb.array(url)[...]


def test_a_chunk_bound_that_is_not_a_number_is_named(tmp_path, monkeypatch):
    a, _ = make(tmp_path)
    monkeypatch.setenv("VOLBRIDGE_MAX_CHUNK_BYTES", "4GiB")
    with pytest.raises(vb.errors.InvalidArgumentError, match="VOLBRIDGE_MAX_CHUNK_BYTES=.4GiB.: expected a whole number"):
        a[0:1, 0:1, 0:1]


def test_a_fifo_at_a_key_is_refused_not_waited_on(tmp_path):
    """(review) A FIFO where a marker or chunk file should be blocked the open() forever (reading
    every marker at once made an ordinary open meet it). In a child process, so a hang fails the
    test instead of stopping the suite."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import os, numpy as np, volbridge as vb
        from volbridge.errors import StoreError
        p = {str(tmp_path / 'v')!r}
        a = vb.create("zarr3://" + p, shape=(8, 16, 16), dtype="uint8", chunk_shape=(8, 8, 8))
        a[...] = 5
        os.mkfifo(p + "/attributes.json")  # a marker of another format
        assert (vb.array(p)[...] == 5).all()
        os.remove(p + "/c/0/0/1")
        os.mkfifo(p + "/c/0/0/1")  # a chunk
        try:
            vb.array(p)[...]
        except StoreError as e:
            assert "not a regular file" in str(e), e
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["refused"], out.stderr


def test_downsample_of_an_ndarray_says_it_needs_a_volume():
    """(review) It failed with AttributeError: 'numpy.ndarray' object has no attribute 'volume'."""
    from volbridge.services import downsample

    with pytest.raises(vb.errors.InvalidArgumentError, match="give a URL or a writable VolumeArray, not ndarray"):
        downsample(np.zeros((4, 4, 4), np.uint8))
