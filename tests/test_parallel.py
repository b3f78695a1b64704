"""engine.parallel.run_bounded: every item once, the first error raised, and nested calls that
ask for no more than the cores run in the calling loop's thread."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from volbridge.engine import parallel
from volbridge.engine.parallel import default_threads, run_bounded


def test_every_item_runs_once_over_several_threads():
    seen, threads = [], set()
    meet = threading.Barrier(2, timeout=30)  # items 0 and 1 return only if both run at once

    def fn(i):
        if i < 2:
            meet.wait()
        seen.append(i)
        threads.add(threading.get_ident())

    run_bounded(fn, range(40), 1, loops=3)
    assert sorted(seen) == list(range(40))
    assert len(threads) > 1


def test_the_first_error_is_raised_and_stops_the_loops():
    ran = []

    def fn(i):
        ran.append(i)
        if i == 3:
            raise ValueError("item 3")

    with pytest.raises(ValueError, match="item 3"):
        run_bounded(fn, range(1000), 1, loops=2)
    assert len(ran) < 1000


def test_nested_local_calls_run_in_the_outer_loops_thread():
    """A unit loop that reads and writes chunks: the inner calls stay on the unit's thread."""
    inner_threads: dict[int, set[int]] = {}
    lock = threading.Lock()

    def unit(u):
        me = threading.get_ident()

        def chunk(_c):
            with lock:
                inner_threads.setdefault(me, set()).add(threading.get_ident())

        run_bounded(chunk, range(8), 1)  # local: cores + 1 loops asked
        time.sleep(0.001)

    run_bounded(unit, range(12), 1, loops=3)
    assert inner_threads and all(ts == {outer} for outer, ts in inner_threads.items())
    assert not getattr(parallel._inside, "loop", False)  # the caller's flag is restored


@pytest.mark.parametrize("requests", [3, default_threads() + 5])
def test_nested_network_calls_still_fan_out_however_few_their_items(requests):
    """A store's request concurrency (loops given) is not local work: nested, its few requests
    still overlap (a review found three 50 ms requests taking 150 ms inside a unit)."""
    inner: dict[int, set[int]] = {}
    lock = threading.Lock()
    # The first two requests of a unit wait for each other: they can only both return if they are
    # in flight at once (a sleep made this depend on the machine's load: one thread could take
    # every item of a loaded machine's run).
    meet = {u: threading.Barrier(2, timeout=30) for u in range(2)}

    def unit(u):
        def request(r):
            if r < 2:
                meet[u].wait()
            with lock:
                inner.setdefault(u, set()).add(threading.get_ident())

        run_bounded(request, range(requests), 1, loops=32)

    run_bounded(unit, range(2), 1, loops=2)
    assert all(len(ts) > 1 for ts in inner.values()) and len(inner) == 2


def test_nested_calls_marked_local_run_inline_whatever_their_loops():
    seen = {}

    def unit(u):
        def chunk(_c):
            seen.setdefault(u, set()).add(threading.get_ident())

        run_bounded(chunk, range(6), 1, loops=2, local=True)  # e.g. a local store's shard loops
        seen.setdefault(("outer", u), threading.get_ident())

    run_bounded(unit, range(4), 1, loops=2)
    assert all(seen[u] == {seen[("outer", u)]} for u in range(4))


def test_a_top_level_call_on_one_item_does_not_mark_the_thread():
    """One item runs in the caller without loops: a nested call below it may still fan out."""
    threads = set()
    # The first two items wait for each other (a 2 ms sleep per item let one thread of a loaded
    # machine take all twelve before a helper started: CI failed so).
    meet = threading.Barrier(2, timeout=30)

    def outer(_):
        def inner(i):
            if i < 2:
                meet.wait()
            threads.add(threading.get_ident())

        run_bounded(inner, range(12), 1, loops=3)

    run_bounded(outer, [0], 1)
    assert len(threads) > 1


