"""N5 datasets and N5 multiscale groups (``s0``, ``s1``, ...).

An N5 dataset's ``attributes.json`` lists ``dimensions`` and ``blockSize`` fastest-first, so
``(x, y, z)`` (and a trailing channel dimension for 4-D data) maps straight onto the engine's
order. Each block file starts with a big-endian header (mode, ndim, the block's actual size;
edge blocks are smaller, not padded), then the compressed big-endian elements in that order.
Facts are from ``shared/specs/formats.md`` section 5, checked against tensorstore's n5 driver.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from typing import Any

import numpy as np

from ..codecs import Compressor
from ..codecs.compression import Lz4JavaBlocks
from ..codecs.zarr_pipeline import v2_compressor
from ..errors import ChunkDecodeError, MetadataError, UnsupportedError
from ..geometry import Box, Cell, ChunkGrid
from ..kv import KVStore
from .base import ChunkedDataset, ScaleLayout, ScaleMeta, VolumeMeta, clear_for_overwrite, naming, read_doc, read_docs, unit_nm

ATTRS = "attributes.json"
_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")


def _read_json(store: KVStore, key: str) -> dict | None:
    return _parse_json(store, key, store.get(key))


#: Scale documents (``s<n>/attributes.json``) asked for at once when opening a pyramid.
SCALES_AT_ONCE = 8


def _scale_docs(store: KVStore) -> list[dict]:
    """``s0/attributes.json``, ``s1/...`` up to the first absent one, asked for
    :data:`SCALES_AT_ONCE` at a time (over a network store one round trip, where asking one by
    one took one per scale); one at a time where a batch cannot be read."""
    docs: list[dict] = []
    while True:
        keys = [f"s{i}/{ATTRS}" for i in range(len(docs), len(docs) + SCALES_AT_ONCE)]
        found = read_docs(store, keys)
        for key in keys:
            doc = _parse_json(store, key, read_doc(store, key, found))
            if doc is None:
                return docs
            docs.append(doc)


def _parse_json(store: KVStore, key: str, raw) -> dict | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"{store.url}/{key}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise MetadataError(f"{store.url}/{key}: expected a JSON object")
    return doc


def _compressor(cfg: Any, itemsize: int, where: str) -> Compressor | None:
    if isinstance(cfg, str):  # legacy "compressionType"
        cfg = {"type": cfg}
    if not isinstance(cfg, dict):
        raise MetadataError(f"{where}: 'compression' must be an object, got {cfg!r}")
    kind = cfg.get("type")
    if kind == "raw":
        return None
    if kind == "gzip":
        level = cfg.get("level", -1)
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            raise MetadataError(f"{where}: the gzip 'level' must be an integer, got {level!r}")
        level = 6 if level is None or level < 0 else level
        return v2_compressor({"id": "zlib" if cfg.get("useZlib") else "gzip", "level": level}, itemsize)
    if kind == "bzip2":
        return v2_compressor({"id": "bz2", "level": cfg.get("blockSize", 9)}, itemsize)
    if kind == "xz":
        return v2_compressor({"id": "lzma", "preset": cfg.get("preset", 6)}, itemsize)
    if kind == "zstd":
        return v2_compressor({"id": "zstd", "level": cfg.get("level", 3)}, itemsize)
    if kind == "lz4":  # lz4-java's block stream (n5-java's writer), not numcodecs' size-prefixed block
        try:
            return Lz4JavaBlocks(cfg.get("blockSize", 1 << 16))
        except UnsupportedError as e:
            raise MetadataError(f"{where}: {e}") from None
    if kind == "blosc":
        return v2_compressor({"id": "blosc", "cname": cfg.get("cname", "lz4"), "clevel": cfg.get("clevel", 5),
                              "shuffle": cfg.get("shuffle", 1), "blocksize": cfg.get("blocksize", 0)}, itemsize)
    raise UnsupportedError(f"{where}: N5 compression {kind!r} is not supported (raw, gzip, bzip2, xz, zstd, blosc, lz4 are)")


class N5Layout(ScaleLayout):
    def __init__(self, attrs: dict, where: str, prefix: str, resolution: tuple[float, float, float]):
        dims, block = attrs.get("dimensions"), attrs.get("blockSize")
        ok = lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        if not ok(dims) or not ok(block) or len(dims) != len(block) or any(b == 0 for b in block):
            raise MetadataError(f"{where}: 'dimensions' {dims!r} and 'blockSize' {block!r} must be lists of integers of equal length")
        if len(dims) not in (3, 4):
            raise UnsupportedError(f"{where}: N5 dataset of {len(dims)} dimensions: volbridge reads (x, y, z) or (x, y, z, c)")
        if len(dims) == 4 and block[3] != dims[3]:
            raise UnsupportedError(f"{where}: channel dimension blocked by {block[3]} of {dims[3]}: every channel must be in one block")
        axes = attrs.get("axes")  # tensorstore's labels, in the order of 'dimensions' (empty: unlabelled)
        labels = [str(v).lower() for v in axes] if isinstance(axes, list) else []
        if any(name in ("x", "y", "z") and (i > 2 or name != "xyz"[i]) for i, name in enumerate(labels)):
            # (a dataset labelled z, y, x was read transposed, data and resolution: a review found)
            raise UnsupportedError(f"{where}: axes {axes!r}: volbridge reads N5 dimensions x, y, z (fastest first)"
                                   "[, c]; write the dataset in that order")
        dtype = attrs.get("dataType")
        if dtype not in _TYPES:
            raise UnsupportedError(f"{where}: dataType {dtype!r} is not supported (one of {', '.join(_TYPES)})")
        self.dtype = np.dtype(dtype)
        self.stored = self.dtype.newbyteorder(">")
        self.num_channels = dims[3] if len(dims) == 4 else 1
        self.ndim = len(dims)
        self.fill_value = self.dtype.type(0)
        self.compressor = naming(where, _compressor, attrs.get("compression", attrs.get("compressionType", "raw")),
                                 self.dtype.itemsize, where)
        self.prefix = prefix
        bounds = Box((0, 0, 0), tuple(dims[:3]))
        self.grid = ChunkGrid(bounds, tuple(block[:3]), (0, 0, 0))
        self.meta = ScaleMeta(prefix, bounds, resolution, tuple(block[:3]), "n5")

    def _key(self, cell: Cell) -> str:
        parts = [str(i) for i in cell.index] + (["0"] if self.ndim == 4 else [])
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def read_keys(self, cell: Cell) -> list[str]:
        return [self._key(cell)]

    def write_key(self, cell: Cell) -> str:
        return self._key(cell)

    def decode(self, data: bytes, cell: Cell, key: str) -> np.ndarray:
        if len(data) < 4:
            raise ChunkDecodeError(f"N5 block of {len(data)} bytes has no header")
        mode, ndim = struct.unpack_from(">HH", data, 0)
        if mode not in (0, 1) or ndim != self.ndim or len(data) < 4 + 4 * ndim + (4 if mode == 1 else 0):
            raise ChunkDecodeError(f"N5 block header is invalid (mode {mode}, {ndim} dimensions, {self.ndim} expected)")
        shape = struct.unpack_from(f">{ndim}I", data, 4)
        offset = 4 + 4 * ndim + (4 if mode == 1 else 0)
        payload = bytes(data[offset:])
        if self.compressor is not None:
            payload = self.compressor.decompress(payload)
        n = math.prod(shape) * self.dtype.itemsize
        if len(payload) != n:
            raise ChunkDecodeError(f"N5 block of shape {list(shape)} holds {len(payload)} bytes, expected {n}")
        arr = np.frombuffer(payload, dtype=self.stored).reshape(shape, order="F")
        sx, sy, sz = cell.box.shape
        if any(a < b for a, b in zip(shape, (sx, sy, sz))):
            raise ChunkDecodeError(f"N5 block of shape {list(shape)} is smaller than its cell {cell.box.shape}")
        arr = arr[:sx, :sy, :sz]
        return arr[..., None] if self.ndim == 3 else arr

    def encode(self, chunk: np.ndarray, cell: Cell) -> bytes:
        shape = chunk.shape if self.ndim == 4 else chunk.shape[:3]
        header = struct.pack(f">HH{self.ndim}I", 0, self.ndim, *shape)
        payload = np.asarray(chunk, dtype=self.stored).tobytes(order="F")
        if self.compressor is not None:
            payload = self.compressor.compress(payload)
        return header + payload


def _resolution_nm(root: dict, where: str) -> list[float]:
    """The (x, y, z) voxel size in nm from a root's ``resolution`` + ``units`` (tensorstore,
    BigDataViewer) or ``pixelResolution`` {dimensions, unit} (n5-viewer); 1 nm where none.
    (A review found "um" read as nm: resolutions 1000x too small.)"""
    pixel = root.get("pixelResolution")
    if root.get("resolution") is not None:
        values, units = root["resolution"], root.get("units")
    elif isinstance(pixel, dict) and pixel.get("dimensions") is not None:
        values, unit = pixel["dimensions"], pixel.get("unit")
        units = None if unit is None else [unit] * 3
    else:
        return [1.0, 1.0, 1.0]
    if not isinstance(values, list) or len(values) < 3 or not all(isinstance(v, (int, float)) and v > 0 for v in values[:3]):
        raise MetadataError(f"{where}: the resolution must list at least three positive numbers (x, y, z), got {values!r}")
    if units is not None and (not isinstance(units, list) or len(units) < 3):
        raise MetadataError(f"{where}: 'units' must list a unit per dimension, got {units!r}")
    factors = []
    for u in (units or [None] * 3)[:3]:
        nm = unit_nm(u)
        if nm is None:  # N5 has no unit vocabulary: what opened before still opens, said
            warnings.warn(f"{where}: unit {u!r} is not a length unit volbridge knows; its numbers are taken as nm",
                          stacklevel=4)
            nm = 1.0
        factors.append(nm)
    return [float(v) * f for v, f in zip(values[:3], factors)]


class N5Dataset(ChunkedDataset):
    format_name = "n5"

    def __init__(self, store: KVStore, docs: dict | None = None):
        self.store = store
        root = _parse_json(store, ATTRS, read_doc(store, ATTRS, docs)) or {}
        self.root = root
        if "dimensions" in root:
            prefixes, docs = [""], [root]
        else:
            docs = _scale_docs(store)
            prefixes = [f"s{i}" for i in range(len(docs))]
            if not prefixes:
                raise MetadataError(f"no N5 dataset at {store.url} (no 'dimensions' in {ATTRS}, no s0/{ATTRS})")
        self.layouts = []
        for i, (p, attrs) in enumerate(zip(prefixes, docs)):
            where = f"{store.url}/{p + '/' if p else ''}{ATTRS}"
            self.layouts.append(N5Layout(attrs, where, p, tuple(self._resolution(i, attrs, bool(p), where))))
        first = self.layouts[0]
        for lay in self.layouts[1:]:
            if lay.dtype != first.dtype or lay.num_channels != first.num_channels:
                raise MetadataError(f"{store.url}: N5 scales differ in data type or channels")
        self.meta = VolumeMeta(first.dtype, first.num_channels, "image", tuple(l.meta for l in self.layouts), first.fill_value)

    def _factors(self, i: int, attrs: dict, where: str) -> list:
        """Scale ``i``'s downsampling factors: its own ``downsamplingFactors``, else the root's
        ``downsamplingFactors`` or ``scales`` (n5-viewer's two names for one list); s0 is 1."""
        if attrs.get("downsamplingFactors") is not None:
            return list(attrs["downsamplingFactors"])
        for name in ("downsamplingFactors", "scales"):
            listed = self.root.get(name)
            if isinstance(listed, list):
                if i >= len(listed):  # (an IndexError came out)
                    raise MetadataError(f"{self.store.url}/{ATTRS}: '{name}' lists {len(listed)} scales, s{i} has none")
                return list(listed[i])
        if i == 0:
            return [1, 1, 1]
        # none written (tensorstore's plain pyramids): the ratio of s0's dimensions to this level's
        # (they opened before at factor 1, every level at s0's voxel size)
        dims0, dims = self._dims(0), attrs.get("dimensions")
        if not (isinstance(dims0, list) and isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims[:3])):
            raise MetadataError(f"{where}: no downsamplingFactors for s{i} and no dimensions to infer them from")
        return [max(1, round(a / b)) for a, b in zip(dims0[:3], dims[:3])]

    def _dims(self, i: int):
        doc = self.root if i == 0 and "dimensions" in self.root else _read_json(self.store, f"s{i}/{ATTRS}") or {}
        return doc.get("dimensions")

    def _resolution(self, i: int, attrs: dict, scaled: bool, where: str) -> list[float]:
        """Scale ``i``'s voxel size (nm): its own ``resolution`` (tensorstore writes each level's
        own), else a ``pixelResolution`` (its own or the root's) or the root's ``resolution`` times
        its factors (n5-viewer; N5-Spark puts pixelResolution on each level)."""
        if scaled and attrs.get("resolution") is not None:
            return _resolution_nm(attrs, where)
        base = attrs if scaled and isinstance(attrs.get("pixelResolution"), dict) else self.root
        res = _resolution_nm(base, where)
        factors = self._factors(i, attrs, where) if scaled else [1, 1, 1]
        if len(factors) < 3 or not all(isinstance(f, (int, float)) and f > 0 for f in factors[:3]):
            raise MetadataError(f"{where}: downsampling factors {factors!r} are not three positive numbers")
        return [float(r) * float(f) for r, f in zip(res[:3], factors[:3])]

    def layout(self, scale: int) -> N5Layout:
        return self.layouts[scale]

    def metadata_json(self) -> dict:
        return self.root

    def add_scale(self, factor) -> None:
        """Append ``s<n>`` ``factor`` (x, y, z) coarser than the last scale: its blocks, type and
        compression, ``ceil`` dimensions, cumulative ``downsamplingFactors`` (also in the root's list)."""
        f = [int(v) for v in factor]
        if len(f) != 3 or any(v < 1 for v in f):
            raise MetadataError(f"a downsampling factor is 3 integers >= 1, got {tuple(factor)}")
        if not self.layouts[-1].prefix:
            raise UnsupportedError(
                f"{self.store.url} is a single-scale N5 dataset at the root: it has no s0, s1, ... groups to add to "
                "(create it with num_scales >= 2, or write the pyramid beside it)"
            )
        n = len(self.layouts)
        where = f"{self.store.url}/s{n - 1}/{ATTRS}"
        last = _read_json(self.store, f"s{n - 1}/{ATTRS}")
        if last is None or self.store.get(f"s{n}/{ATTRS}") is not None:
            raise MetadataError(f"{self.store.url} changed since it was opened (its scales differ); open it again to add a scale")
        try:  # (the root's 'scales' list was missed: a level at the wrong factor)
            prev = self._factors(n - 1, last, where)
        except MetadataError:
            if not isinstance(last.get("resolution"), list):
                raise
            prev = None  # levels that say only their own voxel size (tensorstore's): the new one too
        dims = list(last["dimensions"])
        dims[:3] = [math.ceil(d / k) for d, k in zip(dims[:3], f)]
        new = {**last, "dimensions": dims}
        spatial = None if prev is None else [int(a * k) for a, k in zip(prev[:3], f)]
        if spatial is not None:
            new["downsamplingFactors"] = spatial + [1] * (len(dims) - 3)  # channels too
        if isinstance(last.get("resolution"), list):  # a level's own voxel size (tensorstore's), not the last one's
            new["resolution"] = [r * k for r, k in zip(last["resolution"][:3], f)] + list(last["resolution"][3:])
        self.store.put(f"s{n}/{ATTRS}", json.dumps(new).encode())

        def merge(old: bytes | None) -> bytes:
            # the stored root, not this handle's copy: what was written since it was opened stays
            root = _parse_json(self.store, ATTRS, old) or {}
            for name in ("downsamplingFactors", "scales"):
                if isinstance(root.get(name), list) and len(root[name]) == n:
                    root[name] = [*root[name], spatial]
            return json.dumps(root).encode()

        if spatial is not None and self.store.get(ATTRS) is not None:
            self.store.update(ATTRS, merge)
        self.__init__(self.store)  # type: ignore[misc]

    @classmethod
    def create(cls, store: KVStore, *, bounds: Box, dtype, chunk_shape, resolution=(1, 1, 1), num_channels: int = 1,
               num_scales: int = 1, factor=(2, 2, 1), compression: str | None = "gzip", overwrite: bool = False,
               **ignored) -> N5Dataset:
        if any(bounds.start):
            raise UnsupportedError("an N5 dataset starts at 0: give shape=, or bounds starting at (0, 0, 0)")
        existing = store.get(ATTRS) is not None or store.get(f"s0/{ATTRS}") is not None
        if existing and not overwrite:
            raise MetadataError(f"an N5 dataset already exists at {store.url} (pass overwrite=True to replace it)")
        dtype = np.dtype(dtype)
        if dtype.name not in _TYPES:
            raise UnsupportedError(f"N5 cannot store {dtype}")
        comp = {None: {"type": "raw"}, "raw": {"type": "raw"}, "gzip": {"type": "gzip", "level": -1, "useZlib": False},
                "zstd": {"type": "zstd", "level": 3}, "lz4": {"type": "lz4", "blockSize": 1 << 16},
                "blosc": {"type": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}}
        if compression not in comp:
            raise UnsupportedError(f"N5 compression {compression!r}: use one of gzip, zstd, lz4, blosc or None")
        extra = [num_channels] if num_channels > 1 else []
        # a dataset's per-dimension attributes have one entry per dimension, channels too
        # (tensorstore refuses a 4-D dataset whose units list 3)
        per_channel = [1] * len(extra)

        def attrs(level: int) -> dict:
            f = [fi**level for fi in factor]
            dims = [math.ceil(s / fi) for s, fi in zip(bounds.stop, f)]
            return {"dimensions": dims + extra, "blockSize": list(chunk_shape) + extra, "dataType": dtype.name,
                    "compression": comp[compression], "downsamplingFactors": f + per_channel}
        if existing:
            clear_for_overwrite(store)
        if num_scales == 1:
            store.put(ATTRS, json.dumps({"n5": "4.0.0", **attrs(0), "resolution": list(resolution) + per_channel,
                                         "units": ["nm"] * 3 + [""] * len(extra)}).encode())
        else:
            store.put(ATTRS, json.dumps({"n5": "4.0.0", "resolution": list(resolution), "units": ["nm"] * 3,
                                         "downsamplingFactors": [[fi**i for fi in factor] for i in range(num_scales)]}).encode())
            for i in range(num_scales):
                store.put(f"s{i}/{ATTRS}", json.dumps(attrs(i)).encode())
        return cls(store)


def detect(store: KVStore) -> bool:
    doc = store.get(ATTRS)
    if doc is None:
        return False
    try:
        d = json.loads(doc)
    except ValueError:
        return True
    return isinstance(d, dict) and ("dimensions" in d or "n5" in d)
