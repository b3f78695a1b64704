#!/usr/bin/env python
"""Sharded volumes over S3: volbridge vs tensorstore, interleaved in one process on one SeaweedFS.

bench_s3.py times unsharded precomputed and zarr v3; connectomics volumes in the cloud are mostly
sharded. Here bench_formats' sharded layouts (zarr v3 zstd and precomputed raw / gzip, 32^3 chunks
in 128^3 shards) are written once by tensorstore into SeaweedFS (``weed mini`` on loopback, the
tests' fixture) and read by both libraries: the whole volume and bench_formats' unaligned cutout
(scaled to the volume). ``write_full`` writes the whole volume into a fresh prefix, read back by
the other library once. Each round runs the libraries in its own seeded order; a row reports the
best wall time, the paired ratio (median over rounds of tensorstore / volbridge, bootstrap 90 %
interval, as bench_s3), median CPU of this process and of the server. Each library opens its
handle fresh per repetition, untimed (tensorstore with a zero-byte cache pool), as in bench_s3.

    python bench/bench_s3_sharded.py                  # 512^3, about 4 minutes
    python bench/bench_s3_sharded.py --size 256 --repeat 4 --ops write_full
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_formats import Tensorstore, Volbridge, make_layouts, precomputed_info, read_boxes  # noqa: E402  (pins BLAS first)
from bench_precomputed import em_like  # noqa: E402
from bench_s3 import paired_ratio, seaweedfs, server_cpu  # noqa: E402
from common import source_state, versions, write_result  # noqa: E402

import numpy as np  # noqa: E402

LAYOUTS = ("zarr3_sharded", "precomputed_sharded", "precomputed_sharded_gzip")
OPS = ("read_full", "read_cutout", "write_full")


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

    def url(self, path) -> str:
        return f"s3://{self.bucket}/{path}"

    def prepare_read(self, path, box, lay):
        return super().prepare_read(f"{lay.format}://{self.url(path)}", box, lay)

    def prepare_write(self, path, vol, lay):
        if lay.format == "precomputed" and lay.codec != "raw":
            # create() has no gzip data encoding for shards: an info written beforehand (untimed)
            from volbridge.kv.url import open_store

            open_store(self.url(path)).put("info", json.dumps(precomputed_info(vol.shape[0], lay)).encode())
            arr = self.vb.array(f"precomputed://{self.url(path)}", mode="r+")

            def go():
                arr[...] = vol

            return go
        return super().prepare_write(self.url(path), vol, lay)


def delete_prefix(url: str) -> None:
    from volbridge.kv.url import open_store

    store = open_store(url)
    store.delete_many(list(store.list()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", "-n", type=int, default=6)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)}")
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
        libs = {"volbridge": S3Volbridge(s3.bucket), "tensorstore": S3Tensorstore(s3.bucket, s3.endpoint, s3.region)}
        for key in args.layouts.split(","):
            lay = layouts[key]
            t0 = time.perf_counter()
            libs["tensorstore"].prepare_write(key, vol, lay)()
            print(f"# {key}: written by tensorstore in {time.perf_counter() - t0:.1f}s", flush=True)
            for op in args.ops.split(","):
                lo, hi = boxes.get(op, ((0, 0, 0), (size,) * 3))
                want = vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
                res = {name: [] for name in libs}
                order = random.Random(f"{key} {op}")  # each round its own order: no position bias
                for rep in range(args.repeat):
                    for name in order.sample(list(libs), len(libs)):
                        lib = libs[name]
                        dst = f"w-{key}-{name}-{rep}"
                        f = lib.prepare_write(dst, vol, lay) if op == "write_full" else lib.prepare_read(key, (lo, hi), lay)
                        s0, c, w = server_cpu(s3.pid), time.process_time(), time.perf_counter()
                        got = f()
                        res[name].append((time.perf_counter() - w, time.process_time() - c, server_cpu(s3.pid) - s0))
                        if op == "write_full":
                            if rep == 0:  # read back by the other library
                                other = libs["tensorstore" if name == "volbridge" else "volbridge"]
                                got = other.as_zyx(other.prepare_read(dst, ((0, 0, 0), (size,) * 3), lay)())
                            delete_prefix(f"s3://{s3.bucket}/{dst}")
                        else:
                            got = lib.as_zyx(got)
                        if got is not None and not np.array_equal(np.asarray(got), want):
                            failures.append(f"{name} {key} {op}: wrong voxels")
                        got = None
                best = {k: min(x[0] for x in v) for k, v in res.items()}
                med = {k: {what: statistics.median(x[i] for x in v) for i, what in ((1, "cpu"), (2, "server"))}
                       for k, v in res.items()}
                paired = paired_ratio([x[0] for x in res["volbridge"]], [x[0] for x in res["tensorstore"]])
                row = {"layout": key, "operation": op, "best_ms": {k: round(1e3 * v, 1) for k, v in best.items()},
                       "cpu_ms_median": {k: round(1e3 * v["cpu"], 1) for k, v in med.items()},
                       "server_cpu_ms_median": {k: round(1e3 * v["server"], 1) for k, v in med.items()},
                       "vb_over_ts": round(best["tensorstore"] / best["volbridge"], 2),
                       "paired_vb_over_ts": paired,
                       "seconds": {k: [round(x[0], 4) for x in v] for k, v in res.items()}}
                rows.append(row)
                line = "  ".join(f"{k} {row['best_ms'][k]:7.1f} ms (cpu {row['cpu_ms_median'][k]:6.1f},"
                                 f" server {row['server_cpu_ms_median'][k]:6.1f})" for k in libs)
                print(f"{key:26s} {op:12s} {line}  vb/ts best {row['vb_over_ts']:.2f},"
                      f" paired {paired['median']:.2f} [{paired['ci90'][0]:.2f}, {paired['ci90'][1]:.2f}]", flush=True)
    commit, dirty = source_state()
    result = {"benchmark": "sharded volumes over S3 (SeaweedFS, loopback)", "size": size, "repeat": args.repeat,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "dirty": dirty,
              "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "versions": versions(["volbridge", "tensorstore", "numpy"]),
              "ratios": "vb_over_ts: best tensorstore time / best volbridge time; paired_vb_over_ts: median over rounds"
                        " of tensorstore / volbridge with a bootstrap 90 % interval (> 1: volbridge faster)", "rows": rows,
              "failures": failures}
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
