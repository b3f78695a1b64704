"""Zarr v2 (``.zarray``) and v3 (``zarr.json``) arrays, plain or sharded (``sharding_indexed``).

A volume is a 3-D ``(z, y, x)`` array or a 4-D ``(c, z, y, x)`` one (C order, x fastest, as
zarr-python and OME-Zarr lay out images), seen by the engine as ``(x, y, z, c)``. The grid is
anchored at 0 and edge chunks are stored full-size, padded with the fill value. Keys follow the
array's dimension order: ``z.y.x`` (v2, ``.`` or ``/``) or ``c/z/y/x`` (v3 default encoding).
Facts are from ``shared/specs/formats.md`` sections 2-3, checked against zarr-python and
tensorstore in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.zarr_pipeline import ZarrPipeline, config_object, v2_compressor, v3_pipeline
from ..errors import MetadataError, UnsupportedError
from ..geometry import Box, Cell, ChunkGrid
from ..kv import KVStore
from .base import ChunkedDataset, ScaleLayout, ScaleMeta, VolumeMeta, clear_for_overwrite, naming, read_doc
from .zarr_sharding import ZarrShardIndexCodec, ZarrSharding

V2_META, V3_META = ".zarray", "zarr.json"

_V3_TYPES = {
    "bool": "?", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1", "uint16": "u2",
    "uint32": "u4", "uint64": "u8", "float16": "f2", "float32": "f4", "float64": "f8",
    "complex64": "c8", "complex128": "c16",
}


def _json(raw: bytes, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise MetadataError(f"{where}: expected a JSON object")
    return doc


def _ints(doc: dict, name: str, where: str) -> tuple[int, ...]:
    v = doc.get(name)
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise MetadataError(f"{where}: {name!r} must be a list of non-negative integers, got {v!r}")
    return tuple(v)


def parse_fill(value: Any, dtype: np.dtype, where: str) -> Any:
    """A zarr fill value as a numpy scalar of ``dtype`` (None in v2 means "undefined": use 0)."""
    if value is None:
        return dtype.type(0)
    if isinstance(value, str):
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        if value in special and dtype.kind in "fc":
            return dtype.type(special[value])
        if value.startswith("0x") and dtype.kind == "f":
            bits = int(value, 16)
            return np.frombuffer(bits.to_bytes(dtype.itemsize, "little"), dtype=dtype.newbyteorder("<"))[0]
        raise MetadataError(f"{where}: fill_value {value!r} is not valid for {dtype}")
    if isinstance(value, list) and dtype.kind == "c" and len(value) == 2:
        return dtype.type(complex(*[parse_fill(v, np.dtype("f8"), where) for v in value]))
    # numpy would take 1.5 (or true) for a uint16 as 1: a fill that is not the type's is malformed
    exact = (dtype.kind == "b" and (isinstance(value, bool) or value in (0, 1))
             or dtype.kind in "iu" and not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()
             or dtype.kind in "fc" and not isinstance(value, bool) and isinstance(value, (int, float)))
    if not exact:
        raise MetadataError(f"{where}: fill_value {value!r} is not a value of {dtype}")
    try:
        return dtype.type(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise MetadataError(f"{where}: fill_value {value!r} is not valid for {dtype}") from e


def fill_json(value: Any, dtype: np.dtype) -> Any:
    if dtype.kind == "c":
        part = np.dtype(f"f{dtype.itemsize // 2}")
        return [fill_json(value.real, part), fill_json(value.imag, part)]
    if dtype.kind == "f":
        if np.isnan(value):
            return "NaN"
        if np.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if dtype.kind == "b":
        return bool(value)
    return int(value)


@dataclass
class ZarrArray:
    """What volbridge needs of one zarr array's metadata."""

    zarr_format: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype  # native byte order: what reads return
    fill_value: Any
    pipeline: ZarrPipeline
    separator: str
    key_prefix: str  # "" (v2, v3 "v2" encoding) or "c" (v3 default encoding)
    doc: dict
    #: Sharded arrays (v3 ``sharding_indexed``): ``chunks`` is the inner chunk shape and this
    #: the shard shape (the outer chunk grid); the objects are shards named by outer-grid index.
    shard_shape: tuple[int, ...] | None = None
    shard_index: ZarrShardIndexCodec | None = None
    index_at_end: bool = True

    def chunk_key(self, index: tuple[int, ...]) -> str:
        parts = [str(i) for i in index]
        if self.key_prefix:
            return self.separator.join([self.key_prefix, *parts])
        return self.separator.join(parts) if parts else "0"


