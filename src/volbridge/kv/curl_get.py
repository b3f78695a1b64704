"""Many GETs of one object store at once, over libcurl's multi interface, driven by the calling thread.

Why beside obstore: reading a volume means many whole-object GETs, and with obstore each is a
blocking call from one of 32 Python threads into its tokio runtime and back. On loopback
SeaweedFS that cost ~500 us of client CPU per 256 KiB object, more than tensorstore's whole read,
and on 2 shared cores the client's CPU is taken from the server. One thread driving libcurl's
multi interface keeps as many requests in flight for ~300 us each, with no thread hand-offs
(measured in one process, interleaved: bench/results/s3_curl.md). A driver thread serving the
engine's loops lost it all again to wake-ups, so the caller drives and gets each value as it
arrives (:meth:`CurlGetter.fetch`).

Everything else (ranged reads, writes, conditional puts, listing) stays on obstore. This serves
S3 with static or no credentials (signed here, AWS Signature Version 4) and plain HTTP(S); other
services and credential sources fall back to obstore.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import heapq
import hmac
import os
import queue
import select
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlsplit

import numpy as np

from ..errors import StoreError
from . import curl_body
from .retry import NOT_TLS, RetryPolicy, certificate_advice, gave_up, retryable_status

try:
    import pycurl
except ImportError:  # an optional speed-up: without it every GET goes through obstore
    pycurl = None

#: libcurl errors that no retry can fix (bad URL or protocol, TLS trust, a refused login).
_FINAL_CURL_ERRORS = {1, 3, 4, 43, 48, 51, 58, 59, 60, 67, 77, 83, 90, 91}


def _tls_hint(errno: int, message: str | None) -> str | None:
    """What to do about a TLS failure no retry can fix (a refused certificate, or https
    spoken to a plain-http port: a handshake error, 35, that retries would only repeat)."""
    if errno == 60:
        return certificate_advice(message or "")
    if errno == 35 and "wrong version number" in (message or ""):
        return NOT_TLS
    return None


def available() -> bool:
    return pycurl is not None and os.environ.get("VOLBRIDGE_CURL", "1") != "0"


def _ca_bundle() -> tuple[str | None, str | None]:
    """(CA file, CA directory) for https: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as OpenSSL and
    obstore honour them, else the system's bundle (the wheel's libcurl was built for another
    machine's paths), else certifi's."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"):
        if os.path.isfile(path):
            return path, None
    try:
        import certifi

        return certifi.where(), None
    except ImportError:
        return None, None


def _proxy_for(base: str) -> str:
    """The proxy for ``base`` from the environment, as reqwest (obstore) reads it: lower- and
    upper-case ``*_proxy`` variables and ``no_proxy`` (libcurl alone ignores ``HTTP_PROXY``),
    so chunk GETs take the same route as obstore's requests; "" for none."""
    scheme, host = base.split("://", 1)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all") or ""
    if proxy and urllib.request.proxy_bypass_environment(host.rsplit("@", 1)[-1]):
        return ""
    return proxy


@dataclass(frozen=True)
class S3Signer:
    """AWS Signature Version 4 headers for S3 requests."""

    access_key_id: str
    secret_access_key: str
    region: str
    token: str | None = None

    def headers(self, host: str, path: str, amz_date: str | None = None) -> list[str]:
        """Headers for ``GET path`` (already URI-encoded) on ``host`` with an unsigned payload,
        signed now or at ``amz_date``."""
        return self.sign("GET", host, path, amz_date=amz_date)

    def sign(self, method: str, host: str, path: str, payload: str = "UNSIGNED-PAYLOAD",
             headers: tuple[tuple[str, str], ...] = (), amz_date: str | None = None) -> list[str]:
        """Headers for ``method path`` on ``host``: ``payload`` is the body's SHA-256 in hex (or
        ``UNSIGNED-PAYLOAD``); ``headers`` are (lower-case name, value) pairs to sign and send
        besides the ones this adds (a PUT's Content-Type, say)."""
        amz = amz_date or _amz_now()
        day = amz[:8]
        key = self._key(day)
        signed = [("host", host), ("x-amz-content-sha256", payload), ("x-amz-date", amz)]
        if self.token:
            signed.append(("x-amz-security-token", self.token))
        if headers:
            signed = sorted([*signed, *headers])
        names = ";".join(name for name, _ in signed)
        canonical = f"{method}\n{path}\n\n" + "".join(f"{n}:{v}\n" for n, v in signed) + f"\n{names}\n{payload}"
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(key, to_sign.encode(), "sha256").hex()  # one-shot C call: a third of hmac.new's cost
        out = [f"x-amz-date: {amz}", f"x-amz-content-sha256: {payload}",
               f"Authorization: AWS4-HMAC-SHA256 Credential={self.access_key_id}/{scope}, "
               f"SignedHeaders={names}, Signature={signature}"]
        if self.token:
            out.append(f"x-amz-security-token: {self.token}")
        out.extend(f"{n}: {v}" for n, v in headers)
        return out

    def _key(self, day: str) -> bytes:
        cached = _signing_keys.get((self.secret_access_key, self.region, day))
        if cached is None:
            k = hmac.digest(("AWS4" + self.secret_access_key).encode(), day.encode(), "sha256")
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.digest(k, part.encode(), "sha256")
            cached = _signing_keys[(self.secret_access_key, self.region, day)] = k
        return cached


