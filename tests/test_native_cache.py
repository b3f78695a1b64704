"""The native loops' machine code kept on disk (engine/native_cache.py): each case in a fresh
process, since a process builds the loops once."""

import hashlib
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


def _env(cache, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VOLBRIDGE_NO_NATIVE", "VOLBRIDGE_NATIVE_CACHE")}
    env["VOLBRIDGE_NATIVE_CACHE"] = str(cache)
    env.update(extra)
    return env


@needs_linker
def test_the_library_is_named_by_the_sources_as_imported_not_as_edited_after(volume):
    """(review) A process that imported the engine, whose native.py was edited before its first
    read (a checkout under an editable install), had kept its code under the edited file's name:
    a later process loaded code that was not its own."""
    import shutil

    import volbridge

    pkg = volume / "pkg"
    shutil.copytree(os.path.dirname(volbridge.__file__), pkg / "volbridge")
    native_py = pkg / "volbridge" / "engine" / "native.py"
    cache = volume / "cache"
    code = textwrap.dedent(f"""
        import sys
        from volbridge.engine import native
        if sys.argv[1] == "edit":
            with open({str(native_py)!r}, "a") as f:
                f.write("\\n# edited after the import\\n")
        native.loops()
        print(type(native.loops().engine).__name__, "llvmlite.binding" in sys.modules, native._SOURCE_KEY)
    """)
    env = _env(cache, PYTHONPATH=str(pkg))
    first = subprocess.run([sys.executable, "-c", code, "edit"], capture_output=True, text=True, env=env, timeout=120)
    second = subprocess.run([sys.executable, "-c", code, "-"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    (_, built1, key1), (_, built2, key2) = first.stdout.split(), second.stdout.split()
    assert key1 != key2 and built1 == built2 == "True"  # the edited sources are built anew
    assert sorted(p.name for p in cache.glob("loops-*.so")) == sorted(f"loops-{k}.so" for k in (key1, key2))


@needs_linker
def test_another_librarys_copy_rows_does_not_take_over_the_loops_calls(volume):
    """(review) The loops called copy_rows by its exported name: a library loaded RTLD_GLOBAL
    first with a copy_rows of its own took those calls over (reads half zeros)."""
    other = volume / "other.c"
    other.write_text("void copy_rows(long a, long b, long c, long d) { (void)a; (void)b; (void)c; (void)d; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(volume / "libother.so"), str(other)], check=True, timeout=60)
    cache = volume / "cache"
    code = "import ctypes; ctypes.CDLL(%r, mode=ctypes.RTLD_GLOBAL)\n" % str(volume / "libother.so") + _READ.format(
        url=f"zarr3://{volume}/z", want=str(volume / "want.npy"))
    for _ in range(2):  # the process that builds the library, and one that loads it
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(cache), timeout=120)
        assert out.returncode == 0 and out.stdout.split()[0] == "CDLL", out.stderr


def test_a_linker_that_hangs_or_a_library_that_cannot_load_is_tried_once(volume, monkeypatch):
    """(review) A cc that hangs (a dead distcc host) held every process's first read for a
    minute, and a library that cannot be loaded (a noexec mount) had every small read wait for
    a build: both are now marked, and later processes go straight to LLVM's JIT."""
    fake = volume / "bin"
    fake.mkdir()
    calls = volume / "cc-calls"
    (fake / "cc").write_text(f"#!/bin/sh\necho called >> {calls}\nexec sleep 30\n")
    (fake / "cc").chmod(0o755)
    cache = volume / "cache"
    code = textwrap.dedent("""
        import sys, time
        from volbridge.engine import native, native_cache
        native_cache.LINK_SECONDS = 1
        t = time.monotonic()
        print(type(native.loops().engine).__name__, native.cheap(), round(time.monotonic() - t))
    """)
    env = _env(cache, PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        owner, cheap, seconds = out.stdout.split()
        assert owner == "ExecutionEngine" and cheap == "True" and int(seconds) < 10
    assert calls.read_text().split() == ["called"]  # the second process did not try again
    # a kept library that does not load (not a shared object, but sealed as one)
    from volbridge.engine import native_cache

    monkeypatch.setenv("VOLBRIDGE_NATIVE_CACHE", str(cache))
    key = "0" * 40
    path = cache / f"loops-{key}.so"
    path.write_bytes(b"not an ELF file")
    native_cache._write(path.with_suffix(".sha256"), native_cache._sealed(hashlib.sha256(path.read_bytes()).digest()))
    assert native_cache.has_library(key)
    assert native_cache.load_library(key) is None
    assert not native_cache.has_library(key)  # marked: small reads no longer wait for a build


def test_no_home_means_no_cache_not_one_in_the_working_directory(monkeypatch):
    from volbridge.engine import native_cache

    monkeypatch.delenv("VOLBRIDGE_NATIVE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # no passwd entry either
    assert native_cache.directory() is None
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # to be ignored, as the spec says
    assert native_cache.directory() is None
    monkeypatch.setenv("VOLBRIDGE_NATIVE_CACHE", "here")
    assert native_cache.directory().is_absolute()


@needs_linker
def test_another_llvmlite_names_another_library(volume):
    """The LLVM that compiles the loops comes with llvmlite: a process with another llvmlite
    (here the same one under another version) must not load code the first one built."""
    import llvmlite

    real = os.path.dirname(llvmlite.__file__)
    fake = volume / "other" / "llvmlite"
    fake.mkdir(parents=True)
    for name in os.listdir(real):
        if name != "_version.py":
            os.symlink(os.path.join(real, name), fake / name)
    text = open(os.path.join(real, "_version.py")).read()
    assert llvmlite.__version__ in text
    (fake / "_version.py").write_text(text.replace(llvmlite.__version__, llvmlite.__version__ + ".post99"))
    cache = volume / "cache"
    code = textwrap.dedent("""
        import sys
        from volbridge.engine import native
        native.loops()
        import llvmlite
        print(llvmlite.__version__, native._SOURCES[-1], native._SOURCE_KEY)
    """)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=_env(cache, **extra)) for extra in ({}, {"PYTHONPATH": str(volume / "other")})]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    (v1, f1, key1), (v2, f2, key2) = (r.stdout.split() for r in runs)
    assert (v1, f1) == (llvmlite.__version__, os.path.join(real, "_version.py"))
    assert (v2, f2) == (llvmlite.__version__ + ".post99", str(fake / "_version.py"))
    assert key1 != key2
    assert sorted(p.name for p in cache.glob("loops-*.so")) == sorted(f"loops-{k}.so" for k in (key1, key2))


@needs_linker
def test_two_kept_libraries_loaded_in_turn_are_each_their_own(tmp_path, monkeypatch):
    """(found by a test order) Libraries are loaded through /proc/self/fd/N, and dlopen knows a
    library by that name: with the first one's descriptor closed, the second got the same number
    and dlopen handed back the first library without reading the second file."""
    from volbridge.engine import native_cache

    monkeypatch.setenv("VOLBRIDGE_NATIVE_CACHE", str(tmp_path))
    answers = {}
    for i, key in enumerate(("1" * 40, "2" * 40)):
        src = tmp_path / f"answer{i}.c"
        src.write_text(f"int answer(void) {{ return {i + 40}; }}\n")
        path = tmp_path / f"loops-{key}.so"
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True, timeout=60)
        native_cache._write(path.with_suffix(".sha256"), native_cache._sealed(hashlib.sha256(path.read_bytes()).digest()))
        answers[key] = i + 40
    for key, answer in answers.items():
        library = native_cache.load_library(key)
        assert library is not None and library.answer() == answer
