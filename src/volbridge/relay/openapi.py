"""The relay's OpenAPI document (served at ``/openapi.json``), so clients and fuzzers (schemathesis)
know every route, parameter and response shape."""

from __future__ import annotations

NAME = {"type": "string", "pattern": r"^[\w-]+$"}
RANGE = {"type": "string", "pattern": r"^-?\d+:-?\d+$", "description": "half-open start:stop"}
RES = {"type": "string", "pattern": r"^\d$"}
ERROR = {
    "description": "an error",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["status", "code", "message"],
        "properties": {"status": {"type": "integer"}, "code": {"type": "integer"}, "message": {"type": "string"}},
    }}},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
AUTH = [{"token": []}, {}]


def _params(path: str, **query) -> list[dict]:
    kinds = {"c": NAME, "e": NAME, "ch": NAME, "cf": NAME, "res": RES, "x": RANGE, "y": RANGE, "z": RANGE, "t": RANGE,
             "num": {"type": "string", "pattern": r"^\d+$"}, "id": {"type": "string", "pattern": r"^\d+$"},
             "scale": {"type": "string", "pattern": r"^\d+$"}, "name": {"type": "string"}, "path": {"type": "string"}}
    out = []
    for part in path.split("/"):
        if part.startswith("{"):
            name = part.strip("{}")
            out.append({"name": name, "in": "path", "required": True, "schema": kinds[name]})
    for name, schema in query.items():
        out.append({"name": name.replace("_", "-"), "in": "query", "required": False, "schema": schema})
    return out


def _op(summary: str, path: str, responses: dict, query: dict | None = None, body: dict | None = None) -> dict:
    op = {"summary": summary, "parameters": _params(path, **(query or {})), "security": AUTH,
          "responses": {**responses, "400": ERROR, "401": ERROR, "403": ERROR, "404": ERROR}}
    if body:
        op["requestBody"] = body
    return op


def _json(*required: str) -> dict:
    return {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object", "required": list(required)}}}}}


def document() -> dict:
    cut = "/v1/cutout/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/"
    media = {k: BINARY for k in ("application/blosc", "application/npygz")}
    got = {"200": {"description": "the cutout, C-ordered (z, y, x)", "content": {k: BINARY for k in ("application/blosc", "application/npygz", "image/jpeg")}},
           "406": ERROR, "413": ERROR, "502": ERROR, "504": ERROR}
    posted = {"201": {"description": "written"}, "413": ERROR, "415": ERROR, "502": ERROR, "504": ERROR}
    cq = {"access_mode": {"type": "string", "enum": ["cache", "no-cache", "raw"]}, "filter": {"type": "string"},
          "iso": {"type": "string", "enum": ["true", "false"]}}
    paths = {
        "/v1/collection/": {"get": _op("list collections", "/", _json("collections"))},
        "/v1/collection/{c}/": {"get": _op("a collection", "/{c}", _json("name", "description", "creator"))},
        "/v1/collection/{c}/experiment/": {"get": _op("list experiments", "/{c}", _json("experiments"))},
        "/v1/collection/{c}/experiment/{e}/": {"get": _op("an experiment", "/{c}/{e}", _json("name", "coord_frame", "num_hierarchy_levels"))},
        "/v1/collection/{c}/experiment/{e}/channel/": {"get": _op("list channels", "/{c}/{e}", _json("channels"))},
        "/v1/collection/{c}/experiment/{e}/channel/{ch}/": {"get": _op("a channel", "/{c}/{e}/{ch}", _json("name", "datatype", "type", "storage_type"))},
        "/v1/coord/": {"get": _op("list coordinate frames", "/", _json("coords"))},
        "/v1/coord/{cf}/": {"get": _op("a coordinate frame", "/{cf}", _json("name", "x_start", "x_stop"))},
        cut: {
            "get": _op("read a cutout", cut, got, cq),
            "post": _op("write a cutout", cut, posted, body={"required": True, "content": media}),
        },
        cut + "{t}/": {
            "get": _op("read a time cutout", cut + "{t}", got, cq),
            "post": _op("write a time cutout", cut + "{t}", posted, body={"required": True, "content": media}),
        },
        "/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/": {
            "put": _op("zero a region", "/{c}/{e}/{ch}/{res}/{x}/{y}/{z}", {"200": {"description": "zeroed"}, "413": ERROR, "502": ERROR}),
        },
        "/v1/downsample/{c}/{e}/{ch}/": {"get": _op("downsample status, voxel sizes and extents", "/{c}/{e}/{ch}", _json("status", "num_hierarchy_levels", "voxel_size", "extent"))},
        "/v1/reserve/{c}/{e}/{ch}/{num}": {"get": _op("reserve ids", "/{c}/{e}/{ch}/{num}", _json("start_id", "count"))},
        "/v1/ids/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/": {"get": _op("ids in a region", "/{c}/{e}/{ch}/{res}/{x}/{y}/{z}", {**_json("ids"), "413": ERROR, "502": ERROR})},
        "/v1/boundingbox/{c}/{e}/{ch}/{res}/{id}/": {"get": _op("bounding box of an id", "/{c}/{e}/{ch}/{res}/{id}",
                                                             {**_json("x_range", "y_range", "z_range"), "502": ERROR},
                                                             {"type": {"type": "string", "enum": ["loose", "tight"]}})},
        "/v1/meta/{path}": {"get": _op("key-value metadata (none kept)", "/{path}", _json(), {"key": {"type": "string"}})},
        "/{c}/{e}/{ch}/info": {"get": _op("precomputed info", "/{c}/{e}/{ch}", _json("scales", "data_type"))},
        "/{c}/{e}/{ch}/{scale}/{name}": {"get": _op("a precomputed chunk (raw)", "/{c}/{e}/{ch}/{scale}/{name}",
                                                   {"200": {"description": "chunk bytes", "content": {"application/octet-stream": BINARY}}, "502": ERROR})},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "volbridge relay", "version": "1", "description": "BossDB REST dialect (v1) and precomputed over HTTP"},
        "paths": paths,
        "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
    }