_amz_stamp = [-1, ""]  # (second, its ISO 8601 basic form): formatting a date costs more than signing


def _amz_now() -> str:
    now = int(time.time())
    if _amz_stamp[0] != now:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        _amz_stamp[:] = [now, stamp]
        return stamp
    return _amz_stamp[1]


_signing_keys: dict[tuple[str, str, str], bytes] = {}


class _Request:
    __slots__ = ("key", "buf", "size", "headers", "attempt", "sink", "encoding")
    buf: bytearray | None  # the body so far, in ``buf[:size]``
    headers: list[bytes]  # the response's header lines, when pycurl's callbacks receive them

    def __init__(self, key: str):
        self.key, self.attempt, self.buf, self.size = key, 0, None, 0
        self.sink: curl_body.Sink | None = None  # where libcurl writes the body itself, if it does
        self.encoding = ""  # the response's Content-Encoding, once it is known

    def write(self, data: bytes) -> None:
        """libcurl's write callback: the next piece of the body, into a buffer that, reused, is
        already big enough and paged in (a BytesIO per object grows, copies and faults in new
        pages: a 256^3 raw read over S3 took 5 % more client CPU and 4 % more time with it,
        interleaved medians of 40)."""
        end = self.size + len(data)
        if end <= len(self.buf):
            self.buf[self.size:end] = data
        else:
            self.buf[self.size:] = data  # grows it
        self.size = end

    def body(self) -> memoryview:
        return memoryview(self.buf)[: self.size]


#: libcurl's receive buffer per call (CURLOPT_BUFFERSIZE; its classic maximum).
RECEIVE_BUFFER_BYTES = 512 << 10
#: The first libcurl (8.7.0) whose easy handles share their multi handle's receive buffer.
SHARED_RECEIVE_BUFFER_CURL = 0x080700

#: Receive buffers the process keeps between requests, at most this many bytes of them (one
#: pool for every thread: a relay's request threads each driving transfers share it).
KEPT_BUFFER_BYTES = 64 << 20


class _Buffers:
    """Receive buffers to reuse. Bodies are handed on as views of them, valid until the callee
    returns: the ``fetch_each`` contract is what protects them. As a safety net a buffer that
    still has an export when it comes back (a view or a ``np.frombuffer`` array the callee kept)
    is never written again but left to it; an array made with ``np.ndarray(buffer=...)`` holds
    no export, and is not seen."""

    def __init__(self):
        self.pid = os.getpid()
        self.free: list[bytearray] = []
        self.bytes = 0
        self.lock = threading.Lock()

    def take(self) -> bytearray:
        with self.lock:
            if not self.free:
                return bytearray()
            buf = self.free.pop()
            self.bytes -= len(buf)
            return buf

    def give(self, buf: bytearray | None) -> None:
        if buf is None:
            return
        try:  # a resize fails while a view of the buffer is alive: then it is not ours to reuse
            buf.append(0)
            buf.pop()
        except (BufferError, MemoryError):
            return
        with self.lock:
            if self.bytes + len(buf) <= KEPT_BUFFER_BYTES:
                self.free.append(buf)
                self.bytes += len(buf)


_pool: list[_Buffers | None] = [None]


def _process_buffers() -> _Buffers:
    """This process's receive buffers (a forked child starts its own: the parent's lock may
    have been held by another thread at the fork)."""
    pool = _pool[0]
    if pool is None or pool.pid != os.getpid():
        pool = _pool[0] = _Buffers()
    return pool


