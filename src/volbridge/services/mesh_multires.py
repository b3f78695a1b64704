"""Neuroglancer multi-resolution meshes (``neuroglancer_multilod_draco``): levels of detail of
one welded mesh per label, each level cut into fragments on an octree, each fragment a Draco mesh.

How a segment is built (:func:`encode_segment`):

- **Levels.** Level 0 is the mesh as meshed. Level ``k`` is level ``k - 1`` simplified to a
  quarter of its triangles (zmesh's quadric reduction), while its fragments double in size: a
  fragment keeps about as many triangles at every level, so neuroglancer draws about as many
  whatever the zoom. Levels go on until one fragment holds the whole object.
- **Fragments.** Level ``k`` is cut on the grid ``grid_origin + chunk_shape * 2**k * p``.
  Triangles are clipped at the planes (never moved between fragments), so level 0 keeps its
  area and volume exactly, and shared edges are cut at the same point on both sides.
- **The 2x2x2 rule.** Neuroglancer draws a level > 0 fragment only in the octants whose children
  are not drawn, sorting each triangle into one octant by its quantized vertices: coordinates below
  ``2**(bits - 1)`` are low, above it high, equal to it either. So level > 0 fragments are also
  clipped at that plane, ``2**(bits-1) / (2**bits - 1)`` of the way across (not quite the middle),
  and a clipped vertex lands exactly on it after quantization: no triangle crosses an octant.
- **Quantization.** Vertices are integers in ``[0, 2**bits)`` across each fragment's box, stored
  as Draco integer positions (Draco's own quantization is not used, as the format requires).
  The box edges are computed from the float32 values the manifest stores, so a reader
  dequantizes onto the same lattice: neighbouring fragments meet without cracks.
- **Empty parents.** Every fragment has a parent on the next level (an empty one, zero bytes,
  where the simplified mesh has nothing there), so neuroglancer's octree reaches it.

One segment is a pair of bytes (:class:`Manifest` bytes, fragment data bytes): unsharded they
are ``<segid>.index`` and ``<segid>`` in the mesh directory; a shard writer stores the manifest
under key ``segid`` and the data just before it. Vertices and the manifest are in the mesh's own
x, y, z order and in nm, with an identity ``transform``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import (
    ChunkDecodeError,
    InvalidArgumentError,
    MetadataError,
    UnsupportedError,
)
from ..formats.precomputed_sharding import PrecomputedShardCodec, ShardingSpec, label_sharding, write_sharded_objects
from ..kv import open_store
from .labels import name_in_volume_info
from .mesh import Mesh

MESH_TYPE = "neuroglancer_multilod_draco"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Level k keeps 1/REDUCTION of the triangles of level k - 1 (its fragments have 4x the area).
REDUCTION = 4
#: Meshes this small are not simplified further.
MIN_FACES = 64
#: Positions up to 2**21 a side fit a 63-bit Morton code.
_MORTON_BITS = 21


def _draco():
    try:
        import DracoPy
    except ImportError as e:  # pragma: no cover - installed with the mesh extra in tests
        raise UnsupportedError("multi-resolution meshes need DracoPy: pip install DracoPy") from e
    return DracoPy


@dataclass
class MultiresOptions:
    """How :func:`volbridge.services.mesh.mesh` writes ``format="multires"``.

    ``chunk_shape``: level 0 fragments, in voxels of the meshed scale (z, y, x like every tuple),
    on the grid of the meshed region's corner. ``num_lods``: levels of detail (default: until one
    fragment holds the object). ``vertex_quantization_bits``: 10 or 16. ``compression_level``:
    Draco's, 0 (fast) to 10 (small)."""

    chunk_shape: tuple[int, int, int] = (64, 64, 64)
    num_lods: int | None = None
    vertex_quantization_bits: int = 16
    compression_level: int = 7
    #: Store the segments in ``neuroglancer_uint64_sharded_v1`` shard files keyed by segment id
    #: (each manifest right after its fragment data, as neuroglancer reads them).
    sharded: bool = False


