"""Neuroglancer precomputed interop with the two reference implementations, both directions.

* volbridge writes (``volbridge.create`` then ``vol[...] = data``); cloud-volume and tensorstore
  read, and must see exactly the voxels written.
* cloud-volume and tensorstore write; volbridge reads (both axis orders) and must see exactly what
  the writer's own reader sees.
* Chunk file names: for the same ``info`` volbridge writes exactly the files the peers write.
* Mixed edits: a volume written by one is partly rewritten by another and read by all.

"Exactly" means identical dtype, shape and bytes (floats compared bit for bit, so NaN, -0.0 and
inf count). jpeg is lossy, so there the reference is what the peer itself decodes from the same
bytes, plus a closeness check against the original that catches scrambled layouts.

Known peer limits that decide which reader checks which case (they are cloud-volume's, not
volbridge's, shown by cloud-volume failing to round-trip its own writes):
* cloud-volume does not de-interleave multi-channel jpeg/png pixels on decode
  (``chunks.decode_jpeg``/``decode_png`` reshape the interleaved buffer in F order), so
  multi-channel image encodings are checked against tensorstore only.
* cloud-volume's png codec (pyspng) decodes 16-bit grey as two channels and cannot encode it, so
  uint16 png is checked against tensorstore only.
* tensorstore does not read CloudFiles' ``<key>.gz`` (``.zstd``, ``.br``, ...) objects on local
  disk, so volumes with compressed chunk files are checked against cloud-volume only.
* tensorstore's precomputed driver has no float64/int64; those are checked against cloud-volume.

cloud-volume's png codec needs the ``pyspng-seunglab`` package.

Axes: volbridge's default order is zyx (C-order ``(c, z, y, x)``); cloud-volume returns
``(x, y, z, c)`` and tensorstore's precomputed driver has dims ``x, y, z, channel``. Every
comparison here is made in ``(x, y, z, c)``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest

import tensorstore as ts
from cloudvolume import Bbox, CloudVolume

import volbridge as vb

# -- geometry (all (x, y, z), the format's own order) ------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    offset: tuple[int, int, int]
    size: tuple[int, int, int]
    chunk: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(o + s for o, s in zip(self.offset, self.size))


#: Negative offsets not aligned to the chunk, every axis truncated at the far edge (4 x 3 x 3 chunks).
NEG = Geometry(offset=(-64, 3, -5), size=(50, 37, 20), chunk=(16, 16, 8))
#: The whole volume inside one truncated chunk, negative offset.
TINY = Geometry(offset=(-7, -3, -1), size=(10, 7, 3), chunk=(16, 16, 8))
#: Positive unaligned offset, anisotropic chunks, truncated edges (2 x 3 x 3 chunks).
POS = Geometry(offset=(5, 100, 3), size=(24, 20, 11), chunk=(16, 8, 4))

#: mip 1 is downsampled 2x in x and y (volbridge's default factor (1, 2, 2) in zyx).
FACTOR_XYZ = (2, 2, 1)
RESOLUTION_XYZ = (4, 4, 40)
#: The peers write mip 1 with a chunk shape different from mip 0's.
MIP1_CHUNK = (8, 4, 4)


# -- data ---------------------------------------------------------------------------------------------


def make_data(shape_xyz, nc, dtype, kind, seed) -> np.ndarray:
    """A ``(x, y, z, c)`` array. ``kind``: random (full range), smooth (for jpeg), labels (segmentation)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    shape = (*shape_xyz, nc)
    if kind == "smooth":
        x, y, z = np.meshgrid(*(np.arange(n) for n in shape_xyz), indexing="ij")
        out = np.empty(shape, dtype)
        for c in range(nc):
            v = 128 + 60 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) + 20 * np.sin(z / 3.0)
            out[..., c] = np.clip(v + rng.normal(0, 2, shape_xyz), 0, 255).astype(dtype)
        return out
    if kind == "labels":
        # Slabs along z with 1, 2, 3, 17 and "all different" labels per block, so the
        # compressed_segmentation encoder uses bit widths 0, 1, 2, 8 and 16/32 (ids above 2**32 for uint64).
        hi = np.iinfo(dtype).max
        pool = rng.integers(1, hi, 1 << 12, dtype=dtype, endpoint=True)
        out = np.empty(shape, dtype)
        nz = shape_xyz[2]
        for z in range(nz):
            k = (1, 2, 3, 17, 1 << 12)[min(4, z * 5 // max(1, nz))]
            out[:, :, z, :] = rng.choice(pool[:k], (*shape_xyz[:2], nc))
        out[0, 0, 0, 0] = 0  # background appears too
        return out
    if dtype.kind == "f":
        out = rng.normal(0, 1000, shape).astype(dtype)
        flat = out.reshape(-1)
        flat[:5] = [np.nan, -0.0, np.inf, -np.inf, np.finfo(dtype).tiny]
        return out
    info = np.iinfo(dtype)
    # Full range, and no zero: tensorstore skips writing chunks that equal the fill value.
    out = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    out[out == 0] = 1
    return out


# -- comparison -----------------------------------------------------------------------------------------


def assert_same_voxels(actual, expected, what: str) -> None:
    """Identical dtype, shape and bytes (floats bit for bit)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    view = f"u{actual.dtype.itemsize}"
    a = np.ascontiguousarray(actual).view(view)
    e = np.ascontiguousarray(expected).view(view)
    if not np.array_equal(a, e):
        bad = np.argwhere(a != e)
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {a.size} voxels differ; first at (x, y, z, c) {i}: "
            f"got {actual[i]!r}, expected {expected[i]!r}"
        )


def assert_close(actual, expected, what: str, mean_tol=6.0) -> None:
    """A lossy codec's output near the original (catches transposed or interleaving mistakes)."""
    d = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    assert d.mean() < mean_tol, f"{what}: mean abs error {d.mean():.2f} vs the original (>= {mean_tol})"


#: volbridge's file store keeps its flock files here, beside (not among) the volume's keys.
VB_LOCK_DIR = ".volbridge-locks/"


def chunk_files(path: str) -> set[str]:
    """Every stored file below ``path`` except the info and volbridge's lock files, as ``/``-joined paths."""
    out = set()
    for root, _dirs, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
            if rel != "info" and not rel.startswith(VB_LOCK_DIR):
                out.add(rel)
    return out


def expected_names(info: dict, suffix: str = "") -> set[str]:
    """The spec's unsharded chunk names (section 1.2), computed independently of every implementation."""
    names = set()
    for s in info["scales"]:
        off, size, chunk = s.get("voxel_offset", [0, 0, 0]), s["size"], s["chunk_sizes"][0]
        ranges = []
        for o, n, c in zip(off, size, chunk):
            ranges.append([(o + g, o + min(g + c, n)) for g in range(0, n, c)])
        for x0, x1 in ranges[0]:
            for y0, y1 in ranges[1]:
                for z0, z1 in ranges[2]:
                    names.add(f"{s['key']}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}{suffix}")
    return names


# -- readers, each returning (x, y, z, c) ------------------------------------------------------------


def cv_open(path: str, mip: int = 0, **kw) -> CloudVolume:
    return CloudVolume("file://" + path, mip=mip, progress=False, parallel=1, **kw)


def cv_read(path: str, mip: int = 0, bbox=None, **kw) -> np.ndarray:
    cv = cv_open(path, mip, **kw)
    box = cv.bounds if bbox is None else Bbox(*bbox)
    return np.asarray(cv.download(box, mip=mip))


def ts_open(path: str, scale_index: int = 0):
    return ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": path}, "scale_index": scale_index},
        read=True,
        write=True,
    ).result()


def ts_read(path: str, scale_index: int = 0, bbox=None) -> np.ndarray:
    t = ts_open(path, scale_index)
    if bbox is not None:
        (x0, y0, z0), (x1, y1, z1) = bbox
        t = t[x0:x1, y0:y1, z0:z1]
    return np.asarray(t.read().result())


def vb_read(path: str, mip: int = 0, axis_order: str = "zyx", bbox=None) -> np.ndarray:
    """volbridge's read, brought to (x, y, z, c); checks the handle's own layout promises on the way."""
    arr = vb.array(path, mip=mip, axis_order=axis_order)
    nc = arr.num_channels
    if bbox is None:
        out = arr[...]
    else:
        (x0, y0, z0), (x1, y1, z1) = bbox
        ch = (slice(None),) if nc > 1 else ()
        out = arr[(*ch, slice(z0, z1), slice(y0, y1), slice(x0, x1))] if axis_order == "zyx" else arr[x0:x1, y0:y1, z0:z1]
    ndim = 3 + (nc > 1)
    assert out.ndim == ndim, f"volbridge returned {out.ndim} axes for {nc} channel(s), expected {ndim}"
    if axis_order == "zyx":
        assert out.flags.c_contiguous, "zyx reads are C-contiguous"
        out = out.T  # (c, z, y, x) -> (x, y, z, c)
    else:
        assert out.flags.f_contiguous, "xyz reads are F-contiguous"
    return out if nc > 1 else out[..., None]


def vb_bounds_xyz(path: str, mip: int = 0):
    arr = vb.array(path, mip=mip, axis_order="xyz")
    return arr.bounds


# -- writers ------------------------------------------------------------------------------------------


def to_handle_layout(data_xyzc: np.ndarray, axis_order: str) -> np.ndarray:
    nc = data_xyzc.shape[3]
    d = data_xyzc if nc > 1 else data_xyzc[..., 0]
    return d.T if axis_order == "zyx" else d


@dataclass(frozen=True)
class Case:
    id: str
    encoding: str
    dtype: str
    nc: int = 1
    geom: Geometry = NEG
    block: tuple[int, int, int] | None = None  # compressed_segmentation block size, (x, y, z)
    compression: str | None = None  # volbridge's compression= / cloud-volume's compress=
    readers: tuple[str, ...] = ("cv", "ts")
    axis_order: str = "zyx"  # the order volbridge's writing handle uses
    extra: dict = field(default_factory=dict)

    @property
    def layer_type(self) -> str:
        return "segmentation" if self.encoding == "compressed_segmentation" and self.nc == 1 else "image"

    @property
    def kind(self) -> str:
        if self.encoding == "jpeg":
            return "smooth"
        if self.encoding == "compressed_segmentation":
            return "labels"
        return "random"

    @property
    def lossy(self) -> bool:
        return self.encoding == "jpeg"

    def __str__(self) -> str:
        return self.id


def vb_create(path: str, case: Case, num_scales: int = 2):
    g = case.geom
    o = (lambda t: tuple(t)[::-1]) if case.axis_order == "zyx" else (lambda t: tuple(t))
    kw = {}
    if case.block is not None:
        kw["compressed_segmentation_block_size"] = o(case.block)
    return vb.create(
        path,
        bounds=(o(g.offset), o(g.stop)),
        dtype=case.dtype,
        chunk_shape=o(g.chunk),
        resolution=o(RESOLUTION_XYZ),
        encoding=case.encoding,
        compression=case.compression,
        layer_type=case.layer_type,
        num_channels=case.nc,
        num_scales=num_scales,
        factor=o(FACTOR_XYZ),
        axis_order=case.axis_order,
        **kw,
    )


def vb_write_volume(path: str, case: Case, seed: int = 1, num_scales: int = 2) -> list[np.ndarray]:
    """Create with volbridge and fill every scale; returns the (x, y, z, c) data per scale."""
    vol = vb_create(path, case, num_scales)
    datas = []
    for mip in range(num_scales):
        h = vol.mip(mip)
        shape = tuple(json.load(open(os.path.join(path, "info")))["scales"][mip]["size"])
        data = make_data(shape, case.nc, case.dtype, case.kind, seed + mip)
        h[...] = to_handle_layout(data, case.axis_order)
        datas.append(data)
    return datas


# -- 1. volbridge writes, the peers read ---------------------------------------------------------------

VB_CASES = [
    Case("raw-uint8", "raw", "uint8"),
    Case("raw-int8-xyz", "raw", "int8", axis_order="xyz"),
    Case("raw-uint16", "raw", "uint16", geom=POS),
    Case("raw-int16-tiny", "raw", "int16", geom=TINY),
    Case("raw-uint32-xyz", "raw", "uint32", axis_order="xyz"),
    Case("raw-int32", "raw", "int32"),
    Case("raw-uint64", "raw", "uint64", geom=POS),
    Case("raw-float32", "raw", "float32"),
    Case("raw-float32-2ch-xyz", "raw", "float32", nc=2, axis_order="xyz"),
    Case("raw-uint8-3ch", "raw", "uint8", nc=3, geom=POS),
    Case("raw-uint16-4ch-tiny", "raw", "uint16", nc=4, geom=TINY),
    Case("raw-float64", "raw", "float64", readers=("cv",)),  # not in tensorstore's precomputed dtypes
    Case("raw-int64-xyz", "raw", "int64", geom=POS, readers=("cv",), axis_order="xyz"),
    Case("raw-gzip-uint16", "raw", "uint16", compression="gzip", readers=("cv",)),
    Case("raw-zstd-int32", "raw", "int32", geom=POS, compression="zstd", readers=("cv",)),
    Case("raw-br-uint8", "raw", "uint8", geom=TINY, compression="br", readers=("cv",)),
    Case("raw-gzip-float32-2ch-xyz", "raw", "float32", nc=2, compression="gzip", readers=("cv",), axis_order="xyz"),
    Case("jpeg-uint8", "jpeg", "uint8"),
    Case("jpeg-uint8-xyz-pos", "jpeg", "uint8", geom=POS, axis_order="xyz"),
    Case("jpeg-uint8-3ch", "jpeg", "uint8", nc=3, readers=("ts",)),
    Case("png-uint8", "png", "uint8"),  # NEG's x edge chunks are 2 voxels wide
    Case("png-uint8-tiny", "png", "uint8", geom=TINY),
    Case("png-uint8-pos", "png", "uint8", geom=POS),
    Case("png-uint16", "png", "uint16", readers=("ts",)),
    Case("png-uint8-2ch", "png", "uint8", nc=2, readers=("ts",)),
    Case("png-uint8-3ch-xyz", "png", "uint8", nc=3, readers=("ts",), axis_order="xyz"),
    Case("png-uint16-4ch", "png", "uint16", nc=4, geom=POS, readers=("ts",)),
    Case("cseg-uint32-4x8x2", "compressed_segmentation", "uint32", block=(4, 8, 2)),
    Case("cseg-uint64-8x8x8", "compressed_segmentation", "uint64", block=(8, 8, 8)),
    Case("cseg-uint64-3x5x7-xyz", "compressed_segmentation", "uint64", block=(3, 5, 7), axis_order="xyz"),
    Case("cseg-uint32-16x2x4-pos", "compressed_segmentation", "uint32", geom=POS, block=(16, 2, 4)),
    Case("cseg-uint64-tiny", "compressed_segmentation", "uint64", geom=TINY, block=(4, 4, 4)),
    Case("cseg-uint32-2ch-image", "compressed_segmentation", "uint32", nc=2, block=(4, 4, 2)),
    Case("cseg-gzip-uint64", "compressed_segmentation", "uint64", block=(8, 4, 2), compression="gzip", readers=("cv",)),
]


@pytest.fixture(scope="module")
def vb_volume(tmp_path_factory):
    """Volumes written by volbridge, made once per case and shared by the reader tests."""
    made: dict[str, tuple[str, list[np.ndarray]]] = {}

    def get(case: Case):
        if case.id not in made:
            path = str(tmp_path_factory.mktemp("vb") / case.id)
            made[case.id] = (path, vb_write_volume(path, case))
        return made[case.id]

    return get


def _reference(case: Case, data: np.ndarray, path: str, mip: int, peer: np.ndarray, who: str) -> np.ndarray:
    """What ``who``'s read must equal: the data written, or for jpeg volbridge's decode of the same bytes."""
    if not case.lossy:
        return data
    ours = vb_read(path, mip)
    assert_close(peer, data, f"{case.id} mip {mip}: {who}'s decode vs the original")
    assert_close(ours, data, f"{case.id} mip {mip}: volbridge's decode vs the original")
    return ours


def _sub_box(info: dict, mip: int):
    """A box crossing chunk borders, not aligned to them, inside the bounds."""
    s = info["scales"][mip]
    off, size, chunk = s.get("voxel_offset", [0, 0, 0]), s["size"], s["chunk_sizes"][0]
    lo = tuple(o + min(n // 3, c // 2 + 1) for o, n, c in zip(off, size, chunk))
    hi = tuple(min(o + n, a + c + 3) for o, n, c, a in zip(off, size, chunk, lo))
    return lo, hi


@pytest.mark.parametrize("case", [c for c in VB_CASES if "cv" in c.readers], ids=str)
def test_volbridge_written_read_by_cloudvolume(vb_volume, case):
    path, datas = vb_volume(case)
    info = json.load(open(os.path.join(path, "info")))
    for mip, data in enumerate(datas):
        cv = cv_open(path, mip)
        assert tuple(cv.bounds.minpt) == tuple(info["scales"][mip]["voxel_offset"])
        assert tuple(cv.bounds.size3()) == tuple(info["scales"][mip]["size"])
        assert cv.num_channels == case.nc and np.dtype(cv.dtype) == np.dtype(case.dtype)
        got = cv_read(path, mip)
        ref = _reference(case, data, path, mip, got, "cloud-volume")
        assert_same_voxels(got, ref, f"{case.id} mip {mip}: cloud-volume reading volbridge's volume")
        box = _sub_box(info, mip)
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(*box, info["scales"][mip]["voxel_offset"]))
        assert_same_voxels(cv_read(path, mip, box), ref[sl], f"{case.id} mip {mip}: cloud-volume cutout {box}")


@pytest.mark.parametrize("case", [c for c in VB_CASES if "ts" in c.readers], ids=str)
def test_volbridge_written_read_by_tensorstore(vb_volume, case):
    path, datas = vb_volume(case)
    info = json.load(open(os.path.join(path, "info")))
    for mip, data in enumerate(datas):
        t = ts_open(path, mip)
        s = info["scales"][mip]
        off = tuple(s["voxel_offset"])
        assert tuple(t.domain.inclusive_min) == (*off, 0)
        assert tuple(t.domain.exclusive_max) == (*(o + n for o, n in zip(off, s["size"])), case.nc)
        assert t.dtype.numpy_dtype == np.dtype(case.dtype)
        got = ts_read(path, mip)
        ref = _reference(case, data, path, mip, got, "tensorstore")
        assert_same_voxels(got, ref, f"{case.id} mip {mip}: tensorstore reading volbridge's volume")
        box = _sub_box(info, mip)
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(*box, off))
        assert_same_voxels(ts_read(path, mip, box), ref[sl], f"{case.id} mip {mip}: tensorstore cutout {box}")


@pytest.mark.parametrize("nc,dtype", [(1, "uint8"), (2, "uint8"), (1, "uint16")])
def test_volbridge_png_noisy_narrow_edge_chunks(tmp_path, nc, dtype):
    """Truncated edge chunks 1 voxel wide in x are png images 1 pixel wide; noisy data must still encode."""
    path = str(tmp_path / "v")
    g = Geometry(offset=(-16, 0, 0), size=(17, 16, 8), chunk=(16, 16, 8))  # x edge chunk: [0, 1)
    case = Case("png-edge", "png", dtype, nc=nc, geom=g)
    data = vb_write_volume(path, case, seed=4, num_scales=1)[0]
    assert_same_voxels(vb_read(path), data, "volbridge reading its own png volume")
    assert_same_voxels(ts_read(path), data, "tensorstore reading volbridge's png volume")
    if nc == 1 and dtype == "uint8":  # cloud-volume's png reader: single-channel uint8 only
        assert_same_voxels(cv_read(path), data, "cloud-volume reading volbridge's png volume")


# -- 2a. cloud-volume writes, volbridge reads -------------------------------------------------------


def cv_write_volume(path: str, case: Case, seed: int = 7) -> list[np.ndarray]:
    g = case.geom
    info = CloudVolume.create_new_info(
        num_channels=case.nc,
        layer_type=case.layer_type,
        data_type=case.dtype,
        encoding=case.encoding,
        resolution=list(RESOLUTION_XYZ),
        voxel_offset=list(g.offset),
        volume_size=list(g.size),
        chunk_size=list(g.chunk),
        compressed_segmentation_block_size=list(case.block or (8, 8, 8)),
    )
    compress = case.extra.get("compress", False)
    cv = CloudVolume("file://" + path, info=info, compress=compress, progress=False, parallel=1)
    cv.add_scale(FACTOR_XYZ, chunk_size=list(MIP1_CHUNK))  # a chunk shape of its own at mip 1
    cv.commit_info()
    datas = []
    for mip in range(2):
        c = CloudVolume("file://" + path, mip=mip, compress=compress, progress=False, parallel=1)
        data = make_data(tuple(c.bounds.size3()), case.nc, case.dtype, case.kind, seed + mip)
        c[c.bounds] = data
        datas.append(data)
    return datas


CV_CASES = [
    Case("raw-uint8", "raw", "uint8", extra={"compress": False}),
    Case("raw-uint16-gzip", "raw", "uint16", extra={"compress": "gzip"}),
    Case("raw-float32-default-compress", "raw", "float32", extra={"compress": None}),
    Case("raw-int32-3ch", "raw", "int32", nc=3, geom=POS, extra={"compress": False}),
    Case("raw-uint64-tiny", "raw", "uint64", geom=TINY, extra={"compress": False}),
    Case("raw-int16-2ch-gzip", "raw", "int16", nc=2, extra={"compress": "gzip"}),
    Case("raw-uint16-br", "raw", "uint16", geom=POS, extra={"compress": "br"}),
    Case("raw-int32-zstd", "raw", "int32", extra={"compress": "zstd"}),
    Case("raw-uint16-xz", "raw", "uint16", geom=POS, extra={"compress": "xz"}),
    Case("raw-float32-bz2", "raw", "float32", geom=TINY, extra={"compress": "bz2"}),
    Case("raw-float64", "raw", "float64", extra={"compress": False}),
    Case("raw-int64-2ch", "raw", "int64", nc=2, geom=POS, extra={"compress": False}),
    Case("jpeg-uint8", "jpeg", "uint8"),
    Case("jpeg-uint8-pos", "jpeg", "uint8", geom=POS),
    # cloud-volume mis-decodes its own multi-channel jpeg: tensorstore's decode is the reference.
    Case("jpeg-uint8-3ch", "jpeg", "uint8", nc=3, extra={"ref": "ts"}),
    Case("png-uint8", "png", "uint8"),
    Case("png-uint8-gzip", "png", "uint8", geom=POS, extra={"compress": "gzip"}),
    Case("png-uint8-3ch", "png", "uint8", nc=3, geom=TINY),
    Case("cseg-uint32-4x8x2", "compressed_segmentation", "uint32", block=(4, 8, 2), extra={"compress": False}),
    Case("cseg-uint64-8x8x8-gzip", "compressed_segmentation", "uint64", block=(8, 8, 8), extra={"compress": "gzip"}),
    Case("cseg-uint64-3x5x7", "compressed_segmentation", "uint64", block=(3, 5, 7), geom=POS, extra={"compress": False}),
    Case("cseg-uint32-tiny", "compressed_segmentation", "uint32", block=(8, 2, 8), geom=TINY, extra={"compress": None}),
]


@pytest.mark.parametrize("case", CV_CASES, ids=str)
def test_cloudvolume_written_read_by_volbridge(tmp_path, case):
    path = str(tmp_path / "cv")
    datas = cv_write_volume(path, case)
    info = json.load(open(os.path.join(path, "info")))
    for mip, data in enumerate(datas):
        s = info["scales"][mip]
        off = tuple(s["voxel_offset"])
        bounds = (off, tuple(o + n for o, n in zip(off, s["size"])))
        assert vb_bounds_xyz(path, mip) == bounds
        assert vb.array(path, mip=mip).bounds == (bounds[0][::-1], bounds[1][::-1])
        # The writer's own decode; for lossless encodings that is the data written.
        theirs = data
        if case.lossy:
            theirs = ts_read(path, mip) if case.extra.get("ref") == "ts" else cv_read(path, mip)
            assert_close(theirs, data, f"{case.id} mip {mip}: the peer's decode of cloud-volume's jpeg")
        for order in ("zyx", "xyz"):
            assert_same_voxels(vb_read(path, mip, order), theirs, f"{case.id} mip {mip} ({order}): volbridge reading cloud-volume's volume")
        box = _sub_box(info, mip)
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(*box, off))
        assert_same_voxels(vb_read(path, mip, "zyx", box), theirs[sl], f"{case.id} mip {mip}: volbridge cutout {box}")


