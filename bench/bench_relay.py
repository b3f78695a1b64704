#!/usr/bin/env python
"""The relay (issue 5): BossDB cutouts through one and two relay tiers, against reading the same
cutouts straight from local disk with volbridge and tensorstore.

One run, one data set, every reader: a ``(z, y, x) = 80 x 2048 x 2048`` uint8 EM-like volume
(bench_precomputed's generator, made on a 1024^2 tile and laid out four times with different
shifts, so no two cutouts are alike) written by volbridge as neuroglancer precomputed, ``raw``,
``(16, 64, 64)`` chunks, resolution (40, 4, 4). Every request is a ``512 x 512 x 16`` cutout
(``16 x 512 x 512`` voxels, 4 MiB) aligned to 512 in x and y and to 16 in z, so it is exactly one
BossDB cuboid. The last z slab is kept for warm-up requests; the other cutouts are shuffled and
split into two disjoint sets, S1 and S2.

Two relays run as separate ``python -m volbridge serve`` processes (log level warning, one memory
cache tier of ``--memory-bytes``):

* relay A serves the volume from disk (``precomputed:///...``),
* relay B serves ``bossdb://<relay A>/...`` (the daisy chain: B's cuboids are A's cutouts).

Clients speak the BossDB dialect: ``GET /v1/cutout/<c>/<e>/<ch>/0/x0:x1/y0:y1/z0:z1/`` with
``Accept: application/blosc``, over one persistent ``http.client`` connection per client thread,
and decode the body (``imagecodecs.blosc_decode``) into a (z, y, x) array. Every response of every
phase is compared with the source array (a fast but wrong answer fails the run). Latencies are to
the decoded array; ``http_ms`` (to the last body byte) is in the JSON too.

Latency, one request at a time (p50, p99 and mean; with ~32 samples p99 is about the maximum):

* ``1 tier cold``     S1 through A, each cutout for the first time (A's cache empty for them),
* ``2 tiers cold``    S2 through B (neither B nor A has seen them),
* ``1 tier warm``     S1 through A again, ``--warm-passes`` times,
* ``2 tiers warm``    S2 through B again (B answers from its cache),
* ``2 tiers B cold, A warm``  S1 through B (B misses, A hits),
* ``direct volbridge`` / ``direct tensorstore``  S1 read from disk in this process:
  ``volbridge.array(path)[z0:z1, y0:y1, x0:x1]`` and tensorstore ``neuroglancer_precomputed`` on a
  ``file`` kvstore with a zero-byte cache pool (as in bench_precomputed), handles opened untimed.

* ``http floor``     S1 from a third process running the relay's HTTP stack (Starlette + uvicorn,
  the same settings as ``RelayServer``) that answers the same URLs with blosc bodies encoded at
  start-up: what shipping a 4 MiB cutout costs on this stack, with no cache lookup, assembly or
  encoding. Relay minus floor is the relay's own work per request.

The warm cases, the direct reads and the floor are interleaved request by request (A, vb, ts, B,
floor, A, ...), so a neighbour's load hits all alike. "Cold" means the relay's cache is cold; the
chunk files are in the page cache for every reader (they were just written).

Throughput, ``--clients`` (16) threads of this process for ``--seconds`` each, warm: relay A over
S1, volbridge and tensorstore over S1 (16 threads sharing one handle), relay B over S2, the floor
over S1. MB/s are 10^6 voxel bytes per second (uncompressed), requests/s, the p50 latency under
that load, and per request the user and system CPU of this process and of the servers and the
servers' minor page faults (a fresh 4 MiB buffer touched costs 1024). Clients and relays share the
machine's cores; the relay's clients also pay for HTTP and blosc decoding, which a reader of the
local disk does not.

Targets (issue 5): warm one-tier p50 under 20 ms on loopback; warm one-tier relay throughput within
2x of reading the same cutouts straight from local disk (direct MB/s / relay MB/s <= 2).

``breakdown``: the same warm read in this process, without HTTP, on a ``Relay`` built from the same
config (``RelaySource.read`` through the memory cache, the cuboid lookups alone, and the blosc
encode), so the HTTP + Starlette + uvicorn share is the warm HTTP p50 minus those.

``--profile`` also samples relay A with py-spy while ``--clients`` clients read warm S1 (all
non-idle threads, then GIL holders only), and one client alone, writes the raw collapsed stacks
(and an SVG flame graph of the 16-client run) next to ``--profile-prefix`` and puts the top
functions into the JSON.

Usage::

    python bench/bench_relay.py             # 80 x 2048^2, about 45 s on 2 cores (longer under load)
    python bench/bench_relay.py --quick     # 80 x 1024^2, fewer requests, under a minute
    python bench/bench_relay.py --profile   # plus py-spy samples of relay A (about 45 s more)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os

# BLAS is only used to generate the data (see bench_precomputed). Set before numpy is imported.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_precomputed import em_like, settle  # noqa: E402
import common  # noqa: E402  (bench/common.py)

import numpy as np  # noqa: E402

CHANNEL = "bench/em/image"
CUT = (16, 512, 512)  # z, y, x
CHUNK = (16, 64, 64)  # z, y, x
TARGET_WARM_P50_MS = 20.0
TARGET_DIRECT_OVER_RELAY = 2.0


# -- data ---------------------------------------------------------------------------------------
def make_volume(shape: tuple[int, int, int], tile: int = 1024) -> np.ndarray:
    """EM-like (z, y, x) uint8: one em_like tile of ``tile`` x ``tile``, laid out over y and x,
    each copy rolled by a different, non-aligned shift (so every aligned cutout differs)."""
    nz, ny, nx = shape
    ty, tx = min(ny, tile), min(nx, tile)
    base = em_like((nz, ty, tx), seed=0)
    out = np.empty(shape, np.uint8)
    k = 0
    for y0 in range(0, ny, ty):
        for x0 in range(0, nx, tx):
            part = base if k == 0 else np.roll(base, (3 * k, 97 * k + 13 * k * k, 211 * k), axis=(0, 1, 2))
            out[:, y0 : y0 + ty, x0 : x0 + tx] = part[:, : ny - y0, : nx - x0]
            k += 1
    return out


def regions_of(shape: tuple[int, int, int]) -> tuple[list, list]:
    """(regions, warm-up regions): every aligned cutout (z0, y0, x0), the last z slab apart."""
    nz, ny, nx = shape
    slabs = list(range(0, nz - CUT[0] + 1, CUT[0]))
    cells = [(z, y, x) for z in slabs for y in range(0, ny - CUT[1] + 1, CUT[1]) for x in range(0, nx - CUT[2] + 1, CUT[2])]
    warm = [c for c in cells if c[0] == slabs[-1]]
    return [c for c in cells if c[0] != slabs[-1]], warm


def sl(r):
    z, y, x = r
    return np.s_[z : z + CUT[0], y : y + CUT[1], x : x + CUT[2]]


# -- processes and clients ----------------------------------------------------------------------
def proc_stat(pid: int | None = None) -> dict:
    """User and system CPU seconds (all threads) and minor page faults of a process so far
    (``None``: this process)."""
    if pid is None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"user_s": ru.ru_utime, "sys_s": ru.ru_stime, "minflt": float(ru.ru_minflt)}
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return {"user_s": int(f[11]) / tck, "sys_s": int(f[12]) / tck, "minflt": float(f[7])}
    except (OSError, IndexError, ValueError):
        return {"user_s": float("nan"), "sys_s": float("nan"), "minflt": float("nan")}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    st = proc_stat(pid)
    return st["user_s"] + st["sys_s"]


def stat_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


class ServerProcess:
    """A server process that prints "listening on http://HOST:PORT" when ready and answers /ping/."""

    def __init__(self, name: str, work: Path, cmd: list[str], timeout: float = 60):
        self.name = name
        self.log = work / f"{name}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, cwd=work)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        self.url = None
        while True:
            m = re.search(r"listening on (http://\S+)", self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                try:
                    if self.request("/ping/")[0] == 200:
                        break
                except OSError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def request(self, path: str) -> tuple[int, bytes]:
        u = urlsplit(self.url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.request("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def counters(self) -> dict:
        m = self.metrics()
        return {
            "cache_hits": m.get('volbridge_relay_cache_hits_total{tier="memory"}', 0.0),
            "cache_misses": m.get('volbridge_relay_cache_misses_total{tier="memory"}', 0.0),
            "upstream_requests": m.get(f'volbridge_relay_upstream_requests_total{{channel="{CHANNEL}"}}', 0.0),
            "cpu_s": proc_cpu(self.pid),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()


class RelayProcess(ServerProcess):
    """``python -m volbridge serve --config <name>.toml`` on a free 127.0.0.1 port."""

    def __init__(self, name: str, work: Path, source_url: str, memory_bytes: int):
        cfg = work / f"{name}.toml"
        cfg.write_text(
            '[server]\nhost = "127.0.0.1"\nport = 0\n'
            f"[cache]\nmemory_bytes = {memory_bytes}\n"
            f'[sources."{CHANNEL}"]\nurl = {json.dumps(source_url)}\npublic = true\n'
        )
        super().__init__(name, work, [sys.executable, "-m", "volbridge", "serve", "--config", str(cfg), "--log-level", "warning"])


#: The HTTP floor: the relay's stack (Starlette + uvicorn, same settings as RelayServer) answering
#: the same cutout URLs with blosc bodies encoded at start-up, from a dict, on a socket made by the
#: relay's own ``_bind``. What any relay on this stack pays to ship a cutout, with no cache lookup,
#: assembly or encoding per request.
FLOOR_SERVER = r"""
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import volbridge as vb
from volbridge.codecs import cutout
from volbridge.relay.serve import _bind  # the relay's own listening socket (TCP_NODELAY and all)

