#!/usr/bin/env python
"""Where volbridge's S3 read time goes: a fetch ceiling, a thread sweep, and a loop to profile.

Companion of ``bench_s3.py`` (same SeaweedFS fixture, data generator and volume layout; every run
starts its own server and writes ``src-raw`` and ``src-gzip`` with volbridge). Subcommands::

    python bench/profile_s3.py ceiling     # fetch-only and fetch+copy ceilings vs volbridge, tensorstore
    python bench/profile_s3.py breakdown   # per-chunk cost of each layer of volbridge's read path
    python bench/profile_s3.py latency --delay 0.02   # every request delayed: concurrency vs loops
    python bench/profile_s3.py variants    # proposed src/ changes, patched in-process, vs unpatched
    python bench/profile_s3.py loop --op read_full --enc raw --seconds 15
        # run one volbridge operation repeatedly, e.g. under
        #   py-spy record -r 200 --threads --format raw -o out.txt -- python bench/profile_s3.py loop ...

``ceiling`` compares, for the same 64^3-chunk keys and ``--loops`` requests in flight:

* ``obstore sync``   threads calling ``obstore.get(store, key).bytes()`` (what volbridge's
  ObjectStore does per chunk), the bytes discarded,
* ``obstore async``  one thread, ``asyncio.gather`` of ``get_async`` + ``bytes_async`` under a
  semaphore of the same size,
* ``lean sync``      obstore sync threads that also copy each chunk into a preallocated output
  (the least any design on threads must do),
* ``volbridge``      ``volbridge.array(url)[...]`` with ``VOLBRIDGE_THREADS`` = loops,
* ``tensorstore``    its default, and with ``s3_request_concurrency`` = loops.

Handles are opened untimed (as in bench_s3.py); the obstore and lean variants share one store,
made once. Every timed variant that produces a volume checks it against the source.

Every timing is the best of ``--repeat`` with the variants interleaved (A B C A B C ...), so a
neighbour's load on the shared machine hits every variant alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_s3 import S3Tensorstore, S3Volbridge, seaweedfs, server_cpu  # noqa: E402  (pins BLAS first)
from bench_precomputed import em_like, settle  # noqa: E402

import numpy as np  # noqa: E402

CUT_START = (37, 51, 29)


def boxes(size):
    edge = 300 if size >= 512 else max(8, (size * 300) // 512)
    return {"read_full": ((0, 0, 0), (size,) * 3), "read_cutout": (CUT_START, tuple(s + edge for s in CUT_START))}


def chunk_keys(prefix: str, size: int, box=None) -> list[str]:
    (x0, y0, z0), (x1, y1, z1) = box or ((0, 0, 0), (size,) * 3)
    out = []
    for z in range(z0 // 64 * 64, z1, 64):
        for y in range(y0 // 64 * 64, y1, 64):
            for x in range(x0 // 64 * 64, x1, 64):
                out.append(f"{prefix}/1_1_1/{x}-{x + 64}_{y}-{y + 64}_{z}-{z + 64}")
    return out


def obstore_store(s3):
    from obstore.store import S3Store

    return S3Store(s3.bucket, **s3.store_config(), client_options={"allow_http": True}, retry_config={"max_retries": 0})


def check(got, want) -> None:
    if not np.array_equal(got, want):
        raise AssertionError("result differs from the source data")


def run_threads(n: int, items: list, fn) -> None:
    it = iter(range(len(items)))
    lock = threading.Lock()

    def loop():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            fn(items[i])

    ts = [threading.Thread(target=loop) for _ in range(n - 1)]
    for t in ts:
        t.start()
    loop()
    for t in ts:
        t.join()


def setup(size: int):
    """Start the server context; write src-raw and src-gzip; return (cm, s3, vol)."""
    cm = seaweedfs()
    s3 = cm.__enter__()
    os.environ.update(s3.env)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    vol = em_like((size,) * 3)
    for enc in ("raw", "gzip"):
        S3Volbridge(s3.bucket).prepare_write(f"src-{enc}", vol, enc, size)()
    settle()
    return cm, s3, vol


def best(fn, reps):
    ts = []
    for _ in range(reps):
        settle()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def cmd_ceiling(a):
    import obstore

    cm, s3, vol = setup(a.size)
    try:
        store = obstore_store(s3)
        results = {}
        for op in a.ops.split(","):
            box = boxes(a.size)[op]
            (x0, y0, z0), (x1, y1, z1) = box
            nbytes = (x1 - x0) * (y1 - y0) * (z1 - z0)
            for enc in a.encodings.split(","):
                keys = chunk_keys(f"src-{enc}", a.size, box)
                want = vol[z0:z1, y0:y1, x0:x1]
                variants = {}
                for n in [int(x) for x in a.loops.split(",")]:
                    def sync_fetch(n=n):
                        run_threads(n, keys, lambda k: bytes(obstore.get(store, k).bytes()))

                    async def _async(n):
                        sem = asyncio.Semaphore(n)

                        async def one(k):
                            async with sem:
                                r = await obstore.get_async(store, k)
                                return await r.bytes_async()

                        await asyncio.gather(*(one(k) for k in keys))

                    def async_fetch(n=n):
                        asyncio.run(_async(n))

                    def lean(n=n):
                        import deflate

                        out = np.zeros((x1 - x0, y1 - y0, z1 - z0), np.uint8, order="F")

                        def task(k):
                            r = obstore.get(store, k)
                            data = r.bytes()
                            if enc == "gzip":
                                data = deflate.gzip_decompress(memoryview(data))
                            xs, ys, zs = (tuple(int(v) for v in p.split("-")) for p in k.rsplit("/", 1)[1].split("_"))
                            chunk = np.frombuffer(data, np.uint8).reshape((64, 64, 64), order="F")
                            ix = (max(xs[0], x0), min(xs[1], x1))
                            iy = (max(ys[0], y0), min(ys[1], y1))
                            iz = (max(zs[0], z0), min(zs[1], z1))
                            out[ix[0] - x0 : ix[1] - x0, iy[0] - y0 : iy[1] - y0, iz[0] - z0 : iz[1] - z0] = chunk[
                                ix[0] - xs[0] : ix[1] - xs[0], iy[0] - ys[0] : iy[1] - ys[0], iz[0] - zs[0] : iz[1] - zs[0]]

                        run_threads(n, keys, task)
                        check(out.T, want)

                    def vb_read(n=n):  # untimed: open the handle; timed: the read (and the check)
                        os.environ["VOLBRIDGE_THREADS"] = str(n)
                        fn = S3Volbridge(s3.bucket).prepare_read(f"src-{enc}", box, enc)
                        return lambda: check(fn(), want)

                    variants[f"obstore sync fetch[{n}]"] = sync_fetch
                    variants[f"obstore async fetch[{n}]"] = async_fetch
                    variants[f"lean sync fetch+copy[{n}]"] = lean
                    variants[f"volbridge[{n}]"] = vb_read
                    if a.tensorstore:
                        def ts_read(n=n):
                            t = S3Tensorstore(s3.bucket, s3.endpoint, s3.region)
                            t._ctx = lambda: t.ts.Context({"cache_pool": {"total_bytes_limit": 0},
                                                           "s3_request_concurrency": {"limit": n}})
                            fn = t.prepare_read(f"src-{enc}", box, enc)
                            return lambda: check(t.as_zyx(fn()), want)

                        variants[f"tensorstore[s3_request_concurrency={n}]"] = ts_read
                if a.tensorstore:
                    def ts_default():
                        t = S3Tensorstore(s3.bucket, s3.endpoint, s3.region)
                        fn = t.prepare_read(f"src-{enc}", box, enc)
                        return lambda: check(t.as_zyx(fn()), want)

                    variants["tensorstore[default]"] = ts_default
                times = {k: [] for k in variants}
                cpu = {k: [] for k in variants}
                srv = {k: [] for k in variants}
                for _ in range(a.repeat):
                    for k, prep in variants.items():
                        # variants that open a handle do it here, untimed, and return the timed read
                        fn = prep if k.startswith(("obstore", "lean")) else prep()
                        settle()
                        s0, t, c = server_cpu(s3.pid), time.perf_counter(), time.process_time()
                        fn()
                        times[k].append(time.perf_counter() - t)
                        cpu[k].append(time.process_time() - c)
                        srv[k].append(server_cpu(s3.pid) - s0)
                os.environ.pop("VOLBRIDGE_THREADS", None)
                res = {k: {"mb_s": round(nbytes / min(v) / 1e6, 1), "best_s": round(min(v), 4),
                           "cpu_ms_median": round(1e3 * float(np.median(cpu[k])), 1),
                           "server_cpu_ms_median": round(1e3 * float(np.median(srv[k])), 1)} for k, v in times.items()}
                results[f"{op}/{enc}"] = res
                print(f"\n{op} {enc} ({len(keys)} chunks, {nbytes / 1e6:.1f} MB), best of {a.repeat}")
                for k, r in res.items():
                    print(f"  {k:42s} {r['mb_s']:8.1f} MB/s  cpu {r['cpu_ms_median']:6.1f} ms  server cpu {r['server_cpu_ms_median']:6.1f} ms", flush=True)
        if a.out:
            a.out.write_text(json.dumps({"size": a.size, "repeat": a.repeat, "loadavg_end": os.getloadavg(), "results": results}, indent=2) + "\n")
            print(f"\nJSON: {a.out}")
    finally:
        cm.__exit__(None, None, None)


def cmd_breakdown(a):
    """Per-chunk wall and CPU microseconds of each layer of volbridge's chunk fetch, serially (one
    request in flight), all chunks of the volume: what each layer adds to a bare obstore GET."""
    import obstore
    import volbridge

    cm, s3, vol = setup(a.size)
    try:
        store = obstore_store(s3)
        out = {}
        for enc in ("raw", "gzip"):
            keys = chunk_keys(f"src-{enc}", a.size)
            arr = volbridge.array(f"precomputed://s3://{s3.bucket}/src-{enc}")
            vstore = arr.volume.store
            layout = arr.volume.dataset.layout(0)
            rel = [k.split("/", 1)[1] for k in keys]
            cells = list(layout.grid.cells(arr.volume.meta.scales[0].bounds))

            def get_bytes(k):
                r = obstore.get(store, k)
                return r.bytes()

            def get_copy(k):
                r = obstore.get(store, k)
                return bytes(r.bytes())

            def get_copy_meta(k):
                r = obstore.get(store, k)
                m = r.meta
                d = r.bytes()
                return bytes(d), m.get("e_tag"), r.attributes

            nb = 64**3 if enc == "raw" else None

            def get_range(k):  # one call instead of two (raw only: the size is known)
                return obstore.get_range(store, k, start=0, end=nb)

            steps = {
                "obstore get+bytes()": (get_bytes, keys),
                **({"obstore get_range (one call)": (get_range, keys)} if nb else {}),
                "+ bytes() copy": (get_copy, keys),
                "+ .meta, .attributes": (get_copy_meta, keys),
                "volbridge ObjectStore.get_transient": (vstore.get_transient, rel),
                "volbridge _fetch_decode (get_first + decode)": (lambda c: arr.volume._fetch_decode(layout, c), cells),
            }
            res = {}
            for name, (fn, items) in steps.items():
                best = None
                for _ in range(a.repeat):
                    t, c = time.perf_counter(), time.process_time()
                    for it in items:
                        fn(it)
                    w, cp = (time.perf_counter() - t) / len(items) * 1e6, (time.process_time() - c) / len(items) * 1e6
                    if best is None or w < best[0]:
                        best = (w, cp)
                res[name] = {"wall_us": round(best[0], 1), "cpu_us": round(best[1], 1)}
            out[enc] = res
            print(f"\n{enc}: per chunk, serial, best of {a.repeat}")
            for k, v in res.items():
                print(f"  {k:48s} wall {v['wall_us']:8.1f} us   cpu {v['cpu_us']:8.1f} us", flush=True)
        if a.out:
            a.out.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        cm.__exit__(None, None, None)


def _zero_copy_get_transient(self, key):
    """Prototype of ObjectStore.get_transient without the ``bytes(...)`` copy: the obstore
    ``Bytes`` buffer itself (read-only, buffer protocol) goes to the codec. Same checks."""
    import obstore

    from volbridge.errors import StoreError
    from volbridge.kv.object_store import _NOT_FOUND, _short

    def fetch():
        result = obstore.get(self.store, key)
        meta = result.meta
        data = result.bytes()
        size = meta.get("size")
        if size is not None and len(data) != size:
            raise ConnectionError(f"short body: {len(data)} of {size} bytes")
        return data, result.attributes

    try:
        data, attributes = self._call("GET", key, fetch)
    except _NOT_FOUND:
        return None
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"GET {self._where(key)} failed: {_short(e)}") from e
    self.stats.add(bytes_read=len(data))
    encoding = (attributes or {}).get("Content-Encoding") or (attributes or {}).get("content_encoding")
    if encoding and encoding.lower() not in ("identity", ""):
        data = self._decode_content(key, encoding, data)
    return data


def cmd_variants(a):
    """Prototypes of proposed changes to src/, patched in this process only, interleaved with
    the unpatched code and tensorstore: ``zero-copy`` (ObjectStore.get_transient returns obstore's
    buffer instead of copying it into ``bytes``), and ``loops=N`` (VOLBRIDGE_THREADS for reads)."""
    from volbridge.engine import parallel as vb_parallel
    from volbridge.kv.object_store import ObjectStore

    cm, s3, vol = setup(a.size)
    original = ObjectStore.__dict__.get("get_transient")  # None: inherited from KVStore (calls get)

    def restore():
        if original is not None:
            ObjectStore.get_transient = original
        elif "get_transient" in ObjectStore.__dict__:
            del ObjectStore.get_transient

    try:
        os.environ["VOLBRIDGE_THREADS"] = str(max(int(x) for x in a.loops.split(",")))
        vb_parallel._pool = None  # sized max(32, threads) at creation
        results = {}
        for op in a.ops.split(","):
            box = boxes(a.size)[op]
            (x0, y0, z0), (x1, y1, z1) = box
            nbytes = (x1 - x0) * (y1 - y0) * (z1 - z0)
            want = vol[z0:z1, y0:y1, x0:x1]
            for enc in a.encodings.split(","):
                variants = {}
                for n in [int(x) for x in a.loops.split(",")]:
                    for zc in (False, True):
                        def vb_read(n=n, zc=zc):
                            os.environ["VOLBRIDGE_THREADS"] = str(n)
                            restore()
                            if zc:
                                ObjectStore.get_transient = _zero_copy_get_transient
                            fn = S3Volbridge(s3.bucket).prepare_read(f"src-{enc}", box, enc)
                            return lambda: check(fn(), want)

                        variants[f"volbridge loops={n}" + (" zero-copy" if zc else "")] = vb_read

                def ts_read():
                    t = S3Tensorstore(s3.bucket, s3.endpoint, s3.region)
                    fn = t.prepare_read(f"src-{enc}", box, enc)
                    return lambda: check(t.as_zyx(fn()), want)

                variants["tensorstore[default]"] = ts_read
                times = {k: [] for k in variants}
                cpu = {k: [] for k in variants}
                for _ in range(a.repeat):
                    for k, prep in variants.items():
                        fn = prep()
                        settle()
                        t, c = time.perf_counter(), time.process_time()
                        fn()
                        times[k].append(time.perf_counter() - t)
                        cpu[k].append(time.process_time() - c)
                res = {k: {"mb_s": round(nbytes / min(v) / 1e6, 1), "best_s": round(min(v), 4),
                           "cpu_ms_median": round(1e3 * float(np.median(cpu[k])), 1)} for k, v in times.items()}
                results[f"{op}/{enc}"] = res
                print(f"\n{op} {enc}, best of {a.repeat}")
                for k, r in res.items():
                    print(f"  {k:32s} {r['mb_s']:8.1f} MB/s  cpu {r['cpu_ms_median']:6.1f} ms", flush=True)
        if a.out:
            a.out.write_text(json.dumps({"size": a.size, "repeat": a.repeat, "loadavg_end": os.getloadavg(),
                                         "results": results}, indent=2) + "\n")
            print(f"\nJSON: {a.out}")
    finally:
        restore()
        os.environ.pop("VOLBRIDGE_THREADS", None)
        cm.__exit__(None, None, None)


_PROXY = """
import sys
sys.path.insert(0, sys.argv[1])
from servers import FaultProxy
p = FaultProxy(sys.argv[2])
p.set(delay_rate=1.0, delay_s=float(sys.argv[3]))
print(p.url, flush=True)
sys.stdin.read()  # until the parent closes our stdin
"""


def cmd_latency(a):
    """Reads through a proxy (the tests' FaultProxy, in its own process) that delays every request
    by ``--delay`` seconds: a stand-in for a remote object store, where request concurrency, not
    CPU, decides the speed. Compares volbridge at several ``VOLBRIDGE_THREADS`` with tensorstore.
    ``warm connections``: the handle read once (untimed) before, so its connection pool is open, as
    tensorstore's process-wide HTTP transport is after the first open."""
    import subprocess

    cm, s3, vol = setup(a.size)
    proxy = subprocess.Popen([sys.executable, "-c", _PROXY, str(HERE.parent / "tests"), s3.endpoint, str(a.delay)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proxy.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError("the delaying proxy did not start")
        os.environ["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL_S3"] = url
        from volbridge.engine import parallel as vb_parallel

        # The shared pool is sized once, max(32, VOLBRIDGE_THREADS) workers: make room for the most loops.
        os.environ["VOLBRIDGE_THREADS"] = str(max(int(x) for x in a.loops.split(",")))
        vb_parallel._pool = None
        results = {}
        warm = {int(x) for x in a.warm.split(",") if x}
        for op in a.ops.split(","):
            box = boxes(a.size)[op]
            (x0, y0, z0), (x1, y1, z1) = box
            nbytes = (x1 - x0) * (y1 - y0) * (z1 - z0)
            want = vol[z0:z1, y0:y1, x0:x1]
            for enc in a.encodings.split(","):
                variants = {}
                for n in [int(x) for x in a.loops.split(",")]:
                    def vb_read(n=n):
                        os.environ["VOLBRIDGE_THREADS"] = str(n)
                        fn = S3Volbridge(s3.bucket).prepare_read(f"src-{enc}", box, enc)
                        return lambda: check(fn(), want)

                    def vb_read_warm(n=n):  # the same, after one untimed read on the handle: its connections are open
                        os.environ["VOLBRIDGE_THREADS"] = str(n)
                        fn = S3Volbridge(s3.bucket).prepare_read(f"src-{enc}", box, enc)
                        fn()
                        return lambda: check(fn(), want)

                    variants[f"volbridge[{n}]"] = vb_read
                    if n in warm:
                        variants[f"volbridge[{n}] warm connections"] = vb_read_warm

                def ts_read():
                    t = S3Tensorstore(s3.bucket, url, s3.region)
                    fn = t.prepare_read(f"src-{enc}", box, enc)
                    return lambda: check(t.as_zyx(fn()), want)

                variants["tensorstore[default]"] = ts_read
                times = {k: [] for k in variants}
                for _ in range(a.repeat):
                    for k, prep in variants.items():
                        fn = prep()
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
                os.environ.pop("VOLBRIDGE_THREADS", None)
                res = {k: {"mb_s": round(nbytes / min(v) / 1e6, 1), "best_s": round(min(v), 4)} for k, v in times.items()}
                results[f"{op}/{enc}"] = res
                print(f"\n{op} {enc}, every request delayed {a.delay * 1e3:.0f} ms, best of {a.repeat}")
                for k, r in res.items():
                    print(f"  {k:28s} {r['mb_s']:8.1f} MB/s  {r['best_s'] * 1e3:8.1f} ms", flush=True)
        if a.out:
            a.out.write_text(json.dumps({"size": a.size, "delay_s": a.delay, "repeat": a.repeat, "results": results}, indent=2) + "\n")
            print(f"\nJSON: {a.out}")
    finally:
        proxy.stdin.close()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        cm.__exit__(None, None, None)


def cmd_loop(a):
    cm, s3, vol = setup(a.size)
    try:
        box = boxes(a.size)[a.op]
        n = 0
        t0 = time.perf_counter()
        print(f"# looping {a.op} {a.enc} for {a.seconds}s (pid {os.getpid()})", flush=True)
        while time.perf_counter() - t0 < a.seconds:
            if a.op == "write_full":
                S3Volbridge(s3.bucket).prepare_write(f"w-{n}", vol, a.enc, a.size)()
            else:
                S3Volbridge(s3.bucket).prepare_read(f"src-{a.enc}", box, a.enc)()
            n += 1
        dt = time.perf_counter() - t0
        nbytes = vol.nbytes if a.op != "read_cutout" else (boxes(a.size)[a.op][1][0] - CUT_START[0]) ** 3
        print(f"# {n} iterations, {n * nbytes / dt / 1e6:.1f} MB/s average", flush=True)
    finally:
        cm.__exit__(None, None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--loops", default="3,8,32")
    c.add_argument("--ops", default="read_full")
    c.add_argument("--encodings", default="raw,gzip")
    c.add_argument("--no-tensorstore", dest="tensorstore", action="store_false")
    b = sub.add_parser("breakdown")
    v = sub.add_parser("variants")
    v.add_argument("--loops", default="3,32")
    v.add_argument("--ops", default="read_full,read_cutout")
    v.add_argument("--encodings", default="raw")
    lat = sub.add_parser("latency")
    lat.add_argument("--delay", type=float, default=0.02, help="seconds added to every request (default 0.02)")
    lat.add_argument("--loops", default="3,8,16,32,64")
    lat.add_argument("--ops", default="read_full")
    lat.add_argument("--encodings", default="raw")
    lat.add_argument("--warm", default="32,64", help="loops for which a handle with open connections is timed too")
    l = sub.add_parser("loop")
    l.add_argument("--op", default="read_full", choices=("read_full", "read_cutout", "write_full"))
    l.add_argument("--enc", default="raw", choices=("raw", "gzip"))
    l.add_argument("--seconds", type=float, default=15)
    for p in (c, b, l, lat, v):
        p.add_argument("--size", type=int, default=256)
        p.add_argument("--repeat", "-n", type=int, default=7)
        p.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    {"ceiling": cmd_ceiling, "breakdown": cmd_breakdown, "latency": cmd_latency, "variants": cmd_variants, "loop": cmd_loop}[a.cmd](a)


if __name__ == "__main__":
    main()
