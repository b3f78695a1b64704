"""The batched chunk placement (:mod:`volbridge.engine.place`): the compiled loop and its numpy
fallback each against a numpy model, and sharded reads through both against the written data.

Reads load the compiled loop only for big reads (``LOAD_AT_CHUNKS``), so the tests here choose
the path themselves: ``kernel`` loads it (and the batched decoding of sharded reads),
``kernel-no-batch-decode`` hides the latter, ``numpy`` hides both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.engine import batch_decode, native, place


def _choose(name: str, monkeypatch) -> str:
    if name.startswith("kernel"):
        if not (place.load() and batch_decode.load("zstd") and batch_decode.load("gzip")):
            pytest.fail("numba is a dependency of volbridge: the compiled loops must load here")
        if name == "kernel-no-batch-decode":  # no libzstd or libdeflate found: chunks decode one by one
            monkeypatch.setattr(batch_decode, "_codecs", {"zstd": False, "gzip": False})
    else:
        monkeypatch.setattr(place, "_kernel", False)
    return name


@pytest.fixture(params=["kernel", "numpy"])
def path(request, monkeypatch):
    return _choose(request.param, monkeypatch)


@pytest.fixture(params=["kernel", "kernel-no-batch-decode", "numpy"])
def read_path(request, monkeypatch):
    """Reads also run with the copy loop but without the batched decoding."""
    return _choose(request.param, monkeypatch)


@st.composite
def placements(draw):
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "float32", "uint64"])))
    nc = draw(st.integers(1, 3))
    out_shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    chunks = []
    for _ in range(draw(st.integers(1, 6))):
        stored = tuple(draw(st.integers(1, 9)) for _ in range(3)) + (nc + draw(st.integers(0, 1)),)
        size = [draw(st.integers(1, min(s, o))) for s, o in zip(stored[:3], out_shape)]
        src_lo = [draw(st.integers(0, s - n)) for s, n in zip(stored[:3], size)]
        dst_lo = [draw(st.integers(0, o - n)) for o, n in zip(out_shape, size)]
        chunks.append((stored, src_lo, dst_lo, size))
    gap = draw(st.integers(0, 5))  # bytes between chunks in the source buffer
    return dtype, nc, out_shape, chunks, gap


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the path is the same for every input
@given(case=placements(), seed=st.integers(0, 2**32 - 1), many=st.booleans(), loops=st.integers(1, 3))
def test_place_chunks_matches_numpy_model(path, case, seed, many, loops):
    """From one buffer, or (``many``) each chunk from its own (a group of shards' bytes, read
    by absolute address), in one native call or ``loops`` parts on as many loops."""
    dtype, nc, out_shape, chunks, gap = case
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 200, stored, dtype=np.uint8).astype(dtype) for stored, *_ in chunks]
    parts, offsets, pos = [], [], 0
    for a in arrays:
        raw = a.astype(dtype.newbyteorder("<")).tobytes(order="F")
        parts.append(b"\xee" * gap + raw)
        offsets.append(pos + gap)
        pos += gap + len(raw)
    src = np.frombuffer(b"".join(parts), np.uint8)
    out = np.full((*out_shape, nc), 7, dtype, order="F")
    model = out.copy(order="F")
    for a, (_, s, d, n) in zip(arrays, chunks):  # later chunks win where they overlap, as placed
        model[d[0]:d[0] + n[0], d[1]:d[1] + n[1], d[2]:d[2] + n[2]] = a[s[0]:s[0] + n[0], s[1]:s[1] + n[1], s[2]:s[2] + n[2], :nc]
    which = None
    if many:  # each chunk's bytes in a buffer of their own, in reverse order
        src = native.Sources([np.frombuffer(p, np.uint8) for p in parts[::-1]])
        which, offsets = np.arange(len(parts))[::-1], [gap] * len(parts)
    boxes = [(tuple(d), tuple(d + n for d, n in zip(d, n))) for _, _, d, n in chunks]
    overlap = any(all(a0 < b1 and b0 < a1 for a0, a1, b0, b1 in zip(*p, *q)) for i, p in enumerate(boxes) for q in boxes[:i])
    place.place_chunks(out, src, np.array(offsets), np.array([c[0] for c in chunks]), np.array([c[1] for c in chunks]),
                       np.array([c[2] for c in chunks]), np.array([c[3] for c in chunks]), which=which,
                       parts=1 if overlap else loops)  # parts run at once: only for apart destinations
    np.testing.assert_array_equal(out, model)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(["uint8", "uint16", "float64"]), nc=st.integers(1, 3), data=st.data())
def test_gather_chunks_matches_numpy_model(path, dtype, nc, data):
    """Whole chunks copied out of a (x, y, z, c) array into Fortran-ordered slots of one buffer."""
    shape = tuple(data.draw(st.integers(1, 10)) for _ in range(3))
    arr = np.asfortranarray(np.random.default_rng(0).integers(0, 1000, (*shape, nc)).astype(dtype))
    boxes = []
    for _ in range(data.draw(st.integers(1, 5))):
        size = [data.draw(st.integers(1, n)) for n in shape]
        boxes.append(([data.draw(st.integers(0, n - k)) for n, k in zip(shape, size)], size))
    sizes = [int(np.prod(size)) * nc * arr.dtype.itemsize for _, size in boxes]
    offsets = np.cumsum([0, *sizes[:-1]]) + 3  # slots need not start at 0
    buf = np.full(3 + sum(sizes) + 2, 0xEE, np.uint8)
    place.gather_chunks(arr, buf, offsets, np.array([[*size, nc] for _, size in boxes]), np.array([lo for lo, _ in boxes]))
    for (lo, size), o, n in zip(boxes, offsets, sizes):
        expect = arr[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]].astype(arr.dtype.newbyteorder("<"))
        assert buf[o:o + n].tobytes() == expect.tobytes(order="F")
    assert buf[:3].tolist() == [0xEE] * 3 and buf[-2:].tolist() == [0xEE] * 2


def test_staging_buffers_are_per_thread_reused_and_never_shared_while_held():
    import threading

    with place.staging(1000) as a:
        assert len(a) == 1000
        with place.staging(10) as nested:  # held: a nested use gets its own
            assert not np.shares_memory(a, nested)
        other = []
        t = threading.Thread(target=lambda: other.append(place.staging(1000).__enter__()))
        t.start()
        t.join()
        assert not np.shares_memory(a, other[0])
    with place.staging(5000) as again:  # released: reused
        assert np.shares_memory(a, again)
    big = place.KEEP_STAGING_BYTES + 1
    with place.staging(big) as b1:
        assert len(b1) == big
    with place.staging(big) as b2:
        assert not np.shares_memory(b1, b2)


def test_write_staged_bytes_survive_a_store_that_reads_inside_its_update(tmp_path, path):
    """Raw chunks of a sharded write are views of the thread's staging buffer until the shard is
    stored; a store whose update reads another volume on the same thread must not clobber them
    (found by a review: the written voxels came back as the other volume's)."""
    from volbridge.kv import open_store

    other = vb.create(f"zarr3://{tmp_path}/other", shape=(16, 16, 16), dtype="uint8", chunk_shape=(8, 8, 8),
                      shard_shape=(16, 16, 16), compression="zstd")
    other[...] = 0xAB
    store = open_store(f"file://{tmp_path}/target")
    real_update = store.update

    def update(key, fn, **kw):
        other[...]  # reads through staging on this thread
        return real_update(key, fn, **kw)

    store.update = update
    v = vb.create(f"zarr3://{tmp_path}/target", shape=(16, 16, 16), dtype="uint8", chunk_shape=(8, 8, 8),
                  shard_shape=(16, 16, 16))
    v.volume.store = store
    v[...] = 7
    assert (vb.array(f"zarr3://{tmp_path}/target")[...] == 7).all()


@pytest.mark.parametrize("shard_shape", [(32, 16, 16), None], ids=["sharded", "unsharded"])
@pytest.mark.parametrize("fmt,compression", [("zarr3", None), ("zarr3", "zstd"), ("precomputed", None), ("precomputed", "gzip")])
@pytest.mark.parametrize("dtype,channels", [("uint8", 1), ("uint16", 3), ("float32", 2)])
def test_reads_through_every_path(tmp_path, read_path, shard_shape, fmt, compression, dtype, channels):
    """Edge shards and edge chunks (zarr pads them, precomputed clips them), channels, an offset
    origin, absent chunks and shards (fill), unaligned cutouts, boxes reaching outside the bounds;
    chunks stored as plain voxels (placed straight from the shard) and compressed ones."""
    lo = (10, 3, -5) if fmt == "precomputed" else (0, 0, 0)  # z, y, x (zarr arrays start at 0)
    hi = tuple(a + n for a, n in zip(lo, (70, 45, 37)))
    v = vb.create(f"{fmt}://{tmp_path}/{fmt}-{dtype}", bounds=(lo, hi), dtype=dtype, chunk_shape=(16, 8, 8),
                  shard_shape=shard_shape, num_channels=channels, compression=compression)
    data = np.random.default_rng(1).integers(1, 250, (channels, *(b - a for a, b in zip(lo, hi)))).astype(dtype)
    model = np.zeros_like(data)
    model[:, :50] = data[:, :50]  # z from 60 on stays unwritten: absent chunks and shards
    box = (slice(lo[0], lo[0] + 50), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    if channels > 1:
        v[(slice(None), *box)] = data[:, :50]
    else:
        v[box] = data[0, :50]
    for a, b in [((0, 0, 0), (70, 45, 37)), ((3, 4, 3), (51, 37, 34)), ((-10, -3, -15), (90, 57, 45)), ((21, 14, 9), (23, 16, 11))]:
        start, stop = tuple(p + q for p, q in zip(a, lo)), tuple(p + q for p, q in zip(b, lo))
        sel = tuple(slice(a, b) for a, b in zip(start, stop))
        got = v[(slice(None), *sel)] if channels > 1 else v[sel][None]
        expect = np.zeros((channels, *(b - a for a, b in zip(start, stop))), dtype)
        inner = [(max(a, b), min(c, d)) for a, c, b, d in zip(start, stop, lo, hi)]
        expect[(slice(None), *(slice(p - a, q - a) for (p, q), a in zip(inner, start)))] = \
            model[(slice(None), *(slice(p - b, q - b) for (p, q), b in zip(inner, lo)))]
        np.testing.assert_array_equal(got, expect)


def test_placements_outside_the_buffers_are_refused(path):
    out = np.zeros((4, 4, 4, 1), np.uint8, order="F")
    src = np.zeros(64, np.uint8)
    ok = {"offsets": np.array([0]), "shapes": np.array([[4, 4, 4, 1]]), "src_lo": np.array([[0, 0, 0]]),
          "dst_lo": np.array([[0, 0, 0]]), "size": np.array([[4, 4, 4]])}
    place.place_chunks(out, src, **ok)
    for change in ({"offsets": np.array([1])}, {"shapes": np.array([[4, 4, 5, 1]])}, {"dst_lo": np.array([[1, 0, 0]])},
                   {"src_lo": np.array([[0, 1, 0]])}, {"size": np.array([[4, 4, 5]])}, {"offsets": np.array([-1])}):
        with pytest.raises(ValueError, match="outside"):
            place.place_chunks(out, src, **{**ok, **change})
    with pytest.raises(ValueError, match="outside"):
        place.place_one(out, bytes(63), (4, 4, 4, 1), [0, 0, 0], [0, 0, 0], [4, 4, 4])


def test_native_loops_switched_off_or_failing_leave_the_numpy_path(monkeypatch):
    from volbridge.engine import native

    for var in ("VOLBRIDGE_NO_NATIVE", "VOLBRIDGE_NO_NUMBA"):
        monkeypatch.setattr(native, "_loops", None)
        monkeypatch.setattr(place, "_kernel", None)
        monkeypatch.setenv(var, "1")
        assert place.load() is False and native.loops() is None
        monkeypatch.delenv(var)

    def broken():
        raise RuntimeError("LLVM ERROR: no target")

    monkeypatch.setattr(native, "_loops", None)
    monkeypatch.setattr(place, "_kernel", None)
    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match="no target"):
        assert place.load() is False
    out = np.zeros((2, 2, 2, 1), np.uint8, order="F")
    place.place_chunks(out, np.arange(8, dtype=np.uint8), np.array([0]), np.array([[2, 2, 2, 1]]), np.zeros((1, 3), int),
                       np.zeros((1, 3), int), np.array([[2, 2, 2]]))
    assert out.ravel(order="F").tolist() == list(range(8))


def _rows_model(dst: bytearray, src: bytes, table: np.ndarray) -> None:
    for s0, ssy, ssz, ssc, d0, dsy, dsz, dsc, nxb, ny, nz, nc in table.tolist():
        for c in range(nc):
            for z in range(nz):
                for y in range(ny):
                    s, d = s0 + c * ssc + z * ssz + y * ssy, d0 + c * dsc + z * dsz + y * dsy
                    dst[d:d + nxb] = src[s:s + nxb]


@st.composite
def _row_boxes(draw):
    """Tables of boxes whose rows have every length class the loop treats apart (none, 1, 2-3,
    4-7, 8-15, 16 and more, multiples of 16 or not), laid out with gaps in both buffers."""
    boxes, src_end, dst_end = [], 0, 0
    for _ in range(draw(st.integers(1, 4))):
        nxb = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100]))
        ny, nz, nc = (draw(st.integers(0, 3)) for _ in range(3))
        strides = []
        for end in (src_end, dst_end):
            sy = nxb + draw(st.integers(0, 9))
            sz = sy * max(ny, 1) + draw(st.integers(0, 9))
            sc = sz * max(nz, 1) + draw(st.integers(0, 9))
            strides.append((end + draw(st.integers(0, 9)), sy, sz, sc))
        (s0, ssy, ssz, ssc), (d0, dsy, dsz, dsc) = strides
        src_end, dst_end = s0 + ssc * max(nc, 1), d0 + dsc * max(nc, 1)
        boxes.append([s0, ssy, ssz, ssc, d0, dsy, dsz, dsc, nxb, ny, nz, nc])
    return np.array(boxes, np.int64), src_end, dst_end


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_row_boxes(), st.integers(0, 2**32 - 1))
def test_the_copy_loop_matches_a_model_for_every_row_length(boxes, seed):
    if not place.load():
        pytest.fail("the copy loop must load here")
    table, src_len, dst_len = boxes
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, src_len + 16, dtype=np.uint8)  # bytes past the boxes must stay unread...
    dst = rng.integers(0, 256, dst_len + 16, dtype=np.uint8)  # ... and unwritten
    want = bytearray(dst.tobytes())
    _rows_model(want, src.tobytes(), table)
    absolute = table.copy()
    absolute[:, 0] += src.ctypes.data  # the loop reads sources by absolute address
    place._run(dst, native.Sources([src]), absolute)
    assert dst.tobytes() == bytes(want)


