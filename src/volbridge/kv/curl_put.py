"""Many whole-object PUTs to one S3 store at once, over libcurl's multi interface, driven by the
writing thread.

Why beside obstore: a write of many chunks through obstore is 32 Python threads each blocking in
a PUT, and their hand-offs cost ~140 us of client CPU per request (512 PUTs of 32^3 chunks: 238 ms
against TensorStore's 183). One thread driving libcurl keeps as many PUTs in flight for a third of
that: 103 ms, and the write's wall time at 1.04x TensorStore's (bench/results/s3_curl.md, session
20). Values come from an iterator that the driver pulls as slots free up; a value may be a Future
(a chunk compressed on the encoder threads), and the driver starts it once it is done, waking on
its completion as on a socket's.

Only blind overwrites come here; conditional PUTs (the read-modify-write of partial chunks) stay
on obstore. Requests are signed as obstore signs them (AWS Signature Version 4, the Content-Type
and any Content-Encoding signed, the payload hashed unless ``unsigned_payload``).
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import select
import socket
import time
from concurrent.futures import Future, wait
from typing import Callable, Iterable, Sequence

from .base import close_values
from .curl_get import CurlClient, _discard, _ThreadState, pycurl

#: Bytes of an error response kept for the message.
_REPLY_BYTES = 1024


class _Upload:
    __slots__ = ("key", "body", "attempt", "reply")

    def __init__(self, key: str, body: bytes):
        self.key, self.body, self.attempt, self.reply = key, body, 0, bytearray()

    def write(self, data: bytes) -> None:
        if len(self.reply) < _REPLY_BYTES:
            self.reply += data[: _REPLY_BYTES - len(self.reply)]


class CurlPutter(CurlClient):
    """Whole-object PUTs (see the module doc). ``unsigned_payload``: sign ``UNSIGNED-PAYLOAD``
    instead of the body's SHA-256 (over https, as :func:`volbridge.kv.cloud.s3_config` decides)."""

    def __init__(self, *args, unsigned_payload: bool = False, **kw):
        super().__init__(*args, **kw)
        self.unsigned_payload = unsigned_payload

    def _configure(self, c) -> None:
        c.setopt(pycurl.CUSTOMREQUEST, "PUT")

    def _idle(self, st: _ThreadState, c) -> None:
        # pycurl keeps a reference to the body it sends, and the write callback one to the
        # upload: an idle handle must hold neither (32 idle handles would keep 32 chunks)
        c.setopt(pycurl.POSTFIELDS, b"")
        c.setopt(pycurl.WRITEFUNCTION, _discard)
        st.idle.append(c)

    def put_each(self, keys: Sequence[str], values: Iterable[bytes | Future], *, where: Callable[[str], str], stats,
                 max_in_flight: int, content_type: Callable[[str], str], content_encoding: str | None = None) -> None:
        """PUT the matching one of ``values`` (bytes, or a Future of them) under each of ``keys``,
        at most ``max_in_flight`` at once, each retried as the policy says. A key that still fails
        raises StoreError naming its URL, as does a value's own exception; the other keys may or
        may not have been written by then."""
        st = self._state()
        ready: collections.deque[_Upload] = collections.deque()  # retries whose backoff is over
        delayed: list[tuple[float, int, _Upload]] = []  # (ready time, tiebreak, upload)
        active: dict[int, tuple[object, _Upload]] = {}
        head: tuple[str, Future] | None = None  # the next value, still being made
        more = True
        wake: list[socket.socket] = []  # (reader, writer): a made value wakes the wait for it
        try:
            st.busy = True
            items = zip(keys, values, strict=True)
            while True:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    ready.append(heapq.heappop(delayed)[2])
                while len(active) < max_in_flight:
                    if ready:
                        self._start(st, ready.popleft(), content_type, content_encoding, active)
                        continue
                    if len(active) + len(delayed) >= max_in_flight:
                        break  # bodies waiting out a backoff count against the bound too
                    if head is None:
                        item = next(items, None) if more else None
                        if item is None:
                            more = False
                            break
                        if not isinstance(item[1], Future):
                            self._start(st, _Upload(*item), content_type, content_encoding, active)
                            continue
                        head = item
                        if not wake:
                            wake.extend(socket.socketpair())
                            for s in wake:
                                s.setblocking(False)
                        # (a callback fires when the value is made, fails or is cancelled)
                        head[1].add_done_callback(lambda _f, w=wake[1]: _notify(w))
                    if not head[1].done():
                        break
                    self._start(st, _Upload(head[0], head[1].result()), content_type, content_encoding, active)
                    head = None
                if not active:
                    if head is None and not more and not delayed:
                        return
                    # nothing in flight: wait for the value being made, or for a retry's backoff
                    self._wait(st, False, delayed, head[1] if head is not None else None, wake)
                    continue
                completed = self._completed(st, active)
                for up, status, error in completed:
                    up.attempt += 1
                    if status is not None and 200 <= status < 300:
                        stats.add(requests=1, bytes_written=len(up.body))
                        up.body = None
                        continue
                    stats.add(requests=1)
                    self._failed("PUT", up, status, error, bytes(up.reply), delayed, where, stats)
                    up.reply = bytearray()
                room = len(active) < max_in_flight
                if not active or completed and room and (ready or head is not None or more):
                    continue  # a freed slot is refilled before waiting; with none in flight, no socket will wake it
                # the value being made matters only while a slot is free for it
                self._wait(st, True, delayed, head[1] if head is not None and room else None, wake)
        finally:
            self._release_all(st, active)
            for s in wake:
                s.close()
            if head is not None and not head[1].cancel():  # taken, being made: nothing runs on after the put
                wait([head[1]])
            close_values(values)

    def _start(self, st: _ThreadState, up: _Upload, content_type, content_encoding, active: dict) -> None:
        c = self._handle(st)
        path = self._path(up.key)
        if type(up.body) is not bytes:  # what POSTFIELDS takes
            up.body = bytes(up.body)
        body = up.body
        signed = [("content-type", content_type(up.key))]
        if content_encoding:
            signed.insert(0, ("content-encoding", content_encoding))
        if self.signer is not None:
            payload = "UNSIGNED-PAYLOAD" if self.unsigned_payload else hashlib.sha256(body).hexdigest()
            headers = self.signer.sign("PUT", self.host, path, payload, tuple(signed))
        else:
            headers = [f"{n}: {v}" for n, v in signed]
        headers.append("Expect:")  # no 100-continue round trip before each body
        c.setopt(pycurl.URL, self.base + path)
        c.setopt(pycurl.HTTPHEADER, headers + self.headers)
        c.setopt(pycurl.POSTFIELDS, body)
        c.setopt(pycurl.WRITEFUNCTION, up.write)
        active[id(c)] = (c, up)
        st.multi.add_handle(c)

    def _wait(self, st: _ThreadState, transfers: bool, delayed: list, pending: Future | None, wake: list) -> None:
        """Until libcurl has work (``transfers``: some are in flight), a retry's backoff ends, or
        the value ``pending`` is made."""
        timeout = 1.0
        if delayed:
            timeout = min(timeout, max(0.0, delayed[0][0] - time.monotonic()))
        if pending is not None and pending.done():
            return
        if transfers:
            self._wait_sockets(st, timeout, wake[0].fileno() if pending is not None else None)
        elif pending is not None:
            poller = select.poll()  # (not select: the socket may be numbered past 1024)
            poller.register(wake[0], select.POLLIN)
            poller.poll(timeout * 1000)
        else:
            time.sleep(timeout)
        if pending is not None:
            while True:  # drain every wake-up, including those of values already taken
                try:
                    if not wake[0].recv(4096):
                        break
                except (BlockingIOError, InterruptedError):
                    break


def _notify(w: socket.socket) -> None:
    try:
        w.send(b"\0")
    except OSError:  # closed: the put is over, or its buffer full (a wake-up is pending anyway)
        pass
