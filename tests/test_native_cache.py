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
    import sys, numpy as np, volbridge as vb
    from volbridge.engine import grouped, native, place
    assert native.loops() is not None and place.load()
    files = []
    real = grouped._read_files
    grouped._read_files = lambda *a: files.append(len(a[3])) or real(*a)
    got = vb.array({url!r})[...]
    assert np.array_equal(got, np.load({want!r})) and files == [8], files
    print(type(native.loops().engine).__name__, "llvmlite.binding" in sys.modules)
""")


def _run(tmp_path, cache, *, linker: bool = True) -> tuple[str, str]:
    """Read the volume in a fresh process; (what owns the loops' code, whether llvmlite's LLVM
    library was loaded)."""
    code = _READ.format(url=f"zarr3://{tmp_path}/z", want=str(tmp_path / "want.npy"))
    env = {k: v for k, v in os.environ.items() if k not in ("VOLBRIDGE_NO_NATIVE", "VOLBRIDGE_NATIVE_CACHE")}
    env["VOLBRIDGE_NATIVE_CACHE"] = str(cache)
    if not linker:
        env["PATH"] = str(tmp_path / "no-programs-here")  # no cc to link a library with
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    owner, llvm = out.stdout.split()
    return owner, llvm


@pytest.fixture
def volume(tmp_path):
    data = np.random.default_rng(6).integers(0, 255, (16, 16, 16), dtype=np.uint8)
    vb.create(f"zarr3://{tmp_path}/z", shape=data.shape, dtype="uint8", chunk_shape=(8, 8, 8), compression="zstd")[...] = data
    np.save(tmp_path / "want.npy", data)
    return tmp_path


needs_linker = pytest.mark.skipif(sys.platform != "linux" or not any(
    os.access(os.path.join(d, "cc"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)),
    reason="the shared library is linked by cc on Linux")


def _stamp(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@needs_linker
def test_a_second_process_loads_the_library_the_first_linked_without_llvm(volume):
    cache = volume / "cache"
    assert _run(volume, cache) == ("CDLL", "True")
    library, digest = sorted(cache.glob("loops-*.so")), sorted(cache.glob("loops-*.sha256"))
    assert len(library) == len(digest) == 1 and len(list(cache.iterdir())) == 2
    before = [_stamp(library[0]), _stamp(digest[0])]
    assert _run(volume, cache) == ("CDLL", "False")  # loaded: LLVM never loaded in that process
    assert [_stamp(library[0]), _stamp(digest[0])] == before  # not written again


@needs_linker
@pytest.mark.parametrize("damage", ["flip", "cut", "empty", "digest"])
def test_a_damaged_library_is_built_anew_and_replaced(volume, damage):
    cache = volume / "cache"
    _run(volume, cache)
    (library,) = cache.glob("loops-*.so")
    good = library.read_bytes()
    if damage == "digest":
        library.with_suffix(".sha256").write_bytes(b"volbridge-native-1\n" + bytes(64))
    else:
        library.write_bytes({"flip": good[:-200] + bytes([good[-200] ^ 0xFF]) + good[-199:], "cut": good[:len(good) // 2],
                             "empty": b""}[damage])
    assert _run(volume, cache) == ("CDLL", "True")  # would crash or misread if the damaged code were loaded
    assert library.read_bytes() == good
    assert _run(volume, cache) == ("CDLL", "False")


def test_without_a_linker_llvms_object_code_is_kept_instead(volume):
    cache = volume / "cache"
    owner, _ = _run(volume, cache, linker=False)
    assert owner == "ExecutionEngine"
    (obj,) = cache.glob("*.o")
    assert list(cache.iterdir()) == [obj]
    before = _stamp(obj)
    assert _run(volume, cache, linker=False)[0] == "ExecutionEngine"
    assert _stamp(obj) == before  # loaded, not written again
    good = obj.read_bytes()
    obj.write_bytes(good[:-20] + bytes([good[-20] ^ 0xFF]) + good[-19:])
    _run(volume, cache, linker=False)  # compiled anew, not loaded
    assert obj.read_bytes() == good


def test_off_or_unwritable_the_loops_still_compile(volume):
    assert _run(volume, "0")[0] == "ExecutionEngine"
    assert not (volume / "0").exists()  # off, not a directory named "0" beside the process
    blocker = volume / "a-file"
    blocker.write_bytes(b"")
    assert _run(volume, blocker / "cache")[0] == "ExecutionEngine"  # its parent is a file: nothing written there
    assert blocker.read_bytes() == b""
