"""The mesh service on analytic objects: a sphere and a torus of known size in an anisotropic
volume. Area and enclosed volume within 2 % of the analytic values, watertight, the same triangles
whether meshed in one block or across many chunks, and the outputs read back by volbridge and by
CloudVolume."""

from __future__ import annotations

import numpy as np
import pytest

import volbridge as vb

pytest.importorskip("zmesh")
from volbridge.services.mesh import Mesh, mesh, read_legacy  # noqa: E402

RES = (16, 6, 6)  # z, y, x nm: anisotropic
SHAPE = (40, 120, 130)
OFFSET = (-8, 30, -64)  # z, y, x voxels: negative offsets too
R_SPHERE = 150.0
R_MAJOR, R_MINOR = 140.0, 60.0


def objects() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    pz, py, px = ((z + OFFSET[0]) * RES[0], (y + OFFSET[1]) * RES[1], (x + OFFSET[2]) * RES[2])
    labels = np.zeros(SHAPE, np.uint64)
    c1 = (-8 * 16 + 20 * 16, 30 * 6 + 30 * 6, -64 * 6 + 32 * 6)  # sphere centre (z, y, x) nm, away from the edges
    labels[(pz - c1[0]) ** 2 + (py - c1[1]) ** 2 + (px - c1[2]) ** 2 <= R_SPHERE**2] = 7
    c2 = (-8 * 16 + 20 * 16, 30 * 6 + 80 * 6, -64 * 6 + 90 * 6)
    ring = np.sqrt((py - c2[1]) ** 2 + (px - c2[2]) ** 2) - R_MAJOR  # torus around z
    labels[ring**2 + (pz - c2[0]) ** 2 <= R_MINOR**2] = 2**40 + 9
    return labels


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    labels = objects()
    a = vb.create(f"precomputed://{root / 'seg'}", bounds=(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE))), dtype="uint64",
                  chunk_shape=(16, 32, 32), resolution=RES, layer_type="segmentation", encoding="compressed_segmentation")
    a[...] = labels
    return a, labels, root


def test_sphere_and_torus_match_their_analytic_size(seg):
    a, labels, _ = seg
    meshes = mesh(a)
    assert set(meshes) == {7, 2**40 + 9}
    sphere, torus = meshes[7], meshes[2**40 + 9]
    assert sphere.is_watertight() and torus.is_watertight()
    assert sphere.area() == pytest.approx(4 * np.pi * R_SPHERE**2, rel=0.02)
    assert sphere.volume() == pytest.approx(4 / 3 * np.pi * R_SPHERE**3, rel=0.02)
    assert torus.area() == pytest.approx(4 * np.pi**2 * R_MAJOR * R_MINOR, rel=0.02)
    assert torus.volume() == pytest.approx(2 * np.pi**2 * R_MAJOR * R_MINOR**2, rel=0.02)
    # in nm, where the volume's offset puts them
    centre = sphere.vertices.mean(axis=0)
    np.testing.assert_allclose(centre, [(-64 + 32) * 6, (30 + 30) * 6, (-8 + 20) * 16], atol=6)


def _triangles(m: Mesh) -> list:
    return sorted(tuple(sorted(map(tuple, np.round(m.vertices[f], 2)))) for f in m.faces)


def test_one_block_and_many_chunks_give_the_same_triangles(seg, monkeypatch):
    a, labels, _ = seg
    whole = mesh(labels[:, :, :], smoothing=0)  # one ndarray block, 1 nm voxels
    monkeypatch.setattr("volbridge.services.mesh.UNIT", (16, 16, 8))  # many small units
    chunked = mesh(labels, smoothing=0)
    for i in (7, 2**40 + 9):
        assert len(whole[i].faces) == len(chunked[i].faces)
        assert _triangles(whole[i]) == _triangles(chunked[i])
        assert chunked[i].is_watertight()