def parse_v2(raw: bytes, where: str) -> ZarrArray:
    doc = _json(raw, where)
    if doc.get("zarr_format") != 2:
        raise MetadataError(f"{where}: zarr_format must be 2, got {doc.get('zarr_format')!r}")
    shape, chunks = _ints(doc, "shape", where), _ints(doc, "chunks", where)
    if len(shape) != len(chunks) or any(c == 0 for c in chunks):
        raise MetadataError(f"{where}: chunks {list(chunks)} do not fit shape {list(shape)}")
    typestr = doc.get("dtype")
    if not isinstance(typestr, str):
        raise UnsupportedError(f"{where}: structured dtype {typestr!r} is not supported")
    try:
        stored = np.dtype(typestr)
    except TypeError as e:
        raise MetadataError(f"{where}: dtype {typestr!r} is not a numpy type string") from e
    if stored.kind not in "biufc":
        raise UnsupportedError(f"{where}: dtype {typestr!r} is not a numeric type")
    order = doc.get("order", "C")
    if order not in ("C", "F"):
        raise MetadataError(f"{where}: order must be 'C' or 'F', got {order!r}")
    filters = doc.get("filters")
    if filters:
        ids = [f.get("id") if isinstance(f, dict) else f for f in filters]
        raise UnsupportedError(f"{where}: zarr v2 filters {ids} are not supported")
    steps = []
    comp = naming(where, v2_compressor, doc.get("compressor"), stored.itemsize)
    if comp is not None:
        steps.append(comp)
    sep = doc.get("dimension_separator", ".")
    if sep not in (".", "/"):
        raise MetadataError(f"{where}: dimension_separator must be '.' or '/', got {sep!r}")
    native = stored.newbyteorder("=")
    return ZarrArray(2, shape, chunks, native, parse_fill(doc.get("fill_value"), native, where),
                     ZarrPipeline(chunks, stored, order, None, tuple(steps)), sep, "", doc)


