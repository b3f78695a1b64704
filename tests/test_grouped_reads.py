"""Unsharded reads a group of chunks at a time (:mod:`volbridge.engine.grouped`): one read call,
one native decode-and-copy call per group, against a numpy model and the chunk-by-chunk path;
damaged chunks named, chunks under other names and transport-compressed copies found, and the
fused decode-and-copy loop's own checks (:func:`volbridge.engine.batch_decode.decode_into`)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volbridge as vb
from volbridge.engine import batch_decode, grouped, native, place
from volbridge.errors import ChunkDecodeError
from volbridge.geometry import Box
from volbridge.kv.file import FileStore

from volume_model import patch_and_check


@pytest.fixture(autouse=True)
def loaded():
    if not (place.load() and batch_decode.load("zstd") and batch_decode.load("gzip")):
        pytest.fail("llvmlite, python-zstandard and deflate are dependencies of volbridge: the loops must load here")


def _chunk_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("info", "zarr.json", "provenance")
                  and ".volbridge-locks" not in p.parts)


def _route(monkeypatch, route: str) -> list:
    """Send local reads down one of grouped.read_grouped's two ways: ``files`` (the native loop
    opens, reads, decodes and places every chunk file) or ``groups`` (the store reads a group's
    files, one native call decodes them), the way a store without plain files goes. Returns a
    list that gets an entry per call of that way."""
    calls = []
    if route == "files":
        real_files = grouped._read_files
        monkeypatch.setattr(grouped, "_read_files", lambda *a: calls.append(len(a[3])) or real_files(*a))
    else:
        monkeypatch.setattr(FileStore, "local_paths", lambda self, keys: None)
        real = FileStore.get_many_transient
        monkeypatch.setattr(FileStore, "get_many_transient", lambda self, keys: calls.append(len(keys)) or real(self, keys))
    return calls


@pytest.mark.parametrize("fmt,compression", [("zarr3", "zstd"), ("zarr3", "gzip"), ("zarr3", None), ("zarr2", "zstd"),
                                             ("precomputed", None), ("precomputed", "gzip")])
@pytest.mark.parametrize("threads,route", [("1", "groups"), ("3", "groups"), ("1", "files"), ("3", "files")])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_grouped_reads_match_a_numpy_model(tmp_path_factory, monkeypatch, fmt, compression, threads, route, data):
    monkeypatch.setenv("VOLBRIDGE_THREADS", threads)
    monkeypatch.setattr(grouped, "GROUP_BYTES", data.draw(st.sampled_from([1, 3000, 8 << 20]), label="group bytes"))
    path = tmp_path_factory.mktemp("grouped")
    shape = (21, 26, 30)  # edge chunks: padded (zarr) or clipped (precomputed)
    v = vb.create(f"{fmt}://{path}/v", shape=shape, dtype="uint16", chunk_shape=(4, 6, 5), compression=compression)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    calls = _route(monkeypatch, route)
    patch_and_check(v, lambda: vb.array(f"{fmt}://{path}/v"), shape, np.uint16, rng, data.draw(st.integers(1, 4), label="writes"),
                    12)
    assert calls, f"the {route} path did not run"


@pytest.mark.parametrize("route", ["groups", "files"])
@pytest.mark.parametrize("compression", ["zstd", "gzip", None])
def test_a_damaged_chunk_among_a_groups_is_named(tmp_path, monkeypatch, compression, route):
    """The batch stops at the damaged chunk, the checked path names it; nothing reads as zeros."""
    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    calls = _route(monkeypatch, route)
    data = np.random.default_rng(3).integers(0, 255, (16, 16, 32), dtype=np.uint8)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), compression=compression)
    v[...] = data
    victim = _chunk_files(tmp_path / "z")[5]
    raw = bytearray(victim.read_bytes())
    if compression:
        raw[:4] = bytes(4)  # no frame or member at all
    else:
        del raw[-1]  # one voxel short
    victim.write_bytes(bytes(raw))
    key = "/".join(victim.relative_to(tmp_path / "z").parts)
    with pytest.raises(ChunkDecodeError, match=key):
        vb.array(f"zarr3://{tmp_path}/z")[...]
    assert calls


@pytest.mark.parametrize("route", ["groups", "files"])
def test_chunks_under_other_names_and_compressed_copies_are_read(tmp_path, monkeypatch, route):
    """A precomputed chunk at neuroglancer-scripts' deep name, one as CloudVolume's ``.gz`` copy
    and one gzipped under the ``raw`` encoding (BigArrays.jl) sit among plain chunks of a group."""
    monkeypatch.setenv("VOLBRIDGE_THREADS", "1")
    calls = _route(monkeypatch, route)
    data = np.random.default_rng(5).integers(0, 255, (16, 16, 32), dtype=np.uint8)
    v = vb.create(f"precomputed://{tmp_path}/p", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8))
    v[...] = data
    files = _chunk_files(tmp_path / "p")
    deep, variant, sniffed = files[1], files[4], files[6]
    target = deep.parent.joinpath(*deep.name.split("_"))
    target.parent.mkdir(parents=True)
    deep.rename(target)
    variant.with_name(variant.name + ".gz").write_bytes(gzip.compress(variant.read_bytes()))
    variant.unlink()
    sniffed.write_bytes(gzip.compress(sniffed.read_bytes()))
    np.testing.assert_array_equal(vb.array(f"precomputed://{tmp_path}/p")[...].squeeze(), data)
    assert calls


@pytest.mark.parametrize("compression", ["zstd", None])
@pytest.mark.parametrize("threads", ["1", "3"])
def test_chunk_files_the_native_loop_cannot_place_go_through_the_store(tmp_path, monkeypatch, compression, threads):
    """The loop that reads chunk files itself leaves to the store (and the checked path) exactly
    the chunks it cannot place: absent ones (filled), a directory where a chunk's file would be
    (absent, as the store says), and a file bigger than the loop's buffer (read by the store,
    then named when it is not a chunk). The store's counters see every chunk read."""
    calls = _route(monkeypatch, "files")
    monkeypatch.setenv("VOLBRIDGE_THREADS", threads)
    data = np.random.default_rng(9).integers(1, 255, (16, 16, 32), dtype=np.uint8)
    url = f"zarr3://{tmp_path}/z"
    vb.create(url, shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), compression=compression)[...] = data
    files = _chunk_files(tmp_path / "z")
    assert len(files) == 16
    files[2].unlink()
    files[5].unlink()
    files[5].mkdir()
    want = data.copy()
    for f in (files[2], files[5]):
        z, y, x = (int(p) for p in f.relative_to(tmp_path / "z" / "c").parts)
        want[8 * z:8 * z + 8, 8 * y:8 * y + 8, 8 * x:8 * x + 8] = 0
    again = []
    real_many = FileStore.get_many_transient
    monkeypatch.setattr(FileStore, "get_many_transient", lambda self, keys: again.extend(keys) or real_many(self, keys))
    a = vb.array(url)
    before = a.volume.store.stats.as_dict()
    np.testing.assert_array_equal(a[...], want)
    assert calls == [16]
    keys = ["/".join(f.relative_to(tmp_path / "z").parts) for f in files]
    assert sorted(again) == sorted([keys[2], keys[5]])
    after = a.volume.store.stats.as_dict()
    assert after["requests"] - before["requests"] == 14
    assert after["bytes_read"] - before["bytes_read"] == sum(f.stat().st_size for f in files if f.is_file())
    # a file bigger than any chunk's buffer: the store reads it, the checked path names it
    files[7].write_bytes(files[7].read_bytes() + bytes(8 * 8 * 8 + (80 << 10)))
    again.clear()
    with pytest.raises(ChunkDecodeError, match=keys[7]):
        vb.array(url)[...]
    assert keys[7] in again