@pytest.mark.parametrize("cores", [8, 2])
def test_a_sharded_write_of_few_shards_on_a_network_store_spreads_its_chunks_over_the_cores(tmp_path, monkeypatch, cores):
    """Two shards, 32 request loops: with more cores than shards, each shard's chunk encodes
    spread over the cores inside the call's own shard loops (a review found them run one at a
    time); with as many shards as cores they stay in their shard's loop. Never over the 32
    request loops: CPU work split that wide took 2.6x tensorstore's CPU on sharded S3 reads."""
    import numpy as np

    import volbridge as vb
    from volbridge.engine import parallel, sharded

    monkeypatch.delenv("VOLBRIDGE_THREADS", raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: cores)
    a = vb.create(f"precomputed://{tmp_path / 'v'}", shape=(64, 256, 128), dtype="uint16", chunk_shape=(16, 32, 32),
                  shard_shape=(64, 128, 128), compression="gzip")
    used: dict[str, set[int]] = {}
    calls: dict[str, list[int]] = {}
    real = sharded.run_bounded

    def spy(fn, items, *args, **kw):
        calls.setdefault(fn.__name__, []).append(args[1] if len(args) > 1 else kw.get("loops"))

        def wrapped(x):
            used.setdefault(fn.__name__, set()).add(threading.get_ident())
            time.sleep(0.002)  # a slow codec
            return fn(x)
        return real(wrapped, items, *args, **kw)

    monkeypatch.setattr(sharded, "run_bounded", spy)
    a.volume.store.io_concurrency = 32
    a[...] = np.random.default_rng(0).integers(0, 9, a.shape).astype("uint16")
    assert len(used["shard_task"]) == 2
    if cores == 8:
        assert len(used.get("encode_slot", ())) > 4 and set(calls["encode_slot"]) == {8}
    else:
        assert "encode_slot" not in calls


