"""``open_volume(url)`` and ``create_volume(url, ...)``: from a URL to a :class:`Volume`.

A URL is ``<format>://<storage URL or path>`` (``precomputed:///data/em``,
``precomputed://file:///data/em``, ``precomputed://mem://name``) or a bare storage URL or path,
whose format is found from its metadata files. A new format registers one :class:`FormatEntry`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

from ..engine import ChunkedVolume, Volume
from ..errors import InvalidArgumentError, MetadataError, UnsupportedError, URLError
from ..formats import n5, ome_zarr, precomputed, zarr
from ..formats.base import documents_read, read_doc, read_docs
from ..kv import KVStore, open_store
from ..kv.cache_tier import DOCUMENT_NAMES, CacheTier, document_digest
from ..kv.caching import with_cache


@dataclass(frozen=True)
class FormatEntry:
    name: str
    #: metadata file names that identify the format (for messages)
    markers: tuple[str, ...]
    detect: Callable[[KVStore], bool]
    open: Callable[..., Volume]  # (store, url, writable[, docs=...]) -> the volume
    create: Callable[..., Volume] | None = None
    #: whether ``open`` takes ``docs=``: the metadata documents detection has read already
    reads_docs: bool = False


def _open_precomputed(store: KVStore, url: str, writable: bool, docs: dict | None = None) -> Volume:
    return ChunkedVolume(store, precomputed.PrecomputedDataset(store, docs=docs), url=url, writable=writable)


def _create_precomputed(store: KVStore, url: str, *, overwrite: bool = False, **kw) -> Volume:
    info = precomputed.build_info(**kw)
    dataset = precomputed.PrecomputedDataset.create(store, info, overwrite=overwrite)
    return ChunkedVolume(store, dataset, url=url, writable=True)


def _open_zarr(store: KVStore, url: str, writable: bool, docs: dict | None = None) -> Volume:
    return ChunkedVolume(store, zarr.ZarrDataset(store, docs=docs), url=url, writable=writable)


def _zarr_creator(zarr_format: int):
    def create(store: KVStore, url: str, *, compression=None, encoding="raw", num_scales=1, layer_type="image",
               resolution=(1, 1, 1), **kw) -> Volume:
        # A plain zarr array has nowhere to keep these; dropping them would change what the user meant.
        if num_scales != 1 or tuple(resolution) != (1, 1, 1) or layer_type != "image":
            raise UnsupportedError(
                "a plain zarr array has one scale, no resolution and no layer type: use ome-zarr:// for those"
            )
        if encoding not in ("raw", "zstd", "gzip", "blosc"):
            raise UnsupportedError(f"zarr stores chunks raw under a compressor, not as {encoding!r}")
        comp = compression or (encoding if encoding != "raw" else None)
        return ChunkedVolume(store, zarr.ZarrDataset.create(store, zarr_format=zarr_format, compression=comp, **kw),
                             url=url, writable=True)

    return create


def _open_n5(store: KVStore, url: str, writable: bool, docs: dict | None = None) -> Volume:
    return ChunkedVolume(store, n5.N5Dataset(store, docs=docs), url=url, writable=writable)


def _create_n5(store: KVStore, url: str, *, compression=None, encoding="raw", layer_type="image", **kw) -> Volume:
    if layer_type != "image":
        raise UnsupportedError("N5 has no layer type: a segmentation would read back as an image")
    if encoding not in ("raw", "gzip", "zstd", "blosc"):
        raise UnsupportedError(f"N5 stores blocks raw under a compression, not as {encoding!r}")
    comp = compression or (encoding if encoding != "raw" else None)
    return ChunkedVolume(store, n5.N5Dataset.create(store, compression=comp, **kw), url=url, writable=True)


def _open_ome(store: KVStore, url: str, writable: bool, docs: dict | None = None) -> Volume:
    return ChunkedVolume(store, ome_zarr.OmeZarrDataset(store, docs=docs), url=url, writable=writable)


def _create_ome(store: KVStore, url: str, *, compression=None, encoding="raw", **kw) -> Volume:
    comp = compression or (encoding if encoding not in ("raw",) else None)
    return ChunkedVolume(store, ome_zarr.OmeZarrDataset.create(store, compression=comp, **kw), url=url, writable=True)


FORMATS: dict[str, FormatEntry] = {
    "precomputed": FormatEntry("precomputed", ("info",), precomputed.detect, _open_precomputed, _create_precomputed, True),
    "ome-zarr": FormatEntry("ome-zarr", (".zattrs",), ome_zarr.detect, _open_ome, _create_ome, True),
    "zarr": FormatEntry("zarr", ("zarr.json", ".zarray"), zarr.detect, _open_zarr, _zarr_creator(3), True),
    "zarr3": FormatEntry("zarr3", (), zarr.detect, _open_zarr, _zarr_creator(3), True),
    "zarr2": FormatEntry("zarr2", (), zarr.detect, _open_zarr, _zarr_creator(2), True),
    "n5": FormatEntry("n5", ("attributes.json",), n5.detect, _open_n5, _create_n5, True),
}


def _single_file_remotes():
    from . import hdf5, tiff

    return {"h5": hdf5.open_hdf5, "hdf5": hdf5.open_hdf5, "tiff": tiff.open_tiff, "tif": tiff.open_tiff}


def _file_remote_scheme(url: str) -> str | None:
    """The single-file remote a URL or bare path names: by scheme, or by file extension."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme in ("h5", "hdf5", "tiff", "tif"):
        return scheme
    if scheme in (None, "file"):
        path = url.split("#", 1)[0].split("?", 1)[0].lower()
        for ext, kind in ((".h5", "h5"), (".hdf5", "h5"), (".hdf", "h5"), (".tif", "tiff"), (".tiff", "tiff")):
            if path.endswith(ext):
                return kind
    return None


