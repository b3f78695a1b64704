"""Services on a Dask cluster (a LocalCluster of 2 worker processes) and in local worker processes
(``executor="processes"``) write byte-identical outputs to the local threaded run; a run killed
half-way resumes from its journal and completes."""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import volbridge as vb
from volbridge.services import downsample, transfer
from volume_model import stored_files


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                       host="127.0.0.1", silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def pyramid(tmp_path, monkeypatch):
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    a = vb.create(f"precomputed://{tmp_path / 'a'}", bounds=((-4, -30, 3), (29, 100, 131)), dtype="uint16",
                  chunk_shape=(8, 16, 16), resolution=(40, 4, 4), num_scales=3, compression="gzip")
    a[...] = np.random.default_rng(0).integers(0, 60000, a.shape).astype(np.uint16)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    return tmp_path


def test_downsample_and_transfer_on_a_cluster_equal_the_local_run(client, pyramid):
    downsample(f"precomputed://{pyramid / 'a'}")
    downsample(f"precomputed://{pyramid / 'b'}", executor=client)
    assert stored_files(pyramid / "a") == stored_files(pyramid / "b")
    # the workers keep no source buffers after their units (only a local job can release them)
    kept = client.run(lambda: len(importlib.import_module("volbridge.services.downsample")._kept))
    assert kept and not any(kept.values())
    transfer(f"precomputed://{pyramid / 'a'}", f"ome-zarr://{pyramid / 'local.zarr'}", mip=1, chunk_shape=(4, 8, 8))
    transfer(f"precomputed://{pyramid / 'a'}", f"ome-zarr://{pyramid / 'cluster.zarr'}", mip=1, chunk_shape=(4, 8, 8),
             executor=client)
    assert stored_files(pyramid / "local.zarr") == stored_files(pyramid / "cluster.zarr")
    np.testing.assert_array_equal(vb.array(f"ome-zarr://{pyramid / 'cluster.zarr'}")[...], vb.array(str(pyramid / "a")).mip(1)[...])


def test_to_dask_arrays_and_handles_run_on_a_cluster(client, pyramid):
    """(review) A to_dask() graph held the handle, whose stores hold locks: nothing of it could
    go to a cluster. A handle now travels as its volume's URL and layout digest; one of a volume
    kept in memory says why it cannot."""
    a = vb.array(str(pyramid / "a"))
    d = a.mip(1).to_dask()
    assert int(client.compute(d.sum()).result()) == int(a.mip(1)[...].sum(dtype=np.int64))
    out = vb.array(str(pyramid / "b"), mode="r+")
    client.compute(d.map_blocks(lambda b: b, dtype=d.dtype).sum()).result()
    stored = client.submit(lambda h: h.mip_level, a.mip(1)).result()
    assert stored == 1
    import pickle

    mem = vb.create("precomputed://mem://cluster-mem", shape=(4, 4, 4), overwrite=True)
    with pytest.raises(vb.errors.InvalidArgumentError, match="memory"):
        pickle.dumps(mem)
    assert out.mode == "r+" and pickle.loads(pickle.dumps(out)).mode == "r+"


def test_downsample_in_worker_processes_equals_the_threaded_run(pyramid, monkeypatch):
    from concurrent.futures import Executor

    ds = importlib.import_module("volbridge.services.downsample")
    executors = []
    run_units = ds.run_units
    monkeypatch.setattr(ds, "run_units", lambda *a, executor=None, **k: executors.append(executor) or run_units(*a, executor=executor, **k))
    downsample(f"precomputed://{pyramid / 'a'}")
    b = vb.array(str(pyramid / "b"), mode="r+")  # an open array: the workers reopen it by URL
    downsample(b, executor="processes")
    assert executors[0] is None and all(isinstance(e, Executor) for e in executors[2:]) and len(executors) == 4
    assert stored_files(pyramid / "a") == stored_files(pyramid / "b")


