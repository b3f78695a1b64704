"""The DVID dialect (``shared/specs/dvid.md`` section 7), served from any source, so DVID-speaking
tools (and volbridge's ``dvid://`` client) read and write every volume the relay has.

Each experiment ``c/e`` is a repo whose root UUID is a digest of its name; each channel is a data
instance in it, typed by its dtype and layer (``uint8blk``, ``uint16blk``, ..., ``labelmap`` for
uint64 segmentations). The repo has one node (the root, uncommitted): the relay's channels are not
versioned, so versioning requests are refused with 400. Raw 3-D cutouts are ZYX C-order bytes,
x fastest; label types also in ``compression=lz4`` (a raw LZ4 block) or ``gzip``. Writes must be
block-aligned, as DVID requires; the part of an aligned block beyond the source's bounds must be
zeros (it is not stored). Extents are inclusive (``MaxPoint``), as in DVID.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import time

import deflate
import imagecodecs
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..geometry import Box
from .errors import BAD_REQUEST, TOO_LARGE, RelayError
from .requests import read_body, token_of
from .source import RelaySource
from .state import Relay

IMAGE_TYPES = {"uint8": "uint8blk", "uint16": "uint16blk", "uint32": "uint32blk", "uint64": "uint64blk", "float32": "float32blk"}
LABEL_TYPES = ("labelmap", "labelarray", "labelblk")
#: DVID's default block sizes: imageblk 32^3, labelmap 64^3.
BLOCK = {"labelmap": (64, 64, 64)}
DEFAULT_BLOCK = (32, 32, 32)
TRIPLE = re.compile(r"^(-?\d{1,10})_(-?\d{1,10})_(-?\d{1,10})$")


def repo_uuid(c: str, e: str) -> str:
    return hashlib.md5(f"{c}/{e}".encode()).hexdigest()


def typename(src: RelaySource) -> str:
    dtype = np.dtype(src.meta.dtype).name
    if src.meta.layer_type == "segmentation" and dtype == "uint64":
        return "labelmap"
    if dtype not in IMAGE_TYPES:
        raise RelayError(400, BAD_REQUEST, f"{src.name} holds {dtype}, which no DVID data type stores")
    return IMAGE_TYPES[dtype]


def block_size(src: RelaySource) -> tuple[int, int, int]:
    return BLOCK.get(typename(src), DEFAULT_BLOCK)


def _repos(relay: Relay, token, every: bool = False) -> dict[str, tuple[str, str, list[str]]]:
    """{uuid: (collection, experiment, [channels])} of the repos the token may see (``every``: all)."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    for name in relay.sources if every else relay.visible(token):
        c, e, ch = name.split("/")
        out.setdefault(repo_uuid(c, e), (c, e, []))[2].append(ch)
    return out


def resolve(relay: Relay, token, spec: str) -> tuple[str, str, str, list[str]]:
    """(uuid, c, e, channels the token may read) of a UUID, a unique prefix of one, or
    ``prefix:branch``. A repo the token can see nothing of is 401 (no token) or 403."""
    ref, _, branch = spec.partition(":")
    if branch and branch != "master":
        raise RelayError(404, 4000, f"no branch {branch!r}: the relay's repos have only master")
    if not re.fullmatch(r"[0-9a-fA-F]{1,32}", ref):
        raise RelayError(400, BAD_REQUEST, f"{spec!r} is not a UUID or UUID prefix")
    repos = _repos(relay, token, every=True)
    hits = [u for u in repos if u.startswith(ref.lower())]
    if not hits:
        raise RelayError(404, 4000, f"no repo or node {spec!r} on this relay")
    if len(hits) > 1:
        raise RelayError(400, BAD_REQUEST, f"UUID prefix {ref!r} is ambiguous ({len(hits)} repos)")
    c, e, chans = repos[hits[0]]
    readable = [ch for ch in chans if relay.allowed(token, "read", f"{c}/{e}/{ch}")]
    if not readable and not any(relay.allowed(token, "write", f"{c}/{e}/{ch}") for ch in chans):
        relay.authorize(token, "read", f"{c}/{e}/{chans[0]}")  # raises 401 or 403
    return hits[0], c, e, readable


def instance(request: Request, action: str) -> tuple[Relay, RelaySource, str]:
    relay: Relay = request.app.state.relay
    token = token_of(request)
    uuid, c, e, _ = resolve(relay, token, request.path_params["uuid"])
    data = request.path_params["data"]
    if f"{c}/{e}/{data}" not in relay.sources:
        raise RelayError(404, 4000, f"no data instance {data!r} in repo {uuid}")
    src = relay.source(c, e, data)
    relay.authorize(token, action, src.name)
    return relay, src, uuid