def test_the_loops_refuse_a_read_only_destination(tmp_path):
    """numpy's assignment refuses one; the loops, which see addresses only, would write through it
    (a read-only memmap crashed the process, an array over ``bytes`` changed the bytes object)."""
    if not (place.load() and batch_decode.load("zstd")):
        pytest.fail("the compiled loops must load here")
    frozen = bytes(4 * 4 * 4)
    out = np.frombuffer(frozen, np.uint8).reshape((4, 4, 4, 1), order="F")
    src = np.arange(64, dtype=np.uint8)
    with pytest.raises(ValueError, match="read-only"):
        place.place_chunks(out, src, np.array([0]), np.array([[4, 4, 4, 1]]), np.zeros((1, 3), int), np.zeros((1, 3), int),
                           np.array([[4, 4, 4]]))
    with pytest.raises(ValueError, match="read-only"):
        place.place_one(out, src.tobytes(), (4, 4, 4, 1), [0, 0, 0], [0, 0, 0], [4, 4, 4])
    import zstandard

    stream = np.frombuffer(zstandard.ZstdCompressor().compress(bytes(range(64))), np.uint8)
    with pytest.raises(ValueError, match="read-only"):
        batch_decode.decode_into("zstd", stream, [0], [len(stream)], np.frombuffer(frozen, np.uint8), [0], [64])
    path = tmp_path / "frozen.raw"
    path.write_bytes(bytes(32 ** 3))
    v = vb.create(f"zarr3://{tmp_path}/v", shape=(32, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8), shard_shape=(16, 16, 16))
    v[...] = 5
    mapped = np.memmap(path, np.uint8, mode="r", shape=(32, 32, 32, 1), order="F")
    from volbridge.geometry import Box

    with pytest.raises(ValueError, match="read-only"):
        v.volume.read_into(Box((0, 0, 0), (32, 32, 32)), mapped, 0)
    assert frozen == bytes(64) and path.read_bytes() == bytes(32 ** 3)


