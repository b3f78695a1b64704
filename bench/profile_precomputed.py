#!/usr/bin/env python
"""Where volbridge's precomputed time goes: thread sweeps, a cost breakdown, and a loop to profile.

Companion of ``bench_precomputed.py`` (same data generator, same volume layout). Subcommands::

    python bench/profile_precomputed.py prep  --dir /tmp/vbprof            # write src-raw, src-gzip
    python bench/profile_precomputed.py sweep --dir /tmp/vbprof            # VOLBRIDGE_THREADS sweep vs tensorstore
    python bench/profile_precomputed.py breakdown --dir /tmp/vbprof        # I/O, copy, decode, Python overhead
    python bench/profile_precomputed.py variants --dir /tmp/vbprof --tensorstore  # scheduler/helper prototypes
    python bench/profile_precomputed.py ceiling --dir /tmp/vbprof           # a lean Python path, no volbridge
    python bench/profile_precomputed.py loop --dir /tmp/vbprof --op read_cutout --enc raw --seconds 10
        # run one operation repeatedly, e.g. under:  py-spy record -r 250 --threads -o out.svg -- python ...
        # or with --pyinstrument (main thread only: the worker threads are invisible to it)

Every timing is the best of ``--repeat`` with the variants interleaved (A B C A B C ...), so a
neighbour's load on the shared machine hits every variant alike.
"""

from __future__ import annotations

import argparse
import json
import os

# BLAS is only used to generate the data; OpenBLAS's helper threads busy-wait after each call and
# would steal CPU from the libraries under test on a small machine. Set before numpy is imported.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_precomputed import Tensorstore, Volbridge, em_like  # noqa: E402

CUT_START = (37, 51, 29)


