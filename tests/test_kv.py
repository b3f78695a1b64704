"""Key-value stores (layer 2): file and memory, the same contract."""

import os
import threading

import pytest

from volbridge.errors import StoreError, URLError
from volbridge.kv import FileStore, MemoryStore, open_store


@pytest.fixture(params=["file", "mem"])
def store(request, tmp_path):
    return FileStore(tmp_path / "s") if request.param == "file" else MemoryStore()


def test_contract(store):
    check_contract(store)


def check_contract(store):
    """The KVStore contract; also run through the caches (tests/test_kv_cache.py)."""
    assert store.get("a/b") is None
    store.put("a/b", b"1")
    store.put("a/c", b"22")
    store.put("z", b"")
    assert store.get("a/b") == b"1" and store.get("z") == b""
    assert sorted(store.list()) == ["a/b", "a/c", "z"]
    assert sorted(store.list("a/")) == ["a/b", "a/c"]
    assert store.get_first(["nope", "a/c", "a/b"]) == ("a/c", b"22")
    store.delete("a/b")
    store.delete("a/b")  # absent: fine
    assert not store.exists("a/b") and store.exists("a/c")
    assert store.update("n", lambda old: (old or b"") + b"x") == b"x"
    assert store.update("n", lambda old: old + b"y") == b"xy"
    child = store.child("a")
    assert child.get("c") == b"22" and list(child.list()) == ["c"]
    assert store.get_range("a/c", 1, 2) == b"2"


def test_update_is_atomic_under_threads(store):
    n, per = 8, 50

    def bump():
        for _ in range(per):
            store.update("ctr", lambda old: str(int(old or b"0") + 1).encode())

    threads = [threading.Thread(target=bump) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.get("ctr")) == n * per


def test_file_store_hides_its_lock_and_temp_files(tmp_path):
    s = FileStore(tmp_path)
    s.update("k/v", lambda old: b"1")
    (tmp_path / "k" / ".vbtmp-v.1.ab").write_bytes(b"junk")
    assert list(s.list()) == ["k/v"]
    assert len(os.listdir(tmp_path / ".volbridge-locks")) == 1


def test_file_store_rejects_escaping_keys(tmp_path):
    s = FileStore(tmp_path)
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(URLError):
            s.get(bad)


def test_file_store_failed_write_leaves_old_value(tmp_path):
    s = FileStore(tmp_path)
    s.put("a", b"old")
    with pytest.raises(RuntimeError):
        s.update("a", lambda old: (_ for _ in ()).throw(RuntimeError("boom")))
    assert s.get("a") == b"old"
    (tmp_path / "d").mkdir()
    with pytest.raises(StoreError, match="'d'"):
        s.put("d", b"x")  # a directory is in the way


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(str(tmp_path)), FileStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path
    assert open_store("mem://x") is open_store("mem://x")
    for bad in ("", "file://host/x", "mem://", "s4://b/k"):
        with pytest.raises(URLError):
            open_store(bad)


@pytest.mark.parametrize("suffix,encoding", [(".gz", "gzip"), (".br", "br"), (".zstd", "zstd"), (".zst", "zstd"),
                                             (".xz", "xz"), (".bz2", "bz2")])
def test_file_store_reads_cloudfiles_compressed_objects(tmp_path, suffix, encoding):
    from volbridge import compression

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / ("v" + suffix)).write_bytes(compression.compress(encoding, b"payload"))
    s = FileStore(tmp_path)
    assert s.get("k/v") == b"payload" and bytes(s.get_transient("k/v")) == b"payload"
    assert list(s.list()) == ["k/v"] and s.exists("k/v")
    s.put("k/v", b"new", content_encoding="gzip")  # one name per key afterwards
    assert sorted(os.listdir(tmp_path / "k")) == ["v.gz"] and s.get("k/v") == b"new"