class _ThreadState:
    """One thread's multi handle and idle easy handles (libcurl handles are not thread-safe; a
    forked child must not share its parent's connections).

    The transfers are driven through libcurl's socket interface: libcurl says which sockets it
    waits on and for what (``_on_socket``), a poll waits on exactly those, and each socket
    found ready gets its ``socket_action``. Not ``perform`` with ``fdset``/``select``: fdset
    leaves out sockets numbered past FD_SETSIZE (1024), and select on none returns at once,
    so a process with a thousand files open spun a core for as long as its transfers ran
    (measured: CPU time equal to wall time, writes to a loopback server 30-40 % slower)."""

    def __init__(self):
        self.pid = os.getpid()
        self.multi = pycurl.CurlMulti()
        self.idle: list = []
        self.busy = False  # a transfer loop runs on it (one called from inside it gets its own)
        self.poller = select.poll()  # the sockets libcurl waits on, as it last said
        self.ready: list[tuple[int, int]] = []  # (socket, poll events) the last wait found
        # handles whose bodies libcurl writes itself (curl_body), by id; None: pycurl's callbacks
        self.sinks: dict[int, curl_body.Sink | None] = {}
        self.pauses = np.zeros(1, np.int64)  # transfers paused for room since the driver last looked
        # (the callback holds the poller, not this state: no cycle through the multi handle)
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, functools.partial(_on_socket, self.poller))


#: libcurl's CURL_POLL_* wishes as poll events.
_POLL_EVENTS = {1: select.POLLIN, 2: select.POLLOUT, 3: select.POLLIN | select.POLLOUT}


def _on_socket(poller, what: int, fd: int, _multi, _socketp) -> None:
    """libcurl's socket callback: what it now waits for on ``fd``, or (CURL_POLL_REMOVE, 4)
    that it is done with it (before closing it)."""
    events = _POLL_EVENTS.get(what)
    if events is None:
        try:
            poller.unregister(fd)
        except KeyError:
            pass
    else:
        poller.register(fd, events)  # (re-registering modifies)


def _curl_mask(events: int) -> int:
    """poll events as libcurl's CURL_CSELECT_* bits."""
    mask = 0
    if events & (select.POLLIN | select.POLLPRI | select.POLLHUP):
        mask |= pycurl.CSELECT_IN
    if events & select.POLLOUT:
        mask |= pycurl.CSELECT_OUT
    if events & (select.POLLERR | select.POLLNVAL):
        mask |= pycurl.CSELECT_ERR
    return mask


