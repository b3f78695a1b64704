#!/usr/bin/env python
"""volbridge vs tensorstore vs cloud-volume on one neuroglancer precomputed volume on local disk.

One run, one data set, every library: a ``SIZE^3`` uint8 EM-like volume (smoothed noise with
cell-like structure and dark membranes, gzip ratio about 0.75, neither random nor constant) in
64^3 chunks, stored as ``raw`` and as ``raw`` with gzip transport compression (``<key>.gz``, the
CloudVolume ``compress='gzip'`` convention). For each encoding it times

* ``read_full``   the whole volume,
* ``read_cutout`` an unaligned cutout (300^3 at x, y, z = 37, 51, 29 for 512^3),
* ``write_full``  the whole volume into a fresh directory,

repeats each measurement ``--repeat`` times (reads twice as often; libraries interleaved, best
time kept), checks every read result against the source array (a fast but wrong answer fails the
run) and every write by reading it back with a *different* library. Results: a table on stdout and
JSON in ``bench/results/precomputed.json`` (per repetition: wall seconds, and CPU seconds of this
process, which a neighbour's load on a shared machine does not inflate).

Fairness rules:

* Only the data call is timed. Opening a handle (reading ``info``) and creating ``info`` for a
  write happen just before the timer starts, fresh for every repetition, so no library keeps a
  chunk cache across repetitions: tensorstore gets a new ``Context`` with a zero-byte cache pool
  per repetition, CloudVolume and volbridge keep no chunk cache.
* Reads come from the page cache for everyone (the files were just written); ``os.sync()`` runs
  (untimed) before every measurement so no library pays for another's dirty-page writeback.
* Layouts are each library's fast path: volbridge ``zyx`` (C order, its default) and ``xyz``;
  tensorstore ``read(order='F')`` of its (x, y, z, c) domain; CloudVolume's (x, y, z, c) cutout.
* gzip writes use level 6 everywhere (volbridge's level; CloudVolume's default would be 9, so it
  is given ``compress_level=6``). Both use libdeflate.
* tensorstore's unsharded ``neuroglancer_precomputed`` driver neither reads nor writes ``.gz``
  chunk files on a local ``file`` kvstore, so its gzip rows are "n/a".
* CloudVolume runs with ``parallel=1``, its default. On ``file://`` its download and upload
  thread pools are switched off by CloudVolume itself (``n_threads = 0`` for the file and mem
  protocols in ``image/rx.py`` and ``image/tx.py``), so its "default threading" is serial here;
  ``green_threads`` changes nothing for the same reason. ``--cv-parallel 1,2`` also tries
  ``parallel=2`` (worker processes over shared memory; the faster mode is reported and named).
  On this machine ``parallel=2`` spawns worker processes on every call (8-30 MB/s for reads) and,
  with cloud-volume 12.15.2, its uploads are wrong: a 256^3 write stores the z < 128 half's voxels
  in both halves (the read-back check catches it and the row is marked FAIL). See
  ``results/precomputed_cv_parallel.json``.

MB/s are 10^6 bytes of uncompressed voxels per second. Ratios > 1 mean volbridge is faster.

Usage::

    python bench/bench_precomputed.py            # 512^3, about 1.5 minutes on 2 cores
    python bench/bench_precomputed.py --quick    # 256^3
    python bench/bench_precomputed.py --libs volbridge --ops read_full --encodings gzip  # subsets
"""

from __future__ import annotations

import argparse
import gc
import os

# BLAS is only used to generate the data; OpenBLAS's helper threads busy-wait after each call and
# would steal CPU from the libraries under test on a small machine. Set before numpy is imported.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import common  # noqa: E402  (bench/common.py)

HERE = Path(__file__).resolve().parent
OPS = ("read_full", "read_cutout", "write_full")
ENCODINGS = ("raw", "gzip")
LIBS = ("volbridge", "volbridge_xyz", "tensorstore", "cloudvolume")
TS_GZIP_REASON = (
    "tensorstore's unsharded neuroglancer_precomputed driver cannot read or write .gz chunk files "
    "on a local file kvstore"
)


