"""A JSON document on disk that threads and processes change safely: the relay's record of the
resources and repos it keeps itself."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class JSONDocument:
    """``path`` holds one JSON object. :meth:`changing` yields it under an exclusive lock (a
    re-entrant thread lock plus an flock on ``.<name>.lock`` beside it, for other processes) and
    rewrites it atomically (temp file + rename) if it changed; :meth:`read` is a plain read."""

    def __init__(self, path: str | os.PathLike, empty: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = self.path.parent / f".{self.path.name}.lock"
        self._empty = empty
        #: Held across a change; also by owners that need a change and other state to move together.
        self.lock = threading.RLock()

    def read(self) -> dict:
        with self.lock:
            try:
                return json.loads(self.path.read_text())
            except FileNotFoundError:
                return copy.deepcopy(self._empty)

    @contextmanager
    def changing(self) -> Iterator[dict]:
        with self.lock, open(self._lockfile, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self.read()
            before = json.dumps(doc, sort_keys=True)
            yield doc
            if json.dumps(doc, sort_keys=True) != before:
                tmp = self.path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                tmp.write_text(json.dumps(doc, indent=1))
                os.replace(tmp, self.path)
