"""Skeletons of segmentation labels (TEASAR, by kimimaro), over volumes of any size, in nm.

Each chunk of the source is skeletonized with one voxel of overlap on its high sides and
kimimaro's ``fix_borders``, which makes the skeletons of two neighbouring chunks pass through the
same points of their shared plane; the pieces are then joined at those identical vertices into
one skeleton per label. Vertices are voxel coordinates times the scale's resolution (nm); each
vertex carries the radius (distance to the label's boundary) that TEASAR measured.

Outputs: ``{id: Skeleton}``, SWC files, or neuroglancer precomputed skeletons (with a ``radius``
vertex attribute, and the ``info`` the format wants; a precomputed volume's ``info`` names the
directory when the output sits inside it).
"""

from __future__ import annotations

import json
import numbers
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from ..formats.precomputed_sharding import label_sharding, write_sharded_objects
from ..geometry import Box
from ..kv.file import FileStore
from .base import FunctionService, Segmentation
from .labels import (
    label_job,
    label_journal,
    label_pool,
    label_units,
    name_in_volume_info,
    output_dir,
    pieces_by_label,
    record_output,
    warn_missing,
    write_file,
)

UNIT = (192, 192, 96)
TEASAR = {"scale": 1.5, "const": 300, "pdrf_scale": 100000, "pdrf_exponent": 4}


@dataclass
class Skeleton:
    """``vertices`` (N x 3 float32, nm, x y z), ``edges`` (M x 2 uint32), ``radii`` (N float32, nm)."""

    vertices: np.ndarray
    edges: np.ndarray
    radii: np.ndarray
    segid: int | None = None

    def cable_length(self) -> float:
        v = self.vertices.astype(np.float64)
        return float(np.linalg.norm(v[self.edges[:, 0]] - v[self.edges[:, 1]], axis=1).sum())

    def components(self) -> int:
        """Connected pieces (1 for a stitched skeleton of one connected object)."""
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        n = len(self.vertices)
        if n == 0:
            return 0
        g = sp.coo_matrix((np.ones(len(self.edges)), (self.edges[:, 0], self.edges[:, 1])), shape=(n, n))
        return int(connected_components(g, directed=False)[0])

    def to_swc(self) -> str:
        """SWC: one line per vertex, ``id type x y z radius parent`` (parents from a tree walk)."""
        n = len(self.vertices)
        parent = np.full(n, -2, dtype=np.int64)
        nbrs: list[list[int]] = [[] for _ in range(n)]
        for a, b in self.edges:
            nbrs[a].append(int(b))
            nbrs[b].append(int(a))
        lines = ["# volbridge skeleton", f"# id {self.segid}"]
        order: list[int] = []
        for root in range(n):
            if parent[root] != -2:
                continue
            parent[root] = -1
            stack = [root]
            while stack:
                v = stack.pop()
                order.append(v)
                for w in nbrs[v]:
                    if parent[w] == -2:
                        parent[w] = v
                        stack.append(w)
        index = {v: i + 1 for i, v in enumerate(order)}
        for v in order:
            x, y, z = self.vertices[v]
            p = -1 if parent[v] < 0 else index[int(parent[v])]
            lines.append(f"{index[v]} 0 {x:.3f} {y:.3f} {z:.3f} {self.radii[v]:.3f} {p}")
        return "\n".join(lines) + "\n"

    def to_precomputed(self) -> bytes:
        """Neuroglancer's skeleton encoding with one float32 ``radius`` vertex attribute."""
        n, m = len(self.vertices), len(self.edges)
        return (struct.pack("<II", n, m) + self.vertices.astype("<f4").tobytes() + self.edges.astype("<u4").tobytes()
                + self.radii.astype("<f4").tobytes())

    @classmethod
    def from_precomputed(cls, data: bytes, segid: int | None = None) -> "Skeleton":
        n, m = struct.unpack_from("<II", data)
        v = np.frombuffer(data, "<f4", 3 * n, 8).reshape(n, 3)
        e = np.frombuffer(data, "<u4", 2 * m, 8 + 12 * n).reshape(m, 2)
        r = np.frombuffer(data, "<f4", n, 8 + 12 * n + 8 * m)
        return cls(v.copy(), e.copy(), r.copy(), segid)


def _kimimaro():
    try:
        import kimimaro
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise UnsupportedError("skeletons need kimimaro: pip install 'volbridge[mesh]'") from e
    return kimimaro


