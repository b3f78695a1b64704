"""Layer 2: bytes by key. File and memory stores, behind one interface with atomic updates."""

from .base import KVStore, Updater
from .file import FileStore
from .memory import MemoryStore
from .prefixed import PrefixedStore
from .url import open_store

__all__ = ["KVStore", "Updater", "FileStore", "MemoryStore", "PrefixedStore", "open_store"]
from .cache_tier import CacheStats, CacheTier
from .cache_memory import MemoryCache
from .cache_disk import DiskCache

__all__ += ["CacheStats", "CacheTier", "MemoryCache", "DiskCache"]