def _as_remote_url(url: str, remote: str) -> str:
    """``/a/x.h5#/raw`` or ``file:///a/x.h5#/raw`` -> ``h5:///a/x.h5#/raw``."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = url[len("file://"):] if url.startswith("file://") else url
    head, sep, fragment = path.partition("#")
    return f"{remote}://{os.path.abspath(head)}{sep}{fragment}"


def split_url(url: str) -> tuple[str | None, str]:
    """``("precomputed", "/data/em")`` for ``precomputed:///data/em``; ``(None, url)`` when bare."""
    if not isinstance(url, str):
        raise URLError(f"a volume URL must be a string, got {type(url).__name__}")
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme in FORMATS:
            if not rest:
                raise URLError(f"{url!r} names no location after '{scheme}://'")
            return scheme, rest
    return None, url


def _server_remotes():
    from . import bossdb, dvid

    return {"bossdb": bossdb.open_bossdb, "dvid": dvid.open_dvid}


def open_volume(url: str, mode: str = "r", cache=None, *, token: str | None = None) -> Volume:
    """The volume at ``url``. ``token``: a server remote's credentials (bossdb://, dvid:// behind a relay)."""
    if mode not in ("r", "r+"):
        raise InvalidArgumentError(f"mode must be 'r' or 'r+', got {mode!r} (use volbridge.create to make a volume)")
    server = url.split("://", 1)[0].lower() if isinstance(url, str) and "://" in url else None
    if server in _server_remotes():
        if cache is not None:
            raise InvalidArgumentError(f"cache= is for chunked stores; a {server}:// volume is cached by a relay (volbridge serve)")
        return _server_remotes()[server](url, mode == "r+", token)
    if token is not None:
        raise InvalidArgumentError(f"token= is for server remotes (bossdb://), not {url!r}")
    remote = _file_remote_scheme(url)
    if remote is not None:
        return _single_file_remotes()[remote](_as_remote_url(url, remote), mode == "r+")
    fmt, location = split_url(url)
    store = with_cache(open_store(location), cache)
    if not isinstance(store, CacheTier):
        return _open_format(store, url, fmt, mode, None)
    return _open_cached(store, url, fmt, mode)