def test_the_loops_refuse_a_source_that_overlaps_the_destination():
    """Their overlapping moves assume distinct buffers (no engine caller shares one): a shared
    one is refused, not copied wrongly."""
    if not (place.load() and batch_decode.load("zstd")):
        pytest.fail("the compiled loops must load here")
    buf = np.arange(64, dtype=np.uint8)
    table = np.array([[buf.ctypes.data + 3, 0, 0, 0, 0, 0, 0, 0, 20, 1, 1, 1]], np.int64)
    with pytest.raises(ValueError, match="overlaps"):
        place._run(buf, native.Sources([buf]), table)
    with pytest.raises(ValueError, match="overlaps"):
        batch_decode.decode_into("zstd", buf[:32], [0], [32], buf[16:], [0], [16])
    assert buf.tolist() == list(range(64))


def _child_status(pid: int) -> int:
    """The forked child's exit code; fails the test if it is still running after 20 s (waiting
    for a lock no thread of it holds)."""
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child waited for a lock no thread of it holds")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_loops_are_built_does_not_wait_forever(monkeypatch):
    """The build holds a lock; a child forked meanwhile (multiprocessing's default on Linux) has
    no thread to release it: it runs the numpy paths, and a later fork builds as usual."""
    from volbridge.engine import native

    monkeypatch.setattr(native, "_loops", None)
    monkeypatch.setattr(place, "_kernel", None)
    for held, child_gets in ((True, "None"), (False, "Loops")):
        with native._lock if held else contextlib.nullcontext():
            pid = os.fork()
            if pid == 0:  # the child: report through the exit status, never return into pytest
                try:
                    got = type(native.loops()).__name__ == ("NoneType" if child_gets == "None" else "Loops")
                    os._exit(0 if got and (place.load() is (child_gets == "Loops")) else 1)
                except BaseException:
                    os._exit(2)
        assert _child_status(pid) == 0, (held, child_gets)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_loads_a_codec_decodes_chunk_by_chunk(monkeypatch, tmp_path):
    """The usual case of the hooks: a worker thread is inside ``batch_decode.load`` (holding its
    lock and the loops' build lock) when the main thread forks."""
    import threading

    from volbridge.engine import native

    v = vb.create(f"zarr3://{tmp_path}/v", shape=(16, 16, 16), dtype="uint8", chunk_shape=(4, 4, 4),
                  shard_shape=(16, 16, 16), compression="zstd")
    data = np.arange(16 ** 3, dtype=np.uint32).reshape(16, 16, 16).astype(np.uint8)
    v[...] = data
    monkeypatch.setattr(native, "_loops", None)
    monkeypatch.setattr(place, "_kernel", None)
    monkeypatch.setattr(batch_decode, "_kernel", None)
    monkeypatch.setattr(batch_decode, "_codecs", {})
    inside, leave = threading.Event(), threading.Event()
    real_build = native._build

    def slow_build():
        inside.set()
        leave.wait(30)
        return real_build()

    monkeypatch.setattr(native, "_build", slow_build)
    loader = threading.Thread(target=batch_decode.load, args=("zstd",))
    loader.start()
    try:
        assert inside.wait(30)
        pid = os.fork()
        if pid == 0:
            try:
                ok = (native.loops() is None and not place.load() and not batch_decode.load("zstd")
                      and np.array_equal(vb.array(f"zarr3://{tmp_path}/v")[...], data))
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        assert _child_status(pid) == 0
    finally:
        leave.set()
        loader.join(30)
    assert batch_decode.load("zstd") and place.load()  # the parent finished loading


