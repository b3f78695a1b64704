"""Local files: one file per key under a root directory.

Writes go to a temporary file in the target's directory and are renamed over it, so a reader
sees the old object or the new one, never a torn one. ``update`` holds an exclusive ``flock`` on
the key's lock file under ``.volbridge-locks/`` at the root (outside the data's own keys), which
serialises writers in threads of one process and across processes alike: flock locks belong to
open file descriptions, and every update opens its own. Keys are hashed onto a fixed set of lock
files, so a volume of millions of chunks does not grow millions of lock files; a key always maps
to the same lock, and two keys share one rarely (and then only wait for each other).

A lock belongs to the file, not to the handle's spelling of it: one array is reached from its
own directory (``zarr3://img.zarr/0``) and from a group above it (``ome-zarr://img.zarr``), and
two such handles took different locks for one shard and lost each other's updates (a review
found 40 of 150 rounds torn). So the lock directory sits at the top of the hierarchy the root
belongs to (the outermost directory up from it holding a group document, :data:`GROUP_DOCUMENTS`)
and keys are hashed by their path from there, symlinks resolved.

Transport compression follows CloudFiles' local convention: the object for ``key`` compressed
with gzip is the file ``key.gz`` (``.br``, ``.zstd``, ``.xz``, ``.bz2`` likewise). Reads try the
plain name first, then the suffixed ones, and decompress. A write removes the key's other
variants, so no older copy can shadow it or linger beside it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import mmap
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Iterator

from .. import compression
from ..errors import ChunkDecodeError, StoreError, URLError
from .base import KVStore, ObjectStat, StoreStats, Updater
from .ranges import RangeReader, part_bounds
from .scratch import scratch

LOCK_DIR = ".volbridge-locks"
#: Documents that make a directory a group of a hierarchy whose members may be opened as roots of
#: their own (zarr v3 and v2 groups, N5 containers and groups): the lock directory goes above them.
GROUP_DOCUMENTS = ("zarr.json", ".zgroup", "attributes.json")
#: Documents at the root of an array (where a symlinked path's lock starts looking up).
ARRAY_DOCUMENTS = ("zarr.json", ".zarray", ".zgroup", "attributes.json", "info")
LOCK_STRIPES = 256
_TMP_MARK = ".vbtmp-"
_O_BINARY = getattr(os, "O_BINARY", 0)
#: Flags every read opens with: O_NONBLOCK so that a FIFO at a key's path opens at once (and is
#: then refused as not a regular file) instead of blocking the open; regular files ignore it.
_O_READ = os.O_RDONLY | _O_BINARY | getattr(os, "O_NONBLOCK", 0)
#: :meth:`FileStore.get_many_transient` keeps a buffer of up to this size per thread.
KEEP_OBJECTS_BYTES = 32 << 20
#: (suffix, content encoding) in lookup order after the plain name.
_VARIANTS = tuple((suffix, name) for name, suffix in compression.SUFFIXES.items()) + ((".zst", "zstd"),)
_ALL_SUFFIXES = ("",) + tuple(s for s, _ in _VARIANTS)
_COMPRESSED_SUFFIXES = tuple(s for s, _ in _VARIANTS)
_tmp_counter = itertools.count()
_tmp_token = (0, "")


def _tmp_suffix() -> str:
    """Unique per write across threads, processes and hosts, without a syscall per call."""
    global _tmp_token
    pid = os.getpid()
    if _tmp_token[0] != pid:  # new process (or forked child): new random token
        _tmp_token = (pid, f"{pid}.{secrets.token_hex(4)}")
    return f"{_tmp_token[1]}.{threading.get_ident():x}.{next(_tmp_counter)}"


def _check_regular(st: os.stat_result, key: str, url: str) -> None:
    """Raise StoreError unless ``st`` is a regular file (or a directory, which readers take as
    an absent key): a device such as /dev/zero at a key's path would be read without end."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise StoreError(f"cannot read {key!r} from {url}: not a regular file")


