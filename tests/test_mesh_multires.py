"""Neuroglancer multi-resolution Draco meshes of the sphere and torus of test_mesh: level 0 keeps
the legacy mesh's geometry (within the quantization step), CloudVolume reads what volbridge writes
(manifest and fragments), the manifest follows the format (Z-curve order, sizes, parents), level
> 0 fragments obey neuroglancer's 2x2x2 rule as its decoder applies it, and bad bytes raise."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import volbridge as vb

pytest.importorskip("zmesh")
DracoPy = pytest.importorskip("DracoPy")
from test_mesh import OFFSET, RES, SHAPE, objects

from volbridge.services.mesh import Mesh, mesh
from volbridge.services.mesh_multires import (
    Manifest,
    MultiresOptions,
    clip_to_planes,
    encode_segment,
    read_manifest,
    read_multires,
    write_multires,
)

SPHERE, TORUS = 7, 2**40 + 9
CHUNK = (4, 16, 16)  # z, y, x voxels: 64 x 96 x 96 nm fragments, so the objects span many


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """The test_mesh volume, its legacy meshes, and a 10-bit multires mesh directory inside it."""
    root = tmp_path_factory.mktemp("multires")
    a = vb.create(f"precomputed://{root / 'seg'}", bounds=(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE))),
                  dtype="uint64", chunk_shape=(16, 32, 32), resolution=RES, layer_type="segmentation",
                  encoding="compressed_segmentation")
    a[...] = objects()
    legacy = mesh(a)
    out = root / "seg" / "mesh"
    mesh(a, output=str(out), format="multires", multires=MultiresOptions(chunk_shape=CHUNK, vertex_quantization_bits=10))
    return a, legacy, root, out


def _step(manifest: Manifest, lod: int, bits: int) -> float:
    """The largest quantization step of a level, in nm."""
    return float(manifest.chunk_shape.max()) * 2**lod / (2**bits - 1)


def _close_to(vertices: np.ndarray, targets: np.ndarray, tol: float) -> bool:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(vertices).query(targets)
    return bool(dist.max() <= tol)


def _signed_volume(m) -> float:
    """Positive for outward-facing triangles: the winding survives clipping and Draco."""
    v, f = np.asarray(m.vertices, np.float64), np.asarray(m.faces)
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


def _zorder_less(a, b) -> bool:
    """neuroglancer's Z-curve comparison: the highest differing bit decides, z over y over x."""
    msd = 2
    for d in (1, 0):
        x, y = a[msd] ^ b[msd], a[d] ^ b[d]
        if x < y and x < (x ^ y):
            msd = d
    return a[msd] < b[msd]


def test_lod0_keeps_the_legacy_geometry(seg):
    _, legacy, _, out = seg
    assert json.loads((out / "info").read_text()) == {
        "@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 10,
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], "lod_scale_multiplier": 1.0}
    for segid in (SPHERE, TORUS):
        manifest = read_manifest(str(out), segid)
        lods = read_multires(str(out), segid)
        assert len(lods) == manifest.num_lods >= 3
        ref, lod0 = legacy[segid], lods[0]
        assert lod0.area() == pytest.approx(ref.area(), rel=0.01)
        assert lod0.volume() == pytest.approx(ref.volume(), rel=0.01)
        assert _signed_volume(lod0) == pytest.approx(_signed_volume(ref), rel=0.01)
        # clipping keeps every vertex (and adds some): each legacy vertex is there, quantized
        step = _step(manifest, 0, 10)
        assert _close_to(lod0.vertices, ref.vertices, step)
        np.testing.assert_allclose(lod0.vertices.min(axis=0), ref.vertices.min(axis=0), atol=step)
        np.testing.assert_allclose(lod0.vertices.max(axis=0), ref.vertices.max(axis=0), atol=step)
        # coarser levels: fewer triangles, still the same object
        for coarse in lods[1:]:
            assert coarse.area() == pytest.approx(ref.area(), rel=0.03)
            assert coarse.volume() == pytest.approx(ref.volume(), rel=0.06)
        assert len(lods[-1].faces) < len(lods[1].faces) < len(lod0.faces)