def test_fused_and_staged_placement_agree(monkeypatch):
    """decode_and_place copies each chunk out right after decoding it where the compiled loop
    writes the output, else through a staging buffer: the same voxels either way, and a bad
    buffer's chunks are never reported placed."""
    rng = np.random.default_rng(7)
    chunks = [rng.integers(0, 4, (6, 5, 4, 1), dtype=np.uint8) for _ in range(5)]
    streams = [zstandard.ZstdCompressor().compress(c.tobytes(order="F")) for c in chunks]
    streams[3] = streams[3][:-2]  # cut
    sources = native.Sources([np.frombuffer(s, np.uint8) for s in streams])
    which = np.arange(5)
    shapes = np.tile([6, 5, 4, 1], (5, 1))
    slot_sizes = np.full(5, 120)
    src_lo, size = np.tile([1, 0, 2], (5, 1)), np.tile([4, 5, 2], (5, 1))
    dst_lo = np.array([[0, 0, 0], [4, 0, 0], [0, 5, 0], [4, 5, 0], [0, 0, 2]])
    outs = []
    for fused in (True, False):
        out = np.zeros((8, 10, 4, 1), np.uint8, order="F")
        if not fused:
            monkeypatch.setattr(place, "writes_natively", lambda out: False)
        bad = np.zeros(5, bool)
        copy = batch_decode.CopyOut(out, shapes, slot_sizes, src_lo, dst_lo, size)
        assert copy.fused == fused
        ok = batch_decode.decode_and_place("zstd", sources, which, np.zeros(5, np.int64), sources.size, copy, np.arange(5),
                                           bad, 1)
        assert ok.tolist() == [True, True, True, False, True] and bad.tolist() == [False, False, False, True, False]
        for k in (0, 1, 2, 4):
            (a, b, c), (n0, n1, n2) = dst_lo[k], size[k]
            np.testing.assert_array_equal(out[a:a + n0, b:b + n1, c:c + n2], chunks[k][1:5, 0:5, 2:4])
        outs.append(out)
    np.testing.assert_array_equal(outs[0][:, :, :2], outs[1][:, :, :2])


