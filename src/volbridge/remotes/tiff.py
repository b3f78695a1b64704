"""TIFF volumes, read-only: a multipage file (``tiff:///data/stack.tif``, pages are z) or a
z-stack of files (``tiff:///data/slices/*.tif``, sorted by name with numbers by value: s_2 before
s_10). Only the pages a read needs are decoded. RGB(A) samples (interleaved or planar) and the C
axis of ImageJ/OME hyperstacks become channels; time series are refused.

Voxel sizes (nm) from ``?resolution=z,y,x``, else the first file's metadata as Fiji shows it:
an OME-TIFF's ``PhysicalSize{X,Y,Z}`` (and their units, micrometres by default), or ImageJ's
calibration (X/YResolution in pixels per ``unit``, z ``spacing``); a z size the metadata lacks is
1 of the x unit (Fiji's default). Other TIFFs (no such metadata, or ImageJ's ``pixel``) are 1 nm:
a plain TIFF's XResolution is most often a scanner's 72 dpi, not a voxel size. A size that is no
positive number, or in a unit volbridge does not know, is not read (a warning says so): Fiji and
Bio-Formats open such files too.

``?series=N`` reads image N of a file holding several (an OME-TIFF's other positions; a file
written a slab at a time): without it an OME-TIFF's first image is read and the series of other
files follow each other in z.
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from ..engine import Volume
from ..errors import ReadOnlyError, StoreError, UnsupportedError, URLError
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box
from .single_file import parse_file_url, triple


#: How a page holds its samples (tifffile's page axes): gray, interleaved (RGB), planar (separate).
_PAGE_LAYOUTS = ("YX", "YXS", "SYX")
#: tifffile's axes of a stack of planes: depth, image sequence, unknown. 'C' (channels) is read too.
_PLANE_AXES = "ZIQ"


#: Nanometres per unit of length, by the names OME (UnitsLength) and ImageJ (``unit``) use.
_NM_PER_UNIT = {"m": 1e9, "dm": 1e8, "cm": 1e7, "mm": 1e6, "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3,
                "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3, "nm": 1.0, "nanometer": 1.0, "pm": 1e-3,
                "Å": 0.1, "angstrom": 0.1}


def _nm_per(unit: str | None) -> float | None:
    """Nanometres in one ``unit`` (ImageJ writes µ as ``\\u00B5`` too); None when not a length."""
    if unit is None:
        return None
    unit = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return _NM_PER_UNIT.get(unit, _NM_PER_UNIT.get(unit.lower()))


def _ome_voxel(xml: str, first_ifd: int | None, image: int, path: str, url: str) -> tuple[float, float, float] | None:
    """(x, y, z) nm of the OME Image whose planes start at IFD ``first_ifd`` (tifffile leaves
    out Images with no planes in the file, so its series number is not the Image's), else of
    Image ``image``; None without a usable PhysicalSizeX/Y."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        warnings.warn(f"{url}: the OME-XML of {path} does not parse ({e}); its voxel sizes are not read", stacklevel=5)
        return None
    images = [_child(el, "Pixels") for el in root if _local(el.tag) == "Image"]
    here = (root.get("UUID"), os.path.basename(path))
    pixels = next((px for px in images if px is not None and first_ifd is not None and _holds_ifd(px, first_ifd, here)), None)
    if pixels is None:
        pixels = images[image] if image < len(images) else None
    if pixels is None:
        return None
    sizes = []
    for axis in "XYZ":
        text, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        scale = _nm_per(unit)
        if text is not None and scale is None and unit.strip().lower() != "pixel":
            warnings.warn(f"{url}: {path} gives PhysicalSize{axis} in {unit!r}, not a unit of length volbridge knows: "
                          "not read (give the voxel size as ?resolution=z,y,x)", stacklevel=5)
        size = _size(text, f"PhysicalSize{axis}", path, url) if text is not None and scale is not None else None
        sizes.append(None if size is None else size * scale)
    if sizes[0] is None or sizes[1] is None:
        return None
    # no z size: 1 of x's unit, as Bio-Formats shows it
    z = sizes[2] if sizes[2] is not None else _nm_per(pixels.get("PhysicalSizeXUnit", "µm"))
    return sizes[0], sizes[1], z


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el, name: str):
    return next((c for c in el if _local(c.tag) == name), None)