# -- 2b. tensorstore writes, volbridge reads --------------------------------------------------------


def ts_scale_metadata(case: Case, geom: Geometry, resolution, **over) -> dict:
    m = {
        "size": list(geom.size),
        "voxel_offset": list(geom.offset),
        "resolution": list(resolution),
        "chunk_size": list(geom.chunk),
        "encoding": case.encoding,
    }
    if case.block is not None:
        m["compressed_segmentation_block_size"] = list(case.block)
    if case.encoding == "jpeg":
        m["jpeg_quality"] = case.extra.get("jpeg_quality", 75)
    m.update(over)
    return m


def ts_write_volume(path: str, case: Case, seed: int = 11) -> list[np.ndarray]:
    g = case.geom
    kv = {"driver": "file", "path": path}
    multiscale = {"type": case.layer_type, "data_type": case.dtype, "num_channels": case.nc}
    # mip 1: x and y halved, offset floored and end ceiled.
    lo1 = [o // f for o, f in zip(g.offset, FACTOR_XYZ)]
    hi1 = [-(-e // f) for e, f in zip(g.stop, FACTOR_XYZ)]
    geom1 = Geometry(tuple(lo1), tuple(b - a for a, b in zip(lo1, hi1)), MIP1_CHUNK)
    res1 = [r * f for r, f in zip(RESOLUTION_XYZ, FACTOR_XYZ)]
    keys = case.extra.get("keys", (None, None))
    datas = []
    for geom, res, key in ((g, RESOLUTION_XYZ, keys[0]), (geom1, res1, keys[1])):
        t = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": kv,
                "multiscale_metadata": multiscale,
                "scale_metadata": ts_scale_metadata(case, geom, res, **({"key": key} if key else {})),
            },
            create=True,
            open=True,
        ).result()
        data = make_data(geom.size, case.nc, case.dtype, case.kind, seed + len(datas))
        t.write(data).result()
        datas.append(data)
    return datas


TS_CASES = [
    Case("raw-int8", "raw", "int8"),
    Case("raw-int16-pos", "raw", "int16", geom=POS),
    Case("raw-uint32", "raw", "uint32"),
    Case("raw-float32", "raw", "float32", geom=POS),
    Case("raw-uint64-tiny", "raw", "uint64", geom=TINY),
    Case("raw-uint16-2ch", "raw", "uint16", nc=2),
    Case("raw-int32-5ch-tiny", "raw", "int32", nc=5, geom=TINY),
    Case("raw-uint8-nested-keys", "raw", "uint8", geom=POS, extra={"keys": ("scales/full", "scales/half")}),
    Case("jpeg-uint8", "jpeg", "uint8", extra={"jpeg_quality": 90}),
    Case("jpeg-uint8-3ch", "jpeg", "uint8", nc=3, geom=POS),
    Case("png-uint8", "png", "uint8"),
    Case("png-uint16", "png", "uint16", geom=POS),
    Case("png-uint8-2ch-tiny", "png", "uint8", nc=2, geom=TINY),
    Case("png-uint8-4ch", "png", "uint8", nc=4),
    Case("cseg-uint32-4x8x2", "compressed_segmentation", "uint32", block=(4, 8, 2)),
    Case("cseg-uint64-8x8x8", "compressed_segmentation", "uint64", block=(8, 8, 8)),
    Case("cseg-uint64-3x5x7-pos", "compressed_segmentation", "uint64", block=(3, 5, 7), geom=POS),
    Case("cseg-uint32-2ch-tiny", "compressed_segmentation", "uint32", nc=2, block=(2, 4, 8), geom=TINY),
]


@pytest.mark.parametrize("case", TS_CASES, ids=str)
def test_tensorstore_written_read_by_volbridge(tmp_path, case):
    path = str(tmp_path / "ts")
    datas = ts_write_volume(path, case)
    info = json.load(open(os.path.join(path, "info")))
    assert len(info["scales"]) == 2
    if "keys" in case.extra:
        assert [s["key"] for s in info["scales"]] == list(case.extra["keys"])
    for mip, data in enumerate(datas):
        s = info["scales"][mip]
        off = tuple(s["voxel_offset"])
        bounds = (off, tuple(o + n for o, n in zip(off, s["size"])))
        assert vb_bounds_xyz(path, mip) == bounds
        theirs = ts_read(path, mip) if case.lossy else data
        if case.lossy:
            assert_close(theirs, data, f"{case.id} mip {mip}: tensorstore's own decode")
        for order in ("zyx", "xyz"):
            assert_same_voxels(vb_read(path, mip, order), theirs, f"{case.id} mip {mip} ({order}): volbridge reading tensorstore's volume")
        box = _sub_box(info, mip)
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(*box, off))
        assert_same_voxels(vb_read(path, mip, "xyz", box), theirs[sl], f"{case.id} mip {mip}: volbridge cutout {box}")


