"""What every dialect reads from a request: the caller's token and a body bounded in bytes."""

from __future__ import annotations

import json

from starlette.requests import Request

from .errors import BAD_REQUEST, TOO_LARGE, RelayError


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes, what: str = "the body"):
    """JSON from a request body; NaN and Infinity (which Python's parser accepts) are refused."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise RelayError(400, BAD_REQUEST, f"{what} must be JSON: {e}") from None


async def json_object(request: Request) -> dict:
    """The body as a JSON object (an empty body is ``{}``), bounded to 1 MiB."""
    raw = await read_body(request, 1 << 20)
    if not raw.strip():
        return {}
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise RelayError(400, BAD_REQUEST, "the body must be a JSON object")
    return doc


def string_list(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise RelayError(400, BAD_REQUEST, f"{what} must be a list of strings")
    return [str(v) for v in value]


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


def weighted(header: str, what: str) -> list[tuple[str, float]]:
    """The (lower-cased value, q) pairs of a header of weighted choices (Accept,
    Accept-Encoding; RFC 9110 12.4.2), in the order listed; q defaults to 1."""
    out = []
    for part in header.split(","):
        value, *params = (p.strip() for p in part.split(";"))
        if not value:
            continue
        q = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(number)
                except ValueError:
                    raise RelayError(400, BAD_REQUEST, f"bad q value in {what}: {part.strip()!r}") from None
                if not 0 <= q <= 1:
                    raise RelayError(400, BAD_REQUEST, f"q must lie in 0..1 in {what}: {part.strip()!r}")
        out.append((value.lower(), q))
    return out


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header lets the response be gzipped: gzip (or ``*``, gzip not
    named) with q above 0. No header: not gzipped (identity is always acceptable)."""
    choices = dict(weighted(header or "", "Accept-Encoding"))
    q = choices.get("gzip", choices.get("x-gzip", choices.get("*", 0.0)))
    return q > 0
