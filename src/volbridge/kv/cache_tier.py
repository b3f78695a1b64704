"""What every cache tier shares: the read and write paths, and the counters.

A cache tier is a :class:`KVStore` in front of another one (the *backing* store). Reads look in
the cache, then in the backing store, and fill the cache on a miss. Writes go to the backing store
first and then replace or drop the cached copy, so a reader through the same cache never sees a
stale value once a write through it has returned. ``update`` calls the backing store's own
``update`` (its lock or conditional PUT keeps the read-modify-write atomic) and caches the value it
returns. ``list`` passes through. A write that bypasses the cache (made directly to the backing
store, by another machine or another tool) is not seen until the cached copy is evicted: a cache
suits data that changes only through it, or not at all. Opening a volume checks its metadata
documents (:meth:`CacheTier.revalidate`), so a volume recreated behind the cache is caught.

The hard part is the race between a fill and a write. A reader that misses fetches the old value
from the backing store; a writer replaces it and updates the cache; then the reader's fill lands
and the cache holds the old value for good. The protocol below closes every such window, for
threads of one process (:mod:`.cache_memory`) and for processes sharing a directory
(:mod:`.cache_disk`) alike. Keys hash onto a fixed set of *buckets*, each with a generation
number and a count of writes in flight:

- a reader takes a *ticket* (the generations of its keys' buckets) before it asks the backing
  store, and its fill is installed only if the generation is unchanged and no write is in flight
  in that bucket, checked atomically with the install;
- a writer, before it touches the backing store, bumps the generation, registers itself as in
  flight and drops the cached copy; after the backing write it unregisters, installs its value
  only if no other write began or ended in the bucket meanwhile (same generation, none other in
  flight), and bumps the generation again, so that any reader whose backing read may predate the
  write is refused.

So a fill is installed only when no write overlapped the reader's backing read, and a written
value only when no other write overlapped its own; anything doubtful is dropped and refetched. Two
keys in one bucket only ever cost each other a fill, never correctness. Failures of the cache
itself (a full disk, say) on the read path degrade to passing through (counted in
``stats.errors``); a cache that cannot drop a copy before a write raises instead, since writing on
would leave the stale copy behind.

Tiers implement five hooks: ``_lookup``, ``_ticket``, ``_fill``, ``_begin_write`` and
``_end_write``.
"""

from __future__ import annotations

import hashlib
import itertools
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from .base import KVStore, ObjectStat, StoreStats, Updater
from .ranges import RangeReader

#: Buckets of the fill/write protocol. More buckets mean fewer fills refused because a
#: different key of the same bucket was written meanwhile.
BUCKETS = 4096
#: What a cached "this key is absent" marker counts against ``max_bytes`` (with ``cache_absent``).
ABSENT_CHARGE = 64
#: Keys of a ``put_each`` written under one write ticket: their values are held until it ends.
PUT_BATCH = 256