# -- 3. chunk file names --------------------------------------------------------------------------------

NAME_CASES = [
    Case("raw-uint8-neg", "raw", "uint8"),
    Case("raw-uint16-3ch-pos", "raw", "uint16", nc=3, geom=POS),
    Case("raw-float32-tiny", "raw", "float32", geom=TINY),
    Case("jpeg-uint8-neg", "jpeg", "uint8"),
    Case("png-uint8-pos", "png", "uint8", geom=POS),
    Case("cseg-uint64-neg", "compressed_segmentation", "uint64", block=(4, 8, 2)),
    Case("cseg-uint32-tiny", "compressed_segmentation", "uint32", block=(8, 8, 8), geom=TINY),
]


@pytest.mark.parametrize("case", NAME_CASES, ids=str)
def test_chunk_names_match_peers(tmp_path, case):
    """For one info, volbridge, cloud-volume and tensorstore write the same files; raw ones byte for byte."""
    vb_path, cv_path, ts_path = (str(tmp_path / n) for n in ("vb", "cv", "ts"))
    datas = vb_write_volume(vb_path, case)
    info = json.load(open(os.path.join(vb_path, "info")))
    for p in (cv_path, ts_path):
        os.makedirs(p)
        shutil.copy(os.path.join(vb_path, "info"), os.path.join(p, "info"))
    for mip, data in enumerate(datas):
        c = CloudVolume("file://" + cv_path, mip=mip, compress=False, progress=False, parallel=1)
        c[c.bounds] = data
        ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": ts_path}, "scale_index": mip},
                write=True).result().write(data).result()

    want = expected_names(info)
    got_vb, got_cv, got_ts = chunk_files(vb_path), chunk_files(cv_path), chunk_files(ts_path)
    assert got_vb == want, f"volbridge: missing {sorted(want - got_vb)[:5]}, extra {sorted(got_vb - want)[:5]}"
    assert got_cv == want, f"cloud-volume: missing {sorted(want - got_cv)[:5]}, extra {sorted(got_cv - want)[:5]}"
    assert got_ts == want, f"tensorstore: missing {sorted(want - got_ts)[:5]}, extra {sorted(got_ts - want)[:5]}"
    if case.geom.offset[0] < 0:
        assert any(n.split("/")[1].startswith("-") for n in want)  # the case really has negative names
    if case.encoding == "raw":  # raw has one valid byte string per chunk
        for name in sorted(want):
            b = open(os.path.join(vb_path, name), "rb").read()
            assert b == open(os.path.join(cv_path, name), "rb").read(), f"{name}: volbridge's bytes differ from cloud-volume's"
            assert b == open(os.path.join(ts_path, name), "rb").read(), f"{name}: volbridge's bytes differ from tensorstore's"


