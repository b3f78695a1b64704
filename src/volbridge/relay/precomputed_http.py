"""Precomputed over HTTP: ``/<c>/<e>/<ch>/info`` and chunk keys for neuroglancer and CloudVolume.

The chunks are the relay's cached cuboids themselves (raw encoding), so a warm chunk costs one
cache lookup and, when the client accepts it, a fast gzip. An all-zero cuboid, cached as absent,
is served as zeros: precomputed readers differ in how they treat a 404 inside the bounds.

A precomputed upstream's meshes, skeletons and segment properties (the directories its ``info``
names) are served as stored, byte ranges too (sharded meshes are read by ranges), not cached.
"""

from __future__ import annotations

import re

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..compression import gzip_fast
from .errors import RelayError
from .requests import accepts_gzip, token_of
from .state import Relay


def _source(request: Request):
    relay: Relay = request.app.state.relay
    p = request.path_params
    src = relay.source(p["c"], p["e"], p["ch"])
    relay.authorize(token_of(request), "read", src.name)
    return relay, src


async def info(request: Request):
    _, src = _source(request)
    return JSONResponse(src.info)


async def provenance(request: Request):
    _, src = _source(request)
    return JSONResponse({"description": f"relayed by volbridge from {src.name}", "sources": [], "processing": []})


RANGE = re.compile(r"bytes=(\d{1,15})-(\d{0,15})|bytes=-(\d{1,15})")


async def passed(request: Request, src=None, key: str | None = None):
    """A file of the upstream's mesh, skeleton or segment-properties directory, as stored."""
    if src is None:
        _, src = _source(request)
        key = request.path_params["path"]
    if not any(key.startswith(d + "/") for d in src.passed) or ".." in key.split("/"):
        raise RelayError(404, 4000, f"{key!r} is not a file {src.name} serves")
    store = src.volume.store
    header = request.headers.get("range")

    def work() -> tuple[bytes | None, str | None]:
        if header is None:
            return store.get(key), None
        m = RANGE.fullmatch(header.strip())
        if m is None:
            raise RelayError(416, 4000, f"Range {header!r}: the relay serves one byte range (bytes=a-b, a-, -n)")
        st = store.stat(key)
        if st is None:
            return None, None
        size = st.size
        if m.group(3) is not None:
            start, end = max(0, size - int(m.group(3))), size
        else:
            start, end = int(m.group(1)), min(size, int(m.group(2)) + 1) if m.group(2) else size
        if start >= end:
            raise RelayError(416, 4000, f"Range {header!r} is outside the {size} bytes of {key}")
        return store.get_range(key, start, end), f"bytes {start}-{end - 1}/{size}"

    body, content_range = await run_in_threadpool(work)
    if body is None:
        raise RelayError(404, 4000, f"no {key!r} in {src.name}")
    if content_range is not None:
        return Response(body, status_code=206, media_type="application/octet-stream", headers={"Content-Range": content_range})
    return Response(body, media_type="application/json" if key.endswith("/info") else "application/octet-stream")


async def chunk(request: Request):
    _, src = _source(request)
    p = request.path_params
    if p["scale"] in src.passed or any(d.startswith(p["scale"] + "/") for d in src.passed):
        return await passed(request, src, f"{p['scale']}/{p['name']}")
    if not re.fullmatch(r"0|[1-9][0-9]{0,3}", p["scale"]) or int(p["scale"]) >= src.scale_count():  # (ASCII digits: isdigit takes '²')
        raise RelayError(404, 4000, f"no scale {p['scale']!r} in {src.name}")
    scale = int(p["scale"])

    def work() -> bytes:
        found = src.cuboid(scale, p["name"])
        if found is None:
            raise RelayError(404, 4000, f"{p['name']!r} is not a chunk of scale {scale} of {src.name}")
        box, raw = found
        if raw is None:
            nbytes = box.size * src.meta.num_channels * np.dtype(src.meta.dtype).itemsize
            raw = bytes(nbytes)
        return raw

    raw = await run_in_threadpool(work)
    headers = {"Vary": "Accept-Encoding"}  # a shared cache must not hand the gzip body to a client that refused it
    if accepts_gzip(request.headers.get("accept-encoding")):
        raw = await run_in_threadpool(gzip_fast, raw)  # time counts more than size on a relay's warm path
        headers["Content-Encoding"] = "gzip"
    return Response(raw, media_type="application/octet-stream", headers=headers)


def routes() -> list[Route]:
    return [
        Route("/{c}/{e}/{ch}/info", info),
        Route("/{c}/{e}/{ch}/provenance", provenance),
        Route("/{c}/{e}/{ch}/{scale}/{name}", chunk),
        Route("/{c}/{e}/{ch}/{path:path}", passed),
    ]

