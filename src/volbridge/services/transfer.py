"""Transfer: copy any box of any scale of any source into any destination, re-chunked and
re-encoded as the destination's format says (precomputed, zarr, N5, HDF5, BossDB, DVID, ...).

A destination that does not exist yet is created from the source's metadata (bounds of the box,
dtype, resolution, layer type, channels), with the chunk shape and encoding asked for. The copy is
split into units aligned to the destination's chunks, so no two units write the same object and
nothing is read-modify-written but the destination's edge chunks; ``verify`` reads both sides
back and compares them, block by block.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from ..array import VolumeArray
from ..engine.identity import instance_id
from ..engine.parallel import run_bounded
from ..errors import (
    DTypeError,
    InvalidArgumentError,
    MetadataError,
    ShapeError,
    UnsupportedError,
    VolbridgeError,
)
from ..geometry import Box, ChunkGrid
from . import provenance
from .base import FunctionService, Writable
from .units import Journal, run_units, volume_ref, volume_url


def _open_source(source: Any, mip: int) -> VolumeArray:
    from ..api import array

    if isinstance(source, np.ndarray):  # (it failed with an AttributeError)
        raise InvalidArgumentError("transfer copies from a volume (a URL or a VolumeArray); write an ndarray with "
                                   "volbridge.create(destination, shape=..., dtype=...)[...] = array")
    if not isinstance(source, (str, VolumeArray)):
        raise InvalidArgumentError(f"transfer copies from a volume (a URL or a VolumeArray), not a {type(source).__name__}")
    arr = array(source) if isinstance(source, str) else source
    return arr.mip(mip) if mip else arr


def _destination(dst: Any, src: VolumeArray, box: Box, chunk_shape, encoding, compression,
                 checksum: bool = False) -> tuple[VolumeArray, int, bool]:
    """(writable destination handle, its scale, whether it was created here) for ``dst``,
    created when absent, to hold ``box`` (where the copy lands in it)."""
    from ..api import array, create
    from ..remotes.registry import volume_exists

    if isinstance(dst, VolumeArray):
        return dst, dst.mip_level, False
    if volume_exists(dst):
        out = array(dst, mode="r+")
        _check_existing(out, chunk_shape, encoding)
        return out, 0, False
    # Default chunks: the source's, at most 64 a side (a BossDB cuboid would make 4 MiB objects).
    chunk = tuple(chunk_shape) if chunk_shape is not None else tuple(min(c, 64) for c in src.chunk_shape[-3:])
    kw: dict = {}
    if encoding is not None:
        kw["encoding"] = encoding
    if compression is not None:
        kw["compression"] = compression
    if checksum:
        kw["checksum"] = True
    meta = {"resolution": src.resolution, "layer_type": src.layer_type}

    def no_offset(e: UnsupportedError) -> UnsupportedError:
        return UnsupportedError(
            f"{dst} cannot hold the box copied, which starts at {box.start[::-1]} (z, y, x): {e}. Copy it to the "
            "origin (at=(0, 0, 0); volbridge cp --to-origin), or into ome-zarr:// or precomputed:// (they keep "
            "a volume's offset)")

    try:
        out = create(dst, bounds=(box.start[::-1], box.stop[::-1]), dtype=src.dtype, chunk_shape=chunk,
                     num_channels=src.num_channels, **meta, **kw)
    except UnsupportedError as e:
        if "starts at 0" in str(e):
            raise no_offset(e) from e
        if "plain zarr" not in str(e) and "N5 has no layer type" not in str(e):
            raise
        if any(box.start):  # (a plain zarr array or N5 dataset starts at 0: no warning for a copy refused)
            raise no_offset(UnsupportedError("a plain zarr array or an N5 dataset starts at 0")) from e
        # A plain zarr array has nowhere to keep a resolution or a layer type, an N5 dataset no
        # layer type (its resolution it keeps: a review found it dropped): the user chose that
        # format, so the voxels go and what it cannot hold is dropped, with a warning.
        n5 = "N5 has no layer type" in str(e)
        kept = {"resolution": meta["resolution"]} if n5 else {}
        lost = "layer type" if n5 else "resolution or layer type"
        warnings.warn(f"{dst} keeps no {lost}; the source's {({k: v for k, v in meta.items() if k not in kept})} "
                      "are not copied", stacklevel=3)
        out = create(dst, bounds=(box.start[::-1], box.stop[::-1]), dtype=src.dtype, chunk_shape=chunk,
                     num_channels=src.num_channels, **kept, **kw)
    return out, 0, True


def _check_existing(dst: VolumeArray, chunk_shape, encoding) -> None:
    """Options that shape a new destination, given for an existing one that is shaped otherwise,
    are refused: a copy asked as jpeg went in raw, reported as copied (a review found). The same
    options as the destination has (a rerun to resume) pass."""
    differ = []
    have_chunks = tuple(dst.chunk_shape[-3:])
    if chunk_shape is not None and tuple(chunk_shape) != have_chunks:
        differ.append(f"chunk shape {tuple(chunk_shape)} (it has {have_chunks})")
    # encodings are precomputed's; every other format stores chunks "raw" (under its compressor)
    have_encoding = dst.volume.meta.scales[dst.mip_level].encoding if dst.volume.format_name == "precomputed" else "raw"
    if encoding is not None and encoding != have_encoding:
        differ.append(f"encoding {encoding!r} (it has {have_encoding!r})")
    if differ:
        raise InvalidArgumentError(f"{dst.url} exists; asked for {' and '.join(differ)}: those options shape a new destination "
                                   "and do not change one that exists. Leave them out to copy into it, or copy to a new one")


def transfer(source: Any, destination: Any, *, bbox: tuple[Sequence[int], Sequence[int]] | None = None, mip: int = 0,
             at: Sequence[int] | None = None,
             chunk_shape: Sequence[int] | None = None, encoding: str | None = None, compression: str | None = None,
             checksum: bool = False, verify: bool = False, executor=None, resume: bool = True,
             progress: Callable[[int, int], None] | None = None) -> VolumeArray:
    """Copy ``bbox`` (z, y, x start and stop corners; default: the whole scale) of scale ``mip`` of
    ``source`` into ``destination`` (a URL or a writable VolumeArray); the destination handle.
    ``at``: where the box's start corner lands in the destination (z, y, x; default: where it is
    in the source; ``(0, 0, 0)`` puts a cutout at the origin of a plain zarr array, an N5
    dataset or an HDF5 file, which start at 0).
    ``chunk_shape``, ``encoding``, ``compression`` and ``checksum`` (as for
    :func:`~volbridge.create`) apply to a destination this call creates.
    ``executor`` and ``resume`` as for :func:`~volbridge.services.downsample.downsample`."""
    if executor == "processes":
        executor = None  # I/O and numpy kernels release the GIL: local threads already use every core
    src = _open_source(source, mip)
    sv = src.volume
    bounds = sv.meta.scales[src.mip_level].bounds
    box = bounds if bbox is None else Box.of(tuple(bbox[0])[::-1], tuple(bbox[1])[::-1])
    if box.empty:
        raise ShapeError(f"the box {bbox} is empty")
    # checked before a destination is made (a typo of 1e20 left one behind, then failed in numpy)
    if box.intersect(bounds).empty:
        raise ShapeError(f"the box {bbox} (z, y, x) lies outside the bounds of mip {mip} of {sv.url} "
                         f"({bounds.start[::-1]} to {bounds.stop[::-1]}): there is nothing to copy")
    if math.prod(box.shape) * sv.meta.num_channels * np.dtype(sv.meta.dtype).itemsize > np.iinfo(np.intp).max:
        raise ShapeError(f"the box {bbox} (z, y, x) holds more bytes than any volume can address")
    shift = _shift(at, box)
    dbox = box.translate(shift)  # where the copy lands
    dst, dscale, created = _destination(destination, src, dbox, chunk_shape, encoding, compression, checksum)
    dv = dst.volume
    TRANSFER.check(sv, dv)
    if dv.meta.dtype != sv.meta.dtype:
        raise DTypeError(f"{dv.url} holds {dv.meta.dtype}, the source {sv.url} holds {sv.meta.dtype}; transfer does not convert")
    if dv.meta.num_channels != sv.meta.num_channels:
        raise ShapeError(f"{dv.url} has {dv.meta.num_channels} channel(s), the source {sv.meta.num_channels}")
    if not created:
        _check_resolution(sv, src.mip_level, dv, dscale)
    dv.check_write(dbox, _probe(dbox, dv), dscale, None)  # bounds, before any work
    grid: ChunkGrid = dv.write_grid(dscale)
    units = [c.box.intersect(dbox) for c in grid.cells(dbox)]  # destination boxes
    per_unit = math.prod(grid.chunk_shape) * sv.meta.num_channels * np.dtype(sv.meta.dtype).itemsize * 3
    if executor is not None:
        if not isinstance(source, str) or not isinstance(destination, str):
            raise InvalidArgumentError("on a cluster, give source and destination as URLs: the workers open them")
        targets = (volume_ref(sv), src.mip_level, volume_ref(dv), dscale, shift)
    else:
        targets = (sv, src.mip_level, dv, dscale, shift)
    # Absolute URLs (the same relative path in another directory is another job) and the
    # volumes' instances (one deleted and created again since has none of the finished units, or
    # other voxels to copy); a destination made by this call has no finished units, whatever a
    # journal of an earlier run says.
    journal = Journal({"service": "transfer", "src": volume_url(sv), "src_instance": instance_id(sv), "mip": src.mip_level,
                       "dst": volume_url(dv), "dst_instance": instance_id(dv, stamp=True), "scale": dscale,
                       "box": [box.start, box.stop], "units": len(units),
                       **({"shift": list(shift)} if any(shift) else {})}) if resume else None
    if journal is not None and created:
        journal.start_over()
    started = time.time()
    run_units(units, transfer_unit, targets, executor=executor, journal=journal, bytes_per_unit=per_unit, progress=progress)
    if verify:
        _verify(sv, src.mip_level, dv, dscale, units, shift)
    provenance.append(dv, provenance.record(
        "transfer", {"chunk_shape": chunk_shape and list(chunk_shape), "encoding": encoding, "compression": compression,
                     "checksum": checksum, "verify": verify, "at": list(dbox.start[::-1])},
        volume_url(sv), box=(box.start[::-1], box.stop[::-1]), scale=src.mip_level, started=started, ended=time.time()))
    return dst


def _check_resolution(sv, smip: int, dv, dscale: int) -> None:
    """Refuse to write scale ``smip`` of the source into a destination scale at the resolution
    of another of the source's scales (``cp src dst`` then ``cp src dst --mip 1`` wrote coarse
    voxels over the full-resolution copy). A destination that keeps no resolution (a plain zarr
    array, 1 nm) matches no scale and is written as before."""
    want, have = sv.meta.scales[smip].resolution, dv.meta.scales[dscale].resolution
    other = [m for m, s in enumerate(sv.meta.scales) if m != smip and s.resolution == have]
    if have != want and other:
        raise MetadataError(
            f"{dv.url} scale {dscale} is at {have} nm (x, y, z), the resolution of the source's mip {other[0]}, not of "
            f"mip {smip} ({want}): give a destination at that resolution, or a new one")


def _shift(at: Sequence[int] | None, box: Box) -> tuple[int, ...]:
    """How far (x, y, z) the copy of ``box`` moves to start at ``at`` (z, y, x)."""
    if at is None:
        return (0,) * box.ndim
    try:
        corner = tuple(at) if not isinstance(at, (str, bytes)) else ()
    except TypeError:
        corner = ()
    if len(corner) != box.ndim or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in corner):
        raise InvalidArgumentError(f"at is a start corner (z, y, x) of {box.ndim} whole numbers, got {at!r}")
    return tuple(int(a) - b for a, b in zip(corner[::-1], box.start))


def transfer_unit(src, smip: int, dst, dscale: int, shift: tuple[int, ...], box: Box) -> None:
    """One unit: ``box`` of the destination written from the source's box ``shift`` before it
    (volumes, or URLs a cluster worker opens once)."""
    from .units import open_ref

    sv, dv = open_ref(src, "r"), open_ref(dst, "r+")
    dv.write(box, sv.read(box.translate([-d for d in shift]), smip), dscale)


def _probe(box: Box, dv) -> np.ndarray:
    """A zero-stride stand-in of the right shape and dtype, for ``check_write`` before any work."""
    return np.broadcast_to(np.zeros((), dv.meta.dtype), (*box.shape, dv.meta.num_channels))


def _verify(sv, sscale: int, dv, dscale: int, units: list[Box], shift: tuple[int, ...]) -> None:
    bad: list[Box] = []

    def check(b: Box) -> None:
        if not np.array_equal(sv.read(b.translate([-d for d in shift]), sscale), dv.read(b, dscale)):
            bad.append(b)

    run_bounded(check, units, 1)
    if bad:
        raise VolbridgeError(f"verify: {len(bad)} of {len(units)} blocks differ after the copy to {dv.url}, first {bad[0]} (x, y, z)")


TRANSFER = FunctionService("transfer", transfer, destination_requires=(Writable(),))

