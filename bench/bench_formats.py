#!/usr/bin/env python
"""volbridge vs tensorstore vs zarr-python (vs cloud-volume) on zarr v3 and sharded precomputed, local disk.

One run, one data set, every library: the ``SIZE^3`` uint8 EM-like volume of
``bench_precomputed.py`` (smoothed noise, cell-like structure, dark membranes; zstd-3 stores it at
about 0.78 of its raw size, gzip-6 about 0.77) on local disk, in four layouts:

* ``zarr3``                     zarr v3, ``bytes`` + ``zstd`` (level 3, no checksum), 64^3 chunks;
* ``zarr3_sharded``             zarr v3, ``sharding_indexed``: 32^3 inner chunks (``bytes`` +
  ``zstd`` level 3) in 128^3 shards, index at the end (``bytes`` + ``crc32c``, the default of all
  three libraries);
* ``precomputed_sharded``       neuroglancer precomputed, ``raw`` encoding, 32^3 chunks in
  ``neuroglancer_uint64_sharded_v1`` shards: identity hash, the spec of
  ``volbridge.formats.precomputed.sharding_for`` (aligned 128^3 blocks, gzip minishard indexes),
  ``data_encoding: raw``;
* ``precomputed_sharded_gzip``  the same with ``data_encoding: gzip``.

For each layout it times

* ``read_full``   the whole volume,
* ``read_cutout`` an unaligned cutout (300^3 at x, y, z = 37, 51, 29 for 512^3),
* ``write_full``  the whole volume into a fresh directory,

for volbridge (``volbridge.array(path)``, ``volbridge.create("zarr3://..."/"precomputed://...",
chunk_shape=, shard_shape=)``), tensorstore (``zarr3`` / ``neuroglancer_precomputed`` drivers over a
``file`` kvstore), zarr-python 3 (``LocalStore``; zarr layouts only) and CloudVolume (precomputed
layouts only), libraries interleaved, best of ``--repeat`` (reads twice as many), with ratios
volbridge/tensorstore, volbridge/zarr-python and volbridge/cloud-volume. Targets (issue 3): on
every read row volbridge >= 1.0x tensorstore and >= 2x zarr-python.

The read sources are written once per layout by one library (``--source-writer``, default
tensorstore, the reference implementation), so every library reads the same bytes. Every read
result is compared with the source array (outside the timer; a fast but wrong answer fails the
run), every write is read back by a *different* library, and every stored layout is checked
(``zarr.json`` codecs and chunk grid, or the ``info``'s sharding spec, and the number of chunk or
shard files). Results: a table on stdout and a Markdown report with the JSON of the run in
``bench/results/formats.md``; anything below the line ``<!-- kept across runs -->`` in an
existing report (profiles, commentary) is carried over.

Fairness rules (those of ``bench_precomputed.py``):

* Only the data call is timed. Opening a handle and creating metadata happen just before the timer
  starts, fresh for every repetition; tensorstore gets a new ``Context`` with a zero-byte cache
  pool each time, zarr-python a new ``LocalStore`` and array, so nobody keeps a chunk cache.
* Reads come from the page cache for everyone (warm: the sources were just written, and each is
  read many times); ``os.sync()`` runs (untimed) before every measurement so no library pays for
  another's dirty-page writeback.
* Layouts are each library's fast path: volbridge, zarr-python and tensorstore's zarr3 read
  (z, y, x) C order; tensorstore's precomputed driver ``read(order='F')`` of its (x, y, z, c)
  domain; CloudVolume its (x, y, z, c) cutout. Every library uses its default concurrency
  (volbridge ``VOLBRIDGE_THREADS``, zarr-python ``async.concurrency``, CloudVolume ``parallel=1``,
  which is serial on ``file://``).
* volbridge's ``create`` refuses ``compression=`` with ``shard_shape`` (shards are never
  transport-compressed), so its ``precomputed_sharded_gzip`` write opens a volume whose ``info``
  (with ``data_encoding: gzip``) was written beforehand, untimed, with ``volbridge.array(path,
  mode="r+")``; volbridge then gzips every chunk into the shards itself.
* CloudVolume writes a sharded volume one whole shard per call (its ``AlignmentError`` otherwise):
  its write is a loop over the shard-aligned 128^3 blocks, the way igneous uses it.

MB/s are 10^6 bytes of uncompressed voxels per second. Ratios > 1 mean volbridge is faster.

Usage::

    python bench/bench_formats.py             # 512^3, about 2.5 minutes on 2 cores
    python bench/bench_formats.py --quick     # 256^3, 150^3 cutout
    python bench/bench_formats.py --layouts zarr3_sharded --libs volbridge,tensorstore --ops read_full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# bench_precomputed pins BLAS to one thread before numpy is imported.
from bench_precomputed import Tensorstore as PrecomputedTensorstore  # noqa: E402
from bench_precomputed import WrongResult, check_equal, em_like, settle  # noqa: E402
import numpy as np  # noqa: E402
import common  # noqa: E402  (bench/common.py)

OPS = ("read_full", "read_cutout", "write_full")
LIBS = ("volbridge", "tensorstore", "zarr-python", "cloudvolume")
ZSTD_LEVEL = 3  # volbridge's zarr3 zstd default (level 3, checksum false); the other writers are set to match
KEEP_MARKER = "<!-- kept across runs -->"
TARGETS = {"tensorstore": 1.0, "zarr-python": 2.0}  # read rows: volbridge speed / peer speed at least this


@dataclass(frozen=True)
class Layout:
    key: str
    format: str  # "zarr3" or "precomputed"
    chunk: int  # chunk edge (inner chunk edge when sharded)
    shard: int | None  # shard edge, None for unsharded
    codec: str  # "zstd" (zarr3), "raw" or "gzip" (precomputed data_encoding)
    title: str

    @property
    def libs(self) -> tuple[str, ...]:
        peer = "zarr-python" if self.format == "zarr3" else "cloudvolume"
        return ("volbridge", "tensorstore", peer)


#: Corner (x, y, z) of the unaligned cutout every read benchmark times.
CUT_START = (37, 51, 29)


def cutout_edge(size: int) -> int:
    """Edge of the cutout for a ``size``^3 volume: 300 from 512 up, scaled down below."""
    return 300 if size >= 512 else max(8, (size * 300) // 512)


def read_boxes(size: int) -> dict:
    """The boxes ((x0, y0, z0), (x1, y1, z1)) of the read rows: the whole volume and the cutout."""
    return {"read_full": ((0, 0, 0), (size,) * 3),
            "read_cutout": (CUT_START, tuple(s + cutout_edge(size) for s in CUT_START))}


def make_layouts(chunk: int, inner: int, shard: int) -> dict[str, Layout]:
    ls = [
        Layout("zarr3", "zarr3", chunk, None, "zstd", f"zarr v3 zstd, {chunk}^3 chunks"),
        Layout("zarr3_sharded", "zarr3", inner, shard, "zstd", f"zarr v3 zstd, {inner}^3 in {shard}^3 shards"),
        Layout("precomputed_sharded", "precomputed", inner, shard, "raw", f"precomputed sharded raw, {inner}^3 in {shard}^3"),
        Layout("precomputed_sharded_gzip", "precomputed", inner, shard, "gzip", f"precomputed sharded gzip, {inner}^3 in {shard}^3"),
    ]
    return {l.key: l for l in ls}


# -- the layouts, as each writer spells them -----------------------------------------------------
def zarr_codecs(lay: Layout) -> list[dict]:
    """The ``codecs`` of ``zarr.json`` (what tensorstore is given; volbridge and zarr-python build the same)."""
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}]
    if lay.shard is None:
        return codecs
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [lay.chunk] * 3, "codecs": codecs, "index_location": "end",
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]


def sharding_spec(size: int, lay: Layout) -> dict:
    """The precomputed ``sharding`` object every writer uses: volbridge's aligned-block spec."""
    from volbridge.formats.precomputed import sharding_for

    spec = sharding_for([size] * 3, [lay.chunk] * 3, [lay.shard] * 3)
    spec["data_encoding"] = lay.codec
    return spec


