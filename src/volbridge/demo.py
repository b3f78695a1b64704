"""A realistic synthetic connectomics dataset, so volbridge can be tried without downloading data.

``build_demo`` writes two neuroglancer precomputed volumes side by side on local disk:

* ``image``: an EM-like uint8 volume. Cells have textured cytoplasm of their own brightness, dark
  membranes where cells meet and dark organelle blobs inside them.
* ``segmentation``: the matching uint64 labels of those touching cells (compressed_segmentation).

Both have several scales (2x2 in y, x per level: mean for the image, mode for the labels), an
anisotropic voxel of (z, y, x) = (40, 8, 8) nm and a negative voxel offset, because real volumes
rarely start at zero and coordinates in volbridge are absolute. The volume is generated and
written one z slab at a time, so memory stays bounded at any size, and every random field is
defined over the whole volume so slabs join without seams. Afterwards some cutouts are read back
and compared with what was written, which exercises the read path the way a user would.

The downsampling helpers here are deliberately small numpy functions; the downsample service will
replace them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .api import array, create
from .errors import VolbridgeError
from .services.downsample import downsample_array

#: Demo volume shapes (z, y, x). ``small`` is the default and takes seconds on two cores.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 128, 128),
    "small": (128, 512, 512),
    "medium": (256, 1024, 1024),
}
#: Voxel size in nm (z, y, x): serial-section EM is coarse in z.
RESOLUTION = (40, 8, 8)
#: Where the volume starts (z, y, x). Negative on purpose; divisible by 2**(NUM_SCALES-1) in y and
#: x so every coarser scale covers exactly the downsampled data.
VOXEL_OFFSET = (-32, -256, 1024)
#: Storage chunk (z, y, x): about 640 x 1024 x 1024 nm, roughly isotropic in physical space.
CHUNK_SHAPE = (16, 128, 128)
NUM_SCALES = 4
#: Typical diameter of a cell profile; sets how many Voronoi seeds fill the volume.
CELL_DIAMETER_NM = 700.0
IMAGE_ENCODINGS = ("raw", "jpeg")
#: The file in the demo directory that marks it as ours, so a rerun may replace it safely.
MANIFEST = "volbridge-demo.json"

Progress = Callable[[str, int, int], None]


class DemoError(VolbridgeError):
    """The demo could not be built, or what it read back differs from what it wrote."""


# -- downsampling (2x2 in y, x) ---------------------------------------------------------------------
def downsample_mean(a: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks over the last two axes (y, x) of a (z, y, x) array, rounding half up;
    an odd edge is repeated, so ``ceil(n / 2)`` rows and columns come out (the service's kernel)."""
    return downsample_array(a.T, (2, 2, 1), "mean").T


def downsample_mode(a: np.ndarray) -> np.ndarray:
    """The most frequent label of each 2x2 block over (y, x): averaging labels would invent ids."""
    return downsample_array(a.T, (2, 2, 1), "mode").T


# -- smooth random fields ---------------------------------------------------------------------------
def _bspline_matrix(coords: np.ndarray, spacing: float, n: int) -> tuple[np.ndarray, int]:
    """Cubic B-spline weights from lattice nodes ``spacing`` voxels apart to ``coords``.

    Rows are scaled to unit norm, which makes the interpolated white noise exactly unit variance.
    Returns the used band of columns and its first index, so callers touch only that band.
    """
    t = np.asarray(coords, dtype=np.float64) / spacing + 2.0
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1) / 6
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    cols = i[:, None] + np.arange(-1, 3)[None, :]
    lo, hi = int(cols.min()), int(cols.max()) + 1
    if lo < 0 or hi > n:
        raise DemoError(f"noise sampled outside its lattice (columns {lo}..{hi} of {n})")
    m = np.zeros((len(t), hi - lo), dtype=np.float32)
    np.put_along_axis(m, cols - lo, w.astype(np.float32), axis=1)
    return m, lo


