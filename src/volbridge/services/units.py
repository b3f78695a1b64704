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
from pathlib import Path
from typing import Any, Callable, Sequence

from ..engine.parallel import run_bounded
from ..errors import InvalidArgumentError, VolbridgeError

#: Where journals live (``VOLBRIDGE_JOBS_DIR`` overrides).
JOBS_DIR = Path(os.environ.get("VOLBRIDGE_JOBS_DIR", "~/.cache/volbridge/jobs")).expanduser()


@functools.lru_cache(maxsize=64)
def open_cached(url: str, mode: str, mip: int = 0, version: str = ""):
    """A volume handle by URL, kept for this process: workers reuse their open stores. ``version``
    (a digest of the metadata the client saw) keys it too: a worker never reuses a handle opened
    before the volume changed (a scale added, the volume recreated with other chunks)."""
    from ..api import array

    return array(url, mode=mode, mip=mip)


def volume_ref(volume) -> tuple[str, str]:
    """What a worker needs to open ``volume`` itself: its URL and a digest of its metadata."""
    doc = json.dumps(volume.metadata_json(), sort_keys=True, default=str)
    return volume.url, hashlib.sha1(doc.encode()).hexdigest()


def open_ref(ref, mode: str):
    """The Volume of a :func:`volume_ref` (opened once per worker process and version), or
    ``ref`` itself when it already is one (local threads)."""
    if isinstance(ref, tuple):
        url, version = ref
        return open_cached(url, mode, 0, version).volume
    return ref


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
    """``fn(*args, unit)`` for every unit not yet in ``journal``, locally or on ``executor``
    (a ``dask.distributed.Client``); the journal is finished once every unit has run."""
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

    if executor is None or executor == "processes":  # I/O and numpy kernels: threads suffice
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