path, regions, cut, channel = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
arr = vb.array(path)
bodies = {}
for z, y, x in regions:
    data = arr[z : z + cut[0], y : y + cut[1], x : x + cut[2]]
    bodies[f"/v1/cutout/{channel}/0/{x}:{x + cut[2]}/{y}:{y + cut[1]}/{z}:{z + cut[0]}/"] = cutout.encode(data, cutout.BLOSC)


async def get(request):
    if request.url.path == "/ping/":
        return Response(b"{}", media_type="application/json")
    body = bodies.get(request.url.path)
    if body is None:
        return Response(b"no such cutout", status_code=404)
    return Response(body, media_type=cutout.BLOSC)


app = Starlette(routes=[Route("/{p:path}", get)])
sock = _bind("127.0.0.1", 0)
print(f"floor listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=True, timeout_keep_alive=30, lifespan="off")).run(sockets=[sock])
"""


class FloorProcess(ServerProcess):
    def __init__(self, name: str, work: Path, path: Path, regions: list):
        super().__init__(name, work, [sys.executable, "-c", FLOOR_SERVER, str(path), json.dumps([list(r) for r in regions]),
                                      json.dumps(list(CUT)), CHANNEL])

    def counters(self) -> dict:
        return {"cpu_s": proc_cpu(self.pid)}


class BossReader:
    """One persistent connection to a relay; ``read(region)`` is the decoded (z, y, x) cutout."""

    def __init__(self, url: str):
        import imagecodecs

        self.decode = imagecodecs.blosc_decode
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.headers = {"Accept": "application/blosc"}
        self.last_http = 0.0
        self.last_body = 0

    def read(self, r) -> np.ndarray:
        z, y, x = r
        path = f"/v1/cutout/{CHANNEL}/0/{x}:{x + CUT[2]}/{y}:{y + CUT[1]}/{z}:{z + CUT[0]}/"
        t = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        self.last_http = time.perf_counter() - t
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:300]!r}")
        self.last_body = len(body)
        return np.frombuffer(self.decode(body), np.uint8).reshape(CUT)

    def close(self) -> None:
        self.conn.close()


class DirectVolbridge:
    def __init__(self, path: Path):
        import volbridge as vb

        self.arr = vb.array(str(path))

    def reader(self):
        return lambda r: self.arr[sl(r)]


class DirectTensorstore:
    def __init__(self, path: Path):
        import tensorstore as ts

        self.t = ts.open(
            {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}},
            context=ts.Context({"cache_pool": {"total_bytes_limit": 0}}), read=True,
        ).result()

    def reader(self):
        def read(r):
            z, y, x = r
            out = self.t[x : x + CUT[2], y : y + CUT[1], z : z + CUT[0]].read(order="F").result()
            return out[..., 0].T

        return read


class WrongResult(AssertionError):
    pass


def check(got: np.ndarray, vol: np.ndarray, r, what: str) -> None:
    want = vol[sl(r)]
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        raise WrongResult(f"{what}: cutout at (z, y, x) = {r} differs from the source (shape {got.shape})")


# -- measurements -------------------------------------------------------------------------------
def pct(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max())}


def throughput(factory, regions: list, vol: np.ndarray, clients: int, seconds: float, what: str, cpu_pids=()) -> dict:
    """``clients`` threads, each with its own reader from ``factory()``, reading ``regions``
    round-robin (each from a different offset) until ``seconds`` have passed."""
    start_evt = threading.Event()
    state = {"t0": 0.0, "deadline": 0.0}
    results: list = [None] * clients
    errors: list = []

    def worker(i: int) -> None:
        try:
            read = factory()
            order = regions[i % len(regions):] + regions[: i % len(regions)]
            lat, n, j = [], 0, 0
            start_evt.wait()
            deadline = state["deadline"]
            while True:
                t = time.perf_counter()
                if t >= deadline:
                    break
                r = order[j % len(order)]
                out = read(r)
                t_end = time.perf_counter()
                lat.append(t_end - t)
                check(out, vol, r, what)
                n += 1
                j += 1
            results[i] = (n, lat, time.perf_counter() if not lat else t_end)
            close = getattr(getattr(read, "__self__", None), "close", None)
            if close is not None:
                close()
        except BaseException as e:  # noqa: BLE001  (reported by the caller)
            errors.append(e)
            start_evt.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # every reader made (connections open) before the clock starts
    settle()
    c0, s0 = proc_stat(), {p: proc_stat(p) for p in cpu_pids}
    state["t0"] = time.perf_counter()
    state["deadline"] = state["t0"] + seconds
    start_evt.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    t_end = max(r[2] for r in results)
    elapsed = t_end - state["t0"]
    n = sum(r[0] for r in results)
    lat = [x for r in results for x in r[1]]
    nbytes = n * int(np.prod(CUT))
    return {
        "clients": clients, "seconds": elapsed, "requests": n, "mb_s": nbytes / elapsed / 1e6, "req_s": n / elapsed,
        "latency_under_load": pct(lat),
        # this process (the clients; for direct reads, the readers) and the servers: user, sys, minor faults
        "client": (c := stat_delta(c0, proc_stat())), "client_cpu_s": c["user_s"] + c["sys_s"],
        "servers": (sv := {str(p): stat_delta(s0[p], proc_stat(p)) for p in cpu_pids}),
        "relay_cpu_s": {p: v["user_s"] + v["sys_s"] for p, v in sv.items()},
    }


def breakdown(path: Path, regions: list, memory_bytes: int, passes: int = 3) -> dict:
    """Warm read of each region in this process, without HTTP: RelaySource.read through the memory
    tier, the cuboid lookups alone, and the blosc encode."""
    from volbridge.codecs import cutout
    from volbridge.geometry import Box
    from volbridge.relay import Relay, RelayConfig

    relay = Relay(RelayConfig.from_dict({
        "server": {"host": "127.0.0.1", "port": 0}, "cache": {"memory_bytes": memory_bytes},
        "sources": {CHANNEL: {"url": f"precomputed://{path}", "public": True}},
    }))
    src = relay.sources[CHANNEL]
    boxes = []
    for z, y, x in regions:
        box = Box((x, y, z), (x + CUT[2], y + CUT[1], z + CUT[0]))
        src.read(box, 0)  # fill the cache
        boxes.append((box, [k for k, _ in src.cuboid_keys(box, 0)]))
    t_read, t_lookup, t_enc, t_total = [], [], [], []
    for _ in range(passes):
        for box, keys in boxes:
            t0 = time.perf_counter()
            for k in keys:
                src.store.get(k)
            t1 = time.perf_counter()
            zyx = src.read(box, 0)[..., src.channel].T
            t2 = time.perf_counter()
            body = cutout.encode(zyx, cutout.BLOSC)
            t3 = time.perf_counter()
            t_lookup.append(t1 - t0)
            t_read.append(t2 - t1)
            t_enc.append(t3 - t2)
            t_total.append(t3 - t1)
    return {
        "cuboids_per_cutout": len(boxes[0][1]),
        "cuboid_shape_xyz": list(src.upstream.grids[0].chunk_shape),
        "body_over_raw": len(body) / zyx.nbytes,
        "cuboid_lookups_ms": pct(t_lookup),
        "relay_source_read_ms": pct(t_read),
        "blosc_encode_ms": pct(t_enc),
        "read_plus_encode_ms": pct(t_total),
    }


# -- py-spy -------------------------------------------------------------------------------------
PYSPY_RATE = 200
#: Leaf frames by file, into what a relay request spends its time on (first match wins).
CATEGORIES = (
    ("blosc encode", ("codecs/cutout.py",)),
    ("cuboid assembly (ChunkedVolume.read copy + bookkeeping)", ("engine/chunked.py", "geometry/", "formats/precomputed.py")),
    ("cache lookup", ("kv/cache_", "kv/prefixed.py", "kv/base.py")),
    ("thread hand-offs and waits (run_bounded, thread pools, anyio)", ("threading.py", "concurrent/futures", "anyio/",
                                                                       "engine/parallel.py", "starlette/concurrency.py")),
    ("asyncio loop and socket I/O", ("asyncio/", "selectors.py", "socket.py")),
    ("HTTP protocol (uvicorn, h11)", ("uvicorn/", "h11/")),
    ("Starlette routing, middleware, responses", ("starlette/",)),
    ("relay handler (boss.py, app.py, state.py)", ("relay/",)),
)


#: Leaf functions of threads that wait (py-spy counts a thread blocked on a lock or a queue as
#: active): idle pool workers, run_bounded's callers waiting for helpers, the loop in epoll.
WAITS = {"Condition.wait", "Event.wait", "_worker", "EpollSelector.select", "Queue.get", "SimpleQueue.get", "WorkerThread.run"}


def category(file: str, func: str = "") -> str:
    if func in WAITS:
        return "waiting (lock, queue, epoll)"
    for name, marks in CATEGORIES:
        if any(m in file for m in marks):
            return name
    return "other"


def pyspy_summary(raw: Path, top: int = 15) -> dict:
    """Self and inclusive shares by function (file:function) from py-spy's raw collapsed stacks."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    self_line: Counter = Counter()
    cats: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = [f for f in stack.split(";") if f.endswith(")") and " (" in f]  # drop the process/thread frames
        if not frames:
            continue
        names = []
        for f in frames:
            func, _, loc = f.rpartition(" (")
            file = loc.rstrip(")").rsplit(":", 1)[0]
            short = "/".join(Path(file).parts[-2:])
            names.append(f"{func} ({short})")
        leaf_loc = frames[-1].rpartition(" (")[2].rstrip(")")
        self_c[names[-1]] += n
        cats[category(leaf_loc.rsplit(":", 1)[0], frames[-1].rpartition(" (")[0])] += n
        self_line[f"{frames[-1].rpartition(' (')[0]} ({'/'.join(Path(leaf_loc).parts[-2:])})"] += n
        for nm in set(names):
            incl[nm] += n

    def share(c: Counter):
        return [{"function": k, "share": v / total} for k, v in c.most_common(top)] if total else []

    busy = total - cats.get("waiting (lock, queue, epoll)", 0)
    return {"samples": total, "categories_by_leaf": {k: v / total for k, v in cats.most_common()} if total else {},
            "categories_by_leaf_busy_only": {k: v / busy for k, v in cats.most_common() if not k.startswith("waiting")} if busy else {},
            "self": share(self_c), "self_by_line": share(self_line), "inclusive": share(incl)}


def pyspy_record(pid: int, out: Path, seconds: float, gil: bool = False, fmt: str = "raw") -> subprocess.Popen:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # --nonblocking: blocking sampling of ~60 threads slowed the relay 2.5x on 2 cores (a few
    # samples are lost to torn reads instead).
    cmd = [exe, "record", "--pid", str(pid), "--rate", str(PYSPY_RATE), "--duration", str(int(seconds)), "--format", fmt,
           "--output", str(out), "--nonblocking"]
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# -- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="80,2048,2048", help="volume z,y,x (default 80,2048,2048; multiples of 16,512,512)")
    ap.add_argument("--quick", action="store_true", help="80 x 1024^2 volume, 8 cold requests per case, 2 s throughput phases")
    ap.add_argument("--requests", "-n", type=int, default=32, help="cold requests per case (default 32; at most half the cutouts)")
    ap.add_argument("--warm-passes", type=int, default=2, help="passes over each set for the warm and direct latencies (default 2)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients for throughput (default 16)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each throughput phase (default 5)")
    ap.add_argument("--memory-bytes", type=int, default=1 << 30, help="each relay's memory cache (default 1 GiB)")
    ap.add_argument("--profile", action="store_true", help="also sample relay A with py-spy (warm, 16 clients and 1 client)")
    ap.add_argument("--profile-prefix", type=Path, default=Path("/tmp/relay_profile"),
                    help="py-spy outputs: PREFIX.txt, PREFIX_gil.txt, PREFIX_1client.txt, PREFIX.svg")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "relay.json", help="JSON output path")
    args = ap.parse_args(argv)

    shape = (80, 1024, 1024) if args.quick else tuple(int(v) for v in args.shape.split(","))
    if args.quick:
        args.requests = min(args.requests, 8)
        args.seconds = min(args.seconds, 2.0)
        args.warm_passes = max(args.warm_passes, 4)
    if len(shape) != 3 or shape[0] < 2 * CUT[0] or any(s % c for s, c in zip(shape, CUT)):
        ap.error(f"--shape must be z,y,x multiples of {CUT} with at least two z slabs")
    if int(np.prod(shape)) > args.memory_bytes:
        ap.error(f"the volume ({np.prod(shape)} bytes) does not fit in --memory-bytes {args.memory_bytes}: warm would not be warm")

    work = args.dir or Path(tempfile.mkdtemp(prefix="vb-bench-relay-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work dir {work}", flush=True)
    load_start = os.getloadavg()
    print(f"# load average at start: {load_start[0]:.2f} (machine has {os.cpu_count()} cpus; a busy neighbour skews wall times)", flush=True)

    import volbridge as vb
    from volbridge.engine import parallel as vb_parallel

    t = time.perf_counter()
    vol = make_volume(shape)
    path = work / "vol"
    a = vb.create(f"precomputed://{path}", shape=shape, dtype="uint8", chunk_shape=CHUNK, resolution=(40, 4, 4), overwrite=True)
    a[...] = vol
    del a
    settle()
    print(f"# volume {shape} (z, y, x) uint8 made and written in {time.perf_counter() - t:.1f} s", flush=True)

    regions, warmup = regions_of(shape)
    random.Random(0).shuffle(regions)
    half = len(regions) // 2
    n_cold = min(args.requests, half)
    s1, s2 = regions[:n_cold], regions[half : half + n_cold]
    print(f"# {len(regions)} cutouts of {CUT} (z, y, x); S1 and S2: {n_cold} each; warm-up slab z={warmup[0][0]}", flush=True)

    failures: list[str] = []
    latency: dict = {}
    tput: dict = {}
    counters: dict = {}
    body_bytes: list[int] = []
    relays: list[ServerProcess] = []  # the relays and the HTTP floor
    result_breakdown = None
    profile = None
    try:
        t = time.perf_counter()
        ra = RelayProcess("relay-a", work, f"precomputed://{path}", args.memory_bytes)
        relays.append(ra)
        rb = RelayProcess("relay-b", work, f"bossdb://{ra.url}/{CHANNEL}", args.memory_bytes)
        relays.append(rb)
        floor = FloorProcess("http-floor", work, path, s1)
        relays.append(floor)
        print(f"# relay A {ra.url} (pid {ra.pid}) <- disk; relay B {rb.url} (pid {rb.pid}) <- A; HTTP floor {floor.url} "
              f"(pid {floor.pid}); started in {time.perf_counter() - t:.1f} s", flush=True)

        direct = {"direct volbridge": DirectVolbridge(path), "direct tensorstore": DirectTensorstore(path)}
        conn_a, conn_b, conn_f = BossReader(ra.url), BossReader(rb.url), BossReader(floor.url)
        readers = {"A": conn_a.read, "B": conn_b.read, **{k: d.reader() for k, d in direct.items()}}

        # Warm-up: imports, thread pools, first connections; the last z slab only (the floor
        # serves S1 only: it is warmed with one pass over S1, as it has no cold state).
        for r in warmup[:4]:
            for name, read in readers.items():
                check(read(r), vol, r, f"warm-up {name}")
        for r in s1:
            check(conn_f.read(r), vol, r, "warm-up http floor")

        samples: dict = {}
        http_s: dict = {}

        def timed(case: str, read, r, conn: BossReader | None = None) -> None:
            t0 = time.perf_counter()
            out = read(r)
            dt = time.perf_counter() - t0
            check(out, vol, r, case)
            samples.setdefault(case, []).append(dt)
            if conn is not None:
                http_s.setdefault(case, []).append(conn.last_http)
                body_bytes.append(conn.last_body)

        def phase(name: str, fn) -> None:
            try:
                before = {r.name: r.counters() for r in relays}
                settle()
                fn()
                after = {r.name: r.counters() for r in relays}
                counters[name] = {r: {k: after[r][k] - before[r][k] for k in after[r]} for r in after}
            except Exception as e:  # record and carry on; the run fails at the end
                failures.append(f"{name}: {type(e).__name__}: {e}")
                print(f"!! {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

        # -- latency ------------------------------------------------------------------------------
        def cold():
            for r in s1:
                timed("1 tier cold", conn_a.read, r, conn_a)
            for r in s2:
                timed("2 tiers cold", conn_b.read, r, conn_b)

        def warm():
            for _ in range(args.warm_passes):
                for r1, r2 in zip(s1, s2):
                    timed("1 tier warm", conn_a.read, r1, conn_a)
                    timed("direct volbridge", readers["direct volbridge"], r1)
                    timed("direct tensorstore", readers["direct tensorstore"], r1)
                    timed("2 tiers warm", conn_b.read, r2, conn_b)
                    timed("http floor", conn_f.read, r1, conn_f)

        def near_cold():
            for r in s1:
                timed("2 tiers B cold, A warm", conn_b.read, r, conn_b)

        t = time.perf_counter()
        phase("latency cold", cold)
        phase("latency warm", warm)
        phase("latency 2 tiers B cold A warm", near_cold)
        for case in samples:
            latency[case] = {**pct(samples[case]), "http_ms": pct(http_s.get(case, [])) if case in http_s else None,
                             "seconds": samples[case]}
        print(f"# latency phases in {time.perf_counter() - t:.1f} s: " + ", ".join(
            f"{c} p50 {v['p50_ms']:.1f} ms" for c, v in latency.items()), flush=True)
        for c in (conn_a, conn_b, conn_f):
            c.close()

        # -- throughput ---------------------------------------------------------------------------
        runs = [
            ("relay 1 tier warm", lambda: BossReader(ra.url).read, s1, (ra.pid, rb.pid)),
            ("direct volbridge", direct["direct volbridge"].reader, s1, ()),
            ("direct tensorstore", direct["direct tensorstore"].reader, s1, ()),
            ("relay 2 tiers warm", lambda: BossReader(rb.url).read, s2, (ra.pid, rb.pid)),
            ("http floor", lambda: BossReader(floor.url).read, s1, (floor.pid,)),
        ]
        for name, factory, regs, pids in runs:
            def go(name=name, factory=factory, regs=regs, pids=pids):
                tput[name] = throughput(factory, regs, vol, args.clients, args.seconds, name, pids)
            phase(f"throughput {name}", go)
            if name in tput:
                r = tput[name]
                print(f"# throughput {name:20s} {r['mb_s']:7.1f} MB/s {r['req_s']:6.1f} req/s, p50 under load "
                      f"{r['latency_under_load']['p50_ms']:.1f} ms, client cpu {r['client_cpu_s']:.1f} s", flush=True)

        # -- breakdown (in process, no HTTP) ------------------------------------------------------
        try:
            result_breakdown = breakdown(path, s1, args.memory_bytes)
            b = result_breakdown
            print(f"# breakdown (no HTTP): cuboid lookups {b['cuboid_lookups_ms']['p50_ms']:.2f} ms, RelaySource.read "
                  f"{b['relay_source_read_ms']['p50_ms']:.2f} ms, blosc encode {b['blosc_encode_ms']['p50_ms']:.2f} ms (p50)", flush=True)
        except Exception as e:
            failures.append(f"breakdown: {type(e).__name__}: {e}")
            print(f"!! breakdown: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

        # -- profile ------------------------------------------------------------------------------
        if args.profile:
            profile = {}
            pre = args.profile_prefix
            pre.parent.mkdir(parents=True, exist_ok=True)
            secs = max(3, int(args.seconds))
            for label, out, gil, clients, fmt in (
                (f"{args.clients} clients, all non-idle threads", Path(f"{pre}.txt"), False, args.clients, "raw"),
                (f"{args.clients} clients, GIL holder", Path(f"{pre}_gil.txt"), True, args.clients, "raw"),
                ("1 client, all non-idle threads", Path(f"{pre}_1client.txt"), False, 1, "raw"),
                (f"{args.clients} clients, flame graph", Path(f"{pre}.svg"), False, args.clients, "flamegraph"),
            ):
                try:
                    spy = pyspy_record(ra.pid, out, secs, gil=gil, fmt=fmt)
                    time.sleep(0.5)
                    run = throughput(lambda: BossReader(ra.url).read, s1, vol, clients, secs + 1, "profile", (ra.pid,))
                    _, err = spy.communicate(timeout=60)
                    if spy.returncode != 0:
                        raise RuntimeError(f"py-spy exited {spy.returncode}: {err.decode(errors='replace')[-500:]}")
                    entry = {"output": str(out), "mb_s_while_sampled": run["mb_s"], "req_s_while_sampled": run["req_s"],
                             "rate_hz": PYSPY_RATE, "seconds": secs, "gil_only": gil,
                             "relay_cpu_s": run["relay_cpu_s"][str(ra.pid)], "requests": run["requests"]}
                    if fmt == "raw":
                        entry.update(pyspy_summary(out))
                        # --gil: one sample per tick in which a thread held the GIL
                        entry["samples_per_tick"] = entry["samples"] / (PYSPY_RATE * secs)
                    profile[label] = entry
                    print(f"# profile {label}: {out}", flush=True)
                except Exception as e:
                    failures.append(f"profile {label}: {type(e).__name__}: {e}")
                    print(f"!! profile {label}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        for r in relays:
            r.stop()

    # -- targets ----------------------------------------------------------------------------------
    def ratio(a, b):
        return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None

    warm1 = latency.get("1 tier warm", {}).get("p50_ms")
    relay_mb = tput.get("relay 1 tier warm", {}).get("mb_s")
    targets = {
        "warm_p50_ms_1tier": warm1,
        "warm_p50_ms_2tiers": latency.get("2 tiers warm", {}).get("p50_ms"),
        "target_warm_p50_ms": TARGET_WARM_P50_MS,
        "warm_p50_1tier_over_target": ratio(warm1, TARGET_WARM_P50_MS),
        "warm_p50_1tier_ok": (warm1 < TARGET_WARM_P50_MS) if warm1 is not None else None,
        "target_direct_over_relay_mb_s": TARGET_DIRECT_OVER_RELAY,
    }
    for d in ("direct volbridge", "direct tensorstore"):
        key = d.split()[1]
        r = ratio(tput.get(d, {}).get("mb_s"), relay_mb)
        targets[f"{key}_over_relay_mb_s"] = r
        targets[f"{key}_over_relay_ok"] = (r <= TARGET_DIRECT_OVER_RELAY) if r is not None else None
        targets[f"relay_warm_p50_over_{key}_p50"] = ratio(warm1, latency.get(d, {}).get("p50_ms"))
    floor_p50 = latency.get("http floor", {}).get("p50_ms")
    targets["relay_warm_p50_minus_http_floor_p50_ms"] = (warm1 - floor_p50) if warm1 is not None and floor_p50 is not None else None
    targets["http_floor_over_relay_mb_s"] = ratio(tput.get("http floor", {}).get("mb_s"), relay_mb)

    # -- tables -----------------------------------------------------------------------------------
    def f1(v, w=8):
        return f"{v:{w}.1f}" if isinstance(v, float) else f"{'-':>{w}s}"

    def per_request(seconds, n):
        return f"{1e3 * seconds / n:.1f}" if isinstance(seconds, float) and n else "-"

    def f2(v):
        return f"{v:.2f}" if isinstance(v, float) else "-"

    voxels = int(np.prod(CUT))
    print()
    print(f"relay: {CUT[2]}x{CUT[1]}x{CUT[0]} uint8 cutouts (x, y, z; {voxels / 2**20:.0f} MiB) of a {shape[2]}x{shape[1]}x{shape[0]} "
          f"precomputed raw volume, {CHUNK[2]}x{CHUNK[1]}x{CHUNK[0]} chunks, loopback; blosc body/raw "
          f"{(np.mean(body_bytes) / voxels) if body_bytes else float('nan'):.3f}")
    print()
    print("| case (one request at a time) | path | n | p50 ms | p99 ms | mean ms | p50 MB/s |")
    print("|---|---|---|---|---|---|---|")
    paths = {"1 tier cold": "client -> A -> disk", "1 tier warm": "client -> A (cache)",
             "2 tiers cold": "client -> B -> A -> disk", "2 tiers warm": "client -> B (cache)",
             "2 tiers B cold, A warm": "client -> B -> A (cache)",
             "direct volbridge": "vb.array(path)[...]", "direct tensorstore": "tensorstore file kvstore",
             "http floor": "client -> Starlette+uvicorn, body from a dict"}
    for case in ("1 tier cold", "1 tier warm", "2 tiers cold", "2 tiers warm", "2 tiers B cold, A warm", "direct volbridge",
                 "direct tensorstore", "http floor"):
        v = latency.get(case)
        if not v or not v.get("n"):
            continue
        print(f"| {case} | {paths[case]} | {v['n']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['mean_ms']:.1f} | "
              f"{voxels / v['p50_ms'] / 1e3:.0f} |")
    print()
    print(f"| throughput, {args.clients} clients, warm | MB/s | req/s | p50 ms under load | client CPU ms/req (user+sys) "
          f"| server CPU ms/req (user+sys) | server minor faults/req |")
    print("|---|---|---|---|---|---|---|")
    for name, r in tput.items():
        n = r["requests"]
        c = r["client"]
        sv = r["servers"]
        su, ss, sf = (sum(v[k] for v in sv.values()) for k in ("user_s", "sys_s", "minflt")) if sv else (None, None, None)
        srv = f"{per_request(su + ss, n)} ({per_request(su, n)}+{per_request(ss, n)})" if sv else "-"
        print(f"| {name} | {r['mb_s']:.1f} | {r['req_s']:.1f} | {r['latency_under_load']['p50_ms']:.1f} | "
              f"{per_request(c['user_s'] + c['sys_s'], n)} ({per_request(c['user_s'], n)}+{per_request(c['sys_s'], n)}) | {srv} | "
              f"{(f'{sf / n:.0f}' if sv and n else '-')} |")
    print()
    print("| target | value | target | ratio | ok |")
    print("|---|---|---|---|---|")
    print(f"| warm 1-tier p50 | {f1(warm1, 0).strip()} ms | < {TARGET_WARM_P50_MS:.0f} ms | {f2(targets['warm_p50_1tier_over_target'])} | "
          f"{targets['warm_p50_1tier_ok']} |")
    for key in ("volbridge", "tensorstore"):
        print(f"| direct {key} MB/s / relay MB/s ({args.clients} clients) | {f2(targets[f'{key}_over_relay_mb_s'])} | <= {TARGET_DIRECT_OVER_RELAY:.0f} | "
              f"{f2(targets[f'{key}_over_relay_mb_s'])} | {targets[f'{key}_over_relay_ok']} |")
    print(f"| http floor MB/s / relay MB/s ({args.clients} clients; the stack's ceiling) | {f2(targets['http_floor_over_relay_mb_s'])} | - | - | - |")
    print(f"| warm 1-tier p50 - http floor p50 (the relay's own work) | {f1(targets['relay_warm_p50_minus_http_floor_p50_ms'], 0).strip()} ms | - | - | - |")
    if result_breakdown:
        b = result_breakdown
        rest = (latency.get("1 tier warm", {}).get("http_ms") or {}).get("p50_ms")
        print()
        print(f"warm 1-tier p50 breakdown: HTTP p50 {f1(rest, 0).strip()} ms = RelaySource.read {b['relay_source_read_ms']['p50_ms']:.2f} ms "
              f"(of which {b['cuboids_per_cutout']} cuboid lookups {b['cuboid_lookups_ms']['p50_ms']:.2f} ms) + blosc encode "
              f"{b['blosc_encode_ms']['p50_ms']:.2f} ms + the rest (HTTP, Starlette, uvicorn, loopback); client decode "
              f"{f1((warm1 or 0) - (rest or 0), 0).strip()} ms")
    if profile:
        print()
        print("| py-spy on relay A (warm, 1 tier): share of busy samples (waits left out) by leaf frame | " + " | ".join(profile_cols := [
            k for k, v in profile.items() if "categories_by_leaf" in v]) + " |")
        print("|---|" + "---|" * len(profile_cols))
        cats = list(dict.fromkeys(c for k in profile_cols for c in profile[k]["categories_by_leaf_busy_only"]))
        for c in cats:
            print(f"| {c} | " + " | ".join(f"{100 * profile[k]['categories_by_leaf_busy_only'].get(c, 0):.0f}%" for k in profile_cols) + " |")
        print("| (samples; waiting share) | " + " | ".join(
            f"{profile[k]['samples']}; {100 * profile[k]['categories_by_leaf'].get('waiting (lock, queue, epoll)', 0):.0f}%" for k in profile_cols) + " |")
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)

    # -- JSON -------------------------------------------------------------------------------------

    versions = common.versions(("volbridge", "tensorstore", "numpy", "imagecodecs", "starlette", "uvicorn", "urllib3", "py-spy"))
    src_commit, src_dirty = common.source_state()
    result = {
        "benchmark": "relay",
        "volbridge_commit": src_commit,
        "volbridge_src_uncommitted_changes": src_dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "volume": {"shape_zyx": list(shape), "dtype": "uint8", "chunk_shape_zyx": list(CHUNK), "encoding": "raw",
                   "resolution_zyx": [40, 4, 4], "data": "EM-like smoothed noise (bench_precomputed.em_like on a 1024^2 tile, shifted copies)"},
        "cutout": {"shape_zyx": list(CUT), "bytes": voxels, "aligned": "512 in x and y, 16 in z",
                   "cold_per_case": n_cold, "warm_passes": args.warm_passes,
                   "blosc_body_over_raw_mean": (float(np.mean(body_bytes)) / voxels) if body_bytes else None},
        "relays": {"processes": "python -m volbridge serve --config <toml> --log-level warning", "memory_bytes": args.memory_bytes,
                   "A": "precomputed:///<work>/vol", "B": "bossdb://<relay A>/" + CHANNEL},
        "units": "latency: ms to the decoded (z, y, x) array, one request at a time (http_ms: to the last body byte); "
                 "MB/s = 1e6 uncompressed voxel bytes per second",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "volbridge_threads": vb_parallel.default_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VOLBRIDGE_")},
        "versions": versions,
        "latency": latency,
        "throughput": tput,
        "relay_counters_by_phase": counters,
        "breakdown_in_process": result_breakdown,
        "targets": targets,
        "profile": profile,
        "failures": failures,
    }
    return common.finish(args, result, work, failures)


if __name__ == "__main__":
    sys.exit(main())
