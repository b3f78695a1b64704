"""One relayed source: any volume, seen as a raw precomputed volume whose chunks are cached.

The relay does not cache boxes; it caches *cuboids*, cells of a grid aligned with the upstream's
own chunks (or BossDB's 512x512x16 cuboids), so every upstream fetch is chunk-aligned and the stop
of the last cell is rounded up to the bound rather than dropped (Bossphorus lost it). The cuboids
are the chunks of a synthetic raw precomputed volume:

- :class:`CuboidStore` answers that volume's keys (``info``, ``<scale>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``)
  by reading the upstream volume, so the relay's cache tiers (ordinary ``kv`` caches) stack on top
  of it, and precomputed over HTTP serves the cached chunks as they are.
- :class:`RelaySource` reads any box through those tiers with the ordinary chunked engine, and
  writes boxes straight to the upstream while the tiers drop (or replace) the cuboids it touches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..engine.chunked import ChunkedVolume
from ..engine.identity import INSTANCE_KEY, instance_id, metadata_digest
from ..engine.parallel import run_bounded
from ..engine.volume import Volume
from ..errors import InvalidArgumentError, InvalidIndexError, ReadOnlyError, StoreError, VolbridgeError
from ..formats.precomputed import PrecomputedDataset
from ..geometry import Box, ChunkGrid
from ..kv import KVStore
from ..kv.base import StoreStats, Updater
from ..kv.cache_tier import ABSENT

#: A cuboid is the upstream chunk, doubled along x, y, z in turn until it holds at least this many
#: voxels: small zarr chunks (32^3) would otherwise cost more in bookkeeping than in bytes.
CUBOID_MIN_VOXELS = 2**18

_INT = r"(-?[0-9]{1,19})"  # ASCII digits, within int64 (Python's int() takes other digits, and 4300 of them)
_KEY = re.compile(rf"([0-9]{{1,4}})/{_INT}-{_INT}_{_INT}-{_INT}_{_INT}-{_INT}")


def cuboid_key(scale: int, b: Box) -> str:
    """The precomputed chunk key of box ``b`` of ``scale``: the one name of each cuboid."""
    return f"{scale}/{b.start[0]}-{b.stop[0]}_{b.start[1]}-{b.stop[1]}_{b.start[2]}-{b.stop[2]}"


def cuboid_shape(chunk: tuple[int, int, int], extent: tuple[int, int, int]) -> tuple[int, int, int]:
    """The relay's cuboid for an upstream ``chunk`` shape: a multiple of it, so still aligned."""
    shape = [max(1, int(c)) for c in chunk]
    axis = 0
    stuck = 0
    while shape[0] * shape[1] * shape[2] < CUBOID_MIN_VOXELS and stuck < 3:
        if shape[axis] < extent[axis]:
            shape[axis] *= 2
            stuck = 0
        else:
            stuck += 1
        axis = (axis + 1) % 3
    return tuple(shape)  # type: ignore[return-value]


#: Keys of a precomputed ``info`` that name directories of files beside the scales (meshes,
#: skeletons, segment properties): a precomputed upstream's are served as stored.
PASSED_DIRS = ("mesh", "skeletons", "segment_properties")


def passed_dirs(volume: Volume) -> dict[str, str]:
    """{info key: directory} of what a precomputed upstream keeps beside its scales (a relative
    path of plain names: no URL, no '..', none a scale key of the relay's info)."""
    if getattr(volume, "format_name", None) != "precomputed" or getattr(volume, "store", None) is None:
        return {}
    try:
        doc = volume.metadata_json()
    except VolbridgeError:
        return {}
    out = {}
    for key in PASSED_DIRS:
        d = doc.get(key)
        if isinstance(d, str) and re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", d) and ".." not in d.split("/") \
                and not re.fullmatch(r"[0-9]+|info|provenance", d.split("/")[0]):
            out[key] = d
    return out