def instance_info(src: RelaySource, uuid: str) -> dict:
    b = src.meta.scales[0].bounds
    lo, hi = list(b.start), [v - 1 for v in b.stop]
    kind = typename(src)
    res = list(src.meta.scales[0].resolution)
    extended = {
        "Values": [{"DataType": np.dtype(src.meta.dtype).name, "Label": src.name.split("/")[2]}],
        "Interpolable": src.meta.layer_type != "segmentation", "BlockSize": list(block_size(src)),
        "VoxelSize": res, "VoxelUnits": ["nanometers"] * 3, "MinPoint": lo, "MaxPoint": hi,
        "MinIndex": [v // s for v, s in zip(lo, block_size(src))], "MaxIndex": [v // s for v, s in zip(hi, block_size(src))],
        "Background": 0, "ScaleLevel": 0,
    }
    if kind == "labelmap":
        extended.update({"IndexedLabels": False, "MaxDownresLevel": src.scale_count() - 1})
    return {
        "Base": {"TypeName": kind, "TypeURL": f"github.com/janelia-flyem/dvid/datatype/{kind}", "TypeVersion": "0.1",
                 "DataUUID": hashlib.md5(src.prefix.encode()).hexdigest(), "Name": src.name.split("/")[2], "RepoUUID": uuid,
                 "Compression": "none", "Checksum": "NoChecksum", "Syncs": [], "Versioned": False, "Tags": {}},
        "Extended": extended,
        "Extents": {"MinPoint": lo, "MaxPoint": hi},
    }


def repo_info(relay: Relay, uuid: str, c: str, e: str, chans: list[str]) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(relay.started))
    return {
        "Root": uuid, "Alias": f"{c}/{e}", "Description": f"volbridge relay experiment {c}/{e}", "Log": [], "Properties": {},
        "DataInstances": {ch: instance_info(relay.sources[f"{c}/{e}/{ch}"], uuid) for ch in chans},
        "DAG": {"Root": uuid, "Nodes": {uuid: {"Branch": "", "Note": "", "Log": [], "UUID": uuid, "VersionID": 1,
                                               "Locked": False, "Parents": [], "Children": [], "Created": stamp, "Updated": stamp}}},
        "MutationID": 0, "SavedMutationID": 0, "Created": stamp, "Updated": stamp,
    }


# -- handlers ---------------------------------------------------------------------------------------
async def server_info(request: Request):
    relay: Relay = request.app.state.relay
    return JSONResponse({"DVID Version": "volbridge relay", "Storage backend": "volbridge sources",
                         "Server uptime": f"{time.time() - relay.started:.0f}s"})


async def server_types(request: Request):
    names = [*IMAGE_TYPES.values(), "labelmap"]
    return JSONResponse({n: f"github.com/janelia-flyem/dvid/datatype/{n}" for n in names})


async def repos_info(request: Request):
    relay: Relay = request.app.state.relay
    return JSONResponse({u: repo_info(relay, u, c, e, chans) for u, (c, e, chans) in _repos(relay, token_of(request)).items()})


async def repo(request: Request):
    relay: Relay = request.app.state.relay
    uuid, c, e, chans = resolve(relay, token_of(request), request.path_params["uuid"])
    if request.method == "HEAD":
        return Response(status_code=200)
    return JSONResponse(repo_info(relay, uuid, c, e, chans))


async def branch_versions(request: Request):
    relay: Relay = request.app.state.relay
    uuid, *_ = resolve(relay, token_of(request), request.path_params["uuid"])
    if request.path_params["branch"] not in ("master", ""):
        raise RelayError(404, 4000, f"no branch {request.path_params['branch']!r}")
    return JSONResponse([uuid])


async def node_status(request: Request):
    relay: Relay = request.app.state.relay
    resolve(relay, token_of(request), request.path_params["uuid"])
    if request.method != "GET":
        raise RelayError(400, BAD_REQUEST, "the relay's repos are not versioned: commit, branch and newversion are refused")
    return JSONResponse({"Locked": False})


async def versioning(request: Request):
    relay: Relay = request.app.state.relay
    resolve(relay, token_of(request), request.path_params["uuid"])
    op = request.path_params["op"]
    raise RelayError(400, BAD_REQUEST, f"{op}: the relay's repos and instances come from its config and are not versioned")


async def info(request: Request):
    _, src, uuid = instance(request, "read")
    return JSONResponse(instance_info(src, uuid))


