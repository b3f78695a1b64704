"""The relay's OpenAPI document (served at ``/openapi.json``), so clients and fuzzers (schemathesis)
know every route, parameter and response shape."""

from __future__ import annotations

import functools

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


EXAMPLES = {"res": "0", "x": "0:64", "y": "0:64", "z": "0:4", "t": "0:1", "num": "3", "id": "1", "scale": "0",
            "name": "0-64_0-64_0-16", "size": "64_64_64", "offset": "0_0_0", "point": "1_1_1", "label": "1"}


def _params(path: str, example: dict, **query) -> list[dict]:
    kinds = {"c": NAME, "e": NAME, "ch": NAME, "cf": NAME, "res": RES, "x": RANGE, "y": RANGE, "z": RANGE, "t": RANGE,
             "num": {"type": "string", "pattern": r"^\d+$"}, "id": {"type": "string", "pattern": r"^\d+$"},
             "scale": {"type": "string", "pattern": r"^\d+$"}, "name": {"type": "string"}, "path": {"type": "string"},
             "uuid": {"type": "string", "pattern": r"^[0-9a-f]{1,32}$"}, "data": NAME, "label": {"type": "string", "pattern": r"^\d+$"},
             "size": {"type": "string", "pattern": r"^\d+_\d+_\d+$"}, "offset": {"type": "string", "pattern": r"^-?\d+_-?\d+_-?\d+$"},
             "point": {"type": "string", "pattern": r"^-?\d+_-?\d+_-?\d+$"}}
    out = []
    for part in path.split("/"):
        if part.startswith("{"):
            name = part.strip("{}")
            param = {"name": name, "in": "path", "required": True, "schema": kinds[name]}
            if name in example:
                param["example"] = example[name]
            out.append(param)
    for name, schema in query.items():
        out.append({"name": name.replace("_", "-"), "in": "query", "required": False, "schema": schema})
    return out


def _op(example: dict, summary: str, path: str, responses: dict, query: dict | None = None, body: dict | None = None) -> dict:
    op = {"summary": summary, "parameters": _params(path, example, **(query or {})), "security": AUTH,
          "responses": {**responses, "400": ERROR, "401": ERROR, "403": ERROR, "404": ERROR}}
    if body:
        op["requestBody"] = body
    return op