def _open_cached(store: CacheTier, url: str, fmt: str | None, mode: str) -> Volume:
    """Open through a cache tier, whose entries are all stale when the metadata changed behind
    it. For a bare URL the markers are read from the backing store at once
    (:meth:`CacheTier.refresh`: compared with the cached copies, and detecting the format in
    that one round trip). The documents the open then took from the cache (a format-prefixed
    URL's root document, an OME-Zarr scale's array, an N5 scale's attributes) are compared in one
    batch after it, also when they made the open fail (a stale scale beside a fresh one). Last,
    every document it saw is compared with the digest earlier opens and writes through the cache
    left (:meth:`CacheTier.document_stamp`), which catches a change whose cached copy the LRU had
    evicted, and a copy cached again since (by a racing open, say). Any change drops the cache's
    entries, and the volume is opened again."""
    markers = _markers()
    invalidations = _tier_count(store, "invalidations")
    docs = read_docs(store, markers, store.refresh) if fmt is None else None
    batch = docs is not None  # else detection asks one marker at a time: a second batch would fail as well
    fresh = set(docs or ())

    def reopen() -> tuple[Volume, dict]:
        """Open afresh after the cache dropped its entries, reading the markers through it
        again (cached, to compare at the next open)."""
        with documents_read() as seen:
            again = _open_format(store, url, fmt, mode, read_docs(store, markers, store.refresh) if batch else None, batch)
        return again, seen

    hits = _tier_count(store, "hits")
    seen: dict = {}
    # dropped by refresh (or by a racing open, whose drop leaves the documents read next current;
    # the counter is shared by the handles of a shared memory cache)
    reopened = _tier_count(store, "invalidations") != invalidations
    try:
        with documents_read() as seen:
            volume = _open_format(store, url, fmt, mode, docs, batch)
    except (MetadataError, UnsupportedError):
        if not _changed_since_cached(store, seen, fresh, hits):
            raise
        volume, seen = reopen()
        reopened = True
    else:
        if _changed_since_cached(store, seen, fresh, hits):
            volume, seen = reopen()
            reopened = True
    DOCUMENT_NAMES.update(key.rpartition("/")[2] for key in seen)
    stamp = {key: document_digest(value) for key, value in seen.items()}
    prior = store.document_stamp(stamp)
    # A digest is replaced only here, after the comparison (or by a write through the cache):
    # an open that wrote what it saw without comparing would hide the change from one racing it.
    if not reopened and any(prior.get(key, digest) != digest for key, digest in stamp.items()):
        store.drop_changed()  # changed behind the cache, with no cached copy left to show it
        volume, seen = reopen()
        stamp = {key: document_digest(value) for key, value in seen.items()}
        prior = store.document_stamp(stamp)
    store.set_document_stamp({key: digest for key, digest in stamp.items() if prior.get(key) != digest})
    return volume


def _changed_since_cached(store: CacheTier, seen: dict, fresh: set, hits: int) -> bool:
    """Whether documents an open read (``seen``), other than those read ``fresh`` from the
    backing store, changed behind ``store`` (which then dropped its entries): compared only
    where the open had any from the cache (``hits`` before)."""
    keys = [key for key in seen if key not in fresh]
    return bool(keys) and _tier_count(store, "hits") != hits and store.revalidate(keys, {key: seen[key] for key in keys})


def _tier_count(store: CacheTier, counter: str) -> int:
    """``counter`` of the stats of ``store`` and the cache tiers beneath it: a memory tier over a
    disk tier serves hits from either."""
    return sum(getattr(tier.stats, counter) for tier in store.tiers())


def _open_format(store: KVStore, url: str, fmt: str | None, mode: str, docs: dict | None,
                 batch: bool = True) -> Volume:
    """The volume at ``store`` as format ``fmt`` (None: detected, asking for the markers at once
    where ``batch``), its marker documents read already where ``docs`` holds them."""
    if fmt is None:
        fmt, docs = _detect(store, url, docs, batch)
    entry = FORMATS[fmt]
    if entry.reads_docs and docs is not None:
        return entry.open(store, url, mode == "r+", docs=docs)
    return entry.open(store, url, mode == "r+")


def _markers() -> tuple[str, ...]:
    """Every registered format's marker documents (formats registered later included)."""
    return tuple(dict.fromkeys(m for e in FORMATS.values() for m in e.markers if m))


# Known before any open: a process that writes metadata through a cache it opened no volume
# with (a worker handed a store) keeps the digests current too.
DOCUMENT_NAMES.update(_markers())


class _Probe:
    """The store as format detection sees it: the marker documents asked for at once (over a
    network store one round trip, where the detectors' questions in turn took up to 9: a bare
    ``s3://`` N5 volume's open made 11 requests one after another), then answered from them."""

    def __init__(self, store: KVStore, docs: dict):
        self.store, self.docs = store, docs

    def get(self, key: str):
        return read_doc(self.store, key, self.docs)

    def exists(self, key: str) -> bool:
        return self.docs[key] is not None if key in self.docs else self.store.exists(key)

    def __getattr__(self, name):  # anything else a detector asks: the store itself
        return getattr(self.store, name)


