"""What every dialect reads from a request: the caller's token and a body bounded in bytes."""

from __future__ import annotations

from starlette.requests import Request

from .errors import TOO_LARGE, RelayError


def token_of(request: Request) -> str | None:
    """The token of ``Authorization: Token <t>`` (intern) or ``Bearer <t>`` (neuroglancer)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RelayError(413, TOO_LARGE, f"the request body ({length} bytes) exceeds the {limit} bytes this cutout can need")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RelayError(413, TOO_LARGE, f"the request body exceeds the {limit} bytes this cutout can need")
        chunks.append(chunk)
    return b"".join(chunks)