def test_16_bits_and_any_store(seg, tmp_path):
    _, legacy, _, _ = seg
    write_multires({SPHERE: legacy[SPHERE]}, str(tmp_path / "m16"), resolution=RES[::-1], origin=OFFSET[::-1],
                   options={"chunk_shape": CHUNK})
    lod0 = read_multires(str(tmp_path / "m16"), SPHERE, lods=[0])[0]
    manifest = read_manifest(str(tmp_path / "m16"), SPHERE)
    assert _close_to(lod0.vertices, legacy[SPHERE].vertices, _step(manifest, 0, 16))
    assert lod0.area() == pytest.approx(legacy[SPHERE].area(), rel=1e-3)
    assert lod0.volume() == pytest.approx(legacy[SPHERE].volume(), rel=1e-3)
    # any kv store: the same bytes in memory
    write_multires({SPHERE: legacy[SPHERE]}, "mem://multires-test/m16", resolution=RES[::-1], origin=OFFSET[::-1],
                   options={"chunk_shape": CHUNK})
    same = read_multires("mem://multires-test/m16", SPHERE, lods=[0])[0]
    np.testing.assert_array_equal(same.vertices, lod0.vertices)


def test_cloudvolume_reads_every_level(seg):
    from cloudvolume import CloudVolume

    _, legacy, root, out = seg
    assert json.loads((root / "seg" / "info").read_text())["mesh"] == "mesh"
    cv = CloudVolume(f"file://{root / 'seg'}", progress=False)
    for segid in (SPHERE, TORUS):
        ours = read_multires(str(out), segid)
        assert cv.mesh.get_manifest(segid).num_lods == len(ours)
        for lod, m in enumerate(ours):
            theirs = cv.mesh.get(segid, lod=lod)[segid]
            assert len(theirs.faces) == len(m.faces)
            np.testing.assert_allclose(np.sort(theirs.vertices, axis=0), np.sort(m.vertices, axis=0), atol=1e-3)
        lod0 = cv.mesh.get(segid, lod=0)[segid]
        ref = Mesh(lod0.vertices.astype(np.float32), lod0.faces.astype(np.uint32))
        assert ref.area() == pytest.approx(legacy[segid].area(), rel=0.01)
        assert ref.volume() == pytest.approx(legacy[segid].volume(), rel=0.01)


def test_manifest_layout(seg):
    from cloudvolume.datasource.precomputed.mesh.multilod import (
        MultiLevelPrecomputedMeshManifest,
    )

    _, _, _, out = seg
    for segid in (SPHERE, TORUS):
        raw = (out / f"{segid}.index").read_bytes()
        data = (out / str(segid)).read_bytes()
        ours = Manifest.from_bytes(raw)
        assert ours.to_bytes() == raw
        theirs = MultiLevelPrecomputedMeshManifest.from_binary(raw, segment_id=segid)  # an independent parser
        assert theirs.num_lods == ours.num_lods
        np.testing.assert_array_equal(theirs.chunk_shape, [16 * 6, 16 * 6, 4 * 16])  # x, y, z nm
        np.testing.assert_array_equal(theirs.lod_scales, 6.0 * 2.0 ** np.arange(ours.num_lods))
        np.testing.assert_array_equal(theirs.vertex_offsets, 0)
        # the grid is the volume's, from its corner (negative offsets too)
        cells = (theirs.grid_origin - np.multiply(OFFSET[::-1], RES[::-1])) / theirs.chunk_shape
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-6)
        assert sum(int(s.sum()) for s in theirs.fragment_offsets) == len(data) == ours.data_size
        assert len(theirs.fragment_positions[-1]) == 1  # the top level is one fragment
        for lod in range(ours.num_lods):
            pos = [tuple(int(v) for v in p) for p in theirs.fragment_positions[lod]]
            np.testing.assert_array_equal(ours.fragment_positions[lod], theirs.fragment_positions[lod])
            assert all(_zorder_less(a, b) for a, b in itertools.pairwise(pos)), f"lod {lod} is not in Z-curve order"
            if lod:  # every fragment below has its parent here
                parents = {tuple(v >> 1 for v in p) for p in
                           (tuple(int(v) for v in q) for q in theirs.fragment_positions[lod - 1])}
                assert parents <= set(pos)
        assert len(theirs.fragment_positions[0]) > 8


def _octant_mask(q: np.ndarray, bits: int) -> np.ndarray:
    """neuroglancer_draco.cc's partition: per vertex, the octants (bit i: x = i & 1, y = i >> 1 & 1,
    z = i >> 2) that may hold it; coordinates equal to 2**(bits-1) fit either half."""
    mid = 2 ** (bits - 1)
    mask = np.full(len(q), 0xFF, dtype=np.int64)
    for axis, (low, high) in enumerate(((0b01010101, 0b10101010), (0b00110011, 0b11001100),
                                        (0b00001111, 0b11110000))):
        mask &= np.where(q[:, axis] < mid, low, np.where(q[:, axis] > mid, high, 0xFF))
    return mask


