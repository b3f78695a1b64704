"""DVID data instances as the DVID dialect sees them, whichever kind they are:

- :class:`ConfiguredInstance`: a channel from the relay's config (``c/e/ch``), in a repo per
  experiment whose UUID is a digest of its name; one unversioned node; bounded by its source;
  read through the relay's cache tiers.
- :class:`ManagedInstance`: an instance of a repo the relay keeps itself (``[dvid] data_dir``),
  created over HTTP, versioned, unbounded (its extents grow with what is written).
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from ..geometry import Box, ChunkGrid
from .dvid_repos import LABELS, RepoStore
from .errors import BAD_REQUEST, RelayError
from .source import RelaySource

IMAGE_TYPES = {"uint8": "uint8blk", "uint16": "uint16blk", "uint32": "uint32blk", "uint64": "uint64blk", "float32": "float32blk"}
#: Boxes a scan of a managed instance reads at a time.
SCAN = (256, 256, 64)


def repo_uuid(c: str, e: str) -> str:
    return hashlib.md5(f"{c}/{e}".encode()).hexdigest()


class Instance(ABC):
    name: str
    typename: str
    block: tuple[int, int, int]
    dtype: np.dtype
    resolution: tuple
    repo_root: str
    node: str
    versioned: bool
    #: The relay's access-control name: c/e/ch, or dvid/<repo root>/<instance>.
    access_name: str

    #: Scales above 0 it serves (DVID's ``MaxDownresLevel``: labelmap's ``?scale=N``, each level
    #: half the one before on every axis).
    max_downres = 0

    @property
    def is_label(self) -> bool:
        return self.typename in LABELS

    @abstractmethod
    def extents(self, scale: int = 0) -> Box | None:
        """The written or source bounds (x, y, z) at ``scale``, or None before anything is written."""

    @abstractmethod
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        """(x, y, z) voxels of ``box`` at ``scale``; zeros where nothing was written."""

    @abstractmethod
    def write(self, box: Box, xyz: np.ndarray) -> None:
        """Store (x, y, z) voxels of ``box`` (block-aligned, checked by the caller)."""

    @abstractmethod
    def scan(self, fn: Callable[[Box, np.ndarray], None], scale: int = 0) -> None:
        """``fn(box, (x, y, z) voxels)`` over everything written at ``scale``, in pieces."""

    def info(self) -> dict:
        ext = self.extents()
        lo = list(ext.start) if ext else None
        hi = [v - 1 for v in ext.stop] if ext else None
        extended = {
            "Values": [{"DataType": self.dtype.name, "Label": self.name}], "Interpolable": not self.is_label,
            "BlockSize": list(self.block), "VoxelSize": list(self.resolution), "VoxelUnits": ["nanometers"] * 3,
            "MinPoint": lo, "MaxPoint": hi,
            "MinIndex": [v // s for v, s in zip(lo, self.block)] if lo else None,
            "MaxIndex": [v // s for v, s in zip(hi, self.block)] if hi else None,
            "Background": 0, "ScaleLevel": 0,
        }
        if self.typename == "labelmap":
            extended.update({"IndexedLabels": False, "MaxDownresLevel": self.max_downres})
        return {
            "Base": {"TypeName": self.typename, "TypeURL": f"github.com/janelia-flyem/dvid/datatype/{self.typename}",
                     "TypeVersion": "0.1", "DataUUID": hashlib.md5(f"{self.repo_root}/{self.name}".encode()).hexdigest(),
                     "Name": self.name, "RepoUUID": self.repo_root, "Compression": "none", "Checksum": "NoChecksum",
                     "Syncs": [], "Versioned": self.versioned, "Tags": {}},
            "Extended": extended,
            "Extents": {"MinPoint": lo, "MaxPoint": hi},
        }


class ConfiguredInstance(Instance):
    versioned = False

    def __init__(self, src: RelaySource, uuid: str):
        self.src = src
        self.name = src.name.split("/")[2]
        self.access_name = src.name
        self.repo_root = self.node = uuid
        self.dtype = np.dtype(src.meta.dtype)
        self.resolution = src.meta.scales[0].resolution
        if src.meta.layer_type == "segmentation" and self.dtype == np.uint64:
            self.typename = "labelmap"
        elif self.dtype.name in IMAGE_TYPES:
            self.typename = IMAGE_TYPES[self.dtype.name]
        else:
            raise RelayError(400, BAD_REQUEST, f"{src.name} holds {self.dtype}, which no DVID data type stores")
        self.block = (64, 64, 64) if self.typename == "labelmap" else (32, 32, 32)
        if self.typename == "labelmap":
            self.max_downres = _halvings(src)

    def extents(self, scale: int = 0) -> Box:
        return self.src.meta.scales[scale].bounds

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return self.src.read(box, scale)[..., self.src.channel]

    def write(self, box: Box, xyz: np.ndarray) -> None:
        """Stores the part inside the source's bounds; the rest must be zeros (a block-aligned
        write may run past the bounds, which the source cannot hold)."""
        bounds = self.extents()
        inside = box.intersect(bounds)
        outside = xyz.copy()
        if not inside.empty:
            outside[inside.slices(box.start)] = 0
        if outside.any():
            raise RelayError(400, BAD_REQUEST, f"the write reaches beyond the bounds {bounds} (x, y, z) of {self.access_name} with non-zero voxels")
        if not inside.empty:
            ch = self.src.channel
            self.src.write(inside, xyz[inside.slices(box.start)][..., None], 0, slice(ch, ch + 1))

    def scan(self, fn: Callable[[Box, np.ndarray], None], scale: int = 0) -> None:
        self.src.scan(scale, fn)


def _halvings(src: RelaySource) -> int:
    """How many of the source's scales after the first are DVID's: each voxel 2^N times scale
    0's on every axis, its box scale 0's divided so (the start down; the stop up or down, as
    pyramids round it: what lies past it reads as background). A pyramid of other factors
    (anisotropic 2, 2, 1) stops there: DVID clients compute each level's size and place from
    scale 0 and N, and would read another level's voxels at the wrong place."""
    scales = src.meta.scales
    base, res = scales[0].bounds, scales[0].resolution
    n = 0
    for level, scale in enumerate(scales[1:], 1):
        f = 2**level
        want = base.reduced((f, f, f))
        stops_ok = all(b // f <= s <= w for b, s, w in zip(base.stop, scale.bounds.stop, want.stop))
        if scale.bounds.start != want.start or not stops_ok or any(abs(r * f - s) > 1e-6 * r * f for r, s in zip(res, scale.resolution)):
            break
        n = level
    return n


class ManagedInstance(Instance):
    versioned = True

    def __init__(self, store: RepoStore, repo: dict, node: str, name: str):
        meta = store.instance(repo, name)
        self.store, self.repo, self.node, self.name = store, repo, node, name
        self.repo_root = repo["Root"]
        self.access_name = f"dvid/{self.repo_root}/{name}"
        self.typename = meta["TypeName"]
        self.block = tuple(meta["BlockSize"])
        self.resolution = tuple(meta["VoxelSize"])
        self.volume = store.volume(repo, node, name)
        self.dtype = np.dtype(self.volume.meta.dtype)
        self._meta = meta

    def extents(self, scale: int = 0) -> Box | None:
        lo, hi = self._meta["MinPoint"], self._meta["MaxPoint"]
        if lo is None:
            return None
        return Box(tuple(lo), tuple(v + 1 for v in hi))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return self.volume.read(box, 0)[..., 0]

    def write(self, box: Box, xyz: np.ndarray) -> None:
        self.store.write(self.repo, self.node, self.name, box, xyz)

    def scan(self, fn: Callable[[Box, np.ndarray], None], scale: int = 0) -> None:
        ext = self.extents()
        if ext is None:
            return
        lock = threading.Lock()
        for cell in ChunkGrid(ext, SCAN, (0, 0, 0)).cells(ext):
            vox = self.read(cell.box)
            with lock:
                fn(cell.box, vox)
