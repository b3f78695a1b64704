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
import hashlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterator

from ..errors import StoreError, URLError
from .base import KVStore, Updater

LOCK_DIR = ".volbridge-locks"
LOCK_STRIPES = 256
_TMP_MARK = ".vbtmp-"


class FileStore(KVStore):
    def __init__(self, root: str | os.PathLike, *, fsync: bool = False):
        self.root = Path(root).expanduser().absolute()
        self.url = "file://" + str(self.root)
        #: fsync each object before the rename: durable across power loss, slower.
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise URLError(f"invalid key {key!r} for {self.url}: keys are relative '/'-paths")
        return self.root.joinpath(*parts)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, value: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f"{_TMP_MARK}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            with f:
                f.write(value)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise StoreError(f"cannot write {key!r} to {self.url}: {e}") from e

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
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

    def _lock_path(self, key: str) -> Path:
        self._path(key)  # validates the key
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") % LOCK_STRIPES
        return self.root / LOCK_DIR / f"{stripe:02x}.lock"

    def update(self, key: str, fn: Updater, *, needs_old: bool = True) -> bytes:
        lock_path = self._lock_path(key)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
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


def _could_match(dir_prefix: str, prefix: str) -> bool:
    return dir_prefix.startswith(prefix) or prefix.startswith(dir_prefix)
