"""Precomputed over HTTP: ``/<c>/<e>/<ch>/info`` and chunk keys for neuroglancer and CloudVolume.

The chunks are the relay's cached cuboids themselves (raw encoding), so a warm chunk costs one
cache lookup and, when the client accepts it, a fast gzip. An all-zero cuboid, cached as absent,
is served as zeros: precomputed readers differ in how they treat a 404 inside the bounds.
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


async def chunk(request: Request):
    _, src = _source(request)
    p = request.path_params
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
    ]