def _fragments(manifest: Manifest, data: bytes, lod: int):
    start, _ = manifest.lod_range(lod)
    for size in manifest.fragment_sizes[lod].tolist():
        if size:
            yield DracoPy.decode(data[start:start + size])
        start += size


def test_fragments_are_integer_draco_split_by_octant(seg):
    _, _, _, out = seg
    for segid in (SPHERE, TORUS):
        manifest = read_manifest(str(out), segid)
        data = (out / str(segid)).read_bytes()
        crossing = 0
        for lod in range(manifest.num_lods):
            for frag in _fragments(manifest, data, lod):
                (position,) = [a for a in frag.attributes if a["attribute_type"] == 0]
                assert position["data_type"] == 5  # DT_INT32: integer positions, no Draco quantization
                q = np.asarray(frag.points)
                assert np.array_equal(q, np.round(q)) and q.min() >= 0 and q.max() <= 2**10 - 1
                tri_mask = np.bitwise_and.reduce(_octant_mask(q, 10)[np.asarray(frag.faces)], axis=1)
                crossing += int((tri_mask == 0).sum()) if lod else 0
        assert crossing == 0


NG_DECODE = r"""
// node decode.js <neuroglancer client dir> <bits> <partition 0|1> < JSON list of base64 fragments
const fs = require('fs'), path = require('path');
const [dir, bits, partition] = [process.argv[2], +process.argv[3], +process.argv[4]];
let mod = null;
for (const f of fs.readdirSync(dir).filter(f => f.endsWith('.wasm'))) {
  const m = new WebAssembly.Module(fs.readFileSync(path.join(dir, f)));
  if (WebAssembly.Module.exports(m).some(e => e.name === 'neuroglancer_draco_decode')) mod = m;
}
let inst, got;
const env = {
  emscripten_notify_memory_growth: () => {},
  proc_exit: (c) => { throw new Error('proc_exit ' + c); },
  neuroglancer_draco_receive_decoded_mesh: (nf, nv, ip, vp, sp) => {
    const mem = inst.exports.memory.buffer;
    got = {indices: Array.from(new Uint32Array(mem, ip, 3 * nf)),
           positions: Array.from(new Uint32Array(mem, vp, 3 * nv)),
           subchunks: Array.from(new Uint32Array(mem, sp, partition ? 9 : 2))};
  },
};
inst = new WebAssembly.Instance(mod, {env, wasi_snapshot_preview1: env});
inst.exports._initialize();
const out = [];
for (const b64 of JSON.parse(fs.readFileSync(0, 'utf8'))) {
  const buf = Buffer.from(b64, 'base64');
  const ptr = inst.exports.malloc(buf.length);  // the decoder frees it
  new Uint8Array(inst.exports.memory.buffer).set(buf, ptr);
  got = undefined;
  // as neuroglancer's multiscale mesh source calls it: partition for lod > 0, positions as stored
  const code = inst.exports.neuroglancer_draco_decode(ptr, buf.length, partition, bits, 1);
  out.push(code === 0 ? got : {code});
}
console.log(JSON.stringify(out));
"""


def test_neuroglancers_own_decoder_reads_the_fragments(seg, tmp_path):
    """neuroglancer's Draco decoder (the wasm its client ships), run in node: every fragment
    decodes to DracoPy's triangles of integer positions, and in its 2x2x2 partition of a lod > 0 fragment
    every triangle lies in the octant it is drawn with."""
    import base64
    import shutil
    import subprocess
    from pathlib import Path

    ng = pytest.importorskip("neuroglancer")
    client = Path(ng.__file__).parent / "static" / "client"
    node = shutil.which("node")
    if node is None or not list(client.glob("*.wasm")):
        pytest.skip("needs node and the neuroglancer client's wasm")
    script = tmp_path / "decode.js"
    script.write_text(NG_DECODE)
    _, _, _, out = seg
    for segid in (SPHERE, TORUS):
        manifest = read_manifest(str(out), segid)
        data = (out / str(segid)).read_bytes()
        for lod in range(manifest.num_lods):
            start, _ = manifest.lod_range(lod)
            blobs = []
            for size in manifest.fragment_sizes[lod].tolist():
                if size:
                    blobs.append(data[start:start + size])
                start += size
            run = subprocess.run([node, str(script), str(client), "10", str(int(lod > 0))], check=False, capture_output=True,
                                 text=True, input=json.dumps([base64.b64encode(b).decode() for b in blobs]), timeout=120)
            assert run.returncode == 0, run.stderr
            decoded = json.loads(run.stdout)
            assert len(decoded) == len(blobs)
            for blob, ng_frag in zip(blobs, decoded):
                assert "code" not in ng_frag, f"neuroglancer's decoder failed with code {ng_frag.get('code')}"
                q = np.array(ng_frag["positions"], dtype=np.int64).reshape(-1, 3)
                indices = np.array(ng_frag["indices"], dtype=np.int64)
                ours = DracoPy.decode(blob)
                theirs_tris = q[indices].reshape(-1, 9)
                ours_tris = np.asarray(ours.points, dtype=np.int64)[np.asarray(ours.faces)].reshape(-1, 9)
                np.testing.assert_array_equal(np.unique(theirs_tris, axis=0), np.unique(ours_tris, axis=0))
                bounds = ng_frag["subchunks"]
                assert bounds[-1] == len(indices) == 3 * len(ours.faces)
                if lod:
                    mask = _octant_mask(q, 10)
                    for k in range(8):
                        tri = indices[bounds[k]:bounds[k + 1]]
                        assert ((mask[tri] >> k) & 1).all(), f"lod {lod}: a triangle drawn in octant {k} leaves it"


