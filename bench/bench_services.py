#!/usr/bin/env python
"""Throughput of volbridge's downsample and mesh services against bare peers (issue 7's targets).

One run, the same data for every peer:

* **Downsampling.** An EM-like uint8 image (``bench_precomputed.em_like``: smoothed noise with
  cell-like structure and dark membranes), 256 x 1024 x 1024 (z, y, x), written once as a
  neuroglancer precomputed volume with ``raw`` encoding, resolution (40, 4, 4) nm and 5 scales
  (2x2x1 each), for each chunk layout in ``--chunks`` (default 64^3 and 16x128x128). The chunks
  are in the page cache (just written, then ``os.sync()``). Timed:

  - ``volbridge service``: ``downsample(a, mips=[1], resume=False, executor="processes")`` (read
    mip 0, mean 2x2x1, write mip 1; 2 worker processes, as ``volbridge downsample`` runs) and
    ``downsample(a, resume=False, executor="processes")`` (the whole pyramid, mip 1..4); the
    fork server and its worker processes are started once, before the timed runs (a small
    volume is downsampled first; workers stay for the next job while it comes within 30 s). The
    levels written are removed before each repetition (untimed), so each builds them anew;
  - ``volbridge service over an existing mip 1``: the same call again right after, replacing
    every chunk file of mip 1 (no target: re-running a downsample);
  - ``volbridge service on threads``: mip 0->1 with ``executor=None`` (local threads, the
    library call's default);
  - ``volbridge I/O only``: the same volume read whole (mip 0) and mip 1 written whole, no kernel:
    what the service would cost with a free kernel;
  - ``volbridge kernel``: ``downsample_array`` alone, in memory, one thread, on blocks the size of
    one service unit (the source of one 64^3 destination chunk);
  - ``numpy reference``: a plain numpy 2x2 mean in memory, one thread (four strided views summed
    into uint16, rounded half up), chained for the pyramid;
  - ``tinybrain``: ``tinybrain.downsample_with_averaging`` in memory (one thread), if installed.

  GB/s are 10^9 bytes of *mip-0 source* voxels per second, for mip 0->1 and for the full pyramid
  alike. volbridge's mip 1 and pyramid are checked voxel for voxel against the numpy reference
  (a fast but wrong answer fails the run); tinybrain rounds differently (its differing voxels and
  largest difference are recorded, not failed). Target: the service >= 1 GB/s.

* **Meshing.** A segmentation of touching cells (``volbridge.demo.VoronoiCells``: warped Voronoi
  cells of ~700 nm at (40, 8, 8) nm voxels), 128 x 512 x 512 uint32, written as a precomputed
  segmentation (``raw``, 64^3 chunks, page cache). Timed:

  - ``zmesh``: ``zmesh.Mesher((8, 8, 40)).mesh(labels_xyz)`` on the whole in-memory volume, then
    ``mesher.get(id)`` for every id (no simplification, no normals);
  - ``volbridge mesh``: ``mesh(a, smoothing=0, executor="processes")`` (2 worker processes, as
    ``volbridge mesh`` runs) from the precomputed volume, I/O included (the
    fair comparison: raw marching cubes both), and ``smoothing=40`` (the default).

  Voxels/s are source voxels per second. volbridge's smoothing=0 meshes must match zmesh's: the
  same ids, and for each id the same face and vertex counts, total area within 1e-4. Target:
  volbridge (smoothing=0) >= 0.8x bare zmesh.

Each measurement is repeated ``--repeat`` times with the peers interleaved, best kept (the slow
volbridge smoothing=40 run ``--repeat-slow`` times). Wall and CPU seconds of this process are
recorded. Results: a markdown table on stdout and JSON in ``bench/results/services.json``.

Usage::

    python bench/bench_services.py            # full sizes, about 2.5 minutes on 2 cores
    python bench/bench_services.py --quick    # 128x512x512 image, 64x256x256 labels, < 1 minute
    python bench/bench_services.py --ops vb_ds01 --repeat 5   # one row, e.g. under py-spy
"""

from __future__ import annotations

import argparse
import gc
import os