@pytest.mark.parametrize("unit", [(16, 16, 8), (32, 16, 16)])
def test_units_weld_at_negative_offsets_and_unaligned_boxes(seg, monkeypatch, unit):
    """Only vertices on the planes between units are matched: the unit grid sits on the volume's
    (negative) offset, and a box not on that grid clips the first units."""
    a, _, _ = seg
    bbox = ((-5, 37, -50), (27, 81, 3))  # z, y, x corners, off the chunk and unit grids
    monkeypatch.setattr("volbridge.services.mesh.UNIT", (4096, 4096, 4096))  # one unit
    whole = mesh(a, bbox=bbox, smoothing=0, resume=False)
    monkeypatch.setattr("volbridge.services.mesh.UNIT", unit)
    chunked = mesh(a, bbox=bbox, smoothing=0, resume=False)
    assert set(whole) == set(chunked) and 7 in whole
    for i in whole:
        assert len(whole[i].vertices) == len(chunked[i].vertices) and len(whole[i].faces) == len(chunked[i].faces)
        assert _triangles(whole[i]) == _triangles(chunked[i])


def test_outputs_read_back(seg, tmp_path):
    a, labels, root = seg
    meshes = mesh(a, ids=[7])
    mesh(a, ids=[7], output=str(root / "seg" / "mesh"), format="precomputed")  # inside the volume: info names it
    back = read_legacy(str(root / "seg" / "mesh"), 7)
    np.testing.assert_allclose(np.sort(back.vertices, axis=0), np.sort(meshes[7].vertices, axis=0), atol=1e-3)
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{root / 'seg'}", progress=False)
    m = cv.mesh.get(7)
    assert len(m.faces) == len(meshes[7].faces)
    np.testing.assert_allclose(np.sort(m.vertices, axis=0), np.sort(meshes[7].vertices, axis=0), atol=1e-3)
    mesh(a, ids=[7], output=str(tmp_path / "obj"), format="obj")
    assert (tmp_path / "obj" / "7.obj").read_bytes().startswith(b"v ")
    t = meshes[7].to_trimesh()
    assert t.is_watertight and t.volume == pytest.approx(meshes[7].volume(), rel=1e-6)


def test_requirements_fail_before_work(tmp_path):
    img = vb.create(f"precomputed://{tmp_path / 'img'}", shape=(4, 8, 8), dtype="uint8")
    with pytest.raises(vb.errors.InvalidArgumentError, match="image layer"):
        mesh(img)
    with pytest.raises(vb.errors.InvalidArgumentError, match="format"):
        mesh(np.zeros((4, 4, 4), np.uint32), format="stl")


def test_mesh_command(seg, tmp_path, capsys):
    from volbridge.cli import run

    a, labels, root = seg
    assert run(["mesh", str(root / "seg"), str(tmp_path / "ply"), "--ids", "7", "--format", "ply"]) == 0
    assert (tmp_path / "ply" / "7.ply").read_bytes().startswith(b"ply")
    assert run(["mesh", str(root / "seg"), str(tmp_path / "x"), "--ids", "seven"]) == 1
    assert "labels" in capsys.readouterr().err
    for flag, closed in (([], True), (["--open-edges"], False)):
        out = tmp_path / f"obj{closed}"
        assert run(["mesh", str(root / "seg"), str(out), "--ids", "7", "--format", "obj", *flag]) == 0
        assert '"close_edges": %s' % str(closed).lower() in (out / "provenance").read_text()


@pytest.mark.parametrize("service", ["mesh", "skeleton"])
def test_a_failed_run_resumes_with_only_the_missing_units(seg, tmp_path, monkeypatch, service):
    """Finished units' pieces are journaled: after a failure, the rerun computes only the units
    that did not finish, gives the same result as a clean run, and removes its journal."""
    import importlib

    if service == "skeleton":
        pytest.importorskip("kimimaro")
    module = importlib.import_module(f"volbridge.services.{service}")
    unit_fn = {"mesh": "mesh_unit", "skeleton": "skeleton_unit"}[service]
    run = getattr(module, service)
    a, labels, _ = seg
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    monkeypatch.setattr(module, "UNIT", (32, 32, 16))
    kw = {"smoothing": 0} if service == "mesh" else {"dust_threshold": 0}
    clean = run(a, resume=False, **kw)
    real, calls = getattr(module, unit_fn), []

    def failing(*args):
        calls.append(args[-1])
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(module, unit_fn, failing)
    with pytest.raises(RuntimeError, match="killed"):
        run(a, **kw)
    saved = list((tmp_path / "jobs").glob(f"{service}-*/*.pkl"))
    assert 1 <= len(saved)
    calls.clear()
    monkeypatch.setattr(module, unit_fn, lambda *args: (calls.append(args[-1]), real(*args))[1])
    again = run(a, **kw)
    from volbridge.services.labels import label_job, label_units

    total = len(label_units(label_job(a, None, 0, None, getattr(module, service.upper())), module.UNIT))
    assert len(calls) == total - len(saved) and total > len(saved)
    assert sorted(again) == sorted(clean)
    for i in clean:
        np.testing.assert_array_equal(again[i].vertices, clean[i].vertices)
    assert not list((tmp_path / "jobs").iterdir())