def _holds_ifd(pixels, ifd: int, here: tuple[str | None, str]) -> bool:
    """Whether an OME Pixels element maps a plane to IFD ``ifd`` (TiffData IFD, PlaneCount) of
    this file (``here``: its UUID and name; a TiffData naming another file's is not)."""
    for td in (c for c in pixels if _local(c.tag) == "TiffData"):
        ref = _child(td, "UUID")
        if ref is not None and ((here[0] and (ref.text or "").strip() != here[0])
                                or (ref.get("FileName") and ref.get("FileName") != here[1])):
            continue
        try:
            first = int(td.get("IFD", 0))
            count = int(td.get("PlaneCount", 1 if "IFD" in td.attrib else 2**31))
        except ValueError:
            continue
        if first <= ifd < first + count:
            return True
    return False


def _imagej_voxel(meta: dict, page, path: str, url: str) -> tuple[float, float, float] | None:
    """(x, y, z) nm from ImageJ's calibration: pixels per ``unit`` in the X/YResolution tags,
    z ``spacing`` in ``unit`` (its size, as ImageJ takes a negative one; 1 when none); None
    when uncalibrated (no unit, or ``pixel``)."""
    scale = _nm_per(meta.get("unit"))
    if scale is None:
        return None
    sizes = []
    for tag in ("XResolution", "YResolution"):
        value = page.tags.get(tag)
        if value is None:
            return None
        num, den = value.value
        size = _size(den / num if num else math.inf, tag, path, url)
        if size is None:
            return None
        sizes.append(size * scale)
    spacing = meta.get("spacing", 1.0)
    z = _size(abs(spacing) if isinstance(spacing, (int, float)) else spacing, "spacing", path, url)
    return sizes[0], sizes[1], (z if z is not None else 1.0) * scale