# -- data ---------------------------------------------------------------------------------------
def _interp_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) linear-interpolation weights from c coarse samples to n fine ones."""
    pos = (np.arange(n) + 0.5) * c / n - 0.5
    i0 = np.clip(np.floor(pos).astype(int), 0, c - 1)
    i1 = np.clip(i0 + 1, 0, c - 1)
    w = (pos - np.floor(pos)).astype(np.float32)
    m = np.zeros((n, c), np.float32)
    m[np.arange(n), i0] += 1 - w
    m[np.arange(n), i1] += w
    return m


def em_like(shape: tuple[int, int, int], seed: int = 0, noise: float = 3.5, slab: int = 32) -> np.ndarray:
    """A (z, y, x) uint8 volume that looks and compresses like EM: cell-scale intensity
    variation, thin dark membranes where a mid-scale field crosses zero, and fine grain."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)

    def field(div):
        c = [max(2, s // div) for s in shape]
        g = rng.standard_normal(c).astype(np.float32)
        mz, my, mx = (_interp_matrix(s, k) for s, k in zip(shape, c))
        return mz, np.einsum("abc,yb,xc->ayx", g, my, mx, optimize=True).astype(np.float32)

    low_z, low_yx = field(16)
    mid_z, mid_yx = field(8)
    grain = rng.integers(0, 256, (nz + 1, ny, nx), dtype=np.uint8)
    out = np.empty(shape, np.uint8)
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        low = np.tensordot(low_z[z0:z1], low_yx, axes=1)
        mid = np.tensordot(mid_z[z0:z1], mid_yx, axes=1)
        s = grain[z0 : z1 + 1].astype(np.int16)
        t = s[:-1] + s[1:]  # 2x2x2 box sum of uniform noise: smoothed grain
        t[:, 1:, :] += t[:, :-1, :].copy()
        t[:, :, 1:] += t[:, :, :-1].copy()
        fine = (t.astype(np.float32) - 1020.0) * (noise / 148.0)
        np.abs(mid, out=mid)
        membrane = np.clip(1.0 - mid * 10.0, 0.0, 1.0)
        img = 128.0 + 25.0 * low + fine - 70.0 * membrane
        np.clip(img, 0, 255, out=img)
        out[z0:z1] = img
    return out


def gzip_ratio(vol: np.ndarray, chunk: int, level: int = 6, max_chunks: int = 64) -> float:
    import deflate

    tot = comp = 0
    n = 0
    for z in range(0, vol.shape[0], chunk):
        for y in range(0, vol.shape[1], chunk):
            for x in range(0, vol.shape[2], chunk):
                b = vol[z : z + chunk, y : y + chunk, x : x + chunk].tobytes()
                tot += len(b)
                comp += len(deflate.gzip_compress(b, level))
                n += 1
                if n >= max_chunks:
                    return comp / tot
    return comp / tot


# -- library adapters ---------------------------------------------------------------------------
# A box is ((x0, y0, z0), (x1, y1, z1)). Each reader returns an array; `as_zyx` turns it into a
# (z, y, x) view for the equality check. Each writer returns a zero-arg callable that does the
# timed work, after doing the untimed setup (create info, open).


class Volbridge:
    name = "volbridge"

    def __init__(self, axis_order: str = "zyx"):
        import volbridge

        self.vb = volbridge
        self.axis_order = axis_order
        if axis_order == "xyz":
            self.name = "volbridge_xyz"

    def _sl(self, box):
        (x0, y0, z0), (x1, y1, z1) = box
        if self.axis_order == "zyx":
            return np.s_[z0:z1, y0:y1, x0:x1]
        return np.s_[x0:x1, y0:y1, z0:z1]

    def prepare_read(self, path, box, encoding):
        arr = self.vb.array(str(path), axis_order=self.axis_order)
        sl = self._sl(box)
        return lambda: arr[sl]

    def as_zyx(self, out):
        return out if self.axis_order == "zyx" else out.T

    def prepare_write(self, path, vol, encoding, size):
        shape = vol.shape if self.axis_order == "zyx" else vol.shape[::-1]
        arr = self.vb.create(
            str(path), shape=shape, dtype="uint8", chunk_shape=(64, 64, 64),
            compression="gzip" if encoding == "gzip" else None, axis_order=self.axis_order,
        )
        data = vol if self.axis_order == "zyx" else vol.T

        def go():
            arr[...] = data

        return go


class Tensorstore:
    name = "tensorstore"

    def __init__(self):
        import tensorstore

        self.ts = tensorstore

    def _ctx(self):
        # A fresh context per repetition, with no cache pool: every read goes to the kvstore.
        return self.ts.Context({"cache_pool": {"total_bytes_limit": 0}})

    def kvstore(self, path) -> dict:
        """Where the volume lives, as a tensorstore kvstore spec (the S3 benchmark overrides it)."""
        return {"driver": "file", "path": str(path)}

    def prepare_read(self, path, box, encoding):
        t = self.ts.open(
            {"driver": "neuroglancer_precomputed", "kvstore": self.kvstore(path)},
            context=self._ctx(), read=True,
        ).result()
        (x0, y0, z0), (x1, y1, z1) = box
        view = t[x0:x1, y0:y1, z0:z1]
        return lambda: view.read(order="F").result()

    @staticmethod
    def as_zyx(out):
        return out[..., 0].T

    def prepare_write(self, path, vol, encoding, size):
        nz, ny, nx = vol.shape
        t = self.ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": self.kvstore(path),
                "multiscale_metadata": {"data_type": "uint8", "num_channels": 1, "type": "image"},
                "scale_metadata": {
                    "size": [nx, ny, nz], "resolution": [1, 1, 1], "encoding": "raw",
                    "chunk_size": [64, 64, 64], "voxel_offset": [0, 0, 0],
                },
            },
            context=self._ctx(), create=True,
        ).result()
        data = vol.T[..., None]  # (x, y, z, c), F-contiguous view: no copy

        def go():
            t.write(data).result()

        return go