@pytest.mark.parametrize("service", ["mesh", "skeleton"])
def test_worker_processes_give_the_same_result_as_threads(seg, tmp_path, monkeypatch, service):
    """Big local jobs run their units (and smoothing) in worker processes, since zmesh and
    kimimaro hold the GIL; forced here on a small volume, the result is identical to threads."""
    import importlib

    if service == "skeleton":
        pytest.importorskip("kimimaro")
    module = importlib.import_module(f"volbridge.services.{service}")
    a, _, _ = seg
    monkeypatch.setattr(module, "UNIT", (32, 32, 16))
    kw = {"smoothing": 5} if service == "mesh" else {"dust_threshold": 0}
    monkeypatch.setenv("VOLBRIDGE_PROCESSES", "0")
    threads = getattr(module, service)(a.url, **kw)
    monkeypatch.setenv("VOLBRIDGE_PROCESSES", "1")
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    procs = getattr(module, service)(a.url, **kw)
    assert sorted(procs) == sorted(threads) and procs
    for i in threads:
        np.testing.assert_array_equal(procs[i].vertices, threads[i].vertices)
        np.testing.assert_array_equal(procs[i].edges if service == "skeleton" else procs[i].faces,
                                      threads[i].edges if service == "skeleton" else threads[i].faces)
    assert not list((tmp_path / "jobs").iterdir())  # the workers' journal entries are gone


def test_simplification_keeps_the_shape_with_a_tenth_of_the_triangles(seg, tmp_path):
    a, _, root = seg
    full = mesh(a)
    simple = mesh(a, simplification=10)
    for i, (area, vol) in {7: (4 * np.pi * R_SPHERE**2, 4 / 3 * np.pi * R_SPHERE**3),
                           2**40 + 9: (4 * np.pi**2 * R_MAJOR * R_MINOR, 2 * np.pi**2 * R_MAJOR * R_MINOR**2)}.items():
        assert len(simple[i].faces) <= 0.12 * len(full[i].faces)
        assert simple[i].area() == pytest.approx(area, rel=0.03)
        assert simple[i].volume() == pytest.approx(vol, rel=0.03)
    with pytest.raises(vb.errors.InvalidArgumentError, match="simplification"):
        mesh(a, simplification=0)
    from volbridge.cli import run

    assert run(["mesh", str(root / "seg"), str(tmp_path / "m"), "--ids", "7", "--simplification", "10"]) == 0
    assert len(read_legacy(str(tmp_path / "m"), 7).faces) == len(simple[7].faces)


def test_a_script_asks_for_worker_processes(seg, tmp_path):
    """executor="processes" from a plain script (guarded, as multiprocessing requires): the
    workers get the script's environment and the meshes equal the threads' ones."""
    import os
    import subprocess
    import sys

    a, _, _ = seg
    script = tmp_path / "run.py"
    script.write_text("import os\n"
                      "from volbridge.services.mesh import mesh\n"
                      "if __name__ == '__main__':\n"
                      "    os.environ['VOLBRIDGE_PROBE'] = 'set after start'\n"
                      f"    procs = mesh({a.url!r}, smoothing=0, executor='processes')\n"
                      f"    threads = mesh({a.url!r}, smoothing=0)\n"
                      "    same = all((procs[i].faces == threads[i].faces).all() for i in threads)\n"
                      "    print('meshed', sorted(procs), same)\n")
    env = {**os.environ, "VOLBRIDGE_JOBS_DIR": str(tmp_path / "jobs")}
    env.pop("VOLBRIDGE_PROCESSES", None)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"meshed {sorted([7, 2**40 + 9])} True"