def _size(value, what: str, path: str, url: str) -> float | None:
    """A voxel size from the metadata, None (with a warning) when it is no positive number:
    Fiji and Bio-Formats open such files uncalibrated, so volbridge does too."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = math.nan
    if not (math.isfinite(size) and size > 0):
        warnings.warn(f"{url}: {path} gives {what} {value!r}, not a positive voxel size: not read "
                      "(give the voxel size as ?resolution=z,y,x)", stacklevel=5)
        return None
    return size


def _planes(path: str, url: str, series: int | None = None, voxel_size: bool = True):
    """The planes of one file in z order, as (page indices, one per channel), with the pages'
    layout, channel count, dtype, (height, width) and the voxel size its metadata gives (x, y,
    z nm, or None; not read unless ``voxel_size``). From tifffile's series and their axes,
    so ImageJ/OME hyperstacks (ZCYX, CZYX) give channels, not z (a review found them folded
    into z, channels alternating), and planar RGB pages keep their channels. A series' planes
    are the pages tifffile maps to it, in its order (an OME-TIFF's IFD mapping may store them in
    any order: they were read in file order, z scrambled). Several series of one layout (a file
    written a slice or a slab at a time, ``append=True``) follow each other in z; of an
    OME-TIFF's several images (other positions) the first is read, as tifffile.imread does, with
    a warning (they were stacked into z). ``series``: read that one only."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            ome = tf.is_ome
            # an OME series' pages are where its XML maps them; other series' run on from their
            # first page (listing every page parses every IFD: 12-37x slower opens of big stacks)
            found = [(s.axes, s.shape, s.dtype,
                      [None if p is None else p.index for p in s.pages] if ome else
                      list(range(s.pages[0].index, s.pages[0].index + _plane_count(s.axes, s.shape, s.pages[0].axes))),
                      s.pages[0].axes, s.pages[0].shape) for s in tf.series]
            npages = len(tf.pages)
            if series is not None and not series < len(found):
                raise URLError(f"{url!r}: series={series}, but {path} holds {len(found)} series (0..{len(found) - 1})")
            chosen, voxel = series or 0, None
            if not voxel_size:
                pass
            elif ome:
                first = tf.series[chosen].pages[0] if tf.series[chosen].pages else None
                voxel = _ome_voxel(tf.ome_metadata, None if first is None else first.index, chosen, path, url)
            else:
                meta = tf.imagej_metadata
                voxel = _imagej_voxel(meta, tf.series[chosen].pages[0], path, url) if meta else None
    except (OSError, IndexError, AttributeError, tifffile.TiffFileError) as e:
        raise StoreError(f"{url}: cannot read {path}: {e}") from e
    if not found:
        raise StoreError(f"{url}: no image pages in {path}")
    if series is not None:
        found = found[series:series + 1]
    if any(p is not None and p >= npages for f in found for p in f[3]):
        raise UnsupportedError(f"{url}: {path} stores its series in fewer pages ({npages}) than planes")
    if len(found) > 1 and ome:
        shapes = ", ".join(f"{a} {tuple(sh)}" for a, sh, *_ in found[:4])
        warnings.warn(f"{url}: {path} holds {len(found)} images ({shapes}{', ...' if len(found) > 4 else ''}); "
                      "volbridge reads the first, as tifffile.imread does (?series=N reads image N)", stacklevel=4)
        found = found[:1]
    planes: list[tuple[int, ...]] = []
    kind = None
    for axes, shape, dtype, pages, layout, page_shape in found:
        these, this_kind = _series_planes(axes, shape, dtype, pages, layout, page_shape, path, url)
        if kind is not None and this_kind != kind:
            raise URLError(f"{url!r}: the series of {path} differ ({kind[0]} pages of {kind[2]}x{kind[3]}, "
                           f"{kind[1]} channel(s) of {kind[4]}; then {this_kind[0]}, {this_kind[2]}x{this_kind[3]}, "
                           f"{this_kind[1]}, {this_kind[4]}); a volume needs equal pages")
        kind = this_kind
        planes += these
    layout, channels, height, width, dtype = kind
    return planes, layout, channels, dtype, (height, width), voxel


def _plane_count(axes: str, shape, layout: str) -> int:
    """The pages of a series: its shape less the page's own axes."""
    return int(np.prod(shape[: len(axes) - len(layout)], dtype=np.int64))


def _series_planes(axes, shape, dtype, pages: list, layout: str, page_shape, path: str, url: str):
    """The planes of one series whose pages are the file's ``pages`` (indices, in the series'
    order) and its kind (layout, channels, height, width, dtype)."""
    if layout not in _PAGE_LAYOUTS:
        raise UnsupportedError(f"{url}: the pages of {path} have axes {layout}; volbridge reads 2-D pages (YX), RGB(A) (YXS) "
                               "or planar RGB(A) (SYX)")
    lead_axes, lead_shape = axes[: len(axes) - len(layout)], shape[: len(axes) - len(layout)]
    extra = [f"{a}={n}" for a, n in zip(lead_axes, lead_shape) if a not in _PLANE_AXES + "C" and n > 1]
    if extra or lead_axes.count("C") > 1 or ("C" in lead_axes and "S" in layout):
        raise UnsupportedError(f"{url}: {path} holds axes {axes} (shape {shape}); volbridge reads z-stacks of pages with "
                               "channels as C or as samples of a page, not " + (", ".join(extra) or "both"))
    count = int(np.prod(lead_shape, dtype=np.int64))
    if len(pages) != count or any(p is None for p in pages):
        missing = sum(p is None for p in pages) + max(0, count - len(pages))
        raise UnsupportedError(f"{url}: {path} stores {missing} of the {count} planes of its {axes} series in no page")
    c_axis = lead_axes.find("C")
    channels = lead_shape[c_axis] if c_axis >= 0 else (page_shape[layout.index("S")] if "S" in layout else 1)
    planes: dict[tuple, list[int]] = {}
    for index, at in enumerate(np.ndindex(*lead_shape)):  # pages in the series' (C) order
        z = tuple(i for d, i in enumerate(at) if d != c_axis)
        planes.setdefault(z, []).append(pages[index])
    kind = (layout, channels, page_shape[layout.index("Y")], page_shape[layout.index("X")], np.dtype(dtype))
    return [tuple(keys) for _, keys in sorted(planes.items())], kind