def _one_chunk(out: np.ndarray, caps: int = 64):
    """A CopyOut of one 4^3 uint8 chunk placed whole at the corner of ``out``."""
    shape, zero, whole = np.array([[4, 4, 4, 1]]), np.zeros((1, 3), np.int64), np.full((1, 3), 4)
    return batch_decode.CopyOut(out, shape, np.array([caps]), zero, zero, whole)


def test_copies_outside_a_decoded_chunk_or_the_output_are_refused(monkeypatch):
    payload = bytes(range(64))
    stream = np.frombuffer(zstandard.ZstdCompressor().compress(payload), np.uint8)
    out = np.zeros((8, 4, 4, 1), np.uint8, order="F")  # room for the stream inside it, below
    one, bad = np.array([0]), np.zeros(1, bool)
    copy = _one_chunk(out)
    assert copy.fused
    assert batch_decode.decode_and_place("zstd", native.Sources([stream]), one, one, np.array([stream.size]), copy, one,
                                         bad, 1).tolist() == [True]
    assert out[:4].tobytes(order="F") == payload
    with pytest.raises(ValueError, match="outside"):  # a region past the chunk's own shape
        place.copy_table(out, np.array([[4, 4, 4, 1]]), np.ones((1, 3)), np.zeros((1, 3)), np.full((1, 3), 4))
    with pytest.raises(ValueError, match="outside"):  # a chunk said to decode to fewer bytes than its shape holds
        _one_chunk(out, 63)
    with pytest.raises(ValueError, match="rows"):
        batch_decode.decode_and_place("zstd", native.Sources([stream]), one, one, np.array([stream.size]), copy,
                                      np.array([1]), bad, 1)
    inside = place.out_bytes(out)  # a stream inside the output it would be copied to
    inside[:stream.size] = stream
    with pytest.raises(ValueError, match="overlaps"):
        batch_decode.decode_and_place("zstd", native.Sources([inside[:stream.size]]), one, one, np.array([stream.size]),
                                      copy, one, bad, 1)
    # CopyOut checks the table it is given as well (copy_table's own checks aside): a row read
    # one byte further into the chunk ends past its 64 decoded bytes, one written at the end of
    # the output past it
    good = place.copy_table(out, np.array([[4, 4, 4, 1]]), np.zeros((1, 3)), np.zeros((1, 3)), np.full((1, 3), 4))
    for column, start in ((0, 1), (4, out.size - 1)):
        tampered = good.copy()
        tampered[0, column] = start
        monkeypatch.setattr(place, "copy_table", lambda *a, t=tampered: t)
        with pytest.raises(ValueError, match="outside"):
            _one_chunk(out)


@pytest.mark.parametrize("kept_staging", [True, False])
def test_a_chunk_decoded_at_arrival_is_checked_as_a_batch_is(monkeypatch, kept_staging):
    """ChunkAtATime (a network read's chunks, each decoded from the buffer it arrived in): the
    chunk lands where its row says; a stream that does not decode to exactly the chunk's bytes
    writes nothing and is left to the checked path; a stream inside the output, a row that
    does not exist and a read-only output are refused. Chunks bigger than a thread's kept
    staging buffer (``kept_staging`` False) are decoded into a buffer of the read's own."""
    if not kept_staging:
        monkeypatch.setattr(place, "KEEP_STAGING_BYTES", 32)
    payload = bytes(range(64))
    stream = zstandard.ZstdCompressor().compress(payload)
    out = np.zeros((8, 4, 4, 1), np.uint8, order="F")
    one = batch_decode.ChunkAtATime("zstd", _one_chunk(out))
    for bad in (stream[:-3], zstandard.ZstdCompressor().compress(payload[:63]), stream + b"\0", b""):
        assert one.place(0, bad) is False
        assert not out.any()
    assert one.place(0, memoryview(bytearray(stream))) is True
    assert out[:4].tobytes(order="F") == payload and not out[4:].any()
    with pytest.raises(ValueError, match="row"):
        one.place(1, stream)
    inside = place.out_bytes(out)
    inside[-len(stream):] = np.frombuffer(stream, np.uint8)
    with pytest.raises(ValueError, match="overlaps"):
        one.place(0, inside[-len(stream):])
    frozen = np.zeros((4, 4, 4, 1), np.uint8, order="F")
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        batch_decode.ChunkAtATime("zstd", _one_chunk(frozen))


