"""The batched decoding of sharded reads (:mod:`volbridge.engine.batch_decode`) against
volbridge's checked per-chunk path (python-zstandard's streaming decoder, the deflate package),
on every shape of stream a writer may leave: zstd frames with or without their size, several
frames or gzip members, skippable frames, cut, damaged, trailing bytes, of another size than the
slot; and a damaged chunk in a shard must be named."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.compression import decompress
from volbridge.engine import batch_decode, native, place
from volbridge.errors import ChunkDecodeError


@pytest.fixture(autouse=True)
def loaded():
    if not (batch_decode.load("zstd") and batch_decode.load("gzip")):
        pytest.fail("numba, python-zstandard and deflate are dependencies of volbridge: the batch loop must load here")


def _zstd(kind: str, payload: bytes, level: int) -> bytes:
    c = zstandard.ZstdCompressor(level=level)
    if kind == "unsized":  # streamed frames do not say their content size
        obj = c.compressobj()
        return obj.compress(payload) + obj.flush()
    if kind == "two parts":
        half = len(payload) // 2
        return c.compress(payload[:half]) + c.compress(payload[half:])
    if kind == "skippable":  # pzstd starts with one
        return b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd" + c.compress(payload)
    return c.compress(payload)


def _gzip(kind: str, payload: bytes, level: int) -> bytes:
    if kind == "two parts":  # two gzip members
        half = len(payload) // 2
        return gzip.compress(payload[:half], min(level, 9)) + gzip.compress(payload[half:], min(level, 9))
    return gzip.compress(payload, min(level, 9))


def _stream(codec: str, kind: str, payload: bytes, level: int) -> bytes:
    if kind == "not compressed":
        return payload
    whole = (_zstd if codec == "zstd" else _gzip)(kind if kind in ("unsized", "two parts", "skippable") else "plain",
                                                 payload, level)
    if kind == "cut":
        return whole[:-3]
    if kind == "damaged":
        s = bytearray(whole)
        s[len(s) // 2] ^= 0x5A
        return bytes(s)
    if kind == "trailing bytes":
        return whole + b"\x01\x02\x03"
    if kind == "trailing zeros":
        return whole + bytes(4)
    if kind == "one more part":  # the first part alone fills the slot exactly (found by a review)
        return whole + (_zstd if codec == "zstd" else _gzip)("plain", b"more" * 25, level)
    return whole


@st.composite
def chunks(draw, codec: str):
    out = []
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.sampled_from([0, 1, 100, 4096, 40000]))
        payload = np.random.default_rng(draw(st.integers(0, 99))).integers(0, draw(st.sampled_from([2, 256])), n,
                                                                            dtype=np.uint8).tobytes()
        kind = draw(st.sampled_from(["plain", "plain", "plain", "unsized", "two parts", "skippable", "cut", "damaged",
                                     "trailing bytes", "trailing zeros", "one more part", "not compressed"]))
        slack = draw(st.sampled_from([0, 0, 0, -1, 1]))  # the slot can be smaller or larger than the content
        out.append((_stream(codec, kind, payload, draw(st.sampled_from([1, 3, 19]))), max(0, n + slack),
                    kind == "plain" and slack == 0))
    return out


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), gap=st.integers(0, 7), many=st.booleans())
def test_decodes_like_the_checked_path_up_to_the_first_chunk_it_cannot(codec, data, gap, many):
    """From one buffer, or (``many``) each stream from a buffer of its own (a group of shards)."""
    case = data.draw(chunks(codec))
    streams = [s for s, _, _ in case]
    caps = np.array([c for _, c, _ in case], np.int64)
    sizes = np.array([len(s) for s in streams], np.int64)
    starts = np.cumsum(sizes + gap) - sizes  # bytes of other chunks between streams
    src = np.frombuffer(b"".join(b"\xee" * gap + s for s in streams), np.uint8)
    which = None
    if many:  # in reverse order of buffers
        src = native.Sources([np.frombuffer(b"\xee" * gap + s, np.uint8) for s in streams[::-1]])
        which, starts = np.arange(len(streams))[::-1].copy(), np.full(len(streams), gap, np.int64)
    offsets = np.cumsum(caps + gap) - caps
    dst = np.full(int(caps.sum()) + gap * len(caps), 0x77, np.uint8)
    done = batch_decode.decode_into(codec, src, starts, sizes, dst, offsets, caps, which=which)

    expected = []  # what the checked path makes of each chunk: its bytes, or None when it fails
    for s, cap in zip(streams, caps.tolist()):
        try:
            out = decompress(codec, s)
        except ChunkDecodeError:
            out = None
        expected.append(out if out is not None and len(out) == cap else None)
    # The batch never accepts what the checked path refuses, and stops at the latest at the
    # first stream that is not one plain stream of exactly its slot's size; it may stop earlier
    # (the checked path then decides: deflate accepts some cut gzip trailers libdeflate refuses).
    first_bad = next((k for k, e in enumerate(expected) if e is None), len(expected))
    first_unusual = next((k for k, (_, _, plain) in enumerate(case) if not plain), len(case))
    assert min(first_bad, first_unusual) <= done <= first_bad
    for k in range(done):
        assert dst[offsets[k]:offsets[k] + caps[k]].tobytes() == expected[k]


def test_spans_outside_the_buffers_are_refused():
    src, dst = np.zeros(10, np.uint8), np.zeros(10, np.uint8)
    one, big = np.array([0]), np.array([2**62])
    for args in ((np.array([5]), np.array([6]), one, np.array([4])), (one, np.array([4]), np.array([8]), np.array([3])),
                 (np.array([-1]), np.array([4]), one, np.array([4])), (one, np.array([4]), one, np.array([-2])),
                 # sums that wrap around int64 (found by a review: they passed the check and crashed)
                 (big, big, one, np.array([4])), (one, np.array([4]), np.array([1]), np.array([2**63 - 1]))):
        starts, sizes, offsets, caps = args
        with pytest.raises(ValueError, match="outside"):
            batch_decode.decode_into("zstd", src, starts, sizes, dst, offsets, caps)


def test_contexts_are_per_thread():
    import threading

    payload = bytes(range(256)) * 64
    stream = np.frombuffer(zstandard.ZstdCompressor().compress(payload), np.uint8)
    results, ctxs = [], []
    all_alive = threading.Barrier(4)  # a finished thread frees its context, whose address may be reused

    def work():
        dst = np.zeros(len(payload), np.uint8)
        for _ in range(50):
            results.append(batch_decode.decode_into("zstd", stream, [0], [len(stream)], dst, [0], [len(payload)]) == 1
                           and dst.tobytes() == payload)
        ctxs.append(batch_decode._local.contexts[batch_decode._codecs["zstd"].fn].ptr)
        all_alive.wait(timeout=30)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results) and len(results) == 200 and len(set(ctxs)) == 4


def _one_shard(tmp_path, fmt: str, compression: str):
    """A 32^3 volume of 8^3 chunks in one shard, written: (volume, data, shard key, its bytes,
    and its chunks' (ids, starts, sizes)), with the compiled loops loaded."""
    if not place.load():
        pytest.fail("the copy loop must load here")
    v = vb.create(f"{fmt}://{tmp_path}/v", shape=(32, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(32, 32, 32), compression=compression)
    written = np.random.default_rng(0).integers(0, 9, (32, 32, 32), dtype=np.uint8)
    v[...] = written
    np.testing.assert_array_equal(vb.array(f"{fmt}://{tmp_path}/v")[...], written)
    (key,) = list(v.volume.store.list("c" if fmt == "zarr3" else "1_1_1"))
    data = bytearray(v.volume.store.get(key))
    return v, written, key, data, v.volume.dataset.layout(0).sharding.chunk_spans(bytes(data), key)


@pytest.mark.parametrize("whole", [True, False], ids=["whole-shard", "ranged"])
def test_a_damaged_chunk_in_a_shard_is_named(tmp_path, whole):
    """The batch stops at the damaged chunk; the checked path then names it and its shard."""
    v, written, key, data, (cids, starts, _) = _one_shard(tmp_path, "zarr3", "zstd")
    k = int(np.flatnonzero(cids == 5)[0])
    data[int(starts[k]):int(starts[k]) + 4] = b"\0\0\0\0"  # no zstd magic number any more
    v.volume.store.put(key, bytes(data))
    # ids run x fastest over the shard's 4x4x4 chunks: chunk 5 is z 0-8, y 8-16, x 8-16
    box = (slice(None),) * 3 if whole else (slice(0, 8), slice(8, 16), slice(0, 32))
    with pytest.raises(ChunkDecodeError, match=rf"chunk 5 of shard {key!r}"):
        vb.array(f"zarr3://{tmp_path}/v")[box]
    ok = vb.array(f"zarr3://{tmp_path}/v")[8:16, 8:16, :]  # chunks of the shard that are intact
    np.testing.assert_array_equal(ok, written[8:16, 8:16, :])


def test_a_damaged_gzip_chunk_in_a_precomputed_shard_is_named(tmp_path):
    """Precomputed shards with ``data_encoding: gzip``: the batch stops, the shard's own decoding
    names the chunk."""
    v, _, key, data, (cids, starts, sizes) = _one_shard(tmp_path, "precomputed", "gzip")
    data[int(starts[7]) + int(sizes[7]) - 8] ^= 0xFF  # the gzip trailer's CRC no longer matches
    v.volume.store.put(key, bytes(data))
    with pytest.raises(ChunkDecodeError, match=rf"shard {key!r}: chunk {int(cids[7])}"):
        vb.array(f"precomputed://{tmp_path}/v")[...]


@pytest.mark.parametrize("fmt,compression", [("zarr3", "zstd"), ("precomputed", "gzip")])
def test_without_the_library_reads_decode_chunk_by_chunk(tmp_path, monkeypatch, fmt, compression):
    monkeypatch.setattr(batch_decode, "_codecs", {})
    monkeypatch.setattr(batch_decode, "_library", lambda name: None)
    assert batch_decode.load(compression) is False
    place.load()
    v = vb.create(f"{fmt}://{tmp_path}/v", shape=(16, 16, 16), dtype="uint16", chunk_shape=(4, 4, 4),
                  shard_shape=(8, 8, 8), compression=compression)
    data = np.arange(16 ** 3, dtype=np.uint16).reshape(16, 16, 16)
    v[...] = data
    np.testing.assert_array_equal(vb.array(f"{fmt}://{tmp_path}/v")[...], data)
    np.testing.assert_array_equal(vb.array(f"{fmt}://{tmp_path}/v")[3:5, 1:13, 2:3], data[3:5, 1:13, 2:3])


def test_zstd_batches_use_the_system_libzstd_where_it_has_the_assembly_decoder():
    """x86-64 libzstd from 1.5.2 decodes Huffman literals in assembly that python-zstandard's pip
    builds leave out (4-9 % less CPU, measured): batches use it there, the bundled build elsewhere."""
    import ctypes
    import platform

    try:
        system = ctypes.CDLL("libzstd.so.1")
        system.ZSTD_versionNumber.restype = ctypes.c_uint
        version, system_fn = system.ZSTD_versionNumber(), ctypes.cast(system.ZSTD_decompressDCtx, ctypes.c_void_p).value
    except OSError:
        version, system_fn = 0, None
    wanted = platform.machine().lower() in ("x86_64", "amd64") and version >= batch_decode.ZSTD_ASM_VERSION
    assert (batch_decode._codecs["zstd"].fn == system_fn) == wanted