def _detect(store: KVStore, url: str, docs: dict | None = None, batch: bool = True) -> tuple[str, dict | None]:
    """The format of the volume at ``store``, from its metadata documents (``docs`` when they
    were read already; else asked for at once where ``batch``), and those documents (the
    format's open reads its own from them: no second request), or None."""
    markers = _markers()
    if docs is None and batch:
        docs = read_docs(store, markers)
    # where some marker cannot be read, ask as before: one at a time, to the first format found
    probe = store if docs is None else _Probe(store, docs)
    for entry in FORMATS.values():
        if entry.detect(probe):
            return entry.name, docs
    found = [k for k in markers if probe.exists(k)]
    if not found:
        raise URLError(f"no volume found at {url!r}: none of the metadata files {', '.join(markers)} is there")
    # (it said the files it had just read were not there, a review found)
    if probe.exists(".zgroup"):
        found.append(".zgroup")
    group = "zarr.json" in found and _node_type(probe.get("zarr.json")) == "group" or ".zgroup" in found
    what = ("a zarr group, not an array or an OME-Zarr image" if group else
            "an N5 group, not a dataset" if found == ["attributes.json"] else "no volume volbridge reads")
    raise URLError(f"no volume at {url!r}: its {' and '.join(found)} {'describe' if len(found) > 1 else 'describes'} {what}; "
                   f"name one of its arrays ({url.rstrip('/')}/<name>)")


def _node_type(doc) -> str | None:
    try:
        return json.loads(doc).get("node_type") if doc is not None else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def volume_exists(url: str) -> bool:
    """Whether ``url`` names a volume already (its metadata is there); servers' are assumed to."""
    server = url.split("://", 1)[0].lower() if "://" in url else None
    if server in _server_remotes():
        return True
    remote = _file_remote_scheme(url)
    if remote in ("h5", "hdf5"):  # the dataset, not the file: a file holds several (raw and labels)
        from .hdf5 import dataset_exists

        return dataset_exists(_as_remote_url(url, "h5"))
    if remote is not None:
        path = _as_remote_url(url, remote).split("://", 1)[1].split("#", 1)[0].split("?", 1)[0]
        return os.path.exists(path) if not any(c in path for c in "*?[") else bool(__import__("glob").glob(path))
    fmt, location = split_url(url)
    store = open_store(location)
    entries = [FORMATS[fmt]] if fmt else list(FORMATS.values())
    return any(e.detect(store) for e in entries)


#: Formats whose ``create`` writes shards (``shard_shape=``).
SHARDED_FORMATS = ("precomputed", "zarr", "zarr3", "ome-zarr")
CHECKSUM_FORMATS = ("zarr", "zarr3", "ome-zarr")


def create_volume(url: str, **kw) -> Volume:
    sharded = kw.get("shard_shape") is not None
    checksum = kw.pop("checksum", False)
    if _file_remote_scheme(url) in ("h5", "hdf5"):
        from .hdf5 import HDF5Volume

        if sharded or checksum or kw.pop("ome_version", None) is not None:
            raise UnsupportedError("an HDF5 dataset has no shards, chunk checksums or OME version: "
                                   "leave shard_shape, checksum and ome_version unset")
        return HDF5Volume.create(_as_remote_url(url, "h5"), **kw)
    if _file_remote_scheme(url) is not None:  # (a .tif path made a precomputed directory of that name)
        raise UnsupportedError(f"{url!r}: TIFF files are read-only in volbridge; create another format (precomputed://, "
                               "zarr3://, ome-zarr://, n5://, h5://) and transfer into it")
    fmt, location = split_url(url)
    fmt = fmt or "precomputed"
    if sharded and fmt not in SHARDED_FORMATS:
        raise UnsupportedError(f"volbridge writes shards in {', '.join(SHARDED_FORMATS)} volumes, not {fmt}")
    if kw.get("ome_version") is not None and fmt != "ome-zarr":
        raise UnsupportedError(f"ome_version applies to ome-zarr:// volumes, not {fmt}")
    if kw.get("ome_version") is None:
        kw.pop("ome_version", None)
    if checksum:
        if fmt not in CHECKSUM_FORMATS:
            raise UnsupportedError(f"volbridge writes chunk checksums in zarr v3 and OME-Zarr volumes, not {fmt}")
        kw["checksum"] = True
    entry = FORMATS[fmt]
    if entry.create is None:
        raise URLError(f"volbridge cannot create {fmt} volumes")
    return entry.create(open_store(location), url, **kw)
