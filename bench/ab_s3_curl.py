#!/usr/bin/env python
"""volbridge's chunk GETs over libcurl (kv.curl_get) against the same reads over obstore, and
tensorstore, interleaved in one process on one SeaweedFS (loopback), so load hits all alike.

    python bench/ab_s3_curl.py [--repeat 6] [--out bench/results/s3_curl.json]   # about 60 s

Sources: bench_s3's 256^3 EM-like volume as precomputed raw and gzip (Content-Encoding), and as
zarr v3 raw and zstd, 64^3 chunks; reads of the whole volume and of a 150^3 cutout at (37, 51, 29).
Every read is checked against the source. Columns: best wall time of ``--repeat``, median
client CPU (this process, all threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_s3 import S3Tensorstore, S3TensorstoreZarr  # noqa: E402  (pins BLAS first)
from profile_s3 import setup  # noqa: E402

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", "-n", type=int, default=6)
    ap.add_argument("--out", default=str(HERE / "results" / "s3_curl.json"))
    a = ap.parse_args(argv)
    import volbridge as vb

    cm, s3, vol = setup(256)  # vol is (z, y, x)
    rows = []
    try:
        for enc in ("raw", "zstd"):
            vb.create(f"zarr3://s3://{s3.bucket}/z-{enc}", shape=vol.shape, dtype="uint8", chunk_shape=(64,) * 3,
                      compression="zstd" if enc == "zstd" else None)[...] = vol
        boxes = {"read_full": ((0, 0, 0), (256,) * 3), "read_cutout 150^3": ((37, 51, 29), (187, 201, 179))}
        sources = (("precomputed", "raw", f"precomputed://s3://{s3.bucket}/src-raw", S3Tensorstore, "src-raw"),
                   ("precomputed", "gzip", f"precomputed://s3://{s3.bucket}/src-gzip", S3Tensorstore, "src-gzip"),
                   ("zarr3", "raw", f"s3://{s3.bucket}/z-raw", S3TensorstoreZarr, "z-raw"),
                   ("zarr3", "zstd", f"s3://{s3.bucket}/z-zstd", S3TensorstoreZarr, "z-zstd"))
        for fmt, enc, url, ts_adapter, prefix in sources:
            with_curl = vb.array(url, axis_order="zyx")
            os.environ["VOLBRIDGE_CURL"] = "0"
            with_obstore = vb.array(url, axis_order="zyx")
            del os.environ["VOLBRIDGE_CURL"]
            assert with_curl.volume.store.getter is not None and with_obstore.volume.store.getter is None
            ts = ts_adapter(s3.bucket, s3.endpoint, s3.region)
            for op, (lo, hi) in boxes.items():
                xyz = tuple(slice(a, b) for a, b in zip(lo, hi))
                sl = want_sl = xyz[::-1]  # both opened (z, y, x), as vol is
                want = vol[want_sl]
                fns = {"curl": lambda c=with_curl, s=sl: c[s], "obstore": lambda o=with_obstore, s=sl: o[s],
                       "tensorstore": ts.prepare_read(prefix, (lo, hi), enc)}
                ts_zyx = ts.as_zyx
                for name, f in fns.items():
                    got = f()
                    got = ts_zyx(got) if name == "tensorstore" else got
                    if not np.array_equal(np.squeeze(got), want):
                        raise AssertionError(f"{name} read of {fmt} {enc} {op} differs from the source")
                res = {k: [] for k in fns}
                for _ in range(a.repeat):
                    for k, f in fns.items():
                        c, w = time.process_time(), time.perf_counter()
                        f()
                        res[k].append((time.perf_counter() - w, time.process_time() - c))
                best = {k: min(x[0] for x in v) for k, v in res.items()}
                cpu = {k: statistics.median(x[1] for x in v) for k, v in res.items()}
                row = {"format": fmt, "encoding": enc, "operation": op,
                       "best_ms": {k: round(1e3 * v, 1) for k, v in best.items()},
                       "cpu_ms_median": {k: round(1e3 * v, 1) for k, v in cpu.items()},
                       "curl_over_tensorstore": round(best["tensorstore"] / best["curl"], 2),
                       "obstore_over_tensorstore": round(best["tensorstore"] / best["obstore"], 2)}
                rows.append(row)
                print(f"{fmt:11s} {enc:4s} {op:17s} " + "  ".join(
                    f"{k} {row['best_ms'][k]:6.1f} ms (cpu {row['cpu_ms_median'][k]:5.1f})" for k in fns)
                    + f"   vs ts: curl {row['curl_over_tensorstore']:.2f}, obstore {row['obstore_over_tensorstore']:.2f}",
                    flush=True)
    finally:
        cm.__exit__(None, None, None)
    out = {"benchmark": "s3 GET paths", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeat": a.repeat,
           "loadavg_end": os.getloadavg(), "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("JSON:", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
