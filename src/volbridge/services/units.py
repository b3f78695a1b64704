"""Running a service's units of work: on local threads or a Dask cluster, resumable.

A service splits its work into units that never write the same object (they follow the
destination's chunks), so units may run in any order, anywhere. Each unit is a picklable call
``fn(*args, unit)``; on a cluster the workers open volumes from their URLs (once per worker
process, :func:`open_cached`). Finished units are appended to a journal (one line each), so a run
that is killed or fails part-way, started again with the same parameters, does only what is left;
the journal is removed when the job completes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import shutil
import threading
from concurrent.futures import BrokenExecutor, Executor
from concurrent.futures import as_completed as completed
from pathlib import Path
from typing import Any, Callable, Sequence


from ..engine.identity import metadata_digest, volume_url
from ..engine.parallel import cores, run_bounded
from ..errors import InvalidArgumentError, URLError, VersionChangedError, VolbridgeError

#: Where journals live (``VOLBRIDGE_JOBS_DIR`` overrides).
JOBS_DIR = Path(os.environ.get("VOLBRIDGE_JOBS_DIR", "~/.cache/volbridge/jobs")).expanduser()


@functools.lru_cache(maxsize=64)
def open_cached(url: str, mode: str, mip: int = 0, version: str = ""):
    """A volume handle by URL, kept for this process: workers reuse their open stores. ``version``
    (a digest of the metadata the client saw, when given) is checked against the volume opened
    and keys the handle: a worker never works on a volume that changed since the job started (a
    scale added, the volume recreated with other chunks), nor reuses a handle opened before."""
    from ..api import array

    try:
        arr = array(url, mode=mode, mip=mip)
    except URLError as e:
        if "mem://" in url or url.startswith("mem:"):  # (a worker said 'no volume found at mem://m1')
            raise InvalidArgumentError(f"{url} lives in the memory of the process that made it: workers in other "
                                       "processes cannot open it; run the job on local threads (executor=None) or in "
                                       "this process, or keep the volume in a store the workers reach") from e
        raise
    if version and metadata_digest(arr.volume) != version:
        raise VersionChangedError(f"{url} changed since the job started (its metadata differ from what the job "
                                  "was planned on); run the job again")
    return arr


def volume_ref(volume) -> tuple[str, str]:
    """What a worker needs to open ``volume`` itself: its absolute URL and a digest of its
    metadata (:func:`open_cached` checks it)."""
    return volume_url(volume), metadata_digest(volume)


def open_ref(ref, mode: str):
    """The Volume of a :func:`volume_ref` (opened once per worker process and version), or
    ``ref`` itself when it already is one (local threads)."""
    if isinstance(ref, tuple):
        url, version = ref
        return open_cached(url, mode, 0, version).volume
    return ref


#: ``executor="processes"`` runs a local job's units in worker processes, each running its units
#: one after another: Python work between the chunk syscalls holds the GIL, and on two cores a
#: downsample ran slower on three threads than on one (measured), where two processes ran ~1.4x
#: one. Like any multiprocessing code, a script that asks for it needs an ``if __name__ ==
#: "__main__":`` guard (the workers import the script); the command line always uses it.
#: ``VOLBRIDGE_PROCESSES``: 0 never, 1 always.
PROCESSES = "processes"

#: What the fork server imports (and warms, see :mod:`._worker_preload`) once, so that workers
#: start with it loaded; a missing optional extra is skipped. The first job's list is the one the
#: server keeps, so every service lists all of it.
PRELOAD = ["volbridge.services.mesh", "volbridge.services.skeleton", "volbridge.services._worker_preload"]


def process_workers(volume, num_units: int, executor, bytes_per_unit: int = 1) -> int:
    """How many worker processes a local job gets: 0 to run on threads instead (not asked for,
    one core, one unit, a volume that cannot be reopened from a URL, a process that cannot have
    children, or units so big that two at a time would pass the engine's memory bound)."""
    import multiprocessing

    from ..engine.parallel import MAX_BYTES_IN_FLIGHT

    setting = os.environ.get("VOLBRIDGE_PROCESSES", "")
    if setting == "0" or not (executor == PROCESSES or (executor is None and setting == "1")):
        return 0
    if multiprocessing.current_process().daemon or "forkserver" not in multiprocessing.get_all_start_methods():
        return 0  # a daemonic process (a pool or dask worker) cannot have children
    url = volume.url
    # in-memory stores and server remotes (tokens) cannot be reopened from a URL alone
    if getattr(volume, "store", None) is None or "mem://" in url or url.startswith("mem:"):
        return 0
    n = min(cores(), num_units, MAX_BYTES_IN_FLIGHT // max(1, bytes_per_unit))
    return n if n >= 2 else 0


def _adopt_environment(env: dict) -> None:
    """A worker takes the job's environment: the fork server was started by an earlier job and
    kept that moment's variables (credentials and endpoints set since would be missing)."""
    os.environ.clear()
    os.environ.update(env)


#: Worker processes stay this long after their job, for the next one: starting a pool and its
#: workers and opening the volume in them cost ~50 ms a job (measured), a sixth of a mip.
IDLE_SECONDS = 30.0
_shared: dict = {"pool": None, "key": None, "users": 0, "timer": None}
_shared_lock = threading.Lock()


class _JobPool(Executor):
    """One job's view of the shared worker pool: its volume reference, and no shutdown (the
    pool outlives the job; it ends :data:`IDLE_SECONDS` after the last one)."""

    def __init__(self, pool, workers: int, ref):
        self._pool, self._max_workers, self.ref = pool, workers, ref

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def _new_pool(workers: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: a plain fork of this threaded process could inherit a lock held by a thread
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_adopt_environment, initargs=(dict(os.environ),))


def _end_if_idle(pool) -> None:
    with _shared_lock:
        if _shared["pool"] is pool and not _shared["users"]:
            _shared["pool"] = _shared["key"] = None
            pool.shutdown(wait=False)


@contextlib.contextmanager
def process_pool(volume, num_units: int, executor, bytes_per_unit: int = 1):
    """Worker processes for a local job that asks for them (None otherwise, see
    :func:`process_workers`), forked from a server that has imported :data:`PRELOAD`;
    ``pool.ref`` is the volume's :func:`volume_ref`. The processes are shared by the jobs of
    this process that want as many with the same environment, and end when idle."""
    workers = process_workers(volume, num_units, executor, bytes_per_unit)
    if not workers:
        yield None
        return
    key = (workers, hashlib.sha1(repr(sorted(os.environ.items())).encode()).hexdigest())
    with _shared_lock:
        if _shared["timer"] is not None:
            _shared["timer"].cancel()
            _shared["timer"] = None
        pool = _shared["pool"]
        if pool is not None and (getattr(pool, "_broken", False) or _shared["key"] != key) and not _shared["users"]:
            pool.shutdown(wait=False)  # a dead worker, or another environment or size: start anew
            pool = _shared["pool"] = None
        shared = pool is None or _shared["key"] == key
        if pool is None:
            pool = _shared["pool"] = _new_pool(workers)
            _shared["key"] = key
        if shared:
            _shared["users"] += 1
    if not shared:  # the shared pool is busy with another environment: one of this job's own
        with _new_pool(workers) as own:
            yield _JobPool(own, workers, volume_ref(volume))
        return
    try:
        yield _JobPool(pool, workers, volume_ref(volume))
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if not _shared["users"] and _shared["pool"] is pool:
                timer = _shared["timer"] = threading.Timer(IDLE_SECONDS, _end_if_idle, (pool,))
                timer.daemon = True
                timer.start()


#: At most this many units per task given to a worker process.
BATCH_UNITS = 4


def _run_batch(fn: Callable, args: tuple, batch: list[tuple[int, Any]]) -> list[int]:
    """A worker process's share of units, one after another (nested engine calls run inline:
    the other workers keep the other cores busy); the indices done."""
    from ..engine.parallel import inline

    with inline():
        for _, unit in batch:
            fn(*args, unit)
    return [i for i, _ in batch]


class Journal:
    """The units of job ``key`` that have finished, in ``JOBS_DIR/<digest of key>``."""

    def __init__(self, key: dict, directory: Path | None = None):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = (directory or JOBS_DIR) / f"{key.get('service', 'job')}-{digest}.done"
        self._lock = threading.Lock()
        self.done: set[int] = set()
        if self.path.exists():
            for line in self.path.read_text().split():
                if line.isdigit():
                    self.done.add(int(line))

    def mark(self, index: int) -> None:
        with self._lock:
            self.done.add(index)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:  # one short line per append: whole or absent
                f.write(f"{index}\n")

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def start_over(self) -> None:
        """Forget the finished units: their output is known to be gone."""
        with self._lock:
            self.done.clear()
            self.path.unlink(missing_ok=True)


class PieceJournal:
    """Finished units of a job whose units return results instead of writing them (the label
    services gather mesh and skeleton pieces before joining them): each unit's result is kept in
    ``JOBS_DIR/<service>-<digest>/<unit>.pkl`` until the job completes, so a rerun with the same
    parameters recomputes only the missing units. The files are this user's own cache."""

    def __init__(self, key: dict, directory: Path | None = None):
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = (directory or JOBS_DIR) / f"{key.get('service', 'job')}-{digest}"

    def load(self) -> dict[int, Any]:
        done = {}
        for f in self.path.glob("*.pkl") if self.path.is_dir() else ():
            if f.stem.isdigit():
                try:
                    done[int(f.stem)] = pickle.loads(f.read_bytes())
                except Exception:  # noqa: BLE001 - a damaged entry is recomputed, not trusted
                    f.unlink(missing_ok=True)
        return done

    def load_one(self, index: int) -> Any:
        return pickle.loads((self.path / f"{index}.pkl").read_bytes())

    def save(self, index: int, result: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{index}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, self.path / f"{index}.pkl")  # whole or absent

    def finish(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def running(self):
        """Held while the job runs: a second run of the same job (same parameters, same journal)
        in another process would otherwise delete the pieces this one is reading back."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as f:  # inside, so finish() leaves nothing behind
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VolbridgeError(
                    f"the same job is already running in another process (journal {self.path}); wait for it, "
                    "or pass resume=False to run independently"
                ) from None
            yield self


def run_units(units: Sequence[Any], fn: Callable, args: tuple, *, executor=None, journal: Journal | None = None,
              bytes_per_unit: int = 1 << 20, progress: Callable[[int, int], None] | None = None) -> None:
    """``fn(*args, unit)`` for every unit not yet in ``journal``: on local threads (``executor``
    None), in a :func:`process_pool`, or on a ``dask.distributed.Client``; the journal is finished
    once every unit has run."""
    todo = [i for i in range(len(units)) if journal is None or i not in journal.done]
    total, count = len(units), [len(units) - len(todo)]
    lock = threading.Lock()

    def finished(i: int) -> None:
        if journal is not None:
            journal.mark(i)
        with lock:
            count[0] += 1
            n = count[0]
        if progress is not None:
            progress(n, total)

    if isinstance(executor, Executor):  # a process_pool: small batches of units
        # a few units per task halve the hand-offs; more would journal late and, after a unit
        # fails, leave more queued work running
        per = max(1, min(BATCH_UNITS, len(todo) // (8 * max(1, getattr(executor, "_max_workers", 1)))))
        batches = [[(i, units[i]) for i in todo[k:k + per]] for k in range(0, len(todo), per)]
        futures = [executor.submit(_run_batch, fn, args, b) for b in batches]
        try:
            for fut in completed(futures):
                for i in fut.result():  # raises the unit's own error here, naming it
                    finished(i)
        except BrokenExecutor as e:  # a worker killed (out of memory, a signal) or crashed
            for fut in futures:
                fut.cancel()
            raise VolbridgeError(f"a worker process died while running this job's units (out of memory, or killed?); "
                                 f"{total - count[0]} of {total} units did not finish. Finished units are journaled: "
                                 "run the job again to resume") from e
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    elif executor is None or executor == PROCESSES:  # local threads
        def one(i: int) -> None:
            fn(*args, units[i])
            finished(i)

        run_bounded(one, todo, bytes_per_unit)
    else:
        if not hasattr(executor, "map") or not hasattr(executor, "gather"):
            raise InvalidArgumentError(f"executor must be None, 'processes' or a dask.distributed.Client, not {executor!r}")
        from distributed import as_completed

        futures = {executor.submit(fn, *args, units[i], pure=False): i for i in todo}
        for fut in as_completed(list(futures)):
            fut.result()  # raises the unit's own error here, naming it
            finished(futures[fut])
    if journal is not None:
        journal.finish()