class Cloudvolume:
    name = "cloudvolume"

    def __init__(self, parallel: int = 1):
        from cloudvolume import CloudVolume

        self.CV = CloudVolume
        self.parallel = parallel
        self.mode = f"parallel={parallel}"

    def prepare_read(self, path, box, encoding):
        cv = self.CV("file://" + str(path), parallel=self.parallel, progress=False)
        (x0, y0, z0), (x1, y1, z1) = box
        return lambda: cv[x0:x1, y0:y1, z0:z1]

    @staticmethod
    def as_zyx(out):
        return np.asarray(out)[..., 0].T

    def prepare_write(self, path, vol, encoding, size):
        nz, ny, nx = vol.shape
        info = self.CV.create_new_info(
            num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
            resolution=[1, 1, 1], voxel_offset=[0, 0, 0], volume_size=[nx, ny, nz],
            chunk_size=[64, 64, 64],
        )
        cv = self.CV(
            "file://" + str(path), info=info, parallel=self.parallel, progress=False,
            compress="gzip" if encoding == "gzip" else False, compress_level=6,
        )
        cv.commit_info()
        data = vol.T  # (x, y, z), F-contiguous view: no copy

        def go():
            cv[0:nx, 0:ny, 0:nz] = data

        return go


# -- measurement --------------------------------------------------------------------------------
class WrongResult(AssertionError):
    pass


def check_equal(got_zyx: np.ndarray, want: np.ndarray, what: str) -> None:
    if got_zyx.shape != want.shape or got_zyx.dtype != want.dtype or not np.array_equal(got_zyx, want):
        raise WrongResult(f"{what}: result differs from the source data (shape {got_zyx.shape} vs {want.shape})")


def settle() -> None:
    gc.collect()
    os.sync()  # no library pays for another's dirty-page writeback


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "info" and ".volbridge-locks" not in f.parts)


