"""``cache=`` as users give it, turned into a cache tier over a store."""

from __future__ import annotations

import os
from typing import Any

from ..environment import number
from ..errors import InvalidArgumentError
from .base import KVStore
from .cache_disk import DiskCache
from .cache_memory import MemoryCache

#: Bound of a disk cache given only as a directory (``VOLBRIDGE_DISK_CACHE_BYTES`` overrides).
DEFAULT_DISK_CACHE_BYTES = number("VOLBRIDGE_DISK_CACHE_BYTES", 16 * 2**30, least=0)

def with_cache(store: KVStore, cache: Any) -> KVStore:
    """``store`` under the cache ``cache`` names.

    * ``None``: no cache.
    * a directory (str or path): a :class:`DiskCache` there, bounded by
      :data:`DEFAULT_DISK_CACHE_BYTES`, shared safely by processes using the same directory.
    * an int: a :class:`MemoryCache` of that many bytes, shared by every handle of this process
      on the same objects with the same bound (so a write through one is seen by the others).
    * a callable taking the store (``lambda s: DiskCache(s, "/scratch/c", 2**34)``): its result.
    """
    if cache is None:
        return store
    if isinstance(cache, bool):
        raise InvalidArgumentError("cache= takes a directory, a byte count or a callable, not a bool")
    if isinstance(cache, int):
        return MemoryCache(store, cache, shared=True)
    if isinstance(cache, (str, os.PathLike)):
        if not os.fspath(cache):
            raise InvalidArgumentError("cache='' names no directory (it would be the working directory): give a path")
        return DiskCache(store, os.path.expanduser(os.fspath(cache)), DEFAULT_DISK_CACHE_BYTES)
    if callable(cache):
        wrapped = cache(store)
        if not isinstance(wrapped, KVStore):
            raise InvalidArgumentError(f"cache= callable returned {type(wrapped).__name__}, not a KVStore")
        return wrapped
    raise InvalidArgumentError(f"cache= takes a directory, a byte count or a callable, not {type(cache).__name__}")