def test_a_unit_failing_in_a_worker_process_names_its_chunk(pyramid):
    chunks = sorted(p for p in (pyramid / "b" / "4_4_40").iterdir())
    chunks[len(chunks) // 2].write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(vb.errors.ChunkDecodeError, match=chunks[len(chunks) // 2].name):
        downsample(f"precomputed://{pyramid / 'b'}", mips=[1], executor="processes", resume=False)


def test_worker_processes_reopen_a_relative_path_absolutely(tmp_path, monkeypatch):
    """The fork server keeps the working directory it started in: workers must not resolve a
    relative URL there (a review found them writing another volume of the same name)."""
    for name, value in (("here", 10), ("elsewhere", 200)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        v = vb.create("precomputed://vol", shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8), num_scales=2)
        v[...] = np.full(v.shape, value, np.uint8)
    monkeypatch.chdir(tmp_path / "here")
    a = vb.array("vol", mode="r+")
    monkeypatch.chdir(tmp_path / "elsewhere")
    downsample(a, executor="processes", resume=False)
    assert (vb.array(str(tmp_path / "here" / "vol")).mip(1)[...] == 10).all()
    assert (vb.array(str(tmp_path / "elsewhere" / "vol")).mip(1)[...] == 0).all()  # untouched


def test_worker_processes_open_names_with_url_characters_as_paths(tmp_path):
    """``run%41`` is a directory name, not an escaped ``runA`` (a review found workers writing
    the neighbour), and ``#`` is no fragment."""
    for name, value in (("run%41", 10), ("runA", 200), ("run#1", 30)):
        v = vb.create(f"precomputed://{tmp_path / name}", shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 8, 8), num_scales=2)
        v[...] = np.full(v.shape, value, np.uint8)
    for name, value in (("run%41", 10), ("run#1", 30)):
        downsample(str(tmp_path / name), executor="processes", resume=False)
        assert (vb.array(str(tmp_path / name)).mip(1)[...] == value).all()
    assert (vb.array(str(tmp_path / "runA")).mip(1)[...] == 0).all()  # untouched


@pytest.mark.parametrize("url, kw", [("n5://{p}/v.n5", {}), ("ome-zarr://{p}/v.zarr", {"ome_version": "0.4"}),
                                     ("ome-zarr://{p}/v.zarr", {})])
def test_provenance_of_one_job_does_not_stop_the_next_on_the_same_handle(tmp_path, url, kw):
    """Provenance records live in zarr and N5 attributes: they change the document on disk, not the
    layout workers check (a review found the second job refused)."""
    a = vb.create(url.format(p=tmp_path), shape=(8, 128, 128), dtype="uint8", chunk_shape=(8, 16, 16), num_scales=3, **kw)
    a[...] = np.arange(a.size, dtype=np.uint64).reshape(a.shape).astype(np.uint8)
    downsample(a, mips=[1], executor="processes", resume=False)
    downsample(a, mips=[2], executor="processes", resume=False)
    assert a.mip(2)[...].any()


@pytest.mark.parametrize("kw", [{}, {"ome_version": "0.4"}])
def test_the_layout_digest_sees_arrays_recreated_under_the_same_group(tmp_path, kw):
    from volbridge.engine.identity import metadata_digest

    url = f"ome-zarr://{tmp_path / 'v.zarr'}"
    first = metadata_digest(vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 16, 16), num_scales=2, **kw).volume)
    shutil.rmtree(tmp_path / "v.zarr")
    again = metadata_digest(vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(4, 32, 32), num_scales=2, **kw).volume)
    assert first != again
    assert metadata_digest(vb.array(url).volume) == again


@pytest.mark.parametrize("executor", ["processes", "cluster"])
def test_a_volume_changed_since_the_job_started_is_refused(pyramid, executor, request):
    stale = vb.array(str(pyramid / "b"), mode="r+")
    vb.array(str(pyramid / "b"), mode="r+").volume.add_scale((2, 2, 1))  # another writer changes the info
    run = request.getfixturevalue("client") if executor == "cluster" else "processes"
    url = f"precomputed://{pyramid / 'b'}"
    with pytest.raises(vb.errors.VersionChangedError, match="changed since the job started"):
        if executor == "cluster":
            from volbridge.services.units import run_units, volume_ref

            run_units([0, 1], _version_probe, (volume_ref(stale.volume),), executor=run)
        else:
            downsample(stale, mips=[1], executor=run, resume=False)
    assert url


def _version_probe(ref, _unit):
    from volbridge.services.units import open_ref

    open_ref(ref, "r")


def test_units_too_big_for_the_memory_bound_run_on_threads(pyramid, monkeypatch):
    from volbridge.services.units import process_workers

    volume = vb.array(str(pyramid / "a")).volume
    assert process_workers(volume, 100, "processes", bytes_per_unit=1 << 20) == min(2, os.cpu_count() or 1) or (os.cpu_count() or 1) < 2
    monkeypatch.setattr("volbridge.engine.parallel.MAX_BYTES_IN_FLIGHT", 3 << 20)
    assert process_workers(volume, 100, "processes", bytes_per_unit=2 << 20) == 0
    assert process_workers(volume, 100, None, bytes_per_unit=1) == 0  # not asked for


