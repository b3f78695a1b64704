"""What the label services (mesh, skeleton) share: opening the segmentation, splitting it into
units of whole chunks, running a per-unit function locally or on a cluster and gathering its
pieces per label in unit order, and writing files beside a precomputed volume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..array import VolumeArray
from ..engine.identity import instance_id
from ..engine.volume import Volume
from ..errors import InvalidArgumentError, UnsupportedError
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box, ChunkGrid
from .base import Service
from ..engine.parallel import cores, run_bounded
from .units import PROCESSES, PieceJournal, open_ref, process_pool, run_units, volume_ref, volume_url


class ArrayVolume(Volume):
    """An in-memory (z, y, x) label array as a read-only volume with 1 nm voxels."""

    format_name = "ndarray"

    def __init__(self, labels: np.ndarray):
        if labels.ndim != 3:
            raise InvalidArgumentError(f"a label array is (z, y, x), got shape {labels.shape}")
        self.data = labels.T  # (x, y, z) view
        self.url = "ndarray"
        bounds = Box.from_shape(self.data.shape)
        self.meta = VolumeMeta(labels.dtype, 1, "segmentation", (ScaleMeta("0", bounds, (1, 1, 1), (64, 64, 64), "raw"),))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return np.asfortranarray(self.data[box.slices()])[..., None]

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels=None) -> None:
        raise InvalidArgumentError("a label array given to a service is read-only")


@dataclass
class LabelJob:
    source: Any  # as given: a URL is what cluster workers open
    volume: Volume
    scale: int
    region: Box  # (x, y, z)
    res: tuple
    ids: frozenset | None


def label_job(source: Any, ids: Iterable[int] | None, mip: int, bbox, service: Service) -> LabelJob:
    """The segmentation a label service works on, checked against ``service``'s requirements
    before any work starts."""
    from ..api import array

    if isinstance(source, np.ndarray):
        arr = VolumeArray(ArrayVolume(source))
    else:
        arr = array(source) if isinstance(source, str) else source
    arr = arr.mip(mip) if mip is not None and arr.mip_level != mip else arr
    volume = arr.volume
    service.check(volume)
    scale = arr.mip_level
    bounds = volume.meta.scales[scale].bounds
    region = bounds if bbox is None else Box.of(tuple(bbox[0])[::-1], tuple(bbox[1])[::-1]).intersect(bounds)
    return LabelJob(source, volume, scale, region, volume.meta.scales[scale].resolution,
                    None if ids is None else frozenset(int(i) for i in ids))


def unit_grid(job: LabelJob, unit: tuple[int, int, int]) -> ChunkGrid:
    """The grid of the job's units: whole storage chunks, at least ``unit`` voxels a side."""
    grid = job.volume.grid(job.scale)
    chunk = tuple(max(c, -(-u // c) * c) for c, u in zip(grid.chunk_shape, unit))
    return ChunkGrid(job.region, chunk, grid.origin)


def label_units(job: LabelJob, unit: tuple[int, int, int]) -> list[Box]:
    """The job's region in units (:func:`unit_grid`), clipped to it."""
    return [c.box for c in unit_grid(job, unit).cells(job.region)]


def _by_ref(fn: Callable, ref, *args):
    return fn(open_ref(ref, "r"), *args)


def _by_ref_journaled(journal: PieceJournal | None, index: int, fn: Callable, ref, *args):
    """A unit in a worker process: its result, or None once it is in ``journal`` (read from there)."""
    out = _by_ref(fn, ref, *args)
    if journal is None:
        return out
    journal.save(index, out)
    return None


def _unit_bytes(job: LabelJob, units: list[Box]) -> int:
    """Memory one unit holds at its peak: its labels and what meshing or skeletonising makes of them."""
    return math.prod(units[0].shape) * np.dtype(job.volume.meta.dtype).itemsize * 6 if units else 1


@contextlib.contextmanager
def label_pool(job: LabelJob, units: list[Box], executor):
    """Worker processes for a local label job that asks for them (None otherwise): zmesh and
    kimimaro hold the GIL, so threads mesh one unit at a time (see :func:`.units.process_pool`)."""
    per_unit = _unit_bytes(job, units)
    with process_pool(job.volume, len(units), executor, per_unit) as pool:
        yield pool


def map_labels(fn: Callable, parts: dict[int, list], args: tuple, pool) -> dict[int, Any]:
    """``fn(label, pieces, *args)`` for every label, in ``pool``'s processes when there is one
    (in batches of similar total size, biggest first), else here; in label order."""
    if pool is None or len(parts) < 2:
        done: dict[int, Any] = {}

        def one(i: int) -> None:  # numpy's sorts and gathers release the GIL: threads overlap
            done[i] = fn(i, parts[i], *args)

        run_bounded(one, list(parts), 1 << 20)
        return {i: done[i] for i in parts}
    n = 4 * cores()
    order = sorted(parts, key=lambda i: -sum(_piece_size(p) for p in parts[i]))
    batches = [order[k::n] for k in range(n) if order[k::n]]
    done = {}
    for batch, out in zip(batches, pool.map(_map_batch, [(fn, [(i, parts[i]) for i in b], args) for b in batches])):
        done.update(zip(batch, out))
    return {i: done[i] for i in parts}


def _piece_size(piece) -> int:
    return sum(getattr(a, "size", 0) for a in piece) if isinstance(piece, tuple) else 1


def _map_batch(task) -> list:
    fn, items, args = task
    return [fn(i, pieces, *args) for i, pieces in items]


def pieces_by_label(job: LabelJob, units: list[Box], fn: Callable, extra: tuple, executor=None,
                    progress: Callable[[int, int], None] | None = None,
                    journal: PieceJournal | None = None, pool=None) -> dict[int, list]:
    """``fn(volume, scale, region, ids, res, *extra, unit)`` -> {label: piece} for every unit,
    locally or on ``executor``; each label's pieces in unit order, whatever order units finished
    in, so the result is the same byte for byte. ``progress(done, total)`` after each unit.
    ``journal`` keeps finished units' pieces, so a rerun after a failure computes only the rest;
    ``pool`` (:func:`label_pool`) runs the units in worker processes."""
    with journal.running() if journal is not None else contextlib.nullcontext():
        return _pieces_by_label(job, units, fn, extra, executor, progress, journal, pool)


def _pieces_by_label(job, units, fn, extra, executor, progress, journal, pool) -> dict[int, list]:
    args = (job.scale, job.region, job.ids, job.res, *extra)
    found: dict[int, dict] = journal.load() if journal is not None else {}
    todo = [i for i in range(len(units)) if i not in found]
    lock = threading.Lock()
    done = [len(found)]

    def finished(i: int, out: dict, saved: bool = False) -> None:
        if journal is not None and not saved:
            journal.save(i, out)
        with lock:
            found[i] = out
            done[0] += 1
            n = done[0]
        if progress is not None:
            progress(n, len(units))

    if pool is not None:
        from concurrent.futures import as_completed as completed

        # each worker journals its own unit and this process reads it back from the (page-cached)
        # file: one serialisation instead of two, and the writes run in parallel
        futures = {pool.submit(_by_ref_journaled, journal, i, fn, pool.ref, *args, units[i]): i for i in todo}
        try:
            for fut in completed(futures):
                i, out = futures[fut], fut.result()
                if journal is not None:
                    try:
                        out = journal.load_one(i)
                    except FileNotFoundError:  # the journal was cleaned away under us: redo the unit
                        out = fn(job.volume, *args, units[i])
                finished(i, out, saved=True)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    elif executor is None or executor == PROCESSES:
        def one(i: int) -> None:
            finished(i, fn(job.volume, *args, units[i]))

        per_unit = _unit_bytes(job, units)
        run_units(todo, one, (), bytes_per_unit=per_unit)
    else:  # the pieces come back to the client; the workers open the source themselves
        if not isinstance(job.source, str):
            raise InvalidArgumentError("on a cluster, give the source as a URL: the workers open it themselves")
        from distributed import as_completed

        ref = volume_ref(job.volume)
        futures = {executor.submit(_by_ref, fn, ref, *args, units[i]): i for i in todo}
        for fut in as_completed(list(futures)):
            finished(futures[fut], fut.result())
    parts: dict[int, list] = {}
    for i in range(len(units)):
        for label, piece in found[i].items():
            parts.setdefault(label, []).append(piece)
    return dict(sorted(parts.items()))


def label_journal(job: LabelJob, service: str, units: list[Box], parameters: dict, resume: bool) -> PieceJournal | None:
    """The journal of a label job, or None where its source has no lasting name (an ndarray, an
    in-memory store). The key names the volume absolutely and every unit's box, so no other
    volume or unit layout can pick up its pieces."""
    url = volume_url(job.volume)  # absolute: the volume's own URL may be a relative path
    if not resume or isinstance(job.source, np.ndarray) or url == "ndarray" or url.startswith("mem:"):
        return None
    geometry = hashlib.sha1(repr([(u.start, u.stop) for u in units]).encode()).hexdigest()
    return PieceJournal({"service": service, "url": url, "instance": instance_id(job.volume), "format": job.volume.format_name,
                         "scale": job.scale,
                         "region": [job.region.start, job.region.stop], "ids": None if job.ids is None else sorted(job.ids),
                         "units": geometry, **parameters})


def warn_missing(job: LabelJob, made: dict, what: str, why: str = "") -> None:
    """Warn of labels asked for by id that gave no output: a run asked for ids the volume lacks
    ended with only a provenance file and looked done (a review found)."""
    if job.ids is None:
        return
    missing = sorted(set(job.ids) - set(made))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        warnings.warn(f"no {what} for label(s) {shown}: no voxels of them in the region at mip {job.scale}{why}", stacklevel=3)


def record_output(job: LabelJob, output: str, service: str, parameters: dict, started: float) -> None:
    """The provenance record of a label service's output directory (``provenance`` beside its
    ``info``): service, parameters, source, box (z, y, x), scale, times, host."""
    from . import provenance

    source = job.source if isinstance(job.source, str) else job.volume.url
    box = (job.region.start[::-1], job.region.stop[::-1])
    params = {"ids": None if job.ids is None else sorted(job.ids), **parameters}
    provenance.append_beside(output, provenance.record(service, params, source, box=box, scale=job.scale,
                                                       started=started, ended=time.time()))


def output_dir(output: str, what: str) -> str:
    path = output[len("file://"):] if output.startswith("file://") else output
    if "://" in path:
        raise UnsupportedError(f"{what} are written to local directories for now")
    os.makedirs(path, exist_ok=True)
    return path


def write_file(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def name_in_volume_info(output: str, key: str) -> None:
    """A directory (a path or a store URL) inside a precomputed segmentation is named in its
    ``info`` (``mesh``, ``skeletons``), so neuroglancer and CloudVolume find it."""
    from ..kv import open_store

    if "://" in output:
        scheme, rest = output.split("://", 1)
        rest = rest.rstrip("/")
        if "/" not in rest.lstrip("/"):
            return
        parent, name = f"{scheme}://{rest.rsplit('/', 1)[0]}", rest.rsplit("/", 1)[1]
    else:
        path = os.path.abspath(output)
        parent, name = os.path.dirname(path), os.path.basename(path)
        if parent == path:
            return
    store = open_store(parent)
    raw = store.get("info")
    if raw is None:
        return
    try:
        doc = json.loads(raw)
    except ValueError:
        return  # not a volume's info: nothing to name
    if not isinstance(doc, dict) or doc.get("type") != "segmentation" or doc.get(key) == name:
        return

    def named(old: bytes | None) -> bytes:
        current = json.loads(old) if old else doc
        current[key] = name
        return json.dumps(current, indent=2).encode()

    store.update("info", named)