class SmoothNoise:
    """Band-limited noise defined over a whole volume, sampled on any sub-grid without seams.

    A lattice of white noise, ``spacing`` voxels apart per axis, interpolated by cubic B-splines.
    Sampling is three small matrix products, so a slab costs little more than its own size.
    """

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]):
        self.spacing = tuple(float(s) for s in spacing)
        # two nodes of margin below 0 and past the end: slabs read one voxel of halo outside.
        dims = tuple(int(math.ceil((n + 2) / sp)) + 6 for n, sp in zip(shape, self.spacing))
        self.lattice = rng.standard_normal(dims, dtype=np.float32)

    def sample(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The field at the grid ``zs x ys x xs`` (voxel coordinates), as float32 (z, y, x)."""
        (wz, z0), (wy, y0), (wx, x0) = (
            _bspline_matrix(c, sp, n) for c, sp, n in zip((zs, ys, xs), self.spacing, self.lattice.shape)
        )
        lat = self.lattice[z0 : z0 + wz.shape[1], y0 : y0 + wy.shape[1], x0 : x0 + wx.shape[1]]
        nz, ny, nx = len(wz), len(wy), len(wx)
        lx = lat.shape[2]
        # Each step is one 2-D matrix product (a single BLAS call); only small arrays are transposed.
        out = np.tensordot(wz, lat, axes=(1, 0))  # (nz, Ly, Lx)
        out = wy @ out.transpose(1, 0, 2).reshape(out.shape[1], nz * lx)  # (ny, nz * Lx)
        out = np.ascontiguousarray(out.reshape(ny, nz, lx).transpose(1, 0, 2))  # (nz, ny, Lx)
        return (out.reshape(nz * ny, lx) @ wx.T).reshape(nz, ny, nx)


# -- cells ------------------------------------------------------------------------------------------
class VoronoiCells:
    """Touching cells: each voxel belongs to its nearest seed, measured in nm after a smooth warp.

    Nearest-seed labelling (a Voronoi partition) makes cells that fill space and share walls, as
    neurites and somata do; warping the query points bends the flat Voronoi walls into curved
    membranes. Labels are computed on a grid twice as coarse in y and x and repeated: the KD-tree
    query is the costliest step, and 16 nm steps in a wall are invisible under the membrane.
    """

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], resolution: Sequence[float],
                 diameter_nm: float = CELL_DIAMETER_NM):
        self.shape = tuple(int(s) for s in shape)
        self.resolution = np.asarray(resolution, dtype=np.float64)
        extent = np.asarray(self.shape) * self.resolution
        margin = diameter_nm  # seeds beyond the edges, so border cells are cut, not squashed
        volume = float(np.prod(extent + 2 * margin))
        n = max(8, int(round(volume / (math.pi / 6 * diameter_nm**3))))
        self.seeds = rng.uniform(-margin, extent + margin, size=(n, 3))
        self.tree = cKDTree(self.seeds)
        self.ids = np.arange(1, n + 1, dtype=np.uint64)
        self.amplitude_nm = 0.2 * diameter_nm
        warp_spacing = [diameter_nm / 2 / r for r in self.resolution]
        self.warp = [SmoothNoise(rng, self.shape, warp_spacing) for _ in range(3)]

    @property
    def count(self) -> int:
        return len(self.ids)

    def labels(self, z0: int, z1: int) -> np.ndarray:
        """uint64 labels of slices ``z0:z1`` (may reach one slice outside the volume)."""
        _, ny, nx = self.shape
        zs = np.arange(z0, z1, dtype=np.float64)
        ys = np.arange(0, ny, 2, dtype=np.float64) + 0.5  # centres of the 2x2 blocks
        xs = np.arange(0, nx, 2, dtype=np.float64) + 0.5
        grid = np.empty((len(zs), len(ys), len(xs), 3), dtype=np.float64)
        for axis, (c, r) in enumerate(zip((zs, ys, xs), self.resolution)):
            shape = [1, 1, 1]
            shape[axis] = -1
            grid[..., axis] = (c * r).reshape(shape)
            grid[..., axis] += self.amplitude_nm * self.warp[axis].sample(zs, ys, xs)
        _, nearest = self.tree.query(grid.reshape(-1, 3), workers=-1)
        coarse = self.ids[nearest].reshape(grid.shape[:3])
        return coarse.repeat(2, axis=1).repeat(2, axis=2)[:, :ny, :nx]


# -- EM-like rendering ------------------------------------------------------------------------------
class EMRenderer:
    """Turns labels into an EM-like image: the look, not the physics, of stained tissue."""

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], num_cells: int, seed: int):
        self.shape = tuple(shape)
        self.seed = seed
        self.brightness = rng.uniform(135, 200, size=num_cells + 1).astype(np.float32)
        self.texture = SmoothNoise(rng, shape, (1, 3, 3))  # ~30 nm grain of cytoplasm
        self.organelles = SmoothNoise(rng, shape, (2, 12, 12))  # ~100-200 nm blobs

    def render(self, labels_halo: np.ndarray, z0: int) -> np.ndarray:
        """uint8 image of the slices between the first and last of ``labels_halo`` (a 1-slice halo)."""
        lab = labels_halo[1:-1]
        nz, ny, nx = lab.shape
        zs, ys, xs = np.arange(z0, z0 + nz), np.arange(ny), np.arange(nx)

        walls = np.zeros(lab.shape, dtype=bool)  # in-plane label changes, marked on both sides
        dx = lab[:, :, 1:] != lab[:, :, :-1]
        walls[:, :, 1:] |= dx
        walls[:, :, :-1] |= dx
        dy = lab[:, 1:, :] != lab[:, :-1, :]
        walls[:, 1:, :] |= dy
        walls[:, :-1, :] |= dy
        # a wall lying in the section plane shows as a faint smear, not a sharp line
        flat = (lab != labels_halo[:-2]) | (lab != labels_halo[2:])
        w = walls.astype(np.float32)
        membrane = ndimage.gaussian_filter(w, (0, 0.9, 0.9))
        membrane *= 1.8
        membrane += 0.3 * flat
        np.clip(membrane, 0, 1, out=membrane)
        near_wall = ndimage.maximum_filter(walls, size=(1, 9, 9))  # organelles keep off membranes

        organelle = self.organelles.sample(zs, ys, xs)
        organelle -= 1.6  # the top ~5% of the field: scattered blobs
        organelle *= 2.5
        np.clip(organelle, 0, 1, out=organelle)
        organelle[near_wall] = 0

        img = self.brightness[lab.astype(np.intp)]  # labels run 1..num_cells
        img += 14 * self.texture.sample(zs, ys, xs)
        img += 9 * np.random.default_rng([self.seed, 7, z0]).standard_normal(lab.shape, dtype=np.float32)
        img -= 90 * organelle
        img -= 120 * membrane
        np.clip(np.rint(img, out=img), 0, 255, out=img)
        return img.astype(np.uint8)


# -- the dataset ------------------------------------------------------------------------------------
@dataclass
class DemoVolume:
    name: str
    path: str
    url: str
    layer_type: str
    dtype: str
    encoding: str
    shape: tuple[int, ...]  # (z, y, x) at mip 0
    bounds: tuple[tuple[int, ...], tuple[int, ...]]
    scale_shapes: list[tuple[int, ...]]
    bytes_on_disk: int
    num_files: int


@dataclass
class DemoCheck:
    what: str
    ok: bool
    detail: str


@dataclass
class DemoResult:
    directory: str
    size: str
    seed: int
    num_cells: int
    resolution: tuple[float, ...]
    volumes: list[DemoVolume]
    checks: list[DemoCheck]
    seconds: float


class _Expected:
    """The voxels a read of ``box`` (absolute z, y, x at one scale) must return, gathered slab by slab."""

    def __init__(self, start: Sequence[int], stop: Sequence[int], dtype):
        self.start, self.stop = tuple(start), tuple(stop)
        self.data = np.zeros([b - a for a, b in zip(start, stop)], dtype=dtype)  # fill value outside

    def feed(self, start: Sequence[int], block: np.ndarray) -> None:
        lo = [max(a, s) for a, s in zip(self.start, start)]
        hi = [min(b, s + n) for b, s, n in zip(self.stop, start, block.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            return
        dst = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, self.start))
        src = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
        self.data[dst] = block[src]


def _disk_usage(path: Path) -> tuple[int, int]:
    total = files = 0
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # store bookkeeping (lock files)
        for n in names:
            total += os.stat(os.path.join(root, n)).st_size
            files += 1
    return total, files


def _prepare_directory(directory: Path) -> None:
    """Make ``directory`` ready; replace an earlier demo there, refuse to touch anything else."""
    if directory.exists() and not directory.is_dir():
        raise DemoError(f"{directory} exists and is not a directory; choose another --dir")
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / MANIFEST).is_file():
            raise DemoError(
                f"{directory} is not empty and holds no earlier volbridge demo ({MANIFEST}); "
                "choose an empty or new --dir so nothing of yours is overwritten"
            )
        for name in ("image", "segmentation", MANIFEST):
            p = directory / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def _verify_boxes(shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An unaligned mip-0 box that crosses chunk borders and sticks out of the volume in z and x."""
    nz, ny, nx = shape
    oz, oy, ox = VOXEL_OFFSET
    start = (oz - 3, oy + ny // 5, ox + nx - min(nx // 2, 150))
    stop = (oz + min(nz, 21), oy + ny // 5 + min(ny // 2, 200), ox + nx + 20)
    return start, stop


def build_demo(
    directory: str | os.PathLike = "volbridge-demo",
    size: str = "small",
    *,
    image_encoding: str = "raw",
    seed: int = 0,
    progress: Progress | None = None,
) -> DemoResult:
    """Generate, write and verify the demo dataset under ``directory``.

    ``progress(stage, done, total)`` is called as work advances, for a progress bar. Raises
    :class:`DemoError` if what is read back differs from what was written.
    """
    if size not in SIZES:
        raise DemoError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    if image_encoding not in IMAGE_ENCODINGS:
        raise DemoError(f"image encoding must be one of {', '.join(IMAGE_ENCODINGS)}, got {image_encoding!r}")
    report = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    shape = SIZES[size]
    directory = Path(directory).expanduser().resolve()
    _prepare_directory(directory)
    # claim the directory first: a run that is interrupted can still be replaced by the next one
    (directory / MANIFEST).write_text(json.dumps({"status": "incomplete", "size": size, "seed": seed}) + "\n")

    rng = np.random.default_rng(seed)
    cells = VoronoiCells(rng, shape, RESOLUTION)
    renderer = EMRenderer(rng, shape, cells.count, seed)

    start = VOXEL_OFFSET
    stop = tuple(o + n for o, n in zip(VOXEL_OFFSET, shape))
    urls = {name: "precomputed://" + (directory / name).as_uri() for name in ("image", "segmentation")}
    common = dict(bounds=(start, stop), chunk_shape=CHUNK_SHAPE, resolution=RESOLUTION, num_scales=NUM_SCALES)
    image = create(urls["image"], dtype="uint8", encoding=image_encoding, layer_type="image", **common)
    seg = create(urls["segmentation"], dtype="uint64", encoding="compressed_segmentation",
                 layer_type="segmentation", **common)
    image_scales = [image.mip(k) for k in range(NUM_SCALES)]
    seg_scales = [seg.mip(k) for k in range(NUM_SCALES)]

    box_lo, box_hi = _verify_boxes(shape)
    expect_img0, expect_seg0 = _Expected(box_lo, box_hi, np.uint8), _Expected(box_lo, box_hi, np.uint64)
    coarse_lo, coarse_hi = image_scales[-1].bounds
    expect_img_c, expect_seg_c = _Expected(coarse_lo, coarse_hi, np.uint8), _Expected(coarse_lo, coarse_hi, np.uint64)

    slab = CHUNK_SHAPE[0]  # whole chunks per write: no read-modify-write
    nslabs = math.ceil(shape[0] / slab)
    stage = f"writing {shape[0]}x{shape[1]}x{shape[2]} voxels, {NUM_SCALES} scales"
    report(stage, 0, nslabs)
    halo = cells.labels(-1, 1)  # slices -1 and 0; each slab passes its last two on
    present = np.zeros(cells.count + 1, dtype=bool)  # the cells inside the volume (seeds lie beyond it too)
    for i in range(nslabs):
        z0, z1 = i * slab, min(shape[0], (i + 1) * slab)
        labels_halo = np.concatenate([halo, cells.labels(z0 + 1, z1 + 1)])
        halo = labels_halo[-2:]
        img = renderer.render(labels_halo, z0)
        lab = np.ascontiguousarray(labels_halo[1:-1])
        present[np.bincount(lab.ravel().astype(np.intp), minlength=present.size) > 0] = True
        zabs = start[0] + z0
        for k in range(NUM_SCALES):
            if k:
                img, lab = downsample_mean(img), downsample_mode(lab)
            (_, ylo, xlo), _ = image_scales[k].bounds
            image_scales[k][zabs : zabs + img.shape[0], ylo : ylo + img.shape[1], xlo : xlo + img.shape[2]] = img
            seg_scales[k][zabs : zabs + lab.shape[0], ylo : ylo + lab.shape[1], xlo : xlo + lab.shape[2]] = lab
            if k == 0:
                expect_img0.feed((zabs, ylo, xlo), img)
                expect_seg0.feed((zabs, ylo, xlo), lab)
            if k == NUM_SCALES - 1:
                expect_img_c.feed((zabs, ylo, xlo), img)
                expect_seg_c.feed((zabs, ylo, xlo), lab)
        report(stage, i + 1, nslabs)

    checks = _verify(urls, image_encoding, [
        ("image", 0, expect_img0), ("segmentation", 0, expect_seg0),
        ("image", NUM_SCALES - 1, expect_img_c), ("segmentation", NUM_SCALES - 1, expect_seg_c),
    ], report)

    volumes = []
    for name, layer_type, enc in (("image", "image", image_encoding), ("segmentation", "segmentation", "compressed_segmentation")):
        arr = array(urls[name])
        nbytes, nfiles = _disk_usage(directory / name)
        volumes.append(DemoVolume(
            name=name, path=str(directory / name), url=urls[name], layer_type=layer_type, dtype=str(arr.dtype),
            encoding=enc, shape=arr.shape, bounds=arr.bounds, scale_shapes=[s.shape for s in arr.scales],
            bytes_on_disk=nbytes, num_files=nfiles,
        ))
    result = DemoResult(
        directory=str(directory), size=size, seed=seed, num_cells=int(present[1:].sum()), resolution=RESOLUTION,
        volumes=volumes, checks=checks, seconds=time.perf_counter() - t0,
    )
    (directory / MANIFEST).write_text(json.dumps({"status": "complete", **asdict(result)}, indent=2) + "\n")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise DemoError("read-back check failed: " + "; ".join(f"{c.what}: {c.detail}" for c in failed))
    return result


def _verify(urls: dict[str, str], image_encoding: str, cases, report: Progress) -> list[DemoCheck]:
    """Read each expected box back through the public API and compare."""
    stage = "reading cutouts back"
    report(stage, 0, len(cases))
    checks = []
    for n, (name, mip, exp) in enumerate(cases):
        got = array(urls[name], mip=mip)[tuple(slice(a, b) for a, b in zip(exp.start, exp.stop))]
        box = "..".join(str(list(c)) for c in (exp.start, exp.stop))
        what = f"{name} mip {mip} box {box} (z, y, x)"
        if got.shape != exp.data.shape or got.dtype != exp.data.dtype:
            checks.append(DemoCheck(what, False, f"read {got.shape} {got.dtype}, expected {exp.data.shape} {exp.data.dtype}"))
        elif name == "image" and image_encoding == "jpeg":
            err = np.abs(got.astype(np.int16) - exp.data.astype(np.int16))
            ok = float(err.mean()) <= 8.0
            checks.append(DemoCheck(what, ok, f"jpeg is lossy: mean |error| {err.mean():.2f}, max {int(err.max())} grey levels"))
        else:
            diff = int(np.count_nonzero(got != exp.data))
            checks.append(DemoCheck(what, diff == 0, "identical" if diff == 0 else f"{diff} voxels differ"))
        report(stage, n + 1, len(cases))
    return checks