class _Absent:
    """The cached marker of a key known to be absent (only with ``cache_absent=True``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()

#: The names (last path component) of metadata documents: a value written through a cache under
#: such a name updates its digest (:meth:`CacheTier.document_stamp`). Opens add the names of the
#: documents they read (a format's markers, a scale's array), so no format list is kept here.
DOCUMENT_NAMES: set[str] = set()


def document_digest(value: bytes | memoryview | None) -> str:
    """What a stamp keeps of a document: its SHA-256, or "absent"."""
    return "absent" if value is None or value is ABSENT else hashlib.sha256(value).hexdigest()


@dataclass
class CacheStats(StoreStats):
    """Counters of a cache tier (``cache.stats``). Increments are thread-safe.

    The inherited ``requests``, ``bytes_read`` and ``bytes_written`` count what the cache passed
    to its backing store (the backing store's own ``stats`` count its retries and conflicts).
    """

    hits: int = 0  # lookups answered by the cache (a cached absence counts too)
    misses: int = 0  # lookups the cache could not answer
    evictions: int = 0  # entries evicted to stay within max_bytes (by this process)
    bytes_cached: int = 0  # bytes held now (a disk cache: by every process sharing it)
    entries: int = 0  # entries held now
    reads: int = 0  # reads passed through to the backing store (get, get_first, get_many, exists, stat, list)
    writes: int = 0  # writes passed through (put, delete, delete_many, update)
    corrupt: int = 0  # cached entries that failed verification, dropped and refetched
    errors: int = 0  # failures of the cache itself that degraded to passing through
    invalidations: int = 0  # times every entry was dropped because metadata changed behind the cache


class CacheTier(KVStore):
    """Base of :class:`MemoryCache` and :class:`DiskCache`: the read and write paths."""

    #: Whether a miss may read the backing store with ``get_transient`` (the tier copies the
    #: bytes out at once, as a file write does) instead of ``get``.
    _fill_from_transient = False

    def __init__(self, backing: KVStore, max_bytes: int, *, cache_absent: bool = False, cache_writes: bool = True):
        if not isinstance(backing, KVStore):
            raise InvalidArgumentError(f"a cache needs a KVStore to wrap, got {type(backing).__name__}")
        if max_bytes is None or int(max_bytes) < 0:
            raise InvalidArgumentError(f"max_bytes must be a byte count >= 0, got {max_bytes!r}")
        self.backing = backing
        self.cheap_misses = backing.cheap_misses
        self.io_concurrency = backing.io_concurrency
        self.batched_puts = backing.batched_puts
        #: The backing store's URL, so error messages name the real location.
        self.url = backing.url
        self._identity = backing.identity
        self.max_bytes = int(max_bytes)
        #: Cache "absent" answers too (invalidated by writes like any entry). Saves a round trip
        #: per absent chunk of a sparse volume, but a key created behind the cache's back stays
        #: absent to it until evicted.
        self.cache_absent = bool(cache_absent)
        #: Keep the values written through the cache (True) or only drop the old copy (False,
        #: for bulk writes that would otherwise evict what readers use).
        self.cache_writes = bool(cache_writes)
        self._stats = CacheStats()

    @property
    def stats(self) -> CacheStats:
        return self._stats

    @property
    def identity(self) -> str:
        return self._identity

    # -- hooks ------------------------------------------------------------------------------------
    @abstractmethod
    def _lookup(self, key: str, transient: bool) -> bytes | memoryview | _Absent | None:
        """The cached value (marked most recently used), ABSENT, or None on a miss."""

    @abstractmethod
    def _ticket(self, keys: list[str]) -> Any:
        """Taken before a backing read of ``keys``; later passed to :meth:`_fill`."""

    @abstractmethod
    def _fill(self, ticket: Any, items: Mapping[str, bytes | memoryview | _Absent]) -> None:
        """Cache what a backing read returned, unless a write overlapped the read."""

    @abstractmethod
    def _begin_write(self, keys: list[str]) -> Any:
        """Drop the cached copies of ``keys`` and register a write in flight. Raises on failure."""

    @abstractmethod
    def _end_write(self, ticket: Any, values: Mapping[str, bytes | memoryview | _Absent]) -> None:
        """Unregister the write and cache ``values`` (those written) where no other write overlapped."""

    def _charge(self, value: bytes | memoryview | _Absent) -> int:
        return ABSENT_CHARGE if value is ABSENT else len(value)

    def _cacheable(self, value: bytes | memoryview | _Absent) -> bool:
        if value is ABSENT and not self.cache_absent:
            return False
        return self._charge(value) <= self.max_bytes

    # -- reads ------------------------------------------------------------------------------------
    def _backing_get(self, key: str, transient: bool) -> bytes | memoryview | None:
        if transient and self._fill_from_transient:
            value = self.backing.get_transient(key)
        else:
            value = self.backing.get(key)
        self._stats.add(misses=1, reads=1, requests=1, bytes_read=0 if value is None else len(value))
        return value

    def _read(self, key: str, transient: bool) -> bytes | memoryview | None:
        cached = self._lookup(key, transient)
        if cached is not None:
            self._stats.add(hits=1)
            return None if cached is ABSENT else cached
        ticket = self._ticket([key])
        value = self._backing_get(key, transient)
        self._fill(ticket, {key: ABSENT if value is None else value})
        return value

    def get(self, key: str) -> bytes | None:
        return self._read(key, False)  # type: ignore[return-value]

    def range_reader(self, key: str) -> RangeReader:
        """A cached value serves its ranges; otherwise the backing store's own ranged reads,
        without filling the cache (a shard read for one chunk must not fetch the whole shard,
        and may be larger than the cache)."""
        cached = self._lookup(key, False)
        if cached is not None:
            self._stats.add(hits=1)
            return RangeReader(None if cached is ABSENT else cached, f"{self.url}/{key}")
        self._stats.add(misses=1)
        return self.backing.range_reader(key)

    def get_transient(self, key: str) -> bytes | memoryview | None:
        return self._read(key, True)

    def get_first(self, keys: Iterable[str], *, transient: bool = False) -> tuple[str, bytes | memoryview] | None:
        keys = list(keys)
        for i, key in enumerate(keys):
            cached = self._lookup(key, transient)
            if cached is None:
                break
            self._stats.add(hits=1)
            if cached is not ABSENT:
                return key, cached
        else:
            return None  # every key is cached as absent
        # keys[i] is not cached: ask the backing store about it and every later key, in one call
        # (an object store may probe them concurrently).
        rest = keys[i:]
        ticket = self._ticket(rest)
        get_first = self.backing.get_first
        found = get_first(rest, transient=True) if transient and self._fill_from_transient else get_first(rest)
        self._stats.add(misses=1, reads=1, requests=1, bytes_read=0 if found is None else len(found[1]))
        fills: dict[str, bytes | memoryview | _Absent] = {}
        for key in rest:
            if found is not None and key == found[0]:
                fills[key] = found[1]
                break
            fills[key] = ABSENT
        self._fill(ticket, fills)
        return found

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Hits from the cache; the misses in one ``get_many`` of the backing store (which an object
        store runs concurrently), filled under one ticket like any other read."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        missed: list[str] = []
        for key in keys:
            cached = self._lookup(key, False)
            if cached is None:
                missed.append(key)
            elif cached is not ABSENT:
                found[key] = cached if type(cached) is bytes else bytes(cached)
        self._stats.add(hits=len(keys) - len(missed))
        if missed:
            ticket = self._ticket(missed)
            fetched = self.backing.get_many(missed)
            self._stats.add(misses=len(missed), reads=1, requests=1, bytes_read=sum(map(len, fetched.values())))
            self._fill(ticket, {key: fetched.get(key, ABSENT) for key in missed})
            found.update(fetched)
        return {key: found[key] for key in keys if key in found}

    def fetch_each(self, keys: Iterable[str], fn, *, heavy: bool = False, nbytes: int = 1) -> None:
        """Hits go to ``fn`` first, on the cores' loops; then the misses through one ``fetch_each``
        of the backing store, each filled as it arrives, under one ticket taken before any of them
        was asked for."""
        from ..engine.parallel import run_bounded  # plain threading (see KVStore.get_many)

        keys = list(dict.fromkeys(keys))
        transient = self._fill_from_transient
        missed: list[str] = []

        def look(key: str) -> None:
            cached = self._lookup(key, True)
            if cached is None:
                missed.append(key)  # one append: atomic under the GIL
            else:
                self._stats.add(hits=1)
                fn(key, None if cached is ABSENT else cached)

        # A hit costs a file read and checksum (disk) and then fn's work (placing, decoding): on
        # the cores' loops, as a local store's reads run. One by one in this thread, a warm disk
        # cache read 16 MiB in 16.6 ms where the same chunks as local files took 8.9.
        run_bounded(look, keys, nbytes, local=True)
        if not missed:
            return
        missing = set(missed)
        missed = [key for key in keys if key in missing]  # in the callers' order, not the loops'
        ticket = self._ticket(missed)

        def arrived(key: str, value: bytes | memoryview | None) -> None:
            self._stats.add(misses=1, reads=1, requests=1, bytes_read=0 if value is None else len(value))
            self._fill(ticket, {key: ABSENT if value is None else value})
            fn(key, value)

        if transient:
            self.backing.fetch_each(missed, arrived, heavy=heavy, nbytes=nbytes)
        else:  # values the tier keeps must outlive the backing store's buffers
            self.backing.fetch_each(missed, lambda key, value: arrived(key, value if value is None or type(value) is bytes
                                                                        else bytes(value)), heavy=heavy, nbytes=nbytes)

    def stat(self, key: str) -> ObjectStat | None:
        """Passed through: a cached copy knows its size but not the backing store's version."""
        self._stats.add(reads=1, requests=1)
        return self.backing.stat(key)

    def exists(self, key: str) -> bool:
        cached = self._lookup(key, True)
        if cached is not None:
            self._stats.add(hits=1)
            return cached is not ABSENT
        self._stats.add(misses=1, reads=1, requests=1)
        return self.backing.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._stats.add(reads=1, requests=1)
        return self.backing.list(prefix)

    # -- writes -----------------------------------------------------------------------------------
    def _write(self, keys: list[str], op: Callable[[], dict], nbytes: Callable[[dict], int]) -> dict:
        """Run the backing write ``op`` between :meth:`_begin_write` and :meth:`_end_write`.

        ``op`` returns {key: value now stored (ABSENT once deleted)}; what of it is cacheable is
        cached. A failed write caches nothing (the copies are already dropped)."""
        docs = {k for k in keys if k.rpartition("/")[2] in DOCUMENT_NAMES}
        if docs:
            self._check_documents_before_writing(list(docs))
        ticket = self._begin_write(list(dict.fromkeys(keys)))
        written: dict = {}
        try:
            written = op()
        finally:
            keep = {k: v for k, v in written.items() if (v is ABSENT or self.cache_writes) and self._cacheable(v)}
            self._end_write(ticket, keep)
        # Metadata written through the cache is current in it: its digest follows (a digest left
        # behind would take the next open's look at it for a change behind the cache; none at
        # all would miss a change behind the cache once the LRU evicted the copy). A failed
        # write keeps the old digest: what the store holds is unknown, and a difference found
        # later costs a drop, never stale data.
        if docs:
            self.set_document_stamp({k: document_digest(v) for k, v in written.items() if k in docs})
        self._stats.add(writes=1, requests=1, bytes_written=nbytes(written))
        return written

    def _check_documents_before_writing(self, keys: list[str]) -> None:
        """Before a write replaces the digests of documents ``keys``: whether they changed behind
        the cache since their digests were taken (a handle opened before a recreate writing its
        own metadata, say), which drops every entry as an open would; replaced unchecked, the
        change would go unseen. One batch of reads, for metadata writes only."""
        prior = self.document_stamp(keys)
        if prior:
            now = self._current(list(prior))
            self._stats.add(reads=1, requests=1)
            if any(document_digest(now.get(key)) != digest for key, digest in prior.items()):
                self.drop_changed()

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        kw = {"content_encoding": content_encoding} if content_encoding else {}

        def op() -> dict:
            self.backing.put(key, value, **kw)
            return {key: value}

        self._write([key], op, lambda w: len(value))

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        kw = {"content_encoding": content_encoding} if content_encoding else {}

        def op() -> dict:
            return {key: self.backing.update(key, fn, needs_old=needs_old, **kw)}

        return self._write([key], op, lambda w: len(w.get(key, b"")))[key]

    def put_each(self, keys, values, *, content_encoding: str | None = None, nbytes: int = 1) -> None:
        """The backing store's ``put_each`` in batches, each under one write ticket: at most
        :data:`PUT_BATCH` keys and ``MAX_BYTES_IN_FLIGHT`` of values, which are held until their
        batch ends where they are to be cached."""
        from ..engine.parallel import MAX_BYTES_IN_FLIGHT

        keys = list(keys)
        values = iter(values)
        size = max(1, min(PUT_BATCH, MAX_BYTES_IN_FLIGHT // max(1, nbytes)))
        for start in range(0, len(keys), size):
            batch = keys[start:start + size]
            kept: dict = {}  # the values to cache (or their Futures), by key
            sizes: list[int] = []

            def counted(f: Future, sizes=sizes) -> None:
                if not f.cancelled() and f.exception() is None:
                    sizes.append(len(f.result()))

            def op(batch=batch, kept=kept, sizes=sizes) -> dict:
                def taken():
                    for key, value in zip(batch, itertools.islice(values, len(batch))):
                        if self.cache_writes or key.rpartition("/")[2] in DOCUMENT_NAMES:
                            kept[key] = value
                        elif isinstance(value, Future):
                            value.add_done_callback(counted)
                        else:
                            sizes.append(len(value))
                        yield value

                self.backing.put_each(batch, taken(), content_encoding=content_encoding, nbytes=nbytes)
                return {k: v.result() if isinstance(v, Future) else v for k, v in kept.items()}

            self._write(batch, op, lambda w, sizes=sizes: sum(sizes) + sum(len(v) for v in w.values()))

    def delete(self, key: str) -> None:
        def op() -> dict:
            self.backing.delete(key)
            return {key: ABSENT}

        self._write([key], op, lambda w: 0)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return

        def op() -> dict:
            self.backing.delete_many(keys)
            return dict.fromkeys(keys, ABSENT)

        self._write(keys, op, lambda w: 0)

    def write_through(self, keys: Iterable[str], op: Callable[[], dict]) -> dict:
        """See :meth:`KVStore.write_through`; the backing store (another tier, maybe) runs ``op``."""
        keys = list(dict.fromkeys(keys))
        return self._write(keys, lambda: self.backing.write_through(keys, op), lambda w: 0)

    # -- staleness --------------------------------------------------------------------------------
    def revalidate(self, keys: Iterable[str], used: Mapping[str, bytes | None] | None = None) -> bool:
        """Compare the cached copies of ``keys`` (a volume's metadata documents) with the backing
        store's. A difference means the objects changed without this cache (a volume recreated
        through a handle without it, or by another tool), so none of its entries for this store
        can be trusted: they are all dropped (:meth:`invalidate`). Whether that happened. Keys not
        cached cost no request. ``used``: compare these values ({key: bytes, or None for absent})
        instead, what an open took from the cache (another open may have dropped the copies
        since, which leaves nothing cached to compare)."""
        cached = self.cached(keys) if used is None else {k: ABSENT if v is None else v for k, v in used.items()}
        if not cached:
            return False
        fresh = self._current(list(cached))  # one batch: an object store asks concurrently
        self._stats.add(reads=1, requests=1)
        return self._drop_if_changed(cached, fresh)

    def refresh(self, keys: Iterable[str]) -> dict[str, bytes]:
        """:meth:`revalidate` that reads every one of ``keys`` from the backing store, cached or
        not, in one batch, caches what it read (so the next open has copies to compare), and
        returns it as ``get_many`` does: an open's marker documents, current, in the round trip
        that checks them."""
        keys = list(dict.fromkeys(keys))
        for _ in range(2):
            cached = self.cached(keys)
            ticket = self._ticket(keys)
            fresh = self._current(keys)
            self._stats.add(reads=1, requests=1, bytes_read=sum(map(len, fresh.values())))
            # A drop refuses every fill that began before it, this one's too: then read them
            # again (rare: the volume changed), so copies are cached to compare at the next open.
            if not self._drop_if_changed(cached, fresh):
                break
            cached = {}
        # only what the cache lacks: an unchanged copy is not written again (an index
        # transaction and a file per open of a disk cache, which processes share)
        self._fill(ticket, {key: fresh.get(key, ABSENT) for key in keys if key not in cached})
        return fresh

    def _current(self, keys: list[str]) -> Mapping[str, bytes]:
        """The backing store's values of ``keys`` as they are now. Through a cache tier beneath
        (a memory tier over a disk tier), after that tier compared its own copies with what is
        beneath it: its copies are stale exactly when this tier's are, and read as they are they
        would hide the change from both."""
        if isinstance(self.backing, CacheTier):
            return self.backing.refresh(keys)
        return self.backing.get_many(keys)

    def cached(self, keys: Iterable[str]) -> dict:
        """The cached copies of ``keys`` there are (ABSENT for a cached absence); no request."""
        return {key: value for key in keys if (value := self._lookup(key, False)) is not None}

    def _drop_if_changed(self, cached: dict, fresh: Mapping) -> bool:
        for key, value in cached.items():
            now = fresh.get(key)
            if (now is not None) if value is ABSENT else (now is None or bytes(now) != bytes(value)):
                self.drop_changed()
                return True
        return False

    def invalidate(self) -> None:
        """Drop every entry this cache holds for its backing store."""
        self.clear()

    def drop_changed(self) -> None:
        """:meth:`invalidate` because the metadata changed behind the cache, counted in
        ``stats.invalidations``."""
        self.invalidate()
        self._stats.add(invalidations=1)
        if isinstance(self.backing, CacheTier):  # beneath, the same objects changed behind it too
            self.backing.drop_changed()

    # Digests of the metadata documents opens through the cache saw, kept apart from the entries
    # (never evicted): a volume recreated behind the cache after the LRU evicted its cached
    # documents, but not its chunks, leaves no copy to compare; the digests still differ. They are
    # kept per document, named as the entries are, so a scale array opened on its own and the
    # image that holds it (two stores, one object) share them as they share entries.
    def document_stamp(self, keys: Iterable[str]) -> dict[str, str]:
        """``{document key: digest}`` kept for those of ``keys`` that opens through the cache saw
        or writes through it wrote ({} where unreadable); where this tier has none, those of the
        tiers beneath it (a fresh memory tier over a disk tier that opens in other processes
        stamped)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        for tier in self.tiers():
            missing = [key for key in keys if key not in found]
            if not missing:
                break
            found.update(tier._stamp_get(missing))
        return found

    def set_document_stamp(self, digests: Mapping[str, str]) -> None:
        """Keep ``digests`` for the next opens (beside the other documents' digests), in the
        tiers beneath too."""
        if digests:
            for tier in self.tiers():
                tier._stamp_put(dict(digests))

    def tiers(self) -> list["CacheTier"]:
        """This tier and the cache tiers beneath it, outermost first."""
        out, tier = [], self
        while isinstance(tier, CacheTier):
            out.append(tier)
            tier = tier.backing
        return out

    @abstractmethod
    def _stamp_get(self, keys: list[str]) -> dict[str, str]:
        """The digests kept for ``keys`` (failures degrade to {}: the stamp is an extra check)."""

    @abstractmethod
    def _stamp_put(self, digests: dict[str, str]) -> None:
        """Keep ``digests`` (failures degrade)."""

    # -- the rest ---------------------------------------------------------------------------------
    @abstractmethod
    def clear(self) -> None:
        """Drop every cached entry (the backing store is untouched)."""

    def close(self) -> None:
        """Release what the cache holds open; the object must not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backing!r}, max_bytes={self.max_bytes})"