def _triple(text: str, what: str) -> tuple[int, int, int]:
    m = TRIPLE.match(text)
    if m is None:
        raise RelayError(400, BAD_REQUEST, f"{what} {text!r} must be x_y_z integers")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _raw_box(request: Request, relay: Relay, src: RelaySource) -> Box:
    p = request.path_params
    if p["dims"] not in ("0_1_2", "xyz"):
        raise RelayError(400, BAD_REQUEST, f"dims {p['dims']!r}: this relay serves 3-D raw cutouts (0_1_2) only")
    size = _triple(p["size"], "size")
    offset = _triple(p["offset"], "offset")
    if any(n <= 0 for n in size):
        raise RelayError(400, BAD_REQUEST, f"size {p['size']!r} must be positive")
    box = Box(offset, tuple(o + n for o, n in zip(offset, size)))
    nbytes = box.size * np.dtype(src.meta.dtype).itemsize
    if nbytes > relay.config.max_cutout_bytes:
        raise RelayError(413, TOO_LARGE, f"the cutout is {nbytes} bytes; this relay serves at most {relay.config.max_cutout_bytes} per request")
    return box


def _compression(request: Request, src: RelaySource) -> str | None:
    comp = request.query_params.get("compression")
    if comp in (None, "", "none", "uncompressed"):
        return None
    if comp not in ("lz4", "gzip"):
        raise RelayError(400, BAD_REQUEST, f"compression {comp!r}: the relay sends lz4 or gzip")
    if typename(src) not in LABEL_TYPES:
        raise RelayError(400, BAD_REQUEST, f"compression= applies to label types, not {typename(src)}")
    return comp


async def raw_get(request: Request):
    relay, src, _ = instance(request, "read")
    fmt = request.path_params.get("format", "octet-stream")
    if fmt not in ("octet-stream", "raw"):
        raise RelayError(400, BAD_REQUEST, f"format {fmt!r}: the relay sends octet-stream 3-D cutouts")
    box = _raw_box(request, relay, src)
    comp = _compression(request, src)

    def work() -> bytes:
        data = np.ascontiguousarray(src.read(box, 0)[..., src.channel].T).tobytes()
        if comp == "lz4":
            return imagecodecs.lz4_encode(data, header=False)
        if comp == "gzip":
            return bytes(deflate.gzip_compress(data, 1))
        return data

    return Response(await run_in_threadpool(work), media_type="application/octet-stream")


