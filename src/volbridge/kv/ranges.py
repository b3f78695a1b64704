"""Byte ranges of one version of an object.

A shard is read as its index and then the chunks the index points at: several requests that must
all see the same version of the object, or a writer replacing the shard between them would pair
an old index with new bytes. A :class:`RangeReader` pins the version: a local file by holding its
descriptor (writers rename a new file over the name, so the open one never changes), an object
store by its ETag (later requests are conditional, and a changed object raises
:class:`~volbridge.errors.VersionChangedError`, so the caller reads again).
"""

from __future__ import annotations

from ..errors import StoreError


def part_bounds(start: int, end: int | None, size: int, where: str) -> tuple[int, int]:
    """``[start, end)`` made absolute for a value of ``size`` bytes (``start < 0`` with no
    ``end``: the last ``-start`` bytes). Ranges past the value raise, naming it."""
    if end is None:
        if start >= 0:
            raise ValueError("a range needs an end, or a negative start for a suffix")
        start, end = size + start, size
    if start < 0 or end > size or start > end:
        raise StoreError(f"{where} has {size} bytes; bytes {start}-{end} were asked for")
    return start, end


class RangeReader:
    """Ranges of one version of one object. This base holds the whole value in memory: right for
    stores that have no cheaper way (memory, caches), and consistent by construction."""

    def __init__(self, value: bytes | memoryview | None, where: str):
        self.value = value
        self.where = where

    def read(self, start: int, end: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` (or the last ``-start``), None when the object is absent."""
        if self.value is None:
            return None
        a, b = part_bounds(start, end, len(self.value), self.where)
        return bytes(self.value[a:b])

    def read_many(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each ``(start, end)`` of this version (of an object known to exist)."""
        out = []
        for a, b in spans:
            data = self.read(a, b)
            if data is None:
                raise StoreError(f"{self.where} is absent (reading bytes {a}-{b})")
            out.append(data)
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
