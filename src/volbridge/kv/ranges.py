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

    def known_size(self) -> int | None:
        """The object's size where this reader knows it without a request, else None."""
        return None if self.value is None else len(self.value)

    #: Spans closer than this are read as one (the bytes between are cheaper than a request).
    merge_gap = 4096

    def read_many(self, spans: list[tuple[int, int]]) -> list[bytes | memoryview]:
        """Bytes of each ``(start, end)`` of this version (of an object known to exist); nearby
        spans are read together (:func:`merge_spans`) and handed out as views."""
        groups = merge_spans(spans, self.merge_gap)
        datas = self._read_groups([(a, b) for a, b, _ in groups])
        return _split(spans, groups, datas)

    def _read_groups(self, groups: list[tuple[int, int]]) -> list[bytes]:
        out = []
        for a, b in groups:
            data = self.read(a, b)
            if data is None:
                raise StoreError(f"{self.where} is absent (reading bytes {a}-{b})")
            out.append(data)
        return out

    def read_runs(self, runs: list[tuple[int, int]], out: memoryview, at: list[int]) -> None:
        """Bytes ``[a, b)`` of each run into ``out[p:p + b - a]`` (``p`` from ``at``), of this
        version of an object known to exist: many spans land in one buffer (:func:`pack_runs`)
        with no bytes object per span. This base copies each run once more; files read in place."""
        for (a, b), p, data in zip(runs, at, self._read_groups(runs)):
            out[p:p + b - a] = data

    def close(self) -> None:
        pass

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_spans(spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
    """``(start, end, indices of the spans inside)`` covering ``spans``, joining those less than
    ``gap`` bytes apart, in offset order."""
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    groups: list[tuple[int, int, list[int]]] = []
    for i in order:
        a, b = spans[i]
        if groups and a <= groups[-1][1] + gap:
            start, end, members = groups[-1]
            members.append(i)
            groups[-1] = (start, max(end, b), members)
        else:
            groups.append((a, b, [i]))
    return groups


def pack_runs(spans: list[tuple[int, int]], gap: int, align: int = 4096) -> tuple[list, list[int], list[int], int]:
    """How to read ``spans`` into one buffer: (runs, where each run goes in the buffer, where each
    span's first byte lands, the buffer's size). Spans less than ``gap`` apart form one run
    (:func:`merge_spans`); each run starts at a buffer offset congruent to its object offset
    modulo ``align``: the kernel copies from the page cache into a buffer at another offset inside
    the page several times slower (see :mod:`.scratch`)."""
    runs, run_at, span_at, pos = [], [], [0] * len(spans), 0
    for a, b, members in merge_spans(spans, gap):
        pos += (a - pos) % align
        runs.append((a, b))
        run_at.append(pos)
        for i in members:
            span_at[i] = pos + spans[i][0] - a
        pos += b - a
    return runs, run_at, span_at, pos


def _split(spans, groups, datas) -> list[memoryview]:
    out: list = [None] * len(spans)
    for (start, _, members), data in zip(groups, datas):
        view = memoryview(data)
        for i in members:
            a, b = spans[i]
            out[i] = view[a - start:b - start]
    return out