def test_unclipped_fragments_would_cross_octants():
    """The octant check above can fail: a triangle across the middle of a fragment does."""
    q = np.array([[100, 100, 100], [900, 100, 100], [100, 900, 100]])
    assert np.bitwise_and.reduce(_octant_mask(q, 10)) == 0
    assert np.bitwise_and.reduce(_octant_mask(np.array([[512, 0, 0], [512, 100, 0], [100, 512, 0]]), 10)) != 0


def test_clipping_keeps_area_and_orientation():
    rng = np.random.default_rng(3)
    tris = rng.uniform(0, 10, size=(300, 3, 3))
    planes = [np.arange(0, 11, 1.7), np.array([2.5, 5.0, 7.5]), np.array([3.0, 3.0 + 1e-9])]
    out = clip_to_planes(tris, planes)

    def normals(t):
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    assert np.linalg.norm(normals(out), axis=1).sum() == pytest.approx(np.linalg.norm(normals(tris), axis=1).sum())
    np.testing.assert_allclose(normals(out).sum(axis=0), normals(tris).sum(axis=0), rtol=1e-9, atol=1e-9)
    for axis, pl in enumerate(planes):
        lo, hi = out[:, :, axis].min(axis=1), out[:, :, axis].max(axis=1)
        assert not ((pl[None, :] > lo[:, None]) & (pl[None, :] < hi[:, None])).any()


def test_empty_and_tiny_meshes():
    manifest, data = encode_segment(Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)), (10, 10, 10))
    m = Manifest.from_bytes(manifest)
    assert m.num_lods == 1 and m.data_size == 0 and data == b""
    tri = Mesh(np.array([[1, 1, 1], [5, 1, 1], [1, 5, 1]], np.float32), np.array([[0, 1, 2]], np.uint32))
    manifest, data = encode_segment(tri, (10, 10, 10), num_lods=3)
    m = Manifest.from_bytes(manifest)
    assert m.num_lods == 3 and [len(p) for p in m.fragment_positions] == [1, 1, 1] and m.data_size == len(data)