@pytest.mark.parametrize("fmt,compression,at_arrival", [("zarr3", "zstd", True), ("zarr2", "gzip", True),
                                                        ("zarr3", None, False), ("precomputed", "gzip", False)])
def test_network_reads_place_chunks_as_they_arrive(s3env, s3_bucket, monkeypatch, fmt, compression, at_arrival):
    """Over S3 (libcurl's multi interface hands chunks over as they arrive) compressed chunks are
    decoded and placed one at a time from the buffers they arrived in, raw ones (also under
    transport compression) placed one by one; absent ones are filled, and a damaged one named."""
    decoded = []
    real = batch_decode.ChunkAtATime.place
    monkeypatch.setattr(batch_decode.ChunkAtATime, "place",
                        lambda self, row, data: decoded.append(type(data)) or real(self, row, data))
    url = f"{fmt}://s3://{s3_bucket}/arriving-{fmt}-{compression}"
    shape = (20, 24, 36)
    v = vb.create(url, shape=shape, dtype="uint16", chunk_shape=(8, 8, 8), compression=compression)
    rng = np.random.default_rng(11)
    model = np.zeros(shape, np.uint16)
    model[2:17, 3:20, 5:33] = rng.integers(0, 2**16, (15, 17, 28), dtype=np.uint16)  # corners stay absent
    v[2:17, 3:20, 5:33] = model[2:17, 3:20, 5:33]
    r = vb.array(url)
    np.testing.assert_array_equal(r[...], model)
    np.testing.assert_array_equal(r[-3:11, 5:30, 7:40], np.pad(model, ((3, 0), (0, 6), (0, 4)))[0:14, 5:30, 7:40])
    # every 8^3 chunk is present (the write touches them all): 3 x 3 x 5 for the full read, 2 x 3 x 5
    # inside the cutout's [0:11, 5:24, 7:36]; each body a view of a receive buffer, not copied first
    assert len(decoded) == (45 + 30 if at_arrival else 0), decoded
    assert all(t is memoryview for t in decoded), decoded
    if compression == "zstd":  # a damaged chunk among them is named, never read as zeros
        store = r.volume.store
        key = r.volume.dataset.layout(0).write_key(next(r.volume.dataset.layout(0).grid.cells(Box((8, 8, 8), (9, 9, 9)))))
        store.put(key, b"\x00" * 40)
        with pytest.raises(ChunkDecodeError, match=key):
            vb.array(url)[...]


def test_copy_tables_whose_ends_wrap_around_int64_are_refused(monkeypatch):
    """(review) A row of 2**60 + 1 lines 16 bytes apart ends 2**64 bytes on: int64 arithmetic
    wrapped it to 16, and the check before the unchecked loop passed it."""
    out = np.zeros((4, 4, 4, 1), np.uint8, order="F")
    for row in ([0, 0, 0, 0, 0, 16, 0, 0, 16, 2**60 + 1, 1, 1], [0, 16, 0, 0, 0, 0, 0, 0, 16, 2**60 + 1, 1, 1],
                [0, 0, 0, 0, 0, -16, 0, 0, 16, 2, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, -1, 1, 1, 1]):
        table = np.array([row], np.int64)
        assert place.row_ends(table) is None
        monkeypatch.setattr(place, "copy_table", lambda *a, t=table: t)
        with pytest.raises(ValueError, match="outside"):
            _one_chunk(out)


def test_read_into_a_reversed_view_of_length_one_reads_like_numpy(tmp_path):
    """(review) numpy calls an array with a negative stride on a length-1 axis Fortran-contiguous:
    the fused copy's table had refused that stride."""
    data = np.random.default_rng(2).integers(0, 255, (16, 1, 16), dtype=np.uint8)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 1, 8), compression="zstd")
    v[...] = data
    out = np.zeros((16, 1, 16, 1), np.uint8, order="F")[:, ::-1]  # (x, y, z, c), strides (1, -16, 16, 256)
    assert out.flags.f_contiguous and out.strides[1] < 0
    vb.array(f"zarr3://{tmp_path}/z").volume.read_into(Box((0, 0, 0), (16, 1, 16)), out)
    np.testing.assert_array_equal(out[..., 0], data.transpose(2, 1, 0))


