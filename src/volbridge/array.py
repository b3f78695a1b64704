"""``VolumeArray``: the numpy-like handle on one volume at one scale.

Storage is x-fastest everywhere below this layer. ``axis_order="zyx"`` presents it as a
C-contiguous ``(c, z, y, x)`` array and ``"xyz"`` as an F-contiguous ``(x, y, z, c)`` one; both are
views of the same buffer, so neither costs a transposing copy. Every tuple the handle takes or
returns (shape, bounds, resolution, chunk_shape) is in its axis order.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import Volume
from .engine.identity import metadata_digest, volume_url
from .errors import (
    DTypeError,
    InvalidArgumentError,
    InvalidIndexError,
    ReadOnlyError,
    ShapeError,
    UnsupportedError,
    VersionChangedError,
)
from .geometry import Box
from .geometry.index import AxisSpec, IndexPlan, normalize_index
from .kv import MemoryCache

AXIS_ORDERS = ("zyx", "xyz")


def _check_addressable(box: Box, volume: Volume) -> None:
    """A cutout no array can hold is a MemoryError naming its size, before any read (numpy
    raised a bare ValueError, 'array is too big', deep in the engine)."""
    n = volume.meta.num_channels * np.dtype(volume.meta.dtype).itemsize
    for side in box.shape:
        n *= side
    if n > np.iinfo(np.intp).max:
        raise MemoryError(f"a cutout of {' x '.join(map(str, box.shape))} voxels (x, y, z) is {n:.3g} bytes: no array holds that")


@dataclass(frozen=True)
class Scale:
    """One scale of a volume, tuples in the handle's axis order."""

    index: int
    key: str
    bounds: tuple[tuple[int, ...], tuple[int, ...]]
    shape: tuple[int, ...]
    resolution: tuple[float, ...]
    chunk_shape: tuple[int, ...]
    encoding: str


