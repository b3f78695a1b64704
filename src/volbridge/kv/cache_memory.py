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
from .cache_tier import ABSENT, BUCKETS, CacheStats, CacheTier, _Absent

__all__ = ["MemoryCache"]


class _State:
    """What a memory cache holds, apart from its backing store."""

    __slots__ = ("lock", "stats", "entries", "gens", "inflight", "stamp", "__weakref__")

    def __init__(self):
        self.lock = threading.Lock()
        # The stats share the cache's lock: bytes_cached, entries and evictions change together
        # with the entries themselves, under one acquisition.
        self.stats = CacheStats(_lock=self.lock)
        self.entries: OrderedDict[str, bytes | _Absent] = OrderedDict()
        self.gens = [0] * BUCKETS  # per bucket: bumped when a write begins and when it ends
        self.inflight = [0] * BUCKETS  # per bucket: writes between begin and end
        self.stamp: dict[str, str] = {}  # CacheTier.document_stamp: {key: digest}


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
                state = _State()
                if shared:
                    _registry[key] = state
        self._state = state  # held, so the shared state lives as long as a handle uses it
        self._lock, self._stats, self._entries = state.lock, state.stats, state.entries
        self._gens, self._inflight = state.gens, state.inflight

    @staticmethod
    def _bucket(key: str) -> int:
        return hash(key) % BUCKETS

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

    def _begin_write(self, keys: list[str]) -> dict[str, int]:
        with self._lock:
            for key in keys:
                b = self._bucket(key)
                self._gens[b] += 1
                self._inflight[b] += 1
                self._remove_locked(key)
            # The generations once this write has begun (after all its own bumps).
            return {k: self._gens[self._bucket(k)] for k in keys}

    def _end_write(self, ticket: dict[str, int], values: Mapping[str, bytes | memoryview | _Absent]) -> None:
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
        old = self._entries.pop(key, None)
        if old is not None:
            self._stats.bytes_cached -= self._charge(old)
            self._stats.entries -= 1

    def _install_locked(self, key: str, value: bytes | _Absent) -> None:
        self._remove_locked(key)
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

    def invalidate(self) -> None:
        """Drop every entry, and refuse every fill that began before (its bucket moved on)."""
        with self._lock:
            for b in range(BUCKETS):
                self._gens[b] += 1
        self.clear()

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
