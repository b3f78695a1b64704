"""A shared thread pool and a runner that bounds the bytes in flight.

Chunk work (fetch, decode, copy into the output) runs in threads: file reads, libdeflate,
imagecodecs and numpy copies release the GIL. At most ``window`` tasks are submitted at once, where
``window`` is the pool size cut down so that ``window * bytes_per_task`` stays under the budget:
a huge cutout or copy never holds more than that many decoded chunks at a time.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


def default_threads() -> int:
    env = os.environ.get("VOLBRIDGE_THREADS")
    if env:
        return max(1, int(env))
    return max(4, 2 * (os.cpu_count() or 1))


#: Upper bound on bytes held by in-flight chunk tasks (decoded chunk plus its stored bytes).
MAX_BYTES_IN_FLIGHT = int(os.environ.get("VOLBRIDGE_MAX_BYTES_IN_FLIGHT", 512 * 2**20))


def pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A forked child inherits a pool object whose threads do not exist: make a new one.
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(default_threads(), thread_name_prefix="volbridge")
            _pool_pid = os.getpid()
        return _pool


def run_bounded(fn: Callable[[T], None], items: Iterable[T], bytes_per_item: int) -> None:
    """Run ``fn`` over ``items`` in the pool; the first exception cancels the rest and is raised."""
    items = list(items)
    if not items:
        return
    if len(items) == 1:
        fn(items[0])
        return
    ex = pool()
    window = max(1, min(ex._max_workers, MAX_BYTES_IN_FLIGHT // max(1, bytes_per_item)))
    it = iter(items)
    running: set[Future] = set()
    try:
        for item in it:
            running.add(ex.submit(fn, item))
            if len(running) >= window:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
        for f in running:
            f.result()
    except BaseException:
        for f in running:
            f.cancel()
        wait(running)
        raise