SUFFIX = {"gzip": ".gz", "zstd": ".zstd", "br": ".br"}
DECOMPRESS = {
    "gzip": gzip.decompress,
    "zstd": lambda b: __import__("zstandard").ZstdDecompressor().decompress(b),
    "br": lambda b: __import__("brotli").decompress(b),
}


@pytest.mark.parametrize(
    "case",
    [
        Case("raw-uint16-neg-gzip", "raw", "uint16", compression="gzip"),
        Case("cseg-uint64-pos-gzip", "compressed_segmentation", "uint64", block=(4, 4, 4), geom=POS, compression="gzip"),
        Case("raw-int32-tiny-zstd", "raw", "int32", geom=TINY, compression="zstd"),
        Case("cseg-uint32-neg-br", "compressed_segmentation", "uint32", block=(8, 8, 8), compression="br"),
    ],
    ids=str,
)
def test_compressed_chunk_names_match_cloudvolume(tmp_path, case):
    """compression=X stores ``<name>.<ext>`` exactly where cloud-volume's compress=X does."""
    vb_path, cv_path = str(tmp_path / "vb"), str(tmp_path / "cv")
    datas = vb_write_volume(vb_path, case)
    info = json.load(open(os.path.join(vb_path, "info")))
    os.makedirs(cv_path)
    shutil.copy(os.path.join(vb_path, "info"), os.path.join(cv_path, "info"))
    for mip, data in enumerate(datas):
        c = CloudVolume("file://" + cv_path, mip=mip, compress=case.compression, progress=False, parallel=1)
        c[c.bounds] = data
    want = expected_names(info, SUFFIX[case.compression])
    assert chunk_files(vb_path) == want
    assert chunk_files(cv_path) == want
    if case.encoding == "raw":
        unpack = DECOMPRESS[case.compression]
        for name in sorted(want):
            a = unpack(open(os.path.join(vb_path, name), "rb").read())
            b = unpack(open(os.path.join(cv_path, name), "rb").read())
            assert a == b, f"{name}: decompressed bytes differ"
    for mip, data in enumerate(datas):  # and each reads the other's
        what = f"{case.id} mip {mip}"
        assert_same_voxels(vb_read(cv_path, mip), data, f"{what}: volbridge reading cloud-volume's {case.compression} chunks")
        assert_same_voxels(cv_read(vb_path, mip), data, f"{what}: cloud-volume reading volbridge's {case.compression} chunks")


