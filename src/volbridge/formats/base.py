"""What a chunked format tells the engine, in one shape for every format.

Coordinates here are the storage order, x fastest (``(x, y, z)``), as in every format's own
metadata. The array layer turns them into the user's axis order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MetadataError, VolbridgeError
from ..geometry import Box, Cell, ChunkGrid
from ..kv.retry import after_retries

if TYPE_CHECKING:
    from ..kv import KVStore
    from .sharding import ShardFormat


@dataclass(frozen=True)
class ScaleMeta:
    """One scale (mip level) of a volume."""

    key: str
    bounds: Box  # (x, y, z) voxels
    resolution: tuple[float, float, float]  # nm per voxel, (x, y, z)
    chunk_shape: tuple[int, int, int]  # (x, y, z)
    encoding: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.bounds.shape  # type: ignore[return-value]


#: Length units -> nanometres: UDUNITS names (OME-Zarr) and the abbreviations N5 writers use
#: (tensorstore's "nm"/"um", n5-viewer's "um"/"µm"); see :func:`unit_nm` for no unit.
UNITS_NM = {"angstrom": 0.1, "picometer": 1e-3, "nanometer": 1.0, "micrometer": 1e3, "micron": 1e3,
            "millimeter": 1e6, "centimeter": 1e7, "meter": 1e9,
            "pm": 1e-3, "nm": 1.0, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3, "mm": 1e6, "cm": 1e7, "m": 1e9}
#: Units that say the numbers carry none (ImageJ's default for an uncalibrated image): read as nm.
NO_UNIT = ("", "pixel", "pixels", "px", "voxel", "voxels")


def unit_nm(unit) -> float | None:
    """Nanometres per ``unit`` (case and a plural 's' aside: 'Microns', 'nanometers'); 1.0 for
    no unit or a unit-less one ('pixel'); None when it is no length unit known here."""
    if unit is None:
        return 1.0
    if not isinstance(unit, str):
        return None
    u = unit.strip()
    if u.lower() in NO_UNIT:
        return 1.0
    names = [u, u.lower()] + ([u.lower()[:-1]] if u.lower().endswith("s") and len(u) > 3 else [])  # (not ms -> m)
    return next((UNITS_NM[n] for n in names if n in UNITS_NM), None)


@dataclass(frozen=True)
class VolumeMeta:
    dtype: np.dtype
    num_channels: int
    layer_type: str  # "image" | "segmentation"
    scales: tuple[ScaleMeta, ...]
    fill_value: Any = 0
    extra: dict = field(default_factory=dict)


_documents_read: ContextVar[dict[str, bytes | None] | None] = ContextVar("documents_read", default=None)


@contextmanager
def documents_read() -> Iterator[dict[str, bytes | None]]:
    """The metadata documents read (:func:`read_doc`) in the block, ``{key: bytes or None when
    absent}``: what an open read, so a cache tier can check the ones below the root (an OME-Zarr
    scale's array, an N5 scale's attributes) as well as its markers, and note what it saw."""
    docs: dict[str, bytes | None] = {}
    token = _documents_read.set(docs)
    try:
        yield docs
    finally:
        _documents_read.reset(token)


def naming(where: str, fn, *args):
    """``fn(*args)``, its MetadataError prefixed with ``where`` (the document) when it does not
    name it: parsers of metadata members know the member, their callers the file."""
    try:
        return fn(*args)
    except MetadataError as e:
        if where in str(e):
            raise
        raise MetadataError(f"{where}: {e}") from e


def clear_for_overwrite(store: "KVStore") -> None:
    """Delete every object under ``store``, before a ``create(overwrite=True)`` writes a new
    volume where one was: its chunks left in place would read as the new volume's voxels (or
    fail to decode as its dtype), where zarr-python and TensorStore start from nothing."""
    keys = list(store.list())
    if keys:
        store.delete_many(keys)


def read_docs(store: "KVStore", keys: list[str] | tuple[str, ...], get_many=None) -> dict | None:
    """Metadata documents asked for at once (over a network store one round trip, where asking
    one by one takes one each): ``{key: bytes, or None when absent}``. None where some key cannot
    be read (a public bucket answers 403 for keys it lacks; a FIFO at a key's path): the caller
    then asks one key at a time (:func:`read_doc`). A store that is not answering (the retry
    policy gave up) raises: asking again key by key would only wait that long again.
    ``get_many``: how to ask (a cache tier's ``refresh``), else ``store.get_many``."""
    try:
        return {**dict.fromkeys(keys), **(get_many or store.get_many)(keys)}
    except VolbridgeError as e:
        if after_retries(e):
            raise
        return None


def read_doc(store: "KVStore", key: str, docs: dict | None) -> bytes | None:
    """The metadata document ``key``: from ``docs`` (:func:`read_docs`, read a moment ago by the
    same open) when it holds it, None there meaning absent; else from the store."""
    value = docs[key] if docs is not None and key in docs else store.get(key)
    log = _documents_read.get()
    if log is not None:
        log[key] = value
    return value


class ScaleLayout(ABC):
    """How one scale of a chunked format maps grid cells to keys and bytes to arrays.

    The engine calls nothing else: it plans boxes into :class:`~volbridge.geometry.Cell`s on
    :attr:`grid`, fetches the keys, and converts bytes with :meth:`decode` / :meth:`encode`. Arrays
    passed in and out cover the cell's bounds-clipped box, as 4-D ``(x, y, z, c)``.
    """

    meta: ScaleMeta
    grid: ChunkGrid
    dtype: np.dtype
    num_channels: int
    fill_value: Any
    #: Transport compression the store should apply to written chunks (e.g. "gzip"), or None.
    content_encoding: str | None = None
    #: How chunks are packed into shard objects, or None when each chunk is its own object
    #: (then the engine uses read_keys/write_key; with shards, sharding.locate).
    sharding: "ShardFormat | None" = None
    #: Channels stored in separate chunks: ``[(channel slice, layout of those channels)]``, each
    #: read and written as its own layout; None when every chunk holds all channels.
    channel_parts: "list[tuple[slice, ScaleLayout]] | None" = None

    @abstractmethod
    def read_keys(self, cell: Cell) -> list[str]:
        """Keys that may hold the cell, in the order to try them; the write key comes first."""

    @abstractmethod
    def write_key(self, cell: Cell) -> str:
        """The key a write of the cell goes to."""

    @abstractmethod
    def decode(self, data: bytes, cell: Cell, key: str) -> np.ndarray:
        """The cell's voxels (bounds-clipped box) from stored bytes."""

    @abstractmethod
    def encode(self, chunk: np.ndarray, cell: Cell) -> bytes:
        """Stored bytes for the cell's voxels."""

    #: Whether a chunk's stored bytes are its voxels as they are (:meth:`stored_shapes` gives
    #: their shape): raw chunks need no decoding call at all.
    voxels_stored_raw: bool = False

    def stored_shapes(self, cell_shapes: np.ndarray) -> np.ndarray:
        """(n, 4) (x, y, z, c) shapes in which chunks of (bounds-clipped) ``cell_shapes`` (n, 3)
        store their voxels: the cells' own (clipped edges) or the full chunk (padded edges)."""
        return np.concatenate([cell_shapes, np.full((len(cell_shapes), 1), self.num_channels, cell_shapes.dtype)], 1)

    #: Whether :meth:`decode_bytes` applies: a chunk's stored bytes are its voxels, little-endian
    #: in (x, y, z, c) Fortran order, under byte-to-byte compression only.
    decodes_to_bytes: bool = False

    #: The one byte compression (a :mod:`volbridge.compression` name) between a chunk's stored
    #: bytes and the voxel bytes :meth:`decode_bytes` returns, when that is all there is (no
    #: checksum, header or filter); else None. The engine decompresses many such chunks in one
    #: native call (:mod:`volbridge.engine.batch_decode`).
    stored_compression: str | None = None
    #: The level :attr:`stored_compression` encodes at, where the format names one (None: the
    #: library's default, as :func:`volbridge.compression.compress` takes it).
    stored_compression_level: int | None = None

    def decode_bytes(self, data: bytes, shape: tuple[int, int, int], key: str) -> tuple[bytes | memoryview, tuple[int, int, int, int]]:
        """The voxel bytes of a cell of (bounds-clipped) ``shape`` (x, y, z) and the (x, y, z, c) shape they are stored in, which may exceed
        the cell's clipped box (zarr pads edge chunks): the engine copies many such chunks into
        a cutout in one call (:mod:`volbridge.engine.place`). Only when :attr:`decodes_to_bytes`."""
        raise NotImplementedError(f"{type(self).__name__} chunks decode through decode() only")

    def encode_bytes(self, data, cell: Cell):
        """Stored bytes of a cell whose voxels ``data`` (bytes-like) are laid out as
        :meth:`decode_bytes` returns them, in the cell's :meth:`stored_shapes` (the inverse of
        decode_bytes; only when :attr:`decodes_to_bytes`). May return ``data`` itself."""
        raise NotImplementedError(f"{type(self).__name__} chunks encode through encode() only")


class ChunkedDataset(ABC):
    """An opened dataset of a chunked format: its metadata and a layout per scale."""

    meta: VolumeMeta
    #: The format's name as in URLs ("precomputed", "zarr", ...).
    format_name: str

    @abstractmethod
    def layout(self, scale: int) -> ScaleLayout:
        """The layout of scale ``scale`` (raises UnsupportedError for layouts not handled)."""

    @abstractmethod
    def metadata_json(self) -> dict:
        """The format's own metadata document, as stored."""

    #: Where user attributes (provenance) live: (key of a JSON document, key inside it of the
    #: attributes object, or None for the document itself).
    attributes_location: tuple[str, str | None] = ("attributes.json", None)

    @property
    def instance_location(self) -> tuple[str, str | None]:
        """Where the volume's instance id lives (:mod:`volbridge.engine.identity`): a document
        every tool rewrites when it creates the volume. The attributes, where they are that."""
        return self.attributes_location

    @property
    def version_key(self) -> str:
        """The document whose version stands in for an instance id where there is none: the one
        that always exists (zarr v2's .zattrs may not; its .zarray does)."""
        return self.instance_location[0]