def precomputed_info(size: int, lay: Layout) -> dict:
    return {
        "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8", "num_channels": 1,
        "scales": [{"key": "1_1_1", "size": [size] * 3, "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0],
                    "chunk_sizes": [[lay.chunk] * 3], "encoding": "raw", "sharding": sharding_spec(size, lay)}],
    }


def _zyx(box):
    (x0, y0, z0), (x1, y1, z1) = box
    return np.s_[z0:z1, y0:y1, x0:x1]


# -- library adapters ---------------------------------------------------------------------------
# A box is ((x0, y0, z0), (x1, y1, z1)). prepare_read/prepare_write do the untimed setup (open,
# create metadata) and return the zero-argument callable that is timed; as_zyx turns a read result
# into a (z, y, x) array for the equality check. NotImplementedError marks a row "n/a".


class Volbridge:
    name = "volbridge"

    def __init__(self):
        import volbridge

        self.vb = volbridge

    def prepare_read(self, path, box, lay):
        arr = self.vb.array(str(path))
        sl = _zyx(box)
        return lambda: arr[sl]

    @staticmethod
    def as_zyx(out):
        return out

    def prepare_write(self, path, vol, lay):
        shard = None if lay.shard is None else (lay.shard,) * 3
        if lay.format == "zarr3":
            arr = self.vb.create(f"zarr3://{path}", shape=vol.shape, dtype="uint8", chunk_shape=(lay.chunk,) * 3,
                                 shard_shape=shard, compression="zstd")
        elif lay.codec == "raw":
            arr = self.vb.create(f"precomputed://{path}", shape=vol.shape, dtype="uint8", chunk_shape=(lay.chunk,) * 3,
                                 shard_shape=shard)
        else:  # create() has no gzip data encoding for shards: open an info written beforehand (untimed)
            path.mkdir(parents=True, exist_ok=True)
            (path / "info").write_text(json.dumps(precomputed_info(vol.shape[0], lay)))
            arr = self.vb.array(str(path), mode="r+")

        def go():
            arr[...] = vol

        return go


