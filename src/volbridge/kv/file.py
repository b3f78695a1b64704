"""Local files: one file per key under a root directory.

Writes go to a temporary file in the target's directory and are renamed over it, so a reader
sees the old object or the new one, never a torn one. ``update`` holds an exclusive ``flock`` on
the key's lock file under ``.volbridge-locks/`` at the root (outside the data's own keys), which
serialises writers in threads of one process and across processes alike: flock locks belong to
open file descriptions, and every update opens its own. Keys are hashed onto a fixed set of lock
files, so a volume of millions of chunks does not grow millions of lock files; a key always maps
to the same lock, and two keys share one rarely (and then only wait for each other).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import secrets
import threading
from pathlib import Path
from typing import Iterator

from ..errors import StoreError, URLError
from .base import KVStore, Updater

LOCK_DIR = ".volbridge-locks"
LOCK_STRIPES = 256
_TMP_MARK = ".vbtmp-"
_O_BINARY = getattr(os, "O_BINARY", 0)
_tmp_counter = itertools.count()
_scratch = threading.local()  # per-thread read buffer for get_transient
_tmp_token = (0, "")


def _tmp_suffix() -> str:
    """Unique per write across threads, processes and hosts, without a syscall per call."""
    global _tmp_token
    pid = os.getpid()
    if _tmp_token[0] != pid:  # new process (or forked child): new random token
        _tmp_token = (pid, f"{pid}.{secrets.token_hex(4)}")
    return f"{_tmp_token[1]}.{threading.get_ident():x}.{next(_tmp_counter)}"


class FileStore(KVStore):
    def __init__(self, root: str | os.PathLike, *, fsync: bool = False):
        self.root = Path(root).expanduser().absolute()
        self._root = str(self.root)
        self.url = "file://" + self._root
        #: fsync each object before the rename: durable across power loss, slower.
        self.fsync = fsync

    def _path(self, key: str) -> str:
        if not key or key[0] == "/" or key[-1] == "/" or "//" in key or ("." in key and _has_dot_part(key)):
            raise URLError(f"invalid key {key!r} for {self.url}: keys are relative '/'-paths")
        return self._root + "/" + key if os.sep == "/" else os.path.join(self._root, *key.split("/"))

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                return f.readall()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e

    def get_transient(self, key: str) -> memoryview | None:
        # Three syscalls per object (open, readv, close): each releases the GIL, and with several
        # threads every release can cost a hand-off, so fstat and the EOF probe are avoided. The
        # buffer has a byte of slack beyond the largest object seen; a read that fills it means a
        # bigger object, which is then read whole with a grown buffer.
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | _O_BINARY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        try:
            buf = getattr(_scratch, "buf", None)
            if buf is None:
                buf = _scratch.buf = bytearray(1 << 20)
            n = os.readv(fd, [buf])
            while n == len(buf):
                grown = bytearray(2 * len(buf))
                grown[:n] = buf
                buf = _scratch.buf = grown
                n += os.readv(fd, [memoryview(buf)[n:]])
            return memoryview(buf)[:n]
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        head, name = os.path.split(path)
        tmp = os.path.join(head, f"{_TMP_MARK}{name}.{_tmp_suffix()}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:
                os.makedirs(head, exist_ok=True)
                fd = os.open(tmp, flags, 0o644)
            try:
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StoreError(f"cannot write {key!r} to {self.url}: {e}") from e

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {key!r} from {self.url}: {e}") from e

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if rel == "":
                dirnames[:] = [d for d in dirnames if d != LOCK_DIR]
            # Prune directories that cannot hold keys with this prefix.
            dirnames[:] = [d for d in dirnames if _could_match(rel + d + "/", prefix)]
            for name in filenames:
                key = rel + name
                if key.startswith(prefix) and not name.startswith(_TMP_MARK):
                    yield key

    def _lock_path(self, key: str) -> str:
        self._path(key)  # validates the key
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") % LOCK_STRIPES
        return os.path.join(self._root, LOCK_DIR, f"{stripe:02x}.lock")

    def update(self, key: str, fn: Updater, *, needs_old: bool = True) -> bytes:
        lock_path = self._lock_path(key)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StoreError(f"cannot lock {key!r} in {self.url}: {e}") from e
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except OSError as e:  # pragma: no cover - EINTR on signals
                    if e.errno != errno.EINTR:
                        raise StoreError(f"cannot lock {key!r} in {self.url}: {e}") from e
            new = fn(self.get(key) if needs_old else None)
            self.put(key, new)
            return new
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _has_dot_part(key: str) -> bool:
    return any(p in (".", "..") for p in key.split("/"))


def _could_match(dir_prefix: str, prefix: str) -> bool:
    return dir_prefix.startswith(prefix) or prefix.startswith(dir_prefix)
