"""Response bodies that libcurl writes straight into a reused buffer, with no Python in between.

pycurl hands each piece of a body to a Python write callback as a new bytes object: a 256^3
zstd read over S3 made ~840 such calls (libcurl's receives bring ~16 KiB each on loopback, what
the server has sent so far), each a bytes object (one copy) then copied into the body's buffer
(another), and ~14 header lines a response each a Python call too: ~1/8 of the client's CPU
where tensorstore's C++ appends in place. Here an easy handle gets the engine's compiled
callbacks (:func:`volbridge.engine.native._emit_body_write`): bodies are copied once, from
libcurl's receive buffer into ours; headers are dropped as they come and the one the getter
needs (Content-Encoding) asked of libcurl afterwards (``curl_easy_header``, libcurl 7.83).

The callbacks are set on pycurl's own handles through libcurl's C API, for which the handle's
``CURL *`` is read from the pycurl object (pycurl >= 7.44 keeps it after its attribute dict and
weak-reference list) and checked before any use: libcurl must give back, as the handle's
``CURLINFO_PRIVATE``, the pycurl object itself (pycurl sets it so). Where any of that does not
hold (another pycurl layout, a libcurl without ``curl_easy_header``, the engine's loops not
built yet, ``VOLBRIDGE_CURL_NATIVE=0``), the getter keeps pycurl's Python callbacks.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import numpy as np
import pycurl

from ..engine import native

_WRITEFUNCTION, _WRITEDATA, _HEADERFUNCTION = 20011, 10001, 20079
_INFO_PRIVATE, _INFO_CONTENT_LENGTH = 0x100015, 0x600000 + 15  # CURLINFO_PRIVATE, CONTENT_LENGTH_DOWNLOAD_T
_CURLH_HEADER = 1  # curl_easy_header's origin: response headers (not trailers, 1xx or CONNECT)
_SLOT = {name: j for j, name in enumerate(native.BODY_SINK_SLOTS)}

#: The least buffer a body starts in; a body that outgrows it gets one of the length announced.
#: (Not a chunk's decoded size: compressed bodies are often far smaller, and the buffers kept
#: for reuse settle at the sizes that came.)
FIRST_BYTES = 64 << 10


class _Header(ctypes.Structure):
    """libcurl's ``struct curl_header``: its first two fields, all that is read."""

    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class _Curl:
    """The libcurl functions pycurl's handles are driven with, and the engine's callbacks."""

    def __init__(self, lib: ctypes.CDLL, loops: native.Loops):
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        self.setopt = lib.curl_easy_setopt
        self.setopt.restype = ctypes.c_int
        self.getinfo = lib.curl_easy_getinfo
        self.getinfo.restype = ctypes.c_int
        self.header = lib.curl_easy_header
        self.header.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                ctypes.POINTER(ctypes.POINTER(_Header))]
        self.header.restype = ctypes.c_int
        self.body_write, self.discard_header = vp(loops.body_write), vp(loops.discard_header)
        self.memcpy = ctypes.cast(ctypes.CDLL(None).memcpy, vp).value
        self.offset = object.__basicsize__ + 2 * ctypes.sizeof(vp)  # after pycurl's dict and weakreflist
        self.i64 = i64

    def easy(self, c) -> int | None:
        """The ``CURL *`` of pycurl handle ``c``, or None when it cannot be found for sure."""
        address = ctypes.c_void_p.from_address(id(c) + self.offset).value
        if not address:
            return None
        private = ctypes.c_void_p()
        if self.getinfo(ctypes.c_void_p(address), _INFO_PRIVATE, ctypes.byref(private)) != 0 or private.value != id(c):
            return None
        return address


@functools.cache
def _library() -> ctypes.CDLL | None:
    """pycurl's libcurl (its own copy in a wheel): symbols looked up through pycurl's module, whose
    dependencies include the libcurl it was linked with."""
    module = sys.modules.get("pycurl._pycurl", pycurl)
    path = getattr(module, "__file__", None) or ""
    if not path.endswith(".so"):
        return None
    try:
        lib = ctypes.CDLL(path)
        for name in ("curl_easy_setopt", "curl_easy_getinfo", "curl_easy_header"):
            getattr(lib, name)
    except (OSError, AttributeError):
        return None
    return lib


_curl: list[_Curl | None | bool] = [None]  # None: not tried yet; False: not available here