class Tensorstore(PrecomputedTensorstore):
    """bench_precomputed's tensorstore runner (fresh context, no cache pool, file kvstore), on
    zarr3 and sharded layouts too."""

    def _kv(self, path) -> dict:
        return self.kvstore(path)

    def prepare_read(self, path, box, lay):
        t = self.ts.open({"driver": "zarr3" if lay.format == "zarr3" else "neuroglancer_precomputed",
                          "kvstore": self._kv(path)}, context=self._ctx(), read=True).result()
        if lay.format == "zarr3":
            view = t[_zyx(box)]
            return lambda: view.read().result()
        (x0, y0, z0), (x1, y1, z1) = box
        view = t[x0:x1, y0:y1, z0:z1]
        return lambda: view.read(order="F").result()

    @staticmethod
    def as_zyx(out):
        return out if out.ndim == 3 else out[..., 0].T

    def prepare_write(self, path, vol, lay):
        n = vol.shape[0]
        if lay.format == "zarr3":
            spec = {
                "driver": "zarr3", "kvstore": self._kv(path),
                "metadata": {
                    "shape": list(vol.shape), "data_type": "uint8", "fill_value": 0,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [lay.shard or lay.chunk] * 3}},
                    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                    "codecs": zarr_codecs(lay), "dimension_names": ["z", "y", "x"],
                },
            }
            data = vol
        else:
            spec = {
                "driver": "neuroglancer_precomputed", "kvstore": self._kv(path),
                "multiscale_metadata": {"data_type": "uint8", "num_channels": 1, "type": "image"},
                "scale_metadata": {"size": [n] * 3, "resolution": [1, 1, 1], "encoding": "raw", "voxel_offset": [0, 0, 0],
                                   "chunk_size": [lay.chunk] * 3, "sharding": sharding_spec(n, lay)},
            }
            data = vol.T[..., None]  # (x, y, z, c), F-contiguous view: no copy
        t = self.ts.open(spec, context=self._ctx(), create=True).result()

        def go():
            t.write(data).result()

        return go