def _json(*required: str) -> dict:
    return {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object", "required": list(required)}}}}}


def document(channel: str | None = None) -> dict:
    """The document; ``channel`` (c/e/ch), when given, is the example for every channel parameter,
    so a fuzzer's example phase reaches real data."""
    example = dict(EXAMPLES)
    if channel:
        c, e, ch = channel.split("/")
        from .dvid import repo_uuid

        example.update({"c": c, "e": e, "ch": ch, "cf": f"{c}_{e}", "path": channel, "uuid": repo_uuid(c, e), "data": ch})
    op = functools.partial(_op, example)
    cut = "/v1/cutout/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/"
    media = {k: BINARY for k in ("application/blosc", "application/npygz")}
    got = {"200": {"description": "the cutout, C-ordered (z, y, x)", "content": {k: BINARY for k in ("application/blosc", "application/npygz", "image/jpeg")}},
           "406": ERROR, "413": ERROR, "502": ERROR, "504": ERROR}
    posted = {"201": {"description": "written"}, "413": ERROR, "415": ERROR, "502": ERROR, "504": ERROR}
    cq = {"access_mode": {"type": "string", "enum": ["cache", "no-cache", "raw"]}, "filter": {"type": "string"},
          "iso": {"type": "string", "enum": ["true", "false"]}}
    paths = {
        "/v1/collection/": {"get": op("list collections", "/", _json("collections"))},
        "/v1/collection/{c}/": {"get": op("a collection", "/{c}", _json("name", "description", "creator"))},
        "/v1/collection/{c}/experiment/": {"get": op("list experiments", "/{c}", _json("experiments"))},
        "/v1/collection/{c}/experiment/{e}/": {"get": op("an experiment", "/{c}/{e}", _json("name", "coord_frame", "num_hierarchy_levels"))},
        "/v1/collection/{c}/experiment/{e}/channel/": {"get": op("list channels", "/{c}/{e}", _json("channels"))},
        "/v1/collection/{c}/experiment/{e}/channel/{ch}/": {"get": op("a channel", "/{c}/{e}/{ch}", _json("name", "datatype", "type", "storage_type"))},
        "/v1/coord/": {"get": op("list coordinate frames", "/", _json("coords"))},
        "/v1/coord/{cf}/": {"get": op("a coordinate frame", "/{cf}", _json("name", "x_start", "x_stop"))},
        cut: {
            "get": op("read a cutout", cut, got, cq),
            "post": op("write a cutout", cut, posted, body={"required": True, "content": media}),
        },
        cut + "{t}/": {
            "get": op("read a time cutout", cut + "{t}", got, cq),
            "post": op("write a time cutout", cut + "{t}", posted, body={"required": True, "content": media}),
        },
        "/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/": {
            "put": op("zero a region", "/{c}/{e}/{ch}/{res}/{x}/{y}/{z}", {"200": {"description": "zeroed"}, "413": ERROR, "502": ERROR}),
        },
        "/v1/downsample/{c}/{e}/{ch}/": {"get": op("downsample status, voxel sizes and extents", "/{c}/{e}/{ch}", _json("status", "num_hierarchy_levels", "voxel_size", "extent"))},
        "/v1/reserve/{c}/{e}/{ch}/{num}": {"get": op("reserve ids", "/{c}/{e}/{ch}/{num}", _json("start_id", "count"))},
        "/v1/ids/{c}/{e}/{ch}/{res}/{x}/{y}/{z}/": {"get": op("ids in a region", "/{c}/{e}/{ch}/{res}/{x}/{y}/{z}", {**_json("ids"), "413": ERROR, "502": ERROR})},
        "/v1/boundingbox/{c}/{e}/{ch}/{res}/{id}/": {"get": op("bounding box of an id", "/{c}/{e}/{ch}/{res}/{id}",
                                                             {**_json("x_range", "y_range", "z_range"), "502": ERROR},
                                                             {"type": {"type": "string", "enum": ["loose", "tight"]}})},
        "/v1/meta/{path}": {"get": op("key-value metadata (none kept)", "/{path}", _json(), {"key": {"type": "string"}})},
        "/{c}/{e}/{ch}/info": {"get": op("precomputed info", "/{c}/{e}/{ch}", _json("scales", "data_type"))},
        "/{c}/{e}/{ch}/{scale}/{name}": {"get": op("a precomputed chunk (raw)", "/{c}/{e}/{ch}/{scale}/{name}",
                                                   {"200": {"description": "chunk bytes", "content": {"application/octet-stream": BINARY}}, "502": ERROR})},
        "/api/repos/info": {"get": op("DVID: repos", "/", _json())},
        "/api/repo/{uuid}/info": {"get": op("DVID: a repo", "/{uuid}", _json("Root", "DataInstances"))},
        "/api/node/{uuid}/{data}/info": {"get": op("DVID: a data instance", "/{uuid}/{data}", _json("Base", "Extended"))},
        "/api/node/{uuid}/{data}/raw/0_1_2/{size}/{offset}": {
            "get": op("DVID: a raw 3-D cutout (z, y, x bytes)", "/{uuid}/{data}/{size}/{offset}",
                      {"200": {"description": "voxels", "content": {"application/octet-stream": BINARY}}, "413": ERROR, "502": ERROR},
                      {"compression": {"type": "string", "enum": ["lz4", "gzip"]}}),
            "post": op("DVID: write block-aligned voxels", "/{uuid}/{data}/{size}/{offset}",
                       {"200": {"description": "written"}, "413": ERROR, "502": ERROR},
                       body={"required": True, "content": {"application/octet-stream": BINARY}}),
        },
        "/api/node/{uuid}/{data}/label/{point}": {"get": op("DVID: the label at a point", "/{uuid}/{data}/{point}", _json("Label"))},
        "/api/node/{uuid}/{data}/sparsevol/{label}": {"get": op("DVID: a label's sparse volume (rles)", "/{uuid}/{data}/{label}",
                                                                {"200": {"description": "rles", "content": {"application/octet-stream": BINARY}}})},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "volbridge relay", "version": "1", "description": "BossDB REST dialect (v1) and precomputed over HTTP"},
        "paths": paths,
        "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
    }