@pytest.mark.parametrize("resolution", [(4, 4, 40), (4.5, 4.5, 40), (3.3, 0.1, 0.001), (8.0, 8.0, 45.0)])
def test_default_scale_key_matches_tensorstore(tmp_path, resolution):
    """The scale directory volbridge names by default is tensorstore's default for the same resolution."""
    ts_path = str(tmp_path / "ts")
    ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": ts_path},
            "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
            "scale_metadata": {"size": [5, 5, 5], "resolution": list(resolution), "chunk_size": [4, 4, 4], "encoding": "raw"},
        },
        create=True,
    ).result()
    want = json.load(open(os.path.join(ts_path, "info")))["scales"][0]["key"]
    v = vb.create(str(tmp_path / "vb"), shape=(5, 5, 5), resolution=resolution, axis_order="xyz")
    assert v.scales[0].key == want
    assert json.load(open(str(tmp_path / "vb" / "info")))["scales"][0]["key"] == want


# -- 4. mixed edits and sparse volumes -------------------------------------------------------------------


def _patch_box(geom: Geometry):
    """An unaligned box, partly covering several chunks and fully covering at least one."""
    lo = tuple(o + c // 2 for o, c in zip(geom.offset, geom.chunk))
    hi = tuple(min(o + n, a + 2 * c) for o, n, c, a in zip(geom.offset, geom.size, geom.chunk, lo))
    return lo, hi


@pytest.mark.parametrize(
    "case",
    [
        Case("raw-uint16-gzip", "raw", "uint16", extra={"compress": "gzip"}),
        Case("cseg-uint64-gzip", "compressed_segmentation", "uint64", block=(4, 8, 2), extra={"compress": "gzip"}),
        Case("png-uint8", "png", "uint8", extra={"compress": False}),
        Case("raw-int32-xz", "raw", "int32", extra={"compress": "xz"}),
        Case("raw-uint8-br", "raw", "uint8", extra={"compress": "br"}),
    ],
    ids=str,
)
def test_volbridge_updates_cloudvolume_volume(tmp_path, case):
    """volbridge's read-modify-write over cloud-volume's chunks (``.gz`` included) reads back right in both."""
    path = str(tmp_path / "cv")
    data = cv_write_volume(path, case)[0]
    lo, hi = _patch_box(case.geom)
    patch = make_data(tuple(b - a for a, b in zip(lo, hi)), case.nc, case.dtype, case.kind, 99)
    h = vb.array(path, mode="r+", axis_order="xyz")
    h[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = patch[..., 0]
    want = data.copy()
    want[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, case.geom.offset))] = patch
    assert_same_voxels(vb_read(path), want, f"{case.id}: volbridge after its update")
    assert_same_voxels(cv_read(path), want, f"{case.id}: cloud-volume after volbridge's update")
    # Each chunk is stored under one name: no stale compressed copy beside a rewritten plain one.
    names = chunk_files(path)
    plain = {n.rsplit(".", 1)[0] if "." in n.rsplit("/", 1)[-1] else n for n in names}
    assert len(plain) == len(names), f"chunks stored under two names: {sorted(names)[:8]}"