class ZarrPython:
    name = "zarr-python"

    def __init__(self):
        import zarr
        from zarr.codecs import ZstdCodec
        from zarr.storage import LocalStore

        self.zarr, self.ZstdCodec, self.LocalStore = zarr, ZstdCodec, LocalStore

    def prepare_read(self, path, box, lay):
        if lay.format != "zarr3":
            raise NotImplementedError("zarr-python reads zarr only")
        z = self.zarr.open_array(self.LocalStore(str(path), read_only=True), mode="r")
        sl = _zyx(box)
        return lambda: z[sl]

    @staticmethod
    def as_zyx(out):
        return out

    def prepare_write(self, path, vol, lay):
        if lay.format != "zarr3":
            raise NotImplementedError("zarr-python writes zarr only")
        z = self.zarr.create_array(
            self.LocalStore(str(path)), shape=vol.shape, dtype="uint8", fill_value=0,
            chunks=(lay.chunk,) * 3, shards=None if lay.shard is None else (lay.shard,) * 3,
            compressors=[self.ZstdCodec(level=ZSTD_LEVEL, checksum=False)], dimension_names=("z", "y", "x"),
        )

        def go():
            z[...] = vol

        return go


class Cloudvolume:
    name = "cloudvolume"

    def __init__(self):
        from cloudvolume import CloudVolume

        self.CV = CloudVolume

    def prepare_read(self, path, box, lay):
        if lay.format != "precomputed":
            raise NotImplementedError("CloudVolume reads precomputed only")
        cv = self.CV("file://" + str(path), parallel=1, progress=False)
        (x0, y0, z0), (x1, y1, z1) = box
        return lambda: cv[x0:x1, y0:y1, z0:z1]

    @staticmethod
    def as_zyx(out):
        return np.asarray(out)[..., 0].T

    def prepare_write(self, path, vol, lay):
        if lay.format != "precomputed":
            raise NotImplementedError("CloudVolume writes precomputed only")
        n = vol.shape[0]
        cv = self.CV("file://" + str(path), info=precomputed_info(n, lay), parallel=1, progress=False)
        cv.commit_info()
        data = vol.T  # (x, y, z), F-contiguous view: no copy
        s = lay.shard
        blocks = [(x, y, z) for z in range(0, n, s) for y in range(0, n, s) for x in range(0, n, s)]

        def go():  # one whole shard per call: CloudVolume's only way to write a sharded volume
            for x, y, z in blocks:
                cv[x:x + s, y:y + s, z:z + s] = data[x:x + s, y:y + s, z:z + s]

        return go


ADAPTERS = {"volbridge": Volbridge, "tensorstore": Tensorstore, "zarr-python": ZarrPython, "cloudvolume": Cloudvolume}
# A writer's output is read back by another library.
VERIFIER = {"volbridge": "tensorstore", "tensorstore": "volbridge", "zarr-python": "volbridge", "cloudvolume": "volbridge"}


# -- stored layout checks -----------------------------------------------------------------------
METADATA_FILES = ("zarr.json", "info", "provenance")


def data_files(path: Path) -> list[Path]:
    return [f for f in path.rglob("*")
            if f.is_file() and f.name not in METADATA_FILES and ".volbridge-locks" not in f.parts]