def test_a_fragment_without_coarse_geometry_still_has_a_parent(monkeypatch):
    """Where a coarser level has nothing above a fragment, an empty parent keeps it in the octree."""
    import volbridge.services.mesh_multires as mm

    tet = np.array([[1, 1, 1], [4, 1, 1], [1, 4, 1], [1, 1, 4]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)
    both = Mesh(np.concatenate([tet, tet + [30, 0, 0]]), np.concatenate([faces, faces + 4]))
    monkeypatch.setattr(mm, "_lod_meshes", lambda m, n: [(both.vertices.astype(np.float64), both.faces.astype(np.int64))]
                        + [(tet.astype(np.float64), faces.astype(np.int64))] * (n - 1))
    manifest, data = encode_segment(both, (10, 10, 10))
    m = Manifest.from_bytes(manifest)
    assert m.num_lods == 3
    assert m.fragment_positions[0].tolist() == [[0, 0, 0], [3, 0, 0]]
    assert m.fragment_positions[1].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert m.fragment_sizes[1][1] == 0 and m.fragment_sizes[1][0] > 0  # the empty parent of (3, 0, 0)
    assert m.fragment_positions[2].tolist() == [[0, 0, 0]]
    assert m.data_size == len(data)


def test_bad_input_raises(seg, tmp_path):
    _, legacy, _, out = seg
    raw = (out / f"{SPHERE}.index").read_bytes()
    for cut in (len(raw) - 4, len(raw) - 1, 40, 10):
        with pytest.raises(vb.errors.MetadataError, match="truncated|too short|bytes"):
            Manifest.from_bytes(raw[:cut], "x.index")
    broken = tmp_path / "broken"
    write_multires({SPHERE: legacy[SPHERE]}, str(broken), resolution=RES[::-1], options={"chunk_shape": CHUNK})
    (broken / f"{SPHERE}.index").write_bytes(raw[:-16])
    with pytest.raises(vb.errors.MetadataError, match=rf"{SPHERE}\.index.*truncated"):
        read_multires(str(broken), SPHERE)
    (broken / f"{SPHERE}.index").write_bytes((out / f"{SPHERE}.index").read_bytes())
    (broken / str(SPHERE)).write_bytes((out / str(SPHERE)).read_bytes()[:100])
    with pytest.raises(vb.errors.VolbridgeError, match=str(SPHERE)):
        read_multires(str(broken), SPHERE)
    with pytest.raises(vb.errors.MetadataError, match="no multi-resolution mesh for segment 12345"):
        read_multires(str(out), 12345)
    with pytest.raises(vb.errors.InvalidArgumentError, match="10 or 16"):
        write_multires(legacy, str(tmp_path / "x"), resolution=(1, 1, 1), options={"vertex_quantization_bits": 12})
    with pytest.raises(vb.errors.InvalidArgumentError, match="multires options"):
        write_multires(legacy, str(tmp_path / "x"), resolution=(1, 1, 1), options={"lods": 3})
    with pytest.raises(vb.errors.InvalidArgumentError, match="format='multires'"):
        mesh(np.zeros((4, 4, 4), np.uint32), format="obj", multires=MultiresOptions())


def test_mesh_command_multires(seg, tmp_path):
    from volbridge.cli import run

    _, legacy, root, _ = seg
    assert run(["mesh", str(root / "seg"), str(tmp_path / "mr"), "--ids", "7", "--format", "multires"]) == 0
    assert json.loads((tmp_path / "mr" / "info").read_text())["@type"] == "neuroglancer_multilod_draco"
    lod0 = read_multires(str(tmp_path / "mr"), SPHERE, lods=[0])[0]
    assert lod0.area() == pytest.approx(legacy[SPHERE].area(), rel=0.01)
    assert not (tmp_path / "mr" / f"{TORUS}.index").exists()
    assert run(["mesh", str(root / "seg"), str(tmp_path / "ms"), "--ids", "7", "--format", "multires", "--sharded"]) == 0
    assert read_multires(str(tmp_path / "ms"), SPHERE, lods=[0])[0].area() == pytest.approx(lod0.area(), rel=1e-6)
    assert run(["mesh", str(root / "seg"), str(tmp_path / "x"), "--sharded"]) != 0  # legacy has no sharded form


def test_sharded_multires_read_back_by_volbridge_and_cloudvolume(seg, tmp_path):
    """Sharded storage: each segment's manifest under its id, its fragment data right before it
    in the shard file; volbridge's and CloudVolume's readers agree with the unsharded output."""
    import shutil

    from cloudvolume import CloudVolume

    a, _, root, out = seg
    copy = tmp_path / "seg"
    shutil.copytree(root / "seg", copy, ignore=shutil.ignore_patterns("mesh"))
    sharded_out = copy / "mesh"
    mesh(f"precomputed://{copy}", output=str(sharded_out), format="multires",
         multires=MultiresOptions(chunk_shape=CHUNK, vertex_quantization_bits=10, sharded=True))
    info = json.loads((sharded_out / "info").read_text())
    assert info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert list(sharded_out.glob("*.shard")) and not (sharded_out / f"{SPHERE}.index").exists()
    cv = CloudVolume(f"file://{copy}", progress=False)
    for segid in (SPHERE, TORUS):
        plain, sharded = read_multires(str(out), segid), read_multires(str(sharded_out), segid)
        assert len(plain) == len(sharded)
        for p, s in zip(plain, sharded):
            np.testing.assert_array_equal(p.vertices, s.vertices)
            np.testing.assert_array_equal(p.faces, s.faces)
        theirs = cv.mesh.get(segid, lod=0)[segid]
        np.testing.assert_allclose(np.sort(theirs.vertices, axis=0), np.sort(sharded[0].vertices, axis=0), atol=1e-3)
