"""One version's view of a versioned key space, as DVID keeps its data: copy on write along a DAG.

Every version (node) writes under its own prefix ``<node>/<key>`` of the base store; a read walks
the node's ancestry, nearest first, and returns the first entry found. A delete writes a tombstone,
so an ancestor's value stops showing through. Stored entries carry a one-byte tag (value or
tombstone) in front of the value. So a branch costs nothing until it is written to, a committed
(locked) node never changes, and reading any version is reading its prefix chain.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import ReadOnlyError
from .base import KVStore, Updater

VALUE, TOMBSTONE = b"\x01", b"\x00"


class VersionedStore(KVStore):
    """``base`` as seen from ``ancestry[0]``, whose parents (nearest first) follow it."""

    def __init__(self, base: KVStore, ancestry: Sequence[str], *, writable: bool = True):
        if not ancestry:
            raise ValueError("a version needs at least its own node id")
        self.base = base
        self.ancestry = list(ancestry)
        self.node = self.ancestry[0]
        self.writable = writable
        self.url = f"{base.url.rstrip('/')}@{self.node}"
        self.stats = base.stats
        self.cheap_misses = base.cheap_misses
        self.io_concurrency = base.io_concurrency

    @property
    def identity(self) -> str:
        return f"{self.base.identity.rstrip('/')}@{self.node}"

    def _own(self, key: str) -> str:
        return f"{self.node}/{key}"

    def _entry(self, key: str, transient: bool = False):
        """The nearest entry for ``key`` (tagged bytes), or None."""
        get = self.base.get_transient if transient else self.base.get
        for node in self.ancestry:
            entry = get(f"{node}/{key}")
            if entry is not None:
                return entry
        return None

    @staticmethod
    def _value(entry):
        if entry is None or entry[:1] == TOMBSTONE:
            return None
        return entry[1:]

    def get(self, key: str) -> bytes | None:
        value = self._value(self._entry(key))
        return None if value is None else bytes(value)

    def get_transient(self, key: str):
        return self._value(self._entry(key, transient=True))

    def _check(self, key: str) -> None:
        if not self.writable:
            raise ReadOnlyError(f"version {self.node} is committed (locked): {key!r} cannot change; write to a new version")

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        self._check(key)
        self.base.put(self._own(key), VALUE + bytes(value), content_encoding=content_encoding)

    def delete(self, key: str) -> None:
        self._check(key)
        if self._entry(key) is not None:
            self.base.put(self._own(key), TOMBSTONE)

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        self._check(key)

        def tagged(own: bytes | None) -> bytes:
            if own is not None:
                old = self._value(own)
            else:  # not written in this version yet: the ancestors' value is the old one
                old = self._value(self._entry(key)) if needs_old else None
            return VALUE + fn(None if old is None else bytes(old))

        return self.base.update(self._own(key), tagged, needs_old=True, content_encoding=content_encoding)[1:]

    def list(self, prefix: str = "") -> Iterator[str]:
        seen: set[str] = set()
        for node in self.ancestry:
            n = len(node) + 1
            for full in self.base.list(f"{node}/{prefix}"):
                key = full[n:]
                if key in seen:
                    continue
                seen.add(key)
                if self._value(self._entry(key)) is not None:
                    yield key
