"""Meshes of segmentation labels, over volumes of any size, in physical units (nm).

Marching cubes (zmesh) runs per chunk of the source, each chunk read with one voxel of overlap
on its high sides, so every cube between two voxels belongs to exactly one chunk: the fragments,
welded, are exactly the mesh of the whole volume (the tests check this). Vertices are voxel
coordinates times the scale's resolution, so meshes line up at every scale and with negative
offsets. Welded meshes are then Taubin-smoothed (``smoothing`` iterations; 0 keeps the raw
marching-cubes staircase, whose area overshoots a smooth surface by about 10 %); Taubin's
alternating steps keep the enclosed volume.

Outputs: ``{id: Mesh}``; OBJ or PLY files; neuroglancer legacy meshes (one fragment per id, the
``<id>:0`` manifest and the mesh directory's ``info``, referenced from a precomputed volume's
``info`` when the output sits beside it); neuroglancer multi-resolution Draco meshes
(``format="multires"``, see :mod:`.mesh_multires`).
"""

from __future__ import annotations

import json
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from ..geometry import Box
from .base import FunctionService, Segmentation
from .labels import (
    label_job,
    label_journal,
    label_pool,
    label_units,
    map_labels,
    name_in_volume_info,
    output_dir,
    pieces_by_label,
    record_output,
    unit_grid,
    warn_missing,
    write_file,
)

#: Meshing units: at least this many voxels a side (source chunks are grouped up to it).
UNIT = (128, 128, 64)
#: What ``mesh(..., output=...)`` writes.
FORMATS = ("obj", "ply", "precomputed", "multires")


def _zmesh():
    try:
        import zmesh
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise UnsupportedError("meshing needs zmesh: pip install 'volbridge[mesh]'") from e
    return zmesh


@dataclass
class Mesh:
    """A triangle mesh in nm: ``vertices`` (N x 3 float32, x y z), ``faces`` (M x 3 uint32)."""

    vertices: np.ndarray
    faces: np.ndarray
    segid: int | None = None

    @property
    def normals(self) -> np.ndarray:
        """Unit vertex normals (area-weighted face normals, summed)."""
        v, f = self.vertices.astype(np.float64), self.faces
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        n = np.zeros_like(v)
        for k in range(3):
            np.add.at(n, f[:, k], fn)
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return (n / np.where(norm == 0, 1, norm)).astype(np.float32)

    def _z(self):
        return _zmesh().Mesh(self.vertices, self.faces, None, id=self.segid)

    def to_obj(self) -> bytes:
        return self._z().to_obj()

    def to_ply(self) -> bytes:
        return self._z().to_ply()

    def to_precomputed(self) -> bytes:
        """Neuroglancer's legacy single-resolution fragment format."""
        return self._z().to_precomputed()

    def to_trimesh(self):
        import trimesh

        return trimesh.Trimesh(vertices=self.vertices, faces=self.faces, process=False)

    def simplified(self, target_faces: int) -> "Mesh":
        """This mesh reduced to about ``target_faces`` triangles by zmesh's quadric simplification
        (fast quadric mesh reduction); itself when it already has no more."""
        if len(self.faces) <= target_faces:
            return self
        zmesh = _zmesh()
        m = zmesh.simplify_fqmr(zmesh.Mesh(self.vertices.astype(np.float32), self.faces.astype(np.uint32), None),
                                max(1, int(target_faces)))
        if not len(m.faces):
            return self
        return Mesh(m.vertices.astype(np.float32), m.faces.astype(np.uint32), self.segid)

    def area(self) -> float:
        v, f = self.vertices.astype(np.float64), self.faces
        return float(0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum())

    def volume(self) -> float:
        v, f = self.vertices.astype(np.float64), self.faces
        return float(abs(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum()) / 6)

    def is_watertight(self) -> bool:
        """Every edge shared by exactly two faces."""
        f = self.faces.astype(np.int64)
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        _, counts = np.unique(e, axis=0, return_counts=True)
        return bool(len(counts)) and bool((counts == 2).all())


