"""What identifies a volume: its layout (:func:`metadata_digest`) and this instance of it
(:func:`instance_id`).

Resumable jobs journal the units they finished under a key naming their volumes. A URL alone does
not name a volume: deleted and created again at the same path (by volbridge or any other tool),
it is another one, and a rerun that trusted the old journal would skip units whose output is gone
or was made from other voxels (a review found a downsample pyramid left part zeros so). The
journal keys include the instance id, so such a rerun starts over.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np

from ..errors import MetadataError

#: The member of a volume's metadata document that holds its instance id.
INSTANCE_KEY = "volbridge_instance"


def metadata_digest(volume) -> str:
    """A digest of how ``volume`` lays out its voxels: type, channels, fill, and each scale's
    bounds, resolution, chunks, encoding and write grid (shards). Attributes and provenance
    records are left out: a service's own provenance must not make the next job's workers refuse
    the volume, and they do not change where voxels are."""
    meta = volume.meta
    scales = []
    for m, s in enumerate(meta.scales):
        grid = volume.write_grid(m)
        scales.append((s.key, s.bounds.start, s.bounds.stop, s.resolution, s.chunk_shape, s.encoding,
                       grid.chunk_shape, grid.origin))
    layout = (np.dtype(meta.dtype).str, meta.num_channels, meta.layer_type, repr(meta.fill_value), scales)
    return hashlib.sha1(repr(layout).encode()).hexdigest()


def new_instance_id() -> str:
    return uuid.uuid4().hex


def instance_id(volume, *, stamp: bool = False) -> str | None:
    """An id of this instance of ``volume``; one created again at its URL has another.

    The id is a random one kept under :data:`INSTANCE_KEY` in the document every tool rewrites
    when it creates the volume (precomputed ``info``, zarr and OME-Zarr attributes, N5
    ``attributes.json``, an HDF5 dataset's attributes), so a volume created anew carries none.
    ``stamp``: write one where there is none (for a job about to write into the volume anyway).
    Otherwise, where there is none, the version of that document (ETag, or a file's modification
    time and size) stands in; None where the volume has neither (servers: BossDB, DVID)."""
    return volume.instance_id(stamp)


def document_instance(store, key: str, inner: str | None, stamp: bool, version_key: str | None = None) -> str | None:
    """:func:`instance_id` of a volume whose id lives in JSON document ``key`` of ``store``
    (``inner``: in that member of it); without one, the version of ``version_key`` (default
    ``key``) stands in."""
    def found(raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise MetadataError(f"{store.url}/{key} is not JSON: {e}") from e
        attrs = doc.get(inner) if inner and isinstance(doc, dict) else doc
        value = attrs.get(INSTANCE_KEY) if isinstance(attrs, dict) else None
        return value if isinstance(value, str) and value else None

    have = found(store.get(key))
    if have is not None:
        return have
    if not stamp:
        st = store.stat(version_key or key)
        version = None if st is None else (st.etag or st.version)
        return None if version is None else f"version:{version}"

    def merge(old: bytes | None) -> bytes:
        if found(old) is not None:  # another process stamped it meanwhile: keep theirs
            return old  # type: ignore[return-value]
        doc = json.loads(old) if old else {}
        attrs = doc.setdefault(inner, {}) if inner else doc
        attrs[INSTANCE_KEY] = new_instance_id()
        return json.dumps(doc, indent=2).encode()

    return found(store.update(key, merge))


def volume_url(volume) -> str:
    """A URL that opens ``volume`` from any working directory: a local volume's absolute path
    (given as a path, which is never unescaped: a ``file://`` URL of a name with ``%`` or ``#``
    would open another volume), else the volume's own URL."""
    directory = _local_directory(getattr(volume, "store", None))
    fmt = getattr(volume, "format_name", None)
    if directory is not None and fmt:
        return f"{fmt}://{directory}"
    return volume.url


def _local_directory(store) -> str | None:
    """The absolute directory of a store on this machine's file system (through cache tiers and
    prefixes), or None."""
    from ..kv.cache_tier import CacheTier
    from ..kv.file import FileStore
    from ..kv.prefixed import PrefixedStore

    suffix = ""
    while True:
        if isinstance(store, FileStore):
            return store._root + ("/" + suffix if suffix else "")
        if isinstance(store, PrefixedStore):
            suffix = store.prefix.rstrip("/") + ("/" + suffix if suffix else "")
            store = store.base
        elif isinstance(store, CacheTier):
            store = store.backing
        else:
            return None
