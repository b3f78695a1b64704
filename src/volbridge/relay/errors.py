"""HTTP errors in the BossDB dialect's shape: ``{"status", "code", "message"}``.

Library errors map to statuses by what they mean for the client: its own mistake (400), missing
rights (401/403), a failing upstream (502, or 504 when it timed out), a bug of ours (500). The
message is the library's own, which names what was wrong; upstream credentials never appear in
them: stores name URLs, not keys, and every message is :func:`redact`-ed on its way out (a URL's
user info and query, where credentials hide in a config's upstream URLs, are cut).
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse

from ..errors import (
    AuthError,
    ChunkDecodeError,
    ReadOnlyError,
    StoreError,
    StoreTimeoutError,
    URLError,
    VolbridgeError,
)

# Codes, loosely BossDB's groups: 1xxx request, 2xxx media, 4xxx access and lookup, 5xxx upstream.
BAD_REQUEST = 1000
TOO_LARGE = 1001
UNSUPPORTED_MEDIA = 2000
UPSTREAM = 5000
UPSTREAM_TIMEOUT = 5001
INTERNAL = 5999


# user info runs to the last '@' before the path (a password may hold '@' and quotes)
_USER_INFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"?]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` (a URL, or a message naming URLs) with every URL's user info and query cut."""
    return _QUERY.sub(r"\1", _USER_INFO.sub(r"\1", text))


class RelayError(Exception):
    def __init__(self, status: int, code: int, message: str):
        message = redact(message)
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def from_library(e: VolbridgeError) -> RelayError:
    """The status of a library error raised while serving (request bodies are checked apart)."""
    msg = str(e)
    if isinstance(e, StoreTimeoutError):
        return RelayError(504, UPSTREAM_TIMEOUT, f"upstream timed out: {msg}")
    if isinstance(e, (StoreError, ChunkDecodeError)):
        return RelayError(502, UPSTREAM, f"upstream failed: {msg}")
    if isinstance(e, (AuthError, URLError)):  # the upstream refused the relay's token, or lost the resource:
        return RelayError(502, UPSTREAM, f"upstream refused: {msg}")  # not the client's request (sources are opened from the config)
    if isinstance(e, ReadOnlyError):
        return RelayError(403, 4003, msg)
    return RelayError(400, BAD_REQUEST, msg)


def error_response(err: RelayError) -> JSONResponse:
    return JSONResponse({"status": err.status, "code": err.code, "message": err.message}, status_code=err.status)