class CurlClient:
    """Requests for ``base + quote(prefix + key)``, signed by ``signer`` (None: anonymous), many at
    once from the calling thread; retried as ``retry`` says, and failing with errors that name the
    URL. :class:`CurlGetter` GETs, :class:`volbridge.kv.curl_put.CurlPutter` PUTs."""

    def __init__(self, base: str, path_prefix: str, signer: S3Signer | None, retry: RetryPolicy, *,
                 ca_file: str | None = None, headers: tuple[str, ...] = ()):
        self.base = base.rstrip("/")
        parts = urlsplit(self.base)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        # the Host header libcurl sends, which the signature covers: no default port
        self.host = parts.hostname if parts.port in (None, default_port) else f"{parts.hostname}:{parts.port}"
        if ":" in (parts.hostname or "") and parts.hostname == self.host:  # an IPv6 literal keeps its brackets
            self.host = f"[{parts.hostname}]"
        self.path_prefix = path_prefix  # "/bucket/" for S3 path style, "/" otherwise; quoted
        self.signer = signer
        self.retry = retry
        self.headers = list(headers)  # sent with every request (GCS: Accept-Encoding: gzip)
        self.ca_file, self.ca_dir = (ca_file, None) if ca_file else _ca_bundle() if parts.scheme == "https" else (None, None)
        self.proxy = _proxy_for(self.base)
        self._local = threading.local()

    def _path(self, key: str) -> str:
        return self.path_prefix + quote(key, safe="/~")

    def _state(self) -> _ThreadState:
        """This thread's handles, or new ones when a transfer loop already runs on them."""
        st = getattr(self._local, "state", None)
        if st is None or st.pid != os.getpid():
            st = self._local.state = _ThreadState()
        return _ThreadState() if st.busy else st

    def _handle(self, st: _ThreadState):
        if st.idle:
            return st.idle.pop()
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        # (at least 1 ms: libcurl takes 0 as no timeout at all)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, round(self.retry.connect_timeout * 1000)))
        c.setopt(pycurl.TIMEOUT_MS, max(1, round(self.retry.timeout * 1000)))
        c.setopt(pycurl.PATH_AS_IS, 1)  # keys are sent as named, never with dot segments resolved
        c.setopt(pycurl.PROXY, self.proxy)
        if self.ca_file:
            c.setopt(pycurl.CAINFO, self.ca_file)
        if self.ca_dir:
            c.setopt(pycurl.CAPATH, self.ca_dir)
        self._configure(c)
        return c

    def _configure(self, c) -> None:
        """Options of this client's handles beyond the common ones."""

    def _finish(self, st: _ThreadState, c, active: dict):
        _, req = active.pop(id(c))
        st.multi.remove_handle(c)
        self._idle(st, c)
        return req

    def _idle(self, st: _ThreadState, c) -> None:
        """``c`` back to the idle handles, done with its request."""
        st.idle.append(c)

    def _completed(self, st: _ThreadState, active: dict) -> list[tuple[object, int | None, tuple | None]]:
        """Drive the transfers, then (request, HTTP status, None) for each that got a response
        and (request, None, (curl error, message)) for each that failed, since the last call."""
        multi = st.multi
        ready, st.ready = st.ready, []
        for fd, events in ready:
            multi.socket_action(fd, _curl_mask(events))
        if multi.timeout() == 0:  # new requests to start, a timeout due, data libcurl has buffered
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        out = []
        while True:
            left, ok, failed = multi.info_read()
            for c in ok:
                status = c.getinfo(pycurl.RESPONSE_CODE)  # before the handle is reused
                out.append((self._finish(st, c, active), status, None))
            for c, errno, message in failed:
                out.append((self._finish(st, c, active), None, (errno, message)))
            if not left:
                return out

    def _wait_sockets(self, st: _ThreadState, cap: float, wake: int | None = None) -> None:
        """Until a socket of the transfers is ready, libcurl's timeout is due, or ``cap``
        seconds; ``wake``: a descriptor whose readability ends the wait too (it is not read)."""
        wait = st.multi.timeout()  # ms until libcurl wants to act on its own, -1: no deadline
        timeout = cap if wait < 0 else min(cap, wait / 1000)
        if wake is not None:
            st.poller.register(wake, select.POLLIN)
        try:
            found = st.poller.poll(timeout * 1000)
        finally:
            if wake is not None:
                st.poller.unregister(wake)
        st.ready = [(fd, events) for fd, events in found if fd != wake]

    def _release_all(self, st: _ThreadState, active: dict) -> None:
        """Drop the transfers still running (after a failure): their handles go back idle."""
        for c, _ in active.values():
            st.multi.remove_handle(c)
            self._idle(st, c)
        st.ready = []  # of this loop's sockets: never acted on in the next
        st.busy = False

    def _failed(self, method: str, req, status: int | None, error: tuple | None, reply: bytes, delayed: list,
                where: Callable[[str], str], stats) -> None:
        """After attempt ``req.attempt`` of ``method`` failed (an HTTP ``status`` with body
        ``reply``, or a libcurl ``error``): queue a retry in ``delayed`` after the policy's
        backoff, or raise StoreError naming the URL when no retry may fix it or none is left."""
        if error is not None:
            hint = _tls_hint(*error)
            retryable = error[0] not in _FINAL_CURL_ERRORS and hint is None
            why = f"{error[1] or 'libcurl error'} (curl error {error[0]})" + (f": {hint}" if hint else "")
        else:
            retryable = retryable_status(status)
            why = f"HTTP {status}: {bytes(reply[:200]).decode('utf-8', 'replace').strip()}"
        if not retryable:
            raise StoreError(f"{method} {where(req.key)} failed: {why}")
        if req.attempt >= self.retry.max_attempts:
            raise gave_up(StoreError(f"{method} {where(req.key)} failed after {req.attempt} attempts: {why}"))
        stats.add(retries=1)
        heapq.heappush(delayed, (time.monotonic() + self.retry.backoff(req.attempt), id(req), req))


def _discard(data: bytes) -> None:
    pass


