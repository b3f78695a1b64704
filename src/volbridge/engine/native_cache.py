"""The compiled loops' machine code kept on disk, so a process loads it instead of compiling it.

LLVM's code generation is most of the cost of building :mod:`.native`'s loops: ~40-55 ms of
~60 ms here, once per process, paid by the process's first big read (a sharded read waits for
the loops; a small read builds them beside the next reads). MCJIT can hand the object code it
makes to an object cache and take it back from one: loading it takes under 1 ms.

The file is named by a hash of everything the code depends on (the IR text, the target triple,
CPU and features, llvmlite's and LLVM's versions), so a different machine, build or volbridge
version never loads another's code, and carries a SHA-256 of the object: a file cut short or
damaged is compiled anew and replaced, never loaded. Where the directory cannot be written the
loops are compiled as before. ``VOLBRIDGE_NATIVE_CACHE`` names the directory (default
``$XDG_CACHE_HOME/volbridge/native`` or ``~/.cache/volbridge/native``); ``0`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_MAGIC = b"volbridge-native-1\n"


def directory() -> Path | None:
    """Where the objects are kept, or None when the cache is off."""
    env = os.environ.get("VOLBRIDGE_NATIVE_CACHE")
    if env is not None and env.strip().lower() in ("0", "off", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "volbridge" / "native"


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
            data = path.read_bytes()
        except OSError:
            return None
        head = len(_MAGIC) + 32
        if not data.startswith(_MAGIC) or hashlib.sha256(data[head:]).digest() != data[len(_MAGIC):head]:
            return None  # damaged: compiled anew, and replaced by store()
        return data[head:]

    def store(_module, obj: bytes) -> None:
        try:
            where.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=where, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + hashlib.sha256(obj).digest() + obj)
                os.replace(tmp, path)  # whole or not at all, for processes loading it meanwhile
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass  # a read-only home, a full disk: the next process compiles again

    engine.set_object_cache(store, load)
