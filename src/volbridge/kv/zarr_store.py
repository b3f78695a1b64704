"""A zarr-python 3 ``Store`` over any volbridge :class:`KVStore`.

zarr-python users keep their own arrays, codecs and sharding, but may want volbridge's storage
underneath: its atomic file writes, its object stores with retries and conditional PUTs, its
memory and disk cache tiers. ``zarr.open_array(store=ZarrStore(kv), ...)`` gives them that, and
the adapter passes zarr-python's own store conformance suite (``zarr.testing.store.StoreTests``).

Only this module imports zarr, and nothing in volbridge imports this module, so zarr stays an
optional dependency: ``from volbridge.kv.zarr_store import ZarrStore``.

KVStore calls block (disk, network), so the async methods run them in a worker thread, except
over a plain :class:`MemoryStore`, where a dict lookup costs less than the thread hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ..errors import StoreError
from .base import KVStore
from .cache_tier import CacheTier
from .caching import with_cache
from .file import FileStore
from .memory import MemoryStore, _named
from .prefixed import PrefixedStore
from .url import open_store

__all__ = ["ZarrStore"]

T = TypeVar("T")


class ZarrStore(Store):
    """``kv`` (a :class:`KVStore` or a store URL) as a zarr-python store.

    ``cache`` puts a cache tier in front of it, as volbridge's own ``cache=`` does (a byte count
    for a :class:`MemoryCache`, a directory for a :class:`DiskCache`). A store built from a file,
    object store or named memory store (with or without ``cache``) pickles by URL, so it can go
    to other processes; the cache starts empty there (a disk cache shares its directory).
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(self, kv: KVStore | str, *, cache: Any = None, read_only: bool = False):
        super().__init__(read_only=read_only)
        self._store = open_store(kv) if isinstance(kv, str) else kv
        self._cache = cache
        #: The store zarr's requests go to: ``kv`` behind its cache tier, if any.
        self.kv = with_cache(self._store, cache)
        self._inline = type(self.kv) is MemoryStore

    def with_read_only(self, read_only: bool = False) -> ZarrStore:
        clone = type(self)(self._store, read_only=read_only)
        # The same cache tier, not a second one: a write through either view must reach the
        # other's cached copies.
        clone.kv, clone._cache, clone._inline = self.kv, self._cache, self._inline
        return clone

    def __reduce__(self) -> tuple:
        if not _reopenable(self._store):
            raise TypeError(
                f"{self!r} cannot be pickled: {self._store!r} cannot be reopened from its URL; build the "
                "ZarrStore from a file, object store or named memory store (mem://name), with cache= for a cache"
            )
        return _reopen, (type(self), self._store.url, self._cache, self.read_only)

    def __eq__(self, other: object) -> bool:
        # Equal when they address the same data through the same kind of cache (if any), as
        # zarr compares a store with its unpickled copy.
        return (
            isinstance(other, type(self))
            and self.read_only == other.read_only
            and self.kv.url == other.kv.url
            and _cache_kind(self.kv) is _cache_kind(other.kv)
        )

    def __repr__(self) -> str:
        return f"ZarrStore({self.kv!r}{', read_only=True' if self.read_only else ''})"

    def __str__(self) -> str:
        return self.kv.url

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        kv = self.kv
        if byte_range is None:
            return kv.get(key)
        if isinstance(byte_range, RangeByteRequest):
            start, end = byte_range.start, byte_range.end
            try:
                return kv.get_range(key, start, end)
            except StoreError:
                # get_range refuses an absent key and a value shorter than ``end``; zarr wants
                # None for the first and the value's tail for the second. A real failure raises
                # again from the full read.
                value = kv.get(key)
                return None if value is None else value[start:end]
        if isinstance(byte_range, OffsetByteRequest):
            value = kv.get(key)
            return None if value is None else value[byte_range.offset :]
        if isinstance(byte_range, SuffixByteRequest):
            if byte_range.suffix > 0:  # zarr's shard index: one ranged read where the store has one
                try:
                    return kv.get_part(key, -byte_range.suffix)
                except StoreError:
                    pass  # shorter than the suffix: zarr wants the whole value
            value = kv.get(key)
            return None if value is None else value[max(0, len(value) - byte_range.suffix) :]
        raise TypeError(f"Unexpected byte_range, got {byte_range!r}.")

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = self._read(key, byte_range)
        if value is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(value)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await self._run(self._read, key, byte_range)
        if value is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(value)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, r) for key, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await self._run(self.kv.exists, key)

    # -- writing ----------------------------------------------------------------------------------
    def _value(self, value: Buffer) -> bytes:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"ZarrStore.set(): value must be a zarr Buffer, not {type(value).__name__}")
        return value.to_bytes()

    def set_sync(self, key: str, value: Buffer) -> None:
        self.kv.put(key, self._value(value))

    async def set(self, key: str, value: Buffer) -> None:
        await self._run(self.kv.put, key, self._value(value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        new = self._value(value)

        def put_if_absent() -> None:
            # The exists() probe spares the usual case a write; update() closes the race with
            # another writer (a lock on disk, a conditional PUT on object stores), rewriting
            # a value that appeared meanwhile unchanged.
            if not self.kv.exists(key):
                self.kv.update(key, lambda old: new if old is None else old)

        await self._run(put_if_absent)

    def delete_sync(self, key: str) -> None:
        self._check_writable()
        self.kv.delete(key)

    async def delete(self, key: str) -> None:
        self._check_writable()
        await self._run(self.kv.delete, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        # One list and one batched delete in the worker, instead of a thread hop per key.
        await self._run(lambda: self.kv.delete_many(list(self.kv.list(prefix))))

    # -- listing ----------------------------------------------------------------------------------
    async def list(self) -> AsyncIterator[str]:
        for key in await self._run(_keys, self.kv, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._run(_keys, self.kv, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        n = len(prefix)
        # A KVStore lists keys, not directories: the children are the first segments after prefix.
        for child in dict.fromkeys(k[n:].split("/", 1)[0] for k in await self._run(_keys, self.kv, prefix)):
            yield child


def _keys(kv: KVStore, prefix: str) -> list[str]:
    return list(kv.list(prefix))


def _cache_kind(kv: KVStore) -> type | None:
    return type(kv) if isinstance(kv, CacheTier) else None


def _reopenable(kv: KVStore) -> bool:
    """Whether ``open_store(kv.url)`` reaches the same data as ``kv``."""
    if isinstance(kv, PrefixedStore):
        return _reopenable(kv.base)
    if isinstance(kv, MemoryStore):
        return _named.get(kv.name) is kv  # an unnamed one would reopen as a new, empty store
    if isinstance(kv, FileStore):
        return True
    # Imported here: obstore loads only when an object store is pickled.
    from .object_store import ObjectStore

    return type(kv) is ObjectStore


def _reopen(cls: type[ZarrStore], url: str, cache: Any, read_only: bool) -> ZarrStore:
    return cls(url, cache=cache, read_only=read_only)
