"""The batched gather-and-compress of sharded writes (:mod:`volbridge.engine.batch_encode`)
against volbridge's chunk-by-chunk path (python-zstandard, the deflate package): the same bytes
for every chunk, chunks the library fails on left to that path, and shards written through it
equal to those written chunk by chunk and to the numpy model."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.compression import compress, decompress
from volbridge.engine import batch_encode, native, place
from volume_model import stored_files


@pytest.fixture(autouse=True)
def loaded():
    if not (batch_encode.load("zstd") and batch_encode.load("gzip") and place.load()):
        pytest.fail("llvmlite, python-zstandard and deflate are dependencies of volbridge: the batch loop must load here")


@st.composite
def _chunks(draw):
    """An (x, y, z, c) array and boxes of it (shape, low corner), some of them overlapping."""
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.uint64]))
    shape = tuple(draw(st.integers(1, 24)) for _ in range(3)) + (draw(st.integers(1, 3)),)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # half noise (barely compresses), half runs (compresses well): both sides of the bound
    values = rng.integers(0, draw(st.sampled_from([4, 1 << 16])), shape).astype(dtype)
    data = np.asfortranarray(values)
    boxes = []
    for _ in range(draw(st.integers(1, 12))):
        lo = [draw(st.integers(0, n - 1)) for n in shape[:3]]
        size = [draw(st.integers(1, n - a)) for a, n in zip(lo, shape[:3])]
        boxes.append(((*size, shape[3]), lo))
    return data, np.array([b[0] for b in boxes], np.int64), np.array([b[1] for b in boxes], np.int64)


def _voxel_bytes(data: np.ndarray, shape, lo) -> bytes:
    x, y, z = lo
    box = data[x:x + shape[0], y:y + shape[1], z:z + shape[2]]
    return box.astype(box.dtype.newbyteorder("<")).tobytes(order="F")


@pytest.mark.parametrize("codec,levels", [("zstd", [-131072, -3, 0, 1, 3, 9, 22]), ("gzip", [0, 1, 5, 9, 12])])
@settings(max_examples=60, deadline=None)
@given(chunks=_chunks(), level=st.integers(0, 6), parts=st.integers(1, 3))
def test_encodes_each_chunk_as_the_chunk_by_chunk_path(codec, levels, chunks, level, parts):
    data, shapes, lo = chunks
    level = levels[level % len(levels)]
    room = batch_encode.bounds(codec, level, shapes.prod(axis=1) * data.dtype.itemsize)
    dst = np.full(int(room.sum()) + 7, 0xEE, np.uint8)
    offsets, sizes, done = batch_encode.encode_gathered(codec, level, data, shapes, lo, dst, parts)
    assert done.all()
    for k in range(len(shapes)):
        stream = dst[offsets[k]:offsets[k] + sizes[k]].tobytes()
        expected = _voxel_bytes(data, shapes[k], lo[k])
        assert stream == compress(codec, expected, level)  # the same library and level: the same bytes
        assert decompress(codec, stream) == expected
    assert (dst[int(room.sum()):] == 0xEE).all()  # nothing written past the room


def test_chunks_the_library_fails_on_are_left_to_the_caller(monkeypatch):
    data = np.asfortranarray(np.random.default_rng(1).integers(0, 256, (64, 32, 32, 1), dtype=np.uint8))
    shapes = np.array([(16, 32, 32, 1)] * 4, np.int64)
    lo = np.array([(16 * i, 0, 0) for i in range(4)], np.int64)
    codec = batch_encode._codecs["zstd"]
    # Noise does not compress. A part's chunks share its room (the sum of their bounds): given a
    # quarter of their size as bounds, the chunks after the first run out of it.
    quarter = [False, True, True, True]
    monkeypatch.setattr(codec, "bound", lambda level, sizes: np.where(quarter, sizes // 4, sizes + 1024))
    dst = np.zeros(1 << 20, np.uint8)
    offsets, sizes, done = batch_encode.encode_gathered("zstd", 3, data, shapes, lo, dst, 1)
    assert done.tolist() == [True, False, False, False]  # stops at the first it cannot encode
    assert decompress("zstd", dst[offsets[0]:offsets[0] + sizes[0]].tobytes()) == _voxel_bytes(data, shapes[0], lo[0])
    quarter = [False, True, False, False]
    offsets, sizes, done = batch_encode.encode_gathered("zstd", 3, data, shapes, lo, dst, 2)
    assert done.tolist() == [True, False, True, True]  # the second part runs in its own room
    for k in (0, 2, 3):
        assert decompress("zstd", dst[offsets[k]:offsets[k] + sizes[k]].tobytes()) == _voxel_bytes(data, shapes[k], lo[k])


def test_too_little_room_or_an_overlapping_destination_is_refused():
    data = np.asfortranarray(np.zeros((64, 32, 32, 1), np.uint8))
    shapes, lo = np.array([(16, 32, 32, 1)], np.int64), np.zeros((1, 3), np.int64)
    with pytest.raises(ValueError, match="room"):
        batch_encode.encode_gathered("zstd", 3, data, shapes, lo, np.zeros(1000, np.uint8))
    with pytest.raises(ValueError, match="overlaps"):
        batch_encode.encode_gathered("zstd", 3, data, shapes, lo, data.reshape(-1, order="F"))
    with pytest.raises(ValueError, match="outside"):
        batch_encode.encode_gathered("zstd", 3, data, shapes, np.array([(60, 0, 0)]), np.zeros(1 << 20, np.uint8))
    read_only = np.zeros(1 << 20, np.uint8)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        batch_encode.encode_gathered("zstd", 3, data, shapes, lo, read_only)


def test_data_not_laid_out_for_the_loop_is_left_to_the_caller():
    data = np.zeros((8, 8, 8, 1), np.uint16)  # C order
    shapes, lo = np.array([(8, 8, 8, 1)], np.int64), np.zeros((1, 3), np.int64)
    assert batch_encode.encode_gathered("zstd", 3, data, shapes, lo, np.zeros(1 << 16, np.uint8)) is None
    big_endian = np.asfortranarray(data.astype(">u2"))
    assert batch_encode.encode_gathered("zstd", 3, big_endian, shapes, lo, np.zeros(1 << 16, np.uint8)) is None


def _spy(monkeypatch) -> list:
    """What each batched encoding of a write returned: (offsets, sizes, done), or None when the
    array was not laid out for the loop."""
    results = []
    encode = batch_encode.encode_gathered

    def spy(*args, **kw):
        results.append(encode(*args, **kw))
        return results[-1]

    monkeypatch.setattr(batch_encode, "encode_gathered", spy)
    return results


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_sharded_writes_store_the_bytes_of_chunk_by_chunk_writes(tmp_path, monkeypatch, compression):
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 30, (70, 90, 100), dtype=np.uint16)  # edge shards and chunks of every size
    region = (slice(3, 61), slice(10, 77), slice(0, 99))
    results = _spy(monkeypatch)

    def write(name: str) -> vb.VolumeArray:
        arr = vb.create(f"zarr3://{tmp_path / name}", shape=volume.shape, dtype="uint16", chunk_shape=(16, 16, 16),
                        shard_shape=(32, 32, 64), compression=compression)
        arr[...] = volume
        # partly covered shards: read, merged, written again; from an array laid out for the
        # loop, then from a strided view (left to the chunk-by-chunk path)
        arr[region] = np.ascontiguousarray(volume[region][::-1])
        arr[region] = (volume[region] + 1).repeat(2, axis=2)[..., ::2]
        return arr

    batched = write("batched")
    encoded = [r for r in results if r is not None]
    assert encoded and all(done.all() for _, _, done in encoded), "the sharded write did not go through the batched encoder"
    assert None in results  # the strided view's shards
    monkeypatch.setattr(batch_encode, "codec_of", lambda layout: None)
    results.clear()
    write("by-chunk")
    assert not results
    model = volume.copy()
    model[region] = volume[region] + 1
    np.testing.assert_array_equal(batched[...], model)
    assert stored_files(tmp_path / "batched") == stored_files(tmp_path / "by-chunk")


def test_a_write_the_library_fails_on_part_way_is_completed_by_the_checked_path(tmp_path, monkeypatch):
    volume = np.random.default_rng(3).integers(0, 1 << 16, (64, 64, 64), dtype=np.uint16)
    codec = batch_encode._codecs["zstd"]
    # every part runs out of room part-way (noise: its chunks do not compress)
    monkeypatch.setattr(codec, "bound", lambda level, sizes: np.where(np.arange(len(sizes)) % 3 == 2, 0, sizes) + 64)
    arr = vb.create(f"zarr3://{tmp_path / 'v'}", shape=volume.shape, dtype="uint16", chunk_shape=(16,) * 3,
                    shard_shape=(32,) * 3, compression="zstd")
    results = _spy(monkeypatch)
    arr[...] = volume
    assert results and all(r is not None and 0 < r[2].sum() < len(r[2]) for r in results)  # each stopped part-way
    np.testing.assert_array_equal(arr[...], volume)
    np.testing.assert_array_equal(vb.array(f"zarr3://{tmp_path / 'v'}")[...], volume)


def test_without_the_library_sharded_writes_encode_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_encode, "_codecs", {"zstd": False})

    def never(*args, **kw):
        raise AssertionError("batched encoding without its library")

    monkeypatch.setattr(batch_encode, "encode_gathered", never)
    volume = np.arange(48 ** 3, dtype=np.uint32).reshape((48,) * 3)
    arr = vb.create(f"zarr3://{tmp_path / 'v'}", shape=volume.shape, dtype="uint32", chunk_shape=(16,) * 3,
                    shard_shape=(32,) * 3, compression="zstd")
    arr[...] = volume
    np.testing.assert_array_equal(arr[...], volume)


def _forked_exit_code(child) -> int:
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a wait forever ends the child by SIGALRM
        try:
            child()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_while_a_codec_loads_does_not_wait_for_the_load():
    lock = native.LoadLock()
    loading, forked = threading.Event(), threading.Event()

    def load():  # another thread holds the lock, as one loading a codec does
        with lock:
            loading.set()
            forked.wait(10)

    loader = threading.Thread(target=load)
    loader.start()
    assert loading.wait(10)
    try:
        code = _forked_exit_code(lambda: lock.__enter__())  # the holder does not exist in the child
    finally:
        forked.set()
        loader.join()
    assert code == 0
    assert not lock.locked()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_by_the_loading_thread_ends_its_load():
    lock = native.LoadLock()
    with lock:  # a fork inside a load: the child's one thread is the holder and leaves the block
        code = _forked_exit_code(lambda: lock.__exit__(None, None, None) or lock.__enter__())
    assert code == 0
    assert not lock.locked()


@pytest.mark.parametrize("compression,level", [("zstd", 23), ("zstd", 2**31 + 3), ("gzip", 13), ("gzip", -1)])
def test_levels_the_chunk_by_chunk_path_refuses_are_left_to_it(compression, level):
    class Layout:
        stored_compression, stored_compression_level = compression, level

    assert batch_encode.codec_of(Layout) is None


def test_levels_it_takes_are_those_of_the_chunk_by_chunk_path():
    class Layout:
        stored_compression, stored_compression_level = "zstd", None

    assert batch_encode.codec_of(Layout) == ("zstd", 3)  # volbridge.compression.compress's default
    Layout.stored_compression, Layout.stored_compression_level = "gzip", None
    assert batch_encode.codec_of(Layout) is None  # gzip_default picks between two encoders
    Layout.stored_compression_level = 0
    assert batch_encode.codec_of(Layout) == ("gzip", 0)