@pytest.mark.parametrize(
    "case",
    [
        Case("raw-float32-2ch", "raw", "float32", nc=2, geom=POS),
        Case("cseg-uint32", "compressed_segmentation", "uint32", block=(4, 8, 2)),
        Case("png-uint16", "png", "uint16"),
    ],
    ids=str,
)
def test_volbridge_and_tensorstore_update_each_other(tmp_path, case):
    """tensorstore rewrites part of volbridge's volume, then volbridge part of the result; all agree."""
    path = str(tmp_path / "v")
    data = vb_write_volume(path, case, num_scales=1)[0]
    g = case.geom
    want = data.copy()

    lo, hi = _patch_box(g)
    p1 = make_data(tuple(b - a for a, b in zip(lo, hi)), case.nc, case.dtype, case.kind, 5)
    ts_open(path)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].write(p1).result()
    want[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, g.offset))] = p1
    assert_same_voxels(vb_read(path), want, f"{case.id}: volbridge after tensorstore's update")

    lo2 = tuple(o + 1 for o in g.offset)
    hi2 = tuple(a + c + 1 for a, c in zip(lo2, g.chunk))
    p2 = make_data(tuple(b - a for a, b in zip(lo2, hi2)), case.nc, case.dtype, case.kind, 6)
    h = vb.array(path, mode="r+")
    ch = (slice(None),) if case.nc > 1 else ()
    h[(*ch, slice(lo2[2], hi2[2]), slice(lo2[1], hi2[1]), slice(lo2[0], hi2[0]))] = to_handle_layout(p2, "zyx")
    want[tuple(slice(a - o, b - o) for a, b, o in zip(lo2, hi2, g.offset))] = p2
    assert_same_voxels(ts_read(path), want, f"{case.id}: tensorstore after volbridge's update")
    assert_same_voxels(vb_read(path, axis_order="xyz"), want, f"{case.id}: volbridge after its update")


