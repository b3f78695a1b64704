"""The seam every remote implements: metadata, read a box, write a box.

Arrays crossing this seam are 4-D ``(x, y, z, channel)``, x fastest (Fortran order on the way
out). Boxes are (x, y, z) absolute voxel coordinates at the given scale. The array layer above
turns these into the user's axis order as zero-copy views.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import BoundsError, DTypeError, ShapeError, UnsupportedError
from ..formats.base import VolumeMeta
from ..geometry import Box, ChunkGrid


class Volume(ABC):
    url: str
    meta: VolumeMeta
    #: The format or remote's name as in URLs ("precomputed", "bossdb", ...).
    format_name: str
    #: e.g. {"write"}; later {"versions", "native_downsample", "native_mesh", ...}
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        """Voxels of ``box`` as ``(x, y, z, c)`` in Fortran order; the fill value outside bounds."""

    def read_into(self, box: Box, out: np.ndarray, scale: int = 0) -> None:
        """:meth:`read` into ``out`` (``(x, y, z, c)`` of the box's shape and the volume's dtype):
        for callers that read many boxes of one shape and reuse one buffer (service units)."""
        out[...] = self.read(box, scale)

    @abstractmethod
    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        """Write ``data`` ``(x, y, z, c_selected)`` into ``box`` (and the ``channels`` selected)."""

    def metadata_json(self) -> dict:
        return {}

    def instance_id(self, stamp: bool) -> str | None:
        """See :func:`volbridge.engine.identity.instance_id`; None: the volume has no such id."""
        return None

    def add_scale(self, factor) -> None:
        """Append a scale ``factor`` (x, y, z) coarser than the last (formats with scales)."""
        raise UnsupportedError(f"volbridge cannot add scales to a {self.format_name} volume ({self.url}) yet")

    def grid(self, scale: int = 0) -> ChunkGrid:
        """The storage chunk grid of ``scale``: the unit of reading."""
        s = self.meta.scales[scale]
        return ChunkGrid(s.bounds, s.chunk_shape, s.bounds.start)

    def write_grid(self, scale: int = 0) -> ChunkGrid:
        """The grid of the objects writes replace (shards where the format has them): work split
        on it never shares an object, so units never read-modify-write each other's."""
        return self.grid(scale)

    def check_write(self, box: Box, data: np.ndarray, scale: int, channels: slice | None) -> None:
        """Raise before any byte is written if the write cannot be honoured as given."""
        bounds = self.meta.scales[scale].bounds
        if not bounds.contains(box):
            raise BoundsError(f"write box {box} (x, y, z) is outside the bounds {bounds} of scale {scale} of {self.url}")
        if data.dtype != self.meta.dtype:
            raise DTypeError(f"data has dtype {data.dtype}, but {self.url} holds {self.meta.dtype}; convert it first")
        nch = len(range(self.meta.num_channels)[channels or slice(None)])
        want = (*box.shape, nch)
        if data.shape != want:
            raise ShapeError(f"data of shape {data.shape} does not fit box {box} with {nch} channel(s) (x, y, z, c: {want})")
