"""Object stores (S3 and S3-compatible, GCS, Azure Blob) and read-only HTTP(S), over obstore.

obstore wraps Rust's object_store: one client per store with connection pooling, and conditional
PUTs (``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace; on GCS
``x-goog-if-generation-match: 0`` or ``<generation>``), which make ``update`` a compare-and-swap
loop: read the object and its version, compute the new value, put it only if the version is
unchanged, and otherwise read again and recompute. Writers on different machines therefore
never lose each other's updates. obstore's own retries are off so that this module counts each
retry and applies :class:`RetryPolicy`; transport compression uses the ``Content-Encoding`` header
(what CloudVolume writes and neuroglancer reads).
"""

from __future__ import annotations

import functools
import os
import re
from concurrent.futures import Future
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, TypeVar

import obstore
from obstore import exceptions as oe

from .. import compression
from ..environment import number
from ..engine.parallel import (  # plain threading, no engine layer
    MAX_BYTES_IN_FLIGHT,
    ahead,
    encoder_threads,
    run_bounded,
)
from ..errors import (
    ChunkDecodeError,
    ReadOnlyError,
    StoreError,
    UnsupportedError,
    URLError,
    VersionChangedError,
)
from .base import KVStore, ObjectStat, StoreStats, Updater
from .curl_get import CurlGetter
from .curl_put import CurlPutter
from .ranges import RangeReader
from .retry import NOT_TLS, OLD_TLS, RetryPolicy, certificate_advice, gave_up, retryable_status

T = TypeVar("T")

#: How many forks this process descends from (bumped in each child), and at which of them
#: obstore's runtime was first used (None: not yet).
_FORKS = [0]
_RUNTIME_FORK: list[int | None] = [None]


def _count_fork() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)

#: obstore raises the builtin FileNotFoundError for a 404 on some paths, NotFoundError on others.
_NOT_FOUND = (oe.NotFoundError, FileNotFoundError)
#: Errors that no retry can fix; everything else (5xx, 429, timeouts, resets) is retried.
_FINAL = (
    *_NOT_FOUND,
    PermissionError,
    oe.PermissionDeniedError,
    oe.UnauthenticatedError,
    oe.PreconditionError,
    oe.AlreadyExistsError,
    oe.InvalidPathError,
    oe.NotSupportedError,
    oe.UnknownConfigurationKeyError,
    TypeError,  # a malformed call (bad options), not a transport failure
    ValueError,  # a key object_store cannot parse ("a//b", "a/../b")
    UnsupportedError,  # no request made (an obstore client in a forked child)
)
_STATUS = re.compile(r"status code: (\d{3})")


#: A range the object does not have (HTTP 416, or object_store's own check before asking).
_BAD_RANGE = re.compile(r"status code: 416|[Ii]nvalid range|InvalidRange|[Rr]ange not satisfiable")


#: TLS failures no retry can fix, found in obstore's debug dump (its message says only "error
#: sending request", as for a dropped connection): a refused certificate (rustls' reason), https
#: spoken to a plain-http port, or no TLS version or cipher suite in common.
_TLS_FINAL = re.compile(r"InvalidCertificate\(\s*(?P<cert>[A-Za-z]+)|InvalidMessage\(\s*(?P<plain>InvalidContentType)"
                        r"|PeerIncompatible\(\s*(?P<old>[A-Za-z0-9]+)")


def tls_failure(text: str) -> str | None:
    """What is wrong, when ``text`` (an error's message) shows a TLS failure no retry can fix."""
    m = _TLS_FINAL.search(text)
    if m is None:
        return None
    if m["cert"]:
        reason = m["cert"].removesuffix("Context")
        return f"the server's TLS certificate is refused ({reason}); {certificate_advice(reason)}"
    if m["old"]:
        return f"{OLD_TLS} ({m['old']})"
    return NOT_TLS


#: obstore's HTTP client refuses a whole-object response without Content-Length (a chunked
#: one, as nginx with gzip and CDNs send): not a transient failure.
_NO_LENGTH = "Content-Length Header missing"