def parse_v3(raw: bytes, where: str) -> ZarrArray:
    doc = _json(raw, where)
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        raise MetadataError(f"{where}: not a zarr v3 array (zarr_format 3, node_type 'array')")
    shape = _ints(doc, "shape", where)
    grid = config_object(doc.get("chunk_grid"), f"{where}: 'chunk_grid'")
    if grid.get("name") != "regular":
        raise UnsupportedError(f"{where}: chunk grid {grid.get('name')!r} is not supported (only 'regular')")
    chunks = _ints(config_object(grid.get("configuration"), f"{where}: the chunk grid's 'configuration'"), "chunk_shape", where)
    if len(chunks) != len(shape) or any(c == 0 for c in chunks):
        raise MetadataError(f"{where}: chunk_shape {list(chunks)} does not fit shape {list(shape)}")
    dt = doc.get("data_type")
    if dt not in _V3_TYPES:
        raise UnsupportedError(f"{where}: data_type {dt!r} is not supported")
    native = np.dtype(_V3_TYPES[dt])
    for ext in doc.get("storage_transformers") or []:
        raise UnsupportedError(f"{where}: storage transformer {ext!r} is not supported")
    codecs = doc.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        raise MetadataError(f"{where}: 'codecs' must be a non-empty list")
    shard_shape = index = None
    at_end = True
    if any(isinstance(c, dict) and c.get("name") == "sharding_indexed" for c in codecs):
        if len(codecs) != 1:
            raise UnsupportedError(f"{where}: sharding_indexed must be the only outer codec, got {[c.get('name') for c in codecs]}")
        cfg = config_object(codecs[0].get("configuration"), f"{where}: the configuration of sharding_indexed")
        shard_shape, chunks = chunks, _ints(cfg, "chunk_shape", f"{where} sharding_indexed")
        if len(chunks) != len(shard_shape) or any(c == 0 or s % c for s, c in zip(shard_shape, chunks)):
            raise MetadataError(f"{where}: inner chunk_shape {list(chunks)} does not divide the shard shape {list(shard_shape)}")
        location = cfg.get("index_location", "end")
        if location not in ("start", "end"):
            raise MetadataError(f"{where}: index_location must be 'start' or 'end', got {location!r}")
        at_end = location == "end"
        index = ZarrShardIndexCodec(cfg.get("index_codecs"), where)
        codecs = cfg.get("codecs")
        if not isinstance(codecs, list) or not codecs:
            raise MetadataError(f"{where}: sharding_indexed 'codecs' must be a non-empty list")
        if any(isinstance(c, dict) and c.get("name") == "sharding_indexed" for c in codecs):
            raise UnsupportedError(f"{where}: nested sharding is not supported")
    pipeline = naming(where, v3_pipeline, codecs, chunks, native)
    enc = config_object(doc.get("chunk_key_encoding"), f"{where}: 'chunk_key_encoding'") or {"name": "default"}
    cfg = config_object(enc.get("configuration"), f"{where}: the chunk_key_encoding's 'configuration'")
    if enc.get("name") == "default":
        sep, prefix = cfg.get("separator", "/"), "c"
    elif enc.get("name") == "v2":
        sep, prefix = cfg.get("separator", "."), ""
    else:
        raise UnsupportedError(f"{where}: chunk_key_encoding {enc.get('name')!r} is not supported")
    if sep not in (".", "/"):
        raise MetadataError(f"{where}: chunk key separator must be '.' or '/', got {sep!r}")
    known = {"zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value",
             "codecs", "attributes", "storage_transformers", "dimension_names"}
    for k, v in doc.items():
        if k not in known and not (isinstance(v, dict) and v.get("must_understand") is False):
            raise UnsupportedError(f"{where}: unknown member {k!r} must be understood (it lacks \"must_understand\": false)")
    if "fill_value" not in doc:
        raise MetadataError(f"{where}: missing required field 'fill_value'")
    return ZarrArray(3, shape, chunks, native, parse_fill(doc["fill_value"], native, where), pipeline, sep, prefix, doc,
                     shard_shape, index, at_end)