class CurlGetter(CurlClient):
    """Whole-object GETs (see the module doc)."""

    def _idle(self, st: _ThreadState, c) -> None:
        # the callbacks hold the request and its buffer: an idle handle must not (a request
        # finished but not yet answered when a failure ended the fetch would keep its body)
        sink = st.sinks.get(id(c))
        if sink is not None:
            sink.stop()
        else:
            c.setopt(pycurl.WRITEFUNCTION, _discard)
            c.setopt(pycurl.HEADERFUNCTION, _discard)
        st.idle.append(c)

    def _finish(self, st: _ThreadState, c, active: dict):
        req = active[id(c)][1]
        if req.sink is not None:  # what the handle knows of the response, before it is reused
            req.size, req.encoding = req.sink.size(), req.sink.content_encoding()
            req.sink = None
        return super()._finish(st, c, active)

    @staticmethod
    def _sink(st: _ThreadState, c) -> curl_body.Sink | None:
        """Handle ``c``'s native sink, set up on its first request where that can be done."""
        sink = st.sinks.get(id(c))
        if sink is None and curl_body.curl() is not None:
            sink = st.sinks[id(c)] = curl_body.sink_for(c, st.pauses)
        return sink

    @staticmethod
    def _resume_paused(st: _ThreadState, active: dict) -> None:
        """Give the transfers that paused for room (a body outgrew its buffer) a bigger one."""
        st.pauses[0] = 0
        for c, req in active.values():
            if req.sink is not None:
                bigger = req.sink.grow(c, req.buf)
                if bigger is not None:
                    req.buf = bigger

    def _configure(self, c) -> None:
        # Bodies are received up to 512 KiB a call, as TensorStore's libcurl does, not 16 KiB:
        # a tenth of the receive calls and of the write callbacks into Python (a 150^3 zstd
        # cutout made 490 of them); client CPU of S3 reads -6 to -12 %, interleaved A/B. Only
        # where libcurl lends one buffer per multi handle to the transfer being read (8.7.0):
        # before, each of the up to 32 idle handles per thread kept a buffer of that size.
        if pycurl.version_info()[2] >= SHARED_RECEIVE_BUFFER_CURL:
            c.setopt(pycurl.BUFFERSIZE, RECEIVE_BUFFER_BYTES)
        if self.signer is None:  # anonymous HTTP follows redirects, as obstore does (a signature would not)
            c.setopt(pycurl.FOLLOWLOCATION, 1)
            c.setopt(pycurl.MAXREDIRS, 10)

    def fetch(self, keys: list[str], done: Callable[[str, bytes | None, str], None], *, where: Callable[[str], str],
              stats, max_in_flight: int, heavy: bool = False) -> None:
        """Call ``done(key, body, content_encoding)`` for each of ``keys`` as it arrives (body None
        when the object is absent). It runs in this thread, or on worker loops when the work
        behind it is heavy: ``heavy`` (say, chunks to decompress) or a body that needs decoding.
        A key that still fails after the retry policy's attempts raises StoreError naming its
        URL; the other keys may or may not have been done by then."""
        if not keys:
            return
        st = self._state()
        st.busy = True
        pending = collections.deque(_Request(k) for k in keys)
        delayed: list[tuple[float, int, _Request]] = []  # (ready time, tiebreak, request)
        active: dict[int, tuple[object, _Request]] = {}
        buffers = _process_buffers()
        workers = _Workers(done, buffers) if heavy else None

        def deliver(req: _Request, found: bool, encoding: str) -> None:
            """Hand on ``req``'s body (None when not ``found``); its buffer is reused after."""
            nonlocal workers
            if workers is None and encoding:
                workers = _Workers(done, buffers)
            if workers is not None:
                workers.put(req, found, encoding)
                return
            view = req.body() if found else None
            try:
                done(req.key, view, encoding)
            finally:
                _release(view, req, buffers)

        try:
            while pending or delayed or active:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    pending.append(heapq.heappop(delayed)[2])
                while pending and len(active) + (workers.backlog() if workers else 0) < max_in_flight:
                    self._start(st, pending.popleft(), active)
                if workers is not None:
                    workers.check()
                if not active:  # waiting for a retry's backoff, or for the workers to catch up
                    wait = max(0.0, delayed[0][0] - now) if delayed else 1.0
                    if workers is not None:
                        workers.wait_progress(wait)
                    else:
                        time.sleep(wait)
                    continue
                completed = self._completed(st, active)
                if st.pauses[0]:
                    self._resume_paused(st, active)
                for req, status, error in completed:
                    stats.add(requests=1, bytes_read=req.size if status is not None and 200 <= status < 300 else 0)
                    self._answer(req, status, error, delayed, where, stats, deliver)
                if active and not (completed and pending):  # a freed slot is refilled before waiting
                    self._wait_sockets(st, 0.005 if (delayed or workers is not None) else 1.0)
            if workers is not None:
                workers.close()
                workers = None
        finally:
            for _, req in active.values():
                req.buf = None  # the idle handle's write callback must not keep it
            for _, _, req in delayed:
                req.buf = None
            self._release_all(st, active)
            if workers is not None:
                workers.close(raise_errors=False)

    def _start(self, st: _ThreadState, req: _Request, active: dict) -> None:
        c = self._handle(st)
        path = self._path(req.key)
        headers = self.signer.headers(self.host, path) + self.headers if self.signer is not None else self.headers
        buffers = _process_buffers()
        buffers.give(req.buf)  # a retry's first attempt
        req.size, req.headers, req.encoding = 0, [], ""
        c.setopt(pycurl.URL, self.base + path)
        c.setopt(pycurl.HTTPHEADER, headers)
        sink = req.sink = self._sink(st, c)
        if sink is not None:
            req.buf = sink.start(buffers.take())
        else:
            req.buf = buffers.take()
            c.setopt(pycurl.WRITEFUNCTION, req.write)
            c.setopt(pycurl.HEADERFUNCTION, req.headers.append)
        active[id(c)] = (c, req)
        st.multi.add_handle(c)

    def _answer(self, req: _Request, status: int | None, error, delayed: list, where, stats, deliver) -> None:
        req.attempt += 1
        if status is not None and 200 <= status < 300:  # as obstore: any success is the value
            deliver(req, True, req.encoding or _header(req.headers, b"content-encoding:"))
            return
        if status == 404:
            deliver(req, False, "")
            return
        reply = bytes(req.buf[:min(req.size, 200)]) if req.buf is not None else b""
        _process_buffers().give(req.buf)  # an error page: kept by the idle handle's write callback otherwise
        req.buf = None
        self._failed("GET", req, status, error, reply, delayed, where, stats)


