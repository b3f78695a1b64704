"""The relay's ASGI application: routes, CORS, error bodies, the status page and metrics."""

from __future__ import annotations

import html
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from ..errors import VolbridgeError
from . import boss, dvid, openapi, precomputed_http
from .config import RelayConfig
from .errors import INTERNAL, RelayError, error_response, from_library, redact
from .requests import token_of
from .state import Relay

log = logging.getLogger("volbridge.relay")


#: Request kinds counted in /metrics; anything else is "other", so a client cannot add labels.
BOSS_KINDS = {"collection", "coord", "cutout", "downsample", "reserve", "ids", "boundingbox", "meta", "ping"}
DVID_KINDS = {"server", "repos", "repo", "info", "raw", "label", "labels", "sparsevol", "extents", "commit", "status",
              "branch", "newversion", "log"}


def _kind(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[0] in ("v1", "latest") and len(parts) > 1:
        return parts[1] if parts[1] in BOSS_KINDS else "other"
    if parts[0] == "api":
        name = parts[4] if len(parts) > 4 and parts[1] == "node" else parts[3] if len(parts) == 4 and parts[1] == "node" else parts[1] if len(parts) > 1 else ""
        return "dvid_" + name if name in DVID_KINDS else "other"
    if len(parts) == 4 and parts[3] == "info":
        return "precomputed_info"
    if len(parts) == 5:
        return "precomputed_chunk"
    return {"": "status", "metrics": "metrics", "openapi.json": "openapi", "ping": "ping"}.get(parts[0], "other")


def _label(value) -> str:
    """A Prometheus label value, escaped as the text format says."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def status_json(relay: Relay, token: str | None) -> dict:
    """Cache tiers, counters, and the channels ``token`` may read."""
    tiers = []
    for kind, tier in relay.tiers():
        s = tier.stats
        looked = s.hits + s.misses
        tiers.append({"tier": kind, "bytes_cached": s.bytes_cached, "max_bytes": tier.max_bytes, "entries": s.entries,
                      "hits": s.hits, "misses": s.misses, "hit_rate": (s.hits / looked) if looked else None, "evictions": s.evictions})
    sources = []
    visible = set(relay.visible(token))
    for name, src in relay.snapshot().items():
        if name not in visible:
            continue
        st = src.upstream.stats
        sources.append({"name": name, "upstream": redact(src.url), "format": src.volume.format_name, "dtype": str(src.meta.dtype),
                        "scales": src.scale_count(), "public": relay.allowed(None, "read", name), "writable": src.writable,
                        "upstream_requests": st.requests, "upstream_bytes": st.bytes_read})
    return {"uptime_s": round(time.time() - relay.started, 1), "tiers": tiers, "sources": sources,
            "requests": sum(relay.requests.values()), "bytes_served": relay.bytes_served}


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


async def status_page(request: Request):
    relay: Relay = request.app.state.relay
    s = status_json(relay, token_of(request))
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(s)
    esc = html.escape
    rows_t = "".join(
        f"<tr><td>{t['tier']}</td><td>{t['bytes_cached']:,} / {t['max_bytes']:,}</td><td>{t['entries']}</td>"
        f"<td>{t['hits']}</td><td>{t['misses']}</td><td>{_percent(t['hit_rate'])}</td></tr>"
        for t in s["tiers"]
    )
    rows_s = "".join(
        f"<tr><td>{esc(x['name'])}</td><td>{esc(x['upstream'])}</td><td>{esc(x['format'])}</td><td>{esc(x['dtype'])}</td>"
        f"<td>{x['scales']}</td><td>{x['upstream_requests']}</td><td>{x['upstream_bytes']:,}</td></tr>"
        for x in s["sources"]
    )
    page = (
        "<!doctype html><title>volbridge relay</title><h1>volbridge relay</h1>"
        f"<p>up {s['uptime_s']} s, {s['requests']} requests, {s['bytes_served']:,} bytes served</p>"
        "<h2>Cache tiers</h2><table border=1><tr><th>tier</th><th>bytes</th><th>entries</th><th>hits</th><th>misses</th><th>hit rate</th></tr>"
        f"{rows_t}</table><h2>Channels</h2><table border=1><tr><th>channel</th><th>upstream</th><th>format</th><th>dtype</th>"
        f"<th>scales</th><th>upstream requests</th><th>upstream bytes</th></tr>{rows_s}</table>"
    )
    return HTMLResponse(page)


def metrics_text(relay: Relay) -> str:
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP volbridge_relay_{name} {help_}")
        lines.append(f"# TYPE volbridge_relay_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"volbridge_relay_{name}{{{lab}}} {value}" if lab else f"volbridge_relay_{name} {value}")

    with relay._lock:
        reqs = [({"kind": k, "status": st}, n) for (k, st), n in sorted(relay.requests.items())]
        served = relay.bytes_served
    metric("requests_total", "counter", "HTTP requests by kind and status", reqs)
    metric("bytes_served_total", "counter", "response body bytes", [({}, served)])
    tiers = relay.tiers()
    for field, kind, help_ in (("hits", "counter", "cache hits"), ("misses", "counter", "cache misses"),
                               ("evictions", "counter", "cache evictions"), ("bytes_cached", "gauge", "bytes held"),
                               ("entries", "gauge", "entries held")):
        metric(f"cache_{field}" + ("_total" if kind == "counter" else ""), kind, help_,
               [({"tier": t}, getattr(c.stats, field)) for t, c in tiers])
    metric("cache_max_bytes", "gauge", "byte bound of the tier", [({"tier": t}, c.max_bytes) for t, c in tiers])
    metric("upstream_requests_total", "counter", "cuboid reads from upstreams", [({"channel": n}, s.upstream.stats.requests) for n, s in relay.snapshot().items()])
    metric("upstream_bytes_total", "counter", "bytes read from upstreams", [({"channel": n}, s.upstream.stats.bytes_read) for n, s in relay.snapshot().items()])
    return "\n".join(lines) + "\n"


async def metrics(request: Request):
    return PlainTextResponse(metrics_text(request.app.state.relay), media_type="text/plain; version=0.0.4")


async def openapi_json(request: Request):
    relay: Relay = request.app.state.relay
    visible = relay.visible(token_of(request))
    return JSONResponse(openapi.document(visible[0] if visible else None))


async def ping(request: Request):
    return JSONResponse({"status": "ok"})


async def relay_error(request: Request, exc: RelayError):
    return error_response(exc)


async def library_error(request: Request, exc: VolbridgeError):
    return error_response(from_library(exc))


async def http_exception(request: Request, exc):
    code = getattr(exc, "status_code", 500)
    return error_response(RelayError(code, 4000 if code == 404 else 1000, str(getattr(exc, "detail", "")) or "error"))


async def internal_error(request: Request, exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    response = error_response(RelayError(500, INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))
    # this handler answers outside the CORS middleware: without the header a browser (neuroglancer)
    # saw a CORS failure instead of the error (a review found)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


class CountingMiddleware:
    """Counts every response by route kind and status, and the bytes sent (for /metrics)."""

    def __init__(self, app, relay: Relay):
        self.app, self.relay = app, relay

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"status": 500, "bytes": 0}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.relay.count(_kind(scope["path"]), state["status"], state["bytes"])


def create_app(config: RelayConfig | Relay) -> Starlette:
    relay = config if isinstance(config, Relay) else Relay(config)
    routes = [
        Route("/", status_page),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/ping/", ping),
        Route("/v1/ping/", ping),
        *boss.routes("/v1"),
        *boss.routes("/latest"),
        *dvid.routes(),
        *precomputed_http.routes(),
    ]
    middleware = [
        Middleware(CountingMiddleware, relay=relay),
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "PUT", "OPTIONS"], allow_headers=["*"],
                   expose_headers=["Content-Encoding", "Content-Length", "Content-Range"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={RelayError: relay_error, VolbridgeError: library_error, HTTPException: http_exception, Exception: internal_error},
    )
    app.state.relay = relay
    return app