def test_handles_signed_labels_relative_paths_and_axis_orders(tmp_path, monkeypatch):
    """A negative label of a signed segmentation keeps its sign; a handle's mesh() honours an
    explicit mip and a bbox in its own axis order; a relative path's journal names the absolute
    volume, so a leftover from another directory's run is never mixed in."""
    labels = np.zeros((8, 32, 32), np.int32)
    labels[2:6, 4:12, 4:12] = -4
    labels[2:6, 20:28, 20:28] = 9
    url = f"precomputed://{tmp_path / 'signed'}"
    seg = vb.create(url, shape=labels.shape, dtype="int32", chunk_shape=(8, 16, 16), layer_type="segmentation",
                    num_scales=2)
    seg[...] = labels
    assert sorted(mesh(url, smoothing=0)) == [-4, 9]
    assert sorted(mesh(url, [-4], smoothing=0)) == [-4]
    xyz = vb.array(url, axis_order="xyz")
    assert sorted(xyz.mesh(bbox=((16, 16, 0), (32, 32, 8)), smoothing=0)) == [9]  # x, y, z corners
    assert sorted(xyz.mip(1).mesh(mip=0, smoothing=0)) == [-4, 9]
    import volbridge.services.mesh as module

    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    monkeypatch.setattr(module, "UNIT", (16, 16, 8))
    for name, value in (("A", 11), ("B", 21)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        other = vb.create("seg", shape=labels.shape, dtype="uint32", chunk_shape=(8, 16, 16), layer_type="segmentation")
        other[...] = ((labels != 0) * value).astype(np.uint32)
    monkeypatch.chdir(tmp_path / "A")
    real, calls = module.mesh_unit, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(module, "mesh_unit", failing)
    with pytest.raises(RuntimeError):
        mesh("seg", smoothing=0)
    monkeypatch.setattr(module, "mesh_unit", real)
    monkeypatch.chdir(tmp_path / "B")
    assert sorted(mesh("seg", smoothing=0)) == [21]


def _zmesh_of(labels_zyx: np.ndarray, label: int, close: bool, res=(1.0, 1.0, 1.0)) -> Mesh:
    """zmesh's own mesh of a whole (z, y, x) block: the oracle. With ``close`` it pads one voxel
    on every side and leaves the vertices in the padded frame, so they are moved back by one."""
    import zmesh

    m = zmesh.Mesher(res)
    m.mesh(np.asfortranarray(labels_zyx.transpose(2, 1, 0)), close=close)
    z = m.get(label, normals=False)
    return Mesh(z.vertices - (np.asarray(res, np.float32) if close else 0), z.faces)


@pytest.mark.parametrize("unit", [(4096, 4096, 4096), (8, 8, 8), (16, 8, 4)])
def test_labels_cut_by_the_region_are_closed_there(tmp_path, monkeypatch, unit):
    """A label cut by a face of the volume, or of a bbox, is capped half a voxel out (where its
    voxels end), as igneous closes meshes at dataset edges: watertight, and the same triangles as
    zmesh's ``close=True`` on the whole region, at any unit size and at a negative offset.
    ``close_edges=False`` gives zmesh's open mesh instead."""
    import volbridge.services.mesh as module

    labels = np.zeros((20, 30, 40), np.uint32)  # z, y, x
    labels[:, 5:25, 10:40] = 3  # through both z faces and the high x face
    labels[0:4, 0:3, 0:5] = 5  # in the low corner
    offset = (-7, 3, -20)
    url = f"precomputed://{tmp_path / 'cut'}"
    seg = vb.create(url, bounds=(offset, tuple(o + s for o, s in zip(offset, labels.shape))), dtype="uint32",
                    chunk_shape=(8, 16, 16), layer_type="segmentation")
    seg[...] = labels
    monkeypatch.setattr(module, "UNIT", unit)
    shift = np.array(offset[::-1], np.float32)  # x, y, z voxels of the volume's corner
    for close in (True, False):
        got = mesh(url, smoothing=0, close_edges=close, resume=False)
        for i in (3, 5):
            want = _zmesh_of(labels, i, close)
            assert got[i].is_watertight() is close
            assert _triangles(got[i]) == _triangles(Mesh(want.vertices + shift, want.faces))
    # a bbox (z, y, x corners) cuts label 3 on all four of its other faces too
    lo, hi = (-5, 8, -14), (11, 27, 15)
    got = mesh(url, smoothing=0, bbox=(lo, hi), resume=False)
    inner = labels[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))]
    want = _zmesh_of(inner, 3, True)
    assert got[3].is_watertight()
    assert _triangles(got[3]) == _triangles(Mesh(want.vertices + np.array(lo[::-1], np.float32), want.faces))
    with pytest.raises(vb.errors.InvalidArgumentError, match="close_edges"):
        mesh(url, close_edges="yes")