class TiffVolume(Volume):
    format_name = "tiff"

    def __init__(self, url: str, files: list[str], resolution=None, series: int | None = None):
        self.url, self.files = url, files
        self.pages: list[tuple[str, tuple[int, ...], str]] = []  # per z: file, its pages (one per channel), layout
        kinds = {}
        voxel = None
        for i, path in enumerate(files):
            planes, layout, channels, dtype, hw, found = _planes(path, url, series, voxel_size=i == 0 and not resolution)
            voxel = found if i == 0 else voxel
            kinds.setdefault((hw, channels, dtype), path)
            self.pages += [(path, keys, layout) for keys in planes]
        if not self.pages:
            raise StoreError(f"{url}: no image pages in {', '.join(files[:3])}")
        if len(kinds) != 1:
            seen = "; ".join(f"{p}: {h}x{w} pages, {c} channel(s) of {d}" for ((h, w), c, d), p in list(kinds.items())[:4])
            raise URLError(f"{url!r}: its files differ in page shape, channels or dtype ({seen}); a volume needs them equal")
        (height, width), self.channels, dtype = next(iter(kinds))
        bounds = Box((0, 0, 0), (width, height, len(self.pages)))
        res = resolution or voxel or (1.0, 1.0, 1.0)
        self.meta = VolumeMeta(dtype, self.channels, "image", (ScaleMeta("", bounds, res, (width, height, 1), "tiff"),), 0)
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
            path, keys, layout = self.pages[z]
            try:
                img = tifffile.imread(path, key=list(keys)) if len(keys) > 1 else tifffile.imread(path, key=keys[0])
            except (OSError, tifffile.TiffFileError, ValueError) as e:
                raise StoreError(f"{self.url}: cannot read page(s) {', '.join(map(str, keys))} of {path}: {e}") from e
            if len(keys) > 1 or layout == "SYX":  # channel pages, or a planar page: channels first
                img = np.moveaxis(img, 0, -1)
            img = img[y0:y1, x0:x1]
            img = img[..., None] if img.ndim == 2 else img
            out[x0 - box.start[0] : x1 - box.start[0], y0 - box.start[1] : y1 - box.start[1], z - box.start[2]] = img.transpose(1, 0, 2)
        return out

    def write(self, box, data, scale=0, channels=None) -> None:
        raise ReadOnlyError(f"{self.url}: TIFF volumes are read-only")


def _natural(name: str) -> list:
    """Sort key putting s_2.tif before s_10.tif (numbers by value), as microscope software names
    slices; plain name order read such stacks out of z order (a review found)."""
    # the odd parts are the [0-9] runs (isdigit would also take '²', which int() refuses)
    return [(0, int(part), "") if i % 2 else (1, 0, part) for i, part in enumerate(re.split(r"([0-9]+)", name))]


def open_tiff(url: str, writable: bool) -> TiffVolume:
    if writable:
        raise ReadOnlyError(f"{url}: TIFF volumes are read-only; transfer them to another format to write")
    pattern, _, options = parse_file_url(url, ("resolution", "series"))
    # a file of that very name first: 'scan[1].tif' is a name, and as a pattern it matched
    # another file ('scan1.tif'), read in its place (a review found)
    if os.path.isfile(pattern) or not any(c in pattern for c in "*?["):
        files = [pattern]
    else:
        files = sorted((f for f in glob.glob(pattern) if os.path.isfile(f)), key=_natural)
    if not files or not all(os.path.isfile(f) for f in files):
        raise URLError(f"{url!r}: no TIFF file matches {pattern}")
    series = options.get("series")
    if series is not None and not re.fullmatch(r"[0-9]{1,9}", series):
        raise URLError(f"{url!r}: series must be a series index (0, 1, ...), got {series!r}")
    return TiffVolume(url, files, triple(options.get("resolution"), "resolution", url), None if series is None else int(series))