def boxes(size):
    edge = 300 if size >= 512 else max(8, (size * 300) // 512)
    return {
        "read_full": ((0, 0, 0), (size,) * 3),
        "read_cutout": (CUT_START, tuple(s + edge for s in CUT_START)),
    }


def load_size(d: Path) -> int:
    info = json.loads((d / "src-raw" / "info").read_text())
    return info["scales"][0]["size"][0]


def cmd_prep(a):
    d = a.dir
    d.mkdir(parents=True, exist_ok=True)
    vol = em_like((a.size,) * 3)
    np.save(d / "vol.npy", vol)
    for enc in ("raw", "gzip"):
        p = d / f"src-{enc}"
        if p.exists():
            import shutil

            shutil.rmtree(p)
        Volbridge().prepare_write(p, vol, enc, a.size)()
    os.sync()
    print(f"wrote {d}/src-raw, {d}/src-gzip, vol.npy ({a.size}^3)")


def _one(op, enc, d, lib, repeat, ts_copy=None, check=True):
    """Runs in a child process so VOLBRIDGE_THREADS takes effect: best seconds of ``repeat``."""
    size = load_size(d)
    vol = np.load(d / "vol.npy", mmap_mode="r") if check else None
    best = float("inf")
    for _ in range(repeat):
        if op == "write_full":
            import shutil

            dst = d / f"w-{lib}-{enc}"
            shutil.rmtree(dst, ignore_errors=True)
            v = np.load(d / "vol.npy")
            fn = (Volbridge() if lib == "volbridge" else Tensorstore()).prepare_write(dst, v, enc, size)
        else:
            ad = Volbridge() if lib == "volbridge" else Tensorstore()
            if lib == "tensorstore" and ts_copy:
                ad._ctx = lambda: ad.ts.Context({"cache_pool": {"total_bytes_limit": 0}, "data_copy_concurrency": {"limit": ts_copy}})
            fn = ad.prepare_read(d / f"src-{enc}", boxes(size)[op], enc)
        os.sync()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if check and out is not None:
            (x0, y0, z0), (x1, y1, z1) = boxes(size)[op]
            assert np.array_equal(ad.as_zyx(out), vol[z0:z1, y0:y1, x0:x1])
        out = None
    return best


def cmd_one(a):
    print(json.dumps(_one(a.op, a.enc, a.dir, a.lib, a.repeat, a.ts_copy)))


def _child(op, enc, d, lib, threads=None, ts_copy=None, repeat=1):
    env = dict(os.environ)
    if threads:
        env["VOLBRIDGE_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "one", "--dir", str(d), "--op", op, "--enc", enc, "--lib", lib, "--repeat", str(repeat)]
    if ts_copy:
        cmd += ["--ts-copy", str(ts_copy)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def cmd_sweep(a):
    size = load_size(a.dir)
    threads = [int(t) for t in a.threads.split(",")]
    nbytes = {"read_full": size**3, "write_full": size**3, "read_cutout": (boxes(size)["read_cutout"][1][0] - CUT_START[0]) ** 3}
    results = {}
    for op in a.ops.split(","):
        for enc in a.encodings.split(","):
            variants = [("volbridge", t) for t in threads]
            if enc == "raw":
                variants += [("tensorstore", None)]
            best = {v: float("inf") for v in variants}
            for _ in range(a.repeat):
                for v in variants:
                    # each child does 2 runs and keeps the better: the first pays imports' page faults
                    best[v] = min(best[v], _child(op, enc, a.dir, v[0], v[1], repeat=2))
            row = {f"{lib}" + (f"[threads={t}]" if t else ""): nbytes[op] / s / 1e6 for (lib, t), s in best.items()}
            results[f"{op}/{enc}"] = row
            print(f"{op:11s} {enc:4s} " + "  ".join(f"{k}={v:.0f}" for k, v in row.items()), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"size": size, "unit": "MB/s", "results": results, "loadavg_end": os.getloadavg()}, indent=2) + "\n")
        print(f"JSON: {a.out}")


def cmd_breakdown(a):
    """Split a volbridge read into its parts by re-doing each part alone, single-threaded."""
    import deflate

    import volbridge
    from volbridge.geometry import Box

    size = load_size(a.dir)
    rep = a.repeat
    for op, (start, stop) in boxes(size).items():
        box = Box(tuple(start), tuple(stop))
        for enc in ("raw", "gzip"):
            arr = volbridge.array(str(a.dir / f"src-{enc}"))
            vol = arr.volume
            layout = vol.dataset.layout(0)
            store = vol.store
            cells = list(layout.grid.cells(box))

            def best(fn):
                # wall and CPU (process) time; CPU time is robust to a neighbour's load
                b, c = float("inf"), float("inf")
                for _ in range(rep):
                    t, tc = time.perf_counter(), time.process_time()
                    fn()
                    b, c = min(b, time.perf_counter() - t), min(c, time.process_time() - tc)
                return b, c

            def plan():
                for cell in cells:
                    layout.read_keys(cell)
                    region = cell.box.intersect(box)
                    region.slices(box.start), region.slices(cell.box.start)

            keys = [store.get_first(layout.read_keys(c))[0] for c in cells]
            paths = [store._path(k) for k in keys]

            def get_first():
                for c in cells:
                    store.get_first(layout.read_keys(c))

            def raw_read():
                for p in paths:
                    with open(p, "rb") as f:
                        f.read()

            blobs = [store.get(k) for k in keys]

            def decompress():
                if enc == "gzip":
                    for b in blobs:
                        deflate.gzip_decompress(b)

            decoded = [layout.decode(b, c, k) for b, c, k in zip(blobs, cells, keys)]
            out = np.zeros((*box.shape, 1), np.uint8, order="F")

            def copy():
                for c, ch in zip(cells, decoded):
                    r = c.box.intersect(box)
                    out[r.slices(box.start)] = ch[r.slices(c.box.start)]

            def alloc_touch():
                o = np.zeros((*box.shape, 1), np.uint8, order="F")
                o[...] = 1

            def whole_serial():
                vol.read(box)

            def pool_overhead():
                from volbridge.engine.parallel import run_bounded

                run_bounded(lambda c: None, cells, layout and vol._chunk_nbytes(layout))

            parts = {
                "plan (keys, boxes, slices)": best(plan),
                "get_first (open/read, misses incl.)": best(get_first),
                "open/read existing key only": best(raw_read),
                "gzip decompress": best(decompress),
                "copy into output (warm pages)": best(copy),
                "allocate+fault output pages": best(alloc_touch),
                "run_bounded with no-op tasks": best(pool_overhead),
                "whole read (pool threads; cpu=all)": best(whole_serial),
            }
            nb = int(np.prod(box.shape))
            print(f"\n{op} {enc}: {len(cells)} chunks, {nb / 1e6:.1f} MB out")
            print(f"  {'part (single thread unless noted)':38s} {'wall ms':>8s} {'cpu ms':>8s} {'cpu us/chunk':>13s}")
            for k, (w, c) in parts.items():
                print(f"  {k:38s} {w * 1e3:8.2f} {c * 1e3:8.2f} {c / len(cells) * 1e6:13.1f}")


def cmd_breakdown_write(a):
    """Split a volbridge full-volume write into its per-chunk parts, each re-done alone."""
    import fcntl
    import shutil

    import volbridge

    size = load_size(a.dir)
    vol = np.load(a.dir / "vol.npy")
    for enc in ("raw", "gzip"):
        dst = a.dir / f"wb-{enc}"
        shutil.rmtree(dst, ignore_errors=True)
        arr = volbridge.create(str(dst), shape=vol.shape, dtype="uint8", chunk_shape=(64, 64, 64),
                               compression="gzip" if enc == "gzip" else None)
        v = arr.volume
        layout = v.dataset.layout(0)
        store = v.store
        from volbridge.geometry import Box

        box = Box((0, 0, 0), (size,) * 3)
        cells = list(layout.grid.cells(box))
        data = vol[None].T  # what VolumeArray hands the engine: (x, y, z, c), F-ordered view
        srcs = [data[c.box.slices(box.start)] for c in cells]
        encoded = [layout.encode(s, c) for s, c in zip(srcs, cells)]
        keys = [layout.write_key(c) for c in cells]
        store.put(keys[0], encoded[0])  # creates the scale directory
        store._lock_path(keys[0]).parent.mkdir(parents=True, exist_ok=True)
        scratch = a.dir / f"wb-{enc}-plain"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()

        def best(fn, setup=None):
            b, cpu = float("inf"), float("inf")
            for _ in range(a.repeat):
                if setup:
                    setup()
                os.sync()
                t, tc = time.perf_counter(), time.process_time()
                fn()
                b, cpu = min(b, time.perf_counter() - t), min(cpu, time.process_time() - tc)
            return b, cpu

        def encode_only():
            for s, c in zip(srcs, cells):
                layout.encode(s, c)

        def gather_only():
            for s in srcs:
                s.tobytes(order="F")

        def plain_write():  # the floor: create + write + close, no temp, no rename, no lock
            for i, e in enumerate(encoded):
                with open(f"{scratch}/{i}", "wb") as f:
                    f.write(e)

        def put_all():
            for k, e in zip(keys, encoded):
                store.put(k, e)

        def locks():
            for k in keys:
                fd = os.open(store._lock_path(k), os.O_RDWR | os.O_CREAT, 0o666)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.close(fd)

        def stale():
            for c in cells:
                for k in layout.stale_keys(c):
                    store.delete(k)

        def stale_keys_only():
            for c in cells:
                layout.stale_keys(c)

        def whole():
            arr[...] = vol

        parts = {
            "gather chunk (tobytes F)": best(gather_only),
            "encode (gather + compress)": best(encode_only),
            "plain open/write/close (floor)": best(plain_write, lambda: (shutil.rmtree(scratch), scratch.mkdir())),
            "FileStore.put (tmp + rename)": best(put_all),
            "lock open+flock+close": best(locks),
            "stale_keys() computation": best(stale_keys_only),
            "stale_keys delete (unlink misses)": best(stale),
            "whole write (pool threads; cpu=all)": best(whole),
        }
        print(f"\nwrite_full {enc}: {len(cells)} chunks, {vol.nbytes / 1e6:.1f} MB")
        print(f"  {'part (single thread unless noted)':38s} {'wall ms':>8s} {'cpu ms':>8s} {'cpu us/chunk':>13s}")
        for k, (w, c) in parts.items():
            print(f"  {k:38s} {w * 1e3:8.2f} {c * 1e3:8.2f} {c / len(cells) * 1e6:13.1f}")
        shutil.rmtree(scratch, ignore_errors=True)


def _serial(fn, items, bytes_per_item):
    for item in items:
        fn(item)


def _worker_loops(fn, items, bytes_per_item):
    """Prototype: ``window`` long-lived loops pulling cells from one shared iterator.

    Same memory bound as run_bounded (each loop holds one chunk at a time), but no Future,
    submit or wait() per chunk: the per-chunk scheduling cost is one locked ``next()``.
    """
    import threading

    from volbridge.engine import parallel as par

    items = list(items)
    if len(items) <= 1:
        return _serial(fn, items, bytes_per_item)
    ex = par.pool()
    window = max(1, min(ex._max_workers, par.MAX_BYTES_IN_FLIGHT // max(1, bytes_per_item), len(items)))
    it = iter(items)
    lock = threading.Lock()
    failed = []

    def loop():
        while not failed:
            with lock:
                item = next(it, None)
            if item is None:
                return
            try:
                fn(item)
            except BaseException as e:  # first error stops every loop
                failed.append(e)
                raise

    futs = [ex.submit(loop) for _ in range(window - 1)]
    loop_exc = None
    try:
        loop()  # the calling thread works too instead of only waiting
    except BaseException as e:
        loop_exc = e
    for f in futs:
        f.exception()
    if failed:
        raise failed[0]
    if loop_exc:
        raise loop_exc


class _Lean:
    """Prototype of cheaper per-chunk helpers, patched in for the run (src untouched):
    math.prod instead of np.prod, a cached little-endian dtype, FileStore.get on string paths instead of pathlib,
    and Box.intersect with map() instead of generator expressions."""

    def __enter__(self):
        import functools
        import math

        import volbridge.codecs.raw as raw
        from volbridge.geometry import box as boxmod
        from volbridge.kv import file as filemod

        self.saved = [(raw, "expected_nbytes", raw.expected_nbytes), (raw, "little_endian", raw.little_endian),
                      (filemod.FileStore, "get", filemod.FileStore.get), (boxmod.Box, "intersect", boxmod.Box.intersect)]
        raw.expected_nbytes = lambda shape, dtype: math.prod(shape) * dtype.itemsize
        raw.little_endian = functools.lru_cache(maxsize=64)(lambda dt: np.dtype(dt).newbyteorder("<"))
        orig_get = filemod.FileStore.get

        def get(store, key):  # same semantics, string path instead of pathlib
            root = store.__dict__.get("_root_str")
            if root is None:
                root = store.__dict__["_root_str"] = str(store.root)
            if key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
                return orig_get(store, key)  # raises the store's own error
            try:
                with open(root + "/" + key, "rb") as f:
                    return f.read()
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError:
                return orig_get(store, key)

        filemod.FileStore.get = get
        Box = boxmod.Box
        boxmod.Box.intersect = lambda self, o: Box(tuple(map(max, self.start, o.start)), tuple(map(min, self.stop, o.stop)))
        return self

    def __exit__(self, *exc):
        for obj, name, val in self.saved:
            setattr(obj, name, val)


class _NoStale:
    """Prototype: skip the per-chunk deletes of other-suffix keys (6 unlink misses per chunk) —
    what a write would do if it knew, e.g. from one directory listing per write, that none exist."""

    def __enter__(self):
        from volbridge.formats.base import ScaleLayout

        self.saved = ScaleLayout.stale_keys
        ScaleLayout.stale_keys = lambda self, cell: []
        return self

    def __exit__(self, *exc):
        from volbridge.formats.base import ScaleLayout

        ScaleLayout.stale_keys = self.saved


class _Both:
    def __enter__(self):
        self.a, self.b = _Lean().__enter__(), _NoStale().__enter__()
        return self

    def __exit__(self, *exc):
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)


def _time_vb(d, op, enc, vol, size, bx):
    """(wall, cpu) of one volbridge operation; reads are checked against the source."""
    import shutil

    if op == "write_full":
        dst = d / "wv"
        shutil.rmtree(dst, ignore_errors=True)
        fn = Volbridge().prepare_write(dst, vol, enc, size)
    else:
        fn = Volbridge().prepare_read(d / f"src-{enc}", bx[op], enc)
    os.sync()
    t, tc = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - tc
    if out is not None:
        (x0, y0, z0), (x1, y1, z1) = bx[op]
        assert np.array_equal(out, vol[z0:z1, y0:y1, x0:x1])
    return wall, cpu


def cmd_variants(a):
    """Same reads/writes with the engine's scheduler swapped (monkeypatched here, src untouched)."""
    import shutil

    import volbridge.engine.chunked as chunked

    size = load_size(a.dir)
    vol = np.load(a.dir / "vol.npy")
    orig = chunked.run_bounded
    import contextlib

    variants = {
        "run_bounded (current)": (orig, contextlib.nullcontext),
        "serial, no pool": (_serial, contextlib.nullcontext),
        "worker loops (prototype)": (_worker_loops, contextlib.nullcontext),
        "worker loops + lean helpers": (_worker_loops, _Lean),
        "serial + lean helpers": (_serial, _Lean),
        "worker loops + lean + no stale deletes": (_worker_loops, _Both),
    }
    if a.only:
        variants = {k: v for k, v in variants.items() if any(o in k for o in a.only.split(","))}
    bx = boxes(size)
    report = {}
    for op in a.ops.split(","):
        for enc in a.encodings.split(","):
            res = {k: [] for k in variants}
            if a.tensorstore and enc == "raw":
                res["tensorstore (reference)"] = []
            for _ in range(a.repeat):
                if "tensorstore (reference)" in res:
                    ad = Tensorstore()
                    if op == "write_full":
                        dst = a.dir / "wv"
                        shutil.rmtree(dst, ignore_errors=True)
                        fn = ad.prepare_write(dst, vol, enc, size)
                    else:
                        fn = ad.prepare_read(a.dir / f"src-{enc}", bx[op], enc)
                    os.sync()
                    t, tc = time.perf_counter(), time.process_time()
                    out = fn()
                    res["tensorstore (reference)"].append((time.perf_counter() - t, time.process_time() - tc))
                    out = None
                for name, (sched, ctx) in variants.items():
                    chunked.run_bounded = sched
                    try:
                        with ctx():
                            res[name].append(_time_vb(a.dir, op, enc, vol, size, bx))
                    finally:
                        chunked.run_bounded = orig
            nb = size**3 if op != "read_cutout" else int(np.prod([b - s for s, b in zip(*bx[op])]))
            print(f"{op} {enc}:")
            for name, v in res.items():
                w = min(x[0] for x in v)
                c = min(x[1] for x in v)
                print(f"  {name:40s} {nb / w / 1e6:7.0f} MB/s  wall {w * 1e3:7.1f} ms  cpu {c * 1e3:7.1f} ms")
                report.setdefault(f"{op}/{enc}", {})[name] = {"mb_s": nb / w / 1e6, "wall_ms": w * 1e3, "cpu_ms": c * 1e3}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        prev = json.loads(a.out.read_text()) if a.out.exists() else {}
        key = f"VOLBRIDGE_THREADS={os.environ.get('VOLBRIDGE_THREADS', 'default')}"
        prev[key] = {"size": size, "repeat": a.repeat, "loadavg_end": os.getloadavg(), "results": report}
        a.out.write_text(json.dumps(prev, indent=2) + "\n")
        print(f"JSON: {a.out} [{key}]")


def cmd_ceiling(a):
    """What a lean Python path reaches on the same files: plain tuples and string keys planned up
    front, ``open().read()`` + one numpy copy per chunk, N loops over a shared iterator (the
    caller is one of them). No volbridge code: this bounds what per-chunk overhead costs."""
    import shutil
    import threading
    from concurrent.futures import ThreadPoolExecutor

    size = load_size(a.dir)
    vol = np.load(a.dir / "vol.npy")
    C = 64
    info = json.loads((a.dir / "src-raw" / "info").read_text())
    root = f"{a.dir}/src-raw/{info['scales'][0]['key']}"

    def run_loops(items, work, nthreads):
        it = iter(items)
        lock = threading.Lock()

        def loop():
            while True:
                with lock:
                    item = next(it, None)
                if item is None:
                    return
                work(item)

        if nthreads == 1:
            return loop()
        with ThreadPoolExecutor(nthreads - 1) as ex:
            fs = [ex.submit(loop) for _ in range(nthreads - 1)]
            loop()
            for f in fs:
                f.result()

    def plan(box):
        (x0, y0, z0), (x1, y1, z1) = box
        cells = []
        for gz in range(z0 // C, (z1 - 1) // C + 1):
            for gy in range(y0 // C, (y1 - 1) // C + 1):
                for gx in range(x0 // C, (x1 - 1) // C + 1):
                    cx, cy, cz = gx * C, gy * C, gz * C
                    lo = (max(x0, cx), max(y0, cy), max(z0, cz))
                    hi = (min(x1, cx + C), min(y1, cy + C), min(z1, cz + C))
                    dst = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, (x0, y0, z0)))
                    src = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, (cx, cy, cz)))
                    cells.append((f"{root}/{cx}-{cx + C}_{cy}-{cy + C}_{cz}-{cz + C}", dst, src))
        return cells

    def read(box, nthreads):
        (x0, y0, z0), (x1, y1, z1) = box
        out = np.zeros((x1 - x0, y1 - y0, z1 - z0), np.uint8, order="F")

        def work(c):
            name, dst, src = c
            with open(name, "rb") as f:
                data = f.read()
            out[dst] = np.frombuffer(data, np.uint8).reshape((C, C, C), order="F")[src]

        run_loops(plan(box), work, nthreads)
        return out

    def write(dst_root, nthreads):
        os.makedirs(f"{dst_root}/s", exist_ok=True)
        data = vol.T

        def work(c):
            x, y, z = c
            b = data[x : x + C, y : y + C, z : z + C].tobytes(order="F")
            name = f"{dst_root}/s/{x}-{x + C}_{y}-{y + C}_{z}-{z + C}"
            tmp = f"{name}.tmp{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.write(b)
            os.replace(tmp, name)

        cells = [(x, y, z) for z in range(0, size, C) for y in range(0, size, C) for x in range(0, size, C)]
        run_loops(cells, work, nthreads)

    threads = [int(t) for t in a.threads.split(",")]
    bx = boxes(size)
    for op in ("read_full", "read_cutout", "write_full"):
        best = {t: (float("inf"), float("inf")) for t in threads}
        for _ in range(a.repeat):
            for t in threads:
                if op == "write_full":
                    d = a.dir / "ceiling-w"
                    shutil.rmtree(d, ignore_errors=True)
                    os.sync()
                    w, c = time.perf_counter(), time.process_time()
                    write(str(d), t)
                    best[t] = min(best[t], (time.perf_counter() - w, time.process_time() - c))
                else:
                    os.sync()
                    w, c = time.perf_counter(), time.process_time()
                    out = read(bx[op], t)
                    best[t] = min(best[t], (time.perf_counter() - w, time.process_time() - c))
                    (x0, y0, z0), (x1, y1, z1) = bx[op]
                    assert np.array_equal(out.T, vol[z0:z1, y0:y1, x0:x1])
        nb = size**3 if op != "read_cutout" else int(np.prod([b - s for s, b in zip(*bx[op])]))
        for t, (w, c) in best.items():
            print(f"lean python {op:11s} raw threads={t}: {nb / w / 1e6:6.0f} MB/s  wall {w * 1e3:6.1f} ms  cpu {c * 1e3:6.1f} ms")


def cmd_loop(a):
    size = load_size(a.dir)
    fn_for = {}
    if a.op == "write_full":
        vol = np.load(a.dir / "vol.npy")

        def make():
            import shutil

            dst = a.dir / f"w-loop-{a.enc}"
            shutil.rmtree(dst, ignore_errors=True)
            return Volbridge().prepare_write(dst, vol, a.enc, size)
    else:

        def make():
            return Volbridge().prepare_read(a.dir / f"src-{a.enc}", boxes(size)[a.op], a.enc)

    import contextlib

    import volbridge.engine.chunked as chunked

    ctx = contextlib.nullcontext()
    if a.lean:
        chunked.run_bounded = _worker_loops
        ctx = _Lean()
    ctx.__enter__()
    prof = None
    if a.pyinstrument:
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005)
    t_end = time.perf_counter() + a.seconds
    n = 0
    busy = 0.0
    while time.perf_counter() < t_end:
        fn = make()
        if prof:
            prof.start()
        t = time.perf_counter()
        fn()
        busy += time.perf_counter() - t
        if prof:
            prof.stop()
        n += 1
    print(f"{n} runs, {busy / n * 1e3:.1f} ms each")
    if prof:
        print(prof.output_text(unicode=False, color=False, show_all=False))
    _ = fn_for


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--size", type=int, default=512)
    p.set_defaults(fn=cmd_prep)
    p = sub.add_parser("one")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--op", required=True)
    p.add_argument("--enc", required=True)
    p.add_argument("--lib", default="volbridge")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--ts-copy", type=int, default=None)
    p.set_defaults(fn=cmd_one)
    p = sub.add_parser("sweep")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--threads", default="1,2,4,8")
    p.add_argument("--ops", default="read_full,read_cutout,write_full")
    p.add_argument("--encodings", default="raw,gzip")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "precomputed_threads.json")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("breakdown")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(fn=cmd_breakdown)
    p = sub.add_parser("breakdown-write")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(fn=cmd_breakdown_write)
    p = sub.add_parser("variants")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--ops", default="read_full,read_cutout,write_full")
    p.add_argument("--encodings", default="raw,gzip")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default="", help="comma list of substrings selecting variants")
    p.add_argument("--tensorstore", action="store_true", help="time tensorstore alongside (raw only)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "precomputed_variants.json")
    p.set_defaults(fn=cmd_variants)
    p = sub.add_parser("ceiling")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(fn=cmd_ceiling)
    p = sub.add_parser("loop")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--op", default="read_cutout")
    p.add_argument("--enc", default="raw")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--pyinstrument", action="store_true")
    p.add_argument("--lean", action="store_true", help="with the worker-loop scheduler and lean helpers patched in")
    p.set_defaults(fn=cmd_loop)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
