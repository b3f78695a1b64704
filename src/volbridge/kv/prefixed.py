"""A store that sees another store from a sub-prefix (a zarr array inside a group, say)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from .base import KVStore, ObjectStat, Updater


class PrefixedStore(KVStore):
    def __init__(self, base: KVStore, prefix: str):
        self.base = base
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = base.url.rstrip("/") + "/" + self.prefix.rstrip("/")
        self.stats = base.stats
        self.cheap_misses = base.cheap_misses
        self.io_concurrency = base.io_concurrency
        self.batched_puts = base.batched_puts

    @property
    def identity(self) -> str:
        return self.base.identity.rstrip("/") + "/" + self.prefix.rstrip("/")

    def _k(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        return self.base.get(self._k(key))

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        self.base.put(self._k(key), value, content_encoding=content_encoding)

    def put_each(self, keys, values, *, content_encoding: str | None = None, nbytes: int = 1) -> None:
        self.base.put_each([self._k(k) for k in keys], values, content_encoding=content_encoding, nbytes=nbytes)

    def delete(self, key: str) -> None:
        self.base.delete(self._k(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        n = len(self.prefix)
        for key in self.base.list(self._k(prefix)):
            yield key[n:]

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        return self.base.update(self._k(key), fn, needs_old=needs_old, content_encoding=content_encoding)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.base.delete_many(self._k(k) for k in keys)

    def exists(self, key: str) -> bool:
        return self.base.exists(self._k(key))

    def stat(self, key: str) -> ObjectStat | None:
        return self.base.stat(self._k(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.base.get_many([self._k(k) for k in keys]).items()}

    def local_paths(self, keys: list[str], encoding: str | None = None) -> list[bytes] | None:
        return self.base.local_paths([self._k(k) for k in keys], encoding)

    def range_reader(self, key: str):
        return self.base.range_reader(self._k(key))

    def fetch_each(self, keys: Iterable[str], fn, *, heavy: bool = False, nbytes: int = 1) -> None:
        n = len(self.prefix)
        self.base.fetch_each([self._k(k) for k in keys], lambda key, value: fn(key[n:], value), heavy=heavy, nbytes=nbytes)

    def get_transient(self, key: str):
        return self.base.get_transient(self._k(key))

    def get_first(self, keys: Iterable[str], *, transient: bool = False):
        found = self.base.get_first((self._k(k) for k in keys), transient=transient)
        if found is None:
            return None
        return found[0][len(self.prefix) :], found[1]

    def write_through(self, keys: Iterable[str], op: Callable[[], dict]) -> dict:
        n = len(self.prefix)
        done = self.base.write_through([self._k(k) for k in keys], lambda: {self._k(k): v for k, v in op().items()})
        return {k[n:]: v for k, v in done.items()}