def skeleton_unit(volume, scale: int, region: Box, ids, res, teasar: dict, dust: int, box: Box) -> dict:
    """(vertices nm, edges, radii, voxels of the label in ``box``) per label of ``box`` plus one
    voxel on its high sides. Dust is not dropped here: a unit sees only its piece of an object,
    and an object above the threshold split across units vanished, while big ones lost their
    ends wherever a unit held few of their voxels. :func:`skeleton` drops the labels whose
    voxels, summed over the units, stay below it (igneous' ``dust_global``)."""
    grown = Box(box.start, tuple(min(b + 1, r) for b, r in zip(box.stop, region.stop)))
    labels = volume.read(grown, scale)[..., 0]
    if not labels.any():
        return {}
    found = _kimimaro().skeletonize(
        np.asfortranarray(labels), teasar_params=teasar, anisotropy=tuple(float(r) for r in res),
        object_ids=None if ids is None else sorted(ids), dust_threshold=0, progress=False, fix_borders=True,
        fix_branching=True, parallel=1,
    )
    offset = np.array(grown.start, dtype=np.float64) * np.array(res, dtype=np.float64)
    out = {int(i): ((s.vertices.astype(np.float64) + offset).astype(np.float32), s.edges.astype(np.uint32),
                    s.radius.astype(np.float32), 0) for i, s in found.items() if len(s.vertices)}
    if dust:  # every label's own voxels here (not the plane shared with the next unit), also where
        # its piece made no skeleton: the total over the units decides, and must count them all
        own = labels[tuple(slice(0, b - a) for a, b in zip(box.start, box.stop))]
        values, n = np.unique(own, return_counts=True)
        wanted = None if ids is None else set(ids)
        for label, count in zip(values.tolist(), n.tolist()):
            if label and (wanted is None or label in wanted):
                v, e, r, _ = out.get(label, _NO_PIECE)
                out[label] = (v, e, r, count)
    return out


#: A unit's piece of a label that made no skeleton there (only its voxels count).
_NO_PIECE = (np.zeros((0, 3), np.float32), np.zeros((0, 2), np.uint32), np.zeros(0, np.float32), 0)


def _join(segid: int, parts: list) -> Skeleton:
    """One skeleton from its pieces: vertices that coincide (on shared planes) are one vertex."""
    verts = np.concatenate([p[0] for p in parts])
    radii = np.concatenate([p[2] for p in parts])
    offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    edges = np.concatenate([p[1] + o for p, o in zip(parts, offsets)])
    uniq, first, inverse = np.unique(np.round(verts, 3), axis=0, return_index=True, return_inverse=True)
    edges = inverse.reshape(-1)[edges]
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.unique(np.sort(edges, axis=1), axis=0).astype(np.uint32)
    return Skeleton(uniq.astype(np.float32), edges, radii[first], segid)


def skeleton(source: Any, ids: Iterable[int] | None = None, *, mip: int | None = None, bbox=None, output: str | None = None,
             format: str = "precomputed", teasar: dict | None = None, dust_threshold: int = 1000,
             executor=None, sharded: bool = False,
             progress: Callable[[int, int], None] | None = None, resume: bool = True) -> dict[int, Skeleton] | None:
    """TEASAR skeletons of ``ids`` (default: every label) of a segmentation (URL, VolumeArray or
    (z, y, x) ndarray with 1 nm voxels) within ``bbox`` of scale ``mip``; ``{id: Skeleton}``, or
    written to the directory ``output`` as ``precomputed`` (``sharded``: in
    ``neuroglancer_uint64_sharded_v1`` shard files keyed by segment id) or ``swc``.
    ``dust_threshold``: labels with fewer voxels than this in the whole region are skipped."""
    if sharded and format != "precomputed":
        raise InvalidArgumentError("only precomputed skeletons can be sharded, not swc")
    if format not in ("precomputed", "swc"):
        raise InvalidArgumentError(f"format must be precomputed or swc, got {format!r}")
    if isinstance(dust_threshold, bool) or not isinstance(dust_threshold, numbers.Integral) or dust_threshold < 0:
        raise InvalidArgumentError(f"dust_threshold is a voxel count >= 0, got {dust_threshold!r}")
    started = time.time()
    job = label_job(source, ids, mip, bbox, SKELETON)
    params = {**TEASAR, **(teasar or {})}
    units = label_units(job, UNIT)
    journal = label_journal(job, "skeleton", units, {"teasar": params, "dust": dust_threshold, "dust_over": "volume"}, resume)
    with label_pool(job, units, executor) as pool:
        parts = pieces_by_label(job, units, skeleton_unit, (params, dust_threshold), executor, progress, journal, pool)
    skels = {i: _join(i, pieces) for i, pieces in parts.items()
             if sum(p[3] for p in pieces) >= dust_threshold and any(len(p[0]) for p in pieces)}
    warn_missing(job, skels, "skeleton", f" (or fewer voxels than dust_threshold={dust_threshold})" if dust_threshold else "")
    if output is not None:
        write_skeletons(skels, output, format, sharded)
        record_output(job, output, "skeleton", {"format": format, "sharded": sharded, "teasar": params,
                                                "dust_threshold": dust_threshold}, started)
    if journal is not None:
        journal.finish()
    return skels if output is None else None


def write_skeletons(skels: dict[int, Skeleton], output: str, format: str, sharded: bool = False) -> None:
    path = output_dir(output, "skeletons")
    info = {"@type": "neuroglancer_skeletons", "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
            "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}]}
    if sharded:
        old = os.path.join(path, "info")
        spec = (json.load(open(old)).get("sharding") if os.path.exists(old) else None) or label_sharding(len(skels))
        info["sharding"] = spec
        write_sharded_objects(FileStore(path), spec, {i: s.to_precomputed() for i, s in skels.items()})
    for i, s in skels.items():
        if format == "swc":
            write_file(os.path.join(path, f"{i}.swc"), s.to_swc().encode())
        elif not sharded:
            write_file(os.path.join(path, str(i)), s.to_precomputed())
    if format == "precomputed":
        write_file(os.path.join(path, "info"), json.dumps(info).encode())
        name_in_volume_info(path, "skeletons")


SKELETON = FunctionService("skeleton", skeleton, requires=(Segmentation(),))