class VolumeArray:
    def __init__(self, volume: Volume, mip: int = 0, axis_order: str = "zyx", mode: str = "r", channel_axis: bool | None = None):
        if axis_order not in AXIS_ORDERS:
            raise InvalidArgumentError(f"axis_order must be 'zyx' or 'xyz', got {axis_order!r}")
        n = len(volume.meta.scales)
        if not isinstance(mip, numbers.Integral) or not 0 <= mip < n:
            raise InvalidIndexError(f"mip {mip!r} does not exist: {volume.url} has scales 0..{n - 1}")
        if mode not in ("r", "r+"):
            raise InvalidArgumentError(f"mode must be 'r' or 'r+', got {mode!r}")
        self._volume: Volume | None = volume
        self._pending: tuple | None = None  # a handle unpickled elsewhere: _reopened's arguments until opened
        self._mip = int(mip)
        self.axis_order = axis_order
        self.mode = mode
        self.has_channel_axis = volume.meta.num_channels > 1 if channel_axis is None else bool(channel_axis)

    @property
    def volume(self) -> Volume:
        """The volume: for a handle unpickled in another process, opened on first use (see
        :func:`_reopened`)."""
        if self._volume is None:
            with self._open_lock:
                if self._volume is None:
                    self._volume = _open_pending(*self._pending)
        return self._volume

    # -- metadata -----------------------------------------------------------------------------
    def _o(self, xyz: tuple) -> tuple:
        """A spatial (x, y, z) tuple in this handle's axis order."""
        return tuple(xyz[::-1]) if self.axis_order == "zyx" else tuple(xyz)

    @property
    def _scale(self):
        return self.volume.meta.scales[self._mip]

    @property
    def url(self) -> str:
        return self.volume.url

    @property
    def format(self) -> str:
        """The storage format or remote ("precomputed", ...)."""
        return self.volume.format_name

    @property
    def fill_value(self):
        """What reads return outside the bounds and where chunks are absent."""
        return self.volume.meta.fill_value

    @property
    def dtype(self) -> np.dtype:
        return self.volume.meta.dtype

    @property
    def num_channels(self) -> int:
        return self.volume.meta.num_channels

    @property
    def layer_type(self) -> str:
        return self.volume.meta.layer_type

    @property
    def mip_level(self) -> int:
        return self._mip

    @property
    def shape(self) -> tuple[int, ...]:
        spatial = self._o(self._scale.shape)
        if not self.has_channel_axis:
            return spatial
        return (self.num_channels, *spatial) if self.axis_order == "zyx" else (*spatial, self.num_channels)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def bounds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        b = self._scale.bounds
        return self._o(b.start), self._o(b.stop)

    @property
    def resolution(self) -> tuple[float, ...]:
        return self._o(self._scale.resolution)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return self._o(self._scale.chunk_shape)

    @property
    def scales(self) -> tuple[Scale, ...]:
        return tuple(
            Scale(i, s.key, (self._o(s.bounds.start), self._o(s.bounds.stop)), self._o(s.shape),
                  self._o(s.resolution), self._o(s.chunk_shape), s.encoding)
            for i, s in enumerate(self.volume.meta.scales)
        )

    @property
    def metadata(self) -> dict:
        """The format's own metadata document (e.g. the precomputed ``info``)."""
        return self.volume.metadata_json()

    def mip(self, n: int) -> "VolumeArray":
        """The same volume at scale ``n``."""
        return VolumeArray(self.volume, n, self.axis_order, self.mode, self.has_channel_axis)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        lo, hi = self.bounds
        return (
            f"VolumeArray({self.url!r}, mip={self._mip}, shape={self.shape}, dtype={self.dtype}, "
            f"bounds={lo}..{hi} ({self.axis_order}), mode={self.mode!r})"
        )

    # -- indexing -----------------------------------------------------------------------------
    def _axes(self) -> list[AxisSpec]:
        b = self._scale.bounds
        spatial = [AxisSpec(lo, hi) for lo, hi in zip(self._o(b.start), self._o(b.stop))]
        if not self.has_channel_axis:
            return spatial
        ch = AxisSpec(0, self.num_channels, is_channel=True)
        return [ch, *spatial] if self.axis_order == "zyx" else [*spatial, ch]

    def _split(self, plan: IndexPlan):
        """(x, y, z) box, channel selection, from a plan in user order."""
        axes = list(plan.axes)
        if self.has_channel_axis:
            ch = axes.pop(0) if self.axis_order == "zyx" else axes.pop()
        else:
            ch = None
        if self.axis_order == "zyx":
            axes = axes[::-1]
        return Box(tuple(a.start for a in axes), tuple(a.stop for a in axes)), ch

    def _to_user(self, data: np.ndarray) -> np.ndarray:
        """(x, y, z, c) -> the user's layout, as a view."""
        if not self.has_channel_axis:
            data = data[..., 0]
        return data.T if self.axis_order == "zyx" else data

    def __getitem__(self, index: Any) -> np.ndarray:
        plan = normalize_index(index, self._axes())
        box, ch = self._split(plan)
        _check_addressable(box, self.volume)
        data = self.volume.read(box, self._mip)
        if ch is not None:
            data = data[..., ch.start : ch.stop]
        out = self._to_user(data)
        if plan.needs_stride or any(a.drop for a in plan.axes):
            out = out[plan.post_slices()]
        return out

    def __setitem__(self, index: Any, value: Any) -> None:
        if any(self.bounds[0]) and _called_by_dask_store():
            raise UnsupportedError(
                f"dask.array.store gives 0-based regions, but {self.url} starts at {self.bounds[0]} ({self.axis_order}): its "
                "blocks would land shifted; write `vol[...] = dask_array` (each block at its absolute place) instead, or "
                "`vol[box] = dask_array` for a store with regions= (volbridge cannot tell them from dask's own)")
        self._write(index, value)

    def _write(self, index: Any, value: Any) -> None:
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.url} is open read-only; use volbridge.array(url, mode='r+') to write")
        plan = normalize_index(index, self._axes())
        if plan.needs_stride:
            raise UnsupportedError("strided writes (a slice step other than 1) are not supported")
        box, ch = self._split(plan)
        if hasattr(value, "__dask_graph__") and hasattr(value, "chunks"):
            self._store_dask(plan, box, ch, value)
            return
        value = self._checked_value(value)
        kept = tuple(a.length for a in plan.axes if not a.drop)
        try:
            value = np.broadcast_to(value, kept)
        except ValueError:
            raise ShapeError(
                f"value of shape {np.shape(value)} cannot be written to a selection of shape {kept} "
                f"({self.axis_order} order{', channel axis included' if self.has_channel_axis else ''})"
            ) from None
        value = value.reshape(tuple(a.length for a in plan.axes))  # dropped axes back as length 1
        if not self.has_channel_axis:
            value = value[None] if self.axis_order == "zyx" else value[..., None]
        data = value.T if self.axis_order == "zyx" else value
        channels = slice(ch.start, ch.stop) if ch is not None else None
        self.volume.write(box, data, self._mip, channels)

    def _store_dask(self, plan, box, ch, value) -> None:
        """``self[selection] = dask_array``: each block written at its own absolute place (a
        VolumeArray given to ``dask.array.store`` as a target gets dask's 0-based regions, which
        on a volume whose bounds start elsewhere wrote every block shifted, a review found).
        The selection's bounds, shape and dtype are checked before any block is computed."""
        if value.dtype != self.dtype:
            raise DTypeError(f"cannot write {value.dtype} data into a {self.dtype} volume ({self.url}); convert it first")
        if any(a.drop for a in plan.axes):
            raise UnsupportedError("a dask array is written into a box of slices (no integer index)")
        want = tuple(a.length for a in plan.axes)
        if tuple(value.shape) != want:
            raise ShapeError(f"dask array of shape {tuple(value.shape)} cannot be written to a selection of shape {want} "
                             f"({self.axis_order} order{', channel axis included' if self.has_channel_axis else ''})")
        channels = slice(ch.start, ch.stop) if ch is not None else None
        nch = (ch.stop - ch.start) if ch is not None else self.num_channels
        self.volume.check_write(box, np.broadcast_to(np.zeros((), self.dtype), (*box.shape, nch)), self._mip, channels)
        import dask.array as da

        da.store(value, _ZeroBased(self, [a.start for a in plan.axes]), lock=False)

    def _checked_value(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            if value.dtype != self.dtype:
                raise DTypeError(f"cannot write {value.dtype} data into a {self.dtype} volume ({self.url}); convert it first")
            return value
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            # a Python int past 64 bits is an object array to numpy, which neither check takes
            if self.dtype.kind in "fc":
                try:
                    value = float(value)
                except OverflowError:
                    raise DTypeError(f"{_shown(value)} is not representable as {self.dtype} ({self.url})") from None
            else:
                raise DTypeError(f"{_shown(value)} is not representable as {self.dtype} ({self.url})")
        if isinstance(value, (numbers.Number, np.generic)):
            arr = np.asarray(value)
            if arr.dtype == self.dtype:
                return arr
            with np.errstate(all="ignore"):
                converted = arr.astype(self.dtype) if arr.dtype.kind != "c" or self.dtype.kind == "c" else None
            if self.dtype.kind in "fc":
                # Rounding to the volume's precision is fine (0.1 into float32); overflow is not.
                ok = converted is not None and bool(np.all(np.isfinite(converted) | ~np.isfinite(arr)))
            else:  # integers and bool: the exact value must survive
                ok = converted is not None and arr.dtype.kind in "biu" and bool(converted == arr)
            if not ok:
                raise DTypeError(f"{_shown(value)} is not representable as {self.dtype} ({self.url})")
            return converted
        raise DTypeError(f"cannot write a {type(value).__name__}; give a numpy array of dtype {self.dtype} or a scalar")

    def __reduce__(self):
        """Pickled as its volume's URL (absolute, for a local path), how it is viewed, its cache
        tier and a server's token, so a to_dask() array runs on a dask cluster (the stores' locks
        and pools cannot travel) and writes there keep the cache current; volumes kept in this
        process's memory cannot go. (copy.copy shares the volume instead.)"""
        if self._volume is None:  # unpickled here and not used: passed on as it came
            return _reopened, self._pending
        url = volume_url(self.volume)
        if url.startswith("mem:") or "://mem:" in url or url == "ndarray":
            raise InvalidArgumentError(f"{url} lives in the memory of this process: a handle on it cannot be sent to "
                                       "another process (a dask cluster); keep the volume in a store the workers reach")
        store = getattr(self.volume, "store", None)
        if self.mode == "r+" and isinstance(store, MemoryCache):
            # Sent writable to another process (a cluster's workers; dask's processes scheduler):
            # what it writes never reaches this process's memory tier, which would serve the old
            # voxels (a review found da.store through such a handle left it stale). It stops.
            store.stop()
        return _reopened, (url, self.mode, self._mip, self.axis_order, self.has_channel_axis, metadata_digest(self.volume),
                           getattr(self.volume, "token", None), _cache_spec(store))

    def __copy__(self) -> "VolumeArray":
        return VolumeArray(self.volume, self._mip, self.axis_order, self.mode, self.has_channel_axis)

    def __deepcopy__(self, memo) -> "VolumeArray":
        return self.__copy__()  # a handle's state is its volume's, which a copy shares

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    # -- services: the same call on every remote (bossdb://, dvid://, precomputed, zarr, ...) -----
    def _service_source(self, kwargs: dict):
        # on a cluster the workers open the volume themselves, from its URL
        executor = kwargs.get("executor")
        return self.url if executor is not None and executor != "processes" else self

    def _label_kwargs(self, kwargs: dict) -> dict:
        """This handle's scale, and a ``bbox`` in its axis order turned into (z, y, x)."""
        kwargs.setdefault("mip", self.mip_level)
        if kwargs.get("bbox") is not None and self.axis_order == "xyz":
            lo, hi = kwargs["bbox"]
            kwargs["bbox"] = (tuple(lo)[::-1], tuple(hi)[::-1])
        return kwargs

    def mesh(self, ids=None, **kwargs):
        """:func:`volbridge.services.mesh.mesh` of this scale (``mip=`` picks another; ``bbox`` in
        this handle's axis order): ``{id: Mesh}``, or files with ``output=``."""
        from .services.mesh import MESH

        return MESH.run(self._service_source(kwargs), ids, **self._label_kwargs(kwargs))

    def skeleton(self, ids=None, **kwargs):
        """:func:`volbridge.services.skeleton.skeleton` of this scale, as :meth:`mesh`."""
        from .services.skeleton import SKELETON

        return SKELETON.run(self._service_source(kwargs), ids, **self._label_kwargs(kwargs))

    def downsample(self, **kwargs) -> None:
        """:func:`volbridge.services.downsample`: fill (or extend) this volume's pyramid, on the
        remote's own compute where it has some (BossDB). A handle open read-only is refused
        even when a cluster would reopen the volume from its URL."""
        from .services import DOWNSAMPLE

        DOWNSAMPLE.check(self.volume)
        DOWNSAMPLE.run(self._service_source(kwargs), **kwargs)

    # -- dask ---------------------------------------------------------------------------------
    def to_dask(self):
        """A dask array of the whole scale, one block per storage chunk (absolute -> 0-based)."""
        import dask.array as da
        from dask.base import tokenize

        s = self._scale
        spatial_chunks = []
        for lo, hi, c in zip(s.bounds.start, s.bounds.stop, s.chunk_shape):
            edges = list(range(lo, hi, c)) + [hi]
            spatial_chunks.append(tuple(b - a for a, b in zip(edges[:-1], edges[1:])))
        chunks = self._o(tuple(spatial_chunks))
        if self.has_channel_axis:
            chunks = ((self.num_channels,), *chunks) if self.axis_order == "zyx" else (*chunks, (self.num_channels,))
        # a name of its own per call: the same URL later holds other voxels (a write, a volume
        # made again), and dask would take the blocks of an earlier array of that name (review)
        name = "volbridge-" + tokenize(self.url, self._mip, self.axis_order, self.has_channel_axis, uuid.uuid4().hex)
        return da.from_array(
            _ZeroBased(self), chunks=chunks, name=name, asarray=False, fancy=False, lock=False,
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
        )


def _shown(value) -> str:
    """A value for a message: a 400-digit int is shown by its size."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} digits)"


def _called_by_dask_store() -> bool:
    """Whether this write is dask.array.store putting one block of its target (a handle given to
    it straight): the caller of ``__setitem__`` is dask.array.core's chunk storing. (An adapter
    of the caller's own in between, shifting the index as :class:`_ZeroBased` does, is not.)"""
    try:
        frame = sys._getframe(2)
    except ValueError:  # __setitem__ called first thing in a thread: no caller
        return False
    return frame.f_code.co_name in ("store_chunk", "load_store_chunk") and frame.f_globals.get("__name__") == "dask.array.core"


class _ZeroBased:
    """Adapter giving dask 0-based indexing over a handle with absolute coordinates: reads of a
    scale (``to_dask``), or writes into a box starting at ``offsets`` (``self[box] = dask``)."""

    def __init__(self, arr: VolumeArray, offsets: list[int] | None = None):
        self.arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.offsets = offsets if offsets is not None else [0 if a.is_channel else a.lo for a in arr._axes()]

    def _shift(self, index) -> tuple:
        index = index if isinstance(index, tuple) else (index,)
        shifted = []
        for item, off in zip(index, self.offsets):
            if isinstance(item, slice):
                start = (item.start or 0) + off
                stop = (item.stop if item.stop is not None else None)
                shifted.append(slice(start, None if stop is None else stop + off, item.step))
            else:
                shifted.append(item + off)
        return tuple(shifted)

    def __getitem__(self, index):
        return self.arr[self._shift(index)]

    def __setitem__(self, index, value) -> None:
        self.arr._write(self._shift(index), value)


def _cache_spec(store):
    """What ``cache=`` makes the cache tier over ``store`` again where the handle is unpickled
    (None: no tier, or one of the caller's own making). A disk tier is shared by directory. A
    memory tier, (bytes, this process), is one again only in this process (where its state is
    shared): in another it would be one per process, none seeing what the others write (a
    cluster's workers wrote parts of one chunk and read the others' old copies back, a review
    found)."""
    from .kv import DiskCache

    if isinstance(store, DiskCache):
        return functools.partial(DiskCache, directory=str(store.directory), max_bytes=store.max_bytes)
    if isinstance(store, MemoryCache):
        return store.max_bytes, _this_process()
    return None


#: This process, as a memory tier's spec names it: a pid alone is shared by processes of other
#: hosts or containers (pid 1), a random token by a forked child.
_PROCESS = uuid.uuid4().hex


def _this_process() -> tuple[str, int]:
    return _PROCESS, os.getpid()


def _reopened(url: str, mode: str, mip: int, axis_order: str, channel_axis: bool, digest: str,
              token: str | None = None, cache=None) -> VolumeArray:
    """A handle unpickled in another process (a dask worker), whose volume is opened by its URL
    on first use, not here: dask.distributed unpickles task graphs on its scheduler too, where a
    volume changed meanwhile became 'Error during deserialization of the task graph' (the
    VersionChangedError only its cause) and every handle's volume was opened for nothing."""
    arr = VolumeArray.__new__(VolumeArray)
    arr._volume, arr._pending = None, (url, mode, mip, axis_order, channel_axis, digest, token, cache)
    arr._open_lock = threading.Lock()
    arr._mip, arr.axis_order, arr.mode, arr.has_channel_axis = mip, axis_order, mode, channel_axis
    return arr


def _open_pending(url: str, mode: str, mip: int, axis_order: str, channel_axis: bool, digest: str,
                  token: str | None = None, cache=None) -> Volume:
    """The volume of a handle :func:`_reopened` made, refused if its layout is no longer the
    one the sender saw."""
    from .api import array

    if isinstance(cache, tuple):  # a memory tier: here only in the process that sent it
        cache = cache[0] if tuple(cache[1]) == _this_process() else None
    volume = array(url, mip=mip, axis_order=axis_order, mode=mode, token=token, cache=cache).volume
    if metadata_digest(volume) != digest:
        raise VersionChangedError(f"{url} changed since this handle was sent (its metadata differ); open it again")
    return volume