def relay_info(volume: Volume) -> dict:
    """The ``info`` of the raw precomputed volume that stands for ``volume`` (scale keys "0", "1"...)."""
    meta = volume.meta
    scales = []
    for i, s in enumerate(meta.scales):
        scales.append({
            "key": str(i),
            "size": list(s.bounds.shape),
            "voxel_offset": list(s.bounds.start),
            "resolution": [float(r) if not float(r).is_integer() else int(r) for r in s.resolution],
            "chunk_sizes": [list(cuboid_shape(s.chunk_shape, s.bounds.shape))],
            "encoding": "raw",
        })
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": meta.layer_type,
        "data_type": np.dtype(meta.dtype).name,
        "num_channels": int(meta.num_channels),
        "scales": scales,
    }
    # the upstream's instance, so a relay chained to this one (and its disk cache) sees a volume
    # made again under this relay as another one (a review found a kept disk cache serving the old)
    try:
        instance = volume.instance_id(False)
    except VolbridgeError:
        instance = None
    if instance:
        info[INSTANCE_KEY] = instance
    info.update(passed_dirs(volume))
    return info


def _all_fill(data: np.ndarray, fill) -> bool:
    fill = np.asarray(fill, dtype=data.dtype)
    if data.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(data).all())
    return bool((data == fill).all())


