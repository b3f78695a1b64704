"""An in-memory LRU cache in front of any store, bounded in bytes.

``MemoryCache(backing, max_bytes)`` keeps recently used values in an ordered dict: a hit moves
the key to the most recently used end, and an insert first evicts from the least recently used end
until the sum of cached value sizes plus the new one fits in ``max_bytes``. A value larger than
``max_bytes`` is never cached. One lock guards the dict, the byte count and the fill/write
protocol's counters (see :mod:`.cache_tier`); it is held only for dict operations, never across
a backing store call, so threads fetch from the backing store in parallel.

Cached values are immutable ``bytes`` shared with callers (``get`` returns the cached object
itself), so a hit costs no copy; ``get_transient`` returns the same.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Mapping

from .base import KVStore
from .cache_tier import ABSENT, ABSENT_CHARGE, BUCKETS, CacheStats, CacheTier, _Absent

__all__ = ["MemoryCache"]


def _bucket(key: str) -> int:
    return hash(key) % BUCKETS


class _State:
    """What a memory cache holds, apart from its backing store."""

    __slots__ = ("identity", "lock", "stats", "entries", "gens", "inflight", "stamp", "stopped", "__weakref__")

    def __init__(self, identity: str):
        self.identity = identity.rstrip("/") + "/"  # keys are named under it
        self.lock = threading.Lock()
        # The stats share the cache's lock: bytes_cached, entries and evictions change together
        # with the entries themselves, under one acquisition.
        self.stats = CacheStats(_lock=self.lock)
        self.entries: OrderedDict[str, bytes | _Absent] = OrderedDict()
        self.gens = [0] * BUCKETS  # per bucket: bumped when a write begins and when it ends
        self.inflight = [0] * BUCKETS  # per bucket: writes between begin and end
        self.stamp: dict[str, str] = {}  # CacheTier.document_stamp: {key: digest}
        self.stopped = False  # MemoryCache.stop: nothing is cached any more

    def begin_foreign_write(self, keys: list[str]) -> None:
        """Another shared cache writes these keys' objects: drop them here, and refuse fills of
        their buckets until it ends (:meth:`end_foreign_write`)."""
        with self.lock:
            for key in keys:
                b = _bucket(key)
                self.gens[b] += 1
                self.inflight[b] += 1
                self._drop_locked(key)

    def end_foreign_write(self, keys: list[str]) -> None:
        with self.lock:
            for key in keys:
                b = _bucket(key)
                self.inflight[b] -= 1
                self.gens[b] += 1
                self._drop_locked(key)  # a fill that read the old value before the write began

    def _drop_locked(self, key: str) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.stats.bytes_cached -= ABSENT_CHARGE if old is ABSENT else len(old)
            self.stats.entries -= 1

    def drop_all(self) -> None:
        with self.lock:
            for b in range(BUCKETS):
                self.gens[b] += 1
            self.entries.clear()
            self.stats.bytes_cached = 0
            self.stats.entries = 0


_registry: "weakref.WeakValueDictionary[tuple, _State]" = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class MemoryCache(CacheTier):
    """LRU cache of ``backing`` in this process's memory, at most ``max_bytes`` of values."""

    def __init__(self, backing: KVStore, max_bytes: int, *, cache_absent: bool = False, cache_writes: bool = True,
                 shared: bool = False):
        """``shared``: one cache for every shared MemoryCache of this process over the same objects
        (:attr:`KVStore.identity`) with the same settings, as a disk cache directory is shared: a
        write through one handle is then seen by the others (each keeps its own backing store)."""
        super().__init__(backing, max_bytes, cache_absent=cache_absent, cache_writes=cache_writes)
        key = (self.identity, self.max_bytes, self.cache_absent, self.cache_writes)
        with _registry_lock:
            state = _registry.get(key) if shared else None
            if state is None:
                state = _State(self.identity)
                if shared:
                    _registry[key] = state
        self._state = state  # held, so the shared state lives as long as a handle uses it
        self._shared = shared
        self._lock, self._stats, self._entries = state.lock, state.stats, state.entries
        self._gens, self._inflight = state.gens, state.inflight

    _bucket = staticmethod(_bucket)

    # -- hooks (callers of the _locked helpers hold self._lock) -----------------------------------
    def _lookup(self, key: str, transient: bool) -> bytes | _Absent | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def _ticket(self, keys: list[str]) -> dict[str, int]:
        gens = self._gens
        with self._lock:
            return {k: gens[self._bucket(k)] for k in keys}

    def _fill(self, ticket: dict[str, int], items: Mapping[str, bytes | memoryview | _Absent]) -> None:
        items = {k: v if v is ABSENT or type(v) is bytes else bytes(v) for k, v in items.items() if self._cacheable(v)}
        if not items:
            return
        with self._lock:
            for key, value in items.items():
                b = self._bucket(key)
                if self._gens[b] == ticket[key] and not self._inflight[b]:
                    self._install_locked(key, value)

    def _peers(self, keys: list[str]) -> list[tuple[_State, list[str]]]:
        """The other shared memory caches of this process that may hold objects of ``keys``, each
        with the keys it names them by: the same objects under another bound or setting, or
        through a parent or child store (an OME-Zarr image and its scale array). A write through
        this cache drops their copies too, as one through a disk cache drops the copy every
        handle of the directory sees."""
        mine = self._state.identity
        out = []
        for st in self._overlapping():
            if mine.startswith(st.identity):  # theirs is this store or a parent of it
                under = mine[len(st.identity):]
                named = [under + key for key in keys]
            else:  # a child: the keys beneath its prefix
                under = st.identity[len(mine):]
                named = [key[len(under):] for key in keys if key.startswith(under)]
            if named:
                out.append((st, named))
        return out

    def _begin_write(self, keys: list[str]) -> tuple[dict[str, int], list]:
        peers = self._peers(keys)
        for st, named in peers:
            st.begin_foreign_write(named)
        with self._lock:
            for key in keys:
                b = self._bucket(key)
                self._gens[b] += 1
                self._inflight[b] += 1
                self._remove_locked(key)
            # The generations once this write has begun (after all its own bumps).
            return {k: self._gens[self._bucket(k)] for k in keys}, peers

    def _end_write(self, begun: tuple[dict[str, int], list], values: Mapping[str, bytes | memoryview | _Absent]) -> None:
        ticket, peers = begun
        for st, named in peers:
            st.end_foreign_write(named)
        values = {k: v if v is ABSENT or type(v) is bytes else bytes(v) for k, v in values.items()}
        with self._lock:
            for key in ticket:
                self._inflight[self._bucket(key)] -= 1
            for key, gen in ticket.items():
                b = self._bucket(key)
                value = values.get(key)
                # Nobody else began or ended a write in the bucket since this one began, and
                # nobody is still writing there: this write's value is the latest.
                if value is not None and not self._inflight[b] and self._gens[b] == gen:
                    self._install_locked(key, value)
                else:
                    self._remove_locked(key)
            for key in ticket:
                self._gens[self._bucket(key)] += 1

    # -- the LRU ----------------------------------------------------------------------------------
    def _remove_locked(self, key: str) -> None:
        self._state._drop_locked(key)

    def _install_locked(self, key: str, value: bytes | _Absent) -> None:
        self._remove_locked(key)
        if self._state.stopped:
            return
        charge = self._charge(value)
        st = self._stats
        entries = self._entries
        while entries and st.bytes_cached + charge > self.max_bytes:
            _, old = entries.popitem(last=False)
            st.bytes_cached -= self._charge(old)
            st.entries -= 1
            st.evictions += 1
        entries[key] = value
        st.bytes_cached += charge
        st.entries += 1

    def stop(self) -> None:
        """Drop every entry and keep none from now on, in every cache sharing this one's state:
        another process may write these objects now (a writable handle was sent to one), and
        no write there reaches this process's memory."""
        with self._lock:
            self._state.stopped = True
        self.invalidate()

    def invalidate(self) -> None:
        """Drop every entry, and refuse every fill that began before (its bucket moved on); in
        the other shared caches of the same objects too (:meth:`_peers`)."""
        self._state.drop_all()
        for st in self._overlapping():
            st.drop_all()

    def _overlapping(self) -> list[_State]:
        """The other shared states of this process over some of the same objects: the same
        identity, or a parent's or a child's."""
        if not self._shared:
            return []
        mine = self._state.identity
        with _registry_lock:
            states = list(_registry.values())
        return [st for st in states if st is not self._state and (mine.startswith(st.identity) or st.identity.startswith(mine))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._stats.bytes_cached = 0
            self._stats.entries = 0

    def _stamp_get(self, keys: list[str]) -> dict[str, str]:
        with self._lock:
            stamp = self._state.stamp
            return {key: stamp[key] for key in keys if key in stamp}

    def _stamp_put(self, digests: dict[str, str]) -> None:
        with self._lock:
            self._state.stamp.update(digests)

    def cached_keys(self) -> list[str]:
        """The cached keys, least recently used first (for inspection and tests)."""
        with self._lock:
            return list(self._entries)
