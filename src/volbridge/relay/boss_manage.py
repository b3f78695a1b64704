"""Creating, changing and deleting BossDB resources, and their key-value metadata, over the
dialect (``POST`` 201, ``PUT`` 200, ``DELETE`` 204, as BossDB answers). Only resources the relay
keeps itself (``[boss] data_dir``) change; the configured ones answer 403. A token may manage what
its write patterns cover (creating collection ``lab`` needs a pattern matching ``lab/_/_``, such as
``lab/*``); coordinate frames, which are global, need a token with any write right.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .boss import channel_json, collection_json, derived_frames, experiment_json
from .errors import BAD_REQUEST, RelayError
from .requests import json_object, token_of
from .state import Relay


def _relay(request: Request) -> Relay:
    return request.app.state.relay


def _store(relay: Relay, what: str):
    if relay.boss is None:
        raise RelayError(403, 4003, f"{what}: the relay's resources come from its config (it keeps none of its own: no [boss] data_dir)")
    return relay.boss


def _check(relay: Relay, token, path: tuple[str, ...], what: str) -> None:
    if relay.config.token(token) is None:
        raise RelayError(401, 4001, f"{what} needs a token (Authorization: Token <token>)")
    if not relay.config.may_manage(token, path):
        raise RelayError(403, 4002, f"the token may not manage {'/'.join(path) or 'coordinate frames'}")


def _configured(relay: Relay, path: tuple[str, ...]) -> bool:
    """Whether ``path`` names a resource from the config (which never changes over HTTP)."""
    prefix = "/".join(path) + "/"
    return any(n == "/".join(path) or n.startswith(prefix) for n, c in relay.config.sources.items()
               if relay.boss is None or relay.boss.channel(*n.split("/")) is None)


async def resource(request: Request):
    relay, token = _relay(request), token_of(request)
    p = request.path_params
    path = tuple(p[k] for k in ("c", "e", "ch") if k in p)
    what = ("collection", "experiment", "channel")[len(path) - 1] + " " + "/".join(path)
    if _configured(relay, path):
        raise RelayError(403, 4003, f"{what} comes from the relay's config and cannot be changed over HTTP")
    store = _store(relay, what)
    _check(relay, token, path, what)
    body = await json_object(request) if request.method != "DELETE" else {}
    creator = "volbridge"
    if request.method == "POST":
        if len(path) == 1:
            await run_in_threadpool(store.create_collection, path[0], body, creator)
            return JSONResponse(collection_json(relay, token, path[0]), status_code=201)
        if len(path) == 2:
            if store.collection(path[0]) is None:
                raise RelayError(404, 4000, f"no collection {path[0]} (create it first)")
            await run_in_threadpool(store.create_experiment, path[0], path[1], body, creator)
            return JSONResponse(experiment_json(relay, token, *path), status_code=201)
        chan = await run_in_threadpool(store.create_channel, *path, body, creator)
        await run_in_threadpool(lambda: relay.add_source("/".join(path), chan["url"], public=False))
        return JSONResponse({k: v for k, v in chan.items() if k != "url"}, status_code=201)
    if request.method == "PUT":
        body.pop("downsample_status", None)  # the relay's own downsample service keeps that
        doc = await run_in_threadpool(store.update, path, body)
        if len(path) == 3 and "public" in body:
            relay.config.sources["/".join(path)].public = bool(body["public"])
        return JSONResponse({k: v for k, v in doc.items() if k not in ("url", "experiments", "channels")})
    url = await run_in_threadpool(store.delete, path)
    if url is not None:
        relay.remove_source("/".join(path))
    return Response(status_code=204)


async def coord(request: Request):
    relay, token = _relay(request), token_of(request)
    name = request.path_params["cf"]
    store = _store(relay, f"coordinate frame {name}")
    _check(relay, token, (), f"coordinate frame {name}")
    if request.method == "POST":
        owner = derived_frames(relay).get(name)
        if owner is not None:  # (a writer's frame shadowed a configured experiment's for every client)
            raise RelayError(400, BAD_REQUEST, f"coordinate frame {name} exists (the frame of a configured experiment)")
        return JSONResponse(await run_in_threadpool(store.create_coord, name, await json_object(request), "volbridge"), status_code=201)
    if request.method == "PUT":
        if store.coord(name) is None:
            raise RelayError(404, 4000, f"no coordinate frame {name}")
        body = await json_object(request)
        if set(body) - {"name", "description"}:
            raise RelayError(400, BAD_REQUEST, "only a coordinate frame's description can change")
        with store.document.changing() as doc:
            doc["coords"][name]["description"] = str(body.get("description", ""))
            return JSONResponse(dict(doc["coords"][name]))
    await run_in_threadpool(store.delete_coord, name)
    return Response(status_code=204)


async def metadata(request: Request):
    """``/meta/c[/e[/ch]]/?key=K&value=V``: GET lists keys or reads one; POST, PUT, DELETE change."""
    relay, token = _relay(request), token_of(request)
    parts = tuple(x for x in request.path_params["path"].split("/") if x)
    if not 1 <= len(parts) <= 3:
        raise RelayError(400, BAD_REQUEST, "metadata paths are /meta/collection[/experiment[/channel]]")
    if len(parts) == 3:
        channel_json(relay, token, *parts)  # 404, 401 or 403 when it cannot be seen
    elif len(parts) == 2:
        experiment_json(relay, token, *parts)
    else:
        collection_json(relay, token, *parts)
    path = "/".join(parts)
    q = request.query_params
    key = q.get("key")
    entries = relay.boss.meta(path) if relay.boss is not None else {}
    if request.method == "GET":
        if key is None:
            return JSONResponse({"keys": sorted(entries)})
        if key not in entries:
            raise RelayError(404, 4000, f"no metadata key {key!r} on {path}")
        return JSONResponse({"key": key, "value": entries[key]})
    if key is None:
        raise RelayError(400, BAD_REQUEST, "give the metadata key: ?key=K")
    store = _store(relay, f"metadata of {path}")
    if _configured(relay, parts) and _managed_missing(relay, parts):
        raise RelayError(403, 4003, f"{path} comes from the relay's config; its metadata cannot change over HTTP")
    _check(relay, token, parts, f"metadata of {path}")
    if request.method == "DELETE":
        await run_in_threadpool(store.delete_meta, path, key)
        return Response(status_code=204)
    if "value" not in q:
        raise RelayError(400, BAD_REQUEST, "give the metadata value: ?key=K&value=V")
    await run_in_threadpool(lambda: store.set_meta(path, key, q["value"], create=request.method == "POST"))
    return Response(status_code=201 if request.method == "POST" else 200)


def _managed_missing(relay: Relay, parts: tuple[str, ...]) -> bool:
    getter = (relay.boss.collection, relay.boss.experiment, relay.boss.channel)[len(parts) - 1]
    return getter(*parts) is None


def routes(prefix: str) -> list[Route]:
    ch = ["POST", "PUT", "DELETE"]
    out = []
    for slash in ("", "/"):
        out += [
            Route(f"{prefix}/collection/{{c}}{slash}", resource, methods=ch),
            Route(f"{prefix}/collection/{{c}}/experiment/{{e}}{slash}", resource, methods=ch),
            Route(f"{prefix}/collection/{{c}}/experiment/{{e}}/channel/{{ch}}{slash}", resource, methods=ch),
            Route(f"{prefix}/coord/{{cf}}{slash}", coord, methods=ch),
        ]
    out.append(Route(f"{prefix}/meta/{{path:path}}", metadata, methods=["GET", "POST", "PUT", "DELETE"]))
    return out