class ZarrLayout(ScaleLayout):
    """``channel_axis``: which leading axis holds channels (None: none). Other leading axes (an
    OME ``t`` axis, say) must have length 1. ``offset`` (x, y, z) places voxel 0 of the array.

    A channel axis chunked smaller than the channel count (OME-Zarr's usual ``(1, z, y, x)``
    chunks) becomes :attr:`channel_parts`: one layout per channel chunk, each an ordinary layout
    of that chunk's channels, which the engine reads and writes side by side (``channel_chunk``
    makes such a part)."""

    def __init__(self, arr: ZarrArray, resolution=(1.0, 1.0, 1.0), offset=(0, 0, 0), channel_axis: int | None = -1,
                 key_prefix: str = "", channel_chunk: int | None = None):
        nd = len(arr.shape)
        if nd < 3:
            raise UnsupportedError(f"zarr array of {nd} dimensions: volbridge reads (z, y, x) or (c, z, y, x) arrays")
        if channel_axis == -1:  # plain zarr: a 4-D array is (c, z, y, x)
            names = arr.doc.get("dimension_names") if isinstance(arr.doc, dict) else None
            if isinstance(names, list):  # names may be null, each
                lower = [n.lower() if isinstance(n, str) else None for n in names]
                if ({"x", "y", "z"} & set(lower)) and lower[-3:] != ["z", "y", "x"]:
                    # the names say the spatial axes are elsewhere: reading by position would mislabel them
                    raise UnsupportedError(f"zarr array with dimension_names {names}: volbridge reads arrays whose "
                                           "last three axes are z, y, x (channels first)")
            channel_axis = 0 if nd == 4 else None
            if nd > 4:
                raise UnsupportedError(f"zarr array of {nd} dimensions: volbridge reads (z, y, x) or (c, z, y, x) arrays")
        for axis in range(nd - 3):
            if axis != channel_axis and arr.shape[axis] != 1:
                raise UnsupportedError(f"zarr axis {axis} has length {arr.shape[axis]}: only a channel axis may exceed 1 before (z, y, x)")
        self.arr = arr
        self.lead = nd - 3
        self.channel_axis = channel_axis
        self.has_channels = channel_axis is not None
        self.num_channels = arr.shape[channel_axis] if self.has_channels else 1
        self.channel_chunk = channel_chunk or 0
        per_chunk = arr.chunks[channel_axis] if self.has_channels else 1
        if channel_chunk is not None:  # a part: the channels of one channel chunk
            self.num_channels = min(per_chunk, self.num_channels - channel_chunk * per_chunk)
        elif self.has_channels and per_chunk < self.num_channels:
            self.channel_parts = [
                (slice(g * per_chunk, min((g + 1) * per_chunk, self.num_channels)),
                 ZarrLayout(arr, resolution, offset, channel_axis, key_prefix, channel_chunk=g))
                for g in range(-(-self.num_channels // per_chunk))
            ]
        self.dtype = arr.dtype
        self.fill_value = arr.fill_value
        self.key_prefix = key_prefix
        spatial, chunk = arr.shape[-3:][::-1], arr.chunks[-3:][::-1]  # (x, y, z)
        bounds = Box.from_shape(spatial, tuple(offset))
        self.grid = ChunkGrid(bounds, tuple(chunk), tuple(offset))
        self.meta = ScaleMeta(key_prefix, bounds, tuple(resolution), tuple(chunk), f"zarr v{arr.zarr_format}")
        # Stored chunk bytes are (x, y, z, c) Fortran-order voxels when nothing is transposed or
        # swapped and no leading axis but channels has chunks longer than 1.
        lead_chunks = [c for a, c in enumerate(arr.chunks[:self.lead]) if a != self.channel_axis]
        self.decodes_to_bytes = arr.pipeline.plain and all(c == 1 for c in lead_chunks)
        self.voxels_stored_raw = self.decodes_to_bytes and not arr.pipeline.steps
        self.stored_compression = arr.pipeline.compression if self.decodes_to_bytes else None
        self.stored_compression_level = arr.pipeline.steps[0].level if self.stored_compression else None
        self._stored4 = (*chunk, per_chunk)
        if arr.shard_shape is not None:
            grid_shape = tuple(-(-n // c) for n, c in zip(arr.shape, arr.chunks))
            cps = tuple(s // c for s, c in zip(arr.shard_shape, arr.chunks))
            lead = tuple(self.channel_chunk if a == self.channel_axis else 0 for a in range(self.lead))
            self.sharding = ZarrSharding(cps, grid_shape, arr.shard_index, arr.index_at_end, self._key, lead)

    def _index(self, cell: Cell) -> tuple[int, ...]:
        lead = tuple(self.channel_chunk if a == self.channel_axis else 0 for a in range(self.lead))
        return lead + cell.index[::-1]

    def _key(self, index: tuple[int, ...]) -> str:
        key = self.arr.chunk_key(index)
        return f"{self.key_prefix}/{key}" if self.key_prefix else key

    def write_key(self, cell: Cell) -> str:
        return self._key(self._index(cell))

    def read_keys(self, cell: Cell) -> list[str]:
        return [self.write_key(cell)]

    def _squeeze(self, full: np.ndarray) -> np.ndarray:
        """(lead..., z, y, x) -> (c, z, y, x), dropping the length-1 leading axes."""
        if not self.has_channels:
            return full.reshape(full.shape[-3:])[None]
        index = tuple(slice(None) if a == self.channel_axis else 0 for a in range(self.lead))
        return full[index]

    def decode(self, data: bytes, cell: Cell, key: str) -> np.ndarray:
        czyx = self._squeeze(self.arr.pipeline.decode(data))
        sx, sy, sz = cell.box.shape
        return czyx[: self.num_channels, :sz, :sy, :sx].transpose(3, 2, 1, 0)

    def decode_bytes(self, data: bytes, shape: tuple[int, int, int], key: str):
        return self.arr.pipeline.decode_bytes(data), self._stored4

    def encode_bytes(self, data, cell: Cell):
        return self.arr.pipeline.encode_bytes(data)

    def stored_shapes(self, cell_shapes: np.ndarray) -> np.ndarray:
        shapes = np.empty((len(cell_shapes), 4), cell_shapes.dtype)
        shapes[:] = self._stored4
        return shapes

    def encode(self, chunk: np.ndarray, cell: Cell) -> bytes:
        sx, sy, sz = cell.box.shape
        if self.lead == 0 and (sz, sy, sx) == tuple(self.arr.chunks):
            # a whole chunk of a plain 3-D array: serialised straight from the caller's view, one
            # copy (a padded copy first cost ~3x: a fresh fill, then the copy, then the bytes)
            return self.arr.pipeline.encode(chunk[..., 0].transpose(2, 1, 0))
        full = np.full(self.arr.chunks, self.fill_value, dtype=self.dtype)
        self._squeeze(full)[: self.num_channels, :sz, :sy, :sx] = chunk.transpose(3, 2, 1, 0)
        return self.arr.pipeline.encode(full)


class ZarrDataset(ChunkedDataset):
    format_name = "zarr"

    def __init__(self, store: KVStore, arr: ZarrArray | None = None, docs: dict | None = None):
        self.store = store
        if arr is None:
            raw = read_doc(store, V3_META, docs)
            if raw is not None:
                arr = parse_v3(raw, f"{store.url}/{V3_META}")
            else:
                raw = read_doc(store, V2_META, docs)
                if raw is None:
                    raise MetadataError(f"no zarr array at {store.url} (neither {V3_META} nor {V2_META})")
                arr = parse_v2(raw, f"{store.url}/{V2_META}")
        self.arr = arr
        self._layout = ZarrLayout(arr)
        self.meta = VolumeMeta(arr.dtype, self._layout.num_channels, "image", (self._layout.meta,), arr.fill_value)

    def layout(self, scale: int) -> ZarrLayout:
        if scale != 0:
            raise UnsupportedError("a plain zarr array has one scale (OME-Zarr multiscales hold several)")
        return self._layout

    def metadata_json(self) -> dict:
        return self.arr.doc

    @property
    def attributes_location(self) -> tuple[str, str | None]:  # type: ignore[override]
        return (V3_META, "attributes") if self.arr.zarr_format == 3 else (".zattrs", None)

    @property
    def version_key(self) -> str:  # type: ignore[override]
        return V3_META if self.arr.zarr_format == 3 else V2_META

    @classmethod
    def create(cls, store: KVStore, *, bounds: Box, dtype, chunk_shape, num_channels: int = 1, zarr_format: int = 3,
               compression: str | None = "zstd", fill_value=0, overwrite: bool = False,
               dimension_names: list[str] | None = None, shard_shape=None, checksum: bool = False,
               **ignored) -> "ZarrDataset":
        if any(bounds.start):
            raise UnsupportedError("a zarr array starts at 0: give shape=, or bounds starting at (0, 0, 0)")
        existing = any(store.get(key) is not None for key in (V2_META, V3_META))
        if existing and not overwrite:
            raise MetadataError(f"a zarr array already exists at {store.url} (pass overwrite=True to replace it)")
        dtype = np.dtype(dtype)
        shape = tuple(bounds.stop[::-1])
        chunks = tuple(chunk_shape[::-1])
        if num_channels > 1:
            shape, chunks = (num_channels, *shape), (num_channels, *chunks)
        fill = parse_fill(fill_value, dtype, "create")
        if zarr_format == 2:
            if checksum:
                raise UnsupportedError("zarr v2 has no checksum codec: use zarr v3 (zarr3://, or OME-Zarr 0.5) for checksum=True")
            if shard_shape is not None:
                raise UnsupportedError("zarr v2 has no shards: use zarr v3 (zarr3://) for shard_shape")
            comp = {None: None, "zstd": {"id": "zstd", "level": 3}, "gzip": {"id": "gzip", "level": 5},
                    "blosc": {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0}}
            if compression not in comp:
                raise UnsupportedError(f"zarr v2 compression {compression!r}: use one of zstd, gzip, blosc or None")
            doc = {"zarr_format": 2, "shape": list(shape), "chunks": list(chunks), "dtype": dtype.newbyteorder("<").str if dtype.itemsize > 1 else dtype.str,
                   "compressor": comp[compression], "fill_value": fill_json(fill, dtype), "order": "C", "filters": None,
                   "dimension_separator": "/"}
            if existing:
                clear_for_overwrite(store)
            store.put(V2_META, json.dumps(doc, indent=2).encode())
            store.delete(V3_META)
            return cls(store, parse_v2(json.dumps(doc).encode(), f"{store.url}/{V2_META}"))
        comp3 = {None: [], "zstd": [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}],
                 "gzip": [{"name": "gzip", "configuration": {"level": 5}}],
                 "blosc": [{"name": "blosc", "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle",
                                                              "typesize": dtype.itemsize, "blocksize": 0}}]}
        if compression not in comp3:
            raise UnsupportedError(f"zarr v3 compression {compression!r}: use one of zstd, gzip, blosc or None")
        names = dimension_names or (["z", "y", "x"] if num_channels == 1 else ["c", "z", "y", "x"])
        if dtype.name not in _V3_TYPES:
            raise UnsupportedError(f"zarr v3 cannot store {dtype}; use one of {', '.join(_V3_TYPES)}")
        # crc32c last: it covers the stored bytes, so damage raises before anything is decoded
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, *comp3[compression]]
        codecs += [{"name": "crc32c"}] if checksum else []
        grid_chunks = chunks
        if shard_shape is not None:
            outer = tuple(shard_shape[::-1]) if num_channels == 1 else (num_channels, *shard_shape[::-1])
            if len(outer) != len(chunks) or any(o <= 0 or o % c for o, c in zip(outer, chunks)):
                raise MetadataError(f"shard_shape {tuple(shard_shape)} must be a positive multiple of chunk_shape {tuple(chunk_shape)}")
            codecs = [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": list(chunks), "codecs": codecs, "index_location": "end",
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]
            grid_chunks = outer
        doc = {"zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": dtype.name,
               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(grid_chunks)}},
               "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
               "fill_value": fill_json(fill, dtype), "codecs": codecs,
               "attributes": {}, "dimension_names": names}
        if existing:
            clear_for_overwrite(store)
        store.put(V3_META, json.dumps(doc, indent=2).encode())
        store.delete(V2_META)
        return cls(store, parse_v3(json.dumps(doc).encode(), f"{store.url}/{V3_META}"))


def detect(store: KVStore) -> bool:
    raw = store.get(V3_META)
    if raw is not None:
        try:
            doc = json.loads(raw)
            return not (isinstance(doc, dict) and doc.get("node_type") == "group")
        except ValueError:
            return True  # a broken zarr.json is still zarr: opening it reports the problem
    return store.exists(V2_META)