def taubin(vertices: np.ndarray, faces: np.ndarray, iterations: int, lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin smoothing: alternate shrink (``lam``) and inflate (``mu``) Laplacian steps."""
    if iterations <= 0 or not len(faces):
        return vertices
    import scipy.sparse as sp

    n = len(vertices)
    f = faces.astype(np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg[deg == 0] = 1
    v = vertices.astype(np.float64)
    for _ in range(iterations):
        for k in (lam, mu):
            v = v + k * ((adj @ v) / deg[:, None] - v)
    return v.astype(np.float32)


def mesh_unit(volume, scale: int, region: Box, ids, res, close_edges: bool, box: Box) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The raw marching-cubes fragments of ``box`` (plus one voxel on its high sides), in nm.

    ``close_edges``: where ``box`` reaches a face of ``region``, a layer of background is laid
    outside it, so a label cut by that face gets a cap half a voxel out (where its voxels end),
    as igneous closes meshes at dataset edges. Only the unit that owns the cubes there adds it:
    the low layer to units starting at the region's start, the high one to units ending at its
    stop (not grown past it), so no cube is meshed twice."""
    zmesh = _zmesh()
    grown = Box(box.start, tuple(min(b + 1, r) for b, r in zip(box.stop, region.stop)))
    labels = volume.read(grown, scale)[..., 0]
    if not labels.any():
        return {}
    start = np.array(grown.start, dtype=np.float64)
    if close_edges:
        pad = [(int(b == r0), int(e == r1)) for b, e, r0, r1 in zip(box.start, box.stop, region.start, region.stop)]
        if any(lo or hi for lo, hi in pad):
            framed = np.zeros(tuple(n + lo + hi for n, (lo, hi) in zip(labels.shape, pad)), labels.dtype, order="F")
            framed[tuple(slice(lo, lo + n) for n, (lo, _) in zip(labels.shape, pad))] = labels  # (x, y, z), as the Box
            labels = framed
            start -= [lo for lo, _ in pad]
    mesher = zmesh.Mesher(tuple(float(r) for r in res))
    mesher.mesh(np.asfortranarray(labels), close=False)
    # the labels present come from the mesher (a np.unique of the unit cost as much as meshing);
    # it reports them unsigned, so a negative label of a signed volume is mapped back
    raw = np.array(sorted(mesher.ids()), dtype=np.uint64)
    labels_of = raw.astype(labels.dtype).tolist()
    out = {}
    offset = start * np.array(res, dtype=np.float64)
    for key, label in zip(raw.tolist(), labels_of):
        if label == 0 or (ids is not None and label not in ids):
            continue
        m = mesher.get(key, normals=False)
        if len(m.faces):
            out[label] = ((m.vertices.astype(np.float64) + offset).astype(np.float32), m.faces.astype(np.uint32, copy=False))
    mesher.clear()
    return out


def mesh(source: Any, ids: Iterable[int] | None = None, *, mip: int | None = None, bbox=None, output: str | None = None,
         format: str = "precomputed", smoothing: int = 40, simplification: int = 1, multires=None, executor=None,
         progress: Callable[[int, int], None] | None = None, resume: bool = True,
         close_edges: bool = True) -> dict[int, Mesh] | None:
    """Meshes of ``ids`` (default: every label) of a segmentation (a URL, a VolumeArray or an
    ndarray (z, y, x), 1 nm voxels), within ``bbox`` (z, y, x corners) of scale ``mip``.

    Returns ``{id: Mesh}``, or writes them to ``output`` (a directory) as ``format``: ``obj``,
    ``ply``, ``precomputed`` (neuroglancer legacy) or ``multires`` (neuroglancer multi-resolution
    Draco; ``multires`` takes its :class:`~.mesh_multires.MultiresOptions`) with a provenance
    record beside them, and returns None. ``progress(done, total)`` after each unit. ``resume``:
    finished units are journaled until the job completes, so rerunning the same call after a
    failure meshes only what is left (change nothing in between). ``simplification``: keep about
    1/n of the triangles (zmesh's quadric reduction, after welding and smoothing). ``close_edges``:
    labels cut by a face of the region (the volume's bounds, or ``bbox``) are capped there, half a
    voxel out, so every mesh is closed (igneous's ``closed_dataset_edges``); False leaves them open
    there, for meshes of neighbouring boxes that are to be joined later."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Integral) or smoothing < 0:
        raise InvalidArgumentError(f"smoothing is a number of iterations >= 0, got {smoothing!r}")
    if not isinstance(simplification, int) or simplification < 1:
        raise InvalidArgumentError(f"simplification is a reduction factor >= 1, got {simplification!r}")
    if format not in FORMATS:
        raise InvalidArgumentError(f"format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, got {format!r}")
    if multires is not None and format != "multires":
        raise InvalidArgumentError(f"multires options are for format='multires', not {format!r}")
    started = time.time()
    job = label_job(source, ids, mip, bbox, MESH)
    units = label_units(job, UNIT)
    if not isinstance(close_edges, bool):
        raise InvalidArgumentError(f"close_edges is True or False, got {close_edges!r}")
    journal = label_journal(job, "mesh", units, {"close_edges": close_edges}, resume)
    with label_pool(job, units, executor) as pool:
        parts = pieces_by_label(job, units, mesh_unit, (close_edges,), executor, progress, journal, pool)
        # smoothing is the costly part of a weld; without it, shipping the pieces to the workers
        # and back costs more than welding them here
        grid = unit_grid(job, UNIT)
        meshes = map_labels(_weld, parts, (smoothing, job.res, simplification, (grid.origin, grid.chunk_shape)),
                            pool if smoothing or simplification > 1 else None)
    warn_missing(job, meshes, "mesh")
    if output is None:
        if journal is not None:
            journal.finish()
        return meshes
    if format == "multires":
        from .mesh_multires import write_multires

        write_multires(meshes, output, resolution=job.res, origin=job.region.start, options=multires)
    else:
        write_meshes(meshes, output, format)
    opts = dict(vars(multires)) if hasattr(multires, "__dict__") else multires
    record_output(job, output, "mesh", {"format": format, "smoothing": smoothing, "simplification": simplification,
                                        "close_edges": close_edges, "multires": opts}, started)
    if journal is not None:
        journal.finish()
    return None


def _weld(segid: int, frags: list, smoothing: int, res=(1.0, 1.0, 1.0), simplification: int = 1,
          seams: tuple | None = None) -> Mesh:
    """One mesh from its fragments: shared vertices merged (they coincide exactly), smoothed, then
    simplified by ``simplification`` (only now: simplifying fragments would leave seams).

    Marching-cubes vertices sit on a half-voxel lattice, so each is keyed by one int64 (its
    lattice x, y, z packed x-major). Fragments of neighbouring units share only the vertices on
    the plane between them; ``seams`` (the unit grid's origin and unit shape, voxels x, y, z)
    names those planes, and only vertices on them are matched: a tenth of them or fewer, where
    sorting every vertex cost most of a weld. Without ``seams`` every vertex is matched. Vertices
    keep their first copy, in fragment order.

    No face can degenerate: a face's vertices come from one fragment, whose vertices zmesh made
    distinct, and the merge only joins vertices of different fragments."""
    verts = np.concatenate([v for v, _ in frags])
    offsets = np.cumsum([0] + [len(v) for v, _ in frags[:-1]])
    faces = np.concatenate([f + o for (_, f), o in zip(frags, offsets)])
    if len(frags) > 1:  # one fragment's vertices are distinct already
        verts, faces = _merge_shared(verts, faces, [len(v) for v, _ in frags], np.asarray(res, dtype=np.float64) / 2, seams)
    out = Mesh(taubin(verts.astype(np.float32), faces, smoothing), faces.astype(np.uint32), segid)
    return out.simplified(len(faces) // simplification) if simplification > 1 else out


def _merge_shared(verts: np.ndarray, faces: np.ndarray, sizes: list[int], half: np.ndarray, seams: tuple | None):
    """``verts`` (fragments of ``sizes`` one after another) with each set of coinciding vertices
    reduced to its first copy, and ``faces`` renumbered to match."""
    n = len(verts)
    lattice = np.rint(verts.T / half[:, None]).astype(np.int64)  # (3, n): contiguous rows
    if seams is None:
        cand = np.arange(n)
    else:
        # a fragment lies in its unit, grown by one voxel on the high sides (or half a voxel out
        # on a closed region face, either side): its seam vertices are those on the unit's low or
        # high planes (2 * voxel on the lattice), found by comparisons. The unit is found from the
        # fragment's highest vertex, which lies above the unit's low plane (a cap below it may not)
        origin, unit = (2 * np.asarray(a, dtype=np.int64) for a in seams)
        on_seam = np.empty(n, dtype=bool)
        start = 0
        for size in sizes:
            part = lattice[:, start:start + size]
            low = origin + (part.max(axis=1) - origin - 1) // unit * unit
            hit = on_seam[start:start + size]
            np.equal(part[0], low[0], out=hit)
            for axis in range(3):
                hit |= part[axis] == low[axis] + unit[axis]
                if axis:
                    hit |= part[axis] == low[axis]
            start += size
        cand = np.flatnonzero(on_seam)
    if not len(cand):
        return verts, faces
    q = lattice[:, cand]
    q -= q.min(axis=1, keepdims=True)
    span = q.max(axis=1) + 1
    key = (q[0] * span[1] + q[1]) * span[2] + q[2]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)  # stable: the first copy
    target = np.arange(n)
    target[cand] = cand[first[inverse.reshape(-1)]]  # each vertex: the index of its first copy
    own = target == np.arange(n)
    renumber = np.cumsum(own) - 1
    return verts[own], renumber[target][faces]


def write_meshes(meshes: dict[int, Mesh], output: str, format: str) -> None:
    """Write ``meshes`` into the directory ``output`` (local path or ``file://``)."""
    path = output_dir(output, "meshes")
    for i, m in meshes.items():
        if format == "obj":
            write_file(os.path.join(path, f"{i}.obj"), m.to_obj())
        elif format == "ply":
            write_file(os.path.join(path, f"{i}.ply"), m.to_ply())
        else:
            write_file(os.path.join(path, f"{i}:0:mesh"), m.to_precomputed())
            write_file(os.path.join(path, f"{i}:0"), json.dumps({"fragments": [f"{i}:0:mesh"]}).encode())
    if format == "precomputed":
        write_file(os.path.join(path, "info"), json.dumps({"@type": "neuroglancer_legacy_mesh"}).encode())
        name_in_volume_info(path, "mesh")


def read_legacy(directory: str, segid: int) -> Mesh:
    """A neuroglancer legacy mesh (all fragments of its manifest) back as a Mesh."""
    zmesh = _zmesh()
    with open(os.path.join(directory, f"{segid}:0")) as f:
        manifest = json.load(f)
    parts = []
    for name in manifest["fragments"]:
        with open(os.path.join(directory, name), "rb") as f:
            parts.append(zmesh.Mesh.from_precomputed(f.read()))
    m = zmesh.Mesh.concatenate(*parts) if len(parts) > 1 else parts[0]
    return Mesh(m.vertices.astype(np.float32), m.faces.astype(np.uint32), segid)


MESH = FunctionService("mesh", mesh, requires=(Segmentation(),))