def _retryable(e: BaseException) -> bool:
    if isinstance(e, _FINAL) or _BAD_RANGE.search(str(e)) or tls_failure(str(e)) or _NO_LENGTH in str(e):
        return False
    m = _STATUS.search(str(e))
    if m:
        return retryable_status(int(m.group(1)))
    return True  # connection errors, timeouts, truncated bodies


def obstore_options(policy: RetryPolicy) -> dict:
    return {
        "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=policy.timeout),
                         "backoff": {"init_backoff": timedelta(milliseconds=10), "max_backoff": timedelta(seconds=1), "base": 2}},
        "client_options": {"timeout": f"{policy.timeout}s", "connect_timeout": f"{policy.connect_timeout}s"},
    }


class ObjectStore(KVStore):
    """A KVStore over an obstore store (``obstore.store.S3Store``, ``GCSStore``, ``AzureStore``, ``HTTPStore``).

    ``prefix`` is prepended to every key, so one obstore client (one connection pool) can serve
    every volume in a bucket while each handle keeps its own keys and counters.
    """

    cheap_misses = False

    def __init__(self, store: Any, url: str, *, prefix: str = "", retry: RetryPolicy | None = None,
                 read_only: bool = False, io_concurrency: int | None = None, service: str | None = None,
                 getter: CurlGetter | None = None, putter: CurlPutter | None = None, canonical_url: str | None = None):
        self._store = store
        self.url = url.rstrip("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # The URL leaves out what else decides which objects it names (an S3 endpoint, an Azure
        # account): ``service`` says it, for caches that must not mix two services' objects.
        # ``canonical_url``: the URL spelled one way for every spelling of these objects
        # (S3://b//vol and s3://b/vol), so a cache sees one store's writes through any of them.
        # (the URL last, so that a child's identity, base + "/" + prefix, is the sub-URL's own)
        named = (canonical_url or self.url).rstrip("/")
        self._identity = named if service is None else f"{service} | {named}"
        self.retry = retry or RetryPolicy()
        self.read_only = read_only
        self.stats = StoreStats()
        # 32 requests in flight matched tensorstore at 20 ms latency (3 gave 0.2x): bench/results/s3_profile.md
        self.io_concurrency = io_concurrency or number("VOLBRIDGE_IO_CONCURRENCY", 32, least=1)
        #: whole-object GETs of many keys over libcurl (None: through obstore); see kv.curl_get
        self.getter = getter
        #: whole-object PUTs of many keys over libcurl (None: one obstore PUT per loop); see kv.curl_put
        self.putter = None if read_only else putter
        self.batched_puts = self.putter is not None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def store(self) -> Any:
        """The obstore client, for a request. obstore runs every request on one tokio runtime per
        process, whose threads do not survive a fork: a child forked after the parent's first
        request hung for ever on its own first one (a review found), so it is refused instead."""
        if _RUNTIME_FORK[0] != _FORKS[0]:
            if _RUNTIME_FORK[0] is not None:
                raise UnsupportedError(
                    f"{self.url}: this process was forked after its parent had used S3, GCS, Azure or HTTP volumes, "
                    "and their client (obstore) cannot run in such a child. Start worker processes with "
                    "multiprocessing.get_context('spawn') or 'forkserver' (or fork before the first such read)")
            _RUNTIME_FORK[0] = _FORKS[0]
        return self._store

    # -- plumbing -----------------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one request with retries; final errors pass through for the caller to classify."""
        attempt = 1
        while True:
            self.stats.add(requests=1)
            try:
                return fn()
            except BaseException as e:
                if not isinstance(e, Exception) or not _retryable(e):
                    raise
                if attempt >= self.retry.max_attempts:
                    raise gave_up(StoreError(
                        f"{what} {self._where(key)} failed after {attempt} attempts: {_short(e)}"
                    )) from e
                self.stats.add(retries=1)
                self.retry.sleep(attempt)
                attempt += 1

    def _check_key(self, key: str) -> None:
        # object_store would drop a leading or trailing slash (another key) and refuses empty,
        # '.' and '..' segments, which an HTTP client would resolve into another object's path
        if not key or key[0] == "/" or key[-1] == "/" or any(part in ("", ".", "..") for part in key.split("/")):
            raise URLError(f"invalid key {key!r} for {self.url}: keys are relative '/'-paths without empty, '.' or '..' parts")

    def _check_writable(self, key: str) -> None:
        if self.read_only:
            raise ReadOnlyError(f"cannot write {self._where(key)}: {self.url} is read-only (HTTP)")

    # -- reading ------------------------------------------------------------------------------
    def _get_versioned(self, key: str) -> tuple[bytes | None, str | None, str | None]:
        """The value with its ETag and version (GCS's generation; None where the store has none)."""
        self._check_key(key)

        def fetch():
            result = obstore.get(self.store, self.prefix + key)
            meta = result.meta
            data = result.bytes()
            size = meta.get("size")
            if size is not None and len(data) != size:  # a short body is a transport failure
                raise ConnectionError(f"short body: {len(data)} of {size} bytes")
            return bytes(data), meta.get("e_tag"), meta.get("version"), result.attributes

        try:
            data, etag, version, attributes = self._call("GET", key, fetch)
        except _NOT_FOUND:
            return None, None, None
        except Exception as e:
            if _NO_LENGTH in str(e) and self.getter is not None:  # libcurl reads chunked bodies (a review
                got: dict = {}  # found such volumes unopenable: their info could not be read)
                self.fetch_each([key], lambda k, v: got.__setitem__(k, None if v is None else bytes(v)))
                return got.get(key), None, None
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"GET {self._where(key)} failed: {_short(e)}") from e
        self.stats.add(bytes_read=len(data))
        encoding = _content_encoding(attributes)
        if _codings(encoding):
            data = self._decode_content(key, encoding, data)
        return data, etag, version

    def _decode_content(self, key: str, encoding: str, data: bytes) -> bytes:
        """``data`` with its Content-Encoding undone: a list is undone last first. obstore hands
        over bodies as stored (it never decodes), so a body that is not the stream its header
        says is damage, and raises."""
        try:
            for name in reversed(_codings(encoding)):
                data = compression.decompress(compression.canonical(name), data)
            return data
        except UnsupportedError as e:
            raise UnsupportedError(f"{self._where(key)} is stored with Content-Encoding: {encoding}, which volbridge "
                                   f"cannot decode ({e})") from e
        except ChunkDecodeError as e:
            raise ChunkDecodeError(f"{self._where(key)} (Content-Encoding: {encoding}): {e}") from e

    def get(self, key: str) -> bytes | None:
        return self._get_versioned(key)[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        if self.getter is None:
            return super().get_many(keys)
        keys = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        # fetch_each's values may be views of buffers reused after the call: keep copies
        self.fetch_each(keys, lambda key, value: None if value is None else found.__setitem__(
            key, value if type(value) is bytes else bytes(value)))
        return {key: found[key] for key in keys if key in found}

    def fetch_each(self, keys: Iterable[str], fn, *, heavy: bool = False, nbytes: int = 1) -> None:
        if self.getter is None:
            return super().fetch_each(keys, fn, heavy=heavy, nbytes=nbytes)
        keys = list(keys)
        for key in keys:
            self._check_key(key)
        n = len(self.prefix)

        def done(key: str, body: bytes | None, encoding: str) -> None:
            key = key[n:]
            if body is not None and encoding and _codings(encoding):
                body = self._decode_content(key, encoding, body)
            fn(key, body)

        # the engine's bound on bytes in flight holds here too (queued bodies count against it)
        in_flight = max(1, min(self.io_concurrency, MAX_BYTES_IN_FLIGHT // max(1, nbytes)))
        self.getter.fetch([self.prefix + k for k in keys], done, where=lambda k: self._where(k[n:]), stats=self.stats,
                          max_in_flight=in_flight, heavy=heavy)

    def range_reader(self, key: str) -> RangeReader:
        self._check_key(key)
        return _ObjectRangeReader(self, key)

    def stat(self, key: str) -> ObjectStat | None:
        """One HEAD: the stored size (compressed, for a transport-compressed object), ETag and version."""
        self._check_key(key)
        try:
            meta = self._call("HEAD", key, lambda: obstore.head(self.store, self.prefix + key))
        except _NOT_FOUND:
            return None
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"HEAD {self._where(key)} failed: {_short(e)}") from e
        return ObjectStat(int(meta["size"]), etag=meta.get("e_tag"), version=meta.get("version"))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self.prefix + prefix
        # object_store lists whole path segments ("mip1" does not list "mip10/a"): list from the
        # last '/' and keep the keys that start with the prefix, as every other store does
        folder = full[: full.rfind("/") + 1]
        try:
            batches = self._call("LIST", prefix, lambda: list(obstore.list(self.store, prefix=folder or None, chunk_size=1000)))
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"LIST {self._where(prefix)} failed: {_short(e)}") from e
        n = len(self.prefix)
        for batch in batches:
            for meta in batch:
                path = meta["path"]
                if path.startswith(full) and path.startswith(self.prefix):
                    yield path[n:]

    # -- writing ------------------------------------------------------------------------------
    def _put(self, key: str, value: bytes, content_encoding: str | None, mode: Any = None) -> None:
        self._check_writable(key)
        self._check_key(key)
        attributes = {"Content-Type": content_type(key)}
        if content_encoding:
            name = compression.canonical(content_encoding)
            value = compression.compress(name, value)
            attributes["Content-Encoding"] = name
        kwargs = {"attributes": attributes, "mode": mode, "use_multipart": False}
        self._call("PUT", key, lambda: obstore.put(self.store, self.prefix + key, value, **kwargs))
        self.stats.add(bytes_written=len(value))

    def put(self, key: str, value: bytes, *, content_encoding: str | None = None) -> None:
        try:
            self._put(key, value, content_encoding)
        except (StoreError, ReadOnlyError, URLError):
            raise
        except Exception as e:
            raise StoreError(f"PUT {self._where(key)} failed: {_short(e)}") from e

    def put_each(self, keys, values, *, content_encoding: str | None = None, nbytes: int = 1) -> None:
        if self.putter is None:
            return super().put_each(keys, values, content_encoding=content_encoding, nbytes=nbytes)
        keys = list(keys)
        for key in keys:
            self._check_writable(key)
            self._check_key(key)
        name = None
        if content_encoding:  # compressed for transport on the encoder threads, a few values ahead
            name = compression.canonical(content_encoding)
            compress = functools.partial(compression.compress, name)
            # (a few values here: on the encoders they would queue behind a bulk write's chunks)
            values = ahead(compress, values) if len(keys) > encoder_threads() else map(_made(compress), values)
        n = len(self.prefix)
        in_flight = max(1, min(self.io_concurrency, MAX_BYTES_IN_FLIGHT // max(1, nbytes)))
        self.putter.put_each([self.prefix + k for k in keys], values, where=lambda k: self._where(k[n:]), stats=self.stats,
                             max_in_flight=in_flight, content_type=content_type, content_encoding=name)

    def delete(self, key: str) -> None:
        self._check_writable(key)
        self._check_key(key)
        try:
            self._call("DELETE", key, lambda: obstore.delete(self.store, self.prefix + key))
        except _NOT_FOUND:
            pass
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"DELETE {self._where(key)} failed: {_short(e)}") from e

    def update(self, key: str, fn: Updater, *, needs_old: bool = True, content_encoding: str | None = None) -> bytes:
        self._check_writable(key)
        self._check_key(key)
        if not needs_old:
            # A blind overwrite needs no condition: a racing read-modify-write sees the ETag change
            # and re-merges on top of it, so the result is still a serial order of the two.
            new = fn(None)
            self.put(key, new, content_encoding=content_encoding)
            return new
        for _ in range(self.retry.max_conflicts):
            old, etag, version = self._get_versioned(key)
            new = fn(old)
            # S3 and Azure condition on the ETag, GCS on the generation (the version): pass both.
            mode: Any = "create"
            if old is not None:
                mode = {k: v for k, v in (("e_tag", etag), ("version", version)) if v is not None}
            try:
                self._put(key, new, content_encoding, mode)
                return new
            except (oe.PreconditionError, oe.AlreadyExistsError):
                self.stats.add(conflicts=1)
                self.retry.sleep(1)
            except (StoreError, ReadOnlyError, URLError):
                raise
            except Exception as e:
                raise StoreError(f"conditional PUT {self._where(key)} failed: {_short(e)}") from e
        raise StoreError(f"{self._where(key)}: lost {self.retry.max_conflicts} write races in a row; giving up")


#: The formats' JSON documents without a ``.json`` ending: precomputed's ``info`` and
#: ``provenance``, zarr v2's dot files.
_JSON_NAMES = frozenset({"info", "provenance", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def content_type(key: str) -> str:
    """The Content-Type a PUT of ``key`` declares: ``application/json`` for the formats'
    documents, ``application/octet-stream`` for everything else (chunks, shards, meshes), as
    CloudVolume and TensorStore declare them. Without one, SeaweedFS sniffs the body and gzips a
    sample of it to decide whether to compress it: 64 raw 64^3 chunk PUTs took ~6 % more of its
    CPU (mean server CPU 301 vs 283 ms over 30 interleaved writes, TensorStore 284), and as much
    more time, a write over loopback being bound by the server."""
    name = key.rsplit("/", 1)[-1]
    return "application/json" if name in _JSON_NAMES or name.endswith(".json") else "application/octet-stream"


#: Content-Encoding values that leave the body as it is (S3 reports ``aws-chunked`` for objects
#: uploaded in signed chunks; the stored object is plain).
_NO_ENCODING = ("", "identity", "aws-chunked")


def _content_encoding(attributes) -> str:
    return (attributes or {}).get("Content-Encoding") or (attributes or {}).get("content_encoding") or ""


def _codings(encoding: str) -> list[str]:
    """The codings a Content-Encoding header lists that change the body, in the order applied."""
    return [t for t in (t.strip().lower() for t in encoding.split(",")) if t not in _NO_ENCODING]


def _made(fn: Callable) -> Callable:
    """``fn`` of a value or of the value of a Future (waited for: a caller's own few values)."""
    return lambda value: fn(value.result() if isinstance(value, Future) else value)


def _short(e: BaseException) -> str:
    """obstore messages carry a long debug dump after the first line: keep the useful part."""
    text = str(e).strip().split("\n\nDebug source:")[0]
    text = text if len(text) < 400 else text[:400] + "..."
    tls = tls_failure(str(e))
    return f"{text}: {tls}" if tls else text


class _ObjectRangeReader(RangeReader):
    """Ranged GETs of one version: the first response's ETag makes later requests conditional
    (``If-Match``), so a replaced object raises VersionChangedError instead of mixing versions.
    Ranges address the value as ``get`` returns it, as on every store: an object stored with a
    Content-Encoding is read whole once, decoded, and served from memory."""

    def __init__(self, store: ObjectStore, key: str):
        super().__init__(None, store._where(key))
        self.store, self.key = store, key
        self.etag: str | None = None
        self.absent = False

    def _decoded(self, etag: str | None) -> None:
        """Switch to the decoded value of version ``etag`` (its stored bytes are encoded)."""
        data, whole_etag, _ = self.store._get_versioned(self.key)
        if data is None or (etag is not None and whole_etag is not None and whole_etag != etag):
            raise VersionChangedError(f"{self.where} changed while it was being read")
        self.value, self.etag = data, whole_etag or etag

    def read(self, start: int, end: int | None = None) -> bytes | None:
        if self.absent:
            return None
        if self.value is not None:
            return super().read(start, end)
        if end is None and start >= 0:
            raise ValueError("a range needs an end, or a negative start for a suffix")
        where = f"{self.where} bytes {start}-{'' if end is None else end}"
        if end is not None and (start < 0 or end < start):  # asked of the service, it would be retried
            raise StoreError(f"{where} were asked for: not a range of bytes")
        if end is not None and end == start:
            if start > 0:  # the byte before it says whether the value reaches there (a HEAD's size is
                return None if self.read(start - 1, start) is None else b""  # the stored, maybe encoded, size)
            if self.store.exists(self.key):
                return b""
            self.absent = True
            return None
        options: dict = {"range": {"suffix": -start} if end is None else (start, end)}
        if self.etag is not None:
            options["if_match"] = self.etag

        def fetch():
            result = obstore.get(self.store.store, self.store.prefix + self.key, options=options)
            return bytes(result.bytes()), result.meta.get("e_tag"), _content_encoding(result.attributes)

        try:
            data, etag, encoding = self.store._call("GET range", self.key, fetch)
        except StoreError:
            raise
        except _NOT_FOUND:
            if self.etag is not None:
                raise VersionChangedError(f"{self.where} was deleted while it was being read") from None
            self.absent = True
            return None
        except oe.PreconditionError as e:
            raise VersionChangedError(f"{self.where} changed while it was being read") from e
        except oe.NotSupportedError as e:
            if end is not None:
                raise StoreError(f"GET {where} failed: {_short(e)}") from e
            return self._suffix_by_size(-start)
        except Exception as e:
            if self.etag is None and _BAD_RANGE.search(str(e)):
                # Past the stored bytes: maybe a Content-Encoding object whose value is longer
                # (ranges address the value). Its decoded value serves the range, or says how
                # long it is.
                self._decoded(None)
                return super().read(start, end)
            raise StoreError(f"GET {where} failed: {_short(e)}") from e
        if _codings(encoding):
            self._decoded(self.etag or etag)  # these bytes are of the encoded stream
            return super().read(start, end)
        want = -start if end is None else end - start
        if len(data) != want:
            raise StoreError(f"GET {where}: got {len(data)} bytes")
        if self.etag is None:
            self.etag = etag
        self.store.stats.add(bytes_read=len(data))
        return data

    #: A round trip costs more than this many bytes of transfer on any link worth reading over.
    merge_gap = 1 << 16

    def _read_groups(self, groups: list[tuple[int, int]]) -> list[bytes]:
        """The (merged) spans concurrently: latency, not bandwidth, bounds small ranges; each
        pinned to this version, the first failure raises."""
        if len(groups) < 2 or self.etag is None:
            return super()._read_groups(groups)
        out: list = [None] * len(groups)

        def one(i: int) -> None:
            out[i] = self.read(*groups[i])
            if out[i] is None:
                raise StoreError(f"{self.where} is absent (reading bytes {groups[i][0]}-{groups[i][1]})")

        run_bounded(one, range(len(groups)), 1 << 16, self.store.io_concurrency)
        return out

    def _suffix_by_size(self, n: int) -> bytes | None:
        """A suffix where the service has no suffix ranges (Azure): the size (and the version to
        pin) from a HEAD, then an ordinary range of that version."""
        st = self.store.stat(self.key)
        if st is None:
            if self.etag is not None:
                raise VersionChangedError(f"{self.where} was deleted while it was being read")
            self.absent = True
            return None
        if self.etag is None:
            self.etag = st.etag
        try:
            data = self.read(st.size - min(n, st.size), st.size)
        except StoreError:
            if self.value is None:
                raise
            # (an encoded value decoded shorter than its stored bytes: the range read of it failed)
        if self.value is not None:  # stored with a Content-Encoding: the suffix is of the decoded value
            return super().read(-n)
        if n > st.size:
            raise StoreError(f"{self.where} has {st.size} bytes; the last {n} were asked for")
        return data

