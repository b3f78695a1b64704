"""The BossDB REST dialect (v1), served from any source (``shared/specs/bossdb.md`` section 6).

Resources (collection, experiment, coordinate frame, channel) are built from each source's own
metadata; they are read-only here, since the relay's channels come from its config. Cutouts are
read through the relay's cache tiers and written through to the upstream. Coordinates are the
source's own absolute voxel coordinates at the requested resolution; ranges are checked against
the base-resolution frame as BossDB does, and parts of a range beyond a coarser scale's bounds
read as zeros (intern never shrinks z, whatever the pyramid does).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..codecs import cutout
from ..errors import ChunkDecodeError, UnsupportedError
from ..geometry import Box
from ..remotes.bossdb import access_mode
from .boss_resources import UNIT_NM
from .errors import BAD_REQUEST, TOO_LARGE, UNSUPPORTED_MEDIA, RelayError
from .requests import read_body, token_of, weighted
from .source import RelaySource
from .state import Relay

RANGE = re.compile(r"^(-?\d{1,12}):(-?\d{1,12})$")
#: A cutout larger than this is refused before its body is read, whatever the config says.
ABSOLUTE_BODY_LIMIT = 2**31


def parse_range(text: str, axis: str) -> tuple[int, int]:
    m = RANGE.match(text)
    if m is None:
        raise RelayError(400, BAD_REQUEST, f"{axis} range {text!r} must be start:stop (integers)")
    a, b = int(m.group(1)), int(m.group(2))
    if a >= b:
        raise RelayError(400, BAD_REQUEST, f"{axis} range {text!r}: start must be less than stop")
    return a, b


def parse_resolution(text: str, src: RelaySource) -> int:
    if not re.fullmatch(r"\d", text):
        raise RelayError(400, BAD_REQUEST, f"resolution {text!r} must be a single digit")
    res = int(text)
    if res >= src.scale_count():
        raise RelayError(400, BAD_REQUEST, f"resolution {res} is not available; {src.name} has 0..{src.scale_count() - 1}")
    return res


def _experiment_channels(relay: Relay, c: str, e: str) -> list[RelaySource]:
    """Every channel of experiment ``c/e``, whoever asks (a frame is the same for everyone)."""
    return [s for n, s in sorted(relay.snapshot().items()) if n.startswith(f"{c}/{e}/")]


def experiment_frame(relay: Relay, c: str, e: str) -> Box:
    """The coordinate frame of an experiment of configured channels: the union of their
    base-resolution bounds, in the first channel's voxels (channels at other voxel sizes are
    logged at start: base_resolution is not mapped)."""
    boxes = [s.meta.scales[0].bounds for s in _experiment_channels(relay, c, e)]
    return Box(tuple(min(b.start[i] for b in boxes) for i in range(3)), tuple(max(b.stop[i] for b in boxes) for i in range(3)))


def derived_frames(relay: Relay) -> dict[str, tuple[str, str]]:
    """{frame name: (collection, experiment)} of the experiments of configured channels (one
    created over HTTP names its own frame). A name is ``<collection>_<experiment>``, unless two
    experiments would share it ('a_b'/'c' and 'a'/'b_c': one showed the other's extents and
    voxel size) or a frame created over HTTP has it: then each gets a digest of its path too."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for name in relay.snapshot():
        c, e, _ = name.split("/")
        if _managed(relay, c, e) is None and (c, e) not in owners.get(f"{c}_{e}", []):
            owners.setdefault(f"{c}_{e}", []).append((c, e))
    created = set(relay.boss.doc()["coords"]) if relay.boss is not None else set()
    out = {}
    for name, exps in owners.items():
        for c, e in exps:
            unique = len(exps) == 1 and name not in created
            out[name if unique else f"{name}_{hashlib.sha1(f'{c}/{e}'.encode()).hexdigest()[:8]}"] = (c, e)
    return out


def frame_name(relay: Relay, c: str, e: str) -> str:
    return next(n for n, owner in derived_frames(relay).items() if owner == (c, e))


