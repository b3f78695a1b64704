#!/usr/bin/env python
"""A process's first read: volbridge vs tensorstore, each in a fresh Python process, local disk.

The other benchmarks time warm processes (best of N after an untimed read), which hides what a
script, a CLI call or a freshly started worker pays once: importing the library and loading its
native code on the first read. Here every measurement is a new ``python`` process that imports
the library, opens the volume, and reads it twice; the times of the import, the open, the first
and the second read are reported (medians over ``--repeat`` processes, libraries interleaved,
after one untimed process each that leaves Python's bytecode caches written, as installs have).

Sources: bench_formats' layouts (zarr v3 zstd 64^3 chunks; zarr v3 zstd 32^3 in 128^3 shards;
precomputed sharded raw and gzip, 32^3 in 128^3), written once by tensorstore. Reads: the whole
volume and bench_formats' unaligned cutout, each library in its fast layout (bench_formats'
rules: volbridge and tensorstore's zarr3 read (z, y, x) C order, tensorstore's precomputed
``order='F'``). Every read's checksum is compared with the source's.

    python bench/bench_first_read.py                # 512^3, about 2 minutes
    python bench/bench_first_read.py --size 256 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_formats import Tensorstore, make_layouts, read_boxes  # noqa: E402
from bench_precomputed import em_like  # noqa: E402
from common import source_state, versions, write_result  # noqa: E402

LAYOUTS = ("zarr3", "zarr3_sharded", "precomputed_sharded", "precomputed_sharded_gzip")

# The child: import, open, read twice; prints one JSON line. Boxes are (x, y, z) corners.
CHILD = r"""
import json, sys, time, zlib
t0 = time.perf_counter()
lib, fmt, path, lo, hi = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
if lib == "volbridge":
    import volbridge as vb
    t1 = time.perf_counter()
    a = vb.array(f"{fmt}://{path}", axis_order="zyx")
    sl = tuple(slice(a_, b_) for a_, b_ in zip(lo[::-1], hi[::-1]))
    read = lambda: a[sl]
    as_zyx = lambda out: out
else:
    import numpy as np
    import tensorstore as ts
    t1 = time.perf_counter()
    ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    driver = "zarr3" if fmt == "zarr3" else "neuroglancer_precomputed"
    t = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": path}}, context=ctx, read=True).result()
    if fmt == "zarr3":
        view = t[tuple(slice(a_, b_) for a_, b_ in zip(lo[::-1], hi[::-1]))]
        read = lambda: view.read().result()
        as_zyx = lambda out: out
    else:
        view = t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        read = lambda: view.read(order="F").result()
        as_zyx = lambda out: np.ascontiguousarray(out[..., 0].T)
t2 = time.perf_counter()
first = read()
t3 = time.perf_counter()
import numpy as np
crc = zlib.crc32(np.ascontiguousarray(as_zyx(first)).tobytes())
del first  # as a loop over cutouts would: the second read may reuse the memory
t3b = time.perf_counter()
read()
t4 = time.perf_counter() - (t3b - t3)
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "first": t3 - t2, "second": t4 - t3, "crc": crc}))
"""


# Children may cache bytecode, as a user's Python does (an environment that forbids it would make
# volbridge, pure Python, compile itself at every import, while tensorstore is compiled code).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_child(lib: str, fmt: str, path: Path, lo, hi) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, lib, fmt, str(path), json.dumps(list(lo)), json.dumps(list(hi))], check=False,
                          capture_output=True, text=True, timeout=600, env=_ENV)
    if done.returncode:
        raise RuntimeError(f"{lib} child failed on {path}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", "-n", type=int, default=5, help="fresh processes per library and row (median kept)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "first_read.json")
    ap.add_argument("--volbridge-src", type=Path, default=None,
                    help="import volbridge from this src directory (another checkout, to compare commits)")
    args = ap.parse_args(argv)
    if args.volbridge_src:
        _ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.volbridge_src.resolve()), _ENV.get("PYTHONPATH")]))
    size = args.size
    boxes = read_boxes(size)
    layouts = make_layouts(64, 32, 128)
    vol = em_like((size,) * 3)
    work = Path(tempfile.mkdtemp(prefix="vb-bench-first-"))
    rows, failures = [], []
    print(f"# load average at start: {os.getloadavg()[0]:.2f}; {args.repeat} fresh processes per cell, medians", flush=True)
    try:
        writer = Tensorstore()
        for key in args.layouts.split(","):
            lay = layouts[key]
            path = work / f"src-{key}"
            writer.prepare_write(path, vol, lay)()
            fmt = lay.format
            for lib in ("volbridge", "tensorstore"):  # untimed: writes bytecode caches, warms the page cache
                run_child(lib, fmt, path, *boxes["read_cutout"])
            for op, (lo, hi) in boxes.items():
                want = zlib.crc32(vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].tobytes())
                runs = {"volbridge": [], "tensorstore": []}
                for _ in range(args.repeat):
                    for lib in runs:
                        r = run_child(lib, fmt, path, lo, hi)
                        if r["crc"] != want:
                            failures.append(f"{lib} {key} {op}: wrong voxels")
                        runs[lib].append(r)
                med = {lib: {k: round(1e3 * statistics.median(r[k] for r in rs), 1) for k in ("import", "open", "first", "second")}
                       for lib, rs in runs.items()}
                row = {"layout": key, "operation": op, "ms": med,
                       "first_vb_over_ts": round(med["tensorstore"]["first"] / med["volbridge"]["first"], 2),
                       "second_vb_over_ts": round(med["tensorstore"]["second"] / med["volbridge"]["second"], 2)}
                rows.append(row)
                print(f"{key:26s} {op:12s} " + "  ".join(
                    f"{lib}: import {m['import']:5.0f} open {m['open']:4.0f} first {m['first']:6.1f} second {m['second']:6.1f} ms"
                    for lib, m in med.items()) + f"   ts/vb first {row['first_vb_over_ts']:.2f} second {row['second_vb_over_ts']:.2f}",
                    flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit, dirty = source_state()
    measured = commit
    if args.volbridge_src:  # the checkout whose volbridge the children imported
        measured = subprocess.run(["git", "-C", str(args.volbridge_src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  check=False).stdout.strip() or None
    result = {"benchmark": "first read in a fresh process", "size": size, "repeat": args.repeat,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "dirty": dirty,
              "volbridge_measured_commit": measured,
              "ratios": "first_vb_over_ts, second_vb_over_ts: tensorstore time / volbridge time (> 1: volbridge faster)",
              "volbridge_src": str(args.volbridge_src) if args.volbridge_src else None,
              "versions": versions(["volbridge", "tensorstore", "llvmlite", "numpy"]), "loadavg_end": os.getloadavg(),
              "rows": rows, "failures": failures}
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