def test_the_native_loops_build_without_numba(tmp_path):
    """The engine's loops need llvmlite only: a process whose first big read loads them does not
    import numba (whose load cost ~1 s a process, scipy.linalg included)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, volbridge as vb\n"
            f"v = vb.create('zarr3://{tmp_path}/v', shape=(64, 64, 64), dtype='uint8', chunk_shape=(8, 8, 8),"
            " shard_shape=(32, 32, 32), compression='zstd')\n"
            "data = np.random.default_rng(1).integers(0, 255, (64, 64, 64), dtype=np.uint8)\n"
            "v[...] = data\n"
            "from volbridge.engine import batch_decode, place\n"
            "assert np.array_equal(vb.array(v.url)[...], data)\n"  # 512 chunks: loads the loops
            "assert place._kernel and batch_decode._codecs['zstd'], (place._kernel, batch_decode._codecs)\n"
            "assert 'numba' not in sys.modules and 'scipy' not in sys.modules, 'numba or scipy was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("fmt,shard", [("precomputed", None), ("zarr3", (8, 16, 16))])
def test_a_reversed_channel_slice_is_applied_to_whole_and_partial_chunks(tmp_path, fmt, shard):
    """``Volume.write(channels=slice(None, None, -1))`` selects every channel, reversed: whole
    chunks used to be written straight, unreversed, while partial ones were reversed (found by a
    review)."""
    from volbridge.geometry import Box

    vol = vb.create(f"{fmt}://{tmp_path}/v", shape=(8, 16, 16), dtype="uint8", chunk_shape=(8, 8, 8), num_channels=2,
                    shard_shape=shard).volume
    box = Box((0, 0, 0), (12, 16, 8))  # x 0-8: whole chunks; x 8-12: part of the next ones
    data = np.zeros((*box.shape, 2), np.uint8, order="F")
    data[..., 0], data[..., 1] = 1, 2
    vol.write(box, data, 0, channels=slice(None, None, -1))
    got = vol.read(box)
    assert (got[..., 0] == 2).all() and (got[..., 1] == 1).all()


def test_the_loops_refuse_chunk_shapes_whose_sizes_wrap_and_spans_of_unequal_counts():
    """Found by a review: a chunk of 2**60 rows wrapped int64 to 0 bytes, passed every span check
    and had the loop read far past a 16-byte buffer; a buffer index list shorter than the spans
    made the checks broadcast over nothing and the decode loop read beyond its arrays."""
    if not (place.load() and batch_decode.load("zstd")):
        pytest.fail("the compiled loops must load here")
    out = np.zeros((16, 4, 1, 1), np.uint8, order="F")
    src = np.arange(16, dtype=np.uint8)
    with pytest.raises(ValueError, match="too big"):
        place.place_chunks(out, src, np.array([0]), np.array([[16, 2**60, 16, 1]]), np.zeros((1, 3), int),
                           np.zeros((1, 3), int), np.array([[16, 4, 1]]))
    assert not out.any()
    sources = native.Sources([src])
    with pytest.raises(ValueError, match="0 buffer indexes for 1 starts"):
        sources.starts(np.zeros(0, np.int64), np.array([0]), np.array([16]), "test")
    with pytest.raises(ValueError, match="buffer indexes"):
        batch_decode.decode_into("zstd", sources, [0], [16], np.zeros(64, np.uint8), [0], [64], which=np.zeros(0, np.int64))
