"""The key-value store interface every backend implements.

Stores move bytes by key and know nothing of volumes or codecs. Besides get/put they offer
``update``: an atomic read-modify-write of one key. It is the one primitive the engine needs for
partial-chunk writes, and each backend implements it the way its medium allows (a lock on local
files, a conditional PUT on object stores), so concurrent writers never lose each other's updates.
``get_many`` fetches a batch of keys at once (concurrently where each lookup is a round trip) and
``stat`` answers size and version without the value.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from concurrent.futures import Future
from typing import Callable, Iterable, Iterator, Optional, Sequence

from ..errors import StoreError, VolbridgeError
from .ranges import RangeReader

#: ``update`` callback: receives the current value (None when absent) and returns the new one.
Updater = Callable[[Optional[bytes]], bytes]


@dataclass
class StoreStats:
    """Counters a user can read (``store.stats``). Increments are thread-safe."""

    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    retries: int = 0
    conflicts: int = 0  # conditional writes that lost a race and were retried
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass(frozen=True)
class ObjectStat:
    """What :meth:`KVStore.stat` says about a key that exists.

    ``size`` counts the bytes that ranged reads (``get_part``, ``range_reader``) address: the
    stored bytes, so for a value an object store keeps transport-compressed (``Content-Encoding``)
    it is the compressed size. ``etag`` and ``version`` identify this version of the object where
    the medium has such a thing (an object store's ETag and generation/version id, a file's
    modification time and size); None where it has not.
    """

    size: int
    etag: str | None = None
    version: str | None = None


def close_values(values) -> None:
    """Close a ``put_each``'s ``values`` once it is over, when they are a generator: one of
    :func:`volbridge.engine.parallel.ahead` then cancels the values it made ahead and waits for
    those being made (a failed write must not go on reading the caller's array)."""
    close = getattr(values, "close", None)
    if close is not None:
        close()


class KVStore(ABC):
    """Bytes by ``/``-separated key, relative to the store's root.

    Values go in and come out as the caller's bytes. ``content_encoding`` on a write asks the store
    to keep the object compressed for transport in its medium's own convention (CloudFiles'
    ``<key>.gz`` on disk, the ``Content-Encoding`` header on object stores); reads undo it, so the
    caller never sees the transport compression.
    """

    #: A URL that reopens this store (``file:///...``, ``mem://name``).
    url: str
    #: Counters for this store (requests, bytes, retries, conflicts).
    stats: StoreStats
    #: True where a lookup of an absent key costs microseconds (disk, memory), not a round trip:
    #: formats then may probe fallback names, such as other layouts of the same chunk.
    cheap_misses: bool = True
    #: Chunk requests to keep in flight for this store, or None for the local default (cores + 1).
    #: Network stores want many more: latency, not CPU, bounds them.
    io_concurrency: int | None = None
    #: Whether :meth:`put_each` drives many writes at once by itself (an object store's PUTs over
    #: libcurl): a writer then hands it all its whole-object overwrites instead of running loops
    #: that write one each.
    batched_puts: bool = False

    @property
    def identity(self) -> str:
        """Names the stored objects rather than the handle: equal for two handles over the same
        objects (a directory through a symlink, say) and different wherever the objects could
        differ (the same bucket on two endpoints). Caches key their entries by it."""
        return self.url

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or None when the key is absent. Any other failure raises StoreError."""

    @abstractmethod
    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        """Store ``value`` under ``key``, replacing any previous value atomically."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with ``prefix`` (in no particular order)."""

    @abstractmethod
    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        """Atomically replace the value of ``key`` by ``fn(old)`` and return the new value.

        ``needs_old=False`` tells the store that ``fn`` ignores its argument (a whole-object
        overwrite), so it may skip the read, but the write is still serialised against other
        updates of the same key.
        """

    def put_each(self, keys: Sequence[str], values: Iterable[bytes | Future], *, content_encoding: str | None = None,
                 nbytes: int = 1) -> None:
        """Replace the value of each of ``keys`` by the matching one of ``values``, each as a blind
        ``update(key, ..., needs_old=False)``. ``values`` yields one value per key, in order: bytes,
        or a Future of them; it is taken from as the store is ready for the next value (a
        generator may make them as it goes). ``nbytes`` is what one value holds at most, for the
        bound on bytes in flight. The first failure raises; the other keys may or may not have
        been written by then. This default writes one at a time: stores with ``batched_puts``
        write many at once."""
        try:
            for key, value in zip(keys, values, strict=True):
                if isinstance(value, Future):
                    value = value.result()
                self.update(key, lambda _old, v=value: v, needs_old=False, content_encoding=content_encoding)
        finally:
            close_values(values)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove each of ``keys`` (absent ones are fine)."""
        for key in keys:
            self.delete(key)

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def stat(self, key: str) -> ObjectStat | None:
        """Size and version of ``key`` (see :class:`ObjectStat`), or None when it is absent.
        This default reads the value; stores that can ask for metadata alone override it."""
        value = self.get(key)
        return None if value is None else ObjectStat(len(value))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The values of those of ``keys`` that exist, by key (absent keys are left out).

        A failure to read any key raises, naming it: a key is never left out because its read
        failed. This default fetches the keys concurrently on the engine's shared thread pool,
        ``io_concurrency`` requests at a time (cores + 1 for local stores), since each lookup of a
        network store is a round trip; stores where a lookup costs next to nothing (memory)
        override it with a plain loop, and wrappers (prefixes, caches) with their own batching.
        """
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}

        def fetch(key: str) -> None:
            try:
                value = self.get(key)
            except VolbridgeError:
                raise  # the library's own errors name the key already
            except Exception as e:
                raise StoreError(f"GET {self.url}/{key} failed: {e}") from e
            if value is not None:
                found[key] = value  # one dict store per key: atomic under the GIL

        # engine.parallel is plain threading with no dependency on the engine's own layers: the
        # one pool keeps a batched get from adding threads beside the chunk loops that call it.
        from ..engine.parallel import default_threads, run_bounded

        run_bounded(fetch, keys, 1, loops=self.io_concurrency or default_threads(), local=self.io_concurrency is None)
        return {key: found[key] for key in keys if key in found}

    def fetch_each(self, keys: Iterable[str], fn: Callable[[str, bytes | memoryview | None], None], *,
                   heavy: bool = False, nbytes: int = 1) -> None:
        """Call ``fn(key, value)`` for each of ``keys`` (value None when absent) as values arrive,
        in any order and from any thread; a value may be transient (valid only inside ``fn``).

        For reads of many objects that are each consumed at once (a cutout's chunks). This
        default runs ``get_transient`` on ``io_concurrency`` loops (cores + 1 for local stores),
        with ``nbytes`` (what one call of ``fn`` holds) bounding the bytes in flight; object
        stores drive many requests from one thread instead. ``heavy`` says ``fn`` does much work
        (a decompression), which such a store then hands to worker loops. The first failure
        raises; the other keys may or may not have been done by then.
        """
        from ..engine.parallel import run_bounded

        get = self.get_transient
        run_bounded(lambda key: fn(key, get(key)), list(keys), nbytes, self.io_concurrency)

    def get_transient(self, key: str) -> bytes | memoryview | None:
        """Like :meth:`get`, but the result may be a view of a buffer that this thread reuses.

        It stays valid only until this thread's next ``get_transient``: for callers that decode or
        copy the value at once (the engine's chunk reads), it saves an allocation per object.
        """
        return self.get(key)

    def get_many_transient(self, keys: list[str]) -> list[bytes | memoryview | None]:
        """The values of ``keys`` in order (None where absent), read by this thread; like
        :meth:`get_transient` they may be views of one buffer this thread reuses, valid until its
        next ``get_many_transient``: for a caller that places many objects at once (a group of
        shards) and keeps none of them."""
        return [self.get(key) for key in keys]

    def local_paths(self, keys: list[str], encoding: str | None = None) -> list[bytes] | None:
        """The files that hold ``keys`` (encoded file system paths), for a caller that reads them
        itself (a native loop, :mod:`volbridge.engine.grouped`) and goes through :meth:`get`
        for any it cannot read; with ``encoding`` (say ``"gzip"``) the files of their copies
        compressed so (CloudVolume's ``key.gz``). None unless the objects are plain local files
        read as they are (a cache tier, for one, is not)."""
        return None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the value of ``key``. A missing key or a short value raises."""
        value = self.get_part(key, start, end)
        if value is None:
            raise StoreError(f"{self.url}/{key} does not exist (reading bytes {start}-{end})")
        return value

    def range_reader(self, key: str) -> RangeReader:
        """Byte ranges of one version of ``key`` (see :mod:`volbridge.kv.ranges`). Stores that can
        read a range without the whole object (files, object stores) override it."""
        return RangeReader(self.get(key), f"{self.url}/{key}")

    def get_part(self, key: str, start: int, end: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` of the value of ``key``, or with ``start < 0`` and no ``end`` its
        last ``-start`` bytes; None when the key is absent. A value shorter than asked raises."""
        with self.range_reader(key) as reader:
            return reader.read(start, end)

    def get_first(self, keys: Iterable[str], *, transient: bool = False) -> tuple[str, bytes | memoryview] | None:
        """The first of ``keys`` that exists, with its value; None when none does."""
        get = self.get_transient if transient else self.get
        for key in keys:
            value = get(key)
            if value is not None:
                return key, value
        return None

    def write_through(self, keys: Iterable[str], op: Callable[[], dict]) -> dict:
        """Run ``op``, a write made to the data behind ``keys`` by other means than this store.

        A relay, say, writes a box straight to its upstream volume, which changes the values that
        ``keys`` would now read. A plain store holds no copies, so this just runs ``op``; a cache
        tier drops its copies of ``keys`` before and refuses fills during ``op``, then caches what
        ``op`` returns ({key: the value it now reads}) where no other write overlapped.
        """
        return op()

    def child(self, prefix: str) -> "KVStore":
        """A view of this store rooted at ``prefix``."""
        from .prefixed import PrefixedStore

        return PrefixedStore(self, prefix)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