def check_layout(path: Path, lay: Layout, size: int, who: str) -> float:
    """The stored layout is the one asked for; returns stored bytes / raw voxel bytes."""
    if lay.format == "zarr3":
        doc = json.loads((path / "zarr.json").read_text())
        grid = doc["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = doc["codecs"]
        if lay.shard is not None:
            if codecs[0]["name"] != "sharding_indexed":
                raise WrongResult(f"{who}: {path.name} is not sharded: codecs {codecs}")
            cfg = codecs[0]["configuration"]
            if cfg["chunk_shape"] != [lay.chunk] * 3 or cfg.get("index_location", "end") != "end":
                raise WrongResult(f"{who}: {path.name} sharding {cfg}")
            codecs = cfg["codecs"]
        zstd = [c for c in codecs if c["name"] == "zstd"]
        if grid != [lay.shard or lay.chunk] * 3 or len(zstd) != 1 or zstd[0]["configuration"]["level"] != ZSTD_LEVEL \
                or zstd[0]["configuration"].get("checksum", False):
            raise WrongResult(f"{who}: {path.name} has chunk grid {grid} and codecs {codecs}")
        files = data_files(path)
        want = (size // (lay.shard or lay.chunk)) ** 3
    else:
        info = json.loads((path / "info").read_text())
        got = info["scales"][0].get("sharding")
        want_spec = sharding_spec(size, lay)
        if got is None or any(got.get(k, "raw") != v for k, v in want_spec.items()):
            raise WrongResult(f"{who}: {path.name} has sharding {got}, expected {want_spec}")
        files = data_files(path)
        if any(f.suffix != ".shard" for f in files):
            raise WrongResult(f"{who}: {path.name} holds files other than shards: {sorted({f.suffix for f in files})}")
        want = (size // lay.shard) ** 3
    if len(files) != want:
        raise WrongResult(f"{who}: {path.name} has {len(files)} chunk/shard files, expected {want}")
    return sum(f.stat().st_size for f in files) / size**3


def zarr_concurrency():
    import zarr

    return zarr.config.get("async.concurrency")


# -- report -------------------------------------------------------------------------------------
def ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None


def _v(x) -> str:
    return "-" if x is None else (x if isinstance(x, str) else f"{x:.1f}")


def _r(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def verdict(row, missed_only: bool = False) -> str:
    """Targets apply to read rows: volbridge >= 1.0x tensorstore, >= 2x zarr-python."""
    if not row["operation"].startswith("read"):
        return ""
    out = []
    for peer, key in (("tensorstore", "vb/ts"), ("zarr-python", "vb/zp")):
        r = row["ratios"].get(key)
        if r is None:
            continue
        if r < TARGETS[peer]:
            out.append(f"{key} MISSED" if not missed_only else f"{key} {r:.2f} < {TARGETS[peer]:.1f}")
        elif not missed_only:
            out.append(f"{key} ok")
    return ", ".join(out)


def table_lines(rows, md: bool) -> list[str]:
    cols = ["layout", "operation", "volbridge", "tensorstore", "zarr-python", "cloud-volume", "vb/ts", "vb/zp", "vb/cv", "targets"]

    def vals(r):
        m = r["mb_s"]
        return [r["layout"], r["operation"], _v(m.get("volbridge")), _v(m.get("tensorstore")), _v(m.get("zarr-python")),
                _v(m.get("cloudvolume")), _r(r["ratios"].get("vb/ts")), _r(r["ratios"].get("vb/zp")),
                _r(r["ratios"].get("vb/cv")), verdict(r)]

    if md:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---", "---"] + ["---:"] * 7 + ["---"]) + "|"]
        for r in rows:
            v = vals(r)
            for i, k in ((6, "vb/ts"), (7, "vb/zp")):
                peer = "tensorstore" if k == "vb/ts" else "zarr-python"
                x = r["ratios"].get(k)
                if r["operation"].startswith("read") and x is not None and x >= TARGETS[peer]:
                    v[i] = f"**{v[i]}**"
            lines.append("| " + " | ".join(v) + " |")
        return lines
    w = [24, 11, 9, 11, 11, 12, 6, 6, 6, 0]
    fmt = lambda v: " ".join((s.ljust(n) if i < 2 else s.rjust(n)) if n else s for i, (s, n) in enumerate(zip(v, w)))
    lines = [fmt(cols), "-" * 110]
    lines += [fmt(vals(r)) for r in rows]
    return lines


def compact_json(result: dict) -> str:
    """Valid JSON, one line per top-level key and per row."""
    def one(k, v):
        if k == "rows":
            return ' "rows": [\n' + ",\n".join("  " + json.dumps(r) for r in v) + "\n ]"
        return f" {json.dumps(k)}: {json.dumps(v)}"

    return "{\n" + ",\n".join(one(k, v) for k, v in result.items()) + "\n}"


def markdown(result: dict, rows, kept: str) -> str:
    v = result["volume"]
    m = result["machine"]
    vers = ", ".join(f"{k} {x}" for k, x in result["versions"].items() if x)
    commit = (result["volbridge_commit"] or "?")[:7] + (" + uncommitted src changes" if result["volbridge_src_uncommitted_changes"] else "")
    misses = [f"{r['layout']} {r['operation']} ({verdict(r, missed_only=True)})" for r in rows if "MISSED" in verdict(r)]
    out = [
        "# zarr v3 and sharded precomputed on local disk: volbridge vs tensorstore vs zarr-python / cloud-volume",
        "",
        (f"Generated by `python bench/bench_formats.py` at {result['created']} on volbridge {commit}. "
        f"{m['cpus']} vCPUs ({m['platform']}, Python {m['python']}), load average {m['loadavg_start'][0]:.2f} at the "
        f"start and {m['loadavg_end'][0]:.2f} at the end (other sessions share the machine: wall times are noisy, "
        "the JSON below also has CPU seconds per repetition)."),
        "",
        (f"Data: {v['shape'][0]}^3 {v['dtype']} {v['data']} in the page cache; cutout {result['cutout']['shape_xyz'][0]}^3 "
        f"at x, y, z = {tuple(result['cutout']['start_xyz'])}. Read sources written once per layout by "
        f"{result['source_writer']} and read by every library (each result checked against the source array). "
        f"MB/s = 10^6 uncompressed voxel bytes/s, best of {result['repeat']['reads']} (reads) / "
        f"{result['repeat']['writes']} (writes), libraries interleaved. Ratios > 1: volbridge faster. "
        f"volbridge threads: {result['volbridge_threads']}. Versions: {vers}."),
        "",
        *table_lines(rows, md=True),
        "",
        "\"-\": the library does not apply to the layout (zarr-python reads zarr only; CloudVolume precomputed only). "
        "Targets (read rows): volbridge >= 1.0x tensorstore and >= 2x zarr-python. "
        + ("All met." if not misses else "Missed: " + "; ".join(misses) + "."),
        "",
        "Layouts:",
        "",
        *[f"* `{k}`: {d}" for k, d in result["layouts"].items()],
        "",
        "Notes per row (n/a reasons, write verification, stored size / raw size):",
        "",
    ]
    for r in rows:
        for lib, note in r["notes"].items():
            out.append(f"* {r['layout']} {r['operation']} {lib}: {note}")
    if result["failures"]:
        out += ["", "**FAILURES:**", ""] + [f"* {f}" for f in result["failures"]]
    out += ["", "<details><summary>JSON of this run</summary>", "", "```json", compact_json(result), "```", "",
            "</details>", "", KEEP_MARKER]
    return "\n".join(out) + kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="edge of the cubic volume (default 512)")
    ap.add_argument("--quick", action="store_true", help="256^3 volume, 150^3 cutout")
    ap.add_argument("--chunk", type=int, default=64, help="chunk edge of the unsharded zarr3 layout (default 64)")
    ap.add_argument("--inner", type=int, default=32, help="inner chunk edge of the sharded layouts (default 32)")
    ap.add_argument("--shard", type=int, default=128, help="shard edge of the sharded layouts (default 128)")
    ap.add_argument("--repeat", "-n", type=int, default=3, help="repetitions per measurement; best is kept (default 3, reads twice as many)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "formats.md", help="Markdown report path")
    ap.add_argument("--layouts", default="zarr3,zarr3_sharded,precomputed_sharded,precomputed_sharded_gzip")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma list from {','.join(LIBS)}")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {','.join(OPS)}")
    ap.add_argument("--source-writer", default="tensorstore", choices=("tensorstore", "volbridge"),
                    help="the library that writes the read sources (default tensorstore)")
    args = ap.parse_args(argv)

    size = 256 if args.quick else args.size
    cut_start, cut_edge = CUT_START, cutout_edge(size)
    if any(s + cut_edge > size for s in cut_start):
        ap.error(f"--size {size} is too small for a {cut_edge}^3 cutout at {cut_start}")
    if size % args.shard or args.shard % args.inner or size % args.chunk:
        ap.error("--size must be a multiple of --shard and --chunk, and --shard of --inner")
    all_layouts = make_layouts(args.chunk, args.inner, args.shard)
    layouts = [all_layouts[k] for k in args.layouts.split(",") if k]
    libs = [l for l in args.libs.split(",") if l]
    ops = [o for o in args.ops.split(",") if o]
    for l in libs:
        if l not in LIBS:
            ap.error(f"unknown library {l!r}")
    for o in ops:
        if o not in OPS:
            ap.error(f"unknown operation {o!r}")

    work = args.dir or Path(tempfile.mkdtemp(prefix="vb-bench-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work dir {work}", flush=True)
    load_start = os.getloadavg()
    print(f"# load average at start: {load_start[0]:.2f} (machine has {os.cpu_count()} cpus; a busy neighbour skews wall times)", flush=True)
    t0 = time.perf_counter()
    vol = em_like((size, size, size))
    print(f"# data: {size}^3 uint8 EM-like, generated in {time.perf_counter() - t0:.1f}s, mean {vol.mean():.1f} std {vol.std():.1f}", flush=True)

    from volbridge.engine import parallel as vb_parallel

    adapters = {l: ADAPTERS[l]() for l in libs}
    readers = {l: adapters.get(l) or ADAPTERS[l]() for l in set(VERIFIER.values()) | {args.source_writer}}

    full_box = ((0, 0, 0), (size, size, size))
    cut_box = (cut_start, tuple(s + cut_edge for s in cut_start))
    boxes = {"read_full": full_box, "read_cutout": cut_box}

    def expected(box):
        return vol[_zyx(box)]

    # Read sources: one writer per layout; every library's reads are checked against ``vol``.
    src: dict[str, Path] = {}
    src_ratio: dict[str, float] = {}
    if any(o.startswith("read") for o in ops):
        for lay in layouts:
            p = work / f"src-{lay.key}"
            shutil.rmtree(p, ignore_errors=True)
            t = time.perf_counter()
            readers[args.source_writer].prepare_write(p, vol, lay)()
            src_ratio[lay.key] = check_layout(p, lay, size, f"source writer {args.source_writer}")
            src[lay.key] = p
            print(f"# source {lay.key}: written by {args.source_writer} in {time.perf_counter() - t:.2f}s, "
                  f"stored/raw {src_ratio[lay.key]:.3f}", flush=True)
        settle()

    def verify_written(writer: str, path: Path, lay: Layout) -> str:
        stored = check_layout(path, lay, size, writer)
        reader = VERIFIER[writer]
        rd = readers[reader]
        out = rd.prepare_read(path, full_box, lay)()
        check_equal(rd.as_zyx(out), vol, f"{lay.key} {writer} write, read back by {reader}")
        return f"verified by reading back with {reader}; stored/raw {stored:.3f}"

    rows = []
    failures: list[str] = []
    for lay in layouts:
        lay_libs = [l for l in lay.libs if l in libs]
        for op in ops:
            nbytes = vol.nbytes if op != "read_cutout" else cut_edge**3
            times: dict[str, list[float]] = {l: [] for l in lay_libs}
            cpu: dict[str, list[float]] = {l: [] for l in lay_libs}
            notes: dict[str, str] = {}
            reps = args.repeat * (2 if op.startswith("read") else 1)
            for rep in range(reps):
                for lib in lay_libs:
                    if notes.get(lib, "").startswith(("FAIL", "n/a")):
                        continue
                    ad = adapters[lib]
                    try:
                        if op == "write_full":
                            dst = work / f"w-{lay.key}-{lib}"
                            shutil.rmtree(dst, ignore_errors=True)
                            fn = ad.prepare_write(dst, vol, lay)
                            settle()
                            t, tc = time.perf_counter(), time.process_time()
                            fn()
                            dt, dc = time.perf_counter() - t, time.process_time() - tc
                            if rep == reps - 1:
                                notes[lib] = verify_written(lib, dst, lay)
                            fn = None
                        else:
                            box = boxes[op]
                            fn = ad.prepare_read(src[lay.key], box, lay)
                            settle()
                            t, tc = time.perf_counter(), time.process_time()
                            out = fn()
                            dt, dc = time.perf_counter() - t, time.process_time() - tc
                            check_equal(ad.as_zyx(out), expected(box), f"{lay.key} {lib} {op}")
                            out = fn = None
                        times[lib].append(dt)
                        cpu[lib].append(dc)
                    except NotImplementedError as e:
                        notes[lib] = f"n/a: {e}"
                    except Exception as e:  # record and carry on; the run fails at the end
                        msg = f"FAIL: {type(e).__name__}: {e}"
                        notes[lib] = msg
                        failures.append(f"{lay.key} {op} {lib}: {msg}")
                        print(f"!! {lay.key} {op} {lib}: {msg}", file=sys.stderr, flush=True)
            ok = {l: ts_ for l, ts_ in times.items() if ts_ and not notes.get(l, "").startswith(("FAIL", "n/a"))}
            rate = {l: nbytes / min(ts_) / 1e6 for l, ts_ in ok.items()}
            mb_s = {l: ("n/a" if notes.get(l, "").startswith("n/a") else rate.get(l)) for l in lay_libs}
            vbr = rate.get("volbridge")
            row = {
                "layout": lay.key,
                "operation": op,
                "bytes": nbytes,
                "mb_s": mb_s,
                "ratios": {"vb/ts": ratio(vbr, rate.get("tensorstore")), "vb/zp": ratio(vbr, rate.get("zarr-python")),
                           "vb/cv": ratio(vbr, rate.get("cloudvolume"))},
                "seconds": {l: [round(x, 5) for x in v] for l, v in times.items()},
                "cpu_seconds": {l: [round(x, 5) for x in v] for l, v in cpu.items()},  # this process, all threads
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
                "notes": notes,
            }
            rows.append(row)
            print(f"# {lay.key:24s} {op:11s} " + "  ".join(
                f"{l}={rate[l]:.1f} MB/s (cpu {min(cpu[l]) * 1e3:.0f} ms)" for l in rate), flush=True)

    print()
    print(f"{size}^3 uint8 EM-like, local disk (page cache); MB/s (10^6 voxel bytes/s), best of "
          f"{2 * args.repeat} (reads) / {args.repeat} (writes); sources written by {args.source_writer}")
    print("\n".join(table_lines(rows, md=False)))
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)

    src_commit, src_dirty = common.source_state()
    result = {
        "benchmark": "formats",
        "volbridge_commit": src_commit,
        "volbridge_src_uncommitted_changes": src_dirty,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "volume": {"shape": [size] * 3, "dtype": "uint8", "data": "EM-like smoothed noise (bench_precomputed.em_like)"},
        "layouts": {l.key: l.title for l in layouts},
        "source_writer": args.source_writer,
        "source_stored_over_raw": src_ratio,
        "cutout": {"start_xyz": list(cut_start), "shape_xyz": [cut_edge] * 3},
        "repeat": {"reads": 2 * args.repeat, "writes": args.repeat},
        "units": "MB/s = 1e6 uncompressed voxel bytes per second, best of repeat; ratios > 1: volbridge faster",
        "targets": "read rows: volbridge/tensorstore >= 1.0, volbridge/zarr-python >= 2.0",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "volbridge_threads": vb_parallel.default_threads(),
        "zarr_async_concurrency": zarr_concurrency(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VOLBRIDGE_")},
        "versions": common.versions(("volbridge", "tensorstore", "zarr", "numcodecs", "cloud-volume", "numpy")),
        "rows": rows,
        "failures": failures,
    }
    kept = ""
    if args.out.exists():
        old = args.out.read_text()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    kept = kept if kept.strip() else "\n"
    return common.finish(args, result, work, failures, text=markdown(result, rows, kept))


if __name__ == "__main__":
    sys.exit(main())
