"""volbridge's key-value stores under zarr-python's own arrays, through ``kv.zarr_store.ZarrStore``.

* zarr-python's store conformance suite (``zarr.testing.store.StoreTests``), unchanged, against
  the adapter over a memory store, a file store, a sub-prefix of a file store, memory and disk
  cache tiers, and an S3 object store (SeaweedFS on 127.0.0.1) opened from its URL.
* Byte-range edge cases the suite leaves out, pickling, read-only views sharing one cache.
* End to end: zarr-python writes and reads a sharded v3 array through the adapter; zarr-python's
  own LocalStore reads the files it left; volbridge reads an array zarr-python wrote through the
  adapter, and zarr-python reads through the adapter an array volbridge wrote.

The suite's async tests run under anyio's pytest plugin (a dependency of the relay extra) on
asyncio; an autouse fixture asks for ``anyio_backend`` so that its async ``store`` fixture is set
up for its sync tests too.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

import volbridge as vb
from volbridge.kv import DiskCache, FileStore, MemoryCache, MemoryStore
from volbridge.kv.zarr_store import ZarrStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def named_memory() -> MemoryStore:
    # Named, so that a pickled adapter reopens the same store (mem://name).
    return MemoryStore.named(f"zarr-adapter-{uuid.uuid4().hex}")


# -- zarr-python's conformance suite --------------------------------------------------------------


class _AdapterTests(StoreTests[ZarrStore, cpu.Buffer]):
    store_cls = ZarrStore
    buffer_cls = cpu.Buffer

    @pytest.fixture(autouse=True)
    def _async_fixtures_in_sync_tests(self, anyio_backend):
        pass

    # The suite's back door: read and write the volbridge store itself, not through the adapter.
    async def set(self, store: ZarrStore, key: str, value: cpu.Buffer) -> None:
        store.kv.put(key, value.to_bytes())

    async def get(self, store: ZarrStore, key: str) -> cpu.Buffer:
        return self.buffer_cls.from_bytes(store.kv.get(key))

    def test_store_repr(self, store: ZarrStore) -> None:
        assert repr(store).startswith("ZarrStore(") and store.kv.url in repr(store)

    def test_store_supports_writes(self, store: ZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrStore) -> None:
        assert store.supports_listing


class TestMemoryStore(_AdapterTests):
    @pytest.fixture
    def store_kwargs(self) -> dict:
        return {"kv": named_memory()}


class TestFileStore(_AdapterTests):
    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"kv": FileStore(tmp_path / "data.zarr")}


class TestPrefixedFileStore(_AdapterTests):
    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"kv": FileStore(tmp_path / "data.zarr").child("group/array")}


class TestMemoryCache(_AdapterTests):
    @pytest.fixture
    def store_kwargs(self) -> dict:
        return {"kv": named_memory(), "cache": 1 << 20}


class TestDiskCache(_AdapterTests):
    @pytest.fixture
    def store_kwargs(self, tmp_path) -> dict:
        return {"kv": FileStore(tmp_path / "data.zarr"), "cache": str(tmp_path / "cache")}


class TestS3ObjectStore(_AdapterTests):
    """An object store, opened from its URL: SeaweedFS on 127.0.0.1, a fresh prefix per test."""

    @pytest.fixture
    def store_kwargs(self, seaweedfs, monkeypatch) -> dict:
        for name, value in seaweedfs.env.items():
            monkeypatch.setenv(name, value)
        return {"kv": seaweedfs.url(key=seaweedfs.new_prefix("zarr").rstrip("/"))}


# -- beyond the suite -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file", "memory-cache", "disk-cache", "s3"])
def adapter(request, tmp_path, monkeypatch) -> ZarrStore:
    kind = request.param
    if kind == "s3":
        s3 = request.getfixturevalue("seaweedfs")
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        return ZarrStore(s3.url(key=s3.new_prefix("zarr").rstrip("/")))
    if kind == "memory":
        return ZarrStore(named_memory())
    if kind == "file":
        return ZarrStore(FileStore(tmp_path / "data.zarr"))
    if kind == "memory-cache":
        return ZarrStore(named_memory(), cache=1 << 20)
    return ZarrStore(FileStore(tmp_path / "data.zarr"), cache=str(tmp_path / "cache"))


async def test_byte_ranges_follow_zarr_semantics(adapter):
    """Ranges past the end give the tail, a suffix longer than the value gives all of it, and any
    range of an absent key is None (volbridge's get_range raises for the first and last)."""
    proto = default_buffer_prototype()
    await adapter.set("k", cpu.Buffer.from_bytes(b"0123456789"))
    cases = {
        RangeByteRequest(2, 5): b"234",
        RangeByteRequest(7, 100): b"789",
        RangeByteRequest(12, 20): b"",
        OffsetByteRequest(8): b"89",
        SuffixByteRequest(3): b"789",
        SuffixByteRequest(100): b"0123456789",
        SuffixByteRequest(0): b"",
    }
    for request, want in cases.items():
        assert (await adapter.get("k", proto, request)).to_bytes() == want, request
        assert adapter.get_sync("k", byte_range=request).to_bytes() == want, request
        assert await adapter.get("absent", proto, request) is None
    with pytest.raises(TypeError, match="Unexpected byte_range"):
        await adapter.get("k", proto, (0, 2))


async def test_a_key_that_prefixes_other_keys_is_absent(adapter):
    """As on object stores, ``node`` is no object when only ``node/...`` keys exist (on disk it is a
    directory, which FileStore read as a failure before)."""
    proto = default_buffer_prototype()
    await adapter.set("node/zarr.json", cpu.Buffer.from_bytes(b"{}"))
    assert not await adapter.exists("node")
    for request in (None, RangeByteRequest(0, 1), SuffixByteRequest(1)):
        assert await adapter.get("node", proto, request) is None
    assert adapter.kv.get_transient("node") is None


async def test_set_if_not_exists_keeps_the_first_value_under_concurrent_writers(adapter):
    import asyncio

    values = [cpu.Buffer.from_bytes(bytes([i]) * 4) for i in range(16)]
    await asyncio.gather(*(adapter.set_if_not_exists("once", v) for v in values))
    first = (await adapter.get("once", default_buffer_prototype())).to_bytes()
    assert first in {v.to_bytes() for v in values}
    await asyncio.gather(*(adapter.set_if_not_exists("once", v) for v in values))
    assert (await adapter.get("once", default_buffer_prototype())).to_bytes() == first


async def test_read_only_view_shares_the_cache(tmp_path):
    writer = ZarrStore(FileStore(tmp_path / "d"), cache=1 << 20)
    reader = writer.with_read_only(True)
    assert reader.kv is writer.kv and isinstance(reader.kv, MemoryCache)
    await writer.set("a", cpu.Buffer.from_bytes(b"1"))
    assert (await reader.get("a", default_buffer_prototype())).to_bytes() == b"1"
    await writer.set("a", cpu.Buffer.from_bytes(b"2"))  # must not leave reader a stale copy
    assert (await reader.get("a", default_buffer_prototype())).to_bytes() == b"2"
    with pytest.raises(ValueError, match="read-only"):
        await reader.set("a", cpu.Buffer.from_bytes(b"3"))
    with pytest.raises(ValueError, match="read-only"):
        await reader.delete_dir("")


def test_pickling_reopens_by_url_and_refuses_what_a_url_cannot_reach(tmp_path):
    disk = ZarrStore(FileStore(tmp_path / "d"), cache=str(tmp_path / "c"), read_only=True)
    copy = pickle.loads(pickle.dumps(disk))
    assert copy == disk and isinstance(copy.kv, DiskCache) and copy.read_only
    with pytest.raises(TypeError, match="cannot be reopened from its URL"):
        pickle.dumps(ZarrStore(MemoryStore()))  # unnamed: a URL would reach a new, empty store
    with pytest.raises(TypeError, match="cannot be reopened from its URL"):
        pickle.dumps(ZarrStore(MemoryCache(named_memory(), 100)))  # use cache= instead


def test_importing_volbridge_does_not_import_zarr():
    code = "import sys, volbridge, volbridge.kv, volbridge.remotes.registry; print('zarr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- end to end -----------------------------------------------------------------------------------


def _data(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, shape, dtype=np.uint16)


@pytest.mark.parametrize("kind", ["memory", "file", "memory-cache"])
def test_zarr_python_sharded_array_round_trip(tmp_path, kind):
    root = tmp_path / "x.zarr"
    kv = FileStore(root) if kind == "file" else named_memory()
    cache = 1 << 22 if kind == "memory-cache" else None
    store = ZarrStore(kv, cache=cache)
    a = zarr.create_array(store=store, name="em", shape=(30, 40, 50), chunks=(5, 10, 10), shards=(10, 20, 50),
                          dtype="uint16", fill_value=0)
    data = _data(a.shape)
    want = np.zeros(a.shape, np.uint16)
    box = np.s_[3:17, 5:18, 7:49]  # unaligned: partial shards and chunks; four of six shards untouched
    a[box] = data[box]
    want[box] = data[box]

    assert sorted(kv.list("em/c/")) == ["em/c/0/0/0", "em/c/1/0/0"]  # one object per shard
    again = zarr.open_array(store=ZarrStore(kv, cache=cache, read_only=True), path="em", mode="r")
    np.testing.assert_array_equal(again[...], want)
    np.testing.assert_array_equal(again[12:14, 11:13, 3:48], want[12:14, 11:13, 3:48])
    if kind == "file":  # zarr-python's own LocalStore finds a standard layout on disk
        np.testing.assert_array_equal(zarr.open_array(str(root / "em"), mode="r")[...], want)


def test_chunks_of_a_shard_are_read_as_byte_ranges():
    class CountingStore(MemoryStore):
        ranges = 0

        def get_range(self, key, start, end):
            CountingStore.ranges += 1
            return super().get_range(key, start, end)

    store = ZarrStore(CountingStore())
    a = zarr.create_array(store=store, shape=(8, 8), chunks=(2, 2), shards=(8, 8), dtype="uint8", fill_value=0)
    a[...] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    CountingStore.ranges = 0
    assert a[2:4, 4:6].tolist() == [[20, 21], [28, 29]]
    assert CountingStore.ranges == 1  # the one chunk, not the shard


def test_volbridge_reads_what_zarr_python_wrote_through_the_adapter(tmp_path):
    root = tmp_path / "x.zarr"
    store = ZarrStore(FileStore(root))
    zarr.create_group(store=store)
    a = zarr.create_array(store=store, name="raw", shape=(20, 30, 40), chunks=(8, 8, 16), dtype="uint16",
                          fill_value=0, compressors=zarr.codecs.ZstdCodec(level=3))
    a[2:19, 3:29, 5:37] = _data((17, 26, 32), seed=1)
    want = a[...]
    for url in ("zarr://" + str(root / "raw"), str(root / "raw")):
        np.testing.assert_array_equal(vb.array(url)[...], want, err_msg=url)


def test_zarr_python_reads_through_the_adapter_what_volbridge_wrote(tmp_path):
    path = tmp_path / "vb.zarr"
    h = vb.create("zarr3://" + str(path), shape=(20, 30, 40), dtype="uint16", chunk_shape=(8, 8, 16),
                  compression="zstd")
    data = _data((15, 20, 25), seed=2)
    h[1:16, 4:24, 9:34] = data
    a = zarr.open_array(store=ZarrStore(FileStore(path), read_only=True), mode="r")
    np.testing.assert_array_equal(a[...], h[...])
    np.testing.assert_array_equal(a[1:16, 4:24, 9:34], data)


def test_an_array_overwritten_with_fewer_dimensions_writes_where_old_chunk_dirs_were(tmp_path):
    """(review) delete_dir unlinks files and leaves their emptied directories; a 1-D array's
    chunk c/1 then landed on the 2-D array's directory c/1/: 'Is a directory'. LocalStore is the
    oracle."""
    import zarr
    from zarr.storage import LocalStore

    from volbridge.kv.file import FileStore
    from volbridge.kv.zarr_store import ZarrStore

    for store in (LocalStore(str(tmp_path / "local")), ZarrStore(FileStore(str(tmp_path / "vb")))):
        zarr.create_array(store, shape=(4, 4), chunks=(2, 2), dtype="u1", fill_value=0)[:] = 1
        zarr.create_array(store, shape=(4,), chunks=(2,), dtype="u1", fill_value=0, overwrite=True)[:] = 7
        assert zarr.open_array(store)[:].tolist() == [7, 7, 7, 7]
    (tmp_path / "vb" / "d").mkdir()
    (tmp_path / "vb" / "d" / "keep").write_bytes(b"x")  # a directory still holding a file stays one
    from volbridge.errors import StoreError

    with pytest.raises(StoreError, match="'d'"):
        FileStore(str(tmp_path / "vb")).put("d", b"y")
    assert (tmp_path / "vb" / "d" / "keep").read_bytes() == b"x"