class _Peak:
    """The most calls of a wrapped function that were running at once."""

    def __init__(self, fn, hold: float):
        self.fn, self.hold, self.now, self.peak, self.lock = fn, hold, 0, 0, threading.Lock()

    def __call__(self, *args, **kw):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.hold)
            return self.fn(*args, **kw)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("compression", ["zstd", None])
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("large", [False, True])
def test_a_network_write_compresses_on_the_cores_while_its_puts_fan_out(tmp_path, monkeypatch, compression, partial, large):
    """32 loops that all compressed at once finished their chunks together, late, and the
    server waited meanwhile for the first PUT: large compressed chunks encode on the process's
    encoder threads, one per core, small ones in the loops in cores + 1 slots; the PUTs stay
    io_concurrency wide; raw chunks (a copy) encode in the loops, all at once."""
    import numpy as np

    import volbridge as vb
    from volbridge.engine import chunked

    monkeypatch.delenv("VOLBRIDGE_THREADS", raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(chunked, "ENCODER_MIN_BYTES", 0 if large else 1 << 40)
    a = vb.create(f"zarr3://{tmp_path / 'v'}", shape=(64, 64, 256), dtype="uint16", chunk_shape=(16, 16, 16),
                  compression=compression)
    vol, store = a.volume, a.volume.store
    store.io_concurrency = 32
    encodes = _Peak(vol._encode, 0.002)
    puts = _Peak(store.update, 0.03)  # a request's round trip: many wait at once
    monkeypatch.setattr(vol, "_encode", encodes)
    monkeypatch.setattr(store, "update", puts)
    data = np.random.default_rng(0).integers(0, 9, a.shape).astype("uint16")
    box = (slice(1, 63), slice(0, 64), slice(3, 250)) if partial else (slice(None),) * 3
    a[box] = data[box]
    assert puts.peak > 8
    if compression:
        assert encodes.peak <= (2 if large else 3)
    else:
        assert encodes.peak > 8
    expected = np.zeros_like(data)
    expected[box] = data[box]
    np.testing.assert_array_equal(vb.array(f"zarr3://{tmp_path / 'v'}")[...], expected)


@pytest.mark.parametrize("large", [False, True])
def test_concurrent_network_writes_share_the_process_encoders(tmp_path, monkeypatch, large):
    """Each write call had encoding slots of its own, so two writes at once (a relay's
    requests, a user's threads) compressed twice as many chunks at once on the same cores:
    the encoder threads (large chunks) and the slots (small ones) are the process's."""
    import functools

    import numpy as np

    import volbridge as vb
    from volbridge.engine import chunked

    monkeypatch.delenv("VOLBRIDGE_THREADS", raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(chunked, "ENCODER_MIN_BYTES", 0 if large else 1 << 40)
    threads_seen = set()

    def encode(encode, *a, **kw):
        threads_seen.add(threading.current_thread().name)
        return encode(*a, **kw)

    encodes = _Peak(encode, 0.002)  # one count over both volumes
    arrays = []
    for name in ("a", "b"):
        a = vb.create(f"zarr3://{tmp_path / name}", shape=(64, 64, 128), dtype="uint16", chunk_shape=(16, 16, 16),
                      compression="zstd")
        a.volume.store.io_concurrency = 32
        monkeypatch.setattr(a.volume, "_encode", functools.partial(encodes, a.volume._encode))
        monkeypatch.setattr(a.volume.store, "update", _Peak(a.volume.store.update, 0.03))
        arrays.append(a)
    rng = np.random.default_rng(1)
    data = [rng.integers(0, 9, a.shape).astype("uint16") for a in arrays]
    start = threading.Barrier(2)

    def write(i):
        start.wait()
        arrays[i][...] = data[i]

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # both calls encoded meanwhile, on the process's 2 encoder threads or in its 3 slots
    assert encodes.peak == (2 if large else 3)
    encoder_threads = {n for n in threads_seen if n.startswith("volbridge-encode")}
    assert encoder_threads == (threads_seen if large else set()) and len(threads_seen) >= 2
    for name, d in zip(("a", "b"), data):
        np.testing.assert_array_equal(vb.array(f"zarr3://{tmp_path / name}")[...], d)


@pytest.mark.parametrize("puts", ["loops", "batched"])
def test_a_write_of_few_chunks_does_not_queue_on_the_encoders(tmp_path, monkeypatch, puts):
    """A relay's one-chunk write waited behind the chunks a bulk write had queued on the encoder
    threads: a write of no more chunks than they have threads compresses them itself."""
    import numpy as np

    import volbridge as vb

    monkeypatch.delenv("VOLBRIDGE_THREADS", raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    a = vb.create(f"zarr3://{tmp_path / 'v'}", shape=(64, 64, 256), dtype="uint16", chunk_shape=(64, 64, 32),
                  compression="zstd")  # 256 KiB chunks: large enough for the encoders
    a.volume.store.io_concurrency = 32
    a.volume.store.batched_puts = puts == "batched"
    threads: list[str] = []
    real = a.volume._encode
    monkeypatch.setattr(a.volume, "_encode", lambda *args, **kw: (threads.append(threading.current_thread().name),
                                                                   real(*args, **kw))[1])
    data = np.random.default_rng(2).integers(0, 9, a.shape).astype("uint16")
    for chunks in (1, 2, 3, 8):
        threads.clear()
        a[:, :, : 32 * chunks] = data[:, :, : 32 * chunks]
        on_encoders = [t for t in threads if t.startswith("volbridge-encode")]
        assert len(threads) == chunks and (on_encoders == threads if chunks > 2 else not on_encoders), (chunks, threads)
    np.testing.assert_array_equal(a[...], data)


def test_a_forked_child_gets_encoders_and_slots_of_its_own():
    """A child forked while the parent's encoder threads are busy and its slots taken has none
    of those threads, and nobody to give the slots back."""
    import multiprocessing

    busy = threading.Event()
    ex = parallel.encoders()
    held = [ex.submit(busy.wait, 30) for _ in range(parallel.cores())]
    slots = parallel.encode_slots()
    taken = [slots.acquire(timeout=5) for _ in range(parallel.default_threads())]
    try:
        assert all(taken)
        with multiprocessing.get_context("fork").Pool(1) as p:
            assert p.apply_async(_encode_in_child).get(timeout=60) == "encoded"
    finally:
        for _ in taken:
            slots.release()
        busy.set()
        for f in held:
            f.result()


def _encode_in_child() -> str:
    slots = parallel.encode_slots()
    assert all(slots.acquire(timeout=5) for _ in range(parallel.default_threads()))
    return parallel.encoders().submit(lambda: "encoded").result(timeout=10)


_WRITE_DURING_SHUTDOWN = """
import sys, threading, time
import numpy as np
import volbridge as vb

shard = (64, 64, 64) if sys.argv[3] == "sharded" else None  # 2 chunks a shard: 4 shards, 3 written whole (a bulk)
a = vb.create(sys.argv[1], shape=(64, 64, 256), dtype="uint16", chunk_shape=(64, 64, 32), compression="zstd",
              shard_shape=shard)
a.volume.store.io_concurrency = 32  # as a network store: 256 KiB chunks go to the encoder threads
a.volume.store.batched_puts = sys.argv[2] == "batched"  # as S3 with libcurl PUTs: whole chunks by put_each
data = np.arange(a.size, dtype="uint16").reshape(a.shape) % 251

def write():
    time.sleep(0.5)  # the main thread has returned: the interpreter is shutting down
    a[...] = 0
    a[:, :, 16:] = data[:, :, 16:]  # whole chunks and partly covered ones
    a[:, :, :16] = data[:, :, :16]
    print("written", flush=True)

threading.Thread(target=write).start()
"""


@pytest.mark.parametrize("layout", ["chunks", "sharded"])
@pytest.mark.parametrize("puts", ["loops", "batched"])
def test_a_write_made_while_the_interpreter_shuts_down_is_whole(tmp_path, puts, layout):
    """A script that starts a writing thread and falls off its end: once shutdown begins the
    executors take no new work, and a write that handed its loops or chunks to them failed part
    way. They run in the writing thread then."""
    import subprocess
    import sys

    import numpy as np

    import volbridge as vb

    url = f"zarr3://{tmp_path / 'v'}"
    out = subprocess.run([sys.executable, "-c", _WRITE_DURING_SHUTDOWN, url, puts, layout], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "written", out.stderr[-3000:]
    a = vb.array(url)
    np.testing.assert_array_equal(a[...], np.arange(a.size, dtype="uint16").reshape(a.shape) % 251)


_EVERY_POOL_THREAD_WRITES = """
import concurrent.futures as cf, os, sys, threading
import volbridge as vb
from volbridge.engine.parallel import pool

vb.create(sys.argv[1], shape=(32, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8),
          shard_shape=(16, 16, 16) if sys.argv[3] == "sharded" else None)
vol = vb.array(sys.argv[1], mode="r+")
vol.volume.store.batched_puts = sys.argv[2] == "batched"  # as S3 with libcurl PUTs
n = pool()._max_workers
barrier = threading.Barrier(n)

def job(i):
    barrier.wait()  # every pool thread is a writer now: none is free for a write's helpers
    vol[0:16, 0:16, 0:20] = i  # whole chunks (a whole shard) and partly covered ones

futures = [pool().submit(job, i) for i in range(n)]
done, blocked = cf.wait(futures, timeout=60)
for f in done:
    f.result()
print(len(done), len(blocked), flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("layout", ["chunks", "sharded"])
@pytest.mark.parametrize("puts", ["loops", "batched"])
def test_writes_from_every_pool_thread_at_once_finish(tmp_path, puts, layout):
    """Writers in every thread of the engine's pool (a relay's request threads, units of a
    service): a write's helpers that no thread takes are run by the writer itself, not waited for."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _EVERY_POOL_THREAD_WRITES, f"zarr3://{tmp_path / 'v'}", puts, layout],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    finished, blocked = map(int, out.stdout.split())
    assert blocked == 0 and finished >= 64


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")
def test_loops_are_sized_to_the_cores_the_process_may_use():
    """A SLURM job or ``taskset`` gives a process fewer cores than the machine has; loops sized
    to the machine (os.cpu_count) only contended for them."""
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from volbridge.engine import parallel; print(parallel.cores(), parallel.default_threads())")
    env = {k: v for k, v in os.environ.items() if k != "VOLBRIDGE_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.split() == ["1", "2"]


def test_alongside_runs_side_nested_when_called_nested():
    seen = []
    with parallel.inline():
        parallel.alongside(lambda: seen.append(("main", parallel.inside())),
                           lambda: seen.append(("side", parallel.inside())))
    parallel.alongside(lambda: None, lambda: seen.append(("outer side", parallel.inside())))
    assert sorted(seen) == [("main", True), ("outer side", False), ("side", True)]


def test_alongside_raises_main_failure_after_side_finished():
    """When main fails, side is either cancelled before it started or waited for: nothing of the
    call runs after it has raised."""
    for delay in (0.0, 0.1):
        started, done = threading.Event(), threading.Event()

        def side():
            started.set()
            time.sleep(0.2)
            done.set()

        def main():
            time.sleep(delay)  # (long enough for a pool thread to start side)
            raise KeyError("main failed")

        with pytest.raises(KeyError, match="main failed"):
            parallel.alongside(main, side)
        assert done.is_set() or not started.is_set()
        time.sleep(0.05)
        assert started.is_set() == done.is_set()
    assert started.is_set()  # the second round waited for a side that had started


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are 3.11+")
def test_alongside_names_side_failure_when_both_fail():
    started = threading.Event()

    def side():
        started.set()
        raise OSError("side failed")

    def main():
        assert started.wait(5)
        raise KeyError("main failed")

    with pytest.raises(KeyError, match="main failed") as raised:
        parallel.alongside(main, side)
    assert any("OSError: side failed" in note for note in raised.value.__notes__)


@pytest.mark.parametrize("chained", [False, True], ids=["values", "values-of-values"])
def test_closing_ahead_cancels_values_not_started_and_waits_for_those_being_made(chained):
    """A write that fails part-way closes its values: once that returns, no value is still being
    made (reading the caller's array after the write raised), and none not started starts."""
    lock = threading.Lock()
    started, finished = set(), set()
    first_started = threading.Event()

    def make(i):
        with lock:
            started.add(i)
        first_started.set()
        time.sleep(0.2)
        with lock:
            finished.add(i)
        return i

    items = range(40)
    if chained:  # as object_store's transport compression takes a write's values made ahead
        items = parallel.ahead(lambda i: i, items, depth=4)
    values = parallel.ahead(make, items, depth=4)
    assert next(values).result() == 0  # the driver took one (its own to wait for); others are queued or being made
    assert first_started.wait(5)
    values.close()
    with lock:
        assert started == finished, "a value is still being made after the iterator closed"
        seen = set(started)
    time.sleep(0.3)
    with lock:
        assert started == seen, "a value started after the iterator closed"
        assert len(started) < 40  # those not started were cancelled


def test_the_default_put_each_closes_its_values_when_a_put_fails(tmp_path):
    from volbridge.errors import StoreError
    from volbridge.kv.memory import MemoryStore

    class Failing(MemoryStore):
        def update(self, key, fn, **kw):
            if key == "b":
                raise StoreError("PUT b failed")
            return super().update(key, fn, **kw)

    closed = []

    def values():
        try:
            yield from (b"1", b"2", b"3")
        finally:
            closed.append(True)

    made = values()  # held here: only put_each can close it
    with pytest.raises(StoreError, match="PUT b failed"):
        Failing().put_each(["a", "b", "c"], made)
    assert closed == [True]