class FileStore(KVStore):
    def __init__(self, root: str | os.PathLike, *, fsync: bool = False):
        self.root = Path(root).expanduser().absolute()
        self._root = str(self.root)
        self.url = "file://" + self._root
        # symlinks and '..' resolved: every path to the directory names the same objects
        self._identity = "file://" + os.path.realpath(self._root)
        self._real_dirs: dict[str, str] = {}  # a key's directory -> its resolved path (locks)
        self.stats = StoreStats()
        #: fsync each object before the rename: durable across power loss, slower.
        self.fsync = fsync

    @property
    def identity(self) -> str:
        return self._identity

    def _path(self, key: str) -> str:
        if not key or key[0] == "/" or key[-1] == "/" or "//" in key or ("." in key and _has_dot_part(key)) or "\0" in key:
            raise URLError(f"invalid key {key!r} for {self.url}: keys are relative '/'-paths")
        if ".v" in key and _reserved(key):  # (written, they were then hidden from list())
            raise URLError(f"invalid key {key!r} for {self.url}: names starting {_TMP_MARK!r} and {LOCK_DIR!r} "
                           "are the store's own (temporary files, locks)")
        return self._root + "/" + key if os.sep == "/" else os.path.join(self._root, *key.split("/"))

    # -- reading ------------------------------------------------------------------------------
    def _read_file(self, path: str, key: str) -> bytes | None:
        try:
            with open(path, "rb", buffering=0, opener=lambda p, _flags: os.open(p, _O_READ)) as f:
                _check_regular(os.fstat(f.fileno()), key, self.url)
                data = f.readall()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None  # a directory is no object: the key is absent, as exists() says
        except StoreError:
            raise
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # no such file can exist (a long name's '.gz' copy)
                return None
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        self.stats.add(requests=1, bytes_read=len(data))
        return data

    def _read_variant(self, path: str, key: str) -> bytes | None:
        """The decompressed value of the first compressed variant of ``key`` that exists (the
        plain name missed). A write that switches ``key.gz`` to ``key`` creates the new file before
        it removes the old one, so a reader that missed the plain name just before it appeared,
        and then the variant just after it went, finds the plain name on a second look (one more
        failed open for an absent key; a switch between two compressed variants is not covered)."""
        for suffix, encoding in _VARIANTS:
            data = self._read_file(path + suffix, key + suffix)
            if data is not None:
                try:
                    return compression.decompress(encoding, data)
                except ChunkDecodeError as e:
                    raise ChunkDecodeError(f"{key + suffix!r} in {self.url}: {e}") from e
        return self._read_file(path, key)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        data = self._read_file(path, key)
        return data if data is not None else self._read_variant(path, key)

    def range_reader(self, key: str) -> RangeReader:
        path = self._path(key)
        try:
            fd = os.open(path, _O_READ)
        except (FileNotFoundError, NotADirectoryError):
            return super().range_reader(key)  # absent, or a compressed variant read whole
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # a prefix of other keys, not an object: as get()
            os.close(fd)
            return super().range_reader(key)
        return _FileRangeReader(fd, self, key)

    def get_transient(self, key: str) -> bytes | memoryview | None:
        # Three syscalls per object (open, readv, close): each releases the GIL, and with several
        # threads every release can cost a hand-off, so fstat and the EOF probe are avoided. The
        # buffer has a byte of slack beyond the largest object seen; a read that fills it means a
        # bigger object, which is then read whole with a grown buffer.
        path = self._path(key)
        try:
            fd = os.open(path, _O_READ)
        except (FileNotFoundError, NotADirectoryError):
            return self._read_variant(path, key)
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        try:
            buf = scratch("file", 1 << 20)
            n = os.readv(fd, [buf])
            if n == len(buf):  # (not before: fstat is a syscall, and objects are rarely this big)
                _check_regular(os.fstat(fd), key, self.url)
            while n == len(buf):  # bigger than any object before: grow, keep what was read
                buf = scratch("file", 2 * len(buf))
                n += os.readv(fd, [buf[n:]])
        except IsADirectoryError:  # open() succeeds on a directory; absent, as in get()
            return self._read_variant(path, key)
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
        finally:
            os.close(fd)
        self.stats.add(requests=1, bytes_read=n)
        return buf[:n]

    def get_many_transient(self, keys: list[str]) -> list[bytes | memoryview | None]:
        # Into one page-aligned buffer this thread keeps: whole shards read into fresh bytes
        # objects page-faulted their memory anew on most reads (glibc hands big freed blocks back
        # to the kernel), 4600 faults, ~10 ms of CPU, per 300^3 sharded cutout (measured).
        found: list = [None] * len(keys)
        opened: list[tuple[int, int, int]] = []  # (position, fd, size)
        try:
            for i, key in enumerate(keys):
                path = self._path(key)
                try:
                    fd = os.open(path, _O_READ)
                except (FileNotFoundError, NotADirectoryError):
                    found[i] = self._read_variant(path, key)
                    continue
                except OSError as e:
                    raise StoreError(f"cannot read {key!r} from {self.url}: {e}") from e
                opened.append((i, fd, -1))
                st = os.fstat(fd)
                _check_regular(st, key, self.url)
                if stat.S_ISDIR(st.st_mode):  # a prefix of other keys, not an object: as get()
                    os.close(opened.pop()[1])
                    found[i] = self._read_variant(path, key)
                    continue
                opened[-1] = (i, fd, st.st_size)
            starts = [0]
            for _, _, size in opened:  # each object starts on a page: the kernel copies faster
                starts.append(starts[-1] + (size + 4095) // 4096 * 4096)
            # kept per thread up to a group's usual size; a bigger read gets memory of its own
            buf = scratch("objects", starts[-1]) if starts[-1] <= KEEP_OBJECTS_BYTES else memoryview(mmap.mmap(-1, starts[-1]))
            total = 0
            for (i, fd, size), at in zip(opened, starts):
                n = 0
                try:
                    while n < size:  # a file cut short under us ends the read early
                        got = os.readv(fd, [buf[at + n:at + size]])
                        if not got:
                            break
                        n += got
                except OSError as e:
                    raise StoreError(f"cannot read {keys[i]!r} from {self.url}: {e}") from e
                found[i] = buf[at:at + n]
                total += n
            self.stats.add(requests=len(opened), bytes_read=total)
            return found
        finally:
            for _, fd, _ in opened:
                os.close(fd)

    def local_paths(self, keys: list[str], encoding: str | None = None) -> list[bytes] | None:
        if os.name != "posix":  # the native reader calls the C library's open(2)
            return None
        suffix = compression.SUFFIXES[compression.canonical(encoding)] if encoding else ""
        paths = [os.fsencode(self._path(k) + suffix) for k in keys]
        # a NUL in a name would end the C string early: another file's name
        return None if any(b"\0" in p for p in paths) else paths

    def exists(self, key: str) -> bool:
        path = self._path(key)
        # the plain name last again, as _read_variant looks
        return any(os.path.isfile(path + s) for s in (*_ALL_SUFFIXES, ""))

    def stat(self, key: str) -> ObjectStat | None:
        """A plain file's size, with its modification time and size as the ETag; a compressed
        variant (``key.gz``) is read whole, as ranged reads of it are, and has no ETag."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as e:
            raise StoreError(f"cannot stat {key!r} in {self.url}: {e}") from e
        if st is not None and not stat.S_ISDIR(st.st_mode):
            # every write renames a new file into place: the inode names the version, where a
            # coarse mtime and an equal size would not
            return ObjectStat(st.st_size, etag=f'"{st.st_ino:x}-{st.st_ctime_ns:x}-{st.st_mtime_ns:x}-{st.st_size:x}"')
        value = self._read_variant(path, key)
        return None if value is None else ObjectStat(len(value))

    # -- writing ------------------------------------------------------------------------------
    def _writable_key(self, key: str) -> str:
        """The path of a key a write may name: not one ending in a compression suffix, which on
        disk names another key's compressed copy (CloudVolume's ``<key>.gz``): a write of ``k``
        would remove it, and reads of ``k`` would find it."""
        path = self._path(key)
        if key.endswith(_COMPRESSED_SUFFIXES):
            raise URLError(f"invalid key {key!r} for {self.url}: on disk a name ending in "
                           f"{key[key.rfind('.'):]} is the compressed copy of {key[:key.rfind('.')]!r}")
        return path

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        path = self._writable_key(key)
        suffix = ""
        if content_encoding:
            encoding = compression.canonical(content_encoding)
            suffix = compression.SUFFIXES[encoding]
            value = compression.compress(encoding, value)
        self._write_file(path + suffix, key + suffix, value)
        # Each key lives under one name: another variant would shadow this one (the plain name) or
        # linger stale beside it. Five unlinks of absent files cost ~8 us against ~150 us a chunk.
        self._unlink_all([path + s for s in _ALL_SUFFIXES if s != suffix])

    def _write_file(self, path: str, key: str, value: bytes) -> None:
        head, name = os.path.split(path)
        # the name cut short: with the mark and suffix, a long one passed the 255-byte limit
        short = name if len(name) <= 24 else name.encode()[:96].decode(errors="ignore")
        tmp = os.path.join(head, f"{_TMP_MARK}{short}.{_tmp_suffix()}")
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
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                # a key where only an empty directory is left of keys deleted under it (zarr
                # overwriting a 2-D array's c/1/0 with a 1-D one's c/1: a review found it failing);
                # rmdir refuses a directory that still holds anything
                os.rmdir(path)
                os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StoreError(f"cannot write {key!r} to {self.url}: {e}") from e
        self.stats.add(requests=1, bytes_written=len(value))

    def _unlink_all(self, paths: list[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:  # (no such file can exist)
                    raise StoreError(f"cannot delete {p!r} in {self.url}: {e}") from e

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._unlink_all([path + s for s in _ALL_SUFFIXES])

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
            seen = set()
            for name in filenames:
                if name.startswith(_TMP_MARK):
                    continue
                for suffix, _ in _VARIANTS:  # a compressed variant lists under its logical key
                    if name.endswith(suffix):
                        name = name[: -len(suffix)]
                        break
                key = rel + name
                if key.startswith(prefix) and key not in seen:
                    seen.add(key)
                    yield key

    def _lock_path(self, key: str, *, at_root: bool = False) -> str:
        """The lock file of ``key``: at the top of the hierarchy the file lies in (see the module
        doc), or (``at_root``) at this store's root, where a top not writable sends it."""
        self._writable_key(key)  # validates the key
        root = self._identity[len("file://"):]
        head, _, name = key.rpartition("/")
        where = self._real_dirs.get(head) if head else root
        if where is None:  # (realpath costs a syscall per path part: ~100 us deep down; kept per directory)
            if len(self._real_dirs) > 4096:
                self._real_dirs.clear()
            where = self._real_dirs[head] = os.path.realpath(os.path.join(root, head))
        if at_root:
            top = root
        elif where == root or where.startswith(root + os.sep):
            top = root
        else:  # a symlink inside the key's path leads out of the root: start where it leads
            top = where
            while not any(os.path.isfile(os.path.join(top, d)) for d in ARRAY_DOCUMENTS):
                up = os.path.dirname(top)
                if up == top:
                    top = where
                    break
                top = up
        # looked up on every update (a few cached stats): a group made above the root after the
        # handle was opened moves the lock as it does for every other handle
        while not at_root:
            parent = os.path.dirname(top)
            if parent == top or not any(os.path.isfile(os.path.join(parent, d)) for d in GROUP_DOCUMENTS):
                break
            top = parent
        rel = os.path.relpath(os.path.join(where, name), top).replace(os.sep, "/")
        stripe = int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=4).digest(), "little") % LOCK_STRIPES
        return os.path.join(top, LOCK_DIR, f"{stripe:02x}.lock")

    def _open_lock(self, key: str, at_root: bool) -> int:
        lock_path = self._lock_path(key, at_root=at_root)
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        try:
            try:
                fd = self._open_lock(key, at_root=False)
            except OSError as e:
                if not (isinstance(e, PermissionError) or e.errno == errno.EROFS):
                    raise
                try:  # a lock file another user made there: flock needs no write access to it
                    fd = os.open(self._lock_path(key), os.O_RDONLY)
                except OSError:
                    # none, and a top this user cannot write (a shared image, one's own labels
                    # array in it): the root's own lock, which writers through the top do not see
                    fd = self._open_lock(key, at_root=True)
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
            self.put(key, new, content_encoding=content_encoding)
            return new
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _reserved(key: str) -> bool:
    return any(part.startswith(_TMP_MARK) or part == LOCK_DIR for part in key.split("/"))


