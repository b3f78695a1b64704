"""The native loops' machine code kept on disk (engine/native_cache.py): each case in a fresh
process, since a process builds the loops once."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import volbridge as vb

_READ = textwrap.dedent("""
    import numpy as np, volbridge as vb
    from volbridge.engine import grouped, native, place
    assert native.loops() is not None and place.load()
    files = []
    real = grouped._read_files
    grouped._read_files = lambda *a: files.append(len(a[3])) or real(*a)
    got = vb.array({url!r})[...]
    assert np.array_equal(got, np.load({want!r})) and files == [8], files
    print("ok")
""")


def _run(tmp_path, cache) -> None:
    code = _READ.format(url=f"zarr3://{tmp_path}/z", want=str(tmp_path / "want.npy"))
    env = {k: v for k, v in os.environ.items() if k not in ("VOLBRIDGE_NO_NATIVE", "VOLBRIDGE_NATIVE_CACHE")}
    env["VOLBRIDGE_NATIVE_CACHE"] = str(cache)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.split() == ["ok"], out.stderr


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(6).integers(0, 255, (16, 16, 16), dtype=np.uint8)
    vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), compression="zstd")[...] = data
    np.save(tmp_path / "want.npy", data)
    return tmp_path


def test_a_second_process_loads_the_code_the_first_compiled(volume):
    cache = volume / "cache"
    _run(volume, cache)
    (obj,) = cache.iterdir()
    before = obj.stat()
    _run(volume, cache)
    after = obj.stat()
    assert list(cache.iterdir()) == [obj]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # loaded, not written again


@pytest.mark.parametrize("damage", ["flip", "cut", "empty"])
def test_damaged_code_is_compiled_anew_and_replaced(volume, damage):
    cache = volume / "cache"
    _run(volume, cache)
    (obj,) = cache.iterdir()
    good = obj.read_bytes()
    bad = {"flip": good[:-20] + bytes([good[-20] ^ 0xFF]) + good[-19:], "cut": good[:len(good) // 2], "empty": b""}[damage]
    obj.write_bytes(bad)
    _run(volume, cache)  # would crash or misread if the damaged code were loaded
    assert obj.read_bytes() == good


def test_off_or_unwritable_the_loops_still_compile(volume):
    _run(volume, "0")
    assert not (volume / "0").exists()  # off, not a directory named "0" beside the process
    blocker = volume / "a-file"
    blocker.write_bytes(b"")
    _run(volume, blocker / "cache")  # its parent is a file: nothing can be written there
    assert blocker.read_bytes() == b""