@dataclass
class Manifest:
    """A segment's manifest (``<segid>.index``), in x, y, z order.

    ``fragment_positions[lod]`` is ``(n, 3)`` uint32 in Z-curve order; ``fragment_sizes[lod]`` the
    Draco bytes of each (0 for an empty fragment)."""

    chunk_shape: np.ndarray  # (3,) float32
    grid_origin: np.ndarray  # (3,) float32
    lod_scales: np.ndarray  # (num_lods,) float32
    vertex_offsets: np.ndarray  # (num_lods, 3) float32
    fragment_positions: list[np.ndarray]
    fragment_sizes: list[np.ndarray]

    @property
    def num_lods(self) -> int:
        return len(self.lod_scales)

    @property
    def data_size(self) -> int:
        """Total bytes of the fragment data."""
        return int(sum(int(s.sum(dtype=np.uint64)) for s in self.fragment_sizes))

    def lod_range(self, lod: int) -> tuple[int, int]:
        """Bytes ``[start, end)`` of level ``lod`` in the fragment data (levels are stored in order)."""
        if not 0 <= lod < self.num_lods:
            raise InvalidArgumentError(f"lod {lod} is out of range: this mesh has lods 0-{self.num_lods - 1}")
        start = sum(int(s.sum(dtype=np.uint64)) for s in self.fragment_sizes[:lod])
        return start, start + int(self.fragment_sizes[lod].sum(dtype=np.uint64))

    def fragment_box(self, lod: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (low corner, size) of fragment ``index`` of level ``lod``, in stored-model units."""
        size = self.chunk_shape.astype(np.float64) * 2**lod
        low = self.grid_origin.astype(np.float64) + self.vertex_offsets[lod] + size * self.fragment_positions[lod][index]
        return low, size

    def to_bytes(self) -> bytes:
        n = self.num_lods
        parts = [
            np.asarray(self.chunk_shape, "<f4").tobytes(),
            np.asarray(self.grid_origin, "<f4").tobytes(),
            struct.pack("<I", n),
            np.asarray(self.lod_scales, "<f4").tobytes(),
            np.asarray(self.vertex_offsets, "<f4").reshape(n, 3).tobytes(),
            np.array([len(p) for p in self.fragment_positions], "<u4").tobytes(),
        ]
        for pos, sizes in zip(self.fragment_positions, self.fragment_sizes):
            parts.append(np.ascontiguousarray(np.asarray(pos, "<u4").T).tobytes())  # [3, n]: all x, all y, all z
            parts.append(np.asarray(sizes, "<u4").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "manifest") -> Manifest:
        """Parse and check a manifest; ``name`` (its key) is named in the error if it is malformed."""
        data = bytes(data)
        if len(data) < 28 or len(data) % 4:
            raise MetadataError(f"{name}: a multi-resolution mesh manifest has a 28-byte header and "
                                f"whole 4-byte words; got {len(data)} bytes (truncated?)")
        chunk_shape = np.frombuffer(data, "<f4", 3, 0).copy()
        grid_origin = np.frombuffer(data, "<f4", 3, 12).copy()
        (n,) = struct.unpack_from("<I", data, 24)
        head = 28 + 20 * n  # lod_scales, vertex_offsets, num_fragments_per_lod
        if n == 0 or len(data) < head:
            raise MetadataError(f"{name}: manifest of {len(data)} bytes is too short for {n} lods "
                                f"(expected at least {head}; truncated?)")
        lod_scales = np.frombuffer(data, "<f4", n, 28).copy()
        vertex_offsets = np.frombuffer(data, "<f4", 3 * n, 28 + 4 * n).reshape(n, 3).copy()
        counts = np.frombuffer(data, "<u4", n, 28 + 16 * n).astype(np.int64)
        expected = head + 16 * int(counts.sum())
        if len(data) != expected:
            raise MetadataError(f"{name}: manifest of {len(data)} bytes; {n} lods of {counts.tolist()} fragments "
                                f"take {expected} bytes (truncated or corrupt)")
        if not (np.isfinite(chunk_shape).all() and (chunk_shape > 0).all() and np.isfinite(grid_origin).all()):
            raise MetadataError(f"{name}: chunk_shape {chunk_shape.tolist()} and grid_origin "
                                f"{grid_origin.tolist()} must be finite, with a positive chunk_shape")
        positions, sizes, offset = [], [], head
        for c in counts:
            c = int(c)
            positions.append(np.frombuffer(data, "<u4", 3 * c, offset).reshape(3, c).T.astype(np.uint32))
            sizes.append(np.frombuffer(data, "<u4", c, offset + 12 * c).astype(np.uint32))
            offset += 16 * c
        return cls(chunk_shape, grid_origin, lod_scales, vertex_offsets, positions, sizes)


def info(vertex_quantization_bits: int = 16, transform: Sequence[float] = IDENTITY,
         lod_scale_multiplier: float = 1.0) -> dict:
    """The mesh directory's ``info``."""
    _check_bits(vertex_quantization_bits)
    if len(transform) != 12:
        raise InvalidArgumentError(f"transform is 12 numbers (a row-major 3x4 matrix), got {len(transform)}")
    return {"@type": MESH_TYPE, "vertex_quantization_bits": int(vertex_quantization_bits),
            "transform": [float(t) for t in transform], "lod_scale_multiplier": float(lod_scale_multiplier)}


def _check_bits(bits: int) -> None:
    if bits not in (10, 16):
        raise InvalidArgumentError(f"vertex_quantization_bits must be 10 or 16, got {bits!r}")


# --- geometry: Z-curve order and clipping -------------------------------------------------------


def morton_codes(positions: np.ndarray) -> np.ndarray:
    """Z-curve codes of ``(n, 3)`` grid positions: bits interleaved x, y, z from the lowest."""
    p = np.asarray(positions, dtype=np.uint64).reshape(-1, 3)
    code = np.zeros(len(p), dtype=np.uint64)
    bits = int(p.max()).bit_length() if len(p) else 0
    if bits > _MORTON_BITS:
        raise InvalidArgumentError(f"fragment positions up to {int(p.max())}: more than 2**{_MORTON_BITS} "
                                   "fragments a side (make chunk_shape larger)")
    one = np.uint64(1)
    for b in range(bits):
        for d in range(3):
            code |= ((p[:, d] >> np.uint64(b)) & one) << np.uint64(3 * b + d)
    return code


def _edge_points(u: np.ndarray, v: np.ndarray, axis: int, plane: np.ndarray) -> np.ndarray:
    """Where edges ``u``-``v`` (each (n, 3), on opposite sides) meet ``x[axis] = plane``.

    Each edge is walked from its lower end, so two triangles sharing it get the same point; the
    point is clamped into the edge's box, so it crosses no plane the edge did not cross."""
    swap = u[:, axis] > v[:, axis]
    a = np.where(swap[:, None], v, u)
    b = np.where(swap[:, None], u, v)
    t = (plane - a[:, axis]) / (b[:, axis] - a[:, axis])
    p = a + t[:, None] * (b - a)
    p = np.clip(p, np.minimum(a, b), np.maximum(a, b))
    p[:, axis] = plane
    return p


def _cut(tris: np.ndarray, axis: int, plane: np.ndarray) -> np.ndarray:
    """Cut triangles ``(n, 3, 3)`` that cross ``x[axis] = plane[i]`` into 2 or 3 that do not,
    keeping their winding."""
    side = np.sign(tris[:, :, axis] - plane[:, None]).astype(np.int8)
    # the lone vertex: on the plane (then the other two lie on either side), or alone on its side
    lone = np.argmax(side == -np.sign(side.sum(axis=1, dtype=np.int8))[:, None], axis=1)
    rows = np.arange(len(tris))
    a, b, c = (tris[rows, (lone + k) % 3] for k in range(3))
    on = side[rows, lone] == 0
    out = []
    if on.any():  # a on the plane: b and c on either side, cut bc
        q = _edge_points(b[on], c[on], axis, plane[on])
        out += [np.stack([a[on], b[on], q], 1), np.stack([a[on], q, c[on]], 1)]
    off = ~on
    if off.any():  # a alone: cut ab and ac; a triangle on a's side and a quad on the other
        ab = _edge_points(a[off], b[off], axis, plane[off])
        ac = _edge_points(a[off], c[off], axis, plane[off])
        out += [np.stack([a[off], ab, ac], 1), np.stack([ab, b[off], c[off]], 1), np.stack([ab, c[off], ac], 1)]
    return np.concatenate(out)


def clip_to_planes(tris: np.ndarray, planes: Sequence[np.ndarray]) -> np.ndarray:
    """Triangles ``(n, 3, 3)`` (float64) cut so that none crosses a plane ``x[d] = planes[d][k]``
    (each sorted); a triangle may touch a plane. Area and orientation are kept."""
    for axis, pl in enumerate(planes):
        if len(pl) == 0:
            continue
        done, work = [], tris
        while len(work):
            coord = work[:, :, axis]
            low, high = coord.min(axis=1), coord.max(axis=1)
            first = np.minimum(np.searchsorted(pl, low, side="right"), len(pl) - 1)  # first plane above low
            plane = pl[first]
            cross = (plane > low) & (plane < high)
            done.append(work[~cross])
            work = _cut(work[cross], axis, plane[cross]) if cross.any() else work[:0]
        tris = np.concatenate(done)
    return tris


# --- encoding -----------------------------------------------------------------------------------


def _lod_meshes(mesh: Mesh, num_lods: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Level 0 and its successive simplifications, each (vertices float64, faces)."""
    out = [(mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64))]
    level = mesh
    for _ in range(1, num_lods):
        if len(level.faces) > MIN_FACES:
            level = level.simplified(max(len(level.faces) // REDUCTION, MIN_FACES))
        out.append((level.vertices.astype(np.float64), level.faces.astype(np.int64)))
    return out


def _encode_fragment(tris: np.ndarray, low: np.ndarray, size: np.ndarray, bits: int, level: int) -> bytes:
    """One fragment's triangles (n, 3, 3) in nm as a Draco mesh of integer positions across its box."""
    top = 2**bits - 1
    q = np.clip(np.rint((tris.reshape(-1, 3) - low) / size * top), 0, top).astype(np.int64)
    key = (q[:, 0] << 32) | (q[:, 1] << 16) | q[:, 2]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    faces = inverse.reshape(-1, 3)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    if not keep.any():
        return b""  # all its triangles collapsed below the quantization step
    used, faces = np.unique(faces[keep], return_inverse=True)
    verts = q[first[used]].astype(np.int32)  # int32: a Draco integer (not quantized) attribute
    return _draco().encode(verts, faces.reshape(-1, 3).astype(np.uint32), quantization_bits=0,
                           compression_level=level)


def encode_segment(mesh: Mesh, chunk_shape: Sequence[float], grid_origin: Sequence[float] = (0.0, 0.0, 0.0), *,
                   num_lods: int | None = None, vertex_quantization_bits: int = 16,
                   lod0_scale: float | None = None, compression_level: int = 7) -> tuple[bytes, bytes]:
    """The (manifest, fragment data) of one segment's multi-resolution mesh.

    ``chunk_shape`` (level 0 fragment size) and ``grid_origin`` (a corner of the fragment grid)
    are in nm and in x, y, z order like the mesh's vertices. The manifest's origin is the grid
    corner at or below the mesh's lowest point. ``lod0_scale`` is the detail of level 0 in nm
    (default: the mean edge length); level k has ``lod0_scale * 2**k``."""
    _check_bits(vertex_quantization_bits)
    chunk = np.asarray(chunk_shape, dtype=np.float32).astype(np.float64)  # as the manifest stores it
    if chunk.shape != (3,) or not (np.isfinite(chunk).all() and (chunk > 0).all()):
        raise InvalidArgumentError(f"chunk_shape is three positive sizes in nm, got {chunk_shape!r}")
    anchor = np.asarray(grid_origin, dtype=np.float64)
    if anchor.shape != (3,) or not np.isfinite(anchor).all():
        raise InvalidArgumentError(f"grid_origin is three numbers in nm, got {grid_origin!r}")
    if num_lods is not None and num_lods < 1:
        raise InvalidArgumentError(f"num_lods must be at least 1, got {num_lods}")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        manifest = Manifest(chunk.astype(np.float32), anchor.astype(np.float32), np.ones(1, np.float32),
                            np.zeros((1, 3), np.float32), [np.zeros((0, 3), np.uint32)], [np.zeros(0, np.uint32)])
        return manifest.to_bytes(), b""
    if num_lods is None:  # until one fragment holds the object
        used = verts[faces.ravel()]
        span = np.floor((used.max(axis=0) - anchor) / chunk) - np.floor((used.min(axis=0) - anchor) / chunk)
        num_lods = int(span.max()).bit_length() + 1
    if lod0_scale is None:
        lod0_scale = float(np.linalg.norm(verts[faces] - verts[faces[:, [1, 2, 0]]], axis=-1).mean())
    levels = _lod_meshes(mesh, num_lods)
    low = np.min([v[f.ravel()].min(axis=0) for v, f in levels], axis=0)  # simplification may move out a bit
    high = np.max([v[f.ravel()].max(axis=0) for v, f in levels], axis=0)
    origin = (anchor + np.floor((low - anchor) / chunk) * chunk).astype(np.float32).astype(np.float64)
    origin = np.where(origin > low, origin - chunk, origin)  # float32 rounding must not pass the mesh
    cells = np.maximum(np.floor((high - origin) / chunk).astype(np.int64), 0)  # last level-0 cell, per axis
    bits, top = vertex_quantization_bits, 2**vertex_quantization_bits - 1
    split = 2 ** (bits - 1) / top  # where neuroglancer splits a fragment into octants

    positions: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    data: list[bytes] = []
    children = np.zeros((0, 3), np.int64)
    for lod, (v, f) in enumerate(levels):
        size = chunk * 2**lod
        n = (cells >> lod) + 1  # fragments a side at this level
        bounds = [origin[d] + np.arange(n[d] + 1) * size[d] for d in range(3)]
        planes = bounds if lod == 0 else [np.sort(np.concatenate([b, b[:-1] + size[d] * split]))
                                          for d, b in enumerate(bounds)]
        tris = clip_to_planes(v[f], planes)
        centre = tris.mean(axis=1)
        cell = np.stack([np.clip(np.searchsorted(bounds[d], centre[:, d], side="right") - 1, 0, n[d] - 1)
                         for d in range(3)], axis=1)
        linear, frag_of = np.unique((cell[:, 0] * n[1] + cell[:, 1]) * n[2] + cell[:, 2], return_inverse=True)
        keys = np.stack([linear // (n[1] * n[2]), linear // n[2] % n[1], linear % n[2]], axis=1)
        # every fragment of the level below has a parent here, if only an empty one
        pos = np.unique(np.concatenate([keys, children >> 1]), axis=0)
        pos = pos[np.argsort(morton_codes(pos), kind="stable")]
        order = np.argsort(frag_of, kind="stable")
        ends = np.searchsorted(frag_of[order], np.arange(len(keys) + 1))
        blobs = {tuple(key): _encode_fragment(tris[order[ends[i]:ends[i + 1]]], origin + key * size, size, bits,
                                              compression_level)
                 for i, key in enumerate(keys.tolist())}
        level = [blobs.get(tuple(p), b"") for p in pos.tolist()]
        positions.append(pos.astype(np.uint32))
        sizes.append(np.array([len(b) for b in level], dtype=np.uint32))
        data += level
        children = pos
    manifest = Manifest(
        chunk_shape=chunk.astype(np.float32), grid_origin=origin.astype(np.float32),
        lod_scales=(lod0_scale * 2.0 ** np.arange(num_lods)).astype(np.float32),
        vertex_offsets=np.zeros((num_lods, 3), np.float32),
        fragment_positions=positions, fragment_sizes=sizes,
    )
    return manifest.to_bytes(), b"".join(data)


# --- decoding -----------------------------------------------------------------------------------


def decode_lod(manifest: Manifest, lod: int, data: bytes, vertex_quantization_bits: int,
               transform: Sequence[float] = IDENTITY, segid: int | None = None, name: str = "fragment data") -> Mesh:
    """Level ``lod`` of a segment as one Mesh in nm (fragments concatenated, not welded), from that
    level's bytes of the fragment data (``manifest.lod_range(lod)``)."""
    start, end = manifest.lod_range(lod)
    if len(data) != end - start:
        raise ChunkDecodeError(f"{name}: lod {lod} is {end - start} bytes by its manifest, got {len(data)}")
    DracoPy = _draco()
    top = 2**vertex_quantization_bits - 1
    matrix = np.asarray(transform, dtype=np.float64).reshape(3, 4)
    verts, faces, count, offset = [], [], 0, 0
    for i, size in enumerate(manifest.fragment_sizes[lod].tolist()):
        blob, offset = data[offset:offset + size], offset + size
        if not size:
            continue
        try:
            m = DracoPy.decode(bytes(blob))
        except Exception as e:
            raise ChunkDecodeError(f"{name}: fragment {i} of lod {lod} is not a Draco mesh ({e})") from e
        q = np.asarray(m.points, dtype=np.float64).reshape(-1, 3)
        f = np.asarray(m.faces, dtype=np.int64).reshape(-1, 3)
        if len(q) and (q.min() < 0 or q.max() > top):
            raise ChunkDecodeError(f"{name}: fragment {i} of lod {lod} has positions outside [0, {top}]: "
                                   "are vertex_quantization_bits right?")
        low, box = manifest.fragment_box(lod, i)
        model = low + box * (q / top)
        verts.append(model @ matrix[:, :3].T + matrix[:, 3])
        faces.append(f + count)
        count += len(q)
    if not verts:
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), segid)
    return Mesh(np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.uint32), segid)


def _read_info(store) -> dict:
    raw = store.get("info")
    if raw is None:
        raise MetadataError(f"{store.url} has no info: not a mesh directory")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise MetadataError(f"{store.url}/info is not JSON ({e})") from e
    if doc.get("@type") != MESH_TYPE:
        raise MetadataError(f"{store.url}/info is {doc.get('@type')!r}, not {MESH_TYPE!r}")
    if doc.get("vertex_quantization_bits") not in (10, 16):
        raise MetadataError(f"{store.url}/info: vertex_quantization_bits must be 10 or 16, "
                            f"got {doc.get('vertex_quantization_bits')!r}")
    transform = doc.get("transform", IDENTITY)
    if not isinstance(transform, list | tuple) or len(transform) != 12:
        raise MetadataError(f"{store.url}/info: transform must be 12 numbers (a row-major 3x4 matrix), got {transform!r}")
    return doc


def _segment(store, doc: dict, segid: int) -> tuple[Manifest, Callable[[int, int], bytes]]:
    """A segment's manifest and a reader of its fragment data (byte range -> bytes)."""
    if doc.get("sharding"):
        codec = PrecomputedShardCodec(ShardingSpec(doc["sharding"], f"{store.url}/info"))
        key, sid = codec.key_of_id(int(segid)), int(segid)
        with store.range_reader(key) as reader:  # one version: the manifest, then its data
            spans = codec.spans(reader, key, {sid}) or {}
            if sid not in spans:
                raise MetadataError(f"{store.url} has no multi-resolution mesh for segment {segid} (shard {key})")
            start, n = spans[sid]
            manifest = Manifest.from_bytes(codec.decode_data(reader.read(start, start + n), key, sid),
                                           f"{store.url}/{key} segment {segid}")
            size = manifest.data_size
            if size > start - codec.spec.index_bytes:
                raise MetadataError(f"{store.url}/{key}: segment {segid}'s {size} bytes of fragments do not fit before its manifest")
            data = reader.read(start - size, start) if size else b""  # right before the manifest
        return manifest, lambda a, b: data[a:b]
    raw = store.get(f"{segid}.index")
    if raw is None:
        raise MetadataError(f"{store.url} has no multi-resolution mesh for segment {segid} ({segid}.index)")
    return Manifest.from_bytes(raw, f"{store.url}/{segid}.index"), lambda a, b: store.get_range(str(segid), a, b)


def read_manifest(directory: str, segid: int) -> Manifest:
    """The manifest of a segment in a mesh directory (``<segid>.index``, or in its shard)."""
    store = open_store(directory)
    return _segment(store, _read_info(store), segid)[0]


def read_multires(directory: str, segid: int, lods: Iterable[int] | None = None) -> list[Mesh]:
    """A segment's levels of detail (default: all; else those in ``lods``) as Meshes in nm, from
    an unsharded ``neuroglancer_multilod_draco`` directory (a path or a store URL)."""
    store = open_store(directory)
    doc = _read_info(store)
    manifest, fragment_data = _segment(store, doc, segid)
    out = []
    for lod in (range(manifest.num_lods) if lods is None else lods):
        start, end = manifest.lod_range(lod)
        data = fragment_data(start, end) if end > start else b""
        out.append(decode_lod(manifest, lod, data, doc["vertex_quantization_bits"], doc.get("transform", IDENTITY),
                              segid, f"{store.url}/{segid}"))
    return out


# --- writing ------------------------------------------------------------------------------------


def _options(options: MultiresOptions | dict | None) -> MultiresOptions:
    if isinstance(options, MultiresOptions):
        return options
    try:
        return MultiresOptions(**(options or {}))
    except TypeError as e:
        raise InvalidArgumentError(f"multires options are chunk_shape, num_lods, vertex_quantization_bits and "
                                   f"compression_level: {e}") from e


def write_multires(meshes: dict[int, Mesh], output: str, *, resolution: Sequence[float],
                   origin: Sequence[int] = (0, 0, 0), options: MultiresOptions | dict | None = None) -> None:
    """Write ``meshes`` (in nm) as an unsharded multi-resolution mesh directory at ``output`` (a
    path or a store URL), and name it in the precomputed segmentation's ``info`` beside it.

    ``resolution`` (nm) and ``origin`` (voxels) are the meshed scale's, in x, y, z: fragments lie
    on the grid of ``options.chunk_shape`` voxels from ``origin``."""
    opts = _options(options)
    _check_bits(opts.vertex_quantization_bits)
    if len(opts.chunk_shape) != 3 or min(opts.chunk_shape) < 1:
        raise InvalidArgumentError(f"chunk_shape is three positive voxel counts (z, y, x), got {opts.chunk_shape!r}")
    res = np.asarray(resolution, dtype=np.float64)
    chunk = np.asarray(opts.chunk_shape[::-1], dtype=np.float64) * res  # nm, x y z
    base = np.asarray(origin, dtype=np.float64) * res
    store = open_store(output)
    doc = info(opts.vertex_quantization_bits)
    manifests, datas = {}, {}
    for segid, m in meshes.items():
        manifest, data = encode_segment(m, chunk, base, num_lods=opts.num_lods,
                                        vertex_quantization_bits=opts.vertex_quantization_bits,
                                        lod0_scale=float(res.min()), compression_level=opts.compression_level)
        if opts.sharded:
            manifests[int(segid)], datas[int(segid)] = manifest, data
        else:
            store.put(str(segid), data)  # the data first: a reader that finds a manifest finds its data
            store.put(f"{segid}.index", manifest)
    if opts.sharded:
        old = store.get("info")
        spec = (json.loads(old).get("sharding") if old else None) or label_sharding(len(meshes))
        doc["sharding"] = spec
        write_sharded_objects(store, spec, manifests, prefixes=datas,
                              prefix_size=lambda cid, raw: Manifest.from_bytes(raw, f"{store.url} segment {cid}").data_size)
    store.put("info", json.dumps(doc).encode())
    name_in_volume_info(output, "mesh")


__all__ = [
    "MESH_TYPE",
    "Manifest",
    "MultiresOptions",
    "clip_to_planes",
    "decode_lod",
    "encode_segment",
    "info",
    "morton_codes",
    "read_manifest",
    "read_multires",
    "write_multires",
]
