"""An on-disk LRU cache in front of any store, bounded in bytes, shared by processes.

``DiskCache(backing, directory, max_bytes)`` keeps one file per cached value under
``directory/entries/`` and an index in ``directory/index.sqlite3``. Reopening the directory finds
the entries and their byte count again, and any number of processes (and threads) may share it.

Layout::

    directory/index.sqlite3      entries(name, size, atime), the byte total, the protocol's state
    directory/entries/ab/cdef..  one file per value: a 64-byte header, then the value
    directory/tmp/               entry files being written
    directory/init.lock          flock: opening and closing one at a time
    directory/open.lock          flock: shared while open, so a lone opener knows it is alone

**Entry names.** A value's file name is a BLAKE2b hash of the backing store's identity (its
URL, plus what the URL leaves out: an S3 endpoint, the real path of a directory) joined with the
key, so any key of any store is a safe file name, one directory serves several stores without
collisions, and a key seen through a sub-store (``child``) names the same entry as through its
root. Entry files spread over 256 subdirectories (the name's first two hex digits).
:meth:`DiskCache.invalidate` (a volume changed behind the cache) empties the directory.

**Entries are never torn.** A value is written to ``tmp/`` and renamed into place; a reader sees
a whole file or none. Each file's header holds a magic, the value's length and its CRC-32
(libdeflate's, about 20 GB/s here, so verifying costs little beside the read); a file that
fails the check (a truncated or corrupt disk, a stray edit) is deleted, counted in
``stats.corrupt`` and refetched from the backing store, never returned.

**Why SQLite for the index (WAL mode, busy timeout).** The alternative, one file per entry with
its access time plus a flock for eviction, has to scan and stat the whole directory to find the
least recently used entries and to know the byte total, on every open and every eviction, and it
cannot make "check that no write overlapped this fill, make room, rename the file in, count it"
one step that other processes see whole. SQLite gives that step as one transaction (``BEGIN
IMMEDIATE``, serialised across processes, crash-safe), keeps an exact shared byte total, and finds
the oldest entries through an index on ``atime`` in O(log n). WAL mode lets index reads proceed
during a write, and the busy timeout makes writers queue instead of failing. The hot path stays
off the index altogether: a hit opens the entry file by name and verifies it; its access time is
recorded in memory and written in batches (before any eviction this process makes, and otherwise
every few seconds), so eviction is exact LRU within a process and LRU to within those few
seconds across processes.

**The byte bound.** A fill evicts least recently used entries until the index total plus the new
value fits in ``max_bytes``, then renames the new file in, all in one transaction: the indexed
total never exceeds ``max_bytes``, and the disk holds at most the files being written in
``tmp/`` beyond it. Opening with a smaller ``max_bytes`` than before evicts down to it at once.
The bound counts value bytes, and a cached absence (``cache_absent``, the relay's setting) counts
:data:`ABSENT_FILE_CHARGE`, the block its header-only file takes; each value file's 64-byte
header and block rounding come on top, which matters only for values far smaller than a chunk.

**Writes and fills from many processes** follow the protocol of :mod:`.cache_tier`, with the
buckets' generations and in-flight writes kept in the index, so a write through one process's
cache is seen by every process's cache. A write in flight is a row with its start time; a
process that dies mid-write leaves the row, which only stops fills in that bucket until it
expires (``PENDING_EXPIRY``).

**Crashes.** SQLite rolls back an interrupted transaction, but not file operations: a crash
between the rename and the commit leaves a file the index does not count. The index counts its
openers; each clean close counts itself out, and the last one out marks the directory clean only
when the count is back to zero. A process that opens the directory alone (no other holds
open.lock) and finds it not clean reconciles files with the index (an O(entries) scan), clears
``tmp/`` and the in-flight writes of dead processes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import sqlite3
import struct
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

try:  # libdeflate's CRC-32: the same values as zlib's, about 6x faster (PCLMUL)
    from deflate import crc32
except ImportError:  # pragma: no cover - an old deflate
    from zlib import crc32

from ..errors import StoreError
from .scratch import scratch
from .base import KVStore
from .cache_tier import ABSENT, BUCKETS, CacheStats, CacheTier, _Absent

__all__ = ["DiskCache"]

log = logging.getLogger(__name__)

SCHEMA = 1
#: magic, flags, value length, CRC-32 of the value; padded to 64 bytes so that the value starts
#: cache-line aligned in the (page-aligned) read buffer.
HEADER = struct.Struct("<4sB3xQI44x")
MAGIC = b"VBC1"
FLAG_ABSENT = 1
#: Seconds after which a write registered in flight is taken for a dead process's.
PENDING_EXPIRY = 600.0
#: What a cached absence counts against ``max_bytes``: its header-only file takes a whole block.
ABSENT_FILE_CHARGE = 4096
#: Recorded hits are written to the index after this many, or this many seconds.
TOUCH_BATCH = 256
TOUCH_SECONDS = 2.0

_O_BINARY = getattr(os, "O_BINARY", 0)
_tmp_counter = itertools.count()
_tmp_token = (0, "")

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS entries(name TEXT PRIMARY KEY, size INTEGER NOT NULL, atime INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_atime ON entries(atime);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gens(bucket INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending(token TEXT NOT NULL, bucket INTEGER NOT NULL, started REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pending_by_bucket ON pending(bucket);
CREATE TABLE IF NOT EXISTS doc_stamps(name TEXT PRIMARY KEY, digest TEXT NOT NULL) WITHOUT ROWID;
"""