def _has_dot_part(key: str) -> bool:
    return any(p in (".", "..") for p in key.split("/"))


def _could_match(dir_prefix: str, prefix: str) -> bool:
    return dir_prefix.startswith(prefix) or prefix.startswith(dir_prefix)


class _FileRangeReader(RangeReader):
    """Ranges by ``pread`` on one open descriptor: writers rename new files over the name, so
    the open file is one version for as long as it is held."""

    def __init__(self, fd: int, store: FileStore, key: str):
        super().__init__(None, f"{store.url}/{key}")
        self.fd, self.store, self.key = fd, store, key
        self.size = os.fstat(fd).st_size

    def read(self, start: int, end: int | None = None) -> bytes:
        a, b = part_bounds(start, end, self.size, self.where)
        try:
            data = os.pread(self.fd, b - a, a)
        except OSError as e:
            raise StoreError(f"cannot read {self.key!r} from {self.store.url}: {e}") from e
        if len(data) != b - a:
            raise StoreError(f"{self.where}: read {len(data)} of bytes {a}-{b}")
        self.store.stats.add(requests=1, bytes_read=len(data))
        return data

    def known_size(self) -> int:
        return self.size

    def read_runs(self, runs: list[tuple[int, int]], out: memoryview, at: list[int]) -> None:
        total = 0
        for (a, b), p in zip(runs, at):
            a, b = part_bounds(a, b, self.size, self.where)
            view, n = out[p:p + b - a], 0
            try:
                while n < b - a:  # straight into the caller's buffer: no bytes object per run
                    got = os.preadv(self.fd, [view[n:]], a + n)
                    if not got:
                        raise StoreError(f"{self.where}: read {n} of bytes {a}-{b}")
                    n += got
            except StoreError:
                raise
            except OSError as e:
                raise StoreError(f"cannot read {self.key!r} from {self.store.url}: {e}") from e
            total += n
        self.store.stats.add(requests=len(runs), bytes_read=total)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