def _release(view: memoryview | None, req: _Request, buffers: _Buffers) -> None:
    """After ``done`` has had ``req``'s body: its buffer back to ``buffers``, for the next,
    unless the callee still holds an export of the view itself (a ``PickleBuffer``, say): then
    the buffer is left to it."""
    buf, req.buf = req.buf, None
    if view is not None:
        try:
            view.release()
        except BufferError:
            return
    buffers.give(buf)


def _header(lines: list[bytes], name: bytes) -> str:
    """Header ``name`` of the last response (after redirects, each response's lines follow its
    status line)."""
    n, first = len(name), name[:1] + name[:1].upper()
    for line in reversed(lines):
        if line[:1] in first and line[:n].lower() == name:  # lower() only lines that may match: ~14 a response
            return line[n:].decode("latin-1").strip()
        if line[:5] == b"HTTP/":
            break
    return ""


class _Workers:
    """Loops on the engine's pool that run ``done`` for the bodies the driver hands over, so
    heavy decoding overlaps with the transfers (one thread doing both would stall them)."""

    def __init__(self, done: Callable[[str, memoryview | None, str], None], buffers: _Buffers):
        from ..engine.parallel import default_threads, pool

        self.done, self.buffers = done, buffers
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: list[BaseException] = []
        self.put_count = 0  # written by the driver only
        self.done_counts = [0] * default_threads()  # slot i written by worker i only
        self.progress = threading.Event()  # set by a worker after each item
        self.futures = [pool().submit(self._loop, i) for i in range(len(self.done_counts))]

    def backlog(self) -> int:
        return self.put_count - sum(self.done_counts)

    def put(self, req: _Request, found: bool, encoding: str) -> None:
        self.put_count += 1
        self.queue.put((req, found, encoding))

    def _loop(self, i: int) -> None:
        from ..engine.parallel import inline

        with inline():  # nested local work (a decode's own loops) runs here: the workers fill the cores
            while True:
                item = self.queue.get()
                if item is None:
                    return
                req, found, encoding = item
                view = None
                try:
                    view = req.body() if found else None
                    if not self.errors:
                        self.done(req.key, view, encoding)
                except BaseException as e:
                    self.errors.append(e)
                finally:
                    try:  # after a failure too: the error (its traceback holds the request) must not keep the buffer
                        _release(view, req, self.buffers)
                    finally:  # counted whatever happened: the driver waits on these counts
                        self.done_counts[i] += 1
                        self.progress.set()

    def wait_progress(self, timeout: float) -> None:
        """Until a worker finishes an item (or ``timeout`` seconds)."""
        self.progress.wait(timeout)
        self.progress.clear()

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def close(self, raise_errors: bool = True) -> None:
        for _ in self.futures:
            self.queue.put(None)
        for f in self.futures:
            f.result()
        if raise_errors:
            self.check()
