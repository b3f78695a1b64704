"""Open a store from a URL or a path."""

from __future__ import annotations

from urllib.parse import unquote

from ..errors import URLError
from .base import KVStore
from .file import FileStore
from .memory import MemoryStore


def open_store(url: str) -> KVStore:
    """``file:///path``, a bare path, ``mem://name``, or an object store / HTTP URL."""
    if "://" not in url:
        if not url:
            raise URLError("empty path")
        return FileStore(url)
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        # the path as written, '?' and '#' included (as a bare path keeps them; urlparse would cut them off)
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise URLError(f"file URL {url!r} names host {host!r}; use file:///absolute/path")
        return FileStore(unquote(slash + path))
    if scheme == "mem":
        if not rest.strip("/"):
            raise URLError(f"memory URL {url!r} needs a name: mem://name")
        name, _, sub = rest.strip("/").partition("/")
        store = MemoryStore.named(name)
        return store.child(sub) if sub else store
    from .cloud import SCHEMES, open_object_store  # obstore loads only when a URL needs it

    if scheme.lower() in SCHEMES:
        return open_object_store(url)
    raise URLError(
        f"unsupported storage scheme {scheme!r} in {url!r}; supported: file://, mem://, s3://, gs://, "
        "az://, http(s)://, bare paths"
    )
