"""The compiled loops' machine code kept on disk, so later processes load it instead of building it.

Building :mod:`.native`'s loops costs a process ~100 ms, paid by its first big read: importing
llvmlite (~25 ms for its IR builder, ~60 ms for its LLVM library), building the IR (~9 ms) and
LLVM's code generation (~40-55 ms). Two ways to keep the result:

* a **shared library**, where the system has a C compiler driver (``cc``) to link one: the
  loops are compiled once for the architecture's baseline CPU (they need nothing newer: their
  copies are explicit 16-byte moves, and the codecs are the libraries' own code) into a
  position-independent object, linked with ``cc -shared -nostdlib`` (the loops call nothing
  by name: every C function is an address they are given), and later processes load it with
  ctypes in ~1 ms without importing llvmlite at all. It is named by a hash of the source of
  the loops (this module and :mod:`.native`) and the platform, so another volbridge version
  never loads it;
* else MCJIT's **object cache**: the object code of the in-process compilation, named by a
  hash of the IR, target, CPU features and llvmlite/LLVM versions; loading it takes <1 ms of
  the build (llvmlite is still imported).

Each file is written whole or not at all (a rename), with a SHA-256 beside or inside it that
is checked before it is loaded: a damaged file is built anew and replaced, never loaded. Where
nothing can be written the loops are built as before. ``VOLBRIDGE_NATIVE_CACHE`` names the
directory (default ``$XDG_CACHE_HOME/volbridge/native`` or ``~/.cache/volbridge/native``);
``0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MAGIC = b"volbridge-native-1\n"
_DIGEST = hashlib.sha256().digest_size


def directory() -> Path | None:
    """Where the code is kept (an absolute path), or None when the cache is off or there is no
    home to keep it in."""
    env = os.environ.get("VOLBRIDGE_NATIVE_CACHE")
    if env is not None and env.strip().lower() in ("0", "off", "no", "false"):
        return None
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the spec: a relative XDG_CACHE_HOME is to be ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):  # no HOME and no passwd entry (a container's arbitrary uid)
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "volbridge" / "native"


def _write(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (for processes loading it meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # as any cache file (mkstemp makes it the owner's alone)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _sealed(data: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(data).digest() + data


def _unsealed(data: bytes) -> bytes | None:
    """What :func:`_sealed` wrapped, or None when ``data`` is not such a file, whole."""
    head = len(_MAGIC) + _DIGEST
    if not data.startswith(_MAGIC) or hashlib.sha256(data[head:]).digest() != data[len(_MAGIC):head]:
        return None
    return data[head:]


# -- the shared library --------------------------------------------------------------------------
#: How long linking may take before it counts as failed (a cc that hangs: a dead distcc host).
LINK_SECONDS = 15
#: Files in the cache directory older than this are removed when a library is built: libraries
#: of volbridge versions no longer used, temporary files of builds that were killed.
STALE_SECONDS = 30 * 24 * 3600


def source_key(sources: list[Path]) -> str | None:
    """The name the loops built from ``sources`` are kept under: to be worked out when the
    module that builds them is imported (a file edited later, say by a checkout under an
    editable install, must not name the code built from the module as it was imported). None
    where the sources are not plain files (a zip import)."""
    try:
        key = hashlib.sha256()
        for part in (*(p.read_bytes() for p in sources), platform.machine().encode(), _MAGIC):
            key.update(hashlib.sha256(part).digest())
        return key.hexdigest()[:40]
    except OSError:
        return None


def _library_path(key: str | None) -> Path | None:
    where = directory()
    if where is None or key is None or sys.platform != "linux":  # linked and loaded the ELF way
        return None
    return where / f"loops-{key}.so"


def _no_library(path: Path) -> Path:
    """The mark left where a library cannot be linked or loaded here: later processes go
    straight to MCJIT, and small reads do not wait for a build (see :func:`has_library`)."""
    return path.with_suffix(".nolink")


def has_library(key: str | None) -> bool:
    """Whether a shared library of ``key`` is kept and may load (unchecked until it is loaded)."""
    try:
        path = _library_path(key)
        return path is not None and path.is_file() and not _no_library(path).exists()
    except OSError:
        return False


#: Descriptors of the libraries loaded through them (:func:`load_library`), kept open.
_loaded_fds: list[int] = []


def load_library(key: str | None) -> ctypes.CDLL | None:
    """The loops' shared library kept under ``key`` by an earlier process, or None. The bytes
    checked against the digest are the bytes loaded: the library is loaded through the
    descriptor they were read from, not its name (another process may replace the file)."""
    path = _library_path(key)
    if path is None or not has_library(key):
        return None
    try:
        seal = _unsealed(path.with_suffix(".sha256").read_bytes())
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    library = None
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        if seal is not None and hashlib.sha256(data).digest() == seal:  # else damaged, or being written
            try:
                library = ctypes.CDLL(f"/proc/self/fd/{fd}")
            except OSError:  # a cache on a noexec mount, say: never again here
                _mark_unlinkable(path)
    except OSError:
        pass
    if library is None:
        os.close(fd)
    else:
        # The descriptor stays open while the library is loaded: dlopen knows a library by the
        # name it was loaded under, so a later load through a reused descriptor number would
        # be handed this library instead of reading its own file.
        _loaded_fds.append(fd)
    return library


def _mark_unlinkable(path: Path) -> None:
    try:
        _write(_no_library(path), b"")
    except OSError:
        pass


def make_library(key: str | None, ir_text: str, llvm) -> ctypes.CDLL | None:
    """Compile ``ir_text`` for the baseline CPU into a shared library kept under ``key`` for
    later processes (see the module's docstring) and load it; None where it cannot be linked,
    written or loaded (then marked, so later processes do not try again)."""
    path = _library_path(key)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if path is None or cc is None:
        return None
    try:
        if _no_library(path).exists():
            return None
        kept = load_library(key)  # another process built it meanwhile: never replace one in use
        if kept is not None:
            return kept
        target = llvm.Target.from_default_triple()
        machine = target.create_target_machine(cpu="", features="", opt=2, reloc="pic", codemodel="default")
        module = llvm.parse_assembly(ir_text)
        module.triple, module.data_layout = machine.triple, str(machine.target_data)
        module.verify()
        obj = machine.emit_object(module)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path.parent)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
            Path(tmp, "loops.o").write_bytes(obj)
            try:
                linked = subprocess.run([cc, "-shared", "-nostdlib", "-o", str(Path(tmp, "loops.so")),
                                         str(Path(tmp, "loops.o"))], capture_output=True, timeout=LINK_SECONDS)
            except subprocess.SubprocessError:
                linked = None
            if linked is None or linked.returncode != 0:
                _mark_unlinkable(path)
                return None
            library = Path(tmp, "loops.so").read_bytes()
            # the digest first: a reader that finds the library checks it against this
            _write(path.with_suffix(".sha256"), _sealed(hashlib.sha256(library).digest()))
            _write(path, library)
        return load_library(key)
    except OSError:
        return None


def _remove_stale(where: Path) -> None:
    """Remove what in ``where`` has not been touched for :data:`STALE_SECONDS`."""
    limit = time.time() - STALE_SECONDS
    for entry in where.iterdir():
        try:
            if entry.lstat().st_mtime < limit:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:
            pass


# -- MCJIT's object cache --------------------------------------------------------------------------
def attach(engine, ir_text: str, machine, llvm) -> None:
    """Give ``engine`` (an MCJIT engine, before ``finalize_object``) an object cache on disk for
    the module of ``ir_text`` compiled for ``machine``."""
    where = directory()
    if where is None:
        return
    import llvmlite

    key = "\0".join([ir_text, machine.triple, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
                     llvmlite.__version__, ".".join(map(str, llvm.llvm_version_info)), str(machine.target_data)])
    path = where / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".o")

    def load(_module) -> bytes | None:
        try:
            return _unsealed(path.read_bytes())  # damaged: None, compiled anew and replaced by store()
        except OSError:
            return None

    def store(_module, obj: bytes) -> None:
        try:
            _write(path, _sealed(obj))
        except OSError:
            pass  # a read-only home, a full disk: the next process compiles again

    engine.set_object_cache(store, load)