class CuboidStore(KVStore):
    """The keys of :func:`relay_info`'s volume, each read from the upstream ``volume``.

    Read-only: the relay writes boxes to the upstream itself (see :meth:`RelaySource.write`), since
    writing whole cuboids would turn every unaligned write into a read-modify-write here, racing
    other writers of the upstream. A cuboid that is all zeros reads as absent, so a cache that
    keeps absences holds a sparse volume's empty space for a few bytes a cuboid.
    """

    cheap_misses = False

    def __init__(self, volume: Volume, info: dict, url: str):
        self.volume = volume
        self.info = info
        self.url = url
        self.stats = StoreStats()
        self.io_concurrency = 16
        self._info_bytes = json.dumps(info).encode()
        self.grids = []
        for s in volume.meta.scales:
            chunk = cuboid_shape(s.chunk_shape, s.bounds.shape)
            self.grids.append(ChunkGrid(s.bounds, chunk, s.bounds.start))

    def parse_key(self, key: str) -> tuple[int, Box] | None:
        """(scale, box) of a cuboid key, or None if the key is not exactly one cuboid of the grid."""
        m = _KEY.fullmatch(key)
        if m is None:
            return None
        scale = int(m.group(1))
        if scale >= len(self.grids):
            return None
        v = [int(g) for g in m.groups()[1:]]
        box = Box((v[0], v[2], v[4]), (v[1], v[3], v[5]))
        grid = self.grids[scale]
        cells = list(grid.cells(box)) if not box.empty else []
        if len(cells) != 1 or cells[0].box != box:
            return None
        if key != cuboid_key(scale, box):  # '007-064_...', '-0-64_...': other names, cached apart, went stale
            return None
        return scale, box

    def get(self, key: str) -> bytes | None:
        if key == "info":
            return self._info_bytes
        parsed = self.parse_key(key)
        if parsed is None:  # never "absent": an absent cuboid would read as zeros
            raise StoreError(f"{self.url}: {key!r} is not a cuboid of the relay's grid")
        scale, box = parsed
        data = self.volume.read(box, scale)
        self.stats.add(requests=1, bytes_read=data.nbytes)
        if not data.any():
            self._check_still_there()
            return None
        fill = self.volume.meta.fill_value
        if fill is not None and _all_fill(data, fill):  # (missing chunks of a deleted zarr with fill 7 read as 7s)
            self._check_still_there()
        return data.tobytes(order="F")

    def _check_still_there(self) -> None:
        """An all-absent read of a chunked upstream whose metadata is gone (the volume deleted
        while the relay runs) is an error, not zeros (a review found them served, and cached).
        Checked on every such read (one metadata lookup beside the chunks' own): an absence is
        cached once made, so an empty region costs it once; checked only every few seconds, a
        deletion within them was read, and cached, as zeros (a review found)."""
        store = getattr(self.volume, "store", None)
        if store is None:
            return
        from ..remotes.registry import FORMATS

        entry = FORMATS.get(self.volume.format_name)
        if entry is None or entry.detect(store):
            return
        raise StoreError(f"{self.url}: the upstream's metadata is gone (was the volume deleted?); its chunks are "
                         "not served as zeros")

    def exists(self, key: str) -> bool:
        return key == "info" or self.parse_key(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(["info"] if "info".startswith(prefix) else [])

    def _read_only(self, *_a, **_k):
        raise ReadOnlyError(f"{self.url}: the relay writes boxes to its upstream, not cuboids")

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        self._read_only()

    def delete(self, key: str) -> None:
        self._read_only()

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        self._read_only()
        raise AssertionError  # unreachable


def source_key(url: str, volume: Volume | None = None) -> str:
    """The cache key prefix of an upstream: a digest of what it reads, its store's identity
    (:attr:`KVStore.identity`: the URL plus what the URL leaves out, such as an S3 endpoint), or
    its URL for server remotes. Not the channel name, so two channels over one upstream share (and
    invalidate) the same cuboids, and a persistent disk cache never serves one upstream's cuboids
    for another's. One path segment, which :class:`SourceRouter` routes on.

    An upstream's layout (dtype, scales, chunks: :func:`metadata_digest`) is part of it:
    an upstream recreated at the same URL while the relay was down (another dtype, other
    bounds) must not be served from the cuboids a persistent disk cache kept of the old one,
    which then failed to decode as the new dtype and were blamed on the upstream. So is the
    instance (:func:`instance_id`, never stamped: the relay writes no metadata upstream): one
    recreated with the same layout holds other voxels."""
    store = getattr(volume, "store", None)
    name = url if store is None else f"{url}\n{store.identity}"
    if isinstance(volume, Volume):  # every remote: an HDF5 file or a BossDB channel recreated as float32 too
        name += f"\n{metadata_digest(volume)}\n{instance_id(volume)}"
    return "u" + hashlib.sha1(name.encode()).hexdigest()[:16]


class SourceRouter(KVStore):
    """Every source's :class:`CuboidStore` under one key space (``<source key>/<cuboid key>``), so
    the relay's cache tiers, bounded in bytes, are shared by all sources."""

    cheap_misses = False
    io_concurrency = 16

    def __init__(self) -> None:
        self.url = "relay:"
        self.stats = StoreStats()
        self._stores: dict[str, CuboidStore] = {}
        self._lock = threading.Lock()

    def add(self, prefix: str, store: CuboidStore) -> None:
        with self._lock:
            self._stores[prefix] = store

    def _route(self, key: str) -> tuple[CuboidStore | None, str]:
        head, _, rest = key.partition("/")
        return self._stores.get(head), rest

    def get(self, key: str) -> bytes | None:
        store, rest = self._route(key)
        if store is None:  # a source removed meanwhile: an error, not zeros
            raise StoreError(f"relay: no source serves {key!r} (was its channel deleted?)")
        value = store.get(rest)
        self.stats.add(requests=1, bytes_read=0 if value is None else len(value))
        return value

    def exists(self, key: str) -> bool:
        store, rest = self._route(key)
        return store is not None and store.exists(rest)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(())

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        raise ReadOnlyError("the relay's cuboids are written through their sources")

    def delete(self, key: str) -> None:
        raise ReadOnlyError("the relay's cuboids are written through their sources")

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        raise ReadOnlyError("the relay's cuboids are written through their sources")


class OverlapLock:
    """Writes of overlapping boxes (of one scale) run one at a time, others at once: a write
    that spans several upstream chunks updates each on its own, so two overlapping writes at
    once could leave some chunks of one and some of the other (a review found DVID blocks so
    torn: half of one POST, half of another, a state no request wrote). Within this relay
    process; writers elsewhere have the store's per-chunk atomicity only."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: list[tuple[int, Box]] = []

    @contextlib.contextmanager
    def hold(self, scale: int, box: Box):
        entry = (scale, box)
        with self._cond:
            while any(s == scale and not b.intersect(box).empty for s, b in self._active):
                self._cond.wait()
            self._active.append(entry)
        try:
            yield
        finally:
            with self._cond:
                self._active.remove(entry)
                self._cond.notify_all()


class RelaySource:
    """A configured channel: its upstream volume and the cached view the relay reads."""

    def __init__(self, name: str, url: str, volume: Volume, cache: KVStore, router: SourceRouter, channel: int = 0):
        self.name = name
        self.url = url
        self.volume = volume
        self.meta = volume.meta
        if np.dtype(volume.meta.dtype).kind == "b":  # (it failed inside, naming the relay's own info)
            raise InvalidArgumentError(f"source {name}: {url} holds bool voxels, which neither the BossDB nor the precomputed "
                                       "dialect carries; store it as uint8 to serve it")
        self.info = relay_info(volume)
        #: Directories of the upstream's own files served as they are (meshes, skeletons, ...).
        self.passed = tuple(self.info[k] for k in PASSED_DIRS if k in self.info)
        self.prefix = source_key(url, volume)
        self.upstream = CuboidStore(volume, self.info, url)
        router.add(self.prefix, self.upstream)
        #: The relay's cache tiers, seen from this source's prefix.
        self.store = cache.child(self.prefix)
        self.dataset = PrecomputedDataset(self.store, self.info)
        self.reader = ChunkedVolume(self.store, self.dataset, url=url)
        #: The channel of a multi-channel source that the BossDB dialect serves.
        self.channel = channel
        self._next_id: int | None = None
        #: BossDB's downsample status of this channel (see :mod:`.downsampling`).
        self.downsample_status = "DOWNSAMPLED" if len(volume.meta.scales) > 1 else "NOT_DOWNSAMPLED"
        #: Called when the status changes by a write (to keep it in a resource document).
        self.on_status: Callable[["RelaySource"], None] | None = None
        #: Writes per scale so far (a downsample job checks that none came in while it ran).
        self.writes: dict[int, int] = {}
        self._writing = OverlapLock()
        self._reserve_lock = threading.Lock()
        self._reserve_lock_scan = threading.Lock()

    @property
    def writable(self) -> bool:
        return "write" in self.volume.capabilities

    def scale_count(self) -> int:
        return len(self.meta.scales)

    def check_scale(self, scale: int) -> None:
        if not 0 <= scale < len(self.meta.scales):
            raise InvalidIndexError(f"{self.name} has resolutions 0..{len(self.meta.scales) - 1}, not {scale}")

    def read(self, box: Box, scale: int) -> np.ndarray:
        """``(x, y, z, c)`` Fortran-ordered voxels of ``box``, through the cache tiers; outside
        the scale's bounds the upstream's fill value, as a read past the caches (``raw``) gives."""
        self.check_scale(scale)
        out = self.reader.read(box, scale)
        fill, bounds = self.meta.fill_value, self.meta.scales[scale].bounds
        if fill is None or bounds.contains(box) or not any(np.asarray(fill, out.dtype).tobytes()):
            return out  # (the cuboids' precomputed view fills with 0)
        inner = box.intersect(bounds)
        kept = out[inner.slices(box.start)].copy() if not inner.empty else None
        out[...] = fill
        if kept is not None:
            out[inner.slices(box.start)] = kept
        return out

    def cuboid(self, scale: int, name: str) -> tuple[Box, bytes | None] | None:
        """(box, raw bytes or None when all zeros) of one cuboid by its precomputed chunk name;
        None when the name is not a cuboid of this source."""
        key = f"{scale}/{name}"
        parsed = self.upstream.parse_key(key)
        if parsed is None:
            return None
        return parsed[1], self.store.get(key)

    def cuboid_keys(self, box: Box, scale: int) -> list[tuple[str, Box]]:
        return [(cuboid_key(scale, c.box), c.box) for c in self.upstream.grids[scale].cells(box)]

    def write(self, box: Box, data: np.ndarray, scale: int, channels: slice | None = None) -> None:
        """Write ``data`` ``(x, y, z, c)`` (the ``channels`` given, default all) to the upstream;
        the tiers drop the cuboids it touches, and keep the new bytes of those it covers whole
        when they are exactly what the upstream now holds (all channels, a lossless encoding)."""
        self.check_scale(scale)
        self.volume.check_write(box, data, scale, channels)
        cuboids = self.cuboid_keys(box, scale)
        # a server upstream (another relay, BossDB, DVID) may keep the voxels lossily further
        # down (a chained relay over a jpeg volume served the bytes sent, not those stored)
        exact = ((channels is None or data.shape[3] == self.meta.num_channels) and self.meta.scales[scale].encoding != "jpeg"
                 and self.volume.format_name not in ("bossdb", "dvid"))

        def op() -> dict:
            self.volume.write(box, data, scale, channels)
            fresh: dict = {}
            for key, b in cuboids:
                if exact and box.contains(b):
                    part = data[b.slices(box.start)]
                    fresh[key] = part.tobytes(order="F") if part.any() else ABSENT
            return fresh

        with self._writing.hold(scale, box):
            self.store.write_through([k for k, _ in cuboids], op)
        with self._reserve_lock:
            self.writes[scale] = self.writes.get(scale, 0) + 1
        if scale == 0 and len(self.meta.scales) > 1 and self.downsample_status != "NOT_DOWNSAMPLED":
            self.downsample_status = "NOT_DOWNSAMPLED"  # as BossDB: the pyramid no longer matches
            if self.on_status is not None:
                self.on_status(self)

    def scan_bytes(self, scale: int) -> int:
        s = self.meta.scales[scale]
        return s.bounds.size * self.meta.num_channels * np.dtype(self.meta.dtype).itemsize

    def scan(self, scale: int, fn: Callable[[Box, np.ndarray], None]) -> None:
        """Call ``fn(cuboid box, (x, y, z) voxels)`` for every non-empty cuboid of ``scale``,
        in parallel, through the cache tiers."""
        grid = self.upstream.grids[scale]
        ch = self.channel

        def task(cell) -> None:
            raw = self.store.get(cuboid_key(scale, cell.box))
            if raw is not None:
                vox = np.frombuffer(raw, self.meta.dtype).reshape((*cell.box.shape, self.meta.num_channels), order="F")
                fn(cell.box, vox[..., ch])

        n = max(1, int(np.prod(grid.chunk_shape)) * self.meta.num_channels * np.dtype(self.meta.dtype).itemsize)
        run_bounded(task, grid.cells(grid.bounds), 2 * n, 8)

    def find_label(self, label: int, scale: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The tight (start, stop) of voxels holding ``label`` at ``scale``, or None."""
        lo: list[int] = []
        hi: list[int] = []
        lock = threading.Lock()

        def fn(box: Box, vox: np.ndarray) -> None:
            hits = np.nonzero(vox == label)
            if hits[0].size == 0:
                return
            a = [int(h.min()) + s for h, s in zip(hits, box.start)]
            b = [int(h.max()) + 1 + s for h, s in zip(hits, box.start)]
            with lock:
                lo[:] = a if not lo else [min(x, y) for x, y in zip(lo, a)]
                hi[:] = b if not hi else [max(x, y) for x, y in zip(hi, b)]

        self.scan(scale, fn)
        return (tuple(lo), tuple(hi)) if lo else None

    def max_id(self) -> int:
        """The largest id in scale 0 (scanned once per process, then raised by reservations)."""
        with self._reserve_lock:
            if self._next_id is None:
                top = [0]

                def fn(box: Box, vox: np.ndarray) -> None:
                    m = int(vox.max())
                    with self._reserve_lock_scan:
                        top[0] = max(top[0], m)

                self.scan(0, fn)
                self._next_id = top[0] + 1
            return self._next_id - 1

    def reserve_ids(self, count: int, floor: int = 0) -> int:
        """The first of ``count`` new ids, above every id in scale 0, every id reserved before in
        this process, and ``floor`` (the next id a resource document kept across restarts)."""
        self.max_id()
        top = int(np.iinfo(self.meta.dtype).max) if np.dtype(self.meta.dtype).kind in "ui" else None
        with self._reserve_lock:
            start = max(self._next_id, floor)
            if top is not None and start + count - 1 > top:
                raise InvalidArgumentError(f"{count} new ids from {start} go beyond what a {self.meta.dtype} channel holds (at most {top})")
            self._next_id = start + count
            return start


def open_sources(entries: Iterable[tuple[str, str, Callable[[], Volume], int]], cache_factory: Callable[[KVStore], KVStore]):
    """(router, cache, {name: RelaySource}) for ``(name, url, opener, channel)`` entries."""
    router = SourceRouter()
    cache = cache_factory(router)
    sources = {name: RelaySource(name, url, opener(), cache, router, ch) for name, url, opener, ch in entries}
    return router, cache, sources


class RelayVolume(Volume):
    """A source as a :class:`Volume` whose reads and writes go through the relay's cache tiers
    (for services the relay runs on it, such as downsampling), chunked like its upstream."""

    def __init__(self, src: RelaySource):
        self.src = src
        self.url = src.url
        self.meta = src.meta
        self.format_name = src.volume.format_name
        self.capabilities = frozenset({"write"}) if src.writable else frozenset()

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return self.src.read(box, scale)

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        self.src.write(box, data, scale, channels)

    def grid(self, scale: int = 0) -> ChunkGrid:
        return self.src.volume.grid(scale)