def chunk_suffixes(path: Path) -> set[str]:
    out = set()
    for f in path.rglob("*"):
        if f.is_file() and f.name not in ("info", "provenance") and ".volbridge-locks" not in f.parts:
            out.add(f.suffix if f.suffix in (".gz", ".br", ".zstd") else "")
    return out


def fmt_rate(v) -> str:
    return f"{v:8.1f}" if isinstance(v, (int, float)) else f"{str(v):>8}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="edge of the cubic volume (default 512)")
    ap.add_argument("--quick", action="store_true", help="256^3 volume, 150^3 cutout")
    ap.add_argument("--repeat", "-n", type=int, default=3, help="repetitions per measurement; best is kept (default 3)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "precomputed.json", help="JSON output path")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list from {','.join(LIBS)}")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)}")
    ap.add_argument("--encodings", default=",".join(ENCODINGS), help="comma list from raw,gzip")
    ap.add_argument("--cv-parallel", default="1",
                    help="CloudVolume parallel settings to try, e.g. 1,2; the fastest is reported (default 1: "
                         "parallel=N spawns N processes per call, which costs seconds, and its 256^3+ writes "
                         "were wrong in cloud-volume 12.15.2, see the module docstring)")
    args = ap.parse_args(argv)

    size = 256 if args.quick else args.size
    cut_start = (37, 51, 29)  # x, y, z
    cut_edge = 300 if size >= 512 else max(8, (size * 300) // 512)
    if any(s + cut_edge > size for s in cut_start):
        ap.error(f"--size {size} is too small for a {cut_edge}^3 cutout at {cut_start}")
    libs = [l for l in args.libs.split(",") if l]
    ops = [o for o in args.ops.split(",") if o]
    encodings = [e for e in args.encodings.split(",") if e]
    for l in libs:
        if l not in LIBS:
            ap.error(f"unknown library {l!r}")
    cv_modes = sorted({int(p) for p in args.cv_parallel.split(",") if p})

    work = args.dir or Path(tempfile.mkdtemp(prefix="vb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work dir {work}", flush=True)

    load_start = os.getloadavg()
    print(f"# load average at start: {load_start[0]:.2f} (machine has {os.cpu_count()} cpus; a busy neighbour skews wall times)", flush=True)
    t0 = time.perf_counter()
    vol = em_like((size, size, size))
    ratio = gzip_ratio(vol, 64)
    print(f"# data: {size}^3 uint8 EM-like, generated in {time.perf_counter() - t0:.1f}s, "
          f"gzip-6 ratio {ratio:.3f} (sample of 64-cubed chunks), mean {vol.mean():.1f} std {vol.std():.1f}", flush=True)

    import volbridge
    from volbridge.engine import parallel as vb_parallel

    adapters: dict[str, list] = {}
    if "volbridge" in libs:
        adapters["volbridge"] = [Volbridge("zyx")]
    if "volbridge_xyz" in libs:
        adapters["volbridge_xyz"] = [Volbridge("xyz")]
    if "tensorstore" in libs:
        adapters["tensorstore"] = [Tensorstore()]
    if "cloudvolume" in libs:
        adapters["cloudvolume"] = [Cloudvolume(p) for p in cv_modes]

    # Source data sets for reads, written once by volbridge (checked below by the other libraries'
    # reads, which must equal the source array).
    src = {}
    for enc in encodings:
        p = work / f"src-{enc}"
        if p.exists():
            shutil.rmtree(p)
        Volbridge().prepare_write(p, vol, enc, size)()
        src[enc] = p
        sfx = chunk_suffixes(p)
        want = {".gz"} if enc == "gzip" else {""}
        assert sfx == want, f"{enc} source chunks have suffixes {sfx}, expected {want}"
    settle()

    full_box = ((0, 0, 0), (size, size, size))
    cut_box = (cut_start, tuple(s + cut_edge for s in cut_start))
    boxes = {"read_full": full_box, "read_cutout": cut_box}

    def expected(box):
        (x0, y0, z0), (x1, y1, z1) = box
        return vol[z0:z1, y0:y1, x0:x1]

    # A writer's output is read back by another library.
    verifier_for = {"volbridge": "tensorstore", "volbridge_xyz": "cloudvolume", "tensorstore": "volbridge", "cloudvolume": "volbridge"}

    def verify_written(writer: str, path: Path, enc: str) -> str:
        sfx = chunk_suffixes(path)
        want = {".gz"} if enc == "gzip" else {""}
        if sfx != want:
            raise WrongResult(f"{writer} {enc} write produced chunk suffixes {sfx}, expected {want}")
        reader = verifier_for[writer]
        if enc == "gzip" and reader == "tensorstore":
            reader = "cloudvolume"
        rd = {"volbridge": Volbridge(), "tensorstore": Tensorstore(), "cloudvolume": Cloudvolume(1)}[reader]
        out = rd.prepare_read(path, full_box, enc)()
        check_equal(rd.as_zyx(out), vol, f"{writer} {enc} write, read back by {reader}")
        return reader

    rows = []
    failures = []
    for op in ops:
        for enc in encodings:
            nbytes = vol.nbytes if op != "read_cutout" else cut_edge**3
            times: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}
            notes: dict[str, str] = {}
            na = set()
            runners = []  # (label, lib key, adapter)
            for lib in libs:
                if lib == "tensorstore" and enc == "gzip":
                    na.add(lib)
                    notes[lib] = "n/a: " + TS_GZIP_REASON
                    continue
                for ad in adapters[lib]:
                    label = lib if lib != "cloudvolume" else f"cloudvolume[{ad.mode}]"
                    runners.append((label, lib, ad))
                    times[label] = []
                    cpu[label] = []
            # Reads are cheap and the cutout is short (tens of ms): give them twice the repetitions.
            reps = args.repeat * (2 if op.startswith("read") else 1)
            for rep in range(reps):
                for label, lib, ad in runners:
                    if label in notes and notes[label].startswith("FAIL"):
                        continue
                    try:
                        if op == "write_full":
                            dst = work / f"w-{label.replace('[', '-').replace(']', '').replace('=', '')}-{enc}"
                            if dst.exists():
                                shutil.rmtree(dst)
                            fn = ad.prepare_write(dst, vol, enc, size)
                            settle()
                            t, tc = time.perf_counter(), time.process_time()
                            fn()
                            dt, dc = time.perf_counter() - t, time.process_time() - tc
                            if rep == reps - 1:
                                reader = verify_written(lib, dst, enc)
                                notes.setdefault(label, f"verified by reading back with {reader}")
                                if enc == "gzip":
                                    notes[label] += f"; stored/raw {stored_bytes(dst) / vol.nbytes:.3f}"
                            fn = None
                        else:
                            box = boxes[op]
                            fn = ad.prepare_read(src[enc], box, enc)
                            settle()
                            t, tc = time.perf_counter(), time.process_time()
                            out = fn()
                            dt, dc = time.perf_counter() - t, time.process_time() - tc
                            check_equal(ad.as_zyx(out), expected(box), f"{label} {op} {enc}")
                            out = fn = None
                        times[label].append(dt)
                        cpu[label].append(dc)
                    except Exception as e:  # record and carry on; the run fails at the end
                        msg = f"FAIL: {type(e).__name__}: {e}"
                        notes[label] = msg
                        failures.append(f"{op} {enc} {label}: {msg}")
                        print(f"!! {op} {enc} {label}: {msg}", file=sys.stderr, flush=True)
            best = {label: min(ts_) for label, ts_ in times.items() if ts_ and not notes.get(label, "").startswith("FAIL")}
            rate = {label: nbytes / s / 1e6 for label, s in best.items()}
            # CloudVolume: report its fastest mode.
            cv_labels = [l for l in rate if l.startswith("cloudvolume[")]
            cv_best = max(cv_labels, key=lambda l: rate[l]) if cv_labels else None
            mb_s = {
                "volbridge": rate.get("volbridge"),
                "volbridge_xyz": rate.get("volbridge_xyz"),
                "tensorstore": "n/a" if "tensorstore" in na else rate.get("tensorstore"),
                "cloudvolume": rate.get(cv_best) if cv_best else None,
            }
            vbr = mb_s["volbridge"]
            row = {
                "operation": op,
                "encoding": enc,
                "bytes": nbytes,
                "mb_s": mb_s,
                "cloudvolume_mode": cv_best[len("cloudvolume["):-1] if cv_best else None,
                "cloudvolume_mb_s_by_mode": {l[len("cloudvolume["):-1]: rate[l] for l in cv_labels},
                "ratio_volbridge_over_tensorstore": (vbr / mb_s["tensorstore"]) if isinstance(vbr, float) and isinstance(mb_s["tensorstore"], float) else None,
                "ratio_volbridge_over_cloudvolume": (vbr / mb_s["cloudvolume"]) if isinstance(vbr, float) and isinstance(mb_s["cloudvolume"], float) else None,
                "seconds": {label: ts_ for label, ts_ in times.items()},
                # CPU seconds of this process (all its threads; not CloudVolume's worker processes)
                "cpu_seconds": {label: c_ for label, c_ in cpu.items()},
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
                "notes": notes,
            }
            rows.append(row)
            print(f"# {op:11s} {enc:4s} " + "  ".join(
                f"{k}={fmt_rate(v).strip()} MB/s (cpu {min(cpu[k]) * 1e3:.0f} ms)" for k, v in rate.items()), flush=True)

    # -- table ----------------------------------------------------------------------------------
    def cell(v):
        return "     n/a" if v == "n/a" else ("       -" if v is None else f"{v:8.1f}")

    def rcell(v):
        return "     -" if v is None else f"{v:6.2f}"

    header = f"{'operation':12s} {'enc':4s} {'volbridge':>9s} {'vb(xyz)':>8s} {'tensorst.':>9s} {'cloudvol.':>9s} {'cv mode':>11s} {'vb/ts':>6s} {'vb/cv':>6s}"
    print()
    print(f"precomputed {size}^3 uint8, 64^3 chunks, local disk; MB/s (10^6 voxel bytes/s), "
          f"best of {2 * args.repeat} (reads) / {args.repeat} (writes)")
    print(header)
    print("-" * len(header))
    for r in rows:
        m = r["mb_s"]
        print(f"{r['operation']:12s} {r['encoding']:4s} {cell(m['volbridge']):>9s} {cell(m['volbridge_xyz']):>8s} "
              f"{cell(m['tensorstore']):>9s} {cell(m['cloudvolume']):>9s} {str(r['cloudvolume_mode'] or '-'):>11s} "
              f"{rcell(r['ratio_volbridge_over_tensorstore'])} {rcell(r['ratio_volbridge_over_cloudvolume'])}")
    if "tensorstore" in libs and "gzip" in encodings:
        print(f"tensorstore gzip: n/a ({TS_GZIP_REASON})")
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)

    import cloudvolume
    import tensorstore

    versions = common.versions(("volbridge", "tensorstore", "cloud-volume", "numpy", "deflate"))
    src_commit, src_dirty = common.source_state()
    result = {
        "benchmark": "precomputed",
        "volbridge_commit": src_commit,
        "volbridge_src_uncommitted_changes": src_dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "volume": {"shape_xyz": [size] * 3, "dtype": "uint8", "chunk_shape_xyz": [64, 64, 64],
                   "data": "EM-like smoothed noise", "gzip6_ratio_sample": ratio},
        "cutout": {"start_xyz": list(cut_start), "shape_xyz": [cut_edge] * 3},
        "repeat": {"reads": 2 * args.repeat, "writes": args.repeat},
        "units": "MB/s = 1e6 uncompressed voxel bytes per second, best of repeat; ratios > 1: volbridge faster",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "volbridge_threads": vb_parallel.default_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VOLBRIDGE_")},
        "versions": versions,
        "cloudvolume_modes_tried": [f"parallel={p}" for p in cv_modes],
        "rows": rows,
        "failures": failures,
    }
    return common.finish(args, result, work, failures)


if __name__ == "__main__":
    sys.exit(main())