def test_sparse_volbridge_volume_reads_as_zeros_in_peers(tmp_path):
    """Chunks volbridge never wrote are absent; the peers read zeros there, and the written voxels exactly."""
    case = Case("raw-int16", "raw", "int16")
    path = str(tmp_path / "v")
    vb_create(path, case, num_scales=1)
    g = case.geom
    lo, hi = _patch_box(g)
    patch = make_data(tuple(b - a for a, b in zip(lo, hi)), 1, "int16", "random", 3)
    h = vb.array(path, mode="r+", axis_order="xyz")
    h[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = patch[..., 0]
    want = np.zeros((*g.size, 1), np.int16)
    want[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, g.offset))] = patch
    assert len(chunk_files(path)) < len(expected_names(json.load(open(os.path.join(path, "info")))))
    assert_same_voxels(cv_read(path, fill_missing=True), want, "cloud-volume reading a sparse volbridge volume")
    assert_same_voxels(ts_read(path), want, "tensorstore reading a sparse volbridge volume")
    # A box sticking out of the bounds on every side: zeros outside, as cloud-volume's unbounded read.
    box = (tuple(o - 5 for o in g.offset), tuple(e + 3 for e in g.stop))
    theirs = cv_read(path, bbox=box, bounded=False, fill_missing=True)
    assert_same_voxels(vb_read(path, bbox=box), theirs, "volbridge vs cloud-volume on a box outside the bounds")


def test_sparse_tensorstore_volume_reads_as_zeros_in_volbridge(tmp_path):
    case = Case("cseg-uint64", "compressed_segmentation", "uint64", block=(8, 8, 8))
    path = str(tmp_path / "ts")
    g = case.geom
    t = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": path},
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
            "scale_metadata": ts_scale_metadata(case, g, RESOLUTION_XYZ),
        },
        create=True,
    ).result()
    lo, hi = _patch_box(g)
    patch = make_data(tuple(b - a for a, b in zip(lo, hi)), 1, "uint64", "labels", 4)
    t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].write(patch).result()
    want = np.zeros((*g.size, 1), np.uint64)
    want[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, g.offset))] = patch
    assert len(chunk_files(path)) < len(expected_names(json.load(open(os.path.join(path, "info")))))
    assert_same_voxels(vb_read(path), want, "volbridge reading a sparse tensorstore volume")
    assert_same_voxels(vb_read(path, axis_order="xyz"), want, "volbridge (xyz) reading a sparse tensorstore volume")
