"""Neuroglancer precomputed volumes: the ``info`` file, chunk keys and codecs (shards in
``precomputed_sharding``).

Facts follow ``shared/specs/formats.md`` section 1 and are checked against cloud-volume and
tensorstore in the tests. All tuples here are in the format's own (x, y, z) order.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..codecs import (
    ChunkCodec,
    CompressedSegmentationCodec,
    JpegCodec,
    PngCodec,
    RawCodec,
    get_compressor,
)
from ..codecs.base import little_endian
from ..errors import ChunkDecodeError, MetadataError, UnsupportedError
from ..geometry import Box, Cell, ChunkGrid
from ..kv import KVStore
from .base import ChunkedDataset, ScaleLayout, ScaleMeta, VolumeMeta, read_doc
from .precomputed_sharding import PrecomputedVolumeSharding, ShardingSpec

INFO_KEY = "info"
#: The spec's data types, plus float64/int64 and bool that other writers (BigArrays.jl) use.
DATA_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
#: Spec encodings plus BigArrays.jl's compressed raw encodings.
ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation", "gzip", "zstd", "blosclz")
UNSUPPORTED_ENCODINGS = ("compresso", "jxl", "crackle", "fpzip", "kempressed", "zfpc")
#: Transport compression of raw and compressed_segmentation chunks. The store applies it in its
#: own convention: CloudVolume's ``<key>.gz`` files on disk, ``Content-Encoding`` on object stores.
TRANSPORT_COMPRESSIONS = ("gzip", "zstd", "br")


# -- info parsing and validation ------------------------------------------------------------------
def _vec(obj: dict, name: str, where: str, kind=int, positive=False, default=None) -> tuple:
    v = obj.get(name, default)
    if v is None:
        raise MetadataError(f"{where}: missing required field {name!r}")
    ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
        isinstance(e, (int, float)) and not isinstance(e, bool) and (kind is float or float(e).is_integer())
        for e in v
    )
    if not ok:
        raise MetadataError(f"{where}: {name!r} must be 3 {'numbers' if kind is float else 'integers'}, got {v!r}")
    v = tuple(kind(e) for e in v)
    if positive and any(e <= 0 for e in v):
        raise MetadataError(f"{where}: {name!r} must be positive, got {list(v)}")
    return v


@dataclass(frozen=True)
class PrecomputedScale:
    key: str
    size: tuple[int, int, int]
    resolution: tuple[float, float, float]
    voxel_offset: tuple[int, int, int]
    chunk_size: tuple[int, int, int]
    encoding: str
    cseg_block_size: tuple[int, int, int] | None
    sharding: dict | None
    raw: dict

    @property
    def bounds(self) -> Box:
        return Box.from_shape(self.size, self.voxel_offset)


def parse_info(data: bytes | str | dict, where: str = "info") -> dict:
    """Validate an ``info`` document; returns the parsed JSON with scales as PrecomputedScale."""
    if isinstance(data, dict):
        info = data
    else:
        try:
            info = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise MetadataError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(info, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(info).__name__}")
    t = info.get("@type", "neuroglancer_multiscale_volume")
    if t != "neuroglancer_multiscale_volume":
        raise MetadataError(f"{where}: @type is {t!r}, expected 'neuroglancer_multiscale_volume'")
    if info.get("type") not in ("image", "segmentation"):
        raise MetadataError(f"{where}: 'type' must be 'image' or 'segmentation', got {info.get('type')!r}")
    if info.get("data_type") not in DATA_TYPES:
        raise MetadataError(f"{where}: 'data_type' {info.get('data_type')!r} is not one of {', '.join(DATA_TYPES)}")
    nc = info.get("num_channels")
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise MetadataError(f"{where}: 'num_channels' must be an integer >= 1, got {nc!r}")
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales:
        raise MetadataError(f"{where}: 'scales' must be a non-empty list")
    parsed = []
    for i, s in enumerate(scales):
        sw = f"{where}: scales[{i}]"
        if not isinstance(s, dict):
            raise MetadataError(f"{sw} must be an object")
        key = s.get("key")
        if not isinstance(key, str) or not key:
            raise MetadataError(f"{sw}: 'key' must be a non-empty string")
        if any(p.key.strip("/") == key.strip("/") for p in parsed):  # two scales would share chunk files
            raise MetadataError(f"{sw}: key {key!r} is already the key of another scale")
        chunk_sizes = s.get("chunk_sizes")
        if not isinstance(chunk_sizes, list) or not chunk_sizes:
            raise MetadataError(f"{sw}: 'chunk_sizes' must be a non-empty list of [x, y, z]")
        enc = s.get("encoding")
        if enc in UNSUPPORTED_ENCODINGS:
            pass  # parsed, refused when the scale is read or written
        elif enc not in ENCODINGS:
            raise MetadataError(f"{sw}: unknown encoding {enc!r}; expected one of {', '.join(ENCODINGS)}")
        block = None
        if enc == "compressed_segmentation":
            block = _vec(s, "compressed_segmentation_block_size", sw, positive=True)
            if info["data_type"] not in ("uint32", "uint64"):
                raise MetadataError(f"{sw}: compressed_segmentation needs uint32 or uint64, not {info['data_type']}")
        sharding = s.get("sharding")
        if sharding is not None:
            if not isinstance(sharding, dict):
                raise MetadataError(f"{sw}: 'sharding' must be an object")
            ShardingSpec(sharding, sw)
            if len(chunk_sizes) != 1:
                raise MetadataError(f"{sw}: a sharded scale has exactly one chunk size, got {len(chunk_sizes)}")
        parsed.append(
            PrecomputedScale(
                key=key,
                size=_vec(s, "size", sw, positive=True),
                resolution=_vec(s, "resolution", sw, kind=float, positive=True),
                voxel_offset=_vec(s, "voxel_offset", sw, default=[0, 0, 0]),
                chunk_size=_vec({"chunk_sizes[0]": chunk_sizes[0]}, "chunk_sizes[0]", sw, positive=True),
                encoding=enc,
                cseg_block_size=block,
                sharding=sharding,
                raw=s,
            )
        )
    return {**info, "scales": parsed}


def format_resolution(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else repr(float(r))


def scale_key(resolution: Sequence[float]) -> str:
    """Tensorstore's and CloudVolume's default scale key: ``<xres>_<yres>_<zres>``."""
    return "_".join(format_resolution(r) for r in resolution)


def build_info(
    *,
    bounds: Box,
    dtype: str,
    chunk_shape: Sequence[int],
    resolution: Sequence[float],
    encoding: str = "raw",
    layer_type: str = "image",
    num_channels: int = 1,
    num_scales: int = 1,
    factor: Sequence[int] = (2, 2, 1),
    compressed_segmentation_block_size: Sequence[int] = (8, 8, 8),
    jpeg_quality: int | None = None,
    compression: str | None = None,
    shard_shape: Sequence[int] | None = None,
) -> dict:
    """A validated ``info`` for a new volume, all tuples (x, y, z). ``shard_shape``: see
    :func:`sharding_for`."""
    dtype = np.dtype(dtype).name
    if dtype not in DATA_TYPES:
        raise MetadataError(f"precomputed cannot store {dtype}; use one of {', '.join(DATA_TYPES)}")
    if layer_type not in ("image", "segmentation"):
        raise MetadataError(f"layer_type must be 'image' or 'segmentation', got {layer_type!r}")
    if layer_type == "segmentation" and num_channels != 1:
        raise MetadataError("a segmentation layer has exactly 1 channel")
    if encoding not in ENCODINGS:
        raise UnsupportedError(f"cannot write encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    _codec_for(encoding, np.dtype(dtype), num_channels, compressed_segmentation_block_size, jpeg_quality)
    if compression is not None:
        if compression not in TRANSPORT_COMPRESSIONS:
            raise UnsupportedError(f"compression {compression!r} not available; use one of {', '.join(TRANSPORT_COMPRESSIONS)}")
        if encoding not in ("raw", "compressed_segmentation"):
            raise UnsupportedError(f"compression applies to raw and compressed_segmentation chunks, not {encoding}")
    if num_scales < 1:
        raise MetadataError(f"num_scales must be >= 1, got {num_scales}")
    if len(factor) != 3 or any(isinstance(fi, bool) or int(fi) != fi or fi < 1 for fi in factor):
        raise MetadataError(f"a downsampling factor is 3 integers >= 1, got {tuple(factor)}")
    if num_scales > 1 and all(int(fi) == 1 for fi in factor):
        # every scale would have the same resolution, so the same key: one set of chunk files
        raise MetadataError(f"factor {tuple(factor)} makes every scale the same resolution; a pyramid needs a factor > 1 on some axis")
    scales = []
    for level in range(num_scales):
        f = [fi**level for fi in factor]
        reduced = bounds.reduced(f)
        start, stop = list(reduced.start), list(reduced.stop)
        res = [r * fi for r, fi in zip(resolution, f)]
        res = [int(r) if float(r).is_integer() else float(r) for r in res]
        s: dict[str, Any] = {
            "key": scale_key(res),
            "size": [b - a for a, b in zip(start, stop)],
            "resolution": res,
            "voxel_offset": start,
            "chunk_sizes": [[int(c) for c in chunk_shape]],
            "encoding": encoding,
        }
        if encoding == "compressed_segmentation":
            s["compressed_segmentation_block_size"] = [int(b) for b in compressed_segmentation_block_size]
        if encoding == "jpeg" and jpeg_quality is not None:
            s["jpeg_quality"] = int(jpeg_quality)
        if shard_shape is not None:
            # shard files are read by range, never transport-compressed: gzip becomes the
            # shard's own data_encoding of each chunk
            if compression not in (None, "gzip"):
                raise UnsupportedError(f"sharded precomputed compresses chunks with gzip only (data_encoding), not {compression}")
            s["sharding"] = sharding_for(s["size"], chunk_shape, shard_shape, data_encoding=compression or "raw")
        elif compression:
            s["volbridge"] = {"compression": compression}
        scales.append(s)
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": layer_type,
        "data_type": dtype,
        "num_channels": int(num_channels),
        "scales": scales,
    }
    parse_info(info, "new info")
    return info


def sharding_for(size: Sequence[int], chunk_shape: Sequence[int], shard_shape: Sequence[int],
                 data_encoding: str = "raw") -> dict:
    """A sharding spec whose shards are aligned blocks of ``shard_shape`` voxels (x, y, z).

    With the identity hash, a shard holds the chunks whose compressed Morton codes agree above
    the low ``K`` bits; when ``shard_shape`` is the chunk shape times ``2**b`` on every axis,
    those low bits are exactly the ``b`` low bits of each grid coordinate (fewer on an axis the
    grid does not span), so shards are spatial blocks, as CloudVolume and igneous lay them out.
    Half of those bits pick the minishard, so a ranged read fetches a small minishard index.
    """
    ratios = [s / c for s, c in zip(shard_shape, chunk_shape)]
    b = math.log2(ratios[0]) if ratios[0] > 0 else -1
    if len(set(ratios)) != 1 or not float(b).is_integer() or b < 0:
        raise MetadataError(
            f"precomputed shard_shape {tuple(shard_shape)} must be chunk_shape {tuple(chunk_shape)} times the same power of two on every axis"
        )
    grid_bits = [max(0, math.ceil(math.log2(math.ceil(n / c)))) for n, c in zip(size, chunk_shape)]
    low = sum(min(int(b), g) for g in grid_bits)
    minishard = low // 2
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": low - minishard,
            "minishard_bits": minishard, "shard_bits": sum(grid_bits) - low,
            "minishard_index_encoding": "gzip", "data_encoding": data_encoding}


def _shard_shape_of(spec: dict, size: Sequence[int], chunk_shape: Sequence[int]) -> list[int] | None:
    """The shard shape (voxels, x y z) of a scale sharded as :func:`sharding_for` lays shards out
    (identity hash, shards aligned blocks of chunk_shape * 2**b), or None for any other spec
    (a hashed one has no spatial shape to carry on)."""
    if spec.get("hash") != "identity":
        return None
    low = spec.get("preshift_bits", 0) + spec.get("minishard_bits", 0)
    grid_bits = [max(0, math.ceil(math.log2(math.ceil(n / c)))) for n, c in zip(size, chunk_shape)]
    for b in range(0, 33):
        if sum(min(b, g) for g in grid_bits) == low:
            return [c * 2**b for c in chunk_shape]
    return None


def _codec_for(encoding, dtype, num_channels, block_size, jpeg_quality, png_level=None) -> ChunkCodec:
    if encoding == "raw":
        return RawCodec()
    if encoding in ("gzip", "zstd", "blosclz"):
        opts = {"typesize": dtype.itemsize} if encoding == "blosclz" else {}
        return RawCodec(get_compressor(encoding, **opts))
    if encoding in ("jpeg", "png"):
        if encoding == "jpeg":
            codec: ChunkCodec = JpegCodec(jpeg_quality if jpeg_quality is not None else 85)
        else:
            codec = PngCodec(png_level if png_level is not None else 6)
        codec.check(dtype, num_channels)
        return codec
    if encoding == "compressed_segmentation":
        if dtype.name not in ("uint32", "uint64"):
            raise UnsupportedError(f"compressed_segmentation needs uint32 or uint64, not {dtype.name}")
        return CompressedSegmentationCodec(tuple(block_size))
    raise UnsupportedError(f"precomputed encoding {encoding!r} is not supported")


# -- one scale ------------------------------------------------------------------------------------
class PrecomputedLayout(ScaleLayout):
    def __init__(self, scale: PrecomputedScale, dtype: np.dtype, num_channels: int, key_prefix: str, probe_deep: bool = True):
        if scale.encoding in UNSUPPORTED_ENCODINGS:
            raise UnsupportedError(f"scale {scale.key!r} uses encoding {scale.encoding!r}, which volbridge cannot decode yet")
        self.scale = scale
        self.dtype = np.dtype(dtype)
        self.num_channels = num_channels
        self.fill_value = 0
        self.prefix = key_prefix
        #: neuroglancer-scripts writes its deep layout to disks; probing it costs a round trip elsewhere.
        self.probe_deep = probe_deep
        self.grid = ChunkGrid(scale.bounds, scale.chunk_size, scale.voxel_offset)
        self.meta = ScaleMeta(scale.key, scale.bounds, scale.resolution, scale.chunk_size, scale.encoding)
        self.codec = _codec_for(
            scale.encoding, self.dtype, num_channels, scale.cseg_block_size or (8, 8, 8),
            scale.raw.get("jpeg_quality"), scale.raw.get("png_level"),
        )
        self.decodes_to_bytes = isinstance(self.codec, RawCodec) and little_endian(self.dtype) == self.dtype
        self.voxels_stored_raw = self.decodes_to_bytes and self.codec.compressor is None
        compression = (scale.raw.get("volbridge") or {}).get("compression")
        if scale.sharding is not None:
            # Shard files are read by range: they are never transport-compressed (data_encoding is
            # the shard's own compression of each chunk).
            spec = ShardingSpec(scale.sharding, f"scale {scale.key!r}")
            self.sharding = PrecomputedVolumeSharding(spec, key_prefix, self.grid.grid_shape())
        elif compression in TRANSPORT_COMPRESSIONS and scale.encoding in ("raw", "compressed_segmentation"):
            self.content_encoding = compression

    def _name(self, cell: Cell) -> str:
        b = cell.box
        return f"{b.start[0]}-{b.stop[0]}_{b.start[1]}-{b.stop[1]}_{b.start[2]}-{b.stop[2]}"

    def read_keys(self, cell: Cell) -> list[str]:
        # The standard name, then neuroglancer-scripts' "deep" layout <x0-x1>/<y0-y1>/<z0-z1>.
        name = self._name(cell)
        if not self.probe_deep:
            return [f"{self.prefix}/{name}"]
        return [f"{self.prefix}/{name}", f"{self.prefix}/{name.replace('_', '/')}"]

    def write_key(self, cell: Cell) -> str:
        return f"{self.prefix}/{self._name(cell)}"

    def chunk_shape4(self, cell: Cell) -> tuple[int, int, int, int]:
        return (*cell.box.shape, self.num_channels)  # type: ignore[return-value]

    def decode(self, data: bytes, cell: Cell, key: str) -> np.ndarray:
        return self.codec.decode(data, self.chunk_shape4(cell), self.dtype)

    def decode_bytes(self, data: bytes, shape: tuple[int, int, int], key: str):
        shape = (*shape, self.num_channels)
        return self.codec.decode_bytes(data, shape, self.dtype), shape

    def encode_bytes(self, data, cell: Cell):
        return self.codec.encode_bytes(data)

    def encode(self, chunk: np.ndarray, cell: Cell) -> bytes:
        if chunk.shape != self.chunk_shape4(cell):
            raise ChunkDecodeError(f"chunk of shape {chunk.shape} given for cell {cell.box}")
        return self.codec.encode(chunk)


# -- the dataset ----------------------------------------------------------------------------------
class PrecomputedDataset(ChunkedDataset):
    format_name = "precomputed"
    #: CloudVolume's ``provenance`` file beside ``info``.
    attributes_location = ("provenance", None)
    # not the provenance file: CloudVolume creating a volume anew keeps it (CloudVolume, tensorstore
    # and neuroglancer keep or ignore members of info they do not know)
    instance_location = (INFO_KEY, None)

    def __init__(self, store: KVStore, info: dict | None = None, docs: dict | None = None):
        self.store = store
        if info is None:
            raw = read_doc(store, INFO_KEY, docs)
            if raw is None:
                raise MetadataError(f"no precomputed 'info' at {store.url}")
            info = parse_info(raw, f"{store.url}/info")
        elif not isinstance(info.get("scales", [None])[0], PrecomputedScale):
            info = parse_info(info, f"{store.url}/info")
        self.info = info
        dtype = np.dtype(info["data_type"])
        scales = []
        for s in info["scales"]:
            scales.append(ScaleMeta(s.key, s.bounds, s.resolution, s.chunk_size, s.encoding))
        self.meta = VolumeMeta(
            dtype=dtype,
            num_channels=info["num_channels"],
            layer_type=info["type"],
            scales=tuple(scales),
            fill_value=0,
        )
        self._layouts: dict[int, PrecomputedLayout] = {}

    def layout(self, scale: int) -> PrecomputedLayout:
        lay = self._layouts.get(scale)
        if lay is None:
            s = self.info["scales"][scale]
            prefix = posixpath.normpath(s.key)
            if prefix.startswith("..") or prefix.startswith("/"):
                raise UnsupportedError(f"scale key {s.key!r} points outside the volume's directory")
            lay = self._layouts[scale] = PrecomputedLayout(
                s, self.meta.dtype, self.meta.num_channels, prefix, probe_deep=self.store.cheap_misses
            )
        return lay

    def metadata_json(self) -> dict:
        return {**self.info, "scales": [s.raw for s in self.info["scales"]]}

    def add_scale(self, factor: Sequence[int]) -> None:
        """Append a scale ``factor`` (x, y, z) coarser than the last: bounds ``floor(start / f)`` to
        ``ceil(stop / f)`` (as CloudVolume rounds), the same chunks and encoding; the info is
        rewritten and this dataset reloaded."""
        last = self.info["scales"][-1]
        f = [int(v) for v in factor]
        if len(f) != 3 or any(v < 1 for v in f):
            raise MetadataError(f"a downsampling factor is 3 integers >= 1, got {tuple(factor)}")
        reduced = Box.from_shape(last.size, last.voxel_offset).reduced(f)
        start, stop = list(reduced.start), list(reduced.stop)
        res = [r * k for r, k in zip(last.resolution, f)]
        res = [int(r) if float(r).is_integer() else float(r) for r in res]
        new = {k: v for k, v in last.raw.items() if k not in ("key", "size", "voxel_offset", "resolution", "sharding")}
        new.update(key=scale_key(res), size=[b - a for a, b in zip(start, stop)], voxel_offset=start, resolution=res)
        spec = last.raw.get("sharding")
        shard = _shard_shape_of(spec, last.size, last.chunk_size) if spec else None
        if shard is not None:  # sharded as the last scale (a sharded pyramid grew unsharded scales of small files)
            new["sharding"] = {**sharding_for(new["size"], last.chunk_size, shard, data_encoding=spec.get("data_encoding", "raw")),
                               "minishard_index_encoding": spec.get("minishard_index_encoding", "raw")}
        if any(s.key == new["key"] for s in self.info["scales"]):
            raise MetadataError(f"a scale with key {new['key']!r} exists already")
        mine = [sc.key for sc in self.info["scales"]]

        def merge(old: bytes | None) -> bytes:
            # the stored info, not this handle's copy: members written since (an instance id
            # stamped by a job, another tool's) are kept (a review found the id erased so)
            try:
                doc = json.loads(old) if old else {**self.metadata_json()}
            except ValueError as e:
                raise MetadataError(f"{self.store.url}/{INFO_KEY} is not JSON: {e}") from e
            if [sc.get("key") for sc in doc.get("scales", [])] != mine:
                raise MetadataError(f"{self.store.url}/{INFO_KEY} changed since it was opened (its scales differ); "
                                    "open the volume again to add a scale")
            doc["scales"] = [*doc["scales"], new]
            parse_info(doc, "new info")
            return json.dumps(doc, indent=2).encode()

        self.store.update(INFO_KEY, merge)
        self.__init__(self.store)  # type: ignore[misc]

    @classmethod
    def create(cls, store: KVStore, info: dict, *, overwrite: bool = False) -> "PrecomputedDataset":
        if not overwrite and store.get(INFO_KEY) is not None:
            raise MetadataError(f"a precomputed volume already exists at {store.url} (pass overwrite=True to replace its info)")
        parsed = parse_info(info, "new info")
        store.put(INFO_KEY, json.dumps(info, indent=2).encode())
        return cls(store, parsed)


def detect(store: KVStore) -> bool:
    return store.exists(INFO_KEY)
