"""TIFF volumes, read-only: a multipage file (``tiff:///data/stack.tif``, pages are z) or a
z-stack of files (``tiff:///data/slices/*.tif``, sorted by name). Only the pages a read needs are
decoded. RGB(A) pages become channels. Resolution from ``?resolution=z,y,x``, else 1.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ..engine import Volume
from ..errors import ReadOnlyError, StoreError, URLError
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box
from .single_file import parse_file_url, triple


class TiffVolume(Volume):
    format_name = "tiff"

    def __init__(self, url: str, files: list[str], resolution=None):
        import tifffile

        self.url, self.files = url, files
        self.pages: list[tuple[str, int]] = []
        shapes = set()
        dtype = None
        for path in files:
            try:
                with tifffile.TiffFile(path) as tf:
                    for i, page in enumerate(tf.pages):
                        shapes.add(page.shape)
                        dtype = page.dtype
                        self.pages.append((path, i))
            except (OSError, tifffile.TiffFileError) as e:
                raise StoreError(f"{url}: cannot read {path}: {e}") from e
        if not self.pages:
            raise StoreError(f"{url}: no image pages in {', '.join(files[:3])}")
        if len(shapes) != 1:
            raise URLError(f"{url!r}: pages differ in shape ({sorted(shapes)[:4]}); a volume needs equal pages")
        shape = shapes.pop()
        if len(shape) not in (2, 3):
            raise URLError(f"{url!r}: pages of shape {shape} are not 2-D images")
        self.channels = shape[2] if len(shape) == 3 else 1
        bounds = Box((0, 0, 0), (shape[1], shape[0], len(self.pages)))
        res = resolution or (1.0, 1.0, 1.0)
        self.meta = VolumeMeta(np.dtype(dtype), self.channels, "image",
                               (ScaleMeta("", bounds, res, (shape[1], shape[0], 1), "tiff"),), 0)
        self.capabilities = frozenset()

    def instance_id(self, stamp: bool) -> str | None:
        """The files' versions (TIFF has no place volbridge writes an id to)."""
        import hashlib

        versions = []
        for path in self.files:
            st = os.stat(path)
            versions.append((path, st.st_mtime_ns, st.st_size))
        return "version:" + hashlib.sha1(repr(versions).encode()).hexdigest()

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        import tifffile

        out = np.zeros((*box.shape, self.channels), dtype=self.meta.dtype, order="F")
        inter = box.intersect(self.meta.scales[0].bounds)
        if inter.empty:
            return out
        (x0, y0, z0), (x1, y1, z1) = inter.start, inter.stop
        for z in range(z0, z1):
            path, index = self.pages[z]
            try:
                img = tifffile.imread(path, key=index)
            except (OSError, tifffile.TiffFileError, ValueError) as e:
                raise StoreError(f"{self.url}: cannot read page {index} of {path}: {e}") from e
            img = img[y0:y1, x0:x1]
            img = img[..., None] if img.ndim == 2 else img
            out[x0 - box.start[0] : x1 - box.start[0], y0 - box.start[1] : y1 - box.start[1], z - box.start[2]] = img.transpose(1, 0, 2)
        return out

    def write(self, box, data, scale=0, channels=None) -> None:
        raise ReadOnlyError(f"{self.url}: TIFF volumes are read-only")


def open_tiff(url: str, writable: bool) -> TiffVolume:
    if writable:
        raise ReadOnlyError(f"{url}: TIFF volumes are read-only; transfer them to another format to write")
    pattern, _, options = parse_file_url(url)
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    if not files or not all(os.path.isfile(f) for f in files):
        raise URLError(f"{url!r}: no TIFF file matches {pattern}")
    return TiffVolume(url, files, triple(options.get("resolution"), "resolution", url))
