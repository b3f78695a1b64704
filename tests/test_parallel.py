"""engine.parallel.run_bounded: every item once, the first error raised, and nested calls that
ask for no more than the cores run in the calling loop's thread."""

from __future__ import annotations

import threading
import time

import pytest

from volbridge.engine import parallel
from volbridge.engine.parallel import default_threads, run_bounded


def test_every_item_runs_once_over_several_threads():
    seen, threads = [], set()

    def fn(i):
        time.sleep(0.002)  # long enough that the helpers take items too
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


def test_nested_calls_asking_for_network_concurrency_still_fan_out():
    wide = default_threads() + 5
    inner = set()
    lock = threading.Lock()

    def unit(_u):
        def request(_r):
            time.sleep(0.005)  # a request in flight: the loops overlap
            with lock:
                inner.add(threading.get_ident())

        run_bounded(request, range(wide), 1, loops=wide)

    run_bounded(unit, range(2), 1, loops=2)
    assert len(inner) > 2


def test_a_top_level_call_on_one_item_does_not_mark_the_thread():
    """One item runs in the caller without loops: a nested call below it may still fan out."""
    threads = set()

    def outer(_):
        def inner(_i):
            time.sleep(0.002)
            threads.add(threading.get_ident())

        run_bounded(inner, range(12), 1, loops=3)

    run_bounded(outer, [0], 1)
    assert len(threads) > 1