async def raw_post(request: Request):
    relay, src, _ = instance(request, "write")
    box = _raw_box(request, relay, src)
    comp = _compression(request, src)
    bs = block_size(src)
    if any(o % b or n % b for o, n, b in zip(box.start, box.shape, bs)):
        raise RelayError(400, BAD_REQUEST, f"DVID writes must be block-aligned: offset and size must be multiples of the block size {bs}")
    dtype = np.dtype(src.meta.dtype)
    nbytes = box.size * dtype.itemsize
    body = await read_body(request, nbytes + nbytes // 8 + 65536)

    def work() -> None:
        raw = body
        try:
            if comp == "lz4":
                raw = imagecodecs.lz4_decode(body, header=False, out=nbytes)
            elif comp == "gzip":
                raw = deflate.gzip_decompress(body)
        except Exception as e:  # noqa: BLE001 - a codec library's own error type
            raise RelayError(400, BAD_REQUEST, f"the body is not a valid {comp} stream: {e}") from e
        if len(raw) != nbytes:
            raise RelayError(400, BAD_REQUEST, f"the body has {len(raw)} bytes; {box.shape[::-1]} (z, y, x) of {dtype} needs {nbytes}")
        zyx = np.frombuffer(raw, dtype).reshape(box.shape[::-1])
        xyz = zyx.T
        bounds = src.meta.scales[0].bounds
        inside = box.intersect(bounds)
        outside = xyz.copy()
        if not inside.empty:
            outside[inside.slices(box.start)] = 0
        if outside.any():
            raise RelayError(400, BAD_REQUEST, f"the write reaches beyond the bounds {bounds} (x, y, z) of {src.name} with non-zero voxels")
        if not inside.empty:
            src.write(inside, xyz[inside.slices(box.start)][..., None], 0)

    await run_in_threadpool(work)
    return Response(status_code=200)


async def label_at(request: Request):
    _, src, _ = instance(request, "read")
    x, y, z = _triple(request.path_params["point"], "point")
    value = await run_in_threadpool(lambda: int(src.read(Box((x, y, z), (x + 1, y + 1, z + 1)), 0)[0, 0, 0, src.channel]))
    return JSONResponse({"Label": value})


async def labels_at(request: Request):
    _, src, _ = instance(request, "read")
    try:
        points = json.loads(await read_body(request, 1 << 20))
        pts = [tuple(int(v) for v in p) for p in points]
        if any(len(p) != 3 for p in pts):
            raise ValueError
    except (ValueError, TypeError):
        raise RelayError(400, BAD_REQUEST, "the body must be a JSON list of [x, y, z] points") from None

    def work() -> list[int]:
        return [int(src.read(Box(p, (p[0] + 1, p[1] + 1, p[2] + 1)), 0)[0, 0, 0, src.channel]) for p in pts]

    return JSONResponse(await run_in_threadpool(work))


def sparsevol_spans(src: RelaySource, label: int) -> list[tuple[int, int, int, int]]:
    """(x, y, z, length) runs along x of ``label`` at scale 0, sorted by z, y, x and merged."""
    spans: list[tuple[int, int, int, int]] = []
    lock = threading.Lock()

    def fn(box: Box, vox: np.ndarray) -> None:
        mask = (vox == label).T  # (z, y, x): rows along x, and np.nonzero walks them in order
        if not mask.any():
            return
        d = np.diff(np.pad(mask, ((0, 0), (0, 0), (1, 1))).astype(np.int8), axis=2)
        sz, sy, sx = np.nonzero(d == 1)  # run starts
        ex = np.nonzero(d == -1)[2]  # one past each run's end, same order
        x0, y0, z0 = box.start
        out = list(zip((sx + x0).tolist(), (sy + y0).tolist(), (sz + z0).tolist(), (ex - sx).tolist()))
        with lock:
            spans.extend(out)

    src.scan(0, fn)
    spans.sort(key=lambda s: (s[2], s[1], s[0]))
    merged: list[tuple[int, int, int, int]] = []
    for s in spans:
        if merged and merged[-1][1:3] == s[1:3] and merged[-1][0] + merged[-1][3] == s[0]:
            p = merged[-1]
            merged[-1] = (p[0], p[1], p[2], p[3] + s[3])
        else:
            merged.append(s)
    return merged


async def sparsevol(request: Request):
    _, src, _ = instance(request, "read")
    if typename(src) not in LABEL_TYPES:
        raise RelayError(400, BAD_REQUEST, f"sparsevol is for label types, not {typename(src)}")
    try:
        label = int(request.path_params["label"])
        if not 0 < label < 2**64:
            raise ValueError
    except ValueError:
        raise RelayError(400, BAD_REQUEST, f"label {request.path_params['label']!r} must be a positive 64-bit integer") from None
    fmt = request.query_params.get("format", "rles")
    if fmt not in ("rles", "srles"):
        raise RelayError(400, BAD_REQUEST, f"format {fmt!r}: the relay sends rles or srles")
    spans = await run_in_threadpool(sparsevol_spans, src, label)
    if request.method == "HEAD":
        return Response(status_code=200 if spans else 204)
    if not spans:
        raise RelayError(404, 4000, f"label {label} is not in {src.name}")
    body = np.asarray(spans, dtype="<i4").tobytes()
    if fmt == "rles":
        body = struct.pack("<BBBBII", 0, 3, 0, 0, 0, len(spans)) + body
    return Response(body, media_type="application/octet-stream")


def routes() -> list[Route]:
    node = "/api/node/{uuid}/{data}"
    raw = node + "/raw/{dims}/{size}/{offset}"
    return [
        Route("/api/server/info", server_info),
        Route("/api/server/types", server_types),
        Route("/api/repos/info", repos_info),
        Route("/api/repo/{uuid}", repo, methods=["HEAD"]),
        Route("/api/repo/{uuid}/info", repo, methods=["GET"]),
        Route("/api/repo/{uuid}/branch-versions/{branch}", branch_versions),
        Route("/api/repo/{uuid}/{op:str}", versioning, methods=["POST"]),
        Route("/api/node/{uuid}/commit", node_status, methods=["GET", "POST"]),
        Route("/api/node/{uuid}/status", node_status, methods=["GET"]),
        Route("/api/node/{uuid}/{op:str}", versioning, methods=["POST"]),
        Route(node + "/info", info),
        Route(raw, raw_get, methods=["GET"]),
        Route(raw + "/{format}", raw_get, methods=["GET"]),
        Route(raw, raw_post, methods=["POST"]),
        Route(node + "/label/{point}", label_at),
        Route(node + "/labels", labels_at, methods=["GET", "POST"]),
        Route(node + "/sparsevol/{label}", sparsevol, methods=["GET", "HEAD"]),
    ]