@pytest.mark.parametrize("no_native", [False, True])
def test_a_small_first_read_builds_the_loops_in_the_background(tmp_path, no_native):
    """A read too small to wait for the native loops runs on numpy and starts building them; the
    reads after use them (a fresh process: the suite's own has them loaded already)."""
    import os
    import subprocess
    import sys
    import textwrap

    data = np.random.default_rng(1).integers(0, 255, (16, 16, 16), dtype=np.uint8)
    vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), compression="zstd")[...] = data
    np.save(tmp_path / "want.npy", data)
    code = textwrap.dedent(f"""
        import os, time, numpy as np, volbridge as vb
        from volbridge.engine import native, place, grouped
        groups = []
        real = grouped._read_files
        grouped._read_files = lambda *a: groups.append(len(a[3])) or real(*a)
        want = np.load({str(tmp_path / "want.npy")!r})
        a = vb.array({f"zarr3://{tmp_path}/z"!r})
        assert place._kernel is None
        assert np.array_equal(a[...], want) and not groups  # 8 chunks: numpy, chunk by chunk
        for _ in range(200):
            if place._kernel is not None:
                break
            time.sleep(0.05)
        assert np.array_equal(a[...], want)
        print("kernel", bool(place._kernel), "grouped", sum(groups))
        # (review) a child forked while a background build runs gets the loops too: the fork
        # waits for the build, where the child had found its lock held and gone without for good
        place._kernel, place._build_started, native._loops = None, False, None
        a[0:8, 0:8, 0:8]  # starts another build
        pid = os.fork()
        if pid == 0:
            os._exit(0 if native.loops() is not None or {no_native} else 3)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "VOLBRIDGE_NO_NATIVE"}
    env["VOLBRIDGE_NATIVE_CACHE"] = str(tmp_path / "cache")  # nothing kept yet: the loops are built
    if no_native:
        env["VOLBRIDGE_NO_NATIVE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kernel", str(not no_native), "grouped", "0" if no_native else "8", "child", "0"]
    if no_native:
        return
    # The build kept them as a shared library where cc links one: a later process loads them in
    # ~1 ms, so even its first small read uses them, and nothing runs in the background.
    later = textwrap.dedent(f"""
        import numpy as np, volbridge as vb
        from volbridge.engine import native_cache, native, place, grouped
        groups = []
        real = grouped._read_files
        grouped._read_files = lambda *a: groups.append(len(a[3])) or real(*a)
        kept = native_cache.has_library(native._SOURCE_KEY)
        assert np.array_equal(vb.array({f"zarr3://{tmp_path}/z"!r})[...], np.load({str(tmp_path / "want.npy")!r}))
        print("kept", kept, "grouped", sum(groups), "background", place._build_thread is not None)
    """)
    out = subprocess.run([sys.executable, "-c", later], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    kept = out.stdout.split()[1] == "True"
    assert out.stdout.split() == ["kept", str(kept), "grouped", "8" if kept else "0", "background", str(not kept)]
    linker = sys.platform == "linux" and any(os.access(os.path.join(d, "cc"), os.X_OK)
                                             for d in os.environ.get("PATH", "").split(os.pathsep))
    assert kept == linker


@pytest.mark.parametrize("route", ["groups", "files"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cutouts_that_need_a_chunks_first_planes_only_match_numpy(tmp_path_factory, monkeypatch, route, data):
    """Chunks of 64^3 uint8 are two zstd blocks; a cutout that needs only a chunk's first planes
    (along its slowest axis) has libzstd decode only the blocks that hold them. Random cutouts
    against the numpy array, both ways a local read goes."""
    calls = _route(monkeypatch, route)
    path = tmp_path_factory.mktemp("prefix")
    want = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")).integers(0, 3, (130, 64, 70), np.uint8)
    vb.create(f"zarr3://{path}/z", shape=want.shape, dtype="uint8", chunk_shape=(64, 64, 64), compression="zstd")[...] = want
    a = vb.array(f"zarr3://{path}/z")
    padded = np.pad(want, 3)  # zeros outside the bounds
    for _ in range(4):
        lo = [data.draw(st.integers(-3, n - 1)) for n in want.shape]
        hi = [data.draw(st.integers(l + 1, n + 3)) for l, n in zip(lo, want.shape)]
        got = a[tuple(slice(l, h) for l, h in zip(lo, hi))]
        np.testing.assert_array_equal(got, padded[tuple(slice(l + 3, h + 3) for l, h in zip(lo, hi))])
    assert calls


@pytest.mark.parametrize("route", ["groups", "files"])
@pytest.mark.parametrize("damage", ["cut short", "checksum, cut short", "no content size, cut short", "a second frame",
                                    "bytes after the frame", "content size too big"])
def test_a_chunk_file_that_is_not_exactly_one_whole_frame_is_named_by_every_read(tmp_path, monkeypatch, route, damage):
    """A 64^3 chunk (two zstd blocks) whose file is not one whole frame of exactly its bytes: a
    cutout of its first planes, which needs only the first block, names it as a whole read
    does (the frame's size and block headers are checked before a prefix decode; review)."""
    _route(monkeypatch, route)
    want = np.random.default_rng(4).integers(0, 255, (64, 64, 64), np.uint8)
    vb.create(f"zarr3://{tmp_path}/z", shape=want.shape, dtype="uint8", chunk_shape=(64, 64, 64), compression="zstd")[...] = want
    (chunk,) = _chunk_files(tmp_path / "z")
    frame = zstandard.ZstdCompressor().compress(want.tobytes())
    stored = {
        "cut short": frame[:-1000],
        "checksum, cut short": zstandard.ZstdCompressor(write_checksum=True).compress(want.tobytes())[:-1000],
        "no content size, cut short": zstandard.ZstdCompressor(write_content_size=False).compress(want.tobytes())[:-1000],
        "a second frame": frame + zstandard.ZstdCompressor().compress(b"\x07" * 1000),
        "bytes after the frame": frame + b"\x00" * 7,
        "content size too big": zstandard.ZstdCompressor().compress(want.tobytes() + b"\x01" * 100),
    }[damage]
    chunk.write_bytes(stored)
    a = vb.array(f"zarr3://{tmp_path}/z")
    key = "/".join(chunk.relative_to(tmp_path / "z").parts)
    with pytest.raises(ChunkDecodeError, match=key):
        a[3:20, 5:60, 1:63]
    with pytest.raises(ChunkDecodeError, match=key):
        a[3:40]


def _second_block(frame: bytes) -> tuple[int, int]:
    """(start, size) of the content of a zstd frame's second block (RFC 8878: a frame header,
    then blocks behind 3-byte little-endian headers: last-block bit, 2-bit type, 21-bit size)."""
    descriptor = frame[4]
    fcs_bytes = {0: 1 if descriptor & 0x20 else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    at = 4 + 1 + (0 if descriptor & 0x20 else 1) + {0: 0, 1: 1, 2: 2, 3: 4}[descriptor & 3] + fcs_bytes
    header = int.from_bytes(frame[at:at + 3], "little")
    assert not header & 1 and (header >> 1) & 3 == 2, "the first block is a compressed block, and not the last"
    at += 3 + (header >> 3)
    header = int.from_bytes(frame[at:at + 3], "little")
    return at + 3, header >> 3


@pytest.mark.parametrize("route", ["groups", "files"])
def test_damage_inside_a_block_a_cutout_does_not_need_is_named_by_the_reads_that_need_it(tmp_path, monkeypatch, route):
    """A whole frame whose second block's content is damaged: a cutout of the chunk's first
    planes decodes only the first block and reads right (the voxels a whole decode would give
    there); a read that needs the second block names the chunk."""
    _route(monkeypatch, route)
    want = np.random.default_rng(8).integers(0, 4, (64, 64, 64), np.uint8)  # compressible: compressed blocks
    vb.create(f"zarr3://{tmp_path}/z", shape=want.shape, dtype="uint8", chunk_shape=(64, 64, 64), compression="zstd")[...] = want
    (chunk,) = _chunk_files(tmp_path / "z")
    frame = bytearray(zstandard.ZstdCompressor().compress(want.tobytes()))
    start, size = _second_block(bytes(frame))
    frame[start:start + size] = bytes(size)  # its headers stay: the frame still spans the file exactly
    chunk.write_bytes(bytes(frame))
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(bytes(frame))
    a = vb.array(f"zarr3://{tmp_path}/z")
    np.testing.assert_array_equal(a[3:20, 5:60, 1:63], want[3:20, 5:60, 1:63])
    key = "/".join(chunk.relative_to(tmp_path / "z").parts)
    with pytest.raises(ChunkDecodeError, match=key):
        a[3:40]


@pytest.mark.parametrize("route", ["groups", "files"])
def test_a_device_at_a_chunks_path_is_named(tmp_path, monkeypatch, route):
    """(review) A chunk path linked to /dev/zero fills the native loop's buffer; the store then
    names it, where it had read it without end."""
    import os

    from volbridge.errors import StoreError

    _route(monkeypatch, route)
    v = vb.create(f"zarr3://{tmp_path}/z", shape=(16, 16, 16), dtype="uint8", chunk_shape=(8, 8, 8), compression="zstd")
    v[...] = 1
    victim = _chunk_files(tmp_path / "z")[3]
    victim.unlink()
    os.symlink("/dev/zero", victim)
    with pytest.raises(StoreError, match="not a regular file"):
        vb.array(f"zarr3://{tmp_path}/z")[...]


@pytest.mark.parametrize("threads", ["1", "3"])
def test_gzipped_chunk_copies_are_decoded_in_the_native_loops(tmp_path, monkeypatch, threads):
    """CloudVolume's default on disk, every chunk as ``key.gz`` (its ``info`` does not say so):
    the file loops, finding no plain file, open the copy and gunzip it, leaving nothing to the
    store; a chunk stored plain among them is read plain, and shadows a copy beside it (the
    store's own order); a damaged copy goes to the checked path, which names it."""
    monkeypatch.setenv("VOLBRIDGE_THREADS", threads)
    data = np.random.default_rng(12).integers(0, 255, (24, 16, 32), dtype=np.uint8)
    vb.create(f"precomputed://{tmp_path}/p", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8),
              compression="gzip")[...] = data
    files = _chunk_files(tmp_path / "p")
    assert len(files) == 24 and all(f.suffix == ".gz" for f in files)
    left = []
    real = grouped._read_groups
    monkeypatch.setattr(grouped, "_read_groups", lambda vol, layout, at, codec, chunks, pf:
                        left.append(len(chunks)) or real(vol, layout, at, codec, chunks, pf))
    calls = _route(monkeypatch, "files")
    url = f"precomputed://{tmp_path}/p"
    np.testing.assert_array_equal(vb.array(url)[3:21, 1:15, 5:30].squeeze(), data[3:21, 1:15, 5:30])
    assert calls == [24] and left == [0]  # (z, y, x): 3:21 touches all 3 z chunks, 1:15 both y, 5:30 all 4 x
    plain = files[5]
    plain.with_suffix("").write_bytes(gzip.decompress(plain.read_bytes()))
    plain.unlink()
    left.clear()
    np.testing.assert_array_equal(vb.array(url)[...].squeeze(), data)
    assert left == [0]  # the loops take the plain file, and the copies of the others
    # a plain file beside a gzipped copy shadows it, as for the store's own reads
    shadowed = files[6]
    chunk = np.frombuffer(gzip.decompress(shadowed.read_bytes()), np.uint8)
    shadowed.with_suffix("").write_bytes((255 - chunk).tobytes())
    want = data.copy()
    x, y, z = ([int(v) for v in r.split("-")] for r in shadowed.with_suffix("").name.split("_"))  # its name: x_y_z
    region = np.s_[z[0]:z[1], y[0]:y[1], x[0]:x[1]]  # the array: (z, y, x)
    want[region] = 255 - want[region]
    left.clear()
    np.testing.assert_array_equal(vb.array(url)[...].squeeze(), want)
    assert left == [0]
    files[9].write_bytes(files[9].read_bytes()[:-9])  # cut short: its size trailer gone
    with pytest.raises(ChunkDecodeError, match=files[9].with_suffix("").name):
        vb.array(url)[...]


def test_over_s3_a_cutout_decodes_only_the_blocks_it_needs(s3env, s3_bucket):
    """Network reads decode zstd chunks in batches as they arrive (read_arriving), with the same
    prefix decoding: damage inside a block a cutout does not need leaves the cutout right, and
    a read that needs the block names the chunk; a chunk with bytes after its frame is named
    by both."""
    url = f"zarr3://s3://{s3_bucket}/prefix-over-s3"
    want = np.random.default_rng(8).integers(0, 4, (64, 64, 128), np.uint8)
    vb.create(url, shape=want.shape, dtype="uint8", chunk_shape=(64, 64, 64), compression="zstd")[...] = want
    a = vb.array(url)
    store, layout = a.volume.store, a.volume.dataset.layout(0)
    keys = [layout.write_key(c) for c in layout.grid.cells(layout.grid.bounds)]
    assert len(keys) == 2
    chunks = {k: bytes(store.get(k)) for k in keys}
    damaged = bytearray(chunks[keys[0]])
    start, size = _second_block(bytes(damaged))
    damaged[start:start + size] = bytes(size)
    store.put(keys[0], bytes(damaged))
    store.put(keys[1], chunks[keys[1]] + b"\x00" * 7)
    cut = np.s_[3:20, 5:60, 1:127]  # the first planes of both chunks (z, y, x)
    with pytest.raises(ChunkDecodeError, match=keys[1]):
        vb.array(url)[cut]
    store.put(keys[1], chunks[keys[1]])
    np.testing.assert_array_equal(vb.array(url)[cut], want[cut])
    with pytest.raises(ChunkDecodeError, match=keys[0]):
        vb.array(url)[3:40]


def test_gzipped_copies_of_chunks_bigger_than_the_smallest_buffer(tmp_path):
    """(CI crash) A gzipped copy among raw chunks is decoded into a second, one-chunk buffer,
    which the raw loop's buffer had no room for: chunks under 1 MiB (the smallest buffer a
    thread keeps) hid it; these are 2 MiB."""
    data = np.random.default_rng(13).integers(0, 4, (128, 128, 256), dtype=np.uint8)
    url = f"precomputed://{tmp_path}/p"
    vb.create(url, shape=data.shape, dtype="uint8", chunk_shape=(128, 128, 128), compression="gzip")[...] = data
    files = _chunk_files(tmp_path / "p")
    assert len(files) == 2 and all(f.suffix == ".gz" for f in files)
    np.testing.assert_array_equal(vb.array(url)[...].squeeze(), data)
    np.testing.assert_array_equal(vb.array(url)[5:100, 7:120, 3:250].squeeze(), data[5:100, 7:120, 3:250])


def test_the_file_loop_refuses_a_chunk_bigger_than_its_decode_buffer(tmp_path):
    """The loop's own check beside the caller's sizing: a chunk said to decode to more than the
    decode buffer holds is left to the checked path (status -4), the bytes past the buffer
    untouched."""
    import os

    voxels = bytes(range(256)) * 4
    (tmp_path / "c").write_bytes(zstandard.ZstdCompressor().compress(voxels))
    loops = native.loops()
    mode, fn, ctx, stream = batch_decode.decoder("zstd")
    libc = grouped._libc()
    path = np.frombuffer(os.fsencode(str(tmp_path / "c")) + b"\0", np.uint8)
    out = np.zeros(1024, np.uint8)
    table = place.copy_table(out.reshape(1024, 1, 1, 1, order="F"), np.array([[1024, 1, 1, 1]]), np.zeros((1, 3)),
                             np.zeros((1, 3)), np.array([[1024, 1, 1]]))
    for dcap, want in ((1024, 0), (1000, -4)):
        buf = np.zeros(4096 + 1024 + 64, np.uint8)  # read buffer, decode buffer, then a guard
        status, counter = np.full(1, -9, np.int64), np.zeros(1, np.int64)
        caps, needs, at = np.array([1024]), np.array([1024]), np.zeros(1, np.int64)
        values = dict(mode=mode, fn=fn, ctx=ctx, open=libc[0], read=libc[1], close=libc[2], flags=os.O_RDONLY,
                      paths=path.ctypes.data, path_at=at.ctypes.data, n=1, next=counter.ctypes.data,
                      rbuf=buf.ctypes.data, rcap=4096, dbuf=buf.ctypes.data + 4096, dcap=dcap, caps=caps.ctypes.data,
                      out=out.ctypes.data, table=table.ctypes.data, status=status.ctypes.data, needs=needs.ctypes.data,
                      stream=stream, alt_at=0, alt_mode=0, alt_fn=0, alt_ctx=0)
        args = np.array([values[name] for name in native.READ_FILES_ARGS], np.int64)
        loops.read_files(args.ctypes.data)
        assert (status[0] > 0) if want == 0 else status[0] == want
        if want == 0:
            assert out.tobytes() == voxels
        else:
            assert not buf[4096:].any()  # nothing decoded into a buffer too small


def test_the_decode_loop_stops_at_a_slot_outside_its_buffer():
    """decode_all's own check beside its callers': a chunk whose slot does not lie inside the
    destination it is told the size of stops the loop there, nothing written past it."""
    voxels = bytes(range(256)) * 4
    stream = np.frombuffer(zstandard.ZstdCompressor().compress(voxels), np.uint8)
    loops = native.loops()
    mode, fn, ctx, zstd_stream = batch_decode.decoder("zstd")
    starts, sizes = np.zeros(2, np.int64), np.full(2, stream.size, np.int64)
    caps = np.full(2, 1024, np.int64)
    for size, offsets, want in ((2048, [0, 1024], 2), (2047, [0, 1024], 1), (2048, [0, 2**63 - 1], 1)):
        dst = np.zeros(size + 64, np.uint8)  # the slots' buffer, then a guard
        offsets = np.array(offsets, np.int64)
        done = loops.decode_all(mode, fn, ctx, stream.ctypes.data, starts.ctypes.data, sizes.ctypes.data, dst.ctypes.data,
                                offsets.ctypes.data, caps.ctypes.data, 2, 0, 0, caps.ctypes.data, zstd_stream, size)
        assert done == want
        assert dst[:1024].tobytes() == voxels and not dst[size:].any()