# BLAS is only used to generate the data; OpenBLAS's helper threads busy-wait after each call and
# would steal CPU from the code under test on a small machine. Set before numpy is imported.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_precomputed import em_like  # noqa: E402
import common  # noqa: E402  (bench/common.py)

DS_TARGET_GBS = 1.0
MESH_TARGET_RATIO = 0.8
RESOLUTION_IMG = (40, 4, 4)  # z, y, x nm
NUM_SCALES = 5
OPS = ("vb_ds01", "vb_ds01r", "vb_ds01t", "vb_io", "vb_kernel", "np_ds01", "tb_ds01", "vb_pyr", "np_pyr", "tb_pyr",
       "zmesh", "vb_mesh0", "vb_mesh40")


class WrongResult(AssertionError):
    pass


def settle() -> None:
    gc.collect()
    os.sync()


def clear_levels(a, mips) -> None:
    """Remove the chunks of scales ``mips`` of precomputed volume ``a`` (their directories), so
    that the next downsample builds them anew, as building a pyramid does."""
    root = Path(a.volume.store.url.removeprefix("file://"))
    for k in mips:
        shutil.rmtree(root / a.volume.meta.scales[k].key, ignore_errors=True)
    os.sync()


def cpu_seconds() -> float:
    """CPU of this process and of its finished children. The services' worker processes are
    children of multiprocessing's fork server, not of this process: their CPU is not counted
    (the rows that run in worker processes show the parent's share only)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn):
    t, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - t, cpu_seconds() - c


# -- downsampling peers -------------------------------------------------------------------------
def np_mean_yx(a: np.ndarray) -> np.ndarray:
    """Reference: mean of 2x2 blocks over (y, x) of a (z, y, x) uint8 array, rounded half up."""
    s = a[:, 0::2, 0::2].astype(np.uint16)
    s += a[:, 1::2, 0::2]
    s += a[:, 0::2, 1::2]
    s += a[:, 1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def np_pyramid(a: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        a = np_mean_yx(a)
        out.append(a)
    return out


def tb_pyramid(a_zyx: np.ndarray, n: int) -> list[np.ndarray]:
    import tinybrain

    # tinybrain wants (x, y, z); a_zyx.T is an F-contiguous view, no copy. Returns (x, y, z[, c]).
    return tinybrain.downsample_with_averaging(a_zyx.T, (2, 2, 1), num_mips=n)


def tb_as_zyx(m: np.ndarray) -> np.ndarray:
    return (m[..., 0] if m.ndim == 4 else m).T


def kernel_blocks(vol: np.ndarray, limit_bytes: int) -> tuple[list[np.ndarray], int]:
    """(x, y, z) source blocks of one service unit each (a 64^3 destination chunk at 2x2x1:
    128 x 128 x 64 source voxels), F-contiguous like a volume read returns them, up to
    ``limit_bytes`` of source."""
    nz, ny, nx = vol.shape
    blocks, total = [], 0
    for z in range(0, nz, 64):
        for y in range(0, ny, 128):
            for x in range(0, nx, 128):
                b = np.asfortranarray(vol[z:z + 64, y:y + 128, x:x + 128].T)
                blocks.append(b)
                total += b.nbytes
                if total >= limit_bytes:
                    return blocks, total
    return blocks, total


# -- meshing peers ------------------------------------------------------------------------------
def zmesh_all(labels_zyx: np.ndarray, res_zyx) -> dict:
    import zmesh

    mesher = zmesh.Mesher(tuple(float(r) for r in res_zyx[::-1]))
    mesher.mesh(labels_zyx.T)  # (x, y, z), F-contiguous view of the C-order (z, y, x) array
    out = {int(i): mesher.get(i, normals=False) for i in mesher.ids() if i != 0}
    mesher.clear()
    return out


def mesh_area(v: np.ndarray, f: np.ndarray) -> float:
    v = v.astype(np.float64)
    return float(0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum())


def check_meshes(zm: dict, vm: dict, smoothed: bool) -> str:
    if set(zm) != set(vm):
        raise WrongResult(f"mesh ids differ: {len(set(zm) ^ set(vm))} ids in only one of zmesh / volbridge")
    bad = [i for i in zm if len(zm[i].faces) != len(vm[i].faces) or len(zm[i].vertices) != len(vm[i].vertices)]
    if bad:
        i = bad[0]
        raise WrongResult(f"{len(bad)} ids differ in face/vertex counts, e.g. {i}: zmesh {len(zm[i].faces)}/"
                          f"{len(zm[i].vertices)}, volbridge {len(vm[i].faces)}/{len(vm[i].vertices)}")
    faces = sum(len(m.faces) for m in zm.values())
    if smoothed:
        return f"{len(zm)} ids, {faces} faces, same face/vertex counts as zmesh (vertices smoothed)"
    az = sum(mesh_area(m.vertices, m.faces) for m in zm.values())
    av = sum(mesh_area(m.vertices, m.faces) for m in vm.values())
    if abs(av - az) > 1e-4 * az:
        raise WrongResult(f"total mesh area differs: zmesh {az:.6g} nm^2, volbridge {av:.6g} nm^2")
    return f"{len(zm)} ids, {faces} faces, same face/vertex counts and area (rel. diff {abs(av - az) / az:.1e}) as zmesh"


# -- main ---------------------------------------------------------------------------------------
def parse_chunks(s: str) -> list[tuple[int, int, int]]:
    out = []
    for part in s.split(","):
        if part:
            z, y, x = (int(v) for v in part.lower().split("x"))
            out.append((z, y, x))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128x512x512 image, 64x256x256 labels, 2 repetitions")
    ap.add_argument("--image-shape", default="256x1024x1024", help="z x y x x of the EM-like image (default 256x1024x1024)")
    ap.add_argument("--labels-shape", default="128x512x512", help="z x y x x of the segmentation (default 128x512x512)")
    ap.add_argument("--chunks", default="64x64x64,16x128x128", help="image chunk layouts (z x y x x), comma list")
    ap.add_argument("--repeat", "-n", type=int, default=3, help="repetitions per measurement; best is kept (default 3)")
    ap.add_argument("--repeat-slow", type=int, default=1, help="repetitions of volbridge mesh smoothing=40 (default 1)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)}")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "services.json", help="JSON output path")
    args = ap.parse_args(argv)

    if args.quick:
        args.image_shape, args.labels_shape, args.repeat = "128x512x512", "64x256x256", 2
    img_shape = tuple(int(v) for v in args.image_shape.split("x"))
    lab_shape = tuple(int(v) for v in args.labels_shape.split("x"))
    chunk_layouts = parse_chunks(args.chunks)
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            ap.error(f"unknown op {o!r}")
    levels = NUM_SCALES - 1
    if any(n % (2 ** levels) for n in img_shape[1:]):
        ap.error(f"image y and x must be multiples of {2 ** levels}")
    want_ds = any(o in ops for o in OPS[:10])
    want_mesh = any(o in ops for o in OPS[10:])

    work = args.dir or Path(tempfile.mkdtemp(prefix="vb-bench-services-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work dir {work}", flush=True)
    load_start = os.getloadavg()
    print(f"# load average at start: {load_start[0]:.2f} ({os.cpu_count()} cpus)", flush=True)

    import volbridge as vb
    from volbridge.engine import parallel as vb_parallel
    from volbridge.services import downsample
    from volbridge.services.downsample import downsample_array
    from volbridge.services.mesh import mesh

    try:
        import tinybrain  # noqa: F401

        have_tb = True
    except ImportError:
        have_tb = False
        print("# tinybrain not installed: its rows are skipped", flush=True)

    rows: list[dict] = []
    failures: list[str] = []
    data_info: dict = {}

    def row(section, key, label, nbytes_or_voxels, times, cpus, note="", unit="GB/s"):
        best = min(times) if times else None
        if unit == "GB/s":
            rate = nbytes_or_voxels / best / 1e9 if best else None
        else:
            rate = nbytes_or_voxels / best / 1e6 if best else None
        r = {"section": section, "op": key, "label": label, "unit": unit if unit == "GB/s" else "Mvoxel/s",
             "rate": rate, "best_s": best, "seconds": times, "cpu_seconds": cpus, "note": note,
             "loadavg_1min_after": round(os.getloadavg()[0], 2)}
        rows.append(r)
        print(f"# {section:28s} {label:44s} {rate if rate is not None else float('nan'):9.3f} {r['unit']}"
              f"  (best {best if best else float('nan'):.3f} s, cpu {min(cpus) if cpus else float('nan'):.2f} s)", flush=True)
        return r

    def run(fn, times, cpus):
        settle()
        out, dt, dc = timed(fn)
        times.append(dt)
        cpus.append(dc)
        return out

    # -- downsampling ---------------------------------------------------------------------------
    if want_ds:
        t0 = time.perf_counter()
        vol = em_like(img_shape)
        nbytes = vol.nbytes
        print(f"# image: {img_shape} uint8 EM-like, generated in {time.perf_counter() - t0:.1f}s, "
              f"mean {vol.mean():.1f} std {vol.std():.1f}", flush=True)
        data_info["image"] = {"shape_zyx": list(img_shape), "dtype": "uint8", "resolution_zyx": list(RESOLUTION_IMG),
                              "num_scales": NUM_SCALES, "factor_zyx": [1, 2, 2], "encoding": "raw",
                              "chunk_layouts_zyx": [list(c) for c in chunk_layouts], "data": "EM-like smoothed noise (bench_precomputed.em_like)"}
        ref_pyr = np_pyramid(vol, levels)  # the expected answer (also warms numpy)
        vols = {}
        for ch in chunk_layouts:
            name = "x".join(map(str, ch))
            p = work / f"img-{name}"
            if p.exists():
                shutil.rmtree(p)
            a = vb.create("precomputed://" + p.as_uri(), shape=img_shape, dtype="uint8", chunk_shape=ch,
                          resolution=RESOLUTION_IMG, num_scales=NUM_SCALES)
            a[...] = vol
            vols[name] = a
        if "vb_ds01" in ops or "vb_pyr" in ops:
            # start the worker processes' fork server (imports, numba loops: once per process,
            # ~1.5 s) on a small volume first, so that the first timed repetition is a warm one
            w = vb.create("precomputed://" + (work / "warmup").as_uri(), shape=(16, 64, 64), dtype="uint8",
                          chunk_shape=(16, 16, 16), resolution=RESOLUTION_IMG, num_scales=2)
            w[...] = vol[:16, :64, :64]
            downsample(w, resume=False, executor="processes")
            shutil.rmtree(work / "warmup")
        settle()
        blocks, kbytes = kernel_blocks(vol, min(nbytes, 64 * 2**20)) if "vb_kernel" in ops else ([], 0)

        T: dict[str, list] = {}
        C: dict[str, list] = {}

        def rec(key):
            T.setdefault(key, [])
            C.setdefault(key, [])
            return T[key], C[key]

        tb_notes = {}
        for rep in range(args.repeat):
            last = rep == args.repeat - 1
            for name, a in vols.items():
                def check(key, mips):  # after every repetition: the levels were written anew
                    for k in mips:
                        got = a.mip(k)[...]
                        if not np.array_equal(got, ref_pyr[k - 1]):
                            failures.append(f"{key} {name}: mip {k} differs from the numpy reference "
                                            f"({np.count_nonzero(got != ref_pyr[k - 1])} voxels)")

                if "vb_ds01" in ops:
                    clear_levels(a, [1])
                    run(lambda: downsample(a, mips=[1], resume=False, executor="processes"), *rec(f"vb_ds01/{name}"))
                    check("vb_ds01", [1])
                if "vb_ds01r" in ops:  # again, over the mip 1 just written
                    run(lambda: downsample(a, mips=[1], resume=False, executor="processes"), *rec(f"vb_ds01r/{name}"))
                    check("vb_ds01r", [1])
                if "vb_ds01t" in ops:
                    clear_levels(a, [1])
                    run(lambda: downsample(a, mips=[1], resume=False), *rec(f"vb_ds01t/{name}"))
                    check("vb_ds01t", [1])
                if "vb_io" in ops:
                    m1 = a.mip(1)
                    def io(a=a, m1=m1):
                        src = a[...]
                        m1[...] = ref_pyr[0]
                        return src
                    run(io, *rec(f"vb_io/{name}"))
                if "vb_pyr" in ops:
                    clear_levels(a, range(1, NUM_SCALES))
                    run(lambda: downsample(a, resume=False, executor="processes"), *rec(f"vb_pyr/{name}"))
                    check("vb_pyr", range(1, NUM_SCALES))
            if "vb_kernel" in ops:
                run(lambda: [downsample_array(b, (2, 2, 1), "mean") for b in blocks], *rec("vb_kernel"))
            if "np_ds01" in ops:
                out = run(lambda: np_mean_yx(vol), *rec("np_ds01"))
                out = None
            if "np_pyr" in ops:
                run(lambda: np_pyramid(vol, levels), *rec("np_pyr"))
            if have_tb and "tb_ds01" in ops:
                out = run(lambda: tb_pyramid(vol, 1), *rec("tb_ds01"))
                if last:
                    d = tb_as_zyx(out[0]).astype(np.int16) - ref_pyr[0]
                    tb_notes["tb_ds01"] = (f"rounds differently from volbridge/numpy (half up): "
                                           f"{np.count_nonzero(d) / d.size:.1%} of mip-1 voxels differ, by {int(d.min())}..{int(d.max())}")
                out = None
            if have_tb and "tb_pyr" in ops:
                out = run(lambda: tb_pyramid(vol, levels), *rec("tb_pyr"))
                if last:
                    d = tb_as_zyx(out[-1]).astype(np.int16) - ref_pyr[-1]
                    tb_notes["tb_pyr"] = f"mip {levels}: {np.count_nonzero(d) / d.size:.1%} of voxels differ from numpy, by {int(d.min())}..{int(d.max())}"
                out = None

        threads = vb_parallel.default_threads()
        for name in vols:
            if f"vb_ds01/{name}" in T:
                row("downsample mip 0->1 (2x2x1)", f"vb_ds01/{name}", f"volbridge service, {name} chunks", nbytes,
                    T[f"vb_ds01/{name}"], C[f"vb_ds01/{name}"], "precomputed raw, page cache, 2 worker processes")
        for name in vols:
            if f"vb_ds01r/{name}" in T:
                row("downsample mip 0->1 (2x2x1)", f"vb_ds01r/{name}", f"volbridge service over an existing mip 1, {name} chunks", nbytes,
                    T[f"vb_ds01r/{name}"], C[f"vb_ds01r/{name}"], "each chunk file replaced (temp file renamed over it)")
        for name in vols:
            if f"vb_ds01t/{name}" in T:
                row("downsample mip 0->1 (2x2x1)", f"vb_ds01t/{name}", f"volbridge service on threads, {name} chunks", nbytes,
                    T[f"vb_ds01t/{name}"], C[f"vb_ds01t/{name}"], f"precomputed raw, page cache, {threads} loops")
        for name in vols:
            if f"vb_io/{name}" in T:
                row("downsample mip 0->1 (2x2x1)", f"vb_io/{name}", f"volbridge I/O only (read 0, write 1), {name}", nbytes,
                    T[f"vb_io/{name}"], C[f"vb_io/{name}"], "read mip 0 whole + write mip 1 whole, no kernel: the service's floor")
        if "vb_kernel" in T:
            row("downsample mip 0->1 (2x2x1)", "vb_kernel", "volbridge kernel downsample_array, 1 thread", kbytes,
                T["vb_kernel"], C["vb_kernel"], f"in memory, {len(blocks)} unit-sized (x,y,z)=128x128x64 blocks, {kbytes / 2**20:.0f} MiB")
        if "np_ds01" in T:
            row("downsample mip 0->1 (2x2x1)", "np_ds01", "numpy reference, in memory, 1 thread", nbytes, T["np_ds01"], C["np_ds01"],
                "4 strided views summed in uint16, rounded half up")
        if "tb_ds01" in T:
            row("downsample mip 0->1 (2x2x1)", "tb_ds01", "tinybrain, in memory, 1 thread", nbytes, T["tb_ds01"], C["tb_ds01"], tb_notes.get("tb_ds01", ""))
        for name in vols:
            if f"vb_pyr/{name}" in T:
                row(f"downsample pyramid mip 1..{levels}", f"vb_pyr/{name}", f"volbridge service, {name} chunks", nbytes,
                    T[f"vb_pyr/{name}"], C[f"vb_pyr/{name}"], "precomputed raw, page cache, 2 worker processes")
        if "np_pyr" in T:
            row(f"downsample pyramid mip 1..{levels}", "np_pyr", "numpy reference, in memory, 1 thread", nbytes, T["np_pyr"], C["np_pyr"])
        if "tb_pyr" in T:
            row(f"downsample pyramid mip 1..{levels}", "tb_pyr", "tinybrain, in memory, 1 thread", nbytes, T["tb_pyr"], C["tb_pyr"], tb_notes.get("tb_pyr", ""))
        vol = ref_pyr = blocks = vols = None
        gc.collect()

    # -- meshing --------------------------------------------------------------------------------
    if want_mesh:
        from volbridge.demo import RESOLUTION, VoronoiCells

        t0 = time.perf_counter()
        cells = VoronoiCells(np.random.default_rng(0), lab_shape, RESOLUTION)
        labels = np.ascontiguousarray(cells.labels(0, lab_shape[0]).astype(np.uint32))
        nvox = labels.size
        nids = len(np.unique(labels))
        print(f"# labels: {lab_shape} uint32 Voronoi cells, {nids} ids, generated in {time.perf_counter() - t0:.1f}s", flush=True)
        data_info["labels"] = {"shape_zyx": list(lab_shape), "dtype": "uint32", "resolution_zyx": list(RESOLUTION),
                               "ids": nids, "encoding": "raw", "chunk_zyx": [64, 64, 64],
                               "data": "volbridge.demo.VoronoiCells (warped Voronoi cells, ~700 nm)"}
        p = work / "seg"
        if p.exists():
            shutil.rmtree(p)
        seg = vb.create("precomputed://" + p.as_uri(), shape=lab_shape, dtype="uint32", chunk_shape=(64, 64, 64),
                        resolution=RESOLUTION, layer_type="segmentation")
        seg[...] = labels
        settle()
        T, C = {}, {}
        notes = {}
        zm = None
        for rep in range(args.repeat):
            last = rep == args.repeat - 1
            if "zmesh" in ops:
                T.setdefault("zmesh", [])
                C.setdefault("zmesh", [])
                zm = run(lambda: zmesh_all(labels, RESOLUTION), T["zmesh"], C["zmesh"])
            if "vb_mesh0" in ops:
                T.setdefault("vb_mesh0", [])
                C.setdefault("vb_mesh0", [])
                vm = run(lambda: mesh(seg, smoothing=0, executor="processes"), T["vb_mesh0"], C["vb_mesh0"])
                if last and zm is not None:
                    try:
                        notes["vb_mesh0"] = check_meshes(zm, vm, smoothed=False)
                    except WrongResult as e:
                        failures.append(f"vb_mesh0: {e}")
                        notes["vb_mesh0"] = f"FAIL: {e}"
                vm = None
            if "vb_mesh40" in ops and rep < args.repeat_slow:
                T.setdefault("vb_mesh40", [])
                C.setdefault("vb_mesh40", [])
                vm = run(lambda: mesh(seg, smoothing=40, executor="processes"), T["vb_mesh40"], C["vb_mesh40"])
                if zm is not None:
                    try:
                        notes["vb_mesh40"] = check_meshes(zm, vm, smoothed=True)
                    except WrongResult as e:
                        failures.append(f"vb_mesh40: {e}")
                        notes["vb_mesh40"] = f"FAIL: {e}"
                vm = None
        sec = f"mesh {'x'.join(map(str, lab_shape))} uint32"
        if "zmesh" in T:
            row(sec, "zmesh", "zmesh, whole volume in memory, 1 thread", nvox, T["zmesh"], C["zmesh"],
                "Mesher((8,8,40)).mesh + get(id) for every id; no I/O", unit="voxel/s")
        if "vb_mesh0" in T:
            row(sec, "vb_mesh0", "volbridge mesh, smoothing=0, incl. I/O", nvox, T["vb_mesh0"], C["vb_mesh0"],
                notes.get("vb_mesh0", ""), unit="voxel/s")
        if "vb_mesh40" in T:
            row(sec, "vb_mesh40", "volbridge mesh, smoothing=40, incl. I/O", nvox, T["vb_mesh40"], C["vb_mesh40"],
                notes.get("vb_mesh40", ""), unit="voxel/s")
        zm = labels = seg = None

    # -- targets --------------------------------------------------------------------------------
    by = {r["op"]: r for r in rows}
    targets = {}
    for r in rows:
        if r["op"].startswith("vb_ds01/") or r["op"].startswith("vb_pyr/"):
            targets[r["op"]] = {"target": f">= {DS_TARGET_GBS} GB/s of source", "value_gb_s": r["rate"],
                                "ratio_vs_target": r["rate"] / DS_TARGET_GBS, "met": r["rate"] >= DS_TARGET_GBS}
            peer = by.get("np_ds01" if r["op"].startswith("vb_ds01/") else "np_pyr")
            if peer:
                targets[r["op"]]["ratio_vs_numpy"] = r["rate"] / peer["rate"]
            peer = by.get("tb_ds01" if r["op"].startswith("vb_ds01/") else "tb_pyr")
            if peer:
                targets[r["op"]]["ratio_vs_tinybrain"] = r["rate"] / peer["rate"]
    if "zmesh" in by:
        for k in ("vb_mesh0", "vb_mesh40"):
            if k in by:
                ratio = by[k]["rate"] / by["zmesh"]["rate"]
                targets[k] = {"target": f">= {MESH_TARGET_RATIO}x bare zmesh (smoothing=0 is the fair comparison)",
                              "ratio_vs_zmesh": ratio, "ratio_vs_target": ratio / MESH_TARGET_RATIO,
                              "met": ratio >= MESH_TARGET_RATIO}

    # -- table ----------------------------------------------------------------------------------
    def ref_ratio(r):
        t = targets.get(r["op"])
        if not t:
            return "", ""
        if "ratio_vs_zmesh" in t:
            return f"{t['ratio_vs_zmesh']:.2f}x zmesh", f"{t['ratio_vs_target']:.2f} ({'met' if t['met'] else 'MISSED'})"
        peers = [f"{t['ratio_vs_numpy']:.2f}x numpy" if "ratio_vs_numpy" in t else "",
                 f"{t['ratio_vs_tinybrain']:.2f}x tinybrain" if "ratio_vs_tinybrain" in t else ""]
        return ", ".join(p for p in peers if p), f"{t['ratio_vs_target']:.2f} ({'met' if t['met'] else 'MISSED'})"

    print()
    print(f"services on {os.cpu_count()} cpus; best of {args.repeat} (volbridge mesh smoothing=40: best of "
          f"{min(args.repeat, args.repeat_slow)}); downsample GB/s = 1e9 mip-0 source bytes/s, mesh Mvoxel/s = 1e6 source voxels/s")
    print()
    print("| benchmark | implementation | rate | unit | best s | CPU s | vs peers | vs target |")
    print("|---|---|---:|---|---:|---:|---|---|")
    for r in rows:
        peers, tgt = ref_ratio(r)
        rate = f"{r['rate']:.3f}" if r["unit"] == "GB/s" else f"{r['rate']:.2f}"
        print(f"| {r['section']} | {r['label']} | {rate} | {r['unit']} | {r['best_s']:.3f} | {min(r['cpu_seconds']):.2f} | {peers} | {tgt} |")
    for r in rows:
        if r["note"] and r["op"].startswith(("tb_", "vb_mesh")):
            print(f"- {r['label']}: {r['note']}")
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)


    versions = common.versions(("volbridge", "numpy", "zmesh", "tinybrain", "scipy"))
    src_commit, src_dirty = common.source_state()
    result = {
        "benchmark": "services",
        "volbridge_commit": src_commit,
        "volbridge_src_uncommitted_changes": src_dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "data": data_info,
        "repeat": {"default": args.repeat, "vb_mesh40": min(args.repeat, args.repeat_slow)},
        "units": "downsample: GB/s = 1e9 mip-0 source voxel bytes per second (mip 0->1 and full pyramid alike); "
                 "mesh: Mvoxel/s = 1e6 source voxels per second; best of repeat",
        "targets": targets,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "volbridge_threads": vb_parallel.default_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VOLBRIDGE_")},
        "versions": versions,
        "rows": rows,
        "failures": failures,
    }
    return common.finish(args, result, work, failures)


if __name__ == "__main__":
    sys.exit(main())