def curl() -> _Curl | None:
    """The native path's functions, once the engine's loops are built (never waiting for them)."""
    found = _curl[0]
    if found is None:
        if os.environ.get("VOLBRIDGE_CURL_NATIVE", "1") == "0" or ctypes.sizeof(ctypes.c_void_p) != 8:
            found = _curl[0] = False
        else:
            from ..engine import place

            if not place.ready():  # not built yet: pycurl's callbacks meanwhile (asked again next time)
                return None
            lib, loops = _library(), native.loops()
            found = _curl[0] = _Curl(lib, loops) if lib is not None and loops is not None else False
    return found or None


class Sink:
    """Where the engine's write callback puts one easy handle's bodies: an int64 block
    (:data:`native.BODY_SINK_SLOTS`) the handle's ``CURLOPT_WRITEDATA`` points at, and the
    buffer of the request it is receiving."""

    __slots__ = ("curl", "easy", "block", "pin")

    def __init__(self, curl: _Curl, easy: int, pauses: np.ndarray):
        self.curl, self.easy = curl, easy
        self.block = np.zeros(len(native.BODY_SINK_SLOTS), np.int64)
        self.block[_SLOT["memcpy"]] = curl.memcpy
        self.block[_SLOT["pauses"]] = pauses.ctypes.data  # the driver's count of paused transfers
        self.pin = None  # an export of the buffer being written: it can be neither freed nor moved
        h = ctypes.c_void_p(easy)
        ok = (curl.setopt(h, _WRITEFUNCTION, curl.body_write) == 0
              and curl.setopt(h, _WRITEDATA, ctypes.c_void_p(self.block.ctypes.data)) == 0
              and curl.setopt(h, _HEADERFUNCTION, curl.discard_header) == 0)
        if not ok:
            raise RuntimeError("libcurl refused volbridge's write callback")

    def start(self, buf: bytearray) -> bytearray:
        """Receive the next body into ``buf`` (a new buffer of :data:`FIRST_BYTES` where it is
        smaller); returns the buffer in use."""
        if len(buf) < FIRST_BYTES:
            buf = bytearray(FIRST_BYTES)
        self._point(buf, 0)
        return buf

    def _point(self, buf: bytearray, size: int) -> None:
        pin = (ctypes.c_char * len(buf)).from_buffer(buf)
        block = self.block
        block[0], block[1], block[2], block[3] = ctypes.addressof(pin), len(buf), size, 0
        self.pin = pin

    def size(self) -> int:
        return int(self.block[2])

    def grow(self, c, buf: bytearray) -> bytearray | None:
        """If the transfer on pycurl handle ``c`` paused for room (its body outgrew ``buf``): a
        buffer big enough for the length the response announced (else twice as big) holding
        what came so far, the sink pointed at it and the transfer resumed; else None. Resumed
        through pycurl: libcurl may call pycurl's socket callback from inside, which runs only
        within a pycurl call."""
        block = self.block
        need = int(block[3])
        if not need:
            return None
        size = int(block[2])
        announced = ctypes.c_int64(-1)
        self.curl.getinfo(ctypes.c_void_p(self.easy), _INFO_CONTENT_LENGTH, ctypes.byref(announced))
        bigger = bytearray(max(need, announced.value, 2 * len(buf)))
        bigger[:size] = memoryview(buf)[:size]
        self.pin = None
        self._point(bigger, size)
        c.pause(pycurl.PAUSE_CONT)
        return bigger

    def stop(self) -> None:
        """Done with the current buffer (the transfer finished or was dropped): the callback
        writes nothing more anywhere, and the buffer may be freed or resized again."""
        block = self.block
        block[0] = block[1] = block[2] = block[3] = 0
        self.pin = None

    def content_encoding(self) -> str:
        """The last response's Content-Encoding ('' when none)."""
        found = ctypes.POINTER(_Header)()
        if self.curl.header(ctypes.c_void_p(self.easy), b"Content-Encoding", 0, _CURLH_HEADER, -1, ctypes.byref(found)) != 0:
            return ""
        return (found.contents.value or b"").decode("latin-1").strip()


def sink_for(c, pauses: np.ndarray) -> Sink | None:
    """A native sink for pycurl handle ``c`` (callbacks set on it), or None where the native
    path is not available (the handle keeps pycurl's callbacks)."""
    native_curl = curl()
    if native_curl is None:
        return None
    easy = native_curl.easy(c)
    if easy is None:  # not this pycurl's layout: never again in this process
        _curl[0] = False
        return None
    return Sink(native_curl, easy, pauses)
