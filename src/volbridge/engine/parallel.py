"""Run per-chunk work on a few long-lived loops, with the bytes in flight bounded.

Each call starts ``n`` loops that take chunks from one shared list until it is empty; the calling
thread is one of them. Compared with a future per chunk this removes the submit/wait round trip
that dominated small-chunk reads (44% of GIL-holding samples when profiled). Chunk work releases the
GIL (file I/O, libdeflate, imagecodecs, numpy copies), so loops sized to the cores keep them busy;
network stores will want more loops than cores, hence the ``loops`` argument. At most ``n`` chunks
are in flight at once, with ``n * bytes_per_item`` kept under :data:`MAX_BYTES_IN_FLIGHT`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

from ..environment import number

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


@functools.cache
def cores() -> int:
    """The cores this process may run on, read once (the engine asks per shard): its CPU
    affinity where the system has one (a SLURM job, ``taskset`` or a container's cpuset gets
    fewer than the machine has, and loops sized to the machine would only contend), else
    ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Loops per call for local work: one more than the cores (``VOLBRIDGE_THREADS`` overrides).

    The extra loop runs while another waits to take the GIL back after a syscall; on 2 cores it
    measured ~8% faster than 2 loops for cutouts and gzip reads, and 4 loops no better than 3.
    """
    return number("VOLBRIDGE_THREADS", cores() + 1, least=1)


#: Upper bound on bytes held by in-flight chunk tasks (decoded chunk plus its stored bytes).
MAX_BYTES_IN_FLIGHT = number("VOLBRIDGE_MAX_BYTES_IN_FLIGHT", 512 * 2**20, least=1)


def pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A forked child inherits a pool object whose threads do not exist: make a new one.
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max(64, default_threads()), thread_name_prefix="volbridge")
            _pool_pid = os.getpid()
        return _pool


_encode_slots: dict[int, threading.BoundedSemaphore] = {}
_encoders: dict[int, ThreadPoolExecutor] = {}


def encode_slots() -> threading.BoundedSemaphore:
    """The process's slots for compressing chunks in the loops of network writes
    (:func:`default_threads` of them). A network write runs 32 loops so that its PUTs overlap;
    all 32 compressing at once finished their chunks together, late, with the server waiting
    for the first PUT. Shared by the writes running at once (a relay's requests, a user's
    threads), which would otherwise each compress that many chunks at once."""
    return _shared(_encode_slots, default_threads(), threading.BoundedSemaphore)


def encoders() -> ThreadPoolExecutor:
    """The process's threads for compressing the large chunks of network writes, one per core
    (fewer where ``VOLBRIDGE_THREADS`` says so). Compressed in the slots above, each chunk
    started in whichever of the 32 loops came next, its zstd context and caches cold; here the
    same few threads compress every chunk (64^3 zarr3 zstd write on SeaweedFS: wall -12 to -15
    ms of ~260 in four interleaved runs). Handing a chunk over costs ~75 us of CPU, more than
    small chunks gain: the writer decides which go here (``chunked.ENCODER_MIN_BYTES``). A
    chunk queues behind those of the other writes running meanwhile."""
    return _shared(_encoders, encoder_threads(), lambda n: ThreadPoolExecutor(n, thread_name_prefix="volbridge-encode"))


def encoder_threads() -> int:
    """How many threads :func:`encoders` has."""
    return min(cores(), default_threads())


def ahead(fn: Callable[[T], object], items: Iterable, depth: int | None = None) -> Iterator[Future]:
    """Futures of ``fn(item)`` for each of ``items``, in order, computed on the :func:`encoders`
    at most ``depth`` (default: twice their threads) beyond the one last taken, so that a
    consumer that takes them as it needs them (a PUT driver) finds them made. An item that is
    itself a Future has ``fn`` applied to its result once it is done: queued then, never waited
    for on an encoder thread. Closing the iterator cancels what it made ahead."""
    depth = depth if depth is not None else 2 * encoder_threads()
    made: collections.deque[Future] = collections.deque()
    try:
        for item in items:
            made.append(_then(item, fn) if isinstance(item, Future) else _submit(fn, item))
            if len(made) > depth:
                yield made.popleft()
        while made:
            yield made.popleft()
    finally:
        # Values not started are cancelled; those being made are waited for, so that nothing of
        # a write that failed or stopped still reads the caller's array once it has returned.
        busy = []
        for f in made:
            if not f.cancel():
                work = getattr(f, "work", None)  # a value chained on another (_then): its own task
                if work is not None:
                    work.cancel()
                busy.append(f)
        close = getattr(items, "close", None)
        if close is not None:  # another ahead(): it cancels what it made too
            close()
        wait(busy)


def _submit(fn: Callable, *args) -> Future:
    """``fn(*args)`` on the encoders, or here once the interpreter is shutting down (executors
    then take no new work)."""
    try:
        return encoders().submit(fn, *args)
    except RuntimeError:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as e:
            done.set_exception(e)
        return done


def _then(first: Future, fn: Callable) -> Future:
    """A Future of ``fn(first.result())``, run on the encoders once ``first`` is done. It is
    running from then on (cancelling it fails, as for a task started), and its ``work`` attribute
    is the task of ``fn``, which may still be cancelled before it starts."""
    out: Future = Future()

    def settle(f: Future) -> None:
        try:
            out.set_result(f.result())
        except BaseException as e:
            out.set_exception(e)

    def chain(f: Future) -> None:
        if f.cancelled():
            out.cancel()
        # (waiters, concurrent.futures.wait, hear of a cancellation only through this call)
        if not out.set_running_or_notify_cancel():
            return
        error = f.exception()
        if error is not None:
            out.set_exception(error)
            return
        out.work = _submit(fn, f.result())
        out.work.add_done_callback(settle)

    first.add_done_callback(chain)
    return out


def _shared(made: dict, n: int, make):
    with _pool_lock:
        if n not in made:
            made[n] = make(n)
        return made[n]


def _after_fork_in_child() -> None:
    # The child has none of its parent's threads: a lock one of them held stays held, a slot
    # one of them took is never given back, and work handed to the executors would never run.
    global _pool_lock, _pool
    _pool_lock = threading.Lock()
    _pool = None
    _encode_slots.clear()
    _encoders.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_inside = threading.local()  # .loop: this thread is one of the loops of a run_bounded call


def alongside(main: Callable[[], None], side: Callable[[], None] | None = None) -> None:
    """Run ``main`` here and ``side`` meanwhile on the :func:`pool`; ``side`` runs here after
    ``main`` when no pool thread has started it (every one busy, maybe each a writer waiting so:
    waiting for it then would never end). ``side`` runs as nested in a pool thread when this call
    is itself nested (:func:`inside`). Returns once neither runs, raising ``main``'s failure
    (with a note naming ``side``'s, when both failed), else ``side``'s."""
    beside = None
    if side is not None:
        if inside():
            side = functools.partial(_inline_call, side)
        try:
            beside = pool().submit(side)
        except RuntimeError:  # the interpreter is shutting down: after main, here
            pass
    try:
        main()
    except BaseException as e:
        if beside is not None and not beside.cancel():
            wait([beside])
            other = beside.exception()
            if other is not None and hasattr(e, "add_note"):  # (3.11+) the user sees both failures
                e.add_note(f"meanwhile the work beside it failed too: {type(other).__name__}: {other}")
        raise
    if beside is None or beside.cancel():
        if side is not None:
            side()
    else:
        beside.result()


def _inline_call(fn: Callable[[], None]) -> None:
    with inline():
        fn()


def inside() -> bool:
    """Whether this thread runs one of the loops of a :func:`run_bounded` call (or is marked by
    :func:`inline`): its nested local calls run in it."""
    return getattr(_inside, "loop", False)


@contextlib.contextmanager
def inline():
    """Run the calls made inside as nested ones (in this thread): for a worker process whose
    siblings already keep the other cores busy."""
    outer = inside()
    _inside.loop = True
    try:
        yield
    finally:
        _inside.loop = outer


def run_bounded(fn: Callable[[T], None], items: Iterable[T], bytes_per_item: int, loops: int | None = None,
                local: bool | None = None) -> None:
    """Run ``fn`` over ``items``; the first exception stops the other loops and is raised.

    ``local``: the work is CPU and local I/O (default: when ``loops`` is not given), as opposed
    to requests that mostly wait on a network. A local call made from inside another call's loop
    runs its items in the calling thread: the outer loops already keep every core busy, and
    nested loops only multiply GIL hand-offs and thread wake-ups (measured: a quarter of the wall
    time of a downsample, whose units each read and write a few chunks). Network calls still fan
    out, however few their items, since their loops mostly wait.
    """
    items = list(items)
    n = min(len(items), loops or default_threads(), max(1, MAX_BYTES_IN_FLIGHT // max(1, bytes_per_item)))
    if local is None:
        local = loops is None
    if n <= 1 or (local and inside()):
        for item in items:
            fn(item)
        return
    counter = itertools.count()  # next() on a count is atomic under the GIL
    errors: list[BaseException] = []

    def loop() -> None:
        with inline():
            _loop()

    def _loop() -> None:
        while not errors:
            i = next(counter)
            if i >= len(items):
                return
            try:
                fn(items[i])
            except BaseException as e:
                errors.append(e)
                return

    helpers = []
    try:
        for _ in range(n - 1):
            helpers.append(pool().submit(loop))
    except RuntimeError:  # the interpreter is shutting down (executors take no new work): the caller's loop does it all
        pass
    loop()
    # helpers not started yet are cancelled (the caller's loop already did their share) and not
    # waited for: a cancelled future counts as finished only once a worker dequeued it, and with
    # every pool thread a writer waiting so, none would
    wait([f for f in helpers if not f.cancel()])
    if errors:
        raise errors[0]
