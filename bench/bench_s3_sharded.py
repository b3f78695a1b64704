#!/usr/bin/env python
"""Sharded volumes over S3: volbridge vs tensorstore, interleaved in one process on one SeaweedFS.

bench_s3.py times unsharded precomputed and zarr v3; connectomics volumes in the cloud are mostly
sharded. Here bench_formats' sharded layouts (zarr v3 zstd and precomputed raw / gzip, 32^3 chunks
in 128^3 shards) are written once by tensorstore into SeaweedFS (``weed mini`` on loopback, the
tests' fixture) and read by both libraries: the whole volume and bench_formats' unaligned cutout
(scaled to the volume). Each read is checked against the source; best wall time of ``--repeat``
and median CPU of this process. Each library opens its handle fresh per repetition, untimed
(tensorstore with a zero-byte cache pool), as in bench_s3.

    python bench/bench_s3_sharded.py                  # 512^3, about 2 minutes
    python bench/bench_s3_sharded.py --size 256 --repeat 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_formats import Tensorstore, Volbridge, make_layouts, read_boxes  # noqa: E402  (pins BLAS first)
from bench_precomputed import em_like  # noqa: E402
from bench_s3 import seaweedfs  # noqa: E402
from common import source_state, versions, write_result  # noqa: E402

import numpy as np  # noqa: E402

LAYOUTS = ("zarr3_sharded", "precomputed_sharded", "precomputed_sharded_gzip")


class S3Tensorstore(Tensorstore):
    def __init__(self, bucket: str, endpoint: str, region: str):
        super().__init__()
        self.bucket, self.endpoint, self.region = bucket, endpoint, region

    def kvstore(self, path) -> dict:
        return {"driver": "s3", "bucket": self.bucket, "path": str(path).rstrip("/") + "/", "endpoint": self.endpoint,
                "aws_region": self.region, "aws_credentials": {"type": "environment"}}


class S3Volbridge(Volbridge):
    def __init__(self, bucket: str):
        super().__init__()
        self.bucket = bucket

    def prepare_read(self, path, box, lay):
        return super().prepare_read(f"{lay.format}://s3://{self.bucket}/{path}", box, lay)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", "-n", type=int, default=6)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "s3_sharded.json")
    args = ap.parse_args(argv)
    size = args.size
    boxes = read_boxes(size)
    layouts = make_layouts(64, 32, 128)
    vol = em_like((size,) * 3)
    rows, failures = [], []
    load_start = os.getloadavg()
    with seaweedfs() as s3:
        os.environ.update(s3.env)
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
        ts = S3Tensorstore(s3.bucket, s3.endpoint, s3.region)
        vb = S3Volbridge(s3.bucket)
        for key in args.layouts.split(","):
            lay = layouts[key]
            t0 = time.perf_counter()
            ts.prepare_write(key, vol, lay)()
            print(f"# {key}: written by tensorstore in {time.perf_counter() - t0:.1f}s", flush=True)
            for op, (lo, hi) in boxes.items():
                want = vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
                res = {"volbridge": [], "tensorstore": []}
                for _ in range(args.repeat):
                    for name, lib in (("volbridge", vb), ("tensorstore", ts)):
                        f = lib.prepare_read(key, (lo, hi), lay)
                        c, w = time.process_time(), time.perf_counter()
                        got = f()
                        res[name].append((time.perf_counter() - w, time.process_time() - c))
                        if not np.array_equal(np.asarray(lib.as_zyx(got)), want):
                            failures.append(f"{name} {key} {op}: wrong voxels")
                best = {k: min(x[0] for x in v) for k, v in res.items()}
                cpu = {k: statistics.median(x[1] for x in v) for k, v in res.items()}
                row = {"layout": key, "operation": op, "best_ms": {k: round(1e3 * v, 1) for k, v in best.items()},
                       "cpu_ms_median": {k: round(1e3 * v, 1) for k, v in cpu.items()},
                       "vb_over_ts": round(best["tensorstore"] / best["volbridge"], 2)}
                rows.append(row)
                print(f"{key:26s} {op:12s} volbridge {row['best_ms']['volbridge']:7.1f} ms (cpu {row['cpu_ms_median']['volbridge']:6.1f})"
                      f"  tensorstore {row['best_ms']['tensorstore']:7.1f} ms (cpu {row['cpu_ms_median']['tensorstore']:6.1f})"
                      f"  vb/ts {row['vb_over_ts']:.2f}", flush=True)
    commit, dirty = source_state()
    result = {"benchmark": "sharded volumes over S3 (SeaweedFS, loopback)", "size": size, "repeat": args.repeat,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "dirty": dirty,
              "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "versions": versions(["volbridge", "tensorstore", "numpy"]),
              "ratios": "vb_over_ts: tensorstore time / volbridge time (> 1: volbridge faster)", "rows": rows,
              "failures": failures}
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
