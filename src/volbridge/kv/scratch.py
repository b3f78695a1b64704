"""Per-thread, page-aligned scratch buffers for reads that are decoded at once.

Alignment matters: the kernel's copy from the page cache into a buffer that starts a few bytes
into a page measured 3-8x slower here than into one that starts on a page boundary (a plain
``bytearray`` starts 16 bytes in, after malloc's header). Anonymous ``mmap`` memory is always
page-aligned. Each user names its own slot, so a cache that reads its backing store through
another scratch user never has its buffer overwritten underneath it.
"""

from __future__ import annotations

import mmap
import threading

_local = threading.local()


def scratch(slot: str, size: int) -> memoryview:
    """This thread's buffer for ``slot``, at least ``size`` bytes, page-aligned; contents kept."""
    views: dict = _local.__dict__.setdefault("views", {})
    view = views.get(slot)
    if view is None or len(view) < size:
        grown = memoryview(mmap.mmap(-1, max(size, 1 << 20, 2 * len(view) if view is not None else 0)))
        if view is not None:
            grown[: len(view)] = view
        views[slot] = view = grown
    return view