def check_ranges(src: RelaySource, res: int, xs, ys, zs, frame: Box) -> Box:
    """The requested box at ``res``. BossDB checks ranges against the base-resolution frame of
    the experiment (so intern, which never shrinks z, can read coarse isotropic scales; and any
    box of the frame it was told of is served, zeros where this channel has no data); a frame
    whose start is not 0 moves at coarser scales, so the scale's own bounds are allowed too.
    Outside the scale's bounds reads are zeros, and writes are refused."""
    scale = src.meta.scales[res].bounds
    for (a, b), f0, f1, s0, s1, axis in zip((xs, ys, zs), frame.start, frame.stop, scale.start, scale.stop, "xyz"):
        lo, hi = min(f0, s0), max(f1, s1)
        if a < lo or b > hi:
            raise RelayError(400, BAD_REQUEST, f"{axis} range {a}:{b} is outside the coordinate frame [{lo}, {hi}) of {src.name} at resolution {res}")
    return Box((xs[0], ys[0], zs[0]), (xs[1], ys[1], zs[1]))


def check_time(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    t = parse_range(text, "t")
    if t[0] < 0 or t[1] > 1:
        raise RelayError(400, BAD_REQUEST, f"t range {t[0]}:{t[1]} is outside the 1 time sample [0, 1) of this channel")
    return t


def check_size(relay: Relay, box: Box, dtype: np.dtype, t: tuple[int, int] | None) -> int:
    """Uncompressed bytes of the cutout; 413 above the limit (uint64 counted at a quarter, as BossDB)."""
    nbytes = box.size * np.dtype(dtype).itemsize * ((t[1] - t[0]) if t else 1)
    counted = nbytes // 4 if np.dtype(dtype) == np.uint64 else nbytes
    if counted > relay.config.max_cutout_bytes:
        raise RelayError(413, TOO_LARGE, f"the cutout is {nbytes} bytes uncompressed; this relay serves at most {relay.config.max_cutout_bytes} per request")
    return nbytes


def check_scan(relay: Relay, src: RelaySource, res: int) -> None:
    """A request that reads a whole scale (bounding boxes, sparse volumes, the first reserve) may
    read at most ``max_scan_bytes`` (413 above): BossDB answers these from an index it keeps."""
    n = src.scan_bytes(res)
    if n > relay.config.max_scan_bytes:
        raise RelayError(413, TOO_LARGE, f"this needs a scan of {n} bytes of {src.name} at resolution {res}; "
                         f"the relay scans at most {relay.config.max_scan_bytes} (try a coarser resolution)")


#: What a wildcard (``*/*``, ``application/*``) stands for, in the server's order: never JPEG
#: (lossy) or blosc-python (a pickle), which go only to clients that name them.
WILDCARD_TYPES = (cutout.BLOSC, cutout.NPYGZ)


def negotiate(accept: str, dtype=np.uint8) -> str:
    """The media type of a GET response from its Accept header (blosc for none): the one the
    client weighs highest (``q``, RFC 9110 12.5.1: a type's own entry over ``application/*``
    over ``*/*``), the first listed among equals, then the server's order; ``q=0`` is never
    sent (a client taking npygz but not JPEG must not get a lossy JPEG), nor JPEG for a channel
    that is not uint8 (the next acceptable type is)."""
    if not accept.strip():
        return cutout.BLOSC
    own: dict[str, float] = {}
    wild: dict[str, float] = {}
    for kind, q in weighted(accept, "Accept"):
        if kind in ("*/*", "application/*", "image/*"):
            wild.setdefault(kind, q)
        else:
            own.setdefault(kind, q)

    def weight(kind: str) -> float:
        if kind in own:
            return own[kind]
        if kind not in WILDCARD_TYPES:
            return 0.0
        return wild.get(f"{kind.split('/')[0]}/*", wild.get("*/*", 0.0))

    jpeg_ok = np.dtype(dtype) == np.uint8
    order = [k for k in own if k in cutout.GET_TYPES] + [k for k in cutout.GET_TYPES if k not in own]
    best, best_q = None, 0.0
    for kind in order:
        q = weight(kind)
        if q > best_q and (kind != cutout.JPEG or jpeg_ok):
            best, best_q = kind, q
    if best is None:
        why = f" (image/jpeg cutouts are for uint8 channels, not {np.dtype(dtype)})" if own.get(cutout.JPEG, 0) > 0 and not jpeg_ok else ""
        raise RelayError(406, UNSUPPORTED_MEDIA, f"cannot send {accept!r}{why}; ask for one of {', '.join(cutout.GET_TYPES)}")
    return best


# -- resources --------------------------------------------------------------------------------------
def _visible_tree(relay: Relay, token: str | None) -> dict[str, dict[str, list[str]]]:
    """{collection: {experiment: [channels]}} the token may see: configured channels it may read,
    and resources created over HTTP (public ones to anyone, the rest to any valid token)."""
    tree: dict[str, dict[str, list[str]]] = {}
    if relay.boss is not None:
        member = relay.config.token(token) is not None
        for c, col in relay.boss.doc()["collections"].items():
            if member or col["public"] or any(x["public"] for x in col["experiments"].values()):
                exps = tree.setdefault(c, {})
                for e, exp in col["experiments"].items():
                    if member or exp["public"] or col["public"]:
                        exps.setdefault(e, [])
    for name in relay.visible(token):
        c, e, ch = name.split("/")
        tree.setdefault(c, {}).setdefault(e, []).append(ch)
    return tree


def _managed(relay: Relay, *path: str) -> dict | None:
    """The document of a resource created over HTTP, or None (a configured one, or none)."""
    if relay.boss is None:
        return None
    getter = (relay.boss.collection, relay.boss.experiment, relay.boss.channel)[len(path) - 1]
    return getter(*path)


def _experiment_sources(relay: Relay, token, c: str, e: str) -> list[RelaySource]:
    tree = _visible_tree(relay, token)
    if c not in tree:
        raise RelayError(404, 4000, f"no collection {c} on this relay")
    if e not in tree[c]:
        raise RelayError(404, 4000, f"no experiment {e} in collection {c}")
    snap = relay.snapshot()
    srcs = [snap[f"{c}/{e}/{ch}"] for ch in tree[c][e] if f"{c}/{e}/{ch}" in snap]
    if not srcs:
        raise RelayError(404, 4000, f"experiment {c}/{e} has no channels")
    return srcs


def _hierarchy(src: RelaySource) -> str:
    scales = src.meta.scales
    if len(scales) > 1 and scales[1].resolution[2] != scales[0].resolution[2]:
        return "isotropic"
    return "anisotropic"


def collection_json(relay: Relay, token, c: str) -> dict:
    tree = _visible_tree(relay, token)
    if c not in tree:
        raise RelayError(404, 4000, f"no collection {c} on this relay")
    doc = _managed(relay, c)
    if doc is not None:
        return {**{k: v for k, v in doc.items() if k != "experiments"}, "experiments": sorted(tree[c])}
    public = any(relay.allowed(None, "read", n) for n in relay.snapshot() if n.startswith(c + "/"))
    return {"name": c, "description": "", "experiments": sorted(tree[c]), "creator": "volbridge", "public": public}


def experiment_json(relay: Relay, token, c: str, e: str) -> dict:
    tree = _visible_tree(relay, token)
    doc = _managed(relay, c, e)
    if doc is not None and e in tree.get(c, {}):
        return {**{k: v for k, v in doc.items() if k != "channels"}, "channels": sorted(tree[c][e])}
    srcs = _experiment_sources(relay, token, c, e)
    first = srcs[0]
    return {
        "name": e, "description": "", "collection": c, "coord_frame": frame_name(relay, c, e),
        "num_hierarchy_levels": max(s.scale_count() for s in srcs), "hierarchy_method": _hierarchy(first),
        "num_time_samples": 1, "time_step": 0, "time_step_unit": "nanoseconds",
        "creator": "volbridge", "public": all(relay.allowed(None, "read", s.name) for s in srcs),
        "channels": [s.name.split("/")[2] for s in srcs],
    }


def coord_json(relay: Relay, token, frame: str) -> dict:
    owner = derived_frames(relay).get(frame)
    if owner is None:
        if relay.boss is not None and relay.boss.coord(frame) is not None:
            return relay.boss.coord(frame)
    else:
        c, e = owner
        if e in _visible_tree(relay, token).get(c, {}):
            box = experiment_frame(relay, c, e)
            lo, hi = box.start, box.stop
            vx = _experiment_channels(relay, c, e)[0].meta.scales[0].resolution
            return {
                "name": frame, "description": f"frame of {c}/{e}",
                "x_start": lo[0], "x_stop": hi[0], "y_start": lo[1], "y_stop": hi[1], "z_start": lo[2], "z_stop": hi[2],
                "x_voxel_size": vx[0], "y_voxel_size": vx[1], "z_voxel_size": vx[2], "voxel_unit": "nanometers",
            }
    raise RelayError(404, 4000, f"no coordinate frame {frame} on this relay")


def channel_json(relay: Relay, token, c: str, e: str, ch: str) -> dict:
    src = relay.source(c, e, ch)
    relay.authorize(token, "read", src.name)
    doc = _managed(relay, c, e, ch)
    if doc is not None:
        return {**{k: v for k, v in doc.items() if k not in ("url", "next_id")}, "downsample_status": src.downsample_status}
    segmentation = src.meta.layer_type == "segmentation"
    return {
        "name": ch, "description": getattr(relay.config.sources.get(src.name), "description", ""), "experiment": e,
        "default_time_sample": 0, "type": "annotation" if segmentation else "image", "base_resolution": 0,
        "datatype": np.dtype(src.meta.dtype).name, "creator": "volbridge", "sources": [], "related": [],
        "downsample_status": src.downsample_status,
        "public": relay.allowed(None, "read", src.name),
        # "spdb": intern reads through this server; "cloudvol" would send it to S3 directly.
        "storage_type": "spdb", "bucket": None, "cv_path": None,
    }


def downsample_json(relay: Relay, src: RelaySource) -> dict:
    levels = range(src.scale_count())
    # voxel sizes in the unit of the experiment's frame, as BossDB gives them (a channel created
    # in a micrometer frame was reported in nm, and read 1000x too coarse by clients)
    c, e, _ = src.name.split("/")
    exp = _managed(relay, c, e)
    frame = relay.boss.coord(exp["coord_frame"]) if exp is not None else None
    unit = UNIT_NM.get(frame.get("voxel_unit", "nanometers"), 1) if frame else 1
    return {
        "status": src.downsample_status,
        "num_hierarchy_levels": src.scale_count(),
        "voxel_size": {str(i): [r / unit for r in src.meta.scales[i].resolution] for i in levels},
        "extent": {str(i): list(src.meta.scales[i].bounds.shape) for i in levels},
        "cuboid_size": {str(i): list(src.upstream.grids[i].chunk_shape) for i in levels},
        # Not BossDB's: where each level starts. The experiment's frame starts where its first
        # channel does, and a channel placed elsewhere (another offset) would be misplaced by a
        # client that has only the frame; volbridge's client (a chained relay) reads this.
        "volbridge_start": {str(i): list(src.meta.scales[i].bounds.start) for i in levels},
    }


# -- handlers ---------------------------------------------------------------------------------------
def _relay(request: Request) -> Relay:
    return request.app.state.relay


async def list_collections(request: Request):
    return JSONResponse({"collections": sorted(_visible_tree(_relay(request), token_of(request)))})


async def get_collection(request: Request):
    return JSONResponse(collection_json(_relay(request), token_of(request), request.path_params["c"]))


async def list_experiments(request: Request):
    return JSONResponse({"experiments": collection_json(_relay(request), token_of(request), request.path_params["c"])["experiments"]})


async def get_experiment(request: Request):
    p = request.path_params
    return JSONResponse(experiment_json(_relay(request), token_of(request), p["c"], p["e"]))


async def list_channels(request: Request):
    p = request.path_params
    return JSONResponse({"channels": experiment_json(_relay(request), token_of(request), p["c"], p["e"])["channels"]})


async def get_channel(request: Request):
    p = request.path_params
    return JSONResponse(channel_json(_relay(request), token_of(request), p["c"], p["e"], p["ch"]))


async def list_coords(request: Request):
    relay = _relay(request)
    tree = _visible_tree(relay, token_of(request))
    names = {n for n, (c, e) in derived_frames(relay).items() if tree.get(c, {}).get(e)}
    if relay.boss is not None:
        names |= set(relay.boss.doc()["coords"])
    return JSONResponse({"coords": sorted(names)})


async def get_coord(request: Request):
    return JSONResponse(coord_json(_relay(request), token_of(request), request.path_params["cf"]))


def _cutout_source(request: Request, action: str) -> tuple[Relay, RelaySource, int, Box, tuple | None]:
    relay = _relay(request)
    p = request.path_params
    src = relay.source(p["c"], p["e"], p["ch"])
    relay.authorize(token_of(request), action, src.name)
    res = parse_resolution(p["res"], src)
    box = check_ranges(src, res, parse_range(p["x"], "x"), parse_range(p["y"], "y"), parse_range(p["z"], "z"),
                       experiment_frame(relay, p["c"], p["e"]))
    t = check_time(p.get("t"))
    return relay, src, res, box, t


def _read_zyx(src: RelaySource, box: Box, res: int, raw: bool) -> np.ndarray:
    """The cutout as C-ordered (z, y, x): the x-fastest read, transposed as a view."""
    if raw:  # past every cache: this relay's, and an upstream relay's (BossDB reads carry the mode)
        with access_mode("raw"):
            data = src.volume.read(box, res)
    else:
        data = src.read(box, res)
    return data[..., src.channel].T


async def cutout_get(request: Request):
    relay, src, res, box, t = _cutout_source(request, "read")
    q = request.query_params
    if "no-cache" in q and "access-mode" in q:
        raise RelayError(400, BAD_REQUEST, "give access-mode or the deprecated no-cache, not both")
    mode = q.get("access-mode", "cache")
    if mode not in ("cache", "no-cache", "raw"):
        raise RelayError(400, BAD_REQUEST, f"access-mode must be cache, no-cache or raw, not {mode!r}")
    ids = None
    if "filter" in q:
        if src.meta.layer_type != "segmentation":
            raise RelayError(400, BAD_REQUEST, "filter= applies to annotation channels only")
        try:
            ids = np.array([int(i) for i in q["filter"].split(",") if i.strip()], dtype=np.uint64)
        except (ValueError, OverflowError):
            raise RelayError(400, BAD_REQUEST, f"filter must be comma-separated ids from 0 to 2^64-1, got {q['filter']!r}") from None
        top = np.iinfo(src.meta.dtype).max if np.dtype(src.meta.dtype).kind in "ui" else None
        if top is not None and ids.size and int(ids.max()) > top:  # cast down, it would wrap onto another id
            raise RelayError(400, BAD_REQUEST, f"filter id {int(ids.max())} is beyond what this {src.meta.dtype} channel holds (at most {top})")
    media = negotiate(request.headers.get("accept", ""), src.meta.dtype)
    if media == cutout.JPEG and (box.shape[0] > 65500 or box.shape[1] * box.shape[2] * ((t[1] - t[0]) if t else 1) > 65500):
        raise RelayError(413, TOO_LARGE, "a JPEG cutout stacks z along y and holds at most 65500 rows; ask for fewer z or y")
    nbytes = check_size(relay, box, src.meta.dtype, t)
    if media in (cutout.BLOSC, cutout.BLOSC_PYTHON) and nbytes > cutout.BLOSC_MAX_BYTES:
        raise RelayError(413, TOO_LARGE, f"the cutout is {nbytes} bytes uncompressed, more than one blosc body holds "
                         f"({cutout.BLOSC_MAX_BYTES}); ask for a smaller box, or for application/npygz")

    def work() -> bytes:
        zyx = _read_zyx(src, box, res, raw=mode == "raw")
        if ids is not None:
            zyx = np.where(np.isin(zyx, ids.astype(zyx.dtype)), zyx, 0)
        if t is not None:
            zyx = zyx[None]
        try:
            return cutout.encode(zyx, media)
        except UnsupportedError as e:
            raise RelayError(406, UNSUPPORTED_MEDIA, str(e)) from e

    body = await run_in_threadpool(work)
    return Response(body, media_type=media)


async def cutout_post(request: Request):
    relay, src, res, box, t = _cutout_source(request, "write")
    if set(request.query_params) - {"iso"}:
        raise RelayError(400, BAD_REQUEST, f"unknown query parameter(s) {', '.join(sorted(set(request.query_params) - {'iso'}))}")
    nbytes = check_size(relay, box, src.meta.dtype, t)
    media = request.headers.get("content-type", cutout.BLOSC).split(";")[0].strip().lower()
    if media not in cutout.POST_TYPES:
        reason = " (a pickle, never loaded by this server)" if media == cutout.BLOSC_PYTHON else ""
        raise RelayError(415, UNSUPPORTED_MEDIA, f"cannot accept {media!r}{reason}; send {' or '.join(cutout.POST_TYPES)}")
    # A compressed body is never much larger than the data; blosc adds 16 bytes a block at worst.
    body = await read_body(request, min(ABSOLUTE_BODY_LIMIT, nbytes + nbytes // 8 + 65536))
    shape = ((t[1] - t[0],) if t else ()) + box.shape[::-1]
    dtype = src.meta.dtype

    def work() -> None:
        try:
            arr = cutout.decode(body, media, shape, dtype)
        except (ChunkDecodeError, UnsupportedError) as e:
            raise RelayError(400, BAD_REQUEST, f"cutout body: {e}") from e
        zyx = arr[0] if t else arr
        src.write(box, zyx.T[..., None], res, slice(src.channel, src.channel + 1))

    await run_in_threadpool(work)
    return Response(status_code=201)


async def cutout_to_black(request: Request):
    relay, src, res, box, t = _cutout_source(request, "write")
    check_size(relay, box, src.meta.dtype, t)
    zeros = np.zeros((*box.shape, 1), dtype=src.meta.dtype, order="F")
    await run_in_threadpool(src.write, box, zeros, res, slice(src.channel, src.channel + 1))
    return Response(status_code=200)


async def downsample(request: Request):
    relay = _relay(request)
    p = request.path_params
    src = relay.source(p["c"], p["e"], p["ch"])
    if request.method == "GET":
        relay.authorize(token_of(request), "read", src.name)
        return JSONResponse(downsample_json(relay, src))
    relay.authorize(token_of(request), "write", src.name)
    if request.method == "DELETE":
        relay.downsampling.cancel(src)
        return Response(status_code=204)
    relay.downsampling.start(src, on_done=relay.save_status)
    return Response(status_code=201)


def _annotation(request: Request) -> tuple[Relay, RelaySource]:
    relay = _relay(request)
    p = request.path_params
    src = relay.source(p["c"], p["e"], p["ch"])
    relay.authorize(token_of(request), "read", src.name)
    if src.meta.layer_type != "segmentation":
        raise RelayError(400, BAD_REQUEST, f"{src.name} is an image channel; ids exist only in annotation channels")
    return relay, src


async def ids_in_region(request: Request):
    relay, src = _annotation(request)
    p = request.path_params
    res = parse_resolution(p["res"], src)
    box = check_ranges(src, res, parse_range(p["x"], "x"), parse_range(p["y"], "y"), parse_range(p["z"], "z"),
                       experiment_frame(relay, p["c"], p["e"]))
    t = check_time(p.get("t"))
    check_size(relay, box, src.meta.dtype, t)

    def work() -> list[str]:
        ids = np.unique(_read_zyx(src, box, res, raw=False))
        return [str(int(i)) for i in ids if i != 0]

    return JSONResponse({"ids": await run_in_threadpool(work)})


async def bounding_box(request: Request):
    relay, src = _annotation(request)
    p = request.path_params
    res = parse_resolution(p["res"], src)
    kind = request.query_params.get("type", "loose")
    if kind not in ("loose", "tight"):
        raise RelayError(400, BAD_REQUEST, f"type must be loose or tight, not {kind!r}")
    try:
        label = int(p["id"])
        if not 0 < label < 2**64:
            raise ValueError
    except ValueError:
        raise RelayError(400, BAD_REQUEST, f"id {p['id']!r} must be a positive 64-bit integer") from None

    check_scan(relay, src, res)

    def work() -> dict:
        found = src.find_label(label, res)
        if found is None:
            raise RelayError(404, 4000, f"id {label} does not occur in {src.name} at resolution {res}")
        lo, hi = found
        if kind == "loose":  # widened to whole cuboids (clipped to the frame)
            grid = src.upstream.grids[res]
            cells = list(grid.cells(Box(lo, hi)))
            lo = tuple(min(c.box.start[i] for c in cells) for i in range(3))
            hi = tuple(max(c.box.stop[i] for c in cells) for i in range(3))
        return {"x_range": [lo[0], hi[0]], "y_range": [lo[1], hi[1]], "z_range": [lo[2], hi[2]], "t_range": [0, 1]}

    return JSONResponse(await run_in_threadpool(work))


async def reserve(request: Request):
    relay, src = _annotation(request)
    relay.authorize(token_of(request), "write", src.name)
    try:
        n = int(request.path_params["num"])
        if not 0 < n <= 2**40:
            raise ValueError
    except ValueError:
        raise RelayError(400, BAD_REQUEST, f"the number of ids must be a positive integer, not {request.path_params['num']!r}") from None
    check_scan(relay, src, 0)
    if _managed(relay, *src.name.split("/")) is not None:
        start = await run_in_threadpool(relay.boss.reserve, tuple(src.name.split("/")), n, lambda floor: src.reserve_ids(n, floor))
    else:  # a configured channel: the counter lives in this process (documented)
        start = await run_in_threadpool(src.reserve_ids, n)
    return JSONResponse({"start_id": start, "count": n})


def routes(prefix: str) -> list[Route]:
    """The dialect's routes under ``prefix`` (``/v1``; neuroglancer's ``/latest`` too)."""
    cut = "/{c}/{e}/{ch}/{res}/{x}/{y}/{z}"
    out = []
    for slash in ("", "/"):
        out += [
            Route(f"{prefix}/collection{slash}", list_collections),
            Route(f"{prefix}/collection//", list_collections),  # intern sends the double slash
            Route(f"{prefix}/collection/{{c}}{slash}", get_collection),
            Route(f"{prefix}/collection/{{c}}/experiment{slash}", list_experiments),
            Route(f"{prefix}/collection/{{c}}/experiment/{{e}}{slash}", get_experiment),
            Route(f"{prefix}/collection/{{c}}/experiment/{{e}}/channel{slash}", list_channels),
            Route(f"{prefix}/collection/{{c}}/experiment/{{e}}/channel/{{ch}}{slash}", get_channel),
            Route(f"{prefix}/coord{slash}", list_coords),
            Route(f"{prefix}/coord/{{cf}}{slash}", get_coord),
            Route(f"{prefix}/cutout/to_black{cut}{slash}", cutout_to_black, methods=["PUT"]),
            Route(f"{prefix}/cutout/to_black{cut}/{{t}}{slash}", cutout_to_black, methods=["PUT"]),
            Route(f"{prefix}/cutout{cut}{slash}", cutout_get, methods=["GET"]),
            Route(f"{prefix}/cutout{cut}{slash}", cutout_post, methods=["POST"]),
            Route(f"{prefix}/cutout{cut}/{{t}}{slash}", cutout_get, methods=["GET"]),
            Route(f"{prefix}/cutout{cut}/{{t}}{slash}", cutout_post, methods=["POST"]),
            Route(f"{prefix}/downsample/{{c}}/{{e}}/{{ch}}{slash}", downsample, methods=["GET", "POST", "DELETE"]),
            Route(f"{prefix}/reserve/{{c}}/{{e}}/{{ch}}/{{num}}{slash}", reserve),
            Route(f"{prefix}/ids/{{c}}/{{e}}/{{ch}}/{{res}}/{{x}}/{{y}}/{{z}}{slash}", ids_in_region),
            Route(f"{prefix}/ids/{{c}}/{{e}}/{{ch}}/{{res}}/{{x}}/{{y}}/{{z}}/{{t}}{slash}", ids_in_region),
            Route(f"{prefix}/boundingbox/{{c}}/{{e}}/{{ch}}/{{res}}/{{id}}{slash}", bounding_box),
        ]
    from . import boss_manage

    return out + boss_manage.routes(prefix)