def _slow_unit(directory, fail_at, unit):
    time.sleep(0.005)
    if unit == fail_at:
        raise vb.errors.StoreError(f"unit {unit} failed: disk on fire")
    (Path(directory) / str(unit)).touch()


def test_a_failing_unit_in_a_worker_stops_the_job_soon(pyramid, tmp_path):
    from volbridge.services.units import Journal, process_pool, run_units

    journal = Journal({"service": "probe", "dir": str(tmp_path)}, tmp_path / "jobs")
    with process_pool(vb.array(str(pyramid / "a")).volume, 200, "processes") as pool:
        assert pool is not None
        with pytest.raises(vb.errors.StoreError, match="unit 20 failed: disk on fire"):
            run_units(list(range(200)), _slow_unit, (str(tmp_path), 20), executor=pool, journal=journal)
    ran = [p for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(ran) < 60  # small batches: little queued work runs on after the failure
    assert journal.done <= {int(p.name) for p in ran}  # journaled units really ran


def _note_pid(directory, unit):
    (Path(directory) / f"{unit}-{os.getpid()}").touch()


def test_jobs_share_worker_processes_that_end_when_idle(pyramid, tmp_path, monkeypatch):
    from volbridge.services import units

    monkeypatch.setattr(units, "IDLE_SECONDS", 0.5)
    volume = vb.array(str(pyramid / "a")).volume

    def job(name):
        (tmp_path / name).mkdir()
        with units.process_pool(volume, 8, "processes") as pool:
            units.run_units(list(range(8)), _note_pid, (str(tmp_path / name),), executor=pool)
        return {p.name.split("-")[1] for p in (tmp_path / name).iterdir()}

    first, second = job("first"), job("second")
    assert first and second <= first  # the same worker processes
    time.sleep(2)
    assert units._shared["pool"] is None  # idle: ended
    third = job("third")
    assert not third & first
    monkeypatch.setenv("VOLBRIDGE_TEST_ENVIRONMENT_MARK", "1")  # a job with another environment: new workers
    assert not job("fourth") & third


def _dies(unit):
    if unit == 3:
        os._exit(1)  # as the out-of-memory killer would end it
    time.sleep(0.01)


def test_a_worker_process_that_dies_is_a_clear_error(pyramid):
    from volbridge.services.units import process_pool, run_units

    with process_pool(vb.array(str(pyramid / "a")).volume, 20, "processes") as pool:
        with pytest.raises(vb.errors.VolbridgeError, match="worker process died.*run the job again to resume"):
            run_units(list(range(20)), _dies, (), executor=pool)


def test_volumes_that_cannot_be_reopened_by_url_run_on_threads():
    a = vb.create("mem://ds-processes", shape=(8, 32, 32), dtype="uint8", chunk_shape=(4, 8, 8), num_scales=2)
    a[...] = np.arange(a.size, dtype=np.uint64).reshape(a.shape).astype(np.uint8)
    downsample(a, executor="processes")
    ref = a[...].astype(np.uint16).reshape(8, 16, 2, 16, 2).sum(axis=(2, 4))
    np.testing.assert_array_equal(a.mip(1)[...], ((ref + 2) >> 2).astype(np.uint8))


@pytest.mark.parametrize("executor", [None, "processes"])
def test_a_killed_run_resumes(pyramid, executor):
    class Killed(Exception):
        pass

    def kill_after(n):
        def progress(m, done, total):
            if done >= n:
                raise Killed()
        return progress

    url = f"precomputed://{pyramid / 'b'}"
    with pytest.raises(Killed):
        downsample(url, mips=[1], progress=kill_after(7), executor=executor)
    journals = list((pyramid / "jobs").glob("downsample-*.done"))
    assert len(journals) == 1 and len(journals[0].read_text().split()) >= 7
    seen = []
    downsample(url, mips=[1], progress=lambda m, done, total: seen.append((done, total)), executor=executor)
    first_done, total = seen[0]
    assert first_done > 7 and seen[-1] == (total, total) and len(seen) <= total - 7  # only what was left ran
    assert not list((pyramid / "jobs").glob("*.done"))  # finished: the journal is gone
    downsample(f"precomputed://{pyramid / 'a'}", mips=[1])
    np.testing.assert_array_equal(vb.array(url).mip(1)[...], vb.array(str(pyramid / "a")).mip(1)[...])


def test_a_cluster_needs_urls(client, pyramid):
    with pytest.raises(vb.errors.InvalidArgumentError, match="URL"):
        downsample(vb.array(str(pyramid / "a"), mode="r+"), executor=client)


def test_command_line_runs_on_the_cluster(client, pyramid, capsys, monkeypatch):
    from volbridge.cli import run

    import distributed

    monkeypatch.setenv("VOLBRIDGE_DASK_TIMEOUT", "2")
    opened = []

    class Recorded(distributed.Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            opened.append(self)

    monkeypatch.setattr(distributed, "Client", Recorded)
    assert run(["downsample", str(pyramid / "b"), "--dask", client.scheduler.address]) == 0
    assert run(["cp", str(pyramid / "b"), str(pyramid / "copy"), "--mip", "2", "--dask", client.scheduler.address, "--verify"]) == 0
    downsample(f"precomputed://{pyramid / 'a'}")
    np.testing.assert_array_equal(vb.array(str(pyramid / "copy"))[...], vb.array(str(pyramid / "a")).mip(2)[...])
    assert run(["downsample", str(pyramid / "b"), "--dask", "tcp://127.0.0.1:9"]) == 1
    assert "Dask scheduler" in capsys.readouterr().err
    # each command closed its client: one left open keeps reconnecting (drawing on the global
    # random) after the scheduler has gone
    assert len(opened) == 2 and all(c.status == "closed" for c in opened), [c.status for c in opened]


def test_meshes_on_a_cluster_equal_the_local_ones(client, tmp_path):
    pytest.importorskip("zmesh")
    from volbridge.services.mesh import mesh

    z, y, x = np.meshgrid(np.arange(30), np.arange(70), np.arange(90), indexing="ij")
    labels = np.where((z - 15) ** 2 + (y - 35) ** 2 + (x - 45) ** 2 < 144, 5, 0).astype(np.uint32)
    labels[(x > 70) & (y > 50)] = 9
    url = f"precomputed://{tmp_path / 'seg'}"
    a = vb.create(url, shape=labels.shape, dtype="uint32", chunk_shape=(8, 16, 16), layer_type="segmentation", resolution=(8, 4, 4))
    a[...] = labels
    local, remote = mesh(url), mesh(url, executor=client)
    assert set(local) == set(remote) == {5, 9}
    for i in local:
        np.testing.assert_array_equal(local[i].faces, remote[i].faces)
        np.testing.assert_array_equal(local[i].vertices, remote[i].vertices)


def test_workers_reopen_a_volume_whose_metadata_changed(client, tmp_path, monkeypatch):
    """Workers keep volume handles between jobs, keyed by a digest of the metadata the client
    saw: a pyramid extended twice, and a destination recreated with other chunks, are seen anew;
    a read-only handle is refused even though the cluster would reopen its URL for writing."""
    monkeypatch.setattr("volbridge.services.units.JOBS_DIR", tmp_path / "jobs")
    url = f"precomputed://{tmp_path / 'p'}"
    a = vb.create(url, shape=(8, 64, 64), dtype="uint8", chunk_shape=(8, 16, 16))
    a[...] = np.random.default_rng(1).integers(0, 255, a.shape, dtype=np.uint8)
    downsample(url, num_mips=1, executor=client)
    downsample(url, num_mips=2, executor=client)
    assert len(vb.array(url).scales) == 3 and vb.array(url).mip(2)[...].any()
    dst = f"precomputed://{tmp_path / 'd'}"
    for chunk in ((8, 16, 16), (4, 32, 32)):
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        vb.create(dst, shape=(8, 64, 64), dtype="uint8", chunk_shape=chunk)
        transfer(url, dst, executor=client)
        np.testing.assert_array_equal(vb.array(dst)[...], a[...])
    with pytest.raises(vb.errors.ReadOnlyError):
        vb.array(url).downsample(executor=client)


def test_a_memory_volume_on_a_cluster_and_a_job_of_no_scales_are_named(client, tmp_path):
    """(review) a mem:// volume given to a cluster failed on a worker with 'no volume found';
    num_mips=0 said the volume had no scale above 0."""
    vb.create("mem://cluster-refused", shape=(8, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16))[...] = 5
    with pytest.raises(vb.errors.InvalidArgumentError, match="lives in the memory of the process that made it"):
        downsample("mem://cluster-refused", num_mips=1, executor=client)
    from concurrent.futures import ThreadPoolExecutor  # workers in this process reach it (a review found them refused)

    with ThreadPoolExecutor(2) as pool:
        transfer("mem://cluster-refused", "mem://cluster-copy", executor=pool)
    assert (vb.array("mem://cluster-copy")[...] == 5).all()
    url = f"precomputed://{tmp_path / 'two'}"
    vb.create(url, shape=(8, 32, 32), dtype="uint8", num_scales=2)
    with pytest.raises(vb.errors.InvalidArgumentError, match="num_mips=0 .* select no scale"):
        downsample(url, num_mips=0)


def test_dask_writes_on_a_cluster_leave_no_memory_cache_stale(client, tmp_path):
    """(review) A handle with a memory cache sent its tier to the workers: each worker kept its
    own copy of chunks the other rewrote (reads differed from storage after partial writes), and
    the client's own tier still held what the workers had overwritten."""
    import dask.array as da

    url = f"precomputed://{tmp_path / 'p'}"
    v = vb.create(url, shape=(16, 32, 32), dtype="uint8", chunk_shape=(8, 16, 16))
    v[...] = 1
    h = vb.array(url, mode="r+", cache=1 << 26)
    assert (h[...] == 1).all()  # the client's tier holds every chunk
    h[...] = da.full((16, 32, 32), 7, dtype="uint8", chunks=(8, 16, 16))
    assert (h[...] == 7).all() and (vb.array(url, cache=1 << 26)[...] == 7).all()
    for i in range(3):  # one worker writes part of a chunk the other has read
        client.compute(h.to_dask()).result()
        h[0:8, 0:16, 0:4] = da.full((8, 16, 4), 20 + i, dtype="uint8", chunks=(8, 16, 2))
        truth = vb.array(url)[...]
        assert (truth[0:8, 0:16, 0:4] == 20 + i).all()
        np.testing.assert_array_equal(client.compute(h.to_dask()).result(), truth)
        np.testing.assert_array_equal(h[...], truth)


def test_dask_store_into_an_offset_volume_and_a_changed_volume_on_a_cluster(client, tmp_path):
    """(review) dask.array.store(x, vol) into a volume starting at z=-8 wrote block 0 at z 0..7
    and then raised BoundsError, the shifted block kept; a to_dask() graph over a volume changed
    since gave distributed's 'Error during deserialization of the task graph' (handles were
    reopened when the scheduler unpickled the graph), not volbridge's error."""
    import dask.array as da

    url = f"precomputed://{tmp_path / 'o'}"
    vb.create(url, bounds=((-8, 0, 0), (8, 16, 16)), dtype="uint8", chunk_shape=(8, 16, 16))
    x = da.from_array(np.arange(1, 17, dtype=np.uint8)[:, None, None].repeat(16, 1).repeat(16, 2), chunks=(8, 16, 16))
    for scheduler in (client, "sync"):
        with pytest.raises(vb.errors.UnsupportedError, match="0-based regions.*vol\\[...\\] = dask_array"):
            da.store(x, vb.array(url, mode="r+"), lock=False, scheduler=scheduler)
        assert not vb.array(url)[...].any()  # nothing written

    class Shifted:  # (review) a caller's own adapter, shifting dask's index as it must, is let through
        def __init__(self, vol):
            self.vol, self.shape, self.dtype, self.ndim = vol, vol.shape, vol.dtype, vol.ndim

        def __setitem__(self, index, value):
            z = index[0]
            self.vol[(slice(z.start - 8, z.stop - 8), *index[1:])] = value

    da.store(x, Shifted(vb.array(url, mode="r+")), lock=False, scheduler="sync")
    np.testing.assert_array_equal(vb.array(url)[:, 0, 0], np.arange(1, 17))
    vb.array(url, mode="r+")[...] = np.zeros((16, 16, 16), np.uint8)
    vb.array(url, mode="r+")[...] = x  # the way that places each block
    np.testing.assert_array_equal(vb.array(url)[:, 0, 0], np.arange(1, 17))
    vb.create(f"precomputed://{tmp_path / 'z'}", shape=(16, 16, 16), dtype="uint8", chunk_shape=(8, 16, 16))
    z = vb.array(f"precomputed://{tmp_path / 'z'}", mode="r+", cache=1 << 24)
    z[...] = 3
    assert (z[...] == 3).all()  # in the memory tier
    da.store(x, z, lock=False, scheduler=client)  # a volume starting at 0: dask's regions are its own
    # (review) the workers' writes never reached the sender's memory tier, which served the 3s
    np.testing.assert_array_equal(z[:, 0, 0], np.arange(1, 17))
    np.testing.assert_array_equal(vb.array(f"precomputed://{tmp_path / 'z'}", cache=1 << 24)[:, 0, 0], np.arange(1, 17))
    d = vb.array(url).to_dask()
    vb.create(url, bounds=((-8, 0, 0), (8, 16, 16)), dtype="uint8", chunk_shape=(4, 16, 16), overwrite=True)
    with pytest.raises(vb.errors.VersionChangedError, match="changed since this handle was sent"):
        client.compute(d.sum()).result()
