"""Concurrent writers lose nothing: processes and threads writing overlapping unaligned boxes.

Each writer fills its own box with its own value. Afterwards every chunk must equal a serial
replay of the writers that touch it in *some* order (the order they took its lock). A lost
update shows up as voxels that no order explains (a writer's exclusive region reverted), and a
torn chunk as a decode error.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading

import numpy as np
import pytest

import volbridge as vb
from volbridge.geometry import Box, ChunkGrid

SHAPE = (40, 96, 96)  # z, y, x
CHUNK = (16, 32, 32)


def writer_boxes(seed: int, n: int) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Overlapping unaligned (z, y, x) boxes that all cover the volume's centre."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        start = tuple(int(rng.integers(0, s // 2 - 3)) for s in SHAPE)
        stop = tuple(int(rng.integers(s // 2 + 3, s + 1)) for s in SHAPE)
        boxes.append((start, stop))
    return boxes


def _write(url, box, value, barrier):
    vol = vb.array(url, mode="r+")
    (z0, y0, x0), (z1, y1, x1) = box
    data = np.full((z1 - z0, y1 - y0, x1 - x0), value, dtype=np.uint16)
    barrier.wait()
    vol[z0:z1, y0:y1, x0:x1] = data


def run_writers(url: str, boxes, dtype: str) -> list[dict]:
    """Four spawned processes write their boxes at once; returns each one's store counters."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(boxes))
    results = ctx.Queue()
    procs = [ctx.Process(target=_write_any, args=(url, boxes[i], i + 1, barrier, dtype, results)) for i in range(len(boxes))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"
    return [results.get(timeout=10) for _ in procs]


def check_serial_replay(url: str, boxes) -> None:
    got = vb.array(url)[...].astype(np.int64)  # raises if any chunk is torn
    grid = ChunkGrid(Box((0, 0, 0), SHAPE), CHUNK, (0, 0, 0))
    for cell in grid.cells(grid.bounds):
        sl = cell.box.slices()
        touching = [i for i, (a, b) in enumerate(boxes) if not Box(a, b).intersect(cell.box).empty]
        explained = False
        for order in itertools.permutations(touching):
            replay = np.zeros(cell.box.shape, np.int64)
            for i in order:
                region = Box(*boxes[i]).intersect(cell.box)
                replay[region.slices(cell.box.start)] = i + 1
            if np.array_equal(replay, got[sl]):
                explained = True
                break
        assert explained, f"chunk {cell.box} matches no serial order of writers {touching}: an update was lost"


@pytest.mark.parametrize("encoding,compression", [("raw", None), ("raw", "gzip"), ("compressed_segmentation", None)])
def test_four_processes_overlapping_unaligned(tmp_path, encoding, compression):
    dtype = "uint16" if encoding == "raw" else "uint32"
    url = f"precomputed://{tmp_path}/vol"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype=dtype, encoding=encoding, compression=compression)
    for seed in range(3):
        boxes = writer_boxes(seed, 4)
        run_writers(url, boxes, dtype)
        check_serial_replay(url, boxes)
        vb.array(url, mode="r+")[...] = 0


@pytest.mark.parametrize("fmt", ["zarr3", "precomputed"])
def test_four_processes_into_one_sharded_volume(tmp_path, fmt):
    """Every writer's boxes touch the same few shards (two per axis at most): each shard is
    read-modify-written by all four at once, so a lost update would revert a whole chunk."""
    url = f"{fmt}://{tmp_path}/vol"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype="uint16", shard_shape=tuple(2 * c for c in CHUNK))
    for seed in range(3):
        boxes = writer_boxes(200 + seed, 4)
        run_writers(url, boxes, "uint16")
        check_serial_replay(url, boxes)
        vb.array(url, mode="r+")[...] = 0


def _write_any(url, box, value, barrier, dtype, results=None):
    vol = vb.array(url, mode="r+")
    (z0, y0, x0), (z1, y1, x1) = box
    data = np.full((z1 - z0, y1 - y0, x1 - x0), value, dtype=dtype)
    barrier.wait()
    vol[z0:z1, y0:y1, x0:x1] = data
    if results is not None:
        store = getattr(vol.volume, "store", None)  # single-file remotes have no store counters
        results.put(store.stats.as_dict() if store is not None else {})


def run_writer_threads(url: str, boxes) -> None:
    """Four threads write their boxes at once (after a barrier); any writer's error is raised."""
    barrier = threading.Barrier(len(boxes))
    errors = []

    def run(i):
        try:
            _write(url, boxes[i], i + 1, barrier)
        except BaseException as e:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_threads_overlapping_unaligned(tmp_path):
    url = f"precomputed://{tmp_path}/vol"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype="uint16")
    boxes = writer_boxes(7, 4)
    run_writer_threads(url, boxes)
    check_serial_replay(url, boxes)


def test_memory_store_threads(tmp_path):
    url = "precomputed://mem://concurrency-test"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype="uint16", overwrite=True)
    boxes = writer_boxes(11, 4)
    run_writer_threads(url, boxes)
    check_serial_replay(url, boxes)
