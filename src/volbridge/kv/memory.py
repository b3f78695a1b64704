"""An in-process store: a dict of bytes, shared by name.

``mem://name`` opens the same store from anywhere in the process, which makes it the scratch
space for tests and for volumes that never need to touch disk.
"""

from __future__ import annotations

import threading
import uuid
from typing import Iterable, Iterator

from .base import KVStore, ObjectStat, StoreStats, Updater

_named: dict[str, "MemoryStore"] = {}
_named_lock = threading.Lock()


class MemoryStore(KVStore):
    def __init__(self, name: str | None = None):
        # unique for good: id() is reused once a store is freed, and a disk cache keyed by the
        # name then served a freed store's values for the new one (a review found)
        self.name = name or f"anon-{uuid.uuid4().hex}"
        self.url = f"mem://{self.name}"
        self.stats = StoreStats()
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, list] = {}  # key -> [lock, updates holding or waiting for it]

    @classmethod
    def named(cls, name: str) -> "MemoryStore":
        with _named_lock:
            store = _named.get(name)
            if store is None:
                store = _named[name] = cls(name)
            return store

    def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        self.stats.add(requests=1, bytes_read=0 if value is None else len(value))
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        # A dict lookup is cheaper than handing it to another thread: a plain loop.
        found = {}
        for key in dict.fromkeys(keys):
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def stat(self, key: str) -> ObjectStat | None:
        value = self.get(key)
        return None if value is None else ObjectStat(len(value))

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        # Memory holds values as given: transport compression has no medium to save here.
        self._data[key] = bytes(value)
        self.stats.add(requests=1, bytes_written=len(value))

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([k for k in list(self._data) if k.startswith(prefix)])

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        # a lock per key being updated, dropped once no update holds it (not one per key ever written)
        with self._lock:
            held = self._key_locks.get(key)
            if held is None:
                held = self._key_locks[key] = [threading.Lock(), 0]
            held[1] += 1
        try:
            with held[0]:
                old = None
                if needs_old:  # counted as the other stores count it: a read, then a write
                    old = self._data.get(key)
                    self.stats.add(requests=1, bytes_read=0 if old is None else len(old))
                new = bytes(fn(old))
                self._data[key] = new
                self.stats.add(requests=1, bytes_written=len(new))
                return new
        finally:
            with self._lock:
                held[1] -= 1
                if not held[1]:
                    del self._key_locks[key]