def _tmp_suffix() -> str:
    global _tmp_token
    pid = os.getpid()
    if _tmp_token[0] != pid:
        _tmp_token = (pid, f"{pid}.{secrets.token_hex(4)}")
    return f"{_tmp_token[1]}.{threading.get_ident():x}.{next(_tmp_counter)}"


def _flock(fd: int, op: int) -> None:
    while True:
        try:
            fcntl.flock(fd, op)
            return
        except InterruptedError:  # pragma: no cover - a signal
            continue


class _Tally:
    """The index's byte and entry totals, read at the start of a transaction, written at its end."""

    __slots__ = ("bytes", "count")

    def __init__(self, db: sqlite3.Connection):
        rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('bytes', 'count')").fetchall())
        self.bytes = rows.get("bytes", 0)
        self.count = rows.get("count", 0)

    def save(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("bytes", self.bytes), ("count", self.count)],
        )


class _Handles:
    """What an open DiskCache holds: the index connection and the lock files. Closed by
    :meth:`DiskCache.close`, or at interpreter exit for a cache never closed."""

    def __init__(self, directory: str):
        self.directory = directory
        self.db: sqlite3.Connection | None = None
        self.db_pid = 0
        # A forked child's copies of its parent's connections: never closed (or collected) in
        # the child, since that would disturb the parent's use of the database.
        self.inherited: list[sqlite3.Connection] = []
        self.init_fd = -1
        self.open_fd = -1
        #: Access times not yet in the index (entry name -> time): here, not on the cache, so a
        #: handle never closed still writes them when collected or at exit (a process that hit
        #: an entry and exited lost the hits, and a restart evicted that entry first).
        self.touches: dict[str, int] = {}
        self.touch_lock = threading.Lock()

    def take_touches(self) -> dict[str, int]:
        with self.touch_lock:
            touches = dict(self.touches)
            self.touches.clear()
        return touches

    def close(self, graceful: bool = True, wait: bool = True) -> None:
        """Unregister this opener and release everything. ``graceful=False`` leaves the
        directory as a crash would (for tests). ``wait=False`` (from the garbage collector, which
        may run while this very process holds init.lock to open the directory again) never
        blocks: if init.lock is busy it only releases, and the next lone opener reconciles."""
        if self.open_fd < 0:
            return
        try:
            try:
                fcntl.flock(self.init_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                locked = True
            except (BlockingIOError, InterruptedError):
                locked = False
            if locked and graceful and self.db is not None and self.db_pid == os.getpid():
                try:
                    fcntl.flock(self.open_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True  # no other opener holds open.lock
                except BlockingIOError:
                    last = False
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                    touches = self.take_touches()
                    if touches:
                        self.db.executemany("UPDATE entries SET atime = ? WHERE name = ?", [(t, n) for n, t in touches.items()])
                    self.db.execute("UPDATE meta SET value = value - 1 WHERE key = 'opens'")
                    if last:
                        # Clean only if every opener since the last reconcile closed like this
                        # one: a process that died leaves the count above zero.
                        opens = self.db.execute("SELECT value FROM meta WHERE key = 'opens'").fetchone()
                        clean = int(opens is not None and opens[0] == 0)
                        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', ?)", (clean,))
                    self.db.execute("COMMIT")
                    if last:
                        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:  # pragma: no cover - best effort: the next lone opener reconciles
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
        finally:
            if self.db is not None and self.db_pid == os.getpid():
                self.db.close()
            self.db = None
            os.close(self.open_fd)
            os.close(self.init_fd)  # releases init.lock
            self.open_fd = self.init_fd = -1


class DiskCache(CacheTier):
    """LRU cache of ``backing`` in ``directory``, at most ``max_bytes`` of values, shared by
    processes and surviving restarts (see the module docstring for how)."""

    _fill_from_transient = True

    def __init__(
        self,
        backing: KVStore,
        directory: str | os.PathLike,
        max_bytes: int,
        *,
        cache_absent: bool = False,
        cache_writes: bool = True,
        busy_timeout: float = 60.0,
    ):
        super().__init__(backing, max_bytes, cache_absent=cache_absent, cache_writes=cache_writes)
        self.directory = Path(directory).expanduser().absolute()
        self._dir = str(self.directory)
        self._entries_dir = os.path.join(self._dir, "entries")
        self._tmp_dir = os.path.join(self._dir, "tmp")
        self._index_path = os.path.join(self._dir, "index.sqlite3")
        #: Seconds a transaction waits for another process's before failing.
        self.busy_timeout = float(busy_timeout)
        # entries are named by what they hold, not by the handle that fetched them
        self._prefix = backing.identity.rstrip("/") + "/"
        self._db_lock = threading.Lock()  # one index connection per process, one user at a time
        self._touched_at = time.monotonic()
        self._clock_last = 0
        self._handles = _Handles(self._dir)
        self._touch_lock = self._handles.touch_lock
        self._touches = self._handles.touches  # entry name -> access time, not yet in the index
        self._finalizer = weakref.finalize(self, self._handles.close, True, False)
        self._open()

    def _charge(self, value) -> int:
        # a cached absence is a header-only file, which still takes a file-system block
        return ABSENT_FILE_CHARGE if value is ABSENT else len(value)

    def invalidate(self) -> None:
        """Drop every entry in the directory: entries are named by hashes, so the index cannot
        tell one store's from another's, and a store's entries must go for every handle and
        process at once (a volume changed behind the cache is rare; refilling is cheap). Every
        bucket's generation moves on too, so no fill that began before lands after (in the same
        transaction: a fill landing between the two would have been kept). The documents'
        digests stay: a handle opened before may fill entries again, and only the digests show
        them stale after a later change."""
        try:
            with self._tx() as db:
                db.executemany("INSERT INTO gens(bucket, gen) VALUES (?, 1) ON CONFLICT(bucket) DO UPDATE SET gen = gen + 1",
                               [(b,) for b in range(BUCKETS)])
                self._clear(db)
        except (sqlite3.Error, OSError) as e:  # reading on would serve the stale entries
            raise StoreError(f"cannot drop the entries of cache {self._dir} (metadata of {self.url} changed): {e}") from e

    def _stamp_get(self, keys: list[str]) -> dict[str, str]:
        names = {self._name(key): key for key in keys}
        try:
            with self._db_lock:
                rows = self._db().execute(
                    f"SELECT name, digest FROM doc_stamps WHERE name IN ({','.join('?' * len(names))})", tuple(names)
                ).fetchall() if names else []
        except sqlite3.Error as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot read the index: %s", self._dir, e)
            return {}
        return {names[name]: digest for name, digest in rows}

    def _stamp_put(self, digests: dict[str, str]) -> None:
        try:
            with self._tx() as db:
                db.executemany("INSERT OR REPLACE INTO doc_stamps(name, digest) VALUES (?, ?)",
                               [(self._name(key), digest) for key, digest in digests.items()])
        except sqlite3.Error as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot write the index: %s", self._dir, e)

    # -- opening and closing ----------------------------------------------------------------------
    def _open(self) -> None:
        self._check_ours()
        try:
            os.makedirs(self._tmp_dir, exist_ok=True)
            os.makedirs(self._entries_dir, exist_ok=True)  # its 256 subdirectories come as needed
            h = self._handles
            h.init_fd = os.open(os.path.join(self._dir, "init.lock"), os.O_RDWR | os.O_CREAT, 0o666)
            h.open_fd = os.open(os.path.join(self._dir, "open.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StoreError(f"cannot open cache directory {self._dir}: {e}") from e
        _flock(h.init_fd, fcntl.LOCK_EX)
        try:
            try:
                fcntl.flock(h.open_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            with self._db_lock:
                db = self._db()
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                with self._tx_locked(db):
                    for stmt in _SCHEMA_SQL.strip().split(";\n"):
                        db.execute(stmt)
                    _adopt_old_stamps(db)
                    schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                    if schema is None:  # a new index: files left by a lost one are reconciled into it
                        db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?), ('clean', 0)", (SCHEMA,))
                    elif schema[0] != SCHEMA:
                        raise StoreError(
                            f"cache directory {self._dir} has index schema {schema[0]}, this volbridge "
                            f"expects {SCHEMA}: delete the directory or use another"
                        )
                    if alone:
                        clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
                        if not (clean and clean[0]):
                            self._reconcile_locked(db)
                        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', 0), ('opens', 1)")
                    else:
                        db.execute(
                            "INSERT INTO meta(key, value) VALUES ('opens', 1) "
                            "ON CONFLICT(key) DO UPDATE SET value = value + 1"
                        )
                    tally = _Tally(db)
                    if tally.bytes > self.max_bytes:  # opened with a smaller bound than before
                        self._make_room_locked(db, tally, 0)
                        tally.save(db)
            _flock(h.open_fd, fcntl.LOCK_SH)  # (from exclusive, when alone: a conversion)
        except sqlite3.Error as e:
            self._finalizer.detach()
            self._handles.close(graceful=False)
            raise StoreError(f"cannot open the cache index {self._index_path}: {e}") from e
        except BaseException:
            self._finalizer.detach()
            self._handles.close(graceful=False)
            raise
        finally:
            if h.init_fd >= 0:
                _flock(h.init_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Write pending access times, close the index, and mark the directory clean when this
        is the last process that has it open."""
        if not self._finalizer.alive:
            return
        try:
            with self._db_lock:
                if self._handles.db is not None:
                    with self._tx_locked(self._db()) as db:
                        self._flush_touches_locked(db)
        except (sqlite3.Error, OSError) as e:  # pragma: no cover - best effort
            log.warning("cache %s: could not record access times on close: %s", self._dir, e)
        with self._db_lock:
            self._finalizer.detach()
            self._handles.close()

    def _db(self) -> sqlite3.Connection:
        """The process's index connection (callers hold ``_db_lock``); a forked child opens its own."""
        h = self._handles
        if h.db is None or h.db_pid != os.getpid():
            if h.open_fd < 0:
                raise StoreError(f"cache {self._dir} is closed")
            if h.db is not None:
                h.inherited.append(h.db)
            h.db = sqlite3.connect(
                self._index_path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            h.db.execute("PRAGMA synchronous=NORMAL")  # WAL: consistent after a crash; no fsync per commit
            h.db_pid = os.getpid()
        return h.db

    @contextmanager
    def _tx_locked(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            with self._tx_locked(self._db()) as db:
                self._flush_touches_locked(db)
                yield db

    # -- names and files --------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        return _entry_name(self._prefix, key)

    def _path(self, name: str) -> str:
        return f"{self._entries_dir}/{name[:2]}/{name[2:]}"

    @staticmethod
    def _bucket(name: str) -> int:
        return int(name[:8], 16) % BUCKETS

    def entry_path(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``'s cached value."""
        return Path(self._path(self._name(key)))

    def _write_tmp(self, name: str, value: bytes | memoryview | _Absent) -> str:
        payload = b"" if value is ABSENT else value
        header = HEADER.pack(MAGIC, FLAG_ABSENT if value is ABSENT else 0, len(payload), crc32(payload))
        tmp = f"{self._tmp_dir}/{name}.{_tmp_suffix()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o644)
        try:
            for part in (header, payload):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _read_entry(self, name: str, transient: bool) -> bytes | memoryview | _Absent | None:
        """The verified value in the entry file; None when there is none. Raises ValueError for
        a file that fails verification."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY | _O_BINARY)
        except FileNotFoundError:
            return None
        try:
            if transient:
                buf = scratch("disk-cache", 1 << 20)
                n = os.readv(fd, [buf])
                while n == len(buf):  # a bigger entry than any before: grow and read on
                    buf = scratch("disk-cache", 2 * len(buf))
                    n += os.readv(fd, [buf[n:]])
                if n < HEADER.size:
                    raise ValueError(f"{n} bytes, shorter than the header")
                magic, flags, length, crc = HEADER.unpack_from(buf)
                if n != HEADER.size + length:
                    raise ValueError(f"{n - HEADER.size} bytes of value where the header says {length}")
                payload: bytes | memoryview = buf[HEADER.size : n]
            else:
                header = os.read(fd, HEADER.size)
                if len(header) < HEADER.size:
                    raise ValueError(f"{len(header)} bytes, shorter than the header")
                magic, flags, length, crc = HEADER.unpack(header)
                size = os.fstat(fd).st_size - HEADER.size
                if size != length:  # checked before allocating what a corrupt header claims
                    raise ValueError(f"{size} bytes of value where the header says {length}")
                payload = os.read(fd, length)
                while len(payload) < length:  # a short read before the end (rare)
                    more = os.read(fd, length - len(payload))
                    if not more:
                        raise ValueError(f"{len(payload)} bytes of value where the header says {length}")
                    payload += more
        finally:
            os.close(fd)
        if magic != MAGIC:
            raise ValueError("bad magic")
        if crc32(payload) != crc:
            raise ValueError("checksum mismatch")
        if flags & FLAG_ABSENT:
            return ABSENT
        return payload

    # -- access times -----------------------------------------------------------------------------
    def _clock_locked(self) -> int:
        """Wall-clock nanoseconds, strictly increasing within the process (callers hold
        ``_touch_lock``): the LRU order of one process's accesses is exact."""
        t = time.time_ns()
        if t <= self._clock_last:
            t = self._clock_last + 1
        self._clock_last = t
        return t

    def _clock(self) -> int:
        with self._touch_lock:
            return self._clock_locked()

    def _touch(self, name: str) -> None:
        with self._touch_lock:
            self._touches[name] = self._clock_locked()
            due = len(self._touches) >= TOUCH_BATCH or time.monotonic() - self._touched_at > TOUCH_SECONDS
        if due:
            try:
                with self._tx():
                    pass  # _tx writes the recorded access times
            except (sqlite3.Error, OSError) as e:
                self._stats.add(errors=1)
                log.warning("cache %s: could not record access times: %s", self._dir, e)

    def _flush_touches_locked(self, db: sqlite3.Connection) -> None:
        touches = self._handles.take_touches()
        self._touched_at = time.monotonic()
        if touches:
            db.executemany("UPDATE entries SET atime = ? WHERE name = ?", [(t, n) for n, t in touches.items()])

    # -- index operations (inside a transaction) --------------------------------------------------
    def _remove_locked(self, db: sqlite3.Connection, tally: _Tally, name: str) -> None:
        _unlink(self._path(name))  # even without a row: a file left by a crash
        self._drop_row_locked(db, tally, name)

    def _drop_row_locked(self, db: sqlite3.Connection, tally: _Tally, name: str) -> None:
        row = db.execute("SELECT size FROM entries WHERE name = ?", (name,)).fetchone()
        if row is not None:
            db.execute("DELETE FROM entries WHERE name = ?", (name,))
            tally.bytes -= row[0]
            tally.count -= 1

    def _make_room_locked(self, db: sqlite3.Connection, tally: _Tally, charge: int) -> None:
        """Evict least recently used entries until ``charge`` more bytes fit."""
        while tally.bytes + charge > self.max_bytes:
            rows = db.execute("SELECT name, size FROM entries ORDER BY atime LIMIT 64").fetchall()
            if not rows:  # the total disagrees with the rows: trust the rows
                tally.bytes, tally.count = 0, 0
                return
            evicted = 0
            for name, size in rows:
                _unlink(self._path(name))
                db.execute("DELETE FROM entries WHERE name = ?", (name,))
                tally.bytes -= size
                tally.count -= 1
                evicted += 1
                if tally.bytes + charge <= self.max_bytes:
                    break
            self._stats.add(evictions=evicted)

    def _install_locked(self, db: sqlite3.Connection, tally: _Tally, name: str, tmp: str, charge: int) -> None:
        self._drop_row_locked(db, tally, name)
        self._make_room_locked(db, tally, charge)
        path = self._path(name)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # the first entry in its level-one directory
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)
        db.execute("INSERT INTO entries(name, size, atime) VALUES (?, ?, ?)", (name, charge, self._clock()))
        tally.bytes += charge
        tally.count += 1

    def _writable_locked(self, db: sqlite3.Connection, bucket: int, gen: int) -> bool:
        """No write began or ended in the bucket since ``gen``, and none is in flight there."""
        row = db.execute("SELECT gen FROM gens WHERE bucket = ?", (bucket,)).fetchone()
        if (row[0] if row else 0) != gen:
            return False
        live = time.time() - PENDING_EXPIRY
        busy = db.execute("SELECT 1 FROM pending WHERE bucket = ? AND started > ? LIMIT 1", (bucket, live))
        return busy.fetchone() is None

    def _check_ours(self) -> None:
        """Refuse a directory that holds anything but a cache's files: opening reconciles the
        files with the index and deletes what it does not list, and a user's own directory
        (``cache="."``, a scratch directory that has a ``tmp/``) would lose its files."""
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot open cache directory {self._dir}: {e}") from e
        foreign = sorted(n for n in names if n not in _OWN_NAMES)
        if foreign:
            raise StoreError(
                f"cache directory {self._dir} holds files that are not a volbridge cache's ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give cache= an empty or new directory"
            )

    def _reconcile_locked(self, db: sqlite3.Connection) -> None:
        """Make files and index agree after a crash (only when no other process has it open).
        Only files named as this cache names them are deleted; any other file there means the
        directory is not (only) a cache, and nothing is touched."""
        sizes = dict(db.execute("SELECT name, size FROM entries").fetchall())
        seen, stale, foreign = set(), [], []
        for sub in os.scandir(self._entries_dir):
            if not (sub.is_dir(follow_symlinks=False) and _ENTRY_DIR.fullmatch(sub.name)):
                foreign.append(sub.path)
                continue
            for f in os.scandir(sub.path):
                name = sub.name + f.name
                if not (f.is_file(follow_symlinks=False) and _ENTRY_NAME.fullmatch(name)):
                    foreign.append(f.path)
                elif name in sizes:
                    seen.add(name)
                else:
                    stale.append(f.path)  # renamed in by a transaction that never committed
        for f in os.scandir(self._tmp_dir):
            if f.is_file(follow_symlinks=False) and _TMP_NAME.fullmatch(f.name):
                stale.append(f.path)  # a write that never finished
            else:
                foreign.append(f.path)
        if foreign:
            raise StoreError(
                f"cache directory {self._dir} holds files a volbridge cache does not make ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give cache= an empty or new directory"
            )
        for path in stale:
            _unlink(path)
        missing = [(n,) for n in sizes if n not in seen]
        db.executemany("DELETE FROM entries WHERE name = ?", missing)
        db.execute("DELETE FROM pending")
        tally = _Tally(db)
        tally.bytes = sum(s for n, s in sizes.items() if n in seen)
        tally.count = len(seen)
        tally.save(db)

    # -- the tier's hooks -------------------------------------------------------------------------
    def _lookup(self, key: str, transient: bool) -> bytes | memoryview | _Absent | None:
        name = self._name(key)
        try:
            value = self._read_entry(name, transient)
        except ValueError as e:
            self._stats.add(corrupt=1)
            log.warning("cache %s: dropping the corrupt entry of %r (%s): %s", self._dir, key, self.url, e)
            try:
                with self._tx() as db:
                    tally = _Tally(db)
                    self._remove_locked(db, tally, name)
                    tally.save(db)
            except (sqlite3.Error, OSError) as e2:
                self._stats.add(errors=1)
                log.warning("cache %s: could not drop a corrupt entry: %s", self._dir, e2)
            return None
        except OSError as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot read the entry of %r (%s): %s", self._dir, key, self.url, e)
            return None
        if value is not None:
            self._touch(name)
        return value

    def _ticket(self, keys: list[str]) -> dict[str, tuple[str, int, int]]:
        names = {k: self._name(k) for k in keys}
        buckets = {k: self._bucket(n) for k, n in names.items()}
        marks = ",".join("?" * len(set(buckets.values())))
        try:
            with self._db_lock:
                rows = self._db().execute(
                    f"SELECT bucket, gen FROM gens WHERE bucket IN ({marks})", tuple(set(buckets.values()))
                )
                gens = dict(rows.fetchall())
        except sqlite3.Error as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot read the index: %s", self._dir, e)
            return {}  # no ticket: nothing will be filled
        return {k: (names[k], buckets[k], gens.get(buckets[k], 0)) for k in keys}

    def _fill(self, ticket: dict[str, tuple[str, int, int]], items: Mapping[str, bytes | memoryview | _Absent]) -> None:
        items = {k: v for k, v in items.items() if k in ticket and self._cacheable(v)}
        if not items:
            return
        tmps: dict[str, str] = {}
        try:
            for key, value in items.items():
                tmps[key] = self._write_tmp(ticket[key][0], value)
            with self._tx() as db:
                tally = _Tally(db)
                for key, value in items.items():
                    name, bucket, gen = ticket[key]
                    if self._writable_locked(db, bucket, gen):
                        self._install_locked(db, tally, name, tmps.pop(key), self._charge(value))
                tally.save(db)
        except (sqlite3.Error, OSError) as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot cache a value of %s: %s", self._dir, self.url, e)
        finally:
            for tmp in tmps.values():
                _unlink(tmp)

    def _begin_write(self, keys: list[str]) -> tuple[str, dict[str, tuple[str, int, int]]]:
        token = secrets.token_hex(8)
        names = {k: self._name(k) for k in keys}
        try:
            with self._tx() as db:
                tally = _Tally(db)
                now = time.time()
                for key, name in names.items():
                    b = self._bucket(name)
                    db.execute(
                        "INSERT INTO gens(bucket, gen) VALUES (?, 1) ON CONFLICT(bucket) DO UPDATE SET gen = gen + 1",
                        (b,),
                    )
                    db.execute("INSERT INTO pending(token, bucket, started) VALUES (?, ?, ?)", (token, b, now))
                    self._remove_locked(db, tally, name)
                tally.save(db)
                info = {}
                for key, name in names.items():
                    b = self._bucket(name)
                    info[key] = (name, b, db.execute("SELECT gen FROM gens WHERE bucket = ?", (b,)).fetchone()[0])
        except (sqlite3.Error, OSError) as e:
            first = next(iter(keys))
            raise StoreError(
                f"cannot drop the cached copy of {first!r} of {self.url} in cache {self._dir} before writing it: {e}"
            ) from e
        return token, info

    def _end_write(
        self, ticket: tuple[str, dict[str, tuple[str, int, int]]], values: Mapping[str, bytes | memoryview | _Absent]
    ) -> None:
        token, info = ticket
        tmps: dict[str, str] = {}
        try:
            for key, value in values.items():
                tmps[key] = self._write_tmp(info[key][0], value)
        except OSError as e:
            self._stats.add(errors=1)
            log.warning("cache %s: cannot cache a value written to %s: %s", self._dir, self.url, e)
        try:
            with self._tx() as db:
                db.execute("DELETE FROM pending WHERE token = ? OR started < ?", (token, time.time() - PENDING_EXPIRY))
                tally = _Tally(db)
                for key, (name, bucket, gen) in info.items():
                    if key in tmps and self._writable_locked(db, bucket, gen):
                        self._install_locked(db, tally, name, tmps.pop(key), self._charge(values[key]))
                    else:
                        self._remove_locked(db, tally, name)
                for name, bucket, gen in info.values():
                    db.execute("UPDATE gens SET gen = gen + 1 WHERE bucket = ?", (bucket,))
                tally.save(db)
        except (sqlite3.Error, OSError) as e:
            # The copy was dropped when the write began and the write stays registered in flight
            # (until it expires), so no stale value can be cached meanwhile: only caching is lost.
            self._stats.add(errors=1)
            log.warning("cache %s: cannot finish a write of %s: %s", self._dir, self.url, e)
        finally:
            for tmp in tmps.values():
                _unlink(tmp)

    # -- inspection -------------------------------------------------------------------------------
    @property
    def stats(self) -> CacheStats:
        """This process's counters; ``bytes_cached`` and ``entries`` are the directory's own."""
        try:
            with self._db_lock:
                if self._finalizer.alive:
                    tally = _Tally(self._db())
                    self._stats.bytes_cached, self._stats.entries = tally.bytes, tally.count
        except (sqlite3.Error, StoreError):
            pass
        return self._stats

    def clear(self) -> None:
        """Drop every entry in the directory (of every store it caches)."""
        with self._tx() as db:
            self._clear(db)

    def _clear(self, db) -> None:
        """Every entry file goes, listed or not: a process killed between moving an entry in
        and committing its row left a file no row names, which reads still served (stale, after
        the volume it came from was made again: a review found). Installs happen inside the
        index's write lock, held here, so no entry is half made meanwhile."""
        tally = _Tally(db)
        for (name,) in db.execute("SELECT name FROM entries").fetchall():
            _unlink(self._path(name))
        try:
            subdirs = [d for d in os.scandir(self._entries_dir) if d.is_dir(follow_symlinks=False) and _ENTRY_DIR.fullmatch(d.name)]
        except FileNotFoundError:
            subdirs = []
        for sub in subdirs:
            for f in os.scandir(sub.path):
                if f.is_file(follow_symlinks=False) and _ENTRY_NAME.fullmatch(sub.name + f.name):
                    _unlink(f.path)
        db.execute("DELETE FROM entries")
        tally.bytes = tally.count = 0
        tally.save(db)

    def check(self) -> None:
        """Raise StoreError unless the index is intact and its totals match its rows (for tests
        and ``volbridge`` diagnostics)."""
        with self._db_lock:
            db = self._db()
            ok = db.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"cache index {self._index_path} is corrupt: {ok}")
            tally = _Tally(db)
            n, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
        if (n, total) != (tally.count, tally.bytes):
            raise StoreError(
                f"cache index {self._index_path} counts {tally.count} entries of {tally.bytes} bytes "
                f"but holds {n} of {total}"
            )
        if total > self.max_bytes:
            raise StoreError(f"cache {self._dir} holds {total} bytes, over its bound of {self.max_bytes}")

    def __repr__(self) -> str:
        return f"DiskCache({self.backing!r}, {self._dir!r}, max_bytes={self.max_bytes})"


#: What a cache directory holds at its top (the index with SQLite's WAL and journal files), and
#: what volbridge itself keeps in ~/.cache/volbridge beside a cache made there (jobs' journals,
#: native kernels), which a cache never touches.
_OWN_NAMES = frozenset({"entries", "tmp", "init.lock", "open.lock", "index.sqlite3", "index.sqlite3-wal",
                        "index.sqlite3-shm", "index.sqlite3-journal", "jobs", "native"})
_ENTRY_DIR = re.compile(r"[0-9a-f]{2}")
_ENTRY_NAME = re.compile(r"[0-9a-f]{40}")  # _entry_name's digest
_TMP_NAME = re.compile(r"[0-9a-f]{40}\.\d+\.[0-9a-f]{8}\.[0-9a-f]+\.\d+")  # an entry name, then _tmp_suffix()


def _entry_name(prefix: str, key: str) -> str:
    """The entry (and digest) name of ``key`` of the store whose identity ends in ``prefix``."""
    return hashlib.blake2b((prefix + key).encode(), digest_size=20).hexdigest()


def _adopt_old_stamps(db) -> None:
    """Digests an index kept as one JSON per store (table ``stamps``, before commit e4e5d0b)
    become per-document rows: left behind, a change the LRU had hidden would go unseen."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stamps'").fetchone() is None:
        return
    rows = []
    for identity, text in db.execute("SELECT identity, stamp FROM stamps").fetchall():
        try:
            stamp = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(stamp, dict) and isinstance(identity, str):
            prefix = identity.rstrip("/") + "/"
            rows += [(_entry_name(prefix, key), digest) for key, digest in stamp.items()
                     if isinstance(key, str) and isinstance(digest, str)]
    db.executemany("INSERT OR IGNORE INTO doc_stamps(name, digest) VALUES (?, ?)", rows)
    db.execute("DROP TABLE stamps")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
